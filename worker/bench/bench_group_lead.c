/* bench_group_lead: what leading a worker-group Attend costs beyond the
 * leader's own engine call, in one process (no RPC).
 *
 *   bench_group_lead [--model NAME] [--ranks N] [--batch B] [--ctx T]
 *                    [--iters K] [--shard sequence|head|latent] [--leader R]
 *
 * N ranks (attnd_group_create, each with its own engine serving its shard
 * of one layer of the model) connected over UCX on loopback; B sessions of
 * T tokens of random bf16 KV, appended through rank 0. Then K rounds, each
 * one timed attnd_group_attend led by rank R (default 0; bf16 queries
 * [B, Hq, d_k], no new KV, so every round sees the same context; float32
 * outputs and LSE, as the service asks) and one timed attnd_engine_attend
 * of rank R's own share on its engine (the floor: what the leader
 * computes itself; exact in sequence mode, same shapes and cost
 * otherwise), alternating so that a busy machine slows both alike. Prints, in microseconds: the
 * minimum and median of the group call and of the engine call, the
 * difference of the medians (the leader's overhead plus, for N > 1, the
 * wait for the slowest peer beyond its own share), and the medians of the
 * group's own split: kernel (its run-local step, attnd_group_attend's
 * *kernel_ns_p) and fan-out (the rest). With --ranks 1 the difference is
 * the leader's overhead alone (plan, scatter, combine). The same on the
 * leader thread's CPU time (the engine computes on the calling thread,
 * kernel_threads 1): cpu_overhead is the median over rounds of the group
 * call's CPU time minus the engine call's, i.e. the leader's own work
 * beyond its share (plan, encoding the peers' parts, combine), robust to
 * a busy machine and to waits for peers. Prints numbers only; correctness
 * is tests/group's job.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "attnd_group.h"

#define MAX_RANKS 8

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

/* CPU time of the calling thread: the leader's own work, whatever else
 * the machine runs (a busy machine's preemptions and the waits for peers
 * do not count). */
static double cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Random bf16 in about [-1, 1) (xorshift64*). */
static void fill_bf16(uint16_t *p, size_t n, uint64_t *s)
{
    for (size_t i = 0; i < n; i++) {
        *s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
        uint64_t r = *s * 0x2545F4914F6CDD1Dull;
        float f = (float)((double)(r >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f;
        p[i] = attnd_dtype_f32_to_bf16(f);
    }
}

typedef struct bench {
    const char *model, *shard;
    int n, B, ctx, iters, leader;
    char dir[64];
    attnd_engine *eng[MAX_RANKS];
    attnd_group *grp[MAX_RANKS];
} bench;

/* The group's config for rank r (every rank the same but its rank). */
static void group_config(const bench *b, const attnd_model_spec *m, int r,
                         attnd_group_config *c)
{
    memset(c, 0, sizeof *c);
    c->rank = r;
    c->size = b->n;
    for (int i = 0; i < b->n; i++)
        snprintf(c->addrs[i], sizeof c->addrs[i], "127.0.0.1:0");
    snprintf(c->addr_dir, sizeof c->addr_dir, "%s", b->dir);
    c->mode = (attnd_group_mode)attnd_group_mode_parse(b->shard);
    c->mu = 1.0f;
    c->connect_ms = 30000;
    c->timeout_ms = 30000;
    c->model = *m;
    c->model.n_layers = 1;
    c->page_size = 64;
}

/* Create rank r's engine and group (the group connects in the background
 * while later ranks start; attnd_group_create waits for every peer). */
static void *start_rank(void *arg)
{
    void **a = arg;
    bench *b = a[0];
    int r = (int)(intptr_t)a[1];
    const attnd_model_spec *m = attnd_model_find(b->model);
    attnd_group_config gc;
    attnd_engine_config ec = {0};
    attnd_error err;

    attnd_error_clear(&err);
    group_config(b, m, r, &gc);
    ec.page_size = 64;
    ec.max_sessions = (uint32_t)b->B + 4;
    ec.kernel_threads = 1;
    ec.kv_memory = (uint64_t)b->B * (uint64_t)(b->ctx / 64 + 2) * 64 *
                   (uint64_t)attnd_model_kv_token_elems(m) * 2;
    if (attnd_group_shard_model(&gc, &ec.model, &err) ||
        attnd_engine_create(&ec, &b->eng[r], &err) ||
        attnd_group_create(&gc, b->eng[r], &b->grp[r], &err)) {
        fprintf(stderr, "bench_group_lead: rank %d: %s\n", r, err.msg);
        return (void *)1;
    }
    return NULL;
}

static int run(bench *b)
{
    const attnd_model_spec *m = attnd_model_find(b->model);
    pthread_t tid[MAX_RANKS];
    void *args[MAX_RANKS][2];
    attnd_error err;
    attnd_engine_ws ws_g, ws_e;
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    int rc = 1, failed = 0;

    if (!m || attnd_group_mode_parse(b->shard) < 0) {
        fprintf(stderr, "bench_group_lead: unknown model or shard\n");
        return 2;
    }
    snprintf(b->dir, sizeof b->dir, "/tmp/attnd-glead-XXXXXX");
    if (!mkdtemp(b->dir))
        return 1;
    for (int r = 0; r < b->n; r++) {
        args[r][0] = b;
        args[r][1] = (void *)(intptr_t)r;
        pthread_create(&tid[r], NULL, start_rank, args[r]);
    }
    for (int r = 0; r < b->n; r++) {
        void *ret;
        pthread_join(tid[r], &ret);
        failed |= ret != NULL;
    }
    attnd_engine_ws_init(&ws_g);
    attnd_engine_ws_init(&ws_e);
    const int64_t te = attnd_model_kv_token_elems(m);
    const size_t qn = (size_t)b->B * (size_t)m->n_q_heads * (size_t)attnd_model_d_k(m);
    attnd_session_id *ids = calloc((size_t)b->B, sizeof *ids);
    uint16_t *kv = malloc((size_t)b->ctx * (size_t)te * 2), *q = malloc(qn * 2);
    double *lat = calloc((size_t)b->iters * 7, sizeof *lat);
    if (failed || !ids || !kv || !q || !lat)
        goto out;
    attnd_error_clear(&err);
    for (int i = 0; i < b->B; i++) { /* one AppendKV stream per session */
        attnd_group_stream *gs = NULL;
        uint64_t chunks = 0, tokens = 0;
        fill_bf16(kv, (size_t)b->ctx * (size_t)te, &seed);
        attnd_status st = attnd_group_session_create(b->grp[0], 0, &ids[i], &err);
        if (!st)
            st = attnd_group_stream_open(b->grp[0], &gs, &err);
        if (!st)
            st = attnd_group_stream_append(gs, &ids[i], 0, 0, (uint64_t)b->ctx, ATTND_DTYPE_BF16,
                                           kv, &err);
        if (!st)
            st = attnd_group_stream_commit(gs, &chunks, &tokens, &err);
        attnd_group_stream_close(gs);
        if (st)
            goto fail;
    }
    /* the engine call reads q as its shard's shape (sequence mode: the
     * whole query; else a prefix of it, with the same cost as the slice) */
    attnd_attend_req rg = {.layer = 0, .n_seqs = (uint32_t)b->B, .ids = ids, .q_tokens = 1,
                           .q_dtype = ATTND_DTYPE_BF16, .q = q, .want_lse = 1};
    attnd_attend_req re = rg;
    double *tg = lat, *te_ = lat + b->iters, *tk = lat + 2 * b->iters, *tf = lat + 3 * b->iters;
    double *cg = lat + 4 * b->iters, *ce = lat + 5 * b->iters, *cd = lat + 6 * b->iters;
    const int warm = 5;
    for (int k = 0; k < warm + b->iters; k++) {
        const float *out, *lse;
        uint64_t kern = 0;
        fill_bf16(q, qn, &seed);
        double t0 = now_us(), c0 = cpu_us();
        if (attnd_group_attend(b->grp[b->leader], &rg, &ws_g, 0, &out, &lse, &kern, &err))
            goto fail;
        double t1 = now_us(), c1 = cpu_us();
        if (attnd_engine_attend(b->eng[b->leader], &re, &ws_e, &out, &lse, &err))
            goto fail;
        double t2 = now_us(), c2 = cpu_us();
        if (k >= warm) {
            int i = k - warm;
            tg[i] = t1 - t0;
            te_[i] = t2 - t1;
            tk[i] = (double)kern * 1e-3;
            tf[i] = t1 - t0 - (double)kern * 1e-3;
            cg[i] = c1 - c0;
            ce[i] = c2 - c1;
            cd[i] = cg[i] - ce[i];
        }
    }
    for (int s = 0; s < 7; s++)
        qsort(lat + (size_t)s * (size_t)b->iters, (size_t)b->iters, sizeof *lat, cmp_double);
    const int mid = b->iters / 2;
    printf("model=%s shard=%s ranks=%d leader=%d batch=%d ctx=%d iters=%d group_min_us=%.1f "
           "group_p50_us=%.1f engine_min_us=%.1f engine_p50_us=%.1f overhead_p50_us=%.1f "
           "kernel_p50_us=%.1f fanout_p50_us=%.1f cpu_group_p50_us=%.1f cpu_engine_p50_us=%.1f "
           "cpu_overhead_p50_us=%.1f\n",
           b->model, b->shard, b->n, b->leader, b->B, b->ctx, b->iters, tg[0], tg[mid], te_[0], te_[mid],
           tg[mid] - te_[mid], tk[mid], tf[mid], cg[mid], ce[mid], cd[mid]);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "bench_group_lead: %s: %s\n", attnd_status_string(err.code), err.msg);
out:
    for (int i = 0; ids && i < b->B; i++)
        if (b->grp[0])
            attnd_group_session_close(b->grp[0], &ids[i], NULL, &err);
    for (int r = 0; r < b->n; r++)
        if (b->grp[r])
            attnd_group_destroy(b->grp[r]);
    for (int r = 0; r < b->n; r++)
        attnd_engine_destroy(b->eng[r]);
    attnd_engine_ws_cleanup(&ws_g);
    attnd_engine_ws_cleanup(&ws_e);
    for (int r = 0; r < b->n; r++) {
        char path[128];
        snprintf(path, sizeof path, "%s/rank-%d", b->dir, r);
        unlink(path);
    }
    rmdir(b->dir);
    free(ids);
    free(kv);
    free(q);
    free(lat);
    return rc;
}

int main(int argc, char **argv)
{
    bench b = {.model = "deepseek-v3", .shard = "sequence", .n = 2, .B = 4, .ctx = 256,
               .iters = 200};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            b.model = argv[i + 1];
        else if (!strcmp(argv[i], "--shard"))
            b.shard = argv[i + 1];
        else if (!strcmp(argv[i], "--ranks"))
            b.n = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch"))
            b.B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ctx"))
            b.ctx = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--leader"))
            b.leader = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--iters"))
            b.iters = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "bench_group_lead: unknown flag %s\n", argv[i]);
            return 2;
        }
    }
    if (b.n < 1 || b.n > MAX_RANKS || b.B < 1 || b.ctx < 1 || b.iters < 1 || b.leader < 0 ||
        b.leader >= b.n) {
        fprintf(stderr, "bench_group_lead: --ranks 1..%d, --leader 0..ranks-1, --batch, --ctx, "
                "--iters >= 1\n", MAX_RANKS);
        return 2;
    }
    return run(&b);
}
