"""Instrumenting Python functions in place.

A probed Python function keeps its identity: only its ``__code__`` is
replaced by a generated *wrapper* code object with the same parameters,
flags (sync / coroutine / generator / async generator), free variables,
name, qualified name, file and first line. References bound before the patch
(``self.step_fn = self.step``, ``f = module.func``) therefore run the wrapper
too. The wrapper calls a private copy of the original function (same code,
globals, defaults, closure) and reports to the hook; its hook objects are
constants of the wrapper code object (never globals of the target module).

``restore()`` puts the original code object back: every object has its
original identity and behaviour again.

Objects without Python bytecode (builtins, C or Cython functions) fall back
to replacing the attribute that holds them; references bound earlier are not
covered then.

Wrapper kinds, by what the hook needs at exit:

* ``timer``  — ``timer(probe, series, start_ns, status)`` (native call);
* ``static`` — ``sample(probe, start_ns, status, values)`` with a constant
  flat values tuple (timers and plain counters without labels);
* ``full``   — ``finish(start_ns, status, ret, exc, args_tuple)``, a Python
  hook that evaluates expressions (``args_tuple`` holds the parameters in
  order, see :func:`parameter_names`);
* ``block``  — (entries with ``scope: block``) no clock and nothing recorded at
  the call: the return value is replaced by a proxy that times the ``with``
  block (see :mod:`msm_provider.blocks`), made inline from ``BLOCKCLASSES``
  (type of the return value -> proxy class) or else by ``wrap(ret,
  args_tuple)``; a raising call is not recorded. ``block0`` is the same with ``()`` for the arguments
  (the entry's metrics read no parameter). Plain functions and coroutine
  functions only.
"""

import ast
import sys
import types
import warnings

__all__ = ["parameter_names", "function_kind", "CodePatch", "AttributePatch", "PatchError",
           "strip_traceback", "BLOCK_MODES"]

CO_VARARGS = 0x04
CO_VARKEYWORDS = 0x08
CO_NESTED = 0x10
CO_GENERATOR = 0x20
CO_COROUTINE = 0x80
CO_ITERABLE_COROUTINE = 0x100
CO_ASYNC_GENERATOR = 0x200

_STRIP_TB = sys.version_info >= (3, 11)

# Hook modes that replace the return value by a proxy timing the with-block.
BLOCK_MODES = ("block", "block0")
BLOCK_KINDS = ("sync", "coroutine")


class PatchError(Exception):
    pass


def parameter_names(code):
    """Parameter names in wrapper/argument-tuple order:
    positional (incl. positional-only), *args, keyword-only, **kwargs."""
    n = code.co_argcount
    k = code.co_kwonlyargcount
    names = list(code.co_varnames[:n])
    i = n + k
    if code.co_flags & CO_VARARGS:
        names.append(code.co_varnames[i])
        i += 1
    names.extend(code.co_varnames[n:n + k])
    if code.co_flags & CO_VARKEYWORDS:
        names.append(code.co_varnames[i])
    return names


def function_kind(code):
    f = code.co_flags
    if f & CO_ASYNC_GENERATOR:
        return "asyncgen"
    if f & CO_COROUTINE:
        return "coroutine"
    if f & CO_GENERATOR:
        return "generator"
    return "sync"


def _signature_parts(code):
    """(def-parameter text, call-argument text, args-tuple text)."""
    n = code.co_argcount
    po = code.co_posonlyargcount
    k = code.co_kwonlyargcount
    names = code.co_varnames
    pos = list(names[:n])
    kwonly = list(names[n:n + k])
    i = n + k
    varargs = varkw = None
    if code.co_flags & CO_VARARGS:
        varargs = names[i]
        i += 1
    if code.co_flags & CO_VARKEYWORDS:
        varkw = names[i]
    sig, call = [], []
    for j, p in enumerate(pos):
        sig.append(p)
        call.append(p)
        if po and j == po - 1:
            sig.append("/")
    if varargs:
        sig.append("*" + varargs)
        call.append("*" + varargs)
    elif kwonly:
        sig.append("*")
    for p in kwonly:
        sig.append(p)
        call.append("%s=%s" % (p, p))
    if varkw:
        sig.append("**" + varkw)
        call.append("**" + varkw)
    tup = parameter_names(code)
    tup_text = "(" + "".join(p + ", " for p in tup) + ")"
    return ", ".join(sig), ", ".join(call), tup_text


# Templates. Upper-case words are placeholders for constants; ``_L_`` is the
# prefix of the wrapper's own locals (chosen to avoid the parameter names).
# Plain functions, generators and coroutines share one shape: they differ in how the
# original is invoked and in whether a GeneratorExit (close() of a generator or
# coroutine) is reported as a normal end.
_T_CALL = """
@DEF@ _L_wrapper(@SIG@):
    _L_t = K_NOW()
    try:
        _L_r = @INVOKE@K_ORIG(@CALL@)
@CLOSED@    except K_BASEEXC as _L_e:
        EXIT_ERR
        STRIP
        raise
    EXIT_OK
    return _L_r
"""

_CLOSED_CLAUSE = """    except K_GENEXIT:
        EXIT_CLOSED
        raise
"""


def _call_template(define, invoke, closed):
    return (_T_CALL.replace("@DEF@", define).replace("@INVOKE@", invoke)
            .replace("@CLOSED@", _CLOSED_CLAUSE if closed else ""))


_T_SYNC = _call_template("def", "", closed=False)
_T_GEN = _call_template("def", "yield from ", closed=True)
_T_CORO = _call_template("async def", "await ", closed=True)

# Async generators cannot ``yield from``: every asend/athrow is forwarded by hand.
_T_AGEN = """
async def _L_wrapper(@SIG@):
    _L_t = K_NOW()
    _L_r = None
    _L_g = K_ORIG(@CALL@)
    try:
        _L_v = await _L_g.asend(None)
        while True:
            try:
                _L_s = yield _L_v
            except K_GENEXIT:
                await _L_g.aclose()
                raise
            except K_BASEEXC as _L_x:
                _L_v = await _L_g.athrow(_L_x)
            else:
                _L_v = await _L_g.asend(_L_s)
    except K_STOPASYNC:
        EXIT_OK
        return
    except K_GENEXIT:
        EXIT_CLOSED
        raise
    except K_BASEEXC as _L_e:
        EXIT_ERR
        STRIP
        raise
"""

_TEMPLATES = {"sync": _T_SYNC, "generator": _T_GEN, "coroutine": _T_CORO, "asyncgen": _T_AGEN}


def _exit_calls(mode, tup):
    """(ok, err, closed) statement texts for a hook mode."""
    if mode == "timer":
        return ("K_TIMER(K_PID, K_SID, _L_t, 0)", "K_TIMER(K_PID, K_SID, _L_t, 1)",
                "K_TIMER(K_PID, K_SID, _L_t, 0)")
    if mode == "static":
        return ("K_SAMPLE(K_PID, _L_t, 0, K_VALS)", "K_SAMPLE(K_PID, _L_t, 1, K_VALS)",
                "K_SAMPLE(K_PID, _L_t, 0, K_VALS)")
    if mode == "full":
        return ("K_FINISH(_L_t, 0, _L_r, None, @TUP@)", "K_FINISH(_L_t, 1, None, _L_e, @TUP@)",
                "K_FINISH(_L_t, 0, None, None, @TUP@)")
    if mode in BLOCK_MODES:
        args = "@TUP@" if mode == "block" else "()"
        # the proxy of a known context manager type is made right here (no Python-level
        # call); anything else goes through WRAP
        ok = "\n".join([
            "_L_c = K_BLOCKCLASSES.get(K_TYPE(_L_r))",
            "if _L_c is None:",
            "    _L_r = K_WRAP(_L_r, %s)" % args,
            "else:",
            "    _L_p = K_NEW(_L_c)",
            "    _L_p._msm_cm = _L_r",
            "    _L_p._msm_args = %s" % args,
            "    _L_p._msm_t = _L_p._msm_outer = None",
            "    _L_r = _L_p"]).replace("\n", "\n    ")
        return (ok, "pass", "pass")
    raise PatchError("unknown hook mode %r" % (mode,))


def _placeholder(key):
    return "\x00msm:" + key


class _Consts(ast.NodeTransformer):
    """Replace upper-case placeholder names by placeholder string constants."""

    def __init__(self, keys):
        self.keys = keys

    def visit_Name(self, node):
        if node.id in self.keys:
            return ast.copy_location(ast.Constant(_placeholder(node.id)), node)
        return node


def strip_traceback(exc):
    """Drop the wrapper's own traceback entry (3.11+: the bare ``raise``
    re-raises with ``exc.__traceback__``), so tracebacks look as before."""
    try:
        tb = exc.__traceback__
        if tb is not None and tb.tb_frame is sys._getframe(1):
            exc.__traceback__ = tb.tb_next
    except Exception:
        pass


def build_wrapper_code(orig_code, kind, mode, consts):
    """Generate the wrapper code object for ``orig_code``.

    ``consts`` maps placeholder names (ORIG, NOW, TIMER, PID, ...) to objects.
    """
    names = set(orig_code.co_varnames) | set(orig_code.co_freevars) | set(orig_code.co_cellvars)
    prefix = "_msm_"
    while any(n.startswith(prefix) for n in names):
        prefix = "_" + prefix
    sig, call, tup = _signature_parts(orig_code)
    ok, err, closed = _exit_calls(mode, tup)
    body = _TEMPLATES[kind]
    if mode in BLOCK_MODES:
        if kind not in BLOCK_KINDS:
            raise PatchError("scope block needs a function that returns a context manager "
                             "(a plain function or a coroutine function), not a %s" % kind)
        body = body.replace("_L_t = K_NOW()", "pass")  # the clock starts at __enter__
    body = (body.replace("EXIT_OK", ok).replace("EXIT_ERR", err).replace("EXIT_CLOSED", closed)
            .replace("STRIP", "K_STRIPTB(_L_e)" if _STRIP_TB else "pass"))
    freevars = orig_code.co_freevars
    if freevars:
        lines = body.strip("\n").splitlines()
        inner = [lines[0], "    if 0:", "        (%s,)" % ", ".join(freevars)] + lines[1:]
        src = "def _L_outer():\n    %s = None\n%s\n    return _L_wrapper\n" % (
            " = ".join(freevars), "\n".join("    " + x for x in inner))
    else:
        src = body + "\n"
    # placeholders first (they cannot clash: prefix avoids all names of the
    # original code), then the parameter texts, which are never rewritten.
    src = src.replace("K_", "_L_K_").replace("_L_", prefix)
    src = src.replace("@SIG@", sig).replace("@CALL@", call).replace("@TUP@", tup)

    all_consts = {prefix + "K_" + k: v for k, v in consts.items()}
    for k, v in (("BASEEXC", BaseException), ("GENEXIT", GeneratorExit),
                 ("STOPASYNC", StopAsyncIteration), ("STRIPTB", strip_traceback),
                 ("TYPE", type), ("NEW", object.__new__)):
        all_consts.setdefault(prefix + "K_" + k, v)
    tree = ast.parse(src)
    tree = _Consts(set(all_consts)).visit(tree)
    line = orig_code.co_firstlineno
    for node in ast.walk(tree):
        if hasattr(node, "lineno"):
            node.lineno = line
            node.end_lineno = line
    ast.fix_missing_locations(tree)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module_code = compile(tree, orig_code.co_filename, "exec", dont_inherit=True)
    ns = {"__builtins__": {}}
    exec(module_code, ns)
    fn = ns[prefix + "outer"]() if freevars else ns[prefix + "wrapper"]
    wcode = fn.__code__
    if wcode.co_freevars != freevars:
        raise PatchError("free variables differ: %r != %r" % (wcode.co_freevars, freevars))

    by_text = {_placeholder(k): v for k, v in all_consts.items()}
    new_consts = tuple(by_text.get(c, c) if isinstance(c, str) else c for c in wcode.co_consts)
    if any(isinstance(c, str) and c.startswith("\x00msm:") for c in new_consts):
        raise PatchError("unresolved placeholder in wrapper")
    flags = (wcode.co_flags & ~CO_NESTED) | (orig_code.co_flags & (CO_NESTED | CO_ITERABLE_COROUTINE))
    kw = dict(co_consts=new_consts, co_name=orig_code.co_name, co_flags=flags)
    if sys.version_info >= (3, 11):
        kw["co_qualname"] = orig_code.co_qualname
    wcode = wcode.replace(**kw)
    # sanity: same parameters
    for attr in ("co_argcount", "co_posonlyargcount", "co_kwonlyargcount"):
        if getattr(wcode, attr) != getattr(orig_code, attr):
            raise PatchError("%s differs" % attr)
    if parameter_names(wcode) != parameter_names(orig_code):
        raise PatchError("parameter names differ")
    if function_kind(wcode) != kind:
        raise PatchError("function kind differs")
    return wcode


def copy_function(func, code=None):
    """A private copy of ``func`` running ``code`` (default: its code)."""
    f = types.FunctionType(code or func.__code__, func.__globals__, func.__name__,
                           func.__defaults__, func.__closure__)
    f.__kwdefaults__ = func.__kwdefaults__
    f.__qualname__ = func.__qualname__
    return f


class CodePatch:
    """``func.__code__`` replaced by a wrapper; identity of ``func`` kept."""

    covers_prebound = True

    def __init__(self, func, mode, consts):
        if not isinstance(func, types.FunctionType):
            raise PatchError("not a Python function")
        self.func = func
        self.orig_code = func.__code__
        self.kind = function_kind(self.orig_code)
        self.params = parameter_names(self.orig_code)
        c = dict(consts)
        c["ORIG"] = copy_function(func, self.orig_code)
        self.wrapper_code = build_wrapper_code(self.orig_code, self.kind, mode, c)
        self.applied = False

    def apply(self):
        self.func.__code__ = self.wrapper_code
        self.applied = True

    def restore(self):
        """Put the original code back (only if our wrapper is still in place)."""
        if not self.applied:
            return True
        self.applied = False
        if self.func.__code__ is self.wrapper_code:
            self.func.__code__ = self.orig_code
            return True
        return False


class AttributePatch:
    """``setattr(owner, name, wrapper)`` for callables without bytecode."""

    covers_prebound = False

    def __init__(self, owner, name, original, mode, consts, wrap_static=False):
        self.owner = owner
        self.name = name
        self.original = original
        self.kind = "sync"

        def _template(*args, **kwargs):
            pass
        c = dict(consts)
        c["ORIG"] = original
        code = build_wrapper_code(_template.__code__, "sync", mode, c)
        qual = getattr(original, "__qualname__", None) or getattr(original, "__name__", name)
        code = code.replace(co_name=str(getattr(original, "__name__", name)))
        if sys.version_info >= (3, 11):
            code = code.replace(co_qualname=str(qual))
        wrapper = types.FunctionType(code, {"__builtins__": {}}, str(getattr(original, "__name__", name)))
        wrapper.__qualname__ = str(qual)
        wrapper.__doc__ = getattr(original, "__doc__", None)
        wrapper.__module__ = getattr(original, "__module__", None)
        wrapper.__wrapped__ = original
        self.params = parameter_names(code)
        self.wrapper = staticmethod(wrapper) if wrap_static else wrapper
        self.applied = False

    def apply(self):
        setattr(self.owner, self.name, self.wrapper)
        self.applied = True

    def restore(self):
        if not self.applied:
            return True
        self.applied = False
        try:
            cur = self.owner.__dict__.get(self.name) if hasattr(self.owner, "__dict__") else None
        except Exception:
            cur = None
        if cur is self.wrapper:
            setattr(self.owner, self.name, self.original)
            return True
        return False
