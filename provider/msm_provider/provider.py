"""The probe provider: dormant poll loop, control file, probes, series, messages.

Lifecycle::

    dormant ──semaphore≠0──▶ read control file (if changed) ──▶ apply generation
       ▲                                                         │ hello, series,
       │                                                         │ probe states, ack
       └──── semaphore back to 0: restore everything silently ◀──┘
             (dead-man switch: the agent died or detached)

Nothing here ever raises into the target: hooks are guarded, the poll thread
catches everything, failures degrade to "not measured".
"""

import json
import os
import struct
import sys
import threading
import time
from collections.abc import Mapping as _Mapping

from . import control as _control
from . import handlers as _handlers

__all__ = ["Provider", "load_native", "PROVIDER_VERSION"]

PROVIDER_VERSION = "0.1.0"
ABI_VERSION = 1

KIND_JSON = 2
OP_OBSERVE_DURATION = 1
OP_OBSERVE = 2
OP_INC = 3
OP_SET = 4
MAX_PAYLOAD = 2048
_JSON_HEADER = struct.pack("<HHI", KIND_JSON, 0, 0)

LABEL_VALUE_MAX = 128
SERIES_PER_METRIC_MAX = 1000
EXPR_ERROR_INTERVAL = 1.0
SCOPES = ("call", "block")
METRIC_TYPES = {"timer": OP_OBSERVE_DURATION, "histogram": OP_OBSERVE,
                "counter": OP_INC, "gauge": OP_SET}


def load_native(path=None):
    """Import the native extension ``_msm_probe``.

    ``path`` given (injected provider): exactly that file, nothing on sys.path.
    Otherwise sys.path first, then $MS_SERVICE_METRIC_PROVIDER."""
    if path is not None:
        loaded = sys.modules.get("_msm_probe")
        if loaded is not None:
            return loaded
    else:
        try:
            import _msm_probe
            return _msm_probe
        except ImportError:
            d = os.environ.get("MS_SERVICE_METRIC_PROVIDER")
            if not d:
                raise
        path = os.path.join(d, "_msm_probe.abi3.so")
    import importlib.util
    try:
        spec = importlib.util.spec_from_file_location("_msm_probe", path)
        if spec is None:
            raise ImportError("cannot load %s" % path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except ImportError:
        # An interpreter that cannot load the stable-ABI extension (e.g. a free-threaded
        # build) still reaches the same markers through ctypes, only slower.
        from .ctypes_native import CtypesNative
        return CtypesNative(path)
    sys.modules["_msm_probe"] = mod
    return mod


def _describe(e):
    text = str(e) if type(e) is ValueError else "%s: %s" % (type(e).__name__, e)
    return _truncate(text, 500)


def _truncate(s, n):
    s = str(s)
    return s if len(s) <= n else s[:n]


# A JSON record takes 2 KiB of ring buffer, which the agent drains every 5 ms when busy:
# 8 records every 20 ms fit even a 16 KiB ring; a 16 MiB one holds 8000 at once.
RESEND_BATCH = 8
RESEND_PAUSE = 0.02


def _resend_counter(doc):
    """The agent's request counter for this process in a control document (None: none)."""
    resend = doc.get("resend")
    if not isinstance(resend, dict):
        return None
    return resend.get(str(os.getpid()))


class CardinalityError(Exception):
    pass


class _SeriesRegistry:
    """Per-process series ids for distinct (metric, labels); announced once."""

    def __init__(self, provider):
        self._provider = provider
        self._ids = {}
        self._list = []  # id -> (metric, {labels})
        self._per_metric = {}
        self._lock = threading.Lock()

    def reinit_lock(self):
        self._lock = threading.Lock()

    def get(self, metric, names, values):
        key = (metric, names, values)
        sid = self._ids.get(key)
        if sid is not None:
            return sid
        with self._lock:
            sid = self._ids.get(key)
            if sid is not None:
                return sid
            n = self._per_metric.get(metric, 0)
            if n >= SERIES_PER_METRIC_MAX:
                raise CardinalityError("label cardinality limit (%d series) reached for %s"
                                       % (SERIES_PER_METRIC_MAX, metric))
            sid = len(self._list)
            labels = dict(zip(names, values))
            self._list.append((metric, labels))
            self._per_metric[metric] = n + 1
            self._provider._send({"type": "series", "id": sid, "metric": metric, "labels": labels})
            self._ids[key] = sid
            return sid

    def get_for(self, m, key):
        """Series id of metric ``m`` for label values ``key`` (cached in m)."""
        sid = self.get(m.name, m.label_names, tuple(_truncate(v, LABEL_VALUE_MAX) for v in key))
        if len(m.cache) < 4 * SERIES_PER_METRIC_MAX:
            m.cache[key] = sid
        return sid

    def announce_all(self, paced=False):
        """Every series again. ``paced``: in batches of RESEND_BATCH a few ms apart (from the
        provider's thread, on the agent's request after a full ring buffer lost
        announcements: a burst of thousands would overflow it again)."""
        with self._lock:
            items = list(enumerate(self._list))
        for n, (sid, (metric, labels)) in enumerate(items):
            if paced and n and n % RESEND_BATCH == 0:
                time.sleep(RESEND_PAUSE)
            self._provider._send({"type": "series", "id": sid, "metric": metric, "labels": labels})


class _Metric:
    __slots__ = ("name", "type", "op", "expr", "labels", "value_fn", "label_names",
                 "label_fns", "entry_label_fn", "sid", "cache", "by_handler")

    def __init__(self, spec, handler=False):
        """``handler``: the probe names a handler; a metric without expr that is not
        a timer is then recorded by it alone (labels by name, no expr)."""
        if not isinstance(spec, dict):
            raise ValueError("metric must be an object")
        self.name = spec.get("name")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("metric without a name")
        self.type = spec.get("type")
        if self.type not in METRIC_TYPES:
            raise ValueError("metric %s: unknown type %r" % (self.name, self.type))
        self.op = METRIC_TYPES[self.type]
        self.expr = spec.get("expr")
        if self.type == "timer":
            self.expr = None
        self.by_handler = handler and self.type != "timer" and not self.expr
        if self.type in ("histogram", "gauge") and not self.expr and not self.by_handler:
            raise ValueError("metric %s: %s needs an expr" % (self.name, self.type))
        labels = spec.get("labels") or []
        if not isinstance(labels, list):
            raise ValueError("metric %s: labels must be a list" % self.name)
        self.labels = []
        for lab in labels:
            if not isinstance(lab, dict) or not isinstance(lab.get("name"), str):
                raise ValueError("metric %s: label needs a name" % self.name)
            if self.by_handler:
                self.labels.append((lab["name"], None))
            elif isinstance(lab.get("expr"), str):
                self.labels.append((lab["name"], lab["expr"]))
            else:
                raise ValueError("metric %s: label needs name and expr" % self.name)
        self.value_fn = None
        self.label_names = tuple(n for n, _ in self.labels)
        self.label_fns = None  # one function returning the tuple of label values
        # the same with the key of a dict entry as one more argument (metrics with expr)
        self.entry_label_fn = None
        self.sid = None
        self.cache = {}  # label values (str, untruncated) -> series id

    @property
    def static(self):
        return not self.labels and (self.type == "timer" or (self.type == "counter" and not self.expr))

    def exprs(self):
        if self.expr:
            yield "expr", self.expr
        for n, e in self.labels:
            if e is not None:
                yield "label %s" % n, e


class _FullHook:
    """Python hook of probes with expressions or labels."""

    __slots__ = ("provider", "probe_id", "metrics", "now", "sample", "need_duration", "special",
                 "handler")

    def __init__(self, provider, probe_id, metrics, need_duration, special, handler=None):
        self.provider = provider
        self.handler = handler  # _HandlerCall or None
        self.probe_id = probe_id
        self.metrics = metrics
        self.now = provider.native.now_ns
        self.sample = provider.native.sample
        self.need_duration = need_duration
        # indices into (ret, duration, exc) of the specials that are not
        # shadowed by a parameter of the same name
        self.special = special

    def finish(self, t, status, ret, exc, args):
        try:
            dur = (self.now() - t) / 1e9 if self.need_duration else None
            triple = (ret, dur, exc)
            sp = self.special
            if sp is None:
                full = args + triple
            else:
                full = args + tuple([triple[i] for i in sp])
            first = []
            vals = []
            for m in self.metrics:
                try:
                    if m.op == OP_OBSERVE_DURATION:
                        first += (self._sid(m, full), OP_OBSERVE_DURATION, 0.0)
                        continue
                    v = m.value_fn(*full) if m.value_fn is not None else 1.0
                    if v is None:
                        continue
                    tv = type(v)
                    if tv is not int and tv is not float and isinstance(v, _Mapping):
                        self._entries(m, v, full, vals)
                        continue
                    sid = self._sid(m, full)
                    if m.op == OP_OBSERVE and isinstance(v, (list, tuple)):
                        for x in v:
                            vals += (sid, OP_OBSERVE, float(x))
                    else:
                        vals += (sid, m.op, float(v))
                except Exception as e:
                    self.provider._expr_error(self.probe_id, m.name, e)
            if self.handler is not None:
                self.handler.call(args, ret, exc, dur, vals)
            if first or vals:
                self.sample(self.probe_id, t, status, tuple(first + vals))
        except Exception as e:
            self.provider._internal_error(e)

    def _sid(self, m, full):
        """Series id of ``m`` for this call (labels evaluated without an entry key)."""
        if m.label_fns is None:
            return m.sid
        lv = tuple(map(str, m.label_fns(*full)))
        sid = m.cache.get(lv)
        return sid if sid is not None else self.provider._series.get_for(m, lv)

    def _entries(self, m, d, full, vals):
        """A dict result: one sample per entry, labels evaluated with its key."""
        op = m.op
        fn = m.entry_label_fn
        for k, x in list(d.items()):
            try:
                if x is None:
                    continue
                if fn is None:
                    sid = m.sid
                else:
                    lv = tuple(map(str, fn(*full, k)))
                    sid = m.cache.get(lv)
                    if sid is None:
                        sid = self.provider._series.get_for(m, lv)
                if op == OP_OBSERVE and isinstance(x, (list, tuple)):
                    for y in x:
                        vals += (sid, OP_OBSERVE, float(y))
                else:
                    vals += (sid, op, float(x))
            except Exception as e:
                self.provider._expr_error(self.probe_id, m.name, e)


class _HandlerCall:
    """Calls a probe's handler with a fresh context after each call."""

    __slots__ = ("fn", "recorder", "shape", "method", "provider", "probe_id")

    def __init__(self, provider, probe_id, fn, recorder, shape, method):
        self.provider = provider
        self.probe_id = probe_id
        self.fn = fn
        self.recorder = recorder
        self.shape = shape
        self.method = method

    def call(self, values, ret, exc, duration, vals):
        args, kwargs = _handlers.split_arguments(values, self.shape)
        ctx = _handlers.Context(args, kwargs, args[0] if self.method and args else None,
                                ret, exc, duration, self.recorder, vals)
        try:
            self.fn(ctx)
        except Exception as e:
            self.provider._expr_error(self.probe_id, self.recorder.error_key, e)
        finally:
            ctx._vals = None


def _key_without_dict(*args):
    raise LookupError("a label uses 'key', but the value expression did not return a dict")


class _Probe:
    def __init__(self, spec):
        self.spec = spec
        self.id = spec.get("id")
        self.symbol = spec.get("symbol")
        self.state = "error"
        self.detail = ""
        self.patch = None
        self.module = None
        self.pending = False
        self.metrics = []
        self.handler = spec.get("handler")  # "module:function" or None
        # "call" (time the call) or "block" (time the with-block of the returned
        # context manager); absent: "call"
        self.scope = spec.get("scope") or "call"


class _ImportHook:
    """sys.meta_path finder: instruments pending modules right after they run."""

    def __init__(self, provider):
        self.provider = provider
        self._local = threading.local()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.provider._pending_modules:
            return None
        if getattr(self._local, "busy", False):
            return None
        self._local.busy = True
        try:
            try:
                idx = sys.meta_path.index(self)
            except ValueError:
                return None
            spec = None
            for finder in sys.meta_path[idx + 1:]:
                fs = getattr(finder, "find_spec", None)
                if fs is None:
                    continue
                spec = fs(fullname, path, target)
                if spec is not None:
                    break
            if spec is None or spec.loader is None:
                return spec
            self._wrap_loader(spec.loader, fullname)
            return spec
        except Exception:
            return None
        finally:
            self._local.busy = False

    def _wrap_loader(self, loader, fullname):
        if isinstance(loader, type) or not hasattr(loader, "__dict__") \
                or "exec_module" in loader.__dict__:
            return
        orig = getattr(loader, "exec_module", None)
        if orig is None:
            return
        provider = self.provider

        def exec_module(module):
            try:
                orig(module)
            finally:
                try:
                    if loader.__dict__.get("exec_module") is exec_module:
                        del loader.exec_module
                except Exception:
                    pass
            provider._on_module_imported(fullname)

        try:
            loader.exec_module = exec_module
        except Exception:
            pass


class Provider:
    """One per process. ``native`` provides semaphore/now_ns/emit/timer/sample
    (the ``_msm_probe`` module, or a test double)."""

    def __init__(self, native=None, control_path=None, semaphore=None, poll_interval=0.25,
                 vllm_version=None, detect_vllm=True, log=None, native_path=None, origin="exec"):
        self.native = native if native is not None else load_native(native_path)
        # "exec" (preloaded by `ms-service-metric exec`) or "injected" (ptrace): an injected
        # provider stops its thread too when the agent disables it or goes away.
        self.origin = origin
        self.control_path = control_path or _control.control_path()
        self._semaphore = semaphore or self.native.semaphore
        self.poll_interval = poll_interval
        self._vllm_version = vllm_version
        self._vllm_detected = vllm_version is not None or not detect_vllm
        self._log = log
        self._lock = threading.RLock()
        self._series = _SeriesRegistry(self)
        self._probes = []
        self._pending_modules = {}
        self._import_hook = None
        self._attached = False
        self._instrumented = False
        self._applied_generation = None
        self._applied_enabled = None
        self._control_sig = None
        self._warned = set()
        self._expr_errors = {}
        self._internal_errors = 0
        self._resend = False
        # The agent's `resend` counter for this process (control file) as last seen.
        self._resend_seen = None
        self._thread = None
        self._stop = threading.Event()
        self._patcher = None
        self._exprs = None
        self._blocks = None
        self._executed_module = None

    # ------------------------------------------------------------ messages

    def _send(self, obj):
        try:
            data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()
            if len(data) + 8 > MAX_PAYLOAD:
                data = self._shrink(obj)
            self.native.emit(_JSON_HEADER + data)
        except Exception as e:
            self._internal_error(e)

    def _shrink(self, obj):
        obj = dict(obj)
        for limit in (512, 128, 32, 8):
            for k, v in list(obj.items()):
                if isinstance(v, str):
                    obj[k] = v[:limit]
                elif isinstance(v, list):
                    obj[k] = [str(x)[:limit] for x in v[:max(1, limit // 8)]]
                elif isinstance(v, dict):
                    obj[k] = {str(a)[:limit]: str(b)[:limit] for a, b in v.items()}
            data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()
            if len(data) + 8 <= MAX_PAYLOAD:
                return data
        return data[:MAX_PAYLOAD - 8]

    def _warn(self, msg):
        if msg in self._warned:
            return
        self._warned.add(msg)
        if len(self._warned) > 100:
            self._warned.clear()
        line = "ms-service-metric provider (pid %d): %s" % (os.getpid(), msg)
        if self._log is not None:
            self._log(line)
            return
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:
            pass

    def _internal_error(self, e):
        self._internal_errors += 1

    def _expr_error(self, probe_id, metric, e):
        try:
            key = (probe_id, metric)
            rec = self._expr_errors.get(key)
            if rec is None:
                rec = self._expr_errors[key] = [0, "", 0.0, 0]  # count, msg, last sent, sent count
            rec[0] += 1
            rec[1] = _truncate("%s: %s" % (type(e).__name__, e), 300)
            now = time.monotonic()
            if now - rec[2] >= EXPR_ERROR_INTERVAL:
                rec[2] = now
                rec[3] = rec[0]
                self._send({"type": "expr_error", "probe": probe_id, "metric": metric,
                            "count": rec[0], "message": rec[1]})
        except Exception:
            pass

    def _flush_expr_errors(self):
        now = time.monotonic()
        for (probe_id, metric), rec in list(self._expr_errors.items()):
            if rec[3] != rec[0] and now - rec[2] >= EXPR_ERROR_INTERVAL:
                rec[2] = now
                rec[3] = rec[0]
                self._send({"type": "expr_error", "probe": probe_id, "metric": metric,
                            "count": rec[0], "message": rec[1]})

    def _title(self):
        try:
            with open("/proc/self/cmdline", "rb") as f:
                raw = f.read(4096)
            parts = [p for p in raw.split(b"\0") if p]
            return b" ".join(parts).decode("utf-8", "replace").strip()
        except Exception:
            return ""

    def _hello(self, generation):
        try:
            with open("/proc/self/comm", "rb") as f:
                comm = f.read(64).decode("utf-8", "replace").strip()
        except Exception:
            comm = ""
        vi = sys.version_info
        self._send({
            "type": "hello", "pid": os.getpid(),
            "python": "%d.%d.%d" % (vi[0], vi[1], vi[2]),
            "implementation": sys.implementation.name,
            "executable": sys.executable or "",
            "argv": [str(a) for a in getattr(sys, "argv", [])],
            "title": self._title(), "comm": comm,
            "vllm_version": self._vllm_version,
            "provider_version": PROVIDER_VERSION, "abi": ABI_VERSION,
            "generation": generation, "origin": self.origin,
        })

    def _send_probe(self, p):
        self._send({"type": "probe", "probe": p.id, "state": p.state, "detail": p.detail})

    def _send_ack(self):
        self._send({"type": "ack", "generation": self._applied_generation,
                    "enabled": bool(self._applied_enabled),
                    "instrumented": sum(1 for p in self._probes if p.state == "active")})

    # ------------------------------------------------------------ lifecycle

    def start(self):
        """Start the dormant poll thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            t = threading.Thread(target=self._run, name="msm-provider", daemon=True)
            self._thread = t
            t.start()

    def stop(self, restore=True):
        """Stop the poll thread and (by default) restore every function."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=2)
        self._thread = None
        if restore:
            with self._lock:
                self._restore_all()
                self._instrumented = False
                self._applied_generation = None

    def _retire(self):
        """Injected provider released by the agent: the poll thread ends (after the
        restore, under the lock). A later injection's start() starts a new one."""
        if self.origin == "injected":
            self._attached = False  # a restarted thread begins dormant
            self._stop.set()
            if self._thread is threading.current_thread():
                self._thread = None

    def _run(self):
        stop = self._stop
        name = getattr(self.native, "name_this_thread", None)
        if name is not None:
            try:
                name()  # the agent tells a live provider from a retired one by this name
            except Exception:
                pass
        while not stop.is_set():
            try:
                self.poll_once()
            except BaseException as e:  # never let the thread die
                try:
                    self._warn("poll failed: %s: %s" % (type(e).__name__, e))
                except BaseException:
                    pass
            stop.wait(self.poll_interval)

    def after_fork_child(self):
        """Called in a forked child: new locks, restart the thread, re-send hello."""
        # The copied semaphore counts the parent's attachment, not ours.
        reset = getattr(self.native, "reset_semaphore_after_fork", None)
        if reset is not None:
            try:
                reset()
            except Exception:
                pass
        self._lock = threading.RLock()
        self._series.reinit_lock()
        was_running = self._thread is not None
        self._thread = None
        self._resend = True
        self._warned = set()
        if was_running:
            self.start()

    # ------------------------------------------------------------ poll

    def poll_once(self):
        try:
            sem = int(self._semaphore())
        except Exception:
            sem = 0
        if not sem:
            if self._attached or self._probes or self._instrumented:
                with self._lock:
                    self._restore_all()  # dead-man switch: nobody listens, send nothing
                    self._instrumented = False
                    self._applied_generation = None
                    self._applied_enabled = None
                    was_attached = self._attached
                    self._attached = False
                    self._control_sig = None
                    if was_attached:
                        self._retire()
            return
        if not self._attached:
            self._attached = True
            self._control_sig = None
            self._applied_generation = None
        sig = _control.file_signature(self.control_path)
        if sig is not None and sig != self._control_sig:
            self._control_sig = sig
            try:
                doc = _control.read_control(self.control_path)
            except _control.ControlError as e:
                self._warn("refusing control file: %s" % e)
                doc = None
            if doc is not None:
                gen = doc.get("generation")
                if gen != self._applied_generation:
                    self.apply(doc)
                    return
                asked = _resend_counter(doc)
                if asked != self._resend_seen:
                    # The agent saw samples of series whose announcement it never got (a
                    # full ring buffer): announce everything again, paced.
                    self._resend_seen = asked
                    self._resend = True
        elif sig is None and self._control_sig is None:
            self._control_sig = ("missing",)
            self._warn("control file %s does not exist" % self.control_path)
        if self._resend:
            self._resend = False
            if self._applied_generation is not None:
                with self._lock:
                    self._resend_all()
        if self._instrumented:
            self._retry_pending()
        self._flush_expr_errors()

    def _resend_all(self):
        self._hello(self._applied_generation)
        self._series.announce_all(paced=True)
        for p in self._probes:
            self._send_probe(p)
        self._send_ack()

    # ------------------------------------------------------------ apply

    def _lazy_imports(self):
        if self._patcher is None:
            from . import blocks, exprs, patcher
            self._exprs = exprs
            self._patcher = patcher
            self._blocks = blocks
        if not self._vllm_detected:
            self._vllm_detected = True
            self._vllm_version = _control.target_vllm_version()

    def apply(self, doc):
        """Apply one control document (a dict as in docs/protocol.md). A document of the
        wrong shape (control.validate_control) is refused with a warning and changes
        nothing: the configuration applied last stays. Returns whether it was applied."""
        try:
            _control.validate_control(doc)
        except _control.ControlError as e:
            self._warn("refusing control document: %s" % e)
            return False
        self._lazy_imports()
        with self._lock:
            self._resend = False
            self._resend_seen = _resend_counter(doc)
            gen = doc.get("generation")
            enabled = doc.get("enabled", True) is not False
            self._hello(gen)
            self._restore_all()
            self._instrumented = False
            self._applied_generation = gen
            self._applied_enabled = enabled
            abi = doc.get("abi", ABI_VERSION)
            if abi != ABI_VERSION:
                self._warn("control file abi %r not supported (provider abi %d)" % (abi, ABI_VERSION))
                enabled = False
                self._applied_enabled = False
            if not enabled:
                self._send_ack()
                self._send({"type": "bye", "reason": "disabled" if abi == ABI_VERSION
                            else "unsupported abi %r" % (abi,)})
                self._retire()
                return True
            self._series.announce_all()
            specs = doc.get("probes") or []
            if not isinstance(specs, list):
                specs = []
            for spec in specs:
                p = _Probe(spec if isinstance(spec, dict) else {})
                self._probes.append(p)
                try:
                    self._prepare(p)
                except Exception as e:
                    p.state, p.detail = "error", _describe(e)
            self._instrumented = True
            if self._pending_modules:
                self._install_import_hook()
                # modules imported between the check and the hook
                self._retry_pending(send=False)
            for p in self._probes:
                self._send_probe(p)
            self._send_ack()
            return True

    def _prepare(self, p):
        if not isinstance(p.id, int) or isinstance(p.id, bool) or p.id < 0:
            raise ValueError("probe id must be a non-negative integer")
        if not isinstance(p.symbol, str) or not p.symbol:
            raise ValueError("probe without symbol")
        metrics = p.spec.get("metrics") or []
        if not isinstance(metrics, list):
            raise ValueError("metrics must be a list")
        if p.handler is not None:
            _handlers.split_path(p.handler)  # the format; the module is imported at install
        if p.scope not in SCOPES:
            raise ValueError("unknown scope %r (expected %s)" % (p.scope, ", ".join(SCOPES)))
        p.metrics = [_Metric(m, handler=p.handler is not None) for m in metrics]
        for m in p.metrics:
            for what, text in m.exprs():
                try:
                    self._exprs.check_expr(text)
                except self._exprs.ExprError as e:
                    raise ValueError("metric %s %s: %s" % (m.name, what, e)) from None
        lo, hi = p.spec.get("min_version"), p.spec.get("max_version")
        try:
            ok = _control.version_in_range(self._vllm_version, lo, hi)
        except ValueError as e:
            raise ValueError("bad version guard: %s" % e) from None
        if not ok:
            p.state = "version_excluded"
            p.detail = "vLLM %s outside [%s, %s]" % (self._vllm_version, lo or "", hi or "")
            return
        if ":" in p.symbol:
            modname, qual = p.symbol.split(":", 1)
        else:
            modname, _, qual = p.symbol.rpartition(".")
        if not modname or not qual:
            raise ValueError("symbol must be module.path:Qual.name")
        p.module = modname
        # static series first: announced before the wrapper can use them
        for m in p.metrics:
            if not m.labels and not m.by_handler:  # a handler's series: at its first record
                m.sid = self._series.get(m.name, (), ())
        self._try_install(p)

    def _module_present(self, modname):
        """False when the module certainly cannot be imported in this process."""
        try:
            import importlib.machinery as mach
            parts = modname.split(".")
            if parts[0] not in sys.modules and mach.PathFinder.find_spec(parts[0]) is None \
                    and mach.BuiltinImporter.find_spec(parts[0]) is None:
                return False
            parent = sys.modules.get(modname.rpartition(".")[0]) if len(parts) > 1 else None
            if parent is not None and getattr(parent, "__path__", None) is not None \
                    and getattr(parent, "__spec__", None) is not None \
                    and getattr(parent.__spec__, "origin", None) not in (None, "namespace"):
                if mach.PathFinder.find_spec(modname, parent.__path__) is None:
                    return False
        except Exception:
            return True
        return True

    def _try_install(self, p):
        """Resolve and patch; sets p.state. Returns True when active."""
        mod = sys.modules.get(p.module)
        if mod is None or (p.module != self._executed_module
                           and getattr(getattr(mod, "__spec__", None), "_initializing", False)):
            p.pending = True
            self._pending_modules.setdefault(p.module, set()).add(p.id)
            if mod is None and not self._module_present(p.module):
                p.state, p.detail = "not_present", "module %s is not installed" % p.module
            else:
                p.state, p.detail = "not_found", "module %s not imported yet" % p.module
            return False
        qual = p.symbol.split(":", 1)[1] if ":" in p.symbol else p.symbol.rpartition(".")[2]
        try:
            target = self._resolve(mod, qual)
        except LookupError as e:
            p.pending = True
            self._pending_modules.setdefault(p.module, set()).add(p.id)
            p.state, p.detail = "not_found", str(e)
            return False
        self._instrument(p, target)
        if p.pending:
            p.pending = False
            ids = self._pending_modules.get(p.module)
            if ids is not None:
                ids.discard(p.id)
                if not ids:
                    del self._pending_modules[p.module]
        return True

    @staticmethod
    def _resolve(mod, qual):
        """-> (owner, name, raw attribute, class or None)."""
        parts = qual.split(".")
        owner = mod
        path = mod.__name__
        for part in parts[:-1]:
            try:
                owner = getattr(owner, part)
            except AttributeError:
                raise LookupError("%s has no attribute %s" % (path, part)) from None
            path += "." + part
        name = parts[-1]
        if isinstance(owner, type):
            for klass in owner.__mro__:
                if name in klass.__dict__:
                    return klass, name, klass.__dict__[name], klass
            raise LookupError("%s has no attribute %s" % (path, name))
        d = getattr(owner, "__dict__", None)
        if isinstance(d, dict) and name in d:
            return owner, name, d[name], None
        try:
            return owner, name, getattr(owner, name), None
        except AttributeError:
            raise LookupError("%s has no attribute %s" % (path, name)) from None

    def _instrument(self, p, target):
        import types
        patcher = self._patcher
        owner, name, raw, klass = target
        func = raw
        if isinstance(raw, (staticmethod, classmethod)):
            func = raw.__func__
        elif isinstance(raw, property):
            func = raw.fget
        elif isinstance(raw, types.MethodType):
            func = raw.__func__
        code_patch = isinstance(func, types.FunctionType)
        if code_patch:
            params = patcher.parameter_names(func.__code__)
            shape = self._argument_shape(func.__code__)
        else:
            if not callable(raw):
                raise ValueError("%s is not callable" % p.symbol)
            params = ["args", "kwargs"]
            shape = (0, True, (), True)
        handler, note = None, ""
        if p.handler is not None:
            if _handlers.is_reference_handler(p.handler):
                note = _handlers.reference_detail(p.handler)
                if not any(not m.by_handler for m in p.metrics):
                    p.state, p.detail = _handlers.REFERENCE_STATE, note
                    return  # nothing to record without the handler: not patched
            else:
                fn = _handlers.load_handler(p.handler)
                method = klass is not None and not isinstance(raw, staticmethod) \
                    and (code_patch or hasattr(raw, "__get__"))
                recorder = _handlers.Recorder(self, p.id, p.handler, p.metrics)
                handler = _HandlerCall(self, p.id, fn, recorder, shape, method)
        mode, consts = self._hook_for(p, params, handler)
        if p.scope == "block":
            if code_patch and patcher.function_kind(func.__code__) not in patcher.BLOCK_KINDS:
                raise ValueError("scope block: %s is a %s function; it must return a context "
                                 "manager (a plain or coroutine function)"
                                 % (p.symbol, patcher.function_kind(func.__code__)))
            scope = self._blocks.BlockScope(self, p.id, mode, consts)
            mode = "block" if scope.needs_args else "block0"
            consts = {"NOW": consts["NOW"], "WRAP": scope.wrap, "BLOCKCLASSES": scope.by_type}
        if code_patch:
            patch = patcher.CodePatch(func, mode, consts)
            detail = ""
        else:
            wrap_static = klass is not None and not hasattr(raw, "__get__")
            patch = patcher.AttributePatch(owner, name, raw, mode, consts, wrap_static=wrap_static)
            detail = "attribute patch: pre-bound references not covered"
        patch.apply()
        p.patch = patch
        p.state, p.detail = "active", detail
        if note:
            p.state, p.detail = _handlers.REFERENCE_STATE, note

    @staticmethod
    def _argument_shape(code):
        """(positional count, has *args, keyword-only names, has **kwargs) of a code object."""
        n, k = code.co_argcount, code.co_kwonlyargcount
        varargs = bool(code.co_flags & 0x04)
        kwnames = tuple(code.co_varnames[n:n + k])
        return n, varargs, kwnames, bool(code.co_flags & 0x08)

    def _hook_for(self, p, params, handler=None):
        native = self.native
        consts = {"NOW": native.now_ns, "PID": p.id}
        metrics = [m for m in p.metrics if not m.by_handler]
        if handler is None and all(m.static for m in metrics):
            if len(metrics) == 1 and metrics[0].type == "timer":
                consts.update(TIMER=native.timer, SID=metrics[0].sid)
                return "timer", consts
            vals = []
            for m in sorted(metrics, key=lambda m: m.type != "timer"):
                vals += (m.sid, m.op, 0.0 if m.type == "timer" else 1.0)
            consts.update(SAMPLE=native.sample, VALS=tuple(vals))
            return "static", consts
        exprs = self._exprs
        need_duration = False
        for m in metrics:
            if m.labels:
                texts = [t for _, t in m.labels]
                filename = "<msm labels %s>" % m.name
                try:
                    if m.expr:  # the value may be a dict: labels per entry, with `key`
                        m.entry_label_fn, used = exprs.compile_tuple(texts, params, filename,
                                                                     entry_key=True)
                        need_duration |= "duration" in used
                    if m.expr and exprs.KEY_NAME in used and exprs.KEY_NAME not in params:
                        m.label_fns = _key_without_dict
                    else:
                        m.label_fns, used = exprs.compile_tuple(texts, params, filename)
                except exprs.ExprError as e:
                    raise ValueError("metric %s label: %s" % (m.name, e)) from None
                need_duration |= "duration" in used
            if m.expr:
                try:
                    m.value_fn, used = exprs.compile_expr(m.expr, params, "<msm expr %s>" % m.name)
                except exprs.ExprError as e:
                    raise ValueError("metric %s: %s" % (m.name, e)) from None
                need_duration |= "duration" in used
        special = tuple(i for i, n in enumerate(exprs.SPECIAL_NAMES) if n not in params)
        if special == (0, 1, 2):
            special = None
        # timers first (duration ops must be in the first sample when split)
        ordered = sorted(metrics, key=lambda m: m.type != "timer")
        hook = _FullHook(self, p.id, ordered, need_duration or handler is not None, special, handler)
        consts["FINISH"] = hook.finish
        return "full", consts

    def _retry_pending(self, send=True):
        if not self._pending_modules:
            return
        with self._lock:
            for modname in list(self._pending_modules):
                if modname in sys.modules:
                    self._install_module(modname, send)

    def _install_module(self, modname, send=True):
        ids = self._pending_modules.get(modname)
        if not ids:
            return
        for p in self._probes:
            if p.id in ids and p.pending:
                before = (p.state, p.detail)
                try:
                    self._try_install(p)
                except Exception as e:
                    p.pending = False
                    ids.discard(p.id)
                    p.state, p.detail = "error", _describe(e)
                if send and (p.state, p.detail) != before:
                    self._send_probe(p)
        if not self._pending_modules.get(modname, True):
            self._pending_modules.pop(modname, None)
        if not self._pending_modules:
            self._remove_import_hook()

    def _on_module_imported(self, modname):
        try:
            with self._lock:
                if self._instrumented and modname in self._pending_modules:
                    self._executed_module = modname  # its body has run completely
                    try:
                        self._install_module(modname)
                    finally:
                        self._executed_module = None
        except Exception as e:
            self._internal_error(e)

    def _install_import_hook(self):
        if self._import_hook is None:
            self._import_hook = _ImportHook(self)
        if self._import_hook not in sys.meta_path:
            sys.meta_path.insert(0, self._import_hook)

    def _remove_import_hook(self):
        h = self._import_hook
        if h is not None:
            try:
                while h in sys.meta_path:
                    sys.meta_path.remove(h)
            except Exception:
                pass

    def _restore_all(self):
        """Restore every patched function (reverse order); no messages."""
        self._remove_import_hook()
        self._pending_modules = {}
        for p in reversed(self._probes):
            if p.patch is not None:
                try:
                    if not p.patch.restore():
                        self._warn("%s was replaced by someone else; left as is" % p.symbol)
                except Exception as e:
                    self._warn("restoring %s failed: %s" % (p.symbol, e))
                p.patch = None
        self._probes = []

    # ------------------------------------------------------------ introspection

    def status(self):
        """A snapshot for debugging and tests."""
        with self._lock:
            return {
                "attached": self._attached, "instrumented": self._instrumented,
                "generation": self._applied_generation,
                "probes": {p.id: (p.state, p.detail) for p in self._probes},
                "pending_modules": sorted(self._pending_modules),
                "series": len(self._series._list),
                "internal_errors": self._internal_errors,
            }
