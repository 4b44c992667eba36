/* AttendStream: a decode loop over one open call.
 *
 * Each attnd_stream_attend sends one request and waits for its response,
 * so requests and responses pair up in order without ids to match (the
 * echoed request_id is still checked). The first failure after a request
 * went out ends the stream: the server ends the call with the request's
 * status, and every later call on the stream returns that same status and
 * message. A request refused here before sending (a NULL buffer, a too
 * small out_capacity) leaves the stream as it was.
 *
 * Over the UCX transport there is no call to keep open: each request is one
 * active-message round trip (ucx_transport.c) with the same semantics (in
 * order, the first failure ends the stream).
 *
 * attnd_stream_attend_sparse adds the sparse arguments (given lists in the
 * request, chosen lists out of the response; attend_sparse.c) on either
 * transport; the server's AttendStream handler runs each request as a
 * unary Attend would (service/attend_exec.c), sparse fields included.
 */
#include <stdlib.h>
#include <string.h>

#include "client_int.h"

struct attnd_stream {
    attnd_client *c;
    attnd__client_scall s;
    attnd_status failed;    /* 0, or the status that ended the stream */
    attnd_error failed_err; /* ...and its message */
};

/* Ownership: the stream is allocated here and freed by attnd_stream_close. */
attnd_status attnd_client_stream_open(attnd_client *c, attnd_stream **s_p, attnd_error *err)
{
    attnd_stream *s;
    attnd_status st;

    if (!c || !s_p)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "stream_open: %s is NULL",
                               !c ? "client" : "s_p");
    s = calloc(1, sizeof *s);
    if (!s)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "stream_open: no memory");
    s->c = c;
    if (c->ucx) { /* each request is one UCX round trip: no call to open */
        *s_p = s;
        return ATTND_OK;
    }
    st = attnd__client_scall_open(&s->s, c, ATTND__CLIENT_M_ATTEND_STREAM, err);
    if (st)
        goto err_call;
    *s_p = s;
    return ATTND_OK;

err_call:
    attnd__client_scall_cleanup(&s->s);
    free(s);
    return st;
}

static attnd_status fail(attnd_stream *s, attnd_status st, attnd_error *err)
{
    s->failed = st;
    if (err)
        s->failed_err = *err;
    else
        attnd_error_set(&s->failed_err, st, "%s", attnd_status_string(st));
    return st;
}

attnd_status attnd_stream_attend(attnd_stream *s, const attnd_attend_args *a, attnd_error *err)
{
    return attnd_stream_attend_sparse(s, a, NULL, err);
}

attnd_status attnd_stream_attend_sparse(attnd_stream *s, const attnd_attend_args *a,
                                        attnd_sparse_args *sp, attnd_error *err)
{
    attnd__client_attend_dst dst;
    grpc_byte_buffer *bb = NULL;
    attnd_error local;
    attnd_status st;

    if (!s)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "stream: NULL");
    if (s->failed) {
        if (err)
            *err = s->failed_err;
        return s->failed;
    }
    if (!err)
        err = &local;
    if (s->c->ucx) {
        attnd__client_attend_msg msg;
        /* refused before sending (the same checks as below): no failure */
        st = attnd__client_attend_prepare(s->c, a, &msg, &dst, err);
        if (st)
            return st;
        st = attnd__client_attend_sparse_apply(&msg, &dst, sp, err);
        attnd__client_attend_msg_cleanup(&msg);
        if (st)
            return st;
        st = attnd__client_ucx_attend_sparse(s->c, a, sp, err);
        return st ? fail(s, st, err) : ATTND_OK;
    }
    st = attnd__client_attend_encode(s->c, a, sp, &bb, &dst, err);
    if (st)
        return st; /* nothing was sent: the stream goes on */
    st = attnd__client_scall_send(&s->s, bb, 0, err);
    grpc_byte_buffer_destroy(bb);
    bb = NULL;
    if (st)
        return fail(s, st, err);
    st = attnd__client_scall_recv(&s->s, &bb, err);
    if (st == ATTND_OK && !bb)
        st = attnd_error_set(err, ATTND_ERR_UNKNOWN,
                             "AttendStream: the server ended the stream without a response");
    if (st)
        return fail(s, st, err);
    st = attnd__client_attend_decode(bb, &dst, err);
    grpc_byte_buffer_destroy(bb);
    if (st)
        return fail(s, st, err);
    return ATTND_OK;
}

attnd_status attnd_stream_close(attnd_stream *s, attnd_error *err)
{
    attnd_status st;

    if (!s)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "stream: NULL");
    if (s->failed) {
        st = s->failed;
        if (err)
            *err = s->failed_err;
    } else if (s->c->ucx) {
        st = ATTND_OK;
    } else {
        st = attnd__client_scall_send(&s->s, NULL, 1, err);
        if (st == ATTND_OK)
            st = attnd__client_scall_status(&s->s, err);
    }
    attnd__client_scall_cleanup(&s->s);
    free(s);
    return st;
}
