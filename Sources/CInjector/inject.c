// Live injection of Python source into a running CPython 3.10-3.13 process (x86-64).
//
//   1. find the ELF object that exports PyEval_SaveThread + PyRun_SimpleString[Flags]
//      (libpython3.X.so or a statically linked python executable), its load bias and
//      the Python version; refuse what we cannot do before touching anything;
//   2. PTRACE_SEIZE every thread (they keep running; clones are followed);
//   3. int3 at PyEval_SaveThread's entry; the first thread that traps there holds the
//      GIL and is outside the allocator. The original byte goes back immediately, so
//      nested calls (our own code releasing the GIL) and other threads never trap;
//   4. in that thread, with every register (general + xstate) saved: call
//      PyErr_Occurred() (a hit with a pending exception is skipped), then
//      PyRun_SimpleStringFlags(source, NULL) with the source below the red zone.
//      Each call returns to address 0: the fault (SIGSEGV at rip 0) is our "return"
//      and is never delivered;
//      If no thread traps within a short grace period, threads blocked in epoll_wait (an
//      idle asyncio loop) are woken with PTRACE_INTERRUPT: epoll_wait returns EINTR,
//      CPython retries through PyEval_SaveThread and traps (wake_event_waiters); threads
//      whose EINTR is retried in C, and (from the second wake round) threads blocked in a
//      wait the kernel restarts (futex, read, poll, ppoll), run the code at their interrupt
//      stop if they are Python threads without the GIL (PyGILState_Ensure/_Release);
//   5. restore every register (rip = PyEval_SaveThread, which then runs normally),
//      stop every other thread (PTRACE_INTERRUPT) and detach all, re-delivering any
//      signal that arrived meanwhile.
#define _GNU_SOURCE
#include "CInjector.h"
#include "inject_common.h"

#include <ctype.h>
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif
#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif
#ifndef __WALL
#define __WALL 0x40000000
#endif

static int read_text(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t n = 0;
    while (n + 1 < size) {
        ssize_t k = read(fd, buf + n, size - 1 - n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        n += (size_t)k;
    }
    close(fd);
    buf[n] = 0;
    return (int)n;
}

/// TracerPid of a process or thread status file; -1 when unreadable.
static long tracer_of(const char *status_path) {
    char buf[4096];
    if (read_text(status_path, buf, sizeof buf) < 0) return -1;
    const char *p = strstr(buf, "\nTracerPid:");
    return p ? strtol(p + 11, NULL, 10) : -1;
}

#if defined(__x86_64__)

// --------------------------------------------------------------------------- maps + ELF

struct mapping {
    uint64_t start, end, offset;
    char perms[5];
    char path[512];
};

struct maps {
    struct mapping *v;
    size_t n;
};

static int read_maps(pid_t pid, struct maps *m) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/maps", pid);
    FILE *f = fopen(path, "re");
    if (!f) return -1;
    size_t cap = 256;
    m->v = calloc(cap, sizeof *m->v);
    m->n = 0;
    char line[1024];
    while (m->v && fgets(line, sizeof line, f)) {
        struct mapping mp = {0};
        unsigned long long s, e, off;
        char perms[8] = {0};
        int pos = 0;
        if (sscanf(line, "%llx-%llx %7s %llx %*s %*s %n", &s, &e, perms, &off, &pos) < 4) continue;
        char *p = line + pos;
        size_t len = strcspn(p, "\n");
        p[len] = 0;
        if (p[0] != '/') continue;  // file-backed only
        if (len >= sizeof mp.path) continue;
        mp.start = s; mp.end = e; mp.offset = off;
        memcpy(mp.perms, perms, 4);
        memcpy(mp.path, p, len + 1);
        if (m->n == cap) {
            cap *= 2;
            struct mapping *nv = realloc(m->v, cap * sizeof *nv);
            if (!nv) break;
            m->v = nv;
        }
        m->v[m->n++] = mp;
    }
    fclose(f);
    return m->v ? 0 : -1;
}

struct elf_image {
    int fd;
    Elf64_Ehdr eh;
    Elf64_Sym *syms;
    size_t nsyms;
    char *strs;
    size_t strsz;
    uint64_t bias;
};

static int pread_all(int fd, void *buf, size_t len, off_t off) {
    size_t done = 0;
    while (done < len) {
        ssize_t k = pread(fd, (char *)buf + done, len - done, off + (off_t)done);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        done += (size_t)k;
    }
    return 0;
}

static void elf_close(struct elf_image *im) {
    if (im->fd >= 0) close(im->fd);
    free(im->syms);
    free(im->strs);
    memset(im, 0, sizeof *im);
    im->fd = -1;
}

/// Opens the mapped object (exactly the mapped inode through map_files, else through the
/// target's root), reads its dynamic symbol table and computes the load bias.
static int elf_open(pid_t pid, const struct maps *m, const struct mapping *first, struct elf_image *im) {
    memset(im, 0, sizeof *im);
    im->fd = -1;
    char path[700];
    snprintf(path, sizeof path, "/proc/%d/map_files/%llx-%llx", pid,
             (unsigned long long)first->start, (unsigned long long)first->end);
    im->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (im->fd < 0) {
        snprintf(path, sizeof path, "/proc/%d/root%s", pid, first->path);
        im->fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (im->fd < 0) return -1;
    if (pread_all(im->fd, &im->eh, sizeof im->eh, 0) != 0) goto bad;
    if (memcmp(im->eh.e_ident, ELFMAG, SELFMAG) != 0) goto bad;
    if (im->eh.e_ident[EI_CLASS] != ELFCLASS64 || im->eh.e_machine != EM_X86_64) goto bad;
    if (im->eh.e_phentsize != sizeof(Elf64_Phdr) || im->eh.e_shentsize != sizeof(Elf64_Shdr)) goto bad;

    // Load bias: the first PT_LOAD is mapped at the mapping whose offset is its page offset.
    int have_bias = 0;
    for (int i = 0; i < im->eh.e_phnum && !have_bias; i++) {
        Elf64_Phdr ph;
        if (pread_all(im->fd, &ph, sizeof ph, (off_t)(im->eh.e_phoff + (uint64_t)i * sizeof ph)) != 0) goto bad;
        if (ph.p_type != PT_LOAD) continue;
        uint64_t pagemask = ~(uint64_t)0xfff;
        for (size_t k = 0; k < m->n; k++) {
            if (strcmp(m->v[k].path, first->path) != 0) continue;
            if (m->v[k].offset != (ph.p_offset & pagemask)) continue;
            im->bias = m->v[k].start - (ph.p_vaddr & pagemask);
            have_bias = 1;
            break;
        }
        break;  // only the first PT_LOAD
    }
    if (!have_bias) goto bad;

    // .dynsym and its string table.
    if (im->eh.e_shoff == 0 || im->eh.e_shnum == 0) goto bad;
    size_t shsz = (size_t)im->eh.e_shnum * sizeof(Elf64_Shdr);
    Elf64_Shdr *sh = malloc(shsz);
    if (!sh || pread_all(im->fd, sh, shsz, (off_t)im->eh.e_shoff) != 0) { free(sh); goto bad; }
    for (int i = 0; i < im->eh.e_shnum; i++) {
        if (sh[i].sh_type != SHT_DYNSYM || sh[i].sh_link >= im->eh.e_shnum) continue;
        Elf64_Shdr *st = &sh[sh[i].sh_link];
        if (sh[i].sh_size > (256u << 20) || st->sh_size > (256u << 20)) break;
        im->nsyms = sh[i].sh_size / sizeof(Elf64_Sym);
        im->syms = malloc(sh[i].sh_size + 1);
        im->strs = malloc(st->sh_size + 1);
        im->strsz = st->sh_size;
        if (!im->syms || !im->strs
            || pread_all(im->fd, im->syms, sh[i].sh_size, (off_t)sh[i].sh_offset) != 0
            || pread_all(im->fd, im->strs, st->sh_size, (off_t)st->sh_offset) != 0) {
            free(sh);
            goto bad;
        }
        im->strs[st->sh_size] = 0;
        break;
    }
    free(sh);
    if (!im->syms) goto bad;
    return 0;
bad:
    elf_close(im);
    return -1;
}

/// Runtime address (and size) of a defined dynamic symbol, 0 if absent.
static uint64_t elf_sym_sized(const struct elf_image *im, const char *name, uint64_t *size) {
    for (size_t i = 0; i < im->nsyms; i++) {
        const Elf64_Sym *s = &im->syms[i];
        if (s->st_shndx == SHN_UNDEF || s->st_value == 0 || s->st_name >= im->strsz) continue;
        if (strcmp(im->strs + s->st_name, name) == 0) {
            if (size) *size = s->st_size;
            return im->bias + s->st_value;
        }
    }
    return 0;
}

static uint64_t elf_sym(const struct elf_image *im, const char *name) {
    return elf_sym_sized(im, name, NULL);
}

// --------------------------------------------------------------------------- tracing state

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
};

struct ctx {
    pid_t pid;
    struct thread *t;
    size_t n, cap;
    int memfd;
    uint64_t bp;           // PyEval_SaveThread
    uint8_t orig_byte;
    int armed;
    int detaching;         // every stop is kept (recorded) instead of resumed
    int exec_seen;
    pid_t chosen;          // the thread running our code (its stops are handled by the caller)
    int wake_rounds;       // wake_event_waiters calls so far
};

static struct thread *find_thread(struct ctx *c, pid_t tid) {
    for (size_t i = 0; i < c->n; i++)
        if (c->t[i].tid == tid) return &c->t[i];
    return NULL;
}

static struct thread *add_thread(struct ctx *c, pid_t tid, enum tstate st) {
    struct thread *t = find_thread(c, tid);
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

static size_t live_threads(struct ctx *c) {
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++) k += c->t[i].state != T_GONE;
    return k;
}

static int mem_write(struct ctx *c, uint64_t addr, const void *buf, size_t len) {
    size_t done = 0;
    while (done < len) {
        ssize_t k = pwrite(c->memfd, (const char *)buf + done, len - done, (off_t)(addr + done));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        done += (size_t)k;
    }
    return 0;
}

static int mem_read(int memfd, uint64_t addr, void *buf, size_t len) {
    return pread_all(memfd, buf, len, (off_t)addr);
}

static int disarm(struct ctx *c) {
    if (!c->armed) return 0;
    if (mem_write(c, c->bp, &c->orig_byte, 1) != 0) return -1;
    c->armed = 0;
    return 0;
}

static int arm(struct ctx *c) {
    uint8_t cc = 0xCC;
    if (mem_write(c, c->bp, &cc, 1) != 0) return -1;
    c->armed = 1;
    uint8_t check = 0;
    if (mem_read(c->memfd, c->bp, &check, 1) != 0 || check != 0xCC) { disarm(c); return -1; }
    return 0;
}

/// Waits (bounded) for the next ptrace event of any of our threads; polls every thread
/// with WNOHANG so that the caller's own children are never reaped. 0: got one; 1: timeout.
static int next_event(struct ctx *c, double deadline, pid_t *tid, int *status) {
    useconds_t nap = 50;
    for (;;) {
        if (c->chosen) {  // the thread running our code first: its return matters most
            struct thread *t = find_thread(c, c->chosen);
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
            if (r < 0 && errno == ECHILD) {  // reaped elsewhere or no longer ours
                c->t[i].state = T_GONE;
            }
        }
        if (live_threads(c) == 0) { *tid = 0; *status = 0; return 0; }
        if (now_ms() >= deadline) return 1;
        usleep(nap);
        if (nap < 1000) nap *= 2;
    }
}

static int is_stop_signal(int sig) {
    return sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
}

/// Is this stop our breakpoint (int3 at bp, rip = bp + 1)?
static int is_our_trap(pid_t tid, int status, uint64_t bp, struct user_regs_struct *regs_out) {
    if (!WIFSTOPPED(status) || (status >> 16) != 0 || WSTOPSIG(status) != SIGTRAP) return 0;
    siginfo_t si;
    if (ptrace(PTRACE_GETSIGINFO, tid, 0, &si) != 0) return 0;
    if (si.si_code != SI_KERNEL) return 0;
    struct user_regs_struct regs;
    if (ptrace(PTRACE_GETREGS, tid, 0, &regs) != 0) return 0;
    if (regs.rip != bp + 1) return 0;
    if (regs_out) *regs_out = regs;
    return 1;
}

/// Every event that is not the chosen thread's business: keep the target running as if
/// we were not there (signals re-delivered, group-stops respected, clones followed).
static void handle_event(struct ctx *c, pid_t tid, int status) {
    struct thread *t = find_thread(c, tid);
    if (!t) return;
    if (WIFEXITED(status) || WIFSIGNALED(status)) { t->state = T_GONE; return; }
    if (!WIFSTOPPED(status)) return;
    int sig = WSTOPSIG(status);
    int ev = status >> 16;
    t->state = T_STOPPED;
    if (ev == PTRACE_EVENT_CLONE) {
        unsigned long newtid = 0;
        if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &newtid) == 0 && newtid)
            add_thread(c, (pid_t)newtid, T_RUNNING);  // it reports its own first stop
        if (c->detaching) return;
    } else if (ev == PTRACE_EVENT_EXEC) {
        c->exec_seen = 1;
        c->armed = 0;  // a new image: the breakpoint went with the old one
    } else if (ev == PTRACE_EVENT_STOP) {
        if (is_stop_signal(sig)) {            // group-stop: stay stopped, as the group wants
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
        // our breakpoint hit by a thread after we chose another one / disarmed
        struct user_regs_struct regs;
        if (sig == SIGTRAP && is_our_trap(tid, status, c->bp, &regs)) {
            regs.rip = c->bp;
            ptrace(PTRACE_SETREGS, tid, 0, &regs);
            if (c->armed) { t->state = T_STOPPED; return; }  // (caller re-examines)
            if (c->detaching) return;
            if (ptrace(PTRACE_CONT, tid, 0, 0) == 0) t->state = T_RUNNING;
            return;
        }
        if (c->detaching) { t->pending_sig = sig; return; }
        if (ptrace(PTRACE_CONT, tid, 0, (void *)(long)sig) == 0) t->state = T_RUNNING;
        return;
    } else if (c->detaching) {
        return;
    }
    if (ptrace(PTRACE_CONT, tid, 0, 0) == 0) t->state = T_RUNNING;
}

/// Event-loop waits that return EINTR to user space when the thread is interrupted by
/// ptrace (no signal handler runs): epoll_wait, epoll_pwait, epoll_pwait2 (x86-64 numbers).
/// CPython's select.epoll.poll then retries (PEP 475) through Py_BEGIN_ALLOW_THREADS, i.e.
/// PyEval_SaveThread, our armed safe point. poll/ppoll/select/pselect6 are not listed: the
/// kernel restarts them transparently (-ERESTARTNOHAND without a handler), so waking them
/// would achieve nothing; futex waits (locks, the GIL itself) and sleeps are never touched.
enum { WAKE_GRACE_MS = 150, WAKE_INTERVAL_MS = 250 };

static int is_event_wait(long nr) {
    return nr == 232 || nr == 281 || nr == 441;
}

/// Blocking waits the kernel restarts transparently after a PTRACE_INTERRUPT (no handler
/// runs): futex (a lock, queue.Queue.get), read (a pipe), poll, ppoll (zmq). Waking them never
/// reaches PyEval_SaveThread; from the second wake round on they are interrupted and, if
/// the thread is a Python thread without the GIL stopped inside the wait (rax -ERESTARTSYS or
/// -ERESTARTNOHAND), the code runs there between PyGILState_Ensure and _Release; every register
/// (orig_rax included) is then restored as at the interrupt stop, so the kernel restarts the
/// syscall on resume exactly as it would have without us. -ERESTART_RESTARTBLOCK (a wait with
/// a timeout: poll(timeout), pthread_cond_timedwait, i.e. also take_gil's GIL condvar) is
/// never used: the code could overwrite the thread's restart_block before the restart. Nor is
/// a futex inside _PyRuntime (the GIL's mutex/condvar: see is_wait_call_point).
static int is_restartable_wait(long nr) {
    return nr == 202 || nr == 0 || nr == 7 || nr == 271;
}

enum { K_ERESTARTSYS = 512, K_ERESTARTNOHAND = 514, K_ERESTART_RESTARTBLOCK = 516 };

/// Syscall a traced thread is blocked in (/proc/PID/task/TID/syscall), -1 if running/unknown.
static long blocked_syscall(pid_t pid, pid_t tid) {
    char path[96], buf[256];
    snprintf(path, sizeof path, "/proc/%d/task/%d/syscall", pid, tid);
    if (read_text(path, buf, sizeof buf) <= 0 || !isdigit((unsigned char)buf[0])) return -1;  // "running", "-1 ..."
    return strtol(buf, NULL, 10);
}

/// Wakes (PTRACE_INTERRUPT; handle_event resumes it without a signal) every thread blocked
/// in an event-loop wait. Returns how many were woken.
static int wake_event_waiters(struct ctx *c) {
    int woken = 0;
    for (size_t i = 0; i < c->n; i++) {
        struct thread *t = &c->t[i];
        if (t->state != T_RUNNING) continue;
        long nr = blocked_syscall(c->pid, t->tid);
        if (is_restartable_wait(nr) && c->wake_rounds >= 1 && !t->no_call && !t->blocked_wait) {
            t->blocked_wait = 1;  // at its wake stop the code runs there, or it is retried later
            t->want_call = 1;
            if (ptrace(PTRACE_INTERRUPT, t->tid, 0, 0) == 0) { t->woken++; woken++; }
            else if (errno == ESRCH) t->state = T_GONE;
            continue;
        }
        if (!is_event_wait(nr)) continue;
        if (t->woken && t->wake_stops && !t->no_call) t->want_call = 1;
        if (ptrace(PTRACE_INTERRUPT, t->tid, 0, 0) == 0) { t->woken++; woken++; }
        else if (errno == ESRCH) t->state = T_GONE;
    }
    c->wake_rounds++;
    return woken;
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

/// Seizes every thread of pid (re-scanning /proc/PID/task until no new one appears).
static int seize_all(struct ctx *c, struct msm_inject_result *r) {
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
            if (find_thread(c, tid)) continue;
            if (ptrace(PTRACE_SEIZE, tid, 0, (void *)opts) == 0) {
                add_thread(c, tid, T_RUNNING);
                added++;
                continue;
            }
            int err = errno;
            if (err == ESRCH) continue;  // exited meanwhile
            char st[96];
            snprintf(st, sizeof st, "/proc/%d/task/%d/status", c->pid, tid);
            long tracer = tracer_of(st);
            if (tracer == (long)gettid()) {  // TracerPid names the tracing thread  // a clone we already follow, event not seen yet
                add_thread(c, tid, T_RUNNING);
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

/// Stops every thread that still runs, then detaches all (with their pending signals).
/// Threads that trapped at our breakpoint meanwhile get rip fixed (handle_event).
static void detach_all(struct ctx *c) {
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
        if (next_event(c, deadline, &tid, &status) != 0) break;
        if (tid > 0) handle_event(c, tid, status);
    }
    for (size_t i = 0; i < c->n; i++) {
        struct thread *t = &c->t[i];
        if (t->state == T_GONE) continue;
        if (ptrace(PTRACE_DETACH, t->tid, 0, (void *)(long)t->pending_sig) != 0 && errno == ESRCH
            && t->state != T_STOPPED) {
            // still running (a stop never arrived): one more try, then leave it to the kernel
            if (ptrace(PTRACE_INTERRUPT, t->tid, 0, 0) == 0) {
                int status;
                for (int k = 0; k < 200; k++) {
                    if (waitpid(t->tid, &status, WNOHANG | __WALL) == t->tid) {
                        if (WIFSTOPPED(status) && (status >> 16) == 0) t->pending_sig = WSTOPSIG(status);
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

// --------------------------------------------------------------------------- the remote call

struct saved {
    struct user_regs_struct regs;
    uint8_t *xstate;
    size_t xstate_len;
    int have_fp;
    struct user_fpregs_struct fp;
};

static int save_regs(pid_t tid, struct saved *s) {
    if (ptrace(PTRACE_GETREGS, tid, 0, &s->regs) != 0) return -1;
    s->xstate_len = 0;
    s->xstate = malloc(64 * 1024);
    if (s->xstate) {
        struct iovec iov = { s->xstate, 64 * 1024 };
        if (ptrace(PTRACE_GETREGSET, tid, (void *)NT_X86_XSTATE, &iov) == 0) s->xstate_len = iov.iov_len;
    }
    s->have_fp = ptrace(PTRACE_GETFPREGS, tid, 0, &s->fp) == 0;
    return 0;
}

static int restore_regs(pid_t tid, struct saved *s) {
    int rc = 0;
    if (s->xstate_len) {
        struct iovec iov = { s->xstate, s->xstate_len };
        if (ptrace(PTRACE_SETREGSET, tid, (void *)NT_X86_XSTATE, &iov) != 0) rc = -1;
    }
    if ((!s->xstate_len || rc) && s->have_fp) rc = ptrace(PTRACE_SETFPREGS, tid, 0, &s->fp) == 0 ? 0 : -1;
    if (ptrace(PTRACE_SETREGS, tid, 0, &s->regs) != 0) rc = -1;
    return rc;
}

enum { CALL_OK = 0, CALL_GONE = 1, CALL_ERROR = 2, CALL_TIMEOUT = 3 };

/// Calls fn(a0, a1) in the stopped thread `tid` with rsp = stack_top - 8 (return address 0
/// there). Returns when the thread faults at rip 0 (the return); rax in *ret.
static int remote_call(struct ctx *c, pid_t tid, const struct user_regs_struct *base, uint64_t fn,
                       uint64_t a0, uint64_t a1, uint64_t stack_top, uint64_t *ret, double deadline) {
    struct user_regs_struct regs = *base;
    uint64_t zero = 0;
    regs.rsp = (stack_top & ~(uint64_t)15) - 8;  // rsp % 16 == 8 at entry, as after a call
    if (mem_write(c, regs.rsp, &zero, 8) != 0) return CALL_ERROR;
    regs.rip = fn;
    regs.rdi = a0;
    regs.rsi = a1;
    regs.rax = 0;
    regs.orig_rax = (unsigned long long)-1;  // no syscall restart
    regs.eflags &= ~(1ULL << 10);            // DF clear
    if (ptrace(PTRACE_SETREGS, tid, 0, &regs) != 0) return CALL_ERROR;
    struct thread *t = find_thread(c, tid);
    if (ptrace(PTRACE_CONT, tid, 0, 0) != 0) return CALL_ERROR;
    t->state = T_RUNNING;
    for (;;) {
        pid_t who; int status;
        if (next_event(c, deadline, &who, &status) != 0) return CALL_TIMEOUT;
        if (who <= 0) return CALL_GONE;
        if (who != tid) { handle_event(c, who, status); continue; }
        t = find_thread(c, tid);
        if (WIFEXITED(status) || WIFSIGNALED(status)) { t->state = T_GONE; return CALL_GONE; }
        if (!WIFSTOPPED(status)) continue;
        t->state = T_STOPPED;
        int sig = WSTOPSIG(status), ev = status >> 16;
        if (ev == 0 && sig == SIGSEGV) {
            struct user_regs_struct now;
            siginfo_t si;
            if (ptrace(PTRACE_GETREGS, tid, 0, &now) == 0 && now.rip == 0
                && ptrace(PTRACE_GETSIGINFO, tid, 0, &si) == 0 && si.si_addr == NULL
                && now.rsp == regs.rsp + 8) {
                *ret = now.rax;
                return CALL_OK;  // never delivered: registers are restored by the caller
            }
        }
        handle_event(c, tid, status);  // anything else: as usual (re-delivered, listened, ...)
        t = find_thread(c, tid);
        if (t->state == T_GONE) return CALL_GONE;
    }
}

/// Moves a thread stopped at bp (original byte back in place) one instruction on, so that
/// the breakpoint can be re-armed behind it.
static int step_past(struct ctx *c, pid_t tid, double deadline) {
    if (ptrace(PTRACE_SINGLESTEP, tid, 0, 0) != 0) return -1;
    struct thread *t = find_thread(c, tid);
    t->state = T_RUNNING;
    for (;;) {
        pid_t who; int status;
        if (next_event(c, deadline + 2000, &who, &status) != 0) return -1;
        if (who <= 0) return -1;
        if (who != tid) { handle_event(c, who, status); continue; }
        if (WIFEXITED(status) || WIFSIGNALED(status)) { t->state = T_GONE; return -1; }
        t->state = T_STOPPED;
        if (WIFSTOPPED(status) && (status >> 16) == 0 && WSTOPSIG(status) == SIGTRAP) return 0;
        if (WIFSTOPPED(status) && (status >> 16) == 0) {  // a signal arrived first: deliver it, keep stepping
            if (ptrace(PTRACE_SINGLESTEP, tid, 0, (void *)(long)WSTOPSIG(status)) != 0) return -1;
            t->state = T_RUNNING;
            continue;
        }
        if (WIFSTOPPED(status) && (status >> 16) == PTRACE_EVENT_STOP && !is_stop_signal(WSTOPSIG(status))) {
            if (ptrace(PTRACE_SINGLESTEP, tid, 0, 0) != 0) return -1;
            t->state = T_RUNNING;
            continue;
        }
        handle_event(c, tid, status);
        if (t->state == T_GONE) return -1;
        return 0;  // group-stop etc.: it is stopped/listening; good enough to re-arm behind it
    }
}

// --------------------------------------------------------------------------- target checks

struct target {
    uint64_t save_thread, pyrun, pyrun_flags, err_occurred;
    uint64_t gil_ensure, gil_release, gil_check, gil_this;  // PyGILState_*
    uint64_t runtime, runtime_size;  // _PyRuntime (holds the main interpreter's GIL mutex + condvar)
    char path[512];
    int layout;
};

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/// "python3.11", "libpython3.13t.so.1.0" -> minor and free-threaded flag; 0 if no match.
static int version_from_name(const char *name, int *minor, int *ft) {
    const char *p = strstr(name, "python3.");
    if (!p) return 0;
    p += 8;
    if (!isdigit((unsigned char)*p)) return 0;
    *minor = (int)strtol(p, (char **)&p, 10);
    *ft = *p == 't';
    return 1;
}

static int find_python(pid_t pid, const struct maps *m, struct target *tg, struct msm_inject_result *r) {
    char exe[512] = {0};
    char link[64];
    snprintf(link, sizeof link, "/proc/%d/exe", pid);
    ssize_t k = readlink(link, exe, sizeof exe - 1);
    if (k > 0) exe[k] = 0;

    // Candidates in order: objects named *python*, the executable, everything else.
    for (int pass = 0; pass < 3; pass++) {
        for (size_t i = 0; i < m->n; i++) {
            const struct mapping *mp = &m->v[i];
            int seen = 0;
            for (size_t j = 0; j < i; j++)
                if (strcmp(m->v[j].path, mp->path) == 0) { seen = 1; break; }
            if (seen) continue;
            int named = strstr(base_name(mp->path), "python") != NULL;
            int is_exe = strcmp(mp->path, exe) == 0;
            if ((pass == 0 && !named) || (pass == 1 && (named || !is_exe)) || (pass == 2 && (named || is_exe)))
                continue;
            struct elf_image im;
            if (elf_open(pid, m, mp, &im) != 0) continue;
            uint64_t st = elf_sym(&im, "PyEval_SaveThread");
            uint64_t run = elf_sym(&im, "PyRun_SimpleString");
            uint64_t runf = elf_sym(&im, "PyRun_SimpleStringFlags");
            if (!st || (!run && !runf)) { elf_close(&im); continue; }
            tg->save_thread = st;
            tg->pyrun = run;
            tg->pyrun_flags = runf;
            tg->err_occurred = elf_sym(&im, "PyErr_Occurred");
            tg->gil_ensure = elf_sym(&im, "PyGILState_Ensure");
            tg->gil_release = elf_sym(&im, "PyGILState_Release");
            tg->gil_check = elf_sym(&im, "PyGILState_Check");
            tg->gil_this = elf_sym(&im, "PyGILState_GetThisThreadState");
            tg->runtime = elf_sym_sized(&im, "_PyRuntime", &tg->runtime_size);
            snprintf(tg->path, sizeof tg->path, "%s", mp->path);
            snprintf(r->object_path, sizeof r->object_path, "%s", mp->path);
            tg->layout = (im.eh.e_type == ET_EXEC || is_exe) ? MSM_LAYOUT_STATIC : MSM_LAYOUT_SHARED;
            r->layout = tg->layout;

            // Version: Py_Version (3.11+), else the file name, else a 3.10-only API marker.
            int major = 0, minor = -1, ft = 0;
            uint64_t pv = elf_sym(&im, "Py_Version");
            char mempath[64];
            snprintf(mempath, sizeof mempath, "/proc/%d/mem", pid);
            int memfd = pv ? open(mempath, O_RDONLY | O_CLOEXEC) : -1;
            uint32_t hex = 0;
            if (memfd >= 0 && mem_read(memfd, pv, &hex, 4) == 0 && (hex >> 24) == 3) {
                major = 3;
                minor = (hex >> 16) & 0xff;
                int micro = (hex >> 8) & 0xff, level = (hex >> 4) & 0xf, serial = hex & 0xf;
                const char *lv = level == 0xA ? "a" : level == 0xB ? "b" : level == 0xC ? "rc" : "";
                if (*lv)
                    snprintf(r->python_version, sizeof r->python_version, "3.%d.%d%s%d", minor, micro, lv, serial);
                else
                    snprintf(r->python_version, sizeof r->python_version, "3.%d.%d", minor, micro);
            }
            if (memfd >= 0) close(memfd);
            int nminor, nft = 0;
            int named_version = version_from_name(base_name(mp->path), &nminor, &nft)
                || (is_exe && version_from_name(base_name(exe), &nminor, &nft));
            if (minor < 0 && named_version) { major = 3; minor = nminor; }
            int guessed = 0;
            if (minor < 0) {
                major = 3;
                minor = elf_sym(&im, "Py_IsNone") ? 10 : 9;  // Py_IsNone: new in 3.10
                guessed = minor == 9;
            }
            if (!r->python_version[0])
                snprintf(r->python_version, sizeof r->python_version, "3.%d%s", minor, guessed ? " or older" : "");
            ft = nft || elf_sym(&im, "_Py_DecRefShared") || elf_sym(&im, "_Py_MergeZeroLocalRefcount");
            r->python_major = major;
            r->python_minor = minor;
            elf_close(&im);
            if (minor < 10)
                return fail(r, MSM_INJECT_UNSUPPORTED_VERSION,
                            "pid %d runs CPython %s: live injection needs 3.10-3.13; "
                            "start it under `ms-service-metric exec`", pid, r->python_version);
            if (minor > 14)
                return fail(r, MSM_INJECT_UNSUPPORTED_VERSION,
                            "pid %d runs CPython %s: this agent knows the PEP 768 offsets of 3.14 only; "
                            "start it under `ms-service-metric exec`", pid, r->python_version);
            if (minor == 14 && ft)
                return fail(r, MSM_INJECT_FREE_THREADED,
                            "pid %d runs a free-threaded CPython %s (3.14t): the provider does not support "
                            "it; start it under `ms-service-metric exec`", pid, r->python_version);
            if (minor == 14) {  // PEP 768 (pep768.c), no ptrace
                r->method = MSM_INJECT_METHOD_PEP768;
                return 0;
            }
            if (ft)
                return fail(r, MSM_INJECT_FREE_THREADED,
                            "pid %d runs a free-threaded CPython %s (no GIL): live injection is not "
                            "supported; start it under `ms-service-metric exec`", pid, r->python_version);
            return 0;
        }
    }
    return fail(r, MSM_INJECT_NOT_CPYTHON,
                "pid %d is not a CPython process (no mapped object exports PyEval_SaveThread and "
                "PyRun_SimpleString)", pid);
}

// --------------------------------------------------------------------------- entry point

/// A wake stop (PTRACE_INTERRUPT) of a thread marked want_call, right after its epoll wait
/// returned -EINTR: the code can run there between PyGILState_Ensure and _Release. Only
/// epoll_wait/epoll_pwait/epoll_pwait2 returning -EINTR (never restarted by the kernel, so
/// restoring the registers as they are gives the caller exactly its EINTR); or, for a thread
/// woken from a restartable wait (blocked_wait), that wait interrupted with -ERESTARTSYS /
/// -ERESTARTNOHAND (restarted by the kernel once the registers are restored), never the GIL's
/// own futexes.
static int is_wait_call_point(struct ctx *c, const struct target *tg, pid_t tid, int status,
                              struct user_regs_struct *regs, int *blocked) {
    if (!WIFSTOPPED(status) || (status >> 16) != PTRACE_EVENT_STOP || is_stop_signal(WSTOPSIG(status))) return 0;
    struct thread *t = find_thread(c, tid);
    if (!t || !t->want_call || t->no_call) return 0;
    if (!tg->gil_ensure || !tg->gil_release || !tg->gil_check || !tg->gil_this) return 0;
    if (ptrace(PTRACE_GETREGS, tid, 0, regs) != 0) return 0;
    long long rax = (long long)regs->rax;
    if (t->blocked_wait) {  // see is_restartable_wait
        t->want_call = 0;
        // A futex inside _PyRuntime is the GIL's own mutex or condvar (3.10-3.13 keep the main
        // interpreter's GIL there): a thread in take_gil or, worse, in drop_gil (it has already
        // cleared its thread state, so PyGILState_Check says 0, but it still holds the GIL)
        // must never enter PyGILState_Ensure. Without _PyRuntime no futex is used at all.
        int gil_futex = regs->orig_rax == 202
            && (!tg->runtime || !tg->runtime_size
                || (regs->rdi >= tg->runtime && regs->rdi < tg->runtime + tg->runtime_size));
        if (is_restartable_wait((long)regs->orig_rax) && !gil_futex
            && (rax == -K_ERESTARTSYS || rax == -K_ERESTARTNOHAND)) {
            *blocked = 1;
            return 1;
        }
        t->blocked_wait = 0;  // not usable at this stop: a later wake round may try again
        return 0;
    }
    *blocked = 0;
    return is_event_wait((long)regs->orig_rax) && rax == -EINTR;
}

/// Counts the stops our wake-ups caused (see want_call).
static void note_wake_stop(struct ctx *c, pid_t tid, int status) {
    struct thread *t = find_thread(c, tid);
    if (t && t->woken && WIFSTOPPED(status) && (status >> 16) == PTRACE_EVENT_STOP
        && !is_stop_signal(WSTOPSIG(status)))
        t->wake_stops++;
}

/// Every refusal, before anything is touched.
static int preflight(pid_t pid, struct msm_inject_result *r, struct target *tg) {
    if (geteuid() != 0)
        return fail(r, MSM_INJECT_NOT_ROOT, "live injection needs root (ptrace of another user's process)");
    char buf[64];
    if (read_text("/proc/sys/kernel/yama/ptrace_scope", buf, sizeof buf) > 0 && atoi(buf) >= 3)
        return fail(r, MSM_INJECT_PTRACE_DISABLED,
                    "ptrace is disabled on this host (kernel.yama.ptrace_scope = 3, only a reboot "
                    "lowers it); start the service under `ms-service-metric exec`");
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    long tracer = tracer_of(path);
    if (tracer < 0 || kill(pid, 0) != 0)
        return fail(r, MSM_INJECT_NO_PROCESS, "no process with pid %d", pid);
    if (tracer > 0)
        return fail(r, MSM_INJECT_ALREADY_TRACED,
                    "pid %d is traced by pid %ld (a debugger or strace); detach it and retry; "
                    "nothing was changed", pid, tracer);
    struct maps m = {0};
    if (read_maps(pid, &m) != 0)
        return fail(r, MSM_INJECT_NO_PROCESS, "cannot read /proc/%d/maps: %s", pid, strerror(errno));
    int rc = find_python(pid, &m, tg, r);
    free(m.v);
    return rc;
}

static int inject(pid_t pid, const char *src, int timeout_ms, struct msm_inject_result *r, double t0) {
    struct target tg = {0};
    int rc = preflight(pid, r, &tg);
    if (rc) return rc;
    if (r->method == MSM_INJECT_METHOD_PEP768)
        return fail(r, MSM_INJECT_UNSUPPORTED_VERSION,
                    "pid %d runs CPython %s: ptrace injection covers 3.10-3.13; 3.14 goes through "
                    "PEP 768 (msm_pep768_inject); nothing was changed", pid, r->python_version);
    char path[64];

    struct ctx c = { .pid = pid, .memfd = -1 };
    struct saved sv = {0};
    if (seize_all(&c, r) != 0) { detach_all(&c); free(c.t); return r->error; }
    r->threads = (int)c.n;
    snprintf(path, sizeof path, "/proc/%d/mem", pid);
    c.memfd = open(path, O_RDWR | O_CLOEXEC);
    c.bp = tg.save_thread;
    if (c.memfd < 0 || mem_read(c.memfd, c.bp, &c.orig_byte, 1) != 0 || c.orig_byte == 0xCC) {
        rc = fail(r, MSM_INJECT_PTRACE_ERROR, c.orig_byte == 0xCC
                  ? "PyEval_SaveThread in pid %d already starts with a breakpoint (another tool's?); nothing was changed"
                  : "cannot access the memory of pid %d; nothing was changed", pid);
        goto out;
    }
    double deadline = t0 + timeout_ms;
    if (arm(&c) != 0) {
        rc = fail(r, MSM_INJECT_PTRACE_ERROR, "cannot write a breakpoint into pid %d; nothing was changed", pid);
        goto out;
    }

    double next_wake = now_ms() + WAKE_GRACE_MS;  // relative to the arming
    for (;;) {
        // 1. wait for a thread at the safe point
        pid_t tid = 0; int status = 0;
        struct user_regs_struct hit;
        int got = 0, cr = CALL_ERROR, at_wait = 0, at_blocked = 0;
        while (!got) {
            if (c.exec_seen) { disarm(&c); rc = fail(r, MSM_INJECT_PROCESS_EXITED, "pid %d called exec; nothing was injected", pid); goto out; }
            // No thread at the safe point after a short grace period: wake the threads that
            // wait in epoll (an idle asyncio loop never releases the GIL otherwise), then
            // again now and then for threads that started waiting since.
            double wait_until = next_wake < deadline ? next_wake : deadline;
            if (next_event(&c, wait_until, &tid, &status) != 0) {
                if (now_ms() < deadline) {
                    r->woken_threads += wake_event_waiters(&c);
                    next_wake = now_ms() + WAKE_INTERVAL_MS;
                    continue;
                }
                disarm(&c);
                rc = fail(r, MSM_INJECT_TIMEOUT,
                          "no thread of pid %d released the GIL within %.1f s (busy in pure Python "
                          "without I/O, or blocked); nothing was changed; retry or start it under "
                          "`ms-service-metric exec`", pid, timeout_ms / 1000.0);
                goto out;
            }
            if (tid <= 0) { disarm(&c); rc = fail(r, MSM_INJECT_PROCESS_EXITED, "pid %d exited", pid); goto out; }
            if (is_our_trap(tid, status, c.bp, &hit)) {
                if (disarm(&c) != 0) {
                    rc = fail(r, MSM_INJECT_PTRACE_ERROR, "cannot restore PyEval_SaveThread in pid %d", pid);
                    // best effort: still fix the thread below
                }
                struct thread *t = find_thread(&c, tid);
                if (t) t->state = T_STOPPED;
                hit.rip = c.bp;
                if (ptrace(PTRACE_SETREGS, tid, 0, &hit) != 0) {
                    rc = fail(r, MSM_INJECT_PTRACE_ERROR, "cannot set registers of thread %d", tid);
                    goto out;
                }
                if (rc) goto out;
                got = 1;
            } else if (is_wait_call_point(&c, &tg, tid, status, &hit, &at_blocked)) {
                // option B: the thread waits in epoll without the GIL; no breakpoint while
                // our code runs there (it releases the GIL itself)
                struct thread *t = find_thread(&c, tid);
                t->state = T_STOPPED;
                if (disarm(&c) != 0) {
                    rc = fail(r, MSM_INJECT_PTRACE_ERROR, "cannot restore PyEval_SaveThread in pid %d", pid);
                    goto out;
                }
                got = 1;
                at_wait = 1;
            } else {
                note_wake_stop(&c, tid, status);
                handle_event(&c, tid, status);
            }
        }
        r->safe_point_hits++;
        r->wait_ms = now_ms() - t0;
        struct thread *hit_thread = find_thread(&c, tid);
        r->safe_point_method = at_blocked ? MSM_SAFE_POINT_BLOCKED_WAIT
            : at_wait ? MSM_SAFE_POINT_EVENT_WAIT
            : hit_thread && hit_thread->woken ? MSM_SAFE_POINT_WOKEN : MSM_SAFE_POINT_NATURAL;
        double held0 = now_ms();

        // 2. the thread holds the GIL at PyEval_SaveThread's entry; save it all
        c.chosen = tid;
        free(sv.xstate);
        memset(&sv, 0, sizeof sv);
        if (save_regs(tid, &sv) != 0) { rc = fail(r, MSM_INJECT_PTRACE_ERROR, "cannot read registers of thread %d", tid); goto out; }
        uint64_t below = (sv.regs.rsp - 128) & ~(uint64_t)15;  // below the red zone
        double call_deadline = now_ms() + 30000 + timeout_ms;

        // 3b. at an interrupted epoll wait: only a Python thread (it has a thread state) that
        // does not hold the GIL; then PyGILState_Ensure / PyRun_SimpleString / _Release
        uint64_t gil_state = 0;
        if (at_wait) {
            uint64_t this_ts = 0, holds = 0;
            cr = remote_call(&c, tid, &sv.regs, tg.gil_this, 0, 0, below, &this_ts, call_deadline);
            if (cr != CALL_OK) goto call_failed;
            if (this_ts) {
                cr = remote_call(&c, tid, &sv.regs, tg.gil_check, 0, 0, below, &holds, call_deadline);
                if (cr != CALL_OK) goto call_failed;
            }
            if (!this_ts || (int)holds != 0) {  // not for us: give it back, wait on
                if (restore_regs(tid, &sv) != 0) { rc = fail(r, MSM_INJECT_PTRACE_ERROR, "cannot restore thread %d", tid); goto out; }
                c.chosen = 0;
                r->held_ms += now_ms() - held0;
                hit_thread = find_thread(&c, tid);
                hit_thread->no_call = 1;
                hit_thread->want_call = 0;
                r->safe_point_method = MSM_SAFE_POINT_NONE;
                if (arm(&c) != 0) {
                    rc = fail(r, MSM_INJECT_PTRACE_ERROR, "pid %d: cannot re-arm the breakpoint; nothing was changed", pid);
                    goto out;
                }
                if (ptrace(PTRACE_CONT, tid, 0, 0) == 0) hit_thread->state = T_RUNNING;
                continue;
            }
            cr = remote_call(&c, tid, &sv.regs, tg.gil_ensure, 0, 0, below, &gil_state, call_deadline);
            if (cr != CALL_OK) goto call_failed;
        }

        // 3. a pending exception (PyErr_Occurred) makes this hit unusable: step on, re-arm
        if (tg.err_occurred && !at_wait) {
            uint64_t pending = 0;
            cr = remote_call(&c, tid, &sv.regs, tg.err_occurred, 0, 0, below, &pending, call_deadline);
            if (cr != CALL_OK) goto call_failed;
            if (restore_regs(tid, &sv) != 0) { rc = fail(r, MSM_INJECT_PTRACE_ERROR, "cannot restore thread %d", tid); goto out; }
            if (pending) {
                c.chosen = 0;
                r->safe_point_method = MSM_SAFE_POINT_NONE;
                r->held_ms += now_ms() - held0;
                if (step_past(&c, tid, deadline) != 0 || arm(&c) != 0) {
                    rc = fail(r, MSM_INJECT_PTRACE_ERROR, "pid %d: could not skip a safe point with a pending exception; nothing was changed", pid);
                    goto out;
                }
                struct thread *t = find_thread(&c, tid);
                if (t && t->state == T_STOPPED && ptrace(PTRACE_CONT, tid, 0, 0) == 0) t->state = T_RUNNING;
                continue;
            }
        }

        // 4. the source below the red zone, then PyRun_SimpleString[Flags](source)
        size_t len = strlen(src) + 1;
        uint64_t str = (below - len) & ~(uint64_t)15;
        if (mem_write(&c, str, src, len) != 0) { rc = fail(r, MSM_INJECT_PTRACE_ERROR, "cannot write to the stack of thread %d", tid); restore_regs(tid, &sv); goto out; }
        uint64_t ret = 0;
        cr = tg.pyrun_flags
            ? remote_call(&c, tid, &sv.regs, tg.pyrun_flags, str, 0, str - 64, &ret, call_deadline)
            : remote_call(&c, tid, &sv.regs, tg.pyrun, str, 0, str - 64, &ret, call_deadline);
        if (cr != CALL_OK) goto call_failed;
        r->pyrun_result = (int)(int32_t)ret;
        if (at_wait) {  // give the GIL back as it was (PyGILState_UNLOCKED: released again)
            uint64_t ignored = 0;
            cr = remote_call(&c, tid, &sv.regs, tg.gil_release, (uint32_t)gil_state, 0, below, &ignored, call_deadline);
            if (cr != CALL_OK) goto call_failed;
        }
        r->thread = tid;
        if (restore_regs(tid, &sv) != 0) { rc = fail(r, MSM_INJECT_PTRACE_ERROR, "cannot restore the registers of thread %d", tid); goto out; }
        r->held_ms += now_ms() - held0;
        c.chosen = 0;
        if (r->pyrun_result != 0)
            rc = fail(r, MSM_INJECT_PYTHON_ERROR,
                      "the injected code raised in pid %d (traceback on the target's stderr); the "
                      "process continues unchanged otherwise", pid);
        else
            rc = fail(r, MSM_INJECT_OK, "injected into pid %d (thread %d, CPython %s, %s)", pid, tid,
                      r->python_version, tg.layout == MSM_LAYOUT_STATIC ? "static executable" : "shared libpython");
        goto out;

    call_failed:
        if (cr == CALL_GONE) { rc = fail(r, MSM_INJECT_PROCESS_EXITED, "pid %d exited during the injection", pid); goto out; }
        if (cr == CALL_TIMEOUT) {
            // The code never returned: the thread cannot be given back its state. Leave it
            // running (detach) rather than hang; report loudly.
            rc = fail(r, MSM_INJECT_PTRACE_ERROR,
                      "the injected code in thread %d of pid %d did not return within %.0f s; "
                      "detached, the thread may fail when it returns", tid, pid, (30000 + timeout_ms) / 1000.0);
            goto out;
        }
        restore_regs(tid, &sv);
        rc = fail(r, MSM_INJECT_PTRACE_ERROR, "ptrace failed in thread %d of pid %d: %s; registers restored", tid, pid, strerror(errno));
        goto out;
    }

out:
    if (c.armed) disarm(&c);
    c.chosen = 0;
    detach_all(&c);
    if (c.memfd >= 0) close(c.memfd);
    free(sv.xstate);
    free(c.t);
    return rc;
}

#endif  // __x86_64__

int msm_inject_check(pid_t pid, struct msm_inject_result *result) {
    if (!result) return MSM_INJECT_BAD_ARGUMENT;
    memset(result, 0, sizeof *result);
    result->pyrun_result = -2;
    if (pid <= 0) return fail(result, MSM_INJECT_BAD_ARGUMENT, "bad pid %d", pid);
#if defined(__x86_64__)
    struct target tg = {0};
    int rc = preflight(pid, result, &tg);
    if (!rc) fail(result, MSM_INJECT_OK, "pid %d: CPython %s (%s) can be injected%s", pid, result->python_version,
                  result->layout == MSM_LAYOUT_STATIC ? "static executable" : "shared libpython",
                  result->method == MSM_INJECT_METHOD_PEP768 ? " through PEP 768" : "");
    return rc;
#else
    return fail(result, MSM_INJECT_UNSUPPORTED_ARCH,
                "live injection is implemented for x86-64 only; start the service under `ms-service-metric exec`");
#endif
}

int msm_inject_python(pid_t pid, const char *python_source, int timeout_ms,
                      struct msm_inject_result *result) {
    if (!result) return MSM_INJECT_BAD_ARGUMENT;
    memset(result, 0, sizeof *result);
    result->pyrun_result = -2;
    double t0 = now_ms();
    if (!python_source || pid <= 0 || timeout_ms <= 0)
        return fail(result, MSM_INJECT_BAD_ARGUMENT, "bad argument (pid %d, timeout %d ms)", pid, timeout_ms);
#if defined(__x86_64__)
    int rc = inject(pid, python_source, timeout_ms, result, t0);
    result->total_ms = now_ms() - t0;
    return rc;
#else
    (void)t0;
    return fail(result, MSM_INJECT_UNSUPPORTED_ARCH,
                "live injection is implemented for x86-64 only; start the service under `ms-service-metric exec`");
#endif
}
