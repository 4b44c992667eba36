/* Helpers shared by the service room's validation suites: the failure
 * assertion (exact status, field named in the message) and a small engine
 * to run validated requests into. Header-only. */
#ifndef ATTND_SVC_TESTUTIL_H
#define ATTND_SVC_TESTUTIL_H

#include <check.h>
#include <string.h>

#include "attnd_worker.h"
#include "validate.h"

/* Require status `want`, err.code equal, and `field` in the message. */
#define ck_assert_fails(st, err, want, field)                                             \
    do {                                                                                   \
        ck_assert_msg((st) == (want), "got %s (%s), want %s", attnd_status_string(st),     \
                      (err).msg, attnd_status_string(want));                               \
        ck_assert_int_eq((err).code, (want));                                              \
        ck_assert_msg(strstr((err).msg, (field)) != NULL, "message \"%s\" lacks \"%s\"",   \
                      (err).msg, (field));                                                 \
    } while (0)

typedef struct efx {
    attnd_engine *e;
    attnd_srv_model model;
} efx;

static inline void efx_init(efx *x, const char *model, uint64_t kv_memory, uint32_t max_sessions)
{
    attnd_engine_config cfg;
    attnd_error err;
    memset(&cfg, 0, sizeof cfg);
    cfg.model = *attnd_model_find(model);
    cfg.page_size = 16;
    cfg.kv_memory = kv_memory;
    cfg.max_sessions = max_sessions;
    ck_assert_int_eq(attnd_engine_create(&cfg, &x->e, &err), ATTND_OK);
    attnd_srv_model_init(&x->model, attnd_engine_model(x->e), 16, max_sessions);
}

#endif /* ATTND_SVC_TESTUTIL_H */
