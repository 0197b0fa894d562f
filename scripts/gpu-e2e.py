#!/usr/bin/env python3
"""vramkeeper on a real NVIDIA GPU, end to end, in one run: backend selection, NVML accounting,
test-load of synthetic models of three sizes plus MiniLM (VRAM against parameter bytes), the
kernel cache (first and second load), switch latency split by phase against the physical floor,
release verification time, the zombie scenario (a separate process holding 3 GiB), an
in-worker leak cleared by free, a reset back to the baseline, an orphan left by a killed agent,
and MiniLM's cosine check on CUDA. Writes a JSON report and prints a summary.

    scripts/gpu-e2e.py --agent PATH/vramkeeper-agent --minilm-dir DIR --out DIR

Runs with the GPU machine's python3 (torch there measures the transfer floor and plays the
stale server). Never resets the GPU or changes its settings.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

MIB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "node-agent", "tests", "fixtures", "minilm-reference.json")

SIZES = {"syn-0p5g": 1 << 27, "syn-2g": 1 << 29, "syn-8g": 1 << 31}  # f32 parameters


def catalog(minilm_dir, synthetic=True):
    out = []
    if synthetic:
        for name, params in SIZES.items():
            out.append(f'[[model]]\nname = "{name}"\nkind = "synthetic"\nparams = {params}\nlayers = 4\nseed = 7\n')
    if minilm_dir:
        out.append(f'[[model]]\nname = "all-minilm-l6-v2"\nkind = "minilm"\ndir = "{minilm_dir}"\n')
    return "\n".join(out)


class Agent:
    def __init__(self, binary, workdir, cache, agent_id="gpu-e2e", extra=()):
        self.workdir = workdir
        cat = os.path.join(workdir, "catalog.toml")
        self.log = open(os.path.join(workdir, "agent.log"), "a")
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--catalog", cat,
             "--state-dir", os.path.join(workdir, "state"), "--cache-dir", cache,
             "--agent-id", agent_id, "--enable-test-ops", "--sample-ms", "250",
             "--zombie-threshold-mib", "1536", "--zombie-persist-s", "0.5",
             "--auto-free", "false", "--kill-foreign-processes", "--release-tolerance-mib", "64",
             *extra],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"agent did not start: {line!r}")
        self.url = "http://" + line.strip().removeprefix("listening on ")

    def call(self, method, path, body=None, timeout=120):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data, {"content-type": "application/json"},
                                     method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def post(self, path, body):
        code, r = self.call("POST", path, body)
        if code != 200:
            raise RuntimeError(f"POST {path} {body}: {code} {r}")
        return r

    def device(self):
        return self.call("GET", "/v1/status")[1]["devices"][0]

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def nvml_apps():
    """pid -> MiB from nvidia-smi, independently of the agent."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
    apps = {}
    for line in out.strip().splitlines():
        pid, used = [x.strip() for x in line.split(",")]
        apps[int(pid)] = float(used)
    return apps


FLOOR = r"""
import json, statistics, subprocess, sys, time
import torch

torch.cuda.init()
x = torch.empty(1 << 30, dtype=torch.uint8).pin_memory()
y = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
times = []
for _ in range(6):
    torch.cuda.synchronize()
    t = time.perf_counter()
    y.copy_(x, non_blocking=True)
    torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
pinned = (1 << 30) / statistics.median(times[1:])
x2 = torch.empty(1 << 30, dtype=torch.uint8)
times = []
for _ in range(4):
    torch.cuda.synchronize()
    t = time.perf_counter()
    y.copy_(x2)
    torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
pageable = (1 << 30) / statistics.median(times[1:])
del x, y, x2
torch.cuda.empty_cache()
# A CUDA context from a fresh process: process start to the first allocation.
code = "import time,ctypes;t=time.perf_counter();c=ctypes.CDLL('libcuda.so.1');c.cuInit(0);d=ctypes.c_int();c.cuDeviceGet(ctypes.byref(d),0);x=ctypes.c_void_p();c.cuCtxCreate_v2(ctypes.byref(x),0,d);print(time.perf_counter()-t)"
ctx = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout) for _ in range(3)]
print(json.dumps({"pinned_h2d_gb_s": pinned / 1e9, "pageable_h2d_gb_s": pageable / 1e9,
                  "cuda_context_s": min(ctx), "device": torch.cuda.get_device_name(0)}))
"""


def floor_measurements():
    """In a process of its own: this one must hold no CUDA context (it would be a foreign
    process in every reading)."""
    out = subprocess.run([sys.executable, "-c", FLOOR], capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


STALE = """
import sys, time, torch
x = torch.empty(int(sys.argv[1]) << 20, dtype=torch.uint8, device='cuda')
x.fill_(1)
torch.cuda.synchronize()
print('ready', flush=True)
time.sleep(3600)
"""


def wait(pred, timeout, period=0.02):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(period)
    return None


class SectionTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise SectionTimeout("section timed out")


REPORT_PATH = None
LOG_PATH = None


def section(report, name, fn, limit=150):
    """Runs one part with a deadline; a failure is recorded and the run goes on. The report is
    written after every part, so a run cut short still says what it measured."""
    print(f"== {name}", flush=True)
    t = time.time()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    try:
        report[name] = fn()
        report[name + "_ok"] = True
    except Exception as e:  # keep going: one failed section must not cost the others
        tail = ""
        if LOG_PATH and os.path.exists(LOG_PATH):
            tail = open(LOG_PATH, errors="replace").read()[-3000:]
        report[name] = {"error": f"{e}", "trace": traceback.format_exc(), "agent_log_tail": tail}
        report[name + "_ok"] = False
        print(traceback.format_exc(), flush=True)
        print(tail[-1500:], flush=True)
    finally:
        signal.alarm(0)
    print(f"   ({time.time() - t:.1f} s)", flush=True)
    if REPORT_PATH:
        with open(REPORT_PATH, "w") as f:
            json.dump(report, f, indent=2)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--agent", required=True)
    p.add_argument("--minilm-dir", help="MiniLM's files; without it the MiniLM parts are skipped")
    p.add_argument("--minilm-only", action="store_true",
                   help="only MiniLM: first and second load, the cosine check on CUDA")
    p.add_argument("--out", required=True)
    p.add_argument("--cache", default="/tmp/vk-gpu-cache")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="vk-gpu-")
    minilm = os.path.abspath(args.minilm_dir) if args.minilm_dir else None
    with open(os.path.join(work, "catalog.toml"), "w") as f:
        f.write(catalog(minilm, synthetic=not args.minilm_only))
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    name = "gpu-e2e-minilm.json" if args.minilm_only else "gpu-e2e.json"
    global REPORT_PATH, LOG_PATH
    REPORT_PATH = os.path.join(args.out, name)
    LOG_PATH = os.path.join(work, "agent.log")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.minilm_only:
        return minilm_only(args, work, report, name)
    report["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                           "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    section(report, "floor", floor_measurements)
    agent = Agent(args.agent, work, args.cache)
    stale = None
    try:
        d0 = agent.device()
        report["device"] = {k: d0[k] for k in ("name", "backend", "memory")}
        report["device_reason"] = agent.call("GET", "/v1/status")[1]["agent"]["device_reason"]

        def test_load():
            r = agent.post("/v1/models/test-load", {})
            rows = []
            for e in r["results"]:
                res = e["result"] or {}
                ph = res.get("phases") or {}
                rows.append({"model": e["model"], "error": e["error"], "vram_mib": res.get("vram_mb"),
                             "device_delta_mib": res.get("device_delta_mb"),
                             "param_mib": ph.get("param_bytes", 0) / MIB, "load_ms": res.get("load_ms"),
                             "phases": ph})
            return rows
        section(report, "test_load_first", test_load)

        def second_loads():
            rows = []
            for name in list(SIZES) + (["all-minilm-l6-v2"] if minilm else []):
                other = "syn-0p5g" if name != "syn-0p5g" else "syn-2g"
                agent.post("/v1/models/switch", {"model": other})
                r = agent.post("/v1/models/switch", {"model": name})
                rows.append({"model": name, "load_ms": r["load_ms"], "phases": r["phases"],
                             "unload_ms": r["unload_ms"], "verify_ms": r["verify_ms"],
                             "release_ms": r["release"]["elapsed_ms"] if r["release"] else None,
                             "release_killed": r["release"]["killed"] if r["release"] else None,
                             "vram_mib": r["vram_mb"], "device_delta_mib": r["device_delta_mb"]})
            return rows
        section(report, "second_loads", second_loads)

        def switch_bench():
            floor = report.get("floor", {})
            bw = floor.get("pinned_h2d_gb_s", 50) * 1e9
            rows = {}
            for name in SIZES:
                runs = []
                for _ in range(3):
                    other = "syn-0p5g" if name != "syn-0p5g" else "syn-2g"
                    agent.post("/v1/models/switch", {"model": other})
                    r = agent.post("/v1/models/switch", {"model": name})
                    runs.append(r)
                ph = [r["phases"] for r in runs]
                ctx = min(x["context_ms"] for x in ph)
                floor_ms = ctx + SIZES[name] * 4 / bw * 1000
                med = lambda k: statistics.median(x[k] for x in ph)
                load = statistics.median(r["load_ms"] for r in runs)
                switch = statistics.median(r["load_ms"] + r["unload_ms"] for r in runs)
                rows[name] = {"unload_ms": statistics.median(r["unload_ms"] for r in runs),
                              "verify_ms": statistics.median(r["verify_ms"] for r in runs),
                              "spawn_ms": med("spawn_ms"), "context_ms": med("context_ms"),
                              "weights_ms": med("weights_ms"), "warmup_ms": med("warmup_ms"),
                              "cleanup_ms": med("cleanup_ms"), "measure_ms": med("measure_ms"),
                              "load_ms": load, "switch_ms": switch, "floor_ms": floor_ms,
                              "load_over_floor": load / floor_ms, "switch_over_floor": switch / floor_ms}
            return rows
        section(report, "switch_bench", switch_bench)

        def release_bench():
            rows = []
            for name in SIZES:
                agent.post("/v1/models/switch", {"model": name})
                t = time.perf_counter()
                r = agent.post("/v1/models/unload", {})
                wall = (time.perf_counter() - t) * 1000
                rows.append({"model": name, "release_ms": r["release"]["elapsed_ms"], "http_ms": wall,
                             "verified": r["release"]["verified"], "killed": r["release"]["killed"],
                             "before_mib": r["release"]["before_mb"], "after_mib": r["release"]["after_mb"]})
            return rows
        section(report, "release", release_bench)

        def zombie_scenario():
            nonlocal stale
            agent.post("/v1/models/switch", {"model": "syn-0p5g"})
            stale = subprocess.Popen([sys.executable, "-c", STALE, "3072"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
            assert stale.stdout.readline().strip() == "ready"
            t0 = time.time()
            pid = stale.pid

            def attributed():
                # Measured once the allocation has completed (NVML shows a process's memory as
                # it grows): the whole 3 GiB, not the first few MiB.
                d = agent.device()
                for s in d["ghost"]["sources"]:
                    if s["pid"] == pid and s["kind"] == "foreign-process" and s["mb"] >= 3072:
                        return d, s
                return None
            d, src = wait(attributed, 30)
            t_attr = time.time() - t0
            d = wait(lambda: (lambda d: d if d["zombie"]["flagged"] else None)(agent.device()), 30)
            t_flag = time.time() - t0
            nvml = nvml_apps().get(pid)
            # The agent ends a foreign process only once it has been idle on the GPU (NVML's
            # per-process utilisation) for the persistence time: free until it is chosen.
            tries = 0
            while True:
                tries += 1
                t1 = time.time()
                free = agent.post("/v1/gpu/free", {})
                t_free = time.time() - t1
                if any(k["pid"] == pid for k in free["killed"]) or tries >= 40:
                    break
                time.sleep(0.25)
            gone = wait(lambda: stale.poll() is not None, 10)
            after = wait(lambda: (lambda d: d if d["ghost"]["total_mb"] < 64 else None)(agent.device()), 30)
            return {"pid": pid, "allocated_mib": 3072, "nvml_mib": nvml, "attributed_mib": src["mb"],
                    "attribution_error_mib": None if nvml is None else src["mb"] - nvml,
                    "name": src["name"], "detect_s": t_attr, "flag_s": t_flag,
                    "sampling_period_s": 0.25, "persist_s": 0.5,
                    "free_ms": t_free * 1000, "free_tries": tries, "killed": free["killed"],
                    "spared": free["spared"], "stale_exited": bool(gone),
                    "ghost_after_mib": after["ghost"]["total_mb"] if after else None,
                    "ghost_before_mib": free["ghost_before_mb"]}
        section(report, "zombie_foreign", zombie_scenario)

        def leak_pooled():
            agent.post("/v1/models/switch", {"model": "syn-2g"})
            agent.post("/v1/debug/leak", {"mib": 2048, "pooled": True})
            got = wait(lambda: next((s for s in agent.device()["ghost"]["sources"]
                                     if s["kind"] == "allocator-cache"), None), 30)
            free = agent.post("/v1/gpu/free", {})
            time.sleep(0.6)
            d = agent.device()
            return {"allocator_cache_mib": got["mb"] if got else None, "cleaned_mib": free["cleaned_mb"],
                    "ghost_before_mib": free["ghost_before_mb"], "ghost_after_mib": free["ghost_after_mb"],
                    "ghost_now_mib": d["ghost"]["total_mb"]}
        section(report, "leak_pooled", leak_pooled)

        def reset():
            agent.post("/v1/debug/leak", {"mib": 2048, "pooled": False})
            time.sleep(0.6)
            before = agent.device()
            r = agent.post("/v1/gpu/reset", {})
            time.sleep(0.6)
            d = agent.device()
            m = d["memory"]
            expected = sum(x["expected_mb"] or 0 for x in d["models"] if x["state"] == "Loaded")
            return {"ghost_before_mib": before["ghost"]["total_mb"], "at_baseline": r["at_baseline"],
                    "reloaded": r["reloaded"], "duration_ms": r["duration_ms"],
                    "baseline_mib": m["baseline_mb"], "used_after_mib": m["used_mb"],
                    "used_minus_baseline_minus_model_mib": m["used_mb"] - m["baseline_mb"] - expected,
                    "ghost_after_mib": d["ghost"]["total_mb"]}
        section(report, "reset", reset)

        def cosine_cuda():
            ref = json.load(open(FIXTURE))["sentences"]
            r = agent.post("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": [s["text"] for s in ref]})
            cos = []
            for item, s in zip(r["data"], ref):
                a, b = item["embedding"], s["embedding"]
                dot = sum(x * y for x, y in zip(a, b))
                cos.append(dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5))
            return {"sentences": len(cos), "min_cosine": min(cos), "all_at_least_0.9999": min(cos) >= 0.9999}
        if minilm:
            section(report, "minilm_cuda", cosine_cuda)

        def orphan():
            nonlocal agent
            agent.post("/v1/models/switch", {"model": "syn-2g"})
            wpid = agent.device()["models"]
            wpid = next(m["pid"] for m in wpid if m["state"] == "Loaded")
            agent.kill()
            agent = Agent(args.agent, work, args.cache)
            got = wait(lambda: next((s for s in agent.device()["ghost"]["sources"]
                                     if s["kind"] == "orphan-worker" and s["pid"] == wpid), None), 30)
            free = agent.post("/v1/gpu/free", {})
            return {"orphan_pid": wpid, "attributed_mib": got["mb"] if got else None,
                    "killed": free["killed"], "ghost_after_mib": free["ghost_after_mb"]}
        section(report, "orphan", orphan)
        report["status_at_end"] = agent.device()
    finally:
        if stale and stale.poll() is None:
            stale.kill()
        agent.stop()
        subprocess.run(["pkill", "-f", "vramkeeper-agent worker --agent-id gpu-e2e"])
        report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(report, f, indent=2)
        try:
            import shutil
            shutil.copy(os.path.join(work, "agent.log"), os.path.join(args.out, "agent.log"))
        except OSError:
            pass
    summarize(report)


def cosine_check(agent):
    ref = json.load(open(FIXTURE))["sentences"]
    r = agent.post("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": [s["text"] for s in ref]})
    cos = []
    for item, s in zip(r["data"], ref):
        a, b = item["embedding"], s["embedding"]
        dot = sum(x * y for x, y in zip(a, b))
        cos.append(dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5))
    return {"sentences": len(cos), "min_cosine": min(cos), "all_at_least_0.9999": min(cos) >= 0.9999}


def minilm_only(args, work, report, name):
    agent = Agent(args.agent, work, args.cache)
    try:
        def loads():
            rows = []
            for attempt in ("first", "second"):
                r = agent.post("/v1/models/switch", {"model": "all-minilm-l6-v2"})
                rows.append({"load": attempt, "load_ms": r["load_ms"], "vram_mib": r["vram_mb"],
                             "phases": r["phases"], "device_delta_mib": r["device_delta_mb"]})
                if attempt == "first":
                    # The first request of each shape compiles its kernels; warm them up.
                    cosine_check(agent)
                    agent.post("/v1/models/unload", {})
            return rows
        section(report, "minilm_loads", loads)
        section(report, "minilm_cuda", lambda: cosine_check(agent))
    finally:
        agent.stop()
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps({k: report.get(k) for k in ("minilm_loads", "minilm_cuda")}, indent=1)[:3000])


def summarize(r):
    print(f"\n# vramkeeper on {r.get('nvidia_smi')}")
    f = r.get("floor", {})
    print(f"floor: pinned H2D {f.get('pinned_h2d_gb_s', 0):.1f} GB/s, pageable {f.get('pageable_h2d_gb_s', 0):.1f} GB/s, "
          f"context {f.get('cuda_context_s', 0) * 1000:.0f} ms")
    for row in r.get("test_load_first", []) if isinstance(r.get("test_load_first"), list) else []:
        print(f"first load {row['model']}: vram {row['vram_mib']} MiB, params {row['param_mib']:.0f} MiB, "
              f"load {row['load_ms']} ms, error {row['error']}")
    for row in r.get("second_loads", []) if isinstance(r.get("second_loads"), list) else []:
        print(f"second load {row['model']}: load {row['load_ms']:.0f} ms (warm-up {row['phases']['warmup_ms']:.0f})")
    sb = r.get("switch_bench", {})
    if "error" not in sb:
        for name, s in sb.items():
            print(f"switch {name}: {s['switch_ms']:.0f} ms (unload {s['unload_ms']:.0f}, spawn {s['spawn_ms']:.0f}, "
                  f"context {s['context_ms']:.0f}, weights {s['weights_ms']:.0f}, warm-up {s['warmup_ms']:.0f}) "
                  f"floor {s['floor_ms']:.0f} ms -> {s['switch_over_floor']:.2f}x")
    for k in ("release", "zombie_foreign", "leak_pooled", "reset", "minilm_cuda", "orphan"):
        print(f"{k}: {json.dumps(r.get(k))[:600]}")


if __name__ == "__main__":
    main()
