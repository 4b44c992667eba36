/* Helpers of the attnd-bench suite: run the real attnd-bench binary
 * (ATTND_BENCH_BIN) with a real attnd (ATTND_BIN, spawned by the bench
 * itself on loopback) and read back its --json report.
 *
 * The JSON reader is a lookup by dotted path ("decode.call_latency_ms.p99")
 * over the report attnd-bench writes (one key per line, two spaces of
 * indent per level): it finds each key at its level inside the span of
 * its parent object, so a name used in several objects ("count") is found
 * in the right one. It reads that format, not JSON in general.
 */
#ifndef ATTND_BENCH_TESTUTIL_H
#define ATTND_BENCH_TESTUTIL_H

#include <stddef.h>

/* Run attnd-bench with --attnd ATTND_BIN, --json <tmp> and the given
 * arguments (NULL-terminated); its stdout and stderr go to ours. Returns
 * the exit status (-1 if it died of a signal or could not run) and, when
 * json_p is not NULL, the report's text (malloc'd; NULL when none was
 * written). A run is bounded by 300 s (then killed). */
int bt_run(char **json_p, const char *const *args);
#define bt_run_args(json_p, ...) bt_run((json_p), (const char *const[]){__VA_ARGS__, NULL})

/* The number at `path`; 0 when found, -1 otherwise. */
int bt_num(const char *json, const char *path, double *v_p);
/* The same, asserting it exists (Check). */
double bt_must(const char *json, const char *path);

/* A temporary file name under /tmp (the caller unlinks it). */
void bt_tmpname(char *buf, size_t n, const char *suffix);

#endif /* ATTND_BENCH_TESTUTIL_H */
