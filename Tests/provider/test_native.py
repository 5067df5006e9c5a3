"""The real compiled extension: loads, calls, payload layout, marker shape."""

import ctypes
import os
import subprocess
import time

import pytest

from conftest import decode, build_native


def test_module_functions(native):
    assert native.semaphore() == 0  # no uprobe attached in tests
    a = native.now_ns()
    b = time.monotonic_ns()
    c = native.now_ns()
    assert a <= b <= c  # same clock as time.monotonic_ns / bpf_ktime_get_ns
    assert native.emit(b"\x00" * 8) is None  # a nop without an agent
    assert native.timer(1, 2, a, 0) is None
    assert native.sample(1, a, 1, (1, 2, 3.5)) is None
    assert native.ABI_VERSION == 1 and native.MAX_VALUES == 64


def test_timer_payload(native, capture):
    native.timer(7, 3, 123456789, 1)
    [(kind, probe, status, start, vals)] = capture.decoded()
    assert (kind, probe, status, start) == ("sample", 7, 1, 123456789)
    assert vals == [(3, 1, 0.0)]


def test_sample_payload_and_split(native, capture):
    native.sample(5, 99, 0, (1, 2, 0.25, 2, 3, 1, 3, 4, -2.5))
    [(_, probe, status, start, vals)] = capture.decoded()
    assert (probe, status, start) == (5, 0, 99)
    assert vals == [(1, 2, 0.25), (2, 3, 1.0), (3, 4, -2.5)]
    capture.clear()
    flat = []
    for i in range(150):
        flat += [i, 2, float(i)]
    native.sample(9, 42, 0, flat)  # lists work too
    d = capture.decoded()
    assert [len(x[4]) for x in d] == [64, 64, 22]
    assert [x[3] for x in d] == [42, 0, 0]  # follow-up samples carry start_ns 0
    assert [v for x in d for v in x[4]] == [(i, 2, float(i)) for i in range(150)]
    assert max(len(p) for p in capture.raw) <= native.MAX_PAYLOAD


def test_bad_arguments_raise_cleanly(native):
    with pytest.raises(TypeError):
        native.sample(1, 2, 3)
    with pytest.raises(ValueError):
        native.sample(1, 2, 0, (1, 2))
    with pytest.raises(TypeError):
        native.emit("str")
    with pytest.raises(OverflowError):
        native.timer(1 << 40, 0, 0, 0)


def test_marker_shape(native_dir):
    so = os.path.join(native_dir, "_msm_probe.abi3.so")
    lib = ctypes.CDLL(so)
    addr = ctypes.cast(lib.msm_emit, ctypes.c_void_p).value
    # A one-byte nop like a USDT site, then ret: never nop5 (the kernel would turn a probed
    # nop5 into a call to a trampoline page that forked children do not have).
    assert ctypes.string_at(addr, 2) == b"\x90\xc3"
    sem = ctypes.c_uint16.in_dll(lib, "msm_semaphore")
    assert sem.value == 0
    out = subprocess.run(["readelf", "-sSW", so], capture_output=True, text=True)
    if out.returncode == 0:
        assert ".probes" in out.stdout
        line = [x for x in out.stdout.splitlines() if x.endswith(" msm_semaphore")][0]
        assert "GLOBAL DEFAULT" in line
        assert "OBJECT" in line


def test_semaphore_is_read_live(native_dir, native):
    # Raise the counter in memory like the kernel does and watch semaphore().
    import _msm_probe
    lib = ctypes.CDLL(_msm_probe.__file__)  # same mapping as the extension
    sem = ctypes.c_uint16.in_dll(lib, "msm_semaphore")
    sem.value = 2
    try:
        assert native.semaphore() == 2
    finally:
        sem.value = 0
    assert native.semaphore() == 0
