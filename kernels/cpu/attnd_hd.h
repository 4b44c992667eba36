/* ATTND__HD: a function of a header shared by the host's kernels and the
 * CUDA ones (kernels/cuda includes it too) is __host__ __device__ under
 * nvcc, plain C elsewhere. */
#ifndef ATTND_HD_H
#define ATTND_HD_H

#if defined(__CUDACC__)
#define ATTND__HD __host__ __device__
#else
#define ATTND__HD
#endif

#endif /* ATTND_HD_H */
