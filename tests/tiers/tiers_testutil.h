/* Helpers of the KV tier and durability suites: a real attnd on a fresh
 * --kv-dir (tiny-gqa, pages of 16 tokens, the CPU; a suite may set another
 * model, page size and device in tt_suite), killed with SIGKILL or stopped
 * and started again on the same directory; appends the test keeps (so an
 * append whose reply a crash swallowed can be sent again and its fate
 * learned); checks of every layer of every session against the float64
 * reference of what the test knows was applied; and the slot file's
 * documented layout (worker/TIERS.md), to find a session's pages on disk.
 *
 * Helpers named tt_must_* ck_assert (main test thread only). */
#ifndef ATTND_TIERS_TESTUTIL_H
#define ATTND_TIERS_TESTUTIL_H

#include <stdint.h>

#include "client_testutil.h"

/* A fresh directory under /tmp (dir: 64 bytes), and its removal with
 * everything in it. */
void tt_must_mkdir(char *dir);
void tt_rmdir(const char *dir);

/* The server every tt_must_start starts, and the bound on LSE errors of
 * the checks: tiny-gqa, pages of 16 tokens, the CPU backend, CU_LSE_BOUND
 * unless a suite sets them before its first start (tests/gpu's tier suite:
 * llama3-8b on cuda:0, whose bf16 queries bound the LSE by 1e-3). device
 * NULL: no --device flag. */
typedef struct tt_suite_cfg {
    const char *model, *page_size, *device;
    double lse_bound;
} tt_suite_cfg;
extern tt_suite_cfg tt_suite;

/* Start cu_srv on kv-dir `dir` (NULL: no --kv-dir) with the suite's
 * model, page size, device and memory (--kv-memory mem, e.g. "256Ki"),
 * then extra flags (NULL-terminated, may be NULL). */
void tt_must_start(const char *dir, const char *mem, const char *const *extra);
/* SIGKILL cu_srv and reap it: a crash. */
void tt_kill9(void);
/* A client for cu_srv in place of s->c (the old one destroyed). */
void tt_must_reconnect(cu_seqs *s);
/* A crash and a start on the same directory: tt_kill9, tt_must_start(dir,
 * mem, extra), then tt_must_reconnect(s). */
void tt_must_restart(cu_seqs *s, const char *dir, const char *mem, const char *const *extra);
/* The end of a test: s's sessions closed, then its client destroyed. */
void tt_seqs_done(cu_seqs *s);

/* Attend over every layer of sessions [0, s->n) in batches of `batch`,
 * without new KV, and check every output (and LSE, tt_suite.lse_bound)
 * against the reference of the mirror: equal outputs mean the server holds
 * exactly the mirrored tokens. */
void tt_must_check_all(cu_seqs *s, uint32_t batch);
/* The same for one session: 0, or the failing status (err filled). */
attnd_status tt_check_one(cu_seqs *s, uint32_t i, attnd_error *err);

/* n tokens of fresh random KV into layer `layer` of session i alone, over
 * one AppendKV call (chunks of up to 256 tokens), mirrored. */
void tt_must_append_layer(cu_seqs *s, uint32_t i, uint32_t layer, uint32_t n);

/* Check the outputs of st (one query token, float32 outputs, no new KV)
 * against the float64 reference over exactly the pages the reply
 * reported in sp (return_pages), per session and KV head (page size ps). */
void tt_must_check_reported(cu_seqs *s, const cu_step *st, const attnd_sparse_args *sp,
                            uint32_t layer, uint32_t ps);

/* One append the test keeps until its fate is known: an AppendKV stream
 * (kind 1) or an Attend with new KV (kind 2) over sessions [first, first +
 * n), with its data. */
typedef struct tt_op {
    int kind;
    attnd_kv_chunk *chunks;
    size_t n_chunks;
    unsigned char *data;
    cu_step step;
} tt_op;

/* A random AppendKV stream: sessions [first, first + n), every layer, up
 * to max_tokens each, in chunks of up to 24 tokens; starts from the mirror. */
void tt_op_stream(cu_seqs *s, tt_op *op, uint32_t first, uint32_t n, uint32_t max_tokens);
/* A decode step's Attend with new KV at `layer` for [first, first + n). */
void tt_op_attend(cu_seqs *s, tt_op *op, uint32_t layer, uint32_t first, uint32_t n);
/* Send it. */
attnd_status tt_op_send(cu_seqs *s, tt_op *op, attnd_error *err);
/* It was applied: record it in the mirror (and check an Attend's outputs
 * when check_outputs). */
void tt_op_mirror(cu_seqs *s, tt_op *op, int check_outputs);
void tt_op_free(tt_op *op);

/* One round of a crash loop (SIGKILL at a random point of a stream of
 * appends; s holds at least 2 sessions): random appends to s (one time in
 * three an AppendKV stream of 2 sessions, up to max_tokens each; else an
 * Attend with new KV over every session at a random layer), each applied
 * one mirrored (check_outputs: its outputs checked), until a SIGKILL 2-40
 * ms in cuts one off mid-flight: ck_asserts it was cut, not refused, and
 * reaps the process. The cut one is left in *op. */
void tt_must_cut(cu_seqs *s, tt_op *op, int round, uint32_t max_tokens, int check_outputs);
/* After the restart, *op (the cut one) again: it applies (returns 1; its
 * outputs checked when check_outputs) or had applied whole before the
 * crash (FAILED_PRECONDITION: returns 0); mirrored either way, freed. */
int tt_must_resend(cu_seqs *s, tt_op *op, int round, int check_outputs);

/* The slot file's slot size (GetStats) and the byte offsets of the slots
 * whose header names session id (at most max); returns how many. */
size_t tt_slots_of(const char *dir, uint64_t slot_bytes, const attnd_session_id *id,
                   uint64_t *offs, size_t max);
/* Flip one byte of a slot's page bytes (past its 4096-byte header block). */
void tt_must_corrupt(const char *dir, uint64_t off);

/* The id as 32 hex digits. */
const char *tt_hex(const attnd_session_id *id, char buf[33]);

#endif /* ATTND_TIERS_TESTUTIL_H */
