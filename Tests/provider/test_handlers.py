"""`handler: module:function` probes: the context a handler gets, ctx.record, errors counted."""

import sys

from conftest import write_control
from test_provider import doc, mods, prov  # noqa: F401  (fixtures)

OBSERVE_DURATION, OBSERVE, INC, SET = 1, 2, 3, 4

HANDLERS = """
    CALLS = []

    def keep(ctx):
        CALLS.append((ctx.args, ctx.kwargs, ctx.self, ctx.ret, ctx.exc, ctx.duration))
        ctx.record("tokens", [ctx.args[1], 2 * ctx.args[1]], {"phase": "prefill"})
        ctx.record("tokens", 7, {"phase": "decode"})
        ctx.record("calls", 1)
        ctx.record("last", ctx.args[1] * 10)

    def bad_record(ctx):
        ctx.record("undeclared", 1)
        ctx.record("tokens", 1, {"wrong": "x"})
        ctx.record("tokens", "many", {"phase": "p"})
        ctx.record("calls", 1)          # still recorded after the mistakes

    def raises(ctx):
        ctx.record("calls", 1)
        raise RuntimeError("handler bug")
"""

TARGET = """
    class Sched:
        def schedule(self, n, *extra, mode="a", **kw):
            if n < 0:
                raise ValueError("negative")
            return n * 2

    def plain(x):
        return x
"""

DECLARED = [
    {"name": "h:duration", "type": "timer", "expr": None, "labels": []},
    {"name": "tokens", "type": "histogram", "expr": None, "labels": [{"name": "phase", "expr": None}]},
    {"name": "calls", "type": "counter", "expr": None, "labels": []},
    {"name": "last", "type": "gauge", "expr": None, "labels": []},
]


def apply(prov, capture, probes):
    prov.sem[0] = 1
    write_control(prov.dir, doc(1, probes))
    prov.poll_once()
    return {x["probe"]: x for x in capture.messages("probe")}


def sids(capture):
    return {(x["metric"], tuple(sorted(x["labels"].items()))): x["id"] for x in capture.messages("series")}


def test_handler_gets_the_call_and_records_declared_metrics(prov, capture, mods):
    h = __import__(mods("hfuncs1", HANDLERS))
    t = __import__(mods("htgt1", TARGET))
    states = apply(prov, capture, [{"id": 0, "symbol": "htgt1:Sched.schedule",
                                    "handler": "hfuncs1:keep", "metrics": DECLARED}])
    assert states[0]["state"] == "active", states[0]
    # the handler's metrics are announced at their first record, the timer at apply
    assert [x["metric"] for x in capture.messages("series")] == ["h:duration"]
    timer_sid = capture.messages("series")[0]["id"]
    s = t.Sched()
    capture.clear()
    assert s.schedule(3, 9, mode="b", z=1) == 6
    [(args, kwargs, self_, ret, exc, dur)] = h.CALLS
    assert args == (s, 3, 9) and kwargs == {"mode": "b", "z": 1} and self_ is s
    assert ret == 6 and exc is None and 0 <= dur < 1
    ids = sids(capture)
    [(_, probe, status, _, vals)] = capture.samples()
    assert probe == 0 and status == 0
    assert vals == [
        (timer_sid, OBSERVE_DURATION, 0.0),
        (ids[("tokens", (("phase", "prefill"),))], OBSERVE, 3.0),
        (ids[("tokens", (("phase", "prefill"),))], OBSERVE, 6.0),
        (ids[("tokens", (("phase", "decode"),))], OBSERVE, 7.0),
        (ids[("calls", ())], INC, 1.0),
        (ids[("last", ())], SET, 30.0),
    ]
    assert capture.messages("expr_error") == []
    # a raising call: the handler sees exc, the caller gets the same exception
    capture.clear()
    try:
        s.schedule(-1)
    except ValueError as e:
        assert str(e) == "negative"
    else:
        raise AssertionError("the exception did not reach the caller")
    _, _, _, ret, exc, _ = h.CALLS[-1]
    assert ret is None and isinstance(exc, ValueError) and str(exc) == "negative"
    assert capture.samples()[0][2] == 1  # status: raised


def test_record_mistakes_and_a_raising_handler_are_counted(prov, capture, mods):
    __import__(mods("hfuncs2", HANDLERS))
    t = __import__(mods("htgt2", TARGET))
    states = apply(prov, capture, [
        {"id": 0, "symbol": "htgt2:Sched.schedule", "handler": "hfuncs2:bad_record", "metrics": DECLARED},
        {"id": 1, "symbol": "htgt2:plain", "handler": "hfuncs2:raises", "metrics": DECLARED[1:3]}])
    assert states[0]["state"] == states[1]["state"] == "active"
    capture.clear()
    assert t.Sched().schedule(1) == 2
    assert t.plain(5) == 5
    errors = {(e["probe"], e["metric"]): e for e in capture.messages("expr_error")}
    assert "not declared" in errors[(0, "handler hfuncs2:bad_record")]["message"]
    assert "takes labels [phase], got [wrong]" in errors[(0, "tokens")]["message"]
    assert "RuntimeError: handler bug" == errors[(1, "handler hfuncs2:raises")]["message"]
    ids = sids(capture)
    # what was recorded correctly is kept
    assert (ids[("calls", ())], INC, 1.0) in capture.samples(0)[0][4]
    assert capture.samples(1)[0][4] == [(ids[("calls", ())], INC, 1.0)]
    prov._expr_errors[(0, "tokens")][2] -= 2  # pretend a second passed: flushed with count 2
    prov.poll_once()
    assert [e["count"] for e in capture.messages("expr_error") if e["metric"] == "tokens"][-1] == 2


def test_handler_that_cannot_be_imported_is_an_error_state(prov, capture, mods):
    t = __import__(mods("htgt3", TARGET))
    __import__(mods("hfuncs3", HANDLERS))
    states = apply(prov, capture, [
        {"id": 0, "symbol": "htgt3:plain", "handler": "no_such_handler_pkg.mod:f", "metrics": DECLARED},
        {"id": 1, "symbol": "htgt3:Sched.schedule", "handler": "hfuncs3:missing", "metrics": DECLARED},
        {"id": 2, "symbol": "htgt3:Sched.schedule", "metrics": DECLARED[:1]}])
    assert states[0]["state"] == "error"
    assert states[0]["detail"].startswith(
        "handler no_such_handler_pkg.mod:f: cannot import module no_such_handler_pkg.mod "
        "(ModuleNotFoundError"), states[0]
    assert states[1]["state"] == "error"
    assert states[1]["detail"] == "handler hfuncs3:missing: hfuncs3 has no attribute missing"
    assert states[2]["state"] == "active"
    assert "no_such_handler_pkg" not in sys.modules
    assert t.plain(4) == 4 and t.Sched().schedule(2) == 4


def test_reference_tool_handler_is_not_imported_and_expr_metrics_still_work(prov, capture, mods):
    t = __import__(mods("htgt4", TARGET))
    states = apply(prov, capture, [
        {"id": 0, "symbol": "htgt4:plain", "handler": "ms_service_metric.handlers.sched:on_schedule",
         "metrics": [{"name": "t", "type": "timer", "expr": None, "labels": []},
                     {"name": "x", "type": "gauge", "expr": "x", "labels": []},
                     {"name": "by_handler", "type": "histogram", "expr": None,
                      "labels": [{"name": "phase", "expr": None}]}]},
        {"id": 1, "symbol": "htgt4:Sched.schedule", "handler": "ms_service_metric.handlers:h",
         "metrics": DECLARED[1:]}])
    for i in (0, 1):
        assert states[i]["state"] == "builtin_handler_unavailable"
        assert "Config/default.yaml" in states[i]["detail"] and "ms_service_metric.handlers" \
            in states[i]["detail"]
    assert not any(m == "ms_service_metric" or m.startswith("ms_service_metric.") for m in sys.modules)
    assert [x["metric"] for x in capture.messages("series")] == ["t", "x"]
    capture.clear()
    assert t.plain(4) == 4
    [(_, probe, _, _, vals)] = capture.samples()
    assert probe == 0 and [v[1:] for v in vals] == [(OBSERVE_DURATION, 0.0), (SET, 4.0)]
    assert t.Sched().schedule(1) == 2  # probe 1: nothing left to record, not patched
    assert len(capture.samples()) == 1


def test_record_after_the_handler_returned_is_counted(prov, capture, mods):
    h = __import__(mods("hfuncs5", """
        SAVED = []
        def save(ctx):
            SAVED.append(ctx)
    """))
    t = __import__(mods("htgt5", TARGET))
    apply(prov, capture, [{"id": 0, "symbol": "htgt5:plain", "handler": "hfuncs5:save",
                           "metrics": DECLARED[2:3]}])
    t.plain(1)
    h.SAVED[0].record("calls", 1)  # must not raise
    [e] = capture.messages("expr_error")
    assert "after the handler returned" in e["message"]
