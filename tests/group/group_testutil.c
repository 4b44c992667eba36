/* Helpers of the worker-group suites (see group_testutil.h). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "group_testutil.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

attnd_client *gt_connect(const cu_server *s)
{
    /* ATTND_TEST_TRANSPORT=ucx: Attend over UCX, as in the client suites */
    return gt_connect_opts(s, 60000, /* hang guard only */
                           cu_use_ucx() ? ATTND_TRANSPORT_UCX : ATTND_TRANSPORT_GRPC);
}

const char *gt_token;

attnd_client *gt_connect_opts(const cu_server *s, int64_t deadline_ms,
                              attnd_transport transport)
{
    attnd_client_options o;
    attnd_client *c = NULL;
    attnd_error err;

    attnd_client_options_init(&o);
    o.deadline_ms = deadline_ms;
    o.connect_timeout_ms = 30000;
    o.transport = transport;
    o.token = gt_token;
    attnd_error_clear(&err);
    if (attnd_client_connect(s->target, &o, &c, &err)) {
        fprintf(stderr, "gt_connect %s: %s\n", s->target, err.msg);
        return NULL;
    }
    return c;
}

int gt_rank_start(gt_group *g, int r)
{
    const char *argv[48];
    char rank[8];
    int n = 0;

    snprintf(rank, sizeof rank, "%d", r);
    for (int i = 0; i < g->n_flags; i++)
        argv[n++] = g->flags[i];
    argv[n++] = "--rank";
    argv[n++] = rank;
    argv[n++] = "--group";
    argv[n++] = g->group;
    argv[n++] = "--group-dir";
    argv[n++] = g->dir;
    argv[n++] = "--group-connect-ms"; /* serve at once; gt_wait_connected waits */
    argv[n++] = "0";
    argv[n] = NULL;
    if (cu_server_start(&g->rank[r], argv))
        return -1;
    if (g->c[r])
        attnd_client_destroy(g->c[r]);
    g->c[r] = gt_connect(&g->rank[r]);
    return g->c[r] ? 0 : -1;
}

int gt_wait_connected(gt_group *g, int r, uint32_t want)
{
    for (int waited = 0; waited < 30000; waited += 20) {
        attnd_stats st;
        if (attnd_client_get_stats(g->c[r], &st, NULL, NULL) == ATTND_OK &&
            st.group_connected == want)
            return 0;
        sleep_ms(20);
    }
    fprintf(stderr, "gt_wait_connected: rank %d did not see %u peers in 30 s\n", r, want);
    return -1;
}

int gt_group_start(gt_group *g, int n, const char *const *flags)
{
    memset(g, 0, sizeof *g);
    snprintf(g->dir, sizeof g->dir, "/tmp/attnd-gtest-XXXXXX");
    if (!mkdtemp(g->dir) || n < 1 || n > GT_MAX_RANKS)
        return -1;
    g->n = n;
    for (int r = 0; r < n; r++)
        strcat(g->group, r ? ",127.0.0.1:0" : "127.0.0.1:0");
    for (int i = 0; flags[i] && g->n_flags < 31; i++)
        g->flags[g->n_flags++] = flags[i];
    for (int r = 0; r < n; r++)
        if (gt_rank_start(g, r))
            return -1;
    for (int r = 0; r < n; r++)
        if (gt_wait_connected(g, r, (uint32_t)(n - 1)))
            return -1;
    return 0;
}

int gt_rank_pause(gt_group *g, int r)
{
    int st = 0;
    if (g->rank[r].pid <= 0 || kill(g->rank[r].pid, SIGSTOP))
        return -1;
    /* it is our child: wait until it has really stopped */
    if (waitpid(g->rank[r].pid, &st, WUNTRACED) != g->rank[r].pid || !WIFSTOPPED(st))
        return -1;
    return 0;
}

void gt_rank_resume(gt_group *g, int r)
{
    if (g->rank[r].pid > 0)
        kill(g->rank[r].pid, SIGCONT);
}

void gt_rank_kill(gt_group *g, int r)
{
    if (g->rank[r].pid > 0) {
        kill(g->rank[r].pid, SIGKILL);
        waitpid(g->rank[r].pid, NULL, 0);
        g->rank[r].pid = 0;
    }
}

int gt_group_stop(gt_group *g)
{
    int rc = 0;
    for (int r = 0; r < g->n; r++) {
        if (g->c[r])
            attnd_client_destroy(g->c[r]);
        g->c[r] = NULL;
    }
    for (int r = 0; r < g->n; r++)
        if (g->rank[r].pid > 0) {
            int s = cu_server_stop(&g->rank[r]);
            if (s != 0) {
                fprintf(stderr, "gt_group_stop: rank %d exited %d\n", r, s);
                rc = -1;
            }
        }
    if (g->dir[0]) {
        char path[128];
        for (int r = 0; r < g->n; r++) {
            snprintf(path, sizeof path, "%s/rank-%d", g->dir, r);
            unlink(path);
        }
        rmdir(g->dir);
    }
    return rc;
}

double gt_max_row_err(const float *got, const float *ref, size_t rows, size_t d)
{
    double worst = 0.0;
    for (size_t i = 0; i < rows; i++) {
        double num = 0.0, den = 0.0;
        for (size_t e = 0; e < d; e++) {
            double a = got[i * d + e], b = ref[i * d + e];
            if (isnan(a))
                return INFINITY;
            if (fabs(a - b) > num)
                num = fabs(a - b);
            if (fabs(b) > den)
                den = fabs(b);
        }
        double err = den > 0.0 ? num / den : num;
        if (err > worst)
            worst = err;
    }
    return worst;
}
