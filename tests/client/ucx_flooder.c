/* A UCX client that only sends: it connects to the attnd at argv[1] over
 * UCX, opens 16 sequences of the server's model, keeps 4 Attends of all
 * 16 in flight for ever (each request ~150 KB: sent eagerly in many
 * shared-memory fragments, so that the process spends much of its time in
 * the middle of a send), and writes "ready\n" to stdout once the first are
 * in flight. test_ucx_endpoints SIGKILLs it at random moments. Exit 1 on
 * any failure before that (outputs are not checked: it is killed). */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "client_testutil.h"

enum { SEQS = 16, INFLIGHT = 4 };

int main(int argc, char **argv)
{
    static cu_step st[INFLIGHT];
    attnd_call *calls[INFLIGHT];
    attnd_client_options o;
    attnd_client *c = NULL;
    attnd_error err;
    cu_seqs s;

    if (argc != 2)
        return 2;
    attnd_error_clear(&err);
    attnd_client_options_init(&o);
    o.transport = ATTND_TRANSPORT_UCX;
    if (attnd_client_connect(argv[1], &o, &c, &err) ||
        cu_seqs_open(&s, c, SEQS, ATTND_DTYPE_F32, (uint64_t)getpid(), &err))
        goto fail;
    for (uint32_t i = 0; i < SEQS; i++)
        if (cu_prefill(&s, i, 2, NULL, &err))
            goto fail;
    for (int k = 0; k < INFLIGHT; k++) {
        cu_step_make(&s, &st[k], (uint32_t)k % s.m.n_layers, 0, SEQS, 1, 0, 1,
                     ATTND_DTYPE_INVALID);
        if (attnd_client_attend_async(c, &st[k].a, &calls[k], &err))
            goto fail;
    }
    if (printf("ready\n") < 0 || fflush(stdout))
        return 1;
    for (uint64_t n = 0;; n++) {
        int k = (int)(n % INFLIGHT);
        attnd_call_wait(calls[k], NULL);
        if (attnd_client_attend_async(c, &st[k].a, &calls[k], &err))
            goto fail;
    }

fail:
    fprintf(stderr, "ucx_flooder: %s\n", err.msg);
    return 1;
}
