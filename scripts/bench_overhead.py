#!/usr/bin/env python3
"""Added cost per call of a timed Python function: plain, the reference tool's
approach (prometheus_client multiprocess Histogram around the call), and
ms-service-metric (agent on / after off).  Run through scripts/bench-overhead.sh.

Every row runs the same loop in the target process itself:
    for i in range(N): bench_target.work(i)
(the attribute is looked up per call, so any patching strategy is seen), best
of R rounds, reporting the median and the minimum ns per call.
"""

import argparse
import functools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TARGET_NS_ON = 2000.0
METRIC = "bench:work:duration"
CONFIG = """\
- symbol: bench_target:work
  metrics:
    - name: %s
      type: timer
""" % METRIC


# ---------------------------------------------------------------- target side

def measure(iters, rounds):
    import bench_target
    m = bench_target
    for i in range(min(iters, 20000)):  # warm-up
        m.work(i)
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for i in range(iters):
            m.work(i)
        per_call.append((time.perf_counter_ns() - t0) / iters)
    return {"per_call_ns": per_call, "calls": min(iters, 20000) + iters * rounds}


def install_reference():
    """The reference tool's way: PROMETHEUS_MULTIPROC_DIR + monkey-patched
    wrapper observing time.perf_counter() deltas into a labelled Histogram."""
    mp_dir = tempfile.mkdtemp(prefix="msm-bench-mp-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir
    from prometheus_client import Histogram
    import bench_target
    hist = Histogram("vllm_profiling_" + METRIC.replace(":", "_"),
                     "Execution duration of " + METRIC, ["dp"])
    original = bench_target.work

    @functools.wraps(original)
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            hist.labels(dp="-1").observe(time.perf_counter() - t0)

    bench_target.work = timed
    return mp_dir


def reference_count(mp_dir):
    from prometheus_client import CollectorRegistry, multiprocess
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=mp_dir)
    for family in registry.collect():
        for s in family.samples:
            if s.name.endswith("_count"):
                return s.value
    return None


def cmd_loop(args):
    sys.path.insert(0, HERE)
    mp_dir = install_reference() if args.mode == "reference" else None
    result = measure(args.iters, args.rounds)
    result["mode"] = args.mode
    if mp_dir:
        result["observed"] = reference_count(mp_dir)
        shutil.rmtree(mp_dir, ignore_errors=True)
    print(json.dumps(result), flush=True)


def cmd_serve(args):
    """Under `ms-service-metric exec`: wait for 'run LABEL' lines on stdin."""
    sys.path.insert(0, HERE)
    import bench_target  # noqa: F401  (imported before `on`)
    print("READY %d" % os.getpid(), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "run":
            result = measure(args.iters, args.rounds)
            result["mode"] = words[1] if len(words) > 1 else "run"
            print(json.dumps(result), flush=True)


# ---------------------------------------------------------- orchestrator side

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_child(argv, timeout=600):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(argv), proc.stderr.strip()[-500:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def scrape_count(listen):
    try:
        with urllib.request.urlopen("http://%s/metrics" % listen, timeout=5) as resp:
            text = resp.read().decode()
    except OSError as e:
        return "scrape failed: %s" % e
    name = re.escape("vllm_profiling_" + METRIC + "_count")
    m = re.search(r"^%s\{[^}]*\}\s+(\S+)" % name, text, re.M)
    return float(m.group(1)) if m else None


class AgentRows:
    """dormant / on / off rows measured in one process started under exec."""

    def __init__(self, msm_bin, py, args):
        self.msm_bin, self.py, self.args = msm_bin, py, args
        self.runtime = tempfile.mkdtemp(prefix="msm-bench-rt-", dir="/tmp")
        os.chmod(self.runtime, 0o755)
        self.env = dict(os.environ, MS_SERVICE_METRIC_RUNTIME_DIR=self.runtime)
        self.listen = "127.0.0.1:%d" % free_port()
        self.config = os.path.join(self.runtime, "bench.yaml")
        with open(self.config, "w") as f:
            f.write(CONFIG)
        self.proc = None
        self.stderr = tempfile.TemporaryFile()

    def msm(self, *argv, timeout=120):
        proc = subprocess.run([self.msm_bin] + list(argv), env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        return proc

    def start(self):
        self.proc = subprocess.Popen(
            [self.msm_bin, "exec", "--", self.py, os.path.abspath(__file__), "serve",
             "--iters", str(self.args.iters), "--rounds", str(self.args.rounds)],
            env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            stderr=self.stderr, start_new_session=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            self.proc.wait(timeout=10)
            self.stderr.seek(0)
            tail = [l for l in self.stderr.read().decode(errors="replace").splitlines() if l.strip()]
            raise RuntimeError("target under exec did not start (got %r, rc=%r): %s"
                               % (line, self.proc.poll(), " | ".join(tail[:3])))
        self.pid = int(line.split()[1])

    def run(self, label):
        self.proc.stdin.write("run %s\n" % label)
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("target exited during %s (rc=%r)" % (label, self.proc.poll()))
        return json.loads(line)

    def on(self):
        proc = self.msm("on", "--pid", str(self.pid), "--config", self.config,
                        "--listen", self.listen)
        if proc.returncode != 0:
            raise RuntimeError("on failed rc=%d: %s" % (proc.returncode, (proc.stderr or proc.stdout).strip()[-400:]))

    def off(self):
        proc = self.msm("off")
        if proc.returncode != 0:
            raise RuntimeError("off failed rc=%d: %s" % (proc.returncode, proc.stderr.strip()[-400:]))

    def status(self):
        proc = self.msm("status", "--json")
        try:
            return json.loads(proc.stdout)
        except ValueError:
            return {}

    def close(self):
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.msm("off", timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        pidfile = os.path.join(self.runtime, "agent.pid")
        try:
            pid = int(open(pidfile).read().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass
        shutil.rmtree(self.runtime, ignore_errors=True)


def fmt(x, width=10):
    return ("%*.0f" % (width, x)) if isinstance(x, (int, float)) else ("%*s" % (width, x))


def cmd_orchestrate(args):
    py = sys.executable
    loop = [py, os.path.abspath(__file__), "loop", "--iters", str(args.iters), "--rounds", str(args.rounds)]
    rows = []  # (label, median, min, added, base label, target, verdict)
    notes = []

    plain = run_child(loop + ["--mode", "plain"])
    p_med = statistics.median(plain["per_call_ns"])
    rows.append(("plain call", p_med, min(plain["per_call_ns"]), "", "", "", ""))

    try:
        ref = run_child(loop + ["--mode", "reference"])
        r_med = statistics.median(ref["per_call_ns"])
        rows.append(("reference: prometheus_client multiproc", r_med, min(ref["per_call_ns"]),
                     r_med - p_med, "plain", "", ""))
        if ref.get("observed") != ref["calls"]:
            notes.append("reference histogram count %r != calls %d" % (ref.get("observed"), ref["calls"]))
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        r_med = None
        rows.append(("reference: prometheus_client multiproc", "error", "", "", "", "", ""))
        notes.append("reference row failed: %s (pip install prometheus_client?)" % e)

    skip = None
    if args.no_agent:
        skip = "--no-agent given"
    elif not os.path.isfile(args.msm_bin):
        skip = "agent binary not found at %s" % args.msm_bin
    elif os.geteuid() != 0:
        skip = "agent rows need root"
    if skip:
        for label in ("ms-service-metric: exec, dormant", "ms-service-metric: on (timer)",
                      "ms-service-metric: after off"):
            rows.append((label, "skipped", "", "", "", "", ""))
        notes.append("agent rows skipped: %s" % skip)
    else:
        agent = AgentRows(args.msm_bin, py, args)
        try:
            agent.start()
            dormant = agent.run("dormant")
            d_med = statistics.median(dormant["per_call_ns"])
            rows.append(("ms-service-metric: exec, dormant", d_med, min(dormant["per_call_ns"]),
                         d_med - p_med, "plain", "", ""))
            try:
                agent.on()
                on = agent.run("on")
                o_med = statistics.median(on["per_call_ns"])
                added = o_med - d_med
                verdict = "PASS" if added <= TARGET_NS_ON else "FAIL"
                if r_med is not None:
                    verdict += " (%.1fx less than reference)" % ((r_med - p_med) / added) if added > 0 else ""
                rows.append(("ms-service-metric: on (timer)", o_med, min(on["per_call_ns"]), added,
                             "dormant", "<= %d" % TARGET_NS_ON, verdict))
                # The agent may still be ingesting the burst: wait until the count settles.
                seen, deadline = None, time.monotonic() + 60
                while time.monotonic() < deadline:
                    now = scrape_count(agent.listen)
                    if now == on["calls"] or (now == seen and now is not None):
                        seen = now
                        break
                    seen = now
                    time.sleep(0.5)
                st = agent.status()
                notes.append("agent: %s of %d calls counted in /metrics; drops=%s events=%s" % (
                    seen, on["calls"], st.get("drops"), st.get("events")))
                if seen != on["calls"]:
                    notes.append("WARNING: counted calls differ from calls made")
                agent.off()
                off = agent.run("off")
                f_med = statistics.median(off["per_call_ns"])
                added = f_med - d_med
                tol = max(15.0, 0.10 * d_med)
                rows.append(("ms-service-metric: after off", f_med, min(off["per_call_ns"]), added,
                             "dormant", "0 (noise <= %.0f)" % tol, "PASS" if added <= tol else "FAIL"))
            except RuntimeError as e:
                rows.append(("ms-service-metric: on (timer)", "error", "", "", "", "", ""))
                notes.append("agent row failed: %s" % e)
        except (RuntimeError, OSError, ValueError) as e:
            rows.append(("ms-service-metric: exec, dormant", "error", "", "", "", "", ""))
            notes.append("agent rows failed: %s" % e)
        finally:
            agent.close()

    print("ms-service-metric overhead benchmark")
    print("python %s (%s); %d calls x %d rounds per row; ns per call (median of rounds, min)"
          % (sys.version.split()[0], os.path.realpath(py), args.iters, args.rounds))
    print()
    head = "%-40s %10s %10s %12s %-9s %-18s %s" % ("row", "median", "min", "added ns", "vs", "target", "verdict")
    print(head)
    print("-" * len(head))
    for label, med, mn, added, base, target, verdict in rows:
        print("%-40s %s %s %s %-9s %-18s %s" % (label, fmt(med), fmt(mn), fmt(added, 12), base, target, verdict))
    if notes:
        print()
        for n in notes:
            print("note: " + n)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", nargs="?", default="orchestrate", choices=["orchestrate", "loop", "serve"])
    ap.add_argument("--mode", default="plain", choices=["plain", "reference"])
    ap.add_argument("--iters", type=int, default=200000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--msm-bin", default=os.environ.get("MSM_BIN", os.path.join(REPO, ".build/debug/ms-service-metric")))
    ap.add_argument("--no-agent", action="store_true")
    args = ap.parse_args()
    return {"orchestrate": cmd_orchestrate, "loop": cmd_loop, "serve": cmd_serve}[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
