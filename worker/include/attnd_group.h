/* attnd worker groups: N ranks that together hold every session's KV
 * (tensor-parallel sharding), connected rank to rank over UCX. The public
 * header of the group for service/ (which calls these where a lone worker
 * calls attnd_engine_*).
 *
 * Sharding modes (ARCHITECTURE.md, "Sharding modes and the combine"):
 *   sequence  global page p of every layer (tokens [p*P, (p+1)*P)) lives on
 *             rank p mod N; each rank attends over its tokens and the
 *             leader merges the partial (out, lse) states in rank order 0..N-1
 *             (exact, deterministic);
 *   head      GQA: rank r holds KV heads [r*Hkv/N, (r+1)*Hkv/N) and computes
 *             the query heads that read them; outputs are concatenated;
 *   latent    MLA (TPLA): the 2^k latent dims are rotated by the normalized
 *             Walsh-Hadamard transform (stored latent and q_c alike); rank r
 *             holds rotated dims [r*d_c/N, (r+1)*d_c/N) plus the whole RoPE
 *             key (or its slice, rope_split), attends with its own softmax
 *             over scale * (mu * q_c,r . c_r + q_rope . k_rope), and the
 *             leader concatenates the slices and rotates them back (an
 *             approximation: no LSE correction across shards). Its LSE
 *             output is the mean of the shards' LSEs (TPLA defines none).
 *
 * With W_UK and W_UV loaded (attnd_group_load_weights, MLA), an Attend can
 * take the heads-form query and return per-head values (the narrow wire):
 * every rank's engine absorbs the query with its part of W_UK and
 * up-projects its partial result with its part of W_UV, and the leader
 * merges (sequence) or sums (latent: a true all-reduce) d_v-wide rows.
 *
 * Every rank runs an attnd_engine for its shard (attnd_group_shard_model
 * gives the spec) and any rank can lead a request: it validates what only
 * the group knows (sessions, positions), sends each peer its part, computes
 * its own, waits for the peers' partial results (up to the request's
 * timeout) and combines them. A peer that is not connected, dies, or does
 * not answer in time fails the request with UNAVAILABLE; a peer that lost a
 * session (it restarted empty) makes it DATA_LOSS.
 *
 * Thread safety: every function may be called from any thread at once.
 * Ownership: the group borrows the engine (the caller frees it after
 * attnd_group_destroy) and copies its config.
 */
#ifndef ATTND_GROUP_H
#define ATTND_GROUP_H

#include <limits.h>
#include <stdint.h>

#include "attnd_worker.h"

#define ATTND_GROUP_MAX_RANKS 64
#define ATTND_GROUP_ADDR_MAX 128
#define ATTND_GROUP_SECRET_BYTES 32

typedef enum attnd_group_mode {
    ATTND_GROUP_SEQUENCE = 0,
    ATTND_GROUP_HEAD = 1,
    ATTND_GROUP_LATENT = 2,
} attnd_group_mode;

typedef struct attnd_group_config {
    int32_t rank, size;
    /* Rendezvous address of each rank, "host:port" (a plain TCP port attnd
     * listens on to exchange UCX worker addresses; UCX's own transport is
     * restricted to that host's interface). Port 0 on our own entry listens
     * on a free port; on a peer's, its address is read from addr_dir
     * (below) while connecting. */
    char addrs[ATTND_GROUP_MAX_RANKS][ATTND_GROUP_ADDR_MAX];
    char addr_dir[PATH_MAX]; /* "": none; else rank r writes its bound
                                address to <addr_dir>/rank-<r> */
    attnd_group_mode mode;
    int rope_split;          /* latent: split the RoPE key too */
    float mu;                /* latent: score scale of the latent part */
    int64_t connect_ms;      /* start-up: wait this long for every peer */
    int64_t timeout_ms;      /* longest wait for a peer's answer */
    attnd_model_spec model;  /* the full model (kv_dtype as stored) */
    int32_t page_size;
    /* Membership (issue 15 item 4): with has_secret, the key every rank
     * of the group holds (service/ derives it from --group-secret-file).
     * The rendezvous then hands a rank's UCX address and token only to a
     * peer that proved it holds the same key (group_rdv.c), so a process
     * without it can neither join, nor lead, nor reach the UCX data path.
     * The group wipes its copy when destroyed. */
    int has_secret;
    uint8_t secret[ATTND_GROUP_SECRET_BYTES];
} attnd_group_config;

typedef struct attnd_group attnd_group;

/* "sequence" / "head" / "latent" -> mode; -1 for anything else. */
int attnd_group_mode_parse(const char *s);
const char *attnd_group_mode_name(attnd_group_mode m);

/* Check cfg (rank range, mode against the model, divisibility, power-of-two
 * latent) and fill *shard with the spec this rank's engine serves.
 * INVALID_ARGUMENT naming the flag (--shard, --rank, --group) otherwise. */
attnd_status attnd_group_shard_model(const attnd_group_config *cfg,
                                     attnd_model_spec *shard, attnd_error *err);

/* Start the group: UCX context and worker, the rendezvous port, the progress thread,
 * the executor threads that serve peers, then connect to every peer,
 * waiting up to cfg->connect_ms for all of them (peers still missing after
 * that are reported by attnd_group_get_state and retried in the
 * background). The engine must serve attnd_group_shard_model's spec.
 * Caller frees with attnd_group_destroy. */
attnd_status attnd_group_create(const attnd_group_config *cfg, attnd_engine *engine,
                                attnd_group **group_p, attnd_error *err);
/* Stop the threads, close every endpoint, free everything. No call may be
 * in flight. */
void attnd_group_destroy(attnd_group *g);

/* The full model the group serves (for validation and ModelInfo). */
const attnd_model_spec *attnd_group_model(const attnd_group *g);
/* The bound rendezvous port. */
int attnd_group_port(const attnd_group *g);

/* One peer's UCX endpoint, as GetStats shows it. */
typedef struct attnd_group_peer_info {
    int up;
    int same_host;           /* no UCX error handling; its process watched */
    char transports[64];     /* what UCX uses: "sysv/memory cma/memory", "tcp/lo" */
} attnd_group_peer_info;

typedef struct attnd_group_state {
    int32_t rank, size;
    attnd_group_mode mode;
    int32_t connected;       /* peers connected now (size - 1 when whole) */
    char missing[256];       /* "" or the missing ranks, "1,2" */
    uint64_t peer_failures;  /* requests failed for a missing peer */
    uint64_t bytes_sent;     /* rank-to-rank active-message bytes (header + */
    uint64_t bytes_received; /* payload) to and from every peer */
    attnd_group_peer_info peers[ATTND_GROUP_MAX_RANKS]; /* [size]; ours: up 0 */
} attnd_group_state;

void attnd_group_get_state(attnd_group *g, attnd_group_state *st);

/* The engine calls, group-wide. max_tokens counts the whole session. */
attnd_status attnd_group_session_create(attnd_group *g, uint64_t max_tokens,
                                        attnd_session_id *id_p, attnd_error *err);
/* The same for owner (attnd_engine_session_create_owned): every rank binds
 * the session to owner and counts its share against the owner's limits
 * there. */
attnd_status attnd_group_session_create_owned(attnd_group *g, uint64_t owner,
                                              uint64_t max_tokens, attnd_session_id *id_p,
                                              attnd_error *err);
/* The same with a sparse policy (attnd_worker.h), checked against the
 * whole model and given to every rank as its shard sees it: head mode
 * keeps each rule's KV heads that the rank holds (renumbered); latent mode
 * gives the policy as is (each rank selects on its latent slice and RoPE
 * key); sequence mode gives each rank its share: the sink pages it holds,
 * topk_pages / N (a fraction as is) of its own pages, and a window that
 * covers its pages of the whole window (at most a page more per rank:
 * worker/GROUPS.md). The session's whole policy goes to every rank as
 * well, so that any rank leading an Attend checks given indices against
 * every shard (worker/group_given.c: given lists and return_pages on a
 * group, in the session's global numbering). */
attnd_status attnd_group_session_create_policy(attnd_group *g, uint64_t max_tokens,
                                               const attnd_session_policy *p,
                                               attnd_session_id *id_p, attnd_error *err);
/* The same for owner (0: none): the session is the owner's on every rank
 * and each rank charges its share (and its policy's reservation) to it
 * (attnd_group_session_create_owned). */
attnd_status attnd_group_session_create_policy_owned(attnd_group *g, uint64_t owner,
                                                     uint64_t max_tokens,
                                                     const attnd_session_policy *p,
                                                     attnd_session_id *id_p, attnd_error *err);
attnd_status attnd_group_session_close(attnd_group *g, const attnd_session_id *id,
                                       uint64_t *pages_freed_p, attnd_error *err);

/* AppendKV streams, group-wide: the engine's staged appends (attnd_engine_stage,
 * attnd_worker.h) on every rank, committed on every rank at the end or
 * aborted on every rank. The same contract as attnd_engine_stage (a chunk starts
 * where this stream has its layer end; a layer a stream holds refuses
 * other writers with ABORTED; RESOURCE_EXHAUSTED at the chunk that does
 * not fit on some rank), plus: a stream quiet for more than 60 s fails
 * ABORTED at its next chunk or commit (ranks drop idle parts); a commit
 * that some ranks apply and others do not (a rank failing or not
 * answering) marks the stream's sessions diverged, DATA_LOSS from then on;
 * a commit with a peer not connected applies nothing (UNAVAILABLE).
 * Ownership: open allocates, close frees (aborting everywhere unless the
 * commit succeeded; it waits for the peers, up to the group's timeout).
 * One stream is used by one thread at a time. */
typedef struct attnd_group_stream attnd_group_stream;

attnd_status attnd_group_stream_open(attnd_group *g, attnd_group_stream **s_p,
                                     attnd_error *err);
/* kv: [n_tokens][full kv_token_elems] of dtype, start the global position. */
attnd_status attnd_group_stream_append(attnd_group_stream *s, const attnd_session_id *id,
                                       uint32_t layer, uint64_t start, uint64_t n_tokens,
                                       attnd_dtype dtype, const void *kv, attnd_error *err);
/* *chunks_p, *tokens_p: what was committed (on success). */
attnd_status attnd_group_stream_commit(attnd_group_stream *s, uint64_t *chunks_p,
                                       uint64_t *tokens_p, attnd_error *err);
void attnd_group_stream_close(attnd_group_stream *s);
/* req as validated against the full model. The combined output lands in
 * ws (its out/lse buffers are grown to the full size): *out_p float32
 * [n][S][Hq][d_v] (d_vo with req->d_vo), *lse_p [n][S][Hq] when want_lse.
 * timeout_ms > 0 bounds the wait for peers (else the group's timeout).
 * *kernel_ns_p (may be NULL; set on success): the time this rank spent on
 * its own share (its engine's attend: appends, absorption, kernel and
 * up-projection); the rest of the call is the group's fan-out (plan,
 * scatter, waiting for the peers beyond that, combine).
 *
 * The narrow wire (MLA, sequence or latent mode, the layer's weights
 * loaded by attnd_group_load_weights): req->q_form ATTND_Q_HEADS sends
 * every rank the heads-form query (latent mode: q_nope and its RoPE part,
 * unrotated), which its engine absorbs with its part of W_UK (latent: the
 * rotated, mu-scaled columns of its slice); req->d_vo > 0 has every rank
 * up-project its own partial result, so the ranks exchange d_vo- instead
 * of d_c-wide rows: sequence mode merges them (the merge is linear), latent
 * mode sums them in rank order (a true all-reduce; no inverse rotation:
 * W_UV's parts are rotated). FAILED_PRECONDITION naming q_form or
 * up_project when the leader, or any rank, lacks the weights. */
attnd_status attnd_group_attend(attnd_group *g, const attnd_attend_req *req,
                                attnd_engine_ws *ws, int64_t timeout_ms,
                                const float **out_p, const float **lse_p,
                                uint64_t *kernel_ns_p, attnd_error *err);

/* Load layer's W_UK and/or W_UV (w as for attnd_engine_load_weights, with
 * the full model's Hq and d_c: W_UK [Hq][d_nope][d_c], W_UV [Hq][d_c][d_vo];
 * caller-owned, read during the call) into every rank's engine, replacing
 * what it carries: sequence mode gives every rank the matrices whole (in
 * the dtype given), latent mode each rank the columns of mu W_UK R and the
 * rows of R W_UV of its latent slice (R the normalized Hadamard; float32).
 * INVALID_ARGUMENT naming w_uk / w_uv when the group cannot use them (GQA,
 * head mode, a width out of range); UNAVAILABLE when a peer is missing;
 * a rank that fails fails the call (the other ranks may have loaded: load
 * again). *bytes_p (may be NULL): the bytes this rank holds for the layer. */
attnd_status attnd_group_load_weights(attnd_group *g, uint32_t layer,
                                      const attnd_engine_weights *w, uint64_t *bytes_p,
                                      attnd_error *err);
/* The widths layer's weights have on this rank (attnd_engine_weights_dims
 * of its engine: d_nope of W_UK, d_vo of W_UV; 0 when none). */
void attnd_group_weights_dims(attnd_group *g, uint32_t layer, int32_t *d_nope_p,
                              int32_t *d_vo_p);

#endif /* ATTND_GROUP_H */
