/* Check suite of the worker room: page accounting of the KV pool and its
 * reservations, every engine error with its exact status and no side
 * effect, attention through the engine against the float64 reference, the
 * session table under churn, and concurrent sessions on several threads. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_worker.h"
#include "testutil.h"

/* A model's KV and queries, kept in float64 as the engine stores them. */
typedef struct shadow {
    const attnd_model_spec *m;
    int32_t dk, dv, hkv;
    int64_t entry;
    int64_t cap;      /* tokens per layer */
    int64_t *len;     /* [layers] */
    double **k, **v;  /* [layers][cap][hkv][dk|dv] */
} shadow;

static void shadow_init(shadow *sh, const attnd_model_spec *m, int64_t cap)
{
    sh->m = m;
    sh->dk = attnd_model_d_k(m);
    sh->dv = attnd_model_d_v(m);
    sh->hkv = m->n_kv_heads;
    sh->entry = attnd_model_kv_token_elems(m);
    sh->cap = cap;
    sh->len = calloc((size_t)m->n_layers, sizeof(int64_t));
    sh->k = calloc((size_t)m->n_layers, sizeof(double *));
    sh->v = calloc((size_t)m->n_layers, sizeof(double *));
    for (int32_t l = 0; l < m->n_layers; l++) {
        sh->k[l] = malloc(sizeof(double) * (size_t)(cap * sh->hkv * sh->dk));
        sh->v[l] = malloc(sizeof(double) * (size_t)(cap * sh->hkv * sh->dv));
    }
}

static void shadow_free(shadow *sh)
{
    for (int32_t l = 0; l < sh->m->n_layers; l++) {
        free(sh->k[l]);
        free(sh->v[l]);
    }
    free(sh->k);
    free(sh->v);
    free(sh->len);
}

/* Draw n random bf16 entries for layer l (wire form, into *wire) and record
 * them in the shadow. */
static void shadow_draw(shadow *sh, tu_rng *r, int32_t l, int64_t n, uint16_t *wire)
{
    for (int64_t t = 0; t < n; t++) {
        uint16_t *w = wire + t * sh->entry;
        int64_t pos = sh->len[l] + t;
        for (int64_t e = 0; e < sh->entry; e++)
            w[e] = attnd_dtype_f32_to_bf16((float)tu_normal(r));
        for (int32_t h = 0; h < sh->hkv; h++) {
            for (int32_t d = 0; d < sh->dk; d++)
                sh->k[l][(pos * sh->hkv + h) * sh->dk + d] = attnd_dtype_bf16_to_f32(w[h * sh->dk + d]);
            for (int32_t d = 0; d < sh->dv; d++) {
                int64_t src = sh->m->kind == ATTND_ATTN_MLA ? d
                                                           : sh->hkv * sh->dk + h * sh->dv + d;
                sh->v[l][(pos * sh->hkv + h) * sh->dv + d] = attnd_dtype_bf16_to_f32(w[src]);
            }
        }
    }
    sh->len[l] += n;
}

/* Engines made by make_engine prefault their pool (Check forks per test). */
static int g_prefault;

static attnd_engine *make_engine(const char *model, uint64_t kv_memory, uint32_t max_sessions,
                                 int32_t page_size)
{
    attnd_engine_config cfg = {.model = *attnd_model_find(model),
                               .page_size = page_size,
                               .kv_memory = kv_memory,
                               .max_sessions = max_sessions,
                               .prefault = g_prefault};
    attnd_engine *e = NULL;
    attnd_error err;
    ck_assert_int_eq(attnd_engine_create(&cfg, &e, &err), ATTND_OK);
    return e;
}

START_TEST(test_pool_accounting_follows_reservations_appends_and_close)
{
    attnd_engine *e = make_engine("tiny-gqa", 1 << 20, 8, 64);
    const attnd_model_spec *m = attnd_engine_model(e);
    attnd_engine_stats st;
    attnd_session_id a, b;
    attnd_error err;
    attnd_engine_get_stats(e, &st);
    uint64_t total = st.pages_total;
    ck_assert_uint_eq(st.page_bytes, 2 * 2 * 64 * 32 * 2);
    ck_assert_uint_eq(total, (1 << 20) / st.page_bytes);

    /* 100 tokens reserve 2 pages in each of 3 layers */
    ck_assert_int_eq(attnd_engine_session_create(e, 100, &a, &err), ATTND_OK);
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.pages_reserved, 2 * (uint64_t)m->n_layers);
    ck_assert_uint_eq(st.pages_used, 0);

    /* 130 tokens in layer 0: 3 pages, 2 from the reservation */
    uint16_t *kv = calloc(130 * (size_t)attnd_model_kv_token_elems(m), 2);
    ck_assert_int_eq(attnd_engine_append(e, &a, 0, 0, 130, ATTND_DTYPE_BF16, kv, &err), ATTND_OK);
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.pages_used, 3);
    ck_assert_uint_eq(st.pages_reserved, 2 * (uint64_t)m->n_layers - 2);

    ck_assert_int_eq(attnd_engine_session_create(e, 0, &b, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_append(e, &b, 2, 0, 1, ATTND_DTYPE_BF16, kv, &err), ATTND_OK);
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.pages_used, 4);
    ck_assert_uint_eq(st.sessions, 2);

    uint64_t freed = 0;
    ck_assert_int_eq(attnd_engine_session_close(e, &a, &freed, &err), ATTND_OK);
    ck_assert_uint_eq(freed, 3);
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.pages_used, 1);
    ck_assert_uint_eq(st.pages_reserved, 0);
    ck_assert_int_eq(attnd_engine_session_close(e, &b, &freed, &err), ATTND_OK);
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.pages_used, 0);
    ck_assert_uint_eq(st.sessions, 0);
    free(kv);
    attnd_engine_destroy(e);
}
END_TEST

/* No phase figures: a CPU engine's attend, or any failed one, leaves
 * every field of attnd_engine_phases 0 (whatever the workspace held). */
static int phases_zero(const attnd_engine_phases *p)
{
    return !p->host_ns && !p->append_ns && !p->enqueue_ns && !p->overlap_ns && !p->wait_ns &&
           !p->gpu_ns;
}

START_TEST(test_engine_errors_have_exact_codes_and_no_side_effects)
{
    /* pool of exactly 4 pages (tiny-mla page = 64 * 80 * 2 bytes) */
    attnd_engine *e = make_engine("tiny-mla", 4 * 64 * 80 * 2, 2, 64);
    attnd_session_id a, b, c, ghost;
    attnd_error err;
    uint64_t len;
    uint16_t *kv = calloc(400 * 80, 2);
    memset(&ghost, 0x5a, sizeof ghost);

    ck_assert_int_eq(attnd_engine_session_create(e, 1000, &a, &err),
                     ATTND_ERR_RESOURCE_EXHAUSTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "max_tokens"));
    ck_assert_int_eq(attnd_engine_session_create(e, 0, &a, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_create(e, 0, &b, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_create(e, 0, &c, &err), ATTND_ERR_RESOURCE_EXHAUSTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "max-sessions"));

    ck_assert_int_eq(attnd_engine_append(e, &a, 4, 0, 1, ATTND_DTYPE_BF16, kv, &err),
                     ATTND_ERR_OUT_OF_RANGE);
    ck_assert_ptr_nonnull(strstr(err.msg, "layer"));
    ck_assert_int_eq(attnd_engine_append(e, &ghost, 0, 0, 1, ATTND_DTYPE_BF16, kv, &err),
                     ATTND_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "session_id"));
    ck_assert_int_eq(attnd_engine_append(e, &a, 0, 0, 100, ATTND_DTYPE_BF16, kv, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_append(e, &a, 0, 99, 1, ATTND_DTYPE_BF16, kv, &err),
                     ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(err.msg, "start"));

    /* 2 pages used; 300 more tokens need 5: exhausted, nothing changes */
    ck_assert_int_eq(attnd_engine_append(e, &b, 1, 0, 300, ATTND_DTYPE_BF16, kv, &err),
                     ATTND_ERR_RESOURCE_EXHAUSTED);
    ck_assert_int_eq(attnd_engine_length(e, &b, 1, &len, &err), ATTND_OK);
    ck_assert_uint_eq(len, 0);

    /* attend: a needs no page (100 -> 101), b needs one; pool has 2 left */
    attnd_session_id ids[2] = {a, b};
    uint16_t q[2 * 8 * 80] = {0};
    attnd_attend_req req = {.layer = 0, .n_seqs = 2, .ids = ids, .q_tokens = 1,
                            .q_dtype = ATTND_DTYPE_BF16, .q = q,
                            .new_kv_dtype = ATTND_DTYPE_BF16, .new_kv = kv};
    attnd_engine_ws ws;
    const float *out, *lse;
    attnd_engine_ws_init(&ws);
    uint64_t pos[2] = {100, 1};
    req.positions = pos;
    ck_assert_int_eq(attnd_engine_attend(e, &req, &ws, &out, &lse, &err),
                     ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_ptr_nonnull(strstr(err.msg, "positions[1]"));
    ck_assert_int_eq(attnd_engine_length(e, &a, 0, &len, &err), ATTND_OK);
    ck_assert_uint_eq(len, 100); /* a's append did not happen either */

    attnd_session_id dup[2] = {a, a};
    req.ids = dup;
    req.positions = NULL;
    ck_assert_int_eq(attnd_engine_attend(e, &req, &ws, &out, &lse, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "session_ids[1]: duplicate"));
    attnd_session_id unk[2] = {a, ghost};
    req.ids = unk;
    memset(&ws.phases, 0xa5, sizeof ws.phases); /* a last call's figures */
    ck_assert_int_eq(attnd_engine_attend(e, &req, &ws, &out, &lse, &err), ATTND_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "session_ids[1]"));
    ck_assert(phases_zero(&ws.phases));
    req.ids = ids;
    req.layer = 9;
    ck_assert_int_eq(attnd_engine_attend(e, &req, &ws, &out, &lse, &err),
                     ATTND_ERR_OUT_OF_RANGE);

    /* fill the pool, then an attend that needs a page is exhausted and
     * appends to neither session */
    req.layer = 0;
    ck_assert_int_eq(attnd_engine_append(e, &b, 0, 0, 128, ATTND_DTYPE_BF16, kv, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_append(e, &a, 0, 100, 28, ATTND_DTYPE_BF16, kv, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_attend(e, &req, &ws, &out, &lse, &err),
                     ATTND_ERR_RESOURCE_EXHAUSTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "new_kv"));
    ck_assert_int_eq(attnd_engine_length(e, &a, 0, &len, &err), ATTND_OK);
    ck_assert_uint_eq(len, 128);
    ck_assert_int_eq(attnd_engine_length(e, &b, 0, &len, &err), ATTND_OK);
    ck_assert_uint_eq(len, 128);
    /* without new KV it still answers (a CPU engine: no phase figures) */
    req.new_kv = NULL;
    memset(&ws.phases, 0xa5, sizeof ws.phases);
    ck_assert_int_eq(attnd_engine_attend(e, &req, &ws, &out, &lse, &err), ATTND_OK);
    ck_assert(phases_zero(&ws.phases));

    ck_assert_int_eq(attnd_engine_session_close(e, &ghost, NULL, &err), ATTND_ERR_NOT_FOUND);
    attnd_engine_ws_cleanup(&ws);
    free(kv);
    attnd_engine_destroy(e);
}
END_TEST

/* Prefill in random chunks, then decode steps with new KV through
 * attnd_engine_attend, every output against the float64 reference. */
static void check_model_decode(const char *model, int32_t page_size, int32_t q_tokens)
{
    tu_rng r;
    tu_rng_init(&r, model);
    attnd_engine *e = make_engine(model, 64 << 20, 16, page_size);
    const attnd_model_spec *m = attnd_engine_model(e);
    enum { B = 3, STEPS = 4 };
    shadow sh[B];
    attnd_session_id ids[B];
    attnd_error err;
    int32_t hq = m->n_q_heads;

    for (int i = 0; i < B; i++) {
        ck_assert_int_eq(attnd_engine_session_create(e, 0, &ids[i], &err), ATTND_OK);
        shadow_init(&sh[i], m, 2000);
    }
    uint16_t *wire = malloc(sizeof(uint16_t) * 2000 * (size_t)sh[0].entry);
    for (int i = 0; i < B; i++)
        for (int32_t l = 0; l < m->n_layers; l++) {
            int64_t target = tu_int(&r, i == 0 ? 1000 : 1, i == 0 ? 1100 : 300);
            while (sh[i].len[l] < target) {
                int64_t n = tu_int(&r, 1, target - sh[i].len[l]);
                uint64_t start = (uint64_t)sh[i].len[l];
                shadow_draw(&sh[i], &r, l, n, wire);
                ck_assert_int_eq(attnd_engine_append(e, &ids[i], (uint32_t)l, start, (uint64_t)n,
                                                     ATTND_DTYPE_BF16, wire, &err), ATTND_OK);
            }
        }

    size_t qn = (size_t)B * q_tokens * hq * sh[0].dk;
    float *q = malloc(sizeof(float) * qn);
    double *q64 = malloc(sizeof(double) * qn);
    double *ref = malloc(sizeof(double) * (size_t)hq * sh[0].dv);
    double *rlse = malloc(sizeof(double) * (size_t)hq);
    attnd_engine_ws ws;
    attnd_engine_ws_init(&ws);
    double worst = 0.0;
    for (int step = 0; step < STEPS; step++)
        for (int32_t l = 0; l < m->n_layers; l++) {
            uint64_t pos[B];
            for (int i = 0; i < B; i++) {
                pos[i] = (uint64_t)sh[i].len[l];
                shadow_draw(&sh[i], &r, l, q_tokens, wire + (size_t)i * q_tokens * sh[0].entry);
            }
            for (size_t j = 0; j < qn; j++)
                q64[j] = q[j] = (float)tu_normal(&r);
            attnd_attend_req req = {.layer = (uint32_t)l, .n_seqs = B, .ids = ids,
                                    .q_tokens = q_tokens, .q_dtype = ATTND_DTYPE_F32, .q = q,
                                    .new_kv_dtype = ATTND_DTYPE_BF16, .new_kv = wire,
                                    .positions = pos, .want_lse = 1};
            const float *out, *lse;
            ck_assert_int_eq(attnd_engine_attend(e, &req, &ws, &out, &lse, &err), ATTND_OK);
            for (int i = 0; i < B; i++)
                for (int32_t s = 0; s < q_tokens; s++) {
                    size_t row = ((size_t)i * q_tokens + s) * hq;
                    int64_t vis = sh[i].len[l] - (q_tokens - 1 - s);
                    attnd_kernel_ref_attention_f64(hq, sh[i].hkv, sh[i].dk, sh[i].dv, vis, m->scale,
                                                   q64 + row * sh[i].dk, sh[i].k[l], sh[i].v[l],
                                                   ref, rlse);
                    for (int32_t h = 0; h < hq; h++) {
                        double er = tu_rel_err_f32(out + (row + h) * sh[i].dv,
                                                   ref + (size_t)h * sh[i].dv, (size_t)sh[i].dv);
                        worst = er > worst ? er : worst;
                        ck_assert_msg(er <= 1e-5, "%s layer %d seq %d head %d: rel err %g",
                                      model, l, i, h, er);
                        ck_assert(fabs(lse[row + h] - rlse[h]) <= 1e-4);
                    }
                }
        }
    fprintf(stderr, "%s S=%d: engine decode max rel err %.3g\n", model, q_tokens, worst);
    attnd_engine_stats st;
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.attend_calls, (uint64_t)STEPS * m->n_layers);
    attnd_engine_ws_cleanup(&ws);
    for (int i = 0; i < B; i++)
        shadow_free(&sh[i]);
    free(wire);
    free(q);
    free(q64);
    free(ref);
    free(rlse);
    attnd_engine_destroy(e);
}

START_TEST(test_mla_decode_through_engine_matches_reference)
{
    check_model_decode("tiny-mla", 64, 1);
    check_model_decode("tiny-mla", 16, 2);
}
END_TEST

START_TEST(test_gqa_decode_through_engine_matches_reference)
{
    check_model_decode("tiny-gqa", 64, 1);
    check_model_decode("tiny-gqa", 32, 3);
}
END_TEST

/* Many sessions created and half of them closed at random: the rest stay
 * reachable (the hash table's deletion keeps probe runs intact). */
START_TEST(test_session_table_survives_churn)
{
    tu_rng r;
    tu_rng_init(&r, "churn");
    enum { N = 700 };
    attnd_engine *e = make_engine("tiny-mla", 1 << 20, N, 64);
    attnd_session_id *ids = malloc(sizeof(attnd_session_id) * N);
    int *open = malloc(sizeof(int) * N);
    attnd_error err;
    uint64_t len;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            ck_assert_int_eq(attnd_engine_session_create(e, 0, &ids[i], &err), ATTND_OK);
            open[i] = 1;
        }
        for (int i = 0; i < N; i++)
            if (tu_unif(&r) < 0.5) {
                ck_assert_int_eq(attnd_engine_session_close(e, &ids[i], NULL, &err), ATTND_OK);
                open[i] = 0;
            }
        for (int i = 0; i < N; i++)
            ck_assert_int_eq(attnd_engine_length(e, &ids[i], 0, &len, &err),
                             open[i] ? ATTND_OK : ATTND_ERR_NOT_FOUND);
        for (int i = 0; i < N; i++)
            if (open[i])
                ck_assert_int_eq(attnd_engine_session_close(e, &ids[i], NULL, &err), ATTND_OK);
    }
    free(ids);
    free(open);
    attnd_engine_destroy(e);
}
END_TEST

typedef struct thread_arg {
    attnd_engine *e;
    uint64_t seed;
    int ok;
} thread_arg;

/* One thread: its own session, appends and attends, checking each output. */
static void *session_worker(void *p)
{
    thread_arg *a = p;
    tu_rng r = {.s = a->seed};
    const attnd_model_spec *m = attnd_engine_model(a->e);
    shadow sh;
    attnd_session_id id;
    attnd_error err;
    attnd_engine_ws ws;
    shadow_init(&sh, m, 600);
    attnd_engine_ws_init(&ws);
    uint16_t *wire = malloc(sizeof(uint16_t) * 600 * (size_t)sh.entry);
    float *q = malloc(sizeof(float) * (size_t)m->n_q_heads * sh.dk);
    double *q64 = malloc(sizeof(double) * (size_t)m->n_q_heads * sh.dk);
    double *ref = malloc(sizeof(double) * (size_t)m->n_q_heads * sh.dv);
    a->ok = attnd_engine_session_create(a->e, 0, &id, &err) == ATTND_OK;
    for (int step = 0; a->ok && step < 200; step++) {
        int32_t l = (int32_t)tu_int(&r, 0, m->n_layers - 1);
        if (sh.len[l] + 3 >= sh.cap)
            continue;
        uint64_t start = (uint64_t)sh.len[l];
        int64_t n = tu_int(&r, 1, 3);
        shadow_draw(&sh, &r, l, n, wire);
        a->ok &= attnd_engine_append(a->e, &id, (uint32_t)l, start, (uint64_t)n,
                                     ATTND_DTYPE_BF16, wire, &err) == ATTND_OK;
        for (int32_t j = 0; j < m->n_q_heads * sh.dk; j++)
            q64[j] = q[j] = (float)tu_normal(&r);
        attnd_attend_req req = {.layer = (uint32_t)l, .n_seqs = 1, .ids = &id, .q_tokens = 1,
                                .q_dtype = ATTND_DTYPE_F32, .q = q};
        const float *out, *lse;
        a->ok &= attnd_engine_attend(a->e, &req, &ws, &out, &lse, &err) == ATTND_OK;
        if (!a->ok)
            break;
        attnd_kernel_ref_attention_f64(m->n_q_heads, sh.hkv, sh.dk, sh.dv, sh.len[l], m->scale, q64,
                                       sh.k[l], sh.v[l], ref, NULL);
        for (int32_t h = 0; h < m->n_q_heads; h++)
            a->ok &= tu_rel_err_f32(out + (size_t)h * sh.dv, ref + (size_t)h * sh.dv,
                                    (size_t)sh.dv) <= 1e-5;
    }
    a->ok &= attnd_engine_session_close(a->e, &id, NULL, &err) == ATTND_OK;
    attnd_engine_ws_cleanup(&ws);
    shadow_free(&sh);
    free(wire);
    free(q);
    free(q64);
    free(ref);
    return NULL;
}

START_TEST(test_concurrent_sessions_on_threads_stay_correct)
{
    tu_rng r;
    tu_rng_init(&r, "threads");
    attnd_engine *e = make_engine("tiny-gqa", 32 << 20, 16, 16);
    enum { T = 6 };
    pthread_t th[T];
    thread_arg args[T];
    for (int i = 0; i < T; i++) {
        args[i] = (thread_arg){.e = e, .seed = tu_next(&r)};
        pthread_create(&th[i], NULL, session_worker, &args[i]);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        ck_assert_msg(args[i].ok, "thread %d saw a wrong output or error", i);
    }
    attnd_engine_stats st;
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.pages_used, 0);
    ck_assert_uint_eq(st.sessions, 0);
    attnd_engine_destroy(e);
}
END_TEST

/* The engine's kernel pool, at one thread (compute in the caller) and at
 * more threads than cores: concurrent attend calls take turns on it and
 * every output stays exact (split-KV itself is covered by the kernel
 * tests). A negative thread count is refused. */
START_TEST(test_attend_calls_share_one_kernel_pool_of_any_size)
{
    tu_rng r;
    tu_rng_init(&r, "kernel-pool");
    static const int32_t threads[] = {1, 5};
    for (int k = 0; k < 2; k++) {
        attnd_engine_config cfg = {.model = *attnd_model_find("tiny-gqa"),
                                   .page_size = 16,
                                   .kv_memory = 32 << 20,
                                   .max_sessions = 16,
                                   .kernel_threads = threads[k]};
        attnd_engine *e = NULL;
        attnd_error err;
        ck_assert_int_eq(attnd_engine_create(&cfg, &e, &err), ATTND_OK);
        enum { T = 4 };
        pthread_t th[T];
        thread_arg args[T];
        for (int i = 0; i < T; i++) {
            args[i] = (thread_arg){.e = e, .seed = tu_next(&r)};
            pthread_create(&th[i], NULL, session_worker, &args[i]);
        }
        for (int i = 0; i < T; i++) {
            pthread_join(th[i], NULL);
            ck_assert_msg(args[i].ok, "kernel_threads %d: thread %d saw a wrong output",
                          threads[k], i);
        }
        attnd_engine_destroy(e);
    }
    attnd_engine_config bad = {.model = *attnd_model_find("tiny-gqa"),
                               .page_size = 16,
                               .kv_memory = 1 << 20,
                               .max_sessions = 4,
                               .kernel_threads = -1};
    attnd_engine *e = NULL;
    attnd_error err;
    ck_assert_int_eq(attnd_engine_create(&bad, &e, &err), ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "kernel_threads"));
}
END_TEST

/* --kernel-path reaches the kernels: an engine made with a path runs it
 * (decode still exact: check_model_decode), an unknown name or one this
 * CPU cannot run fails creation with INVALID_ARGUMENT naming it. */
START_TEST(test_engine_kernel_path_selects_the_kernels_or_is_refused)
{
    static const char *const names[] = {"scalar", "avx2", "avx512", "avx1024"};
    for (int i = 0; i < 4; i++) {
        attnd_engine_config cfg = {.model = *attnd_model_find("tiny-gqa"),
                                   .page_size = 16,
                                   .kv_memory = 8 << 20,
                                   .max_sessions = 4};
        snprintf(cfg.kernel_path, sizeof cfg.kernel_path, "%s", names[i]);
        attnd_engine *e = NULL;
        attnd_error err;
        int runs = i < 3 && attnd_kernel_path_supported((attnd_kernel_path)i);
        attnd_status st = attnd_engine_create(&cfg, &e, &err);
        if (!runs) {
            ck_assert_int_eq(st, ATTND_ERR_INVALID_ARGUMENT);
            ck_assert_ptr_nonnull(strstr(err.msg, names[i]));
            ck_assert_ptr_null(e);
            continue;
        }
        ck_assert_int_eq(st, ATTND_OK);
        ck_assert_str_eq(attnd_kernel_path_name(), names[i]);
        attnd_engine_destroy(e);
        check_model_decode("tiny-gqa", 16, 1);
        ck_assert_str_eq(attnd_kernel_path_name(), names[i]);
    }
}
END_TEST

/* Appends racing the background prefault of the pool land intact: decode
 * still equals the reference. */
START_TEST(test_decode_is_exact_with_the_pool_prefaulted)
{
    g_prefault = 1;
    check_model_decode("tiny-mla", 16, 1);
    check_model_decode("tiny-gqa", 64, 2);
    g_prefault = 0;
}
END_TEST

START_TEST(test_presets_have_the_architecture_page_shapes)
{
    const attnd_model_spec *d = attnd_model_find("deepseek-v3");
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq(d->n_layers, 61);
    ck_assert_int_eq(d->n_q_heads, 128);
    ck_assert_int_eq(attnd_model_d_k(d), 576);
    ck_assert_int_eq(attnd_model_d_v(d), 512);
    ck_assert_float_eq_tol(d->scale, 0.1352338f, 1e-6f);
    const attnd_model_spec *k = attnd_model_find("kimi-k2");
    ck_assert_int_eq(k->n_q_heads, 64);
    const attnd_model_spec *l8 = attnd_model_find("llama3-8b");
    ck_assert_int_eq(attnd_model_kv_token_elems(l8), 2 * 8 * 128);
    const attnd_model_spec *l70 = attnd_model_find("llama3-70b");
    ck_assert_int_eq(l70->n_layers, 80);
    ck_assert_int_eq(l70->n_q_heads, 64);
    ck_assert_ptr_nonnull(attnd_model_find("tiny-mla"));
    ck_assert_ptr_nonnull(attnd_model_find("tiny-gqa"));
    ck_assert_int_eq(attnd_model_find("tiny-gqa6")->n_kv_heads, 6);
    ck_assert_int_eq(attnd_model_find("tiny-mla512")->d_latent, 512);
    ck_assert_ptr_null(attnd_model_find("gpt-5"));
    ck_assert_uint_eq(attnd_model_count(), 8);
}
END_TEST

static Suite *worker_suite(void)
{
    Suite *s = suite_create("worker");
    TCase *tc = tcase_create("engine");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_pool_accounting_follows_reservations_appends_and_close);
    tcase_add_test(tc, test_engine_errors_have_exact_codes_and_no_side_effects);
    tcase_add_test(tc, test_mla_decode_through_engine_matches_reference);
    tcase_add_test(tc, test_gqa_decode_through_engine_matches_reference);
    tcase_add_test(tc, test_session_table_survives_churn);
    tcase_add_test(tc, test_concurrent_sessions_on_threads_stay_correct);
    tcase_add_test(tc, test_attend_calls_share_one_kernel_pool_of_any_size);
    tcase_add_test(tc, test_presets_have_the_architecture_page_shapes);
    tcase_add_test(tc, test_decode_is_exact_with_the_pool_prefaulted);
    tcase_add_test(tc, test_engine_kernel_path_selects_the_kernels_or_is_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(worker_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
