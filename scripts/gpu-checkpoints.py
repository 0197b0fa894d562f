#!/usr/bin/env python3
"""Hugging Face checkpoints (`kind = "hf"`) on a real NVIDIA GPU, against transformers on the
same card, in one run:

- correctness: the tiny random checkpoints of `scripts/make-tiny-hf.py` (made on the CPU, with
  their transformers references) give the same greedy text on CUDA; a random-weight checkpoint
  of Llama-3.2-1B's shape (f32) gives the same greedy text as transformers on CUDA;
- decoding speed at batch 1 (tokens/s over 128 new tokens, prefill excluded), the agent against
  transformers' eager `generate`, in bf16 and f32;
- loading: weights from the page cache to the GPU (the switch reply's phases) against
  `safetensors.torch.load_file(device="cuda")` and the pinned host-to-device bandwidth, all in
  this run; an encoder of all-MiniLM-L6-v2's shape (its weights phase, the VRAM it holds after
  load and after a batch of 256); switches between two random checkpoints of about 8 GB
  against the floor (the worker's context creation plus the bytes at the pinned bandwidth).

    scripts/gpu-checkpoints.py --agent PATH/vramkeeper-agent --tiny DIR --out DIR

`--tiny` is the output of make-tiny-hf.py. Runs with the GPU machine's python3 (torch and
transformers there). Never resets the GPU or changes its settings.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# The workers' breakdown of a load (allocation, copy, cast) in agent.log.
os.environ.setdefault("RUST_LOG", "info,tower_http=warn,cubecl=warn,"
                      "vramkeeper_node_agent::backend=debug")

import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

GB = 1e9
PROMPT = "The keeper of the lighthouse"
NEW = 128


def log(*args):
    print(*args, flush=True)


class Agent:
    """A vramkeeper agent on the GPU with `catalog`."""

    def __init__(self, binary, workdir, catalog):
        path = os.path.join(workdir, "catalog.toml")
        with open(path, "w") as f:
            f.write(catalog)
        self.log = open(os.path.join(workdir, "agent.log"), "a")
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--catalog", path,
             "--state-dir", os.path.join(workdir, "state"), "--cache-dir", os.path.join(workdir, "cache"),
             "--agent-id", "gpu-checkpoints", "--infer-timeout-s", "600", "--load-timeout-s", "900"],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"agent did not start: {line!r}")
        self.url = "http://" + line.strip().removeprefix("listening on ")

    def post(self, path, body):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=1800) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{path}: {e.code} {e.read()[:2000]!r}") from None

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)


def pinned_bandwidth():
    """Host-to-device GB/s from a 1 GiB pinned buffer, best of 5."""
    host = torch.empty(1 << 30, dtype=torch.uint8).pin_memory()
    dev = torch.empty_like(host, device="cuda")
    best = 0.0
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        best = max(best, host.numel() / (time.perf_counter() - t) / GB)
    del host, dev
    torch.cuda.empty_cache()
    return best


def make_1b(tiny, out):
    """Llama-3.2-1B's shape with random weights in bf16, the tiny llama's tokenizer (400 tokens);
    the embedding rows the tokenizer cannot write (and its special tokens) are zero, so greedy
    text is comparable and never ends early."""
    config = LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu", bos_token_id=0,
        eos_token_id=4, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(tiny, "llama"))
    live = []
    for i in range(len(tokenizer)):
        piece = tokenizer.decode([i])
        if i > 4 and "\ufffd" not in piece and all(c.isprintable() or c in " \n" for c in piece):
            live.append(i)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        keep = weight[live].clone()
        weight.zero_()
        weight[live] = keep
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return config


def make_minilm_shape(tiny, out):
    """all-MiniLM-L6-v2's shape (22.7 M parameters, f32) with random weights, and the tiny
    encoder's tokenizer and sentence-transformers files."""
    from transformers import BertConfig, BertModel
    subprocess.run(["cp", "-r", os.path.join(tiny, "bert"), out], check=True)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                        num_attention_heads=12, intermediate_size=1536,
                        max_position_embeddings=512)
    torch.manual_seed(1)
    BertModel(config).save_pretrained(out)


def make_8g(tiny, out):
    """A Llama-shaped checkpoint of about 8 GB in bf16 (4.0 B parameters), random weights."""
    config = LlamaConfig(
        vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=36,
        num_attention_heads=24, num_key_value_heads=8, max_position_embeddings=8192,
        rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu", bos_token_id=0,
        eos_token_id=4, rope_theta=500000.0)
    torch.manual_seed(2)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(os.path.join(tiny, "llama")).save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def status(agent):
    with urllib.request.urlopen(agent.url + "/v1/status", timeout=60) as r:
        return json.loads(r.read())


def minilm_shape(agent):
    agent.post("/v1/models/switch", {"model": "tiny-llama"})
    loads = []
    for _ in range(2):
        agent.post("/v1/models/switch", {"model": "tiny-llama"})
        loads.append(agent.post("/v1/models/switch", {"model": "minilm-shape"}))
    texts = [f"sentence number {i} about lighthouses and keepers" for i in range(256)]
    agent.post("/v1/embeddings", {"model": "minilm-shape", "input": texts})
    after = status(agent)
    # The worker returns its pool after 200 ms idle; the agent samples every 250 ms.
    time.sleep(1.5)
    idle = status(agent)
    ph = [r["phases"] for r in loads]
    log("minilm-shape: weights", [round(p["weights_ms"], 1) for p in ph], "ms; VRAM",
        [r["vram_mb"] for r in loads], "MiB; allocator in use / reserved",
        [(p["allocator_in_use_mb"], p["allocator_reserved_mb"]) for p in ph])
    def worker_mb(st):
        d = st["devices"][0]
        growth = sum(x["mb"] for x in d["ghost"]["sources"] if x["kind"] == "worker-growth")
        return growth
    log("minilm-shape: worker growth right after a batch of 256:", worker_mb(after),
        "MiB; after 1.5 s idle:", worker_mb(idle), "MiB")
    return {"switches": loads, "status_after_batch_256": after, "status_idle": idle}


def switch_8g(agent, pinned_gb_s, dir_a, dir_b):
    warm_page_cache(weight_files(dir_a) + weight_files(dir_b))
    size = sum(os.path.getsize(f) for f in weight_files(dir_a))
    st = safetensors_rate(weight_files(dir_a))[0]
    agent.post("/v1/models/switch", {"model": "l8g-b"})
    runs = []
    for n in ("a", "b", "a", "b"):
        runs.append(agent.post("/v1/models/switch", {"model": f"l8g-{n}"}))
    rows = []
    for r in runs:
        ph = r["phases"]
        floor = ph["context_ms"] + size / (pinned_gb_s * GB) * 1000
        switch = r["load_ms"] + r["unload_ms"]
        rows.append({"switch_ms": switch, "load_ms": r["load_ms"], "unload_ms": r["unload_ms"],
                     "floor_ms": floor, "switch_over_floor": switch / floor,
                     "weights_ms": ph["weights_ms"], "gb_s": ph["weights_gb_per_s"],
                     "vram_mb": r["vram_mb"]})
        log(f"8 GB switch {switch:.0f} ms (unload {r['unload_ms']:.0f}, load {r['load_ms']:.0f}: "
            f"weights {ph['weights_ms']:.0f} ms at {ph['weights_gb_per_s']:.1f} GB/s), "
            f"floor {floor:.0f} ms: {switch / floor:.2f}x")
    return {"bytes": size, "safetensors_cuda_gb_s": st, "rows": rows, "switches": runs}


def hf_generate(model, ids, new):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                         min_new_tokens=new, do_sample=False, pad_token_id=4)
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


def hf_decode_rate(model, ids):
    first = min(hf_generate(model, ids, 1)[1] for _ in range(3))
    full = min(hf_generate(model, ids, NEW + 1)[1] for _ in range(3))
    return NEW / (full - first)


def agent_completion(agent, model, prompt, new):
    t = time.perf_counter()
    answer = agent.post("/v1/completions", {"model": model, "prompt": prompt, "max_tokens": new,
                                            "temperature": 0})
    return answer, time.perf_counter() - t


def agent_decode_rate(agent, model):
    first = min(agent_completion(agent, model, PROMPT, 1)[1] for _ in range(3))
    runs = [agent_completion(agent, model, PROMPT, NEW + 1) for _ in range(3)]
    tokens = runs[0][0]["usage"]["completion_tokens"]
    full = min(t for _, t in runs)
    return (tokens - 1) / (full - first), tokens


def weight_files(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".safetensors"))


def warm_page_cache(files):
    """Reads `files` into the page cache, after writing back what was just written: gigabytes
    of dirty pages flushed during a measured load slow it (seen as a first row 10 points low)."""
    os.sync()
    for f in files:
        with open(f, "rb") as h:
            while h.read(1 << 26):
                pass


def safetensors_rate(files):
    from safetensors.torch import load_file
    size = sum(os.path.getsize(f) for f in files)
    best = 0.0
    for _ in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        tensors = [load_file(f, device="cuda") for f in files]
        torch.cuda.synchronize()
        best = max(best, size / (time.perf_counter() - t) / GB)
        del tensors
        torch.cuda.empty_cache()
    return best, size


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", required=True)
    p.add_argument("--tiny", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--agent-only", action="store_true",
                   help="measure the agent alone (another build of it, say): no transformers runs")
    p.add_argument("--skip-decode", action="store_true", help="no decoding-speed runs")
    p.add_argument("--skip-8g", action="store_true", help="no 8 GB checkpoints")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    # A time limit's SIGTERM still writes what was measured.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    work = tempfile.mkdtemp(prefix="vk-ckpt-")
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report["pinned_h2d_gb_s"] = pinned_bandwidth()
    log("pinned host-to-device", round(report["pinned_h2d_gb_s"], 1), "GB/s")

    l1b = os.path.join(work, "llama-1b")
    t = time.perf_counter()
    make_1b(args.tiny, l1b)
    log("made llama-1b in", round(time.perf_counter() - t, 1), "s:", weight_files(l1b))

    catalog = "".join(
        f'[[model]]\nname = "tiny-{n}"\nkind = "hf"\ndir = "{os.path.join(args.tiny, n)}"\n\n'
        for n in ("llama", "qwen2", "mistral"))
    catalog += f'[[model]]\nname = "l1b-f32"\nkind = "hf"\ndir = "{l1b}"\ndtype = "f32"\n\n'
    catalog += f'[[model]]\nname = "l1b-bf16"\nkind = "hf"\ndir = "{l1b}"\ndtype = "bf16"\n\n'
    minilm = os.path.join(work, "minilm-shape")
    make_minilm_shape(args.tiny, minilm)
    catalog += f'[[model]]\nname = "minilm-shape"\nkind = "hf"\ndir = "{minilm}"\n\n'
    if not args.skip_8g:
        t = time.perf_counter()
        big = make_8g(args.tiny, os.path.join(work, "l8g-a"))
        subprocess.run(["cp", "-r", big, os.path.join(work, "l8g-b")], check=True)
        log("made two 8 GB checkpoints in", round(time.perf_counter() - t, 1), "s")
        for n in ("a", "b"):
            catalog += (f'[[model]]\nname = "l8g-{n}"\nkind = "hf"\n'
                        f'dir = "{os.path.join(work, "l8g-" + n)}"\ndtype = "bf16"\n\n')
    agent = Agent(args.agent, work, catalog)
    try:
        # 1. Tiny checkpoints: transformers' CPU greedy text, on CUDA.
        report["tiny"] = {}
        for n in ("llama", "qwen2", "mistral"):
            ref = json.load(open(os.path.join(args.tiny, n, "reference.json")))["greedy"]
            answer, _ = agent_completion(agent, f"tiny-{n}", ref["text"], 32)
            got = answer["choices"][0]["text"]
            report["tiny"][n] = {"same": got == ref["new_text"], "got": got, "want": ref["new_text"]}
            log(f"tiny-{n} greedy on CUDA == transformers:", got == ref["new_text"])

        # 2. Llama-3.2-1B's shape in f32: greedy text against transformers on CUDA.
        tokenizer = AutoTokenizer.from_pretrained(l1b)
        ids = tokenizer(PROMPT, return_tensors="pt").input_ids.cuda()
        want, hf_rate = None, None
        if not args.agent_only:
            model = LlamaForCausalLM.from_pretrained(l1b, dtype=torch.float32).cuda().eval()
            out, _ = hf_generate(model, ids, 32)
            want = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            hf_rate = None if args.skip_decode else hf_decode_rate(model, ids)
            del model
            torch.cuda.empty_cache()
        switch = agent.post("/v1/models/switch", {"model": "l1b-f32"})
        answer, _ = agent_completion(agent, "l1b-f32", PROMPT, 32)
        got = answer["choices"][0]["text"]
        report["l1b_f32_greedy"] = {"same": got == want, "got": got, "want": want}
        log("l1b-f32 greedy == transformers (CUDA, f32):", got == want)
        report["l1b_f32_switch"] = switch
        if not args.skip_decode:
            rate, _ = agent_decode_rate(agent, "l1b-f32")
            report["decode_f32"] = {"agent_tok_s": rate, "transformers_tok_s": hf_rate}
            log(f"decode f32: agent {rate:.1f} tok/s, transformers {hf_rate} tok/s")

        # 3. bf16: decoding speed.
        if not args.agent_only and not args.skip_decode:
            model = LlamaForCausalLM.from_pretrained(l1b, dtype=torch.bfloat16).cuda().eval()
            hf_rate = hf_decode_rate(model, ids)
            out, _ = hf_generate(model, ids, 32)
            want = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            del model
            torch.cuda.empty_cache()
        agent.post("/v1/models/switch", {"model": "l1b-bf16"})
        rate, tokens = agent_decode_rate(agent, "l1b-bf16") if not args.skip_decode else (None, None)
        got = agent_completion(agent, "l1b-bf16", PROMPT, 32)[0]["choices"][0]["text"]
        report["decode_bf16"] = {"agent_tok_s": rate, "transformers_tok_s": hf_rate,
                                 "agent_tokens": tokens, "greedy_same_as_transformers": got == want}
        log(f"decode bf16: agent {rate} tok/s, transformers {hf_rate} tok/s; "
            f"greedy same: {got == want}")

        # 4. Loading from the page cache.
        files = weight_files(l1b)
        warm_page_cache(files)
        size = sum(os.path.getsize(f) for f in files)
        st_rate = None if args.agent_only else safetensors_rate(files)[0]
        loads = []
        for _ in range(2):
            agent.post("/v1/models/switch", {"model": "tiny-llama"})
            reply = agent.post("/v1/models/switch", {"model": "l1b-bf16"})
            loads.append(reply)
        phases = [r["phases"] for r in loads]
        best = max(ph["weights_gb_per_s"] for ph in phases)
        report["load"] = {"bytes": size, "safetensors_cuda_gb_s": st_rate, "agent_gb_s": best,
                          "agent_phases": phases, "switches": loads}
        log(f"load {size / GB:.2f} GB: agent {best:.2f} GB/s, safetensors {st_rate} GB/s, "
            f"pinned {report['pinned_h2d_gb_s']:.1f} GB/s")
        f32 = agent.post("/v1/models/switch", {"model": "l1b-f32"})
        report["load_f32"] = f32
        log(f"load as f32 (cast on the device): {f32['phases']['weights_gb_per_s']:.2f} GB/s, "
            f"weights {f32['phases']['weights_ms']:.0f} ms")

        # 5. An encoder of all-MiniLM-L6-v2's shape.
        report["minilm_shape"] = minilm_shape(agent)

        # 6. Two checkpoints of about 8 GB.
        if not args.skip_8g:
            report["switch_8g"] = switch_8g(agent, report["pinned_h2d_gb_s"],
                                            os.path.join(work, "l8g-a"), os.path.join(work, "l8g-b"))
    finally:
        agent.stop()
        with open(os.path.join(args.out, "gpu-checkpoints.json"), "w") as f:
            json.dump(report, f, indent=1)
        subprocess.run(["cp", os.path.join(work, "agent.log"), args.out], check=False)


if __name__ == "__main__":
    sys.exit(main())
