/* The store below memory: slots of one page each, in a file on local disk
 * (DIR/kv.pages) or, below a GPU's HBM, in host RAM; its slot allocator;
 * and the I/O contexts that move pages between memory and slots.
 *
 * File: slot k is bytes [k * slot_bytes, (k + 1) * slot_bytes) of
 * kv.pages (format in tier_int.h and TIERS.md). The file is opened with
 * O_DIRECT when the filesystem takes it (a 4 KiB read at open tells;
 * tmpfs does not), so spilled pages do not crowd the page cache; else
 * buffered. It grows as slots are first written, so a full disk or a file
 * size limit shows as a failed write: that slot and every one past it are
 * no longer handed out (attnd__tier_slots_full), which shrinks the logical
 * capacity, and the call that needed room gets RESOURCE_EXHAUSTED.
 *
 * Allocator: a free list and two pending lists threaded through one link
 * array (4 bytes a slot), plus never-used slots from next_new up. Without
 * durability a released slot is free at once. With it, a slot the last
 * checkpoint names must survive until a newer checkpoint no longer does:
 * released slots wait on the current pending list, and a checkpoint swaps
 * lists before it looks at the sessions and frees the old list once it is
 * durable (ckpt.c).
 *
 * I/O: each context has one io_uring with the slot file and its bounce
 * buffers registered (read_fixed / write_fixed; unregistered when the
 * memlock limit refuses), and keeps up to `depth` slots in flight: a page
 * is copied into a free bounce buffer with its header and checksum and
 * submitted as soon as one frees, so the queue stays full (the pattern
 * fio's iodepth measures). The copy costs one pass over the page; the
 * CRC another (both at memory speed, well above a disk's). Without
 * io_uring (refused by a kernel or seccomp profile), and for the host
 * store, the same calls run pwrite / pread / memcpy one slot at a time. */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "attnd_assert.h"
#include "attnd_log.h"
#include "tier_int.h"

#define N_TIO 4

static size_t round_up(size_t x, size_t a)
{
    return (x + a - 1) / a * a;
}

/* ---- I/O contexts ----------------------------------------------------------- */

static void tio_free(attnd__tio *io)
{
    if (io->ring) {
        io_uring_queue_exit(io->ring);
        free(io->ring);
    }
    free(io->bounce);
    free(io->free_buf);
    free(io->op_of);
    free(io->ready);
    free(io->ops);
    free(io->pages);
}

static attnd_status tio_init(attnd__tier *t, attnd__tio *io, attnd_error *err)
{
    memset(io, 0, sizeof *io);
    io->t = t;
    io->depth = t->depth;
    io->nbuf = io->depth + (io->depth / 4 > 4 ? io->depth / 4 : 4);
    io->bounce = aligned_alloc(4096, (size_t)io->nbuf * t->slot_bytes);
    io->free_buf = malloc(sizeof(int32_t) * (size_t)io->nbuf);
    io->op_of = malloc(sizeof(int64_t) * (size_t)io->nbuf);
    io->ready = malloc(sizeof *io->ready * (size_t)io->nbuf);
    if (!io->bounce || !io->free_buf || !io->op_of || !io->ready) {
        tio_free(io);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv-dir: no memory for %d bounce buffers of %zu bytes", io->nbuf,
                               t->slot_bytes);
    }
    memset(io->bounce, 0, (size_t)io->nbuf * t->slot_bytes);
    if (t->kind != ATTND__STORE_DISK)
        return ATTND_OK;
    struct io_uring *r = calloc(1, sizeof *r);
    if (r && io_uring_queue_init((unsigned)io->depth, r, 0) == 0) {
        io->ring = r;
        struct iovec iov = {io->bounce, (size_t)io->nbuf * t->slot_bytes};
        io->fixed_buf = io_uring_register_buffers(r, &iov, 1) == 0;
        io->fixed_file = io_uring_register_files(r, &t->fd, 1) == 0;
    } else {
        free(r);
    }
    return ATTND_OK;
}

attnd__tio *attnd__tio_get(attnd__tier *t)
{
    pthread_mutex_lock(&t->tio_mu);
    while (!t->free_tio)
        pthread_cond_wait(&t->tio_cv, &t->tio_mu);
    attnd__tio *io = t->free_tio;
    t->free_tio = io->next;
    pthread_mutex_unlock(&t->tio_mu);
    return io;
}

void attnd__tio_put(attnd__tier *t, attnd__tio *io)
{
    pthread_mutex_lock(&t->tio_mu);
    io->next = t->free_tio;
    t->free_tio = io;
    pthread_cond_signal(&t->tio_cv);
    pthread_mutex_unlock(&t->tio_mu);
}

attnd_status attnd__tio_ops(attnd__tio *io, int64_t n, attnd__tio_op **ops_p, attnd_error *err)
{
    if (n > io->cap_ops) {
        int64_t c = io->cap_ops ? io->cap_ops : 64;
        while (c < n)
            c *= 2;
        attnd__tio_op *p = realloc(io->ops, sizeof *p * (size_t)c);
        if (!p)
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "kv: no memory to list %lld page moves", (long long)n);
        io->ops = p;
        io->cap_ops = c;
    }
    *ops_p = io->ops;
    return ATTND_OK;
}

attnd_status attnd__tio_pages(attnd__tio *io, int64_t n, int32_t **pages_p, attnd_error *err)
{
    if (n > io->cap_pages) {
        int64_t c = io->cap_pages ? io->cap_pages : 64;
        while (c < n)
            c *= 2;
        int32_t *p = realloc(io->pages, sizeof *p * (size_t)c);
        if (!p)
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "kv: no memory to list %lld pages", (long long)n);
        io->pages = p;
        io->cap_pages = c;
    }
    *pages_p = io->pages;
    return ATTND_OK;
}

/* Header and bytes of op into buf (a write). 0 or -errno. */
static int fill_slot(attnd__tier *t, const attnd__tio_op *op, char *buf)
{
    attnd__slot_hdr h;
    attnd_error err;
    memset(&h, 0, sizeof h);
    h.magic = ATTND__SLOT_MAGIC;
    memcpy(h.id, op->id.bytes, sizeof h.id);
    h.layer = (uint32_t)op->layer;
    h.page = (uint32_t)op->page;
    h.tokens = (uint32_t)op->tokens;
    h.page_bytes = (uint32_t)t->page_bytes;
    h.gen = __atomic_add_fetch(&t->gen, 1, __ATOMIC_RELAXED);
    if (op->mem >= 0) {
        if (attnd__engine_page_out(t->e, op->mem, buf + ATTND__SLOT_HDR, &err))
            return -EIO;
    } else {
        memcpy(buf + ATTND__SLOT_HDR, op->src, t->page_bytes);
    }
    memcpy(buf, &h, sizeof h);
    h.crc = attnd__crc32c(0, buf + 8, ATTND__SLOT_HDR - 8 + t->page_bytes);
    memcpy(buf + 4, &h.crc, sizeof h.crc);
    t->crc[op->slot] = h.crc;
    return 0;
}

/* A read's bytes in buf against what op expects; into memory if asked. */
static int check_slot(attnd__tier *t, const attnd__tio_op *op, const char *buf)
{
    attnd__slot_hdr h;
    attnd_error err;
    memcpy(&h, buf, sizeof h);
    if (h.magic != ATTND__SLOT_MAGIC || h.page_bytes != t->page_bytes ||
        memcmp(h.id, op->id.bytes, sizeof h.id) != 0 || h.layer != (uint32_t)op->layer ||
        h.page != (uint32_t)op->page || h.crc != t->crc[op->slot] ||
        attnd__crc32c(0, buf + 8, ATTND__SLOT_HDR - 8 + t->page_bytes) != h.crc)
        return ATTND__TIO_BAD;
    if (op->mem >= 0 && attnd__engine_page_in(t->e, op->mem, buf + ATTND__SLOT_HDR, &err))
        return -EIO;
    return 0;
}

/* One slot synchronously: the host store, or a file without io_uring. */
static int sync_io(attnd__tier *t, int write, int64_t slot, char *buf)
{
    off_t off = (off_t)slot * (off_t)t->slot_bytes;
    if (t->kind == ATTND__STORE_HOST) {
        if (write)
            memcpy(t->host + off, buf, t->slot_bytes);
        else
            memcpy(buf, t->host + off, t->slot_bytes);
        return 0;
    }
    size_t done = 0;
    while (done < t->slot_bytes) {
        ssize_t r = write ? pwrite(t->fd, buf + done, t->slot_bytes - done, off + (off_t)done)
                          : pread(t->fd, buf + done, t->slot_bytes - done, off + (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return write ? -ENOSPC : -EIO; /* a read past the end: never written */
        done += (size_t)r;
    }
    return 0;
}

/* The result of one op as the caller sees it. */
static int op_result(attnd__tier *t, int write, int res, attnd__tio_op *op, char *buf)
{
    if (res >= 0 && (size_t)res != t->slot_bytes)
        res = write ? -ENOSPC : -EIO; /* short: out of room / past the end */
    if (res < 0)
        return res;
    return write ? 0 : check_slot(t, op, buf);
}

static void prep_sqe(attnd__tio *io, struct io_uring_sqe *sqe, int write, int32_t b,
                     int64_t slot)
{
    attnd__tier *t = io->t;
    char *buf = io->bounce + (size_t)b * t->slot_bytes;
    off_t off = (off_t)slot * (off_t)t->slot_bytes;
    int fd = io->fixed_file ? 0 : t->fd;
    if (io->fixed_buf && write)
        io_uring_prep_write_fixed(sqe, fd, buf, (unsigned)t->slot_bytes, (uint64_t)off, 0);
    else if (io->fixed_buf)
        io_uring_prep_read_fixed(sqe, fd, buf, (unsigned)t->slot_bytes, (uint64_t)off, 0);
    else if (write)
        io_uring_prep_write(sqe, fd, buf, (unsigned)t->slot_bytes, (uint64_t)off);
    else
        io_uring_prep_read(sqe, fd, buf, (unsigned)t->slot_bytes, (uint64_t)off);
    if (io->fixed_file)
        sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, (uint64_t)b);
}

/* The slot file preallocated up to `end` bytes, in steps of 1/16 of the
 * store (64 MiB at least), ahead of the writes: writes that extend a file
 * take the inode lock one at a time (ext4's direct I/O), writes into
 * fallocated room run side by side. A filesystem or a limit that refuses
 * (no room: the writes will tell) turns it off. */
static void prealloc(attnd__tier *t, uint64_t end)
{
    if (t->kind != ATTND__STORE_DISK)
        return;
    pthread_mutex_lock(&t->slot_mu);
    if (!t->prealloc_off && end > t->prealloc) {
        uint64_t step = (uint64_t)t->n_slots * t->slot_bytes / 16;
        step = step > ((uint64_t)64 << 20) ? step : (uint64_t)64 << 20;
        uint64_t to = t->prealloc + step > end ? t->prealloc + step : end;
        uint64_t most = (uint64_t)t->limit * t->slot_bytes;
        to = to < most ? to : most;
        if (to > t->prealloc && fallocate(t->fd, 0, (off_t)t->prealloc, (off_t)(to - t->prealloc)))
            t->prealloc_off = 1;
        else
            t->prealloc = to > t->prealloc ? to : t->prealloc;
    }
    pthread_mutex_unlock(&t->slot_mu);
}

/* Run n ops with up to depth in flight; each op's res set. Returns the
 * first failure (0: none). */
static int tio_run(attnd__tio *io, int write, attnd__tio_op *ops, int64_t n)
{
    attnd__tier *t = io->t;
    int first = 0;

    if (write) {
        uint64_t end = 0;
        for (int64_t i = 0; i < n; i++)
            end = (uint64_t)(ops[i].slot + 1) * t->slot_bytes > end
                      ? (uint64_t)(ops[i].slot + 1) * t->slot_bytes
                      : end;
        if (end > t->prealloc) /* (a racy first look; prealloc looks again) */
            prealloc(t, end);
    }

    if (!io->ring) {
        for (int64_t i = 0; i < n; i++) {
            char *buf = io->bounce;
            int r = write ? fill_slot(t, &ops[i], buf) : 0;
            if (r == 0)
                r = sync_io(t, write, ops[i].slot, buf);
            ops[i].res = r < 0 ? r : op_result(t, write, (int)t->slot_bytes, &ops[i], buf);
            if (ops[i].res && !first)
                first = ops[i].res;
        }
        return first;
    }
    /* The device keeps `depth` ops; the buffers beyond them take what
     * completes while the CPU checks and copies earlier ones, so that every
     * completion is answered by a new submission before the CPU work (a
     * read's CRC and copy: a page's worth of memory passes) and the queue
     * stays full. */
    struct io_uring *ring = io->ring;
    int32_t n_free = io->nbuf, n_ready = 0;
    for (int32_t b = 0; b < io->nbuf; b++)
        io->free_buf[b] = b;
    int64_t next = 0, inflight = 0;
    for (;;) {
        int queued = 0;
        while (next < n && inflight < io->depth && n_free > 0) {
            int32_t b = io->free_buf[--n_free];
            char *buf = io->bounce + (size_t)b * t->slot_bytes;
            int r = write ? fill_slot(t, &ops[next], buf) : 0;
            struct io_uring_sqe *sqe = r ? NULL : io_uring_get_sqe(ring);
            if (!sqe) { /* a copy failed (GPU), or no sqe: fail this op */
                ops[next].res = r ? r : -EAGAIN;
                if (!first)
                    first = ops[next].res;
                io->free_buf[n_free++] = b;
                next++;
                continue;
            }
            prep_sqe(io, sqe, write, b, ops[next].slot);
            io->op_of[b] = next++;
            inflight++;
            queued++;
        }
        if (queued)
            io_uring_submit(ring);
        if (next >= n && !inflight && !n_ready)
            break;
        struct io_uring_cqe *cqe;
        if (!n_ready && inflight) { /* nothing else to do: wait */
            int rc = io_uring_wait_cqe(ring, &cqe);
            if (rc == -EINTR)
                continue;
            ATTND_ASSERT(rc == 0); /* only EINTR / a broken ring, which we never make */
        }
        unsigned head, seen = 0;
        io_uring_for_each_cqe(ring, head, cqe) {
            int32_t b = (int32_t)io_uring_cqe_get_data64(cqe);
            io->ready[n_ready].buf = b;
            io->ready[n_ready++].res = cqe->res;
            inflight--;
            seen++;
        }
        io_uring_cq_advance(ring, seen);
        if (n_ready) { /* one at a time: refill between them */
            int32_t b = io->ready[--n_ready].buf;
            attnd__tio_op *op = &ops[io->op_of[b]];
            op->res = op_result(t, write, io->ready[n_ready].res, op,
                                io->bounce + (size_t)b * t->slot_bytes);
            if (op->res && !first)
                first = op->res;
            io->free_buf[n_free++] = b;
        }
    }
    return first;
}

int attnd__tio_write(attnd__tio *io, attnd__tio_op *ops, int64_t n)
{
    int r = tio_run(io, 1, ops, n);
    if (r) {
        atomic_fetch_add(&io->t->n_write_err, 1);
        /* out of room: no slot at or past the first that failed */
        for (int64_t i = 0; i < n; i++)
            if (ops[i].res == -ENOSPC || ops[i].res == -EFBIG || ops[i].res == -EDQUOT)
                attnd__tier_slots_full(io->t, ops[i].slot, ops[i].res);
    }
    return r;
}

int attnd__tio_read(attnd__tio *io, attnd__tio_op *ops, int64_t n)
{
    int r = tio_run(io, 0, ops, n);
    if (r)
        atomic_fetch_add(&io->t->n_bad, 1);
    return r;
}

int attnd__tio_sync(attnd__tio *io)
{
    attnd__tier *t = io->t;
    if (t->kind != ATTND__STORE_DISK)
        return 0;
    if (!io->ring)
        return fdatasync(t->fd) ? -errno : 0;
    struct io_uring_sqe *sqe = io_uring_get_sqe(io->ring);
    if (!sqe)
        return fdatasync(t->fd) ? -errno : 0;
    io_uring_prep_fsync(sqe, io->fixed_file ? 0 : t->fd, IORING_FSYNC_DATASYNC);
    if (io->fixed_file)
        sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_submit(io->ring);
    struct io_uring_cqe *cqe;
    int rc;
    while ((rc = io_uring_wait_cqe(io->ring, &cqe)) == -EINTR)
        ;
    if (rc)
        return rc;
    rc = cqe->res;
    io_uring_cqe_seen(io->ring, cqe);
    return rc < 0 ? rc : 0;
}

/* ---- slots ------------------------------------------------------------------ */

static void update_cap(attnd__tier *t)
{
    attnd_kv_pool *p = &t->e->pool;
    attnd_kv_pool_set_cap(p, t->keep ? t->limit : (int64_t)p->n_pages + t->limit, t->limit);
}

attnd_status attnd__tier_slots_alloc(attnd__tier *t, int64_t n, int64_t *out, attnd_error *err)
{
    attnd_status st = ATTND_OK;
    pthread_mutex_lock(&t->slot_mu);
    int64_t avail = t->n_free_slots + (t->limit - t->next_new);
    if (n > avail) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "kv-disk: needs %lld slots of %zu bytes, %lld free of %lld "
                             "(%lld waiting for a checkpoint)%s%s",
                             (long long)n, t->slot_bytes, (long long)avail, (long long)t->limit,
                             (long long)(t->n_pend[0] + t->n_pend[1]),
                             t->full_msg[0] ? "; " : "", t->full_msg);
        goto out;
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t s;
        if (t->free_head >= 0) {
            s = t->free_head;
            t->free_head = t->link[s];
            t->n_free_slots--;
        } else {
            s = t->next_new++;
        }
        ATTND_ASSERT(s < t->limit && t->state[s] == ATTND__SLOT_FREE);
        t->state[s] = ATTND__SLOT_LIVE;
        t->used++;
        out[i] = s;
    }
out:
    pthread_mutex_unlock(&t->slot_mu);
    return st;
}

int64_t attnd__tier_slots_take(attnd__tier *t, int64_t n, int64_t *out)
{
    pthread_mutex_lock(&t->slot_mu);
    int64_t avail = t->n_free_slots + (t->limit - t->next_new);
    pthread_mutex_unlock(&t->slot_mu);
    if (n > avail)
        n = avail;
    attnd_error err;
    /* (another thread may take some meanwhile: then fewer) */
    while (n > 0 && attnd__tier_slots_alloc(t, n, out, &err))
        n /= 2;
    return n;
}

/* Caller holds slot_mu. A slot past a lowered limit is never handed out
 * again: it leaves the lists. */
static void slot_free(attnd__tier *t, int32_t s)
{
    t->state[s] = ATTND__SLOT_FREE;
    t->used--;
    if (s >= t->limit)
        return;
    t->link[s] = t->free_head;
    t->free_head = s;
    t->n_free_slots++;
}

void attnd__tier_slot_release(attnd__tier *t, int64_t slot)
{
    pthread_mutex_lock(&t->slot_mu);
    ATTND_ASSERT(slot >= 0 && slot < t->n_slots && t->state[slot] == ATTND__SLOT_LIVE);
    if (t->keep) {
        int g = t->cur_pend;
        t->state[slot] = ATTND__SLOT_PENDING;
        t->link[slot] = t->pend_head[g];
        t->pend_head[g] = (int32_t)slot;
        t->n_pend[g]++;
    } else {
        slot_free(t, (int32_t)slot);
    }
    pthread_mutex_unlock(&t->slot_mu);
}

void attnd__tier_slot_claim(attnd__tier *t, int64_t slot, uint32_t crc)
{
    pthread_mutex_lock(&t->slot_mu);
    /* recovery claims before anything is allocated (then settles) */
    ATTND_ASSERT(t->free_head < 0);
    ATTND_ASSERT(slot >= 0 && slot < t->n_slots && t->state[slot] == ATTND__SLOT_FREE);
    t->state[slot] = ATTND__SLOT_LIVE;
    t->used++;
    t->crc[slot] = crc;
    if (slot >= t->next_new)
        t->next_new = slot + 1;
    pthread_mutex_unlock(&t->slot_mu);
}

void attnd__tier_slots_settle(attnd__tier *t)
{
    pthread_mutex_lock(&t->slot_mu);
    for (int64_t s = t->next_new; s-- > 0;)
        if (t->state[s] == ATTND__SLOT_FREE) {
            t->link[s] = t->free_head;
            t->free_head = (int32_t)s;
            t->n_free_slots++;
        }
    pthread_mutex_unlock(&t->slot_mu);
}

void attnd__tier_pending_swap(attnd__tier *t, int *gen_p)
{
    pthread_mutex_lock(&t->slot_mu);
    *gen_p = t->cur_pend;
    t->cur_pend ^= 1;
    pthread_mutex_unlock(&t->slot_mu);
}

void attnd__tier_pending_free(attnd__tier *t, int gen)
{
    pthread_mutex_lock(&t->slot_mu);
    for (int32_t s = t->pend_head[gen], next; s >= 0; s = next) {
        next = t->link[s];
        ATTND_ASSERT(t->state[s] == ATTND__SLOT_PENDING);
        slot_free(t, s);
    }
    t->pend_head[gen] = -1;
    t->n_pend[gen] = 0;
    pthread_mutex_unlock(&t->slot_mu);
}

void attnd__tier_slots_full(attnd__tier *t, int64_t slot, int res)
{
    pthread_mutex_lock(&t->slot_mu);
    if (slot < t->limit) {
        t->limit = slot;
        if (t->next_new > slot)
            t->next_new = slot;
        /* free slots past it leave the free list */
        for (int32_t *pp = &t->free_head; *pp >= 0;)
            if (*pp >= slot) {
                *pp = t->link[*pp];
                t->n_free_slots--;
            } else {
                pp = &t->link[*pp];
            }
        snprintf(t->full_msg, sizeof t->full_msg,
                 "writing slot %lld of %.80s failed (%s): the tier below now holds at most %lld "
                 "slots", (long long)slot, t->kind == ATTND__STORE_DISK ? t->path : "host RAM",
                 strerror(-res), (long long)slot);
        attnd_log_warn("tier", "kv-disk: %s", t->full_msg);
        update_cap(t);
    }
    pthread_mutex_unlock(&t->slot_mu);
}

void attnd__tier_slot_counts(attnd__tier *t, int64_t *used_p, int64_t *limit_p)
{
    pthread_mutex_lock(&t->slot_mu);
    *used_p = t->used;
    *limit_p = t->limit;
    pthread_mutex_unlock(&t->slot_mu);
}

/* ---- create / destroy -------------------------------------------------------- */

/* Open DIR/kv.pages, O_DIRECT if a 4 KiB read through it works. */
static attnd_status open_file(attnd__tier *t, int truncate, attnd_error *err)
{
    int flags = O_RDWR | O_CREAT | O_CLOEXEC;
    snprintf(t->path, sizeof t->path, "%s/kv.pages", t->dir);
    t->fd = open(t->path, flags | O_DIRECT, 0644);
    t->direct = t->fd >= 0;
    if (t->fd >= 0) {
        void *probe = aligned_alloc(4096, 4096);
        if (probe && pread(t->fd, probe, 4096, 0) < 0 && errno == EINVAL) {
            close(t->fd);
            t->fd = -1;
            t->direct = 0;
        }
        free(probe);
    }
    if (t->fd < 0)
        t->fd = open(t->path, flags, 0644);
    if (t->fd < 0)
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION, "kv-dir: cannot open %s: %s",
                               t->path, strerror(errno));
    if (truncate && ftruncate(t->fd, 0) != 0)
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                               "kv-dir: cannot truncate %s: %s", t->path, strerror(errno));
    struct stat sb;
    if (fstat(t->fd, &sb) == 0) /* a durable store's file: written already */
        t->prealloc = (uint64_t)sb.st_size;
    return ATTND_OK;
}

attnd_status attnd__tier_create(attnd_engine *e, const attnd__tier_cfg *cfg, attnd__tier **t_p,
                                attnd_error *err)
{
    attnd_status st;
    attnd__tier *t = calloc(1, sizeof *t);
    if (!t)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "kv-dir: out of memory");
    t->e = e;
    t->fd = t->lock_fd = -1;
    t->kind = cfg->kind;
    t->keep = cfg->keep_copies;
    t->page_bytes = e->pool.page_bytes;
    t->slot_bytes = round_up(ATTND__SLOT_HDR + t->page_bytes, 4096);
    t->depth = cfg->depth > 0 ? cfg->depth : 32;
    t->prefetch = cfg->prefetch;
    uint64_t n = cfg->bytes / t->slot_bytes;
    const char *what = cfg->kind == ATTND__STORE_DISK ? "kv-disk" : "kv-host";
    if (n < 1 || n > INT32_MAX) {
        st = attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                             "%s: %llu bytes make %llu slots of %zu bytes; need 1 to %d", what,
                             (unsigned long long)cfg->bytes, (unsigned long long)n,
                             t->slot_bytes, INT32_MAX);
        goto err_t;
    }
    t->n_slots = t->limit = (int64_t)n;
    t->free_head = t->pend_head[0] = t->pend_head[1] = -1;
    t->state = calloc((size_t)n, 1);
    t->crc = calloc((size_t)n, sizeof *t->crc);
    t->link = malloc(sizeof *t->link * (size_t)n);
    if (!t->state || !t->crc || !t->link) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                             "%s: no memory for the bookkeeping of %llu slots", what,
                             (unsigned long long)n);
        goto err_arrays;
    }
    pthread_mutex_init(&t->slot_mu, NULL);
    pthread_mutex_init(&t->tio_mu, NULL);
    pthread_cond_init(&t->tio_cv, NULL);
    pthread_mutex_init(&t->mv_mu, NULL);
    pthread_cond_init(&t->mv_cv, NULL);
    pthread_cond_init(&t->done_cv, NULL);
    if (cfg->kind == ATTND__STORE_DISK) {
        snprintf(t->dir, sizeof t->dir, "%s", cfg->dir);
        if ((st = open_file(t, !cfg->keep_copies, err)))
            goto err_store;
    } else {
        t->host = mmap(NULL, (size_t)n * t->slot_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (t->host == MAP_FAILED) {
            t->host = NULL;
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                 "kv-host: cannot map %llu bytes: %s",
                                 (unsigned long long)(n * t->slot_bytes), strerror(errno));
            goto err_store;
        }
    }
    if (!(t->tios = calloc(N_TIO, sizeof *t->tios))) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "%s: out of memory", what);
        goto err_store;
    }
    for (; t->n_tio < N_TIO; t->n_tio++) {
        if ((st = tio_init(t, &t->tios[t->n_tio], err)))
            goto err_tio;
        t->tios[t->n_tio].next = t->free_tio;
        t->free_tio = &t->tios[t->n_tio];
    }
    /* keep a few pages free for decode's appends: 1/32 of memory, at
     * least 2 */
    t->low_water = e->pool.n_pages / 32 > 2 ? e->pool.n_pages / 32 : 2;
    e->pool.tier = t;
    update_cap(t);
    *t_p = t;
    return ATTND_OK;

err_tio:
    for (int i = 0; i < t->n_tio; i++)
        tio_free(&t->tios[i]);
    free(t->tios);
err_store:
    if (t->fd >= 0)
        close(t->fd);
    if (t->host)
        munmap(t->host, (size_t)t->n_slots * t->slot_bytes);
    pthread_mutex_destroy(&t->slot_mu);
    pthread_mutex_destroy(&t->tio_mu);
    pthread_cond_destroy(&t->tio_cv);
    pthread_mutex_destroy(&t->mv_mu);
    pthread_cond_destroy(&t->mv_cv);
    pthread_cond_destroy(&t->done_cv);
err_arrays:
    free(t->state);
    free(t->crc);
    free(t->link);
err_t:
    free(t);
    return st;
}

void attnd__tier_destroy(attnd__tier *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->n_tio; i++)
        tio_free(&t->tios[i]);
    free(t->tios);
    if (t->fd >= 0)
        close(t->fd);
    if (t->lock_fd >= 0)
        close(t->lock_fd); /* releases the flock */
    if (t->host)
        munmap(t->host, (size_t)t->n_slots * t->slot_bytes);
    pthread_mutex_destroy(&t->slot_mu);
    pthread_mutex_destroy(&t->tio_mu);
    pthread_cond_destroy(&t->tio_cv);
    pthread_mutex_destroy(&t->mv_mu);
    pthread_cond_destroy(&t->mv_cv);
    pthread_cond_destroy(&t->done_cv);
    for (attnd__tjob *j = t->spare, *next; j; j = next) {
        next = j->next;
        free(j->pages);
        free(j->page_j);
        free(j);
    }
    free(t->state);
    free(t->crc);
    free(t->link);
    free(t);
}
