#!/usr/bin/env python3
"""The agent killed at any instant of a live attach must leave its target alive and correct.

    sudo python3 scripts/stress_kill_agent.py [--trials N] [--mode on|phase|fork|all] [--bin PATH]

Modes (each trial uses a fresh target, Tests/fixtures/busy_target.py, whose threads
release the GIL all the time and check their own results):

  on     `ms-service-metric on --pid PID` and SIGKILL of every agent process at a random
         instant within 2.5 s (daemon start, BPF load, injection, provider start, attach);
         every other trial the target is one whose threads rarely release the GIL (two
         threads of pure arithmetic, a main thread that writes a line every 1.5 s), where
         a safe point is long in coming and our call waits for the GIL;
  phase  `debug-inject --code ...` paused (MSM_INJECT_DEBUG_PAUSE) at one of the
         injection's phases and SIGKILLed during the pause; from the phase on which the
         thread's registers point at our call, the injected code must still run (its
         marker file appears) and the thread must get its state back by itself;
  fork   one target that forks children all the time (each releases the GIL at once),
         N injections into it: no child may die of a signal.

After each trial the target must still beat, have no tracer, and on SIGTERM report
zero errors and exit 0. Prints one line per trial and a summary; exits 1 on any
failure. The integration test Tests/integration/test_inject_kill.py runs a few trials
of each mode; this script runs hundreds (default 200 for `on`).
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "Tests" / "fixtures" / "busy_target.py"
PHASES = ["seized", "armed", "claimed", "call-set", "in-call", "returned", "restored"]
# From these phases on, the thread's registers lead into our call: the code runs.
CODE_RUNS_FROM = "call-set"


def interpreters():
    candidates = os.environ.get("MSM_TEST_PYTHONS", "").split(":") if os.environ.get("MSM_TEST_PYTHONS") else [
        "/root/.pyenv/versions/3.10.13/bin/python3", "/root/.pyenv/versions/3.11.7/bin/python3",
        "/root/.pyenv/versions/3.12.1/bin/python3", "/root/.pyenv/versions/3.13.0/bin/python3",
        "/usr/bin/python3.11"]
    return [p for p in candidates if p and os.access(p, os.X_OK)]


class Target:
    """A busy_target.py process whose stdout is read by a thread."""

    HOG = ["--workers", "0", "--hog", "2", "--beat", "1.5"]

    def __init__(self, python, fork=False, extra=()):
        args = [python, str(TARGET)] + (["--fork"] if fork else []) + list(extra)
        self.beat_seconds = float(extra[list(extra).index("--beat") + 1]) if "--beat" in extra else 0.1
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.lines = []
        self.stderr = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.err_reader = threading.Thread(target=self._read_err, daemon=True)
        self.err_reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def _read_err(self):
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())

    def beats(self):
        return sum(1 for line in self.lines if line.startswith("beat"))

    def wait_beats(self, more, timeout):
        """True once `more` beats arrived after now (the target runs on)."""
        start = self.beats()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.beats() >= start + more:
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def tracer(self):
        try:
            for line in Path("/proc/%d/status" % self.pid).read_text().splitlines():
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def finish(self, timeout=10):
        """SIGTERM; the summary dict (or None), the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)
        self.err_reader.join(5)
        summary = None
        for line in reversed(self.lines):
            if line.startswith("{"):
                summary = json.loads(line)
                break
        return summary, self.proc.returncode


def wait_ready(target, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "ready" in target.lines:
            return True
        time.sleep(0.02)
    return False


def agent_processes(runtime_dir):
    """Pids of every process started with this runtime directory (the CLI and the daemon)."""
    want = ("MS_SERVICE_METRIC_RUNTIME_DIR=%s" % runtime_dir).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path("/proc/%s/environ" % entry).read_bytes()
        except OSError:
            continue
        if want in env.split(b"\0"):
            pids.append(int(entry))
    return pids


def kill_all(runtime_dir):
    killed = 0
    for _ in range(3):  # a daemon being spawned right now shows up on the next look
        for pid in agent_processes(runtime_dir):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    return killed


def check_target(target, what, expect_marker=None, marker=None, min_children=0):
    """The target beats on without a tracer and reports zero errors. '' or a failure."""
    problems = []
    if not target.wait_beats(2, max(5, 4 * target.beat_seconds)):
        problems.append("stopped beating (exit status %r)" % target.proc.poll())
    deadline = time.monotonic() + 3
    while target.tracer() not in (0, None) and time.monotonic() < deadline:
        time.sleep(0.02)
    if target.tracer() not in (0, None):
        problems.append("still traced by %s" % target.tracer())
    if expect_marker is not None:
        deadline = time.monotonic() + 5
        while expect_marker and not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.02)
        if expect_marker and not os.path.exists(marker):
            problems.append("the injected code did not run although the thread was set to call it")
        if not expect_marker and os.path.exists(marker):
            problems.append("the injected code ran although the injector died before setting the call")
    summary, status = target.finish()
    if status != 0:
        problems.append("exit status %r" % status)
    if not summary:
        problems.append("no summary")
    elif summary["errors"] or summary.get("children_signaled") or summary.get("children", 0) < min_children:
        problems.append("summary %s" % summary)
    if problems:
        return "%s: %s; stderr: %s" % (what, "; ".join(problems), " | ".join(target.stderr[-5:]))
    return ""


def trial_on(binary, python, rng, hog=False):
    runtime_dir = tempfile.mkdtemp(prefix="msm-kill-", dir="/tmp")
    os.chmod(runtime_dir, 0o755)
    target = Target(python, extra=Target.HOG if hog else ())
    try:
        if not wait_ready(target):
            return "target did not start"
        time.sleep(1.05)  # the agent leaves a process younger than 1 s alone
        env = dict(os.environ, MS_SERVICE_METRIC_RUNTIME_DIR=runtime_dir)
        env.pop("MSM_INJECT_DEBUG_PAUSE", None)
        port = 20000 + rng.randrange(20000)
        on = subprocess.Popen([binary, "on", "--pid", str(target.pid), "--listen", "127.0.0.1:%d" % port],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(0, 4.0 if hog else 2.5)
        time.sleep(delay)
        kill_all(runtime_dir)
        on.wait(10)
        return check_target(target, "%skill after %.3f s" % ("GIL-hogging target, " if hog else "", delay))
    finally:
        if target.proc.poll() is None:
            target.proc.kill()
        kill_all(runtime_dir)
        shutil.rmtree(runtime_dir, ignore_errors=True)


def trial_phase(binary, python, rng, phase):
    runtime_dir = tempfile.mkdtemp(prefix="msm-kill-", dir="/tmp")
    os.chmod(runtime_dir, 0o755)
    marker = os.path.join(runtime_dir, "ran")
    target = Target(python)
    try:
        if not wait_ready(target):
            return "target did not start"
        code = "import time; time.sleep(0.2); open(%r, 'w').write('ran')" % marker
        env = dict(os.environ, MS_SERVICE_METRIC_RUNTIME_DIR=runtime_dir, MSM_INJECT_DEBUG_PAUSE="%s:400" % phase)
        inj = subprocess.Popen([binary, "debug-inject", "--pid", str(target.pid), "--code", code, "--timeout", "5"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        seen = False
        err = ""
        while time.monotonic() < deadline and inj.poll() is None:
            line = inj.stderr.readline()
            err += line
            if "pause at %s" % phase in line:
                seen = True
                break
        if not seen:
            inj.kill()
            out, rest = inj.communicate()
            return "phase %s never reached: %s %s" % (phase, out.strip(), (err + rest).strip())
        delay = rng.uniform(0, 0.4)
        time.sleep(delay)
        inj.kill()
        inj.wait()
        runs = PHASES.index(phase) >= PHASES.index(CODE_RUNS_FROM)
        # Killed before its pause ended, the injector never restored: a "restored" kill
        # comes after the call returned (the marker exists either way).
        return check_target(target, "%s +%.3f s" % (phase, delay), expect_marker=runs, marker=marker)
    finally:
        if target.proc.poll() is None:
            target.proc.kill()
        shutil.rmtree(runtime_dir, ignore_errors=True)


def trial_fork(binary, python, injections):
    runtime_dir = tempfile.mkdtemp(prefix="msm-kill-", dir="/tmp")
    os.chmod(runtime_dir, 0o755)
    # No other thread releases the GIL: the forking thread itself reaches the safe point,
    # and forks while the safe point is armed (the old int3 killed 11 of 87 children in 20
    # injections this way).
    target = Target(python, fork=True, extra=["--workers", "0", "--beat", "1.0"])
    failures = []
    try:
        if not wait_ready(target):
            return ["target did not start"], 0
        env = dict(os.environ, MS_SERVICE_METRIC_RUNTIME_DIR=runtime_dir)
        env.pop("MSM_INJECT_DEBUG_PAUSE", None)
        done = 0
        for i in range(injections):
            p = subprocess.run([binary, "debug-inject", "--pid", str(target.pid), "--code", "x = %d" % i,
                                "--timeout", "5"], env=env, capture_output=True, text=True, timeout=60)
            if p.returncode != 0:
                failures.append("injection %d: %s" % (i, (p.stdout + p.stderr).strip()))
            else:
                done += 1
        problem = check_target(target, "fork target after %d injections" % injections, min_children=injections)
        if problem:
            failures.append(problem)
        return failures, done
    finally:
        if target.proc.poll() is None:
            target.proc.kill()
        shutil.rmtree(runtime_dir, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--mode", choices=["on", "phase", "fork", "all"], default="on")
    ap.add_argument("--bin", default=os.environ.get("MSM_BIN", str(REPO / ".build/debug/ms-service-metric")))
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("stress_kill_agent: needs root", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    pythons = interpreters()
    print("stress_kill_agent: seed %d, interpreters %s" % (seed, ", ".join(pythons)), flush=True)
    failures = []
    modes = ["on", "phase", "fork"] if args.mode == "all" else [args.mode]
    t0 = time.monotonic()
    for mode in modes:
        if mode == "fork":
            python = pythons[0]
            problems, done = trial_fork(args.bin, python, args.trials)
            print("fork: %d of %d injections into a forking target (%s)%s" % (
                done, args.trials, python, "" if not problems else ": " + "; ".join(problems)), flush=True)
            failures += problems
            continue
        for i in range(args.trials):
            python = pythons[i % len(pythons)]
            if mode == "on":
                problem = trial_on(args.bin, python, rng, hog=i % 2 == 1)
            else:
                problem = trial_phase(args.bin, python, rng, PHASES[i % len(PHASES)])
            print("%s %d/%d %s: %s" % (mode, i + 1, args.trials, os.path.basename(os.path.dirname(os.path.dirname(python)))
                                       if "pyenv" in python else python, problem or "ok"), flush=True)
            if problem:
                failures.append(problem)
    print("stress_kill_agent: %d failures in %.0f s (seed %d)" % (len(failures), time.monotonic() - t0, seed), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
