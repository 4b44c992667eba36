/* attnd_kernel_pool: a fixed set of threads that run one job at a time.
 *
 * A job is a function called once on every thread, tid 0 being the caller;
 * the decode run's function pulls work units from a shared counter until
 * none are left, so the job ends when the units do. Callers are serialized
 * by job_mu: with several server threads sharing one pool, each batch gets
 * every core in turn instead of all batches fighting over them, and the
 * number of running threads never exceeds n_threads. Workers sleep on a
 * condition variable between jobs and take no lock but the pool's, so a
 * caller may hold locks of its own (the engine holds session locks) while
 * it waits here without risk of deadlock.
 *
 * The pool also owns what a job needs per thread and must not allocate in
 * the hot path: a float scratch per thread, grown (never shrunk) before a
 * job is published when a batch needs more, and one decode plan for
 * attnd_kernel_decode_parallel. Both are only touched under job_mu.
 *
 * Hand-offs spin briefly before they sleep: a worker done with a job
 * watches for the next one for up to POOL_SPIN_NS, and the caller done with
 * its share watches for the workers to finish for as long, before either
 * waits on its condition variable. Why: a wake-up through the condition
 * variable took 30-90 us on the dev VM (measured from the job's start to
 * the worker's first task in a page selection of 0.18-0.37 ms, and ~15 us
 * more for the caller to see the end), time in which one thread did the
 * job alone; an Attend runs the selection and the decode back to back, so
 * the second job finds the workers still watching. The spin is bounded
 * (and yields the core now and then), so an idle pool sleeps as before. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attnd_clock.h"
#include "cpu_int.h"

/* How long a hand-off spins before it sleeps. */
#define POOL_SPIN_NS 200000u

typedef struct worker_arg {
    attnd_kernel_pool *pool;
    int32_t tid;
} worker_arg;

struct attnd_kernel_pool {
    int32_t n_threads;     /* including the caller */
    int32_t n_started;     /* workers running */
    pthread_t *workers;    /* [n_threads - 1] */
    worker_arg *args;      /* [n_threads - 1] */

    pthread_mutex_t job_mu; /* one job at a time; guards scratch and plan */
    float **scratch;        /* [n_threads], 64-byte aligned */
    size_t scratch_floats;
    attnd_kernel_decode_plan plan;

    pthread_mutex_t mu;     /* guards the job hand-off below */
    pthread_cond_t start_cv, done_cv;
    uint64_t gen;           /* bumped for each job */
    int stop;
    int32_t running;        /* workers not done with the current job */
    /* gen and running, also written (under mu) where spinners read them */
    _Atomic uint64_t gen_pub;
    atomic_int running_pub;
    attnd__pool_fn fn;
    void *ctx;
};

/* Spin (bounded) while the published generation is still seen: a worker
 * waiting for the next job. */
static void spin_while_gen(attnd_kernel_pool *pool, uint64_t seen)
{
    const uint64_t t0 = attnd_clock_ns();
    for (unsigned i = 1; atomic_load_explicit(&pool->gen_pub, memory_order_acquire) == seen; i++)
        if (i % 256 == 0) {
            if (attnd_clock_ns() - t0 > POOL_SPIN_NS)
                return;
            sched_yield();
        }
}

/* Spin (bounded) while workers run the current job: the caller waiting for
 * the end. */
static void spin_while_running(attnd_kernel_pool *pool)
{
    const uint64_t t0 = attnd_clock_ns();
    for (unsigned i = 1; atomic_load_explicit(&pool->running_pub, memory_order_acquire) > 0; i++)
        if (i % 256 == 0) {
            if (attnd_clock_ns() - t0 > POOL_SPIN_NS)
                return;
            sched_yield();
        }
}

static void *worker_main(void *p)
{
    worker_arg *a = p;
    attnd_kernel_pool *pool = a->pool;
    uint64_t seen = 0;

    for (;;) {
        spin_while_gen(pool, seen);
        pthread_mutex_lock(&pool->mu);
        while (pool->gen == seen && !pool->stop)
            pthread_cond_wait(&pool->start_cv, &pool->mu);
        if (pool->stop) {
            pthread_mutex_unlock(&pool->mu);
            return NULL;
        }
        seen = pool->gen;
        attnd__pool_fn fn = pool->fn;
        void *ctx = pool->ctx;
        pthread_mutex_unlock(&pool->mu);

        fn(ctx, a->tid);

        pthread_mutex_lock(&pool->mu);
        atomic_store_explicit(&pool->running_pub, --pool->running, memory_order_release);
        if (pool->running == 0)
            pthread_cond_signal(&pool->done_cv);
        pthread_mutex_unlock(&pool->mu);
    }
}

static void stop_workers(attnd_kernel_pool *pool)
{
    pthread_mutex_lock(&pool->mu);
    pool->stop = 1;
    pthread_cond_broadcast(&pool->start_cv);
    pthread_mutex_unlock(&pool->mu);
    for (int32_t i = 0; i < pool->n_started; i++)
        pthread_join(pool->workers[i], NULL);
    pool->n_started = 0;
}

attnd_status attnd_kernel_pool_create(int32_t n_threads, attnd_kernel_pool **pool_p,
                                      attnd_error *err)
{
    attnd_kernel_pool *pool;
    attnd_status st;

    if (n_threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n < 1 ? 1 : n > 1024 ? 1024 : (int32_t)n;
    }
    if (n_threads < 1 || n_threads > 1024)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "kernel_threads: %d not in [0, 1024]", n_threads);
    pool = calloc(1, sizeof *pool);
    if (!pool)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "cpu pool: out of memory");
    pool->n_threads = n_threads;
    atomic_init(&pool->gen_pub, 0);
    atomic_init(&pool->running_pub, 0);
    pool->workers = calloc((size_t)n_threads, sizeof *pool->workers);
    pool->args = calloc((size_t)n_threads, sizeof *pool->args);
    pool->scratch = calloc((size_t)n_threads, sizeof *pool->scratch);
    if (!pool->workers || !pool->args || !pool->scratch) {
        st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED, "cpu pool: out of memory");
        goto err_arrays;
    }
    attnd_kernel_decode_plan_init(&pool->plan);
    pthread_mutex_init(&pool->job_mu, NULL);
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->start_cv, NULL);
    pthread_cond_init(&pool->done_cv, NULL);
    for (int32_t i = 0; i < n_threads - 1; i++) {
        pool->args[i] = (worker_arg){pool, i + 1};
        if (pthread_create(&pool->workers[i], NULL, worker_main, &pool->args[i]) != 0) {
            st = attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                                 "kernel_threads: could not start thread %d of %d", i + 1,
                                 n_threads);
            goto err_threads;
        }
        pool->n_started++;
    }
    *pool_p = pool;
    return ATTND_OK;

err_threads:
    stop_workers(pool);
    pthread_cond_destroy(&pool->done_cv);
    pthread_cond_destroy(&pool->start_cv);
    pthread_mutex_destroy(&pool->mu);
    pthread_mutex_destroy(&pool->job_mu);
err_arrays:
    free(pool->scratch);
    free(pool->args);
    free(pool->workers);
    free(pool);
    return st;
}

void attnd_kernel_pool_destroy(attnd_kernel_pool *pool)
{
    if (!pool)
        return;
    stop_workers(pool);
    for (int32_t i = 0; i < pool->n_threads; i++)
        free(pool->scratch[i]);
    attnd_kernel_decode_plan_cleanup(&pool->plan);
    pthread_cond_destroy(&pool->done_cv);
    pthread_cond_destroy(&pool->start_cv);
    pthread_mutex_destroy(&pool->mu);
    pthread_mutex_destroy(&pool->job_mu);
    free(pool->scratch);
    free(pool->args);
    free(pool->workers);
    free(pool);
}

int32_t attnd_kernel_pool_threads(const attnd_kernel_pool *pool)
{
    return pool->n_threads;
}

/* Give every thread at least n floats of scratch; on failure no thread has
 * any (and the next job tries again). Called with job_mu held. */
static int grow_scratch(attnd_kernel_pool *pool, size_t n)
{
    if (n <= pool->scratch_floats)
        return 0;
    size_t bytes = attnd__round_up((int64_t)(n * sizeof(float)), 64);
    for (int32_t i = 0; i < pool->n_threads; i++) {
        free(pool->scratch[i]);
        pool->scratch[i] = aligned_alloc(64, bytes);
        if (!pool->scratch[i]) {
            for (int32_t j = 0; j < i; j++) {
                free(pool->scratch[j]);
                pool->scratch[j] = NULL;
            }
            pool->scratch_floats = 0;
            return -1;
        }
    }
    pool->scratch_floats = bytes / sizeof(float);
    return 0;
}

float *attnd__pool_scratch(attnd_kernel_pool *pool, int32_t tid)
{
    return pool->scratch[tid];
}

attnd_kernel_decode_plan *attnd__pool_plan(attnd_kernel_pool *pool)
{
    return &pool->plan;
}

void attnd__pool_lock(attnd_kernel_pool *pool)
{
    pthread_mutex_lock(&pool->job_mu);
}

void attnd__pool_unlock(attnd_kernel_pool *pool)
{
    pthread_mutex_unlock(&pool->job_mu);
}

int attnd__pool_run_locked(attnd_kernel_pool *pool, size_t scratch_floats, attnd__pool_fn fn,
                           void *ctx)
{
    if (scratch_floats && grow_scratch(pool, scratch_floats))
        return -1;
    if (pool->n_threads == 1) {
        fn(ctx, 0);
        return 0;
    }
    pthread_mutex_lock(&pool->mu);
    pool->fn = fn;
    pool->ctx = ctx;
    pool->running = pool->n_threads - 1;
    atomic_store_explicit(&pool->running_pub, pool->running, memory_order_relaxed);
    pool->gen++;
    atomic_store_explicit(&pool->gen_pub, pool->gen, memory_order_release);
    pthread_cond_broadcast(&pool->start_cv);
    pthread_mutex_unlock(&pool->mu);

    fn(ctx, 0);

    spin_while_running(pool);
    pthread_mutex_lock(&pool->mu);
    while (pool->running > 0)
        pthread_cond_wait(&pool->done_cv, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
    return 0;
}

int attnd__pool_run(attnd_kernel_pool *pool, size_t scratch_floats, attnd__pool_fn fn, void *ctx)
{
    attnd__pool_lock(pool);
    int rc = attnd__pool_run_locked(pool, scratch_floats, fn, ctx);
    attnd__pool_unlock(pool);
    return rc;
}
