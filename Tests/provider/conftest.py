"""Provider unit tests: compile the native extension once into a tmp dir
exactly as the build does, and put it and the provider package on sys.path."""

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROVIDER = os.path.join(REPO, "provider")


def _clang():
    for c in (os.environ.get("CLANG"), "/opt/swift/usr/bin/clang", shutil.which("clang")):
        if c and os.path.exists(c):
            return c
    pytest.skip("clang not found")


def _python_cflags():
    try:
        out = subprocess.run(["pkg-config", "--cflags", "python3"], capture_output=True,
                             text=True, check=True).stdout.split()
        if out:
            return out
    except Exception:
        pass
    import sysconfig
    return ["-I" + sysconfig.get_paths()["include"]]


def build_native(outdir):
    so = os.path.join(outdir, "_msm_probe.abi3.so")
    cmd = [_clang(), "-shared", "-fPIC", "-O2", "-g", "-Wall", "-Werror", "-fvisibility=hidden",
           "-fuse-ld=bfd", "-DPy_LIMITED_API=0x030a0000", "-I", os.path.join(REPO, "bpf")] \
        + _python_cflags() + [os.path.join(PROVIDER, "native", "msm_probe.c"), "-o", so]
    subprocess.run(cmd, check=True)
    return so


@pytest.fixture(scope="session")
def native_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("native"))
    build_native(d)
    return d


@pytest.fixture(scope="session")
def native(native_dir):
    if native_dir not in sys.path:
        sys.path.insert(0, native_dir)
    if PROVIDER not in sys.path:
        sys.path.insert(0, PROVIDER)
    import _msm_probe
    return _msm_probe


def decode(payload):
    kind, count, probe = struct.unpack_from("<HHI", payload, 0)
    if kind == 2:
        assert count == 0 and probe == 0
        return ("json", json.loads(payload[8:].decode("utf-8")))
    assert kind == 1, kind
    status, reserved, start = struct.unpack_from("<IIQ", payload, 8)
    assert reserved == 0
    assert len(payload) == 24 + 16 * count
    vals = []
    for i in range(count):
        sid, op, bits = struct.unpack_from("<IIQ", payload, 24 + 16 * i)
        vals.append((sid, op, struct.unpack("<d", struct.pack("<Q", bits))[0]))
    return ("sample", probe, status, start, vals)


class Capture:
    """Collects every payload the real extension passes to msm_emit."""

    def __init__(self, native):
        self.native = native
        self.raw = []
        native._debug_capture(self.raw)

    def close(self):
        self.native._debug_capture(None)

    def clear(self):
        del self.raw[:]

    def decoded(self):
        return [decode(p) for p in self.raw]

    def messages(self, type_=None):
        out = [d[1] for d in self.decoded() if d[0] == "json"]
        return [m for m in out if type_ is None or m["type"] == type_]

    def samples(self, probe=None):
        return [d for d in self.decoded() if d[0] == "sample" and (probe is None or d[1] == probe)]


@pytest.fixture
def capture(native):
    c = Capture(native)
    yield c
    c.close()


@pytest.fixture
def control_dir(tmp_path):
    d = tmp_path / "ctl"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    return d


def write_control(directory, doc):
    """Atomic write (temp + rename), mode 0644, like the agent."""
    path = os.path.join(str(directory), "control.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)
    return path


# --- CI: a skip is a failure (Tests/ci_policy.py) ---
import os as _os  # noqa: E402
import sys as _sys  # noqa: E402

_sys.path.insert(0, _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), ".."))
import ci_policy  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    ci_policy.enforce(item, outcome.get_result())


def pytest_terminal_summary(terminalreporter):
    ci_policy.summarize(terminalreporter)
