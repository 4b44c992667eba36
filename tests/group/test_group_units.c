/* The worker group's pure parts, without processes: page placement and the
 * per-rank slices (group_place.c), the normalized Walsh-Hadamard
 * rotation (kernels/cpu/fwht.c) against its float64 definition, the
 * rendezvous card's encoding (group_rdv.c) against garbage, and the group
 * secret's proofs (group_auth.c). Inputs are fresh random sizes and data
 * on every run (ATTND_TEST_SEED replays). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "group_int.h"
#include "testutil.h"

static tu_rng rng;

static attnd_group *fake_group(int32_t N, int32_t me, int32_t P, const char *model,
                               attnd_group_mode mode)
{
    attnd_group *g = calloc(1, sizeof *g);
    attnd_error err;
    ck_assert_ptr_nonnull(g);
    g->cfg.size = N;
    g->cfg.rank = me;
    g->cfg.page_size = P;
    g->cfg.mode = mode;
    g->cfg.mu = 1.0f;
    g->cfg.model = *attnd_model_find(model);
    ck_assert_int_eq(attnd_group_shard_model(&g->cfg, &g->shard, &err), ATTND_OK);
    g->N = N;
    g->me = me;
    g->hq = g->cfg.model.n_q_heads;
    g->d_k = attnd_model_d_k(&g->cfg.model);
    g->d_v = attnd_model_d_v(&g->cfg.model);
    g->kv_elems = attnd_model_kv_token_elems(&g->cfg.model);
    g->hq_r = g->shard.n_q_heads;
    g->d_k_r = attnd_model_d_k(&g->shard);
    g->d_v_r = attnd_model_d_v(&g->shard);
    g->kv_elems_r = attnd_model_kv_token_elems(&g->shard);
    return g;
}

START_TEST(test_every_token_has_one_owner_and_rank_counts_add_up)
{
    for (int iter = 0; iter < 200; iter++) {
        int32_t N = (int32_t)tu_int(&rng, 1, 8), P = (int32_t)tu_int(&rng, 1, 20);
        attnd_group *g = fake_group(N, 0, P, "tiny-gqa", ATTND_GROUP_SEQUENCE);
        uint64_t x = (uint64_t)tu_int(&rng, 0, 3000), total = 0;
        for (int32_t r = 0; r < N; r++) {
            uint64_t brute = 0;
            for (uint64_t t = 0; t < x; t++)
                brute += attnd__gplace_owner(g, t) == r;
            ck_assert_uint_eq(attnd__gplace_count(g, r, x), brute);
            total += brute;
        }
        ck_assert_uint_eq(total, x);
        for (uint64_t t = 0; t < x; t++)
            ck_assert_int_eq(attnd__gplace_owner(g, t), (int32_t)((t / (uint64_t)P) % N));
        free(g);
    }
}
END_TEST

START_TEST(test_gather_takes_each_ranks_tokens_in_order)
{
    for (int iter = 0; iter < 100; iter++) {
        int32_t N = (int32_t)tu_int(&rng, 1, 5), P = (int32_t)tu_int(&rng, 1, 9);
        attnd_group *g = fake_group(N, 0, P, "tiny-gqa", ATTND_GROUP_SEQUENCE);
        uint64_t start = (uint64_t)tu_int(&rng, 0, 100), n = (uint64_t)tu_int(&rng, 0, 70);
        uint64_t *src = malloc(sizeof *src * (n + 1)), *dst = malloc(sizeof *dst * (n + 1));
        uint64_t seen = 0;
        for (uint64_t i = 0; i < n; i++)
            src[i] = start + i;
        for (int32_t r = 0; r < N; r++) {
            uint64_t k = attnd__gplace_gather_seq(g, r, start, n, sizeof *src, src, dst);
            ck_assert_uint_eq(k, attnd__gplace_count(g, r, start + n) -
                                     attnd__gplace_count(g, r, start));
            for (uint64_t i = 0; i < k; i++) {
                ck_assert_int_eq(attnd__gplace_owner(g, dst[i]), r);
                if (i)
                    ck_assert_uint_gt(dst[i], dst[i - 1]);
            }
            seen += k;
        }
        ck_assert_uint_eq(seen, n);
        free(src);
        free(dst);
        free(g);
    }
}
END_TEST

/* Head mode: the ranks' query and KV slices put back together are the
 * whole tensors. */
START_TEST(test_head_slices_tile_queries_and_kv)
{
    const int32_t N = 2;
    attnd_group *g0 = fake_group(N, 0, 8, "tiny-gqa", ATTND_GROUP_HEAD);
    const size_t rows = (size_t)tu_int(&rng, 1, 6), H = (size_t)g0->hq, D = (size_t)g0->d_k;
    const size_t Hkv = (size_t)g0->cfg.model.n_kv_heads;
    float *q = malloc(sizeof(float) * rows * H * D), *qs = malloc(sizeof(float) * rows * H * D);
    float *kv = malloc(sizeof(float) * rows * 2 * Hkv * D);
    float *ks = malloc(sizeof(float) * rows * 2 * Hkv * D);
    for (size_t i = 0; i < rows * H * D; i++)
        q[i] = (float)tu_normal(&rng);
    for (size_t i = 0; i < rows * 2 * Hkv * D; i++)
        kv[i] = (float)tu_normal(&rng);
    for (int32_t r = 0; r < N; r++) {
        attnd__gplace_slice_q(g0, r, rows, ATTND_DTYPE_F32, q, qs);
        attnd__gplace_slice_kv(g0, r, rows, ATTND_DTYPE_F32, kv, ks);
        size_t hr = H / N, kr = Hkv / N;
        for (size_t i = 0; i < rows; i++) {
            ck_assert(memcmp(qs + i * hr * D, q + (i * H + r * hr) * D, hr * D * 4) == 0);
            for (size_t k = 0; k < 2; k++)
                ck_assert(memcmp(ks + (i * 2 + k) * kr * D, kv + ((i * 2 + k) * Hkv + r * kr) * D,
                                 kr * D * 4) == 0);
        }
    }
    free(q);
    free(qs);
    free(kv);
    free(ks);
    free(g0);
}
END_TEST

START_TEST(test_fwht_is_the_normalized_hadamard_and_its_own_inverse)
{
    for (int32_t n = 1; n <= 512; n *= 2) {
        float *x = malloc(sizeof(float) * (size_t)n), *y = malloc(sizeof(float) * (size_t)n);
        double *ref = malloc(sizeof(double) * (size_t)n);
        for (int32_t i = 0; i < n; i++)
            x[i] = (float)tu_normal(&rng);
        memcpy(y, x, sizeof(float) * (size_t)n);
        attnd_kernel_fwht_f32(y, n);
        for (int32_t i = 0; i < n; i++) {
            double s = 0.0;
            for (int32_t j = 0; j < n; j++)
                s += (__builtin_popcount((unsigned)(i & j)) & 1 ? -1.0 : 1.0) * x[j];
            ref[i] = s / sqrt((double)n);
        }
        ck_assert_double_le(tu_rel_err_f32(y, ref, (size_t)n), 1e-6);
        attnd_kernel_fwht_f32(y, n);
        for (int32_t i = 0; i < n; i++)
            ref[i] = x[i];
        ck_assert_double_le(tu_rel_err_f32(y, ref, (size_t)n), 1e-6);
        free(x);
        free(y);
        free(ref);
    }
    ck_assert(!attnd_kernel_fwht_supported(48));
    ck_assert(attnd_kernel_fwht_supported(512));
}
END_TEST

START_TEST(test_shard_settings_that_do_not_divide_are_invalid_argument)
{
    attnd_group_config c;
    attnd_model_spec s;
    attnd_error err;
    memset(&c, 0, sizeof c);
    c.size = 3;
    c.mu = 1.0f;
    c.model = *attnd_model_find("tiny-gqa"); /* 2 KV heads */
    c.mode = ATTND_GROUP_HEAD;
    ck_assert_int_eq(attnd_group_shard_model(&c, &s, &err), ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "--shard head"));
    c.mode = ATTND_GROUP_LATENT; /* GQA cannot be latent-sharded */
    ck_assert_int_eq(attnd_group_shard_model(&c, &s, &err), ATTND_ERR_INVALID_ARGUMENT);
    c.model = *attnd_model_find("tiny-mla");
    c.size = 4;
    c.rank = 4;
    ck_assert_int_eq(attnd_group_shard_model(&c, &s, &err), ATTND_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(err.msg, "--rank"));
    c.rank = 1;
    ck_assert_int_eq(attnd_group_shard_model(&c, &s, &err), ATTND_OK);
    ck_assert_int_eq(s.d_latent, 16);
    ck_assert_int_eq(s.d_rope, 16);
}
END_TEST

/* ---- the rendezvous card ---------------------------------------------------------------- */

static attnd__gcard random_card(unsigned char *payload, uint32_t n)
{
    attnd__gcard c;
    memset(&c, 0, sizeof c);
    c.version = ATTND__GCARD_VERSION;
    c.kind = (uint16_t)tu_int(&rng, ATTND__GCARD_HELLO, ATTND__GCARD_ANSWER);
    c.rank = (int32_t)tu_int(&rng, 0, ATTND_GROUP_MAX_RANKS - 1);
    c.size = (int32_t)tu_int(&rng, 1, ATTND_GROUP_MAX_RANKS);
    c.mode = (uint32_t)tu_int(&rng, 0, 2);
    c.page_size = (uint32_t)tu_int(&rng, 1, 4096);
    c.n_layers = (uint32_t)tu_int(&rng, 1, 128);
    c.n_q_heads = (uint32_t)tu_int(&rng, 1, 256);
    c.kv_elems = (uint32_t)tu_int(&rng, 1, 100000);
    c.kv_dtype = (uint32_t)tu_int(&rng, 1, 3);
    c.status = -(int32_t)tu_int(&rng, 0, 16);
    c.token = tu_next(&rng);
    for (int i = 0; i < 16; i++)
        c.nonce[i] = (uint8_t)tu_next(&rng);
    snprintf(c.host.boot_id, sizeof c.host.boot_id, "%016llx-%08x",
             (unsigned long long)tu_next(&rng), (unsigned)tu_next(&rng));
    c.host.pid_ns = tu_next(&rng);
    c.host.ipc_ns = tu_next(&rng);
    c.host.net_ns = tu_next(&rng);
    c.host.uid = (uint32_t)tu_next(&rng);
    c.host.pid = (int32_t)tu_int(&rng, 1, 1 << 22);
    c.shm_ok = (uint32_t)tu_int(&rng, 0, 1);
    c.payload_len = n;
    c.shm_len = (uint32_t)tu_int(&rng, 0, n);
    for (uint32_t i = 0; i < n; i++)
        payload[i] = (unsigned char)tu_next(&rng);
    return c;
}

START_TEST(test_a_card_decodes_to_what_was_encoded_and_needs_its_whole_header)
{
    static unsigned char payload[ATTND_UCXW_ADDR_MAX], wire[ATTND__GCARD_HDR + ATTND_UCXW_ADDR_MAX];
    for (int trial = 0; trial < 100; trial++) {
        uint32_t n = (uint32_t)tu_int(&rng, 0, ATTND_UCXW_ADDR_MAX);
        attnd__gcard c = random_card(payload, n), d;
        size_t len = attnd__gcard_encode(&c, payload, wire);
        ck_assert_uint_eq(len, ATTND__GCARD_HDR + n);
        for (size_t have = 0; have < ATTND__GCARD_HDR; have += 1 + (size_t)tu_int(&rng, 0, 40))
            ck_assert_int_eq(attnd__gcard_decode(wire, have, &d), 0);
        ck_assert_int_eq(attnd__gcard_decode(wire, len, &d), 1);
        ck_assert_int_eq(memcmp(&c, &d, sizeof c), 0);
        ck_assert_int_eq(memcmp(wire + ATTND__GCARD_HDR, payload, n), 0);
    }
}
END_TEST

/* A CHALLENGE carries nothing and a PROOF exactly one MAC: any other
 * length is refused before a byte of it is read. */
START_TEST(test_a_challenge_or_proof_of_another_length_is_refused)
{
    unsigned char w[ATTND__GCARD_HDR];
    attnd__gcard d;
    const struct { uint16_t kind; uint32_t len; int ok; } cases[] = {
        {ATTND__GCARD_CHALLENGE, 0, 1},
        {ATTND__GCARD_CHALLENGE, 1, 0},
        {ATTND__GCARD_CHALLENGE, ATTND__GCARD_MAC, 0},
        {ATTND__GCARD_PROOF, ATTND__GCARD_MAC, 1},
        {ATTND__GCARD_PROOF, 0, 0},
        {ATTND__GCARD_PROOF, ATTND__GCARD_MAC - 1, 0},
        {ATTND__GCARD_PROOF, ATTND__GCARD_MAC + 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        attnd__gcard_bare(cases[i].kind, 3, 0, cases[i].len, w);
        ck_assert_msg(attnd__gcard_decode(w, sizeof w, &d) == (cases[i].ok ? 1 : -1),
                      "case %zu", i);
        if (cases[i].ok) { /* bare: nothing but kind, rank and a nonce */
            ck_assert_uint_eq(d.kind, cases[i].kind);
            ck_assert_int_eq(d.rank, 3);
            ck_assert_uint_eq(d.token, 0);
            ck_assert_int_eq(d.size, 0);
            ck_assert_uint_eq(d.host.pid_ns, 0);
            ck_assert_uint_eq(d.payload_len, cases[i].len);
        }
    }
}
END_TEST

/* A proof verifies only for its own side, under its own secret, over the
 * very headers it was made for: another secret, the other side's label,
 * or any one byte of either header changed, and it fails. */
START_TEST(test_a_proof_verifies_only_for_its_side_secret_and_headers)
{
    attnd_group *g = fake_group(2, 0, 16, "tiny-gqa", ATTND_GROUP_SEQUENCE);
    attnd_group *h = fake_group(2, 1, 16, "tiny-gqa", ATTND_GROUP_SEQUENCE);
    unsigned char th[2 * ATTND__GCARD_HDR], mac[ATTND__GCARD_MAC];

    g->cfg.has_secret = h->cfg.has_secret = 1;
    for (size_t i = 0; i < sizeof g->cfg.secret; i++)
        g->cfg.secret[i] = h->cfg.secret[i] = (uint8_t)tu_next(&rng);
    attnd__gcard_bare(ATTND__GCARD_CHALLENGE, 1, 0, 0, th);
    attnd__gcard_bare(ATTND__GCARD_PROOF, 0, 0, ATTND__GCARD_MAC, th + ATTND__GCARD_HDR);
    for (int side = 0; side < 2; side++) {
        ck_assert_int_eq(attnd__grdv_mac(g, side, th, mac), 0);
        ck_assert(attnd__grdv_mac_ok(h, side, th, mac));  /* the same secret elsewhere */
        ck_assert(!attnd__grdv_mac_ok(h, !side, th, mac)); /* reflected */
        for (int trial = 0; trial < 64; trial++) {
            size_t at = (size_t)tu_int(&rng, 0, 2 * ATTND__GCARD_HDR - 1);
            unsigned char bit = (unsigned char)(1u << tu_int(&rng, 0, 7));
            th[at] ^= bit;
            ck_assert_msg(!attnd__grdv_mac_ok(h, side, th, mac), "byte %zu changed", at);
            th[at] ^= bit;
        }
        h->cfg.secret[0] ^= 1; /* another secret */
        ck_assert(!attnd__grdv_mac_ok(h, side, th, mac));
        h->cfg.secret[0] ^= 1;
    }
    free(g);
    free(h);
}
END_TEST

START_TEST(test_garbage_and_out_of_range_cards_are_refused)
{
    static unsigned char payload[64], wire[ATTND__GCARD_HDR + 64], junk[ATTND__GCARD_HDR];
    attnd__gcard c = random_card(payload, 64), d;
    attnd__gcard_encode(&c, payload, wire);

    memset(junk, 0, sizeof junk); /* 17 zero bytes, and more */
    ck_assert_int_eq(attnd__gcard_decode(junk, 17, &d), -1);
    ck_assert_int_eq(attnd__gcard_decode((const unsigned char *)"GET / HTTP/1.1\r\n", 16, &d), -1);
    ck_assert_int_eq(attnd__gcard_decode(wire, 3, &d), 0); /* "ATT": may still be one */
    for (int trial = 0; trial < 100; trial++) {
        for (size_t i = 0; i < sizeof junk; i++)
            junk[i] = (unsigned char)tu_next(&rng);
        ck_assert_int_eq(attnd__gcard_decode(junk, sizeof junk, &d), -1);
    }
    /* a header that lies: each field out of range on its own */
    struct { size_t off; uint32_t v; } bad[] = {
        {8, 1},                 /* version 1 (before the group secret) */
        {8, 2},                 /* version 2 (before peer workers) */
        {8, 4},                 /* version 4 */
        {10, 0},                /* kind 0 */
        {10, 5},                /* kind 5 */
        {12, ATTND_GROUP_MAX_RANKS}, /* rank */
        {12, 0xffffffffu},      /* rank -1 */
        {140, ATTND_UCXW_ADDR_MAX + 1}, /* payload longer than an address may be */
        {140, 0xffffffffu},
        {152, 65},              /* a peer worker address longer than the payload */
        {152, 0xffffffffu},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        unsigned char w[sizeof wire];
        memcpy(w, wire, sizeof w);
        if (bad[i].off == 8 || bad[i].off == 10) {
            w[bad[i].off] = (unsigned char)bad[i].v;
            w[bad[i].off + 1] = 0;
        } else {
            for (int b = 0; b < 4; b++)
                w[bad[i].off + (size_t)b] = (unsigned char)(bad[i].v >> (8 * b));
        }
        ck_assert_msg(attnd__gcard_decode(w, sizeof w, &d) == -1, "case %zu decoded", i);
    }
}
END_TEST

int main(void)
{
    tu_rng_init(&rng, "group units");
    Suite *s = suite_create("group_units");
    TCase *tc = tcase_create("place");
    tcase_add_test(tc, test_every_token_has_one_owner_and_rank_counts_add_up);
    tcase_add_test(tc, test_gather_takes_each_ranks_tokens_in_order);
    tcase_add_test(tc, test_head_slices_tile_queries_and_kv);
    tcase_add_test(tc, test_fwht_is_the_normalized_hadamard_and_its_own_inverse);
    tcase_add_test(tc, test_shard_settings_that_do_not_divide_are_invalid_argument);
    tcase_add_test(tc, test_a_card_decodes_to_what_was_encoded_and_needs_its_whole_header);
    tcase_add_test(tc, test_garbage_and_out_of_range_cards_are_refused);
    tcase_add_test(tc, test_a_challenge_or_proof_of_another_length_is_refused);
    tcase_add_test(tc, test_a_proof_verifies_only_for_its_side_secret_and_headers);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
