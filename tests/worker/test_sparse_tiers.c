/* Check suite of sparse policies on engines with a tier below memory
 * (worker/SPARSE.md, worker/TIERS.md), inside one process:
 *   - a streaming session whose layers go to disk and back keeps attending
 *     exactly its sink and window (float64 reference), the pages streaming
 *     freed being held nowhere (the tiers skip them: slots and logical pages
 *     add up, a close while below gives everything back);
 *   - a topk-pages session read back into other memory pages selects the
 *     same pages and gives the same bits as before it went below (its key
 *     bounds travel with its pages);
 *   - a durable engine takes a policy when a session is created (its log
 *     records it there), not later. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attnd_worker.h"
#include "testutil.h"
#include "tier_int.h"

enum { PS = 16 };

/* ---- a session's KV in float64, as the engine stores it (bf16) ---------- */

typedef struct shadow {
    const attnd_model_spec *m;
    int32_t d, hkv, hq;
    int64_t entry, cap;
    int64_t len[8];
    double *k[8], *v[8]; /* [layer][cap][hkv][d] */
} shadow;

static void sh_init(shadow *sh, const attnd_model_spec *m, int64_t cap)
{
    memset(sh, 0, sizeof *sh);
    ck_assert(m->kind == ATTND_ATTN_GQA && m->n_layers <= 8);
    sh->m = m;
    sh->d = m->head_dim;
    sh->hkv = m->n_kv_heads;
    sh->hq = m->n_q_heads;
    sh->entry = attnd_model_kv_token_elems(m);
    sh->cap = cap;
    for (int32_t l = 0; l < m->n_layers; l++) {
        sh->k[l] = malloc(sizeof(double) * (size_t)(cap * sh->hkv * sh->d));
        sh->v[l] = malloc(sizeof(double) * (size_t)(cap * sh->hkv * sh->d));
        ck_assert(sh->k[l] && sh->v[l]);
    }
}

static void sh_free(shadow *sh)
{
    for (int32_t l = 0; l < sh->m->n_layers; l++) {
        free(sh->k[l]);
        free(sh->v[l]);
    }
}

/* Record n wire entries (GQA [2][Hkv][d] bf16) at the end of layer l. */
static void sh_record(shadow *sh, int32_t l, int64_t n, const uint16_t *wire)
{
    const int64_t half = (int64_t)sh->hkv * sh->d;
    for (int64_t t = 0; t < n; t++) {
        int64_t pos = sh->len[l] + t;
        ck_assert_int_lt(pos, sh->cap);
        for (int64_t x = 0; x < half; x++) {
            sh->k[l][pos * half + x] = attnd_dtype_bf16_to_f32(wire[t * sh->entry + x]);
            sh->v[l][pos * half + x] = attnd_dtype_bf16_to_f32(wire[t * sh->entry + half + x]);
        }
    }
    sh->len[l] += n;
}

static uint16_t *random_wire(const shadow *sh, tu_rng *r, int64_t n, double scale)
{
    uint16_t *w = malloc(sizeof(uint16_t) * (size_t)(n * sh->entry + 1));
    ck_assert_ptr_nonnull(w);
    for (int64_t e = 0; e < n * sh->entry; e++)
        w[e] = attnd_dtype_f32_to_bf16((float)(scale * tu_normal(r)));
    return w;
}

/* Worst normwise error of out [Hq][d] (one query token, the layer's
 * newest) against float64 attention over tokens tok[0, n) of layer l. */
static double check_out(const shadow *sh, int32_t l, const float *q, const float *out,
                        const int64_t *tok, int64_t n)
{
    const int64_t half = (int64_t)sh->hkv * sh->d;
    double *k = malloc(sizeof(double) * (size_t)(n * sh->d + 1));
    double *v = malloc(sizeof(double) * (size_t)(n * sh->d + 1));
    double *ref = malloc(sizeof(double) * (size_t)sh->d), q64[64], worst = 0.0;
    ck_assert(k && v && ref && sh->d <= 64);
    for (int32_t h = 0; h < sh->hq; h++) {
        int32_t kvh = h / (sh->hq / sh->hkv);
        for (int64_t j = 0; j < n; j++) {
            memcpy(k + j * sh->d, sh->k[l] + tok[j] * half + (int64_t)kvh * sh->d,
                   sizeof(double) * (size_t)sh->d);
            memcpy(v + j * sh->d, sh->v[l] + tok[j] * half + (int64_t)kvh * sh->d,
                   sizeof(double) * (size_t)sh->d);
        }
        for (int32_t x = 0; x < sh->d; x++)
            q64[x] = q[h * sh->d + x];
        attnd_kernel_ref_attention_f64(1, 1, sh->d, sh->d, n, sh->m->scale, q64, k, v, ref, NULL);
        double e = tu_rel_err_f32(out + h * sh->d, ref, (size_t)sh->d);
        worst = e > worst ? e : worst;
    }
    free(k);
    free(v);
    free(ref);
    return worst;
}

/* The tokens a streaming layer of length len attends with one query token:
 * the pages of the first `sink` tokens and those of the last `window`
 * (page granularity, as worker/SPARSE.md says). */
static int64_t streaming_tokens(int64_t len, uint32_t sink, uint32_t window, int64_t *tok)
{
    int64_t np = (len + PS - 1) / PS, tail0 = (len - 1) / PS;
    int64_t sp = ((int64_t)sink + PS - 1) / PS, wp = len > window ? (len - window) / PS : 0;
    sp = sp < tail0 ? sp : tail0;
    wp = wp < sp ? sp : (wp > tail0 ? tail0 : wp);
    int64_t n = 0;
    for (int64_t j = 0; j < np; j++)
        if (j < sp || j >= wp)
            for (int64_t t = j * PS; t < (j + 1) * PS && t < len; t++)
                tok[n++] = t;
    return n;
}

/* ---- engines ------------------------------------------------------------- */

static char dir[64];

static void rm_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* tiny-gqa, pages of 16 tokens (4 KiB), memory_pages of memory, a disk tier
 * of 1 MiB (128 slots) in a fresh directory; durable: a sync log too. */
static attnd_engine *make_engine(int32_t memory_pages, int durable)
{
    strcpy(dir, "/tmp/attnd-sparsetier-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    attnd_engine_config cfg = {.model = *attnd_model_find("tiny-gqa"), .page_size = PS,
                               .kv_memory = (uint64_t)memory_pages * 4096, .max_sessions = 16,
                               .kv_disk = 1 << 20, .kv_prefetch = 0, .kernel_threads = 1,
                               .durable = durable ? ATTND_ENGINE_DURABLE_SYNC : 0};
    snprintf(cfg.kv_dir, sizeof cfg.kv_dir, "%s", dir);
    attnd_engine *e = NULL;
    attnd_error err;
    ck_assert_msg(attnd_engine_create(&cfg, &e, &err) == ATTND_OK, "%s", err.msg);
    return e;
}

/* Every page of session id below memory (internal: what the tier does to
 * the coldest sessions when memory is short). Returns pages moved. */
static int64_t send_below(attnd_engine *e, const attnd_session_id *id)
{
    attnd_error err;
    attnd__session *s = attnd__session_get(&e->table, id);
    ck_assert_ptr_nonnull(s);
    int64_t moved = attnd__tier_evict_session(e, s, &err);
    attnd__session_put(&e->table, &e->pool, s);
    ck_assert_msg(moved >= 0, "%s", err.msg);
    return moved;
}

/* The memory pages of layer l of session id (-1: below), into pages. */
static int32_t physical_pages(attnd_engine *e, const attnd_session_id *id, int32_t l,
                              int32_t *pages, int32_t cap)
{
    attnd__session *s = attnd__session_get(&e->table, id);
    ck_assert_ptr_nonnull(s);
    pthread_mutex_lock(&s->mu);
    int32_t np = attnd__session_layer_pages(s, l);
    ck_assert_int_le(np, cap);
    memcpy(pages, s->pages[l], sizeof(int32_t) * (size_t)np);
    pthread_mutex_unlock(&s->mu);
    attnd__session_put(&e->table, &e->pool, s);
    return np;
}

/* Wait for the mover to let go of its load records (milliseconds; 30 s is
 * a hang guard), then the engine's figures. */
static attnd_engine_stats settled_stats(attnd_engine *e, uint64_t held, uint64_t slots)
{
    attnd_engine_stats st;
    for (int waited = 0; waited < 30000; waited += 5) {
        attnd_engine_get_stats(e, &st);
        if (st.pages_held == held && st.below_slots_used == slots)
            break;
        usleep(5000);
    }
    return st;
}

static attnd_session_policy one_policy(attnd_policy p)
{
    attnd_session_policy sp = {.dflt = p};
    return sp;
}

/* ---- streaming ------------------------------------------------------------- */

/* Sink 20, window 64, every layer streaming: 300 tokens leave holes in
 * each layer; the session goes below again and again while it decodes,
 * each step exact against float64 over sink + window; the tiers hold its
 * live pages only, and a close while it is below gives every page, slot
 * and promise back. */
START_TEST(test_a_streaming_session_moved_below_and_back_attends_its_sink_and_window)
{
    tu_rng r;
    tu_rng_init(&r, "streaming below");
    const uint32_t sink = 20, window = 64;
    attnd_engine *e = make_engine(64, 0);
    const attnd_model_spec *m = attnd_engine_model(e);
    const int32_t L = m->n_layers;
    shadow sh;
    sh_init(&sh, m, 400);
    attnd_session_policy pol = one_policy((attnd_policy){.kind = ATTND_POLICY_STREAMING,
                                                         .sink = sink, .window = window});
    attnd_session_id id;
    attnd_error err;
    ck_assert_msg(attnd_engine_session_create_policy(e, 100000, &pol, NULL, &id, &err) == 0,
                  "%s", err.msg);
    for (int32_t l = 0; l < L; l++) {
        uint16_t *kv = random_wire(&sh, &r, 300, 1.0);
        sh_record(&sh, l, 300, kv);
        ck_assert_msg(attnd_engine_append(e, &id, (uint32_t)l, 0, 300, ATTND_DTYPE_BF16, kv,
                                          &err) == 0, "%s", err.msg);
        free(kv);
    }
    attnd_engine_ws ws;
    attnd_engine_ws_init(&ws);
    int64_t *tok = malloc(sizeof(int64_t) * 400);
    float q[8 * 32];
    for (int step = 0; step < 12; step++) {
        /* live pages per layer: 2 sink pages and the window's */
        int64_t live = 0;
        for (int32_t l = 0; l < L; l++)
            live += (streaming_tokens(sh.len[l], sink, window, tok) + PS - 1) / PS;
        if (step % 2 == 0) {
            ck_assert_int_eq(send_below(e, &id), live);
            attnd_engine_stats st = settled_stats(e, (uint64_t)live, (uint64_t)live);
            ck_assert_uint_eq(st.pages_held, (uint64_t)live);
            ck_assert_uint_eq(st.below_slots_used, (uint64_t)live); /* holes hold no slot */
            ck_assert_uint_eq(st.pages_used, 0);
        }
        for (int32_t l = 0; l < L; l++) {
            for (int32_t x = 0; x < m->n_q_heads * m->head_dim; x++)
                q[x] = (float)tu_normal(&r);
            uint16_t *nk = random_wire(&sh, &r, 1, 1.0);
            sh_record(&sh, l, 1, nk);
            const float *out, *lse;
            attnd_attend_req req = {.layer = (uint32_t)l, .n_seqs = 1, .ids = &id,
                                    .q_tokens = 1, .q_dtype = ATTND_DTYPE_F32, .q = q,
                                    .want_lse = 1, .new_kv_dtype = ATTND_DTYPE_BF16,
                                    .new_kv = nk};
            ck_assert_msg(attnd_engine_attend(e, &req, &ws, &out, &lse, &err) == 0, "step %d "
                          "layer %d: %s", step, l, err.msg);
            int64_t n = streaming_tokens(sh.len[l], sink, window, tok);
            ck_assert_double_le(check_out(&sh, l, q, out, tok, n), 1e-5);
            free(nk);
        }
    }
    /* closed while below: nothing stays held, reserved or in a slot */
    send_below(e, &id);
    uint64_t freed = 0;
    ck_assert_int_eq(attnd_engine_session_close(e, &id, &freed, &err), 0);
    attnd_engine_stats st = settled_stats(e, 0, 0);
    ck_assert_uint_eq(st.pages_held, 0);
    ck_assert_uint_eq(st.below_slots_used, 0);
    ck_assert_uint_eq(st.pages_used, 0);
    ck_assert_uint_eq(st.pages_reserved, 0);
    free(tok);
    attnd_engine_ws_cleanup(&ws);
    sh_free(&sh);
    attnd_engine_destroy(e);
    rm_dir();
}
END_TEST

/* ---- topk-pages ------------------------------------------------------------ */

/* 20 pages of small random keys, pages 7 and 13 holding keys aligned with
 * every query head of their KV head; topk 4 with a 16-token sink: pages 0, 7, 13,
 * 19. The session goes below, another session takes the memory pages it
 * had, it is read back into other pages: the same pages are chosen and the
 * output has the same bits. */
START_TEST(test_topk_pages_selects_the_same_pages_after_its_session_was_read_back)
{
    tu_rng r;
    tu_rng_init(&r, "topk below");
    attnd_engine *e = make_engine(160, 0);
    const attnd_model_spec *m = attnd_engine_model(e);
    const int32_t L = m->n_layers, d = m->head_dim, hkv = m->n_kv_heads;
    const int32_t group = m->n_q_heads / hkv, T = 20 * PS;
    shadow sh;
    sh_init(&sh, m, T);
    attnd_session_policy pol = one_policy((attnd_policy){.kind = ATTND_POLICY_TOPK_PAGES,
                                                         .sink = 16, .topk = 4});
    attnd_session_id id, filler;
    attnd_error err;
    ck_assert_msg(attnd_engine_session_create_policy(e, (uint64_t)T, &pol, NULL, &id, &err) == 0,
                  "%s", err.msg);
    /* one direction u[kvh] per KV head: its query heads ask for it */
    float u[2][32], q[8 * 32];
    ck_assert(hkv <= 2 && d <= 32);
    for (int32_t h = 0; h < hkv; h++)
        for (int32_t x = 0; x < d; x++)
            u[h][x] = (float)tu_normal(&r);
    for (int32_t h = 0; h < m->n_q_heads; h++)
        for (int32_t x = 0; x < d; x++)
            q[h * d + x] = u[h / group][x];
    uint16_t *kv = random_wire(&sh, &r, T, 0.3);
    for (int32_t t = 0; t < T; t++) {
        if (t / PS != 7 && t / PS != 13)
            continue;
        for (int32_t h = 0; h < hkv; h++)
            for (int32_t x = 0; x < d; x++)
                kv[(int64_t)t * sh.entry + h * d + x] = attnd_dtype_f32_to_bf16(
                    1.5f * u[h][x] + 0.1f * (float)tu_normal(&r));
    }
    for (int32_t l = 0; l < L; l++)
        ck_assert_int_eq(attnd_engine_append(e, &id, (uint32_t)l, 0, (uint64_t)T,
                                             ATTND_DTYPE_BF16, kv, &err), 0);
    attnd_engine_ws ws;
    attnd_engine_ws_init(&ws);
    const size_t out_n = (size_t)m->n_q_heads * d;
    float *before = malloc(sizeof(float) * out_n * (size_t)L);
    int64_t chosen[3][2][8];
    int32_t old_pages[3][32], new_pages[3][32];
    const float *out, *lse;
    for (int32_t l = 0; l < L; l++) {
        attnd_attend_req req = {.layer = (uint32_t)l, .n_seqs = 1, .ids = &id, .q_tokens = 1,
                                .q_dtype = ATTND_DTYPE_F32, .q = q, .want_lse = 1,
                                .want_pages = 1};
        ck_assert_msg(attnd_engine_attend(e, &req, &ws, &out, &lse, &err) == 0, "%s", err.msg);
        memcpy(before + (size_t)l * out_n, out, sizeof(float) * out_n);
        ck_assert_uint_eq(ws.chosen_groups, (uint32_t)hkv);
        for (int32_t g = 0; g < hkv; g++) {
            ck_assert_int_eq(ws.chosen_indptr[g + 1] - ws.chosen_indptr[g], 4);
            memcpy(chosen[l][g], ws.chosen + ws.chosen_indptr[g], sizeof(int64_t) * 4);
            /* the selection means something: the needle pages */
            const int64_t want[4] = {0, 7, 13, 19};
            ck_assert(memcmp(chosen[l][g], want, sizeof want) == 0);
        }
        physical_pages(e, &id, l, old_pages[l], 32);
    }
    /* below; a dense session takes the memory pages it had */
    ck_assert_int_eq(send_below(e, &id), 3 * 20);
    ck_assert_int_eq(attnd_engine_session_create(e, 0, &filler, &err), 0);
    uint16_t *zeros = calloc((size_t)(3 * T * sh.entry), sizeof(uint16_t));
    ck_assert_int_eq(attnd_engine_append(e, &filler, 0, 0, 3 * (uint64_t)T, ATTND_DTYPE_BF16,
                                         zeros, &err), 0);
    for (int32_t l = 0; l < L; l++) {
        attnd_attend_req req = {.layer = (uint32_t)l, .n_seqs = 1, .ids = &id, .q_tokens = 1,
                                .q_dtype = ATTND_DTYPE_F32, .q = q, .want_lse = 1,
                                .want_pages = 1};
        ck_assert_msg(attnd_engine_attend(e, &req, &ws, &out, &lse, &err) == 0, "%s", err.msg);
        /* read back into other memory pages (the test means something) */
        physical_pages(e, &id, l, new_pages[l], 32);
        for (int32_t j = 0; j < 20; j++)
            ck_assert_int_ne(new_pages[l][j], old_pages[l][j]);
        for (int32_t g = 0; g < hkv; g++)
            ck_assert_msg(memcmp(ws.chosen + ws.chosen_indptr[g], chosen[l][g],
                                 sizeof(int64_t) * 4) == 0,
                          "layer %d head %d chose pages %lld %lld %lld %lld", l, g,
                          (long long)ws.chosen[ws.chosen_indptr[g]],
                          (long long)ws.chosen[ws.chosen_indptr[g] + 1],
                          (long long)ws.chosen[ws.chosen_indptr[g] + 2],
                          (long long)ws.chosen[ws.chosen_indptr[g] + 3]);
        ck_assert(memcmp(out, before + (size_t)l * out_n, sizeof(float) * out_n) == 0);
    }
    ck_assert_int_eq(attnd_engine_session_close(e, &filler, NULL, &err), 0);
    ck_assert_int_eq(attnd_engine_session_close(e, &id, NULL, &err), 0);
    free(zeros);
    free(kv);
    free(before);
    attnd_engine_ws_cleanup(&ws);
    sh_free(&sh);
    attnd_engine_destroy(e);
    rm_dir();
}
END_TEST

/* ---- durable engines --------------------------------------------------------- */

/* A durable engine records a session's policy in the session's CREATE
 * record (tests/tiers/test_tiers_sparse.c recovers them after kill -9):
 * it creates sessions with any policy, and refuses only to change the
 * policy of a session already created (FAILED_PRECONDITION naming the
 * field and --durable), which would not be in the log. */
START_TEST(test_a_durable_engine_takes_a_policy_at_creation_only)
{
    attnd_engine *e = make_engine(64, 1);
    attnd_engine_stats st;
    attnd_error err;
    attnd_session_id id, dense;
    attnd_session_policy stream = one_policy((attnd_policy){.kind = ATTND_POLICY_STREAMING,
                                                            .sink = 4, .window = 64});
    ck_assert_msg(attnd_engine_session_create_policy(e, 1000, &stream, NULL, &id, &err) == 0,
                  "%s", err.msg);
    /* a streaming layer reserves its sink and window only */
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.sessions, 1);
    ck_assert_uint_lt(st.pages_reserved, 3 * ((1000 + PS - 1) / PS));
    ck_assert_int_eq(attnd_engine_session_create(e, 0, &dense, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_set_policy(e, &dense, &stream, &err),
                     ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_msg(strncmp(err.msg, "policy", 6) == 0 && strstr(err.msg, "--durable"), "%s",
                  err.msg);
    attnd_engine_destroy(e);
    rm_dir();
}
END_TEST

static Suite *sparse_tiers_suite(void)
{
    Suite *su = suite_create("sparse_tiers");
    TCase *tc = tcase_create("engine");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_a_streaming_session_moved_below_and_back_attends_its_sink_and_window);
    tcase_add_test(tc, test_topk_pages_selects_the_same_pages_after_its_session_was_read_back);
    tcase_add_test(tc, test_a_durable_engine_takes_a_policy_at_creation_only);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(sparse_tiers_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
