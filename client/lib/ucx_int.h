/* Internals of libattnd's UCX transport, shared by ucx_transport.c (calls,
 * progress, waiting), ucx_reply.c (the reply handler) and ucx_connect.c
 * (handshake, connect, destroy). See client_int.h for the interface the
 * rest of the client uses.
 */
#ifndef ATTND_CLIENT_UCX_INT_H
#define ATTND_CLIENT_UCX_INT_H

#include "attnd_ucx.h"
#include "attnd_ucxw.h"
#include "client_int.h"

#define RBUF_POOL 8

typedef struct attnd__client_ucx {
    attnd_ucxw w;              /* context and worker (SERIALIZED); w.mu
                                  guards every field below and every ucp call */
    ucp_ep_h ep;
    size_t max_message;        /* the client's max_message_bytes */
    ucs_status_t failed;       /* UCS_OK, or why the endpoint died */
    int same_host;             /* no UCX error handling (shared memory) */
    int hello_done, bye_done;  /* ATTND_UCX_AM_HELLO / _BYE went out */
    ucs_status_t hello_st;
    int ep_closed;             /* closed by force (a send could not be withdrawn) */
    int server_pidfd;          /* same host: the server's process; else -1 */
    char address[300];         /* the server, for messages */
    char transports[64];       /* what UCX uses (attnd_ucxw_ep_transports) */
    attnd__client_ucx_call *calls; /* in flight, by id */
    void *rbufs[RBUF_POOL];    /* free rendezvous buffers */
    size_t rcaps[RBUF_POOL];
    int n_rbufs;
} attnd__client_ucx;

/* Under mu: the call in flight with this id, or NULL. */
attnd__client_ucx_call *attnd__client_ucx_call_find(attnd__client_ucx *u, uint64_t id);
/* Under mu: a pooled buffer of at least n bytes into k->rbuf; 0 or -1. */
int attnd__client_ucx_rbuf_get(attnd__client_ucx *u, attnd__client_ucx_call *k, size_t n);
/* Under mu: k is done with status st (its message already in k->err). */
void attnd__client_ucx_finish(attnd__client_ucx_call *k, attnd_status st);
/* The ATTND_UCX_AM_REPLY handler (ucx_reply.c); arg is the transport. */
ucs_status_t attnd__client_ucx_on_reply(void *arg, const void *header, size_t header_length,
                                        void *data, size_t length,
                                        const ucp_am_recv_param_t *param);
/* The endpoint's error handler; arg is the transport. */
void attnd__client_ucx_on_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status);

#endif /* ATTND_CLIENT_UCX_INT_H */
