"""Helpers for the end-to-end tests against a real vLLM (see conftest.py).

Kept out of conftest.py under a unique module name so that test modules can import
them even when several test folders (each with its own conftest.py) run in one
pytest invocation; conftest.py re-exports them.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "scripts" / "vllm-serve.sh"
STOP = REPO / "scripts" / "vllm-stop.sh"
VLLM_VENV = Path(os.environ.get("VLLM_VENV", "/opt/msm-vllm/venv"))
VLLM_MODEL_DIR = Path(os.environ.get("VLLM_MODEL_DIR", "/opt/msm-vllm/model"))


def vllm_missing_reason():
    """Why a real vLLM cannot be started here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "real vLLM tests run on Linux only"
    if not (VLLM_VENV / "bin" / "vllm").exists():
        return f"no vLLM venv at {VLLM_VENV} (run scripts/vllm-setup.sh, or set VLLM_VENV)"
    if not (VLLM_MODEL_DIR / "config.json").exists():
        return f"no model at {VLLM_MODEL_DIR} (run scripts/vllm-setup.sh, or set VLLM_MODEL_DIR)"
    for tool in ("curl", "setsid"):
        if shutil.which(tool) is None:
            return f"{tool} not found (needed by scripts/vllm-serve.sh)"
    return None


# --------------------------------------------------------------------------
# process tree
# --------------------------------------------------------------------------

def _proc_title(pid):
    """The process title as ps shows it: /proc/PID/cmdline (setproctitle writes
    titles such as ``VLLM::EngineCore`` there), else ``[comm]``."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    title = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace").strip()
    if title:
        return title
    try:
        return "[" + Path(f"/proc/{pid}/comm").read_text().strip() + "]"
    except OSError:
        return None


def _proc_stat(pid):
    """(state, ppid) from /proc/PID/stat, or None when the process is gone."""
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = line[line.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def vllm_process_tree(pid):
    """[(pid, ppid, title)] for PID and its live descendants, depth first, children in
    pid order; zombies left out. Titles come from /proc/PID/cmdline."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if stat is None or stat[0] in ("Z", "X"):
            continue
        children.setdefault(stat[1], []).append(int(entry))
    root = _proc_stat(pid)
    if root is None or root[0] in ("Z", "X"):
        return []
    result = []

    def walk(p, ppid):
        title = _proc_title(p)
        if title is None:
            return
        result.append((p, ppid, title))
        for child in sorted(children.get(p, [])):
            walk(child, p)

    walk(pid, root[1])
    return result


def format_process_tree(tree):
    """The tree as indented text, one process a line (titles cut at 120 characters)."""
    depth = {}
    lines = []
    for pid, ppid, title in tree:
        depth[pid] = depth.get(ppid, -1) + 1
        short = title if len(title) <= 120 else title[:117] + "..."
        lines.append(f"{pid:>7} {ppid:>7}  {'  ' * depth[pid]}{short}")
    return "    PID    PPID  TITLE\n" + "\n".join(lines)


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

def http_json(url, body=None, timeout=60):
    """GET (body None) or POST JSON; returns (status, decoded JSON, seconds)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        payload, status = error.read(), error.code
    elapsed = time.perf_counter() - start
    try:
        decoded = json.loads(payload)
    except ValueError:
        decoded = payload.decode("utf-8", "replace")
    return status, decoded, elapsed


# --------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """A running `vllm serve` started by scripts/vllm-serve.sh."""

    def __init__(self, pid, port, log, start_seconds, options):
        self.pid = pid
        self.port = port
        self.log = Path(log)
        self.start_seconds = start_seconds
        self.options = options
        self.base_url = f"http://127.0.0.1:{port}"
        self._model = None

    @property
    def model(self):
        """The served model name, from /v1/models."""
        if self._model is None:
            status, body, _ = http_json(self.base_url + "/v1/models", timeout=10)
            assert status == 200, body
            self._model = body["data"][0]["id"]
        return self._model

    def process_tree(self):
        return vllm_process_tree(self.pid)

    def log_tail(self, lines=40):
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as error:
            return f"(no log: {error})"

    def stop(self, timeout=30):
        subprocess.run(["bash", str(STOP), str(self.pid), str(timeout)], timeout=timeout + 30)


def start_vllm_server(log_dir, *options, port=None, timeout=240, env=None):
    """Starts `vllm serve` with scripts/vllm-serve.sh OPTIONS (e.g. "--dp", "2",
    "--small-kv", "--prefix", msm, "exec", "--") and returns a VllmServer once /health
    answers. Raises RuntimeError with the script's output when it does not start."""
    reason = vllm_missing_reason()
    if reason:
        pytest.skip(reason)
    port = port or free_port()
    log = Path(log_dir) / f"vllm-{port}.log"
    command = ["bash", str(SERVE), "--port", str(port), "--log", str(log),
               "--workdir", str(Path(log_dir) / f"work-{port}"), "--timeout", str(timeout),
               *options]
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 60,
                            env={**os.environ, **(env or {})})
    seconds = time.monotonic() - start
    if result.returncode != 0:
        raise RuntimeError(f"vllm-serve.sh failed ({result.returncode}):\n{result.stderr}")
    return VllmServer(int(result.stdout.split()[-1]), port, log, seconds, options)
