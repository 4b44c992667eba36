/* attnd-sparse-accuracy: how much of dense attention the sparse policies
 * keep, on synthetic long-context workloads (the README's table).
 *
 *   attnd-sparse-accuracy [--ctx T] [--trials N] [--page-size P] [--seed S]
 *                         [--shape gqa|mla|both] [--ranks N] [--mla-heads H]
 *                         [--agg A]
 *
 * For each workload, shape, policy and budget, over N trials of fresh
 * random data: the keys are rounded to bf16 (as the pool stores them) and
 * folded into per-page key bounds with the worker's own code
 * (attnd_kernel_kv_bounds_add, then the compact 8-bit form the CPU engine
 * scores, attnd_kernel_kv_bounds8_make); topk-pages picks its pages with
 * the worker's selection kernel (attnd_kernel_select) on the compact
 * bounds, exactly as an Attend on the CPU would ("topk-pages, bf16
 * bounds": the same rows on the bf16 bounds, as the GPU scores),
 * scoring with the engine's rows ("topk-pages": runs of A heads summed
 * into one row, A the engine's default select_head_agg, G / 8 where 8
 * divides the G heads, else 1; --agg A sets it) and, beside it, with a row
 * per query head ("topk-pages, per head": the engine's rows before
 * 2026-12-05);
 * streaming takes the sink and window pages; the oracle takes the pages
 * holding the most dense attention mass (the best any page selection can
 * do at that budget). Then, in float64 against dense attention over every
 * token, per query head:
 *   recall  the dense attention mass on the tokens attended,
 *   error   ||o_sparse - o_dense|| / ||o_dense|| (L2 over d_v),
 *   KV read the bytes attended (and the key bounds selection reads) over
 *           the dense call's.
 * Means over heads and trials, and the worst (lowest recall, highest
 * error). With --ranks N, topk-pages is also run as sequence-sharded ranks
 * do (pages p mod N on rank p mod N, each choosing ceil(k / N) of its own
 * with its own sink and newest pages, with the engine's rows) beside the
 * global choice.
 *
 * Workloads (T tokens; d_k-dimensional keys; Hq query heads sharing one KV
 * head: a GQA group, or MLA's latent):
 *   needle   keys 0.3 N(0, 1); four needle keys, each c * q_shared, c
 *            giving scale * q_shared . k = 12 logits, in one random page of
 *            the middle half; heads q_h = q_shared + noise (correlated, as
 *            the heads of one group or one MLA layer tend to be);
 *   local    keys a slow random walk (AR(1), rho 0.999) plus noise, the
 *            query near the newest key: attention decays with distance,
 *            with an attention sink (token 0's key aligned with the newest
 *            key, as trained models develop sinks);
 *   diffuse  keys and queries N(0, 1), scores with unit spread: mass
 *            spread over the whole context, no page much better than
 *            another;
 *   heads    every head its own needle: independent queries N(0, 1), and
 *            for each head four keys at +12 logits for it in a random page
 *            of the middle half (Hq needle pages; the case where heads
 *            disagree, which summing the heads into one row serves worst).
 * Synthetic data is not a model: real attention mixes these patterns per
 * head and layer (README "Sparse attention" says how the figures compare
 * with the published ones). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_kernels.h"

typedef struct rng {
    uint64_t s;
} rng;

static double unif(rng *r)
{
    r->s ^= r->s >> 12, r->s ^= r->s << 25, r->s ^= r->s >> 27;
    return (double)((r->s * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
}

static double normal(rng *r)
{
    double u = unif(r), v = unif(r);
    return sqrt(-2.0 * log(u < 1e-300 ? 1e-300 : u)) * cos(6.283185307179586 * v);
}

static double bf16_round(double x)
{
    return attnd_dtype_bf16_to_f32(attnd_dtype_f32_to_bf16((float)x));
}

enum { W_NEEDLE, W_LOCAL, W_DIFFUSE, W_HEADS, W_COUNT };
/* needle: the needle keys' score above the background's mean (logits) */
#define NEEDLE_LOGITS 12.0
/* local: the query is LOCAL_PULL / sqrt(d_k) times the newest key plus
 * noise (recent keys score ~3-4 logits above distant ones, decaying over
 * the walk's ~1000-token correlation length); token 0 is SINK_PULL times
 * the newest key (an attention sink holding a sizeable share of the mass) */
#define LOCAL_PULL 3.5
#define SINK_PULL 2.5
static const char *const wl_names[W_COUNT] = {"needle", "local", "diffuse", "heads"};

typedef struct shape {
    const char *name;
    int32_t hq, dk, dv, v_in_k;
} shape;

/* One trial's data: K [T][dk], V [T][dv] (bf16-rounded), queries [hq][dk]. */
typedef struct trial {
    int64_t T;
    const shape *sh;
    double *k, *v, *q;
    double scale;
    int64_t needle_page;
} trial;

static void trial_make(trial *t, const shape *sh, int64_t T, int32_t ps, int wl, rng *r)
{
    const int32_t dk = sh->dk, dv = sh->dv;
    t->T = T;
    t->sh = sh;
    t->scale = 1.0 / sqrt((double)dk);
    t->k = malloc(sizeof(double) * (size_t)T * dk);
    t->v = sh->v_in_k ? t->k : malloc(sizeof(double) * (size_t)T * dv);
    t->q = malloc(sizeof(double) * (size_t)sh->hq * dk);
    double *qs = malloc(sizeof(double) * dk), *walk = calloc((size_t)dk, sizeof(double));
    for (int32_t d = 0; d < dk; d++)
        qs[d] = normal(r);
    for (int32_t h = 0; h < sh->hq; h++)
        for (int32_t d = 0; d < dk; d++)
            t->q[h * dk + d] = wl == W_DIFFUSE || wl == W_HEADS ? normal(r)
                                                                : qs[d] + 0.5 * normal(r);
    for (int64_t i = 0; i < T; i++) {
        double *k = t->k + i * dk;
        for (int32_t d = 0; d < dk; d++) {
            switch (wl) {
            case W_NEEDLE:
            case W_HEADS: k[d] = 0.3 * normal(r); break;
            case W_LOCAL:
                walk[d] = 0.999 * walk[d] + sqrt(1 - 0.999 * 0.999) * normal(r);
                k[d] = walk[d] + 0.3 * normal(r);
                break;
            default: k[d] = normal(r);
            }
        }
    }
    if (wl == W_LOCAL) { /* the query near the newest key; a sink at token 0 */
        const double *last = t->k + (T - 1) * dk;
        double a = LOCAL_PULL / sqrt((double)dk);
        for (int32_t h = 0; h < sh->hq; h++)
            for (int32_t d = 0; d < dk; d++)
                t->q[h * dk + d] = a * last[d] + 0.3 * normal(r);
        for (int32_t d = 0; d < dk; d++)
            t->k[d] = SINK_PULL * last[d];
    }
    t->needle_page = -1;
    if (wl == W_NEEDLE) { /* q_shared . k * scale = NEEDLE_LOGITS */
        double qn = 0;
        for (int32_t d = 0; d < dk; d++)
            qn += qs[d] * qs[d];
        int64_t np = T / ps;
        t->needle_page = np / 4 + (int64_t)(unif(r) * (double)(np / 2));
        for (int c = 0; c < 4; c++) {
            int64_t i = t->needle_page * ps + (int64_t)(unif(r) * ps);
            for (int32_t d = 0; d < dk; d++)
                t->k[i * dk + d] = NEEDLE_LOGITS * sqrt((double)dk) * qs[d] / qn;
        }
    }
    if (wl == W_HEADS) /* head h's needle: q_h . k * scale = NEEDLE_LOGITS */
        for (int32_t h = 0; h < sh->hq; h++) {
            const double *qh = t->q + (size_t)h * dk;
            double qn = 0;
            for (int32_t d = 0; d < dk; d++)
                qn += qh[d] * qh[d];
            int64_t np = T / ps, pg = np / 4 + (int64_t)(unif(r) * (double)(np / 2));
            for (int c = 0; c < 4; c++) {
                int64_t i = pg * ps + (int64_t)(unif(r) * ps);
                for (int32_t d = 0; d < dk; d++)
                    t->k[i * dk + d] = NEEDLE_LOGITS * sqrt((double)dk) * qh[d] / qn;
            }
        }
    for (int64_t i = 0; i < T * dk; i++)
        t->k[i] = bf16_round(t->k[i]);
    if (!sh->v_in_k)
        for (int64_t i = 0; i < T * dv; i++)
            t->v[i] = bf16_round(normal(r));
    free(qs);
    free(walk);
}

static void trial_free(trial *t)
{
    if (t->v != t->k)
        free(t->v);
    free(t->k);
    free(t->q);
}

/* Dense attention of head h: probabilities p [T] and output o [dv]. */
static void dense(const trial *t, int32_t h, double *p, double *o)
{
    const int32_t dk = t->sh->dk, dv = t->sh->dv;
    const double *q = t->q + (size_t)h * dk;
    double mx = -INFINITY, sum = 0;
    for (int64_t i = 0; i < t->T; i++) {
        double s = 0;
        for (int32_t d = 0; d < dk; d++)
            s += q[d] * t->k[i * dk + d];
        p[i] = s * t->scale;
        mx = p[i] > mx ? p[i] : mx;
    }
    for (int64_t i = 0; i < t->T; i++)
        sum += (p[i] = exp(p[i] - mx));
    memset(o, 0, sizeof(double) * dv);
    for (int64_t i = 0; i < t->T; i++) {
        p[i] /= sum;
        const double *v = t->v + (size_t)i * (t->sh->v_in_k ? dk : dv);
        for (int32_t e = 0; e < dv; e++)
            o[e] += p[i] * v[e];
    }
}

/* Over the pages keep[0..n_keep): recall of p and the output's error. */
static void sparse_eval(const trial *t, int32_t ps, const int64_t *keep, int64_t n_keep,
                        const double *p, const double *o_dense, double *recall, double *err)
{
    const int32_t dk = t->sh->dk, dv = t->sh->dv;
    double *o = calloc((size_t)dv, sizeof(double)), mass = 0;
    for (int64_t j = 0; j < n_keep; j++)
        for (int64_t i = keep[j] * ps; i < (keep[j] + 1) * ps && i < t->T; i++)
            mass += p[i];
    for (int64_t j = 0; j < n_keep; j++) /* renormalized: softmax over the kept tokens */
        for (int64_t i = keep[j] * ps; i < (keep[j] + 1) * ps && i < t->T; i++) {
            const double *v = t->v + (size_t)i * (t->sh->v_in_k ? dk : dv);
            for (int32_t e = 0; e < dv; e++)
                o[e] += p[i] / mass * v[e];
        }
    double num = 0, den = 0;
    for (int32_t e = 0; e < dv; e++) {
        num += (o[e] - o_dense[e]) * (o[e] - o_dense[e]);
        den += o_dense[e] * o_dense[e];
    }
    *recall = mass;
    *err = sqrt(num / (den > 0 ? den : 1));
    free(o);
}

typedef struct acc {
    double recall, recall_min, err, err_max, bytes;
    int64_t n;
} acc;

static void acc_add(acc *a, double recall, double err, double bytes)
{
    if (a->n == 0) {
        a->recall_min = recall;
        a->err_max = err;
    }
    a->recall += recall;
    a->err += err;
    a->bytes += bytes;
    a->recall_min = recall < a->recall_min ? recall : a->recall_min;
    a->err_max = err > a->err_max ? err : a->err_max;
    a->n++;
}

/* The worker's topk-pages choice over pages of [first, np) stepping by
 * `stride` (one rank's pages), keeping `keep` of them with the first
 * n_head and the last one mandatory, scoring rows of head_agg heads
 * summed: into out (logical page numbers). */
static int64_t topk_select(const trial *t, const attnd_kernel_kv_layout *l, const uint16_t *bounds,
                           const uint8_t *bounds8, int64_t np, int64_t first, int64_t stride,
                           int64_t keep, int64_t n_head, int32_t head_agg, int64_t *out)
{
    int64_t n = first < np ? (np - 1 - first) / stride + 1 : 0;
    if (n == 0)
        return 0;
    int32_t *cand = malloc(sizeof(int32_t) * (size_t)n), *sel = malloc(sizeof(int32_t) * (size_t)n);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t j = 0; j < n; j++)
        cand[j] = (int32_t)(first + j * stride);
    if (n_head > n - 1)
        n_head = n - 1;
    if (keep < n_head + 1)
        keep = n_head + 1;
    if (keep > n)
        keep = n;
    float *q = malloc(sizeof(float) * (size_t)t->sh->hq * t->sh->dk);
    for (int64_t i = 0; i < (int64_t)t->sh->hq * t->sh->dk; i++)
        q[i] = (float)t->q[i];
    attnd_kernel_select_list sl = {.seq = 0, .group = 0, .cand0 = 0, .n_cand = (int32_t)n,
                                   .keep = (int32_t)keep, .n_head = (int32_t)n_head, .n_tail = 1};
    attnd_kernel_select_batch b = {.n_lists = 1,
                                   .lists = &sl,
                                   .n_seqs = 1,
                                   .q_tokens = 1,
                                   .n_q_heads = t->sh->hq,
                                   .list_groups = 1,
                                   .head_agg = head_agg,
                                   .q_dtype = ATTND_DTYPE_F32,
                                   .q = q,
                                   .kv = l,
                                   .bounds = bounds,
                                   .bounds8 = bounds8,
                                   .bounds_pages = np,
                                   .cand_idx = cand,
                                   .sel_pages = sel,
                                   .sel_pos = pos};
    attnd_error err;
    int64_t wf = attnd_kernel_select_prepare(&b, &err);
    if (wf < 0) {
        fprintf(stderr, "attnd-sparse-accuracy: %s\n", err.msg);
        exit(1);
    }
    b.work = malloc(sizeof(float) * (size_t)(wf + 16));
    attnd_kernel_select(&b);
    for (int64_t j = 0; j < keep; j++)
        out[j] = sel[j];
    free(b.work);
    free(q);
    free(cand);
    free(sel);
    free(pos);
    return keep;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

typedef struct page_mass {
    double m;
    int64_t p;
} page_mass;

static int cmp_mass(const void *a, const void *b)
{
    double x = ((const page_mass *)a)->m, y = ((const page_mass *)b)->m;
    return (x < y) - (x > y);
}

int main(int argc, char **argv)
{
    int64_t T = 32768;
    int trials = 6, ranks = 4;
    int32_t ps = 64;
    uint64_t seed = 20261205;
    const char *which = "both";
    int32_t mla_heads = 16, agg_opt = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--ctx"))
            T = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--trials"))
            trials = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--page-size"))
            ps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed"))
            seed = strtoull(argv[i + 1], NULL, 0);
        else if (!strcmp(argv[i], "--shape"))
            which = argv[i + 1];
        else if (!strcmp(argv[i], "--ranks"))
            ranks = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--mla-heads") && atoi(argv[i + 1]) > 0)
            mla_heads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--agg") && atoi(argv[i + 1]) > 0)
            agg_opt = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: attnd-sparse-accuracy [--ctx T] [--trials N] [--page-size P] "
                            "[--seed S] [--shape gqa|mla|both] [--ranks N] [--mla-heads H] "
                            "[--agg A]\n");
            return 2;
        }
    }
    char mla_name[64];
    snprintf(mla_name, sizeof mla_name, "MLA latent (%d heads, d 576/512)", mla_heads);
    const shape shapes[2] = {
        {"GQA group (4 heads, d 128)", 4, 128, 128, 0},
        {mla_name, mla_heads, 576, 512, 1},
    };
    static const double budgets[] = {1.0 / 64, 1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4};
    enum { NB = 5 };
    enum { P_TOPK, P_HEAD, P_STREAM, P_ORACLE, P_RANKS, P_B16, NP };
    printf("attnd-sparse-accuracy: context %lld, page %d, %d trials, seed %llu; topk-pages "
           "sink 1 page; streaming sink 64 tokens + window; sequence sharding over %d ranks\n",
           (long long)T, ps, trials, (unsigned long long)seed, ranks);
    for (int si = 0; si < 2; si++) {
        if ((si == 0 && !strcmp(which, "mla")) || (si == 1 && !strcmp(which, "gqa")))
            continue;
        const shape *sh = &shapes[si];
        /* the engine's default rows (attnd_engine_config.select_head_agg) */
        const int32_t agg = agg_opt && sh->hq % agg_opt == 0 ? agg_opt
                            : sh->hq % 8                     ? 1
                                                             : sh->hq / 8;
        attnd_kernel_kv_layout l;
        if (sh->v_in_k)
            attnd_kernel_kv_layout_mla(&l, sh->dv, sh->dk - sh->dv, ps, ATTND_DTYPE_BF16);
        else
            attnd_kernel_kv_layout_gqa(&l, 1, sh->dk, ps, ATTND_DTYPE_BF16);
        const double tok_bytes = (double)(sh->v_in_k ? sh->dk : 2 * sh->dk) * 2;
        /* per page: the compact bounds (bf16: 2 d_k x 2 bytes) */
        const double bound_bytes = (double)attnd_kernel_kv_bounds8_row(&l);
        const double bound16_bytes = 2.0 * sh->dk * 2;
        printf("\n%s; topk-pages rows: runs of %d heads summed\n\n", sh->name, agg);
        printf("| workload | policy | budget | mass recall mean (min) | output error mean (max) "
               "| KV read vs dense |\n|---|---|---|---|---|---|\n");
        for (int wl = 0; wl < W_COUNT; wl++) {
            acc a[NP][NB];
            memset(a, 0, sizeof a);
            rng r = {seed + (uint64_t)wl * 7919 + (uint64_t)si * 104729};
            for (int tr = 0; tr < trials; tr++) {
                trial t;
                trial_make(&t, sh, T, ps, wl, &r);
                const int64_t np = (T + ps - 1) / ps;
                uint16_t *bounds = malloc(attnd_kernel_kv_bounds_elems(&l) * 2 * (size_t)np);
                float *wire = calloc((size_t)attnd_kernel_kv_layout_token_elems(&l), sizeof(float));
                for (int64_t p = 0; p < np; p++) {
                    attnd_kernel_kv_bounds_reset(&l, bounds, np, p);
                    for (int64_t i = p * ps; i < (p + 1) * ps && i < T; i++) {
                        for (int32_t d = 0; d < sh->dk; d++)
                            wire[d] = (float)t.k[i * sh->dk + d];
                        attnd_kernel_kv_bounds_add(&l, bounds, np, p, 1, ATTND_DTYPE_F32, wire);
                    }
                }
                uint8_t *b8 = malloc(attnd_kernel_kv_bounds8_row(&l) * (size_t)np);
                for (int64_t p = 0; p < np; p++)
                    attnd_kernel_kv_bounds8_make(&l, bounds, b8, np, p);
                double *p = malloc(sizeof(double) * (size_t)T), *o = malloc(sizeof(double) * sh->dv);
                int64_t *keep = malloc(sizeof(int64_t) * (size_t)np);
                page_mass *pm = malloc(sizeof(page_mass) * (size_t)np);
                /* the selections do not depend on the head (one list for
                 * the group), the evaluation does */
                int64_t n_sel[NP][NB];
                int64_t **chosen = malloc(sizeof(int64_t *) * NP * NB);
                for (int b = 0; b < NB; b++) {
                    int64_t k = (int64_t)ceil(budgets[b] * (double)np);
                    int64_t *c;
                    c = chosen[P_TOPK * NB + b] = malloc(sizeof(int64_t) * (size_t)np);
                    n_sel[P_TOPK][b] = topk_select(&t, &l, bounds, b8, np, 0, 1, k, 1, agg, c);
                    c = chosen[P_HEAD * NB + b] = malloc(sizeof(int64_t) * (size_t)np);
                    n_sel[P_HEAD][b] = topk_select(&t, &l, bounds, b8, np, 0, 1, k, 1, 1, c);
                    c = chosen[P_B16 * NB + b] = malloc(sizeof(int64_t) * (size_t)np);
                    n_sel[P_B16][b] = topk_select(&t, &l, bounds, NULL, np, 0, 1, k, 1, agg, c);
                    /* streaming: sink 64 tokens + window filling the budget */
                    c = chosen[P_STREAM * NB + b] = malloc(sizeof(int64_t) * (size_t)np);
                    int64_t w = k * ps - 64, nsp = 0;
                    int64_t sp0 = (64 + ps - 1) / ps, wp = (T - w) / ps;
                    for (int64_t j = 0; j < sp0 && j < wp; j++)
                        c[nsp++] = j;
                    for (int64_t j = wp > sp0 ? wp : sp0; j < np; j++)
                        c[nsp++] = j;
                    n_sel[P_STREAM][b] = nsp;
                    /* sequence-sharded ranks: each its own share */
                    c = chosen[P_RANKS * NB + b] = malloc(sizeof(int64_t) * (size_t)np);
                    int64_t nr = 0;
                    for (int rr = 0; rr < ranks; rr++)
                        nr += topk_select(&t, &l, bounds, b8, np, rr, ranks,
                                          (k + ranks - 1) / ranks, rr == 0 ? 1 : 0, agg, c + nr);
                    qsort(c, (size_t)nr, sizeof *c, cmp_i64);
                    n_sel[P_RANKS][b] = nr;
                }
                for (int32_t h = 0; h < sh->hq; h++) {
                    dense(&t, h, p, o);
                    for (int64_t j = 0; j < np; j++) { /* the oracle: by this head's mass */
                        pm[j].p = j;
                        pm[j].m = 0;
                        for (int64_t i = j * ps; i < (j + 1) * ps && i < T; i++)
                            pm[j].m += p[i];
                    }
                    qsort(pm, (size_t)np, sizeof *pm, cmp_mass);
                    for (int b = 0; b < NB; b++) {
                        int64_t k = (int64_t)ceil(budgets[b] * (double)np);
                        for (int64_t j = 0; j < k; j++)
                            keep[j] = pm[j].p;
                        for (int pol = P_TOPK; pol < NP; pol++) {
                            const int64_t *c = pol == P_ORACLE ? keep : chosen[pol * NB + b];
                            int64_t n = pol == P_ORACLE ? k : n_sel[pol][b];
                            double rec, err;
                            sparse_eval(&t, ps, c, n, p, o, &rec, &err);
                            double bytes = (double)n * ps * tok_bytes +
                                           (pol == P_TOPK || pol == P_HEAD || pol == P_RANKS
                                                ? np * bound_bytes
                                            : pol == P_B16 ? np * bound16_bytes
                                                           : 0);
                            acc_add(&a[pol][b], rec, err, bytes / ((double)T * tok_bytes));
                        }
                    }
                }
                for (int b = 0; b < NB; b++) {
                    free(chosen[P_TOPK * NB + b]);
                    free(chosen[P_HEAD * NB + b]);
                    free(chosen[P_STREAM * NB + b]);
                    free(chosen[P_RANKS * NB + b]);
                    free(chosen[P_B16 * NB + b]);
                }
                free(chosen);
                free(pm);
                free(keep);
                free(p);
                free(o);
                free(wire);
                free(b8);
                free(bounds);
                trial_free(&t);
            }
            static const char *pol_names[NP] = {[P_TOPK] = "topk-pages",
                                                [P_HEAD] = "topk-pages, per head",
                                                [P_STREAM] = "streaming",
                                                [P_ORACLE] = "oracle pages",
                                                [P_RANKS] = "topk-pages, per rank",
                                                [P_B16] = "topk-pages, bf16 bounds"};
            for (int pol = P_TOPK; pol < NP; pol++)
                for (int b = 0; b < NB; b++) {
                    const acc *x = &a[pol][b];
                    printf("| %s | %s | 1/%d | %.3f (%.3f) | %.3f (%.3f) | %.3f |\n",
                           wl_names[wl], pol_names[pol], (int)(1.0 / budgets[b] + 0.5),
                           x->recall / x->n, x->recall_min, x->err / x->n, x->err_max,
                           x->bytes / x->n);
                }
        }
    }
    return 0;
}
