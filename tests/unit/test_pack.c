/* test_pack.c: chunk coding and pack files (agent/pack.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zstd.h>

#include "agent/pack.h"
#include "common/error.h"
#include "store/store.h"

#define UNUSED __attribute__((unused))

/* ---- Data --------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

static void fill_random(uint8_t *buf, size_t len, uint64_t seed)
{
    uint64_t s = seed * 2654435761u + 1;

    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(rng_next(&s) >> 56);
}

/* Words from a small vocabulary: compresses well, like text. */
static void fill_text(uint8_t *buf, size_t len, uint64_t seed)
{
    static const char *words[] = {
        "the", "disk", "chunk", "backup", "restore", "point", "pack", "zstd", "catalog",
        "block", "server", "export", "bitmap", "dirty", "qemu", "and", "of", "to", "a",
    };
    uint64_t s = seed * 2654435761u + 7;
    size_t i = 0;

    while (i < len) {
        const char *w = words[rng_next(&s) % (sizeof words / sizeof words[0])];
        for (size_t j = 0; w[j] && i < len; j++)
            buf[i++] = (uint8_t)w[j];
        if (i < len)
            buf[i++] = rng_next(&s) % 11 == 0 ? '\n' : ' ';
    }
}

/* ---- Fixture: a temporary repository ------------------------------------ */

struct fx {
    char dir[64];
    struct store *st;
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);

    assert_non_null(f);
    strcpy(f->dir, "/tmp/test_pack.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->st = store_open(f->dir);
    assert_non_null(f->st);
    f->cctx = ZSTD_createCCtx();
    f->dctx = ZSTD_createDCtx();
    assert_non_null(f->cctx);
    assert_non_null(f->dctx);
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

    nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    store_close(f->st);
    ZSTD_freeCCtx(f->cctx);
    ZSTD_freeDCtx(f->dctx);
    free(f);
    return 0;
}

/* r must be -1 with errno err and a message holding each of the words
 * (NULL-terminated). */
static void expect_error(int r, int err, ...)
{
    va_list ap;
    const char *w;

    if (r != -1)
        fail_msg("expected a failure, got %d", r);
    if (error_errno() != err)
        fail_msg("errno %d (%s), expected %d; message \"%s\"", error_errno(),
                 strerror(error_errno()), err, error_msg());
    va_start(ap, err);
    while ((w = va_arg(ap, const char *)))
        if (!strstr(error_msg(), w))
            fail_msg("error \"%s\" does not mention \"%s\"", error_msg(), w);
    va_end(ap);
}

/* pack_parse over a file, named by its path: the parser on damage that the
 * tests make with truncate(2) and flipped bytes. */
static ssize_t file_read(void *opaque, void *buf, size_t len, uint64_t off)
{
    ssize_t n = pread(*(int *)opaque, buf, len, (off_t)off);
    if (n < 0)
        error_set(errno, "read: %s", strerror(errno));
    return n;
}

static int scan_file(const char *path, bool check_ids,
                     int (*fn)(void *opaque, const struct pack_entry *e), void *opaque)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    int r;

    if (fd < 0) {
        error_set(errno, "pack %s: open: %s", path, strerror(errno));
        return -1;
    }
    assert_int_equal(fstat(fd, &st), 0);
    struct pack_src src = { path, (uint64_t)st.st_size, file_read, &fd };
    r = pack_parse(&src, check_ids, fn, opaque);
    close(fd);
    return r;
}

/* ---- A written pack ----------------------------------------------------- */

struct chunk {
    uint8_t *plain;
    size_t len;
};

struct written {
    char name[PACK_NAME_MAX];
    char path[256];
    uint64_t size;
    size_t n;
    struct pack_entry *e;
    struct chunk *c;
};

/* The size of chunk i of a test pack, and its kind: text, random, or the
 * odd ones (empty, one byte, larger than the writer's buffer). */
static size_t chunk_len(size_t i)
{
    if (i == 5)
        return 0;
    if (i == 6)
        return 1;
    if (i == 9)
        return 3 * 1024 * 1024 / 2;
    return 4096 + (i * 7919) % 65536;
}

/* Compresses plain and fills e (not its offset). */
static void make_entry(struct fx *f, const uint8_t *plain, size_t len, struct pack_entry *e,
                       uint8_t **stored)
{
    size_t stored_len;

    memset(e, 0, sizeof *e);
    *stored = malloc(chunk_bound(len) + 1);
    assert_non_null(*stored);
    const void *sp;
    assert_int_equal(chunk_compress(f->cctx, 3, plain, len, *stored, chunk_bound(len), &sp,
                                    &stored_len, &e->codec), 0);
    if (sp != *stored)
        memcpy(*stored, sp, stored_len);
    chunk_hash(plain, len, e->hash);
    e->plain_len = (uint32_t)len;
    e->stored_len = (uint32_t)stored_len;
    e->crc = chunk_crc(*stored, stored_len);
}

/* Field by field: the structs' padding is not theirs to agree on. */
static void assert_entries_equal(const struct pack_entry *a, const struct pack_entry *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(a[i].hash, b[i].hash, PACK_HASH_LEN) != 0 || a[i].codec != b[i].codec ||
            a[i].plain_len != b[i].plain_len || a[i].stored_len != b[i].stored_len ||
            a[i].crc != b[i].crc || a[i].offset != b[i].offset)
            fail_msg("entry %zu differs", i);
}

static void write_pack(struct fx *f, size_t n, uint64_t seed, struct written *wr)
{
    struct pack_writer *w = pack_writer_open(f->st);

    if (!w)
        fail_msg("pack_writer_open: %s", error_msg());
    memset(wr, 0, sizeof *wr);
    wr->n = n;
    wr->e = calloc(n + 1, sizeof *wr->e);
    wr->c = calloc(n + 1, sizeof *wr->c);
    assert_non_null(wr->e);
    assert_non_null(wr->c);
    for (size_t i = 0; i < n; i++) {
        size_t len = chunk_len(i);
        uint8_t *stored;

        wr->c[i].len = len;
        wr->c[i].plain = malloc(len ? len : 1);
        assert_non_null(wr->c[i].plain);
        if (i % 3 == 2)
            fill_random(wr->c[i].plain, len, seed + i);
        else
            fill_text(wr->c[i].plain, len, seed + i);
        make_entry(f, wr->c[i].plain, len, &wr->e[i], &stored);
        if (pack_writer_add(w, &wr->e[i], stored) != 0)
            fail_msg("pack_writer_add: %s", error_msg());
        free(stored);
    }
    assert_int_equal(pack_writer_count(w), n);
    if (pack_writer_finish(w, wr->name, &wr->size) != 0)
        fail_msg("pack_writer_finish: %s", error_msg());
    assert_int_equal(pack_writer_size(w), wr->size);
    assert_entries_equal(pack_writer_entries(w), wr->e, n);
    pack_writer_free(w);
    snprintf(wr->path, sizeof wr->path, "%s/packs/%s", f->dir, wr->name);
}

static void written_free(struct written *wr)
{
    for (size_t i = 0; i < wr->n; i++)
        free(wr->c[i].plain);
    free(wr->c);
    free(wr->e);
}

/* Reads chunk i through r and compares it. */
static int get_chunk(struct pack_reader *r, const struct written *wr, size_t i)
{
    uint8_t *out = malloc(wr->c[i].len + 1);
    int ret;

    assert_non_null(out);
    ret = pack_reader_get(r, wr->name, &wr->e[i], out);
    if (ret == 0 && memcmp(out, wr->c[i].plain, wr->c[i].len) != 0)
        fail_msg("chunk %zu read back different", i);
    free(out);
    return ret;
}

static void flip_byte(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    uint8_t b;

    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
    b ^= 0x40;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)off), 1);
    close(fd);
}

struct listing {
    int packs, temps;
    char names[8][PACK_NAME_MAX];
};

static int list_cb(void *opaque, const char *name, bool is_temp)
{
    struct listing *l = opaque;

    if (l->packs + l->temps < 8)
        snprintf(l->names[l->packs + l->temps], PACK_NAME_MAX, "%s", name);
    if (is_temp)
        l->temps++;
    else
        l->packs++;
    return 0;
}

static struct listing list_files(struct fx *f)
{
    struct listing l;

    memset(&l, 0, sizeof l);
    if (pack_list_files(f->st, list_cb, &l) != 0)
        fail_msg("pack_list_files: %s", error_msg());
    return l;
}

struct collected {
    size_t n;
    struct pack_entry e[512];
};

static int collect_cb(void *opaque, const struct pack_entry *e)
{
    struct collected *c = opaque;

    if (c->n < 512)
        c->e[c->n] = *e;
    c->n++;
    return 0;
}

/* ---- Chunk coding ------------------------------------------------------- */

static void test_hash_crc_known(void **state UNUSED)
{
    uint8_t h[PACK_HASH_LEN];
    char hex[65];

    chunk_hash("abc", 3, h);
    chunk_hash_hex(h, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(chunk_crc("123456789", 9), 0xcbf43926);
    assert_int_equal(chunk_crc("", 0), 0);
}

static void roundtrip(struct fx *f, const uint8_t *in, size_t len, int level, uint8_t want_codec)
{
    size_t cap = chunk_bound(len), stored_len = 0;
    uint8_t *stored = malloc(cap + 1), *out = malloc(len + 1);
    uint8_t codec = 99, hash[PACK_HASH_LEN];

    assert_non_null(stored);
    assert_non_null(out);
    const void *sp = NULL;
    if (chunk_compress(f->cctx, level, in, len, stored, cap, &sp, &stored_len, &codec) != 0)
        fail_msg("chunk_compress: %s", error_msg());
    assert_int_equal(codec, want_codec);
    if (codec == CHUNK_CODEC_RAW) {
        /* Stored as it is, without a copy. */
        assert_ptr_equal(sp, in);
        assert_int_equal(stored_len, len);
        memcpy(stored, sp, len);
    } else {
        assert_ptr_equal(sp, stored);
        assert_true(stored_len < len);
    }
    chunk_hash(in, len, hash);
    if (chunk_decode(f->dctx, codec, stored, stored_len, chunk_crc(stored, stored_len), out, len,
                     hash) != 0)
        fail_msg("chunk_decode: %s", error_msg());
    assert_memory_equal(out, in, len);
    free(stored);
    free(out);
}

static void test_compress_text(void **state)
{
    size_t len = 1024 * 1024;
    uint8_t *in = malloc(len);

    assert_non_null(in);
    fill_text(in, len, 1);
    roundtrip(*state, in, 65536, 1, CHUNK_CODEC_ZSTD);
    roundtrip(*state, in, 65536, 3, CHUNK_CODEC_ZSTD);
    roundtrip(*state, in, len, 3, CHUNK_CODEC_ZSTD);
    memset(in, 0, len);
    roundtrip(*state, in, len, 1, CHUNK_CODEC_ZSTD);
    free(in);
}

static void test_compress_random_raw(void **state)
{
    size_t len = 1024 * 1024;
    uint8_t *in = malloc(len);

    assert_non_null(in);
    fill_random(in, len, 2);
    roundtrip(*state, in, 65536, 3, CHUNK_CODEC_RAW);
    roundtrip(*state, in, len, 1, CHUNK_CODEC_RAW);
    roundtrip(*state, in, 1, 3, CHUNK_CODEC_RAW);
    roundtrip(*state, in, 0, 3, CHUNK_CODEC_RAW);
    free(in);
}

static void test_bound(void **state)
{
    struct fx *f = *state;
    static const size_t sizes[] = { 0, 1, 100, 4096, 65536, 1024 * 1024, 16 * 1024 * 1024 };
    uint8_t in[256], out[256], codec;
    size_t stored_len;
    const void *sp;

    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        assert_true(chunk_bound(sizes[i]) >= sizes[i]);
        assert_true(chunk_bound(sizes[i]) >= ZSTD_compressBound(sizes[i]));
    }
    fill_random(in, sizeof in, 3);
    expect_error(chunk_compress(f->cctx, 3, in, sizeof in, out, chunk_bound(sizeof in) - 1, &sp,
                                &stored_len, &codec),
                 EINVAL, "too small", NULL);
}

static void test_decode_damage(void **state)
{
    struct fx *f = *state;
    size_t len = 65536, stored_len;
    uint8_t *in = malloc(len), *stored = malloc(chunk_bound(len)), *out = malloc(len + 1);
    uint8_t hash[PACK_HASH_LEN], bad[PACK_HASH_LEN], codec;
    char hex[65];
    uint32_t crc;

    fill_text(in, len, 4);
    chunk_hash(in, len, hash);
    chunk_hash_hex(hash, hex);
    const void *sp;
    assert_int_equal(chunk_compress(f->cctx, 3, in, len, stored, chunk_bound(len), &sp,
                                    &stored_len, &codec), 0);
    assert_int_equal(codec, CHUNK_CODEC_ZSTD);
    assert_ptr_equal(sp, stored);
    crc = chunk_crc(stored, stored_len);

    /* A flipped stored byte: the CRC says so before zstd sees it. */
    stored[stored_len / 2] ^= 1;
    expect_error(chunk_decode(f->dctx, codec, stored, stored_len, crc, out, len, hash), EIO,
                 hex, "CRC mismatch", NULL);
    /* The same with a CRC that agrees: zstd or the id catches it. */
    expect_error(chunk_decode(f->dctx, codec, stored, stored_len,
                              chunk_crc(stored, stored_len), out, len, hash),
                 EIO, hex, NULL);
    stored[stored_len / 2] ^= 1;

    /* Wrong plain length, either way. */
    expect_error(chunk_decode(f->dctx, codec, stored, stored_len, crc, out, len - 1, hash), EIO,
                 hex, NULL);
    expect_error(chunk_decode(f->dctx, codec, stored, stored_len, crc, out, len + 1, hash), EIO,
                 hex, NULL);
    /* A wrong id. */
    memcpy(bad, hash, sizeof bad);
    bad[0] ^= 1;
    chunk_hash_hex(bad, hex);
    expect_error(chunk_decode(f->dctx, codec, stored, stored_len, crc, out, len, bad), EIO, hex,
                 "content does not match its id", NULL);
    /* Raw with a length that is not the plain length; an unknown codec. */
    expect_error(chunk_decode(f->dctx, CHUNK_CODEC_RAW, stored, stored_len, crc, out, len, hash),
                 EIO, NULL);
    expect_error(chunk_decode(f->dctx, 7, stored, stored_len, crc, out, len, hash), EIO,
                 "codec", NULL);
    /* And whole again. */
    assert_int_equal(chunk_decode(f->dctx, codec, stored, stored_len, crc, out, len, hash), 0);
    assert_memory_equal(out, in, len);
    free(in);
    free(stored);
    free(out);
}

/* ---- Packs -------------------------------------------------------------- */

static bool is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789abcdef", s[i]) || !s[i])
            return false;
    return true;
}

static void test_pack_roundtrip(void **state)
{
    struct fx *f = *state;
    struct written wr;
    struct pack_reader *r;
    struct collected *c = calloc(1, sizeof *c);
    struct listing l;
    struct stat st;

    write_pack(f, 300, 10, &wr);

    /* xx/<32 hex>.pack, with xx its first two digits; durable under that
     * name, no temporary file left. */
    assert_int_equal(strlen(wr.name), 2 + 1 + 32 + 5);
    assert_true(is_hex(wr.name, 2) && wr.name[2] == '/' && is_hex(wr.name + 3, 32));
    assert_memory_equal(wr.name, wr.name + 3, 2);
    assert_string_equal(wr.name + 35, ".pack");
    assert_int_equal(stat(wr.path, &st), 0);
    assert_int_equal((uint64_t)st.st_size, wr.size);
    l = list_files(f);
    assert_int_equal(l.packs, 1);
    assert_int_equal(l.temps, 0);
    assert_string_equal(l.names[0], wr.name);

    /* Offsets: the first entry follows the file header; each follows the
     * previous one. */
    assert_true(wr.e[0].offset > 0);
    for (size_t i = 1; i < wr.n; i++)
        assert_true(wr.e[i].offset > wr.e[i - 1].offset + wr.e[i - 1].stored_len);

    r = pack_reader_open(f->st, NULL);
    assert_non_null(r);
    for (size_t i = 0; i < wr.n; i++)
        if (get_chunk(r, &wr, i) != 0)
            fail_msg("get chunk %zu: %s", i, error_msg());
    /* Out of order, too. */
    for (size_t i = wr.n; i-- > 0;)
        if (get_chunk(r, &wr, (i * 37) % wr.n) != 0)
            fail_msg("get chunk %zu: %s", (i * 37) % wr.n, error_msg());
    pack_reader_close(r);

    /* Through the store, and the parser alone. */
    if (pack_scan(f->st, wr.name, true, collect_cb, c) != 0)
        fail_msg("pack_scan: %s", error_msg());
    assert_int_equal(c->n, wr.n);
    assert_entries_equal(c->e, wr.e, wr.n);
    assert_int_equal(scan_file(wr.path, false, NULL, NULL), 0);
    free(c);
    written_free(&wr);
}

static void test_empty_pack(void **state)
{
    struct fx *f = *state;
    struct written wr;

    write_pack(f, 0, 11, &wr);
    assert_int_equal(scan_file(wr.path, true, NULL, NULL), 0);
    written_free(&wr);
}

static void test_flip_data(void **state)
{
    struct fx *f = *state;
    struct written wr;
    struct pack_reader *r;
    char hex[65], off[32];

    write_pack(f, 20, 12, &wr);
    flip_byte(wr.path, wr.e[7].offset + 56 + wr.e[7].stored_len / 2);
    chunk_hash_hex(wr.e[7].hash, hex);

    r = pack_reader_open(f->st, NULL);
    assert_non_null(r);
    expect_error(get_chunk(r, &wr, 7), EIO, wr.name, hex, "CRC mismatch", NULL);
    assert_int_equal(get_chunk(r, &wr, 6), 0);
    assert_int_equal(get_chunk(r, &wr, 8), 0);
    pack_reader_close(r);

    snprintf(off, sizeof off, "offset %llu:", (unsigned long long)wr.e[7].offset);
    expect_error(scan_file(wr.path, false, NULL, NULL), EIO, wr.path, off, "CRC mismatch",
                 NULL);
    written_free(&wr);
}

static void test_flip_entry_header(void **state)
{
    struct fx *f = *state;
    struct written wr;
    struct pack_reader *r;
    char hex[65], off[32];

    write_pack(f, 20, 13, &wr);
    flip_byte(wr.path, wr.e[3].offset + 46);   /* in stored_len */
    chunk_hash_hex(wr.e[3].hash, hex);
    r = pack_reader_open(f->st, NULL);
    assert_non_null(r);
    expect_error(get_chunk(r, &wr, 3), EIO, wr.name, hex, NULL);
    assert_int_equal(get_chunk(r, &wr, 4), 0);
    pack_reader_close(r);
    snprintf(off, sizeof off, "offset %llu:", (unsigned long long)wr.e[3].offset);
    expect_error(scan_file(wr.path, false, NULL, NULL), EIO, off, "header", NULL);

    /* An entry that is not where the catalog says. */
    r = pack_reader_open(f->st, NULL);
    assert_non_null(r);
    wr.e[4].offset += 1;
    expect_error(get_chunk(r, &wr, 4), EIO, wr.name, NULL);
    wr.e[4].offset -= 1;
    /* Or not the chunk the catalog expects there. */
    wr.e[5].crc ^= 1;
    expect_error(get_chunk(r, &wr, 5), EIO, wr.name, "does not match", NULL);
    wr.e[5].crc ^= 1;
    pack_reader_close(r);
    written_free(&wr);
}

/* With check_ids, a chunk whose bytes and CRC agree but whose content is
 * not its id is found. */
static void test_scan_check_ids(void **state)
{
    struct fx *f = *state;
    struct pack_writer *w = pack_writer_open(f->st);
    struct pack_entry e;
    char name[PACK_NAME_MAX], path[256], hex[65];
    uint8_t plain[1000], *stored;
    uint64_t size;

    assert_non_null(w);
    fill_text(plain, sizeof plain, 14);
    make_entry(f, plain, sizeof plain, &e, &stored);
    e.hash[31] ^= 1;
    chunk_hash_hex(e.hash, hex);
    assert_int_equal(pack_writer_add(w, &e, stored), 0);
    assert_int_equal(pack_writer_finish(w, name, &size), 0);
    pack_writer_free(w);
    free(stored);
    snprintf(path, sizeof path, "%s/packs/%s", f->dir, name);
    assert_int_equal(scan_file(path, false, NULL, NULL), 0);
    expect_error(scan_file(path, true, NULL, NULL), EIO, path, hex,
                 "content does not match its id", NULL);
}

static void test_flip_index(void **state)
{
    struct fx *f = *state;
    struct written wr;
    struct pack_reader *r;
    uint64_t index_off;

    write_pack(f, 20, 15, &wr);
    index_off = wr.e[19].offset + 56 + wr.e[19].stored_len;

    /* A record of the index. */
    flip_byte(wr.path, index_off + 8 + 5 * 56 + 40);
    expect_error(scan_file(wr.path, true, NULL, NULL), EIO, wr.path, "index record 5", NULL);
    /* The chunks themselves are still whole. */
    r = pack_reader_open(f->st, NULL);
    assert_non_null(r);
    for (size_t i = 0; i < wr.n; i++)
        assert_int_equal(get_chunk(r, &wr, i), 0);
    pack_reader_close(r);
    flip_byte(wr.path, index_off + 8 + 5 * 56 + 40);
    assert_int_equal(scan_file(wr.path, true, NULL, NULL), 0);

    /* The index header, the footer's CRC, its magic. */
    flip_byte(wr.path, index_off + 1);
    expect_error(scan_file(wr.path, true, NULL, NULL), EIO, wr.path, "index", NULL);
    flip_byte(wr.path, index_off + 1);
    flip_byte(wr.path, index_off + 6);
    expect_error(scan_file(wr.path, true, NULL, NULL), EIO, wr.path, "index", NULL);
    flip_byte(wr.path, index_off + 6);
    flip_byte(wr.path, wr.size - 24 + 13);
    expect_error(scan_file(wr.path, true, NULL, NULL), EIO, wr.path, "index CRC mismatch", NULL);
    flip_byte(wr.path, wr.size - 24 + 13);
    flip_byte(wr.path, wr.size - 1);
    expect_error(scan_file(wr.path, true, NULL, NULL), EIO, wr.path, "footer", NULL);
    flip_byte(wr.path, wr.size - 1);
    flip_byte(wr.path, wr.size - 24 + 7);      /* the index offset */
    expect_error(scan_file(wr.path, true, NULL, NULL), EIO, wr.path, NULL);
    flip_byte(wr.path, wr.size - 24 + 7);
    assert_int_equal(scan_file(wr.path, true, NULL, NULL), 0);
    written_free(&wr);
}

/* The trailer alone: the records as written; damage to it is named, damage
 * to an entry is not seen (only a full read finds that). */
static void test_read_index(void **state)
{
    struct fx *f = *state;
    struct written wr, empty;
    struct pack_entry *e;
    size_t n;
    uint64_t size, index_off;

    write_pack(f, 20, 21, &wr);
    index_off = wr.e[19].offset + 56 + wr.e[19].stored_len;
    assert_int_equal(pack_read_index(f->st, wr.name, &size, &e, &n), 0);
    assert_int_equal(size, wr.size);
    assert_int_equal(n, 20);
    assert_entries_equal(e, wr.e, 20);
    free(e);

    write_pack(f, 0, 22, &empty);
    assert_int_equal(pack_read_index(f->st, empty.name, &size, &e, &n), 0);
    assert_int_equal(n, 0);
    free(e);
    written_free(&empty);

    flip_byte(wr.path, wr.e[4].offset + 60);    /* data: not the index's business */
    assert_int_equal(pack_read_index(f->st, wr.name, &size, &e, &n), 0);
    free(e);
    flip_byte(wr.path, wr.e[4].offset + 60);
    flip_byte(wr.path, index_off + 8 + 5 * 56 + 40);
    expect_error(pack_read_index(f->st, wr.name, &size, &e, &n), EIO, wr.name, "index CRC mismatch",
                 NULL);
    assert_null(e);
    flip_byte(wr.path, index_off + 8 + 5 * 56 + 40);
    flip_byte(wr.path, wr.size - 1);
    expect_error(pack_read_index(f->st, wr.name, &size, &e, &n), EIO, wr.name, "footer", "magic", NULL);
    flip_byte(wr.path, wr.size - 1);
    flip_byte(wr.path, wr.size - 24 + 7);      /* the index offset */
    expect_error(pack_read_index(f->st, wr.name, &size, &e, &n), EIO, wr.name, "does not end", NULL);
    flip_byte(wr.path, wr.size - 24 + 7);
    assert_int_equal(truncate(wr.path, (off_t)wr.size - 100), 0);
    expect_error(pack_read_index(f->st, wr.name, &size, &e, &n), EIO, wr.name, "footer", NULL);
    assert_int_equal(truncate(wr.path, 10), 0);
    expect_error(pack_read_index(f->st, wr.name, &size, &e, &n), EIO, wr.name, "truncated", NULL);
    unlink(wr.path);
    expect_error(pack_read_index(f->st, wr.name, &size, &e, &n), ENOENT, wr.name, NULL);
    written_free(&wr);
}

static void test_truncated(void **state)
{
    struct fx *f = *state;
    struct written wr;
    struct pack_reader *r;
    struct collected *c = calloc(1, sizeof *c);
    char msg[64];
    uint64_t cut, index_off;

    write_pack(f, 20, 16, &wr);
    index_off = wr.e[19].offset + 56 + wr.e[19].stored_len;

    /* Cut shorter and shorter: in the index, at its start, in the middle of
     * entry 12 (the entries before it are salvaged), at an entry boundary,
     * in an entry header, in the file header, to nothing. */
    {
        uint64_t cuts[] = { index_off + 8 + 3 * 56 + 1, index_off + 4, index_off,
                            wr.e[12].offset + 56 + wr.e[12].stored_len / 2, wr.e[10].offset,
                            wr.e[9].offset + 20, 5, 0 };
        for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
            cut = cuts[i];
            assert_int_equal(truncate(wr.path, (off_t)cut), 0);
            snprintf(msg, sizeof msg, "truncated at offset %llu", (unsigned long long)cut);
            c->n = 0;
            expect_error(scan_file(wr.path, true, collect_cb, c), EIO, wr.path, msg, NULL);
            if (i == 3) {
                assert_int_equal(c->n, 12);
                assert_entries_equal(c->e, wr.e, 12);
                r = pack_reader_open(f->st, NULL);
                assert_non_null(r);
                expect_error(get_chunk(r, &wr, 12), EIO, wr.name, "cut short", NULL);
                expect_error(get_chunk(r, &wr, 13), EIO, wr.name, NULL);
                assert_int_equal(get_chunk(r, &wr, 11), 0);
                pack_reader_close(r);
            }
        }
    }
    free(c);
    written_free(&wr);
}

static void test_truncated_footer(void **state)
{
    struct fx *f = *state;
    struct written wr;

    write_pack(f, 4, 17, &wr);
    assert_int_equal(truncate(wr.path, (off_t)wr.size - 1), 0);
    expect_error(scan_file(wr.path, false, NULL, NULL), EIO, wr.path, "truncated at offset",
                 NULL);
    written_free(&wr);
}

static void test_garbage(void **state)
{
    struct fx *f = *state;
    struct written wr;
    char path[256];
    uint8_t junk[4096];
    FILE *fp;

    fill_random(junk, sizeof junk, 18);
    snprintf(path, sizeof path, "%s/junk.pack", f->dir);
    fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite(junk, 1, sizeof junk, fp), sizeof junk);
    fclose(fp);
    expect_error(scan_file(path, true, NULL, NULL), EIO, path, "not a pack", NULL);

    /* A good pack with bytes after its footer. */
    write_pack(f, 3, 19, &wr);
    fp = fopen(wr.path, "a");
    assert_non_null(fp);
    assert_int_equal(fwrite(junk, 1, 100, fp), 100);
    fclose(fp);
    expect_error(scan_file(wr.path, true, NULL, NULL), EIO, wr.path, "after the footer", NULL);

    /* Garbage instead of an entry. */
    assert_int_equal(truncate(wr.path, (off_t)wr.e[2].offset), 0);
    fp = fopen(wr.path, "a");
    assert_non_null(fp);
    assert_int_equal(fwrite(junk, 1, sizeof junk, fp), sizeof junk);
    fclose(fp);
    snprintf(path, sizeof path, "entry at offset %llu: bad magic",
             (unsigned long long)wr.e[2].offset);
    expect_error(scan_file(wr.path, true, NULL, NULL), EIO, wr.path, path, NULL);

    /* A version from the future. */
    written_free(&wr);
    write_pack(f, 1, 20, &wr);
    flip_byte(wr.path, 11);
    expect_error(scan_file(wr.path, true, NULL, NULL), EIO, wr.path, "version", NULL);
    written_free(&wr);
}

static void test_missing(void **state)
{
    struct fx *f = *state;
    struct written wr;
    struct pack_reader *r;
    char path[256];

    write_pack(f, 2, 21, &wr);
    r = pack_reader_open(f->st, NULL);
    assert_non_null(r);
    strcpy(wr.name, "ab/ab000000000000000000000000000000.pack");
    expect_error(get_chunk(r, &wr, 0), EIO, "pack ab/ab000000000000000000000000000000.pack is "
                 "missing", NULL);
    strcpy(wr.name, "../../etc/passwd");
    expect_error(get_chunk(r, &wr, 0), EINVAL, "invalid pack name", NULL);
    pack_reader_close(r);

    snprintf(path, sizeof path, "%s/packs/ab/none.pack", f->dir);
    expect_error(pack_scan(f->st, "ab/none.pack", false, NULL, NULL), ENOENT, path, "missing",
                 NULL);
    written_free(&wr);
}

static void test_writer_unfinished(void **state)
{
    struct fx *f = *state;
    struct pack_writer *w;
    struct pack_entry e;
    struct listing l;
    uint8_t plain[5000], *stored;

    /* Nothing written. */
    w = pack_writer_open(f->st);
    assert_non_null(w);
    l = list_files(f);
    assert_int_equal(l.temps, 1);
    assert_int_equal(l.packs, 0);
    assert_string_equal(l.names[0] + strlen(l.names[0]) - 4, ".tmp");
    pack_writer_free(w);
    l = list_files(f);
    assert_int_equal(l.temps + l.packs, 0);

    /* Some entries written, never finished. */
    w = pack_writer_open(f->st);
    assert_non_null(w);
    fill_text(plain, sizeof plain, 22);
    make_entry(f, plain, sizeof plain, &e, &stored);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pack_writer_add(w, &e, stored), 0);
    assert_int_equal(pack_writer_count(w), 3);
    pack_writer_free(w);
    free(stored);
    l = list_files(f);
    assert_int_equal(l.temps + l.packs, 0);
    pack_writer_free(NULL);
}

static void test_writer_bad_entry(void **state)
{
    struct fx *f = *state;
    struct pack_writer *w = pack_writer_open(f->st);
    struct pack_entry e;
    uint8_t plain[100] = { 0 };
    char name[PACK_NAME_MAX];
    uint64_t size;

    assert_non_null(w);
    memset(&e, 0, sizeof e);
    e.codec = CHUNK_CODEC_RAW;
    e.plain_len = 100;
    e.stored_len = 99;
    expect_error(pack_writer_add(w, &e, plain), EINVAL, "raw", NULL);
    e.codec = 9;
    expect_error(pack_writer_add(w, &e, plain), EINVAL, "codec", NULL);
    e.codec = CHUNK_CODEC_ZSTD;
    e.plain_len = e.stored_len = 200u * 1024 * 1024;
    expect_error(pack_writer_add(w, &e, plain), EINVAL, "limit", NULL);
    assert_int_equal(pack_writer_count(w), 0);
    assert_int_equal(pack_writer_finish(w, name, &size), 0);
    expect_error(pack_writer_finish(w, name, &size), EINVAL, "already finished", NULL);
    pack_writer_free(w);
}

/* A write that fails (here EFBIG from RLIMIT_FSIZE, as ENOSPC would) is
 * reported with the pack's name, and leaves no pack behind. */
static void test_write_error(void **state)
{
    struct fx *f = *state;
    struct pack_writer *w;
    struct pack_entry e;
    struct listing l;
    struct rlimit old, lim;
    uint8_t *plain = malloc(256 * 1024), *stored;
    char name[PACK_NAME_MAX], msg[128];
    uint64_t size;
    int r = 0;

    assert_non_null(plain);
    fill_random(plain, 256 * 1024, 23);
    make_entry(f, plain, 256 * 1024, &e, &stored);
    w = pack_writer_open(f->st);
    assert_non_null(w);
    l = list_files(f);
    assert_int_equal(l.temps, 1);
    /* The pack is named; what the store said follows (its own words may
     * name the file it wrote), ending in the errno's text. */
    snprintf(msg, sizeof msg, "write pack %.35s.pack: ", l.names[0]);

    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 2 * 1024 * 1024;
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    for (int i = 0; i < 20 && r == 0; i++)
        r = pack_writer_add(w, &e, stored);
    if (r == 0)
        r = pack_writer_finish(w, name, &size);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    expect_error(r, EFBIG, msg, strerror(EFBIG), NULL);
    /* The writer stays failed. */
    expect_error(pack_writer_finish(w, name, &size), EFBIG, NULL);

    l = list_files(f);
    assert_int_equal(l.packs, 0);
    pack_writer_free(w);
    l = list_files(f);
    assert_int_equal(l.temps + l.packs, 0);
    free(plain);
    free(stored);
}

static void test_remove_and_list(void **state)
{
    struct fx *f = *state;
    struct written a, b;
    struct pack_writer *w;
    struct listing l;
    char path[256];
    FILE *fp;

    l = list_files(f);                          /* no packs/ yet */
    assert_int_equal(l.packs + l.temps, 0);
    write_pack(f, 2, 24, &a);
    write_pack(f, 2, 25, &b);
    w = pack_writer_open(f->st);
    assert_non_null(w);
    /* Strays that are not packs. */
    snprintf(path, sizeof path, "%s/packs/README", f->dir);
    fp = fopen(path, "w");
    assert_non_null(fp);
    fclose(fp);
    snprintf(path, sizeof path, "%s/packs/%.2s/notes.txt", f->dir, a.name);
    fp = fopen(path, "w");
    assert_non_null(fp);
    fclose(fp);

    l = list_files(f);
    assert_int_equal(l.packs, 2);
    assert_int_equal(l.temps, 1);
    /* Sorted. */
    assert_true(strcmp(l.names[0], l.names[1]) < 0 && strcmp(l.names[1], l.names[2]) < 0);
    pack_writer_free(w);

    assert_int_equal(pack_remove(f->st, a.name), 0);
    l = list_files(f);
    assert_int_equal(l.packs, 1);
    assert_string_equal(l.names[0], b.name);
    expect_error(pack_remove(f->st, a.name), ENOENT, a.name, NULL);
    expect_error(pack_remove(f->st, "../x.pack"), EINVAL, NULL);
    written_free(&a);
    written_free(&b);
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;

    assert_non_null(d);
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* More packs than the reader keeps open: all still read, and the number of
 * open files stays bounded. */
static void test_reader_cache(void **state)
{
    struct fx *f = *state;
    enum { NPACKS = 40 };
    struct written *wr = calloc(NPACKS, sizeof *wr);
    struct pack_reader *r;
    int base;

    assert_non_null(wr);
    for (int i = 0; i < NPACKS; i++)
        write_pack(f, 3, 100 + (uint64_t)i, &wr[i]);
    base = count_fds();
    r = pack_reader_open(f->st, NULL);
    assert_non_null(r);
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < NPACKS; i++) {
            int p = round == 1 ? (i * 7) % NPACKS : i;
            for (size_t j = 0; j < 3; j++)
                if (get_chunk(r, &wr[p], j) != 0)
                    fail_msg("pack %d chunk %zu: %s", p, j, error_msg());
            assert_true(count_fds() <= base + 32);
        }
    /* A pack removed while its file is cached still reads; one never
     * opened does not. */
    assert_int_equal(pack_remove(f->st, wr[NPACKS - 1].name), 0);
    assert_int_equal(get_chunk(r, &wr[NPACKS - 1], 0), 0);
    assert_int_equal(pack_remove(f->st, wr[0].name), 0);
    expect_error(get_chunk(r, &wr[0], 0), EIO, "is missing", NULL);
    pack_reader_close(r);
    assert_int_equal(count_fds(), base);
    for (int i = 0; i < NPACKS; i++)
        written_free(&wr[i]);
    free(wr);
}

static int stop_cb(void *opaque, const struct pack_entry *e UNUSED)
{
    int *n = opaque;

    if (++*n == 2) {
        error_set(ECANCELED, "stop here");
        return -1;
    }
    return 0;
}

static void test_scan_callback_stops(void **state)
{
    struct fx *f = *state;
    struct written wr;
    int n = 0;

    write_pack(f, 5, 26, &wr);
    expect_error(scan_file(wr.path, true, stop_cb, &n), ECANCELED, "stop here", NULL);
    assert_int_equal(n, 2);
    written_free(&wr);
}

/* Packs are written with O_DIRECT where the file system takes it (whole
 * aligned buffers, the last padded and the file truncated back) or
 * buffered: both give the same bytes, of the exact size, for packs ending
 * inside a buffer and spanning several. */
static void slurp(const char *path, uint8_t **data, size_t *len)
{
    struct stat st;
    int fd = open(path, O_RDONLY);

    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &st), 0);
    *len = (size_t)st.st_size;
    *data = malloc(*len + 1);
    assert_non_null(*data);
    assert_int_equal(read(fd, *data, *len), (ssize_t)*len);
    close(fd);
}

static void test_direct_and_buffered(void **state)
{
    struct fx *f = *state;
    static const size_t counts[] = { 0, 1, 40, 300 };

    for (size_t k = 0; k < sizeof counts / sizeof *counts; k++) {
        struct written wd, wb;
        uint8_t *dd, *db;
        size_t ld, lb;

        store_direct_io(true);
        write_pack(f, counts[k], 40 + k, &wd);
        store_direct_io(false);
        write_pack(f, counts[k], 40 + k, &wb);
        store_direct_io(true);
        slurp(wd.path, &dd, &ld);
        slurp(wb.path, &db, &lb);
        assert_int_equal(ld, wd.size);
        assert_int_equal(lb, wb.size);
        assert_int_equal(ld, lb);
        assert_memory_equal(dd, db, ld);
        if (scan_file(wd.path, true, NULL, NULL) != 0)
            fail_msg("pack of %zu chunks: %s", counts[k], error_msg());
        free(dd);
        free(db);
        written_free(&wd);
        written_free(&wb);
    }
}

/* pack_writer_finish in two steps: seal hands the name and size back at
 * once, wait returns when the pack stands durable under its name; a sealed
 * pack abandoned before wait leaves no file behind. */
static void test_seal_wait_abandon(void **state)
{
    struct fx *f = *state;
    uint8_t *plain = malloc(200 * 1024), *stored;
    struct pack_entry e;
    char name[PACK_NAME_MAX];
    uint64_t size;
    struct listing l;
    struct stat st;
    char path[256];

    assert_non_null(plain);
    fill_text(plain, 200 * 1024, 50);
    make_entry(f, plain, 200 * 1024, &e, &stored);
    for (int abandon = 0; abandon < 2; abandon++) {
        struct pack_writer *w = pack_writer_open(f->st);
        assert_non_null(w);
        for (int i = 0; i < 12; i++) /* several buffers' worth */
            assert_int_equal(pack_writer_add(w, &e, stored), 0);
        assert_int_equal(pack_writer_seal(w, name, &size), 0);
        assert_int_equal(size, pack_writer_size(w));
        expect_error(pack_writer_seal(w, name, &size), EINVAL, "already finished", NULL);
        if (!abandon) {
            assert_int_equal(pack_writer_wait(w), 0);
            assert_int_equal(pack_writer_wait(w), 0);
            snprintf(path, sizeof path, "%s/packs/%s", f->dir, name);
            assert_int_equal(stat(path, &st), 0);
            assert_int_equal((uint64_t)st.st_size, size);
            if (scan_file(path, true, NULL, NULL) != 0)
                fail_msg("sealed pack: %s", error_msg());
            assert_int_equal(pack_remove(f->st, name), 0);
        }
        pack_writer_free(w);
        l = list_files(f);
        assert_int_equal(l.packs + l.temps, 0);
    }
    free(stored);
    free(plain);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_hash_crc_known),
        T(test_compress_text),
        T(test_compress_random_raw),
        T(test_bound),
        T(test_decode_damage),
        T(test_pack_roundtrip),
        T(test_empty_pack),
        T(test_flip_data),
        T(test_flip_entry_header),
        T(test_scan_check_ids),
        T(test_flip_index),
        T(test_read_index),
        T(test_truncated),
        T(test_truncated_footer),
        T(test_garbage),
        T(test_missing),
        T(test_writer_unfinished),
        T(test_writer_bad_entry),
        T(test_write_error),
        T(test_remove_and_list),
        T(test_reader_cache),
        T(test_scan_callback_stops),
        T(test_direct_and_buffered),
        T(test_seal_wait_abandon),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
