// Safe point and return point as per-process uprobes (see safe_point.h).
#define _GNU_SOURCE
#include "safe_point.h"
#include "inject_common.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

__attribute__((format(printf, 3, 4)))
static int sp_fail(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static uint64_t status_mask(const char *status, const char *field) {
    const char *p = strstr(status, field);
    return p ? strtoull(p + strlen(field), NULL, 16) : 0;
}

int safe_point_choose_signal(pid_t pid) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    if (read_text(path, buf, sizeof buf) <= 0) return 0;
    uint64_t caught = status_mask(buf, "\nSigCgt:");
    // Default action "ignore" (signal(7)); a handler in the target would run if the agent
    // died after a program sent the signal, so a caught one is never used.
    static const int candidates[] = { SIGURG, SIGWINCH };
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        int sig = candidates[i];
        if (!(caught & (1ULL << (sig - 1)))) return sig;
    }
    return 0;
}

int safe_point_open(struct safe_point *sp, const void *bytes, size_t len, pid_t pid, int signal,
                    char *err, size_t errlen) {
    memset(sp, 0, sizeof *sp);
    sp->excluded_fd = -1;
    sp->signal = signal;
    if (!bytes || !len) return sp_fail(err, errlen, "no injection BPF object was given");
    sp->obj = bpf_object__open_mem(bytes, len, NULL);
    if (!sp->obj) { sp->obj = NULL; return sp_fail(err, errlen, "cannot open the injection BPF object: %s", strerror(errno)); }
    int rc = bpf_object__load(sp->obj);
    if (rc) {
        char why[128];
        libbpf_strerror(rc, why, sizeof why);
        safe_point_close(sp);
        return sp_fail(err, errlen, "cannot load the injection BPF programs: %s", why);
    }
    struct bpf_map *state = bpf_object__find_map_by_name(sp->obj, "inject_state");
    struct bpf_map *excluded = bpf_object__find_map_by_name(sp->obj, "inject_excluded");
    if (!state || !excluded) { safe_point_close(sp); return sp_fail(err, errlen, "the injection BPF object lacks its maps"); }
    sp->excluded_fd = bpf_map__fd(excluded);
    long page = sysconf(_SC_PAGESIZE);
    sp->state_len = (size_t)(page > 0 ? page : 4096);
    void *m = mmap(NULL, sp->state_len, PROT_READ | PROT_WRITE, MAP_SHARED, bpf_map__fd(state), 0);
    if (m == MAP_FAILED) {
        int e = errno;
        safe_point_close(sp);
        return sp_fail(err, errlen, "cannot map the injection state: %s", strerror(e));
    }
    sp->state = m;
    __atomic_store_n(&sp->state->signal, (uint32_t)signal, __ATOMIC_RELAXED);
    __atomic_store_n(&sp->state->tgid, (uint32_t)pid, __ATOMIC_RELEASE);
    return 0;
}

struct attach_job {
    struct bpf_program *prog;
    pid_t pid;
    const char *path;
    uint64_t offset;
    struct bpf_link *link;
    int err;
};

static void *attach_one(void *arg) {
    struct attach_job *j = arg;
    LIBBPF_OPTS(bpf_uprobe_opts, opts, .retprobe = false);
    j->link = bpf_program__attach_uprobe_opts(j->prog, j->pid, j->path, (size_t)j->offset, &opts);
    j->err = j->link ? 0 : (errno ? errno : EINVAL);
    return NULL;
}

int safe_point_attach(struct safe_point *sp, pid_t pid, const char *safe_path, uint64_t safe_offset,
                      const char *return_path, uint64_t return_offset, char *err, size_t errlen) {
    struct bpf_program *safe = bpf_object__find_program_by_name(sp->obj, "msm_inject_safe_point");
    struct bpf_program *ret = bpf_object__find_program_by_name(sp->obj, "msm_inject_return");
    if (!safe || !ret) return sp_fail(err, errlen, "the injection BPF object lacks its programs");
    // Each registration waits for the kernel (~0.1 s here): both at once.
    struct attach_job jobs[2] = {
        { .prog = safe, .pid = pid, .path = safe_path, .offset = safe_offset },
        { .prog = ret, .pid = pid, .path = return_path, .offset = return_offset },
    };
    pthread_t helper;
    int threaded = pthread_create(&helper, NULL, attach_one, &jobs[1]) == 0;
    attach_one(&jobs[0]);
    if (threaded) pthread_join(helper, NULL);
    else attach_one(&jobs[1]);
    sp->at_safe_point = jobs[0].link;
    sp->at_return = jobs[1].link;
    if (!jobs[0].link || !jobs[1].link) {
        int which = jobs[0].link ? 1 : 0;
        return sp_fail(err, errlen, "cannot attach the injection uprobe to %s at 0x%llx: %s",
                       jobs[which].path, (unsigned long long)jobs[which].offset, strerror(jobs[which].err));
    }
    return 0;
}

void safe_point_exclude(struct safe_point *sp, pid_t tid) {
    uint32_t key = (uint32_t)tid;
    uint8_t one = 1;
    if (sp->excluded_fd >= 0) bpf_map_update_elem(sp->excluded_fd, &key, &one, BPF_ANY);
}

void safe_point_arm(struct safe_point *sp) {
    __atomic_store_n(&sp->state->claimed_tid, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&sp->state->phase, MSM_INJECT_PHASE_ARMED, __ATOMIC_RELEASE);
}

void safe_point_disarm(struct safe_point *sp) {
    if (sp->state) __atomic_store_n(&sp->state->phase, MSM_INJECT_PHASE_IDLE, __ATOMIC_RELEASE);
}

pid_t safe_point_claimed(const struct safe_point *sp) {
    return (pid_t)__atomic_load_n(&sp->state->claimed_tid, __ATOMIC_ACQUIRE);
}

void safe_point_expect_return(struct safe_point *sp, pid_t tid, uint64_t return_sp) {
    __atomic_store_n(&sp->state->claimed_tid, (uint32_t)tid, __ATOMIC_RELAXED);
    __atomic_store_n(&sp->state->return_sp, return_sp, __ATOMIC_RELAXED);
    __atomic_store_n(&sp->state->return_value, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&sp->state->phase, MSM_INJECT_PHASE_CALLING, __ATOMIC_RELEASE);
}

int safe_point_returned(const struct safe_point *sp, uint64_t *value) {
    if (__atomic_load_n(&sp->state->phase, __ATOMIC_ACQUIRE) != MSM_INJECT_PHASE_RETURNED) return 0;
    *value = __atomic_load_n(&sp->state->return_value, __ATOMIC_RELAXED);
    return 1;
}

uint64_t safe_point_hits(const struct safe_point *sp) {
    return sp->state ? __atomic_load_n(&sp->state->safe_point_hits, __ATOMIC_RELAXED) : 0;
}

struct teardown {
    struct bpf_link *links[2];
    struct bpf_object *obj;
};

static void *tear_down(void *arg) {
    struct teardown *t = arg;
    for (int i = 0; i < 2; i++)
        if (t->links[i]) bpf_link__destroy(t->links[i]);
    if (t->obj) bpf_object__close(t->obj);
    free(t);
    return NULL;
}

void safe_point_close(struct safe_point *sp) {
    safe_point_disarm(sp);
    if (sp->state) munmap(sp->state, sp->state_len);
    // Disarmed programs do nothing, so the uprobes need not be gone before we return: each
    // removal waits for an RCU grace period (~0.1 s here, seconds on a busy host), and
    // the injection's caller waits for none of them. If this process exits first, the
    // kernel removes them when it closes our file descriptors.
    struct teardown *t = malloc(sizeof *t);
    if (t) {
        t->links[0] = sp->at_safe_point;
        t->links[1] = sp->at_return;
        t->obj = sp->obj;
        pthread_t helper;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&helper, &attr, tear_down, t) != 0) tear_down(t);
        pthread_attr_destroy(&attr);
    } else {
        if (sp->at_safe_point) bpf_link__destroy(sp->at_safe_point);
        if (sp->at_return) bpf_link__destroy(sp->at_return);
        if (sp->obj) bpf_object__close(sp->obj);
    }
    memset(sp, 0, sizeof *sp);
    sp->excluded_fd = -1;
}
