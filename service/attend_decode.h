/* In-place decoding of AttendRequest (attend_decode.c): tensor bytes are
 * referenced where they arrived instead of copied. */
#ifndef ATTND_SRV_ATTEND_DECODE_H
#define ATTND_SRV_ATTEND_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "attnd.pb-c.h"
#include "codec.h"

/* Decode the canonical encoding of an AttendRequest from data[0..len):
 * the message and its arrays come from arena a, its bytes fields point
 * into data (which must outlive *m_p). 0 on success; -1 when the bytes are
 * not canonical or not a message at all: then decode them with
 * attnd_srv_unpack, which knows every legal form and words the error. */
int attnd_srv_attend_decode_inplace(const uint8_t *data, size_t len, attnd_srv_arena *a,
                                    Attnd__V1__AttendRequest **m_p);

#endif /* ATTND_SRV_ATTEND_DECODE_H */
