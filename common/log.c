/* attnd_log: see attnd_log.h. The format and level are two relaxed atomics;
 * a line is built in a stack buffer and goes out in one write(2). */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "attnd_log.h"

static atomic_int log_level = ATTND_LOG_INFO;
static atomic_int log_json = 0;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

const char *attnd_log_level_name(attnd_log_level lvl)
{
    return lvl >= ATTND_LOG_ERROR && lvl <= ATTND_LOG_DEBUG ? level_names[lvl] : "?";
}

int attnd_log_configure(const char *format, const char *level)
{
    int json = -1, lvl = -1;

    if (format && format[0]) {
        if (strcmp(format, "text") == 0)
            json = 0;
        else if (strcmp(format, "json") == 0)
            json = 1;
        else
            return -1;
    }
    if (level && level[0]) {
        for (int i = ATTND_LOG_ERROR; i <= ATTND_LOG_DEBUG; i++)
            if (strcmp(level, level_names[i]) == 0)
                lvl = i;
        if (lvl < 0)
            return -1;
    }
    if (json >= 0)
        atomic_store_explicit(&log_json, json, memory_order_relaxed);
    if (lvl >= 0)
        atomic_store_explicit(&log_level, lvl, memory_order_relaxed);
    return 0;
}

int attnd_log_enabled(attnd_log_level lvl)
{
    return (int)lvl <= atomic_load_explicit(&log_level, memory_order_relaxed);
}

/* Append s to buf[*n..cap) with JSON string escapes; stops at the end. */
static void json_escape(char *buf, size_t *n, size_t cap, const char *s)
{
    for (; *s && *n + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            buf[(*n)++] = '\\';
            buf[(*n)++] = (char)ch;
        } else if (ch == '\n') {
            buf[(*n)++] = '\\';
            buf[(*n)++] = 'n';
        } else if (ch < 0x20) {
            *n += (size_t)snprintf(buf + *n, cap - *n, "\\u%04x", ch);
        } else {
            buf[(*n)++] = (char)ch;
        }
    }
}

/* Bytes written by snprintf into buf[n..cap), clamped to what fits. */
static size_t advance(size_t n, size_t cap, int w)
{
    if (w < 0)
        return n;
    return n + (size_t)w < cap ? n + (size_t)w : cap - 1;
}

void attnd_log_req(attnd_log_level lvl, const char *component, uint64_t request_id,
                   const char *fmt, ...)
{
    char msg[ATTND_LOG_LINE_MAX], line[ATTND_LOG_LINE_MAX + 256], ts[48];
    struct timespec now;
    struct tm tm;
    va_list ap;
    size_t n = 0, cap = sizeof line - 2; /* room for '}' and '\n' */

    if (!attnd_log_enabled(lvl))
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t tl = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + tl, sizeof ts - tl, ".%03uZ", (unsigned)(now.tv_nsec / 1000000) % 1000u);
    if (atomic_load_explicit(&log_json, memory_order_relaxed)) {
        n = advance(n, cap, snprintf(line, cap, "{\"ts\":\"%s\",\"level\":\"%s\",\"component\":\"",
                                     ts, attnd_log_level_name(lvl)));
        json_escape(line, &n, cap, component);
        n = advance(n, cap, snprintf(line + n, cap - n, "\",\"msg\":\""));
        json_escape(line, &n, cap - 64, msg); /* room for the closing fields */
        n = advance(n, cap, snprintf(line + n, cap - n, "\""));
        if (request_id)
            n = advance(n, cap, snprintf(line + n, cap - n, ",\"request_id\":%llu",
                                         (unsigned long long)request_id));
        line[n++] = '}';
    } else { /* a message is one line: newlines become spaces */
        for (char *p = msg; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
        n = advance(n, cap, snprintf(line, cap, "%s %-5s %s: %s", ts,
                                     attnd_log_level_name(lvl), component, msg));
        if (request_id)
            n = advance(n, cap, snprintf(line + n, cap - n, " request_id=%llu",
                                         (unsigned long long)request_id));
    }
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w; /* nowhere to report a failed log write */
}
