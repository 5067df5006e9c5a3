#define _GNU_SOURCE
#include "CPosixShim.h"

#include <spawn.h>

short msm_posix_spawn_setsid_flag(void)
{
    return POSIX_SPAWN_SETSID;
}
