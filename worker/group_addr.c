/* Group addresses: "host:port" entries, their resolution, and the
 * address files of --group-dir (a rank listening on port 0 publishes its
 * bound address as <dir>/rank-<r>, written atomically; a peer listed with
 * port 0 is looked up there on every connection attempt, so a rank that
 * restarts on a new port is found again). */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "group_int.h"

/* Split "host:port". 0 or -1. */
int attnd__gaddr_split(const char *a, char *host, size_t hn, int *port)
{
    const char *colon = strrchr(a, ':');
    char *end;
    if (!colon || (size_t)(colon - a) >= hn)
        return -1;
    memcpy(host, a, (size_t)(colon - a));
    host[colon - a] = '\0';
    long p = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || p < 0 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}

int attnd__gaddr_resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host, ps, &hints, &res) != 0 || !res)
        return -1;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* The address to reach peer r at now, or -1 (not known yet). */
int attnd__gaddr_peer(attnd_group *g, int32_t r, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[ATTND_GROUP_ADDR_MAX], buf[ATTND_GROUP_ADDR_MAX + 8];
    int port;

    if (attnd__gaddr_split(g->cfg.addrs[r], host, sizeof host, &port))
        return -1;
    if (port == 0) {
        char path[PATH_MAX + 32];
        FILE *f;
        if (!g->cfg.addr_dir[0])
            return -1;
        snprintf(path, sizeof path, "%s/rank-%d", g->cfg.addr_dir, r);
        if (!(f = fopen(path, "r")))
            return -1;
        int ok = fgets(buf, sizeof buf, f) != NULL;
        fclose(f);
        buf[strcspn(buf, "\r\n")] = '\0';
        if (!ok || attnd__gaddr_split(buf, host, sizeof host, &port) || port == 0)
            return -1;
    }
    return attnd__gaddr_resolve(host, port, ss, len);
}

int attnd__gaddr_publish(attnd_group *g)
{
    char path[PATH_MAX + 32], tmp[PATH_MAX + 40], host[ATTND_GROUP_ADDR_MAX];
    int port;
    FILE *f;

    if (!g->cfg.addr_dir[0])
        return 0;
    if (attnd__gaddr_split(g->cfg.addrs[g->me], host, sizeof host, &port))
        return -1;
    snprintf(path, sizeof path, "%s/rank-%d", g->cfg.addr_dir, g->me);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (!(f = fopen(tmp, "w")))
        return -1;
    fprintf(f, "%s:%d\n", host, g->port);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

