/* attnd_buf (attnd_buf.h): growing scratch arrays by doubling. */
#include <stdint.h>
#include <stdlib.h>

#include "attnd_buf.h"

int attnd_buf_reserve(void **p, size_t *cap, size_t n, size_t es)
{
    if (n <= *cap)
        return 0;
    size_t c = *cap ? *cap : 16;
    while (c < n) {
        if (c > SIZE_MAX / 2)
            return -1;
        c *= 2;
    }
    if (es && c > SIZE_MAX / es)
        return -1;
    void *q = realloc(*p, c * es);
    if (!q)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}
