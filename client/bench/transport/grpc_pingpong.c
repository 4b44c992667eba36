/* grpc_pingpong: the bare gRPC C-core baseline of the transport benchmark
 * (transport_bench.sh). Not a test: it prints numbers.
 *
 * An echo-shaped unary method, "/attnd.bench.Pingpong/Ping", with the same
 * channel arguments as attnd and libattnd and the same call shapes: the
 * server takes the request as its initial byte buffer on a completion
 * queue and answers with one preallocated reply of REPLY_BYTES (a slice
 * ref, no copy) and OK; the client sends each call as one batch (initial
 * metadata, message, half-close, receive metadata, message and status) on
 * a pluck queue, like libattnd's Attend. So the difference between Attend
 * over gRPC and this is what attnd adds: protobuf, validation, engine.
 *
 * usage: grpc_pingpong server PORT_FILE REPLY_BYTES
 *        grpc_pingpong client TARGET REQ_BYTES ITERS [WARMUP]
 * The server runs until killed; the client prints one key=value line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#define METHOD "/attnd.bench.Pingpong/Ping"
#define MAX_MSG (256 << 20) /* attnd's --max-message default */

static void arg_int(grpc_arg *a, const char *key, int v)
{
    a->type = GRPC_ARG_INTEGER;
    a->key = (char *)key;
    a->value.integer = v;
}

static gpr_timespec forever(void)
{
    return gpr_inf_future(GPR_CLOCK_REALTIME);
}

static int run_server(const char *port_file, size_t reply_bytes)
{
    grpc_arg args[5];
    grpc_channel_args ch = {0, args};
    /* attnd's server arguments (service/server.c, config.c defaults) */
    arg_int(&args[ch.num_args++], GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, MAX_MSG);
    arg_int(&args[ch.num_args++], GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, MAX_MSG);
    arg_int(&args[ch.num_args++], GRPC_ARG_ALLOW_REUSEPORT, 0);
    arg_int(&args[ch.num_args++], GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8 << 20);
    arg_int(&args[ch.num_args++], GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 1 << 20);
    grpc_server *srv = grpc_server_create(&ch, NULL);
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(srv, cq, NULL);
    void *method = grpc_server_register_method(srv, METHOD, NULL,
                                               GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    grpc_server_credentials *cr = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(srv, "127.0.0.1:0", cr);
    grpc_server_credentials_release(cr);
    if (port <= 0 || !method) {
        fprintf(stderr, "grpc_pingpong: cannot listen\n");
        return 1;
    }
    grpc_server_start(srv);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return 1;
    fprintf(f, "%d\n", port);
    fclose(f);
    rename(tmp, port_file);

    grpc_slice reply = grpc_slice_malloc(reply_bytes);
    memset(GRPC_SLICE_START_PTR(reply), 0x3c, reply_bytes);
    for (;;) {
        grpc_call *call = NULL;
        gpr_timespec deadline;
        grpc_metadata_array md;
        grpc_byte_buffer *req = NULL;
        grpc_metadata_array_init(&md);
        char tag_new, tag_done;
        if (grpc_server_request_registered_call(srv, method, &call, &deadline, &md, &req, cq, cq,
                                                &tag_new) != GRPC_CALL_OK)
            return 1;
        grpc_event ev = grpc_completion_queue_next(cq, forever(), NULL);
        if (ev.type != GRPC_OP_COMPLETE || ev.tag != &tag_new || !ev.success)
            return 1;
        grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&reply, 1);
        int cancelled = 0;
        grpc_op ops[4];
        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[1].op = GRPC_OP_SEND_MESSAGE;
        ops[1].data.send_message.send_message = bb;
        ops[2].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[2].data.send_status_from_server.status = GRPC_STATUS_OK;
        ops[3].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        ops[3].data.recv_close_on_server.cancelled = &cancelled;
        if (grpc_call_start_batch(call, ops, 4, &tag_done, NULL) != GRPC_CALL_OK)
            return 1;
        do
            ev = grpc_completion_queue_next(cq, forever(), NULL);
        while (ev.type == GRPC_OP_COMPLETE && ev.tag != &tag_done);
        grpc_byte_buffer_destroy(bb);
        if (req)
            grpc_byte_buffer_destroy(req);
        grpc_metadata_array_destroy(&md);
        grpc_call_unref(call);
    }
}

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

static int run_client(const char *target, size_t req_bytes, int iters, int warmup)
{
    grpc_arg args[6];
    grpc_channel_args ch = {0, args};
    /* libattnd's channel arguments (client/channel.c) */
    arg_int(&args[ch.num_args++], GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, MAX_MSG);
    arg_int(&args[ch.num_args++], GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, MAX_MSG);
    arg_int(&args[ch.num_args++], GRPC_ARG_ENABLE_RETRIES, 0);
    arg_int(&args[ch.num_args++], GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    grpc_channel_credentials *cr = grpc_insecure_credentials_create();
    grpc_channel *chan = grpc_channel_create(target, cr, &ch);
    grpc_channel_credentials_release(cr);
    void *method = grpc_channel_register_call(chan, METHOD, NULL, NULL);
    unsigned char *payload = malloc(req_bytes);
    memset(payload, 0x3c, req_bytes);
    double *t = malloc(sizeof *t * (size_t)iters), sum = 0;
    unsigned char *sink = malloc(MAX_MSG / 16); /* where the reply is copied */
    size_t got = 0;

    for (int i = -warmup; i < iters; i++) {
        double t0 = now_us();
        /* like libattnd: the request is packed into a fresh slice per call */
        grpc_slice s = grpc_slice_malloc(req_bytes);
        memcpy(GRPC_SLICE_START_PTR(s), payload, req_bytes);
        grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
        grpc_slice_unref(s);
        grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
        grpc_call *call = grpc_channel_create_registered_call(
            chan, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method,
            gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_seconds(30, GPR_TIMESPAN)),
            NULL);
        grpc_metadata_array md_i, md_t;
        grpc_metadata_array_init(&md_i);
        grpc_metadata_array_init(&md_t);
        grpc_byte_buffer *recv = NULL;
        grpc_status_code status;
        grpc_slice details;
        grpc_op ops[6];
        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[1].op = GRPC_OP_SEND_MESSAGE;
        ops[1].data.send_message.send_message = bb;
        ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[3].data.recv_initial_metadata.recv_initial_metadata = &md_i;
        ops[4].op = GRPC_OP_RECV_MESSAGE;
        ops[4].data.recv_message.recv_message = &recv;
        ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        ops[5].data.recv_status_on_client.trailing_metadata = &md_t;
        ops[5].data.recv_status_on_client.status = &status;
        ops[5].data.recv_status_on_client.status_details = &details;
        char tag;
        if (grpc_call_start_batch(call, ops, 6, &tag, NULL) != GRPC_CALL_OK)
            return 1;
        grpc_event ev = grpc_completion_queue_pluck(cq, &tag, forever(), NULL);
        /* copy the reply out once, as libattnd's decoder does */
        if (ev.success && status == GRPC_STATUS_OK && recv) {
            grpc_byte_buffer_reader rd;
            grpc_slice sl;
            grpc_byte_buffer_reader_init(&rd, recv);
            got = 0;
            while (grpc_byte_buffer_reader_next(&rd, &sl)) {
                size_t n = GRPC_SLICE_LENGTH(sl);
                if (got + n <= (size_t)MAX_MSG / 16)
                    memcpy(sink + got, GRPC_SLICE_START_PTR(sl), n);
                got += n;
                grpc_slice_unref(sl);
            }
            grpc_byte_buffer_reader_destroy(&rd);
        }
        double dt = now_us() - t0;
        if (!ev.success || status != GRPC_STATUS_OK) {
            fprintf(stderr, "grpc_pingpong: call failed (status %d)\n", (int)status);
            return 1;
        }
        grpc_slice_unref(details);
        grpc_byte_buffer_destroy(recv);
        grpc_byte_buffer_destroy(bb);
        grpc_metadata_array_destroy(&md_i);
        grpc_metadata_array_destroy(&md_t);
        grpc_call_unref(call);
        grpc_completion_queue_shutdown(cq);
        grpc_completion_queue_destroy(cq);
        if (i >= 0) {
            t[i] = dt;
            sum += dt;
        }
    }
    (void)got;
    qsort(t, (size_t)iters, sizeof *t, cmp_d);
    printf("mode=grpc-bare req_bytes=%zu iters=%d p10_us=%.1f p50_us=%.1f p90_us=%.1f "
           "mean_us=%.1f\n",
           req_bytes, iters, t[iters / 10], t[iters / 2], t[iters * 9 / 10], sum / iters);
    grpc_channel_destroy(chan);
    free(payload);
    free(sink);
    free(t);
    return 0;
}

int main(int argc, char **argv)
{
    int rc = 2;
    grpc_init();
    if (argc == 4 && strcmp(argv[1], "server") == 0)
        rc = run_server(argv[2], (size_t)atol(argv[3]));
    else if (argc >= 5 && strcmp(argv[1], "client") == 0)
        rc = run_client(argv[2], (size_t)atol(argv[3]), atoi(argv[4]),
                        argc > 5 ? atoi(argv[5]) : 20);
    else
        fprintf(stderr, "usage: %s server PORT_FILE REPLY_BYTES | client TARGET REQ_BYTES "
                        "ITERS [WARMUP]\n", argv[0]);
    grpc_shutdown();
    return rc;
}
