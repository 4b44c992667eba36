/* attnd_clock: the one clock of attnd. Every interval and deadline in
 * the project is CLOCK_MONOTONIC (never the wall clock, which jumps); a
 * condition variable that waits on a deadline is created with
 * pthread_condattr_setclock(CLOCK_MONOTONIC) and given attnd_clock_ts. */
#ifndef ATTND_CLOCK_H
#define ATTND_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Nanoseconds since an arbitrary start (the monotonic clock). */
static inline uint64_t attnd_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline int64_t attnd_clock_ms(void)
{
    return (int64_t)(attnd_clock_ns() / 1000000u);
}

static inline double attnd_clock_s(void)
{
    return (double)attnd_clock_ns() * 1e-9;
}

/* The monotonic timespec of a point given in attnd_clock_ms() terms. */
static inline struct timespec attnd_clock_ts(int64_t at_ms)
{
    struct timespec ts = {(time_t)(at_ms / 1000), (long)(at_ms % 1000) * 1000000L};
    return ts;
}

#endif /* ATTND_CLOCK_H */
