// Helpers shared by the injector's files (see inject_common.h).
#define _GNU_SOURCE
#include "inject_common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int read_text(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
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

long tracer_of(const char *status_path) {
    char buf[4096];
    if (read_text(status_path, buf, sizeof buf) < 0) return -1;
    const char *p = strstr(buf, "\nTracerPid:");
    return p ? strtol(p + 11, NULL, 10) : -1;
}
