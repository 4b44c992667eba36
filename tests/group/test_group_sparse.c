/* Sparse policies on worker groups (attnd_group.h: what each sharding mode
 * gives a rank). Head sharding keeps a GQA session's per-KV-head selection
 * whole on the rank that holds the head, so a group with topk-pages equals
 * a lone worker with the same policy; sequence sharding with every page
 * selected equals dense attention; a streaming session's pages stay
 * bounded on every rank (given indices and return_pages:
 * test_group_given.c). Real ranks on loopback, outputs compared with a
 * lone worker fed the same requests. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "group_testutil.h"

#define B 2

typedef struct pair {
    gt_group g;
    cu_server lone;
    attnd_client *ref;
    attnd_model_info m;
    attnd_session_id ids_g[B], ids_r[B];
    uint64_t len[B][8];
    uint64_t rng;
} pair;

static float unif(pair *p)
{
    p->rng ^= p->rng >> 12, p->rng ^= p->rng << 25, p->rng ^= p->rng >> 27;
    return (float)((double)((p->rng * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0) * 2 - 1;
}

/* A group of n ranks and a lone worker with the same flags; B sessions
 * with policy pol (NULL: dense) on each. */
static void pair_open(pair *p, int n, const char *const *flags, const attnd_sparse_policy *pol,
                      const attnd_sparse_policy *ref_pol)
{
    attnd_error err;
    memset(p, 0, sizeof *p);
    p->rng = 0x9E3779B97F4A7C15ull;
    const char *lone_flags[32];
    int k = 0;
    for (int i = 0; flags[i] && k < 31; i++) { /* the group flags stop at --shard */
        if (strcmp(flags[i], "--shard") == 0)
            break;
        lone_flags[k++] = flags[i];
    }
    lone_flags[k] = NULL;
    ck_assert_int_eq(gt_group_start(&p->g, n, flags), 0);
    ck_assert_int_eq(cu_server_start(&p->lone, lone_flags), 0);
    p->ref = gt_connect(&p->lone);
    for (int i = 0; i < B; i++) {
        ck_assert_msg(attnd_client_create_session_policy(p->g.c[0], "", 8000, pol, NULL, 0,
                                                         &p->ids_g[i], &p->m, &err) == ATTND_OK,
                      "group: %s", err.msg);
        ck_assert_msg(attnd_client_create_session_policy(p->ref, "", 8000, ref_pol, NULL, 0,
                                                         &p->ids_r[i], NULL, &err) == ATTND_OK,
                      "lone: %s", err.msg);
    }
}

static void pair_close(pair *p)
{
    attnd_client_destroy(p->ref);
    ck_assert_int_eq(cu_server_stop(&p->lone), 0);
    ck_assert_int_eq(gt_group_stop(&p->g), 0);
}

/* T tokens of the same random KV into every layer of both sets. */
static void pair_prefill(pair *p, uint32_t T)
{
    const uint32_t e = p->m.kv_token_elems;
    float *kv = malloc(sizeof(float) * T * e);
    attnd_error err;
    for (int i = 0; i < B; i++)
        for (uint32_t l = 0; l < p->m.n_layers; l++) {
            for (size_t k = 0; k < (size_t)T * e; k++)
                kv[k] = unif(p);
            for (uint32_t s = 0; s < T; s += 1000) {
                uint32_t c = T - s < 1000 ? T - s : 1000;
                attnd_kv_chunk ch = {.session = p->ids_g[i], .layer = l, .start = p->len[i][l] + s,
                                     .n_tokens = c, .kv_token_elems = e,
                                     .dtype = ATTND_DTYPE_F32, .data = kv + (size_t)s * e};
                ck_assert_msg(attnd_client_append_kv(p->g.c[1 % p->g.n], &ch, 1, NULL, &err) ==
                                  ATTND_OK, "%s", err.msg);
                ch.session = p->ids_r[i];
                ck_assert_msg(attnd_client_append_kv(p->ref, &ch, 1, NULL, &err) == ATTND_OK, "%s",
                              err.msg);
            }
            p->len[i][l] += T;
        }
    free(kv);
}

/* One Attend of S query tokens (with S new entries) of layer l through
 * the group (rank `leader`) and the lone worker; the worst row error. */
static double pair_step(pair *p, uint32_t l, uint32_t S, int leader)
{
    const attnd_model_info *m = &p->m;
    const size_t rows = (size_t)B * S * m->n_q_heads;
    float *q = malloc(sizeof(float) * rows * m->d_k);
    float *kv = malloc(sizeof(float) * B * S * m->kv_token_elems);
    float *out = malloc(sizeof(float) * rows * m->d_v), *rout = malloc(sizeof(float) * rows * m->d_v);
    uint64_t pos[B];
    attnd_error err;
    for (size_t k = 0; k < rows * m->d_k; k++)
        q[k] = unif(p);
    for (size_t k = 0; k < (size_t)B * S * m->kv_token_elems; k++)
        kv[k] = unif(p);
    for (int i = 0; i < B; i++)
        pos[i] = p->len[i][l];
    attnd_attend_args a = {
        .layer = l, .n_seqs = B, .sessions = p->ids_g,
        .q = {ATTND_DTYPE_F32, 4, {B, S, m->n_q_heads, m->d_k}, q},
        .new_kv = {ATTND_DTYPE_F32, 5, {B, S, 2, m->n_kv_heads, m->head_dim}, kv},
        .positions = pos, .out = out, .out_capacity = sizeof(float) * rows * m->d_v,
    };
    ck_assert_msg(attnd_client_attend(p->g.c[leader], &a, &err) == ATTND_OK, "group: %s", err.msg);
    a.sessions = p->ids_r;
    a.out = rout;
    ck_assert_msg(attnd_client_attend(p->ref, &a, &err) == ATTND_OK, "lone: %s", err.msg);
    for (int i = 0; i < B; i++)
        p->len[i][l] += S;
    double e = gt_max_row_err(out, rout, rows, m->d_v);
    free(q);
    free(kv);
    free(out);
    free(rout);
    return e;
}

/* Head sharding: each rank holds whole KV heads, selects for them exactly
 * as a lone worker does: the same pages, the same outputs. */
START_TEST(test_topk_pages_on_head_sharded_ranks_equals_a_lone_worker)
{
    const char *flags[] = {"--model", "tiny-gqa", "--kv-dtype", "f32", "--page-size", "16",
                           "--threads", "2", "--kernel-threads", "1", "--shard", "head", NULL};
    attnd_sparse_policy pol = {.kind = ATTND_SPARSE_TOPK_PAGES, .sink = 16,
                               .topk_fraction = 0.2f};
    pair p;
    pair_open(&p, 2, flags, &pol, &pol);
    pair_prefill(&p, 700);
    double worst = 0;
    for (int k = 0; k < 12; k++)
        for (uint32_t l = 0; l < p.m.n_layers; l++) {
            double e = pair_step(&p, l, k % 4 == 3 ? 3 : 1, (int)((k + l) % 2));
            worst = e > worst ? e : worst;
        }
    ck_assert_msg(worst <= 1e-5, "max relative error %g", worst);
    pair_close(&p);
}
END_TEST

/* Sequence sharding with every page selected: the dense result (the
 * selection and the multi-token causal rule on each rank's share). */
START_TEST(test_topk_pages_of_every_page_on_sequence_sharded_ranks_equals_dense)
{
    const char *flags[] = {"--model", "tiny-gqa", "--kv-dtype", "f32", "--page-size", "8",
                           "--threads", "2", "--kernel-threads", "1", "--shard", "sequence",
                           NULL};
    attnd_sparse_policy pol = {.kind = ATTND_SPARSE_TOPK_PAGES, .sink = 8, .topk_pages = 100000};
    pair p;
    pair_open(&p, 2, flags, &pol, NULL);
    pair_prefill(&p, 333);
    double worst = 0;
    for (int k = 0; k < 8; k++)
        for (uint32_t l = 0; l < p.m.n_layers; l++) {
            double e = pair_step(&p, l, k % 4 == 1 ? 3 : 1, (int)((k + l) % 2));
            worst = e > worst ? e : worst;
        }
    ck_assert_msg(worst <= 1e-5, "max relative error %g", worst);
    pair_close(&p);
}
END_TEST

/* Streaming under sequence sharding: every rank keeps its share of sink
 * and window, whatever the length. */
START_TEST(test_streaming_on_sequence_sharded_ranks_keeps_every_rank_bounded)
{
    const char *flags[] = {"--model", "tiny-gqa", "--page-size", "16", "--threads", "2",
                           "--kernel-threads", "1", "--shard", "sequence", NULL};
    attnd_sparse_policy pol = {.kind = ATTND_SPARSE_STREAMING, .sink = 32, .window = 256};
    pair p;
    attnd_error err;
    pair_open(&p, 2, flags, &pol, &pol);
    pair_prefill(&p, 6000);
    for (int k = 0; k < 4; k++)
        pair_step(&p, 0, 1, k % 2);
    /* a rank: 1 sink page (of 2 global), a window of 17 global pages /
     * 2 + 1 + the partial: at most 12 pages per layer and session */
    for (int r = 0; r < 2; r++) {
        attnd_stats st;
        ck_assert_int_eq(attnd_client_get_stats(p.g.c[r], &st, NULL, &err), ATTND_OK);
        ck_assert_msg(st.pages_used <= (uint64_t)B * p.m.n_layers * 12,
                      "rank %d holds %llu pages", r, (unsigned long long)st.pages_used);
        ck_assert_uint_gt(st.pages_evicted, 0);
    }
    pair_close(&p);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("group_sparse");
    TCase *tc = tcase_create("sparse");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_topk_pages_on_head_sharded_ranks_equals_a_lone_worker);
    tcase_add_test(tc, test_topk_pages_of_every_page_on_sequence_sharded_ranks_equals_dense);
    tcase_add_test(tc, test_streaming_on_sequence_sharded_ranks_keeps_every_rank_bounded);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
