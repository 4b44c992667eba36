/* Check suite of the tiers' building blocks, inside one process: the
 * CRC-32C every page and log record carries (the standard check value, the
 * hardware path's three-stream combine against a bitwise reference,
 * chaining), and an engine with a disk tier driven directly: sessions
 * moved below and back keep their KV exactly (float64 reference), the
 * accounting over tiers adds up, a close gives back every slot; an
 * owner's (tenant's) KV counts its pages in every tier, idle expiry gives
 * back the slots below too, and a durable engine keeps each session's
 * owner and the owner's charges across a crash; an older directory (a
 * version 1 manifest) is still recovered, a newer one refused. */
#include <check.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "attnd_worker.h"
#include "testutil.h"
#include "tier_int.h"

/* CRC-32C one bit at a time: the definition. */
static uint32_t crc_bitwise(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    return ~c;
}

START_TEST(test_crc32c_of_the_check_string_is_the_standard_value)
{
    ck_assert_uint_eq(attnd__crc32c(0, "123456789", 9), 0xe3069283u);
    ck_assert_uint_eq(attnd__crc32c(0, "", 0), 0);
}
END_TEST

/* Lengths and offsets across the three-stream blocks (12 KiB) and the
 * unaligned head and tail. */
START_TEST(test_crc32c_equals_the_bitwise_definition_at_any_length_and_offset)
{
    tu_rng r;
    tu_rng_init(&r, "crc32c");
    const size_t max = 3 * 4096 * 3 + 100;
    unsigned char *buf = malloc(max + 8);
    ck_assert_ptr_nonnull(buf);
    for (size_t i = 0; i < max + 8; i++)
        buf[i] = (unsigned char)tu_next(&r);
    const size_t lens[] = {1, 7, 8, 63, 4095, 12287, 12288, 12289, 24576 + 13, max};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++)
        for (size_t off = 0; off < 8; off += 3) {
            uint32_t want = crc_bitwise(buf + off, lens[k]);
            ck_assert_msg(attnd__crc32c(0, buf + off, lens[k]) == want, "len %zu off %zu",
                          lens[k], off);
            /* chained in two pieces: the same */
            size_t cut = lens[k] / 3;
            uint32_t c = attnd__crc32c(0, buf + off, cut);
            ck_assert_uint_eq(attnd__crc32c(c, buf + off + cut, lens[k] - cut), want);
        }
    free(buf);
}
END_TEST

/* ---- an engine with a disk tier ------------------------------------------------ */

enum { PS = 16, TOK = 100 };

static char dir[64];

static void rm_dir(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/kv.pages", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/lock", dir);
    unlink(path);
    rmdir(dir);
}

/* tiny-gqa, bf16, 32 memory pages of 4 KiB, a disk tier of 1 MiB. */
static attnd_engine *make_engine(void)
{
    strcpy(dir, "/tmp/attnd-tierunit-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    attnd_engine_config cfg = {.model = *attnd_model_find("tiny-gqa"), .page_size = PS,
                               .kv_memory = 32 * 4096, .max_sessions = 16, .kv_disk = 1 << 20,
                               .kv_prefetch = 2, .kernel_threads = 1};
    snprintf(cfg.kv_dir, sizeof cfg.kv_dir, "%s", dir);
    attnd_engine *e = NULL;
    attnd_error err;
    ck_assert_msg(attnd_engine_create(&cfg, &e, &err) == ATTND_OK, "%s", err.msg);
    return e;
}

/* The KV of one session: [layer][TOK][entry] bf16, and as float64 K, V. */
typedef struct sess {
    attnd_session_id id;
    uint16_t *wire;
    double *k, *v;
} sess;

static void sess_fill_owned(attnd_engine *e, uint64_t owner, sess *x, tu_rng *r)
{
    const attnd_model_spec *m = attnd_engine_model(e);
    const int64_t entry = attnd_model_kv_token_elems(m), half = entry / 2;
    attnd_error err;
    x->wire = malloc(sizeof(uint16_t) * (size_t)(m->n_layers * TOK * entry));
    x->k = malloc(sizeof(double) * (size_t)(m->n_layers * TOK * half));
    x->v = malloc(sizeof(double) * (size_t)(m->n_layers * TOK * half));
    ck_assert(x->wire && x->k && x->v);
    ck_assert_int_eq(attnd_engine_session_create_owned(e, owner, 0, NULL, &x->id, &err),
                     ATTND_OK);
    for (int64_t i = 0; i < m->n_layers * TOK * entry; i++) {
        uint16_t w = attnd_dtype_f32_to_bf16((float)tu_normal(r));
        x->wire[i] = w;
        int64_t t = i / entry, el = i % entry;
        (el < half ? x->k : x->v)[t * half + el % half] = attnd_dtype_bf16_to_f32(w);
    }
    for (int32_t l = 0; l < m->n_layers; l++)
        ck_assert_int_eq(attnd_engine_append(e, &x->id, (uint32_t)l, 0, TOK, ATTND_DTYPE_BF16,
                                             x->wire + (size_t)l * TOK * entry, &err),
                         ATTND_OK);
}

static void sess_fill(attnd_engine *e, sess *x, tu_rng *r)
{
    sess_fill_owned(e, 0, x, r);
}

static void sess_free(sess *x)
{
    free(x->wire);
    free(x->k);
    free(x->v);
}

/* Attend every layer of x and compare with the reference. */
static void assert_exact(attnd_engine *e, const sess *x, tu_rng *r)
{
    const attnd_model_spec *m = attnd_engine_model(e);
    const int32_t hq = m->n_q_heads, hkv = m->n_kv_heads, d = m->head_dim;
    float q[8 * 32];
    double q64[8 * 32], ref[8 * 32], rlse[8];
    const float *out, *lse;
    attnd_engine_ws ws;
    attnd_error err;
    attnd_engine_ws_init(&ws);
    for (int32_t l = 0; l < m->n_layers; l++) {
        for (int32_t j = 0; j < hq * d; j++)
            q64[j] = q[j] = (float)tu_normal(r);
        attnd_attend_req req = {.layer = (uint32_t)l, .n_seqs = 1, .ids = &x->id, .q_tokens = 1,
                                .q_dtype = ATTND_DTYPE_F32, .q = q, .want_lse = 1};
        ck_assert_msg(attnd_engine_attend(e, &req, &ws, &out, &lse, &err) == ATTND_OK, "%s",
                      err.msg);
        size_t off = (size_t)l * TOK * (size_t)(hkv * d);
        attnd_kernel_ref_attention_f64(hq, hkv, d, d, TOK, m->scale, q64, x->k + off,
                                       x->v + off, ref, rlse);
        for (int32_t h = 0; h < hq; h++)
            ck_assert(tu_rel_err_f32(out + h * d, ref + h * d, (size_t)d) <= 1e-5);
    }
    attnd_engine_ws_cleanup(&ws);
}

/* 6 sessions of 21 pages in 32 memory pages: most live on disk; each is
 * attended exactly, again and again (moved down and up each round). */
START_TEST(test_sessions_moved_below_and_back_keep_their_kv)
{
    tu_rng r;
    tu_rng_init(&r, "tier engine");
    attnd_engine *e = make_engine();
    sess x[6];
    for (int i = 0; i < 6; i++)
        sess_fill(e, &x[i], &r);
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 6; i++)
            assert_exact(e, &x[i], &r);
    attnd_engine_stats st;
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.pages_held, 6 * 3 * 7);
    ck_assert_uint_le(st.pages_used, 32);
    ck_assert_uint_gt(st.pages_moved_down, 0);
    ck_assert_uint_gt(st.pages_moved_up, 0);
    /* without durability a page lives in one tier: held = memory + slots */
    ck_assert_uint_eq(st.pages_held, st.pages_used + st.below_slots_used);
    uint64_t mem, below;
    attnd_error err;
    ck_assert_int_eq(attnd_engine_session_bytes(e, &x[0].id, &mem, &below, &err), ATTND_OK);
    ck_assert_uint_eq(mem / 4096 + below / st.below_slot_bytes, 3 * 7);
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(attnd_engine_session_close(e, &x[i].id, NULL, &err), ATTND_OK);
        sess_free(&x[i]);
    }
    /* every slot back, once the mover has let go of its load records
     * (milliseconds; 30 s is a hang guard) */
    for (int waited = 0; waited < 30000; waited += 5) {
        attnd_engine_get_stats(e, &st);
        if (st.below_slots_used == 0 && st.pages_held == 0)
            break;
        usleep(5000);
    }
    ck_assert_uint_eq(st.below_slots_used, 0);
    ck_assert_uint_eq(st.pages_held, 0);
    attnd_engine_destroy(e);
    rm_dir();
}
END_TEST

#define ALICE 0x1111111111111111ull
#define BOB 0x2222222222222222ull

/* 4 sessions of alice's, 2 of bob's, 21 pages each in 32 memory pages:
 * most pages are on disk, yet each owner's usage is all its pages, and
 * bob's KV limit (2 sessions' worth) refuses a third session's KV though
 * the disk has room. */
START_TEST(test_an_owners_kv_counts_its_pages_in_every_tier)
{
    tu_rng r;
    tu_rng_init(&r, "tier owners");
    attnd_engine *e = make_engine();
    attnd_error err;
    ck_assert_int_eq(attnd_engine_owner_set(e, BOB, "bob", 0, 2 * 3 * 7 * 4096, &err), ATTND_OK);
    sess x[6];
    for (int i = 0; i < 6; i++)
        sess_fill_owned(e, i < 4 ? ALICE : BOB, &x[i], &r);
    attnd_engine_stats st, a, b;
    attnd_engine_get_stats(e, &st);
    attnd_engine_owner_stats(e, ALICE, &a);
    attnd_engine_owner_stats(e, BOB, &b);
    ck_assert_uint_gt(st.below_slots_used, 0);
    ck_assert_uint_le(st.pages_used, 32);
    ck_assert_uint_eq(a.pages_used, 4 * 3 * 7);
    ck_assert_uint_eq(b.pages_used, 2 * 3 * 7);
    ck_assert_uint_eq(a.pages_used + b.pages_used, st.pages_held);

    attnd_session_id extra;
    const int64_t entry = attnd_model_kv_token_elems(attnd_engine_model(e));
    uint16_t *kv = calloc((size_t)(PS * entry), sizeof *kv);
    ck_assert_ptr_nonnull(kv);
    ck_assert_int_eq(attnd_engine_session_create_owned(e, BOB, 0, NULL, &extra, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_append(e, &extra, 0, 0, PS, ATTND_DTYPE_BF16, kv, &err),
                     ATTND_ERR_RESOURCE_EXHAUSTED);
    attnd_engine_owner_stats(e, BOB, &b);
    ck_assert_uint_eq(b.pages_used, 2 * 3 * 7);
    free(kv);
    ck_assert_int_eq(attnd_engine_session_close(e, &extra, NULL, &err), ATTND_OK);
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(attnd_engine_session_close(e, &x[i].id, NULL, &err), ATTND_OK);
        sess_free(&x[i]);
    }
    attnd_engine_owner_stats(e, ALICE, &a);
    attnd_engine_owner_stats(e, BOB, &b);
    ck_assert_uint_eq(a.pages_used + a.pages_reserved + b.pages_used + b.pages_reserved, 0);
    attnd_engine_destroy(e);
    rm_dir();
}
END_TEST

/* Idle expiry of sessions that live mostly on disk gives back their slots
 * below, not only their memory pages. */
START_TEST(test_idle_expiry_gives_back_the_slots_below_memory_too)
{
    tu_rng r;
    tu_rng_init(&r, "tier expiry");
    attnd_engine *e = make_engine();
    sess x[6];
    for (int i = 0; i < 6; i++)
        sess_fill(e, &x[i], &r);
    attnd_engine_stats st;
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_gt(st.below_slots_used, 0);
    /* the mover may hold a session for a moment (skipped, as any held
     * one): reap until all went (milliseconds; 30 s is a hang guard) */
    attnd_session_id got[6];
    size_t n, reaped = 0;
    for (int waited = 0; waited < 30000 && reaped < 6; waited += 5) {
        attnd_engine_reap_idle(e, 0, got, 6, &n);
        reaped += n;
        if (reaped < 6)
            usleep(5000);
    }
    ck_assert_uint_eq(reaped, 6);
    for (int waited = 0; waited < 30000; waited += 5) {
        attnd_engine_get_stats(e, &st);
        if (st.below_slots_used == 0 && st.pages_held == 0)
            break;
        usleep(5000);
    }
    ck_assert_uint_eq(st.sessions, 0);
    ck_assert_uint_eq(st.sessions_expired, 6);
    ck_assert_uint_eq(st.below_slots_used, 0);
    ck_assert_uint_eq(st.pages_held, 0);
    for (int i = 0; i < 6; i++)
        sess_free(&x[i]);
    attnd_engine_destroy(e);
    rm_dir();
}
END_TEST

/* A durable engine records a session's owner in its log and manifest: after
 * a crash (a child that ends without closing its engine) each session
 * belongs to the same owner, each owner's figures (sessions, pages held,
 * pages reserved) equal those before the crash, and its quota counts them
 * (a limit set after the restart refuses what the recovered usage leaves
 * no room for). */
START_TEST(test_a_durable_engine_keeps_each_sessions_owner_and_charges_across_a_crash)
{
    char ddir[64] = "/tmp/attnd-tierdur-XXXXXX", cmd[96];
    ck_assert_ptr_nonnull(mkdtemp(ddir));
    attnd_engine_config cfg = {.model = *attnd_model_find("tiny-gqa"), .page_size = PS,
                               .kv_memory = 32 * 4096, .max_sessions = 16, .kv_disk = 1 << 20,
                               .kernel_threads = 1, .durable = ATTND_ENGINE_DURABLE_SYNC,
                               .checkpoint_bytes = 64 << 10};
    snprintf(cfg.kv_dir, sizeof cfg.kv_dir, "%s", ddir);
    const attnd_session_id a_id = {{1}}, b_id = {{2}}, none_id = {{3}};
    attnd_engine *e = NULL;
    attnd_engine_stats before[2], after;
    attnd_error err;
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        const int64_t entry = attnd_model_kv_token_elems(&cfg.model);
        uint16_t *kv = calloc((size_t)(40 * entry), sizeof *kv);
        /* alice: 40 tokens reserved (3 pages a layer), 20 appended (2);
         * bob: none reserved, 40 appended; and one without an owner */
        if (!kv || attnd_engine_create(&cfg, &e, &err) ||
            attnd_engine_session_create_owned(e, ALICE, 40, &a_id, NULL, &err) ||
            attnd_engine_session_create_owned(e, BOB, 0, &b_id, NULL, &err) ||
            attnd_engine_session_create_id(e, 16, &none_id, &err))
            _exit(2);
        for (uint32_t l = 0; l < 3; l++)
            if (attnd_engine_append(e, &a_id, l, 0, 20, ATTND_DTYPE_BF16, kv, &err) ||
                attnd_engine_append(e, &b_id, l, 0, 40, ATTND_DTYPE_BF16, kv, &err))
                _exit(3);
        attnd_engine_owner_stats(e, ALICE, &before[0]);
        attnd_engine_owner_stats(e, BOB, &before[1]);
        if (write(fds[1], before, sizeof before) != (ssize_t)sizeof before)
            _exit(4);
        _exit(0); /* a crash: no destroy, no last checkpoint */
    }
    close(fds[1]);
    int ws = 0;
    ck_assert_int_eq(waitpid(pid, &ws, 0), pid);
    ck_assert_msg(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "child: status %d", ws);
    ck_assert_int_eq(read(fds[0], before, sizeof before), (ssize_t)sizeof before);
    close(fds[0]);
    ck_assert_uint_eq(before[0].pages_used, 3 * 2);
    ck_assert_uint_eq(before[0].pages_reserved, 3 * 1);
    ck_assert_uint_eq(before[1].pages_used, 3 * 3);

    ck_assert_msg(attnd_engine_create(&cfg, &e, &err) == ATTND_OK, "%s", err.msg);
    const uint64_t owners[2] = {ALICE, BOB};
    for (int i = 0; i < 2; i++) {
        attnd_engine_owner_stats(e, owners[i], &after);
        ck_assert_uint_eq(after.sessions, before[i].sessions);
        ck_assert_uint_eq(after.pages_used, before[i].pages_used);
        ck_assert_uint_eq(after.pages_reserved, before[i].pages_reserved);
    }
    /* each session is its owner's only */
    ck_assert_int_eq(attnd_engine_sessions_check(e, ALICE, &a_id, 1, 0, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_sessions_check(e, BOB, &a_id, 1, 0, &err), ATTND_ERR_NOT_FOUND);
    ck_assert_int_eq(attnd_engine_sessions_check(e, 0, &a_id, 1, 0, &err), ATTND_ERR_NOT_FOUND);
    ck_assert_int_eq(attnd_engine_sessions_check(e, BOB, &b_id, 1, 0, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_sessions_check(e, ALICE, &b_id, 1, 0, &err),
                     ATTND_ERR_NOT_FOUND);
    ck_assert_int_eq(attnd_engine_sessions_check(e, 0, &none_id, 1, 0, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_sessions_check(e, ALICE, &none_id, 1, 0, &err),
                     ATTND_ERR_NOT_FOUND);
    /* alice's 9 pages (6 held, 3 reserved) count against a 10-page quota */
    attnd_session_id more;
    ck_assert_int_eq(attnd_engine_owner_set(e, ALICE, "alice", 0, 10 * 4096, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_session_create_owned(e, ALICE, 16, NULL, &more, &err),
                     ATTND_ERR_RESOURCE_EXHAUSTED);
    ck_assert_msg(strstr(err.msg, "holds 36864 bytes"), "%s", err.msg);
    /* and come back to it at the close */
    ck_assert_int_eq(attnd_engine_session_close(e, &a_id, NULL, &err), ATTND_OK);
    attnd_engine_owner_stats(e, ALICE, &after);
    ck_assert_uint_eq(after.sessions + after.pages_used + after.pages_reserved, 0);
    attnd_engine_destroy(e);
    snprintf(cmd, sizeof cmd, "rm -rf %s", ddir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* The manifest of ddir rewritten as `version`: version 1 drops each
 * session's owner and policy fields (the layout an older attnd wrote;
 * TIERS.md "Versions"), any other only changes the header; the CRC made
 * again. */
static void manifest_as(const char *ddir, uint32_t version)
{
    char path[128];
    snprintf(path, sizeof path, "%s/checkpoint", ddir);
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    unsigned char *m = malloc(1 << 20), *out = malloc(1 << 20);
    ck_assert(m && out);
    size_t len = fread(m, 1, 1 << 20, f), o = 0, off = sizeof(attnd__ckpt_hdr);
    fclose(f);
    attnd__ckpt_hdr h;
    memcpy(&h, m, sizeof h);
    ck_assert_uint_eq(h.version, 2);
    h.version = version;
    memcpy(out, &h, sizeof h);
    o = sizeof h;
    for (uint64_t i = 0; i < h.n_sessions; i++) {
        uint32_t msg, pol, np;
        memcpy(&msg, m + off + 28, 4);
        size_t head = 32 + msg + (8 - msg % 8) % 8;
        memcpy(out + o, m + off, head);
        o += head;
        off += head;
        memcpy(&pol, m + off + 8, 4);
        ck_assert_uint_eq(pol, 0); /* dense sessions only */
        if (version != 1) {
            memcpy(out + o, m + off, 16);
            o += 16;
        }
        off += 16;
        for (int l = 0; l < 3; l++) {
            memcpy(&np, m + off + 16, 4);
            size_t n = 24 + (size_t)np * 8;
            memcpy(out + o, m + off, n);
            o += n;
            off += n;
        }
    }
    ck_assert_uint_eq(off + 8, len);
    uint32_t tail[2] = {attnd__crc32c(0, out, o), 0x4c494154u};
    memcpy(out + o, tail, sizeof tail);
    o += sizeof tail;
    f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(out, 1, o, f), o);
    ck_assert_int_eq(fclose(f), 0);
    free(m);
    free(out);
}

/* A directory an older attnd wrote (a version 1 manifest: no owners, no
 * policies) is recovered: its sessions come back, their KV exact; a
 * manifest of a version this attnd does not know is refused, naming it. */
START_TEST(test_a_version_1_manifest_is_recovered_and_a_newer_one_refused)
{
    char ddir[64] = "/tmp/attnd-tierdur-XXXXXX", cmd[96];
    ck_assert_ptr_nonnull(mkdtemp(ddir));
    attnd_engine_config cfg = {.model = *attnd_model_find("tiny-gqa"), .page_size = PS,
                               .kv_memory = 32 * 4096, .max_sessions = 16, .kv_disk = 1 << 20,
                               .kernel_threads = 1, .durable = ATTND_ENGINE_DURABLE_SYNC};
    snprintf(cfg.kv_dir, sizeof cfg.kv_dir, "%s", ddir);
    tu_rng r;
    tu_rng_init(&r, "manifest versions");
    attnd_engine *e = NULL;
    attnd_error err;
    sess x[2];
    ck_assert_msg(attnd_engine_create(&cfg, &e, &err) == ATTND_OK, "%s", err.msg);
    for (int i = 0; i < 2; i++)
        sess_fill(e, &x[i], &r);
    attnd_engine_destroy(e); /* a clean stop: a last checkpoint holds everything */
    manifest_as(ddir, 1);
    ck_assert_msg(attnd_engine_create(&cfg, &e, &err) == ATTND_OK, "%s", err.msg);
    attnd_engine_stats st;
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.sessions_recovered, 2);
    ck_assert_uint_eq(st.sessions_lost, 0);
    for (int i = 0; i < 2; i++)
        assert_exact(e, &x[i], &r);
    attnd_engine_destroy(e);
    manifest_as(ddir, 3);
    ck_assert_int_eq(attnd_engine_create(&cfg, &e, &err), ATTND_ERR_FAILED_PRECONDITION);
    ck_assert_msg(strstr(err.msg, "version 3"), "%s", err.msg);
    for (int i = 0; i < 2; i++)
        sess_free(&x[i]);
    snprintf(cmd, sizeof cmd, "rm -rf %s", ddir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* A durable engine's idle expiry is in its log: after a crash (a child
 * process that ends without closing its engine, so no last checkpoint)
 * the expired session stays gone and the other one comes back. */
START_TEST(test_a_session_expired_on_a_durable_engine_stays_gone_after_a_crash)
{
    char ddir[64] = "/tmp/attnd-tierdur-XXXXXX", cmd[96];
    ck_assert_ptr_nonnull(mkdtemp(ddir));
    attnd_engine_config cfg = {.model = *attnd_model_find("tiny-gqa"), .page_size = PS,
                               .kv_memory = 32 * 4096, .max_sessions = 16, .kv_disk = 1 << 20,
                               .kernel_threads = 1, .durable = ATTND_ENGINE_DURABLE_SYNC};
    snprintf(cfg.kv_dir, sizeof cfg.kv_dir, "%s", ddir);
    /* ids chosen here: the child makes them, the parent looks for them */
    attnd_session_id gone = {{1}}, kept = {{2}};
    attnd_engine *e = NULL;
    attnd_error err;
    uint64_t len;
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        attnd_session_id got[2];
        size_t n = 0;
        if (attnd_engine_create(&cfg, &e, &err) ||
            attnd_engine_session_create_id(e, 16, &gone, &err))
            _exit(2);
        for (int waited = 0; waited < 30000 && n == 0; waited += 5) {
            attnd_engine_reap_idle(e, 0, got, 2, &n);
            if (n == 0)
                usleep(5000);
        }
        if (n != 1 || memcmp(&got[0], &gone, sizeof gone) != 0 ||
            attnd_engine_session_create_id(e, 16, &kept, &err))
            _exit(3);
        _exit(0); /* a crash: no destroy, no checkpoint */
    }
    int ws = 0;
    ck_assert_int_eq(waitpid(pid, &ws, 0), pid);
    ck_assert_msg(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "child: status %d", ws);

    ck_assert_msg(attnd_engine_create(&cfg, &e, &err) == ATTND_OK, "%s", err.msg);
    attnd_engine_stats st;
    attnd_engine_get_stats(e, &st);
    ck_assert_uint_eq(st.sessions, 1);
    ck_assert_int_eq(attnd_engine_length(e, &kept, 0, &len, &err), ATTND_OK);
    ck_assert_int_eq(attnd_engine_length(e, &gone, 0, &len, &err), ATTND_ERR_NOT_FOUND);
    attnd_engine_destroy(e);
    snprintf(cmd, sizeof cmd, "rm -rf %s", ddir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* ---- a chain: host RAM above the disk ---------------------------------------- */

/* tiny-gqa, 32 memory pages, 8 slots of host RAM (8 KiB each) above 1 MiB
 * of disk, or (durable) refused. */
static attnd_status make_chain(int durable, attnd_engine **e_p, attnd_error *err)
{
    strcpy(dir, "/tmp/attnd-tierunit-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    attnd_engine_config cfg = {.model = *attnd_model_find("tiny-gqa"), .page_size = PS,
                               .kv_memory = 32 * 4096, .max_sessions = 16, .kv_disk = 1 << 20,
                               .kv_host = 8 * 8192, .kv_prefetch = 2, .kernel_threads = 1,
                               .durable = durable};
    snprintf(cfg.kv_dir, sizeof cfg.kv_dir, "%s", dir);
    return attnd_engine_create(&cfg, e_p, err);
}

/* Used slots of t in [lo, hi). */
static int64_t used_in(const attnd__tier *t, int64_t lo, int64_t hi)
{
    int64_t n = 0;
    for (int64_t k = lo; k < hi; k++)
        n += t->state[k] != ATTND__SLOT_FREE;
    return n;
}

/* 6 sessions of 21 pages in 32 memory pages and 8 of host RAM: evictions
 * land in host RAM, the mover moves the coldest of them on to disk (host
 * RAM gets free slots again), and every session attends exactly, read
 * back from either; closes give every slot of both back. */
START_TEST(test_a_chain_moves_pages_from_host_ram_on_to_disk_and_reads_both)
{
    tu_rng r;
    tu_rng_init(&r, "tier chain");
    attnd_engine *e = NULL;
    attnd_error err;
    ck_assert_msg(make_chain(0, &e, &err) == ATTND_OK, "%s", err.msg);
    attnd__tier *t = e->tier;
    ck_assert_int_eq(t->kind, ATTND__STORE_CHAIN);
    ck_assert_int_eq(t->n_host, 8);
    sess x[6];
    for (int i = 0; i < 6; i++)
        sess_fill(e, &x[i], &r);
    attnd_engine_stats st;
    attnd_engine_get_stats(e, &st);
    ck_assert_str_eq(st.below, "chain");
    ck_assert_uint_eq(st.below_slots, 128 + 8);
    ck_assert_uint_eq(st.pages_capacity, 32 + 128 + 8);
    /* the mover drains host RAM to its low water (30 s: a hang guard) */
    for (int waited = 0; waited < 30000 && attnd__tier_host_free(t) < t->host_low; waited += 5)
        usleep(5000);
    ck_assert_int_ge(attnd__tier_host_free(t), t->host_low);
    ck_assert_uint_gt(atomic_load(&t->n_demoted), 0);
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 6; i++)
            assert_exact(e, &x[i], &r);
    /* at rest (a page being moved on holds both its slots a moment; 30 s:
     * a hang guard), every page is in one place */
    for (int waited = 0; waited < 30000; waited += 5) {
        attnd_engine_get_stats(e, &st);
        if (st.pages_held == st.pages_used + st.below_slots_used)
            break;
        usleep(5000);
    }
    ck_assert_uint_eq(st.pages_held, 6 * 3 * 7);
    ck_assert_uint_eq(st.pages_held, st.pages_used + st.below_slots_used);
    ck_assert_uint_gt(used_in(t, 0, t->n_slots), 0); /* some pages on disk */
    ck_assert_uint_eq(st.pages_bad, 0);
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(attnd_engine_session_close(e, &x[i].id, NULL, &err), ATTND_OK);
        sess_free(&x[i]);
    }
    for (int waited = 0; waited < 30000; waited += 5) {
        attnd_engine_get_stats(e, &st);
        if (st.below_slots_used == 0 && st.pages_held == 0)
            break;
        usleep(5000);
    }
    ck_assert_uint_eq(st.below_slots_used, 0);
    ck_assert_int_eq(attnd__tier_host_free(t), 8);
    attnd_engine_destroy(e);
    rm_dir();
}
END_TEST

START_TEST(test_a_durable_chain_is_refused_naming_kv_host)
{
    attnd_engine *e = NULL;
    attnd_error err;
    attnd_error_clear(&err);
    ck_assert_int_eq(make_chain(ATTND_ENGINE_DURABLE_SYNC, &e, &err), ATTND_ERR_UNIMPLEMENTED);
    ck_assert_msg(strstr(err.msg, "kv-host") != NULL, "%s", err.msg);
    ck_assert_ptr_null(e);
    rm_dir();
}
END_TEST

static Suite *tier_suite(void)
{
    Suite *su = suite_create("tier_units");
    TCase *tc = tcase_create("units");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_crc32c_of_the_check_string_is_the_standard_value);
    tcase_add_test(tc, test_crc32c_equals_the_bitwise_definition_at_any_length_and_offset);
    tcase_add_test(tc, test_sessions_moved_below_and_back_keep_their_kv);
    tcase_add_test(tc, test_an_owners_kv_counts_its_pages_in_every_tier);
    tcase_add_test(tc, test_idle_expiry_gives_back_the_slots_below_memory_too);
    tcase_add_test(tc, test_a_durable_engine_keeps_each_sessions_owner_and_charges_across_a_crash);
    tcase_add_test(tc, test_a_session_expired_on_a_durable_engine_stays_gone_after_a_crash);
    tcase_add_test(tc, test_a_version_1_manifest_is_recovered_and_a_newer_one_refused);
    tcase_add_test(tc, test_a_chain_moves_pages_from_host_ram_on_to_disk_and_reads_both);
    tcase_add_test(tc, test_a_durable_chain_is_refused_naming_kv_host);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(tier_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
