/* attnd_ucxw progress: the thread that owns a worker, and the wait of a
 * worker without one (libattnd's client). See attnd_ucxw.h.
 *
 * Both busy-poll (ucp_worker_progress, then the owner's work) while
 * anything happens and for spin_ns after the last event, then arm the
 * worker (ucp_worker_arm: UCS_ERR_BUSY when events are pending, including a
 * ucp_worker_signal sent before arming, so a wake-up is never lost) and
 * sleep in poll() on its event fd and the owner's fds. The spin keeps a
 * decode loop's next request (one layer later, microseconds away) off the
 * wake-up path; the sleep keeps an idle process off the CPU. Idle spins
 * sched_yield(): on an oversubscribed host a pure spinner can keep the
 * thread it waits for off the core for a whole time slice (milliseconds
 * per round trip were measured that way).
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_clock.h"
#include "attnd_ucxw.h"

#define MAX_FDS 64

static void *loop_main(void *arg)
{
    attnd_ucxw *w = arg;
    attnd_ucxw_loop *l = w->loop;
    struct pollfd fds[1 + MAX_FDS];
    uint64_t last = attnd_clock_ns();

    while (!atomic_load(&w->stop)) {
        int n = 0, busy = 0;
        ucs_status_t armed = UCS_ERR_BUSY;

        if (l->locked)
            attnd_ucxw_lock(w);
        while (ucp_worker_progress(w->worker))
            busy = 1;
        if (l->tend && l->tend(l->arg))
            busy = 1;
        attnd_ucxw_reap(w);
        uint64_t now = attnd_clock_ns();
        if (busy)
            last = now;
        else if (now - last >= l->spin_ns) {
            armed = ucp_worker_arm(w->worker);
            if (armed == UCS_OK && l->fds)
                n = l->fds(l->arg, fds + 1, MAX_FDS);
        }
        if (l->locked)
            attnd_ucxw_unlock(w);
        if (busy)
            continue;
        if (armed == UCS_ERR_BUSY) {
            if (now - last < l->spin_ns)
                sched_yield(); /* spinning: see the file comment */
            continue;
        }
        fds[0] = (struct pollfd){.fd = w->efd, .events = POLLIN};
        /* arm failed otherwise: sleep a tick, then go round */
        (void)poll(fds, (nfds_t)(armed == UCS_OK ? 1 + n : 0),
                   armed == UCS_OK ? l->tick_ms : (l->tick_ms >= 0 ? l->tick_ms : 10));
        last = attnd_clock_ns();
    }
    return NULL;
}

attnd_status attnd_ucxw_start(attnd_ucxw *w, const attnd_ucxw_loop *loop, const char *who,
                              attnd_error *err)
{
    if (!(w->loop = malloc(sizeof *w->loop)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "%s: no memory", who);
    *w->loop = *loop;
    atomic_store(&w->stop, 0);
    int rc = pthread_create(&w->tid, NULL, loop_main, w);
    if (rc) {
        free(w->loop);
        w->loop = NULL;
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "%s: cannot start the UCX progress thread: %s", who,
                               strerror(rc));
    }
    w->running = 1;
    return ATTND_OK;
}

void attnd_ucxw_stop(attnd_ucxw *w)
{
    if (w->running) {
        atomic_store(&w->stop, 1);
        attnd_ucxw_wake(w);
        pthread_join(w->tid, NULL);
        w->running = 0;
    }
    free(w->loop);
    w->loop = NULL;
}

void attnd_ucxw_wake(attnd_ucxw *w)
{
    if (w->worker)
        (void)ucp_worker_signal(w->worker);
}

int attnd_ucxw_wait(attnd_ucxw *w, int (*done)(void *arg), void *arg, uint64_t deadline_ns,
                    uint64_t spin_ns, int watch_fd)
{
    uint64_t last = attnd_clock_ns(), last_watch = last;

    for (;;) {
        int any = 0;
        ucs_status_t armed = UCS_ERR_BUSY;

        attnd_ucxw_lock(w);
        while (ucp_worker_progress(w->worker))
            any = 1;
        int d = done(arg);
        uint64_t now = attnd_clock_ns();
        if (!d && !any && now - last >= spin_ns)
            armed = ucp_worker_arm(w->worker);
        attnd_ucxw_unlock(w);
        if (d)
            return 0;
        if (now >= deadline_ns)
            return -1;
        if (any) {
            last = now;
            continue;
        }
        if (armed == UCS_OK) {
            struct pollfd pfd[2] = {{.fd = w->efd, .events = POLLIN},
                                    {.fd = watch_fd, .events = POLLIN}};
            if (poll(pfd, watch_fd >= 0 ? 2 : 1, 1) > 0 && watch_fd >= 0 &&
                (pfd[1].revents & (POLLIN | POLLHUP | POLLERR)))
                return 1;
            continue;
        }
        if (watch_fd >= 0 && now - last_watch >= 1000000u) { /* spinning: look now and then */
            struct pollfd pfd = {.fd = watch_fd, .events = POLLIN};
            last_watch = now;
            if (poll(&pfd, 1, 0) > 0)
                return 1;
        }
        sched_yield(); /* spinning: see the file comment */
    }
}
