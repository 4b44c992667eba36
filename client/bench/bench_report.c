/* Reports of attnd-bench: the human table (stdout), --json, --csv and
 * --plot.
 *
 * JSON and CSV come from one walk over the result (emit_all) through a
 * small emitter: JSON nests objects, CSV writes one "path,value" row per
 * number (e.g. "decode.call_latency_ms.p99,1.234"), so both carry the
 * same names. Latencies are in milliseconds with nanosecond precision;
 * rates are per second of the measured window.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

static const double pcts[] = {50, 90, 99, 99.9, 99.99};
static const char *const pct_names[] = {"p50", "p90", "p99", "p99.9", "p99.99"};
/* the same as JSON/CSV keys (no dots: CSV paths are dotted) */
static const char *const pct_keys[] = {"p50", "p90", "p99", "p99_9", "p99_99"};
#define N_PCTS 5

static double ms(uint64_t ns)
{
    return (double)ns * 1e-6;
}

static double per_s(double n, double s)
{
    return s > 0 ? n / s : 0;
}

static int is_open(const attnd_bench_opts *o)
{
    return o->rate > 0;
}

static uint64_t total_errors(const attnd_bench_stats *st)
{
    uint64_t n = 0;
    for (int i = 0; i < ATTND_BENCH_N_STATUS; i++)
        n += st->errors[i];
    return n;
}

/* ---- the table ------------------------------------------------------------- */

static void hist_row(FILE *f, const char *name, const attnd_hist *h)
{
    fprintf(f, "  %-26s %9llu", name, (unsigned long long)h->count);
    for (int i = 0; i < N_PCTS; i++)
        fprintf(f, " %9.3f", ms(attnd_hist_percentile(h, pcts[i])));
    fprintf(f, " %9.3f %9.3f\n", ms(h->max), attnd_hist_mean(h) * 1e-6);
}

static void split_row(FILE *f, const char *name, const attnd_hist *h, double call_mean)
{
    double mean = attnd_hist_mean(h) * 1e-6;
    fprintf(f, "  %-26s %9.3f %9.3f %9.3f   %5.1f%%\n", name, mean,
            ms(attnd_hist_percentile(h, 50)), ms(attnd_hist_percentile(h, 99)),
            call_mean > 0 ? 100.0 * mean / call_mean : 0);
}

void attnd_bench_report_table(FILE *f, const attnd_bench_opts *o, const attnd_bench_result *r)
{
    const attnd_model_info *m = &r->model;
    const attnd_bench_stats *st = &r->st;
    const double w = r->window_s;

    fprintf(f, "attnd-bench: %s (%s), transport %s, %u connection%s\n", r->target,
            r->spawned ? "attnd started by attnd-bench" : "given --target", o->transport,
            o->connections, o->connections == 1 ? "" : "s");
    if (r->transports[0])
        fprintf(f, "transports: this client %s; the server's UCX endpoints: %s\n",
                r->transports, r->srv_transports[0] ? r->srv_transports : "?");
    fprintf(f, "model %s: %s, %u layers, %u q heads, %u kv heads, d_k %u, d_v %u, kv %s\n",
            m->name, m->kind == ATTND_ATTN_MLA ? "MLA" : "GQA", m->n_layers, m->n_q_heads,
            m->n_kv_heads, m->d_k, m->d_v, attnd_dtype_name(m->kv_dtype));
    {
        const size_t ds = attnd_dtype_size(o->dtype);
        const double q = (double)r->batch * m->n_q_heads * r->d_q * ds;
        const double kv = (double)r->batch * m->kv_token_elems * ds;
        const double out = (double)r->batch * m->n_q_heads * r->d_out * ds;
        fprintf(f, "wire: %s (q [B, %u, %u], out [B, %u, %u]); per call %.1f KB out (q %.1f + new "
                   "KV %.1f) and %.1f KB back\n",
                m->kind != ATTND_ATTN_MLA ? "GQA" : r->heads ? "heads (the narrow MLA wire; "
                                                               "W_UK/W_UV loaded by the bench)"
                                                             : "absorbed",
                m->n_q_heads, r->d_q, m->n_q_heads, r->d_out, (q + kv) / 1e3, q / 1e3, kv / 1e3,
                out / 1e3);
    }
    if (is_open(o))
        fprintf(f, "load: open loop, %.6g steps/s %s, up to %u steps in flight (lanes)", o->rate,
                o->poisson ? "Poisson" : "constant", r->lanes);
    else
        fprintf(f, "load: closed loop, %u lane%s (steps in flight)", r->lanes,
                r->lanes == 1 ? "" : "s");
    fprintf(f, "; a lane = %u micro-batch%s x batch %u; %u sessions, %llu prompt tokens, %s\n",
            r->microbatches, r->microbatches == 1 ? "" : "es", r->batch, r->sessions,
            (unsigned long long)r->prompt_tokens, attnd_dtype_name(o->dtype));
    fprintf(f, "  a decode step = %u Attend calls (%u micro-batch%s x a chain of %u dependent "
               "layers), %u tokens\n",
            m->n_layers * r->microbatches, r->microbatches, r->microbatches == 1 ? "" : "es",
            m->n_layers, r->microbatches * r->batch);

    fprintf(f, "\nprefill (AppendKV, one call per layer and session): %llu calls, %llu tokens, "
               "%.1f MB in %.2f s\n",
            (unsigned long long)st->prefill_calls, (unsigned long long)st->prefill_tokens,
            (double)st->prefill_bytes * 1e-6, r->prefill_s);
    fprintf(f, "  %.0f tokens/s, %.3f GB/s; per call p50 %.3f ms, p99 %.3f ms, max %.3f ms\n",
            per_s((double)st->prefill_tokens, r->prefill_s),
            per_s((double)st->prefill_bytes, r->prefill_s) * 1e-9,
            ms(attnd_hist_percentile(&st->append, 50)), ms(attnd_hist_percentile(&st->append, 99)),
            ms(st->append.max));

    fprintf(f, "\ndecode: window %.2f s after %.2f s warm-up: %llu steps, %llu Attend calls, "
               "%llu tokens\n",
            w, o->warmup_s, (unsigned long long)st->steps, (unsigned long long)st->calls,
            (unsigned long long)st->tokens);
    fprintf(f, "  latency (ms)               %9s", "count");
    for (int i = 0; i < N_PCTS; i++)
        fprintf(f, " %9s", pct_names[i]);
    fprintf(f, " %9s %9s\n", "max", "mean");
    hist_row(f, "Attend call", &st->call);
    if (is_open(o)) {
        hist_row(f, "step (uncorrected)", &st->step);
        hist_row(f, "step (from intended start)", &st->step_corr);
    } else {
        hist_row(f, "step", &st->step);
    }

    double call_mean = attnd_hist_mean(&st->call) * 1e-6;
    if (st->timed_calls) {
        fprintf(f, "  server split per call (%llu of %llu calls reported it)  mean      p50       "
                   "p99   share\n",
                (unsigned long long)st->timed_calls, (unsigned long long)st->calls);
        split_row(f, "queue (take + decode)", &st->srv_queue, call_mean);
        split_row(f, "kernel (engine attend)", &st->srv_kernel, call_mean);
        split_row(f, "rank fan-out + combine", &st->srv_fanout, call_mean);
        split_row(f, "validate + encode", &st->srv_other, call_mean);
        split_row(f, "network + client", &st->net, call_mean);
    } else if (st->calls) {
        fprintf(f, "  server split per call: not reported (the server sent no timings)\n");
    }

    fprintf(f, "  throughput: %.1f calls/s, %.1f steps/s, %.1f tokens/s\n",
            per_s((double)st->calls, w), per_s((double)st->steps, w),
            per_s((double)st->tokens, w));
    fprintf(f, "    queries + outputs %.3f GB/s (+ new KV %.4f GB/s); KV attended %.3f GB/s\n",
            per_s((double)(st->bytes_q + st->bytes_out), w) * 1e-9,
            per_s((double)st->bytes_kv, w) * 1e-9, per_s((double)st->kv_attended, w) * 1e-9);
    if (is_open(o))
        fprintf(f, "  schedule: %llu arrivals intended in the window, %llu issued, achieved "
                   "%.2f steps/s of %.6g; late %llu (> %.3g ms), dropped %llu\n",
                (unsigned long long)r->intended, (unsigned long long)r->issued,
                per_s((double)st->steps, w), o->rate, (unsigned long long)st->late, o->late_ms,
                (unsigned long long)r->dropped);
    if (o->slo_ms > 0)
        fprintf(f, "  goodput: %.2f steps/s within %.6g ms (%.2f%% of steps)\n",
                per_s((double)st->slo_ok, w), o->slo_ms,
                st->steps ? 100.0 * (double)st->slo_ok / (double)st->steps : 0);

    if (r->have_srv_counts)
        fprintf(f, "  decode as counted by the server (GetStats, warm-up included): %llu Attend "
                   "calls (client: %llu completed), %.3f GB of KV read\n",
                (unsigned long long)r->srv_attend_calls, (unsigned long long)r->client_calls,
                (double)r->srv_kv_bytes_read * 1e-9);
    if (r->have_srv_counts && r->srv_attend_calls && st->steps) {
        /* per step: the server's per-call means times the calls of a step */
        double per_step = (double)st->calls / (double)st->steps / (double)r->srv_attend_calls;
        double read = (double)r->srv_kv_bytes_read * per_step;
        double dense = (double)r->srv_kv_bytes_dense * per_step;
        fprintf(f, "  KV read per step: %.2f MB; dense attention would read %.2f MB (%.1f%%)",
                read * 1e-6, dense * 1e-6, dense > 0 ? 100.0 * read / dense : 0.0);
        if (r->srv_select_calls)
            fprintf(f, "; page selection: %.2f MB of key bounds per step, %.1f us per call "
                       "that selects", (double)r->srv_select_bytes * per_step * 1e-6,
                    (double)r->srv_select_ns * 1e-3 / (double)r->srv_select_calls);
        fprintf(f, "\n");
    }
    uint64_t errs = total_errors(st);
    fprintf(f, "  errors: %s", errs ? "" : "none");
    for (int i = 0; i < ATTND_BENCH_N_STATUS; i++)
        if (st->errors[i])
            fprintf(f, "%s %llu  ", attnd_status_string((attnd_status)-i),
                    (unsigned long long)st->errors[i]);
    fprintf(f, "\n");
    if (r->first_error[0])
        fprintf(f, "    first: %s\n", r->first_error);

    if (r->check_ran)
        fprintf(f, "\ncheck: %llu (sequence, head) outputs against the float64 reference, max "
                   "relative error %.3g (bound %.0e for %s): %s\n",
                (unsigned long long)st->check.rows, st->check.max_err, r->check_bound,
                attnd_dtype_name(o->dtype), r->check_failed ? "FAIL" : "PASS");
    if (r->check_ran)
        fprintf(f, "  (the reference runs in the lane between steps: latencies above are "
                   "unaffected, steps/s is not representative; measure throughput without "
                   "--check)\n");
    if (r->baseline_ran) {
        const attnd_hist *b = &r->base_call;
        fprintf(f, "\nbaseline: %s, %llu-byte request, %llu-byte reply, "
                   "same lanes x micro-batches in flight, to an echo process on loopback\n",
                r->base_what ? r->base_what : "bare ping-pong",
                (unsigned long long)r->base_req_bytes, (unsigned long long)r->base_reply_bytes);
        fprintf(f, "  %llu calls in %.2f s (%.1f calls/s); latency p50 %.3f ms, p99 %.3f ms, "
                   "max %.3f ms\n",
                (unsigned long long)r->base_calls, r->base_s,
                per_s((double)r->base_calls, r->base_s), ms(attnd_hist_percentile(b, 50)),
                ms(attnd_hist_percentile(b, 99)), ms(b->max));
        double p50 = (double)attnd_hist_percentile(b, 50);
        double p99 = (double)attnd_hist_percentile(b, 99);
        fprintf(f, "  attnd overhead: Attend call / bare ping-pong = %.2fx at p50, %.2fx at p99\n",
                p50 > 0 ? (double)attnd_hist_percentile(&st->call, 50) / p50 : 0,
                p99 > 0 ? (double)attnd_hist_percentile(&st->call, 99) / p99 : 0);
    }
}

/* ---- JSON and CSV -------------------------------------------------------------- */

typedef struct emitter {
    FILE *f;
    int csv;
    int depth;
    int first[8];        /* JSON: no comma needed yet at this depth */
    char path[8][48];    /* CSV: the object names on the way down */
} emitter;

static void e_key(emitter *e, const char *k)
{
    if (e->csv) {
        for (int i = 1; i <= e->depth; i++)
            if (e->path[i][0])
                fprintf(e->f, "%s.", e->path[i]);
        fprintf(e->f, "%s,", k);
        return;
    }
    fprintf(e->f, "%s\n%*s\"%s\": ", e->first[e->depth] ? "" : ",", 2 * e->depth, "", k);
    e->first[e->depth] = 0;
}

static void e_begin(emitter *e, const char *k)
{
    if (e->depth + 1 >= 8)
        return;
    if (!e->csv) {
        if (k)
            e_key(e, k);
        fprintf(e->f, "{");
    }
    e->depth++;
    e->first[e->depth] = 1;
    snprintf(e->path[e->depth], sizeof e->path[0], "%s", k ? k : "");
}

static void e_end(emitter *e)
{
    e->depth--;
    if (!e->csv)
        fprintf(e->f, "\n%*s}", 2 * e->depth, "");
}

static void e_num(emitter *e, const char *k, double v)
{
    e_key(e, k);
    if (!isfinite(v))
        fprintf(e->f, e->csv ? "\n" : "null");
    else if (v == floor(v) && fabs(v) < 1e15)
        fprintf(e->f, e->csv ? "%.0f\n" : "%.0f", v);
    else
        fprintf(e->f, e->csv ? "%.9g\n" : "%.9g", v);
}

static void e_str(emitter *e, const char *k, const char *v)
{
    e_key(e, k);
    if (e->csv) {
        fprintf(e->f, "%s\n", v);
        return;
    }
    fputc('"', e->f);
    for (const char *p = v; *p; p++) {
        if (*p == '"' || *p == '\\')
            fputc('\\', e->f);
        if ((unsigned char)*p < 0x20)
            fprintf(e->f, "\\u%04x", *p);
        else
            fputc(*p, e->f);
    }
    fputc('"', e->f);
}

static void e_hist(emitter *e, const char *k, const attnd_hist *h)
{
    e_begin(e, k);
    e_num(e, "count", (double)h->count);
    e_num(e, "min", ms(h->min));
    e_num(e, "mean", attnd_hist_mean(h) * 1e-6);
    for (int i = 0; i < N_PCTS; i++)
        e_num(e, pct_keys[i], ms(attnd_hist_percentile(h, pcts[i])));
    e_num(e, "max", ms(h->max));
    e_end(e);
}

static void emit_all(emitter *e, const attnd_bench_opts *o, const attnd_bench_result *r)
{
    const attnd_bench_stats *st = &r->st;
    const attnd_model_info *m = &r->model;
    const double w = r->window_s;

    e_begin(e, NULL);
    e_str(e, "tool", "attnd-bench");
    e_num(e, "format", 1);
    e_str(e, "target", r->target);
    e_num(e, "spawned", r->spawned);
    e_str(e, "transport", o->transport);
    e_str(e, "transports", r->transports);
    e_str(e, "server_ucx_endpoints", r->srv_transports);
    e_begin(e, "model");
    e_str(e, "name", m->name);
    e_str(e, "kind", m->kind == ATTND_ATTN_MLA ? "mla" : "gqa");
    e_num(e, "n_layers", m->n_layers);
    e_num(e, "n_q_heads", m->n_q_heads);
    e_num(e, "n_kv_heads", m->n_kv_heads);
    e_num(e, "d_k", m->d_k);
    e_num(e, "d_v", m->d_v);
    e_str(e, "kv_dtype", attnd_dtype_name(m->kv_dtype));
    e_end(e);
    e_begin(e, "workload");
    e_str(e, "mode", is_open(o) ? "open" : "closed");
    e_num(e, "lanes", r->lanes);
    e_num(e, "microbatches", r->microbatches);
    e_num(e, "batch", r->batch);
    e_num(e, "sessions", r->sessions);
    e_num(e, "connections", o->connections);
    e_num(e, "prompt_tokens", (double)r->prompt_tokens);
    e_str(e, "dtype", attnd_dtype_name(o->dtype));
    e_str(e, "wire", r->model.kind != ATTND_ATTN_MLA ? "gqa" : r->heads ? "heads" : "absorbed");
    {
        const size_t ds = attnd_dtype_size(o->dtype);
        const attnd_model_info *mi = &r->model;
        e_num(e, "request_payload_bytes",
              (double)r->batch * ((double)mi->n_q_heads * r->d_q + mi->kv_token_elems) * ds);
        e_num(e, "reply_payload_bytes", (double)r->batch * mi->n_q_heads * r->d_out * ds);
    }
    e_num(e, "rate", o->rate);
    e_str(e, "arrivals", is_open(o) ? (o->poisson ? "poisson" : "constant") : "none");
    e_num(e, "warmup_s", o->warmup_s);
    e_num(e, "duration_s", o->duration_s);
    char seed[24];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed);
    e_str(e, "seed", seed); /* a string: exact beyond 2^53 */
    e_end(e);
    e_begin(e, "prefill");
    e_num(e, "calls", (double)st->prefill_calls);
    e_num(e, "tokens", (double)st->prefill_tokens);
    e_num(e, "bytes", (double)st->prefill_bytes);
    e_num(e, "seconds", r->prefill_s);
    e_num(e, "tokens_per_s", per_s((double)st->prefill_tokens, r->prefill_s));
    e_num(e, "gb_per_s", per_s((double)st->prefill_bytes, r->prefill_s) * 1e-9);
    e_hist(e, "call_latency_ms", &st->append);
    e_end(e);
    e_begin(e, "decode");
    e_num(e, "window_s", w);
    e_num(e, "steps", (double)st->steps);
    e_num(e, "calls", (double)st->calls);
    e_num(e, "tokens", (double)st->tokens);
    e_num(e, "calls_per_s", per_s((double)st->calls, w));
    e_num(e, "steps_per_s", per_s((double)st->steps, w));
    e_num(e, "tokens_per_s", per_s((double)st->tokens, w));
    e_num(e, "gb_per_s_q_out", per_s((double)(st->bytes_q + st->bytes_out), w) * 1e-9);
    e_num(e, "gb_per_s_new_kv", per_s((double)st->bytes_kv, w) * 1e-9);
    e_num(e, "gb_per_s_kv_attended", per_s((double)st->kv_attended, w) * 1e-9);
    e_hist(e, "call_latency_ms", &st->call);
    e_hist(e, "step_latency_ms", &st->step);
    e_hist(e, "step_latency_corrected_ms", &st->step_corr);
    e_end(e);
    e_begin(e, "schedule");
    e_num(e, "intended", (double)r->intended);
    e_num(e, "issued", (double)r->issued);
    e_num(e, "late", (double)st->late);
    e_num(e, "dropped", (double)r->dropped);
    e_num(e, "achieved_steps_per_s", per_s((double)st->steps, w));
    e_end(e);
    e_begin(e, "server");
    e_num(e, "timed_calls", (double)st->timed_calls);
    e_hist(e, "queue_ms", &st->srv_queue);
    e_hist(e, "kernel_ms", &st->srv_kernel);
    e_hist(e, "fanout_ms", &st->srv_fanout);
    e_hist(e, "validate_encode_ms", &st->srv_other);
    e_hist(e, "network_client_ms", &st->net);
    e_end(e);
    e_begin(e, "server_counters");
    e_num(e, "available", r->have_srv_counts);
    e_num(e, "attend_calls", (double)r->srv_attend_calls);
    e_num(e, "kv_bytes_read", (double)r->srv_kv_bytes_read);
    e_num(e, "kv_bytes_dense", (double)r->srv_kv_bytes_dense);
    e_num(e, "select_ns", (double)r->srv_select_ns);
    e_num(e, "select_calls", (double)r->srv_select_calls);
    e_num(e, "client_calls", (double)r->client_calls);
    e_end(e);
    e_begin(e, "slo");
    e_num(e, "slo_ms", o->slo_ms);
    e_num(e, "steps_ok", (double)st->slo_ok);
    e_num(e, "goodput_steps_per_s", per_s((double)st->slo_ok, w));
    e_end(e);
    e_begin(e, "errors");
    e_num(e, "total", (double)total_errors(st));
    for (int i = 1; i < ATTND_BENCH_N_STATUS; i++)
        if (st->errors[i])
            e_num(e, attnd_status_string((attnd_status)-i), (double)st->errors[i]);
    e_str(e, "first", r->first_error);
    e_end(e);
    e_begin(e, "check");
    e_num(e, "enabled", r->check_ran);
    e_num(e, "rows", (double)st->check.rows);
    e_num(e, "max_rel_err", st->check.max_err);
    e_num(e, "bound", r->check_bound);
    e_num(e, "pass", r->check_ran && !r->check_failed);
    e_end(e);
    e_begin(e, "baseline");
    e_num(e, "enabled", r->baseline_ran);
    if (r->baseline_ran) {
        char what[256];
        snprintf(what, sizeof what, "%s of the Attend request and reply sizes to an echo "
                 "process on loopback, same lanes x micro-batches in flight",
                 r->base_what ? r->base_what : "bare ping-pong");
        e_str(e, "measures", what);
        e_num(e, "request_bytes", (double)r->base_req_bytes);
        e_num(e, "reply_bytes", (double)r->base_reply_bytes);
        e_num(e, "calls", (double)r->base_calls);
        e_num(e, "calls_per_s", per_s((double)r->base_calls, r->base_s));
        e_hist(e, "call_latency_ms", &r->base_call);
        double p50 = (double)attnd_hist_percentile(&r->base_call, 50);
        double p99 = (double)attnd_hist_percentile(&r->base_call, 99);
        e_num(e, "overhead_p50", p50 > 0 ? (double)attnd_hist_percentile(&st->call, 50) / p50 : 0);
        e_num(e, "overhead_p99", p99 > 0 ? (double)attnd_hist_percentile(&st->call, 99) / p99 : 0);
    }
    e_end(e);
    e_end(e);
    if (!e->csv)
        fprintf(e->f, "\n");
}

static int emit_file(const char *path, int csv, const attnd_bench_opts *o,
                     const attnd_bench_result *r)
{
    emitter e;
    memset(&e, 0, sizeof e);
    e.csv = csv;
    e.f = fopen(path, "w");
    if (!e.f) {
        fprintf(stderr, "attnd-bench: cannot write %s\n", path);
        return -1;
    }
    if (csv)
        fprintf(e.f, "metric,value\n");
    emit_all(&e, o, r);
    if (fclose(e.f) != 0) {
        fprintf(stderr, "attnd-bench: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

int attnd_bench_report_json(const char *path, const attnd_bench_opts *o,
                            const attnd_bench_result *r)
{
    return emit_file(path, 0, o, r);
}

int attnd_bench_report_csv(const char *path, const attnd_bench_opts *o,
                           const attnd_bench_result *r)
{
    return emit_file(path, 1, o, r);
}

/* ---- the plot ------------------------------------------------------------------ */

/* The CDF of h as "ms fraction" lines (upper edge of each bucket). */
static int write_cdf(const char *path, const attnd_hist *h)
{
    FILE *f = fopen(path, "w");
    uint64_t seen = 0;
    if (!f)
        return -1;
    for (size_t i = 0; i < ATTND_HIST_BUCKETS && h->count; i++) {
        if (!h->buckets[i])
            continue;
        uint64_t lo, hi;
        attnd_hist_bucket_range(i, &lo, &hi);
        seen += h->buckets[i];
        fprintf(f, "%.6f %.6f\n", ms(hi < h->max ? hi : h->max), (double)seen / (double)h->count);
    }
    return fclose(f) == 0 ? 0 : -1;
}

int attnd_bench_report_plot(const char *path, const attnd_bench_opts *o,
                            const attnd_bench_result *r)
{
    char dir[] = "/tmp/attnd-bench-plot-XXXXXX", ts[64], cdf[3][64], gp[64], cmd[256];
    const attnd_hist *h[3] = {&r->st.step_corr, &r->st.step, &r->st.call};
    FILE *f;
    int rc = -1;

    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        fprintf(stderr, "attnd-bench: --plot %s skipped: gnuplot is not installed\n", path);
        return 1;
    }
    if (!mkdtemp(dir))
        return -1;
    snprintf(ts, sizeof ts, "%s/ts.dat", dir);
    snprintf(gp, sizeof gp, "%s/plot.gp", dir);
    for (int i = 0; i < 3; i++)
        snprintf(cdf[i], sizeof cdf[i], "%s/cdf%d.dat", dir, i);
    if (!(f = fopen(ts, "w")))
        goto out;
    for (size_t i = 0; i < r->st.ts_n; i++)
        fprintf(f, "%.6f %.6f\n", r->st.ts_t[i], ms(r->st.ts_lat[i]));
    fclose(f);
    for (int i = 0; i < 3; i++)
        if (write_cdf(cdf[i], h[i]))
            goto out;
    if (!(f = fopen(gp, "w")))
        goto out;
    fprintf(f, "set terminal png size 1200,500\nset output '%s'\nset multiplot layout 1,2\n"
               "set title 'decode step latency over time (%s loop)'\n"
               "set xlabel 's since the window opened'\nset ylabel 'ms from intended start'\n"
               "plot '%s' using 1:2 with points pt 7 ps 0.4 title 'step'\n"
               "set title 'latency CDF'\nset xlabel 'ms'\nset ylabel 'fraction'\n"
               "set logscale x\nset key bottom right\n",
            path, o->rate > 0 ? "open" : "closed", ts);
    if (o->rate > 0)
        fprintf(f, "plot '%s' using 1:2 with steps title 'step, from intended start', "
                   "'%s' using 1:2 with steps title 'step, uncorrected', "
                   "'%s' using 1:2 with steps title 'Attend call'\n",
                cdf[0], cdf[1], cdf[2]);
    else
        fprintf(f, "plot '%s' using 1:2 with steps title 'step', "
                   "'%s' using 1:2 with steps title 'Attend call'\n",
                cdf[1], cdf[2]);
    fprintf(f, "unset multiplot\n");
    fclose(f);
    snprintf(cmd, sizeof cmd, "gnuplot '%s'", gp);
    rc = system(cmd) == 0 ? 0 : -1;
    if (rc)
        fprintf(stderr, "attnd-bench: --plot: gnuplot failed\n");
out:
    unlink(ts);
    for (int i = 0; i < 3; i++)
        unlink(cdf[i]);
    unlink(gp);
    rmdir(dir);
    return rc;
}
