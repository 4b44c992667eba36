/* attnd_ucxw endpoints: connect by address, close, the transports an
 * endpoint uses, and sends / rendezvous receives whose callback runs
 * exactly once (see attnd_ucxw.h).
 *
 * Completion: ucp calls back only for operations that did not finish at
 * once; attnd's owners want one path for both. Every send and receive goes
 * with a small record in UCX's request (ucp_init's request_size: the
 * callback and the caller's pointer), and the immediate outcomes call the
 * same callback before returning.
 *
 * Addresses from peers: UCX 1.13 parses a worker address without knowing
 * its length and aborts on a version it does not know. attnd checks the
 * length and the version byte and hands UCX a copy followed by zeros, so
 * that a garbled address reads zeros rather than whatever lies beyond.
 * A hostile peer that speaks UCX's own wire protocol is beyond this check
 * (UCX does not authenticate peers; see the README's threat notes).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attnd_clock.h"
#include "ucxw_int.h"

/* ---- sends and receives ------------------------------------------------------------- */

static void on_send(void *request, ucs_status_t status, void *user)
{
    attnd_ucxw_send_cb cb = ((attnd__ucxw_req *)request)->send_cb;
    ucp_request_free(request);
    cb(user, status);
}

void attnd_ucxw_am_send(ucp_ep_h ep, unsigned id, const void *hdr, size_t hlen,
                        const void *data, size_t count, ucp_datatype_t dt, uint32_t flags,
                        attnd_ucxw_send_cb cb, void *user, void **req_p)
{
    ucp_request_param_t p = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                        UCP_OP_ATTR_FIELD_DATATYPE | UCP_OP_ATTR_FIELD_FLAGS,
        .cb.send = on_send,
        .user_data = user,
        .datatype = dt,
        .flags = flags,
    };
    if (req_p)
        *req_p = NULL;
    ucs_status_ptr_t r = ucp_am_send_nbx(ep, id, hdr, hlen, data, count, &p);
    if (UCS_PTR_IS_PTR(r)) {
        ((attnd__ucxw_req *)r)->send_cb = cb; /* its callback runs from progress, later */
        if (req_p)
            *req_p = r;
        return;
    }
    cb(user, UCS_PTR_STATUS(r)); /* done at once (UCS_OK), or failed */
}

static void on_recv(void *request, ucs_status_t status, size_t length, void *user)
{
    attnd_ucxw_recv_cb cb = ((attnd__ucxw_req *)request)->recv_cb;
    ucp_request_free(request);
    cb(user, status, length);
}

static size_t dt_bytes(const void *buf, size_t count, ucp_datatype_t dt)
{
    if ((dt & UCP_DATATYPE_CLASS_MASK) != UCP_DATATYPE_IOV)
        return count;
    size_t n = 0;
    for (size_t i = 0; i < count; i++)
        n += ((const ucp_dt_iov_t *)buf)[i].length;
    return n;
}

void attnd_ucxw_am_recv(attnd_ucxw *w, void *desc, void *buf, size_t count, ucp_datatype_t dt,
                        attnd_ucxw_recv_cb cb, void *user, void **req_p)
{
    ucp_request_param_t p = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                        UCP_OP_ATTR_FIELD_DATATYPE,
        .cb.recv_am = on_recv,
        .user_data = user,
        .datatype = dt,
    };
    if (req_p)
        *req_p = NULL;
    ucs_status_ptr_t r = ucp_am_recv_data_nbx(w->cur ? w->cur : w->worker, desc, buf, count, &p);
    if (UCS_PTR_IS_PTR(r)) {
        ((attnd__ucxw_req *)r)->recv_cb = cb;
        if (req_p)
            *req_p = r;
        return;
    }
    cb(user, UCS_PTR_STATUS(r), r == NULL ? dt_bytes(buf, count, dt) : 0);
}

/* ---- endpoints ---------------------------------------------------------------------- */

/* UCX 1.13's address header: the low 4 bits are the version (V1 = 0,
 * V2 = 1); a worker UUID (8 bytes) follows. */
int attnd_ucxw_address_check(const void *addr, size_t len)
{
    if (!addr || len < 10 || len > ATTND_UCXW_ADDR_MAX)
        return -1;
    return (((const unsigned char *)addr)[0] & 0x0f) <= 1 ? 0 : -1;
}

/* Zeros after a peer's address (see the file comment). */
#define ADDR_PAD (64u << 10)

attnd_status attnd_ucxw_connect(attnd_ucxw *w, const void *addr, size_t len,
                                attnd_ucxw_peer_mode mode, ucp_err_handler_cb_t err_cb,
                                void *arg, const char *who, ucp_ep_h *ep_p, attnd_error *err)
{
    return attnd_ucxw_connect_on(w->worker, addr, len, mode, err_cb, arg, who, ep_p, err);
}

attnd_status attnd_ucxw_connect_on(ucp_worker_h worker, const void *addr, size_t len,
                                   attnd_ucxw_peer_mode mode, ucp_err_handler_cb_t err_cb,
                                   void *arg, const char *who, ucp_ep_h *ep_p, attnd_error *err)
{
    ucp_ep_h ep;

    if (attnd_ucxw_address_check(addr, len))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s: not a UCX worker address (%zu bytes)", who, len);
    unsigned char *copy = calloc(1, len + ADDR_PAD);
    if (!copy)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "%s: no memory", who);
    memcpy(copy, addr, len);
    ucp_ep_params_t p = {
        .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .address = (const ucp_address_t *)copy,
        .err_mode = mode == ATTND_UCXW_PEER_WATCHED ? UCP_ERR_HANDLING_MODE_NONE
                                                    : UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = err_cb, .arg = arg},
    };
    ucs_status_t us = ucp_ep_create(worker, &p, &ep);
    free(copy);
    if (us != UCS_OK)
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "%s: UCX endpoint: %s", who,
                               ucs_status_string(us));
    *ep_p = ep;
    return ATTND_OK;
}

void attnd_ucxw_ep_close(attnd_ucxw *w, ucp_ep_h ep, int force)
{
    attnd_ucxw_ep_close_on(w, w->worker, ep, force);
}

void attnd_ucxw_ep_close_on(attnd_ucxw *w, ucp_worker_h worker, ucp_ep_h ep, int force)
{
    ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                             .flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0};
    ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &p);
    if (!UCS_PTR_IS_PTR(r))
        return;
    if (w->n_closing == w->cap_closing) {
        size_t c = w->cap_closing ? 2 * w->cap_closing : 16;
        attnd_ucxw_closing *np = realloc(w->closing, c * sizeof *np);
        if (!np) { /* cannot track it: finish it here */
            while (ucp_request_check_status(r) == UCS_INPROGRESS)
                ucp_worker_progress(worker);
            ucp_request_free(r);
            return;
        }
        w->closing = np;
        w->cap_closing = c;
    }
    w->closing[w->n_closing++] = (attnd_ucxw_closing){.req = r, .worker = worker};
}

void attnd__ucxw_reap_closes(attnd_ucxw *w)
{
    for (size_t i = 0; i < w->n_closing;)
        if (ucp_request_check_status(w->closing[i].req) != UCS_INPROGRESS) {
            ucp_request_free(w->closing[i].req);
            w->closing[i] = w->closing[--w->n_closing];
        } else {
            i++;
        }
}

void attnd_ucxw_reap(attnd_ucxw *w)
{
    attnd__ucxw_reap_closes(w);
    if (w->n_pw)
        attnd__ucxw_reap_workers(w);
}

void attnd_ucxw_ep_close_wait(attnd_ucxw *w, ucp_ep_h ep, int force, int timeout_ms)
{
    ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                             .flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0};
    ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &p);
    if (!UCS_PTR_IS_PTR(r))
        return;
    uint64_t end = attnd_clock_ns() + (uint64_t)timeout_ms * 1000000u;
    while (ucp_request_check_status(r) == UCS_INPROGRESS && attnd_clock_ns() < end)
        ucp_worker_progress(w->worker);
    if (ucp_request_check_status(r) == UCS_INPROGRESS) {
        ucp_request_cancel(w->worker, r);
        while (ucp_request_check_status(r) == UCS_INPROGRESS)
            ucp_worker_progress(w->worker);
    }
    ucp_request_free(r);
}

/* ---- which transports ------------------------------------------------------------------
 * ucp_ep_query has no transport field in UCX 1.13; ucp_ep_print_info lists
 * the lanes, one per line: "lane[0]:  3:sysv/memory.0 md[2] -> ...". The
 * token after "N:" is transport/device.path. */

static void add_transport(char *buf, size_t cap, const char *tok, size_t n)
{
    char one[64];
    size_t len = strlen(buf);

    if (n >= sizeof one)
        n = sizeof one - 1;
    memcpy(one, tok, n);
    one[n] = '\0';
    for (const char *p = buf; (p = strstr(p, one)); p += n) /* already listed */
        if ((p == buf || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return;
    snprintf(buf + len, cap - len, "%s%s", len ? " " : "", one);
}

int attnd_ucxw_ep_transports(ucp_ep_h ep, char *buf, size_t cap)
{
    char *text = NULL, *line, *save = NULL;
    size_t tlen = 0;
    FILE *f = open_memstream(&text, &tlen);

    if (cap)
        buf[0] = '\0';
    if (!f) {
        snprintf(buf, cap, "?");
        return -1;
    }
    ucp_ep_print_info(ep, f);
    fclose(f);
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *p = strstr(line, "lane[");
        if (!p || !(p = strchr(p, ':')))
            continue;
        p++;
        p += strspn(p, " ");
        p += strspn(p, "0123456789");
        if (*p != ':')
            continue;
        p++;
        size_t n = strcspn(p, " \t");
        const char *dot = NULL; /* drop ".path" (the last dot of the token) */
        for (size_t i = 0; i < n; i++)
            if (p[i] == '.')
                dot = p + i;
        if (dot && strchr(p, '/') && dot > strchr(p, '/'))
            n = (size_t)(dot - p);
        if (n && memchr(p, '/', n))
            add_transport(buf, cap, p, n);
    }
    free(text);
    if (!buf[0]) {
        snprintf(buf, cap, "?");
        return -1;
    }
    return 0;
}

int attnd_ucxw_transports_tcp(const char *t)
{
    for (const char *p = t; (p = strstr(p, "tcp/")); p += 4)
        if (p == t || p[-1] == ' ')
            return 1;
    return 0;
}
