/* The one UCX endpoint layer of attnd: what the server's Attend endpoint
 * (service/ucx_*.c), libattnd's UCX transport (client/lib/ucx_*.c), the
 * worker group's transport (worker/group_net.c) and the bench baseline
 * (client/bench/bench_baseline_ucx.c) share.
 *
 * An attnd_ucxw is one ucp context + worker (active messages + wake-up)
 * and what goes with it:
 *   - setup (ucxw_setup.c): messages up to 256K eager; UCX's network
 *     transports restricted to the interface that holds the address attnd
 *     was told to use (UCX_NET_DEVICES, so that UCX opens no TCP port on
 *     other interfaces); an optional fixed TCP port; the environment wins
 *     over both. No sockaddr listener anywhere: peers exchange worker
 *     addresses out of band (gRPC GetEndpoint for clients, the group's own
 *     rendezvous for ranks) and connect by address.
 *   - endpoints (ucxw_ep.c): connect by address with a checked address,
 *     peer error handling or none (same-host peers: liveness from a pidfd,
 *     see below), forced non-blocking close reaped by the loop, the
 *     transports an endpoint really uses (ucp_ep_print_info's lanes);
 *     sends and rendezvous receives whose completion callback runs exactly
 *     once.
 *   - progress (ucxw_loop.c): a thread that owns the worker (busy-poll
 *     while there is work and for spin_ns after, then ucp_worker_arm and
 *     poll() on the worker's event fd plus the caller's fds), or, for a
 *     client without a thread, attnd_ucxw_wait on the caller's thread.
 *   - host identity and pidfds (ucxw_host.c).
 *
 * Same-host peers: UCX 1.13 keeps its zero-copy CMA lane only for
 * endpoints without peer error handling (measured: 1.3 MB one way 104 us
 * over sysv + cma, 550 us over sysv with error handling, 844 us over
 * TCP). attnd therefore connects a peer on the same host (same boot id,
 * pid, IPC and network namespaces) with ATTND_UCXW_PEER_WATCHED: no UCX error
 * handling, and the peer's liveness from a pidfd of its process, which
 * the owner polls; a dead peer's endpoint is closed with force. Other
 * peers get ATTND_UCXW_PEER_CHECKED (UCX peer error handling, TCP).
 *
 * Peer workers: a UCX shared-memory worker has ONE receive FIFO that
 * every sender on the host writes into; a sender reserves a slot (a
 * compare-and-swap of the head) and then fills it. A sender killed
 * between the two leaves a slot that is never filled, and the receiver
 * waits on it for ever: nothing more arrives on that worker from anyone
 * (measured: a flooding sender SIGKILLed wedges the receiver in about one
 * kill of five). So a process that serves several same-host peers gives
 * each its own worker (attnd_ucxw_peer_worker: from a second context
 * restricted to shared memory, so that it opens no TCP port; the AM
 * handlers registered on the main worker), connects that peer on it and
 * hands it that worker's address; when the peer dies, the worker goes
 * with it (attnd_ucxw_peer_worker_retire) and a new one serves its
 * successor. A dead peer can then wedge nothing but its own worker. The
 * progress loop progresses, arms and polls every worker.
 *
 * Threads: mode SINGLE for a worker one thread owns; SERIALIZED when
 * several threads call in, each holding w->mu (attnd_ucxw_lock) around
 * every ucp call. attnd_ucxw_wake may be called from any thread.
 *
 * Names: attnd_ucxw_* (common room; proto/attnd_ucx.h's attnd_ucx_* is the
 * Attend framing).
 */
#ifndef ATTND_UCXW_H
#define ATTND_UCXW_H

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <ucp/api/ucp.h>

#include "attnd/status.h"

/* ---- setup (ucxw_setup.c) ------------------------------------------------------ */

typedef struct attnd_ucxw_config {
    ucs_thread_mode_t thread_mode;
    /* The host (numeric or name) whose interface UCX's network transports
     * are restricted to (the interface holding it, or the one routing to
     * it); NULL, "" or a wildcard: every interface. UCX_NET_DEVICES in the
     * environment wins. */
    const char *net_host;
    /* > 0: UCX's TCP transport listens on this port (UCX_TCP_PORT_RANGE,
     * which wins when set in the environment). 0: any. */
    int tcp_port;
} attnd_ucxw_config;

typedef struct attnd_ucxw_loop attnd_ucxw_loop;

/* A forced close in flight, and the worker its endpoint was on. */
typedef struct attnd_ucxw_closing {
    void *req;
    ucp_worker_h worker;
} attnd_ucxw_closing;

/* A peer worker (see the file comment). */
typedef struct attnd_ucxw_pw {
    ucp_worker_h worker;
    int efd;
    int retired;             /* destroyed once its closes are done, or
                                ATTND_UCXW_RETIRE_MS after retiring */
    uint64_t retired_ns;
} attnd_ucxw_pw;

/* How long a retired peer worker's forced closes may take before the
 * worker is destroyed anyway (UCX completes a forced close only with peer
 * error handling; a dead same-host peer's sends may stay queued). */
#define ATTND_UCXW_RETIRE_MS 200

#define ATTND_UCXW_MAX_AM 8

typedef struct attnd_ucxw {
    ucp_context_h ctx;
    ucp_worker_h worker;
    int efd;                 /* the worker's event fd */
    ucs_thread_mode_t mode;
    pthread_mutex_t mu;      /* SERIALIZED users: around every ucp call */
    int mu_init;
    char net_devices[64];    /* what UCX_NET_DEVICES became ("all": none set) */
    /* forced closes in flight (attnd_ucxw_ep_close), reaped by the loop */
    attnd_ucxw_closing *closing;
    size_t n_closing, cap_closing;
    /* peer workers (attnd_ucxw_peer_worker), their context (made with the
     * first), the AM handlers they get, the worker being progressed (the
     * one an AM callback's data came on: attnd_ucxw_am_recv) */
    ucp_context_h pw_ctx;
    attnd_ucxw_pw *pw;
    size_t n_pw, cap_pw;
    struct attnd_ucxw_am {
        unsigned id;
        ucp_am_recv_callback_t cb;
        void *arg;
    } am[ATTND_UCXW_MAX_AM];
    int n_am;
    ucp_worker_h cur;
    int cleaning;            /* attnd_ucxw_cleanup runs: retiring is moot */
    struct pollfd *pfds;     /* the loop's poll set */
    size_t cap_pfds;
    /* the progress thread (attnd_ucxw_start) */
    pthread_t tid;
    int running;
    atomic_int stop;
    struct attnd_ucxw_loop *loop;
} attnd_ucxw;

/* Create the context and worker into caller-owned *w (zeroed first).
 * UNAVAILABLE naming `who` (the flag the caller configures UCX with) on
 * failure; *w is then clean. Free with attnd_ucxw_cleanup. */
attnd_status attnd_ucxw_init(attnd_ucxw *w, const attnd_ucxw_config *cfg, const char *who,
                             attnd_error *err);
/* Close what attnd_ucxw_ep_close left in flight (2 s at most), destroy the
 * worker and context. The progress thread must be stopped. Safe on a
 * zeroed or half-made w. */
void attnd_ucxw_cleanup(attnd_ucxw *w);

/* Deliver active messages `id` whole to cb(arg), on the main worker and
 * on every peer worker (at most ATTND_UCXW_MAX_AM ids). */
ucs_status_t attnd_ucxw_on_am(attnd_ucxw *w, unsigned id, ucp_am_recv_callback_t cb, void *arg);

/* The worker's address (as peers pass it to attnd_ucxw_connect): a malloc'd
 * copy in *addr_p (the caller frees it), its length in *len_p. */
attnd_status attnd_ucxw_address(attnd_ucxw *w, void **addr_p, size_t *len_p, attnd_error *err);
/* The same for `worker` (the main one or a peer worker). */
attnd_status attnd_ucxw_worker_address(ucp_worker_h worker, void **addr_p, size_t *len_p,
                                       attnd_error *err);

/* A new peer worker (see the file comment) in *out, and its address (a
 * malloc'd copy the caller frees) in *addr_p, *len_p: one same-host peer
 * is to be connected on it (attnd_ucxw_connect_on) and given that
 * address. The loop that owns w progresses it from now on; the caller
 * holds w->mu (SERIALIZED) or is the loop's thread. UNAVAILABLE naming
 * `who` when UCX cannot make one (the caller may fall back to the main
 * worker); nothing is made then. */
attnd_status attnd_ucxw_peer_worker(attnd_ucxw *w, const char *who, ucp_worker_h *out,
                                    void **addr_p, size_t *len_p, attnd_error *err);
/* The peer it served is gone: once the endpoints closed on it with
 * attnd_ucxw_ep_close_on finished, or ATTND_UCXW_RETIRE_MS later, the loop
 * destroys it (operations still in flight on it complete then, with an
 * error, or never). The caller lets go of everything UCX lent from it (AM
 * data) first. Retiring a retired worker does nothing. */
void attnd_ucxw_peer_worker_retire(attnd_ucxw *w, ucp_worker_h worker);

/* The UCX_NET_DEVICES value for a host (see net_host above) into buf:
 * the interface's name, or "" for every interface. 0, or -1 when the host
 * does not resolve. Exposed for tests. */
int attnd_ucxw_net_device(const char *host, char *buf, size_t cap);

/* w->mu around ucp calls (SERIALIZED workers). */
static inline void attnd_ucxw_lock(attnd_ucxw *w) { pthread_mutex_lock(&w->mu); }
static inline void attnd_ucxw_unlock(attnd_ucxw *w) { pthread_mutex_unlock(&w->mu); }

/* ---- endpoints, sends, receives (ucxw_ep.c) --------------------------------------- */

/* Longest worker address accepted from a peer (UCX's own are a few
 * hundred bytes). */
#define ATTND_UCXW_ADDR_MAX 4096

typedef enum attnd_ucxw_peer_mode {
    ATTND_UCXW_PEER_CHECKED = 0, /* UCX peer error handling (TCP on one host too) */
    ATTND_UCXW_PEER_WATCHED = 1, /* no UCX error handling (shared memory + CMA on
                                    one host): the owner watches a pidfd */
} attnd_ucxw_peer_mode;

/* Check a worker address received from a peer before UCX parses it
 * (UCX 1.13 reads it without a length and aborts on an unknown version):
 * length bounds and version byte. 0 or -1. */
int attnd_ucxw_address_check(const void *addr, size_t len);

/* Connect to the worker at (addr, len) (checked as above). err_cb(arg)
 * runs on an endpoint error (inside progress). `who` names the peer in
 * messages. *ep_p set on success. */
attnd_status attnd_ucxw_connect(attnd_ucxw *w, const void *addr, size_t len,
                                attnd_ucxw_peer_mode mode, ucp_err_handler_cb_t err_cb,
                                void *arg, const char *who, ucp_ep_h *ep_p, attnd_error *err);
/* The same on `worker` (w's main worker or one of its peer workers). */
attnd_status attnd_ucxw_connect_on(ucp_worker_h worker, const void *addr, size_t len,
                                   attnd_ucxw_peer_mode mode, ucp_err_handler_cb_t err_cb,
                                   void *arg, const char *who, ucp_ep_h *ep_p, attnd_error *err);

/* Close ep (made on the main worker) without waiting (force: drop what is
 * queued on it; the peer is dead or unwanted). The loop (or
 * attnd_ucxw_reap) frees the request. */
void attnd_ucxw_ep_close(attnd_ucxw *w, ucp_ep_h ep, int force);
/* The same for an endpoint made on `worker`. */
void attnd_ucxw_ep_close_on(attnd_ucxw *w, ucp_worker_h worker, ucp_ep_h ep, int force);
/* Free close requests that finished, and destroy retired peer workers
 * whose closes all finished. The progress loop calls it (outside
 * progress). */
void attnd_ucxw_reap(attnd_ucxw *w);
/* Close ep and progress until done or timeout_ms (then cancel). For
 * owners without a loop (a client's destroy). */
void attnd_ucxw_ep_close_wait(attnd_ucxw *w, ucp_ep_h ep, int force, int timeout_ms);

/* The transports ep's lanes use, unique, in lane order, space-separated
 * ("sysv/memory cma/memory", "tcp/lo") into buf. 0, or -1 (buf "?"). */
int attnd_ucxw_ep_transports(ucp_ep_h ep, char *buf, size_t cap);
/* 1 when a transports string has a TCP lane. */
int attnd_ucxw_transports_tcp(const char *transports);

/* A send's or receive's end: status UCS_OK, or why it failed (the
 * endpoint broke, or it was cancelled). For receives, length is the
 * bytes received. */
typedef void (*attnd_ucxw_send_cb)(void *user, ucs_status_t status);
typedef void (*attnd_ucxw_recv_cb)(void *user, ucs_status_t status, size_t length);

/* Send active message `id`: header (hlen bytes, must live until cb) and
 * `count` elements of `dt` at data (contig bytes or a ucp_dt_iov_t list).
 * cb(user, status) runs exactly once: before this returns when the send
 * completes or fails at once, else from progress. *req_p (may be NULL)
 * is the request while it is in flight, NULL when cb already ran (for
 * ucp_request_cancel). flags: UCP_AM_SEND_FLAG_*. */
void attnd_ucxw_am_send(ucp_ep_h ep, unsigned id, const void *hdr, size_t hlen,
                        const void *data, size_t count, ucp_datatype_t dt, uint32_t flags,
                        attnd_ucxw_send_cb cb, void *user, void **req_p);
/* Receive a rendezvous message's data (desc: the AM callback's data) into
 * buf: count elements of dt, on the worker the message came on (the one
 * being progressed). cb exactly once, as above. The AM callback that calls
 * this returns UCS_INPROGRESS. */
void attnd_ucxw_am_recv(attnd_ucxw *w, void *desc, void *buf, size_t count, ucp_datatype_t dt,
                        attnd_ucxw_recv_cb cb, void *user, void **req_p);

/* ---- progress (ucxw_loop.c) ----------------------------------------------------------- */

struct attnd_ucxw_loop {
    /* After each progress round, on the thread (under w->mu when locked):
     * the owner's work (queues, connections, timers). Returns 1 when it did
     * something (the loop keeps spinning). */
    int (*tend)(void *arg);
    /* Before sleeping: the owner's fds to wake for (pidfds, sockets), at
     * most cap; returns how many. NULL: none. */
    int (*fds)(void *arg, struct pollfd *fds, int cap);
    void *arg;
    uint64_t spin_ns; /* busy-poll this long after the last event */
    int tick_ms;      /* longest sleep (timers); -1: until woken */
    int locked;       /* hold w->mu around progress and tend */
};

/* Start the progress thread over *loop (copied). */
attnd_status attnd_ucxw_start(attnd_ucxw *w, const attnd_ucxw_loop *loop, const char *who,
                              attnd_error *err);
/* Stop and join it (safe when not started). */
void attnd_ucxw_stop(attnd_ucxw *w);
/* Wake the progress thread (or a waiter) from any thread. */
void attnd_ucxw_wake(attnd_ucxw *w);

/* For a worker without a thread (SERIALIZED, w->mu): progress on the
 * calling thread until done(arg) (read under w->mu) or deadline_ns
 * (attnd_clock_ns), spinning spin_ns after the last event, then sleeping
 * on the event fd (1 ms at a time, so that every waiting thread gets to
 * progress). watch_fd >= 0 is polled too: when it becomes readable the
 * wait returns. 0: done; 1: watch_fd fired; -1: deadline. */
int attnd_ucxw_wait(attnd_ucxw *w, int (*done)(void *arg), void *arg, uint64_t deadline_ns,
                    uint64_t spin_ns, int watch_fd);

/* ---- host identity, pidfds (ucxw_host.c) --------------------------------------------- */

/* Who a process is, as far as same-host transports care. */
typedef struct attnd_ucxw_host {
    char boot_id[40];  /* /proc/sys/kernel/random/boot_id */
    uint64_t pid_ns;   /* inode of /proc/self/ns/pid */
    uint64_t ipc_ns;   /* inode of /proc/self/ns/ipc */
    uint64_t net_ns;   /* inode of /proc/self/ns/net */
    uint32_t uid;
    int32_t pid;
} attnd_ucxw_host;

/* This process. Fields it cannot read stay zero (then nothing is "same"). */
void attnd_ucxw_host_self(attnd_ucxw_host *h);
/* 1 when a and b are on one host in the same pid, IPC and network
 * namespaces under one uid, so that shared memory and CMA reach and a
 * pidfd of the peer can be opened. (The network namespace: processes in
 * different ones are deployed as if on different hosts, and should be cut
 * off by a network partition like them.) */
int attnd_ucxw_host_same(const attnd_ucxw_host *a, const attnd_ucxw_host *b);
/* A pidfd of process pid (pidfd_open), -1 when it cannot be opened (gone,
 * or the kernel has no pidfds). */
int attnd_ucxw_pidfd(pid_t pid);
/* 1 when the process behind a pidfd has exited (poll, no wait). */
int attnd_ucxw_pidfd_exited(int fd);
/* 1 when pidfds work here and ATTND_UCX_SHM is not "0": same-host peers
 * may then use ATTND_UCXW_PEER_WATCHED. */
int attnd_ucxw_shm_allowed(void);

#endif /* ATTND_UCXW_H */
