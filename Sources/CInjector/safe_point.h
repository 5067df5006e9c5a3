// The safe point and the return point of a ptrace injection, as uprobes owned by this
// process (bpf/msm_inject.bpf.c, bpf/msm_inject_abi.h): nothing of them is left in the
// target when this process exits, however it exits. Internal to CInjector.
#ifndef MSM_SAFE_POINT_H
#define MSM_SAFE_POINT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "../../bpf/msm_inject_abi.h"

struct bpf_object;
struct bpf_link;

struct safe_point {
    struct bpf_object *obj;
    struct bpf_link *at_safe_point;   // PyEval_SaveThread
    struct bpf_link *at_return;       // the C library's sigreturn trampoline
    struct msm_inject_state *state;   // shared with the programs (mmap of the state map)
    size_t state_len;
    int excluded_fd;
    int signal;
};

/// The signal the programs stop a thread with: one whose default action is to ignore it
/// and that pid does not catch (SIGURG, else SIGWINCH). 0 if it catches both.
int safe_point_choose_signal(pid_t pid);

/// Loads the embedded programs (bytes/len: msm_inject.bpf.o) for pid. 0, or -1 with err.
int safe_point_open(struct safe_point *sp, const void *bytes, size_t len, pid_t pid, int signal,
                    char *err, size_t errlen);

/// Attaches both uprobes, for pid only: the safe point at file offset `safe_offset` of
/// `safe_path`, the return point at `return_offset` of `return_path` (paths that reach the
/// very files pid maps, e.g. /proc/PID/map_files/…). 0, or -1 with err.
int safe_point_attach(struct safe_point *sp, pid_t pid, const char *safe_path, uint64_t safe_offset,
                      const char *return_path, uint64_t return_offset, char *err, size_t errlen);

/// A thread that blocks the stop signal is never claimed.
void safe_point_exclude(struct safe_point *sp, pid_t tid);

/// The next thread to reach the safe point is claimed and stopped.
void safe_point_arm(struct safe_point *sp);
/// No more claims (a claim already made still arrives as a stop).
void safe_point_disarm(struct safe_point *sp);
pid_t safe_point_claimed(const struct safe_point *sp);
/// Thread tid (the claimed one, or one taken at a wait) is about to run a call; its return
/// at return_sp is to be signalled. Call only while disarmed.
void safe_point_expect_return(struct safe_point *sp, pid_t tid, uint64_t return_sp);
/// 1 and the call's result once the return program saw it.
int safe_point_returned(const struct safe_point *sp, uint64_t *value);
uint64_t safe_point_hits(const struct safe_point *sp);

/// Disarms, then removes both uprobes and unloads the programs on a thread of its own,
/// without waiting (each removal waits for an RCU grace period).
void safe_point_close(struct safe_point *sp);

#endif
