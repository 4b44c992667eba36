/* libattnd's Attend messages end to end through the codec, against
 * protobuf-c, which defines the wire (the codec's own suite is
 * tests/proto/test_wire.c):
 *   - what libattnd builds from attnd_attend_args, sent as a gather list
 *     (UCX) or written into one buffer (gRPC), is byte for byte what
 *     protobuf-c packs for that message;
 *   - the server's decoding of it (attnd_wire_request_decode, as both
 *     transports run it) reads what protobuf-c unpacks, with the tensors
 *     where they arrived, in one piece or in slices;
 *   - libattnd's reply decoding takes the server's encoding of a reply
 *     into the caller's out/lse, and a reply of another shape is INTERNAL.
 * No server: the encoder runs on a client whose model is already known.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "attnd_wire_grpc.h"
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

/* The gather list of b's request, concatenated; libattnd's one-buffer
 * encoding of it (the gRPC path); and protobuf-c's packing of the same
 * message. All malloc'd. */
static void encode_all(built *b, uint8_t **gathered_p, uint8_t **written_p, uint8_t **packed_p,
                       size_t *len_p)
{
    attnd__client_attend_msg msg;
    attnd__client_attend_dst dst;
    attnd_wire_gather g;
    attnd_error err;
    grpc_byte_buffer *bb = NULL;

    attnd_error_clear(&err);
    ck_assert_msg(attnd__client_attend_prepare(b->c, &b->a, &msg, &dst, &err) == ATTND_OK, "%s",
                  err.msg);
    uint8_t *frame = malloc(attnd_wire_request_frame_bound(&msg.req) + 1);
    attnd_wire_request_gather(&msg.req, frame, &g);
    ck_assert_uint_le(g.n, ATTND_WIRE_GATHER_MAX);
    uint8_t *out = malloc(g.total ? g.total : 1), *p = out;
    for (size_t i = 0; i < g.n; i++) {
        memcpy(p, g.e[i].p, g.e[i].len);
        p += g.e[i].len;
    }
    ck_assert_uint_eq((size_t)(p - out), g.total);
    size_t n = protobuf_c_message_get_packed_size(&msg.req.base);
    *packed_p = malloc(n ? n : 1);
    ck_assert_uint_eq(protobuf_c_message_pack(&msg.req.base, *packed_p), n);
    ck_assert_uint_eq(g.total, n);
    attnd__client_attend_msg_cleanup(&msg);

    /* the gRPC form, from the same args (its request id is the next one) */
    ck_assert_msg(attnd__client_attend_encode(b->c, &b->a, NULL, &bb, &dst, &err) == ATTND_OK,
                  "%s", err.msg);
    ck_assert_uint_eq(grpc_byte_buffer_length(bb), n);
    *written_p = malloc(n ? n : 1);
    grpc_slice *sl = &bb->data.raw.slice_buffer.slices[0];
    memcpy(*written_p, GRPC_SLICE_START_PTR(*sl), n);
    grpc_byte_buffer_destroy(bb);
    *gathered_p = out;
    *len_p = n;
    free(frame);
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

START_TEST(test_the_request_libattnd_sends_is_exactly_what_protobuf_c_packs)
{
    built b;
    uint8_t *g, *w, *p;
    size_t n;

    build(&b, &variants[_i]);
    encode_all(&b, &g, &w, &p, &n);
    ck_assert_msg(memcmp(g, p, n) == 0, "%s: the gather list differs", variants[_i].name);
    /* the gRPC form carries the next request id: equal up to it */
    Attnd__V1__AttendRequest *u = attnd__v1__attend_request__unpack(NULL, n, w);
    ck_assert_ptr_nonnull(u);
    u->request_id -= 1;
    uint8_t *again = malloc(n + 1);
    ck_assert_uint_eq(attnd__v1__attend_request__pack(u, again), n);
    ck_assert_msg(memcmp(again, p, n) == 0, "%s: the written form differs", variants[_i].name);
    attnd__v1__attend_request__free_unpacked(u, NULL);
    free(again);
    free(g);
    free(w);
    free(p);
    unbuild(&b);
}
END_TEST

/* A grpc byte buffer of `n` slices holding data (split evenly). */
static grpc_byte_buffer *sliced(const uint8_t *data, size_t len, size_t n)
{
    grpc_slice s[8];
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = i + 1 == n ? len - at : len / n;
        s[i] = grpc_slice_from_copied_buffer((const char *)data + at, l);
        at += l;
    }
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(s, n);
    for (size_t i = 0; i < n; i++)
        grpc_slice_unref(s[i]);
    return bb;
}

START_TEST(test_the_server_reads_it_as_protobuf_c_does_with_tensors_in_place)
{
    built b;
    uint8_t *g, *w, *p;
    size_t n;
    attnd_srv_arena a;
    attnd_error err;

    build(&b, &variants[_i]);
    encode_all(&b, &g, &w, &p, &n);
    attnd_srv_arena_init(&a, 0);
    Attnd__V1__AttendRequest *mp = attnd__v1__attend_request__unpack(NULL, n, p);
    ck_assert_ptr_nonnull(mp);
    for (size_t slices = 1; slices <= 4; slices++) {
        grpc_byte_buffer *bb = sliced(p, n, slices);
        attnd_wire_in in;
        Attnd__V1__AttendRequest *mi = NULL;
        ck_assert_int_eq(attnd_wire_in_grpc(&in, bb), 0);
        attnd_srv_arena_reset(&a);
        attnd_error_clear(&err);
        ck_assert_int_eq(attnd_wire_request_decode(&in, &a.pc, &mi, NULL, &err), ATTND_OK);
        assert_same_request(mi, mp);
        if (slices == 1 && mi->q->data.len) { /* read where it arrived */
            const uint8_t *s0 = GRPC_SLICE_START_PTR(bb->data.raw.slice_buffer.slices[0]);
            ck_assert(mi->q->data.data >= s0 && mi->q->data.data + mi->q->data.len <= s0 + n);
        }
        grpc_byte_buffer_destroy(bb);
    }
    attnd__v1__attend_request__free_unpacked(mp, NULL);
    attnd_srv_arena_cleanup(&a);
    free(g);
    free(w);
    free(p);
    unbuild(&b);
}
END_TEST

/* The server's reply for b's request lands in b's out/lse, from one slice
 * or several; the same reply for another head count is INTERNAL. */
START_TEST(test_a_reply_lands_in_the_callers_buffers_and_another_shape_is_internal)
{
    built b;
    attnd__client_attend_msg msg;
    attnd__client_attend_dst dst;
    attnd_error err;
    const variant *v = &variants[2]; /* two query tokens, lse */

    build(&b, v);
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd__client_attend_prepare(b.c, &b.a, &msg, &dst, &err), ATTND_OK);
    attnd__client_attend_msg_cleanup(&msg);
    size_t rows = (size_t)v->n_seqs * v->S * HQ;
    float *out = malloc(rows * DV * sizeof(float)), *lse = malloc(rows * sizeof(float));
    for (size_t i = 0; i < rows * DV; i++)
        out[i] = (float)i * 0.25f;
    for (size_t i = 0; i < rows; i++)
        lse[i] = (float)i - 3.0f;
    attnd_srv_attend_reply r = {
        .desc = {dst.request_id, dst.out_dtype, {v->n_seqs, v->S, HQ, DV}, 1,
                 {v->n_seqs, v->S, HQ}},
        .out = out,
        .lse = lse,
    };
    for (size_t slices = 1; slices <= 3; slices++) {
        size_t len = attnd_srv_attend_reply_size(&r);
        uint8_t *enc = malloc(len);
        attnd_srv_attend_reply_write(&r, enc);
        grpc_byte_buffer *bb = sliced(enc, len, slices);
        memset(b.out, 0, b.a.out_capacity);
        memset(b.lse, 0, b.a.lse_capacity * sizeof(float));
        ck_assert_int_eq(attnd__client_attend_decode(bb, &dst, &err), ATTND_OK);
        ck_assert(memcmp(b.out, out, rows * DV * sizeof(float)) == 0); /* f32 out */
        ck_assert(memcmp(b.lse, lse, rows * sizeof(float)) == 0);
        grpc_byte_buffer_destroy(bb);
        free(enc);
    }
    r.desc.out_shape[2] = r.desc.lse_shape[2] = HQ / 2; /* a reply for another model */
    size_t len = attnd_srv_attend_reply_size(&r);
    uint8_t *enc = malloc(len);
    attnd_srv_attend_reply_write(&r, enc);
    attnd_wire_in in;
    attnd_wire_in_flat(&in, enc, len);
    ck_assert_int_eq(attnd__client_attend_decode_in(&in, &dst, &err), ATTND_ERR_INTERNAL);
    ck_assert_msg(strstr(err.msg, "AttendResponse.out") != NULL, "%s", err.msg);
    free(enc);
    free(out);
    free(lse);
    unbuild(&b);
}
END_TEST

static Suite *suite(void)
{
    Suite *su = suite_create("client_wire");
    TCase *tc = tcase_create("wire");
    tcase_add_loop_test(tc, test_the_request_libattnd_sends_is_exactly_what_protobuf_c_packs, 0,
                        N_VARIANTS);
    tcase_add_loop_test(tc, test_the_server_reads_it_as_protobuf_c_does_with_tensors_in_place, 0,
                        N_VARIANTS);
    tcase_add_test(tc, test_a_reply_lands_in_the_callers_buffers_and_another_shape_is_internal);
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
