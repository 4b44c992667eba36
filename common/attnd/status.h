/* attnd status codes: the one error type every room returns.
 *
 * Values are the negated gRPC status codes, so a status crosses the wire and
 * back without a table: grpc code = -status. 0 is success. Functions that can
 * fail for a reason a user should read also take an attnd_error, which carries
 * the code and a message naming the offending field and the expected value.
 * Header-only so that every room (and the client) can use it without a
 * shared library. */
#ifndef ATTND_STATUS_H
#define ATTND_STATUS_H

#include <stdarg.h>
#include <stdio.h>

typedef enum attnd_status {
    ATTND_OK = 0,
    ATTND_ERR_CANCELLED = -1,
    ATTND_ERR_UNKNOWN = -2,
    ATTND_ERR_INVALID_ARGUMENT = -3,
    ATTND_ERR_DEADLINE_EXCEEDED = -4,
    ATTND_ERR_NOT_FOUND = -5,
    ATTND_ERR_ALREADY_EXISTS = -6,
    ATTND_ERR_PERMISSION_DENIED = -7,
    ATTND_ERR_RESOURCE_EXHAUSTED = -8,
    ATTND_ERR_FAILED_PRECONDITION = -9,
    ATTND_ERR_ABORTED = -10,
    ATTND_ERR_OUT_OF_RANGE = -11,
    ATTND_ERR_UNIMPLEMENTED = -12,
    ATTND_ERR_INTERNAL = -13,
    ATTND_ERR_UNAVAILABLE = -14,
    ATTND_ERR_DATA_LOSS = -15,
    ATTND_ERR_UNAUTHENTICATED = -16,
} attnd_status;

#define ATTND_ERROR_MSG_MAX 256

/* A status with its human-readable reason. Callers own it (usually on the
 * stack); functions fill it only when they fail. */
typedef struct attnd_error {
    attnd_status code;
    char msg[ATTND_ERROR_MSG_MAX];
} attnd_error;

static inline const char *attnd_status_string(attnd_status s)
{
    switch (s) {
    case ATTND_OK: return "OK";
    case ATTND_ERR_CANCELLED: return "CANCELLED";
    case ATTND_ERR_UNKNOWN: return "UNKNOWN";
    case ATTND_ERR_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case ATTND_ERR_DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case ATTND_ERR_NOT_FOUND: return "NOT_FOUND";
    case ATTND_ERR_ALREADY_EXISTS: return "ALREADY_EXISTS";
    case ATTND_ERR_PERMISSION_DENIED: return "PERMISSION_DENIED";
    case ATTND_ERR_RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case ATTND_ERR_FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case ATTND_ERR_ABORTED: return "ABORTED";
    case ATTND_ERR_OUT_OF_RANGE: return "OUT_OF_RANGE";
    case ATTND_ERR_UNIMPLEMENTED: return "UNIMPLEMENTED";
    case ATTND_ERR_INTERNAL: return "INTERNAL";
    case ATTND_ERR_UNAVAILABLE: return "UNAVAILABLE";
    case ATTND_ERR_DATA_LOSS: return "DATA_LOSS";
    case ATTND_ERR_UNAUTHENTICATED: return "UNAUTHENTICATED";
    }
    return "UNKNOWN_STATUS";
}

/* Record a failure in err (may be NULL) and return code, so that a caller
 * can write `return attnd_error_set(err, ATTND_ERR_NOT_FOUND, "...")`. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static inline attnd_status attnd_error_set(attnd_error *err, attnd_status code,
                                           const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

static inline void attnd_error_clear(attnd_error *err)
{
    if (err) {
        err->code = ATTND_OK;
        err->msg[0] = '\0';
    }
}

#endif /* ATTND_STATUS_H */
