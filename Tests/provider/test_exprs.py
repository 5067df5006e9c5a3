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
