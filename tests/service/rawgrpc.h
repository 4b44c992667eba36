/* Test-side helpers: start the real attnd as a child process, and talk to
 * it with raw gRPC C-core calls (no libattnd), so the service's suite
 * proves the server on its own. Header-only; every wait has a generous
 * deadline and none is an assertion about timing. */
#ifndef ATTND_TEST_RAWGRPC_H
#define ATTND_TEST_RAWGRPC_H

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <protobuf-c/protobuf-c.h>

#define RG_WAIT_MS 60000 /* the generous deadline of every wait */

/* ---- the server process ---------------------------------------------------- */

typedef struct rg_server {
    pid_t pid;
    int out_fd; /* its stdout */
    int port;
    char target[64];
    char line[512]; /* the "listening on" line */
} rg_server;

static inline int64_t rg_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Spawn `bin` with args (NULL-terminated, after argv[0]); nofile_soft
 * and nofile_hard, when nonzero, are its RLIMIT_NOFILE. */
static inline int rg_spawn_nofile(rg_server *s, const char *bin, const char *const *args,
                                  rlim_t nofile_soft, rlim_t nofile_hard)
{
    int fds[2];
    const char *argv[64];
    int n = 0;

    memset(s, 0, sizeof *s);
    s->out_fd = -1;
    argv[n++] = bin;
    for (; args && *args && n < 63; args++)
        argv[n++] = *args;
    argv[n] = NULL;
    if (pipe(fds))
        return -1;
    s->pid = fork();
    if (s->pid < 0)
        return -1;
    if (s->pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        if (nofile_hard) {
            struct rlimit rl = {nofile_soft, nofile_hard};
            if (setrlimit(RLIMIT_NOFILE, &rl))
                _exit(126);
        }
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    s->out_fd = fds[0];
    return 0;
}

static inline int rg_spawn(rg_server *s, const char *bin, const char *const *args)
{
    return rg_spawn_nofile(s, bin, args, 0, 0);
}

/* Read the "attnd: listening on HOST:PORT ..." line and take the port. */
static inline int rg_read_port(rg_server *s)
{
    size_t n = 0;
    int64_t end = rg_now_ms() + RG_WAIT_MS;
    while (n + 1 < sizeof s->line) {
        struct pollfd p = {s->out_fd, POLLIN, 0};
        int64_t left = end - rg_now_ms();
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            return -1;
        ssize_t r = read(s->out_fd, s->line + n, 1);
        if (r <= 0)
            return -1;
        if (s->line[n] == '\n')
            break;
        n++;
    }
    s->line[n] = '\0';
    const char *p = strstr(s->line, "listening on ");
    if (!p || !(p = strchr(p + 13, ':')))
        return -1;
    s->port = atoi(p + 1);
    snprintf(s->target, sizeof s->target, "127.0.0.1:%d", s->port);
    return s->port > 0 ? 0 : -1;
}

/* Wait for the process to exit; its wait status, or -1 past the deadline. */
static inline int rg_wait_exit(rg_server *s, int64_t timeout_ms)
{
    int64_t end = rg_now_ms() + timeout_ms;
    int status;
    for (;;) {
        pid_t r = waitpid(s->pid, &status, WNOHANG);
        if (r == s->pid) {
            s->pid = 0;
            if (s->out_fd >= 0)
                close(s->out_fd);
            s->out_fd = -1;
            return status;
        }
        if (r < 0 && errno != EINTR)
            return -1;
        if (rg_now_ms() > end)
            return -1;
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* Kill whatever is left (teardown). */
static inline void rg_kill(rg_server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
    if (s->out_fd >= 0)
        close(s->out_fd);
    s->out_fd = -1;
}

/* ---- calls ----------------------------------------------------------------------- */

static inline grpc_channel *rg_channel(const char *target)
{
    grpc_arg args[2];
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = 1 << 30;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[1].value.integer = 1 << 30;
    grpc_channel_args ca = {2, args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(target, creds, &ca);
    grpc_channel_credentials_release(creds);
    return ch;
}

static inline gpr_timespec rg_deadline(int64_t ms)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

/* Bytes of a byte buffer, malloc'd (caller frees); NULL buffer: NULL. */
static inline uint8_t *rg_bb_bytes(grpc_byte_buffer *bb, size_t *len_p)
{
    grpc_byte_buffer_reader rd;
    grpc_slice s;
    uint8_t *out;
    size_t len = 0;
    *len_p = 0;
    if (!bb)
        return NULL;
    out = malloc(grpc_byte_buffer_length(bb) + 1);
    grpc_byte_buffer_reader_init(&rd, bb);
    while (grpc_byte_buffer_reader_next(&rd, &s)) {
        memcpy(out + len, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s));
        len += GRPC_SLICE_LENGTH(s);
        grpc_slice_unref(s);
    }
    grpc_byte_buffer_reader_destroy(&rd);
    *len_p = len;
    return out;
}

static inline grpc_byte_buffer *rg_bb(const void *data, size_t len)
{
    grpc_slice s = grpc_slice_from_copied_buffer(data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/* Pack a protobuf-c message into malloc'd bytes. */
static inline uint8_t *rg_pack(const ProtobufCMessage *m, size_t *len_p)
{
    *len_p = protobuf_c_message_get_packed_size(m);
    uint8_t *p = malloc(*len_p + 1);
    protobuf_c_message_pack(m, p);
    return p;
}

/* A call and its queue: every op is a batch waited for on the queue. */
typedef struct rg_call {
    grpc_call *call;
    grpc_completion_queue *cq;
    grpc_metadata_array imd, tmd;
    int got_imd;
    grpc_status_code code;
    char details[512];
    char trailer[128]; /* "key=value;..." of the trailing metadata */
} rg_call;

static inline int rg_call_open(rg_call *c, grpc_channel *ch, const char *method, int64_t ms)
{
    memset(c, 0, sizeof *c);
    c->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_metadata_array_init(&c->imd);
    grpc_metadata_array_init(&c->tmd);
    grpc_slice m = grpc_slice_from_copied_string(method);
    c->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, m, NULL,
                                       rg_deadline(ms), NULL);
    grpc_slice_unref(m);
    return c->call ? 0 : -1;
}

/* Run one batch and wait for it; its success flag, or -1 past the deadline. */
static inline int rg_batch(rg_call *c, grpc_op *ops, size_t n)
{
    static int tag;
    if (grpc_call_start_batch(c->call, ops, n, &tag, NULL) != GRPC_CALL_OK)
        return -1;
    grpc_event ev = grpc_completion_queue_next(c->cq, rg_deadline(RG_WAIT_MS), NULL);
    return ev.type == GRPC_OP_COMPLETE ? ev.success : -1;
}

static inline int rg_send_md(rg_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    return rg_batch(c, &op, 1);
}

/* Send one message (and the half-close with it when last). */
static inline int rg_send(rg_call *c, const void *data, size_t len, int last)
{
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    grpc_byte_buffer *bb = rg_bb(data, len);
    ops[0].op = GRPC_OP_SEND_MESSAGE;
    ops[0].data.send_message.send_message = bb;
    ops[1].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    int ok = rg_batch(c, ops, last ? 2 : 1);
    grpc_byte_buffer_destroy(bb);
    return ok;
}

static inline int rg_half_close(rg_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    return rg_batch(c, &op, 1);
}

/* Receive one message into malloc'd *data_p (NULL at the stream's end). */
static inline int rg_recv(rg_call *c, uint8_t **data_p, size_t *len_p)
{
    grpc_op ops[2];
    grpc_byte_buffer *bb = NULL;
    size_t n = 0;
    memset(ops, 0, sizeof ops);
    if (!c->got_imd) {
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n].data.recv_initial_metadata.recv_initial_metadata = &c->imd;
        n++;
        c->got_imd = 1;
    }
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n].data.recv_message.recv_message = &bb;
    n++;
    int ok = rg_batch(c, ops, n);
    *data_p = rg_bb_bytes(bb, len_p);
    if (bb)
        grpc_byte_buffer_destroy(bb);
    return ok;
}

/* Receive the status into c->code / c->details / c->trailer. */
static inline int rg_finish(rg_call *c)
{
    grpc_op ops[2];
    grpc_slice details;
    size_t n = 0;
    memset(ops, 0, sizeof ops);
    if (!c->got_imd) {
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n].data.recv_initial_metadata.recv_initial_metadata = &c->imd;
        n++;
        c->got_imd = 1;
    }
    ops[n].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[n].data.recv_status_on_client.trailing_metadata = &c->tmd;
    ops[n].data.recv_status_on_client.status = &c->code;
    ops[n].data.recv_status_on_client.status_details = &details;
    n++;
    int ok = rg_batch(c, ops, n);
    if (ok > 0) {
        char *d = grpc_slice_to_c_string(details);
        snprintf(c->details, sizeof c->details, "%s", d);
        gpr_free(d);
        grpc_slice_unref(details);
        size_t off = 0;
        for (size_t i = 0; i < c->tmd.count && off < sizeof c->trailer; i++) {
            const grpc_metadata *md = &c->tmd.metadata[i];
            int w = snprintf(c->trailer + off, sizeof c->trailer - off, "%.*s=%.*s;",
                             (int)GRPC_SLICE_LENGTH(md->key),
                             (const char *)GRPC_SLICE_START_PTR(md->key),
                             (int)GRPC_SLICE_LENGTH(md->value),
                             (const char *)GRPC_SLICE_START_PTR(md->value));
            off += w > 0 ? (size_t)w : 0;
        }
    }
    return ok;
}

static inline void rg_call_close(rg_call *c)
{
    if (c->call)
        grpc_call_unref(c->call);
    grpc_metadata_array_destroy(&c->imd);
    grpc_metadata_array_destroy(&c->tmd);
    grpc_completion_queue_shutdown(c->cq);
    while (grpc_completion_queue_next(c->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(c->cq);
    memset(c, 0, sizeof *c);
}

/* A whole unary call: request bytes in, reply bytes (malloc'd, may be NULL)
 * and status out. Returns the gRPC status code, or -1 if the call itself
 * could not run. */
static inline int rg_unary(grpc_channel *ch, const char *method, const void *req, size_t len,
                           uint8_t **resp_p, size_t *resp_len_p, char *details, size_t dcap)
{
    rg_call c;
    uint8_t *resp = NULL;
    size_t rlen = 0;
    int code = -1;
    if (rg_call_open(&c, ch, method, RG_WAIT_MS))
        return -1;
    if (rg_send_md(&c) >= 0 && rg_send(&c, req, len, 1) >= 0 && rg_recv(&c, &resp, &rlen) >= 0 &&
        rg_finish(&c) > 0)
        code = (int)c.code;
    if (details && dcap) {
        size_t n = strlen(c.details);
        n = n < dcap - 1 ? n : dcap - 1;
        memcpy(details, c.details, n);
        details[n] = '\0';
    }
    if (resp_p) {
        *resp_p = resp;
        *resp_len_p = rlen;
    } else {
        free(resp);
    }
    rg_call_close(&c);
    return code;
}

#endif /* ATTND_TEST_RAWGRPC_H */
