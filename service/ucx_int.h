/* Internals of the UCX Attend endpoint, shared by ucx_server.c (requests:
 * the AM callback, jobs, executors, replies), ucx_conn.c (connections:
 * admission from GetEndpoint, liveness, limits, stats) and ucx_setup.c
 * (start and stop). Everything here belongs to the progress thread once it
 * runs, except what the comments put under a lock.
 */
#ifndef ATTND_SRV_UCX_INT_H
#define ATTND_SRV_UCX_INT_H

#include "attnd_buf.h"
#include "attnd_ucx.h"
#include "attnd_ucxw.h"
#include "ucx_server.h"

/* One client's endpoint (made by the progress thread when the client's
 * GetEndpoint asked for it). */
typedef struct ucx_conn {
    ucp_ep_h ep;
    ucp_worker_h worker;  /* the one ep is on: the main worker, or (same
                             host) a peer worker of its own, retired once
                             the connection is closed and no job holds
                             UCX's data from it (common/attnd_ucxw.h) */
    int own_worker, worker_retired;
    int n_held;           /* jobs holding UCX's eager data (job->held) */
    uint64_t id;          /* "client <id>" in logs and stats */
    int32_t pid;          /* same host: the client's pid */
    int pidfd;            /* same host: watched for its exit; -1 otherwise */
    int same_host;        /* no UCX error handling (shared memory + CMA) */
    int failed;           /* its endpoint broke or its process exited:
                             close, send nothing */
    int closed;
    int refs;             /* jobs pointing here; freed at 0 once closed */
    /* limits (--ucx-conn-queue, --ucx-conn-bytes) */
    int n_queued;         /* admitted requests not yet answered */
    size_t held;          /* bytes of admitted requests not yet run */
    int n_out;            /* jobs of any kind outstanding (refusals too) */
    uint64_t refused;
    char transports[64];  /* what UCX uses (attnd_ucxw_ep_transports) */
    struct ucx_conn *next;
} ucx_conn;

typedef struct ucx_job {
    struct attnd_srv_ucx *u;
    ucx_conn *conn;
    attnd_ucx_hdr hdr;        /* the request's */
    attnd_ucx_reply_hdr rhdr; /* the reply's (live until sent) */
    uint64_t t_arrival;
    void *held;               /* UCX's eager data, released after exec */
    const uint8_t *data;      /* the request bytes (held, or req.p); NULL:
                                 refused (refusal says why) */
    size_t len;
    int admitted;             /* counts in conn->n_queued / held */
    int refused;              /* received while the server refuses (it
                                 drains): UNAVAILABLE, unread */
    int counted;              /* counted in busy */
    const char *refusal;      /* the limit a refused request hit */
    attnd_buf req, rep;
    attnd_status st;          /* executed: the reply's status, */
    size_t n;                 /* and its payload bytes in rep */
    struct ucx_job *next;
    struct ucx_job *all_next; /* every job ever made (attnd_srv_ucx.all_jobs) */
} ucx_job;

/* A FIFO of jobs. */
typedef struct ucx_fifo {
    ucx_job *head, *tail;
} ucx_fifo;

/* One executor thread (--ucx-exec-threads): runs jobs with its own engine
 * workspace and decode arena. */
typedef struct ucx_exec {
    struct attnd_srv_ucx *u;
    pthread_t tid;
    int running;
    attnd_engine_ws ws;
    attnd_srv_arena arena;
} ucx_exec;

/* A GetEndpoint waiting for the progress thread to connect to its client
 * (lives on the waiting gRPC thread's stack; adm_mu). */
typedef struct ucx_admit {
    const void *addr;
    size_t len;
    int on_host;            /* the client is on this host (warn if TCP) */
    int same_host, pidfd;   /* admitted to shared memory; its pidfd */
    int32_t pid;
    /* same host: the address of the connection's own worker, which the
     * client connects to (else the rank's) */
    unsigned char own_addr[ATTND_UCXW_ADDR_MAX];
    size_t own_len;
    int taken, done;        /* by the progress thread; finished */
    attnd_status st;
    char msg[ATTND_ERROR_MSG_MAX];
    struct ucx_admit *next;
} ucx_admit;

struct attnd_srv_ucx {
    attnd_srv *srv;
    attnd_ucxw w;            /* context, worker, progress thread */
    void *addr;              /* our worker address (clients connect to it) */
    size_t addr_len;
    attnd_ucxw_host host;
    char address[96];        /* GetEndpoint's ucx_address ("devices lo") */
    ucx_conn *conns;
    uint64_t next_conn_id;
    uint64_t last_watch_ns;  /* pidfds last looked at */
    ucx_job *free_jobs;
    ucx_job *all_jobs;  /* every job made, free or not: freed at stop, so a
                           job still in flight when the server stops (a
                           receive or send UCX dropped) is not lost */
    ucx_fifo ready;          /* jobs with all their bytes */
    attnd_engine_ws ws;      /* inline execution (no executors) */
    attnd_srv_arena arena;
    /* executors: the progress thread hands ready jobs over (queued) and
     * sends what comes back (done); q_mu guards both FIFOs */
    int n_exec;
    ucx_exec *exec;
    pthread_mutex_t q_mu;
    pthread_cond_t q_cv;     /* queued not empty, or exec_stop */
    ucx_fifo queued, done;
    atomic_int n_done;       /* jobs in done (read without q_mu) */
    atomic_int exec_stop;
    atomic_int refusing;     /* the server drains: new requests refused */
    atomic_int busy;         /* requests received, not refused, not yet
                                answered (a drain waits for them) */
    int q_init;
    /* GetEndpoint admissions (adm_mu; adm_cv: one finished) */
    pthread_mutex_t adm_mu;
    pthread_cond_t adm_cv;
    ucx_admit *admits;
    int adm_closed;          /* stopping: no more admissions */
    int adm_init;
    /* what GetStats shows (stats_mu; rebuilt when connections change) */
    pthread_mutex_t stats_mu;
    attnd_srv_ucx_ep_info *stats;
    size_t n_stats;
    int stats_init;
};

/* ucx_server.c */
ucs_status_t attnd_srv_ucx_on_attend(void *arg, const void *header, size_t header_length,
                                     void *data, size_t length,
                                     const ucp_am_recv_param_t *param);
ucs_status_t attnd_srv_ucx_on_hello(void *arg, const void *header, size_t header_length,
                                    void *data, size_t length, const ucp_am_recv_param_t *param);
ucs_status_t attnd_srv_ucx_on_bye(void *arg, const void *header, size_t header_length,
                                  void *data, size_t length, const ucp_am_recv_param_t *param);
/* Run ready jobs, send finished ones; 1 when anything happened. */
int attnd_srv_ucx_jobs(attnd_srv_ucx *u);
/* Return j to the pool (releasing what it holds). */
void attnd_srv_ucx_job_put(ucx_job *j);
/* An executor thread (arg: its ucx_exec). */
void *attnd_srv_ucx_exec_thread(void *arg);

/* ucx_conn.c */
/* The progress loop's work: admissions, then jobs, then dead clients. */
int attnd_srv_ucx_tend(void *arg);
/* The pidfds to sleep on. */
int attnd_srv_ucx_fds(void *arg, struct pollfd *fds, int cap);
/* The live connection of endpoint ep, or NULL. */
ucx_conn *attnd_srv_ucx_conn_of(attnd_srv_ucx *u, ucp_ep_h ep);
/* Take a job's request within c's limits: 0, or -1 with *why naming the
 * limit (the job is then answered RESOURCE_EXHAUSTED unread). */
int attnd_srv_ucx_conn_admit(attnd_srv_ucx *u, ucx_conn *c, size_t len, const char **why);
/* A job of c is done with its request bytes (decoded) / answered. */
void attnd_srv_ucx_conn_ran(ucx_conn *c, ucx_job *j);
void attnd_srv_ucx_conn_answered(attnd_srv_ucx *u, ucx_conn *c, ucx_job *j);
void attnd_srv_ucx_conn_unref(attnd_srv_ucx *u, ucx_conn *c);
/* A job of c keeps / gives back UCX's eager data (job->held). */
void attnd_srv_ucx_conn_hold(ucx_conn *c);
void attnd_srv_ucx_conn_release(attnd_srv_ucx *u, ucx_conn *c);
/* Close every connection and fail pending admissions (stop). */
void attnd_srv_ucx_conns_close_all(attnd_srv_ucx *u);

#endif /* ATTND_SRV_UCX_INT_H */
