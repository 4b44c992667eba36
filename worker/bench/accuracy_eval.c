/* The accuracy harness's evaluation of one case (accuracy.h): key bounds
 * and page selection with the worker's own kernels, streaming's and the
 * oracle's pages, then every query head's recall, error and read against
 * float64 dense attention. Shared by the synthetic workloads
 * (sparse_accuracy.c) and captured ones (accuracy_load.c), so both report
 * the same figures for the same data. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "accuracy.h"
#include "attnd_kernels.h"

const double attnd__acc_budgets[ATTND__ACC_NB] = {1.0 / 64, 1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4};

int32_t attnd__acc_default_agg(int32_t hq, int32_t agg_opt)
{
    if (agg_opt > 0 && hq % agg_opt == 0)
        return agg_opt;
    return hq % 8 ? 1 : hq / 8;
}

/* Dense attention of head h: probabilities p [T] and output o [dv]. */
static void dense(const attnd__acc_case *c, int32_t h, double *p, double *o)
{
    const int32_t dk = c->dk, dv = c->dv;
    const double *q = c->q + (size_t)h * dk;
    double mx = -INFINITY, sum = 0;
    for (int64_t i = 0; i < c->T; i++) {
        double s = 0;
        for (int32_t d = 0; d < dk; d++)
            s += q[d] * c->k[i * dk + d];
        p[i] = s * c->scale;
        mx = p[i] > mx ? p[i] : mx;
    }
    for (int64_t i = 0; i < c->T; i++)
        sum += (p[i] = exp(p[i] - mx));
    memset(o, 0, sizeof(double) * dv);
    for (int64_t i = 0; i < c->T; i++) {
        p[i] /= sum;
        const double *v = c->v + (size_t)i * (c->v_in_k ? dk : dv);
        for (int32_t e = 0; e < dv; e++)
            o[e] += p[i] * v[e];
    }
}

/* Over the pages keep[0..n_keep): recall of p and the output's error
 * (o: dv doubles of scratch). */
static void sparse_eval(const attnd__acc_case *c, int32_t ps, const int64_t *keep, int64_t n_keep,
                        const double *p, const double *o_dense, double *o, double *recall,
                        double *err)
{
    const int32_t dk = c->dk, dv = c->dv;
    double mass = 0;
    memset(o, 0, sizeof(double) * dv);
    for (int64_t j = 0; j < n_keep; j++)
        for (int64_t i = keep[j] * ps; i < (keep[j] + 1) * ps && i < c->T; i++)
            mass += p[i];
    for (int64_t j = 0; j < n_keep; j++) /* renormalized: softmax over the kept tokens */
        for (int64_t i = keep[j] * ps; i < (keep[j] + 1) * ps && i < c->T; i++) {
            const double *v = c->v + (size_t)i * (c->v_in_k ? dk : dv);
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
}

static void acc_add(attnd__acc *a, double recall, double err, double bytes)
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
 * summed: into out (logical page numbers); *n_out their count. */
static attnd_status topk_select(const attnd__acc_case *c, const attnd_kernel_kv_layout *l,
                                const uint16_t *bounds, const uint8_t *bounds8, int64_t np,
                                int64_t first, int64_t stride, int64_t keep, int64_t n_head,
                                int32_t head_agg, int64_t *out, int64_t *n_out, attnd_error *err)
{
    int64_t n = first < np ? (np - 1 - first) / stride + 1 : 0;
    *n_out = 0;
    if (n == 0)
        return ATTND_OK;
    attnd_status st = ATTND_ERR_RESOURCE_EXHAUSTED;
    int32_t *cand = malloc(sizeof(int32_t) * (size_t)n), *sel = malloc(sizeof(int32_t) * (size_t)n);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n);
    float *q = malloc(sizeof(float) * (size_t)c->hq * c->dk);
    float *work = NULL;
    if (!cand || !sel || !pos || !q) {
        attnd_error_set(err, st, "out of memory");
        goto err_alloc;
    }
    for (int64_t j = 0; j < n; j++)
        cand[j] = (int32_t)(first + j * stride);
    if (n_head > n - 1)
        n_head = n - 1;
    if (keep < n_head + 1)
        keep = n_head + 1;
    if (keep > n)
        keep = n;
    for (int64_t i = 0; i < (int64_t)c->hq * c->dk; i++)
        q[i] = (float)c->q[i];
    attnd_kernel_select_list sl = {.seq = 0, .group = 0, .cand0 = 0, .n_cand = (int32_t)n,
                                   .keep = (int32_t)keep, .n_head = (int32_t)n_head, .n_tail = 1};
    attnd_kernel_select_batch b = {.n_lists = 1,
                                   .lists = &sl,
                                   .n_seqs = 1,
                                   .q_tokens = 1,
                                   .n_q_heads = c->hq,
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
    int64_t wf = attnd_kernel_select_prepare(&b, err);
    if (wf < 0) {
        st = ATTND_ERR_INVALID_ARGUMENT;
        goto err_alloc;
    }
    b.work = work = malloc(sizeof(float) * (size_t)(wf + 16));
    if (!work) {
        attnd_error_set(err, st, "out of memory");
        goto err_alloc;
    }
    attnd_kernel_select(&b);
    for (int64_t j = 0; j < keep; j++)
        out[j] = sel[j];
    *n_out = keep;
    st = ATTND_OK;
err_alloc:
    free(work);
    free(q);
    free(cand);
    free(sel);
    free(pos);
    return st;
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

/* The selections of every policy but the oracle at every budget (they do
 * not depend on the query head: one list for the KV head), into
 * chosen[pol][b] (np pages each), counts into n_sel. */
static attnd_status choose(const attnd__acc_case *c, const attnd__acc_opts *o,
                           const attnd_kernel_kv_layout *l, const uint16_t *bounds,
                           const uint8_t *b8, int64_t np,
                           int64_t *chosen[ATTND__ACC_NPOL][ATTND__ACC_NB],
                           int64_t n_sel[ATTND__ACC_NPOL][ATTND__ACC_NB], attnd_error *err)
{
    const int32_t ps = o->page_size, ranks = o->ranks > 0 ? o->ranks : 1;
    for (int b = 0; b < ATTND__ACC_NB; b++) {
        int64_t k = (int64_t)ceil(attnd__acc_budgets[b] * (double)np), *cp;
        attnd_status st = topk_select(c, l, bounds, b8, np, 0, 1, k, 1, o->head_agg,
                                      chosen[ATTND__ACC_TOPK][b], &n_sel[ATTND__ACC_TOPK][b], err);
        if (st == ATTND_OK)
            st = topk_select(c, l, bounds, b8, np, 0, 1, k, 1, 1, chosen[ATTND__ACC_HEAD][b],
                             &n_sel[ATTND__ACC_HEAD][b], err);
        if (st == ATTND_OK)
            st = topk_select(c, l, bounds, NULL, np, 0, 1, k, 1, o->head_agg,
                             chosen[ATTND__ACC_B16][b], &n_sel[ATTND__ACC_B16][b], err);
        if (st != ATTND_OK)
            return st;
        /* streaming: sink 64 tokens + window filling the budget */
        cp = chosen[ATTND__ACC_STREAM][b];
        int64_t w = k * ps - 64, nsp = 0;
        int64_t sp0 = (64 + ps - 1) / ps, wp = (c->T - w) / ps;
        for (int64_t j = 0; j < sp0 && j < wp && j < np; j++)
            cp[nsp++] = j;
        for (int64_t j = wp > sp0 ? wp : sp0; j < np; j++)
            cp[nsp++] = j;
        n_sel[ATTND__ACC_STREAM][b] = nsp;
        /* sequence-sharded ranks: each its own share */
        cp = chosen[ATTND__ACC_RANKS][b];
        int64_t nr = 0;
        for (int rr = 0; rr < ranks; rr++) {
            int64_t got;
            st = topk_select(c, l, bounds, b8, np, rr, ranks, (k + ranks - 1) / ranks,
                             rr == 0 ? 1 : 0, o->head_agg, cp + nr, &got, err);
            if (st != ATTND_OK)
                return st;
            nr += got;
        }
        qsort(cp, (size_t)nr, sizeof *cp, cmp_i64);
        n_sel[ATTND__ACC_RANKS][b] = nr;
    }
    return ATTND_OK;
}

attnd_status attnd__acc_eval(const attnd__acc_case *c, const attnd__acc_opts *o,
                             attnd__acc_table *t, attnd_error *err)
{
    const int32_t ps = o->page_size, dk = c->dk, dv = c->dv;
    const int64_t T = c->T, np = (T + ps - 1) / ps;
    attnd_status st = ATTND_ERR_RESOURCE_EXHAUSTED;
    attnd_kernel_kv_layout l;
    if (c->v_in_k)
        attnd_kernel_kv_layout_mla(&l, dv, dk - dv, ps, ATTND_DTYPE_BF16);
    else
        attnd_kernel_kv_layout_gqa(&l, 1, dk, ps, ATTND_DTYPE_BF16);
    const double tok_bytes = (double)(c->v_in_k ? dk : 2 * dk) * 2;
    /* per page: the compact bounds (bf16: 2 d_k x 2 bytes) */
    const double bound_bytes = (double)attnd_kernel_kv_bounds8_row(&l);
    const double bound16_bytes = 2.0 * dk * 2;
    int64_t *chosen[ATTND__ACC_NPOL][ATTND__ACC_NB] = {{0}}, n_sel[ATTND__ACC_NPOL][ATTND__ACC_NB];
    uint16_t *bounds = malloc(attnd_kernel_kv_bounds_elems(&l) * 2 * (size_t)np);
    uint8_t *b8 = malloc(attnd_kernel_kv_bounds8_row(&l) * (size_t)np);
    float *wire = calloc((size_t)attnd_kernel_kv_layout_token_elems(&l), sizeof(float));
    double *p = malloc(sizeof(double) * (size_t)T), *od = malloc(sizeof(double) * dv);
    double *os = malloc(sizeof(double) * dv);
    int64_t *keep = malloc(sizeof(int64_t) * (size_t)np);
    page_mass *pm = malloc(sizeof(page_mass) * (size_t)np);
    int ok = bounds && b8 && wire && p && od && os && keep && pm;
    for (int pol = 0; pol < ATTND__ACC_NPOL; pol++)
        for (int b = 0; b < ATTND__ACC_NB; b++)
            if (pol != ATTND__ACC_ORACLE)
                ok &= (chosen[pol][b] = malloc(sizeof(int64_t) * (size_t)np)) != NULL;
    if (!ok) {
        attnd_error_set(err, st, "out of memory (%lld tokens)", (long long)T);
        goto err_alloc;
    }
    for (int64_t pg = 0; pg < np; pg++) {
        attnd_kernel_kv_bounds_reset(&l, bounds, np, pg);
        for (int64_t i = pg * ps; i < (pg + 1) * ps && i < T; i++) {
            for (int32_t d = 0; d < dk; d++)
                wire[d] = (float)c->k[i * dk + d];
            attnd_kernel_kv_bounds_add(&l, bounds, np, pg, 1, ATTND_DTYPE_F32, wire);
        }
        attnd_kernel_kv_bounds8_make(&l, bounds, b8, np, pg);
    }
    st = choose(c, o, &l, bounds, b8, np, chosen, n_sel, err);
    if (st != ATTND_OK)
        goto err_alloc;
    attnd__acc_table add;
    memset(&add, 0, sizeof add);
    for (int32_t h = 0; h < c->hq; h++) {
        dense(c, h, p, od);
        for (int64_t j = 0; j < np; j++) { /* the oracle: by this head's mass */
            pm[j].p = j;
            pm[j].m = 0;
            for (int64_t i = j * ps; i < (j + 1) * ps && i < T; i++)
                pm[j].m += p[i];
        }
        qsort(pm, (size_t)np, sizeof *pm, cmp_mass);
        for (int b = 0; b < ATTND__ACC_NB; b++) {
            int64_t k = (int64_t)ceil(attnd__acc_budgets[b] * (double)np);
            for (int64_t j = 0; j < k; j++)
                keep[j] = pm[j].p;
            for (int pol = 0; pol < ATTND__ACC_NPOL; pol++) {
                const int64_t *cp = pol == ATTND__ACC_ORACLE ? keep : chosen[pol][b];
                int64_t n = pol == ATTND__ACC_ORACLE ? k : n_sel[pol][b];
                double rec, e;
                sparse_eval(c, ps, cp, n, p, od, os, &rec, &e);
                int bounded = pol == ATTND__ACC_TOPK || pol == ATTND__ACC_HEAD ||
                              pol == ATTND__ACC_RANKS;
                double bnd = bounded                 ? np * bound_bytes
                             : pol == ATTND__ACC_B16 ? np * bound16_bytes
                                                     : 0;
                double bytes = (double)n * ps * tok_bytes + bnd;
                acc_add(&add.a[pol][b], rec, e, bytes / ((double)T * tok_bytes));
            }
        }
    }
    for (int pol = 0; pol < ATTND__ACC_NPOL; pol++) /* merge: *t changes only on success */
        for (int b = 0; b < ATTND__ACC_NB; b++) {
            attnd__acc *x = &t->a[pol][b];
            const attnd__acc *y = &add.a[pol][b];
            if (x->n == 0 || y->recall_min < x->recall_min)
                x->recall_min = y->recall_min;
            if (x->n == 0 || y->err_max > x->err_max)
                x->err_max = y->err_max;
            x->recall += y->recall;
            x->err += y->err;
            x->bytes += y->bytes;
            x->n += y->n;
        }
    st = ATTND_OK;
err_alloc:
    for (int pol = 0; pol < ATTND__ACC_NPOL; pol++)
        for (int b = 0; b < ATTND__ACC_NB; b++)
            free(chosen[pol][b]);
    free(pm);
    free(keep);
    free(os);
    free(od);
    free(p);
    free(wire);
    free(b8);
    free(bounds);
    return st;
}

void attnd__acc_print(FILE *f, const char *label, const attnd__acc_table *t, int header)
{
    static const char *const names[ATTND__ACC_NPOL] = {
        [ATTND__ACC_TOPK] = "topk-pages",
        [ATTND__ACC_HEAD] = "topk-pages, per head",
        [ATTND__ACC_STREAM] = "streaming",
        [ATTND__ACC_ORACLE] = "oracle pages",
        [ATTND__ACC_RANKS] = "topk-pages, per rank",
        [ATTND__ACC_B16] = "topk-pages, bf16 bounds"};
    if (header)
        fprintf(f, "| workload | policy | budget | mass recall mean (min) | output error mean (max) "
                   "| KV read vs dense |\n|---|---|---|---|---|---|\n");
    for (int pol = 0; pol < ATTND__ACC_NPOL; pol++)
        for (int b = 0; b < ATTND__ACC_NB; b++) {
            const attnd__acc *x = &t->a[pol][b];
            if (x->n == 0)
                continue;
            fprintf(f, "| %s | %s | 1/%d | %.3f (%.3f) | %.3f (%.3f) | %.3f |\n", label, names[pol],
                    (int)(1.0 / attnd__acc_budgets[b] + 0.5), x->recall / x->n, x->recall_min,
                    x->err / x->n, x->err_max, x->bytes / x->n);
        }
}
