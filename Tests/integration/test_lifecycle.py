"""on / off / agent death / new processes: originals restored exactly."""

import os
import signal
import time

from conftest import NOT_RUNNING_MESSAGE, diff, http_json, metric, restorable, wait_for

# kinds whose results are compared before/while/after (everything but late)
ALL_KINDS = {
    "sync": {}, "method": {}, "classmethod": {}, "staticmethod": {}, "async": {},
    "generator": {"len": 3}, "asyncgen": {"len": 3}, "recursive": {"depth": 4},
    "raises": {}, "process": {"len": 3, "scale": 2}, "summarize": {"len": 3},
    "prebound": {}, "expr_fail": {}, "versioned": {},
}


def call_all(svc, n=3):
    return {kind: (lambda a: (a["results"], a["errors"]))(svc.call(kind, n=n, **params))
            for kind, params in ALL_KINDS.items()}


def test_off_restores_identity_and_results(agent, service):
    before = restorable(service.identity())
    results_before = call_all(service)

    agent.on(service.pid)
    assert call_all(service) == results_before, "results changed while on"

    proc = agent.off()
    assert proc.returncode == 0, proc.stderr
    after = restorable(service.identity())
    assert after == before, "off did not restore: %s" % diff(before, after)
    assert call_all(service) == results_before, "results changed after off"
    status = agent.run("status", "--json")
    assert status.returncode == 3 and status.stderr.strip() == NOT_RUNNING_MESSAGE


def test_semantics_unchanged_while_on(agent, service):
    """Signature, coroutine/generator nature, __wrapped__ view, names, docs."""
    before = service.identity()["semantic"]
    agent.on(service.pid)
    service.call("sync", n=1)
    agent.wait_histogram_count("fixture:sync:duration", 1)
    during = service.identity()["semantic"]
    assert during == before, "instrumentation is visible: %s" % diff(before, during)


def test_off_when_not_running(agent):
    proc = agent.off()
    assert proc.returncode == 0
    assert NOT_RUNNING_MESSAGE in proc.stdout + proc.stderr


def test_agent_sigkill_providers_restore_within_deadline(agent, service):
    original = restorable(service.identity())
    results = call_all(service)
    agent.on(service.pid)
    service.call("sync", n=3)
    agent.wait_histogram_count("fixture:sync:duration", 3)
    during = restorable(service.identity())
    assert during != original, ("instrumentation not visible in /identity while on; "
                                "the dead-man check below would prove nothing")

    daemon = agent.status()["agent_pid"]
    os.kill(daemon, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: restorable(service.identity()) == original, timeout=3.0,
             what="provider restores originals after the agent was SIGKILLed")
    elapsed = time.monotonic() - killed_at
    assert elapsed <= 3.0, elapsed
    assert call_all(service) == results

    # a new agent can attach again afterwards
    wait_for(lambda: not os.path.exists("/proc/%d" % daemon), what="old daemon gone")
    agent.on(service.pid)
    service.call("sync", n=4)
    agent.wait_histogram_count("fixture:sync:duration", 4)


def test_agent_sigkill_then_immediate_reattach_counts_exactly(agent, service):
    """A new agent attached right after the old one was SIGKILLed (before the provider's
    250 ms poll can notice) counts every call: it starts from a new config generation, so
    the provider re-applies and re-announces its series to it, and its semaphore rises
    only once the new probe has its BPF program."""
    agent.on(service.pid)
    service.call("sync", n=2)
    agent.wait_histogram_count("fixture:sync:duration", 2)
    for round_ in range(3):
        daemon = agent.status()["agent_pid"]
        os.kill(daemon, signal.SIGKILL)
        wait_for(lambda: not os.path.exists("/proc/%d" % daemon), what="old daemon gone")
        agent.on(service.pid)
        answer = service.call("sync", n=50, threads=8)
        assert answer["calls"] == 400, answer
        agent.wait_histogram_count("fixture:sync:duration", 400)


def test_child_started_after_on_is_picked_up(agent, service):
    agent.on(service.pid)
    child = service.spawn()
    child_pid, child_port = child["pid"], child["port"]
    wait_for(lambda: (agent.target(agent.status(), child_pid) or {}).get("state") == "attached",
             timeout=5.0, what="child pid %d attached" % child_pid)
    wait_for(lambda: (agent.probe(agent.status(), child_pid, "fixture_target:sync_fn") or {})
             .get("state") == "active", timeout=5.0, what="child sync probe active")
    answer = http_json("http://127.0.0.1:%d/call?fn=sync&n=30" % child_port)
    assert answer["pid"] == child_pid
    agent.wait_histogram_count("fixture:sync:duration", 30)

    # the parent's calls add to the same series
    service.call("sync", n=5)
    agent.wait_histogram_count("fixture:sync:duration", 35)

    # series survive the exit of the process that produced them
    os.kill(child_pid, signal.SIGTERM)
    wait_for(lambda: (agent.target(agent.status(), child_pid) or {"state": "exited"})["state"] == "exited",
             timeout=5.0, what="child reported exited")
    assert agent.scrape().histogram(metric("fixture:sync:duration"), dp="-1")["count"] == 35


def test_on_twice_is_idempotent(agent, service):
    agent.on(service.pid)
    service.call("sync", n=3)
    agent.wait_histogram_count("fixture:sync:duration", 3)
    agent.on(service.pid)
    service.call("sync", n=2)
    agent.wait_histogram_count("fixture:sync:duration", 5)


def test_forked_child_of_attached_target_survives(agent, service):
    """fork() copies the instrumentation and the probed marker into the child, which the
    agent has not attached to: calls there must work (regression: a probed 5-byte nop is
    rewritten into a call to a per-process trampoline page that fork does not copy)."""
    agent.on(service.pid)
    service.call("sync", n=3)
    agent.wait_histogram_count("fixture:sync:duration", 3)
    for _ in range(5):
        ended = http_json("http://127.0.0.1:%d/fork?n=20" % service.port)
        assert ended["exited"] and ended["exit_code"] == 0, ended
    # the parent keeps being measured
    service.call("sync", n=2)
    wait_for(lambda: agent.scrape().histogram(metric("fixture:sync:duration"), dp="-1")["count"] >= 5,
             what="parent calls after the forks counted")
