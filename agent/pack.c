/* agent/pack.c: chunk coding (SHA-256 ids, zstd, CRC-32) and pack files.
 *
 * The on-disk layout is described in docs/FORMAT.md, "Packs"; the constants
 * and the encode/decode helpers just below are its only implementation, so
 * keep the two together.  In short (all integers big-endian):
 *
 *   file header  16  "NBDVPACK", version u32 (1), reserved u32 (0)
 *   entry        56  "NBDE", hash[32], codec u8, reserved[3], plain_len u32,
 *                    stored_len u32, crc u32 (of the stored bytes),
 *                    hdr_crc u32 (of the 52 bytes before it)
 *                    followed by stored_len stored bytes
 *   ...
 *   index header  8  "NBDI", count u32
 *   index record 56  hash[32], codec u8, reserved[3], plain_len u32,
 *                    stored_len u32, crc u32, offset u64 (of the entry)
 *   ...
 *   footer       24  index offset u64, count u32, CRC-32 of the index
 *                    (header and records), "NBDVPIDX"
 *
 * A pack can be read from the front, entry by entry, until "NBDI" (this is
 * how a damaged pack is salvaged), or from the back through the footer.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <isa-l/crc.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "agent/pack.h"
#include "common/error.h"

/* ---- Format constants --------------------------------------------------- */

#define PACK_VERSION 1
static const char pack_magic[8] = "NBDVPACK";
static const char footer_magic[8] = "NBDVPIDX";
static const char entry_magic[4] = "NBDE";
static const char index_magic[4] = "NBDI";

#define FILE_HDR_LEN 16
#define ENTRY_HDR_LEN 56
#define INDEX_HDR_LEN 8
#define INDEX_REC_LEN 56
#define FOOTER_LEN 24

/* Largest plain or stored length of one entry; chunks are at most 16 MiB
 * (DESIGN.md §3), this leaves room and bounds what a damaged header can make
 * a reader allocate. */
#define PACK_ENTRY_MAX (64u * 1024 * 1024)

#define WRITE_BUF_SIZE (1024 * 1024)
#define SCAN_BUF_SIZE (1024 * 1024)
#define READER_FDS 32

/* ---- Big-endian helpers ------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) << 32 | get32(p + 4);
}

/* ---- Chunk coding ------------------------------------------------------- */

void chunk_hash(const void *data, size_t len, uint8_t out[PACK_HASH_LEN])
{
    /* Cannot fail for SHA-256 short of a broken library; a zero id would
     * silently merge unrelated chunks, so stop instead. */
    if (gnutls_hash_fast(GNUTLS_DIG_SHA256, data, len, out) < 0)
        abort();
}

void chunk_hash_hex(const uint8_t hash[PACK_HASH_LEN], char out[65])
{
    static const char hex[] = "0123456789abcdef";

    for (int i = 0; i < PACK_HASH_LEN; i++) {
        out[2 * i] = hex[hash[i] >> 4];
        out[2 * i + 1] = hex[hash[i] & 15];
    }
    out[64] = '\0';
}

uint32_t chunk_crc(const void *data, size_t len)
{
    /* ISA-L's reflected CRC-32 is zlib's crc32() (the value packs store),
     * computed with carry-less multiplies: ~14x zlib's speed here. */
    return crc32_gzip_refl(0, data, len);
}

size_t chunk_bound(size_t len)
{
    size_t b = ZSTD_compressBound(len);
    return b > len ? b : len;
}

#define FAST_HASH_LOG 11
#define FAST_HASH_MAX_LEN (128u * 1024)

int chunk_compress(void *cctx, int level, const void *in, size_t len, void *out, size_t cap,
                   const void **stored, size_t *stored_len, uint8_t *codec)
{
    size_t r;

    if (len > PACK_ENTRY_MAX) {
        error_set(EINVAL, "compress %zu bytes: more than the %u bytes a chunk may have", len,
                  PACK_ENTRY_MAX);
        return -1;
    }
    if (cap < chunk_bound(len)) {
        error_set(EINVAL, "compress %zu bytes: output buffer of %zu bytes is too small",
                  len, cap);
        return -1;
    }
    /* Only a result smaller than the input is worth keeping: giving zstd
     * len - 1 bytes of room lets it give up early on incompressible data.
     * Level 1 (the default) on chunks of up to 128 KiB takes a hash table
     * of 2^11 entries instead of zstd's 2^13: 13% less time for 1.6% more
     * bytes on the bench disk's data in 64 KiB chunks (2^12: 5% and 0.6%;
     * 2^10: no faster than 2^11, 3.1% more). */
    if (len > 0) {
        ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
        r = ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
        if (!ZSTD_isError(r) && level == 1 && len <= FAST_HASH_MAX_LEN)
            r = ZSTD_CCtx_setParameter(cctx, ZSTD_c_hashLog, FAST_HASH_LOG);
        if (!ZSTD_isError(r))
            r = ZSTD_compress2(cctx, out, len - 1, in, len);
        if (!ZSTD_isError(r)) {
            *stored = out;
            *stored_len = r;
            *codec = CHUNK_CODEC_ZSTD;
            return 0;
        }
        if (ZSTD_getErrorCode(r) != ZSTD_error_dstSize_tooSmall) {
            error_set(EIO, "compress %zu bytes: zstd: %s", len, ZSTD_getErrorName(r));
            return -1;
        }
    }
    *stored = in;
    *stored_len = len;
    *codec = CHUNK_CODEC_RAW;
    return 0;
}

static int decode(void *dctx, uint8_t codec, const void *stored, size_t stored_len, uint32_t crc,
                  void *out, size_t plain_len, const uint8_t hash[PACK_HASH_LEN], bool check_id)
{
    char hex[65] = "";
    uint8_t got[PACK_HASH_LEN];
    uint32_t c;
    size_t r;

    c = chunk_crc(stored, stored_len);
    if (c != crc || codec > CHUNK_CODEC_ZSTD || (codec == CHUNK_CODEC_RAW && stored_len != plain_len))
        chunk_hash_hex(hash, hex);
    if (c != crc) {
        error_set(EIO, "chunk %s: CRC mismatch (stored bytes have 0x%08x, expected 0x%08x)",
                  hex, c, crc);
        return -1;
    }
    switch (codec) {
    case CHUNK_CODEC_RAW:
        if (stored_len != plain_len) {
            error_set(EIO, "chunk %s: raw chunk of %zu bytes, expected %zu", hex, stored_len,
                      plain_len);
            return -1;
        }
        memcpy(out, stored, plain_len);
        break;
    case CHUNK_CODEC_ZSTD:
        r = ZSTD_decompressDCtx(dctx, out, plain_len, stored, stored_len);
        if (ZSTD_isError(r) || r != plain_len)
            chunk_hash_hex(hash, hex);
        if (ZSTD_isError(r)) {
            error_set(EIO, "chunk %s: does not decompress to %zu bytes: zstd: %s", hex,
                      plain_len, ZSTD_getErrorName(r));
            return -1;
        }
        if (r != plain_len) {
            error_set(EIO, "chunk %s: decompresses to %zu bytes, expected %zu", hex, r,
                      plain_len);
            return -1;
        }
        break;
    default:
        error_set(EIO, "chunk %s: unknown codec %u", hex, codec);
        return -1;
    }
    if (!check_id)
        return 0;
    chunk_hash(out, plain_len, got);
    if (memcmp(got, hash, PACK_HASH_LEN) != 0) {
        chunk_hash_hex(hash, hex);
        error_set(EIO, "chunk %s: content does not match its id", hex);
        return -1;
    }
    return 0;
}

int chunk_decode(void *dctx, uint8_t codec, const void *stored, size_t stored_len, uint32_t crc,
                 void *out, size_t plain_len, const uint8_t hash[PACK_HASH_LEN])
{
    return decode(dctx, codec, stored, stored_len, crc, out, plain_len, hash, true);
}

/* ---- Entry headers and index records ------------------------------------ */

static void encode_entry_hdr(uint8_t *p, const struct pack_entry *e)
{
    memcpy(p, entry_magic, 4);
    memcpy(p + 4, e->hash, PACK_HASH_LEN);
    p[36] = e->codec;
    p[37] = p[38] = p[39] = 0;
    put32(p + 40, e->plain_len);
    put32(p + 44, e->stored_len);
    put32(p + 48, e->crc);
    put32(p + 52, chunk_crc(p, 52));
}

/* Decodes an entry header at file offset off; checks its magic and its own
 * CRC but not its lengths.  Messages start with "entry at offset N". */
static int decode_entry_hdr(const uint8_t *p, uint64_t off, struct pack_entry *e)
{
    if (memcmp(p, entry_magic, 4) != 0) {
        error_set(EIO, "entry at offset %llu: bad magic", (unsigned long long)off);
        return -1;
    }
    if (get32(p + 52) != chunk_crc(p, 52)) {
        error_set(EIO, "entry at offset %llu: header CRC mismatch", (unsigned long long)off);
        return -1;
    }
    memcpy(e->hash, p + 4, PACK_HASH_LEN);
    e->codec = p[36];
    e->plain_len = get32(p + 40);
    e->stored_len = get32(p + 44);
    e->crc = get32(p + 48);
    e->offset = off;
    return 0;
}

/* Checks what a pack of version 1 allows of an entry's fields; errnum:
 * EINVAL for a caller's argument, EIO for what was read from a file. */
static int check_entry_fields(const struct pack_entry *e, int errnum)
{
    if (e->codec != CHUNK_CODEC_RAW && e->codec != CHUNK_CODEC_ZSTD) {
        error_set(errnum, "unknown codec %u", e->codec);
        return -1;
    }
    if (e->plain_len > PACK_ENTRY_MAX || e->stored_len > PACK_ENTRY_MAX) {
        error_set(errnum, "stored/plain lengths %u/%u exceed the limit of %u bytes",
                  e->stored_len, e->plain_len, PACK_ENTRY_MAX);
        return -1;
    }
    if (e->codec == CHUNK_CODEC_RAW && e->stored_len != e->plain_len) {
        error_set(errnum, "raw entry of %u stored bytes for %u plain bytes", e->stored_len,
                  e->plain_len);
        return -1;
    }
    return 0;
}

static void encode_index_rec(uint8_t *p, const struct pack_entry *e)
{
    memcpy(p, e->hash, PACK_HASH_LEN);
    p[32] = e->codec;
    p[33] = p[34] = p[35] = 0;
    put32(p + 36, e->plain_len);
    put32(p + 40, e->stored_len);
    put32(p + 44, e->crc);
    put64(p + 48, e->offset);
}

static void decode_index_rec(const uint8_t *p, struct pack_entry *e)
{
    memcpy(e->hash, p, PACK_HASH_LEN);
    e->codec = p[32];
    e->plain_len = get32(p + 36);
    e->stored_len = get32(p + 40);
    e->crc = get32(p + 44);
    e->offset = get64(p + 48);
}

static bool entry_equal(const struct pack_entry *a, const struct pack_entry *b)
{
    return memcmp(a->hash, b->hash, PACK_HASH_LEN) == 0 && a->codec == b->codec &&
           a->plain_len == b->plain_len && a->stored_len == b->stored_len && a->crc == b->crc &&
           a->offset == b->offset;
}

/* ---- Small file helpers ------------------------------------------------- */

/* Reads up to len bytes at off; returns the count (short only at the end
 * of the file) or -1 with errno. */
static ssize_t pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    size_t done = 0;

    while (done < len) {
        ssize_t n = pread(fd, p + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int r;

    if (fd < 0)
        return -1;
    r = fsync(fd);
    if (r < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    close(fd);
    return 0;
}

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

static int join(char *out, size_t cap, const char *a, const char *b)
{
    int n = snprintf(out, cap, "%s/%s", a, b);

    if (n < 0 || (size_t)n >= cap) {
        error_set(ENAMETOOLONG, "path %s/%s is too long", a, b);
        return -1;
    }
    return 0;
}

/* ---- Writing ------------------------------------------------------------ */

/* A pack is written through a thread of its own, from 1 MiB buffers: the
 * workers that add chunks (under the caller's store lock) only copy into
 * the buffer being filled, and never wait for the disk.  The file is
 * opened with O_DIRECT where the file system takes it: the data goes from
 * the buffer to the device without a copy into the page cache (ext4's
 * buffered write was 12% of an incremental backup's CPU), and a backup does
 * not push the host's cached data out with its packs.  Direct writes are
 * whole aligned buffers; the last one is padded to DIO_ALIGN and the file
 * truncated to its size.  Elsewhere (or when a direct write is refused
 * with EINVAL) the writes are buffered, with writeback started every few
 * MiB so that the fsync at the end finds little left to write (measured: a
 * 32 MiB pack's fsync 17 ms -> 0.3 ms). */

#define WRITE_BUFS 2                   /* per writer: one filling, one on its way */
#define DIO_ALIGN 4096
#define WRITEBACK_EVERY (4u * 1024 * 1024)
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

static bool direct_io = true;

void pack_writer_direct_io(bool on)
{
    direct_io = on;
}

struct wjob {
    uint8_t *buf;
    size_t len;                    /* bytes of the file in buf */
    uint64_t off;                  /* where they go */
};

struct pack_writer {
    char packs_dir[PATH_MAX];      /* repo_dir/packs */
    char sub_dir[PATH_MAX];        /* repo_dir/packs/xx */
    char tmp_path[PATH_MAX];       /* .../xx/<hex>.tmp */
    char final_path[PATH_MAX];     /* .../xx/<hex>.pack */
    char name[PACK_NAME_MAX];      /* xx/<hex>.pack, for messages */
    char repo_dir[PATH_MAX];
    bool new_packs_dir;            /* created by this writer: sync repo_dir */
    int fd;                        /* -1 once closed */
    bool tmp_created;              /* tmp_path is ours to remove */
    bool finished;
    int failed;                    /* errno of an earlier write failure, or 0 */

    uint8_t *buf;                  /* the buffer being filled */
    size_t buf_len;
    uint64_t buf_off;              /* file offset of buf[0] */
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
    bool seal;                     /* finish the file once everything is written */
    bool sealed_ok;                /* ... and it was: durable under its final name */
    int io_err;                    /* first write error */
    bool direct;                   /* O_DIRECT (the I/O thread may drop it) */
    uint64_t unsynced;             /* buffered: bytes since writeback was started */

    struct pack_entry *entries;
    size_t count, cap;
};

/* Makes dir; *created tells whether it is new. */
static int make_dir(const char *dir, bool *created)
{
    *created = false;
    if (mkdir(dir, 0700) == 0) {
        *created = true;
        return 0;
    }
    if (errno == EEXIST)
        return 0;
    error_set(errno, "create %s: %s", dir, strerror(errno));
    return -1;
}

static int writer_fail(struct pack_writer *w, int err)
{
    w->failed = err;
    error_set(err, "write pack %s: %s", w->name, strerror(err));
    return -1;
}

static int pwrite_full(int fd, const uint8_t *p, size_t len, uint64_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO;
            return -1;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

/* Writes one job (the I/O thread, without mu). */
static int write_job(struct pack_writer *w, const struct wjob *j)
{
    if (w->direct) {
        size_t padded = (j->len + DIO_ALIGN - 1) & ~(size_t)(DIO_ALIGN - 1);
        memset(j->buf + j->len, 0, padded - j->len);
        if (pwrite_full(w->fd, j->buf, padded, j->off) == 0)
            return 0;
        if (errno != EINVAL)
            return -1;
        /* Refused after all (an alignment this device wants, say):
         * buffered from here on. */
        int fl = fcntl(w->fd, F_GETFL);
        if (fl < 0 || fcntl(w->fd, F_SETFL, fl & ~O_DIRECT) < 0)
            return -1;
        w->direct = false;
    }
    if (pwrite_full(w->fd, j->buf, j->len, j->off) < 0)
        return -1;
    w->unsynced += j->len;
    if (w->unsynced >= WRITEBACK_EVERY) {
        /* Only a hint: a failure shows up again at the fsync. */
        (void)sync_file_range(w->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        w->unsynced = 0;
    }
    return 0;
}

static int finish_file(struct pack_writer *w);

static void *io_main(void *opaque)
{
    struct pack_writer *w = opaque;

    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->njobs && !w->stop && !w->seal)
            pthread_cond_wait(&w->cv, &w->mu);
        if (!w->njobs && w->seal) {
            int err = w->io_err;
            pthread_mutex_unlock(&w->mu);
            if (!err && finish_file(w) < 0)
                err = errno;
            pthread_mutex_lock(&w->mu);
            if (err && !w->io_err)
                w->io_err = err;
            w->sealed_ok = !err;
            break;
        }
        if (!w->njobs)
            break;
        struct wjob j = w->jobs[0];
        w->busy = true;
        int err = w->io_err;
        pthread_mutex_unlock(&w->mu);
        if (!err && write_job(w, &j) < 0)
            err = errno;
        pthread_mutex_lock(&w->mu);
        if (err && !w->io_err)
            w->io_err = err;
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

struct pack_writer *pack_writer_open(const char *repo_dir)
{
    struct pack_writer *w;
    uint8_t rnd[16];
    char hex[33];
    uint8_t hdr[FILE_HDR_LEN];
    size_t got = 0;
    bool new_sub;

    w = calloc(1, sizeof *w);
    if (!w) {
        error_set(ENOMEM, "new pack: out of memory");
        return NULL;
    }
    w->fd = -1;
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

    if (strlen(repo_dir) >= sizeof w->repo_dir) {
        error_set(ENAMETOOLONG, "new pack: path %s is too long", repo_dir);
        goto fail;
    }
    strcpy(w->repo_dir, repo_dir);
    if (join(w->packs_dir, sizeof w->packs_dir, repo_dir, "packs") < 0 ||
        snprintf(w->sub_dir, sizeof w->sub_dir, "%s/%.2s", w->packs_dir, hex) >=
            (int)sizeof w->sub_dir ||
        snprintf(w->tmp_path, sizeof w->tmp_path, "%s/%s.tmp", w->sub_dir, hex) >=
            (int)sizeof w->tmp_path ||
        snprintf(w->final_path, sizeof w->final_path, "%s/%s.pack", w->sub_dir, hex) >=
            (int)sizeof w->final_path) {
        error_set(ENAMETOOLONG, "new pack: path %s is too long", repo_dir);
        goto fail;
    }
    if (make_dir(w->packs_dir, &w->new_packs_dir) < 0 || make_dir(w->sub_dir, &new_sub) < 0) {
        error_prefix("new pack: ");
        goto fail;
    }
    w->fd = open(w->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (w->fd < 0) {
        error_set(errno, "new pack: create %s: %s", w->tmp_path, strerror(errno));
        goto fail;
    }
    w->tmp_created = true;
    int fl = fcntl(w->fd, F_GETFL);
    w->direct = direct_io && fl >= 0 && fcntl(w->fd, F_SETFL, fl | O_DIRECT) == 0;
    if (pthread_create(&w->io, NULL, io_main, w) != 0) {
        error_set(EAGAIN, "new pack: cannot start its writer thread");
        goto fail;
    }
    w->io_started = true;

    memcpy(hdr, pack_magic, 8);
    put32(hdr + 8, PACK_VERSION);
    put32(hdr + 12, 0);
    if (writer_put(w, hdr, sizeof hdr) < 0)
        goto fail;
    return w;

fail:
    pack_writer_free(w);
    return NULL;
}

int pack_writer_add(struct pack_writer *w, struct pack_entry *e, const void *stored)
{
    uint8_t hdr[ENTRY_HDR_LEN];

    if (w->finished || w->failed) {
        error_set(w->failed ? w->failed : EINVAL, "write pack %s: %s", w->name,
                  w->failed ? strerror(w->failed) : "already finished");
        return -1;
    }
    if (check_entry_fields(e, EINVAL) < 0) {
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
    encode_entry_hdr(hdr, e);
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
    return w->offset + INDEX_HDR_LEN + (uint64_t)w->count * INDEX_REC_LEN + FOOTER_LEN;
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
    int fd;

    /* Direct writes padded the last block. */
    if (ftruncate(w->fd, (off_t)w->offset) < 0 || fsync(w->fd) < 0)
        return -1;
    fd = w->fd;
    w->fd = -1;
    if (close(fd) < 0 || rename(w->tmp_path, w->final_path) < 0)
        return -1;
    /* From here the final name exists: on failure, take it back so that no
     * pack that is not known to be durable is left under its final name.
     * packs/ is synced even when this writer did not create xx/: another
     * writer may have created it and not synced it yet. */
    if (fsync_dir(w->sub_dir) < 0 || fsync_dir(w->packs_dir) < 0 ||
        (w->new_packs_dir && fsync_dir(w->repo_dir) < 0)) {
        int err = errno;
        unlink(w->final_path);
        errno = err;
        return -1;
    }
    return 0;
}

int pack_writer_seal(struct pack_writer *w, char name[PACK_NAME_MAX], uint64_t *size)
{
    uint8_t rec[INDEX_REC_LEN];
    uint8_t foot[FOOTER_LEN];
    uint64_t index_off = w->offset;
    uint32_t crc = 0;

    if (w->finished || w->sealed || w->failed) {
        error_set(w->failed ? w->failed : EINVAL, "write pack %s: %s", w->name,
                  w->failed ? strerror(w->failed) : "already finished");
        return -1;
    }

    memcpy(rec, index_magic, 4);
    put32(rec + 4, (uint32_t)w->count);
    crc = crc32_gzip_refl(crc, rec, INDEX_HDR_LEN);
    if (writer_put(w, rec, INDEX_HDR_LEN) < 0)
        return -1;
    for (size_t i = 0; i < w->count; i++) {
        encode_index_rec(rec, &w->entries[i]);
        crc = crc32_gzip_refl(crc, rec, sizeof rec);
        if (writer_put(w, rec, sizeof rec) < 0)
            return -1;
    }
    put64(foot, index_off);
    put32(foot + 8, (uint32_t)w->count);
    put32(foot + 12, (uint32_t)crc);
    memcpy(foot + 16, footer_magic, 8);
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
    if (w->fd >= 0)
        close(w->fd);
    /* Abandoned: a sealed pack may already stand under its final name. */
    if (!w->finished && w->sealed_ok)
        unlink(w->final_path);
    else if (!w->finished && w->tmp_created)
        unlink(w->tmp_path);
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
    int fd;                        /* -1: free */
    uint64_t used;                 /* LRU clock */
};

struct pack_reader {
    bool skip_ids;                /* pack_reader_check_ids(false) */
    char packs_dir[PATH_MAX];
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

struct pack_reader *pack_reader_open(const char *repo_dir)
{
    struct pack_reader *r = calloc(1, sizeof *r);

    if (!r) {
        error_set(ENOMEM, "open pack reader: out of memory");
        return NULL;
    }
    for (int i = 0; i < READER_FDS; i++)
        r->slots[i].fd = -1;
    if (join(r->packs_dir, sizeof r->packs_dir, repo_dir, "packs") < 0) {
        free(r);
        return NULL;
    }
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
        if (r->slots[i].fd >= 0)
            close(r->slots[i].fd);
    ZSTD_freeDCtx(r->dctx);
    free(r->buf);
    free(r);
}

/* Returns an open fd for the pack, from the cache or newly opened into the
 * least recently used slot. */
static int reader_fd(struct pack_reader *r, const char *name)
{
    struct reader_slot *victim = &r->slots[0];
    char path[PATH_MAX];
    int fd;

    for (int i = 0; i < READER_FDS; i++) {
        struct reader_slot *s = &r->slots[i];
        if (s->fd >= 0 && strcmp(s->name, name) == 0) {
            s->used = ++r->clock;
            return s->fd;
        }
        if (victim->fd >= 0 && (s->fd < 0 || s->used < victim->used))
            victim = s;
    }
    if (join(path, sizeof path, r->packs_dir, name) < 0)
        return -1;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE) && victim->fd >= 0) {
        close(victim->fd);
        victim->fd = -1;
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) {
        if (errno == ENOENT)
            error_set(EIO, "pack %s is missing", name);
        else
            error_set(errno, "pack %s: open: %s", name, strerror(errno));
        return -1;
    }
    if (victim->fd >= 0)
        close(victim->fd);
    victim->fd = fd;
    strcpy(victim->name, name);
    victim->used = ++r->clock;
    return fd;
}

int pack_reader_get(struct pack_reader *r, const char *pack_name, const struct pack_entry *e,
                    void *out)
{
    struct pack_entry got;
    char hex[65];
    size_t len;
    ssize_t n;
    int fd;

    if (check_name(pack_name) < 0)
        return -1;
    chunk_hash_hex(e->hash, hex);
    if (check_entry_fields(e, EINVAL) < 0) {
        error_prefix("pack %s: chunk %s: ", pack_name, hex);
        return -1;
    }
    if (e->offset < FILE_HDR_LEN || e->offset > (uint64_t)INT64_MAX / 2) {
        error_set(EINVAL, "pack %s: chunk %s: offset %llu is out of range", pack_name, hex,
                  (unsigned long long)e->offset);
        return -1;
    }
    fd = reader_fd(r, pack_name);
    if (fd < 0)
        return -1;

    len = ENTRY_HDR_LEN + (size_t)e->stored_len;
    if (len > r->cap) {
        uint8_t *nb = realloc(r->buf, len);
        if (!nb) {
            error_set(ENOMEM, "pack %s: chunk %s: out of memory", pack_name, hex);
            return -1;
        }
        r->buf = nb;
        r->cap = len;
    }
    n = pread_full(fd, r->buf, len, e->offset);
    if (n < 0) {
        error_set(errno, "pack %s: chunk %s: read at offset %llu: %s", pack_name, hex,
                  (unsigned long long)e->offset, strerror(errno));
        return -1;
    }
    if ((size_t)n < len) {
        error_set(EIO, "pack %s: chunk %s: entry at offset %llu is cut short (truncated pack)",
                  pack_name, hex, (unsigned long long)e->offset);
        return -1;
    }
    if (decode_entry_hdr(r->buf, e->offset, &got) < 0) {
        error_prefix("pack %s: chunk %s: ", pack_name, hex);
        return -1;
    }
    if (memcmp(got.hash, e->hash, PACK_HASH_LEN) != 0 || got.codec != e->codec ||
        got.plain_len != e->plain_len || got.stored_len != e->stored_len ||
        got.crc != e->crc) {
        error_set(EIO, "pack %s: chunk %s: entry at offset %llu does not match the catalog",
                  pack_name, hex, (unsigned long long)e->offset);
        return -1;
    }
    if (decode(r->dctx, e->codec, r->buf + ENTRY_HDR_LEN, e->stored_len, e->crc, out,
               e->plain_len, e->hash, !r->skip_ids) < 0) {
        error_prefix("pack %s: ", pack_name);
        return -1;
    }
    return 0;
}

/* ---- Scanning ----------------------------------------------------------- */

/* Sequential reads through a window of the file. */
struct scan {
    const char *path;
    int fd;
    uint64_t size;
    uint8_t *buf;
    size_t cap;
    uint64_t win_off;
    size_t win_len;
};

/* Returns len bytes at off, or NULL: truncated (off + len beyond the end of
 * the file, *short_read set) or a read error (message set). */
static const uint8_t *scan_at(struct scan *s, uint64_t off, size_t len, bool *short_read)
{
    ssize_t n;

    *short_read = false;
    if (off > s->size || len > s->size - off) {
        *short_read = true;
        return NULL;
    }
    if (off >= s->win_off && off + len <= s->win_off + s->win_len)
        return s->buf + (off - s->win_off);
    if (len > s->cap) {
        uint8_t *nb = realloc(s->buf, len);
        if (!nb) {
            error_set(ENOMEM, "pack %s: out of memory", s->path);
            return NULL;
        }
        s->buf = nb;
        s->cap = len;
    }
    n = pread_full(s->fd, s->buf, s->cap, off);
    if (n < 0) {
        error_set(errno, "pack %s: read at offset %llu: %s", s->path,
                  (unsigned long long)off, strerror(errno));
        return NULL;
    }
    s->win_off = off;
    s->win_len = (size_t)n;
    if ((size_t)n < len) {         /* the file shrank under us */
        *short_read = true;
        return NULL;
    }
    return s->buf;
}

/* Reads len bytes at off for what; a short file is reported as truncated. */
static const uint8_t *scan_need(struct scan *s, uint64_t off, size_t len, const char *what)
{
    bool short_read;
    const uint8_t *p = scan_at(s, off, len, &short_read);

    if (!p && short_read)
        error_set(EIO, "pack %s: truncated at offset %llu (%s at offset %llu needs %zu bytes)",
                  s->path, (unsigned long long)s->size, what, (unsigned long long)off, len);
    return p;
}

static int scan_body(struct scan *s, bool check_ids,
                     int (*fn)(void *opaque, const struct pack_entry *e), void *opaque,
                     struct pack_entry **entries, ZSTD_DCtx **dctx, uint8_t **plain)
{
    const uint8_t *p;
    uint64_t off, index_off = 0, end;
    bool have_footer = false, short_read;
    size_t count = 0, cap = 0, plain_cap = 0;
    uint32_t n_index;
    uint32_t crc;

    p = scan_need(s, 0, FILE_HDR_LEN, "file header");
    if (!p)
        return -1;
    if (memcmp(p, pack_magic, 8) != 0) {
        error_set(EIO, "pack %s: not a pack file (bad magic)", s->path);
        return -1;
    }
    if (get32(p + 8) != PACK_VERSION) {
        error_set(EIO, "pack %s: unsupported version %u", s->path, get32(p + 8));
        return -1;
    }
    if (get32(p + 12) != 0) {
        error_set(EIO, "pack %s: reserved header field is not zero", s->path);
        return -1;
    }

    /* The footer, when it looks whole, says where the index starts: that
     * tells a damaged index header from a damaged entry.  The walk still
     * stops at an "NBDI" where an entry should start, and the footer is
     * checked in full after it. */
    if (s->size >= FILE_HDR_LEN + INDEX_HDR_LEN + FOOTER_LEN) {
        p = scan_at(s, s->size - FOOTER_LEN, FOOTER_LEN, &short_read);
        if (!p && !short_read)
            return -1;
        if (p && memcmp(p + 16, footer_magic, 8) == 0) {
            index_off = get64(p);
            have_footer = index_off >= FILE_HDR_LEN &&
                          index_off <= s->size - FOOTER_LEN - INDEX_HDR_LEN;
        }
    }

    /* Entries, from the front. */
    off = FILE_HDR_LEN;
    for (;;) {
        struct pack_entry e;

        if (have_footer && off == index_off)
            break;
        if (off == s->size) {
            error_set(EIO, "pack %s: truncated at offset %llu (no index)", s->path,
                      (unsigned long long)off);
            return -1;
        }
        p = scan_need(s, off, 4, "entry");
        if (!p)
            return -1;
        if (memcmp(p, index_magic, 4) == 0)
            break;
        p = scan_need(s, off, ENTRY_HDR_LEN, "entry header");
        if (!p)
            return -1;
        if (decode_entry_hdr(p, off, &e) < 0) {
            error_prefix("pack %s: ", s->path);
            return -1;
        }
        if (check_entry_fields(&e, EIO) < 0) {
            error_prefix("pack %s: entry at offset %llu: ", s->path, (unsigned long long)off);
            return -1;
        }
        end = off + ENTRY_HDR_LEN + e.stored_len;
        if (have_footer && end > index_off) {
            error_set(EIO, "pack %s: entry at offset %llu runs past offset %llu, where the "
                      "footer says the index starts", s->path, (unsigned long long)off,
                      (unsigned long long)index_off);
            return -1;
        }
        p = scan_need(s, off + ENTRY_HDR_LEN, e.stored_len, "entry data");
        if (!p)
            return -1;
        if (chunk_crc(p, e.stored_len) != e.crc) {
            error_set(EIO, "pack %s: entry at offset %llu: CRC mismatch", s->path,
                      (unsigned long long)off);
            return -1;
        }
        if (check_ids) {
            if (!*dctx && !(*dctx = ZSTD_createDCtx())) {
                error_set(ENOMEM, "pack %s: out of memory", s->path);
                return -1;
            }
            if (e.plain_len > plain_cap || !*plain) {
                uint8_t *nb = realloc(*plain, e.plain_len ? e.plain_len : 1);
                if (!nb) {
                    error_set(ENOMEM, "pack %s: out of memory", s->path);
                    return -1;
                }
                *plain = nb;
                plain_cap = e.plain_len;
            }
            if (chunk_decode(*dctx, e.codec, p, e.stored_len, e.crc, *plain, e.plain_len,
                             e.hash) < 0) {
                error_prefix("pack %s: entry at offset %llu: ", s->path,
                             (unsigned long long)off);
                return -1;
            }
        }
        if (count == cap) {
            size_t ncap = cap ? 2 * cap : 256;
            struct pack_entry *nb = realloc(*entries, ncap * sizeof *nb);
            if (!nb) {
                error_set(ENOMEM, "pack %s: out of memory", s->path);
                return -1;
            }
            *entries = nb;
            cap = ncap;
        }
        (*entries)[count++] = e;
        if (fn) {
            int r = fn(opaque, &e);
            if (r != 0)
                return r;
        }
        off = end;
    }

    /* The index: its header, then one record per entry, then the footer,
     * which must end the file. */
    index_off = off;
    p = scan_need(s, index_off, INDEX_HDR_LEN, "index header");
    if (!p)
        return -1;
    if (memcmp(p, index_magic, 4) != 0) {
        error_set(EIO, "pack %s: index at offset %llu: bad magic", s->path,
                  (unsigned long long)index_off);
        return -1;
    }
    n_index = get32(p + 4);
    crc = crc32_gzip_refl(0, p, INDEX_HDR_LEN);
    if (n_index != count) {
        error_set(EIO, "pack %s: index at offset %llu lists %u entries, the pack holds %zu",
                  s->path, (unsigned long long)index_off, n_index, count);
        return -1;
    }
    end = index_off + INDEX_HDR_LEN + (uint64_t)count * INDEX_REC_LEN + FOOTER_LEN;
    if (end > s->size) {
        error_set(EIO, "pack %s: truncated at offset %llu (the index at offset %llu and "
                  "footer need %llu bytes)", s->path, (unsigned long long)s->size,
                  (unsigned long long)index_off, (unsigned long long)(end - index_off));
        return -1;
    }
    if (end < s->size) {
        error_set(EIO, "pack %s: %llu unexpected bytes after the footer at offset %llu",
                  s->path, (unsigned long long)(s->size - end),
                  (unsigned long long)(end - FOOTER_LEN));
        return -1;
    }
    off = index_off + INDEX_HDR_LEN;
    for (size_t i = 0; i < count; i++, off += INDEX_REC_LEN) {
        struct pack_entry rec;

        p = scan_need(s, off, INDEX_REC_LEN, "index record");
        if (!p)
            return -1;
        crc = crc32_gzip_refl(crc, p, INDEX_REC_LEN);
        decode_index_rec(p, &rec);
        if (p[33] != 0 || p[34] != 0 || p[35] != 0 || !entry_equal(&rec, &(*entries)[i])) {
            error_set(EIO, "pack %s: index record %zu at offset %llu does not match the "
                      "entry at offset %llu", s->path, i, (unsigned long long)off,
                      (unsigned long long)(*entries)[i].offset);
            return -1;
        }
    }
    p = scan_need(s, off, FOOTER_LEN, "footer");
    if (!p)
        return -1;
    if (memcmp(p + 16, footer_magic, 8) != 0) {
        error_set(EIO, "pack %s: footer at offset %llu: bad magic", s->path,
                  (unsigned long long)off);
        return -1;
    }
    if (get64(p) != index_off || get32(p + 8) != count) {
        error_set(EIO, "pack %s: footer at offset %llu: index offset %llu and count %u, "
                  "expected %llu and %zu", s->path, (unsigned long long)off,
                  (unsigned long long)get64(p), get32(p + 8), (unsigned long long)index_off,
                  count);
        return -1;
    }
    if (get32(p + 12) != (uint32_t)crc) {
        error_set(EIO, "pack %s: index CRC mismatch", s->path);
        return -1;
    }
    return 0;
}

/* fn sees each entry as soon as the entry itself checks out (framing, CRC,
 * id), before the trailer is checked: a salvage can keep the entries seen
 * before a failure.  A nonzero return from fn stops the scan and is
 * returned, with fn's message. */
int pack_scan(const char *path, bool check_ids,
              int (*fn)(void *opaque, const struct pack_entry *e), void *opaque)
{
    struct scan s = { .path = path, .fd = -1 };
    struct pack_entry *entries = NULL;
    ZSTD_DCtx *dctx = NULL;
    uint8_t *plain = NULL;
    struct stat st;
    int r = -1;

    s.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (s.fd < 0) {
        error_set(errno, "pack %s: open: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(s.fd, &st) < 0) {
        error_set(errno, "pack %s: stat: %s", path, strerror(errno));
        goto out;
    }
    s.size = (uint64_t)st.st_size;
    s.cap = SCAN_BUF_SIZE;
    s.buf = malloc(s.cap);
    if (!s.buf) {
        error_set(ENOMEM, "pack %s: out of memory", path);
        goto out;
    }
    r = scan_body(&s, check_ids, fn, opaque, &entries, &dctx, &plain);
out:
    close(s.fd);
    free(s.buf);
    free(entries);
    free(plain);
    ZSTD_freeDCtx(dctx);
    return r;
}

/* ---- Removing and listing ----------------------------------------------- */

int pack_remove(const char *repo_dir, const char *name)
{
    char path[PATH_MAX], dir[PATH_MAX];
    char *slash;

    if (check_name(name) < 0) {
        error_prefix("remove pack: ");
        return -1;
    }
    if (snprintf(path, sizeof path, "%s/packs/%s", repo_dir, name) >= (int)sizeof path) {
        error_set(ENAMETOOLONG, "remove pack %s: path is too long", name);
        return -1;
    }
    if (unlink(path) < 0) {
        error_set(errno, "remove pack %s: %s", name, strerror(errno));
        return -1;
    }
    strcpy(dir, path);
    slash = strrchr(dir, '/');
    *slash = '\0';
    if (fsync_dir(dir) < 0) {
        error_set(errno, "remove pack %s: fsync %s: %s", name, dir, strerror(errno));
        return -1;
    }
    return 0;
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n > m && strcmp(s + n - m, suffix) == 0;
}

static int not_dot(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

/* Sorted by name; a repository with no packs/ yet lists nothing.  A nonzero
 * return from fn stops the walk and is returned. */
int pack_list_files(const char *repo_dir, int (*fn)(void *opaque, const char *name, bool is_temp),
                    void *opaque)
{
    char packs[PATH_MAX], sub[PATH_MAX], name[PACK_NAME_MAX];
    struct dirent **subs = NULL, **files = NULL;
    int nsubs, nfiles = 0, r = 0;

    if (join(packs, sizeof packs, repo_dir, "packs") < 0)
        return -1;
    /* Sorted, so that listings and what is built from them are stable. */
    nsubs = scandir(packs, &subs, not_dot, alphasort);
    if (nsubs < 0) {
        if (errno == ENOENT)       /* no pack written yet */
            return 0;
        error_set(errno, "list packs: %s: %s", packs, strerror(errno));
        return -1;
    }
    for (int i = 0; i < nsubs && r == 0; i++) {
        if (join(sub, sizeof sub, packs, subs[i]->d_name) < 0) {
            r = -1;
            break;
        }
        nfiles = scandir(sub, &files, not_dot, alphasort);
        if (nfiles < 0) {
            if (errno == ENOTDIR)  /* a stray file in packs/ */
                continue;
            error_set(errno, "list packs: %s: %s", sub, strerror(errno));
            r = -1;
            break;
        }
        for (int j = 0; j < nfiles && r == 0; j++) {
            const char *f = files[j]->d_name;
            bool is_temp = has_suffix(f, ".tmp");
            int n;

            if (!is_temp && !has_suffix(f, ".pack"))
                continue;
            n = snprintf(name, sizeof name, "%s/%s", subs[i]->d_name, f);
            if (n < 0 || (size_t)n >= sizeof name)
                continue;          /* not a name this code writes */
            r = fn(opaque, name, is_temp);
        }
        for (int j = 0; j < nfiles; j++)
            free(files[j]);
        free(files);
        files = NULL;
    }
    for (int i = 0; i < nsubs; i++)
        free(subs[i]);
    free(subs);
    return r;
}
