/* Types shared by every room and the client: element types, attention
 * kinds, session ids. The enum values equal the proto enums of attnd.v1, so
 * they cross the wire by a cast (after range validation). */
#ifndef ATTND_TYPES_H
#define ATTND_TYPES_H

#include <stddef.h>
#include <stdint.h>

typedef enum attnd_dtype {
    ATTND_DTYPE_INVALID = 0,
    ATTND_DTYPE_BF16 = 1,
    ATTND_DTYPE_F16 = 2,
    ATTND_DTYPE_F32 = 3,
} attnd_dtype;

/* Bytes per element; 0 for an invalid dtype. */
static inline size_t attnd_dtype_size(attnd_dtype t)
{
    switch (t) {
    case ATTND_DTYPE_BF16: return 2;
    case ATTND_DTYPE_F16: return 2;
    case ATTND_DTYPE_F32: return 4;
    default: return 0;
    }
}

static inline const char *attnd_dtype_name(attnd_dtype t)
{
    switch (t) {
    case ATTND_DTYPE_BF16: return "bf16";
    case ATTND_DTYPE_F16: return "f16";
    case ATTND_DTYPE_F32: return "f32";
    default: return "invalid";
    }
}

typedef enum attnd_attn_kind {
    ATTND_ATTN_INVALID = 0,
    ATTND_ATTN_MLA = 1, /* multi-head latent attention, absorbed form */
    ATTND_ATTN_GQA = 2, /* grouped-query attention (MHA and MQA included) */
} attnd_attn_kind;

/* The two forms of an MLA query on the wire (ARCHITECTURE.md, "MLA, two
 * wire forms"); the values equal attnd.v1's QForm. */
typedef enum attnd_q_form {
    ATTND_Q_ABSORBED = 0, /* q [Hq][d_c + d_r] (q_nope . W_UK done by the
                             caller), out [Hq][d_c] (latent) */
    ATTND_Q_HEADS = 1,    /* q [Hq][d_nope + d_r], out [Hq][d_v]: the worker
                             holds the layer's W_UK and W_UV (LoadWeights),
                             absorbs before attention and up-projects after */
} attnd_q_form;

#define ATTND_SESSION_ID_BYTES 16

/* An opaque 128-bit session id, handed out by CreateSession. */
typedef struct attnd_session_id {
    uint8_t bytes[ATTND_SESSION_ID_BYTES];
} attnd_session_id;

#endif /* ATTND_TYPES_H */
