/* The executor pool: --threads threads that run the handlers of work calls
 * (engine and group work) so that the io threads never wait for it.
 *
 * An io thread pushes a call whose event needs work (the call taken, a
 * message received) on one FIFO; an idle executor pops it, runs the
 * method's start or step with its own context (engine workspace, decode
 * arena, flatten buffer: reused, so nothing is allocated per call after
 * warm-up) and ends by starting the call's next batch, whose completion
 * goes back to the io thread (srv.h: who owns a call when). The FIFO is
 * intrusive (attnd_srv_call.qnext): pushing allocates nothing.
 *
 * Once the shutdown's grace is over (srv->cancelling), queued events are
 * not run: their calls end CANCELLED at once. Nor is an event whose call's
 * deadline passed while it waited (gRPC has cancelled the call already):
 * it ends DEADLINE_EXCEEDED, an AppendKV stream's staged chunks are
 * dropped, nothing of it is applied. (A call whose deadline passes while
 * it runs finishes its work; as with any RPC, the client may then see
 * DEADLINE_EXCEEDED for work that was done.)
 */
#include <stdlib.h>
#include <string.h>

#include "attnd_assert.h"
#include "attnd_clock.h"
#include <grpc/support/time.h>

#include "srv.h"

void attnd_srv_exec_push(attnd_srv_call *c, int ok)
{
    attnd_srv *srv = c->srv;

    /* queued only between batches: nothing of it is in flight */
    ATTND_ASSERT(c->pending == 0 && c->qnext == NULL);
    c->t_event_ns = attnd_clock_ns();
    c->job_ok = ok;
    c->qnext = NULL;
    pthread_mutex_lock(&srv->q_mu);
    if (srv->q_tail)
        srv->q_tail->qnext = c;
    else
        srv->q_head = c;
    srv->q_tail = c;
    pthread_cond_signal(&srv->q_cv);
    pthread_mutex_unlock(&srv->q_mu);
}

/* The next queued call, or NULL once stopping with an empty queue. */
static attnd_srv_call *pop(attnd_srv *srv)
{
    attnd_srv_call *c;

    pthread_mutex_lock(&srv->q_mu);
    while (!srv->q_head && !srv->q_stop)
        pthread_cond_wait(&srv->q_cv, &srv->q_mu);
    if ((c = srv->q_head)) {
        srv->q_head = c->qnext;
        if (!srv->q_head)
            srv->q_tail = NULL;
        c->qnext = NULL;
    }
    pthread_mutex_unlock(&srv->q_mu);
    return c;
}

/* The call's deadline has passed (none: never). */
static int past_deadline(const attnd_srv_call *c)
{
    gpr_timespec d = c->deadline;
    if (gpr_time_cmp(d, gpr_inf_future(d.clock_type)) == 0 || (d.tv_sec == 0 && d.tv_nsec == 0))
        return 0; /* none, or never set */
    return gpr_time_cmp(gpr_now(d.clock_type), d) >= 0;
}

static void run(attnd_srv_exec *ex, attnd_srv_call *c)
{
    const attnd_srv_method *m = &attnd_srv_methods[c->method];

    c->x = &ex->x;
    if (atomic_load(&ex->srv->cancelling)) {
        attnd_srv_append_drop(c); /* an AppendKV stage: aborted here, not on an io thread */
        attnd_srv_call_finish(c, NULL, ATTND_ERR_CANCELLED, "server stopped before running it");
    } else if (past_deadline(c)) {
        attnd_srv_append_drop(c);
        attnd_srv_call_finish(c, NULL, ATTND_ERR_DEADLINE_EXCEEDED,
                              "deadline passed before the call ran; nothing of it was applied");
    }
    else if (c->job_ok < 0)
        m->start(c);
    else
        m->step(c, c->job_ok);
}

static void *exec_main(void *arg)
{
    attnd_srv_exec *ex = arg;
    attnd_srv_call *c;

    while ((c = pop(ex->srv)))
        run(ex, c);
    return NULL;
}

attnd_status attnd_srv_exec_init(attnd_srv *srv, int n, attnd_error *err)
{
    if (n < 1)
        n = 1;
    if (!(srv->execs = calloc((size_t)n, sizeof *srv->execs)))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "--threads: out of memory");
    for (int i = 0; i < n; i++) {
        srv->execs[i].srv = srv;
        attnd_srv_ctx_init(&srv->execs[i].x);
    }
    srv->n_execs = n;
    return ATTND_OK;
}

attnd_status attnd_srv_exec_start(attnd_srv *srv, attnd_error *err)
{
    for (int i = 0; i < srv->n_execs; i++) {
        int rc = pthread_create(&srv->execs[i].tid, NULL, exec_main, &srv->execs[i]);
        if (rc) {
            attnd_srv_exec_stop(srv);
            return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                   "--threads: cannot start executor %d: %s", i, strerror(rc));
        }
        srv->execs[i].running = 1;
    }
    return ATTND_OK;
}

void attnd_srv_exec_stop(attnd_srv *srv)
{
    pthread_mutex_lock(&srv->q_mu);
    srv->q_stop = 1;
    pthread_cond_broadcast(&srv->q_cv);
    pthread_mutex_unlock(&srv->q_mu);
    for (int i = 0; i < srv->n_execs; i++)
        if (srv->execs[i].running) {
            pthread_join(srv->execs[i].tid, NULL);
            srv->execs[i].running = 0;
        }
}

void attnd_srv_exec_cleanup(attnd_srv *srv)
{
    for (int i = 0; i < srv->n_execs; i++)
        attnd_srv_ctx_cleanup(&srv->execs[i].x);
    free(srv->execs);
    srv->execs = NULL;
    srv->n_execs = 0;
}
