/* Internals of attnd_wire (proto/wire_*.c): a cursor over a segmented
 * message, the protobuf wire primitives with protobuf-c 1.4's exact
 * acceptance rules, and the varint writers. Not exported.
 *
 * protobuf-c's rules, as its unpack applies them (protobuf-c.c,
 * protobuf_c_message_unpack and what it calls), which the decoders follow:
 *   - a key is at most 5 bytes; a first byte with no tag bits and no
 *     continuation (0x00-0x07) is refused; a longer key may still encode
 *     tag 0, which is then an unknown field;
 *   - wire types 0 (varint, at most 10 bytes, the 10th's high bits
 *     ignored), 1 (8 bytes), 2 (a length prefix of at most 5 bytes, value
 *     <= INT_MAX, body within the message) and 5 (4 bytes); 3, 4, 6, 7 are
 *     refused, also in unknown fields;
 *   - a known field must come with its type's wire type, except bool,
 *     which takes any and is true when any byte of the value (a length
 *     prefix included) has one of its low 7 bits set;
 *   - uint32 and enum fields keep the low 32 bits of the varint; 64-bit
 *     ones the low 64;
 *   - repeated scalars come one per field (wire type 0) or packed (wire
 *     type 2: back-to-back varints of at most 10 bytes each, nothing
 *     left over), in any number of runs; they concatenate;
 *   - a message field's body must itself unpack; a second occurrence is
 *     merged into the first: repeated fields concatenate, scalars are the
 *     later occurrence's (even when it lacks them), bytes the later one's
 *     unless it has none;
 *   - at most ATTND__WIRE_MAX_FIELDS fields per message (its scan table).
 */
#ifndef ATTND_WIRE_INT_H
#define ATTND_WIRE_INT_H

#include <stddef.h>
#include <stdint.h>

#include "attnd_wire.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "attnd's wire tensors are little-endian; this codec assumes the host is too"
#endif

/* protobuf-c's scan table: 23 slabs of 16, 32, ... entries */
#define ATTND__WIRE_MAX_FIELDS ((size_t)16 * ((1u << 23) - 1))

enum { ATTND__WT_VARINT = 0, ATTND__WT_64 = 1, ATTND__WT_LEN = 2, ATTND__WT_32 = 5 };

/* A forward reader over an attnd_wire_in; pos counts bytes from the start. */
typedef struct attnd__wire_cur {
    const attnd_wire_in *in;
    size_t next;               /* segment to load when p reaches end */
    const uint8_t *p, *end;    /* the unread part of the current segment */
    size_t pos;
} attnd__wire_cur;

/* One field's value as scanned. */
typedef struct attnd__wire_val {
    unsigned wt;
    uint64_t v;      /* wire type 0: the varint */
    int any;         /* protobuf-c's bool reading of the value */
    size_t off, len; /* wire type 2: the body */
} attnd__wire_val;

void attnd__wire_cur_init(attnd__wire_cur *c, const attnd_wire_in *in);
/* Move to offset off (<= in->len); skip n bytes (that exist). */
void attnd__wire_cur_seek(attnd__wire_cur *c, size_t off);
void attnd__wire_skip(attnd__wire_cur *c, size_t n);

/* Each reads at c, never past lim (an offset <= in->len); 0 and the cursor
 * past what was read, or -1 where protobuf-c's unpack would fail. */
int attnd__wire_key(attnd__wire_cur *c, size_t lim, uint32_t *tag_p, unsigned *wt_p);
/* A field's value of wire type wt; for wire type 2 the cursor stops at the
 * body (off, len), which the caller parses or skips. */
int attnd__wire_value(attnd__wire_cur *c, size_t lim, unsigned wt, attnd__wire_val *v);
/* Skip a value read by attnd__wire_value (the body of wire type 2). */
static inline void attnd__wire_value_skip(attnd__wire_cur *c, const attnd__wire_val *v)
{
    if (v->wt == ATTND__WT_LEN)
        attnd__wire_skip(c, v->len);
}
/* The next varint of a packed run ending at lim (at most 10 bytes). */
int attnd__wire_packed_next(attnd__wire_cur *c, size_t lim, uint64_t *v_p);

/* A repeated varint field's occurrence v (one value, or a packed run):
 * *n counts every value, those below cap are stored at out[*n]. */
int attnd__wire_repeated(attnd__wire_cur *c, const attnd__wire_val *v, uint64_t *out,
                         size_t cap, size_t *n);

/* A Tensor field over all its occurrences, merged as protobuf-c merges. */
typedef struct attnd__wire_tscan {
    int seen;
    int32_t dtype;             /* the last occurrence's (0 if it had none) */
    size_t n_shape;            /* every occurrence's entries, in order */
    size_t data_off, data_len; /* the last occurrence that had data */
} attnd__wire_tscan;

/* Merge one Tensor occurrence, its body [c->pos, lim), into t; shape
 * entries numbered below cap are stored in shape[]. */
int attnd__wire_tensor(attnd__wire_cur *c, size_t lim, attnd__wire_tscan *t, int64_t *shape,
                       size_t cap);

/* Writers: the encoded size of v, and v written at p (returns the end). */
size_t attnd__wire_vsize(uint64_t v);
uint8_t *attnd__wire_vput(uint8_t *p, uint64_t v);
/* A key (field, wire type) as protobuf-c packs it. */
uint8_t *attnd__wire_kput(uint8_t *p, unsigned field, unsigned wt);
size_t attnd__wire_ksize(unsigned field);

#endif /* ATTND_WIRE_INT_H */
