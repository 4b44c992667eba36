/* libFuzzer target: the wire codec's decoders against protobuf-c.
 *
 * Every input is decoded as an AttendRequest and as an AttendResponse,
 * each by protobuf-c and by attnd_wire (flat and split into segments at
 * points drawn from the input's hash); any disagreement aborts with what
 * differs. Built with -DATTND_FUZZ=ON and CC=clang:
 *
 *   CC=clang cmake -S . -B build-fuzz -DATTND_FUZZ=ON -DATTND_CUDA=OFF \
 *       -DATTND_SANITIZE=address,undefined
 *   cmake --build build-fuzz --target fuzz_wire
 *   build-fuzz/tests/proto/fuzz_wire -max_total_time=60 -max_len=4096
 *
 * Not part of CTest (the Check suite test_proto_wire runs the same oracle
 * deterministically); a 60 s run is optional in CI.
 */
#include <stdio.h>
#include <stdlib.h>

#include "wire_oracle.h"
#include "wire_samples.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static uint64_t hash(const uint8_t *d, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ d[i]) * 1099511628211ull;
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t seed = hash(data, size);
    const char *d = wire_oracle_request(data, size, seed);
    if (!d)
        d = wire_oracle_reply(data, size, seed);
    if (d) {
        fprintf(stderr, "fuzz_wire: protobuf-c and attnd_wire disagree: %s\n", d);
        abort();
    }
    return 0;
}

/* Seeds: the samples, so mutation starts from valid messages. Written to
 * the corpus directory named by ATTND_FUZZ_SEEDS, if set. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("ATTND_FUZZ_SEEDS");
    if (!dir)
        return 0;
    for (int i = 0; i < WS_N_REQUESTS; i++) {
        char path[4096];
        size_t n;
        uint8_t *b = ws_request_packed(i, &n);
        snprintf(path, sizeof path, "%s/request-%d", dir, i);
        FILE *f = fopen(path, "wb");
        if (f) {
            fwrite(b, 1, n, f);
            fclose(f);
        }
        free(b);
    }
    return 0;
}
