"""Live injection (ptrace) of the provider into running, unprepared CPython processes.

Driven through the hidden `ms-service-metric debug-inject --pid P --json`. Targets are
started WITHOUT `exec`: the fixture service (Tests/fixtures/service.py) and a small
"busy" target written below (threads busy in Python, in C without the GIL, idle; a status
file the test reads; exact signal counting through signal.set_wakeup_fd).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import (DEBIAN_PYTHON, PYENV_PYTHON, SERVICE, free_port, interpreter_id,
                      AIO_CALLS, AsyncioClient, fixtures_outside_tmp, start_service, wait_for)

PYENV = "/root/.pyenv/versions"


def pyenv_python(minor):
    """The newest pyenv CPython 3.<minor> present, or None."""
    try:
        versions = sorted((v for v in os.listdir(PYENV) if v.startswith("3.%d." % minor)),
                          key=lambda v: [int(x) for x in v.split(".") if x.isdigit()])
    except OSError:
        return None
    for v in reversed(versions):
        p = "%s/%s/bin/python3" % (PYENV, v)
        if os.access(p, os.X_OK):
            return p
    return None


def _layouts():
    """(interpreter, expected layout): every supported CPython found here."""
    found = []
    for p, layout in [(PYENV_PYTHON, "shared libpython"), (DEBIAN_PYTHON, "static executable"),
                      (pyenv_python(10), "shared libpython"), (pyenv_python(12), "shared libpython"),
                      (pyenv_python(13), "shared libpython")]:
        if p and os.access(p, os.X_OK) and p not in [f[0] for f in found]:
            found.append((p, layout))
    return found


LAYOUTS = _layouts()
MAIN_PYTHONS = [p for p in (PYENV_PYTHON, DEBIAN_PYTHON) if os.access(p, os.X_OK)]


def plain_env():
    return {k: v for k, v in os.environ.items()
            if not k.startswith("MS_SERVICE_METRIC") and k != "PYTHONPATH"}


def inject(agent, pid, timeout=5.0):
    """Runs debug-inject; returns (CompletedProcess, report dict or None)."""
    proc = agent.run("debug-inject", "--pid", pid, "--json", "--timeout", timeout, timeout=120)
    report = None
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
    return proc, report


def must_inject(agent, pid, timeout=5.0):
    proc, report = inject(agent, pid, timeout)
    assert proc.returncode == 0, "debug-inject failed rc=%d\nstdout: %s\nstderr: %s" % (
        proc.returncode, proc.stdout, proc.stderr)
    assert report and report["code"] == 0 and report["pyRunResult"] == 0, report
    assert report["providerLoaded"] is True, report
    return report


def maps_has_provider(pid):
    return "/_msm_probe.abi3.so" in Path("/proc/%d/maps" % pid).read_text()


def tracer_pid(pid):
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return -1


# --------------------------------------------------------------------------
# the plain fixture service (no exec)
# --------------------------------------------------------------------------

@pytest.fixture
def plain_services():
    """Start fixture services without exec; teardown kills them."""
    started = []

    def start(interpreter, prefix=(), script=None):
        port = free_port()
        cmd = list(prefix) + [interpreter, str(script or SERVICE), "--port", str(port)]
        svc = start_service(cmd, plain_env())
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()
        try:
            os.unlink(svc.stderr_path)
        except OSError:
            pass


CALLS = [("sync", {"n": 5}), ("method", {"n": 3}), ("async", {"n": 3}), ("generator", {"n": 2, "len": 4}),
         ("raises", {"n": 2}), ("process", {"n": 2, "len": 6, "scale": 3}), ("summarize", {"n": 1, "len": 5}),
         ("prebound", {"n": 2}), ("sync", {"n": 4, "threads": 3})]


def call_results(svc):
    out = []
    for fn, params in CALLS:
        r = svc.call(fn, **params)
        out.append((fn, r["results"], r["errors"], r["calls"]))
    return out


@pytest.mark.parametrize("interpreter,layout", LAYOUTS, ids=[interpreter_id(p) for p, _ in LAYOUTS])
def test_inject_into_plain_service(agent, plain_services, interpreter, layout):
    svc = plain_services(interpreter)
    before = call_results(svc)
    identity_before = svc.identity()
    info = svc.pid_info()
    assert info["provider_modules"] == []
    assert not maps_has_provider(svc.pid)

    report = must_inject(agent, svc.pid)
    print("\n%s: %s" % (interpreter, {k: report[k] for k in (
        "pythonVersion", "layout", "threads", "waitMilliseconds", "heldMilliseconds", "totalMilliseconds")}))

    assert report["layout"] == layout
    assert report["pythonVersion"].startswith(".".join(info["python"].split(".")[:2]))
    if not report["pythonVersion"] == "3.10":  # 3.10 has no Py_Version: only the minor is known
        assert report["pythonVersion"] == info["python"]
    assert maps_has_provider(svc.pid)
    assert tracer_pid(svc.pid) == 0
    info_after = wait_for(lambda: (lambda i: i if "msm_provider" in i["provider_modules"] else None)(svc.pid_info()),
                          5, what="msm_provider in sys.modules")
    assert "msm_provider.provider" in info_after["provider_modules"]
    assert info_after["env"] == info["env"]           # nothing set in the environment
    assert call_results(svc) == before
    identity_after = svc.identity()
    assert identity_after["semantic"] == identity_before["semantic"]
    assert identity_after["objects"] == identity_before["objects"]
    rt_before, rt_after = identity_before["runtime"], identity_after["runtime"]
    assert rt_after["sys_trace"] == rt_before["sys_trace"] and rt_after["sys_profile"] == rt_before["sys_profile"]
    assert rt_after["meta_path"] == rt_before["meta_path"]
    assert "not started" not in svc.stderr() and "Traceback" not in svc.stderr(), svc.stderr()
    # SIGTERM still reaches the service's handler: a clean exit 0
    os.kill(svc.pid, signal.SIGTERM)
    assert svc.proc.wait(timeout=10) == 0


# --------------------------------------------------------------------------
# a target with threads busy in Python, in C without the GIL, and idle
# --------------------------------------------------------------------------

BUSY_TARGET = r'''
import hashlib, json, os, signal, sys, threading, time
STATUS = sys.argv[1]
MODE = sys.argv[2] if len(sys.argv) > 2 else "threads"
counts = {"py": 0, "sleep": 0, "hash": 0, "hash_bad": 0, "async": 0}
sigs = {}
expected = hashlib.sha256(b"x" * (4 << 20)).hexdigest()

def py_busy():
    while True:
        sum(range(2000)); counts["py"] += 1

def sleeper():
    while True:
        time.sleep(0.002); counts["sleep"] += 1

def hasher():
    data = b"x" * (4 << 20)
    while True:
        if hashlib.sha256(data).hexdigest() != expected:
            counts["hash_bad"] += 1
        counts["hash"] += 1

idle_event = threading.Event()
def idle():
    idle_event.wait()

r, w = os.pipe()
os.set_blocking(w, False)
def sigreader():
    while True:
        for b in os.read(r, 4096):
            sigs[b] = sigs.get(b, 0) + 1

def on_signal(signum, frame):
    pass

term = threading.Event()
def on_term(signum, frame):
    term.set()

for f in (py_busy, sleeper, hasher, idle, sigreader):
    threading.Thread(target=f, daemon=True, name="busy-" + f.__name__).start()
signal.set_wakeup_fd(w)
signal.signal(signal.SIGUSR1, on_signal)
signal.signal(signal.SIGRTMIN, on_signal)
signal.signal(signal.SIGTERM, on_term)
BASE_NAMES = sorted(globals())

def write_status():
    data = {"pid": os.getpid(), "counts": dict(counts), "sigs": {str(k): v for k, v in sigs.items()},
            "main_names": sorted(k for k in globals() if k not in ("data",)),
            "base_names": BASE_NAMES,
            "threads": sorted(t.name for t in threading.enumerate()),
            "msm_modules": sorted(m for m in sys.modules if m.startswith("msm") or m == "_msm_probe"),
            "sys_path_has_provider": any("provider" in p for p in sys.path)}
    tmp = STATUS + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, STATUS)

if MODE == "asyncio":
    import asyncio
    async def ticker():
        while not term.is_set():
            await asyncio.sleep(0.003)
            counts["async"] += 1
    async def hashing():
        data = b"y" * (1 << 20)
        want = hashlib.sha256(data).hexdigest()
        while not term.is_set():
            got = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
            if got != want:
                counts["hash_bad"] += 1
    async def main():
        tasks = [asyncio.create_task(ticker()), asyncio.create_task(hashing())]
        print("READY", flush=True)
        while not term.is_set():
            write_status()
            await asyncio.sleep(0.05)
        write_status()
        for t in tasks:
            t.cancel()
    asyncio.run(main())
    sys.exit(7)
else:
    print("READY", flush=True)
    while not term.is_set():
        write_status()
        time.sleep(0.05)
    write_status()
    sys.exit(7)
'''


class BusyTarget:
    def __init__(self, proc, status_path, stderr_path):
        self.proc = proc
        self.pid = proc.pid
        self.status_path = status_path
        self.stderr_path = stderr_path

    def status(self):
        return json.loads(Path(self.status_path).read_text())

    def fresh_status(self):
        """A status written after this call."""
        first = self.status()
        return wait_for(lambda: (lambda s: s if s["counts"] != first["counts"] else None)(self.status()),
                        5, what="a new status")

    def stderr(self):
        return Path(self.stderr_path).read_text(errors="replace")


@pytest.fixture
def busy_targets(tmp_path):
    started = []
    script = tmp_path / "busy_target.py"
    script.write_text(BUSY_TARGET)

    def start(interpreter, mode="threads", prefix=()):
        status = tmp_path / ("status-%d.json" % len(started))
        err = tmp_path / ("stderr-%d.txt" % len(started))
        proc = subprocess.Popen(list(prefix) + [interpreter, str(script), str(status), mode],
                                env=plain_env(), stdout=subprocess.PIPE, stderr=open(err, "w"),
                                stdin=subprocess.DEVNULL, start_new_session=True)
        line = proc.stdout.readline().decode().strip()
        assert line == "READY", "busy target did not start: %r %s" % (line, err.read_text())
        t = BusyTarget(proc, str(status), str(err))
        wait_for(lambda: Path(status).exists(), 5, what="status file")
        started.append(t)
        return t

    yield start
    for t in started:
        if t.proc.poll() is None:
            try:
                os.killpg(t.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            t.proc.wait(timeout=5)


def assert_all_busy(before, after):
    for k in ("py", "sleep", "hash"):
        assert after["counts"][k] > before["counts"][k], (k, before["counts"], after["counts"])
    assert after["counts"]["hash_bad"] == 0


@pytest.mark.parametrize("interpreter", MAIN_PYTHONS, ids=[interpreter_id(p) for p in MAIN_PYTHONS])
def test_inject_busy_threads_and_signals(agent, busy_targets, interpreter):
    t = busy_targets(interpreter)
    before = t.fresh_status()
    assert before["msm_modules"] == []
    rtmin = int(signal.SIGRTMIN)

    # Signals sent while the injection runs: every real-time signal must arrive (they queue).
    sent = {"rt": 0, "usr1": 0}
    stop = threading.Event()

    def pelt():
        while not stop.is_set():
            os.kill(t.pid, rtmin)
            sent["rt"] += 1
            if sent["rt"] % 10 == 0:
                os.kill(t.pid, signal.SIGUSR1)
                sent["usr1"] += 1
            time.sleep(0.0005)

    pelter = threading.Thread(target=pelt)
    pelter.start()
    try:
        report = must_inject(agent, t.pid)
    finally:
        stop.set()
        pelter.join()
    assert report["threads"] >= 6
    after = wait_for(lambda: (lambda s: s if s["sigs"].get(str(rtmin), 0) >= sent["rt"] else None)(t.status()),
                     10, what="all %d SIGRTMIN delivered" % sent["rt"])
    assert after["sigs"][str(rtmin)] == sent["rt"]
    assert after["sigs"].get(str(int(signal.SIGUSR1)), 0) >= 1
    after = wait_for(lambda: (lambda s: s if "_msm_probe" in s["msm_modules"] else None)(t.fresh_status()),
                     5, what="provider in sys.modules")
    assert "msm_provider" in after["msm_modules"]
    assert after["main_names"] == before["main_names"]
    assert not after["sys_path_has_provider"]
    assert after["threads"].count("msm-provider") == 1
    time.sleep(0.3)
    assert_all_busy(after, t.status())
    assert maps_has_provider(t.pid) and tracer_pid(t.pid) == 0
    # SIGTERM reaches its handler: the target leaves its loop and exits 7
    os.kill(t.pid, signal.SIGTERM)
    assert t.proc.wait(timeout=10) == 7
    assert "Traceback" not in t.stderr(), t.stderr()


@pytest.mark.parametrize("interpreter", MAIN_PYTHONS, ids=[interpreter_id(p) for p in MAIN_PYTHONS])
def test_inject_asyncio_target(agent, busy_targets, interpreter):
    t = busy_targets(interpreter, mode="asyncio")
    before = t.fresh_status()
    must_inject(agent, t.pid)
    after = wait_for(lambda: (lambda s: s if "msm_provider" in s["msm_modules"] else None)(t.fresh_status()),
                     5, what="provider in sys.modules")
    assert after["main_names"] == before["main_names"]
    later = t.fresh_status()
    assert later["counts"]["async"] > before["counts"]["async"]
    assert later["counts"]["hash_bad"] == 0
    os.kill(t.pid, signal.SIGTERM)
    assert t.proc.wait(timeout=10) == 7
    assert "Traceback" not in t.stderr(), t.stderr()


def test_inject_into_private_mount_namespace(agent, plain_services, runtime_dir):
    """A service with its own /tmp: the provider files must be copied into it."""
    prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c",
              'mount -t tmpfs none /tmp && exec "$0" "$@"']
    svc = plain_services(PYENV_PYTHON if os.access(PYENV_PYTHON, os.X_OK) else sys.executable, prefix=prefix,
                         script=fixtures_outside_tmp())
    assert os.readlink("/proc/%d/ns/mnt" % svc.pid) != os.readlink("/proc/self/ns/mnt")
    assert not os.path.exists("/proc/%d/root%s" % (svc.pid, runtime_dir))
    before = call_results(svc)
    report = must_inject(agent, svc.pid)
    assert report["placement"] == "copied"
    provider_dirs = os.listdir("/proc/%d/root%s/provider" % (svc.pid, runtime_dir))
    assert len(provider_dirs) == 1
    inside = "/proc/%d/root%s/provider/%s" % (svc.pid, runtime_dir, provider_dirs[0])
    assert os.path.exists(inside + "/.complete") and os.path.exists(inside + "/_msm_probe.abi3.so")
    st = os.stat("/proc/%d/root%s" % (svc.pid, runtime_dir))
    assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o755
    maps = Path("/proc/%d/maps" % svc.pid).read_text()
    assert "%s/provider/%s/_msm_probe.abi3.so" % (runtime_dir, provider_dirs[0]) in maps
    assert "msm_provider" in wait_for(lambda: svc.pid_info()["provider_modules"], 5)
    assert call_results(svc) == before
    # a second injection finds the copy in place
    assert must_inject(agent, svc.pid)["placement"] == "present"


# --------------------------------------------------------------------------
# refusals and timeouts
# --------------------------------------------------------------------------

def test_refuses_traced_process(agent, busy_targets):
    t = busy_targets(MAIN_PYTHONS[0], prefix=["strace", "-f", "-o", "/dev/null"])
    # the Popen pid is strace; the target is its child
    children = Path("/proc/%d/task/%d/children" % (t.pid, t.pid)).read_text().split()
    target = int(children[0])
    assert tracer_pid(target) == t.pid
    before = json.loads(Path(t.status_path).read_text())
    proc, report = inject(agent, target)
    assert proc.returncode == 1
    assert "traced by pid %d" % t.pid in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert report["pyRunResult"] == -2
    assert not maps_has_provider(target)
    assert t.fresh_status()["counts"]["py"] > before["counts"]["py"]


def test_refuses_non_python(agent):
    p = subprocess.Popen(["sleep", "100"])
    try:
        proc, _ = inject(agent, p.pid)
        assert proc.returncode == 1
        assert proc.stderr.strip() == ("ms-service-metric: pid %d is not a CPython process (no mapped "
                                       "object exports PyEval_SaveThread and PyRun_SimpleString)" % p.pid)
        assert p.poll() is None and tracer_pid(p.pid) == 0
    finally:
        p.kill()
        p.wait()


def test_refuses_dead_pid(agent):
    p = subprocess.Popen(["true"])
    p.wait()
    proc, _ = inject(agent, p.pid)
    assert proc.returncode == 1
    assert "no process with pid %d" % p.pid in proc.stderr


@pytest.mark.skipif(pyenv_python(9) is None, reason="interpreter not installed here: pyenv CPython 3.9")
def test_refuses_unsupported_version(agent, plain_services):
    svc = plain_services(pyenv_python(9))
    proc, report = inject(agent, svc.pid)
    assert proc.returncode == 1
    assert "runs CPython 3.9" in proc.stderr and "needs 3.10-3.13" in proc.stderr, proc.stderr
    assert report["pyRunResult"] == -2
    assert svc.pid_info()["provider_modules"] == []


def test_timeout_on_pure_python_busy_loop(agent, tmp_path):
    """A thread that never releases the GIL: clean timeout, the process runs on."""
    script = tmp_path / "spin.py"
    script.write_text(
        "import signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))\n"
        "print('READY', flush=True)\n"
        "x = 0\n"
        "while True:\n"
        "    x += 1\n")
    p = subprocess.Popen([MAIN_PYTHONS[0], str(script)], stdout=subprocess.PIPE, env=plain_env())
    try:
        assert p.stdout.readline().decode().strip() == "READY"
        t0 = time.monotonic()
        proc, report = inject(agent, p.pid, timeout=1.0)
        assert proc.returncode == 1
        assert time.monotonic() - t0 < 15
        msg = proc.stderr.strip()
        assert ("no thread of pid %d released the GIL within 1.0 s" % p.pid) in msg, msg
        assert "nothing was changed" in msg and "ms-service-metric exec" in msg
        assert report["code"] == 11 and report["pyRunResult"] == -2
        assert tracer_pid(p.pid) == 0
        assert not maps_has_provider(p.pid)
        cpu = lambda: sum(int(x) for x in Path("/proc/%d/stat" % p.pid).read_text().rsplit(")", 1)[1].split()[11:13])
        c0 = cpu()
        time.sleep(0.3)
        assert cpu() > c0 and p.poll() is None
        # it still handles signals (and the breakpoint is gone: no SIGTRAP death)
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=10) == 3
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# --------------------------------------------------------------------------
# repeated injection under load
# --------------------------------------------------------------------------

def test_repeated_injection_under_load(agent, plain_services):
    svc = plain_services(MAIN_PYTHONS[0])
    expected = {fn: svc.call(fn, **params)["results"] for fn, params in CALLS[:4]}
    errors, done = [], threading.Event()
    calls = {"n": 0}

    def client():
        while not done.is_set():
            for fn, params in CALLS[:4]:
                try:
                    got = svc.call(fn, **params)["results"]
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))
                    continue
                if got != expected[fn]:
                    errors.append((fn, got))
                calls["n"] += 1

    threads = [threading.Thread(target=client) for _ in range(2)]
    for th in threads:
        th.start()
    times = []
    try:
        for _ in range(20):
            report = must_inject(agent, svc.pid)
            times.append(report["totalMilliseconds"])
            assert tracer_pid(svc.pid) == 0
    finally:
        done.set()
        for th in threads:
            th.join()
    print("\ninjection total ms: min %.1f median %.1f max %.1f over %d; %d client calls"
          % (min(times), sorted(times)[len(times) // 2], max(times), len(times), calls["n"]))
    assert errors == []
    assert calls["n"] > 20
    assert "Traceback" not in svc.stderr() and "not started" not in svc.stderr(), svc.stderr()
    # one provider, one poll thread: the thread names of the process
    maps = Path("/proc/%d/maps" % svc.pid).read_text()
    assert len({l.split()[-1] for l in maps.splitlines() if l.endswith("_msm_probe.abi3.so")}) == 1
    os.kill(svc.pid, signal.SIGTERM)
    assert svc.proc.wait(timeout=10) == 0


# --------------------------------------------------------------------------
# the injected provider works with the agent, and retires on `off`
# --------------------------------------------------------------------------

@pytest.mark.parametrize("interpreter", MAIN_PYTHONS, ids=[interpreter_id(p) for p in MAIN_PYTHONS])
def test_injected_provider_is_collected_and_retires(agent, busy_targets, plain_services, interpreter):
    svc = plain_services(interpreter)
    before = call_results(svc)
    identity_before = svc.identity()
    must_inject(agent, svc.pid)
    agent.on(svc.pid)
    assert svc.call("sync", n=5)["results"] == before[0][1]
    agent.wait_histogram_count("fixture:sync:duration", 5)
    target = agent.target(agent.status(), svc.pid)
    assert target and target["state"] == "attached", target
    proc = agent.off()
    assert proc.returncode == 0, proc.stderr
    identity_after = svc.identity()
    assert identity_after["objects"] == identity_before["objects"]
    assert call_results(svc) == before
    # the same with a target that reports its threads: the poll thread ends after `off`
    t = busy_targets(interpreter)
    must_inject(agent, t.pid)
    wait_for(lambda: "msm-provider" in t.fresh_status()["threads"], 5, what="provider thread")
    agent.on(t.pid)
    agent.off()
    wait_for(lambda: "msm-provider" not in t.fresh_status()["threads"], 5, what="provider thread gone")
    assert "msm-inject" not in t.status()["threads"]
    # a later injection starts it again (start() is idempotent, the thread restarts)
    must_inject(agent, t.pid)
    wait_for(lambda: t.fresh_status()["threads"].count("msm-provider") == 1, 5, what="provider thread again")


# --------------------------------------------------------------------------
# idle event loops: the only thread waits in epoll_wait with the GIL released
# --------------------------------------------------------------------------

FIXTURES = SERVICE.parent
ASYNCIO_SERVICE = FIXTURES / "asyncio_service.py"
UVLOOP_SERVICE = FIXTURES / "uvloop_service.py"


def aio_results(client):
    return [(op, client.request(op, **params)["results"]) for op, params in AIO_CALLS]


def syscall_of(pid, tid=None):
    """Number of the syscall a thread blocks in (/proc/.../syscall), None when running."""
    path = "/proc/%d/task/%d/syscall" % (pid, tid or pid)
    first = Path(path).read_text().split()[0]
    return int(first) if first.lstrip("-").isdigit() else None


EPOLL_WAITS = (232, 281, 441)  # epoll_wait, epoll_pwait, epoll_pwait2


def check_idle_event_loop(agent, interpreter, script, expect_threads=None, method="woken"):
    """Start `script` (the asyncio fixture protocol), let its loop go idle in epoll, inject,
    then check: woken safe point, answers unchanged on the old and a new connection, a
    request sent while the injection runs answered, clean exit on SIGTERM."""
    port = free_port()
    svc = start_service([interpreter, str(script), "--port", str(port)], plain_env())
    client = None
    try:
        client = AsyncioClient(port)
        info = client.request("pid")
        results = aio_results(client)
        assert results[0] == ("compute", [4, 7, 10, 13]), results
        threads = client.request("threads")
        if expect_threads is not None:
            assert len(threads["tasks"]) == expect_threads, threads
        # idle: the loop thread waits in epoll with no timer
        wait_for(lambda: syscall_of(svc.pid) in EPOLL_WAITS, 5, what="loop idle in epoll")
        time.sleep(0.3)
        assert syscall_of(svc.pid) in EPOLL_WAITS

        t0 = time.monotonic()
        report = must_inject(agent, svc.pid, timeout=3.0)
        seconds = time.monotonic() - t0
        print("\nidle %s %s: injected in %.2f s (safe point after %.0f ms, %s, %d woken, held %.0f ms)" % (
            script.name, info["python"], seconds, report["waitMilliseconds"], report["safePointMethod"],
            report["wokenThreads"], report["heldMilliseconds"]))
        assert report["safePointMethod"] == method, report
        assert report["wokenThreads"] >= 1, report
        assert report["waitMilliseconds"] < 2500, report
        assert tracer_pid(svc.pid) == 0
        assert maps_has_provider(svc.pid)

        # the connection opened before keeps working, and so does a new one
        assert aio_results(client) == results
        second = AsyncioClient(port)
        try:
            assert second.request("gather", n=5, x=0)["results"] == [1, 4, 7, 10, 13]
            assert aio_results(second) == results
        finally:
            second.close()

        # a second injection while a request is in flight on another connection
        wait_for(lambda: syscall_of(svc.pid) in EPOLL_WAITS, 5, what="loop idle in epoll again")
        answers, errors = [], []

        def during():
            c = AsyncioClient(port)
            try:
                time.sleep(0.1)
                answers.append(c.request("compute", n=4, x=1)["results"])
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
            finally:
                c.close()

        th = threading.Thread(target=during)
        th.start()
        proc, report2 = inject(agent, svc.pid, timeout=3.0)
        th.join(timeout=15)
        assert proc.returncode == 0 and report2["code"] == 0, (proc.stderr, report2)
        assert not errors and answers == [[4, 7, 10, 13]], (errors, answers)
        assert aio_results(client) == results
    finally:
        if client:
            client.close()
    # SIGTERM: the loop's handler stops the server, main() returns 0
    os.kill(svc.pid, signal.SIGTERM)
    assert svc.proc.wait(timeout=10) == 0
    assert "Traceback" not in svc.stderr(), svc.stderr()
    try:
        os.unlink(svc.stderr_path)
    except OSError:
        pass


@pytest.mark.parametrize("interpreter,layout", LAYOUTS, ids=[interpreter_id(p) for p, _ in LAYOUTS])
def test_inject_idle_asyncio_service(agent, interpreter, layout):
    """Pure asyncio (asyncio.start_server), one thread, its loop idle in epoll_wait: no thread
    ever calls PyEval_SaveThread on its own; the injector wakes the epoll wait (EINTR), the
    loop retries through PyEval_SaveThread and the code runs there."""
    check_idle_event_loop(agent, interpreter, ASYNCIO_SERVICE, expect_threads=1)


def uvloop_python(base):
    """A Python with uvloop importable (a throwaway venv made from `base`), or None."""
    venv = Path(tempfile.gettempdir()) / ("msm-test-uvloop-venv-" + interpreter_id(base))
    py = venv / "bin" / "python"
    ok = lambda: py.exists() and subprocess.run([str(py), "-c", "import uvloop"],  # noqa: E731
                                                capture_output=True).returncode == 0
    if ok():
        return str(py)
    try:
        subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "uvloop"], check=True, capture_output=True,
                       timeout=300)
    except (subprocess.SubprocessError, OSError):
        return None
    return str(py) if ok() else None


UVLOOP_BASES = [p for p in (pyenv_python(10), PYENV_PYTHON, pyenv_python(12), pyenv_python(13))
                if p and os.access(p, os.X_OK)]


@pytest.mark.parametrize("base", UVLOOP_BASES, ids=[interpreter_id(p) for p in UVLOOP_BASES])
def test_inject_idle_uvloop_service(agent, base):
    """uvloop: libuv waits in epoll_pwait without the GIL and retries EINTR in C, so waking it
    alone never reaches PyEval_SaveThread: at the second wake the code runs at the interrupted
    epoll_pwait (PyGILState_Ensure/_Release), which then returns EINTR as before."""
    py = uvloop_python(base)
    if py is None:
        pytest.skip("uvloop not installable here")
    check_idle_event_loop(agent, py, UVLOOP_SERVICE, method="event-wait")


def test_epoll_wait_holding_the_gil_times_out_cleanly(agent, tmp_path):
    """A thread that waits in epoll_wait while HOLDING the GIL (ctypes.PyDLL keeps it) and
    retries without ever releasing it: waking it never reaches the safe point, and the code
    must not run there either (PyGILState_Check: it holds the GIL). Clean timeout, nothing
    changed, the process still handles SIGTERM."""
    script = tmp_path / "gil_epoll.py"
    script.write_text(
        "import ctypes, select, signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(5))\n"
        "libc = ctypes.PyDLL(None)\n"
        "ep = select.epoll()\n"
        "buf = ctypes.create_string_buffer(64)\n"
        "print('READY', flush=True)\n"
        "while True:\n"
        "    libc.epoll_wait(ep.fileno(), buf, 1, -1)\n")
    p = subprocess.Popen([MAIN_PYTHONS[0], str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=plain_env())
    try:
        assert p.stdout.readline().decode().strip() == "READY"
        wait_for(lambda: syscall_of(p.pid) in EPOLL_WAITS, 5, what="epoll_wait")
        proc, report = inject(agent, p.pid, timeout=1.5)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert report["code"] == 11 and report["pyRunResult"] == -2, report
        assert report["wokenThreads"] >= 2 and report["safePointMethod"] == "none", report
        assert "nothing was changed" in proc.stderr
        assert tracer_pid(p.pid) == 0
        assert not maps_has_provider(p.pid)
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=10) == 5
        assert b"Traceback" not in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


BLOCKED_WAITS = FIXTURES / "blocked_waits.py"
FUTEX, READ = 202, 0


@pytest.mark.parametrize("mode", ["queue", "read"])
@pytest.mark.parametrize("interpreter,layout", LAYOUTS, ids=[interpreter_id(p) for p, _ in LAYOUTS])
def test_inject_threads_blocked_in_futex_and_read(agent, tmp_path, interpreter, layout, mode):
    """Like an idle vLLM engine core: every thread blocks in a wait the kernel restarts after a
    ptrace interrupt (queue.Queue.get() -> futex, os.read() on a pipe), so nothing ever reaches
    PyEval_SaveThread. The code runs at the interrupted wait of a Python thread without the
    GIL (blocked-wait); every register is restored as at the interrupt stop and the kernel
    restarts the syscall: the thread waits in the same syscall again, a later put() reaches
    the blocked get(), a later write the blocked read(); SIGTERM is still handled."""
    ctl = tmp_path / "ctl"
    os.mkfifo(ctl)
    p = subprocess.Popen([interpreter, str(BLOCKED_WAITS), str(ctl), mode], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=plain_env(), text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")), daemon=True)
    reader.start()
    ctl_fd = None

    def send(cmd, expect):
        n = len(lines)
        os.write(ctl_fd, (cmd + "\n").encode())
        wait_for(lambda: expect in lines[n:], 5, what=expect)

    try:
        wait_for(lambda: any(l.startswith("READY") for l in lines), 10, what="READY")
        ctl_fd = os.open(ctl, os.O_WRONLY)
        send("put a1", "GOT a1\n")
        send("data d1", "READ d1\n")
        tids = sorted(int(t) for t in os.listdir("/proc/%d/task" % p.pid))
        assert len(tids) == 3, tids
        idle = lambda: all(syscall_of(p.pid, t) in (FUTEX, READ) for t in tids)  # noqa: E731
        wait_for(idle, 5, what="every thread blocked in futex/read")
        time.sleep(0.3)
        before = {t: syscall_of(p.pid, t) for t in tids}
        assert before[p.pid] == (FUTEX if mode == "queue" else READ), before

        report = must_inject(agent, p.pid, timeout=3.0)
        print("\nblocked %s %s: safe point after %.0f ms (%s, %d woken, thread %d in syscall %s), held %.0f ms" % (
            mode, interpreter, report["waitMilliseconds"], report["safePointMethod"], report["wokenThreads"],
            report["thread"], before.get(report["thread"]), report["heldMilliseconds"]))
        assert report["safePointMethod"] == "blocked-wait", report
        assert report["thread"] in tids and before[report["thread"]] in (FUTEX, READ), report
        assert tracer_pid(p.pid) == 0
        assert maps_has_provider(p.pid)
        # the interrupted syscall was restarted: the same waits, no thread died of an errno
        wait_for(lambda: all(syscall_of(p.pid, t) == before[t] for t in tids), 5,
                 what="the same syscalls as before the injection")
        assert p.poll() is None
        send("put a2", "GOT a2\n")
        send("data d2", "READ d2\n")
        send("put a3", "GOT a3\n")
        send("data d3", "READ d3\n")
        assert [l for l in lines if not l.startswith("READY")] == [
            "GOT a1\n", "READ d1\n", "GOT a2\n", "READ d2\n", "GOT a3\n", "READ d3\n"], lines
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=10) == 0
        reader.join(timeout=5)  # the process has exited: its last line may still be in the pipe
        err = p.stderr.read()
        assert "Traceback" not in err and "Fatal" not in err, err
        assert "TERM\n" in lines, lines
    finally:
        if ctl_fd is not None:
            os.close(ctl_fd)
        if p.poll() is None:
            p.kill()
            p.wait()


def test_read_holding_the_gil_times_out_cleanly(agent, tmp_path):
    """A thread blocked in read() while HOLDING the GIL (ctypes.PyDLL): it is interrupted once
    (a restartable wait), but the code must not run there (PyGILState_Check); the read is
    restarted, it still returns what is written later; clean timeout, nothing changed."""
    script = tmp_path / "gil_read.py"
    script.write_text(
        "import ctypes, os, signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(5))\n"
        "libc = ctypes.PyDLL(None)\n"
        "r, w = os.pipe()\n"
        "buf = ctypes.create_string_buffer(64)\n"
        "print('READY', w, flush=True)\n"
        "n = libc.read(r, buf, 64)\n"
        "print('READ', n, buf.value.decode(), flush=True)\n"
        "signal.pause()\n")
    p = subprocess.Popen([MAIN_PYTHONS[0], str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=plain_env(), text=True)
    try:
        ready = p.stdout.readline().split()
        assert ready[0] == "READY", ready
        wait_for(lambda: syscall_of(p.pid) == READ, 5, what="read")
        proc, report = inject(agent, p.pid, timeout=1.5)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert report["code"] == 11 and report["pyRunResult"] == -2, report
        assert report["wokenThreads"] == 1 and report["safePointMethod"] == "none", report
        assert tracer_pid(p.pid) == 0
        assert not maps_has_provider(p.pid)
        # restarted (a moment after the detach the thread may still show as running)
        wait_for(lambda: syscall_of(p.pid) == READ, 5, what="the read restarted")
        w = os.open("/proc/%d/fd/%s" % (p.pid, ready[1]), os.O_WRONLY)
        os.write(w, b"hello")
        os.close(w)
        assert p.stdout.readline() == "READ 5 hello\n"
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=10) == 5
        assert "Traceback" not in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
