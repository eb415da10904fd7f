/* common/vec.c: growable arrays (see vec.h). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/vec.h"

int vec_grow(void *ptrp, size_t *cap, size_t n, size_t elem, size_t first)
{
    void *p, *np;
    size_t ncap;

    if (n < *cap)
        return 0;
    ncap = *cap ? *cap * 2 : (first ? first : 1);
    if (ncap <= n)
        ncap = n + 1;
    if (ncap < *cap || ncap > SIZE_MAX / elem) {
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    /* The caller's pointer is read and written as bytes: it may point to
     * any type. */
    memcpy(&p, ptrp, sizeof p);
    if (!(np = realloc(p, ncap * elem))) {
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    memcpy(ptrp, &np, sizeof np);
    *cap = ncap;
    return 0;
}
