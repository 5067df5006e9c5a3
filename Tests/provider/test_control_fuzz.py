"""The control-file reader: one rejection (ControlError) for every bad input, the last good
configuration kept at run time, and a short run of Tests/fuzz/fuzz_control.py."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, write_control
from test_provider import doc, mods, prov, timer_probe  # noqa: F401  (fixtures)

FUZZER = os.path.join(REPO, "Tests", "fuzz", "fuzz_control.py")
FINAL = re.compile(r"^fuzz_control: (\d+) inputs, (\d+) crashes \(\d+\.\d s\)$")


@pytest.fixture
def ctl(native):
    from msm_provider import control
    return control


def good(gen=5):
    return doc(gen, [timer_probe(0, "m:f"),
                     {"id": 1, "symbol": "m:g", "min_version": None, "max_version": "1.0",
                      "handler": None, "scope": "call", "metrics": [
                          {"name": "x", "type": "gauge", "expr": "x",
                           "labels": [{"name": "l", "expr": "'a'"}]}]}])


def test_parse_control_accepts_what_the_agent_writes(ctl):
    d = good()
    assert ctl.parse_control(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()) == d
    # unknown keys are ignored; null labels and scope mean none and "call"
    d["probes"][1]["metrics"][0]["labels"] = None
    d["probes"][1]["future_key"] = {"anything": [1, 2]}
    assert ctl.parse_control(json.dumps(d).encode()) == d
    # another abi: only abi/generation/enabled are checked (the provider does not apply it)
    assert ctl.parse_control(b'{"abi": 2, "generation": 1, "probes": "v2 format"}')["abi"] == 2


def _bad(mutate):
    d = good()
    mutate(d)
    return json.dumps(d).encode()


BAD = [
    (b"", "not valid JSON"),
    (b'{"generation": 1, "probes": [', "not valid JSON"),
    (b"[1, 2]", "top level is not an object"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b'{"generation": NaN}', "NaN is not JSON"),
    (b'{"generation": 1, "x": Infinity}', "Infinity is not JSON"),
    (b'{"generation": 1, "x": ' + b"[" * 100000 + b"]" * 100000 + b"}", "not valid JSON"),
    (b'{"generation": 1, "probes": [{"id": 0, "symbol": "m:\\ud800f"}]}', "lone surrogate"),
    (b'{"generation": 1, "probes": [{"id": 0, "symbol": "m:\xed\xa0\x80f"}]}', "not valid JSON"),
    (b'{"probes": []}', "has no 'generation'"),
    (_bad(lambda d: d.update(generation="5")), "generation must be an integer"),
    (_bad(lambda d: d.update(generation=True)), "generation must be an integer"),
    (_bad(lambda d: d.update(generation=-1)), "generation must be an integer"),
    (_bad(lambda d: d.update(generation=2 ** 64)), "generation must be an integer"),
    (_bad(lambda d: d.update(generation=[[[[1]]]])), "generation must be an integer"),
    (_bad(lambda d: d.update(abi="1")), "abi must be an integer"),
    (_bad(lambda d: d.update(enabled=1)), "enabled must be true or false"),
    (_bad(lambda d: d.update(agent_pid="x")), "agent_pid must be an integer"),
    (_bad(lambda d: d.update(probes={"0": {}})), "probes must be a list"),
    (_bad(lambda d: d.update(probes=None)), "probes must be a list"),
    (_bad(lambda d: d["probes"].append("probe")), "probes[2] is not an object"),
    (_bad(lambda d: d["probes"][0].pop("id")), "probes[0] has no 'id'"),
    (_bad(lambda d: d["probes"][0].update(id=1.0)), "probes[0].id must be a non-negative"),
    (_bad(lambda d: d["probes"][0].update(id=1)), "probes[1].id 1 is used by another probe"),
    (_bad(lambda d: d["probes"][0].update(symbol=["m:f"])), "probes[0].symbol must be a string"),
    (_bad(lambda d: d["probes"][1].update(min_version=9)), "probes[1].min_version must be a string or null"),
    (_bad(lambda d: d["probes"][1].update(handler={"m": "f"})), "probes[1].handler must be"),
    (_bad(lambda d: d["probes"][1].update(scope=1)), "probes[1].scope must be"),
    (_bad(lambda d: d["probes"][1].update(metrics="x")), "probes[1].metrics must be a list"),
    (_bad(lambda d: d["probes"][1]["metrics"].append(None)), "probes[1].metrics[1] is not an object"),
    (_bad(lambda d: d["probes"][1]["metrics"][0].update(name=5)), "probes[1].metrics[0].name must be"),
    (_bad(lambda d: d["probes"][1]["metrics"][0].pop("type")), "probes[1].metrics[0] has no 'type'"),
    (_bad(lambda d: d["probes"][1]["metrics"][0].update(expr=1)), "probes[1].metrics[0].expr must be"),
    (_bad(lambda d: d["probes"][1]["metrics"][0].update(labels={})), ".labels must be a list"),
    (_bad(lambda d: d["probes"][1]["metrics"][0]["labels"].append([])), ".labels[1] is not an object"),
    (_bad(lambda d: d["probes"][1]["metrics"][0]["labels"][0].update(expr=False)),
     ".labels[0].expr must be a string or null"),
    (b" " * (1 << 20), "too large"),
]


@pytest.mark.parametrize("data,words", BAD, ids=range(len(BAD)))
def test_every_bad_input_is_one_control_error(ctl, data, words):
    with pytest.raises(ctl.ControlError) as e:
        ctl.parse_control(data, "/x/control.json")
    assert words in str(e.value) and "/x/control.json" in str(e.value), str(e.value)
    assert len(str(e.value)) < 400


# ---------------------------------------------------------------- at run time

RUNTIME_BAD = [
    b'{"abi": 1, "generation": 2, "probes": "x"}',
    b'{"abi": 1, "generation": 2, "enabled": true, "probes": [{"id": 0}]}',
    b'{"abi": 1, "generation": 2, "probes": [{"id": 0, "symbol": "rt1:f", "metrics": [{"name": 1}]}]}',
    b'{"abi": 1, "generation": "2", "probes": []}',
    b'{"abi": 1, "generation": 2, "enabled": false, "probes": [' + b"[" * 50000,
    b'{"abi": 1, "generation": 2, "x": ' + b"[" * 100000 + b"]" * 100000 + b"}",
    b'{"abi": 1, "generation": 2, "probes": [{"id": 0, "symbol": "rt1:\\udc80"}]}',
    b"\x00" * 100,
]


@pytest.mark.parametrize("data", RUNTIME_BAD, ids=range(len(RUNTIME_BAD)))
def test_bad_control_file_keeps_the_last_good_configuration(prov, capture, mods, data):
    m = __import__(mods("rt1", "def f(x):\n    return x\n"))
    orig = m.f.__code__
    prov.sem[0] = 1
    path = write_control(prov.dir, doc(1, [timer_probe(0, "rt1:f")]))
    prov.poll_once()
    patched = m.f.__code__
    assert patched is not orig and prov.status()["probes"] == {0: ("active", "")}
    capture.clear()
    # a hostile rewrite (root in a container without a user namespace can do that)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)
    prov.poll_once()  # never raises
    prov.poll_once()
    st = prov.status()
    assert st["generation"] == 1 and st["instrumented"] and st["probes"] == {0: ("active", "")}
    assert m.f.__code__ is patched and m.f(7) == 7
    assert "refusing control file" in prov.logs[-1], prov.logs
    assert capture.messages("hello") == [] and capture.messages("ack") == []
    assert st["internal_errors"] == 0
    # the agent's next good file is applied as usual
    write_control(prov.dir, doc(3, [timer_probe(0, "rt1:f")], enabled=False))
    prov.poll_once()
    assert m.f.__code__ is orig and capture.messages("ack")[-1]["generation"] == 3


def test_apply_refuses_a_document_of_the_wrong_shape(prov, capture, mods):
    m = __import__(mods("rt2", "def f(x):\n    return x\n"))
    prov.sem[0] = 1
    assert prov.apply(doc(1, [timer_probe(0, "rt2:f")])) is True
    patched = m.f.__code__
    capture.clear()
    assert prov.apply({"generation": 2, "probes": [{"id": 0, "symbol": None}]}) is False
    assert prov.apply(["not", "a", "dict"]) is False
    assert m.f.__code__ is patched and prov.status()["generation"] == 1
    assert capture.raw == [] and "refusing control document" in prov.logs[-1]


# ---------------------------------------------------------------- the fuzzer

def test_fuzzer_short_run_finds_no_crash():
    r = subprocess.run([sys.executable, FUZZER, "--count", "3000", "--seed", "1"],
                       capture_output=True, text=True, timeout=300)
    last = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = FINAL.match(last)
    assert m and m.groups() == ("3000", "0"), last


def test_fuzzer_reports_a_crash_with_its_input(tmp_path):
    # a reader that raises something else than ControlError for one kind of input
    wrapper = tmp_path / "broken_reader.py"
    wrapper.write_text(
        "import runpy, sys\n"
        "sys.path.insert(0, %r)\n"
        "from msm_provider import control\n"
        "real = control.parse_control\n"
        "def parse_control(data, path='<c>'):\n"
        "    if data.count(b'[') > 40:\n"
        "        raise KeyError('deep')\n"
        "    return real(data, path)\n"
        "control.parse_control = parse_control\n"
        "sys.argv = [%r, '--count', '5000', '--seed', '7', '--no-apply']\n"
        "runpy.run_path(%r, run_name='__main__')\n" % (os.path.join(REPO, "provider"), FUZZER,
                                                       FUZZER))
    before = set(glob.glob("/tmp/fuzz_control-crash-7-*"))
    r = subprocess.run([sys.executable, str(wrapper)], capture_output=True, text=True,
                       timeout=300)
    created = set(glob.glob("/tmp/fuzz_control-crash-7-*")) - before
    try:
        assert r.returncode == 1, r.stdout + r.stderr
        lines = r.stdout.strip().splitlines()
        m = FINAL.match(lines[-1])
        assert m and m.group(2) == "1", lines
        assert "KeyError: 'deep'" in lines[-2]
        [saved] = [p for p in created if p.endswith(".bin")]
        assert saved in lines[-2]
        with open(saved, "rb") as f:
            assert f.read().count(b"[") > 40
    finally:
        for p in created:
            os.unlink(p)
