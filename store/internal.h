/* store/internal.h (store internal): what a backend provides. */
#ifndef STORE_INTERNAL_H
#define STORE_INTERNAL_H

#include <time.h>

#include "store/store.h"

struct store_ops {
    const char *kind;
    void (*close)(struct store *s);
    const char *(*state_dir)(const struct store *s);
    int (*display_name)(const struct store *s, const char *key, char *out, size_t cap);
    struct store_put *(*put_begin)(struct store *s, const char *key);
    int (*put_write)(struct store_put *p, void *buf, size_t len, size_t cap);
    int (*put_commit)(struct store_put *p);
    void (*put_free)(struct store_put *p);
    struct store_obj *(*obj_open)(struct store *s, const char *key);
    uint64_t (*obj_size)(const struct store_obj *o);
    ssize_t (*obj_read)(struct store_obj *o, void *buf, size_t len, uint64_t off);
    void (*obj_close)(struct store_obj *o);
    void (*obj_forget)(struct store_obj *o);     /* may be NULL */
    int (*list)(struct store *s, const char *prefix,
                int (*fn)(void *opaque, const char *key, uint64_t size, bool partial),
                void *opaque);
    int (*stat)(struct store *s, const char *key, uint64_t *size);
    int (*remove)(struct store *s, const char *key);
};

/* The head of every backend's store, put and object. */
struct store {
    const struct store_ops *ops;
    char *location;
};
struct store_put {
    struct store *s;
};
struct store_obj {
    struct store *s;
};

extern bool store_direct;

struct store *store_local_open(const char *dir);
struct store *store_s3_open(const char *url);
int store_s3_set_state(struct store *s, const char *dir);
uint64_t store_s3_retries(const struct store *s);
unsigned store_s3_lock_days(const struct store *s);
int store_s3_locked_until(struct store *s, const char *key, time_t *until);

#endif
