/* GetEndpoint: the handshake of the UCX data path (wire version 2, see
 * proto/attnd_ucx.h). The client sends its UCX worker address and who it
 * is; this rank connects an endpoint to that address (ucx_conn.c) and
 * answers with its own worker address, whether the two share a host (then
 * neither endpoint uses UCX error handling: shared memory + CMA, pidfds
 * for liveness), who it is, and the framing version. A request without an
 * address (an older client) gets the version, so that it fails with a
 * clear FAILED_PRECONDITION. ucx_address is "" when --ucx-listen is off. */
#include <string.h>

#include "attnd_ucx.h"
#include "ucx_server.h"

static void host_from_pb(const Attnd__V1__UcxHost *m, attnd_ucxw_host *h)
{
    memset(h, 0, sizeof *h);
    if (!m)
        return;
    if (m->boot_id)
        snprintf(h->boot_id, sizeof h->boot_id, "%s", m->boot_id);
    h->pid_ns = m->pid_ns;
    h->ipc_ns = m->ipc_ns;
    h->net_ns = m->net_ns;
    h->uid = m->uid;
    h->pid = m->pid;
}

static void host_to_pb(const attnd_ucxw_host *h, Attnd__V1__UcxHost *m)
{
    m->boot_id = (char *)h->boot_id;
    m->pid_ns = h->pid_ns;
    m->ipc_ns = h->ipc_ns;
    m->net_ns = h->net_ns;
    m->uid = h->uid;
    m->pid = h->pid;
    m->shm_ok = attnd_ucxw_shm_allowed();
}

void attnd_srv_get_endpoint_start(attnd_srv_call *c)
{
    attnd_srv *srv = c->srv;
    Attnd__V1__GetEndpointRequest *m;
    attnd_srv_ucx_admitted adm;
    attnd_ucxw_host peer;
    attnd_error err;

    attnd_error_clear(&err);
    m = (Attnd__V1__GetEndpointRequest *)attnd_srv_call_decode(
        c, &attnd__v1__get_endpoint_request__descriptor, &err);
    if (!m) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    Attnd__V1__GetEndpointResponse resp = ATTND__V1__GET_ENDPOINT_RESPONSE__INIT;
    Attnd__V1__UcxHost h = ATTND__V1__UCX_HOST__INIT;
    resp.ucx_address = (char *)attnd_srv_ucx_address(srv);
    resp.ucx_wire_version = ATTND_UCX_WIRE_VERSION;
    if (srv->ucx && m->ucx_worker_address.len) {
        host_from_pb(m->host, &peer);
        if (attnd_srv_ucx_admit(srv, m->ucx_worker_address.data, m->ucx_worker_address.len,
                                &peer, m->host && m->host->shm_ok, &adm, &err)) {
            attnd_srv_call_fail(c, &err);
            return;
        }
        resp.ucx_worker_address.data = (uint8_t *)adm.addr;
        resp.ucx_worker_address.len = adm.addr_len;
        resp.same_host = adm.same_host;
        host_to_pb(&adm.host, &h);
        resp.host = &h;
    }
    attnd_srv_call_finish(c, attnd_srv_pack(&resp.base), ATTND_OK, NULL);
}
