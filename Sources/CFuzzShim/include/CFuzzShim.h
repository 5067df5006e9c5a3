// The crash reporter of msm-fuzz: a Swift trap or a fault in C ends the process, so the input
// being tried is written to a file from the signal handler (async-signal-safe calls only).
#pragma once
#include <stddef.h>

/// Where the input that crashes goes (copied; call once at start) and the handlers.
void msm_fuzz_install(const char *crash_path);
/// The input about to be tried (its bytes must stay valid until the next call).
void msm_fuzz_current(const void *bytes, size_t len);
