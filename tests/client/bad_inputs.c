/* The bad-input cases (see bad_inputs.h).
 *
 * Attend cases start from a valid request for sessions 0 and 1 (layer 0,
 * new KV at the right positions, LSE asked for) and break one thing. What
 * the typed API cannot express (an id of 15 bytes, a tensor whose byte
 * count disagrees with its shape) goes through attnd__client_unary_raw with
 * a request packed here by protobuf-c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_dtype.h"
#include "bad_inputs.h"
#include "client_int.h"

/* ---- Attend ----------------------------------------------------------------- */

typedef void (*mutate_fn)(cu_seqs *s, cu_step *st, attnd_session_id ids[2]);

static void attend_case(cu_seqs *s, bad_result *r, mutate_fn mutate)
{
    cu_step st;
    attnd_session_id ids[2];

    cu_step_make(s, &st, 0, 0, 2, 1, 1, 1, ATTND_DTYPE_INVALID);
    memcpy(ids, s->ids, sizeof ids);
    st.a.sessions = ids;
    mutate(s, &st, ids);
    r->st = attnd_client_attend(s->c, &st.a, &r->err);
    r->out_written = !cu_step_untouched(&st);
    cu_step_free(&st);
}

static void m_q_dtype(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)s, (void)ids;
    st->a.q.dtype = (attnd_dtype)7;
}

static void m_q_dims(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)ids;
    st->a.q.ndim = 2;
    st->a.q.shape[1] = (int64_t)s->m.n_q_heads * s->m.d_k;
}

static void m_q_heads(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)ids;
    st->a.q.shape[1] = s->m.n_q_heads - 1;
}

static void m_q_width(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)ids;
    st->a.q.shape[2] = s->m.d_k - 1;
}

static void m_q_batch(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)s, (void)ids;
    st->a.q.shape[0] = 1;
}

static void m_kv_width(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)s, (void)ids;
    st->a.new_kv.shape[st->a.new_kv.ndim - 1] -= 1;
}

static void m_kv_dims(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)s, (void)ids;
    attnd_tensor *t = &st->a.new_kv; /* [n, e...] -> [n, 1, 1, e...] */
    for (int i = t->ndim - 1; i >= 1; i--)
        t->shape[i + 2] = t->shape[i];
    t->shape[1] = t->shape[2] = 1;
    t->ndim += 2;
}

static void m_kv_dtype(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)s, (void)ids;
    st->a.new_kv.dtype = (attnd_dtype)9;
}

static void m_unknown_session(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)st;
    attnd_rng_fill(&s->rng, ATTND_DTYPE_F32, ids[1].bytes, sizeof ids[1].bytes / 4);
}

static void m_duplicate(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)s, (void)st;
    ids[1] = ids[0];
}

static void m_layer(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)ids;
    st->a.layer = s->m.n_layers;
}

static void m_position_behind(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)s, (void)ids;
    st->pos[1] -= 1;
}

static void m_position_ahead(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)s, (void)ids;
    st->pos[0] += 1;
}

static void m_positions_without_kv(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)s, (void)ids;
    st->a.new_kv.data = NULL;
}

static void m_empty_batch(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)s, (void)ids;
    st->a.n_seqs = 0;
    st->a.q.shape[0] = 0;
    st->a.new_kv.data = NULL;
    st->a.positions = NULL;
}

static void m_out_capacity(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)s, (void)ids;
    st->a.out_capacity -= 1;
}

static void m_lse_capacity(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)s, (void)ids;
    st->a.lse_capacity -= 1;
}

static void m_out_null(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)s, (void)ids;
    st->a.out = NULL;
}

#define ATTEND_CASE(fn)                                                      \
    static void fire_##fn(cu_seqs *s, const bad_limits *lim, bad_result *r) \
    {                                                                        \
        (void)lim;                                                           \
        attend_case(s, r, m_##fn);                                           \
    }
ATTEND_CASE(q_dtype)
ATTEND_CASE(q_dims)
ATTEND_CASE(q_heads)
ATTEND_CASE(q_width)
ATTEND_CASE(q_batch)
ATTEND_CASE(kv_width)
ATTEND_CASE(kv_dims)
ATTEND_CASE(kv_dtype)
ATTEND_CASE(unknown_session)
ATTEND_CASE(duplicate)
ATTEND_CASE(layer)
ATTEND_CASE(position_behind)
ATTEND_CASE(position_ahead)
ATTEND_CASE(positions_without_kv)
ATTEND_CASE(empty_batch)
ATTEND_CASE(out_capacity)
ATTEND_CASE(lse_capacity)
ATTEND_CASE(out_null)

/* A closed session's id is unknown. */
static void fire_closed_session(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    attnd_session_id id;
    cu_step st;
    (void)lim;
    r->st = attnd_client_create_session(s->c, NULL, 0, &id, NULL, &r->err);
    if (r->st)
        return;
    r->st = attnd_client_close_session(s->c, &id, &r->err);
    if (r->st)
        return;
    cu_step_make(s, &st, 0, 0, 1, 1, 0, 0, ATTND_DTYPE_INVALID);
    st.a.sessions = &id;
    r->st = attnd_client_attend(s->c, &st.a, &r->err);
    r->out_written = !cu_step_untouched(&st);
    cu_step_free(&st);
}

/* ---- raw requests --------------------------------------------------------------- */

static attnd_status send_raw(attnd_client *c, attnd__client_method m, const ProtobufCMessage *msg,
                             attnd_error *err)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n + 1);
    protobuf_c_message_pack(msg, buf);
    attnd_status st = attnd__client_unary_raw(c, m, buf, n, NULL, err);
    free(buf);
    return st;
}

/* A valid Attend request for sessions 0 and 1 as protobuf-c, with one
 * thing broken by `how`: 0 q.data one byte short, 1 session id 15 bytes. */
static void raw_attend(cu_seqs *s, bad_result *r, int how)
{
    Attnd__V1__AttendRequest req = ATTND__V1__ATTEND_REQUEST__INIT;
    Attnd__V1__Tensor q = ATTND__V1__TENSOR__INIT;
    ProtobufCBinaryData ids[2];
    cu_step st;

    cu_step_make(s, &st, 0, 0, 2, 1, 0, 0, ATTND_DTYPE_INVALID);
    for (int i = 0; i < 2; i++) {
        ids[i].len = ATTND_SESSION_ID_BYTES;
        ids[i].data = s->ids[i].bytes;
    }
    q.dtype = (Attnd__V1__DType)st.a.q.dtype;
    q.n_shape = (size_t)st.a.q.ndim;
    q.shape = st.a.q.shape;
    q.data.len = st.q_bytes;
    q.data.data = st.q;
    if (how == 0)
        q.data.len -= 1;
    else
        ids[0].len -= 1;
    req.n_session_ids = 2;
    req.session_ids = ids;
    req.q = &q;
    r->st = send_raw(s->c, ATTND__CLIENT_M_ATTEND, &req.base, &r->err);
    cu_step_free(&st);
}

static void fire_q_bytes(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    (void)lim;
    raw_attend(s, r, 0);
}

static void fire_short_id(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    (void)lim;
    raw_attend(s, r, 1);
}

/* ---- encodings protobuf-c refuses (issue 10, item 7) -------------------------------
 * A valid Attend for sessions 0 and 1, written byte by byte with one
 * over-long varint that protobuf-c refuses: how 0, session id 0's length
 * prefix in 6 bytes (protobuf-c reads at most 5); how 1, q's dtype key in
 * 6 bytes (a malformed field nested in q). Sent raw over the client's Attend
 * transport (UCX when the client uses it: its server decodes the same
 * bytes), they must be INVALID_ARGUMENT naming the message, as over gRPC. */

static uint8_t *put_var(uint8_t *p, uint64_t v, size_t min_len)
{
    size_t k = 0;
    while (v >= 0x80 || k + 1 < min_len) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
        k++;
    }
    *p++ = (uint8_t)v;
    return p;
}

static attnd_status send_raw_attend(cu_seqs *s, const uint8_t *msg, size_t len,
                                    attnd_error *err)
{
    if (!s->c->ucx)
        return attnd__client_unary_raw(s->c, ATTND__CLIENT_M_ATTEND, msg, len, NULL, err);
    /* over UCX: the bytes as the request, a destination for whatever comes */
    size_t cap = (size_t)2 * s->m.n_q_heads * s->m.d_v * 4;
    void *out = malloc(cap);
    attnd__client_attend_dst dst = {.out_dtype = s->dt, .n_seqs = 2, .q_tokens = 1,
                                    .n_q_heads = s->m.n_q_heads, .out = out,
                                    .out_capacity = cap};
    attnd__client_ucx_call k;
    grpc_slice sl = grpc_slice_from_copied_buffer((const char *)msg, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    attnd_status st = attnd__client_ucx_start(s->c, &k, bb, &dst, err);
    if (st == ATTND_OK)
        st = attnd__client_ucx_wait(s->c, &k, err);
    free(out);
    return st;
}

static void malformed_attend(cu_seqs *s, bad_result *r, int how)
{
    cu_step st;
    cu_step_make(s, &st, 0, 0, 2, 1, 0, 0, ATTND_DTYPE_INVALID);
    size_t cap = st.q_bytes + 256;
    uint8_t *msg = malloc(cap), *p = msg, body[64], *b = body;

    for (int i = 0; i < 2; i++) {
        *p++ = 0x12; /* session_ids */
        p = put_var(p, ATTND_SESSION_ID_BYTES, how == 0 && i == 0 ? 6 : 1);
        memcpy(p, s->ids[i].bytes, ATTND_SESSION_ID_BYTES);
        p += ATTND_SESSION_ID_BYTES;
    }
    b = put_var(b, 1 << 3, how == 1 ? 6 : 1); /* q.dtype */
    b = put_var(b, (uint64_t)st.a.q.dtype, 1);
    *b++ = 0x12; /* q.shape, packed */
    *b++ = (uint8_t)st.a.q.ndim; /* small dims: one byte each */
    for (int i = 0; i < st.a.q.ndim; i++)
        *b++ = (uint8_t)st.a.q.shape[i];
    *b++ = 0x1a; /* q.data */
    b = put_var(b, st.q_bytes, 1);
    *p++ = 0x1a; /* q */
    p = put_var(p, (size_t)(b - body) + st.q_bytes, 1);
    memcpy(p, body, (size_t)(b - body));
    p += b - body;
    memcpy(p, st.q, st.q_bytes);
    p += st.q_bytes;
    r->st = send_raw_attend(s, msg, (size_t)(p - msg), &r->err);
    free(msg);
    cu_step_free(&st);
}

static void fire_long_length_prefix(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    (void)lim;
    malformed_attend(s, r, 0);
}

static void fire_long_nested_key(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    (void)lim;
    malformed_attend(s, r, 1);
}

static void fire_close_short_id(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    Attnd__V1__CloseSessionRequest req = ATTND__V1__CLOSE_SESSION_REQUEST__INIT;
    (void)lim;
    req.session_id.len = ATTND_SESSION_ID_BYTES + 1;
    req.session_id.data = calloc(1, ATTND_SESSION_ID_BYTES + 1);
    memcpy(req.session_id.data, s->ids[0].bytes, ATTND_SESSION_ID_BYTES);
    r->st = send_raw(s->c, ATTND__CLIENT_M_CLOSE_SESSION, &req.base, &r->err);
    free(req.session_id.data);
}

/* ---- AppendKV ---------------------------------------------------------------------- */

/* One chunk of n fresh tokens for layer `layer` of session 0 at `start`;
 * *buf_p is the caller's to free. */
static attnd_kv_chunk chunk_of(cu_seqs *s, uint32_t layer, uint64_t start, uint32_t n,
                               void **buf_p)
{
    size_t elems = (size_t)n * s->m.kv_token_elems;
    void *buf = malloc(elems * attnd_dtype_size(s->dt) + 1);
    attnd_rng_fill(&s->rng, s->dt, buf, elems);
    *buf_p = buf;
    return (attnd_kv_chunk){.session = s->ids[0], .layer = layer, .start = start,
                            .n_tokens = n, .kv_token_elems = s->m.kv_token_elems,
                            .dtype = s->dt, .data = buf};
}

/* A valid chunk at the end of layer 1, then the broken one in the same
 * stream; expects the stream refused and neither applied (all or nothing:
 * the reference mirrors nothing, so later outputs show any stray token). */
typedef void (*chunk_mutate_fn)(cu_seqs *s, attnd_kv_chunk *ch);

static void append_case(cu_seqs *s, bad_result *r, chunk_mutate_fn mutate)
{
    uint64_t len = attnd_refcheck_len(&s->rc, 0, 1);
    void *b0, *b1;
    attnd_kv_chunk ch[2] = {chunk_of(s, 1, len, 5, &b0), chunk_of(s, 1, len + 5, 3, &b1)};
    size_t applied = 99;

    mutate(s, &ch[1]);
    r->st = attnd_client_append_kv(s->c, ch, 2, &applied, &r->err);
    if (applied != 0)
        snprintf(r->why, sizeof r->why, "chunks applied: expected 0, got %zu", applied);
    free(b0);
    free(b1);
}

static void c_start_behind(cu_seqs *s, attnd_kv_chunk *ch)
{
    (void)s;
    ch->start -= 1;
}

static void c_start_ahead(cu_seqs *s, attnd_kv_chunk *ch)
{
    (void)s;
    ch->start += 1;
}

static void c_layer(cu_seqs *s, attnd_kv_chunk *ch)
{
    ch->layer = s->m.n_layers;
}

static void c_unknown_session(cu_seqs *s, attnd_kv_chunk *ch)
{
    attnd_rng_fill(&s->rng, ATTND_DTYPE_F32, ch->session.bytes, sizeof ch->session.bytes / 4);
}

static void c_width(cu_seqs *s, attnd_kv_chunk *ch)
{
    (void)s;
    ch->kv_token_elems -= 1;
}

static void c_dtype(cu_seqs *s, attnd_kv_chunk *ch)
{
    (void)s;
    ch->dtype = ATTND_DTYPE_INVALID;
}

#define APPEND_CASE(fn)                                                             \
    static void fire_append_##fn(cu_seqs *s, const bad_limits *lim, bad_result *r) \
    {                                                                               \
        (void)lim;                                                                  \
        append_case(s, r, c_##fn);                                                  \
    }
APPEND_CASE(start_behind)
APPEND_CASE(start_ahead)
APPEND_CASE(layer)
APPEND_CASE(unknown_session)
APPEND_CASE(width)
APPEND_CASE(dtype)

/* ---- sessions ------------------------------------------------------------------------ */

static void fire_close_unknown(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    attnd_session_id id;
    (void)lim;
    attnd_rng_fill(&s->rng, ATTND_DTYPE_F32, id.bytes, sizeof id.bytes / 4);
    r->st = attnd_client_close_session(s->c, &id, &r->err);
}

static void fire_create_other_model(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    attnd_session_id id;
    (void)lim;
    const char *other = strcmp(s->m.name, "tiny-gqa") ? "tiny-gqa" : "tiny-mla";
    r->st = attnd_client_create_session(s->c, other, 0, &id, NULL, &r->err);
    if (r->st == ATTND_OK)
        attnd_client_close_session(s->c, &id, NULL);
}

static void fire_create_unknown_model(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    attnd_session_id id;
    (void)lim;
    r->st = attnd_client_create_session(s->c, "no-such-model", 0, &id, NULL, &r->err);
    if (r->st == ATTND_OK)
        attnd_client_close_session(s->c, &id, NULL);
}

static void fire_reservation_beyond_pool(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    attnd_session_id id;
    (void)lim;
    r->st = attnd_client_create_session(s->c, NULL, UINT32_MAX, &id, NULL, &r->err);
    if (r->st == ATTND_OK)
        attnd_client_close_session(s->c, &id, NULL);
}

/* ---- non-finite values -------------------------------------------------------------
 * A NaN, +Inf or -Inf at a random element of one tensor: refused with
 * INVALID_ARGUMENT naming the tensor and that element, nothing applied. */

static _Thread_local size_t nf_at;       /* where the last poison went */
static _Thread_local const char *nf_what; /* and what it was */

/* Put a non-finite value (chosen by the rng) at a random element of data
 * (n elements of s->dt). */
static void poison(cu_seqs *s, const void *data, size_t n)
{
    static const float bad[3] = {NAN, INFINITY, -INFINITY};
    int k = (int)(attnd_rng_next(&s->rng) % 3);
    nf_at = (size_t)(attnd_rng_next(&s->rng) % n);
    nf_what = k == 0 ? "NaN" : k == 1 ? "+Inf" : "-Inf";
    attnd_dtype_convert(s->dt, (char *)data + nf_at * attnd_dtype_size(s->dt), ATTND_DTYPE_F32,
                        &bad[k], 1);
}

/* The message must say "<field>: element <where> is <what>". */
static void expect_element(bad_result *r, const char *field)
{
    char want[48];
    snprintf(want, sizeof want, "%.6s: element %zu is %.4s", field, nf_at, nf_what);
    if (r->st != ATTND_OK && !strstr(r->err.msg, want))
        snprintf(r->why, sizeof r->why, "expected \"%s\" in: %.60s", want, r->err.msg);
}

static void m_q_nonfinite(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)ids;
    poison(s, st->q, st->q_bytes / attnd_dtype_size(s->dt));
}

static void m_kv_nonfinite(cu_seqs *s, cu_step *st, attnd_session_id ids[2])
{
    (void)ids;
    poison(s, st->kv, st->kv_bytes / attnd_dtype_size(s->dt));
}

static void fire_q_nonfinite(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    (void)lim;
    attend_case(s, r, m_q_nonfinite);
    expect_element(r, "q");
}

static void fire_kv_nonfinite(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    (void)lim;
    attend_case(s, r, m_kv_nonfinite);
    expect_element(r, "new_kv");
}

static void c_nonfinite(cu_seqs *s, attnd_kv_chunk *ch)
{
    poison(s, ch->data, (size_t)ch->n_tokens * ch->kv_token_elems);
}

static void fire_append_nonfinite(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    (void)lim;
    append_case(s, r, c_nonfinite);
    if (!r->why[0])
        expect_element(r, "kv");
}

/* ---- limits ------------------------------------------------------------------------------ */

/* An AppendKV chunk one token longer than --max-message allows. */
static void fire_oversized_append(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    size_t eb = (size_t)s->m.kv_token_elems * attnd_dtype_size(s->dt);
    void *buf;
    size_t applied = 99;

    if (!lim->max_message) {
        r->skipped = 1;
        return;
    }
    attnd_kv_chunk ch = chunk_of(s, 0, attnd_refcheck_len(&s->rc, 0, 0),
                                 (uint32_t)(lim->max_message / eb + 1), &buf);
    r->st = attnd_client_append_kv(s->c, &ch, 1, &applied, &r->err);
    if (applied != 0)
        snprintf(r->why, sizeof r->why, "chunks applied: expected 0, got %zu", applied);
    free(buf);
}

/* An Attend whose request is beyond --max-message (64 query tokens). */
static void fire_oversized_attend(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    cu_step st;
    cu_step_make(s, &st, 0, 0, 2, 64, 0, 0, ATTND_DTYPE_INVALID);
    if (!lim->max_message || st.q_bytes <= lim->max_message) {
        r->skipped = 1;
        cu_step_free(&st);
        return;
    }
    r->st = attnd_client_attend(s->c, &st.a, &r->err);
    r->out_written = !cu_step_untouched(&st);
    cu_step_free(&st);
}

/* Fill the pool from a scratch session, chunk by chunk, until refused. */
static void fire_kv_exhausted(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    attnd_session_id id;
    size_t eb = (size_t)s->m.kv_token_elems * attnd_dtype_size(s->dt);
    size_t per = lim->max_message ? lim->max_message / 2 / eb : 4096;
    enum { MAX_CHUNKS = 512 };
    attnd_kv_chunk ch[MAX_CHUNKS];
    size_t applied = 0;
    void *buf;

    if (!lim->small_pool) {
        r->skipped = 1;
        return;
    }
    r->st = attnd_client_create_session(s->c, NULL, 0, &id, NULL, &r->err);
    if (r->st)
        return;
    ch[0] = chunk_of(s, 0, 0, (uint32_t)per, &buf);
    for (size_t i = 0; i < MAX_CHUNKS; i++) {
        ch[i] = ch[0];
        ch[i].session = id;
        ch[i].start = i * per;
    }
    r->st = attnd_client_append_kv(s->c, ch, MAX_CHUNKS, &applied, &r->err);
    if (applied == MAX_CHUNKS)
        snprintf(r->why, sizeof r->why, "the pool held %d chunks of %zu tokens", MAX_CHUNKS,
                 per);
    attnd_error e2;
    if (attnd_client_close_session(s->c, &id, &e2))
        snprintf(r->why, sizeof r->why, "closing the scratch session: %.100s", e2.msg);
    free(buf);
}

/* Create sessions until refused, then close them. */
static void fire_too_many_sessions(cu_seqs *s, const bad_limits *lim, bad_result *r)
{
    attnd_session_id ids[64];
    uint32_t n = 0;

    if (!lim->max_sessions || lim->max_sessions > 60) {
        r->skipped = 1;
        return;
    }
    while (n <= lim->max_sessions &&
           (r->st = attnd_client_create_session(s->c, NULL, 0, &ids[n], NULL, &r->err)) ==
               ATTND_OK)
        n++;
    if (n >= lim->max_sessions)
        snprintf(r->why, sizeof r->why, "%u sessions created beside the test's, limit %u", n,
                 lim->max_sessions);
    for (uint32_t i = 0; i < n; i++)
        attnd_client_close_session(s->c, &ids[i], NULL);
}

/* ---- the table ------------------------------------------------------------------------------ */

#define INVALID ATTND_ERR_INVALID_ARGUMENT
const bad_case bad_cases[] = {
    {"q_dtype", INVALID, "q.dtype", fire_q_dtype},
    {"q_dims", INVALID, "q.shape", fire_q_dims},
    {"q_heads", INVALID, "q.shape[1]", fire_q_heads},
    {"q_width", INVALID, "q.shape[2]", fire_q_width},
    {"q_batch", INVALID, "q.shape[0]", fire_q_batch},
    {"q_bytes", INVALID, "q.data", fire_q_bytes},
    {"new_kv_width", INVALID, "new_kv.shape[", fire_kv_width},
    {"new_kv_dims", INVALID, "new_kv.shape", fire_kv_dims},
    {"new_kv_dtype", INVALID, "new_kv.dtype", fire_kv_dtype},
    {"unknown_session", ATTND_ERR_NOT_FOUND, "session_ids[1]", fire_unknown_session},
    {"closed_session", ATTND_ERR_NOT_FOUND, "session_ids[0]", fire_closed_session},
    {"short_session_id", INVALID, "session_ids[0]", fire_short_id},
    {"duplicate_session", INVALID, "session_ids[1]", fire_duplicate},
    {"empty_batch", INVALID, "session_ids", fire_empty_batch},
    {"layer_past_the_model", ATTND_ERR_OUT_OF_RANGE, "layer", fire_layer},
    {"position_behind", ATTND_ERR_FAILED_PRECONDITION, "positions[1]", fire_position_behind},
    {"position_ahead", ATTND_ERR_FAILED_PRECONDITION, "positions[0]", fire_position_ahead},
    {"positions_without_new_kv", INVALID, "positions", fire_positions_without_kv},
    {"out_capacity_too_small", INVALID, "out_capacity", fire_out_capacity},
    {"lse_capacity_too_small", INVALID, "lse_capacity", fire_lse_capacity},
    {"out_null", INVALID, "out", fire_out_null},
    {"append_start_behind", ATTND_ERR_FAILED_PRECONDITION, "start", fire_append_start_behind},
    {"append_start_ahead", ATTND_ERR_FAILED_PRECONDITION, "start", fire_append_start_ahead},
    {"append_layer_past_the_model", ATTND_ERR_OUT_OF_RANGE, "layer", fire_append_layer},
    {"append_unknown_session", ATTND_ERR_NOT_FOUND, "session_id", fire_append_unknown_session},
    {"append_entry_width", INVALID, "kv.shape", fire_append_width},
    {"append_dtype", INVALID, "kv.dtype", fire_append_dtype},
    {"close_unknown_session", ATTND_ERR_NOT_FOUND, "session_id", fire_close_unknown},
    {"close_short_session_id", INVALID, "session_id", fire_close_short_id},
    {"create_for_another_model", ATTND_ERR_FAILED_PRECONDITION, "model",
     fire_create_other_model},
    {"create_for_an_unknown_model", INVALID, "model", fire_create_unknown_model},
    {"reservation_beyond_the_pool", ATTND_ERR_RESOURCE_EXHAUSTED, "max_tokens",
     fire_reservation_beyond_pool},
    {"oversized_append", ATTND_ERR_RESOURCE_EXHAUSTED, "larger than max",
     fire_oversized_append},
    {"oversized_attend", ATTND_ERR_RESOURCE_EXHAUSTED, "larger than max",
     fire_oversized_attend},
    {"kv_memory_exhausted", ATTND_ERR_RESOURCE_EXHAUSTED, "KV memory exhausted",
     fire_kv_exhausted},
    {"too_many_sessions", ATTND_ERR_RESOURCE_EXHAUSTED, "sessions", fire_too_many_sessions},
    {"q_nonfinite", INVALID, "non-finite values are rejected", fire_q_nonfinite},
    {"new_kv_nonfinite", INVALID, "non-finite values are rejected", fire_kv_nonfinite},
    {"append_nonfinite", INVALID, "non-finite values are rejected", fire_append_nonfinite},
    {"long_length_prefix", INVALID, "not a valid attnd.v1.AttendRequest",
     fire_long_length_prefix},
    {"long_nested_key", INVALID, "not a valid attnd.v1.AttendRequest", fire_long_nested_key},
};
#undef INVALID
const size_t n_bad_cases = sizeof bad_cases / sizeof bad_cases[0];

const bad_case *bad_case_find(const char *name)
{
    for (size_t i = 0; i < n_bad_cases; i++)
        if (strcmp(bad_cases[i].name, name) == 0)
            return &bad_cases[i];
    return NULL;
}

int bad_case_run(const bad_case *bc, cu_seqs *s, const bad_limits *lim, char *why,
                 size_t why_len)
{
    bad_result r;

    memset(&r, 0, sizeof r);
    attnd_error_clear(&r.err);
    bc->fire(s, lim, &r);
    if (r.skipped)
        return 0;
    if (getenv("ATTND_TEST_VERBOSE"))
        fprintf(stderr, "[%s] %s: %s\n", bc->name, attnd_status_string(r.st), r.err.msg);
    if (r.st != bc->want)
        snprintf(why, why_len, "%s: expected %s, got %s: %s", bc->name,
                 attnd_status_string(bc->want), attnd_status_string(r.st), r.err.msg);
    else if (r.err.code != bc->want)
        snprintf(why, why_len, "%s: err.code %d, want %d", bc->name, r.err.code, bc->want);
    else if (!strstr(r.err.msg, bc->field))
        snprintf(why, why_len, "%s: message does not name \"%s\": %s", bc->name, bc->field,
                 r.err.msg);
    else if (r.out_written)
        snprintf(why, why_len, "%s: the output buffers were written", bc->name);
    else if (r.why[0])
        snprintf(why, why_len, "%s: %s", bc->name, r.why);
    else
        return 0;
    return -1;
}
