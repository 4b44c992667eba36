/* Parsing of the engine's device name ("cpu", "cuda", "cuda:N"), shared by
 * the builds with and without CUDA so both reject the same bad names. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

attnd_status attnd__device_parse(const char *s, int32_t *device_p, attnd_error *err)
{
    if (!s || !*s || strcmp(s, "cpu") == 0) {
        *device_p = -1;
        return ATTND_OK;
    }
    if (strcmp(s, "cuda") == 0) {
        *device_p = 0;
        return ATTND_OK;
    }
    if (strncmp(s, "cuda:", 5) == 0 && s[5] >= '0' && s[5] <= '9') {
        char *end;
        errno = 0;
        long v = strtol(s + 5, &end, 10);
        if (!errno && !*end && v >= 0 && v < 1024) {
            *device_p = (int32_t)v;
            return ATTND_OK;
        }
    }
    return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                           "device: expected cpu, cuda or cuda:N (N in 0..1023), got \"%s\"", s);
}
