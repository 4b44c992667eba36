/* The UCX Attend endpoint of one attnd rank (ucx_server.c, rpc_endpoint.c).
 *
 * Beside its gRPC port a rank may serve Attend over UCX active messages
 * (--ucx-listen): the same encoded AttendRequest / AttendResponse, framed
 * as proto/attnd_ucx.h says. Clients learn the address with the gRPC
 * GetEndpoint call and connect a ucp endpoint to it (sockaddr connection
 * establishment). Control calls stay on gRPC.
 *
 * Names: attnd_srv_ucx_* (service room).
 */
#ifndef ATTND_SRV_UCX_SERVER_H
#define ATTND_SRV_UCX_SERVER_H

#include "srv.h"

typedef struct attnd_srv_ucx attnd_srv_ucx;

/* When srv->cfg->ucx_listen is set, create the UCX context, worker and
 * listener and start the progress thread; srv->ucx then owns them (freed
 * by attnd_srv_ucx_stop). A no-op when UCX is off. UNAVAILABLE naming
 * --ucx-listen when the address cannot be bound. */
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
/* "host:port" of the listener as clients should dial it (the host as
 * given to --ucx-listen / --listen, the bound port); "" when off. */
const char *attnd_srv_ucx_address(const attnd_srv *srv);

/* GetEndpoint (rpc_endpoint.c). */
void attnd_srv_get_endpoint_start(attnd_srv_call *c);

#endif /* ATTND_SRV_UCX_SERVER_H */
