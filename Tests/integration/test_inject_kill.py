"""The agent never kills what it observes, whatever happens to the agent (issue 8, 1-3).

A few trials of each mode of scripts/stress_kill_agent.py (which runs hundreds):
SIGKILL of every agent process at random instants of `on --pid`; SIGKILL of the
injector paused at each phase of an injection; injections into a process that forks
all the time; and a target stopped (SIGSTOP) or frozen (cgroup v2) during an
injection. $MSM_KILL_TRIALS sets the trials per mode (default 8).
"""

import importlib.util
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("stress_kill_agent", REPO / "scripts" / "stress_kill_agent.py")
stress = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stress)

TRIALS = int(os.environ.get("MSM_KILL_TRIALS", "8"))


@pytest.fixture
def pythons():
    found = stress.interpreters()
    assert found, "no CPython 3.10-3.13 interpreter found"
    return found


def test_sigkill_during_on_leaves_the_target_running_and_correct(msm_bin, pythons):
    rng = random.Random(os.environ.get("MSM_KILL_SEED", "on"))
    failures = [p for p in (stress.trial_on(msm_bin, pythons[i % len(pythons)], rng, hog=i % 2 == 1)
                            for i in range(TRIALS)) if p]
    assert not failures, failures


@pytest.mark.parametrize("phase", stress.PHASES)
def test_sigkill_at_each_injection_phase(msm_bin, pythons, phase):
    """Killed before the call was set up: nothing ran; from then on the code runs and the
    thread gets its own state back through its sigreturn frame."""
    rng = random.Random(phase)
    failures = []
    for python in pythons:
        problem = stress.trial_phase(msm_bin, python, rng, phase)
        if problem:
            failures.append("%s: %s" % (python, problem))
    assert not failures, failures


def test_injections_into_a_forking_process_kill_no_child(msm_bin, pythons):
    failures, done = stress.trial_fork(msm_bin, pythons[0], max(10, TRIALS * 3))
    assert not failures, failures
    assert done == max(10, TRIALS * 3)


def _inject_during(msm_bin, target, runtime_dir, phase, action, undo):
    """debug-inject paused at `phase`; `action()` once the pause began; the injection's
    report after it ended; then `undo()`."""
    env = dict(os.environ, MS_SERVICE_METRIC_RUNTIME_DIR=runtime_dir, MSM_INJECT_DEBUG_PAUSE="%s:300" % phase)
    marker = os.path.join(runtime_dir, "ran")
    # Long enough for the stop to land inside the call.
    code = "import time; time.sleep(0.5); open(%r, 'w').write('ran')" % marker
    inj = subprocess.Popen([msm_bin, "debug-inject", "--pid", str(target.pid), "--code", code, "--timeout", "2",
                            "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    while "pause at" not in line and inj.poll() is None:
        line = inj.stderr.readline()
    assert "pause at %s" % phase in line, line + inj.stderr.read()
    action()
    try:
        out, err = inj.communicate(timeout=60)
    finally:
        undo()
    return inj.returncode, out, err, marker


@pytest.mark.parametrize("phase", ["armed", "in-call"])
def test_target_stopped_during_injection(msm_bin, runtime_dir, pythons, phase):
    target = stress.Target(pythons[0])
    try:
        assert stress.wait_ready(target)
        rc, out, err, marker = _inject_during(
            msm_bin, target, runtime_dir, phase,
            lambda: os.kill(target.pid, signal.SIGSTOP), lambda: os.kill(target.pid, signal.SIGCONT))
        if phase == "armed":
            # Stopped while armed: no thread comes (11), or a thread claimed during the pause
            # stops in our first query (17); the injected code never starts.
            assert rc == 1 and ('"code":11' in out or '"code":17' in out), (rc, out, err)
        else:
            # Stopped while our call runs: reported, the thread released to finish on its own.
            assert rc == 1 and '"code":17' in out, (rc, out, err)
        problem = stress.check_target(target, "after SIGSTOP at %s" % phase,
                                      expect_marker=phase == "in-call", marker=marker)
        assert not problem, problem
    finally:
        if target.proc.poll() is None:
            target.proc.kill()


class Freezer:
    """A cgroup that can freeze its processes: cgroup v2 (cgroup.freeze) on /sys/fs/cgroup or,
    on a hybrid host, /sys/fs/cgroup/unified; else the v1 freezer controller."""

    def __init__(self, name):
        self.v2 = None
        for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
            if os.path.exists(root + "/cgroup.controllers"):
                self.v2 = True
                self.root = Path(root)
                break
        if self.v2 is None and os.path.isdir("/sys/fs/cgroup/freezer"):
            self.v2 = False
            self.root = Path("/sys/fs/cgroup/freezer")
        if self.v2 is None:
            raise RuntimeError("no cgroup freezer (neither cgroup v2 nor the v1 freezer controller)")
        self.group = self.root / name
        self.group.mkdir(exist_ok=True)

    def add(self, pid):
        (self.group / "cgroup.procs").write_text(str(pid))

    def freeze(self, on):
        if self.v2:
            (self.group / "cgroup.freeze").write_text("1" if on else "0")
            want, events = "frozen %d" % on, self.group / "cgroup.events"
            done = lambda: want in events.read_text()
        else:
            (self.group / "freezer.state").write_text("FROZEN" if on else "THAWED")
            want = "FROZEN" if on else "THAWED"
            done = lambda: (self.group / "freezer.state").read_text().strip() == want
        deadline = time.monotonic() + 5
        while not done() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert done(), "cgroup %s did not become %s" % (self.group, want)

    def remove(self):
        try:
            self.freeze(False)
            for pid in (self.group / "cgroup.procs").read_text().split():
                (self.root / "cgroup.procs").write_text(pid)
        except (OSError, AssertionError):
            pass
        for _ in range(50):
            try:
                self.group.rmdir()
                return
            except OSError:
                time.sleep(0.02)


@pytest.mark.parametrize("phase", ["armed", "in-call"])
def test_target_frozen_during_injection(msm_bin, runtime_dir, pythons, phase):
    freezer = Freezer("msm-test-freeze-%d" % os.getpid())
    target = stress.Target(pythons[0])
    try:
        assert stress.wait_ready(target)
        freezer.add(target.pid)
        rc, out, err, marker = _inject_during(msm_bin, target, runtime_dir, phase,
                                              lambda: freezer.freeze(True), lambda: freezer.freeze(False))
        assert rc == 1 and ('"code":11' in out or '"code":17' in out), (rc, out, err)
        problem = stress.check_target(target, "after a freeze at %s" % phase,
                                      expect_marker=phase == "in-call", marker=marker)
        assert not problem, problem
    finally:
        if target.proc.poll() is None:
            target.proc.kill()
        freezer.remove()


@pytest.mark.parametrize("how", ["off", "sigterm"])
def test_orderly_exit_stops_an_injection_in_progress(agent, pythons, how):
    """`off` and SIGTERM stop an injection that waits at its armed safe point first (it is
    cancelled, nothing changed), instead of leaving it to the process exit."""
    target = stress.Target(pythons[0], extra=stress.Target.HOG)
    try:
        assert stress.wait_ready(target)
        time.sleep(1.05)  # the agent leaves a process younger than 1 s alone
        env = agent.env(MSM_INJECT_DEBUG_PAUSE="armed:20000")
        on = subprocess.Popen([agent.binary, "on", "--pid", str(target.pid), "--listen", agent.listen],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while "pause at armed" not in agent.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "pause at armed" in agent.log(), agent.log()[-3000:]
        daemon = agent.daemon_pid()
        t0 = time.monotonic()
        if how == "off":
            proc = agent.off()
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "injection into pid %d stopped before releasing the targets" % target.pid in proc.stdout, proc.stdout
        else:
            os.kill(daemon, signal.SIGTERM)
        while os.path.exists("/proc/%d" % daemon) and time.monotonic() - t0 < 15:
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        assert not os.path.exists("/proc/%d" % daemon), "the agent did not exit"
        assert elapsed < 10, "the agent waited out the injection (%.1f s) instead of stopping it" % elapsed
        log = agent.log()
        assert "injection into pid %d stopped before releasing the targets" % target.pid in log, log[-3000:]
        assert "cancelled" in log, log[-3000:]
        on.communicate(timeout=30)
        assert "_msm_probe" not in Path("/proc/%d/maps" % target.pid).read_text(), "the code ran"
        problem = stress.check_target(target, "after %s during an injection" % how)
        assert not problem, problem
    finally:
        if target.proc.poll() is None:
            target.proc.kill()


CATCHER = r"""
import os, signal, sys, threading, time
caught = []
for name in sys.argv[1:]:
    signal.signal(getattr(signal, name), lambda s, f: caught.append(s))
def spin():
    while True:
        time.sleep(0.001)
threading.Thread(target=spin, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    print("caught %r" % caught, flush=True)
"""


@pytest.mark.parametrize("handled", [["SIGURG"], ["SIGURG", "SIGWINCH"]], ids=["urg", "urg-and-winch"])
def test_stop_signal_is_never_one_the_target_handles(msm_bin, runtime_dir, pythons, handled):
    """The safe point stops a thread with SIGURG, or SIGWINCH when the target catches SIGURG;
    a target that catches both is refused before anything is touched."""
    p = subprocess.Popen([pythons[0], "-c", CATCHER] + handled, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        env = dict(os.environ, MS_SERVICE_METRIC_RUNTIME_DIR=runtime_dir)
        proc = subprocess.run([msm_bin, "debug-inject", "--pid", str(p.pid), "--code", "x = 1", "--timeout", "5"],
                              env=env, capture_output=True, text=True, timeout=60)
        if len(handled) == 1:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        else:
            assert proc.returncode == 1 and "catches both SIGURG and SIGWINCH" in proc.stderr, proc.stdout + proc.stderr
            assert "nothing was changed" in proc.stderr
        p.stdin.write("?\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "caught []", "a handler of the target ran"
    finally:
        p.kill()
        p.wait()
