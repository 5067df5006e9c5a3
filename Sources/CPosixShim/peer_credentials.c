#define _GNU_SOURCE
#include "CPosixShim.h"

#include <errno.h>
#include <sys/socket.h>

int msm_peer_uid(int fd, uid_t *uid)
{
    struct ucred credentials;
    socklen_t length = sizeof(credentials);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0)
        return -errno;
    *uid = credentials.uid;
    return 0;
}
