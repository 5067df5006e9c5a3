"""What the agent measures: exact call counts per callable kind, durations,
expression values, exceptions, lazily imported modules.  Results returned by
the instrumented service must equal those of an uninstrumented baseline."""

import pytest

from conftest import metric, wait_for

# kind -> (timer metric, extra /call params)
TIMED_KINDS = {
    "sync": ("fixture:sync:duration", {}),
    "method": ("fixture:method:duration", {}),
    "classmethod": ("fixture:classmethod:duration", {}),
    "staticmethod": ("fixture:staticmethod:duration", {}),
    "async": ("fixture:async:duration", {}),
    "generator": ("fixture:generator:duration", {"len": 4}),
    "asyncgen": ("fixture:asyncgen:duration", {"len": 4}),
    "prebound": ("fixture:prebound:duration", {}),
    "process": ("fixture:process:duration", {"len": 3}),
    "summarize": ("fixture:summarize:duration", {"len": 3}),
    "versioned": ("fixture:versioned:duration", {}),
}


def same_results(instrumented, baseline, fn, n, **params):
    got = instrumented.call(fn, n=n, **params)
    want = baseline.call(fn, n=n, **params)
    assert got["results"] == want["results"], "results of %s changed under the agent" % fn
    assert got["errors"] == want["errors"], "exceptions of %s changed under the agent" % fn
    return got


def assert_histogram_consistent(h):
    les = sorted(h["buckets"])
    assert les and les[-1] == float("inf"), "histogram without le=+Inf: %r" % h
    assert h["buckets"][float("inf")] == h["count"]
    values = [h["buckets"][le] for le in les]
    assert values == sorted(values), "buckets not cumulative: %r" % h["buckets"]


@pytest.mark.parametrize("kind", sorted(TIMED_KINDS))
def test_timer_counts_every_call_exactly(agent, instrumented, baseline, kind):
    name, params = TIMED_KINDS[kind]
    same_results(instrumented, baseline, kind, 100, **params)
    h = agent.wait_histogram_count(name, 100)
    assert_histogram_consistent(h)
    assert h["sum"] >= 0
    assert agent.scrape().types.get(metric(name)) == "histogram"


def test_sleep_duration_within_tolerance(agent, instrumented, baseline):
    same_results(instrumented, baseline, "sleep", 5)
    h = agent.wait_histogram_count("fixture:sleep:duration", 5)
    mean = h["sum"] / h["count"]
    assert 0.045 <= mean <= 0.2, "mean duration of a 50 ms sleep is %.4f s" % mean
    assert_histogram_consistent(h)


def test_recursion_counts_each_level(agent, instrumented, baseline):
    answer = same_results(instrumented, baseline, "recursive", 1, depth=5)
    assert answer["results"] == [5]
    agent.wait_histogram_count("fixture:recursive:duration", 5)
    same_results(instrumented, baseline, "recursive", 2, depth=5)
    agent.wait_histogram_count("fixture:recursive:duration", 15)


def test_concurrent_threads_all_counted(agent, instrumented, baseline):
    answer = same_results(instrumented, baseline, "sync", 50, threads=8)
    assert answer["calls"] == 400 and answer["distinct_threads"] == 8
    agent.wait_histogram_count("fixture:sync:duration", 400)


def test_concurrent_async_calls_on_threads(agent, instrumented, baseline):
    same_results(instrumented, baseline, "async", 25, threads=4)
    agent.wait_histogram_count("fixture:async:duration", 100)
    same_results(instrumented, baseline, "asyncgen", 10, threads=4, len=3)
    agent.wait_histogram_count("fixture:asyncgen:duration", 40)


def test_prebound_reference_is_measured(agent, instrumented, baseline):
    """ENGINE.step_fn was bound at import, long before `on`."""
    before = instrumented.identity()["engine_steps"]
    same_results(instrumented, baseline, "prebound", 30)
    assert instrumented.identity()["engine_steps"] == before + 30
    agent.wait_histogram_count("fixture:prebound:duration", 30)


def test_exceptions_counted_and_reach_caller_unchanged(agent, instrumented, baseline):
    answer = same_results(instrumented, baseline, "raises", 7)
    assert answer["results"] == []
    assert len(answer["errors"]) == 7
    for i, err in enumerate(answer["errors"]):
        assert err["exact_type"] and err["type"] == "ValueError"
        assert err["args"] == [repr("bad value %d" % i)]
        assert err["innermost_function"] == "raising_fn"
        assert err["context"] == "None" and err["cause"] == "None"
        assert err["notes"] == []
    agent.wait_counter("fixture:raises:calls", 7)
    agent.wait_histogram_count("fixture:raises:duration", 7)


def test_expression_histogram_gauge_and_labelled_counter(agent, instrumented, baseline):
    same_results(instrumented, baseline, "process", 4, len=3, scale=1)
    same_results(instrumented, baseline, "process", 2, len=5, scale=2)

    h = agent.wait_histogram_count("fixture:process:items", 6)
    assert h["sum"] == 4 * 3 + 2 * 5
    # configured buckets [1, 2, 5, 10, 100]
    assert h["buckets"][1.0] == 0 and h["buckets"][2.0] == 0
    assert h["buckets"][5.0] == 6 and h["buckets"][10.0] == 6
    assert_histogram_consistent(h)

    agent.wait_counter("fixture:process:calls", 4, kind="small")
    agent.wait_counter("fixture:process:calls", 2, kind="big")
    gauge = wait_for(lambda: agent.scrape().get(metric("fixture:process:scale2"), dp="-1") == 4,
                     what="gauge scale*2 == 4 (last call had scale=2)")
    assert gauge

    # a gauge holds the most recent value
    same_results(instrumented, baseline, "process", 1, len=2, scale=1)
    wait_for(lambda: agent.scrape().get(metric("fixture:process:scale2"), dp="-1") == 2,
             what="gauge scale*2 == 2 after a scale=1 call")
    agent.wait_counter("fixture:process:calls", 5, kind="small")
    h = agent.wait_histogram_count("fixture:process:items", 7)
    assert h["sum"] == 24


def test_expression_on_return_value_attributes(agent, instrumented, baseline):
    same_results(instrumented, baseline, "summarize", 3, len=4)   # total 6, count 4
    h = agent.wait_histogram_count("fixture:summarize:total", 3)
    assert h["sum"] == 18
    wait_for(lambda: agent.scrape().get(metric("fixture:summarize:count"), dp="-1") == 4,
             what="gauge ret.count == 4")


def test_failing_expression_is_counted_not_raised(agent, instrumented, baseline):
    same_results(instrumented, baseline, "expr_fail", 10)
    agent.wait_histogram_count("fixture:expr_fail:duration", 10)
    errors = wait_for(lambda: agent.status()["expression_errors"] >= 10 and agent.status()["expression_errors"],
                      what="status expression_errors >= 10")
    assert errors == 10, "expression_errors is %r, expected exactly 10" % errors
    assert agent.scrape().get(metric("fixture:expr_fail:bad"), dp="-1") is None


def test_lazily_imported_module_is_measured(agent, instrumented, baseline):
    symbol = "late_module:late_work"
    assert instrumented.identity()["late_module_loaded"] is False
    probe = wait_for(lambda: agent.probe(agent.status(), instrumented.pid, symbol),
                     what="status lists %s" % symbol)
    assert probe["state"] == "not_found", probe

    instrumented.call("late_import")
    wait_for(lambda: agent.probe(agent.status(), instrumented.pid, symbol)["state"] == "active",
             timeout=3.0, what="%s active after import" % symbol)
    same_results(instrumented, baseline, "late", 4)
    agent.wait_histogram_count("fixture:late:duration", 4)


def test_all_series_carry_dp_minus_one(agent, instrumented):
    instrumented.call("sync", n=2)
    instrumented.call("process", n=2, scale=2)
    agent.wait_histogram_count("fixture:sync:duration", 2)
    agent.wait_counter("fixture:process:calls", 2, kind="big")
    ours = [(n, l) for n, l, _ in agent.scrape().samples if n.startswith("vllm_profiling_")]
    assert ours
    bad = [(n, l) for n, l in ours if l.get("dp") != "-1"]
    assert not bad, "series without dp=\"-1\": %r" % bad[:5]
