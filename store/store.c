/* store/store.c: the store's calls, dispatched to its backend. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "store/internal.h"

bool store_direct = true;

void store_direct_io(bool on)
{
    store_direct = on;
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

int store_check_key(const char *key)
{
    size_t len = strlen(key);
    const char *p = key;

    if (len == 0 || len >= STORE_KEY_MAX || key[0] == '/' || has_suffix(key, ".tmp"))
        goto bad;
    for (;;) {
        size_t n = strcspn(p, "/");
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            goto bad;
        if (!p[n])
            return 0;
        p += n + 1;
    }
bad:
    error_set(EINVAL, "invalid object name \"%.*s\"", STORE_KEY_MAX, key);
    return -1;
}

bool store_is_remote_location(const char *location)
{
    return strncmp(location, "s3://", 5) == 0;
}

struct store *store_open(const char *location)
{
    if (store_is_remote_location(location))
        return store_s3_open(location);
    return store_local_open(location);
}

bool store_is_remote(const struct store *s)
{
    return strcmp(s->ops->kind, "local") != 0;
}

int store_set_state_dir(struct store *s, const char *dir)
{
    if (!store_is_remote(s)) {
        error_set(EINVAL, "a local store keeps its state in its own directory");
        return -1;
    }
    return store_s3_set_state(s, dir);
}

uint64_t store_retries(const struct store *s)
{
    return store_is_remote(s) ? store_s3_retries(s) : 0;
}

unsigned store_lock_days(const struct store *s)
{
    return store_is_remote(s) ? store_s3_lock_days(s) : 0;
}

void store_close(struct store *s)
{
    if (s)
        s->ops->close(s);
}

const char *store_location(const struct store *s)
{
    return s->location;
}

const char *store_state_dir(const struct store *s)
{
    return s->ops->state_dir(s);
}

int store_display_name(const struct store *s, const char *key, char *out, size_t cap)
{
    char k[STORE_KEY_MAX + 1];

    snprintf(k, sizeof k, "%s", key);   /* out may be key */
    return s->ops->display_name(s, k, out, cap);
}

struct store_put *store_put_begin(struct store *s, const char *key)
{
    if (store_check_key(key) < 0)
        return NULL;
    return s->ops->put_begin(s, key);
}

int store_put_write(struct store_put *p, void *buf, size_t len, size_t cap)
{
    return p->s->ops->put_write(p, buf, len, cap < len ? len : cap);
}

int store_put_commit(struct store_put *p)
{
    return p->s->ops->put_commit(p);
}

void store_put_free(struct store_put *p)
{
    if (p)
        p->s->ops->put_free(p);
}

int store_put_all(struct store *s, const char *key, const void *buf, size_t len)
{
    struct store_put *p = store_put_begin(s, key);
    int r;

    if (!p)
        return -1;
    r = store_put_write(p, (void *)buf, len, len) < 0 || store_put_commit(p) < 0 ? -1 : 0;
    store_put_free(p);
    return r;
}

struct store_obj *store_obj_open(struct store *s, const char *key)
{
    if (store_check_key(key) < 0)
        return NULL;
    return s->ops->obj_open(s, key);
}

uint64_t store_obj_size(const struct store_obj *o)
{
    return o->s->ops->obj_size(o);
}

ssize_t store_obj_read(struct store_obj *o, void *buf, size_t len, uint64_t off)
{
    return o->s->ops->obj_read(o, buf, len, off);
}

void store_obj_close(struct store_obj *o)
{
    if (o)
        o->s->ops->obj_close(o);
}

void store_obj_forget(struct store_obj *o)
{
    if (o && o->s->ops->obj_forget)
        o->s->ops->obj_forget(o);
}

int store_get_all(struct store *s, const char *key, void **buf, size_t *len)
{
    struct store_obj *o = store_obj_open(s, key);
    uint64_t size;
    uint8_t *b;
    ssize_t n;

    if (!o)
        return -1;
    size = store_obj_size(o);
    if (size > SIZE_MAX - 1 || !(b = malloc(size ? (size_t)size : 1))) {
        error_set(ENOMEM, "read %s: out of memory", key);
        store_obj_close(o);
        return -1;
    }
    n = store_obj_read(o, b, (size_t)size, 0);
    store_obj_close(o);
    if (n < 0 || (uint64_t)n != size) {
        if (n >= 0)
            error_set(EIO, "read %s: %zd of %llu bytes", key, n, (unsigned long long)size);
        free(b);
        return -1;
    }
    *buf = b;
    *len = (size_t)size;
    return 0;
}

int store_list(struct store *s, const char *prefix,
               int (*fn)(void *opaque, const char *key, uint64_t size, bool partial),
               void *opaque)
{
    return s->ops->list(s, prefix, fn, opaque);
}

int store_stat(struct store *s, const char *key, uint64_t *size)
{
    if (store_check_key(key) < 0)
        return -1;
    return s->ops->stat(s, key, size);
}

int store_remove(struct store *s, const char *key)
{
    /* Partial objects (".tmp") are removed through the same call. */
    char k[STORE_KEY_MAX];
    size_t n = strlen(key);

    if (n >= sizeof k || !has_suffix(key, ".tmp")) {
        if (store_check_key(key) < 0)
            return -1;
    } else {
        memcpy(k, key, n - 4);
        k[n - 4] = 0;
        if (store_check_key(k) < 0)
            return -1;
    }
    return s->ops->remove(s, key);
}

int store_locked_until(struct store *s, const char *key, time_t *until)
{
    *until = 0;
    if (store_check_key(key) < 0)
        return -1;
    return store_is_remote(s) ? store_s3_locked_until(s, key, until) : 0;
}
