/* The UCX Attend endpoint's requests: the active-message callback, the
 * job pool, execution (inline or on executor threads) and the replies
 * (ucx_conn.c holds the connections, ucx_setup.c starts and stops).
 *
 * Shape: one progress thread owns the ucp worker (UCS_THREAD_MODE_SINGLE;
 * common/ucxw_loop.c's loop: busy-poll while there is work and for
 * --ucx-spin-us after, then sleep on the worker's event fd), every client
 * endpoint and the job pool. Ready jobs go to --ucx-exec-threads executor
 * threads (each with its own engine workspace and decode arena), which
 * execute and encode them without touching UCX and hand them back (the
 * done FIFO, then attnd_ucxw_wake); the progress thread releases the
 * request bytes and sends the reply. With 0 executors a job runs inline on
 * the progress thread. q_mu guards the two FIFOs; nothing else is shared.
 *
 * A request's life: the active-message callback (inside
 * ucp_worker_progress) checks the connection's limits, takes a job from
 * the pool and either keeps UCX's eager buffer (returning UCS_INPROGRESS;
 * released after the reply is encoded) or, for a rendezvous message,
 * receives the payload into the job's reused request buffer. Complete jobs
 * go on a FIFO; each runs through attnd_srv_attend_exec_bytes, its reply
 * is encoded into the job's reused reply buffer and sent on the endpoint
 * the request came on (the client sets UCP_AM_SEND_FLAG_REPLY; the
 * endpoint is the one this rank made at GetEndpoint). The job returns to
 * the pool when the send completes. After warm-up the path allocates
 * nothing of ours.
 *
 * Draining (attnd_srv_ucx_refuse): a request that arrives once the server
 * drains is answered UNAVAILABLE unread; those received before run as
 * usual, counted in `busy` until their reply is sent, which the drain
 * waits for.
 *
 * Limits per connection (issue 10): a request beyond --ucx-conn-queue
 * requests waiting, or beyond --ucx-conn-bytes of request bytes held
 * before they run, is answered RESOURCE_EXHAUSTED naming the flag without
 * its payload being read (a rendezvous payload is never fetched). A client
 * that keeps sending while it does not take its replies finds, past the
 * queue plus REFUSALS_IN_FLIGHT outstanding answers, its requests dropped
 * unanswered (its calls end at their deadline): answers are memory too.
 */
#include <stdlib.h>
#include <string.h>

#include "attnd_clock.h"
#include "attnd_log.h"
#include "attend_exec.h"
#include "ucx_int.h"

#define REFUSALS_IN_FLIGHT 64

/* ---- jobs -------------------------------------------------------------------------- */

static ucx_job *job_get(attnd_srv_ucx *u, ucx_conn *conn)
{
    ucx_job *j = u->free_jobs;
    if (j) {
        u->free_jobs = j->next;
    } else {
        if (!(j = calloc(1, sizeof *j)))
            return NULL;
        j->all_next = u->all_jobs;
        u->all_jobs = j;
    }
    j->u = u;
    j->conn = conn;
    j->held = NULL;
    j->data = NULL;
    j->len = 0;
    j->admitted = 0;
    j->refusal = NULL;
    j->refused = 0;
    j->counted = 0;
    j->next = NULL;
    conn->refs++;
    conn->n_out++;
    return j;
}

void attnd_srv_ucx_job_put(ucx_job *j)
{
    attnd_srv_ucx *u = j->u;
    if (j->held) {
        ucp_am_data_release(j->conn->worker, j->held);
        j->held = NULL;
        attnd_srv_ucx_conn_release(u, j->conn);
    }
    if (j->counted) {
        j->counted = 0;
        atomic_fetch_sub(&u->busy, 1);
    }
    attnd_srv_ucx_conn_answered(u, j->conn, j);
    j->conn = NULL;
    j->next = u->free_jobs;
    u->free_jobs = j;
}

static void fifo_push(ucx_fifo *f, ucx_job *j)
{
    j->next = NULL;
    if (f->tail)
        f->tail->next = j;
    else
        f->head = j;
    f->tail = j;
}

static ucx_job *fifo_pop(ucx_fifo *f)
{
    ucx_job *j = f->head;
    if (j) {
        f->head = j->next;
        if (!f->head)
            f->tail = NULL;
        j->next = NULL;
    }
    return j;
}

/* ---- the active-message callback (inside ucp_worker_progress) ------------------------- */

static void on_req_data(void *user, ucs_status_t status, size_t length)
{
    ucx_job *j = user;
    (void)length;
    if (status != UCS_OK) { /* the client went away mid-transfer */
        attnd_srv_ucx_job_put(j);
        return;
    }
    fifo_push(&j->u->ready, j);
}

ucs_status_t attnd_srv_ucx_on_attend(void *arg, const void *header, size_t header_length,
                                     void *data, size_t length,
                                     const ucp_am_recv_param_t *param)
{
    attnd_srv_ucx *u = arg;
    const attnd_srv_config *cfg = u->srv->cfg;
    ucx_conn *conn;
    ucx_job *j;

    /* returning UCS_OK without receiving drops a rendezvous payload unread */
    if (header_length != sizeof(attnd_ucx_hdr) ||
        !(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ||
        !(conn = attnd_srv_ucx_conn_of(u, param->reply_ep)) || conn->failed)
        return UCS_OK; /* no way to answer: drop */
    if (conn->n_out >= cfg->ucx_conn_queue + REFUSALS_IN_FLIGHT) {
        conn->refused++; /* it does not take its answers: see the file comment */
        return UCS_OK;
    }
    if (!(j = job_get(u, conn)))
        return UCS_OK;
    memcpy(&j->hdr, header, sizeof j->hdr);
    j->t_arrival = attnd_clock_ns();
    j->len = length;
    if (atomic_load(&u->refusing)) {
        j->refused = 1; /* answered UNAVAILABLE, unread */
        fifo_push(&u->ready, j);
        return UCS_OK;
    }
    j->counted = 1;
    atomic_fetch_add(&u->busy, 1);
    if (length > cfg->max_message ||
        attnd_srv_ucx_conn_admit(u, conn, length, &j->refusal)) {
        fifo_push(&u->ready, j); /* answered RESOURCE_EXHAUSTED, unread */
        return UCS_OK;
    }
    j->admitted = 1;
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
        if (attnd_buf_fit(&j->req, length ? length : 1)) {
            attnd_srv_ucx_job_put(j);
            return UCS_OK;
        }
        j->data = j->req.p;
        attnd_ucxw_am_recv(&u->w, data, j->req.p, length, ucp_dt_make_contig(1), on_req_data,
                           j, NULL);
        return UCS_INPROGRESS; /* the descriptor is now the receive's */
    }
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_DATA) {
        j->held = data; /* keep UCX's buffer: no copy */
        attnd_srv_ucx_conn_hold(conn);
        j->data = data;
        fifo_push(&u->ready, j);
        return UCS_INPROGRESS;
    }
    if (attnd_buf_fit(&j->req, length ? length : 1)) {
        attnd_srv_ucx_job_put(j);
        return UCS_OK;
    }
    memcpy(j->req.p, data, length);
    j->data = j->req.p;
    fifo_push(&u->ready, j);
    return UCS_OK;
}

/* ATTND_UCX_AM_HELLO: nothing to do (its sender waits for the send). */
ucs_status_t attnd_srv_ucx_on_hello(void *arg, const void *header, size_t header_length,
                                    void *data, size_t length, const ucp_am_recv_param_t *param)
{
    (void)arg, (void)header, (void)header_length, (void)data, (void)length, (void)param;
    return UCS_OK;
}

/* ATTND_UCX_AM_BYE: the client closes; so do we (ucx_conn.c's tend). */
ucs_status_t attnd_srv_ucx_on_bye(void *arg, const void *header, size_t header_length,
                                  void *data, size_t length, const ucp_am_recv_param_t *param)
{
    attnd_srv_ucx *u = arg;
    ucx_conn *c;
    (void)header, (void)header_length, (void)data, (void)length;
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) &&
        (c = attnd_srv_ucx_conn_of(u, param->reply_ep)))
        c->failed = 1;
    return UCS_OK;
}

static void on_reply_sent(void *user, ucs_status_t status)
{
    (void)status; /* failed: the client is gone; its connection handles it */
    attnd_srv_ucx_job_put(user);
}

/* ---- running a request ----------------------------------------------------------------- */

/* The message of a request answered without being read. */
static void refusal_msg(attnd_srv_ucx *u, const ucx_job *j, attnd_error *err)
{
    const attnd_srv_config *cfg = u->srv->cfg;
    if (!j->refusal)
        attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                        "request: received message larger than max (%zu vs. %llu bytes of "
                        "--max-message)", j->len, (unsigned long long)cfg->max_message);
    else if (strcmp(j->refusal, "--ucx-conn-queue") == 0)
        attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                        "request: this UCX connection already has %d requests waiting "
                        "(--ucx-conn-queue %d)", cfg->ucx_conn_queue, cfg->ucx_conn_queue);
    else
        attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                        "request: %zu more bytes would exceed the request bytes this UCX "
                        "connection may hold before they run (--ucx-conn-bytes %llu)",
                        j->len, (unsigned long long)cfg->ucx_conn_bytes);
}

/* Execute j's request and encode its reply (or error message) into j->rep;
 * sets j->st and j->n. Touches no UCX object and no connection, so it
 * runs on an executor as well as on the progress thread. ws/arena: the
 * caller's. */
static void exec_job(attnd_srv_ucx *u, attnd_engine_ws *ws, attnd_srv_arena *arena, ucx_job *j)
{
    attnd_srv_mshard *mx = attnd_srv_metrics_local(u->srv->metrics);
    attnd_srv_exec_ctx x = {.srv = u->srv, .ws = ws, .arena = arena};
    int expired = 0;
    if (j->hdr.deadline_ms) { /* what is left of the client's deadline */
        int64_t waited_ms = (int64_t)((attnd_clock_ns() - j->t_arrival) / 1000000u);
        int64_t left = (int64_t)j->hdr.deadline_ms - waited_ms;
        x.time_left_ms = left > 0 ? left : 1;
        expired = left <= 0; /* it waited past it: not run (the client gave up) */
    }
    attnd_srv_attend_result res;
    attnd_error err;
    attnd_status st;
    size_t n = 0;

    attnd_error_clear(&err);
    memset(&j->rhdr, 0, sizeof j->rhdr);
    if (j->refused) {
        st = attnd_error_set(&err, ATTND_ERR_UNAVAILABLE,
                             "server is shutting down: send this call to another worker");
    } else if (expired) {
        st = attnd_error_set(&err, ATTND_ERR_DEADLINE_EXCEEDED,
                             "deadline passed before the call ran; nothing of it was applied");
    } else if (!j->data) {
        refusal_msg(u, j, &err);
        st = err.code;
    } else {
        st = attnd_srv_attend_exec_bytes(&x, j->data, j->len, j->t_arrival, &res, &err);
    }
    if (st == ATTND_OK) {
        uint64_t t_enc = attnd_clock_ns();
        n = attnd_srv_attend_reply_size(&res.reply);
        if (attnd_buf_fit(&j->rep, n ? n : 1))
            st = attnd_error_set(&err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                 "reply: no memory for %zu bytes", n);
        else
            attnd_srv_attend_reply_write(&res.reply, j->rep.p);
        j->rhdr.queue_ns = res.t.t_queue_ns + res.t.t_decode_ns;
        j->rhdr.validate_ns = res.t.t_validate_ns;
        j->rhdr.kernel_ns = res.t.t_kernel_ns;
        j->rhdr.fanout_ns = res.t.t_fanout_ns;
        j->rhdr.encode_ns = attnd_clock_ns() - t_enc;
        res.t.t_encode_ns = j->rhdr.encode_ns;
        if (st == ATTND_OK)
            attnd_srv_attend_times_record(mx, &res.t);
    }
    if (st != ATTND_OK) {
        if (st != ATTND_ERR_CANCELLED)
            atomic_fetch_add(&u->srv->errors, 1);
        if (!err.msg[0])
            snprintf(err.msg, sizeof err.msg, "%s", attnd_status_string(st));
        attnd_log_req(ATTND_LOG_DEBUG, "ucx", j->hdr.id, "Attend: %s: %s",
                      attnd_status_string(st), err.msg);
        n = strlen(err.msg);
        if (attnd_buf_fit(&j->rep, n + 1))
            n = 0; /* the status alone goes back */
        else
            memcpy(j->rep.p, err.msg, n);
    }
    j->rhdr.h.id = j->hdr.id;
    j->rhdr.h.status = st;
    j->st = st;
    j->n = n;
    attnd_srv_mx_request(mx, ATTND_SRV_MX_UCX_ATTEND, st, attnd_clock_ns() - j->t_arrival);
    if (mx) {
        attnd_srv_mx_add(&mx->rx_bytes[ATTND_SRV_MX_UCX], j->len);
        attnd_srv_mx_add(&mx->tx_bytes[ATTND_SRV_MX_UCX], n);
    }
}

/* On the progress thread: release the request bytes UCX lent us and send
 * the executed job's reply on the endpoint the request came on. */
static void send_job(ucx_job *j)
{
    if (j->held) { /* decoded: the request bytes are no longer needed */
        ucp_am_data_release(j->conn->worker, j->held);
        j->held = NULL;
        attnd_srv_ucx_conn_release(j->u, j->conn);
    }
    attnd_srv_ucx_conn_ran(j->conn, j);
    if (j->conn->failed || j->conn->closed) {
        attnd_srv_ucx_job_put(j);
        return;
    }
    attnd_ucxw_am_send(j->conn->ep, ATTND_UCX_AM_REPLY, &j->rhdr, sizeof j->rhdr, j->rep.p,
                       j->n, ucp_dt_make_contig(1), 0, on_reply_sent, j, NULL);
}

/* A ready job: run it inline (refusals always: they are cheap and must not
 * queue), or hand it to the executors. */
static void run_job(attnd_srv_ucx *u, ucx_job *j)
{
    if (j->conn->failed) {
        attnd_srv_ucx_job_put(j);
        return;
    }
    if (!u->n_exec || !j->data || j->refused) {
        exec_job(u, &u->ws, &u->arena, j);
        send_job(j);
        return;
    }
    pthread_mutex_lock(&u->q_mu);
    fifo_push(&u->queued, j);
    pthread_cond_signal(&u->q_cv);
    pthread_mutex_unlock(&u->q_mu);
}

/* Send every job the executors finished. Returns how many. */
static int send_done(attnd_srv_ucx *u)
{
    ucx_fifo got;
    ucx_job *j;
    int n = 0;

    if (!atomic_load(&u->n_done))
        return 0;
    pthread_mutex_lock(&u->q_mu);
    got = u->done;
    u->done.head = u->done.tail = NULL;
    atomic_store(&u->n_done, 0);
    pthread_mutex_unlock(&u->q_mu);
    while ((j = fifo_pop(&got))) {
        send_job(j);
        n++;
    }
    return n;
}

int attnd_srv_ucx_jobs(attnd_srv_ucx *u)
{
    int busy = 0;
    ucx_job *j;

    while ((j = fifo_pop(&u->ready))) {
        run_job(u, j);
        busy = 1;
    }
    if (send_done(u))
        busy = 1;
    return busy;
}

void *attnd_srv_ucx_exec_thread(void *arg)
{
    ucx_exec *x = arg;
    attnd_srv_ucx *u = x->u;

    pthread_mutex_lock(&u->q_mu);
    for (;;) {
        while (!u->queued.head && !atomic_load(&u->exec_stop))
            pthread_cond_wait(&u->q_cv, &u->q_mu);
        if (atomic_load(&u->exec_stop))
            break;
        ucx_job *j = fifo_pop(&u->queued);
        pthread_mutex_unlock(&u->q_mu);
        exec_job(u, &x->ws, &x->arena, j);
        pthread_mutex_lock(&u->q_mu);
        fifo_push(&u->done, j);
        atomic_fetch_add(&u->n_done, 1);
        attnd_ucxw_wake(&u->w); /* a sleeping progress thread sends it */
    }
    pthread_mutex_unlock(&u->q_mu);
    return NULL;
}
