/* The two hand-written halves of the UCX Attend path, checked against
 * protobuf-c, which defines the wire:
 *   - client/attend_iov.c: the gather list of an AttendRequest (framing in
 *     a small buffer, tensors in place) must be byte for byte what
 *     protobuf-c packs;
 *   - service/attend_decode.c: the in-place decoder must read what
 *     protobuf-c unpacks, field for field, with the tensors pointing into
 *     the received bytes; on anything else (a truncation, a repeated
 *     message field) it must step aside (-1) for protobuf-c.
 * No server: the encoder runs on a client whose model is already known.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "attend_decode.h"
#include "client_int.h"
#include "codec.h"

typedef struct variant {
    const char *name;
    uint32_t layer, n_seqs, S;
    int with_kv, with_pos, want_lse;
    attnd_dtype q_dtype, out_dtype;
} variant;

static const variant variants[] = {
    {"layer 0, one sequence, nothing optional", 0, 1, 1, 0, 0, 0, ATTND_DTYPE_BF16, 0},
    {"all fields", 3, 4, 1, 1, 1, 1, ATTND_DTYPE_F32, ATTND_DTYPE_BF16},
    {"two query tokens, kv, lse", 1, 2, 2, 1, 0, 1, ATTND_DTYPE_F16, ATTND_DTYPE_F32},
    {"an unknown dtype value", 2, 1, 1, 0, 0, 0, (attnd_dtype)7, (attnd_dtype)9},
    {"a batch over the stack ids", 5, 70, 1, 1, 1, 0, ATTND_DTYPE_BF16, 0},
};
#define N_VARIANTS ((int)(sizeof variants / sizeof variants[0]))

enum { HQ = 4, DK = 6, DV = 4 };

typedef struct built {
    attnd_client *c;
    attnd_attend_args a;
    attnd_session_id *ids;
    uint64_t *pos;
    void *q, *kv, *out;
    float *lse;
} built;

static attnd_client *fake_client(void)
{
    attnd_client *c = calloc(1, sizeof *c);
    ck_assert_ptr_nonnull(c);
    attnd_client_options_init(&c->opts);
    atomic_init(&c->next_request_id, 41);
    pthread_mutex_init(&c->model_mu, NULL);
    c->have_model = 1;
    c->model.kind = ATTND_ATTN_MLA;
    c->model.n_q_heads = HQ;
    c->model.d_k = DK;
    c->model.d_v = DV;
    c->model.kv_token_elems = DK;
    return c;
}

static void build(built *b, const variant *v)
{
    size_t es = attnd_dtype_size(v->q_dtype) ? attnd_dtype_size(v->q_dtype) : 1;
    size_t qn = (size_t)v->n_seqs * v->S * HQ * DK, kvn = (size_t)v->n_seqs * v->S * DK;

    memset(b, 0, sizeof *b);
    b->c = fake_client();
    b->ids = calloc(v->n_seqs, sizeof *b->ids);
    b->pos = calloc(v->n_seqs, sizeof *b->pos);
    b->q = malloc(qn * es);
    b->kv = malloc(kvn * es);
    b->out = malloc((size_t)v->n_seqs * v->S * HQ * DV * 4);
    b->lse = malloc((size_t)v->n_seqs * v->S * HQ * sizeof(float));
    for (uint32_t i = 0; i < v->n_seqs; i++) {
        for (int k = 0; k < ATTND_SESSION_ID_BYTES; k++)
            b->ids[i].bytes[k] = (uint8_t)(i * 31 + k);
        b->pos[i] = 1000u * i + 300u; /* multi-byte varints */
    }
    for (size_t i = 0; i < qn * es; i++)
        ((uint8_t *)b->q)[i] = (uint8_t)(i * 7);
    for (size_t i = 0; i < kvn * es; i++)
        ((uint8_t *)b->kv)[i] = (uint8_t)(i * 13 + 1);
    attnd_attend_args *a = &b->a;
    a->layer = v->layer;
    a->n_seqs = v->n_seqs;
    a->sessions = b->ids;
    a->q.dtype = v->q_dtype;
    a->q.data = b->q;
    if (v->S > 1) {
        a->q.ndim = 4;
        int64_t sh[4] = {v->n_seqs, v->S, HQ, DK};
        memcpy(a->q.shape, sh, sizeof sh);
    } else {
        a->q.ndim = 3;
        int64_t sh[3] = {v->n_seqs, HQ, DK};
        memcpy(a->q.shape, sh, sizeof sh);
    }
    if (v->with_kv) {
        a->new_kv.dtype = v->q_dtype;
        a->new_kv.ndim = v->S > 1 ? 3 : 2;
        a->new_kv.shape[0] = v->n_seqs;
        a->new_kv.shape[1] = v->S > 1 ? v->S : DK;
        a->new_kv.shape[2] = DK;
        a->new_kv.data = b->kv;
    }
    a->positions = v->with_pos ? b->pos : NULL;
    a->out_dtype = v->out_dtype;
    a->out = b->out;
    a->out_capacity = (size_t)v->n_seqs * v->S * HQ * DV * 4;
    a->lse = v->want_lse ? b->lse : NULL;
    a->lse_capacity = (size_t)v->n_seqs * v->S * HQ;
}

static void unbuild(built *b)
{
    pthread_mutex_destroy(&b->c->model_mu);
    free(b->c);
    free(b->ids);
    free(b->pos);
    free(b->q);
    free(b->kv);
    free(b->out);
    free(b->lse);
}

/* The gather list of b's request, concatenated; and protobuf-c's packing
 * of the same message. Both malloc'd. */
static void encode_both(built *b, uint8_t **gathered_p, size_t *glen_p, uint8_t **packed_p,
                        size_t *plen_p)
{
    attnd__client_attend_msg msg;
    attnd__client_attend_dst dst;
    attnd__client_gather g;
    attnd_error err;

    attnd_error_clear(&err);
    ck_assert_msg(attnd__client_attend_prepare(b->c, &b->a, &msg, &dst, &err) == ATTND_OK, "%s",
                  err.msg);
    uint8_t *frame = malloc(attnd__client_attend_frame_bound(&msg));
    attnd__client_attend_gather(&msg, frame, &g);
    ck_assert_uint_le(g.n, ATTND__CLIENT_GATHER_MAX);
    uint8_t *out = malloc(g.total ? g.total : 1), *p = out;
    for (size_t i = 0; i < g.n; i++) {
        memcpy(p, g.e[i].p, g.e[i].len);
        p += g.e[i].len;
    }
    ck_assert_uint_eq((size_t)(p - out), g.total);
    *plen_p = protobuf_c_message_get_packed_size(&msg.req.base);
    *packed_p = malloc(*plen_p ? *plen_p : 1);
    ck_assert_uint_eq(protobuf_c_message_pack(&msg.req.base, *packed_p), *plen_p);
    *gathered_p = out;
    *glen_p = g.total;
    free(frame);
    attnd__client_attend_msg_cleanup(&msg);
}

static void assert_same_tensor(const Attnd__V1__Tensor *x, const Attnd__V1__Tensor *y)
{
    ck_assert((x == NULL) == (y == NULL));
    if (!x)
        return;
    ck_assert_int_eq(x->dtype, y->dtype);
    ck_assert_uint_eq(x->n_shape, y->n_shape);
    for (size_t i = 0; i < x->n_shape; i++)
        ck_assert_int_eq(x->shape[i], y->shape[i]);
    ck_assert_uint_eq(x->data.len, y->data.len);
    ck_assert(x->data.len == 0 || memcmp(x->data.data, y->data.data, x->data.len) == 0);
}

static void assert_same_request(const Attnd__V1__AttendRequest *x,
                                const Attnd__V1__AttendRequest *y)
{
    ck_assert_uint_eq(x->layer, y->layer);
    ck_assert_uint_eq(x->n_session_ids, y->n_session_ids);
    for (size_t i = 0; i < x->n_session_ids; i++) {
        ck_assert_uint_eq(x->session_ids[i].len, y->session_ids[i].len);
        ck_assert(memcmp(x->session_ids[i].data, y->session_ids[i].data,
                         x->session_ids[i].len) == 0);
    }
    assert_same_tensor(x->q, y->q);
    assert_same_tensor(x->new_kv, y->new_kv);
    ck_assert_uint_eq(x->n_positions, y->n_positions);
    for (size_t i = 0; i < x->n_positions; i++)
        ck_assert_uint_eq(x->positions[i], y->positions[i]);
    ck_assert_int_eq(x->return_lse, y->return_lse);
    ck_assert_int_eq(x->out_dtype, y->out_dtype);
    ck_assert_uint_eq(x->request_id, y->request_id);
    ck_assert_int_eq(x->up_project, y->up_project);
}

START_TEST(test_the_gather_list_is_exactly_what_protobuf_c_packs)
{
    built b;
    uint8_t *g, *p;
    size_t gl, pl;

    build(&b, &variants[_i]);
    encode_both(&b, &g, &gl, &p, &pl);
    ck_assert_msg(gl == pl && memcmp(g, p, gl) == 0, "%s: %zu gathered vs %zu packed bytes differ",
                  variants[_i].name, gl, pl);
    free(g);
    free(p);
    unbuild(&b);
}
END_TEST

START_TEST(test_in_place_decoding_reads_what_protobuf_c_unpacks_with_tensors_in_place)
{
    built b;
    uint8_t *g, *p;
    size_t gl, pl;
    attnd_srv_arena a1, a2;
    attnd_error err;

    build(&b, &variants[_i]);
    encode_both(&b, &g, &gl, &p, &pl);
    attnd_srv_arena_init(&a1, 0);
    attnd_srv_arena_init(&a2, 0);
    Attnd__V1__AttendRequest *mi = NULL;
    ck_assert_int_eq(attnd_srv_attend_decode_inplace(p, pl, &a1, &mi), 0);
    attnd_error_clear(&err);
    const Attnd__V1__AttendRequest *mp = (const Attnd__V1__AttendRequest *)attnd_srv_unpack(
        &attnd__v1__attend_request__descriptor, &a2, p, pl, &err);
    ck_assert_ptr_nonnull(mp);
    assert_same_request(mi, mp);
    /* the tensors were not copied */
    if (mi->q->data.len)
        ck_assert(mi->q->data.data >= p && mi->q->data.data + mi->q->data.len <= p + pl);
    if (mi->new_kv && mi->new_kv->data.len)
        ck_assert(mi->new_kv->data.data >= p &&
                  mi->new_kv->data.data + mi->new_kv->data.len <= p + pl);
    attnd_srv_arena_cleanup(&a1);
    attnd_srv_arena_cleanup(&a2);
    free(g);
    free(p);
    unbuild(&b);
}
END_TEST

/* Every prefix of a request: when the in-place decoder accepts one,
 * protobuf-c must accept it too and read the same message. */
START_TEST(test_in_place_decoding_of_any_truncation_agrees_with_protobuf_c_or_steps_aside)
{
    built b;
    uint8_t *g, *p;
    size_t gl, pl;
    attnd_srv_arena a1, a2;
    attnd_error err;
    size_t accepted = 0;

    build(&b, &variants[1]);
    encode_both(&b, &g, &gl, &p, &pl);
    attnd_srv_arena_init(&a1, 0);
    attnd_srv_arena_init(&a2, 0);
    for (size_t n = 0; n < pl; n++) {
        uint8_t *cut = malloc(n ? n : 1); /* exact size: ASan sees any overread */
        memcpy(cut, p, n);
        Attnd__V1__AttendRequest *mi = NULL;
        attnd_srv_arena_reset(&a1);
        attnd_srv_arena_reset(&a2);
        if (attnd_srv_attend_decode_inplace(cut, n, &a1, &mi) == 0) {
            accepted++;
            attnd_error_clear(&err);
            const Attnd__V1__AttendRequest *mp = (const Attnd__V1__AttendRequest *)
                attnd_srv_unpack(&attnd__v1__attend_request__descriptor, &a2, cut, n, &err);
            ck_assert_msg(mp != NULL, "prefix %zu: accepted in place, refused by protobuf-c", n);
            assert_same_request(mi, mp);
        }
        free(cut);
    }
    ck_assert_uint_gt(accepted, 0); /* field boundaries are whole messages */
    attnd_srv_arena_cleanup(&a1);
    attnd_srv_arena_cleanup(&a2);
    free(g);
    free(p);
    unbuild(&b);
}
END_TEST

START_TEST(test_a_repeated_tensor_field_is_left_to_protobuf_c)
{
    built b;
    uint8_t *g, *p;
    size_t gl, pl;
    attnd_srv_arena a;

    build(&b, &variants[0]);
    encode_both(&b, &g, &gl, &p, &pl);
    /* the message twice: q appears twice (protobuf-c merges them) */
    uint8_t *twice = malloc(2 * pl);
    memcpy(twice, p, pl);
    memcpy(twice + pl, p, pl);
    attnd_srv_arena_init(&a, 0);
    Attnd__V1__AttendRequest *mi = NULL;
    ck_assert_int_eq(attnd_srv_attend_decode_inplace(twice, 2 * pl, &a, &mi), -1);
    attnd_srv_arena_cleanup(&a);
    free(twice);
    free(g);
    free(p);
    unbuild(&b);
}
END_TEST

START_TEST(test_an_unknown_field_is_left_to_protobuf_c)
{
    /* layer 2, then field 99 (varint 1), which protobuf-c skips */
    static const uint8_t msg[] = {0x08, 0x02, 0x98, 0x06, 0x01};
    attnd_srv_arena a;

    attnd_srv_arena_init(&a, 0);
    Attnd__V1__AttendRequest *mi = NULL;
    ck_assert_int_eq(attnd_srv_attend_decode_inplace(msg, sizeof msg, &a, &mi), -1);
    attnd_srv_arena_cleanup(&a);
}
END_TEST

START_TEST(test_up_project_is_read_like_protobuf_c_reads_it)
{
    static const uint8_t msg[] = {0x08, 0x02, 0xa0, 0x01, 0x01}; /* layer 2, up_project */
    attnd_srv_arena a1, a2;
    attnd_error err;

    attnd_srv_arena_init(&a1, 0);
    attnd_srv_arena_init(&a2, 0);
    Attnd__V1__AttendRequest *mi = NULL;
    ck_assert_int_eq(attnd_srv_attend_decode_inplace(msg, sizeof msg, &a1, &mi), 0);
    attnd_error_clear(&err);
    const Attnd__V1__AttendRequest *mp = (const Attnd__V1__AttendRequest *)attnd_srv_unpack(
        &attnd__v1__attend_request__descriptor, &a2, msg, sizeof msg, &err);
    ck_assert_ptr_nonnull(mp);
    ck_assert_int_eq(mp->up_project, 1);
    assert_same_request(mi, mp);
    attnd_srv_arena_cleanup(&a1);
    attnd_srv_arena_cleanup(&a2);
}
END_TEST

START_TEST(test_unpacked_repeated_scalars_are_read_like_packed_ones)
{
    /* layer 2; positions 5 and 300 unpacked (two fields); q {dtype 3,
     * shape 1, 2 unpacked, data "ab"} */
    static const uint8_t msg[] = {0x08, 0x02, 0x28, 0x05, 0x28, 0xac, 0x02,
                                  0x1a, 0x0a, 0x08, 0x03, 0x10, 0x01, 0x10, 0x02,
                                  0x1a, 0x02, 'a', 'b'};
    attnd_srv_arena a1, a2;
    attnd_error err;

    attnd_srv_arena_init(&a1, 0);
    attnd_srv_arena_init(&a2, 0);
    Attnd__V1__AttendRequest *mi = NULL;
    ck_assert_int_eq(attnd_srv_attend_decode_inplace(msg, sizeof msg, &a1, &mi), 0);
    attnd_error_clear(&err);
    const Attnd__V1__AttendRequest *mp = (const Attnd__V1__AttendRequest *)attnd_srv_unpack(
        &attnd__v1__attend_request__descriptor, &a2, msg, sizeof msg, &err);
    ck_assert_ptr_nonnull(mp);
    assert_same_request(mi, mp);
    ck_assert_uint_eq(mi->n_positions, 2);
    ck_assert_uint_eq(mi->positions[1], 300);
    ck_assert_uint_eq(mi->q->n_shape, 2);
    attnd_srv_arena_cleanup(&a1);
    attnd_srv_arena_cleanup(&a2);
}
END_TEST

static Suite *suite(void)
{
    Suite *su = suite_create("ucx_wire");
    TCase *tc = tcase_create("wire");
    tcase_add_loop_test(tc, test_the_gather_list_is_exactly_what_protobuf_c_packs, 0, N_VARIANTS);
    tcase_add_loop_test(tc, test_in_place_decoding_reads_what_protobuf_c_unpacks_with_tensors_in_place,
                        0, N_VARIANTS);
    tcase_add_test(tc, test_in_place_decoding_of_any_truncation_agrees_with_protobuf_c_or_steps_aside);
    tcase_add_test(tc, test_a_repeated_tensor_field_is_left_to_protobuf_c);
    tcase_add_test(tc, test_unpacked_repeated_scalars_are_read_like_packed_ones);
    tcase_add_test(tc, test_an_unknown_field_is_left_to_protobuf_c);
    tcase_add_test(tc, test_up_project_is_read_like_protobuf_c_reads_it);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
