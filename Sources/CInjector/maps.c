// /proc/PID/maps (see include/msm_maps.h).
#define _GNU_SOURCE
#include "msm_maps.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/// Hex number at *p (at least one digit); advances *p. -1 if none or it overflows.
static int hex(const char **p, const char *end, uint64_t *out) {
    uint64_t v = 0;
    const char *s = *p;
    while (s < end) {
        int d;
        char c = *s;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else break;
        if (v >> 60) return -1;
        v = (v << 4) | (uint64_t)d;
        s++;
    }
    if (s == *p) return -1;
    *p = s;
    *out = v;
    return 0;
}

static int dec(const char **p, const char *end, uint64_t *out) {
    uint64_t v = 0;
    const char *s = *p;
    while (s < end && *s >= '0' && *s <= '9') {
        if (v > (UINT64_MAX - 9) / 10) return -1;
        v = v * 10 + (uint64_t)(*s - '0');
        s++;
    }
    if (s == *p) return -1;
    *p = s;
    *out = v;
    return 0;
}

static int expect(const char **p, const char *end, char c) {
    if (*p >= end || **p != c) return -1;
    (*p)++;
    return 0;
}

static void skip_spaces(const char **p, const char *end) {
    while (*p < end && (**p == ' ' || **p == '\t')) (*p)++;
}

/// One line "start-end perms offset major:minor inode   path".
static int parse_line(const char *s, const char *end, struct msm_mapping *m) {
    memset(m, 0, sizeof *m);
    uint64_t major, minor;
    if (hex(&s, end, &m->start) || expect(&s, end, '-') || hex(&s, end, &m->end) || expect(&s, end, ' '))
        return -1;
    if (end - s < 5) return -1;
    memcpy(m->perms, s, 4);
    s += 4;
    if (expect(&s, end, ' ') || hex(&s, end, &m->offset) || expect(&s, end, ' ')
        || hex(&s, end, &major) || expect(&s, end, ':') || hex(&s, end, &minor) || expect(&s, end, ' ')
        || dec(&s, end, &m->inode))
        return -1;
    if (major > UINT32_MAX || minor > UINT32_MAX || m->end < m->start) return -1;
    m->dev_major = (uint32_t)major;
    m->dev_minor = (uint32_t)minor;
    skip_spaces(&s, end);
    size_t len = (size_t)(end - s);
    if (len >= sizeof m->path) return -1;
    memcpy(m->path, s, len);
    m->path[len] = 0;
    // A NUL inside the line would cut the path short without our noticing.
    if (memchr(s, 0, len)) return -1;
    return 0;
}

int msm_maps_parse(const char *text, size_t len, int files_only, size_t max_entries, struct msm_maps *out) {
    out->v = NULL;
    out->n = 0;
    size_t cap = 0;
    const char *p = text, *stop = text + len;
    while (p < stop && out->n < max_entries) {
        const char *nl = memchr(p, '\n', (size_t)(stop - p));
        const char *end = nl ? nl : stop;
        struct msm_mapping m;
        if (parse_line(p, end, &m) == 0 && (!files_only || m.path[0] == '/')) {
            if (out->n == cap) {
                size_t ncap = cap ? cap * 2 : 64;
                struct msm_mapping *nv = realloc(out->v, ncap * sizeof *nv);
                if (!nv) { msm_maps_free(out); return -1; }
                out->v = nv;
                cap = ncap;
            }
            out->v[out->n++] = m;
        }
        p = nl ? nl + 1 : stop;
    }
    return 0;
}

long msm_read_proc_file(const char *path, size_t max, char **out) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return -1;
    size_t cap = 16384, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) { close(fd); errno = ENOMEM; return -1; }
    for (;;) {
        if (n == cap) {
            if (cap >= max) break;
            size_t ncap = cap * 2 > max ? max : cap * 2;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) { free(buf); close(fd); errno = ENOMEM; return -1; }
            buf = nb;
            cap = ncap;
        }
        ssize_t k = read(fd, buf + n, cap - n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) { int saved = errno; free(buf); close(fd); errno = saved; return -1; }
        if (k == 0) break;
        n += (size_t)k;
    }
    close(fd);
    buf[n] = 0;
    *out = buf;
    return (long)n;
}

int msm_maps_read(pid_t pid, struct msm_maps *out) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/maps", pid);
    char *text = NULL;
    // 64 MiB: a process with a million mappings; more is not a process we attach to.
    long len = msm_read_proc_file(path, 64u << 20, &text);
    if (len < 0) return -1;
    int rc = msm_maps_parse(text, (size_t)len, 1, 1u << 20, out);
    free(text);
    if (rc != 0) errno = ENOMEM;
    return rc;
}

void msm_maps_free(struct msm_maps *m) {
    free(m->v);
    m->v = NULL;
    m->n = 0;
}
