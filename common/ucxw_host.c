/* attnd_ucxw host identity and pidfds: whether a peer runs on this host in
 * the namespaces that shared memory and CMA need, and a way to learn that
 * it died without UCX's peer error handling (see attnd_ucxw.h).
 *
 * Same host = the same boot id (/proc/sys/kernel/random/boot_id), the same
 * pid namespace (CMA addresses a process by pid; a pidfd names it), the
 * same IPC namespace (System V shared memory) and the same network
 * namespace (processes in different ones are deployed as separate hosts,
 * and a network partition must cut them off as it would), under one uid
 * (CMA needs ptrace access). A peer's claim is only as good as the channel it came
 * on; the owner also opens a pidfd of the claimed pid, which fails for a
 * pid that does not exist here.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/stat.h>
#include <sys/syscall.h>

#include "attnd_ucxw.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

static uint64_t ns_inode(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_ino : 0;
}

void attnd_ucxw_host_self(attnd_ucxw_host *h)
{
    memset(h, 0, sizeof *h);
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (!fgets(h->boot_id, sizeof h->boot_id, f))
            h->boot_id[0] = '\0';
        h->boot_id[strcspn(h->boot_id, "\r\n")] = '\0';
        fclose(f);
    }
    h->pid_ns = ns_inode("/proc/self/ns/pid");
    h->ipc_ns = ns_inode("/proc/self/ns/ipc");
    h->net_ns = ns_inode("/proc/self/ns/net");
    h->uid = (uint32_t)geteuid();
    h->pid = (int32_t)getpid();
}

int attnd_ucxw_host_same(const attnd_ucxw_host *a, const attnd_ucxw_host *b)
{
    return a->boot_id[0] && strncmp(a->boot_id, b->boot_id, sizeof a->boot_id) == 0 &&
           a->pid_ns && a->pid_ns == b->pid_ns && a->ipc_ns && a->ipc_ns == b->ipc_ns &&
           a->net_ns && a->net_ns == b->net_ns &&
           a->uid == b->uid && a->pid > 0 && b->pid > 0;
}

int attnd_ucxw_pidfd(pid_t pid)
{
    if (pid <= 0)
        return -1;
    long fd = syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -1 : (int)fd;
}

int attnd_ucxw_pidfd_exited(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR));
}

int attnd_ucxw_shm_allowed(void)
{
    static int cached = -1;
    const char *env = getenv("ATTND_UCX_SHM");

    if (env && strcmp(env, "0") == 0)
        return 0;
    if (cached < 0) {
        int fd = attnd_ucxw_pidfd(getpid());
        cached = fd >= 0;
        if (fd >= 0)
            close(fd);
    }
    return cached;
}
