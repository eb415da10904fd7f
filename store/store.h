/* store/store.h: where a repository's objects live (the door of store/).
 *
 * A store holds objects under keys: relative, slash-separated names such
 * as "packs/ab/ab12...ef.pack" (no leading '/', no empty, "." or ".."
 * component, no key ending in ".tmp", at most STORE_KEY_MAX - 1 bytes).
 * Objects are written once and never changed; a key is either absent or
 * holds a whole, durable object.
 *
 * Backends: a local directory (store/local.c: one file per object, written
 * to a temporary name, fsynced, renamed, its directories fsynced); S3 joins
 * behind the same calls.  Nothing outside store/ builds a path into a
 * repository: the catalog and lock files live in store_state_dir().
 *
 * Threads: a store may be used by several threads at once; one put or one
 * object handle by one thread at a time.
 *
 * Errors: -1 / NULL with common/error.h's message naming the object.
 */
#ifndef STORE_STORE_H
#define STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define STORE_KEY_MAX 256
/* Buffers aligned to this, of a length that is a multiple of it, are
 * written by the local backend without a copy through the page cache. */
#define STORE_ALIGN 4096

struct store;

/* Opens the store at location: a directory (which must exist), or
 * s3://BUCKET[/PREFIX] (store/s3.c; configured by store_s3_configure and
 * the AWS_* environment). */
struct store *store_open(const char *location);
/* Whether location names an object store (s3://...). */
bool store_is_remote_location(const char *location);
bool store_is_remote(const struct store *s);

/* S3 settings for the stores opened afterwards (the process's; NULL or
 * 0 fields: from the environment, else the defaults).  Strings are
 * copied at store_open. */
struct store_s3_config {
    const char *endpoint;         /* --s3-endpoint; else AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL */
    const char *region;           /* else AWS_REGION, AWS_DEFAULT_REGION, us-east-1 */
    int path_style;               /* 1 yes, 0 no, -1 auto (yes for an IP address or localhost) */
    const char *ca_file;          /* https: else the system's CAs */
    unsigned connections;         /* requests at once (default 8) */
    unsigned retries;             /* attempts after the first (default 8; NBDVAULT_S3_RETRIES) */
    unsigned timeout;             /* seconds per request (default 300; NBDVAULT_S3_TIMEOUT) */
    unsigned low_speed_time;      /* seconds under 1 KiB/s (default 30; NBDVAULT_S3_LOW_SPEED_TIME) */
    unsigned lock_days;           /* object lock retention of new objects (0: none) */
    bool lock_compliance;         /* COMPLIANCE instead of GOVERNANCE */
};
void store_s3_configure(const struct store_s3_config *c);
/* For a remote store: the local directory its state (catalog cache, spool
 * files) lives in, set by the opener before anything is written. */
int store_set_state_dir(struct store *s, const char *dir);
/* Requests retried so far (0 for a local store). */
uint64_t store_retries(const struct store *s);
/* Object lock: whether new objects are written with a retention, and
 * until when an object is retained (*until 0: not; always 0 locally). */
unsigned store_lock_days(const struct store *s);
#include <time.h>
int store_locked_until(struct store *s, const char *key, time_t *until);
void store_close(struct store *s);          /* accepts NULL */
/* The location as the user gave it, for messages. */
const char *store_location(const struct store *s);
/* The local directory for the repository's local state (its catalog,
 * lock files): the directory itself for a local store. */
const char *store_state_dir(const struct store *s);
/* How an object is named in messages: its path for a local store (out may
 * be key). */
int store_display_name(const struct store *s, const char *key, char *out, size_t cap);
/* Whether local puts try O_DIRECT (the default; buffered where the file
 * system refuses it).  Tests turn it off to take the buffered path. */
void store_direct_io(bool on);

/* ---- Writing ------------------------------------------------------------ */
/* An object is written in order, then committed: until store_put_commit
 * returns 0 nothing stands under its key; a put freed before that (or a
 * process killed during it) leaves at most a partial object that
 * store_list reports as such. */
struct store_put;
struct store_put *store_put_begin(struct store *s, const char *key);
/* Appends buf[len].  cap >= len is how many bytes of buf the store may
 * overwrite (the local backend pads a direct write to STORE_ALIGN); pass
 * len when there is no room. */
int store_put_write(struct store_put *p, void *buf, size_t len, size_t cap);
/* Makes the object durable under its key.  On failure nothing stands
 * under the key. */
int store_put_commit(struct store_put *p);
/* Frees; an uncommitted put is abandoned and its partial object removed. */
void store_put_free(struct store_put *p);
/* The whole object in one call (small objects). */
int store_put_all(struct store *s, const char *key, const void *buf, size_t len);

/* ---- Reading ------------------------------------------------------------ */
struct store_obj;
/* Opens an object for reading; a missing one fails with ENOENT and the
 * message "<name> is missing". */
struct store_obj *store_obj_open(struct store *s, const char *key);
uint64_t store_obj_size(const struct store_obj *o);
/* Reads up to len bytes at off: the count, short only at the end of the
 * object, or -1. */
ssize_t store_obj_read(struct store_obj *o, void *buf, size_t len, uint64_t off);
void store_obj_close(struct store_obj *o);   /* accepts NULL */
/* Drops what the store keeps of the object in memory (a bucket's read
 * windows), so that the next read fetches it again: after bytes that
 * failed their check, which may have been damaged on the way. */
void store_obj_forget(struct store_obj *o);
/* The whole object into a new buffer (*buf, *len; free() it). */
int store_get_all(struct store *s, const char *key, void **buf, size_t *len);

/* ---- Listing and removing ----------------------------------------------- */
/* Calls fn for every object whose key starts with prefix (a folder such as
 * "packs/", or ""), sorted by key; partial objects left by puts that never
 * committed come with partial set and a key of their own that
 * store_remove takes.  A nonzero return from fn stops the walk and is
 * returned. */
int store_list(struct store *s, const char *prefix,
               int (*fn)(void *opaque, const char *key, uint64_t size, bool partial),
               void *opaque);
/* The size of an object; a missing one fails with ENOENT. */
int store_stat(struct store *s, const char *key, uint64_t *size);
/* Removes an object durably; a missing one fails with ENOENT (a local
 * store; S3 answers a removal of a missing object with success).  In a
 * bucket with object lock, a removal hides the object behind a delete
 * marker and its retained version stays: callers check
 * store_locked_until first. */
int store_remove(struct store *s, const char *key);

/* Checks a key (see above). */
int store_check_key(const char *key);

#endif
