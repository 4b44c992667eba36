/* Worker groups end to end: real attnd ranks on loopback (UCX between
 * them, gRPC to the client), each output compared with what a lone worker
 * (or, for TPLA, the float64 formula) gives for the very same requests.
 *
 * A "twin" sends identical, freshly random requests (seeded: ATTND_TEST_SEED
 * replays) to a group, leading each call from a different rank, and to the
 * reference; KV, queries and outputs are float32 and the KV is stored as
 * float32 (--kv-dtype f32), so exact modes must agree to float32 rounding:
 * max normwise relative error per (token, head) row <= 1e-5.
 */
#include <check.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "bad_inputs.h"
#include "group_testutil.h"
#include "testutil.h"

#define MAX_B 4
#define MAX_LAYERS 4
#define BOUND 1e-5

typedef struct twin {
    gt_group g;
    cu_server ref_srv;
    attnd_client *ref;        /* lone worker; NULL: compare with the TPLA formula */
    attnd_model_info m;
    uint32_t B;
    attnd_session_id ids_ref[MAX_B], ids_g[MAX_B];
    uint64_t len[MAX_B][MAX_LAYERS];
    float *hist[MAX_B][MAX_LAYERS]; /* every KV entry sent (TPLA reference) */
    size_t hist_cap[MAX_B][MAX_LAYERS];
    int tpla_n, tpla_rope_split;
    double tpla_mu;
    tu_rng rng;
    double max_err, max_lse_err;
    uint64_t calls;
} twin;

static void fill(twin *t, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(2.0 * tu_unif(&t->rng) - 1.0);
}

static void record(twin *t, uint32_t i, uint32_t l, const float *kv, uint64_t n)
{
    size_t e = t->m.kv_token_elems, need = (t->len[i][l] + n) * e;
    if (need > t->hist_cap[i][l]) {
        size_t cap = need * 2;
        t->hist[i][l] = realloc(t->hist[i][l], cap * sizeof(float));
        ck_assert_ptr_nonnull(t->hist[i][l]);
        t->hist_cap[i][l] = cap;
    }
    memcpy(t->hist[i][l] + t->len[i][l] * e, kv, n * e * sizeof(float));
    t->len[i][l] += n;
}

/* Start the group (flags shared by every rank) and, with_ref, the lone
 * worker (the same flags but --shard); open B sessions on each (group sessions created through rank
 * i mod N). */
static void twin_open(twin *t, int n, const char *const *flags, uint32_t B, int with_ref)
{
    attnd_error err;
    memset(t, 0, sizeof *t);
    tu_rng_init(&t->rng, "group test");
    ck_assert_int_eq(gt_group_start(&t->g, n, flags), 0);
    if (with_ref) {
        const char *ref_flags[16];
        int k = 0;
        for (int i = 0; flags[i] && k < 15; i++) /* group flags stop at --shard */
            if (strcmp(flags[i], "--shard") == 0)
                i++;
            else
                ref_flags[k++] = flags[i];
        ref_flags[k] = NULL;
        ck_assert_int_eq(cu_server_start(&t->ref_srv, ref_flags), 0);
        t->ref = gt_connect(&t->ref_srv);
        ck_assert_ptr_nonnull(t->ref);
    }
    t->B = B;
    for (uint32_t i = 0; i < B; i++) {
        attnd_error_clear(&err);
        attnd_status st = attnd_client_create_session(t->g.c[i % (uint32_t)n], NULL, 0,
                                                      &t->ids_g[i], &t->m, &err);
        ck_assert_msg(st == ATTND_OK, "group CreateSession: %s", err.msg);
        if (t->ref) {
            st = attnd_client_create_session(t->ref, NULL, 0, &t->ids_ref[i], NULL, &err);
            ck_assert_msg(st == ATTND_OK, "CreateSession: %s", err.msg);
        }
    }
    ck_assert_uint_le(t->m.n_layers, MAX_LAYERS);
}

static void twin_close(twin *t)
{
    for (uint32_t i = 0; i < MAX_B; i++)
        for (uint32_t l = 0; l < MAX_LAYERS; l++)
            free(t->hist[i][l]);
    if (t->ref) {
        attnd_client_destroy(t->ref);
        ck_assert_int_eq(cu_server_stop(&t->ref_srv), 0);
    }
    ck_assert_int_eq(gt_group_stop(&t->g), 0);
}

/* Prefill T tokens into every layer of every session, in chunks of 37 (so
 * chunks straddle pages), the group's AppendKV led by rank i+1 mod N. */
static void twin_prefill(twin *t, uint64_t T)
{
    const uint32_t e = t->m.kv_token_elems;
    float *kv = malloc(sizeof(float) * T * e);
    attnd_kv_chunk ch[256];
    attnd_error err;
    ck_assert_ptr_nonnull(kv);
    for (uint32_t i = 0; i < t->B; i++) {
        size_t n = 0;
        for (uint32_t l = 0; l < t->m.n_layers; l++) {
            fill(t, kv, T * e);
            for (uint64_t s = 0; s < T; s += 37) {
                uint32_t c = (uint32_t)(T - s < 37 ? T - s : 37);
                ck_assert_uint_lt(n, 256);
                ch[n++] = (attnd_kv_chunk){.layer = l, .start = t->len[i][l] + s,
                                           .n_tokens = c, .kv_token_elems = e,
                                           .dtype = ATTND_DTYPE_F32};
            }
            /* one call per layer: the chunk data is this layer's buffer */
            for (size_t k = 0; k < n; k++) {
                ch[k].data = kv + (ch[k].start - t->len[i][l]) * e;
                ch[k].session = t->ids_g[i];
            }
            size_t applied = 0;
            attnd_error_clear(&err);
            attnd_status st = attnd_client_append_kv(t->g.c[(i + 1) % (uint32_t)t->g.n], ch, n,
                                                     &applied, &err);
            ck_assert_msg(st == ATTND_OK && applied == n, "group AppendKV: %s", err.msg);
            if (t->ref) {
                for (size_t k = 0; k < n; k++)
                    ch[k].session = t->ids_ref[i];
                st = attnd_client_append_kv(t->ref, ch, n, &applied, &err);
                ck_assert_msg(st == ATTND_OK, "AppendKV: %s", err.msg);
            }
            record(t, i, l, kv, T);
            n = 0;
        }
    }
    free(kv);
}

static void fwht64(double *x, int n)
{
    for (int h = 1; h < n; h *= 2)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                double a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    for (int i = 0; i < n; i++)
        x[i] /= sqrt((double)n);
}

/* The TPLA formula in float64 for one query token: q [H][d_k] over the
 * first T entries of hist ([T][d_k]); out [H][d_c]. */
static void tpla_ref(const twin *t, const float *q, const float *hist, uint64_t T, double *out)
{
    const int H = (int)t->m.n_q_heads, dc = (int)t->m.d_latent, dr = (int)t->m.d_rope;
    const int dk = dc + dr, N = t->tpla_n, dcs = dc / N;
    const int drs = t->tpla_rope_split ? dr / N : dr;
    double *c = malloc(sizeof(double) * (T ? T : 1) * (size_t)dk), qr[1024], o[1024];
    double *p = malloc(sizeof(double) * (T ? T : 1));
    ck_assert(c && p && dk <= 1024);
    for (uint64_t s = 0; s < T; s++) {
        for (int d = 0; d < dk; d++)
            c[s * dk + d] = hist[s * dk + d];
        fwht64(c + s * dk, dc);
    }
    for (int h = 0; h < H; h++) {
        for (int d = 0; d < dk; d++)
            qr[d] = q[h * dk + d];
        fwht64(qr, dc);
        for (int r = 0; r < N; r++) {
            int r0 = dc + (t->tpla_rope_split ? r * drs : 0);
            double mx = -INFINITY, sum = 0.0;
            for (uint64_t s = 0; s < T; s++) {
                double a = 0.0, b = 0.0;
                for (int d = r * dcs; d < (r + 1) * dcs; d++)
                    a += qr[d] * c[s * dk + d];
                for (int d = r0; d < r0 + drs; d++)
                    b += qr[d] * c[s * dk + d];
                p[s] = t->m.scale * (t->tpla_mu * a + b);
                mx = p[s] > mx ? p[s] : mx;
            }
            for (int d = r * dcs; d < (r + 1) * dcs; d++)
                o[d] = 0.0;
            for (uint64_t s = 0; s < T; s++) {
                double w = exp(p[s] - mx);
                sum += w;
                for (int d = r * dcs; d < (r + 1) * dcs; d++)
                    o[d] += w * c[s * dk + d];
            }
            for (int d = r * dcs; d < (r + 1) * dcs; d++)
                o[d] = T ? o[d] / sum : 0.0;
        }
        fwht64(o, dc);
        for (int d = 0; d < dc; d++)
            out[h * dc + d] = o[d];
    }
    free(c);
    free(p);
}

/* One Attend of S query tokens for layer l on every session: the group
 * call led by rank `leader`, checked against the reference. */
static void twin_step(twin *t, uint32_t l, uint32_t S, int leader)
{
    const attnd_model_info *m = &t->m;
    const size_t B = t->B, H = m->n_q_heads, rows = B * S * H;
    float *q = malloc(sizeof(float) * rows * m->d_k);
    float *kv = malloc(sizeof(float) * B * S * m->kv_token_elems);
    float *out = malloc(sizeof(float) * rows * m->d_v), *lse = malloc(sizeof(float) * rows);
    float *rout = malloc(sizeof(float) * rows * m->d_v), *rlse = malloc(sizeof(float) * rows);
    uint64_t pos[MAX_B];
    attnd_error err;
    ck_assert(q && kv && out && lse && rout && rlse);
    fill(t, q, rows * m->d_k);
    fill(t, kv, B * S * m->kv_token_elems);
    for (uint32_t i = 0; i < B; i++)
        pos[i] = t->len[i][l];
    attnd_attend_args a = {
        .layer = l,
        .n_seqs = (uint32_t)B,
        .sessions = t->ids_g,
        .q = {ATTND_DTYPE_F32, 4, {(int64_t)B, S, (int64_t)H, m->d_k}, q},
        .positions = pos,
        .out = out,
        .out_capacity = sizeof(float) * rows * m->d_v,
        .lse = lse,
        .lse_capacity = rows,
    };
    if (m->kind == ATTND_ATTN_MLA)
        a.new_kv = (attnd_tensor){ATTND_DTYPE_F32, 3, {(int64_t)B, S, m->kv_token_elems}, kv};
    else
        a.new_kv = (attnd_tensor){ATTND_DTYPE_F32, 5,
                                  {(int64_t)B, S, 2, m->n_kv_heads, m->head_dim}, kv};
    attnd_error_clear(&err);
    attnd_status st = attnd_client_attend(t->g.c[leader], &a, &err);
    ck_assert_msg(st == ATTND_OK, "group Attend (layer %u, S %u, leader %d): %s", l, S, leader,
                  err.msg);
    for (uint32_t i = 0; i < B; i++)
        record(t, i, l, kv + (size_t)i * S * m->kv_token_elems, S);
    if (t->ref) {
        a.sessions = t->ids_ref;
        a.out = rout;
        a.lse = rlse;
        st = attnd_client_attend(t->ref, &a, &err);
        ck_assert_msg(st == ATTND_OK, "Attend: %s", err.msg);
        double e = gt_max_row_err(out, rout, rows, m->d_v);
        t->max_err = e > t->max_err ? e : t->max_err;
        for (size_t r = 0; r < rows; r++) {
            double d = fabs((double)lse[r] - rlse[r]) / fmax(1.0, fabs(rlse[r]));
            t->max_lse_err = d > t->max_lse_err ? d : t->max_lse_err;
        }
    } else {
        double *ref = malloc(sizeof(double) * H * m->d_v);
        ck_assert_ptr_nonnull(ref);
        for (uint32_t i = 0; i < B; i++)
            for (uint32_t s = 0; s < S; s++) {
                size_t row = (size_t)i * S + s;
                uint64_t vis = t->len[i][l] - (S - 1 - s);
                tpla_ref(t, q + row * H * m->d_k, t->hist[i][l], vis, ref);
                float *refs = malloc(sizeof(float) * H * m->d_v);
                ck_assert_ptr_nonnull(refs);
                for (size_t k = 0; k < H * m->d_v; k++)
                    refs[k] = (float)ref[k];
                double e = gt_max_row_err(out + row * H * m->d_v, refs, H, m->d_v);
                t->max_err = e > t->max_err ? e : t->max_err;
                free(refs);
            }
        free(ref);
    }
    t->calls++;
    free(q);
    free(kv);
    free(out);
    free(lse);
    free(rout);
    free(rlse);
}

/* prefill, then `steps` decode steps over every layer (every 10th with S =
 * 3 query tokens, causal over its new entries), leaders rotating. */
static void twin_run(twin *t, uint64_t prefill, int steps)
{
    twin_prefill(t, prefill);
    for (int k = 0; k < steps; k++)
        for (uint32_t l = 0; l < t->m.n_layers; l++)
            twin_step(t, l, k % 10 == 5 ? 3 : 1, (int)((k + l) % (uint32_t)t->g.n));
    fprintf(stderr, "  %llu Attend calls: max rel err %.3g, lse %.3g\n",
            (unsigned long long)t->calls, t->max_err, t->max_lse_err);
    ck_assert_msg(t->max_err <= BOUND, "max relative error %g > %g", t->max_err, BOUND);
    ck_assert_msg(t->max_lse_err <= BOUND, "max LSE error %g > %g", t->max_lse_err, BOUND);
}

static void run_exact(const char *model, const char *shard, int n)
{
    const char *flags[] = {"--model", model, "--kv-dtype", "f32", "--page-size", "8",
                           "--threads", "2", "--kernel-threads", "1", "--shard", shard, NULL};
    twin t;
    fprintf(stderr, "%s, %s sharding over %d ranks:\n", model, shard, n);
    twin_open(&t, n, flags, 3, 1);
    twin_run(&t, 45, 60);
    twin_close(&t);
}

START_TEST(test_sequence_sharding_over_2_ranks_equals_one_worker_mla)
{
    run_exact("tiny-mla", "sequence", 2);
}
END_TEST

START_TEST(test_sequence_sharding_over_3_ranks_equals_one_worker_mla)
{
    run_exact("tiny-mla", "sequence", 3);
}
END_TEST

START_TEST(test_sequence_sharding_over_2_ranks_equals_one_worker_gqa)
{
    run_exact("tiny-gqa", "sequence", 2);
}
END_TEST

START_TEST(test_sequence_sharding_over_3_ranks_equals_one_worker_gqa)
{
    run_exact("tiny-gqa", "sequence", 3);
}
END_TEST

START_TEST(test_head_sharding_over_2_ranks_equals_one_worker_gqa)
{
    run_exact("tiny-gqa", "head", 2);
}
END_TEST

START_TEST(test_head_sharding_over_3_ranks_equals_one_worker_gqa)
{
    run_exact("tiny-gqa6", "head", 3);
}
END_TEST

START_TEST(test_latent_sharding_on_one_rank_equals_exact_attention)
{
    run_exact("tiny-mla", "latent", 1);
}
END_TEST

static void run_tpla(int n, const char *rope, const char *mu)
{
    const char *flags[] = {"--model", "tiny-mla", "--kv-dtype", "f32", "--page-size", "8",
                           "--threads", "2", "--kernel-threads", "1", "--shard", "latent",
                           "--tpla-rope", rope, "--tpla-mu", mu, NULL};
    twin t;
    fprintf(stderr, "TPLA over %d ranks, rope %s, mu %s, against its float64 formula:\n", n,
            rope, mu);
    twin_open(&t, n, flags, 2, 0);
    t.tpla_n = n;
    t.tpla_rope_split = strcmp(rope, "split") == 0;
    t.tpla_mu = atof(mu);
    twin_run(&t, 40, 12);
    twin_close(&t);
}

START_TEST(test_latent_sharding_over_2_ranks_equals_the_tpla_formula)
{
    run_tpla(2, "replicate", "1");
}
END_TEST

START_TEST(test_latent_sharding_over_4_ranks_rope_split_equals_the_tpla_formula)
{
    run_tpla(4, "split", "1.5");
}
END_TEST

/* A NaN or an infinity in q, new_kv or an AppendKV chunk sent to a group:
 * the leader refuses it (INVALID_ARGUMENT naming the tensor and element)
 * before scattering anything, through any rank and both transports'
 * client, and the sessions decode on exactly (bad_inputs.c's runner checks
 * them against the float64 reference). */
START_TEST(test_non_finite_inputs_to_a_group_are_refused_and_change_nothing)
{
    const char *flags[] = {"--model", "tiny-mla", "--threads", "2", "--kernel-threads", "1",
                           NULL};
    static const char *const cases[] = {"q_nonfinite", "new_kv_nonfinite", "append_nonfinite"};
    static const uint32_t chunks[] = {13, 0};
    const bad_limits none = {0, 0, 0};
    gt_group g;
    cu_seqs s;
    attnd_error err;
    char why[512] = "";

    ck_assert_int_eq(gt_group_start(&g, 2, flags), 0);
    attnd_error_clear(&err);
    ck_assert_int_eq(cu_seqs_open(&s, g.c[1], 2, ATTND_DTYPE_BF16, 0, &err), ATTND_OK);
    ck_assert_int_eq(cu_prefill(&s, 0, 37, chunks, &err), ATTND_OK);
    ck_assert_int_eq(cu_prefill(&s, 1, 20, chunks, &err), ATTND_OK);
    for (size_t i = 0; i < 3; i++) {
        s.c = g.c[i % 2]; /* led by either rank */
        ck_assert_msg(bad_case_run(bad_case_find(cases[i]), &s, &none, why, sizeof why) == 0,
                      "%s", why);
        attnd_refcheck_result res = {0};
        ck_assert_int_eq(cu_decode_step(&s, &res, &err), ATTND_OK);
        ck_assert_msg(res.max_err <= cu_bound(s.dt), "max error %g", res.max_err);
        ck_assert_uint_eq(res.rows, (uint64_t)s.m.n_layers * s.n * s.m.n_q_heads);
    }
    s.c = g.c[1];
    cu_seqs_close(&s);
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

/* Sessions are created and closed on every rank: each rank's engine
 * counts them. */
START_TEST(test_sessions_are_created_and_closed_on_every_rank)
{
    const char *flags[] = {"--model", "tiny-gqa", "--threads", "2", "--kernel-threads", "1",
                           NULL};
    gt_group g;
    attnd_session_id id[2];
    attnd_stats st;
    attnd_error err;
    ck_assert_int_eq(gt_group_start(&g, 3, flags), 0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(attnd_client_create_session(g.c[i], NULL, 64, &id[i], NULL, &err), 0);
    for (int r = 0; r < 3; r++) {
        ck_assert_int_eq(attnd_client_get_stats(g.c[r], &st, NULL, &err), 0);
        ck_assert_uint_eq(st.sessions, 2);
        ck_assert_uint_eq(st.group_size, 3);
        ck_assert_uint_eq(st.group_rank, (uint32_t)r);
        ck_assert_uint_eq(st.group_connected, 2);
        ck_assert_str_eq(st.group_missing, "");
        ck_assert_str_eq(st.group_mode, "sequence");
    }
    ck_assert_int_eq(attnd_client_close_session(g.c[2], &id[0], &err), 0);
    for (int r = 0; r < 3; r++) {
        ck_assert_int_eq(attnd_client_get_stats(g.c[r], &st, NULL, &err), 0);
        ck_assert_uint_eq(st.sessions, 1);
    }
    /* closing it again, through another rank: NOT_FOUND */
    attnd_status s = attnd_client_close_session(g.c[1], &id[0], &err);
    cu_assert_fails(s, err, ATTND_ERR_NOT_FOUND, "session_id");
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

/* The robustness issue's case on a group (sequence mode, 2 ranks, pages
 * of 8 tokens, so the first chunk's 12 tokens span both ranks): chunk 1
 * at 0, chunk 2 at 99 fails FAILED_PRECONDITION and no rank keeps
 * anything (no page used anywhere); the whole stream, corrected, then goes
 * through (led by the other rank), and decode over it matches a lone
 * worker sent the same. */
START_TEST(test_group_append_kv_stream_failing_midway_applies_nothing_on_any_rank)
{
    const char *flags[] = {"--model", "tiny-mla", "--kv-dtype", "f32", "--page-size", "8",
                           "--threads", "2", "--kernel-threads", "1", "--shard", "sequence",
                           NULL};
    twin t;
    attnd_error err;
    attnd_stats st;
    size_t applied = 99;
    twin_open(&t, 2, flags, 1, 1);
    const uint32_t e = t.m.kv_token_elems;
    float *kv = malloc(sizeof(float) * 20 * e);
    ck_assert_ptr_nonnull(kv);
    fill(&t, kv, 20 * (size_t)e);
    attnd_kv_chunk ch[2] = {
        {.session = t.ids_g[0], .layer = 0, .start = 0, .n_tokens = 12, .kv_token_elems = e,
         .dtype = ATTND_DTYPE_F32, .data = kv},
        {.session = t.ids_g[0], .layer = 0, .start = 99, .n_tokens = 8, .kv_token_elems = e,
         .dtype = ATTND_DTYPE_F32, .data = kv + 12 * (size_t)e},
    };
    attnd_error_clear(&err);
    cu_assert_fails(attnd_client_append_kv(t.g.c[0], ch, 2, &applied, &err), err,
                    ATTND_ERR_FAILED_PRECONDITION, "start");
    ck_assert_uint_eq(applied, 0);
    for (int r = 0; r < 2; r++) {
        ck_assert_int_eq(attnd_client_get_stats(t.g.c[r], &st, NULL, &err), 0);
        ck_assert_uint_eq(st.pages_used, 0);
        ck_assert_uint_eq(st.tokens_appended, 0);
    }

    ch[1].start = 12;
    ck_assert_msg(attnd_client_append_kv(t.g.c[1], ch, 2, &applied, &err) == ATTND_OK,
                  "group AppendKV: %s", err.msg);
    ck_assert_uint_eq(applied, 2);
    ch[0].session = ch[1].session = t.ids_ref[0];
    ck_assert_msg(attnd_client_append_kv(t.ref, ch, 2, NULL, &err) == ATTND_OK, "AppendKV: %s",
                  err.msg);
    record(&t, 0, 0, kv, 20);
    free(kv);
    twin_run(&t, 5, 8);
    twin_close(&t);
}
END_TEST

/* tiny-gqa, sequence mode over 2 ranks, pages of 8 tokens (8 x 128 bf16 =
 * 2 KiB a page, 20 pages a rank; global page p lives on rank p mod 2).
 * `other` holds one page on rank 0; `id` is appended one page at a time
 * until rank 0 is full: pages 0..37 fit (19 on each rank), page 38 (rank
 * 0's) does not. */
enum { FILL_T = 8, FILL_E = 128 };
static uint16_t fill_kv[2 * FILL_T * FILL_E];

static void fill_rank0(gt_group *g, attnd_session_id *id, attnd_session_id *other)
{
    const char *flags[] = {"--model", "tiny-gqa", "--shard", "sequence", "--page-size", "8",
                           "--kv-memory", "40960", "--threads", "2", "--kernel-threads", "1",
                           NULL};
    attnd_error err;
    attnd_status st = ATTND_OK;
    uint64_t start = 0;

    for (size_t i = 0; i < 2 * FILL_T * FILL_E; i++)
        fill_kv[i] = 0x3f80; /* bf16 1.0 */
    ck_assert_int_eq(gt_group_start(g, 2, flags), 0);
    ck_assert_int_eq(attnd_client_create_session(g->c[0], NULL, 0, other, NULL, &err), 0);
    ck_assert_int_eq(attnd_client_create_session(g->c[0], NULL, 0, id, NULL, &err), 0);
    attnd_kv_chunk ch = {.session = *other, .layer = 1, .start = 0, .n_tokens = FILL_T,
                         .kv_token_elems = FILL_E, .dtype = ATTND_DTYPE_BF16, .data = fill_kv};
    ck_assert_int_eq(attnd_client_append_kv(g->c[0], &ch, 1, NULL, &err), 0);
    ch.session = *id;
    ch.layer = 0;
    for (int k = 0; k < 64; k++) {
        ch.start = start;
        if ((st = attnd_client_append_kv(g->c[0], &ch, 1, NULL, &err)))
            break;
        start += FILL_T;
    }
    cu_assert_fails(st, err, ATTND_ERR_RESOURCE_EXHAUSTED, "");
    ck_assert_uint_eq(start, 38 * FILL_T);
}

static uint64_t rank_pages_used(gt_group *g, int r)
{
    attnd_stats st;
    attnd_error err;
    ck_assert_msg(attnd_client_get_stats(g->c[r], &st, NULL, &err) == 0, "%s", err.msg);
    return st.pages_used;
}

/* An AppendKV chunk that fits on one rank and not on the other (pages 38
 * and 39: rank 0 is full, rank 1 stages page 39) fails RESOURCE_EXHAUSTED
 * and applies nothing on either: rank 1 gives its page back, and the
 * session goes on (no DATA_LOSS). */
START_TEST(test_group_append_kv_refused_on_one_rank_applies_nothing_on_any)
{
    gt_group g;
    attnd_session_id id, other;
    attnd_error err;
    fill_rank0(&g, &id, &other);
    ck_assert_uint_eq(rank_pages_used(&g, 0), 20);
    ck_assert_uint_eq(rank_pages_used(&g, 1), 19);

    for (int r = 0; r < 2; r++) {
        attnd_kv_chunk ch = {.session = id, .layer = 0, .start = 38 * FILL_T,
                             .n_tokens = 2 * FILL_T, .kv_token_elems = FILL_E,
                             .dtype = ATTND_DTYPE_BF16, .data = fill_kv};
        attnd_error_clear(&err);
        cu_assert_fails(attnd_client_append_kv(g.c[r], &ch, 1, NULL, &err), err,
                        ATTND_ERR_RESOURCE_EXHAUSTED, "KV memory exhausted");
        ck_assert_uint_eq(rank_pages_used(&g, 0), 20);
        ck_assert_uint_eq(rank_pages_used(&g, 1), 19);
    }
    /* the session is whole: with `other` closed, page 38 fits, at the
     * length every rank still agrees on */
    attnd_kv_chunk ch = {.session = id, .layer = 0, .start = 38 * FILL_T, .n_tokens = FILL_T,
                         .kv_token_elems = FILL_E, .dtype = ATTND_DTYPE_BF16, .data = fill_kv};
    ck_assert_int_eq(attnd_client_close_session(g.c[0], &other, &err), 0);
    ck_assert_msg(attnd_client_append_kv(g.c[1], &ch, 1, NULL, &err) == ATTND_OK, "%s",
                  err.msg);
    ck_assert_uint_eq(rank_pages_used(&g, 0), 20);
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

/* An Attend with new KV that fails on some ranks only (its token's page is
 * rank 0's, which is full; rank 1 appends nothing and succeeds) leaves the
 * shards disagreeing: that call answers its own error, every later call
 * naming the session DATA_LOSS through any rank, and the session can
 * still be closed; other sessions are untouched. */
START_TEST(test_partly_failed_attend_with_new_kv_marks_the_session_data_loss)
{
    gt_group g;
    attnd_session_id id, other;
    attnd_error err;
    float q[8 * 32], out[8 * 32];
    fill_rank0(&g, &id, &other);

    uint64_t pos = 38 * FILL_T;
    attnd_rng_fill(&(attnd_rng){7}, ATTND_DTYPE_F32, q, 8 * 32);
    attnd_attend_args a = {.layer = 0, .n_seqs = 1, .sessions = &id,
                           .q = {ATTND_DTYPE_F32, 3, {1, 8, 32}, q},
                           .new_kv = {ATTND_DTYPE_BF16, 4, {1, 2, 2, 32}, fill_kv},
                           .positions = &pos, .out = out, .out_capacity = sizeof out};
    attnd_error_clear(&err);
    cu_assert_fails(attnd_client_attend(g.c[0], &a, &err), err, ATTND_ERR_RESOURCE_EXHAUSTED,
                    "");
    attnd_kv_chunk ch = {.session = id, .layer = 0, .start = pos, .n_tokens = FILL_T,
                         .kv_token_elems = FILL_E, .dtype = ATTND_DTYPE_BF16, .data = fill_kv};
    for (int r = 0; r < 2; r++) {
        attnd_status st = attnd_client_append_kv(g.c[r], &ch, 1, NULL, &err);
        cu_assert_fails(st, err, ATTND_ERR_DATA_LOSS, "session_id");
        ck_assert_ptr_nonnull(strstr(err.msg, "no longer agree"));
    }
    /* the other session still works, and closing the broken one frees it */
    ch.session = other;
    ch.layer = 1;
    ch.start = FILL_T;
    ck_assert_int_eq(attnd_client_append_kv(g.c[1], &ch, 1, NULL, &err), 0);
    ck_assert_int_eq(attnd_client_close_session(g.c[1], &id, &err), 0);
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

/* A rank dies mid-run: the next Attend fails UNAVAILABLE (not a hang, not
 * the client's deadline), the others stay SERVING and report the missing
 * rank; when it comes back (empty) the group reconnects, old sessions
 * answer DATA_LOSS and new ones work (outputs checked). */
START_TEST(test_killed_rank_gives_unavailable_then_data_loss_after_restart)
{
    const char *flags[] = {"--model", "tiny-gqa", "--kv-dtype", "f32", "--page-size", "8",
                           "--threads", "2", "--kernel-threads", "1", "--group-timeout-ms",
                           "3000", "--shard", "sequence", NULL};
    twin t;
    attnd_error err;
    attnd_stats st;
    int serving = 0;
    twin_open(&t, 3, flags, 2, 1);
    twin_run(&t, 30, 3);
    gt_rank_kill(&t.g, 2);

    /* an Attend on the group now: UNAVAILABLE naming the rank */
    float q[8 * 32], out[8 * 32];
    attnd_rng_fill(&(attnd_rng){42}, ATTND_DTYPE_F32, q, 8 * 32);
    attnd_attend_args a = {.layer = 0, .n_seqs = 1, .sessions = t.ids_g,
                           .q = {ATTND_DTYPE_F32, 3, {1, 8, 32}, q},
                           .out = out, .out_capacity = sizeof out};
    attnd_error_clear(&err);
    attnd_status s = attnd_client_attend(t.g.c[0], &a, &err);
    cu_assert_fails(s, err, ATTND_ERR_UNAVAILABLE, "rank 2");
    for (int r = 0; r < 2; r++) {
        ck_assert_int_eq(attnd_client_health(t.g.c[r], "", &serving, &err), 0);
        ck_assert_int_eq(serving, 1);
    }
    /* the group as a whole is not: rank 0 knows rank 2 is gone */
    ck_assert_int_eq(attnd_client_health(t.g.c[0], "attnd.v1.Group", &serving, &err), 0);
    ck_assert_int_eq(serving, 0);
    ck_assert_int_eq(attnd_client_get_stats(t.g.c[0], &st, NULL, &err), 0);
    ck_assert_str_eq(st.group_missing, "2");
    ck_assert_uint_ge(st.group_peer_failures, 1);

    /* it comes back empty: reconnect, DATA_LOSS for the old sessions */
    ck_assert_int_eq(gt_rank_start(&t.g, 2), 0);
    for (int r = 0; r < 3; r++)
        ck_assert_int_eq(gt_wait_connected(&t.g, r, 2), 0);
    ck_assert_int_eq(attnd_client_health(t.g.c[0], "attnd.v1.Group", &serving, &err), 0);
    ck_assert_int_eq(serving, 1);
    s = attnd_client_attend(t.g.c[1], &a, &err);
    cu_assert_fails(s, err, ATTND_ERR_DATA_LOSS, "rank 2");

    /* new sessions work and match the lone worker */
    for (uint32_t i = 0; i < t.B; i++) {
        ck_assert_int_eq(attnd_client_create_session(t.g.c[2], NULL, 0, &t.ids_g[i], NULL,
                                                     &err), 0);
        ck_assert_int_eq(attnd_client_create_session(t.ref, NULL, 0, &t.ids_ref[i], NULL,
                                                     &err), 0);
        for (uint32_t l = 0; l < MAX_LAYERS; l++)
            t.len[i][l] = 0;
    }
    t.max_err = t.max_lse_err = 0;
    twin_run(&t, 20, 3);
    twin_close(&t);
}
END_TEST

/* A peer that hangs (SIGSTOP: its connection stays open, nothing answers)
 * makes the call fail UNAVAILABLE before the client's own 2 s deadline
 * (the group's timeout is 10 s: the leader follows the call's deadline);
 * once it runs again the group reconnects and goes on exactly. */
START_TEST(test_hung_peer_gives_unavailable_within_the_call_deadline)
{
    const char *flags[] = {"--model", "tiny-mla", "--kv-dtype", "f32", "--page-size", "8",
                           "--threads", "2", "--kernel-threads", "1", "--shard", "sequence",
                           NULL};
    attnd_client_options o;
    attnd_client *c = NULL;
    attnd_error err;
    twin t;
    twin_open(&t, 2, flags, 2, 1);
    twin_run(&t, 20, 2);
    attnd_client_options_init(&o);
    o.deadline_ms = 2000;
    ck_assert_int_eq(attnd_client_connect(t.g.rank[0].target, &o, &c, &err), ATTND_OK);
    kill(t.g.rank[1].pid, SIGSTOP);
    int wst = 0; /* it is our child: wait until it has really stopped */
    ck_assert_int_eq(waitpid(t.g.rank[1].pid, &wst, WUNTRACED), t.g.rank[1].pid);
    ck_assert(WIFSTOPPED(wst));
    float q[8 * 80], out[8 * 64];
    attnd_rng_fill(&(attnd_rng){7}, ATTND_DTYPE_F32, q, 8 * 80);
    attnd_attend_args a = {.layer = 1, .n_seqs = 1, .sessions = t.ids_g,
                           .q = {ATTND_DTYPE_F32, 3, {1, 8, 80}, q},
                           .out = out, .out_capacity = sizeof out};
    attnd_status s = attnd_client_attend(c, &a, &err);
    kill(t.g.rank[1].pid, SIGCONT);
    cu_assert_fails(s, err, ATTND_ERR_UNAVAILABLE, "rank 1");
    attnd_client_destroy(c);
    for (int r = 0; r < 2; r++)
        ck_assert_int_eq(gt_wait_connected(&t.g, r, 1), 0);
    t.max_err = t.max_lse_err = 0;
    twin_run(&t, 5, 3);
    twin_close(&t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("group");
    TCase *tc = tcase_create("group");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_sessions_are_created_and_closed_on_every_rank);
    tcase_add_test(tc, test_sequence_sharding_over_2_ranks_equals_one_worker_mla);
    tcase_add_test(tc, test_sequence_sharding_over_3_ranks_equals_one_worker_mla);
    tcase_add_test(tc, test_sequence_sharding_over_2_ranks_equals_one_worker_gqa);
    tcase_add_test(tc, test_sequence_sharding_over_3_ranks_equals_one_worker_gqa);
    tcase_add_test(tc, test_head_sharding_over_2_ranks_equals_one_worker_gqa);
    tcase_add_test(tc, test_head_sharding_over_3_ranks_equals_one_worker_gqa);
    tcase_add_test(tc, test_group_append_kv_stream_failing_midway_applies_nothing_on_any_rank);
    tcase_add_test(tc, test_group_append_kv_refused_on_one_rank_applies_nothing_on_any);
    tcase_add_test(tc, test_partly_failed_attend_with_new_kv_marks_the_session_data_loss);
    tcase_add_test(tc, test_latent_sharding_on_one_rank_equals_exact_attention);
    tcase_add_test(tc, test_latent_sharding_over_2_ranks_equals_the_tpla_formula);
    tcase_add_test(tc, test_latent_sharding_over_4_ranks_rope_split_equals_the_tpla_formula);
    tcase_add_test(tc, test_killed_rank_gives_unavailable_then_data_loss_after_restart);
    tcase_add_test(tc, test_hung_peer_gives_unavailable_within_the_call_deadline);
    suite_add_tcase(s, tc);
    /* its own case: CTest runs it again with Attend over UCX */
    TCase *nf = tcase_create("nonfinite");
    tcase_set_timeout(nf, 300);
    tcase_add_test(nf, test_non_finite_inputs_to_a_group_are_refused_and_change_nothing);
    suite_add_tcase(s, nf);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
