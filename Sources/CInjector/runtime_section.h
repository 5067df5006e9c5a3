// Where CPython's _PyRuntime lives in another process (internal to CInjector).
#ifndef MSM_RUNTIME_SECTION_H
#define MSM_RUNTIME_SECTION_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/// Runtime address and size of _PyRuntime in `pid`: the ELF section ".PyRuntime" of the
/// mapped object `object_path` (a path exactly as /proc/PID/maps shows it), else that
/// object's dynamic symbol "_PyRuntime". The file is opened through /proc/PID/map_files
/// (the very inode mapped), else through /proc/PID/root. 0 on success; -1 with a short
/// reason in err.
int msm_find_pyruntime(pid_t pid, const char *object_path, uint64_t *addr, uint64_t *size,
                       char *err, size_t errlen);

#endif
