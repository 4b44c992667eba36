/* Prometheus metrics of attnd: per-thread counters, summed when scraped.
 *
 * Every thread that records (whichever thread runs a call's step: the
 * gRPC threads, the UCX progress and executor threads) owns one shard
 * (attnd_srv_mshard), found through a thread-local pointer
 * (attnd_srv_metrics_local; made on the thread's first record, so no
 * thread model is assumed), and is the only writer of it: an increment is
 * a relaxed load and a relaxed store of a 64-bit atomic (plain moves on
 * x86-64: no lock, no shared cache line, no contention on the hot path). The scraper reads every
 * shard with relaxed loads and adds them up; a counter it reads is a value
 * the owner wrote, so sums only ever grow (each shard's value is monotonic).
 * Gauges that the engine and the group already keep (sessions, KV pages,
 * peers) are read from them at scrape time (metrics.c).
 *
 * The HTTP side (metrics_http.c, libmicrohttpd) serves GET /metrics in the
 * Prometheus text format 0.0.4 on --metrics-listen.
 *
 * Ownership: the registry (attnd_srv_metrics) owns every shard it hands
 * out; shards live until the registry is destroyed (a thread that ends
 * leaves its counts behind: counters never go down).
 */
#ifndef ATTND_SRV_METRICS_H
#define ATTND_SRV_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "attnd/status.h"

/* Methods counted: the server's registered methods and its generic
 * (unregistered) slot, then Attend over UCX. At least ATTND_SRV_M_COUNT + 2
 * (checked in metrics.c). */
#define ATTND_SRV_MX_METHODS 16
/* gRPC status codes 0..16 */
#define ATTND_SRV_MX_CODES 17
/* histogram buckets: 19 finite upper bounds (10 us .. 10 s) and +Inf */
#define ATTND_SRV_MX_BUCKETS 20

/* The server-side split of an Attend (attnd_srv_attend_times). */
enum attnd_srv_mx_phase {
    ATTND_SRV_MX_PH_QUEUE,    /* arrival to exec (decode included) */
    ATTND_SRV_MX_PH_VALIDATE,
    ATTND_SRV_MX_PH_KERNEL,   /* the engine's attend, or the group's */
    ATTND_SRV_MX_PH_FANOUT,   /* group: scatter, peers, combine */
    ATTND_SRV_MX_PH_ENCODE,
    ATTND_SRV_MX_PHASES
};

enum attnd_srv_mx_transport {
    ATTND_SRV_MX_GRPC,
    ATTND_SRV_MX_UCX,
    ATTND_SRV_MX_TRANSPORTS
};

typedef _Atomic uint64_t attnd_srv_mx_ctr;

/* A latency histogram: non-cumulative bucket counts (rendered cumulative)
 * and the sum in nanoseconds; the count is the buckets' total. */
typedef struct attnd_srv_mx_hist {
    attnd_srv_mx_ctr bucket[ATTND_SRV_MX_BUCKETS];
    attnd_srv_mx_ctr sum_ns;
} attnd_srv_mx_hist;

typedef struct attnd_srv_mshard {
    attnd_srv_mx_ctr requests[ATTND_SRV_MX_METHODS][ATTND_SRV_MX_CODES];
    attnd_srv_mx_hist latency[ATTND_SRV_MX_METHODS];
    attnd_srv_mx_hist phase[ATTND_SRV_MX_PHASES];
    attnd_srv_mx_ctr rx_bytes[ATTND_SRV_MX_TRANSPORTS]; /* request payloads */
    attnd_srv_mx_ctr tx_bytes[ATTND_SRV_MX_TRANSPORTS]; /* reply payloads */
    struct attnd_srv_mshard *next;                      /* the registry's list */
} attnd_srv_mshard;

/* Add v to a counter of a shard this thread owns (single writer). */
static inline void attnd_srv_mx_add(attnd_srv_mx_ctr *x, uint64_t v)
{
    atomic_store_explicit(x, atomic_load_explicit(x, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

/* Record one observation of ns nanoseconds. */
void attnd_srv_mx_observe(attnd_srv_mx_hist *h, uint64_t ns);
/* One call of method (an attnd_srv_method_id, or ATTND_SRV_MX_UCX_ATTEND)
 * ended with status st after ns nanoseconds. */
void attnd_srv_mx_request(attnd_srv_mshard *s, int method, attnd_status st, uint64_t ns);

typedef struct attnd_srv_metrics attnd_srv_metrics;

/* A registry with no shard yet. NULL when out of memory. Free with
 * attnd_srv_metrics_destroy (which frees every shard). */
attnd_srv_metrics *attnd_srv_metrics_create(void);
void attnd_srv_metrics_destroy(attnd_srv_metrics *m);
/* The calling thread's shard of m: made (zeroed, owned by m) on the
 * thread's first call for m, then one thread-local read. NULL when out of
 * memory (the callers then count nothing). Thread-safe; only the calling
 * thread may write the shard. */
attnd_srv_mshard *attnd_srv_metrics_local(attnd_srv_metrics *m);

struct attnd_srv;
/* The Prometheus text exposition of srv: shards summed, engine and group
 * gauges read now. Into *buf (malloc'd, grown as needed; the caller frees),
 * *len_p its length. 0, or -1 when out of memory. Thread-safe. */
int attnd_srv_metrics_render(struct attnd_srv *srv, char **buf, size_t *len_p);

/* metrics_http.c: serve GET /metrics of srv on listen ("HOST:PORT", port
 * 0 a free one; srv->metrics_port tells which). Stop with
 * attnd_srv_metrics_http_stop (idempotent). INVALID_ARGUMENT or UNAVAILABLE
 * naming --metrics-listen. */
attnd_status attnd_srv_metrics_http_start(struct attnd_srv *srv, const char *listen,
                                          attnd_error *err);
void attnd_srv_metrics_http_stop(struct attnd_srv *srv);

#endif /* ATTND_SRV_METRICS_H */
