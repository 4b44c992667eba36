/* attnd-bench flags: defaults, parsing, usage, and the prompt-length
 * distribution.
 *
 * Every flag takes a value except the switches (--check, --baseline,
 * --no-progress, --help). Durations accept "8", "8s", "500ms", "2m";
 * numbers are checked for range and the message names the flag. Sizes
 * that depend on each other (sessions = lanes x micro-batches x batch) are
 * resolved once the flags are read.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: attnd-bench [options]\n"
        "Drive an attnd with a decode workload and report latency and throughput.\n"
        "server:\n"
        "  --target HOST:PORT  attnd to drive; without it a local attnd is started on\n"
        "                      loopback (--attnd PATH, --model, --kv-memory) and stopped after\n"
        "  --transport T       grpc | ucx: how Attend travels (control is always gRPC; ucx\n"
        "                      needs an attnd with --ucx-listen, which a spawned one gets)\n"
        "  --connections N     client connections, lanes spread over them (default 1)\n"
        "workload (the model comes from the server's ModelInfo):\n"
        "  --model NAME        preset for the spawned attnd (default llama3-8b); with\n"
        "                      --target, the model the sessions must have\n"
        "  --sessions N        sessions in all (default lanes x micro-batches x batch)\n"
        "  --batch B           sessions per Attend call (default 4, or from --sessions)\n"
        "  --microbatches M    micro-batches per lane in flight, ping-pong (default 2)\n"
        "  --prompt-len P      N | uniform:A:B | file:PATH (one length a line) (default 256)\n"
        "  --chunk T           tokens per AppendKV message in the prefill (default 256)\n"
        "  --steps K           decode steps per lane at most; alone, it ends the run\n"
        "                      (default: until --duration)\n"
        "  --dtype D           bf16 | f16 | f32 for queries, KV and outputs (default bf16)\n"
        "  --wire W            MLA: absorbed | heads. heads (the default for MLA models) sends\n"
        "                      per-head q [B, Hq, d_nope + d_rope] and gets [B, Hq, d_v]: the\n"
        "                      bench loads random bf16 W_UK/W_UV into every layer first\n"
        "  --d-nope N, --d-v N the heads form's widths (default 128, 128: DeepSeek-V3)\n"
        "  --seed S            random seed (default: from the clock)\n"
        "load:\n"
        "  --concurrency C     lanes: closed loop, C steps in flight (default 1); open loop:\n"
        "                      at most C steps in flight (default 4)\n"
        "  --rate R            open loop: R decode steps per second arrive\n"
        "  --arrivals A        constant | poisson (default constant)\n"
        "  --duration T        measured window (default 8s)\n"
        "  --warmup T          decode before the window, not measured (default 1s)\n"
        "  --late-ms X         open loop: a step starting X ms after its arrival is late\n"
        "                      (default 1)\n"
        "  --slo-ms X          per-step latency SLO for goodput (default: none)\n"
        "  --deadline-ms X     per-call deadline (default 30000)\n"
        "security (a --target with --tls-cert or --token-file):\n"
        "  --tls-ca FILE       PEM CA(s) of the server's certificate: gRPC over TLS\n"
        "  --tls-cert FILE  --tls-key FILE  this client's certificate (mutual TLS)\n"
        "  --tls-server-name NAME  the name on the server's certificate, when not the host\n"
        "  --token-file FILE   bearer token (its first line); or $ATTND_TOKEN\n"
        "checks and baselines:\n"
        "  --check             compare every output with the float64 reference; exit 1 on\n"
        "                      any mismatch (runs between steps: latencies stay honest,\n"
        "                      throughput does not)\n"
        "  --baseline          also run a bare ping-pong of the same message sizes over the\n"
        "                      same transport (gRPC unary, or UCX active messages)\n"
        "reports:\n"
        "  --json FILE  --csv FILE  --plot FILE.png (gnuplot)  --no-progress\n"
        "  --kv-memory SIZE    KV memory of the spawned attnd (default 2Gi)\n"
        "  --policy P          every session's sparse policy: full,\n"
        "                      topk-pages,fraction=F[,sink=N] | topk-pages,topk=K[,sink=N] |\n"
        "                      streaming,window=W[,sink=N] | given-tokens,tokens=K (K token\n"
        "                      positions a session a step, drawn at random, the caller's\n"
        "                      own indexer) (README \"Sparse attention\");\n"
        "                      the report adds KV bytes read per step next to dense\n"
        "exit: 0 ok; 1 failed calls, check mismatch or unclean attnd exit; 2 bad flags;\n"
        "3 could not run. See client/BENCH.md.\n");
}

/* "8", "8s", "500ms", "2m" -> seconds; -1 when malformed. */
static double parse_duration(const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return -1;
    if (*end == '\0' || strcmp(end, "s") == 0)
        return v;
    if (strcmp(end, "ms") == 0)
        return v / 1000.0;
    if (strcmp(end, "m") == 0)
        return v * 60.0;
    return -1;
}

/* A whole number in [lo, hi]; -1 (with a message) otherwise. */
static int parse_u64(const char *flag, const char *s, uint64_t lo, uint64_t hi, uint64_t *v_p)
{
    char *end;
    errno = 0;
    if (!s || *s < '0' || *s > '9')
        goto bad;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        goto bad;
    *v_p = v;
    return 0;
bad:
    fprintf(stderr, "attnd-bench: %s: expected an integer in [%llu, %llu], got \"%s\"\n", flag,
            (unsigned long long)lo, (unsigned long long)hi, s ? s : "");
    return -1;
}

static int parse_double(const char *flag, const char *s, double lo, double *v_p)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo)) {
        fprintf(stderr, "attnd-bench: %s: expected a number >= %g, got \"%s\"\n", flag, lo, s);
        return -1;
    }
    *v_p = v;
    return 0;
}

static int load_plen_file(attnd_bench_opts *o, const char *path)
{
    FILE *f = fopen(path, "r");
    char line[128];
    size_t cap = 0;

    if (!f) {
        fprintf(stderr, "attnd-bench: --prompt-len file:%s: %s\n", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        char *p = line, *end;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '#' || *p == '\n' || *p == '\0')
            continue;
        unsigned long v = strtoul(p, &end, 10);
        while (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')
            end++;
        if (end == p || *end || v < 1 || v > 1000000) {
            fprintf(stderr, "attnd-bench: --prompt-len file:%s: bad length \"%.*s\" (1..1000000)\n",
                    path, (int)strcspn(line, "\n"), line);
            fclose(f);
            return -1;
        }
        if (o->plen_n == cap) {
            cap = cap ? cap * 2 : 64;
            uint32_t *n = realloc(o->plen_list, cap * sizeof *n);
            if (!n) {
                fclose(f);
                fprintf(stderr, "attnd-bench: out of memory\n");
                return -1;
            }
            o->plen_list = n;
        }
        o->plen_list[o->plen_n++] = (uint32_t)v;
    }
    fclose(f);
    if (!o->plen_n) {
        fprintf(stderr, "attnd-bench: --prompt-len file:%s: no lengths\n", path);
        return -1;
    }
    return 0;
}

static int parse_plen(attnd_bench_opts *o, const char *v)
{
    uint64_t a, b;
    if (strncmp(v, "file:", 5) == 0) {
        o->plen = ATTND_BENCH_PLEN_FILE;
        return load_plen_file(o, v + 5);
    }
    if (strncmp(v, "uniform:", 8) == 0) {
        char buf[64];
        snprintf(buf, sizeof buf, "%s", v + 8);
        char *colon = strchr(buf, ':');
        if (!colon) {
            fprintf(stderr, "attnd-bench: --prompt-len: expected uniform:A:B, got \"%s\"\n", v);
            return -1;
        }
        *colon = '\0';
        if (parse_u64("--prompt-len uniform A", buf, 1, 1000000, &a) ||
            parse_u64("--prompt-len uniform B", colon + 1, a, 1000000, &b))
            return -1;
        o->plen = ATTND_BENCH_PLEN_UNIFORM;
        o->plen_a = (uint32_t)a;
        o->plen_b = (uint32_t)b;
        return 0;
    }
    if (parse_u64("--prompt-len", v, 1, 1000000, &a))
        return -1;
    o->plen = ATTND_BENCH_PLEN_FIXED;
    o->plen_a = o->plen_b = (uint32_t)a;
    return 0;
}

uint32_t attnd_bench_prompt_len(const attnd_bench_opts *o, uint32_t i, attnd_rng *rng)
{
    switch (o->plen) {
    case ATTND_BENCH_PLEN_UNIFORM:
        return o->plen_a + (uint32_t)(attnd_rng_next(rng) % ((uint64_t)o->plen_b - o->plen_a + 1));
    case ATTND_BENCH_PLEN_FILE:
        return o->plen_list[i % o->plen_n];
    default:
        return o->plen_a;
    }
}

static void copy_str(char *dst, size_t n, const char *flag, const char *v, int *bad)
{
    if (strlen(v) >= n) {
        fprintf(stderr, "attnd-bench: %s: too long\n", flag);
        *bad = 1;
        return;
    }
    memcpy(dst, v, strlen(v) + 1);
}

/* Resolve sessions / batch / lanes / micro-batches against each other. */
static int resolve_sizes(attnd_bench_opts *o, int conc_set)
{
    if (!conc_set)
        o->concurrency = o->rate > 0 ? 4 : 1;
    uint64_t per = (uint64_t)o->concurrency * o->microbatches;
    if (o->sessions && !o->batch) {
        if (o->sessions % per) {
            fprintf(stderr, "attnd-bench: --sessions %u is not a multiple of concurrency x "
                            "microbatches = %llu (each lane owns microbatches x batch sessions)\n",
                    o->sessions, (unsigned long long)per);
            return -1;
        }
        o->batch = (uint32_t)(o->sessions / per);
    }
    if (!o->batch)
        o->batch = 4;
    if (o->sessions && (uint64_t)o->sessions != per * o->batch) {
        fprintf(stderr, "attnd-bench: --sessions %u disagrees with concurrency %u x "
                        "microbatches %u x batch %u\n",
                o->sessions, o->concurrency, o->microbatches, o->batch);
        return -1;
    }
    if (per * o->batch > 100000) {
        fprintf(stderr, "attnd-bench: %llu sessions is too many (100000 at most)\n",
                (unsigned long long)(per * o->batch));
        return -1;
    }
    o->sessions = (uint32_t)(per * o->batch);
    return 0;
}

/* --policy KIND[,key=value...]: 0, or -1 with a message. given-tokens
 * takes its tokens a step into *given. */
static int parse_policy(const char *v, attnd_sparse_policy *p, uint32_t *given)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s", v);
    char *save = NULL, *tok = strtok_r(buf, ",", &save);
    memset(p, 0, sizeof *p);
    *given = 0;
    if (!tok)
        goto bad;
    if (!strcmp(tok, "full"))
        p->kind = ATTND_SPARSE_FULL;
    else if (!strcmp(tok, "streaming"))
        p->kind = ATTND_SPARSE_STREAMING;
    else if (!strcmp(tok, "topk-pages"))
        p->kind = ATTND_SPARSE_TOPK_PAGES;
    else if (!strcmp(tok, "given-tokens"))
        p->kind = ATTND_SPARSE_GIVEN_TOKENS;
    else
        goto bad;
    while ((tok = strtok_r(NULL, ",", &save))) {
        char *eq = strchr(tok, '=');
        if (!eq)
            goto bad;
        *eq = '\0';
        const char *val = eq + 1;
        if (!strcmp(tok, "sink"))
            p->sink = (uint32_t)strtoul(val, NULL, 10);
        else if (!strcmp(tok, "window"))
            p->window = (uint32_t)strtoul(val, NULL, 10);
        else if (!strcmp(tok, "topk"))
            p->topk_pages = (uint32_t)strtoul(val, NULL, 10);
        else if (!strcmp(tok, "fraction"))
            p->topk_fraction = strtof(val, NULL);
        else if (!strcmp(tok, "tokens") && p->kind == ATTND_SPARSE_GIVEN_TOKENS)
            *given = (uint32_t)strtoul(val, NULL, 10);
        else
            goto bad;
    }
    if (p->kind == ATTND_SPARSE_GIVEN_TOKENS && (*given < 1 || *given > (1u << 20)))
        goto bad;
    return 0;
bad:
    fprintf(stderr, "attnd-bench: --policy: expected full, topk-pages,fraction=F[,sink=N], "
                    "topk-pages,topk=K[,sink=N], streaming,window=W[,sink=N] or "
                    "given-tokens,tokens=K (1..1048576), got \"%s\"\n", v);
    return -1;
}

int attnd_bench_opts_parse(attnd_bench_opts *o, int argc, char **argv)
{
    int conc_set = 0, bad = 0;
    uint64_t u = 0; /* stays 0 when a parse fails (bad then ends the parse) */

    memset(o, 0, sizeof *o);
    snprintf(o->model, sizeof o->model, "llama3-8b");
    snprintf(o->transport, sizeof o->transport, "grpc");
    snprintf(o->kv_memory, sizeof o->kv_memory, "2Gi");
    o->microbatches = 2;
    o->concurrency = 1;
    o->connections = 1;
    o->plen = ATTND_BENCH_PLEN_FIXED;
    o->plen_a = o->plen_b = 256;
    o->duration_s = 8;
    o->warmup_s = 1;
    o->late_ms = 1;
    o->chunk = 256;
    o->dtype = ATTND_DTYPE_BF16;
    o->progress = 1;
    o->deadline_ms = 30000;
    o->seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
    o->wire = -1;
    o->d_nope = o->d_vh = 128;

    for (int i = 1; i < argc && !bad; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--check")) {
            o->check = 1;
            continue;
        }
        if (!strcmp(a, "--check-perturb")) { /* hidden: tests prove the check can fail */
            o->check = o->check_perturb = 1;
            continue;
        }
        if (!strcmp(a, "--baseline")) {
            o->baseline = 1;
            continue;
        }
        if (!strcmp(a, "--no-progress")) {
            o->progress = 0;
            continue;
        }
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "attnd-bench: %s: needs a value (see --help)\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--target")) {
            copy_str(o->target, sizeof o->target, a, v, &bad);
        } else if (!strcmp(a, "--tls-ca")) {
            copy_str(o->tls_ca, sizeof o->tls_ca, a, v, &bad);
        } else if (!strcmp(a, "--tls-cert")) {
            copy_str(o->tls_cert, sizeof o->tls_cert, a, v, &bad);
        } else if (!strcmp(a, "--tls-key")) {
            copy_str(o->tls_key, sizeof o->tls_key, a, v, &bad);
        } else if (!strcmp(a, "--tls-server-name")) {
            copy_str(o->tls_server_name, sizeof o->tls_server_name, a, v, &bad);
        } else if (!strcmp(a, "--token-file")) {
            FILE *f = fopen(v, "re");
            if (!f || !fgets(o->token, sizeof o->token, f) ||
                !(o->token[strcspn(o->token, "\r\n")] = '\0', o->token[0])) {
                fprintf(stderr, "attnd-bench: --token-file %s: no token on its first line%s%s\n",
                        v, f ? "" : ": ", f ? "" : strerror(errno));
                if (f)
                    fclose(f);
                return 2;
            }
            fclose(f);
        } else if (!strcmp(a, "--attnd")) {
            copy_str(o->attnd_path, sizeof o->attnd_path, a, v, &bad);
        } else if (!strcmp(a, "--model")) {
            copy_str(o->model, sizeof o->model, a, v, &bad);
            o->model_set = 1;
        } else if (!strcmp(a, "--kv-memory")) {
            copy_str(o->kv_memory, sizeof o->kv_memory, a, v, &bad);
        } else if (!strcmp(a, "--transport")) {
            if (strcmp(v, "grpc") && strcmp(v, "ucx")) {
                fprintf(stderr, "attnd-bench: --transport: expected grpc or ucx, got \"%s\"\n", v);
                return 2;
            }
            copy_str(o->transport, sizeof o->transport, a, v, &bad);
        } else if (!strcmp(a, "--json")) {
            copy_str(o->json, sizeof o->json, a, v, &bad);
        } else if (!strcmp(a, "--csv")) {
            copy_str(o->csv, sizeof o->csv, a, v, &bad);
        } else if (!strcmp(a, "--plot")) {
            copy_str(o->plot, sizeof o->plot, a, v, &bad);
        } else if (!strcmp(a, "--sessions")) {
            bad = parse_u64(a, v, 1, 100000, &u) != 0;
            o->sessions = (uint32_t)u;
        } else if (!strcmp(a, "--batch")) {
            bad = parse_u64(a, v, 1, 4096, &u) != 0;
            o->batch = (uint32_t)u;
        } else if (!strcmp(a, "--microbatches")) {
            bad = parse_u64(a, v, 1, 64, &u) != 0;
            o->microbatches = (uint32_t)u;
        } else if (!strcmp(a, "--concurrency")) {
            bad = parse_u64(a, v, 1, 1024, &u) != 0;
            o->concurrency = (uint32_t)u;
            conc_set = 1;
        } else if (!strcmp(a, "--connections")) {
            bad = parse_u64(a, v, 1, 256, &u) != 0;
            o->connections = (uint32_t)u;
        } else if (!strcmp(a, "--chunk")) {
            bad = parse_u64(a, v, 1, 1000000, &u) != 0;
            o->chunk = (uint32_t)u;
        } else if (!strcmp(a, "--steps")) {
            bad = parse_u64(a, v, 1, 100000000, &u) != 0;
            o->steps = u;
        } else if (!strcmp(a, "--seed")) {
            bad = parse_u64(a, v, 0, UINT64_MAX, &u) != 0;
            o->seed = u;
        } else if (!strcmp(a, "--deadline-ms")) {
            bad = parse_u64(a, v, 1, 86400000, &u) != 0;
            o->deadline_ms = (int64_t)u;
        } else if (!strcmp(a, "--prompt-len")) {
            bad = parse_plen(o, v) != 0;
        } else if (!strcmp(a, "--rate")) {
            bad = parse_double(a, v, 0.001, &o->rate) != 0;
        } else if (!strcmp(a, "--slo-ms")) {
            bad = parse_double(a, v, 0.001, &o->slo_ms) != 0;
        } else if (!strcmp(a, "--late-ms")) {
            bad = parse_double(a, v, 0, &o->late_ms) != 0;
        } else if (!strcmp(a, "--wire")) {
            if (strcmp(v, "absorbed") && strcmp(v, "heads")) {
                fprintf(stderr, "attnd-bench: --wire: expected absorbed or heads, got \"%s\"\n",
                        v);
                return 2;
            }
            o->wire = !strcmp(v, "heads");
        } else if (!strcmp(a, "--d-nope")) {
            bad = parse_u64(a, v, 1, 4096, &u) != 0;
            o->d_nope = (uint32_t)u;
        } else if (!strcmp(a, "--d-v")) {
            bad = parse_u64(a, v, 1, 4096, &u) != 0;
            o->d_vh = (uint32_t)u;
        } else if (!strcmp(a, "--arrivals")) {
            if (strcmp(v, "constant") && strcmp(v, "poisson")) {
                fprintf(stderr, "attnd-bench: --arrivals: expected constant or poisson, got "
                                "\"%s\"\n", v);
                return 2;
            }
            o->poisson = !strcmp(v, "poisson");
        } else if (!strcmp(a, "--dtype")) {
            o->dtype = !strcmp(v, "bf16") ? ATTND_DTYPE_BF16
                       : !strcmp(v, "f16") ? ATTND_DTYPE_F16
                       : !strcmp(v, "f32") ? ATTND_DTYPE_F32
                                           : ATTND_DTYPE_INVALID;
            if (o->dtype == ATTND_DTYPE_INVALID) {
                fprintf(stderr, "attnd-bench: --dtype: expected bf16, f16 or f32, got \"%s\"\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--policy")) {
            if (parse_policy(v, &o->policy, &o->given_tokens))
                return 2;
            o->has_policy = 1;
        } else if (!strcmp(a, "--duration") || !strcmp(a, "--warmup")) {
            double d = parse_duration(v);
            if (d < 0 || (d == 0 && !strcmp(a, "--duration"))) {
                fprintf(stderr, "attnd-bench: %s: expected a duration like 8s or 500ms%s, got "
                                "\"%s\"\n", a, !strcmp(a, "--duration") ? " (> 0)" : "", v);
                return 2;
            }
            if (!strcmp(a, "--duration")) {
                o->duration_s = d;
                o->duration_set = 1;
            }
            else
                o->warmup_s = d;
        } else {
            fprintf(stderr, "attnd-bench: unknown option %s (see --help)\n", a);
            return 2;
        }
    }
    if (bad)
        return 2;
    if (!o->token[0] && o->target[0] && getenv("ATTND_TOKEN"))
        snprintf(o->token, sizeof o->token, "%s", getenv("ATTND_TOKEN"));
    if ((o->tls_ca[0] || o->tls_cert[0] || o->token[0]) && !o->target[0]) {
        fprintf(stderr, "attnd-bench: TLS and tokens are for a --target (the attnd it starts "
                        "itself serves plaintext on loopback)\n");
        return 2;
    }
    if ((o->tls_ca[0] || o->tls_cert[0]) && o->baseline) {
        fprintf(stderr, "attnd-bench: --baseline: the bare ping-pong runs in plaintext only\n");
        return 2;
    }
    if (o->has_policy && o->policy.kind != ATTND_SPARSE_FULL && (o->check || o->baseline)) {
        fprintf(stderr, "attnd-bench: --check and --baseline compare with dense attention; a "
                        "sparse --policy attends less by design\n");
        return 2;
    }
    if (o->steps && !o->duration_set)
        o->duration_s = 1e6; /* --steps alone bounds the run */
    if (resolve_sizes(o, conc_set))
        return 2;
    return 0;
}

void attnd_bench_opts_cleanup(attnd_bench_opts *o)
{
    free(o->plen_list);
    o->plen_list = NULL;
    o->plen_n = 0;
}
