#ifndef MSM_CINJECTOR_H
#define MSM_CINJECTOR_H

#include <sys/types.h>

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
};

/// Runs `python_source` with PyRun_SimpleString in the already running CPython
/// (3.10-3.13, GIL build, x86-64) process `pid`, in a thread stopped at the entry of
/// PyEval_SaveThread (it holds the GIL, outside the allocator). Every thread is traced
/// only while this runs; registers and code are restored exactly. Waits at most
/// `timeout_ms` for a thread to reach the safe point. Returns result->error.
int msm_inject_python(pid_t pid, const char *python_source, int timeout_ms,
                      struct msm_inject_result *result);

/// Only the refusals of msm_inject_python (root, Yama, tracer, CPython, version, free-threaded),
/// without attaching: MSM_INJECT_OK with the version and layout filled in, or the refusal.
int msm_inject_check(pid_t pid, struct msm_inject_result *result);

#ifdef __cplusplus
}
#endif

#endif
