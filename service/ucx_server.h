/* The UCX Attend endpoint of one attnd rank (ucx_server.c, ucx_conn.c,
 * ucx_setup.c, rpc_endpoint.c).
 *
 * Beside its gRPC port a rank may serve Attend over UCX active messages
 * (--ucx-listen): the same encoded AttendRequest / AttendResponse, framed
 * as proto/attnd_ucx.h says. A client's gRPC GetEndpoint call carries its
 * UCX worker address; the rank connects an endpoint to it and answers with
 * its own address, to which the client connects (by address: attnd opens
 * no UCX listener). Control calls stay on gRPC.
 *
 * Names: attnd_srv_ucx_* (service room).
 */
#ifndef ATTND_SRV_UCX_SERVER_H
#define ATTND_SRV_UCX_SERVER_H

#include "attnd_ucxw.h"
#include "srv.h"

typedef struct attnd_srv_ucx attnd_srv_ucx;

/* When srv->cfg->ucx_listen is set, create the UCX context and worker and
 * start the progress thread; srv->ucx then owns them (freed by
 * attnd_srv_ucx_stop). A no-op when UCX is off. INVALID_ARGUMENT or
 * UNAVAILABLE naming --ucx-listen when it cannot be set up. */
attnd_status attnd_srv_ucx_start(attnd_srv *srv, attnd_error *err);
/* Stop the thread, close every client endpoint and free srv->ucx (NULL
 * after). Requests still queued are dropped (their clients see the
 * endpoint close): the drain (drain.c) waits for them first, within its
 * grace. Safe when never started. */
void attnd_srv_ucx_stop(attnd_srv *srv);
/* From now on requests get UNAVAILABLE ("server is shutting down");
 * those received before still run. A no-op when UCX is off. */
void attnd_srv_ucx_refuse(attnd_srv *srv);
/* Requests received and not refused whose reply is not sent yet (0 when
 * UCX is off): what a drain waits for. */
int attnd_srv_ucx_busy(const attnd_srv *srv);
/* GetEndpoint's ucx_address: "" when off, else where UCX's network
 * transports are offered ("devices lo"). */
const char *attnd_srv_ucx_address(const attnd_srv *srv);

/* What GetEndpoint answers a client that sent its worker address. */
typedef struct attnd_srv_ucx_admitted {
    const void *addr;        /* the worker address the client connects to:
                                the rank's (lives with srv->ucx), or its
                                connection's own (in own_addr) */
    unsigned char own_addr[ATTND_UCXW_ADDR_MAX];
    size_t addr_len;
    int same_host;           /* both ends go without UCX error handling */
    attnd_ucxw_host host;    /* the rank */
} attnd_srv_ucx_admitted;

/* Connect an endpoint to a client's worker address (addr, len; the
 * client is `peer`, which may use shared memory when peer_shm_ok) on the
 * progress thread, waiting for it. INVALID_ARGUMENT naming
 * GetEndpointRequest.ucx_worker_address for an address that is not one;
 * UNAVAILABLE when UCX is off or stopping. */
attnd_status attnd_srv_ucx_admit(attnd_srv *srv, const void *addr, size_t len,
                                 const attnd_ucxw_host *peer, int peer_shm_ok,
                                 attnd_srv_ucx_admitted *out, attnd_error *err);

/* One UCX endpoint as GetStats shows it. */
typedef struct attnd_srv_ucx_ep_info {
    char peer[48];           /* "client 3 (pid 1234)" */
    char transports[64];     /* "sysv/memory cma/memory" */
    int same_host;
} attnd_srv_ucx_ep_info;

/* Up to cap client endpoints into out; returns how many there are. */
size_t attnd_srv_ucx_endpoints(attnd_srv *srv, attnd_srv_ucx_ep_info *out, size_t cap);

/* GetEndpoint (rpc_endpoint.c). */
void attnd_srv_get_endpoint_start(attnd_srv_call *c);

#endif /* ATTND_SRV_UCX_SERVER_H */
