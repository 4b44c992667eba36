/* The server's split of an Attend call, read from its trailing metadata.
 *
 * The server (service/rpc_attend.c) sends "attnd-timing" with a value like
 * "q=1200,v=300,k=45000,f=0,e=800" (nanoseconds). Keys this client does
 * not know are skipped, so the server may add more; a malformed value
 * leaves the timing invalid rather than half-filled.
 */
#include <stdlib.h>
#include <string.h>

#include <grpc/slice.h>

#include "client_int.h"

#define TIMING_KEY "attnd-timing"

/* Parse "k=v,k=v" from s[0..n) into *t; 0, or -1 when malformed. */
static int parse_pairs(const char *s, size_t n, attnd_server_timing *t)
{
    size_t i = 0;
    while (i < n) {
        char key = s[i];
        if (i + 2 > n || s[i + 1] != '=')
            return -1;
        i += 2;
        uint64_t v = 0;
        size_t digits = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            v = v * 10 + (uint64_t)(s[i] - '0');
            i++;
            digits++;
        }
        if (!digits || (i < n && s[i] != ','))
            return -1;
        i++; /* the comma */
        switch (key) {
        case 'q': t->queue_ns = v; break;
        case 'v': t->validate_ns = v; break;
        case 'k': t->kernel_ns = v; break;
        case 'f': t->fanout_ns = v; break;
        case 'e': t->encode_ns = v; break;
        default: break;
        }
    }
    return 0;
}

void attnd__client_timing_parse(const grpc_metadata_array *md, attnd_server_timing *t)
{
    memset(t, 0, sizeof *t);
    for (size_t i = 0; i < md->count; i++) {
        const grpc_slice *k = &md->metadata[i].key;
        if (GRPC_SLICE_LENGTH(*k) != sizeof TIMING_KEY - 1 ||
            memcmp(GRPC_SLICE_START_PTR(*k), TIMING_KEY, sizeof TIMING_KEY - 1) != 0)
            continue;
        const grpc_slice *v = &md->metadata[i].value;
        if (parse_pairs((const char *)GRPC_SLICE_START_PTR(*v), GRPC_SLICE_LENGTH(*v), t) == 0)
            t->valid = 1;
        else
            memset(t, 0, sizeof *t);
        return;
    }
}
