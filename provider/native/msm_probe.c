/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * msm_probe.c — the probe provider's native library.
 *
 * One shared object, two roles:
 *   1. the marker library the agent attaches to: `msm_emit` (entry uprobe, first
 *      instruction a one-byte nop, like a USDT site; see msm_emit) and `msm_semaphore` (USDT-style reference counter raised
 *      by the kernel while the agent's uprobe is attached);
 *   2. the stable-ABI CPython extension `_msm_probe` that the Python provider uses
 *      to build payloads (bpf/msm_abi.h) and hand them to msm_emit.
 *
 * Built with -DPy_LIMITED_API=0x030a0000: loads in CPython 3.10 .. 3.13.
 *
 * None of the functions used on the hot path (now_ns, timer, sample) raise for
 * well-formed arguments; the Python side only passes values it built itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sys/prctl.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include "msm_abi.h"

/* ------------------------------------------------------------------ markers */

/* Raised by the kernel (ref_ctr_offset) while an agent's uprobe is attached.
 * Must live in an initialised writable section, not .bss. */
__attribute__((section(".probes"), used, visibility("default")))
volatile uint16_t msm_semaphore = 0;

/* The marker. The agent's entry uprobe reads (payload, len) from the argument
 * registers. Naked: no prologue; first instruction a one-byte nop, exactly like a
 * USDT probe site (STAP_PROBE), then ret. The kernel emulates a probed nop without
 * single-stepping (~0.9 µs per hit here; a normal prologue costs ~14 µs).
 *
 * Not the 5-byte nop: on kernels with uprobe optimization (6.18 here) a probed nop5 is
 * rewritten into a call to a per-process [uprobes-trampoline] page, and that page is
 * not inherited by fork(). A forked child of an attached target (multiprocessing's
 * default start method on Linux) then calls into an unmapped page and dies with
 * SIGSEGV on its first msm_emit. Measured: Tests/integration test_lifecycle's spawn
 * test crashed about one run in three with nop5; see the issue note. */
__attribute__((naked, noinline, used, visibility("default")))
void msm_emit(const void *payload, uint32_t len)
{
#if defined(__x86_64__)
    __asm__ volatile("nop\n\tret\n");
#elif defined(__aarch64__)
    __asm__ volatile("nop\n\tret\n");
#else
#error "unsupported architecture"
#endif
}

/* The arming site: never called. The agent attaches a second uprobe here, carrying the
 * semaphore's ref_ctr_offset, only after the uprobe on msm_emit has its BPF program.
 * The kernel raises a uprobe's ref_ctr when it registers the uprobe (perf_event_open),
 * before libbpf attaches the program (PERF_EVENT_IOC_SET_BPF); a provider that saw the
 * semaphore in that gap would send its hello and series announcements into a probe
 * with no program yet, and they would be lost. Arming separately closes the gap. */
__attribute__((naked, noinline, used, visibility("default")))
void msm_arm(void)
{
#if defined(__x86_64__) || defined(__aarch64__)
    __asm__ volatile("nop\n\tret\n");
#endif
}

/* Called through a volatile pointer: the compiler can neither inline the call
 * nor drop it as side-effect free. */
typedef void (*msm_emit_fn)(const void *, uint32_t);
static msm_emit_fn volatile emit_ptr = msm_emit;

/* Test hook: when set, every payload is also appended (as bytes) to this list. */
static PyObject *capture_list = NULL;

static inline void do_emit(const void *payload, uint32_t len)
{
    emit_ptr(payload, len);
    if (capture_list != NULL) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)payload, (Py_ssize_t)len);
        if (b != NULL) {
            if (PyList_Append(capture_list, b) < 0)
                PyErr_Clear();
            Py_DECREF(b);
        } else {
            PyErr_Clear();
        }
    }
}

static inline uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------ Python API */

static PyObject *py_semaphore(PyObject *self, PyObject *unused)
{
    return PyLong_FromLong((long)msm_semaphore);
}

/* After fork() the child has a copy of the parent's counter, but the kernel raised it for
 * the parent's attachment only: the child starts unattached. Reset it so the child's
 * dead-man switch works (the agent attaches to the child separately, raising it again). */
static PyObject *py_reset_semaphore_after_fork(PyObject *self, PyObject *unused)
{
    msm_semaphore = 0;
    Py_RETURN_NONE;
}

static PyObject *py_now_ns(PyObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(mono_ns());
}

static PyObject *py_emit(PyObject *self, PyObject *arg)
{
    char *buf;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &buf, &len) < 0)
        return NULL;
    if (len > 0xffffffffLL) {
        PyErr_SetString(PyExc_ValueError, "payload too large");
        return NULL;
    }
    do_emit(buf, (uint32_t)len);
    Py_RETURN_NONE;
}

static int get_u32(PyObject *o, uint32_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (v > 0xffffffffull) {
        PyErr_SetString(PyExc_OverflowError, "value does not fit in 32 bits");
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static int get_u64(PyObject *o, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint64_t)v;
    return 0;
}

struct sample_buf {
    struct msm_sample s;
    struct msm_value v[MSM_MAX_VALUES];
};

/* timer(probe_id, series_id, start_ns, status): one sample carrying a single
 * MSM_OP_OBSERVE_DURATION value — the hot path of a timer-only probe. */
static PyObject *py_timer(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct {
        struct msm_sample s;
        struct msm_value v;
    } buf;
    uint32_t probe, series, status;
    uint64_t start;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "timer(probe_id, series_id, start_ns, status)");
        return NULL;
    }
    if (get_u32(args[0], &probe) < 0 || get_u32(args[1], &series) < 0 ||
        get_u64(args[2], &start) < 0 || get_u32(args[3], &status) < 0)
        return NULL;
    buf.s.h.kind = MSM_KIND_SAMPLE;
    buf.s.h.count = 1;
    buf.s.h.probe_id = probe;
    buf.s.status = status;
    buf.s.reserved = 0;
    buf.s.start_ns = start;
    buf.v.series_id = series;
    buf.v.op = MSM_OP_OBSERVE_DURATION;
    buf.v.value_bits = 0;
    do_emit(&buf, (uint32_t)sizeof(buf));
    Py_RETURN_NONE;
}

/* sample(probe_id, start_ns, status, values): values is a flat tuple or list
 * (series_id, op, value, series_id, op, value, ...); value is any real number.
 * More than MSM_MAX_VALUES values are split into further samples with
 * start_ns = 0 (the caller puts duration ops first). */
static PyObject *py_sample(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct sample_buf buf;
    uint32_t probe, status;
    uint64_t start;
    PyObject *values;
    Py_ssize_t n, nvalues, i, k;
    int is_list;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "sample(probe_id, start_ns, status, values)");
        return NULL;
    }
    if (get_u32(args[0], &probe) < 0 || get_u64(args[1], &start) < 0 ||
        get_u32(args[2], &status) < 0)
        return NULL;
    values = args[3];
    is_list = PyList_Check(values);
    if (!is_list && !PyTuple_Check(values)) {
        PyErr_SetString(PyExc_TypeError, "values must be a flat tuple or list");
        return NULL;
    }
    n = is_list ? PyList_Size(values) : PyTuple_Size(values);
    if (n < 0)
        return NULL;
    if (n % 3 != 0) {
        PyErr_SetString(PyExc_ValueError, "values must hold (series_id, op, value) triples");
        return NULL;
    }
    nvalues = n / 3;
    buf.s.h.kind = MSM_KIND_SAMPLE;
    buf.s.h.probe_id = probe;
    buf.s.status = status;
    buf.s.reserved = 0;
    buf.s.start_ns = start;

    i = 0;
    do {
        Py_ssize_t chunk = nvalues - i;
        if (chunk > MSM_MAX_VALUES)
            chunk = MSM_MAX_VALUES;
        for (k = 0; k < chunk; k++) {
            Py_ssize_t base = (i + k) * 3;
            PyObject *o_sid, *o_op, *o_val;
            uint32_t sid, op;
            double d;
            if (is_list) {
                o_sid = PyList_GetItem(values, base);
                o_op = PyList_GetItem(values, base + 1);
                o_val = PyList_GetItem(values, base + 2);
            } else {
                o_sid = PyTuple_GetItem(values, base);
                o_op = PyTuple_GetItem(values, base + 1);
                o_val = PyTuple_GetItem(values, base + 2);
            }
            if (o_sid == NULL || o_op == NULL || o_val == NULL)
                return NULL;
            if (get_u32(o_sid, &sid) < 0 || get_u32(o_op, &op) < 0)
                return NULL;
            d = PyFloat_AsDouble(o_val);
            if (d == -1.0 && PyErr_Occurred())
                return NULL;
            buf.v[k].series_id = sid;
            buf.v[k].op = op;
            memcpy(&buf.v[k].value_bits, &d, sizeof d);
        }
        buf.s.h.count = (uint16_t)chunk;
        do_emit(&buf, (uint32_t)(sizeof(struct msm_sample) + (size_t)chunk * sizeof(struct msm_value)));
        i += chunk;
        buf.s.start_ns = 0;
    } while (i < nvalues);
    Py_RETURN_NONE;
}

/* name_this_thread(): the calling thread's kernel name becomes MSM_PROVIDER_THREAD_NAME. */
static PyObject *py_name_this_thread(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    if (prctl(PR_SET_NAME, MSM_PROVIDER_THREAD_NAME, 0, 0, 0) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* _debug_capture(list_or_None): tests only. */
static PyObject *py_debug_capture(PyObject *self, PyObject *arg)
{
    if (arg != Py_None && !PyList_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "expected a list or None");
        return NULL;
    }
    PyObject *old = capture_list;
    if (arg == Py_None) {
        capture_list = NULL;
    } else {
        Py_INCREF(arg);
        capture_list = arg;
    }
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"semaphore", py_semaphore, METH_NOARGS,
     "semaphore() -> int: current value of msm_semaphore (non-zero: an agent is attached)"},
    {"reset_semaphore_after_fork", py_reset_semaphore_after_fork, METH_NOARGS,
     "reset_semaphore_after_fork(): a forked child starts unattached (msm_semaphore = 0)"},
    {"now_ns", py_now_ns, METH_NOARGS, "now_ns() -> int: CLOCK_MONOTONIC in ns (bpf_ktime_get_ns clock)"},
    {"emit", py_emit, METH_O, "emit(payload: bytes): call the msm_emit marker with a raw payload"},
    {"timer", (PyCFunction)(void (*)(void))py_timer, METH_FASTCALL,
     "timer(probe_id, series_id, start_ns, status): emit a sample with one duration value"},
    {"sample", (PyCFunction)(void (*)(void))py_sample, METH_FASTCALL,
     "sample(probe_id, start_ns, status, values): values = flat (series_id, op, value, ...)"},
    {"name_this_thread", py_name_this_thread, METH_NOARGS,
     "name_this_thread(): names the calling thread " MSM_PROVIDER_THREAD_NAME " for the agent"},
    {"_debug_capture", py_debug_capture, METH_O,
     "_debug_capture(list or None): tests only, also append every payload to the list"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_msm_probe",
    "ms-service-metric probe provider: marker library and payload builder", -1, methods,
    NULL, NULL, NULL, NULL,
};

__attribute__((visibility("default"))) PyMODINIT_FUNC PyInit__msm_probe(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ABI_VERSION", MSM_ABI_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "MAX_VALUES", MSM_MAX_VALUES) < 0 ||
        PyModule_AddIntConstant(m, "MAX_PAYLOAD", MSM_MAX_PAYLOAD) < 0 ||
        PyModule_AddIntConstant(m, "KIND_SAMPLE", MSM_KIND_SAMPLE) < 0 ||
        PyModule_AddIntConstant(m, "KIND_JSON", MSM_KIND_JSON) < 0 ||
        PyModule_AddIntConstant(m, "OP_OBSERVE_DURATION", MSM_OP_OBSERVE_DURATION) < 0 ||
        PyModule_AddIntConstant(m, "OP_OBSERVE", MSM_OP_OBSERVE) < 0 ||
        PyModule_AddIntConstant(m, "OP_INC", MSM_OP_INC) < 0 ||
        PyModule_AddIntConstant(m, "OP_SET", MSM_OP_SET) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
