/* Sparse policy tables: checking one against the model, resolving it into
 * a policy per (layer, KV head) for a session, and what that does to the
 * session's reservation (attnd_worker.h has the policies' meaning).
 *
 * Resolution is done once, when the session gets its policy (before its
 * first token), into flat per-layer arrays that the Attend path reads
 * without searching the table: the policy of each head, whether the layer
 * is dense (the Attend takes the dense path), uniform (one page list per
 * session serves every head), keeps key bounds (some head is topk-pages)
 * or evicts (every head streams). A streaming layer's reservation shrinks
 * to the most pages it can hold: its sink pages, its window's pages, and
 * the pages one Attend's new tokens add before the window moves on.
 *
 * A session keeps its policy as given, too: a durable engine records it
 * in the session's CREATE record and in every checkpoint's manifest
 * (attnd__sparse_encode), and recovery gives it back before any token. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_assert.h"
#include "sparse.h"
#include "tier_int.h"

static const char *const kind_names[ATTND_POLICY_KIND_COUNT] = {
    "full", "streaming", "topk-pages", "given-pages", "given-tokens"};

const char *attnd_policy_kind_name(attnd_policy_kind k)
{
    return (unsigned)k < ATTND_POLICY_KIND_COUNT ? kind_names[k] : "?";
}

int attnd_policy_kind_parse(const char *s)
{
    for (int k = 0; k < ATTND_POLICY_KIND_COUNT; k++)
        if (s && strcmp(s, kind_names[k]) == 0)
            return k;
    return -1;
}

/* One policy; `at` names it ("policy", "policy_table[3].policy"). */
static attnd_status check_one(const attnd_policy *p, const char *at, attnd_error *err)
{
    const int streaming = p->kind == ATTND_POLICY_STREAMING;
    const int topk = p->kind == ATTND_POLICY_TOPK_PAGES;

    if ((unsigned)p->kind >= ATTND_POLICY_KIND_COUNT)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.kind: %d is not a policy (full, streaming, topk-pages, "
                               "given-pages, given-tokens)", at, (int)p->kind);
    if (p->sink && !streaming && !topk)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.sink: %u, but only streaming and topk-pages keep sink "
                               "tokens (policy %s)", at, p->sink, kind_names[p->kind]);
    if (p->sink > INT32_MAX / 2)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "%s.sink: %u is too large", at,
                               p->sink);
    if (streaming && (p->window < ATTND_POLICY_MIN_WINDOW || p->window > INT32_MAX / 2))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.window: %u, streaming needs a window of %d to %d tokens "
                               "(at least the most query tokens of one Attend)",
                               at, p->window, ATTND_POLICY_MIN_WINDOW, INT32_MAX / 2);
    if (!streaming && p->window)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.window: %u, but only streaming has a window (policy %s)", at,
                               p->window, kind_names[p->kind]);
    if (!topk && p->topk)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.topk_pages: %u, but only topk-pages takes it (policy %s)", at,
                               p->topk, kind_names[p->kind]);
    if (!topk && p->topk_fraction != 0.0f)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.topk_fraction: %g, but only topk-pages takes it (policy %s)",
                               at, (double)p->topk_fraction, kind_names[p->kind]);
    if (topk && p->topk && p->topk_fraction != 0.0f)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.topk_fraction: %g with topk_pages %u: give one of them", at,
                               (double)p->topk_fraction, p->topk);
    if (topk && !p->topk && !(p->topk_fraction > 0.0f && p->topk_fraction <= 1.0f))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.topk_fraction: %g not in (0, 1] (topk-pages needs topk_pages "
                               ">= 1 or a fraction of the pages)", at, (double)p->topk_fraction);
    return ATTND_OK;
}

attnd_status attnd_engine_policy_check(const attnd_engine *e, const attnd_session_policy *p,
                                       attnd_error *err)
{
    /* a durable engine records the policy with the session (its CREATE
     * record and the manifest: worker/TIERS.md) */
    return attnd_policy_check(&e->model, p, err);
}

attnd_status attnd_policy_check(const attnd_model_spec *m, const attnd_session_policy *p,
                                attnd_error *err)
{
    const uint32_t L = (uint32_t)m->n_layers;
    const uint32_t H = m->kind == ATTND_ATTN_GQA ? (uint32_t)m->n_kv_heads : 1;
    char at[64];
    attnd_status st = check_one(&p->dflt, "policy", err);

    if (st)
        return st;
    if (p->n_rules > ATTND_POLICY_MAX_RULES || (p->n_rules && !p->rules))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "policy_table: %u rules, at most %d", p->n_rules,
                               ATTND_POLICY_MAX_RULES);
    for (uint32_t i = 0; i < p->n_rules; i++) {
        const attnd_policy_rule *r = &p->rules[i];
        if (r->layer_begin >= r->layer_end || r->layer_end > L)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "policy_table[%u].layer_end: layers [%u, %u) are not a "
                                   "non-empty range of the model's %u layers",
                                   i, r->layer_begin, r->layer_end, L);
        if (m->kind == ATTND_ATTN_MLA && (r->head_begin || r->head_end))
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "policy_table[%u].head_begin: MLA heads share one latent "
                                   "cache, so policies apply per layer; leave the head range "
                                   "empty (got [%u, %u))", i, r->head_begin, r->head_end);
        if ((r->head_begin || r->head_end) &&
            (r->head_begin >= r->head_end || r->head_end > H))
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "policy_table[%u].head_end: KV heads [%u, %u) are not a "
                                   "non-empty range of the model's %u (0, 0: all)",
                                   i, r->head_begin, r->head_end, H);
        snprintf(at, sizeof at, "policy_table[%u].policy", i);
        if ((st = check_one(&r->policy, at, err)))
            return st;
    }
    return ATTND_OK;
}

void attnd__sparse_free(attnd__sparse *sp)
{
    if (!sp)
        return;
    free(sp->pol);
    free(sp->uniform);
    free(sp->dense);
    free(sp->bounds);
    free(sp->evict);
    free(sp->sink);
    free(sp->window);
    free(sp->hole_end);
    free(sp->res);
    free(sp->rules);
    free(sp);
}

static int same_policy(const attnd_policy *a, const attnd_policy *b)
{
    return a->kind == b->kind && a->sink == b->sink && a->window == b->window &&
           a->topk == b->topk && a->topk_fraction == b->topk_fraction;
}

/* The resolved state of policy p for a session of res_per_layer pages per
 * layer, or NULL (no memory). *dense_p: full everywhere. */
static attnd__sparse *resolve(const attnd_engine *e, const attnd_session_policy *p,
                              int32_t res_per_layer, int *dense_p)
{
    const int32_t L = e->model.n_layers, ps = e->layout.page_size;
    const int32_t H = e->model.kind == ATTND_ATTN_GQA ? e->model.n_kv_heads : 1;
    attnd__sparse *sp = calloc(1, sizeof *sp);
    if (!sp)
        return NULL;
    sp->n_layers = L;
    sp->n_heads = H;
    sp->pol = malloc(sizeof *sp->pol * (size_t)L * (size_t)H);
    sp->uniform = calloc((size_t)L, 1);
    sp->dense = calloc((size_t)L, 1);
    sp->bounds = calloc((size_t)L, 1);
    sp->evict = calloc((size_t)L, 1);
    sp->sink = calloc((size_t)L, sizeof *sp->sink);
    sp->window = calloc((size_t)L, sizeof *sp->window);
    sp->hole_end = calloc((size_t)L, sizeof *sp->hole_end);
    sp->res = calloc((size_t)L, sizeof *sp->res);
    if (!sp->pol || !sp->uniform || !sp->dense || !sp->bounds || !sp->evict || !sp->sink ||
        !sp->window || !sp->hole_end || !sp->res) {
        attnd__sparse_free(sp);
        return NULL;
    }
    for (int64_t j = 0; j < (int64_t)L * H; j++)
        sp->pol[j] = p->dflt;
    for (uint32_t i = 0; i < p->n_rules; i++) {
        const attnd_policy_rule *r = &p->rules[i];
        uint32_t h0 = r->head_begin, h1 = r->head_end ? r->head_end : (uint32_t)H;
        for (uint32_t l = r->layer_begin; l < r->layer_end; l++)
            for (uint32_t h = h0; h < h1; h++)
                sp->pol[(size_t)l * H + h] = r->policy;
    }
    int dense = 1;
    for (int32_t l = 0; l < L; l++) {
        const attnd_policy *lp = sp->pol + (size_t)l * H;
        int uniform = 1, full = 1, streams = 1;
        for (int32_t h = 0; h < H; h++) {
            uniform &= same_policy(&lp[h], &lp[0]);
            full &= lp[h].kind == ATTND_POLICY_FULL;
            streams &= lp[h].kind == ATTND_POLICY_STREAMING;
            sp->bounds[l] |= lp[h].kind == ATTND_POLICY_TOPK_PAGES;
            if (lp[h].sink > sp->sink[l])
                sp->sink[l] = lp[h].sink;
            if (lp[h].window > sp->window[l])
                sp->window[l] = lp[h].window;
        }
        sp->uniform[l] = (uint8_t)uniform;
        sp->dense[l] = (uint8_t)full;
        sp->evict[l] = (uint8_t)streams;
        dense &= full;
        sp->res[l] = res_per_layer;
        if (streams) {
            /* sink pages, the window's (one more: it rarely starts on a
             * page boundary), and an Attend's new tokens before eviction */
            int64_t most = attnd__sparse_sink_pages(sp->sink[l], ps) +
                           ((int64_t)sp->window[l] + ATTND_ENGINE_MAX_Q_TOKENS + ps - 1) / ps + 1;
            if (most < sp->res[l])
                sp->res[l] = (int32_t)most;
        }
    }
    *dense_p = dense;
    return sp;
}

attnd_status attnd__sparse_apply(attnd_engine *e, attnd__session *s,
                                 const attnd_session_policy *p, int32_t per_layer, int lenient,
                                 attnd_error *err)
{
    int dense = 0;
    attnd_status st = ATTND_OK;
    attnd__sparse *sp = resolve(e, p, per_layer, &dense);
    if (!sp || (p->n_rules && !(sp->rules = malloc(sizeof *sp->rules * p->n_rules)))) {
        attnd__sparse_free(sp);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "policy: no memory for the session's policy table");
    }
    sp->dflt = p->dflt;
    sp->n_rules = p->n_rules;
    if (p->n_rules)
        memcpy(sp->rules, p->rules, sizeof *sp->rules * p->n_rules);
    int64_t before = 0, after = 0;
    for (int32_t l = 0; l < s->n_layers; l++) {
        before += s->sparse ? s->sparse->res[l] : s->res_per_layer;
        after += dense ? per_layer : sp->res[l];
    }
    ATTND_ASSERT(s->reserved_left == before); /* no token yet: nothing redeemed */
    /* the owner's account first (its quota), then the pool's */
    if (after > before) {
        st = attnd__owner_charge(s->owner, 0, after - before, 0, 0, "max_tokens", err);
        if (st == ATTND_OK && (st = attnd_kv_pool_reserve(&e->pool, after - before, err))) {
            attnd__owner_refund(s->owner, 0, after - before, 0, 0);
            attnd_error_set(err, st, "max_tokens: the policy's reservation needs %lld KV pages "
                            "more than the pool can promise", (long long)(after - before));
        }
        if (st && !lenient) {
            attnd__sparse_free(sp);
            return st;
        }
        if (st) { /* recovery: the policy without a promise */
            attnd_kv_pool_unreserve(&e->pool, before);
            attnd__owner_refund(s->owner, 0, before, 0, 0);
            for (int32_t l = 0; l < s->n_layers; l++)
                sp->res[l] = 0;
            per_layer = 0;
            before = after = 0;
        }
    }
    if (after < before) {
        attnd_kv_pool_unreserve(&e->pool, before - after);
        attnd__owner_refund(s->owner, 0, before - after, 0, 0);
    }
    s->reserved_left = after;
    s->res_per_layer = per_layer;
    attnd__sparse_free(s->sparse);
    s->sparse = dense ? NULL : sp;
    if (dense)
        attnd__sparse_free(sp);
    return ATTND_OK;
}

/* Lock s, check it holds no token, apply. */
static attnd_status apply_locked(attnd_engine *e, attnd__session *s,
                                 const attnd_session_policy *p, int32_t per_layer,
                                 attnd_error *err)
{
    attnd_status st = ATTND_OK;
    pthread_mutex_lock(&s->mu);
    for (int32_t l = 0; l < s->n_layers && st == ATTND_OK; l++)
        if (s->len[l] || s->stager[l])
            st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                                 "policy: layer %d of the session already holds KV; a policy "
                                 "is set before the first token", l);
    if (st == ATTND_OK)
        st = attnd__sparse_apply(e, s, p, per_layer, 0, err);
    pthread_mutex_unlock(&s->mu);
    return st;
}

attnd_status attnd_engine_session_set_policy(attnd_engine *e, const attnd_session_id *id,
                                             const attnd_session_policy *p, attnd_error *err)
{
    attnd_status st = attnd_engine_policy_check(e, p, err);
    if (st)
        return st;
    /* the log records a session's policy in its CREATE record only */
    if (e->dur)
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                               "policy: a durable worker (--durable) records a session's policy "
                               "when it is created; create the session with its policy");
    attnd__session *s = attnd__session_get(&e->table, id);
    if (!s)
        return attnd_error_set(err, ATTND_ERR_NOT_FOUND, "session_id: no such session");
    st = apply_locked(e, s, p, s->res_per_layer, err);
    attnd__session_put(&e->table, &e->pool, s);
    return st;
}

attnd_status attnd_engine_session_create_policy(attnd_engine *e, uint64_t max_tokens,
                                                const attnd_session_policy *p,
                                                const attnd_session_id *id,
                                                attnd_session_id *id_p, attnd_error *err)
{
    return attnd_engine_session_create_policy_owned(e, 0, max_tokens, p, id, id_p, err);
}

attnd_status attnd_engine_session_create_policy_owned(attnd_engine *e, uint64_t owner,
                                                      uint64_t max_tokens,
                                                      const attnd_session_policy *p,
                                                      const attnd_session_id *id,
                                                      attnd_session_id *id_p, attnd_error *err)
{
    attnd_status st = attnd_engine_policy_check(e, p, err);
    if (st)
        return st;
    /* the policy is given before the session can be found and is logged
     * with it (one CREATE record) */
    return attnd__engine_session_create(e, owner, max_tokens, p, id, id_p, err);
}

/* ---- the policy in the log and the manifest -------------------------------------- */

static unsigned char *put32(unsigned char *b, uint32_t v)
{
    memcpy(b, &v, 4);
    return b + 4;
}

static unsigned char *put_policy(unsigned char *b, const attnd_policy *p)
{
    uint32_t f;
    memcpy(&f, &p->topk_fraction, 4);
    b = put32(b, (uint32_t)p->kind);
    b = put32(b, p->sink);
    b = put32(b, p->window);
    b = put32(b, p->topk);
    return put32(b, f);
}

size_t attnd__sparse_encode(const attnd__session *s, void *buf)
{
    const attnd__sparse *sp = s->sparse;
    if (!sp)
        return 0;
    size_t n = 28 + 36 * (size_t)sp->n_rules;
    if (!buf)
        return n;
    unsigned char *b = put_policy(buf, &sp->dflt);
    b = put32(b, sp->n_rules);
    b = put32(b, 0);
    for (uint32_t i = 0; i < sp->n_rules; i++) {
        const attnd_policy_rule *r = &sp->rules[i];
        b = put32(b, r->layer_begin);
        b = put32(b, r->layer_end);
        b = put32(b, r->head_begin);
        b = put32(b, r->head_end);
        b = put_policy(b, &r->policy);
    }
    ATTND_ASSERT((size_t)(b - (unsigned char *)buf) == n);
    return n;
}

static const unsigned char *get_policy(const unsigned char *b, attnd_policy *p)
{
    uint32_t v[5];
    memcpy(v, b, sizeof v);
    p->kind = (attnd_policy_kind)v[0];
    p->sink = v[1];
    p->window = v[2];
    p->topk = v[3];
    memcpy(&p->topk_fraction, &v[4], 4);
    return b + sizeof v;
}

int attnd__sparse_decode(const void *buf, size_t n, attnd_session_policy *p,
                         attnd_policy_rule **rules_p)
{
    const unsigned char *b = buf;
    uint32_t n_rules;
    attnd_policy_rule *rules = NULL;

    if (n < 28)
        return -1;
    b = get_policy(b, &p->dflt);
    memcpy(&n_rules, b, 4);
    b += 8;
    if (n_rules > ATTND_POLICY_MAX_RULES || n != 28 + 36 * (size_t)n_rules)
        return -1;
    if (n_rules && !(rules = malloc(sizeof *rules * n_rules)))
        return -1;
    for (uint32_t i = 0; i < n_rules; i++) {
        uint32_t v[4];
        memcpy(v, b, sizeof v);
        rules[i].layer_begin = v[0];
        rules[i].layer_end = v[1];
        rules[i].head_begin = v[2];
        rules[i].head_end = v[3];
        b = get_policy(b + sizeof v, &rules[i].policy);
    }
    p->rules = rules;
    p->n_rules = n_rules;
    *rules_p = rules;
    return 0;
}
