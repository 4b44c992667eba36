/* Transport-agnostic execution of one AttendRequest.
 *
 * Every transport that carries Attend hands the request's bytes to
 * attnd_srv_attend_exec_bb (gRPC unary and stream handlers: the received
 * byte buffer) or attnd_srv_attend_exec_bytes (the UCX endpoint: one
 * buffer), which decode it in place (attnd_wire: the tensors are read where
 * they arrived), validate it, run the engine and return what the reply
 * must carry (attnd_srv_attend_reply: pointers into the context's engine
 * workspace) plus per-call timings. Encoding the reply is the transport's:
 * attnd_srv_attend_reply_pack (one grpc slice) or
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
    /* the caller's tenant tag (auth.h): every session must be its own,
     * else NOT_FOUND as for an unknown one; 0: no --token-file, no check */
    uint64_t owner;
} attnd_srv_exec_ctx;

/* Per-call timings in nanoseconds (CLOCK_MONOTONIC differences). Transports
 * and benchmarks read these; a field a path does not measure stays 0. */
typedef struct attnd_srv_attend_times {
    uint64_t t_queue_ns;   /* arrival at the transport to the start of exec */
    uint64_t t_decode_ns;  /* decoding (attnd_srv_attend_exec_bytes/_bb) */
    uint64_t t_validate_ns;
    uint64_t t_kernel_ns;  /* the engine's attend (local compute); group: the
                              leader's own share */
    uint64_t t_fanout_ns;  /* group: the rest of the group call (plan,
                              scatter, waiting for peers beyond the own
                              share, combine); 0 on one rank. kernel +
                              fanout = the call's attend, counted once */
    uint64_t t_total_ns;   /* the whole exec */
    uint64_t t_encode_ns;  /* reply encoding, set by the transport */
    uint64_t t_select_ns;  /* sparse: page selection, part of t_kernel_ns
                              (a lone worker's; a group leader's own share) */
} attnd_srv_attend_times;

/* Record a successful Attend's split into shard s (NULL: nothing). */
void attnd_srv_attend_times_record(attnd_srv_mshard *s, const attnd_srv_attend_times *t);

/* Trailing-metadata key of a unary Attend's timings (rpc_attend.c). */
#define ATTND_SRV_TIMING_KEY "attnd-timing"

typedef struct attnd_srv_attend_result {
    attnd_srv_attend_reply reply; /* encode with attnd_srv_attend_reply_* */
    attnd_srv_attend_times t;
    uint64_t request_id;          /* exec_in/_bytes/_bb: the request's id once
                                     decoded, set also when it then fails
                                     (for logs); 0 if it did not decode */
} attnd_srv_attend_result;

/* Validate m (decoded into x->arena) and run it. checks (may be NULL): what
 * decoding already learnt of its tensors' values (attnd_wire), so that
 * validation does not read them again. On success *res describes
 * the reply; its tensors point into x->ws and stay valid until the next
 * exec on x. t_arrival_ns: when the transport received the request (0:
 * unknown, t_queue_ns stays 0). Errors are the validation's and the
 * engine's codes, with messages naming the field. */
attnd_status attnd_srv_attend_exec(const attnd_srv_exec_ctx *x,
                                   const Attnd__V1__AttendRequest *m,
                                   const attnd_wire_request_checks *checks,
                                   uint64_t t_arrival_ns,
                                   attnd_srv_attend_result *res,
                                   attnd_error *err);

/* The same from the encoded request: reset x->arena, decode it in place
 * (attnd_wire_request_decode: tensors read where they are, only bytes that
 * span segments gathered into the arena; INVALID_ARGUMENT naming the
 * message type exactly where protobuf-c would refuse the bytes), exec. The
 * input must stay unchanged during the call and, since the reply does not
 * point into it, may be released after. t_queue_ns ends where decoding
 * starts; t_decode_ns is the decoding. */
attnd_status attnd_srv_attend_exec_in(const attnd_srv_exec_ctx *x,
                                      const attnd_wire_in *in,
                                      uint64_t t_arrival_ns,
                                      attnd_srv_attend_result *res,
                                      attnd_error *err);
/* ...from one buffer (the UCX endpoint's receive buffer)... */
attnd_status attnd_srv_attend_exec_bytes(const attnd_srv_exec_ctx *x,
                                         const uint8_t *data, size_t len,
                                         uint64_t t_arrival_ns,
                                         attnd_srv_attend_result *res,
                                         attnd_error *err);
/* ...and from a received gRPC message (read from its slices; a compressed
 * one is decompressed first). bb NULL (no message): INVALID_ARGUMENT. */
attnd_status attnd_srv_attend_exec_bb(const attnd_srv_exec_ctx *x,
                                      grpc_byte_buffer *bb,
                                      uint64_t t_arrival_ns,
                                      attnd_srv_attend_result *res,
                                      attnd_error *err);

#endif /* ATTND_SRV_ATTEND_EXEC_H */
