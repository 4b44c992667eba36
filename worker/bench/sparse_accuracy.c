/* attnd-sparse-accuracy: how much of dense attention the sparse policies
 * keep, on synthetic long-context workloads (the README's table) or on
 * attention captured from a model (--load, accuracy_load.c).
 *
 *   attnd-sparse-accuracy [--ctx T] [--trials N] [--page-size P] [--seed S]
 *                         [--shape gqa|mla|both] [--ranks N] [--mla-heads H]
 *                         [--agg A]
 *   attnd-sparse-accuracy --load FILE [--load FILE ...] [--page-size P]
 *                         [--ranks N] [--agg A]
 *
 * The evaluation of one case (accuracy_eval.c, accuracy.h):
 * for each workload, shape, policy and budget, over N trials of fresh
 * random data: the keys are rounded to bf16 (as the pool stores them) and
 * folded into per-page key bounds with the worker's own code
 * (attnd_kernel_kv_bounds_add); topk-pages picks its pages with the worker's
 * selection kernel (attnd_kernel_select), exactly as an Attend would,
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

#include "accuracy.h"
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

static void usage(void)
{
    fprintf(stderr, "usage: attnd-sparse-accuracy [--ctx T] [--trials N] [--page-size P] "
                    "[--seed S] [--shape gqa|mla|both] [--ranks N] [--mla-heads H] [--agg A]\n"
                    "       attnd-sparse-accuracy --load FILE [--load FILE ...] [--page-size P] "
                    "[--ranks N] [--agg A]\n");
}

/* --load: every file's tables; 1 if any file was refused. */
static int run_loads(char **files, int n_files, const attnd__acc_opts *o, int32_t agg_opt)
{
    int bad = 0;
    printf("attnd-sparse-accuracy: captured workloads, page %d; topk-pages sink 1 page; "
           "streaming sink 64 tokens + window; sequence sharding over %d ranks\n",
           o->page_size, o->ranks);
    for (int i = 0; i < n_files; i++) {
        attnd_error err = {0};
        printf("\n## %s\n", files[i]);
        fflush(stdout);
        if (attnd__acc_load_file(files[i], o, agg_opt, stdout, &err) != ATTND_OK) {
            fprintf(stderr, "attnd-sparse-accuracy: %s: %s\n", files[i], err.msg);
            bad = 1;
        }
    }
    return bad;
}

int main(int argc, char **argv)
{
    int64_t T = 32768;
    int trials = 6, ranks = 4, n_loads = 0;
    int32_t ps = 64;
    uint64_t seed = 20261205;
    const char *which = "both";
    int32_t mla_heads = 16, agg_opt = 0;
    char **loads = calloc((size_t)argc, sizeof(char *));
    if (!loads)
        return 1;
    if (argc % 2 == 0) {
        usage();
        return 2;
    }
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--ctx"))
            T = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--trials"))
            trials = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--page-size") && atoi(argv[i + 1]) > 0)
            ps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed"))
            seed = strtoull(argv[i + 1], NULL, 0);
        else if (!strcmp(argv[i], "--shape"))
            which = argv[i + 1];
        else if (!strcmp(argv[i], "--ranks") && atoi(argv[i + 1]) > 0)
            ranks = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--mla-heads") && atoi(argv[i + 1]) > 0)
            mla_heads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--agg") && atoi(argv[i + 1]) > 0)
            agg_opt = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--load"))
            loads[n_loads++] = argv[i + 1];
        else {
            usage();
            free(loads);
            return 2;
        }
    }
    if (n_loads > 0) {
        attnd__acc_opts o = {.page_size = ps, .ranks = ranks, .head_agg = 0};
        int bad = run_loads(loads, n_loads, &o, agg_opt);
        free(loads);
        return bad;
    }
    free(loads);
    char mla_name[64];
    snprintf(mla_name, sizeof mla_name, "MLA latent (%d heads, d 576/512)", mla_heads);
    const shape shapes[2] = {
        {"GQA group (4 heads, d 128)", 4, 128, 128, 0},
        {mla_name, mla_heads, 576, 512, 1},
    };
    printf("attnd-sparse-accuracy: context %lld, page %d, %d trials, seed %llu; topk-pages "
           "sink 1 page; streaming sink 64 tokens + window; sequence sharding over %d ranks\n",
           (long long)T, ps, trials, (unsigned long long)seed, ranks);
    for (int si = 0; si < 2; si++) {
        if ((si == 0 && !strcmp(which, "mla")) || (si == 1 && !strcmp(which, "gqa")))
            continue;
        const shape *sh = &shapes[si];
        /* the engine's default rows (attnd_engine_config.select_head_agg) */
        attnd__acc_opts o = {.page_size = ps,
                             .ranks = ranks,
                             .head_agg = attnd__acc_default_agg(sh->hq, agg_opt)};
        printf("\n%s; topk-pages rows: runs of %d heads summed\n\n", sh->name, o.head_agg);
        for (int wl = 0; wl < W_COUNT; wl++) {
            attnd__acc_table tab;
            memset(&tab, 0, sizeof tab);
            rng r = {seed + (uint64_t)wl * 7919 + (uint64_t)si * 104729};
            for (int tr = 0; tr < trials; tr++) {
                trial t;
                trial_make(&t, sh, T, ps, wl, &r);
                attnd__acc_case c = {.T = T, .hq = sh->hq, .dk = sh->dk, .dv = sh->dv,
                                     .v_in_k = sh->v_in_k, .scale = t.scale,
                                     .k = t.k, .v = t.v, .q = t.q};
                attnd_error err = {0};
                attnd_status st = attnd__acc_eval(&c, &o, &tab, &err);
                trial_free(&t);
                if (st != ATTND_OK) {
                    fprintf(stderr, "attnd-sparse-accuracy: %s\n", err.msg);
                    return 1;
                }
            }
            attnd__acc_print(stdout, wl_names[wl], &tab, wl == 0);
        }
    }
    return 0;
}
