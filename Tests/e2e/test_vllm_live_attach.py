"""Live attach to a real, plainly started `vllm serve` (no `ms-service-metric exec`).

`on --pid <API server>` with the built-in config injects the provider into the API server,
the engine core and its worker; status lists them (role, dp, provider "injected"); the
engine-core step timer and the front-end timers count the requests sent; `off` releases
everything and the server keeps serving. Prints the time from the start of `on` to the
first engine-core sample and the scrape (run with -s).

Skips when the vLLM venv / model (scripts/vllm-setup.sh) or the agent binary are missing.
"""

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from msm_agent import Agent
from vllm_harness import format_process_tree, start_vllm_server, vllm_missing_reason
from workload import chat, completion, parse_prometheus, total, wait_until

MAX_TOKENS = 8   # workload.completion / chat default
STEP = "vllm_profiling_engine_core:engine_core_step:duration"
GENERATE = "vllm_profiling_engine:generate:duration"
CHAT = "vllm_profiling_server:create_chat_completion:duration"
EXECUTE = "vllm_profiling_executor:execute_model:duration"


@pytest.fixture
def agent(request):
    a = Agent()
    if not Path(a.binary).is_file():
        pytest.skip("agent binary not found at %s (build it or set MSM_BIN)" % a.binary)
    if os.geteuid() != 0:
        pytest.skip("needs root (ptrace, BPF)")
    failed_before = request.session.testsfailed
    yield a
    a.off()
    if request.session.testsfailed > failed_before:  # this test's call failed
        print("\n==== agent commands ====\n" + "\n".join(a.history))
        print("==== agent.log (tail) ====\n" + a.log()[-8000:])
    a.cleanup()


@pytest.fixture
def plain_vllm():
    reason = vllm_missing_reason()
    if reason:
        pytest.skip(reason)
    # a short directory: vLLM's zmq ipc sockets live under TMPDIR (sun_path <= 107 bytes)
    work = tempfile.mkdtemp(prefix="msmv-", dir="/tmp")
    server = start_vllm_server(work)
    print("\nplain vllm serve pid %d on %s, started in %.1f s"
          % (server.pid, server.base_url, server.start_seconds))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_on_pid_plain_vllm_serve(agent, plain_vllm):
    server = plain_vllm
    completion(server, 0)    # warm: the server answers before we attach
    tree = server.process_tree()
    print(format_process_tree(tree))
    api = server.pid
    engine = [p for p, _, t in tree if t.startswith("VLLM::EngineCore")]
    worker = [p for p, _, t in tree if t.startswith("VLLM::Worker")]
    assert engine and worker, format_process_tree(tree)
    python = subprocess.run([str(Path(os.environ.get("VLLM_VENV", "/opt/msm-vllm/venv")) / "bin" / "python3"),
                             "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                            capture_output=True, text=True).stdout.strip()

    # requests keep flowing while `on` runs, so the engine core steps
    stop = threading.Event()
    background = {"n": 0, "errors": []}

    def requester():
        i = 0
        while not stop.is_set():
            try:
                completion(server, 1000 + i)
                background["n"] += 1
            except Exception as e:  # noqa: BLE001
                background["errors"].append(repr(e))
            i += 1

    feeder = threading.Thread(target=requester, daemon=True)
    feeder.start()
    result = {}

    def run_on():
        t = time.monotonic()
        result["proc"] = agent.run("on", "--pid", api, "--listen", agent.listen, "--timeout", 60, timeout=180)
        result["seconds"] = time.monotonic() - t

    t0 = time.monotonic()
    runner = threading.Thread(target=run_on)
    runner.start()
    first = None
    timeline = {}     # event -> seconds after the start of `on`
    polls = []        # status polls: start+duration rc
    last_status = 0.0
    try:
        while time.monotonic() - t0 < 90:
            try:
                step = total(agent.scrape(), STEP + "_count", dp="0")
                timeline.setdefault("first /metrics answer", time.monotonic() - t0)
            except Exception:  # noqa: BLE001 - not listening yet
                step = None
            if step:
                first = time.monotonic() - t0
                break
            if "proc" in result and "on returned" not in timeline:
                timeline["on returned"] = time.monotonic() - t0
            if time.monotonic() - last_status > 0.5:
                last_status = time.monotonic()
                st = agent.run("status", "--json", timeout=30)
                polls.append("%.1f+%.1fs rc%d" % (last_status - t0, time.monotonic() - last_status, st.returncode))
                if st.returncode == 0:
                    for t in json.loads(st.stdout)["targets"]:
                        for event, ok in (("pid %d %s" % (t["pid"], t["state"]), True),
                                          ("pid %d acknowledged" % t["pid"], t.get("generation") is not None)):
                            if ok and event not in timeline:
                                timeline[event] = time.monotonic() - t0
            time.sleep(0.05)
    finally:
        runner.join(timeout=200)
        stop.set()
        feeder.join(timeout=130)
    proc = result.get("proc")
    assert proc is not None, "`on` did not return"
    print("\n`on --pid %d` returned rc=%d after %.2f s:\n%s%s" % (
        api, proc.returncode, result["seconds"], proc.stdout, proc.stderr))
    print("time to first engine-core sample: %s s from the start of `on --pid` (%d background requests)"
          % ("%.2f" % first if first is not None else "none within 90", background["n"]))
    print("timeline (s after the start of `on`, status polled every 0.5 s): " +
          ", ".join("%s %.1f" % (k, v) for k, v in sorted(timeline.items(), key=lambda kv: kv[1])) +
          "\nstatus polls (start+duration rc): " + ", ".join(polls))
    assert proc.returncode == 0, proc.stderr
    assert background["errors"] == [], background["errors"][:3]
    assert first is not None, "no engine_core_step sample within 90 s"

    status = agent.status()
    targets = {t["pid"]: t for t in status["targets"]}
    summary = [{k: t.get(k) for k in ("pid", "state", "role", "dp", "provider", "python", "title")}
               for t in status["targets"]]
    print("status targets:\n" + "\n".join(json.dumps(s) for s in summary))

    def check(pid, roles, dp):
        t = targets.get(pid)
        assert t is not None, "pid %d not in status: %s" % (pid, summary)
        got = (t["state"], t.get("role"), t.get("dp"), t.get("provider"), t.get("python"))
        assert got[0] == "attached" and got[1] in roles and got[2] == dp and got[3] == "injected" \
            and got[4] == python, "pid %d: %r, expected attached %s dp %d injected %s" % (pid, got, roles, dp, python)

    check(api, ("main", "api_server"), -1)
    check(engine[0], ("engine_core",), 0)
    check(worker[0], ("worker",), 0)
    probes = {p["symbol"]: p for p in status["probes"]}
    print("probes: " + ", ".join("%s %s hits %s" % (s, p.get("states"), p.get("hits")) for s, p in probes.items()))

    # exact front-end counts for requests sent now (background ones have finished)
    def settled():
        a = total(agent.scrape(), GENERATE + "_count", dp="-1")
        time.sleep(1.0)
        b = total(agent.scrape(), GENERATE + "_count", dp="-1")
        return (a, b) if a == b else None
    wait_until(settled, 20, "generate count settled")
    before = agent.scrape()
    g0 = total(before, GENERATE + "_count", dp="-1") or 0
    c0 = total(before, CHAT + "_count", dp="-1") or 0
    s0 = total(before, STEP + "_count", dp="0") or 0
    for i in range(3):
        completion(server, i)
    for i in range(2):
        chat(server, i)
    wait_until(lambda: total(agent.scrape(), GENERATE + "_count", dp="-1") == g0 + 5, 20,
               "engine:generate count +5")
    wait_until(lambda: total(agent.scrape(), CHAT + "_count", dp="-1") == c0 + 2, 20,
               "create_chat_completion count +2")
    time.sleep(0.5)
    text = agent.scrape_text()
    after = parse_prometheus(text)
    print("\n==== scrape (vllm_profiling_ series) ====\n" +
          "\n".join(l for l in text.splitlines() if l.startswith("vllm_profiling_") and "_bucket" not in l))
    assert total(after, GENERATE + "_count", dp="-1") == g0 + 5
    assert total(after, CHAT + "_count", dp="-1") == c0 + 2
    # 5 requests of 8 tokens: at least 8 more engine-core steps
    assert total(after, STEP + "_count", dp="0") >= s0 + MAX_TOKENS, (s0, total(after, STEP + "_count", dp="0"))
    assert total(after, EXECUTE + "_count", dp="0"), "executor:execute_model not counted in dp 0"

    print("agent.log, injection and attach lines:\n" + "\n".join(
        l for l in agent.log().splitlines() if "inject" in l or "attached" in l or "warning" in l))

    off = agent.run("off", timeout=120)
    print("off: rc=%d %s%s" % (off.returncode, off.stdout, off.stderr))
    assert off.returncode == 0, off.stderr
    st = agent.run("status", "--json")
    assert st.returncode == 3, st.stdout
    # the server keeps serving, every process still there
    for i in range(2):
        completion(server, 100 + i)
        chat(server, 100 + i)
    left = {p for p, _, _ in server.process_tree()}
    assert {api, engine[0], worker[0]} <= left, format_process_tree(server.process_tree())
    for pid in (api, engine[0], worker[0]):
        assert "TracerPid:\t0" in Path("/proc/%d/status" % pid).read_text()


def test_on_pid_idle_plain_vllm_serve(agent, plain_vllm):
    """The usual case: `on --pid` while the server is idle (no request in flight: the API
    server waits in its event loop, the engine core and the worker wait for input). Every
    process must be injected and attached when `on` returns, and measure what comes next."""
    server = plain_vllm
    completion(server, 0)
    tree = server.process_tree()
    print(format_process_tree(tree))
    api = server.pid
    engine = [p for p, _, t in tree if t.startswith("VLLM::EngineCore")]
    worker = [p for p, _, t in tree if t.startswith("VLLM::Worker")]
    assert engine and worker, format_process_tree(tree)
    time.sleep(3.0)   # idle
    t0 = time.monotonic()
    proc = agent.run("on", "--pid", api, "--listen", agent.listen, "--timeout", 60, timeout=180)
    seconds = time.monotonic() - t0
    print("\nidle server: `on --pid %d` rc=%d after %.2f s:\n%s%s" % (api, proc.returncode, seconds,
                                                                       proc.stdout, proc.stderr))
    status = agent.status()
    summary = {t["pid"]: (t["state"], t.get("role"), t.get("dp"), t.get("provider"), t.get("detail"))
               for t in status["targets"]}
    print("status targets: %s" % summary)
    print("agent.log, injection lines:\n" + "\n".join(
        l for l in agent.log().splitlines() if "inject" in l or "attached" in l or "warning" in l))
    not_attached = {pid: summary.get(pid) for pid in (api, engine[0], worker[0])
                    if summary.get(pid, ("missing",))[0] != "attached" or summary[pid][3] != "injected"}
    recovery = None
    if not_attached:
        # does the agent's retry get them once requests flow?
        t1 = time.monotonic()
        while time.monotonic() - t1 < 30:
            completion(server, 500)
            targets = {t["pid"]: t for t in agent.status()["targets"]}
            if all(targets.get(p, {}).get("state") == "attached" for p in not_attached):
                recovery = "attached %.1f s after requests started" % (time.monotonic() - t1)
                break
        else:
            recovery = "still not attached after 30 s of requests: %s" % {
                p: (t.get("state"), t.get("detail")) for p, t in {t["pid"]: t for t in agent.status()["targets"]}.items() if p in not_attached}
        print("idle server: " + recovery)
    assert not not_attached, "not attached after `on --pid` on an idle vLLM: %s; %s" % (not_attached, recovery)
    assert proc.returncode == 0, proc.stderr

    t1 = time.monotonic()
    for i in range(2):
        completion(server, i)
    wait_until(lambda: total(agent.scrape(), GENERATE + "_count", dp="-1") == 2, 20, "engine:generate count 2")
    wait_until(lambda: (total(agent.scrape(), STEP + "_count", dp="0") or 0) >= MAX_TOKENS, 20,
               "engine_core_step counted")
    print("first requests after `on` measured within %.2f s" % (time.monotonic() - t1))
    assert agent.run("off", timeout=120).returncode == 0
    completion(server, 99)
