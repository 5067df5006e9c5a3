/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * msm_inject_abi.h — what the live injector (Sources/CInjector) and its BPF programs
 * (bpf/msm_inject.bpf.c) share.
 *
 * A ptrace injection needs a thread stopped where running Python code is safe, and it
 * needs to learn when the code it made the thread call has returned. Both used to be
 * int3 bytes written into the target's text, which a tracer that dies (SIGKILL, OOM)
 * leaves behind: the next thread to run them dies of SIGTRAP. Here both are uprobes owned
 * by the injecting process: the kernel removes them when their file descriptors close,
 * however the agent ends. A hit by the thread we want sends that thread a signal whose
 * default action is to ignore it; while the agent traces the thread, the signal is a
 * ptrace stop the agent takes; if the agent is gone, the signal is ignored.
 *
 *   safe point  uprobe on PyEval_SaveThread (the thread holds the GIL and is outside the
 *               allocator): the first hit of a thread of `tgid` while `phase` is ARMED
 *               claims that thread (compare-and-swap of claimed_tid) and signals it.
 *   return      uprobe on the C library's signal-return trampoline (__restore_rt, "mov
 *               $15,%rax; syscall"), where every call made by the injector returns: a
 *               hit by the claimed thread with the stack pointer the injector expects,
 *               while `phase` is CALLING, records rax (the call's result), sets phase
 *               RETURNED and signals the thread.
 *
 * The state is one element of a BPF_F_MMAPABLE array: the injector reads and writes it
 * through a shared mapping, the programs through bpf_map_lookup_elem.
 */
#ifndef MSM_INJECT_ABI_H
#define MSM_INJECT_ABI_H

#include <linux/types.h>

enum msm_inject_phase {
    MSM_INJECT_PHASE_IDLE = 0,     /* nothing is signalled */
    MSM_INJECT_PHASE_ARMED = 1,    /* the first safe-point hit (claimed_tid 0) is claimed */
    MSM_INJECT_PHASE_CALLING = 2,  /* the claimed thread runs a call; its return is signalled */
    MSM_INJECT_PHASE_RETURNED = 3, /* set by the return program; return_value is valid */
};

/* Threads that the safe-point program never claims (they block the stop signal, so a
 * claim would never become a stop); a hash map tid -> 1, filled by the injector. */
#define MSM_INJECT_MAX_EXCLUDED 4096

struct msm_inject_state {
    __u32 tgid;             /* the target process (thread-group id, initial pid namespace) */
    __u32 phase;            /* enum msm_inject_phase */
    __u32 claimed_tid;      /* the thread the injection uses; 0 while none */
    __u32 signal;           /* the stop signal (default action: ignore; not caught by the target) */
    __u64 return_sp;        /* CALLING: rsp at the return trampoline for our call */
    __u64 return_value;     /* RETURNED: rax there */
    __u64 safe_point_hits;  /* safe-point hits by threads of tgid (statistics) */
    __u64 claims;           /* claims made (statistics) */
};

_Static_assert(sizeof(struct msm_inject_state) == 48, "msm_inject_state layout is shared");

#endif /* MSM_INJECT_ABI_H */
