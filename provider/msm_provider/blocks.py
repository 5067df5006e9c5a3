"""``scope: block`` — timing the ``with`` block guarded by a context manager
that a probed function returns (vLLM's ``record_function_or_nullcontext(name)``).

The probed function (the *factory*) is patched in mode ``block`` (see
:mod:`msm_provider.patcher`): its return value is handed to
:meth:`BlockScope.wrap`, which returns a thin proxy in its place. The proxy
forwards ``__enter__``/``__exit__`` (and ``__aenter__``/``__aexit__``) to the
real context manager exactly as the ``with`` statement would call them, and
records the entry's metrics when ``__exit__`` has returned:

* the clock starts when ``__enter__`` is called and the sample is sent after
  the real ``__exit__`` returned (or raised): a timer measures
  enter + block + exit;
* status 1 and ``exc`` = the exception that ended the block (the one passed to
  ``__exit__``, also when the context manager suppresses it), or the
  exception ``__exit__`` itself raised; else status 0 and ``exc`` None;
* ``ret`` = the real context manager; the parameters are the factory's;
* the real ``__enter__`` result and ``__exit__`` result are returned
  unchanged (exception suppression is the real ``__exit__``'s decision);
  exceptions pass through unchanged (the proxy's own traceback entry is
  dropped on 3.11+); a ``__enter__`` that raises records nothing.

The proxy class is chosen by what the real object's type supports (special
method lookup on the type, as the ``with`` statement does): a sync-only
context manager gets a proxy without ``__aenter__``, so ``async with`` on it
still fails with TypeError, and vice versa. A return value that is no context
manager at all is passed through untouched and counted as an expression error
of the probe (``metric`` = ``scope block``). Attribute reads the proxy does
not define are forwarded to the real object.

Proxy classes are generated per probe (the record statement is compiled in:
a timer-only entry's ``__exit__`` calls the native ``timer`` directly) and
cached per type of the returned object; for a cached type the factory's
wrapper makes the proxy itself (``object.__new__`` and the four slots), so a
timed with-block costs two Python-level calls (the proxy's ``__enter__`` and
``__exit__``) beyond the target's own.
"""

import builtins
import types

from .patcher import strip_traceback, _STRIP_TB

__all__ = ["BlockScope", "ERROR_KEY"]

ERROR_KEY = "scope block"
TYPE_CACHE_MAX = 256

# Special methods of these types are called as ``type(cm).__enter__(cm)``,
# which is what the with statement does for them (they bind the instance as
# the first argument). Anything else is bound through the descriptor protocol.
_PLAIN = (types.FunctionType, types.WrapperDescriptorType, types.MethodDescriptorType)

_NOT_CM = object()


def _special(tp, name):
    """The attribute ``name`` as special method lookup finds it (the type's MRO,
    never the instance), or None."""
    for k in tp.__mro__:
        d = k.__dict__
        if name in d:
            return d[name]
    return None


def bind_special(obj, name):
    """``obj``'s special method ``name``, bound the way the interpreter binds it."""
    tp = type(obj)
    f = _special(tp, name)
    if f is None:
        raise AttributeError("%s has no %s" % (tp.__name__, name))
    get = getattr(type(f), "__get__", None)
    return f if get is None else get(f, obj, tp)


# Class template. Upper-case names are globals of the namespace the class is
# compiled in (see BlockScope._build). RECORD(x) stands for the entry's record
# statement with x the exception (or None).
_HEAD = '''
class BlockProxy:
    __slots__ = ("_msm_cm", "_msm_args", "_msm_t", "_msm_outer")

    def __init__(self, cm, args):
        self._msm_cm = cm
        self._msm_args = args
        self._msm_t = None
        self._msm_outer = None

    def __getattr__(self, name):
        if name.startswith("_msm_"):
            raise AttributeError(name)
        return getattr(self._msm_cm, name)

    def __repr__(self):
        return "<msm block proxy of %r>" % (self._msm_cm,)
'''

_ENTER = '''
    @DEF@ @ENTER_NAME@(self):
        t = NOW()
        try:
            r = @AWAIT@@ENTER@
        except BaseException as e:
            STRIP
            raise
        if self._msm_t is not None:  # the same object entered again (nested)
            self._msm_outer = (self._msm_t, self._msm_outer)
        self._msm_t = t
        return r

    @DEF@ @EXIT_NAME@(self, typ, val, tb):
        t = self._msm_t
        o = self._msm_outer
        if o is None:
            self._msm_t = None
        else:
            self._msm_t, self._msm_outer = o
        cm = self._msm_cm
        try:
            r = @AWAIT@@EXIT@
        except BaseException as e:
            if t is not None:
                RECORD(e)
            STRIP
            raise
        if t is not None:
            RECORD(val if val is not None else typ)
        return r
'''

_CALLS = {
    # (enter expression, exit expression) by exactness
    ("sync", True): ("type(self._msm_cm).__enter__(self._msm_cm)",
                     "type(cm).__exit__(cm, typ, val, tb)"),
    ("sync", False): ("BIND(self._msm_cm, '__enter__')()", "BIND(cm, '__exit__')(typ, val, tb)"),
    ("async", True): ("type(self._msm_cm).__aenter__(self._msm_cm)",
                      "type(cm).__aexit__(cm, typ, val, tb)"),
    ("async", False): ("BIND(self._msm_cm, '__aenter__')()", "BIND(cm, '__aexit__')(typ, val, tb)"),
}

_RECORDS = {
    "timer": "TIMER(PID, SID, t, 0 if X is None else 1)",
    "static": "SAMPLE(PID, t, 0 if X is None else 1, VALS)",
    "full": "FINISH(t, 0 if X is None else 1, cm, X, self._msm_args)",
}


def _methods(proto, fast, record):
    enter, exit_ = _CALLS[(proto, fast)]
    src = _ENTER
    if proto == "sync":
        src = (src.replace("@DEF@", "def").replace("@AWAIT@", "")
               .replace("@ENTER_NAME@", "__enter__").replace("@EXIT_NAME@", "__exit__"))
    else:
        src = (src.replace("@DEF@", "async def").replace("@AWAIT@", "await ")
               .replace("@ENTER_NAME@", "__aenter__").replace("@EXIT_NAME@", "__aexit__"))
    src = src.replace("@ENTER@", enter).replace("@EXIT@", exit_)
    src = src.replace("STRIP", "STRIPTB(e)" if _STRIP_TB else "pass")
    src = src.replace("RECORD(e)", record.replace("X", "e"))
    src = src.replace("RECORD(val if val is not None else typ)",
                      "x = val if val is not None else typ\n            " + record.replace("X", "x"))
    return src


class BlockScope:
    """The proxies of one probe with ``scope: block``.

    ``mode``/``consts``: the record hook the entry would have in call scope
    (``timer``: TIMER, PID, SID; ``static``: SAMPLE, PID, VALS; ``full``:
    FINISH), plus NOW. ``wrap`` is what the factory's wrapper calls."""

    def __init__(self, provider, probe_id, mode, consts):
        if mode not in _RECORDS:
            raise ValueError("scope block: unknown hook mode %r" % (mode,))
        self.provider = provider
        self.probe_id = probe_id
        self.mode = mode
        self.record = _RECORDS[mode]
        self.ns = {"__builtins__": builtins, "__name__": __name__, "STRIPTB": strip_traceback,
                   "BIND": bind_special}
        self.ns.update(consts)
        self._classes = {}  # (sync, async, fast) -> generated class
        # type of the returned object -> proxy class, read by the factory's wrapper
        # (BLOCKCLASSES), which sets the slots itself; other types go through wrap()
        self.by_type = {}
        self._not_cm = set()

    @property
    def needs_args(self):
        return self.mode == "full"

    def _build(self, sync, asyn, fast):
        key = (sync, asyn, fast)
        cls = self._classes.get(key)
        if cls is not None:
            return cls
        src = _HEAD
        if sync:
            src += _methods("sync", fast, self.record)
        if asyn:
            src += _methods("async", fast, self.record)
        ns = dict(self.ns)
        exec(compile(src, "<msm block proxy>", "exec", dont_inherit=True), ns)
        cls = ns["BlockProxy"]
        self._classes[key] = cls
        return cls

    def proxy_class(self, tp):
        """The proxy class for objects of type ``tp``, or None when ``tp`` is no
        context manager (neither protocol complete)."""
        cls = self.by_type.get(tp)
        if cls is None:
            if tp in self._not_cm:
                return None
            specials = {n: _special(tp, n) for n in ("__enter__", "__exit__", "__aenter__", "__aexit__")}
            sync = specials["__enter__"] is not None and specials["__exit__"] is not None
            asyn = specials["__aenter__"] is not None and specials["__aexit__"] is not None
            if not sync and not asyn:
                cls = _NOT_CM
            else:
                used = [f for n, f in specials.items() if f is not None
                        and ((sync and n in ("__enter__", "__exit__"))
                             or (asyn and n in ("__aenter__", "__aexit__")))]
                fast = all(isinstance(f, _PLAIN) for f in used)
                cls = self._build(sync, asyn, fast)
            if cls is _NOT_CM:
                if len(self._not_cm) < TYPE_CACHE_MAX:
                    self._not_cm.add(tp)
                return None
            if len(self.by_type) < TYPE_CACHE_MAX:
                self.by_type[tp] = cls
        return cls

    def wrap(self, cm, args):
        """Called by the factory's wrapper with its return value; never raises."""
        try:
            cls = self.proxy_class(type(cm))
            if cls is None:
                self.provider._expr_error(self.probe_id, ERROR_KEY, TypeError(
                    "the probed function returned %s, not a context manager (no __enter__/"
                    "__exit__ or __aenter__/__aexit__); passed through, not timed"
                    % type(cm).__name__))
                return cm
            return cls(cm, args)
        except Exception as e:
            try:
                self.provider._internal_error(e)
            except Exception:
                pass
            return cm
