/* The worker group's life: settings, the shard each rank's engine serves,
 * start-up (executors, transport, waiting for the peers), state for stats
 * and health, and teardown. The calls themselves are in group_lead.c and
 * group_append.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "attnd_clock.h"
#include "attnd_log.h"
#include "group_int.h"

int attnd_group_mode_parse(const char *s)
{
    if (strcmp(s, "sequence") == 0)
        return ATTND_GROUP_SEQUENCE;
    if (strcmp(s, "head") == 0)
        return ATTND_GROUP_HEAD;
    if (strcmp(s, "latent") == 0)
        return ATTND_GROUP_LATENT;
    return -1;
}

const char *attnd_group_mode_name(attnd_group_mode m)
{
    switch (m) {
    case ATTND_GROUP_SEQUENCE: return "sequence";
    case ATTND_GROUP_HEAD: return "head";
    case ATTND_GROUP_LATENT: return "latent";
    }
    return "?";
}

attnd_status attnd_group_shard_model(const attnd_group_config *cfg, attnd_model_spec *shard,
                                     attnd_error *err)
{
    const attnd_model_spec *m = &cfg->model;
    const int32_t N = cfg->size;

    if (N < 1 || N > ATTND_GROUP_MAX_RANKS)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--group: %d ranks; expected 1 to %d", N, ATTND_GROUP_MAX_RANKS);
    if (cfg->rank < 0 || cfg->rank >= N)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--rank: %d not in [0, %d) for a group of %d", cfg->rank, N, N);
    *shard = *m;
    switch (cfg->mode) {
    case ATTND_GROUP_SEQUENCE:
        return ATTND_OK;
    case ATTND_GROUP_HEAD:
        if (m->kind != ATTND_ATTN_GQA || m->n_kv_heads % N)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "--shard head: needs a GQA model whose %d KV heads divide "
                                   "into %d ranks (%s)", m->n_kv_heads, N, m->name);
        shard->n_kv_heads = m->n_kv_heads / N;
        shard->n_q_heads = m->n_q_heads / N;
        return ATTND_OK;
    case ATTND_GROUP_LATENT:
        if (m->kind != ATTND_ATTN_MLA || !attnd_kernel_fwht_supported(m->d_latent) ||
            m->d_latent % N || (cfg->rope_split && m->d_rope % N))
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "--shard latent: needs an MLA model whose power-of-two "
                                   "latent rank %d (and RoPE dim %d with --tpla-rope split) "
                                   "divides into %d ranks (%s)", m->d_latent, m->d_rope, N,
                                   m->name);
        if (!(cfg->mu > 0.0f))
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "--tpla-mu: expected a positive number, got %g",
                                   (double)cfg->mu);
        shard->d_latent = m->d_latent / N;
        shard->d_rope = cfg->rope_split ? m->d_rope / N : m->d_rope;
        return ATTND_OK;
    }
    return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "--shard: unknown mode");
}

/* One session the engine recovered into the group table, with the
 * lengths its log recorded. (A lost one is left to its engine, which
 * answers DATA_LOSS for it.) */
static void import_session(void *arg, const attnd_session_id *id, int32_t n_layers,
                           const uint64_t *ulen, int lost)
{
    attnd_group *g = arg;
    attnd_error err;
    uint64_t zero = 0;
    (void)lost;
    if (attnd__gtable_add(&g->table, id, &err))
        return;
    for (int32_t l = 0; l < n_layers && l < g->table.n_layers; l++)
        attnd__gtable_advance(&g->table, id, 1, (uint32_t)l, &zero, ulen[l]);
}

attnd_status attnd_group_create(const attnd_group_config *cfg, attnd_engine *engine,
                                attnd_group **group_p, attnd_error *err)
{
    attnd_status st;
    attnd_group *g = calloc(1, sizeof *g);

    if (!g)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "group: out of memory");
    g->cfg = *cfg;
    snprintf(g->model_name, sizeof g->model_name, "%s",
             cfg->model.name ? cfg->model.name : "custom");
    g->cfg.model.name = g->model_name;
    st = attnd_group_shard_model(&g->cfg, &g->shard, err);
    if (st) {
        free(g);
        return st;
    }
    g->engine = engine;
    g->N = cfg->size;
    g->me = cfg->rank;
    g->hq = cfg->model.n_q_heads;
    g->d_k = attnd_model_d_k(&cfg->model);
    g->d_v = attnd_model_d_v(&cfg->model);
    g->kv_elems = attnd_model_kv_token_elems(&cfg->model);
    g->hq_r = g->shard.n_q_heads;
    g->d_k_r = attnd_model_d_k(&g->shard);
    g->d_v_r = attnd_model_d_v(&g->shard);
    g->kv_elems_r = attnd_model_kv_token_elems(&g->shard);
    g->rdv_fd = -1;
    pthread_mutex_init(&g->call_mu, NULL);
    pthread_condattr_t ca; /* attnd__gcall_wait's deadlines are CLOCK_MONOTONIC */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->call_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&g->buf_mu, NULL);
    pthread_mutex_init(&g->job_mu, NULL);
    pthread_cond_init(&g->job_cv, NULL);
    attnd__gtable_init(&g->table, cfg->model.n_layers);
    /* a rank that recovered its shard (attnd --durable) knows its sessions
     * and the group's lengths of them from its log (worker/TIERS.md) */
    attnd_engine_sessions(engine, import_session, g);
    attnd__gstages_init(g);
    attnd__gnet_set_handlers(g, attnd__gpeer_on_request, attnd__gcall_on_reply);
    if ((st = attnd__gpeer_start(g, err)) || (st = attnd__gnet_start(g, err))) {
        attnd_group_destroy(g);
        return st;
    }
    attnd__gnet_wait_connected(g, attnd_clock_ms() + cfg->connect_ms);
    attnd_group_state s;
    attnd_group_get_state(g, &s);
    if (s.missing[0])
        attnd_log_warn("group", "rank %d: ranks %s not connected after %lld ms; "
                       "serving, retrying them in the background", g->me, s.missing,
                       (long long)cfg->connect_ms);
    *group_p = g;
    return ATTND_OK;
}

void attnd_group_destroy(attnd_group *g)
{
    if (!g)
        return;
    attnd__gpeer_stop(g);
    attnd__gnet_stop(g);
    attnd__gcalls_cleanup(g);
    attnd__gstages_cleanup(g); /* before the table: it releases claims */
    attnd__gbufs_cleanup(g);
    attnd__glws_cleanup(g);
    attnd__gtable_cleanup(&g->table);
    pthread_mutex_destroy(&g->call_mu);
    pthread_cond_destroy(&g->call_cv);
    pthread_mutex_destroy(&g->buf_mu);
    pthread_mutex_destroy(&g->job_mu);
    pthread_cond_destroy(&g->job_cv);
    OPENSSL_cleanse(g->cfg.secret, sizeof g->cfg.secret);
    free(g);
}

const attnd_model_spec *attnd_group_model(const attnd_group *g)
{
    return &g->cfg.model;
}

int attnd_group_port(const attnd_group *g)
{
    return g->port;
}

void attnd_group_get_state(attnd_group *g, attnd_group_state *st)
{
    size_t used = 0;
    memset(st, 0, sizeof *st);
    st->rank = g->me;
    st->size = g->N;
    st->mode = g->cfg.mode;
    for (int32_t r = 0; r < g->N; r++) {
        if (r == g->me)
            continue;
        if (attnd__gnet_peer_info(g, r, &st->peers[r])) {
            st->connected++;
        } else if (used + 8 < sizeof st->missing) {
            int k = snprintf(st->missing + used, sizeof st->missing - used, "%s%d",
                             used ? "," : "", r);
            used += (size_t)k;
        }
    }
    st->peer_failures = atomic_load(&g->peer_failures);
    st->bytes_sent = atomic_load_explicit(&g->bytes_sent, memory_order_relaxed);
    st->bytes_received = atomic_load_explicit(&g->bytes_received, memory_order_relaxed);
}
