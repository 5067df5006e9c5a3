"""Handler functions: ``handler: module.path:function`` in a symbol entry.

After each call of the probed function (also when it raised) the provider
calls the handler with one :class:`Context`. The handler records the entry's
declared metrics with ``ctx.record(name, value, labels)``. Nothing a handler
does reaches the target: its exceptions and bad ``record`` calls are counted
as expression errors of the probe.

Handlers of the reference tool (module ``ms_service_metric`` or below) are
never imported: they are written against that tool's own registry, and the
metrics they produce come from ms-service-metric's default config instead.

Safe to import (:func:`check_module_source`), as sshd's StrictModes and sudo
check what they read: the agent runs as root and the target may too, so a
handler module that the target has not imported yet is imported only if
nobody but root could have written what the import runs. For each level of
the dotted name (``a``, ``a.b``, ``a.b.c``) that is not in ``sys.modules``,
the module's spec is found (``importlib.util.find_spec``, which imports the
parent: that parent has passed this check before) and these must be owned by
root (uid 0) and not writable by group or others: the source or extension
file, every directory from it up to ``/`` (symlinks on the way followed, each
owned by root; a world-writable directory with the sticky bit, like ``/tmp``,
is still refused), and the cached bytecode and its ``__pycache__`` directory
when they exist. A level found nowhere is left to the import to report
(ModuleNotFoundError). Built-in, frozen and namespace packages have no file
to check. Modules already in ``sys.modules`` are the target's own code and are
not checked. The check covers the files importing the handler's module runs
directly, not the modules those import in turn. A refusal puts the probe in
state ``error`` with a detail naming the file, its owner and mode.
"""

import importlib
import importlib.util
import os
import stat
import sys

from . import control as _control

__all__ = ["Context", "Recorder", "load_handler", "is_reference_handler",
           "reference_detail", "REFERENCE_STATE", "split_arguments", "check_module_source",
           "UnsafeModuleError"]

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


class UnsafeModuleError(ValueError):
    """A module file (or a directory above it) could have been written by someone else than
    root."""


_MAX_SYMLINKS = 40


def _trusted_uid():
    return _control.TRUSTED_UID


def _owner_name(uid):
    return "root" if uid == 0 else "uid %d" % uid


def _problem(path, st, kind):
    """Why ``path`` (lstat/stat result ``st``) is not trusted, or None."""
    trusted = _trusted_uid()
    bad_owner = st.st_uid != trusted
    # a symlink's own mode means nothing
    bad_mode = not stat.S_ISLNK(st.st_mode) and bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
    if not bad_owner and not bad_mode:
        return None
    what = []
    if bad_owner:
        what.append("not owned by %s" % _owner_name(trusted))
    if bad_mode:
        what.append("writable by %s" % " and ".join(
            w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
            if st.st_mode & bit))
        if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
            what[-1] += " (sticky bit or not)"
    return "%s %s (owner %s, mode %04o) is %s" % (
        kind, path, _owner_name(st.st_uid), stat.S_IMODE(st.st_mode), " and is ".join(what))


def _check_path(path, problems):
    """Check every directory from / down to ``path``, every symlink followed on the way
    (resolved hop by hop) and ``path`` itself; append what is wrong to ``problems``."""
    pending = [c for c in os.path.abspath(path).split("/") if c]
    cur = "/"
    _check_entry(cur, os.stat(cur), "directory", problems)
    hops = 0
    while pending:
        comp = pending.pop(0)
        if comp == ".":
            continue
        if comp == "..":
            cur = os.path.dirname(cur) or "/"
            continue
        nxt = os.path.join(cur, comp)
        st = os.lstat(nxt)
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise OSError("too many levels of symbolic links in %s" % path)
            _check_entry(nxt, st, "symlink", problems)
            target = os.readlink(nxt)
            if target.startswith("/"):
                cur = "/"
            pending[:0] = [c for c in target.split("/") if c]
            continue
        if pending:
            kind = "directory"
        elif stat.S_ISREG(st.st_mode):
            kind = "file"
        elif stat.S_ISDIR(st.st_mode):
            kind = "directory"
        else:
            problems.append("%s is not a regular file" % nxt)
            return
        _check_entry(nxt, st, kind, problems)
        cur = nxt


def _check_entry(path, st, kind, problems):
    p = _problem(path, st, kind)
    if p is not None and p not in problems:
        problems.append(p)


def _spec_files(spec):
    """Paths whose contents (or whose directory's contents) importing ``spec`` runs."""
    out = []
    if not getattr(spec, "has_location", False) or spec.origin is None:
        return out  # built-in, frozen, namespace package: nothing on disk to run
    origin = spec.origin
    if os.path.lexists(origin):
        out.append(origin)
    else:
        archive = getattr(spec.loader, "archive", None)  # zipimport: origin is inside the zip
        if isinstance(archive, str) and os.path.lexists(archive):
            out.append(archive)
        else:
            raise UnsafeModuleError("cannot check %s: no such file" % origin)
    cached = getattr(spec, "cached", None)
    if isinstance(cached, str):
        if os.path.lexists(cached):
            out.append(cached)
        elif os.path.isdir(os.path.dirname(cached)):
            out.append(os.path.dirname(cached))  # bytecode someone could plant there later
    return out


def check_module_source(modname):
    """Raise UnsafeModuleError unless every file importing ``modname`` would run is owned by
    root and not writable by group or others, as is every directory above it (module
    docstring). Parent packages not imported yet are checked, then imported, level by level."""
    parts = modname.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[:i + 1])
        if name in sys.modules:
            continue
        if i:
            importlib.import_module(".".join(parts[:i]))  # checked at the previous level
        spec = importlib.util.find_spec(name)
        if spec is None:
            return  # the import reports it
        problems = []
        for f in _spec_files(spec):
            try:
                _check_path(f, problems)
            except OSError as e:
                raise UnsafeModuleError("cannot check %s: %s" % (f, e.strerror or e)) from None
        if problems:
            problems.reverse()  # the file first, then the directories above it
            who = _owner_name(_trusted_uid())
            raise UnsafeModuleError(
                "%s: chown %s and chmod go-w it, or move the module (a handler module the "
                "target has not imported yet, and every directory above it, must be owned by "
                "%s and not writable by group or others)%s"
                % (problems[0], who.replace("uid ", ""), who,
                   "; also: " + "; ".join(problems[1:]) if len(problems) > 1 else ""))
        if spec.submodule_search_locations is None and i < len(parts) - 1:
            return  # not a package: the import reports it


def load_handler(path):
    """Import the handler's module (in the target, at install time) and return the function.

    A module not imported yet is imported only when it is safe (:func:`check_module_source`)."""
    modname, qual = split_path(path)
    try:
        if modname not in sys.modules:
            check_module_source(modname)
        obj = importlib.import_module(modname)
    except UnsafeModuleError as e:
        raise ValueError("handler %s: refusing to import module %s: %s" % (path, modname, e)) \
            from None
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
