/* ATTND_ASSERT: invariants that survive release builds.
 *
 * assert() is compiled out under NDEBUG (Release, RelWithDebInfo); the
 * bookkeeping that keeps sessions apart (page lists, refcounts, slots of
 * group calls, plan unit counts) is checked in every build instead, as
 * SQLite and libuv do: a broken invariant is a bug of ours, never a
 * client's input, and continuing would risk answering another session's
 * KV. So the process prints where and aborts. Never use it to validate a
 * request: bad input gets an attnd_status. */
#ifndef ATTND_ASSERT_H
#define ATTND_ASSERT_H

#include <stdio.h>
#include <stdlib.h>

#define ATTND_ASSERT(cond)                                                                   \
    do {                                                                                     \
        if (__builtin_expect(!(cond), 0)) {                                                  \
            fprintf(stderr, "attnd: %s:%d: %s: invariant failed: %s\n", __FILE__, __LINE__,   \
                    __func__, #cond);                                                        \
            abort();                                                                         \
        }                                                                                    \
    } while (0)

#endif /* ATTND_ASSERT_H */
