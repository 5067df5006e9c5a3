// CPython 3.14+ remote execution (PEP 768), the protocol sys.remote_exec speaks:
//
//   1. _PyRuntime starts with _Py_DebugOffsets (cookie "xdebugpy", PY_VERSION_HEX, then the
//      offsets of the interpreter's structures); it is the ELF section .PyRuntime of
//      libpython3.14.so or of a static python executable;
//   2. _PyRuntime.interpreters.head -> the main interpreter; its config.remote_debug must be
//      1 (PYTHON_DISABLE_REMOTE_DEBUG and -X disable-remote-debug set it to 0);
//   3. interpreter.threads.main -> the main thread's PyThreadState, which embeds
//      _PyRemoteDebuggerSupport { int32_t debugger_pending_call; char debugger_script_path[N]; };
//   4. write the script path (with its NUL), then pending_call = 1, then OR
//      _PY_EVAL_PLEASE_STOP_BIT into the thread's eval_breaker word;
//   5. at its next eval-breaker check the main thread clears pending_call, audits
//      ("cpython.remote_debugger_script") and runs the file.
//
// Only process_vm_readv/process_vm_writev: no ptrace stop, nothing to restore. The
// read-modify-write of eval_breaker is not atomic against the target (as in CPython's own
// sender): a bit the target sets in between can be lost once, and is set again by its
// owner (GIL drop request) or delays a signal handler until the next check.
#define _GNU_SOURCE
#include "CInjector.h"
#include "inject_common.h"
#include "runtime_section.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static int say(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

// --------------------------------------------------------------------------- offsets (pure)

/// Word indexes (uint64_t) of the fields we use in one _Py_DebugOffsets layout.
struct layout {
    int minor;
    size_t words;  // the whole structure
    int runtime_size, interpreters_head;
    int interp_size, threads_head, threads_main;
    int tstate_size, tstate_next, tstate_native_thread_id;
    int eval_breaker;  // first of the six debugger_support words
};

// CPython 3.14 (Include/internal/pycore_debug_offsets.h): cookie, version, free_threaded;
// runtime_state 3 words; interpreter_state 16; thread_state 9; interpreter_frame 8;
// code_object 11; pyobject 2; type_object 4; tuple 3; list 3; set 4; dict 3; float 2;
// long 3; bytes 3; unicode 4; gc 2; gen_object 4; llist_node 2; debugger_support 6
// (eval_breaker, remote_debugger_support, remote_debugging_enabled, debugger_pending_call,
// debugger_script_path, debugger_script_path_size).
static const struct layout layouts[] = {
    { .minor = 14, .words = 95, .runtime_size = 3, .interpreters_head = 5,
      .interp_size = 6, .threads_head = 9, .threads_main = 10,
      .tstate_size = 22, .tstate_next = 24, .tstate_native_thread_id = 28,
      .eval_breaker = 89 },
};

static uint64_t word(const uint8_t *buf, int index) {
    uint64_t v;
    memcpy(&v, buf + (size_t)index * 8, 8);
    return v;
}

/// off .. off+width lies inside a structure of `size` bytes.
static int inside(uint64_t off, uint64_t width, uint64_t size) {
    return off < size && width <= size - off;
}

int msm_pep768_parse_offsets(const uint8_t *buf, size_t len, struct msm_pep768_offsets *out,
                             char *err, size_t errlen) {
    if (!out) return say(err, errlen, MSM_INJECT_BAD_ARGUMENT, "no output structure");
    memset(out, 0, sizeof *out);
    if (!buf || len < 24)
        return say(err, errlen, MSM_INJECT_UNSUPPORTED_VERSION,
                   "_Py_DebugOffsets truncated: %zu bytes, the header alone needs 24", len);
    if (memcmp(buf, "xdebugpy", 8) != 0)
        return say(err, errlen, MSM_INJECT_NOT_CPYTHON,
                   "no _Py_DebugOffsets cookie \"xdebugpy\" at _PyRuntime (not CPython 3.13+)");
    uint64_t v = word(buf, 1);
    out->version = v;
    out->major = (int)((v >> 24) & 0xff);
    out->minor = (int)((v >> 16) & 0xff);
    out->micro = (int)((v >> 8) & 0xff);
    out->free_threaded = word(buf, 2) != 0;
    unsigned level = (unsigned)((v >> 4) & 0xf), serial = (unsigned)(v & 0xf);
    if (out->major < 3 || (out->major == 3 && out->minor < 14))
        return say(err, errlen, MSM_INJECT_UNSUPPORTED_VERSION,
                   "CPython %d.%d has no PEP 768 remote execution (3.14+)", out->major, out->minor);
    const struct layout *lay = NULL;
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++)
        if (out->major == 3 && layouts[i].minor == out->minor) lay = &layouts[i];
    if (!lay)
        return say(err, errlen, MSM_INJECT_UNSUPPORTED_VERSION,
                   "CPython %d.%d: its _Py_DebugOffsets layout is not known to this agent (3.14 only)",
                   out->major, out->minor);
    if (level != 0xF)
        return say(err, errlen, MSM_INJECT_UNSUPPORTED_VERSION,
                   "CPython %d.%d.%d%s%u is a pre-release: its _Py_DebugOffsets layout may differ "
                   "from 3.%d final's", out->major, out->minor, out->micro,
                   level == 0xA ? "a" : level == 0xB ? "b" : "rc", serial, out->minor);
    if (len < lay->words * 8)
        return say(err, errlen, MSM_INJECT_UNSUPPORTED_VERSION,
                   "_Py_DebugOffsets truncated: %zu bytes, CPython 3.%d's has %zu",
                   len, out->minor, lay->words * 8);

    out->runtime_size = word(buf, lay->runtime_size);
    out->interpreters_head = word(buf, lay->interpreters_head);
    out->interp_size = word(buf, lay->interp_size);
    out->threads_head = word(buf, lay->threads_head);
    out->threads_main = word(buf, lay->threads_main);
    out->tstate_size = word(buf, lay->tstate_size);
    out->tstate_next = word(buf, lay->tstate_next);
    out->tstate_native_thread_id = word(buf, lay->tstate_native_thread_id);
    out->eval_breaker = word(buf, lay->eval_breaker);
    out->remote_debugger_support = word(buf, lay->eval_breaker + 1);
    out->remote_debugging_enabled = word(buf, lay->eval_breaker + 2);
    out->debugger_pending_call = word(buf, lay->eval_breaker + 3);
    out->debugger_script_path = word(buf, lay->eval_breaker + 4);
    out->debugger_script_path_size = word(buf, lay->eval_breaker + 5);

    // Every offset must land inside its structure: a layout we misread never leads to a write.
    const uint64_t big = 64u << 20;
    const struct msm_pep768_offsets *o = out;
    const char *bad = NULL;
    if (o->runtime_size == 0 || o->runtime_size > big || !inside(o->interpreters_head, 8, o->runtime_size))
        bad = "runtime_state";
    else if (o->interp_size == 0 || o->interp_size > big || !inside(o->threads_head, 8, o->interp_size)
             || !inside(o->threads_main, 8, o->interp_size) || !inside(o->remote_debugging_enabled, 4, o->interp_size))
        bad = "interpreter_state";
    else if (o->tstate_size == 0 || o->tstate_size > big || !inside(o->tstate_next, 8, o->tstate_size)
             || !inside(o->tstate_native_thread_id, 8, o->tstate_size)
             || !inside(o->eval_breaker, 8, o->tstate_size) || o->eval_breaker % 8 != 0)
        bad = "thread_state";
    else if (o->debugger_script_path_size < 16 || o->debugger_script_path_size > 65536
             || !inside(o->debugger_pending_call, 4, o->debugger_script_path)
             || !inside(o->remote_debugger_support, o->debugger_script_path + o->debugger_script_path_size,
                        o->tstate_size))
        bad = "debugger_support";
    if (bad)
        return say(err, errlen, MSM_INJECT_UNSUPPORTED_VERSION,
                   "CPython %d.%d.%d: _Py_DebugOffsets.%s does not fit the 3.%d layout this agent knows",
                   out->major, out->minor, out->micro, bad, out->minor);
    return 0;
}

// --------------------------------------------------------------------------- plan (pure given read)

int msm_pep768_plan(const struct msm_pep768_offsets *o, uint64_t runtime_addr, const char *script_path,
                    msm_pep768_read_fn read, void *ctx, struct msm_pep768_plan *plan,
                    char *err, size_t errlen) {
    if (!o || !script_path || !read || !plan) return say(err, errlen, MSM_INJECT_BAD_ARGUMENT, "bad argument");
    memset(plan, 0, sizeof *plan);
    size_t len = strlen(script_path);
    if (len == 0 || script_path[0] != '/')
        return say(err, errlen, MSM_INJECT_BAD_ARGUMENT, "the script path must be absolute");
    if (len >= o->debugger_script_path_size)
        return say(err, errlen, MSM_INJECT_BAD_ARGUMENT,
                   "the script path has %zu bytes; the target's buffer holds %llu with its NUL",
                   len, (unsigned long long)o->debugger_script_path_size);

    uint64_t interp = 0;
    if (read(ctx, runtime_addr + o->interpreters_head, &interp, 8) != 0)
        return say(err, errlen, MSM_INJECT_PTRACE_ERROR, "cannot read _PyRuntime.interpreters.head");
    if (interp == 0)
        return say(err, errlen, MSM_INJECT_TIMEOUT, "no interpreter yet (starting or finalizing)");
    int32_t enabled = 0;
    if (read(ctx, interp + o->remote_debugging_enabled, &enabled, 4) != 0)
        return say(err, errlen, MSM_INJECT_PTRACE_ERROR, "cannot read the interpreter's config.remote_debug");
    if (enabled != 1)
        return say(err, errlen, MSM_INJECT_REMOTE_DEBUG_DISABLED,
                   "remote debugging is disabled in the target (PYTHON_DISABLE_REMOTE_DEBUG or "
                   "-X disable-remote-debug)");
    uint64_t tstate = 0;
    if (read(ctx, interp + o->threads_main, &tstate, 8) != 0)
        return say(err, errlen, MSM_INJECT_PTRACE_ERROR, "cannot read the interpreter's threads.main");
    if (tstate == 0 || tstate % 8 != 0)
        return say(err, errlen, MSM_INJECT_TIMEOUT, "the interpreter has no main thread state (finalizing?)");
    uint64_t tid = 0;
    if (read(ctx, tstate + o->tstate_native_thread_id, &tid, 8) == 0) plan->native_thread_id = (unsigned long)tid;

    uint64_t support = tstate + o->remote_debugger_support;
    plan->interp = interp;
    plan->tstate = tstate;
    plan->script_path_addr = support + o->debugger_script_path;
    plan->script_path_len = len + 1;
    plan->pending_call_addr = support + o->debugger_pending_call;
    plan->eval_breaker_addr = tstate + o->eval_breaker;
    return 0;
}

// --------------------------------------------------------------------------- live path

#define MSM_PEP768_MAX_COMPARE 4096

#if defined(__linux__)

static int vm_read(void *ctx, uint64_t addr, void *buf, size_t len) {
    pid_t pid = *(pid_t *)ctx;
    struct iovec local = { buf, len }, remote = { (void *)(uintptr_t)addr, len };
    ssize_t k = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    return k == (ssize_t)len ? 0 : -1;
}

static int vm_write(pid_t pid, uint64_t addr, const void *buf, size_t len) {
    struct iovec local = { (void *)buf, len }, remote = { (void *)(uintptr_t)addr, len };
    ssize_t k = process_vm_writev(pid, &local, 1, &remote, 1, 0);
    return k == (ssize_t)len ? 0 : -1;
}

static int request(pid_t pid, const char *script_path, int timeout_ms, struct msm_inject_result *r, double t0) {
    // Refusals first (root, Yama, tracer, CPython, version, free-threaded): msm_inject_check.
    int rc = msm_inject_check(pid, r);
    r->pyrun_result = -2;
    if (rc) return rc;
    if (r->method != MSM_INJECT_METHOD_PEP768)
        return fail(r, MSM_INJECT_UNSUPPORTED_VERSION,
                    "pid %d runs CPython %s: PEP 768 needs 3.14+; 3.10-3.13 use the ptrace path", pid,
                    r->python_version);

    char why[512];
    uint64_t runtime = 0, runtime_size = 0;
    if (msm_find_pyruntime(pid, r->object_path, &runtime, &runtime_size, why, sizeof why) != 0)
        return fail(r, MSM_INJECT_NOT_CPYTHON, "pid %d: %s; nothing was changed", pid, why);
    uint8_t blob[MSM_PEP768_OFFSETS_READ];
    size_t want = runtime_size && runtime_size < sizeof blob ? (size_t)runtime_size : sizeof blob;
    pid_t ctx = pid;
    if (vm_read(&ctx, runtime, blob, want) != 0)
        return fail(r, MSM_INJECT_PTRACE_ERROR, "cannot read _PyRuntime of pid %d: %s; nothing was changed",
                    pid, strerror(errno));
    struct msm_pep768_offsets o;
    rc = msm_pep768_parse_offsets(blob, want, &o, why, sizeof why);
    if (rc) return fail(r, rc, "pid %d: %s; nothing was changed; start it under `ms-service-metric exec`", pid, why);
    if (o.free_threaded)
        return fail(r, MSM_INJECT_FREE_THREADED,
                    "pid %d runs a free-threaded CPython %s (3.14t): the provider does not support it; "
                    "nothing was changed", pid, r->python_version);
    if (o.minor != r->python_minor)
        return fail(r, MSM_INJECT_UNSUPPORTED_VERSION,
                    "pid %d: _Py_DebugOffsets says 3.%d but Py_Version says %s; nothing was changed",
                    pid, o.minor, r->python_version);

    struct msm_pep768_plan plan;
    rc = msm_pep768_plan(&o, runtime, script_path, vm_read, &ctx, &plan, why, sizeof why);
    if (rc == MSM_INJECT_REMOTE_DEBUG_DISABLED)
        return fail(r, rc, "pid %d (CPython %s): %s; restart it without that, or under "
                    "`ms-service-metric exec`; nothing was changed", pid, r->python_version, why);
    if (rc) return fail(r, rc, "pid %d (CPython %s): %s; nothing was changed", pid, r->python_version, why);
    r->thread = (pid_t)plan.native_thread_id;

    // A request still pending: ours from an earlier attempt is simply waited for again;
    // another tool's is left alone.
    int32_t pending = 0;
    char current[MSM_PEP768_MAX_COMPARE];
    size_t compare = plan.script_path_len < sizeof current ? plan.script_path_len : sizeof current;
    if (vm_read(&ctx, plan.pending_call_addr, &pending, 4) != 0
        || vm_read(&ctx, plan.script_path_addr, current, compare) != 0)
        return fail(r, MSM_INJECT_PTRACE_ERROR, "cannot read the main thread state of pid %d; nothing was changed", pid);
    int ours = compare == plan.script_path_len && memcmp(current, script_path, compare) == 0;
    if (pending != 0 && !ours)
        return fail(r, MSM_INJECT_ALREADY_TRACED,
                    "pid %d already has another tool's remote-execution request pending; retry once "
                    "its main thread ran it; nothing was changed", pid);
    if (pending != 0) {
        r->pyrun_result = -3;
        goto wait;
    }

    // The writes, in sys.remote_exec's order: path, pending flag, eval-breaker bit.
    if (vm_write(pid, plan.script_path_addr, script_path, plan.script_path_len) != 0)
        return fail(r, MSM_INJECT_PTRACE_ERROR, "cannot write to pid %d: %s; nothing was requested", pid, strerror(errno));
    r->pyrun_result = -3;  // the path buffer is only read once pending_call is 1
    int32_t one = 1;
    if (vm_write(pid, plan.pending_call_addr, &one, 4) != 0)
        return fail(r, MSM_INJECT_PTRACE_ERROR, "cannot write to pid %d: %s; nothing was requested", pid, strerror(errno));
    uint64_t breaker = 0;
    if (vm_read(&ctx, plan.eval_breaker_addr, &breaker, 8) != 0
        || (breaker |= MSM_PEP768_PLEASE_STOP_BIT, vm_write(pid, plan.eval_breaker_addr, &breaker, 8) != 0))
        return fail(r, MSM_INJECT_PTRACE_ERROR,
                    "pid %d: the request is pending but its eval-breaker bit could not be set (%s); "
                    "it runs at the main thread's next other eval-breaker event", pid, strerror(errno));

    // The main thread clears pending_call when it takes the request (then runs the file).
wait:;
    double deadline = t0 + timeout_ms;
    useconds_t nap = 200;
    for (;;) {
        if (vm_read(&ctx, plan.pending_call_addr, &pending, 4) != 0)
            return fail(r, MSM_INJECT_PROCESS_EXITED, "pid %d exited after the request", pid);
        if (pending == 0) break;
        if (now_ms() >= deadline)
            return fail(r, MSM_INJECT_TIMEOUT,
                        "pid %d (CPython %s): requested through PEP 768, but its main thread did not "
                        "run Python within %.1f s (idle or blocked in C); the request stays pending "
                        "and the provider starts when it does", pid, r->python_version, timeout_ms / 1000.0);
        usleep(nap);
        if (nap < 5000) nap *= 2;
    }
    r->wait_ms = now_ms() - t0;
    r->safe_point_hits = 1;
    return fail(r, MSM_INJECT_OK, "injected into pid %d through PEP 768 (main thread %d, CPython %s, %s)",
                pid, r->thread, r->python_version,
                r->layout == MSM_LAYOUT_STATIC ? "static executable" : "shared libpython");
}

#endif  // __linux__

int msm_pep768_inject(pid_t pid, const char *script_path, int timeout_ms, struct msm_inject_result *result) {
    if (!result) return MSM_INJECT_BAD_ARGUMENT;
    memset(result, 0, sizeof *result);
    result->pyrun_result = -2;
    if (!script_path || pid <= 0 || timeout_ms <= 0)
        return say(result->message, sizeof result->message, result->error = MSM_INJECT_BAD_ARGUMENT,
                   "bad argument (pid %d, timeout %d ms)", pid, timeout_ms);
#if defined(__linux__)
    double t0 = now_ms();
    int rc = request(pid, script_path, timeout_ms, result, t0);
    result->total_ms = now_ms() - t0;
    return rc;
#else
    return say(result->message, sizeof result->message, result->error = MSM_INJECT_UNSUPPORTED_ARCH,
               "PEP 768 injection is implemented for Linux only");
#endif
}
