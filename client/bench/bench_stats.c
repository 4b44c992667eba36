/* The measurements of attnd-bench: one attnd_bench_stats per lane (no
 * locks while running), merged into the run's after the lanes stop. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define FOR_EACH_HIST(s, X)                                                               \
    X(&(s)->call) X(&(s)->step) X(&(s)->step_corr) X(&(s)->srv_queue) X(&(s)->srv_kernel) \
        X(&(s)->srv_fanout) X(&(s)->srv_other) X(&(s)->net) X(&(s)->append)

int attnd_bench_stats_init(attnd_bench_stats *s)
{
    int bad = 0;
    memset(s, 0, sizeof *s);
#define INIT(h) bad |= attnd_hist_init(h);
    FOR_EACH_HIST(s, INIT)
#undef INIT
    if (bad)
        attnd_bench_stats_cleanup(s);
    return bad ? -1 : 0;
}

void attnd_bench_stats_cleanup(attnd_bench_stats *s)
{
#define FREE(h) attnd_hist_cleanup(h);
    FOR_EACH_HIST(s, FREE)
#undef FREE
    free(s->ts_t);
    free(s->ts_lat);
    memset(s, 0, sizeof *s);
}

int attnd_bench_stats_merge(attnd_bench_stats *d, const attnd_bench_stats *s)
{
    attnd_hist_merge(&d->call, &s->call);
    attnd_hist_merge(&d->step, &s->step);
    attnd_hist_merge(&d->step_corr, &s->step_corr);
    attnd_hist_merge(&d->srv_queue, &s->srv_queue);
    attnd_hist_merge(&d->srv_kernel, &s->srv_kernel);
    attnd_hist_merge(&d->srv_fanout, &s->srv_fanout);
    attnd_hist_merge(&d->srv_other, &s->srv_other);
    attnd_hist_merge(&d->net, &s->net);
    attnd_hist_merge(&d->append, &s->append);
    d->calls += s->calls;
    d->steps += s->steps;
    d->tokens += s->tokens;
    d->late += s->late;
    d->bytes_q += s->bytes_q;
    d->bytes_kv += s->bytes_kv;
    d->bytes_out += s->bytes_out;
    d->kv_attended += s->kv_attended;
    d->slo_ok += s->slo_ok;
    d->timed_calls += s->timed_calls;
    for (int i = 0; i < ATTND_BENCH_N_STATUS; i++)
        d->errors[i] += s->errors[i];
    d->prefill_tokens += s->prefill_tokens;
    d->prefill_bytes += s->prefill_bytes;
    d->prefill_calls += s->prefill_calls;
    if (s->check.max_err > d->check.max_err || isnan(s->check.max_err))
        d->check.max_err = s->check.max_err;
    d->check.rows += s->check.rows;
    if (s->ts_n) {
        size_t n = d->ts_n + s->ts_n;
        double *t = realloc(d->ts_t, n * sizeof *t);
        if (!t)
            return -1;
        d->ts_t = t;
        uint64_t *lat = realloc(d->ts_lat, n * sizeof *lat);
        if (!lat)
            return -1;
        d->ts_lat = lat;
        memcpy(d->ts_t + d->ts_n, s->ts_t, s->ts_n * sizeof *t);
        memcpy(d->ts_lat + d->ts_n, s->ts_lat, s->ts_n * sizeof *lat);
        d->ts_n = d->ts_cap = n;
    }
    return 0;
}
