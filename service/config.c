/* attnd configuration: one struct, filled in one place.
 *
 * A single option table drives everything: each row names the flag, its
 * ATTND_* environment variable, the value's kind and where it goes in
 * attnd_srv_config. Loading applies defaults, then the environment, then
 * the command line (so flags win), then resolves what depends on other
 * values (threads = CPUs, the model preset). --help prints the same table.
 */
#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "srv.h"

/* OPT_MODE: a string that may be left out: "--flag" alone stores its
 * first choice ("sync"), "--flag=value" or "--flag value" the value. */
enum opt_kind { OPT_STR, OPT_INT, OPT_SIZE, OPT_DTYPE, OPT_FLAG, OPT_MODE,
                OPT_DURATION };

typedef struct opt {
    const char *flag; /* without the leading "--" */
    const char *env;  /* NULL: flag only */
    enum opt_kind kind;
    size_t off, size; /* field in attnd_srv_config, and its size */
    int64_t min, max; /* OPT_INT / OPT_SIZE range */
    const char *arg, *help;
} opt;

#define F(field) offsetof(attnd_srv_config, field), sizeof(((attnd_srv_config *)0)->field)

static const opt opts[] = {
    {"listen", "ATTND_LISTEN", OPT_STR, F(listen), 0, 0, "HOST:PORT",
     "address to serve on; port 0 picks a free one (default 127.0.0.1:7700)"},
    {"model", "ATTND_MODEL", OPT_STR, F(model), 0, 0, "NAME",
     "model preset (default deepseek-v3; see --list-models)"},
    {"threads", "ATTND_THREADS", OPT_INT, F(threads), 0, 1024, "N",
     "executor threads: they run the calls that use the engine or the group (Attend, "
     "AppendKV, sessions, LoadWeights), each with its own workspace (default: CPUs)"},
    {"io-threads", "ATTND_IO_THREADS", OPT_INT, F(io_threads), 0, 256, "N",
     "gRPC completion-queue threads: they accept every call at once, move its bytes, "
     "answer Health and GetStats inline and hand the rest to the executors "
     "(default: 2, or 1 on one CPU)"},
    {"kernel-threads", "ATTND_KERNEL_THREADS", OPT_INT, F(kernel_threads), 0, 1024, "N",
     "threads of the engine's shared attention-kernel pool, a calling executor "
     "included (default 0: one per CPU)"},
    {"kernel-path", "ATTND_KERNEL_PATH", OPT_STR, F(kernel_path), 0, 0, "NAME",
     "CPU attention kernels: auto (the widest float32 path, or avx512bf16 where a "
     "one-time calibration finds vdpbf16ps faster), exact (the widest float32 path), "
     "scalar, avx2, avx512 or avx512bf16 (default auto)"},
    {"device", "ATTND_DEVICE", OPT_STR, F(device), 0, 0, "cpu|cuda:N",
     "where KV pages live and attention runs: host memory and the CPU kernels, or "
     "GPU N's memory and the CUDA kernels (default cpu)"},
    {"max-sessions", "ATTND_MAX_SESSIONS", OPT_INT, F(max_sessions), 1, 1 << 24, "N",
     "open sessions at most (default 1024)"},
    {"kv-memory", "ATTND_KV_MEMORY", OPT_SIZE, F(kv_memory), 1, INT64_MAX, "BYTES",
     "KV page pool size; K/M/G (10^3..) or Ki/Mi/Gi (2^10..) suffixes (default 1G)"},
    {"page-size", "ATTND_PAGE_SIZE", OPT_INT, F(page_size), 1, 4096, "TOKENS",
     "tokens per KV page (default 64)"},
    {"kv-dtype", "ATTND_KV_DTYPE", OPT_DTYPE, F(kv_dtype), 0, 0, "bf16|f16|f32",
     "dtype KV is stored in (default: the model's)"},
    {"max-message", "ATTND_MAX_MESSAGE", OPT_SIZE, F(max_message), 1024, INT32_MAX, "BYTES",
     "largest message sent or received (default 256Mi)"},
    {"port-file", "ATTND_PORT_FILE", OPT_STR, F(port_file), 0, 0, "PATH",
     "write the bound port there once listening"},
    {"shutdown-grace-ms", "ATTND_SHUTDOWN_GRACE_MS", OPT_INT, F(shutdown_grace_ms), 0,
     3600000, "MS",
     "on SIGTERM/SIGINT (after --drain-delay-ms), new calls get UNAVAILABLE and calls "
     "already received get this long to finish; then the rest are cancelled (default "
     "10000)"},
    {"drain-delay-ms", "ATTND_DRAIN_DELAY_MS", OPT_INT, F(drain_delay_ms), 0, 3600000, "MS",
     "on SIGTERM/SIGINT, keep serving new calls this long while health already says "
     "NOT_SERVING, e.g. one readiness-probe period (default 0)"},
    {"max-connections", "ATTND_MAX_CONNECTIONS", OPT_INT, F(max_connections), 0, INT32_MAX,
     "N", "client connections held at most; more are closed at once (default 0: the fd "
     "limit, raised to its hard limit at start, less a quarter kept for everything else)"},
    {"http2-lookahead", "ATTND_HTTP2_LOOKAHEAD", OPT_SIZE, F(http2_lookahead), 0, INT32_MAX,
     "BYTES", "HTTP/2 per-stream receive window; 0: gRPC's default (default 8Mi)"},
    {"http2-max-frame", "ATTND_HTTP2_MAX_FRAME", OPT_SIZE, F(http2_max_frame), 0, 16777215,
     "BYTES", "HTTP/2 largest frame we accept; 0: gRPC's 16Ki (default 1Mi)"},
    {"ucx-listen", "ATTND_UCX_LISTEN", OPT_STR, F(ucx_listen), 0, 0, "HOST:PORT|auto",
     "also serve Attend over UCX active messages: UCX's network transport on the "
     "interface of HOST only, its TCP port PORT (0: a free one); auto: --listen's host, "
     "a free port. Clients connect by worker address after GetEndpoint; one-host "
     "clients use shared memory (default: off)"},
    {"ucx-conn-queue", "ATTND_UCX_CONN_QUEUE", OPT_INT, F(ucx_conn_queue), 1, 1 << 20, "N",
     "UCX Attend: requests one connection may have received and not yet answered; "
     "more answer RESOURCE_EXHAUSTED (default 64)"},
    {"ucx-conn-bytes", "ATTND_UCX_CONN_BYTES", OPT_SIZE, F(ucx_conn_bytes), 1, INT64_MAX,
     "BYTES", "UCX Attend: request bytes one connection may hold before they run (a "
     "single request up to --max-message is always taken when it holds none); more "
     "answer RESOURCE_EXHAUSTED (default 64Mi)"},
    {"ucx-exec-threads", "ATTND_UCX_EXEC_THREADS", OPT_INT, F(ucx_exec_threads), 0, 256, "N",
     "UCX Attend: threads that execute requests while the progress thread receives and "
     "sends; 0: execute on the progress thread (default 2)"},
    {"ucx-spin-us", "ATTND_UCX_SPIN_US", OPT_INT, F(ucx_spin_us), 0, 1000000, "US",
     "UCX progress thread: busy-poll this long after the last event before sleeping "
     "(default 200)"},
    {"rank", "ATTND_RANK", OPT_INT, F(rank), 0, 63, "R",
     "this process's rank in its worker group (default 0)"},
    {"group", "ATTND_GROUP", OPT_STR, F(group), 0, 0, "HOST:PORT,...",
     "rendezvous address of every rank of the group, in rank order (a TCP port attnd "
     "listens on to exchange UCX worker addresses; UCX itself uses that host's "
     "interface only); this rank listens on entry R (port 0: a free port, see "
     "--group-dir); empty: no group"},
    {"group-file", "ATTND_GROUP_FILE", OPT_STR, F(group_file), 0, 0, "PATH",
     "the same list in a file, one HOST:PORT per line"},
    {"group-dir", "ATTND_GROUP_DIR", OPT_STR, F(group_dir), 0, 0, "DIR",
     "each rank writes its bound rendezvous address to DIR/rank-R; peers listed with "
     "port 0 are found there"},
    {"shard", "ATTND_SHARD", OPT_STR, F(shard), 0, 0, "sequence|head|latent",
     "how the group splits the KV (default sequence)"},
    {"tpla-rope", "ATTND_TPLA_ROPE", OPT_STR, F(tpla_rope), 0, 0, "replicate|split",
     "latent sharding: RoPE key on every rank, or split too (default replicate)"},
    {"tpla-mu", "ATTND_TPLA_MU", OPT_STR, F(tpla_mu), 0, 0, "MU",
     "latent sharding: scale of the latent part of each shard's score (default 1)"},
    {"group-connect-ms", "ATTND_GROUP_CONNECT_MS", OPT_INT, F(group_connect_ms), 0, 3600000,
     "MS", "at start, wait this long for every peer (default 30000)"},
    {"group-timeout-ms", "ATTND_GROUP_TIMEOUT_MS", OPT_INT, F(group_timeout_ms), 1, 3600000,
     "MS", "longest wait for a peer's answer; then UNAVAILABLE (default 10000)"},
    {"group-secret-file", "ATTND_GROUP_SECRET_FILE", OPT_STR, F(group_secret_file), 0, 0,
     "PATH", "ranks prove they hold this file's secret (at least 16 bytes; the same on every "
     "rank) before they exchange UCX addresses: without it nobody joins or leads"},
    {"kv-prefault", "ATTND_KV_PREFAULT", OPT_FLAG, F(kv_prefault), 0, 0, NULL,
     "fault the whole KV pool in from a background thread at start: steady-state "
     "appends skip the first-touch cost, but the pool is resident at once (default: "
     "pages are faulted in by the appends that first write them)"},
    {"kv-dir", "ATTND_KV_DIR", OPT_STR, F(kv_dir), 0, 0, "DIR",
     "a directory on local disk for the KV pages memory cannot hold: the least recently "
     "used sessions' layers move there and are read back (and prefetched) before an Attend "
     "needs them (default: none; worker/TIERS.md)"},
    {"kv-disk", "ATTND_KV_DISK", OPT_SIZE, F(kv_disk), 4096, INT64_MAX, "BYTES",
     "most bytes of --kv-dir the KV pages may take (default 4 x --kv-memory)"},
    {"kv-host", "ATTND_KV_HOST", OPT_SIZE, F(kv_host), 4096, INT64_MAX, "BYTES",
     "--device cuda: bytes of host RAM below the GPU's memory for the pages it cannot hold; "
     "with --kv-dir, a chain: they go to host RAM first, on to disk as it fills (default: "
     "none)"},
    {"kv-prefetch", "ATTND_KV_PREFETCH", OPT_INT, F(kv_prefetch), 0, 1024, "LAYERS",
     "layers read ahead while one is attended, for sessions with layers below memory; 0 "
     "off (default 4)"},
    {"kv-io-depth", "ATTND_KV_IO_DEPTH", OPT_INT, F(kv_io_depth), 1, 1024, "N",
     "page reads or writes in flight per I/O context of the tier below (default 32)"},
    {"durable", "ATTND_DURABLE", OPT_MODE, F(durable), 0, 0, "sync|batch|off",
     "write-ahead log in --kv-dir: every acknowledged append (AppendKV, Attend with new KV) "
     "is on disk before the reply (sync, the flag alone), or within --durable-window-ms "
     "(batch); a restart on the same --kv-dir serves the same sessions (default off)"},
    {"durable-window-ms", "ATTND_DURABLE_WINDOW_MS", OPT_INT, F(durable_window_ms), 1, 60000,
     "MS", "--durable=batch: longest an acknowledged change waits for the disk (default 1)"},
    {"durable-segment", "ATTND_DURABLE_SEGMENT", OPT_SIZE, F(durable_segment), 1 << 20,
     INT64_MAX, "BYTES", "bytes of one preallocated log segment (default 64Mi)"},
    {"durable-checkpoint", "ATTND_DURABLE_CHECKPOINT", OPT_SIZE, F(durable_checkpoint),
     1 << 16, INT64_MAX, "BYTES",
     "log bytes written between checkpoints, which bound the log (default 256Mi)"},
    {"tls-cert", "ATTND_TLS_CERT", OPT_STR, F(tls_cert), 0, 0, "PATH",
     "serve gRPC over TLS with this PEM certificate chain (with --tls-key); reloaded on "
     "SIGHUP (default: plaintext)"},
    {"tls-key", "ATTND_TLS_KEY", OPT_STR, F(tls_key), 0, 0, "PATH",
     "the PEM private key of --tls-cert"},
    {"tls-client-ca", "ATTND_TLS_CLIENT_CA", OPT_STR, F(tls_client_ca), 0, 0, "PATH",
     "mutual TLS: every client must present a certificate signed by one of these PEM "
     "CAs (default: clients are not asked for one)"},
    {"token-file", "ATTND_TOKEN_FILE", OPT_STR, F(token_file), 0, 0, "PATH",
     "tenants: lines \"TOKEN TENANT [admin] [sessions=N] [kv=BYTES]\" (or \"cert:IDENTITY "
     "TENANT ...\" for mTLS clients); every call but Health then needs \"authorization: "
     "Bearer TOKEN\"; reloaded on SIGHUP (default: no authentication)"},
    {"tenant-max-sessions", "ATTND_TENANT_MAX_SESSIONS", OPT_INT, F(tenant_max_sessions), 0,
     1 << 24, "N", "sessions one tenant may hold open, unless its line says otherwise "
     "(default 0: no limit)"},
    {"tenant-kv-memory", "ATTND_TENANT_KV_MEMORY", OPT_SIZE, F(tenant_kv_memory), 0,
     INT64_MAX, "BYTES", "KV one tenant may hold (pages held and reserved; in a group, on "
     "each rank), unless its line says otherwise (default 0: no limit)"},
    {"session-idle-ttl", "ATTND_SESSION_IDLE_TTL", OPT_DURATION, F(session_idle_ttl_ms), 0,
     INT64_MAX / 4, "DURATION", "close sessions no call has named for this long and give "
     "their pages back (600s, 10m, 1h; default 0: never)"},
    {"grpc-keepalive-ms", "ATTND_GRPC_KEEPALIVE_MS", OPT_INT, F(keepalive_ms), 100,
     INT32_MAX, "MS", "ping a connection that was quiet this long (default 30000)"},
    {"grpc-keepalive-timeout-ms", "ATTND_GRPC_KEEPALIVE_TIMEOUT_MS", OPT_INT,
     F(keepalive_timeout_ms), 100, INT32_MAX, "MS",
     "close a connection whose peer does not answer a ping in this long (a dead client, "
     "or one that connected and never spoke: default 10000)"},
    {"handshake-timeout-ms", "ATTND_HANDSHAKE_TIMEOUT_MS", OPT_INT, F(handshake_timeout_ms),
     100, INT32_MAX, "MS", "TLS: close a connection whose handshake has not finished in "
     "this long (default 10000)"},
    {"max-streams", "ATTND_MAX_STREAMS", OPT_INT, F(max_streams), 1, INT32_MAX, "N",
     "calls open at once on one connection; more wait in the client (default 1024)"},
    {"grpc-memory", "ATTND_GRPC_MEMORY", OPT_SIZE, F(grpc_memory), 1 << 20, INT64_MAX,
     "BYTES", "gRPC's resource quota: memory its buffers may take before it reclaims "
     "(default 4Gi)"},
    {"metrics-listen", "ATTND_METRICS_LISTEN", OPT_STR, F(metrics_listen), 0, 0, "HOST:PORT",
     "serve Prometheus metrics over HTTP at /metrics there; port 0 picks a free one "
     "(default: off)"},
    {"log-format", "ATTND_LOG_FORMAT", OPT_STR, F(log_format), 0, 0, "text|json",
     "stderr log lines as text or one JSON object each (default text)"},
    {"log-level", "ATTND_LOG_LEVEL", OPT_STR, F(log_level), 0, 0, "error|warn|info|debug",
     "least severe level logged; debug adds a line per failed request (default info)"},
    {"print-config", NULL, OPT_FLAG, F(print_config), 0, 0, NULL,
     "print the effective configuration (defaults, environment, flags) as flags and exit"},
    {"list-models", NULL, OPT_FLAG, F(list_models), 0, 0, NULL, "print the presets and exit"},
    {"help", NULL, OPT_FLAG, F(show_help), 0, 0, NULL, "print this and exit"},
};

#undef F

void attnd_srv_config_init(attnd_srv_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->listen, sizeof cfg->listen, "127.0.0.1:7700");
    snprintf(cfg->model, sizeof cfg->model, "deepseek-v3");
    snprintf(cfg->device, sizeof cfg->device, "cpu");
    snprintf(cfg->kernel_path, sizeof cfg->kernel_path, "auto");
    cfg->threads = 0;
    cfg->max_sessions = 1024;
    cfg->kv_memory = 1000000000ull;
    cfg->page_size = 64;
    cfg->kv_dtype = ATTND_DTYPE_INVALID;
    cfg->max_message = 256ull << 20;
    cfg->shutdown_grace_ms = 10000;
    snprintf(cfg->shard, sizeof cfg->shard, "sequence");
    snprintf(cfg->tpla_rope, sizeof cfg->tpla_rope, "replicate");
    snprintf(cfg->tpla_mu, sizeof cfg->tpla_mu, "1");
    cfg->group_connect_ms = 30000;
    cfg->group_timeout_ms = 10000;
    cfg->ucx_spin_us = 200;
    snprintf(cfg->log_format, sizeof cfg->log_format, "text");
    snprintf(cfg->log_level, sizeof cfg->log_level, "info");
    cfg->ucx_exec_threads = 2;
    cfg->kv_prefetch = 4;
    cfg->kv_io_depth = 32;
    cfg->durable_window_ms = 1;
    cfg->durable_segment = 64ull << 20;
    cfg->durable_checkpoint = 256ull << 20;
    cfg->ucx_conn_queue = 64;
    cfg->ucx_conn_bytes = 64ull << 20;
    /* measured on loopback with service/bench/bench_attend.c: an 8 MiB
     * window and 1 MiB frames cut the p50 of a 2.4 MB Attend from ~15 to
     * ~10 ms; a 64 MiB window or 16 MiB frames did not help */
    cfg->http2_lookahead = 8 << 20;
    cfg->http2_max_frame = 1 << 20;
    cfg->keepalive_ms = 30000;
    cfg->keepalive_timeout_ms = 10000;
    cfg->handshake_timeout_ms = 10000;
    cfg->max_streams = 1024;
    cfg->grpc_memory = 4ull << 30;
}

int attnd_srv_parse_duration_ms(const char *s, int64_t *ms_p)
{
    static const struct {
        const char *suf;
        int64_t mul;
    } sufs[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
    char *end;

    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno)
        return -1;
    for (size_t i = 0; i < sizeof sufs / sizeof sufs[0]; i++) {
        if (strcmp(end, sufs[i].suf) != 0)
            continue;
        if (v > INT64_MAX / sufs[i].mul)
            return -1;
        *ms_p = (int64_t)v * sufs[i].mul;
        return 0;
    }
    return -1;
}

int attnd_srv_parse_size(const char *s, uint64_t *out_p)
{
    static const struct {
        const char *suf;
        uint64_t mul;
    } sufs[] = {
        {"", 1}, {"K", 1000ull}, {"M", 1000000ull}, {"G", 1000000000ull},
        {"T", 1000000000000ull}, {"Ki", 1ull << 10}, {"Mi", 1ull << 20},
        {"Gi", 1ull << 30}, {"Ti", 1ull << 40},
    };
    char *end;
    char suf[8];

    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    size_t n = strlen(end);
    if (n >= sizeof suf)
        return -1;
    memcpy(suf, end, n + 1);
    if (n && (suf[n - 1] == 'B' || suf[n - 1] == 'b'))
        suf[--n] = '\0'; /* "1GB", "64MiB", "4096B" */
    if (n && suf[0] >= 'a' && suf[0] <= 'z')
        suf[0] = (char)(suf[0] - 'a' + 'A'); /* "64m", "1gi" */
    for (size_t i = 0; i < sizeof sufs / sizeof sufs[0]; i++) {
        if (strcmp(suf, sufs[i].suf) != 0)
            continue;
        if (v > UINT64_MAX / sufs[i].mul)
            return -1;
        *out_p = v * sufs[i].mul;
        return 0;
    }
    return -1;
}

static int parse_dtype(const char *s, attnd_dtype *out)
{
    static const attnd_dtype all[] = {ATTND_DTYPE_BF16, ATTND_DTYPE_F16, ATTND_DTYPE_F32};
    for (size_t i = 0; i < 3; i++)
        if (strcmp(s, attnd_dtype_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    return -1;
}

/* Store an integer into a field of 4 or 8 bytes. */
static void store_int(void *field, size_t size, int64_t v)
{
    if (size == sizeof(int32_t)) {
        int32_t x = (int32_t)v;
        memcpy(field, &x, sizeof x);
    } else {
        memcpy(field, &v, sizeof v);
    }
}

/* Apply value `val` of option o; `who` names its source for messages
 * ("--threads", "ATTND_THREADS"). */
static attnd_status apply(attnd_srv_config *cfg, const opt *o, const char *val,
                          const char *who, attnd_error *err)
{
    void *field = (char *)cfg + o->off;
    uint64_t u;
    char *end;

    switch (o->kind) {
    case OPT_FLAG:
        store_int(field, o->size, 1);
        return ATTND_OK;
    case OPT_MODE:
        if (!val) /* the flag alone: the first choice */
            val = "sync";
        /* fall through */
    case OPT_STR:
        if (strlen(val) >= o->size)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "%s: value longer than %zu characters", who, o->size - 1);
        memcpy(field, val, strlen(val) + 1);
        return ATTND_OK;
    case OPT_INT:
        errno = 0;
        long long v = strtoll(val, &end, 10);
        if (errno || end == val || *end || v < o->min || v > o->max)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "%s: expected an integer in [%lld, %lld], got \"%s\"", who,
                                   (long long)o->min, (long long)o->max, val);
        store_int(field, o->size, v);
        return ATTND_OK;
    case OPT_SIZE:
        if (attnd_srv_parse_size(val, &u) || u < (uint64_t)o->min || u > (uint64_t)o->max)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "%s: expected a byte count in [%lld, %lld] (suffixes "
                                   "K/M/G/Ki/Mi/Gi), got \"%s\"",
                                   who, (long long)o->min, (long long)o->max, val);
        store_int(field, o->size, (int64_t)u);
        return ATTND_OK;
    case OPT_DURATION: {
        int64_t ms;
        if (attnd_srv_parse_duration_ms(val, &ms) || ms < o->min || ms > o->max)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "%s: expected a duration (a number of seconds, or with "
                                   "ms/s/m/h), got \"%s\"", who, val);
        store_int(field, o->size, ms);
        return ATTND_OK;
    }
    case OPT_DTYPE: {
        attnd_dtype d;
        if (parse_dtype(val, &d))
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "%s: expected bf16, f16 or f32, got \"%s\"", who, val);
        memcpy(field, &d, sizeof d);
        return ATTND_OK;
    }
    }
    return attnd_error_set(err, ATTND_ERR_INTERNAL, "%s: bad option table", who);
}

static const opt *find_flag(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
        if (strlen(opts[i].flag) == len && strncmp(opts[i].flag, name, len) == 0)
            return &opts[i];
    return NULL;
}

static int cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

attnd_status attnd_srv_config_load(attnd_srv_config *cfg, int argc, char *const *argv,
                                   attnd_error *err)
{
    attnd_status st;

    attnd_srv_config_init(cfg);
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        const char *v = opts[i].env ? getenv(opts[i].env) : NULL;
        if (v && (st = apply(cfg, &opts[i], v, opts[i].env, err)))
            return st;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char who[48];
        if (strncmp(a, "--", 2) != 0)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "unexpected argument \"%s\" (see --help)", a);
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const opt *o = find_flag(name, len);
        if (!o)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "unknown flag --%.*s (see --help)", (int)len, name);
        snprintf(who, sizeof who, "--%s", o->flag);
        const char *val = NULL;
        if (o->kind == OPT_FLAG) {
            if (eq)
                return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                       "%s: takes no value", who);
        } else if (o->kind == OPT_MODE) { /* "--durable", "--durable=batch", "--durable batch" */
            val = eq ? eq + 1 : i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0 ? argv[++i]
                                                                                     : NULL;
        } else if (eq) {
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT, "%s: missing %s", who,
                                   o->arg);
        }
        if ((st = apply(cfg, o, val, who, err)))
            return st;
    }
    if (cfg->show_help || cfg->list_models)
        return ATTND_OK;
    if (!attnd_model_find(cfg->model))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--model: unknown preset \"%s\" (see --list-models)",
                               cfg->model);
    if (cfg->threads == 0)
        cfg->threads = cpu_count();
    if (cfg->io_threads == 0)
        cfg->io_threads = cpu_count() > 1 ? 2 : 1;
    if (!strchr(cfg->listen, ':'))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--listen: expected HOST:PORT, got \"%s\"", cfg->listen);
    if (cfg->durable[0] && strcmp(cfg->durable, "off") != 0 &&
        strcmp(cfg->durable, "sync") != 0 && strcmp(cfg->durable, "batch") != 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--durable: expected sync, batch or off, got \"%s\"",
                               cfg->durable);
    if (cfg->token_file[0] && cfg->ucx_listen[0])
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--ucx-listen: Attend over UCX cannot be bound to a tenant yet, "
                               "so it is refused with --token-file (use gRPC)");
    if (strcmp(cfg->log_format, "text") != 0 && strcmp(cfg->log_format, "json") != 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--log-format: expected text or json, got \"%s\"",
                               cfg->log_format);
    if (strcmp(cfg->log_level, "error") != 0 && strcmp(cfg->log_level, "warn") != 0 &&
        strcmp(cfg->log_level, "info") != 0 && strcmp(cfg->log_level, "debug") != 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--log-level: expected error, warn, info or debug, got \"%s\"",
                               cfg->log_level);
    if (cfg->metrics_listen[0] && !strchr(cfg->metrics_listen, ':'))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--metrics-listen: expected HOST:PORT, got \"%s\"",
                               cfg->metrics_listen);
    if (cfg->ucx_listen[0] && strcmp(cfg->ucx_listen, "auto") != 0 &&
        !strchr(cfg->ucx_listen, ':'))
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "--ucx-listen: expected HOST:PORT or auto, got \"%s\"",
                               cfg->ucx_listen);
    return ATTND_OK;
}

void attnd_srv_config_engine(const attnd_srv_config *cfg, attnd_engine_config *ecfg)
{
    memset(ecfg, 0, sizeof *ecfg);
    ecfg->model = *attnd_model_find(cfg->model);
    if (cfg->kv_dtype != ATTND_DTYPE_INVALID)
        ecfg->model.kv_dtype = cfg->kv_dtype;
    ecfg->page_size = cfg->page_size;
    ecfg->kv_memory = cfg->kv_memory;
    ecfg->max_sessions = cfg->max_sessions;
    ecfg->kernel_threads = cfg->kernel_threads;
    snprintf(ecfg->kernel_path, sizeof ecfg->kernel_path, "%s", cfg->kernel_path);
    ecfg->prefault = cfg->kv_prefault;
    snprintf(ecfg->kv_dir, sizeof ecfg->kv_dir, "%s", cfg->kv_dir);
    ecfg->kv_disk = cfg->kv_disk;
    ecfg->kv_host = cfg->kv_host;
    ecfg->kv_prefetch = cfg->kv_prefetch;
    ecfg->kv_io_depth = cfg->kv_io_depth;
    ecfg->durable = attnd_srv_durable_mode(cfg);
    ecfg->durable_window_ms = cfg->durable_window_ms;
    ecfg->wal_segment = cfg->durable_segment;
    ecfg->checkpoint_bytes = cfg->durable_checkpoint;
    snprintf(ecfg->device, sizeof ecfg->device, "%s", cfg->device);
}

int attnd_srv_durable_mode(const attnd_srv_config *cfg)
{
    if (strcmp(cfg->durable, "sync") == 0)
        return ATTND_ENGINE_DURABLE_SYNC;
    if (strcmp(cfg->durable, "batch") == 0)
        return ATTND_ENGINE_DURABLE_BATCH;
    return ATTND_ENGINE_DURABLE_OFF;
}

void attnd_srv_config_usage(FILE *f)
{
    fprintf(f, "usage: attnd [flags]\n"
               "Serve attention over a paged KV cache (gRPC service attnd.v1.Attnd and\n"
               "grpc.health.v1.Health). Every flag can also be set by its environment\n"
               "variable; flags win. SIGTERM or SIGINT drains, then exits 0 (a second\n"
               "one cuts the drain short).\n\n");
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        char lhs[64];
        snprintf(lhs, sizeof lhs, "--%s%s%s%s%s", opts[i].flag, opts[i].arg ? " " : "",
                 opts[i].kind == OPT_MODE ? "[" : "", opts[i].arg ? opts[i].arg : "",
                 opts[i].kind == OPT_MODE ? "]" : "");
        fprintf(f, "  %-32s  %s", lhs, opts[i].help); /* 2+ spaces: deploy/config_table.py */
        if (opts[i].env)
            fprintf(f, " [%s]", opts[i].env);
        fputc('\n', f);
    }
}

void attnd_srv_config_print(FILE *f, const attnd_srv_config *cfg)
{
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        const opt *o = &opts[i];
        const void *field = (const char *)cfg + o->off;
        int64_t v = 0;
        if (!o->env) /* --help, --list-models, --print-config: actions, not settings */
            continue;
        if (o->kind == OPT_INT || o->kind == OPT_SIZE || o->kind == OPT_FLAG ||
            o->kind == OPT_DURATION) {
            if (o->size == sizeof(int32_t)) {
                int32_t x;
                memcpy(&x, field, sizeof x);
                v = x;
            } else {
                memcpy(&v, field, sizeof v);
            }
        }
        switch (o->kind) {
        case OPT_STR:
            fprintf(f, "--%s=%s\n", o->flag, (const char *)field);
            break;
        case OPT_MODE:
            fprintf(f, "--%s=%s\n", o->flag, *(const char *)field ? (const char *)field : "off");
            break;
        case OPT_INT:
        case OPT_SIZE:
            fprintf(f, "--%s=%lld\n", o->flag, (long long)v);
            break;
        case OPT_DURATION:
            fprintf(f, "--%s=%lldms\n", o->flag, (long long)v);
            break;
        case OPT_DTYPE: {
            attnd_dtype d;
            memcpy(&d, field, sizeof d);
            fprintf(f, "--%s=%s\n", o->flag, d == ATTND_DTYPE_INVALID ? "" : attnd_dtype_name(d));
            break;
        }
        case OPT_FLAG:
            if (v)
                fprintf(f, "--%s\n", o->flag);
            break;
        }
    }
}

void attnd_srv_config_list_models(FILE *f)
{
    for (size_t i = 0; i < attnd_model_count(); i++) {
        const attnd_model_spec *m = attnd_model_at(i);
        if (m->kind == ATTND_ATTN_MLA)
            fprintf(f, "%-12s MLA layers=%d q_heads=%d d_latent=%d d_rope=%d kv=%s\n",
                    m->name, m->n_layers, m->n_q_heads, m->d_latent, m->d_rope,
                    attnd_dtype_name(m->kv_dtype));
        else
            fprintf(f, "%-12s GQA layers=%d q_heads=%d kv_heads=%d head_dim=%d kv=%s\n",
                    m->name, m->n_layers, m->n_q_heads, m->n_kv_heads, m->head_dim,
                    attnd_dtype_name(m->kv_dtype));
    }
}
