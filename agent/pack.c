/* agent/pack.c: writing and reading packs in a repository's store.
 *
 * The bytes are agent/packfmt.c's; the objects are store/'s.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>

#include <zstd.h>

#include "agent/pack.h"
#include "common/error.h"
#include "common/log.h"
#include "store/store.h"

#define WRITE_BUF_SIZE (1024 * 1024)
#define READER_FDS 32

/* A pack name comes from the catalog or from pack_list_files: relative,
 * inside packs/, no "..". */
static int check_name(const char *name)
{
    size_t len = strlen(name);
    const char *p;

    if (len == 0 || len >= PACK_NAME_MAX || name[0] == '/')
        goto bad;
    for (p = name; p; p = strchr(p, '/')) {
        if (*p == '/')
            p++;
        if (p[0] == '.' && p[1] == '.' && (p[2] == '/' || p[2] == '\0'))
            goto bad;
    }
    return 0;
bad:
    error_set(EINVAL, "invalid pack name \"%.*s\"", PACK_NAME_MAX, name);
    return -1;
}

/* ---- Writing ------------------------------------------------------------ */

/* A pack is written through a thread of its own, from 1 MiB buffers: the
 * workers that add chunks (under the caller's store lock) only copy into
 * the buffer being filled, and never wait for the store.  The buffers are
 * page-aligned with room to pad, so that the local store writes them with
 * O_DIRECT (store/local.c). */

#define WRITE_BUFS 2                   /* per writer: one filling, one on its way */
#define POOL_MAX 8

/* Write buffers outlive their writers (a backup writes one pack after
 * another): mapped once, populated at once (cheaper than a page fault per
 * 4 KiB), page-aligned as O_DIRECT wants. */
static struct {
    pthread_mutex_t lock;
    void *free[POOL_MAX];
    unsigned n;
} pool = { PTHREAD_MUTEX_INITIALIZER, { 0 }, 0 };

static uint8_t *buf_get(void)
{
    void *b = NULL;

    pthread_mutex_lock(&pool.lock);
    if (pool.n)
        b = pool.free[--pool.n];
    pthread_mutex_unlock(&pool.lock);
    if (b)
        return b;
    b = mmap(NULL, WRITE_BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
             -1, 0);
    return b == MAP_FAILED ? NULL : b;
}

static void buf_put(void *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&pool.lock);
    if (pool.n < POOL_MAX) {
        pool.free[pool.n++] = b;
        b = NULL;
    }
    pthread_mutex_unlock(&pool.lock);
    if (b)
        munmap(b, WRITE_BUF_SIZE);
}

struct wjob {
    uint8_t *buf;
    size_t len;                    /* bytes of the file in buf */
    uint64_t off;                  /* where they go */
};

struct pack_writer {
    struct store *st;
    struct store_put *put;
    char key[PACK_NAME_MAX + 8];   /* packs/<name> */
    char name[PACK_NAME_MAX];      /* xx/<hex>.pack, for messages */
    bool finished;
    int failed;                    /* errno of an earlier write failure, or 0 */

    uint8_t *buf;                  /* the buffer being filled */
    size_t buf_len;
    uint64_t buf_off;              /* pack offset of buf[0] */
    uint64_t offset;               /* bytes accepted (written or buffered) */
    bool sealed;                   /* pack_writer_seal was called */

    /* The I/O thread and what it shares (under mu). */
    pthread_t io;
    bool io_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct wjob jobs[WRITE_BUFS];  /* queued, oldest first */
    unsigned njobs;
    bool busy;                     /* the thread is writing jobs[0] */
    uint8_t *spare[WRITE_BUFS];    /* written buffers, ready to fill */
    unsigned nspare;
    bool stop;
    bool seal;                     /* finish the pack once everything is written */
    bool sealed_ok;                /* ... and it was: durable under its final name */
    int io_err;                    /* first write error */
    char io_msg[512];              /* ... and what the store said of it */

    struct pack_entry *entries;
    size_t count, cap;
};

static int writer_fail(struct pack_writer *w, int err)
{
    w->failed = err;
    error_set(err, "write pack %s: %s", w->name, w->io_msg[0] ? w->io_msg : strerror(err));
    return -1;
}

/* The I/O thread's first failure (under mu), with the store's message. */
static void io_failed(struct pack_writer *w, int err, const char *msg)
{
    if (!err || w->io_err)
        return;
    w->io_err = err;
    snprintf(w->io_msg, sizeof w->io_msg, "%s", msg);
}

/* Writes one job (the I/O thread, without mu): 0, or -1 with errno. */
static int write_job(struct pack_writer *w, const struct wjob *j)
{
    if (store_put_write(w->put, j->buf, j->len, WRITE_BUF_SIZE) < 0) {
        errno = error_errno() ? error_errno() : EIO;
        return -1;
    }
    return 0;
}

static int finish_file(struct pack_writer *w);

static void *io_main(void *opaque)
{
    struct pack_writer *w = opaque;

    pthread_setname_np(pthread_self(), "nbdvault-pack");

    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->njobs && !w->stop && !w->seal)
            pthread_cond_wait(&w->cv, &w->mu);
        if (!w->njobs && w->seal) {
            int err = w->io_err;
            char msg[sizeof w->io_msg] = "";
            pthread_mutex_unlock(&w->mu);
            if (!err && finish_file(w) < 0) {
                err = errno;
                snprintf(msg, sizeof msg, "%s", error_msg());
            }
            pthread_mutex_lock(&w->mu);
            io_failed(w, err, msg);
            w->sealed_ok = !err;
            break;
        }
        if (!w->njobs)
            break;
        struct wjob j = w->jobs[0];
        w->busy = true;
        int err = w->io_err;
        char msg[sizeof w->io_msg] = "";
        pthread_mutex_unlock(&w->mu);
        if (!err && write_job(w, &j) < 0) {
            err = errno;
            snprintf(msg, sizeof msg, "%s", error_msg());
        }
        pthread_mutex_lock(&w->mu);
        io_failed(w, err, msg);
        memmove(&w->jobs[0], &w->jobs[1], --w->njobs * sizeof w->jobs[0]);
        w->busy = false;
        w->spare[w->nspare++] = j.buf;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Hands the filled buffer to the I/O thread and takes an empty one
 * (waiting for one when both are on their way). */
static int writer_submit(struct pack_writer *w)
{
    int err;

    pthread_mutex_lock(&w->mu);
    w->jobs[w->njobs++] = (struct wjob){ w->buf, w->buf_len, w->buf_off };
    pthread_cond_broadcast(&w->cv);
    w->buf = NULL;
    while (!w->nspare && !w->io_err)
        pthread_cond_wait(&w->cv, &w->mu);
    if (w->nspare)
        w->buf = w->spare[--w->nspare];
    err = w->io_err;
    pthread_mutex_unlock(&w->mu);
    w->buf_off += w->buf_len;
    w->buf_len = 0;
    return err ? writer_fail(w, err) : 0;
}

static void writer_stop_io(struct pack_writer *w)
{
    if (!w->io_started)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->io, NULL);
    w->io_started = false;
}

static int writer_put(struct pack_writer *w, const void *data, size_t len)
{
    const uint8_t *p = data;

    while (len > 0) {
        size_t take = WRITE_BUF_SIZE - w->buf_len;
        if (take > len)
            take = len;
        memcpy(w->buf + w->buf_len, p, take);
        w->buf_len += take;
        w->offset += take;
        p += take;
        len -= take;
        if (w->buf_len == WRITE_BUF_SIZE && writer_submit(w) < 0)
            return -1;
    }
    return 0;
}

struct pack_writer *pack_writer_open(struct store *st)
{
    struct pack_writer *w;
    uint8_t rnd[16];
    char hex[33];
    uint8_t hdr[PACK_FILE_HDR_LEN];
    size_t got = 0;

    w = calloc(1, sizeof *w);
    if (!w) {
        error_set(ENOMEM, "new pack: out of memory");
        return NULL;
    }
    w->st = st;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    for (unsigned i = 0; i < WRITE_BUFS; i++) {
        uint8_t *b = buf_get();
        if (!b) {
            error_set(ENOMEM, "new pack: out of memory");
            goto fail;
        }
        if (i == 0)
            w->buf = b;
        else
            w->spare[w->nspare++] = b;
    }
    while (got < sizeof rnd) {
        ssize_t n = getrandom(rnd + got, sizeof rnd - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            error_set(errno, "new pack: getrandom: %s", strerror(errno));
            goto fail;
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
    snprintf(w->name, sizeof w->name, "%.2s/%s.pack", hex, hex);
    snprintf(w->key, sizeof w->key, "packs/%s", w->name);
    if (!(w->put = store_put_begin(st, w->key))) {
        error_prefix("new pack: ");
        goto fail;
    }
    if (pthread_create(&w->io, NULL, io_main, w) != 0) {
        error_set(EAGAIN, "new pack: cannot start its writer thread");
        goto fail;
    }
    w->io_started = true;

    pack_encode_file_hdr(hdr);
    if (writer_put(w, hdr, sizeof hdr) < 0)
        goto fail;
    return w;

fail:
    pack_writer_free(w);
    return NULL;
}

int pack_writer_add(struct pack_writer *w, struct pack_entry *e, const void *stored)
{
    uint8_t hdr[PACK_ENTRY_HDR_LEN];

    if (w->finished || w->failed) {
        error_set(w->failed ? w->failed : EINVAL, "write pack %s: %s", w->name,
                  w->failed ? strerror(w->failed) : "already finished");
        return -1;
    }
    if (pack_check_entry(e, EINVAL) < 0) {
        char hex[65];
        chunk_hash_hex(e->hash, hex);
        error_prefix("write pack %s: chunk %s: ", w->name, hex);
        return -1;
    }
    if (w->count == UINT32_MAX) {
        error_set(EFBIG, "write pack %s: too many entries", w->name);
        return -1;
    }
    if (w->count == w->cap) {
        size_t ncap = w->cap ? 2 * w->cap : 256;
        struct pack_entry *n = realloc(w->entries, ncap * sizeof *n);
        if (!n) {
            error_set(ENOMEM, "write pack %s: out of memory", w->name);
            return -1;
        }
        w->entries = n;
        w->cap = ncap;
    }
    e->offset = w->offset;
    pack_encode_entry_hdr(hdr, e);
    /* Copied into the write buffer: one write(2) per MiB costs less CPU
     * than a writev per chunk (measured: ext4 charges each call). */
    if (writer_put(w, hdr, sizeof hdr) < 0 || writer_put(w, stored, e->stored_len) < 0)
        return -1;
    w->entries[w->count++] = *e;
    return 0;
}

/* The size of the pack if it were finished now, index and footer included,
 * so that a caller can compare it with PACK_TARGET_SIZE; once sealed, the
 * size of the file. */
uint64_t pack_writer_size(const struct pack_writer *w)
{
    if (w->finished || w->sealed)
        return w->offset;
    return w->offset + PACK_INDEX_HDR_LEN + (uint64_t)w->count * PACK_INDEX_REC_LEN + PACK_FOOTER_LEN;
}

size_t pack_writer_count(const struct pack_writer *w)
{
    return w->count;
}

const struct pack_entry *pack_writer_entries(const struct pack_writer *w)
{
    return w->entries;
}

/* The end of a pack, once its last byte is written (the I/O thread):
 * 0, or -1 with errno. */
static int finish_file(struct pack_writer *w)
{
    if (store_put_commit(w->put) < 0) {
        errno = error_errno() ? error_errno() : EIO;
        return -1;
    }
    return 0;
}

int pack_writer_seal(struct pack_writer *w, char name[PACK_NAME_MAX], uint64_t *size)
{
    uint8_t rec[PACK_INDEX_REC_LEN];
    uint8_t foot[PACK_FOOTER_LEN];
    uint64_t index_off = w->offset;
    uint32_t crc = 0;

    if (w->finished || w->sealed || w->failed) {
        error_set(w->failed ? w->failed : EINVAL, "write pack %s: %s", w->name,
                  w->failed ? strerror(w->failed) : "already finished");
        return -1;
    }

    pack_encode_index_hdr(rec, (uint32_t)w->count);
    crc = chunk_crc_update(crc, rec, PACK_INDEX_HDR_LEN);
    if (writer_put(w, rec, PACK_INDEX_HDR_LEN) < 0)
        return -1;
    for (size_t i = 0; i < w->count; i++) {
        pack_encode_index_rec(rec, &w->entries[i]);
        crc = chunk_crc_update(crc, rec, sizeof rec);
        if (writer_put(w, rec, sizeof rec) < 0)
            return -1;
    }
    pack_encode_footer(foot, index_off, (uint32_t)w->count, crc);
    if (writer_put(w, foot, sizeof foot) < 0)
        return -1;
    if (w->buf_len && writer_submit(w) < 0)
        return -1;
    /* The I/O thread finishes the file after its last write. */
    pthread_mutex_lock(&w->mu);
    w->seal = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    w->sealed = true;
    memcpy(name, w->name, PACK_NAME_MAX);
    *size = w->offset;
    return 0;
}

int pack_writer_wait(struct pack_writer *w)
{
    int err;

    if (w->finished)
        return 0;
    if (!w->sealed || w->failed) {
        error_set(w->failed ? w->failed : EINVAL, "write pack %s: %s", w->name,
                  w->failed ? strerror(w->failed) : "not sealed");
        return -1;
    }
    writer_stop_io(w);
    pthread_mutex_lock(&w->mu);
    err = w->io_err ? w->io_err : w->sealed_ok ? 0 : EIO;
    pthread_mutex_unlock(&w->mu);
    if (err)
        return writer_fail(w, err);
    w->finished = true;
    return 0;
}

int pack_writer_finish(struct pack_writer *w, char name[PACK_NAME_MAX], uint64_t *size)
{
    if (pack_writer_seal(w, name, size) < 0)
        return -1;
    return pack_writer_wait(w);
}

void pack_writer_free(struct pack_writer *w)
{
    if (!w)
        return;
    writer_stop_io(w);
    /* Abandoned: a sealed pack may already stand under its final name. */
    if (!w->finished && w->sealed_ok) {
        struct error_saved e;
        error_save(&e);
        (void)store_remove(w->st, w->key);
        error_restore(&e);
    }
    store_put_free(w->put);       /* removes what an unfinished put wrote */
    buf_put(w->buf);
    for (unsigned i = 0; i < w->nspare; i++)
        buf_put(w->spare[i]);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w->entries);
    free(w);
}

/* ---- Reading ------------------------------------------------------------ */

struct reader_slot {
    char name[PACK_NAME_MAX];
    struct store_obj *obj;         /* NULL: free */
    uint64_t used;                 /* LRU clock */
};

struct pack_reader {
    bool skip_ids;                /* pack_reader_check_ids(false) */
    struct store *st;
    const struct crypt_keys *keys;
    ZSTD_DCtx *dctx;
    struct reader_slot slots[READER_FDS];
    uint64_t clock;
    uint8_t *buf;
    size_t cap;
};

void pack_reader_check_ids(struct pack_reader *r, bool on)
{
    r->skip_ids = !on;
}

struct pack_reader *pack_reader_open(struct store *st, const struct crypt_keys *keys)
{
    struct pack_reader *r = calloc(1, sizeof *r);

    if (!r) {
        error_set(ENOMEM, "open pack reader: out of memory");
        return NULL;
    }
    r->st = st;
    r->keys = keys;
    r->dctx = ZSTD_createDCtx();
    if (!r->dctx) {
        error_set(ENOMEM, "open pack reader: out of memory");
        free(r);
        return NULL;
    }
    return r;
}

void pack_reader_close(struct pack_reader *r)
{
    if (!r)
        return;
    for (int i = 0; i < READER_FDS; i++)
        store_obj_close(r->slots[i].obj);
    ZSTD_freeDCtx(r->dctx);
    free(r->buf);
    free(r);
}

static struct store_obj *open_pack(struct store *st, const char *name)
{
    char key[PACK_NAME_MAX + 8];

    snprintf(key, sizeof key, "packs/%s", name);
    return store_obj_open(st, key);
}

/* Returns the open pack, from the cache or newly opened into the least
 * recently used slot. */
static struct store_obj *reader_obj(struct pack_reader *r, const char *name)
{
    struct reader_slot *victim = &r->slots[0];
    struct store_obj *o;

    for (int i = 0; i < READER_FDS; i++) {
        struct reader_slot *s = &r->slots[i];
        if (s->obj && strcmp(s->name, name) == 0) {
            s->used = ++r->clock;
            return s->obj;
        }
        if (victim->obj && (!s->obj || s->used < victim->used))
            victim = s;
    }
    o = open_pack(r->st, name);
    if (!o && (error_errno() == EMFILE || error_errno() == ENFILE) && victim->obj) {
        store_obj_close(victim->obj);
        victim->obj = NULL;
        o = open_pack(r->st, name);
    }
    if (!o) {
        if (error_errno() == ENOENT)
            error_set(EIO, "pack %s is missing", name);
        else
            error_prefix("pack %s: ", name);
        return NULL;
    }
    store_obj_close(victim->obj);
    victim->obj = o;
    strcpy(victim->name, name);
    victim->used = ++r->clock;
    return o;
}

/* One chunk's entry read from o and checked into out: 0; -2 when the
 * bytes arrived whole but fail a check (header, CRC or seal, codec, id);
 * -1 on other errors.  The error is set either way. */
static int read_entry(struct pack_reader *r, struct store_obj *o, const char *pack_name,
                      const struct pack_entry *e, const char *hex, void *out)
{
    struct pack_entry got;
    size_t len = PACK_ENTRY_HDR_LEN + (size_t)e->stored_len;
    ssize_t n;

    if (len > r->cap) {
        uint8_t *nb = realloc(r->buf, len);
        if (!nb) {
            error_set(ENOMEM, "pack %s: chunk %s: out of memory", pack_name, hex);
            return -1;
        }
        r->buf = nb;
        r->cap = len;
    }
    n = store_obj_read(o, r->buf, len, e->offset);
    if (n < 0) {
        error_prefix("pack %s: chunk %s: ", pack_name, hex);
        return -1;
    }
    if ((size_t)n < len) {
        error_set(EIO, "pack %s: chunk %s: entry at offset %llu is cut short (truncated pack)",
                  pack_name, hex, (unsigned long long)e->offset);
        return -1;
    }
    if (pack_decode_entry_hdr(r->buf, e->offset, &got) < 0) {
        error_prefix("pack %s: chunk %s: ", pack_name, hex);
        return -2;
    }
    if (memcmp(got.hash, e->hash, PACK_HASH_LEN) != 0 || got.codec != e->codec ||
        got.plain_len != e->plain_len || got.stored_len != e->stored_len ||
        got.crc != e->crc) {
        error_set(EIO, "pack %s: chunk %s: entry at offset %llu does not match the catalog",
                  pack_name, hex, (unsigned long long)e->offset);
        return -2;
    }
    if (chunk_decode_check(r->dctx, r->keys, e->codec, r->buf + PACK_ENTRY_HDR_LEN, e->stored_len,
                           e->crc, out, e->plain_len, e->hash, !r->skip_ids) < 0) {
        error_prefix("pack %s: ", pack_name);
        return error_errno() == ENOMEM || error_errno() == EACCES ? -1 : -2;
    }
    return 0;
}

int pack_reader_get(struct pack_reader *r, const char *pack_name, const struct pack_entry *e,
                    void *out)
{
    char hex[65];
    struct store_obj *o;

    if (check_name(pack_name) < 0)
        return -1;
    chunk_hash_hex(e->hash, hex);
    if (pack_check_entry(e, EINVAL) < 0) {
        error_prefix("pack %s: chunk %s: ", pack_name, hex);
        return -1;
    }
    if (e->offset < PACK_FILE_HDR_LEN || e->offset > (uint64_t)INT64_MAX / 2) {
        error_set(EINVAL, "pack %s: chunk %s: offset %llu is out of range", pack_name, hex,
                  (unsigned long long)e->offset);
        return -1;
    }
    if (!(o = reader_obj(r, pack_name)))
        return -1;
    int rc = read_entry(r, o, pack_name, e, hex, out);
    if (rc == -2 && store_is_remote(r->st)) {
        /* Bytes that fail their check may have been damaged on the way:
         * fetched once more (not from the store's windows) before the
         * chunk is called damaged. */
        log_msg(LOG_LEVEL_WARN, "%s; reading it again from the bucket", error_msg());
        store_obj_forget(o);
        rc = read_entry(r, o, pack_name, e, hex, out);
    }
    return rc < 0 ? -1 : 0;
}

/* ---- Scanning, removing and listing ------------------------------------ */

static ssize_t obj_read(void *opaque, void *buf, size_t len, uint64_t off)
{
    return store_obj_read(opaque, buf, len, off);
}

/* The pack <name> open as a parser's source, named in messages by its
 * display name (shown[PATH_MAX]); NULL with the error set. */
static struct store_obj *open_src(struct store *st, const char *name, char *shown, struct pack_src *src)
{
    struct store_obj *o;

    if (check_name(name) < 0)
        return NULL;
    snprintf(shown, PATH_MAX, "packs/%s", name);
    if (store_display_name(st, shown, shown, PATH_MAX) < 0)
        return NULL;
    if (!(o = open_pack(st, name))) {
        error_prefix("pack %s: ", shown);
        return NULL;
    }
    *src = (struct pack_src){ shown, store_obj_size(o), obj_read, o };
    return o;
}

int pack_scan(struct store *st, const char *name, bool check_ids,
              int (*fn)(void *opaque, const struct pack_entry *e), void *opaque)
{
    char shown[PATH_MAX];
    struct pack_src src;
    struct store_obj *o = open_src(st, name, shown, &src);

    if (!o)
        return -1;
    int r = pack_parse(&src, check_ids, fn, opaque);
    store_obj_close(o);
    return r;
}

int pack_read_index(struct store *st, const char *name, uint64_t *size, struct pack_entry **entries,
                    size_t *count)
{
    char shown[PATH_MAX];
    struct pack_src src;

    *entries = NULL;
    *count = 0;
    *size = UINT64_MAX;
    struct store_obj *o = open_src(st, name, shown, &src);
    if (!o)
        return -1;
    *size = src.size;
    int r = pack_parse_index(&src, entries, count);
    store_obj_close(o);
    return r;
}

int pack_remove(struct store *st, const char *name)
{
    char key[PACK_NAME_MAX + 8];

    if (check_name(name) < 0) {
        error_prefix("remove pack: ");
        return -1;
    }
    snprintf(key, sizeof key, "packs/%s", name);
    if (store_remove(st, key) < 0) {
        error_prefix("remove pack %s: ", name);
        return -1;
    }
    return 0;
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n > m && strcmp(s + n - m, suffix) == 0;
}

struct list_files {
    int (*fn)(void *opaque, const char *name, bool is_temp);
    void *opaque;
};

/* Only what a pack writer names: "xx/<hex>.pack", or ".tmp" for a partial. */
static int list_one(void *opaque, const char *key, uint64_t size, bool partial)
{
    struct list_files *l = opaque;
    const char *name = key + strlen("packs/");
    const char *slash = strchr(name, '/');

    if (!slash || strchr(slash + 1, '/') || strlen(name) >= PACK_NAME_MAX ||
        !has_suffix(name, partial ? ".tmp" : ".pack"))
        return 0;
    return l->fn(l->opaque, name, partial);
}

int pack_list_files(struct store *st, int (*fn)(void *opaque, const char *name, bool is_temp),
                    void *opaque)
{
    struct list_files l = { fn, opaque };

    return store_list(st, "packs/", list_one, &l);
}
