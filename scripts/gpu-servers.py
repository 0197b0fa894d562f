#!/usr/bin/env python3
"""Server models on a real NVIDIA GPU: the agent runs PyTorch model servers (the test fixture
`openai_server.py` with --cuda-mib / --child-cuda-mib) and a synthetic burn model, and this
script checks what it says against nvidia-smi:

1. a catalog with two server models (torch-a: 2048 MiB in the server + 1024 MiB in its child,
   like vLLM's engine core; torch-b: 1024 MiB), both with free_path = "/admin/empty_cache",
   and one synthetic model;
2. the agent on --device cuda (auto free off: free and reset are called explicitly);
3. switches synthetic -> torch-a -> torch-b -> torch-a: load_ms, vram_mb, ram_mb, release;
4. torch-a's tree (processes whose environment says VRAMKEEPER_MODEL=torch-a under this run's
   agent id) summed from nvidia-smi against the agent's vram_mb (goal: within 64 MiB);
5. the seed's leak: the fixture allocates 2 GiB on CUDA and drops it without empty_cache, so
   PyTorch keeps it cached; the agent must show it as worker-growth ghost; /v1/gpu/free (which
   POSTs the free_path) must return it with the server still up; leak again, /v1/gpu/reset must
   restart the server and return it;
6. one streamed chat completion through the agent ends with [DONE];
7. unload: no process of the tree is left on the GPU; the agent is stopped (SIGTERM), and any
   process this run's agent marked is killed.

    python3 scripts/gpu-servers.py --agent PATH/vramkeeper-agent --out DIR \
        [--fixture node-agent/tests/fixtures/openai_server.py]

Writes DIR/gpu-servers-report.md and DIR/gpu-servers.json, prints the report, and exits 1 when
a check failed (every step runs regardless; cleanup always). Python 3 standard library only;
the fixture needs the machine's python3 with torch. Never resets the GPU or changes its
settings. `--device cpu` is for a dry run without a GPU (nvidia-smi checks then fail).
"""
import argparse
import http.client
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_FIXTURE = os.path.join(HERE, "..", "node-agent", "tests", "fixtures", "openai_server.py")

SYNTHETIC = "syn-burn"
TORCH_A = "torch-a"
TORCH_B = "torch-b"
SWITCHES = [SYNTHETIC, TORCH_A, TORCH_B, TORCH_A]
LEAK_MIB = 2048
GROWTH_AT_LEAST_MB = 1500.0
TOLERANCE_MIB = 64.0
FREE_PATH = "/admin/empty_cache"


# ----- catalog ------------------------------------------------------------------------------


def toml_str(s):
    """A TOML basic string."""
    return json.dumps(s)  # JSON string escapes are valid TOML basic-string escapes


def server_entry(name, fixture, python, args, free_path=True):
    command = [python, fixture, "--port", "{port}", "--model", name, *args]
    lines = ["[[model]]", f"name = {toml_str(name)}", 'kind = "server"',
             "command = [" + ", ".join(toml_str(a) for a in command) + "]",
             'health = "/health"', "ready_timeout_s = 600", "stop_grace_s = 10"]
    if free_path:
        lines.append(f"free_path = {toml_str(FREE_PATH)}")
    return "\n".join(lines) + "\n"


def catalog_text(fixture, python="python3", free_path=True):
    """The catalog: two PyTorch servers and a synthetic model."""
    return "\n".join([
        server_entry(TORCH_A, fixture, python, ["--cuda-mib", "2048", "--child-cuda-mib", "1024"],
                     free_path),
        server_entry(TORCH_B, fixture, python, ["--cuda-mib", "1024"], free_path),
        f'[[model]]\nname = "{SYNTHETIC}"\nkind = "synthetic"\nparams = 50_000_000\nlayers = 4\n'
        "seed = 3\n",
    ])


def write_catalog(path, fixture, python="python3", free_path=True):
    with open(path, "w") as f:
        f.write(catalog_text(fixture, python, free_path))
    return path


# ----- /proc ----------------------------------------------------------------------------------


def read_environ(pid):
    """A process's environment as a dict ({} when gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def alive(pid):
    """Exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def marked_processes(agent_id, model=None):
    """pid -> {model, marker, seq, cmd} of the live processes carrying this agent id's marker
    (VRAMKEEPER_WORKER_MARKER=<agent id>:<instance>), optionally only those of one model."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        env = read_environ(pid)
        marker = env.get("VRAMKEEPER_WORKER_MARKER", "")
        if not marker.startswith(agent_id + ":"):
            continue
        if model is not None and env.get("VRAMKEEPER_MODEL") != model:
            continue
        if not alive(pid):
            continue
        found[pid] = {"model": env.get("VRAMKEEPER_MODEL"), "marker": marker,
                      "seq": env.get("VRAMKEEPER_WORKER_SEQ"), "cmd": cmdline(pid)[:160]}
    return found


# ----- nvidia-smi -----------------------------------------------------------------------------


def run_text(cmd, timeout=30):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, repr(e)
    if r.returncode != 0:
        return None, f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[:300]}"
    return r.stdout, None


def smi_apps():
    """pid -> MiB of every compute process nvidia-smi lists; raises when it cannot."""
    out, err = run_text(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                         "--format=csv,noheader,nounits"])
    if out is None:
        raise RuntimeError(f"nvidia-smi: {err}")
    apps = {}
    for line in out.strip().splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) >= 2 and parts[0].isdigit():
            try:
                apps[int(parts[0])] = apps.get(int(parts[0]), 0.0) + float(parts[1])
            except ValueError:
                pass  # "[N/A]"
    return apps


def smi_used_mib(index=0):
    out, err = run_text(["nvidia-smi", "-i", str(index), "--query-gpu=memory.used",
                         "--format=csv,noheader,nounits"])
    if out is None:
        raise RuntimeError(f"nvidia-smi: {err}")
    return float(out.strip().splitlines()[0])


# ----- HTTP -----------------------------------------------------------------------------------


def http_json(method, url, body=None, timeout=120):
    """(status, parsed JSON or {"raw": text}); raises only when there is no answer at all."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"content-type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, text = r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode(errors="replace")
    try:
        return status, json.loads(text) if text else {}
    except json.JSONDecodeError:
        return status, {"raw": text[:2000]}


class Agent:
    def __init__(self, binary, work, catalog, agent_id, device, extra=()):
        self.agent_id = agent_id
        self.log_path = os.path.join(work, "agent.log")
        self.log = open(self.log_path, "a")
        self.cmd = [binary, "--device", device, "--catalog", catalog,
                    "--state-dir", os.path.join(work, "state"),
                    "--cache-dir", os.path.join(work, "cache"),
                    "--listen", "127.0.0.1:0", "--agent-id", agent_id,
                    "--sample-ms", "250", "--auto-free", "false", *extra]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        line = self._first_line(180)
        if not line.startswith("listening on "):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"agent did not start (first stdout line {line!r}); "
                               f"its log: {self.log_tail(15, skip_backtrace=True)}")
        self.url = "http://" + line.strip().removeprefix("listening on ")
        # Keep draining stdout so that a chatty agent never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _first_line(self, timeout):
        fd = self.proc.stdout.fileno()
        buf = b""
        end = time.monotonic() + timeout
        while b"\n" not in buf:
            left = end - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
        first, _, rest = buf.partition(b"\n")
        if rest:
            self.log.write(rest.decode(errors="replace"))
            self.log.flush()
        return first.decode(errors="replace")

    def _drain(self):
        for line in self.proc.stdout:
            self.log.write("stdout: " + line.decode(errors="replace"))
            self.log.flush()

    def log_tail(self, n, skip_backtrace=False):
        try:
            with open(self.log_path, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        if skip_backtrace:  # Rust's "Stack backtrace:" frames say less than the error above
            lines = [l for l in lines if l.strip() and not l.lstrip().startswith("at ")
                     and not l.lstrip().split(":")[0].isdigit()]
        return lines[-n:]

    def call(self, method, path, body=None, timeout=900):
        return http_json(method, self.url + path, body, timeout)

    def status(self):
        code, s = self.call("GET", "/v1/status", timeout=30)
        if code != 200:
            raise RuntimeError(f"GET /v1/status: {code} {s}")
        return s

    def device(self):
        return self.status()["devices"][0]

    def stop(self, grace=30):
        """SIGTERM, then SIGKILL after grace seconds; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# ----- the run --------------------------------------------------------------------------------


class Run:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.agent = None
        self.agent_id = f"gpu-servers-{os.getpid()}"
        self.report = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "host": platform.node(), "python": sys.version.split()[0],
                       "agent_binary": os.path.abspath(args.agent),
                       "fixture": os.path.abspath(args.fixture), "agent_id": self.agent_id,
                       "steps": {}, "checks": []}
        self.switch_replies = {}  # model -> its last switch reply
        self.ghost_baseline = None  # the ghost with torch-a loaded, before any leak
        self.fixture_port = None

    def record_device_used(self, rec):
        """nvidia-smi's used memory, and how far it is above the level before the agent started."""
        try:
            used = smi_used_mib()
            before = self.report["steps"].get("machine", {}).get("used_before_agent_mib")
            rec["nvidia_smi_used_mib"] = used
            if before is not None:
                rec["device_used_minus_start_mib"] = round(used - before, 1)
        except Exception as e:
            rec["nvidia_smi_used_error"] = repr(e)

    def check(self, step, name, ok, detail=""):
        self.report["checks"].append({"step": step, "check": name, "ok": bool(ok),
                                      "detail": detail})
        print(f"  [{'ok' if ok else 'FAIL'}] {step}: {name} {detail}", flush=True)
        return ok

    def step(self, name, fn, needs_agent=True):
        print(f"== {name}", flush=True)
        rec = {}
        self.report["steps"][name] = rec
        t = time.monotonic()
        try:
            if needs_agent and self.agent is None:
                raise RuntimeError("skipped: the agent is not running")
            fn(rec)
        except Exception as e:
            rec["error"] = repr(e)
            rec["traceback"] = traceback.format_exc().splitlines()[-6:]
            self.check(name, "step ran to the end", False, repr(e))
        rec["seconds"] = round(time.monotonic() - t, 2)
        print("   " + json.dumps({k: v for k, v in rec.items() if k != "traceback"})[:1500],
              flush=True)

    # --- 0: the machine

    def machine(self, rec):
        out, err = run_text(["nvidia-smi", "-L"])
        rec["nvidia_smi_L"] = out.strip() if out else f"unavailable: {err}"
        out, err = run_text(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total,"
                             "memory.used", "--format=csv,noheader"])
        rec["gpus"] = out.strip() if out else f"unavailable: {err}"
        rec["driver_version"] = out.strip().splitlines()[0].split(",")[2].strip() if out else None
        out, err = run_text([sys.executable, "-c", "import torch; print(torch.__version__, "
                             "torch.version.cuda, torch.cuda.is_available())"], timeout=120)
        rec["torch"] = out.strip() if out else f"unavailable: {err}"
        try:
            rec["used_before_agent_mib"] = smi_used_mib()
            rec["apps_before_agent"] = smi_apps()
        except Exception as e:
            rec["nvidia_smi_error"] = repr(e)

    # --- 1, 2: catalog and agent

    def start_agent(self, rec):
        catalog = os.path.join(self.work, "catalog.toml")
        write_catalog(catalog, os.path.abspath(self.args.fixture), self.args.python)
        rec["catalog"] = catalog
        rec["free_path"] = True
        try:
            self.agent = Agent(self.args.agent, self.work, catalog, self.agent_id,
                               self.args.device, self.args.agent_arg)
        except RuntimeError as e:
            if "unknown field `free_path`" not in str(e):
                raise
            # An agent built before free_path existed: run without it and say so.
            rec["free_path"] = False
            rec["free_path_refused"] = str(e)[:500]
            write_catalog(catalog, os.path.abspath(self.args.fixture), self.args.python,
                          free_path=False)
            self.agent = Agent(self.args.agent, self.work, catalog, self.agent_id,
                               self.args.device, self.args.agent_arg)
        self.check("agent", "catalog accepted with free_path", rec["free_path"])
        rec["url"] = self.agent.url
        rec["command"] = " ".join(self.agent.cmd)
        status = self.agent.status()
        d = status["devices"][0]
        rec["agent"] = status.get("agent")
        rec["device"] = {k: d.get(k) for k in ("gpu", "name", "backend", "memory", "ghost")}
        self.report["status_at_start"] = status
        self.check("agent", "device is a GPU", self.args.device != "cuda" or
                   d.get("backend") == "cuda", f"backend={d.get('backend')}")

    # --- 3: switches

    def switches(self, rec):
        rows = []
        rec["rows"] = rows
        for model in SWITCHES:
            t = time.monotonic()
            code, r = self.agent.call("POST", "/v1/models/switch", {"model": model}, timeout=900)
            wall = round(time.monotonic() - t, 2)
            rel = r.get("release") or None
            row = {"to": model, "code": code, "wall_s": wall, "from": r.get("from"),
                   "load_ms": r.get("load_ms"), "unload_ms": r.get("unload_ms"),
                   "verify_ms": r.get("verify_ms"), "vram_mb": r.get("vram_mb"),
                   "ram_mb": r.get("ram_mb"), "device_delta_mb": r.get("device_delta_mb"),
                   "release_model": rel and rel.get("model"),
                   "release_verified": rel and rel.get("verified"),
                   "release_killed": rel and rel.get("killed"),
                   "release_before_mb": rel and rel.get("before_mb"),
                   "release_after_mb": rel and rel.get("after_mb"),
                   "release_target_mb": rel and rel.get("target_mb")}
            if code != 200:
                row["error"] = r.get("error", r)
            rows.append(row)
            print("   switch " + json.dumps(row), flush=True)
            self.check("switches", f"switch to {model}", code == 200,
                       f"code={code}" + ("" if code == 200 else f" {json.dumps(r)[:300]}"))
            if code == 200:
                self.switch_replies[model] = r
                if rel is not None:
                    self.check("switches", f"release of {rel.get('model')} verified",
                               rel.get("verified") is True,
                               f"before={rel.get('before_mb')} after={rel.get('after_mb')} "
                               f"target={rel.get('target_mb')}")
        d = self.agent.device()
        rec["active_after"] = d.get("active_model")
        rec["models"] = [{k: m.get(k) for k in ("name", "state", "vram_mb", "ram_mb",
                                                "expected_mb", "load_ms", "loads", "pid")}
                         for m in d.get("models", [])]
        self.check("switches", "torch-a active at the end", d.get("active_model") == TORCH_A,
                   f"active={d.get('active_model')}")

    # --- 4: torch-a against nvidia-smi

    def find_port(self, model=TORCH_A, seconds=10):
        """The fixture's port, from its "listening on" line in the agent's copy of its logs
        (polled: the agent writes those lines out every 200 ms or so)."""
        prefix = "fixture: listening on 127.0.0.1:"
        t = time.monotonic()
        while True:
            code, logs = self.agent.call("GET", f"/v1/models/{model}/logs", timeout=30)
            if code != 200:
                raise RuntimeError(f"GET /v1/models/{model}/logs: {code} {logs}")
            for line in reversed(logs.get("lines", [])):
                text = line.get("text", "") if isinstance(line, dict) else str(line)
                if text.startswith(prefix):
                    return int(text[len(prefix):].split()[0])
            if time.monotonic() - t > seconds:
                raise RuntimeError(f"no '{prefix}PORT' line in the logs of {model} after "
                                   f"{seconds} s: {[l.get('text') for l in logs.get('lines', [])][-5:]}")
            time.sleep(0.2)

    def fixture_stats(self, port):
        return http_json("GET", f"http://127.0.0.1:{port}/stats", timeout=30)[1]

    def measure(self, rec):
        tree = marked_processes(self.agent_id, TORCH_A)
        try:
            apps = smi_apps()
        except Exception as e:
            apps = None
            rec["nvidia_smi_error"] = repr(e)
        d = self.agent.device()
        rec["tree"] = tree
        rec["nvidia_smi_apps"] = apps
        self.ghost_baseline = (d.get("ghost") or {}).get("total_mb")
        model = next((m for m in d.get("models", []) if m.get("name") == TORCH_A), {})
        switch_vram = (self.switch_replies.get(TORCH_A) or {}).get("vram_mb")
        status_vram = model.get("vram_mb")
        rec.update(agent_switch_vram_mb=switch_vram, agent_status_vram_mb=status_vram,
                   agent_expected_mb=model.get("expected_mb"), agent_pid=model.get("pid"),
                   agent_used_mb=(d.get("memory") or {}).get("used_mb"),
                   agent_baseline_mb=(d.get("memory") or {}).get("baseline_mb"),
                   ghost_mb=(d.get("ghost") or {}).get("total_mb"))
        try:
            self.fixture_port = self.find_port()
            rec["fixture_port"] = self.fixture_port
            rec["fixture_stats"] = self.fixture_stats(self.fixture_port)
        except Exception as e:
            rec["fixture_error"] = repr(e)
        self.check("measure", "torch-a's tree found in /proc", len(tree) >= 2,
                   f"{len(tree)} processes")
        if not self.check("measure", "nvidia-smi lists compute processes", apps is not None,
                          rec.get("nvidia_smi_error", "")):
            return
        matched = {p: apps[p] for p in tree if p in apps}
        rec["matched_pids"] = matched
        if matched:
            rec["basis"] = "tree pids found in nvidia-smi's list"
            smi_sum = sum(matched.values())
        else:
            rec["basis"] = ("NO tree pid in nvidia-smi's list (a PID namespace: nvidia-smi shows "
                            "host pids?): comparing the total of every compute process instead")
            smi_sum = sum(apps.values())
        rec["nvidia_smi_mib"] = smi_sum
        self.record_device_used(rec)
        for label, value in (("switch reply vram_mb", switch_vram),
                             ("status vram_mb", status_vram)):
            if value is None:
                self.check("measure", f"agent's {label} present", False)
                continue
            diff = round(smi_sum - value, 1)
            rec[f"diff_{label.replace(' ', '_')}_mib"] = diff
            self.check("measure", f"nvidia-smi vs {label} within {TOLERANCE_MIB:g} MiB",
                       abs(diff) <= TOLERANCE_MIB,
                       f"nvidia-smi {smi_sum:.0f} - agent {value:.0f} = {diff:+.0f} MiB "
                       f"({'pids' if matched else 'totals'})")

    # --- 5: leak, free, leak, reset

    def ghost(self):
        d = self.agent.device()
        g = d.get("ghost") or {}
        return d, g.get("total_mb"), g.get("sources") or []

    def leak_and_wait(self, rec, tag):
        if self.fixture_port is None:
            self.fixture_port = self.find_port()
        port = self.fixture_port
        _, ghost0, sources0 = self.ghost()
        if self.ghost_baseline is None:
            self.ghost_baseline = ghost0
        rec[f"{tag}_ghost_before_leak_mb"] = ghost0
        rec[f"{tag}_sources_before_leak"] = sources0
        code, r = http_json("POST", f"http://127.0.0.1:{port}/admin/leak",
                            {"mib": LEAK_MIB, "cuda": True}, timeout=300)
        rec[f"{tag}_leak_reply"] = r
        if not self.check(tag, f"fixture leaked {LEAK_MIB} MiB on CUDA (kept cached)",
                          code == 200, f"code={code} {json.dumps(r)[:300]}"):
            return False
        t = time.monotonic()
        seen = None
        while time.monotonic() - t < 60:
            _, total, sources = self.ghost()
            growth = [s for s in sources if s.get("kind") == "worker-growth"
                      and (s.get("mb") or 0) >= GROWTH_AT_LEAST_MB]
            if growth:
                seen = {"after_s": round(time.monotonic() - t, 2), "ghost_mb": total,
                        "source": growth[0], "sources": sources}
                break
            time.sleep(0.5)
        if seen is None:
            _, total, sources = self.ghost()
            seen = {"after_s": None, "ghost_mb": total, "sources": sources}
        rec[f"{tag}_growth"] = seen
        self.check(tag, f"worker-growth >= {GROWTH_AT_LEAST_MB:g} MiB shown within 60 s",
                   seen["after_s"] is not None,
                   f"ghost={seen['ghost_mb']} sources="
                   + json.dumps([(s.get("kind"), s.get("mb"), s.get("name"))
                                 for s in seen["sources"]]))
        return True

    def ghost_limit(self):
        """Where the ghost should come back to: before any leak, plus 256 MiB."""
        return (self.ghost_baseline or 0.0) + 256.0

    def settle(self, limit_mb, seconds=30):
        """Polls the ghost until it is at most limit_mb: (ghost, seconds) or (last, None)."""
        t = time.monotonic()
        total = None
        while time.monotonic() - t < seconds:
            _, total, _ = self.ghost()
            if total is not None and total <= limit_mb:
                return total, round(time.monotonic() - t, 2)
            time.sleep(0.5)
        return total, None

    @staticmethod
    def remediation(r):
        return {k: r.get(k) for k in ("action", "ghost_before_mb", "ghost_after_mb", "cleaned_mb",
                                      "used_before_mb", "used_after_mb", "duration_ms",
                                      "reloaded", "at_baseline")} | {
            "killed": [(k.get("pid"), k.get("name"), k.get("kind"), k.get("mb"))
                       for k in r.get("killed") or []],
            "spared": [(s.get("pid"), s.get("name"), s.get("kind"), s.get("mb"), s.get("reason"))
                       for s in r.get("spared") or []]}

    def leak_free(self, rec):
        tree_before = marked_processes(self.agent_id, TORCH_A)
        if not self.leak_and_wait(rec, "free"):
            return
        code, r = self.agent.call("POST", "/v1/gpu/free", {}, timeout=300)
        rec["free_code"] = code
        rec["free"] = self.remediation(r) if code == 200 else r
        self.check("free", "POST /v1/gpu/free answered 200", code == 200, f"code={code}")
        limit = self.ghost_limit()
        ghost, after_s = self.settle(limit)
        rec["ghost_settled_mb"], rec["ghost_settled_after_s"] = ghost, after_s
        self.check("free", f"ghost back to <= {limit:.0f} MiB (before any leak + 256)",
                   after_s is not None,
                   f"free's ghost {rec['free'].get('ghost_before_mb')} -> "
                   f"{rec['free'].get('ghost_after_mb')}, status ghost {ghost}")
        d = self.agent.device()
        tree_after = marked_processes(self.agent_id, TORCH_A)
        rec["active_after"] = d.get("active_model")
        rec["same_server"] = sorted(tree_before) == sorted(tree_after)
        self.check("free", "torch-a still active, same processes (not restarted)",
                   d.get("active_model") == TORCH_A and rec["same_server"],
                   f"active={d.get('active_model')} before={sorted(tree_before)} "
                   f"after={sorted(tree_after)}")
        try:
            rec["fixture_stats_after"] = self.fixture_stats(self.fixture_port)
        except Exception as e:
            rec["fixture_stats_error"] = repr(e)

    def leak_reset(self, rec):
        tree_before = marked_processes(self.agent_id, TORCH_A)
        if not self.leak_and_wait(rec, "reset"):
            return
        code, r = self.agent.call("POST", "/v1/gpu/reset", {}, timeout=900)
        rec["reset_code"] = code
        rec["reset"] = self.remediation(r) if code == 200 else r
        self.check("reset", "POST /v1/gpu/reset answered 200", code == 200, f"code={code}")
        self.check("reset", "reloaded torch-a", code == 200 and r.get("reloaded") == TORCH_A,
                   f"reloaded={r.get('reloaded')}")
        limit = self.ghost_limit()
        ghost, after_s = self.settle(limit)
        rec["ghost_settled_mb"], rec["ghost_settled_after_s"] = ghost, after_s
        self.check("reset", f"ghost back to <= {limit:.0f} MiB (before any leak + 256)",
                   after_s is not None,
                   f"reset's ghost {rec['reset'].get('ghost_before_mb')} -> "
                   f"{rec['reset'].get('ghost_after_mb')}, status ghost {ghost}")
        left = [p for p in tree_before if alive(p)]
        rec["old_tree_left"] = left
        self.check("reset", "the old server's processes are gone", not left, f"left={left}")
        self.fixture_port = None  # a new server, a new port
        try:
            self.fixture_port = self.find_port()
            rec["new_fixture_port"] = self.fixture_port
            rec["fixture_stats_after"] = self.fixture_stats(self.fixture_port)
        except Exception as e:
            rec["fixture_error"] = repr(e)

    # --- 6: a stream through the agent

    def stream(self, rec):
        u = urllib.parse.urlsplit(self.agent.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
        body = json.dumps({"model": TORCH_A, "max_tokens": 16, "stream": True,
                           "messages": [{"role": "user", "content": "count for me"}]})
        t = time.monotonic()
        conn.request("POST", "/v1/chat/completions", body,
                     {"content-type": "application/json", "accept": "text/event-stream"})
        resp = conn.getresponse()
        rec["code"] = resp.status
        rec["content_type"] = resp.getheader("content-type")
        events, first, text = [], None, ""
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            if first is None:
                first = time.monotonic() - t
            data = line[5:].strip()
            events.append(data)
            if data != "[DONE]":
                try:
                    for c in json.loads(data).get("choices", []):
                        text += (c.get("delta") or {}).get("content") or ""
                except json.JSONDecodeError:
                    pass
        conn.close()
        rec.update(events=len(events), first_event_ms=round(first * 1000, 1) if first else None,
                   total_ms=round((time.monotonic() - t) * 1000, 1), text=text,
                   last_event=events[-1] if events else None)
        self.check("stream", "200 text/event-stream", resp.status == 200 and
                   "text/event-stream" in (rec["content_type"] or ""),
                   f"{resp.status} {rec['content_type']}")
        self.check("stream", "ends with [DONE]", events[-1:] == ["[DONE]"],
                   f"{len(events)} events, last={rec['last_event']!r:.80}")
        self.check("stream", "16 tokens", text.split() == [f"tok{k}" for k in range(16)],
                   repr(text[:120]))

    # --- 7: unload

    def unload(self, rec):
        tree = marked_processes(self.agent_id)
        rec["tree_before"] = tree
        code, r = self.agent.call("POST", "/v1/models/unload", {}, timeout=300)
        rec["code"] = code
        rel = (r or {}).get("release") or {}
        rec["release"] = rel
        self.check("unload", "POST /v1/models/unload answered 200", code == 200, f"code={code}")
        self.check("unload", "release verified", rel.get("verified") is True,
                   f"before={rel.get('before_mb')} after={rel.get('after_mb')} "
                   f"target={rel.get('target_mb')}")
        t = time.monotonic()
        on_gpu, alive_left = list(tree), list(tree)
        apps = {}
        while time.monotonic() - t < 15:
            try:
                apps = smi_apps()
            except Exception as e:
                apps = None
                rec["nvidia_smi_error"] = repr(e)
            on_gpu = [p for p in tree if p in (apps or {})]
            alive_left = [p for p in tree if alive(p)]
            if not on_gpu and not alive_left and apps is not None:
                break
            time.sleep(0.25)
        rec.update(nvidia_smi_apps_after=apps, tree_pids_on_gpu=on_gpu, tree_pids_alive=alive_left,
                   gone_after_s=round(time.monotonic() - t, 2))
        self.check("unload", "nvidia-smi lists none of the tree's pids",
                   apps is not None and not on_gpu,
                   rec.get("nvidia_smi_error") if apps is None else f"on_gpu={on_gpu}")
        self.check("unload", "no process of the tree alive", not alive_left,
                   f"alive={alive_left}")
        d = self.agent.device()
        rec["active_after"] = d.get("active_model")
        rec["ghost_after_mb"] = (d.get("ghost") or {}).get("total_mb")
        self.record_device_used(rec)

    # --- cleanup

    def cleanup(self, rec):
        if self.agent is not None:
            rec["agent_exit"] = self.agent.stop()
            rec["agent_log_tail"] = self.agent.log_tail(30)
        time.sleep(0.5)
        left = marked_processes(self.agent_id)
        rec["marked_left_after_agent_stop"] = left
        for pid in left:  # ours: they carry this run's unique agent id
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.check("cleanup", "the stopped agent left no marked process", not left,
                   f"killed {sorted(left)}" if left else "")
        try:
            rec["nvidia_smi_apps_end"] = smi_apps()
        except Exception as e:
            rec["nvidia_smi_error"] = repr(e)

    def run(self):
        self.step("machine", self.machine, needs_agent=False)
        self.step("agent", self.start_agent, needs_agent=False)
        try:
            self.step("switches", self.switches)
            self.step("measure", self.measure)
            self.step("free", self.leak_free)
            self.step("reset", self.leak_reset)
            self.step("stream", self.stream)
            self.step("unload", self.unload)
        finally:
            self.step("cleanup", self.cleanup, needs_agent=False)
        failed = [c for c in self.report["checks"] if not c["ok"]]
        self.report["failed_checks"] = len(failed)
        self.report["passed_checks"] = len(self.report["checks"]) - len(failed)
        return not failed


# ----- the report -----------------------------------------------------------------------------


def cell(v, limit=900):
    if isinstance(v, float):
        v = f"{v:.1f}"
    elif isinstance(v, (dict, list)):
        v = json.dumps(v)
    elif v is None:
        v = "—"
    v = str(v).replace("|", "\\|").replace("\n", " ")
    return v if len(v) <= limit else v[:limit] + " …"


def tree_cell(tree):
    """marked_processes() output, one "pid: command" per process (the JSON has the markers)."""
    if not isinstance(tree, dict):
        return cell(tree)
    return "<br>".join(cell(f"{pid}: {p.get('cmd', '')[:110]}") for pid, p in tree.items()) or "—"


def kv_table(rec, keys):
    rows = ["| field | value |", "|---|---|"]
    for k in keys:
        if k in rec:
            value = tree_cell(rec[k]) if k in ("tree", "tree_before") else cell(rec[k])
            rows.append(f"| {k} | {value} |")
    return "\n".join(rows)


def markdown(report):
    s = report["steps"]
    m = s.get("machine", {})
    out = ["# vramkeeper: server models on a GPU (scripts/gpu-servers.py)", "",
           f"Run {report['started_at']} on {report['host']}; agent {report['agent_binary']}; "
           f"checks passed {report.get('passed_checks')}, failed {report.get('failed_checks')}.",
           "", "## Machine", "", "```", m.get("nvidia_smi_L", "?"), "```", "",
           kv_table(m, ["driver_version", "gpus", "torch", "used_before_agent_mib",
                        "apps_before_agent", "nvidia_smi_error", "error"]), ""]
    a = s.get("agent", {})
    out += ["## Agent", "", kv_table(a, ["url", "command", "free_path", "free_path_refused",
                                         "device", "error"]), ""]
    sw = s.get("switches", {})
    out += ["## Switches", ""]
    cols = ["to", "code", "from", "wall_s", "load_ms", "unload_ms", "verify_ms", "vram_mb",
            "ram_mb", "device_delta_mb", "release_model", "release_verified",
            "release_before_mb", "release_after_mb", "release_target_mb"]
    out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in sw.get("rows", []):
        out.append("| " + " | ".join(cell(row.get(c)) for c in cols) + " |")
    out += ["", kv_table(sw, ["active_after", "models", "error"]), ""]
    out += ["## torch-a against nvidia-smi", "",
            kv_table(s.get("measure", {}),
                     ["basis", "tree", "matched_pids", "nvidia_smi_apps", "nvidia_smi_mib",
                      "agent_switch_vram_mb", "agent_status_vram_mb",
                      "diff_switch_reply_vram_mb_mib", "diff_status_vram_mb_mib",
                      "agent_expected_mb", "agent_used_mb", "agent_baseline_mb",
                      "nvidia_smi_used_mib", "device_used_minus_start_mib", "ghost_mb",
                      "fixture_port", "fixture_stats", "error"]), ""]
    for tag, title in (("free", "Leak 2 GiB cached, then free"),
                       ("reset", "Leak 2 GiB cached, then reset")):
        r = s.get(tag, {})
        out += [f"## {title}", "",
                kv_table(r, [f"{tag}_ghost_before_leak_mb", f"{tag}_leak_reply", f"{tag}_growth",
                             f"{tag}_code", tag, "ghost_settled_mb", "ghost_settled_after_s",
                             "active_after", "same_server", "old_tree_left", "new_fixture_port",
                             "fixture_stats_after", "error"]), ""]
    out += ["## Stream through the agent", "",
            kv_table(s.get("stream", {}), ["code", "content_type", "events", "first_event_ms",
                                            "total_ms", "last_event", "text", "error"]), ""]
    out += ["## Unload", "",
            kv_table(s.get("unload", {}), ["code", "release", "tree_before", "tree_pids_on_gpu",
                                            "tree_pids_alive", "gone_after_s",
                                            "nvidia_smi_apps_after", "active_after",
                                            "ghost_after_mb", "device_used_minus_start_mib",
                                            "error"]), ""]
    out += ["## Cleanup", "",
            kv_table(s.get("cleanup", {}), ["agent_exit", "marked_left_after_agent_stop",
                                             "nvidia_smi_apps_end", "error"]), ""]
    out += ["## Checks", "", "| step | check | ok | detail |", "|---|---|---|---|"]
    for c in report["checks"]:
        out.append(f"| {c['step']} | {cell(c['check'])} | {'ok' if c['ok'] else '**FAIL**'} | "
                   f"{cell(c['detail'])} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agent", required=True, help="the vramkeeper-agent binary")
    ap.add_argument("--out", required=True, help="folder for the report")
    ap.add_argument("--fixture", default=DEFAULT_FIXTURE, help="openai_server.py")
    ap.add_argument("--python", default="python3", help="python with torch, for the servers")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu", "auto"],
                    help="the agent's --device (cpu: a dry run, nvidia-smi checks fail)")
    ap.add_argument("--agent-arg", action="append", default=[],
                    help="one more argument for the agent (repeatable)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="gpu-servers-")
    run = Run(args, work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally-blocks still clean up
    ok = False
    try:
        ok = run.run()
    finally:
        # The agent's log, the catalog and the servers' logs go with the report.
        saved = []
        logs = os.path.join(work, "state", "run", "logs")
        names = sorted(os.listdir(logs)) if os.path.isdir(logs) else []
        for src in [os.path.join(work, "agent.log"), os.path.join(work, "catalog.toml")] + [
                os.path.join(logs, n) for n in names]:
            if os.path.isfile(src):
                dst = os.path.join(args.out, "gpu-servers-" + os.path.basename(src))
                shutil.copyfile(src, dst)
                saved.append(os.path.basename(dst))
        run.report["saved_logs"] = saved
        shutil.rmtree(work, ignore_errors=True)
        with open(os.path.join(args.out, "gpu-servers.json"), "w") as f:
            json.dump(run.report, f, indent=2, default=str)
        text = markdown(run.report)
        with open(os.path.join(args.out, "gpu-servers-report.md"), "w") as f:
            f.write(text)
        print(text)
        print(f"wrote {args.out}/: gpu-servers-report.md, gpu-servers.json, "
              + ", ".join(saved), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
