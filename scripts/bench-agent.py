#!/usr/bin/env python3
"""The agent's own costs, measured on this machine with a release build: switch time for two
model sizes, the agent's idle CPU and RSS at 1 s sampling, and the latency of /v1/status and
/metrics under a fixed request rate from a second process (oha). Prints Markdown tables and
writes JSON.

    cargo build --release -p vramkeeper-node-agent
    cargo install oha --locked --root .tools   # once
    scripts/bench-agent.py --agent target/release/vramkeeper-agent --oha .tools/bin/oha
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from procstat import cpu_seconds, rss_mib

CATALOG = """
[[model]]
name = "bench-small"
kind = "synthetic"
params = 100_000_000
layers = 6
seed = 1

[[model]]
name = "bench-large"
kind = "synthetic"
params = 400_000_000
layers = 8
seed = 2
"""


def post(url, path, body):
    req = urllib.request.Request(url + path, json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def percentile(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def load(oha, url, rate, seconds):
    out = subprocess.run(
        [oha, "-z", f"{seconds}s", "-q", str(rate), "-c", "16", "--no-tui",
         "--output-format", "json", url],
        capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    codes = r.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    total = sum(codes.values())
    return {
        "rps": r["summary"]["requestsPerSec"],
        "p50_ms": r["latencyPercentiles"]["p50"] * 1000,
        "p99_ms": r["latencyPercentiles"]["p99"] * 1000,
        "max_ms": r["summary"]["slowest"] * 1000,
        "requests": total,
        "errors": total - ok,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--agent", required=True)
    p.add_argument("--oha", default=shutil.which("oha") or ".tools/bin/oha")
    p.add_argument("--switches", type=int, default=4)
    p.add_argument("--idle-seconds", type=float, default=30)
    p.add_argument("--load-seconds", type=int, default=15)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--json")
    args = p.parse_args()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU device"
    results = {"machine": machine}
    with tempfile.TemporaryDirectory(prefix="vk-bench-") as d:
        catalog = os.path.join(d, "catalog.toml")
        open(catalog, "w").write(CATALOG)
        agent = subprocess.Popen(
            [args.agent, "--listen", "127.0.0.1:0", "--device", "cpu", "--catalog", catalog,
             "--state-dir", os.path.join(d, "state"), "--cache-dir", os.path.join(d, "cache"),
             "--sample-ms", "1000"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            url = "http://" + agent.stdout.readline().strip().removeprefix("listening on ")
            # Switch time for two sizes.
            rows = {"bench-small": [], "bench-large": []}
            for i in range(args.switches * 2 + 1):
                model = "bench-large" if i % 2 else "bench-small"
                r = post(url, "/v1/models/switch", {"model": model})
                if i:  # the first load has no unload to measure
                    rows[model].append(r)
            results["switch"] = {
                m: {
                    "vram_mib": statistics.median(r["vram_mb"] for r in rs),
                    "unload_ms": statistics.median(r["unload_ms"] for r in rs),
                    "verify_ms": statistics.median(r["verify_ms"] for r in rs),
                    "load_ms": statistics.median(r["load_ms"] for r in rs),
                    "total_ms": statistics.median(r["unload_ms"] + r["load_ms"] for r in rs),
                    "samples": len(rs),
                }
                for m, rs in rows.items()
            }
            post(url, "/v1/models/switch", {"model": "bench-small"})
            # Idle: a model loaded, nothing asked, sampling every second.
            time.sleep(2)
            c0, t0 = cpu_seconds(agent.pid), time.time()
            time.sleep(args.idle_seconds)
            c1, t1 = cpu_seconds(agent.pid), time.time()
            results["idle"] = {"cpu_percent_of_a_core": 100 * (c1 - c0) / (t1 - t0),
                               "rss_mib": rss_mib(agent.pid), "seconds": t1 - t0}
            # Latency under a fixed rate from a second process.
            results["load"] = {}
            for path in ["/v1/status", "/metrics"]:
                c0 = cpu_seconds(agent.pid)
                r = load(args.oha, url + path, args.rate, args.load_seconds)
                r["agent_cpu_percent"] = 100 * (cpu_seconds(agent.pid) - c0) / args.load_seconds
                r["agent_rss_mib"] = rss_mib(agent.pid)
                results["load"][path] = r
        finally:
            agent.terminate()
            agent.wait()

    print(f"\nAgent benchmark ({machine}, release build)\n")
    print("| model | VRAM (RSS) MiB | unload ms | verify ms | load ms | switch ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for m, s in results["switch"].items():
        print(f"| {m} | {s['vram_mib']:.0f} | {s['unload_ms']:.1f} | {s['verify_ms']:.1f} | "
              f"{s['load_ms']:.0f} | {s['total_ms']:.0f} |")
    i = results["idle"]
    print(f"\nIdle agent (1 s sampling, {i['seconds']:.0f} s): {i['cpu_percent_of_a_core']:.2f} % "
          f"of a core, RSS {i['rss_mib']:.1f} MiB\n")
    print(f"| route @ {args.rate} req/s | achieved req/s | p50 ms | p99 ms | max ms | errors | agent CPU % | agent RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for path, r in results["load"].items():
        print(f"| {path} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['max_ms']:.1f} | {r['errors']} | {r['agent_cpu_percent']:.0f} | {r['agent_rss_mib']:.1f} |")
    if args.json:
        json.dump(results, open(args.json, "w"), indent=2)


if __name__ == "__main__":
    sys.exit(main())
