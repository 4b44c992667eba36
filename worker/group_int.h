/* Internal interfaces of the worker group (worker/group_*.c).
 *
 * Files: group.c (settings, start-up, state), group_addr.c (addresses),
 * group_rdv.c (the rendezvous: a plain TCP handshake that exchanges UCX
 * worker addresses), group_net.c (peers, endpoints, the progress loop,
 * active-message dispatch to the registered handlers; UCX through
 * common/attnd_ucxw.h), group_call.c (buffers and pending calls),
 * group_table.c (global session lengths), group_place.c (placement and the
 * per-rank slices of tensors), group_rank.c (one rank's part of a request,
 * shared by the leader and the peers), group_peer.c (serving peers' requests
 * on executor threads), group_lead.c (the leader side of session calls,
 * and the helpers every leader uses), group_append.c (AppendKV streams: the
 * leader side), group_stage.c (AppendKV streams: one rank's staged part),
 * the leader of an Attend in four steps: group_plan.c (plan),
 * group_scatter.c (scatter, and the leader's own part as views of the
 * request), group_attend.c (the call: run-local, wait, timing),
 * group_combine.c (combine); group_weights.c (each rank's part of W_UK
 * and W_UV, which its engine holds and applies); group_sparse.c (sparse
 * policies per rank), group_given.c (given indices and return_pages).
 *
 * Wire: rank-to-rank messages are UCX active messages, each rank sending
 * on its own endpoint to the peer: requests on AM id ATTND__GAM_REQ,
 * replies on ATTND__GAM_REP. Each carries a fixed 72-byte attnd__ghdr as
 * the AM header (with the receiver's token, learned in the rendezvous:
 * anything else is dropped) and raw bytes as the AM data (tensors as
 * stored, no per-element encoding; see group_rank.c for the layouts).
 *
 * Locks, in order: net.mu (every ucp_* call; AM and error callbacks and
 * the registered handlers run under it), then call_mu, buf_mu, job_mu,
 * stage_mu, the engine's locks, the table's lock. A thread holding a
 * later lock never takes an earlier one.
 */
#ifndef ATTND_GROUP_INT_H
#define ATTND_GROUP_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <sys/socket.h>

#include "attnd_group.h"
#include "attnd_ucxw.h"
#include "worker_int.h"

enum { ATTND__GAM_REQ = 41, ATTND__GAM_REP = 42 };

enum attnd__gmsg {
    ATTND__GMSG_HELLO = 1,  /* after the rendezvous: the new endpoints work */
    ATTND__GMSG_CREATE = 2, /* data: id, then (b = 1) its owner u64, or a sparse
                               policy (group_sparse.c), after an owner u64 when
                               b = 2; a = max_tokens for this rank */
    ATTND__GMSG_CLOSE = 3,  /* data: id; reply a = pages freed */
    ATTND__GMSG_APPEND = 4, /* data: id (64 bytes), this rank's tokens; a =
                               global start, b = global token count; stream
                               and n_seqs = the chunk's number in it */
    ATTND__GMSG_ATTEND = 5, /* see group_rank.c; a > 0: heads-form query
                               of d_nope a; b > 0: up-project to b */
    ATTND__GMSG_WEIGHTS = 6, /* data: this rank's W_UK part [Hq][b][d_c_r]
                                of q_dtype (b > 0), then its W_UV part
                                [Hq][d_c_r][a] of kv_dtype (a > 0); layer */
    ATTND__GMSG_BREAK = 7,  /* data: n_seqs ids whose shards diverged */
    ATTND__GMSG_COMMIT = 8, /* stream, n_seqs = its chunks: make them visible */
    ATTND__GMSG_ABORT = 9,  /* stream: drop what it staged */
};

typedef struct attnd__ghdr {
    uint32_t type;     /* attnd__gmsg */
    int32_t src_rank;
    uint64_t req_id;
    int32_t status;    /* replies: attnd_status; data is the message if not OK */
    uint32_t layer;
    uint32_t n_seqs;
    int32_t q_tokens;
    uint32_t q_dtype;
    uint32_t kv_dtype; /* ATTEND: 0 without new KV */
    uint64_t a, b;
    uint64_t stream;   /* APPEND, COMMIT, ABORT: the AppendKV stream's id;
                          ATTEND: ATTND__GATT_* flags */
    uint64_t token;    /* the receiver's token (group_rdv.c): others are dropped */
} attnd__ghdr;

_Static_assert(sizeof(attnd__ghdr) == 72, "the wire header is 72 bytes");

/* ---- buffers (group_call.c) ------------------------------------------------
 * Byte buffers from a per-group free list (steady state allocates nothing).
 * A buffer is also what a queued peer request is: hdr, the connection it
 * came on, its data. */
typedef struct attnd__gbuf {
    struct attnd__gbuf *next;
    struct attnd_group *g;
    attnd__ghdr hdr;     /* sends: the AM header (must live until completion) */
    uint64_t peer_token; /* queued requests: the sender's token then (its
                            reply goes only to that incarnation) */
    size_t cap, len;
    int pooled;          /* on the free list (a second put is a bug) */
    unsigned char *data; /* 64-byte aligned, cap bytes */
} attnd__gbuf;

/* ---- the rendezvous (group_rdv.c) ------------------------------------------
 * Before any UCX traffic two ranks exchange a card over a plain TCP
 * connection to the rendezvous port attnd itself listens on (the --group
 * address): a fixed header (magic, version, kind, rank, the group's
 * settings, a token, a nonce, who the process is) and a bounded payload
 * (the UCX worker address, then the address of the worker the sender
 * keeps for the receiver alone, if it is on this host: its last shm_len
 * bytes; or a refusal's message). With a group secret a
 * CHALLENGE and a PROOF each way come first (group_rdv.c); they, and every
 * refusal, are bare cards: magic, version, kind, rank, status, nonce and
 * payload length, everything else zero. */

#define ATTND__GCARD_MAGIC "ATTNDGRP"
#define ATTND__GCARD_VERSION 3 /* 3: the payload's last shm_len bytes */
#define ATTND__GCARD_HDR 160 /* bytes of the fixed header on the wire */
#define ATTND__GCARD_MAC 32  /* a PROOF's payload: HMAC-SHA-256 */

enum {
    ATTND__GCARD_HELLO = 1,
    ATTND__GCARD_ANSWER = 2,
    ATTND__GCARD_CHALLENGE = 3, /* payload none */
    ATTND__GCARD_PROOF = 4,     /* payload ATTND__GCARD_MAC bytes */
};

typedef struct attnd__gcard {
    uint16_t version, kind;
    int32_t rank, size;
    uint32_t mode, page_size, n_layers, n_q_heads, kv_elems, kv_dtype;
    int32_t status;          /* ANSWER: 0, or why the sender refuses (payload:
                                the message) */
    uint64_t token;          /* the sender's: put in every UCX message to it */
    uint8_t nonce[16];       /* random per card (for the challenge, see
                                group_rdv.c) */
    attnd_ucxw_host host;    /* the sender's process */
    uint32_t shm_ok;         /* it may connect without UCX error handling */
    uint32_t payload_len;    /* <= ATTND_UCXW_ADDR_MAX */
    uint32_t shm_len;        /* HELLO, ANSWER: the payload's last shm_len bytes
                                are the address of the sender's peer worker
                                for the receiver (group_net.c); <= payload_len */
} attnd__gcard;

/* Encode c (payload_len bytes of payload follow the header) into out
 * (ATTND__GCARD_HDR + payload_len bytes; payload NULL: the header only,
 * the caller writes the payload). */
size_t attnd__gcard_encode(const attnd__gcard *c, const void *payload, unsigned char *out);
/* Decode a card's fixed header from have bytes at buf: 1 when it is
 * complete and valid (then *c holds it and c->payload_len is bounded), 0
 * when more bytes are needed, -1 when it is not a card. */
int attnd__gcard_decode(const unsigned char *buf, size_t have, attnd__gcard *c);

/* A bare card (see above) of `kind` from rank `rank`: its fixed header,
 * with a fresh random nonce, into out; payload_len bytes are to follow. */
void attnd__gcard_bare(uint16_t kind, int32_t rank, int32_t status, uint32_t payload_len,
                       unsigned char *out);

#define ATTND__GRDV_MAX_CONNS 16

/* Where a rendezvous connection is (group_rdv.c). */
enum {
    ATTND__GRDV_OPEN = 0,  /* accepted: a HELLO or CHALLENGE comes; or
                              connected without a secret: our HELLO goes */
    ATTND__GRDV_CHALLENGED, /* connector: our CHALLENGE went, a PROOF comes */
    ATTND__GRDV_PROVED,    /* acceptor: our PROOF went, the connector's comes */
    ATTND__GRDV_TRUSTED,   /* the peer proved the secret (or there is none):
                              cards with addresses and tokens may pass */
};

typedef struct attnd__grdv_conn {
    int fd;                  /* -1: a free slot */
    int outgoing;            /* we connected, to rank `rank` */
    int32_t rank;
    int phase;               /* ATTND__GRDV_* */
    int sending;             /* else receiving */
    int connected;           /* outgoing: the connect finished */
    int then_close;          /* close once out is sent */
    int64_t deadline_ms;
    size_t have, out_len, out_sent;
    /* the two bare headers the proofs sign: the CHALLENGE, then the
     * acceptor's PROOF */
    unsigned char th[2 * ATTND__GCARD_HDR];
    unsigned char in[ATTND__GCARD_HDR + ATTND_UCXW_ADDR_MAX];
    unsigned char out[2 * ATTND__GCARD_HDR + ATTND__GCARD_MAC + ATTND_UCXW_ADDR_MAX];
} attnd__grdv_conn;

/* The proof of the side that is the acceptor (1) or the connector (0):
 * HMAC-SHA-256 under the group secret over a label naming the side and
 * th (group_auth.c). 0, or -1 when libcrypto failed. */
int attnd__grdv_mac(const attnd_group *g, int acceptor, const unsigned char *th,
                     unsigned char mac[ATTND__GCARD_MAC]);
/* Does mac prove that side? Compared in constant time. */
int attnd__grdv_mac_ok(const attnd_group *g, int acceptor, const unsigned char *th,
                       const unsigned char *mac);

/* ---- peers (group_net.c) ---------------------------------------------------- */

enum { ATTND__PEER_DOWN = 0, ATTND__PEER_CONNECTING = 1, ATTND__PEER_UP = 2 };

typedef struct attnd__gpeer {
    struct attnd_group *g;
    int32_t rank;
    ucp_ep_h ep;         /* our endpoint to it (everything we send it) */
    ucp_worker_h ep_worker; /* the worker ep is on: net's, or pw */
    /* the worker we keep for this peer alone (same host: it connects to it;
     * common/attnd_ucxw.h), its address, the token of the process that
     * used it (0: none yet); retired when that process is gone */
    ucp_worker_h pw;
    void *pw_addr;
    size_t pw_len;
    uint64_t pw_token;
    int no_pw;           /* its last card: another host, or no shared
                            memory; our cards offer it no peer worker */
    int state;
    uint64_t peer_token; /* its token (its card's): in every message to it */
    int on_host;         /* its card says: this host (warn if UCX uses TCP) */
    int same_host;       /* no UCX error handling; its process watched: */
    int pidfd;           /* -1 when not same_host */
    char transports[64];
    uint64_t hello_id;
    int64_t next_try_ms, hello_next_ms, hello_deadline_ms;
    atomic_int kick;     /* a leader saw it time out: reconnect */
    int ever_up;
} attnd__gpeer;

/* A message handed to a registered handler (inside progress, under
 * net.mu): the checked header, its data (rndv: a descriptor for
 * attnd__gnet_recv), and the sender's token. The handler returns what a
 * ucp AM callback returns (UCS_INPROGRESS after attnd__gnet_recv). */
typedef struct attnd__gnet_msg {
    const attnd__ghdr *h;
    void *data;
    size_t len;
    int rndv;
    uint64_t peer_token;
} attnd__gnet_msg;

typedef ucs_status_t (*attnd__gnet_handler)(struct attnd_group *g, const attnd__gnet_msg *m);

/* ---- pending calls (group_call.c) ------------------------------------------- */

typedef struct attnd__gslot {
    int expect, done, recv_inflight;
    attnd_status st;
    char msg[192];
    attnd__gbuf *buf;    /* reply data lands here */
    size_t want;         /* its expected length (max > want: at least) */
    size_t max;          /* > want: replies of want..max bytes (a reply
                            larger than buf gets a bigger pooled buffer) */
    uint64_t a;          /* reply header's a */
    struct attnd_group *g;       /* for a rendezvous receive's completion */
    struct attnd__gcall *call;
} attnd__gslot;

typedef struct attnd__gcall {
    struct attnd__gcall *next;
    uint64_t id;
    int n_left;          /* slots expected and not done */
    int abandoned;       /* the leader left (timeout) while receives ran */
    attnd__gslot *slot;  /* [size] */
} attnd__gcall;

/* ---- global session lengths (group_table.c) ------------------------------- */

typedef struct attnd__gsess {
    struct attnd__gsess *next;
    attnd_session_id id;
    uint64_t *len; /* [n_layers] global tokens */
    uint64_t *stage;  /* [n_layers] the AppendKV stream holding the layer, 0 none */
    uint64_t *staged; /* [n_layers] its length as that stream staged it */
    uint8_t *kinds;   /* NULL (dense), or [n_layers][kinds_stride]: the
                         group's policy kinds (attnd__gtable_set_kinds) */
    size_t kinds_stride;
    int broken;    /* a changing call failed on some ranks only: DATA_LOSS */
} attnd__gsess;

typedef struct attnd__gtable {
    pthread_mutex_t mu;
    attnd__gsess *bucket[1024];
    int32_t n_layers;
} attnd__gtable;

/* ---- one rank's part of AppendKV streams (group_stage.c) ------------------ */

typedef struct attnd__gclaim {
    attnd_session_id id;
    uint32_t layer;
} attnd__gclaim;

/* A stream's staged part on this rank, or (done) a tombstone that makes
 * its late messages fail. Found by (src, stream) in the group's table. */
typedef struct attnd__gstage {
    struct attnd__gstage *next;
    int32_t src;           /* the leading rank */
    uint64_t stream;
    int done;              /* committed or aborted: a tombstone */
    int busy;              /* a message of it is running (messages of one
                              stream run one at a time, in order) */
    int64_t last_ms;       /* its last message: expiry */
    uint32_t next_seq;     /* the chunk number expected next */
    attnd_engine_stage *es; /* this rank's tokens; NULL until it has some */
    attnd__gclaim *claim;  /* layers it holds in the group table */
    size_t n_claim, cap_claim;
} attnd__gstage;

#define ATTND__GSTAGE_BUCKETS 256
/* A leader sends no message of a stream that has been quiet this long
 * (ABORTED instead); ranks drop parts quiet for twice as long. */
#define ATTND__GSTREAM_IDLE_MS 60000

/* ---- the group ---------------------------------------------------------------- */

#define ATTND__GROUP_EXECUTORS 2

struct attnd_group {
    attnd_group_config cfg;
    char model_name[64];   /* cfg.model.name points here */
    attnd_model_spec shard;
    attnd_engine *engine;
    int32_t N, me;
    /* shapes: full model and this rank's shard (every rank's shard has the
     * same shape) */
    int32_t hq, d_k, d_v, hq_r, d_k_r, d_v_r;
    int64_t kv_elems, kv_elems_r;

    attnd_ucxw net;          /* context, worker, progress thread (net.mu) */
    void *addr;              /* our worker address, as the cards carry it */
    size_t addr_len;
    attnd_ucxw_host host;
    int shm_ok;
    uint64_t token;          /* ours, random per process */
    attnd__gnet_handler on_request, on_reply;
    attnd__gpeer peers[ATTND_GROUP_MAX_RANKS];
    int64_t last_watch_ms;   /* pidfds last looked at */
    /* the rendezvous (group_rdv.c; the progress thread's) */
    int rdv_fd, port;        /* listening socket, its bound port */
    attnd__grdv_conn *rdv;   /* [ATTND__GRDV_MAX_CONNS] */
    int64_t rdv_logged_ms;   /* last log of a refused stranger (1 a second) */

    pthread_mutex_t call_mu;
    pthread_cond_t call_cv;
    attnd__gcall *calls, *free_calls;
    uint64_t next_call_id;

    pthread_mutex_t buf_mu;
    attnd__gbuf *free_bufs;
    int n_free_bufs;
    struct attnd__glws *free_lws; /* leaders' engine workspaces (group_attend.c) */

    pthread_mutex_t job_mu;
    pthread_cond_t job_cv;
    attnd__gbuf *jobs_head, *jobs_tail;
    int jobs_stop;
    pthread_t exec_tid[ATTND__GROUP_EXECUTORS];
    int n_exec;
    attnd_engine_ws exec_ws[ATTND__GROUP_EXECUTORS];
    struct attnd__gexec {
        struct attnd_group *g;
        int index;
    } exec_arg[ATTND__GROUP_EXECUTORS];

    attnd__gtable table;
    atomic_uint_fast64_t peer_failures;
    /* rank-to-rank active-message bytes (header + payload), both ways;
     * counted under net.mu, read by attnd_group_get_state */
    atomic_uint_fast64_t bytes_sent, bytes_received;

    pthread_mutex_t stage_mu; /* AppendKV stages (group_stage.c) */
    pthread_cond_t stage_cv;  /* a stage stopped being busy */
    attnd__gstage *stages[ATTND__GSTAGE_BUCKETS];
    attnd__gstage *free_stages;
    int32_t n_free_stages;
    int64_t stage_sweep_ms;   /* next expiry sweep */
    uint64_t stream_base;     /* random: stream ids are stream_base + k */
    atomic_uint_fast64_t stream_next;
};

/* group_call.c */
attnd__gbuf *attnd__gbuf_get(attnd_group *g, size_t n);
void attnd__gbuf_put(attnd_group *g, attnd__gbuf *b);
void attnd__gbufs_cleanup(attnd_group *g);
/* A new call with no slot expected; NULL when out of memory. */
attnd__gcall *attnd__gcall_new(attnd_group *g);
/* Expect a reply of exactly `want` data bytes from rank r (a buffer is
 * taken now), or with max > want of want to max bytes. -1 when out of
 * memory. */
int attnd__gcall_expect(attnd_group *g, attnd__gcall *c, int32_t r, size_t want, size_t max);
/* Mark slot r failed (caller holds call_mu). */
void attnd__gslot_fail(attnd_group *g, attnd__gcall *c, int32_t r, attnd_status st,
                       const char *msg);
/* Wait until every expected slot is done or deadline_ms (monotonic) passes;
 * slots still open then fail UNAVAILABLE and their peers are kicked. */
void attnd__gcall_wait(attnd_group *g, attnd__gcall *c, int64_t deadline_ms);
/* Return the call and its buffers (or leave them to the receives still in
 * flight, which free them when they end). */
void attnd__gcall_release(attnd_group *g, attnd__gcall *c);
void attnd__gcalls_cleanup(attnd_group *g);
/* Fail every open slot of rank r in every call (its endpoint broke). */
void attnd__gcalls_fail_rank(attnd_group *g, int32_t r, const char *why);
/* The reply handler (registered with group_net.c). */
ucs_status_t attnd__gcall_on_reply(attnd_group *g, const attnd__gnet_msg *m);

/* group_rdv.c (on the progress thread, under net.mu) */
/* Listen on our --group address (g->port gets the bound port). */
attnd_status attnd__grdv_listen(attnd_group *g, attnd_error *err);
/* Start a rendezvous with rank r (no-op when one is under way or its
 * address is not known yet). */
void attnd__grdv_connect(attnd_group *g, int32_t r);
/* Accept, read, write, time out; 1 when anything happened. */
int attnd__grdv_tend(attnd_group *g);
/* The sockets to sleep on. */
int attnd__grdv_fds(attnd_group *g, struct pollfd *fds, int cap);
void attnd__grdv_close(attnd_group *g);

/* group_addr.c */
/* Split "host:port" (host into h of hn bytes). 0 or -1. */
int attnd__gaddr_split(const char *a, char *h, size_t hn, int *port);
int attnd__gaddr_resolve(const char *host, int port, struct sockaddr_storage *ss,
                         socklen_t *len);
/* Where peer r can be reached now, or -1 (its address file is not there yet). */
int attnd__gaddr_peer(attnd_group *g, int32_t r, struct sockaddr_storage *ss, socklen_t *len);
/* Write our bound address to the group dir (if any). 0 or -1 (errno). */
int attnd__gaddr_publish(attnd_group *g);

/* group_net.c */
/* The handlers of requests (group_peer.c) and replies (group_call.c);
 * set before attnd__gnet_start. */
void attnd__gnet_set_handlers(attnd_group *g, attnd__gnet_handler on_request,
                              attnd__gnet_handler on_reply);
attnd_status attnd__gnet_start(attnd_group *g, attnd_error *err);
void attnd__gnet_stop(attnd_group *g);
/* Send request b (b->hdr filled, b->len data bytes) to peer r; b is the
 * transport's from here on. UNAVAILABLE when r is not connected. */
attnd_status attnd__gnet_send_req(attnd_group *g, int32_t r, attnd__gbuf *b,
                                  attnd_error *err);
/* Send reply b to rank r if it is still the incarnation whose token was
 * peer_token (else b is dropped); _locked from inside a handler. */
void attnd__gnet_send_rep(attnd_group *g, int32_t r, uint64_t peer_token, attnd__gbuf *b);
void attnd__gnet_send_rep_locked(attnd_group *g, int32_t r, uint64_t peer_token,
                                 attnd__gbuf *b);
/* From inside a handler: receive a rendezvous message's data into buf;
 * cb exactly once (attnd_ucxw_am_recv). */
void attnd__gnet_recv(attnd_group *g, void *desc, void *buf, size_t len, attnd_ucxw_recv_cb cb,
                      void *user);
/* A rendezvous gave us rank c->rank's card and worker address: (re)make
 * our endpoint to it (group_rdv.c calls it). */
void attnd__gnet_apply_card(attnd_group *g, const attnd__gcard *c, const void *addr);
/* Our card (kind, status 0, our address as payload). */
void attnd__gnet_my_card(attnd_group *g, uint16_t kind, attnd__gcard *c);
/* Our card of `kind` for rank r, encoded into out (room for
 * ATTND__GCARD_HDR + ATTND_UCXW_ADDR_MAX): the payload is our address,
 * then our peer worker's for r (made if there is none). Bytes written. */
size_t attnd__gnet_put_card(attnd_group *g, int32_t r, uint16_t kind, unsigned char *out);
/* Wait until every peer is connected or deadline_ms passes. */
void attnd__gnet_wait_connected(attnd_group *g, int64_t deadline_ms);
int attnd__gnet_peer_up(attnd_group *g, int32_t r);
/* Peer r as GetStats shows it into *info; 1 when it is up. */
int attnd__gnet_peer_info(attnd_group *g, int32_t r, attnd_group_peer_info *info);

/* group_peer.c */
attnd_status attnd__gpeer_start(attnd_group *g, attnd_error *err);
void attnd__gpeer_stop(attnd_group *g);
/* The request handler (registered with group_net.c). */
ucs_status_t attnd__gpeer_on_request(attnd_group *g, const attnd__gnet_msg *m);

/* group_table.c */
void attnd__gtable_init(attnd__gtable *t, int32_t n_layers);
void attnd__gtable_cleanup(attnd__gtable *t);
attnd_status attnd__gtable_add(attnd__gtable *t, const attnd_session_id *id,
                               attnd_error *err);
void attnd__gtable_remove(attnd__gtable *t, const attnd_session_id *id);
int attnd__gtable_has(attnd__gtable *t, const attnd_session_id *id);
/* Global lengths of layer for n sessions; NOT_FOUND names session_ids[i]. */
attnd_status attnd__gtable_lens(attnd__gtable *t, const attnd_session_id *ids, uint32_t n,
                                uint32_t layer, uint64_t *lens, attnd_error *err);
/* Check that layer's global length of each session is lens[i]: NOT_FOUND or
 * FAILED_PRECONDITION naming `field`[i]. */
attnd_status attnd__gtable_check(attnd__gtable *t, const attnd_session_id *ids, uint32_t n,
                                 uint32_t layer, const uint64_t *lens, const char *field,
                                 attnd_error *err);
/* Set layer's length of each session to lens[i] + by. */
/* Mark sessions whose shards no longer agree (a call that changes them
 * failed on some ranks and not on others): every later call naming them
 * gets DATA_LOSS until they are closed. Unknown ids are skipped. */
void attnd__gtable_break(attnd__gtable *t, const attnd_session_id *ids, uint32_t n);
void attnd__gtable_advance(attnd__gtable *t, const attnd_session_id *ids, uint32_t n,
                           uint32_t layer, const uint64_t *lens, uint64_t by);
/* AppendKV staging in the group table: a layer one stream stages is held
 * by it (stage[layer] = stream) with staged[layer] its length so far.
 * Check that `stream` may stage a chunk at `start` on layer of id:
 * NOT_FOUND, DATA_LOSS (diverged), ABORTED (another stream holds the
 * layer) or FAILED_PRECONDITION naming start. claim: hold the layer
 * (*fresh_p = 1 when this call took it); else only check. */
attnd_status attnd__gtable_stage(attnd__gtable *t, const attnd_session_id *id, uint32_t layer,
                                 uint64_t stream, uint64_t start, int claim, int *fresh_p,
                                 attnd_error *err);
/* The layer held by stream now ends at `end` (staged tokens). */
void attnd__gtable_stage_to(attnd__gtable *t, const attnd_session_id *id, uint32_t layer,
                            uint64_t stream, uint64_t end);
/* Let go of the layer (commit: its length becomes the staged one). Layers
 * not held by stream (the session closed meanwhile) are skipped. */
void attnd__gtable_unstage(attnd__gtable *t, const attnd_session_id *id, uint32_t layer,
                           uint64_t stream, int commit);
/* A session's policy kinds as the group sees them: per layer `stride`
 * bytes, the attnd_policy_kind of each of the stride - 1 policy heads (GQA:
 * KV heads; MLA: 1), then ATTND__GKIND_* flags. Copied; unknown ids are
 * skipped. */
enum { ATTND__GKIND_UNIFORM = 1, /* every head has the same policy */
       ATTND__GKIND_TOPK = 2 };   /* some head is topk-pages */
attnd_status attnd__gtable_set_kinds(attnd__gtable *t, const attnd_session_id *id,
                                     const uint8_t *kinds, size_t stride, attnd_error *err);
/* layer's kinds of n sessions into out [n][stride] (a session without
 * policy, or gone: full and uniform); 1 when some session has a policy. */
int attnd__gtable_kinds(attnd__gtable *t, const attnd_session_id *ids, uint32_t n,
                        uint32_t layer, size_t stride, uint8_t *out);
/* ABORTED naming session_ids[i] when an AppendKV stream holds layer of
 * one of them (an Attend with new KV must not append there). */
attnd_status attnd__gtable_check_unstaged(attnd__gtable *t, const attnd_session_id *ids,
                                          uint32_t n, uint32_t layer, attnd_error *err);

/* group_place.c: sequence placement */
int32_t attnd__gplace_owner(const attnd_group *g, uint64_t t);
/* Tokens of [0, x) that rank r holds. */
uint64_t attnd__gplace_count(const attnd_group *g, int32_t r, uint64_t x);
/* Copy the entries of [start, start + n) that rank r holds (src is the
 * entries of that range, es bytes each) to dst; returns how many. */
uint64_t attnd__gplace_gather_seq(const attnd_group *g, int32_t r, uint64_t start,
                                  uint64_t n, size_t es, const void *src, void *dst);
/* Rows of rank r's query slice: q [rows][Hq][d_k] of dtype qt -> dst, in
 * the part's dtype (attnd__gpart_q_dtype). Latent mode reads a rotated
 * float32 query (the leader rotates and slices in one pass instead:
 * attnd__gplace_rotate_split). */
void attnd__gplace_slice_q(const attnd_group *g, int32_t r, size_t rows, attnd_dtype qt,
                           const void *q, void *dst);
/* The same for a heads-form query [rows][Hq][d_nope + d_r] (sequence and
 * latent modes): rank r's is q_nope whole and its RoPE part (all of it, or
 * its slice with rope_split), in qt (no rotation: W_UK's part carries it). */
void attnd__gplace_slice_q_heads(const attnd_group *g, int32_t r, size_t rows, attnd_dtype qt,
                                 int32_t d_nope, const void *q, void *dst);
/* Sequence: the first run of rank r's tokens in [start, start + n): its
 * length (0: rank r holds none of them) and, when not 0, *off_p its
 * offset from start. */
uint64_t attnd__gplace_first_run(const attnd_group *g, int32_t r, uint64_t start, uint64_t n,
                                 uint64_t *off_p);
/* Latent: convert one vector of d_c + d_r elements (src, dtype t) to
 * float32 in tmp, rotate its latent part, and write rank r's slice of it
 * (latent part times mul) to dst[r] for every r whose dst[r] is not NULL. */
void attnd__gplace_rotate_split(const attnd_group *g, attnd_dtype t, const void *src, float mul,
                                float *tmp, float *const *dst);
/* Rank r's part of n wire KV entries ([n][kv_elems] of dt) -> dst in the
 * part's KV dtype. Latent mode reads rotated float32 entries. */
void attnd__gplace_slice_kv(const attnd_group *g, int32_t r, size_t n, attnd_dtype dt,
                            const void *kv, void *dst);
/* The dtype a part's query travels in: latent mode's rotated absorbed
 * query float32, else (and any heads-form query) the request's. */
attnd_dtype attnd__gpart_q_dtype(const attnd_group *g, attnd_dtype qt, int32_t d_nope);
attnd_dtype attnd__gpart_kv_dtype(const attnd_group *g, attnd_dtype kt);
/* Latent: float32 copies of n KV entries with the latent part rotated. */
void attnd__grotate_kv(const attnd_group *g, size_t n, attnd_dtype dt, const void *kv,
                       float *dst);

/* group_rank.c: one rank's part of an Attend */
typedef struct attnd__gpart {
    uint32_t layer, n_seqs;
    int32_t q_tokens;
    attnd_dtype q_dtype, kv_dtype; /* kv_dtype INVALID: no new KV */
    int32_t d_nope;                /* > 0: heads-form query (its engine absorbs) */
    int32_t d_vo;                  /* > 0: its engine up-projects to d_vo */
    const attnd_session_id *ids;   /* [n] */
    const uint64_t *glen;          /* [n] global lengths before the append */
    const void *q;                 /* [n][S][hq_r][qw], qw = d_k_r, or
                                      d_nope + the shard's d_rope in the
                                      heads form */
    const void *kv;                /* sequence: the rank's new entries in
                                      (sequence, token) order, or with
                                      kv_whole every new entry; else
                                      [n][S][kv_elems_r] */
    int kv_whole;                  /* sequence: kv is the request's
                                      [n][S][kv_elems] (the leader's view);
                                      the rank takes its own by placement */
    uint32_t given_groups;         /* > 0: this rank's given lists
                                      (group_given.c; sequence mode: all
                                      the rank attends, given_only) */
    const uint32_t *given_indptr;
    const uint64_t *given_idx;
    int want_pages;                /* report what was attended */
} attnd__gpart;

/* ATTEND header flags (attnd__ghdr.stream of an ATTEND request). */
enum { ATTND__GATT_GIVEN = 1,   /* the data ends with a given section */
       ATTND__GATT_PAGES = 2 }; /* return_pages: the reply ends with a
                                   chosen section (group_given.c) */

/* Run part p on this rank's engine with workspace ws: append, attend with
 * LSE, advance the global lengths. out/lse point into ws. */
attnd_status attnd__grank_attend(attnd_group *g, const attnd__gpart *p, attnd_engine_ws *ws,
                                 const float **out_p, const float **lse_p, attnd_error *err);
/* Wire layout of an ATTEND request's data; offsets in bytes, 64-aligned. */
typedef struct attnd__gpart_layout {
    size_t ids, glen, q, kv, given, total;
    size_t q_bytes, kv_bytes, given_bytes;
} attnd__gpart_layout;
/* Query elements per head of a part: d_k_r, or with a heads-form query of
 * d_nope > 0, d_nope + the shard's d_rope. */
int32_t attnd__gpart_qw(const attnd_group *g, int32_t d_nope);
void attnd__gpart_layout_of(const attnd_group *g, uint32_t n, int32_t S, attnd_dtype qt,
                            int32_t d_nope, attnd_dtype kt, uint64_t kv_entries,
                            size_t given_bytes, attnd__gpart_layout *l);
/* Bytes of a rank's reply to an ATTEND: out (rows of `width` floats) then
 * lse, float32. */
size_t attnd__gpart_reply_bytes(const attnd_group *g, uint32_t n, int32_t S, int32_t width);

/* group_stage.c: this rank's part of AppendKV streams. src: the leading
 * rank; seq: the message's chunk number (COMMIT: the chunks sent). */
void attnd__gstages_init(attnd_group *g);
/* Abort every stage, free everything (the executors have stopped). */
void attnd__gstages_cleanup(attnd_group *g);
/* Stage chunk seq of the stream: kv is this rank's share of the global
 * tokens [start, start + n_global) in the part's KV dtype dt. */
attnd_status attnd__gstage_chunk(attnd_group *g, int32_t src, uint64_t stream, uint32_t seq,
                                 const attnd_session_id *id, uint32_t layer, uint64_t start,
                                 uint64_t n_global, attnd_dtype dt, const void *kv,
                                 attnd_error *err);
/* Commit the stream's part here, after checking that all its n_chunks
 * chunks were staged; on failure nothing of it is applied here. */
attnd_status attnd__gstage_commit(attnd_group *g, int32_t src, uint64_t stream,
                                  uint32_t n_chunks, attnd_error *err);
void attnd__gstage_abort(attnd_group *g, int32_t src, uint64_t stream);

/* group_lead.c: helpers of every leader (group_attend.c, group_append.c) */
/* Monotonic deadline of a call: the group's timeout, or timeout_ms when
 * shorter (> 0). */
int64_t attnd__glead_deadline(const attnd_group *g, int64_t timeout_ms);
/* OK when every peer is connected (after a short grace for one that is
 * reconnecting); else UNAVAILABLE naming the rank. */
attnd_status attnd__glead_peers_up(attnd_group *g, attnd_error *err);
/* The first failed peer slot of c, in rank order, as the call's status. */
attnd_status attnd__glead_collect(attnd_group *g, attnd__gcall *c, attnd_error *err);
/* Send b (the transport's from here on) to rank r as part of call c,
 * expecting `want` reply bytes; a failure fails the slot. */
void attnd__glead_send(attnd_group *g, attnd__gcall *c, int32_t r, attnd__gbuf *b,
                       size_t want);
/* The same for a reply of want to max bytes (max > want). */
void attnd__glead_send_upto(attnd_group *g, attnd__gcall *c, int32_t r, attnd__gbuf *b,
                            size_t want, size_t max);
/* Did a call that changes sessions leave their shards disagreeing? own: 1
 * the leader's part applied, 0 it failed; lost: parts never sent. */
int attnd__glead_diverged(attnd_group *g, attnd__gcall *c, int own, int lost);
/* Mark sessions diverged here and on every peer that can be reached. */
void attnd__glead_break(attnd_group *g, const attnd_session_id *ids, uint32_t n,
                        int64_t timeout_ms);
/* Rank r's share of n entries starting at global `start` into dst (NULL:
 * only count). src: the entries as the client sent them, or rotated
 * float32 ones in latent mode. Returns the entries written. */
uint64_t attnd__glead_kv_share(const attnd_group *g, int32_t r, uint64_t start, uint64_t n,
                               attnd_dtype dt, const void *src, void *dst);

/* group_plan.c: the plan of one Attend (computed by the leader, no I/O) */
typedef struct attnd__gplan {
    uint32_t n_seqs;
    int32_t S;
    size_t rows;             /* n_seqs * S query rows */
    int32_t d_nope;          /* heads-form query's d_nope; 0: absorbed */
    int32_t d_vo;            /* up-projection width; 0: none */
    attnd_dtype qt, kt;      /* the request's query and new-KV dtypes */
    attnd_dtype pq, pk;      /* the parts' (pk INVALID: no new KV) */
    size_t width;            /* floats per (row, head) of a rank's result:
                                d_vo, else d_v_r */
    size_t reply;            /* bytes of every rank's result (out, lse) */
    uint64_t entries[ATTND_GROUP_MAX_RANKS];        /* new KV entries of rank r */
    attnd__gpart_layout part[ATTND_GROUP_MAX_RANKS]; /* rank r's ATTEND data */
    size_t reply_max[ATTND_GROUP_MAX_RANKS]; /* > reply: with its chosen
                                                section (return_pages) */
} attnd__gplan;

/* ---- given indices and return_pages on a group (group_given.c) -------------
 * The leader checks the request's given lists against the group (every
 * rank's shard: the policy kinds in the group table, global lengths), so
 * that no rank refuses what another applied; each rank then gets its own
 * lists: sequence mode the pages / tokens of the caller's lists it holds,
 * in its local numbering, and those of the newest S tokens it holds (all
 * it attends: attnd_attend_req.given_only); head mode the lists of its KV
 * heads; latent mode every list. With return_pages each rank reports what
 * it attended and the leader merges the reports into the session's global
 * numbering, in the shape a lone worker gives.
 *
 * Given section (after an ATTEND's data, 64-aligned): uint32 groups,
 * uint32 0, uint64 entries, uint32 indptr[n * groups + 1], 8-aligned,
 * uint64 idx[entries]. Chosen section (after a reply's out and lse,
 * 8-aligned): uint32 groups, uint32 tokens, uint64 entries, int32
 * indptr[n * groups + 1], 8-aligned, int64 chosen[entries]. */
typedef struct attnd__ggiven {
    int on;                       /* lists travel (the request gives some) */
    int want_pages;
    uint32_t H;                   /* policy heads: KV heads (GQA), 1 (MLA) */
    size_t stride;                /* bytes per session of kinds */
    const uint8_t *kinds;         /* [n][stride] the layer's kinds, flags */
    uint32_t groups[ATTND_GROUP_MAX_RANKS]; /* lists per session of rank r */
    uint64_t n_idx[ATTND_GROUP_MAX_RANKS];  /* entries of rank r's lists */
} attnd__ggiven;

/* Check req's given fields against the group (glen: global lengths before
 * the append; kinds: the batch's, attnd__gtable_kinds) with the engine's
 * messages, and plan every rank's lists into *gv. INVALID_ARGUMENT names
 * the field. */
attnd_status attnd__ggiven_plan(const attnd_group *g, const attnd_attend_req *req,
                                const uint64_t *glen, const uint8_t *kinds, attnd__ggiven *gv,
                                attnd_error *err);
/* Bytes of rank r's given section (0: none). */
size_t attnd__ggiven_bytes(const attnd__ggiven *gv, uint32_t n, int32_t r);
/* Write rank r's given section at dst (attnd__ggiven_bytes of room). */
void attnd__ggiven_write(const attnd_group *g, const attnd_attend_req *req, const uint64_t *glen,
                         const attnd__ggiven *gv, int32_t r, void *dst);
/* Read a given section of len bytes for n sessions: *groups_p, pointers
 * into it; *bytes_p its size. INVALID_ARGUMENT when malformed. */
attnd_status attnd__ggiven_read(const void *sec, size_t len, uint32_t n, uint32_t *groups_p,
                                const uint32_t **indptr_p, const uint64_t **idx_p,
                                size_t *bytes_p, attnd_error *err);
/* The most bytes of rank r's chosen section. */
size_t attnd__gchosen_max(const attnd_group *g, const attnd_attend_req *req,
                          const uint64_t *glen, int32_t r);
/* Bytes of the chosen section of ws's lists for n sessions, and writing
 * it at dst. */
size_t attnd__gchosen_bytes(const attnd_engine_ws *ws, uint32_t n);
void attnd__gchosen_write(const attnd_engine_ws *ws, uint32_t n, void *dst);
/* One rank's report: what its engine attended. */
typedef struct attnd__gchosen {
    uint32_t groups;
    int tokens;
    const int32_t *indptr;
    const int64_t *chosen;
} attnd__gchosen;
/* Merge the ranks' reports src[0..N-1] into ws->chosen_* in the session's
 * global numbering (a peer's read from its reply by attnd__gchosen_read).
 * INTERNAL when a report does not fit the call. */
attnd_status attnd__gchosen_merge(const attnd_group *g, const attnd_attend_req *req,
                                  const uint64_t *glen, const attnd__ggiven *gv,
                                  const attnd__gchosen *src, attnd_engine_ws *ws,
                                  attnd_error *err);
attnd_status attnd__gchosen_read(const void *sec, size_t len, uint32_t n,
                                 attnd__gchosen *out, attnd_error *err);

/* Plan req (validated; glen the sessions' global lengths; gv its given
 * lists and return_pages) over the group: what every rank receives and
 * answers. Checks (ATTND_ASSERT) that every new token, head and latent dim
 * goes to exactly one rank. */
void attnd__gplan_make(const attnd_group *g, const attnd_attend_req *req,
                       const uint64_t *glen, const attnd__ggiven *gv, attnd__gplan *p);

/* group_scatter.c */
/* Encode every peer's part of req per plan p and send it as part of call
 * c (the slots expect p->reply bytes); fill *local with the leader's own
 * part: views of req where the engine reads them as they are (ids,
 * lengths; sequence mode's query and new KV), else the slices gathered
 * into *scratch_p (head mode's query heads and KV heads, latent mode's
 * rotated slices), which the caller puts back (attnd__gbuf_put) after
 * running the part; NULL when none was needed. RESOURCE_EXHAUSTED before
 * anything is sent when buffers run out. */
attnd_status attnd__gscatter(attnd_group *g, attnd__gcall *c, const attnd_attend_req *req,
                             const uint64_t *glen, const attnd__gplan *p,
                             const attnd__ggiven *gv, attnd__gpart *local,
                             attnd__gbuf **scratch_p, attnd_error *err);

/* group_combine.c */
/* Combine the ranks' results into ws (out grown to [rows][Hq][dv], lse to
 * [rows][Hq]): out[r] / lse[r] rank r's rows of p->width floats and its
 * LSEs. Sequence: merge in rank order 0..N-1; head: concatenate heads;
 * latent: concatenate slices and rotate back, or (up-projected) sum in
 * rank order; latent LSE: the mean of the ranks'. Deterministic for a
 * given N, whoever leads. */
attnd_status attnd__gcombine(attnd_group *g, const attnd__gplan *p, const float *const *out,
                             const float *const *lse, attnd_engine_ws *ws, attnd_error *err);

/* group_attend.c */
void attnd__glws_cleanup(attnd_group *g);

/* group_weights.c: a WEIGHTS message (this rank's parts) into the engine. */
attnd_status attnd__gweights_store(attnd_group *g, const attnd__gbuf *req, attnd_error *err);

/* ---- sparse policies (group_sparse.c) ----------------------------------------- */

/* Rank r's share of a session's max_tokens (sequence mode: its tokens). */
uint64_t attnd__glead_rank_tokens(const attnd_group *g, int32_t r, uint64_t max_tokens);
/* A CREATE message's policies (the bytes after the id): this rank's into
 * *mine, the session's whole one into *whole, their rules in *rules_p and
 * *whole_rules_p (caller frees both). INVALID_ARGUMENT when malformed. */
attnd_status attnd__gpolicy_parse(const uint8_t *p, size_t len, attnd_session_policy *mine,
                                  attnd_policy_rule **rules_p, attnd_session_policy *whole,
                                  attnd_policy_rule **whole_rules_p, attnd_error *err);
/* Bytes per layer of the group table's policy kinds (attnd__gtable_kinds):
 * the model's policy heads (GQA: KV heads; MLA: 1) + 1. */
size_t attnd__gkinds_stride(const attnd_group *g);
/* Keep the kinds of session id's whole policy p in the group table. */
attnd_status attnd__gpolicy_keep(attnd_group *g, const attnd_session_id *id,
                                 const attnd_session_policy *p, attnd_error *err);

#endif /* ATTND_GROUP_INT_H */
