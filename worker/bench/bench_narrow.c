/* bench_narrow: what the narrow MLA wire costs where the KV is, in one
 * process (no RPC): the engine's attend with the absorbed query against
 * the heads-form one (absorb + kernel + up-projection), the two
 * projections alone, and, in a sequence group of N > 1 ranks, absorbing
 * on every rank (what attnd does) against absorbing once on the leader
 * and scattering the absorbed query.
 *
 *   bench_narrow [--model deepseek-v3] [--batch 1] [--ctx 1024] [--layers 8]
 *                [--ranks 1] [--threads 2] [--iters 40] [--d-nope 128] [--d-v 128]
 *
 * Every rank's engine serves --layers layers of the model (sequence
 * shards of it with --ranks N; --threads kernel threads each, default 2
 * for one rank, 1 per rank otherwise) holding B sessions of --ctx tokens of
 * random bf16 KV in every layer, and random bf16 W_UK [H][d_nope][d_c] and
 * W_UV [H][d_c][d_v] per layer (bf16: what the engine then keeps). Round k
 * uses layer k mod --layers, so that weights and KV come from memory as
 * in a server holding 61 layers. Each round runs, interleaved so that a
 * busy machine slows all alike, with bf16 queries and float32 outputs:
 *   absorbed   attnd_engine_attend, q [B][H][d_c + d_r], latent output;
 *   heads      the same with q [B][H][d_nope + d_r], q_form HEADS, d_vo;
 *   proj       the two projections alone (attnd_kernel_proj_parallel on a
 *              pool of the same size, same shapes, weights of the layer);
 * and with --ranks N > 1, led by rank 0:
 *   group_heads      attnd_group_attend, heads form: every rank absorbs;
 *   group_leader_abs rank 0 absorbs (attnd_kernel_proj_parallel) and the
 *                    group attends with the absorbed float32 query and d_vo.
 * Prints the median wall time of each in microseconds (and the median of
 * heads - absorbed per round), then the same for the process's CPU time
 * (cpu_*: every thread, the ranks' and the pools' included; on a machine
 * that other work shares, steadier than wall time). Numbers only; correctness is
 * tests/worker/test_narrow.c's and tests/group/test_group_narrow.c's. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "attnd_dtype.h"
#include "attnd_group.h"
#include "attnd_proj.h"

#define MAX_RANKS 4

typedef struct nb {
    const char *model;
    int n, B, ctx, L, threads, iters, dn, dv;
    char dir[64];
    const attnd_model_spec *m;
    attnd_engine *eng[MAX_RANKS];
    attnd_group *grp[MAX_RANKS];
} nb;

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

/* CPU time of the whole process (every kernel thread): what a call costs
 * whatever else the machine runs. */
static double cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void fill_bf16(uint16_t *p, size_t n, uint64_t *s, float scale)
{
    for (size_t i = 0; i < n; i++) {
        *s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
        uint64_t r = *s * 0x2545F4914F6CDD1Dull;
        float f = (float)((double)(r >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f;
        p[i] = attnd_dtype_f32_to_bf16(f * scale);
    }
}

static void *start_rank(void *arg)
{
    void **a = arg;
    nb *b = a[0];
    int r = (int)(intptr_t)a[1];
    attnd_group_config gc = {0};
    attnd_engine_config ec = {0};
    attnd_error err;
    gc.rank = r;
    gc.size = b->n;
    for (int i = 0; i < b->n; i++)
        snprintf(gc.addrs[i], sizeof gc.addrs[i], "127.0.0.1:0");
    snprintf(gc.addr_dir, sizeof gc.addr_dir, "%s", b->dir);
    gc.mode = ATTND_GROUP_SEQUENCE;
    gc.mu = 1.0f;
    gc.connect_ms = gc.timeout_ms = 60000;
    gc.model = *b->m;
    gc.model.n_layers = b->L;
    gc.page_size = 64;
    ec.page_size = 64;
    ec.max_sessions = (uint32_t)b->B + 4;
    ec.kernel_threads = b->threads;
    ec.kv_memory = (uint64_t)b->L * (uint64_t)b->B * (uint64_t)(b->ctx / 64 + 3) * 64 *
                   (uint64_t)attnd_model_kv_token_elems(b->m) * 2;
    if (attnd_group_shard_model(&gc, &ec.model, &err) ||
        attnd_engine_create(&ec, &b->eng[r], &err) ||
        attnd_group_create(&gc, b->eng[r], &b->grp[r], &err)) {
        fprintf(stderr, "bench_narrow: rank %d: %s\n", r, err.msg);
        return (void *)1;
    }
    return NULL;
}

enum { T_ABS, T_HEADS, T_DIFF, T_PROJ, C_ABS, C_HEADS, C_DIFF, C_PROJ, T_GHEADS, T_GLEAD,
       C_GHEADS, C_GLEAD, N_T };
static const char *const t_name[N_T] = {
    "absorbed", "heads", "heads-absorbed", "proj", "cpu_absorbed", "cpu_heads",
    "cpu_heads-absorbed", "cpu_proj", "group_heads", "group_leader_abs", "cpu_group_heads",
    "cpu_group_leader_abs"};

static int run(nb *b)
{
    const attnd_model_spec *m = b->m;
    const int32_t H = m->n_q_heads, dc = m->d_latent, dr = m->d_rope, dk = dc + dr;
    const size_t te = (size_t)attnd_model_kv_token_elems(m);
    pthread_t tid[MAX_RANKS];
    void *args[MAX_RANKS][2];
    attnd_error err;
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    int failed = 0, rc = 1;

    snprintf(b->dir, sizeof b->dir, "/tmp/attnd-bnarrow-XXXXXX");
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
    const size_t uk_n = (size_t)H * (size_t)b->dn * (size_t)dc;
    const size_t uv_n = (size_t)H * (size_t)dc * (size_t)b->dv;
    attnd_session_id *ids = calloc((size_t)b->B, sizeof *ids);
    uint16_t *kv = malloc((size_t)b->ctx * te * 2);
    uint16_t *qa = malloc((size_t)b->B * (size_t)H * (size_t)dk * 2);
    uint16_t *qh = malloc((size_t)b->B * (size_t)H * (size_t)(b->dn + dr) * 2);
    float *qabs = malloc((size_t)b->B * (size_t)H * (size_t)dk * 4);
    float *o = calloc((size_t)b->B * (size_t)H * (size_t)dc, 4);
    float *v = malloc((size_t)b->B * (size_t)H * (size_t)b->dv * 4);
    uint16_t **wk = calloc((size_t)b->L, sizeof *wk), **wv = calloc((size_t)b->L, sizeof *wv);
    double *t = calloc((size_t)b->iters * N_T, sizeof *t);
    attnd_kernel_pool *pool = NULL;
    attnd_engine_ws ws, ws2;
    attnd_engine_ws_init(&ws);
    attnd_engine_ws_init(&ws2);
    if (failed || !ids || !kv || !qa || !qh || !qabs || !o || !v || !wk || !wv || !t ||
        attnd_kernel_pool_create(b->threads, &pool, &err))
        goto out;
    attnd_error_clear(&err);
    for (int i = 0; i < b->B; i++)
        if (attnd_group_session_create(b->grp[0], 0, &ids[i], &err))
            goto fail;
    for (int l = 0; l < b->L; l++) {
        attnd_group_stream *gs = NULL;
        uint64_t chunks, tokens;
        attnd_status st = attnd_group_stream_open(b->grp[0], &gs, &err);
        for (int i = 0; i < b->B && !st; i++) {
            fill_bf16(kv, (size_t)b->ctx * te, &seed, 1.0f);
            st = attnd_group_stream_append(gs, &ids[i], (uint32_t)l, 0, (uint64_t)b->ctx,
                                           ATTND_DTYPE_BF16, kv, &err);
        }
        if (!st)
            st = attnd_group_stream_commit(gs, &chunks, &tokens, &err);
        attnd_group_stream_close(gs);
        if (st)
            goto fail;
        if (!(wk[l] = malloc(uk_n * 2)) || !(wv[l] = malloc(uv_n * 2)))
            goto out;
        fill_bf16(wk[l], uk_n, &seed, 0.1f);
        fill_bf16(wv[l], uv_n, &seed, 0.05f);
        attnd_engine_weights w = {b->dn, ATTND_DTYPE_BF16, wk[l], b->dv, ATTND_DTYPE_BF16, wv[l]};
        if (attnd_group_load_weights(b->grp[0], (uint32_t)l, &w, NULL, &err))
            goto fail;
    }
    fill_bf16(qa, (size_t)b->B * (size_t)H * (size_t)dk, &seed, 1.0f);
    fill_bf16(qh, (size_t)b->B * (size_t)H * (size_t)(b->dn + dr), &seed, 1.0f);
    const int warm = 3;
    for (int k = 0; k < warm + b->iters; k++) {
        const uint32_t l = (uint32_t)(k % b->L);
        const float *out, *lse;
        double ts[N_T] = {0};
        attnd_attend_req ra = {.layer = l, .n_seqs = (uint32_t)b->B, .ids = ids, .q_tokens = 1,
                               .q_dtype = ATTND_DTYPE_BF16, .q = qa, .want_lse = 1};
        attnd_attend_req rh = ra;
        rh.q = qh;
        rh.q_form = ATTND_Q_HEADS;
        rh.d_nope = b->dn;
        rh.d_vo = b->dv;
        attnd_kernel_proj pa = {.rows = b->B, .heads = H, .k = b->dn, .j = dc, .pass = dr,
                         .src_dtype = ATTND_DTYPE_BF16, .src = qh,
                         .src_row = (int64_t)H * (b->dn + dr), .src_head = b->dn + dr,
                         .w_dtype = ATTND_DTYPE_BF16, .w = wk[l], .dst = qabs,
                         .dst_row = (int64_t)H * dk, .dst_head = dk};
        attnd_kernel_proj pu = {.rows = b->B, .heads = H, .k = dc, .j = b->dv,
                         .src_dtype = ATTND_DTYPE_F32, .src = o,
                         .src_row = (int64_t)H * dc, .src_head = dc,
                         .w_dtype = ATTND_DTYPE_BF16, .w = wv[l], .dst = v,
                         .dst_row = (int64_t)H * b->dv, .dst_head = b->dv};
        double t0 = now_us(), c0 = cpu_us();
        if (b->n == 1) {
            if (attnd_engine_attend(b->eng[0], &ra, &ws, &out, &lse, &err))
                goto fail;
            double t1 = now_us(), c1 = cpu_us();
            if (attnd_engine_attend(b->eng[0], &rh, &ws, &out, &lse, &err))
                goto fail;
            double t2 = now_us(), c2 = cpu_us();
            if (attnd_kernel_proj_parallel(pool, &pa, &err) ||
                attnd_kernel_proj_parallel(pool, &pu, &err))
                goto fail;
            double t3 = now_us(), c3 = cpu_us();
            ts[T_ABS] = t1 - t0;
            ts[T_HEADS] = t2 - t1;
            ts[T_DIFF] = ts[T_HEADS] - ts[T_ABS];
            ts[T_PROJ] = t3 - t2;
            ts[C_ABS] = c1 - c0;
            ts[C_HEADS] = c2 - c1;
            ts[C_DIFF] = ts[C_HEADS] - ts[C_ABS];
            ts[C_PROJ] = c3 - c2;
        } else {
            if (attnd_group_attend(b->grp[0], &rh, &ws, 0, &out, &lse, NULL, &err))
                goto fail;
            double t1 = now_us(), c1 = cpu_us();
            attnd_attend_req rl = ra; /* the leader absorbs, the group attends */
            rl.q_dtype = ATTND_DTYPE_F32;
            rl.q = qabs;
            rl.d_vo = b->dv;
            if (attnd_kernel_proj_parallel(pool, &pa, &err) ||
                attnd_group_attend(b->grp[0], &rl, &ws2, 0, &out, &lse, NULL, &err))
                goto fail;
            double t2 = now_us(), c2 = cpu_us();
            ts[T_GHEADS] = t1 - t0;
            ts[T_GLEAD] = t2 - t1;
            ts[C_GHEADS] = c1 - c0;
            ts[C_GLEAD] = c2 - c1;
        }
        for (int s = 0; s < N_T && k >= warm; s++)
            t[(size_t)s * (size_t)b->iters + (size_t)(k - warm)] = ts[s];
    }
    printf("bench_narrow: %s, ranks %d, threads %d, batch %d, ctx %d, layers %d, d_nope %d, "
           "d_v %d, median of %d (us):", b->model, b->n, b->threads, b->B, b->ctx, b->L, b->dn,
           b->dv, b->iters);
    for (int s = 0; s < N_T; s++) {
        if ((b->n == 1) != (s < T_GHEADS))
            continue;
        if (s == C_ABS || s == C_GHEADS)
            printf(" |");
        qsort(t + (size_t)s * (size_t)b->iters, (size_t)b->iters, sizeof *t, cmp_double);
        printf(" %s=%.1f", t_name[s], t[(size_t)s * (size_t)b->iters + (size_t)b->iters / 2]);
    }
    printf("\n");
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "bench_narrow: %s: %s\n", attnd_status_string(err.code), err.msg);
out:
    for (int r = 0; r < b->n; r++)
        attnd_group_destroy(b->grp[r]);
    for (int r = 0; r < b->n; r++)
        attnd_engine_destroy(b->eng[r]);
    for (int r = 0; r < b->n; r++) {
        char path[128];
        snprintf(path, sizeof path, "%s/rank-%d", b->dir, r);
        unlink(path);
    }
    rmdir(b->dir);
    attnd_kernel_pool_destroy(pool);
    attnd_engine_ws_cleanup(&ws);
    attnd_engine_ws_cleanup(&ws2);
    for (int l = 0; wk && l < b->L; l++)
        free(wk[l]);
    for (int l = 0; wv && l < b->L; l++)
        free(wv[l]);
    free(wk);
    free(wv);
    free(ids);
    free(kv);
    free(qa);
    free(qh);
    free(qabs);
    free(o);
    free(v);
    free(t);
    return rc;
}

int main(int argc, char **argv)
{
    nb b = {.model = "deepseek-v3", .n = 1, .B = 1, .ctx = 1024, .L = 8, .threads = 0,
            .iters = 40, .dn = 128, .dv = 128};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *f = argv[i], *v = argv[i + 1];
        if (!strcmp(f, "--model")) b.model = v;
        else if (!strcmp(f, "--ranks")) b.n = atoi(v);
        else if (!strcmp(f, "--batch")) b.B = atoi(v);
        else if (!strcmp(f, "--ctx")) b.ctx = atoi(v);
        else if (!strcmp(f, "--layers")) b.L = atoi(v);
        else if (!strcmp(f, "--threads")) b.threads = atoi(v);
        else if (!strcmp(f, "--iters")) b.iters = atoi(v);
        else if (!strcmp(f, "--d-nope")) b.dn = atoi(v);
        else if (!strcmp(f, "--d-v")) b.dv = atoi(v);
        else {
            fprintf(stderr, "bench_narrow: unknown flag %s\n", f);
            return 2;
        }
    }
    b.m = attnd_model_find(b.model);
    if (!b.threads)
        b.threads = b.n == 1 ? 2 : 1;
    if (!b.m || b.m->kind != ATTND_ATTN_MLA || b.n < 1 || b.n > MAX_RANKS || b.B < 1 ||
        b.ctx < 1 || b.L < 1 || b.iters < 1 || b.dn < 1 || b.dv < 1) {
        fprintf(stderr, "bench_narrow: an MLA --model, --ranks 1..%d, sizes >= 1\n", MAX_RANKS);
        return 2;
    }
    return run(&b);
}
