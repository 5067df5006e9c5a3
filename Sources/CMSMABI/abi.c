// CMSMABI has no code of its own: it exposes bpf/msm_abi.h to Swift.
#include "CMSMABI.h"
