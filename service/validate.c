/* Request validation, one function per message (see validate.h).
 *
 * The rule for messages: name the field as the client wrote it (with the
 * index for repeated fields and shapes: `q.shape[2]`), say what was
 * expected in the model's terms, then what came. Checks run in a fixed
 * order so that a request with several faults always reports the same
 * one. */
#include <inttypes.h>
#include <string.h>

#include "attnd_dtype.h"
#include "validate.h"

void attnd_srv_model_init(attnd_srv_model *m, const attnd_model_spec *spec,
                          int32_t page_size, uint32_t max_batch)
{
    m->spec = spec;
    m->page_size = page_size;
    m->d_k = attnd_model_d_k(spec);
    m->d_v = attnd_model_d_v(spec);
    m->kv_elems = attnd_model_kv_token_elems(spec);
    m->max_batch = max_batch;
}

/* ---- helpers ---------------------------------------------------------------- */

/* "[2, 1, 8, 80]" into buf (truncated with "..." past its size). */
static const char *shape_str(char *buf, size_t cap, const int64_t *shape, size_t n)
{
    size_t off = 0;
    int w = snprintf(buf, cap, "[");
    off = w > 0 ? (size_t)w : 0;
    for (size_t i = 0; i < n && off < cap; i++) {
        w = snprintf(buf + off, cap - off, "%s%" PRId64, i ? ", " : "", shape[i]);
        off += w > 0 ? (size_t)w : 0;
    }
    if (off < cap)
        snprintf(buf + off, cap - off, "]");
    if (off >= cap && cap > 4)
        memcpy(buf + cap - 4, "...", 4);
    return buf;
}

static attnd_status check_dtype(const char *field, int v, attnd_dtype *out, attnd_error *err)
{
    if (v < ATTND_DTYPE_BF16 || v > ATTND_DTYPE_F32)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s: expected bf16 (1), f16 (2) or f32 (3), got %d", field, v);
    *out = (attnd_dtype)v;
    return ATTND_OK;
}

static attnd_status check_session_id(const char *field, const ProtobufCBinaryData *b,
                                     attnd_session_id *out, attnd_error *err)
{
    if (b->len != ATTND_SESSION_ID_BYTES)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s: expected %d bytes (an id from CreateSession), got %zu",
                               field, ATTND_SESSION_ID_BYTES, b->len);
    memcpy(out->bytes, b->data, ATTND_SESSION_ID_BYTES);
    return ATTND_OK;
}

static attnd_status check_layer(uint32_t layer, const attnd_srv_model *model, attnd_error *err)
{
    if (layer >= (uint32_t)model->spec->n_layers)
        return attnd_error_set(err, ATTND_ERR_OUT_OF_RANGE,
                               "layer: expected < %d (%s has %d layers), got %" PRIu32,
                               model->spec->n_layers, model->spec->name,
                               model->spec->n_layers, layer);
    return ATTND_OK;
}

/* The dims of one wire KV entry: MLA [d_k], GQA [2, Hkv, D]. */
static int kv_entry_dims(const attnd_srv_model *model, int64_t dims[3])
{
    if (model->spec->kind == ATTND_ATTN_MLA) {
        dims[0] = model->d_k;
        return 1;
    }
    dims[0] = 2;
    dims[1] = model->spec->n_kv_heads;
    dims[2] = model->spec->head_dim;
    return 3;
}

static const char *kv_entry_dim_name(const attnd_srv_model *model, int i)
{
    if (model->spec->kind == ATTND_ATTN_MLA)
        return "entry elements (d_latent + d_rope)";
    return i == 0 ? "(K and V)" : i == 1 ? "KV heads" : "head_dim";
}

/* Check dims shape[first..first+ne) against one KV entry. */
static attnd_status check_kv_entry(const char *field, const int64_t *shape, size_t first,
                                   const attnd_srv_model *model, attnd_error *err)
{
    int64_t dims[3];
    int ne = kv_entry_dims(model, dims);
    for (int i = 0; i < ne; i++)
        if (shape[first + (size_t)i] != dims[i])
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "%s.shape[%zu]: expected %" PRId64 " %s, got %" PRId64,
                                   field, first + (size_t)i, dims[i],
                                   kv_entry_dim_name(model, i), shape[first + (size_t)i]);
    return ATTND_OK;
}

/* data.len == product(shape) * dtype size; the shape is already bounded. */
static attnd_status check_bytes(const char *field, const Attnd__V1__Tensor *t, attnd_dtype dt,
                                attnd_error *err)
{
    uint64_t n = attnd_dtype_size(dt);
    char s[96];
    for (size_t i = 0; i < t->n_shape; i++)
        n *= (uint64_t)t->shape[i];
    if (t->data.len != n)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s.data: expected %" PRIu64 " bytes (%s of %s), got %zu", field,
                               n, shape_str(s, sizeof s, t->shape, t->n_shape),
                               attnd_dtype_name(dt), t->data.len);
    return ATTND_OK;
}

/* Every element finite: a NaN or an infinity in a query or a KV entry
 * would come back as a finite-looking answer, so it is refused where it
 * enters, naming the first one. Nothing converts these tensors here (the
 * decoder leaves them where they arrived; the engine converts later, after
 * it has changed the session). A tensor the decoder had to gather (it
 * spanned gRPC slices) was checked piece by piece as it was copied (done);
 * one left in place gets one read of its bytes, faster than a memcpy: attnd_dtype_find_nonfinite, 30-45 GB/s in cache
 * and ~10 GB/s from memory on the 2-vCPU dev VM, 0.16-0.45 ms for a
 * DeepSeek-V3 B=32 bf16 query (1-3.5% of its round trip; attnd-dtype-bench,
 * client/TRANSPORT.md). Call after check_bytes: data.len is whole elements. */
static attnd_status check_finite(const char *field, const Attnd__V1__Tensor *t, attnd_dtype dt,
                                 const attnd_wire_tensor_check *done, attnd_error *err)
{
    size_t n = t->data.len / attnd_dtype_size(dt);
    size_t bad = done && done->checked ? done->nonfinite
                                       : attnd_dtype_find_nonfinite(dt, t->data.data, n);
    if (bad < n)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "%s: element %zu is %s (non-finite values are rejected)", field,
                               bad, attnd_dtype_nonfinite_name(dt, t->data.data, bad));
    return ATTND_OK;
}

/* ---- CreateSession / CloseSession ------------------------------------------ */

/* A wire SparsePolicy as the engine's (the engine checks it). */
static attnd_policy policy_of(const Attnd__V1__SparsePolicy *p)
{
    attnd_policy r = {.kind = (attnd_policy_kind)p->kind, .sink = p->sink, .window = p->window,
                      .topk = p->topk_pages, .topk_fraction = p->topk_fraction};
    return r;
}

attnd_status attnd_srv_validate_create(const Attnd__V1__CreateSessionRequest *m,
                                       const attnd_srv_model *model,
                                       attnd_srv_create_req *out, attnd_error *err)
{
    const char *name = m->model ? m->model : "";
    if (name[0] && strcmp(name, model->spec->name) != 0) {
        if (attnd_model_find(name))
            return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                                   "model: this worker serves %s, not %s", model->spec->name,
                                   name);
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "model: expected a preset name (this worker serves %s) or "
                               "empty, got unknown \"%.64s\"",
                               model->spec->name, name);
    }
    if (m->n_policy_table > ATTND_POLICY_MAX_RULES)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "policy_table: %zu rules, at most %d", m->n_policy_table,
                               ATTND_POLICY_MAX_RULES);
    memset(out, 0, sizeof *out);
    out->max_tokens = m->max_tokens;
    out->has_policy = m->policy || m->n_policy_table;
    if (m->policy)
        out->policy.dflt = policy_of(m->policy);
    return ATTND_OK;
}

void attnd_srv_create_rules(const Attnd__V1__CreateSessionRequest *m, attnd_policy_rule *rules,
                            attnd_srv_create_req *out)
{
    for (size_t i = 0; i < m->n_policy_table; i++) {
        const Attnd__V1__PolicyRule *r = m->policy_table[i];
        rules[i] = (attnd_policy_rule){.layer_begin = r->layer_begin, .layer_end = r->layer_end,
                                       .head_begin = r->head_begin, .head_end = r->head_end};
        if (r->policy)
            rules[i].policy = policy_of(r->policy);
    }
    out->policy.rules = rules;
    out->policy.n_rules = (uint32_t)m->n_policy_table;
}

attnd_status attnd_srv_validate_close(const Attnd__V1__CloseSessionRequest *m,
                                      attnd_session_id *id_out, attnd_error *err)
{
    return check_session_id("session_id", &m->session_id, id_out, err);
}

/* ---- AppendKV -------------------------------------------------------------- */

attnd_status attnd_srv_validate_append(const Attnd__V1__AppendKVRequest *m,
                                       const attnd_srv_model *model,
                                       attnd_srv_append_req *out, attnd_error *err)
{
    attnd_srv_append_req r;
    const Attnd__V1__Tensor *kv = m->kv;
    int64_t dims[3];
    int ne = kv_entry_dims(model, dims);
    char want[64];
    attnd_status st;

    st = check_session_id("session_id", &m->session_id, &r.id, err);
    if (st)
        return st;
    st = check_layer(m->layer, model, err);
    if (st)
        return st;
    shape_str(want + 3, sizeof want - 3, dims, (size_t)ne); /* "[T, " + entry dims */
    memcpy(want, "[T, ", 4);
    if (!kv)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "kv: missing; expected a tensor of shape %s", want);
    st = check_dtype("kv.dtype", kv->dtype, &r.dtype, err);
    if (st)
        return st;
    if (kv->n_shape != (size_t)ne + 1) {
        char got[96];
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "kv.shape: expected %s (%d dims), got %s", want, ne + 1,
                               shape_str(got, sizeof got, kv->shape, kv->n_shape));
    }
    if (kv->shape[0] < 1)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "kv.shape[0]: expected at least 1 token, got %" PRId64,
                               kv->shape[0]);
    st = check_kv_entry("kv", kv->shape, 1, model, err);
    if (st)
        return st;
    uint64_t entry_bytes = (uint64_t)model->kv_elems * attnd_dtype_size(r.dtype);
    uint64_t t = (uint64_t)kv->shape[0];
    if (t > kv->data.len / entry_bytes || t * entry_bytes != kv->data.len)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "kv.data: expected %" PRIu64 " tokens x %" PRIu64
                               " bytes (%s), got %zu bytes",
                               t, entry_bytes, attnd_dtype_name(r.dtype), kv->data.len);
    st = check_finite("kv", kv, r.dtype, NULL, err);
    if (st)
        return st;
    r.layer = m->layer;
    r.start = m->start;
    r.n_tokens = t;
    r.kv = kv->data.data;
    *out = r;
    return ATTND_OK;
}

/* ---- Attend ------------------------------------------------------------------ */

static uint64_t id_hash(const attnd_session_id *id)
{
    uint64_t a, b;
    memcpy(&a, id->bytes, 8);
    memcpy(&b, id->bytes + 8, 8);
    a ^= b * 0x9e3779b97f4a7c15ull;
    a ^= a >> 31;
    a *= 0xbf58476d1ce4e5b9ull;
    return a ^ (a >> 29);
}

/* Copy the ids into scratch and reject duplicates (an open-addressing set
 * of indices, also from scratch). */
static attnd_status check_session_ids(const Attnd__V1__AttendRequest *m,
                                      const attnd_srv_model *model, ProtobufCAllocator *scratch,
                                      attnd_session_id **ids_p, attnd_error *err)
{
    size_t n = m->n_session_ids;
    attnd_status st;

    if (n < 1 || n > model->max_batch)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "session_ids: expected 1 to %" PRIu32 " sessions, got %zu",
                               model->max_batch, n);
    size_t cap = 4;
    while (cap < 2 * n)
        cap *= 2;
    attnd_session_id *ids = scratch->alloc(scratch->allocator_data, n * sizeof *ids);
    int32_t *slots = scratch->alloc(scratch->allocator_data, cap * sizeof *slots);
    if (!ids || !slots)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "session_ids: no memory to check %zu ids", n);
    memset(slots, 0xff, cap * sizeof *slots);
    for (size_t i = 0; i < n; i++) {
        char field[40];
        snprintf(field, sizeof field, "session_ids[%zu]", i);
        st = check_session_id(field, &m->session_ids[i], &ids[i], err);
        if (st)
            return st;
        for (size_t h = id_hash(&ids[i]) & (cap - 1);; h = (h + 1) & (cap - 1)) {
            if (slots[h] < 0) {
                slots[h] = (int32_t)i;
                break;
            }
            if (memcmp(&ids[slots[h]], &ids[i], sizeof ids[i]) == 0)
                return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                       "session_ids[%zu]: duplicate of session_ids[%d]; a "
                                       "batch names each session once",
                                       i, slots[h]);
        }
    }
    *ids_p = ids;
    return ATTND_OK;
}

/* q: [B, S, Hq, d_k] or [B, Hq, d_k] (the heads form, d_nope > 0: d_nope +
 * d_rope instead of d_k); sets *s_p. */
static attnd_status check_q(const Attnd__V1__Tensor *q, const attnd_srv_model *model,
                            int32_t d_nope, uint64_t b, const attnd_wire_tensor_check *done,
                            attnd_dtype *dt_p, int32_t *s_p, attnd_error *err)
{
    const attnd_model_spec *sp = model->spec;
    const int32_t dq = d_nope > 0 ? d_nope + sp->d_rope : model->d_k;
    char got[96];
    attnd_status st;

    if (!q)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "q: missing; expected a tensor of shape [B, S, %d, %d]",
                               sp->n_q_heads, dq);
    st = check_dtype("q.dtype", q->dtype, dt_p, err);
    if (st)
        return st;
    if (q->n_shape != 3 && q->n_shape != 4)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "q.shape: expected [B, S, %d, %d] or [B, %d, %d], got %s",
                               sp->n_q_heads, dq, sp->n_q_heads, dq,
                               shape_str(got, sizeof got, q->shape, q->n_shape));
    size_t h = q->n_shape - 2, d = q->n_shape - 1;
    if ((uint64_t)q->shape[0] != b || q->shape[0] < 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "q.shape[0]: expected %" PRIu64
                               " sequences (one per session_ids entry), got %" PRId64,
                               b, q->shape[0]);
    *s_p = 1;
    if (q->n_shape == 4) {
        if (q->shape[1] < 1 || q->shape[1] > ATTND_SRV_MAX_Q_TOKENS)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "q.shape[1]: expected 1 to %d query tokens, got %" PRId64,
                                   ATTND_SRV_MAX_Q_TOKENS, q->shape[1]);
        *s_p = (int32_t)q->shape[1];
    }
    if (q->shape[h] != sp->n_q_heads)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "q.shape[%zu]: expected %d heads, got %" PRId64, h,
                               sp->n_q_heads, q->shape[h]);
    if (d_nope > 0 && q->shape[d] != dq)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "q.shape[%zu]: expected %d (d_nope %d + d_rope %d: q_form HEADS, "
                               "the layer's W_UK), got %" PRId64,
                               d, dq, d_nope, sp->d_rope, q->shape[d]);
    if (d_nope <= 0 && q->shape[d] != model->d_k) {
        if (sp->kind == ATTND_ATTN_MLA)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "q.shape[%zu]: expected %d (d_latent %d + d_rope %d), got %" PRId64,
                                   d, model->d_k, sp->d_latent, sp->d_rope, q->shape[d]);
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "q.shape[%zu]: expected head_dim %d, got %" PRId64, d,
                               model->d_k, q->shape[d]);
    }
    st = check_bytes("q", q, *dt_p, err);
    return st ? st : check_finite("q", q, *dt_p, done, err);
}

/* new_kv: [B, entry...] (S = 1) or [B, S, entry...]. */
static attnd_status check_new_kv(const Attnd__V1__Tensor *t, const attnd_srv_model *model,
                                 uint64_t b, int32_t s, const attnd_wire_tensor_check *done,
                                 attnd_dtype *dt_p, attnd_error *err)
{
    int64_t dims[3];
    size_t ne = (size_t)kv_entry_dims(model, dims);
    char got[96];
    attnd_status st = check_dtype("new_kv.dtype", t->dtype, dt_p, err);
    if (st)
        return st;
    if (t->n_shape != ne + 1 && t->n_shape != ne + 2)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "new_kv.shape: expected [B, %s] or [B, S, %s] (one %s KV entry "
                               "per session and query token), got %s",
                               model->spec->kind == ATTND_ATTN_MLA ? "d_k" : "2, Hkv, D",
                               model->spec->kind == ATTND_ATTN_MLA ? "d_k" : "2, Hkv, D",
                               model->spec->kind == ATTND_ATTN_MLA ? "MLA" : "GQA",
                               shape_str(got, sizeof got, t->shape, t->n_shape));
    if ((uint64_t)t->shape[0] != b || t->shape[0] < 0)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "new_kv.shape[0]: expected %" PRIu64
                               " sequences (one per session_ids entry), got %" PRId64,
                               b, t->shape[0]);
    size_t first = 1;
    if (t->n_shape == ne + 2) {
        if (t->shape[1] != s)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "new_kv.shape[1]: expected %d tokens (q's S), got %" PRId64,
                                   s, t->shape[1]);
        first = 2;
    } else if (s != 1) {
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "new_kv.shape: expected [B, S = %d, ...] since q has %d query "
                               "tokens per sequence, got %s",
                               s, s, shape_str(got, sizeof got, t->shape, t->n_shape));
    }
    st = check_kv_entry("new_kv", t->shape, first, model, err);
    if (st)
        return st;
    st = check_bytes("new_kv", t, *dt_p, err);
    return st ? st : check_finite("new_kv", t, *dt_p, done, err);
}

/* q_form: a known form (else INVALID_ARGUMENT); HEADS (*d_nope_p the
 * layer's W_UK width) on an MLA model whose layer holds both matrices
 * (else FAILED_PRECONDITION: the worker's model or weights are wrong for
 * it, not the request). */
static attnd_status check_q_form(const Attnd__V1__AttendRequest *m, const attnd_srv_model *model,
                                 const attnd_srv_proj *proj, int32_t *d_nope_p,
                                 attnd_error *err)
{
    *d_nope_p = 0;
    if (m->q_form == ATTND__V1__QFORM__Q_FORM_ABSORBED)
        return ATTND_OK;
    if (m->q_form != ATTND__V1__QFORM__Q_FORM_HEADS)
        return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                               "q_form: expected ABSORBED (0) or HEADS (1), got %d",
                               (int)m->q_form);
    if (model->spec->kind != ATTND_ATTN_MLA) /* as LoadWeights and another model's session */
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                               "q_form: HEADS is the MLA narrow wire (per-head q_nope and "
                               "q_rope); this worker serves %s, a GQA model",
                               model->spec->name);
    if (!proj || proj->d_nope <= 0 || proj->d_v <= 0)
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                               "q_form: HEADS needs layer %" PRIu32 "'s W_UK and W_UV; it holds "
                               "%s (LoadWeights w_uk and w_uv first; a restarted worker must be "
                               "loaded again)", m->layer,
                               proj && proj->d_nope > 0 ? "W_UK only"
                               : proj && proj->d_v > 0  ? "W_UV only"
                                                        : "neither");
    *d_nope_p = proj->d_nope;
    return ATTND_OK;
}

attnd_status attnd_srv_validate_attend(const Attnd__V1__AttendRequest *m,
                                       const attnd_srv_model *model,
                                       const attnd_srv_proj *proj,
                                       ProtobufCAllocator *scratch,
                                       const attnd_wire_request_checks *checks,
                                       attnd_srv_attend_req *out, attnd_error *err)
{
    int32_t d_nope = 0;
    attnd_srv_attend_req r;
    attnd_session_id *ids = NULL;
    attnd_status st;

    memset(&r, 0, sizeof r);
    st = check_layer(m->layer, model, err);
    if (st)
        return st;
    st = check_session_ids(m, model, scratch, &ids, err);
    if (st)
        return st;
    const uint64_t b = m->n_session_ids;
    int32_t s = 1;
    st = check_q_form(m, model, proj, &d_nope, err);
    if (st)
        return st;
    st = check_q(m->q, model, d_nope, b, checks ? &checks->q : NULL, &r.eng.q_dtype, &s, err);
    if (st)
        return st;
    if (m->new_kv) {
        st = check_new_kv(m->new_kv, model, b, s, checks ? &checks->new_kv : NULL,
                          &r.eng.new_kv_dtype, err);
        if (st)
            return st;
        r.eng.new_kv = m->new_kv->data.data;
    }
    if (m->n_positions) {
        if (!m->new_kv)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "positions: expected none without new_kv, got %zu",
                                   m->n_positions);
        if (m->n_positions != b)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "positions: expected %" PRIu64
                                   " entries (one per session_ids entry), got %zu",
                                   b, m->n_positions);
        r.eng.positions = m->positions;
    }
    /* sparse: the shape of the given lists here, their contents (against
     * the sessions' policies and lengths) in the engine */
    if (m->given_groups || m->n_given_indptr || m->n_given_idx) {
        const uint32_t hkv = (uint32_t)model->spec->n_kv_heads;
        if (m->given_groups != 1 && m->given_groups != hkv)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "given_groups: %u, expected 1 or the model's %u KV heads "
                                   "(with given_indptr / given_idx)", m->given_groups, hkv);
        if (m->n_given_indptr != b * m->given_groups + 1)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "given_indptr: expected %" PRIu64 " entries (session_ids x "
                                   "given_groups + 1), got %zu",
                                   b * m->given_groups + 1, m->n_given_indptr);
        if (m->given_indptr[0] != 0 || m->given_indptr[m->n_given_indptr - 1] != m->n_given_idx)
            return attnd_error_set(err, ATTND_ERR_INVALID_ARGUMENT,
                                   "given_indptr: must run from 0 to the %zu given_idx entries, "
                                   "got %u .. %u", m->n_given_idx, m->given_indptr[0],
                                   m->given_indptr[m->n_given_indptr - 1]);
        r.eng.given_groups = m->given_groups;
        r.eng.given_indptr = m->given_indptr;
        r.eng.given_idx = m->given_idx;
    }
    r.eng.want_pages = m->return_pages ? 1 : 0;
    r.out_dtype = r.eng.q_dtype;
    if (m->out_dtype != ATTND__V1__DTYPE__DTYPE_UNSPECIFIED) {
        st = check_dtype("out_dtype", m->out_dtype, &r.out_dtype, err);
        if (st)
            return st;
    }
    r.eng.layer = m->layer;
    r.eng.n_seqs = (uint32_t)b;
    r.eng.ids = ids;
    r.eng.q_tokens = s;
    r.eng.q = m->q->data.data;
    r.eng.want_lse = m->return_lse ? 1 : 0;
    r.request_id = m->request_id;
    r.out_shape[0] = r.lse_shape[0] = (int64_t)b;
    r.out_shape[1] = r.lse_shape[1] = s;
    r.out_shape[2] = r.lse_shape[2] = model->spec->n_q_heads;
    r.out_shape[3] = model->d_v;
    if (m->up_project && (!proj || proj->d_v <= 0))
        return attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                               "up_project: no W_UV loaded for layer %" PRIu32 " (LoadWeights)",
                               m->layer);
    if (d_nope > 0 || m->up_project) { /* the worker applies W_UV: d_v wide */
        r.eng.q_form = d_nope > 0 ? ATTND_Q_HEADS : ATTND_Q_ABSORBED;
        r.eng.d_nope = d_nope;
        r.eng.d_vo = proj->d_v;
        r.out_shape[3] = proj->d_v;
    }
    *out = r;
    return ATTND_OK;
}

/* ---- health -------------------------------------------------------------------- */

attnd_status attnd_srv_validate_health(const Grpc__Health__V1__HealthCheckRequest *m,
                                       attnd_error *err)
{
    const char *svc = m->service ? m->service : "";
    if (svc[0] == '\0' || strcmp(svc, "attnd.v1.Attnd") == 0 ||
        strcmp(svc, ATTND_SRV_HEALTH_GROUP) == 0 || strcmp(svc, ATTND_SRV_HEALTH_LIVENESS) == 0 ||
        strcmp(svc, ATTND_SRV_HEALTH_READINESS) == 0)
        return ATTND_OK;
    return attnd_error_set(err, ATTND_ERR_NOT_FOUND,
                           "service: expected \"\", \"attnd.v1.Attnd\", \"%s\", \"%s\" or "
                           "\"%s\", got unknown \"%.64s\"",
                           ATTND_SRV_HEALTH_GROUP, ATTND_SRV_HEALTH_LIVENESS,
                           ATTND_SRV_HEALTH_READINESS, svc);
}
