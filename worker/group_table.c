/* Global session lengths of a worker group.
 *
 * In sequence mode a rank holds only some of a session's tokens, so its
 * engine's length is not the session's. Every rank therefore keeps, per
 * session it knows, the global length of each layer: set to 0 on create,
 * advanced by every append and every Attend with new KV (each reaches every
 * rank, with or without tokens for it). Any rank can thus lead: it routes a
 * new token to its owner and applies the causal rule with global positions.
 * A chained hash over the id's first bytes (ids are random); one lock.
 * Entries are made and freed only by create and close.
 *
 * AppendKV streams stage here too (group_stage.c): while a stream holds a
 * layer, the layer's length stays what was committed, `staged` tracks the
 * stream's own view of it, and no other writer may append there (another
 * stream, or an Attend with new KV: ABORTED). The commit sets the length.
 *
 * A session made with a sparse policy also keeps here the policy kinds of
 * every layer and head as the whole group sees them (group_sparse.c sets
 * them on every rank), so that whichever rank leads checks given indices
 * for every rank's shard before anything is sent (group_given.c).
 */
#include <stdlib.h>
#include <string.h>

#include "group_int.h"

static uint32_t bucket_of(const attnd_session_id *id)
{
    uint32_t h;
    memcpy(&h, id->bytes, sizeof h);
    return h & 1023u;
}

void attnd__gtable_init(attnd__gtable *t, int32_t n_layers)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    t->n_layers = n_layers;
}

static void gsess_free(attnd__gsess *s)
{
    if (s) {
        free(s->len);
        free(s->kinds);
    }
    free(s);
}

void attnd__gtable_cleanup(attnd__gtable *t)
{
    for (int b = 0; b < 1024; b++)
        for (attnd__gsess *s = t->bucket[b], *next; s; s = next) {
            next = s->next;
            gsess_free(s);
        }
    pthread_mutex_destroy(&t->mu);
}

/* Caller holds t->mu. */
static attnd__gsess *find(attnd__gtable *t, const attnd_session_id *id)
{
    for (attnd__gsess *s = t->bucket[bucket_of(id)]; s; s = s->next)
        if (memcmp(s->id.bytes, id->bytes, sizeof id->bytes) == 0)
            return s;
    return NULL;
}

attnd_status attnd__gtable_add(attnd__gtable *t, const attnd_session_id *id, attnd_error *err)
{
    attnd__gsess *s = calloc(1, sizeof *s);
    /* len, stage, staged: one array of 3 * n_layers */
    if (!s || !(s->len = calloc(3 * (size_t)t->n_layers, sizeof *s->len))) {
        free(s);
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "session_id: no memory for the group's session table");
    }
    s->stage = s->len + t->n_layers;
    s->staged = s->stage + t->n_layers;
    s->id = *id;
    pthread_mutex_lock(&t->mu);
    if (find(t, id)) {
        pthread_mutex_unlock(&t->mu);
        gsess_free(s);
        return attnd_error_set(err, ATTND_ERR_ALREADY_EXISTS, "session_id: already exists");
    }
    uint32_t b = bucket_of(id);
    s->next = t->bucket[b];
    t->bucket[b] = s;
    pthread_mutex_unlock(&t->mu);
    return ATTND_OK;
}

void attnd__gtable_remove(attnd__gtable *t, const attnd_session_id *id)
{
    attnd__gsess *s = NULL;
    pthread_mutex_lock(&t->mu);
    for (attnd__gsess **pp = &t->bucket[bucket_of(id)]; *pp; pp = &(*pp)->next)
        if (memcmp((*pp)->id.bytes, id->bytes, sizeof id->bytes) == 0) {
            s = *pp;
            *pp = s->next;
            break;
        }
    pthread_mutex_unlock(&t->mu);
    gsess_free(s);
}

int attnd__gtable_has(attnd__gtable *t, const attnd_session_id *id)
{
    pthread_mutex_lock(&t->mu);
    int has = find(t, id) != NULL;
    pthread_mutex_unlock(&t->mu);
    return has;
}

/* Session ids[i] (lock held), or NULL with *st_p and err set: NOT_FOUND,
 * or DATA_LOSS when its shards diverged (attnd__gtable_break). */
static attnd__gsess *find_usable(attnd__gtable *t, const attnd_session_id *ids, uint32_t i,
                                 attnd_status *st_p, attnd_error *err)
{
    attnd__gsess *s = find(t, &ids[i]);
    if (!s)
        *st_p = attnd_error_set(err, ATTND_ERR_NOT_FOUND, "session_ids[%u]: no such session", i);
    else if (s->broken)
        *st_p = attnd_error_set(err, ATTND_ERR_DATA_LOSS,
                                "session_ids[%u]: a call that changed this session failed on "
                                "some ranks of the group and not on others, so its shards no "
                                "longer agree; close it and create it again", i);
    else
        return s;
    return NULL;
}

attnd_status attnd__gtable_lens(attnd__gtable *t, const attnd_session_id *ids, uint32_t n,
                                uint32_t layer, uint64_t *lens, attnd_error *err)
{
    attnd_status st = ATTND_OK;
    if (layer >= (uint32_t)t->n_layers)
        return attnd_error_set(err, ATTND_ERR_OUT_OF_RANGE, "layer: %u not in [0, %d)", layer,
                               t->n_layers);
    pthread_mutex_lock(&t->mu);
    for (uint32_t i = 0; i < n; i++) {
        attnd__gsess *s = find_usable(t, ids, i, &st, err);
        if (!s)
            break;
        lens[i] = s->len[layer];
    }
    pthread_mutex_unlock(&t->mu);
    return st;
}

void attnd__gtable_break(attnd__gtable *t, const attnd_session_id *ids, uint32_t n)
{
    pthread_mutex_lock(&t->mu);
    for (uint32_t i = 0; i < n; i++) {
        attnd__gsess *s = find(t, &ids[i]);
        if (s)
            s->broken = 1;
    }
    pthread_mutex_unlock(&t->mu);
}

void attnd__gtable_advance(attnd__gtable *t, const attnd_session_id *ids, uint32_t n,
                           uint32_t layer, const uint64_t *lens, uint64_t by)
{
    pthread_mutex_lock(&t->mu);
    for (uint32_t i = 0; i < n; i++) {
        attnd__gsess *s = find(t, &ids[i]);
        if (s && layer < (uint32_t)t->n_layers)
            s->len[layer] = lens[i] + by;
    }
    pthread_mutex_unlock(&t->mu);
}

attnd_status attnd__gtable_check(attnd__gtable *t, const attnd_session_id *ids, uint32_t n,
                                 uint32_t layer, const uint64_t *lens, const char *field,
                                 attnd_error *err)
{
    attnd_status st = ATTND_OK;
    if (layer >= (uint32_t)t->n_layers)
        return attnd_error_set(err, ATTND_ERR_OUT_OF_RANGE, "layer: %u not in [0, %d)", layer,
                               t->n_layers);
    pthread_mutex_lock(&t->mu);
    for (uint32_t i = 0; i < n; i++) {
        attnd__gsess *s = find_usable(t, ids, i, &st, err);
        if (!s)
            break;
        if (s->len[layer] != lens[i]) {
            st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                                 "%s[%u]: layer %u of that session holds %llu tokens; the new "
                                 "entry must land there, got %llu",
                                 field, i, layer, (unsigned long long)s->len[layer],
                                 (unsigned long long)lens[i]);
            break;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return st;
}

attnd_status attnd__gtable_stage(attnd__gtable *t, const attnd_session_id *id, uint32_t layer,
                                 uint64_t stream, uint64_t start, int claim, int *fresh_p,
                                 attnd_error *err)
{
    attnd_status st = ATTND_OK;
    if (layer >= (uint32_t)t->n_layers)
        return attnd_error_set(err, ATTND_ERR_OUT_OF_RANGE, "layer: %u not in [0, %d)", layer,
                               t->n_layers);
    pthread_mutex_lock(&t->mu);
    attnd__gsess *s = find_usable(t, id, 0, &st, err);
    if (!s) {
        if (st == ATTND_ERR_NOT_FOUND)
            attnd_error_set(err, st, "session_id: no such session");
    } else if (s->stage[layer] && s->stage[layer] != stream) {
        st = attnd_error_set(err, ATTND_ERR_ABORTED,
                             "layer: layer %u of that session is being appended to by another "
                             "AppendKV stream that is still open; retry after it ends", layer);
    } else if (!s->stage[layer] && start != s->len[layer]) {
        st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                             "start: layer %u holds %llu tokens; an append must start there, "
                             "got %llu", layer, (unsigned long long)s->len[layer],
                             (unsigned long long)start);
    } else if (s->stage[layer] && start != s->staged[layer]) {
        st = attnd_error_set(err, ATTND_ERR_FAILED_PRECONDITION,
                             "start: layer %u holds %llu tokens and this stream has %llu more "
                             "before this chunk; the chunk must start at %llu, got %llu", layer,
                             (unsigned long long)s->len[layer],
                             (unsigned long long)(s->staged[layer] - s->len[layer]),
                             (unsigned long long)s->staged[layer], (unsigned long long)start);
    } else {
        *fresh_p = !s->stage[layer];
        if (claim && !s->stage[layer]) {
            s->stage[layer] = stream;
            s->staged[layer] = start;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return st;
}

void attnd__gtable_stage_to(attnd__gtable *t, const attnd_session_id *id, uint32_t layer,
                            uint64_t stream, uint64_t end)
{
    pthread_mutex_lock(&t->mu);
    attnd__gsess *s = find(t, id);
    if (s && layer < (uint32_t)t->n_layers && s->stage[layer] == stream)
        s->staged[layer] = end;
    pthread_mutex_unlock(&t->mu);
}

void attnd__gtable_unstage(attnd__gtable *t, const attnd_session_id *id, uint32_t layer,
                           uint64_t stream, int commit)
{
    pthread_mutex_lock(&t->mu);
    attnd__gsess *s = find(t, id);
    if (s && layer < (uint32_t)t->n_layers && s->stage[layer] == stream) {
        if (commit)
            s->len[layer] = s->staged[layer];
        s->stage[layer] = 0;
    }
    pthread_mutex_unlock(&t->mu);
}

attnd_status attnd__gtable_check_unstaged(attnd__gtable *t, const attnd_session_id *ids,
                                          uint32_t n, uint32_t layer, attnd_error *err)
{
    attnd_status st = ATTND_OK;
    if (layer >= (uint32_t)t->n_layers)
        return ATTND_OK; /* the length checks name the layer */
    pthread_mutex_lock(&t->mu);
    for (uint32_t i = 0; i < n && st == ATTND_OK; i++) {
        attnd__gsess *s = find(t, &ids[i]);
        if (s && s->stage[layer])
            st = attnd_error_set(err, ATTND_ERR_ABORTED,
                                 "session_ids[%u]: layer %u of that session is being appended "
                                 "to by an AppendKV stream that is still open; retry after it "
                                 "ends", i, layer);
    }
    pthread_mutex_unlock(&t->mu);
    return st;
}

attnd_status attnd__gtable_set_kinds(attnd__gtable *t, const attnd_session_id *id,
                                     const uint8_t *kinds, size_t stride, attnd_error *err)
{
    const size_t bytes = stride * (size_t)t->n_layers;
    uint8_t *k = malloc(bytes);
    if (!k)
        return attnd_error_set(err, ATTND_ERR_RESOURCE_EXHAUSTED,
                               "policy: no memory for the group's session table");
    memcpy(k, kinds, bytes);
    pthread_mutex_lock(&t->mu);
    attnd__gsess *s = find(t, id);
    if (s) {
        free(s->kinds);
        s->kinds = k;
        s->kinds_stride = stride;
        k = NULL;
    }
    pthread_mutex_unlock(&t->mu);
    free(k);
    return ATTND_OK;
}

int attnd__gtable_kinds(attnd__gtable *t, const attnd_session_id *ids, uint32_t n,
                        uint32_t layer, size_t stride, uint8_t *out)
{
    int any = 0;
    pthread_mutex_lock(&t->mu);
    for (uint32_t i = 0; i < n; i++) {
        attnd__gsess *s = find(t, &ids[i]);
        if (s && s->kinds && s->kinds_stride == stride && layer < (uint32_t)t->n_layers) {
            memcpy(out + i * stride, s->kinds + layer * stride, stride);
            any = 1;
        } else {
            memset(out + i * stride, 0, stride); /* full, uniform */
            out[i * stride + stride - 1] = ATTND__GKIND_UNIFORM;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return any;
}
