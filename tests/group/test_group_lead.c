/* The group leader's steps (plan, scatter, run-local, combine) end to end:
 * real attnd ranks on loopback, through libattnd.
 *
 * Whoever leads, a request gives the same bits: the leader runs its own
 * share on views of the request (or on slices it gathers itself) while
 * every other rank runs what the leader encoded for it, and the combine
 * takes the ranks in a fixed order. So N copies of one set of sessions,
 * given the same history and the same calls, each copy's calls led by a
 * different rank, must answer bit-identical outputs and LSEs -- with new
 * KV, multi-token queries whose new entries cross several pages of a rank,
 * in every sharding mode. (test_group.c checks the values against a lone
 * worker and the TPLA formula.)
 *
 * The server's timing split counts the group call once: its five intervals
 * (queue, validate, kernel = the leader's own share, fan-out = the rest of
 * the group call, encode) are disjoint parts of the call, so their sum
 * never exceeds the round trip the client measured. This is a sum
 * identity, not a timing bound: reporting the whole group call as kernel
 * and again as fan-out breaks it as soon as that call takes longer than
 * the transport's share of the round trip, which the long context here
 * makes sure of.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "group_testutil.h"
#include "testutil.h"

#define B 2
#define PREFILL 29

static void fill(tu_rng *rng, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(2.0 * tu_unif(rng) - 1.0);
}

static attnd_tensor kv_tensor(const attnd_model_info *m, uint32_t S, const float *kv)
{
    if (m->kind == ATTND_ATTN_MLA)
        return (attnd_tensor){ATTND_DTYPE_F32, 3, {B, S, m->kv_token_elems}, kv};
    return (attnd_tensor){ATTND_DTYPE_F32, 5, {B, S, 2, m->n_kv_heads, m->head_dim}, kv};
}

/* n ranks; copy k of B sessions is created and led by rank k. Every copy
 * gets the same prefill of layer 1 and the same Attend calls (S new
 * tokens each, S = 17 crossing three pages of 8, one call without new
 * KV); each call's out and LSE must equal copy 0's bit for bit. */
static void run_same_bits(int n, const char *const *flags)
{
    static const uint32_t steps[] = {1, 3, 17, 1, 0, 2, 17, 1};
    const uint32_t layer = 1;
    gt_group g;
    tu_rng rng;
    attnd_model_info m;
    attnd_session_id ids[GT_MAX_RANKS][B];
    uint64_t len = 0;
    attnd_error err;

    ck_assert_int_eq(gt_group_start(&g, n, flags), 0);
    tu_rng_init(&rng, "group lead");
    for (int k = 0; k < n; k++)
        for (int i = 0; i < B; i++)
            ck_assert_int_eq(attnd_client_create_session(g.c[k], NULL, 0, &ids[k][i], &m, &err),
                             ATTND_OK);
    const size_t e = m.kv_token_elems, H = m.n_q_heads;
    float *kv = malloc(sizeof(float) * (B * 17 > PREFILL ? B * 17 : PREFILL) * e);
    ck_assert_ptr_nonnull(kv);
    for (int i = 0; i < B; i++) {
        fill(&rng, kv, PREFILL * e);
        for (int k = 0; k < n; k++) {
            attnd_kv_chunk ch = {.session = ids[k][i], .layer = layer, .start = 0,
                                 .n_tokens = PREFILL, .kv_token_elems = (uint32_t)e,
                                 .dtype = ATTND_DTYPE_F32, .data = kv};
            attnd_status st = attnd_client_append_kv(g.c[(k + 1) % n], &ch, 1, NULL, &err);
            ck_assert_msg(st == ATTND_OK, "AppendKV: %s", err.msg);
        }
    }
    len = PREFILL;
    for (size_t t = 0; t < sizeof steps / sizeof steps[0]; t++) {
        const uint32_t S = steps[t] ? steps[t] : 1, with_kv = steps[t] != 0;
        const size_t rows = (size_t)B * S * H;
        float *q = malloc(sizeof(float) * rows * m.d_k);
        float *out = malloc(sizeof(float) * rows * m.d_v * (size_t)n);
        float *lse = malloc(sizeof(float) * rows * (size_t)n);
        ck_assert(q && out && lse);
        fill(&rng, q, rows * m.d_k);
        fill(&rng, kv, B * S * e);
        uint64_t pos[B] = {len, len};
        for (int k = 0; k < n; k++) {
            attnd_attend_args a = {
                .layer = layer,
                .n_seqs = B,
                .sessions = ids[k],
                .q = {ATTND_DTYPE_F32, 4, {B, S, (int64_t)H, m.d_k}, q},
                .positions = with_kv ? pos : NULL,
                .out = out + (size_t)k * rows * m.d_v,
                .out_capacity = sizeof(float) * rows * m.d_v,
                .lse = lse + (size_t)k * rows,
                .lse_capacity = rows,
            };
            if (with_kv)
                a.new_kv = kv_tensor(&m, S, kv);
            attnd_status st = attnd_client_attend(g.c[k], &a, &err);
            ck_assert_msg(st == ATTND_OK, "Attend (S %u, leader %d): %s", S, k, err.msg);
        }
        for (int k = 1; k < n; k++) {
            ck_assert_msg(memcmp(out, out + (size_t)k * rows * m.d_v,
                                 sizeof(float) * rows * m.d_v) == 0,
                          "call %zu (S %u): out led by rank %d differs from rank 0's", t, S, k);
            ck_assert_msg(memcmp(lse, lse + (size_t)k * rows, sizeof(float) * rows) == 0,
                          "call %zu (S %u): LSE led by rank %d differs from rank 0's", t, S, k);
        }
        len += with_kv ? S : 0;
        free(q);
        free(out);
        free(lse);
    }
    free(kv);
    ck_assert_int_eq(gt_group_stop(&g), 0);
}

START_TEST(test_sequence_mode_gives_the_same_bits_whoever_leads_gqa)
{
    const char *flags[] = {"--model", "tiny-gqa", "--page-size", "8", "--threads", "2",
                           "--kernel-threads", "1", "--shard", "sequence", NULL};
    run_same_bits(2, flags);
}
END_TEST

START_TEST(test_sequence_mode_gives_the_same_bits_whoever_leads_mla)
{
    const char *flags[] = {"--model", "tiny-mla", "--page-size", "8", "--threads", "2",
                           "--kernel-threads", "1", "--shard", "sequence", NULL};
    run_same_bits(3, flags);
}
END_TEST

START_TEST(test_head_mode_gives_the_same_bits_whoever_leads)
{
    const char *flags[] = {"--model", "tiny-gqa6", "--page-size", "8", "--threads", "2",
                           "--kernel-threads", "1", "--shard", "head", NULL};
    run_same_bits(3, flags);
}
END_TEST

START_TEST(test_latent_mode_gives_the_same_bits_whoever_leads)
{
    const char *flags[] = {"--model", "tiny-mla", "--page-size", "8", "--threads", "2",
                           "--kernel-threads", "1", "--shard", "latent", "--tpla-rope",
                           "split", "--tpla-mu", "1.5", NULL};
    run_same_bits(4, flags);
}
END_TEST

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* 2 ranks, llama3-8b shapes, 2 sessions of 2048 tokens in layer 0: each
 * group call reads 16 MiB of KV, far longer than the transport's share. */
START_TEST(test_group_timing_adds_up_to_at_most_the_round_trip)
{
    const char *flags[] = {"--model", "llama3-8b", "--kv-memory", "64Mi", "--threads", "2",
                           "--kernel-threads", "1", "--shard", "sequence", NULL};
    enum { T = 2048, CALLS = 40 };
    gt_group g;
    tu_rng rng;
    attnd_model_info m;
    attnd_session_id ids[B];
    attnd_error err;

    ck_assert_int_eq(gt_group_start(&g, 2, flags), 0);
    tu_rng_init(&rng, "group timing");
    for (int i = 0; i < B; i++)
        ck_assert_int_eq(attnd_client_create_session(g.c[0], NULL, 0, &ids[i], &m, &err),
                         ATTND_OK);
    const size_t e = m.kv_token_elems, rows = (size_t)B * m.n_q_heads;
    float *kv = malloc(sizeof(float) * T * e), *q = malloc(sizeof(float) * rows * m.d_k);
    float *out = malloc(sizeof(float) * rows * m.d_v);
    ck_assert(kv && q && out);
    for (int i = 0; i < B; i++) {
        fill(&rng, kv, T * e);
        attnd_kv_chunk ch = {.session = ids[i], .layer = 0, .start = 0, .n_tokens = T,
                             .kv_token_elems = (uint32_t)e, .dtype = ATTND_DTYPE_F32,
                             .data = kv};
        ck_assert_int_eq(attnd_client_append_kv(g.c[1], &ch, 1, NULL, &err), ATTND_OK);
    }
    for (int k = 0; k < CALLS; k++) {
        fill(&rng, q, rows * m.d_k);
        attnd_attend_args a = {.layer = 0, .n_seqs = B, .sessions = ids,
                               .q = {ATTND_DTYPE_F32, 3, {B, m.n_q_heads, m.d_k}, q},
                               .out = out, .out_capacity = sizeof(float) * rows * m.d_v};
        attnd_server_timing tm = {0};
        attnd_call *call = NULL;
        uint64_t t0 = now_ns();
        attnd_status st = attnd_client_attend_async(g.c[k % 2], &a, &call, &err);
        if (st == ATTND_OK)
            st = attnd_call_wait_timed(call, &tm, &err);
        uint64_t rtt = now_ns() - t0;
        ck_assert_msg(st == ATTND_OK, "Attend: %s", err.msg);
        ck_assert_msg(tm.valid, "call %d: no server timing", k);
        /* a group reports both its leader's share and the rest */
        ck_assert_uint_gt(tm.kernel_ns, 0);
        ck_assert_uint_gt(tm.fanout_ns, 0);
        uint64_t srv = tm.queue_ns + tm.validate_ns + tm.kernel_ns + tm.fanout_ns + tm.encode_ns;
        ck_assert_msg(srv <= rtt,
                      "call %d: the server accounts for %llu ns (q %llu v %llu k %llu f %llu "
                      "e %llu) of a %llu ns round trip", k, (unsigned long long)srv,
                      (unsigned long long)tm.queue_ns, (unsigned long long)tm.validate_ns,
                      (unsigned long long)tm.kernel_ns, (unsigned long long)tm.fanout_ns,
                      (unsigned long long)tm.encode_ns, (unsigned long long)rtt);
    }
    free(kv);
    free(q);
    free(out);
    ck_assert_int_eq(gt_group_stop(&g), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("group_lead");
    TCase *tc = tcase_create("group_lead");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_sequence_mode_gives_the_same_bits_whoever_leads_gqa);
    tcase_add_test(tc, test_sequence_mode_gives_the_same_bits_whoever_leads_mla);
    tcase_add_test(tc, test_head_mode_gives_the_same_bits_whoever_leads);
    tcase_add_test(tc, test_latent_mode_gives_the_same_bits_whoever_leads);
    tcase_add_test(tc, test_group_timing_adds_up_to_at_most_the_round_trip);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
