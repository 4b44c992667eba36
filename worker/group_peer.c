/* Serving peers: requests from other ranks' leaders, executed off the
 * progress thread.
 *
 * The request handler (registered with group_net.c, which checked the
 * sender) copies or receives each request into a buffer and queues it;
 * ATTND__GROUP_EXECUTORS threads, each with its own engine workspace, pop
 * requests in arrival order, run them on this rank's engine (group_rank.c)
 * and send the reply to the rank the request came from (if it is still the
 * same incarnation). A reply carries a status; on failure its data is the
 * error message (which names the field, as the engine wrote it).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "group_int.h"

static void enqueue(attnd_group *g, attnd__gbuf *b)
{
    b->next = NULL;
    pthread_mutex_lock(&g->job_mu);
    if (g->jobs_tail)
        g->jobs_tail->next = b;
    else
        g->jobs_head = b;
    g->jobs_tail = b;
    pthread_cond_signal(&g->job_cv);
    pthread_mutex_unlock(&g->job_mu);
}

static void on_req_data(void *user, ucs_status_t status, size_t length)
{
    attnd__gbuf *b = user;
    (void)length;
    if (status == UCS_OK)
        enqueue(b->g, b);
    else
        attnd__gbuf_put(b->g, b);
}

ucs_status_t attnd__gpeer_on_request(attnd_group *g, const attnd__gnet_msg *m)
{
    attnd__gbuf *b = attnd__gbuf_get(g, m->len);
    if (!b) { /* answered at once; a rendezvous payload is dropped unread */
        static const char msg[] = "group: peer out of memory";
        attnd__gbuf *r = attnd__gbuf_get(g, 0);
        if (r) {
            r->hdr = *m->h;
            r->hdr.src_rank = g->me;
            r->hdr.status = ATTND_ERR_RESOURCE_EXHAUSTED;
            r->len = 0;
            if (r->cap >= sizeof msg) {
                memcpy(r->data, msg, sizeof msg - 1);
                r->len = sizeof msg - 1;
            }
            attnd__gnet_send_rep_locked(g, m->h->src_rank, m->peer_token, r);
        }
        return UCS_OK;
    }
    b->hdr = *m->h;
    b->peer_token = m->peer_token;
    b->len = m->len;
    if (!m->rndv) {
        memcpy(b->data, m->data, m->len);
        enqueue(g, b);
        return UCS_OK;
    }
    attnd__gnet_recv(g, m->data, b->data, m->len, on_req_data, b);
    return UCS_INPROGRESS;
}

/* A reply with status st and, on failure, err's message. */
static attnd__gbuf *status_reply(attnd_group *g, const attnd__ghdr *h, attnd_status st,
                                 const attnd_error *err, uint64_t a)
{
    size_t n = st ? strlen(err->msg) : 0;
    attnd__gbuf *b = attnd__gbuf_get(g, n + 1);
    if (!b)
        return NULL;
    b->hdr = *h;
    b->hdr.src_rank = g->me;
    b->hdr.status = st;
    b->hdr.a = a;
    memcpy(b->data, err->msg, n);
    b->len = n;
    return b;
}

static attnd__gbuf *run_attend(attnd_group *g, const attnd__gbuf *req, attnd_engine_ws *ws,
                               attnd_error *err)
{
    const attnd__ghdr *h = &req->hdr;
    attnd__gpart_layout l;
    const float *out = NULL, *lse = NULL;
    attnd_dtype kt = (attnd_dtype)h->kv_dtype;
    attnd_status st;

    if (h->n_seqs == 0 || h->n_seqs > (1u << 24) || h->q_tokens < 1 ||
        h->q_tokens > ATTND_ENGINE_MAX_Q_TOKENS ||
        attnd_dtype_size((attnd_dtype)h->q_dtype) == 0 ||
        (kt != ATTND_DTYPE_INVALID && attnd_dtype_size(kt) == 0) ||
        h->a > ATTND_ENGINE_MAX_PROJ_DIM || h->b > ATTND_ENGINE_MAX_PROJ_DIM) {
        attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "group: malformed ATTEND header");
        return status_reply(g, h, err->code, err, 0);
    }
    /* a: heads-form d_nope (0: absorbed); b: up-projection width (0: none) */
    const int32_t d_nope = (int32_t)h->a, d_vo = (int32_t)h->b;
    attnd__gpart_layout_of(g, h->n_seqs, h->q_tokens, (attnd_dtype)h->q_dtype, d_nope,
                           ATTND_DTYPE_INVALID, 0, 0, &l);
    if (req->len < l.q) {
        attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "group: ATTEND too short");
        return status_reply(g, h, err->code, err, 0);
    }
    const uint64_t *glen = (const uint64_t *)(req->data + l.glen);
    uint64_t entries = (uint64_t)h->n_seqs * (uint64_t)h->q_tokens;
    if (g->cfg.mode == ATTND_GROUP_SEQUENCE && kt != ATTND_DTYPE_INVALID)
        for (uint32_t i = entries = 0; i < h->n_seqs; i++)
            entries += attnd__gplace_count(g, g->me, glen[i] + (uint64_t)h->q_tokens) -
                       attnd__gplace_count(g, g->me, glen[i]);
    attnd__gpart_layout_of(g, h->n_seqs, h->q_tokens, (attnd_dtype)h->q_dtype, d_nope, kt,
                           entries, 0, &l);
    uint32_t given_groups = 0;
    const uint32_t *given_indptr = NULL;
    const uint64_t *given_idx = NULL;
    if ((h->stream & ATTND__GATT_GIVEN) && req->len > l.given) { /* its given lists */
        size_t gb = 0;
        st = attnd__ggiven_read(req->data + l.given, req->len - l.given, h->n_seqs,
                                &given_groups, &given_indptr, &given_idx, &gb, err);
        if (st)
            return status_reply(g, h, st, err, 0);
        attnd__gpart_layout_of(g, h->n_seqs, h->q_tokens, (attnd_dtype)h->q_dtype, d_nope, kt,
                               entries, gb, &l);
    }
    if (l.total != req->len || (!given_groups && (h->stream & ATTND__GATT_GIVEN))) {
        attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                        "group: ATTEND of %zu bytes, expected %zu", req->len, l.total);
        return status_reply(g, h, err->code, err, 0);
    }
    attnd__gpart p = {
        .layer = h->layer,
        .n_seqs = h->n_seqs,
        .q_tokens = h->q_tokens,
        .q_dtype = (attnd_dtype)h->q_dtype,
        .kv_dtype = kt,
        .d_nope = d_nope,
        .d_vo = d_vo,
        .ids = (const attnd_session_id *)(req->data + l.ids),
        .glen = glen,
        .q = req->data + l.q,
        .kv = kt != ATTND_DTYPE_INVALID ? req->data + l.kv : NULL,
        .given_groups = given_groups,
        .given_indptr = given_indptr,
        .given_idx = given_idx,
        .want_pages = (h->stream & ATTND__GATT_PAGES) != 0,
    };
    st = attnd__grank_attend(g, &p, ws, &out, &lse, err);
    if (st)
        return status_reply(g, h, st, err, 0);
    size_t rows = (size_t)h->n_seqs * (size_t)h->q_tokens * (size_t)g->hq_r;
    size_t width = d_vo ? (size_t)d_vo : (size_t)g->d_v_r;
    size_t ob = rows * width * sizeof(float);
    /* return_pages: what it attended, after its result */
    size_t pages_at = (ob + rows * sizeof(float) + 7) & ~(size_t)7;
    size_t pages = p.want_pages ? attnd__gchosen_bytes(ws, h->n_seqs) : 0;
    attnd__gbuf *b = attnd__gbuf_get(g, pages ? pages_at + pages : ob + rows * sizeof(float));
    if (!b) {
        attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "group: peer out of memory");
        return status_reply(g, h, err->code, err, 0);
    }
    b->hdr = *h;
    b->hdr.src_rank = g->me;
    b->hdr.status = ATTND_OK;
    memcpy(b->data, out, ob); /* projected by the engine when d_vo > 0 */
    memcpy(b->data + ob, lse, rows * sizeof(float));
    b->len = ob + rows * sizeof(float);
    if (pages) {
        memset(b->data + b->len, 0, pages_at - b->len);
        attnd__gchosen_write(ws, h->n_seqs, b->data + pages_at);
        b->len = pages_at + pages;
    }
    return b;
}

static attnd__gbuf *run_one(attnd_group *g, const attnd__gbuf *req, attnd_engine_ws *ws)
{
    const attnd__ghdr *h = &req->hdr;
    attnd_error err;
    attnd_status st;
    uint64_t freed = 0;

    attnd_error_clear(&err);
    if ((h->type == ATTND__GMSG_CREATE || h->type == ATTND__GMSG_CLOSE ||
         h->type == ATTND__GMSG_APPEND) && req->len < ATTND_SESSION_ID_BYTES) {
        attnd_error_set(&err, ATTND_ERR_INVALID_ARGUMENT, "group: message without a session");
        return status_reply(g, h, err.code, &err, 0);
    }
    const attnd_session_id *id = (const attnd_session_id *)req->data;
    switch (h->type) {
    case ATTND__GMSG_CREATE:
        if (h->b == 1) { /* an owner after the id (group_lead.c) */
            uint64_t owner = 0;
            if (req->len >= ATTND_SESSION_ID_BYTES + sizeof owner)
                memcpy(&owner, req->data + ATTND_SESSION_ID_BYTES, sizeof owner);
            st = attnd_engine_session_create_owned(g->engine, owner, h->a, id, NULL, &err);
        } else if (req->len > ATTND_SESSION_ID_BYTES) { /* a sparse policy (group_sparse.c),
                                                         after an owner when b = 2 */
            attnd_session_policy pol, whole;
            attnd_policy_rule *rules = NULL, *wrules = NULL;
            uint64_t owner = 0;
            size_t at = ATTND_SESSION_ID_BYTES;
            if (h->b == 2 && req->len >= at + sizeof owner) {
                memcpy(&owner, req->data + at, sizeof owner);
                at += sizeof owner;
            }
            st = attnd__gpolicy_parse(req->data + at, req->len - at, &pol, &rules, &whole,
                                      &wrules, &err);
            if (st == ATTND_OK &&
                (st = attnd_engine_session_create_policy_owned(g->engine, owner, h->a, &pol, id,
                                                               NULL, &err)) == ATTND_OK) {
                if ((st = attnd__gtable_add(&g->table, id, &err)) == ATTND_OK &&
                    (st = attnd__gpolicy_keep(g, id, &whole, &err)))
                    attnd__gtable_remove(&g->table, id);
                if (st)
                    attnd_engine_session_close(g->engine, id, NULL, NULL);
            }
            free(rules);
            free(wrules);
            return status_reply(g, h, st, &err, 0);
        } else {
            st = attnd_engine_session_create_id(g->engine, h->a, id, &err);
        }
        if (st == ATTND_OK && (st = attnd__gtable_add(&g->table, id, &err)))
            attnd_engine_session_close(g->engine, id, NULL, NULL);
        return status_reply(g, h, st, &err, 0);
    case ATTND__GMSG_CLOSE:
        attnd__gtable_remove(&g->table, id);
        st = attnd_engine_session_close(g->engine, id, &freed, &err);
        return status_reply(g, h, st, &err, freed);
    case ATTND__GMSG_APPEND: {
        attnd_dtype dt = (attnd_dtype)h->kv_dtype;
        size_t es = (size_t)g->kv_elems_r * attnd_dtype_size(dt);
        uint64_t k = g->cfg.mode == ATTND_GROUP_SEQUENCE
                         ? attnd__gplace_count(g, g->me, h->a + h->b) -
                               attnd__gplace_count(g, g->me, h->a)
                         : h->b;
        if (es == 0 || req->len != 64 + k * es) {
            attnd_error_set(&err, ATTND_ERR_INVALID_ARGUMENT,
                            "group: APPEND of %zu bytes does not match its header", req->len);
            return status_reply(g, h, err.code, &err, 0);
        }
        st = attnd__gstage_chunk(g, h->src_rank, h->stream, h->n_seqs, id, h->layer, h->a,
                                 h->b, dt, req->data + 64, &err);
        return status_reply(g, h, st, &err, 0);
    }
    case ATTND__GMSG_COMMIT:
        st = attnd__gstage_commit(g, h->src_rank, h->stream, h->n_seqs, &err);
        return status_reply(g, h, st, &err, 0);
    case ATTND__GMSG_ABORT:
        attnd__gstage_abort(g, h->src_rank, h->stream);
        return status_reply(g, h, ATTND_OK, &err, 0);
    case ATTND__GMSG_ATTEND:
        return run_attend(g, req, ws, &err);
    case ATTND__GMSG_BREAK:
        if (req->len != (size_t)h->n_seqs * ATTND_SESSION_ID_BYTES) {
            attnd_error_set(&err, ATTND_ERR_INVALID_ARGUMENT,
                            "group: BREAK of %zu bytes does not match its header", req->len);
            return status_reply(g, h, err.code, &err, 0);
        }
        attnd__gtable_break(&g->table, id, h->n_seqs);
        return status_reply(g, h, ATTND_OK, &err, 0);
    case ATTND__GMSG_WEIGHTS:
        st = attnd__gweights_store(g, req, &err);
        return status_reply(g, h, st, &err, 0);
    }
    attnd_error_set(&err, ATTND_ERR_UNIMPLEMENTED, "group: unknown message type %u", h->type);
    return status_reply(g, h, err.code, &err, 0);
}

static void *exec_main(void *arg)
{
    attnd_group *g = ((struct attnd__gexec *)arg)->g;
    attnd_engine_ws *ws = &g->exec_ws[((struct attnd__gexec *)arg)->index];

    for (;;) {
        pthread_mutex_lock(&g->job_mu);
        while (!g->jobs_head && !g->jobs_stop)
            pthread_cond_wait(&g->job_cv, &g->job_mu);
        attnd__gbuf *b = g->jobs_head;
        if (!b) {
            pthread_mutex_unlock(&g->job_mu);
            return NULL;
        }
        g->jobs_head = b->next;
        if (!g->jobs_head)
            g->jobs_tail = NULL;
        pthread_mutex_unlock(&g->job_mu);
        attnd__gbuf *rep = run_one(g, b, ws);
        if (rep)
            attnd__gnet_send_rep(g, b->hdr.src_rank, b->peer_token, rep);
        attnd__gbuf_put(g, b);
    }
}

attnd_status attnd__gpeer_start(attnd_group *g, attnd_error *err)
{
    for (int i = 0; i < ATTND__GROUP_EXECUTORS; i++) {
        attnd_engine_ws_init(&g->exec_ws[i]);
        g->exec_arg[i] = (struct attnd__gexec){g, i};
        if (pthread_create(&g->exec_tid[i], NULL, exec_main, &g->exec_arg[i]))
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "group: cannot start executor threads");
        g->n_exec++;
    }
    return ATTND_OK;
}

void attnd__gpeer_stop(attnd_group *g)
{
    pthread_mutex_lock(&g->job_mu);
    g->jobs_stop = 1;
    pthread_cond_broadcast(&g->job_cv);
    pthread_mutex_unlock(&g->job_mu);
    for (int i = 0; i < g->n_exec; i++)
        pthread_join(g->exec_tid[i], NULL);
    g->n_exec = 0;
    for (attnd__gbuf *b = g->jobs_head, *next; b; b = next) {
        next = b->next;
        attnd__gbuf_put(g, b);
    }
    g->jobs_head = g->jobs_tail = NULL;
    for (int i = 0; i < ATTND__GROUP_EXECUTORS; i++)
        attnd_engine_ws_cleanup(&g->exec_ws[i]);
}
