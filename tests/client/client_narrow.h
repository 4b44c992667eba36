/* Test helpers of the narrow MLA wire through libattnd, shared by the
 * client suites (tests/client/test_client_narrow.c, over gRPC and UCX) and
 * the GPU end-to-end suite (tests/gpu/test_gpu_e2e.c): a layer's random
 * W_UK [Hq, d_nope, d_c] and W_UV [Hq, d_c, d_v] as sent and as the float64
 * check sees them (cu_wset), and one heads-form Attend (cu_hstep: q [n, S,
 * Hq, d_nope + d_rope], new KV with positions, out [n, S, Hq, d_v] and LSE
 * in the cu_seqs' dtype) whose every row is checked against
 * attnd_refcheck_token_heads (absorb with W_UK, attend over the mirrored
 * KV, up-project with W_UV). ck_assert on failure (test thread only). */
#ifndef ATTND_CLIENT_NARROW_H
#define ATTND_CLIENT_NARROW_H

#include "client_testutil.h"

/* A layer's weights as sent (dtype p.w_t); owns uk and uv. */
typedef struct cu_wset {
    void *uk, *uv;
    attnd_refcheck_proj p;
} cu_wset;

/* Fresh random W_UK (d_nope wide; uniform in +-2^-k, 2^-k near
 * 1/sqrt(d_nope)) and W_UV (d_v wide; uniform in +-1) in wt for s's
 * model. */
void cu_wset_make(cu_seqs *s, cu_wset *w, uint32_t d_nope, uint32_t d_v, attnd_dtype wt);
void cu_wset_free(cu_wset *w);
/* attnd_client_load_mla_weights of both matrices into layer. */
attnd_status cu_wset_load(cu_seqs *s, const cu_wset *w, uint32_t layer, uint64_t *bytes_p,
                          attnd_error *err);

/* A heads-form request of sessions [0, n) (owns its buffers). */
typedef struct cu_hstep {
    attnd_attend_args a;
    uint32_t S, d_nope, d_v;
    void *q, *kv, *out;
    float *lse;
    uint64_t pos[CU_MAX_SEQS];
} cu_hstep;

/* Fresh q and new KV for layer (S query tokens) at each session's mirrored
 * length, sized for w's widths. */
void cu_hstep_make(cu_seqs *s, cu_hstep *h, const cu_wset *w, uint32_t layer, uint32_t n,
                   uint32_t S);
void cu_hstep_free(cu_hstep *h);
/* After a successful call: mirror the new KV, check every row against
 * the reference with w; folds the worst errors into *res. */
void cu_hstep_check(cu_seqs *s, cu_hstep *h, const cu_wset *w, attnd_refcheck_result *res);

#endif
