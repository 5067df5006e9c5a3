"""Shared helpers for the ms-service-metric integration tests.

The tests drive the real agent binary (``$MSM_BIN``, default
``.build/debug/ms-service-metric``) against the Python fixture service in
``Tests/fixtures``.  They follow the command-line contract in docs/cli.md.

Tests that need the agent skip (with the reason) only when the binary does not
exist; when it exists they must run as root and any misbehaviour fails them.
Tests that only exercise the fixture run everywhere.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "Tests"))
import ci_policy  # noqa: E402
FIXTURES = REPO / "Tests" / "fixtures"
SERVICE = FIXTURES / "service.py"
SYMBOLS = FIXTURES / "fixture_symbols.yaml"
BROKEN = FIXTURES / "broken_symbols.yaml"

PYENV_PYTHON = "/root/.pyenv/versions/3.11.7/bin/python3"
DEBIAN_PYTHON = "/usr/bin/python3.11"

NOT_ROOT_MESSAGE = "ms-service-metric: must run as root (try sudo)"
NOT_RUNNING_MESSAGE = "ms-service-metric: not running"


# --------------------------------------------------------------------------
# interpreters and binary
# --------------------------------------------------------------------------

def python_interpreters():
    """Interpreters the fixture runs under: $MSM_TEST_PYTHONS (colon list) or
    the pyenv 3.11.7 plus Debian's python3.11 when present."""
    env = os.environ.get("MSM_TEST_PYTHONS")
    candidates = env.split(":") if env else [PYENV_PYTHON, DEBIAN_PYTHON]
    found = [p for p in candidates if p and os.access(p, os.X_OK)]
    return found or [sys.executable]


def interpreter_id(path):
    if path.startswith("/root/.pyenv/"):
        return "pyenv" + path.split("/")[4]
    if path.startswith("/usr/bin/"):
        return "debian-" + os.path.basename(path)
    return path.replace("/", "_")


def msm_bin_path():
    raw = os.environ.get("MSM_BIN", ".build/debug/ms-service-metric")
    path = Path(raw)
    if not path.is_absolute():
        cwd_path = Path.cwd() / path
        path = cwd_path if cwd_path.exists() else REPO / path
    return path


@pytest.fixture(scope="session")
def msm_bin():
    """Path to the agent binary; skips when it has not been built."""
    path = msm_bin_path()
    if not path.is_file():
        pytest.skip("agent binary not found at %s (build it or set MSM_BIN)" % path)
    if not os.access(path, os.X_OK):
        pytest.fail("agent binary %s exists but is not executable" % path)
    if os.geteuid() != 0:
        pytest.fail("integration tests that use the agent must run as root "
                    "(binary exists at %s)" % path)
    return str(path)


@pytest.fixture(params=python_interpreters(), ids=interpreter_id)
def python(request):
    """The interpreter the fixture service runs under (parametrised)."""
    return request.param


# --------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout=5.0, interval=0.05, what="condition"):
    """Poll condition() until it returns a truthy value; return that value.
    Exceptions raised by condition() count as 'not yet'.  On timeout raise
    AssertionError showing the last value or exception."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = condition()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - keep polling
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s; last: %r"
                                 % (timeout, what, last))
        time.sleep(interval)


def http_get(url, timeout=30.0, headers=None):
    """GET url; return (status, headers, body bytes) without raising on 4xx/5xx."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def http_json(url, timeout=60.0):
    status, _, body = http_get(url, timeout=timeout)
    data = json.loads(body.decode())
    assert status == 200, "GET %s -> %d: %s" % (url, status, data)
    return data


def count_config(path):
    """(entries, metrics) in a symbol config written in the fixture style:
    one '- symbol:' per entry and one '    - name:' per metric."""
    text = Path(path).read_text()
    entries = len(re.findall(r"^- (?:symbol|metrics):", text, re.M))
    metrics = len(re.findall(r"^    - name:", text, re.M))
    return entries, metrics


# --------------------------------------------------------------------------
# Prometheus text parser (format 0.0.4; enough for the tests)
# --------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+(-?\d+))?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
_UNESCAPE = re.compile(r"\\(.)")


def _unescape(value):
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_labels(text):
    labels, pos = {}, 0
    text = text.strip()
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if not m:
            raise ValueError("bad label set at %r" % text[pos:])
        if m.group(1) in labels:
            raise ValueError("duplicate label %s" % m.group(1))
        labels[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return labels


class Scrape:
    """Parsed exposition: samples, # TYPE / # HELP per family, family order."""

    def __init__(self, text, content_type=""):
        self.text = text
        self.content_type = content_type
        self.samples = []          # (name, labels, value)
        self.types = {}
        self.helps = {}
        self.family_order = []     # family names in # TYPE order
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] == "TYPE":
                    self.family_order.append(parts[2])
                    self.types[parts[2]] = parts[3].strip() if len(parts) > 3 else ""
                elif len(parts) >= 3 and parts[1] == "HELP":
                    self.helps[parts[2]] = parts[3] if len(parts) > 3 else ""
                continue
            m = _SAMPLE.match(line)
            if not m:
                raise ValueError("line %d is not a sample: %r" % (lineno, line))
            self.samples.append((m.group(1), parse_labels(m.group(2) or ""), float(m.group(3))))

    def find(self, name, **labels):
        return [(n, l, v) for n, l, v in self.samples
                if n == name and all(l.get(k) == str(val) for k, val in labels.items())]

    def get(self, name, default=None, **labels):
        """Value of the single sample matching name and labels (a subset)."""
        found = self.find(name, **labels)
        if not found:
            return default
        if len(found) > 1:
            raise AssertionError("%d samples match %s%r: %r" % (len(found), name, labels, found))
        return found[0][2]

    def counter(self, name, default=None, **labels):
        """A counter, whether rendered as NAME_total or NAME."""
        value = self.get(name + "_total", None, **labels)
        return self.get(name, default, **labels) if value is None else value

    def histogram(self, name, **labels):
        """{'count', 'sum', 'buckets': {le_float: cumulative}} or None."""
        count = self.get(name + "_count", None, **labels)
        if count is None:
            return None
        buckets = {}
        for _, l, v in self.find(name + "_bucket", **labels):
            buckets[float(l["le"])] = v
        return {"count": count, "sum": self.get(name + "_sum", **labels), "buckets": buckets}

    def names(self):
        return sorted({n for n, _, _ in self.samples})


def metric(name):
    """Published name of a configured metric."""
    return "vllm_profiling_" + name


# --------------------------------------------------------------------------
# the agent
# --------------------------------------------------------------------------

def _safe_handler_dir():
    """A copy of Tests/fixtures/handler_funcs.py in a directory only root can write, up to /
    (the provider refuses handler modules anyone else could have written; the checkout may
    be under /tmp). Made once per test session."""
    path = Path("/run/msm-test-handlers-%d" % os.getpid())
    if not path.exists() and os.geteuid() == 0:
        path.mkdir(mode=0o755)
        shutil.copyfile(FIXTURES / "handler_funcs.py", path / "handler_funcs.py")
        os.chmod(path / "handler_funcs.py", 0o644)
    return str(path)


class Agent:
    """Runs the CLI with a private runtime directory and listen port."""

    def __init__(self, binary, runtime_dir, port):
        self.binary = binary
        self.runtime_dir = runtime_dir
        self.port = port
        self.listen = "127.0.0.1:%d" % port
        self.history = []

    def env(self, **extra):
        env = dict(os.environ)
        env.pop("MS_SERVICE_METRIC_VLLM_CONFIG", None)
        env.pop("MS_SERVICE_METRIC_CONTROL", None)
        env["MS_SERVICE_METRIC_RUNTIME_DIR"] = self.runtime_dir
        env["MSM_FIXTURE_HANDLER_DIR"] = _safe_handler_dir()
        env.update(extra)
        return env

    def run(self, *args, timeout=60, env=None, prefix=()):
        cmd = list(prefix) + [self.binary] + [str(a) for a in args]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=env or self.env(), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        self.history.append("$ %s  -> rc=%d (%.2fs)\n%s%s" % (
            " ".join(cmd), proc.returncode, time.monotonic() - t0, proc.stdout, proc.stderr))
        return proc

    def must(self, *args, **kw):
        proc = self.run(*args, **kw)
        assert proc.returncode == 0, "%s failed rc=%d\nstdout: %s\nstderr: %s" % (
            " ".join(map(str, args)), proc.returncode, proc.stdout, proc.stderr)
        return proc

    def on(self, *pids, config=SYMBOLS, listen=True, extra=(), env=None):
        args = ["on"]
        for pid in pids:
            args += ["--pid", pid]
        if config is not None:
            args += ["--config", config]
        if listen:
            args += ["--listen", self.listen]
        return self.must(*(args + list(extra)), env=env)

    def off(self):
        return self.run("off")

    def restart(self, config=None):
        return self.run(*(["restart"] + (["--config", config] if config else [])))

    def status(self):
        proc = self.must("status", "--json")
        return json.loads(proc.stdout)

    def daemon_pid(self):
        try:
            return int(Path(self.runtime_dir, "agent.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def log(self):
        try:
            return Path(self.runtime_dir, "agent.log").read_text(errors="replace")
        except OSError:
            return ""

    @property
    def url(self):
        return "http://%s" % self.listen

    def scrape(self, accept=None):
        headers = {"Accept": accept} if accept else {}
        status, hdrs, body = http_get(self.url + "/metrics", timeout=10, headers=headers)
        assert status == 200, "GET /metrics -> %d" % status
        ctype = {k.lower(): v for k, v in hdrs.items()}.get("content-type", "")
        return Scrape(body.decode(), ctype)

    # -- status helpers ---------------------------------------------------
    def target(self, status, pid):
        for t in status.get("targets", []):
            if t.get("pid") == pid:
                return t
        return None

    def probe(self, status, pid, symbol):
        t = self.target(status, pid)
        for p in (t or {}).get("probes", []):
            if p.get("symbol") == symbol:
                return p
        return None

    def wait_histogram_count(self, name, n, timeout=5.0, **labels):
        """Poll until the histogram's _count reaches n; assert it is exactly n."""
        labels.setdefault("dp", "-1")
        seen = []

        def reached():
            h = self.scrape().histogram(metric(name), **labels)
            seen[:] = [h["count"] if h else None]
            return h is not None and h["count"] >= n

        try:
            wait_for(reached, timeout, what="%s_count >= %d" % (metric(name), n))
        except AssertionError as e:
            raise AssertionError("%s (count seen: %r)\nagent self-metrics:\n%s"
                                 % (e, seen[0] if seen else None, self.self_metrics())) from None
        h = self.scrape().histogram(metric(name), **labels)
        assert h["count"] == n, "%s_count is %r, expected exactly %d" % (metric(name), h["count"], n)
        return h

    def self_metrics(self):
        """The agent's own counters (kernel hits/drops, orphans, ...), for failure messages."""
        try:
            text = http_get(self.url + "/metrics", timeout=5)[2].decode()
        except Exception as e:  # noqa: BLE001 - diagnostics only
            return "(scrape failed: %s)" % e
        return "\n".join(line for line in text.splitlines()
                         if line.startswith("ms_service_metric_") and not line.startswith("#"))

    def wait_counter(self, name, n, timeout=5.0, **labels):
        labels.setdefault("dp", "-1")
        wait_for(lambda: (self.scrape().counter(metric(name), **labels) or 0) >= n,
                 timeout, what="%s >= %d" % (metric(name), n))
        value = self.scrape().counter(metric(name), **labels)
        assert value == n, "%s%r is %r, expected exactly %d" % (metric(name), labels, value, n)
        return value


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_daemon(pid, binary):
    try:
        cmdline = Path("/proc/%d/cmdline" % pid).read_bytes()
    except OSError:
        return False
    return os.path.basename(binary).encode() in cmdline


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    ci_policy.enforce(item, rep)
    setattr(item, "rep_" + rep.when, rep)


def pytest_terminal_summary(terminalreporter):
    ci_policy.summarize(terminalreporter)


@pytest.fixture
def runtime_dir():
    """A private root-owned 0755 runtime directory under /tmp."""
    path = tempfile.mkdtemp(prefix="msm-rt-", dir="/tmp")
    os.chmod(path, 0o755)
    if os.geteuid() == 0:
        os.chown(path, 0, 0)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(msm_bin, runtime_dir, request):
    """The CLI bound to this test's runtime dir and a free listen port.
    Teardown: `off`, then SIGKILL the daemon of this runtime dir if it is
    still alive (only that pid), and print the log when the test failed."""
    a = Agent(msm_bin, runtime_dir, free_port())
    yield a
    pid = a.daemon_pid()
    try:
        a.off()
    except subprocess.TimeoutExpired:
        a.history.append("off timed out")
    if pid and _process_alive(pid) and _is_our_daemon(pid, msm_bin):
        wait_deadline = time.monotonic() + 5
        while _process_alive(pid) and time.monotonic() < wait_deadline:
            time.sleep(0.05)
        if _process_alive(pid):
            os.kill(pid, signal.SIGKILL)
    # also when a fixture's setup failed (an `on` in setup), not only the test's call
    if any(getattr(getattr(request.node, "rep_" + when, None), "failed", False) for when in ("setup", "call")):
        print("\n==== agent commands ====")
        print("\n".join(a.history))
        print("==== agent.log (tail) ====")
        print(a.log()[-8000:])


# --------------------------------------------------------------------------
# the fixture service
# --------------------------------------------------------------------------

class Service:
    """One running fixture service process."""

    def __init__(self, proc, port, stderr_path):
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.stderr_path = stderr_path
        self.base = "http://127.0.0.1:%d" % port

    def get(self, path, **params):
        query = "&".join("%s=%s" % (k, v) for k, v in params.items())
        return http_json(self.base + path + ("?" + query if query else ""))

    def call(self, fn, n=1, **params):
        data = self.get("/call", fn=fn, n=n, **params)
        return data

    def identity(self):
        return self.get("/identity")

    def pid_info(self):
        return self.get("/pid")

    def spawn(self):
        return self.get("/spawn", port=free_port())

    def stderr(self):
        try:
            return Path(self.stderr_path).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # children spawned through /spawn share the process group
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def start_service(cmd, env, timeout=20.0):
    """Start the fixture (cmd ends with service.py --port P); wait for READY."""
    port = int(cmd[-1])
    err = tempfile.NamedTemporaryFile(prefix="msm-fixture-", suffix=".stderr", delete=False)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    ready = {}

    def reader():
        ready["line"] = proc.stdout.readline().decode(errors="replace").strip()
        for _ in proc.stdout:
            pass

    threading.Thread(target=reader, daemon=True).start()
    try:
        wait_for(lambda: "line" in ready or proc.poll() is not None, timeout,
                 what="fixture READY line")
    except AssertionError:
        proc.kill()
        raise
    line = ready.get("line", "")
    if line != "READY %d" % port:
        proc.kill()
        proc.wait()
        raise AssertionError("fixture did not start: cmd=%s line=%r rc=%r stderr=%s" % (
            cmd, line, proc.poll(), Path(err.name).read_text(errors="replace")))
    return Service(proc, port, err.name)


def release_services(agent, request, services):
    """Fixture teardown: `off` first (the agent must release live targets), then stop the
    services (their stderr printed when the test failed)."""
    try:
        agent.off()
    except subprocess.TimeoutExpired:
        agent.history.append("off timed out (service teardown)")
    rep = getattr(request.node, "rep_call", None)
    for svc in services:
        if rep is not None and rep.failed:
            print("==== fixture pid %d stderr ====\n%s" % (svc.pid, svc.stderr()[-4000:]))
        svc.stop()
        try:
            os.unlink(svc.stderr_path)
        except OSError:
            pass


@pytest.fixture
def service_factory(agent, python, request):
    """Start fixture services (default: Tests/fixtures/service.py) under
    `ms-service-metric exec`; released by `release_services`."""
    services = []

    def start(under_exec=True, interpreter=None, script=SERVICE):
        port = free_port()
        py = interpreter or python
        cmd = [py, str(script), "--port", str(port)]
        if under_exec:
            cmd = [agent.binary, "exec", "--"] + cmd
        svc = start_service(cmd, agent.env())
        services.append(svc)
        return svc

    yield start
    release_services(agent, request, services)


@pytest.fixture
def service(service_factory):
    """One fixture service started under `exec` (provider dormant)."""
    return service_factory()


@pytest.fixture
def instrumented(agent, service):
    """The fixture service with the agent `on` using fixture_symbols.yaml."""
    agent.on(service.pid)
    return service


_BASELINES = {}


@pytest.fixture(scope="session")
def baseline_factory():
    """A plain fixture service per interpreter (no exec, no agent) whose
    answers are the expected results."""

    def get(interpreter):
        if interpreter not in _BASELINES:
            port = free_port()
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith("MS_SERVICE_METRIC") and k != "PYTHONPATH"}
            _BASELINES[interpreter] = start_service([interpreter, str(SERVICE), "--port", str(port)], env)
        return _BASELINES[interpreter]

    yield get
    for svc in _BASELINES.values():
        svc.stop()
        try:
            os.unlink(svc.stderr_path)
        except OSError:
            pass
    _BASELINES.clear()


@pytest.fixture
def baseline(baseline_factory, python):
    return baseline_factory(python)


# ---- helpers shared by the lifecycle, injection and live-attach tests ----

def restorable(identity):
    """The parts of the fixture's /identity that `off` must restore exactly."""
    return {k: identity[k] for k in ("semantic", "objects", "runtime")}


def diff(a, b, path=""):
    """First few differing paths between two JSON values (for messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff(a.get(k), b.get(k), "%s/%s" % (path, k))
        return out[:10]
    return [] if a == b else ["%s: %r != %r" % (path, a, b)]


def fixtures_outside_tmp():
    """The fixture service, copied where a private /tmp cannot hide it: the mount-namespace
    tests mount a tmpfs over /tmp, and the checkout itself may live under /tmp."""
    target = Path("/var/tmp/msm-test-fixtures")
    shutil.copytree(str(FIXTURES), str(target), dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return target / SERVICE.name


class AsyncioClient:
    """One kept-open connection to Tests/fixtures/asyncio_service.py (JSON lines)."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rwb")

    def request(self, op, **params):
        self.file.write(json.dumps(dict(params, op=op)).encode() + b"\n")
        self.file.flush()
        line = self.file.readline()
        assert line, "asyncio service closed the connection"
        answer = json.loads(line)
        assert answer.pop("ok") is True, answer
        return answer

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


AIO_CALLS = [("compute", {"n": 4, "x": 1}), ("gather", {"n": 6, "x": 2}), ("method", {"n": 3}),
             ("stream", {"n": 2, "x": 3}), ("fail", {"n": 2}), ("sync", {"n": 3, "x": 9})]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree("/run/msm-test-handlers-%d" % os.getpid(), ignore_errors=True)
