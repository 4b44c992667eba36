/* Scatter: encode every peer's part of a group Attend and send it, and lay
 * out the leader's own part.
 *
 * A peer's part is its ATTEND message (layout in group_rank.c): the ids
 * and global lengths, its slice of the queries, its share of the new KV,
 * encoded once into a pooled buffer that the transport then owns. The
 * leader's own part is no message: it runs on the request itself where
 * the engine can read it as it is (ids and lengths always; in sequence
 * mode the whole query and the new entries, of which the rank takes its
 * own by placement), and on slices in one pooled scratch buffer where it
 * cannot: head mode's query heads and KV heads are strided in the request
 * (the engine reads contiguous rows), and latent mode's slices of the
 * rotated vectors are written by the very pass that rotates the peers'.
 *
 * Every buffer is taken before the first send, so running out of memory
 * sends nothing. Sequence and head modes then encode and send peer by peer
 * in rank order (the first peer computes while the next is encoded);
 * latent mode rotates each query and new entry once, writing every rank's
 * slice, and then sends. The bytes each rank receives are exactly what it
 * received before the leader stopped encoding a part for itself.
 *
 * Given lists (group_given.c) end each peer's message as its given
 * section; the leader's own are written to its scratch buffer and read
 * back from there by the same code a peer reads them with.
 */
#include <string.h>

#include "attnd_assert.h"
#include "group_int.h"

static size_t align64(size_t x)
{
    return (x + 63) & ~(size_t)63;
}

/* The ids, lengths and header of a peer's ATTEND message. */
static void encode_head(const attnd__gplan *p, const attnd_attend_req *req,
                        const uint64_t *glen, const attnd__gpart_layout *l, attnd__gbuf *b)
{
    memcpy(b->data + l->ids, req->ids, (size_t)p->n_seqs * ATTND_SESSION_ID_BYTES);
    memcpy(b->data + l->glen, glen, (size_t)p->n_seqs * sizeof *glen);
    b->len = l->total;
    b->hdr.type = ATTND__GMSG_ATTEND;
    b->hdr.layer = req->layer;
    b->hdr.n_seqs = p->n_seqs;
    b->hdr.q_tokens = p->S;
    b->hdr.q_dtype = p->pq;
    b->hdr.kv_dtype = p->pk;
    b->hdr.a = (uint64_t)p->d_nope;
    b->hdr.b = (uint64_t)p->d_vo;
}

/* Sequence and head modes: rank r's query slice and new-KV share, read
 * from the request (kv_dst NULL: the query only). */
static void encode_slices(const attnd_group *g, int32_t r, const attnd_attend_req *req,
                          const uint64_t *glen, const attnd__gplan *p, void *q_dst,
                          void *kv_dst)
{
    if (p->d_nope)
        attnd__gplace_slice_q_heads(g, r, p->rows, p->qt, p->d_nope, req->q, q_dst);
    else
        attnd__gplace_slice_q(g, r, p->rows, p->qt, req->q, q_dst);
    if (!req->new_kv || !kv_dst)
        return;
    if (g->cfg.mode != ATTND_GROUP_SEQUENCE) {
        attnd__gplace_slice_kv(g, r, p->rows, p->kt, req->new_kv, kv_dst);
        return;
    }
    const size_t es = (size_t)g->kv_elems * attnd_dtype_size(p->kt);
    const char *src = req->new_kv;
    char *dst = kv_dst;
    uint64_t k = 0;
    for (uint32_t i = 0; i < p->n_seqs; i++)
        k += attnd__gplace_gather_seq(g, r, glen[i], (uint64_t)p->S, es,
                                      src + (size_t)i * (size_t)p->S * es, dst + k * es);
    ATTND_ASSERT(k == p->entries[r]);
}

/* Latent mode: rotate every (absorbed) query vector and new entry once,
 * writing rank r's slice to q[r] / kv[r] (advanced as it goes); tmp: d_k
 * floats. A heads-form query is not rotated (q NULL: the caller slices
 * it). */
static void rotate_scatter(const attnd_group *g, const attnd_attend_req *req,
                           const attnd__gplan *p, float **q, float **kv, float *tmp)
{
    const size_t dk = (size_t)g->d_k, qes = attnd_dtype_size(p->qt);
    const size_t nq = q ? p->rows * (size_t)g->hq : 0;
    for (size_t i = 0; i < nq; i++) {
        attnd__gplace_rotate_split(g, p->qt, (const char *)req->q + i * dk * qes, g->cfg.mu,
                                   tmp, q);
        for (int32_t r = 0; r < g->N; r++)
            q[r] += g->d_k_r;
    }
    if (!req->new_kv)
        return;
    const size_t ke = (size_t)g->kv_elems, kes = attnd_dtype_size(p->kt);
    for (size_t i = 0; i < p->rows; i++) {
        attnd__gplace_rotate_split(g, p->kt, (const char *)req->new_kv + i * ke * kes, 1.0f,
                                   tmp, kv);
        for (int32_t r = 0; r < g->N; r++)
            kv[r] += g->kv_elems_r;
    }
}

attnd_status attnd__gscatter(attnd_group *g, attnd__gcall *c, const attnd_attend_req *req,
                             const uint64_t *glen, const attnd__gplan *p,
                             const attnd__ggiven *gv, attnd__gpart *local,
                             attnd__gbuf **scratch_p, attnd_error *err)
{
    const int32_t me = g->me;
    const int seq = g->cfg.mode == ATTND_GROUP_SEQUENCE;
    const attnd__gpart_layout *lm = &p->part[me];
    attnd__gbuf *b[ATTND_GROUP_MAX_RANKS] = {0}, *scratch = NULL;
    /* the leader's scratch (head, latent): its q slice, KV slice, and
     * latent mode's one rotated vector */
    const size_t kv_off = align64(lm->q_bytes), tmp_off = align64(kv_off + lm->kv_bytes);
    const size_t given_off = align64(tmp_off + (size_t)g->d_k * sizeof(float));
    const size_t scratch_bytes = given_off + lm->given_bytes;
    const uint64_t flags = (gv && gv->on ? ATTND__GATT_GIVEN : 0) |
                           (gv && gv->want_pages ? ATTND__GATT_PAGES : 0);

    for (int32_t r = 0; r < g->N; r++)
        if (r != me && !(b[r] = attnd__gbuf_get(g, p->part[r].total)))
            goto err_nomem;
    if ((!seq || lm->given_bytes) && !(scratch = attnd__gbuf_get(g, scratch_bytes)))
        goto err_nomem;

    /* a heads-form query with the RoPE key replicated is every rank's as
     * it is: the leader reads the request (latent mode too) */
    const int q_view = seq || (p->d_nope && g->shard.d_rope == g->cfg.model.d_rope);
    *local = (attnd__gpart){
        .layer = req->layer,
        .n_seqs = p->n_seqs,
        .q_tokens = p->S,
        .q_dtype = p->pq,
        .kv_dtype = p->pk,
        .d_nope = p->d_nope,
        .d_vo = p->d_vo,
        .ids = req->ids,
        .glen = glen,
        .q = q_view ? req->q : scratch->data,
        .kv = !req->new_kv ? NULL : seq ? req->new_kv : scratch->data + kv_off,
        .kv_whole = seq,
        .want_pages = gv && gv->want_pages,
    };
    if (lm->given_bytes) { /* the leader's own lists */
        size_t used;
        attnd__ggiven_write(g, req, glen, gv, me, scratch->data + given_off);
        attnd_status st = attnd__ggiven_read(scratch->data + given_off, lm->given_bytes,
                                             p->n_seqs, &local->given_groups,
                                             &local->given_indptr, &local->given_idx, &used,
                                             err);
        ATTND_ASSERT(st == ATTND_OK); /* it reads what it wrote */
    }
    if (g->cfg.mode == ATTND_GROUP_LATENT) {
        float *q[ATTND_GROUP_MAX_RANKS], *kv[ATTND_GROUP_MAX_RANKS];
        for (int32_t r = 0; r < g->N; r++) {
            unsigned char *base = r == me ? scratch->data : b[r]->data;
            q[r] = (float *)(base + (r == me ? 0 : p->part[r].q));
            kv[r] = (float *)(base + (r == me ? kv_off : p->part[r].kv));
        }
        rotate_scatter(g, req, p, p->d_nope ? NULL : q, kv, (float *)(scratch->data + tmp_off));
        if (p->d_nope && !q_view) /* the leader's slice of a split RoPE key */
            encode_slices(g, me, req, glen, p, scratch->data, NULL);
    } else if (!seq) {
        encode_slices(g, me, req, glen, p, scratch->data, scratch->data + kv_off);
    }
    for (int32_t r = 0; r < g->N; r++) {
        if (r == me)
            continue;
        if (g->cfg.mode != ATTND_GROUP_LATENT)
            encode_slices(g, r, req, glen, p, b[r]->data + p->part[r].q,
                          b[r]->data + p->part[r].kv);
        else if (p->d_nope)
            encode_slices(g, r, req, glen, p, b[r]->data + p->part[r].q, NULL);
        encode_head(p, req, glen, &p->part[r], b[r]);
        b[r]->hdr.stream = flags;
        if (p->part[r].given_bytes)
            attnd__ggiven_write(g, req, glen, gv, r, b[r]->data + p->part[r].given);
        if (p->reply_max[r] > p->reply) /* with the pages it attended */
            attnd__glead_send_upto(g, c, r, b[r], ((p->reply + 7) & ~(size_t)7) + 16,
                                   p->reply_max[r]);
        else
            attnd__glead_send(g, c, r, b[r], p->reply);
    }
    *scratch_p = scratch;
    return ATTND_OK;

err_nomem:
    for (int32_t r = 0; r < g->N; r++)
        attnd__gbuf_put(g, b[r]);
    attnd__gbuf_put(g, scratch);
    return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "q: out of memory");
}
