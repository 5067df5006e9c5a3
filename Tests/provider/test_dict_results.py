"""A value expression returning a dict: one sample per entry, labels per entry with `key`."""

import pytest

from conftest import write_control
from test_provider import doc, mods, prov  # noqa: F401  (fixtures)

OBSERVE, INC, SET = 2, 3, 4


def apply(prov, capture, probes):
    prov.sem[0] = 1
    write_control(prov.dir, doc(1, probes))
    prov.poll_once()
    return {x["probe"]: x for x in capture.messages("probe")}


def series_ids(capture):
    return {(x["metric"], tuple(sorted(x["labels"].items()))): x["id"] for x in capture.messages("series")}


def test_dict_gives_one_sample_per_entry_with_key_label(prov, capture, mods):
    m = __import__(mods("dtgt1", """
        def schedule(n1, n2, key=None):
            return [n1, n2]
    """))
    phase = [{"name": "req_phase", "expr": "key"}]
    states = apply(prov, capture, [{"id": 0, "symbol": "dtgt1:schedule", "metrics": [
        {"name": "h", "type": "histogram", "expr": "{'prefill': n1, 'decode': n2, 'none': None}",
         "labels": phase},
        {"name": "c", "type": "counter", "expr": "{'prefill': n1, 'decode': n2}", "labels": phase},
        {"name": "g", "type": "gauge", "expr": "{'a': n1 * 10, 'b': n2 * 10}",
         "labels": [{"name": "which", "expr": "key + '-' + str(len(ret))"}]},
        {"name": "lists", "type": "histogram", "expr": "{'x': [n1, n2], 'y': (n2,)}",
         "labels": [{"name": "l", "expr": "key"}]},
        {"name": "nolabels", "type": "histogram", "expr": "{'x': n1, 'y': n2}", "labels": []},
        # the function's own parameter `key` outside entry labels
        {"name": "param", "type": "gauge", "expr": "len(key)", "labels": [{"name": "k", "expr": "key"}]},
    ]}])
    assert states[0]["state"] == "active", states[0]
    capture.clear()
    assert m.schedule(3, 5, key="zz") == [3, 5]
    sid = series_ids(capture)
    assert set(sid) == {
        ("h", (("req_phase", "prefill"),)), ("h", (("req_phase", "decode"),)),
        ("c", (("req_phase", "prefill"),)), ("c", (("req_phase", "decode"),)),
        ("g", (("which", "a-2"),)), ("g", (("which", "b-2"),)),
        ("lists", (("l", "x"),)), ("lists", (("l", "y"),)),
        ("param", (("k", "zz"),))}
    [(_, probe, status, _, vals)] = capture.samples()
    assert probe == 0 and status == 0
    expected = [
        (sid[("h", (("req_phase", "prefill"),))], OBSERVE, 3.0),
        (sid[("h", (("req_phase", "decode"),))], OBSERVE, 5.0),
        (sid[("c", (("req_phase", "prefill"),))], INC, 3.0),
        (sid[("c", (("req_phase", "decode"),))], INC, 5.0),
        (sid[("g", (("which", "a-2"),))], SET, 30.0),
        (sid[("g", (("which", "b-2"),))], SET, 50.0),
        (sid[("lists", (("l", "x"),))], OBSERVE, 3.0),
        (sid[("lists", (("l", "x"),))], OBSERVE, 5.0),
        (sid[("lists", (("l", "y"),))], OBSERVE, 5.0),
        (sid[("param", (("k", "zz"),))], SET, 2.0),
    ]
    for v in expected:
        assert v in vals, (v, vals)
    no_label_sid = [i for i, (name, _) in enumerate(prov._series._list) if name == "nolabels"][0]
    assert (no_label_sid, OBSERVE, 3.0) in vals and (no_label_sid, OBSERVE, 5.0) in vals
    assert len(vals) == len(expected) + 2  # None entries are skipped
    assert capture.messages("expr_error") == []
    # second call: the series are reused, nothing new announced
    capture.clear()
    m.schedule(1, 1, key="q")
    assert [x["labels"] for x in capture.messages("series")] == [{"k": "q"}]


def test_key_without_a_dict_is_an_expression_error(prov, capture, mods):
    m = __import__(mods("dtgt2", "def f(x):\n    return x\n"))
    states = apply(prov, capture, [{"id": 0, "symbol": "dtgt2:f", "metrics": [
        {"name": "h", "type": "histogram", "expr": "x", "labels": [{"name": "p", "expr": "key"}]},
        {"name": "t", "type": "timer", "labels": []},
    ]}])
    assert states[0]["state"] == "active"
    capture.clear()
    assert m.f(7) == 7
    [err] = capture.messages("expr_error")
    assert err["metric"] == "h" and "did not return a dict" in err["message"]
    [(_, _, _, _, vals)] = capture.samples()
    assert [op for _, op, _ in vals] == [1]  # the timer still recorded
    assert m.f({"a": 1}) == {"a": 1}  # a dict works on the next call
    assert capture.samples()[-1][4][-1][1:] == (OBSERVE, 1.0)


def test_one_bad_entry_is_counted_the_others_recorded(prov, capture, mods):
    m = __import__(mods("dtgt3", "def f():\n    return {'a': 1, 'b': 'x', 'c': 3}\n"))
    apply(prov, capture, [{"id": 0, "symbol": "dtgt3:f", "metrics": [
        {"name": "h", "type": "histogram", "expr": "ret", "labels": [{"name": "p", "expr": "key"}]}]}])
    capture.clear()
    m.f()
    [(_, _, _, _, vals)] = capture.samples()
    assert sorted(v for _, _, v in vals) == [1.0, 3.0]
    [err] = capture.messages("expr_error")
    assert err["count"] == 1 and "ValueError" in err["message"]


@pytest.mark.parametrize("metric,word", [
    ({"name": "v", "type": "gauge", "expr": "key", "labels": []}, "key of an entry"),
    ({"name": "t", "type": "timer", "labels": [{"name": "p", "expr": "key"}]}, "key of an entry"),
    ({"name": "c", "type": "counter", "labels": [{"name": "p", "expr": "key"}]}, "key of an entry"),
])
def test_key_where_no_dict_can_exist_is_rejected(prov, capture, mods, metric, word):
    __import__(mods("dtgt4", "def f(x):\n    return x\n"))
    states = apply(prov, capture, [{"id": 0, "symbol": "dtgt4:f", "metrics": [metric]}])
    assert states[0]["state"] == "error" and word in states[0]["detail"], states[0]
