// C helpers around libbpf for Swift. libbpf's option structs are normally filled with the
// LIBBPF_OPTS macro, which Swift cannot import; these functions do it in C instead.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <bpf/libbpf.h>

/// Attaches `prog` as an entry uprobe at `func_offset` (file offset) of `binary_path`, for
/// process `pid` (-1: every process), raising the USDT-style semaphore at file offset
/// `ref_ctr_offset` (0: none). Returns NULL and sets errno on failure.
struct bpf_link *msm_attach_uprobe(struct bpf_program *prog, pid_t pid, const char *binary_path,
                                   size_t func_offset, size_t ref_ctr_offset);

/// Routes libbpf's log output to stderr only at warning level and above.
void msm_libbpf_quiet_logging(void);

/// Collects the per-CPU counters of a BPF_MAP_TYPE_PERCPU_ARRAY of __u64 into `out`
/// (summed over CPUs), `count` keys starting at 0. Returns 0 or -errno.
int msm_sum_percpu_counters(int map_fd, uint64_t *out, uint32_t count);
