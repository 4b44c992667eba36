/* Checkpoints of a durable engine: the manifest (DIR/checkpoint) that says
 * where every session's pages are, so that the log before it can go.
 *
 * A checkpoint (the checkpointer thread, when the log has grown by
 * checkpoint_bytes since the last one or slots wait on it; start-up after
 * recovery; shutdown):
 *   1. starts a new log segment; its first LSN is the checkpoint's, and the
 *      log is replayed from there, or from the first record of the oldest
 *      transaction still open (an AppendKV stream staging), if older;
 *   2. swaps the tier's pending-slot lists: slots released before now are
 *      in no session's tables, so the new manifest cannot name them;
 *   3. visits every session under its lock: writes the full pages that
 *      have no slot copy to new slots (full pages never change, so a copy
 *      is good for good), and puts the last, partial page of each layer
 *      (and any full page that found no slot) into the log as a PAGE
 *      record; then records the session: id, max_tokens, lost or not, its
 *      owner and sparse policy, and per layer its length, user length,
 *      where streaming's freed pages end, and each page's slot and CRC
 *      (slot -1: in the log after the checkpoint LSN, or freed);
 *   4. waits for the log (the PAGE records) and fdatasyncs the slot file;
 *   5. writes the manifest to checkpoint.tmp, fsyncs it, renames it over
 *      checkpoint and fsyncs the directory: the atomic switch;
 *   6. frees the pending slots of step 2 and deletes the log segments that
 *      end before the replay point.
 * So the log holds at most what was written since the previous checkpoint
 * (plus one partial page per layer), and the disk every full page once.
 * A crash anywhere before 5 leaves the previous checkpoint and a log that
 * still reaches back to it. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "attnd_assert.h"
#include "attnd_log.h"
#include "sparse.h"
#include "tier_int.h"


/* Append n bytes of p (NULL: zeros) to the manifest being built. */
static attnd_status man_put(attnd__dur *d, const void *p, size_t n, attnd_error *err)
{
    if (d->man_len + n > d->man_cap) {
        size_t c = d->man_cap ? d->man_cap : 65536;
        while (c < d->man_len + n)
            c *= 2;
        unsigned char *m = realloc(d->man, c);
        if (!m)
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "checkpoint: no memory for a manifest of %zu bytes", c);
        d->man = m;
        d->man_cap = c;
    }
    if (p)
        memcpy(d->man + d->man_len, p, n);
    else /* room, zeroed, for the caller to fill */
        memset(d->man + d->man_len, 0, n);
    d->man_len += n;
    return ATTND_OK;
}

typedef struct ckpt_run_ctx {
    attnd_engine *e;
    uint64_t n_sessions;
    attnd_status st;
    attnd_error *err;
} ckpt_run_ctx;

/* Step 3a: full pages of resident layers without a slot copy get one. */
static void copy_full_pages(attnd_engine *e, attnd__tio *io, attnd__session *s)
{
    attnd__tier *t = e->tier;
    attnd__tio_op *ops;
    attnd_error err;
    int64_t k = 0, n = 0;
    for (int32_t l = 0; l < s->n_layers; l++)
        if (s->where[l] != ATTND__LAYER_LOADING)
            n += (int64_t)(s->len[l] / (uint64_t)s->page_size);
    if (n == 0 || attnd__tio_ops(io, n, &ops, &err))
        return;
    for (int32_t l = 0; l < s->n_layers; l++) {
        if (s->where[l] == ATTND__LAYER_LOADING) /* below: every page has a slot */
            continue;
        int32_t full = (int32_t)(s->len[l] / (uint64_t)s->page_size);
        for (int32_t j = 0; j < full; j++)
            if (s->pages[l][j] >= 0 && s->slots[l][j] < 0)
                ops[k++] = (attnd__tio_op){.slot = -1, .mem = s->pages[l][j], .id = s->id,
                                           .layer = l, .page = j, .tokens = s->page_size};
    }
    int64_t got = 0;
    for (; got < k; got++) /* as many as there are slots; the rest go to the log */
        if (attnd__tier_slots_alloc(t, 1, &ops[got].slot, &err))
            break;
    if (got == 0)
        return;
    attnd__tio_write(io, ops, got);
    for (int64_t i = 0; i < got; i++) {
        if (ops[i].res == 0)
            s->slots[ops[i].layer][ops[i].page] = (int32_t)ops[i].slot;
        else
            attnd__tier_slot_release(t, ops[i].slot);
    }
}

/* Step 3b: a page with no slot copy into the log. */
static attnd_status page_to_log(attnd_engine *e, attnd__session *s, int32_t l, int32_t j,
                                attnd_error *err)
{
    attnd__wal *w = e->dur->wal;
    attnd__wrec r;
    attnd_status st = attnd__wal_reserve(w, ATTND__WREC_PAGE, NULL,
                                         sizeof(attnd__wrec_page) + e->pool.page_bytes, &r, err);
    if (st)
        return st;
    attnd__wrec_page *p = r.payload;
    memset(p, 0, sizeof *p);
    memcpy(p->id, s->id.bytes, sizeof p->id);
    p->layer = (uint32_t)l;
    p->page = (uint32_t)j;
    uint64_t have = s->len[l] - (uint64_t)j * (uint64_t)s->page_size;
    p->tokens = (uint32_t)(have < (uint64_t)s->page_size ? have : (uint64_t)s->page_size);
    st = attnd__engine_page_out(e, s->pages[l][j], p + 1, err);
    if (st) /* the record goes out anyway (a reservation cannot be taken
               back), marked bad: recovery treats the page as missing */
        r.hdr->flags = 1;
    attnd__wal_finish(w, &r);
    return st;
}

static int ckpt_session(attnd__session *s, void *arg)
{
    ckpt_run_ctx *c = arg;
    attnd_engine *e = c->e;
    attnd__dur *d = e->dur;
    attnd__tier *t = e->tier;
    attnd_status st = ATTND_OK;

    /* its lock first, then an I/O context: a thread never waits for a
     * session's lock while it holds a context (tier.c) */
    pthread_mutex_lock(&s->mu);
    if (s->closed)
        goto out;
    if (!s->lost) {
        attnd__tio *io = attnd__tio_get(t);
        copy_full_pages(e, io, s);
        attnd__tio_put(t, io);
    }
    uint32_t flags = s->lost ? 1 : 0, msg_len = s->lost ? (uint32_t)strlen(s->lost) : 0;
    uint64_t owner = s->owner ? s->owner->tag : 0;
    uint32_t pol = (uint32_t)attnd__sparse_encode(s, NULL), zero = 0;
    char pad[8] = {0};
    if ((st = man_put(d, s->id.bytes, 16, c->err)) ||
        (st = man_put(d, &s->max_tokens, 8, c->err)) || (st = man_put(d, &flags, 4, c->err)) ||
        (st = man_put(d, &msg_len, 4, c->err)) ||
        (msg_len && (st = man_put(d, s->lost, msg_len, c->err))) ||
        (st = man_put(d, pad, (8 - msg_len % 8) % 8, c->err)) ||
        (st = man_put(d, &owner, 8, c->err)) || (st = man_put(d, &pol, 4, c->err)) ||
        (st = man_put(d, &zero, 4, c->err)))
        goto out;
    if (pol) { /* the policy, encoded in place */
        if ((st = man_put(d, NULL, (pol + 7) & ~7u, c->err)))
            goto out;
        attnd__sparse_encode(s, d->man + d->man_len - ((pol + 7) & ~7u));
    }
    for (int32_t l = 0; l < s->n_layers; l++) {
        uint32_t np = s->lost ? 0 : (uint32_t)attnd__session_layer_pages(s, l);
        uint32_t hole_end = s->lost || !s->sparse ? 0 : (uint32_t)s->sparse->hole_end[l];
        uint64_t len = s->lost ? 0 : s->len[l];
        if ((st = man_put(d, &len, 8, c->err)) || (st = man_put(d, &s->ulen[l], 8, c->err)) ||
            (st = man_put(d, &np, 4, c->err)) || (st = man_put(d, &hole_end, 4, c->err)))
            goto out;
        for (uint32_t j = 0; j < np; j++) {
            int32_t slot = s->slots[l][j];
            uint32_t crc = 0;
            if (attnd__sparse_gone(s, l, j)) { /* streaming freed it: held nowhere */
                slot = -1;
            } else if (slot < 0) { /* in memory, no copy: into the log */
                ATTND_ASSERT(s->pages[l][j] >= 0);
                if ((st = page_to_log(e, s, l, (int32_t)j, c->err)))
                    goto out;
            } else {
                crc = t->crc[slot];
            }
            if ((st = man_put(d, &slot, 4, c->err)) || (st = man_put(d, &crc, 4, c->err)))
                goto out;
        }
    }
    c->n_sessions++;
out:
    pthread_mutex_unlock(&s->mu);
    c->st = st;
    return st != ATTND_OK;
}

/* Write the manifest atomically: tmp, fsync, rename, fsync the directory. */
static attnd_status man_write(attnd__dur *d, attnd_error *err)
{
    char tmp[PATH_MAX], path[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/checkpoint.tmp", d->dir);
    snprintf(path, sizeof path, "%s/checkpoint", d->dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "checkpoint: cannot write %s: %s",
                               tmp, strerror(errno));
    size_t done = 0;
    while (done < d->man_len) {
        ssize_t n = write(fd, d->man + done, d->man_len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    int bad = done != d->man_len || fsync(fd) != 0;
    int e = errno;
    close(fd);
    if (bad || rename(tmp, path) != 0) {
        e = bad ? e : errno;
        unlink(tmp);
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "checkpoint: cannot write %s: %s",
                               path, strerror(e ? e : ENOSPC));
    }
    int dfd = open(d->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return ATTND_OK;
}

attnd_status attnd__ckpt_run(attnd_engine *e, attnd_error *err)
{
    attnd__dur *d = e->dur;
    attnd__tier *t = e->tier;
    attnd_status st;
    uint64_t first, oldest;
    int gen;

    pthread_mutex_lock(&d->mu);
    if ((st = attnd__wal_rotate(d->wal, &first, &oldest, err)))
        goto out;
    attnd__tier_pending_swap(t, &gen);
    d->man_len = 0;
    attnd__ckpt_hdr h;
    memset(&h, 0, sizeof h);
    if ((st = man_put(d, &h, sizeof h, err)))
        goto out;
    ckpt_run_ctx c = {.e = e, .err = err};
    attnd__session_each(&e->table, &e->pool, 0, ckpt_session, &c);
    st = c.st;
    attnd__tio *io = attnd__tio_get(t);
    int sr = st ? 0 : attnd__tio_sync(io);
    attnd__tio_put(t, io);
    if (st)
        goto out;
    if (sr) {
        st = attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "checkpoint: fdatasync of %s: %s",
                             t->path, strerror(-sr));
        goto out;
    }
    if ((st = attnd__wal_wait(d->wal, attnd__wal_next_lsn(d->wal), err)))
        goto out;
    h.magic = ATTND__CKPT_MAGIC;
    h.version = ATTND__CKPT_VERSION;
    h.hdr_bytes = sizeof h;
    h.fp = d->fp;
    h.ckpt_lsn = first;
    h.replay_from = oldest;
    h.n_sessions = c.n_sessions;
    memcpy(d->man, &h, sizeof h);
    uint32_t tail[2] = {attnd__crc32c(0, d->man, d->man_len), ATTND__CKPT_TAIL};
    if ((st = man_put(d, tail, sizeof tail, err)) || (st = man_write(d, err)))
        goto out;
    attnd__tier_pending_free(t, gen);
    attnd__wal_trim(d->wal, oldest);
    d->last_ckpt_lsn = first;
    atomic_fetch_add(&d->n_ckpt, 1);
out:
    if (st) {
        atomic_fetch_add(&d->n_ckpt_fail, 1);
        snprintf(d->ckpt_err, sizeof d->ckpt_err, "%s", err->msg);
    }
    pthread_mutex_unlock(&d->mu);
    return st;
}

static void *ckpt_main(void *arg)
{
    attnd_engine *e = arg;
    attnd__dur *d = e->dur;
    attnd__tier *t = e->tier;
    int64_t last_fail_report = 0;

    pthread_mutex_lock(&d->cv_mu);
    while (!d->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&d->cv, &d->cv_mu, &ts);
        if (d->stop)
            break;
        uint64_t grown = attnd__wal_next_lsn(d->wal) - d->last_ckpt_lsn;
        pthread_mutex_lock(&t->slot_mu);
        int64_t pending = t->n_pend[0] + t->n_pend[1], limit = t->limit;
        pthread_mutex_unlock(&t->slot_mu);
        if (grown < d->ckpt_bytes && pending * 8 < limit)
            continue;
        pthread_mutex_unlock(&d->cv_mu);
        attnd_error err;
        atomic_store(&d->nudged, 0);
        if (attnd__ckpt_run(e, &err)) {
            time_t now = time(NULL);
            if (now - last_fail_report >= 10) { /* once in a while, not per try */
                attnd_log_warn("durable", "checkpoint failed: %s", err.msg);
                last_fail_report = now;
            }
        }
        pthread_mutex_lock(&d->cv_mu);
    }
    pthread_mutex_unlock(&d->cv_mu);
    return NULL;
}

attnd_status attnd__ckpt_start(attnd_engine *e, attnd_error *err)
{
    attnd__dur *d = e->dur;
    d->stop = 0;
    int rc = pthread_create(&d->tid, NULL, ckpt_main, e);
    if (rc)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "durable: cannot start the checkpointer: %s", strerror(rc));
    d->running = 1;
    return ATTND_OK;
}

void attnd__ckpt_stop(attnd_engine *e)
{
    attnd__dur *d = e->dur;
    if (!d || !d->running)
        return;
    pthread_mutex_lock(&d->cv_mu);
    d->stop = 1;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->cv_mu);
    pthread_join(d->tid, NULL);
    d->running = 0;
}
