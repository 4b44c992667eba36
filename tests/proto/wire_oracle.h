/* The oracle of the wire codec's decoders: protobuf-c. Each function
 * decodes the same bytes with protobuf-c's generated unpack and with
 * attnd_wire (flat, and again split into segments at points drawn from
 * `seed`), and says whether they agree: both refuse, or both accept and
 * read every field to the same value (tensor bytes included). Shared by the
 * Check suite (tests/proto/test_wire.c) and the libFuzzer target
 * (fuzz_wire.c). */
#ifndef ATTND_WIRE_ORACLE_H
#define ATTND_WIRE_ORACLE_H

#include <stddef.h>
#include <stdint.h>

/* NULL when they agree; else what differs (static storage, per thread). */
const char *wire_oracle_request(const uint8_t *data, size_t len, uint64_t seed);
const char *wire_oracle_reply(const uint8_t *data, size_t len, uint64_t seed);

/* Whether protobuf-c alone accepts the bytes (for tests that want to know
 * which way both went). */
int wire_oracle_pbc_accepts_request(const uint8_t *data, size_t len);

#endif /* ATTND_WIRE_ORACLE_H */
