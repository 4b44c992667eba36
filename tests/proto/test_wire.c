/* The wire codec (proto/attnd_wire.h) against protobuf-c, which defines the
 * wire:
 *   - encoders: byte for byte what protobuf_c_message_pack writes (request
 *     in one buffer and as a gather list; reply written and planned);
 *   - decoders: accept exactly what protobuf-c's unpack accepts and read
 *     the same values (wire_oracle.c), on valid messages, every
 *     truncation, every malformed length, hand-made non-canonical and
 *     malformed encodings, and a seeded mutation loop; flat and split into
 *     segments; tensors read in place.
 * Deterministic: the mutation loop's seed is fixed (ATTND_TEST_SEED
 * overrides it).
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_dtype.h"
#include "attnd_wire.h"
#include "wire_oracle.h"
#include "wire_samples.h"

#define ASSERT_AGREE(d, what, ...)                                            \
    do {                                                                       \
        const char *d_ = (d);                                                  \
        ck_assert_msg(d_ == NULL, what ": %s", __VA_ARGS__, d_ ? d_ : "");     \
    } while (0)

/* ---- a bump arena for the decoder ------------------------------------------------- */

typedef struct arena {
    ProtobufCAllocator pc;
    uint8_t *p;
    size_t used, cap;
} arena;

static void *arena_alloc(void *self, size_t n)
{
    arena *a = self;
    n = (n + 15) & ~(size_t)15;
    if (n > a->cap - a->used)
        return NULL;
    void *r = a->p + a->used;
    a->used += n;
    return r;
}

static void arena_free(void *self, void *p)
{
    (void)self;
    (void)p;
}

static void arena_init(arena *a, size_t cap)
{
    a->pc.alloc = arena_alloc;
    a->pc.free = arena_free;
    a->pc.allocator_data = a;
    a->p = malloc(cap);
    a->used = 0;
    a->cap = cap;
}

/* ---- encoders ------------------------------------------------------------------- */

START_TEST(test_the_request_encoder_writes_what_protobuf_c_packs)
{
    for (int i = 0; i < WS_N_REQUESTS; i++) {
        ws_request *r = malloc(sizeof *r);
        ws_request_make(r, i);
        size_t n = attnd__v1__attend_request__get_packed_size(&r->m);
        uint8_t *want = malloc(n + 1), *got = malloc(n + 1);
        attnd__v1__attend_request__pack(&r->m, want);
        ck_assert_uint_eq(attnd_wire_request_size(&r->m), n);
        attnd_wire_request_write(&r->m, got);
        ck_assert_msg(memcmp(got, want, n) == 0, "sample %d differs", i);
        free(want);
        free(got);
        free(r);
    }
}
END_TEST

START_TEST(test_the_request_gather_list_is_what_protobuf_c_packs_with_tensors_in_place)
{
    for (int i = 0; i < WS_N_REQUESTS; i++) {
        ws_request *r = malloc(sizeof *r);
        ws_request_make(r, i);
        size_t n = attnd__v1__attend_request__get_packed_size(&r->m), at = 0;
        uint8_t *want = malloc(n + 1), *frame = malloc(attnd_wire_request_frame_bound(&r->m) + 1);
        attnd_wire_gather g;
        attnd__v1__attend_request__pack(&r->m, want);
        attnd_wire_request_gather(&r->m, frame, &g);
        ck_assert_uint_eq(g.total, n);
        for (size_t k = 0; k < g.n; k++) {
            ck_assert_msg(memcmp(want + at, g.e[k].p, g.e[k].len) == 0, "sample %d piece %zu",
                          i, k);
            if (r->m.q && g.e[k].p == r->m.q->data.data)
                ck_assert_uint_eq(g.e[k].len, r->m.q->data.len); /* referenced, not copied */
            at += g.e[k].len;
        }
        if (r->m.q && r->m.q->data.len) {
            int found = 0;
            for (size_t k = 0; k < g.n; k++)
                found |= g.e[k].p == r->m.q->data.data;
            ck_assert_msg(found, "sample %d: q's data is not referenced in place", i);
        }
        free(want);
        free(frame);
        free(r);
    }
}
END_TEST

/* The reply of each shape: as protobuf-c packs the converted output, and
 * the plan's offsets where protobuf-c's unpack finds out and lse. */
START_TEST(test_the_reply_encoder_writes_what_protobuf_c_packs_where_the_plan_says)
{
    static const struct {
        attnd_dtype dt;
        int64_t b, s, h, d;
        int lse;
        uint64_t id;
        int chosen; /* return_pages: 0 none, 1 pages, 2 tokens */
    } cases[] = {
        {ATTND_DTYPE_BF16, 1, 1, 4, 6, 0, 0, 0},        {ATTND_DTYPE_F16, 2, 1, 4, 6, 1, 7, 1},
        {ATTND_DTYPE_F32, 3, 2, 8, 16, 1, 1u << 30, 0}, {ATTND_DTYPE_BF16, 32, 1, 128, 512, 1, 99, 0},
        {ATTND_DTYPE_F32, 0, 1, 4, 6, 1, 5, 0},         /* no data at all */
        {ATTND_DTYPE_BF16, 2, 1, 4, 6, 0, 3, 2},        {ATTND_DTYPE_BF16, 2, 1, 4, 6, 1, 0, 1},
    };
    /* chosen lists: 2 sessions x 2 groups, one empty, values past 2^32 */
    static const int32_t c_indptr[5] = {0, 2, 2, 5, 6};
    static const int64_t c_vals[6] = {0, 9, 1, 130, 5000000000ll, 7};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        attnd_wire_reply_desc d = {.request_id = cases[c].id, .out_dtype = cases[c].dt,
                                   .out_shape = {cases[c].b, cases[c].s, cases[c].h, cases[c].d},
                                   .has_lse = cases[c].lse,
                                   .lse_shape = {cases[c].b, cases[c].s, cases[c].h}};
        uint32_t ip32[5];
        uint64_t v64[6];
        for (int k = 0; k < 5; k++)
            ip32[k] = (uint32_t)c_indptr[k];
        for (int k = 0; k < 6; k++)
            v64[k] = (uint64_t)c_vals[k];
        if (cases[c].chosen) {
            d.chosen_groups = 2;
            d.chosen_tokens = cases[c].chosen == 2;
            d.n_chosen_lists = 4;
            d.chosen_indptr = c_indptr;
            d.chosen = c_vals;
        }
        size_t n_out = (size_t)(cases[c].b * cases[c].s * cases[c].h * cases[c].d);
        size_t n_l = (size_t)(cases[c].b * cases[c].s * cases[c].h);
        size_t es = attnd_dtype_size(d.out_dtype);
        float *out = malloc(n_out * 4 + 4), *lse = malloc(n_l * 4 + 4);
        uint8_t *conv = malloc(n_out * es + 1);
        for (size_t k = 0; k < n_out; k++)
            out[k] = (float)k * 0.37f - 3.0f;
        for (size_t k = 0; k < n_l; k++)
            lse[k] = (float)k * 1.5f;
        attnd_dtype_convert(d.out_dtype, conv, ATTND_DTYPE_F32, out, n_out);

        Attnd__V1__AttendResponse m = ATTND__V1__ATTEND_RESPONSE__INIT;
        Attnd__V1__Tensor to = ATTND__V1__TENSOR__INIT, tl = ATTND__V1__TENSOR__INIT;
        to.dtype = (Attnd__V1__DType)d.out_dtype;
        to.n_shape = 4;
        to.shape = d.out_shape;
        to.data.len = n_out * es;
        to.data.data = conv;
        tl.dtype = ATTND__V1__DTYPE__DTYPE_F32;
        tl.n_shape = 3;
        tl.shape = d.lse_shape;
        tl.data.len = n_l * 4;
        tl.data.data = (uint8_t *)lse;
        m.request_id = d.request_id;
        m.out = &to;
        m.lse = d.has_lse ? &tl : NULL;
        if (cases[c].chosen) {
            m.chosen_groups = 2;
            m.chosen_tokens = cases[c].chosen == 2;
            m.n_chosen_indptr = 5;
            m.chosen_indptr = ip32;
            m.n_chosen = 6;
            m.chosen = v64;
        }
        size_t n = attnd__v1__attend_response__get_packed_size(&m);
        uint8_t *want = malloc(n), *got = malloc(n + 1);
        attnd__v1__attend_response__pack(&m, want);

        attnd_wire_reply_layout l;
        attnd_wire_reply_plan(&d, &l);
        ck_assert_uint_eq(l.total, n);
        attnd_wire_reply_write(&d, &l, out, lse, got + 1); /* unaligned on purpose */
        ck_assert_msg(memcmp(got + 1, want, n) == 0, "case %zu differs", c);

        Attnd__V1__AttendResponse *u = attnd__v1__attend_response__unpack(NULL, n, want);
        ck_assert_ptr_nonnull(u);
        ck_assert_uint_eq(l.out_bytes, u->out->data.len);
        if (l.out_bytes)
            ck_assert(memcmp(want + l.out_off, u->out->data.data, l.out_bytes) == 0);
        ck_assert_uint_eq(l.lse_bytes, d.has_lse ? u->lse->data.len : 0);
        if (l.lse_bytes)
            ck_assert(memcmp(want + l.lse_off, u->lse->data.data, l.lse_bytes) == 0);
        ck_assert(memcmp(want, l.pre, l.pre_len) == 0);
        ck_assert(memcmp(want + l.out_off + l.out_bytes, l.mid, l.mid_len) == 0);
        /* and the decoder reads the chosen lists back */
        attnd_wire_in in;
        attnd_wire_reply_view v;
        attnd_error err;
        attnd_wire_in_flat(&in, want, n);
        ck_assert_int_eq(attnd_wire_reply_decode(&in, &v, &err), ATTND_OK);
        ck_assert_uint_eq(v.n_chosen_indptr, cases[c].chosen ? 5 : 0);
        ck_assert_uint_eq(v.chosen_groups, cases[c].chosen ? 2 : 0);
        ck_assert_int_eq(v.chosen_tokens, cases[c].chosen == 2);
        if (cases[c].chosen) {
            uint32_t gi[5];
            uint64_t gv[6];
            attnd_wire_reply_chosen(&in, gi, 5, gv, 6);
            ck_assert(memcmp(gi, ip32, sizeof gi) == 0 && memcmp(gv, v64, sizeof gv) == 0);
        }
        attnd__v1__attend_response__free_unpacked(u, NULL);
        free(want);
        free(got);
        free(out);
        free(lse);
        free(conv);
    }
}
END_TEST

/* ---- decoders: valid messages ---------------------------------------------------- */

START_TEST(test_decoding_reads_every_field_with_the_tensors_in_place)
{
    for (int i = 0; i < WS_N_REQUESTS; i++) {
        size_t n;
        uint8_t *b = ws_request_packed(i, &n);
        ASSERT_AGREE(wire_oracle_request(b, n, (uint64_t)i), "sample %d", i);
        arena a;
        attnd_wire_in in;
        Attnd__V1__AttendRequest *m;
        attnd_error err;
        arena_init(&a, 1 << 20);
        attnd_wire_in_flat(&in, b, n);
        ck_assert_int_eq(attnd_wire_request_decode(&in, &a.pc, &m, NULL, &err), ATTND_OK);
        if (m->q && m->q->data.len) /* a view into b, not a copy */
            ck_assert(m->q->data.data > b && m->q->data.data < b + n);
        if (m->n_session_ids)
            ck_assert(m->session_ids[0].data > b && m->session_ids[0].data < b + n);
        free(a.p);
        free(b);
    }
}
END_TEST

START_TEST(test_a_message_in_segments_decodes_as_in_one_piece)
{
    for (int i = 0; i < WS_N_REQUESTS; i++) {
        size_t n;
        uint8_t *b = ws_request_packed(i, &n);
        for (uint64_t seed = 0; seed < 200; seed++)
            ASSERT_AGREE(wire_oracle_request(b, n, seed), "sample %d, split %llu", i,
                         (unsigned long long)seed);
        free(b);
    }
    for (int lse = 0; lse < 2; lse++) {
        size_t n;
        uint8_t *b = ws_reply_packed(1, 3, 1, 4, 6, lse, 17, &n);
        for (uint64_t seed = 0; seed < 200; seed++)
            ASSERT_AGREE(wire_oracle_reply(b, n, seed), "reply, split %llu",
                         (unsigned long long)seed);
        free(b);
    }
}
END_TEST

/* A tensor spanning segments is gathered and checked on the way: the
 * first NaN or infinity is reported where a search finds it; one left in
 * place is not checked (validation reads it). */
START_TEST(test_a_gathered_tensor_reports_its_first_non_finite_element)
{
    ws_request *r = malloc(sizeof *r);
    ws_request_make(r, 1); /* q f32, 4 x 1 x 4 x 6 */
    float nan = __builtin_nanf(""), inf = __builtin_inff();
    size_t n_el = r->q.data.len / 4;
    for (size_t at = 0; at < n_el; at += 7) {
        memset(r->q_data, 0, sizeof r->q_data); /* all finite */
        memcpy(r->q_data + at * 4, at % 2 ? &inf : &nan, 4);
        size_t n = attnd__v1__attend_request__get_packed_size(&r->m);
        uint8_t *b = malloc(n);
        attnd__v1__attend_request__pack(&r->m, b);
        const uint8_t *qd = NULL; /* where q's data starts in b */
        for (size_t k = 0; k + r->q.data.len <= n && !qd; k++)
            if (memcmp(b + k, r->q_data, r->q.data.len) == 0)
                qd = b + k;
        ck_assert_ptr_nonnull(qd);
        /* cut inside q's data (also inside the bad element), then flat */
        size_t cut = (size_t)(qd - b) + at * 4 + 2;
        attnd_wire_seg segs[2] = {{b, cut}, {b + cut, n - cut}};
        for (int split = 1; split >= 0; split--) {
            arena a;
            attnd_wire_in in;
            Attnd__V1__AttendRequest *m;
            attnd_wire_request_checks chk;
            attnd_error err;
            arena_init(&a, 1 << 16);
            if (split)
                attnd_wire_in_segs(&in, segs, 2);
            else
                attnd_wire_in_flat(&in, b, n);
            ck_assert_int_eq(attnd_wire_request_decode(&in, &a.pc, &m, &chk, &err), ATTND_OK);
            ck_assert_int_eq(chk.q.checked, split);
            if (split)
                ck_assert_uint_eq(chk.q.nonfinite, at);
            else
                ck_assert(m->q->data.data == qd); /* in place */
            free(a.p);
        }
        free(b);
    }
    free(r);
}
END_TEST

/* ---- decoders: malformed and odd inputs ------------------------------------------- */

START_TEST(test_every_truncation_is_judged_as_protobuf_c_judges_it)
{
    for (int i = 0; i < WS_N_REQUESTS; i++) {
        size_t n;
        uint8_t *b = ws_request_packed(i, &n);
        for (size_t k = 0; k <= n; k++) {
            uint8_t *cut = malloc(k + 1); /* its own allocation: reads past k are caught */
            memcpy(cut, b, k);
            ASSERT_AGREE(wire_oracle_request(cut, k, k), "sample %d cut at %zu", i, k);
            free(cut);
        }
        free(b);
    }
    size_t n;
    uint8_t *b = ws_reply_packed(2, 2, 2, 4, 6, 1, 300, &n);
    for (size_t k = 0; k <= n; k++)
        ASSERT_AGREE(wire_oracle_reply(b, k, k), "reply cut at %zu", k);
    free(b);
}
END_TEST

/* The offsets of every length prefix of a valid request in [from, to):
 * top-level fields, and inside q and new_kv (top: 1) the Tensor's. */
static size_t length_prefixes(const uint8_t *b, size_t from, size_t to, int top, size_t *at,
                              size_t n)
{
    size_t p = from;
    while (p < to) {
        uint64_t key = 0, len = 0;
        for (int s = 0;; s += 7) {
            key |= (uint64_t)(b[p] & 0x7f) << s;
            if (!(b[p++] & 0x80))
                break;
        }
        if ((key & 7) == 0) {
            while (b[p++] & 0x80)
                ;
            continue;
        }
        at[n++] = p;
        for (int s = 0;; s += 7) {
            len |= (uint64_t)(b[p] & 0x7f) << s;
            if (!(b[p++] & 0x80))
                break;
        }
        if (top && ((key >> 3) == 3 || (key >> 3) == 4))
            n = length_prefixes(b, p, p + len, 0, at, n);
        p += len;
    }
    return n;
}

/* Replace the length prefix at `at` (whose value is old) by `enc` (elen
 * bytes). */
static uint8_t *with_prefix(const uint8_t *b, size_t n, size_t at, const uint8_t *enc,
                            size_t elen, size_t *out_n)
{
    size_t old_len = 1;
    while (b[at + old_len - 1] & 0x80)
        old_len++;
    *out_n = n - old_len + elen;
    uint8_t *r = malloc(*out_n + 1);
    memcpy(r, b, at);
    memcpy(r + at, enc, elen);
    memcpy(r + at + elen, b + at + old_len, n - at - old_len);
    return r;
}

static size_t put_varint(uint8_t *p, uint64_t v, size_t min_len)
{
    size_t k = 0;
    while (v >= 0x80 || k + 1 < min_len) {
        p[k++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[k++] = (uint8_t)v;
    return k;
}

START_TEST(test_every_malformed_length_is_judged_as_protobuf_c_judges_it)
{
    size_t checked = 0;
    for (int i = 0; i < WS_N_REQUESTS; i++) {
        if (i == 4) /* 140 ids: the same field kinds as sample 1, 50x the cases */
            continue;
        size_t n, at[1024];
        uint8_t *b = ws_request_packed(i, &n);
        size_t np = length_prefixes(b, 0, n, 1, at, 0);
        for (size_t k = 0; k < np; k++) {
            /* every value that fits the message and a little past, each in
             * its canonical form and padded to 2..6 bytes (5 is the most
             * protobuf-c reads) */
            for (uint64_t v = 0; v <= n + 2; v++)
                for (size_t w = 1; w <= 6; w++) {
                    uint8_t enc[12];
                    size_t elen = put_varint(enc, v, w), mn;
                    if (w > 1 && elen != w)
                        continue;
                    uint8_t *m = with_prefix(b, n, at[k], enc, elen, &mn);
                    ASSERT_AGREE(wire_oracle_request(m, mn, v), "sample %d prefix %zu = %llu/%zu",
                                 i, k, (unsigned long long)v, w);
                    free(m);
                    checked++;
                }
            /* and lengths past INT_MAX or 64 bits */
            static const uint8_t huge[][10] = {
                {0xff, 0xff, 0xff, 0xff, 0x07}, {0x80, 0x80, 0x80, 0x80, 0x08},
                {0xff, 0xff, 0xff, 0xff, 0x0f}, {0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
            };
            for (size_t h = 0; h < 4; h++) {
                size_t mn, hl = h == 3 ? 6 : 5;
                uint8_t *m = with_prefix(b, n, at[k], huge[h], hl, &mn);
                ASSERT_AGREE(wire_oracle_request(m, mn, h), "sample %d prefix %zu huge %zu", i,
                             k, h);
                free(m);
            }
        }
        free(b);
    }
    ck_assert_uint_gt(checked, 1000);
}
END_TEST

/* Hand-made encodings: each is valid or malformed for a reason the
 * comment names; whichever it is, both decoders must say so. */
typedef struct hand {
    const char *why;
    size_t len;
    uint8_t b[40];
} hand;

static const hand hands[] = {
    {"layer as a 10-byte varint (high bits of the last byte ignored)", 11,
     {0x08, 0x85, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f}},
    {"layer as an 11-byte varint", 12,
     {0x08, 0x85, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}},
    {"a 2-byte key for field 1", 3, {0x88, 0x00, 0x05}},
    {"a 5-byte key for field 1", 6, {0x88, 0x80, 0x80, 0x80, 0x00, 0x05}},
    {"a 6-byte key for field 1", 7, {0x88, 0x80, 0x80, 0x80, 0x80, 0x00, 0x05}},
    {"a key for tag 0 in one byte", 2, {0x00, 0x05}},
    {"a key for tag 0 in two bytes (an unknown field)", 3, {0x80, 0x00, 0x05}},
    {"a tag past 2^28 (unknown)", 7, {0xf8, 0xff, 0xff, 0xff, 0x7f, 0x00}},
    {"a group start (wire type 3)", 2, {0x0b, 0x0c}},
    {"wire type 6", 2, {0x0e, 0x00}},
    {"an unknown fixed64", 10, {0x49, 1, 2, 3, 4, 5, 6, 7, 8}},
    {"an unknown fixed64 cut short", 8, {0x49, 1, 2, 3, 4, 5, 6, 7}},
    {"an unknown fixed32", 5, {0x4d, 1, 2, 3, 4}},
    {"an unknown length-delimited field", 4, {0x4a, 0x02, 0xff, 0xff}},
    {"return_lse as fixed64 with only high bits set (false)", 9,
     {0x31, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80}},
    {"return_lse as fixed32 (true)", 5, {0x35, 0x00, 0x00, 0x01, 0x00}},
    {"return_lse as an empty length-delimited field (false)", 2, {0x32, 0x00}},
    {"return_lse as a length-delimited field (true)", 3, {0x32, 0x01, 0x00}},
    {"return_lse as a 10-byte varint with only bit 63 set (true)", 11,
     {0x30, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}},
    {"return_lse as a varint of 0x80 0x00 (false)", 3, {0x30, 0x80, 0x00}},
    {"up_project as a group (refused)", 3, {0xa3, 0x01, 0x00}},
    {"q_form HEADS", 3, {0xa8, 0x01, 0x01}},
    {"q_form as a length-delimited field (refused)", 4, {0xaa, 0x01, 0x01, 0x01}},
    {"q_form twice: the later wins", 6, {0xa8, 0x01, 0x01, 0xa8, 0x01, 0x00}},
    {"layer as a length-delimited field", 3, {0x0a, 0x01, 0x05}},
    {"a session id as a varint", 2, {0x10, 0x05}},
    {"positions unpacked, then packed", 7, {0x28, 0x01, 0x2a, 0x02, 0x02, 0x03}},
    {"positions packed with a trailing continuation byte", 4, {0x2a, 0x02, 0x01, 0x80}},
    {"positions as fixed64", 9, {0x29, 1, 0, 0, 0, 0, 0, 0, 0}},
    {"positions packed, empty", 2, {0x2a, 0x00}},
    {"positions packed: an 11-byte varint after a short one", 14,
     {0x2a, 0x0c, 0x01, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}},
    {"positions packed: a 10-byte varint (high bits of the last ignored) among short ones", 14,
     {0x2a, 0x0c, 0x05, 0x85, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f, 0x03}},
    {"given_idx packed: one- and two-byte values (a given-tokens list)", 15,
     {0x82, 0x02, 0x0c, 0xac, 0x02, 0x01, 0x80, 0x01, 0xff, 0x7f, 0x05, 0x06, 0x07, 0x08, 0x09}},
    {"given_idx packed, its last varint cut short", 6, {0x82, 0x02, 0x03, 0x01, 0x80, 0x80}},
    {"q twice: shapes concatenate, the later dtype and data win", 16,
     {0x1a, 0x06, 0x08, 0x01, 0x12, 0x02, 0x02, 0x03, 0x1a, 0x06, 0x12, 0x01, 0x04, 0x1a, 0x01,
      0x09}},
    {"q twice, the later one without data: the earlier data stays", 14,
     {0x1a, 0x07, 0x08, 0x02, 0x1a, 0x03, 0x07, 0x08, 0x09, 0x1a, 0x03, 0x08, 0x01, 0x00}},
    {"q.data twice in one q, the later empty: empty", 9,
     {0x1a, 0x07, 0x1a, 0x03, 0x01, 0x02, 0x03, 0x1a, 0x00}},
    {"q.dtype as a length-delimited field", 5, {0x1a, 0x03, 0x0a, 0x01, 0x01}},
    {"q.shape as fixed32", 7, {0x1a, 0x05, 0x15, 1, 2, 3, 4}},
    {"q with an unknown field inside", 7, {0x1a, 0x05, 0x20, 0x01, 0x08, 0x02, 0x00}},
    {"q with a group inside", 4, {0x1a, 0x02, 0x23, 0x24}},
    {"q as a varint", 2, {0x18, 0x01}},
    {"q's body running past the message", 4, {0x1a, 0x05, 0x08, 0x01}},
    {"the two known cases: a session id whose length prefix runs 6 bytes", 23,
     {0x12, 0x90, 0x80, 0x80, 0x80, 0x80, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
      15, 16}},
    {"...and a q whose dtype key runs 6 bytes (a malformed nested field)", 9,
     {0x1a, 0x07, 0x88, 0x80, 0x80, 0x80, 0x80, 0x00, 0x01}},
};

START_TEST(test_hand_made_encodings_are_judged_as_protobuf_c_judges_them)
{
    for (size_t i = 0; i < sizeof hands / sizeof hands[0]; i++) {
        uint8_t *b = malloc(hands[i].len + 1);
        memcpy(b, hands[i].b, hands[i].len);
        ASSERT_AGREE(wire_oracle_request(b, hands[i].len, i), "%s", hands[i].why);
        ASSERT_AGREE(wire_oracle_reply(b, hands[i].len, i), "%s (as a reply)", hands[i].why);
        free(b);
    }
}
END_TEST

/* The two encodings an outside test found the old in-place decoder taking
 * while protobuf-c refuses them (issue 10, item 7). */
START_TEST(test_a_length_prefix_longer_than_five_bytes_is_refused)
{
    const hand *h = &hands[sizeof hands / sizeof hands[0] - 2];
    arena a;
    attnd_wire_in in;
    Attnd__V1__AttendRequest *m;
    attnd_error err;
    arena_init(&a, 1 << 16);
    attnd_wire_in_flat(&in, h->b, h->len);
    ck_assert_int_eq(wire_oracle_pbc_accepts_request(h->b, h->len), 0);
    ck_assert_int_eq(attnd_wire_request_decode(&in, &a.pc, &m, NULL, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(err.msg, "attnd.v1.AttendRequest") != NULL, "%s", err.msg);
    free(a.p);
}
END_TEST

START_TEST(test_a_nested_field_with_a_key_longer_than_five_bytes_is_refused)
{
    const hand *h = &hands[sizeof hands / sizeof hands[0] - 1];
    arena a;
    attnd_wire_in in;
    Attnd__V1__AttendRequest *m;
    attnd_error err;
    arena_init(&a, 1 << 16);
    attnd_wire_in_flat(&in, h->b, h->len);
    ck_assert_int_eq(wire_oracle_pbc_accepts_request(h->b, h->len), 0);
    ck_assert_int_eq(attnd_wire_request_decode(&in, &a.pc, &m, NULL, &err),
                     ATTND_ERR_INVALID_ARGUMENT);
    free(a.p);
}
END_TEST

/* ---- the mutation loop --------------------------------------------------------------- */

static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Mutate b (len *n, room cap) in place: 1-4 edits of bytes, bits, runs. */
static void mutate(uint8_t *b, size_t *n, size_t cap, uint64_t *s)
{
    static const uint8_t odd[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0x08, 0x12, 0x1a, 0x22, 0x2a};
    int edits = 1 + (int)(rnd(s) % 4);
    for (int e = 0; e < edits; e++) {
        size_t l = *n, p = l ? (size_t)(rnd(s) % l) : 0;
        switch (rnd(s) % 7) {
        case 0: if (l) b[p] = (uint8_t)rnd(s); break;
        case 1: if (l) b[p] ^= (uint8_t)(1u << (rnd(s) % 8)); break;
        case 2: if (l) b[p] = odd[rnd(s) % sizeof odd]; break;
        case 3: /* insert an odd byte */
            if (l < cap) {
                memmove(b + p + 1, b + p, l - p);
                b[p] = odd[rnd(s) % sizeof odd];
                (*n)++;
            }
            break;
        case 4: /* delete a run */
            if (l) {
                size_t k = 1 + (size_t)(rnd(s) % 4);
                if (k > l - p)
                    k = l - p;
                memmove(b + p, b + p + k, l - p - k);
                *n -= k;
            }
            break;
        case 5: /* duplicate a run */
            if (l) {
                size_t k = 1 + (size_t)(rnd(s) % 24);
                if (k > l - p)
                    k = l - p;
                if (l + k <= cap) {
                    memmove(b + p + k, b + p, l - p);
                    (*n) += k;
                }
            }
            break;
        default: /* cut */
            *n = p;
        }
    }
}

START_TEST(test_a_seeded_mutation_loop_is_judged_as_protobuf_c_judges_it)
{
    const char *env = getenv("ATTND_TEST_SEED");
    uint64_t s = env ? strtoull(env, NULL, 0) : 20261201u;
    size_t accepted = 0, iters = 60000;
    uint8_t *seeds[WS_N_REQUESTS];
    size_t lens[WS_N_REQUESTS];
    enum { CAP = 8192 };
    uint8_t *b = malloc(CAP);

    for (int i = 0; i < WS_N_REQUESTS; i++)
        seeds[i] = ws_request_packed(i, &lens[i]);
    for (size_t it = 0; it < iters; it++) {
        int i = (int)(rnd(&s) % WS_N_REQUESTS);
        size_t n = lens[i];
        memcpy(b, seeds[i], n);
        mutate(b, &n, CAP, &s);
        uint8_t *m = malloc(n + 1); /* exact size: overreads are caught */
        memcpy(m, b, n);
        ASSERT_AGREE(wire_oracle_request(m, n, it), "iteration %zu (seed %s)", it,
                     env ? env : "20261201");
        if (it % 4 == 0)
            ASSERT_AGREE(wire_oracle_reply(m, n, it), "iteration %zu as a reply", it);
        accepted += (size_t)wire_oracle_pbc_accepts_request(m, n);
        free(m);
    }
    /* both kinds were seen: the loop explores valid and invalid inputs */
    ck_assert_uint_gt(accepted, iters / 20);
    ck_assert_uint_lt(accepted, iters - iters / 20);
    for (int i = 0; i < WS_N_REQUESTS; i++)
        free(seeds[i]);
    free(b);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("proto_wire");
    TCase *enc = tcase_create("encoders");
    tcase_add_test(enc, test_the_request_encoder_writes_what_protobuf_c_packs);
    tcase_add_test(enc, test_the_request_gather_list_is_what_protobuf_c_packs_with_tensors_in_place);
    tcase_add_test(enc, test_the_reply_encoder_writes_what_protobuf_c_packs_where_the_plan_says);
    suite_add_tcase(s, enc);
    TCase *dec = tcase_create("decoders");
    tcase_set_timeout(dec, 300);
    tcase_add_test(dec, test_decoding_reads_every_field_with_the_tensors_in_place);
    tcase_add_test(dec, test_a_message_in_segments_decodes_as_in_one_piece);
    tcase_add_test(dec, test_a_gathered_tensor_reports_its_first_non_finite_element);
    tcase_add_test(dec, test_every_truncation_is_judged_as_protobuf_c_judges_it);
    tcase_add_test(dec, test_every_malformed_length_is_judged_as_protobuf_c_judges_it);
    tcase_add_test(dec, test_hand_made_encodings_are_judged_as_protobuf_c_judges_them);
    tcase_add_test(dec, test_a_length_prefix_longer_than_five_bytes_is_refused);
    tcase_add_test(dec, test_a_nested_field_with_a_key_longer_than_five_bytes_is_refused);
    tcase_add_test(dec, test_a_seeded_mutation_loop_is_judged_as_protobuf_c_judges_it);
    suite_add_tcase(s, dec);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
