// The shared kernel/user-space header, exposed to Swift. The single source of truth is
// bpf/msm_abi.h; this file only includes it.
#include "../../../bpf/msm_abi.h"
