/* attnd_wire: the one hand-written codec of attnd's hot messages,
 * AttendRequest and AttendResponse of attnd.proto, for both sides (libattnd
 * and the server) and both transports (gRPC byte buffers, UCX active
 * messages). Every other message goes through protobuf-c as generated.
 *
 * Why by hand: a DeepSeek-V3 batch of 32 carries 4.7 MB of queries and
 * 4 MB of output per layer. Tensors therefore never pass through a
 * per-element or intermediate copy here: decoding hands out views into the
 * received bytes (offsets into the segments they arrived in); encoding
 * writes the framing around caller memory (a gather list) or converts the
 * engine's float32 output straight into the reply buffer.
 *
 * Exactness (tests/proto): the encoders write byte for byte what
 * protobuf_c_message_pack writes for the same message; the decoders accept
 * exactly the byte strings protobuf-c 1.4 accepts and read the same values
 * from them: unknown fields skipped, non-canonical but valid encodings
 * taken (over-long varints, unpacked repeated scalars, fields out of
 * order or repeated: last scalar wins, repeated message fields merged as
 * protobuf-c merges them), and everything protobuf-c refuses refused.
 *
 * Bytes come and go as segment lists (attnd_wire_in): one plain buffer (a
 * UCX receive buffer), a gRPC byte buffer's slices (attnd_wire_grpc.h), a
 * ucp iov. Nothing here knows a transport, allocates on its own, or keeps
 * state between calls.
 *
 * Little-endian hosts only: tensors travel as raw little-endian bytes.
 */
#ifndef ATTND_WIRE_H
#define ATTND_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "attnd.pb-c.h"
#include "attnd/status.h"
#include "attnd/types.h"

/* ---- input: a message in one or more segments ------------------------------
 * Either an array of segments or an accessor (for containers that are not
 * such an array, e.g. a gRPC slice buffer); segments may be empty. */

typedef struct attnd_wire_seg {
    const void *p;
    size_t len;
} attnd_wire_seg;

typedef struct attnd_wire_in {
    size_t n;                   /* segments */
    const attnd_wire_seg *segs; /* the segments; NULL: seg(), or else one */
    attnd_wire_seg (*seg)(const void *ctx, size_t i);
    const void *ctx;
    attnd_wire_seg one;         /* attnd_wire_in_flat's buffer */
    size_t len;                 /* total bytes (the init functions sum them) */
} attnd_wire_in;

/* One plain buffer; segments of an array; an accessor. */
void attnd_wire_in_flat(attnd_wire_in *in, const void *p, size_t len);
void attnd_wire_in_segs(attnd_wire_in *in, const attnd_wire_seg *segs, size_t n);
void attnd_wire_in_fn(attnd_wire_in *in, attnd_wire_seg (*seg)(const void *ctx, size_t i),
                      const void *ctx, size_t n);

/* Copy len bytes at offset off of the message to dst (caller checked the
 * range). */
void attnd_wire_copy(const attnd_wire_in *in, size_t off, size_t len, void *dst);
/* The same for len bytes of elements of dtype t (valid), checked while
 * copying: the index of the first NaN or infinity, or len / size of t
 * when there is none. Each piece is checked right after it is copied,
 * while it is still in cache: no second pass over memory. */
size_t attnd_wire_copy_checked(const attnd_wire_in *in, size_t off, size_t len, void *dst,
                               attnd_dtype t);
/* The bytes [off, off + len) as a pointer when they lie in one segment
 * (a view: valid while the input is), else NULL. len 0: a non-NULL
 * pointer that must not be read. */
const void *attnd_wire_view(const attnd_wire_in *in, size_t off, size_t len);

/* ---- AttendRequest ------------------------------------------------------- */

/* Encoding. The message is a protobuf-c struct built around the caller's
 * memory (tensor bytes, shapes, ids, positions point at it); it is only
 * read. */

/* As a gather list: the framing written to `frame` (at least
 * attnd_wire_request_frame_bound bytes), tensor data referenced in place.
 * For transports that send from a list (ucp iov). */
#define ATTND_WIRE_GATHER_MAX 5
typedef struct attnd_wire_gather {
    attnd_wire_seg e[ATTND_WIRE_GATHER_MAX];
    size_t n, total;
} attnd_wire_gather;
size_t attnd_wire_request_frame_bound(const Attnd__V1__AttendRequest *m);
void attnd_wire_request_gather(const Attnd__V1__AttendRequest *m, uint8_t *frame,
                               attnd_wire_gather *g);
/* In one buffer: the exact size, and the writer (tensors copied once). */
size_t attnd_wire_request_size(const Attnd__V1__AttendRequest *m);
void attnd_wire_request_write(const Attnd__V1__AttendRequest *m, uint8_t *dst);

/* What decoding learnt of q's and new_kv's values: a tensor whose data
 * spanned segments was gathered, and its elements checked for NaN and
 * infinities while being copied (a tensor left in place was not). */
typedef struct attnd_wire_tensor_check {
    int checked;      /* every whole element was checked */
    size_t nonfinite; /* then: the first NaN or infinity, or the element count */
} attnd_wire_tensor_check;

typedef struct attnd_wire_request_checks {
    attnd_wire_tensor_check q, new_kv;
} attnd_wire_request_checks;

/* Decoding into *m_p, allocated from `a` (an arena: nothing is freed one by
 * one; all of it is valid until the arena is reset). Bytes fields (ids,
 * tensor data) are views into the input when they lie in one segment;
 * those spanning segments are gathered into memory from `a` (tensors of a
 * valid dtype checked for non-finite elements on the way, reported in
 * *checks_p when it is not NULL). INVALID_ARGUMENT ("request: N bytes that
 * are not a valid attnd.v1.AttendRequest message") exactly where
 * protobuf-c's unpack fails; RESOURCE_EXHAUSTED when `a` has no memory.
 * *m_p and *checks_p set on success. */
attnd_status attnd_wire_request_decode(const attnd_wire_in *in, ProtobufCAllocator *a,
                                       Attnd__V1__AttendRequest **m_p,
                                       attnd_wire_request_checks *checks_p, attnd_error *err);

/* ---- AttendResponse -------------------------------------------------------
 *
 * The reply has one layout, which both sides compute with
 * attnd_wire_reply_plan from its shape: the server to encode it (in one
 * buffer, or as the gather list pre | out data | mid | lse data), the
 * client to receive a reply of known shape straight into its out/lse
 * buffers (it compares the framing it received with pre and mid):
 *
 *   [request_id] out{dtype, shape [B, S, Hq, d_v], data} [lse{F32, [B, S, Hq], data}]
 *   ^pre ..................................... ^out_off   ^mid ........... ^lse_off
 *   [chosen_groups chosen_tokens chosen_indptr chosen]   (sparse: return_pages)
 *   ^post_off
 *
 * Proto3 as protobuf-c packs it: a zero request_id and empty data are
 * omitted. A reply to return_pages ends with what was attended (post);
 * attnd_wire_reply_chosen reads it back. */

typedef struct attnd_wire_reply_desc {
    uint64_t request_id;
    attnd_dtype out_dtype; /* out's dtype on the wire */
    int64_t out_shape[4];  /* [B, S, Hq, d_v] */
    int has_lse;
    int64_t lse_shape[3];  /* [B, S, Hq] */
    /* return_pages: n_chosen_lists lists (0: none), chosen_indptr
     * [n_chosen_lists + 1] into chosen (as attnd_engine_ws reports them) */
    uint32_t chosen_groups;
    int chosen_tokens;
    size_t n_chosen_lists;
    const int32_t *chosen_indptr;
    const int64_t *chosen;
} attnd_wire_reply_desc;

#define ATTND_WIRE_REPLY_PRE_MAX 96
#define ATTND_WIRE_REPLY_MID_MAX 64
typedef struct attnd_wire_reply_layout {
    size_t total;                 /* bytes of the whole reply */
    size_t out_off, out_bytes;    /* out's data; out_off == pre_len */
    size_t lse_off, lse_bytes;    /* lse's data (0 bytes without lse) */
    size_t pre_len, mid_len;      /* framing before out's data, between the two */
    size_t post_off, post_len;    /* the chosen lists after lse (0 bytes: none) */
    uint8_t pre[ATTND_WIRE_REPLY_PRE_MAX];
    uint8_t mid[ATTND_WIRE_REPLY_MID_MAX];
} attnd_wire_reply_layout;

/* The layout of the reply d describes. Shapes are the caller's to bound
 * (dims >= 0, byte counts that fit size_t); a dtype of no size gives no
 * data bytes. */
void attnd_wire_reply_plan(const attnd_wire_reply_desc *d, attnd_wire_reply_layout *l);
/* Write the whole reply (l->total bytes) to dst: the framing, float32 out
 * converted to d->out_dtype on the way, lse (float32) as is. dst may have
 * any alignment. */
void attnd_wire_reply_write(const attnd_wire_reply_desc *d, const attnd_wire_reply_layout *l,
                            const float *out, const float *lse, uint8_t *dst);

/* Decoding: where things are. A tensor's data is a range of the input
 * (attnd_wire_copy / attnd_wire_view read it); shapes keep their first
 * ATTND_WIRE_MAX_DIMS entries and count all. */
#define ATTND_WIRE_MAX_DIMS 8
typedef struct attnd_wire_tensor_view {
    int present;
    int32_t dtype;
    size_t n_shape;
    int64_t shape[ATTND_WIRE_MAX_DIMS];
    size_t data_off, data_len;
} attnd_wire_tensor_view;

typedef struct attnd_wire_reply_view {
    uint64_t request_id;
    attnd_wire_tensor_view out, lse;
    uint32_t chosen_groups;
    int chosen_tokens;
    size_t n_chosen_indptr, n_chosen; /* values the reply carries */
} attnd_wire_reply_view;

/* Parse a reply (exactly what protobuf-c accepts, as for requests); INTERNAL
 * ("AttendResponse: malformed reply ...") otherwise: a server sent it. *v
 * set on success. */
attnd_status attnd_wire_reply_decode(const attnd_wire_in *in, attnd_wire_reply_view *v,
                                     attnd_error *err);
/* The chosen lists of a reply that attnd_wire_reply_decode accepted: the
 * first cap_indptr / cap_chosen values of each field into indptr / chosen
 * (either may be NULL with cap 0). */
void attnd_wire_reply_chosen(const attnd_wire_in *in, uint32_t *indptr, size_t cap_indptr,
                             uint64_t *chosen, size_t cap_chosen);

#endif /* ATTND_WIRE_H */
