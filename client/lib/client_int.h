/* Internal interfaces of libattnd (the client room). Not installed.
 *
 * Shape: an attnd_client owns one gRPC channel (its own TCP connection) and
 * the registered-call handles of every method, made once at connect. Every
 * RPC gets its own pluck completion queue, so calls on one client never
 * wait on each other's events and a client needs no lock for them; the only
 * shared mutable state is the cached model description (a mutex).
 *
 * Layers inside the room, each calling only downward:
 *   attend.c append.c stream.c session.c   the public calls
 *   attend_wire.c                          Attend args -> message, reply ->
 *                                          caller buffers (the bytes are
 *                                          proto/attnd_wire's)
 *   rpc.c scall.c                          one unary call / one streaming
 *                                          call over a pluck queue
 *   channel.c                              connect, channel args, methods
 *
 * Names: attnd_client_* public, attnd__client_* internal non-static.
 */
#ifndef ATTND_CLIENT_INT_H
#define ATTND_CLIENT_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>

#include "attnd.pb-c.h"
#include "attnd_ucx.h"
#include "attnd_wire.h"
#include "attnd/client.h"
#include "health.pb-c.h"

/* ---- the client (channel.c) ------------------------------------------------ */

typedef enum attnd__client_method {
    ATTND__CLIENT_M_CREATE_SESSION,
    ATTND__CLIENT_M_APPEND_KV,
    ATTND__CLIENT_M_ATTEND,
    ATTND__CLIENT_M_ATTEND_STREAM,
    ATTND__CLIENT_M_CLOSE_SESSION,
    ATTND__CLIENT_M_GET_STATS,
    ATTND__CLIENT_M_HEALTH_CHECK,
    ATTND__CLIENT_M_GET_ENDPOINT,
    ATTND__CLIENT_M_LOAD_WEIGHTS,
    ATTND__CLIENT_M_COUNT
} attnd__client_method;

struct attnd_client {
    grpc_channel *channel;
    void *methods[ATTND__CLIENT_M_COUNT]; /* grpc_channel_register_call handles */
    attnd_client_options opts;
    atomic_uint_fast64_t next_request_id;
    pthread_mutex_t model_mu;  /* guards the two fields below */
    int have_model;
    attnd_model_info model;    /* the served model, once learned */
    struct attnd__client_ucx *ucx; /* the UCX transport (ucx_transport.c);
                                      NULL: Attend goes over gRPC */
    /* initial metadata of every call: the bearer token (opts.token) */
    grpc_metadata md[1];
    size_t n_md;
};

/* Point a SEND_INITIAL_METADATA op at the client's metadata. */
static inline void attnd__client_initial_md(const attnd_client *c, grpc_op *op)
{
    op->data.send_initial_metadata.count = c->n_md;
    op->data.send_initial_metadata.metadata = c->n_md ? (grpc_metadata *)c->md : NULL;
}

/* The method path of m, e.g. "/attnd.v1.Attnd/Attend" (static storage). */
const char *attnd__client_method_path(attnd__client_method m);

/* The served model: the cached copy, or learned now with one GetStats. */
attnd_status attnd__client_model(attnd_client *c, attnd_model_info *m_p,
                                 attnd_error *err);
/* Remember what a CreateSession or GetStats reported. */
void attnd__client_model_cache(attnd_client *c, const attnd_model_info *m);
/* ModelInfo (may be NULL: zeroes) -> attnd_model_info, derived fields too. */
void attnd__client_model_from_pb(const Attnd__V1__ModelInfo *pb,
                                 attnd_model_info *m);

/* ---- status and messages (rpc.c) ------------------------------------------ */

/* Absolute deadline ms from now (<= 0: none). */
gpr_timespec attnd__client_deadline(int64_t ms);

/* A gRPC status and its details -> attnd_status, details copied to err. */
attnd_status attnd__client_grpc_status(grpc_status_code code,
                                       const grpc_slice *details,
                                       attnd_error *err);

/* Pack m into a new byte buffer of one slice (protobuf-c writes straight
 * into the slice, so tensors whose ProtobufCBinaryData point at caller
 * memory are copied exactly once). Caller owns the result. NULL: no memory. */
grpc_byte_buffer *attnd__client_pack(const ProtobufCMessage *m);

/* Unpack a whole reply with protobuf-c's default allocator; free with
 * protobuf_c_message_free_unpacked. NULL with INTERNAL in err when the
 * bytes are not such a message. For the small control replies only;
 * AttendResponse has its own decoder (attend_wire.c). */
ProtobufCMessage *attnd__client_unpack(const ProtobufCMessageDescriptor *d,
                                       grpc_byte_buffer *bb, attnd_error *err);

/* ---- one unary call (rpc.c) ------------------------------------------------
 * Caller-owned state of one unary RPC: attnd__client_rpc_start sends the
 * whole call as one batch (metadata, message, half-close, and the receives
 * of metadata, reply and status); attnd__client_rpc_finish plucks it. Used
 * by the sync calls (start + finish at once) and by attnd_call (finish in
 * attnd_call_wait). */
typedef struct attnd__client_rpc {
    grpc_completion_queue *cq;
    grpc_call *call;
    grpc_byte_buffer *send;        /* request; owned here */
    grpc_byte_buffer *recv;        /* reply after a successful finish */
    grpc_metadata_array md_initial, md_trailing;
    grpc_status_code status;
    grpc_slice details;
    int started;                   /* the batch is in flight or done */
    int finished;                  /* plucked */
} attnd__client_rpc;

/* Start method m with request `send` (ownership passes to r, even on
 * failure). On failure r needs no cleanup beyond attnd__client_rpc_cleanup,
 * which is always safe. */
attnd_status attnd__client_rpc_start(attnd__client_rpc *r, attnd_client *c,
                                     attnd__client_method m,
                                     grpc_byte_buffer *send, attnd_error *err);
/* Wait for the call. OK only when the status is OK and a reply came (in
 * r->recv, still owned by r). */
attnd_status attnd__client_rpc_finish(attnd__client_rpc *r, attnd_error *err);
/* Release everything r holds (cancelling and draining a call still in
 * flight). r may be zero-initialized and never started. */
void attnd__client_rpc_cleanup(attnd__client_rpc *r);

/* Sync unary call: pack req, run it, unpack the reply as type d. The reply
 * is the caller's (protobuf_c_message_free_unpacked). */
attnd_status attnd__client_unary(attnd_client *c, attnd__client_method m,
                                 const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *d,
                                 ProtobufCMessage **reply_p, attnd_error *err);

/* Sync unary call of raw request bytes (any bytes, valid message or not);
 * *reply_p (may be NULL) gets the reply byte buffer, the caller's to
 * destroy. For tests that must put on the wire what the typed API refuses
 * to build (a session id of the wrong length, a tensor whose byte length
 * disagrees with its shape). */
attnd_status attnd__client_unary_raw(attnd_client *c, attnd__client_method m,
                                     const void *data, size_t len,
                                     grpc_byte_buffer **reply_p,
                                     attnd_error *err);

/* ---- one streaming call (scall.c) ------------------------------------------
 * A call that stays open: messages are sent and received one at a time,
 * each wait bounded by the client's deadline_ms (the call itself has none,
 * so a decode loop or a long prefill may outlive any single deadline). A
 * server that ends the call early is noticed at the next send (it fails)
 * or receive (it finds the end of the stream); the status is then
 * received and returned. */
typedef struct attnd__client_scall {
    attnd_client *c;
    grpc_completion_queue *cq;
    grpc_call *call;
    grpc_metadata_array md_initial, md_trailing;
    grpc_status_code status;
    grpc_slice details;
    int md_received;     /* RECV_INITIAL_METADATA was part of a batch */
    int status_started;  /* the status batch was started */
    int status_done;     /* ...and plucked */
    int half_closed;
    /* tags: addresses of these, never dereferenced */
    char tag_open, tag_send, tag_recv, tag_status;
} attnd__client_scall;

attnd_status attnd__client_scall_open(attnd__client_scall *s, attnd_client *c,
                                      attnd__client_method m, attnd_error *err);
/* Send bb (the caller keeps ownership and destroys it after); close also
 * half-closes. A send the transport refuses means the server ended the
 * call: the call's status is returned (never OK; UNKNOWN if it said OK). */
attnd_status attnd__client_scall_send(attnd__client_scall *s,
                                      grpc_byte_buffer *bb, int close,
                                      attnd_error *err);
/* Receive the next message into *bb_p (caller-owned). When the server ended
 * the stream instead, *bb_p is NULL and the status is returned (OK when the
 * stream ended cleanly). */
attnd_status attnd__client_scall_recv(attnd__client_scall *s,
                                      grpc_byte_buffer **bb_p,
                                      attnd_error *err);
/* Wait for and return the call's final status. */
attnd_status attnd__client_scall_status(attnd__client_scall *s,
                                        attnd_error *err);
/* Cancel the call if it is still open, drain, free. Always safe on a
 * zero-initialized s. */
void attnd__client_scall_cleanup(attnd__client_scall *s);

/* ---- Attend wire (attend_wire.c) ------------------------------------------ */

/* What a reply must look like and where it goes: filled from the args by
 * attnd__client_attend_encode, used by attnd__client_attend_decode. */
typedef struct attnd__client_attend_dst {
    uint64_t request_id;
    attnd_dtype out_dtype;      /* resolved: q's dtype when INVALID */
    int64_t n_seqs, q_tokens, n_q_heads;
    void *out;
    size_t out_capacity;        /* bytes */
    float *lse;
    size_t lse_capacity;        /* floats */
    attnd_sparse_args *sparse;  /* a sparse call (any form): chosen lists go here */
} attnd__client_attend_dst;

/* An AttendRequest built around the caller's buffers (tensor data, shapes,
 * positions and session ids point at them), ready to pack. */
#define ATTND__CLIENT_STACK_IDS 64
typedef struct attnd__client_attend_msg {
    Attnd__V1__AttendRequest req;
    Attnd__V1__Tensor q_pb, kv_pb;
    ProtobufCBinaryData ids_stack[ATTND__CLIENT_STACK_IDS];
    ProtobufCBinaryData *ids;     /* ids_stack, or malloc'd for big batches */
} attnd__client_attend_msg;

/* The checks and the message of attnd__client_attend_encode, without
 * packing: *msg points into *a's buffers (valid while they are) and must
 * be released with attnd__client_attend_msg_cleanup once packed. */
attnd_status attnd__client_attend_prepare(attnd_client *c,
                                          const attnd_attend_args *a,
                                          attnd__client_attend_msg *msg,
                                          attnd__client_attend_dst *dst,
                                          attnd_error *err);
void attnd__client_attend_msg_cleanup(attnd__client_attend_msg *msg);

/* Check what the wire cannot express, check the result buffers against the
 * model when the query's shape matches it, add the sparse arguments of sp
 * (NULL: none; its given lists are copied into the message, its chosen
 * buffers are where the reply's lists go: dst points at sp), and write the
 * request (one copy of q and new_kv, into the request's slice). *bb_p is
 * the caller's. (The UCX transport sends prepare's message as
 * attnd_wire_request_gather's list instead: no copy.) */
attnd_status attnd__client_attend_encode(attnd_client *c,
                                         const attnd_attend_args *a,
                                         attnd_sparse_args *sp,
                                         grpc_byte_buffer **bb_p,
                                         attnd__client_attend_dst *dst,
                                         attnd_error *err);
/* Decode an AttendResponse where it lies, check dtype, shape, sizes and the
 * echoed request id, then copy out/lse straight into the caller's buffers
 * (their only copy). From a byte buffer's slices, or any attnd_wire_in. */
/* Sparse fields of s (NULL: none) into a prepared message, and where the
 * reply's chosen lists go into dst (attend_sparse.c). What the wire cannot
 * express (NULL lists or buffers for a nonzero count) is INVALID_ARGUMENT
 * naming the field, before anything is sent; s is then untouched. */
attnd_status attnd__client_attend_sparse_apply(attnd__client_attend_msg *msg,
                                               attnd__client_attend_dst *dst,
                                               attnd_sparse_args *s, attnd_error *err);
/* Read the chosen lists of a decoded reply into dst->sparse. */
attnd_status attnd__client_attend_chosen(const attnd_wire_in *in,
                                         const attnd_wire_reply_view *v,
                                         const attnd__client_attend_dst *dst, attnd_error *err);

attnd_status attnd__client_attend_decode(grpc_byte_buffer *bb,
                                         const attnd__client_attend_dst *dst,
                                         attnd_error *err);
attnd_status attnd__client_attend_decode_in(const attnd_wire_in *in,
                                            const attnd__client_attend_dst *dst,
                                            attnd_error *err);

/* ---- server timings (timing.c) --------------------------------------------- */

/* Fill *t from the "attnd-timing" entry of trailing metadata md (all 0,
 * valid 0 when there is none or it cannot be read). */
void attnd__client_timing_parse(const grpc_metadata_array *md,
                                attnd_server_timing *t);

/* ---- the UCX transport (ucx_transport.c) ----------------------------------
 * One ucp context, worker and endpoint per client, made at connect after a
 * GetEndpoint call; every worker operation runs under the transport's
 * mutex, so any thread may drive progress for every call in flight. A call
 * is caller-owned state (inside attnd_call, or on the stack for the sync
 * forms): start sends the encoded request with the call's id; wait
 * progresses until the reply has been decoded into dst (or failed), the
 * client's deadline passed (DEADLINE_EXCEEDED; the call is withdrawn), or
 * the endpoint failed (UNAVAILABLE). */
typedef struct attnd__client_ucx_call {
    attnd__client_attend_dst dst;
    grpc_byte_buffer *send;   /* the request bytes, until sent; owned */
    uint64_t id;
    attnd_ucx_hdr hdr;        /* sent; lives until the send completes */
    attnd_server_timing timing; /* from the reply header */
    void *send_req;           /* ucp request in flight, or NULL */
    void *recv_req;           /* rendezvous receive in flight, or NULL */
    void *rbuf;               /* rendezvous reply bytes (from the pool) */
    size_t rcap;
    /* a rendezvous reply received straight into dst (ucx_reply.c): its
     * planned layout, and the framing around out and lse as received */
    uint32_t d_v;             /* the served model's, when known */
    int direct;
    attnd_wire_reply_layout layout;
    unsigned char pre_got[ATTND_WIRE_REPLY_PRE_MAX], mid_got[ATTND_WIRE_REPLY_MID_MAX];
    uint64_t riov[8];         /* ucp_dt_iov_t[4] */
    int send_done, done, listed;
    attnd_status st;
    attnd_error err;
    struct attnd__client_ucx_call *next, *prev;
} attnd__client_ucx_call;

/* After the gRPC channel is ready: GetEndpoint, then connect. */
attnd_status attnd__client_ucx_connect(attnd_client *c, const char *target,
                                       attnd_error *err);
/* Close the endpoint, free the transport. Safe when c->ucx is NULL. */
void attnd__client_ucx_destroy(attnd_client *c);
/* Send the request in bb (ownership passes to k, even on failure) for the
 * reply described by dst. Nothing to clean up on failure. */
attnd_status attnd__client_ucx_start(attnd_client *c, attnd__client_ucx_call *k,
                                     grpc_byte_buffer *bb,
                                     const attnd__client_attend_dst *dst,
                                     attnd_error *err);
/* Sync Attend over UCX: prepare, send a gather list built around the
 * caller's tensors (attnd_wire_request_gather; no copy), wait. */
attnd_status attnd__client_ucx_attend(attnd_client *c, const attnd_attend_args *a,
                                      attnd_error *err);
/* The same with sparse arguments (NULL: none). */
attnd_status attnd__client_ucx_attend_sparse(attnd_client *c, const attnd_attend_args *a,
                                             attnd_sparse_args *sp, attnd_error *err);
/* Wait as above; k holds nothing afterwards. */
attnd_status attnd__client_ucx_wait(attnd_client *c, attnd__client_ucx_call *k,
                                    attnd_error *err);

#endif /* ATTND_CLIENT_INT_H */
