/* --baseline under --transport ucx: a bare UCX active-message ping-pong.
 *
 * What it measures: a request of the byte size of one of the run's Attend
 * requests, sent as one active message to an echo process on loopback
 * (attnd-bench --echo-ucx-server, started here), which receives all of it
 * (rendezvous included, as attnd does) and answers with one active
 * message of the Attend reply's byte size; no decoding, no validation, no
 * attention. Endpoints are made the way libattnd and attnd make theirs,
 * through common/attnd_ucxw.h: the same context and worker setup,
 * connection by worker address (the echo publishes its address in a file
 * beside its port file), and on one host no UCX error handling, so shared
 * memory + CMA as attnd's same-host endpoints (ATTND_UCX_SHM=0: peer error
 * handling, TCP, for both). The echo answers on the request's reply
 * endpoint. The load has the decode's shape: one thread per lane, each with
 * its own worker and endpoint, keeping --microbatches requests in flight,
 * closed loop. attnd's overhead over UCX is then the ratio of the Attend
 * call latency to this round trip at the same percentile. Both sides
 * busy-poll, yielding the CPU when idle as attnd and libattnd do (two
 * spinners sharing a core otherwise take turns at the scheduler tick).
 */
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attnd_clock.h"
#include "attnd_ucxw.h"
#include "bench.h"

enum { AM_REQ = 71, AM_REP = 72 };

typedef struct echo_hdr {
    uint64_t id;
    uint64_t reply_bytes;
} echo_hdr;

/* ---- the echo server (a child process) ------------------------------------------ */

typedef struct echo_job {
    struct echo_srv *s;
    ucp_ep_h ep;
    echo_hdr h;
    void *buf; /* rendezvous: the request lands here (kept with the job) */
    size_t cap;
    struct echo_job *next;
} echo_job;

typedef struct echo_srv {
    attnd_ucxw w;
    unsigned char *zeros;
    size_t zeros_cap;
    echo_job *ready; /* requests received whole: answer from the loop */
    echo_job *free_jobs; /* jobs and their buffers, reused: no allocation
                            per round trip after warm-up, as in attnd */
} echo_srv;

static volatile sig_atomic_t echo_stop;

static void on_stop(int sig)
{
    (void)sig;
    echo_stop = 1;
}

static echo_job *job_get(echo_srv *s)
{
    echo_job *j = s->free_jobs;
    if (j)
        s->free_jobs = j->next;
    else if (!(j = calloc(1, sizeof *j)))
        return NULL;
    j->s = s;
    j->next = NULL;
    return j;
}

static void job_put(echo_job *j)
{
    j->next = j->s->free_jobs;
    j->s->free_jobs = j;
}

static void job_ready(echo_srv *s, echo_job *j)
{
    j->next = s->ready;
    s->ready = j;
}

static void on_rndv_done(void *user_data, ucs_status_t status, size_t length)
{
    echo_job *j = user_data;
    (void)length;
    if (status != UCS_OK) {
        job_put(j);
        return;
    }
    job_ready(j->s, j);
}

static ucs_status_t on_req(void *arg, const void *header, size_t header_length, void *data,
                           size_t length, const ucp_am_recv_param_t *param)
{
    echo_srv *s = arg;
    echo_job *j;

    if (header_length != sizeof(echo_hdr) ||
        !(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) || !(j = job_get(s)))
        return UCS_OK;
    memcpy(&j->h, header, sizeof j->h);
    j->ep = param->reply_ep;
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
        if (length > j->cap) {
            void *b = realloc(j->buf, length);
            if (!b) {
                job_put(j);
                return UCS_OK;
            }
            j->buf = b;
            j->cap = length;
        }
        attnd_ucxw_am_recv(&s->w, data, j->buf, length, ucp_dt_make_contig(1), on_rndv_done, j,
                           NULL);
        return UCS_INPROGRESS; /* the descriptor is now the receive's (as in attnd) */
    }
    job_ready(s, j); /* eager: the bytes arrived; nothing to keep */
    return UCS_OK;
}

/* The reply's header lives in its job: freed only when the send is done. */
static void on_sent(void *user_data, ucs_status_t status)
{
    (void)status;
    job_put(user_data);
}

static void echo_answer(echo_srv *s, echo_job *j)
{
    size_t n = j->h.reply_bytes;
    if (n > s->zeros_cap) {
        /* the old buffer may still be in flight: it is kept (a run uses
         * one reply size, so this happens once) */
        unsigned char *z = calloc(1, n);
        if (!z)
            n = 0;
        else {
            s->zeros = z;
            s->zeros_cap = n;
        }
    }
    attnd_ucxw_am_send(j->ep, AM_REP, &j->h, sizeof j->h, s->zeros, n, ucp_dt_make_contig(1), 0,
                       on_sent, j, NULL);
}

/* The echo's worker address lives beside its port file. */
static void addr_path(const char *port_file, char *out, size_t cap)
{
    snprintf(out, cap, "%s.addr", port_file);
}

int attnd_bench_echo_ucx_main(const char *port_file)
{
    attnd_ucxw_config wc = {.thread_mode = UCS_THREAD_MODE_SINGLE, .net_host = "127.0.0.1"};
    char path[PATH_MAX + 16], tmp[PATH_MAX + 24];
    attnd_error err;
    echo_srv s;
    void *addr;
    size_t len;

    memset(&s, 0, sizeof s);
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    if (attnd_ucxw_init(&s.w, &wc, "echo-ucx", &err) ||
        attnd_ucxw_on_am(&s.w, AM_REQ, on_req, &s) != UCS_OK ||
        attnd_ucxw_address(&s.w, &addr, &len, &err)) {
        fprintf(stderr, "attnd-bench echo-ucx: UCX setup failed\n");
        _exit(1);
    }
    /* the address first, then the port file that says we are ready */
    addr_path(port_file, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f || fwrite(addr, 1, len, f) != len || fclose(f) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "attnd-bench echo-ucx: cannot write %s\n", path);
        _exit(1);
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
    f = fopen(tmp, "w");
    if (!f || fprintf(f, "1\n") < 0 || fclose(f) != 0 || rename(tmp, port_file) != 0) {
        fprintf(stderr, "attnd-bench echo-ucx: cannot write %s\n", port_file);
        _exit(1);
    }
    while (!echo_stop) {
        if (!ucp_worker_progress(s.w.worker) && !s.ready)
            sched_yield(); /* as attnd's loops: see common/ucxw_loop.c */
        while (s.ready) {
            echo_job *j = s.ready;
            s.ready = j->next;
            echo_answer(&s, j);
        }
    }
    /* a throwaway helper process: nothing of it outlives it */
    unlink(path);
    _exit(0);
}

/* ---- the ping-pong client ------------------------------------------------------- */

typedef struct ulane ulane;
struct ulane {
    attnd_ucxw w;
    ucp_ep_h ep;
    const unsigned char *req;
    size_t req_bytes, reply_bytes;
    uint32_t micro;
    uint64_t t_rec, t_end;
    uint64_t t0[64];
    int done[64];
    unsigned char *rbuf[64]; /* each in-flight reply's bytes land here */
    struct rctx {
        struct ulane *l;
        uint32_t m;
    } rctx[64];
    int failed;
    attnd_hist h;
    uint64_t errors;
    pthread_t tid;
};

static void on_lane_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    (void)ep;
    (void)status;
    ((ulane *)arg)->failed = 1;
}

static void on_rep_data(void *user_data, ucs_status_t status, size_t length)
{
    struct rctx *x = user_data;
    (void)length;
    if (status == UCS_OK)
        x->l->done[x->m] = 1;
    else
        x->l->failed = 1;
}

static ucs_status_t on_rep(void *arg, const void *header, size_t header_length, void *data,
                           size_t length, const ucp_am_recv_param_t *param)
{
    ulane *l = arg;
    echo_hdr h;
    (void)length;
    if (header_length != sizeof h)
        return UCS_OK;
    memcpy(&h, header, sizeof h);
    if (h.id >= l->micro)
        return UCS_OK;
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
        /* the reply's bytes must arrive, as libattnd's do */
        size_t n = length < l->reply_bytes ? length : l->reply_bytes;
        attnd_ucxw_am_recv(&l->w, data, l->rbuf[h.id], n, ucp_dt_make_contig(1), on_rep_data,
                           &l->rctx[h.id], NULL);
        return UCS_INPROGRESS;
    }
    memcpy(l->rbuf[h.id], data, length < l->reply_bytes ? length : l->reply_bytes);
    l->done[h.id] = 1;
    return UCS_OK;
}

static void lane_cleanup(ulane *l)
{
    if (l->ep)
        attnd_ucxw_ep_close_wait(&l->w, l->ep, 1, 2000);
    attnd_ucxw_cleanup(&l->w);
    for (uint32_t m = 0; m < 64; m++) {
        free(l->rbuf[m]);
        l->rbuf[m] = NULL;
    }
    l->ep = NULL;
}

/* Connect to the echo at worker address (addr, len). */
static int lane_connect(ulane *l, const void *addr, size_t len)
{
    attnd_ucxw_config wc = {.thread_mode = UCS_THREAD_MODE_SINGLE, .net_host = "127.0.0.1"};
    attnd_error err;

    for (uint32_t m = 0; m < l->micro; m++) {
        l->rctx[m].l = l;
        l->rctx[m].m = m;
        if (!(l->rbuf[m] = malloc(l->reply_bytes ? l->reply_bytes : 1)))
            return -1;
    }
    if (attnd_ucxw_init(&l->w, &wc, "--baseline", &err) ||
        attnd_ucxw_on_am(&l->w, AM_REP, on_rep, l) != UCS_OK ||
        attnd_ucxw_connect(&l->w, addr, len,
                           attnd_ucxw_shm_allowed() ? ATTND_UCXW_PEER_WATCHED
                                                    : ATTND_UCXW_PEER_CHECKED,
                           on_lane_ep_error, l, "--baseline", &l->ep, &err))
        return -1;
    return 0;
}

/* Send request m; 0, or -1 when it could not be sent. */
static int lane_send(ulane *l, uint32_t m)
{
    echo_hdr h = {.id = m, .reply_bytes = l->reply_bytes};
    ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                             .flags = UCP_AM_SEND_FLAG_REPLY};
    l->done[m] = 0;
    l->t0[m] = attnd_clock_ns();
    ucs_status_ptr_t r = ucp_am_send_nbx(l->ep, AM_REQ, &h, sizeof h, l->req, l->req_bytes, &p);
    if (UCS_PTR_IS_ERR(r))
        return -1;
    if (UCS_PTR_IS_PTR(r)) { /* the request buffer is reused: wait for it */
        while (ucp_request_check_status(r) == UCS_INPROGRESS)
            ucp_worker_progress(l->w.worker);
        ucp_request_free(r);
    }
    return 0;
}

static void *ulane_main(void *arg)
{
    ulane *l = arg;
    uint32_t live = 0;
    int in_flight[64] = {0};

    for (uint32_t m = 0; m < l->micro; m++)
        if (lane_send(l, m) == 0) {
            in_flight[m] = 1;
            live++;
        } else {
            l->errors++;
        }
    while (live && !l->failed) {
        if (!ucp_worker_progress(l->w.worker))
            sched_yield(); /* as libattnd's wait */
        for (uint32_t m = 0; m < l->micro; m++) {
            if (!in_flight[m] || !l->done[m])
                continue;
            uint64_t now = attnd_clock_ns();
            if (l->t0[m] >= l->t_rec)
                attnd_hist_record(&l->h, now - l->t0[m]);
            in_flight[m] = 0;
            live--;
            if (now < l->t_end) {
                if (lane_send(l, m) == 0) {
                    in_flight[m] = 1;
                    live++;
                } else {
                    l->errors++;
                }
            }
        }
    }
    if (l->failed)
        l->errors += live;
    return NULL;
}

int attnd_bench_baseline_ucx(const attnd_bench_opts *o, attnd_bench_result *res,
                             size_t req_bytes, size_t reply_bytes, double seconds)
{
    char self[PATH_MAX];
    attnd_bench_child ch;
    uint32_t n_lanes = res->lanes, started = 0;
    ulane *lanes = NULL;
    unsigned char *req = NULL;
    int rc = -1;

    (void)o;
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    if (k <= 0) {
        fprintf(stderr, "attnd-bench: --baseline: cannot find myself\n");
        return -1;
    }
    self[k] = '\0';
    if (res->microbatches > 64) {
        fprintf(stderr, "attnd-bench: --baseline: at most 64 micro-batches\n");
        return -1;
    }
    const char *argv[] = {self, "--echo-ucx-server", NULL};
    if (attnd_bench_child_start(&ch, argv, 10000))
        return -1;
    char apath[PATH_MAX];
    unsigned char addr[ATTND_UCXW_ADDR_MAX];
    size_t alen = 0;
    snprintf(apath, sizeof apath, "%s/port.addr", ch.dir);
    FILE *af = fopen(apath, "rb");
    if (af) {
        alen = fread(addr, 1, sizeof addr, af);
        fclose(af);
    }
    req = calloc(1, req_bytes ? req_bytes : 1);
    lanes = calloc(n_lanes, sizeof *lanes);
    if (!req || !lanes || attnd_hist_init(&res->base_call))
        goto out;
    uint64_t t0 = attnd_clock_ns();
    uint64_t warm = (uint64_t)(seconds * 0.2e9);
    for (uint32_t i = 0; i < n_lanes; i++) {
        ulane *l = &lanes[i];
        l->req = req;
        l->req_bytes = req_bytes;
        l->reply_bytes = reply_bytes;
        l->micro = res->microbatches;
        l->t_rec = t0 + warm;
        l->t_end = t0 + (uint64_t)(seconds * 1e9);
        if (attnd_hist_init(&l->h))
            break;
        if (lane_connect(l, addr, alen) ||
            pthread_create(&l->tid, NULL, ulane_main, l)) {
            fprintf(stderr, "attnd-bench: --baseline: cannot connect to the UCX echo\n");
            lane_cleanup(l);
            attnd_hist_cleanup(&l->h);
            break;
        }
        started++;
    }
    for (uint32_t i = 0; i < started; i++) {
        pthread_join(lanes[i].tid, NULL);
        attnd_hist_merge(&res->base_call, &lanes[i].h);
        attnd_hist_cleanup(&lanes[i].h);
        if (lanes[i].errors)
            fprintf(stderr, "attnd-bench: --baseline: %llu UCX round trips failed\n",
                    (unsigned long long)lanes[i].errors);
        lane_cleanup(&lanes[i]);
    }
    res->base_s = (double)(attnd_clock_ns() - (t0 + warm)) * 1e-9;
    res->base_calls = res->base_call.count;
    res->base_req_bytes = req_bytes;
    res->base_reply_bytes = reply_bytes;
    res->baseline_ran = started > 0 && res->base_calls > 0;
    rc = res->baseline_ran ? 0 : -1;
out:
    free(lanes);
    free(req);
    attnd_bench_child_stop(&ch);
    return rc;
}
