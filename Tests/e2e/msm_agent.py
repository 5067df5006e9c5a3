"""The agent under test, driven through its command line (for the e2e tests).

``MSM_BIN`` selects the binary (default .build/debug/ms-service-metric, relative to the
current directory or the repository). Each Agent has its own runtime directory and
listen port; ``attach`` runs ``on --pid`` while requests flow (an idle engine core is
reached once work arrives) and waits until every vLLM process is attached.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from vllm_harness import REPO, free_port
from workload import completion, parse_prometheus, wait_until

CONFIG = REPO / "Config" / "default.yaml"


def msm_bin():
    raw = Path(os.environ.get("MSM_BIN", ".build/debug/ms-service-metric"))
    if raw.is_absolute():
        return raw
    return (Path.cwd() / raw) if (Path.cwd() / raw).exists() else REPO / raw


class Agent:
    def __init__(self, binary=None, config=CONFIG):
        self.binary = str(binary or msm_bin())
        self.config = str(config)
        self.runtime_dir = tempfile.mkdtemp(prefix="msm-rt-met-", dir="/tmp")
        os.chmod(self.runtime_dir, 0o755)
        self.listen = "127.0.0.1:%d" % free_port()
        self.history = []

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MS_SERVICE_METRIC")}
        env["MS_SERVICE_METRIC_RUNTIME_DIR"] = self.runtime_dir
        return env

    def run(self, *args, timeout=120):
        cmd = [self.binary] + [str(a) for a in args]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, env=self.env(), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        self.history.append("$ %s -> rc=%d (%.2fs)\n%s%s" % (
            " ".join(cmd), proc.returncode, time.monotonic() - t0, proc.stdout, proc.stderr))
        return proc

    def status(self):
        proc = self.run("status", "--json")
        assert proc.returncode == 0, "status failed: %s%s" % (proc.stdout, proc.stderr)
        return json.loads(proc.stdout)

    def status_text(self):
        return self.run("status").stdout

    def scrape_text(self):
        with urllib.request.urlopen("http://%s/metrics" % self.listen, timeout=10) as resp:
            return resp.read().decode()

    def scrape(self):
        return parse_prometheus(self.scrape_text())

    def log(self):
        try:
            return Path(self.runtime_dir, "agent.log").read_text(errors="replace")
        except OSError:
            return ""

    def daemon_pid(self):
        try:
            return int(Path(self.runtime_dir, "agent.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def attach(self, server, expect_pids, timeout=120):
        """``on --pid <api server> --config Config/default.yaml`` with requests flowing,
        then waits until every pid in ``expect_pids`` is attached and acknowledged."""
        stop = threading.Event()
        errors = []

        def feeder():
            i = 0
            while not stop.is_set():
                try:
                    completion(server, 50000 + i, max_tokens=4)
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e))
                i += 1

        t = threading.Thread(target=feeder, daemon=True)
        t.start()
        try:
            for attempt in (1, 2):
                proc = self.run("on", "--pid", server.pid, "--config", self.config, "--listen",
                                self.listen, "--timeout", 90, timeout=200)
                # "no thread ... released the GIL within 3.0 s ... nothing was changed; retry"
                # is a documented transient refusal: one more try, printed
                if proc.returncode == 0 or "retry" not in proc.stdout + proc.stderr or attempt == 2:
                    break
                print("on --pid %d refused, retrying once:\n%s%s" % (server.pid, proc.stdout, proc.stderr))
            assert proc.returncode == 0, "on --pid %d failed (rc %d):\n%s%s" % (
                server.pid, proc.returncode, proc.stdout, proc.stderr)

            def attached():
                targets = {t["pid"]: t for t in self.status()["targets"]}
                missing = {p: (targets.get(p) or {}).get("state") for p in expect_pids
                           if (targets.get(p) or {}).get("state") != "attached"
                           or (targets.get(p) or {}).get("generation") is None}
                return True if not missing else None

            wait_until(attached, timeout, "every vLLM process attached (%s)" % expect_pids, 0.5)
        finally:
            stop.set()
            t.join(timeout=120)
        assert not errors, "requests failed while attaching: %s" % errors[:3]

    def off(self):
        pid = self.daemon_pid()
        try:
            self.run("off", timeout=120)
        except subprocess.TimeoutExpired:
            self.history.append("off timed out")
        if pid:
            deadline = time.monotonic() + 10
            while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            try:
                cmdline = Path("/proc/%d/cmdline" % pid).read_bytes()
                if os.path.basename(self.binary).encode() in cmdline:
                    os.kill(pid, signal.SIGKILL)   # our own daemon, still there after off
            except OSError:
                pass

    def cleanup(self):
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def settle(self, name, timeout=30, quiet=1.0, **labels):
        """Waits until the total of ``name`` stops changing for ``quiet`` seconds."""
        from workload import total

        def stable():
            a = total(self.scrape(), name, **labels)
            time.sleep(quiet)
            b = total(self.scrape(), name, **labels)
            return (a,) if a == b else None
        return wait_until(stable, timeout, "%s settled" % name)[0]
