/* attend_rtt: per-layer Attend round trip through libattnd, for the
 * transport benchmark (transport_bench.sh). Not a test: it prints numbers.
 *
 * Against a running attnd serving deepseek-v3 it creates B sessions with a
 * tiny context (ctx tokens, default 1, appended to layer 0) so that the
 * server's compute is negligible next to the transport, then times
 * `iters` Attend calls of layer 0: query [B, 128, 576] bf16, output
 * [B, 128, 512] bf16, no new KV (the context does not grow). It prints one
 * line of key=value pairs: request and reply tensor bytes, the p10, p50,
 * p90 and mean of the round trip in microseconds, and for the unary modes
 * (async + attnd_call_wait_timed, which returns the server's timings over
 * either transport) the p50 of the server's kernel time and of the round
 * trip minus it (kernel + fan-out on a worker group, i.e. the whole group
 * call; net_p50_us: the transport's share plus attnd's protocol
 * work: decode, validation, encode), and of the round trip minus all the
 * server's reported work but its queue (wire_p50_us: kernel, validation
 * and reply encoding subtracted; what is left is both ends' transport,
 * the client's encode/decode copies and the server's request decode).
 *
 * Modes: grpc, ucx: attnd_client_attend_async + attnd_call_wait_timed
 * (server timings; over UCX the request is sent from a packed copy, as
 * the async contract lets the caller reuse q at once); grpc-sync,
 * ucx-sync: attnd_client_attend (over UCX sent zero-copy from q);
 * grpc-stream, ucx-stream: attnd_stream_attend. Only the first two
 * report server timings (0 otherwise).
 *
 * usage: attend_rtt TARGET MODE B ITERS [WARMUP [CTX]]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attnd/client.h"

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    attnd_client_options o;
    attnd_client *c = NULL;
    attnd_stream *stream = NULL;
    attnd_model_info m;
    attnd_error err;
    int rc = 1;

    if (argc < 5) {
        fprintf(stderr, "usage: %s TARGET grpc|ucx|grpc-stream|ucx-stream B ITERS [WARMUP [CTX]]\n",
                argv[0]);
        return 2;
    }
    const char *target = argv[1], *mode = argv[2];
    uint32_t B = (uint32_t)atoi(argv[3]);
    int iters = atoi(argv[4]), warmup = argc > 5 ? atoi(argv[5]) : 20;
    uint32_t ctx = argc > 6 ? (uint32_t)atoi(argv[6]) : 1;
    int use_stream = strstr(mode, "stream") != NULL, use_sync = strstr(mode, "sync") != NULL;
    if (B < 1 || iters < 1 || ctx < 1)
        return 2;

    attnd_client_options_init(&o);
    o.transport = strncmp(mode, "ucx", 3) == 0 ? ATTND_TRANSPORT_UCX : ATTND_TRANSPORT_GRPC;
    attnd_error_clear(&err);
    if (attnd_client_connect(target, &o, &c, &err)) {
        fprintf(stderr, "attend_rtt: connect %s (%s): %s\n", target, mode, err.msg);
        return 1;
    }
    attnd_session_id *ids = calloc(B, sizeof *ids);
    for (uint32_t i = 0; i < B; i++)
        if (attnd_client_create_session(c, NULL, 0, &ids[i], &m, &err)) {
            fprintf(stderr, "attend_rtt: create session: %s\n", err.msg);
            goto out;
        }
    size_t kv_bytes = (size_t)ctx * m.kv_token_elems * 2;
    size_t q_bytes = (size_t)B * m.n_q_heads * m.d_k * 2;
    size_t out_bytes = (size_t)B * m.n_q_heads * m.d_v * 2;
    uint16_t *kv = malloc(kv_bytes), *q = malloc(q_bytes);
    void *out = malloc(out_bytes);
    double *t = malloc(sizeof *t * (size_t)iters);
    double *kern = calloc((size_t)iters, sizeof *kern), *net = calloc((size_t)iters, sizeof *net);
    double *q_ = calloc((size_t)iters, sizeof *q_), *v_ = calloc((size_t)iters, sizeof *v_);
    double *e_ = calloc((size_t)iters, sizeof *e_), *w_ = calloc((size_t)iters, sizeof *w_);
    srand(1);
    for (size_t i = 0; i < kv_bytes / 2; i++)
        kv[i] = (uint16_t)(0x3c00 + (rand() & 0xff)); /* bf16 around 0.008..0.016 */
    for (size_t i = 0; i < q_bytes / 2; i++)
        q[i] = (uint16_t)(0x3c00 + (rand() & 0xff));
    for (uint32_t i = 0; i < B; i++) {
        attnd_kv_chunk ch = {.session = ids[i], .layer = 0, .start = 0, .n_tokens = ctx,
                             .kv_token_elems = m.kv_token_elems, .dtype = ATTND_DTYPE_BF16,
                             .data = kv};
        if (attnd_client_append_kv(c, &ch, 1, NULL, &err)) {
            fprintf(stderr, "attend_rtt: append: %s\n", err.msg);
            goto out_free;
        }
    }
    attnd_attend_args a = {
        .layer = 0,
        .n_seqs = B,
        .sessions = ids,
        .q = {.dtype = ATTND_DTYPE_BF16, .ndim = 3,
              .shape = {B, m.n_q_heads, m.d_k}, .data = q},
        .out = out,
        .out_capacity = out_bytes,
    };
    if (use_stream && attnd_client_stream_open(c, &stream, &err)) {
        fprintf(stderr, "attend_rtt: stream: %s\n", err.msg);
        goto out_free;
    }
    for (int i = -warmup; i < iters; i++) {
        attnd_server_timing tm = {0};
        attnd_call *call;
        double t0 = now_us();
        attnd_status st;
        if (use_stream) {
            st = attnd_stream_attend(stream, &a, &err);
        } else if (use_sync) {
            st = attnd_client_attend(c, &a, &err);
        } else {
            st = attnd_client_attend_async(c, &a, &call, &err);
            if (st == ATTND_OK)
                st = attnd_call_wait_timed(call, &tm, &err);
        }
        double dt = now_us() - t0;
        if (st) {
            fprintf(stderr, "attend_rtt: attend: %s\n", err.msg);
            goto out_free;
        }
        if (i >= 0) {
            t[i] = dt;
            kern[i] = (tm.kernel_ns + tm.fanout_ns) / 1e3; /* group: the whole call */
            net[i] = dt - kern[i];
            q_[i] = tm.queue_ns / 1e3;
            v_[i] = tm.validate_ns / 1e3;
            e_[i] = tm.encode_ns / 1e3;
            w_[i] = net[i] - v_[i] - e_[i];
        }
    }
    double sum = 0;
    for (int i = 0; i < iters; i++)
        sum += t[i];
    qsort(t, (size_t)iters, sizeof *t, cmp_d);
    qsort(kern, (size_t)iters, sizeof *kern, cmp_d);
    qsort(net, (size_t)iters, sizeof *net, cmp_d);
    qsort(q_, (size_t)iters, sizeof *q_, cmp_d);
    qsort(v_, (size_t)iters, sizeof *v_, cmp_d);
    qsort(e_, (size_t)iters, sizeof *e_, cmp_d);
    qsort(w_, (size_t)iters, sizeof *w_, cmp_d);
    printf("mode=%s batch=%u ctx=%u req_bytes=%zu rep_bytes=%zu iters=%d p10_us=%.1f "
           "p50_us=%.1f p90_us=%.1f mean_us=%.1f kernel_p50_us=%.1f net_p50_us=%.1f srv_queue_p50_us=%.1f "
           "srv_validate_p50_us=%.1f srv_encode_p50_us=%.1f wire_p50_us=%.1f\n",
           mode, B, ctx, q_bytes, out_bytes, iters, t[iters / 10], t[iters / 2],
           t[iters * 9 / 10], sum / iters, kern[iters / 2], net[iters / 2],
           q_[iters / 2], v_[iters / 2], e_[iters / 2], w_[iters / 2]);
    char info[128]; /* what carried it: "grpc" or "ucx" + UCX's lanes (last: spaces) */
    attnd_client_transport_info(c, info, sizeof info);
    printf("transports=%s\n", info);
    rc = 0;
out_free:
    if (stream)
        attnd_stream_close(stream, NULL);
    for (uint32_t i = 0; i < B; i++)
        attnd_client_close_session(c, &ids[i], NULL);
    free(kv);
    free(q);
    free(out);
    free(t);
    free(kern);
    free(net);
    free(q_);
    free(v_);
    free(e_);
    free(w_);
out:
    free(ids);
    attnd_client_destroy(c);
    return rc;
}
