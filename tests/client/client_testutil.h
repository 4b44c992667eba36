/* Helpers of the client test suites: a real attnd server per test, and
 * sessions whose KV the test mirrors so that every output can be checked
 * against the float64 reference (client/bench/refcheck.h).
 *
 * Server: cu_server_start spawns ATTND_BIN (the attnd built with these
 * tests) on --listen 127.0.0.1:0 --port-file <tmp> plus the given flags and
 * waits for the port file. The server dies with the test process
 * (PR_SET_PDEATHSIG), so a failing test leaves nothing behind; a passing
 * one stops it in the checked teardown (cu_teardown), which sends SIGTERM
 * and asserts exit status 0.
 *
 * Sessions: a cu_seqs holds n sessions of one client, the model they run,
 * a mirror of their KV and a seeded generator (ATTND_TEST_SEED replays a
 * run). A cu_step is one Attend request for sessions [first, first + n):
 * fresh random queries and (optionally) new KV with positions, its result
 * buffers filled with a sentinel; after the call, cu_step_commit records
 * the new KV and checks every (sequence, query token, head) row.
 *
 * Helpers named cu_* return errors (for use on any thread); those named
 * cu_must_* ck_assert (main test thread only).
 */
#ifndef ATTND_CLIENT_TESTUTIL_H
#define ATTND_CLIENT_TESTUTIL_H

#include <stdint.h>
#include <sys/types.h>

#include "attnd/client.h"
#include "refcheck.h"

/* ---- the server ------------------------------------------------------------ */

typedef struct cu_server {
    pid_t pid;
    int port;
    char target[64];
    char port_file[64];
} cu_server;

/* The test's server, started by cu_must_start and stopped by cu_teardown. */
extern cu_server cu_srv;

/* Start attnd with extra flags (NULL-terminated list). 0, or -1 with a
 * note on stderr. */
int cu_server_start(cu_server *s, const char *const *flags);
/* SIGTERM and wait: the exit status (0..255); -1 if it died of a signal or
 * did not stop within 30 s (then it is killed). */
int cu_server_stop(cu_server *s);

/* Start cu_srv with the given flags (after --model etc.), asserting. */
#define cu_must_start(...) cu_must_start_list((const char *const[]){__VA_ARGS__, NULL})
void cu_must_start_list(const char *const *flags);
/* Checked teardown of every TCase: stop cu_srv (if running), assert 0. */
void cu_teardown(void);

/* 1 when ATTND_TEST_TRANSPORT=ucx: servers get --ucx-listen auto and
 * cu_connect asks for the UCX transport. */
int cu_use_ucx(void);

/* Connect to cu_srv with generous deadlines (hang guards only). */
attnd_status cu_connect(attnd_client **c_p, attnd_error *err);
attnd_client *cu_must_connect(void);

/* ---- sessions and their mirror --------------------------------------------- */

#define CU_MAX_SEQS 16

typedef struct cu_seqs {
    attnd_client *c;
    attnd_model_info m;
    attnd_dtype dt; /* dtype of KV, queries and outputs the test sends */
    uint32_t n;
    attnd_session_id ids[CU_MAX_SEQS];
    attnd_refcheck rc;
    attnd_rng rng;
} cu_seqs;

/* Create n sessions on c; dt as above. seed 0: from ATTND_TEST_SEED or the
 * clock (printed). */
attnd_status cu_seqs_open(cu_seqs *s, attnd_client *c, uint32_t n, attnd_dtype dt,
                          uint64_t seed, attnd_error *err);
/* The same, each session reserving pages for max_tokens tokens. */
attnd_status cu_seqs_open_reserved(cu_seqs *s, attnd_client *c, uint32_t n, attnd_dtype dt,
                                   uint64_t seed, uint32_t max_tokens, attnd_error *err);
void cu_seqs_close(cu_seqs *s); /* closes the sessions (errors ignored) */
void cu_must_open(cu_seqs *s, attnd_client *c, uint32_t n, attnd_dtype dt);

/* Prefill `tokens` fresh random entries into every layer of session i
 * (layer by layer) over one AppendKV call, in chunks of sizes cycling
 * through `chunks` (0-terminated list; NULL: one chunk per layer). The
 * chunks the server applied are mirrored, also when a later one fails. */
attnd_status cu_prefill(cu_seqs *s, uint32_t i, uint64_t tokens, const uint32_t *chunks,
                        attnd_error *err);
void cu_must_prefill(cu_seqs *s, uint32_t i, uint64_t tokens, const uint32_t *chunks);

typedef struct cu_step {
    attnd_attend_args a;
    uint32_t first;       /* sequences [first, first + a.n_seqs) of the cu_seqs */
    uint32_t q_tokens;    /* S */
    void *q, *kv, *out;
    float *lse;
    uint64_t pos[CU_MAX_SEQS];
    size_t q_bytes, kv_bytes, out_bytes;
} cu_step;

/* Make a request for layer `layer` over sequences [first, first + n): S
 * query tokens (q as [n, S, Hq, d_k], or [n, Hq, d_k] when S == 1), new KV
 * ([n, S, entry...], or [n, entry...] when S == 1) with positions when
 * with_kv, LSE when want_lse, output in out_t (INVALID: q's dtype). The
 * out/lse buffers hold a sentinel (0xA5 bytes) until a call writes them. */
void cu_step_make(cu_seqs *s, cu_step *st, uint32_t layer, uint32_t first, uint32_t n,
                  uint32_t S, int with_kv, int want_lse, attnd_dtype out_t);
void cu_step_free(cu_step *st);
/* After a successful call: record the step's new KV in the mirror, then
 * check every output row (and LSE) against the reference; folds the worst
 * errors into *res. 0, or -1 when out of memory. */
int cu_step_commit(cu_seqs *s, cu_step *st, attnd_refcheck_result *res);
/* 1 when the result buffers still hold only the sentinel. */
int cu_step_untouched(const cu_step *st);

/* One decode step over every layer for all sequences: unary Attend with
 * new KV and positions, each output checked. 0 or the failing status. */
attnd_status cu_decode_step(cu_seqs *s, attnd_refcheck_result *res, attnd_error *err);

/* Bound on the normwise relative error for outputs of dtype t. */
double cu_bound(attnd_dtype t);
#define CU_LSE_BOUND 1e-5

/* Assert st == want and that err.msg contains `field`. */
#define cu_assert_fails(st, err, want, field)                                          \
    do {                                                                               \
        attnd_status st_ = (st);                                                       \
        ck_assert_msg(st_ == (want), "expected %s, got %s: %s",                        \
                      attnd_status_string(want), attnd_status_string(st_), (err).msg); \
        ck_assert_msg((err).code == (want), "err.code %d, want %d", (err).code, want); \
        ck_assert_msg(strstr((err).msg, (field)) != NULL,                              \
                      "message does not name \"%s\": %s", (field), (err).msg);        \
    } while (0)

#endif /* ATTND_CLIENT_TESTUTIL_H */
