/* Test helpers of sparse attention through libattnd (client_sparse.h). */
#include <check.h>

#include "client_sparse.h"

void cu_open_policy(cu_seqs *s, attnd_client *c, const attnd_sparse_policy *p, uint32_t n)
{
    attnd_error err;
    attnd_sparse_rule rule = {.layer_begin = 1, .layer_end = 3,
                              .policy = {.kind = ATTND_SPARSE_GIVEN_PAGES}};
    cu_must_open(s, c, n, ATTND_DTYPE_BF16);
    for (uint32_t i = 0; i < s->n; i++) {
        ck_assert_int_eq(attnd_client_close_session(c, &s->ids[i], &err), ATTND_OK);
        ck_assert_msg(attnd_client_create_session_policy(c, "", 0, p, &rule, 1, &s->ids[i], NULL,
                                                         &err) == ATTND_OK, "%s", err.msg);
    }
}

void cu_check_chosen(cu_seqs *s, const cu_step *st, const attnd_sparse_args *sp, uint32_t layer,
                     attnd_refcheck_result *res)
{
    const attnd_model_info *m = &s->m;
    const uint64_t ps = m->page_size;
    const uint32_t hkv = m->n_kv_heads, G = m->n_q_heads / hkv;
    const size_t entry = (size_t)m->kv_token_elems * attnd_dtype_size(m->kv_dtype);
    const size_t qrow = (size_t)m->n_q_heads * m->d_k * attnd_dtype_size(s->dt);
    const size_t orow = (size_t)m->n_q_heads * m->d_v * attnd_dtype_size(s->dt);
    for (uint32_t i = 0; i < st->a.n_seqs; i++) {
        const attnd_refcheck_seq *src =
            &s->rc.seqs[(size_t)(st->first + i) * m->n_layers + layer];
        for (uint32_t h = 0; h < hkv; h++) {
            uint32_t g = sp->chosen_groups == 1 ? 0 : h;
            uint32_t k = i * sp->chosen_groups + g;
            attnd_refcheck one;
            ck_assert_int_eq(attnd_refcheck_init(&one, m, 1), 0);
            uint64_t n = 0;
            for (uint32_t j = sp->chosen_indptr[k]; j < sp->chosen_indptr[k + 1]; j++) {
                uint64_t t0 = sp->chosen[j] * ps, t1 = t0 + ps < src->len ? t0 + ps : src->len;
                ck_assert_int_eq(attnd_refcheck_append(&one, 0, layer, t1 - t0, m->kv_dtype,
                                                       src->data + t0 * entry), 0);
                n += t1 - t0;
            }
            ck_assert_int_eq(attnd_refcheck_token(&one, 0, layer, n, s->dt,
                                                  (const char *)st->q + i * qrow, s->dt,
                                                  (const char *)st->out + i * orow, NULL,
                                                  h * G, (h + 1) * G, res), 0);
            attnd_refcheck_cleanup(&one);
        }
    }
}
