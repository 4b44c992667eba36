/* Internal interfaces of the CPU kernels (not part of attnd_kernels.h):
 * the work-unit calling convention every path implements, the scratch
 * geometry the SIMD paths share, and the thread pool's job hook that the
 * parallel run and kbench use.
 *
 * A unit is (sequence, KV head, listed-token range). Its R = S * G query
 * rows (S query tokens, G = Hq / Hkv heads per KV head) are ordered
 * r = s * G + g; row r's output goes to out + s * out_s + g * d_v and its
 * lse to lse + s * lse_s + g. Pointing these at the batch's out/lse (out_s
 * = Hq * d_v, lse_s = Hq) writes the final rows; pointing them at a plan's
 * partial slot (out_s = G * d_v, lse_s = G) writes a partial state. */
#ifndef ATTND_CPU_INT_H
#define ATTND_CPU_INT_H

#include <stddef.h>
#include <stdint.h>

#include "attnd_kernels.h"

typedef struct attnd__unit {
    int32_t seq, kv_head;
    int64_t t0, t1; /* listed-token range; clamped to the sequence */
    float *out;
    int64_t out_s;
    float *lse; /* NULL: not wanted */
    int64_t lse_s;
} attnd__unit;

/* Compute one unit with `work` as scratch (attnd_kernel_decode_work_floats(b)
 * floats, any alignment). Every row gets a state: an empty range gives
 * out 0 and lse -inf. */
typedef void (*attnd__unit_fn)(const attnd_kernel_decode_batch *b,
                               const attnd__unit *u, float *work);

void attnd__decode_unit_scalar(const attnd_kernel_decode_batch *b,
                               const attnd__unit *u, float *work);
#if defined(ATTND_HAVE_X86_SIMD)
void attnd__decode_unit_avx2(const attnd_kernel_decode_batch *b,
                             const attnd__unit *u, float *work);
void attnd__decode_unit_avx512(const attnd_kernel_decode_batch *b,
                               const attnd__unit *u, float *work);
void attnd__decode_unit_avx512bf16(const attnd_kernel_decode_batch *b,
                                   const attnd__unit *u, float *work);
#endif

/* One core's float32 FMA and vdpbf16ps peaks, GFLOP/s, measured now
 * (calibrate.c; about a millisecond; only where avx512_bf16 runs). */
typedef struct attnd__calib {
    double fma_gflops, dpbf16_gflops;
} attnd__calib;
#if defined(ATTND_HAVE_X86_SIMD)
void attnd__calibrate(attnd__calib *c);
#endif

/* The unit function of path p (p must be supported). */
attnd__unit_fn attnd__path_unit_fn(attnd_kernel_path p);

/* A poisoned row (attnd_kernels.h's non-finite rule): every element of
 * out[0, d) and *lse become NaN. */
static inline void attnd__nan_row(float *out, int32_t d, float *lse)
{
    for (int32_t e = 0; e < d; e++)
        out[e] = __builtin_nanf("");
    if (lse)
        *lse = __builtin_nanf("");
}

/* ---- SIMD scratch geometry (shared by decode_simd.h and the sizing) -----
 * Dims are padded to multiples of 16 floats so that every vector load of a
 * row stays inside it (padding is zero); every block starts 64-byte
 * aligned. */
#define ATTND__PAD 16

static inline int64_t attnd__round_up(int64_t x, int64_t m)
{
    return (x + m - 1) / m * m;
}

typedef struct attnd__simd_dims {
    int32_t rows;       /* R = S * G */
    int32_t rows_pad;   /* R rounded up to 16 */
    int32_t dk, dv;     /* d_k, d_v */
    int32_t dk_pad, dv_pad;
} attnd__simd_dims;

static inline attnd__simd_dims attnd__simd_dims_of(const attnd_kernel_decode_batch *b)
{
    attnd__simd_dims d;
    d.rows = b->q_tokens * (b->n_q_heads / b->kv->n_kv_heads);
    d.rows_pad = (int32_t)attnd__round_up(d.rows, ATTND__PAD);
    d.dk = b->kv->d_k;
    d.dv = b->kv->d_v;
    d.dk_pad = (int32_t)attnd__round_up(d.dk, ATTND__PAD);
    d.dv_pad = (int32_t)attnd__round_up(d.dv, ATTND__PAD);
    return d;
}

/* Floats of the SIMD scratch, in carve order (each block 64-byte aligned):
 *   q      rows_pad * dk_pad   packed queries (wide: [dk][rows_pad],
 *                              narrow: [rows][dk_pad])
 *   k      2 * TILE * dk_pad   K rows of this tile and the next, float32
 *   v      2 * TILE * dv_pad   their V rows (GQA; MLA reads V inside k)
 *   s, p   TILE * rows_pad     scores and probabilities, each
 *   m, l, alpha, vis  rows_pad each   softmax state, visible lengths
 *   o      rows * dv_pad       unnormalized output rows
 * plus 16 floats to align the start. */
static inline size_t attnd__simd_work_floats(const attnd__simd_dims *d)
{
    size_t rp = (size_t)d->rows_pad, t = ATTND_KERNEL_DECODE_TILE;
    return rp * (size_t)d->dk_pad + 2 * t * (size_t)d->dk_pad + 2 * t * (size_t)d->dv_pad +
           2 * t * rp + 4 * rp + (size_t)d->rows * (size_t)d->dv_pad + 16 * 11;
}

/* Floats of the bf16 dot-product unit's scratch (decode_bf16.h), in carve
 * order: q and its low half (rows_pad * dk32 bf16 each), 2 * VW rows of
 * dk32 bf16 and dk32 floats to pack them, K (2 x TILE x dk32 bf16), V pairs
 * (2 x TILE x dv32 bf16), s and p (TILE x rows_pad), P pairs (TILE / 2 x
 * rows_pad), m, l, alpha, the running max, vis (rows_pad each), O (rows x
 * dv32); each block 64-byte aligned. dk32, dv32: rounded up to 32. */
static inline size_t attnd__bf16_work_floats(const attnd__simd_dims *d)
{
    size_t rp = (size_t)d->rows_pad, t = ATTND_KERNEL_DECODE_TILE;
    size_t dk32 = (size_t)attnd__round_up(d->dk, 32), dv32 = (size_t)attnd__round_up(d->dv, 32);
    return rp * dk32 + 16 * dk32 + dk32 + t * dk32 + t * dv32 + 2 * t * rp + t / 2 * rp +
           5 * rp + (size_t)d->rows * dv32 + 16 * 18;
}

/* ---- pool job hook (threadpool.c) ---------------------------------------
 * Run fn(ctx, tid) once on every thread of the pool, tid 0 being the
 * calling thread, and return when all have returned. Callers of one pool
 * are serialized. scratch_floats > 0 first makes sure every thread has
 * that many floats of 64-byte aligned scratch (attnd__pool_scratch); 0 or
 * -1 if growing it failed (then nothing ran). */
typedef void (*attnd__pool_fn)(void *ctx, int32_t tid);
int attnd__pool_run(attnd_kernel_pool *pool, size_t scratch_floats,
                    attnd__pool_fn fn, void *ctx);
/* Thread tid's scratch (valid inside a job). */
float *attnd__pool_scratch(attnd_kernel_pool *pool, int32_t tid);
/* The pool's own plan, for attnd_kernel_decode_parallel. Only touched with
 * the pool's job lock held: see attnd__pool_lock. */
attnd_kernel_decode_plan *attnd__pool_plan(attnd_kernel_pool *pool);
/* Take / release the pool's job lock around a plan + run pair (the run
 * itself then uses attnd__pool_run_locked). */
void attnd__pool_lock(attnd_kernel_pool *pool);
void attnd__pool_unlock(attnd_kernel_pool *pool);
int attnd__pool_run_locked(attnd_kernel_pool *pool, size_t scratch_floats,
                           attnd__pool_fn fn, void *ctx);

#endif /* ATTND_CPU_INT_H */
