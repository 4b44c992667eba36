/* The main of a GPU engine suite (test_gpu_narrow, test_gpu_sparse_engine):
 * exit 77 (skipped) when no engine of `model` (one layer) can be made on
 * cuda:0, else run the suite without fork (the probe made a CUDA context in
 * this process: a forked child cannot use it, cudaSetDevice failing with
 * "initialization error") and exit with its verdict. */
#ifndef ATTND_TESTS_GPU_ENGINE_MAIN_H
#define ATTND_TESTS_GPU_ENGINE_MAIN_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "attnd_worker.h"

static inline int gpu_engine_suite_main(const char *who, const char *model, Suite *s)
{
    attnd_engine_config probe = {.model = *attnd_model_find(model), .page_size = 64,
                                 .kv_memory = 64 << 20, .max_sessions = 1};
    attnd_engine *e = NULL;
    attnd_error err;
    probe.model.n_layers = 1;
    snprintf(probe.device, sizeof probe.device, "cuda:0");
    if (attnd_engine_create(&probe, &e, &err) != ATTND_OK) {
        fprintf(stderr, "%s: no usable GPU (%s): skipped\n", who, err.msg);
        srunner_free(srunner_create(s)); /* frees the suite */
        return 77;
    }
    attnd_engine_destroy(e);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
