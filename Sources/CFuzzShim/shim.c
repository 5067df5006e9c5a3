#include "CFuzzShim.h"

#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static char crash_path[512];
static const void *current;
static size_t current_len;

static void on_crash(int sig) {
    int fd = open(crash_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
        if (current) (void)!write(fd, current, current_len);
        close(fd);
    }
    static const char msg[] = "msm-fuzz: CRASH; the input is in the crash file\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(128 + sig);
}

void msm_fuzz_install(const char *path) {
    strncpy(crash_path, path, sizeof crash_path - 1);
    int sigs[] = { SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGABRT, SIGFPE };
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) signal(sigs[i], on_crash);
}

void msm_fuzz_current(const void *bytes, size_t len) {
    current = bytes;
    current_len = len;
}
