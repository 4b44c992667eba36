/* The engine's tier below memory and its durability: setting them up from
 * the engine's config, taking them down, the engine's records in the
 * write-ahead log, and their figures (TIERS.md).
 *
 * Set-up order (attnd_engine_create, after the pool and the session
 * table): the directory is made and locked (one attnd per kv_dir: DIR/lock,
 * flock), the store opened; with durability, recovery rebuilds the
 * sessions of DIR's checkpoint and log (recover.c), the log is opened at
 * the LSN where the old one ended, and a first checkpoint makes the
 * recovered state its own (the old segments go); then the checkpointer
 * and the mover start. Without durability a kv_dir that holds a durable
 * store is refused rather than overwritten.
 *
 * Log records: a change is logged while its sessions are locked, in the
 * order it is applied (so a checkpoint that locks a session sees exactly
 * the changes logged before), and waited for (sync mode) only after the
 * locks are released: the fdatasync of one call overlaps the next calls'
 * work, and concurrent calls share it. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "attnd_assert.h"
#include "backend.h"
#include "attnd_log.h"
#include "sparse.h"
#include "tier_int.h"

attnd_status attnd__dir_lock(const char *dir, int *fd_p, attnd_error *err)
{
    char path[PATH_MAX], pid[32];
    snprintf(path, sizeof path, "%s/lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION, "kv-dir: cannot open %s: %s",
                               path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        close(fd);
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                               "kv-dir: %s is in use by another attnd (pid %s)", dir,
                               pid[0] ? pid : "?");
    }
    int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        /* the pid is for people; the lock is what counts */
    }
    *fd_p = fd;
    return ATTND_OK;
}

/* Does dir hold a durable store (a checkpoint or log segments)? */
static int has_durable_store(const char *dir)
{
    char path[PATH_MAX];
    struct stat sb;
    snprintf(path, sizeof path, "%s/checkpoint", dir);
    if (stat(path, &sb) == 0)
        return 1;
    snprintf(path, sizeof path, "%s/wal", dir);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    int found = 0;
    for (struct dirent *de; !found && (de = readdir(d));)
        found = strstr(de->d_name, ".log") != NULL;
    closedir(d);
    return found;
}

static void fill_fingerprint(const attnd_engine *e, const attnd_engine_config *cfg, size_t slot_bytes,
                             attnd__fingerprint *fp)
{
    memset(fp, 0, sizeof *fp);
    snprintf(fp->model, sizeof fp->model, "%s", e->model.name);
    fp->n_layers = (uint32_t)e->model.n_layers;
    fp->page_size = (uint32_t)e->layout.page_size;
    fp->entry_bytes = (uint32_t)e->entry_bytes;
    fp->page_bytes = (uint32_t)e->pool.page_bytes;
    fp->slot_bytes = (uint32_t)slot_bytes;
    fp->kv_dtype = (uint32_t)e->model.kv_dtype;
    fp->shard = cfg->shard_tag;
}

static attnd_status check_config(const attnd_engine *e, const attnd_engine_config *cfg,
                                 attnd_error *err)
{
    /* (a host tier below the CPU's own pool is allowed here, for tests of
     * the machinery; the service refuses --kv-host without --device cuda) */
    if (cfg->kv_host && cfg->kv_dir[0] && cfg->durable)
        return attnd_error_set(err, ATTND_ERR_UNIMPLEMENTED,
                               "kv-host: with --kv-dir and --durable; a durable worker keeps "
                               "its pages on disk alone for now (TIERS.md, \"Three levels\")");
    if (cfg->durable && !cfg->kv_dir[0])
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "durable: needs --kv-dir (the log and checkpoints live there)");
    /* a segment's buffers (a quarter of it) must hold two records of a page */
    uint64_t least = 16 * (e->pool.page_bytes + 4096);
    least = least > (1u << 20) ? least : (1u << 20);
    if (cfg->durable && cfg->wal_segment && cfg->wal_segment < least)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "durable-segment: %llu bytes; at least %llu are needed (1 MiB, "
                               "and 16 KV pages of %zu bytes)",
                               (unsigned long long)cfg->wal_segment, (unsigned long long)least,
                               e->pool.page_bytes);
    return ATTND_OK;
}

attnd_status attnd__engine_tiers_open(attnd_engine *e, const attnd_engine_config *cfg,
                                      attnd_error *err)
{
    attnd__tier_cfg tc = {0};
    attnd_status st;
    uint64_t next_lsn = 0;

    if ((st = check_config(e, cfg, err)) || (!cfg->kv_dir[0] && !cfg->kv_host))
        return st;
    tc.kind = !cfg->kv_dir[0] ? ATTND__STORE_HOST
              : cfg->kv_host  ? ATTND__STORE_CHAIN /* memory -> host RAM -> disk */
                              : ATTND__STORE_DISK;
    tc.dir = cfg->kv_dir;
    tc.bytes = cfg->kv_dir[0] ? (cfg->kv_disk ? cfg->kv_disk : 4 * cfg->kv_memory) : cfg->kv_host;
    tc.host_bytes = cfg->kv_host;
    tc.keep_copies = cfg->durable != ATTND_ENGINE_DURABLE_OFF;
    tc.depth = cfg->kv_io_depth;
    tc.prefetch = cfg->kv_prefetch;
    int lock_fd = -1;
    if (tc.kind != ATTND__STORE_HOST) {
        if (mkdir(cfg->kv_dir, 0755) != 0 && errno != EEXIST)
            return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                                   "kv-dir: cannot make %s: %s", cfg->kv_dir, strerror(errno));
        if ((st = attnd__dir_lock(cfg->kv_dir, &lock_fd, err)))
            return st;
        if (!cfg->durable && has_durable_store(cfg->kv_dir)) {
            close(lock_fd);
            return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                                   "kv-dir: %s holds a durable store (a checkpoint or log "
                                   "segments); start with --durable to recover it, or remove it",
                                   cfg->kv_dir);
        }
    }
    if ((st = attnd__tier_create(e, &tc, &e->tier, err))) {
        if (lock_fd >= 0)
            close(lock_fd);
        return st;
    }
    e->tier->lock_fd = lock_fd;
    if (cfg->durable) {
        attnd__dur *d = calloc(1, sizeof *d);
        if (!d) {
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "durable: out of memory");
            goto err_tier;
        }
        e->dur = d;
        snprintf(d->dir, sizeof d->dir, "%s", cfg->kv_dir);
        d->mode = cfg->durable;
        d->window_ms = cfg->durable_window_ms > 0 ? cfg->durable_window_ms : 1;
        d->seg_bytes = cfg->wal_segment ? cfg->wal_segment : (uint64_t)64 << 20;
        d->ckpt_bytes = cfg->checkpoint_bytes ? cfg->checkpoint_bytes : (uint64_t)256 << 20;
        pthread_mutex_init(&d->mu, NULL);
        pthread_mutex_init(&d->cv_mu, NULL);
        pthread_cond_init(&d->cv, NULL);
        fill_fingerprint(e, cfg, e->tier->slot_bytes, &d->fp);
        e->recovering = 1;
        st = attnd__recover(e, &next_lsn, err);
        e->recovering = 0;
        if (st)
            goto err_tier;
        if ((st = attnd__wal_open(d->dir, &d->fp, d->seg_bytes, d->mode, d->window_ms, next_lsn,
                                  &d->wal, err)) ||
            (st = attnd__ckpt_run(e, err)) || (st = attnd__ckpt_start(e, err)))
            goto err_tier;
    }
    if ((st = attnd__tier_start(e->tier, err)))
        goto err_tier;
    return ATTND_OK;

err_tier:
    attnd__engine_tiers_close(e);
    /* recovered sessions go with the table (the caller cleans it up) */
    return st;
}

void attnd__engine_tiers_close(attnd_engine *e)
{
    attnd_error err;
    if (e->dur)
        attnd__ckpt_stop(e);
    if (e->tier)
        attnd__tier_stop(e->tier);
    if (e->dur && e->dur->wal) {
        if (attnd__ckpt_run(e, &err))
            attnd_log_warn("durable", "the last checkpoint failed (%s); the log holds "
                                      "everything, the next start replays it", err.msg);
        attnd__wal_close(e->dur->wal);
        e->dur->wal = NULL;
    }
}

void attnd__engine_tiers_free(attnd_engine *e)
{
    if (e->dur) {
        pthread_mutex_destroy(&e->dur->mu);
        pthread_mutex_destroy(&e->dur->cv_mu);
        pthread_cond_destroy(&e->dur->cv);
        free(e->dur->man);
        free(e->dur);
        e->dur = NULL;
    }
    if (e->tier) {
        e->pool.tier = NULL;
        attnd__tier_destroy(e->tier);
        e->tier = NULL;
    }
}

void attnd__engine_tiers_stats(attnd_engine *e, attnd_engine_stats *st)
{
    int64_t held, cap;
    attnd_kv_pool_logical(&e->pool, &held, &cap);
    st->pages_held = (uint64_t)held;
    st->pages_capacity = (uint64_t)cap;
    attnd__tier *t = e->tier;
    if (t) {
        int64_t used, limit;
        attnd__tier_slot_counts(t, &used, &limit);
        snprintf(st->below, sizeof st->below, "%s",
                 t->kind == ATTND__STORE_DISK   ? "disk"
                 : t->kind == ATTND__STORE_HOST ? "host"
                                                : "chain");
        st->below_slots = (uint64_t)limit;
        st->below_slots_used = (uint64_t)used;
        st->below_slot_bytes = t->slot_bytes;
        st->pages_moved_down = atomic_load(&t->n_out);
        st->pages_moved_up = atomic_load(&t->n_in);
        st->pages_prefetched = atomic_load(&t->n_prefetched);
        st->load_waits = atomic_load(&t->n_waits);
        st->pages_bad = atomic_load(&t->n_bad);
        st->write_failures = atomic_load(&t->n_write_err);
    }
    attnd__dur *d = e->dur;
    if (d) {
        st->durable = d->mode;
        st->durable_window_ms = d->mode == ATTND_ENGINE_DURABLE_BATCH ? (uint32_t)d->window_ms : 0;
        if (d->wal)
            attnd__wal_counts(d->wal, &st->wal_durable_lsn, &st->wal_bytes, &st->wal_syncs);
        st->checkpoints = atomic_load(&d->n_ckpt);
        st->sessions_recovered = atomic_load(&d->n_recovered);
        st->sessions_lost = atomic_load(&d->n_lost);
    }
}

attnd_status attnd_engine_session_bytes(attnd_engine *e, const attnd_session_id *id,
                                        uint64_t *memory_p, uint64_t *below_p, attnd_error *err)
{
    attnd__session *s = attnd__session_get(&e->table, id);
    uint64_t mem = 0, below = 0;
    if (!s)
        return attnd_error_set(err, ATTND_ERR_NOT_FOUND, "session_id: no such session");
    pthread_mutex_lock(&s->mu);
    for (int32_t l = 0; l < s->n_layers; l++) {
        int32_t np = attnd__session_layer_pages(s, l);
        for (int32_t j = 0; j < np; j++) {
            mem += s->pages[l][j] >= 0;
            below += s->slots && s->slots[l][j] >= 0;
        }
    }
    pthread_mutex_unlock(&s->mu);
    attnd__session_put(&e->table, &e->pool, s);
    *memory_p = mem * e->pool.page_bytes;
    *below_p = below * (e->tier ? e->tier->slot_bytes : 0);
    return ATTND_OK;
}

typedef struct each_arg {
    void (*f)(void *, const attnd_session_id *, int32_t, const uint64_t *, int);
    void *arg;
    uint64_t *ulen;
} each_arg;

static int each_one(attnd__session *s, void *arg)
{
    each_arg *a = arg;
    pthread_mutex_lock(&s->mu);
    int skip = s->closed, lost = s->lost != NULL;
    memcpy(a->ulen, s->ulen, sizeof *a->ulen * (size_t)s->n_layers);
    pthread_mutex_unlock(&s->mu);
    if (!skip)
        a->f(a->arg, &s->id, s->n_layers, a->ulen, lost);
    return 0;
}

void attnd_engine_sessions(attnd_engine *e,
                           void (*f)(void *arg, const attnd_session_id *id, int32_t n_layers,
                                     const uint64_t *ulen, int lost),
                           void *arg)
{
    each_arg a = {f, arg, calloc((size_t)e->model.n_layers, sizeof(uint64_t))};
    if (!a.ulen)
        return;
    attnd__session_each(&e->table, &e->pool, 0, each_one, &a);
    free(a.ulen);
}

/* ---- pages in and out ---------------------------------------------------------- */

attnd_status attnd__engine_page_out(attnd_engine *e, int32_t page, void *dst, attnd_error *err)
{
    if (e->gpu)
        return attnd__gpu_page_read(e->gpu, page, dst, err);
    memcpy(dst, attnd_kv_pool_page(&e->pool, page), e->pool.page_bytes);
    return ATTND_OK;
}

attnd_status attnd__engine_page_in(attnd_engine *e, int32_t page, const void *src,
                                   attnd_error *err)
{
    if (e->gpu)
        return attnd__gpu_page_write(e->gpu, page, src, err);
    memcpy(attnd_kv_pool_page(&e->pool, page), src, e->pool.page_bytes);
    return ATTND_OK;
}

/* ---- log records ------------------------------------------------------------- */

static attnd__wal *log_of(const attnd_engine *e)
{
    return e->dur && !e->recovering ? e->dur->wal : NULL;
}

/* The log has grown by ckpt_bytes since the last checkpoint: wake the
 * checkpointer now rather than at its next look (once per checkpoint). */
static void nudge(attnd__dur *d, uint64_t end)
{
    if (end - atomic_load_explicit(&d->last_ckpt_lsn, memory_order_relaxed) < d->ckpt_bytes ||
        atomic_load_explicit(&d->nudged, memory_order_relaxed) ||
        atomic_exchange(&d->nudged, 1))
        return;
    pthread_mutex_lock(&d->cv_mu);
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->cv_mu);
}

attnd_status attnd__engine_log_data(attnd_engine *e, attnd__wtxn *tx, const attnd_session_id *id,
                                    int32_t layer, uint64_t start, uint64_t n, uint64_t ulen,
                                    attnd_dtype dtype, const void *kv, uint64_t *end_p,
                                    attnd_error *err)
{
    attnd__wal *w = log_of(e);
    if (!w)
        return ATTND_OK;
    const size_t most = (attnd__wal_max_payload(w) - sizeof(attnd__wrec_data)) / e->entry_bytes;
    const size_t src_entry = (size_t)e->entry_elems * attnd_dtype_size(dtype);
    uint64_t done = 0;
    do { /* pieces that fit a record; a note (n = 0) is one record */
        uint64_t m = n - done < most ? n - done : most;
        attnd__wrec r;
        attnd_status st = attnd__wal_reserve(w, ATTND__WREC_DATA, tx,
                                             sizeof(attnd__wrec_data) + m * e->entry_bytes, &r,
                                             err);
        if (st)
            return st;
        attnd__wrec_data *d = r.payload;
        memset(d, 0, sizeof *d);
        memcpy(d->id, id->bytes, sizeof d->id);
        d->layer = (uint32_t)layer;
        d->start = start + done;
        d->n = m;
        d->ulen = ulen;
        if (m)
            attnd_dtype_convert(e->model.kv_dtype, d + 1, dtype,
                                (const char *)kv + done * src_entry,
                                (size_t)m * (size_t)e->entry_elems);
        attnd__wal_finish(w, &r);
        *end_p = r.end;
        done += m;
    } while (done < n);
    nudge(e->dur, *end_p);
    return ATTND_OK;
}

attnd_status attnd__engine_log_mark(attnd_engine *e, attnd__wtxn *tx, uint16_t type,
                                    uint64_t *end_p, attnd_error *err)
{
    attnd__wal *w = log_of(e);
    attnd__wrec r;
    if (!w)
        return ATTND_OK;
    attnd_status st = attnd__wal_reserve(w, type, tx, 0, &r, err);
    if (st)
        return st;
    attnd__wal_finish(w, &r);
    *end_p = r.end;
    return ATTND_OK;
}

attnd_status attnd__engine_log_session(attnd_engine *e, uint16_t type, const attnd_session_id *id,
                                       uint64_t max_tokens, attnd_error *err)
{
    attnd__wal *w = log_of(e);
    attnd__wrec r;
    if (!w)
        return ATTND_OK;
    attnd_status st = attnd__wal_reserve(w, type, NULL, 24, &r, err);
    if (st)
        return st;
    memcpy(r.payload, id->bytes, 16);
    memcpy((char *)r.payload + 16, &max_tokens, 8);
    attnd__wal_finish(w, &r);
    return attnd__engine_log_wait(e, r.end, err);
}

attnd_status attnd__engine_log_create(attnd_engine *e, const attnd__session *s,
                                      attnd_error *err)
{
    attnd__wal *w = log_of(e);
    attnd__wrec r;
    if (!w)
        return ATTND_OK;
    size_t pol = attnd__sparse_encode(s, NULL);
    if (40 + pol > attnd__wal_max_payload(w))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "policy_table: %u rules take %zu bytes, more than a log record "
                               "holds (%zu; --durable-segment)",
                               s->sparse ? s->sparse->n_rules : 0, pol,
                               attnd__wal_max_payload(w) - 40);
    attnd_status st = attnd__wal_reserve(w, ATTND__WREC_CREATE, NULL, 40 + pol, &r, err);
    if (st)
        return st;
    /* id, max_tokens, owner, policy bytes, 0, the policy */
    unsigned char *b = r.payload;
    uint64_t owner = s->owner ? s->owner->tag : 0;
    uint32_t n = (uint32_t)pol, zero = 0;
    memcpy(b, s->id.bytes, 16);
    memcpy(b + 16, &s->max_tokens, 8);
    memcpy(b + 24, &owner, 8);
    memcpy(b + 32, &n, 4);
    memcpy(b + 36, &zero, 4);
    attnd__sparse_encode(s, b + 40);
    attnd__wal_finish(w, &r);
    return attnd__engine_log_wait(e, r.end, err);
}

attnd_status attnd__engine_log_wait(attnd_engine *e, uint64_t end, attnd_error *err)
{
    attnd__wal *w = log_of(e);
    if (!w || !end || e->dur->mode != ATTND_ENGINE_DURABLE_SYNC)
        return ATTND_OK;
    return attnd__wal_wait(w, end, err);
}
