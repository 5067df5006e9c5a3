"""Handler functions: ``handler: module.path:function`` in a symbol entry.

After each call of the probed function (also when it raised) the provider
calls the handler with one :class:`Context`. The handler records the entry's
declared metrics with ``ctx.record(name, value, labels)``. Nothing a handler
does reaches the target: its exceptions and bad ``record`` calls are counted
as expression errors of the probe.

Handlers of the reference tool (module ``ms_service_metric`` or below) are
never imported: they are written against that tool's own registry, and the
metrics they produce come from ms-service-metric's default config instead.
"""

import importlib

__all__ = ["Context", "Recorder", "load_handler", "is_reference_handler",
           "reference_detail", "REFERENCE_STATE", "split_arguments"]

REFERENCE_PACKAGE = "ms_service_metric"
REFERENCE_STATE = "builtin_handler_unavailable"

OP_OBSERVE = 2


def split_path(path):
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError("handler %r: expected module.path:function" % (path,))
    modname, qual = path.split(":")
    if not all(p.isidentifier() for p in modname.split(".") + qual.split(".")):
        raise ValueError("handler %r: expected module.path:function (dotted Python identifiers)"
                           % (path,))
    return modname, qual


def is_reference_handler(path):
    modname = split_path(path)[0]
    return modname == REFERENCE_PACKAGE or modname.startswith(REFERENCE_PACKAGE + ".")


def reference_detail(path):
    return ("reference-tool handler %s: the built-in metrics are provided by ms-service-metric's "
            "default config (Config/default.yaml); remove the handler line or name your own "
            "function. This entry's timers and metrics with expr are still recorded" % path)


def load_handler(path):
    """Import the handler's module (in the target, at install time) and return the function."""
    modname, qual = split_path(path)
    try:
        obj = importlib.import_module(modname)
    except Exception as e:
        raise ValueError("handler %s: cannot import module %s (%s: %s); is it on the target's "
                           "sys.path?" % (path, modname, type(e).__name__, e)) from None
    where = modname
    for part in qual.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError("handler %s: %s has no attribute %s" % (path, where, part)) from None
        where += "." + part
    if not callable(obj):
        raise ValueError("handler %s: %s is not callable" % (path, where))
    return obj


def split_arguments(values, shape):
    """(args tuple, kwargs dict) from the wrapper's parameter tuple.

    ``shape`` is (positional count, has *args, keyword-only names, has **kwargs)."""
    npos, varargs, kwnames, varkw = shape
    args = values[:npos]
    i = npos
    if varargs:
        args = args + tuple(values[i])
        i += 1
    kwargs = {}
    for n in kwnames:
        kwargs[n] = values[i]
        i += 1
    if varkw:
        kwargs.update(values[i])
    return args, kwargs


class Context:
    """What a handler gets: the call and ``record``."""

    __slots__ = ("args", "kwargs", "self", "ret", "exc", "duration", "_recorder", "_vals")

    def __init__(self, args, kwargs, self_, ret, exc, duration, recorder, vals):
        self.args = args
        self.kwargs = kwargs
        self.self = self_
        self.ret = ret
        self.exc = exc
        self.duration = duration
        self._recorder = recorder
        self._vals = vals

    def record(self, name, value, labels=None):
        """Record ``value`` for the declared metric ``name`` (without the vllm_profiling_
        prefix); ``labels``: dict of the metric's declared label names to values.
        Histograms take a number or a list of numbers. Never raises: mistakes are counted."""
        self._recorder.record(self._vals, name, value, labels)

    def __repr__(self):
        return "<msm handler context args=%d kwargs=%s exc=%r duration=%r>" % (
            len(self.args), sorted(self.kwargs), self.exc, self.duration)


class Recorder:
    """Checks ``ctx.record`` calls of one probe against its declared metrics."""

    def __init__(self, provider, probe_id, path, metrics):
        self.provider = provider
        self.probe_id = probe_id
        self.error_key = "handler " + path
        self.by_name = {m.name: m for m in metrics if m.type != "timer"}
        self.timers = sorted(m.name for m in metrics if m.type == "timer")

    def record(self, vals, name, value, labels):
        try:
            if vals is None:
                raise RuntimeError("ctx.record(%r) after the handler returned" % (name,))
            m = self.by_name.get(name)
            if m is None:
                if name in self.timers:
                    raise ValueError("%r is a timer: it is recorded automatically" % (name,))
                raise ValueError("metric %r is not declared in this handler's entry (declared: %s)"
                                 % (name, ", ".join(sorted(self.by_name)) or "none"))
        except Exception as e:
            self.provider._expr_error(self.probe_id, self.error_key, e)
            return
        try:
            sid = self._series(m, labels)
            if isinstance(value, (str, bytes)):
                raise TypeError("value must be a number, not %s" % type(value).__name__)
            if m.op == OP_OBSERVE and isinstance(value, (list, tuple)):
                obs = [float(x) for x in value]
                for x in obs:
                    vals += (sid, OP_OBSERVE, x)
            else:
                vals += (sid, m.op, float(value))
        except Exception as e:
            self.provider._expr_error(self.probe_id, m.name, e)

    def _series(self, m, labels):
        names = m.label_names
        if labels is None:
            labels = {}
        if not isinstance(labels, dict):
            raise TypeError("labels must be a dict of label name to value, not %s"
                            % type(labels).__name__)
        if len(labels) != len(names) or any(n not in labels for n in names):
            raise ValueError("metric %r takes labels [%s], got [%s]" % (
                m.name, ", ".join(names), ", ".join(sorted(map(str, labels)))))
        if not names:
            if m.sid is None:
                m.sid = self.provider._series.get(m.name, (), ())
            return m.sid
        lv = tuple(str(labels[n]) for n in names)
        sid = m.cache.get(lv)
        return sid if sid is not None else self.provider._series.get_for(m, lv)
