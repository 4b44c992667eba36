/* Transport-agnostic execution of one AttendRequest.
 *
 * Every transport that carries Attend (the gRPC unary and stream handlers,
 * the UCX active-message endpoint) hands the decoded request to
 * attnd_srv_attend_exec, which validates it, runs the engine and returns
 * what the reply must carry (attnd_srv_attend_reply: pointers into the
 * context's engine workspace) plus per-call timings. Encoding the reply is
 * the transport's: attnd_srv_attend_reply_pack (one grpc slice) or
 * attnd_srv_attend_reply_size/_write (any buffer, e.g. a reused UCX send
 * buffer); both produce the same bytes.
 *
 * A context is per thread (it holds the scratch the request is decoded
 * into and the workspace the output lives in): never share one between
 * threads running at the same time.
 */
#ifndef ATTND_SRV_ATTEND_EXEC_H
#define ATTND_SRV_ATTEND_EXEC_H

#include <stdint.h>

#include "srv.h"

/* What one execution needs; all borrowed, none owned. */
typedef struct attnd_srv_exec_ctx {
    attnd_srv *srv;          /* engine, served model */
    attnd_engine_ws *ws;     /* output lives here until its next use */
    attnd_srv_arena *arena;  /* the decoded request and validation scratch */
    /* ms the caller has left before its deadline (0: unknown); a worker
     * group gives up on peers sooner, so that UNAVAILABLE arrives in time */
    int64_t time_left_ms;
} attnd_srv_exec_ctx;

/* Per-call timings in nanoseconds (CLOCK_MONOTONIC differences). Transports
 * and benchmarks read these; a field a path does not measure stays 0. */
typedef struct attnd_srv_attend_times {
    uint64_t t_queue_ns;   /* arrival at the transport to the start of exec */
    uint64_t t_decode_ns;  /* unpack (attnd_srv_attend_exec_bytes only) */
    uint64_t t_validate_ns;
    uint64_t t_kernel_ns;  /* the engine's attend (local compute); group: the
                              leader's own share */
    uint64_t t_fanout_ns;  /* group: the rest of the group call (plan,
                              scatter, waiting for peers beyond the own
                              share, combine); 0 on one rank. kernel +
                              fanout = the call's attend, counted once */
    uint64_t t_total_ns;   /* the whole exec */
    uint64_t t_encode_ns;  /* reply encoding, set by the transport */
} attnd_srv_attend_times;

/* Record a successful Attend's split into shard s (NULL: nothing). */
void attnd_srv_attend_times_record(attnd_srv_mshard *s, const attnd_srv_attend_times *t);

/* Trailing-metadata key of a unary Attend's timings (rpc_attend.c). */
#define ATTND_SRV_TIMING_KEY "attnd-timing"

typedef struct attnd_srv_attend_result {
    attnd_srv_attend_reply reply; /* encode with attnd_srv_attend_reply_* */
    attnd_srv_attend_times t;
} attnd_srv_attend_result;

/* Validate m (decoded into x->arena) and run it. On success *res describes
 * the reply; its tensors point into x->ws and stay valid until the next
 * exec on x. t_arrival_ns: when the transport received the request (0:
 * unknown, t_queue_ns stays 0). Errors are the validation's and the
 * engine's codes, with messages naming the field. */
attnd_status attnd_srv_attend_exec(const attnd_srv_exec_ctx *x,
                                   const Attnd__V1__AttendRequest *m,
                                   uint64_t t_arrival_ns,
                                   attnd_srv_attend_result *res,
                                   attnd_error *err);

/* The same from the encoded request bytes: reset x->arena, decode (in
 * place, attend_decode.c, when canonical: the tensors are read where they
 * are; else protobuf-c, whose INVALID_ARGUMENT names the message type when
 * they are not one), exec. data must stay unchanged during the call and,
 * since the reply does not point into it, may be reused after. */
attnd_status attnd_srv_attend_exec_bytes(const attnd_srv_exec_ctx *x,
                                         const uint8_t *data, size_t len,
                                         uint64_t t_arrival_ns,
                                         attnd_srv_attend_result *res,
                                         attnd_error *err);

#endif /* ATTND_SRV_ATTEND_EXEC_H */
