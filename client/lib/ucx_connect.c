/* libattnd's UCX transport: the handshake and the endpoint. A gRPC
 * GetEndpoint call returns the server's UCX listener address (a wildcard
 * host is replaced by the host of the gRPC target); the client creates a
 * ucp context (active messages + wakeup), a worker and one endpoint
 * (sockaddr, peer error handling: in UCX 1.13 that means TCP lanes, also
 * on one host), registers the reply handler, and flushes the endpoint so
 * that a dead address fails at connect. Messages up to 256K go eager
 * (UCX_RNDV_THRESH in the environment wins).
 */
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_clock.h"
#include "attnd_ucx_setup.h"
#include "ucx_int.h"

/* ---- connect and destroy ------------------------------------------------------------------ */

/* Ask the server where its UCX listener is; addr gets "host:port". */
static attnd_status get_endpoint(attnd_client *c, const char *target, char *addr, size_t cap,
                                 attnd_error *err)
{
    Attnd__V1__GetEndpointRequest req = ATTND__V1__GET_ENDPOINT_REQUEST__INIT;
    Attnd__V1__GetEndpointResponse *resp = NULL;
    attnd_status st;

    st = attnd__client_unary(c, ATTND__CLIENT_M_GET_ENDPOINT, &req.base,
                             &attnd__v1__get_endpoint_response__descriptor,
                             (ProtobufCMessage **)&resp, err);
    if (st)
        return st;
    if (!resp->ucx_address || !resp->ucx_address[0])
        st = attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                             "opts.transport: UCX asked for, but %s serves no UCX endpoint "
                             "(start it with --ucx-listen)", target);
    else if (resp->ucx_wire_version != ATTND_UCX_WIRE_VERSION)
        st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                             "GetEndpoint.ucx_wire_version: expected %d, got %u",
                             ATTND_UCX_WIRE_VERSION, resp->ucx_wire_version);
    else {
        const char *a = resp->ucx_address, *colon = strrchr(a, ':');
        int wild = colon && ((colon - a == 7 && !strncmp(a, "0.0.0.0", 7)) ||
                             (colon - a == 4 && !strncmp(a, "[::]", 4)) || colon == a);
        const char *tcolon = strrchr(target, ':');
        if (wild && tcolon) /* the host we reached the gRPC port on */
            snprintf(addr, cap, "%.*s%s", (int)(tcolon - target), target, colon);
        else
            snprintf(addr, cap, "%s", a);
        if (!strncmp(addr, "ipv4:", 5))
            memmove(addr, addr + 5, strlen(addr + 5) + 1);
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return st;
}

static int resolve(const char *hostport, struct sockaddr_storage *ss, socklen_t *len_p)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    struct addrinfo hints, *ai = NULL;

    if (!colon)
        return -1;
    size_t hl = (size_t)(colon - hostport);
    if (hl >= 2 && hostport[0] == '[' && hostport[hl - 1] == ']') {
        hostport++;
        hl -= 2;
    }
    if (hl >= sizeof host)
        return -1;
    memcpy(host, hostport, hl);
    host[hl] = '\0';
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0 || !ai)
        return -1;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len_p = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

/* Flush the new endpoint: the connection is then up (or failed). */
static attnd_status flush_ep(attnd_client *c, attnd__client_ucx *u, attnd_error *err)
{
    ucp_request_param_t prm = {.op_attr_mask = 0};
    ucs_status_ptr_t r;
    ucs_status_t st = UCS_OK;
    uint64_t deadline = attnd_clock_ns() + (uint64_t)(c->opts.connect_timeout_ms > 0
                                                  ? c->opts.connect_timeout_ms : 1) * 1000000u;

    pthread_mutex_lock(&u->mu);
    r = ucp_ep_flush_nbx(u->ep, &prm);
    if (UCS_PTR_IS_ERR(r)) {
        st = UCS_PTR_STATUS(r);
    } else if (r) {
        while ((st = ucp_request_check_status(r)) == UCS_INPROGRESS && u->failed == UCS_OK &&
               attnd_clock_ns() < deadline)
            ucp_worker_progress(u->worker);
        if (st == UCS_INPROGRESS) {
            ucp_request_cancel(u->worker, r);
            while (ucp_request_check_status(r) == UCS_INPROGRESS)
                ucp_worker_progress(u->worker);
            st = u->failed != UCS_OK ? u->failed : UCS_ERR_TIMED_OUT;
        }
        ucp_request_free(r);
    }
    if (st == UCS_OK && u->failed != UCS_OK)
        st = u->failed;
    pthread_mutex_unlock(&u->mu);
    if (st != UCS_OK)
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "connect: UCX endpoint %s: %s",
                               u->address, ucs_status_string(st));
    return ATTND_OK;
}

attnd_status attnd__client_ucx_connect(attnd_client *c, const char *target, attnd_error *err)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    attnd__client_ucx *u;
    attnd_status st;
    ucs_status_t us;

    if (!(u = calloc(1, sizeof *u)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "connect: no memory");
    if (pthread_mutex_init(&u->mu, NULL)) {
        free(u);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "connect: no mutex");
    }
    c->ucx = u;
    u->max_message = c->opts.max_message_bytes;
    if ((st = get_endpoint(c, target, u->address, sizeof u->address, err)))
        goto err_free;
    if (resolve(u->address, &ss, &sslen)) {
        st = attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                             "GetEndpoint.ucx_address: cannot resolve \"%s\"", u->address);
        goto err_free;
    }
    if ((us = attnd_ucx_setup(UCS_THREAD_MODE_SERIALIZED, &u->ctx, &u->worker, &u->efd)) !=
        UCS_OK)
        goto err_ucs;
    if ((us = attnd_ucx_on_am(u->worker, ATTND_UCX_AM_REPLY, attnd__client_ucx_on_reply, u)) !=
        UCS_OK)
        goto err_ucs;
    ucp_ep_params_t ep = {
        .field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                      UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER,
        .sockaddr = {.addr = (const struct sockaddr *)&ss, .addrlen = sslen},
        .err_mode = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = attnd__client_ucx_on_ep_error, .arg = u},
    };
    if ((us = ucp_ep_create(u->worker, &ep, &u->ep)) != UCS_OK)
        goto err_ucs;
    if ((st = flush_ep(c, u, err)))
        goto err_free;
    return ATTND_OK;

err_ucs:
    st = attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "connect: UCX to %s: %s", u->address,
                         ucs_status_string(us));
err_free:
    attnd__client_ucx_destroy(c);
    return st;
}

void attnd__client_ucx_destroy(attnd_client *c)
{
    attnd__client_ucx *u = c->ucx;
    if (!u)
        return;
    if (u->ep) {
        ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                   .flags = u->failed != UCS_OK ? UCP_EP_CLOSE_FLAG_FORCE : 0};
        ucs_status_ptr_t r = ucp_ep_close_nbx(u->ep, &prm);
        if (UCS_PTR_IS_PTR(r)) {
            uint64_t deadline = attnd_clock_ns() + 2000000000u; /* a dead peer: do not hang */
            while (ucp_request_check_status(r) == UCS_INPROGRESS && attnd_clock_ns() < deadline)
                ucp_worker_progress(u->worker);
            if (ucp_request_check_status(r) == UCS_INPROGRESS) {
                ucp_request_cancel(u->worker, r);
                while (ucp_request_check_status(r) == UCS_INPROGRESS)
                    ucp_worker_progress(u->worker);
            }
            ucp_request_free(r);
        }
    }
    for (int i = 0; i < u->n_rbufs; i++)
        free(u->rbufs[i]);
    if (u->worker)
        ucp_worker_destroy(u->worker);
    if (u->ctx)
        ucp_cleanup(u->ctx);
    pthread_mutex_destroy(&u->mu);
    free(u);
    c->ucx = NULL;
}
