/* grpc.health.v1.Health, and the answer to methods attnd does not serve.
 *
 * Check answers SERVING for "" and "attnd.v1.Attnd", NOT_SERVING from the
 * moment a stop signal comes (drain.c) or if the accept loop died
 * (listener.c); for "attnd.v1.Group" (a worker group's state) SERVING
 * only while every peer is connected too (Watch reports it as of the
 * call's start); for the Kubernetes probe names "liveness" SERVING while
 * the accept loop lives (draining included: a draining rank must not be
 * restarted) and "readiness" SERVING only while serving with the group
 * whole (attnd_srv_ready); and the gRPC status NOT_FOUND for any other
 * name (the health spec's SERVICE_UNKNOWN for Check). Both run inline on
 * the io threads, never behind engine or group work.
 *
 * Watch sends the current status at once (SERVICE_UNKNOWN as a message for
 * an unknown name, as the spec asks, without ending the call), then holds
 * the call open: the status of a serving attnd changes only to NOT_SERVING,
 * so the next and last message is NOT_SERVING (attnd_srv_health_end_watches,
 * at once when it happens), followed by status OK. A client that goes away
 * just ends it. Watch calls are touched under srv->watch_mu only.
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
    return attnd_srv_serving(srv) && group_whole(srv);
}

/* Whether the (validated) service name m asks about is SERVING. */
static int serving(const attnd_srv_call *c, const Grpc__Health__V1__HealthCheckRequest *m)
{
    const char *svc = m->service ? m->service : "";
    attnd_srv *srv = c->srv;
    if (strcmp(svc, ATTND_SRV_HEALTH_LIVENESS) == 0)
        return !atomic_load(&srv->listener_dead);
    if (strcmp(svc, ATTND_SRV_HEALTH_READINESS) == 0 || strcmp(svc, ATTND_SRV_HEALTH_GROUP) == 0)
        return attnd_srv_ready(srv);
    return attnd_srv_serving(srv);
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
    if (!attnd_srv_serving(c->srv)) {
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
    if (attnd_srv_call_hold_open(c) == 0)
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

void attnd_srv_health_end_watches(attnd_srv *srv)
{
    pthread_mutex_lock(&srv->watch_mu);
    for (attnd_srv_call *c = srv->watches, *next; c; c = next) {
        next = c->next; /* c may leave the list below */
        if (c->end_requested)
            continue;
        c->end_requested = 1;
        /* a message still in flight: its completion ends the call */
        if (c->state == ATTND_SRV_CALL_ACTIVE && !c->op_inflight)
            attnd_srv_health_watch_step(c, 1);
    }
    pthread_mutex_unlock(&srv->watch_mu);
}

void attnd_srv_generic_start(attnd_srv_call *c)
{
    char msg[ATTND_ERROR_MSG_MAX];
    char *method = grpc_slice_to_c_string(c->details.method);
    snprintf(msg, sizeof msg, "method %.200s: not implemented by attnd", method);
    gpr_free(method);
    attnd_srv_call_finish(c, NULL, ATTND_ERR_UNIMPLEMENTED, msg);
}
