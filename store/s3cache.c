/* store/s3cache.c: the windows of packs read lately, shared by every
 * reader of one bucket's store.
 *
 * A restore or a served point reads a pack chunk after chunk from several
 * threads at once, each through its own object handle.  A window per
 * handle made every thread fetch its own copy of the same stretch of the
 * pack: 4.3 GB of GETs for a restore of 1.2 GB of packs.  Here a window
 * is WIN_SIZE bytes at an offset aligned to WIN_SIZE, fetched by one
 * ranged GET, kept in one of WIN_SLOTS slots (least recently used goes)
 * and shared: a thread that wants a window being fetched waits for it
 * instead of fetching it again.  Only packs come here (store/s3.c): they
 * are never written twice under one key, so a window stays true while it
 * is kept; what it holds is checked by the caller (pack CRCs, chunk ids)
 * like any read, and store_obj_forget drops it after a failed check.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "store/s3int.h"

#define WIN_SIZE (4u << 20)
#define WIN_SLOTS 8

/* STALE: dropped while being read; empty once its last reader is done. */
enum { WIN_EMPTY, WIN_LOADING, WIN_READY, WIN_STALE };

struct win {
    char key[STORE_KEY_MAX];
    uint64_t off;                  /* aligned to WIN_SIZE */
    size_t len;                    /* bytes held (short at the end of the object) */
    uint8_t *data;                 /* WIN_SIZE bytes once used */
    uint64_t used;                 /* LRU clock */
    int state;
    unsigned refs;                 /* readers copying out of it */
};

struct s3_cache {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct win w[WIN_SLOTS];
    uint64_t clock;
};

struct s3_cache *s3_cache_new(void)
{
    struct s3_cache *c = calloc(1, sizeof *c);

    if (!c) {
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    return c;
}

void s3_cache_free(struct s3_cache *c)
{
    if (!c)
        return;
    for (unsigned i = 0; i < WIN_SLOTS; i++)
        free(c->w[i].data);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

int s3_get_range(struct s3 *s, const char *key, void *buf, size_t len, uint64_t off, size_t *got)
{
    struct s3_req r = { .method = "GET", .key = key, .range_off = off, .range_len = len,
                        .out = buf, .out_cap = len };

    if (s3_do(s, &r) < 0)
        return -1;
    *got = r.out_len;
    return 0;
}

/* Under mu: the slot holding (key, off), or NULL. */
static struct win *find(struct s3_cache *c, const char *key, uint64_t off)
{
    for (unsigned i = 0; i < WIN_SLOTS; i++)
        if ((c->w[i].state == WIN_LOADING || c->w[i].state == WIN_READY) && c->w[i].off == off &&
            !strcmp(c->w[i].key, key))
            return &c->w[i];
    return NULL;
}

/* Under mu: an empty slot, else the least recently used one nobody reads. */
static struct win *victim(struct s3_cache *c)
{
    struct win *v = NULL;

    for (unsigned i = 0; i < WIN_SLOTS; i++) {
        struct win *w = &c->w[i];
        if (w->state == WIN_EMPTY)
            return w;
        if (w->state == WIN_READY && !w->refs && (!v || w->used < v->used))
            v = w;
    }
    return v;
}

/* The window of key at off (aligned), held (refs) until release; NULL with
 * the error set when its GET failed. */
static struct win *acquire(struct s3_cache *c, struct s3 *s, const char *key, uint64_t size,
                           uint64_t off)
{
    struct win *w;

    pthread_mutex_lock(&c->mu);
    for (;;) {
        if ((w = find(c, key, off))) {
            if (w->state == WIN_READY)
                break;
        } else if ((w = victim(c))) {
            snprintf(w->key, sizeof w->key, "%s", key);
            w->off = off;
            w->state = WIN_LOADING;
            pthread_mutex_unlock(&c->mu);
            size_t want = size - off < WIN_SIZE ? (size_t)(size - off) : WIN_SIZE, got = 0;
            int r = -1;
            if (!w->data && !(w->data = malloc(WIN_SIZE)))
                error_set(ENOMEM, "out of memory");
            else
                r = s3_get_range(s, key, w->data, want, off, &got);
            pthread_mutex_lock(&c->mu);
            w->state = r < 0 ? WIN_EMPTY : WIN_READY;
            w->len = got;
            pthread_cond_broadcast(&c->cv);
            if (r < 0) {
                pthread_mutex_unlock(&c->mu);
                return NULL;
            }
            break;
        }
        /* Being fetched by another thread, or every slot busy. */
        pthread_cond_wait(&c->cv, &c->mu);
    }
    w->refs++;
    w->used = ++c->clock;
    pthread_mutex_unlock(&c->mu);
    return w;
}

static void release(struct s3_cache *c, struct win *w)
{
    pthread_mutex_lock(&c->mu);
    if (--w->refs == 0) {
        if (w->state == WIN_STALE)
            w->state = WIN_EMPTY;
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
}

void s3_cache_drop(struct s3_cache *c, const char *key)
{
    pthread_mutex_lock(&c->mu);
    for (unsigned i = 0; i < WIN_SLOTS; i++) {
        struct win *w = &c->w[i];
        if (w->state == WIN_READY && !strcmp(w->key, key))
            w->state = w->refs ? WIN_STALE : WIN_EMPTY;
    }
    pthread_mutex_unlock(&c->mu);
}

ssize_t s3_cache_read(struct s3_cache *c, struct s3 *s, const char *key, uint64_t size, void *buf,
                      size_t len, uint64_t off)
{
    uint8_t *out = buf;
    size_t done = 0;

    if (off >= size || len == 0)
        return 0;
    if (len > size - off)
        len = (size_t)(size - off);
    /* A large read goes straight to its own GET. */
    if (len >= WIN_SIZE / 2) {
        size_t got;
        return s3_get_range(s, key, buf, len, off, &got) < 0 ? -1 : (ssize_t)got;
    }
    while (done < len) {
        uint64_t at = off + done, base = at - at % WIN_SIZE;
        struct win *w = acquire(c, s, key, size, base);
        if (!w)
            return -1;
        size_t n = 0;
        if (at < base + w->len) {
            n = (size_t)(base + w->len - at);
            if (n > len - done)
                n = len - done;
            memcpy(out + done, w->data + (at - base), n);
        }
        release(c, w);
        if (n == 0)
            break;                 /* the object is shorter than its size said */
        done += n;
    }
    return (ssize_t)done;
}
