/* attnd-cli: a command-line client of an attnd worker.
 *
 *   attnd-cli [--target HOST:PORT] [--deadline-ms MS] health [SERVICE]
 *   attnd-cli [--target HOST:PORT] stats
 *   attnd-cli [--target HOST:PORT] demo [demo options, see demo.c]
 *
 * health asks grpc.health.v1 about SERVICE (default "": the server; attnd
 * also answers "liveness", "readiness", "attnd.v1.Group") and prints
 * SERVING or NOT_SERVING (exit 0 only when SERVING); stats prints the worker's model and counters; demo runs a
 * short end-to-end decode with every output checked (demo.c). The target
 * defaults to $ATTND_TARGET, else 127.0.0.1:7700 (attnd's default).
 * A server with TLS or tokens (README, Security): --tls-ca, --tls-cert and
 * --tls-key, --tls-server-name, --token-file (or $ATTND_TOKEN).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: attnd-cli [--target HOST:PORT] [--deadline-ms MS] "
            "[--connect-timeout-ms MS] COMMAND [ARGS]\n"
            "commands:\n"
            "  health [SERVICE]\n"
            "           print SERVING or NOT_SERVING (exit 0 only when SERVING); SERVICE:\n"
            "           \"\" (default), liveness, readiness, attnd.v1.Group\n"
            "  stats    print the worker's model and counters\n"
            "  demo     create sessions, prefill, decode, and check every output against a\n"
            "           float64 reference (attnd-cli demo --help for its options)\n"
            "The target defaults to $ATTND_TARGET, else 127.0.0.1:7700.\n"
            "security (a server with --tls-cert or --token-file):\n"
            "  --tls-ca FILE          PEM CA(s) of the server's certificate: gRPC over TLS\n"
            "  --tls-cert FILE  --tls-key FILE   this client's certificate (mutual TLS)\n"
            "  --tls-server-name NAME the name the server's certificate carries, when not\n"
            "                         the target's host\n"
            "  --token-file FILE      the bearer token (its first line); or $ATTND_TOKEN\n");
}

/* The first line of path, without its newline, into buf; -1 (said on
 * stderr) when it cannot be read or is empty. */
static int read_token(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "re");
    if (!f || !fgets(buf, (int)cap, f)) {
        fprintf(stderr, "attnd-cli: --token-file %s: %s\n", path,
                f ? "empty" : strerror(errno));
        if (f)
            fclose(f);
        return -1;
    }
    fclose(f);
    buf[strcspn(buf, "\r\n")] = '\0';
    if (!buf[0]) {
        fprintf(stderr, "attnd-cli: --token-file %s: the first line is empty\n", path);
        return -1;
    }
    return 0;
}

long long attnd_cli_parse_count(const char *s)
{
    char *end;
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    return errno || *end ? -1 : v;
}

static const char *kind_name(attnd_attn_kind k)
{
    return k == ATTND_ATTN_MLA ? "MLA" : k == ATTND_ATTN_GQA ? "GQA" : "?";
}

static int cmd_health(attnd_client *c, const char *service)
{
    attnd_error err;
    int serving = 0;

    attnd_error_clear(&err);
    if (attnd_client_health(c, service, &serving, &err)) {
        fprintf(stderr, "attnd-cli: health: %s: %s\n", attnd_status_string(err.code), err.msg);
        printf("NOT_SERVING\n");
        return 1;
    }
    printf("%s\n", serving ? "SERVING" : "NOT_SERVING");
    return serving ? 0 : 1;
}

/* The KV tiers and durability lines of `stats`. */
static int print_tiers(attnd_client *c)
{
    static const char *const modes[] = {"off", "sync", "batch"};
    attnd_tier_stats t;
    attnd_error err;

    attnd_error_clear(&err);
    if (attnd_client_get_tier_stats(c, NULL, &t, &err)) {
        fprintf(stderr, "attnd-cli: stats: %s: %s\n", attnd_status_string(err.code), err.msg);
        return 1;
    }
    printf("kv tiers          %" PRIu64 " pages held of %" PRIu64 " (memory %" PRIu64
           " of %" PRIu64 " used)\n",
           t.pages_held, t.pages_capacity, t.memory_pages_used, t.memory_pages_total);
    if (t.below[0])
        printf("kv below          %s: %" PRIu64 " of %" PRIu64 " slots used, %" PRIu64
               " bytes each; pages moved down %" PRIu64 ", up %" PRIu64 " (%" PRIu64
               " prefetched), %" PRIu64 " waits, %" PRIu64 " bad, %" PRIu64
               " write failures\n",
               t.below, t.below_slots_used, t.below_slots, t.below_slot_bytes,
               t.pages_moved_down, t.pages_moved_up, t.pages_prefetched, t.load_waits,
               t.pages_bad, t.write_failures);
    if (t.durability > 0 && t.durability < 3) {
        char mode[48];
        if (t.durability == 2)
            snprintf(mode, sizeof mode, "batch (window %u ms)", t.durable_window_ms);
        else
            snprintf(mode, sizeof mode, "%s", modes[t.durability]);
        printf("durable           %s; log durable to LSN %" PRIu64 ", %" PRIu64
               " bytes written in %" PRIu64 " syncs, %" PRIu64 " checkpoints; %" PRIu64
               " sessions recovered at start (%" PRIu64 " lost)\n",
               mode, t.wal_durable_lsn, t.wal_bytes_written, t.wal_syncs, t.checkpoints,
               t.sessions_recovered, t.sessions_lost);
    }
    return 0;
}

static int cmd_stats(attnd_client *c)
{
    attnd_stats st;
    attnd_model_info m;
    attnd_error err;

    attnd_error_clear(&err);
    if (attnd_client_get_stats(c, &st, &m, &err)) {
        fprintf(stderr, "attnd-cli: stats: %s: %s\n", attnd_status_string(err.code), err.msg);
        return 1;
    }
    printf("model             %s (%s, %u layers, %u q heads, %u kv heads, d_k %u, d_v %u, "
           "scale %.6g, kv %s, page %u tokens)\n",
           m.name, kind_name(m.kind), m.n_layers, m.n_q_heads, m.n_kv_heads, m.d_k, m.d_v,
           (double)m.scale, attnd_dtype_name(m.kv_dtype), m.page_size);
    printf("sessions          %" PRIu64 " of %" PRIu64 "\n", st.sessions, st.max_sessions);
    printf("pages             %" PRIu64 " used, %" PRIu64 " reserved, %" PRIu64
           " total, %" PRIu64 " bytes each\n",
           st.pages_used, st.pages_reserved, st.pages_total, st.page_bytes);
    printf("attend            %" PRIu64 " calls, %" PRIu64 " sequences, %" PRIu64
           " KV bytes read\n",
           st.attend_calls, st.attend_sequences, st.kv_bytes_read);
    if (st.kv_bytes_dense != st.kv_bytes_read || st.select_calls || st.pages_evicted)
        printf("sparse            %" PRIu64 " KV bytes dense attention would read, %" PRIu64
               " selections (%" PRIu64 " bytes of key bounds, %.3f ms), %" PRIu64
               " pages evicted\n",
               st.kv_bytes_dense, st.select_calls, st.select_bytes_read,
               (double)st.select_ns * 1e-6, st.pages_evicted);
    printf("append            %" PRIu64 " chunks, %" PRIu64 " tokens appended\n",
           st.append_calls, st.tokens_appended);
    printf("errors            %" PRIu64 "\n", st.errors);
    printf("scope             %s\n", st.stats_scope);
    if (st.sessions_expired)
        printf("expired           %" PRIu64 " idle sessions closed, %" PRIu64 " pages back\n",
               st.sessions_expired, st.pages_expired);
    printf("uptime            %.1f s\n", (double)st.uptime_ms / 1000.0);
    if (st.group_size)
        printf("group             rank %u of %u, %s sharding, %u peers connected%s%s, %" PRIu64
               " calls failed for a missing peer\n",
               st.group_rank, st.group_size, st.group_mode, st.group_connected,
               st.group_missing[0] ? ", missing ranks " : "", st.group_missing,
               st.group_peer_failures);
    if (st.ucx_endpoints)
        printf("ucx endpoints     %u: %s\n", st.ucx_endpoints, st.ucx_transports);
    return print_tiers(c);
}

int main(int argc, char **argv)
{
    const char *target = getenv("ATTND_TARGET");
    static char token[4096];
    attnd_client_options opts;
    attnd_client *c = NULL;
    attnd_error err;
    int i, rc;

    if (!target || !*target)
        target = "127.0.0.1:7700";
    attnd_client_options_init(&opts);
    opts.token = getenv("ATTND_TOKEN") && *getenv("ATTND_TOKEN") ? getenv("ATTND_TOKEN") : NULL;
    for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "attnd-cli: %s needs a value\n", a);
            return 2;
        }
        if (strcmp(a, "--target") == 0) {
            target = argv[++i];
        } else if (strcmp(a, "--tls-ca") == 0) {
            opts.tls_ca_file = argv[++i];
        } else if (strcmp(a, "--tls-cert") == 0) {
            opts.tls_cert_file = argv[++i];
        } else if (strcmp(a, "--tls-key") == 0) {
            opts.tls_key_file = argv[++i];
        } else if (strcmp(a, "--tls-server-name") == 0) {
            opts.tls_server_name = argv[++i];
        } else if (strcmp(a, "--token-file") == 0) {
            if (read_token(argv[++i], token, sizeof token))
                return 2;
            opts.token = token;
        } else if (strcmp(a, "--deadline-ms") == 0 || strcmp(a, "--connect-timeout-ms") == 0) {
            long long v = attnd_cli_parse_count(argv[++i]);
            if (v <= 0) {
                fprintf(stderr, "attnd-cli: %s: expected a positive integer, got \"%s\"\n", a,
                        argv[i]);
                return 2;
            }
            if (a[2] == 'd')
                opts.deadline_ms = v;
            else
                opts.connect_timeout_ms = v;
        } else {
            fprintf(stderr, "attnd-cli: unknown flag %s (see --help)\n", a);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i];
    if (strcmp(cmd, "health") && strcmp(cmd, "stats") && strcmp(cmd, "demo")) {
        fprintf(stderr, "attnd-cli: unknown command \"%s\" (see --help)\n", cmd);
        return 2;
    }
    const char *service = "";
    if (strcmp(cmd, "health") == 0 && i + 1 < argc)
        service = argv[++i];
    if (strcmp(cmd, "demo") != 0 && i + 1 < argc) {
        fprintf(stderr, "attnd-cli: %s takes no arguments, got \"%s\"\n", cmd, argv[i + 1]);
        return 2;
    }
    if (strcmp(cmd, "demo") == 0)
        return attnd_cli_demo(target, &opts, argc - i, argv + i);

    attnd_error_clear(&err);
    if (attnd_client_connect(target, &opts, &c, &err)) {
        fprintf(stderr, "attnd-cli: %s: %s\n", attnd_status_string(err.code), err.msg);
        if (strcmp(cmd, "health") == 0)
            printf("NOT_SERVING\n");
        return 1;
    }
    rc = strcmp(cmd, "health") == 0 ? cmd_health(c, service) : cmd_stats(c);
    attnd_client_destroy(c);
    return rc;
}
