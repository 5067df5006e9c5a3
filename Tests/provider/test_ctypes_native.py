"""The ctypes fallback packs exactly the bytes the C extension packs."""
import os
import sys


def CtypesNative(path):
    # Imported late: the `native` fixture puts the provider on sys.path.
    from msm_provider.ctypes_native import CtypesNative as Binding
    return Binding(path)


def capture_c(native, call):
    raw = []
    native._debug_capture(raw)
    try:
        call(native)
    finally:
        native._debug_capture(None)
    return [bytes(r) for r in raw]


def capture_ctypes(native_dir, call):
    fallback = CtypesNative(os.path.join(native_dir, "_msm_probe.abi3.so"))
    raw = []
    fallback._emit = lambda payload, length: raw.append(bytes(payload[:length]))
    call(fallback)
    return raw


def test_timer_payload_matches_extension(native, native_dir):
    call = lambda n: n.timer(3, 7, 123456789, 1)
    assert capture_ctypes(native_dir, call) == capture_c(native, call)


def test_sample_payload_and_split_match_extension(native, native_dir):
    values = tuple(x for i in range(70) for x in (i, 2 + i % 3, i * 0.5))
    call = lambda n: n.sample(9, 42, 0, values)
    c_payloads = capture_c(native, call)
    assert len(c_payloads) == 2  # 64 + 6 values
    assert capture_ctypes(native_dir, call) == c_payloads


def test_semaphore_and_real_emit_call(native, native_dir):
    fallback = CtypesNative(os.path.join(native_dir, "_msm_probe.abi3.so"))
    assert fallback.semaphore() == 0  # no agent attached
    fallback.emit(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")  # the real marker: a nop without uprobe
    assert fallback.now_ns() > 0


def test_load_native_falls_back_to_ctypes(native, native_dir, monkeypatch):
    """When the extension cannot be imported, load_native returns the ctypes binding."""
    import importlib.util
    from msm_provider import provider as provider_module

    def refuse(*args, **kwargs):
        raise ImportError("simulated: no stable-ABI support")

    monkeypatch.setattr(importlib.util, "spec_from_file_location", refuse)
    monkeypatch.delitem(sys.modules, "_msm_probe", raising=False)
    binding = provider_module.load_native(os.path.join(native_dir, "_msm_probe.abi3.so"))
    assert type(binding).__name__ == "CtypesNative"
    assert binding.semaphore() == 0
