/* attnd-sparse-bench: per-Attend latency of the engine with a sparse
 * policy against the dense path, on the same machine in the same run.
 *
 *   attnd-sparse-bench [--model NAME] [--ctx T] [--batch B] [--budget F]
 *                      [--topk K] [--policy topk-pages|streaming|given-tokens]
 *                      [--window W] [--sink S] [--iters N] [--threads N]
 *                      [--page-size P] [--device cpu|cuda:N]
 *                      [--select default|per-head|both|N]
 *                      [--q-form absorbed|heads]
 *
 * One engine of one layer of the model (a layer's cost does not depend on
 * how many the model has), B dense sessions and B sparse ones of T tokens
 * of the same random bf16 KV, then N rounds of one Attend of each set,
 * interleaved (dense, sparse, dense, ...) so that load on a shared machine
 * hits both alike (--select: the engine's select_head_agg, default
 * its own rule, per-head 1, or N; both adds a third set, the same sparse
 * sessions in a second engine that scores a row per query head, against
 * the default rows, interleaved with the others): bf16 queries [B, Hq, d_k], each session's new entry
 * appended in the call, float32 outputs and LSE, the service's call.
 * Prints the medians and minima of wall-clock time and the median of the
 * process's CPU time per call (on a loaded machine the CPU time and the
 * minimum are the steadier figures), the speedups, the selection's share
 * of the sparse call (its wall-clock time measured inside the engine:
 * ws.select_ns), and the KV bytes each call reads (the engine's counters:
 * KV, and the key bounds the selection reads) next to the dense call's.
 * --q-form heads (MLA): the narrow wire's form, random bf16 W_UK [Hq][128]
 * [d_c] and W_UV [Hq][d_c][128] loaded, queries [B, Hq, 128 + d_r] absorbed
 * by the engine (on a GPU: cuBLAS, in stream order before the selection,
 * which scores the absorbed query) and outputs [B, Hq, 128] up-projected:
 * a third of the query's bytes up and a quarter of the outputs' down.
 * --policy given-tokens: the caller's own indexer (DeepSeek's sparse
 * attention): each round every sparse session is given K tokens (--topk K,
 * or --budget F of the context; spread over it at random, ascending, new
 * each round) besides the newest; on a GPU they are gathered into pages
 * first (the gather is part of the call).
 * Random keys make every page look alike to the selection: the time does
 * not depend on what it picks, but the accuracy does
 * (worker/bench/sparse_accuracy.c measures that). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attnd_clock.h"
#include "attnd_worker.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static double minimum(const double *v, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++)
        m = v[i] < m ? v[i] : m;
    return m;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n ? (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2])) : 0.0;
}

/* xorshift64*: the next 64 random bits of state *s */
static uint64_t next_u64(uint64_t *s)
{
    *s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1Dull;
}

static void fill_bf16(uint16_t *p, size_t n, uint64_t *s)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t r = next_u64(s);
        float f = (float)((double)(r >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f;
        p[i] = attnd_dtype_f32_to_bf16(f);
    }
}

typedef struct opts {
    const char *model, *device, *select;
    int heads; /* --q-form heads */
    int64_t given; /* --policy given-tokens: tokens given per session */
    int64_t ctx;
    int32_t batch, iters, threads, page_size;
    attnd_policy pol;
} opts;

static int usage(void)
{
    fprintf(stderr, "usage: attnd-sparse-bench [--model NAME] [--ctx T] [--batch B] "
                    "[--budget F | --topk K] [--policy topk-pages|streaming|given-tokens] [--window W] "
                    "[--sink S] [--iters N] [--threads N] [--page-size P] [--device D] "
                    "[--select default|per-head|both|N] [--q-form absorbed|heads]\n");
    return 2;
}

static int parse(int argc, char **argv, opts *o)
{
    o->model = "llama3-8b";
    o->device = "cpu";
    o->select = "default";
    o->heads = 0;
    o->ctx = 131072;
    o->batch = 1;
    o->iters = 15;
    o->threads = 0;
    o->page_size = 64;
    o->pol = (attnd_policy){.kind = ATTND_POLICY_TOPK_PAGES, .topk_fraction = 0.125f, .sink = 64};
    o->given = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return usage();
        if (!strcmp(a, "--model"))
            o->model = v;
        else if (!strcmp(a, "--device"))
            o->device = v;
        else if (!strcmp(a, "--select"))
            o->select = v;
        else if (!strcmp(a, "--q-form") && (!strcmp(v, "heads") || !strcmp(v, "absorbed")))
            o->heads = !strcmp(v, "heads");
        else if (!strcmp(a, "--ctx"))
            o->ctx = atoll(v);
        else if (!strcmp(a, "--batch"))
            o->batch = atoi(v);
        else if (!strcmp(a, "--iters"))
            o->iters = atoi(v);
        else if (!strcmp(a, "--threads"))
            o->threads = atoi(v);
        else if (!strcmp(a, "--page-size"))
            o->page_size = atoi(v);
        else if (!strcmp(a, "--budget"))
            o->pol.topk_fraction = (float)atof(v), o->pol.topk = 0;
        else if (!strcmp(a, "--topk"))
            o->pol.topk = (uint32_t)atoi(v), o->pol.topk_fraction = 0;
        else if (!strcmp(a, "--sink"))
            o->pol.sink = (uint32_t)atoi(v);
        else if (!strcmp(a, "--window"))
            o->pol.window = (uint32_t)atoi(v);
        else if (!strcmp(a, "--policy")) {
            int k = attnd_policy_kind_parse(v);
            if (k < 0)
                return usage();
            o->pol.kind = (attnd_policy_kind)k;
        } else
            return usage();
        i++;
    }
    if (o->pol.kind == ATTND_POLICY_GIVEN_TOKENS) {
        o->given = o->pol.topk ? (int64_t)o->pol.topk
                               : (int64_t)((double)o->pol.topk_fraction * (double)o->ctx);
        o->pol = (attnd_policy){.kind = ATTND_POLICY_GIVEN_TOKENS};
        if (o->given < 1 || o->given > o->ctx)
            return usage();
    } else if (o->pol.kind != ATTND_POLICY_TOPK_PAGES && o->pol.kind != ATTND_POLICY_STREAMING)
        return usage();
    if (o->pol.kind == ATTND_POLICY_STREAMING) {
        o->pol.topk = 0;
        o->pol.topk_fraction = 0;
        if (!o->pol.window)
            o->pol.window = (uint32_t)(o->ctx / 8);
    }
    int sel_ok = !strcmp(o->select, "default") || !strcmp(o->select, "per-head") ||
                 !strcmp(o->select, "both") || atoi(o->select) > 0;
    const attnd_model_spec *m = attnd_model_find(o->model);
    if (m && o->heads && m->kind != ATTND_ATTN_MLA) {
        fprintf(stderr, "attnd-sparse-bench: --q-form heads is for MLA models\n");
        return 2;
    }
    return o->ctx > 0 && o->batch > 0 && o->iters > 0 && sel_ok && m ? 0 : usage();
}

/* The per-set figures of one run. */
/* GPU engines: the call's phases (attnd_engine_phases), in this order */
#define N_PHASES 6
static const char *const phase_names[N_PHASES] = {"host", "(append", "enqueue", "overlap", "wait", "gpu"};

typedef struct set_times {
    double *wall, *cpu, *sel;
    double *phase[N_PHASES];
    uint64_t kv, sel_bytes;
} set_times;

/* p50 of each phase (us), when the engine reported any */
static void print_phases(const char *name, set_times *t, int n)
{
    if (median(t->phase[N_PHASES - 1], n) <= 0.0)
        return;
    printf("  %-16s", name);
    for (int k = 0; k < N_PHASES; k++)
        printf(" %s %.1f%s", phase_names[k], median(t->phase[k], n), k == 1 ? ")" : "");
    printf(" (p50 us)\n");
}

static void print_set(const char *name, set_times *t, int n, int sparse)
{
    double md = median(t->wall, n), nd = minimum(t->wall, n), mc = median(t->cpu, n);
    printf("  %-16s%10.1f %10.1f %10.1f   %9.2f MB", name, md, nd, mc, (double)t->kv / n / 1e6);
    if (sparse)
        printf(" + key bounds %.2f MB", (double)t->sel_bytes / n / 1e6);
    printf("\n");
}

/* Speedup of set s over dense d, and its selection's share. */
static void print_ratio(const char *name, set_times *d, set_times *s, int n)
{
    double md = median(d->wall, n), nd = minimum(d->wall, n), mcd = median(d->cpu, n);
    double ms = median(s->wall, n), ns = minimum(s->wall, n), mcs = median(s->cpu, n);
    double nsel = minimum(s->sel, n), msel = median(s->sel, n);
    printf("  speedup %-8s%9.2fx %9.2fx %9.2fx   (%s rows)\n", "", md / ms, nd / ns, mcd / mcs,
           name);
    printf("  selection (wall, %s) p50 %.1f us = %.1f%% of the sparse call's p50; min %.1f us = "
           "%.1f%% of its min\n", name, msel, ms > 0 ? 100.0 * msel / ms : 0.0, nsel,
           ns > 0 ? 100.0 * nsel / ns : 0.0);
}

static attnd_engine *engine_make(const opts *o, const attnd_model_spec *m, int32_t sessions,
                                 int64_t max_tok, size_t entry_bytes, int32_t head_agg)
{
    const int64_t ps = o->page_size;
    attnd_engine_config cfg = {.model = *m, .page_size = o->page_size,
                               .max_sessions = (uint32_t)sessions,
                               .kernel_threads = o->threads, .select_head_agg = head_agg};
    cfg.model.n_layers = 1;
    snprintf(cfg.device, sizeof cfg.device, "%s", o->device);
    cfg.kv_memory = (uint64_t)sessions * (uint64_t)((max_tok + ps - 1) / ps + 1) * ps * entry_bytes;
    attnd_engine *e = NULL;
    attnd_error err;
    if (attnd_engine_create(&cfg, &e, &err)) {
        fprintf(stderr, "attnd-sparse-bench: %s\n", err.msg);
        return NULL;
    }
    return e;
}

int main(int argc, char **argv)
{
    opts o;
    if (parse(argc, argv, &o))
        return 2;
    const attnd_model_spec *m = attnd_model_find(o.model);
    const int32_t B = o.batch, warm = 2;
    const int64_t te = attnd_model_kv_token_elems(m);
    const size_t entry_bytes = (size_t)te * 2;
    const int64_t max_tok = o.ctx + warm + o.iters + 2;
    const int both = !strcmp(o.select, "both");
    /* set 0 dense and set 1 sparse in engine 0 (the engine's rows unless
     * --select says); with both, set 2 sparse in engine 1 (per head) */
    const int n_sets = both ? 3 : 2;
    attnd_engine *eng[2] = {NULL, NULL};
    eng[0] = engine_make(&o, m, 2 * B, max_tok, entry_bytes,
                         !strcmp(o.select, "per-head") ? 1 : atoi(o.select));
    if (!eng[0] || (both && !(eng[1] = engine_make(&o, m, B, max_tok, entry_bytes, 1))))
        return strncmp(o.device, "cuda", 4) == 0 ? 77 : 1;
    attnd_error err;
    attnd_session_policy pol = {.dflt = o.pol};
    attnd_session_id *ids = calloc((size_t)3 * B, sizeof *ids);
    const int64_t chunk = 4096;
    uint16_t *kv = malloc((size_t)chunk * entry_bytes);
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    for (int32_t i = 0; i < n_sets * B; i++) {
        attnd_engine *e = eng[i >= 2 * B];
        attnd_status st = i < B ? attnd_engine_session_create(e, (uint64_t)max_tok, &ids[i], &err)
                                : attnd_engine_session_create_policy(e, (uint64_t)max_tok, &pol,
                                                                     NULL, &ids[i], &err);
        if (st) {
            fprintf(stderr, "attnd-sparse-bench: session: %s\n", err.msg);
            return 1;
        }
    }
    /* the same KV in session i, B + i (and 2B + i) */
    for (int64_t t = 0; t < o.ctx; t += chunk) {
        int64_t n = o.ctx - t < chunk ? o.ctx - t : chunk;
        for (int32_t i = 0; i < B; i++) {
            fill_bf16(kv, (size_t)(n * te), &seed);
            for (int32_t k = 0; k < n_sets; k++)
                if (attnd_engine_append(eng[k == 2], &ids[i + k * B], 0, (uint64_t)t, (uint64_t)n,
                                        ATTND_DTYPE_BF16, kv, &err)) {
                    fprintf(stderr, "attnd-sparse-bench: append: %s\n", err.msg);
                    return 1;
                }
        }
    }
    /* the narrow wire: W_UK and W_UV in every engine, queries in the heads
     * form (q_nope then q_rope per head) */
    const int32_t d_nope = o.heads ? 128 : 0, d_vo = o.heads ? 128 : 0;
    if (o.heads) {
        const size_t wn = (size_t)m->n_q_heads * (size_t)d_nope * (size_t)m->d_latent;
        uint16_t *wuk = malloc(wn * 2), *wuv = malloc(wn * 2);
        fill_bf16(wuk, wn, &seed);
        fill_bf16(wuv, wn, &seed);
        attnd_engine_weights w = {.d_nope = d_nope, .uk_dtype = ATTND_DTYPE_BF16, .w_uk = wuk,
                                  .d_vo = d_vo, .uv_dtype = ATTND_DTYPE_BF16, .w_uv = wuv};
        for (int k = 0; k < 2; k++)
            if (eng[k] && attnd_engine_load_weights(eng[k], 0, &w, NULL, &err)) {
                fprintf(stderr, "attnd-sparse-bench: weights: %s\n", err.msg);
                return 1;
            }
        free(wuk);
        free(wuv);
    }
    size_t q_elems = (size_t)B * m->n_q_heads *
                     (size_t)(o.heads ? d_nope + m->d_rope : attnd_model_d_k(m));
    uint16_t *q = malloc(q_elems * 2), *nk = malloc((size_t)B * entry_bytes);
    /* given-tokens: each session's list, drawn again every round */
    uint32_t *g_indptr = calloc((size_t)B + 1, sizeof *g_indptr);
    uint64_t *g_idx = calloc((size_t)B * (size_t)(o.given ? o.given : 1), sizeof *g_idx);
    attnd_engine_ws ws;
    attnd_engine_ws_init(&ws);
    set_times st[3];
    memset(st, 0, sizeof st);
    for (int k = 0; k < n_sets; k++) {
        st[k].wall = calloc((size_t)o.iters, sizeof(double));
        st[k].cpu = calloc((size_t)o.iters, sizeof(double));
        st[k].sel = calloc((size_t)o.iters, sizeof(double));
        for (int j = 0; j < N_PHASES; j++)
            st[k].phase[j] = calloc((size_t)o.iters, sizeof(double));
    }
    for (int it = -warm; it < o.iters; it++) {
        fill_bf16(q, q_elems, &seed);
        fill_bf16(nk, (size_t)B * te, &seed);
        if (o.given) { /* K of the tokens before this round's: one in each K-th part */
            const int64_t n = o.ctx + warm + it, K = o.given;
            for (int32_t i = 0; i < B; i++) {
                for (int64_t j = 0; j < K; j++) {
                    int64_t a = j * n / K, b = (j + 1) * n / K;
                    g_idx[(size_t)i * K + j] =
                        (uint64_t)(a + (int64_t)((next_u64(&seed) >> 11) % (uint64_t)(b - a)));
                }
                g_indptr[i + 1] = (uint32_t)((i + 1) * K);
            }
        }
        for (int k = 0; k < n_sets; k++) {
            attnd_engine *e = eng[k == 2];
            attnd_attend_req req = {.layer = 0, .n_seqs = (uint32_t)B, .ids = ids + k * B,
                                    .q_tokens = 1, .q_dtype = ATTND_DTYPE_BF16, .q = q,
                                    .new_kv_dtype = ATTND_DTYPE_BF16, .new_kv = nk,
                                    .want_lse = 1,
                                    .q_form = o.heads ? ATTND_Q_HEADS : ATTND_Q_ABSORBED,
                                    .d_nope = d_nope, .d_vo = d_vo};
            if (k && o.given) {
                req.given_groups = 1;
                req.given_indptr = g_indptr;
                req.given_idx = g_idx;
            }
            const float *out, *lse;
            attnd_engine_stats s0, s1;
            attnd_engine_get_stats(e, &s0);
            double c0 = cpu_us();
            uint64_t t0 = attnd_clock_ns();
            if (attnd_engine_attend(e, &req, &ws, &out, &lse, &err)) {
                fprintf(stderr, "attnd-sparse-bench: attend: %s\n", err.msg);
                return 1;
            }
            double us = (double)(attnd_clock_ns() - t0) * 1e-3, cpu = cpu_us() - c0;
            attnd_engine_get_stats(e, &s1);
            if (it < 0)
                continue;
            st[k].wall[it] = us;
            st[k].cpu[it] = cpu;
            st[k].kv += s1.kv_bytes_read - s0.kv_bytes_read;
            const uint64_t ph[N_PHASES] = {ws.phases.host_ns, ws.phases.append_ns,
                                           ws.phases.enqueue_ns,
                                           ws.phases.overlap_ns, ws.phases.wait_ns,
                                           ws.phases.gpu_ns};
            for (int j = 0; j < N_PHASES; j++)
                st[k].phase[j][it] = (double)ph[j] * 1e-3;
            if (k) {
                st[k].sel[it] = (double)ws.select_ns * 1e-3;
                st[k].sel_bytes += s1.select_bytes_read - s0.select_bytes_read;
            }
        }
    }
    char what[96];
    if (o.pol.kind == ATTND_POLICY_STREAMING)
        snprintf(what, sizeof what, "streaming sink %u window %u", o.pol.sink, o.pol.window);
    else if (o.given)
        snprintf(what, sizeof what, "given-tokens %lld tokens per session (random, new each "
                 "round)", (long long)o.given);
    else if (o.pol.topk)
        snprintf(what, sizeof what, "topk-pages %u pages, sink %u", o.pol.topk, o.pol.sink);
    else
        snprintf(what, sizeof what, "topk-pages 1/%.3g of the pages, sink %u",
                 1.0 / (double)o.pol.topk_fraction, o.pol.sink);
    printf("model %s, %s, context %lld, batch %d, page %d, %d kernel threads, path %s, %d "
           "rounds\n", o.model, o.device, (long long)o.ctx, B, o.page_size,
           o.threads ? o.threads : -1, attnd_kernel_path_name(), o.iters);
    printf("policy %s; page scoring rows: %s; query form %s\n", what,
           both ? "the engine's default (sparse), per head (sparse/head)" : o.select,
           o.heads ? "heads (d_nope 128, outputs up-projected to 128)" : "absorbed");
    printf("  per Attend (us)    wall p50   wall min    CPU p50   KV read per call\n");
    print_set("dense", &st[0], o.iters, 0);
    print_set("sparse", &st[1], o.iters, 1);
    if (both)
        print_set("sparse/head", &st[2], o.iters, 1);
    print_ratio(both ? "default" : o.select, &st[0], &st[1], o.iters);
    if (both)
        print_ratio("per-head", &st[0], &st[2], o.iters);
    print_phases("phases dense", &st[0], o.iters);
    print_phases("phases sparse", &st[1], o.iters);
    if (both)
        print_phases("phases s/head", &st[2], o.iters);
    for (int k = 0; k < n_sets; k++) {
        for (int j = 0; j < N_PHASES; j++)
            free(st[k].phase[j]);
        free(st[k].wall);
        free(st[k].cpu);
        free(st[k].sel);
    }
    free(g_idx);
    free(g_indptr);
    free(q);
    free(nk);
    free(kv);
    free(ids);
    attnd_engine_ws_cleanup(&ws);
    attnd_engine_destroy(eng[0]);
    if (eng[1])
        attnd_engine_destroy(eng[1]);
    return 0;
}
