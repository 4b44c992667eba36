/* attnd-kbench: how close the CPU decode kernels come to the host's limits.
 *
 * In one run it measures the machine (read bandwidth of all kernel threads,
 * and of one; FMA peak; vdpbf16ps peak where present: kbench_machine.c) and
 * then each decode case through attnd_kernel_decode_parallel, the call the
 * engine makes. A case's KV is replicated into enough copies that together
 * they are at least 4x the last-level cache, with every copy's pages
 * scattered over the whole pool; each timed run reads the next copy, so no
 * run finds its KV in cache. Median of --reps runs after --warmup runs.
 *
 * Reported per case: time, effective KV read bandwidth (bytes of KV the
 * batch lists / time) and its ratio to the measured read bandwidth; useful
 * GFLOP/s (2 * rows * tokens * (d_k + d_v)) and its ratio to the FMA peak.
 *
 *   attnd-kbench [--threads N] [--reps N] [--warmup N] [--case NAME]
 *                [--path auto|scalar|avx2|avx512|avx512bf16] [--splits K]
 *                [--bw-mib N] [--llc-mib N]
 * --llc-mib overrides the detected cache size that sizes the KV rotation
 * and the bandwidth buffer (small values make runs under valgrind short;
 * such runs measure instruction and miss counts, not speed).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_clock.h"
#include "kbench.h"

typedef struct kb_case {
    const char *name;
    attnd_attn_kind kind;
    int32_t hq, hkv, head_dim, d_c, d_r;
    int32_t n_seqs;
    int64_t len;
    int fixed; /* a per-call fixed-cost case: 1-token contexts */
} kb_case;

static const kb_case cases[] = {
    {"gqa-32/8/128 b1x32K", ATTND_ATTN_GQA, 32, 8, 128, 0, 0, 1, 32768, 0},
    {"gqa-32/8/128 b16x4K", ATTND_ATTN_GQA, 32, 8, 128, 0, 0, 16, 4096, 0},
    {"mla-h16 b8x8K", ATTND_ATTN_MLA, 16, 1, 0, 512, 64, 8, 8192, 0},
    {"mla-h128 b4x4K", ATTND_ATTN_MLA, 128, 1, 0, 512, 64, 4, 4096, 0},
    /* DeepSeek-V3 shape at 1-token contexts: what is left is the per-call
     * cost of packing q, planning and writing out (issue 18, part 2) */
    {"fixed mla-h128 b1x1", ATTND_ATTN_MLA, 128, 1, 0, 512, 64, 1, 1, 1},
    {"fixed mla-h128 b32x1", ATTND_ATTN_MLA, 128, 1, 0, 512, 64, 32, 1, 1},
    {"fixed mla-h128 b128x1", ATTND_ATTN_MLA, 128, 1, 0, 512, 64, 128, 1, 1},
};

typedef struct kb_opts {
    int threads, reps, warmup, splits;
    const char *only, *path;
    size_t bw_bytes, llc_bytes;
} kb_opts;

typedef struct kb_result {
    double ms, gbs, gflops;
    int32_t units;
    double move_ms; /* fixed cases: kb_move_seconds of the call's q and out */
} kb_result;

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Fill n bf16 values uniform in about [-2, 2] (finite, no subnormals). */
static void fill_bf16(uint16_t *p, size_t n, uint64_t *s)
{
    for (size_t i = 0; i + 4 <= n; i += 4) {
        uint64_t r = rng_next(s);
        for (int j = 0; j < 4; j++) {
            uint16_t m = (uint16_t)(r >> (16 * j));
            /* sign, exponent 2^-4..2^0, 7 mantissa bits */
            p[i + j] = (uint16_t)((m & 0x8000u) | ((0x7bu + (m >> 7) % 5u) << 7) | (m & 0x7fu));
        }
    }
}

/* Run case c. cold: through the pool, the KV rotating over copies
 * totalling >= 4x llc; hot: one copy small enough for L2, read again and
 * again by attnd_kernel_decode on the calling thread alone (the path's
 * compute-bound rate per core, with no thread hand-off in the timing). */
static int run_case(const kb_case *c, attnd_kernel_pool *pool, const kb_opts *o, size_t llc,
                    int cold, kb_result *res)
{
    attnd_kernel_kv_layout l;
    attnd_error err;
    int rc = -1;

    if (c->kind == ATTND_ATTN_MLA)
        attnd_kernel_kv_layout_mla(&l, c->d_c, c->d_r, 64, ATTND_DTYPE_BF16);
    else
        attnd_kernel_kv_layout_gqa(&l, c->hkv, c->head_dim, 64, ATTND_DTYPE_BF16);
    const int64_t pages_per_seq = (c->len + 63) / 64;
    const int64_t pages = pages_per_seq * c->n_seqs;
    const size_t page_bytes = attnd_kernel_kv_layout_page_bytes(&l);
    const size_t copy_bytes = (size_t)pages * page_bytes;
    int64_t copies = (int64_t)((4 * llc + copy_bytes - 1) / copy_bytes);
    if (copies < 2 || c->fixed) /* fixed: the KV is a page per sequence */
        copies = 2;
    if (!cold)
        copies = 1;
    const int64_t pool_pages = pages * copies;
    uint64_t seed = 0x5eed;

    uint16_t *kv = aligned_alloc(4096, (size_t)pool_pages * page_bytes);
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)pool_pages);
    int32_t *indptr = malloc(sizeof(int32_t) * (size_t)(c->n_seqs + 1));
    int32_t *last = malloc(sizeof(int32_t) * (size_t)c->n_seqs);
    size_t nq = (size_t)c->n_seqs * c->hq * l.d_k, nout = (size_t)c->n_seqs * c->hq * l.d_v;
    uint16_t *q = malloc(sizeof(uint16_t) * nq);
    float *out = malloc(sizeof(float) * nout), *lse = malloc(sizeof(float) * c->n_seqs * c->hq);
    double *t = malloc(sizeof(double) * (size_t)(o->reps > 0 ? o->reps : 1));
    float *work = NULL;
    attnd_kernel_decode_plan plan;
    attnd_kernel_decode_plan_init(&plan);
    if (!kv || !perm || !indptr || !last || !q || !out || !lse || !t) {
        fprintf(stderr, "kbench: no memory for %s (%zu MiB of KV)\n", c->name,
                (size_t)pool_pages * page_bytes >> 20);
        goto out;
    }
    fill_bf16(kv, (size_t)pool_pages * page_bytes / 2, &seed);
    fill_bf16(q, nq, &seed);
    for (int64_t j = 0; j < pool_pages; j++)
        perm[j] = (int32_t)j;
    for (int64_t j = pool_pages - 1; j > 0; j--) { /* scatter every copy */
        int64_t k = (int64_t)(rng_next(&seed) % (uint64_t)(j + 1));
        int32_t x = perm[j];
        perm[j] = perm[k];
        perm[k] = x;
    }
    for (int32_t i = 0; i <= c->n_seqs; i++)
        indptr[i] = (int32_t)(i * pages_per_seq);
    for (int32_t i = 0; i < c->n_seqs; i++)
        last[i] = (int32_t)(c->len - (pages_per_seq - 1) * 64);

    attnd_kernel_decode_batch b = {
        .n_seqs = c->n_seqs,
        .q_tokens = 1,
        .n_q_heads = c->hq,
        .scale = c->kind == ATTND_ATTN_MLA ? 0.0721687836f : 0.0883883476f,
        .q_dtype = ATTND_DTYPE_BF16,
        .q = q,
        .kv = &l,
        .pool = kv,
        .pool_pages = pool_pages,
        .page_indptr = indptr,
        .page_idx = perm,
        .last_page_len = last,
        .out = out,
        .lse = lse,
        .work = out, /* the parallel run does not use it; the check wants one */
    };
    if (attnd_kernel_decode_batch_check(&b, &err)) {
        fprintf(stderr, "kbench: %s: %s\n", c->name, err.msg);
        goto out;
    }
    attnd_kernel_decode_plan_opts po = {.n_threads = attnd_kernel_pool_threads(pool),
                                        .splits = o->splits};
    if (attnd_kernel_decode_plan_make(&plan, &b, &po, &err)) {
        fprintf(stderr, "kbench: %s: %s\n", c->name, err.msg);
        goto out;
    }
    if (!cold && !(work = malloc(sizeof(float) * attnd_kernel_decode_work_floats(&b))))
        goto out;
    b.work = cold ? out : work;
    for (int r = -o->warmup; r < o->reps; r++) {
        int64_t copy = (r + o->warmup) % copies;
        b.page_idx = perm + copy * pages;
        double t0 = attnd_clock_s();
        attnd_status st = ATTND_OK;
        if (!cold)
            attnd_kernel_decode(&b);
        else if (o->splits == ATTND_KERNEL_DECODE_SPLITS_AUTO)
            st = attnd_kernel_decode_parallel(pool, &b, &err);
        else
            st = attnd_kernel_decode_run(pool, &plan, &b, &err);
        double dt = attnd_clock_s() - t0;
        if (st) {
            fprintf(stderr, "kbench: %s: %s\n", c->name, err.msg);
            goto out;
        }
        if (r >= 0)
            t[r] = dt;
    }
    double sec = kb_median(t, o->reps);
    double tokens = (double)c->len * c->n_seqs;
    double bytes = tokens * (double)attnd_kernel_kv_layout_token_elems(&l) * 2.0;
    double flops = 2.0 * c->hq * tokens * (l.d_k + l.d_v);
    res->ms = sec * 1e3;
    res->gbs = bytes / sec / 1e9;
    res->gflops = flops / sec / 1e9;
    if (o->splits == ATTND_KERNEL_DECODE_SPLITS_AUTO) { /* what the auto plan chose */
        po.splits = ATTND_KERNEL_DECODE_SPLITS_AUTO;
        attnd_kernel_decode_plan_make(&plan, &b, &po, &err);
    }
    res->units = plan.n_units;
    rc = 0;
out:
    attnd_kernel_decode_plan_cleanup(&plan);
    free(work);
    free(t);
    free(lse);
    free(out);
    free(q);
    free(last);
    free(indptr);
    free(perm);
    free(kv);
    return rc;
}

typedef struct kb_machine {
    double bw, bw1, peak, bfpeak;
    int lanes;
} kb_machine;

static void measure_machine(attnd_kernel_pool *pool, int nt, size_t bw_bytes, kb_machine *m)
{
    m->bw = kb_read_bandwidth(pool, nt, bw_bytes, 9);
    m->bw1 = kb_read_bandwidth(pool, 1, bw_bytes / 2, 5);
    m->peak = kb_fma_peak(pool, &m->lanes);
    m->bfpeak = kb_dpbf16_peak(pool);
}

static void usage(void)
{
    fprintf(stderr, "usage: attnd-kbench [--threads N] [--reps N] [--warmup N] [--case NAME]\n"
                    "                    [--path auto|scalar|avx2|avx512|avx512bf16] [--splits K]\n"
                    "                    [--bw-mib N] [--llc-mib N]\n");
}

int main(int argc, char **argv)
{
    kb_opts o = {.threads = 0, .reps = 15, .warmup = 3, .splits = ATTND_KERNEL_DECODE_SPLITS_AUTO};
    attnd_kernel_pool *pool;
    attnd_error err;
    char model[256];

    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (!strcmp(a, "--threads"))
            o.threads = atoi(v);
        else if (!strcmp(a, "--reps"))
            o.reps = atoi(v);
        else if (!strcmp(a, "--warmup"))
            o.warmup = atoi(v);
        else if (!strcmp(a, "--case"))
            o.only = v;
        else if (!strcmp(a, "--path"))
            o.path = v;
        else if (!strcmp(a, "--splits"))
            o.splits = atoi(v);
        else if (!strcmp(a, "--bw-mib"))
            o.bw_bytes = (size_t)atol(v) << 20;
        else if (!strcmp(a, "--llc-mib"))
            o.llc_bytes = (size_t)atol(v) << 20;
        else {
            usage();
            return 2;
        }
    }
    if (o.reps < 1 || o.reps > 1000 || o.warmup < 0 || o.splits < ATTND_KERNEL_DECODE_SPLITS_MAX) {
        usage();
        return 2;
    }
    attnd_kernel_path_reset();
    if (o.path && attnd_kernel_path_select(o.path, &err)) {
        fprintf(stderr, "kbench: %s\n", err.msg);
        return 2;
    }
    if (attnd_kernel_pool_create(o.threads, &pool, &err)) {
        fprintf(stderr, "kbench: %s\n", err.msg);
        return 1;
    }
    const int nt = attnd_kernel_pool_threads(pool);
    const size_t llc = o.llc_bytes ? o.llc_bytes : kb_llc_bytes();
    size_t bw_bytes = o.bw_bytes;
    if (!bw_bytes) /* many times the cache, and at least 1 GiB */
        bw_bytes = 8 * llc < ((size_t)1 << 30) ? (size_t)1 << 30 : 8 * llc;
    kb_cpu_model(model, sizeof model);

    /* the machine, before and after the kernels: ratios use the better
     * of the two (a neighbour busy during one of them shows as a gap) */
    kb_machine m0, m1;
    measure_machine(pool, nt, bw_bytes, &m0);

    enum { N_CASES = sizeof cases / sizeof cases[0] };
    kb_result cold[N_CASES], hot[N_CASES];
    int ran[N_CASES] = {0}, rc = 0;
    for (size_t i = 0; i < N_CASES; i++) {
        if (o.only && !strstr(cases[i].name, o.only))
            continue;
        if (cases[i].fixed) {
            const kb_case *c = &cases[i];
            size_t qb = (size_t)c->n_seqs * c->hq * (c->d_c + c->d_r) * 2;
            size_t ob = (size_t)c->n_seqs * c->hq * (c->d_c + 1) * 4;
            if (run_case(c, pool, &o, llc, 1, &cold[i])) {
                rc = 1;
                continue;
            }
            cold[i].move_ms = kb_move_seconds(pool, qb, ob, o.reps) * 1e3;
            ran[i] = 1;
            continue;
        }
        /* hot: one sequence of ~1 MiB of KV (fits L2), one thread */
        kb_case h = cases[i];
        attnd_kernel_kv_layout hl;
        if (h.kind == ATTND_ATTN_MLA)
            attnd_kernel_kv_layout_mla(&hl, h.d_c, h.d_r, 64, ATTND_DTYPE_BF16);
        else
            attnd_kernel_kv_layout_gqa(&hl, h.hkv, h.head_dim, 64, ATTND_DTYPE_BF16);
        h.n_seqs = 1;
        h.len = ((1 << 20) / (attnd_kernel_kv_layout_token_elems(&hl) * 2)) / 64 * 64;
        if (run_case(&cases[i], pool, &o, llc, 1, &cold[i]) ||
            run_case(&h, pool, &o, llc, 0, &hot[i])) {
            rc = 1;
            continue;
        }
        ran[i] = 1;
    }
    measure_machine(pool, nt, bw_bytes, &m1);
    double bw = m0.bw > m1.bw ? m0.bw : m1.bw, peak = m0.peak > m1.peak ? m0.peak : m1.peak;
    double bfpeak = m0.bfpeak > m1.bfpeak ? m0.bfpeak : m1.bfpeak;
    double best = bfpeak > peak ? bfpeak : peak; /* the faster of the two peaks */
    char path_line[256];
    attnd_kernel_path_describe(path_line, sizeof path_line);

    printf("# attnd-kbench\n\n");
    printf("- CPU: %s; %d kernel threads; LLC %zu MiB\n", model, nt, llc >> 20);
    printf("- kernel path: %s; splits: %s\n", path_line,
           o.splits == 0 ? "auto" : o.splits < 0 ? "max" : "forced");
    printf("- read bandwidth (streaming sum of %zu MiB), before / after the kernels: "
           "%.1f / %.1f GB/s with %d threads, %.1f / %.1f GB/s with 1\n",
           bw_bytes >> 20, m0.bw, m1.bw, nt, m0.bw1, m1.bw1);
    printf("- FMA peak (%d-lane float32, register-resident), before / after: %.1f / %.1f GFLOP/s",
           m0.lanes, m0.peak, m1.peak);
    if (m0.bfpeak > 0)
        printf("; vdpbf16ps peak: %.1f / %.1f GFLOP/s", m0.bfpeak, m1.bfpeak);
    printf("\n- ratios below use the better of before / after: %.1f GB/s, %.1f GFLOP/s FMA, "
           "%.1f GFLOP/s the faster peak\n", bw, peak, best);
    printf("- KV bf16, q bf16, page 64; median of %d runs after %d warm-up\n", o.reps,
           o.warmup);
    printf("- cold: each run reads another copy of the KV (copies >= 4x LLC, pages "
           "scattered); hot: one sequence, ~1 MiB of KV, read again each run, "
           "on the calling thread alone (KV in L2: the path's compute-bound rate per core)\n\n");
    printf("| case | units | ms | KV GB/s | / read BW | GFLOP/s | / FMA peak | / faster peak | "
           "hot 1-core KV GB/s | hot 1-core GFLOP/s |\n");
    printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (size_t i = 0; i < N_CASES; i++) {
        if (!ran[i] || cases[i].fixed)
            continue;
        printf("| %s | %d | %.2f | %.1f | %.0f%% | %.1f | %.0f%% | %.0f%% | %.1f | %.1f |\n",
               cases[i].name, cold[i].units, cold[i].ms, cold[i].gbs, 100.0 * cold[i].gbs / bw,
               cold[i].gflops, 100.0 * cold[i].gflops / peak, 100.0 * cold[i].gflops / best,
               hot[i].gbs, hot[i].gflops);
    }
    int any_fixed = 0;
    for (size_t i = 0; i < N_CASES; i++)
        any_fixed |= ran[i] && cases[i].fixed;
    if (any_fixed) {
        printf("\nPer-call fixed cost (1-token contexts, bf16 q [B][128][576] in, float32 out "
               "[B][128][512] + lse out): the call against moving q and out at the read "
               "bandwidth above, and against the measured move (threads reading q, writing "
               "out, buffers as hot as the kernel's)\n\n");
        printf("| case | ms | q + out MB | at read BW ms | call / that | measured move ms | "
               "call / move |\n");
        printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for (size_t i = 0; i < N_CASES; i++) {
            if (!ran[i] || !cases[i].fixed)
                continue;
            const kb_case *c = &cases[i];
            double mb = ((double)c->n_seqs * c->hq * (c->d_c + c->d_r) * 2 +
                         (double)c->n_seqs * c->hq * (c->d_c + 1) * 4) / 1e6;
            double at_bw = mb / 1e3 / bw * 1e3;
            printf("| %s | %.3f | %.1f | %.3f | %.2f | %.3f | %.2f |\n", c->name, cold[i].ms, mb,
                   at_bw, cold[i].ms / at_bw, cold[i].move_ms, cold[i].ms / cold[i].move_ms);
        }
    }
    attnd_kernel_pool_destroy(pool);
    return rc;
}
