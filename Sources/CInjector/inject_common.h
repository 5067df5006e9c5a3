// Small helpers shared by the files of the injector; internal to CInjector.
#ifndef MSM_INJECT_COMMON_H
#define MSM_INJECT_COMMON_H

#include "CInjector.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <time.h>

/// CLOCK_MONOTONIC in milliseconds.
static inline double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/// Records a refusal or failure in the result (code + one-line message) and returns code.
__attribute__((format(printf, 3, 4)))
static inline int fail(struct msm_inject_result *r, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
    r->error = code;
    return code;
}

/// A small /proc or /sys file into buf (NUL-terminated); its length, or -1.
int read_text(const char *path, char *buf, size_t size);

/// TracerPid of a process or thread status file; -1 when unreadable.
long tracer_of(const char *status_path);

#endif
