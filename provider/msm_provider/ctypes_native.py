"""ctypes binding to the marker library, for interpreters that cannot load the stable-ABI
extension ``_msm_probe`` (the same file is also a plain C library exporting ``msm_emit`` and
``msm_semaphore``). Same interface as the extension: semaphore, now_ns, emit, timer, sample.

Slower than the extension (~160 ns per ctypes call instead of ~50 ns), so only a fallback.
``PyDLL`` keeps the GIL across the call: ``msm_emit`` is a nop, releasing the GIL would
cost more than the call.
"""
import ctypes
import struct
import time

ABI_VERSION = 1
MAX_VALUES = 64
MAX_PAYLOAD = 2048
KIND_SAMPLE = 1
KIND_JSON = 2
OP_OBSERVE_DURATION = 1
OP_OBSERVE = 2
OP_INC = 3
OP_SET = 4

_HEADER = struct.Struct("<HHI")          # struct msm_payload_header
_SAMPLE = struct.Struct("<HHIIIQ")       # struct msm_sample (header, status, reserved, start_ns)
_VALUE = struct.Struct("<IId")           # struct msm_value (value as binary64, same bits)


class CtypesNative:
    def __init__(self, path):
        self._lib = ctypes.PyDLL(path)
        self._emit = self._lib.msm_emit
        self._emit.restype = None
        self._emit.argtypes = (ctypes.c_char_p, ctypes.c_uint32)
        self._semaphore = ctypes.c_uint16.in_dll(self._lib, "msm_semaphore")
        self.now_ns = time.monotonic_ns  # CLOCK_MONOTONIC, as bpf_ktime_get_ns

    def semaphore(self):
        return self._semaphore.value

    def reset_semaphore_after_fork(self):
        self._semaphore.value = 0

    def emit(self, payload):
        payload = bytes(payload)
        self._emit(payload, len(payload))

    def timer(self, probe_id, series_id, start_ns, status):
        payload = _SAMPLE.pack(KIND_SAMPLE, 1, probe_id, status, 0, start_ns) + \
            _VALUE.pack(series_id, OP_OBSERVE_DURATION, 0.0)
        self._emit(payload, len(payload))

    def sample(self, probe_id, start_ns, status, values):
        values = tuple(values)
        if len(values) % 3:
            raise TypeError("values must be a flat (series_id, op, value, ...) sequence")
        triples = [values[i:i + 3] for i in range(0, len(values), 3)]
        first = True
        while triples or first:
            chunk, triples = triples[:MAX_VALUES], triples[MAX_VALUES:]
            payload = _SAMPLE.pack(KIND_SAMPLE, len(chunk), probe_id, status, 0,
                                   start_ns if first else 0)
            payload += b"".join(_VALUE.pack(int(s), int(o), float(v)) for s, o, v in chunk)
            self._emit(payload, len(payload))
            first = False
