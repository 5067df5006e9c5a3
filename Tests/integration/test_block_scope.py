"""`scope: block` with the real agent and BPF: the with-block guarded by the context manager
a function returns is timed (docs/config.md, "Timing a with block"), as Config/default.yaml
does for vLLM's record_function_or_nullcontext. Target: Tests/fixtures/block_service.py."""

import os

import pytest

from conftest import FIXTURES, http_json, metric, wait_for

SCRIPT = FIXTURES / "block_service.py"

CONFIG = """\
- symbol: block_service:section
  scope: block
  metrics:
    - name: block:section
      type: timer
      buckets: [0.01, 0.04, 0.1, 1]
      labels:
        - {name: section, expr: name}   # the factory's parameter
        - name: outcome
          expr: "'raised' if exc is not None else 'ok'"
    # the exception that left the block, by class name
    - name: block:exceptions
      type: counter
      expr: "{f'{exc!r}'.split('(')[0]: 1} if exc is not None else None"
      labels:
        - {name: exception_type, expr: key}

# the function running the blocks, timed per call (call scope, for comparison)
- symbol: block_service:run_blocks
  metrics:
    - name: block:run_blocks
      type: timer
      buckets: [0.01, 0.04, 0.1, 1]
"""


@pytest.fixture
def block_service(service_factory, tmp_path):
    """The fixture under `ms-service-metric exec`, and the config file."""
    config = tmp_path / "block_symbols.yaml"
    config.write_text(CONFIG)
    os.chmod(str(tmp_path), 0o755)
    svc = service_factory(script=SCRIPT)
    svc.config = str(config)
    return svc


def test_block_duration_not_factory_call(agent, block_service):
    svc = block_service
    agent.on(svc.pid, config=svc.config)
    probe = agent.probe(agent.status(), svc.pid, "block_service:section")
    assert probe["state"] == "active", probe

    # 4 blocks that sleep 50 ms each
    got = http_json(svc.base + "/blocks?name=slow&n=4&sleep_ms=50")
    assert got["entered"] == [None] * 4  # nullcontext's enter result, unchanged
    slow = agent.wait_histogram_count("block:section", 4, section="slow", outcome="ok")
    b = slow["buckets"]
    assert b[0.04] == 0 and b[0.1] == 4, b  # each in (0.04, 0.1]
    assert 0.2 <= slow["sum"] < 0.4, slow

    # 3 empty blocks, 50 ms between the factory call and each block: the gap is not timed
    http_json(svc.base + "/blocks?name=fast&n=3&gap_ms=50")
    fast = agent.wait_histogram_count("block:section", 3, section="fast", outcome="ok")
    assert fast["buckets"][0.01] == 3, fast
    # ... while the call-scope timer of the function running them includes the gaps
    runs = agent.wait_histogram_count("block:run_blocks", 2)
    assert runs["buckets"][0.1] == 0 and runs["sum"] >= 0.35, runs
    status = agent.status()
    assert status["expression_errors"] == 0, status["notes"]


def test_exception_in_block_propagates_and_is_visible_as_exc(agent, block_service):
    svc = block_service
    agent.on(svc.pid, config=svc.config)
    got = http_json(svc.base + "/raise?name=boom&n=5")
    assert len(got["seen"]) == 5
    for i, seen in enumerate(got["seen"]):
        assert seen.get("swallowed") is None, seen
        assert seen["same_object"] is True and seen["args"] == ["block %d" % i], seen
        # no frame of the provider in the traceback the target sees
        assert seen["frames"] == ["raise_in_blocks"], seen
    agent.wait_histogram_count("block:section", 5, section="boom", outcome="raised")
    agent.wait_counter("block:exceptions", 5, exception_type="ValueError")
    scrape = agent.scrape()
    ok = scrape.histogram(metric("block:section"), section="boom", outcome="ok", dp="-1")
    assert ok is None or ok["count"] == 0, ok
    assert agent.status()["expression_errors"] == 0
    # blocks that do not raise still count as ok afterwards
    http_json(svc.base + "/blocks?name=boom&n=2")
    agent.wait_histogram_count("block:section", 2, section="boom", outcome="ok")
    wait_for(lambda: agent.status()["expression_errors"] == 0, 2, what="no expression errors")
