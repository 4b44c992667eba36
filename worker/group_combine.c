/* Combine: the ranks' partial results of a group Attend into the reply.
 *
 * Every rank's result is rows x Hr rows of p->width floats (its out) and
 * rows x Hr LSEs (p->width: d_vo when the ranks' engines up-projected);
 * the leader's own is read where its engine left it, the peers' in the buffers their replies landed
 * in: nothing is copied to put them side by side. The combined output is
 * written straight into the caller's engine workspace, which the reply is
 * encoded from (in sequence mode with rank 0 leading, its engine wrote its
 * share there already, and the others merge into it in place):
 *
 *   sequence  partial softmax states merged in rank order 0, 1, ..., N-1
 *             (attnd_kernel_merge_states), whoever leads: deterministic
 *             for a given N; up-projected rows merge the same way (the
 *             projection is linear, the weights per row sum to 1);
 *   head      each rank's query heads placed at their offset;
 *   latent    each rank's slice of the rotated latent placed at its
 *             offset, then every row rotated back (the normalized FWHT is
 *             its own inverse); up-projected rows instead summed in rank
 *             order (the loaded W_UV is rotated); LSE the mean of the
 *             ranks' (TPLA defines none).
 */
#include <string.h>

#include "attnd_assert.h"
#include "group_int.h"

attnd_status attnd__gcombine(attnd_group *g, const attnd__gplan *p, const float *const *out,
                             const float *const *lse, attnd_engine_ws *ws, attnd_error *err)
{
    const size_t rows = p->rows, H = (size_t)g->hq, Hr = (size_t)g->hq_r;
    const size_t dv = p->d_vo ? (size_t)p->d_vo : (size_t)g->d_v, dvr = p->width;

    ATTND_ASSERT(Hr * (size_t)g->N == H || g->cfg.mode != ATTND_GROUP_HEAD);
    ATTND_ASSERT(dvr * (size_t)g->N == dv || g->cfg.mode != ATTND_GROUP_LATENT || p->d_vo);
    /* rank 0's result may lie in ws itself (it led): big enough already,
     * so that reserving moves nothing */
    ATTND_ASSERT(out[0] != ws->out || ws->cap_out >= rows * H * dv);
    ATTND_ASSERT(lse[0] != ws->lse || ws->cap_lse >= rows * H);
    if (ATTND_BUF_RESERVE(ws->out, ws->cap_out, rows * H * dv) ||
        ATTND_BUF_RESERVE(ws->lse, ws->cap_lse, rows * H))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "q: no memory for outputs");
    float *o = ws->out, *l = ws->lse;
    for (int32_t r = 0; r < g->N; r++) {
        const float *ro = out[r], *rl = lse[r];
        ATTND_ASSERT(ro && rl);
        switch (g->cfg.mode) {
        case ATTND_GROUP_SEQUENCE:
            if (r == 0) { /* rank 0 leading ran its share right here */
                if (ro != o)
                    memcpy(o, ro, sizeof(float) * rows * H * dv);
                if (rl != l)
                    memcpy(l, rl, sizeof(float) * rows * H);
            } else {
                attnd_kernel_merge_states(o, l, ro, rl, (int64_t)(rows * H), (int32_t)dv);
            }
            break;
        case ATTND_GROUP_HEAD:
            for (size_t i = 0; i < rows; i++) {
                memcpy(o + (i * H + (size_t)r * Hr) * dv, ro + i * Hr * dv,
                       sizeof(float) * Hr * dv);
                memcpy(l + i * H + (size_t)r * Hr, rl + i * Hr, sizeof(float) * Hr);
            }
            break;
        case ATTND_GROUP_LATENT:
            for (size_t i = 0; i < rows * H; i++) {
                if (!p->d_vo)
                    memcpy(o + i * dv + (size_t)r * dvr, ro + i * dvr, sizeof(float) * dvr);
                else if (r == 0)
                    memcpy(o + i * dv, ro + i * dv, sizeof(float) * dv);
                else
                    for (size_t e = 0; e < dv; e++)
                        o[i * dv + e] += ro[i * dv + e];
                l[i] = (r ? l[i] : 0.0f) + rl[i] / (float)g->N;
            }
            break;
        }
    }
    if (g->cfg.mode == ATTND_GROUP_LATENT && !p->d_vo)
        for (size_t i = 0; i < rows * H; i++)
            attnd_kernel_fwht_f32(o + i * dv, (int32_t)dv);
    return ATTND_OK;
}
