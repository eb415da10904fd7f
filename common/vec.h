/* common/vec.h: growable arrays.
 *
 * An array is a pointer, a count of elements in use and a capacity.
 * VEC_RESERVE makes room for one more element, doubling the capacity (from
 * first) when it is full:
 *
 *     if (VEC_RESERVE(v->e, v->n, v->cap, 256) < 0)
 *         return -1;                     // ENOMEM, with a message
 *     v->e[v->n++] = x;
 */
#ifndef COMMON_VEC_H
#define COMMON_VEC_H

#include <stddef.h>

/* *ptrp: the array (any element type), elem bytes each.  0, or -1 with the
 * thread's error set to ENOMEM (the array is then unchanged). */
int vec_grow(void *ptrp, size_t *cap, size_t n, size_t elem, size_t first);

#define VEC_RESERVE(ptr, n, cap, first) vec_grow(&(ptr), &(cap), (n), sizeof *(ptr), (first))

#endif
