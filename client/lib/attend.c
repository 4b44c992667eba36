/* Attend: one layer's decode step for a batch, synchronous or async.
 *
 * Both forms encode the request (attend_wire.c) and start the whole unary
 * call as one batch on its own pluck queue (rpc.c). The sync form plucks at
 * once; the async form returns an attnd_call that owns the call, and
 * attnd_call_wait plucks, decodes into the caller's out/lse and frees it.
 * The request bytes live in the call's slice, so the caller may reuse q and
 * new_kv as soon as attnd_client_attend_async returns. With the UCX
 * transport the same encoded request goes out as an active message instead
 * (ucx_transport.c) and the wait progresses the client's ucp worker.
 *
 * The sparse forms (attnd_client_attend_sparse, _sparse_async) are the
 * same calls with the sparse arguments added to the message
 * (attend_sparse.c); the plain forms are them with none. The async form's
 * given lists are copied into the request like q; its chosen lists are
 * written by the wait, with out and lse.
 */
#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"

/* q_form was added after up_project in the tail padding the struct had:
 * its size (what callers built against the older header allocate) did not
 * change, so an older caller's zeroed struct reads as the absorbed form. */
_Static_assert(offsetof(attnd_attend_args, q_form) ==
                   offsetof(attnd_attend_args, up_project) + sizeof(int) &&
               sizeof(attnd_attend_args) ==
                   (offsetof(attnd_attend_args, up_project) + sizeof(int) +
                    alignof(attnd_attend_args) - 1) / alignof(attnd_attend_args) *
                       alignof(attnd_attend_args),
               "attnd_attend_args grew: the ABI is no longer additive");

struct attnd_call {
    int is_ucx;                   /* over the UCX transport: ucx, not rpc */
    attnd__client_ucx_call ucx;
    attnd__client_rpc rpc;
    attnd__client_attend_dst dst; /* where the reply goes (caller memory) */
    attnd_client *c;              /* UCX calls: whose transport */
};

attnd_status attnd_client_attend(attnd_client *c, const attnd_attend_args *a, attnd_error *err)
{
    return attnd_client_attend_sparse(c, a, NULL, err);
}

attnd_status attnd_client_attend_sparse(attnd_client *c, const attnd_attend_args *a,
                                        attnd_sparse_args *s, attnd_error *err)
{
    attnd__client_attend_dst dst;
    attnd__client_rpc r;
    grpc_byte_buffer *bb = NULL;
    attnd_status st;

    if (c && c->ucx)
        return attnd__client_ucx_attend_sparse(c, a, s, err);
    st = attnd__client_attend_encode(c, a, s, &bb, &dst, err);
    if (st)
        return st;
    st = attnd__client_rpc_start(&r, c, ATTND__CLIENT_M_ATTEND, bb, err);
    if (st == ATTND_OK)
        st = attnd__client_rpc_finish(&r, err);
    if (st == ATTND_OK)
        st = attnd__client_attend_decode(r.recv, &dst, err);
    attnd__client_rpc_cleanup(&r);
    return st;
}

attnd_status attnd_client_attend_async(attnd_client *c, const attnd_attend_args *a,
                                       attnd_call **call_p, attnd_error *err)
{
    return attnd_client_attend_sparse_async(c, a, NULL, call_p, err);
}

/* Ownership: the attnd_call is allocated here and freed by attnd_call_wait
 * (on every outcome). On failure nothing is left to wait for. s (may be
 * NULL) is borrowed until the wait: the reply's chosen lists go there. */
attnd_status attnd_client_attend_sparse_async(attnd_client *c, const attnd_attend_args *a,
                                              attnd_sparse_args *s, attnd_call **call_p,
                                              attnd_error *err)
{
    attnd_call *call;
    grpc_byte_buffer *bb = NULL;
    attnd_status st;

    if (!call_p)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "call_p: NULL");
    call = calloc(1, sizeof *call);
    if (!call)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "attend: no memory for a call");
    st = attnd__client_attend_encode(c, a, s, &bb, &call->dst, err);
    if (st)
        goto err_call;
    if (c->ucx) {
        call->is_ucx = 1;
        st = attnd__client_ucx_start(c, &call->ucx, bb, &call->dst, err);
        if (st)
            goto err_call;
        call->c = c;
        *call_p = call;
        return ATTND_OK;
    }
    st = attnd__client_rpc_start(&call->rpc, c, ATTND__CLIENT_M_ATTEND, bb, err);
    if (st)
        goto err_rpc;
    *call_p = call;
    return ATTND_OK;

err_rpc:
    attnd__client_rpc_cleanup(&call->rpc);
err_call:
    free(call);
    return st;
}

attnd_status attnd_call_wait(attnd_call *call, attnd_error *err)
{
    return attnd_call_wait_timed(call, NULL, err);
}

attnd_status attnd_call_wait_timed(attnd_call *call, attnd_server_timing *timing_p,
                                   attnd_error *err)
{
    attnd_status st;

    if (!call)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "call: NULL");
    if (call->is_ucx) { /* timings ride in the UCX reply header */
        st = attnd__client_ucx_wait(call->c, &call->ucx, err);
        if (st == ATTND_OK && timing_p)
            *timing_p = call->ucx.timing;
        free(call);
        return st;
    }
    st = attnd__client_rpc_finish(&call->rpc, err);
    if (st == ATTND_OK)
        st = attnd__client_attend_decode(call->rpc.recv, &call->dst, err);
    if (st == ATTND_OK && timing_p)
        attnd__client_timing_parse(&call->rpc.md_trailing, timing_p);
    attnd__client_rpc_cleanup(&call->rpc);
    free(call);
    return st;
}
