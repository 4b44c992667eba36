/* libattnd: the C client of an attnd attention worker.
 *
 * A compute node connects once, creates a session per sequence, streams the
 * prefill KV with attnd_client_append_kv, then per layer and decode step
 * sends the batch's queries (and each session's new KV entry) with
 * attnd_client_attend, its async form, or an attnd_stream for a decode loop.
 * The transport is gRPC (HTTP/2); the calls below do not depend on it.
 *
 * Errors: every function returns an attnd_status (0 on success, the negated
 * gRPC code otherwise) and, when err is not NULL, fills it with the code and
 * the server's message, which names the offending field.
 *
 * Ownership: the client never frees what the caller passed; callers own
 * query, KV and output buffers. Handles (attnd_client, attnd_call,
 * attnd_stream) are created and freed by the functions named beside them.
 * A client may be used from several threads at once; one attnd_stream or
 * attnd_call from one thread at a time.
 */
#ifndef ATTND_CLIENT_H
#define ATTND_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "attnd/status.h"
#include "attnd/types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct attnd_client attnd_client;

/* How Attend (unary, async and AttendStream) travels. Control calls
 * (sessions, AppendKV, stats, health) always use gRPC. */
typedef enum attnd_transport {
    ATTND_TRANSPORT_GRPC = 0, /* HTTP/2 (the default) */
    ATTND_TRANSPORT_UCX = 1,  /* UCX active messages: connect exchanges UCX
                                 worker addresses with the server
                                 (GetEndpoint) and connects by address
                                 (shared memory when both run on one host);
                                 UNAVAILABLE when the server runs without
                                 --ucx-listen */
} attnd_transport;

typedef struct attnd_client_options {
    int64_t deadline_ms;       /* per call; default 30000. Streams (AppendKV,
                                  AttendStream) have no overall deadline:
                                  each message sent or awaited gets this
                                  long, else the stream is cancelled */
    int64_t connect_timeout_ms; /* connect waits for the channel; 5000 */
    size_t max_message_bytes;  /* send and receive limit; 256 MiB */
    attnd_transport transport; /* for Attend; ATTND_TRANSPORT_GRPC */
    int32_t ucx_spin_us;       /* UCX: busy-poll this long for a reply
                                  before sleeping on the worker's event fd;
                                  default 1000 */
    /* Security (issue 15; default NULL: plaintext, no token). Added at the
     * end: a program built against an older client.h passes a shorter
     * struct, so it must be rebuilt to set them. connect reads the strings
     * and files and keeps copies; the caller's may go afterwards. */
    const char *tls_ca_file;   /* PEM CA certificate(s) the server's chain
                                  must lead to: gRPC over TLS. NULL: no
                                  TLS, unless tls_cert_file is set (then
                                  gRPC's default roots) */
    const char *tls_cert_file; /* mutual TLS: this client's PEM certificate
                                  chain (the server runs --tls-client-ca) */
    const char *tls_key_file;  /* ... and its PEM private key */
    const char *tls_server_name; /* the name the server's certificate must
                                  carry when it is not the target's host
                                  (e.g. an IP target); NULL: the host */
    const char *token;         /* bearer token sent with every call as
                                  "authorization: Bearer TOKEN" (the
                                  server's --token-file); NULL: none. Over
                                  plaintext anyone on the path reads it:
                                  use TLS beyond loopback */
} attnd_client_options;

/* Defaults, as above. */
void attnd_client_options_init(attnd_client_options *o);

/* Connect to "host:port" (any gRPC target). Waits until the channel is
 * ready or connect_timeout_ms passes (UNAVAILABLE; also when the TLS
 * handshake fails: a server certificate not signed by tls_ca_file, or a
 * server that wants a client certificate and got none). opts may be NULL;
 * an unreadable TLS file is INVALID_ARGUMENT naming the field. A token the
 * server does not know fails each call UNAUTHENTICATED. Free with
 * attnd_client_destroy. */
attnd_status attnd_client_connect(const char *target,
                                  const attnd_client_options *opts,
                                  attnd_client **client_p, attnd_error *err);
void attnd_client_destroy(attnd_client *c);

/* What the worker serves, as CreateSession and GetStats report it. */
typedef struct attnd_model_info {
    char name[64];
    attnd_attn_kind kind;
    uint32_t n_layers;
    uint32_t n_q_heads;
    uint32_t n_kv_heads;
    uint32_t head_dim;   /* GQA */
    uint32_t d_latent;   /* MLA */
    uint32_t d_rope;     /* MLA */
    float scale;
    attnd_dtype kv_dtype;
    uint32_t page_size;
    /* derived: query width per head, output width per head, elements of one
     * token's KV entry (MLA d_latent + d_rope; GQA 2 * n_kv_heads * head_dim) */
    uint32_t d_k, d_v, kv_token_elems;
} attnd_model_info;

/* Create a session for `model` (NULL or "" = the worker's model), reserving
 * pages for max_tokens (0: no reservation). model_p may be NULL. */
attnd_status attnd_client_create_session(attnd_client *c, const char *model,
                                         uint32_t max_tokens,
                                         attnd_session_id *id_p,
                                         attnd_model_info *model_p,
                                         attnd_error *err);
attnd_status attnd_client_close_session(attnd_client *c,
                                        const attnd_session_id *id,
                                        attnd_error *err);

/* One prefill chunk: n_tokens KV entries ([n_tokens][kv_token_elems] of
 * dtype) for one layer of one session, starting at `start`. The wire shape
 * ([T, d_c + d_r] MLA, [T, 2, Hkv, D] GQA) comes from the served model,
 * which a client learns from CreateSession or GetStats (one GetStats on
 * first use if it has seen neither). */
typedef struct attnd_kv_chunk {
    attnd_session_id session;
    uint32_t layer;
    uint64_t start;
    uint32_t n_tokens;
    uint32_t kv_token_elems;
    attnd_dtype dtype;
    const void *data;
} attnd_kv_chunk;

/* Send chunks in order over one AppendKV stream, applied all or nothing:
 * each chunk must start where its layer ends counting the chunks before it
 * in this call; the server makes them visible together when the stream
 * ends, or (any failure: a refused chunk, RESOURCE_EXHAUSTED, a broken
 * stream, the deadline) applies none of them, so a failed call can be
 * retried whole. While the call is open, its layers refuse other appends
 * (ABORTED) and Attend sees none of its chunks. *applied_p (may be NULL):
 * n on success, 0 on failure (kept for source compatibility: the status
 * says it all). A call that fails after its last chunk went out (the
 * deadline, a lost connection) may have been committed, as with any RPC;
 * a retry then fails FAILED_PRECONDITION at its first chunk. */
attnd_status attnd_client_append_kv(attnd_client *c,
                                    const attnd_kv_chunk *chunks, size_t n,
                                    size_t *applied_p, attnd_error *err);

/* A tensor argument: dtype, shape and caller-owned data (row-major); its
 * byte count is the shape's product times the dtype's size. A dtype or
 * shape the server does not accept is sent as given (data empty when the
 * dtype has no size) so that the server's message names the field. */
typedef struct attnd_tensor {
    attnd_dtype dtype;
    int32_t ndim;
    int64_t shape[6];
    const void *data;
} attnd_tensor;

/* One layer's decode step for a batch of sessions. */
typedef struct attnd_attend_args {
    uint32_t layer;
    uint32_t n_seqs;
    const attnd_session_id *sessions; /* [n_seqs], distinct */
    attnd_tensor q;        /* [n_seqs, S, Hq, d_k] or [n_seqs, Hq, d_k] */
    attnd_tensor new_kv;   /* data NULL: none; else [n_seqs, kv entry...]:
                              MLA [n, d_k], GQA [n, 2, Hkv, D]; with S > 1
                              query tokens [n, S, kv entry...] (query token
                              s sees the layer's first L - (S - 1 - s)
                              tokens, L counted after the append) */
    const uint64_t *positions; /* NULL, or [n_seqs]: where the first of each
                                  session's new_kv entries must land */
    attnd_dtype out_dtype; /* INVALID (0): q's dtype */
    /* Results, caller-owned: out gets [n_seqs, S, Hq, d_v] of out_dtype
     * (out_capacity bytes available); lse, when not NULL, gets float32
     * [n_seqs, S, Hq] (lse_capacity floats available). */
    void *out;
    size_t out_capacity;
    float *lse;
    size_t lse_capacity;
    /* Nonzero: a worker holding this layer's W_UV (see
     * attnd_client_load_mla_weights) returns out[h] = latent out[h] .
     * W_UV[h], [n_seqs, S, Hq, d_v] (MLA; a group's ranks each project
     * their part, and the group sums or merges d_v-wide rows). */
    int up_project;
    /* MLA: which form q has (the wire says it; nothing is guessed from the
     * shape). ATTND_Q_ABSORBED (0, the default): q [.., Hq, d_c + d_rope],
     * out [.., Hq, d_c] (or d_v with up_project). ATTND_Q_HEADS, the
     * narrow wire: q [n_seqs, S, Hq, d_nope + d_rope] as a serving stack
     * holds it, out [n_seqs, S, Hq, d_v]; the worker absorbs q_nope with
     * the layer's W_UK and up-projects with its W_UV (both loaded by
     * attnd_client_load_mla_weights). Added after up_project, in what was
     * the struct's tail padding: its size is unchanged, and a caller that
     * zero-initializes it (= {0}, designated initializers, memset) gets
     * the absorbed form, as before. */
    attnd_q_form q_form;
} attnd_attend_args;

/* Synchronous Attend. On success out (and lse) are filled; on failure
 * their contents are unspecified. Refused here, before anything is sent
 * (INVALID_ARGUMENT): NULL pointers, more than 6 dims, and out_capacity /
 * lse_capacity smaller than the reply when q's shape matches the served
 * model (learned as for attnd_kv_chunk); a reply that still does not fit
 * fails INVALID_ARGUMENT after the call. */
attnd_status attnd_client_attend(attnd_client *c, const attnd_attend_args *a,
                                 attnd_error *err);

/* Asynchronous Attend: the request is encoded and sent before this returns
 * (the q/new_kv buffers may be reused at once); out/lse are written by
 * attnd_call_wait, so they and *a's result fields must stay valid until
 * then. Every started call must be waited on exactly once. */
typedef struct attnd_call attnd_call;
attnd_status attnd_client_attend_async(attnd_client *c,
                                       const attnd_attend_args *a,
                                       attnd_call **call_p, attnd_error *err);
/* Wait for the call, fill its results, and free it. */
attnd_status attnd_call_wait(attnd_call *call, attnd_error *err);

/* The server's account of one Attend, in nanoseconds, from the call's
 * trailing metadata "attnd-timing" ("q=..,v=..,k=..,f=..,e=..") over
 * gRPC, or from the reply header over UCX (proto/attnd_ucx.h): queue
 * (the server taking the call through decoding it), validation, kernel
 * (the engine's attend; on a worker group the leading rank's own share of
 * it), fan-out (worker groups only, else 0: the rest of the group call --
 * planning, sending the other ranks their parts, waiting for them beyond
 * the leader's own share, combining) and reply encoding. The five are
 * disjoint intervals of the server's handling, each counted once, so their
 * sum is at most the round trip the client measured; what it measured
 * beyond their sum is the network's and both sides' transport share.
 * valid is 0 (and the rest 0) when the server sent none. */
typedef struct attnd_server_timing {
    int valid;
    uint64_t queue_ns, validate_ns, kernel_ns, fanout_ns, encode_ns;
} attnd_server_timing;

/* attnd_call_wait that also fills *timing_p (may be NULL) when the call
 * succeeded; on failure *timing_p is left as it was. */
attnd_status attnd_call_wait_timed(attnd_call *call,
                                   attnd_server_timing *timing_p,
                                   attnd_error *err);

/* A decode loop over one AttendStream: each attnd_stream_attend sends one
 * request and waits for its response. A failed request ends the stream
 * (every later call returns the same status); close it and open another.
 * A request refused before sending (see attnd_client_attend) does not. */
typedef struct attnd_stream attnd_stream;
attnd_status attnd_client_stream_open(attnd_client *c, attnd_stream **s_p,
                                      attnd_error *err);
attnd_status attnd_stream_attend(attnd_stream *s, const attnd_attend_args *a,
                                 attnd_error *err);
/* Half-close, collect the final status, free the stream. */
attnd_status attnd_stream_close(attnd_stream *s, attnd_error *err);

/* ---- sparse attention (README "Sparse attention") ---------------------------
 * A session created with a policy attends sparsely where the policy says:
 * ATTND_SPARSE_FULL (every token), _STREAMING (the pages of the first
 * `sink` and last `window` tokens; window >= 64), _TOPK_PAGES (Quest: the
 * topk_pages, or topk_fraction of the, pages whose key bounds score best,
 * with the sink pages and those of the newest tokens), _GIVEN_PAGES /
 * _GIVEN_TOKENS (the pages or tokens each Attend names:
 * attnd_client_attend_sparse, its async form, attnd_stream_attend_sparse).
 * Rules override the default for layers
 * [layer_begin, layer_end) and, GQA only, KV heads [head_begin, head_end)
 * (0, 0: all); later rules win. Bad policies: INVALID_ARGUMENT naming the
 * field (policy.window, policy_table[2].head_end, ...). */
enum {
    ATTND_SPARSE_FULL = 0,
    ATTND_SPARSE_STREAMING = 1,
    ATTND_SPARSE_TOPK_PAGES = 2,
    ATTND_SPARSE_GIVEN_PAGES = 3,
    ATTND_SPARSE_GIVEN_TOKENS = 4,
};

typedef struct attnd_sparse_policy {
    int kind; /* ATTND_SPARSE_* */
    uint32_t sink, window, topk_pages;
    float topk_fraction;
} attnd_sparse_policy;

typedef struct attnd_sparse_rule {
    uint32_t layer_begin, layer_end, head_begin, head_end;
    attnd_sparse_policy policy;
} attnd_sparse_rule;

/* attnd_client_create_session with a policy (NULL: full) and n_rules rules. */
attnd_status attnd_client_create_session_policy(attnd_client *c, const char *model,
                                                uint32_t max_tokens,
                                                const attnd_sparse_policy *policy,
                                                const attnd_sparse_rule *rules, uint32_t n_rules,
                                                attnd_session_id *id_p,
                                                attnd_model_info *model_p, attnd_error *err);

/* The sparse part of an Attend. given_*: the pages or token positions
 * layers with a given policy attend, given_groups lists per session (1, or
 * the model's KV heads), list i * given_groups + g =
 * given_idx[given_indptr[k] .. given_indptr[k + 1]), strictly ascending
 * (given_groups 0: none). return_pages: the reply says what each (session,
 * group) attended, into chosen_indptr (capacity entries) and chosen
 * (capacity entries): n_chosen_lists = n_seqs * chosen_groups lists of
 * logical pages (or token positions when chosen_tokens), ready to be given
 * to a given-pages layer; a reply larger than the capacities fails
 * INVALID_ARGUMENT naming them. */
typedef struct attnd_sparse_args {
    uint32_t given_groups;
    const uint32_t *given_indptr;
    const uint64_t *given_idx;
    size_t n_given_idx;
    int return_pages;
    uint32_t *chosen_indptr;
    size_t chosen_indptr_capacity;
    uint64_t *chosen;
    size_t chosen_capacity;
    /* filled by a successful call with return_pages */
    uint32_t chosen_groups;
    int chosen_tokens;
    size_t n_chosen_lists, n_chosen;
} attnd_sparse_args;

/* attnd_client_attend with sparse arguments (s NULL: the same as it), over
 * gRPC or UCX, whichever the client uses. A NULL given_indptr (given_groups
 * > 0), given_idx (n_given_idx > 0) or chosen buffer (capacity > 0) is
 * INVALID_ARGUMENT naming it, before anything is sent. */
attnd_status attnd_client_attend_sparse(attnd_client *c, const attnd_attend_args *a,
                                        attnd_sparse_args *s, attnd_error *err);

/* attnd_client_attend_async with sparse arguments (s NULL: the same as
 * it), over gRPC or UCX. The given lists are copied into the request
 * before this returns (like q, they may be reused at once); the chosen
 * lists and s's result fields are written by attnd_call_wait, so *s and
 * its chosen buffers must stay valid, and untouched, until then (one
 * attnd_sparse_args per call in flight). A pipelined TidalDecode step:
 * start layer l of micro-batch A with return_pages, start other work, wait
 * A, start layer l + 1 of A with A's chosen lists as its given lists. */
attnd_status attnd_client_attend_sparse_async(attnd_client *c, const attnd_attend_args *a,
                                              attnd_sparse_args *s, attnd_call **call_p,
                                              attnd_error *err);

/* attnd_stream_attend with sparse arguments (s NULL: the same as it), over
 * gRPC (the AttendStream call) or UCX. As there, a request the server
 * refuses (bad given indices: INVALID_ARGUMENT naming the field, as
 * attnd_client_attend_sparse) ends the stream; one refused here before
 * sending does not. */
attnd_status attnd_stream_attend_sparse(attnd_stream *st, const attnd_attend_args *a,
                                        attnd_sparse_args *s, attnd_error *err);

typedef struct attnd_stats {
    uint64_t sessions, max_sessions;
    uint64_t pages_total, pages_used, pages_reserved, page_bytes;
    uint64_t attend_calls, attend_sequences;
    uint64_t append_calls, tokens_appended;
    uint64_t errors, kv_bytes_read, uptime_ms;
    /* worker group (0 / "" on a lone worker): size, this rank, its sharding
     * mode, peers connected now, the missing ranks ("1,2"), requests failed
     * for a missing peer */
    uint32_t group_size, group_rank, group_connected;
    char group_mode[16];
    char group_missing[128];
    uint64_t group_peer_failures;
    /* sparse attention: KV bytes dense attention of the same calls would
     * have read (beside kv_bytes_read), key bounds read by page selection,
     * its time and calls, pages streaming gave back */
    uint64_t kv_bytes_dense, select_bytes_read, select_ns, select_calls, pages_evicted;
    /* UCX endpoints the server holds now (Attend clients, group peers) and
     * the transports UCX really uses for each: "client 3 (pid 1234):
     * sysv/memory cma/memory; rank 1: tcp/lo" (truncated to fit) */
    uint32_t ucx_endpoints;
    char ucx_transports[512];
    /* whose figures these are: "global", or "tenant NAME" when the server
     * runs --token-file and the token is not an admin's (then the figures
     * above are the tenant's own, max_sessions and pages_total its limits);
     * sessions closed for idleness (--session-idle-ttl) and their pages */
    char stats_scope[80];
    uint64_t sessions_expired, pages_expired;
} attnd_stats;

/* GetStats; model_p may be NULL. */
attnd_status attnd_client_get_stats(attnd_client *c, attnd_stats *st,
                                    attnd_model_info *model_p,
                                    attnd_error *err);

/* The worker's KV tiers and durability (GetStats; worker/TIERS.md). Pages
 * are of page_bytes; memory_* is the fast tier (host RAM, or GPU HBM);
 * below* the tier under it ("disk" for --kv-dir, "host" for --kv-host, ""
 * without one), whose slots hold one page each. */
typedef struct attnd_tier_stats {
    uint64_t pages_held, pages_capacity, page_bytes; /* every tier together */
    uint64_t memory_pages_total, memory_pages_used;
    char below[8];
    uint64_t below_slots, below_slots_used, below_slot_bytes;
    uint64_t pages_moved_down, pages_moved_up, pages_prefetched;
    uint64_t load_waits, pages_bad, write_failures;
    int durability;              /* 0 off, 1 sync, 2 batch (attnd --durable) */
    uint32_t durable_window_ms;  /* batch */
    uint64_t wal_durable_lsn, wal_bytes_written, wal_syncs, checkpoints;
    uint64_t sessions_recovered, sessions_lost; /* at the worker's last start */
    /* with a session: its KV bytes in memory and below (a page with a copy
     * below counts in both) */
    uint64_t session_memory_bytes, session_below_bytes;
} attnd_tier_stats;

/* GetStats' tier figures; session (may be NULL): also that session's
 * bytes (NOT_FOUND for an unknown one). */
attnd_status attnd_client_get_tier_stats(attnd_client *c, const attnd_session_id *session,
                                         attnd_tier_stats *st, attnd_error *err);

/* LoadWeights for the narrow MLA wire: give the worker (lone or group)
 * serving an MLA model layer `layer`'s W_UK, [Hq, d_nope, d_c] (head h's
 * q_nope -> absorbed latent query: q_c[h] = q_nope[h] . W_UK[h]), and/or
 * W_UV, [Hq, d_c, d_v] (head h's latent output -> value: v[h] = o[h] .
 * W_UV[h]), row-major float32/bf16/f16 tensors (either may be NULL, not
 * both). Then Attend with q_form ATTND_Q_HEADS sends [B, S, Hq, d_nope +
 * d_rope] and receives [B, S, Hq, d_v] (both matrices needed), and
 * up_project with an absorbed query returns the latent output times W_UV.
 * A load replaces the matrices it carries and keeps the other. The worker
 * keeps bf16 as bf16, anything else as float32; *bytes_p (may be NULL):
 * the bytes the contacted worker (rank) now holds for the layer, both
 * matrices. A worker that restarts has none: load them again. */
attnd_status attnd_client_load_mla_weights(attnd_client *c, uint32_t layer,
                                           const attnd_tensor *w_uk, const attnd_tensor *w_uv,
                                           uint64_t *bytes_p, attnd_error *err);
/* attnd_client_load_mla_weights(c, layer, NULL, w_uv, bytes_p, err): W_UV
 * alone (up_project with an absorbed query). */
attnd_status attnd_client_load_weights(attnd_client *c, uint32_t layer,
                                       const attnd_tensor *w_uv, uint64_t *bytes_p,
                                       attnd_error *err);

/* How this client's Attend travels, into buf: "grpc", or "ucx " and the
 * transports UCX uses for its endpoint ("ucx sysv/memory cma/memory (same
 * host, no UCX error handling)", "ucx tcp/lo"). */
attnd_status attnd_client_transport_info(attnd_client *c, char *buf, size_t cap);

/* grpc.health.v1.Health/Check for `service` ("" = the server as a whole):
 * *serving_p = 1 when the answer is SERVING. */
attnd_status attnd_client_health(attnd_client *c, const char *service,
                                 int *serving_p, attnd_error *err);

#ifdef __cplusplus
}
#endif

#endif /* ATTND_CLIENT_H */
