/* attnd_wire's ground floor: segmented input (attnd_wire_in), the cursor
 * that walks it, the protobuf wire primitives with protobuf-c's acceptance
 * rules (wire_int.h lists them), and the varint writers. */
#include <limits.h>
#include <string.h>

#include "attnd_dtype.h"
#include "wire_int.h"

/* ---- input ------------------------------------------------------------------ */

static attnd_wire_seg seg_at(const attnd_wire_in *in, size_t i)
{
    if (in->segs)
        return in->segs[i];
    if (in->seg)
        return in->seg(in->ctx, i);
    return in->one;
}

static void in_sum(attnd_wire_in *in)
{
    in->len = 0;
    for (size_t i = 0; i < in->n; i++)
        in->len += seg_at(in, i).len;
}

void attnd_wire_in_flat(attnd_wire_in *in, const void *p, size_t len)
{
    memset(in, 0, sizeof *in);
    in->n = 1;
    in->one.p = p;
    in->one.len = len;
    in->len = len;
}

void attnd_wire_in_segs(attnd_wire_in *in, const attnd_wire_seg *segs, size_t n)
{
    memset(in, 0, sizeof *in);
    in->n = n;
    in->segs = segs;
    in_sum(in);
}

void attnd_wire_in_fn(attnd_wire_in *in, attnd_wire_seg (*seg)(const void *ctx, size_t i),
                      const void *ctx, size_t n)
{
    memset(in, 0, sizeof *in);
    in->n = n;
    in->seg = seg;
    in->ctx = ctx;
    in_sum(in);
}

/* ---- the cursor ------------------------------------------------------------- */

void attnd__wire_cur_init(attnd__wire_cur *c, const attnd_wire_in *in)
{
    c->in = in;
    c->next = 0;
    c->p = c->end = NULL;
    c->pos = 0;
}

/* Make p point at a byte; callers never read past in->len, so one exists. */
static void cur_load(attnd__wire_cur *c)
{
    while (c->p == c->end && c->next < c->in->n) {
        attnd_wire_seg s = seg_at(c->in, c->next++);
        if (s.len) {
            c->p = s.p;
            c->end = c->p + s.len;
        }
    }
}

static uint8_t cur_byte(attnd__wire_cur *c)
{
    cur_load(c);
    c->pos++;
    return *c->p++;
}

void attnd__wire_skip(attnd__wire_cur *c, size_t n)
{
    while (n) {
        cur_load(c);
        size_t m = (size_t)(c->end - c->p);
        if (m > n)
            m = n;
        c->p += m;
        c->pos += m;
        n -= m;
    }
}

void attnd__wire_cur_seek(attnd__wire_cur *c, size_t off)
{
    if (off < c->pos)
        attnd__wire_cur_init(c, c->in);
    attnd__wire_skip(c, off - c->pos);
}

void attnd_wire_copy(const attnd_wire_in *in, size_t off, size_t len, void *dst)
{
    attnd__wire_cur c;
    unsigned char *d = dst;

    attnd__wire_cur_init(&c, in);
    attnd__wire_skip(&c, off);
    while (len) {
        cur_load(&c);
        size_t m = (size_t)(c.end - c.p);
        if (m > len)
            m = len;
        memcpy(d, c.p, m);
        d += m;
        c.p += m;
        len -= m;
    }
}

size_t attnd_wire_copy_checked(const attnd_wire_in *in, size_t off, size_t len, void *dst,
                               attnd_dtype t)
{
    enum { PIECE = 32 * 1024 }; /* checked while in L1/L2 */
    const size_t es = attnd_dtype_size(t), n = len / es;
    unsigned char *d = dst;
    size_t done = 0, checked = 0, bad = n;
    attnd__wire_cur c;

    attnd__wire_cur_init(&c, in);
    attnd__wire_skip(&c, off);
    while (done < len) {
        cur_load(&c);
        size_t m = (size_t)(c.end - c.p);
        if (m > len - done)
            m = len - done;
        if (m > PIECE)
            m = PIECE;
        memcpy(d + done, c.p, m);
        c.p += m;
        done += m;
        size_t whole = done / es; /* an element split over pieces waits */
        if (bad == n && whole > checked) {
            size_t k = attnd_dtype_find_nonfinite(t, d + checked * es, whole - checked);
            if (k < whole - checked)
                bad = checked + k;
        }
        checked = whole;
    }
    return bad;
}

const void *attnd_wire_view(const attnd_wire_in *in, size_t off, size_t len)
{
    static const uint8_t none[1];
    size_t at = 0;

    if (len == 0)
        return none;
    for (size_t i = 0; i < in->n; i++) {
        attnd_wire_seg s = seg_at(in, i);
        if (off < at + s.len)
            return off + len <= at + s.len ? (const uint8_t *)s.p + (off - at) : NULL;
        at += s.len;
    }
    return NULL;
}

/* ---- primitives (protobuf-c's rules) ------------------------------------------ */

int attnd__wire_key(attnd__wire_cur *c, size_t lim, uint32_t *tag_p, unsigned *wt_p)
{
    size_t max = lim - c->pos > 5 ? 5 : lim - c->pos;
    uint8_t b = cur_byte(c);
    uint32_t tag = (uint32_t)(b & 0x7f) >> 3;
    unsigned shift = 4;

    if ((b & 0xf8) == 0) /* tag 0 in a one-byte key */
        return -1;
    *wt_p = b & 7;
    if (!(b & 0x80)) {
        *tag_p = tag;
        return 0;
    }
    for (size_t i = 1; i < max; i++) {
        b = cur_byte(c);
        tag |= (uint32_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *tag_p = tag;
            return 0;
        }
        shift += 7;
    }
    return -1;
}

/* A varint of at most 10 bytes ending before lim; *any_p: a byte with a
 * low bit set (protobuf-c's bool). */
static int cur_varint(attnd__wire_cur *c, size_t lim, uint64_t *v_p, int *any_p)
{
    size_t max = lim - c->pos > 10 ? 10 : lim - c->pos;
    uint64_t x = 0;
    int any = 0;

    for (size_t i = 0; i < max; i++) {
        uint8_t b = cur_byte(c);
        any |= (b & 0x7f) != 0;
        x |= (uint64_t)(b & 0x7f) << (7 * i); /* the 10th byte keeps bit 0 */
        if (!(b & 0x80)) {
            *v_p = x;
            *any_p = any;
            return 0;
        }
    }
    return -1;
}

int attnd__wire_value(attnd__wire_cur *c, size_t lim, unsigned wt, attnd__wire_val *v)
{
    size_t rem = lim - c->pos;

    memset(v, 0, sizeof *v);
    v->wt = wt;
    switch (wt) {
    case ATTND__WT_VARINT:
        return cur_varint(c, lim, &v->v, &v->any);
    case ATTND__WT_64:
    case ATTND__WT_32: {
        size_t n = wt == ATTND__WT_64 ? 8 : 4;
        if (rem < n)
            return -1;
        for (size_t i = 0; i < n; i++)
            v->any |= (cur_byte(c) & 0x7f) != 0;
        return 0;
    }
    case ATTND__WT_LEN: {
        size_t max = rem > 5 ? 5 : rem, len = 0, i;
        for (i = 0; i < max; i++) {
            uint8_t b = cur_byte(c);
            len |= (size_t)(b & 0x7f) << (7 * i);
            if (!(b & 0x80))
                break;
        }
        if (i == max || len > INT_MAX || len > rem - (i + 1))
            return -1;
        v->off = c->pos; /* the caller reads or skips the body */
        v->len = len;
        v->any = len != 0; /* a nonzero prefix has a low bit set */
        return 0;
    }
    default: /* groups (3, 4) and 6, 7 */
        return -1;
    }
}

int attnd__wire_packed_next(attnd__wire_cur *c, size_t lim, uint64_t *v_p)
{
    int any;
    return cur_varint(c, lim, v_p, &any);
}

/* ---- repeated scalars and tensors ---------------------------------------------- */

int attnd__wire_repeated(attnd__wire_cur *c, const attnd__wire_val *v, uint64_t *out,
                         size_t cap, size_t *n)
{
    if (v->wt == ATTND__WT_VARINT) {
        if (*n < cap)
            out[*n] = v->v;
        (*n)++;
        return 0;
    }
    if (v->wt != ATTND__WT_LEN)
        return -1; /* protobuf-c parses only varints into it */
    size_t end = v->off + v->len;
    while (c->pos < end) {
        /* the varints that surely end inside the current segment, read in
         * place (a given-tokens list is thousands of them: 15 ns a value
         * through the cursor, ~2 here); cur_varint's rules */
        const uint8_t *p = c->p;
        const size_t avail = (size_t)(c->end - c->p), left = end - c->pos;
        const uint8_t *q = p + (avail < left ? avail : left);
        const int last = avail >= left; /* q is the run's end */
        while (p < q && (last || q - p >= 10)) {
            const size_t max = (size_t)(q - p) > 10 ? 10 : (size_t)(q - p);
            uint64_t x = 0;
            size_t i = 0;
            for (;;) {
                const uint8_t b = p[i];
                x |= (uint64_t)(b & 0x7f) << (7 * i);
                i++;
                if (!(b & 0x80))
                    break;
                if (i == max)
                    return -1;
            }
            if (*n < cap)
                out[*n] = x;
            (*n)++;
            p += i;
        }
        c->pos += (size_t)(p - c->p);
        c->p = p;
        if (c->pos >= end)
            break;
        /* a varint across segments (or the next segment to load) */
        uint64_t x;
        if (attnd__wire_packed_next(c, end, &x))
            return -1;
        if (*n < cap)
            out[*n] = x;
        (*n)++;
    }
    return 0;
}

int attnd__wire_tensor(attnd__wire_cur *c, size_t lim, attnd__wire_tscan *t, int64_t *shape,
                       size_t cap)
{
    size_t fields = 0, data_off = 0, data_len = 0;
    int32_t dtype = 0;

    while (c->pos < lim) {
        uint32_t tag;
        unsigned wt;
        attnd__wire_val v;
        if (++fields > ATTND__WIRE_MAX_FIELDS || attnd__wire_key(c, lim, &tag, &wt) ||
            attnd__wire_value(c, lim, wt, &v))
            return -1;
        switch (tag) {
        case 1: /* dtype */
            if (wt != ATTND__WT_VARINT)
                return -1;
            dtype = (int32_t)(uint32_t)v.v;
            break;
        case 2: /* shape: int64 and uint64 share their bits */
            if (attnd__wire_repeated(c, &v, (uint64_t *)shape, cap, &t->n_shape))
                return -1;
            break;
        case 3: /* data: within one occurrence the last one, empty or not */
            if (wt != ATTND__WT_LEN)
                return -1;
            data_off = v.off;
            data_len = v.len;
            attnd__wire_skip(c, v.len);
            break;
        default:
            attnd__wire_value_skip(c, &v);
        }
    }
    /* merged into the earlier occurrences: dtype is this one's, data this
     * one's unless it has none */
    t->seen = 1;
    t->dtype = dtype;
    if (data_len) {
        t->data_off = data_off;
        t->data_len = data_len;
    }
    return 0;
}

/* ---- writers ------------------------------------------------------------------- */

size_t attnd__wire_vsize(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

uint8_t *attnd__wire_vput(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

uint8_t *attnd__wire_kput(uint8_t *p, unsigned field, unsigned wt)
{
    return attnd__wire_vput(p, (uint64_t)field << 3 | wt);
}

size_t attnd__wire_ksize(unsigned field)
{
    return attnd__wire_vsize((uint64_t)field << 3);
}
