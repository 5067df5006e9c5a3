// Live injection of Python source into a running CPython 3.10-3.13 process.
//
//   1. preflight (python_target.c): the object exporting the C API, the version, the
//      refusals, the C library's gadgets; nothing is touched before all of it passed;
//   2. PTRACE_SEIZE every thread (they keep running; clones are followed), then check the
//      process is still the image the preflight saw;
//   3. two uprobes for this process only (safe_point.c): on PyEval_SaveThread, the first
//      thread to arrive (it holds the GIL, outside the allocator) is claimed and stopped by
//      a signal whose default action is to ignore it; if none arrives within a grace
//      period, threads blocked in waits are woken (tracee.c), and an idle Python thread
//      without the GIL may be used at its interrupted wait (PyGILState_Ensure/_Release);
//   4. the thread calls what we need through a return chain (arch_x86_64.c) that ends in a
//      sigreturn frame holding its saved state; the second uprobe stops it there and we
//      restore its full state with ptrace;
//   5. uprobes disarmed, every thread detached with the signals that arrived meanwhile.
//
// Whatever instant this process dies at, the target keeps running correctly: the uprobes
// go with our file descriptors, a pending stop signal is ignored, and a thread in the
// middle of a call finishes it and restores itself through the frame. Tests/integration
// test_inject_kill.py kills the injector at random instants to check exactly that.
#define _GNU_SOURCE
#include "CInjector.h"
#include "arch.h"
#include "inject_common.h"
#include "python_target.h"
#include "safe_point.h"
#include "tracee.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif

// A call gets the injection's timeout plus this: the bootstrap only starts a thread, but
// Thread.start() waits for that thread to take the GIL, which a busy process hands over
// every 5 ms switch interval at best.
enum { WAKE_GRACE_MS = 150, WAKE_INTERVAL_MS = 250, CALL_EXTRA_MS = 10000 };
// A claimed thread stops within microseconds; one that has not after this blocks the signal.
enum { CLAIM_STOP_MS = 100 };
enum { CALL_OK = 0, CALL_GONE = 1, CALL_ERROR = 2, CALL_TIMEOUT = 3, CALL_STOPPED = 4 };
#define PYGILSTATE_UNLOCKED 1  // enum PyGILState_STATE: what Ensure returns to a thread without the GIL

struct injection {
    pid_t pid;
    const char *src;
    int timeout_ms;
    const volatile int *cancel;
    struct msm_inject_result *r;
    struct python_target tg;
    struct tracees c;
    struct safe_point sp;
    int slot;              // alternating chain area (see arch_plan_chain)
};

static int cancelled(const struct injection *in);

/// Test hook: MSM_INJECT_DEBUG_PAUSE=PHASE:MS makes the injector announce on stderr and sleep
/// MS milliseconds at PHASE (cut short by a cancellation), so that a test can kill or stop
/// it exactly there (Tests/integration/test_inject_kill.py). Phases: seized, armed, claimed,
/// call-set, in-call, returned, restored.
static void debug_pause(const struct injection *in, const char *phase) {
    const char *spec = getenv("MSM_INJECT_DEBUG_PAUSE");
    size_t n = strlen(phase);
    if (!spec || strncmp(spec, phase, n) != 0 || spec[n] != ':') return;
    int ms = atoi(spec + n + 1);
    fprintf(stderr, "msm-inject: pause at %s for %d ms (pid %d)\n", phase, ms, in->pid);
    fflush(stderr);
    for (double until = now_ms() + ms; now_ms() < until && !cancelled(in);) usleep(5000);
}

static int cancelled(const struct injection *in) {
    return in->cancel && __atomic_load_n(in->cancel, __ATOMIC_ACQUIRE);
}

static int write_remote(pid_t pid, uint64_t addr, const void *buf, size_t len) {
    struct iovec local = { (void *)buf, len }, remote = { (void *)(uintptr_t)addr, len };
    return process_vm_writev(pid, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

/// Is this stop the signal one of our programs sent to `tid`?
static int is_our_stop(const struct injection *in, pid_t tid, int status) {
    if (!WIFSTOPPED(status) || (status >> 16) != 0 || WSTOPSIG(status) != in->sp.signal) return 0;
    siginfo_t si;
    return ptrace(PTRACE_GETSIGINFO, tid, 0, &si) == 0 && si.si_code == SI_KERNEL;
}

/// Runs `calls` in the stopped thread tid (saved state ctx) and waits for the chain's end.
/// The state the chain restores by itself is ctx (`resume`); the caller restores it with
/// ptrace afterwards. CALL_TIMEOUT: the thread still runs our code and was left to finish.
static int run_chain(struct injection *in, pid_t tid, const struct arch_context *ctx, enum arch_resume resume,
                     const struct arch_call *calls, int ncalls, const void *data, size_t data_len,
                     uint64_t *ret, double deadline) {
    struct arch_plan plan;
    uint64_t sigmask = tracee_blocked_signals(in->pid, tid);
    if (arch_plan_chain(ctx, resume, sigmask, &in->tg.gadgets, calls, ncalls, data, data_len, in->slot, &plan) != 0)
        return CALL_ERROR;
    // The new chain goes to the area the thread is not using: until the registers point at
    // it, a sigreturn from the previous one still finds its frame intact.
    int rc = write_remote(in->pid, plan.low, plan.bytes, plan.len);
    if (rc == 0) {
        safe_point_expect_return(&in->sp, tid, plan.return_sp);
        rc = arch_set_call(tid, ctx, &plan, &calls[0]);
    }
    arch_plan_free(&plan);
    if (rc != 0) return CALL_ERROR;
    in->slot ^= 1;
    struct thread *t = tracee_find(&in->c, tid);
    in->c.chosen = tid;
    if (data_len) debug_pause(in, "call-set");
    if (ptrace(PTRACE_CONT, tid, 0, 0) != 0) return CALL_ERROR;
    t->state = T_RUNNING;
    if (data_len) debug_pause(in, "in-call");
    for (;;) {
        pid_t who; int status;
        double until = deadline;
        if (in->cancel && now_ms() + 50 < until) until = now_ms() + 50;
        if (tracees_next_event(&in->c, until, &who, &status) != 0) {
            if (now_ms() >= deadline || cancelled(in)) return CALL_TIMEOUT;
            continue;
        }
        if (who <= 0) return CALL_GONE;
        if (who != tid) { tracees_handle_event(&in->c, who, status); continue; }
        t = tracee_find(&in->c, tid);
        if (WIFEXITED(status) || WIFSIGNALED(status)) { t->state = T_GONE; return CALL_GONE; }
        if (!WIFSTOPPED(status)) continue;
        t->state = T_STOPPED;
        uint64_t value;
        if (is_our_stop(in, tid, status) && safe_point_returned(&in->sp, &value)) {
            if (data_len) debug_pause(in, "returned");
            *ret = value;
            return CALL_OK;  // the signal is not delivered: we resume it with none
        }
        tracees_handle_event(&in->c, tid, status);  // anything else: as usual
        t = tracee_find(&in->c, tid);
        if (t->state == T_GONE) return CALL_GONE;
        // Stopped (SIGSTOP, a terminal stop) in the middle of our call: it finishes whenever
        // the process is continued, and restores itself; nothing to wait for here.
        if (t->state == T_LISTENING) return CALL_STOPPED;
    }
}

/// A wake stop (PTRACE_INTERRUPT) of a thread marked want_call, right after its epoll wait
/// returned -EINTR: the code can run there between PyGILState_Ensure and _Release. Only
/// epoll_wait/epoll_pwait/epoll_pwait2 returning -EINTR (never restarted by the kernel, so
/// restoring the registers as they are gives the caller exactly its EINTR); or, for a
/// thread woken from a restartable wait (blocked_wait), that wait interrupted with
/// -ERESTARTSYS / -ERESTARTNOHAND (re-executed once the registers are restored), never the
/// GIL's own futexes.
static int is_wait_call_point(struct injection *in, pid_t tid, int status, struct arch_context *ctx, int *blocked) {
    if (!WIFSTOPPED(status) || (status >> 16) != PTRACE_EVENT_STOP || tracee_is_stop_signal(WSTOPSIG(status))) return 0;
    struct thread *t = tracee_find(&in->c, tid);
    const struct python_target *tg = &in->tg;
    if (!t || !t->want_call || t->no_call) return 0;
    if (!tg->gil_ensure || !tg->gil_release || !tg->gil_check || !tg->gil_this) return 0;
    // Its calls end with a stop signal it must not block (ZMQ's threads block them all).
    if (tracee_blocked_signals(in->pid, tid) & (1ULL << (in->sp.signal - 1))) {
        t->no_call = 1;
        t->want_call = 0;
        return 0;
    }
    if (arch_save(tid, ctx) != 0) return 0;
    long nr = arch_syscall_nr(ctx);
    long long rax = arch_syscall_ret(ctx);
    if (t->blocked_wait) {  // see arch_is_restartable_wait
        t->want_call = 0;
        // A futex inside _PyRuntime is the GIL's own mutex or condvar (3.10-3.13 keep the main
        // interpreter's GIL there): a thread in take_gil or, worse, in drop_gil (it has already
        // cleared its thread state, so PyGILState_Check says 0, but it still holds the GIL)
        // must never enter PyGILState_Ensure. Without _PyRuntime no futex is used at all.
        uint64_t a0 = arch_syscall_arg0(ctx);
        int gil_futex = arch_is_futex(nr) && (!tg->runtime || !tg->runtime_size
                                              || (a0 >= tg->runtime && a0 < tg->runtime + tg->runtime_size));
        if (arch_is_restartable_wait(nr) && !gil_futex && arch_is_restart_return(rax)
            && arch_at_syscall_return(in->pid, ctx)) {
            *blocked = 1;
            return 1;
        }
        t->blocked_wait = 0;  // not usable at this stop: a later wake round may try again
        arch_context_free(ctx);
        return 0;
    }
    *blocked = 0;
    if (arch_is_event_wait(nr) && rax == -EINTR) return 1;
    arch_context_free(ctx);
    return 0;
}

/// Gives a thread its saved state back and lets it go on (a thread not used after all).
static int release_thread(struct injection *in, pid_t tid, struct arch_context *ctx) {
    int rc = arch_restore(tid, ctx);
    struct thread *t = tracee_find(&in->c, tid);
    in->c.chosen = 0;
    if (rc == 0 && ptrace(PTRACE_CONT, tid, 0, 0) == 0 && t) t->state = T_RUNNING;
    return rc;
}

static int call_failure(struct injection *in, int cr, pid_t tid, const char *what) {
    struct msm_inject_result *r = in->r;
    if (cr == CALL_GONE) return fail(r, MSM_INJECT_PROCESS_EXITED, "pid %d exited during the injection", in->pid);
    if (cr == CALL_STOPPED)
        return fail(r, MSM_INJECT_CALL_PENDING,
                    "pid %d was stopped (SIGSTOP or a terminal stop) while %s ran in thread %d; the "
                    "thread was released and gets its own state back when the process continues",
                    in->pid, what, tid);
    if (cr == CALL_TIMEOUT)
        return fail(r, MSM_INJECT_CALL_PENDING,
                    "%s in thread %d of pid %d did not return within the time allowed (the process is "
                    "stopped, frozen or busy); the thread was released and gets its own state back "
                    "when the call returns", what, tid, in->pid);
    return fail(r, MSM_INJECT_PTRACE_ERROR, "pid %d: cannot set up %s in thread %d (%s); the thread "
                "is unchanged", in->pid, what, tid, strerror(errno));
}

/// Waits for a thread we may use: a claim at the safe point, or a Python thread at an
/// interrupted wait (after wake rounds). 0 with *tid and ctx filled, or an error code.
static int acquire_thread(struct injection *in, double t0, double deadline, pid_t *tid_out,
                          struct arch_context *ctx, int *at_wait, int *at_blocked) {
    struct msm_inject_result *r = in->r;
    double next_wake = now_ms() + WAKE_GRACE_MS;  // relative to the arming
    safe_point_arm(&in->sp);
    debug_pause(in, "armed");
    pid_t claim = 0;          // a claim seen, and since when: a thread that blocks the stop
    double claim_seen = 0;    // signal (set after we looked) never stops; it is excluded
    for (;;) {
        pid_t now_claimed = safe_point_claimed(&in->sp);
        if (now_claimed && now_claimed != claim) {
            claim = now_claimed;
            claim_seen = now_ms();
        } else if (now_claimed && now_ms() - claim_seen > CLAIM_STOP_MS) {
            safe_point_exclude(&in->sp, claim);
            claim = 0;
            safe_point_arm(&in->sp);
        }
        if (in->c.exec_seen) return fail(r, MSM_INJECT_PROCESS_EXITED, "pid %d called exec; nothing was injected", in->pid);
        if (cancelled(in)) return fail(r, MSM_INJECT_CANCELLED, "the injection into pid %d was cancelled; nothing was changed", in->pid);
        // No thread at the safe point after a short grace period: wake the threads that
        // wait in epoll (an idle asyncio loop never releases the GIL otherwise), then again
        // now and then for threads that started waiting since.
        double until = next_wake < deadline ? next_wake : deadline;
        if (now_ms() + 50 < until) until = now_ms() + 50;  // cancellation, stuck claims
        pid_t tid = 0;
        int status = 0;
        if (tracees_next_event(&in->c, until, &tid, &status) != 0) {
            double now = now_ms();
            if (now >= deadline)
                return fail(r, MSM_INJECT_TIMEOUT,
                            "no thread of pid %d released the GIL within %.1f s (busy in pure Python "
                            "without I/O, or blocked); nothing was changed; retry or start it under "
                            "`ms-service-metric exec`", in->pid, in->timeout_ms / 1000.0);
            if (now >= next_wake) {
                r->woken_threads += tracees_wake_waiters(&in->c);
                next_wake = now_ms() + WAKE_INTERVAL_MS;
            }
            continue;
        }
        if (tid <= 0) return fail(r, MSM_INJECT_PROCESS_EXITED, "pid %d exited", in->pid);
        if (is_our_stop(in, tid, status) && tid == safe_point_claimed(&in->sp)) {
            safe_point_disarm(&in->sp);
            struct thread *t = tracee_find(&in->c, tid);
            if (t) t->state = T_STOPPED;
            if (arch_save(tid, ctx) != 0) {
                if (t && ptrace(PTRACE_CONT, tid, 0, 0) == 0) t->state = T_RUNNING;
                safe_point_arm(&in->sp);
                continue;
            }
            // The stop comes after the probed first instruction (push): still the prologue.
            uint64_t pc = arch_pc(ctx);
            if (pc <= in->tg.save_thread || pc > in->tg.save_thread + 16) {
                arch_context_free(ctx);
                if (t && ptrace(PTRACE_CONT, tid, 0, 0) == 0) t->state = T_RUNNING;
                safe_point_arm(&in->sp);
                continue;
            }
            *at_wait = *at_blocked = 0;
            *tid_out = tid;
            debug_pause(in, "claimed");
            r->safe_point_method = t && t->woken ? MSM_SAFE_POINT_WOKEN : MSM_SAFE_POINT_NATURAL;
            r->wait_ms = now_ms() - t0;
            return 0;
        }
        if (is_wait_call_point(in, tid, status, ctx, at_blocked)) {
            safe_point_disarm(&in->sp);  // a claim made meanwhile is swallowed (tracee.c)
            struct thread *t = tracee_find(&in->c, tid);
            t->state = T_STOPPED;
            *at_wait = 1;
            *tid_out = tid;
            r->safe_point_method = *at_blocked ? MSM_SAFE_POINT_BLOCKED_WAIT : MSM_SAFE_POINT_EVENT_WAIT;
            r->wait_ms = now_ms() - t0;
            return 0;
        }
        tracees_note_wake_stop(&in->c, tid, status);
        tracees_handle_event(&in->c, tid, status);
    }
}

static int run(struct injection *in, double t0) {
    struct msm_inject_result *r = in->r;
    pid_t pid = in->pid;
    // The wait for a safe point starts once the uprobes are in: registering them waits for
    // the target's mmap lock, which a busy vLLM process holds for seconds at a time.
    double deadline = now_ms() + in->timeout_ms;
    size_t src_len = strlen(in->src) + 1;
    for (;;) {
        pid_t tid = 0;
        int at_wait = 0, at_blocked = 0;
        struct arch_context ctx;
        int rc = acquire_thread(in, t0, deadline, &tid, &ctx, &at_wait, &at_blocked);
        if (rc) return rc;
        r->safe_point_hits++;
        double held0 = now_ms();
        double call_deadline = now_ms() + CALL_EXTRA_MS + in->timeout_ms;
        enum arch_resume resume = at_blocked ? ARCH_RESUME_RESTART_SYSCALL : ARCH_RESUME_AS_IS;
        struct thread *t = tracee_find(&in->c, tid);
        uint64_t value = 0;
        int cr;

        if (at_wait) {
            // Only a Python thread (it has a thread state) that does not hold the GIL.
            uint64_t this_ts = 0, holds = 0;
            struct arch_call q1 = { .fn = in->tg.gil_this };
            cr = run_chain(in, tid, &ctx, resume, &q1, 1, NULL, 0, &this_ts, call_deadline);
            if (cr == CALL_OK && this_ts) {
                struct arch_call q2 = { .fn = in->tg.gil_check };
                cr = run_chain(in, tid, &ctx, resume, &q2, 1, NULL, 0, &holds, call_deadline);
            }
            if (cr != CALL_OK) { arch_context_free(&ctx); return call_failure(in, cr, tid, "a PyGILState query"); }
            if (!this_ts || (int)holds != 0) {  // not for us: give it back, wait on
                if (t) { t->no_call = 1; t->want_call = 0; }
                r->safe_point_method = MSM_SAFE_POINT_NONE;
                r->held_ms += now_ms() - held0;
                rc = release_thread(in, tid, &ctx);
                arch_context_free(&ctx);
                if (rc) return fail(r, MSM_INJECT_PTRACE_ERROR, "cannot restore thread %d of pid %d", tid, pid);
                continue;
            }
            // Ensure, run, release in one chain: a thread that holds the GIL is never left
            // between them, whenever we die.
            struct arch_call calls[3] = {
                { .fn = in->tg.gil_ensure },
                in->tg.pyrun ? (struct arch_call){ .fn = in->tg.pyrun, .args = { ARCH_ARG_DATA }, .nargs = 1 }
                             : (struct arch_call){ .fn = in->tg.pyrun_flags, .args = { ARCH_ARG_DATA, 0 }, .nargs = 2 },
                { .fn = in->tg.gil_release, .args = { PYGILSTATE_UNLOCKED }, .nargs = 1 },
            };
            cr = run_chain(in, tid, &ctx, resume, calls, 3, in->src, src_len, &value, call_deadline);
            if (cr != CALL_OK) { arch_context_free(&ctx); return call_failure(in, cr, tid, "the injected code"); }
            r->pyrun_result = 0;  // inside the chain; the bootstrap catches its own errors
        } else {
            // A pending exception (PyErr_Occurred) makes this hit unusable: let it go, re-arm.
            if (in->tg.err_occurred) {
                struct arch_call q = { .fn = in->tg.err_occurred };
                cr = run_chain(in, tid, &ctx, resume, &q, 1, NULL, 0, &value, call_deadline);
                if (cr != CALL_OK) { arch_context_free(&ctx); return call_failure(in, cr, tid, "PyErr_Occurred"); }
                if (value) {
                    r->safe_point_method = MSM_SAFE_POINT_NONE;
                    r->held_ms += now_ms() - held0;
                    rc = release_thread(in, tid, &ctx);
                    arch_context_free(&ctx);
                    if (rc) return fail(r, MSM_INJECT_PTRACE_ERROR, "cannot restore thread %d of pid %d", tid, pid);
                    continue;
                }
            }
            struct arch_call call = in->tg.pyrun
                ? (struct arch_call){ .fn = in->tg.pyrun, .args = { ARCH_ARG_DATA }, .nargs = 1 }
                : (struct arch_call){ .fn = in->tg.pyrun_flags, .args = { ARCH_ARG_DATA, 0 }, .nargs = 2 };
            cr = run_chain(in, tid, &ctx, resume, &call, 1, in->src, src_len, &value, call_deadline);
            if (cr != CALL_OK) { arch_context_free(&ctx); return call_failure(in, cr, tid, "the injected code"); }
            r->pyrun_result = (int)(int32_t)value;
        }
        r->thread = tid;
        int restored = arch_restore(tid, &ctx);
        arch_context_free(&ctx);
        in->c.chosen = 0;  // stays stopped: detached with no signal below
        debug_pause(in, "restored");
        r->held_ms += now_ms() - held0;
        if (restored != 0)
            return fail(r, MSM_INJECT_PTRACE_ERROR,
                        "cannot restore the registers of thread %d of pid %d; it restores itself "
                        "through its signal frame", tid, pid);
        if (r->pyrun_result != 0)
            return fail(r, MSM_INJECT_PYTHON_ERROR,
                        "the injected code raised in pid %d (traceback on the target's stderr); the "
                        "process continues unchanged otherwise", pid);
        return fail(r, MSM_INJECT_OK, "injected into pid %d (thread %d, CPython %s, %s)", pid, tid,
                    r->python_version, in->tg.layout == MSM_LAYOUT_STATIC ? "static executable" : "shared libpython");
    }
}

/// Preflight, then seize, arm, run, and always: disarm, detach, remove the uprobes.
static int inject(struct injection *in, const struct msm_inject_options *o, double t0) {
    struct msm_inject_result *r = in->r;
    pid_t pid = in->pid;
    int rc = python_target_preflight(pid, r, &in->tg);
    if (rc) return rc;
    if (r->method == MSM_INJECT_METHOD_PEP768)
        return fail(r, MSM_INJECT_UNSUPPORTED_VERSION,
                    "pid %d runs CPython %s: ptrace injection covers 3.10-3.13; 3.14 goes through "
                    "PEP 768 (msm_pep768_inject); nothing was changed", pid, r->python_version);
    if ((rc = python_target_gadgets(pid, &in->tg, r))) return rc;
    int signal = safe_point_choose_signal(pid);
    if (!signal)
        return fail(r, MSM_INJECT_ATTACH_FAILED,
                    "pid %d catches both SIGURG and SIGWINCH, one of which the injection needs "
                    "unhandled; nothing was changed; start it under `ms-service-metric exec`", pid);
    char why[512];
    if (safe_point_open(&in->sp, o->bpf_object, o->bpf_object_len, pid, signal, why, sizeof why) != 0)
        return fail(r, MSM_INJECT_ATTACH_FAILED, "pid %d: %s; nothing was changed", pid, why);

    in->c.pid = pid;
    in->c.stop_signal = signal;
    if (tracees_seize_all(&in->c, r) != 0) {
        rc = r->error;
        goto out;
    }
    r->threads = (int)in->c.n;
    debug_pause(in, "seized");
    if (!python_target_unchanged(pid, &in->tg)) {
        rc = fail(r, MSM_INJECT_PROCESS_EXITED, "pid %d exited or changed its image while being "
                  "attached; nothing was changed", pid);
        goto out;
    }
    // Threads that block the stop signal would be claimed and never stop.
    for (size_t i = 0; i < in->c.n; i++)
        if (tracee_blocked_signals(pid, in->c.t[i].tid) & (1ULL << (signal - 1))) safe_point_exclude(&in->sp, in->c.t[i].tid);
    char safe_path[128], return_path[128];
    python_target_map_file(pid, in->tg.map_start, in->tg.map_end, safe_path, sizeof safe_path);
    python_target_map_file(pid, in->tg.gadgets.sigreturn_map_start, in->tg.gadgets.sigreturn_map_end,
                           return_path, sizeof return_path);
    if (safe_point_attach(&in->sp, pid, safe_path, in->tg.save_thread_offset, return_path,
                          in->tg.gadgets.sigreturn_offset, why, sizeof why) != 0) {
        rc = fail(r, MSM_INJECT_ATTACH_FAILED, "pid %d: %s; nothing was changed", pid, why);
        goto out;
    }
    rc = run(in, t0);
out:
    safe_point_disarm(&in->sp);
    in->c.chosen = 0;
    tracees_detach_all(&in->c);
    safe_point_close(&in->sp);
    free(in->c.t);
    return rc;
}

int msm_inject_python(pid_t pid, const char *python_source, int timeout_ms,
                      const struct msm_inject_options *options, struct msm_inject_result *result) {
    if (!result) return MSM_INJECT_BAD_ARGUMENT;
    memset(result, 0, sizeof *result);
    result->pyrun_result = -2;
    double t0 = now_ms();
    if (!python_source || pid <= 0 || timeout_ms <= 0 || !options || !options->bpf_object)
        return fail(result, MSM_INJECT_BAD_ARGUMENT, "bad argument (pid %d, timeout %d ms)", pid, timeout_ms);
#if MSM_ARCH_SUPPORTED
    struct injection in;
    memset(&in, 0, sizeof in);
    in.pid = pid;
    in.src = python_source;
    in.timeout_ms = timeout_ms;
    in.cancel = options->cancel;
    in.r = result;
    in.sp.excluded_fd = -1;
    int rc = inject(&in, options, t0);
    result->total_ms = now_ms() - t0;
    return rc;
#else
    (void)t0;
    return fail(result, MSM_INJECT_UNSUPPORTED_ARCH,
                "live injection is implemented for x86-64 only; start the service under `ms-service-metric exec`");
#endif
}

int msm_inject_check(pid_t pid, struct msm_inject_result *result) {
    if (!result) return MSM_INJECT_BAD_ARGUMENT;
    memset(result, 0, sizeof *result);
    result->pyrun_result = -2;
    if (pid <= 0) return fail(result, MSM_INJECT_BAD_ARGUMENT, "bad pid %d", pid);
#if MSM_ARCH_SUPPORTED
    struct python_target tg;
    int rc = python_target_preflight(pid, result, &tg);
    if (!rc) fail(result, MSM_INJECT_OK, "pid %d: CPython %s (%s) can be injected%s", pid, result->python_version,
                  result->layout == MSM_LAYOUT_STATIC ? "static executable" : "shared libpython",
                  result->method == MSM_INJECT_METHOD_PEP768 ? " through PEP 768" : "");
    return rc;
#else
    return fail(result, MSM_INJECT_UNSUPPORTED_ARCH,
                "live injection is implemented for x86-64 only; start the service under `ms-service-metric exec`");
#endif
}
