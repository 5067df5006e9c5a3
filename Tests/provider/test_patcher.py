"""Code-object patching: identity, signature, semantics, restore."""

import asyncio
import functools
import inspect
import sys
import threading
import traceback
import types

import pytest


@pytest.fixture
def patcher(native):
    from msm_provider import patcher
    return patcher


class Recorder:
    def __init__(self):
        self.calls = []

    def finish(self, t, status, ret, exc, args):
        self.calls.append((status, exc if status else ret, args))


def timer_patch(patcher, native, func, pid=1, sid=2):
    p = patcher.CodePatch(func, "timer", dict(NOW=native.now_ns, TIMER=native.timer, PID=pid, SID=sid))
    p.apply()
    return p


def full_patch(patcher, native, func):
    rec = Recorder()
    p = patcher.CodePatch(func, "full", dict(NOW=native.now_ns, PID=1, FINISH=rec.finish))
    p.apply()
    return p, rec


def sig_snapshot(f):
    return (inspect.signature(f), inspect.iscoroutinefunction(f), inspect.isgeneratorfunction(f),
            inspect.isasyncgenfunction(f), f.__name__, f.__qualname__, f.__defaults__,
            f.__kwdefaults__, f.__annotations__, hasattr(f, "__wrapped__"), f.__module__,
            f.__code__.co_filename, f.__code__.co_firstlineno, f.__code__.co_name)


def f_all(a, b: int = 2, /, c=3, *args, d, e=5, **kw) -> tuple:
    return (a, b, c, args, d, e, kw)


def test_signature_identity_and_restore(patcher, native, capture):
    before = sig_snapshot(f_all)
    code = f_all.__code__
    ref = f_all  # bound before
    p = timer_patch(patcher, native, f_all)
    assert f_all.__code__ is not code
    assert sig_snapshot(f_all) == before
    assert ref(1, d=4) == (1, 2, 3, (), 4, 5, {})
    assert f_all(1, 9, 8, 7, d=1, z=2) == (1, 9, 8, (7,), 1, 5, {"z": 2})
    assert f_all(1, b=7, d=3) == (1, 2, 3, (), 3, 5, {"b": 7})  # positional-only stays so
    with pytest.raises(TypeError):
        f_all(1)  # missing keyword-only d: same error as before
    assert len(capture.samples()) == 3
    assert p.restore()
    assert f_all.__code__ is code
    capture.clear()
    f_all(1, d=1)
    assert capture.samples() == []


def test_full_mode_args_tuple(patcher, native):
    p, rec = full_patch(patcher, native, f_all)
    try:
        f_all(1, 9, 8, 7, d=1, z=2)
    finally:
        p.restore()
    status, value, args = rec.calls[0]
    assert status == 0 and args == (1, 9, 8, (7,), 1, 5, {"z": 2})
    assert patcher.parameter_names(f_all.__code__) == ["a", "b", "c", "args", "d", "e", "kw"]


def raiser(x):
    raise ValueError(x)


def test_exception_same_object_and_traceback(patcher, native, capture):
    def frames(fn):
        try:
            fn(1)
        except ValueError as e:
            return e, [f.name for f in traceback.extract_tb(e.__traceback__)]
    _, plain = frames(raiser)
    p = timer_patch(patcher, native, raiser)
    try:
        e, patched = frames(raiser)
    finally:
        p.restore()
    if sys.version_info >= (3, 11):
        assert patched == plain
    else:  # 3.10: the wrapper frame (same name, def line) shows once more
        assert patched[0] == plain[0] and patched[-1] == plain[-1]
    [(_, _, status, _, _)] = capture.samples()
    assert status == 1
    sentinel = KeyError("x")

    def raise_obj():
        raise sentinel
    p = timer_patch(patcher, native, raise_obj)
    try:
        with pytest.raises(KeyError) as ei:
            raise_obj()
        assert ei.value is sentinel
    finally:
        p.restore()


class Base:
    def who(self):
        return "base"


class Widget(Base):
    tag = "w"

    def __init__(self):
        self.step_fn = self.step  # bound before instrumentation

    def step(self, n):
        return n + 1

    @classmethod
    def make(cls, x):
        return (cls.tag, x)

    @staticmethod
    def util(x, y=1):
        return x * y

    def who(self):
        return "widget+" + super().who()  # __class__ cell

    class Inner:
        def deep(self):
            return "deep"


def test_methods_prebound_and_super(patcher, native, capture):
    w = Widget()
    ps = [timer_patch(patcher, native, Widget.step, pid=1),
          timer_patch(patcher, native, Widget.__dict__["make"].__func__, pid=2),
          timer_patch(patcher, native, Widget.__dict__["util"].__func__, pid=3),
          timer_patch(patcher, native, Widget.who, pid=4),
          timer_patch(patcher, native, Widget.Inner.deep, pid=5)]
    try:
        assert w.step_fn(1) == 2  # pre-bound bound method measured
        assert Widget.make(3) == ("w", 3)
        assert Widget.util(3, y=2) == 6 and w.util(4) == 4
        assert w.who() == "widget+base"
        assert Widget.Inner().deep() == "deep"
        assert isinstance(Widget.__dict__["make"], classmethod)
    finally:
        for p in reversed(ps):
            assert p.restore()
    assert sorted(s[1] for s in capture.samples()) == [1, 2, 3, 3, 4, 5]


def make_closure():
    counter = [0]
    scale = 10

    def inner(x):
        counter[0] += 1
        return x * scale + counter[0]
    return inner


def test_closure_freevars(patcher, native, capture):
    f = make_closure()
    p = timer_patch(patcher, native, f)
    try:
        assert f(1) == 11 and f(1) == 12
    finally:
        p.restore()
    assert f(1) == 13
    assert len(capture.samples()) == 2


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def test_recursion_each_level_timed(patcher, native, capture):
    p = timer_patch(patcher, native, fib)
    try:
        assert fib(10) == 55
    finally:
        p.restore()
    assert len(capture.samples()) == 177  # calls of fib(10)


def test_threads(patcher, native, capture):
    import time

    def work(x):
        time.sleep(0.001)
        return x
    p = timer_patch(patcher, native, work)
    out = []
    try:
        ts = [threading.Thread(target=lambda i=i: out.append(sum(work(i) for _ in range(20))))
              for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        p.restore()
    assert sorted(out) == [i * 20 for i in range(8)]
    assert len(capture.samples()) == 160


def gen(n):
    got = []
    try:
        for i in range(n):
            x = yield i
            got.append(x)
    except KeyError as e:
        yield ("caught", e.args[0])
    finally:
        got.append("fin")
    return got


def test_generator_semantics(patcher, native, capture):
    def drive():
        g = gen(3)
        r = [next(g), g.send("a"), g.send("b")]
        try:
            g.send("c")
        except StopIteration as e:
            r.append(e.value)
        g2 = gen(5)
        next(g2)
        r.append(g2.throw(KeyError("k")))
        g2.close()
        g3 = gen(5)
        next(g3)
        g3.close()
        r.append(inspect.getgeneratorstate(g3))
        g4 = gen(5)  # never started: no sample
        del g4
        return r
    expected = drive()
    p = timer_patch(patcher, native, gen)
    try:
        assert inspect.isgeneratorfunction(gen)
        assert drive() == expected
    finally:
        p.restore()
    assert [s[2] for s in capture.samples()] == [0, 0, 0]


async def co(x, fail=False):
    await asyncio.sleep(0)
    if fail:
        raise RuntimeError("no")
    return x * 2


async def agen(n):
    try:
        for i in range(n):
            v = yield i
            if v is not None:
                yield ("sent", v)
    except KeyError:
        yield "caught"


def test_coroutine_and_async_generator(patcher, native, capture):
    async def drive():
        r = [await co(2)]
        try:
            await co(1, fail=True)
        except RuntimeError as e:
            r.append(str(e))
        r.append(await asyncio.gather(co(1), co(2), co(3)))  # interleaved
        r.append([v async for v in agen(3)])
        g = agen(5)
        r.append(await g.__anext__())
        r.append(await g.asend("x"))
        r.append(await g.athrow(KeyError()))
        await g.aclose()
        g2 = agen(2)
        r.append(await g2.asend(None))
        await g2.aclose()
        return r
    expected = asyncio.run(drive())
    p1 = timer_patch(patcher, native, co, pid=1)
    p2 = timer_patch(patcher, native, agen, pid=2)
    try:
        assert inspect.iscoroutinefunction(co) and inspect.isasyncgenfunction(agen)
        assert asyncio.run(drive()) == expected
    finally:
        p1.restore()
        p2.restore()
    st = [(s[1], s[2]) for s in capture.samples()]
    assert sorted(st) == [(1, 0)] * 4 + [(1, 1)] + [(2, 0)] * 3


def test_attribute_patch_builtin(patcher, native, capture):
    mod = types.ModuleType("m")
    mod.length = len
    p = patcher.AttributePatch(mod, "length", len, "timer",
                               dict(NOW=native.now_ns, TIMER=native.timer, PID=1, SID=1))
    p.apply()
    assert mod.length([1, 2]) == 2 and mod.length is not len
    assert p.restore() and mod.length is len
    assert len(capture.samples()) == 1

    class K:
        f = staticmethod(abs)
    p = patcher.AttributePatch(K, "f", abs, "timer",
                               dict(NOW=native.now_ns, TIMER=native.timer, PID=1, SID=1),
                               wrap_static=True)
    p.apply()
    assert K().f(-3) == 3
    p.restore()


def test_restore_does_not_clobber_foreign_code(patcher, native):
    def f():
        return 1
    p = timer_patch(patcher, native, f)
    other = (lambda: 2).__code__
    f.__code__ = other
    assert p.restore() is False
    assert f.__code__ is other


def test_double_patch_nests(patcher, native, capture):
    def f(x):
        return x
    code = f.__code__
    p1 = timer_patch(patcher, native, f, pid=1)
    p2 = timer_patch(patcher, native, f, pid=2)
    assert f(3) == 3
    assert p2.restore() and p1.restore()
    assert f.__code__ is code
    assert sorted(s[1] for s in capture.samples()) == [1, 2]


def test_wraps_decorated_function(patcher, native, capture):
    def deco(fn):
        @functools.wraps(fn)
        def w(*a, **k):
            return fn(*a, **k)
        return w

    @deco
    def target(x):
        return x + 1
    p = timer_patch(patcher, native, target)
    try:
        assert target(1) == 2 and target.__wrapped__(1) == 2
        assert inspect.signature(target) == inspect.signature(target.__wrapped__)
    finally:
        p.restore()


def test_parameter_name_collisions(patcher, native, capture):
    def f(_msm_t, K_ORIG, SIG=1, *_L_, **CALL):
        return (_msm_t, K_ORIG, SIG, _L_, CALL)
    p = timer_patch(patcher, native, f)
    try:
        assert f(1, 2, 3, 4, x=5) == (1, 2, 3, (4,), {"x": 5})
    finally:
        p.restore()
