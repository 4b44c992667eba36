/* One lane of attnd-bench: its sessions, their prefill, and decode steps.
 *
 * A lane owns M micro-batches of B sessions. A decode step sends, for each
 * layer l = 0..L-1 and micro-batch m, one Attend for m's B sessions that
 * carries each session's new-token KV (positions given) and a query. The
 * chain of one micro-batch is dependent (layer l+1 is sent once layer l
 * came back); the M chains are interleaved in ping-pong order, as a compute
 * node overlapping one micro-batch's attention with another's FFN:
 *
 *   send(0,0) send(1,0) wait(0,0) send(0,1) wait(1,0) send(1,1) wait(0,1) ...
 *
 * so M calls are in flight while the lane runs. A call's latency is from
 * its send to the return of its wait (waits in send order, as above).
 * Queries are random once per lane (the server's work does not depend on
 * their values; MLA models send them in the heads form by default,
 * --wire); the new KV is fresh per step and the same for every layer of
 * that step. Every call of a step writes its own output slot, so that
 * with --check the outputs are compared after the step is over: the
 * step's new KV goes into the lane's mirror and every (sequence, head)
 * output is compared with the float64 reference. The check thus costs the
 * lane time between steps (throughput) but never inflates a latency.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_clock.h"
#include "attnd_buf.h"
#include "attnd_kernels.h"
#include "bench.h"

int attnd_bench_lane_init(attnd_bench_lane *l, attnd_bench_run *r, uint32_t index)
{
    const attnd_model_info *m = &r->m;
    const size_t ds = attnd_dtype_size(r->o->dtype);
    const uint32_t B = r->batch, M = r->micro;

    memset(l, 0, sizeof *l);
    l->run = r;
    l->index = index;
    l->c = r->clients[index % r->n_clients];
    l->n_seqs = M * B;
    l->q_bytes = (size_t)B * m->n_q_heads * r->d_q * ds;
    l->kv_bytes = (size_t)B * m->kv_token_elems * ds;
    l->out_bytes = (size_t)B * m->n_q_heads * r->d_out * ds;
    attnd_rng_seed(&l->rng, r->o->seed + 0x9e3779b97f4a7c15ull * (index + 1));
    l->ids = calloc(l->n_seqs, sizeof *l->ids);
    l->len = calloc(l->n_seqs, sizeof *l->len);
    l->q = malloc(l->q_bytes * M);
    l->kv = malloc(l->kv_bytes * M);
    l->out = malloc(l->out_bytes * M * m->n_layers);
    l->pos = calloc(l->n_seqs, sizeof *l->pos);
    l->calls = calloc(M, sizeof *l->calls);
    if (!l->ids || !l->len || !l->q || !l->kv || !l->out || !l->pos || !l->calls)
        goto err;
    if (r->o->given_tokens) {
        l->sp = calloc(M, sizeof *l->sp);
        l->g_indptr = calloc((size_t)M * (B + 1), sizeof *l->g_indptr);
        l->g_idx = calloc((size_t)M * B * r->o->given_tokens, sizeof *l->g_idx);
        if (!l->sp || !l->g_indptr || !l->g_idx)
            goto err;
    }
    if (attnd_bench_stats_init(&l->st))
        goto err;
    if (r->o->check) {
        if (attnd_refcheck_init(&l->rc, m, l->n_seqs))
            goto err;
        l->have_rc = 1;
    }
    attnd_rng_fill(&l->rng, r->o->dtype, l->q, l->q_bytes * M / ds);
    return 0;
err:
    attnd_bench_lane_cleanup(l);
    return -1;
}

void attnd_bench_lane_cleanup(attnd_bench_lane *l)
{
    if (l->have_rc)
        attnd_refcheck_cleanup(&l->rc);
    attnd_bench_stats_cleanup(&l->st);
    free(l->ids);
    free(l->len);
    free(l->q);
    free(l->kv);
    free(l->out);
    free(l->pos);
    free(l->calls);
    free(l->sp);
    free(l->g_indptr);
    free(l->g_idx);
    memset(l, 0, sizeof *l);
}

void attnd_bench_lane_close(attnd_bench_lane *l)
{
    for (uint32_t i = 0; i < l->n_open; i++)
        attnd_client_close_session(l->c, &l->ids[i], NULL);
    l->n_open = 0;
}

/* Mirror n entries of the wire dtype; with --check-perturb the mirror gets
 * every value halved, so that the reference is wrong on purpose. */
static int mirror(attnd_bench_lane *l, uint32_t seq, uint32_t layer, uint64_t n, const void *src)
{
    const attnd_bench_opts *o = l->run->o;
    if (!o->check_perturb)
        return attnd_refcheck_append(&l->rc, seq, layer, n, o->dtype, src);
    size_t elems = (size_t)n * l->run->m.kv_token_elems;
    float *tmp = malloc(elems * sizeof *tmp + 1);
    if (!tmp)
        return -1;
    attnd_dtype_convert(ATTND_DTYPE_F32, tmp, o->dtype, src, elems);
    for (size_t i = 0; i < elems; i++)
        tmp[i] *= 0.5f;
    int rc = attnd_refcheck_append(&l->rc, seq, layer, n, ATTND_DTYPE_F32, tmp);
    free(tmp);
    return rc;
}

int attnd_bench_lane_prefill(attnd_bench_lane *l)
{
    attnd_bench_run *r = l->run;
    const attnd_bench_opts *o = r->o;
    const attnd_model_info *m = &r->m;
    const size_t entry = (size_t)m->kv_token_elems * attnd_dtype_size(o->dtype);
    unsigned char *data = NULL;
    attnd_kv_chunk *chunks = NULL;
    size_t cap_tokens = 0;
    attnd_error err;
    int rc = -1;

    for (uint32_t s = 0; s < l->n_seqs; s++) {
        uint32_t global = l->index * l->n_seqs + s;
        uint32_t T = attnd_bench_prompt_len(o, global, &l->rng);
        const char *model = (!o->target[0] || o->model_set) ? o->model : "";

        attnd_error_clear(&err);
        if (o->has_policy
                ? attnd_client_create_session_policy(l->c, model, 0, &o->policy, NULL, 0,
                                                     &l->ids[s], NULL, &err)
                : attnd_client_create_session(l->c, model, 0, &l->ids[s], NULL, &err)) {
            attnd_bench_record_error(r, &l->st, "CreateSession", &err);
            goto out;
        }
        l->n_open++;
        if (T > cap_tokens) {
            free(data);
            free(chunks);
            data = malloc((size_t)T * entry);
            chunks = calloc(T / o->chunk + 1, sizeof *chunks);
            cap_tokens = T;
            if (!data || !chunks) {
                attnd_error_set(&err, ATTND_ERR_RESOURCE_EXHAUSTED, "prefill: out of memory");
                attnd_bench_record_error(r, &l->st, "prefill", &err);
                goto out;
            }
        }
        for (uint32_t layer = 0; layer < m->n_layers && !atomic_load(&r->stop); layer++) {
            size_t n = 0;
            attnd_rng_fill(&l->rng, o->dtype, data, (size_t)T * m->kv_token_elems);
            for (uint32_t t = 0; t < T; t += o->chunk, n++) {
                chunks[n].session = l->ids[s];
                chunks[n].layer = layer;
                chunks[n].start = t;
                chunks[n].n_tokens = T - t < o->chunk ? T - t : o->chunk;
                chunks[n].kv_token_elems = m->kv_token_elems;
                chunks[n].dtype = o->dtype;
                chunks[n].data = data + (size_t)t * entry;
            }
            uint64_t t0 = attnd_clock_ns();
            attnd_error_clear(&err);
            if (attnd_client_append_kv(l->c, chunks, n, NULL, &err)) {
                attnd_bench_record_error(r, &l->st, "AppendKV", &err);
                goto out;
            }
            attnd_hist_record(&l->st.append, attnd_clock_ns() - t0);
            l->st.prefill_calls++;
            l->st.prefill_tokens += T;
            l->st.prefill_bytes += (uint64_t)T * entry;
            atomic_fetch_add(&r->prog_prefill, T);
            if (l->have_rc && mirror(l, s, layer, T, data)) {
                attnd_error_set(&err, ATTND_ERR_RESOURCE_EXHAUSTED, "check mirror: out of memory");
                attnd_bench_record_error(r, &l->st, "prefill", &err);
                goto out;
            }
        }
        l->len[s] = T;
    }
    rc = 0;
out:
    free(data);
    free(chunks);
    if (rc)
        l->failed = 1;
    return rc;
}

/* --policy given-tokens: micro-batch mb's lists for this step, K token
 * positions of each session (all of them while it has fewer), one drawn in
 * each K-th of the tokens before this step's (the newest is the server's
 * to add), ascending. */
static void draw_given(attnd_bench_lane *l, uint32_t mb)
{
    const uint32_t B = l->run->batch, K = l->run->o->given_tokens;
    uint32_t *ip = l->g_indptr + (size_t)mb * (B + 1);
    uint64_t *idx = l->g_idx + (size_t)mb * B * K;
    uint32_t n = 0;
    ip[0] = 0;
    for (uint32_t b = 0; b < B; b++) {
        const uint64_t len = l->pos[mb * B + b];
        const uint64_t k = len < K ? len : K;
        for (uint64_t j = 0; j < k; j++) {
            const uint64_t lo = j * len / k, hi = (j + 1) * len / k;
            idx[n++] = lo + attnd_rng_next(&l->rng) % (hi - lo);
        }
        ip[b + 1] = n;
    }
    l->sp[mb] = (attnd_sparse_args){.given_groups = 1, .given_indptr = ip, .given_idx = idx,
                                    .n_given_idx = n};
}

/* Send micro-batch mb's call for `layer`. */
static attnd_status issue(attnd_bench_lane *l, uint32_t mb, uint32_t layer, attnd_error *err)
{
    attnd_bench_run *r = l->run;
    const attnd_model_info *m = &r->m;
    const uint32_t B = r->batch;
    attnd_attend_args a;

    memset(&a, 0, sizeof a);
    a.layer = layer;
    a.n_seqs = B;
    a.sessions = l->ids + (size_t)mb * B;
    a.q.dtype = r->o->dtype;
    a.q.ndim = 3;
    a.q.shape[0] = B;
    a.q.shape[1] = m->n_q_heads;
    a.q.shape[2] = r->d_q;
    a.q.data = l->q + l->q_bytes * mb;
    a.q_form = r->heads ? ATTND_Q_HEADS : ATTND_Q_ABSORBED;
    a.new_kv.dtype = r->o->dtype;
    a.new_kv.data = l->kv + l->kv_bytes * mb;
    if (m->kind == ATTND_ATTN_MLA) {
        a.new_kv.ndim = 2;
        a.new_kv.shape[0] = B;
        a.new_kv.shape[1] = m->kv_token_elems;
    } else {
        a.new_kv.ndim = 4;
        a.new_kv.shape[0] = B;
        a.new_kv.shape[1] = 2;
        a.new_kv.shape[2] = m->n_kv_heads;
        a.new_kv.shape[3] = m->head_dim;
    }
    a.positions = l->pos + (size_t)mb * B;
    a.out_dtype = r->o->dtype;
    a.out = l->out + l->out_bytes * ((size_t)layer * r->micro + mb);
    a.out_capacity = l->out_bytes;
    if (r->o->given_tokens) { /* the step's lists, the same on every layer */
        if (layer == 0)
            draw_given(l, mb);
        return attnd_client_attend_sparse_async(l->c, &a, &l->sp[mb], &l->calls[mb], err);
    }
    return attnd_client_attend_async(l->c, &a, &l->calls[mb], err);
}

/* After the step: mirror micro-batch mb's new KV for `layer` and check
 * every output of that call. 0, or -1 when out of memory. */
static int check_call(attnd_bench_lane *l, uint32_t mb, uint32_t layer)
{
    attnd_bench_run *r = l->run;
    const attnd_model_info *m = &r->m;
    const attnd_dtype dt = r->o->dtype;
    const size_t ds = attnd_dtype_size(dt);

    for (uint32_t b = 0; b < r->batch; b++) {
        uint32_t s = mb * r->batch + b;
        const unsigned char *kv = l->kv + l->kv_bytes * mb + (size_t)b * m->kv_token_elems * ds;
        if (attnd_refcheck_append(&l->rc, s, layer, 1, dt, kv))
            return -1;
        const unsigned char *q = l->q + l->q_bytes * mb + (size_t)b * m->n_q_heads * r->d_q * ds;
        const unsigned char *out = l->out + l->out_bytes * ((size_t)layer * r->micro + mb) +
                                   (size_t)b * m->n_q_heads * r->d_out * ds;
        if (r->heads ? attnd_refcheck_token_heads(&l->rc, s, layer, l->len[s] + 1, &r->proj, dt,
                                                  q, dt, out, NULL, 0, m->n_q_heads,
                                                  &l->st.check)
                     : attnd_refcheck_token(&l->rc, s, layer, l->len[s] + 1, dt, q, dt, out,
                                            NULL, 0, m->n_q_heads, &l->st.check))
            return -1;
    }
    return 0;
}

/* Account one completed call of micro-batch mb. */
static void record_call(attnd_bench_lane *l, uint32_t mb, uint64_t lat,
                        const attnd_server_timing *t)
{
    attnd_bench_stats *st = &l->st;
    const attnd_model_info *m = &l->run->m;
    const uint64_t kv_entry = (uint64_t)m->kv_token_elems * attnd_dtype_size(m->kv_dtype);

    st->calls++;
    attnd_hist_record(&st->call, lat);
    st->bytes_q += l->q_bytes;
    st->bytes_kv += l->kv_bytes;
    st->bytes_out += l->out_bytes;
    for (uint32_t b = 0; b < l->run->batch; b++)
        st->kv_attended += (l->len[mb * l->run->batch + b] + 1) * kv_entry;
    if (t->valid) {
        uint64_t srv = t->queue_ns + t->validate_ns + t->kernel_ns + t->fanout_ns + t->encode_ns;
        st->timed_calls++;
        attnd_hist_record(&st->srv_queue, t->queue_ns);
        attnd_hist_record(&st->srv_kernel, t->kernel_ns);
        attnd_hist_record(&st->srv_fanout, t->fanout_ns);
        attnd_hist_record(&st->srv_other, t->validate_ns + t->encode_ns);
        attnd_hist_record(&st->net, lat > srv ? lat - srv : 0);
    }
}

static int ts_push(attnd_bench_stats *st, double t, uint64_t lat)
{
    if (st->ts_n == st->ts_cap) {
        size_t cap_t = st->ts_cap, cap_lat = st->ts_cap;
        if (ATTND_BUF_RESERVE(st->ts_t, cap_t, st->ts_n + 1) ||
            ATTND_BUF_RESERVE(st->ts_lat, cap_lat, st->ts_n + 1))
            return -1;
        st->ts_cap = cap_t < cap_lat ? cap_t : cap_lat;
    }
    st->ts_t[st->ts_n] = t;
    st->ts_lat[st->ts_n++] = lat;
    return 0;
}

int attnd_bench_lane_step(attnd_bench_lane *l, uint64_t t_intended)
{
    attnd_bench_run *r = l->run;
    const attnd_bench_opts *o = r->o;
    const uint32_t L = r->m.n_layers, M = r->micro, B = r->batch;
    const int in_window = t_intended >= r->t_window && t_intended < r->t_end;
    uint64_t t_send[64]; /* --microbatches is at most 64 */
    attnd_error err;
    const char *what = "Attend";

    uint64_t t_start = attnd_clock_ns();
    attnd_rng_fill(&l->rng, o->dtype, l->kv, l->kv_bytes * M / attnd_dtype_size(o->dtype));
    for (uint32_t s = 0; s < l->n_seqs; s++)
        l->pos[s] = l->len[s];

    attnd_error_clear(&err);
    for (uint32_t mb = 0; mb < M; mb++) {
        t_send[mb] = attnd_clock_ns();
        if (issue(l, mb, 0, &err))
            goto fail;
    }
    for (uint32_t layer = 0; layer < L; layer++) {
        for (uint32_t mb = 0; mb < M; mb++) {
            attnd_server_timing t;
            attnd_status st = attnd_call_wait_timed(l->calls[mb], &t, &err);
            uint64_t lat = attnd_clock_ns() - t_send[mb];
            l->calls[mb] = NULL;
            if (st)
                goto fail;
            if (in_window)
                record_call(l, mb, lat, &t);
            atomic_fetch_add_explicit(&r->prog_calls, 1, memory_order_relaxed);
            if (layer + 1 < L) {
                t_send[mb] = attnd_clock_ns();
                if (issue(l, mb, layer + 1, &err))
                    goto fail;
            }
        }
    }
    uint64_t t_done = attnd_clock_ns();
    for (uint32_t layer = 0; l->have_rc && layer < L; layer++)
        for (uint32_t mb = 0; mb < M; mb++)
            if (check_call(l, mb, layer)) {
                attnd_error_set(&err, ATTND_ERR_RESOURCE_EXHAUSTED, "check: out of memory");
                what = "check";
                goto fail;
            }
    for (uint32_t s = 0; s < l->n_seqs; s++)
        l->len[s]++;
    l->steps_done++;
    atomic_fetch_add_explicit(&r->prog_steps, 1, memory_order_relaxed);
    if (in_window) {
        attnd_bench_stats *st = &l->st;
        uint64_t corr = t_done - t_intended;
        st->steps++;
        st->tokens += (uint64_t)M * B;
        attnd_hist_record(&st->step, t_done - t_start);
        attnd_hist_record(&st->step_corr, corr);
        if (t_start > t_intended + (uint64_t)(o->late_ms * 1e6) && o->rate > 0)
            st->late++;
        if (o->slo_ms > 0 && (double)corr <= o->slo_ms * 1e6)
            st->slo_ok++;
        if (ts_push(st, (double)(t_done - r->t_window) * 1e-9, corr)) {
            attnd_error_set(&err, ATTND_ERR_RESOURCE_EXHAUSTED, "time series: out of memory");
            what = "report";
            goto fail;
        }
    }
    return 0;

fail:
    /* wait out the calls still in flight: every started call is waited */
    for (uint32_t mb = 0; mb < M; mb++)
        if (l->calls[mb]) {
            attnd_call_wait(l->calls[mb], NULL);
            l->calls[mb] = NULL;
        }
    attnd_bench_record_error(r, &l->st, what, &err);
    l->failed = 1;
    return -1;
}
