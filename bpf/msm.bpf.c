// SPDX-License-Identifier: GPL-2.0
/*
 * msm.bpf.c — the kernel side of ms-service-metric.
 *
 * One entry uprobe, on the provider's marker function
 *     void msm_emit(const void *payload, uint32_t len);
 * attached per target process. Each hit copies the provider's payload behind a
 * header stamped here (kernel time, pid, tid) into a ring buffer, without waking
 * the reader (the agent drains on a timer), and counts hits and drops per CPU.
 * The target never waits: a full ring buffer loses the event and counts it.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "msm_abi.h"

char LICENSE[] SEC("license") = "GPL"; /* bpf_probe_read_user is GPL-only */

/* Ring buffer size; the agent may resize it before load. */
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 16 * 1024 * 1024);
} events SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, MSM_STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

/* Staging area: header + largest payload, one per CPU (too big for the BPF stack). */
struct staged_event {
    struct msm_event header;
    __u8 payload[MSM_MAX_PAYLOAD];
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct staged_event);
} staging SEC(".maps");

static __always_inline void count(__u32 which)
{
    __u64 *value = bpf_map_lookup_elem(&stats, &which);
    if (value)
        *value += 1; /* per-CPU slot: no atomics needed */
}

/* BPF_KPROBE only unpacks pt_regs arguments; libbpf 1.1 has no BPF_UPROBE. */
SEC("uprobe")
int BPF_KPROBE(msm_emit_hit, const void *payload, __u32 len_arg)
{
    __u32 zero = 0;
    __u64 len = len_arg;
    __u32 flags = 0;
    struct staged_event *staged;

    count(MSM_STAT_HITS);
    staged = bpf_map_lookup_elem(&staging, &zero);
    if (!staged)
        return 0;

    if (len > MSM_MAX_PAYLOAD) {
        len = MSM_MAX_PAYLOAD;
        flags |= MSM_EVENT_TRUNCATED;
        count(MSM_STAT_TRUNCATED);
    }
    /* Keep the verifier convinced the length is bounded after the branch above. */
    barrier_var(len);
    if (len > MSM_MAX_PAYLOAD)
        return 0;

    if (bpf_probe_read_user(staged->payload, len, payload) != 0) {
        count(MSM_STAT_READ_ERRORS);
        return 0;
    }

    __u64 pid_tgid = bpf_get_current_pid_tgid();
    staged->header.ktime_ns = bpf_ktime_get_ns();
    staged->header.pid = pid_tgid >> 32;
    staged->header.tid = (__u32)pid_tgid;
    staged->header.len = len;
    staged->header.flags = flags;

    if (bpf_ringbuf_output(&events, staged, sizeof(staged->header) + len, BPF_RB_NO_WAKEUP) != 0)
        count(MSM_STAT_DROPS);
    return 0;
}
