/* attnd-tier-bench: the KV tier below memory, measured inside one engine
 * (no RPC). worker/bench/tiers_bench.sh runs it beside fio and the RPC-level
 * durability runs; worker/TIERS.md has the figures.
 *
 *   attnd-tier-bench io     --dir D [--model M] [--mib N] [--tokens T] [--depth Q] [--reps R]
 *       Sessions of T tokens in every layer, N MiB of KV in all, written to
 *       the disk tier (every session moved down whole: one batch of slot
 *       writes each, `depth` in flight) and read back (every layer of every
 *       session queued at once: the mover's runs of reads), checksums
 *       computed and checked; MB/s of slot bytes (what the disk moves; fio
 *       with bs = slot bytes is the anchor) and of KV page bytes. Median of
 *       R repetitions.
 *   attnd-tier-bench attend --dir D [--model M] [--tokens T] [--steps S]
 *       Two sessions of T tokens decoded (an Attend of one query per layer,
 *       all layers a step), their steps interleaved: A stays in memory; B
 *       is moved to disk before every step (with the next 4 layers
 *       prefetched, and without prefetch), then moved to disk once (its
 *       first step, then the later ones: warm). Median step and per-layer
 *       times of each.
 *   attnd-tier-bench hot    --dir D [--model M] [--tokens T] [--batch B] [--iters N]
 *       The Attend hot path of resident sessions with a disk tier configured
 *       and without: per-layer Attend p50 of each, interleaved, and their
 *       ratio (the tier must not slow resident sessions down).
 *   attnd-tier-bench append --dir D [--model M] [--tokens T] [--iters N]
 *       Engine-level appends of one chunk of T tokens (a stage of one chunk,
 *       committed), durability off, sync and batch (1 ms), interleaved: p50
 *       and p99 of each (the log's cost without the RPC around it).
 *
 * Prints figures only; correctness is the tests' job (tests/tiers). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attnd_worker.h"
#include "tier_int.h"

typedef struct opts {
    const char *cmd, *dir, *model;
    int64_t mib, tokens, steps, batch, iters, reps;
    int32_t depth;
} opts;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void die(const char *what, const attnd_error *err)
{
    fprintf(stderr, "attnd-tier-bench: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

/* An engine of the model: kv_memory bytes, a disk tier in dir (kv_disk
 * bytes; "" none), prefetch layers ahead. */
static attnd_engine *engine(const opts *o, uint64_t kv_memory, const char *dir, uint64_t kv_disk,
                            int32_t prefetch)
{
    attnd_engine_config cfg = {.model = *attnd_model_find(o->model), .page_size = 64,
                               .kv_memory = kv_memory, .max_sessions = 1024,
                               .kv_disk = kv_disk, .kv_io_depth = o->depth,
                               .kv_prefetch = prefetch};
    snprintf(cfg.kv_dir, sizeof cfg.kv_dir, "%s", dir);
    attnd_engine *e = NULL;
    attnd_error err;
    if (attnd_engine_create(&cfg, &e, &err))
        die("engine", &err);
    return e;
}

/* n sessions of `tokens` in every layer (the same bytes everywhere: the
 * I/O and checksums cost the same whatever they hold). */
static void fill(attnd_engine *e, attnd_session_id *ids, int n, int64_t tokens)
{
    const attnd_model_spec *m = attnd_engine_model(e);
    const int64_t entry = attnd_model_kv_token_elems(m);
    uint16_t *kv = malloc(sizeof(uint16_t) * (size_t)(tokens * entry));
    attnd_error err;
    if (!kv)
        die("fill", NULL);
    for (int64_t i = 0; i < tokens * entry; i++)
        kv[i] = attnd_dtype_f32_to_bf16((float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f);
    for (int i = 0; i < n; i++) {
        if (attnd_engine_session_create(e, 0, &ids[i], &err))
            die("create", &err);
        for (int32_t l = 0; l < m->n_layers; l++)
            if (attnd_engine_append(e, &ids[i], (uint32_t)l, 0, (uint64_t)tokens,
                                    ATTND_DTYPE_BF16, kv, &err))
                die("append", &err);
    }
    free(kv);
}

static void evict_all(attnd_engine *e, const attnd_session_id *ids, int n)
{
    attnd_error err;
    for (int i = 0; i < n; i++) {
        attnd__session *s = attnd__session_get(&e->table, &ids[i]);
        if (attnd__tier_evict_session(e, s, &err) < 0)
            die("evict", &err);
        attnd__session_put(&e->table, &e->pool, s);
    }
}

static int by_address(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (attnd__session *const *)a,
              y = (uintptr_t) * (attnd__session *const *)b;
    return (x > y) - (x < y);
}

static void load_all(attnd_engine *e, const attnd_session_id *ids, int n)
{
    attnd__session **ss = malloc(sizeof *ss * (size_t)n);
    attnd_error err;
    for (int i = 0; i < n; i++)
        ss[i] = attnd__session_get(&e->table, &ids[i]);
    qsort(ss, (size_t)n, sizeof *ss, by_address);
    if (attnd__tier_load_all(e, ss, (uint32_t)n, &err))
        die("load", &err);
    for (int i = 0; i < n; i++)
        attnd__session_put(&e->table, &e->pool, ss[i]);
    free(ss);
}

static int cmd_io(const opts *o)
{
    const attnd_model_spec *m = attnd_model_find(o->model);
    attnd_engine *e0 = engine(o, 1 << 24, "", 0, 0); /* for the page size */
    size_t page = attnd_kernel_kv_layout_page_bytes(attnd_engine_kv_layout(e0));
    attnd_engine_destroy(e0);
    int64_t per_session = (int64_t)m->n_layers * ((o->tokens + 63) / 64);
    int n = (int)((o->mib << 20) / ((uint64_t)per_session * page));
    n = n < 1 ? 1 : n;
    uint64_t bytes = (uint64_t)n * (uint64_t)per_session * page;
    attnd_engine *e = engine(o, bytes + (64u << 20), o->dir, 2 * bytes + (64u << 20), 0);
    attnd_session_id *ids = calloc((size_t)n, sizeof *ids);
    fill(e, ids, n, o->tokens);
    size_t slot = e->tier->slot_bytes;
    uint64_t pages = (uint64_t)n * (uint64_t)per_session;
    double w[16], r[16];
    int reps = o->reps < 16 ? (int)o->reps : 16;
    for (int k = 0; k < reps; k++) {
        double t0 = now_s();
        evict_all(e, ids, n);
        double t1 = now_s();
        load_all(e, ids, n);
        double t2 = now_s();
        w[k] = t1 - t0;
        r[k] = t2 - t1;
    }
    double wm = median(w, reps), rm = median(r, reps);
    printf("io: model %s, %d sessions x %lld tokens, %llu pages of %zu bytes (slots of %zu), "
           "depth %d, %s%s\n",
           m->name, n, (long long)o->tokens, (unsigned long long)pages, page, slot, o->depth,
           e->tier->direct ? "O_DIRECT" : "buffered", e->tier->tios[0].ring ? ", io_uring" : "");
    printf("spill  %.3f s: %.0f MB/s of slots, %.0f MB/s of KV (median of %d)\n", wm,
           (double)pages * (double)slot / wm * 1e-6, (double)pages * (double)page / wm * 1e-6,
           reps);
    printf("reload %.3f s: %.0f MB/s of slots, %.0f MB/s of KV (median of %d)\n", rm,
           (double)pages * (double)slot / rm * 1e-6, (double)pages * (double)page / rm * 1e-6,
           reps);
    printf("json {\"slot_bytes\": %zu, \"spill_mb_s\": %.1f, \"reload_mb_s\": %.1f}\n", slot,
           (double)pages * (double)slot / wm * 1e-6, (double)pages * (double)slot / rm * 1e-6);
    free(ids);
    attnd_engine_destroy(e);
    return 0;
}

/* One decode step of session id over every layer; per-layer times into
 * lt (may be NULL). Seconds. */
static double step(attnd_engine *e, const attnd_session_id *id, attnd_engine_ws *ws,
                   const void *q, double *lt)
{
    const attnd_model_spec *m = attnd_engine_model(e);
    const float *out, *lse;
    attnd_error err;
    double t0 = now_s();
    for (int32_t l = 0; l < m->n_layers; l++) {
        attnd_attend_req req = {.layer = (uint32_t)l, .n_seqs = 1, .ids = id, .q_tokens = 1,
                                .q_dtype = ATTND_DTYPE_BF16, .q = q};
        double a = now_s();
        if (attnd_engine_attend(e, &req, ws, &out, &lse, &err))
            die("attend", &err);
        if (lt)
            lt[l] = now_s() - a;
    }
    return now_s() - t0;
}

static void report(const char *what, double *steps, int n, double *layers, int nl)
{
    double s = median(steps, n), l = median(layers, nl);
    printf("  %-34s step %8.2f ms   layer p50 %7.3f ms\n", what, s * 1e3, l * 1e3);
}

/* Decode session B from disk against session A from memory, interleaved
 * step by step in one engine (so both see the same machine): B moved down
 * before each of its steps (cold), then moved down once (its first step,
 * then warm). With prefetch 4 and without. */
static int cmd_attend(const opts *o)
{
    const attnd_model_spec *m = attnd_model_find(o->model);
    const int S = o->steps < 32 ? (int)o->steps : 32, L = m->n_layers;
    uint16_t *q = calloc((size_t)(m->n_q_heads * attnd_model_d_k(m)), sizeof *q);
    double *sa = calloc((size_t)S, sizeof *sa), *sb = calloc((size_t)S, sizeof *sb);
    double *la = calloc((size_t)(S * L), sizeof *la), *lb = calloc((size_t)(S * L), sizeof *lb);
    attnd_engine_ws ws;
    attnd_session_id id[2];
    for (int i = 0; i < m->n_q_heads * attnd_model_d_k(m); i++)
        q[i] = attnd_dtype_f32_to_bf16(0.01f * (float)(i % 97));
    printf("attend: model %s, sessions of %lld tokens, %d steps of %d layers; A in memory, B "
           "from disk, their steps interleaved\n",
           m->name, (long long)o->tokens, S, L);
    for (int pf = 0; pf < 2; pf++) {
        /* memory for both sessions twice over: B fits when loaded back */
        uint64_t bytes = (uint64_t)L * (uint64_t)((o->tokens + 63) / 64) * 64 *
                         (uint64_t)attnd_model_kv_token_elems(m) * 2;
        attnd_engine *e = engine(o, 4 * bytes + (16u << 20), o->dir, 4 * bytes, pf ? 4 : 0);
        attnd_engine_ws_init(&ws);
        fill(e, id, 2, o->tokens);
        step(e, &id[0], &ws, q, NULL); /* warm-up */
        for (int k = 0; k < S; k++) {
            sa[k] = step(e, &id[0], &ws, q, la + k * L);
            evict_all(e, &id[1], 1);
            sb[k] = step(e, &id[1], &ws, q, lb + k * L);
        }
        const char *p = pf ? "prefetch 4" : "no prefetch";
        printf("  %s:\n", p);
        report("A in memory", sa, S, la, S * L);
        report("B on disk before every step", sb, S, lb, S * L);
        attnd_engine_stats es;
        attnd_engine_get_stats(e, &es);
        printf("  %-34s %llu pages read back, %llu of them prefetched, %llu waits\n", "",
               (unsigned long long)es.pages_moved_up, (unsigned long long)es.pages_prefetched,
               (unsigned long long)es.load_waits);
        evict_all(e, &id[1], 1);
        double first = step(e, &id[1], &ws, q, NULL);
        for (int k = 0; k < S; k++) {
            sa[k] = step(e, &id[0], &ws, q, la + k * L);
            sb[k] = step(e, &id[1], &ws, q, lb + k * L);
        }
        printf("  B on disk once: first step %.2f ms, then (warm):\n", first * 1e3);
        report("A in memory", sa, S, la, S * L);
        report("B warm", sb, S, lb, S * L);
        attnd_engine_ws_cleanup(&ws);
        attnd_engine_destroy(e);
    }
    free(q);
    free(sa);
    free(sb);
    free(la);
    free(lb);
    return 0;
}

static int cmd_hot(const opts *o)
{
    const attnd_model_spec *m = attnd_model_find(o->model);
    const int B = (int)o->batch, L = m->n_layers;
    uint64_t bytes = (uint64_t)B * (uint64_t)L * (uint64_t)((o->tokens + 63) / 64) * 64 *
                     (uint64_t)attnd_model_kv_token_elems(m) * 2;
    attnd_engine *e[2] = {engine(o, bytes + (64u << 20), "", 0, 0),
                          engine(o, bytes + (64u << 20), o->dir, bytes, 4)};
    attnd_session_id ids[2][64];
    attnd_engine_ws ws[2];
    uint16_t *q = calloc((size_t)(B * m->n_q_heads * attnd_model_d_k(m)), sizeof *q);
    int n = (int)o->iters;
    double *t[2] = {calloc((size_t)n, sizeof(double)), calloc((size_t)n, sizeof(double))};
    attnd_error err;
    const float *out, *lse;
    for (int k = 0; k < 2; k++) {
        fill(e[k], ids[k], B, o->tokens);
        attnd_engine_ws_init(&ws[k]);
    }
    for (int i = -5; i < n; i++) /* interleaved: both see the same machine */
        for (int k = 0; k < 2; k++) {
            attnd_attend_req req = {.layer = (uint32_t)((i + 5) % L), .n_seqs = (uint32_t)B,
                                    .ids = ids[k], .q_tokens = 1, .q_dtype = ATTND_DTYPE_BF16,
                                    .q = q};
            double a = now_s();
            if (attnd_engine_attend(e[k], &req, &ws[k], &out, &lse, &err))
                die("attend", &err);
            if (i >= 0)
                t[k][i] = now_s() - a;
        }
    double p0 = median(t[0], n), p1 = median(t[1], n);
    printf("hot: model %s, batch %d x %lld tokens, %d Attends each (one layer), interleaved\n",
           m->name, B, (long long)o->tokens, n);
    printf("  no tier          p50 %.3f ms\n  disk tier (all resident) p50 %.3f ms   ratio %.3f\n",
           p0 * 1e3, p1 * 1e3, p1 / p0);
    for (int k = 0; k < 2; k++) {
        attnd_engine_ws_cleanup(&ws[k]);
        attnd_engine_destroy(e[k]);
        free(t[k]);
    }
    free(q);
    return 0;
}

/* Engine-level appends (a stage of one chunk of T tokens, committed: what
 * an AppendKV of one chunk costs inside the worker) with durability off,
 * sync and batch (1 ms), interleaved; p50 and p99 of each. */
static int cmd_append(const opts *o)
{
    const attnd_model_spec *m = attnd_model_find(o->model);
    const int64_t entry = attnd_model_kv_token_elems(m);
    const int n = (int)o->iters;
    uint16_t *kv = calloc((size_t)(o->tokens * entry), sizeof *kv);
    double *t[3];
    attnd_engine *e[3];
    attnd_session_id id[3];
    attnd_error err;
    for (int k = 0; k < 3; k++) {
        t[k] = calloc((size_t)n, sizeof(double));
        attnd_engine_config cfg = {.model = *m, .page_size = 64,
                                   .kv_memory = (uint64_t)(n + 8) * (uint64_t)o->tokens *
                                                (uint64_t)entry * 2 * (uint64_t)m->n_layers / 4 +
                                                (64u << 20),
                                   .max_sessions = 4, .durable = k, .durable_window_ms = 1};
        snprintf(cfg.kv_dir, sizeof cfg.kv_dir, "%s/append%d", o->dir, k);
        if (attnd_engine_create(&cfg, &e[k], &err) ||
            attnd_engine_session_create(e[k], 0, &id[k], &err))
            die("engine", &err);
    }
    for (int i = -10; i < n; i++)
        for (int k = 0; k < 3; k++) {
            uint32_t layer = (uint32_t)((i + 10) % m->n_layers);
            uint64_t len;
            if (attnd_engine_length(e[k], &id[k], layer, &len, &err))
                die("length", &err);
            double a = now_s();
            if (attnd_engine_append(e[k], &id[k], layer, len, (uint64_t)o->tokens,
                                    ATTND_DTYPE_BF16, kv, &err))
                die("append", &err);
            if (i >= 0)
                t[k][i] = now_s() - a;
        }
    static const char *const names[] = {"off", "sync", "batch (1 ms)"};
    printf("append: model %s, chunks of %lld tokens (%lld KiB), %d each, interleaved\n",
           m->name, (long long)o->tokens, (long long)(o->tokens * entry * 2 / 1024), n);
    for (int k = 0; k < 3; k++) {
        qsort(t[k], (size_t)n, sizeof(double), cmp_double);
        printf("  durable %-13s p50 %8.1f us   p99 %8.1f us\n", names[k],
               t[k][n / 2] * 1e6, t[k][n * 99 / 100] * 1e6);
    }
    for (int k = 0; k < 3; k++) {
        attnd_engine_destroy(e[k]);
        free(t[k]);
    }
    free(kv);
    return 0;
}

int main(int argc, char **argv)
{
    opts o = {.model = "llama3-8b", .mib = 1024, .tokens = 1024, .steps = 5, .batch = 4,
              .iters = 200, .reps = 3, .depth = 32};
    if (argc < 2) {
        fprintf(stderr, "usage: attnd-tier-bench io|attend|hot|append --dir D [--model M] [--mib N] "
                        "[--tokens T] [--depth Q] [--reps R] [--steps S] [--batch B] "
                        "[--iters N]\n");
        return 2;
    }
    o.cmd = argv[1];
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--dir"))
            o.dir = v;
        else if (!strcmp(k, "--model"))
            o.model = v;
        else if (!strcmp(k, "--mib"))
            o.mib = atoll(v);
        else if (!strcmp(k, "--tokens"))
            o.tokens = atoll(v);
        else if (!strcmp(k, "--depth"))
            o.depth = atoi(v);
        else if (!strcmp(k, "--reps"))
            o.reps = atoll(v);
        else if (!strcmp(k, "--steps"))
            o.steps = atoll(v);
        else if (!strcmp(k, "--batch"))
            o.batch = atoll(v);
        else if (!strcmp(k, "--iters"))
            o.iters = atoll(v);
        else {
            fprintf(stderr, "attnd-tier-bench: unknown flag %s\n", k);
            return 2;
        }
    }
    if (!o.dir || !attnd_model_find(o.model) || o.batch < 1 || o.batch > 64 || o.reps < 1 ||
        o.iters < 1 || o.steps < 1 || o.tokens < 1) {
        fprintf(stderr, "attnd-tier-bench: --dir is needed; check the other values\n");
        return 2;
    }
    if (!strcmp(o.cmd, "io"))
        return cmd_io(&o);
    if (!strcmp(o.cmd, "attend"))
        return cmd_attend(&o);
    if (!strcmp(o.cmd, "hot"))
        return cmd_hot(&o);
    if (!strcmp(o.cmd, "append"))
        return cmd_append(&o);
    fprintf(stderr, "attnd-tier-bench: unknown command %s\n", o.cmd);
    return 2;
}
