/* Internals of the UCX Attend endpoint, shared by ucx_server.c (the
 * progress thread, callbacks, request handling) and ucx_setup.c (start and
 * stop). Everything here belongs to the progress thread once it runs.
 */
#ifndef ATTND_SRV_UCX_INT_H
#define ATTND_SRV_UCX_INT_H

#include <ucp/api/ucp.h>

#include "attnd_buf.h"
#include "attnd_ucx.h"
#include "ucx_server.h"

typedef struct ucx_conn {
    ucp_ep_h ep;                /* NULL until accepted */
    ucp_conn_request_h request; /* pending acceptance */
    int failed;   /* the error callback ran: close, send nothing */
    int refs;     /* jobs pointing here; freed at 0 once closed */
    int closed;
    struct ucx_conn *next;
} ucx_conn;

typedef struct ucx_job {
    struct attnd_srv_ucx *u;
    ucx_conn *conn;
    attnd_ucx_hdr hdr;      /* the request's */
    attnd_ucx_reply_hdr rhdr; /* the reply's (live until sent) */
    uint64_t t_arrival;
    void *held;             /* UCX's eager data, released after exec */
    const uint8_t *data;    /* the request bytes (held, or req.p) */
    size_t len;
    attnd_buf req, rep;
    int refused;            /* received while the server refuses: UNAVAILABLE */
    int counted;            /* counted in busy */
    attnd_status st;        /* executed: the reply's status, */
    size_t n;               /* and its payload bytes in rep */
    struct ucx_job *next;
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

struct attnd_srv_ucx {
    attnd_srv *srv;
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_listener_h listener;
    int efd;                 /* the worker's event fd */
    int stop_fd;             /* eventfd: attnd_srv_ucx_stop writes it */
    atomic_int stop;
    pthread_t tid;
    int running;
    char address[300];
    ucx_conn *conns;
    ucx_job *free_jobs;
    ucx_job *ready, *ready_tail; /* FIFO of jobs with all their bytes */
    attnd_engine_ws ws;          /* inline execution (no executors) */
    attnd_srv_arena arena;
    /* executors: the progress thread hands ready jobs over (queued) and
     * sends what comes back (done); q_mu guards both FIFOs */
    int n_exec;
    ucx_exec *exec;
    pthread_mutex_t q_mu;
    pthread_cond_t q_cv;         /* queued not empty, or exec_stop */
    ucx_fifo queued, done;
    int done_fd;                 /* eventfd: a job is done (wakes poll) */
    atomic_int n_done;           /* jobs in done (read without q_mu) */
    atomic_int exec_stop;
    atomic_int refusing;         /* the server drains: new requests refused */
    atomic_int busy;             /* requests received, not refused, not yet
                                    answered (a drain waits for them) */
    int q_init;                  /* q_mu and q_cv initialized */
};

/* ucx_server.c, for ucx_setup.c */
void attnd_srv_ucx_on_conn_request(ucp_conn_request_h req, void *arg);
ucs_status_t attnd_srv_ucx_on_attend(void *arg, const void *header, size_t header_length,
                                     void *data, size_t length,
                                     const ucp_am_recv_param_t *param);
/* Close c's endpoint (forced), progressing until done; may free c. */
void attnd_srv_ucx_close_ep(attnd_srv_ucx *u, ucx_conn *c);
/* Return j to the pool (releasing what it holds). */
void attnd_srv_ucx_job_put(ucx_job *j);
/* The progress thread (arg: the attnd_srv_ucx). */
void *attnd_srv_ucx_thread(void *arg);
/* An executor thread (arg: its ucx_exec). */
void *attnd_srv_ucx_exec_thread(void *arg);

#endif /* ATTND_SRV_UCX_INT_H */
