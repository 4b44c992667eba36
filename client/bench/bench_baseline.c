/* --baseline: what the transport alone costs, measured in the same run.
 *
 * What it measures: a bare gRPC C-core unary call whose request has the
 * byte size of one of the run's Attend requests (queries + new KV + ids)
 * and whose reply has the byte size of its output, between a client built
 * like libattnd (one channel per connection, the same channel arguments,
 * one pluck queue per call, a fresh request slice per call) and an echo
 * process on loopback (attnd-bench --echo-server, started here: one
 * completion queue thread per CPU as attnd has, no decoding, no
 * validation, no attention: it reads the reply size from the request's
 * first 8 bytes and sends that many zero bytes). The load has the decode's
 * shape: one thread per lane, each keeping --microbatches calls in flight
 * in ping-pong order, closed loop. attnd's overhead is then the ratio of
 * the Attend call latency to this call latency at the same percentile.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "attnd_clock.h"
#include "bench.h"

#define ECHO_METHOD "/attnd.bench.Echo/Echo"

/* ---- the echo server (a child process) ------------------------------------------ */

typedef struct echo_call {
    int state; /* 0 requested, 1 receiving, 2 replying */
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    grpc_byte_buffer *recv, *send;
    int cancelled;
} echo_call;

typedef struct echo_thread {
    grpc_server *srv;
    grpc_completion_queue *cq;
    pthread_t tid;
} echo_thread;

static void echo_request(echo_thread *t)
{
    echo_call *c = calloc(1, sizeof *c);
    if (!c)
        return;
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    if (grpc_server_request_call(t->srv, &c->call, &c->details, &c->md, t->cq, t->cq, c) !=
        GRPC_CALL_OK) {
        grpc_call_details_destroy(&c->details);
        grpc_metadata_array_destroy(&c->md);
        free(c);
    }
}

static void echo_free(echo_call *c)
{
    if (c->call)
        grpc_call_unref(c->call);
    if (c->recv)
        grpc_byte_buffer_destroy(c->recv);
    if (c->send)
        grpc_byte_buffer_destroy(c->send);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    free(c);
}

/* The reply size: the request's first 8 bytes, little-endian. */
static size_t reply_size(grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader rd;
    grpc_slice s;
    uint64_t n = 0;
    size_t have = 0;
    if (!bb || !grpc_byte_buffer_reader_init(&rd, bb))
        return 0;
    while (have < 8 && grpc_byte_buffer_reader_next(&rd, &s)) {
        const uint8_t *p = GRPC_SLICE_START_PTR(s);
        for (size_t i = 0; i < GRPC_SLICE_LENGTH(s) && have < 8; i++, have++)
            n |= (uint64_t)p[i] << (8 * have);
        grpc_slice_unref(s);
    }
    grpc_byte_buffer_reader_destroy(&rd);
    return n > ((uint64_t)1 << 30) ? 0 : (size_t)n;
}

static void *echo_thread_main(void *arg)
{
    echo_thread *t = arg;
    for (int i = 0; i < 8; i++)
        echo_request(t);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(t->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            return NULL;
        echo_call *c = ev.tag;
        grpc_op ops[3];
        memset(ops, 0, sizeof ops);
        if (!ev.success) {
            echo_free(c);
            continue;
        }
        if (c->state == 0) {
            echo_request(t);
            c->state = 1;
            ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
            ops[1].op = GRPC_OP_RECV_MESSAGE;
            ops[1].data.recv_message.recv_message = &c->recv;
            if (grpc_call_start_batch(c->call, ops, 2, c, NULL) != GRPC_CALL_OK)
                echo_free(c);
        } else if (c->state == 1) {
            grpc_slice s = grpc_slice_malloc(reply_size(c->recv));
            memset(GRPC_SLICE_START_PTR(s), 0, GRPC_SLICE_LENGTH(s));
            c->send = grpc_raw_byte_buffer_create(&s, 1);
            grpc_slice_unref(s);
            c->state = 2;
            ops[0].op = GRPC_OP_SEND_MESSAGE;
            ops[0].data.send_message.send_message = c->send;
            ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
            ops[1].data.send_status_from_server.status = GRPC_STATUS_OK;
            ops[2].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
            ops[2].data.recv_close_on_server.cancelled = &c->cancelled;
            if (grpc_call_start_batch(c->call, ops, 3, c, NULL) != GRPC_CALL_OK)
                echo_free(c);
        } else {
            echo_free(c);
        }
    }
}

int attnd_bench_echo_main(const char *port_file)
{
    sigset_t stop;
    grpc_arg args[2];
    int sig, n = (int)sysconf(_SC_NPROCESSORS_ONLN);

    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    if (n < 1 || n > 64)
        n = 2;
    grpc_init();
    memset(args, 0, sizeof args);
    args[0].type = args[1].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[1].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[0].value.integer = args[1].value.integer = -1;
    grpc_channel_args chargs = {2, args};
    grpc_server *srv = grpc_server_create(&chargs, NULL);
    echo_thread th[64];
    for (int i = 0; i < n; i++) {
        th[i].srv = srv;
        th[i].cq = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(srv, th[i].cq, NULL);
    }
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(srv, "127.0.0.1:0", creds);
    grpc_server_credentials_release(creds);
    if (port <= 0) {
        fprintf(stderr, "attnd-bench echo: cannot bind 127.0.0.1:0\n");
        _exit(1);
    }
    grpc_server_start(srv);
    for (int i = 0; i < n; i++)
        pthread_create(&th[i].tid, NULL, echo_thread_main, &th[i]);
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%d\n", port) < 0 || fclose(f) != 0 || rename(tmp, port_file) != 0) {
        fprintf(stderr, "attnd-bench echo: cannot write %s\n", port_file);
        _exit(1);
    }
    while (sigwait(&stop, &sig) != 0)
        ;
    /* a throwaway helper process: nothing of it outlives it */
    _exit(0);
}

/* ---- the ping-pong client ------------------------------------------------------- */

typedef struct base_call {
    grpc_completion_queue *cq;
    grpc_call *call;
    grpc_byte_buffer *send, *recv;
    grpc_metadata_array md_i, md_t;
    grpc_status_code status;
    grpc_slice details;
    uint64_t t0;
} base_call;

typedef struct base_lane {
    grpc_channel *ch;
    const unsigned char *req;
    size_t req_bytes;
    uint32_t micro;
    uint64_t t_rec, t_end; /* record from t_rec, stop sending at t_end */
    attnd_hist h;
    uint64_t errors;
    pthread_t tid;
} base_lane;

static int base_start(base_lane *l, base_call *c)
{
    grpc_op ops[6];
    memset(c, 0, sizeof *c);
    grpc_metadata_array_init(&c->md_i);
    grpc_metadata_array_init(&c->md_t);
    c->details = grpc_empty_slice();
    c->cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_slice s = grpc_slice_malloc(l->req_bytes);
    memcpy(GRPC_SLICE_START_PTR(s), l->req, l->req_bytes);
    c->send = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    c->t0 = attnd_clock_ns();
    c->call = grpc_channel_create_call(l->ch, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq,
                                       grpc_slice_from_static_string(ECHO_METHOD), NULL,
                                       gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                                    gpr_time_from_millis(30000, GPR_TIMESPAN)),
                                       NULL);
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = c->send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &c->md_i;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &c->recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &c->md_t;
    ops[5].data.recv_status_on_client.status = &c->status;
    ops[5].data.recv_status_on_client.status_details = &c->details;
    return c->call && grpc_call_start_batch(c->call, ops, 6, c, NULL) == GRPC_CALL_OK ? 0 : -1;
}

/* Free what c holds (no batch in flight). */
static void base_free(base_call *c)
{
    if (c->call)
        grpc_call_unref(c->call);
    if (c->cq) {
        grpc_completion_queue_shutdown(c->cq);
        grpc_completion_queue_destroy(c->cq);
    }
    if (c->send)
        grpc_byte_buffer_destroy(c->send);
    if (c->recv)
        grpc_byte_buffer_destroy(c->recv);
    grpc_slice_unref(c->details);
    grpc_metadata_array_destroy(&c->md_i);
    grpc_metadata_array_destroy(&c->md_t);
    memset(c, 0, sizeof *c);
}

/* Wait for a started c and free it; 0 when it succeeded with a reply. */
static int base_finish(base_call *c)
{
    grpc_event ev = grpc_completion_queue_pluck(c->cq, c, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    int ok = ev.type == GRPC_OP_COMPLETE && ev.success && c->status == GRPC_STATUS_OK && c->recv;
    base_free(c);
    return ok ? 0 : -1;
}

/* Start call m, or count the failure; 1 when it is in flight. */
static int base_restart(base_lane *l, base_call *c)
{
    if (base_start(l, c) == 0)
        return 1;
    base_free(c);
    l->errors++;
    return 0;
}

static void *base_lane_main(void *arg)
{
    base_lane *l = arg;
    base_call calls[64];
    int live[64] = {0};
    uint32_t n_live = 0;

    for (uint32_t m = 0; m < l->micro; m++)
        n_live += (uint32_t)(live[m] = base_restart(l, &calls[m]));
    while (n_live) {
        for (uint32_t m = 0; m < l->micro; m++) {
            if (!live[m])
                continue;
            uint64_t t0 = calls[m].t0;
            int bad = base_finish(&calls[m]);
            uint64_t now = attnd_clock_ns();
            live[m] = 0;
            n_live--;
            if (bad)
                l->errors++;
            else if (t0 >= l->t_rec)
                attnd_hist_record(&l->h, now - t0);
            if (now < l->t_end && !bad)
                n_live += (uint32_t)(live[m] = base_restart(l, &calls[m]));
        }
    }
    return NULL;
}

static grpc_channel *base_channel(const char *target)
{
    grpc_arg args[4];
    memset(args, 0, sizeof args);
    const char *keys[4] = {GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
                           GRPC_ARG_ENABLE_RETRIES, GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL};
    int vals[4] = {-1, -1, 0, 1};
    for (int i = 0; i < 4; i++) {
        args[i].type = GRPC_ARG_INTEGER;
        args[i].key = (char *)keys[i];
        args[i].value.integer = vals[i];
    }
    grpc_channel_args chargs = {4, args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(target, creds, &chargs);
    grpc_channel_credentials_release(creds);
    return ch;
}

int attnd_bench_baseline(const attnd_bench_opts *o, attnd_bench_result *res, size_t req_bytes,
                         size_t reply_bytes, double seconds)
{
    char self[PATH_MAX], target[64];
    attnd_bench_child ch;
    uint32_t n_lanes = res->lanes, n_ch = o->connections;
    base_lane *lanes = NULL;
    grpc_channel **chans = NULL;
    unsigned char *req = NULL;
    int rc = -1;

    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    if (k <= 0) {
        fprintf(stderr, "attnd-bench: --baseline: cannot find myself\n");
        return -1;
    }
    self[k] = '\0';
    const char *argv[] = {self, "--echo-server", NULL};
    if (attnd_bench_child_start(&ch, argv, 10000))
        return -1;
    grpc_init(); /* libattnd's clients are gone: gRPC may be shut down */
    snprintf(target, sizeof target, "127.0.0.1:%d", ch.port);
    if (req_bytes < 8)
        req_bytes = 8;
    req = calloc(1, req_bytes);
    lanes = calloc(n_lanes, sizeof *lanes);
    chans = calloc(n_ch, sizeof *chans);
    if (!req || !lanes || !chans || attnd_hist_init(&res->base_call))
        goto out;
    for (int i = 0; i < 8; i++)
        req[i] = (unsigned char)((uint64_t)reply_bytes >> (8 * i));
    for (uint32_t i = 0; i < n_ch; i++)
        chans[i] = base_channel(target);
    uint64_t t0 = attnd_clock_ns();
    uint64_t warm = (uint64_t)(seconds * 0.2e9);
    for (uint32_t i = 0; i < n_lanes; i++) {
        lanes[i].ch = chans[i % n_ch];
        lanes[i].req = req;
        lanes[i].req_bytes = req_bytes;
        lanes[i].micro = res->microbatches;
        lanes[i].t_rec = t0 + warm;
        lanes[i].t_end = t0 + (uint64_t)(seconds * 1e9);
        if (attnd_hist_init(&lanes[i].h) ||
            pthread_create(&lanes[i].tid, NULL, base_lane_main, &lanes[i])) {
            attnd_hist_cleanup(&lanes[i].h);
            n_lanes = i;
            break;
        }
    }
    for (uint32_t i = 0; i < n_lanes; i++) {
        pthread_join(lanes[i].tid, NULL);
        attnd_hist_merge(&res->base_call, &lanes[i].h);
        attnd_hist_cleanup(&lanes[i].h);
        if (lanes[i].errors)
            fprintf(stderr, "attnd-bench: --baseline: %llu calls failed\n",
                    (unsigned long long)lanes[i].errors);
    }
    res->base_s = (double)(attnd_clock_ns() - (t0 + warm)) * 1e-9;
    res->base_calls = res->base_call.count;
    res->base_req_bytes = req_bytes;
    res->base_reply_bytes = reply_bytes;
    res->baseline_ran = n_lanes > 0 && res->base_calls > 0;
    rc = res->baseline_ran ? 0 : -1;
out:
    if (chans)
        for (uint32_t i = 0; i < n_ch; i++)
            if (chans[i])
                grpc_channel_destroy(chans[i]);
    free(chans);
    free(lanes);
    free(req);
    grpc_shutdown();
    attnd_bench_child_stop(&ch);
    return rc;
}
