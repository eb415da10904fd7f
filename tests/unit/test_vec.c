/* test_vec.c: growable arrays (common/vec.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/vec.h"

#define UNUSED __attribute__((unused))

struct big {
    uint64_t a, b;
    char name[40];
};

/* Elements survive every growth; the capacity starts at first and doubles. */
static void test_grow_keeps_elements(void **state UNUSED)
{
    struct big *v = NULL;
    size_t n = 0, cap = 0;

    for (uint64_t i = 0; i < 1000; i++) {
        assert_int_equal(VEC_RESERVE(v, n, cap, 8), 0);
        assert_true(cap > n);
        v[n++] = (struct big){ i, ~i, "" };
        snprintf(v[n - 1].name, sizeof v[n - 1].name, "element %llu", (unsigned long long)i);
        if (n == 1)
            assert_int_equal(cap, 8);
    }
    assert_int_equal(cap, 1024);
    for (uint64_t i = 0; i < n; i++) {
        char want[40];
        snprintf(want, sizeof want, "element %llu", (unsigned long long)i);
        assert_int_equal(v[i].a, i);
        assert_int_equal(v[i].b, ~i);
        assert_string_equal(v[i].name, want);
    }
    free(v);
}

/* Room left: nothing moves. */
static void test_room_left(void **state UNUSED)
{
    int *v = NULL;
    size_t cap = 0;

    assert_int_equal(VEC_RESERVE(v, 0, cap, 4), 0);
    int *before = v;
    for (size_t n = 0; n < 4; n++)
        assert_int_equal(VEC_RESERVE(v, n, cap, 4), 0);
    assert_ptr_equal(v, before);
    assert_int_equal(cap, 4);
    free(v);
}

/* A size that cannot be allocated: ENOMEM with a message, array unchanged. */
static void test_too_big(void **state UNUSED)
{
    struct huge {
        char b[SIZE_MAX / 4];
    } *v = NULL;
    size_t n = 0, cap = 0;

    assert_int_equal(VEC_RESERVE(v, n, cap, 16), -1);
    assert_int_equal(error_errno(), ENOMEM);
    assert_non_null(strstr(error_msg(), "out of memory"));
    assert_null(v);
    assert_int_equal(cap, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grow_keeps_elements),
        cmocka_unit_test(test_room_left),
        cmocka_unit_test(test_too_big),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
