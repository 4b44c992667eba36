/* Request validation: the one place each wire message is checked.
 *
 * Every function here is pure: it takes a decoded protobuf-c message and the
 * served model, and either fills a plain internal request (ready for the
 * attnd_engine_* call) or fails with an attnd_error whose message names the
 * field and the expected value, e.g. `q.shape[2]: expected 128 heads, got
 * 64`. No I/O, no engine state: what only the engine knows (does the session
 * exist, where does the layer end, is there memory) it checks itself and
 * reports with the same codes. Fuzzers call these directly.
 *
 * Codes: malformed tensors, ids, counts and dtypes INVALID_ARGUMENT (a
 * tensor holding a NaN or an infinity too: "q: element 1234 is NaN
 * (non-finite values are rejected)"); layer
 * past the model OUT_OF_RANGE; a session for a model other than the served
 * one FAILED_PRECONDITION.
 */
#ifndef ATTND_SRV_VALIDATE_H
#define ATTND_SRV_VALIDATE_H

#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "attnd.pb-c.h"
#include "attnd_wire.h"
#include "attnd_worker.h"
#include "health.pb-c.h"

/* The served model, as validation needs it. */
typedef struct attnd_srv_model {
    const attnd_model_spec *spec; /* the engine's copy (kv_dtype as stored) */
    int32_t page_size;
    int32_t d_k, d_v;             /* per-head query and output widths */
    int64_t kv_elems;             /* elements of one token's wire KV entry */
    uint32_t max_batch;           /* session_ids per request */
} attnd_srv_model;

void attnd_srv_model_init(attnd_srv_model *m, const attnd_model_spec *spec,
                          int32_t page_size, uint32_t max_batch);

/* Query tokens per sequence the engine accepts (S). */
#define ATTND_SRV_MAX_Q_TOKENS ATTND_ENGINE_MAX_Q_TOKENS

/* ---- CreateSession ------------------------------------------------------ */

typedef struct attnd_srv_create_req {
    uint64_t max_tokens;
    int has_policy;                /* policy or policy_table given */
    attnd_session_policy policy;   /* rules: attnd_srv_create_rules fills them */
} attnd_srv_create_req;

/* model "" or the served name: fine; another known preset:
 * FAILED_PRECONDITION; an unknown name: INVALID_ARGUMENT. The policy is
 * converted (its default here; policy_table needs rules memory, see below)
 * and checked against the model by the engine (field names as on the
 * wire: policy.window, policy_table[2].head_end, ...); here only the
 * table's size (INVALID_ARGUMENT past ATTND_POLICY_MAX_RULES). */
attnd_status attnd_srv_validate_create(const Attnd__V1__CreateSessionRequest *m,
                                       const attnd_srv_model *model,
                                       attnd_srv_create_req *out,
                                       attnd_error *err);
/* The policy table of m into rules [m->n_policy_table] (caller's memory),
 * attached to out->policy. */
void attnd_srv_create_rules(const Attnd__V1__CreateSessionRequest *m, attnd_policy_rule *rules,
                            attnd_srv_create_req *out);

/* ---- CloseSession ------------------------------------------------------- */

attnd_status attnd_srv_validate_close(const Attnd__V1__CloseSessionRequest *m,
                                      attnd_session_id *id_out,
                                      attnd_error *err);

/* ---- AppendKV (one streamed chunk) -------------------------------------- */

typedef struct attnd_srv_append_req {
    attnd_session_id id;
    uint32_t layer;
    uint64_t start;
    uint64_t n_tokens;
    attnd_dtype dtype;
    const void *kv; /* points into the message: [n_tokens][kv_elems] */
} attnd_srv_append_req;

attnd_status attnd_srv_validate_append(const Attnd__V1__AppendKVRequest *m,
                                       const attnd_srv_model *model,
                                       attnd_srv_append_req *out,
                                       attnd_error *err);

/* ---- Attend (unary and each AttendStream request) ----------------------- */

typedef struct attnd_srv_attend_req {
    attnd_attend_req eng;   /* for attnd_engine_attend; ids in scratch */
    attnd_dtype out_dtype;  /* resolved: q's dtype when unspecified */
    uint64_t request_id;
    int64_t out_shape[4];   /* [B, S, Hq, d_v] */
    int64_t lse_shape[3];   /* [B, S, Hq] */
} attnd_srv_attend_req;

/* The MLA projections the request's layer holds now (the narrow wire;
 * attnd_engine_weights_dims): widths of W_UK (d_nope) and W_UV (d_v), 0
 * when none. */
typedef struct attnd_srv_proj {
    int32_t d_nope, d_v;
} attnd_srv_proj;

/* The session ids are copied into memory taken from `scratch` (an arena:
 * nothing is freed one by one), which must outlive the use of *out; q,
 * new_kv and positions point into the message. Checks, in order: layer,
 * session_ids (count, lengths, duplicates), q_form (a known form; HEADS on
 * an MLA model whose layer holds W_UK and W_UV per proj, else
 * FAILED_PRECONDITION), q (dtype, shape -- [.., Hq, d_nope + d_rope] in the
 * heads form --, bytes, every element finite), new_kv (the same),
 * positions, out_dtype, up_project (W_UV per proj, else
 * FAILED_PRECONDITION). The heads form and up_project make the output
 * [B, S, Hq, proj->d_v]. proj (may be NULL: none loaded): the layer's
 * widths. checks (may be NULL): the decoder's finding for tensors it
 * already checked while gathering them (attnd_wire_request_decode), used
 * instead of reading them again. */
attnd_status attnd_srv_validate_attend(const Attnd__V1__AttendRequest *m,
                                       const attnd_srv_model *model,
                                       const attnd_srv_proj *proj,
                                       ProtobufCAllocator *scratch,
                                       const attnd_wire_request_checks *checks,
                                       attnd_srv_attend_req *out,
                                       attnd_error *err);

/* ---- grpc.health.v1 ------------------------------------------------------ */

/* The health service names attnd answers for: "", "attnd.v1.Attnd",
 * ATTND_SRV_HEALTH_GROUP (SERVING only while every peer of the rank's
 * worker group is connected; a lone worker is always whole), and the two
 * probe names of deploy/k8s: ATTND_SRV_HEALTH_LIVENESS (SERVING whenever
 * the process answers, draining included: restarting a draining rank would
 * lose its calls) and ATTND_SRV_HEALTH_READINESS (SERVING only while not
 * draining and the group is whole: new work should go elsewhere). Any
 * other: NOT_FOUND (the spec's SERVICE_UNKNOWN). */
#define ATTND_SRV_HEALTH_GROUP "attnd.v1.Group"
#define ATTND_SRV_HEALTH_LIVENESS "liveness"
#define ATTND_SRV_HEALTH_READINESS "readiness"
attnd_status attnd_srv_validate_health(const Grpc__Health__V1__HealthCheckRequest *m,
                                       attnd_error *err);

#endif /* ATTND_SRV_VALIDATE_H */
