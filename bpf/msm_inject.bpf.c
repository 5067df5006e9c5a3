// SPDX-License-Identifier: GPL-2.0
/*
 * msm_inject.bpf.c — the two uprobe programs of a live injection (see msm_inject_abi.h).
 *
 * Loaded once per injection, attached to one target process only (per-process uprobes:
 * the kernel writes its breakpoints into that process alone and takes them out again when
 * the injector closes the links or dies). Both programs do nothing for other processes or
 * in other phases: other threads that reach the safe point, and every other signal
 * return in the target, only pay the uprobe trap while the injection runs.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "msm_inject_abi.h"

char LICENSE[] SEC("license") = "GPL"; /* bpf_send_signal_thread is GPL-only */

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(map_flags, BPF_F_MMAPABLE);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct msm_inject_state);
} inject_state SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MSM_INJECT_MAX_EXCLUDED);
    __type(key, __u32);
    __type(value, __u8);
} inject_excluded SEC(".maps");

static __always_inline struct msm_inject_state *state_of_current(__u32 *tid)
{
    __u32 zero = 0;
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    struct msm_inject_state *s = bpf_map_lookup_elem(&inject_state, &zero);

    if (!s || s->tgid != (__u32)(pid_tgid >> 32))
        return 0;
    *tid = (__u32)pid_tgid;
    return s;
}

SEC("uprobe")
int msm_inject_safe_point(struct pt_regs *ctx)
{
    __u32 tid = 0;
    struct msm_inject_state *s = state_of_current(&tid);

    if (!s)
        return 0;
    __sync_fetch_and_add(&s->safe_point_hits, 1);
    if (s->phase != MSM_INJECT_PHASE_ARMED || s->claimed_tid != 0)
        return 0;
    if (bpf_map_lookup_elem(&inject_excluded, &tid))
        return 0;
    if (__sync_val_compare_and_swap(&s->claimed_tid, 0, tid) != 0)
        return 0;
    __sync_fetch_and_add(&s->claims, 1);
    bpf_send_signal_thread(s->signal);
    return 0;
}

SEC("uprobe")
int msm_inject_return(struct pt_regs *ctx)
{
    __u32 tid = 0;
    struct msm_inject_state *s = state_of_current(&tid);

    if (!s || s->phase != MSM_INJECT_PHASE_CALLING || s->claimed_tid != tid
        || PT_REGS_SP(ctx) != s->return_sp)
        return 0;
    s->return_value = PT_REGS_RC(ctx);
    s->phase = MSM_INJECT_PHASE_RETURNED;
    bpf_send_signal_thread(s->signal);
    return 0;
}
