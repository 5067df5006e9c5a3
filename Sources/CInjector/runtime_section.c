// Locates CPython's _PyRuntime (3.14+: the ELF section .PyRuntime) in another process.
#define _GNU_SOURCE
#include "runtime_section.h"
#include "msm_elf.h"
#include "msm_maps.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

__attribute__((format(printf, 3, 4)))
static int say(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

int msm_find_pyruntime(pid_t pid, const char *object_path, uint64_t *addr, uint64_t *size,
                       char *err, size_t errlen) {
    struct msm_maps m = {0};
    if (msm_maps_read(pid, &m) != 0) return say(err, errlen, "cannot read the mappings of pid %d: %s", pid, strerror(errno));
    const struct msm_mapping *first = NULL;
    for (size_t i = 0; i < m.n && !first; i++)
        if (strcmp(m.v[i].path, object_path) == 0) first = &m.v[i];
    if (!first) { msm_maps_free(&m); return say(err, errlen, "%s is not mapped in pid %d", object_path, pid); }

    char path[700], why[256];
    uint64_t file_size = 0;
    snprintf(path, sizeof path, "/proc/%d/map_files/%llx-%llx", pid,
             (unsigned long long)first->start, (unsigned long long)first->end);
    int fd = msm_open_regular(path, 4ull << 30, &file_size, why, sizeof why);
    if (fd < 0) {
        snprintf(path, sizeof path, "/proc/%d/root%s", pid, object_path);
        fd = msm_open_regular(path, 4ull << 30, &file_size, why, sizeof why);
    }
    if (fd < 0) { msm_maps_free(&m); return say(err, errlen, "%s", why); }

    int rc = -1;
    struct msm_elf e;
    struct msm_elf_source src = { .fd = fd, .bytes = NULL, .size = file_size };
    if (msm_elf_open(&e, src, object_path, err, errlen) != 0) goto out_fd;

    // Load bias: where the first PT_LOAD went (the mapping at its page-aligned file offset).
    uint64_t vaddr = 0, offset = 0, bias = 0;
    int have_bias = 0;
    if (msm_elf_first_load(&e, &vaddr, &offset) == 0) {
        for (size_t k = 0; k < m.n && !have_bias; k++) {
            if (strcmp(m.v[k].path, object_path) != 0 || m.v[k].offset != (offset & ~(uint64_t)0xfff)) continue;
            bias = m.v[k].start - (vaddr & ~(uint64_t)0xfff);
            have_bias = 1;
        }
    }
    if (!have_bias) { say(err, errlen, "cannot find the load address of %s in pid %d", object_path, pid); goto out; }

    uint64_t value = 0, len = 0;
    if (msm_elf_section(&e, ".PyRuntime", &value, &len) == 0) {
        *addr = bias + value;
        *size = len;
        rc = 0;
        goto out;
    }
    struct msm_elf_symbol s;
    if (msm_elf_find_symbol(&e, "_PyRuntime", MSM_ELF_DYNSYM, &s) == 0) {
        *addr = bias + s.value;
        *size = s.size;
        rc = 0;
        goto out;
    }
    say(err, errlen, "%s has neither a .PyRuntime section nor a _PyRuntime symbol", object_path);
out:
    msm_elf_close(&e);
out_fd:
    close(fd);
    msm_maps_free(&m);
    return rc;
}
