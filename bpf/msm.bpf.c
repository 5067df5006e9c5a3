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

/* Ring-buffer records come in three fixed sizes (see MSM_TIMER_PAYLOAD in msm_abi.h), so
 * the payload is read straight into reserved ring memory. (A
 * per-CPU staging buffer is not safe here: uprobe programs run with migration disabled
 * but preemptible, so two threads on one CPU could interleave.) Most events are timer
 * samples and take the smallest record. The agent reads the length from the header. */

static __always_inline void count(__u32 which)
{
    __u64 *value = bpf_map_lookup_elem(&stats, &which);
    if (value)
        __sync_fetch_and_add(value, 1); /* per-CPU slot, but the program is preemptible */
}

static __always_inline void stamp(struct msm_event *header, __u32 len, __u32 flags)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();

    header->ktime_ns = bpf_ktime_get_ns();
    header->pid = pid_tgid >> 32;
    header->tid = (__u32)pid_tgid;
    header->len = len;
    header->flags = flags;
}

/* Reserves a record with room for `capacity` payload bytes (a constant at each inlined
 * call site, as bpf_ringbuf_reserve requires), copies `len` bytes of the payload into it
 * and submits it, or counts why not. */
static __always_inline void copy_event(__u64 capacity, const void *payload, __u64 len, __u32 flags)
{
    struct msm_event *header = bpf_ringbuf_reserve(&events, sizeof(*header) + capacity, 0);

    if (!header) {
        count(MSM_STAT_DROPS);
        return;
    }
    barrier_var(len);
    if (len > capacity || bpf_probe_read_user(header + 1, len, payload) != 0) {
        bpf_ringbuf_discard(header, BPF_RB_NO_WAKEUP);
        count(MSM_STAT_READ_ERRORS);
        return;
    }
    stamp(header, len, flags);
    bpf_ringbuf_submit(header, BPF_RB_NO_WAKEUP);
}

/* BPF_KPROBE only unpacks pt_regs arguments; libbpf 1.1 has no BPF_UPROBE. */
SEC("uprobe")
int BPF_KPROBE(msm_emit_hit, const void *payload, __u32 len_arg)
{
    __u64 len = len_arg;
    __u32 flags = 0;

    count(MSM_STAT_HITS);
    if (len > MSM_MAX_PAYLOAD) {
        len = MSM_MAX_PAYLOAD;
        flags |= MSM_EVENT_TRUNCATED;
        count(MSM_STAT_TRUNCATED);
    }
    if (len <= MSM_TIMER_PAYLOAD)
        copy_event(MSM_TIMER_PAYLOAD, payload, len, flags);
    else if (len <= MSM_SMALL_PAYLOAD)
        copy_event(MSM_SMALL_PAYLOAD, payload, len, flags);
    else
        copy_event(MSM_MAX_PAYLOAD, payload, len, flags);
    return 0;
}
