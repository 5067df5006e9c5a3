"""Expression whitelist."""

import pytest


@pytest.fixture
def ex(native):
    from msm_provider import exprs
    return exprs


class Obj:
    def __init__(self):
        self.items = [1, 2, 3]
        self._private = 5
        self.d = {"a": 1}

    def count(self):
        return len(self.items)


@pytest.mark.parametrize("text,expected", [
    ("len(self.items)", 3),
    ("sum(x for x in self.items if x > 1)", 5),
    ("[x * 2 for x in self.items][-1]", 6),
    ("'prefill' if n > 1 else 'decode'", "prefill"),
    ("self.count() + self._private", 8),
    ("self.d['a'] + round(duration, 1)", 1.5),
    ("min(n, 10) >= 2 and not exc", True),
    ("ret is None", True),
    ("f'{n}-x'", "2-x"),
    ("abs(-n) ** 2 // 3 % 5", 1),
    ("(n, [n], {n}, {'k': n})[1]", [2]),
    ("float(str(n)) + int('3') + bool(1)", 6.0),
])
def test_allowed(ex, text, expected):
    fn, used = ex.compile_expr(text, ["self", "n"])
    assert fn(Obj(), 2, None, 0.5, None) == expected


@pytest.mark.parametrize("text", [
    "__import__('os')", "self.__class__", "self.__dict__", "getattr(self, 'x')",
    "open('/etc/passwd')", "(lambda: 1)()", "(y := 1)", "eval('1')", "zzz",
    "self.items[0](*n)", "[1 for __x in n]", "exec", "type(self)", "self.count(**n)",
    "x.y = 1", "import os", "1; 2",
])
def test_rejected(ex, text):
    with pytest.raises(ex.ExprError):
        ex.compile_expr(text, ["self", "n"])


def test_parameter_named_ret_wins(ex):
    fn, _ = ex.compile_expr("ret + duration", ["ret"])
    assert ex.expression_parameters(["ret"]) == ["ret", "duration", "exc"]
    assert fn(1, 2.0, None) == 3.0


def test_no_builtins_leak(ex):
    fn, _ = ex.compile_expr("len(n)", ["n"])
    assert set(fn.__globals__["__builtins__"]) == set(ex.ALLOWED_FUNCTIONS)


def test_entry_key_is_a_trailing_parameter(ex):
    fn, used = ex.compile_tuple(["key", "f'{key}-{n}'", "[key for key in 'ab'][0]"], ["n"],
                                entry_key=True)
    assert "key" in used
    assert fn(2, None, 0.0, None, "prefill") == ("prefill", "prefill-2", "a")


def test_entry_key_hides_a_parameter_named_key_only_in_entry_labels(ex):
    params = ["self", "key"]
    internal = ex.key_parameter(params)
    assert internal not in ex.expression_parameters(params) and internal.isidentifier()
    entry, _ = ex.compile_tuple(["key"], params, entry_key=True)
    assert entry(None, "param", None, 0.0, None, "entry") == ("entry",)
    plain, _ = ex.compile_tuple(["key"], params)
    assert plain(None, "param", None, 0.0, None) == ("param",)
    value, _ = ex.compile_expr("key * 2", params)
    assert value(None, 3, None, 0.0, None) == 6


def test_internal_key_name_avoids_parameters(ex):
    assert ex.key_parameter(["_msm_key"]) == "__msm_key"
    fn, _ = ex.compile_tuple(["key", "_msm_key"], ["_msm_key"], entry_key=True)
    assert fn("p", None, 0.0, None, "k") == ("k", "p")


def test_key_outside_entry_labels_is_rejected_with_hint(ex):
    with pytest.raises(ex.ExprError, match="key of an entry of a dict"):
        ex.compile_expr("key", ["n"])
    with pytest.raises(ex.ExprError, match="key of an entry of a dict"):
        ex.compile_tuple(["key"], ["n"])
