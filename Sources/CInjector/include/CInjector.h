#ifndef MSM_CINJECTOR_H
#define MSM_CINJECTOR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "msm_elf.h"
#include "msm_maps.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Outcome of one injection attempt (msm_inject_result.error).
enum msm_inject_error {
    MSM_INJECT_OK = 0,
    MSM_INJECT_BAD_ARGUMENT = 1,
    MSM_INJECT_UNSUPPORTED_ARCH = 2,   // not x86-64 (agent or target)
    MSM_INJECT_NOT_ROOT = 3,
    MSM_INJECT_NO_PROCESS = 4,
    MSM_INJECT_PTRACE_DISABLED = 5,    // Yama ptrace_scope 3
    MSM_INJECT_ALREADY_TRACED = 6,     // another tracer (debugger, strace) is attached
    MSM_INJECT_NOT_CPYTHON = 7,
    MSM_INJECT_UNSUPPORTED_VERSION = 8,
    MSM_INJECT_FREE_THREADED = 9,
    MSM_INJECT_ATTACH_FAILED = 10,
    MSM_INJECT_TIMEOUT = 11,           // no thread reached the safe point; nothing changed
    MSM_INJECT_PTRACE_ERROR = 12,      // a ptrace/memory operation failed midway (restored)
    MSM_INJECT_PROCESS_EXITED = 13,
    MSM_INJECT_PYTHON_ERROR = 14,      // PyRun_SimpleString returned -1 (traceback on the target's stderr)
    MSM_INJECT_REMOTE_DEBUG_DISABLED = 15, // 3.14+: PYTHON_DISABLE_REMOTE_DEBUG / -X disable-remote-debug
    MSM_INJECT_CANCELLED = 16,         // the caller asked to stop before the code ran; nothing changed
    MSM_INJECT_CALL_PENDING = 17,      // the code was started but did not return in time (the target
                                       // stopped or froze): the thread was released and gets its
                                       // state back by itself when the code returns
};

/// How the thread that ran the code reached the safe point (msm_inject_result.safe_point_method).
enum msm_safe_point_method {
    MSM_SAFE_POINT_NONE = 0,           // not reached
    MSM_SAFE_POINT_NATURAL = 1,        // it called PyEval_SaveThread on its own
    MSM_SAFE_POINT_WOKEN = 2,          // it was woken from an event-loop wait (epoll_wait & co.
                                       // return EINTR; CPython retries through PyEval_SaveThread)
    MSM_SAFE_POINT_EVENT_WAIT = 3,     // the EINTR is retried in C (libuv/uvloop): the code ran
                                       // at the interrupted epoll wait of a Python thread without
                                       // the GIL, between PyGILState_Ensure and _Release
    MSM_SAFE_POINT_BLOCKED_WAIT = 4,   // as EVENT_WAIT, at a blocking wait the kernel restarts
                                       // (futex, read, poll, ppoll without a timeout) interrupted
                                       // by ptrace; the syscall is restarted afterwards
};

/// How a target gets the code (msm_inject_result.method).
enum msm_inject_method {
    MSM_INJECT_METHOD_PTRACE = 0,      // 3.10-3.13: msm_inject_python (safe point, ptrace)
    MSM_INJECT_METHOD_PEP768 = 1,      // 3.14+: msm_pep768_inject (remote-debugging protocol)
};

/// Where the interpreter lives in the target.
enum msm_python_layout {
    MSM_LAYOUT_UNKNOWN = 0,
    MSM_LAYOUT_SHARED = 1,             // libpython3.X.so
    MSM_LAYOUT_STATIC = 2,             // the executable itself exports the C API
};

struct msm_inject_result {
    int error;                  // enum msm_inject_error
    char message[1024];         // one line: what happened and what to do
    char python_version[32];    // "3.11.7" ("3.10" when only the minor is known), "" if unknown
    int python_major, python_minor;
    int layout;                 // enum msm_python_layout
    char object_path[512];      // ELF object with the C API, as the target sees it
    int pyrun_result;           // PyRun_SimpleString's return value (0 ok, -1 exception); -2 not called
    pid_t thread;               // thread that ran the code (0 if none)
    int threads;                // threads seized
    int safe_point_hits;        // safe-point hits examined (more than 1: a hit was skipped)
    double wait_ms;             // time until a thread reached the safe point
    double held_ms;             // time that thread was held (running our code included)
    double total_ms;            // whole operation
    int woken_threads;          // wake-ups sent to threads blocked in epoll_wait/epoll_pwait[2]
                                // (PTRACE_INTERRUPT) because no thread reached the safe point
    int safe_point_method;      // enum msm_safe_point_method
    int method;                 // enum msm_inject_method: how this target is to be injected
                                // (set by msm_inject_check); pyrun_result -3: handed over by
                                // PEP 768, runs at the target's next eval-breaker check
};

/// Atomic access to the cancel flag of msm_inject_options (from Swift).
static inline void msm_atomic_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline int msm_atomic_load_int(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

/// What msm_inject_python needs besides the target and the code.
struct msm_inject_options {
    const void *bpf_object;     // msm_inject.bpf.o (bpf/msm_inject.bpf.c), embedded in the agent
    size_t bpf_object_len;
    const volatile int *cancel; // optional: non-zero asks to stop as soon as that is safe
                                // (MSM_INJECT_CANCELLED, or CALL_PENDING once the code runs)
};

/// Runs `python_source` with PyRun_SimpleString in the already running CPython
/// (3.10-3.13, GIL build, x86-64) process `pid`, in a thread stopped at the start of
/// PyEval_SaveThread (it holds the GIL, outside the allocator) or, for an idle process, in
/// a Python thread blocked in a wait without the GIL. Every thread is traced only while
/// this runs. Nothing is written into the target's code: the safe point is a per-process
/// uprobe that dies with the caller, and the hijacked thread's call returns through a
/// sigreturn frame that restores its state exactly even if the caller is killed meanwhile
/// (see arch_x86_64.c). Waits at most `timeout_ms` for a thread to reach the safe point.
/// Returns result->error.
int msm_inject_python(pid_t pid, const char *python_source, int timeout_ms,
                      const struct msm_inject_options *options, struct msm_inject_result *result);

/// Only the refusals of msm_inject_python (root, Yama, tracer, CPython, version, free-threaded),
/// without attaching: MSM_INJECT_OK with the version and layout filled in, or the refusal.
int msm_inject_check(pid_t pid, struct msm_inject_result *result);

// --------------------------------------------------------------------------- PEP 768 (3.14+)

/// The fields of CPython's _Py_DebugOffsets (the block at the start of _PyRuntime, in the
/// ELF section .PyRuntime) that the PEP 768 remote-execution protocol needs.
struct msm_pep768_offsets {
    uint64_t version;                   // PY_VERSION_HEX of the target
    int major, minor, micro;
    int free_threaded;
    uint64_t runtime_size;              // sizeof(_PyRuntimeState)
    uint64_t interpreters_head;         // _PyRuntimeState -> first PyInterpreterState *
    uint64_t interp_size;               // sizeof(PyInterpreterState)
    uint64_t threads_head;              // PyInterpreterState -> first PyThreadState *
    uint64_t threads_main;              // PyInterpreterState -> main PyThreadState *
    uint64_t tstate_size;               // sizeof(PyThreadState)
    uint64_t tstate_next;               // PyThreadState -> next
    uint64_t tstate_native_thread_id;   // PyThreadState -> native_thread_id (unsigned long)
    uint64_t eval_breaker;              // PyThreadState -> eval_breaker (uintptr_t)
    uint64_t remote_debugger_support;   // PyThreadState -> _PyRemoteDebuggerSupport
    uint64_t remote_debugging_enabled;  // PyInterpreterState -> config.remote_debug (int)
    uint64_t debugger_pending_call;     // _PyRemoteDebuggerSupport -> int32_t pending flag
    uint64_t debugger_script_path;      // _PyRemoteDebuggerSupport -> char[script_path_size]
    uint64_t debugger_script_path_size;
};

/// Bytes of _Py_DebugOffsets read from the target (enough for every known layout).
#define MSM_PEP768_OFFSETS_READ 1024
/// The eval-breaker bit sys.remote_exec sets (_PY_EVAL_PLEASE_STOP_BIT in 3.14).
#define MSM_PEP768_PLEASE_STOP_BIT ((uint64_t)1 << 5)

/// Pure: validates a _Py_DebugOffsets block (cookie "xdebugpy", version 3.14.x final, every
/// offset inside its structure) and extracts the fields above. 0 on success, else an
/// enum msm_inject_error (NOT_CPYTHON: no cookie; UNSUPPORTED_VERSION: unknown layout or
/// truncated) with a one-line reason in err.
int msm_pep768_parse_offsets(const uint8_t *buf, size_t len, struct msm_pep768_offsets *out,
                             char *err, size_t errlen);

/// Reads len bytes of the target at addr into buf; 0 on success.
typedef int (*msm_pep768_read_fn)(void *ctx, uint64_t addr, void *buf, size_t len);

/// Where the request goes, as sys.remote_exec computes it.
struct msm_pep768_plan {
    uint64_t interp;                    // first (main) interpreter
    uint64_t tstate;                    // its main thread's PyThreadState
    unsigned long native_thread_id;     // that thread's tid (0 if unreadable)
    uint64_t script_path_addr;          // write the path + NUL here
    size_t script_path_len;             // strlen(path) + 1
    uint64_t pending_call_addr;         // then int32_t 1 here
    uint64_t eval_breaker_addr;         // then OR MSM_PEP768_PLEASE_STOP_BIT into this word
};

/// Pure given `read`: follows _PyRuntime -> interpreters_head -> threads_main, checks that
/// remote debugging is enabled in the target and that the path fits its buffer. 0 or an
/// enum msm_inject_error (REMOTE_DEBUG_DISABLED, BAD_ARGUMENT, PTRACE_ERROR for a failed
/// read, PROCESS_EXITED for no interpreter or main thread) with a one-line reason in err.
int msm_pep768_plan(const struct msm_pep768_offsets *o, uint64_t runtime_addr, const char *script_path,
                    msm_pep768_read_fn read, void *ctx, struct msm_pep768_plan *plan,
                    char *err, size_t errlen);

/// The live path for CPython 3.14+ (GIL build): the .PyRuntime section of the target's
/// libpython or executable -> _Py_DebugOffsets (process_vm_readv) -> plan -> the script
/// path, the pending flag and the eval-breaker bit written with process_vm_writev, in that
/// order. No ptrace; needs root. The target's main thread runs the file at `script_path`
/// (a path valid in the target's mount namespace) at its next eval-breaker check.
/// Refusals leave the target untouched (pyrun_result -2); after the first write
/// pyrun_result is -3. Returns result->error.
int msm_pep768_inject(pid_t pid, const char *script_path, int timeout_ms,
                      struct msm_inject_result *result);

#ifdef __cplusplus
}
#endif

#endif
