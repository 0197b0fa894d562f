#!/usr/bin/env python3
"""What a loaded model costs on a real NVIDIA GPU, part by part (issue 19), in one run:

- synthetic models of three sizes (weights drawn on the device): the VRAM each worker holds
  after its load, split by the switch reply into weights, pool and context, with the
  allocator's in-use and reserved bytes; then the peak growth of a forward pass over the
  model's whole context against the estimate of its working memory;
- an encoder of all-MiniLM-L6-v2's shape served with `max_batch` 32, 64 and 256: VRAM held
  after load, the peak during a request of 256 short sentences and of 256 sentences at the
  longest input (256 tokens), against the estimate, the request's time, and what the worker
  holds once idle again.

The peak is the device's used memory sampled through NVML every half millisecond or so by a
thread of this script while the request runs, minus the used memory just before it (the
worker idle, its pool returned).

    scripts/gpu-footprint.py --agent PATH/vramkeeper-agent --tiny DIR --out DIR

`--tiny` is the output of make-tiny-hf.py (the encoder's tokenizer and pooling files). Runs
with the GPU machine's python3 (torch and transformers there). Never resets the GPU or changes
its settings.
"""
import argparse
import ctypes
import importlib.util
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("ckpt", os.path.join(HERE, "gpu-checkpoints.py"))
ckpt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ckpt)

MIB = 1 << 20
SYNTHETIC = {"syn-0p5g": 1 << 27, "syn-2g": 1 << 29, "syn-8g": 1 << 31}  # f32 parameters
BATCHES = (32, 64, 256)


class Nvml:
    """The device's used bytes, straight from libnvidia-ml."""

    class Memory(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                    ("used", ctypes.c_ulonglong)]

    def __init__(self):
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        assert self.lib.nvmlInit_v2() == 0
        self.handle = ctypes.c_void_p()
        assert self.lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(self.handle)) == 0

    def used(self):
        m = Nvml.Memory()
        assert self.lib.nvmlDeviceGetMemoryInfo(self.handle, ctypes.byref(m)) == 0
        return m.used


def peak_during(nvml, call):
    """Runs `call` once the worker is idle (it returns its pool after 200 ms), sampling the
    device's used memory meanwhile: (result, seconds, MiB the peak stood above the level just
    before, that is above the model's footprint)."""
    time.sleep(0.6)
    before = nvml.used()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], nvml.used())
            time.sleep(0.0005)

    t = threading.Thread(target=sample)
    t.start()
    started = time.perf_counter()
    try:
        result = call()
    finally:
        elapsed = time.perf_counter() - started
        done.set()
        t.join()
    peak[0] = max(peak[0], nvml.used())
    return result, elapsed, (peak[0] - before) / MIB


def worker_mb(agent, model):
    """What the model's worker holds now: its footprint plus its growth (ghost's figure)."""
    d = ckpt.status(agent)["devices"][0]
    record = next(m for m in d["models"] if m["name"] == model)
    growth = sum(s["mb"] for s in d["ghost"]["sources"] if s["kind"] == "worker-growth")
    return record["vram_mb"] + growth


def settled(agent, model):
    """The worker's memory once it has been idle a while (it returns its pool after 200 ms;
    the agent samples every 250 ms)."""
    time.sleep(1.5)
    return worker_mb(agent, model)


def synthetic(agent, nvml):
    out = {}
    for name in SYNTHETIC:
        r = agent.post("/v1/models/switch", {"model": name})
        fp, ph = r.get("footprint", {}), r["phases"]  # no footprint from builds before it
        tokens = [i % 4096 for i in range(256)]
        infer = lambda: agent.post("/v1/infer", {"model": name, "tokens": tokens})  # noqa: E731
        # The first pass at these shapes compiles and tunes its kernels (the tuner's trial
        # buffers included); the next ones are the steady working memory.
        _, first_s, first = peak_during(nvml, infer)
        steady = [peak_during(nvml, infer) for _ in range(3)]
        peak = max(x[2] for x in steady)
        idle = settled(agent, name)
        out[name] = {"switch": r, "first_peak_growth_mb": first, "first_s": first_s,
                     "peak_growth_mb": peak, "infer_s": statistics.median(x[1] for x in steady),
                     "idle_mb": idle}
        ckpt.log(f"{name}: held {r['vram_mb']:.0f} MiB = weights {fp.get('weights_mb', 0):.0f} + "
                 f"pool {fp.get('pool_mb', 0):.0f} + context {fp.get('context_mb', 0):.0f}; allocator in use / "
                 f"reserved {ph['allocator_in_use_mb']:.0f} / {ph['allocator_reserved_mb']:.0f}; "
                 f"weights {ph['weights_ms']:.1f} ms; a full-context pass grew {first:.0f} MiB first, "
                 f"{peak:.0f} MiB after "
                 f"(estimate {fp.get('working_estimate_mb', 0):.0f}); idle {idle:.0f} MiB")
    return out


def encoder(agent, nvml):
    short = [f"sentence number {i} about lighthouses and keepers" for i in range(256)]
    # Past the longest input (256 tokens), within the request's 262,144 characters.
    long = [" ".join(f"keeper{i} light{j}" for j in range(200))[:1000] for i in range(256)]
    out = {}
    for batch in BATCHES:
        name = f"minilm-mb{batch}"
        r = agent.post("/v1/models/switch", {"model": name})
        fp = r["footprint"]
        body = lambda texts: {"model": name, "input": texts}  # noqa: E731
        # The first request at these shapes compiles and tunes its kernels; then steady ones.
        first = peak_during(nvml, lambda: agent.post("/v1/embeddings", body(short)))
        runs = [peak_during(nvml, lambda: agent.post("/v1/embeddings", body(short)))
                for _ in range(5)]
        long_first = peak_during(nvml, lambda: agent.post("/v1/embeddings", body(long)))
        long_runs = [peak_during(nvml, lambda: agent.post("/v1/embeddings", body(long)))
                     for _ in range(3)]
        idle = settled(agent, name)
        entry = {
            "switch": r,
            "short_first_peak_growth_mb": first[2],
            "long_first_peak_growth_mb": long_first[2],
            "short_ms": statistics.median(x[1] for x in runs) * 1e3,
            "short_peak_growth_mb": max(x[2] for x in runs),
            "long_ms": statistics.median(x[1] for x in long_runs) * 1e3,
            "long_peak_growth_mb": max(x[2] for x in long_runs),
            "long_tokens": long_runs[0][0]["usage"]["prompt_tokens"],
            "idle_mb": idle,
        }
        out[name] = entry
        ckpt.log(f"{name}: held {r['vram_mb']:.0f} MiB (weights {fp['weights_mb']:.0f}, pool "
                 f"{fp['pool_mb']:.0f}, context {fp['context_mb']:.0f}); first requests +"
                 f"{first[2]:.0f} / +{long_first[2]:.0f} MiB; 256 short: "
                 f"{entry['short_ms']:.1f} ms, +{entry['short_peak_growth_mb']:.0f} MiB; 256 long "
                 f"({entry['long_tokens']} tokens): {entry['long_ms']:.1f} ms, "
                 f"+{entry['long_peak_growth_mb']:.0f} MiB (estimate "
                 f"{fp.get('working_estimate_mb', 0):.0f}); idle {idle:.0f} MiB")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", required=True)
    p.add_argument("--tiny", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--synthetic-only", action="store_true",
                   help="the synthetic models alone (an earlier build, say, for comparison)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="vk-footprint-")
    minilm = os.path.join(work, "minilm-shape")
    ckpt.make_minilm_shape(args.tiny, minilm)
    # all-MiniLM-L6-v2's longest input (the tiny encoder's files say 64).
    with open(os.path.join(minilm, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": 256, "do_lower_case": False}, f)
    catalog = "".join(
        f'[[model]]\nname = "{n}"\nkind = "synthetic"\nparams = {p}\nlayers = 4\nseed = 7\n\n'
        for n, p in SYNTHETIC.items())
    if not args.synthetic_only:
        catalog += "".join(
            f'[[model]]\nname = "minilm-mb{b}"\nkind = "hf"\ndir = "{minilm}"\nmax_batch = {b}\n\n'
            for b in BATCHES)
    report = {"device": ckpt.torch.cuda.get_device_name(0)}
    nvml = Nvml()
    agent = ckpt.Agent(args.agent, work, catalog)
    try:
        parts = [("synthetic", synthetic)]
        if not args.synthetic_only:
            parts.insert(0, ("encoder", encoder))
        for name, part in parts:
            try:
                report[name] = part(agent, nvml)
            except Exception as e:  # one failed part must not cost the others
                report[name] = {"error": repr(e)}
                ckpt.log(name, "failed:", repr(e))
    finally:
        agent.stop()
        with open(os.path.join(args.out, "gpu-footprint.json"), "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(work, "agent.log"), errors="replace") as f:
            tail = f.read()[-20000:]
        with open(os.path.join(args.out, "agent-log-tail.txt"), "w") as f:
            f.write(tail)


if __name__ == "__main__":
    main()
