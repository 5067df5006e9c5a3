// The traced threads of one injection (see tracee.h).
#define _GNU_SOURCE
#include "tracee.h"
#include "arch.h"
#include "inject_common.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif
#ifndef __WALL
#define __WALL 0x40000000
#endif

struct thread *tracee_find(struct tracees *c, pid_t tid) {
    for (size_t i = 0; i < c->n; i++)
        if (c->t[i].tid == tid) return &c->t[i];
    return NULL;
}

struct thread *tracee_add(struct tracees *c, pid_t tid, enum tstate st) {
    struct thread *t = tracee_find(c, tid);
    if (t) { if (t->state == T_GONE) t->state = st; return t; }
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        struct thread *nv = realloc(c->t, cap * sizeof *nv);
        if (!nv) return NULL;
        c->t = nv;
        c->cap = cap;
    }
    t = &c->t[c->n++];
    memset(t, 0, sizeof *t);
    t->tid = tid;
    t->state = st;
    return t;
}

static size_t live_threads(struct tracees *c) {
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++) k += c->t[i].state != T_GONE;
    return k;
}

int tracee_is_stop_signal(int sig) {
    return sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
}

/// A signal our safe-point or return program sent (bpf_send_signal_thread: SI_KERNEL).
static int is_our_signal(struct tracees *c, pid_t tid, int sig) {
    if (!c->stop_signal || sig != c->stop_signal) return 0;
    siginfo_t si;
    return ptrace(PTRACE_GETSIGINFO, tid, 0, &si) == 0 && si.si_code == SI_KERNEL;
}

int tracees_next_event(struct tracees *c, double deadline, pid_t *tid, int *status) {
    useconds_t nap = 50;
    for (;;) {
        if (c->chosen) {  // the thread running our code first: its return matters most
            struct thread *t = tracee_find(c, c->chosen);
            if (t && t->state != T_GONE) {
                pid_t r = waitpid(c->chosen, status, WNOHANG | __WALL);
                if (r == c->chosen) { *tid = r; return 0; }
                if (r < 0 && errno == ECHILD) { t->state = T_GONE; *tid = r; *status = 0; return 0; }
            }
        }
        for (size_t i = 0; i < c->n; i++) {
            if (c->t[i].state == T_GONE) continue;
            pid_t r = waitpid(c->t[i].tid, status, WNOHANG | __WALL);
            if (r == c->t[i].tid) { *tid = r; return 0; }
            if (r < 0 && errno == ECHILD) c->t[i].state = T_GONE;  // reaped elsewhere or no longer ours
        }
        if (live_threads(c) == 0) { *tid = 0; *status = 0; return 0; }
        if (now_ms() >= deadline) return 1;
        usleep(nap);
        if (nap < 1000) nap *= 2;
    }
}

void tracees_handle_event(struct tracees *c, pid_t tid, int status) {
    struct thread *t = tracee_find(c, tid);
    if (!t) return;
    if (WIFEXITED(status) || WIFSIGNALED(status)) { t->state = T_GONE; return; }
    if (!WIFSTOPPED(status)) return;
    int sig = WSTOPSIG(status);
    int ev = status >> 16;
    t->state = T_STOPPED;
    if (ev == PTRACE_EVENT_CLONE) {
        unsigned long newtid = 0;
        if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &newtid) == 0 && newtid)
            tracee_add(c, (pid_t)newtid, T_RUNNING);  // it reports its own first stop
        if (c->detaching) return;
    } else if (ev == PTRACE_EVENT_EXEC) {
        c->exec_seen = 1;
    } else if (ev == PTRACE_EVENT_STOP) {
        if (tracee_is_stop_signal(sig)) {     // group-stop: stay stopped, as the group wants
            if (c->detaching) return;          // detaching keeps it stopped
            if (ptrace(PTRACE_LISTEN, tid, 0, 0) == 0) t->state = T_LISTENING;
            return;
        }
        // PTRACE_INTERRUPT, a new clone's first stop, or the end of a group-stop
        if (t->blocked_wait && t->want_call) {  // its blocked-wait stop came while another
            t->blocked_wait = 0;                // thread was busy: a later wake round retries
            t->want_call = 0;
        }
        if (c->detaching) return;
    } else if (ev == 0) {
        // Our own stop signal (a claim we no longer need, or a late one): swallowed; its
        // default action is to be ignored anyway.
        if (is_our_signal(c, tid, sig)) sig = 0;
        if (c->detaching) { t->pending_sig = sig; return; }
        if (ptrace(PTRACE_CONT, tid, 0, (void *)(long)sig) == 0) t->state = T_RUNNING;
        return;
    } else if (c->detaching) {
        return;
    }
    if (ptrace(PTRACE_CONT, tid, 0, 0) == 0) t->state = T_RUNNING;
}

/// Syscall a traced thread is blocked in (/proc/PID/task/TID/syscall), -1 if running/unknown.
static long blocked_syscall(pid_t pid, pid_t tid) {
    char path[96], buf[256];
    snprintf(path, sizeof path, "/proc/%d/task/%d/syscall", pid, tid);
    if (read_text(path, buf, sizeof buf) <= 0 || !isdigit((unsigned char)buf[0])) return -1;  // "running", "-1 ..."
    return strtol(buf, NULL, 10);
}

int tracees_wake_waiters(struct tracees *c) {
    int woken = 0;
    for (size_t i = 0; i < c->n; i++) {
        struct thread *t = &c->t[i];
        if (t->state != T_RUNNING || t->signal_blocked) continue;
        // A thread that blocks the stop signal can neither be claimed nor run our calls
        // (see inject.c): waking it is pointless.
        if (c->stop_signal && (tracee_blocked_signals(c->pid, t->tid) & (1ULL << (c->stop_signal - 1)))) {
            t->signal_blocked = 1;
            continue;
        }
        long nr = blocked_syscall(c->pid, t->tid);
        if (arch_is_restartable_wait(nr) && c->wake_rounds >= 1 && !t->no_call && !t->blocked_wait) {
            t->blocked_wait = 1;  // at its wake stop the code runs there, or it is retried later
            t->want_call = 1;
            if (ptrace(PTRACE_INTERRUPT, t->tid, 0, 0) == 0) { t->woken++; woken++; }
            else if (errno == ESRCH) t->state = T_GONE;
            continue;
        }
        if (!arch_is_event_wait(nr)) continue;
        if (t->woken && t->wake_stops && !t->no_call) t->want_call = 1;
        if (ptrace(PTRACE_INTERRUPT, t->tid, 0, 0) == 0) { t->woken++; woken++; }
        else if (errno == ESRCH) t->state = T_GONE;
    }
    c->wake_rounds++;
    return woken;
}

void tracees_note_wake_stop(struct tracees *c, pid_t tid, int status) {
    struct thread *t = tracee_find(c, tid);
    if (t && t->woken && WIFSTOPPED(status) && (status >> 16) == PTRACE_EVENT_STOP
        && !tracee_is_stop_signal(WSTOPSIG(status)))
        t->wake_stops++;
}

/// True when thread tid of pid is gone or exiting (its /proc status is gone or says Z or X)
/// within 200 ms. PTRACE_SEIZE answers EPERM for a thread whose exit has begun (the kernel
/// refuses a task with exit_state set), e.g. a per-request thread of a busy server finishing
/// just as we scan: such a thread is skipped, it runs no more Python code.
static int thread_is_exiting(pid_t pid, pid_t tid) {
    char path[96], buf[512];
    snprintf(path, sizeof path, "/proc/%d/task/%d/status", pid, tid);
    for (int k = 0; k < 40; k++) {
        if (read_text(path, buf, sizeof buf) < 0) return 1;
        const char *st = strstr(buf, "\nState:");
        if (!st) return 1;
        st += 7;
        while (*st == ' ' || *st == '\t') st++;
        if (*st == 'Z' || *st == 'X') return 1;
        usleep(5000);
    }
    return 0;
}

int tracees_seize_all(struct tracees *c, struct msm_inject_result *r) {
    long opts = PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC;
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", c->pid);
    for (int round = 0; round < 100; round++) {
        DIR *d = opendir(dir);
        if (!d) return fail(r, MSM_INJECT_PROCESS_EXITED, "pid %d exited", c->pid);
        int added = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!isdigit((unsigned char)e->d_name[0])) continue;
            pid_t tid = (pid_t)atoi(e->d_name);
            if (tracee_find(c, tid)) continue;
            if (ptrace(PTRACE_SEIZE, tid, 0, (void *)opts) == 0) {
                tracee_add(c, tid, T_RUNNING);
                added++;
                continue;
            }
            int err = errno;
            if (err == ESRCH) continue;  // exited meanwhile
            char st[96];
            snprintf(st, sizeof st, "/proc/%d/task/%d/status", c->pid, tid);
            long tracer = tracer_of(st);
            if (tracer == (long)gettid()) {  // TracerPid names the tracing thread: a clone we
                tracee_add(c, tid, T_RUNNING);  // already follow, its event not seen yet
                added++;
                continue;
            }
            if (err == EPERM && tracer <= 0 && tid != c->pid && thread_is_exiting(c->pid, tid)) continue;
            closedir(d);
            if (tracer > 0)
                return fail(r, MSM_INJECT_ALREADY_TRACED,
                            "thread %d of pid %d is traced by pid %ld (a debugger or strace); "
                            "detach it and retry; nothing was changed", tid, c->pid, tracer);
            return fail(r, MSM_INJECT_ATTACH_FAILED,
                        "cannot attach to thread %d of pid %d: %s; nothing was changed",
                        tid, c->pid, strerror(err));
        }
        closedir(d);
        if (!added && round > 0) return 0;
    }
    return 0;
}

void tracees_detach_all(struct tracees *c) {
    c->detaching = 1;
    for (size_t i = 0; i < c->n; i++) {
        struct thread *t = &c->t[i];
        if (t->state == T_RUNNING && !t->interrupted) {
            if (ptrace(PTRACE_INTERRUPT, t->tid, 0, 0) == 0) t->interrupted = 1;
            else if (errno == ESRCH) t->state = T_GONE;
        }
    }
    double deadline = now_ms() + 3000;
    for (;;) {
        int running = 0;
        for (size_t i = 0; i < c->n; i++) {
            struct thread *t = &c->t[i];
            if (t->state == T_RUNNING) {
                running = 1;
                if (!t->interrupted && ptrace(PTRACE_INTERRUPT, t->tid, 0, 0) == 0) t->interrupted = 1;
            }
        }
        if (!running) break;
        pid_t tid; int status;
        if (tracees_next_event(c, deadline, &tid, &status) != 0) break;
        if (tid > 0) tracees_handle_event(c, tid, status);
    }
    for (size_t i = 0; i < c->n; i++) {
        struct thread *t = &c->t[i];
        if (t->state == T_GONE) continue;
        if (ptrace(PTRACE_DETACH, t->tid, 0, (void *)(long)t->pending_sig) != 0 && errno == ESRCH
            && t->state != T_STOPPED) {
            // Still running (a frozen cgroup never reports the stop): one more try. If it
            // still does not stop, the kernel detaches it when this (the tracing) thread
            // exits; whatever it runs restores itself (see arch_x86_64.c).
            if (ptrace(PTRACE_INTERRUPT, t->tid, 0, 0) == 0) {
                int status;
                for (int k = 0; k < 200; k++) {
                    if (waitpid(t->tid, &status, WNOHANG | __WALL) == t->tid) {
                        if (WIFSTOPPED(status) && (status >> 16) == 0) {
                            int sig = WSTOPSIG(status);
                            t->pending_sig = is_our_signal(c, t->tid, sig) ? 0 : sig;
                        }
                        if (WIFEXITED(status) || WIFSIGNALED(status)) break;
                        ptrace(PTRACE_DETACH, t->tid, 0, (void *)(long)t->pending_sig);
                        break;
                    }
                    usleep(5000);
                }
            }
        }
        t->state = T_GONE;
    }
}

uint64_t tracee_blocked_signals(pid_t pid, pid_t tid) {
    char path[96], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/task/%d/status", pid, tid);
    if (read_text(path, buf, sizeof buf) < 0) return 0;
    const char *p = strstr(buf, "\nSigBlk:");
    return p ? strtoull(p + 8, NULL, 16) : 0;
}
