"""`status` (human and --json) per docs/cli.md."""

import re

from conftest import NOT_RUNNING_MESSAGE, SYMBOLS, wait_for

UNKNOWN = "fixture_target:DoesNotExist.method"
VERSIONED = "fixture_target:versioned_fn"


def test_status_without_daemon_exits_3(agent):
    proc = agent.run("status", "--json")
    assert proc.returncode == 3
    assert proc.stderr.strip() == NOT_RUNNING_MESSAGE


def test_status_json_reports_targets_probes_and_hits(agent, instrumented, python):
    instrumented.call("sync", n=25)
    agent.wait_histogram_count("fixture:sync:duration", 25)
    status = wait_for(lambda: (lambda s: s if (agent.probe(s, instrumented.pid, "fixture_target:sync_fn") or {})
                               .get("hits", 0) >= 25 else None)(agent.status()),
                      what="sync probe hits >= 25")

    for key in ("agent_pid", "listen", "config", "generation", "events", "drops", "truncated",
                "read_errors", "orphan_samples", "expression_errors", "targets", "probes", "notes"):
        assert key in status, "status --json lacks %r" % key
    assert status["listen"] == agent.listen
    assert status["config"] == str(SYMBOLS)
    assert status["agent_pid"] == agent.daemon_pid()
    assert status["drops"] == 0
    assert status["events"] > 0

    target = agent.target(status, instrumented.pid)
    assert target is not None, "fixture pid %d not in targets" % instrumented.pid
    assert target["state"] == "attached"
    assert target["provider"] == "exec"
    assert target["dp"] == -1
    assert target["generation"] == status["generation"]
    assert target["python"] == instrumented.pid_info()["python"]

    states = {p["symbol"]: p for p in target["probes"]}
    assert states[UNKNOWN]["state"] == "not_found"
    assert states["fixture_target:sync_fn"]["state"] == "active"
    assert states["fixture_target:sync_fn"]["hits"] >= 25
    for symbol in ("fixture_target:Worker.method", "fixture_target:Worker.class_method",
                   "fixture_target:Worker.static_method", "fixture_target:async_fn",
                   "fixture_target:gen_fn", "fixture_target:agen_fn", "fixture_target:Engine.step",
                   "fixture_target:raising_fn", "fixture_target:process"):
        assert states[symbol]["state"] == "active", states[symbol]
        assert states[symbol]["hits"] == 0, "%s was never called: %r" % (symbol, states[symbol])

    # vLLM is not importable: min_version is ignored, the probe is active, and a note says so
    assert states[VERSIONED]["state"] == "active", states[VERSIONED]
    notes = [n for n in status["notes"] if str(instrumented.pid) in n and "vllm" in n.lower()]
    assert notes, "no note about vLLM/min_version for pid %d: %r" % (instrumented.pid, status["notes"])

    summary = {p["symbol"]: p for p in status["probes"]}
    assert summary[UNKNOWN]["states"] == {"not_found": 1}
    assert summary["fixture_target:sync_fn"]["states"] == {"active": 1}
    assert summary["fixture_target:sync_fn"]["hits"] >= 25


def test_status_human_table_mentions_target(agent, instrumented):
    proc = agent.must("status")
    assert re.search(r"\b%d\b" % instrumented.pid, proc.stdout), proc.stdout


def test_on_prints_one_line_per_target(agent, service):
    proc = agent.on(service.pid)
    lines = [l for l in proc.stdout.splitlines() if str(service.pid) in l]
    assert len(lines) == 1, proc.stdout
