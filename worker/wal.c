/* The write-ahead log of a durable engine (TIERS.md has the format).
 *
 * Writers reserve a record in the current of two buffers under one mutex
 * (a header and room for the payload, its LSN assigned), fill the payload
 * outside the lock, and finish. A flusher thread seals the current buffer,
 * waits for its writers to finish, and writes it to the segment file with
 * one io_uring submission (the write linked to an fdatasync), while
 * writers fill the other buffer; then it publishes how far the log is
 * durable. It flushes when a caller waits (sync mode: one flush serves
 * every caller waiting, the group commit), when the oldest record of the
 * buffer is `window` old (batch mode), or when the buffer is half full.
 *
 * Who checksums a record: in sync mode its writer (callers wait for the
 * flush anyway, and checksum in parallel); in batch mode the flusher,
 * after sealing the buffer and before writing it, so an AppendKV's reply
 * does not wait for the CRC of its KV (engine-level append of a 256 KiB
 * chunk, p50 on the 2-vCPU development VM: 56 -> 41 us; 23 us without a
 * log). Either way no record reaches the file without its CRC, and a
 * reply never precedes its record's place in the buffer: the order and
 * the window are those of the reservations.
 *
 * Segments are preallocated (fallocate) when the log moves into them, and
 * a record never spans two: a record that does not fit ends the segment
 * with a SEGEND record naming the next segment's first LSN, and the next
 * segment is made first, so a full disk refuses the record that needed
 * room (RESOURCE_EXHAUSTED, nothing applied) rather than a write the
 * caller was told succeeded. A buffer holds records of one segment only;
 * the buffer that ends a segment closes its file once durable.
 *
 * Failure: a write or fdatasync that fails makes the log broken: every
 * waiting and later caller gets UNAVAILABLE, and nothing more is written
 * (what the disk holds stays a valid prefix). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "attnd_assert.h"
#include "attnd_clock.h"
#include "attnd_log.h"
#include "tier_int.h"

#define SEG_HDR ATTND__WSEG_HDR
#define SEGEND_BYTES (sizeof(attnd__wrec_hdr) + 8)
#define PAD_ROOM (4096 + sizeof(attnd__wrec_hdr)) /* a seal's padding at most */

typedef struct wseg_hdr {
    uint64_t magic;  /* ATTND__WSEG_MAGIC */
    uint32_t version, crc; /* crc: CRC-32C of the header with crc = 0 */
    uint64_t first;  /* LSN of its first record */
    attnd__fingerprint fp;
} wseg_hdr;

_Static_assert(sizeof(wseg_hdr) <= SEG_HDR, "segment header fits its room");

typedef struct wbuf {
    char *data;
    size_t cap, used;
    int writers;       /* reservations not finished */
    int sealed;        /* the flusher's: no more reservations */
    int fd;            /* the segment it goes to */
    uint64_t lsn0;     /* LSN of data[0] */
    uint64_t lsn_end;  /* sealed: the LSN its records end at (durable once
                          written); not lsn0 + used: the zeros after a
                          SEGEND take file bytes, not LSNs */
    uint64_t file_off; /* where data[0] goes */
    int ends_seg;      /* its last record is a SEGEND: close fd when durable */
    int64_t t_first;   /* ms: its first reservation (batch window) */
} wbuf;

struct attnd__wal {
    char dir[PATH_MAX / 2];
    attnd__fingerprint fp;
    uint64_t seg_bytes;
    int mode;
    int32_t window_ms;
    size_t max_payload;

    pthread_mutex_t mu;
    pthread_cond_t cv;       /* writers: a buffer freed, the log moved on */
    pthread_cond_t flush_cv; /* the flusher: work may be there */
    wbuf buf[2];
    int cur;
    int seg_fd;              /* the current segment */
    uint64_t seg_first;
    uint64_t next_lsn, durable;
    int sync_waiters;
    int broken, stop;
    char why[200];
    attnd__wtxn txns;        /* open transactions, oldest first (a ring) */
    uint64_t *segs;          /* first LSNs of the segments on disk, ascending */
    size_t n_segs, cap_segs;
    uint64_t bytes, syncs;

    struct io_uring ring;
    int ring_ok;
    int direct;              /* segments opened with O_DIRECT */
    pthread_t tid;
    int running;
};

static size_t rec_size(size_t len)
{
    return sizeof(attnd__wrec_hdr) + ((len + 7) & ~(size_t)7);
}

void attnd__wal_seg_path(const char *dir, uint64_t first, char *buf, size_t n)
{
    snprintf(buf, n, "%s/wal/%016llx.log", dir, (unsigned long long)first);
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = fsync(fd) ? -errno : 0;
    close(fd);
    return r;
}

static int seg_make_once(attnd__wal *w, uint64_t first);

/* Make segment `first`: preallocated, its header written. Caller holds mu
 * (or is alone). The fd, or a negative errno. A direct (O_DIRECT) write
 * of a new segment's header has failed with EIO on this development VM's
 * ext4 while another durable worker wrote beside it (2 runs in ~60 of the
 * durable suite under load, never alone): then segments are made and
 * written through the page cache from here on (fdatasync still orders
 * them), with a warning, rather than the worker refusing to start. */
static int seg_make(attnd__wal *w, uint64_t first)
{
    int fd = seg_make_once(w, first);
    if (fd == -EIO && w->direct) {
        attnd_log_warn("durable", "log segment %016llx: a direct write failed (%s); the log "
                       "is written through the page cache from now on",
                       (unsigned long long)first, strerror(EIO));
        w->direct = 0;
        fd = seg_make_once(w, first);
    }
    return fd;
}

static int seg_make_once(attnd__wal *w, uint64_t first)
{
    char path[PATH_MAX], wdir[PATH_MAX];
    attnd__wal_seg_path(w->dir, first, path, sizeof path);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | (w->direct ? O_DIRECT : 0), 0644);
    if (fd < 0 && errno == EINVAL && w->direct) { /* a filesystem without O_DIRECT */
        w->direct = 0;
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    }
    if (fd < 0)
        return -errno;
    int r = 0;
    if (fallocate(fd, 0, 0, (off_t)w->seg_bytes) != 0) {
        r = -errno;
        if ((r == -EOPNOTSUPP || r == -ENOSYS) && ftruncate(fd, (off_t)w->seg_bytes) == 0)
            r = 0; /* no preallocation here: a full disk shows at a write */
    }
    wseg_hdr h;
    char *blk = aligned_alloc(4096, SEG_HDR);
    if (!blk) {
        close(fd);
        unlink(path);
        return -ENOMEM;
    }
    memset(&h, 0, sizeof h);
    memset(blk, 0, SEG_HDR);
    h.magic = ATTND__WSEG_MAGIC;
    h.version = 1;
    h.first = first;
    h.fp = w->fp;
    h.crc = attnd__crc32c(0, &h, sizeof h);
    memcpy(blk, &h, sizeof h);
    if (r == 0 && pwrite(fd, blk, SEG_HDR, 0) != SEG_HDR)
        r = errno ? -errno : -EIO;
    free(blk);
    snprintf(wdir, sizeof wdir, "%s/wal", w->dir);
    if (r == 0 && (fdatasync(fd) != 0 || fsync_dir(wdir) != 0))
        r = errno ? -errno : -EIO;
    if (r) {
        close(fd);
        unlink(path);
        return r;
    }
    if (w->n_segs == w->cap_segs) {
        size_t c = w->cap_segs ? 2 * w->cap_segs : 16;
        uint64_t *p = realloc(w->segs, c * sizeof *p);
        if (!p) {
            close(fd);
            unlink(path);
            return -ENOMEM;
        }
        w->segs = p;
        w->cap_segs = c;
    }
    w->segs[w->n_segs++] = first;
    return fd;
}

/* Fill buffer b up to a 4096-byte boundary of the file (it starts at one):
 * with a PAD record (its LSNs count), or after a SEGEND, where the segment
 * ends, with zeros. Caller holds mu; the room was reserved (PAD_ROOM). */
static void pad_to_block(attnd__wal *w, wbuf *b)
{
    size_t gap = (4096 - b->used % 4096) % 4096;
    if (gap == 0)
        return;
    if (b->ends_seg) {
        memset(b->data + b->used, 0, gap);
        b->used += gap;
        return;
    }
    if (gap < sizeof(attnd__wrec_hdr))
        gap += 4096;
    attnd__wrec_hdr *h = (attnd__wrec_hdr *)(b->data + b->used);
    memset(h, 0, gap);
    h->magic = ATTND__WAL_MAGIC;
    h->len = (uint32_t)(gap - sizeof *h);
    h->type = ATTND__WREC_PAD;
    h->lsn = w->next_lsn;
    h->crc = attnd__crc32c(0, (char *)h + 8, gap - 8);
    b->used += gap;
    w->next_lsn += gap;
}

/* Seal the current buffer (the flusher writes it) and make the other one
 * current, going on at the log's end, once the flusher is done with the
 * other one. Caller holds mu, which a wait releases: if another thread
 * swapped meanwhile, this returns without swapping again (callers look at
 * the state afresh either way). */
static void swap_buffers(attnd__wal *w)
{
    wbuf *b = &w->buf[w->cur], *o = &w->buf[w->cur ^ 1];
    while (o->sealed && !w->broken) {
        pthread_cond_wait(&w->cv, &w->mu);
        if (&w->buf[w->cur] != b)
            return;
    }
    if (w->broken)
        return;
    pad_to_block(w, b);
    b->lsn_end = w->next_lsn; /* after a SEGEND: the next segment's first */
    b->sealed = 1;
    w->cur ^= 1;
    o->used = 0;
    o->writers = 0;
    o->ends_seg = 0;
    o->fd = w->seg_fd;
    o->lsn0 = w->next_lsn;
    o->file_off = SEG_HDR + (w->next_lsn - w->seg_first);
    o->t_first = 0;
    pthread_cond_signal(&w->flush_cv);
}

/* Write a whole record (header and payload) at the current buffer's end.
 * Caller holds mu and checked it fits. */
static void put_small(attnd__wal *w, uint16_t type, const void *payload, size_t len)
{
    wbuf *b = &w->buf[w->cur];
    attnd__wrec_hdr *h = (attnd__wrec_hdr *)(b->data + b->used);
    size_t sz = rec_size(len);
    memset(h, 0, sz);
    h->magic = ATTND__WAL_MAGIC;
    h->len = (uint32_t)len;
    h->type = type;
    h->lsn = w->next_lsn;
    memcpy(h + 1, payload, len);
    h->crc = attnd__crc32c(0, (char *)h + 8, sizeof *h - 8 + len);
    b->used += sz;
    w->next_lsn += sz;
}

/* End the current segment and go on in a new one. Caller holds mu. */
static attnd_status switch_segment(attnd__wal *w, attnd_error *err)
{
    while (!w->broken && (w->buf[w->cur].ends_seg ||
                          w->buf[w->cur].used + SEGEND_BYTES + PAD_ROOM > w->buf[w->cur].cap))
        swap_buffers(w);
    if (w->broken)
        return attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "durable log: %s", w->why);
    /* from here to the SEGEND nothing waits: the state stays ours */
    uint64_t first = w->next_lsn + SEGEND_BYTES;
    int fd = seg_make(w, first);
    if (fd < 0)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "durable log: cannot make its next segment (%llu bytes) in "
                               "%s/wal: %s", (unsigned long long)w->seg_bytes, w->dir,
                               strerror(-fd));
    wbuf *b = &w->buf[w->cur];
    put_small(w, ATTND__WREC_SEGEND, &first, sizeof first);
    b->ends_seg = 1;
    w->seg_fd = fd;
    w->seg_first = first;
    w->next_lsn = first;
    /* the buffer holding the SEGEND must not take records of the new
     * segment: seal it (or find it sealed by another thread meanwhile) */
    while (!w->broken && &w->buf[w->cur] == b)
        swap_buffers(w);
    return w->broken ? attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "durable log: %s", w->why)
                     : ATTND_OK;
}

static void txn_unlink(attnd__wtxn *tx)
{
    tx->prev->next = tx->next;
    tx->next->prev = tx->prev;
    tx->prev = tx->next = NULL;
    tx->txn = 0;
}

attnd_status attnd__wal_reserve(attnd__wal *w, uint16_t type, attnd__wtxn *tx, size_t len,
                                attnd__wrec *r, attnd_error *err)
{
    const size_t sz = rec_size(len);
    const int closes = type == ATTND__WREC_COMMIT || type == ATTND__WREC_ABORT;
    attnd_status st = ATTND_OK;

    ATTND_ASSERT(len <= w->max_payload);
    pthread_mutex_lock(&w->mu);
    for (;;) {
        if (w->broken) {
            st = attnd_error_set(err, ATTND_ERR_UNAVAILABLE, "durable log: %s", w->why);
            break;
        }
        if (w->next_lsn + sz + SEGEND_BYTES + 2 * PAD_ROOM > w->seg_first + w->seg_bytes - SEG_HDR) {
            if ((st = switch_segment(w, err)))
                break;
            continue;
        }
        /* a buffer that ended its segment takes no more records */
        if (w->buf[w->cur].ends_seg ||
            w->buf[w->cur].used + sz + SEGEND_BYTES + PAD_ROOM > w->buf[w->cur].cap) {
            swap_buffers(w);
            continue;
        }
        break;
    }
    if (st) {
        if (tx && tx->txn && closes)
            txn_unlink(tx); /* the transaction is over either way */
        pthread_mutex_unlock(&w->mu);
        return st;
    }
    wbuf *b = &w->buf[w->cur];
    attnd__wrec_hdr *h = (attnd__wrec_hdr *)(b->data + b->used);
    memset(h, 0, sizeof *h);
    if (sz > sizeof *h + len) /* the padding is checksummed as zeros by nobody: zero it */
        memset((char *)(h + 1) + len, 0, sz - sizeof *h - len);
    h->magic = ATTND__WAL_MAGIC;
    h->len = (uint32_t)len;
    h->type = type;
    h->lsn = w->next_lsn;
    if (tx) {
        if (!tx->txn) { /* its first record opens it */
            tx->txn = tx->first_lsn = w->next_lsn;
            tx->prev = w->txns.prev;
            tx->next = &w->txns;
            w->txns.prev->next = tx;
            w->txns.prev = tx;
        }
        h->txn = tx->txn;
        if (closes)
            txn_unlink(tx);
    }
    const int first = b->used == 0;
    if (first)
        b->t_first = attnd_clock_ms();
    b->used += sz;
    b->writers++;
    w->next_lsn += sz;
    pthread_mutex_unlock(&w->mu);
    /* batch: the window starts now. Signalled after the unlock, so the
     * flusher does not wake only to wait for mu; no wakeup is lost: it
     * looks at `used` under mu before it waits. */
    if (first)
        pthread_cond_signal(&w->flush_cv);
    r->hdr = h;
    r->payload = h + 1;
    r->lsn = h->lsn;
    r->end = h->lsn + sz;
    r->buf = b;
    return ATTND_OK;
}

void attnd__wal_finish(attnd__wal *w, attnd__wrec *r)
{
    attnd__wrec_hdr *h = r->hdr;
    /* batch: the flusher checksums the record (crc_sealed) once it seals
     * the buffer, off the caller's reply path; sync: the caller waits for
     * the flush anyway, and writers checksum in parallel */
    if (w->mode != ATTND_ENGINE_DURABLE_BATCH)
        h->crc = attnd__crc32c(0, (char *)h + 8, sizeof *h - 8 + h->len);
    wbuf *b = r->buf;
    pthread_mutex_lock(&w->mu);
    if (--b->writers == 0 && b->sealed)
        pthread_cond_signal(&w->flush_cv);
    pthread_mutex_unlock(&w->mu);
}

attnd_status attnd__wal_wait(attnd__wal *w, uint64_t lsn, attnd_error *err)
{
    attnd_status st = ATTND_OK;
    pthread_mutex_lock(&w->mu);
    while (w->durable < lsn && !w->broken) {
        w->sync_waiters++;
        pthread_cond_signal(&w->flush_cv);
        pthread_cond_wait(&w->cv, &w->mu);
        w->sync_waiters--;
    }
    if (w->durable < lsn)
        st = attnd_error_set(err, ATTND_ERR_UNAVAILABLE,
                             "durable log: %s; this change may not survive a restart", w->why);
    pthread_mutex_unlock(&w->mu);
    return st;
}

/* Batch mode: checksum the records of sealed buffer b that their writers
 * left without one (crc 0: attnd__wal_finish; reserve zeroed it). Called
 * by the flusher without mu, once b's writers are done and before b is
 * written, so no record reaches the file without its CRC. The records run
 * from data[0] without gaps; a SEGEND's zeros end them. A record whose
 * CRC happens to be 0 is checksummed again, to the same 0. */
static void crc_sealed(wbuf *b)
{
    for (size_t off = 0; off + sizeof(attnd__wrec_hdr) <= b->used;) {
        attnd__wrec_hdr *h = (attnd__wrec_hdr *)(b->data + off);
        if (h->magic != ATTND__WAL_MAGIC)
            break;
        ATTND_ASSERT(off + rec_size(h->len) <= b->used);
        if (h->crc == 0)
            h->crc = attnd__crc32c(0, (char *)h + 8, sizeof *h - 8 + h->len);
        off += rec_size(h->len);
    }
}

/* Write len bytes at off of fd and fdatasync it: one submission. */
static int write_sync(attnd__wal *w, int fd, const char *data, size_t len, uint64_t off)
{
    if (w->ring_ok) {
        struct io_uring_sqe *a = io_uring_get_sqe(&w->ring), *b = io_uring_get_sqe(&w->ring);
        if (a && b) {
            io_uring_prep_write(a, fd, data, (unsigned)len, off);
            a->flags |= IOSQE_IO_LINK;
            io_uring_prep_fsync(b, fd, IORING_FSYNC_DATASYNC);
            io_uring_submit(&w->ring);
            int res[2] = {0, 0};
            for (int i = 0; i < 2; i++) {
                struct io_uring_cqe *cqe;
                int rc;
                while ((rc = io_uring_wait_cqe(&w->ring, &cqe)) == -EINTR)
                    ;
                if (rc)
                    return rc;
                res[i] = cqe->res;
                io_uring_cqe_seen(&w->ring, cqe);
            }
            if (res[0] == (int)len && res[1] == 0)
                return 0;
            if (res[0] < 0)
                return res[0];
            if (res[0] >= 0 && (size_t)res[0] != len) { /* short: the rest by hand */
                data += res[0];
                off += (uint64_t)res[0];
                len -= (size_t)res[0];
            } else {
                return res[1] < 0 ? res[1] : -EIO;
            }
        }
    }
    while (len) {
        ssize_t n = pwrite(fd, data, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -ENOSPC;
        data += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return fdatasync(fd) ? -errno : 0;
}

static void *flusher_main(void *arg)
{
    attnd__wal *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        wbuf *o = &w->buf[w->cur ^ 1], *c = &w->buf[w->cur];
        if (!o->sealed) {
            if (w->broken || (w->stop && c->used == 0))
                break;
            int64_t now = attnd_clock_ms();
            int due = c->used > 0 &&
                      (w->sync_waiters > 0 || w->stop || c->used > c->cap / 2 ||
                       (w->mode == ATTND_ENGINE_DURABLE_BATCH &&
                        now >= c->t_first + w->window_ms));
            if (due) {
                swap_buffers(w);
                continue;
            }
            if (c->used > 0 && w->mode == ATTND_ENGINE_DURABLE_BATCH) {
                int64_t at = c->t_first + w->window_ms; /* CLOCK_MONOTONIC ms */
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                int64_t wait_ms = at - now > 0 ? at - now : 0;
                ts.tv_sec += wait_ms / 1000;
                ts.tv_nsec += (wait_ms % 1000) * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&w->flush_cv, &w->mu, &ts);
            } else {
                pthread_cond_wait(&w->flush_cv, &w->mu);
            }
            continue;
        }
        while (o->writers > 0)
            pthread_cond_wait(&w->flush_cv, &w->mu);
        pthread_mutex_unlock(&w->mu);
        if (w->mode == ATTND_ENGINE_DURABLE_BATCH)
            crc_sealed(o);
        int r = o->used ? write_sync(w, o->fd, o->data, o->used, o->file_off) : 0;
        if (r == 0 && o->ends_seg)
            close(o->fd);
        pthread_mutex_lock(&w->mu);
        if (r) {
            w->broken = 1;
            snprintf(w->why, sizeof w->why, "writing segment %016llx in %.100s/wal failed: %s",
                     (unsigned long long)(o->lsn0), w->dir, strerror(-r));
            attnd_log_error("durable", "%s", w->why);
        } else {
            w->durable = o->lsn_end;
            w->bytes += o->used;
            w->syncs++;
        }
        o->sealed = 0;
        o->used = 0;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* The segment files already in DIR/wal, ascending (recovered ones). */
static int list_old(attnd__wal *w, uint64_t start)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/wal", w->dir);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    for (struct dirent *de; (de = readdir(d));) {
        unsigned long long first;
        char tail[8];
        if (sscanf(de->d_name, "%16llx.%7s", &first, tail) != 2 || strcmp(tail, "log") != 0 ||
            first >= start)
            continue;
        if (w->n_segs == w->cap_segs) {
            size_t c = w->cap_segs ? 2 * w->cap_segs : 16;
            uint64_t *p = realloc(w->segs, c * sizeof *p);
            if (!p) {
                closedir(d);
                return -1;
            }
            w->segs = p;
            w->cap_segs = c;
        }
        w->segs[w->n_segs++] = first;
    }
    closedir(d);
    for (size_t i = 1; i < w->n_segs; i++) /* insertion sort: a few files */
        for (size_t j = i; j > 0 && w->segs[j - 1] > w->segs[j]; j--) {
            uint64_t x = w->segs[j];
            w->segs[j] = w->segs[j - 1];
            w->segs[j - 1] = x;
        }
    return 0;
}

attnd_status attnd__wal_open(const char *dir, const attnd__fingerprint *fp, uint64_t seg_bytes,
                             int mode, int32_t window_ms, uint64_t start, attnd__wal **w_p,
                             attnd_error *err)
{
    char path[PATH_MAX];
    attnd__wal *w = calloc(1, sizeof *w);
    if (!w)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "durable log: out of memory");
    snprintf(w->dir, sizeof w->dir, "%s", dir);
    w->fp = *fp;
    w->seg_bytes = seg_bytes;
    w->mode = mode;
    w->window_ms = window_ms;
    w->txns.prev = w->txns.next = &w->txns;
    w->seg_fd = -1;
    w->direct = 1; /* until a filesystem refuses it (seg_make) */
    size_t cap = seg_bytes / 4 < ((size_t)16 << 20) ? (size_t)(seg_bytes / 4) : (size_t)16 << 20;
    cap &= ~(size_t)4095;
    w->max_payload = cap / 2 - sizeof(attnd__wrec_hdr) - SEGEND_BYTES - PAD_ROOM;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    pthread_cond_init(&w->flush_cv, NULL);
    snprintf(path, sizeof path, "%s/wal", dir);
    attnd_status st = ATTND_OK;
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION, "durable: cannot make %s: %s",
                             path, strerror(errno));
        goto err_w;
    }
    for (int i = 0; i < 2; i++) {
        w->buf[i].cap = cap;
        if (!(w->buf[i].data = aligned_alloc(4096, cap))) {
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                 "durable log: no memory for its buffers");
            goto err_w;
        }
    }
    if (list_old(w, start)) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "durable log: out of memory");
        goto err_w;
    }
    int fd = seg_make(w, start);
    if (fd < 0) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "durable log: cannot make segment %016llx (%llu bytes) in %s: %s",
                             (unsigned long long)start, (unsigned long long)seg_bytes, path,
                             strerror(-fd));
        goto err_w;
    }
    w->seg_fd = fd;
    w->seg_first = w->next_lsn = w->durable = start;
    w->buf[0].fd = fd;
    w->buf[0].lsn0 = start;
    w->buf[0].file_off = SEG_HDR;
    w->ring_ok = io_uring_queue_init(4, &w->ring, 0) == 0;
    int rc = pthread_create(&w->tid, NULL, flusher_main, w);
    if (rc) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "durable log: cannot start its flusher: %s", strerror(rc));
        goto err_ring;
    }
    w->running = 1;
    *w_p = w;
    return ATTND_OK;

err_ring:
    if (w->ring_ok)
        io_uring_queue_exit(&w->ring);
    close(fd);
err_w:
    free(w->buf[0].data);
    free(w->buf[1].data);
    free(w->segs);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    pthread_cond_destroy(&w->flush_cv);
    free(w);
    return st;
}

void attnd__wal_close(attnd__wal *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_signal(&w->flush_cv);
    pthread_mutex_unlock(&w->mu);
    if (w->running)
        pthread_join(w->tid, NULL);
    if (w->ring_ok)
        io_uring_queue_exit(&w->ring);
    if (w->seg_fd >= 0)
        close(w->seg_fd);
    free(w->buf[0].data);
    free(w->buf[1].data);
    free(w->segs);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    pthread_cond_destroy(&w->flush_cv);
    free(w);
}

size_t attnd__wal_max_payload(const attnd__wal *w)
{
    return w->max_payload;
}

uint64_t attnd__wal_next_lsn(attnd__wal *w)
{
    pthread_mutex_lock(&w->mu);
    uint64_t n = w->next_lsn;
    pthread_mutex_unlock(&w->mu);
    return n;
}

attnd_status attnd__wal_rotate(attnd__wal *w, uint64_t *first_p, uint64_t *oldest_p,
                               attnd_error *err)
{
    pthread_mutex_lock(&w->mu);
    attnd_status st = switch_segment(w, err);
    if (st == ATTND_OK) {
        *first_p = w->seg_first;
        *oldest_p = w->txns.next != &w->txns && w->txns.next->first_lsn < w->seg_first
                        ? w->txns.next->first_lsn
                        : w->seg_first;
    }
    pthread_mutex_unlock(&w->mu);
    return st;
}

void attnd__wal_trim(attnd__wal *w, uint64_t lsn)
{
    char path[PATH_MAX];
    pthread_mutex_lock(&w->mu);
    size_t k = 0;
    /* segment i ends where i + 1 begins; the current one never goes */
    while (k + 1 < w->n_segs && w->segs[k + 1] <= lsn && w->segs[k] != w->seg_first)
        k++;
    for (size_t i = 0; i < k; i++) {
        attnd__wal_seg_path(w->dir, w->segs[i], path, sizeof path);
        unlink(path);
    }
    memmove(w->segs, w->segs + k, (w->n_segs - k) * sizeof *w->segs);
    w->n_segs -= k;
    pthread_mutex_unlock(&w->mu);
}

void attnd__wal_counts(attnd__wal *w, uint64_t *durable_p, uint64_t *bytes_p,
                       uint64_t *syncs_p)
{
    pthread_mutex_lock(&w->mu);
    *durable_p = w->durable;
    *bytes_p = w->bytes;
    *syncs_p = w->syncs;
    pthread_mutex_unlock(&w->mu);
}
