/* The decode run: a plan's work units on a pool's threads.
 *
 * Every thread pulls the next unit index from one atomic counter (units are
 * sorted longest first, so the tail of the run is short units) and computes
 * it with the current path into its own scratch. An unsplit unit writes the
 * batch's out/lse rows directly. A split unit writes its partial state to
 * its slot in the plan; the thread whose unit brings its group's pending
 * count to zero merges the group's slots in range order (so the result does
 * not depend on which thread ran what) and copies the merged rows out. No
 * barrier between computing and merging, and no allocation: the scratch
 * and the plan were sized before the job started. */
#include <stdatomic.h>
#include <string.h>

#include "cpu_int.h"

typedef struct run_ctx {
    const attnd_kernel_decode_batch *b;
    attnd_kernel_decode_plan *plan;
    attnd_kernel_pool *pool;
    attnd__unit_fn fn;
    atomic_int next;
} run_ctx;

/* Merge group g's partial states (slot order) and write the batch rows. */
static void merge_group(const run_ctx *c, int32_t g)
{
    const attnd_kernel_decode_batch *b = c->b;
    const attnd_kernel_decode_plan *plan = c->plan;
    const attnd_kernel_decode_group *grp = &plan->groups[g];
    const int32_t rows = plan->rows, dv = plan->d_v, hq = b->n_q_heads;
    const int32_t group = hq / b->kv->n_kv_heads;
    float *o0 = plan->part_out + (size_t)grp->first_part * rows * dv;
    float *l0 = plan->part_lse + (size_t)grp->first_part * rows;

    for (int32_t j = 1; j < grp->n_parts; j++)
        attnd_kernel_merge_states(o0, l0, o0 + (size_t)j * rows * dv, l0 + (size_t)j * rows,
                                  rows, dv);
    for (int32_t s = 0; s < b->q_tokens; s++) {
        size_t h0 = ((size_t)grp->seq * b->q_tokens + s) * hq + (size_t)grp->kv_head * group;
        memcpy(b->out + h0 * dv, o0 + (size_t)s * group * dv,
               sizeof(float) * (size_t)group * dv);
        if (b->lse)
            memcpy(b->lse + h0, l0 + (size_t)s * group, sizeof(float) * (size_t)group);
    }
}

static void run_job(void *p, int32_t tid)
{
    run_ctx *c = p;
    const attnd_kernel_decode_batch *b = c->b;
    attnd_kernel_decode_plan *plan = c->plan;
    float *work = attnd__pool_scratch(c->pool, tid);
    const int32_t hq = b->n_q_heads, dv = b->kv->d_v;
    const int32_t group = hq / b->kv->n_kv_heads;

    for (;;) {
        int k = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed);
        if (k >= plan->n_units)
            return;
        const attnd_kernel_decode_unit *du = &plan->units[k];
        attnd__unit u = {.seq = du->seq, .kv_head = du->kv_head, .t0 = du->t0, .t1 = du->t1};
        if (du->group < 0) {
            size_t h0 = (size_t)du->seq * b->q_tokens * hq + (size_t)du->kv_head * group;
            u.out = b->out + h0 * dv;
            u.out_s = (int64_t)hq * dv;
            u.lse = b->lse ? b->lse + h0 : NULL;
            u.lse_s = hq;
        } else {
            u.out = plan->part_out + (size_t)du->part * plan->rows * dv;
            u.out_s = (int64_t)group * dv;
            u.lse = plan->part_lse + (size_t)du->part * plan->rows;
            u.lse_s = group;
        }
        c->fn(b, &u, work);
        if (du->group >= 0 &&
            __atomic_sub_fetch(&plan->pending[du->group], 1, __ATOMIC_ACQ_REL) == 0)
            merge_group(c, du->group);
    }
}

/* Run with the pool's job lock held. */
static attnd_status run_locked(attnd_kernel_pool *pool, attnd_kernel_decode_plan *plan,
                               const attnd_kernel_decode_batch *b, attnd_error *err)
{
    const int32_t rows = b->q_tokens * (b->n_q_heads / b->kv->n_kv_heads);

    if (plan->n_units > 0 && (plan->rows != rows || plan->d_v != b->kv->d_v))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "plan: made for %d rows of %d, batch has %d rows of %d",
                               plan->rows, plan->d_v, rows, b->kv->d_v);
    for (int32_t g = 0; g < plan->n_groups; g++)
        plan->pending[g] = plan->groups[g].n_parts;
    run_ctx c = {
        .b = b,
        .plan = plan,
        .pool = pool,
        .fn = attnd__path_unit_fn(attnd_kernel_path_current()),
    };
    atomic_init(&c.next, 0);
    if (attnd__pool_run_locked(pool, attnd_kernel_decode_work_floats(b), run_job, &c))
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "kernel scratch: no memory for %zu floats per thread",
                               attnd_kernel_decode_work_floats(b));
    return ATTND_OK;
}

attnd_status attnd_kernel_decode_run(attnd_kernel_pool *pool, attnd_kernel_decode_plan *plan,
                                     const attnd_kernel_decode_batch *b, attnd_error *err)
{
    attnd__pool_lock(pool);
    attnd_status st = run_locked(pool, plan, b, err);
    attnd__pool_unlock(pool);
    return st;
}

attnd_status attnd_kernel_decode_parallel(attnd_kernel_pool *pool,
                                          const attnd_kernel_decode_batch *b, attnd_error *err)
{
    attnd_kernel_decode_plan_opts opts = {
        .n_threads = attnd_kernel_pool_threads(pool),
        .splits = ATTND_KERNEL_DECODE_SPLITS_AUTO,
    };
    attnd__pool_lock(pool);
    attnd_kernel_decode_plan *plan = attnd__pool_plan(pool);
    attnd_status st = attnd_kernel_decode_plan_make(plan, b, &opts, err);
    if (st == ATTND_OK)
        st = run_locked(pool, plan, b, err);
    attnd__pool_unlock(pool);
    return st;
}
