/* grpc.health.v1.Health, and the answer to methods attnd does not serve.
 *
 * Check answers SERVING for "" and "attnd.v1.Attnd", NOT_SERVING once the
 * server is stopping; for "attnd.v1.Group" (a worker group's state)
 * SERVING only while every peer is connected (Watch reports it as of the
 * call's start); for the Kubernetes probe names "liveness" SERVING whenever
 * it answers and "readiness" SERVING only while not draining with the
 * group whole (attnd_srv_ready); and the gRPC status NOT_FOUND for any
 * other name (the health spec's SERVICE_UNKNOWN for Check).
 *
 * Watch sends the current status at once (SERVICE_UNKNOWN as a message for
 * an unknown name, as the spec asks, without ending the call), then holds
 * the call open: the status of a running attnd never changes, so the next
 * and last message is NOT_SERVING when the server stops, followed by status
 * OK. A client that goes away just ends it.
 *
 * Calls to unregistered methods get UNIMPLEMENTED at once, unread. */
#include <string.h>

#include <grpc/slice.h>
#include <grpc/support/alloc.h>

#include "srv.h"

typedef Grpc__Health__V1__HealthCheckResponse__ServingStatus serving_status;

/* 1 unless srv is a worker group with a peer missing. */
static int group_whole(attnd_srv *srv)
{
    attnd_group_state gs;
    if (!srv->group)
        return 1;
    attnd_group_get_state(srv->group, &gs);
    return gs.missing[0] == '\0';
}

int attnd_srv_ready(attnd_srv *srv)
{
    return !atomic_load(&srv->draining) && group_whole(srv);
}

/* The status of a known service name (validated before). */
static int serving(const attnd_srv_call *c, const Grpc__Health__V1__HealthCheckRequest *m)
{
    const char *svc = m->service ? m->service : "";
    attnd_srv *srv = c->th->srv;
    if (strcmp(svc, ATTND_SRV_HEALTH_LIVENESS) == 0)
        return 1;
    if (strcmp(svc, ATTND_SRV_HEALTH_READINESS) == 0)
        return attnd_srv_ready(srv);
    if (c->th->shutting_down)
        return 0;
    return strcmp(svc, ATTND_SRV_HEALTH_GROUP) != 0 || group_whole(srv);
}

static grpc_byte_buffer *health_reply(serving_status s)
{
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = s;
    return attnd_srv_pack(&resp.base);
}

void attnd_srv_health_check_start(attnd_srv_call *c)
{
    Grpc__Health__V1__HealthCheckRequest *m;
    attnd_error err;

    attnd_error_clear(&err);
    m = (Grpc__Health__V1__HealthCheckRequest *)attnd_srv_call_decode(
        c, &grpc__health__v1__health_check_request__descriptor, &err);
    if (!m || attnd_srv_validate_health(m, &err)) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    attnd_srv_call_finish(
        c,
        health_reply(serving(c, m)
                         ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                         : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING),
        ATTND_OK, NULL);
}

void attnd_srv_health_watch_start(attnd_srv_call *c)
{
    Grpc__Health__V1__HealthCheckRequest *m;
    attnd_error err;

    attnd_error_clear(&err);
    m = (Grpc__Health__V1__HealthCheckRequest *)attnd_srv_call_decode(
        c, &grpc__health__v1__health_check_request__descriptor, &err);
    if (!m) {
        attnd_srv_call_fail(c, &err);
        return;
    }
    if (c->th->shutting_down) {
        attnd_srv_call_finish(
            c, health_reply(GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING),
            ATTND_OK, NULL);
        return;
    }
    serving_status s =
        attnd_srv_validate_health(m, &err) != ATTND_OK
            ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN
        : serving(c, m) ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                        : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    attnd_srv_call_hold_open(c);
    attnd_srv_call_send(c, health_reply(s), 0);
}

void attnd_srv_health_watch_step(attnd_srv_call *c, int ok)
{
    if (!ok) {
        attnd_srv_call_finish(c, NULL, ATTND_ERR_CANCELLED, "Watch: stream broken");
        return;
    }
    if (c->end_requested)
        attnd_srv_call_finish(
            c, health_reply(GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING),
            ATTND_OK, NULL);
    /* else: the first message went out; wait, held open */
}

void attnd_srv_generic_start(attnd_srv_call *c)
{
    char msg[ATTND_ERROR_MSG_MAX];
    char *method = grpc_slice_to_c_string(c->details.method);
    snprintf(msg, sizeof msg, "method %.200s: not implemented by attnd", method);
    gpr_free(method);
    attnd_srv_call_finish(c, NULL, ATTND_ERR_UNIMPLEMENTED, msg);
}
