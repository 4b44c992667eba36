/* The metrics registry and its Prometheus text rendering (format 0.0.4).
 *
 * Counters live in per-thread shards (metrics.h says why); rendering sums
 * them and reads the engine's and the group's own state. Every family
 * follows Prometheus naming: the attnd_ prefix, base units (seconds,
 * bytes), _total for counters. The families, by what they answer:
 *
 *   requests    attnd_requests_total{transport,service,method,code}
 *               attnd_request_duration_seconds{transport,service,method} (histogram)
 *               attnd_attend_phase_seconds{phase} (histogram: queue, validate,
 *               kernel, fanout, encode of each Attend, both transports)
 *               attnd_calls_in_flight
 *   bytes       attnd_received_bytes_total{transport}, attnd_sent_bytes_total{transport}
 *               (request and reply payloads of the client-facing transports)
 *   KV          attnd_kv_pages{state=used|reserved|free}, attnd_kv_bytes{state},
 *               attnd_kv_page_size_bytes, attnd_kv_read_bytes_total,
 *               attnd_kv_appended_tokens_total, attnd_attend_sequences_total
 *   sparse      attnd_kv_dense_read_bytes_total, attnd_select_read_bytes_total,
 *               attnd_select_seconds_total, attnd_kv_pages_evicted_total
 *   sessions    attnd_sessions, attnd_sessions_limit
 *   tiers       attnd_kv_pages_held, attnd_kv_pages_capacity (every tier together),
 *               attnd_kv_below_slots{state=used|free}, attnd_kv_below_slot_bytes,
 *               attnd_kv_pages_moved_total{direction=down|up},
 *               attnd_kv_pages_prefetched_total, attnd_kv_load_waits_total,
 *               attnd_kv_pages_bad_total, attnd_kv_write_failures_total
 *   durability  attnd_durable{mode}, attnd_wal_written_bytes_total,
 *               attnd_wal_syncs_total, attnd_checkpoints_total,
 *               attnd_sessions_recovered, attnd_sessions_lost
 *               (worker/TIERS.md; all 0 without --kv-dir / --durable)
 *   group       attnd_group_ranks, attnd_group_rank, attnd_group_peers_connected,
 *               attnd_group_peer_up{peer}, attnd_group_peer_failures_total,
 *               attnd_group_sent_bytes_total, attnd_group_received_bytes_total
 *   process     attnd_ready, attnd_draining, attnd_uptime_seconds,
 *               attnd_build_info{version,model,device,shard}
 *
 * The README's Deploy section tables them; tests/deploy/test_metrics.py
 * scrapes a loaded server and parses the text with prometheus_client.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "srv.h"

_Static_assert(ATTND_SRV_MX_UCX_ATTEND < ATTND_SRV_MX_METHODS,
               "ATTND_SRV_MX_METHODS too small for the method table");

/* Upper bounds of the latency buckets, nanoseconds (the last is +Inf). */
static const uint64_t bucket_ns[ATTND_SRV_MX_BUCKETS - 1] = {
    10000,     25000,     50000,     100000,     250000,     500000,    1000000,
    2500000,   5000000,   10000000,  25000000,   50000000,   100000000, 250000000,
    500000000, 1000000000, 2500000000, 5000000000, 10000000000,
};
static const char *const bucket_le[ATTND_SRV_MX_BUCKETS] = {
    "1e-05", "2.5e-05", "5e-05", "0.0001", "0.00025", "0.0005", "0.001",
    "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
    "0.5", "1", "2.5", "5", "10", "+Inf",
};
static const char *const phase_name[ATTND_SRV_MX_PHASES] = {
    "queue", "validate", "kernel", "fanout", "encode",
};
static const char *const transport_name[ATTND_SRV_MX_TRANSPORTS] = {"grpc", "ucx"};

struct attnd_srv_metrics {
    pthread_mutex_t mu; /* guards the list (registration and scrapes) */
    attnd_srv_mshard *shards;
    uint64_t id;        /* unique in the process: a registry at a freed one's
                           address is not mistaken for it */
};

static atomic_uint_fast64_t next_registry_id = 1;

/* This thread's shard, and the registry it belongs to. */
static _Thread_local struct {
    uint64_t id;
    attnd_srv_mshard *shard;
} local;

void attnd_srv_mx_observe(attnd_srv_mx_hist *h, uint64_t ns)
{
    size_t i = 0;
    while (i < ATTND_SRV_MX_BUCKETS - 1 && ns > bucket_ns[i])
        i++;
    attnd_srv_mx_add(&h->bucket[i], 1);
    attnd_srv_mx_add(&h->sum_ns, ns);
}

void attnd_srv_mx_request(attnd_srv_mshard *s, int method, attnd_status st, uint64_t ns)
{
    int code = -(int)st;
    if (!s || method < 0 || method >= ATTND_SRV_MX_METHODS)
        return;
    if (code < 0 || code >= ATTND_SRV_MX_CODES)
        code = 2; /* UNKNOWN */
    attnd_srv_mx_add(&s->requests[method][code], 1);
    attnd_srv_mx_observe(&s->latency[method], ns);
}

attnd_srv_metrics *attnd_srv_metrics_create(void)
{
    attnd_srv_metrics *m = calloc(1, sizeof *m);
    if (m) {
        pthread_mutex_init(&m->mu, NULL);
        m->id = atomic_fetch_add(&next_registry_id, 1);
    }
    return m;
}

void attnd_srv_metrics_destroy(attnd_srv_metrics *m)
{
    if (!m)
        return;
    while (m->shards) {
        attnd_srv_mshard *next = m->shards->next;
        free(m->shards);
        m->shards = next;
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}

attnd_srv_mshard *attnd_srv_metrics_local(attnd_srv_metrics *m)
{
    attnd_srv_mshard *s;
    if (!m)
        return NULL;
    if (local.id == m->id)
        return local.shard;
    if (!(s = calloc(1, sizeof *s)))
        return NULL;
    pthread_mutex_lock(&m->mu);
    s->next = m->shards;
    m->shards = s;
    pthread_mutex_unlock(&m->mu);
    local.id = m->id;
    local.shard = s;
    return s;
}

/* ---- rendering ------------------------------------------------------------------ */

/* The text being built; a failed allocation sticks (oom) and ends it. */
typedef struct out {
    char *p;
    size_t len, cap;
    int oom;
} out;

__attribute__((format(printf, 2, 3))) static void put(out *o, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        if (o->oom)
            return;
        size_t room = o->cap - o->len;
        va_start(ap, fmt);
        int n = vsnprintf(o->p ? o->p + o->len : NULL, o->p ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->oom = 1;
            return;
        }
        if ((size_t)n < room) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap ? o->cap * 2 : 16384;
        while (cap < o->len + (size_t)n + 1)
            cap *= 2;
        char *np = realloc(o->p, cap);
        if (!np) {
            o->oom = 1;
            return;
        }
        o->p = np;
        o->cap = cap;
    }
}

static void family(out *o, const char *name, const char *type, const char *help)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static uint64_t ld(const attnd_srv_mx_ctr *x)
{
    return atomic_load_explicit(x, memory_order_relaxed);
}

/* The sum of every shard: a snapshot the renderer reads at leisure. */
typedef struct totals {
    uint64_t requests[ATTND_SRV_MX_METHODS][ATTND_SRV_MX_CODES];
    uint64_t lat_bucket[ATTND_SRV_MX_METHODS][ATTND_SRV_MX_BUCKETS];
    uint64_t lat_sum[ATTND_SRV_MX_METHODS];
    uint64_t ph_bucket[ATTND_SRV_MX_PHASES][ATTND_SRV_MX_BUCKETS];
    uint64_t ph_sum[ATTND_SRV_MX_PHASES];
    uint64_t rx[ATTND_SRV_MX_TRANSPORTS], tx[ATTND_SRV_MX_TRANSPORTS];
} totals;

static void sum_shards(attnd_srv_metrics *m, totals *t)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_lock(&m->mu);
    for (const attnd_srv_mshard *s = m->shards; s; s = s->next) {
        for (int i = 0; i < ATTND_SRV_MX_METHODS; i++) {
            for (int c = 0; c < ATTND_SRV_MX_CODES; c++)
                t->requests[i][c] += ld(&s->requests[i][c]);
            for (int b = 0; b < ATTND_SRV_MX_BUCKETS; b++)
                t->lat_bucket[i][b] += ld(&s->latency[i].bucket[b]);
            t->lat_sum[i] += ld(&s->latency[i].sum_ns);
        }
        for (int p = 0; p < ATTND_SRV_MX_PHASES; p++) {
            for (int b = 0; b < ATTND_SRV_MX_BUCKETS; b++)
                t->ph_bucket[p][b] += ld(&s->phase[p].bucket[b]);
            t->ph_sum[p] += ld(&s->phase[p].sum_ns);
        }
        for (int x = 0; x < ATTND_SRV_MX_TRANSPORTS; x++) {
            t->rx[x] += ld(&s->rx_bytes[x]);
            t->tx[x] += ld(&s->tx_bytes[x]);
        }
    }
    pthread_mutex_unlock(&m->mu);
}

/* The labels of method i: transport, service, method ("/a.b.C/M" split). */
static void method_labels(int i, char *buf, size_t n)
{
    if (i == ATTND_SRV_MX_UCX_ATTEND) {
        snprintf(buf, n, "transport=\"ucx\",service=\"attnd.v1.Attnd\",method=\"Attend\"");
        return;
    }
    if (i == ATTND_SRV_M_GENERIC) {
        snprintf(buf, n, "transport=\"grpc\",service=\"\",method=\"unregistered\"");
        return;
    }
    const char *path = attnd_srv_methods[i].path;
    const char *slash = strrchr(path, '/');
    snprintf(buf, n, "transport=\"grpc\",service=\"%.*s\",method=\"%s\"",
             (int)(slash - path - 1), path + 1, slash + 1);
}

/* Cumulative buckets, _sum and _count of one histogram series. */
static void hist(out *o, const char *name, const char *labels, const uint64_t *bucket,
                 uint64_t sum_ns)
{
    uint64_t cum = 0;
    for (int b = 0; b < ATTND_SRV_MX_BUCKETS; b++) {
        cum += bucket[b];
        put(o, "%s_bucket{%s%sle=\"%s\"} %llu\n", name, labels, labels[0] ? "," : "",
            bucket_le[b], (unsigned long long)cum);
    }
    put(o, "%s_sum%s%s%s %.9f\n", name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "",
        (double)sum_ns / 1e9);
    put(o, "%s_count%s%s%s %llu\n", name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "",
        (unsigned long long)cum);
}

/* Methods with any call, plus Attend (always shown: dashboards need the
 * series before the first call). */
static int method_shown(const totals *t, int i)
{
    if (i == ATTND_SRV_M_ATTEND)
        return 1;
    for (int c = 0; c < ATTND_SRV_MX_CODES; c++)
        if (t->requests[i][c])
            return 1;
    return 0;
}

static void render_requests(out *o, attnd_srv *srv, const totals *t)
{
    char lab[160];

    family(o, "attnd_requests_total", "counter",
           "RPCs ended, by transport, service, method and gRPC status code.");
    for (int i = 0; i <= ATTND_SRV_MX_UCX_ATTEND; i++) {
        if (!method_shown(t, i))
            continue;
        method_labels(i, lab, sizeof lab);
        for (int c = 0; c < ATTND_SRV_MX_CODES; c++)
            if (t->requests[i][c] || c == 0)
                put(o, "attnd_requests_total{%s,code=\"%s\"} %llu\n", lab,
                    attnd_status_string((attnd_status)(-c)),
                    (unsigned long long)t->requests[i][c]);
    }
    family(o, "attnd_request_duration_seconds", "histogram",
           "Time from a call's arrival at a server thread to its status (a stream's "
           "whole life for the streaming methods).");
    for (int i = 0; i <= ATTND_SRV_MX_UCX_ATTEND; i++) {
        if (!method_shown(t, i))
            continue;
        method_labels(i, lab, sizeof lab);
        hist(o, "attnd_request_duration_seconds", lab, t->lat_bucket[i], t->lat_sum[i]);
    }
    family(o, "attnd_attend_phase_seconds", "histogram",
           "Server-side split of each successful Attend (gRPC and UCX): queue (arrival "
           "to execution, decoding included), validate, kernel (the engine, or the "
           "group's scatter + compute + combine), fanout (group only), encode.");
    for (int p = 0; p < ATTND_SRV_MX_PHASES; p++) {
        snprintf(lab, sizeof lab, "phase=\"%s\"", phase_name[p]);
        hist(o, "attnd_attend_phase_seconds", lab, t->ph_bucket[p], t->ph_sum[p]);
    }
    family(o, "attnd_calls_in_flight", "gauge", "gRPC calls accepted and not yet ended.");
    put(o, "attnd_calls_in_flight %d\n", atomic_load(&srv->active_calls));
    family(o, "attnd_received_bytes_total", "counter",
           "Request message bytes received from clients, by transport.");
    for (int x = 0; x < ATTND_SRV_MX_TRANSPORTS; x++)
        put(o, "attnd_received_bytes_total{transport=\"%s\"} %llu\n", transport_name[x],
            (unsigned long long)t->rx[x]);
    family(o, "attnd_sent_bytes_total", "counter",
           "Reply message bytes sent to clients, by transport.");
    for (int x = 0; x < ATTND_SRV_MX_TRANSPORTS; x++)
        put(o, "attnd_sent_bytes_total{transport=\"%s\"} %llu\n", transport_name[x],
            (unsigned long long)t->tx[x]);
}

/* A family of one unlabelled sample: a uint64_t field of
 * attnd_engine_stats. */
typedef struct scalar {
    const char *name, *type, *help;
    size_t off;
} scalar;

#define SCALAR(name, type, field, help) {name, type, help, offsetof(attnd_engine_stats, field)}

static void scalars(out *o, const attnd_engine_stats *st, const scalar *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t v;
        memcpy(&v, (const char *)st + s[i].off, sizeof v);
        family(o, s[i].name, s[i].type, s[i].help);
        put(o, "%s %llu\n", s[i].name, (unsigned long long)v);
    }
}

static const scalar kv_scalars[] = {
    SCALAR("attnd_kv_page_size_bytes", "gauge", page_bytes, "Bytes of one KV page."),
    SCALAR("attnd_kv_read_bytes_total", "counter", kv_bytes_read,
           "KV bytes read by attention kernels."),
    SCALAR("attnd_kv_dense_read_bytes_total", "counter", kv_bytes_dense,
           "KV bytes dense attention of the same calls would have read (equal to "
           "attnd_kv_read_bytes_total while every session is dense)."),
    SCALAR("attnd_select_read_bytes_total", "counter", select_bytes_read,
           "Key bounds read by sparse page selection (topk-pages)."),
    SCALAR("attnd_kv_pages_evicted_total", "counter", pages_evicted,
           "KV pages streaming policies gave back to the pool."),
    SCALAR("attnd_kv_appended_tokens_total", "counter", tokens_appended,
           "Tokens appended to this rank's KV (AppendKV and Attend's new KV), per layer."),
    SCALAR("attnd_attend_sequences_total", "counter", attend_sequences,
           "Sequences attended by this rank's engine (a call of batch B counts B)."),
    SCALAR("attnd_sessions", "gauge", sessions, "Open sessions."),
    SCALAR("attnd_sessions_limit", "gauge", max_sessions,
           "Open sessions at most (--max-sessions)."),
};

static void render_kv(out *o, const attnd_engine_stats *st)
{
    uint64_t busy = st->pages_used + st->pages_reserved;
    uint64_t pages[3] = {st->pages_used, st->pages_reserved,
                         st->pages_total > busy ? st->pages_total - busy : 0};
    static const char *const state[3] = {"used", "reserved", "free"};

    family(o, "attnd_kv_pages", "gauge",
           "KV pool pages of this rank by state: used (holding KV), reserved (free but "
           "promised to a session's max_tokens), free.");
    for (int i = 0; i < 3; i++)
        put(o, "attnd_kv_pages{state=\"%s\"} %llu\n", state[i], (unsigned long long)pages[i]);
    family(o, "attnd_kv_bytes", "gauge", "KV pool bytes of this rank by page state.");
    for (int i = 0; i < 3; i++)
        put(o, "attnd_kv_bytes{state=\"%s\"} %llu\n", state[i],
            (unsigned long long)(pages[i] * st->page_bytes));
    family(o, "attnd_select_seconds_total", "counter",
           "Time spent in sparse page selection (topk-pages), seconds.");
    put(o, "attnd_select_seconds_total %.9f\n", (double)st->select_ns * 1e-9);
    scalars(o, st, kv_scalars, sizeof kv_scalars / sizeof kv_scalars[0]);
}

static const scalar tier_scalars[] = {
    SCALAR("attnd_kv_pages_held", "gauge", pages_held,
           "KV pages sessions hold in every tier together (a page below memory counts once)."),
    SCALAR("attnd_kv_pages_capacity", "gauge", pages_capacity,
           "KV pages every tier together can hold (admission's limit)."),
    SCALAR("attnd_kv_below_slot_bytes", "gauge", below_slot_bytes,
           "Bytes of one slot of the tier below memory (header block and page)."),
    SCALAR("attnd_kv_pages_prefetched_total", "counter", pages_prefetched,
           "KV pages read back ahead of the Attend that needed them."),
    SCALAR("attnd_kv_load_waits_total", "counter", load_waits,
           "Attends that waited for a read of their KV from the tier below."),
    SCALAR("attnd_kv_pages_bad_total", "counter", pages_bad,
           "KV page reads that failed their checksum or header check (the session: "
           "DATA_LOSS)."),
    SCALAR("attnd_kv_write_failures_total", "counter", write_failures,
           "KV page writes to the tier below that failed (a full disk included)."),
    SCALAR("attnd_wal_written_bytes_total", "counter", wal_bytes,
           "Bytes written to the write-ahead log (padding included)."),
    SCALAR("attnd_wal_syncs_total", "counter", wal_syncs,
           "fdatasyncs of the write-ahead log (each a group commit)."),
    SCALAR("attnd_checkpoints_total", "counter", checkpoints, "Checkpoints written since start."),
    SCALAR("attnd_sessions_recovered", "gauge", sessions_recovered,
           "Sessions rebuilt from --kv-dir at this process's start."),
    SCALAR("attnd_sessions_lost", "gauge", sessions_lost,
           "Of the recovered sessions, those whose KV failed a check (DATA_LOSS until "
           "closed)."),
};

/* The tiers below memory and the write-ahead log (worker/TIERS.md). */
static void render_tiers(out *o, const attnd_engine_stats *st)
{
    static const char *const mode[3] = {"off", "sync", "batch"};
    uint64_t free_slots = st->below_slots > st->below_slots_used
                              ? st->below_slots - st->below_slots_used
                              : 0;

    family(o, "attnd_kv_below_slots", "gauge",
           "Page slots of the tier below memory (--kv-dir or --kv-host) by state; 0 without one.");
    put(o, "attnd_kv_below_slots{state=\"used\"} %llu\n",
        (unsigned long long)st->below_slots_used);
    put(o, "attnd_kv_below_slots{state=\"free\"} %llu\n", (unsigned long long)free_slots);
    family(o, "attnd_kv_pages_moved_total", "counter",
           "KV pages written to the tier below memory (down) and read back (up).");
    put(o, "attnd_kv_pages_moved_total{direction=\"down\"} %llu\n",
        (unsigned long long)st->pages_moved_down);
    put(o, "attnd_kv_pages_moved_total{direction=\"up\"} %llu\n",
        (unsigned long long)st->pages_moved_up);
    family(o, "attnd_durable", "gauge",
           "Constant 1; label: the --durable mode (off, sync, batch).");
    put(o, "attnd_durable{mode=\"%s\"} 1\n",
        st->durable >= 0 && st->durable < 3 ? mode[st->durable] : "off");
    scalars(o, st, tier_scalars, sizeof tier_scalars / sizeof tier_scalars[0]);
}

/* 1 when rank r is listed in missing ("1,3"). */
static int listed(const char *missing, int r)
{
    for (const char *s = missing; *s;) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s)
            return 0;
        if (v == r)
            return 1;
        s = *end == ',' ? end + 1 : end;
    }
    return 0;
}

static void render_group(out *o, attnd_srv *srv)
{
    attnd_group_state gs = {.size = 1};
    if (srv->group)
        attnd_group_get_state(srv->group, &gs);
    family(o, "attnd_group_ranks", "gauge", "Ranks of this worker group (1: a lone worker).");
    put(o, "attnd_group_ranks %d\n", gs.size);
    family(o, "attnd_group_rank", "gauge", "This process's rank in its group.");
    put(o, "attnd_group_rank %d\n", gs.rank);
    family(o, "attnd_group_peers_connected", "gauge", "Peers this rank is connected to now.");
    put(o, "attnd_group_peers_connected %d\n", gs.connected);
    family(o, "attnd_group_peer_up", "gauge", "1 while the peer rank is connected, else 0.");
    for (int r = 0; r < gs.size; r++)
        if (r != gs.rank)
            put(o, "attnd_group_peer_up{peer=\"%d\"} %d\n", r, !listed(gs.missing, r));
    family(o, "attnd_group_peer_failures_total", "counter",
           "Requests that failed for a missing or failed peer.");
    put(o, "attnd_group_peer_failures_total %llu\n", (unsigned long long)gs.peer_failures);
    family(o, "attnd_group_sent_bytes_total", "counter",
           "Rank-to-rank UCX bytes this rank sent to its peers (headers included).");
    put(o, "attnd_group_sent_bytes_total %llu\n", (unsigned long long)gs.bytes_sent);
    family(o, "attnd_group_received_bytes_total", "counter",
           "Rank-to-rank UCX bytes this rank received from its peers (headers included).");
    put(o, "attnd_group_received_bytes_total %llu\n", (unsigned long long)gs.bytes_received);
}

static void render_process(out *o, attnd_srv *srv)
{
    const attnd_model_spec *spec = srv->model.spec;
    family(o, "attnd_ready", "gauge",
           "1 while the readiness health service is SERVING (not draining, group whole).");
    put(o, "attnd_ready %d\n", attnd_srv_ready(srv));
    family(o, "attnd_draining", "gauge", "1 once shutdown began.");
    put(o, "attnd_draining %d\n", atomic_load(&srv->draining) ? 1 : 0);
    family(o, "attnd_uptime_seconds", "gauge", "Seconds since the server started.");
    put(o, "attnd_uptime_seconds %.3f\n", (double)attnd_srv_uptime_ms(srv) / 1e3);
    family(o, "attnd_build_info", "gauge", "Constant 1; labels: version and configuration.");
    put(o, "attnd_build_info{version=\"%s\",model=\"%s\",device=\"%s\",shard=\"%s\"} 1\n",
        ATTND_VERSION, spec->name, srv->cfg->device,
        srv->group ? srv->cfg->shard : "none");
}

int attnd_srv_metrics_render(attnd_srv *srv, char **buf, size_t *len_p)
{
    out o = {0};
    totals *t = malloc(sizeof *t);

    if (!t)
        return -1;
    sum_shards(srv->metrics, t);
    render_requests(&o, srv, t);
    free(t);
    attnd_engine_stats st;
    attnd_engine_get_stats(srv->engine, &st);
    render_kv(&o, &st);
    render_tiers(&o, &st);
    render_group(&o, srv);
    render_process(&o, srv);
    if (o.oom) {
        free(o.p);
        return -1;
    }
    *buf = o.p;
    *len_p = o.len;
    return 0;
}
