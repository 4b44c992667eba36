/* Helper kernels of the GPU benchmark (bench_kernels.cu), callable from C. */
#ifndef ATTND_BENCH_KERNELS_H
#define ATTND_BENCH_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Read `bytes` (a multiple of 16) at p once with `blocks` x 512 threads. */
int bench_read(const void *p, size_t bytes, unsigned *sink, int blocks, void *stream);
/* Fill n bf16 values at p with hashed values in [-2, 2). */
int bench_fill_bf16(void *p, size_t n, uint64_t seed, void *stream);
/* `blocks` CTAs busy-spinning for ns nanoseconds (queue timed work behind
 * it without letting the clocks drop). */
int bench_spin(unsigned long long ns, int blocks, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* ATTND_BENCH_KERNELS_H */
