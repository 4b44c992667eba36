/* attnd_ucxw progress: the thread that owns a worker, and the wait of a
 * worker without one (libattnd's client). See attnd_ucxw.h.
 *
 * Both busy-poll (ucp_worker_progress, then the owner's work) while
 * anything happens and for spin_ns after the last event, then arm the
 * worker (ucp_worker_arm: UCS_ERR_BUSY when events are pending, including a
 * ucp_worker_signal sent before arming, so a wake-up is never lost) and
 * sleep in poll() on its event fd and the owner's fds. A thread that owns
 * peer workers (attnd_ucxw.h) progresses, arms and polls them all. The
 * spin keeps a decode loop's next request (one layer later, microseconds
 * away) off the wake-up path; the sleep keeps an idle process off the CPU. Idle spins
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

/* Progress the main worker and every peer worker until none has more to
 * do; w->cur names the one being progressed (attnd_ucxw_am_recv). */
static int progress_all(attnd_ucxw *w)
{
    int busy = 0;
    w->cur = w->worker;
    while (ucp_worker_progress(w->worker))
        busy = 1;
    for (size_t i = 0; i < w->n_pw; i++) {
        w->cur = w->pw[i].worker;
        while (ucp_worker_progress(w->cur))
            busy = 1;
    }
    w->cur = NULL;
    return busy;
}

/* Arm every worker: UCS_OK when all are, else the first other status
 * (UCS_ERR_BUSY: events pending). */
static ucs_status_t arm_all(attnd_ucxw *w)
{
    ucs_status_t s = ucp_worker_arm(w->worker);
    for (size_t i = 0; i < w->n_pw && s == UCS_OK; i++)
        s = ucp_worker_arm(w->pw[i].worker);
    return s;
}

/* The poll set: every worker's event fd, then the owner's fds. Its
 * length, or -1 when it cannot be made (then the loop sleeps a tick). */
static int poll_set(attnd_ucxw *w, const attnd_ucxw_loop *l)
{
    size_t need = 1 + w->n_pw + MAX_FDS;
    if (need > w->cap_pfds) {
        struct pollfd *np = realloc(w->pfds, need * sizeof *np);
        if (!np)
            return -1;
        w->pfds = np;
        w->cap_pfds = need;
    }
    size_t n = 0;
    w->pfds[n++] = (struct pollfd){.fd = w->efd, .events = POLLIN};
    for (size_t i = 0; i < w->n_pw; i++)
        w->pfds[n++] = (struct pollfd){.fd = w->pw[i].efd, .events = POLLIN};
    if (l->fds)
        n += (size_t)l->fds(l->arg, w->pfds + n, MAX_FDS);
    return (int)n;
}

static void *loop_main(void *arg)
{
    attnd_ucxw *w = arg;
    attnd_ucxw_loop *l = w->loop;
    uint64_t last = attnd_clock_ns();

    while (!atomic_load(&w->stop)) {
        int n = 0, busy = 0;
        ucs_status_t armed = UCS_ERR_BUSY;

        if (l->locked)
            attnd_ucxw_lock(w);
        busy = progress_all(w);
        if (l->tend && l->tend(l->arg))
            busy = 1;
        attnd_ucxw_reap(w);
        uint64_t now = attnd_clock_ns();
        if (busy)
            last = now;
        else if (now - last >= l->spin_ns) {
            armed = arm_all(w);
            if (armed == UCS_OK && (n = poll_set(w, l)) < 0)
                armed = UCS_ERR_NO_MEMORY;
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
        /* arm failed otherwise: sleep a tick, then go round */
        (void)poll(w->pfds, (nfds_t)(armed == UCS_OK ? n : 0),
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
