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


# ---------------------------------------------------------------- escapes of the subset
# Each of these compiled before the attribute denylist (exprs.py docstring, "Refused
# attributes") and reached a dunder attribute or interpreter internals at run time.

@pytest.mark.parametrize("text,why", [
    # the format mini-language looks up attributes named in the string
    ("'{0.__class__.__mro__}'.format(ret)", "f-string"),
    ("'{.__globals__}'.format(self.count)", "f-string"),
    ("'{x.__class__}'.format_map({'x': ret})", "f-string"),
    ("str.format('{0.__class__}', ret)", "f-string"),
    ("max([ret], key='{0.__class__}'.format)", "f-string"),  # called by max, not by the expr
    ("ret.formatter.vformat('{0.__init__}', [ret], {})", "f-string"),
    ("ret.formatter.get_field('0.__class__', [ret], {})", "f-string"),
    # attribute lookup by a string the check cannot see
    ("ret.builtins.getattr(ret, '__class__')", "attribute names"),
    ("ret.inspect.getattr_static(ret, '__dict__')", "attribute names"),
    ("max([ret], key=ret.operator.attrgetter('__class__'))", "attribute names"),
    ("max([ret], key=ret.operator.methodcaller('__reduce__'))", "attribute names"),
    ("ret.builtins.setattr(ret, 'x', 1)", "attribute names"),
    # namespaces and code execution reached through a module
    ("ret.builtins.vars(ret)", "namespace"), ("ret.builtins.globals()", "namespace"),
    ("ret.builtins.eval('1')", "namespace"), ("ret.builtins.exec('1')", "namespace"),
    ("ret.builtins.compile('1', 'f', 'eval')", "namespace"),
    # frames, code, tracebacks, generator/coroutine/async generator internals
    ("(x for x in n).gi_frame.f_globals", "interpreter internals"),
    ("ret.gi_code.co_consts", "interpreter internals"),
    ("ret.gi_yieldfrom", "interpreter internals"),
    ("ret.cr_frame.f_back", "interpreter internals"),
    ("ret.cr_await", "interpreter internals"),
    ("ret.ag_frame", "interpreter internals"),
    ("ret.f_locals", "interpreter internals"),
    ("ret.f_builtins", "interpreter internals"),
    ("ret.f_code", "interpreter internals"),
    ("ret.tb_frame", "interpreter internals"),
    ("ret.tb_next", "interpreter internals"),
    ("ret.func_globals", "interpreter internals"),
    ("ret.im_func", "interpreter internals"),
    ("ret.cell_contents", "interpreter internals"),
    ("ret.sys._getframe(1)", "interpreter internals"),
    ("ret.sys._current_frames()", "interpreter internals"),
    ("ret.sys.exc_info()[2]", "interpreter internals"),
    ("ret.inspect.currentframe()", "interpreter internals"),
    # the class hierarchy without dunders: str.mro()[-1] is object
    ("str.mro()[-1]", "interpreter internals"),
    ("[c for c in int.mro()]", "interpreter internals"),
    # inside f-string replacement fields and nested format specs
    ("f'{ret.gi_frame}'", "interpreter internals"),
    ("f'{n:{ret.tb_frame}}'", "interpreter internals"),
])
def test_escape_is_rejected(ex, text, why):
    with pytest.raises(ex.ExprError, match="not allowed") as e:
        ex.compile_expr(text, ["self", "n"])
    assert why in str(e.value)
    with pytest.raises(ex.ExprError):  # also without parameter names (apply-time check)
        ex.check_expr(text)


def test_format_escape_is_real_on_plain_python():
    # Why `format` is refused: without the check the string reaches any attribute.
    assert "{0.__class__.__mro__}".format(1) == str((int, object))


def test_unicode_spelled_dunder_is_rejected(ex):
    # identifiers are NFKC-normalised by the parser: a mathematical bold c is a c
    with pytest.raises(ex.ExprError, match="dunder"):
        ex.compile_expr("ret.__\U0001d41class__", ["n"])


@pytest.mark.parametrize("text,expected", [
    # attribute names of real vLLM objects that share a prefix with the refused ones
    ("self.f_max + self.tb_size + self.co_count", 6),
    ("self.im_start_token + self.func_args_regex + self.format_version", "ab3"),
    # nested format specs are checked expressions; builtin specs look nothing up
    ("f'{d:{w}.{p}f}'", "  1.50"),
    ("f'{n!r:>{w}}'", "     2"),
    ("''.maketrans('a', 'b')", {97: 98}),  # a dict of code points; nothing to reach
])
def test_similar_names_and_format_specs_still_work(ex, text, expected):
    class O:
        f_max, tb_size, co_count = 1, 2, 3
        im_start_token, func_args_regex, format_version = "a", "b", "3"
    fn, _ = ex.compile_expr(text, ["self", "n", "d", "w", "p"])
    assert fn(O(), 2, 1.5, 6, 2, None, 0.0, None) == expected


def _config_expressions(path):
    """(where, text) of every value and label expression in a symbol config."""
    import yaml_subset
    entries = yaml_subset.load_file(path)
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:  # the subset loader reads the file exactly as PyYAML does
        with open(path, encoding="utf-8") as f:
            assert yaml.safe_load(f) == entries
    out = []
    for entry in entries:
        for m in entry.get("metrics") or []:
            where = "%s %s" % (entry["symbol"], m["name"])
            if m.get("expr") is not None:
                out.append((where, m["expr"]))
            for lab in m.get("labels") or []:
                if lab.get("expr") is not None:
                    out.append(("%s label %s" % (where, lab["name"]), lab["expr"]))
    return out


def test_built_in_config_expressions_compile(ex):
    import os
    from conftest import REPO
    exprs = _config_expressions(os.path.join(REPO, "Config", "default.yaml"))
    assert len(exprs) > 80
    assert any("f'{exc!r}'" in t for _, t in exprs)  # folded and quoted scalars came through
    failed = []
    for where, text in exprs:
        try:
            ex.check_expr(text)
        except ex.ExprError as e:
            failed.append("%s: %s: %s" % (where, text, e))
    assert failed == []


@pytest.mark.parametrize("text", [
    "-" * 1990 + "n",            # parses, but the checker would exhaust the recursion limit
    "n" + " + n" * 400,
    "[" * 150 + "]" * 150,
    "'a\0b'",                    # NUL: ValueError from the parser before 3.12
], ids=["unary-chain", "sum-chain", "nested-lists", "nul"])
def test_unparseable_or_too_deep_is_an_expr_error(ex, text):
    with pytest.raises(ex.ExprError):
        ex.compile_expr(text, ["n"])
    with pytest.raises(ex.ExprError):
        ex.check_expr(text)


def test_deep_but_reasonable_nesting_compiles(ex):
    fn, _ = ex.compile_expr("(" * 40 + "n" + " + 1)" * 40, ["n"])
    assert fn(1, None, 0.0, None) == 41
