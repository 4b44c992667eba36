/* Moving pages between memory and the slots of the tier below: the I/O
 * contexts (tier_store.c has the store and its allocator).
 *
 * Each context has one io_uring with the slot file and its bounce buffers
 * registered (read_fixed / write_fixed; unregistered when the memlock
 * limit refuses), and keeps up to `depth` slots in flight: a page is
 * copied into a free bounce buffer with its header and checksum and
 * submitted as soon as one frees, and a few spare buffers take what
 * completes while the CPU checks and copies earlier ones, so the queue
 * stays full (the pattern fio's iodepth measures). The copy costs one pass
 * over the page, the CRC another (both at memory speed, well above a
 * disk's). Without io_uring (refused by a kernel or seccomp profile), and
 * for the host store, the same calls run pwrite / pread / memcpy one slot
 * at a time; a chain's host-band slots (tier_int.h) go by memcpy in the
 * same run as its file slots go through the ring. Before writes the file
 * is fallocated ahead of them (in steps of 1/16 of the store): writes
 * that extend a file take ext4's inode lock one at a time. */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attnd_assert.h"
#include "attnd_log.h"
#include "tier_int.h"

/* ---- I/O contexts ----------------------------------------------------------- */

void attnd__tio_free(attnd__tio *io)
{
    if (io->ring) {
        io_uring_queue_exit(io->ring);
        free(io->ring);
    }
    free(io->bounce);
    free(io->free_buf);
    free(io->op_of);
    free(io->ready);
    free(io->parts);
    free(io->res);
    free(io->ops);
    free(io->pages);
}

attnd_status attnd__tio_init(attnd__tier *t, attnd__tio *io, attnd_error *err)
{
    memset(io, 0, sizeof *io);
    io->t = t;
    io->depth = t->depth;
    io->nbuf = io->depth + (io->depth / 4 > 4 ? io->depth / 4 : 4);
    io->bounce = aligned_alloc(4096, (size_t)io->nbuf * t->slot_bytes);
    io->free_buf = malloc(sizeof(int32_t) * (size_t)io->nbuf);
    io->op_of = malloc(sizeof(int64_t) * (size_t)io->nbuf);
    io->ready = malloc(sizeof *io->ready * (size_t)io->nbuf);
    io->parts = malloc(sizeof *io->parts * (size_t)io->nbuf);
    io->res = malloc(sizeof *io->res * (size_t)io->nbuf);
    if (!io->bounce || !io->free_buf || !io->op_of || !io->ready || !io->parts || !io->res) {
        attnd__tio_free(io);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kv-dir: no memory for %d bounce buffers of %zu bytes", io->nbuf,
                               t->slot_bytes);
    }
    memset(io->bounce, 0, (size_t)io->nbuf * t->slot_bytes);
    if (t->kind == ATTND__STORE_HOST)
        return ATTND_OK;
    struct io_uring *r = calloc(1, sizeof *r);
    if (r && io_uring_queue_init((unsigned)(2 * io->depth), r, 0) == 0) {
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

/* Where op's page bytes are in memory for a direct transfer (the pool
 * page itself: no copy), or NULL (through the bounce buffer). */
static char *direct_page(const attnd__tier *t, const attnd__tio *io, const attnd__tio_op *op)
{
    return t->zero_copy && io->ring && op->mem >= 0
               ? (char *)attnd_kv_pool_page(&t->e->pool, op->mem)
               : NULL;
}

/* The CRC a slot carries: header bytes [8, 64) then the page's bytes. */
static uint32_t slot_crc(const char *hdr, const char *page, size_t page_bytes)
{
    return attnd__crc32c(attnd__crc32c(0, hdr + 8, ATTND__SLOT_HDR - 8), page, page_bytes);
}

/* A write's header block into buf, and (page NULL) its page bytes after
 * it; page: where they already are. 0 or -errno. */
static int fill_slot(attnd__tier *t, const attnd__tio_op *op, char *buf, const char *page)
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
    memset(buf + ATTND__SLOT_HDR, 0, ATTND__SLOT_DATA - ATTND__SLOT_HDR);
    if (!page) {
        char *dst = buf + ATTND__SLOT_DATA;
        if (op->mem >= 0) {
            if (attnd__engine_page_out(t->e, op->mem, dst, &err)) {
                /* a GPU's copy failed: the write fails (-EIO); the cause
                 * is only here */
                attnd_log_error("tier", "KV page %d of layer %d (memory page %d) could not be "
                                "copied out for slot %lld: %s", op->page, op->layer, op->mem,
                                (long long)op->slot, err.msg);
                return -EIO;
            }
        } else {
            memcpy(dst, op->src, t->page_bytes);
        }
        memset(dst + t->page_bytes, 0, t->slot_bytes - ATTND__SLOT_DATA - t->page_bytes);
        page = dst;
    }
    memcpy(buf, &h, sizeof h);
    h.crc = slot_crc(buf, page, t->page_bytes);
    memcpy(buf + 4, &h.crc, sizeof h.crc);
    t->crc[op->slot] = h.crc;
    return 0;
}

/* A read's header block in buf and its page bytes at page (after the
 * header block in buf, or the pool page read into directly) against what
 * op expects; copied into memory when they are in buf and op asks. */
static int check_slot(attnd__tier *t, const attnd__tio_op *op, const char *buf, const char *page)
{
    attnd__slot_hdr h;
    attnd_error err;
    memcpy(&h, buf, sizeof h);
    if (h.magic != ATTND__SLOT_MAGIC || h.page_bytes != t->page_bytes ||
        memcmp(h.id, op->id.bytes, sizeof h.id) != 0 || h.layer != (uint32_t)op->layer ||
        h.page != (uint32_t)op->page || h.crc != t->crc[op->slot] ||
        slot_crc(buf, page, t->page_bytes) != h.crc)
        return ATTND__TIO_BAD;
    if (page == buf + ATTND__SLOT_DATA && op->mem >= 0 &&
        attnd__engine_page_in(t->e, op->mem, page, &err)) {
        attnd_log_error("tier", "KV page %d of layer %d from slot %lld could not be copied into "
                        "memory page %d: %s", op->page, op->layer, (long long)op->slot, op->mem,
                        err.msg);
        return -EIO;
    }
    return 0;
}

/* One slot synchronously: the host store, or a file without io_uring. */
static int sync_io(attnd__tier *t, int write, int64_t slot, char *buf)
{
    off_t off = (off_t)slot * (off_t)t->slot_bytes;
    char *host = attnd__tier_host_slot(t, slot);
    if (host) {
        if (write)
            memcpy(host, buf, t->slot_bytes);
        else
            memcpy(buf, host, t->slot_bytes);
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

/* Queue part `part` of unit b: the whole slot through the bounce buffer
 * (part 0), or its header block from the bounce buffer (part 1) and its
 * page straight from/to memory (part 2). */
static int queue_part(attnd__tio *io, int write, int32_t b, int part, int64_t slot,
                      char *page)
{
    attnd__tier *t = io->t;
    struct io_uring_sqe *sqe = io_uring_get_sqe(io->ring);
    if (!sqe)
        return -EAGAIN;
    char *buf = io->bounce + (size_t)b * t->slot_bytes;
    uint64_t off = (uint64_t)slot * t->slot_bytes;
    int fd = io->fixed_file ? 0 : t->fd;
    if (part == 2) {
        if (write)
            io_uring_prep_write(sqe, fd, page, (unsigned)t->page_bytes, off + ATTND__SLOT_DATA);
        else
            io_uring_prep_read(sqe, fd, page, (unsigned)t->page_bytes, off + ATTND__SLOT_DATA);
    } else {
        unsigned len = (unsigned)(part == 1 ? ATTND__SLOT_DATA : t->slot_bytes);
        if (io->fixed_buf && write)
            io_uring_prep_write_fixed(sqe, fd, buf, len, off, 0);
        else if (io->fixed_buf)
            io_uring_prep_read_fixed(sqe, fd, buf, len, off, 0);
        else if (write)
            io_uring_prep_write(sqe, fd, buf, len, off);
        else
            io_uring_prep_read(sqe, fd, buf, len, off);
    }
    if (io->fixed_file)
        sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, (uint64_t)b | (uint64_t)part << 32);
    return 0;
}

/* The slot file preallocated up to `end` bytes, in steps of 1/16 of the
 * store (64 MiB at least), ahead of the writes: writes that extend a file
 * take the inode lock one at a time (ext4's direct I/O), writes into
 * fallocated room run side by side. A filesystem or a limit that refuses
 * (no room: the writes will tell) turns it off. */
static void prealloc(attnd__tier *t, uint64_t end)
{
    if (t->kind == ATTND__STORE_HOST)
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

/* One op now, through buf (a slot's bytes): pread / pwrite, or memcpy for
 * a slot in host RAM. Sets and returns op->res. */
static int one_sync(attnd__tier *t, int write, attnd__tio_op *op, char *buf)
{
    int r = write ? fill_slot(t, op, buf, NULL) : 0;
    if (r == 0)
        r = sync_io(t, write, op->slot, buf);
    if (r == 0 && !write)
        r = check_slot(t, op, buf, buf + ATTND__SLOT_DATA);
    return op->res = r;
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
            if (ops[i].slot < t->n_slots) /* the file's (a chain's host band is not) */
                end = (uint64_t)(ops[i].slot + 1) * t->slot_bytes > end
                          ? (uint64_t)(ops[i].slot + 1) * t->slot_bytes
                          : end;
        if (end > t->prealloc) /* (a racy first look; prealloc looks again) */
            prealloc(t, end);
    }
    if (!io->ring) {
        for (int64_t i = 0; i < n; i++) {
            int r = one_sync(t, write, &ops[i], io->bounce);
            if (r && !first)
                first = r;
        }
        return first;
    }
    /* The device keeps `depth` ops; the buffers beyond them take what
     * completes while the CPU checks (and, through bounce buffers, copies)
     * earlier ones, so that every completion is answered by a new
     * submission before the CPU work and the queue stays full. An op is
     * one transfer of its slot through its bounce buffer, or (direct) two:
     * the header block from the bounce buffer, the page straight from or
     * into the pool. */
    struct io_uring *ring = io->ring;
    int32_t n_free = io->nbuf, n_ready = 0;
    for (int32_t b = 0; b < io->nbuf; b++)
        io->free_buf[b] = b;
    int64_t next = 0, inflight = 0;
    for (;;) {
        int queued = 0;
        while (next < n && inflight < io->depth && n_free > 0) {
            int32_t b = io->free_buf[--n_free];
            attnd__tio_op *op = &ops[next];
            if (attnd__tier_host_slot(t, op->slot)) { /* a chain's host band: now */
                int r = one_sync(t, write, op, io->bounce + (size_t)b * t->slot_bytes);
                if (r && !first)
                    first = r;
                io->free_buf[n_free++] = b;
                next++;
                continue;
            }
            char *buf = io->bounce + (size_t)b * t->slot_bytes, *page = direct_page(t, io, op);
            int r = write ? fill_slot(t, op, buf, page) : 0;
            int parts = page ? 2 : 1;
            if (r == 0 && io_uring_sq_space_left(ring) < (unsigned)parts &&
                io_uring_submit(ring) >= 0)
                queued = 0;
            for (int part = parts - 1; r == 0 && part < 2 * parts - 1; part++) /* 0, or 1 and 2 */
                r = queue_part(io, write, b, part, op->slot, page);
            if (r) { /* a copy failed (GPU), or no room in the ring: fail it */
                op->res = r;
                if (!first)
                    first = r;
                io->free_buf[n_free++] = b;
                next++;
                continue;
            }
            io->op_of[b] = next++;
            io->parts[b] = parts;
            io->res[b] = 0;
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
            uint64_t d = io_uring_cqe_get_data64(cqe);
            int32_t b = (int32_t)(d & 0xffffffffu), part = (int32_t)(d >> 32);
            size_t want = part == 2 ? t->page_bytes : part == 1 ? (size_t)ATTND__SLOT_DATA
                                                                  : t->slot_bytes;
            int res = cqe->res;
            if (res >= 0 && (size_t)res != want)
                res = write ? -ENOSPC : -EIO; /* short: out of room / past the end */
            if (res < 0 && !io->res[b])
                io->res[b] = res;
            if (--io->parts[b] == 0) {
                io->ready[n_ready++].buf = b;
                inflight--;
            }
            seen++;
        }
        io_uring_cq_advance(ring, seen);
        if (n_ready) { /* one at a time: refill between them */
            int32_t b = io->ready[--n_ready].buf;
            attnd__tio_op *op = &ops[io->op_of[b]];
            char *buf = io->bounce + (size_t)b * t->slot_bytes, *page = direct_page(t, io, op);
            int r = io->res[b];
            if (r == 0 && !write)
                r = check_slot(t, op, buf, page ? page : buf + ATTND__SLOT_DATA);
            op->res = r;
            if (r && !first)
                first = r;
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
    if (t->kind == ATTND__STORE_HOST)
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

