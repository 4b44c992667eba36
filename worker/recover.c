/* Start-up of a durable engine: the sessions of DIR's checkpoint and log
 * rebuilt (TIERS.md, "Recovery").
 *
 *   1. The manifest (if any) is read and checked (its CRC, the engine's
 *      shape): every session it names is made again under its id, its
 *      layers below memory in the slots it names (each slot claimed with
 *      its CRC), its pages that the checkpoint left in the log marked
 *      missing (slot -1).
 *   2. The log is walked from the manifest's replay point, segment by
 *      segment (each must begin where the previous one's SEGEND said); the
 *      first record that is not whole (wrong magic, LSN or CRC) is the end:
 *      everything after it, a torn write or never acknowledged, is cut off
 *      (the segment truncated there, later segments deleted). A first pass
 *      collects the transactions whose COMMIT is in the log.
 *   3. A second pass puts the checkpoint's PAGE records into the missing
 *      pages, and a third applies the rest in log order: CREATE and CLOSE;
 *      the DATA of committed transactions (a record applies only at the
 *      layer's end: what the checkpoint already holds is skipped, a gap
 *      fails the session). PAGE first: an AppendKV stream open across the
 *      checkpoint has DATA before the checkpoint's PAGE records that is not
 *      in it (committed after the checkpoint saw the session), and
 *      appending it reads the layer, which needs every page present.
 *   4. A session with a page still missing, or whose slots fail their
 *      checks when read back, is lost (DATA_LOSS, naming it); the others
 *      are served as before.
 * Replay runs before the log is opened for writing (nothing is logged) and
 * before the mover starts; memory runs short the usual way (eviction). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "attnd_assert.h"
#include "attnd_log.h"
#include "sparse.h"
#include "tier_int.h"

#define SEG_HDR ATTND__WSEG_HDR
#define FIRST_LSN 64 /* a new log starts here (0 means "no transaction") */

/* ---- a set of transaction ids ------------------------------------------------ */

typedef struct u64set {
    uint64_t *k;
    size_t cap, n;
} u64set;

static int set_add(u64set *s, uint64_t v)
{
    if (2 * (s->n + 1) > s->cap) {
        size_t c = s->cap ? 2 * s->cap : 1024;
        uint64_t *k = calloc(c, sizeof *k);
        if (!k)
            return -1;
        for (size_t i = 0; i < s->cap; i++)
            if (s->k[i]) {
                size_t j = (s->k[i] * 0x9e3779b97f4a7c15ull) & (c - 1);
                while (k[j])
                    j = (j + 1) & (c - 1);
                k[j] = s->k[i];
            }
        free(s->k);
        s->k = k;
        s->cap = c;
    }
    size_t j = (v * 0x9e3779b97f4a7c15ull) & (s->cap - 1);
    while (s->k[j] && s->k[j] != v)
        j = (j + 1) & (s->cap - 1);
    if (!s->k[j]) {
        s->k[j] = v;
        s->n++;
    }
    return 0;
}

static int set_has(const u64set *s, uint64_t v)
{
    if (!s->cap)
        return 0;
    size_t j = (v * 0x9e3779b97f4a7c15ull) & (s->cap - 1);
    while (s->k[j]) {
        if (s->k[j] == v)
            return 1;
        j = (j + 1) & (s->cap - 1);
    }
    return 0;
}

/* ---- the manifest --------------------------------------------------------------- */

static attnd_status corrupt(attnd_engine *e, const char *what, attnd_error *err)
{
    return attnd_error_set(err, ATTND_ERR_DATA_LOSS,
                           "kv-dir: %s/checkpoint is damaged (%s); move it away to start "
                           "without it (its sessions are then lost)", e->dur->dir, what);
}

static attnd_status fp_check(attnd_engine *e, const attnd__fingerprint *fp, const char *file,
                             attnd_error *err)
{
    const attnd__fingerprint *me = &e->dur->fp;
    if (memcmp(fp, me, sizeof *fp) == 0)
        return ATTND_OK;
    return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                           "kv-dir: %s holds KV of model %.32s (%u layers, page size %u, %u "
                           "bytes a token, kv dtype %u, group shard %u), this worker serves %s "
                           "(%u layers, page size %u, %u bytes a token, kv dtype %u, group "
                           "shard %u); start it with those settings or use another --kv-dir",
                           file, fp->model, fp->n_layers, fp->page_size, fp->entry_bytes,
                           fp->kv_dtype, fp->shard, me->model, me->n_layers, me->page_size,
                           me->entry_bytes, me->kv_dtype, me->shard);
}

/* Bytes [*off, *off + n) of the manifest, or NULL past its end. */
static const unsigned char *take(const unsigned char *m, size_t len, size_t *off, size_t n)
{
    if (n > len || *off > len - n)
        return NULL;
    const unsigned char *p = m + *off;
    *off += n;
    return p;
}

/* The owner and policy after a version 2 session's message: *owner_p, and
 * the policy into *p (its rules malloc'd into *rules_p) with *has_p set,
 * or 0 when dense. */
static attnd_status man_owner_policy(attnd_engine *e, const unsigned char *m, size_t len,
                                     size_t *off, uint64_t *owner_p, attnd_session_policy *p,
                                     attnd_policy_rule **rules_p, int *has_p, attnd_error *err)
{
    const unsigned char *q = take(m, len, off, 16);
    uint32_t pol;
    if (!q)
        return corrupt(e, "a session's owner is cut short", err);
    memcpy(owner_p, q, 8);
    memcpy(&pol, q + 8, 4);
    *has_p = 0;
    if (!pol)
        return ATTND_OK;
    const unsigned char *b = take(m, len, off, (pol + 7) & ~(size_t)7);
    if (!b || attnd__sparse_decode(b, pol, p, rules_p))
        return corrupt(e, "a session's policy is malformed", err);
    if (attnd_policy_check(&e->model, p, NULL)) {
        free(*rules_p);
        *rules_p = NULL;
        return corrupt(e, "a session's policy does not fit the model", err);
    }
    *has_p = 1;
    return ATTND_OK;
}

/* Layer l of a recovered session: its pages below memory, in the slots the
 * manifest names, except those streaming had freed ([sink pages,
 * hole_end): held nowhere). Counted on the pool's and the owner's
 * accounts as the session held them. */
static attnd_status man_layer(attnd_engine *e, attnd__session *s, int32_t l, uint64_t ln,
                              uint64_t ul, uint32_t np, uint32_t hole_end,
                              const unsigned char *pg, attnd_error *err)
{
    attnd__tier *t = e->tier;
    attnd__sparse *sp = s->sparse;
    attnd_status st;

    if (hole_end) {
        if (!sp || !sp->evict[l] || hole_end >= np)
            return corrupt(e, "a layer's freed pages do not match its policy", err);
        sp->hole_end[l] = (int32_t)hole_end;
    }
    if ((st = attnd__session_grow(s, l, np, err)))
        return st;
    for (uint32_t j = 0; j < np; j++) {
        int32_t slot;
        uint32_t crc;
        memcpy(&slot, pg + 8 * j, 4);
        memcpy(&crc, pg + 8 * j + 4, 4);
        if (slot < -1 || slot >= t->n_slots ||
            (slot >= 0 && t->state[slot] != ATTND__SLOT_FREE) ||
            (slot >= 0 && attnd__sparse_gone(s, l, j)))
            return corrupt(e, "a slot is out of range or named twice (is --kv-disk smaller "
                              "than before?)", err);
        s->slots[l][j] = slot;
        s->pages[l][j] = -1;
        if (slot >= 0)
            attnd__tier_slot_claim(t, slot, crc);
    }
    s->len[l] = ln;
    s->ulen[l] = ul;
    if (np) {
        int64_t holes = sp ? attnd__sparse_holes(sp, l, s->page_size) : 0;
        int64_t held = (int64_t)np - holes;
        s->where[l] = ATTND__LAYER_BELOW;
        atomic_fetch_add(&s->n_below, 1);
        s->pages_held += held;
        attnd_kv_pool_hold(&e->pool, held);
        /* the pages it holds redeemed that much of its promise */
        int64_t r = attnd__session_from_reserved(s, l, (int32_t)holes, held);
        s->reserved_left -= r;
        attnd_kv_pool_unreserve(&e->pool, r);
        attnd__owner_hold(s->owner, held, r);
    }
    return ATTND_OK;
}

static attnd_status man_session(attnd_engine *e, const unsigned char *m, size_t len, size_t *off,
                                uint32_t version, attnd_error *err)
{
    const unsigned char *p = take(m, len, off, 32);
    uint64_t max_tokens, owner = 0;
    uint32_t flags, msg_len;
    attnd_session_id id;
    attnd__session *s;
    attnd_session_policy pol;
    attnd_policy_rule *rules = NULL;
    int has_pol = 0;
    attnd_status st;

    if (!p)
        return corrupt(e, "a session is cut short", err);
    memcpy(id.bytes, p, 16);
    memcpy(&max_tokens, p + 16, 8);
    memcpy(&flags, p + 24, 4);
    memcpy(&msg_len, p + 28, 4);
    const unsigned char *msg = take(m, len, off, msg_len + (8 - msg_len % 8) % 8);
    if (!msg)
        return corrupt(e, "a session's message is cut short", err);
    if (version >= 2 &&
        (st = man_owner_policy(e, m, len, off, &owner, &pol, &rules, &has_pol, err)))
        return st;
    st = attnd__engine_session_make(e, owner, &id, max_tokens, has_pol ? &pol : NULL, 1, &s, err);
    free(rules);
    if (st)
        return st == ATTND_ERR_ALREADY_EXISTS ? corrupt(e, "a session appears twice", err) : st;
    if (flags & 1)
        s->lost = strndup((const char *)msg, msg_len);
    for (int32_t l = 0; l < s->n_layers && st == ATTND_OK; l++) {
        const unsigned char *q = take(m, len, off, 24);
        uint64_t ln, ul;
        uint32_t np, hole_end;
        if (!q) {
            st = corrupt(e, "a layer is cut short", err);
            break;
        }
        memcpy(&ln, q, 8);
        memcpy(&ul, q + 8, 8);
        memcpy(&np, q + 16, 4);
        memcpy(&hole_end, q + 20, 4);
        if (version < 2)
            hole_end = 0;
        if (np != (ln + (uint64_t)s->page_size - 1) / (uint64_t)s->page_size) {
            st = corrupt(e, "a layer's page count does not match its length", err);
            break;
        }
        const unsigned char *pg = take(m, len, off, (size_t)np * 8);
        if (!pg) {
            st = corrupt(e, "a page table is cut short", err);
            break;
        }
        st = man_layer(e, s, l, ln, ul, np, hole_end, pg, err);
    }
    attnd__session_put(&e->table, &e->pool, s);
    return st;
}

static attnd_status read_manifest(attnd_engine *e, uint64_t *ckpt_lsn_p, uint64_t *replay_p,
                                  attnd_error *err)
{
    char path[PATH_MAX];
    struct stat sb;
    attnd_status st = ATTND_OK;

    snprintf(path, sizeof path, "%s/checkpoint", e->dur->dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT)
        return ATTND_OK; /* none yet: the log alone */
    if (fd < 0 || fstat(fd, &sb) != 0)
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION, "kv-dir: cannot read %s: %s",
                               path, strerror(errno));
    size_t len = (size_t)sb.st_size, got = 0;
    unsigned char *m = malloc(len ? len : 1);
    if (!m) {
        close(fd);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv-dir: no memory to read %s (%zu bytes)", path, len);
    }
    while (got < len) {
        ssize_t n = read(fd, m + got, len - got);
        if (n <= 0 && errno != EINTR)
            break;
        if (n > 0)
            got += (size_t)n;
    }
    close(fd);
    attnd__ckpt_hdr h;
    uint32_t tail[2];
    if (got != len || len < sizeof h + sizeof tail) {
        st = corrupt(e, "too short", err);
        goto out;
    }
    memcpy(&h, m, sizeof h);
    memcpy(tail, m + len - sizeof tail, sizeof tail);
    if (h.magic == ATTND__CKPT_MAGIC && h.version > ATTND__CKPT_VERSION) {
        st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                             "kv-dir: %s is of version %u; this attnd reads versions 1 to %d "
                             "(a newer attnd wrote it: start that one)",
                             path, h.version, ATTND__CKPT_VERSION);
        goto out;
    }
    if (h.magic != ATTND__CKPT_MAGIC || h.version < 1 || h.hdr_bytes != sizeof h ||
        tail[1] != ATTND__CKPT_TAIL || attnd__crc32c(0, m, len - sizeof tail) != tail[0]) {
        st = corrupt(e, "its checksum or header is wrong", err);
        goto out;
    }
    if ((st = fp_check(e, &h.fp, path, err)))
        goto out;
    size_t off = sizeof h;
    for (uint64_t i = 0; i < h.n_sessions && st == ATTND_OK; i++)
        st = man_session(e, m, len - sizeof tail, &off, h.version, err);
    *ckpt_lsn_p = h.ckpt_lsn;
    *replay_p = h.replay_from;
out:
    free(m);
    return st;
}

/* ---- the log -------------------------------------------------------------------- */

typedef struct wlog {
    uint64_t *first; /* the segments on disk, ascending */
    size_t n;
    /* found by the first walk */
    uint64_t end;    /* the LSN after the last whole record */
    size_t end_seg;  /* the segment holding it (n: none) */
    size_t end_off;  /* its offset there */
} wlog;

static attnd_status list_segments(attnd_engine *e, wlog *w, attnd_error *err)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/wal", e->dur->dir);
    DIR *d = opendir(path);
    if (!d)
        return ATTND_OK;
    size_t cap = 0;
    for (struct dirent *de; (de = readdir(d));) {
        unsigned long long first;
        char tail[8];
        if (sscanf(de->d_name, "%16llx.%7s", &first, tail) != 2 || strcmp(tail, "log") != 0)
            continue;
        if (w->n == cap) {
            cap = cap ? 2 * cap : 16;
            uint64_t *p = realloc(w->first, cap * sizeof *p);
            if (!p) {
                closedir(d);
                return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "recovery: out of memory");
            }
            w->first = p;
        }
        w->first[w->n++] = first;
    }
    closedir(d);
    for (size_t i = 1; i < w->n; i++)
        for (size_t j = i; j > 0 && w->first[j - 1] > w->first[j]; j--) {
            uint64_t x = w->first[j];
            w->first[j] = w->first[j - 1];
            w->first[j - 1] = x;
        }
    return ATTND_OK;
}

/* The whole record at off (LSN lsn) of a segment, or NULL. */
static const attnd__wrec_hdr *rec_at(const char *map, size_t size, size_t off, uint64_t lsn)
{
    attnd__wrec_hdr h;
    if (off + sizeof h > size)
        return NULL;
    memcpy(&h, map + off, sizeof h);
    if (h.magic != ATTND__WAL_MAGIC || h.lsn != lsn || h.len > size - off - sizeof h)
        return NULL;
    if (attnd__crc32c(0, map + off + 8, sizeof h - 8 + h.len) != h.crc)
        return NULL;
    return (const attnd__wrec_hdr *)(map + off);
}

typedef attnd_status (*rec_fn)(attnd_engine *e, const attnd__wrec_hdr *h, void *arg,
                               attnd_error *err);

/* Walk the log's whole records from `from` on, calling f on each; the
 * first walk (find_end) records where the whole records end. */
static attnd_status walk(attnd_engine *e, wlog *w, uint64_t from, int find_end, rec_fn f,
                         void *arg, attnd_error *err)
{
    attnd_status st = ATTND_OK;
    uint64_t expect = 0; /* the next segment's first LSN (0: any) */
    int stop = 0;

    if (find_end) {
        w->end = 0;
        w->end_seg = w->n;
        w->end_off = 0;
    }
    for (size_t i = 0; i < w->n && !stop && st == ATTND_OK; i++) {
        char path[PATH_MAX];
        struct stat sb;
        /* a segment that ends before `from` (a next one begins by then) is not read */
        if (i + 1 < w->n && w->first[i + 1] <= from && !expect)
            continue;
        if (expect && w->first[i] != expect)
            break; /* the log ended before: this file is past the end */
        attnd__wal_seg_path(e->dur->dir, w->first[i], path, sizeof path);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &sb) != 0 || sb.st_size < SEG_HDR) {
            if (fd >= 0)
                close(fd);
            break;
        }
        size_t size = (size_t)sb.st_size;
        char *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
        if (map == MAP_FAILED)
            return attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "recovery: cannot map %s: %s",
                                   path, strerror(errno));
        struct {
            uint64_t magic;
            uint32_t version, crc;
            uint64_t first;
            attnd__fingerprint fp;
        } sh;
        memcpy(&sh, map, sizeof sh);
        uint32_t crc = sh.crc;
        sh.crc = 0;
        if (sh.magic != ATTND__WSEG_MAGIC || sh.version != 1 || sh.first != w->first[i] ||
            attnd__crc32c(0, &sh, sizeof sh) != crc) {
            munmap(map, size);
            break; /* a segment made but never written whole: the end */
        }
        if ((st = fp_check(e, &sh.fp, path, err))) {
            munmap(map, size);
            break;
        }
        size_t off = SEG_HDR;
        uint64_t lsn = w->first[i];
        expect = 0;
        for (;;) {
            const attnd__wrec_hdr *h = rec_at(map, size, off, lsn);
            if (!h) { /* the end: torn or never written */
                if (find_end) {
                    w->end = lsn;
                    w->end_seg = i;
                    w->end_off = off;
                }
                stop = 1;
                break;
            }
            if (lsn >= from && (st = f(e, h, arg, err)))
                break;
            size_t sz = sizeof *h + ((h->len + 7) & ~(size_t)7);
            if (h->type == ATTND__WREC_SEGEND && h->len == 8) {
                memcpy(&expect, h + 1, 8);
                if (find_end)
                    w->end = expect; /* unless a later segment holds more */
                break;
            }
            off += sz;
            lsn += sz;
        }
        munmap(map, size);
    }
    return st;
}

static attnd_status collect_commits(attnd_engine *e, const attnd__wrec_hdr *h, void *arg,
                                    attnd_error *err)
{
    (void)e;
    if (h->type == ATTND__WREC_COMMIT && set_add(arg, h->txn))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "recovery: out of memory");
    return ATTND_OK;
}

typedef struct replay_ctx {
    u64set committed;
    uint64_t ckpt_lsn;
    int pages; /* this pass applies the PAGE records (only) */
} replay_ctx;

/* DATA of a committed transaction: the layer's tokens [start, start + n). */
static void replay_data(attnd_engine *e, attnd__session *s, const attnd__wrec_data *d)
{
    attnd_error err;
    char why[ATTND_ERROR_MSG_MAX + 128];
    const int32_t l = (int32_t)d->layer;
    const uint64_t len = s->len[l];

    if (d->n == 0) { /* a note */
        if (d->ulen != UINT64_MAX)
            s->ulen[l] = d->ulen;
        return;
    }
    if (d->start > len) {
        snprintf(why, sizeof why, "the log misses tokens [%llu, %llu) of layer %d; its KV is "
                 "lost, close it", (unsigned long long)len, (unsigned long long)d->start, l);
        attnd__session_lose(s, why);
        return;
    }
    uint64_t skip = len - d->start;
    if (skip < d->n) {
        uint64_t m = d->n - skip;
        attnd__tier_own(&s, 1, l); /* its other layers give room too */
        attnd_status lst = attnd__tier_load(e, s, l, &err);
        attnd__tier_own(NULL, 0, -1);
        if (lst)
            return; /* lost, or no memory: lost below */
        int32_t have = attnd__session_layer_pages(s, l);
        int64_t need = attnd__engine_pages_for_append(e, s, l, m);
        int32_t from_res = (int32_t)attnd__session_from_reserved(s, l, have, need);
        if (attnd__session_grow(s, l, have + need, &err) ||
            attnd__engine_alloc(e, (int32_t)need, from_res, s->pages[l] + have, &err)) {
            snprintf(why, sizeof why, "no room to recover it: %s", err.msg);
            attnd__session_lose(s, why);
            return;
        }
        attnd__session_no_slots(s, l, have, have + need);
        s->reserved_left -= from_res;
        s->pages_held += need;
        attnd__owner_hold(s->owner, need, from_res);
        attnd__engine_write(e, s, l, len, m, e->model.kv_dtype,
                            (const char *)(d + 1) + skip * e->entry_bytes, 0, &err);
        s->len[l] = len + m;
        /* streaming: the pages that left the window go as they went
         * before the crash (eviction depends on the length alone) */
        attnd__sparse_evict(e, s, l);
    }
    s->ulen[l] = d->ulen != UINT64_MAX ? d->ulen : s->len[l];
}

/* PAGE of the checkpoint: a page it left in the log, into memory or a
 * slot. */
static void replay_page(attnd_engine *e, attnd__session *s, const attnd__wrec_hdr *h,
                        const attnd__wrec_page *p, const replay_ctx *c)
{
    attnd__tier *t = e->tier;
    const int32_t l = (int32_t)p->layer, j = (int32_t)p->page;
    attnd_error err;
    char why[ATTND_ERROR_MSG_MAX + 128];
    if (h->flags || h->lsn < c->ckpt_lsn || s->where[l] != ATTND__LAYER_BELOW ||
        j >= attnd__session_layer_pages(s, l) || s->pages[l][j] >= 0 || s->slots[l][j] >= 0)
        return; /* not one the checkpoint left out, or replayed past already */
    /* into memory while it has room, where the page was when the log got
     * it: a slot for each would need more disk than the crash left (with
     * the disk full, the newest sessions were lost) */
    int32_t pg;
    if (attnd_kv_pool_take(&e->pool, 1, &pg) == ATTND_OK) {
        if (attnd__engine_page_in(e, pg, p + 1, &err) == ATTND_OK) {
            s->pages[l][j] = pg;
            return;
        }
        attnd_kv_pool_put(&e->pool, &pg, 1);
    }
    attnd__tio *io = attnd__tio_get(t);
    attnd__tio_op op = {.mem = -1, .src = p + 1, .id = s->id, .layer = l, .page = j,
                        .tokens = (int32_t)p->tokens};
    if (attnd__tier_slots_alloc(t, 1, &op.slot, &err) == ATTND_OK) {
        if (attnd__tio_write(io, &op, 1) == 0)
            s->slots[l][j] = (int32_t)op.slot;
        else
            attnd__tier_slot_release(t, op.slot);
    }
    attnd__tio_put(t, io);
    if (s->slots[l][j] < 0) {
        snprintf(why, sizeof why, "no room to recover KV page %d of layer %d: %s", j, l,
                 err.msg);
        attnd__session_lose(s, why);
    }
}

static attnd_status apply(attnd_engine *e, const attnd__wrec_hdr *h, void *arg, attnd_error *err)
{
    replay_ctx *c = arg;
    const unsigned char *p = (const unsigned char *)(h + 1);
    attnd_session_id id;
    attnd__session *s;

    if (c->pages != (h->type == ATTND__WREC_PAGE))
        return ATTND_OK;
    switch (h->type) {
    case ATTND__WREC_CREATE: {
        /* id, max_tokens; since version 2 also owner, policy bytes, 0,
         * the policy */
        uint64_t max_tokens, owner = 0;
        uint32_t pol = 0;
        attnd_session_policy sp;
        attnd_policy_rule *rules = NULL;
        if (h->len < 24)
            return ATTND_OK;
        memcpy(id.bytes, p, 16);
        memcpy(&max_tokens, p + 16, 8);
        if (h->len >= 40) {
            memcpy(&owner, p + 24, 8);
            memcpy(&pol, p + 32, 4);
        }
        if ((s = attnd__session_get(&e->table, &id))) {
            attnd__session_put(&e->table, &e->pool, s);
            return ATTND_OK;
        }
        if (pol && (h->len != 40 + pol || attnd__sparse_decode(p + 40, pol, &sp, &rules) ||
                    attnd_policy_check(&e->model, &sp, NULL))) {
            free(rules);
            attnd_log_warn("durable", "a CREATE record at LSN %llu has a malformed policy; its "
                                      "session is not recovered", (unsigned long long)h->lsn);
            return ATTND_OK;
        }
        attnd_status st = attnd__engine_session_make(e, owner, &id, max_tokens, pol ? &sp : NULL,
                                                     1, NULL, err);
        free(rules);
        return st == ATTND_ERR_ALREADY_EXISTS ? ATTND_OK : st;
    }
    case ATTND__WREC_CLOSE:
        memcpy(id.bytes, p, 16);
        if ((s = attnd__session_remove(&e->table, &id))) {
            s->closed = 1;
            attnd__session_put(&e->table, &e->pool, s);
        }
        return ATTND_OK;
    case ATTND__WREC_DATA:
    case ATTND__WREC_PAGE:
        break;
    default:
        return ATTND_OK;
    }
    if (h->type == ATTND__WREC_DATA && !set_has(&c->committed, h->txn))
        return ATTND_OK;
    size_t need = h->type == ATTND__WREC_DATA ? sizeof(attnd__wrec_data) : sizeof(attnd__wrec_page);
    if (h->len < need)
        return ATTND_OK;
    memcpy(id.bytes, p, 16);
    if (!(s = attnd__session_get(&e->table, &id)))
        return ATTND_OK; /* closed later, or before the checkpoint */
    pthread_mutex_lock(&s->mu);
    uint32_t layer;
    memcpy(&layer, p + 16, 4);
    if (!s->lost && layer < (uint32_t)s->n_layers) {
        if (h->type == ATTND__WREC_DATA) {
            const attnd__wrec_data *d = (const attnd__wrec_data *)p;
            if (h->len == sizeof *d + d->n * e->entry_bytes)
                replay_data(e, s, d);
        } else if (h->len == sizeof(attnd__wrec_page) + e->pool.page_bytes) {
            replay_page(e, s, h, (const attnd__wrec_page *)p, c);
        }
    }
    pthread_mutex_unlock(&s->mu);
    attnd__session_put(&e->table, &e->pool, s);
    return ATTND_OK;
}

/* Cut the log at its end: the torn segment truncated, later ones gone. */
static void cut_tail(attnd_engine *e, const wlog *w)
{
    char path[PATH_MAX];
    for (size_t i = 0; i < w->n; i++) {
        attnd__wal_seg_path(e->dur->dir, w->first[i], path, sizeof path);
        if (i == w->end_seg) {
            if (truncate(path, (off_t)w->end_off) == 0 && w->end_off > SEG_HDR)
                attnd_log_info("durable", "the log ended at LSN %llu in %s; cut there",
                        (unsigned long long)w->end, path);
        } else if (w->first[i] > w->end) {
            unlink(path);
        }
    }
}

/* ---- the end: missing pages, checks ------------------------------------------- */

typedef struct verify_ctx {
    attnd_engine *e;
    attnd__tio *io;
    uint64_t n, lost;
} verify_ctx;

static int verify_one(attnd__session *s, void *arg)
{
    verify_ctx *c = arg;
    attnd__tier *t = c->e->tier;
    attnd__tio_op *ops;
    attnd_error err;
    char why[PATH_MAX + 256];

    c->n++;
    pthread_mutex_lock(&s->mu);
    for (int32_t l = 0; l < s->n_layers && !s->lost; l++) {
        int32_t np = attnd__session_layer_pages(s, l);
        if (s->where[l] != ATTND__LAYER_BELOW || np == 0)
            continue;
        if (attnd__tio_ops(c->io, np, &ops, &err))
            break;
        int32_t miss = -1, k = 0;
        for (int32_t j = 0; j < np; j++) {
            if (s->pages[l][j] >= 0 || attnd__sparse_gone(s, l, j))
                continue; /* in memory (checked when it was read), or freed */
            if (s->slots[l][j] < 0 && miss < 0)
                miss = j;
            ops[k++] = (attnd__tio_op){.slot = s->slots[l][j], .mem = -1, .id = s->id,
                                       .layer = l, .page = j};
        }
        if (miss >= 0) {
            snprintf(why, sizeof why, "KV page %d of layer %d, which its last checkpoint left "
                     "in the log, is not there; its KV is lost, close it", miss, l);
            attnd__session_lose(s, why);
            break;
        }
        int r = attnd__tio_read(c->io, ops, k);
        if (r) {
            int32_t i = 0;
            while (i < k - 1 && ops[i].res == 0)
                i++;
            snprintf(why, sizeof why, "KV page %d of layer %d %s at recovery (slot %lld of "
                     "%s); its KV is lost, close it", ops[i].page, l,
                     r == ATTND__TIO_BAD ? "failed its checksum" : "could not be read",
                     (long long)ops[i].slot, t->path);
            attnd__session_lose(s, why);
        }
    }
    if (s->lost) {
        c->lost++;
        attnd_log_warn("durable", "%s", s->lost);
    }
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* topk-pages key bounds are not on disk: every layer that keeps them is
 * read in and its pages' bounds rebuilt from their keys (sparse_kv.c),
 * exactly as the appends had made them. A page that fails to load loses
 * its session as any other. */
static int bounds_one(attnd__session *s, void *arg)
{
    attnd_engine *e = arg;
    attnd_error err;
    char why[ATTND_ERROR_MSG_MAX + 64];

    pthread_mutex_lock(&s->mu);
    for (int32_t l = 0; s->sparse && l < s->n_layers && !s->lost; l++) {
        int32_t np = attnd__session_layer_pages(s, l);
        if (!s->sparse->bounds[l] || np == 0)
            continue;
        attnd__tier_own(&s, 1, l);
        attnd_status st = attnd__tier_load(e, s, l, &err);
        attnd__tier_own(NULL, 0, -1);
        for (int32_t j = 0; st == ATTND_OK && j < np; j++)
            st = attnd__sparse_bounds_rebuild(e, s, l, j, &err);
        if (st && !s->lost) {
            snprintf(why, sizeof why, "its key bounds could not be rebuilt: %s", err.msg);
            attnd__session_lose(s, why);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return 0;
}

attnd_status attnd__recover(attnd_engine *e, uint64_t *next_lsn_p, attnd_error *err)
{
    attnd__dur *d = e->dur;
    attnd__tier *t = e->tier;
    uint64_t ckpt_lsn = 0, from = 0;
    wlog w = {0};
    replay_ctx c = {0};
    attnd_status st;

    if ((st = read_manifest(e, &ckpt_lsn, &from, err)))
        goto out;
    attnd__tier_slots_settle(t);
    c.ckpt_lsn = ckpt_lsn;
    if ((st = list_segments(e, &w, err)))
        goto out;
    if (from > FIRST_LSN && (w.n == 0 || w.first[0] > from)) {
        st = attnd_error_set(err, ATTND_ERR_DATA_LOSS,
                             "kv-dir: %s/checkpoint needs the log from LSN %llu on, but %s/wal "
                             "%s; move the checkpoint away to start without it (its sessions "
                             "are then lost)", d->dir, (unsigned long long)from, d->dir,
                             w.n ? "begins later" : "holds no segments");
        goto out;
    }
    if ((st = walk(e, &w, from, 1, collect_commits, &c.committed, err)))
        goto out;
    c.pages = 1;
    if ((st = walk(e, &w, from, 0, apply, &c, err)))
        goto out;
    c.pages = 0;
    if ((st = walk(e, &w, from, 0, apply, &c, err)))
        goto out;
    if (w.n)
        cut_tail(e, &w);
    attnd__session_each(&e->table, &e->pool, 0, bounds_one, e);
    verify_ctx v = {.e = e, .io = attnd__tio_get(t)};
    attnd__session_each(&e->table, &e->pool, 0, verify_one, &v);
    attnd__tio_put(t, v.io);
    atomic_store(&d->n_recovered, v.n);
    atomic_store(&d->n_lost, v.lost);
    if (v.n)
        attnd_log_info("durable", "recovered %llu sessions from %s (%llu lost)",
                (unsigned long long)v.n, d->dir, (unsigned long long)v.lost);
    uint64_t end = w.end > ckpt_lsn ? w.end : ckpt_lsn;
    *next_lsn_p = end > FIRST_LSN ? end : FIRST_LSN;
    d->last_ckpt_lsn = *next_lsn_p;
out:
    free(w.first);
    free(c.committed.k);
    return st;
}
