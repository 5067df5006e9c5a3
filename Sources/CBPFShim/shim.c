#include "CBPFShim.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>

struct bpf_link *msm_attach_uprobe(struct bpf_program *prog, pid_t pid, const char *binary_path,
                                   size_t func_offset, size_t ref_ctr_offset)
{
    LIBBPF_OPTS(bpf_uprobe_opts, opts, .ref_ctr_offset = ref_ctr_offset, .retprobe = false);
    struct bpf_link *link = bpf_program__attach_uprobe_opts(prog, pid, binary_path, func_offset, &opts);
    if (!link && errno == 0)
        errno = EINVAL;
    return link;
}

static int warn_only(enum libbpf_print_level level, const char *format, va_list args)
{
    if (level == LIBBPF_DEBUG || level == LIBBPF_INFO)
        return 0;
    return vfprintf(stderr, format, args);
}

void msm_libbpf_quiet_logging(void)
{
    libbpf_set_print(warn_only);
}

int msm_sum_percpu_counters(int map_fd, uint64_t *out, uint32_t count)
{
    int cpus = libbpf_num_possible_cpus();
    if (cpus <= 0)
        return cpus;
    uint64_t *values = calloc((size_t)cpus, sizeof(uint64_t));
    if (!values)
        return -ENOMEM;
    for (uint32_t key = 0; key < count; key++) {
        out[key] = 0;
        if (bpf_map_lookup_elem(map_fd, &key, values) != 0) {
            int err = -errno;
            free(values);
            return err;
        }
        for (int cpu = 0; cpu < cpus; cpu++)
            out[key] += values[cpu];
    }
    free(values);
    return 0;
}
