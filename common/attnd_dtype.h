/* attnd_dtype: element conversions between bf16, f16 and float32.
 *
 * The scalar conversions are the reference every SIMD path (kernels, codec)
 * must match bit for bit: round to nearest, ties to even; NaN stays a quiet
 * NaN; f16 subnormals handled. attnd_dtype_convert converts whole tensors
 * with one vectorizable loop per dtype pair (cloned per x86-64 ISA level),
 * at any alignment: wire tensors sit at arbitrary offsets of a message.
 *
 * Part of common/, the floor every room stands on: pure computation, no
 * allocation, libc only. */
#ifndef ATTND_DTYPE_H
#define ATTND_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "attnd/types.h"

uint16_t attnd_dtype_f32_to_bf16(float f);
/* Exact (bf16 is float32's upper half); inline: the kernels' per-element
 * loops call it. */
static inline float attnd_dtype_bf16_to_f32(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
uint16_t attnd_dtype_f32_to_f16(float f);
float attnd_dtype_f16_to_f32(uint16_t h);

/* Convert n elements between any two dtypes (same dtype: memmove). dst and
 * src may have any alignment. An invalid dtype writes nothing (callers
 * validate first). */
void attnd_dtype_convert(attnd_dtype dst_t, void *dst, attnd_dtype src_t,
                         const void *src, size_t n);

/* Non-finite inputs (NaN, +-Inf) are refused where a tensor enters attnd.
 * attnd_dtype_find_nonfinite: the index of the first element of src[0..n)
 * that is NaN or infinite, n when there is none. attnd_dtype_convert_checked:
 * attnd_dtype_convert that also returns that index, found in the same pass
 * (the whole tensor is converted either way). Both test the exponent bits
 * of a block at a time in a vectorized loop and look for the element only
 * in a block that has one. Any alignment. */
size_t attnd_dtype_find_nonfinite(attnd_dtype t, const void *src, size_t n);
size_t attnd_dtype_convert_checked(attnd_dtype dst_t, void *dst, attnd_dtype src_t,
                                   const void *src, size_t n);
/* "NaN", "+Inf" or "-Inf" for a non-finite element i; "finite" otherwise. */
const char *attnd_dtype_nonfinite_name(attnd_dtype t, const void *src, size_t i);

/* Read element i of a typed array as float32 / float64. */
float attnd_dtype_load_f32(attnd_dtype t, const void *src, size_t i);
double attnd_dtype_load_f64(attnd_dtype t, const void *src, size_t i);

#endif /* ATTND_DTYPE_H */
