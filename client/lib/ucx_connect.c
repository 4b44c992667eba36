/* libattnd's UCX transport: the handshake and the endpoint. The client
 * makes a ucp context and worker (common/attnd_ucxw.h; UCX's network
 * transport restricted to the interface that reaches the gRPC target),
 * registers the reply handler, and sends its worker address and who it is
 * in a gRPC GetEndpoint call (wire version 2). The server connects an
 * endpoint to that address and answers with its own address and whether
 * the two share a host; the client connects to the server's address with
 * the same choice (one host: no UCX error handling, so that UCX uses
 * shared memory and CMA, and the server's process watched through a
 * pidfd; otherwise UCX peer error handling), then sends a HELLO and waits
 * for it to complete, so that a dead address fails at connect and later
 * requests never wait for the connection to resolve. On destroy it says
 * BYE (the server closes its side) before closing. Messages up to 256K go
 * eager.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attnd_clock.h"
#include "ucx_int.h"

/* ---- the handshake ------------------------------------------------------------------- */

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

/* GetEndpoint with our worker address; connect to the server's. */
static attnd_status handshake(attnd_client *c, attnd__client_ucx *u, const char *target,
                              attnd_error *err)
{
    Attnd__V1__GetEndpointRequest req = ATTND__V1__GET_ENDPOINT_REQUEST__INIT;
    Attnd__V1__GetEndpointResponse *resp = NULL;
    Attnd__V1__UcxHost h = ATTND__V1__UCX_HOST__INIT;
    attnd_ucxw_host self;
    void *addr = NULL;
    size_t len = 0;
    attnd_status st;

    if ((st = attnd_ucxw_address(&u->w, &addr, &len, err)))
        return st;
    attnd_ucxw_host_self(&self);
    host_to_pb(&self, &h);
    req.ucx_worker_address.data = addr;
    req.ucx_worker_address.len = len;
    req.host = &h;
    st = attnd__client_unary(c, ATTND__CLIENT_M_GET_ENDPOINT, &req.base,
                             &attnd__v1__get_endpoint_response__descriptor,
                             (ProtobufCMessage **)&resp, err);
    free(addr);
    if (st)
        return st;
    if (!resp->ucx_address || !resp->ucx_address[0]) {
        st = attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                             "opts.transport: UCX asked for, but %s serves no UCX endpoint "
                             "(start it with --ucx-listen)", target);
    } else if (resp->ucx_wire_version != ATTND_UCX_WIRE_VERSION) {
        st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                             "GetEndpoint.ucx_wire_version: expected %d, got %u",
                             ATTND_UCX_WIRE_VERSION, resp->ucx_wire_version);
    } else if (resp->same_host &&
               (!resp->host || (u->server_pidfd = attnd_ucxw_pidfd(resp->host->pid)) < 0)) {
        st = attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                             "GetEndpoint.host.pid: the server says it shares this host, but "
                             "its process cannot be watched here");
    } else {
        u->same_host = resp->same_host;
        st = attnd_ucxw_connect(&u->w, resp->ucx_worker_address.data,
                                resp->ucx_worker_address.len,
                                u->same_host ? ATTND_UCXW_PEER_WATCHED : ATTND_UCXW_PEER_CHECKED,
                                attnd__client_ucx_on_ep_error, u,
                                "GetEndpoint.ucx_worker_address", &u->ep, err);
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return st;
}

static int flag_set(void *arg)
{
    return *(const int *)arg;
}

static void on_hello_sent(void *user, ucs_status_t status)
{
    attnd__client_ucx *u = user;
    u->hello_st = status;
    u->hello_done = 1;
}

/* Send ATTND_UCX_AM_HELLO and wait for its completion: the connection is
 * then up, with both ends known to each other (or it failed). */
static attnd_status hello(attnd_client *c, attnd__client_ucx *u, attnd_error *err)
{
    static const attnd_ucx_hdr h = {0, 0, 0};
    uint64_t deadline = attnd_clock_ns() + (uint64_t)(c->opts.connect_timeout_ms > 0
                                                  ? c->opts.connect_timeout_ms : 1) * 1000000u;
    ucs_status_t st;

    attnd_ucxw_lock(&u->w);
    attnd_ucxw_am_send(u->ep, ATTND_UCX_AM_HELLO, &h, sizeof h, NULL, 0, ucp_dt_make_contig(1),
                       UCP_AM_SEND_FLAG_REPLY, on_hello_sent, u, NULL);
    attnd_ucxw_unlock(&u->w);
    int k = attnd_ucxw_wait(&u->w, flag_set, &u->hello_done, deadline, 0, u->server_pidfd);
    attnd_ucxw_lock(&u->w);
    st = !u->hello_done ? (k == 1 ? UCS_ERR_CONNECTION_RESET : UCS_ERR_TIMED_OUT)
         : u->hello_st != UCS_OK ? u->hello_st : u->failed;
    if (st == UCS_OK)
        attnd_ucxw_ep_transports(u->ep, u->transports, sizeof u->transports);
    attnd_ucxw_unlock(&u->w);
    if (st != UCS_OK)
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "connect: UCX endpoint to %s: %s",
                               u->address, ucs_status_string(st));
    return ATTND_OK;
}

/* The host part of a gRPC target ("ipv4:h:p", "dns:///h:p", "[v6]:p"),
 * for choosing UCX's interface; "" when there is none to take. */
static void target_host(const char *target, char *host, size_t cap)
{
    const char *t = target, *colon;
    if (!strncmp(t, "ipv4:", 5) || !strncmp(t, "ipv6:", 5))
        t += 5;
    else if (!strncmp(t, "dns:///", 7))
        t += 7;
    host[0] = '\0';
    if ((colon = strrchr(t, ':')) && (size_t)(colon - t) < cap) {
        memcpy(host, t, (size_t)(colon - t));
        host[colon - t] = '\0';
    }
}

attnd_status attnd__client_ucx_connect(attnd_client *c, const char *target, attnd_error *err)
{
    char host[256], dev[64];
    attnd__client_ucx *u;
    attnd_status st;
    ucs_status_t us;

    if (!(u = calloc(1, sizeof *u)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "connect: no memory");
    u->server_pidfd = -1;
    c->ucx = u;
    u->max_message = c->opts.max_message_bytes;
    snprintf(u->address, sizeof u->address, "%s", target);
    target_host(target, host, sizeof host);
    attnd_ucxw_config wc = {
        .thread_mode = UCS_THREAD_MODE_SERIALIZED,
        /* a target that does not resolve here (a gRPC name): every interface */
        .net_host = attnd_ucxw_net_device(host, dev, sizeof dev) == 0 ? host : NULL,
    };
    if ((st = attnd_ucxw_init(&u->w, &wc, "connect", err)))
        goto err_free;
    if ((us = attnd_ucxw_on_am(&u->w, ATTND_UCX_AM_REPLY, attnd__client_ucx_on_reply, u)) !=
        UCS_OK) {
        st = attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "connect: UCX to %s: %s", u->address,
                             ucs_status_string(us));
        goto err_free;
    }
    if ((st = handshake(c, u, target, err)) || (st = hello(c, u, err)))
        goto err_free;
    return ATTND_OK;

err_free:
    attnd__client_ucx_destroy(c);
    return st;
}

static void on_bye_sent(void *user, ucs_status_t status)
{
    (void)status;
    *(int *)user = 1;
}

/* Tell the server we close (ATTND_UCX_AM_BYE), waiting up to a second
 * (a send still queued then is dropped by the forced close after it). */
static void say_bye(attnd__client_ucx *u)
{
    static const attnd_ucx_hdr bye = {0, 0, 0};

    attnd_ucxw_lock(&u->w);
    attnd_ucxw_am_send(u->ep, ATTND_UCX_AM_BYE, &bye, sizeof bye, NULL, 0,
                       ucp_dt_make_contig(1), UCP_AM_SEND_FLAG_REPLY, on_bye_sent, &u->bye_done,
                       NULL);
    attnd_ucxw_unlock(&u->w);
    (void)attnd_ucxw_wait(&u->w, flag_set, &u->bye_done, attnd_clock_ns() + 1000000000u, 0,
                          u->server_pidfd);
}

void attnd__client_ucx_destroy(attnd_client *c)
{
    attnd__client_ucx *u = c->ucx;
    if (!u)
        return;
    if (u->ep && u->failed == UCS_OK && u->hello_done)
        say_bye(u);
    if (u->ep && !u->ep_closed) /* a dead or watched peer: do not wait on it */
        attnd_ucxw_ep_close_wait(&u->w, u->ep, u->failed != UCS_OK || u->same_host, 2000);
    for (int i = 0; i < u->n_rbufs; i++)
        free(u->rbufs[i]);
    attnd_ucxw_cleanup(&u->w);
    if (u->server_pidfd >= 0)
        close(u->server_pidfd);
    free(u);
    c->ucx = NULL;
}

attnd_status attnd_client_transport_info(attnd_client *c, char *buf, size_t cap)
{
    if (!c || !buf || !cap)
        return ATTND_ERR_INVALID_ARGUMENT;
    if (!c->ucx) {
        snprintf(buf, cap, "grpc");
        return ATTND_OK;
    }
    attnd_ucxw_lock(&c->ucx->w);
    snprintf(buf, cap, "ucx %s%s", c->ucx->transports,
             c->ucx->same_host ? " (same host, no UCX error handling)" : "");
    attnd_ucxw_unlock(&c->ucx->w);
    return ATTND_OK;
}
