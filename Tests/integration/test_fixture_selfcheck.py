"""Checks of the fixture itself; they need no agent and run everywhere.

If these fail, the agent tests cannot be trusted.
"""

import importlib
import re
import sys

import pytest

from conftest import BROKEN, FIXTURES, SYMBOLS, count_config, wait_for

KIND_COUNTS = {
    # kind -> (params, results for n=3)
    "sync": ({}, [1, 3, 5]),
    "method": ({}, [10, 11, 12]),
    "classmethod": ({}, [["Worker", 0], ["Worker", 3], ["Worker", 6]]),
    "staticmethod": ({}, [-7, -6, -5]),
    "async": ({}, [100, 101, 102]),
    "generator": ({"len": 3}, [[0, 1, 4]] * 3),
    "asyncgen": ({"len": 3}, [[1, 2, 3]] * 3),
    "recursive": ({"depth": 5}, [5, 5, 5]),
    "sleep": ({}, ["slept"] * 3),
    "process": ({"len": 4, "scale": 2}, [12, 12, 12]),
    "summarize": ({"len": 4}, [{"total": 6, "count": 4}] * 3),
    "prebound": ({}, [1, 2, 3]),
    "expr_fail": ({}, [1, 2, 3]),
    "versioned": ({}, [0, 10, 20]),
}


@pytest.mark.parametrize("kind", sorted(KIND_COUNTS))
def test_fixture_kind_results(baseline, kind):
    params, expected = KIND_COUNTS[kind]
    answer = baseline.call(kind, n=3, **params)
    assert answer["calls"] == 3
    assert answer["results"] == expected
    assert answer["errors"] == []


def test_fixture_raises_valueerror_unchanged(baseline):
    answer = baseline.call("raises", n=2)
    assert answer["results"] == []
    assert [e["args"] for e in answer["errors"]] == [["'bad value 0'"], ["'bad value 1'"]]
    for e in answer["errors"]:
        assert e["exact_type"] and e["type"] == "ValueError"
        assert e["innermost_function"] == "raising_fn"
        assert e["innermost_file"] == "fixture_target.py"
        assert e["context"] == "None" and e["cause"] == "None"


def test_fixture_threads(baseline):
    answer = baseline.call("sync", n=50, threads=8)
    assert answer["calls"] == 400
    assert answer["distinct_threads"] == 8
    assert len(answer["results"]) == 400


def test_fixture_identity_is_stable_without_agent(baseline):
    first = baseline.identity()
    baseline.call("prebound", n=3)
    baseline.call("classmethod", n=3)
    second = baseline.identity()
    for key in ("semantic", "objects", "runtime"):
        assert first[key] == second[key]
    s = first["semantic"]
    assert s["async_fn"]["iscoroutinefunction"] is True
    assert s["gen_fn"]["isgeneratorfunction"] is True
    assert s["agen_fn"]["isasyncgenfunction"] is True
    assert s["Worker.class_method"]["type"] == "classmethod"
    assert s["Worker.static_method"]["type"] == "staticmethod"
    assert s["process"]["signature"] == "(items, scale=1)"
    assert first["objects"]["ENGINE.step_fn"]["bound_func_is_class_attr"] is True


def test_fixture_late_module_is_lazy(baseline_factory, python):
    # a fresh process: the session baseline may have imported it already
    from conftest import SERVICE, free_port, start_service
    import os
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    svc = start_service([python, str(SERVICE), "--port", str(port)], env)
    try:
        assert svc.identity()["late_module_loaded"] is False
        assert svc.call("late_import")["results"] == ["late_module"]
        assert svc.identity()["late_module_loaded"] is True
        assert "late_module.late_work" in svc.identity()["semantic"]
        assert svc.call("late", n=2)["results"] == [2, 7]
    finally:
        svc.stop()
        os.unlink(svc.stderr_path)


def test_fixture_spawn_child(baseline):
    child = baseline.spawn()
    assert child["parent"] == baseline.pid
    info = wait_for(lambda: baseline.get("/children")["children"], what="child listed")
    assert info[0]["pid"] == child["pid"] and info[0]["alive"]
    from conftest import http_json
    answer = http_json("http://127.0.0.1:%d/call?fn=sync&n=2" % child["port"])
    assert answer["results"] == [1, 3]
    assert http_json("http://127.0.0.1:%d/pid" % child["port"])["ppid"] == baseline.pid


def _resolve(symbol):
    module_name, qualname = symbol.split(":", 1)
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def test_fixture_symbols_resolve():
    """Every symbol in fixture_symbols.yaml exists, except the deliberate one."""
    sys.path.insert(0, str(FIXTURES))
    try:
        symbols = re.findall(r"^- symbol: (\S+)", SYMBOLS.read_text(), re.M)
        missing = []
        for symbol in symbols:
            try:
                _resolve(symbol)
            except AttributeError:
                missing.append(symbol)
        assert missing == ["fixture_target:DoesNotExist.method"]
        assert "late_module" in {s.split(":")[0] for s in symbols}
    finally:
        sys.path.remove(str(FIXTURES))


def test_fixture_config_counts():
    assert count_config(SYMBOLS) == (17, 24)


def test_broken_config_table_matches_file():
    """The BROKEN_ERRORS table (test_config.py) points at the lines it claims."""
    from test_config import BROKEN_ERRORS
    lines = BROKEN.read_text().splitlines()
    for lineno, (_field, text) in BROKEN_ERRORS.items():
        assert text in lines[lineno - 1], (lineno, text, lines[lineno - 1])
