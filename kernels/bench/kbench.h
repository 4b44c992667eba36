/* attnd-kbench internals shared by its two files: the machine's roofline
 * (kbench_machine.c) and the kernel cases (kbench.c). */
#ifndef ATTND_KBENCH_H
#define ATTND_KBENCH_H

#include <stddef.h>
#include <stdint.h>

#include "cpu_int.h"

/* Median of n doubles (sorts v). */
double kb_median(double *v, int n);
/* Last-level cache size in bytes (sysconf, then sysfs; 32 MiB if unknown). */
size_t kb_llc_bytes(void);
/* CPU model name from /proc/cpuinfo into buf. */
void kb_cpu_model(char *buf, size_t n);

/* Read bandwidth in GB/s (1e9 B/s): every pool thread sums its share of a
 * buffer of `bytes` with the widest loads the CPU has; median of reps after
 * one warm-up pass. n_threads 1 runs on the calling thread only. */
double kb_read_bandwidth(attnd_kernel_pool *pool, int n_threads, size_t bytes, int reps);

/* Seconds for the pool's threads to move a call's queries and outputs the
 * cheapest way: each reads its share of q_bytes (sum) and writes its share
 * of out_bytes (stores), the same buffers every run, as the kernels see
 * them; median of reps after one warm-up. */
double kb_move_seconds(attnd_kernel_pool *pool, size_t q_bytes, size_t out_bytes, int reps);

/* Peak float32 multiply-add rate of the pool's threads together, GFLOP/s
 * (2 flops per lane per FMA), from a register-resident loop of independent
 * FMAs at the width of the current kernel path; *lanes_p gets that width. */
double kb_fma_peak(attnd_kernel_pool *pool, int *lanes_p);
/* Same for vdpbf16ps (64 flops per zmm instruction), or 0 when the CPU
 * lacks avx512_bf16. */
double kb_dpbf16_peak(attnd_kernel_pool *pool);

#endif /* ATTND_KBENCH_H */
