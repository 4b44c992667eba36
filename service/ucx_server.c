/* The UCX Attend endpoint: the thread that drives its ucp worker, the
 * callbacks, and the handling of one request (ucx_setup.c starts and
 * stops it).
 *
 * Shape: one progress thread owns the ucp worker (UCS_THREAD_MODE_SINGLE;
 * nothing else touches it after start), the listener, every client
 * endpoint and the job pool. Ready jobs go to --ucx-exec-threads executor
 * threads (each with its own engine workspace and decode arena), which
 * execute and encode them without touching UCX and hand them back (the
 * done FIFO plus an eventfd that wakes a sleeping progress thread); the
 * progress thread releases the request bytes and sends the reply. With 0
 * executors a job runs inline on the progress thread. q_mu guards the two
 * FIFOs; nothing else is shared.
 *
 * A request's life: the active-message callback (inside
 * ucp_worker_progress) takes a job from the pool and either keeps UCX's
 * eager buffer (returning UCS_INPROGRESS; released after the reply is
 * encoded) or, for a rendezvous message, receives the payload into the
 * job's reused request buffer with ucp_am_recv_data_nbx. Complete jobs go
 * on a FIFO; each runs through attnd_srv_attend_exec_bytes, its reply is
 * encoded into the job's reused reply buffer and sent on the endpoint the
 * request came on (the client sets UCP_AM_SEND_FLAG_REPLY).
 * The job returns to the pool when the send completes. After warm-up the
 * path allocates nothing of ours. Once the server drains
 * (attnd_srv_ucx_refuse) a request that arrives is answered UNAVAILABLE
 * unread; those received before run as usual, counted in `busy` until
 * their reply is sent, which the drain waits for.
 *
 * Progress: busy-poll (ucp_worker_progress, then the FIFO) while there is
 * work and for --ucx-spin-us after the last event, then arm the worker and
 * sleep in poll() on its event fd and a stop eventfd. The spin keeps a
 * decode loop's next request (one layer later, microseconds away) off the
 * wake-up path; the sleep keeps an idle rank off the CPU. Idle spins
 * sched_yield(): on an oversubscribed host a pure spinner can keep the
 * thread it waits for off the core for a whole time slice (milliseconds
 * per round trip were measured that way).
 *
 * A client that disappears: its endpoint's error callback marks the
 * connection failed; the loop closes the endpoint (forced) and drops its
 * pending replies. Other clients are not affected.
 */
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attnd_clock.h"
#include "attnd_log.h"
#include "attend_exec.h"
#include "ucx_int.h"

/* ---- jobs, connections ------------------------------------------------------ */

static void conn_unref(attnd_srv_ucx *u, ucx_conn *c)
{
    if (--c->refs > 0 || !c->closed)
        return;
    for (ucx_conn **pp = &u->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    free(c);
}

static ucx_job *job_get(attnd_srv_ucx *u, ucx_conn *conn)
{
    ucx_job *j = u->free_jobs;
    if (j)
        u->free_jobs = j->next;
    else if (!(j = calloc(1, sizeof *j)))
        return NULL;
    j->u = u;
    j->conn = conn;
    j->held = NULL;
    j->data = NULL;
    j->len = 0;
    j->next = NULL;
    j->refused = 0;
    j->counted = 0;
    conn->refs++;
    return j;
}

void attnd_srv_ucx_job_put(ucx_job *j)
{
    attnd_srv_ucx *u = j->u;
    if (j->held) {
        ucp_am_data_release(u->worker, j->held);
        j->held = NULL;
    }
    if (j->counted) {
        j->counted = 0;
        atomic_fetch_sub(&u->busy, 1);
    }
    conn_unref(u, j->conn);
    j->conn = NULL;
    j->next = u->free_jobs;
    u->free_jobs = j;
}

static void job_ready(attnd_srv_ucx *u, ucx_job *j)
{
    j->next = NULL;
    if (u->ready_tail)
        u->ready_tail->next = j;
    else
        u->ready = j;
    u->ready_tail = j;
}

static ucx_conn *conn_find(attnd_srv_ucx *u, ucp_ep_h ep)
{
    for (ucx_conn *c = u->conns; c; c = c->next)
        if (c->ep == ep && !c->closed)
            return c;
    return NULL;
}

void attnd_srv_ucx_close_ep(attnd_srv_ucx *u, ucx_conn *c)
{
    if (!c->ep) { /* never accepted */
        if (c->request)
            ucp_listener_reject(u->listener, c->request);
        c->request = NULL;
        c->closed = 1;
        c->refs++;
        conn_unref(u, c);
        return;
    }
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                               .flags = UCP_EP_CLOSE_FLAG_FORCE};
    ucs_status_ptr_t r = ucp_ep_close_nbx(c->ep, &prm);
    if (UCS_PTR_IS_PTR(r)) {
        while (ucp_request_check_status(r) == UCS_INPROGRESS)
            ucp_worker_progress(u->worker);
        ucp_request_free(r);
    }
    c->closed = 1;
    c->refs++; /* balanced by the unref below, which frees it when idle */
    conn_unref(u, c);
}

/* ---- UCX callbacks (inside ucp_worker_progress, on the thread) ------------------------- */

static void on_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    ucx_conn *c = arg;
    (void)ep;
    (void)status; /* a client going away is normal: no log */
    c->failed = 1;
}

/* Queue the request: the endpoint is created by the loop, outside
 * ucp_worker_progress. */
void attnd_srv_ucx_on_conn_request(ucp_conn_request_h req, void *arg)
{
    attnd_srv_ucx *u = arg;
    ucx_conn *c = calloc(1, sizeof *c);

    if (!c) {
        ucp_listener_reject(u->listener, req);
        return;
    }
    c->request = req;
    c->next = u->conns;
    u->conns = c;
}

static void accept_conn(attnd_srv_ucx *u, ucx_conn *c)
{
    ucp_conn_request_h req = c->request;
    ucp_ep_params_t p;

    c->request = NULL;
    memset(&p, 0, sizeof p);
    p.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                   UCP_EP_PARAM_FIELD_ERR_HANDLER;
    p.conn_request = req;
    p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    p.err_handler.cb = on_ep_error;
    p.err_handler.arg = c;
    ucs_status_t st = ucp_ep_create(u->worker, &p, &c->ep);
    if (st != UCS_OK) {
        attnd_log_warn("ucx", "cannot accept a client: %s", ucs_status_string(st));
        c->ep = NULL;
        c->closed = 1;
        c->refs++;
        conn_unref(u, c);
    }
}

static void on_req_data(void *request, ucs_status_t status, size_t length, void *user_data)
{
    ucx_job *j = user_data;
    (void)length;
    ucp_request_free(request);
    if (status != UCS_OK) { /* the client went away mid-transfer */
        attnd_srv_ucx_job_put(j);
        return;
    }
    job_ready(j->u, j);
}

ucs_status_t attnd_srv_ucx_on_attend(void *arg, const void *header, size_t header_length,
                                     void *data, size_t length,
                                     const ucp_am_recv_param_t *param)
{
    attnd_srv_ucx *u = arg;
    ucx_conn *conn;
    ucx_job *j;

    if (header_length != sizeof(attnd_ucx_hdr) ||
        !(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ||
        !(conn = conn_find(u, param->reply_ep)) || conn->failed)
        return UCS_OK; /* no way to answer: drop (rendezvous data too) */
    if (!(j = job_get(u, conn)))
        return UCS_OK;
    memcpy(&j->hdr, header, sizeof j->hdr);
    j->t_arrival = attnd_clock_ns();
    j->len = length;
    if (atomic_load(&u->refusing)) {
        j->refused = 1; /* answered UNAVAILABLE by exec_job, unread */
        j->data = NULL;
        job_ready(u, j);
        return UCS_OK;
    }
    j->counted = 1;
    atomic_fetch_add(&u->busy, 1);
    if (length > u->srv->cfg->max_message) {
        j->data = NULL; /* answered RESOURCE_EXHAUSTED by exec_job, unread */
        job_ready(u, j);
        return UCS_OK;
    }
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
        if (attnd_buf_fit(&j->req, length ? length : 1)) {
            attnd_srv_ucx_job_put(j);
            return UCS_OK;
        }
        ucp_request_param_t prm = {
            .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
            .cb.recv_am = on_req_data,
            .user_data = j,
        };
        j->data = j->req.p;
        ucs_status_ptr_t r = ucp_am_recv_data_nbx(u->worker, data, j->req.p, length, &prm);
        if (r == NULL)
            job_ready(u, j);
        else if (UCS_PTR_IS_ERR(r))
            attnd_srv_ucx_job_put(j);
        return UCS_INPROGRESS; /* the descriptor is now the receive's */
    }
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_DATA) {
        j->held = data; /* keep UCX's buffer: no copy */
        j->data = data;
        job_ready(u, j);
        return UCS_INPROGRESS;
    }
    if (attnd_buf_fit(&j->req, length ? length : 1)) {
        attnd_srv_ucx_job_put(j);
        return UCS_OK;
    }
    memcpy(j->req.p, data, length);
    j->data = j->req.p;
    job_ready(u, j);
    return UCS_OK;
}

static void on_reply_sent(void *request, ucs_status_t status, void *user_data)
{
    (void)status; /* failed: the client is gone; its error callback handles it */
    ucp_request_free(request);
    attnd_srv_ucx_job_put(user_data);
}

/* ---- running a request ----------------------------------------------------------------- */

/* Execute j's request and encode its reply (or error message) into j->rep;
 * sets j->st and j->n. Touches no UCX object, so it runs on an executor
 * as well as inline on the progress thread. ws/arena: the caller's. */
static void exec_job(attnd_srv_ucx *u, attnd_engine_ws *ws, attnd_srv_arena *arena, ucx_job *j)
{
    attnd_srv_mshard *mx = attnd_srv_metrics_local(u->srv->metrics);
    attnd_srv_exec_ctx x = {.srv = u->srv, .ws = ws, .arena = arena};
    if (j->hdr.deadline_ms) { /* what is left of the client's deadline */
        int64_t waited_ms = (int64_t)((attnd_clock_ns() - j->t_arrival) / 1000000u);
        int64_t left = (int64_t)j->hdr.deadline_ms - waited_ms;
        x.time_left_ms = left > 0 ? left : 1;
    }
    attnd_srv_attend_result res;
    attnd_error err;
    attnd_status st;
    size_t n = 0;

    attnd_error_clear(&err);
    memset(&j->rhdr, 0, sizeof j->rhdr);
    if (j->refused)
        st = attnd_error_set(&err, ATTND_ERR_UNAVAILABLE,
                             "server is shutting down: send this call to another worker");
    else if (!j->data)
        st = attnd_error_set(&err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "request: received message larger than max (%zu vs. %llu "
                             "bytes of --max-message)", j->len,
                             (unsigned long long)u->srv->cfg->max_message);
    else
        st = attnd_srv_attend_exec_bytes(&x, j->data, j->len, j->t_arrival, &res, &err);
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
static void send_job(attnd_srv_ucx *u, ucx_job *j)
{
    if (j->held) { /* decoded: the request bytes are no longer needed */
        ucp_am_data_release(u->worker, j->held);
        j->held = NULL;
    }
    if (j->conn->failed || !j->conn->ep || j->conn->closed) {
        attnd_srv_ucx_job_put(j);
        return;
    }
    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.send = on_reply_sent,
        .user_data = j,
    };
    ucs_status_ptr_t r = ucp_am_send_nbx(j->conn->ep, ATTND_UCX_AM_REPLY, &j->rhdr,
                                         sizeof j->rhdr, j->rep.p, j->n, &prm);
    if (!UCS_PTR_IS_PTR(r))
        attnd_srv_ucx_job_put(j); /* done at once, or failed (the client is gone) */
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

/* A ready job: run it inline, or hand it to the executors. */
static void run_job(attnd_srv_ucx *u, ucx_job *j)
{
    if (j->conn->failed) {
        attnd_srv_ucx_job_put(j);
        return;
    }
    if (!u->n_exec) {
        exec_job(u, &u->ws, &u->arena, j);
        send_job(u, j);
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
        send_job(u, j);
        n++;
    }
    return n;
}

void *attnd_srv_ucx_exec_thread(void *arg)
{
    ucx_exec *x = arg;
    attnd_srv_ucx *u = x->u;
    uint64_t one = 1;

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
        if (write(u->done_fd, &one, sizeof one) < 0) {
            /* the counter is full: the progress thread is awake anyway */
        }
    }
    pthread_mutex_unlock(&u->q_mu);
    return NULL;
}

/* ---- the thread ------------------------------------------------------------------------- */

/* Accept queued connections and close failed ones. Closing progresses
 * the worker, which may change the list: rescan from the head each time. */
static void tend_conns(attnd_srv_ucx *u)
{
    ucx_conn *c;
    for (;;) {
        for (c = u->conns; c; c = c->next)
            if ((c->request && !c->failed) || (c->failed && !c->closed))
                break;
        if (!c)
            return;
        if (c->request && !c->failed)
            accept_conn(u, c);
        else
            attnd_srv_ucx_close_ep(u, c); /* may free c */
    }
}

void *attnd_srv_ucx_thread(void *arg)
{
    attnd_srv_ucx *u = arg;
    uint64_t spin_ns = (uint64_t)u->srv->cfg->ucx_spin_us * 1000u;
    uint64_t last = attnd_clock_ns();

    while (!atomic_load(&u->stop)) {
        int busy = ucp_worker_progress(u->worker) != 0;
        while (u->ready) {
            ucx_job *j = u->ready;
            u->ready = j->next;
            if (!u->ready)
                u->ready_tail = NULL;
            run_job(u, j);
            busy = 1;
        }
        if (send_done(u))
            busy = 1;
        tend_conns(u);
        uint64_t now = attnd_clock_ns();
        if (busy) {
            last = now;
            continue;
        }
        if (now - last < spin_ns) {
            sched_yield(); /* a shared host: let a runnable thread have the core */
            continue;
        }
        ucs_status_t st = ucp_worker_arm(u->worker);
        if (st == UCS_ERR_BUSY)
            continue;
        struct pollfd fds[3] = {{.fd = u->efd, .events = POLLIN},
                                {.fd = u->stop_fd, .events = POLLIN},
                                {.fd = u->done_fd, .events = POLLIN}};
        if (atomic_load(&u->n_done)) /* finished while we armed: no sleep */
            continue;
        if (st != UCS_OK || poll(fds, u->n_exec ? 3 : 2, -1) < 0)
            fds[0].revents = 0; /* spurious: go round (stop is rechecked) */
        if (u->n_exec && (fds[2].revents & POLLIN)) {
            uint64_t v;
            if (read(u->done_fd, &v, sizeof v) < 0)
                v = 0; /* drained by an earlier read: nothing to do */
        }
        last = attnd_clock_ns();
    }
    return NULL;
}

