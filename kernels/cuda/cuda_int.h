/* Internal to kernels/cuda: the split-KV partition (pure C, in partition.c,
 * so that CPU tests can check it), the parameter block every decode kernel
 * takes, and the launchers the .cu files export to decode.cu. Included by
 * C and CUDA sources alike. */
#ifndef ATTND_CUDA_INT_H
#define ATTND_CUDA_INT_H

#include <stddef.h>
#include <stdint.h>

#include "attnd/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Tokens per tile: the unit every kernel loads and the scheduler counts. */
#define ATTND__CUDA_TILE 64

/* ---- partition (plan) -------------------------------------------------------
 *
 * A stream is one (sequence, head group) whose rows read one page list: n
 * tiles of 64 tokens. A unit is a range of tiles [tile0, tile1) of one
 * stream; a part is the list of units one persistent CTA runs, in order.
 * A stream covered by one unit writes the final outputs itself (slot -1;
 * an empty stream gets one unit of no tiles, which writes 0 and -inf); one
 * cut into k >= 2 units writes k partial states to slots slot0 .. slot0 +
 * k - 1 (in tile order), merged after the decode (MLA: combine kernel) or
 * by the last of them to finish (GQA: in the decode kernel). */

typedef struct attnd__cuda_unit {
    int32_t stream, tile0, tile1, slot;
} attnd__cuda_unit;

typedef struct attnd__cuda_partition {
    int32_t n_units, n_parts, n_slots, n_streams;
    attnd__cuda_unit *units; /* [n_units], part by part */
    int32_t *part_ptr;       /* [n_parts + 1]: part p runs units [ptr[p], ptr[p+1]) */
    int32_t *stream_nsplit;  /* [n_streams]: units of the stream (>= 1) */
    int32_t *stream_slot0;   /* [n_streams]: first slot (k >= 2), else -1 */
    size_t cap_units, cap_parts, cap_streams;
} attnd__cuda_partition;

void attnd__cuda_partition_init(attnd__cuda_partition *pt);
void attnd__cuda_partition_cleanup(attnd__cuda_partition *pt);

/* Partition n_streams streams (stream_tiles[i] tiles each, >= 0) over at
 * most max_parts parts. splits: 0 (AUTO) balances tiles + unit_cost per
 * unit over the parts, cutting streams where a part's share ends; k >= 1
 * cuts each stream into min(k, tiles) near-equal units; -1 one tile per
 * unit. Fails only for lack of memory (RESOURCE_EXHAUSTED) or bad
 * arguments (INVALID_ARGUMENT). */
attnd_status attnd__cuda_partition_make(attnd__cuda_partition *pt, const int32_t *stream_tiles,
                                        int32_t n_streams, int32_t max_parts, int32_t splits,
                                        int32_t unit_cost);

/* ---- the parameter block of the decode kernels ------------------------------
 *
 * Rows: a stream's rows are its q_tokens * hs (query token, head) pairs,
 * row r = s * hs + j for query token s and the stream's j-th head; the
 * head is (stream % sps) * hs + j of sequence stream / sps. A kernel CTA
 * takes rows [blockIdx.x * rows_per_cta, ...) of every unit of part
 * blockIdx.y. Units carry their page list (base in page_idx, token count),
 * so the kernels read page_idx only. */
typedef struct attnd__dec_params {
    const void *q;
    void *out;
    float *lse;
    float *part_o;   /* [slots][rows][d_v] */
    float *part_lse; /* [slots][rows] */
    int *counters;   /* [slots][n_row_blocks], zero between runs */
    const int32_t *page_idx;
    const int32_t *part_ptr; /* [parts + 1] */
    const int32_t *units;    /* [units][8]: see attnd__unit in unit.cuh */
    int32_t out_f32;
    int32_t q_tokens, n_q_heads;
    int32_t sps;  /* streams per sequence: MLA list_groups, GQA Hkv */
    int32_t hs;   /* query heads per stream */
    int32_t rows; /* rows per stream: q_tokens * hs */
    int32_t n_row_blocks;
    int32_t page_size;
    int32_t hkv;
    int32_t d_v;
    float scale_log2; /* scale * log2(e) */
} attnd__dec_params;

/* Launchers (return the cudaError_t of the launch as int). tmap points to a
 * CUtensorMap of the pool made by decode.cu. */
int attnd__mla_launch(int d_c, const attnd__dec_params *p, const void *tmap, int n_row_blocks,
                      int n_parts, void *stream);
/* Merge the partial states of n split streams, splits[i] = {stream, slot0,
 * k, 0} (int32 x 4, device), into the outputs (after an MLA decode). */
int attnd__combine_splits_launch(const attnd__dec_params *p, const int32_t *splits, int n,
                                 void *stream);
int attnd__mla_smem_bytes(int d_c);
int attnd__mla_prepare(int d_c); /* set the kernel's shared-memory limit */
int attnd__gqa_launch(int d, int nmt, const attnd__dec_params *p, const void *tmap,
                      int n_row_blocks, int n_parts, void *stream);
int attnd__gqa_prepare(int d, int nmt);
int attnd__combine_states_launch(int32_t n_parts, int64_t n_rows, int32_t d, const float *part_o,
                                 const float *part_lse, int out_f32, void *out, float *out_lse,
                                 void *stream);
int attnd__hadamard_launch(int is_f32, void *x, int64_t n_rows, int32_t dim, int64_t row_stride,
                           void *stream);

#ifdef __cplusplus
}
#endif

#endif /* ATTND_CUDA_INT_H */
