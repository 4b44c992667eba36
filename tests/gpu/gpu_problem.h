/* A random paged decode problem on the GPU and its float64 answer, for the
 * CUDA kernel tests.
 *
 * gp_build draws normal queries and KV, rounds them to bf16, and scatters
 * each page list's tokens over randomly chosen pages of a pool whose every
 * other slot holds NaN: unlisted pages, slots past a list's last token, and
 * (with per-KV-head lists) other heads' rows of a listed page. The index
 * array ends in garbage entries (huge and negative page numbers) past the
 * last list. The float64 copies of the rounded values feed
 * attnd_kernel_ref_attention_f64, run on a few threads. Header-only. */
#ifndef ATTND_GPU_PROBLEM_H
#define ATTND_GPU_PROBLEM_H

#include <cuda_runtime_api.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_cuda.h"
#include "attnd_kernels.h"
#include "testutil.h"

#define GP_CK(call)                                                                      \
    do {                                                                                 \
        cudaError_t e_ = (call);                                                         \
        if (e_ != cudaSuccess) {                                                         \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                \
                    cudaGetErrorString(e_));                                             \
            exit(2);                                                                     \
        }                                                                                \
    } while (0)

typedef struct gp_spec {
    int mla;              /* 1 MLA, 0 GQA */
    int32_t d_c;          /* MLA latent dims (d_r = 64) */
    int32_t hkv, head_dim; /* GQA */
    int32_t hq, q_tokens, page_size, list_groups, n_seqs;
    const int64_t *lens;  /* [n_seqs * list_groups] tokens per list */
    attnd_dtype out_dtype;
    float scale;
} gp_spec;

typedef struct gp_problem {
    gp_spec sp;
    attnd_kernel_kv_layout l;
    int32_t n_lists, nh, dk, dv, hg; /* nh: KV heads per list; hg: q heads per list */
    int64_t pool_pages, n_idx;
    int64_t *lens;
    int32_t *indptr, *idx, *last;
    double *q64;          /* [n][S][hq][dk] */
    double **k64, **v64;  /* per list [T][nh][dk], [T][nh][dv] */
    void *d_pool, *d_q, *d_out;
    float *d_lse;
    int32_t *d_indptr, *d_idx, *d_last;
    attnd_cuda_batch b;
    /* results (host) and reference */
    float *out, *lse;     /* [rows][dv], [rows] */
    double *ref, *rlse;
} gp_problem;

static inline uint16_t gp_bf16(float f)
{
    return attnd_dtype_f32_to_bf16(f);
}

static inline void gp_build(gp_problem *p, const gp_spec *sp, tu_rng *r)
{
    memset(p, 0, sizeof *p);
    p->sp = *sp;
    attnd_kernel_kv_layout *l = &p->l;
    if (sp->mla)
        attnd_kernel_kv_layout_mla(l, sp->d_c, 64, sp->page_size, ATTND_DTYPE_BF16);
    else
        attnd_kernel_kv_layout_gqa(l, sp->hkv, sp->head_dim, sp->page_size, ATTND_DTYPE_BF16);
    const int32_t n = sp->n_seqs, lg = sp->list_groups, ps = sp->page_size;
    p->dk = l->d_k;
    p->dv = l->d_v;
    p->n_lists = n * lg;
    p->nh = sp->mla ? 1 : sp->hkv / lg;
    p->hg = sp->hq / lg;
    p->lens = malloc(sizeof(int64_t) * (size_t)p->n_lists);
    memcpy(p->lens, sp->lens, sizeof(int64_t) * (size_t)p->n_lists);

    p->indptr = calloc((size_t)p->n_lists + 1, sizeof(int32_t));
    p->last = calloc((size_t)p->n_lists + 1, sizeof(int32_t));
    for (int32_t i = 0; i < p->n_lists; i++) {
        int64_t np = (p->lens[i] + ps - 1) / ps;
        p->indptr[i + 1] = p->indptr[i] + (int32_t)np;
        p->last[i] = np ? (int32_t)(p->lens[i] - (np - 1) * ps) : 0;
    }
    int64_t total = p->indptr[p->n_lists];
    p->pool_pages = total + 5;
    p->n_idx = total;
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)p->pool_pages);
    for (int64_t j = 0; j < p->pool_pages; j++)
        perm[j] = (int32_t)j;
    for (int64_t j = p->pool_pages - 1; j > 0; j--) {
        int64_t k = tu_int(r, 0, j);
        int32_t t = perm[j];
        perm[j] = perm[k];
        perm[k] = t;
    }
    p->idx = malloc(sizeof(int32_t) * (size_t)(total + 16));
    memcpy(p->idx, perm, sizeof(int32_t) * (size_t)total);
    for (int j = 0; j < 16; j++) /* garbage past the last list */
        p->idx[total + j] = (j & 1) ? -1 - j * 977 : 0x7fffff00 - j;
    free(perm);

    size_t pool_elems = (size_t)p->pool_pages * (size_t)l->page_stride;
    uint16_t *pool = malloc(pool_elems * sizeof(uint16_t));
    for (size_t j = 0; j < pool_elems; j++)
        pool[j] = 0x7fc0; /* NaN */

    const int32_t nh = p->nh, dk = p->dk, dv = p->dv;
    p->k64 = calloc((size_t)p->n_lists, sizeof(double *));
    p->v64 = calloc((size_t)p->n_lists, sizeof(double *));
    for (int32_t li = 0; li < p->n_lists; li++) {
        int64_t T = p->lens[li];
        int32_t kvh0 = sp->mla ? 0 : (li % lg) * nh;
        p->k64[li] = malloc(sizeof(double) * (size_t)(T * nh * dk + 1));
        p->v64[li] = malloc(sizeof(double) * (size_t)(T * nh * dv + 1));
        for (int64_t t = 0; t < T; t++) {
            int32_t page = p->idx[p->indptr[li] + t / ps];
            int64_t slot = t % ps;
            uint16_t *pg = pool + (size_t)page * (size_t)l->page_stride;
            for (int32_t h = 0; h < nh; h++) {
                uint16_t *kr = pg + (kvh0 + h) * l->k_head_stride + slot * l->k_token_stride;
                double *k64 = p->k64[li] + (t * nh + h) * dk;
                for (int32_t d = 0; d < dk; d++) {
                    kr[d] = gp_bf16((float)tu_normal(r));
                    k64[d] = attnd_dtype_bf16_to_f32(kr[d]);
                }
                double *v64 = p->v64[li] + (t * nh + h) * dv;
                if (sp->mla) {
                    memcpy(v64, k64, sizeof(double) * (size_t)dv);
                } else {
                    uint16_t *vr = pg + l->v_offset + (kvh0 + h) * l->v_head_stride +
                                   slot * l->v_token_stride;
                    for (int32_t d = 0; d < dv; d++) {
                        vr[d] = gp_bf16((float)tu_normal(r));
                        v64[d] = attnd_dtype_bf16_to_f32(vr[d]);
                    }
                }
            }
        }
    }

    size_t nq = (size_t)n * sp->q_tokens * sp->hq * dk;
    uint16_t *q = malloc(nq * sizeof(uint16_t) + 2);
    p->q64 = malloc(sizeof(double) * (nq + 1));
    for (size_t j = 0; j < nq; j++) {
        q[j] = gp_bf16((float)tu_normal(r));
        p->q64[j] = attnd_dtype_bf16_to_f32(q[j]);
    }

    size_t rows = (size_t)n * sp->q_tokens * sp->hq;
    size_t es_out = sp->out_dtype == ATTND_DTYPE_F32 ? 4 : 2;
    GP_CK(cudaMalloc(&p->d_pool, pool_elems * 2));
    GP_CK(cudaMalloc(&p->d_q, nq * 2 + 16));
    GP_CK(cudaMalloc(&p->d_out, rows * dv * es_out + 16));
    GP_CK(cudaMalloc((void **)&p->d_lse, rows * 4 + 16));
    GP_CK(cudaMalloc((void **)&p->d_indptr, sizeof(int32_t) * ((size_t)p->n_lists + 1)));
    GP_CK(cudaMalloc((void **)&p->d_idx, sizeof(int32_t) * (size_t)(total + 16)));
    GP_CK(cudaMalloc((void **)&p->d_last, sizeof(int32_t) * ((size_t)p->n_lists + 1)));
    GP_CK(cudaMemcpy(p->d_pool, pool, pool_elems * 2, cudaMemcpyHostToDevice));
    GP_CK(cudaMemcpy(p->d_q, q, nq * 2, cudaMemcpyHostToDevice));
    GP_CK(cudaMemcpy(p->d_indptr, p->indptr, sizeof(int32_t) * ((size_t)p->n_lists + 1),
                     cudaMemcpyHostToDevice));
    GP_CK(cudaMemcpy(p->d_idx, p->idx, sizeof(int32_t) * (size_t)(total + 16),
                     cudaMemcpyHostToDevice));
    GP_CK(cudaMemcpy(p->d_last, p->last, sizeof(int32_t) * ((size_t)p->n_lists + 1),
                     cudaMemcpyHostToDevice));
    free(pool);
    free(q);
    /* pageable copies may still be in flight: the kernels run on another
     * (non-blocking) stream */
    GP_CK(cudaDeviceSynchronize());

    attnd_cuda_batch *b = &p->b;
    b->n_seqs = n;
    b->q_tokens = sp->q_tokens;
    b->n_q_heads = sp->hq;
    b->list_groups = lg;
    b->scale = sp->scale;
    b->kv = *l;
    b->pool_pages = p->pool_pages;
    b->q = p->d_q;
    b->pool = p->d_pool;
    b->page_indptr = p->d_indptr;
    b->page_idx = p->d_idx;
    b->last_page_len = p->d_last;
    b->out_dtype = sp->out_dtype;
    b->out = p->d_out;
    b->lse = p->d_lse;

    p->out = malloc(sizeof(float) * rows * dv + 4);
    p->lse = malloc(sizeof(float) * rows + 4);
    p->ref = NULL;
    p->rlse = NULL;
}

/* Fill the device outputs with NaN (all bits set) before a run, on the
 * stream the kernels run on. */
static inline void gp_poison(gp_problem *p, void *stream)
{
    size_t rows = (size_t)p->sp.n_seqs * p->sp.q_tokens * p->sp.hq;
    size_t es = p->sp.out_dtype == ATTND_DTYPE_F32 ? 4 : 2;
    GP_CK(cudaMemsetAsync(p->d_out, 0xff, rows * p->dv * es, (cudaStream_t)stream));
    GP_CK(cudaMemsetAsync(p->d_lse, 0xff, rows * 4, (cudaStream_t)stream));
}

/* Copy the outputs back, widened to float32. */
static inline void gp_fetch(gp_problem *p)
{
    size_t rows = (size_t)p->sp.n_seqs * p->sp.q_tokens * p->sp.hq;
    size_t n = rows * p->dv;
    if (p->sp.out_dtype == ATTND_DTYPE_F32) {
        GP_CK(cudaMemcpy(p->out, p->d_out, n * 4, cudaMemcpyDeviceToHost));
    } else {
        uint16_t *h = malloc(n * 2 + 2);
        GP_CK(cudaMemcpy(h, p->d_out, n * 2, cudaMemcpyDeviceToHost));
        for (size_t j = 0; j < n; j++)
            p->out[j] = attnd_dtype_bf16_to_f32(h[j]);
        free(h);
    }
    GP_CK(cudaMemcpy(p->lse, p->d_lse, rows * 4, cudaMemcpyDeviceToHost));
}

/* ---- float64 reference, on a few threads ------------------------------- */

typedef struct gp_ref_job {
    gp_problem *p;
    int64_t next, total; /* tasks: (seq, token, list group) */
    pthread_mutex_t mu;
} gp_ref_job;

static void *gp_ref_worker(void *arg)
{
    gp_ref_job *j = arg;
    gp_problem *p = j->p;
    const gp_spec *sp = &p->sp;
    const int32_t S = sp->q_tokens, lg = sp->list_groups, hg = p->hg;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        int64_t task = j->next++;
        pthread_mutex_unlock(&j->mu);
        if (task >= j->total)
            break;
        int32_t g = (int32_t)(task % lg);
        int32_t s = (int32_t)((task / lg) % S);
        int32_t i = (int32_t)(task / ((int64_t)lg * S));
        int32_t li = i * lg + g;
        int64_t vis = p->lens[li] - (S - 1 - s);
        if (vis < 0)
            vis = 0;
        size_t row = ((size_t)i * S + s) * sp->hq + (size_t)g * hg;
        attnd_kernel_ref_attention_f64(hg, p->nh, p->dk, p->dv, vis, sp->scale,
                                       p->q64 + row * p->dk, p->k64[li], p->v64[li],
                                       p->ref + row * p->dv, p->rlse + row);
    }
    return NULL;
}

static inline void gp_reference(gp_problem *p, int threads)
{
    size_t rows = (size_t)p->sp.n_seqs * p->sp.q_tokens * p->sp.hq;
    if (!p->ref) {
        p->ref = malloc(sizeof(double) * rows * p->dv + 8);
        p->rlse = malloc(sizeof(double) * rows + 8);
    }
    gp_ref_job j = {p, 0, (int64_t)p->sp.n_seqs * p->sp.q_tokens * p->sp.list_groups,
                    PTHREAD_MUTEX_INITIALIZER};
    pthread_t th[64];
    if (threads > 64)
        threads = 64;
    for (int t = 0; t < threads; t++)
        pthread_create(&th[t], NULL, gp_ref_worker, &j);
    for (int t = 0; t < threads; t++)
        pthread_join(th[t], NULL);
}

/* Worst per-row normwise relative error of out (max-norm; absolute where
 * the reference row is zero) and worst absolute LSE error. */
static inline void gp_check(const gp_problem *p, double *out_err, double *lse_err)
{
    size_t rows = (size_t)p->sp.n_seqs * p->sp.q_tokens * p->sp.hq;
    double wo = 0, wl = 0;
    for (size_t r = 0; r < rows; r++) {
        double e = tu_rel_err_f32(p->out + r * p->dv, p->ref + r * p->dv, (size_t)p->dv);
        if (!(e <= wo))
            wo = e;
        double le, got = p->lse[r], want = p->rlse[r];
        if (isinf(want))
            le = (isinf(got) && got < 0) ? 0.0 : INFINITY;
        else
            le = isnan(got) ? INFINITY : fabs(got - want);
        if (!(le <= wl))
            wl = le;
    }
    *out_err = wo;
    *lse_err = wl;
}

static inline void gp_free(gp_problem *p)
{
    for (int32_t i = 0; i < p->n_lists; i++) {
        free(p->k64[i]);
        free(p->v64[i]);
    }
    free(p->k64);
    free(p->v64);
    free(p->q64);
    free(p->lens);
    free(p->indptr);
    free(p->idx);
    free(p->last);
    free(p->out);
    free(p->lse);
    free(p->ref);
    free(p->rlse);
    cudaFree(p->d_pool);
    cudaFree(p->d_q);
    cudaFree(p->d_out);
    cudaFree(p->d_lse);
    cudaFree(p->d_indptr);
    cudaFree(p->d_idx);
    cudaFree(p->d_last);
}

#endif /* ATTND_GPU_PROBLEM_H */
