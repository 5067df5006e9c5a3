// Small helpers shared by the ptrace injector (inject.c) and the PEP 768 path (pep768.c);
// internal to CInjector.
#ifndef MSM_INJECT_COMMON_H
#define MSM_INJECT_COMMON_H

#include "CInjector.h"

#include <stdarg.h>
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

#endif
