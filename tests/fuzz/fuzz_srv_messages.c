/* libFuzzer target: every protobuf message the server unpacks from a
 * client, as the server unpacks it (attnd_srv_unpack into the decode
 * arena, which is reset between messages as on an executor), and then
 * through the validator that reads it (issue 15 item 7).
 *
 * The input's first byte picks the message type, the rest is its bytes:
 * CreateSessionRequest, CloseSessionRequest, AppendKVRequest (one chunk),
 * AttendRequest (protobuf-c's path; the hand-written Attend codec has its
 * own target, proto/'s fuzz_wire), GetStatsRequest, GetEndpointRequest,
 * LoadWeightsRequest and grpc.health.v1's HealthCheckRequest. Validation
 * runs against the served model tiny-mla (page 64, at most 16 sessions per
 * batch). Beyond "no crash, no sanitizer report", what a validator accepts
 * must be consistent: an accepted chunk's bytes are exactly n_tokens
 * entries, an accepted Attend's shapes are the model's.
 *
 * Built with -DATTND_FUZZ=ON and CC=clang (tests/fuzz/README.md); the
 * corpus in tests/fuzz/corpus/srv_messages is replayed by CTest in every
 * build (test_fuzz_replay_srv_messages). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "validate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCMessageDescriptor *const kinds[] = {
    &attnd__v1__create_session_request__descriptor,
    &attnd__v1__close_session_request__descriptor,
    &attnd__v1__append_kvrequest__descriptor,
    &attnd__v1__attend_request__descriptor,
    &attnd__v1__get_stats_request__descriptor,
    &attnd__v1__get_endpoint_request__descriptor,
    &attnd__v1__load_weights_request__descriptor,
    &grpc__health__v1__health_check_request__descriptor,
};
#define N_KINDS (sizeof kinds / sizeof kinds[0])

static attnd_srv_model model;
static attnd_srv_arena arena;
static int ready;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "fuzz_srv_messages: %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                    \
        }                                                                               \
    } while (0)

static void validate(size_t kind, ProtobufCMessage *m)
{
    attnd_error err;
    attnd_error_clear(&err);
    switch (kind) {
    case 0: {
        attnd_srv_create_req r;
        attnd_srv_validate_create((Attnd__V1__CreateSessionRequest *)m, &model, &r, &err);
        break;
    }
    case 1: {
        attnd_session_id id;
        attnd_srv_validate_close((Attnd__V1__CloseSessionRequest *)m, &id, &err);
        break;
    }
    case 2: {
        attnd_srv_append_req r;
        Attnd__V1__AppendKVRequest *a = (Attnd__V1__AppendKVRequest *)m;
        if (attnd_srv_validate_append(a, &model, &r, &err) == ATTND_OK) {
            CHECK(a->kv && r.kv == a->kv->data.data);
            CHECK(r.n_tokens * (uint64_t)model.kv_elems * attnd_dtype_size(r.dtype) ==
                  a->kv->data.len);
            CHECK(r.layer < (uint32_t)model.spec->n_layers);
        }
        break;
    }
    case 3: {
        attnd_srv_attend_req r;
        /* no projections loaded: a heads-form query is refused here */
        if (attnd_srv_validate_attend((Attnd__V1__AttendRequest *)m, &model, NULL, &arena.pc,
                                      NULL, &r, &err) == ATTND_OK) {
            CHECK(r.eng.n_seqs >= 1 && r.eng.n_seqs <= model.max_batch);
            CHECK(r.eng.q_tokens >= 1 && r.eng.q_tokens <= ATTND_SRV_MAX_Q_TOKENS);
            CHECK(r.out_shape[0] == r.eng.n_seqs && r.out_shape[1] == r.eng.q_tokens &&
                  r.out_shape[2] == model.spec->n_q_heads && r.out_shape[3] == model.d_v);
            for (uint32_t i = 0; i + 1 < r.eng.n_seqs; i++)
                for (uint32_t j = i + 1; j < r.eng.n_seqs; j++)
                    CHECK(memcmp(&r.eng.ids[i], &r.eng.ids[j], sizeof r.eng.ids[i]) != 0);
        }
        break;
    }
    case 7:
        attnd_srv_validate_health((Grpc__Health__V1__HealthCheckRequest *)m, &err);
        break;
    default: /* nothing reads their fields beyond the unpack */
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    attnd_error err;

    if (!ready) {
        attnd_srv_model_init(&model, attnd_model_find("tiny-mla"), 64, 16);
        attnd_srv_arena_init(&arena, 0);
        ready = 1;
    }
    if (size < 1)
        return 0;
    size_t kind = data[0] % N_KINDS;
    attnd_error_clear(&err);
    attnd_srv_arena_reset(&arena);
    ProtobufCMessage *m = attnd_srv_unpack(kinds[kind], &arena, data + 1, size - 1, &err);
    if (!m) {
        CHECK(err.code == ATTND_ERR_INVALID_ARGUMENT || err.code == ATTND_ERR_RESOURCE_EXHAUSTED);
        return 0;
    }
    validate(kind, m);
    return 0;
}
