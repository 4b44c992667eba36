/* The one way attnd's client and server endpoints set up UCX for Attend:
 * a ucp context with active messages and wake-up, a worker of the given
 * thread mode, and its event fd. Requests and replies up to 256K (one
 * sequence's DeepSeek-V3 query is 147K, its latent output 128K) go eager:
 * on TCP lanes that saved ~40 us of an Attend round trip over rendezvous;
 * UCX_RNDV_THRESH in the environment still wins.
 *
 * Header-only (static inline) because client/ and service/ may share
 * nothing but proto/. On failure whatever was created is left in
 * *ctx_p / *worker_p for the caller's cleanup to destroy. */
#ifndef ATTND_UCX_SETUP_H
#define ATTND_UCX_SETUP_H

#include <stdlib.h>

#include <ucp/api/ucp.h>

static inline ucs_status_t attnd_ucx_setup(ucs_thread_mode_t mode, ucp_context_h *ctx_p,
                                           ucp_worker_h *worker_p, int *efd_p)
{
    ucp_params_t params = {.field_mask = UCP_PARAM_FIELD_FEATURES,
                           .features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP};
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = mode};
    ucp_config_t *cfg;
    ucs_status_t us;

    if ((us = ucp_config_read(NULL, NULL, &cfg)) != UCS_OK)
        return us;
    if (!getenv("UCX_RNDV_THRESH"))
        (void)ucp_config_modify(cfg, "RNDV_THRESH", "256K");
    us = ucp_init(&params, cfg, ctx_p);
    ucp_config_release(cfg);
    if (us != UCS_OK)
        return us;
    if ((us = ucp_worker_create(*ctx_p, &wp, worker_p)) != UCS_OK)
        return us;
    return ucp_worker_get_efd(*worker_p, efd_p);
}

/* Deliver active messages `id` whole (UCP_AM_FLAG_WHOLE_MSG) to cb(arg). */
static inline ucs_status_t attnd_ucx_on_am(ucp_worker_h worker, unsigned id,
                                           ucp_am_recv_callback_t cb, void *arg)
{
    ucp_am_handler_param_t p = {
        .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                      UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG,
        .id = id,
        .flags = UCP_AM_FLAG_WHOLE_MSG,
        .cb = cb,
        .arg = arg,
    };
    return ucp_worker_set_am_recv_handler(worker, &p);
}

#endif /* ATTND_UCX_SETUP_H */
