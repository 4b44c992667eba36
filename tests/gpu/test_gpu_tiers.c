/* The KV tiers below a GPU's memory, end to end: `attnd --device cuda:0`
 * with a small HBM KV pool (--kv-memory) and host RAM (--kv-host) or a
 * disk (--kv-dir, also --durable) below it, driven through libattnd; every
 * output checked against the float64 reference of the KV the test sent
 * (tests/tiers/tiers_testutil, tests/client/client_testutil).
 *
 * Shape: llama3-8b (GQA 32/8, head_dim 128, 32 layers: a shape the CUDA
 * kernels take) with pages of 64 tokens (256 KiB; slots of 260 KiB), KV,
 * queries and outputs sent as bf16 / bf16 / float32. Bounds: outputs
 * cu_bound(bf16) normwise per row, LSE 1e-3 (test_gpu_e2e's for bf16
 * queries).
 *
 *   host, disk,    8 sessions of 100 tokens a layer (512 pages) in 128 HBM
 *   chain          pages; decode round-robin (2 sessions a call, every
 *                  layer in order, 2 steps with new KV), so layers go down
 *                  and come back: every output exact, the pool's figures
 *                  show pages below and moved both ways; closing gives
 *                  every page and slot back. chain: --kv-host 8Mi (31
 *                  slots) above --kv-dir: pages go to host RAM first and
 *                  on to disk (slots in DIR/kv.pages name the sessions).
 *   durable        --kv-dir --durable (sync): 6 sessions of 100 tokens in
 *                  256 HBM pages; 6 rounds of kill -9 at a random 2-40 ms
 *                  into a stream of AppendKV streams and Attends with new
 *                  KV, restart on the same directory: the cut call applies
 *                  whole or is FAILED_PRECONDITION, every acknowledged
 *                  token is there (every layer of every session equals the
 *                  reference), then a clean restart the same.
 *   topk-pages     (host, disk, durable, chain) a topk-pages session of 1100
 *                  tokens attended, sent wholly below by other sessions'
 *                  decode, attended again with the same query: the same
 *                  pages chosen (per KV head) and the same output bits,
 *                  each output against the reference over the pages
 *                  reported. Durable: a checkpoint has copied its full
 *                  pages to slots before they go down, so the trip below
 *                  writes none of them (their key bounds must still go
 *                  with them).
 *
 * Every step prints what it did and the tier figures to stderr, and Check
 * prints each test's verdict (CK_VERBOSE): one run tells everything.
 *
 * Exit 77 (skipped) without a usable CUDA device. ATTND_GPU_TIERS_DEVICE=cpu
 * runs the same suite on the CPU backend (the same shapes and checks; a dry
 * run of the test itself on a machine without a GPU).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attnd_cuda.h"
#include "tiers_testutil.h"

enum { T_HOST, T_DISK, T_DURABLE, T_CHAIN };
static const char *const tier_names[] = {"host", "disk", "durable", "chain"};

static char dir[64];
static struct timespec t_start;

static void teardown(void)
{
    cu_teardown();
    tt_rmdir(dir);
    dir[0] = '\0';
}

static double since_start(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)(ts.tv_sec - t_start.tv_sec) + (double)(ts.tv_nsec - t_start.tv_nsec) * 1e-9;
}

#define say(...)                                                \
    do {                                                        \
        fprintf(stderr, "[%7.2f s] ", since_start());           \
        fprintf(stderr, __VA_ARGS__);                           \
        fputc('\n', stderr);                                    \
    } while (0)

static attnd_tier_stats tiers(attnd_client *c, const attnd_session_id *id)
{
    attnd_tier_stats t;
    attnd_error err;
    attnd_error_clear(&err);
    ck_assert_msg(attnd_client_get_tier_stats(c, id, &t, &err) == ATTND_OK, "stats: %s", err.msg);
    return t;
}

static void show(const char *what, const attnd_tier_stats *t)
{
    say("  %s: held %llu of %llu pages; HBM %llu of %llu used; below (%s) %llu of %llu slots "
        "used; moved down %llu, up %llu, prefetched %llu, waits %llu, bad %llu, write "
        "failures %llu; durable %d, checkpoints %llu, recovered %llu, lost %llu",
        what, (unsigned long long)t->pages_held, (unsigned long long)t->pages_capacity,
        (unsigned long long)t->memory_pages_used, (unsigned long long)t->memory_pages_total,
        t->below, (unsigned long long)t->below_slots_used, (unsigned long long)t->below_slots,
        (unsigned long long)t->pages_moved_down, (unsigned long long)t->pages_moved_up,
        (unsigned long long)t->pages_prefetched, (unsigned long long)t->load_waits,
        (unsigned long long)t->pages_bad, (unsigned long long)t->write_failures,
        t->durability, (unsigned long long)t->checkpoints,
        (unsigned long long)t->sessions_recovered, (unsigned long long)t->sessions_lost);
}

/* Start attnd with the tier `tier` below --kv-memory mem. */
static void start(int tier, const char *mem)
{
    static const char *const host[] = {"--kv-host", "256Mi", "--log-level", "info", NULL};
    static const char *const disk[] = {"--kv-disk", "256Mi", "--log-level", "info", NULL};
    /* checkpoints every 1 MiB of log: several per test, each copying full
     * pages from HBM to slots and the last partial ones into the log */
    /* the chain: 31 slots of host RAM above the disk */
    static const char *const chain[] = {"--kv-host", "8Mi", "--kv-disk", "256Mi", "--log-level",
                                        "info", NULL};
    static const char *const durable[] = {"--kv-disk", "512Mi", "--durable", "sync",
                                          "--durable-segment", "8Mi", "--durable-checkpoint",
                                          "1Mi", "--log-level", "info", NULL};
    if (tier != T_HOST && !dir[0])
        tt_must_mkdir(dir);
    say("start attnd --model %s --page-size %s --device %s --kv-memory %s, tier %s%s%s",
        tt_suite.model, tt_suite.page_size, tt_suite.device, mem, tier_names[tier],
        tier == T_HOST ? "" : " in ", tier == T_HOST ? "" : dir);
    tt_must_start(tier == T_HOST ? NULL : dir, mem,
                  tier == T_HOST   ? host
                  : tier == T_DISK ? disk
                  : tier == T_CHAIN ? chain
                                    : durable);
    say("  attnd pid %d on %s", (int)cu_srv.pid, cu_srv.target);
}

/* The same start after a crash (tt_must_restart's, with this suite's flags). */
static void restart(cu_seqs *s, int tier, const char *mem)
{
    tt_kill9();
    start(tier, mem);
    tt_must_reconnect(s);
}

/* --kv-host goes below a GPU only: the dry run on the CPU skips it. */
static int skip_host(int tier)
{
    if ((tier != T_HOST && tier != T_CHAIN) || strncmp(tt_suite.device, "cuda", 4) == 0)
        return 0;
    say("[tiers %s] skipped: --kv-host is for a GPU's memory, not %s", tier_names[tier],
        tt_suite.device);
    return 1;
}

static void open_prefilled(cu_seqs *s, uint32_t n, uint64_t tokens)
{
    static const uint32_t chunks[] = {24, 40, 0};
    cu_must_open(s, cu_must_connect(), n, ATTND_DTYPE_BF16);
    for (uint32_t i = 0; i < n; i++)
        cu_must_prefill(s, i, tokens, chunks);
    say("  %u sessions of %llu tokens a layer prefilled", n, (unsigned long long)tokens);
}

/* Decode steps with new KV over every layer in order, `batch` sessions a
 * call, round-robin: each output checked. */
static void decode_steps(cu_seqs *s, int steps, uint32_t batch)
{
    attnd_error err;
    attnd_error_clear(&err);
    for (int k = 0; k < steps; k++) {
        for (uint32_t l = 0; l < s->m.n_layers; l++)
            for (uint32_t first = 0; first < s->n; first += batch) {
                tt_op op;
                tt_op_attend(s, &op, l, first, s->n - first < batch ? s->n - first : batch);
                attnd_status st = tt_op_send(s, &op, &err);
                ck_assert_msg(st == ATTND_OK, "decode step %d layer %u sessions [%u, +%u): %s: %s",
                              k, l, first, batch, attnd_status_string(st), err.msg);
                tt_op_mirror(s, &op, 1);
                tt_op_free(&op);
            }
        say("  decode step %d: %u layers x %u sessions, %u a call, every output within bounds",
            k, s->m.n_layers, s->n, batch);
    }
}

static void check_all(cu_seqs *s, uint32_t batch, const char *when)
{
    tt_must_check_all(s, batch);
    say("  %s: every layer of the %u sessions equals the float64 reference", when, s->n);
}

/* Closed: every page in every tier is free again once no load in flight
 * holds one (prefetches are let go within milliseconds; 30 s is a hang
 * guard). */
static void close_and_check_freed(cu_seqs *s)
{
    attnd_client *c = s->c;
    attnd_tier_stats t;
    cu_seqs_close(s);
    for (int waited = 0; waited < 30000; waited += 10) {
        t = tiers(c, NULL);
        if (t.pages_held == 0 && t.below_slots_used == 0)
            break;
        struct timespec ts = {0, 10000000L};
        nanosleep(&ts, NULL);
    }
    show("after closing every session", &t);
    ck_assert_uint_eq(t.pages_held, 0);
    ck_assert_uint_eq(t.memory_pages_used, 0);
    ck_assert_uint_eq(t.below_slots_used, 0);
    attnd_client_destroy(c);
}

/* (a) host RAM, (b) disk, and both (a chain) below 128 HBM pages: 8
 * sessions of 64 pages. */
START_TEST(test_sessions_beyond_hbm_go_below_and_come_back_exact)
{
    const int tier = _i;
    cu_seqs s;
    if (skip_host(tier))
        return;
    say("[tiers %s] spill and reload: 8 sessions of 100 tokens in 128 HBM pages",
        tier_names[tier]);
    start(tier, "32Mi");
    open_prefilled(&s, 8, 100);
    attnd_tier_stats t = tiers(s.c, NULL);
    show("after prefill", &t);
    ck_assert_str_eq(t.below, tier_names[tier]);
    ck_assert_uint_eq(t.memory_pages_total, 128);
    ck_assert_uint_gt(t.pages_moved_down, 0);
    decode_steps(&s, 2, 2);
    t = tiers(s.c, NULL);
    show("after decode", &t);
    check_all(&s, 4, "after decode");
    t = tiers(s.c, NULL);
    show("after the check", &t);
    /* every token is held in some tier; more than HBM holds */
    ck_assert_uint_ge(t.pages_held, 8 * 32 * 2);
    ck_assert_uint_le(t.memory_pages_used, 128);
    ck_assert_uint_gt(t.below_slots_used, 0);
    ck_assert_uint_gt(t.pages_moved_down, 0);
    ck_assert_uint_gt(t.pages_moved_up, 0);
    ck_assert_uint_gt(t.pages_prefetched, 0);
    ck_assert_uint_eq(t.pages_bad, 0);
    ck_assert_uint_eq(t.write_failures, 0);
    if (tier == T_CHAIN) /* 31 slots of host RAM, 252 pages below */
        ck_assert_uint_eq(t.below_slots, 31 + 1008);
    uint64_t below = 0;
    for (uint32_t i = 0; i < s.n; i++) {
        attnd_tier_stats ts = tiers(s.c, &s.ids[i]);
        say("  session %u: %llu bytes in HBM, %llu below", i,
            (unsigned long long)ts.session_memory_bytes,
            (unsigned long long)ts.session_below_bytes);
        below += ts.session_below_bytes;
    }
    ck_assert_uint_gt(below, 0);
    if (tier == T_CHAIN) { /* host RAM filled: pages went on to disk */
        uint64_t offs[512];
        size_t on_disk = 0;
        for (uint32_t i = 0; i < s.n; i++)
            on_disk += tt_slots_of(dir, t.below_slot_bytes, &s.ids[i], offs, 512);
        say("  %zu slots of %s/kv.pages name the sessions", on_disk, dir);
        ck_assert_uint_gt(on_disk, 0);
    }
    close_and_check_freed(&s);
}
END_TEST

/* (c) --durable: kill -9 mid-stream, restart, nothing acknowledged lost. */
START_TEST(test_a_durable_gpu_worker_loses_no_acknowledged_append_across_kill9)
{
    enum { ROUNDS = 6 };
    cu_seqs s;
    say("[tiers durable] crash loop: 6 sessions of 100 tokens in 256 HBM pages, %d rounds of "
        "kill -9", ROUNDS);
    start(T_DURABLE, "64Mi");
    open_prefilled(&s, 6, 100);
    check_all(&s, 3, "before the first crash");
    attnd_tier_stats t = tiers(s.c, NULL);
    show("before the first crash", &t);
    ck_assert_int_eq(t.durability, 1);
    ck_assert_uint_gt(t.pages_moved_down, 0);
    int applied = 0;
    for (int round = 0; round < ROUNDS; round++) {
        tt_op op;
        tt_must_cut(&s, &op, round, 4, 1);
        say("  round %d: killed mid-%s", round, op.kind == 1 ? "AppendKV stream" : "Attend");
        restart(&s, T_DURABLE, "64Mi");
        t = tiers(s.c, NULL);
        show("after the restart", &t);
        ck_assert_uint_eq(t.sessions_recovered, s.n);
        ck_assert_uint_eq(t.sessions_lost, 0);
        int again = tt_must_resend(&s, &op, round, 1);
        applied += again;
        say("  round %d: the cut call %s", round,
            again ? "applied when sent again" : "had applied whole before the crash");
        check_all(&s, 3, "after the restart");
    }
    say("  %d of %d cut calls applied when sent again", applied, ROUNDS);
    /* a clean stop writes a last checkpoint; the restart serves the same */
    ck_assert_int_eq(cu_server_stop(&cu_srv), 0);
    cu_srv.pid = 0;
    start(T_DURABLE, "64Mi");
    tt_must_reconnect(&s);
    check_all(&s, 3, "after a clean restart");
    t = tiers(s.c, NULL);
    show("after a clean restart", &t);
    ck_assert_uint_eq(t.sessions_recovered, s.n);
    ck_assert_uint_gt(t.pages_moved_up, 0);
    ck_assert_uint_eq(t.pages_bad, 0);
    tt_seqs_done(&s);
}
END_TEST

/* The chosen lists of one sparse Attend, kept. */
typedef struct chosen {
    uint32_t groups, indptr[CU_MAX_SEQS * 8 + 1];
    uint64_t pages[4096];
    size_t n;
} chosen;

static void attend_topk(cu_seqs *s, cu_step *st, chosen *ch, void *out_copy)
{
    attnd_error err;
    attnd_sparse_args sp = {.return_pages = 1, .chosen_indptr = ch->indptr,
                            .chosen_indptr_capacity = CU_MAX_SEQS * 8 + 1,
                            .chosen = ch->pages, .chosen_capacity = 4096};
    attnd_error_clear(&err);
    memset(st->out, 0xA5, st->out_bytes); /* a stale output cannot pass */
    attnd_status rc = attnd_client_attend_sparse(s->c, &st->a, &sp, &err);
    ck_assert_msg(rc == ATTND_OK, "topk-pages attend: %s: %s", attnd_status_string(rc), err.msg);
    ck_assert_uint_eq(sp.chosen_groups, s->m.n_kv_heads); /* GQA: per KV head */
    ch->groups = sp.chosen_groups;
    ch->n = sp.n_chosen;
    tt_must_check_reported(s, st, &sp, st->a.layer, (uint32_t)atoi(tt_suite.page_size));
    memcpy(out_copy, st->out, st->out_bytes);
}

/* Attend every layer of sessions [first, first + n) once, no new KV, each
 * output checked. */
static void attend_all_layers(cu_seqs *s, uint32_t first, uint32_t n)
{
    attnd_refcheck_result res = {0};
    attnd_error err;
    for (uint32_t l = 0; l < s->m.n_layers; l++) {
        cu_step st;
        cu_step_make(s, &st, l, first, n, 1, 0, 1, ATTND_DTYPE_F32);
        attnd_error_clear(&err);
        attnd_status rc = attnd_client_attend(s->c, &st.a, &err);
        ck_assert_msg(rc == ATTND_OK, "attend layer %u: %s: %s", l, attnd_status_string(rc),
                      err.msg);
        ck_assert_int_eq(cu_step_commit(s, &st, &res), 0);
        cu_step_free(&st);
    }
    ck_assert_msg(res.max_err <= cu_bound(s->dt), "rel err %g", res.max_err);
    ck_assert_msg(res.max_lse_err <= tt_suite.lse_bound, "lse err %g", res.max_lse_err);
}

/* (d) topk-pages: the same pages and output bits after a trip below. */
START_TEST(test_a_topk_pages_session_chooses_the_same_pages_after_a_trip_below)
{
    const int tier = _i;
    const uint32_t n_tokens = 1100; /* 18 pages of 64: 5 kept per KV head */
    cu_seqs s;
    attnd_error err;
    if (skip_host(tier))
        return;
    say("[tiers %s] topk-pages: a session of %u tokens (layer 0) sent below and back",
        tier_names[tier], n_tokens);
    start(tier, "32Mi");
    /* session 0: topk-pages; 1-3: dense, 100 tokens (64 pages each) */
    cu_must_open(&s, cu_must_connect(), 4, ATTND_DTYPE_BF16);
    attnd_sparse_policy p = {.kind = ATTND_SPARSE_TOPK_PAGES,
                             .sink = (uint32_t)atoi(tt_suite.page_size), .topk_fraction = 0.25f};
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd_client_close_session(s.c, &s.ids[0], &err), ATTND_OK);
    ck_assert_msg(attnd_client_create_session_policy(s.c, "", 0, &p, NULL, 0, &s.ids[0], NULL,
                                                     &err) == ATTND_OK, "%s", err.msg);
    /* the others first: session 0 comes in last, resident, without slot
     * copies (the others make room for it) */
    static const uint32_t chunks[] = {24, 40, 0};
    for (uint32_t i = 1; i < 4; i++)
        cu_must_prefill(&s, i, 100, chunks);
    tt_must_append_layer(&s, 0, 0, n_tokens);
    say("  prefilled: sessions 1-3 100 tokens a layer, then session 0 (topk-pages) %u tokens "
        "in layer 0", n_tokens);
    attnd_tier_stats ts0 = tiers(s.c, &s.ids[0]);
    say("  session 0: %llu bytes in HBM, %llu below", (unsigned long long)ts0.session_memory_bytes,
        (unsigned long long)ts0.session_below_bytes);

    cu_step st;
    cu_step_make(&s, &st, 0, 0, 1, 1, 0, 1, ATTND_DTYPE_F32); /* one query, kept */
    static chosen before, after;
    void *out0 = malloc(st.out_bytes), *out1 = malloc(st.out_bytes);
    ck_assert(out0 && out1);
    attend_topk(&s, &st, &before, out0);
    say("  first attend: %zu pages chosen over %u KV heads, outputs within bounds", before.n,
        before.groups);

    attnd_tier_stats t = tiers(s.c, NULL);
    if (tier == T_DURABLE) {
        /* two checkpoints that begin after this point: the later one saw
         * session 0's full pages resident and copied them to slots */
        const uint64_t c0 = t.checkpoints;
        for (int k = 0; k < 400 && t.checkpoints < c0 + 2; k++) {
            tt_must_append_layer(&s, 1, (uint32_t)k % 32, 64); /* 256 KiB of log */
            struct timespec ts10 = {0, 10000000L};
            nanosleep(&ts10, NULL);
            t = tiers(s.c, NULL);
        }
        say("  checkpoints %llu -> %llu", (unsigned long long)c0,
            (unsigned long long)t.checkpoints);
        ck_assert_uint_ge(t.checkpoints, c0 + 2);
        attnd_tier_stats ts = tiers(s.c, &s.ids[0]);
        say("  session 0: %llu bytes in HBM, %llu below (slot copies)",
            (unsigned long long)ts.session_memory_bytes,
            (unsigned long long)ts.session_below_bytes);
        ck_assert_uint_gt(ts.session_below_bytes, 0);
    }
    /* the others decode every layer, twice: session 0, the coldest, goes
     * below whole */
    for (int k = 0; k < 2; k++)
        attend_all_layers(&s, 1, 3);
    attnd_tier_stats ts = tiers(s.c, &s.ids[0]);
    t = tiers(s.c, NULL);
    show("after the others' decode", &t);
    say("  session 0: %llu bytes in HBM, %llu below", (unsigned long long)ts.session_memory_bytes,
        (unsigned long long)ts.session_below_bytes);
    ck_assert_msg(ts.session_memory_bytes == 0 && ts.session_below_bytes > 0,
                  "session 0 is not wholly below HBM (%llu bytes in HBM)",
                  (unsigned long long)ts.session_memory_bytes);
    const uint64_t up0 = t.pages_moved_up;

    attend_topk(&s, &st, &after, out1);
    t = tiers(s.c, NULL);
    show("after the second attend", &t);
    ck_assert_uint_ge(t.pages_moved_up, up0 + 18);
    say("  second attend: %zu pages chosen", after.n);
    ck_assert_uint_eq(after.groups, before.groups);
    ck_assert_uint_eq(after.n, before.n);
    for (uint32_t g = 0; g <= before.groups; g++)
        ck_assert_uint_eq(after.indptr[g], before.indptr[g]);
    for (size_t j = 0; j < before.n; j++)
        ck_assert_msg(after.pages[j] == before.pages[j],
                      "chosen page %zu: %llu after the trip below, %llu before", j,
                      (unsigned long long)after.pages[j], (unsigned long long)before.pages[j]);
    ck_assert_msg(memcmp(out0, out1, st.out_bytes) == 0,
                  "the outputs differ after the trip below (same pages, same query)");
    say("  the same %zu pages and the same output bits after the trip below", after.n);
    free(out0);
    free(out1);
    cu_step_free(&st);
    tt_seqs_done(&s);
}
END_TEST

/* One TCase per scenario, so that tests/gpu/run.sh tiers can run each
 * alone (CK_RUN_CASE) under its own timeout: host, disk, topk, durable. */
/* One TCase per scenario, so that tests/gpu/run.sh tiers can run each
 * alone (CK_RUN_CASE) under its own timeout: host, disk, chain, topk,
 * durable. */
static Suite *gpu_tiers_suite(void)
{
    Suite *su = suite_create("gpu_tiers");
    static const char *const names[] = {"host", "disk", "chain", "topk", "durable"};
    for (int k = 0; k < 5; k++) {
        TCase *tc = tcase_create(names[k]);
        tcase_set_timeout(tc, 80); /* a hang guard: seconds on an H200 */
        tcase_add_checked_fixture(tc, NULL, teardown);
        if (k < 3) {
            const int tier = k == 2 ? T_CHAIN : k;
            tcase_add_loop_test(tc, test_sessions_beyond_hbm_go_below_and_come_back_exact, tier,
                                tier + 1);
        } else if (k == 3) {
            tcase_add_loop_test(tc,
                                test_a_topk_pages_session_chooses_the_same_pages_after_a_trip_below,
                                T_HOST, T_CHAIN + 1);
        } else {
            tcase_add_test(tc, test_a_durable_gpu_worker_loses_no_acknowledged_append_across_kill9);
        }
        suite_add_tcase(su, tc);
    }
    return su;
}

int main(void)
{
    const char *dev = getenv("ATTND_GPU_TIERS_DEVICE");
    dev = dev && dev[0] ? dev : "cuda:0";
    clock_gettime(CLOCK_MONOTONIC, &t_start);
    if (strncmp(dev, "cuda", 4) == 0) {
        attnd_cuda_ctx *ctx = NULL;
        attnd_error err;
        attnd_error_clear(&err);
        if (attnd_cuda_device_count() < 1 || attnd_cuda_ctx_create(0, NULL, &ctx, &err)) {
            fprintf(stderr, "test_gpu_tiers: skipped: no usable CUDA device%s%s\n",
                    err.msg[0] ? ": " : "", err.msg);
            return 77;
        }
        attnd_cuda_ctx_destroy(ctx);
    }
    tt_suite = (tt_suite_cfg){"llama3-8b", "64", dev, 1e-3};
    fprintf(stderr, "test_gpu_tiers: llama3-8b, pages of 64 tokens, on %s\n", dev);
    SRunner *sr = srunner_create(gpu_tiers_suite());
    srunner_run_all(sr, CK_VERBOSE);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
