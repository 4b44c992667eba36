/* The service's wire glue: the per-thread decode arena, flattening of
 * received byte buffers, protobuf-c pack/unpack over grpc slices, and
 * AttendResponse through attnd_wire. See codec.h for why each exists. */
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>

#include "codec.h"

/* ---- arena ---------------------------------------------------------------- */

#define ARENA_ALIGN 16
#define ARENA_MIN_CHUNK (64u * 1024u)

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t cap, used;
    _Alignas(ARENA_ALIGN) unsigned char data[];
} arena_chunk;

static void *arena_pc_alloc(void *self, size_t n)
{
    return attnd_srv_arena_alloc(self, n);
}

static void arena_pc_free(void *self, void *p)
{
    (void)self; /* everything goes at the next reset */
    (void)p;
}

void attnd_srv_arena_init(attnd_srv_arena *a, size_t initial_cap)
{
    memset(a, 0, sizeof *a);
    a->pc.alloc = arena_pc_alloc;
    a->pc.free = arena_pc_free;
    a->pc.allocator_data = a;
    if (initial_cap) {
        a->base = malloc(initial_cap);
        a->cap = a->base ? initial_cap : 0;
    }
}

static void arena_free_overflow(attnd_srv_arena *a)
{
    arena_chunk *c = a->overflow;
    while (c) {
        arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->overflow = NULL;
}

void attnd_srv_arena_cleanup(attnd_srv_arena *a)
{
    arena_free_overflow(a);
    free(a->base);
    memset(a, 0, sizeof *a);
}

/* Record a cycle that used `used` bytes of a block of `cap`; 1 when the
 * window just closed with every cycle under a quarter of the block (trim
 * it to *new_cap_p), else 0. */
static int trim_window(size_t *window_max, unsigned *window_n, size_t used, size_t cap,
                       size_t *new_cap_p)
{
    if (used > *window_max)
        *window_max = used;
    if (++*window_n < ATTND_SRV_TRIM_WINDOW)
        return 0;
    size_t max = *window_max;
    *window_max = 0;
    *window_n = 0;
    if (cap <= ATTND_SRV_TRIM_MIN || max >= cap / 4)
        return 0;
    *new_cap_p = max + max / 2 > ATTND_SRV_TRIM_MIN ? max + max / 2 : ATTND_SRV_TRIM_MIN;
    return 1;
}

void attnd_srv_arena_reset(attnd_srv_arena *a)
{
    size_t want = a->used + a->overflow_bytes, cap = 0;

    arena_free_overflow(a);
    if (a->overflow_bytes)
        /* the cycle overflowed: regrow so that one like it fits in place */
        cap = want + want / 2 + ARENA_MIN_CHUNK;
    else if (!trim_window(&a->window_max, &a->window_n, want, a->cap, &cap))
        cap = 0;
    if (cap) {
        unsigned char *p = malloc(cap);
        if (p) {
            free(a->base);
            a->base = p;
            a->cap = cap;
        }
    }
    a->used = 0;
    a->overflow_bytes = 0;
    a->failed = 0;
}

void *attnd_srv_arena_alloc(attnd_srv_arena *a, size_t n)
{
    size_t need = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    arena_chunk *c = a->overflow;

    if (need < n) /* overflowed the rounding */
        return NULL;
    if (need <= a->cap - a->used) {
        void *p = a->base + a->used;
        a->used += need;
        return p;
    }
    if (!c || need > c->cap - c->used) {
        size_t cap = need > ARENA_MIN_CHUNK ? need : ARENA_MIN_CHUNK;
        if (cap > SIZE_MAX - sizeof *c)
            return NULL;
        c = malloc(sizeof *c + cap);
        if (!c) {
            a->failed = 1;
            return NULL;
        }
        c->cap = cap;
        c->used = 0;
        c->next = a->overflow;
        a->overflow = c;
    }
    void *p = c->data + c->used;
    c->used += need;
    a->overflow_bytes += need;
    return p;
}

/* ---- flatten -------------------------------------------------------------- */

void attnd_srv_buf_cleanup(attnd_srv_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->cap = 0;
}

/* Make room for n bytes, keeping the first `keep`. 0 or -1. */
static int buf_fit(attnd_srv_buf *b, size_t n, size_t keep)
{
    if (n <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < n)
        cap = cap > SIZE_MAX / 2 ? n : cap * 2;
    unsigned char *p = malloc(cap);
    if (!p)
        return -1;
    if (keep)
        memcpy(p, b->p, keep);
    free(b->p);
    b->p = p;
    b->cap = cap;
    return 0;
}

attnd_status attnd_srv_bb_flatten(grpc_byte_buffer *bb, attnd_srv_buf *scratch,
                                  const uint8_t **data_p, size_t *len_p,
                                  attnd_error *err)
{
    static const uint8_t empty[1];
    grpc_byte_buffer_reader rd;
    grpc_slice s;
    size_t len = 0;

    if (bb->type == GRPC_BB_RAW && bb->data.raw.compression == GRPC_COMPRESS_NONE &&
        bb->data.raw.slice_buffer.count <= 1) {
        if (bb->data.raw.slice_buffer.count == 0) {
            *data_p = empty;
            *len_p = 0;
        } else {
            const grpc_slice *one = &bb->data.raw.slice_buffer.slices[0];
            *data_p = GRPC_SLICE_START_PTR(*one);
            *len_p = GRPC_SLICE_LENGTH(*one);
        }
        return ATTND_OK;
    }
    size_t trimmed;
    if (trim_window(&scratch->window_max, &scratch->window_n, grpc_byte_buffer_length(bb),
                    scratch->cap, &trimmed)) {
        /* nothing in it is kept across messages */
        attnd_srv_buf_cleanup(scratch);
    }
    if (!grpc_byte_buffer_reader_init(&rd, bb))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "request: the message could not be decompressed");
    if (bb->data.raw.compression == GRPC_COMPRESS_NONE &&
        buf_fit(scratch, grpc_byte_buffer_length(bb), 0))
        goto err_nomem;
    while (grpc_byte_buffer_reader_next(&rd, &s)) {
        size_t n = GRPC_SLICE_LENGTH(s);
        if (n > SIZE_MAX - len || buf_fit(scratch, len + n, len)) {
            grpc_slice_unref(s);
            goto err_nomem;
        }
        memcpy(scratch->p + len, GRPC_SLICE_START_PTR(s), n);
        len += n;
        grpc_slice_unref(s);
    }
    grpc_byte_buffer_reader_destroy(&rd);
    *data_p = len ? scratch->p : empty;
    *len_p = len;
    return ATTND_OK;

err_nomem:
    grpc_byte_buffer_reader_destroy(&rd);
    return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                           "request: no memory for a message of this size");
}

/* ---- protobuf-c ------------------------------------------------------------- */

ProtobufCMessage *attnd_srv_unpack(const ProtobufCMessageDescriptor *d,
                                   attnd_srv_arena *a, const uint8_t *data,
                                   size_t len, attnd_error *err)
{
    ProtobufCMessage *m = protobuf_c_message_unpack(d, &a->pc, len, data);
    if (!m) {
        if (a->failed)
            attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                            "request: no memory to decode a %zu-byte %s", len, d->name);
        else
            attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                            "request: %zu bytes that are not a valid %s message", len,
                            d->name);
    }
    return m;
}

grpc_byte_buffer *attnd_srv_pack(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    grpc_slice s = grpc_slice_malloc(n);
    size_t wrote = protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    (void)wrote;
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/* ---- AttendResponse (attnd_wire) ------------------------------------------------- */

size_t attnd_srv_attend_reply_size(const attnd_srv_attend_reply *r)
{
    attnd_wire_reply_layout l;
    attnd_wire_reply_plan(&r->desc, &l);
    return l.total;
}

void attnd_srv_attend_reply_write(const attnd_srv_attend_reply *r, uint8_t *dst)
{
    attnd_wire_reply_layout l;
    attnd_wire_reply_plan(&r->desc, &l);
    attnd_wire_reply_write(&r->desc, &l, r->out, r->lse, dst);
}

grpc_byte_buffer *attnd_srv_attend_reply_pack(const attnd_srv_attend_reply *r)
{
    attnd_wire_reply_layout l;
    attnd_wire_reply_plan(&r->desc, &l);
    grpc_slice s = grpc_slice_malloc(l.total);
    attnd_wire_reply_write(&r->desc, &l, r->out, r->lse, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}
