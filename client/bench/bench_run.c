/* The run of attnd-bench: connections, lanes, the prefill phase, the
 * decode phase with its warm-up and measured window, the open-loop arrival
 * schedule, the progress line, and the merge of every lane's stats.
 *
 * Timeline (CLOCK_MONOTONIC): all lanes prefill, then wait for the go flag;
 * the main thread sets t_start = now, t_window = t_start + warmup and
 * t_end = t_window + duration and releases them. A step counts when its
 * intended start lies in [t_window, t_end) (closed loop: intended = actual
 * start). No step starts at or after t_end; steps in flight then finish
 * and count. A run that ends early (^C, --steps, every lane failed) closes
 * the window when the last lane stops. The window length is the
 * denominator of every rate.
 *
 * Open loop: arrival k is at t_start + (sum of k gaps), gaps 1/rate
 * (constant) or exponential with mean 1/rate (Poisson, from a generator
 * seeded with --seed, so the schedule can be replayed to count the
 * intended arrivals of the window exactly). Lanes take arrivals in order
 * under a mutex; an arrival whose window it falls in has ended before a
 * lane was free is dropped.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "attnd_clock.h"
#include "attnd_dtype.h"
#include "bench.h"

static atomic_int interrupted;

void attnd_bench_interrupt(void)
{
    atomic_store(&interrupted, 1);
}

static void sleep_until(uint64_t t_ns)
{
    struct timespec ts = {(time_t)(t_ns / 1000000000u), (long)(t_ns % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0)
        ;
}

void attnd_bench_record_error(attnd_bench_run *r, attnd_bench_stats *st, const char *what,
                              const attnd_error *err)
{
    int code = -(int)err->code;
    if (code < 0 || code >= ATTND_BENCH_N_STATUS)
        code = 2; /* UNKNOWN */
    st->errors[code]++;
    atomic_fetch_add(&r->prog_errors, 1);
    pthread_mutex_lock(&r->err_mu);
    if (!r->first_error[0])
        snprintf(r->first_error, sizeof r->first_error, "%s: %s: %s", what,
                 attnd_status_string(err->code), err->msg);
    pthread_mutex_unlock(&r->err_mu);
}

/* ---- the arrival schedule ---------------------------------------------------------- */

static uint64_t next_gap_ns(const attnd_bench_opts *o, attnd_rng *rng)
{
    double mean = 1e9 / o->rate;
    if (!o->poisson)
        return (uint64_t)mean;
    double u = ((double)(attnd_rng_next(rng) >> 11) + 0.5) * 0x1p-53; /* (0, 1) */
    return (uint64_t)(-log(u) * mean);
}

/* Arrivals of the schedule within [t_window, t_end), by replaying it. */
static uint64_t intended_arrivals(const attnd_bench_run *r)
{
    attnd_rng rng;
    uint64_t n = 0;
    attnd_rng_seed(&rng, r->o->seed ^ 0x5c4ed);
    for (uint64_t t = r->t_start; t < r->t_end; t += next_gap_ns(r->o, &rng))
        n += t >= r->t_window;
    return n;
}

/* ---- lanes ----------------------------------------------------------------------- */

static int lane_should_stop(attnd_bench_lane *l)
{
    attnd_bench_run *r = l->run;
    return l->failed || atomic_load(&r->stop) || atomic_load(&interrupted) ||
           (r->o->steps && l->steps_done >= r->o->steps);
}

/* A lane leaving before its schedule or clock ran out closes the window
 * early (see the top of the file). */
static void lane_done(attnd_bench_lane *l)
{
    if (lane_should_stop(l))
        atomic_store(&l->run->ended_early, 1);
}

static void lane_closed_loop(attnd_bench_lane *l)
{
    while (!lane_should_stop(l)) {
        uint64_t t = attnd_clock_ns();
        if (t >= l->run->t_end || attnd_bench_lane_step(l, t))
            break;
    }
}

static void lane_open_loop(attnd_bench_lane *l)
{
    attnd_bench_run *r = l->run;
    while (!lane_should_stop(l)) {
        pthread_mutex_lock(&r->sched_mu);
        uint64_t t = r->next_arrival, now = attnd_clock_ns();
        if (t >= r->t_end || now >= r->t_end) {
            pthread_mutex_unlock(&r->sched_mu);
            break;
        }
        r->next_arrival += next_gap_ns(r->o, &r->sched_rng);
        if (t >= r->t_window)
            r->issued++;
        pthread_mutex_unlock(&r->sched_mu);
        if (t > now)
            sleep_until(t);
        if (attnd_bench_lane_step(l, t))
            break;
    }
}

/* ---- progress ---------------------------------------------------------------------- */

static void progress(attnd_bench_run *r, const char *phase, double t, uint64_t steps_rate)
{
    if (!r->o->progress)
        return;
    /* one line rewritten in place on a terminal, one line a second in a log */
    fprintf(stderr,
            "%s[%6.1fs] %-8s prefill %llu tok  steps %llu (%llu/s)  calls %llu  errors %llu ",
            isatty(STDERR_FILENO) ? "\r" : "\n", t, phase,
            (unsigned long long)atomic_load(&r->prog_prefill),
            (unsigned long long)atomic_load(&r->prog_steps), (unsigned long long)steps_rate,
            (unsigned long long)atomic_load(&r->prog_calls),
            (unsigned long long)atomic_load(&r->prog_errors));
    fflush(stderr);
}

/* Wait until n lanes have counted themselves in *done (the end of a
 * phase), printing the progress line once a second. */
static void watch(attnd_bench_run *r, atomic_uint *done, uint32_t n, const char *phase,
                  uint64_t t0)
{
    uint64_t last = attnd_clock_ns(), last_steps = 0, rate = 0;
    while (atomic_load(done) < n) {
        usleep(50000);
        uint64_t now = attnd_clock_ns();
        if (atomic_load(&interrupted))
            atomic_store(&r->stop, 1);
        if (now - last >= 1000000000u) {
            uint64_t s = atomic_load(&r->prog_steps);
            rate = (uint64_t)((double)(s - last_steps) * 1e9 / (double)(now - last));
            last_steps = s;
            last = now;
            const char *ph = phase;
            if (!strcmp(phase, "decode"))
                ph = now < r->t_window ? "warmup" : "decode";
            progress(r, ph, (double)(now - t0) * 1e-9, rate);
        }
    }
}

/* ---- the run ------------------------------------------------------------------------ */

typedef struct lane_thread {
    attnd_bench_lane *l;
    atomic_uint *prefilled, *finished;
} lane_thread;

static void *lane_thread_main(void *arg)
{
    lane_thread *lt = arg;
    attnd_bench_lane *l = lt->l;
    attnd_bench_run *r = l->run;

    if (attnd_bench_lane_prefill(l))
        atomic_store(&r->stop, 1);
    atomic_fetch_add(lt->prefilled, 1);
    while (!atomic_load(&r->go)) /* the main thread sets the clocks */
        usleep(1000);
    if (r->o->rate > 0)
        lane_open_loop(l);
    else
        lane_closed_loop(l);
    lane_done(l);
    atomic_fetch_add(lt->finished, 1);
    return NULL;
}

static int connect_all(attnd_bench_run *r, const char *target)
{
    attnd_client_options co;
    attnd_error err;

    attnd_client_options_init(&co);
    co.deadline_ms = r->o->deadline_ms;
    co.connect_timeout_ms = 10000;
    if (!strcmp(r->o->transport, "ucx"))
        co.transport = ATTND_TRANSPORT_UCX;
    co.tls_ca_file = r->o->tls_ca[0] ? r->o->tls_ca : NULL;
    co.tls_cert_file = r->o->tls_cert[0] ? r->o->tls_cert : NULL;
    co.tls_key_file = r->o->tls_key[0] ? r->o->tls_key : NULL;
    co.tls_server_name = r->o->tls_server_name[0] ? r->o->tls_server_name : NULL;
    co.token = r->o->token[0] ? r->o->token : NULL;
    r->clients = calloc(r->n_clients, sizeof *r->clients);
    if (!r->clients)
        return -1;
    for (uint32_t i = 0; i < r->n_clients; i++) {
        attnd_error_clear(&err);
        if (attnd_client_connect(target, &co, &r->clients[i], &err)) {
            fprintf(stderr, "attnd-bench: connect %s: %s: %s\n", target,
                    attnd_status_string(err.code), err.msg);
            return -1;
        }
    }
    attnd_stats st;
    attnd_error_clear(&err);
    if (attnd_client_get_stats(r->clients[0], &st, &r->m, &err)) {
        fprintf(stderr, "attnd-bench: GetStats: %s: %s\n", attnd_status_string(err.code),
                err.msg);
        return -1;
    }
    if (r->o->target[0] && r->o->model_set && strcmp(r->m.name, r->o->model) != 0) {
        fprintf(stderr, "attnd-bench: %s serves %s, not --model %s\n", target, r->m.name,
                r->o->model);
        return -1;
    }
    return 0;
}

/* --wire: the narrow MLA wire (the default for MLA models) needs W_UK and
 * W_UV in every layer: random bf16 ones (uniform, scaled by 1/sqrt of the
 * inner width so that values stay near the latent ones' scale), the same
 * for every layer, loaded once through the first connection before the
 * prefill. 0, or -1 (message on stderr). */
static int setup_wire(attnd_bench_run *r)
{
    const attnd_bench_opts *o = r->o;
    const attnd_model_info *m = &r->m;
    attnd_error err;

    if (o->wire == 1 && m->kind != ATTND_ATTN_MLA) {
        fprintf(stderr, "attnd-bench: --wire heads: %s is not an MLA model\n", m->name);
        return -1;
    }
    r->heads = m->kind == ATTND_ATTN_MLA && o->wire != 0;
    r->d_q = r->heads ? o->d_nope + m->d_rope : m->d_k;
    r->d_out = r->heads ? o->d_vh : m->d_v;
    if (!r->heads)
        return 0;
    const size_t nk = (size_t)m->n_q_heads * o->d_nope * m->d_latent;
    const size_t nv = (size_t)m->n_q_heads * m->d_latent * o->d_vh;
    float tmp[4096];
    attnd_rng rng;
    r->w_uk = malloc(nk * 2);
    r->w_uv = malloc(nv * 2);
    if (!r->w_uk || !r->w_uv) {
        fprintf(stderr, "attnd-bench: out of memory for the weights\n");
        return -1;
    }
    attnd_rng_seed(&rng, o->seed ^ 0x3e1ed);
    for (int w = 0; w < 2; w++) {
        const size_t n = w ? nv : nk;
        const float sc = 1.0f / sqrtf((float)(w ? m->d_latent : o->d_nope));
        uint16_t *dst = w ? r->w_uv : r->w_uk;
        for (size_t i = 0; i < n; i += 4096) {
            size_t k = n - i < 4096 ? n - i : 4096;
            attnd_rng_fill(&rng, ATTND_DTYPE_F32, tmp, k);
            for (size_t j = 0; j < k; j++)
                tmp[j] *= sc;
            attnd_dtype_convert(ATTND_DTYPE_BF16, dst + i, ATTND_DTYPE_F32, tmp, k);
        }
    }
    attnd_tensor tk = {ATTND_DTYPE_BF16, 3, {m->n_q_heads, o->d_nope, m->d_latent}, r->w_uk};
    attnd_tensor tv = {ATTND_DTYPE_BF16, 3, {m->n_q_heads, m->d_latent, o->d_vh}, r->w_uv};
    uint64_t t0 = attnd_clock_ns();
    for (uint32_t l = 0; l < m->n_layers; l++) {
        attnd_error_clear(&err);
        if (attnd_client_load_mla_weights(r->clients[0], l, &tk, &tv, NULL, &err)) {
            fprintf(stderr, "attnd-bench: LoadWeights (layer %u): %s: %s\n", l,
                    attnd_status_string(err.code), err.msg);
            return -1;
        }
    }
    if (o->progress)
        fprintf(stderr, "attnd-bench: random bf16 W_UK [%u, %u, %u] and W_UV [%u, %u, %u] "
                        "loaded into %u layers in %.2f s\n",
                m->n_q_heads, o->d_nope, m->d_latent, m->n_q_heads, m->d_latent, o->d_vh,
                m->n_layers, (double)(attnd_clock_ns() - t0) * 1e-9);
    r->proj = (attnd_refcheck_proj){o->d_nope, o->d_vh, ATTND_DTYPE_BF16, r->w_uk, r->w_uv};
    return 0;
}

static void fill_result(attnd_bench_run *r, attnd_bench_result *res)
{
    res->model = r->m;
    res->heads = r->heads;
    res->d_q = r->d_q;
    res->d_out = r->d_out;
    res->lanes = r->n_lanes;
    res->batch = r->batch;
    res->microbatches = r->micro;
    res->sessions = r->n_lanes * r->batch * r->micro;
    res->prefill_s = r->prefill_s;
    res->window_s = (double)(r->t_end - r->t_window) * 1e-9;
    if (r->o->rate > 0) {
        res->intended = intended_arrivals(r);
        res->issued = r->issued;
        res->dropped = res->intended > res->issued ? res->intended - res->issued : 0;
    }
    snprintf(res->first_error, sizeof res->first_error, "%s", r->first_error);
}

int attnd_bench_execute(const attnd_bench_opts *o, const char *target, attnd_bench_result *res)
{
    attnd_bench_run run, *r = &run;
    lane_thread *lts = NULL;
    atomic_uint prefilled = 0, finished = 0;
    uint32_t started = 0;
    int rc = -1;

    memset(r, 0, sizeof *r);
    r->o = o;
    r->n_lanes = o->concurrency;
    r->batch = o->batch;
    r->micro = o->microbatches;
    r->n_clients = o->connections;
    pthread_mutex_init(&r->sched_mu, NULL);
    pthread_mutex_init(&r->err_mu, NULL);
    attnd_rng_seed(&r->sched_rng, o->seed ^ 0x5c4ed);
    if (attnd_bench_stats_init(&res->st))
        goto out;
    if (connect_all(r, target) || setup_wire(r))
        goto out;
    r->lanes = calloc(r->n_lanes, sizeof *r->lanes);
    lts = calloc(r->n_lanes, sizeof *lts);
    if (!r->lanes || !lts)
        goto out;
    for (uint32_t i = 0; i < r->n_lanes; i++)
        if (attnd_bench_lane_init(&r->lanes[i], r, i)) {
            fprintf(stderr, "attnd-bench: out of memory for lane %u\n", i);
            for (uint32_t j = 0; j < i; j++)
                attnd_bench_lane_cleanup(&r->lanes[j]);
            free(r->lanes);
            r->lanes = NULL;
            goto out;
        }
    uint64_t t0 = attnd_clock_ns();
    for (; started < r->n_lanes; started++) {
        lts[started] = (lane_thread){&r->lanes[started], &prefilled, &finished};
        if (pthread_create(&r->lanes[started].tid, NULL, lane_thread_main, &lts[started])) {
            fprintf(stderr, "attnd-bench: cannot start lane threads\n");
            atomic_store(&r->stop, 1);
            break;
        }
    }
    watch(r, &prefilled, started, "prefill", t0);
    uint64_t t1 = attnd_clock_ns();
    r->prefill_s = (double)(t1 - t0) * 1e-9;
    r->t_start = t1;
    r->t_window = t1 + (uint64_t)(o->warmup_s * 1e9);
    r->t_end = r->t_window + (uint64_t)(o->duration_s * 1e9);
    r->next_arrival = r->t_start;
    attnd_stats s0, s1;
    int have_s0 = attnd_client_get_stats(r->clients[0], &s0, NULL, NULL) == ATTND_OK;
    atomic_store(&r->go, 1);
    attnd_client_transport_info(r->clients[0], res->transports, sizeof res->transports);
    attnd_stats sx; /* while the lanes' endpoints are all up */
    if (attnd_client_get_stats(r->clients[0], &sx, NULL, NULL) == ATTND_OK)
        snprintf(res->srv_transports, sizeof res->srv_transports, "%s",
                 sx.ucx_endpoints ? sx.ucx_transports : "no UCX endpoints");
    watch(r, &finished, started, "decode", t0);
    for (uint32_t i = 0; i < started; i++)
        pthread_join(r->lanes[i].tid, NULL);
    if (have_s0 && attnd_client_get_stats(r->clients[0], &s1, NULL, NULL) == ATTND_OK) {
        res->have_srv_counts = 1;
        res->srv_attend_calls = s1.attend_calls - s0.attend_calls;
        res->srv_kv_bytes_read = s1.kv_bytes_read - s0.kv_bytes_read;
        res->srv_kv_bytes_dense = s1.kv_bytes_dense - s0.kv_bytes_dense;
        res->srv_select_ns = s1.select_ns - s0.select_ns;
        res->srv_select_calls = s1.select_calls - s0.select_calls;
        res->srv_select_bytes = s1.select_bytes_read - s0.select_bytes_read;
        res->client_calls = atomic_load(&r->prog_calls);
    }
    if (o->progress)
        fprintf(stderr, "\n");
    /* a run cut short by ^C, by an error or by --steps has a shorter window */
    uint64_t t_stop = attnd_clock_ns();
    if (t_stop < r->t_end && atomic_load(&r->ended_early))
        r->t_end = t_stop > r->t_window ? t_stop : r->t_window + 1;
    for (uint32_t i = 0; i < r->n_lanes; i++) {
        attnd_bench_lane_close(&r->lanes[i]);
        if (attnd_bench_stats_merge(&res->st, &r->lanes[i].st))
            goto out;
    }
    fill_result(r, res);
    res->check_ran = o->check;
    rc = 0;
out:
    if (r->lanes) {
        for (uint32_t i = 0; i < r->n_lanes; i++)
            attnd_bench_lane_cleanup(&r->lanes[i]);
        free(r->lanes);
    }
    free(lts);
    if (r->clients)
        for (uint32_t i = 0; i < r->n_clients; i++)
            attnd_client_destroy(r->clients[i]);
    free(r->clients);
    free(r->w_uk);
    free(r->w_uv);
    pthread_mutex_destroy(&r->sched_mu);
    pthread_mutex_destroy(&r->err_mu);
    return rc;
}
