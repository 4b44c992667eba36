/* Test helpers of sparse attention through libattnd, shared by the client
 * suites of its blocking form (tests/client/test_client_sparse.c) and its
 * pipelined forms (test_client_sparse_pipelined.c), each over gRPC and UCX:
 * sessions with a policy whose layers 1 and 2 are given-pages, and the
 * check of an Attend's outputs against the float64 reference over exactly
 * the pages its reply reports. ck_assert on failure (test thread only). */
#ifndef ATTND_CLIENT_SPARSE_H
#define ATTND_CLIENT_SPARSE_H

#include "client_testutil.h"

/* Open n sessions of dtype bf16 on c (cu_must_open) with default policy p
 * and a rule making layers [1, 3) given-pages (tiny-gqa has 3 layers). */
void cu_open_policy(cu_seqs *s, attnd_client *c, const attnd_sparse_policy *p, uint32_t n);

/* Check the outputs of step st (one query token, sessions [st->first,
 * st->first + n)) of `layer` against the reference over the lists sp
 * reports: for each session and KV head, a reference holding only those
 * pages' tokens of the mirror (the step's new KV already recorded there).
 * Folds the worst errors into *res. */
void cu_check_chosen(cu_seqs *s, const cu_step *st, const attnd_sparse_args *sp, uint32_t layer,
                     attnd_refcheck_result *res);

#endif /* ATTND_CLIENT_SPARSE_H */
