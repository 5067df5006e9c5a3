"""Provider behaviour: dormancy, control file, messages, probes, dead-man switch."""

import os
import sys
import textwrap
import time

import pytest

from conftest import write_control, decode


@pytest.fixture
def mods(native, tmp_path, monkeypatch):
    """A directory on sys.path for throw-away target modules."""
    d = tmp_path / "mods"
    d.mkdir()
    monkeypatch.syspath_prepend(str(d))
    created = []

    def make(name, src):
        (d / (name + ".py")).write_text(textwrap.dedent(src))
        created.append(name)
        return name
    yield make
    for n in created:
        sys.modules.pop(n, None)


@pytest.fixture
def prov(native, control_dir, monkeypatch):
    from msm_provider import Provider, control
    if os.getuid() != 0:
        monkeypatch.setattr(control, "TRUSTED_UID", os.getuid())
    sem = [0]
    logs = []
    p = Provider(native=native, control_path=os.path.join(str(control_dir), "control.json"),
                 semaphore=lambda: sem[0], vllm_version="0.9.2", log=logs.append)
    p.sem = sem
    p.logs = logs
    p.dir = control_dir
    yield p
    p.stop()


def doc(gen, probes, enabled=True):
    return {"abi": 1, "generation": gen, "enabled": enabled, "agent_pid": 1, "probes": probes}


def timer_probe(pid, symbol, name="t:duration", **kw):
    d = {"id": pid, "symbol": symbol, "metrics": [{"name": name, "type": "timer", "labels": []}]}
    d.update(kw)
    return d


def test_dormant_until_semaphore(prov, capture, mods):
    m = __import__(mods("tgt1", "def f(x):\n    return x\n"))
    code = m.f.__code__
    write_control(prov.dir, doc(1, [timer_probe(0, "tgt1:f")]))
    prov.poll_once()
    assert capture.raw == [] and m.f.__code__ is code
    prov.sem[0] = 2  # any non-zero value means attached (gold moves it by 2)
    prov.poll_once()
    types_ = [x["type"] for x in capture.messages()]
    assert types_[0] == "hello" and types_[-1] == "ack"
    hello = capture.messages("hello")[0]
    assert hello["pid"] == os.getpid() and hello["abi"] == 1 and hello["vllm_version"] == "0.9.2"
    for k in ("python", "implementation", "executable", "argv", "title", "provider_version"):
        assert k in hello
    [series] = capture.messages("series")
    assert series == {"type": "series", "id": series["id"], "metric": "t:duration", "labels": {}}
    assert capture.messages("probe") == [{"type": "probe", "probe": 0, "state": "active", "detail": ""}]
    assert capture.messages("ack")[0] == {"type": "ack", "generation": 1, "enabled": True,
                                          "instrumented": 1}
    # series before probe states before ack, all after hello
    assert types_.index("series") < types_.index("probe") < types_.index("ack")
    capture.clear()
    t0 = time.monotonic_ns()
    assert m.f(5) == 5
    [(_, probe, status, start, vals)] = capture.samples()
    assert probe == 0 and status == 0 and start >= t0 and vals == [(series["id"], 1, 0.0)]
    # same generation again: not re-applied
    capture.clear()
    prov.poll_once()
    assert capture.messages() == []
    # dead-man switch: semaphore drops -> restored, nothing sent
    prov.sem[0] = 0
    prov.poll_once()
    assert m.f.__code__ is code and capture.raw == []
    m.f(1)
    assert capture.raw == []
    # re-attach: the same generation is applied again (new agent session)
    prov.sem[0] = 1
    prov.poll_once()
    assert capture.messages("ack") and m.f.__code__ is not code


def test_disable_restores_acks_and_byes(prov, capture, mods):
    m = __import__(mods("tgt2", "def f():\n    return 1\n"))
    code = m.f.__code__
    prov.sem[0] = 1
    write_control(prov.dir, doc(1, [timer_probe(0, "tgt2:f")]))
    prov.poll_once()
    assert m.f.__code__ is not code
    capture.clear()
    write_control(prov.dir, doc(2, [timer_probe(0, "tgt2:f")], enabled=False))
    prov.poll_once()
    assert m.f.__code__ is code
    assert [x["type"] for x in capture.messages()] == ["hello", "ack", "bye"]
    assert capture.messages("ack")[0] == {"type": "ack", "generation": 2, "enabled": False,
                                          "instrumented": 0}


def test_untrusted_control_file_refused(prov, capture, mods):
    m = __import__(mods("tgt3", "def f():\n    return 1\n"))
    code = m.f.__code__
    prov.sem[0] = 1
    path = write_control(prov.dir, doc(1, [timer_probe(0, "tgt3:f")]))
    os.chmod(path, 0o666)
    prov.poll_once()
    prov.poll_once()
    assert m.f.__code__ is code and capture.raw == []
    assert len(prov.logs) == 1 and "writable" in prov.logs[0]
    os.chmod(path, 0o644)
    os.chmod(str(prov.dir), 0o777)
    prov._control_sig = None
    prov.poll_once()
    assert m.f.__code__ is code and "directory" in prov.logs[-1]
    os.chmod(str(prov.dir), 0o755)
    # symlink to a good file
    real = write_control(prov.dir, doc(1, [timer_probe(0, "tgt3:f")]))
    os.rename(real, real + ".real")
    os.symlink(real + ".real", real)
    prov._control_sig = None
    prov.poll_once()
    assert m.f.__code__ is code and "symlink" in prov.logs[-1]
    os.unlink(real)
    if os.getuid() == 0:
        write_control(prov.dir, doc(1, [timer_probe(0, "tgt3:f")]))
        os.chown(real, 1000, 1000)
        prov._control_sig = None
        prov.poll_once()
        assert m.f.__code__ is code and "owned by uid 1000" in prov.logs[-1]
        os.chown(real, 0, 0)
    with open(real, "w") as f:
        f.write(" " * (1 << 20))
    prov._control_sig = None
    prov.poll_once()
    assert m.f.__code__ is code and "too large" in prov.logs[-1]


def test_expressions_labels_and_errors(prov, capture, mods):
    m = __import__(mods("tgt4", """
        class Sched:
            def __init__(self):
                self.running = [1, 2, 3]
            def schedule(self, budget, *, phase="decode"):
                return {"n": budget, "items": [1.5, 2.5]}
    """))
    probes = [{"id": 3, "symbol": "tgt4:Sched.schedule", "metrics": [
        {"name": "sched:duration", "type": "timer", "labels": [{"name": "phase", "expr": "phase"}]},
        {"name": "sched:batch", "type": "histogram", "expr": "len(self.running)", "labels": []},
        {"name": "sched:items", "type": "histogram", "expr": "ret['items']", "labels": []},
        {"name": "sched:calls", "type": "counter", "labels": []},
        {"name": "sched:budget", "type": "gauge", "expr": "budget * 2 if duration >= 0 else 0",
         "labels": []},
        {"name": "sched:bad", "type": "gauge", "expr": "ret['missing']", "labels": []},
    ]}]
    prov.sem[0] = 1
    write_control(prov.dir, doc(1, probes))
    prov.poll_once()
    assert capture.messages("probe")[0]["state"] == "active"
    s = m.Sched()
    sid_by_name = {x["metric"]: x["id"] for x in capture.messages("series")}
    capture.clear()
    s.schedule(4, phase="prefill")
    [lab] = capture.messages("series")  # labelled series announced before first use
    assert lab["metric"] == "sched:duration" and lab["labels"] == {"phase": "prefill"}
    assert capture.decoded()[0][0] == "json"
    [(_, probe, status, start, vals)] = capture.samples()
    assert probe == 3 and status == 0
    assert vals[0] == (lab["id"], 1, 0.0)  # timers first
    assert (sid_by_name["sched:batch"], 2, 3.0) in vals
    assert (sid_by_name["sched:items"], 2, 1.5) in vals and (sid_by_name["sched:items"], 2, 2.5) in vals
    assert (sid_by_name["sched:calls"], 3, 1.0) in vals
    assert (sid_by_name["sched:budget"], 4, 8.0) in vals
    errs = capture.messages("expr_error")
    assert errs == [{"type": "expr_error", "probe": 3, "metric": "sched:bad", "count": 1,
                     "message": "KeyError: 'missing'"}]
    # errors are rate limited, counted, flushed later by the poll loop
    capture.clear()
    for _ in range(5):
        assert s.schedule(1) == {"n": 1, "items": [1.5, 2.5]}
    assert capture.messages("expr_error") == []
    prov._expr_errors[(3, "sched:bad")][2] -= 2  # pretend a second passed
    prov.poll_once()
    [e] = capture.messages("expr_error")
    assert e["count"] == 6


def test_rejected_expression_is_error_state(prov, capture, mods):
    __import__(mods("tgt5", "def f(x):\n    return x\n"))
    bad = [("__import__('os')", "not allowed"), ("x.__class__", "dunder"),
           ("(lambda: 1)()", "not allowed"), ("y + 1", "unknown name"), ("open('f')", "not allowed")]
    probes = [{"id": i, "symbol": "tgt5:f", "metrics": [
        {"name": "g%d" % i, "type": "gauge", "expr": e, "labels": []}]} for i, (e, _) in enumerate(bad)]
    probes.append(timer_probe(99, "tgt5:f"))
    prov.sem[0] = 1
    write_control(prov.dir, doc(1, probes))
    prov.poll_once()
    states = {x["probe"]: x for x in capture.messages("probe")}
    for i, (_, word) in enumerate(bad):
        assert states[i]["state"] == "error" and word in states[i]["detail"], states[i]
    assert states[99]["state"] == "active"


def test_module_imported_later(prov, capture, mods):
    mods("late1", """
        class C:
            def m(self):
                return "m"
        def g():
            return "g"
        bound = C().m      # captured at import time, before instrumentation
    """)
    sys.modules.pop("late1", None)
    prov.sem[0] = 1
    write_control(prov.dir, doc(1, [timer_probe(0, "late1:C.m"), timer_probe(1, "late1:g"),
                                    timer_probe(2, "late1:nope"),
                                    timer_probe(3, "not_installed_pkg_xyz.mod:f")]))
    prov.poll_once()
    st = {x["probe"]: x for x in capture.messages("probe")}
    assert st[0]["state"] == "not_found" and "not imported" in st[0]["detail"]
    assert st[3]["state"] == "not_present"
    hook = prov._import_hook
    assert hook in sys.meta_path
    capture.clear()
    import late1
    st = {x["probe"]: x for x in capture.messages("probe")}
    assert st[0]["state"] == "active" and st[1]["state"] == "active"
    assert st[2]["state"] == "not_found" and "nope" in st[2]["detail"]
    assert late1.bound() == "m" and late1.g() == "g"
    assert sorted(s[1] for s in capture.samples()) == [0, 1]
    assert late1.__loader__.__dict__.get("exec_module") is None  # loader left clean
    prov.sem[0] = 0
    prov.poll_once()
    assert hook not in sys.meta_path


def test_version_guards(prov, capture, mods):
    __import__(mods("tgt6", "def f():\n    return 1\n"))
    prov.sem[0] = 1
    write_control(prov.dir, doc(1, [
        timer_probe(0, "tgt6:f", min_version="0.9.1", max_version="0.9.2"),
        timer_probe(1, "tgt6:f", min_version="0.10.0"),
        timer_probe(2, "tgt6:f", max_version="0.9.1"),
        timer_probe(3, "tgt6:f", min_version="0.9.2+cpu", max_version=None)]))
    prov.poll_once()
    st = {x["probe"]: x["state"] for x in capture.messages("probe")}
    assert st == {0: "active", 1: "version_excluded", 2: "version_excluded", 3: "active"}
    from msm_provider.control import version_in_range, parse_version
    assert parse_version("0.32.0+cpu") == (0, 32, 0) and parse_version("0.9.1rc1") == (0, 9, 1)
    assert version_in_range(None, "1.0", "2.0")  # vLLM not installed: guards ignored
    assert version_in_range("0.10", "0.9.1", None) and not version_in_range("0.9", "0.9.1", None)


def test_fork_child_resends_hello(prov, capture, mods):
    m = __import__(mods("tgt7", "def f():\n    return 1\n"))
    prov.sem[0] = 1
    write_control(prov.dir, doc(1, [timer_probe(0, "tgt7:f")]))
    prov.poll_once()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            capture.clear()
            prov.after_fork_child()
            prov.poll_once()
            m.f()
            out = repr([(d[0], d[1]["type"] if d[0] == "json" else d[1],
                         d[1].get("pid") if d[0] == "json" else None) for d in capture.decoded()])
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        data += b
    os.waitpid(pid, 0)
    got = eval(data.decode())
    assert got[0] == ("json", "hello", pid)
    assert ("json", "ack", None) in got and ("sample", 0, None) in got


def test_provider_failure_never_reaches_target(prov, capture, mods, monkeypatch):
    m = __import__(mods("tgt8", "def f(x):\n    return x + 1\n"))
    prov.sem[0] = 1
    write_control(prov.dir, doc(1, [{"id": 0, "symbol": "tgt8:f", "metrics": [
        {"name": "v", "type": "histogram", "expr": "x", "labels": [{"name": "l", "expr": "1/0"}]}]}]))
    prov.poll_once()
    assert m.f(1) == 2
    # the native sample call itself failing is swallowed too
    import msm_provider.provider as pv
    hook = [c for c in m.f.__code__.co_consts if getattr(c, "__name__", "") == "finish"][0]
    monkeypatch.setattr(hook.__self__, "sample", lambda *a: 1 / 0)
    write_control(prov.dir, doc(2, [{"id": 0, "symbol": "tgt8:f", "metrics": [
        {"name": "v", "type": "histogram", "expr": "x", "labels": []}]}]))
    prov.poll_once()
    hook = [c for c in m.f.__code__.co_consts if getattr(c, "__name__", "") == "finish"][0]
    hook.__self__.sample = lambda *a: 1 / 0
    assert m.f(1) == 2
    assert prov.status()["internal_errors"] >= 1
    assert pv  # module imported


def test_cardinality_cap(prov, capture, mods, monkeypatch):
    import msm_provider.provider as pv
    monkeypatch.setattr(pv, "SERIES_PER_METRIC_MAX", 3)
    m = __import__(mods("tgt9", "def f(x):\n    return x\n"))
    prov.sem[0] = 1
    write_control(prov.dir, doc(1, [{"id": 0, "symbol": "tgt9:f", "metrics": [
        {"name": "c", "type": "counter", "labels": [{"name": "x", "expr": "x"}]}]}]))
    prov.poll_once()
    for i in range(10):
        m.f(i)
    assert len(capture.messages("series")) == 3
    assert "cardinality" in capture.messages("expr_error")[0]["message"]
