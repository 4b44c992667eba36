/* Stopping: the drain that SIGTERM and SIGINT start (attnd_srv_shutdown).
 *
 * 1. Health goes NOT_SERVING at once: Check answers it, every held Watch
 *    gets it and ends.
 * 2. --drain-delay-ms (default 0): new calls are still served, so that a
 *    load balancer has one probe period to see NOT_SERVING and steer away.
 * 3. New calls get UNAVAILABLE ("server is shutting down"); Health and
 *    GetStats still answer, and so do UCX requests with UNAVAILABLE. What
 *    was received before this point runs to its end: calls queued for an
 *    executor, open streams (their later messages too), UCX requests. The
 *    server keeps accepting connections meanwhile, so a late client gets
 *    the status rather than a refused connection. A call counts as received
 *    when an io thread took it from gRPC, which it does the moment it
 *    arrives (server.c keeps requests outstanding and never blocks), so
 *    nothing a client sent before this point waits in gRPC's own queue.
 * 4. Once none is left, or after --shutdown-grace-ms, or at a second
 *    signal: the accept loop stops, gRPC shuts down (GOAWAY), every
 *    connection is closed and whatever is left is cancelled (queued work
 *    is not run: exec.c). Then the threads are joined.
 *
 * gRPC's grpc_server_shutdown_and_notify would fail calls still in its
 * queue with CANCELLED; that is why it comes only at step 4, when nothing
 * that was received is waiting.
 */
#include <time.h>

#include <grpc/support/time.h>

#include "attnd_clock.h"
#include "srv.h"
#include "ucx_server.h"

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Nothing received is left: no call (its final status sent; Watches
 * ended at the start), no UCX request. */
static int idle(attnd_srv *srv)
{
    return atomic_load(&srv->active_calls) == 0 && attnd_srv_ucx_busy(srv) == 0;
}

/* Wait until `until` (attnd_clock_ms terms), or idle when want_idle, or an
 * interrupt. 1 when interrupted. Polls: a drain is not a hot path. */
static int wait_until(attnd_srv *srv, int64_t until, int want_idle, int (*interrupt)(void))
{
    for (;;) {
        if (want_idle && idle(srv))
            return 0;
        if (interrupt && interrupt())
            return 1;
        int64_t left = until - attnd_clock_ms();
        if (left <= 0)
            return 0;
        sleep_ms(left < 10 ? left : 10);
    }
}

/* gRPC down: GOAWAY, every connection closed, calls cancelled; then wait
 * until it has let go of everything. */
static void grpc_down(attnd_srv *srv)
{
    grpc_server_shutdown_and_notify(srv->server, srv->shutdown_cq, srv);
    /* without this an idle client would hold its connection (and the
     * notification) until it next polls: seconds */
    grpc_server_cancel_all_calls(srv->server);
    while (grpc_completion_queue_next(srv->shutdown_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
               .type != GRPC_OP_COMPLETE)
        ;
}

int attnd_srv_shutdown(attnd_srv *srv, int64_t drain_delay_ms, int64_t grace_ms,
                       int (*interrupt)(void))
{
    int cut = 0, left = 0;

    if (srv->shut_down)
        return 0;
    srv->shut_down = 1;
    atomic_store(&srv->draining, 1);
    attnd_srv_health_end_watches(srv);
    if (srv->started && drain_delay_ms > 0)
        cut = wait_until(srv, attnd_clock_ms() + drain_delay_ms, 0, interrupt);
    atomic_store(&srv->refusing, 1);
    attnd_srv_ucx_refuse(srv);
    if (srv->started && !cut)
        wait_until(srv, attnd_clock_ms() + grace_ms, 1, interrupt);
    left = !idle(srv);
    if (left)
        atomic_store(&srv->cancelling, 1);
    attnd_srv_listener_stop(srv);
    attnd_srv_watchdog_stop(srv);
    attnd_srv_expire_stop(srv);
    grpc_down(srv);
    /* every call is released by now (gRPC notifies once all are gone) */
    attnd_srv_exec_stop(srv);
    for (int i = 0; i < srv->n_threads; i++)
        grpc_completion_queue_shutdown(srv->threads[i].cq);
    for (int i = 0; i < srv->n_threads; i++)
        if (srv->threads[i].running) {
            pthread_join(srv->threads[i].tid, NULL);
            srv->threads[i].running = 0;
        }
    attnd_srv_ucx_stop(srv);
    return left;
}
