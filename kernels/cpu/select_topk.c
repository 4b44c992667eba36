/* The top-k of page selection: given each candidate's score as an
 * order-preserving key (attnd__select_key, select_int.h), keep the
 * mandatory candidates and the best of the others, ties to the earlier
 * candidate, and write the kept pages in candidate order.
 *
 * The threshold (the key of the want-th best) comes from a radix selection
 * over digits of 11, 11 and 10 bits from the top: each pass counts the
 * digits of the keys still in play, finds the bin holding the wanted rank
 * and keeps only that bin's keys for the next pass, so every pass after
 * the first reads a small fraction of the list. Why 11 bits and not 8: a
 * list's scores sit within a few binades below 0, so their keys share the
 * top byte; with 8-bit digits the first two passes each read the whole list
 * and incremented a handful of counters back to back (store-forwarding
 * chains); 2048 counters spread the same keys over ~100 bins. The last pass
 * also leaves the number of keys equal to the threshold that are wanted, so
 * the final scan needs no counting pass, and that scan writes branch-free
 * (a kept page 1 in 8 is an unpredictable branch). With the scores' keys
 * computed four candidates at a time (select.c), a GQA list of 2048
 * candidates (llama3-8b at 128K, 1/8 kept) went from 22 to 10 us of scores
 * and top-k on the dev VM (one thread, stand-alone loop of the kernel). */
#include <string.h>

#include "attnd_assert.h"
#include "select_int.h"

/* Digit width of the radix passes (the counters: 8 KB). */
#define TOPK_BITS 11

/* The bin of the key of descending rank *k_p among the counts hist[nb],
 * and the rank within it. From the top,
 * 16 bins at a time while they hold no more than the rank: a list's keys
 * leave most bins empty (the best page's score 0 sits binades above the
 * others), and a bin at a time is a chain of dependent subtractions. */
static uint32_t find_bin(const int32_t *hist, uint32_t nb, int32_t *k_p)
{
    int32_t k = *k_p;
    uint32_t d = nb;
    for (; d >= 16; d -= 16) {
        int32_t s = 0;
        for (uint32_t j = d - 16; j < d; j++)
            s += hist[j];
        if (k < s)
            break;
        k -= s;
    }
    ATTND_ASSERT(d > 0);
    d--;
    while (k >= hist[d])
        k -= hist[d--];
    *k_p = k;
    return d;
}

/* The key of descending rank k (0 = largest) among a[0..n), 0 <= k < n;
 * *eq_p: how many keys equal it, *take_p: how many of those rank at or
 * above rank k (the ones a top-(k+1) takes). a is not written; tmp [n]
 * holds the keys still in play after the first pass. */
static uint32_t kth_key(const uint32_t *a, uint32_t *tmp, int32_t n, int32_t k, int32_t *eq_p,
                        int32_t *take_p)
{
    int32_t hist[1 << TOPK_BITS];
    const uint32_t *src = a;
    uint32_t prefix = 0;
    for (int hi = 32;;) {
        const int bits = hi < TOPK_BITS ? hi : TOPK_BITS, shift = hi - bits;
        const uint32_t mask = (1u << bits) - 1;
        memset(hist, 0, sizeof(int32_t) << bits);
        for (int32_t i = 0; i < n; i++)
            hist[(src[i] >> shift) & mask]++;
        const uint32_t d = find_bin(hist, mask + 1, &k);
        prefix |= d << shift;
        if (shift == 0) {
            *eq_p = hist[d];
            *take_p = k + 1;
            return prefix;
        }
        if (hist[d] < n) { /* keep digit d's keys (in place once in tmp) */
            int32_t m = 0;
            for (int32_t i = 0; i < n; i++) {
                const uint32_t x = src[i];
                tmp[m] = x;
                m += ((x >> shift) & mask) == d;
            }
            src = tmp;
        }
        n = hist[d];
        hi = shift;
    }
}

/* Append candidates [p0, p1) to the output (all kept). */
static int32_t keep_all(const int32_t *cand, int32_t p0, int32_t p1, int32_t *out, int32_t *pos,
                        int32_t w)
{
    for (int32_t p = p0; p < p1; p++, w++) {
        out[w] = cand[p];
        if (pos)
            pos[w] = p;
    }
    return w;
}

/* Of candidates [m0, m1), append those above tk and the first `ties` equal
 * to it, until `until` are written. Every candidate's entry is written at
 * the next slot, which advances only for a kept one (no branch on the key;
 * the slot stays below until while the loop runs). ALL: every key equal
 * to tk is kept (ties is their count), the common case: then nothing but
 * the slot carries from one candidate to the next. */
static inline __attribute__((always_inline)) int32_t
keep_above(const uint32_t *key, const int32_t *cand, int32_t m0, int32_t m1, uint32_t tk,
           int32_t ties, int32_t *out, int32_t *pos, int32_t w, int32_t until, const int POS,
           const int ALL)
{
    for (int32_t p = m0; p < m1 && w < until; p++) {
        const uint32_t k = key[p];
        int32_t take;
        if (ALL) {
            take = k >= tk;
        } else {
            const int32_t eq = k == tk;
            take = (k > tk) | (eq & (ties > 0));
            ties -= eq & take;
        }
        out[w] = cand[p];
        if (POS)
            pos[w] = p;
        w += take;
    }
    return w;
}

int32_t attnd__select_topk(const uint32_t *key, int32_t n, int32_t keep, int32_t n_head,
                           int32_t n_tail, const int32_t *cand, int32_t *out, int32_t *pos,
                           uint32_t *tmp)
{
    const int32_t m0 = n_head, m1 = n - n_tail, want = keep - n_head - n_tail;
    int32_t w = keep_all(cand, 0, m0, out, pos, 0);
    if (want >= m1 - m0) { /* every candidate kept */
        w = keep_all(cand, m0, m1, out, pos, w);
    } else if (want > 0) {
        int32_t eq, ties;
        const uint32_t tk = kth_key(key + m0, tmp, m1 - m0, want - 1, &eq, &ties);
        const int32_t until = m0 + want;
        if (ties == eq)
            w = pos ? keep_above(key, cand, m0, m1, tk, ties, out, pos, w, until, 1, 1)
                    : keep_above(key, cand, m0, m1, tk, ties, out, pos, w, until, 0, 1);
        else
            w = pos ? keep_above(key, cand, m0, m1, tk, ties, out, pos, w, until, 1, 0)
                    : keep_above(key, cand, m0, m1, tk, ties, out, pos, w, until, 0, 0);
        ATTND_ASSERT(w == m0 + want);
    }
    return keep_all(cand, m1, n, out, pos, w);
}
