#!/usr/bin/env python3
"""What the agent's pass-through of OpenAI-style requests costs: the same requests sent to a
"server" model's own port (the fixture server, node-agent/tests/fixtures/openai_server.py)
and through the agent, on this machine. Python 3 standard library only.

1. Per request: N sequential non-stream chat completions (max_tokens 1) on keep-alive
   connections, direct and via the agent interleaved (the order alternates each round);
   latency p50 / p90 / p99 of each, and added = via - direct per percentile.
2. Per streamed chunk: S concurrent streaming chat completions (max_tokens 50, the fixture
   waiting --token-delay-ms between tokens) through the agent, then S directly, for
   --stream-rounds rounds (the order alternates; pooled); for every chunk, its arrival time
   minus the chunk's own "created" (time.time() when the fixture produced it, same machine
   clock); p50 / p90 / p99 of that delay, direct vs via.

The fixture runs with TCP_NODELAY and a listen backlog of 1024, as real model servers do (see
NODELAY_FIXTURE; --fixture-nagle runs it as it is). --client-quickack makes the client ACK at
once what it reads, which tells whether a difference comes from a server's Nagle waiting for
the client's delayed ACK (ordinary clients do delay their ACKs).

The client, the fixture (Python) and the agent share the machine's cores: the client's
scheduling delay is in both columns, and under 200 streams the machine is busy; the CPU
seconds each process used in each phase are printed with the numbers.

It starts the agent itself (--device cpu, a temporary catalog, state and cache directory,
--agent-id bench-<pid>), and ends every process it started, also on error or SIGTERM: the
agent with SIGTERM then SIGKILL, then any process left whose environment carries
VRAMKEEPER_WORKER_MARKER=bench-<pid>:... (the model servers the agent started).

    cargo build --release -p vramkeeper-node-agent
    python3 scripts/bench-proxy.py --agent target/release/vramkeeper-agent [--requests 2000] \
        [--streams 200] [--stream-rounds 3] [--client-quickack] [--out FILE]
"""
import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "node-agent", "tests", "fixtures", "openai_server.py")
MODEL = "fx"
MARKER = "VRAMKEEPER_WORKER_MARKER"
ORDER = ("via then direct", "direct then via")
TICKS = os.sysconf("SC_CLK_TCK")
# The fixture as real model servers (uvicorn, ...) run: TCP_NODELAY on its connections and a
# listen backlog of 1024. http.server writes an answer's headers and its body in two send()s;
# without NODELAY, Nagle holds the body until the client ACKs the headers, and a client that
# delays its ACK (Linux: up to 40 ms) waits that long: every other non-stream request took
# ~43 ms instead of ~0.6 ms here, on whichever side (this client, or the agent as the
# fixture's client) happened to delay its ACK. And socketserver's backlog of 5 drops most of
# 200 simultaneous connects: they came in over a minute of SYN retransmits, some reset.
NODELAY_FIXTURE = ("import runpy, socketserver, sys; "
                   "socketserver.StreamRequestHandler.disable_nagle_algorithm = True; "
                   "socketserver.TCPServer.request_queue_size = 1024; "
                   "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


# ----- processes --------------------------------------------------------------------------


def cpu_seconds(pid):
    """User + system CPU seconds used so far by process `pid` (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def own_cpu_seconds():
    t = os.times()
    return t.user + t.system


def marked_pids(agent_id):
    """Processes whose environment has VRAMKEEPER_WORKER_MARKER=<agent_id>:..."""
    want = f"{MARKER}={agent_id}:".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if any(var.startswith(want) for var in env.split(b"\0")):
            found.append(int(entry))
    return found


def alive(pid):
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def end_process(pid, grace):
    """SIGTERM, up to `grace` seconds to go, then SIGKILL. True if it had to be killed."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            return False
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def stop_agent(agent, agent_id, notes):
    """End the agent (SIGTERM, then SIGKILL after 20 s) and every worker left of it."""
    if agent is not None and agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            notes.append("the agent did not exit within 20 s of SIGTERM: killed")
            agent.kill()
            agent.wait()
    for _ in range(3):
        left = marked_pids(agent_id)
        if not left:
            return
        notes.append(f"worker processes left after the agent: {left}: ended")
        for pid in left:
            if end_process(pid, 3.0):
                notes.append(f"worker {pid} ignored SIGTERM: killed")
        time.sleep(0.2)


def on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # run the finally blocks


# ----- HTTP to the agent's control routes ---------------------------------------------------


def call(addr, method, path, body=None, timeout=120):
    """One request on its own connection; (status, parsed JSON or text)."""
    host, port = addr
    conn = Conn(host, port, timeout)
    try:
        status, data = conn.request(method, path, body)
    finally:
        conn.close()
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data.decode(errors="replace")


class Conn:
    """A minimal blocking HTTP/1.1 client on one keep-alive connection (Content-Length or
    chunked answers), so that the client adds as little as it can and the same to both sides."""

    quickack = False  # --client-quickack

    def __init__(self, host, port, timeout=60):
        self.host, self.port, self.timeout = host, port, timeout
        self.sock = None
        self.reconnects = -1
        self.connect()

    def connect(self):
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.reconnects += 1

    def close(self):
        if self.sock is not None:
            self.file.close()
            self.sock.close()
            self.sock = None

    def request(self, method, path, body=None):
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nAccept: */*\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()
        if self.sock is None:
            self.connect()
        self.sock.sendall(head + data)
        if self.quickack:  # ACK at once what arrives (Linux clears it again: set per request)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        f = self.file
        line = f.readline()
        if not line:
            raise ConnectionError(f"{self.host}:{self.port} closed the connection")
        status = int(line.split()[1])
        length, chunked, close = None, False, False
        while (line := f.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and "close" in value:
                close = True
        if chunked:
            parts = []
            while True:
                size = int(f.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while f.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(f.read(size))
                f.readline()
            payload = b"".join(parts)
        elif length is not None:
            payload = f.read(length)
        else:
            payload = f.read()
            close = True
        if close:
            self.close()
        return status, payload


# ----- phase 1: sequential non-stream requests ----------------------------------------------


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def sequential(direct, via, n, warmup, pids):
    body = json.dumps({"model": MODEL, "max_tokens": 1, "stream": False,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    conns = {"direct": Conn(*direct), "via": Conn(*via)}
    times = {"direct": [], "via": []}
    errors = {"direct": 0, "via": 0}
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    own0, wall0 = own_cpu_seconds(), time.monotonic()
    try:
        for i in range(warmup + n):
            order = ("direct", "via") if i % 2 == 0 else ("via", "direct")
            for side in order:
                t0 = time.perf_counter()
                status, payload = conns[side].request("POST", "/v1/chat/completions", body)
                t1 = time.perf_counter()
                ok = status == 200 and b'"chat.completion"' in payload
                if i >= warmup:
                    if ok:
                        times[side].append((t1 - t0) * 1000)
                    else:
                        errors[side] += 1
                if not ok and errors[side] <= 3:
                    print(f"  {side}: {status} {payload[:200]!r}", file=sys.stderr)
    finally:
        for c in conns.values():
            c.close()
    wall = time.monotonic() - wall0
    cpu = {k: (cpu_seconds(p) or 0) - (cpu0[k] or 0) for k, p in pids.items()}
    cpu["client"] = own_cpu_seconds() - own0
    return {"ms": times, "errors": errors, "wall_s": wall, "cpu_s": cpu,
            "reconnects": {k: c.reconnects for k, c in conns.items()}}


# ----- phase 2: concurrent streams ----------------------------------------------------------


class StreamClient(asyncio.Protocol):
    """One streaming request; every SSE event with "created" is stamped with time.time() in
    data_received, the first point the bytes are in this process."""

    quickack = False  # --client-quickack

    def __init__(self, request, delays, done):
        self.request, self.delays, self.done = request, delays, done
        self.buf = b""
        self.sse = b""
        self.state = "head"
        self.status = None
        self.chunked = False
        self.left = None  # Content-Length left, or bytes left of the current chunk
        self.events = 0
        self.finished = False  # [DONE] seen
        self.first = None
        self.error = None

    def connection_made(self, transport):
        self.transport = transport
        self.t_start = time.time()
        transport.write(self.request)

    def data_received(self, data):
        t = time.time()
        self.buf += data
        try:
            self.parse(t)
        except Exception as e:  # a malformed answer: note it and end this stream
            self.error = f"parse error: {e!r}"
            self.transport.close()
        if self.quickack and not self.transport.is_closing():
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    def feed(self, payload, t):
        self.sse += payload
        while (end := self.sse.find(b"\n\n")) >= 0:
            event, self.sse = self.sse[:end], self.sse[end + 2:]
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    self.finished = True
                    continue
                chunk = json.loads(data)
                if self.status != 200:
                    continue
                if self.first is None:
                    self.first = t
                self.delays.append(t - chunk["created"])
                self.events += 1

    def parse(self, t):
        while True:
            if self.state == "head":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
                lines = head.split("\r\n")
                self.status = int(lines[0].split()[1])
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name, value = name.strip().lower(), value.strip().lower()
                    if name == "transfer-encoding" and "chunked" in value:
                        self.chunked = True
                    elif name == "content-length":
                        self.left = int(value)
                self.state = "size" if self.chunked else "body"
            elif self.state == "size":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(self.buf[:end].split(b";")[0].strip() or b"0", 16)
                self.buf = self.buf[end + 2:]
                if size == 0:
                    self.state = "end"
                    self.transport.close()
                    return
                self.left, self.state = size, "chunk"
            elif self.state == "chunk":
                if len(self.buf) < self.left + 2:
                    return
                payload, self.buf = self.buf[:self.left], self.buf[self.left + 2:]
                self.feed(payload, t)
                self.state = "size"
            elif self.state == "body":
                take = self.buf if self.left is None else self.buf[:self.left]
                self.buf = b"" if self.left is None else self.buf[len(take):]
                self.feed(take, t)
                if self.left is not None:
                    self.left -= len(take)
                    if self.left <= 0:
                        self.state = "end"
                        self.transport.close()
                return
            else:
                return

    def connection_lost(self, exc):
        if exc is not None and self.error is None:
            self.error = repr(exc)
        if not self.done.done():
            self.done.set_result(None)


async def streams(addr, count, max_tokens):
    loop = asyncio.get_running_loop()
    body = json.dumps({"model": MODEL, "max_tokens": max_tokens, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\n"
               f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
               f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    delays = []

    async def one():
        done = loop.create_future()
        _, proto = await loop.create_connection(
            lambda: StreamClient(request, delays, done), addr[0], addr[1])
        await asyncio.wait_for(done, 300)
        return proto

    t0 = time.time()
    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    wall = time.time() - t0
    protos = [r for r in results if isinstance(r, StreamClient)]
    failures = [repr(r) for r in results if not isinstance(r, StreamClient)]
    for p in protos:
        if p.status != 200 or not p.finished or p.error:
            failures.append(f"status {p.status}, [DONE] {'seen' if p.finished else 'missing'}, "
                            f"events {p.events}, {p.error or ''}")
    return {
        "delays_ms": [d * 1000 for d in delays],
        "events": sum(p.events for p in protos),
        "complete": sum(1 for p in protos if p.status == 200 and p.finished and not p.error),
        "failures": failures,
        "first_ms": [(p.first - p.t_start) * 1000 for p in protos if p.first is not None],
        "wall_s": wall,
    }


def stream_phase(addr, count, max_tokens, pids):
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    own0 = own_cpu_seconds()
    r = asyncio.run(streams(addr, count, max_tokens))
    r["cpu_s"] = {k: (cpu_seconds(p) or 0) - (cpu0[k] or 0) for k, p in pids.items()}
    r["cpu_s"]["client"] = own_cpu_seconds() - own0
    return r


def pooled(rounds):
    """The rounds of one side as one: lists joined, counts and seconds added."""
    out = {"delays_ms": [], "first_ms": [], "failures": [], "events": 0, "complete": 0,
           "wall_s": 0.0, "cpu_s": {}, "round_p99_ms": []}
    for r in rounds:
        for key in ("delays_ms", "first_ms", "failures"):
            out[key] += r[key]
        for key in ("events", "complete", "wall_s"):
            out[key] += r[key]
        for who, c in r["cpu_s"].items():
            out["cpu_s"][who] = out["cpu_s"].get(who, 0.0) + c
        out["round_p99_ms"].append(percentile(r["delays_ms"], 99))
    return out


# ----- report -------------------------------------------------------------------------------


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return os.cpu_count(), len(os.sched_getaffinity(0)), model


def report(args, agent_path, seq, via_s, direct_s, notes, token_delay_ms):
    ncpu, usable, cpu = machine()
    st = os.stat(agent_path)
    built = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(st.st_mtime))
    out = []
    w = out.append
    quickack = ", the client setting TCP_QUICKACK" if args.client_quickack else ""
    w(f"## Proxy overhead: the fixture server directly vs through vramkeeper-agent\n")
    w(f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    w(f"- machine: nproc {usable} ({ncpu} online), CPU `{cpu}`, agent `--device cpu`")
    w(f"- agent: `{agent_path}` ({st.st_size / 2**20:.0f} MiB, built {built})")
    nagle = ("as it is (Nagle on, listen backlog 5)" if args.fixture_nagle else
             "with TCP_NODELAY and a listen backlog of 1024, as real model servers run")
    w(f"- fixture: `openai_server.py` (Python {sys.version.split()[0]}, ThreadingHTTPServer), "
      f"`--token-delay-ms {token_delay_ms:g}`, {nagle}")
    w(f"- client: this script, Python {sys.version.split()[0]}, on the same machine: it competes "
      f"with the agent and the fixture for the {usable} cores, and its own scheduling delay is in "
      f"both columns (its CPU time per phase is below)")
    w("")
    d, v = seq["ms"]["direct"], seq["ms"]["via"]
    w(f"### 1. Sequential non-stream chat completions (max_tokens 1), keep-alive, interleaved\n")
    w(f"{len(d)} direct + {len(v)} via the agent (after {args.warmup} warm-up rounds{quickack}), "
      f"{seq['wall_s']:.1f} s.\n")
    w("| latency | direct ms | via agent ms | added ms |")
    w("|---|---:|---:|---:|")
    for p in (50, 90, 99):
        a, b = percentile(d, p), percentile(v, p)
        w(f"| p{p} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    a, b = sum(d) / max(1, len(d)), sum(v) / max(1, len(v))
    w(f"| mean | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    w(f"| max | {max(d, default=float('nan')):.3f} | {max(v, default=float('nan')):.3f} | |")
    w(f"| errors | {seq['errors']['direct']} | {seq['errors']['via']} | |")
    c = seq["cpu_s"]
    n = args.requests + args.warmup  # the CPU was counted over the warm-up rounds too
    w(f"\nCPU in this phase (both sides together): agent {c['agent']:.2f} s "
      f"({c['agent'] / n * 1e6:.0f} µs per proxied request), fixture {c['fixture']:.2f} s, "
      f"client {c['client']:.2f} s.\n")
    w(f"### 2. {args.streams} concurrent streams (max_tokens {args.max_tokens}, "
      f"{token_delay_ms:g} ms between tokens): delay of each chunk\n")
    order = ", ".join(ORDER[i % 2] for i in range(args.stream_rounds))
    w("Delay = arrival time in the client (stamped as the bytes are read) minus the chunk's "
      "`created` (stamped by the fixture as it produced it). "
      f"{args.stream_rounds} round(s) per side, each {args.streams} streams at once, "
      f"pooled; order per round: {order}{quickack}.\n")
    w("| chunk delay | direct ms | via agent ms | added ms |")
    w("|---|---:|---:|---:|")
    dd, vd = direct_s["delays_ms"], via_s["delays_ms"]
    for p in (50, 90, 99):
        a, b = percentile(dd, p), percentile(vd, p)
        w(f"| p{p} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    w(f"| max | {max(dd, default=float('nan')):.2f} | {max(vd, default=float('nan')):.2f} | |")
    a, b = percentile(direct_s["first_ms"], 50), percentile(via_s["first_ms"], 50)
    w(f"| first chunk after connect, p50 | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
    a, b = percentile(direct_s["first_ms"], 99), percentile(via_s["first_ms"], 99)
    w(f"| first chunk after connect, p99 | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
    w("| p99 of each round | " + ", ".join(f"{x:.1f}" for x in direct_s["round_p99_ms"]) +
      " | " + ", ".join(f"{x:.1f}" for x in via_s["round_p99_ms"]) + " | |")
    w(f"| chunks measured | {direct_s['events']} | {via_s['events']} | |")
    total = args.streams * args.stream_rounds
    w(f"| streams complete | {direct_s['complete']}/{total} | {via_s['complete']}/{total} | |")
    w(f"| wall s | {direct_s['wall_s']:.2f} | {via_s['wall_s']:.2f} | |")
    for who in ("agent", "fixture", "client"):
        w(f"| CPU s, {who} | {direct_s['cpu_s'][who]:.2f} | {via_s['cpu_s'][who]:.2f} | |")
    if notes:
        w("\nNotes:\n")
        for note in notes:
            w(f"- {note}")
    return "\n".join(out) + "\n"


# ----- main ---------------------------------------------------------------------------------


def fixture_port(addr, timeout=30):
    """The fixture's own port and pid, from its line in the agent's log of the model."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, logs = call(addr, "GET", f"/v1/models/{MODEL}/logs")
        if status == 200:
            for line in reversed(logs.get("lines", [])):
                m = re.search(r"fixture: listening on ([\d.]+):(\d+) \(pid (\d+)\)", line["text"])
                if m:
                    return (m.group(1), int(m.group(2))), int(m.group(3))
        time.sleep(0.2)
    raise SystemExit(f"no 'fixture: listening on' line in /v1/models/{MODEL}/logs: {logs}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agent", required=True, help="the vramkeeper-agent binary")
    p.add_argument("--requests", type=int, default=2000, help="sequential requests per side")
    p.add_argument("--warmup", type=int, default=100, help="uncounted rounds before them")
    p.add_argument("--streams", type=int, default=200, help="concurrent streams per side")
    p.add_argument("--stream-rounds", type=int, default=3,
                   help="rounds of phase 2, pooled (via then direct, direct then via, ...)")
    p.add_argument("--max-tokens", type=int, default=50, help="tokens per stream")
    p.add_argument("--token-delay-ms", type=float, default=20.0,
                   help="the fixture's delay between streamed tokens")
    p.add_argument("--fixture-nagle", action="store_true",
                   help="run the fixture as it is: no TCP_NODELAY, backlog 5 (see NODELAY_FIXTURE)")
    p.add_argument("--client-quickack", action="store_true",
                   help="the client sets TCP_QUICKACK before each answer (phase 1) and after "
                        "each read (phase 2), so that a server's Nagle never waits for its "
                        "delayed ACK (a diagnosis, not how ordinary clients behave)")
    p.add_argument("--out", help="also write the Markdown report here")
    args = p.parse_args()
    agent_path = os.path.abspath(args.agent)
    Conn.quickack = StreamClient.quickack = args.client_quickack
    agent_id = f"bench-{os.getpid()}"
    signal.signal(signal.SIGTERM, on_sigterm)
    notes = []
    agent = None
    with tempfile.TemporaryDirectory(prefix="vk-bench-proxy-") as d:
        catalog = os.path.join(d, "catalog.toml")
        # Non-stream answers are sent at once whatever the token delay, so one model serves
        # both phases (no switch, no second server between them).
        cmd = ["python3", os.path.abspath(FIXTURE), "--port", "{port}", "--model", MODEL,
               "--token-delay-ms", f"{args.token_delay_ms:g}"]
        if not args.fixture_nagle:
            cmd = ["python3", "-c", NODELAY_FIXTURE] + cmd[1:]
        with open(catalog, "w") as f:
            f.write(f'[[model]]\nname = "{MODEL}"\nkind = "server"\ncommand = {json.dumps(cmd)}\n')
        agent_log = open(os.path.join(d, "agent.stderr"), "w+")
        try:
            agent = subprocess.Popen(
                [agent_path, "--device", "cpu", "--catalog", catalog,
                 "--state-dir", os.path.join(d, "state"), "--cache-dir", os.path.join(d, "cache"),
                 "--listen", "127.0.0.1:0", "--agent-id", agent_id,
                 "--rate-limit", "100000", "--inference-rate-limit", "100000"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=agent_log, text=True,
                start_new_session=True)
            first = agent.stdout.readline().strip()
            if not first.startswith("listening on "):
                raise SystemExit(f"the agent did not start: {first!r} (exit {agent.poll()})")
            # Keep reading its stdout, so that it never blocks on a full pipe.
            threading.Thread(target=lambda: agent.stdout.read(), daemon=True).start()
            host, _, port = first.removeprefix("listening on ").rpartition(":")
            via = (host, int(port))
            status, answer = call(via, "POST", "/v1/models/switch", {"model": MODEL})
            if status != 200:
                raise SystemExit(f"switch to {MODEL}: {status} {answer}")
            direct, fixture_pid = fixture_port(via)
            pids = {"agent": agent.pid, "fixture": fixture_pid}
            print(f"agent {agent.pid} on {via[0]}:{via[1]}, fixture {fixture_pid} on "
                  f"{direct[0]}:{direct[1]}", file=sys.stderr)

            print(f"phase 1: {args.requests} sequential requests per side", file=sys.stderr)
            seq = sequential(direct, via, args.requests, args.warmup, pids)
            for side, n in seq["reconnects"].items():
                if n:
                    notes.append(f"phase 1, {side}: the connection was closed {n} times "
                                 "(reconnected)")
            rounds = {"via": [], "direct": []}
            for i in range(args.stream_rounds):
                for side in (("via", "direct") if i % 2 == 0 else ("direct", "via")):
                    print(f"phase 2, round {i + 1}: {args.streams} concurrent streams, {side}",
                          file=sys.stderr)
                    time.sleep(0.5)
                    rounds[side].append(stream_phase(via if side == "via" else direct,
                                                     args.streams, args.max_tokens, pids))
            via_s, direct_s = pooled(rounds["via"]), pooled(rounds["direct"])
            for name, r in (("via the agent", via_s), ("direct", direct_s)):
                if r["failures"]:
                    notes.append(f"phase 2, {name}: {len(r['failures'])} streams failed, e.g. "
                                 f"{r['failures'][0]}")
            status, stats = call(direct, "GET", "/stats")
            if status == 200 and (stats.get("cancelled") or stats.get("in_flight")):
                notes.append(f"fixture /stats after the run: {stats}")
            if agent.poll() is not None:
                notes.append(f"the agent exited during the run (status {agent.returncode})")
        finally:
            stop_agent(agent, agent_id, notes)
            agent_log.seek(0)
            plain = (re.sub(r"\x1b\[[0-9;]*m", "", l).rstrip() for l in agent_log)
            errors = [l for l in plain if " ERROR " in l or " WARN " in l]
            agent_log.close()
        if errors:
            notes.append(f"the agent logged {len(errors)} warnings/errors, e.g. `{errors[0][:300]}`")
    text = report(args, agent_path, seq, via_s, direct_s, notes, args.token_delay_ms)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
