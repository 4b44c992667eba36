/* attnd-cli demo: a short end-to-end decode with every result checked.
 *
 * It does what a compute node does, with random numbers for activations:
 * create N sessions, prefill T tokens of fresh random KV into every layer of
 * each (AppendKV, one stream per session, in chunks), then K decode steps
 * over all layers, each layer one Attend per batch of sessions carrying
 * each session's new-token KV (positions given). It keeps its own copy of
 * all KV as the worker stores it (attnd_refcheck) and compares outputs with
 * the float64 reference: all of them when that is cheap, else a sampled
 * subset per Attend call (it says which). Exit 0 only when the worst
 * normwise relative error is within the bound for the output dtype
 * (bf16 1e-2, f16 1e-3, f32 1e-5).
 *
 * Sizes: the defaults (4 sessions, 1024 tokens, 16 steps) suit small and
 * medium models. For a model whose attention is heavy (DeepSeek-V3: 128
 * heads of 576 + 512 per token), the demo learns the model from
 * CreateSession and, unless --prefill or --steps was given, shortens the
 * prefill so that the worker's arithmetic stays near DEMO_WORK_FLOPS.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attnd_clock.h"
#include "cli.h"
#include "refcheck.h"

/* Worker arithmetic (2 flops per K and V element per head) a default run
 * aims at: a few seconds on one core. */
#define DEMO_WORK_FLOPS 3e10
/* The demo's copy of the KV it sent (bytes) a default run aims at. */
#define DEMO_COPY_BYTES (256.0 * 1024 * 1024)
/* Client float64 reference work (element operations) before sampling. */
#define DEMO_CHECK_OPS 1.5e9

typedef struct demo_opts {
    uint32_t sessions, prefill, steps, batch, chunk;
    attnd_dtype dtype;
    uint64_t seed;
    int seed_set, prefill_set, steps_set;
    int api; /* 0 unary, 1 async, 2 stream */
} demo_opts;

typedef struct demo {
    attnd_client *c;
    demo_opts o;
    attnd_model_info m;
    attnd_session_id *ids;
    uint32_t n_ids;
    attnd_refcheck rc;
    attnd_rng rng;
    double *lat_us;
    size_t n_lat;
    attnd_refcheck_result res;
    uint64_t rows_made, check_every;
    uint32_t check_heads; /* heads per sampled check; Hq: all */
    int check_all;
    /* per batch group g: q, new_kv, out, positions */
    unsigned char *q, *kv, *out;
    uint64_t *pos;
    size_t q_bytes, kv_bytes, out_bytes; /* per group */
} demo;

static const char *api_names[] = {"unary", "async", "stream"};

static void demo_usage(FILE *f)
{
    fprintf(f, "usage: attnd-cli [--target HOST:PORT] demo [--sessions N] [--prefill T] "
               "[--steps K]\n"
               "           [--batch B] [--chunk C] [--dtype bf16|f16|f32] [--seed S] "
               "[--api unary|async|stream]\n"
               "  --sessions N  sessions (default 4)\n"
               "  --prefill T   prefill tokens per session and layer (default 1024; shorter "
               "for heavy models)\n"
               "  --steps K     decode steps over all layers (default 16)\n"
               "  --batch B     sessions per Attend call (default: all)\n"
               "  --chunk C     tokens per AppendKV chunk (default 256)\n"
               "  --dtype D     dtype of the KV, queries and outputs sent (default bf16)\n"
               "  --seed S      random seed (default: from the clock)\n"
               "  --api A       unary Attend, async Attend (a layer's batches in flight "
               "together), or one AttendStream (default unary)\n");
}

static int parse_opts(demo_opts *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    o->sessions = 4;
    o->prefill = 1024;
    o->steps = 16;
    o->chunk = 256;
    o->dtype = ATTND_DTYPE_BF16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long n;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            demo_usage(stdout);
            return 1;
        }
        if (!v) {
            fprintf(stderr, "attnd-cli demo: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (strcmp(a, "--dtype") == 0) {
            o->dtype = strcmp(v, "bf16") == 0  ? ATTND_DTYPE_BF16
                       : strcmp(v, "f16") == 0 ? ATTND_DTYPE_F16
                       : strcmp(v, "f32") == 0 ? ATTND_DTYPE_F32
                                               : ATTND_DTYPE_INVALID;
            if (o->dtype == ATTND_DTYPE_INVALID) {
                fprintf(stderr, "attnd-cli demo: --dtype: expected bf16, f16 or f32, got \"%s\"\n",
                        v);
                return 2;
            }
            continue;
        }
        if (strcmp(a, "--api") == 0) {
            o->api = -1;
            for (int k = 0; k < 3; k++)
                if (strcmp(v, api_names[k]) == 0)
                    o->api = k;
            if (o->api < 0) {
                fprintf(stderr, "attnd-cli demo: --api: expected unary, async or stream, got "
                                "\"%s\"\n", v);
                return 2;
            }
            continue;
        }
        static const char *const numeric[] = {"--sessions", "--prefill", "--steps", "--batch",
                                              "--chunk", "--seed"};
        int known = 0;
        for (size_t k = 0; k < sizeof numeric / sizeof numeric[0]; k++)
            known |= strcmp(a, numeric[k]) == 0;
        if (!known) {
            fprintf(stderr, "attnd-cli demo: unknown option %s (see demo --help)\n", a);
            return 2;
        }
        n = attnd_cli_parse_count(v);
        int is_seed = strcmp(a, "--seed") == 0;
        if (n < (is_seed ? 0 : 1) || (!is_seed && n > 1000000)) {
            fprintf(stderr, "attnd-cli demo: %s: expected a %s integer, got \"%s\"\n", a,
                    is_seed ? "non-negative" : "positive (up to 1000000)", v);
            return 2;
        }
        if (strcmp(a, "--sessions") == 0) {
            o->sessions = (uint32_t)n;
        } else if (strcmp(a, "--prefill") == 0) {
            o->prefill = (uint32_t)n;
            o->prefill_set = 1;
        } else if (strcmp(a, "--steps") == 0) {
            o->steps = (uint32_t)n;
            o->steps_set = 1;
        } else if (strcmp(a, "--batch") == 0) {
            o->batch = (uint32_t)n;
        } else if (strcmp(a, "--chunk") == 0) {
            o->chunk = (uint32_t)n;
        } else {
            o->seed = (uint64_t)n;
            o->seed_set = 1;
        }
    }
    if (o->batch == 0 || o->batch > o->sessions)
        o->batch = o->sessions;
    if (!o->seed_set)
        o->seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
    return 0;
}

static int fail_call(const char *what, const attnd_error *err)
{
    fprintf(stderr, "attnd-cli demo: %s: %s: %s\n", what, attnd_status_string(err->code),
            err->msg);
    return 1;
}

/* Worker flops of the whole decode for prefill t. */
static double decode_flops(const demo *d, double t)
{
    const attnd_model_info *m = &d->m;
    double per_ctx = 2.0 * d->o.sessions * m->n_layers * m->n_q_heads * (m->d_k + m->d_v);
    return per_ctx * d->o.steps * (t + (d->o.steps + 1) / 2.0);
}

/* Shorten the prefill of a heavy model (unless sizes were given) so that
 * the worker's arithmetic stays near DEMO_WORK_FLOPS and the KV copy near
 * DEMO_COPY_BYTES. */
static void fit_sizes(demo *d)
{
    const attnd_model_info *m = &d->m;
    double copy_per_tok = (double)d->o.sessions * m->n_layers * m->kv_token_elems *
                          attnd_dtype_size(m->kv_dtype);
    double t_mem = DEMO_COPY_BYTES / copy_per_tok - d->o.steps;
    double per_tok = decode_flops(d, 1) - decode_flops(d, 0);
    double t_work = (DEMO_WORK_FLOPS - decode_flops(d, 0)) / per_tok;
    double t = t_mem < t_work ? t_mem : t_work;

    if (d->o.prefill_set || d->o.steps_set || t >= d->o.prefill)
        return;
    uint32_t old = d->o.prefill;
    d->o.prefill = t < 128 ? 128 : (uint32_t)t;
    printf("note: %s is heavy (%u layers x %u heads of %u + %u, %u-element KV entries); "
           "prefill shortened from %u to %u tokens to keep this run short (give --prefill / "
           "--steps to choose)\n",
           m->name, m->n_layers, m->n_q_heads, m->d_k, m->d_v, m->kv_token_elems, old,
           d->o.prefill);
}

/* Decide what to check: everything, or per Attend call `check_heads`
 * consecutive heads of one random session, every check_every-th call. */
static void plan_checks(demo *d)
{
    const attnd_model_info *m = &d->m;
    double ctx = d->o.prefill + d->o.steps / 2.0, w = (double)(m->d_k + m->d_v);
    double hkv = m->kind == ATTND_ATTN_GQA ? m->n_kv_heads : 1;
    double calls = (double)d->o.steps * m->n_layers * ((d->o.sessions + d->o.batch - 1) / d->o.batch);
    double all = (double)d->o.sessions * d->o.steps * m->n_layers * ctx * w * (3 * hkv + 2.0 * m->n_q_heads);

    d->check_every = 1;
    if (all <= DEMO_CHECK_OPS) {
        d->check_all = 1;
        d->check_heads = m->n_q_heads;
        return;
    }
    double per_call = DEMO_CHECK_OPS / calls, unit = ctx * w;
    double h = (per_call / unit - 3) / 2;
    if (h < 1) {
        h = 1;
        d->check_every = (uint64_t)ceil(5 * unit / per_call);
    }
    uint32_t group = m->n_q_heads / (uint32_t)hkv;
    d->check_heads = h > group ? group : (uint32_t)h;
}

static int create_sessions(demo *d)
{
    attnd_error err;

    d->ids = calloc(d->o.sessions, sizeof *d->ids);
    if (!d->ids)
        return fprintf(stderr, "attnd-cli demo: out of memory\n"), 1;
    for (uint32_t i = 0; i < d->o.sessions; i++) {
        attnd_error_clear(&err);
        if (attnd_client_create_session(d->c, NULL, 0, &d->ids[i], i ? NULL : &d->m, &err))
            return fail_call("CreateSession", &err);
        d->n_ids++;
    }
    return 0;
}

static int prefill(demo *d)
{
    const attnd_model_info *m = &d->m;
    const uint32_t T = d->o.prefill, C = d->o.chunk, L = m->n_layers;
    const size_t eb = (size_t)m->kv_token_elems * attnd_dtype_size(d->o.dtype);
    const uint32_t per_layer = (T + C - 1) / C;
    attnd_kv_chunk *chunks = calloc((size_t)per_layer * L, sizeof *chunks);
    unsigned char *buf = malloc((size_t)T * L * eb);
    double elapsed = 0; /* in AppendKV calls only */
    attnd_error err;
    int rc = 1;

    if (!chunks || !buf) {
        fprintf(stderr, "attnd-cli demo: out of memory for the prefill\n");
        goto out;
    }
    for (uint32_t s = 0; s < d->o.sessions; s++) {
        size_t n = 0, applied = 0;
        for (uint32_t l = 0; l < L; l++) {
            unsigned char *lb = buf + (size_t)l * T * eb;
            attnd_rng_fill(&d->rng, d->o.dtype, lb, (size_t)T * m->kv_token_elems);
            if (attnd_refcheck_append(&d->rc, s, l, T, d->o.dtype, lb)) {
                fprintf(stderr, "attnd-cli demo: out of memory for the KV copy\n");
                goto out;
            }
            for (uint32_t t = 0; t < T; t += C, n++)
                chunks[n] = (attnd_kv_chunk){
                    .session = d->ids[s],
                    .layer = l,
                    .start = t,
                    .n_tokens = T - t < C ? T - t : C,
                    .kv_token_elems = m->kv_token_elems,
                    .dtype = d->o.dtype,
                    .data = lb + (size_t)t * eb,
                };
        }
        attnd_error_clear(&err);
        double t0 = attnd_clock_s();
        attnd_status st = attnd_client_append_kv(d->c, chunks, n, &applied, &err);
        elapsed += attnd_clock_s() - t0;
        if (st) {
            fail_call("AppendKV", &err);
            fprintf(stderr, "attnd-cli demo: (%zu of %zu chunks applied)\n", applied, n);
            goto out;
        }
    }
    double mb = (double)d->o.sessions * L * T * eb / 1e6;
    printf("prefill: %u sessions x %u layers x %u tokens = %" PRIu64 " KV entries in %" PRIu64
           " chunks over AppendKV, %.1f MB in %.1f ms (%.0f MB/s)\n",
           d->o.sessions, L, T, (uint64_t)d->o.sessions * L * T,
           (uint64_t)d->o.sessions * L * per_layer, mb, elapsed * 1e3, mb / elapsed);
    rc = 0;
out:
    free(chunks);
    free(buf);
    return rc;
}

/* Fill group g's request: sessions [first, first + b), step k. */
static void fill_args(demo *d, attnd_attend_args *a, uint32_t g, uint32_t first, uint32_t b,
                      uint32_t layer)
{
    const attnd_model_info *m = &d->m;
    unsigned char *q = d->q + g * d->q_bytes, *kv = d->kv + g * d->kv_bytes;
    uint64_t *pos = d->pos + (size_t)g * d->o.batch;

    attnd_rng_fill(&d->rng, d->o.dtype, q, (size_t)b * m->n_q_heads * m->d_k);
    attnd_rng_fill(&d->rng, d->o.dtype, kv, (size_t)b * m->kv_token_elems);
    for (uint32_t i = 0; i < b; i++)
        pos[i] = attnd_refcheck_len(&d->rc, first + i, layer);
    memset(a, 0, sizeof *a);
    a->layer = layer;
    a->n_seqs = b;
    a->sessions = d->ids + first;
    a->q = (attnd_tensor){.dtype = d->o.dtype, .ndim = 3,
                          .shape = {b, m->n_q_heads, m->d_k}, .data = q};
    if (m->kind == ATTND_ATTN_MLA)
        a->new_kv = (attnd_tensor){.dtype = d->o.dtype, .ndim = 2,
                                   .shape = {b, m->kv_token_elems}, .data = kv};
    else
        a->new_kv = (attnd_tensor){.dtype = d->o.dtype, .ndim = 4,
                                   .shape = {b, 2, m->n_kv_heads, m->head_dim}, .data = kv};
    a->positions = pos;
    a->out = d->out + g * d->out_bytes;
    a->out_capacity = d->out_bytes;
}

/* Record group g's new KV in the copy and check its outputs. */
static int check_group(demo *d, const attnd_attend_args *a, uint32_t first, uint64_t call_no)
{
    const attnd_model_info *m = &d->m;
    const size_t q_row = (size_t)m->n_q_heads * m->d_k * attnd_dtype_size(d->o.dtype);
    const size_t o_row = (size_t)m->n_q_heads * m->d_v * attnd_dtype_size(d->o.dtype);
    const size_t kv_row = (size_t)m->kv_token_elems * attnd_dtype_size(d->o.dtype);

    for (uint32_t i = 0; i < a->n_seqs; i++)
        if (attnd_refcheck_append(&d->rc, first + i, a->layer, 1, d->o.dtype,
                                  (const unsigned char *)a->new_kv.data + i * kv_row))
            return -1;
    d->rows_made += (uint64_t)a->n_seqs * m->n_q_heads;
    if (call_no % d->check_every)
        return 0;
    uint32_t lo = 0, hi = a->n_seqs;
    if (!d->check_all) {
        lo = (uint32_t)(attnd_rng_next(&d->rng) % a->n_seqs);
        hi = lo + 1;
    }
    for (uint32_t i = lo; i < hi; i++) {
        uint32_t s = first + i, h0 = 0, h1 = m->n_q_heads;
        if (!d->check_all) {
            h0 = (uint32_t)(attnd_rng_next(&d->rng) % (m->n_q_heads - d->check_heads + 1));
            h1 = h0 + d->check_heads;
        }
        if (attnd_refcheck_token(&d->rc, s, a->layer, attnd_refcheck_len(&d->rc, s, a->layer),
                                 d->o.dtype, (const unsigned char *)a->q.data + i * q_row,
                                 d->o.dtype, (const unsigned char *)a->out + i * o_row, NULL,
                                 h0, h1, &d->res))
            return -1;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *v, size_t n, double p)
{
    size_t i = (size_t)ceil(p / 100.0 * (double)n);
    return v[i ? i - 1 : 0];
}

static int decode(demo *d)
{
    const attnd_model_info *m = &d->m;
    const uint32_t B = d->o.batch, groups = (d->o.sessions + B - 1) / B;
    const size_t ds = attnd_dtype_size(d->o.dtype);
    attnd_attend_args *args = calloc(groups, sizeof *args);
    attnd_call **calls = calloc(groups, sizeof *calls);
    double *t0 = calloc(groups, sizeof *t0); /* async: when each call started */
    attnd_stream *stream = NULL;
    attnd_error err;
    uint64_t call_no = 0;
    double t_all = 0;
    int rc = 1;

    d->q_bytes = (size_t)B * m->n_q_heads * m->d_k * ds;
    d->kv_bytes = (size_t)B * m->kv_token_elems * ds;
    d->out_bytes = (size_t)B * m->n_q_heads * m->d_v * ds;
    d->q = malloc(groups * d->q_bytes);
    d->kv = malloc(groups * d->kv_bytes);
    d->out = malloc(groups * d->out_bytes);
    d->pos = calloc((size_t)groups * B, sizeof *d->pos);
    d->lat_us = calloc((size_t)d->o.steps * m->n_layers * groups, sizeof *d->lat_us);
    if (!args || !calls || !t0 || !d->q || !d->kv || !d->out || !d->pos || !d->lat_us) {
        fprintf(stderr, "attnd-cli demo: out of memory for the decode\n");
        goto out;
    }
    attnd_error_clear(&err);
    if (d->o.api == 2 && attnd_client_stream_open(d->c, &stream, &err)) {
        fail_call("AttendStream", &err);
        goto out;
    }
    for (uint32_t k = 0; k < d->o.steps; k++) {
        for (uint32_t l = 0; l < m->n_layers; l++) {
            for (uint32_t g = 0; g < groups; g++) {
                uint32_t first = g * B, b = d->o.sessions - first < B ? d->o.sessions - first : B;
                fill_args(d, &args[g], g, first, b, l);
                double t = attnd_clock_s();
                attnd_status st;
                attnd_error_clear(&err);
                if (d->o.api == 1) {
                    t0[g] = t;
                    st = attnd_client_attend_async(d->c, &args[g], &calls[g], &err);
                } else {
                    st = d->o.api == 2 ? attnd_stream_attend(stream, &args[g], &err)
                                       : attnd_client_attend(d->c, &args[g], &err);
                    d->lat_us[d->n_lat++] = (attnd_clock_s() - t) * 1e6;
                    t_all += attnd_clock_s() - t;
                }
                if (st) {
                    fail_call("Attend", &err);
                    for (uint32_t h = 0; d->o.api == 1 && h < g; h++)
                        attnd_call_wait(calls[h], NULL);
                    goto out;
                }
            }
            for (uint32_t g = 0; d->o.api == 1 && g < groups; g++) {
                attnd_error_clear(&err);
                attnd_status st = attnd_call_wait(calls[g], &err);
                double t = attnd_clock_s();
                d->lat_us[d->n_lat++] = (t - t0[g]) * 1e6;
                if (g + 1 == groups)
                    t_all += t - t0[0];
                if (st) {
                    fail_call("Attend (async)", &err);
                    for (uint32_t h = g + 1; h < groups; h++)
                        attnd_call_wait(calls[h], NULL);
                    goto out;
                }
            }
            for (uint32_t g = 0; g < groups; g++)
                if (check_group(d, &args[g], g * B, call_no++)) {
                    fprintf(stderr, "attnd-cli demo: out of memory for the check\n");
                    goto out;
                }
        }
    }
    if (stream) {
        attnd_error_clear(&err);
        attnd_status st = attnd_stream_close(stream, &err);
        stream = NULL;
        if (st) {
            fail_call("AttendStream close", &err);
            goto out;
        }
    }
    qsort(d->lat_us, d->n_lat, sizeof *d->lat_us, cmp_double);
    printf("decode: %u steps x %u layers x %u batch%s = %zu Attend calls (%s) of %s%u "
           "sequence%s, each appending the new token's KV\n",
           d->o.steps, m->n_layers, groups, groups == 1 ? "" : "es", d->n_lat,
           api_names[d->o.api], d->o.sessions % B ? "up to " : "", B, B == 1 ? "" : "s");
    printf("  latency per Attend (us): p50 %.0f  p90 %.0f  p99 %.0f  max %.0f\n",
           pct(d->lat_us, d->n_lat, 50), pct(d->lat_us, d->n_lat, 90),
           pct(d->lat_us, d->n_lat, 99), d->lat_us[d->n_lat - 1]);
    printf("  throughput: %.0f Attend calls/s, %.0f tokens/s through all %u layers "
           "(%u sessions)\n",
           (double)d->n_lat / t_all, (double)d->o.steps * d->o.sessions / t_all, m->n_layers,
           d->o.sessions);
    rc = 0;
out:
    if (stream)
        attnd_stream_close(stream, NULL);
    free(args);
    free(calls);
    free(t0);
    return rc;
}

static void close_sessions(demo *d)
{
    for (uint32_t i = 0; i < d->n_ids; i++)
        attnd_client_close_session(d->c, &d->ids[i], NULL);
}

static double bound_for(attnd_dtype t)
{
    return t == ATTND_DTYPE_F32 ? 1e-5 : t == ATTND_DTYPE_F16 ? 1e-3 : 1e-2;
}

int attnd_cli_demo(const char *target, const attnd_client_options *opts, int argc,
                   char **argv)
{
    attnd_error err;
    demo d;
    int rc;

    memset(&d, 0, sizeof d);
    rc = parse_opts(&d.o, argc, argv);
    if (rc)
        return rc == 1 ? 0 : rc;
    attnd_error_clear(&err);
    if (attnd_client_connect(target, opts, &d.c, &err)) {
        fprintf(stderr, "attnd-cli: %s: %s\n", attnd_status_string(err.code), err.msg);
        return 1;
    }
    attnd_rng_seed(&d.rng, d.o.seed);
    if ((rc = create_sessions(&d)))
        goto out;
    fit_sizes(&d);
    if (d.o.prefill + d.o.steps > 1000000 || attnd_refcheck_init(&d.rc, &d.m, d.o.sessions)) {
        fprintf(stderr, "attnd-cli demo: out of memory\n");
        rc = 1;
        goto out;
    }
    plan_checks(&d);
    printf("attnd-cli demo: %s, model %s (%s, %u layers, %u q heads, %u kv heads, d_k %u, "
           "d_v %u, kv %s, page %u)\n",
           target, d.m.name, d.m.kind == ATTND_ATTN_MLA ? "MLA" : "GQA", d.m.n_layers,
           d.m.n_q_heads, d.m.n_kv_heads, d.m.d_k, d.m.d_v, attnd_dtype_name(d.m.kv_dtype),
           d.m.page_size);
    printf("sessions %u, prefill %u tokens, %u decode steps, batch %u, dtype %s, seed %" PRIu64
           "\n",
           d.o.sessions, d.o.prefill, d.o.steps, d.o.batch, attnd_dtype_name(d.o.dtype),
           d.o.seed);
    if ((rc = prefill(&d)) || (rc = decode(&d)))
        goto out;
    double bound = bound_for(d.o.dtype);
    if (d.check_all)
        printf("check: all %" PRIu64 " (session, head) outputs against the float64 reference\n",
               d.res.rows);
    else
        printf("check: sampled %" PRIu64 " of %" PRIu64 " (session, head) outputs against the "
               "float64 reference: %u consecutive heads of one random session in every %s"
               "Attend call\n",
               d.res.rows, d.rows_made, d.check_heads,
               d.check_every > 1 ? "few " : "");
    if (d.check_every > 1)
        printf("  (every %" PRIu64 "th call)\n", d.check_every);
    rc = d.res.max_err <= bound ? 0 : 1;
    printf("  max relative error %.3g (normwise per head; bound %.0e for %s output): %s\n",
           d.res.max_err, bound, attnd_dtype_name(d.o.dtype), rc ? "FAIL" : "PASS");
out:
    close_sessions(&d);
    attnd_client_destroy(d.c);
    attnd_refcheck_cleanup(&d.rc);
    free(d.ids);
    free(d.lat_us);
    free(d.q);
    free(d.kv);
    free(d.out);
    free(d.pos);
    return rc;
}
