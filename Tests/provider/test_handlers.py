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


# ---------------------------------------------------------------- handler modules safe to import

import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")

SAFE_HANDLER = """
CALLS = []
def h(ctx):
    CALLS.append(ctx.ret)
    ctx.record("calls", 1)
"""


def _chain_is_trusted(path):
    """Every directory from / to ``path`` (resolved) root-owned, not group/other-writable."""
    path = os.path.realpath(path)
    while True:
        st = os.stat(path)
        if st.st_uid != 0 or st.st_mode & 0o022:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


@pytest.fixture
def trusted_dir(native, monkeypatch):
    """A fresh directory whose whole path is root-owned and not group/other-writable (not
    under /tmp or /var/tmp, which are 1777), put on sys.path; removed afterwards with every
    module imported from it."""
    base = None
    for cand in (os.environ.get("MSM_TEST_TRUSTED_DIR"), os.path.expanduser("~"), "/root",
                 "/var/lib", "/var/cache"):
        if cand and os.path.isdir(cand) and os.access(cand, os.W_OK) and _chain_is_trusted(cand):
            base = cand
            break
    if base is None:
        pytest.skip("no root-owned directory without group/other write permission is writable")
    d = tempfile.mkdtemp(prefix="msm-handler-test-", dir=base)
    os.chmod(d, 0o755)
    monkeypatch.syspath_prepend(d)
    before = set(sys.modules)
    yield d
    for name in set(sys.modules) - before:
        mod = sys.modules.get(name)
        if getattr(mod, "__file__", None) and mod.__file__.startswith(d + os.sep):
            del sys.modules[name]
    shutil.rmtree(d)


def _write(path, text, mode=0o644, uid=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    os.chown(path, uid, 0)
    return path


def _probe(prov, capture, handler, symbol):
    """Apply a new generation with one handler probe; its probe message."""
    prov.sem[0] = 1
    gen = getattr(prov, "test_generation", 0) + 1
    prov.test_generation = gen
    capture.clear()
    write_control(prov.dir, doc(gen, [{"id": 0, "symbol": symbol, "handler": handler,
                                       "metrics": DECLARED[2:3]}]))
    prov.poll_once()
    [msg] = capture.messages("probe")
    return msg


@root_only
def test_safe_handler_module_is_imported_and_called(prov, capture, mods, trusted_dir):
    t = __import__(mods("htgt6", TARGET))
    _write(os.path.join(trusted_dir, "msm_safe_h6.py"), SAFE_HANDLER)
    _write(os.path.join(trusted_dir, "msm_pkg6", "__init__.py"), "")
    _write(os.path.join(trusted_dir, "msm_pkg6", "sub", "__init__.py"), "")
    _write(os.path.join(trusted_dir, "msm_pkg6", "sub", "h.py"), SAFE_HANDLER)
    assert "msm_safe_h6" not in sys.modules
    st = _probe(prov, capture, "msm_safe_h6:h", "htgt6:plain")
    assert st["state"] == "active", st
    assert t.plain(3) == 3 and sys.modules["msm_safe_h6"].CALLS == [3]
    st = _probe(prov, capture, "msm_pkg6.sub.h:h", "htgt6:plain")  # dotted: packages checked too
    assert st["state"] == "active", st


@root_only
@pytest.mark.parametrize("uid,mode,words", [
    (65534, 0o644, "(owner uid 65534, mode 0644) is not owned by root"),
    (0, 0o664, "(owner root, mode 0664) is writable by group"),
    (0, 0o646, "(owner root, mode 0646) is writable by others"),
])
def test_handler_file_with_bad_owner_or_mode_is_refused(prov, capture, mods, trusted_dir,
                                                        uid, mode, words):
    t = __import__(mods("htgt7", TARGET))
    name = "msm_bad_h7_%o_%d" % (mode, uid)
    path = _write(os.path.join(trusted_dir, name + ".py"), SAFE_HANDLER + "IMPORTED = 1\n",
                  mode=mode, uid=uid)
    st = _probe(prov, capture, name + ":h", "htgt7:plain")
    assert st["state"] == "error"
    detail = st["detail"]
    assert detail.startswith("handler %s:h: refusing to import module %s: file %s %s"
                             % (name, name, path, words)), detail
    assert "chown root and chmod go-w it, or move the module" in detail
    assert name not in sys.modules  # never executed
    assert t.plain(1) == 1  # not instrumented, the target carries on


@root_only
def test_handler_module_in_an_unsafe_directory_is_refused(prov, capture, mods, trusted_dir):
    __import__(mods("htgt8", TARGET))
    sub = os.path.join(trusted_dir, "d")
    _write(os.path.join(sub, "msm_bad_h8a.py"), SAFE_HANDLER)
    os.chmod(sub, 0o777)
    sys.path.insert(0, sub)
    try:
        st = _probe(prov, capture, "msm_bad_h8a:h", "htgt8:plain")
        assert st["state"] == "error"
        assert "directory %s (owner root, mode 0777) is writable by group and others" % sub \
            in st["detail"], st
        os.chmod(sub, 0o755)
        os.chown(sub, 65534, 0)
        st = _probe(prov, capture, "msm_bad_h8a:h", "htgt8:plain")
        assert "directory %s (owner uid 65534, mode 0755) is not owned by root" % sub \
            in st["detail"], st
        assert "msm_bad_h8a" not in sys.modules
    finally:
        sys.path.remove(sub)


@root_only
def test_handler_module_under_tmp_is_refused_sticky_bit_or_not(prov, capture, mods, tmp_path,
                                                              monkeypatch):
    __import__(mods("htgt9", TARGET))
    d = tmp_path / "handlers"
    _write(str(d / "msm_bad_h9.py"), SAFE_HANDLER)
    os.chmod(str(d), 0o755)
    monkeypatch.syspath_prepend(str(d))
    st = _probe(prov, capture, "msm_bad_h9:h", "htgt9:plain")
    assert st["state"] == "error"
    tmp = tempfile.gettempdir()
    mode = os.stat(tmp).st_mode & 0o7777
    assert mode & 0o1002 == 0o1002, "expected a sticky world-writable %s" % tmp
    assert "directory %s (owner root, mode %04o) is writable by " % (tmp, mode) in st["detail"]
    assert "others (sticky bit or not)" in st["detail"], st
    assert "msm_bad_h9" not in sys.modules


@root_only
def test_unsafe_parent_package_is_refused_before_it_is_imported(prov, capture, mods,
                                                                trusted_dir):
    __import__(mods("htgt10", TARGET))
    init = _write(os.path.join(trusted_dir, "msm_pkg10", "__init__.py"), "RAN = 1\n", uid=65534)
    _write(os.path.join(trusted_dir, "msm_pkg10", "h.py"), SAFE_HANDLER)
    st = _probe(prov, capture, "msm_pkg10.h:h", "htgt10:plain")
    assert st["state"] == "error" and "file %s (owner uid 65534" % init in st["detail"], st
    assert "msm_pkg10" not in sys.modules and "msm_pkg10.h" not in sys.modules


@root_only
def test_symlink_to_an_unsafe_file_and_planted_bytecode_are_refused(prov, capture, mods,
                                                                   trusted_dir, tmp_path):
    __import__(mods("htgt11", TARGET))
    outside = _write(str(tmp_path / "real_h11.py"), SAFE_HANDLER)
    os.symlink(outside, os.path.join(trusted_dir, "msm_link_h11.py"))
    st = _probe(prov, capture, "msm_link_h11:h", "htgt11:plain")
    assert st["state"] == "error" and "sticky bit or not" in st["detail"], st
    assert "msm_link_h11" not in sys.modules
    # the module itself is fine, but its __pycache__ is writable: bytecode could be planted
    _write(os.path.join(trusted_dir, "msm_pyc_h11.py"), SAFE_HANDLER)
    cache = os.path.join(trusted_dir, "__pycache__")
    os.makedirs(cache, exist_ok=True)
    os.chmod(cache, 0o777)
    st = _probe(prov, capture, "msm_pyc_h11:h", "htgt11:plain")
    assert st["state"] == "error" and "directory %s (owner root, mode 0777)" % cache \
        in st["detail"], st


def test_already_imported_handler_module_is_not_checked(prov, capture, mods):
    # the module lives under /tmp (1777): fine, because the target imported it itself
    __import__(mods("hfuncs12", HANDLERS))
    __import__(mods("htgt12", TARGET))
    st = _probe(prov, capture, "hfuncs12:keep", "htgt12:plain")
    assert st["state"] == "active", st
