/* Correctness of the CUDA kernels against the float64 CPU reference, on
 * fresh random inputs every run (ATTND_TEST_SEED replays one):
 *
 *   MLA decode (d_c 512 / 256 / 128) and GQA decode (head dim 128 / 64):
 *   head counts 1, 3, 9, 16, 63, 64, 126, 128; 1 and 2 query tokens; lists
 *   of 0, 1, 63, 64, 65 ... tokens, one very long list among short ones;
 *   per-head-group page lists (the gather form); page sizes 64, 128, 256;
 *   NaN in every unlisted page slot and garbage past the index array;
 *   outputs poisoned with NaN before each run; forced split counts 1, 2, 7
 *   and the maximum, which must agree with each other to float32 rounding;
 *   few CTAs (many units per persistent CTA).
 *   The LSE combine of the public API, and the Hadamard rotation.
 *   attnd_kernels.h's non-finite rule: one NaN / +inf / -inf planted in
 *   the K or V of one token (last of a 2-token query's list, too): the
 *   rows that attend it come back NaN in every element and in lse, every
 *   other row matches the reference, empty rows 0 / -inf, through forced
 *   split counts (the combines carry NaN) as in the CPU kernels' test.
 *   Page selection (sparse policies): the GPU's choice against the CPU's
 *   (attnd_kernel_select) on the same bounds and queries, GQA per KV head
 *   and MLA's 128 heads; the kept pages must agree (at most 1% of them may
 *   differ, on near-ties the two sums round differently).
 *
 * Bounds: bf16 outputs <= 1e-2 normwise relative per row, LSE <= 1e-3
 * absolute (-inf exactly for empty rows), split counts agree to 1e-5.
 * Prints one line per check; exits 0 when all pass, 1 on a failure, 77
 * (skip) without a usable GPU. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu_problem.h"

static int n_pass, n_fail;
static tu_rng rng;
static attnd_cuda_ctx *ctx;
static attnd_cuda_plan *plan;
static int ref_threads = 8;

#define OUT_BOUND 1e-2
#define LSE_BOUND 1e-3
#define SPLIT_BOUND 1e-5

static void verdict(int ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
    if (ok)
        n_pass++;
    else
        n_fail++;
}

static void must(attnd_status st, const attnd_error *err, const char *what)
{
    if (st != ATTND_OK) {
        fprintf(stderr, "%s: %s: %s\n", what, attnd_status_string(st), err->msg);
        exit(1);
    }
}

/* Plan with `splits` (and at most max_ctas CTAs), run, fetch. */
static void run_once(gp_problem *p, int splits, int max_ctas)
{
    attnd_error err = {0};
    attnd_cuda_plan_opts o = {splits, max_ctas};
    must(attnd_cuda_plan_make(plan, &p->b, p->indptr, p->last, &o, &err), &err, "plan_make");
    gp_poison(p, attnd_cuda_ctx_stream(ctx));
    must(attnd_cuda_decode_run(plan, &p->b, &err), &err, "decode_run");
    must(attnd_cuda_sync(ctx, &err), &err, "sync");
    gp_fetch(p);
}

static const char *split_name(int s, char *buf)
{
    if (s == ATTND_CUDA_SPLITS_AUTO)
        return "auto";
    if (s == ATTND_CUDA_SPLITS_MAX)
        return "max";
    sprintf(buf, "%d", s);
    return buf;
}

/* Build, reference, then run once per split count in `splits` (n of them);
 * every run is checked against the reference, and runs after the first
 * against the first (float32 outputs make that a float32-rounding check). */
static void decode_case(const char *tag, const gp_spec *sp, const int *splits, int n,
                        int max_ctas)
{
    gp_problem p;
    gp_build(&p, sp, &rng);
    gp_reference(&p, ref_threads);
    size_t rows = (size_t)sp->n_seqs * sp->q_tokens * sp->hq, nout = rows * p.dv;
    float *first = malloc(sizeof(float) * nout + 4);
    float *first_lse = malloc(sizeof(float) * rows + 4);
    char lens[160] = "", sb[16];
    for (int32_t i = 0, o = 0; i < p.n_lists && o < 140; i++)
        o += snprintf(lens + o, sizeof lens - (size_t)o, "%s%lld", i ? "," : "",
                      (long long)sp->lens[i]);
    for (int k = 0; k < n; k++) {
        run_once(&p, splits[k], max_ctas);
        double eo, el;
        gp_check(&p, &eo, &el);
        verdict(eo <= OUT_BOUND && el <= LSE_BOUND,
                "%-8s %-9s hq=%-3d hkv=%-2d S=%d lg=%d ps=%d out=%s splits=%-4s ctas=%d units=%d "
                "err=%.2e lse_err=%.1e lens=%s",
                tag, attnd_cuda_plan_kernel(plan), sp->hq, sp->mla ? 1 : sp->hkv, sp->q_tokens,
                sp->list_groups, sp->page_size, attnd_dtype_name(sp->out_dtype),
                split_name(splits[k], sb), attnd_cuda_plan_ctas(plan), attnd_cuda_plan_units(plan),
                eo, el, lens);
        if (k == 0) {
            memcpy(first, p.out, sizeof(float) * nout);
            memcpy(first_lse, p.lse, sizeof(float) * rows);
        } else {
            double worst = 0, worst_lse = 0;
            for (size_t r = 0; r < rows; r++) {
                double mx = 0, d = 0;
                for (int32_t e = 0; e < p.dv; e++) {
                    double a = first[r * p.dv + e], b = p.out[r * p.dv + e];
                    if (fabs(a) > mx)
                        mx = fabs(a);
                    if (!(fabs(a - b) <= d))
                        d = fabs(a - b);
                }
                double rel = mx > 0 ? d / mx : d;
                if (!(rel <= worst))
                    worst = rel;
                double la = first_lse[r], lb = p.lse[r];
                double ld = (isinf(la) && isinf(lb)) ? 0 : fabs(la - lb);
                if (!(ld <= worst_lse))
                    worst_lse = ld;
            }
            verdict(worst <= SPLIT_BOUND && worst_lse <= SPLIT_BOUND,
                    "%-8s splits=%s vs splits=%s: max rel diff %.2e, lse diff %.1e", tag,
                    split_name(splits[k], sb), splits[0] == 0 ? "auto" : "first", worst,
                    worst_lse);
        }
    }
    free(first);
    free(first_lse);
    gp_free(&p);
}

static gp_spec mla_spec(int32_t d_c, int32_t hq, int32_t S, int32_t n, const int64_t *lens)
{
    gp_spec s = {0};
    s.mla = 1;
    s.d_c = d_c;
    s.hq = hq;
    s.q_tokens = S;
    s.page_size = 64;
    s.list_groups = 1;
    s.n_seqs = n;
    s.lens = lens;
    s.out_dtype = ATTND_DTYPE_BF16;
    s.scale = (float)(1.0 / sqrt(192.0));
    return s;
}

static gp_spec gqa_spec(int32_t hq, int32_t hkv, int32_t d, int32_t S, int32_t n,
                        const int64_t *lens)
{
    gp_spec s = {0};
    s.hkv = hkv;
    s.head_dim = d;
    s.hq = hq;
    s.q_tokens = S;
    s.page_size = 64;
    s.list_groups = 1;
    s.n_seqs = n;
    s.lens = lens;
    s.out_dtype = ATTND_DTYPE_BF16;
    s.scale = (float)(1.0 / sqrt((double)d));
    return s;
}

/* Random list lengths: edge lengths first, then uniform in [1, max]. */
static int64_t *random_lens(int32_t n, int64_t max)
{
    static const int64_t edge[] = {0, 1, 63, 64, 65, 129};
    int64_t *l = malloc(sizeof(int64_t) * (size_t)n);
    for (int32_t i = 0; i < n; i++)
        l[i] = i < 6 ? edge[i] : tu_int(&rng, 1, max);
    /* shuffle so that edge cases land anywhere in the batch */
    for (int32_t i = n - 1; i > 0; i--) {
        int32_t k = (int32_t)tu_int(&rng, 0, i);
        int64_t t = l[i];
        l[i] = l[k];
        l[k] = t;
    }
    return l;
}

static void test_mla(void)
{
    static const int32_t heads[] = {1, 3, 9, 16, 63, 64, 126, 128};
    const int auto1[] = {ATTND_CUDA_SPLITS_AUTO};
    for (unsigned h = 0; h < sizeof heads / sizeof *heads; h++)
        for (int32_t S = 1; S <= 2; S++) {
            int64_t *lens = random_lens(8, 2500);
            gp_spec s = mla_spec(512, heads[h], S, 8, lens);
            decode_case("mla", &s, auto1, 1, 0);
            free(lens);
        }
    /* one very long sequence among short ones */
    {
        const int64_t lens[] = {5, 17, 33001, 64, 1};
        gp_spec s = mla_spec(512, 16, 1, 5, lens);
        decode_case("mla-long", &s, auto1, 1, 0);
    }
    /* split counts agree: forced 1, 2, 7, max and auto, float32 outputs */
    {
        const int sp[] = {1, 2, 7, ATTND_CUDA_SPLITS_MAX, ATTND_CUDA_SPLITS_AUTO};
        const int64_t lens[] = {0, 1, 100, 700, 3000, 64};
        for (int32_t hq = 16; hq <= 128; hq *= 8) {
            gp_spec s = mla_spec(512, hq, 2, 6, lens);
            s.out_dtype = ATTND_DTYPE_F32;
            decode_case("mla-split", &s, sp, 5, 0);
        }
    }
    /* TPLA shards */
    for (int32_t dc = 256; dc >= 128; dc /= 2)
        for (int32_t hq = 16; hq <= 128; hq *= 8)
            for (int32_t S = 1; S <= 2; S++) {
                int64_t *lens = random_lens(7, 2000);
                gp_spec s = mla_spec(dc, hq, S, 7, lens);
                decode_case("mla-tpla", &s, auto1, 1, 0);
                free(lens);
            }
    /* gather: page lists per head group */
    {
        int64_t *lens = random_lens(6 * 2, 1500);
        gp_spec s = mla_spec(512, 16, 1, 6, lens);
        s.list_groups = 2;
        decode_case("mla-gath", &s, auto1, 1, 0);
        free(lens);
        lens = random_lens(4 * 4, 1500);
        s = mla_spec(512, 128, 2, 4, lens);
        s.list_groups = 4;
        decode_case("mla-gath", &s, auto1, 1, 0);
        free(lens);
    }
    /* page size 128; few CTAs running many units each */
    {
        int64_t *lens = random_lens(9, 3000);
        gp_spec s = mla_spec(512, 64, 2, 9, lens);
        s.page_size = 128;
        decode_case("mla-ps128", &s, auto1, 1, 0);
        s.page_size = 64;
        s.out_dtype = ATTND_DTYPE_F32;
        const int sp[] = {ATTND_CUDA_SPLITS_AUTO, 3};
        decode_case("mla-3cta", &s, sp, 2, 3);
        free(lens);
    }
}

static void test_gqa(void)
{
    static const int32_t hh[][2] = {{32, 8}, {8, 8},  {1, 1},   {3, 1},   {3, 3},  {9, 3},
                                    {63, 9}, {64, 8}, {126, 9}, {128, 8}, {32, 1}, {128, 1}};
    const int auto1[] = {ATTND_CUDA_SPLITS_AUTO};
    for (unsigned h = 0; h < sizeof hh / sizeof *hh; h++)
        for (int32_t S = 1; S <= 2; S++) {
            int64_t *lens = random_lens(8, 2500);
            gp_spec s = gqa_spec(hh[h][0], hh[h][1], 128, S, 8, lens);
            decode_case("gqa", &s, auto1, 1, 0);
            free(lens);
        }
    static const int32_t h64[][2] = {{32, 8}, {64, 8}, {16, 1}};
    for (unsigned h = 0; h < 3; h++)
        for (int32_t S = 1; S <= 2; S++) {
            int64_t *lens = random_lens(7, 2500);
            gp_spec s = gqa_spec(h64[h][0], h64[h][1], 64, S, 7, lens);
            decode_case("gqa-d64", &s, auto1, 1, 0);
            free(lens);
        }
    {
        const int64_t lens[] = {3, 70001, 64, 1};
        gp_spec s = gqa_spec(32, 8, 128, 1, 4, lens);
        decode_case("gqa-long", &s, auto1, 1, 0);
    }
    {
        const int sp[] = {1, 2, 7, ATTND_CUDA_SPLITS_MAX, ATTND_CUDA_SPLITS_AUTO};
        const int64_t lens[] = {0, 1, 100, 700, 3000, 64};
        gp_spec s = gqa_spec(32, 8, 128, 2, 6, lens);
        s.out_dtype = ATTND_DTYPE_F32;
        decode_case("gqa-split", &s, sp, 5, 0);
        s = gqa_spec(128, 1, 64, 2, 6, lens);
        s.out_dtype = ATTND_DTYPE_F32;
        decode_case("gqa-split", &s, sp, 5, 0);
    }
    {
        int64_t *lens = random_lens(5 * 8, 1500);
        gp_spec s = gqa_spec(32, 8, 128, 2, 5, lens);
        s.list_groups = 8;
        decode_case("gqa-gath", &s, auto1, 1, 0);
        s.list_groups = 2;
        decode_case("gqa-gath", &s, auto1, 1, 0);
        free(lens);
    }
    for (int32_t ps = 128; ps <= 256; ps *= 2) {
        int64_t *lens = random_lens(7, 3000);
        gp_spec s = gqa_spec(32, 8, 128, 1, 7, lens);
        s.page_size = ps;
        decode_case("gqa-ps", &s, auto1, 1, 0);
        free(lens);
    }
    {
        int64_t *lens = random_lens(9, 3000);
        gp_spec s = gqa_spec(64, 8, 128, 2, 9, lens);
        s.out_dtype = ATTND_DTYPE_F32;
        const int sp[] = {ATTND_CUDA_SPLITS_AUTO, 5};
        decode_case("gqa-3cta", &s, sp, 2, 3);
        free(lens);
    }
}

/* The public combine against a float64 merge. */
/* ---- the non-finite rule ---------------------------------------------- */

/* Plant `value` at element `dim` of K (where 0) or V (1) of token `tok` of
 * list `li`, KV head kvh, in the device pool (the float64 copies stay
 * clean: they are the reference of the rows that must not see it). */
static void plant(gp_problem *p, int where, int32_t li, int32_t kvh, int64_t tok, int32_t dim,
                  float value)
{
    const attnd_kernel_kv_layout *l = &p->l;
    int64_t page = p->idx[p->indptr[li] + tok / l->page_size], slot = tok % l->page_size;
    int64_t off = page * l->page_stride;
    off += where == 0 ? kvh * l->k_head_stride + slot * l->k_token_stride + dim
                      : l->v_offset + kvh * l->v_head_stride + slot * l->v_token_stride + dim;
    uint16_t h = gp_bf16(value);
    GP_CK(cudaMemcpy((uint16_t *)p->d_pool + off, &h, sizeof h, cudaMemcpyHostToDevice));
}

static void nonfinite_case(const char *tag, gp_spec sp, int where, int last)
{
    static const float values[] = {NAN, INFINITY, -INFINITY};
    static const int splits[] = {1, 2, ATTND_CUDA_SPLITS_MAX, ATTND_CUDA_SPLITS_AUTO};
    gp_problem p;
    gp_build(&p, &sp, &rng);
    gp_reference(&p, ref_threads);
    const int32_t S = sp.q_tokens, hq = sp.hq, dv = p.dv, hkv = sp.mla ? 1 : sp.hkv;
    const int32_t seq = 0, kvh = (int32_t)tu_int(&rng, 0, hkv - 1);
    const int64_t tok = last ? sp.lens[seq] - 1 : tu_int(&rng, 0, sp.lens[seq] - 1);
    const int32_t dim = (int32_t)tu_int(&rng, 0, (where == 0 ? p.dk : dv) - 1);
    const float value = values[tu_int(&rng, 0, 2)];
    plant(&p, where, seq, kvh, tok, dim, value);
    for (int k = 0; k < 4; k++) {
        run_once(&p, splits[k], 0);
        int ok = 1, poisoned = 0;
        double worst = 0;
        for (int32_t i = 0; i < sp.n_seqs; i++)
            for (int32_t s = 0; s < S; s++)
                for (int32_t h = 0; h < hq; h++) {
                    size_t r = ((size_t)i * S + s) * hq + h;
                    int64_t vis = sp.lens[i] - (S - 1 - s);
                    const float *o = p.out + r * dv;
                    int sees = i == seq && vis > tok && h / (hq / hkv) == kvh;
                    if (sees) {
                        poisoned++;
                        ok &= isnan(p.lse[r]);
                        for (int32_t e = 0; e < dv; e++)
                            ok &= isnan(o[e]);
                    } else if (vis <= 0) {
                        ok &= isinf(p.lse[r]) && p.lse[r] < 0;
                        for (int32_t e = 0; e < dv; e++)
                            ok &= o[e] == 0.0f;
                    } else {
                        double e = tu_rel_err_f32(o, p.ref + r * dv, (size_t)dv);
                        worst = e > worst ? e : worst;
                        ok &= e <= OUT_BOUND && fabs(p.lse[r] - p.rlse[r]) <= LSE_BOUND;
                    }
                }
        char sb[16];
        verdict(ok && poisoned > 0,
                "%-8s %s %s at %s tok %lld of %lld dim %d S=%d splits=%-4s: %d rows NaN, "
                "clean rows err %.2e",
                tag, attnd_cuda_plan_kernel(plan), isnan(value) ? "NaN" : value > 0 ? "+inf" : "-inf",
                where == 0 ? "K" : "V", (long long)tok, (long long)sp.lens[seq], dim, S,
                split_name(splits[k], sb), poisoned, worst);
    }
    gp_free(&p);
}

static void test_nonfinite(void)
{
    const int64_t lens[] = {1500, 0, 70, 3};
    for (int last = 0; last <= 1; last++) {
        gp_spec m = mla_spec(512, last ? 16 : 128, last ? 2 : 1, 4, lens);
        nonfinite_case("nan-mla", m, 0, last); /* MLA: K's latent is V too */
        for (int where = 0; where <= 1; where++) {
            gp_spec g = gqa_spec(32, 8, 128, last ? 2 : 1, 4, lens);
            nonfinite_case("nan-gqa", g, where, last);
        }
    }
}

static void test_combine(void)
{
    for (int32_t d = 128; d <= 512; d *= 4)
        for (int32_t np = 1; np <= 7; np += 3)
            for (int f32 = 0; f32 <= 1; f32++) {
                const int64_t rows = 100;
                size_t no = (size_t)np * rows * d;
                float *po = malloc(sizeof(float) * no), *pl = malloc(sizeof(float) * np * rows);
                for (size_t j = 0; j < no; j++)
                    po[j] = (float)tu_normal(&rng);
                for (int64_t j = 0; j < np * rows; j++) {
                    int64_t r = j % rows;
                    /* row 0 all empty, row 1 one live part, others mixed */
                    pl[j] = (r == 0 || (r == 1 && j >= rows) || tu_unif(&rng) < 0.2)
                                ? -INFINITY
                                : (float)(5 * tu_normal(&rng));
                }
                float *d_po, *d_pl, *d_lse;
                void *d_out;
                GP_CK(cudaMalloc((void **)&d_po, sizeof(float) * no));
                GP_CK(cudaMalloc((void **)&d_pl, sizeof(float) * np * rows));
                GP_CK(cudaMalloc(&d_out, sizeof(float) * rows * d));
                GP_CK(cudaMalloc((void **)&d_lse, sizeof(float) * rows));
                GP_CK(cudaMemcpy(d_po, po, sizeof(float) * no, cudaMemcpyHostToDevice));
                GP_CK(cudaMemcpy(d_pl, pl, sizeof(float) * np * rows, cudaMemcpyHostToDevice));
                GP_CK(cudaMemset(d_out, 0xff, sizeof(float) * rows * d));
                GP_CK(cudaMemset(d_lse, 0xff, sizeof(float) * rows));
                GP_CK(cudaDeviceSynchronize()); /* the kernel runs on another stream */
                attnd_error err = {0};
                must(attnd_cuda_combine_states(ctx, np, rows, d, d_po, d_pl,
                                               f32 ? ATTND_DTYPE_F32 : ATTND_DTYPE_BF16, d_out,
                                               d_lse, &err),
                     &err, "combine_states");
                must(attnd_cuda_sync(ctx, &err), &err, "sync");
                float *out = malloc(sizeof(float) * rows * d), *lse = malloc(sizeof(float) * rows);
                if (f32) {
                    GP_CK(cudaMemcpy(out, d_out, sizeof(float) * rows * d, cudaMemcpyDeviceToHost));
                } else {
                    uint16_t *h = malloc(2 * (size_t)rows * d);
                    GP_CK(cudaMemcpy(h, d_out, 2 * (size_t)rows * d, cudaMemcpyDeviceToHost));
                    for (int64_t j = 0; j < rows * d; j++)
                        out[j] = attnd_dtype_bf16_to_f32(h[j]);
                    free(h);
                }
                GP_CK(cudaMemcpy(lse, d_lse, sizeof(float) * rows, cudaMemcpyDeviceToHost));
                double worst = 0, worst_lse = 0;
                double *ref = malloc(sizeof(double) * d);
                for (int64_t r = 0; r < rows; r++) {
                    double M = -INFINITY, sum = 0;
                    for (int32_t k = 0; k < np; k++)
                        M = fmax(M, pl[k * rows + r]);
                    for (int32_t e = 0; e < d; e++)
                        ref[e] = 0;
                    double L = -INFINITY;
                    if (!isinf(M)) {
                        for (int32_t k = 0; k < np; k++)
                            sum += exp(pl[k * rows + r] - M);
                        L = M + log(sum);
                        for (int32_t k = 0; k < np; k++) {
                            double w = exp(pl[k * rows + r] - L);
                            for (int32_t e = 0; e < d; e++)
                                ref[e] += w * po[((size_t)k * rows + r) * d + e];
                        }
                    }
                    double e = tu_rel_err_f32(out + r * d, ref, (size_t)d);
                    if (!(e <= worst))
                        worst = e;
                    double le = isinf(L) ? ((isinf(lse[r]) && lse[r] < 0) ? 0 : INFINITY)
                                         : fabs(lse[r] - L);
                    if (!(le <= worst_lse))
                        worst_lse = le;
                }
                double bound = f32 ? 1e-5 : OUT_BOUND;
                verdict(worst <= bound && worst_lse <= 1e-5,
                        "combine  parts=%d rows=%lld d=%d out=%s err=%.2e lse_err=%.1e", np,
                        (long long)rows, d, f32 ? "f32" : "bf16", worst, worst_lse);
                free(ref);
                free(po);
                free(pl);
                free(out);
                free(lse);
                cudaFree(d_po);
                cudaFree(d_pl);
                cudaFree(d_out);
                cudaFree(d_lse);
            }
}

/* Sylvester-ordered normalized FWHT of one row, in float64. */
static void fwht64(double *x, int32_t n)
{
    for (int32_t h = 1; h < n; h <<= 1)
        for (int32_t i = 0; i < n; i += 2 * h)
            for (int32_t j = i; j < i + h; j++) {
                double a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    double s = 1.0 / sqrt((double)n);
    for (int32_t i = 0; i < n; i++)
        x[i] *= s;
}

/* attnd_cuda_scatter: random copies (16-, 4- and 1-byte aligned, one row
 * or strided) from pinned host memory or device memory into disjoint parts
 * of a device buffer, descriptors in pinned or device memory; the buffer
 * must equal the same copies done on the host, bytes outside them
 * untouched. */
static void test_scatter(void)
{
    enum { DST = 1 << 20, SRC = 1 << 20, SLOT = 16384, NCOPY = DST / SLOT };
    for (int round = 0; round < 6; round++) {
        const int src_dev = round & 1, desc_dev = (round >> 1) & 1;
        unsigned char *want = malloc(DST), *got = malloc(DST), *hsrc;
        attnd_cuda_copy *hd;
        void *d, *dsrc, *dd;
        GP_CK(cudaMallocHost((void **)&hsrc, SRC));
        GP_CK(cudaMallocHost((void **)&hd, NCOPY * sizeof *hd));
        GP_CK(cudaMalloc(&d, DST));
        GP_CK(cudaMalloc(&dsrc, SRC));
        GP_CK(cudaMalloc(&dd, NCOPY * sizeof *hd));
        for (size_t i = 0; i < DST; i++)
            want[i] = (unsigned char)tu_next(&rng);
        for (size_t i = 0; i < SRC; i++)
            hsrc[i] = (unsigned char)tu_next(&rng);
        GP_CK(cudaMemcpy(d, want, DST, cudaMemcpyHostToDevice));
        GP_CK(cudaMemcpy(dsrc, hsrc, SRC, cudaMemcpyHostToDevice));
        const unsigned char *src = src_dev ? dsrc : hsrc;
        int n = (int)(tu_next(&rng) % NCOPY) + 1;
        if (round == 5)
            n = 0;
        for (int j = 0; j < n; j++) {
            /* copy j writes inside slot j of the destination only */
            static const uint32_t aligns[] = {16, 4, 1};
            const uint32_t a = aligns[tu_next(&rng) % 3];
            uint32_t rows = (uint32_t)(tu_next(&rng) % 8) + 1;
            uint32_t row_bytes = a * ((uint32_t)(tu_next(&rng) % (SLOT / 16 / a)) + 1);
            uint64_t dpitch = row_bytes + a * (tu_next(&rng) % 4);
            while (rows > 1 && (rows - 1) * dpitch + row_bytes + 64 > SLOT)
                rows--;
            uint64_t spitch = row_bytes + a * (tu_next(&rng) % 4);
            uint64_t doff = (uint64_t)j * SLOT + a * (tu_next(&rng) % (32 / a + 1));
            uint64_t soff = a * (tu_next(&rng) % ((SRC - rows * spitch) / a));
            hd[j] = (attnd_cuda_copy){.dst = (char *)d + doff, .src = src + soff,
                                      .dst_pitch = dpitch, .src_pitch = spitch,
                                      .row_bytes = row_bytes, .rows = rows};
            for (uint32_t r = 0; r < rows; r++)
                memcpy(want + doff + r * dpitch, hsrc + soff + r * spitch, row_bytes);
        }
        const attnd_cuda_copy *desc = hd;
        if (desc_dev) {
            GP_CK(cudaMemcpy(dd, hd, (size_t)n * sizeof *hd + 1, cudaMemcpyHostToDevice));
            desc = dd;
        }
        GP_CK(cudaDeviceSynchronize()); /* the kernel runs on another stream */
        attnd_error err = {0};
        must(attnd_cuda_scatter(ctx, desc, n, &err), &err, "scatter");
        must(attnd_cuda_sync(ctx, &err), &err, "sync");
        GP_CK(cudaMemcpy(got, d, DST, cudaMemcpyDeviceToHost));
        size_t bad = 0;
        for (size_t i = 0; i < DST; i++)
            bad += got[i] != want[i];
        verdict(bad == 0, "scatter %d copies, source %s, descriptors %s: %zu bytes differ", n,
                src_dev ? "device" : "pinned host", desc_dev ? "device" : "pinned host", bad);
        cudaFree(dd);
        cudaFree(dsrc);
        cudaFree(d);
        cudaFreeHost(hd);
        cudaFreeHost(hsrc);
        free(got);
        free(want);
    }
    attnd_error err = {0};
    verdict(attnd_cuda_scatter(ctx, NULL, -1, &err) == ATTND_ERR_INVALID_ARGUMENT &&
                strstr(err.msg, "scatter"),
            "scatter rejects n = -1: %s", err.msg);
}

/* attnd_cuda_gather: random tokens of a random pool (MLA and TPLA-shard
 * rows, GQA whole tokens and per KV head) gathered into pages of a buffer
 * prefilled with a pattern; the buffer must equal the same copies done on
 * the host, the bytes of empty slots (and a GQA slot's other heads)
 * untouched. Bitwise: a copy. */
static void gather_case(int mla, int32_t d_c, int32_t hkv, int32_t D, int per_head)
{
    attnd_kernel_kv_layout l;
    if (mla)
        attnd_kernel_kv_layout_mla(&l, d_c, 64, 64, ATTND_DTYPE_BF16);
    else
        attnd_kernel_kv_layout_gqa(&l, hkv, D, 64, ATTND_DTYPE_BF16);
    const int32_t P = l.page_size, hs = per_head ? l.n_kv_heads : 1;
    const int64_t pool_pages = 37, n_pages = 11;
    const size_t pb = attnd_kernel_kv_layout_page_bytes(&l);
    const int64_t entries = n_pages * hs * P;
    uint16_t *pool = malloc(pb * (size_t)pool_pages), *want = malloc(pb * (size_t)n_pages);
    uint16_t *got = malloc(pb * (size_t)n_pages);
    int32_t *src = malloc(sizeof(int32_t) * (size_t)entries);
    for (size_t i = 0; i < pb / 2 * (size_t)pool_pages; i++)
        pool[i] = (uint16_t)tu_next(&rng);
    for (size_t i = 0; i < pb / 2 * (size_t)n_pages; i++)
        want[i] = (uint16_t)(0x7fc0 + (i & 31)); /* NaN patterns: what was there */
    for (int64_t e = 0; e < entries; e++) {
        /* a quarter of the slots empty, a few past the pool (never copied) */
        uint64_t r = tu_next(&rng) % 16;
        src[e] = r < 4 ? -1 : r == 4 ? (int32_t)(pool_pages * P + (int64_t)(tu_next(&rng) % 99))
                                     : (int32_t)(tu_next(&rng) % (uint64_t)(pool_pages * P));
    }
    for (int64_t e = 0; e < entries; e++) { /* the host's copies */
        int32_t t = src[e];
        if (t < 0 || t >= pool_pages * P)
            continue;
        const int32_t s = (int32_t)(e % P), h = (int32_t)(e / P % hs);
        const int64_t p = e / P / hs;
        const uint16_t *from = pool + (size_t)(t / P) * (pb / 2);
        uint16_t *to = want + (size_t)p * (pb / 2);
        const int32_t h0 = per_head ? h : 0, h1 = per_head ? h + 1 : l.n_kv_heads;
        for (int32_t k = h0; k < h1; k++) {
            memcpy(to + k * l.k_head_stride + s * l.k_token_stride,
                   from + k * l.k_head_stride + (t % P) * l.k_token_stride, (size_t)l.d_k * 2);
            if (!l.v_in_k)
                memcpy(to + l.v_offset + k * l.v_head_stride + s * l.v_token_stride,
                       from + l.v_offset + k * l.v_head_stride + (t % P) * l.v_token_stride,
                       (size_t)l.d_v * 2);
        }
    }
    void *dpool, *ddst, *dsrc;
    GP_CK(cudaMalloc(&dpool, pb * (size_t)pool_pages));
    GP_CK(cudaMalloc(&ddst, pb * (size_t)n_pages));
    GP_CK(cudaMalloc(&dsrc, sizeof(int32_t) * (size_t)entries));
    GP_CK(cudaMemcpy(dpool, pool, pb * (size_t)pool_pages, cudaMemcpyHostToDevice));
    for (size_t i = 0; i < pb / 2 * (size_t)n_pages; i++)
        got[i] = (uint16_t)(0x7fc0 + (i & 31));
    GP_CK(cudaMemcpy(ddst, got, pb * (size_t)n_pages, cudaMemcpyHostToDevice));
    GP_CK(cudaMemcpy(dsrc, src, sizeof(int32_t) * (size_t)entries, cudaMemcpyHostToDevice));
    GP_CK(cudaDeviceSynchronize());
    attnd_error err = {0};
    must(attnd_cuda_gather(ctx, &l, dpool, pool_pages, ddst, n_pages, hs, dsrc, &err), &err,
         "gather");
    must(attnd_cuda_sync(ctx, &err), &err, "sync");
    GP_CK(cudaMemcpy(got, ddst, pb * (size_t)n_pages, cudaMemcpyDeviceToHost));
    size_t bad = 0;
    for (size_t i = 0; i < pb / 2 * (size_t)n_pages; i++)
        bad += got[i] != want[i];
    verdict(bad == 0, "gather %s d %d, %d KV heads, %s: %zu of %zu elements differ",
            mla ? "MLA" : "GQA", mla ? d_c : D, l.n_kv_heads,
            per_head ? "per KV head" : "whole tokens", bad, pb / 2 * (size_t)n_pages);
    cudaFree(dsrc);
    cudaFree(ddst);
    cudaFree(dpool);
    free(src);
    free(got);
    free(want);
    free(pool);
}

static void test_gather(void)
{
    gather_case(1, 512, 1, 0, 0);
    gather_case(1, 256, 1, 0, 0); /* a TPLA latent shard */
    gather_case(0, 0, 8, 128, 0);
    gather_case(0, 0, 8, 128, 1);
    gather_case(0, 0, 4, 64, 1);
    attnd_kernel_kv_layout l;
    attnd_kernel_kv_layout_mla(&l, 512, 64, 64, ATTND_DTYPE_BF16);
    attnd_error err = {0};
    verdict(attnd_cuda_gather(ctx, &l, NULL, 1, NULL, 1, 2, NULL, &err) ==
                    ATTND_ERR_INVALID_ARGUMENT && strstr(err.msg, "n_heads"),
            "gather refuses MLA with 2 head slots: %s", err.msg);
}

static void test_hadamard(void)
{
    static const int32_t dims[] = {2, 16, 128, 256, 512, 1024, 4096, 8192};
    for (unsigned di = 0; di < sizeof dims / sizeof *dims; di++)
        for (int f32 = 0; f32 <= 1; f32++) {
            const int32_t n = dims[di];
            const int64_t rows = 37, stride = n + (di & 1) * 8;
            const size_t es = f32 ? 4 : 2, tot = (size_t)rows * stride;
            void *h = malloc(tot * es), *back = malloc(tot * es);
            double *x64 = malloc(sizeof(double) * tot);
            for (size_t j = 0; j < tot; j++) {
                float v = (float)tu_normal(&rng);
                if (f32) {
                    ((float *)h)[j] = v;
                    x64[j] = v;
                } else {
                    ((uint16_t *)h)[j] = attnd_dtype_f32_to_bf16(v);
                    x64[j] = attnd_dtype_bf16_to_f32(((uint16_t *)h)[j]);
                }
            }
            void *d;
            GP_CK(cudaMalloc(&d, tot * es));
            GP_CK(cudaMemcpy(d, h, tot * es, cudaMemcpyHostToDevice));
            GP_CK(cudaDeviceSynchronize()); /* the kernel runs on another stream */
            attnd_error err = {0};
            attnd_dtype t = f32 ? ATTND_DTYPE_F32 : ATTND_DTYPE_BF16;
            must(attnd_cuda_hadamard(ctx, t, d, rows, n, stride, &err), &err, "hadamard");
            must(attnd_cuda_sync(ctx, &err), &err, "sync");
            GP_CK(cudaMemcpy(back, d, tot * es, cudaMemcpyDeviceToHost));
            double worst = 0, pad_ok = 1;
            float *got = malloc(sizeof(float) * n);
            for (int64_t r = 0; r < rows; r++) {
                fwht64(x64 + r * stride, n);
                for (int32_t i = 0; i < n; i++)
                    got[i] = f32 ? ((float *)back)[r * stride + i]
                                 : attnd_dtype_bf16_to_f32(((uint16_t *)back)[r * stride + i]);
                double e = tu_rel_err_f32(got, x64 + r * stride, (size_t)n);
                if (!(e <= worst))
                    worst = e;
                for (int64_t i = n; i < stride; i++) /* padding untouched */
                    if (memcmp((char *)back + (r * stride + i) * es, (char *)h + (r * stride + i) * es, es))
                        pad_ok = 0;
            }
            /* applying it twice gives the input back (float32) */
            double twice = 0;
            if (f32) {
                must(attnd_cuda_hadamard(ctx, t, d, rows, n, stride, &err), &err, "hadamard");
                must(attnd_cuda_sync(ctx, &err), &err, "sync");
                GP_CK(cudaMemcpy(back, d, tot * es, cudaMemcpyDeviceToHost));
                for (int64_t r = 0; r < rows; r++)
                    for (int32_t i = 0; i < n; i++)
                        twice = fmax(twice, fabs(((float *)back)[r * stride + i] -
                                                 ((float *)h)[r * stride + i]));
            }
            double bound = f32 ? 1e-5 : OUT_BOUND;
            verdict(worst <= bound && pad_ok && twice <= 1e-4,
                    "hadamard dim=%d rows=%lld stride=%lld %s err=%.2e twice=%.1e", n,
                    (long long)rows, (long long)stride, f32 ? "f32" : "bf16", worst, twice);
            free(got);
            free(h);
            free(back);
            free(x64);
            cudaFree(d);
        }
}

/* The plan rejects what the kernels cannot do, naming the field. */
static void test_rejects(void)
{
    const int64_t lens[] = {10};
    gp_spec s = gqa_spec(32, 8, 128, 1, 1, lens);
    gp_problem p;
    gp_build(&p, &s, &rng);
    attnd_error err = {0};
    attnd_cuda_batch b = p.b;
    b.n_q_heads = 30;
    attnd_status st = attnd_cuda_plan_make(plan, &b, p.indptr, p.last, NULL, &err);
    verdict(st == ATTND_ERR_INVALID_ARGUMENT && strstr(err.msg, "n_q_heads"),
            "reject   n_q_heads 30 over 8 KV heads: %s", err.msg);
    b = p.b;
    attnd_kernel_kv_layout_gqa(&b.kv, 8, 96, 64, ATTND_DTYPE_BF16);
    st = attnd_cuda_plan_make(plan, &b, p.indptr, p.last, NULL, &err);
    verdict(st == ATTND_ERR_UNIMPLEMENTED, "reject   head dim 96: %s", err.msg);
    b = p.b;
    int32_t bad_last[2] = {65, 0};
    st = attnd_cuda_plan_make(plan, &b, p.indptr, bad_last, NULL, &err);
    verdict(st == ATTND_ERR_INVALID_ARGUMENT && strstr(err.msg, "last_page_len"),
            "reject   last_page_len 65 of 64: %s", err.msg);
    gp_free(&p);
}

/* One selection problem on both sides: n_seqs sequences of n_pages
 * scattered pages each, keep about a quarter with a sink and a newest;
 * rows of agg heads summed (head_agg; 1: a row per head). */
/* select_case's pages repeat the bounds of the first select_repeat (0:
 * every page its own): ties, which keep the earliest */
static int64_t select_repeat;

static void select_case(int32_t hq, int32_t hkv, int32_t dk, int32_t lg, int32_t agg, int32_t qt,
                        int32_t n_seqs, int32_t n_pages, const char *what)
{
    attnd_kernel_kv_layout l;
    attnd_error err = {0};
    if (hkv == 1 && dk == 576)
        attnd_kernel_kv_layout_mla(&l, 512, 64, 64, ATTND_DTYPE_BF16);
    else
        attnd_kernel_kv_layout_gqa(&l, hkv, dk, 64, ATTND_DTYPE_BF16);
    const int64_t pool = (int64_t)n_seqs * n_pages + 7;
    const size_t be = attnd_kernel_kv_bounds_elems(&l) * (size_t)pool;
    uint16_t *bounds = malloc(be * 2);
    float *wire = malloc(sizeof(float) * (size_t)attnd_kernel_kv_layout_token_elems(&l));
    for (int64_t pg = 0; pg < pool; pg++) {
        attnd_kernel_kv_bounds_reset(&l, bounds, pool, pg);
        for (int t = 0; t < 8; t++) {
            for (int64_t e = 0; e < attnd_kernel_kv_layout_token_elems(&l); e++)
                wire[e] = (float)tu_normal(&rng);
            attnd_kernel_kv_bounds_add(&l, bounds, pool, pg, 1, ATTND_DTYPE_F32, wire);
        }
    }
    /* edge rows for the compact bounds: page 2 all +0 and -0 keys, page 4
     * one huge element (an unbounded row: always kept) */
    for (int64_t pg = 2; pg <= 4 && pg < pool; pg += 2) {
        attnd_kernel_kv_bounds_reset(&l, bounds, pool, pg);
        for (int t = 0; t < 2; t++) {
            for (int64_t e = 0; e < attnd_kernel_kv_layout_token_elems(&l); e++)
                wire[e] = pg == 2 ? (t ? -0.0f : 0.0f) : (float)tu_normal(&rng);
            if (pg == 4)
                wire[5] = 3e38f;
            attnd_kernel_kv_bounds_add(&l, bounds, pool, pg, 1, ATTND_DTYPE_F32, wire);
        }
    }
    for (int64_t pg = select_repeat; select_repeat > 0 && pg < pool; pg++)
        for (int32_t h = 0; h < hkv; h++)
            memcpy(bounds + attnd_kernel_kv_bounds_at(&l, pool, h, pg),
                   bounds + attnd_kernel_kv_bounds_at(&l, pool, h, pg % select_repeat),
                   attnd_kernel_kv_bounds_elems(&l) / (size_t)hkv * 2);
    const size_t nq = (size_t)n_seqs * qt * hq * dk;
    uint16_t *q = malloc(nq * 2);
    for (size_t i = 0; i < nq; i++)
        q[i] = attnd_dtype_f32_to_bf16((float)tu_normal(&rng));
    const int32_t n_lists = n_seqs * lg;
    attnd_kernel_select_list *lists = calloc((size_t)n_lists, sizeof *lists);
    int32_t *cand = malloc(sizeof(int32_t) * (size_t)n_seqs * n_pages), out = 0;
    for (int64_t j = 0; j < (int64_t)n_seqs * n_pages; j++)
        cand[j] = (int32_t)((j * 7919) % pool); /* scattered, distinct */
    for (int32_t i = 0; i < n_seqs; i++)
        for (int32_t g = 0; g < lg; g++) {
            attnd_kernel_select_list *sl = &lists[i * lg + g];
            *sl = (attnd_kernel_select_list){.seq = i,
                                             .group = g,
                                             .cand0 = i * n_pages,
                                             .n_cand = n_pages,
                                             .keep = (n_pages + 3) / 4,
                                             .n_head = 1,
                                             .n_tail = 1,
                                             .out0 = out};
            out += sl->keep;
        }
    int32_t *cpu = malloc(sizeof(int32_t) * (size_t)out), *gpu = malloc(sizeof(int32_t) * (size_t)out);
    int32_t *gpos = malloc(sizeof(int32_t) * (size_t)out);
    attnd_kernel_select_batch sb = {.n_lists = n_lists,
                                    .lists = lists,
                                    .n_seqs = n_seqs,
                                    .q_tokens = qt,
                                    .n_q_heads = hq,
                                    .list_groups = lg,
                                    .head_agg = agg,
                                    .q_dtype = ATTND_DTYPE_BF16,
                                    .q = q,
                                    .kv = &l,
                                    .bounds = bounds,
                                    .bounds_pages = pool,
                                    .cand_idx = cand,
                                    .sel_pages = cpu};
    int64_t wf = attnd_kernel_select_prepare(&sb, &err);
    must(wf >= 0 ? ATTND_OK : ATTND_ERR_INTERNAL, &err, "select_prepare");
    sb.work = malloc(sizeof(float) * (size_t)wf);
    attnd_kernel_select(&sb);
    /* each scoring unit's list: half the cases hand it to the kernel (as
     * the engine does), the others let the kernel look it up */
    int32_t n_chunks = 0;
    int32_t *umap = malloc(sizeof(int32_t) * ((size_t)n_lists *
                                               ((size_t)n_pages + ATTND_KERNEL_SELECT_CHUNK - 1) /
                                               ATTND_KERNEL_SELECT_CHUNK + 1));
    for (int32_t k = 0; k < n_lists; k++) {
        const attnd_kernel_select_list *sl = &lists[k];
        int32_t ch = attnd_kernel_select_list_units(sl);
        for (int32_t u = 0; u < ch; u++)
            umap[sl->chunk0 + u] = k;
        n_chunks = sl->chunk0 + ch > n_chunks ? sl->chunk0 + ch : n_chunks;
    }
    const int with_map = (int)(tu_next(&rng) & 1);
    void *d_q, *d_b, *d_l, *d_c, *d_o, *d_w, *d_p, *d_u;
    cudaMalloc(&d_u, sizeof(int32_t) * (size_t)(n_chunks + 1));
    cudaMemcpy(d_u, umap, sizeof(int32_t) * (size_t)n_chunks, cudaMemcpyHostToDevice);
    cudaMalloc(&d_q, nq * 2);
    cudaMalloc(&d_b, be * 2);
    cudaMalloc(&d_l, sizeof *lists * (size_t)n_lists);
    cudaMalloc(&d_c, sizeof(int32_t) * (size_t)n_seqs * n_pages);
    cudaMalloc(&d_o, sizeof(int32_t) * (size_t)out);
    cudaMalloc(&d_w, sizeof(float) * (size_t)wf);
    cudaMalloc(&d_p, sizeof(int32_t) * (size_t)out);
    cudaMemcpy(d_q, q, nq * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(d_b, bounds, be * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(d_l, lists, sizeof *lists * (size_t)n_lists, cudaMemcpyHostToDevice);
    cudaMemcpy(d_c, cand, sizeof(int32_t) * (size_t)n_seqs * n_pages, cudaMemcpyHostToDevice);
    attnd_cuda_select cs = {.n_lists = n_lists, .n_chunks = n_chunks, .lists = d_l,
                            .n_seqs = n_seqs, .q_tokens = qt, .n_q_heads = hq, .list_groups = lg,
                            .head_agg = agg, .kv = l, .q = d_q, .bounds = d_b, .bounds_pages = pool,
                            .cand_idx = d_c, .sel_pages = d_o, .sel_pos = d_p, .work = d_w,
                            .unit_list = with_map ? (const int32_t *)d_u : NULL};
    must(attnd_cuda_select_run(ctx, &cs, &err), &err, "select_run");
    must(attnd_cuda_sync(ctx, &err), &err, "sync");
    cudaMemcpy(gpu, d_o, sizeof(int32_t) * (size_t)out, cudaMemcpyDeviceToHost);
    cudaMemcpy(gpos, d_p, sizeof(int32_t) * (size_t)out, cudaMemcpyDeviceToHost);
    int32_t differ = 0, disorder = 0;
    for (int32_t k = 0; k < n_lists; k++) { /* in candidate order, each the candidate it names */
        const attnd_kernel_select_list *sl = &lists[k];
        for (int32_t j = 0; j < sl->keep; j++) {
            const int32_t at = gpos[sl->out0 + j];
            disorder += at < 0 || at >= sl->n_cand || (j > 0 && at <= gpos[sl->out0 + j - 1]) ||
                        gpu[sl->out0 + j] != cand[sl->cand0 + (at < 0 || at >= sl->n_cand ? 0 : at)];
            disorder += j < sl->n_head && at != j; /* the sink pages */
            disorder += j >= sl->keep - sl->n_tail && at != sl->n_cand - (sl->keep - j);
        }
    }
    verdict(disorder == 0, "select   %s: %d kept pages out of order, not their candidate, or "
                           "missing a sink or newest page", what, disorder);
    for (int32_t k = 0; k < n_lists; k++) { /* as sets: both are in candidate order */
        const attnd_kernel_select_list *sl = &lists[k];
        for (int32_t j = 0; j < sl->keep; j++) {
            int found = 0;
            for (int32_t m = 0; m < sl->keep && !found; m++)
                found = gpu[sl->out0 + j] == cpu[sl->out0 + m];
            differ += !found;
        }
    }
    verdict(differ * 100 <= out, "select   %s%s: %d of %d kept pages differ from the CPU's", what,
            with_map ? " (units' lists given)" : "", differ, out);

    /* compact bounds: made on the GPU from the bf16 rows, bitwise the
     * CPU's; scored with the CPU's integers, exactly the CPU's pages */
    const size_t rb8 = attnd_kernel_kv_bounds8_row(&l), b8n = rb8 * (size_t)hkv * (size_t)pool;
    uint8_t *b8 = malloc(b8n), *g8 = malloc(b8n);
    int32_t *all = malloc(sizeof(int32_t) * (size_t)pool);
    for (int64_t pg = 0; pg < pool; pg++) {
        attnd_kernel_kv_bounds8_make(&l, bounds, b8, pool, pg);
        all[pg] = (int32_t)(pool - 1 - pg); /* any order */
    }
    void *d_b8, *d_all;
    cudaMalloc(&d_b8, b8n);
    cudaMalloc(&d_all, sizeof(int32_t) * (size_t)pool);
    cudaMemset(d_b8, 0xa5, b8n);
    cudaMemcpy(d_all, all, sizeof(int32_t) * (size_t)pool, cudaMemcpyHostToDevice);
    cudaDeviceSynchronize();
    must(attnd_cuda_bounds8_make(ctx, &l, d_b, d_b8, pool, d_all, (int32_t)pool, &err), &err,
         "bounds8_make");
    must(attnd_cuda_sync(ctx, &err), &err, "sync");
    cudaMemcpy(g8, d_b8, b8n, cudaMemcpyDeviceToHost);
    int64_t rows_differ = 0;
    for (int32_t h = 0; h < hkv; h++)
        for (int64_t pg = 0; pg < pool; pg++) {
            const size_t at = attnd_kernel_kv_bounds8_at(&l, pool, h, pg);
            rows_differ += memcmp(b8 + at, g8 + at, 8 + 2 * (size_t)dk) != 0;
        }
    verdict(rows_differ == 0, "bounds8  %s: %lld of %lld compact rows differ from the CPU's", what,
            (long long)rows_differ, (long long)hkv * pool);
    sb.bounds8 = b8;
    attnd_kernel_select(&sb); /* the CPU's pages on compact bounds, into cpu */
    cs.bounds8 = d_b8;
    cs.bounds = NULL;
    cudaMemset(d_o, 0xff, sizeof(int32_t) * (size_t)out);
    cudaDeviceSynchronize();
    must(attnd_cuda_select_run(ctx, &cs, &err), &err, "select_run (compact)");
    must(attnd_cuda_sync(ctx, &err), &err, "sync");
    cudaMemcpy(gpu, d_o, sizeof(int32_t) * (size_t)out, cudaMemcpyDeviceToHost);
    int32_t differ8 = 0;
    for (int32_t j = 0; j < out; j++)
        differ8 += gpu[j] != cpu[j];
    verdict(differ8 == 0, "select   %s, compact bounds: %d of %d kept pages differ from the CPU's",
            what, differ8, out);
    cudaFree(d_b8), cudaFree(d_all);
    free(all);
    free(g8);
    free(b8);
    cudaFree(d_q), cudaFree(d_b), cudaFree(d_l), cudaFree(d_c), cudaFree(d_o), cudaFree(d_w);
    cudaFree(d_p), cudaFree(d_u);
    free(umap);
    free(gpos);
    free(sb.work);
    free(cpu);
    free(gpu);
    free(cand);
    free(lists);
    free(q);
    free(wire);
    free(bounds);
}

/* attnd_cuda_bounds_fold against the host's fold of the same bf16
 * entries (attnd_kernel_kv_bounds_add) and its compact rows against
 * attnd_kernel_kv_bounds8_make's, bitwise: pages started over
 * (slot0 0) and pages folded into bounds from earlier tokens, one fold
 * dropped (n 0), keys with -0 and +0, NaN and infinities planted. */
static void fold_case(int mla)
{
    attnd_kernel_kv_layout l;
    attnd_error err = {0};
    if (mla)
        attnd_kernel_kv_layout_mla(&l, 512, 64, 64, ATTND_DTYPE_BF16);
    else
        attnd_kernel_kv_layout_gqa(&l, 8, 128, 64, ATTND_DTYPE_BF16);
    enum { PAGES = 9 };
    const int64_t te = attnd_kernel_kv_layout_token_elems(&l);
    const size_t pb = attnd_kernel_kv_layout_page_bytes(&l), be = attnd_kernel_kv_bounds_elems(&l);
    char *pool = calloc(PAGES, pb);
    uint16_t *wire = malloc(sizeof(uint16_t) * (size_t)(64 * te));
    uint16_t *host = malloc(sizeof(uint16_t) * be * PAGES), *got = malloc(sizeof(uint16_t) * be * PAGES);
    const uint16_t special[] = {0x0000, 0x8000, 0x7fc0, 0x7f80, 0xff80, 0xffc1};
    /* page p: tokens [0, a) folded before (on the host, then uploaded),
     * [a, a + n) by the fold under test; page 3's fold is dropped */
    int32_t a[PAGES], n[PAGES];
    for (int p = 0; p < PAGES; p++) {
        a[p] = p % 3 == 0 ? 0 : (int32_t)(tu_next(&rng) % 40);
        n[p] = 1 + (int32_t)(tu_next(&rng) % 20);
        for (int64_t i = 0; i < (a[p] + n[p]) * te; i++)
            wire[i] = attnd_dtype_f32_to_bf16((float)tu_normal(&rng));
        for (int k = 0; k < 12; k++) /* specials anywhere */
            wire[tu_next(&rng) % (uint64_t)((a[p] + n[p]) * te)] = special[tu_next(&rng) % 6];
        if (p == 4) /* a column of zeros of both signs */
            for (int t = 0; t < a[p] + n[p]; t++)
                wire[t * te + 7] = t % 2 ? 0x8000 : 0x0000;
        attnd_kernel_kv_write_tokens(&l, pool + (size_t)p * pb, 0, a[p] + n[p], ATTND_DTYPE_BF16,
                                     wire);
        attnd_kernel_kv_bounds_reset(&l, host, PAGES, p);
        if (a[p])
            attnd_kernel_kv_bounds_add(&l, host, PAGES, p, a[p], ATTND_DTYPE_BF16, wire);
        if (p == 3)
            continue;
        if (a[p] == 0) /* the fold starts it over: anything there before */
            for (int32_t h = 0; h < l.n_kv_heads; h++)
                memset(host + attnd_kernel_kv_bounds_at(&l, PAGES, h, p), 0x5a,
                       2 * (size_t)l.d_k * sizeof(uint16_t));
    }
    void *dpool, *db, *df;
    GP_CK(cudaMalloc(&dpool, PAGES * pb));
    GP_CK(cudaMalloc(&db, sizeof(uint16_t) * be * PAGES));
    GP_CK(cudaMalloc(&df, sizeof(attnd_cuda_fold) * PAGES));
    GP_CK(cudaMemcpy(dpool, pool, PAGES * pb, cudaMemcpyHostToDevice));
    GP_CK(cudaMemcpy(db, host, sizeof(uint16_t) * be * PAGES, cudaMemcpyHostToDevice));
    attnd_cuda_fold f[PAGES];
    for (int p = 0; p < PAGES; p++)
        f[PAGES - 1 - p] = (attnd_cuda_fold){.page = p, .slot0 = a[p], .n = p == 3 ? 0 : n[p]};
    GP_CK(cudaMemcpy(df, f, sizeof f, cudaMemcpyHostToDevice));
    const size_t rb8 = attnd_kernel_kv_bounds8_row(&l), b8n = rb8 * (size_t)l.n_kv_heads * PAGES;
    uint8_t *h8 = malloc(b8n), *g8 = malloc(b8n);
    void *d8;
    GP_CK(cudaMalloc(&d8, b8n));
    GP_CK(cudaMemset(d8, 0xa5, b8n));
    must(attnd_cuda_bounds_fold(ctx, &l, dpool, pb, db, d8, PAGES, df, PAGES, &err), &err,
         "bounds_fold");
    must(attnd_cuda_sync(ctx, &err), &err, "sync");
    GP_CK(cudaMemcpy(got, db, sizeof(uint16_t) * be * PAGES, cudaMemcpyDeviceToHost));
    GP_CK(cudaMemcpy(g8, d8, b8n, cudaMemcpyDeviceToHost));
    /* the host's reference: the same tokens folded the host's way */
    for (int p = 0; p < PAGES; p++) {
        if (p == 3)
            continue;
        if (a[p] == 0)
            attnd_kernel_kv_bounds_reset(&l, host, PAGES, p);
        /* the page's entries again, tokens [a, a + n) (the pool holds them) */
        for (int t = 0; t < n[p]; t++)
            for (int32_t h = 0; h < l.n_kv_heads; h++)
                memcpy(wire + (size_t)t * te + (size_t)h * l.d_k,
                       pool + (size_t)p * pb +
                               (size_t)(h * l.k_head_stride + (a[p] + t) * l.k_token_stride) * 2,
                       (size_t)l.d_k * 2);
        attnd_kernel_kv_bounds_add(&l, host, PAGES, p, n[p], ATTND_DTYPE_BF16, wire);
    }
    int64_t differ = 0;
    for (size_t i = 0; i < be * PAGES; i++)
        differ += host[i] != got[i];
    verdict(differ == 0, "fold     %s: %lld of %zu bound elements differ from the host's fold",
            mla ? "MLA 576" : "GQA 8 x 128", (long long)differ, be * PAGES);
    /* the folded pages' compact rows, as the host makes them (page 3's
     * fold was dropped: its rows untouched) */
    int64_t rows_differ = 0;
    for (int p = 0; p < PAGES; p++) {
        attnd_kernel_kv_bounds8_make(&l, host, h8, PAGES, p);
        for (int32_t h = 0; h < l.n_kv_heads; h++) {
            const size_t at = attnd_kernel_kv_bounds8_at(&l, PAGES, h, p);
            if (p == 3) {
                for (size_t i = 0; i < rb8; i++)
                    rows_differ += g8[at + i] != 0xa5;
                continue;
            }
            rows_differ += memcmp(h8 + at, g8 + at, 8 + 2 * (size_t)l.d_k) != 0;
        }
    }
    verdict(rows_differ == 0, "fold     %s: %lld compact rows differ from the host's",
            mla ? "MLA 576" : "GQA 8 x 128", (long long)rows_differ);
    cudaFree(dpool), cudaFree(db), cudaFree(df), cudaFree(d8);
    free(pool), free(wire), free(host), free(got), free(h8), free(g8);
}

static void test_select(void)
{
    fold_case(0);
    fold_case(1);
    select_case(32, 8, 128, 8, 1, 1, 3, 300, "GQA 32/8 heads, per KV head, 300 pages");
    select_case(32, 8, 128, 1, 1, 1, 2, 129, "GQA 32/8 heads, one list, 129 pages");
    select_case(128, 1, 576, 1, 1, 1, 2, 2048, "MLA 128 heads, 2048 pages");
    select_case(32, 8, 128, 8, 4, 1, 3, 300, "GQA 32/8 heads summed per KV head, 300 pages");
    select_case(128, 1, 576, 1, 128, 1, 2, 2048, "MLA 128 heads summed, 2048 pages");
    select_case(128, 1, 576, 1, 4, 1, 2, 2048, "MLA 128 heads in runs of 4, 2048 pages");
    select_case(128, 1, 576, 1, 8, 1, 4, 2048, "MLA 128 heads in runs of 8 (the default), 4 x 2048 pages");
    select_case(128, 1, 576, 1, 8, 3, 2, 1000, "MLA runs of 8, 3 query tokens, 1000 pages");
    /* up to 8 rows a list: the tensor-core scoring (select_mma.cu) */
    select_case(128, 1, 576, 1, 16, 1, 4, 2048, "MLA runs of 16 (8 rows, the engine's), 4 x 2048 pages");
    select_case(128, 1, 576, 1, 32, 2, 3, 1500, "MLA runs of 32, 2 query tokens (8 rows), 1500 pages");
    select_case(128, 1, 576, 1, 64, 1, 2, 777, "MLA runs of 64 (2 rows), 777 pages");
    select_case(32, 8, 128, 8, 1, 2, 4, 2048, "GQA 32/8 per KV head, 2 query tokens, 4 x 2048 pages");
    select_case(32, 8, 128, 1, 1, 1, 2, 5000, "GQA 32/8 one list (32 rows), 5000 pages");
    select_case(32, 8, 128, 8, 1, 1, 1, 9000, "GQA 32/8 per KV head, 9000 pages (keys in global memory)");
    select_repeat = 5; /* ties throughout: the threshold's every digit, the earliest of equals */
    select_case(32, 8, 128, 8, 1, 1, 3, 300, "GQA 32/8 per KV head, 300 pages of 5 bounds");
    select_case(128, 1, 576, 1, 8, 1, 2, 2048, "MLA runs of 8, 2048 pages of 5 bounds");
    select_case(128, 1, 576, 1, 16, 1, 2, 2048, "MLA runs of 16, 2048 pages of 5 bounds");
    select_repeat = 0;
}

int main(int argc, char **argv)
{
    const char *only = argc > 1 ? argv[1] : "all";
    if (attnd_cuda_device_count() < 1) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    attnd_error err = {0};
    attnd_status st = attnd_cuda_ctx_create(0, NULL, &ctx, &err);
    if (st == ATTND_ERR_UNIMPLEMENTED || st == ATTND_ERR_UNAVAILABLE) {
        printf("SKIP: %s\n", err.msg);
        return 77;
    }
    must(st, &err, "ctx_create");
    must(attnd_cuda_plan_create(ctx, &plan, &err), &err, "plan_create");
    long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    ref_threads = nproc > 1 ? (int)(nproc > 32 ? 32 : nproc) : 1;
    tu_rng_init(&rng, "test_cuda");

    if (!strcmp(only, "all") || !strcmp(only, "mla"))
        test_mla();
    if (!strcmp(only, "all") || !strcmp(only, "gqa"))
        test_gqa();
    if (!strcmp(only, "all") || !strcmp(only, "nonfinite"))
        test_nonfinite();
    if (!strcmp(only, "all") || !strcmp(only, "select"))
        test_select();
    if (!strcmp(only, "all") || !strcmp(only, "misc")) {
        test_combine();
        test_hadamard();
        test_scatter();
        test_gather();
        test_rejects();
    }
    attnd_cuda_plan_destroy(plan);
    attnd_cuda_ctx_destroy(ctx);
    printf("test_cuda: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
