/* Valid AttendRequest and AttendResponse messages for the codec's tests and
 * as the fuzzer's seeds: every field present or absent, multi-byte varints,
 * negative enum and shape values, batches past 127 entries. Header-only. */
#ifndef ATTND_WIRE_SAMPLES_H
#define ATTND_WIRE_SAMPLES_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attnd.pb-c.h"

typedef struct ws_request {
    Attnd__V1__AttendRequest m;
    Attnd__V1__Tensor q, kv;
    ProtobufCBinaryData ids[200];
    uint8_t id_bytes[200][16];
    uint64_t pos[200];
    uint32_t given_indptr[8];
    uint64_t given_idx[6];
    int64_t q_shape[4], kv_shape[3];
    uint8_t q_data[2048], kv_data[512];
} ws_request;

#define WS_N_REQUESTS 8

/* Sample i (0 <= i < WS_N_REQUESTS) into r (pointers into r). */
static inline void ws_request_make(ws_request *r, int i)
{
    static const struct {
        uint32_t layer, n;
        int q, kv, pos, lse, up;
        int dtype, out_dtype, q_form;
        uint64_t request_id;
        int64_t s;
    } v[WS_N_REQUESTS] = {
        {0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1},            /* nothing optional */
        {3, 4, 1, 1, 1, 1, 0, 3, 1, 1, 41, 1},           /* every field (q_form HEADS) */
        {1, 2, 1, 1, 0, 1, 1, 2, 3, 0, 1u << 20, 2},     /* two query tokens, up_project */
        {200, 2, 1, 0, 0, 0, 0, 7, 9, 7, ~0ull, 1},      /* values outside the enums */
        {5, 140, 1, 1, 1, 0, 0, 1, 0, 0, 300, 1},        /* ids past 127 */
        {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},            /* the empty message */
        {2, 1, 1, 0, 0, 0, 0, -1, -5, -2, 12, -3},       /* negative enum and shape */
        {7, 3, 1, 1, 1, 0, 0, 1, 0, 1, 77, 1},           /* given lists, return_pages, HEADS */
    };
    memset(r, 0, sizeof *r);
    attnd__v1__attend_request__init(&r->m);
    attnd__v1__tensor__init(&r->q);
    attnd__v1__tensor__init(&r->kv);
    r->m.layer = v[i].layer;
    r->m.n_session_ids = v[i].n;
    r->m.session_ids = r->ids;
    for (uint32_t k = 0; k < v[i].n; k++) {
        for (int b = 0; b < 16; b++)
            r->id_bytes[k][b] = (uint8_t)(k * 31 + b * 7 + i);
        r->ids[k].len = 16;
        r->ids[k].data = r->id_bytes[k];
        r->pos[k] = (uint64_t)k * 1000u + 300u + (k == 3 ? (1ull << 62) : 0);
    }
    for (size_t k = 0; k < sizeof r->q_data; k++)
        r->q_data[k] = (uint8_t)(k * 13 + i);
    for (size_t k = 0; k < sizeof r->kv_data; k++)
        r->kv_data[k] = (uint8_t)(k * 7 + 3 * i);
    if (v[i].q) {
        int64_t sh[4] = {v[i].n, v[i].s, 4, 6};
        memcpy(r->q_shape, sh, sizeof sh);
        r->q.dtype = (Attnd__V1__DType)v[i].dtype;
        r->q.n_shape = 4;
        r->q.shape = r->q_shape;
        r->q.data.len = 1 + (size_t)(i * 97) % sizeof r->q_data;
        r->q.data.data = r->q_data;
        r->m.q = &r->q;
    }
    if (v[i].kv) {
        int64_t sh[3] = {v[i].n, v[i].s, 6};
        memcpy(r->kv_shape, sh, sizeof sh);
        r->kv.dtype = (Attnd__V1__DType)v[i].dtype;
        r->kv.n_shape = 3;
        r->kv.shape = r->kv_shape;
        r->kv.data.len = 10 + (size_t)i;
        r->kv.data.data = r->kv_data;
        r->m.new_kv = &r->kv;
    }
    if (v[i].pos) {
        r->m.n_positions = v[i].n;
        r->m.positions = r->pos;
    }
    r->m.return_lse = v[i].lse;
    r->m.up_project = v[i].up;
    r->m.q_form = (Attnd__V1__QForm)v[i].q_form;
    r->m.out_dtype = (Attnd__V1__DType)v[i].out_dtype;
    r->m.request_id = v[i].request_id;
    if (i == 7) { /* sparse: 2 groups of 3 sessions, large and small values */
        static const uint32_t ip[7] = {0, 1, 1, 3, 4, 6, 6};
        static const uint64_t ix[6] = {5, 0, 300, 1ull << 40, 2, 129};
        memcpy(r->given_indptr, ip, sizeof ip);
        memcpy(r->given_idx, ix, sizeof ix);
        r->m.given_groups = 2;
        r->m.n_given_indptr = 7;
        r->m.given_indptr = r->given_indptr;
        r->m.n_given_idx = 6;
        r->m.given_idx = r->given_idx;
        r->m.return_pages = 1;
    }
}

/* Sample i packed by protobuf-c; the caller frees. */
static inline uint8_t *ws_request_packed(int i, size_t *len_p)
{
    ws_request *r = malloc(sizeof *r);
    ws_request_make(r, i);
    size_t n = attnd__v1__attend_request__get_packed_size(&r->m);
    uint8_t *b = malloc(n ? n : 1);
    attnd__v1__attend_request__pack(&r->m, b);
    free(r);
    *len_p = n;
    return b;
}

/* A reply packed by protobuf-c: out of dtype dt, shape [b, s, h, d], with
 * or without lse and request id. */
static inline uint8_t *ws_reply_packed(int dt, int64_t b, int64_t s, int64_t h, int64_t d,
                                       int lse, uint64_t request_id, size_t *len_p)
{
    Attnd__V1__AttendResponse m = ATTND__V1__ATTEND_RESPONSE__INIT;
    Attnd__V1__Tensor out = ATTND__V1__TENSOR__INIT, l = ATTND__V1__TENSOR__INIT;
    int64_t osh[4] = {b, s, h, d}, lsh[3] = {b, s, h};
    size_t es = dt == 3 ? 4 : 2, n_out = (size_t)(b * s * h * d), n_l = (size_t)(b * s * h);
    uint8_t *od = malloc(n_out * es + 1), *ld = malloc(n_l * 4 + 1);
    for (size_t k = 0; k < n_out * es; k++)
        od[k] = (uint8_t)(k * 5 + 1);
    for (size_t k = 0; k < n_l * 4; k++)
        ld[k] = (uint8_t)(k * 3 + 2);
    out.dtype = (Attnd__V1__DType)dt;
    out.n_shape = 4;
    out.shape = osh;
    out.data.len = n_out * es;
    out.data.data = od;
    l.dtype = ATTND__V1__DTYPE__DTYPE_F32;
    l.n_shape = 3;
    l.shape = lsh;
    l.data.len = n_l * 4;
    l.data.data = ld;
    m.request_id = request_id;
    m.out = &out;
    m.lse = lse ? &l : NULL;
    size_t n = attnd__v1__attend_response__get_packed_size(&m);
    uint8_t *buf = malloc(n);
    attnd__v1__attend_response__pack(&m, buf);
    free(od);
    free(ld);
    *len_p = n;
    return buf;
}

#endif /* ATTND_WIRE_SAMPLES_H */
