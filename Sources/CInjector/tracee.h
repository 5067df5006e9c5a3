// The traced threads of one injection: seizing every thread, the event loop that keeps the
// target running as if we were not there (signals re-delivered, group-stops respected,
// clones followed), waking threads from event-loop waits, and detaching. Internal to
// CInjector.
#ifndef MSM_TRACEE_H
#define MSM_TRACEE_H

#include "CInjector.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum tstate { T_RUNNING, T_STOPPED, T_LISTENING, T_GONE };

struct thread {
    pid_t tid;
    enum tstate state;
    int pending_sig;   // signal to deliver at detach
    int interrupted;   // PTRACE_INTERRUPT sent (to stop it for the detach)
    int woken;         // PTRACE_INTERRUPTs sent to wake it from an event-loop wait
    int wake_stops;    // ... and the stops they caused (it was resumed: the wait saw EINTR)
    int want_call;     // woken before, back in the wait without reaching the safe point (the
                       // EINTR is retried in C, e.g. libuv): run the code at its next wake stop
    int no_call;       // not a Python thread without the GIL: never run the code there
    int blocked_wait;  // woken from a restartable blocking wait (futex/read/poll/ppoll)
    int signal_blocked; // blocks the stop signal: never woken, claimed or used
};

struct tracees {
    pid_t pid;
    struct thread *t;
    size_t n, cap;
    int detaching;         // every stop is kept (recorded) instead of resumed
    int exec_seen;
    pid_t chosen;          // the thread running our code (its stops are handled by the caller)
    int wake_rounds;       // wake_event_waiters calls so far
    int stop_signal;       // the safe point's signal (see safe_point.h): never re-delivered
};

struct thread *tracee_find(struct tracees *c, pid_t tid);
struct thread *tracee_add(struct tracees *c, pid_t tid, enum tstate st);

/// Seizes every thread of c->pid (re-reading /proc/PID/task until no new one appears).
/// 0, or an enum msm_inject_error with the message in r.
int tracees_seize_all(struct tracees *c, struct msm_inject_result *r);

/// Waits (bounded) for the next ptrace event of any of our threads; polls every thread
/// with WNOHANG so that the caller's own children are never reaped. 0: got one (tid 0:
/// every thread is gone); 1: deadline passed.
int tracees_next_event(struct tracees *c, double deadline, pid_t *tid, int *status);

/// Every event that is not the chosen thread's business: keep the target running as if we
/// were not there.
void tracees_handle_event(struct tracees *c, pid_t tid, int status);

/// Stops every thread that still runs, then detaches all (with their pending signals).
void tracees_detach_all(struct tracees *c);

/// PTRACE_INTERRUPT for every thread blocked in an event-loop wait (and, from the second
/// round, in a restartable blocking wait). Returns how many were woken.
int tracees_wake_waiters(struct tracees *c);

/// Counts the stops our wake-ups caused (see want_call).
void tracees_note_wake_stop(struct tracees *c, pid_t tid, int status);

int tracee_is_stop_signal(int sig);

/// Blocked signal mask of a thread (SigBlk in its status file); 0 if unreadable.
uint64_t tracee_blocked_signals(pid_t pid, pid_t tid);

#endif
