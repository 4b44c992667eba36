/* Sparse policies on a worker group: a session's policy as each rank's
 * shard sees it, carried in the CREATE message (attnd_group.h has what
 * each mode gives a rank).
 *
 * CREATE with a policy: data = id (16 bytes), then the rank's policy:
 * uint32 n_rules, the default (kind, sink, window, topk, topk_fraction as
 * 4-byte little-endian fields), then n_rules rules (layer_begin, layer_end,
 * head_begin, head_end, then a policy); then the session's whole policy in
 * the same form, from which every rank keeps the policy kinds of every
 * layer and head in its group table (the leader of an Attend checks given
 * indices against them for every shard: group_given.c). Every rank checks
 * its own policy again with its engine (against its shard) when it
 * creates the session. */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "group_int.h"

#define POL_BYTES 20
#define RULE_BYTES (16 + POL_BYTES)

static uint8_t *put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
    return p + 4;
}

static const uint8_t *get32(const uint8_t *p, uint32_t *v)
{
    memcpy(v, p, 4);
    return p + 4;
}

static uint8_t *put_policy(uint8_t *p, const attnd_policy *x)
{
    p = put32(p, (uint32_t)x->kind);
    p = put32(p, x->sink);
    p = put32(p, x->window);
    p = put32(p, x->topk);
    memcpy(p, &x->topk_fraction, 4);
    return p + 4;
}

static const uint8_t *get_policy(const uint8_t *p, attnd_policy *x)
{
    uint32_t k;
    p = get32(p, &k);
    x->kind = (attnd_policy_kind)k;
    p = get32(p, &x->sink);
    p = get32(p, &x->window);
    p = get32(p, &x->topk);
    memcpy(&x->topk_fraction, p, 4);
    return p + 4;
}

/* Rank r's share of policy x under sequence sharding (global page p on
 * rank p mod N). */
static attnd_policy rank_policy(const attnd_group *g, int32_t r, const attnd_policy *x)
{
    const int64_t N = g->N, ps = attnd_engine_page_size(g->engine);
    attnd_policy o = *x;
    if (g->cfg.mode != ATTND_GROUP_SEQUENCE)
        return o;
    if (x->sink) { /* its pages among the global sink pages */
        int64_t sp = ((int64_t)x->sink + ps - 1) / ps;
        o.sink = (uint32_t)((sp > r ? (sp - r + N - 1) / N : 0) * ps);
    }
    if (x->kind == ATTND_POLICY_TOPK_PAGES && x->topk)
        o.topk = (uint32_t)(((int64_t)x->topk + N - 1) / N);
    if (x->kind == ATTND_POLICY_STREAMING) {
        /* the window's pages (one more where it starts mid-page), its
         * share of them, and the partial page it may start in */
        int64_t pages = ((int64_t)x->window + ps - 1) / ps + 1;
        int64_t w = ((pages + N - 1) / N) * ps + ps;
        o.window = (uint32_t)(w < ATTND_POLICY_MIN_WINDOW ? ATTND_POLICY_MIN_WINDOW : w);
    }
    return o;
}

/* Rank r's rules (head mode: the KV heads it holds, renumbered); their
 * count. */
static uint32_t rank_rules(const attnd_group *g, int32_t r, const attnd_session_policy *p,
                           attnd_policy_rule *out)
{
    uint32_t n = 0;
    const uint32_t hr = (uint32_t)g->shard.n_kv_heads, h0 = (uint32_t)r * hr;
    for (uint32_t i = 0; i < p->n_rules; i++) {
        attnd_policy_rule x = p->rules[i];
        x.policy = rank_policy(g, r, &x.policy);
        if (g->cfg.mode == ATTND_GROUP_HEAD && (x.head_begin || x.head_end)) {
            uint32_t lo = x.head_begin > h0 ? x.head_begin : h0;
            uint32_t hi = x.head_end < h0 + hr ? x.head_end : h0 + hr;
            if (lo >= hi)
                continue; /* none of its heads */
            x.head_begin = lo - h0;
            x.head_end = hi - h0;
        }
        out[n++] = x;
    }
    return n;
}

/* Rank r's policy, serialized at p (room for attnd__gpolicy_bytes). */
static size_t rank_serialize(const attnd_group *g, int32_t r, const attnd_session_policy *p,
                             attnd_policy_rule *rules, uint8_t *dst)
{
    uint32_t n = rank_rules(g, r, p, rules);
    attnd_policy d = rank_policy(g, r, &p->dflt);
    uint8_t *q = put32(dst, n);
    q = put_policy(q, &d);
    for (uint32_t i = 0; i < n; i++) {
        q = put32(q, rules[i].layer_begin);
        q = put32(q, rules[i].layer_end);
        q = put32(q, rules[i].head_begin);
        q = put32(q, rules[i].head_end);
        q = put_policy(q, &rules[i].policy);
    }
    return (size_t)(q - dst);
}

/* The session's whole policy, serialized at dst (as rank_serialize). */
static size_t whole_serialize(const attnd_session_policy *p, uint8_t *dst)
{
    uint8_t *q = put32(dst, p->n_rules);
    q = put_policy(q, &p->dflt);
    for (uint32_t i = 0; i < p->n_rules; i++) {
        q = put32(q, p->rules[i].layer_begin);
        q = put32(q, p->rules[i].layer_end);
        q = put32(q, p->rules[i].head_begin);
        q = put32(q, p->rules[i].head_end);
        q = put_policy(q, &p->rules[i].policy);
    }
    return (size_t)(q - dst);
}

/* One serialized policy at p (len bytes left) into *out and *rules_p;
 * *used_p its bytes. */
static attnd_status parse_one(const uint8_t *p, size_t len, attnd_session_policy *out,
                              attnd_policy_rule **rules_p, size_t *used_p, attnd_error *err)
{
    uint32_t n;
    if (len < 4 + POL_BYTES)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "group: CREATE policy truncated");
    p = get32(p, &n);
    if (n > ATTND_POLICY_MAX_RULES || len < 4 + POL_BYTES + (size_t)n * RULE_BYTES)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "group: CREATE policy of %zu bytes for %u rules", len, n);
    *used_p = 4 + POL_BYTES + (size_t)n * RULE_BYTES;
    attnd_policy_rule *rules = n ? calloc(n, sizeof *rules) : NULL;
    if (n && !rules)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "group: out of memory");
    memset(out, 0, sizeof *out);
    p = get_policy(p, &out->dflt);
    for (uint32_t i = 0; i < n; i++) {
        p = get32(p, &rules[i].layer_begin);
        p = get32(p, &rules[i].layer_end);
        p = get32(p, &rules[i].head_begin);
        p = get32(p, &rules[i].head_end);
        p = get_policy(p, &rules[i].policy);
    }
    out->rules = rules;
    out->n_rules = n;
    *rules_p = rules;
    return ATTND_OK;
}

attnd_status attnd__gpolicy_parse(const uint8_t *p, size_t len, attnd_session_policy *mine,
                                  attnd_policy_rule **rules_p, attnd_session_policy *whole,
                                  attnd_policy_rule **whole_rules_p, attnd_error *err)
{
    size_t a = 0, b = 0;
    attnd_status st = parse_one(p, len, mine, rules_p, &a, err);
    if (st)
        return st;
    if ((st = parse_one(p + a, len - a, whole, whole_rules_p, &b, err)) == ATTND_OK &&
        a + b != len) {
        free(*whole_rules_p);
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                             "group: CREATE policy of %zu bytes, %zu expected", len, a + b);
    }
    if (st) {
        free(*rules_p);
        *rules_p = *whole_rules_p = NULL;
    }
    return st;
}

size_t attnd__gkinds_stride(const attnd_group *g)
{
    const attnd_model_spec *m = &g->cfg.model;
    return (size_t)(m->kind == ATTND_ATTN_GQA ? m->n_kv_heads : 1) + 1;
}

static int same_policy(const attnd_policy *a, const attnd_policy *b)
{
    return a->kind == b->kind && a->sink == b->sink && a->window == b->window &&
           a->topk == b->topk && a->topk_fraction == b->topk_fraction;
}

attnd_status attnd__gpolicy_keep(attnd_group *g, const attnd_session_id *id,
                                 const attnd_session_policy *p, attnd_error *err)
{
    const size_t stride = attnd__gkinds_stride(g), H = stride - 1;
    const uint32_t L = (uint32_t)g->cfg.model.n_layers;
    uint8_t *k = malloc(stride * L);
    attnd_policy *lp = malloc(sizeof *lp * H);
    attnd_status st = ATTND_OK;
    if (!k || !lp) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "policy: no memory for the group's session table");
        goto out;
    }
    for (uint32_t l = 0; l < L; l++) { /* as the engine resolves it: later rules win */
        uint8_t *row = k + (size_t)l * stride, flags = ATTND__GKIND_UNIFORM;
        for (size_t h = 0; h < H; h++)
            lp[h] = p->dflt;
        for (uint32_t i = 0; i < p->n_rules; i++) {
            const attnd_policy_rule *r = &p->rules[i];
            size_t h0 = r->head_begin, h1 = r->head_end ? r->head_end : H;
            for (size_t h = h0; l >= r->layer_begin && l < r->layer_end && h < h1 && h < H; h++)
                lp[h] = r->policy;
        }
        for (size_t h = 0; h < H; h++) {
            row[h] = (uint8_t)lp[h].kind;
            if (!same_policy(&lp[h], &lp[0]))
                flags &= (uint8_t)~ATTND__GKIND_UNIFORM;
            if (lp[h].kind == ATTND_POLICY_TOPK_PAGES)
                flags |= ATTND__GKIND_TOPK;
        }
        row[H] = flags;
    }
    st = attnd__gtable_set_kinds(&g->table, id, k, stride, err);
out:
    free(lp);
    free(k);
    return st;
}

attnd_status attnd_group_session_create_policy(attnd_group *g, uint64_t max_tokens,
                                               const attnd_session_policy *p,
                                               attnd_session_id *id_p, attnd_error *err)
{
    return attnd_group_session_create_policy_owned(g, 0, max_tokens, p, id_p, err);
}

attnd_status attnd_group_session_create_policy_owned(attnd_group *g, uint64_t owner,
                                                     uint64_t max_tokens,
                                                     const attnd_session_policy *p,
                                                     attnd_session_id *id_p, attnd_error *err)
{
    attnd_session_id id;
    attnd_session_policy mine;
    attnd_status st = attnd_policy_check(&g->cfg.model, p, err);
    const size_t bytes = 4 + POL_BYTES + (size_t)p->n_rules * RULE_BYTES;

    if (st || (st = attnd__glead_peers_up(g, err)))
        return st;
    if (getrandom(id.bytes, sizeof id.bytes, 0) != (ssize_t)sizeof id.bytes)
        return attnd_error_set(err, ATTND_ERR_INTERNAL, "session_id: getrandom failed");
    attnd_policy_rule *rules = p->n_rules ? calloc(p->n_rules, sizeof *rules) : NULL;
    if (p->n_rules && !rules)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "policy_table: out of memory");
    mine.dflt = rank_policy(g, g->me, &p->dflt);
    mine.n_rules = rank_rules(g, g->me, p, rules);
    mine.rules = rules;
    st = attnd_engine_session_create_policy_owned(g->engine, owner,
                                                  attnd__glead_rank_tokens(g, g->me, max_tokens),
                                                  &mine, &id, NULL, err);
    if (st)
        goto out;
    if ((st = attnd__gtable_add(&g->table, &id, err)) ||
        (st = attnd__gpolicy_keep(g, &id, p, err))) {
        attnd__gtable_remove(&g->table, &id);
        attnd_engine_session_close(g->engine, &id, NULL, NULL);
        goto out;
    }
    attnd__gcall *c = attnd__gcall_new(g);
    if (!c) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "group: out of memory");
    } else {
        for (int32_t r = 0; r < g->N; r++) {
            if (r == g->me)
                continue;
            attnd__gbuf *b = attnd__gbuf_get(g, sizeof id.bytes + sizeof owner + 2 * bytes);
            if (!b)
                continue; /* the slot is never expected: collect sees no failure */
            b->hdr.type = ATTND__GMSG_CREATE;
            b->hdr.a = attnd__glead_rank_tokens(g, r, max_tokens);
            memcpy(b->data, id.bytes, sizeof id.bytes);
            b->len = sizeof id.bytes;
            if (owner) { /* b = 2: the owner, then the policies (group_peer.c) */
                b->hdr.b = 2;
                memcpy(b->data + b->len, &owner, sizeof owner);
                b->len += sizeof owner;
            }
            b->len += rank_serialize(g, r, p, rules, b->data + b->len);
            b->len += whole_serialize(p, b->data + b->len);
            attnd__glead_send(g, c, r, b, 0);
        }
        attnd__gcall_wait(g, c, attnd__glead_deadline(g, 0));
        st = attnd__glead_collect(g, c, err);
        attnd__gcall_release(g, c);
    }
    if (st) { /* undo everywhere (ranks that never made it answer NOT_FOUND) */
        attnd_error ignored;
        attnd_group_session_close(g, &id, NULL, &ignored);
        goto out;
    }
    *id_p = id;
out:
    free(rules);
    return st;
}
