/* Internal interfaces of the service room: configuration, the gRPC server
 * and its per-thread call machinery, and the RPC handlers.
 *
 * Shape: attnd_srv owns one grpc_server and T threads. Each thread owns a
 * completion queue registered with the server, requests calls of every
 * method on it, and drives each call it receives as a small state machine
 * (attnd_srv_call): every event of a call arrives on the thread that
 * accepted it, so a call's state needs no lock. Work is computed inline on
 * that thread, which owns one engine workspace, one decode arena and one
 * flatten buffer, reused for every message it handles.
 *
 * Names: attnd_srv_* for everything non-static in service/.
 */
#ifndef ATTND_SRV_H
#define ATTND_SRV_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include <grpc/grpc.h>

#include "attnd/status.h"
#include "attnd_group.h"
#include "attnd_worker.h"
#include "codec.h"
#include "validate.h"

/* ---- configuration (config.c) ---------------------------------------------
 * One struct, filled in one place: defaults, then ATTND_* environment
 * variables, then flags (flags win). */

typedef struct attnd_srv_config {
    char listen[256];          /* --listen host:port (port 0: ephemeral) */
    char model[64];            /* --model preset */
    int32_t threads;           /* --threads; 0 at load: number of CPUs */
    int32_t kernel_threads;    /* --kernel-threads; 0: the engine's default */
    char device[32];           /* --device cpu | cuda:N (the engine checks it) */
    char kernel_path[16];      /* --kernel-path auto | a CPU kernel path (the engine checks it) */
    uint32_t max_sessions;     /* --max-sessions */
    uint64_t kv_memory;        /* --kv-memory bytes */
    int32_t page_size;         /* --page-size tokens */
    attnd_dtype kv_dtype;      /* --kv-dtype; INVALID: the model's */
    uint64_t max_message;      /* --max-message bytes, send and receive */
    char port_file[PATH_MAX];  /* --port-file; "" none */
    int64_t shutdown_grace_ms; /* --shutdown-grace-ms before cancelling */
    int64_t http2_lookahead;   /* --http2-lookahead bytes; 0: gRPC default */
    int64_t http2_max_frame;   /* --http2-max-frame bytes; 0: gRPC default */
    char ucx_listen[256];      /* --ucx-listen host:port | auto; "" off */
    int32_t ucx_spin_us;       /* --ucx-spin-us: busy-poll before sleeping */
    int32_t ucx_exec_threads;  /* --ucx-exec-threads: 0 = run on the progress thread */
    /* worker group (service/group_setup.c turns these into an
     * attnd_group_config); group and group_file empty: a lone worker */
    int32_t rank;              /* --rank r */
    char group[4096];          /* --group host:port,host:port,... */
    char group_file[PATH_MAX]; /* --group-file: one host:port a line */
    char group_dir[PATH_MAX];  /* --group-dir: ranks' bound UCX addresses */
    char shard[16];            /* --shard sequence|head|latent */
    char tpla_rope[16];        /* --tpla-rope replicate|split */
    char tpla_mu[32];          /* --tpla-mu */
    int64_t group_connect_ms;  /* --group-connect-ms */
    int64_t group_timeout_ms;  /* --group-timeout-ms */
    int kv_prefault;           /* --kv-prefault */
    int show_help;             /* --help */
    int list_models;           /* --list-models */
} attnd_srv_config;

/* Defaults only. */
void attnd_srv_config_init(attnd_srv_config *cfg);
/* Defaults, environment, then argv[1..argc). INVALID_ARGUMENT naming the
 * flag or variable on a bad one; on success threads is resolved and the
 * model exists (unless help or list_models was asked for). */
attnd_status attnd_srv_config_load(attnd_srv_config *cfg, int argc,
                                   char *const *argv, attnd_error *err);
/* "1G", "64Mi", "4096": K/M/G = 10^3/10^6/10^9, Ki/Mi/Gi = 2^10/2^20/2^30,
 * an optional trailing B. -1 on a malformed or overflowing value. */
int attnd_srv_parse_size(const char *s, uint64_t *out_p);
void attnd_srv_config_usage(FILE *f);
void attnd_srv_config_list_models(FILE *f);
/* group_setup.c: the group settings of a loaded config. *enabled_p = 0
 * (and nothing else filled) for a lone worker; else gcfg is complete for
 * attnd_group_create (model = the full model spec with --kv-dtype
 * applied) and ecfg->model is replaced by this rank's shard.
 * INVALID_ARGUMENT naming the flag. */
attnd_status attnd_srv_config_group(const attnd_srv_config *cfg, attnd_engine_config *ecfg,
                                    attnd_group_config *gcfg, int *enabled_p,
                                    attnd_error *err);
/* Fill an engine config from a loaded service config. */
void attnd_srv_config_engine(const attnd_srv_config *cfg,
                             attnd_engine_config *ecfg);

/* ---- server and calls (server.c) ------------------------------------------ */

typedef enum attnd_srv_method_id {
    ATTND_SRV_M_CREATE_SESSION,
    ATTND_SRV_M_APPEND_KV,
    ATTND_SRV_M_ATTEND,
    ATTND_SRV_M_ATTEND_STREAM,
    ATTND_SRV_M_CLOSE_SESSION,
    ATTND_SRV_M_GET_STATS,
    ATTND_SRV_M_HEALTH_CHECK,
    ATTND_SRV_M_HEALTH_WATCH,
    ATTND_SRV_M_GET_ENDPOINT,
    ATTND_SRV_M_LOAD_WEIGHTS,
    ATTND_SRV_M_COUNT,
    /* calls to any other method, answered UNIMPLEMENTED */
    ATTND_SRV_M_GENERIC = ATTND_SRV_M_COUNT,
} attnd_srv_method_id;

typedef struct attnd_srv attnd_srv;
typedef struct attnd_srv_thread attnd_srv_thread;
typedef struct attnd_srv_call attnd_srv_call;

/* A completion queue tag: which of a call's two in-flight batches ended. */
typedef struct attnd_srv_tag {
    attnd_srv_call *call;
    int is_close; /* the RECV_CLOSE_ON_SERVER batch */
} attnd_srv_tag;

enum attnd_srv_call_state {
    ATTND_SRV_CALL_REQUESTED, /* waiting for a client */
    ATTND_SRV_CALL_ACTIVE,    /* the method's handler drives it */
    ATTND_SRV_CALL_FINISHING, /* status sent (or call dead); freed when idle */
};

/* One RPC on one thread. Pooled per thread: released calls are reused. */
struct attnd_srv_call {
    attnd_srv_thread *th;
    int method;                 /* attnd_srv_method_id */
    int state;                  /* attnd_srv_call_state */
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_call_details details;  /* generic calls: the method name */
    grpc_byte_buffer *recv;     /* payload of a unary call / last message */
    grpc_byte_buffer *send;     /* message of the batch in flight */
    int pending;                /* batches in flight */
    int op_inflight;            /* the handler's batch is in flight */
    int md_sent;                /* initial metadata sent */
    int close_started;          /* RECV_CLOSE_ON_SERVER issued */
    int close_done;             /* ...and completed: the call is over */
    int cancelled;              /* its result */
    int held;                   /* in the thread's held-open list */
    int counted;                /* counted in srv->active_calls */
    int end_requested;          /* held open: end at the next chance */
    void *stage;                /* AppendKV: the stream's attnd_engine_stage (a
                                   group: attnd_group_stream), NULL before its
                                   first chunk; aborted if the call ends
                                   uncommitted */
    grpc_metadata trailer[2];   /* trailing metadata of the final status */
    size_t n_trailer;
    attnd_srv_tag op_tag, close_tag;
    attnd_srv_call *next, *prev; /* free list, or the held-open list */
};

/* What a method does. start runs when a call arrives (a unary call's
 * payload in c->recv, possibly NULL); step runs when the handler's batch
 * completes (ok: it succeeded). Each must leave the call with a batch in
 * flight or finished (attnd_srv_call_finish). */
typedef struct attnd_srv_method {
    const char *path;
    int streaming; /* requests stream in: no payload read up front */
    void (*start)(attnd_srv_call *c);
    void (*step)(attnd_srv_call *c, int ok);
} attnd_srv_method;

struct attnd_srv_thread {
    attnd_srv *srv;
    int index;
    pthread_t tid;
    grpc_completion_queue *cq;
    int shutting_down;        /* a request failed: the server is stopping */
    attnd_engine_ws ws;       /* attend scratch, reused */
    attnd_srv_arena arena;    /* decode arena, reset per message */
    attnd_srv_buf flat;       /* flattened request bytes */
    attnd_srv_call *free_calls;
    attnd_srv_call *watches;  /* held-open calls (Health/Watch) */
    int running;              /* tid is a started thread */
    size_t live_calls;        /* calls taken from the pool, requests too */
};

struct attnd_srv {
    const attnd_srv_config *cfg;
    attnd_engine *engine;
    attnd_group *group;           /* NULL: a lone worker (the engine serves) */
    attnd_srv_model model;
    grpc_server *server;
    void *registered[ATTND_SRV_M_COUNT];
    attnd_srv_thread *threads;
    int n_threads;
    grpc_completion_queue *shutdown_cq;
    int port;
    int shut_down;
    atomic_int active_calls;      /* calls past REQUESTED, not yet released */
    atomic_uint_fast64_t errors;  /* calls ended with a non-OK status other
                                     than CANCELLED (the client's doing) */
    struct timespec started;      /* CLOCK_MONOTONIC */
    struct attnd_srv_ucx *ucx;    /* the UCX Attend endpoint (ucx_server.c);
                                     NULL when --ucx-listen is off */
};

/* Create the server: channel args from cfg, methods, completion queues, the
 * listening port (bound here; srv->port tells which). The engine stays the
 * caller's. Free with attnd_srv_destroy. */
attnd_status attnd_srv_create(const attnd_srv_config *cfg, attnd_engine *engine,
                              attnd_srv **srv_p, attnd_error *err);
/* Start serving and the threads. */
attnd_status attnd_srv_start(attnd_srv *srv, attnd_error *err);
/* Stop accepting, let calls in flight finish for up to grace_ms, cancel the
 * rest, drain the queues and join the threads. Returns 1 when calls had to
 * be cancelled, 0 otherwise. `interrupt` (may be NULL) is polled while
 * waiting: nonzero cuts the grace short. */
int attnd_srv_shutdown(attnd_srv *srv, int64_t grace_ms, int (*interrupt)(void));
/* Free a server that was shut down (or never started). */
void attnd_srv_destroy(attnd_srv *srv);

/* Milliseconds since the server was created. */
uint64_t attnd_srv_uptime_ms(const attnd_srv *srv);

/* ---- one call (call.c) ----------------------------------------------------- */

/* A call object of `method` for th, from th's pool (malloc when empty); the
 * pool owns it again after attnd_srv_call_put. NULL when out of memory. */
attnd_srv_call *attnd_srv_call_get(attnd_srv_thread *th, int method);
/* Drop everything c holds (its grpc_call, buffers, metadata) and return it
 * to its thread's pool. */
void attnd_srv_call_put(attnd_srv_call *c);
/* attnd_srv_call_put once c is finishing with no batch pending. */
void attnd_srv_call_maybe_release(attnd_srv_call *c);

/* Batches a handler starts: */

/* Receive the next message into c->recv (NULL when the client half-closed);
 * sends initial metadata first if not yet sent. */
void attnd_srv_call_recv(attnd_srv_call *c);
/* Send bb (ownership passes to the call) and, when and_recv, receive the
 * next message in the same batch. */
void attnd_srv_call_send(attnd_srv_call *c, grpc_byte_buffer *bb, int and_recv);
/* Hold the call open: receive the client's close in a batch of its own
 * (step is not called for it; the call just ends if the client goes away)
 * and list the call with its thread, which sets end_requested and calls
 * step(c, 1) when the server stops (at once if no batch is in flight, else
 * when it completes). For calls that wait on the server, like Watch. */
void attnd_srv_call_hold_open(attnd_srv_call *c);
/* End the call: optional reply bb (ownership passes), then status st with
 * msg (NULL for OK). Counts non-OK statuses. The call is released once its
 * batches are done. */
void attnd_srv_call_finish(attnd_srv_call *c, grpc_byte_buffer *bb,
                           attnd_status st, const char *msg);
/* Shorthand: finish with err's code and message. */
void attnd_srv_call_fail(attnd_srv_call *c, const attnd_error *err);
/* Decode c->recv as message type d into the thread's arena (reset first),
 * then drop c->recv. NULL with err filled when it is missing or not such a
 * message (INVALID_ARGUMENT); the caller fails the call. */
ProtobufCMessage *attnd_srv_call_decode(attnd_srv_call *c,
                                        const ProtobufCMessageDescriptor *d,
                                        attnd_error *err);
/* Add trailing metadata to the final status (key static, value copied). */
void attnd_srv_call_add_trailer(attnd_srv_call *c, const char *key,
                                const char *value);

/* ---- the methods (rpc_*.c, health.c) -------------------------------------- */

extern const attnd_srv_method attnd_srv_methods[ATTND_SRV_M_COUNT + 1];

void attnd_srv_create_session_start(attnd_srv_call *c);
void attnd_srv_close_session_start(attnd_srv_call *c);
void attnd_srv_append_start(attnd_srv_call *c);
void attnd_srv_append_step(attnd_srv_call *c, int ok);
/* Abort and give back c's AppendKV stage, if any (attnd_srv_call_put). */
void attnd_srv_append_drop(attnd_srv_call *c);
void attnd_srv_attend_start(attnd_srv_call *c);
void attnd_srv_attend_stream_start(attnd_srv_call *c);
void attnd_srv_attend_stream_step(attnd_srv_call *c, int ok);
void attnd_srv_get_stats_start(attnd_srv_call *c);
void attnd_srv_health_check_start(attnd_srv_call *c);
void attnd_srv_health_watch_start(attnd_srv_call *c);
void attnd_srv_health_watch_step(attnd_srv_call *c, int ok);
void attnd_srv_generic_start(attnd_srv_call *c);
void attnd_srv_load_weights_start(attnd_srv_call *c); /* rpc_weights.c */

/* ModelInfo of the served model (strings point into the engine's spec). */
void attnd_srv_model_info(const attnd_srv_model *m, Attnd__V1__ModelInfo *info);

#endif /* ATTND_SRV_H */
