#!/usr/bin/env python3
"""The checkpoint loader's staging shape against the pinned host-to-device bandwidth, on a real
NVIDIA GPU, in one run (issue 19): for each shape (chunk KiB, staging buffers per lane, lanes at
most; the worker reads it from `VRAMKEEPER_UPLOAD_SHAPE`), an agent loads a Llama-shaped
checkpoint of about 8 GB and Llama-3.2-1B's shape (2.47 GB, bf16) from the page cache three
times each, and all-MiniLM-L6-v2's shape five times; the table gives the weights phase's GB/s
(best and median) as a share of the pinned bandwidth measured at the start, and MiniLM's
weights phase in ms. `--agents` adds other builds (their default shape), for a before/after in
one run.

    scripts/gpu-upload-sweep.py --agent PATH/vramkeeper-agent --tiny DIR --out DIR [--shapes 2048,2,16 1024,2,16]

`--tiny` is the output of make-tiny-hf.py. Runs with the GPU machine's python3 (torch and
transformers there). Never resets the GPU or changes its settings.
"""
import argparse
import importlib.util
import json
import os
import re
import statistics
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("ckpt", os.path.join(HERE, "gpu-checkpoints.py"))
ckpt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ckpt)

SHAPES = ("2048,2,16", "1024,2,16", "512,2,16", "256,2,16", "1024,4,16", "512,4,16", "1024,2,8",
          "512,4,8")


def upload_lines(log_path, start):
    """The workers' `weights on the device` debug lines written to the agent's log from byte
    `start` on (colour codes removed), and where the log ends."""
    with open(log_path, errors="replace") as f:
        f.seek(start)
        text = f.read()
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", x) for x in text.splitlines()
             if "weights on the device" in x]
    return lines, start + len(text.encode(errors="replace"))


def minilm_loads(agent, n=5):
    agent.post("/v1/models/switch", {"model": "tiny-llama"})
    out = []
    for _ in range(n):
        out.append(agent.post("/v1/models/switch", {"model": "minilm-shape"})["phases"]["weights_ms"])
        agent.post("/v1/models/switch", {"model": "tiny-llama"})
    return out


def loads(agent, model, n=3):
    agent.post("/v1/models/switch", {"model": "tiny-llama"})
    out = []
    for _ in range(n):
        r = agent.post("/v1/models/switch", {"model": model})
        out.append(r["phases"]["weights_gb_per_s"])
        agent.post("/v1/models/switch", {"model": "tiny-llama"})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", required=True)
    p.add_argument("--tiny", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--shapes", nargs="*", default=SHAPES)
    p.add_argument("--agents", nargs="*", default=[],
                   help="more builds to load the same checkpoints with (default shape), in turn")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="vk-sweep-")
    pinned = ckpt.pinned_bandwidth()
    ckpt.log("pinned host-to-device", round(pinned, 1), "GB/s")
    l1b, l8g = os.path.join(work, "l1b"), os.path.join(work, "l8g")
    ckpt.make_1b(args.tiny, l1b)
    ckpt.make_8g(args.tiny, l8g)
    minilm = os.path.join(work, "minilm-shape")
    ckpt.make_minilm_shape(args.tiny, minilm)
    ckpt.warm_page_cache(ckpt.weight_files(l1b) + ckpt.weight_files(l8g))
    catalog = (f'[[model]]\nname = "tiny-llama"\nkind = "hf"\ndir = "{args.tiny}/llama"\n\n'
               f'[[model]]\nname = "l1b"\nkind = "hf"\ndir = "{l1b}"\ndtype = "bf16"\n\n'
               f'[[model]]\nname = "l8g"\nkind = "hf"\ndir = "{l8g}"\ndtype = "bf16"\n\n'
               f'[[model]]\nname = "minilm-shape"\nkind = "hf"\ndir = "{minilm}"\n\n')
    report = {"device": ckpt.torch.cuda.get_device_name(0), "pinned_h2d_gb_s": pinned, "rows": []}
    ckpt.log("| build, shape (chunk KiB, buffers, lanes) | 8 GB best / median GB/s | % pinned | "
             "2.47 GB best / median GB/s | % pinned | MiniLM shape weights ms |")
    runs = [(args.agent, shape) for shape in args.shapes] + [(a, None) for a in args.agents]
    log_at = 0
    for binary, shape in runs:
        os.environ.pop("VRAMKEEPER_UPLOAD_SHAPE", None)
        if shape:
            os.environ["VRAMKEEPER_UPLOAD_SHAPE"] = shape
        agent = ckpt.Agent(binary, work, catalog)
        try:
            big, small, tiny = loads(agent, "l8g"), loads(agent, "l1b"), minilm_loads(agent)
        except Exception as e:  # one failed run must not cost the others
            ckpt.log(binary, shape, "failed:", repr(e))
            continue
        finally:
            agent.stop()
        lines, log_at = upload_lines(os.path.join(work, "agent.log"), log_at)
        row = {"agent": binary, "shape": shape, "l8g_gb_s": big, "l1b_gb_s": small,
               "minilm_weights_ms": tiny, "worker_upload_lines": lines}
        report["rows"].append(row)
        ckpt.log(f"| {os.path.basename(binary)}, {shape or 'default'} | {max(big):.1f} / "
                 f"{statistics.median(big):.1f} | {100 * max(big) / pinned:.0f} | "
                 f"{max(small):.1f} / {statistics.median(small):.1f} | "
                 f"{100 * max(small) / pinned:.0f} | {', '.join(f'{x:.1f}' for x in tiny)} |")
    with open(os.path.join(args.out, "gpu-upload-sweep.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
