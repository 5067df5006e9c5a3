/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * msm_abi.h — every structure that crosses a boundary in ms-service-metric.
 *
 * Three parties share this header:
 *   - the probe provider's native marker library (provider/native/msm_probe.c),
 *     which builds payloads inside the target process;
 *   - the BPF program (bpf/msm.bpf.c), which copies a payload into the ring
 *     buffer behind a kernel-stamped header;
 *   - the agent (Swift, via the CMSMABI module), which decodes both.
 *
 * Data path: provider calls msm_emit(payload, len) -> entry uprobe on msm_emit
 * -> struct msm_event { header stamped by the kernel, payload copied verbatim }
 * -> BPF ring buffer -> agent.
 *
 * All integers are little-endian host order (x86-64/arm64). Floating-point
 * values travel as IEEE-754 binary64 bit patterns in a __u64 so that the BPF
 * side never declares a floating-point type.
 */
#ifndef MSM_ABI_H
#define MSM_ABI_H

#include <linux/types.h> /* __u8 .. __u64, for the kernel and user space alike */

#define MSM_ABI_VERSION 1

/* Names of the native symbols the agent attaches to / reads. */
#define MSM_MARKER_SYMBOL "msm_emit"
#define MSM_SEMAPHORE_SYMBOL "msm_semaphore"
/* Never called: a uprobe here carries the semaphore's ref_ctr, attached after the
 * marker's uprobe has its program, so the semaphore rises only once events arrive. */
#define MSM_ARM_SYMBOL "msm_arm"

/* The provider names its poll thread so (prctl PR_SET_NAME, at most 15 bytes); the agent
 * looks for it in /proc/PID/task/TID/comm to tell a live provider from a retired one. */
#define MSM_PROVIDER_THREAD_NAME "msm-provider"

/* Largest provider payload the kernel copies. Longer payloads are cut and the
 * event is flagged truncated (the agent drops it and counts it). */
#define MSM_MAX_PAYLOAD 2048

/* Ring-buffer record classes by payload size: a timer sample (40 bytes: header + one
 * value) fills a 64-byte record exactly; samples with up to 13 values take 256 bytes;
 * anything larger (JSON messages) MSM_MAX_PAYLOAD. */
#define MSM_TIMER_PAYLOAD 40
#define MSM_SMALL_PAYLOAD 232

/* ---------------------------------------------------------------- kernel -> agent */

/* Written by the BPF program in front of every payload. */
struct msm_event {
    __u64 ktime_ns;  /* bpf_ktime_get_ns() at the marker hit (CLOCK_MONOTONIC) */
    __u32 pid;       /* thread-group id in the initial pid namespace */
    __u32 tid;       /* thread id in the initial pid namespace */
    __u32 len;       /* payload bytes that follow this header */
    __u32 flags;     /* MSM_EVENT_TRUNCATED, ... */
    /* __u8 payload[len] follows */
};

#define MSM_EVENT_TRUNCATED 0x1u

/* Per-CPU counters kept by the BPF program (index into the stats array map). */
enum msm_stat {
    MSM_STAT_HITS = 0,        /* marker hits seen by the kernel */
    MSM_STAT_DROPS = 1,       /* ring buffer full: event lost, target did not wait */
    MSM_STAT_TRUNCATED = 2,   /* payload longer than MSM_MAX_PAYLOAD */
    MSM_STAT_READ_ERRORS = 3, /* bpf_probe_read_user failed (bad pointer) */
    MSM_STAT_COUNT = 4,
};

/* ---------------------------------------------------------------- provider -> agent */

enum msm_kind {
    MSM_KIND_SAMPLE = 1, /* struct msm_sample: one finished call of a probed function */
    MSM_KIND_JSON = 2,   /* UTF-8 JSON object after the header: metadata, see below */
};

/* First bytes of every payload. */
struct msm_payload_header {
    __u16 kind;     /* enum msm_kind */
    __u16 count;    /* SAMPLE: number of struct msm_value that follow; JSON: 0 */
    __u32 probe_id; /* SAMPLE: probe id from the control file; JSON: 0 */
};

/* What the agent does with one value of a sample. */
enum msm_op {
    MSM_OP_OBSERVE_DURATION = 1, /* histogram observe (ktime_ns - start_ns) / 1e9; value unused */
    MSM_OP_OBSERVE = 2,          /* histogram observe value */
    MSM_OP_INC = 3,              /* counter += value */
    MSM_OP_SET = 4,              /* gauge = value (per process) */
};

struct msm_value {
    __u32 series_id;  /* per-process series id announced by a "series" JSON message */
    __u32 op;         /* enum msm_op */
    __u64 value_bits; /* IEEE-754 binary64 bit pattern */
};

/* MSM_KIND_SAMPLE payload. The provider sends at most MSM_MAX_VALUES values
 * per sample; more values go into further samples with start_ns = 0 and no
 * duration op. */
#define MSM_MAX_VALUES 64
struct msm_sample {
    struct msm_payload_header h;
    __u32 status;   /* 0 returned, 1 raised an exception */
    __u32 reserved;
    __u64 start_ns; /* CLOCK_MONOTONIC at function entry, read by the provider */
    /* struct msm_value values[h.count] follows */
};

/*
 * MSM_KIND_JSON payload: header {kind=2, count=0, probe_id=0} then one UTF-8
 * JSON object (no NUL). Message types ("type" field):
 *   hello   {pid, python, implementation, executable, argv, title,
 *            vllm_version (string or null), provider_version, abi}
 *   series  {id, metric, labels: {name: value}}         before first use of id
 *   probe   {probe, state, detail}                      state: active |
 *            not_found | version_excluded | not_present | error |
 *            builtin_handler_unavailable
 *   expr_error {probe, metric, count, message}           cumulative count
 *   ack     {generation, enabled, instrumented}          control file applied
 *   bye     {reason}                                     provider restored all
 */

_Static_assert(MSM_TIMER_PAYLOAD == sizeof(struct msm_sample) + sizeof(struct msm_value),
               "a timer sample must fill the smallest ring-buffer record exactly");
_Static_assert(sizeof(struct msm_event) + MSM_TIMER_PAYLOAD == 64, "64-byte timer records");

#endif /* MSM_ABI_H */
