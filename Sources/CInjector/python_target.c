// The target's CPython, its refusals and its C library's gadgets (see python_target.h).
#define _GNU_SOURCE
#include "python_target.h"
#include "inject_common.h"
#include "msm_elf.h"
#include "msm_maps.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/// Objects we read symbols from are libraries and interpreters: 4 GiB is far beyond any.
#define MAX_OBJECT_SIZE (4ull << 30)

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

void python_target_map_file(pid_t pid, uint64_t start, uint64_t end, char *out, size_t outlen) {
    snprintf(out, outlen, "/proc/%d/map_files/%llx-%llx", pid, (unsigned long long)start, (unsigned long long)end);
}

uint64_t python_target_start_time(pid_t pid) {
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (read_text(path, buf, sizeof buf) <= 0) return 0;
    const char *p = strrchr(buf, ')');  // the comm may hold spaces and parentheses
    if (!p) return 0;
    p++;
    for (int field = 3; field < 22 && *p; field++) {  // fields 3..21 precede starttime
        while (*p == ' ') p++;
        while (*p && *p != ' ') p++;
    }
    return strtoull(p, NULL, 10);
}

/// Opens the mapped object: exactly the mapped inode through map_files, else through the
/// target's root; regular files only, without blocking.
static int open_object(pid_t pid, const struct msm_mapping *mp, struct msm_elf *e, int *fd_out) {
    char path[700], why[256];
    uint64_t size = 0;
    python_target_map_file(pid, mp->start, mp->end, path, sizeof path);
    int fd = msm_open_regular(path, MAX_OBJECT_SIZE, &size, why, sizeof why);
    if (fd < 0) {
        snprintf(path, sizeof path, "/proc/%d/root%s", pid, mp->path);
        fd = msm_open_regular(path, MAX_OBJECT_SIZE, &size, why, sizeof why);
    }
    if (fd < 0) return -1;
    struct msm_elf_source src = { .fd = fd, .bytes = NULL, .size = size };
    if (msm_elf_open(e, src, mp->path, why, sizeof why) != 0) { close(fd); return -1; }
    *fd_out = fd;
    return 0;
}

/// Load bias: the first PT_LOAD lies at the mapping of this object whose file offset is
/// the segment's page-aligned offset.
static int load_bias(const struct msm_elf *e, const struct msm_maps *m, const char *path, uint64_t *bias) {
    uint64_t vaddr, offset;
    if (msm_elf_first_load(e, &vaddr, &offset) != 0) return -1;
    uint64_t mask = ~(uint64_t)0xfff;
    for (size_t k = 0; k < m->n; k++) {
        if (strcmp(m->v[k].path, path) != 0 || m->v[k].offset != (offset & mask)) continue;
        *bias = m->v[k].start - (vaddr & mask);
        return 0;
    }
    return -1;
}

/// Runtime address of a defined dynamic symbol (its file offset too, if wanted); 0 if absent.
static uint64_t sym(struct msm_elf *e, uint64_t bias, const char *name, uint64_t *size, uint64_t *offset) {
    struct msm_elf_symbol s;
    if (msm_elf_find_symbol(e, name, MSM_ELF_DYNSYM, &s) != 0) return 0;
    if (size) *size = s.size;
    if (offset) *offset = s.has_file_offset ? s.file_offset : 0;
    return bias + s.value;
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

static int read_remote(pid_t pid, uint64_t addr, void *buf, size_t len) {
    struct iovec local = { buf, len }, remote = { (void *)(uintptr_t)addr, len };
    return process_vm_readv(pid, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

static int find_python(pid_t pid, const struct msm_maps *m, struct python_target *tg, struct msm_inject_result *r) {
    char exe[512] = {0};
    char link[64];
    snprintf(link, sizeof link, "/proc/%d/exe", pid);
    ssize_t k = readlink(link, exe, sizeof exe - 1);
    if (k > 0) exe[k] = 0;

    // Candidates in order: objects named *python*, the executable, everything else.
    for (int pass = 0; pass < 3; pass++) {
        for (size_t i = 0; i < m->n; i++) {
            const struct msm_mapping *mp = &m->v[i];
            int seen = 0;
            for (size_t j = 0; j < i && !seen; j++) seen = strcmp(m->v[j].path, mp->path) == 0;
            if (seen) continue;
            int named = strstr(base_name(mp->path), "python") != NULL;
            int is_exe = strcmp(mp->path, exe) == 0;
            if ((pass == 0 && !named) || (pass == 1 && (named || !is_exe)) || (pass == 2 && (named || is_exe)))
                continue;
            struct msm_elf e;
            int fd = -1;
            if (open_object(pid, mp, &e, &fd) != 0) continue;
            uint64_t bias = 0;
            if (load_bias(&e, m, mp->path, &bias) != 0) { msm_elf_close(&e); close(fd); continue; }
            uint64_t st_offset = 0;
            uint64_t st = sym(&e, bias, "PyEval_SaveThread", NULL, &st_offset);
            uint64_t run = sym(&e, bias, "PyRun_SimpleString", NULL, NULL);
            uint64_t runf = sym(&e, bias, "PyRun_SimpleStringFlags", NULL, NULL);
            if (!st || (!run && !runf)) { msm_elf_close(&e); close(fd); continue; }
            tg->save_thread = st;
            tg->save_thread_offset = st_offset;
            tg->pyrun = run;
            tg->pyrun_flags = runf;
            tg->err_occurred = sym(&e, bias, "PyErr_Occurred", NULL, NULL);
            tg->gil_ensure = sym(&e, bias, "PyGILState_Ensure", NULL, NULL);
            tg->gil_release = sym(&e, bias, "PyGILState_Release", NULL, NULL);
            tg->gil_check = sym(&e, bias, "PyGILState_Check", NULL, NULL);
            tg->gil_this = sym(&e, bias, "PyGILState_GetThisThreadState", NULL, NULL);
            tg->runtime = sym(&e, bias, "_PyRuntime", &tg->runtime_size, NULL);
            snprintf(tg->path, sizeof tg->path, "%s", mp->path);
            snprintf(r->object_path, sizeof r->object_path, "%s", mp->path);
            tg->map_start = mp->start;
            tg->map_end = mp->end;
            tg->inode = mp->inode;
            tg->layout = (e.eh.e_type == ET_EXEC || is_exe) ? MSM_LAYOUT_STATIC : MSM_LAYOUT_SHARED;
            r->layout = tg->layout;

            // Version: Py_Version (3.11+), else the file name, else a 3.10-only API marker.
            int major = 0, minor = -1, ft = 0;
            uint64_t pv = sym(&e, bias, "Py_Version", NULL, NULL);
            uint32_t hex = 0;
            if (pv && read_remote(pid, pv, &hex, 4) == 0 && (hex >> 24) == 3) {
                major = 3;
                minor = (hex >> 16) & 0xff;
                int micro = (hex >> 8) & 0xff, level = (hex >> 4) & 0xf, serial = hex & 0xf;
                const char *lv = level == 0xA ? "a" : level == 0xB ? "b" : level == 0xC ? "rc" : "";
                if (*lv)
                    snprintf(r->python_version, sizeof r->python_version, "3.%d.%d%s%d", minor, micro, lv, serial);
                else
                    snprintf(r->python_version, sizeof r->python_version, "3.%d.%d", minor, micro);
            }
            int nminor = 0, nft = 0;
            int named_version = version_from_name(base_name(mp->path), &nminor, &nft)
                || (is_exe && version_from_name(base_name(exe), &nminor, &nft));
            if (minor < 0 && named_version) { major = 3; minor = nminor; }
            int guessed = 0;
            if (minor < 0) {
                major = 3;
                minor = sym(&e, bias, "Py_IsNone", NULL, NULL) ? 10 : 9;  // Py_IsNone: new in 3.10
                guessed = minor == 9;
            }
            if (!r->python_version[0])
                snprintf(r->python_version, sizeof r->python_version, "3.%d%s", minor, guessed ? " or older" : "");
            ft = nft || sym(&e, bias, "_Py_DecRefShared", NULL, NULL) || sym(&e, bias, "_Py_MergeZeroLocalRefcount", NULL, NULL);
            r->python_major = major;
            r->python_minor = minor;
            msm_elf_close(&e);
            close(fd);
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
            if (!st_offset)
                return fail(r, MSM_INJECT_NOT_CPYTHON,
                            "pid %d: PyEval_SaveThread in %s has no file offset; nothing was changed", pid, mp->path);
            return 0;
        }
    }
    return fail(r, MSM_INJECT_NOT_CPYTHON,
                "pid %d is not a CPython process (no mapped object exports PyEval_SaveThread and "
                "PyRun_SimpleString)", pid);
}

int python_target_preflight(pid_t pid, struct msm_inject_result *r, struct python_target *tg) {
    memset(tg, 0, sizeof *tg);
    if (geteuid() != 0)
        return fail(r, MSM_INJECT_NOT_ROOT, "live injection needs root (ptrace of another user's process)");
    char buf[4096];
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
    // A user-space shadow stack (CET) would refuse our return chain: the calls return to
    // addresses no call instruction pushed.
    if (read_text(path, buf, sizeof buf) > 0) {
        const char *f = strstr(buf, "\nx86_Thread_features:");
        if (f) {
            const char *eol = strchr(f + 1, '\n');
            size_t n = eol ? (size_t)(eol - f) : strlen(f);
            if (memmem(f, n, "shstk", 5))
                return fail(r, MSM_INJECT_UNSUPPORTED_VERSION,
                            "pid %d runs with a shadow stack (CET): live injection is not supported; start "
                            "it under `ms-service-metric exec`; nothing was changed", pid);
        }
    }
    tg->start_time = python_target_start_time(pid);
    struct msm_maps m = {0};
    if (msm_maps_read(pid, &m) != 0)
        return fail(r, MSM_INJECT_NO_PROCESS, "cannot read /proc/%d/maps: %s", pid, strerror(errno));
    int rc = find_python(pid, &m, tg, r);
    msm_maps_free(&m);
    return rc;
}

/// The C library: the mapping named libc.so.* / libc-*.so / ld-musl-*, executable.
static int is_libc(const char *path) {
    const char *b = base_name(path);
    return strncmp(b, "libc.so", 7) == 0 || strncmp(b, "libc-", 5) == 0 || strncmp(b, "ld-musl-", 8) == 0
        || strncmp(b, "libc.musl", 9) == 0;
}

int python_target_gadgets(pid_t pid, struct python_target *tg, struct msm_inject_result *r) {
    struct msm_maps m = {0};
    if (msm_maps_read(pid, &m) != 0)
        return fail(r, MSM_INJECT_NO_PROCESS, "cannot read /proc/%d/maps: %s", pid, strerror(errno));
    int rc = fail(r, MSM_INJECT_NOT_CPYTHON,
                  "pid %d: no C library with a signal-return trampoline is mapped (glibc or musl is "
                  "needed for a safe injection); nothing was changed; start it under `ms-service-metric exec`", pid);
    for (size_t i = 0; i < m.n; i++) {
        const struct msm_mapping *mp = &m.v[i];
        if (mp->perms[2] != 'x' || !is_libc(mp->path)) continue;
        uint64_t len = mp->end - mp->start;
        if (len == 0 || len > (256u << 20)) continue;
        char path[700], why[256];
        uint64_t size = 0;
        python_target_map_file(pid, mp->start, mp->end, path, sizeof path);
        int fd = msm_open_regular(path, MAX_OBJECT_SIZE, &size, why, sizeof why);
        if (fd < 0) continue;
        uint64_t end;
        uint8_t *text = NULL;
        if (!__builtin_add_overflow(mp->offset, len, &end) && end <= size) text = malloc((size_t)len);
        size_t done = 0;
        while (text && done < len) {
            ssize_t k = pread(fd, text + done, (size_t)(len - done), (off_t)(mp->offset + done));
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) break;
            done += (size_t)k;
        }
        close(fd);
        if (text && done == len && arch_find_gadgets(text, (size_t)len, mp->start, mp->offset, &tg->gadgets) == 0) {
            snprintf(tg->gadgets.sigreturn_path, sizeof tg->gadgets.sigreturn_path, "%s", mp->path);
            tg->gadgets.sigreturn_map_start = mp->start;
            tg->gadgets.sigreturn_map_end = mp->end;
            rc = 0;
        }
        free(text);
        if (rc == 0) break;
    }
    msm_maps_free(&m);
    if (rc == 0) r->error = 0;
    return rc;
}

int python_target_unchanged(pid_t pid, const struct python_target *tg) {
    if (python_target_start_time(pid) != tg->start_time) return 0;
    char path[700];
    python_target_map_file(pid, tg->map_start, tg->map_end, path, sizeof path);
    struct stat st;
    return stat(path, &st) == 0 && (uint64_t)st.st_ino == tg->inode;
}
