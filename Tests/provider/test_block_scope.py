"""`scope: block` probes: the with-block of the context manager a function returns is timed
(docs/config.md, "Timing a with block")."""

import asyncio
import sys
import time
import traceback

from conftest import write_control
from test_provider import doc, mods, prov  # noqa: F401  (fixtures)

OBSERVE_DURATION, OBSERVE, INC, SET = 1, 2, 3, 4

TARGET = """
    import contextlib

    def section(name):
        return contextlib.nullcontext()

    def raw(name, obj):
        return obj

    def failing_factory(name):
        raise KeyError(name)

    class Suppress:
        def __init__(self):
            self.entered = 0
            self.exits = []
        def __enter__(self):
            self.entered += 1
            return "entered-value"
        def __exit__(self, typ, val, tb):
            self.exits.append(val)
            return "truthy-exit-result" if isinstance(val, ValueError) else None

    class ExitRaises:
        def __enter__(self):
            return self
        def __exit__(self, typ, val, tb):
            raise RuntimeError("exit failed")

    class EnterRaises:
        def __enter__(self):
            raise LookupError("no enter")
        def __exit__(self, *a):
            return None

    class SyncOnly:
        def __enter__(self):
            return 1
        def __exit__(self, *a):
            return None

    class AsyncOnly:
        async def __aenter__(self):
            return "aentered"
        async def __aexit__(self, typ, val, tb):
            return isinstance(val, KeyError)

    class Exotic:
        __enter__ = staticmethod(lambda: "static-enter")
        @classmethod
        def __exit__(cls, typ, val, tb):
            return cls is Exotic and val is None

    async def asection(name, obj):
        return obj

    def gen(name):
        yield contextlib.nullcontext()
"""


def timer_entry(pid, symbol, scope="block", labels=None, **kw):
    d = {"id": pid, "symbol": symbol, "scope": scope,
         "metrics": [{"name": "sec", "type": "timer", "expr": None, "labels": labels or []}]}
    d.update(kw)
    return d


def apply(prov, capture, probes, gen=1):
    prov.sem[0] = 1
    write_control(prov.dir, doc(gen, probes))
    prov.poll_once()
    return {x["probe"]: x for x in capture.messages("probe")}


def sids(capture):
    return {(x["metric"], tuple(sorted(x["labels"].items()))): x["id"] for x in capture.messages("series")}


def test_timer_only_counts_blocks_and_starts_at_enter(prov, capture, mods):
    t = __import__(mods("btgt1", TARGET))
    code = t.section.__code__
    states = apply(prov, capture, [timer_entry(0, "btgt1:section")])
    assert states[0]["state"] == "active", states[0]
    [series] = capture.messages("series")
    capture.clear()
    cm = t.section("a")
    assert capture.samples() == []  # the factory call alone records nothing
    time.sleep(0.01)
    t0 = time.monotonic_ns()
    with cm as got:
        assert got is None  # nullcontext's enter result
        assert capture.samples() == []
    [(_, probe, status, start, vals)] = capture.samples()
    assert probe == 0 and status == 0 and start >= t0  # the clock starts at __enter__
    assert vals == [(series["id"], OBSERVE_DURATION, 0.0)]
    for _ in range(4):
        with t.section("b"):
            pass
    assert len(capture.samples()) == 5
    # pre-bound references run the wrapper too; restore puts the original back
    prov.sem[0] = 0
    prov.poll_once()
    assert t.section.__code__ is code
    assert type(t.section("x")).__name__ == "nullcontext"


def test_labels_from_factory_parameters_exc_and_ret(prov, capture, mods):
    t = __import__(mods("btgt2", TARGET))
    entry = {"id": 0, "symbol": "btgt2:section", "scope": "block", "metrics": [
        {"name": "sec", "type": "timer", "expr": None, "labels": [
            {"name": "name", "expr": "name"},
            {"name": "role", "expr": "'worker' if name.startswith('gpu') else 'unknown'"},
            {"name": "exc", "expr": "f'{exc!r}'.split('(')[0] if exc is not None else 'none'"},
            {"name": "ret", "expr": "f'{ret!r}'.split(' ')[0]"}]},
        {"name": "dur", "type": "histogram", "expr": "duration", "labels": []}]}
    states = apply(prov, capture, [entry])
    assert states[0]["state"] == "active", states[0]
    dur_sid = sids(capture)[("dur", ())]
    capture.clear()
    with t.section("gpu: forward"):
        time.sleep(0.05)
    err = ValueError("inside")
    try:
        with t.section("sched: x"):
            raise err
    except ValueError as e:
        assert e is err
        # the traceback has no frame of the provider
        names = [f.name for f in traceback.extract_tb(e.__traceback__)]
        assert names == ["test_labels_from_factory_parameters_exc_and_ret"], names
    else:
        raise AssertionError("exception swallowed")
    ids = sids(capture)
    ok = ids[("sec", (("exc", "none"), ("name", "gpu: forward"), ("ret", "<contextlib.nullcontext"),
                      ("role", "worker")))]
    bad = ids[("sec", (("exc", "ValueError"), ("name", "sched: x"), ("ret", "<contextlib.nullcontext"),
                       ("role", "unknown")))]
    [s1, s2] = capture.samples()
    assert s1[2] == 0 and s1[4][0] == (ok, OBSERVE_DURATION, 0.0)
    assert s1[4][1][0] == dur_sid and 0.05 <= s1[4][1][2] < 1.0  # the block's duration
    assert s2[2] == 1 and s2[4][0] == (bad, OBSERVE_DURATION, 0.0)
    assert capture.messages("expr_error") == []


def test_enter_and_exit_results_and_suppression_kept(prov, capture, mods):
    t = __import__(mods("btgt3", TARGET))
    states = apply(prov, capture, [timer_entry(0, "btgt3:raw")])
    assert states[0]["state"] == "active"
    capture.clear()
    real = t.Suppress()
    proxy = t.raw("s", real)
    assert proxy is not real and proxy.entered == 0  # attribute reads are forwarded
    with proxy as v:
        assert v == "entered-value"
        raise ValueError("suppressed by the context manager")
    assert real.entered == 1 and isinstance(real.exits[0], ValueError)
    # the exit result object itself comes back (not just its truth value)
    p2 = t.raw("s", real)
    p2.__enter__()
    res = p2.__exit__(ValueError, ValueError("x"), None)
    assert res == "truthy-exit-result"
    p3 = t.raw("s", real)
    p3.__enter__()
    assert p3.__exit__(None, None, None) is None
    statuses = [s[2] for s in capture.samples()]
    assert statuses == [1, 1, 0]  # the block raised (even though suppressed), raised, ok
    # an exception the block raises and the cm does not suppress is the same object
    err = KeyError("k")
    try:
        with t.raw("s", t.Suppress()):
            raise err
    except KeyError as e:
        assert e is err


def test_exit_raising_and_enter_raising(prov, capture, mods):
    t = __import__(mods("btgt4", TARGET))
    entry = timer_entry(0, "btgt4:raw", labels=[
        {"name": "exc", "expr": "f'{exc!r}'.split('(')[0] if exc is not None else 'none'"}])
    apply(prov, capture, [entry])
    capture.clear()
    try:
        with t.raw("e", t.ExitRaises()):
            pass
    except RuntimeError as e:
        assert str(e) == "exit failed"
        assert [f.name for f in traceback.extract_tb(e.__traceback__)] == \
            ["test_exit_raising_and_enter_raising", "__exit__"]
    else:
        raise AssertionError("exit exception lost")
    [s] = capture.samples()
    assert s[2] == 1
    assert sids(capture)[("sec", (("exc", "RuntimeError"),))] == s[4][0][0]
    capture.clear()
    try:
        with t.raw("e", t.EnterRaises()):
            raise AssertionError("block must not run")
    except LookupError as e:
        assert [f.name for f in traceback.extract_tb(e.__traceback__)] == \
            ["test_exit_raising_and_enter_raising", "__enter__"]
    assert capture.samples() == []  # the block never ran: nothing recorded


def test_factory_raising_records_nothing(prov, capture, mods):
    t = __import__(mods("btgt5", TARGET))
    apply(prov, capture, [timer_entry(0, "btgt5:failing_factory")])
    capture.clear()
    try:
        t.failing_factory("n")
    except KeyError as e:
        assert e.args == ("n",)
        assert [f.name for f in traceback.extract_tb(e.__traceback__)] == \
            ["test_factory_raising_records_nothing", "failing_factory"]
    assert capture.samples() == [] and capture.messages("expr_error") == []


def test_not_a_context_manager_passes_through_and_is_counted(prov, capture, mods):
    t = __import__(mods("btgt6", TARGET))
    apply(prov, capture, [timer_entry(0, "btgt6:raw")])
    capture.clear()
    obj = object()
    assert t.raw("n", obj) is obj
    assert t.raw("n", 5) == 5
    try:
        with t.raw("n", 5):
            pass
    except TypeError:
        pass
    else:
        raise AssertionError("with on a non-context-manager must still fail")
    [err] = capture.messages("expr_error")  # rate-limited: first one sent
    assert err["probe"] == 0 and err["metric"] == "scope block"
    assert "returned object, not a context manager" in err["message"]
    assert prov._expr_errors[(0, "scope block")][0] == 3
    assert capture.samples() == []


def test_proxy_supports_what_the_real_object_supports(prov, capture, mods):
    t = __import__(mods("btgt7", TARGET))
    apply(prov, capture, [timer_entry(0, "btgt7:raw"), timer_entry(1, "btgt7:asection")])
    capture.clear()
    sync_only = t.raw("x", t.SyncOnly())
    async_only = t.raw("x", t.AsyncOnly())

    async def use_async_with(cm):
        async with cm as v:
            return v

    try:
        asyncio.run(use_async_with(sync_only))
    except TypeError:
        pass
    else:
        raise AssertionError("async with on a sync-only context manager must fail")
    try:
        with async_only:
            pass
    except TypeError:
        pass
    else:
        raise AssertionError("with on an async-only context manager must fail")
    assert capture.samples() == []
    assert asyncio.run(use_async_with(async_only)) == "aentered"
    assert len(capture.samples(0)) == 1

    # async factory returning an async context manager; __aexit__'s suppression kept
    async def main():
        async with await t.asection("a", t.AsyncOnly()) as v:
            assert v == "aentered"
            await asyncio.sleep(0.02)
        async with await t.asection("a", t.AsyncOnly()):
            raise KeyError("suppressed")
        return "done"
    t0 = time.monotonic_ns()
    assert asyncio.run(main()) == "done"
    s = capture.samples(1)
    assert [x[2] for x in s] == [0, 1] and s[0][3] >= t0
    # nullcontext supports both protocols: so does its proxy
    with t.raw("n", t.contextlib.nullcontext(7)) as v:
        assert v == 7
    assert asyncio.run(use_async_with(t.raw("n", t.contextlib.nullcontext(8)))) == 8


def test_exotic_special_methods_are_bound_like_the_with_statement(prov, capture, mods):
    t = __import__(mods("btgt8", TARGET))
    apply(prov, capture, [timer_entry(0, "btgt8:raw")])
    capture.clear()
    with t.raw("x", t.Exotic()) as v:
        assert v == "static-enter"
    p = t.raw("x", t.Exotic())
    p.__enter__()
    assert p.__exit__(None, None, None) is True  # classmethod bound to the class
    assert len(capture.samples()) == 2


def test_nested_reuse_of_one_context_manager(prov, capture, mods):
    t = __import__(mods("btgt9", TARGET))
    apply(prov, capture, [timer_entry(0, "btgt9:section")])
    capture.clear()
    cm = t.section("n")
    with cm:
        t_inner = time.monotonic_ns()
        with cm:
            pass
    with cm:
        pass
    starts = [s[3] for s in capture.samples()]
    assert len(starts) == 3
    inner, outer, again = starts
    assert outer < t_inner <= inner <= again


def test_block_scope_with_handler_sees_block_duration(prov, capture, mods):
    h = __import__(mods("bhfuncs", """
        CALLS = []
        def on_block(ctx):
            CALLS.append((ctx.args, ctx.ret, ctx.exc, ctx.duration))
            ctx.record("blocks", 1, {"name": ctx.args[0]})
    """))
    t = __import__(mods("btgt10", TARGET))
    entry = {"id": 0, "symbol": "btgt10:section", "scope": "block", "handler": "bhfuncs:on_block",
             "metrics": [{"name": "sec", "type": "timer", "expr": None, "labels": []},
                         {"name": "blocks", "type": "counter", "expr": None,
                          "labels": [{"name": "name", "expr": None}]}]}
    states = apply(prov, capture, [entry])
    assert states[0]["state"] == "active", states[0]
    capture.clear()
    cm = t.section("h")
    time.sleep(0.05)  # between the factory and the block: not counted
    entered = time.monotonic()
    with cm:
        time.sleep(0.02)
    exited = time.monotonic()
    [(args, ret, exc, dur)] = h.CALLS
    assert args == ("h",) and type(ret).__name__ == "nullcontext" and exc is None
    # Within the block's own span (a duration from the factory call would be >= 0.05 s
    # longer), whatever the machine's load did to the sleeps.
    assert 0.02 <= dur <= exited - entered + 1e-6, (dur, exited - entered)
    [s] = capture.samples()
    assert len(s[4]) == 2 and s[4][1][1] == INC


def test_scope_errors(prov, capture, mods):
    t = __import__(mods("btgt11", TARGET))
    code = t.gen.__code__
    states = apply(prov, capture, [timer_entry(0, "btgt11:gen"),
                                   timer_entry(1, "btgt11:section", scope="sideways"),
                                   timer_entry(2, "btgt11:raw", scope="call")])
    assert states[0]["state"] == "error" and "generator" in states[0]["detail"], states[0]
    assert t.gen.__code__ is code
    assert states[1]["state"] == "error" and "unknown scope 'sideways'" in states[1]["detail"]
    assert states[2]["state"] == "active"
    capture.clear()
    obj = t.Suppress()
    assert t.raw("c", obj) is obj  # call scope: return value untouched, the call is timed
    assert len(capture.samples()) == 1


def test_absent_scope_is_call_scope(prov, capture, mods):
    t = __import__(mods("btgt12", TARGET))
    entry = timer_entry(0, "btgt12:section")
    del entry["scope"]
    apply(prov, capture, [entry])
    capture.clear()
    cm = t.section("x")
    assert type(cm).__name__ == "nullcontext"
    assert len(capture.samples()) == 1
    assert sys.modules["btgt12"] is t


def test_uncached_types_go_through_wrap(prov, capture, mods, monkeypatch):
    import msm_provider.blocks as blocks
    monkeypatch.setattr(blocks, "TYPE_CACHE_MAX", 0)  # nothing cached: every proxy made by wrap()
    t = __import__(mods("btgt13", TARGET))
    apply(prov, capture, [timer_entry(0, "btgt13:raw")])
    capture.clear()
    for _ in range(3):
        with t.raw("u", t.Suppress()) as v:
            assert v == "entered-value"
        assert t.raw("u", 1) == 1
    assert len(capture.samples()) == 3
    assert prov._expr_errors[(0, "scope block")][0] == 3
