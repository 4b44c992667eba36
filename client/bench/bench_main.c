/* attnd-bench: the load tester's main (see bench.h for how it works).
 *
 *   attnd-bench                          start a local attnd, run the default
 *                                        closed-loop workload, print the table
 *   attnd-bench --target H:P --rate 50   open loop against a running attnd
 *
 * Exit codes: 0 the run completed without failed calls (and, with --check,
 * every output matched); 1 calls failed, the check found a mismatch, or
 * the attnd it started did not exit 0;
 * 2 bad flags; 3 the run could not start (no attnd, cannot connect, ...).
 */
#include <stdlib.h>
#include <string.h>

#include "attnd_ucxw.h"
#include "bench.h"

static double check_bound(attnd_dtype t)
{
    return t == ATTND_DTYPE_F32 ? 1e-5 : t == ATTND_DTYPE_F16 ? 1e-3 : 1e-2;
}

/* Start the local attnd; fills target. 0 or -1. */
static int spawn_attnd(const attnd_bench_opts *o, attnd_bench_child *ch, char *target, size_t n)
{
    char path[PATH_MAX];
    attnd_bench_find_attnd(o->attnd_path, path, sizeof path);
    if (!path[0]) {
        fprintf(stderr, "attnd-bench: no attnd executable found%s%s; give --attnd PATH or "
                        "--target HOST:PORT\n",
                o->attnd_path[0] ? " at " : " next to attnd-bench or in ../../service",
                o->attnd_path);
        return -1;
    }
    int ucx = !strcmp(o->transport, "ucx");
    const char *argv[] = {path, "--listen", "127.0.0.1:0", "--model", o->model,
                          "--kv-memory", o->kv_memory, ucx ? "--ucx-listen" : NULL, "auto",
                          NULL};
    if (attnd_bench_child_start(ch, argv, 30000))
        return -1;
    snprintf(target, n, "127.0.0.1:%d", ch->port);
    return 0;
}

/* Prompt tokens of all sessions: the prefill sent each to every layer. */
static uint64_t prompt_tokens(const attnd_bench_result *r)
{
    return r->st.prefill_tokens / (r->model.n_layers ? r->model.n_layers : 1);
}

int main(int argc, char **argv)
{
    attnd_bench_opts o;
    attnd_bench_result res;
    attnd_bench_child ch;
    char target[256];
    int rc;

    if (argc == 4 && !strcmp(argv[1], "--echo-server") && !strcmp(argv[2], "--port-file"))
        return attnd_bench_echo_main(argv[3]);
    if (argc == 4 && !strcmp(argv[1], "--echo-ucx-server") && !strcmp(argv[2], "--port-file"))
        return attnd_bench_echo_ucx_main(argv[3]);
    rc = attnd_bench_opts_parse(&o, argc, argv);
    if (rc)
        return rc == 1 ? 0 : 2;
    memset(&res, 0, sizeof res);
    memset(&ch, 0, sizeof ch);
    attnd_bench_child_hooks();
    if (o.target[0]) {
        snprintf(target, sizeof target, "%s", o.target);
    } else if (spawn_attnd(&o, &ch, target, sizeof target)) {
        attnd_bench_opts_cleanup(&o);
        return 3;
    }
    snprintf(res.target, sizeof res.target, "%s", target);
    res.spawned = !o.target[0];
    if (attnd_bench_execute(&o, target, &res)) {
        rc = 3;
        goto out;
    }
    res.prompt_tokens = prompt_tokens(&res);
    res.check_bound = check_bound(o.dtype);
    res.check_failed = o.check && (!(res.st.check.max_err <= res.check_bound) ||
                                   res.st.check.rows == 0);
    /* the baseline should not share the CPUs with it; a spawned attnd that
     * does not stop cleanly (crash, sanitizer report) fails the run */
    int child_rc = attnd_bench_child_stop(&ch);
    if (child_rc)
        fprintf(stderr, "attnd-bench: the attnd it started exited with status %d\n", child_rc);
    if (o.baseline) {
        int ucx = strcmp(o.transport, "ucx") == 0;
        const attnd_model_info *m = &res.model;
        size_t ds = attnd_dtype_size(o.dtype);
        size_t req = (size_t)res.batch * ((size_t)m->n_q_heads * res.d_q * ds +
                                         (size_t)m->kv_token_elems * ds + 16 + 8);
        size_t reply = (size_t)res.batch * m->n_q_heads * res.d_out * ds;
        double secs = o.duration_s < 3 ? o.duration_s : 3;
        res.base_what = ucx ? (attnd_ucxw_shm_allowed()
                                   ? "bare UCX active-message ping-pong (endpoints as "
                                     "libattnd's on one host: shared memory + CMA)"
                                   : "bare UCX active-message ping-pong (endpoints with peer "
                                     "error handling, as libattnd's under ATTND_UCX_SHM=0)")
                            : "bare gRPC unary ping-pong";
        if (o.progress)
            fprintf(stderr, "baseline: %.1f s of %s (%zu-byte requests, %zu-byte replies)\n",
                    secs, res.base_what, req, reply);
        if ((ucx ? attnd_bench_baseline_ucx : attnd_bench_baseline)(&o, &res, req, reply, secs))
            fprintf(stderr, "attnd-bench: --baseline did not run\n");
    }
    attnd_bench_report_table(stdout, &o, &res);
    fflush(stdout);
    rc = 0;
    if (o.json[0] && attnd_bench_report_json(o.json, &o, &res))
        rc = 3;
    if (o.csv[0] && attnd_bench_report_csv(o.csv, &o, &res))
        rc = 3;
    if (o.plot[0] && attnd_bench_report_plot(o.plot, &o, &res) < 0)
        rc = 3;
    if (!rc) {
        uint64_t errs = 0;
        for (int i = 0; i < ATTND_BENCH_N_STATUS; i++)
            errs += res.st.errors[i];
        rc = errs || res.check_failed || child_rc ? 1 : 0;
    }
out:
    attnd_bench_child_stop(&ch);
    attnd_bench_stats_cleanup(&res.st);
    if (res.baseline_ran || res.base_call.buckets)
        attnd_hist_cleanup(&res.base_call);
    attnd_bench_opts_cleanup(&o);
    return rc;
}
