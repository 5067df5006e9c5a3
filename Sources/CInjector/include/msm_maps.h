// The one parser of /proc/PID/maps in ms-service-metric (the injector, the PEP 768 path and
// the agent's process table use it). The text is written by the kernel, but the paths in it
// are chosen by the process: they are kept as bytes (up to the line's end), never
// interpreted, and a line that does not parse is skipped.
#ifndef MSM_MAPS_H
#define MSM_MAPS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MSM_MAPS_PATH_MAX 512

struct msm_mapping {
    uint64_t start, end;      // [start, end) in the process's address space
    uint64_t offset;          // file offset of start
    uint64_t inode;
    uint32_t dev_major, dev_minor;
    char perms[5];            // "r-xp"
    char path[MSM_MAPS_PATH_MAX]; // "" for anonymous mappings; "[stack]" and the like kept
};

struct msm_maps {
    struct msm_mapping *v;
    size_t n;
};

/// Parses maps text (pure). Keeps file-backed mappings only (path starting with '/') when
/// files_only is set. Paths longer than MSM_MAPS_PATH_MAX - 1 bytes are skipped. At most
/// max_entries mappings are kept. 0, or -1 (out of memory).
int msm_maps_parse(const char *text, size_t len, int files_only, size_t max_entries, struct msm_maps *out);

/// Reads and parses /proc/PID/maps (files only). 0, or -1 with errno.
int msm_maps_read(pid_t pid, struct msm_maps *out);

void msm_maps_free(struct msm_maps *m);

/// Reads a whole /proc file (procfs files report size 0) into a new NUL-terminated buffer,
/// at most max bytes. Returns the length, or -1 with errno. Free with free().
long msm_read_proc_file(const char *path, size_t max, char **out);

#ifdef __cplusplus
}
#endif

#endif
