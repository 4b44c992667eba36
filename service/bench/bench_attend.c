/* attnd_svc_bench: a manual transport benchmark of attnd's Attend path (not
 * a test; attnd-bench in client/ is the real load tester).
 *
 *   attnd_svc_bench HOST:PORT [batch] [iters] [client_lookahead_bytes]
 *
 * Creates `batch` sessions on a server running deepseek-v3, then sends
 * `iters` unary Attend calls of a bf16 query [batch, 128, 576] over those
 * (empty) sessions, so the kernel does almost nothing and the time is the
 * transport's and the codec's: request ~147 KB and reply ~131 KB per
 * sequence. Prints latency percentiles and the bytes moved per second. Used
 * to pick the server's HTTP/2 settings (--http2-lookahead,
 * --http2-max-frame). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnd.pb-c.h"
#include "rawgrpc.h"

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s HOST:PORT [batch] [iters] [client_lookahead]\n", argv[0]);
        return 2;
    }
    const char *target = argv[1];
    int batch = argc > 2 ? atoi(argv[2]) : 1;
    int iters = argc > 3 ? atoi(argv[3]) : 200;
    int lookahead = argc > 4 ? atoi(argv[4]) : 0;
    const int hq = 128, dk = 576;

    grpc_init();
    grpc_arg args[3];
    int nargs = 0;
    args[nargs].type = GRPC_ARG_INTEGER;
    args[nargs].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[nargs++].value.integer = 1 << 30;
    args[nargs].type = GRPC_ARG_INTEGER;
    args[nargs].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[nargs++].value.integer = 1 << 30;
    if (lookahead > 0) {
        args[nargs].type = GRPC_ARG_INTEGER;
        args[nargs].key = (char *)GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES;
        args[nargs++].value.integer = lookahead;
    }
    grpc_channel_args ca = {(size_t)nargs, args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(target, creds, &ca);
    grpc_channel_credentials_release(creds);

    ProtobufCBinaryData *ids = calloc((size_t)batch, sizeof *ids);
    for (int i = 0; i < batch; i++) {
        Attnd__V1__CreateSessionRequest m = ATTND__V1__CREATE_SESSION_REQUEST__INIT;
        size_t len, rlen;
        uint8_t *req = rg_pack(&m.base, &len), *resp = NULL;
        char details[256];
        int code = rg_unary(ch, "/attnd.v1.Attnd/CreateSession", req, len, &resp, &rlen,
                            details, sizeof details);
        if (code != GRPC_STATUS_OK) {
            fprintf(stderr, "CreateSession: %d %s\n", code, details);
            return 1;
        }
        Attnd__V1__CreateSessionResponse *r =
            attnd__v1__create_session_response__unpack(NULL, rlen, resp);
        ids[i].len = 16;
        ids[i].data = malloc(16);
        memcpy(ids[i].data, r->session_id.data, 16);
        attnd__v1__create_session_response__free_unpacked(r, NULL);
        free(req);
        free(resp);
    }

    size_t qbytes = (size_t)batch * hq * dk * 2;
    uint8_t *q = malloc(qbytes);
    for (size_t i = 0; i < qbytes; i++)
        q[i] = (uint8_t)(i * 31 + 7) & 0x3f; /* small positive bf16 values */
    int64_t qshape[] = {batch, hq, dk};
    Attnd__V1__Tensor tq = ATTND__V1__TENSOR__INIT;
    tq.dtype = ATTND__V1__DTYPE__DTYPE_BF16;
    tq.n_shape = 3;
    tq.shape = qshape;
    tq.data.len = qbytes;
    tq.data.data = q;
    Attnd__V1__AttendRequest m = ATTND__V1__ATTEND_REQUEST__INIT;
    m.n_session_ids = (size_t)batch;
    m.session_ids = ids;
    m.q = &tq;
    size_t len;
    uint8_t *req = rg_pack(&m.base, &len);

    int64_t *lat = calloc((size_t)iters, sizeof *lat);
    size_t resp_bytes = 0;
    int warm = iters / 10 + 3;
    int64_t t_start = 0;
    for (int i = -warm; i < iters; i++) {
        if (i == 0)
            t_start = now_us();
        int64_t t0 = now_us();
        uint8_t *resp = NULL;
        size_t rlen = 0;
        char details[256];
        int code = rg_unary(ch, "/attnd.v1.Attnd/Attend", req, len, &resp, &rlen, details,
                            sizeof details);
        if (code != GRPC_STATUS_OK) {
            fprintf(stderr, "Attend: %d %s\n", code, details);
            return 1;
        }
        if (i >= 0) {
            lat[i] = now_us() - t0;
            resp_bytes = rlen;
        }
        free(resp);
    }
    int64_t total = now_us() - t_start;
    qsort(lat, (size_t)iters, sizeof *lat, cmp_i64);
    printf("batch=%d req=%zu B resp=%zu B iters=%d  p50=%lld us p90=%lld us p99=%lld us  "
           "%.1f MB/s (both directions)\n",
           batch, len, resp_bytes, iters, (long long)lat[iters / 2],
           (long long)lat[iters * 9 / 10], (long long)lat[iters * 99 / 100],
           (double)(len + resp_bytes) * iters / (double)total);
    grpc_channel_destroy(ch);
    grpc_shutdown();
    return 0;
}
