/* Internal interfaces of the service room: configuration, the gRPC server
 * and its call machinery, and the RPC handlers.
 *
 * Shape: attnd_srv owns one grpc_server, its own listening sockets
 * (listener.c, which hands every accepted connection to gRPC), --io-threads
 * completion-queue threads and an executor pool of --threads threads
 * (exec.c). Acceptance is decoupled from execution:
 *
 * - An io thread owns one completion queue registered with the server and
 *   keeps ATTND_SRV_REQUESTS calls of every method requested on it,
 *   re-posting one as soon as one is taken, so a call leaves gRPC's own
 *   queue as it arrives (in a larger burst, once the io thread gets to
 *   it: microseconds). It never blocks on work: control calls
 *   (Health Check and Watch, GetStats, GetEndpoint, unknown methods) are
 *   answered inline; every event of a work call (CreateSession,
 *   CloseSession, AppendKV, Attend, AttendStream, LoadWeights: the call
 *   taken, a message received) goes to the executor queue.
 * - An executor owns one attnd_srv_ctx (engine workspace, decode arena,
 *   flatten buffer, reused for every message it runs), runs one handler
 *   step at a time and starts the call's next batch itself
 *   (grpc_call_start_batch is thread-safe); the batch's completion comes
 *   back to the io thread of the call's queue. A group leader waiting for a
 *   hung peer therefore holds one executor, never health or stats.
 *
 * Ownership of a call (attnd_srv_call), the rule every state change obeys:
 * one thread at a time touches a call. The io thread of its queue owns it
 * while handling one of its events; for a work call it then hands the
 * event to the executor queue, and the queue, then the executor that pops
 * it, owns the call until it starts the call's next batch (or ends it).
 * From the instant grpc_call_start_batch is entered the completion may run
 * on the io thread, so call.c does all its bookkeeping before that and no
 * caller touches the call after any attnd_srv_call_recv/send/finish/fail.
 * A work call has at most one batch in flight (its RECV_CLOSE_ON_SERVER
 * travels with the final status), hence never two owners. A held-open call
 * (Watch) has two batches in flight; Watch calls are touched only under
 * srv->watch_mu, by their io thread and by whoever ends them when health
 * changes (health.c). The call pool (pool_mu), the executor queue (q_mu)
 * and the counters (atomics) are the only other shared state.
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
#include "auth.h"
#include "attnd_worker.h"
#include "codec.h"
#include "metrics.h"
#include "validate.h"

/* ---- configuration (config.c) ---------------------------------------------
 * One struct, filled in one place: defaults, then ATTND_* environment
 * variables, then flags (flags win). */

typedef struct attnd_srv_config {
    char listen[256];          /* --listen host:port (port 0: ephemeral) */
    char model[64];            /* --model preset */
    int32_t threads;           /* --threads: executors; 0 at load: number of CPUs */
    int32_t io_threads;        /* --io-threads; 0 at load: min(2, CPUs) */
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
    int64_t drain_delay_ms;    /* --drain-delay-ms: still serving, health NOT_SERVING */
    int64_t max_connections;   /* --max-connections; 0 at load: from the fd limit */
    int64_t http2_lookahead;   /* --http2-lookahead bytes; 0: gRPC default */
    int64_t http2_max_frame;   /* --http2-max-frame bytes; 0: gRPC default */
    char ucx_listen[256];      /* --ucx-listen host:port | auto; "" off */
    int32_t ucx_spin_us;       /* --ucx-spin-us: busy-poll before sleeping */
    int32_t ucx_exec_threads;  /* --ucx-exec-threads: 0 = run on the progress thread */
    int32_t ucx_conn_queue;    /* --ucx-conn-queue: requests a UCX connection
                                  may have received and not yet answered */
    uint64_t ucx_conn_bytes;   /* --ucx-conn-bytes: request bytes a UCX
                                  connection may hold before they run */
    /* worker group (service/group_setup.c turns these into an
     * attnd_group_config); group and group_file empty: a lone worker */
    int32_t rank;              /* --rank r */
    char group[4096];          /* --group host:port,host:port,... */
    char group_file[PATH_MAX]; /* --group-file: one host:port a line */
    char group_dir[PATH_MAX];  /* --group-dir: ranks' bound UCX addresses */
    char group_secret_file[PATH_MAX]; /* --group-secret-file: ranks prove it */
    char shard[16];            /* --shard sequence|head|latent */
    char tpla_rope[16];        /* --tpla-rope replicate|split */
    char tpla_mu[32];          /* --tpla-mu */
    int64_t group_connect_ms;  /* --group-connect-ms */
    int64_t group_timeout_ms;  /* --group-timeout-ms */
    int kv_prefault;           /* --kv-prefault */
    /* security (issue 15; auth.c, tls.c, expire.c) */
    char tls_cert[PATH_MAX];   /* --tls-cert: PEM chain; "" plaintext gRPC */
    char tls_key[PATH_MAX];    /* --tls-key: its PEM private key */
    char tls_client_ca[PATH_MAX]; /* --tls-client-ca: require client certs
                                     signed by these (mutual TLS) */
    char token_file[PATH_MAX]; /* --token-file: tenants; "" no auth */
    int64_t tenant_max_sessions; /* --tenant-max-sessions; 0: no limit */
    uint64_t tenant_kv_memory; /* --tenant-kv-memory bytes; 0: no limit */
    int64_t session_idle_ttl_ms; /* --session-idle-ttl; 0: never */
    int64_t keepalive_ms;      /* --grpc-keepalive-ms: ping an idle connection */
    int64_t keepalive_timeout_ms; /* --grpc-keepalive-timeout-ms: then close it */
    int64_t handshake_timeout_ms; /* --handshake-timeout-ms (TLS) */
    int64_t max_streams;       /* --max-streams per connection */
    uint64_t grpc_memory;      /* --grpc-memory: gRPC's resource quota */
    char metrics_listen[256];  /* --metrics-listen host:port; "" off */
    char log_format[8];        /* --log-format text|json */
    char log_level[8];         /* --log-level error|warn|info|debug */
    int print_config;          /* --print-config */
    /* KV tiers and durability (worker/TIERS.md) */
    char kv_dir[256];          /* --kv-dir: the disk tier; "" none */
    uint64_t kv_disk;          /* --kv-disk bytes; 0: 4 x kv_memory */
    uint64_t kv_host;          /* --kv-host bytes below a GPU; 0 none */
    int32_t kv_prefetch;       /* --kv-prefetch layers ahead; 0 off */
    int32_t kv_io_depth;       /* --kv-io-depth I/Os in flight */
    char durable[8];           /* --durable[=sync|batch]: "", "off", "sync", "batch" */
    int32_t durable_window_ms; /* --durable-window-ms (batch) */
    uint64_t durable_segment;  /* --durable-segment bytes of a log segment */
    uint64_t durable_checkpoint; /* --durable-checkpoint: log bytes between checkpoints */
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
/* "600", "600s", "10m", "1h", "500ms" (a bare number is seconds) -> ms.
 * -1 on a malformed or overflowing value. */
int attnd_srv_parse_duration_ms(const char *s, int64_t *ms_p);
void attnd_srv_config_usage(FILE *f);
/* --durable as ATTND_ENGINE_DURABLE_*. */
int attnd_srv_durable_mode(const attnd_srv_config *cfg);
void attnd_srv_config_list_models(FILE *f);
/* Every setting of a loaded config as "--flag=value" lines (flags that are
 * off are left out), in --help's order: what the defaults, the ATTND_*
 * variables and the flags came to. */
void attnd_srv_config_print(FILE *f, const attnd_srv_config *cfg);
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

/* ---- server and calls (server.c, call.c, exec.c, drain.c, listener.c) ----- */

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
    /* metrics only: Attend over the UCX endpoint */
    ATTND_SRV_MX_UCX_ATTEND,
} attnd_srv_method_id;

/* Calls of each method kept requested per io thread. A burst of more
 * concurrent arrivals than this waits in gRPC's queue only until the io
 * thread re-posts (microseconds: it never blocks on work). */
#define ATTND_SRV_REQUESTS 16

typedef struct attnd_srv attnd_srv;
typedef struct attnd_srv_thread attnd_srv_thread;
typedef struct attnd_srv_call attnd_srv_call;

/* What a thread needs to run handlers, reused for every message: the
 * engine workspace (outputs live there until its next use), the decode
 * arena and the buffer a request is flattened into. Owned by one thread. */
typedef struct attnd_srv_ctx {
    attnd_engine_ws ws;
    attnd_srv_arena arena;
    attnd_srv_buf flat;
} attnd_srv_ctx;

void attnd_srv_ctx_init(attnd_srv_ctx *x);
void attnd_srv_ctx_cleanup(attnd_srv_ctx *x);

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

/* One RPC. Pooled per server (srv->pool_mu): released calls are reused,
 * so after warm-up taking a call allocates nothing. See the ownership rule
 * at the top of this file. */
struct attnd_srv_call {
    attnd_srv *srv;
    attnd_srv_thread *th;       /* the io thread whose queue it is on */
    attnd_srv_ctx *x;           /* scratch of the thread running its handler
                                   now (set before each handler step) */
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
    int held;                   /* in srv->watches */
    int counted;                /* counted in srv->active_calls */
    int end_requested;          /* held open: end at the next chance */
    int job_ok;                 /* queued for an executor: -1 start, else
                                   step with this ok */
    uint64_t t_event_ns;        /* when the io thread queued it (CLOCK_MONOTONIC) */
    void *stage;                /* AppendKV: the stream's attnd_engine_stage (a
                                   group: attnd_group_stream), NULL before its
                                   first chunk; aborted if the call ends
                                   uncommitted */
    uint64_t t_start_ns;        /* when it became ACTIVE (metrics) */
    int mx_live;                /* accepted, not yet counted in the metrics */
    uint64_t request_id;        /* the client's id, when the request has one
                                   (Attend's request_id; logs) */
    attnd_status final_st;      /* the status it ended with (metrics;
                                   CANCELLED until finish sends one) */
    grpc_metadata trailer[2];   /* trailing metadata of the final status */
    size_t n_trailer;
    attnd_srv_tenant *tenant;   /* who it is (auth.c); NULL: no --token-file */
    int admin;                  /* the tenant may see global figures */
    attnd_srv_tag op_tag, close_tag;
    attnd_srv_call *next, *prev; /* free list, or the held-open list */
    attnd_srv_call *qnext;      /* the executor queue */
};

/* What a method does. start runs when a call arrives (a unary call's
 * payload in c->recv, possibly NULL); step runs when the handler's batch
 * completes (ok: it succeeded). Each must leave the call with a batch in
 * flight or finished (attnd_srv_call_finish), and touch it no more after.
 * exec: run by the executor pool (engine or group work); else inline on
 * the io thread, which must never block. */
typedef struct attnd_srv_method {
    const char *path;
    int streaming; /* requests stream in: no payload read up front */
    int exec;
    void (*start)(attnd_srv_call *c);
    void (*step)(attnd_srv_call *c, int ok);
} attnd_srv_method;

/* A completion-queue thread (--io-threads). */
struct attnd_srv_thread {
    attnd_srv *srv;
    int index;
    pthread_t tid;
    int running;              /* tid is a started thread */
    grpc_completion_queue *cq;
    attnd_srv_ctx x;          /* control calls answered inline */
};

/* An executor thread (--threads). */
typedef struct attnd_srv_exec {
    attnd_srv *srv;
    pthread_t tid;
    int running;
    attnd_srv_ctx x;
} attnd_srv_exec;

typedef struct attnd_srv_listener attnd_srv_listener;
typedef struct attnd_srv_tls attnd_srv_tls;
typedef struct attnd_srv_watchdog attnd_srv_watchdog;
typedef struct attnd_srv_expire attnd_srv_expire;

struct attnd_srv {
    const attnd_srv_config *cfg;
    attnd_engine *engine;
    attnd_group *group;           /* NULL: a lone worker (the engine serves) */
    attnd_srv_model model;
    grpc_server *server;
    void *registered[ATTND_SRV_M_COUNT];
    attnd_srv_thread *threads;    /* io threads */
    int n_threads;
    attnd_srv_exec *execs;        /* executors */
    int n_execs;
    /* the executor queue: calls whose event waits for an executor */
    pthread_mutex_t q_mu;
    pthread_cond_t q_cv;
    attnd_srv_call *q_head, *q_tail;
    int q_stop;                   /* executors: exit once the queue is empty */
    /* the call pool */
    pthread_mutex_t pool_mu;
    attnd_srv_call *free_calls;
    size_t live_calls;            /* taken from the pool, requests too */
    /* held-open calls (Watch) */
    pthread_mutex_t watch_mu;
    attnd_srv_call *watches;
    grpc_completion_queue *shutdown_cq;
    attnd_srv_listener *listener; /* listener.c (plaintext gRPC) */
    attnd_srv_tls *tls;           /* tls.c: --tls-cert; NULL: plaintext */
    attnd_srv_watchdog *watchdog; /* watchdog.c: gRPC's own listener (TLS) */
    attnd_srv_auth *auth;         /* auth.c: --token-file; NULL: no auth */
    attnd_srv_expire *expire;     /* expire.c: --session-idle-ttl */
    int port;
    int64_t max_connections;      /* in force (listener.c) */
    int started, shut_down;
    atomic_int draining;          /* a stop signal came: health NOT_SERVING */
    atomic_int refusing;          /* new calls get UNAVAILABLE */
    atomic_int cancelling;        /* grace over: queued work is not run */
    atomic_int listener_dead;     /* the accept loop failed: NOT_SERVING */
    atomic_int active_calls;      /* calls accepted and not refused, not yet
                                     released (their final batch done): what
                                     a drain waits for */
    atomic_uint_fast64_t errors;  /* calls ended with a non-OK status other
                                     than CANCELLED (the client's doing) */
    struct timespec started_at;   /* CLOCK_MONOTONIC */
    struct attnd_srv_ucx *ucx;    /* the UCX Attend endpoint (ucx_server.c);
                                     NULL when --ucx-listen is off */
    attnd_srv_metrics *metrics;   /* counters of every thread (metrics.h) */
    struct MHD_Daemon *metrics_http; /* --metrics-listen (metrics_http.c) */
    int metrics_port;             /* its bound port */
};

/* Create the server: channel args from cfg, methods, completion queues,
 * executor contexts, the listening sockets (bound here; srv->port tells
 * which). The engine stays the caller's. Free with attnd_srv_destroy. */
attnd_status attnd_srv_create(const attnd_srv_config *cfg, attnd_engine *engine,
                              attnd_srv **srv_p, attnd_error *err);
/* Start serving: the UCX endpoint, gRPC, executors, io threads and the
 * accept loop. */
attnd_status attnd_srv_start(attnd_srv *srv, attnd_error *err);
/* Drain and stop (drain.c). At once: health says NOT_SERVING (Check, and
 * every Watch gets it and ends). For drain_delay_ms new calls are still
 * served. Then new calls get UNAVAILABLE (Health and GetStats still
 * answer) while calls received before that (queued for an executor, open
 * streams, UCX requests) run to their end, for up to grace_ms; then the
 * connections are closed, whatever is left is cancelled, the threads are
 * joined. Returns 1 when calls had to be cancelled, else 0. `interrupt`
 * (may be NULL) is polled while waiting: nonzero cuts the delay and the
 * grace short. */
int attnd_srv_shutdown(attnd_srv *srv, int64_t drain_delay_ms, int64_t grace_ms,
                       int (*interrupt)(void));
/* Free a server that was shut down (or never started). */
void attnd_srv_destroy(attnd_srv *srv);

/* health.c: readiness as the "readiness" health service reports it: 1
 * while the server is not draining and, in a worker group, every peer is
 * connected. Any thread. */
int attnd_srv_ready(attnd_srv *srv);

/* Milliseconds since the server was created. */
uint64_t attnd_srv_uptime_ms(const attnd_srv *srv);
/* 1 while health may say SERVING: no stop signal, accept loop alive. */
int attnd_srv_serving(const attnd_srv *srv);

/* exec.c: the executor pool. init makes the contexts and the queue;
 * start the threads (cleaned up by stop on failure); stop lets them empty
 * the queue and joins them; cleanup frees the contexts. */
attnd_status attnd_srv_exec_init(attnd_srv *srv, int n, attnd_error *err);
attnd_status attnd_srv_exec_start(attnd_srv *srv, attnd_error *err);
void attnd_srv_exec_stop(attnd_srv *srv);
void attnd_srv_exec_cleanup(attnd_srv *srv);
/* Hand c's event to the executors: ok < 0 runs its method's start, else
 * its step(c, ok). The caller no longer owns c. Allocates nothing. */
void attnd_srv_exec_push(attnd_srv_call *c, int ok);

/* listener.c: the gRPC listening sockets and their accept loop. open binds
 * every address of `listen` (HOST:PORT; port 0: ephemeral) and sets
 * srv->port; start runs the accept loop, which hands each connection to
 * gRPC (grpc_server_add_channel_from_fd) and refuses (closes at once) any
 * beyond cfg->max_connections; stop ends the loop and closes the sockets.
 * An accept that fails for want of descriptors never stops the loop. */
attnd_status attnd_srv_listener_open(attnd_srv *srv, attnd_error *err);
attnd_status attnd_srv_listener_start(attnd_srv *srv, attnd_error *err);
void attnd_srv_listener_stop(attnd_srv *srv);
/* Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit
 * now in force (0 when unknown). */
uint64_t attnd_srv_raise_fd_limit(void);
/* The --max-connections a config of 0 resolves to under fd limit `nofile`:
 * the limit less a reserve (a quarter, at least 64) for everything else
 * attnd opens. */
int64_t attnd_srv_default_max_connections(uint64_t nofile);

/* tls.c: the SSL server credentials (*creds_p: the caller's reference)
 * whose certificates come from the files of cfg, checked first;
 * INVALID_ARGUMENT naming the flag. reload reads them again for the next
 * connections; on failure nothing changes. */
attnd_status attnd_srv_tls_open(const attnd_srv_config *cfg, attnd_srv_tls **tls_p,
                                grpc_server_credentials **creds_p, attnd_error *err);
attnd_status attnd_srv_tls_reload(attnd_srv_tls *t, attnd_error *err);
void attnd_srv_tls_close(attnd_srv_tls *t);

/* watchdog.c: with TLS, gRPC listens (open: grpc_server_add_http2_port,
 * sets srv->port) and a watchdog thread (start, after the server started)
 * turns health NOT_SERVING if gRPC stops accepting; stop joins it. */
attnd_status attnd_srv_watchdog_open(attnd_srv *srv, grpc_server_credentials *creds,
                                     attnd_error *err);
attnd_status attnd_srv_watchdog_start(attnd_srv *srv, attnd_error *err);
void attnd_srv_watchdog_stop(attnd_srv *srv);

/* expire.c: --session-idle-ttl. A thread closes the sessions no call named
 * for that long (attnd_engine_reap_idle; in a group, on every rank). */
attnd_status attnd_srv_expire_start(attnd_srv *srv, attnd_error *err);
void attnd_srv_expire_stop(attnd_srv *srv);

/* Reread --token-file and the TLS files (SIGHUP). Each part that fails is
 * logged and left as it was; 0 when everything reloaded. */
int attnd_srv_reload(attnd_srv *srv);

/* ---- one call (call.c) ----------------------------------------------------- */

/* A call object of `method` for io thread th, from the server's pool
 * (malloc when empty); the pool owns it again after attnd_srv_call_put.
 * NULL when out of memory. */
attnd_srv_call *attnd_srv_call_get(attnd_srv_thread *th, int method);
/* Drop everything c holds (its grpc_call, buffers, metadata) and return it
 * to the pool. */
void attnd_srv_call_put(attnd_srv_call *c);
/* attnd_srv_call_put once c is finishing with no batch pending. */
void attnd_srv_call_maybe_release(attnd_srv_call *c);

/* Batches a handler starts. After recv, send, finish and fail the caller
 * must not touch c again: the batch's completion may already be running on
 * the io thread, or, when no batch could start, c went back to the pool. */

/* Receive the next message into c->recv (NULL when the client half-closed);
 * sends initial metadata first if not yet sent. */
void attnd_srv_call_recv(attnd_srv_call *c);
/* Send bb (ownership passes to the call) and, when and_recv, receive the
 * next message in the same batch. */
void attnd_srv_call_send(attnd_srv_call *c, grpc_byte_buffer *bb, int and_recv);
/* Hold the call open: receive the client's close in a batch of its own
 * (step is not called for it; the call just ends if the client goes away)
 * and list the call in srv->watches (caller holds watch_mu), where
 * attnd_srv_health_end_watches finds it. For calls that wait on the
 * server, like Watch. 0: held, c is still the caller's; -1: it could not
 * be (c is gone). */
int attnd_srv_call_hold_open(attnd_srv_call *c);
/* End the call: optional reply bb (ownership passes), then status st with
 * msg (NULL for OK). Counts non-OK statuses. The call is released once its
 * batches are done. */
void attnd_srv_call_finish(attnd_srv_call *c, grpc_byte_buffer *bb,
                           attnd_status st, const char *msg);
/* Shorthand: finish with err's code and message. */
void attnd_srv_call_fail(attnd_srv_call *c, const attnd_error *err);
/* Decode c->recv as message type d into c->x's arena (reset first), then
 * drop c->recv. NULL with err filled when it is missing or not such a
 * message (INVALID_ARGUMENT); the caller fails the call. */
ProtobufCMessage *attnd_srv_call_decode(attnd_srv_call *c,
                                        const ProtobufCMessageDescriptor *d,
                                        attnd_error *err);
/* The owner tag of c's sessions: its tenant's, 0 without --token-file. */
static inline uint64_t attnd_srv_call_owner(const attnd_srv_call *c)
{
    return c->tenant ? c->tenant->tag : 0;
}
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
/* Health changed (a stop signal, a dead listener): every held Watch gets
 * NOT_SERVING and ends. Takes watch_mu. */
void attnd_srv_health_end_watches(attnd_srv *srv);
void attnd_srv_generic_start(attnd_srv_call *c);
void attnd_srv_load_weights_start(attnd_srv_call *c); /* rpc_weights.c */

/* ModelInfo of the served model (strings point into the engine's spec). */
void attnd_srv_model_info(const attnd_srv_model *m, Attnd__V1__ModelInfo *info);

#endif /* ATTND_SRV_H */
