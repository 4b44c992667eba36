/* Internal interfaces of the KV tiers below memory and of durability
 * (worker/TIERS.md has the design, the on-disk formats and the figures).
 *
 * Files:
 *   crc32c.c      the checksum of every page and record written
 *   tier_store.c  the store below memory: a slot file on local disk (or, below
 *                 a GPU's HBM, slots in host RAM, or both: a chain) and its
 *                 slot allocator
 *   tier_io.c     the I/O contexts (an io_uring each, the file and bounce
 *                 buffers registered) that move pages to and from slots
 *   tier.c        the policy: moving cold layers down (evict) and allocation
 *                 with eviction (attnd__engine_alloc)
 *   tier_load.c   loading them back (load, prefetch) and the mover thread
 *   tier_demote.c a chain's host-RAM pages on to disk (the mover)
 *   wal.c         the write-ahead log (durable appends)
 *   ckpt.c        checkpoints (the manifest) and the checkpointer thread
 *   recover.c     start-up: manifest + log -> sessions
 *
 * Locks, in order: a session's mu (several in address order), then the
 * tier's tio_mu, slot_mu, mv_mu, the pool's mu, the WAL's mu. A thread
 * holding session locks takes other sessions' locks only by trylock (an
 * eviction's victims), so no tier operation can deadlock with Attend. */
#ifndef ATTND_TIER_INT_H
#define ATTND_TIER_INT_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "worker_int.h"

/* crc32c.c: CRC-32C of n bytes, chained from crc (0 to start). */
uint32_t attnd__crc32c(uint32_t crc, const void *p, size_t n);

/* ---- slots (tier_store.c) ---------------------------------------------------
 * A slot is slot_bytes (a multiple of 4096, for O_DIRECT): a 4096-byte
 * header block (a 64-byte header, then zeros), then the page's bytes as the
 * pool holds them, then zeros. The header names what the slot holds, so a
 * reload can tell a stale or misplaced slot from the page it expects, and
 * carries the CRC-32C of its bytes [8, 64) followed by the page's bytes.
 * The page's own block-aligned place lets a direct transfer move it
 * straight between the file and the pool page, without a bounce copy.
 * Little-endian, as every attnd file. */

#define ATTND__SLOT_MAGIC 0x504b4e41u /* "ANKP" */
#define ATTND__SLOT_HDR 64
#define ATTND__SLOT_DATA 4096 /* the page's bytes start here (a direct transfer's alignment) */

typedef struct attnd__slot_hdr {
    uint32_t magic;
    uint32_t crc;        /* CRC-32C of bytes [8, 64 + page_bytes) of the slot */
    uint8_t id[16];      /* the session */
    uint32_t layer, page; /* the page's place in the session */
    uint32_t tokens;     /* tokens the page held when written */
    uint32_t page_bytes;
    uint64_t gen;        /* the store's write counter (no meaning on reload) */
    uint8_t pad[16];
} attnd__slot_hdr;

_Static_assert(sizeof(attnd__slot_hdr) == ATTND__SLOT_HDR, "slot header is 64 bytes");

enum { ATTND__SLOT_FREE = 0, ATTND__SLOT_LIVE = 1, ATTND__SLOT_PENDING = 2 };
/* DISK: slots [0, n_slots) in the file. HOST: slots [0, n_slots) in host
 * RAM. CHAIN: the file's slots [0, n_slots), then a host-RAM band
 * [n_slots, n_slots + n_host) that evictions fill first and the mover
 * drains to the file (demotion), so cold pages go memory -> host RAM ->
 * disk (TIERS.md, "Three levels"). */
enum { ATTND__STORE_DISK = 1, ATTND__STORE_HOST = 2, ATTND__STORE_CHAIN = 3 };
/* An op's result when the slot read back is not the page expected. */
#define ATTND__TIO_BAD (-100000)

/* One page moved between memory and a slot. */
typedef struct attnd__tio_op {
    int64_t slot;
    int32_t mem;          /* memory page: a write's source, a load's
                             destination; -1: none (write src, verify) */
    const void *src;      /* a write's bytes when mem < 0 (page_bytes) */
    attnd_session_id id;
    int32_t layer, page, tokens;
    int res;              /* after the I/O: 0, -errno or ATTND__TIO_BAD */
} attnd__tio_op;

/* A load of the pages of one layer below memory, read by the mover and
 * installed by whoever holds the session's lock next (the Attend waiting
 * for it, any later call touching the layer, or the mover by trylock):
 * the mover never waits for a session's lock, so an Attend that holds its
 * sessions' locks while it waits for their loads cannot deadlock with it.
 * The layer is LOADING (and s->job[l] points here) until installed. */
typedef struct attnd__tjob {
    struct attnd__tjob *next;
    attnd__session *s;    /* a reference, dropped by the mover */
    int32_t layer;
    int prefetch;         /* read ahead (not for a waiting Attend) */
    int done;             /* read (under mv_mu) */
    int installed;        /* applied to the session (under mv_mu) */
    int res;              /* 0, -errno, ATTND__TIO_BAD; -ENOMEM: no memory,
                             nothing read (the layer stays below) */
    int32_t m;            /* pages read */
    int32_t *pages;       /* [m] memory pages, then owned by the session */
    int32_t *page_j;      /* [m] their places in the layer */
    int64_t bad_slot;     /* a failure's slot and page, for the message */
    int32_t bad_j;
    int32_t cap;
} attnd__tjob;

/* An I/O context: one io_uring (the store's file registered, bounce buffers
 * registered when the memlock limit allows), depth bounce buffers of one
 * slot each, and scratch for op lists. Without io_uring (a kernel or a
 * seccomp profile that refuses it) the same calls run pread/pwrite. */
typedef struct attnd__tio {
    struct attnd__tier *t;
    void *ring;           /* struct io_uring *, or NULL: pread/pwrite */
    int fixed_buf, fixed_file;
    char *bounce;         /* nbuf * slot_bytes, 4096-aligned */
    int depth;            /* ops in flight at most */
    int nbuf;             /* bounce buffers: depth and a few spare */
    int32_t *free_buf;    /* [nbuf] */
    int64_t *op_of;       /* [nbuf]: the op in each bounce buffer */
    struct {
        int32_t buf, res;
    } *ready;             /* [nbuf]: completed, not looked at yet */
    int8_t *parts;        /* [nbuf]: transfers of its op still in flight */
    int32_t *res;         /* [nbuf]: its op's first failure */
    attnd__tio_op *ops;   /* scratch for callers (attnd__tio_ops) */
    int64_t cap_ops;
    int32_t *pages;       /* scratch: memory pages */
    int64_t cap_pages;
    struct attnd__tio *next;
} attnd__tio;

typedef struct attnd__tier_cfg {
    int kind;              /* ATTND__STORE_DISK / HOST / CHAIN */
    const char *dir;       /* disk, chain: the directory */
    uint64_t bytes;        /* the store's capacity (chain: the file's) */
    uint64_t host_bytes;   /* chain: its host-RAM band */
    int keep_copies;       /* durable: a resident page keeps its slot */
    int32_t depth;         /* I/Os in flight per context */
    int32_t prefetch;      /* layers ahead to prefetch; 0 off */
} attnd__tier_cfg;

typedef struct attnd__tier {
    attnd_engine *e;
    int kind, keep, direct;
    int zero_copy;         /* pages go straight between pool and file */
    int fd;                /* disk: the slot file */
    uint64_t prealloc;     /* bytes of it fallocated (under slot_mu) */
    int prealloc_off;      /* fallocate refused: writes extend the file */
    int lock_fd;           /* disk: DIR/lock, flock'd while we run */
    char dir[PATH_MAX / 2];
    char path[PATH_MAX];
    char *host;            /* host: the slots; chain: its host band */
    size_t host_map;       /* bytes mapped at host */
    size_t page_bytes, slot_bytes;
    int64_t n_slots;       /* the file's (disk, chain) or host RAM's (host) */
    int64_t n_host;        /* chain: slots [n_slots, n_slots + n_host) in host RAM */

    pthread_mutex_t slot_mu; /* the slot allocator: */
    int64_t limit;         /* usable slots: n_slots, lowered when a write
                              fails for lack of room (disk full, file size
                              limit) */
    int64_t next_new;      /* slots at and past it were never used */
    int32_t *link;         /* [n_slots]: next slot in the free list or a
                              pending list, -1 ends one */
    int32_t free_head, pend_head[2];
    int64_t n_free_slots, n_pend[2];
    int64_t used;          /* LIVE + PENDING */
    uint8_t *state;        /* [n_slots] ATTND__SLOT_* */
    uint32_t *crc;         /* [n_slots] the CRC its header must carry */
    uint16_t *bounds;      /* [n_slots][attnd_kernel_kv_bounds_elems]: the key bounds
                              of a topk-pages layer's page in the slot
                              (sparse_kv.c; mapped MAP_NORESERVE) */
    size_t bounds_bytes;
    int cur_pend;          /* released slots go to pend_head[cur_pend] */
    uint64_t gen;          /* atomic (__atomic builtins) */
    char full_msg[200];    /* why limit was lowered */
    /* chain: the host band's allocator (its own free list through link) */
    int32_t hfree_head;
    int64_t h_next_new, hn_free;
    int32_t host_low;      /* the mover drains the band below this many free */

    pthread_mutex_t tio_mu;
    pthread_cond_t tio_cv;
    attnd__tio *tios, *free_tio;
    int n_tio;
    int32_t depth;

    /* the mover thread (tier.c): loads (an Attend's and prefetches) and
     * eviction to a low water; under mv_mu */
    pthread_mutex_t mv_mu;
    pthread_cond_t mv_cv;    /* the mover: work came */
    pthread_cond_t done_cv;  /* waiters: a load was read */
    pthread_t mover;
    int mover_running, stop;
    struct attnd__tjob *queue, *queue_tail; /* to read, in order */
    struct attnd__tjob *done;  /* read; installed or not yet */
    struct attnd__tjob *spare; /* records for reuse */
    int32_t n_queued;
    int32_t prefetch;
    int32_t low_water;     /* the mover evicts while fewer pages are free */
    atomic_uint_fast64_t tick;
    atomic_uint cursor;    /* eviction scan start */

    atomic_uint_fast64_t n_out, n_in, n_prefetched, n_waits, n_bad, n_write_err, n_evict;
    atomic_uint_fast64_t n_demoted; /* chain: pages moved from host RAM to disk */
} attnd__tier;

/* Where slot k's bytes are in host RAM (a host store's slot, or the
 * chain's host band), or NULL: in the file, at k * slot_bytes. */
static inline char *attnd__tier_host_slot(const attnd__tier *t, int64_t k)
{
    if (t->kind == ATTND__STORE_HOST)
        return t->host + (size_t)k * t->slot_bytes;
    if (k >= t->n_slots)
        return t->host + (size_t)(k - t->n_slots) * t->slot_bytes;
    return NULL;
}

/* tier_store.c */
attnd_status attnd__tier_create(attnd_engine *e, const attnd__tier_cfg *cfg,
                                attnd__tier **t_p, attnd_error *err);
void attnd__tier_destroy(attnd__tier *t);
/* n free slots into out (LIVE, crc unset). RESOURCE_EXHAUSTED names the
 * store's figures (and a lowered limit's reason). */
attnd_status attnd__tier_slots_alloc(attnd__tier *t, int64_t n, int64_t *out,
                                     attnd_error *err);
/* Up to n free slots into out; returns how many (0 when none). A chain
 * hands out host-band slots first. */
int64_t attnd__tier_slots_take(attnd__tier *t, int64_t n, int64_t *out);
/* Chain: up to n free slots of the file alone (demotion); how many. */
int64_t attnd__tier_file_slots_take(attnd__tier *t, int64_t n, int64_t *out);
/* Chain: free slots of the host band (0 for other stores). */
int64_t attnd__tier_host_free(attnd__tier *t);
/* Slots no longer needed: free now, or (keep_copies) once the next
 * checkpoint no longer names them. */
void attnd__tier_slot_release(attnd__tier *t, int64_t slot);
/* A slot a recovered manifest names: LIVE with this crc. Recovery claims
 * every slot first, then settles: the unclaimed ones below the highest
 * claimed become free. */
void attnd__tier_slot_claim(attnd__tier *t, int64_t slot, uint32_t crc);
void attnd__tier_slots_settle(attnd__tier *t);
/* Checkpoints: slots released from now on wait for the next one; *gen_p
 * is the generation released before, which the checkpoint being written
 * no longer names: attnd__tier_pending_free frees it once it is durable. */
void attnd__tier_pending_swap(attnd__tier *t, int *gen_p);
void attnd__tier_pending_free(attnd__tier *t, int gen);
/* The write of `slot` failed with -res for lack of room: no slot at or
 * past it is handed out again (the logical capacity shrinks with it). */
void attnd__tier_slots_full(attnd__tier *t, int64_t slot, int res);
void attnd__tier_slot_counts(attnd__tier *t, int64_t *used_p, int64_t *limit_p);

/* tier_io.c */
/* Set up / free one I/O context of t (its ring, bounce buffers). */
attnd_status attnd__tio_init(attnd__tier *t, attnd__tio *io, attnd_error *err);
void attnd__tio_free(attnd__tio *io);
/* An I/O context from the tier's set (blocks while all are taken). */
attnd__tio *attnd__tio_get(attnd__tier *t);
void attnd__tio_put(attnd__tier *t, attnd__tio *io);
/* Scratch of at least n ops / n pages (RESOURCE_EXHAUSTED). */
attnd_status attnd__tio_ops(attnd__tio *io, int64_t n, attnd__tio_op **ops_p,
                            attnd_error *err);
attnd_status attnd__tio_pages(attnd__tio *io, int64_t n, int32_t **pages_p,
                              attnd_error *err);
/* Write ops[i] (slot, and mem or src) with headers and checksums; ops[i].res
 * tells each. Returns the first failure's -errno (0: all written). */
int attnd__tio_write(attnd__tio *io, attnd__tio_op *ops, int64_t n);
/* Read ops[i].slot back and check it is the page ops[i] names (header and
 * CRC against the allocator's); into memory page ops[i].mem when >= 0.
 * Returns the first failure (-errno or ATTND__TIO_BAD; 0: all good). */
int attnd__tio_read(attnd__tio *io, attnd__tio_op *ops, int64_t n);
/* Make every write so far durable (the slot file's fdatasync). 0 or -errno. */
int attnd__tio_sync(attnd__tio *io);

/* tier.c */
/* Start / stop the mover thread. */
attnd_status attnd__tier_start(attnd__tier *t, attnd_error *err);
void attnd__tier_stop(attnd__tier *t);
/* Make layer of s resident (caller holds s->mu): waits for a prefetch in
 * flight, else reads it in (evicting colder sessions for room).
 * DATA_LOSS (s is lost) when a page fails its checks, RESOURCE_EXHAUSTED
 * when no memory can be freed. */
attnd_status attnd__tier_load(attnd_engine *e, attnd__session *s, int32_t layer,
                              attnd_error *err);
/* The sessions of one Attend, locked by the caller: make `layer` resident
 * in all of them (their loads batched), note their use, and queue the
 * prefetch of the layers after it. */
attnd_status attnd__tier_attend(attnd_engine *e, attnd__session **ss, uint32_t n,
                                int32_t layer, attnd_error *err);
/* This thread attends `layer` of sessions ss[0, n), locked: evictions it
 * runs may also move their other layers (n = 0: none; per thread). */
void attnd__tier_own(attnd__session **ss, uint32_t n, int32_t layer);
/* Install the loads of s the mover has read (prefetches waiting for s's
 * lock, which the caller holds), so their layers are resident and can be
 * moved down again; waits for none. Returns the layers installed. */
int32_t attnd__tier_settle_read(attnd_engine *e, attnd__session *s);
/* Is the mover reading a layer of a session this thread holds (its pages
 * pinned until it is installed)? */
int attnd__tier_own_loading(attnd_engine *e);
/* Every layer of sessions ss[0, n) (distinct, in address order, none
 * locked by the caller) back in memory: all their loads queued at once,
 * then waited for (benchmarks; warming sessions up). */
attnd_status attnd__tier_load_all(attnd_engine *e, attnd__session **ss, uint32_t n,
                                  attnd_error *err);
/* Page j of layer changed: drop its slot copy. Caller holds s->mu. */
void attnd__tier_dirty(attnd_engine *e, attnd__session *s, int32_t layer, int64_t j);
/* Move cold layers down until `want` memory pages were freed or nothing
 * more can be (sessions in use are skipped: trylock). Returns pages freed. */
int64_t attnd__tier_evict(attnd_engine *e, int64_t want);
/* The same with the caller's I/O context (its op scratch is used; NULL:
 * one is taken) and the reason of a shortfall into why (may be NULL). */
int64_t attnd__tier_evict_for(attnd_engine *e, attnd__tio *io, int64_t want, attnd_error *why);
/* After an eviction round that freed nothing: wait a little (the victims
 * may be busy a moment) and say whether to try again (1) or give up. */
int attnd__tier_busy_wait(int *idle, int32_t free_before, int32_t free_now);
/* Everything of s below memory (tests, the benchmark); caller holds no
 * lock. Returns pages moved, or a negative status. */
int64_t attnd__tier_evict_session(attnd_engine *e, attnd__session *s, attnd_error *err);
/* Release the slots of a freed session's layer. */
void attnd__tier_forget_layer(attnd__tier *t, attnd__session *s, int32_t layer);
/* Chain: move up to `want` pages of the coldest sessions from the host
 * band to the file (the mover, when the band runs short; sessions in use
 * are skipped: trylock). Returns pages moved. */
int64_t attnd__tier_demote(attnd_engine *e, int64_t want);

/* ---- the write-ahead log (wal.c) ---------------------------------------------
 * Segments DIR/wal/<first LSN, 16 hex>.log, each preallocated: a 4096-byte
 * header block, then records back to back, then zeros. Every flush ends at
 * a 4096-byte boundary of the file (a PAD record fills up to it), so the
 * log is written with O_DIRECT. LSNs count record bytes
 * over the whole log. A record: the header below, then `len` payload bytes,
 * padded to 8. */

#define ATTND__WAL_MAGIC 0x43455241u /* "AREC" */
#define ATTND__WSEG_HDR 4096 /* the header block: records start block-aligned */
#define ATTND__WSEG_MAGIC 0x474553444e545441ull /* "ATTNDSEG" */

typedef struct attnd__wrec_hdr {
    uint32_t magic;
    uint32_t crc;     /* CRC-32C of the record's bytes from offset 8 on */
    uint32_t len;     /* payload bytes */
    uint16_t type;    /* ATTND__WREC_* */
    uint16_t flags;
    uint64_t lsn;     /* this record's */
    uint64_t txn;     /* its transaction (0: none) */
} attnd__wrec_hdr;

_Static_assert(sizeof(attnd__wrec_hdr) == 32, "record header is 32 bytes");

enum {
    ATTND__WREC_CREATE = 1, /* id[16], u64 max_tokens; since manifest version 2
                               also u64 owner, u32 policy bytes, u32 0, the
                               policy (attnd__sparse_encode); 24 bytes: none */
    ATTND__WREC_CLOSE = 2,  /* id[16] */
    ATTND__WREC_DATA = 3,   /* attnd__wrec_data, then n entries (kv dtype, wire form) */
    ATTND__WREC_COMMIT = 4, /* txn's DATA apply */
    ATTND__WREC_ABORT = 5,  /* txn's DATA never apply */
    ATTND__WREC_PAGE = 6,   /* attnd__wrec_page, then the page's bytes (checkpoint) */
    ATTND__WREC_SEGEND = 7, /* u64: the next segment's first LSN */
    ATTND__WREC_PAD = 8,    /* zeros up to a 4096-byte boundary of the file */
};

typedef struct attnd__wrec_data {
    uint8_t id[16];
    uint32_t layer, pad;
    uint64_t start, n; /* the layer's tokens [start, start + n) */
    uint64_t ulen;     /* the layer's user length after it */
} attnd__wrec_data;

typedef struct attnd__wrec_page {
    uint8_t id[16];
    uint32_t layer, page, tokens, pad;
} attnd__wrec_page;

/* The segment header and the checkpoint's both carry the engine's shape, so
 * a worker never reads another model's KV. */
typedef struct attnd__fingerprint {
    char model[32];
    uint32_t n_layers, page_size, entry_bytes, page_bytes, slot_bytes, kv_dtype;
    uint32_t shard, pad; /* attnd_engine_config.shard_tag (groups) */
} attnd__fingerprint;

typedef struct attnd__wal attnd__wal;

/* An open transaction's place in the log (held by whoever writes it: a
 * stage, an Attend): the oldest open one bounds what a checkpoint trims. */
typedef struct attnd__wtxn {
    struct attnd__wtxn *prev, *next;
    uint64_t txn;       /* 0 until its first record */
    uint64_t first_lsn;
} attnd__wtxn;

/* A reserved record: fill payload (len bytes), then attnd__wal_finish. */
typedef struct attnd__wrec {
    void *payload;
    uint64_t lsn, end;  /* the record's LSN and the next one's */
    void *buf;          /* internal */
    attnd__wrec_hdr *hdr;
} attnd__wrec;

/* Open the log in dir (DIR/wal) for writing from LSN `start` (a new
 * segment), and start its flusher. */
attnd_status attnd__wal_open(const char *dir, const attnd__fingerprint *fp, uint64_t seg_bytes,
                             int mode, int32_t window_ms, uint64_t start,
                             attnd__wal **w_p, attnd_error *err);
/* Flush what is buffered, stop the flusher, close. */
void attnd__wal_close(attnd__wal *w);
/* Reserve a record of `len` payload bytes (at most attnd__wal_max_payload).
 * tx (may be NULL): the transaction it belongs to (its first record opens
 * it; COMMIT and ABORT close it). Blocks while the buffers are full.
 * RESOURCE_EXHAUSTED when the log has no room (a segment could not be
 * made), UNAVAILABLE when it failed before. */
attnd_status attnd__wal_reserve(attnd__wal *w, uint16_t type, attnd__wtxn *tx, size_t len,
                                attnd__wrec *r, attnd_error *err);
void attnd__wal_finish(attnd__wal *w, attnd__wrec *r);
/* Wait until every record before `lsn` is durable (the log failing:
 * UNAVAILABLE). */
attnd_status attnd__wal_wait(attnd__wal *w, uint64_t lsn, attnd_error *err);
size_t attnd__wal_max_payload(const attnd__wal *w);
uint64_t attnd__wal_next_lsn(attnd__wal *w);
/* Start a new segment; *first_p its first LSN, *oldest_p the first LSN of
 * the oldest transaction still open (or *first_p). */
attnd_status attnd__wal_rotate(attnd__wal *w, uint64_t *first_p, uint64_t *oldest_p,
                               attnd_error *err);
/* Delete the segments that end at or before lsn. */
void attnd__wal_trim(attnd__wal *w, uint64_t lsn);
/* Figures for GetStats. */
void attnd__wal_counts(attnd__wal *w, uint64_t *durable_p, uint64_t *bytes_p,
                       uint64_t *syncs_p);
/* The segment file name of lsn in dir. */
void attnd__wal_seg_path(const char *dir, uint64_t first, char *buf, size_t n);

/* ---- durability: checkpoints and recovery (ckpt.c, recover.c) ------------- */

typedef struct attnd__dur {
    char dir[PATH_MAX / 2];
    int lock_fd;
    int mode;
    int32_t window_ms;
    uint64_t seg_bytes, ckpt_bytes;
    attnd__fingerprint fp;
    attnd__wal *wal;
    pthread_mutex_t mu;     /* one checkpoint at a time */
    pthread_mutex_t cv_mu;
    pthread_cond_t cv;
    pthread_t tid;
    int running, stop;
    atomic_uint_fast64_t last_ckpt_lsn; /* log position of the last checkpoint */
    atomic_int nudged;      /* the log grew past ckpt_bytes: checkpointer woken */
    atomic_uint_fast64_t n_ckpt, n_recovered, n_lost, n_ckpt_fail;
    char ckpt_err[ATTND_ERROR_MSG_MAX];
    unsigned char *man;     /* the manifest being built */
    size_t man_len, man_cap;
} attnd__dur;

/* The manifest, DIR/checkpoint: this header, then per session: id[16],
 * u64 max_tokens, u32 flags (1: lost), u32 message bytes, the message
 * padded to 8; (version 2:) u64 owner (0: none), u32 policy bytes, u32 0,
 * the policy (attnd__sparse_encode; 0 bytes: dense) padded to 8; then per
 * layer u64 length, u64 user length, u32 pages, u32 hole end (version 2:
 * streaming freed pages [sink pages, hole end); version 1: 0), and per
 * page i32 slot (-1: a PAGE record in the log at or past ckpt_lsn holds
 * it, or a page streaming freed), u32 its CRC. Last: u32 CRC-32C of
 * everything before, u32 ATTND__CKPT_TAIL. Version 1 (no owners, no
 * policies) is still read: its sessions come back without an owner and
 * dense, as it recorded them. */
#define ATTND__CKPT_MAGIC 0x504b43444e545441ull /* "ATTNDCKP" */
#define ATTND__CKPT_TAIL 0x4c494154u             /* "TAIL" */
#define ATTND__CKPT_VERSION 2

typedef struct attnd__ckpt_hdr {
    uint64_t magic;
    uint32_t version, hdr_bytes;
    attnd__fingerprint fp;
    uint64_t ckpt_lsn;    /* the checkpoint's log position */
    uint64_t replay_from; /* recovery replays the log from here */
    uint64_t n_sessions;
    uint64_t pad[3];
} attnd__ckpt_hdr;

/* ckpt.c */
/* Write a checkpoint now (the checkpointer, start-up, shutdown). */
attnd_status attnd__ckpt_run(attnd_engine *e, attnd_error *err);
attnd_status attnd__ckpt_start(attnd_engine *e, attnd_error *err);
void attnd__ckpt_stop(attnd_engine *e);
/* recover.c: open DIR (lock it, check its shape), rebuild the sessions of
 * its checkpoint and log into e, and set *next_lsn_p where the log goes
 * on. Sessions whose KV fails a check are kept, lost (DATA_LOSS). */
attnd_status attnd__recover(attnd_engine *e, uint64_t *next_lsn_p, attnd_error *err);
/* Lock DIR (DIR/lock) for this process; the fd stays open. */
attnd_status attnd__dir_lock(const char *dir, int *fd_p, attnd_error *err);

/* engine.c: durable log records of the engine's changes (no-ops when not
 * durable). Callers hold the sessions' locks. */
attnd_status attnd__engine_log_data(attnd_engine *e, attnd__wtxn *tx,
                                    const attnd_session_id *id, int32_t layer,
                                    uint64_t start, uint64_t n, uint64_t ulen,
                                    attnd_dtype dtype, const void *kv, uint64_t *end_p,
                                    attnd_error *err);
attnd_status attnd__engine_log_mark(attnd_engine *e, attnd__wtxn *tx, uint16_t type,
                                    uint64_t *end_p, attnd_error *err);
/* CREATE (with max_tokens) or CLOSE of a session. */
attnd_status attnd__engine_log_session(attnd_engine *e, uint16_t type,
                                       const attnd_session_id *id, uint64_t max_tokens,
                                       attnd_error *err);
/* CREATE of s (caller holds s->mu or s is not yet shared): its id,
 * max_tokens, owner and policy, waited for in sync mode. RESOURCE_EXHAUSTED
 * naming policy_table when the policy does not fit a record. */
attnd_status attnd__engine_log_create(attnd_engine *e, const attnd__session *s,
                                      attnd_error *err);
/* SYNC: wait until the log holds everything before end (0: nothing). */
attnd_status attnd__engine_log_wait(attnd_engine *e, uint64_t end, attnd_error *err);

/* engine_tiers.c: the tier below and durability of an engine, set up last
 * in attnd_engine_create (recovery fills the session table) and taken down
 * first (close: threads stopped, a last checkpoint; free: after the
 * sessions, which give their slots back). */
attnd_status attnd__engine_tiers_open(attnd_engine *e, const attnd_engine_config *cfg,
                                      attnd_error *err);
void attnd__engine_tiers_close(attnd_engine *e);
void attnd__engine_tiers_free(attnd_engine *e);
void attnd__engine_tiers_stats(attnd_engine *e, attnd_engine_stats *st);
/* engine.c: a session of owner (0: none, charged for it) under id in the
 * table, max_tokens' pages reserved, with policy pol (NULL: dense; checked
 * by the caller; given before the session can be found, so a checkpoint
 * never sees it without it) (lenient: recovery, which keeps a session
 * whose promise no longer fits, without it); *s_p (may be NULL) gets a
 * reference. Not logged. */
attnd_status attnd__engine_session_make(attnd_engine *e, uint64_t owner,
                                       const attnd_session_id *id,
                                       uint64_t max_tokens, const attnd_session_policy *pol,
                                       int lenient, attnd__session **s_p, attnd_error *err);

/* engine.c: a session made (as above, not lenient) and logged (CREATE,
 * durable in sync mode) for owner (0: none) with policy pol (NULL: dense;
 * checked by the caller) under id want (NULL: a random one into *id_p). */
attnd_status attnd__engine_session_create(attnd_engine *e, uint64_t owner, uint64_t max_tokens,
                                          const attnd_session_policy *pol,
                                          const attnd_session_id *want, attnd_session_id *id_p,
                                          attnd_error *err);

/* Copy memory page `page` out to dst / in from src (page_bytes; the GPU's
 * pages go through the backend). */
attnd_status attnd__engine_page_out(attnd_engine *e, int32_t page, void *dst,
                                    attnd_error *err);
attnd_status attnd__engine_page_in(attnd_engine *e, int32_t page, const void *src,
                                   attnd_error *err);

/* The coldest sessions a scan of the session table met, each with a
 * reference held, coldest first: whom the mover evicts (tier.c) and whose
 * host-RAM pages the chain moves on to disk (tier_demote.c). */
typedef struct attnd__tier_cold {
    attnd_engine *e;
    attnd__session *s[16];
    uint64_t used[16];
    int n;
    int64_t scanned;
} attnd__tier_cold;

/* Whether a session last used at u would enter v (not when v is full of
 * colder ones). */
static inline int attnd__tier_cold_wants(const attnd__tier_cold *v, uint64_t u)
{
    const int cap = (int)(sizeof v->s / sizeof v->s[0]);
    return v->n < cap || u < v->used[cap - 1];
}
/* Put s (last used at u) into v in order, taking a reference; the warmest
 * drops out (its reference put) when v is full. Call only when
 * attnd__tier_cold_wants(v, u). */
void attnd__tier_cold_add(attnd__tier_cold *v, attnd__session *s, uint64_t u);

#endif /* ATTND_TIER_INT_H */
