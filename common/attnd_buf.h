/* attnd_buf: the one growable-buffer helper of attnd.
 *
 * Scratch that a hot path reuses (engine workspaces, plans, decode and
 * reply buffers) grows with attnd_buf_reserve to the largest size seen and
 * is then reused, so that steady-state decode allocates nothing.
 * Capacity doubles (from 16 elements), so a buffer is reallocated
 * O(log n) times over its life.
 *
 * Ownership: the caller owns the array (free() it, or attnd_buf_free for
 * an attnd_buf). */
#ifndef ATTND_BUF_H
#define ATTND_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* Make *p (an array of *cap elements of es bytes) hold at least n
 * elements, keeping its contents. 0, or -1 when out of memory or when
 * n * es overflows (then *p and *cap are unchanged). */
int attnd_buf_reserve(void **p, size_t *cap, size_t n, size_t es);
/* The same for a typed array lvalue: ATTND_BUF_RESERVE(ws->out, ws->cap_out, n). */
#define ATTND_BUF_RESERVE(arr, cap, n) \
    attnd_buf_reserve((void **)&(arr), &(cap), (n), sizeof *(arr))

/* A growable byte buffer: p holds cap bytes. Zero-initialize. */
typedef struct attnd_buf {
    uint8_t *p;
    size_t cap;
} attnd_buf;

/* 0, or -1 when out of memory (b unchanged). */
static inline int attnd_buf_fit(attnd_buf *b, size_t n)
{
    return attnd_buf_reserve((void **)&b->p, &b->cap, n, 1);
}

static inline void attnd_buf_free(attnd_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->cap = 0;
}

#endif /* ATTND_BUF_H */
