/* The service's side of the wire: gRPC byte buffers <-> messages.
 *
 * Messages arrive as grpc_byte_buffers of one or more slices. A control
 * request is made contiguous (no copy when it is one plain slice; else
 * copied into a reused per-thread buffer), then unpacked by protobuf-c into
 * a per-thread arena that is reset before every message, so decoding a
 * steady stream of same-sized requests allocates nothing. Replies are
 * packed straight into one grpc_slice. AttendRequest and AttendResponse
 * are not protobuf-c's: attnd_wire (proto/attnd_wire.h) decodes requests
 * in place from the byte buffer's slices (attend_exec.c) and encodes
 * replies with the float32 engine output converted straight into the
 * reply (below).
 *
 * Nothing here knows about calls or threads; tests and fuzzers use it as is.
 */
#ifndef ATTND_SRV_CODEC_H
#define ATTND_SRV_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/byte_buffer.h>
#include <protobuf-c/protobuf-c.h>

#include "attnd/status.h"
#include "attnd/types.h"
#include "attnd_wire.h"

/* Buffers that grow to the largest message seen shrink back when a whole
 * window of ATTND_SRV_TRIM_WINDOW messages used less than a quarter of
 * them, so one huge request does not pin its size in every thread forever;
 * blocks under ATTND_SRV_TRIM_MIN are never shrunk. */
#define ATTND_SRV_TRIM_WINDOW 256
#define ATTND_SRV_TRIM_MIN ((size_t)16 << 20)

/* ---- arena ---------------------------------------------------------------
 * A bump allocator behind a ProtobufCAllocator. alloc never fails for want
 * of room (it chains an overflow chunk); free is a no-op; reset drops
 * everything at once and, if the last cycle overflowed, regrows the main
 * block to the cycle's total so that the next cycle fits without malloc
 * (and trims it, as above). Caller-owned: init before use, cleanup after. */
typedef struct attnd_srv_arena {
    ProtobufCAllocator pc; /* hand &pc to protobuf-c */
    unsigned char *base;
    size_t cap, used;
    void *overflow;        /* chain of malloc'd chunks of this cycle */
    size_t overflow_bytes; /* bytes handed out from them */
    int failed;            /* an allocation found no memory this cycle */
    size_t window_max;     /* largest cycle of the current trim window */
    unsigned window_n;     /* cycles in it */
} attnd_srv_arena;

void attnd_srv_arena_init(attnd_srv_arena *a, size_t initial_cap);
void attnd_srv_arena_cleanup(attnd_srv_arena *a);
void attnd_srv_arena_reset(attnd_srv_arena *a);
/* 16-byte aligned; NULL only when the system is out of memory. Valid until
 * the next reset. */
void *attnd_srv_arena_alloc(attnd_srv_arena *a, size_t n);

/* ---- contiguous request bytes ------------------------------------------ */

/* A growable byte buffer, trimmed as above; caller-owned (zero-initialize,
 * then attnd_srv_buf_cleanup). */
typedef struct attnd_srv_buf {
    unsigned char *p;
    size_t cap;
    size_t window_max;
    unsigned window_n;
} attnd_srv_buf;

void attnd_srv_buf_cleanup(attnd_srv_buf *b);

/* The bytes of bb in one piece: a pointer into bb itself when it is a
 * single uncompressed slice, else a copy in *scratch (grown as needed).
 * *data_p stays valid while bb and *scratch live unchanged.
 * RESOURCE_EXHAUSTED (no memory) or INVALID_ARGUMENT (undecodable). */
attnd_status attnd_srv_bb_flatten(grpc_byte_buffer *bb, attnd_srv_buf *scratch,
                                  const uint8_t **data_p, size_t *len_p,
                                  attnd_error *err);

/* Unpack `len` bytes as message type d into arena a. NULL and an
 * INVALID_ARGUMENT naming the message type when the bytes are not one. */
ProtobufCMessage *attnd_srv_unpack(const ProtobufCMessageDescriptor *d,
                                   attnd_srv_arena *a, const uint8_t *data,
                                   size_t len, attnd_error *err);

/* Pack m into a new byte buffer (one slice). The caller owns the result and
 * frees it with grpc_byte_buffer_destroy (or hands it to a send op). */
grpc_byte_buffer *attnd_srv_pack(const ProtobufCMessage *m);

/* ---- AttendResponse ------------------------------------------------------
 * Encoded by attnd_wire (proto/attnd_wire.h), the one Attend codec; these
 * are its glue to the service's transports. */

/* What an AttendResponse carries: the reply's shape (desc) and the
 * engine's float32 output, converted to desc.out_dtype while encoding;
 * lse NULL unless desc.has_lse. */
typedef struct attnd_srv_attend_reply {
    attnd_wire_reply_desc desc;
    const float *out;
    const float *lse;
} attnd_srv_attend_reply;

/* The encoded size, and the reply written in that many bytes at dst. */
size_t attnd_srv_attend_reply_size(const attnd_srv_attend_reply *r);
void attnd_srv_attend_reply_write(const attnd_srv_attend_reply *r, uint8_t *dst);
/* The reply in a new byte buffer of one slice, written once (the output
 * converted straight into the slice); caller-owned as for attnd_srv_pack. */
grpc_byte_buffer *attnd_srv_attend_reply_pack(const attnd_srv_attend_reply *r);

#endif /* ATTND_SRV_CODEC_H */
