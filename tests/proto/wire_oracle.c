/* The decoders' oracle (wire_oracle.h): protobuf-c against attnd_wire. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnd.pb-c.h"
#include "attnd_dtype.h"
#include "attnd_wire.h"
#include "wire_oracle.h"

/* ---- an allocator that frees everything at once ---------------------------------- */

typedef struct track {
    ProtobufCAllocator pc;
    void **p;
    size_t n, cap;
    int failed;
} track;

static void *track_alloc(void *self, size_t n)
{
    track *t = self;
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        void **p = realloc(t->p, cap * sizeof *p);
        if (!p)
            return NULL;
        t->p = p;
        t->cap = cap;
    }
    void *m = malloc(n ? n : 1);
    if (!m)
        t->failed = 1;
    else
        t->p[t->n++] = m;
    return m;
}

static void track_free(void *self, void *p)
{
    (void)self; /* at track_done */
    (void)p;
}

static void track_init(track *t)
{
    memset(t, 0, sizeof *t);
    t->pc.alloc = track_alloc;
    t->pc.free = track_free;
    t->pc.allocator_data = t;
}

static void track_done(track *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->p[i]);
    free(t->p);
}

/* ---- inputs split into segments --------------------------------------------------- */

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#define MAX_SEGS 12

/* Split [0, len) at up to MAX_SEGS - 1 points (some repeated: empty
 * segments happen too); each segment is a copy in its own allocation, so
 * that reading past one is an error the sanitizers see. */
static size_t split(const uint8_t *data, size_t len, uint64_t seed, attnd_wire_seg *segs,
                    uint8_t **owned)
{
    size_t cuts[MAX_SEGS + 1], n = 1 + (size_t)(mix(&seed) % (MAX_SEGS - 1));
    cuts[0] = 0;
    for (size_t i = 1; i < n; i++)
        cuts[i] = len ? (size_t)(mix(&seed) % (len + 1)) : 0;
    cuts[n] = len;
    for (size_t i = 1; i < n; i++) /* sort the inner cuts */
        for (size_t j = i; j > 1 && cuts[j - 1] > cuts[j]; j--) {
            size_t t = cuts[j];
            cuts[j] = cuts[j - 1];
            cuts[j - 1] = t;
        }
    for (size_t i = 0; i < n; i++) {
        size_t l = cuts[i + 1] - cuts[i];
        owned[i] = malloc(l ? l : 1);
        if (l)
            memcpy(owned[i], data + cuts[i], l);
        segs[i].p = owned[i];
        segs[i].len = l;
    }
    return n;
}

/* ---- comparison ------------------------------------------------------------------- */

static _Thread_local char why[256];

#define DIFFER(...) (snprintf(why, sizeof why, __VA_ARGS__), why)

/* Prefix `how` to the difference d (which is why itself). */
static const char *prefixed(const char *how, const char *d)
{
    char tmp[sizeof why];
    snprintf(tmp, sizeof tmp, "%s", d);
    return DIFFER("%s: %.200s", how, tmp);
}

static const char *bytes_differ(const char *what, const ProtobufCBinaryData *a,
                                const ProtobufCBinaryData *b)
{
    if (a->len != b->len)
        return DIFFER("%s: %zu bytes vs %zu", what, a->len, b->len);
    if (a->len && memcmp(a->data, b->data, a->len) != 0)
        return DIFFER("%s: other bytes", what);
    return NULL;
}

static const char *tensor_differs(const char *what, const Attnd__V1__Tensor *a,
                                  const Attnd__V1__Tensor *b)
{
    if (!a || !b)
        return (!a) != (!b) ? DIFFER("%s: present %d vs %d", what, !!a, !!b) : NULL;
    if (a->dtype != b->dtype)
        return DIFFER("%s.dtype: %d vs %d", what, (int)a->dtype, (int)b->dtype);
    if (a->n_shape != b->n_shape)
        return DIFFER("%s.shape: %zu entries vs %zu", what, a->n_shape, b->n_shape);
    for (size_t i = 0; i < a->n_shape; i++)
        if (a->shape[i] != b->shape[i])
            return DIFFER("%s.shape[%zu]: %lld vs %lld", what, i, (long long)a->shape[i],
                          (long long)b->shape[i]);
    return bytes_differ(what, &a->data, &b->data);
}

static const char *request_differs(const Attnd__V1__AttendRequest *a,
                                   const Attnd__V1__AttendRequest *b)
{
    const char *d;
    if (a->layer != b->layer)
        return DIFFER("layer: %u vs %u", a->layer, b->layer);
    if (a->n_session_ids != b->n_session_ids)
        return DIFFER("session_ids: %zu vs %zu", a->n_session_ids, b->n_session_ids);
    for (size_t i = 0; i < a->n_session_ids; i++)
        if ((d = bytes_differ("session_ids[i]", &a->session_ids[i], &b->session_ids[i])))
            return d;
    if ((d = tensor_differs("q", a->q, b->q)) || (d = tensor_differs("new_kv", a->new_kv, b->new_kv)))
        return d;
    if (a->n_positions != b->n_positions)
        return DIFFER("positions: %zu vs %zu", a->n_positions, b->n_positions);
    for (size_t i = 0; i < a->n_positions; i++)
        if (a->positions[i] != b->positions[i])
            return DIFFER("positions[%zu]", i);
    if (a->return_lse != b->return_lse)
        return DIFFER("return_lse: %d vs %d", a->return_lse, b->return_lse);
    if (a->out_dtype != b->out_dtype)
        return DIFFER("out_dtype: %d vs %d", (int)a->out_dtype, (int)b->out_dtype);
    if (a->request_id != b->request_id)
        return DIFFER("request_id");
    if (a->up_project != b->up_project)
        return DIFFER("up_project: %d vs %d", a->up_project, b->up_project);
    if (a->q_form != b->q_form)
        return DIFFER("q_form: %d vs %d", (int)a->q_form, (int)b->q_form);
    if (a->given_groups != b->given_groups || a->return_pages != b->return_pages)
        return DIFFER("given_groups / return_pages");
    if (a->n_given_indptr != b->n_given_indptr || a->n_given_idx != b->n_given_idx)
        return DIFFER("given lists: %zu/%zu vs %zu/%zu", a->n_given_indptr, a->n_given_idx,
                      b->n_given_indptr, b->n_given_idx);
    for (size_t i = 0; i < a->n_given_indptr; i++)
        if (a->given_indptr[i] != b->given_indptr[i])
            return DIFFER("given_indptr[%zu]", i);
    for (size_t i = 0; i < a->n_given_idx; i++)
        if (a->given_idx[i] != b->given_idx[i])
            return DIFFER("given_idx[%zu]", i);
    return NULL;
}

/* A tensor checked while gathered must report its first non-finite
 * element as a search of its own finds it. */
static const char *check_differs(const char *what, const Attnd__V1__Tensor *t,
                                 const attnd_wire_tensor_check *c)
{
    if (!c->checked)
        return NULL;
    if (!t || !attnd_dtype_size((attnd_dtype)t->dtype))
        return DIFFER("%s: checked without a dtype", what);
    attnd_dtype dt = (attnd_dtype)t->dtype;
    size_t es = attnd_dtype_size(dt);
    size_t n = t->data.len / es, want = attnd_dtype_find_nonfinite(dt, t->data.data, n);
    if (c->nonfinite != want)
        return DIFFER("%s: first non-finite %zu, a search says %zu", what, c->nonfinite, want);
    return NULL;
}

/* Decode with attnd_wire from in and compare with ref (NULL: protobuf-c
 * refused). */
static const char *request_vs(const attnd_wire_in *in, const Attnd__V1__AttendRequest *ref,
                              const char *how)
{
    track t;
    Attnd__V1__AttendRequest *m = NULL;
    attnd_error err;
    const char *d = NULL;
    attnd_wire_request_checks chk;

    track_init(&t);
    attnd_error_clear(&err);
    attnd_status st = attnd_wire_request_decode(in, &t.pc, &m, &chk, &err);
    if (st != ATTND_OK && st != ATTND_ERR_INVALID_ARGUMENT)
        d = DIFFER("%s: attnd_wire failed with %d: %.150s", how, st, err.msg);
    else if (!ref != (st != ATTND_OK))
        d = DIFFER("%s: protobuf-c %s, attnd_wire %s", how, ref ? "accepts" : "refuses",
                   st ? "refuses" : "accepts");
    else if (ref && (d = request_differs(ref, m)))
        d = prefixed(how, d);
    else if (ref && ((d = check_differs("q", m->q, &chk.q)) ||
                     (d = check_differs("new_kv", m->new_kv, &chk.new_kv))))
        d = prefixed(how, d);
    track_done(&t);
    return d;
}

const char *wire_oracle_request(const uint8_t *data, size_t len, uint64_t seed)
{
    track t;
    attnd_wire_in in;
    attnd_wire_seg segs[MAX_SEGS];
    uint8_t *owned[MAX_SEGS];
    const char *d;

    track_init(&t);
    Attnd__V1__AttendRequest *ref = attnd__v1__attend_request__unpack(&t.pc, len, data);
    attnd_wire_in_flat(&in, data, len);
    d = request_vs(&in, ref, "flat");
    if (!d) {
        size_t n = split(data, len, seed, segs, owned);
        attnd_wire_in_segs(&in, segs, n);
        d = request_vs(&in, ref, "in segments");
        for (size_t i = 0; i < n; i++)
            free(owned[i]);
    }
    track_done(&t);
    return d;
}

int wire_oracle_pbc_accepts_request(const uint8_t *data, size_t len)
{
    track t;
    track_init(&t);
    int ok = attnd__v1__attend_request__unpack(&t.pc, len, data) != NULL;
    track_done(&t);
    return ok;
}

static const char *view_differs(const char *what, const attnd_wire_in *in,
                                const attnd_wire_tensor_view *v, const Attnd__V1__Tensor *ref)
{
    if (v->present != (ref != NULL))
        return DIFFER("%s: present %d vs %d", what, ref != NULL, v->present);
    if (!ref)
        return NULL;
    if (v->dtype != (int32_t)ref->dtype || v->n_shape != ref->n_shape ||
        v->data_len != ref->data.len)
        return DIFFER("%s: dtype/shape/data length", what);
    for (size_t i = 0; i < v->n_shape && i < ATTND_WIRE_MAX_DIMS; i++)
        if (v->shape[i] != ref->shape[i])
            return DIFFER("%s.shape[%zu]", what, i);
    if (v->data_len) {
        uint8_t *b = malloc(v->data_len);
        attnd_wire_copy(in, v->data_off, v->data_len, b);
        int same = memcmp(b, ref->data.data, v->data_len) == 0;
        const void *view = attnd_wire_view(in, v->data_off, v->data_len);
        if (view && memcmp(view, ref->data.data, v->data_len) != 0)
            same = 0;
        free(b);
        if (!same)
            return DIFFER("%s.data: other bytes", what);
    }
    return NULL;
}

static const char *reply_vs(const attnd_wire_in *in, const Attnd__V1__AttendResponse *ref,
                            const char *how)
{
    attnd_wire_reply_view v;
    attnd_error err;
    const char *d;

    attnd_error_clear(&err);
    attnd_status st = attnd_wire_reply_decode(in, &v, &err);
    if (st != ATTND_OK && st != ATTND_ERR_INTERNAL)
        return DIFFER("%s: attnd_wire failed with %d", how, st);
    if (!ref != (st != ATTND_OK))
        return DIFFER("%s: protobuf-c %s, attnd_wire %s", how, ref ? "accepts" : "refuses",
                      st ? "refuses" : "accepts");
    if (!ref)
        return NULL;
    if (v.request_id != ref->request_id)
        return DIFFER("%s: request_id", how);
    if (v.chosen_groups != ref->chosen_groups || v.chosen_tokens != ref->chosen_tokens ||
        v.n_chosen_indptr != ref->n_chosen_indptr || v.n_chosen != ref->n_chosen)
        return DIFFER("%s: chosen lists", how);
    if (v.n_chosen_indptr || v.n_chosen) {
        uint32_t *ip = malloc(sizeof *ip * (v.n_chosen_indptr + 1));
        uint64_t *ch = malloc(sizeof *ch * (v.n_chosen + 1));
        attnd_wire_reply_chosen(in, ip, v.n_chosen_indptr, ch, v.n_chosen);
        int same = 1;
        for (size_t i = 0; i < v.n_chosen_indptr; i++)
            same &= ip[i] == ref->chosen_indptr[i];
        for (size_t i = 0; i < v.n_chosen; i++)
            same &= ch[i] == ref->chosen[i];
        free(ip);
        free(ch);
        if (!same)
            return DIFFER("%s: chosen values", how);
    }
    if ((d = view_differs("out", in, &v.out, ref->out)) ||
        (d = view_differs("lse", in, &v.lse, ref->lse)))
        return prefixed(how, d);
    return NULL;
}

const char *wire_oracle_reply(const uint8_t *data, size_t len, uint64_t seed)
{
    track t;
    attnd_wire_in in;
    attnd_wire_seg segs[MAX_SEGS];
    uint8_t *owned[MAX_SEGS];
    const char *d;

    track_init(&t);
    Attnd__V1__AttendResponse *ref = attnd__v1__attend_response__unpack(&t.pc, len, data);
    attnd_wire_in_flat(&in, data, len);
    d = reply_vs(&in, ref, "flat");
    if (!d) {
        size_t n = split(data, len, seed, segs, owned);
        attnd_wire_in_segs(&in, segs, n);
        d = reply_vs(&in, ref, "in segments");
        for (size_t i = 0; i < n; i++)
            free(owned[i]);
    }
    track_done(&t);
    return d;
}
