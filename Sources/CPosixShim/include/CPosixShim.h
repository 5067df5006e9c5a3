// POSIX helpers that Swift's Glibc module does not expose (they need _GNU_SOURCE).
#pragma once
#include <sys/types.h>

/// The effective uid of the peer of a connected Unix socket (SO_PEERCRED). 0 or -errno.
int msm_peer_uid(int fd, uid_t *uid);

/// POSIX_SPAWN_SETSID (a GNU extension): the spawned child starts a new session.
short msm_posix_spawn_setsid_flag(void);
