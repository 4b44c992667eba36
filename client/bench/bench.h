/* attnd-bench: internal interfaces of the load tester (client room).
 *
 * attnd-bench drives a real attnd through libattnd the way a compute node
 * does: sessions with a prefill (AppendKV), then decode steps, each step a
 * chain of L dependent per-layer Attend calls per micro-batch, with M
 * micro-batches in flight in ping-pong order. Work is organised in lanes:
 * a lane is one thread owning M * B sessions (M micro-batches of B); one
 * lane runs one step at a time.
 *
 *   closed loop (--concurrency C): C lanes run steps back to back.
 *   open loop (--rate R): steps arrive on a schedule (constant or Poisson,
 *     R per second); a free lane takes the next arrival, sleeping until its
 *     intended time. Latency is reported from the actual start
 *     (uncorrected) and from the intended start (corrected for
 *     coordinated omission). An arrival started more than --late-ms after
 *     its intended time is late; one the run ended before starting (all
 *     lanes busy) is dropped.
 *
 * Files, each with one job:
 *   bench_opts.c      flags -> attnd_bench_opts, usage
 *   bench_spawn.c     a child attnd (or echo server) on loopback, killed on exit
 *   bench_lane.c      one lane: sessions, prefill, one decode step, the check
 *   bench_run.c       the run: lanes, warm-up and window, schedule, progress
 *   bench_stats.c     per-lane measurements and their merge
 *   bench_report.c    table on stdout, --json, --csv, --plot
 *   bench_baseline.c  --baseline: a bare gRPC ping-pong of the same sizes
 *   bench_baseline_ucx.c  the same over UCX active messages (--transport ucx)
 *   bench_main.c      main
 *
 * Names: attnd_bench_* (non-static), all internal to the executable.
 */
#ifndef ATTND_BENCH_H
#define ATTND_BENCH_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "attnd/client.h"
#include "attnd_hist.h"
#include "refcheck.h"

/* ---- options (bench_opts.c) ------------------------------------------------ */

typedef enum attnd_bench_plen_kind {
    ATTND_BENCH_PLEN_FIXED,
    ATTND_BENCH_PLEN_UNIFORM,
    ATTND_BENCH_PLEN_FILE,
} attnd_bench_plen_kind;

typedef struct attnd_bench_opts {
    char target[256];          /* --target; "" = spawn a local attnd */
    char attnd_path[PATH_MAX]; /* --attnd; "" = next to attnd-bench */
    char model[64];            /* --model, for the spawned attnd */
    int model_set;             /* --model was given */
    int duration_set;          /* --duration was given */
    char transport[16];        /* --transport grpc */
    uint32_t sessions;         /* --sessions (0: lanes * M * B) */
    uint32_t batch;            /* --batch B (0: from sessions) */
    uint32_t microbatches;     /* --microbatches M */
    uint32_t concurrency;      /* --concurrency C: lanes */
    uint32_t connections;      /* --connections */
    attnd_bench_plen_kind plen;
    uint32_t plen_a, plen_b;   /* fixed: a; uniform: [a, b] */
    uint32_t *plen_list;       /* file: lengths, used cyclically (owned) */
    size_t plen_n;
    uint64_t steps;            /* --steps per lane (0: until --duration) */
    double rate;               /* --rate steps/s (0: closed loop) */
    int poisson;               /* --arrivals poisson */
    double duration_s, warmup_s;
    double slo_ms, late_ms;
    uint32_t chunk;            /* --chunk tokens per AppendKV message */
    attnd_dtype dtype;         /* --dtype of q, KV and outputs */
    uint64_t seed;
    int check;                 /* --check */
    int check_perturb;         /* --check-perturb (tests: the check must fail) */
    int baseline;              /* --baseline */
    int progress;              /* 0 with --no-progress */
    int64_t deadline_ms;
    char json[PATH_MAX], csv[PATH_MAX], plot[PATH_MAX];
    char kv_memory[32];        /* --kv-memory for the spawned attnd */
    int wire;                  /* --wire: -1 not given (heads for MLA models),
                                  0 absorbed, 1 heads (the narrow MLA wire) */
    uint32_t d_nope, d_vh;     /* --d-nope, --d-v: the heads form's widths */
    /* a --target with TLS or tokens (README, Security) */
    char tls_ca[PATH_MAX], tls_cert[PATH_MAX], tls_key[PATH_MAX];
    char tls_server_name[256];
    char token[4096];          /* --token-file's first line, or $ATTND_TOKEN */
    int has_policy;            /* --policy: every session's sparse policy */
    attnd_sparse_policy policy;
    uint32_t given_tokens;     /* --policy given-tokens,tokens=K: K a session a step */
} attnd_bench_opts;

/* Parse argv. 0: run; 1: --help was printed; 2: bad flag (message on
 * stderr). Frees nothing; attnd_bench_opts_cleanup does. */
int attnd_bench_opts_parse(attnd_bench_opts *o, int argc, char **argv);
void attnd_bench_opts_cleanup(attnd_bench_opts *o);
/* Prompt length of session i (drawn from the distribution with rng). */
uint32_t attnd_bench_prompt_len(const attnd_bench_opts *o, uint32_t i, attnd_rng *rng);

/* ---- spawning a local server (bench_spawn.c) ------------------------------- */

typedef struct attnd_bench_child {
    pid_t pid;
    int port;
    char dir[64];       /* temp dir of the port file */
} attnd_bench_child;

/* Start argv[0] with argv (NULL-terminated; "--port-file" and a path are
 * appended) and wait up to timeout_ms for the port file. Its stdout goes
 * to /dev/null, its stderr to a log shown only when it fails. The child dies with us (PDEATHSIG) and is
 * registered for attnd_bench_child_stop_all (atexit and SIGINT/SIGTERM).
 * 0, or -1 with a message on stderr. */
int attnd_bench_child_start(attnd_bench_child *ch, const char *const *argv, int timeout_ms);
/* SIGTERM, wait (then SIGKILL after 10 s), remove the port file. Returns
 * the child's exit status (0..255), -1 when it died of a signal or had to
 * be killed, 0 when there was no child. */
int attnd_bench_child_stop(attnd_bench_child *ch);
/* Install the exit and signal hooks that stop every registered child. */
void attnd_bench_child_hooks(void);
/* The attnd to spawn: --attnd, else next to this executable, else
 * ../../service/attnd relative to it (the build tree). "" when none exists. */
void attnd_bench_find_attnd(const char *given, char *out, size_t n);

/* ---- results (bench_stats.c) ------------------------------------------------ */

#define ATTND_BENCH_N_STATUS 17

/* One lane's (and, merged, the run's) measurements. Latencies in ns. */
typedef struct attnd_bench_stats {
    attnd_hist call;          /* per-layer Attend, send to completion */
    attnd_hist step;          /* decode step, from its actual start */
    attnd_hist step_corr;     /* decode step, from its intended start */
    attnd_hist srv_queue, srv_kernel, srv_fanout, srv_other; /* server split */
    attnd_hist net;           /* call latency minus the server's total */
    attnd_hist append;        /* one AppendKV call (one layer of a session) */
    uint64_t calls, steps, tokens, late;
    uint64_t bytes_q, bytes_kv, bytes_out; /* Attend payloads sent/received */
    uint64_t kv_attended;     /* KV bytes the server read for our calls */
    uint64_t slo_ok;          /* steps (corrected) within --slo-ms */
    uint64_t timed_calls;     /* calls that carried the server's timing */
    uint64_t errors[ATTND_BENCH_N_STATUS]; /* by -status (grpc code) */
    uint64_t prefill_tokens, prefill_bytes, prefill_calls;
    attnd_refcheck_result check;
    /* step time series for --plot: completion (s since the window opened)
     * and corrected latency (ns) */
    double *ts_t;
    uint64_t *ts_lat;
    size_t ts_n, ts_cap;
} attnd_bench_stats;

int attnd_bench_stats_init(attnd_bench_stats *s);
void attnd_bench_stats_cleanup(attnd_bench_stats *s);
/* Fold src into dst (time series appended). 0, or -1 out of memory. */
int attnd_bench_stats_merge(attnd_bench_stats *dst, const attnd_bench_stats *src);

/* What the report needs besides the stats. */
typedef struct attnd_bench_result {
    attnd_model_info model;
    char target[256];
    int spawned;
    uint32_t lanes, batch, microbatches, sessions;
    uint64_t prompt_tokens;      /* sum over sessions */
    double prefill_s;            /* wall time of the prefill phase */
    double window_s;             /* measured decode window */
    uint64_t intended, issued, dropped; /* open loop arrivals in the window */
    /* the decode phase (warm-up included) as both sides counted it: the
     * server's GetStats deltas and the client's completed calls */
    int have_srv_counts;
    uint64_t srv_attend_calls, srv_kv_bytes_read, client_calls;
    int heads;                   /* the narrow MLA wire (q_form HEADS) */
    uint32_t d_q, d_out;         /* per head: query and output elements sent */
    uint64_t srv_kv_bytes_dense, srv_select_ns, srv_select_calls, srv_select_bytes;
    /* what carries Attend: the first connection's view
     * (attnd_client_transport_info) and the server's, per UCX endpoint
     * (GetStats, during the decode phase) */
    char transports[128];
    char srv_transports[512];
    attnd_bench_stats st;
    int check_ran;
    double check_bound;
    int check_failed;
    char first_error[ATTND_ERROR_MSG_MAX + 32];
    /* --baseline */
    int baseline_ran;
    const char *base_what;     /* what the baseline measured, for the reports */
    attnd_hist base_call;
    double base_s;
    uint64_t base_calls;
    uint64_t base_req_bytes, base_reply_bytes;
} attnd_bench_result;

/* ---- one lane (bench_lane.c) --------------------------------------------------- */

typedef struct attnd_bench_run attnd_bench_run;

typedef struct attnd_bench_lane {
    attnd_bench_run *run;
    uint32_t index;
    attnd_client *c;             /* borrowed: the run's connection */
    uint32_t n_seqs;             /* M * B */
    attnd_session_id *ids;       /* [n_seqs] */
    uint64_t *len;               /* [n_seqs] tokens per layer so far */
    uint32_t n_open;             /* sessions created */
    attnd_refcheck rc;           /* --check: the mirror of our KV */
    int have_rc;
    attnd_rng rng;
    /* per micro-batch m: q [B][Hq][d_k], new KV [B][entry], out, positions */
    unsigned char *q, *kv, *out;
    uint64_t *pos;
    size_t q_bytes, kv_bytes, out_bytes; /* per micro-batch */
    attnd_call **calls;          /* [M] in flight */
    /* --policy given-tokens: per micro-batch its call's sparse arguments and
     * given lists ([M][B + 1] offsets, [M][B][K] token positions), drawn at
     * each step's first layer */
    attnd_sparse_args *sp;
    uint32_t *g_indptr;
    uint64_t *g_idx;
    uint64_t steps_done;
    int failed;                  /* an error stopped this lane */
    attnd_bench_stats st;
    pthread_t tid;
} attnd_bench_lane;

/* Allocate the lane's buffers; 0 or -1 (out of memory). */
int attnd_bench_lane_init(attnd_bench_lane *l, attnd_bench_run *r, uint32_t index);
void attnd_bench_lane_cleanup(attnd_bench_lane *l);
/* Create the lane's sessions and prefill them (AppendKV per layer). 0, or
 * -1 after recording the error. */
int attnd_bench_lane_prefill(attnd_bench_lane *l);
/* One decode step; record it when t_intended_ns falls in the window. 0, or
 * -1 after recording the error (the lane is then done). */
int attnd_bench_lane_step(attnd_bench_lane *l, uint64_t t_intended_ns);
/* Close the lane's sessions (errors ignored). */
void attnd_bench_lane_close(attnd_bench_lane *l);

/* ---- the run (bench_run.c) ------------------------------------------------------ */

struct attnd_bench_run {
    const attnd_bench_opts *o;
    attnd_model_info m;
    attnd_client **clients;
    uint32_t n_clients;
    attnd_bench_lane *lanes;
    uint32_t n_lanes, batch, micro;
    atomic_int go;                     /* clocks set: start decoding */
    uint64_t t_start, t_window, t_end; /* ns, CLOCK_MONOTONIC */
    atomic_int stop;                   /* interrupt or error: end now */
    atomic_int ended_early;            /* a lane stopped before t_end */
    atomic_uint_fast64_t prog_steps, prog_calls, prog_errors, prog_prefill;
    /* open loop arrivals (mutex) */
    pthread_mutex_t sched_mu;
    attnd_rng sched_rng;
    uint64_t next_arrival;             /* ns of the next arrival */
    uint64_t issued;                   /* window arrivals started */
    pthread_mutex_t err_mu;
    char first_error[ATTND_ERROR_MSG_MAX + 32];
    double prefill_s;
    /* the narrow MLA wire (--wire heads): random bf16 W_UK [Hq][d_nope][d_c]
     * and W_UV [Hq][d_c][d_v], loaded into every layer by the bench */
    int heads;
    uint32_t d_q, d_out;        /* per head: query and output elements */
    uint16_t *w_uk, *w_uv;
    attnd_refcheck_proj proj;   /* the check's view of them */
};

/* Connect, learn the model, run prefill and decode, fill *res. 0 when the
 * run completed (errors during it are counted, not fatal); -1 when it
 * could not run at all (message on stderr). */
int attnd_bench_execute(const attnd_bench_opts *o, const char *target,
                        attnd_bench_result *res);
/* Stop early (SIGINT). */
void attnd_bench_interrupt(void);
/* Record a failure of lane l (first one wins the message). */
void attnd_bench_record_error(attnd_bench_run *r, attnd_bench_stats *st, const char *what,
                              const attnd_error *err);

/* ---- the baseline (bench_baseline.c) ------------------------------------------- */

/* Hidden mode: serve the echo method on 127.0.0.1:0, port to port_file,
 * until SIGTERM. Returns the exit code. */
int attnd_bench_echo_main(const char *port_file);
/* Start an echo server child and run the ping-pong with the request and
 * reply sizes of one Attend call, in the decode's shape (lanes threads,
 * micro-batches in flight each), for seconds. Fills res's base_* fields.
 * 0, or -1 (message on stderr). */
int attnd_bench_baseline(const attnd_bench_opts *o, attnd_bench_result *res, size_t req_bytes,
                         size_t reply_bytes, double seconds);

/* ---- the UCX baseline (bench_baseline_ucx.c) ----------------------------------- */

/* Hidden mode: a UCX active-message echo (its worker address in
 * <port_file>.addr, then port_file) until SIGTERM. Returns the exit code. */
int attnd_bench_echo_ucx_main(const char *port_file);
/* As attnd_bench_baseline, over UCX active messages with endpoints made as
 * libattnd makes them (by address; on one host without UCX error
 * handling: shared memory + CMA). */
int attnd_bench_baseline_ucx(const attnd_bench_opts *o, attnd_bench_result *res,
                             size_t req_bytes, size_t reply_bytes, double seconds);

/* ---- reports (bench_report.c) --------------------------------------------------- */

void attnd_bench_report_table(FILE *f, const attnd_bench_opts *o, const attnd_bench_result *r);
int attnd_bench_report_json(const char *path, const attnd_bench_opts *o,
                            const attnd_bench_result *r);
int attnd_bench_report_csv(const char *path, const attnd_bench_opts *o,
                           const attnd_bench_result *r);
/* Draw with gnuplot; 1 when skipped (no gnuplot; says so), 0 done, -1 failed. */
int attnd_bench_report_plot(const char *path, const attnd_bench_opts *o,
                            const attnd_bench_result *r);

#endif /* ATTND_BENCH_H */
