"""Safe expressions for metric values and labels.

An expression is a small subset of Python, checked node by node with ``ast``
and compiled once into a plain function whose parameters are the probed
function's parameters followed by ``ret``, ``duration`` and ``exc`` (a
function parameter with one of those names wins). Names are therefore fast
locals: no namespace dict is built per call.

Allowed: literals, names (parameters, ``ret``, ``duration`` seconds, ``exc``,
``self`` when it is a parameter), attribute access (no dunder attributes and
none of the refused attributes below), subscripts and slices, arithmetic,
comparisons, boolean operators, conditional expressions,
tuples/lists/sets/dicts, f-strings, list/set comprehensions and generator
expressions, calls of the whitelisted builtins below and method calls on
values (``self.block_pool.get_num_free_blocks()``; the control file is
root-owned, so the config author is trusted as much as root). Everything else
(lambda, walrus, await, yield, imports, dunder access, calls of anything else)
is rejected when the config is applied.

Refused attributes. The dunder rule alone can be walked around: some
attributes reach dunders, or the interpreter's internals, by a route the
check cannot see in the expression's text. Every ``ast.Attribute`` (called or
not, anywhere in the expression, f-string fields and nested format specs
included) is checked by name against :data:`REFUSED_ATTRIBUTES`, whatever
object it is read from (the check is static; it cannot know types):

* ``format``, ``format_map`` (str), ``vformat``, ``get_field``
  (string.Formatter): replacement fields name attributes in a string,
  ``'{0.__class__.__mro__}'.format(ret)``, ``'{.__globals__}'.format(f)``.
  Use an f-string: its fields are expressions and are checked like the rest.
  Refused even when not called: ``max(xs, key='{0.__class__}'.format)`` has
  ``max`` call it. (A data attribute named ``format`` cannot be read either.)
* ``getattr``, ``setattr``, ``delattr``, ``hasattr``, ``getattr_static``,
  ``attrgetter``, ``methodcaller``: attribute names given as strings, e.g.
  ``ret.operator.attrgetter('__class__')`` reached through a module an object
  refers to.
* ``eval``, ``exec``, ``compile``, ``globals``, ``locals``, ``vars``,
  ``breakpoint``: namespaces and code execution, the builtins the subset does
  not allow by name, reached through a module (``ret.builtins.eval``).
* Interpreter internals: every attribute of frames (``f_back``,
  ``f_globals``, ``f_locals``, ``f_builtins``, ``f_code`` ...), tracebacks
  (``tb_frame``, ``tb_next`` ...), code objects (``co_consts``, ``co_code``
  ...), generators (``gi_frame``, ``gi_code``, ``gi_yieldfrom`` ...),
  coroutines (``cr_frame``, ``cr_await`` ...) and async generators
  (``ag_frame`` ...) that carries its type's prefix: the names listed in
  :data:`INTERNAL_ATTRIBUTES` plus whatever names with those prefixes the
  running interpreter's types have; Python 2's ``func_*``/``im_*`` function
  and method names (``func_globals`` ...); ``cell_contents``; ``mro``
  (``str.mro()[-1]`` is ``object``); and the functions returning frames:
  ``_getframe``, ``_current_frames``, ``_current_exceptions``, ``exc_info``,
  ``currentframe``. Exact names, not prefixes: ``self.f_max`` or
  ``self.tb_size`` (real vLLM attributes) are fine.

Checked and left allowed: nested format specs (``f'{x:{w}.{p}f}'``: the
inner fields are expressions checked like any other, and the builtin types'
format specs look nothing up); ``%`` formatting (mapping keys only);
``str.maketrans`` (returns a dict of code points); identifiers spelled with
other Unicode characters (the parser NFKC-normalises them: a mathematical
bold small c in ``__class__`` is seen as a plain ``c``).

What this does not do: it is not a sandbox against a hostile config author.
Method calls on values are allowed by design, and a module an object refers
to exposes its functions (``ret.np.load``); methods may also mutate the
target's objects. The check stops mistakes and the known introspection
routes; the control file's ownership check keeps the author root.

Labelled results: when a metric's value expression returns a dict, each
entry is one sample and the label expressions are evaluated once per entry
with ``key`` bound to the entry's key. Those per-entry label functions
(:func:`compile_tuple` with ``entry_key=True``) take the key as one extra
trailing parameter under an internal name (see :func:`key_parameter`) and
every ``key`` in their expressions is renamed to it, so a parameter of the
probed function called ``key`` keeps working everywhere else.
"""

import ast
import types

__all__ = ["ExprError", "SPECIAL_NAMES", "ALLOWED_FUNCTIONS", "KEY_NAME", "compile_expr",
           "compile_tuple", "key_parameter", "REFUSED_ATTRIBUTES", "INTERNAL_ATTRIBUTES"]

SPECIAL_NAMES = ("ret", "duration", "exc")

# The entry key of a dict result, in label expressions only.
KEY_NAME = "key"
KEY_HINT = ("'key' is the key of an entry of a dict returned by the metric's expr; "
            "it can be used only in label expressions of a metric that has an expr")

ALLOWED_FUNCTIONS = {
    "len": len, "min": min, "max": max, "sum": sum, "abs": abs, "round": round,
    "int": int, "float": float, "str": str, "bool": bool, "any": any, "all": all,
}

MAX_EXPR_LENGTH = 2000
# Deepest AST nesting accepted (the built-in config needs 17); deeper trees would exhaust
# the recursion limit of the checker and the compiler (e.g. 1990 unary minus signs).
MAX_EXPR_DEPTH = 100

# Refused attribute names (module docstring, "Refused attributes"), by reason.
FORMAT_ATTRIBUTES = frozenset(("format", "format_map", "vformat", "get_field"))
LOOKUP_ATTRIBUTES = frozenset(("getattr", "setattr", "delattr", "hasattr", "getattr_static",
                               "attrgetter", "methodcaller"))
NAMESPACE_ATTRIBUTES = frozenset(("eval", "exec", "compile", "globals", "locals", "vars",
                                  "breakpoint"))
# Frame, traceback, code, generator, coroutine and async generator attributes (CPython
# 3.10-3.14), Python 2 function/method names, closure cells, the class hierarchy, and
# the functions that return frames. _internal_attributes() adds the running
# interpreter's own names with these prefixes.
INTERNAL_ATTRIBUTES = frozenset((
    "f_back", "f_builtins", "f_code", "f_generator", "f_globals", "f_lasti", "f_lineno",
    "f_locals", "f_trace", "f_trace_lines", "f_trace_opcodes",
    "tb_frame", "tb_lasti", "tb_lineno", "tb_next",
    "co_argcount", "co_branches", "co_cellvars", "co_code", "co_consts", "co_exceptiontable",
    "co_filename", "co_firstlineno", "co_flags", "co_freevars", "co_kwonlyargcount",
    "co_lines", "co_linetable", "co_lnotab", "co_name", "co_names", "co_nlocals",
    "co_positions", "co_posonlyargcount", "co_qualname", "co_stacksize", "co_varnames",
    "gi_code", "gi_frame", "gi_running", "gi_suspended", "gi_yieldfrom",
    "cr_await", "cr_code", "cr_frame", "cr_origin", "cr_running", "cr_suspended",
    "ag_await", "ag_code", "ag_frame", "ag_running", "ag_suspended",
    "func_closure", "func_code", "func_defaults", "func_dict", "func_doc", "func_globals",
    "func_name", "im_class", "im_func", "im_self",
    "cell_contents", "mro",
    "_getframe", "_current_frames", "_current_exceptions", "exc_info", "currentframe",
))


def _internal_attributes():
    names = set(INTERNAL_ATTRIBUTES)
    for typ, prefix in ((types.FrameType, "f_"), (types.TracebackType, "tb_"),
                        (types.CodeType, "co_"), (types.GeneratorType, "gi_"),
                        (types.CoroutineType, "cr_"), (types.AsyncGeneratorType, "ag_")):
        names.update(n for n in dir(typ) if n.startswith(prefix))
    return frozenset(names)


_INTERNAL = _internal_attributes()
REFUSED_ATTRIBUTES = FORMAT_ATTRIBUTES | LOOKUP_ATTRIBUTES | NAMESPACE_ATTRIBUTES | _INTERNAL


def _refused_attribute(name):
    """Why attribute ``name`` is refused, or None."""
    if name not in REFUSED_ATTRIBUTES:
        return None
    if name in FORMAT_ATTRIBUTES:
        return ("str.format, format_map and string.Formatter look up the attributes named in "
                "the string ('{0.__class__}'); use an f-string instead, e.g. f'{x}-{y}'")
    if name in LOOKUP_ATTRIBUTES:
        return "it looks up attribute names given as strings, which the check cannot see"
    if name in NAMESPACE_ATTRIBUTES:
        return "it reaches a namespace or runs code"
    return ("it reaches interpreter internals (frames, code, tracebacks, generator and "
            "coroutine state, the class hierarchy)")


class ExprError(ValueError):
    """The expression is not in the allowed subset (raised at apply time)."""


_ALLOWED_NODES = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Store, ast.Attribute,
    ast.Subscript, ast.Slice, ast.Compare, ast.BoolOp, ast.BinOp, ast.UnaryOp,
    ast.IfExp, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.Call, ast.keyword,
    ast.JoinedStr, ast.FormattedValue, ast.ListComp, ast.SetComp, ast.GeneratorExp,
    ast.comprehension,
    # operators
    ast.And, ast.Or, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod,
    ast.Pow, ast.LShift, ast.RShift, ast.BitOr, ast.BitXor, ast.BitAnd,
    ast.UAdd, ast.USub, ast.Not, ast.Invert,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot,
    ast.In, ast.NotIn,
)
# Python 3.8 compatibility nodes never appear on 3.10+, nothing else to add.


class _Checker(ast.NodeVisitor):
    def __init__(self, known):
        self.known = set(known)
        self.used = set()
        self.bound = set()  # comprehension targets

    def generic_visit(self, node):
        if not isinstance(node, _ALLOWED_NODES):
            raise ExprError("%s is not allowed" % type(node).__name__)
        super().generic_visit(node)

    def visit_Name(self, node):
        if node.id.startswith("__"):
            raise ExprError("name %r is not allowed" % node.id)
        if isinstance(node.ctx, ast.Load):
            if node.id not in self.known and node.id not in ALLOWED_FUNCTIONS \
                    and node.id not in self.bound:
                if node.id == KEY_NAME:
                    raise ExprError("unknown name 'key': " + KEY_HINT)
                raise ExprError("unknown name %r (known: %s)" % (
                    node.id, ", ".join(sorted(self.known)) or "none"))
            self.used.add(node.id)

    def visit_Attribute(self, node):
        if node.attr.startswith("__"):
            raise ExprError("dunder attribute %r is not allowed" % node.attr)
        why = _refused_attribute(node.attr)
        if why is not None:
            raise ExprError("attribute %r is not allowed: %s" % (node.attr, why))
        self.generic_visit(node)

    def visit_Call(self, node):
        f = node.func
        if isinstance(f, ast.Name):
            if f.id not in ALLOWED_FUNCTIONS:
                raise ExprError("call of %r is not allowed (allowed: %s, and methods)" % (
                    f.id, ", ".join(sorted(ALLOWED_FUNCTIONS))))
        elif not isinstance(f, ast.Attribute):
            raise ExprError("this call is not allowed (only allowed functions and methods)")
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise ExprError("*args in calls is not allowed")
        for k in node.keywords:
            if k.arg is None:
                raise ExprError("**kwargs in calls is not allowed")
        self.generic_visit(node)

    def _comp(self, node):
        # comprehension targets must be plain names (or tuples of names)
        for gen in node.generators:
            if gen.is_async:
                raise ExprError("async comprehensions are not allowed")
            for t in ast.walk(gen.target):
                if isinstance(t, ast.Name):
                    if t.id.startswith("__"):
                        raise ExprError("name %r is not allowed" % t.id)
                    self.bound.add(t.id)
                elif not isinstance(t, (ast.Tuple, ast.Store)):
                    raise ExprError("comprehension target must be names")
        self.generic_visit(node)

    visit_ListComp = visit_SetComp = visit_GeneratorExp = _comp


def expression_parameters(param_names):
    """Parameters of a compiled expression function for a probed function."""
    params = list(param_names)
    for s in SPECIAL_NAMES:
        if s not in params:
            params.append(s)
    return params


def check_expr(text):
    """Check ``text`` without knowing the parameter names (names unchecked)."""
    compile_expr(text, None)


def key_parameter(param_names):
    """Internal name of the entry-key parameter: no parameter of the probed
    function (nor ret/duration/exc) has it."""
    taken = set(expression_parameters(param_names))
    name = "_msm_key"
    while name in taken:
        name = "_" + name
    return name


class _RenameKey(ast.NodeTransformer):
    def __init__(self, to):
        self.to = to

    def visit_Name(self, node):
        if node.id == KEY_NAME:
            return ast.copy_location(ast.Name(id=self.to, ctx=node.ctx), node)
        return node


def _parse(text, filename):
    if not isinstance(text, str):
        raise ExprError("expression must be a string")
    if len(text) > MAX_EXPR_LENGTH:
        raise ExprError("expression longer than %d characters" % MAX_EXPR_LENGTH)
    try:
        tree = ast.parse(text.strip(), filename, "eval")
    except SyntaxError as e:
        raise ExprError("syntax error: %s" % (e.msg,)) from None
    except (ValueError, RecursionError, MemoryError) as e:
        # a NUL character (ValueError before 3.12), nesting too deep for the parser
        raise ExprError("cannot parse: %s" % (e,)) from None
    if _depth(tree) > MAX_EXPR_DEPTH:
        raise ExprError("expression nested more than %d levels deep" % MAX_EXPR_DEPTH)
    return tree


def _depth(tree):
    """Nesting depth of an AST, without recursion."""
    deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, d = stack.pop()
        if d > deepest:
            deepest = d
            if d > MAX_EXPR_DEPTH:
                break
        for child in ast.iter_child_nodes(node):
            stack.append((child, d + 1))
    return deepest


def _function(params, body, filename, name):
    """Compile ``def f(*params): return body`` from a checked expression node."""
    for p in params:
        if not p.isidentifier():
            raise ExprError("parameter %r is not an identifier" % p)
    mod = ast.parse("def _msm_expr(%s):\n    return None\n" % ", ".join(params))
    mod.body[0].body[0].value = body
    ast.fix_missing_locations(mod)
    try:
        code = compile(mod, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, TypeError) as e:
        raise ExprError("cannot compile: %s" % (e,)) from None
    glb = {"__builtins__": dict(ALLOWED_FUNCTIONS)}
    glb.update(ALLOWED_FUNCTIONS)
    exec(code, glb)
    fn = glb["_msm_expr"]
    fn.__qualname__ = fn.__name__ = name
    return fn


def compile_tuple(texts, param_names, filename="<msm labels>", entry_key=False):
    """Compile several expressions into one function returning a tuple.

    ``entry_key=True``: the function takes one more trailing argument, the
    key of a dict entry, which the expressions read as ``key`` (it hides a
    parameter of that name). Returns ``(function, used_names)``; ``"key"`` is
    in ``used_names`` when an expression reads the entry key.
    """
    params = expression_parameters(param_names)
    known = params + [KEY_NAME] if entry_key else params
    used = set()
    trees = []
    for t in texts:
        tree = _parse(t, filename)
        checker = _Checker(known)
        checker.visit(tree)
        used |= checker.used
        trees.append(tree.body)
    body = ast.Tuple(elts=trees, ctx=ast.Load())
    if entry_key:
        internal = key_parameter(param_names)
        body = _RenameKey(internal).visit(body)
        params = params + [internal]
    return _function(params, body, filename, "msm_labels"), used


def compile_expr(text, param_names, filename="<msm expr>"):
    """Compile ``text`` into ``(function, used_names)``.

    ``function(*args, ret, duration, exc)`` (with ``args`` the probed
    function's parameters in order, see :func:`expression_parameters`)
    returns the expression's value. Raises ExprError when not allowed.
    """
    tree = _parse(text, filename)
    if param_names is None:  # syntax and node check only
        checker = _Checker(())
        checker.visit_Name = lambda node: None
        checker.visit(tree)
        return None, set()
    params = expression_parameters(param_names)
    checker = _Checker(params)
    checker.visit(tree)
    # Compile from the checked tree (never re-parse the text).
    return _function(params, tree.body, filename, "msm_expr"), checker.used
