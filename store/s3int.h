/* store/s3int.h (store internal): the S3 request engine under store/s3.c.
 *
 * One struct s3 per opened bucket: its endpoint, credentials and a pool of
 * libcurl easy handles (connections kept alive and reused).  s3_do runs
 * one request with its retries: connection errors, 5xx, 429 and SlowDown
 * are retried with capped exponential backoff and jitter (Retry-After
 * honoured), other 4xx never.  Every request is signed with SigV4 by
 * libcurl, with the body's SHA-256 in x-amz-content-sha256.
 */
#ifndef STORE_S3INT_H
#define STORE_S3INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/types.h>

#include "store/store.h"

#define S3_MAX_HANDLES 64

struct s3 {
    char endpoint[512];           /* scheme://host[:port], no trailing '/' */
    char bucket[64];
    char prefix[STORE_KEY_MAX];   /* "" or "some/prefix/" */
    char region[64];
    bool path_style;
    char access[128];
    char secret[128];             /* never printed */
    char token[2048];             /* session token, or "" */
    char ca_file[512];
    unsigned connections;
    unsigned retries;             /* attempts after the first */
    unsigned timeout;             /* seconds per request */
    unsigned low_speed_time;      /* seconds below 1 KiB/s that end a request */
    unsigned lock_days;           /* object lock retention of new objects, 0 none */
    bool lock_compliance;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    void *free_handles[S3_MAX_HANDLES];
    unsigned nfree, nopen;
    uint64_t retried;             /* requests retried, for reports */
};

/* The body of a PUT: from a file (pread at off) or from memory. */
struct s3_body {
    int fd;                       /* -1: mem */
    const void *mem;
    uint64_t len;
    char sha256[65];              /* hex */
    char md5[33];                 /* hex (compared with the ETag) */
};

struct s3_req {
    const char *method;           /* GET, PUT, HEAD, DELETE */
    const char *key;              /* the object's key below the prefix; NULL: the bucket */
    const char *query;            /* "list-type=2&..." or NULL */
    const struct s3_body *body;   /* PUT */
    uint64_t range_off, range_len;  /* GET: range_len 0 = whole object */
    void *out;                    /* GET into a fixed buffer of out_cap bytes ... */
    size_t out_cap;
    bool grow;                    /* ... or into a malloc'ed one (resp, resp_len) */
    bool lock;                    /* PUT: with object lock retention */

    /* Results. */
    long status;
    size_t out_len;
    char *resp;                   /* grown body (free it) */
    size_t resp_len;
    uint64_t content_length;      /* HEAD */
    char etag[80];
    char code[64];                /* S3's error code */
    char lock_until[40];          /* x-amz-object-lock-retain-until-date */
};

int s3_init(struct s3 *s);        /* the handle pool */
void s3_fini(struct s3 *s);
/* 0 on 2xx; -1 with the error set naming the object, the status and S3's
 * code ("403 SignatureDoesNotMatch"), errno ENOENT for 404, EACCES for
 * 403, EIO otherwise. */
int s3_do(struct s3 *s, struct s3_req *r);
/* Hex MD5 and SHA-256 of a body (mem or file), filled into b. */
int s3_body_hash(struct s3_body *b);
/* A ranged GET into buf: *got bytes (short at the end of the object). */
int s3_get_range(struct s3 *s, const char *key, void *buf, size_t len, uint64_t off, size_t *got);

/* store/s3cache.c: windows of packs read lately, shared by every reader
 * of a store (a few MiB each, a bounded number); only for objects never
 * written twice under one key. */
struct s3_cache;
struct s3_cache *s3_cache_new(void);         /* NULL with the error set */
void s3_cache_free(struct s3_cache *c);      /* accepts NULL */
/* Reads [off, off + len) of key (size bytes long): the count, short only
 * at the end of the object, or -1 with the error set. */
ssize_t s3_cache_read(struct s3_cache *c, struct s3 *s, const char *key, uint64_t size, void *buf,
                      size_t len, uint64_t off);
/* Drops the windows of key: the next read fetches them again (one being
 * read goes once its readers are done). */
void s3_cache_drop(struct s3_cache *c, const char *key);

/* Percent-encodes s (keeping '/' when keep_slash) into out. */
int s3_encode(const char *s, bool keep_slash, char *out, size_t cap);
/* The configuration, credentials and defaults from the environment. */
int s3_configure(struct s3 *s, const char *url);

#endif
