/* attnd_log: one line per event on stderr, as text or JSON.
 *
 * Every room logs through this (the server, the worker group, the UCX
 * endpoint): a line carries a UTC timestamp, a level, the component that
 * decided the event, the message, and the request id when the event
 * belongs to one request. Formats (--log-format):
 *
 *   text  2026-12-01T10:00:00.123Z info  server: listening on 0.0.0.0:7700
 *         2026-12-01T10:00:00.456Z debug attend: UNAVAILABLE: rank 1 ... request_id=42
 *   json  {"ts":"2026-12-01T10:00:00.123Z","level":"info","component":"server",
 *          "msg":"listening on 0.0.0.0:7700"}   (one object a line; "request_id" when set)
 *
 * Levels (--log-level, default info): error (the process or a peer failed),
 * warn (degraded: a peer lost, calls cancelled at shutdown), info (life
 * cycle: start, listening, peers joining, stop), debug (per request:
 * failed calls with their status and request id). Nothing is logged per
 * successful Attend at any level, and nothing per request below debug.
 *
 * A line is formatted into a stack buffer (ATTND_LOG_LINE_MAX, longer
 * messages are cut) and written with one write(2), so lines of concurrent
 * threads never interleave. Settings are process-wide atomics: set them
 * once at start (attnd_log_configure); logging takes no lock.
 */
#ifndef ATTND_LOG_H
#define ATTND_LOG_H

#include <stdint.h>

typedef enum attnd_log_level {
    ATTND_LOG_ERROR,
    ATTND_LOG_WARN,
    ATTND_LOG_INFO,
    ATTND_LOG_DEBUG,
} attnd_log_level;

#define ATTND_LOG_LINE_MAX 2048

/* Set the format ("text" or "json") and the level ("error", "warn",
 * "info", "debug"); NULL or "" keeps the current one. 0, or -1 (nothing
 * changed) when a name is not one of those. */
int attnd_log_configure(const char *format, const char *level);
/* 1 when lines of level lvl are written. */
int attnd_log_enabled(attnd_log_level lvl);
/* The level's name ("info"). */
const char *attnd_log_level_name(attnd_log_level lvl);

/* Log one event of component (a short word: "server", "group", "ucx").
 * request_id: the request's id, or 0 for none. */
void attnd_log_req(attnd_log_level lvl, const char *component, uint64_t request_id,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define attnd_log(lvl, component, ...) attnd_log_req((lvl), (component), 0, __VA_ARGS__)
#define attnd_log_error(component, ...) attnd_log(ATTND_LOG_ERROR, component, __VA_ARGS__)
#define attnd_log_warn(component, ...) attnd_log(ATTND_LOG_WARN, component, __VA_ARGS__)
#define attnd_log_info(component, ...) attnd_log(ATTND_LOG_INFO, component, __VA_ARGS__)
#define attnd_log_debug(component, ...) attnd_log(ATTND_LOG_DEBUG, component, __VA_ARGS__)

#endif /* ATTND_LOG_H */
