#!/usr/bin/env python3
"""Embedding throughput, side by side on one machine: vramkeeper's MiniLM worker called
directly (framed JSON on its Unix socket), the same through the agent's HTTP API, and
sentence-transformers with PyTorch, taking turns (`--rounds` of `--seconds` each, so that a drift
of the machine's speed reaches every side; ratios are the median of the rounds' ratios). Prints
a Markdown table and writes JSON.

    scripts/bench-embeddings.py --agent target/release/vramkeeper-agent \
        --model-dir ~/.cache/vramkeeper/models/all-minilm-l6-v2-0.1.0 [--device cpu|cuda]

Needs sentence-transformers and torch in the Python that runs it (for the baseline) and the
reference fixture for the cosine check. Vectors travel as base64 of f32 (the worker protocol's
form, and the OpenAI API's `encoding_format: base64`), decoded into numpy arrays as
sentence-transformers returns them.
"""
import argparse
import json
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "node-agent", "tests", "fixtures", "minilm-reference.json")

SUBJECTS = ["The GPU", "A stale server", "The allocator", "Our model", "The operator", "A worker",
            "The node agent", "Ghost memory", "The scheduler", "A zombie process"]
VERBS = ["holds", "releases", "measures", "reports", "frees", "loads", "unloads", "caches"]
OBJECTS = ["five gigabytes of VRAM after a restart", "the weights of a small language model",
           "memory that nobody accounts for", "a batch of sentence embeddings",
           "the pooled blocks of a CUDA allocator", "its kernels in a persistent cache",
           "the next model before it runs out of memory", "a status page with a chart"]


def corpus(n):
    """n deterministic, realistic sentences of 8 to 30 tokens."""
    out = []
    i = 0
    while len(out) < n:
        s, v, o = SUBJECTS[i % 10], VERBS[(i // 10) % 8], OBJECTS[(i // 80) % 8]
        tail = "" if i % 3 else f", as measured on run {i} of the benchmark"
        out.append(f"{s} {v} {o}{tail}.")
        i += 1
    return out


def decode(text, dim):
    """Base64 of little-endian f32s -> vectors of dim (numpy, as sentence-transformers returns)."""
    import base64
    import numpy
    return numpy.frombuffer(base64.b64decode(text), dtype="<f4").reshape(-1, dim)


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = sum(x * x for x in a) ** 0.5
    nb = sum(y * y for y in b) ** 0.5
    return dot / (na * nb)


def rate(fn, batch, texts, min_seconds, warm=True):
    """Sentences per second of fn(batch_of_texts), after a warm-up pass over the corpus when
    `warm` (every input shape compiles its kernels once on a GPU, for PyTorch and burn alike)."""
    for i in range(0, 256 if warm else 0, batch):
        fn(texts[i:i + batch])
    done, calls, start = 0, 0, time.perf_counter()
    while True:
        chunk = [texts[(calls * batch + k) % len(texts)] for k in range(batch)]
        fn(chunk)
        done += batch
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 3:
            return done / elapsed


class Worker:
    """A vramkeeper worker process spoken to directly over its socket."""

    def __init__(self, agent, backend, model_dir, cache):
        self.sock_path = os.path.join(tempfile.mkdtemp(prefix="vk-sock-"), "bench.sock")
        self.proc = subprocess.Popen(
            [agent, "worker", "--agent-id", "bench", "--instance", "bench", "--socket",
             self.sock_path, "--backend", backend, "--device-index", "0", "--cache-dir", cache,
             "--log-dir", os.path.dirname(self.sock_path)])
        deadline = time.time() + 60
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(self.sock_path)
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise SystemExit("the worker did not start")
                time.sleep(0.05)
        reply = self.call({"op": "load", "spec": {"name": "all-minilm-l6-v2", "kind": "minilm",
                                                  "dir": model_dir}})
        assert reply["reply"] == "loaded", reply

    def call(self, message):
        body = json.dumps(message).encode()
        self.sock.sendall(struct.pack(">I", len(body)) + body)
        n = struct.unpack(">I", self._read(4))[0]
        return json.loads(self._read(n))

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise SystemExit("the worker closed the connection")
            buf += chunk
        return buf

    def embed(self, texts):
        reply = self.call({"op": "embed", "texts": texts})
        assert reply["reply"] == "embedded", reply
        return decode(reply["vectors"], reply["dim"])

    def close(self):
        self.proc.kill()
        self.proc.wait()


class Agent:
    """The agent serving MiniLM over HTTP."""

    def __init__(self, agent, device, model_dir, cache, kernels):
        catalog = os.path.join(cache, "catalog.toml")
        with open(catalog, "w") as f:
            f.write(f'[[model]]\nname = "all-minilm-l6-v2"\nkind = "minilm"\ndir = "{model_dir}"\n')
        self.proc = subprocess.Popen(
            [agent, "--listen", "127.0.0.1:0", "--device", "auto" if device == "cuda" else "cpu",
             "--catalog", catalog, "--state-dir", os.path.join(cache, "state"), "--cache-dir", kernels],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        self.url = "http://" + line.strip().removeprefix("listening on ")

    def embed(self, texts):
        body = json.dumps({"model": "all-minilm-l6-v2", "input": texts,
                           "encoding_format": "base64"}).encode()
        req = urllib.request.Request(self.url + "/v1/embeddings", body,
                                     {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return [decode(d["embedding"], 384)[0] for d in json.load(r)["data"]]

    def close(self):
        self.proc.terminate()
        self.proc.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--agent", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batches", default="1,32,256")
    p.add_argument("--seconds", type=float, default=3.0, help="each side's turn, per round")
    p.add_argument("--rounds", type=int, default=3, help="turns of each side per batch size")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--cache", help="the agent's cache directory (kept kernels); a temporary one if absent")
    args = p.parse_args()

    import sentence_transformers
    import torch

    texts = corpus(1024)
    batches = [int(b) for b in args.batches.split(",")]
    backend = "cuda" if args.device == "cuda" else "flex"
    machine = (torch.cuda.get_device_name(0) if args.device == "cuda"
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    results = {"device": args.device, "machine": machine, "torch": torch.__version__,
               "sentence_transformers": sentence_transformers.__version__, "rows": []}

    st = sentence_transformers.SentenceTransformer(args.model_dir, device=args.device)

    def st_embed(chunk):
        return st.encode(chunk, batch_size=len(chunk), convert_to_numpy=True)

    with tempfile.TemporaryDirectory(prefix="vk-bench-") as cache:
        kernels = args.cache or cache
        worker = Worker(args.agent, backend, args.model_dir, kernels)
        # Correctness first: the reference sentences, compared with sentence-transformers.
        ref = json.load(open(FIXTURE))["sentences"]
        vectors = worker.embed([s["text"] for s in ref])
        results["min_cosine_vs_reference"] = float(min(
            cosine(v, s["embedding"]) for v, s in zip(vectors, ref)))
        # Each side in turn, round after round, so that a drift of the machine's speed reaches
        # both: ratios are the median of the rounds' ratios.
        for b in batches:
            direct, st_a = [], []
            for r in range(args.rounds):
                direct.append(rate(worker.embed, b, texts, args.seconds, warm=r == 0))
                st_a.append(rate(st_embed, b, texts, args.seconds, warm=r == 0))
            results["rows"].append({"batch": b, "direct_rounds": direct, "st_rounds_direct": st_a})
        worker.close()
        os.makedirs(os.path.join(cache, "agent"), exist_ok=True)
        agent = Agent(args.agent, args.device, args.model_dir, os.path.join(cache, "agent"), kernels)
        try:
            for row in results["rows"]:
                http, st_b = [], []
                for r in range(args.rounds):
                    http.append(rate(agent.embed, row["batch"], texts, args.seconds, warm=r == 0))
                    st_b.append(rate(st_embed, row["batch"], texts, args.seconds, warm=False))
                row["http_rounds"], row["st_rounds_http"] = http, st_b
        finally:
            agent.close()
    median = statistics.median
    for row in results["rows"]:
        row["vramkeeper_direct"] = median(row["direct_rounds"])
        row["vramkeeper_http"] = median(row["http_rounds"])
        row["sentence_transformers"] = median(row["st_rounds_direct"] + row["st_rounds_http"])
        row["ratio_direct"] = median(a / b for a, b in zip(row["direct_rounds"], row["st_rounds_direct"]))
        row["ratio_http"] = median(a / b for a, b in zip(row["http_rounds"], row["st_rounds_http"]))

    print(f"\nEmbeddings, all-MiniLM-L6-v2, {args.device} ({machine}); sentences/s, "
          f"min cosine vs reference {results['min_cosine_vs_reference']:.6f}\n")
    print("| batch | vramkeeper worker | vramkeeper HTTP | sentence-transformers | worker / ST | HTTP / ST |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results["rows"]:
        print(f"| {r['batch']} | {r['vramkeeper_direct']:.1f} | {r['vramkeeper_http']:.1f} | "
              f"{r['sentence_transformers']:.1f} | {r['ratio_direct']:.2f}x | {r['ratio_http']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
