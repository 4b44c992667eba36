/* The bad inputs a client can send, each with the exact status and the
 * field its message must name.
 *
 * Every case fires one bad request (or a short sequence ending in one) at
 * the server through a cu_seqs of two prefilled sessions, and reports what
 * came back. The error suite runs each case in a test of its own; the
 * concurrency suite fires all of them, round after round, at a server that
 * a valid session is using at the same time. After any case the two
 * sessions must be exactly as before (the runner proves it with a checked
 * decode step whose positions would not match otherwise).
 *
 * Cases that need a server limit (a small --max-message, --kv-memory or
 * --max-sessions) read it from bad_limits and are skipped when it is 0.
 */
#ifndef ATTND_BAD_INPUTS_H
#define ATTND_BAD_INPUTS_H

#include "client_testutil.h"

typedef struct bad_limits {
    size_t max_message;    /* the server's --max-message, or 0 */
    uint32_t max_sessions; /* its --max-sessions, or 0 */
    int small_pool;        /* --kv-memory small enough to fill in chunks */
} bad_limits;

typedef struct bad_result {
    attnd_status st;
    attnd_error err;
    int out_written; /* an Attend case's out/lse buffers were written */
    int skipped;     /* the limit it needs is not set */
    char why[160];   /* a case-specific expectation that failed, or "" */
} bad_result;

typedef struct bad_case {
    const char *name;
    attnd_status want;
    const char *field; /* must appear in the message */
    void (*fire)(cu_seqs *s, const bad_limits *lim, bad_result *r);
} bad_case;

extern const bad_case bad_cases[];
extern const size_t n_bad_cases;

/* The case named `name` (NULL if none). */
const bad_case *bad_case_find(const char *name);

/* Fire case bc on s; 0 when the outcome is as expected, else -1 with the
 * reason in why. Skipped cases count as expected. */
int bad_case_run(const bad_case *bc, cu_seqs *s, const bad_limits *lim, char *why,
                 size_t why_len);

#endif /* ATTND_BAD_INPUTS_H */
