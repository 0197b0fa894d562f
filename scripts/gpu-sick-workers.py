#!/usr/bin/env python3
"""Rude clients, sick workers and foreign processes on a real NVIDIA GPU, in one run:

1. a worker SIGKILLed while idle: how long until the agent says its model is unloaded (no
   request needed), then the next inference reloads it;
2. a worker SIGSTOPped: marked hung, sampling goes on, the next request replaces it;
3. inference clients with 0.3 s timeouts alternating two models for 20 s: the most worker
   processes NVML (nvidia-smi) ever lists at once, and the invariants once quiet;
4. foreign processes (PyTorch, this machine's python3): a 3 GiB stale one, a 1 GiB idle
   bystander and a 1 GiB one busy with matmuls; free until one is ended: which ones, and the
   reasons the others were spared (NVML's per-process utilisation decides "busy").

    scripts/gpu-sick-workers.py --agent PATH/vramkeeper-agent --out DIR

Writes DIR/gpu-sick-workers.json and prints it. Never resets the GPU or changes its settings.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

CATALOG = """
[[model]]
name = "syn-a"
kind = "synthetic"
params = 134217728
layers = 4
seed = 1

[[model]]
name = "syn-b"
kind = "synthetic"
params = 268435456
layers = 4
seed = 2
"""

HOLDER = """
import sys, time, torch
mib, busy = int(sys.argv[1]), sys.argv[2] == 'busy'
x = torch.empty(mib << 20, dtype=torch.uint8, device='cuda')
x.fill_(1)
a = torch.randn(2048, 2048, device='cuda')
torch.cuda.synchronize()
print('ready', flush=True)
while True:
    if busy:
        for _ in range(50):
            a = a @ a
            a = a / a.norm()
        torch.cuda.synchronize()
        time.sleep(0.01)
    else:
        time.sleep(3600)
"""


class Agent:
    def __init__(self, binary, work, extra=()):
        cat = os.path.join(work, "catalog.toml")
        with open(cat, "w") as f:
            f.write(CATALOG)
        self.log = open(os.path.join(work, "agent.log"), "a")
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--catalog", cat,
             "--state-dir", os.path.join(work, "state"), "--cache-dir", os.path.join(work, "cache"),
             "--agent-id", "gpu-sick", "--enable-test-ops", "--sample-ms", "100",
             "--auto-free", "false", *extra],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"agent did not start: {line!r}")
        self.url = "http://" + line.strip().removeprefix("listening on ")

    def call(self, method, path, body=None, timeout=300):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data, {"content-type": "application/json"},
                                     method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def device(self):
        return self.call("GET", "/v1/status")[1]["devices"][0]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def apps():
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
    return {int(p): float(m) for p, m in (l.split(",") for l in out.strip().splitlines() if l)}


def wait(pred, timeout, period=0.005):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(period)
    return None


def worker_pid(agent):
    for m in agent.device()["models"]:
        if m["pid"]:
            return m["pid"]
    return None


def crash(agent):
    agent.call("POST", "/v1/models/switch", {"model": "syn-a"})
    pid = worker_pid(agent)
    t = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    noticed = wait(lambda: agent.device()["active_model"] is None, 30)
    noticed_ms = (time.perf_counter() - t) * 1000
    code, r = agent.call("POST", "/v1/infer", {"model": "syn-a", "tokens": [1, 2, 3]})
    rec = [m for m in agent.device()["models"] if m["name"] == "syn-a"][0]
    return {"noticed": bool(noticed), "noticed_ms": noticed_ms, "crashes": rec["crashes"],
            "next_infer_status": code, "next_infer_trigger": (r.get("switched") or {}).get("trigger")}


def hang(agent):
    pid = worker_pid(agent)
    os.kill(pid, signal.SIGSTOP)
    t = time.perf_counter()
    hung = wait(lambda: any(m["hung"] for m in agent.device()["models"]), 30, 0.05)
    hung_s = time.perf_counter() - t
    n0 = len(agent.call("GET", "/v1/history?window=900")[1]["samples"])
    time.sleep(1.0)
    n1 = len(agent.call("GET", "/v1/history?window=900")[1]["samples"])
    t = time.perf_counter()
    code, _ = agent.call("POST", "/v1/infer", {"model": "syn-a", "tokens": [1]})
    replace_s = time.perf_counter() - t
    gone = wait(lambda: pid not in apps(), 10, 0.05)
    return {"marked_hung": bool(hung), "hung_after_s": hung_s, "samples_in_1s_while_stopped": n1 - n0,
            "next_infer_status": code, "replace_s": replace_s, "old_worker_gone": bool(gone)}


def storm(agent, seconds=20, clients=4):
    stop = time.time() + seconds
    most = [0]
    counts = {"answered": 0, "timed_out": 0}
    lock = threading.Lock()

    def client(i):
        n = 0
        while time.time() < stop:
            model = ["syn-a", "syn-b"][(i + n) % 2]
            n += 1
            try:
                agent.call("POST", "/v1/infer", {"model": model, "tokens": [1, 2]}, timeout=0.3)
                with lock:
                    counts["answered"] += 1
            except Exception:
                with lock:
                    counts["timed_out"] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    agent_pid = agent.proc.pid
    while any(t.is_alive() for t in threads):
        most[0] = max(most[0], len([p for p in apps() if p != agent_pid]))
        time.sleep(0.02)
    settled = wait(lambda: (lambda d: not d["busy"] and not d["queued"])(agent.device()), 300, 0.1)
    d = agent.device()
    loaded = [m["pid"] for m in d["models"] if m["pid"]]
    return {"seconds": seconds, "clients": clients, **counts, "most_gpu_processes_at_once": most[0],
            "settled": bool(settled), "workers_after": len(apps()), "status_pids": loaded,
            "ghost_after_mb": d["ghost"]["total_mb"], "implicit_switches": d["implicit_switches"]}


def foreign(agent_bin, work):
    # The threshold (4 GiB) is set so that ending the stale process alone (3.6 GiB with its
    # context) brings the ghost (~7 GiB: the bystander and the busy one hold ~1.7 GiB each with
    # their contexts) under it: the bystander must then be spared as not needed, and the busy
    # one because NVML sees it compute.
    agent = Agent(agent_bin, work, ["--kill-foreign-processes", "--zombie-threshold-mib", "4096",
                                    "--zombie-persist-s", "2"])
    procs = {}
    try:
        for name, mib, mode in [("stale", 3072, "idle"), ("bystander", 1024, "idle"), ("busy", 1024, "busy")]:
            p = subprocess.Popen([sys.executable, "-c", HOLDER, str(mib), mode], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
            assert p.stdout.readline().strip() == "ready"
            procs[name] = p
        pids = {n: p.pid for n, p in procs.items()}
        held = apps()
        t = time.time()
        tries = 0
        while True:
            tries += 1
            code, r = agent.call("POST", "/v1/gpu/free", {})
            if r.get("killed") or time.time() - t > 60:
                break
            time.sleep(0.25)
        named = {v: k for k, v in pids.items()}
        return {"pids": pids, "nvml_mib": {n: held.get(p) for n, p in pids.items()},
                "threshold_mib": 4096, "tries": tries, "seconds": time.time() - t,
                "free_duration_ms": r.get("duration_ms"), "used_before_mb": r.get("used_before_mb"),
                "used_after_mb": r.get("used_after_mb"),
                "killed": [named.get(k["pid"], k["pid"]) for k in r.get("killed", [])],
                "spared": {named.get(s["pid"], s["pid"]): s.get("reason") for s in r.get("spared", [])},
                "ghost_before_mb": r.get("ghost_before_mb"), "ghost_after_mb": r.get("ghost_after_mb")}
    finally:
        for p in procs.values():
            p.kill()
        agent.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", choices=["foreign"], help="run one section")
    args = ap.parse_args()
    report = {"gpu": subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                    capture_output=True, text=True).stdout.strip()}
    with tempfile.TemporaryDirectory() as work:
        agent = Agent(args.agent, work, ["--hang-timeout-s", "1"]) if not args.only else None
        try:
            for name, fn in [] if args.only else [("crash", crash), ("hang", hang), ("storm", storm)]:
                try:
                    report[name] = fn(agent)
                except Exception as e:  # keep going: every section is worth its numbers
                    report[name] = {"error": repr(e)}
                print(name, json.dumps(report[name]), flush=True)
        finally:
            if agent:
                agent.stop()
        with tempfile.TemporaryDirectory() as work2:
            try:
                report["foreign"] = foreign(args.agent, work2)
            except Exception as e:
                report["foreign"] = {"error": repr(e)}
            print("foreign", json.dumps(report["foreign"]), flush=True)
            with open(os.path.join(work2, "agent.log")) as f:
                report["foreign_agent_log_tail"] = f.read().splitlines()[-25:]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu-sick-workers.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
