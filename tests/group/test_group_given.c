/* Given indices and return_pages on worker groups (worker/group_given.c):
 * a group's given-pages and given-tokens layers attend exactly the pages or
 * tokens the caller names (plus those of the newest query tokens), checked
 * against float64 attention over exactly those tokens, under sequence
 * sharding (each rank its part, LSE-merged) and head sharding (each rank
 * its KV heads' lists); the pages a topk-pages layer reports, given back to
 * a given-pages layer, reproduce its output; bad indices are
 * INVALID_ARGUMENT naming the field with the lone worker's message, and
 * the group keeps serving (nothing was appended anywhere). Real rank
 * processes on loopback; tiny-gqa with float32 KV, random data per run. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "group_testutil.h"

#define B 2
#define L_MAX 4
#define CAP 2048

typedef struct fx {
    gt_group g;
    attnd_model_info m;
    attnd_session_id id[B];
    float *kv[B][L_MAX]; /* [CAP][kv_token_elems]: what each layer holds */
    uint64_t len[B][L_MAX];
    uint64_t rng;
} fx;

static float unif(fx *f)
{
    f->rng ^= f->rng >> 12, f->rng ^= f->rng << 25, f->rng ^= f->rng >> 27;
    return (float)((double)((f->rng * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0) * 2 - 1;
}

static uint32_t pick(fx *f, uint32_t n)
{
    return (uint32_t)((unif(f) + 1.0f) * 0.5f * (float)n) % n;
}

/* n ranks with `flags`; B sessions with policy pol and rules. */
static void fx_open(fx *f, int n, const char *const *flags, const attnd_sparse_policy *pol,
                    const attnd_sparse_rule *rules, uint32_t n_rules)
{
    attnd_error err;
    memset(f, 0, sizeof *f);
    /* fresh data per run; ATTND_TEST_SEED replays one */
    const char *seed = getenv("ATTND_TEST_SEED");
    f->rng = seed ? strtoull(seed, NULL, 10) : 0x9E3779B97F4A7C15ull ^ (uint64_t)time(NULL);
    fprintf(stderr, "[group given] ATTND_TEST_SEED=%llu\n", (unsigned long long)f->rng);
    ck_assert_int_eq(gt_group_start(&f->g, n, flags), 0);
    for (int i = 0; i < B; i++)
        ck_assert_msg(attnd_client_create_session_policy(f->g.c[0], "", CAP, pol, rules, n_rules,
                                                         &f->id[i], &f->m, &err) == ATTND_OK,
                      "%s", err.msg);
    ck_assert_int_le(f->m.n_layers, L_MAX);
    for (int i = 0; i < B; i++)
        for (uint32_t l = 0; l < f->m.n_layers; l++)
            f->kv[i][l] = malloc(sizeof(float) * CAP * f->m.kv_token_elems);
}

static void fx_close(fx *f)
{
    for (int i = 0; i < B; i++)
        for (uint32_t l = 0; l < f->m.n_layers; l++)
            free(f->kv[i][l]);
    ck_assert_int_eq(gt_group_stop(&f->g), 0);
}

/* T random tokens into every layer (same_01: layer 1 gets layer 0's). */
static void fx_prefill(fx *f, uint32_t T, int same_01)
{
    const uint32_t e = f->m.kv_token_elems;
    attnd_error err;
    for (int i = 0; i < B; i++)
        for (uint32_t l = 0; l < f->m.n_layers; l++) {
            float *kv = f->kv[i][l] + f->len[i][l] * e;
            for (size_t k = 0; k < (size_t)T * e; k++)
                kv[k] = same_01 && l == 1 ? f->kv[i][0][f->len[i][l] * e + k] : unif(f);
            attnd_kv_chunk ch = {.session = f->id[i], .layer = l, .start = f->len[i][l],
                                 .n_tokens = T, .kv_token_elems = e, .dtype = ATTND_DTYPE_F32,
                                 .data = kv};
            ck_assert_msg(attnd_client_append_kv(f->g.c[(i + l) % f->g.n], &ch, 1, NULL, &err) ==
                              ATTND_OK, "%s", err.msg);
            f->len[i][l] += T;
        }
}

/* The tokens (session i, layer l, KV head group) attends, ascending:
 * pages (or tokens) listed plus those of the newest S tokens (the layer
 * holds f->len tokens, new ones included). */
static int64_t attended(const fx *f, int i, uint32_t l, int S, int tokens, const uint64_t *v,
                        uint32_t nv, int64_t *out)
{
    const int64_t P = f->m.page_size, L = (int64_t)f->len[i][l];
    const int64_t newest = L < S ? L : S;
    int64_t n = 0;
    if (tokens) {
        for (uint32_t j = 0; j < nv && (int64_t)v[j] < L - newest; j++)
            out[n++] = (int64_t)v[j];
        for (int64_t t = L - newest; t < L; t++)
            out[n++] = t;
        return n;
    }
    const int64_t tail0 = (L - newest) / P, np = (L + P - 1) / P;
    for (uint32_t j = 0; j < nv && (int64_t)v[j] < tail0; j++)
        for (int64_t t = (int64_t)v[j] * P; t < ((int64_t)v[j] + 1) * P; t++)
            out[n++] = t;
    for (int64_t t = tail0 * P; t < np * P && t < L; t++)
        out[n++] = t;
    return n;
}

/* What a lone worker reports for that list: the pages (or tokens)
 * attended, ascending. */
static int64_t reported(const fx *f, int i, uint32_t l, int S, int tokens, const uint64_t *v,
                        uint32_t nv, uint64_t *out)
{
    const int64_t P = f->m.page_size, L = (int64_t)f->len[i][l];
    const int64_t newest = L < S ? L : S;
    const int64_t cut = tokens ? L - newest : (L - newest) / P, end = tokens ? L : (L + P - 1) / P;
    int64_t n = 0;
    for (uint32_t j = 0; j < nv && (int64_t)v[j] < cut; j++)
        out[n++] = v[j];
    for (int64_t x = cut; x < end; x++)
        out[n++] = (uint64_t)x;
    return n;
}

/* Float64 attention of query row q (head h of session i, layer l) over
 * tokens tok[0..n) below `upto`; its relative error against got. */
static double ref_err(const fx *f, int i, uint32_t l, uint32_t h, const float *q,
                      const int64_t *tok, int64_t n, int64_t upto, const float *got)
{
    const uint32_t D = f->m.head_dim, Hkv = f->m.n_kv_heads, kvh = h / (f->m.n_q_heads / Hkv);
    const float *kv = f->kv[i][l];
    const size_t e = f->m.kv_token_elems;
    double mx = -INFINITY, sum = 0, o[256] = {0}, *s = malloc(sizeof(double) * (size_t)(n + 1));
    for (int64_t j = 0; j < n; j++) {
        s[j] = -INFINITY;
        if (tok[j] >= upto)
            continue;
        const float *k = kv + (size_t)tok[j] * e + (size_t)kvh * D;
        double d = 0;
        for (uint32_t c = 0; c < D; c++)
            d += (double)q[c] * k[c];
        s[j] = d * f->m.scale;
        mx = s[j] > mx ? s[j] : mx;
    }
    for (int64_t j = 0; j < n; j++) {
        if (tok[j] >= upto)
            continue;
        double p = exp(s[j] - mx);
        const float *vv = kv + (size_t)tok[j] * e + (size_t)(Hkv + kvh) * D;
        sum += p;
        for (uint32_t c = 0; c < D; c++)
            o[c] += p * vv[c];
    }
    double num = 0, den = 0;
    for (uint32_t c = 0; c < D; c++) {
        double r = sum > 0 ? o[c] / sum : 0;
        num = fmax(num, fabs((double)got[c] - r));
        den = fmax(den, fabs(r));
    }
    free(s);
    return den > 0 ? num / den : num;
}

/* One Attend of layer l through rank `leader`: S query tokens with S new
 * entries (new_kv) or none, the given lists (gg 0: none), return_pages
 * into *sp when sp->return_pages. out [B][S][Hq][D]. */
static attnd_status fx_attend(fx *f, uint32_t l, int S, int new_kv, int leader, const float *q,
                              attnd_sparse_args *sp, float *out, attnd_error *err)
{
    const attnd_model_info *m = &f->m;
    const size_t rows = (size_t)B * S * m->n_q_heads, e = m->kv_token_elems;
    float *kv = malloc(sizeof(float) * B * S * e);
    uint64_t pos[B];
    for (int i = 0; i < B; i++) {
        pos[i] = f->len[i][l];
        for (size_t k = 0; k < (size_t)S * e; k++)
            kv[i * S * e + k] = unif(f);
    }
    attnd_attend_args a = {
        .layer = l, .n_seqs = B, .sessions = f->id,
        .q = {ATTND_DTYPE_F32, 4, {B, S, m->n_q_heads, m->d_k}, q},
        .out = out, .out_capacity = sizeof(float) * rows * m->d_v,
    };
    if (new_kv) {
        a.new_kv = (attnd_tensor){ATTND_DTYPE_F32, 5, {B, S, 2, m->n_kv_heads, m->head_dim}, kv};
        a.positions = pos;
    }
    attnd_status st = attnd_client_attend_sparse(f->g.c[leader], &a, sp, err);
    if (st == ATTND_OK && new_kv)
        for (int i = 0; i < B; i++) {
            memcpy(f->kv[i][l] + f->len[i][l] * e, kv + i * S * e, sizeof(float) * S * e);
            f->len[i][l] += (uint64_t)S;
        }
    free(kv);
    return st;
}

/* Worst error of out against float64 over the given lists (gg lists per
 * session in indptr / idx; tokens: token lists). */
static double check_out(const fx *f, uint32_t l, int S, const float *q, const float *out,
                        uint32_t gg, const uint32_t *indptr, const uint64_t *idx, int tokens)
{
    const attnd_model_info *m = &f->m;
    const uint32_t per = m->n_q_heads / m->n_kv_heads;
    int64_t *tok = malloc(sizeof(int64_t) * CAP);
    double worst = 0;
    for (int i = 0; i < B; i++)
        for (uint32_t h = 0; h < m->n_q_heads; h++) {
            uint32_t k = (uint32_t)i * gg + (gg > 1 ? h / per : 0);
            int64_t n = attended(f, i, l, S, tokens, idx + indptr[k], indptr[k + 1] - indptr[k],
                                 tok);
            for (int s = 0; s < S; s++) {
                size_t row = ((size_t)i * S + s) * m->n_q_heads + h;
                double e = ref_err(f, i, l, h, q + row * m->d_k, tok, n,
                                   (int64_t)f->len[i][l] - (S - 1 - s), out + row * m->d_v);
                worst = e > worst ? e : worst;
            }
        }
    free(tok);
    return worst;
}

/* Random ascending lists: gg per session, each entry of [0, bound_i)
 * kept with probability ~1/3 (some lists empty). */
static uint32_t random_lists(fx *f, uint32_t l, uint32_t gg, int tokens, uint32_t *indptr,
                             uint64_t *idx, int S_new)
{
    uint32_t n = 0;
    indptr[0] = 0;
    for (int i = 0; i < B; i++)
        for (uint32_t g = 0; g < gg; g++) {
            uint64_t L = f->len[i][l] + (uint64_t)S_new;
            uint64_t bound = tokens ? L : (L + f->m.page_size - 1) / f->m.page_size;
            int empty = pick(f, 5) == 0;
            for (uint64_t x = 0; x < bound && !empty; x++)
                if (pick(f, 3) == 0)
                    idx[n++] = x;
            indptr[i * gg + g + 1] = n;
        }
    return n;
}

static float *random_q(fx *f, int S)
{
    size_t n = (size_t)B * S * f->m.n_q_heads * f->m.d_k;
    float *q = malloc(sizeof(float) * n);
    for (size_t k = 0; k < n; k++)
        q[k] = unif(f);
    return q;
}

/* Given lists on every layer of kind `kind` through a group of n ranks
 * sharded by `shard`: per session and per KV head, with and without new
 * KV, one and three query tokens, every rank leading; each call also
 * reports what it attended, as a lone worker would. */
static void given_equals_f64(const char *model, const char *shard, int n, int kind)
{
    const char *flags[] = {"--model", model, "--kv-dtype", "f32", "--page-size", "8",
                           "--threads", "2", "--kernel-threads", "1", "--shard", shard, NULL};
    attnd_sparse_policy pol = {.kind = kind};
    const int tokens = kind == ATTND_SPARSE_GIVEN_TOKENS;
    fx f;
    attnd_error err;
    fx_open(&f, n, flags, &pol, NULL, 0);
    fx_prefill(&f, 203, 0);
    uint32_t indptr[B * 8 + 1], cip[B * 8 + 1];
    uint64_t *idx = malloc(sizeof(uint64_t) * B * 8 * CAP);
    uint64_t *ch = malloc(sizeof(uint64_t) * B * 8 * CAP), *want = malloc(sizeof(uint64_t) * CAP);
    float *out = malloc(sizeof(float) * B * 3 * f.m.n_q_heads * f.m.d_v);
    double worst = 0;
    int calls = 0;
    for (int k = 0; k < 8; k++)
        for (uint32_t l = 0; l < f.m.n_layers; l++) {
            const int S = k % 4 == 1 ? 3 : 1, new_kv = k % 3 != 2;
            const uint32_t gg = k % 2 ? f.m.n_kv_heads : 1;
            uint32_t ni = random_lists(&f, l, gg, tokens, indptr, idx, new_kv ? S : 0);
            float *q = random_q(&f, S);
            attnd_sparse_args sp = {.given_groups = gg, .given_indptr = indptr, .given_idx = idx,
                                    .n_given_idx = ni, .return_pages = 1, .chosen_indptr = cip,
                                    .chosen_indptr_capacity = B * 8 + 1, .chosen = ch,
                                    .chosen_capacity = B * 8 * CAP};
            ck_assert_msg(fx_attend(&f, l, S, new_kv, (k + (int)l) % n, q, &sp, out, &err) ==
                              ATTND_OK, "%s", err.msg);
            double e = check_out(&f, l, S, q, out, gg, indptr, idx, tokens);
            worst = e > worst ? e : worst;
            /* what it reports: the lone worker's lists, in global numbering */
            ck_assert_uint_eq(sp.chosen_groups, gg);
            ck_assert_int_eq(sp.chosen_tokens, tokens);
            for (uint32_t li = 0; li < B * gg; li++) {
                int64_t m = reported(&f, (int)(li / gg), l, S, tokens, idx + indptr[li],
                                     indptr[li + 1] - indptr[li], want);
                ck_assert_int_eq(cip[li + 1] - cip[li], m);
                ck_assert_int_eq(memcmp(ch + cip[li], want, sizeof(uint64_t) * (size_t)m), 0);
            }
            calls++;
            free(q);
        }
    ck_assert_int_eq(calls, 8 * (int)f.m.n_layers);
    ck_assert_msg(worst <= 1e-5, "max relative error %g against float64", worst);
    free(ch);
    free(want);
    free(idx);
    free(out);
    fx_close(&f);
}

START_TEST(test_given_pages_on_sequence_sharded_ranks_equal_f64_attention_over_those_pages)
{
    given_equals_f64("tiny-gqa", "sequence", 3, ATTND_SPARSE_GIVEN_PAGES);
}
END_TEST

START_TEST(test_given_pages_on_head_sharded_ranks_equal_f64_attention_over_those_pages)
{
    given_equals_f64("tiny-gqa", "head", 2, ATTND_SPARSE_GIVEN_PAGES);
}
END_TEST

START_TEST(test_given_tokens_on_sequence_sharded_ranks_equal_f64_attention_over_those_tokens)
{
    given_equals_f64("tiny-gqa", "sequence", 3, ATTND_SPARSE_GIVEN_TOKENS);
}
END_TEST

START_TEST(test_given_tokens_on_head_sharded_ranks_equal_f64_attention_over_those_tokens)
{
    given_equals_f64("tiny-gqa", "head", 2, ATTND_SPARSE_GIVEN_TOKENS);
}
END_TEST

/* Ranks of several KV heads each: the per-head lists split among them. */
START_TEST(test_given_pages_on_head_sharded_ranks_of_two_kv_heads_equal_f64_attention)
{
    given_equals_f64("tiny-gqa6", "head", 3, ATTND_SPARSE_GIVEN_PAGES);
}
END_TEST

/* Any sharding, MLA too (latent mode is TPLA's approximation, so no
 * float64 reference): a given-pages Attend equals the same group's dense
 * Attend of a session holding just the tokens of those pages and of the
 * newest page, in order (attention does not depend on where a token sits),
 * and return_pages reports exactly those pages, one list per session. */
static void given_equals_compact(const char *model, const char *shard, int n)
{
    const char *flags[] = {"--model", model, "--kv-dtype", "f32", "--page-size", "8",
                           "--threads", "2", "--kernel-threads", "1", "--shard", shard, NULL};
    attnd_sparse_policy pol = {.kind = ATTND_SPARSE_GIVEN_PAGES};
    fx f;
    attnd_error err;
    attnd_session_id cid[B];
    fx_open(&f, n, flags, &pol, NULL, 0);
    fx_prefill(&f, 157, 0);
    const uint32_t e = f.m.kv_token_elems;
    const size_t rows = (size_t)B * f.m.n_q_heads;
    float *o = malloc(sizeof(float) * rows * f.m.d_v), *oc = malloc(sizeof(float) * rows * f.m.d_v);
    float *kv = malloc(sizeof(float) * CAP * e);
    int64_t *tok = malloc(sizeof(int64_t) * CAP);
    uint32_t indptr[B + 1], ip[B + 1];
    uint64_t idx[B * 32], ch[B * 32];
    for (int k = 0; k < 3; k++) {
        random_lists(&f, 0, 1, 0, indptr, idx, 0);
        for (int i = 0; i < B; i++) { /* the compact sessions: just those tokens */
            ck_assert_msg(attnd_client_create_session(f.g.c[0], "", CAP, &cid[i], NULL, &err) ==
                              ATTND_OK, "%s", err.msg);
            int64_t nt = attended(&f, i, 0, 1, 0, idx + indptr[i], indptr[i + 1] - indptr[i], tok);
            for (int64_t j = 0; j < nt; j++)
                memcpy(kv + j * e, f.kv[i][0] + tok[j] * e, sizeof(float) * e);
            attnd_kv_chunk c = {.session = cid[i], .layer = 0, .start = 0, .n_tokens = (uint32_t)nt,
                                .kv_token_elems = e, .dtype = ATTND_DTYPE_F32, .data = kv};
            ck_assert_msg(attnd_client_append_kv(f.g.c[1 % n], &c, 1, NULL, &err) == ATTND_OK,
                          "%s", err.msg);
        }
        float *q = random_q(&f, 1);
        attnd_sparse_args sp = {.given_groups = 1, .given_indptr = indptr, .given_idx = idx,
                                .n_given_idx = indptr[B], .return_pages = 1, .chosen_indptr = ip,
                                .chosen_indptr_capacity = B + 1, .chosen = ch,
                                .chosen_capacity = B * 32};
        ck_assert_msg(fx_attend(&f, 0, 1, 0, k % n, q, &sp, o, &err) == ATTND_OK, "%s", err.msg);
        attnd_attend_args a = {.layer = 0, .n_seqs = B, .sessions = cid,
                               .q = {ATTND_DTYPE_F32, 4, {B, 1, f.m.n_q_heads, f.m.d_k}, q},
                               .out = oc, .out_capacity = sizeof(float) * rows * f.m.d_v};
        ck_assert_msg(attnd_client_attend(f.g.c[(k + 1) % n], &a, &err) == ATTND_OK, "%s",
                      err.msg);
        double d = gt_max_row_err(o, oc, rows, f.m.d_v);
        ck_assert_msg(d <= 1e-5, "given pages vs a session of just their tokens: %g", d);
        ck_assert_uint_eq(sp.chosen_groups, 1);
        ck_assert_uint_eq(sp.n_chosen_lists, B);
        const uint64_t np = (f.len[0][0] + f.m.page_size - 1) / f.m.page_size;
        for (int i = 0; i < B; i++) { /* the pages given, and the newest */
            uint32_t j = ip[i], g = indptr[i];
            for (; g < indptr[i + 1] && idx[g] < np - 1; g++, j++)
                ck_assert_uint_eq(ch[j], idx[g]);
            ck_assert_uint_eq(ch[j], np - 1);
            ck_assert_uint_eq(j + 1, ip[i + 1]);
        }
        for (int i = 0; i < B; i++)
            ck_assert_int_eq(attnd_client_close_session(f.g.c[0], &cid[i], &err), ATTND_OK);
        free(q);
    }
    free(o);
    free(oc);
    free(kv);
    free(tok);
    fx_close(&f);
}

START_TEST(test_given_pages_on_latent_sharded_mla_ranks_equal_a_session_of_just_those_tokens)
{
    given_equals_compact("tiny-mla", "latent", 2);
}
END_TEST

START_TEST(test_given_pages_on_sequence_sharded_mla_ranks_equal_a_session_of_just_those_tokens)
{
    given_equals_compact("tiny-mla", "sequence", 3);
}
END_TEST

/* TidalDecode on a group: layer 0 selects (topk-pages) and reports its
 * pages in the session's global numbering; layer 1 (the same KV) given
 * those pages attends exactly them: the same output, and float64 over
 * them agrees. */
static void returned_pages_reproduce(const char *shard, int n)
{
    const char *flags[] = {"--model", "tiny-gqa", "--kv-dtype", "f32", "--page-size", "8",
                           "--threads", "2", "--kernel-threads", "1", "--shard", shard, NULL};
    attnd_sparse_policy pol = {.kind = ATTND_SPARSE_FULL};
    attnd_sparse_rule rules[] = {
        {.layer_begin = 0, .layer_end = 1,
         .policy = {.kind = ATTND_SPARSE_TOPK_PAGES, .sink = 8, .topk_pages = 6}},
        {.layer_begin = 1, .layer_end = 2, .policy = {.kind = ATTND_SPARSE_GIVEN_PAGES}},
    };
    fx f;
    attnd_error err;
    fx_open(&f, n, flags, &pol, rules, 2);
    fx_prefill(&f, 301, 1);
    const size_t rows = (size_t)B * f.m.n_q_heads;
    float *o0 = malloc(sizeof(float) * rows * f.m.d_v), *o1 = malloc(sizeof(float) * rows * f.m.d_v);
    uint32_t ip0[B * 8 + 1], ip1[B * 8 + 1];
    uint64_t ch0[B * 8 * 64], ch1[B * 8 * 64];
    for (int k = 0; k < 4; k++) {
        float *q = random_q(&f, 1);
        attnd_sparse_args s0 = {.return_pages = 1, .chosen_indptr = ip0,
                                .chosen_indptr_capacity = B * 8 + 1, .chosen = ch0,
                                .chosen_capacity = B * 8 * 64};
        ck_assert_msg(fx_attend(&f, 0, 1, 0, k % n, q, &s0, o0, &err) == ATTND_OK, "%s", err.msg);
        /* a lone worker's shape: one list per KV head (topk-pages, GQA) */
        ck_assert_uint_eq(s0.chosen_groups, f.m.n_kv_heads);
        ck_assert(!s0.chosen_tokens);
        ck_assert_uint_eq(s0.n_chosen_lists, (size_t)B * f.m.n_kv_heads);
        const uint64_t np = (f.len[0][0] + f.m.page_size - 1) / f.m.page_size;
        for (size_t li = 0; li < s0.n_chosen_lists; li++) {
            ck_assert_uint_ge(ip0[li + 1] - ip0[li], 3); /* sink, newest, and picks */
            ck_assert_uint_le(ip0[li + 1] - ip0[li], 6 + (uint32_t)n);
            ck_assert_uint_eq(ch0[ip0[li]], 0);                /* the sink page */
            ck_assert_uint_eq(ch0[ip0[li + 1] - 1], np - 1);   /* the newest page */
            for (uint32_t j = ip0[li] + 1; j < ip0[li + 1]; j++)
                ck_assert_uint_lt(ch0[j - 1], ch0[j]);
        }
        double e0 = check_out(&f, 0, 1, q, o0, s0.chosen_groups, ip0, ch0, 0);
        ck_assert_msg(e0 <= 1e-5, "layer 0 against float64 over its pages: %g", e0);
        attnd_sparse_args s1 = {.given_groups = s0.chosen_groups, .given_indptr = ip0,
                                .given_idx = ch0, .n_given_idx = s0.n_chosen, .return_pages = 1,
                                .chosen_indptr = ip1, .chosen_indptr_capacity = B * 8 + 1,
                                .chosen = ch1, .chosen_capacity = B * 8 * 64};
        ck_assert_msg(fx_attend(&f, 1, 1, 0, (k + 1) % n, q, &s1, o1, &err) == ATTND_OK, "%s",
                      err.msg);
        double e = gt_max_row_err(o1, o0, rows, f.m.d_v);
        ck_assert_msg(e <= 1e-6, "given back: %g from the selecting layer's output", e);
        /* and it reports exactly the pages it was given */
        ck_assert_uint_eq(s1.n_chosen, s0.n_chosen);
        ck_assert_int_eq(memcmp(ip1, ip0, sizeof(uint32_t) * (s0.n_chosen_lists + 1)), 0);
        ck_assert_int_eq(memcmp(ch1, ch0, sizeof(uint64_t) * s0.n_chosen), 0);
        free(q);
    }
    free(o0);
    free(o1);
    fx_close(&f);
}

START_TEST(test_pages_a_sequence_sharded_topk_layer_returns_given_back_reproduce_its_output)
{
    returned_pages_reproduce("sequence", 3);
}
END_TEST

START_TEST(test_pages_a_head_sharded_topk_layer_returns_given_back_reproduce_its_output)
{
    returned_pages_reproduce("head", 2);
}
END_TEST

/* Bad given indices: INVALID_ARGUMENT naming the field, the message a
 * lone worker gives for the same request; although each came with new KV,
 * nothing was appended on any rank: the group's answers stay exact after
 * each, and new tokens land where the group says the layers end. */
START_TEST(test_bad_given_indices_on_a_group_are_invalid_argument_and_it_keeps_serving)
{
    const char *flags[] = {"--model", "tiny-gqa", "--kv-dtype", "f32", "--page-size", "8",
                           "--threads", "2", "--kernel-threads", "1", "--shard", "sequence",
                           NULL};
    attnd_sparse_policy pol = {.kind = ATTND_SPARSE_GIVEN_PAGES};
    attnd_sparse_rule full = {.layer_begin = 2, .layer_end = 3,
                              .policy = {.kind = ATTND_SPARSE_FULL}};
    fx f;
    cu_server lone;
    attnd_error err, lerr;
    fx_open(&f, 3, flags, &pol, &full, 1);
    const char *lone_flags[] = {"--model", "tiny-gqa", "--kv-dtype", "f32", "--page-size", "8",
                                NULL};
    ck_assert_int_eq(cu_server_start(&lone, lone_flags), 0);
    attnd_client *ref = gt_connect(&lone);
    attnd_session_id lid[B];
    for (int i = 0; i < B; i++)
        ck_assert_msg(attnd_client_create_session_policy(ref, "", CAP, &pol, &full, 1, &lid[i],
                                                         NULL, &err) == ATTND_OK, "%s", err.msg);
    fx_prefill(&f, 100, 0);
    for (int i = 0; i < B; i++) /* the lone worker's layer 0 as long */
        for (uint32_t s = 0; s < 100; s += 50) {
            attnd_kv_chunk ch = {.session = lid[i], .layer = 0, .start = s, .n_tokens = 50,
                                 .kv_token_elems = f.m.kv_token_elems,
                                 .dtype = ATTND_DTYPE_F32,
                                 .data = f.kv[i][0] + (size_t)s * f.m.kv_token_elems};
            ck_assert_msg(attnd_client_append_kv(ref, &ch, 1, NULL, &err) == ATTND_OK, "%s",
                          err.msg);
        }
    /* 100 tokens + 1 new: 13 pages */
    struct bad {
        uint32_t layer, gg, indptr[B * 2 + 1];
        uint64_t idx[4];
        uint32_t n;
        const char *field;
    } bad[] = {
        {0, 1, {0, 1, 2}, {3, 13}, 2, "given_idx[1]"},       /* page 13 of 13 */
        {0, 1, {0, 2, 2}, {5, 5}, 2, "given_idx[1]"},        /* not ascending */
        {0, 1, {0, 2, 3}, {4, 2, 1}, 3, "given_idx[1]"},     /* descending */
        {0, 2, {0, 1, 1, 1, 2}, {1, 99}, 2, "given_idx[1]"}, /* per KV head, out of range */
        {2, 1, {0, 1, 1}, {0}, 1, "given_idx[0]"},           /* a full layer takes none */
        {0, 0, {0}, {0}, 0, "given_idx"},                    /* a given layer needs them */
    };
    const size_t rows = (size_t)B * f.m.n_q_heads;
    float *out = malloc(sizeof(float) * rows * f.m.d_v);
    float *lout = malloc(sizeof(float) * rows * f.m.d_v);
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
        const struct bad *x = &bad[b];
        float *q = random_q(&f, 1);
        attnd_sparse_args sp = {.given_groups = x->gg, .given_indptr = x->gg ? x->indptr : NULL,
                                .given_idx = x->idx, .n_given_idx = x->n};
        uint64_t before = f.len[0][x->layer];
        ck_assert_int_eq(fx_attend(&f, x->layer, 1, 1, (int)b % 3, q, &sp, out, &err),
                         ATTND_ERR_INVALID_ARGUMENT);
        ck_assert_msg(strstr(err.msg, x->field), "case %zu: %s", b, err.msg);
        ck_assert_uint_eq(f.len[0][x->layer], before);
        if (x->layer == 0) { /* the lone worker says the same */
            float kv[B * 2 * 2 * 32] = {0};
            uint64_t pos[B] = {100, 100};
            attnd_attend_args a = {
                .layer = 0, .n_seqs = B, .sessions = lid,
                .q = {ATTND_DTYPE_F32, 4, {B, 1, f.m.n_q_heads, f.m.d_k}, q},
                .new_kv = {ATTND_DTYPE_F32, 5, {B, 1, 2, f.m.n_kv_heads, f.m.head_dim}, kv},
                .positions = pos, .out = lout, .out_capacity = sizeof(float) * rows * f.m.d_v};
            ck_assert_int_eq(attnd_client_attend_sparse(ref, &a, &sp, &lerr),
                             ATTND_ERR_INVALID_ARGUMENT);
            ck_assert_str_eq(err.msg, lerr.msg);
        }
        /* the group serves on, exactly (a rank that had appended would
         * attend a token more on its newest page) */
        uint32_t ip[B + 1] = {0, 2, 3};
        uint64_t idx[3] = {1, 4, 0};
        attnd_sparse_args ok = {.given_groups = 1, .given_indptr = ip, .given_idx = idx,
                                .n_given_idx = 3};
        ck_assert_msg(fx_attend(&f, 0, 1, 0, (int)(b + 1) % 3, q, &ok, out, &err) == ATTND_OK,
                      "case %zu, then: %s", b, err.msg);
        double e = check_out(&f, 0, 1, q, out, 1, ip, idx, 0);
        ck_assert_msg(e <= 1e-5, "case %zu, then: error %g against float64", b, e);
        free(q);
    }
    for (int k = 0; k < 3; k++) { /* and new KV lands where it should */
        uint32_t ip[B + 1] = {0, 1, 1};
        uint64_t idx[1] = {2};
        attnd_sparse_args ok = {.given_groups = 1, .given_indptr = ip, .given_idx = idx,
                                .n_given_idx = 1};
        float *q = random_q(&f, 1);
        ck_assert_msg(fx_attend(&f, 0, 1, 1, k, q, &ok, out, &err) == ATTND_OK, "%s", err.msg);
        double e = check_out(&f, 0, 1, q, out, 1, ip, idx, 0);
        ck_assert_msg(e <= 1e-5, "new KV after the refusals: error %g against float64", e);
        free(q);
    }
    free(out);
    free(lout);
    attnd_client_destroy(ref);
    ck_assert_int_eq(cu_server_stop(&lone), 0);
    fx_close(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("group_given");
    TCase *tc = tcase_create("given");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_given_pages_on_sequence_sharded_ranks_equal_f64_attention_over_those_pages);
    tcase_add_test(tc, test_given_pages_on_head_sharded_ranks_equal_f64_attention_over_those_pages);
    tcase_add_test(tc, test_given_tokens_on_sequence_sharded_ranks_equal_f64_attention_over_those_tokens);
    tcase_add_test(tc, test_given_tokens_on_head_sharded_ranks_equal_f64_attention_over_those_tokens);
    tcase_add_test(tc, test_given_pages_on_head_sharded_ranks_of_two_kv_heads_equal_f64_attention);
    tcase_add_test(tc, test_given_pages_on_latent_sharded_mla_ranks_equal_a_session_of_just_those_tokens);
    tcase_add_test(tc, test_given_pages_on_sequence_sharded_mla_ranks_equal_a_session_of_just_those_tokens);
    tcase_add_test(tc, test_pages_a_sequence_sharded_topk_layer_returns_given_back_reproduce_its_output);
    tcase_add_test(tc, test_pages_a_head_sharded_topk_layer_returns_given_back_reproduce_its_output);
    tcase_add_test(tc, test_bad_given_indices_on_a_group_are_invalid_argument_and_it_keeps_serving);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
