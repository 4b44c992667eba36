/* Sparse attention in libattnd: CreateSession with a policy, and the
 * sparse part of an Attend (attnd/client.h, "sparse attention"): given
 * pages / tokens added to the message, and the pages attended read from
 * the reply into the caller's buffers after its out and lse. The Attend
 * itself goes the usual way, whichever form (sync, async, AttendStream;
 * attend.c, stream.c) and transport (gRPC, UCX) it takes: every form
 * builds its message with attnd__client_attend_sparse_apply and decodes
 * with attnd__client_attend_decode_in, which calls
 * attnd__client_attend_chosen. */
#include <stdlib.h>
#include <string.h>

#include "client_int.h"

static Attnd__V1__SparsePolicy policy_pb(const attnd_sparse_policy *p)
{
    Attnd__V1__SparsePolicy m = ATTND__V1__SPARSE_POLICY__INIT;
    m.kind = (Attnd__V1__PolicyKind)p->kind;
    m.sink = p->sink;
    m.window = p->window;
    m.topk_pages = p->topk_pages;
    m.topk_fraction = p->topk_fraction;
    return m;
}

attnd_status attnd_client_create_session_policy(attnd_client *c, const char *model,
                                                uint32_t max_tokens,
                                                const attnd_sparse_policy *policy,
                                                const attnd_sparse_rule *rules, uint32_t n_rules,
                                                attnd_session_id *id_p,
                                                attnd_model_info *model_p, attnd_error *err)
{
    Attnd__V1__CreateSessionRequest req = ATTND__V1__CREATE_SESSION_REQUEST__INIT;
    Attnd__V1__CreateSessionResponse *resp = NULL;
    Attnd__V1__SparsePolicy dflt;
    Attnd__V1__PolicyRule *rs = NULL, **rp = NULL;
    Attnd__V1__SparsePolicy *rpol = NULL;
    attnd_model_info m;
    attnd_status st;

    if (!c || !id_p || (n_rules && !rules))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "create_session_policy: %s is NULL",
                               !c ? "client" : !id_p ? "id_p" : "rules");
    if (n_rules && (!(rs = calloc(n_rules, sizeof *rs)) || !(rp = calloc(n_rules, sizeof *rp)) ||
                    !(rpol = calloc(n_rules, sizeof *rpol)))) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "policy_table: no memory for %u rules", n_rules);
        goto out;
    }
    for (uint32_t i = 0; i < n_rules; i++) {
        attnd__v1__policy_rule__init(&rs[i]);
        rs[i].layer_begin = rules[i].layer_begin;
        rs[i].layer_end = rules[i].layer_end;
        rs[i].head_begin = rules[i].head_begin;
        rs[i].head_end = rules[i].head_end;
        rpol[i] = policy_pb(&rules[i].policy);
        rs[i].policy = &rpol[i];
        rp[i] = &rs[i];
    }
    req.model = (char *)(model ? model : "");
    req.max_tokens = max_tokens;
    if (policy) {
        dflt = policy_pb(policy);
        req.policy = &dflt;
    }
    req.n_policy_table = n_rules;
    req.policy_table = rp;
    st = attnd__client_unary(c, ATTND__CLIENT_M_CREATE_SESSION, &req.base,
                             &attnd__v1__create_session_response__descriptor,
                             (ProtobufCMessage **)&resp, err);
    if (st)
        goto out;
    if (resp->session_id.len != ATTND_SESSION_ID_BYTES) {
        st = attnd_error_set(err, ATTND_ERR_INTERNAL,
                             "CreateSessionResponse.session_id: expected %d bytes, got %zu",
                             ATTND_SESSION_ID_BYTES, resp->session_id.len);
        goto out_resp;
    }
    attnd__client_model_from_pb(resp->model, &m);
    attnd__client_model_cache(c, &m);
    memcpy(id_p->bytes, resp->session_id.data, ATTND_SESSION_ID_BYTES);
    if (model_p)
        *model_p = m;
out_resp:
    protobuf_c_message_free_unpacked(&resp->base, NULL);
out:
    free(rs);
    free(rp);
    free(rpol);
    return st;
}

attnd_status attnd__client_attend_sparse_apply(attnd__client_attend_msg *msg,
                                               attnd__client_attend_dst *dst,
                                               attnd_sparse_args *s, attnd_error *err)
{
    Attnd__V1__AttendRequest *rq = &msg->req;
    dst->sparse = NULL;
    if (!s)
        return ATTND_OK;
    if (s->given_groups && !s->given_indptr)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "given_indptr: NULL for %zu sessions x %u given_groups",
                               rq->n_session_ids, s->given_groups);
    if (s->given_groups && s->n_given_idx && !s->given_idx)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "given_idx: NULL for %zu entries (n_given_idx)", s->n_given_idx);
    if (s->return_pages && ((s->chosen_indptr_capacity && !s->chosen_indptr) ||
                            (s->chosen_capacity && !s->chosen)))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s: NULL for a capacity of %zu entries",
                               !s->chosen_indptr && s->chosen_indptr_capacity ? "chosen_indptr"
                                                                              : "chosen",
                               !s->chosen_indptr && s->chosen_indptr_capacity
                                   ? s->chosen_indptr_capacity
                                   : s->chosen_capacity);
    dst->sparse = s;
    if (s->given_groups) {
        rq->given_groups = s->given_groups;
        rq->n_given_indptr = (size_t)rq->n_session_ids * s->given_groups + 1;
        rq->given_indptr = (uint32_t *)s->given_indptr;
        rq->n_given_idx = s->n_given_idx;
        rq->given_idx = (uint64_t *)s->given_idx;
    }
    rq->return_pages = s->return_pages != 0;
    s->chosen_groups = 0;
    s->chosen_tokens = 0;
    s->n_chosen_lists = s->n_chosen = 0;
    return ATTND_OK;
}

attnd_status attnd__client_attend_chosen(const attnd_wire_in *in,
                                         const attnd_wire_reply_view *v,
                                         const attnd__client_attend_dst *dst, attnd_error *err)
{
    attnd_sparse_args *s = dst->sparse;
    if (!s->return_pages)
        return ATTND_OK;
    if (!v->chosen_groups || v->n_chosen_indptr != (size_t)dst->n_seqs * v->chosen_groups + 1)
        return attnd_error_set(err, ATTND_ERR_INTERNAL,
                               "AttendResponse.chosen_indptr: %zu entries for %lld sessions x "
                               "%u groups", v->n_chosen_indptr, (long long)dst->n_seqs,
                               v->chosen_groups);
    if (v->n_chosen_indptr > s->chosen_indptr_capacity || v->n_chosen > s->chosen_capacity)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "chosen_capacity: the reply holds %zu lists of %zu entries, the "
                               "buffers %zu and %zu", v->n_chosen_indptr, v->n_chosen,
                               s->chosen_indptr_capacity, s->chosen_capacity);
    attnd_wire_reply_chosen(in, s->chosen_indptr, s->chosen_indptr_capacity, s->chosen,
                            s->chosen_capacity);
    s->chosen_groups = v->chosen_groups;
    s->chosen_tokens = v->chosen_tokens;
    s->n_chosen_lists = v->n_chosen_indptr - 1;
    s->n_chosen = v->n_chosen;
    return ATTND_OK;
}
