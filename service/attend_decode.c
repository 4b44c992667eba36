/* An AttendRequest decoded in place: the tensors' bytes stay where they
 * arrived (the UCX endpoint's receive buffer) instead of being copied into
 * the arena by protobuf-c, which for a DeepSeek-V3 batch of 32 is 4.7 MB
 * per layer.
 *
 * Only the canonical encoding is taken here: every field known to this
 * file with its declared wire type, each message field (q, new_kv) at most
 * once, lengths within bounds. Anything else, a field this file does not
 * know (say, one added to attnd.proto later) included, returns -1 and the
 * caller hands the bytes to protobuf-c,
 * so an odd or malformed request gets exactly protobuf-c's decoding (and
 * its error). Repeated fields may come packed or not, in any number of
 * runs, as protobuf-c accepts them: pass one counts, pass two fills.
 */
#include <string.h>

#include "attend_decode.h"

typedef struct rd {
    const uint8_t *p, *end;
} rd;

static int rd_varint(rd *r, uint64_t *v)
{
    uint64_t x = 0;
    for (int shift = 0; shift < 70 && r->p < r->end; shift += 7) {
        uint8_t b = *r->p++;
        if (shift == 63 && b > 1)
            return -1;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* A length-delimited field's body as a sub-reader. */
static int rd_sub(rd *r, rd *sub)
{
    uint64_t n;
    if (rd_varint(r, &n) || n > (uint64_t)(r->end - r->p))
        return -1;
    sub->p = r->p;
    sub->end = r->p + n;
    r->p += n;
    return 0;
}

static int rd_skip(rd *r, unsigned wt)
{
    uint64_t v;
    rd sub;
    switch (wt) {
    case 0: return rd_varint(r, &v);
    case 1: if (r->end - r->p < 8) return -1; r->p += 8; return 0;
    case 2: return rd_sub(r, &sub);
    case 5: if (r->end - r->p < 4) return -1; r->p += 4; return 0;
    default: return -1;
    }
}

/* Count (out NULL) or store the varints of a repeated scalar field
 * occurrence: packed (wt 2) or one value (wt 0). */
static int rd_repeated(rd *r, unsigned wt, uint64_t *out, size_t *n)
{
    uint64_t v;
    if (wt == 0) {
        if (rd_varint(r, &v))
            return -1;
        if (out)
            out[*n] = v;
        (*n)++;
        return 0;
    }
    if (wt != 2)
        return -1;
    rd sub;
    if (rd_sub(r, &sub))
        return -1;
    while (sub.p < sub.end) {
        if (rd_varint(&sub, &v))
            return -1;
        if (out)
            out[*n] = v;
        (*n)++;
    }
    return 0;
}

/* Parse a Tensor body; with t NULL only count its shape entries. */
static int rd_tensor(rd r, Attnd__V1__Tensor *t, size_t *n_shape)
{
    uint64_t key, v;
    size_t n = 0;
    while (r.p < r.end) {
        if (rd_varint(&r, &key))
            return -1;
        unsigned field = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
        if (field == 1) {
            if (wt != 0 || rd_varint(&r, &v))
                return -1;
            if (t)
                t->dtype = (Attnd__V1__DType)(int32_t)v;
        } else if (field == 2) {
            if (rd_repeated(&r, wt, t ? (uint64_t *)t->shape : NULL, &n))
                return -1;
        } else if (field == 3) {
            rd sub;
            if (wt != 2 || rd_sub(&r, &sub))
                return -1;
            if (t) {
                t->data.data = (uint8_t *)sub.p;
                t->data.len = (size_t)(sub.end - sub.p);
            }
        } else {
            return -1; /* not ours to guess: protobuf-c decodes it */
        }
    }
    *n_shape = n;
    return 0;
}

int attnd_srv_attend_decode_inplace(const uint8_t *data, size_t len, attnd_srv_arena *a,
                                    Attnd__V1__AttendRequest **m_p)
{
    size_t n_ids = 0, n_pos = 0, n_qs = 0, n_kvs = 0, seen_q = 0, seen_kv = 0;
    rd r = {data, data + len}, q_body = {0}, kv_body = {0};
    uint64_t key, v;

    /* pass one: shape the message, find the tensors */
    while (r.p < r.end) {
        if (rd_varint(&r, &key))
            return -1;
        unsigned field = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
        rd sub;
        switch (field) {
        case 2:
            if (wt != 2 || rd_sub(&r, &sub))
                return -1;
            n_ids++;
            break;
        case 3:
        case 4:
            if (wt != 2 || rd_sub(&r, &sub) || (field == 3 ? seen_q++ : seen_kv++))
                return -1; /* a second occurrence would merge: protobuf-c's job */
            if (rd_tensor(sub, NULL, field == 3 ? &n_qs : &n_kvs))
                return -1;
            *(field == 3 ? &q_body : &kv_body) = sub;
            break;
        case 5:
            if (rd_repeated(&r, wt, NULL, &n_pos))
                return -1;
            break;
        case 1: case 6: case 7: case 8: case 20:
            if (wt != 0 || rd_varint(&r, &v))
                return -1;
            break;
        default:
            return -1; /* not ours to guess: protobuf-c decodes it */
        }
    }

    Attnd__V1__AttendRequest *m = attnd_srv_arena_alloc(a, sizeof *m);
    Attnd__V1__Tensor *q = attnd_srv_arena_alloc(a, sizeof *q);
    Attnd__V1__Tensor *kv = attnd_srv_arena_alloc(a, sizeof *kv);
    ProtobufCBinaryData *ids = attnd_srv_arena_alloc(a, (n_ids ? n_ids : 1) * sizeof *ids);
    uint64_t *pos = attnd_srv_arena_alloc(a, (n_pos ? n_pos : 1) * sizeof *pos);
    int64_t *q_shape = attnd_srv_arena_alloc(a, (n_qs ? n_qs : 1) * sizeof *q_shape);
    int64_t *kv_shape = attnd_srv_arena_alloc(a, (n_kvs ? n_kvs : 1) * sizeof *kv_shape);
    if (!m || !q || !kv || !ids || !pos || !q_shape || !kv_shape)
        return -1;
    attnd__v1__attend_request__init(m);
    attnd__v1__tensor__init(q);
    attnd__v1__tensor__init(kv);
    q->shape = q_shape;
    kv->shape = kv_shape;
    if (seen_q && rd_tensor(q_body, q, &q->n_shape))
        return -1;
    if (seen_kv && rd_tensor(kv_body, kv, &kv->n_shape))
        return -1;
    m->q = seen_q ? q : NULL;
    m->new_kv = seen_kv ? kv : NULL;
    m->session_ids = ids;
    m->positions = pos;

    /* pass two: the scalars and repeated fields (pass one checked it all) */
    r.p = data;
    while (r.p < r.end) {
        rd sub = {0};
        (void)rd_varint(&r, &key);
        unsigned field = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
        switch (field) {
        case 1: (void)rd_varint(&r, &v); m->layer = (uint32_t)v; break;
        case 2:
            (void)rd_sub(&r, &sub);
            ids[m->n_session_ids].data = (uint8_t *)sub.p;
            ids[m->n_session_ids++].len = (size_t)(sub.end - sub.p);
            break;
        case 5: (void)rd_repeated(&r, wt, pos, &m->n_positions); break;
        case 6: (void)rd_varint(&r, &v); m->return_lse = v != 0; break;
        case 7: (void)rd_varint(&r, &v); m->out_dtype = (Attnd__V1__DType)(int32_t)v; break;
        case 8: (void)rd_varint(&r, &v); m->request_id = v; break;
        case 20: (void)rd_varint(&r, &v); m->up_project = v != 0; break;
        default: (void)rd_skip(&r, wt); /* q, new_kv: done above */
        }
    }
    *m_p = m;
    return 0;
}
