/* Helpers of the KV tier and durability suites (see tiers_testutil.h). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tiers_testutil.h"

void tt_must_mkdir(char *dir)
{
    strcpy(dir, "/tmp/attnd-tiers-XXXXXX");
    ck_assert_msg(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno));
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

void tt_rmdir(const char *dir)
{
    if (dir && dir[0])
        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

tt_suite_cfg tt_suite = {"tiny-gqa", "16", NULL, CU_LSE_BOUND};

void tt_must_start(const char *dir, const char *mem, const char *const *extra)
{
    const char *flags[48];
    int n = 0;
    flags[n++] = "--model";
    flags[n++] = tt_suite.model;
    flags[n++] = "--page-size";
    flags[n++] = tt_suite.page_size;
    flags[n++] = "--kv-memory";
    flags[n++] = mem;
    if (tt_suite.device) {
        flags[n++] = "--device";
        flags[n++] = tt_suite.device;
    }
    if (dir) {
        flags[n++] = "--kv-dir";
        flags[n++] = dir;
    }
    flags[n++] = "--threads";
    flags[n++] = "2";
    for (int i = 0; extra && extra[i] && n < 47; i++)
        flags[n++] = extra[i];
    flags[n] = NULL;
    cu_must_start_list(flags);
}

void tt_kill9(void)
{
    if (cu_srv.pid <= 0)
        return;
    kill(cu_srv.pid, SIGKILL);
    waitpid(cu_srv.pid, NULL, 0);
    cu_srv.pid = 0;
}

void tt_must_reconnect(cu_seqs *s)
{
    if (s->c)
        attnd_client_destroy(s->c);
    s->c = cu_must_connect();
}

attnd_status tt_check_one(cu_seqs *s, uint32_t i, attnd_error *err)
{
    attnd_refcheck_result res = {0};
    for (uint32_t l = 0; l < s->m.n_layers; l++) {
        cu_step st;
        cu_step_make(s, &st, l, i, 1, 1, 0, 1, ATTND_DTYPE_F32);
        attnd_status rc = attnd_client_attend(s->c, &st.a, err);
        if (rc == ATTND_OK && cu_step_commit(s, &st, &res))
            rc = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "check: no memory");
        cu_step_free(&st);
        if (rc)
            return rc;
    }
    if (res.max_err > cu_bound(s->dt))
        return attnd_error_set(err, ATTND_ERR_DATA_LOSS,
                               "session %u: outputs differ from the reference: rel err %g", i,
                               res.max_err);
    return ATTND_OK;
}

void tt_must_check_all(cu_seqs *s, uint32_t batch)
{
    attnd_refcheck_result res = {0};
    attnd_error err;
    attnd_error_clear(&err);
    for (uint32_t l = 0; l < s->m.n_layers; l++)
        for (uint32_t first = 0; first < s->n; first += batch) {
            uint32_t n = s->n - first < batch ? s->n - first : batch;
            cu_step st;
            /* float32 outputs: the bound is the KV's rounding only */
            cu_step_make(s, &st, l, first, n, 1, 0, 1, ATTND_DTYPE_F32);
            attnd_status rc = attnd_client_attend(s->c, &st.a, &err);
            ck_assert_msg(rc == ATTND_OK, "attend layer %u sessions [%u, %u): %s: %s", l, first,
                          first + n, attnd_status_string(rc), err.msg);
            ck_assert_int_eq(cu_step_commit(s, &st, &res), 0);
            cu_step_free(&st);
        }
    ck_assert_uint_gt(res.rows, 0);
    ck_assert_msg(res.max_err <= cu_bound(s->dt), "max rel err %g (bound %g)", res.max_err,
                  cu_bound(s->dt));
    ck_assert_msg(res.max_lse_err <= tt_suite.lse_bound, "max lse err %g (bound %g)",
                  res.max_lse_err, tt_suite.lse_bound);
}

void tt_must_append_layer(cu_seqs *s, uint32_t i, uint32_t layer, uint32_t n)
{
    const size_t eb = (size_t)s->m.kv_token_elems * attnd_dtype_size(s->dt);
    const size_t n_ch = (n + 255) / 256;
    unsigned char *data = malloc((size_t)n * eb + 1);
    attnd_kv_chunk *ch = calloc(n_ch + 1, sizeof *ch);
    attnd_error err;
    ck_assert(data && ch);
    attnd_rng_fill(&s->rng, s->dt, data, (size_t)n * s->m.kv_token_elems);
    uint64_t start = attnd_refcheck_len(&s->rc, i, layer);
    for (size_t k = 0; k < n_ch; k++) {
        uint32_t t = (uint32_t)k * 256, c = n - t < 256 ? n - t : 256;
        ch[k] = (attnd_kv_chunk){.session = s->ids[i], .layer = layer, .start = start + t,
                                 .n_tokens = c, .kv_token_elems = s->m.kv_token_elems,
                                 .dtype = s->dt, .data = data + (size_t)t * eb};
    }
    attnd_error_clear(&err);
    attnd_status st = attnd_client_append_kv(s->c, ch, n_ch, NULL, &err);
    ck_assert_msg(st == ATTND_OK, "append %u tokens to layer %u of session %u: %s: %s", n, layer,
                  i, attnd_status_string(st), err.msg);
    ck_assert_int_eq(attnd_refcheck_append(&s->rc, i, layer, n, s->dt, data), 0);
    free(ch);
    free(data);
}

void tt_must_check_reported(cu_seqs *s, const cu_step *st, const attnd_sparse_args *sp,
                            uint32_t layer, uint32_t ps)
{
    const attnd_model_info *m = &s->m;
    const uint32_t hkv = m->n_kv_heads, G = m->n_q_heads / hkv;
    const size_t entry = (size_t)m->kv_token_elems * attnd_dtype_size(m->kv_dtype);
    const size_t qrow = (size_t)m->n_q_heads * m->d_k * attnd_dtype_size(s->dt);
    const size_t orow = (size_t)m->n_q_heads * m->d_v * attnd_dtype_size(ATTND_DTYPE_F32);
    attnd_refcheck_result res = {0};
    for (uint32_t i = 0; i < st->a.n_seqs; i++) {
        const attnd_refcheck_seq *src = &s->rc.seqs[(size_t)(st->first + i) * m->n_layers + layer];
        for (uint32_t h = 0; h < hkv; h++) {
            uint32_t k = i * sp->chosen_groups + (sp->chosen_groups == 1 ? 0 : h);
            attnd_refcheck one;
            ck_assert_int_eq(attnd_refcheck_init(&one, m, 1), 0);
            uint64_t tokens = 0;
            for (uint32_t j = sp->chosen_indptr[k]; j < sp->chosen_indptr[k + 1]; j++) {
                uint64_t t0 = sp->chosen[j] * ps, t1 = t0 + ps < src->len ? t0 + ps : src->len;
                ck_assert_int_eq(attnd_refcheck_append(&one, 0, layer, t1 - t0, m->kv_dtype,
                                                       src->data + t0 * entry), 0);
                tokens += t1 - t0;
            }
            ck_assert_int_eq(attnd_refcheck_token(&one, 0, layer, tokens, s->dt,
                                                  (const char *)st->q + i * qrow, ATTND_DTYPE_F32,
                                                  (const char *)st->out + i * orow, NULL, h * G,
                                                  (h + 1) * G, &res), 0);
            attnd_refcheck_cleanup(&one);
        }
    }
    ck_assert_uint_gt(res.rows, 0);
    ck_assert_msg(res.max_err <= cu_bound(s->dt), "layer %u: rel err %g", layer, res.max_err);
}

void tt_op_stream(cu_seqs *s, tt_op *op, uint32_t first, uint32_t n, uint32_t max_tokens)
{
    const attnd_model_info *m = &s->m;
    const size_t eb = (size_t)m->kv_token_elems * attnd_dtype_size(s->dt);
    size_t cap = (size_t)n * m->n_layers * max_tokens, used = 0;

    memset(op, 0, sizeof *op);
    op->kind = 1;
    op->chunks = calloc(cap, sizeof *op->chunks);
    op->data = malloc(cap * eb + 1);
    ck_assert(op->chunks && op->data);
    attnd_rng_fill(&s->rng, s->dt, op->data, cap * m->kv_token_elems);
    for (uint32_t i = first; i < first + n; i++)
        for (uint32_t l = 0; l < m->n_layers; l++) {
            uint64_t start = attnd_refcheck_len(&s->rc, i, l);
            uint32_t tokens = 1 + (uint32_t)(attnd_rng_next(&s->rng) % max_tokens);
            for (uint32_t t = 0; t < tokens;) {
                uint32_t c = 1 + (uint32_t)(attnd_rng_next(&s->rng) % 24);
                c = c < tokens - t ? c : tokens - t;
                op->chunks[op->n_chunks++] = (attnd_kv_chunk){
                    .session = s->ids[i], .layer = l, .start = start + t, .n_tokens = c,
                    .kv_token_elems = m->kv_token_elems, .dtype = s->dt,
                    .data = op->data + used * eb};
                used += c;
                t += c;
            }
        }
}

void tt_op_attend(cu_seqs *s, tt_op *op, uint32_t layer, uint32_t first, uint32_t n)
{
    memset(op, 0, sizeof *op);
    op->kind = 2;
    cu_step_make(s, &op->step, layer, first, n, 1, 1, 1, ATTND_DTYPE_F32);
}

attnd_status tt_op_send(cu_seqs *s, tt_op *op, attnd_error *err)
{
    if (op->kind == 1)
        return attnd_client_append_kv(s->c, op->chunks, op->n_chunks, NULL, err);
    return attnd_client_attend(s->c, &op->step.a, err);
}

void tt_op_mirror(cu_seqs *s, tt_op *op, int check_outputs)
{
    if (op->kind == 1) {
        for (size_t k = 0; k < op->n_chunks; k++) {
            const attnd_kv_chunk *ch = &op->chunks[k];
            uint32_t seq = 0;
            while (seq < s->n && memcmp(&s->ids[seq], &ch->session, sizeof ch->session))
                seq++;
            ck_assert_int_eq(attnd_refcheck_append(&s->rc, seq, ch->layer, ch->n_tokens, ch->dtype,
                                                   ch->data),
                             0);
        }
        return;
    }
    if (check_outputs) {
        attnd_refcheck_result res = {0};
        ck_assert_int_eq(cu_step_commit(s, &op->step, &res), 0);
        ck_assert_msg(res.max_err <= cu_bound(s->dt), "attend: rel err %g", res.max_err);
        return;
    }
    const attnd_attend_args *a = &op->step.a;
    const size_t eb = (size_t)s->m.kv_token_elems * attnd_dtype_size(s->dt);
    for (uint32_t i = 0; i < a->n_seqs; i++)
        ck_assert_int_eq(attnd_refcheck_append(&s->rc, op->step.first + i, a->layer, 1, s->dt,
                                               (const unsigned char *)op->step.kv + i * eb),
                         0);
}

void tt_op_free(tt_op *op)
{
    free(op->chunks);
    free(op->data);
    if (op->kind == 2)
        cu_step_free(&op->step);
    memset(op, 0, sizeof *op);
}

void tt_must_restart(cu_seqs *s, const char *dir, const char *mem, const char *const *extra)
{
    tt_kill9();
    tt_must_start(dir, mem, extra);
    tt_must_reconnect(s);
}

void tt_seqs_done(cu_seqs *s)
{
    attnd_client *c = s->c;
    cu_seqs_close(s);
    attnd_client_destroy(c);
}

/* ---- the crash loop ---------------------------------------------------------- */

typedef struct killer {
    pthread_t tid;
    pid_t pid;
    int delay_ms;
} killer;

static void *kill_main(void *arg)
{
    killer *k = arg;
    struct timespec ts = {0, (long)k->delay_ms * 1000000L};
    nanosleep(&ts, NULL);
    kill(k->pid, SIGKILL);
    return NULL;
}

void tt_must_cut(cu_seqs *s, tt_op *op, int round, uint32_t max_tokens, int check_outputs)
{
    attnd_error err;
    attnd_status st;
    killer k = {.pid = cu_srv.pid, .delay_ms = 2 + (int)(attnd_rng_next(&s->rng) % 39)};
    ck_assert_int_eq(pthread_create(&k.tid, NULL, kill_main, &k), 0);
    attnd_error_clear(&err);
    for (;;) {
        uint64_t r = attnd_rng_next(&s->rng);
        if (r % 3 == 0)
            tt_op_stream(s, op, (uint32_t)(r >> 8) % (s->n - 1), 2, max_tokens);
        else
            tt_op_attend(s, op, (uint32_t)(r >> 16) % s->m.n_layers, 0, s->n);
        if ((st = tt_op_send(s, op, &err)))
            break;
        tt_op_mirror(s, op, check_outputs);
        tt_op_free(op);
    }
    /* the call was cut by the crash, not refused */
    ck_assert_msg(st == ATTND_ERR_UNAVAILABLE || st == ATTND_ERR_CANCELLED ||
                      st == ATTND_ERR_UNKNOWN || st == ATTND_ERR_INTERNAL,
                  "round %d: %s: %s", round, attnd_status_string(st), err.msg);
    pthread_join(k.tid, NULL);
    tt_kill9(); /* reap it */
}

int tt_must_resend(cu_seqs *s, tt_op *op, int round, int check_outputs)
{
    attnd_error err;
    attnd_status st = tt_op_send(s, op, &err);
    if (st != ATTND_OK)
        ck_assert_msg(st == ATTND_ERR_FAILED_PRECONDITION, "round %d: %s: %s", round,
                      attnd_status_string(st), err.msg);
    tt_op_mirror(s, op, st == ATTND_OK && check_outputs);
    tt_op_free(op);
    return st == ATTND_OK;
}

size_t tt_slots_of(const char *dir, uint64_t slot_bytes, const attnd_session_id *id,
                   uint64_t *offs, size_t max)
{
    char path[512];
    unsigned char hdr[64];
    size_t n = 0;
    snprintf(path, sizeof path, "%s/kv.pages", dir);
    int fd = open(path, O_RDONLY);
    ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
    /* the header: u32 magic "ANKP", u32 crc, id[16], ... (TIERS.md) */
    for (uint64_t off = 0; n < max && pread(fd, hdr, sizeof hdr, (off_t)off) == (ssize_t)sizeof hdr;
         off += slot_bytes) {
        uint32_t magic;
        memcpy(&magic, hdr, 4);
        if (magic == 0x504b4e41u && memcmp(hdr + 8, id->bytes, 16) == 0)
            offs[n++] = off;
    }
    close(fd);
    return n;
}

void tt_must_corrupt(const char *dir, uint64_t off)
{
    char path[512];
    unsigned char b;
    snprintf(path, sizeof path, "%s/kv.pages", dir);
    int fd = open(path, O_RDWR);
    ck_assert_msg(fd >= 0, "open %s: %s", path, strerror(errno));
    /* a byte of the page: past the 4096-byte header block (TIERS.md) */
    ck_assert_int_eq(pread(fd, &b, 1, (off_t)(off + 4096 + 100)), 1);
    b ^= 0x5a;
    ck_assert_int_eq(pwrite(fd, &b, 1, (off_t)(off + 4096 + 100)), 1);
    ck_assert_int_eq(fsync(fd), 0);
    close(fd);
}

const char *tt_hex(const attnd_session_id *id, char buf[33])
{
    for (int i = 0; i < 16; i++)
        snprintf(buf + 2 * i, 3, "%02x", id->bytes[i]);
    return buf;
}
