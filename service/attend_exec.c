/* One AttendRequest, whatever carried it: validate, attend, describe the
 * reply. See attend_exec.h.
 *
 * The engine call below is the single place where the local computation
 * happens; a worker group leader replaces it with plan, scatter, its own
 * share, combine: t_kernel_ns is then the leader's own share and
 * t_fanout_ns the rest of the group call, so that the two add up to the
 * call once (attnd_server_timing in client.h). After warm-up nothing
 * here allocates: the request lives in the context's arena and the output
 * in its engine workspace.
 */
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer_reader.h>

#include "attnd_clock.h"
#include "attnd_wire_grpc.h"
#include "attend_exec.h"

attnd_status attnd_srv_attend_exec(const attnd_srv_exec_ctx *x, const Attnd__V1__AttendRequest *m,
                                   const attnd_wire_request_checks *checks,
                                   uint64_t t_arrival_ns, attnd_srv_attend_result *res,
                                   attnd_error *err)
{
    attnd_srv *srv = x->srv;
    attnd_srv_attend_req req;
    const float *out = NULL, *lse = NULL;
    attnd_status st;
    uint64_t t0 = attnd_clock_ns(), t1, t2;

    memset(res, 0, sizeof *res);
    if (t_arrival_ns && t_arrival_ns <= t0)
        res->t.t_queue_ns = t0 - t_arrival_ns;
    /* the layer's projections now (the narrow wire; validation checks the
     * request against them, the engine again against what it holds) */
    attnd_srv_proj proj = {0, 0};
    if (m->layer < (uint32_t)srv->model.spec->n_layers && srv->model.spec->kind == ATTND_ATTN_MLA) {
        if (srv->group)
            attnd_group_weights_dims(srv->group, m->layer, &proj.d_nope, &proj.d_v);
        else
            attnd_engine_weights_dims(srv->engine, m->layer, &proj.d_nope, &proj.d_v);
    }
    st = attnd_srv_validate_attend(m, &srv->model, &proj, &x->arena->pc, checks, &req, err);
    if (st)
        return st;
    /* another tenant's session reads as an unknown one (the rank's own
     * engine knows every session of a group, and its owner) */
    if (x->owner && (st = attnd_engine_sessions_check(srv->engine, x->owner, req.eng.ids,
                                                      req.eng.n_seqs, 1, err)))
        return st;
    t1 = attnd_clock_ns();
    /* a worker group: scatter to the ranks, compute our part, combine */
    int64_t wait_ms = 0; /* 0: the group's own timeout */
    if (x->time_left_ms > 0) {
        wait_ms = x->time_left_ms - x->time_left_ms / 10 - 5;
        wait_ms = wait_ms > 0 ? wait_ms : 1;
    }
    uint64_t own_ns = 0; /* a group leader's own share of t2 - t1 */
    st = srv->group ? attnd_group_attend(srv->group, &req.eng, x->ws, wait_ms, &out, &lse,
                                         &own_ns, err)
                    : attnd_engine_attend(srv->engine, &req.eng, x->ws, &out, &lse, err);
    if (st)
        return st;
    t2 = attnd_clock_ns();
    res->t.t_kernel_ns = srv->group ? own_ns : t2 - t1;
    res->t.t_fanout_ns = srv->group ? t2 - t1 - own_ns : 0;

    attnd_srv_attend_reply *r = &res->reply;
    r->desc.request_id = req.request_id;
    r->desc.out_dtype = req.out_dtype;
    r->desc.has_lse = req.eng.want_lse;
    for (int i = 0; i < 4; i++)
        r->desc.out_shape[i] = req.out_shape[i];
    for (int i = 0; i < 3; i++)
        r->desc.lse_shape[i] = req.lse_shape[i];
    r->out = out;
    r->lse = req.eng.want_lse ? lse : NULL;
    if (req.eng.want_pages && x->ws->chosen_groups) { /* sparse: what was attended */
        r->desc.chosen_groups = x->ws->chosen_groups;
        r->desc.chosen_tokens = x->ws->chosen_tokens;
        r->desc.n_chosen_lists = (size_t)req.eng.n_seqs * x->ws->chosen_groups;
        r->desc.chosen_indptr = x->ws->chosen_indptr;
        r->desc.chosen = x->ws->chosen;
    }
    res->t.t_select_ns = x->ws->select_ns;
    res->t.t_validate_ns = t1 - t0;
    res->t.t_total_ns = t2 - t0;
    return ATTND_OK;
}

attnd_status attnd_srv_attend_exec_in(const attnd_srv_exec_ctx *x, const attnd_wire_in *in,
                                      uint64_t t_arrival_ns, attnd_srv_attend_result *res,
                                      attnd_error *err)
{
    Attnd__V1__AttendRequest *m;
    attnd_wire_request_checks checks;
    uint64_t t0 = attnd_clock_ns();
    attnd_status st;

    res->request_id = 0;
    attnd_srv_arena_reset(x->arena);
    st = attnd_wire_request_decode(in, &x->arena->pc, &m, &checks, err);
    if (st)
        return st;
    uint64_t t1 = attnd_clock_ns();
    st = attnd_srv_attend_exec(x, m, &checks, t_arrival_ns, res, err);
    res->request_id = m->request_id; /* exec cleared res: also on failure */
    if (st == ATTND_OK) {
        /* queue time ends where decoding began */
        if (t_arrival_ns && t_arrival_ns <= t0)
            res->t.t_queue_ns = t0 - t_arrival_ns;
        res->t.t_decode_ns = t1 - t0;
        res->t.t_total_ns += t1 - t0;
    }
    return st;
}

attnd_status attnd_srv_attend_exec_bytes(const attnd_srv_exec_ctx *x, const uint8_t *data,
                                         size_t len, uint64_t t_arrival_ns,
                                         attnd_srv_attend_result *res, attnd_error *err)
{
    attnd_wire_in in;
    attnd_wire_in_flat(&in, data, len);
    return attnd_srv_attend_exec_in(x, &in, t_arrival_ns, res, err);
}

attnd_status attnd_srv_attend_exec_bb(const attnd_srv_exec_ctx *x, grpc_byte_buffer *bb,
                                      uint64_t t_arrival_ns, attnd_srv_attend_result *res,
                                      attnd_error *err)
{
    grpc_byte_buffer_reader rd;
    attnd_wire_in in;
    attnd_status st;

    res->request_id = 0;
    if (!bb)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "request: missing %s message",
                               attnd__v1__attend_request__descriptor.name);
    if (attnd_wire_in_grpc(&in, bb) == 0) /* the slices as they came */
        return attnd_srv_attend_exec_in(x, &in, t_arrival_ns, res, err);
    /* compressed: the message is what the reader gives (one new slice) */
    if (!grpc_byte_buffer_reader_init(&rd, bb))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "request: the message could not be decompressed");
    grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
    grpc_byte_buffer_reader_destroy(&rd);
    attnd_wire_in_flat(&in, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s));
    st = attnd_srv_attend_exec_in(x, &in, t_arrival_ns, res, err);
    grpc_slice_unref(s);
    return st;
}

void attnd_srv_attend_times_record(attnd_srv_mshard *s, const attnd_srv_attend_times *t)
{
    if (!s)
        return;
    attnd_srv_mx_observe(&s->phase[ATTND_SRV_MX_PH_QUEUE], t->t_queue_ns + t->t_decode_ns);
    attnd_srv_mx_observe(&s->phase[ATTND_SRV_MX_PH_VALIDATE], t->t_validate_ns);
    attnd_srv_mx_observe(&s->phase[ATTND_SRV_MX_PH_KERNEL], t->t_kernel_ns);
    attnd_srv_mx_observe(&s->phase[ATTND_SRV_MX_PH_FANOUT], t->t_fanout_ns);
    attnd_srv_mx_observe(&s->phase[ATTND_SRV_MX_PH_ENCODE], t->t_encode_ns);
}
