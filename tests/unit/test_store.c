/* test_store.c: the local directory store (store/local.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "store/store.h"

#define UNUSED __attribute__((unused))

struct fx {
    char dir[64];
    struct store *st;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);

    assert_non_null(f);
    strcpy(f->dir, "/tmp/test_store.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->st = store_open(f->dir);
    assert_non_null(f->st);
    *state = f;
    return 0;
}

static int rm_one(const char *path, const struct stat *st UNUSED, int flag UNUSED,
                  struct FTW *ftw UNUSED)
{
    return remove(path);
}

static int teardown(void **state)
{
    struct fx *f = *state;

    store_close(f->st);
    nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static bool exists(const struct fx *f, const char *rel)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", f->dir, rel);
    return access(p, F_OK) == 0;
}

struct listing {
    char keys[16][STORE_KEY_MAX];
    uint64_t sizes[16];
    bool partial[16];
    int n;
};

static int list_cb(void *opaque, const char *key, uint64_t size, bool partial)
{
    struct listing *l = opaque;
    assert_true(l->n < 16);
    snprintf(l->keys[l->n], STORE_KEY_MAX, "%s", key);
    l->sizes[l->n] = size;
    l->partial[l->n++] = partial;
    return 0;
}

/* A put in several writes, aligned and not: the object holds exactly the
 * bytes written, under its key only once committed; folders are made. */
static void test_put_get(void **state)
{
    struct fx *f = *state;
    size_t cap = 3 * STORE_ALIGN;
    uint8_t *a = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t want[2 * 4096 + 100 + 7];
    void *got;
    size_t len;
    uint64_t size;

    assert_true(a != MAP_FAILED);
    for (size_t i = 0; i < sizeof want; i++)
        want[i] = (uint8_t)(i * 7 + 3);
    struct store_put *p = store_put_begin(f->st, "packs/ab/obj.pack");
    assert_non_null(p);
    memcpy(a, want, 2 * 4096);
    assert_int_equal(store_put_write(p, a, 2 * 4096, cap), 0);      /* direct */
    memcpy(a, want + 8192, 100);
    assert_int_equal(store_put_write(p, a, 100, cap), 0);           /* padded */
    memcpy(a, want + 8292, 7);
    assert_int_equal(store_put_write(p, a, 7, 7), 0);               /* unaligned */
    assert_false(exists(f, "packs/ab/obj.pack"));
    assert_true(exists(f, "packs/ab/obj.tmp"));
    assert_int_equal(store_put_commit(p), 0);
    store_put_free(p);
    assert_true(exists(f, "packs/ab/obj.pack"));
    assert_false(exists(f, "packs/ab/obj.tmp"));

    assert_int_equal(store_stat(f->st, "packs/ab/obj.pack", &size), 0);
    assert_int_equal(size, sizeof want);
    assert_int_equal(store_get_all(f->st, "packs/ab/obj.pack", &got, &len), 0);
    assert_int_equal(len, sizeof want);
    assert_memory_equal(got, want, sizeof want);
    free(got);

    /* Ranged reads, short only at the end. */
    struct store_obj *o = store_obj_open(f->st, "packs/ab/obj.pack");
    uint8_t b[64];
    assert_non_null(o);
    assert_int_equal(store_obj_size(o), sizeof want);
    assert_int_equal(store_obj_read(o, b, 64, 4000), 64);
    assert_memory_equal(b, want + 4000, 64);
    assert_int_equal(store_obj_read(o, b, 64, sizeof want - 10), 10);
    assert_int_equal(store_obj_read(o, b, 64, sizeof want + 10), 0);
    store_obj_close(o);
    munmap(a, cap);
}

/* Abandoned puts leave nothing; a killed one leaves a partial object that
 * the listing names as such and remove takes. */
static void test_abandon_and_partial(void **state)
{
    struct fx *f = *state;
    struct listing l = { .n = 0 };
    char buf[10] = "0123456789";

    struct store_put *p = store_put_begin(f->st, "packs/cd/gone.pack");
    assert_non_null(p);
    assert_int_equal(store_put_write(p, buf, 10, 10), 0);
    store_put_free(p);
    assert_false(exists(f, "packs/cd/gone.pack"));
    assert_false(exists(f, "packs/cd/gone.tmp"));

    /* As a SIGKILL leaves it. */
    char path[256];
    snprintf(path, sizeof path, "%s/packs/cd/left.tmp", f->dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("half", fp);
    fclose(fp);
    assert_int_equal(store_put_all(f->st, "packs/cd/whole.pack", buf, 10), 0);
    assert_int_equal(store_put_all(f->st, "other/x", buf, 3), 0);

    assert_int_equal(store_list(f->st, "packs/", list_cb, &l), 0);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.keys[0], "packs/cd/left.tmp");
    assert_true(l.partial[0]);
    assert_int_equal(l.sizes[0], 4);
    assert_string_equal(l.keys[1], "packs/cd/whole.pack");
    assert_false(l.partial[1]);
    assert_int_equal(l.sizes[1], 10);

    assert_int_equal(store_remove(f->st, "packs/cd/left.tmp"), 0);
    assert_int_equal(store_remove(f->st, "packs/cd/whole.pack"), 0);
    assert_int_equal(store_remove(f->st, "packs/cd/whole.pack"), -1);
    assert_int_equal(error_errno(), ENOENT);
    assert_non_null(strstr(error_msg(), "whole.pack is missing"));
    l.n = 0;
    assert_int_equal(store_list(f->st, "", list_cb, &l), 0);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.keys[0], "other/x");
    l.n = 0;
    assert_int_equal(store_list(f->st, "nothing/", list_cb, &l), 0);
    assert_int_equal(l.n, 0);
}

/* Keys that could leave the store, or that name partial objects, are
 * refused before any I/O. */
static void test_bad_keys(void **state)
{
    struct fx *f = *state;
    static const char *bad[] = { "", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b",
                                 "x.tmp", "a/", NULL };

    for (int i = 0; bad[i]; i++) {
        assert_null(store_put_begin(f->st, bad[i]));
        assert_int_equal(error_errno(), EINVAL);
        assert_non_null(strstr(error_msg(), "invalid object name"));
        assert_null(store_obj_open(f->st, bad[i]));
    }
    assert_null(store_obj_open(f->st, "packs/none.pack"));
    assert_int_equal(error_errno(), ENOENT);
    assert_non_null(strstr(error_msg(), "is missing"));
    assert_null(store_open("/nonexistent/store"));
    assert_int_equal(error_errno(), ENOENT);
}

/* A put whose key already stands as a partial of another put (O_EXCL)
 * fails cleanly, naming the file. */
static void test_put_conflict(void **state)
{
    struct fx *f = *state;
    struct store_put *a = store_put_begin(f->st, "k/same.pack");
    assert_non_null(a);
    assert_null(store_put_begin(f->st, "k/same.pack"));
    assert_int_equal(error_errno(), EEXIST);
    assert_non_null(strstr(error_msg(), "same.tmp"));
    store_put_free(a);
    assert_false(exists(f, "k/same.tmp"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_put_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abandon_and_partial, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_conflict, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
