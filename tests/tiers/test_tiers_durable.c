/* Durability through a real attnd (--durable: a write-ahead log in
 * --kv-dir; worker/TIERS.md): sessions and their ids survive a restart;
 * SIGKILL at many points of a stream of appends (and right after a start)
 * loses no acknowledged token and serves nothing half-written; a torn log
 * tail is cut, never served; a page corrupted while the worker was down
 * fails its session only; the reply says how a change is durable; checkpoints keep the log
 * small; a directory holds one worker of one model. Outputs are checked
 * against the float64 reference of what the test knows was applied. */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer_reader.h>

#include "client_int.h"
#include "tiers_testutil.h"

static char dir[64];

static void teardown(void)
{
    cu_teardown();
    tt_rmdir(dir);
    dir[0] = '\0';
}

static const char *const sync_flags[] = {"--durable", "--durable-segment", "1Mi",
                                          "--durable-checkpoint", "128Ki", "--kv-disk", "16Mi",
                                          NULL};

static attnd_tier_stats tiers(attnd_client *c)
{
    attnd_tier_stats t;
    attnd_error err;
    attnd_error_clear(&err);
    ck_assert_msg(attnd_client_get_tier_stats(c, NULL, &t, &err) == ATTND_OK, "stats: %s",
                  err.msg);
    return t;
}

static void prefill_all(cu_seqs *s, uint64_t tokens)
{
    static const uint32_t chunks[] = {16, 40, 0};
    for (uint32_t i = 0; i < s->n; i++)
        cu_must_prefill(s, i, tokens, chunks);
}

static void decode(cu_seqs *s, int steps, uint32_t batch)
{
    attnd_error err;
    attnd_error_clear(&err);
    for (int k = 0; k < steps; k++)
        for (uint32_t l = 0; l < s->m.n_layers; l++)
            for (uint32_t first = 0; first < s->n; first += batch) {
                tt_op op;
                tt_op_attend(s, &op, l, first, s->n - first < batch ? s->n - first : batch);
                ck_assert_msg(tt_op_send(s, &op, &err) == ATTND_OK, "decode: %s", err.msg);
                tt_op_mirror(s, &op, 1);
                tt_op_free(&op);
            }
}

START_TEST(test_sessions_keep_their_ids_and_kv_across_restarts)
{
    cu_seqs s;
    tt_must_mkdir(dir);
    tt_must_start(dir, "256Ki", sync_flags);
    cu_must_open(&s, cu_must_connect(), 4, ATTND_DTYPE_BF16);
    prefill_all(&s, 70);
    decode(&s, 2, 4);

    /* a clean stop */
    ck_assert_int_eq(cu_server_stop(&cu_srv), 0);
    tt_must_start(dir, "256Ki", sync_flags);
    tt_must_reconnect(&s);
    ck_assert_uint_eq(tiers(s.c).sessions_recovered, 4);
    tt_must_check_all(&s, 4);
    decode(&s, 1, 2);

    /* a crash */
    tt_must_restart(&s, dir, "256Ki", sync_flags);
    attnd_tier_stats t = tiers(s.c);
    ck_assert_uint_eq(t.sessions_recovered, 4);
    ck_assert_uint_eq(t.sessions_lost, 0);
    ck_assert_int_eq(t.durability, 1);
    tt_must_check_all(&s, 4);
    decode(&s, 1, 4);
    tt_seqs_done(&s);
}
END_TEST

/* The first changes after a start follow a checkpoint that began a new log
 * segment: acknowledged in sync mode, they are on disk at once, so a
 * kill -9 right after them loses none. (The log used to count the zeros
 * after the old segment's end as written LSNs, so it held up to 4 KiB of
 * records after every new segment for durable without writing them: a
 * session created right after a start was lost; the crash loop found it in
 * round 0, 1 run in 4 to 50.) */
START_TEST(test_a_session_created_right_after_a_start_survives_kill_9)
{
    cu_seqs s;
    tt_must_mkdir(dir);
    tt_must_start(dir, "256Ki", sync_flags);
    cu_must_open(&s, cu_must_connect(), 2, ATTND_DTYPE_BF16);
    tt_must_restart(&s, dir, "256Ki", sync_flags);
    attnd_tier_stats t = tiers(s.c);
    ck_assert_uint_eq(t.sessions_recovered, 2);
    ck_assert_uint_eq(t.sessions_lost, 0);
    /* and their first appends, again right after a start */
    prefill_all(&s, 3);
    tt_must_restart(&s, dir, "256Ki", sync_flags);
    ck_assert_uint_eq(tiers(s.c).sessions_recovered, 2);
    tt_must_check_all(&s, 2);
    tt_seqs_done(&s);
}
END_TEST

/* ---- the crash loop ----------------------------------------------------------- */

/* 12 rounds: appends (AppendKV streams, Attends with new KV) until a
 * SIGKILL 2-40 ms in cuts one off mid-flight; restart; the cut one is sent
 * again: it applies (it had not been) or is FAILED_PRECONDITION (it had
 * been, whole); then every layer of every session must equal the
 * reference of exactly the acknowledged appends plus that one. */
START_TEST(test_kill_9_at_many_points_loses_no_acknowledged_append)
{
    cu_seqs s;
    tt_must_mkdir(dir);
    tt_must_start(dir, "1Mi", sync_flags);
    cu_must_open(&s, cu_must_connect(), 4, ATTND_DTYPE_BF16);
    int applied_again = 0, had_applied = 0;
    for (int round = 0; round < 12; round++) {
        tt_op op;
        tt_must_cut(&s, &op, round, 16, 1);
        tt_must_start(dir, "1Mi", sync_flags);
        tt_must_reconnect(&s);
        if (tt_must_resend(&s, &op, round, 1))
            applied_again++;
        else
            had_applied++;
        tt_must_check_all(&s, 4);
    }
    fprintf(stderr, "[crash loop] cut appends applied after the restart: %d, already "
                    "applied before it: %d\n", applied_again, had_applied);
    attnd_tier_stats t = tiers(s.c);
    ck_assert_uint_eq(t.sessions_recovered, 4);
    ck_assert_uint_eq(t.sessions_lost, 0);
    tt_seqs_done(&s);
}
END_TEST

/* ---- the log's tail --------------------------------------------------------- */

/* The newest segment of DIR/wal and where its whole records end (the
 * documented layout: a 4096-byte header block, then records of a 32-byte header
 * "AREC", crc, len, type, flags, lsn, txn and len bytes padded to 8). */
static void log_end(char *path, size_t n, uint64_t *off_p, uint64_t *lsn_p)
{
    char wal[128];
    unsigned long long best = 0;
    int found = 0;
    snprintf(wal, sizeof wal, "%s/wal", dir);
    DIR *d = opendir(wal);
    ck_assert_ptr_nonnull(d);
    for (struct dirent *de; (de = readdir(d));) {
        unsigned long long first;
        if (sscanf(de->d_name, "%16llx.log", &first) == 1 && (!found || first > best)) {
            best = first;
            found = 1;
        }
    }
    closedir(d);
    ck_assert(found);
    snprintf(path, n, "%s/%016llx.log", wal, best);
    int fd = open(path, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    uint64_t off = 4096, lsn = best; /* records start after the 4096-byte header block */
    for (;;) {
        unsigned char h[32];
        uint32_t magic, len;
        if (pread(fd, h, sizeof h, (off_t)off) != (ssize_t)sizeof h)
            break;
        memcpy(&magic, h, 4);
        memcpy(&len, h + 8, 4);
        if (magic != 0x43455241u)
            break;
        off += 32 + ((len + 7u) & ~7u);
        lsn += 32 + ((len + 7u) & ~7u);
    }
    close(fd);
    *off_p = off;
    *lsn_p = lsn;
}

START_TEST(test_a_torn_log_tail_is_cut_and_never_served)
{
    char path[256];
    uint64_t off, lsn;
    cu_seqs s;
    tt_must_mkdir(dir);
    tt_must_start(dir, "256Ki", sync_flags);
    cu_must_open(&s, cu_must_connect(), 3, ATTND_DTYPE_BF16);
    prefill_all(&s, 40);
    decode(&s, 2, 3);
    tt_kill9();
    /* a record cut short (a write torn by the crash): a whole header
     * claiming 4 KiB, whose bytes stop half way, then garbage */
    log_end(path, sizeof path, &off, &lsn);
    unsigned char rec[2080];
    memset(rec, 0x6b, sizeof rec);
    uint32_t magic = 0x43455241u, crc = 0xdeadbeef, len = 4096;
    uint16_t type = 4; /* a COMMIT, were it whole */
    memcpy(rec, &magic, 4);
    memcpy(rec + 4, &crc, 4);
    memcpy(rec + 8, &len, 4);
    memcpy(rec + 12, &type, 2);
    memcpy(rec + 16, &lsn, 8);
    int fd = open(path, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, rec, sizeof rec, (off_t)off), (ssize_t)sizeof rec);
    close(fd);

    tt_must_start(dir, "256Ki", sync_flags);
    tt_must_reconnect(&s);
    tt_must_check_all(&s, 3); /* exactly what was acknowledged */
    decode(&s, 1, 3);         /* and it goes on from there */
    tt_must_restart(&s, dir, "256Ki", sync_flags);
    tt_must_check_all(&s, 3);
    tt_seqs_done(&s);
}
END_TEST

START_TEST(test_a_page_corrupted_while_down_loses_only_its_session)
{
    attnd_error err;
    cu_seqs s;
    char hex[33];
    uint64_t offs[256];
    tt_must_mkdir(dir);
    tt_must_start(dir, "256Ki", sync_flags);
    cu_must_open(&s, cu_must_connect(), 6, ATTND_DTYPE_BF16);
    prefill_all(&s, 100); /* 6 full pages a layer: in slots after the last checkpoint */
    ck_assert_int_eq(cu_server_stop(&cu_srv), 0);
    uint64_t slot_bytes = 8192; /* 4 KiB pages after a 4 KiB header block */
    size_t n = tt_slots_of(dir, slot_bytes, &s.ids[0], offs, 256);
    ck_assert_uint_ge(n, 1);
    for (size_t i = 0; i < n; i++) /* every copy it ever had */
        tt_must_corrupt(dir, offs[i]);

    tt_must_start(dir, "256Ki", sync_flags);
    tt_must_reconnect(&s);
    attnd_tier_stats t = tiers(s.c);
    ck_assert_uint_eq(t.sessions_recovered, 6);
    ck_assert_uint_eq(t.sessions_lost, 1);
    attnd_error_clear(&err);
    cu_assert_fails(tt_check_one(&s, 0, &err), err, ATTND_ERR_DATA_LOSS, tt_hex(&s.ids[0], hex));
    for (uint32_t i = 1; i < s.n; i++) {
        attnd_status st = tt_check_one(&s, i, &err);
        ck_assert_msg(st == ATTND_OK, "session %u: %s", i, err.msg);
    }
    ck_assert_int_eq(attnd_client_close_session(s.c, &s.ids[0], &err), ATTND_OK);
    tt_seqs_done(&s);
}
END_TEST

/* ---- the reply ---------------------------------------------------------------- */

/* AppendKV of one token through the raw stream: the reply's durability. */
static Attnd__V1__AppendKVResponse *append_raw(attnd_client *c, const attnd_session_id *id)
{
    attnd__client_scall sc;
    attnd_error err;
    uint16_t kv[2 * 2 * 32] = {0};
    int64_t shape[4] = {1, 2, 2, 32};
    Attnd__V1__Tensor t = ATTND__V1__TENSOR__INIT;
    Attnd__V1__AppendKVRequest req = ATTND__V1__APPEND_KVREQUEST__INIT;
    t.dtype = ATTND__V1__DTYPE__DTYPE_BF16;
    t.n_shape = 4;
    t.shape = shape;
    t.data.len = sizeof kv;
    t.data.data = (uint8_t *)kv;
    req.session_id.len = 16;
    req.session_id.data = (uint8_t *)id->bytes;
    req.kv = &t;
    size_t n = attnd__v1__append_kvrequest__get_packed_size(&req);
    uint8_t *buf = malloc(n);
    attnd__v1__append_kvrequest__pack(&req, buf);
    grpc_slice sl = grpc_slice_from_copied_buffer((const char *)buf, n);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1), *rb = NULL;
    grpc_slice_unref(sl);
    free(buf);
    memset(&sc, 0, sizeof sc);
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd__client_scall_open(&sc, c, ATTND__CLIENT_M_APPEND_KV, &err), 0);
    ck_assert_int_eq(attnd__client_scall_send(&sc, bb, 1, &err), 0);
    ck_assert_int_eq(attnd__client_scall_recv(&sc, &rb, &err), 0);
    ck_assert_ptr_nonnull(rb);
    ck_assert_int_eq(attnd__client_scall_status(&sc, &err), 0);
    grpc_byte_buffer_reader rd;
    ck_assert(grpc_byte_buffer_reader_init(&rd, rb));
    grpc_slice all = grpc_byte_buffer_reader_readall(&rd);
    Attnd__V1__AppendKVResponse *r = attnd__v1__append_kvresponse__unpack(
        NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    grpc_byte_buffer_reader_destroy(&rd);
    grpc_byte_buffer_destroy(bb);
    grpc_byte_buffer_destroy(rb);
    attnd__client_scall_cleanup(&sc);
    ck_assert_ptr_nonnull(r);
    return r;
}

/* A unary Attend's trailing "attnd-durability" ("" when none), through
 * the raw call. */
static void attend_trailer(attnd_client *c, const attnd_session_id *id, char *val, size_t n)
{
    uint16_t q[8 * 32] = {0};
    int64_t shape[3] = {1, 8, 32};
    Attnd__V1__Tensor t = ATTND__V1__TENSOR__INIT;
    Attnd__V1__AttendRequest req = ATTND__V1__ATTEND_REQUEST__INIT;
    ProtobufCBinaryData sid = {16, (uint8_t *)id->bytes};
    attnd__client_rpc r;
    attnd_error err;
    t.dtype = ATTND__V1__DTYPE__DTYPE_BF16;
    t.n_shape = 3;
    t.shape = shape;
    t.data.len = sizeof q;
    t.data.data = (uint8_t *)q;
    req.n_session_ids = 1;
    req.session_ids = &sid;
    req.q = &t;
    size_t len = attnd__v1__attend_request__get_packed_size(&req);
    uint8_t *buf = malloc(len);
    attnd__v1__attend_request__pack(&req, buf);
    grpc_slice sl = grpc_slice_from_copied_buffer((const char *)buf, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    free(buf);
    memset(&r, 0, sizeof r);
    attnd_error_clear(&err);
    ck_assert_int_eq(attnd__client_rpc_start(&r, c, ATTND__CLIENT_M_ATTEND, bb, &err), 0);
    attnd_status st = attnd__client_rpc_finish(&r, &err);
    ck_assert_msg(st == ATTND_OK, "attend: %s", err.msg);
    val[0] = '\0';
    for (size_t i = 0; i < r.md_trailing.count; i++)
        if (grpc_slice_str_cmp(r.md_trailing.metadata[i].key, "attnd-durability") == 0)
            snprintf(val, n, "%.*s", (int)GRPC_SLICE_LENGTH(r.md_trailing.metadata[i].value),
                     (const char *)GRPC_SLICE_START_PTR(r.md_trailing.metadata[i].value));
    attnd__client_rpc_cleanup(&r);
}

START_TEST(test_the_reply_says_how_a_change_is_durable)
{
    static const char *const modes[] = {"--durable=off", "--durable=sync", "--durable=batch"};
    const char *window[] = {"--durable-window-ms", "3"};
    char val[64];
    for (int m = 0; m < 3; m++) {
        const char *flags[] = {modes[m], window[0], window[1], NULL};
        attnd_session_id id;
        attnd_error err;
        tt_must_mkdir(dir);
        tt_must_start(dir, "256Ki", flags);
        attnd_client *c = cu_must_connect();
        ck_assert_int_eq(attnd_client_create_session(c, NULL, 0, &id, NULL, &err), 0);
        Attnd__V1__AppendKVResponse *r = append_raw(c, &id);
        ck_assert_uint_eq(r->tokens, 1);
        ck_assert_int_eq((int)r->durability, m);
        ck_assert_uint_eq(r->durable_window_ms, m == 2 ? 3 : 0);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        attend_trailer(c, &id, val, sizeof val);
        ck_assert_str_eq(val, m == 0 ? "" : m == 1 ? "sync" : "batch;window-ms=3");
        ck_assert_int_eq(tiers(c).durability, m);
        attnd_client_destroy(c);
        teardown();
    }
}
END_TEST

START_TEST(test_batch_mode_keeps_what_it_acknowledged_across_a_clean_restart)
{
    const char *const flags[] = {"--durable=batch", "--durable-window-ms", "1", NULL};
    cu_seqs s;
    tt_must_mkdir(dir);
    tt_must_start(dir, "256Ki", flags);
    cu_must_open(&s, cu_must_connect(), 3, ATTND_DTYPE_BF16);
    prefill_all(&s, 50);
    decode(&s, 3, 3);
    ck_assert_int_eq(cu_server_stop(&cu_srv), 0);
    tt_must_start(dir, "256Ki", flags);
    tt_must_reconnect(&s);
    tt_must_check_all(&s, 3);
    tt_seqs_done(&s);
}
END_TEST

/* Batch mode: the flusher writes the log once the window (1 ms) has passed,
 * checksumming each record (the writers leave that to it, off the reply's
 * path). Wait for the flushes the last calls started: until the log's
 * durable LSN has not moved for 1 s (polled every 50 ms; a hang guard of
 * 30 s), far past the window. */
static void wait_log_settled(attnd_client *c)
{
    attnd_tier_stats t = tiers(c);
    int still = 0;
    for (int i = 0; i < 600 && still < 20; i++) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
        attnd_tier_stats u = tiers(c);
        still = u.wal_durable_lsn == t.wal_durable_lsn ? still + 1 : 0;
        t = u;
    }
    ck_assert_int_eq(still, 20);
    ck_assert_uint_gt(t.wal_syncs, 0);
}

/* Every record a batch-mode worker acknowledged is on disk, whole and
 * checksummed, once its window has passed: a kill -9 then loses nothing.
 * No checkpoint runs after the start's (the default is one per 256 MiB
 * of log; 4 MiB of memory hold every page, so no slot is released either),
 * so the restart rebuilds every session from the log's records alone:
 * CREATEs, each AppendKV stream's DATA and COMMIT, each Attend's new KV. */
START_TEST(test_batch_mode_keeps_what_it_acknowledged_across_kill_9_after_the_window)
{
    const char *const flags[] = {"--durable=batch", "--durable-window-ms", "1", NULL};
    cu_seqs s;
    tt_must_mkdir(dir);
    tt_must_start(dir, "4Mi", flags);
    cu_must_open(&s, cu_must_connect(), 3, ATTND_DTYPE_BF16);
    const uint64_t at_start = tiers(s.c).checkpoints;
    prefill_all(&s, 50);
    decode(&s, 3, 3);
    wait_log_settled(s.c);
    ck_assert_uint_eq(tiers(s.c).checkpoints, at_start);
    tt_must_restart(&s, dir, "4Mi", flags);
    ck_assert_uint_eq(tiers(s.c).sessions_recovered, 3);
    tt_must_check_all(&s, 3);
    tt_seqs_done(&s);
}
END_TEST

/* ---- the log's size, the directory ------------------------------------------ */

static int segments(void)
{
    char wal[128];
    int n = 0;
    snprintf(wal, sizeof wal, "%s/wal", dir);
    DIR *d = opendir(wal);
    ck_assert_ptr_nonnull(d);
    for (struct dirent *de; (de = readdir(d));)
        n += strstr(de->d_name, ".log") != NULL;
    closedir(d);
    return n;
}

/* 1 MiB segments, a checkpoint every 128 KiB of log (each starts a new
 * segment; 4 MiB of memory, so one session's stream of every layer fits):
 * after ~4.7 MiB of appends the log holds a segment or two (the
 * current one, and the one where a stream open across the last checkpoint
 * began), not the dozens the checkpoints started. Checkpoints run on
 * their own thread: the test waits for the one the last appends woke (10 s
 * at most) before it counts. */
START_TEST(test_checkpoints_keep_the_log_small)
{
    cu_seqs s;
    tt_must_mkdir(dir);
    tt_must_start(dir, "4Mi", sync_flags);
    cu_must_open(&s, cu_must_connect(), 4, ATTND_DTYPE_BF16);
    for (int round = 0; round < 24; round++)
        prefill_all(&s, 64); /* 4 x 3 x 64 x 256 B = 196 KiB a round, as bf16 */
    decode(&s, 2, 4);
    attnd_tier_stats t = tiers(s.c);
    for (int i = 0; i < 200 && (t.checkpoints < 2 || segments() > 2); i++) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
        t = tiers(s.c);
    }
    ck_assert_uint_ge(t.wal_bytes_written, 4 << 20);
    ck_assert_uint_ge(t.checkpoints, 2);
    ck_assert_int_le(segments(), 2);
    tt_must_restart(&s, dir, "4Mi", sync_flags);
    tt_must_check_all(&s, 4);
    tt_seqs_done(&s);
}
END_TEST

/* A durable worker under a 1.5 MiB file size limit (its slot file stops at
 * 192 slots of 8 KiB, SIGXFSZ ignored; 1 MiB log segments fit): appends
 * past what the disk holds are RESOURCE_EXHAUSTED, the worker serves on,
 * and after a crash (restarted with room) every acknowledged append is
 * there, exactly. */
START_TEST(test_a_full_disk_refuses_appends_and_a_crash_loses_none_acknowledged)
{
    struct rlimit old, lim;
    attnd_error err;
    cu_seqs s;
    uint32_t ok = 0;
    attnd_status st = ATTND_OK;

    tt_must_mkdir(dir);
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 1536 << 10;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0); /* the server inherits it */
    tt_must_start(dir, "128Ki", sync_flags);
    cu_must_open(&s, cu_must_connect(), 16, ATTND_DTYPE_BF16);
    attnd_error_clear(&err);
    /* 21 pages a session: memory holds 32, the slot file 192 */
    for (; ok < s.n && (st = cu_prefill(&s, ok, 100, NULL, &err)) == ATTND_OK; ok++)
        ;
    ck_assert_msg(st == ATTND_ERR_RESOURCE_EXHAUSTED, "expected RESOURCE_EXHAUSTED, got %s: %s",
                  attnd_status_string(st), err.msg);
    ck_assert_uint_ge(ok, 1);
    ck_assert_uint_lt(ok, s.n);
    ck_assert_uint_ge(tiers(s.c).write_failures, 1);
    for (uint32_t i = 0; i < ok; i++) {
        st = tt_check_one(&s, i, &err);
        ck_assert_msg(st == ATTND_OK, "session %u: %s", i, err.msg);
    }

    /* a crash; it restarts with room again (restarting while the disk is
     * still full can lose the newest sessions: worker/TIERS.md, Limits) */
    tt_kill9();
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    tt_must_start(dir, "128Ki", sync_flags);
    tt_must_reconnect(&s);
    for (uint32_t i = 0; i <= ok; i++) { /* the refused one: as much as was acknowledged */
        st = tt_check_one(&s, i, &err);
        ck_assert_msg(st == ATTND_OK, "session %u of %u acknowledged, after the crash: %s", i, ok,
                      err.msg);
    }
    ck_assert_uint_eq(tiers(s.c).sessions_lost, 0);
    tt_seqs_done(&s);
}
END_TEST

START_TEST(test_a_directory_serves_one_worker_of_one_model)
{
    cu_server other;
    tt_must_mkdir(dir);
    tt_must_start(dir, "256Ki", sync_flags);
    /* a second attnd on the same directory is refused (it exits 1) */
    const char *const same[] = {"--model", "tiny-gqa", "--page-size", "16", "--kv-dir", dir,
                                "--durable", NULL};
    ck_assert_int_eq(cu_server_start(&other, same), -1);
    ck_assert_int_eq(cu_server_stop(&cu_srv), 0);
    /* another model on its log: refused too */
    const char *const mla[] = {"--model", "tiny-mla", "--kv-dir", dir, "--durable", NULL};
    ck_assert_int_eq(cu_server_start(&other, mla), -1);
    /* nor may a worker that is not durable overwrite it */
    const char *const plain[] = {"--model", "tiny-gqa", "--page-size", "16", "--kv-dir", dir,
                                 NULL};
    ck_assert_int_eq(cu_server_start(&other, plain), -1);
}
END_TEST

static Suite *durable_suite(void)
{
    Suite *su = suite_create("tiers_durable");
    TCase *tc = tcase_create("durable");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_sessions_keep_their_ids_and_kv_across_restarts);
    tcase_add_test(tc, test_a_session_created_right_after_a_start_survives_kill_9);
    tcase_add_test(tc, test_kill_9_at_many_points_loses_no_acknowledged_append);
    tcase_add_test(tc, test_a_torn_log_tail_is_cut_and_never_served);
    tcase_add_test(tc, test_a_page_corrupted_while_down_loses_only_its_session);
    tcase_add_test(tc, test_the_reply_says_how_a_change_is_durable);
    tcase_add_test(tc, test_batch_mode_keeps_what_it_acknowledged_across_a_clean_restart);
    tcase_add_test(tc, test_batch_mode_keeps_what_it_acknowledged_across_kill_9_after_the_window);
    tcase_add_test(tc, test_checkpoints_keep_the_log_small);
    tcase_add_test(tc, test_a_full_disk_refuses_appends_and_a_crash_loses_none_acknowledged);
    tcase_add_test(tc, test_a_directory_serves_one_worker_of_one_model);
    suite_add_tcase(su, tc);
    return su;
}

int main(void)
{
    SRunner *sr = srunner_create(durable_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
