"""The CPython 3.14 path (PEP 768 remote execution) of `debug-inject`, end to end in the agent.

No CPython 3.14 can be installed here, so the target is a stand-in process
(Tests/fixtures/fake_cpython314.c, compiled per session): it exports what the agent looks
for, has a 3.14-shaped _Py_DebugOffsets at the start of its .PyRuntime section, and its main
thread plays the eval loop (takes a request when the please-stop bit and the pending flag
are set, prints what it found). What this proves: the section lookup, the reads and the
three writes land where the offsets say, in sys.remote_exec's protocol, and refusals write
nothing. What it cannot prove: that a real 3.14 runs the script (the bootstrap file itself
is checked separately by running it in a real CPython).
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import DEBIAN_PYTHON, PYENV_PYTHON, wait_for

FAKE_SOURCE = Path(__file__).resolve().parent.parent / "fixtures" / "fake_cpython314.c"


@pytest.fixture(scope="module")
def fake_python(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler for the 3.14 stand-in")
    out = tmp_path_factory.mktemp("fake314") / "python3.14"
    subprocess.run([cc, "-O1", "-rdynamic", "-o", str(out), str(FAKE_SOURCE)], check=True)
    return str(out)


class Fake:
    def __init__(self, binary, args):
        self.proc = subprocess.Popen([binary] + list(args), stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        assert self.proc.stdout.readline().strip() == "ready"
        self.requests = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.requests.append(json.loads(line))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=5)


@pytest.fixture
def fakes(fake_python):
    started = []

    def start(*args):
        f = Fake(fake_python, args)
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop()


def inject(agent, pid, timeout=2.0):
    proc = agent.run("debug-inject", "--pid", pid, "--json", "--timeout", timeout, timeout=60)
    reports = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    return proc, (reports[-1] if reports else None)


def boot_script(runtime_dir, pid):
    provider = [d for d in os.listdir(os.path.join(runtime_dir, "provider"))
                if not d.startswith(".") and not d.endswith(".py")]
    assert len(provider) == 1, provider
    return os.path.join(runtime_dir, "provider", "%s.boot-%d.py" % (provider[0], pid)), provider[0]


def test_request_reaches_the_main_thread(agent, fakes, runtime_dir):
    fake = fakes()
    proc, report = inject(agent, fake.pid)
    # The stand-in never loads the provider: debug-inject says so with exit code 1.
    assert report is not None, proc.stderr
    assert report["code"] == 0 and report["method"] == "pep768", report
    assert report["pyRunResult"] == -3 and report["thread"] == fake.pid, report
    assert report["providerLoaded"] is False and proc.returncode == 1
    assert "through PEP 768" in report["message"], report
    script, provider = boot_script(runtime_dir, fake.pid)
    assert len(fake.requests) == 1, fake.requests
    request = fake.requests[0]
    assert request["script"] == script
    assert request["eval_breaker"] == 0x100 | 0x20  # the please-stop bit added, its own bit kept
    source = Path(script).read_text()
    assert source.startswith("exec(compile(") and source.count("\n") == 1
    assert os.path.join(runtime_dir, "provider", provider) in source
    assert os.stat(script).st_mode & 0o777 == 0o644


def _interpreter():
    for p in (PYENV_PYTHON, DEBIAN_PYTHON, sys.executable):
        if p and os.access(p, os.X_OK):
            return p
    pytest.skip("no CPython")


def test_boot_script_starts_the_provider_when_run(agent, fakes, runtime_dir):
    """What a real 3.14 does with the path: read the file and run it (here: a real CPython)."""
    fake = fakes()
    inject(agent, fake.pid)
    script, _ = boot_script(runtime_dir, fake.pid)
    runner = subprocess.Popen([_interpreter(), "-c",
                               "exec(open(%r).read()); import time; time.sleep(30)" % script])
    try:
        wait_for(lambda: "/_msm_probe.abi3.so" in Path("/proc/%d/maps" % runner.pid).read_text(),
                 10, what="provider library mapped by the boot script")
    finally:
        runner.kill()
        runner.wait()


def test_pending_request_is_waited_for_again(agent, fakes):
    fake = fakes("--deaf", "2.5")
    proc, report = inject(agent, fake.pid, timeout=0.5)
    assert proc.returncode == 1 and report["code"] == 11, report  # MSM_INJECT_TIMEOUT
    assert report["pyRunResult"] == -3 and "stays pending" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert fake.requests == []
    # A second attempt finds its own request still pending and waits for it: taken once.
    proc, report = inject(agent, fake.pid, timeout=5)
    assert report["code"] == 0, report
    time.sleep(0.2)
    assert len(fake.requests) == 1, fake.requests


@pytest.mark.parametrize("args, words", [
    (["--remote-debug", "0"], ["PYTHON_DISABLE_REMOTE_DEBUG", "-X disable-remote-debug"]),
    (["--free-threaded"], ["free-threaded", "3.14t"]),
    (["--version", "030E00C2"], ["pre-release"]),
    (["--version", "030F00F0"], ["layout is not known"]),
    (["--foreign-pending"], ["another tool's remote-execution request"]),
], ids=["remote-debug-disabled", "free-threaded", "pre-release", "unknown-layout", "foreign-request"])
def test_refusals_write_nothing(agent, fakes, args, words):
    fake = fakes(*args)
    proc, report = inject(agent, fake.pid)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1, line
    for w in words:
        assert w in line, line
    assert "nothing was changed" in line, line
    assert report["pyRunResult"] == -2, report
    time.sleep(0.3)
    assert fake.requests == []
    assert fake.proc.poll() is None
