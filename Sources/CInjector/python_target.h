// What the injector needs to know about a CPython process before touching it: the object
// that exports the C API (libpython3.X.so or a static executable), the addresses of the
// functions it calls, the Python version and build, and the C library's return gadgets.
// Every refusal is decided here, before anything is changed. Internal to CInjector.
#ifndef MSM_PYTHON_TARGET_H
#define MSM_PYTHON_TARGET_H

#include "CInjector.h"
#include "arch.h"

#include <stdint.h>
#include <sys/types.h>

struct python_target {
    uint64_t save_thread;                 // PyEval_SaveThread: the safe point (runtime address)
    uint64_t save_thread_offset;          // ... its file offset (the uprobe goes there)
    uint64_t pyrun, pyrun_flags, err_occurred;
    uint64_t gil_ensure, gil_release, gil_check, gil_this;  // PyGILState_*
    uint64_t runtime, runtime_size;       // _PyRuntime (holds the main interpreter's GIL)
    char path[512];                       // the object, as the target maps it
    uint64_t map_start, map_end;          // its first mapping (for /proc/PID/map_files)
    uint64_t inode;                       // the mapped file's inode (same image after seizing)
    uint64_t start_time;                  // the process's start time (pid not reused)
    int layout;                           // enum msm_python_layout
    struct arch_gadgets gadgets;          // in the C library (filled by python_target_gadgets)
};

/// Every refusal (root, Yama, tracer, not CPython, version, free-threaded, shadow stack)
/// before anything is touched; fills tg and r's version, layout and method. 0 or an enum
/// msm_inject_error with the message in r.
int python_target_preflight(pid_t pid, struct msm_inject_result *r, struct python_target *tg);

/// The C library's sigreturn trampoline and return gadgets (see arch_find_gadgets). 0 or an
/// enum msm_inject_error with the message in r.
int python_target_gadgets(pid_t pid, struct python_target *tg, struct msm_inject_result *r);

/// Still the process and image the preflight saw (same start time, object still mapped at
/// the same address from the same inode). 1 yes, 0 no.
int python_target_unchanged(pid_t pid, const struct python_target *tg);

/// /proc/PID/map_files/START-END of a mapping: the very file mapped, even in another mount
/// namespace or after the file was replaced on disk.
void python_target_map_file(pid_t pid, uint64_t start, uint64_t end, char *out, size_t outlen);

/// Start time of a process (field 22 of /proc/PID/stat); 0 if unreadable.
uint64_t python_target_start_time(pid_t pid);

#endif
