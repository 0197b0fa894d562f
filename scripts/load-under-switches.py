#!/usr/bin/env python3
"""Load while switching: three oha processes drive GET /v1/status, GET /metrics and POST
/v1/infer (model tiny-a) at fixed rates while this script switches the device to tiny-b every
half second, so that each inference after a switch switches back (trigger `auto`). Then it
checks that nothing was lost:

- every inference oha sent was answered with 200 (served) or 409 (refused during a switch,
  with a message) and never a 5xx or a dropped connection (oha itself cancels what is still in
  flight when its duration ends; those are counted apart);
- the agent's own counters agree with the clients: inference answers by outcome, explicit
  switches (trigger api) equal the 200s this script got, and the switch history holds every
  switch the counters count.

Prints a Markdown table of latency, errors, and the agent's CPU and RSS, and writes JSON.

    cargo build --release -p vramkeeper-node-agent
    cargo install oha --locked --root .tools   # once
    scripts/load-under-switches.py --agent target/release/vramkeeper-agent --oha .tools/bin/oha
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from procstat import cpu_seconds, rss_mib

CATALOG = """
[[model]]
name = "tiny-a"
kind = "synthetic"
params = 2_000_000
layers = 2
vocab = 512
context = 64
seed = 1

[[model]]
name = "tiny-b"
kind = "synthetic"
params = 4_000_000
layers = 2
vocab = 512
context = 64
seed = 2
"""


def call(url, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def oha(binary, url, rate, seconds, body=None):
    cmd = [binary, "-z", f"{seconds}s", "-q", str(rate), "-c", "8", "--no-tui",
           "--output-format", "json"]
    if body is not None:
        cmd += ["-m", "POST", "-T", "application/json", "-d", json.dumps(body)]
    return subprocess.Popen(cmd + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def summary(proc):
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"oha failed: {err}")
    r = json.loads(out)
    codes = {str(k): v for k, v in r.get("statusCodeDistribution", {}).items()}
    errors = r.get("errorDistribution", {})
    # oha cancels what is still in flight when its -z duration ends: not a failure of the agent.
    cut = sum(v for k, v in errors.items() if "deadline" in k.lower())
    dropped = sum(errors.values()) - cut
    return {
        "requests": sum(codes.values()) + dropped,
        "rps": r["summary"]["requestsPerSec"],
        "p50_ms": (r["latencyPercentiles"]["p50"] or 0) * 1000,
        "p99_ms": (r["latencyPercentiles"]["p99"] or 0) * 1000,
        "max_ms": (r["summary"]["slowest"] or 0) * 1000,
        "codes": codes,
        "dropped": dropped,
        "errors": errors,
        "cut_at_end": cut,
    }


def counters(metrics_text, name):
    """{labels string: value} for every sample of counter `name`."""
    out = {}
    for line in metrics_text.splitlines():
        m = re.match(r"^(\w*" + name + r"_total)\{(.*)\} (\S+)", line)
        if m:
            out[m.group(2)] = float(m.group(3))
    return out


def total(samples, **labels):
    return sum(v for k, v in samples.items()
               if all(f'{key}="{value}"' in k for key, value in labels.items()))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--agent", required=True)
    p.add_argument("--oha", default=shutil.which("oha") or ".tools/bin/oha")
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--status-rate", type=int, default=500)
    p.add_argument("--metrics-rate", type=int, default=100)
    p.add_argument("--infer-rate", type=int, default=50)
    p.add_argument("--switch-every", type=float, default=0.5)
    p.add_argument("--json")
    args = p.parse_args()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU device"
    with tempfile.TemporaryDirectory(prefix="vk-load-") as d:
        catalog = os.path.join(d, "catalog.toml")
        open(catalog, "w").write(CATALOG)
        agent = subprocess.Popen(
            [args.agent, "--listen", "127.0.0.1:0", "--device", "cpu", "--catalog", catalog,
             "--state-dir", os.path.join(d, "state"), "--cache-dir", os.path.join(d, "cache"),
             "--rate-limit", "1000"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            url = "http://" + agent.stdout.readline().strip().removeprefix("listening on ")
            assert call(url, "/v1/models/switch", {"model": "tiny-a"})[0] == 200
            before = call(url, "/metrics")[1].decode()
            c0, t0 = cpu_seconds(agent.pid), time.time()
            loads = {
                "GET /v1/status": oha(args.oha, url + "/v1/status", args.status_rate, args.seconds),
                "GET /metrics": oha(args.oha, url + "/metrics", args.metrics_rate, args.seconds),
                "POST /v1/infer": oha(args.oha, url + "/v1/infer", args.infer_rate, args.seconds,
                                      {"model": "tiny-a", "tokens": list(range(32))}),
            }
            switches = {}
            rss_peak = 0.0
            end = time.time() + args.seconds
            while time.time() < end:
                code, _ = call(url, "/v1/models/switch", {"model": "tiny-b"})
                switches[code] = switches.get(code, 0) + 1
                rss_peak = max(rss_peak, rss_mib(agent.pid))
                time.sleep(args.switch_every)
            results = {name: summary(proc) for name, proc in loads.items()}
            cpu = 100 * (cpu_seconds(agent.pid) - c0) / (time.time() - t0)
            rss_peak = max(rss_peak, rss_mib(agent.pid))
            after = call(url, "/metrics")[1].decode()
            history = json.loads(call(url, "/v1/history?window=3600")[1])
            alive = agent.poll() is None
        finally:
            agent.terminate()
            agent.wait()

    def delta(name, **labels):
        return total(counters(after, name), **labels) - total(counters(before, name), **labels)

    infer = results["POST /v1/infer"]
    served_agent = delta("inference_requests", outcome="ok")
    checks = {
        "agent alive throughout": alive,
        "no 5xx and no dropped connection on any route": all(
            r["dropped"] == 0 and not any(c.startswith("5") for c in r["codes"])
            for r in results.values()),
        "every inference answered 200 or 409":
            set(infer["codes"]) <= {"200", "409"} and infer["dropped"] == 0,
        # An inference oha cut off at the end may still have been served.
        "inferences served by the agent's count == 200s received (+ those cut off at the end)":
            0 <= served_agent - infer["codes"].get("200", 0) <= infer["cut_at_end"],
        "explicit switches counted == 200s received":
            delta("switches", trigger="api", outcome="ok") == switches.get(200, 0),
        "switch history holds every counted switch":
            len(history["switches"]) >= delta("switches", outcome="ok"),
    }
    report = {"machine": machine, "seconds": args.seconds, "routes": results,
              "explicit_switches": switches,
              "auto_switches": delta("switches", trigger="auto", outcome="ok"),
              "agent_cpu_percent_of_a_core": cpu, "agent_rss_peak_mib": rss_peak,
              "checks": checks}
    print(f"\nLoad while switching ({machine}, release build, {args.seconds} s)\n")
    print("| route | rate req/s | achieved | p50 ms | p99 ms | max ms | answers | cut off at end | dropped |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    rates = [args.status_rate, args.metrics_rate, args.infer_rate]
    for (name, r), rate in zip(results.items(), rates):
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(r["codes"].items()))
        print(f"| {name} | {rate} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['max_ms']:.1f} | {codes} | {r['cut_at_end']} | {r['dropped']} |")
    print(f"\nExplicit switches (tiny-b): {switches}; auto switches back to tiny-a: "
          f"{report['auto_switches']:.0f}")
    print(f"Agent: {cpu:.0f} % of a core, peak RSS {rss_peak:.1f} MiB\n")
    for name, ok in checks.items():
        print(f"- [{'x' if ok else ' '}] {name}")
    if args.json:
        json.dump(report, open(args.json, "w"), indent=2)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
