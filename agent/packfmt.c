/* agent/packfmt.c: the pack format (agent/packfmt.h); no I/O of its own. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "agent/packfmt.h"
#include "crypt/crypt.h"
#include "common/be.h"
#include "common/error.h"

#define PACK_VERSION 1
static const char pack_magic[8] = "NBDVPACK";
static const char footer_magic[8] = "NBDVPIDX";
static const char entry_magic[4] = "NBDE";
static const char index_magic[4] = "NBDI";

#define SCAN_BUF_SIZE (1024 * 1024)

/* ---- Entry headers and index records ------------------------------------ */

void pack_encode_entry_hdr(uint8_t p[PACK_ENTRY_HDR_LEN], const struct pack_entry *e)
{
    memcpy(p, entry_magic, 4);
    memcpy(p + 4, e->hash, PACK_HASH_LEN);
    p[36] = e->codec;
    p[37] = p[38] = p[39] = 0;
    be_put32(p + 40, e->plain_len);
    be_put32(p + 44, e->stored_len);
    be_put32(p + 48, e->crc);
    be_put32(p + 52, chunk_crc(p, 52));
}

int pack_decode_entry_hdr(const uint8_t p[PACK_ENTRY_HDR_LEN], uint64_t off,
                          struct pack_entry *e)
{
    if (memcmp(p, entry_magic, 4) != 0) {
        error_set(EIO, "entry at offset %llu: bad magic", (unsigned long long)off);
        return -1;
    }
    if (be_get32(p + 52) != chunk_crc(p, 52)) {
        error_set(EIO, "entry at offset %llu: header CRC mismatch", (unsigned long long)off);
        return -1;
    }
    memcpy(e->hash, p + 4, PACK_HASH_LEN);
    e->codec = p[36];
    e->plain_len = be_get32(p + 40);
    e->stored_len = be_get32(p + 44);
    e->crc = be_get32(p + 48);
    e->offset = off;
    return 0;
}

int pack_check_entry(const struct pack_entry *e, int errnum)
{
    uint8_t coding = CHUNK_CODING(e->codec);
    bool sealed = e->codec & CHUNK_CODEC_SEALED;

    if (coding != CHUNK_CODEC_RAW && coding != CHUNK_CODEC_ZSTD) {
        error_set(errnum, "unknown codec %u", e->codec);
        return -1;
    }
    if (e->plain_len > PACK_ENTRY_MAX || e->stored_len > PACK_ENTRY_MAX) {
        error_set(errnum, "stored/plain lengths %u/%u exceed the limit of %u bytes",
                  e->stored_len, e->plain_len, PACK_ENTRY_MAX);
        return -1;
    }
    if (coding == CHUNK_CODEC_RAW && e->stored_len != e->plain_len + (sealed ? CRYPT_OVERHEAD : 0)) {
        error_set(errnum, "raw %sentry of %u stored bytes for %u plain bytes", sealed ? "sealed " : "",
                  e->stored_len, e->plain_len);
        return -1;
    }
    if (sealed && e->stored_len < CRYPT_OVERHEAD) {
        error_set(errnum, "sealed entry of %u stored bytes: too few for a seal", e->stored_len);
        return -1;
    }
    return 0;
}

void pack_encode_index_rec(uint8_t p[PACK_INDEX_REC_LEN], const struct pack_entry *e)
{
    memcpy(p, e->hash, PACK_HASH_LEN);
    p[32] = e->codec;
    p[33] = p[34] = p[35] = 0;
    be_put32(p + 36, e->plain_len);
    be_put32(p + 40, e->stored_len);
    be_put32(p + 44, e->crc);
    be_put64(p + 48, e->offset);
}

static void pack_decode_index_rec(const uint8_t *p, struct pack_entry *e)
{
    memcpy(e->hash, p, PACK_HASH_LEN);
    e->codec = p[32];
    e->plain_len = be_get32(p + 36);
    e->stored_len = be_get32(p + 40);
    e->crc = be_get32(p + 44);
    e->offset = be_get64(p + 48);
}

bool pack_entry_equal(const struct pack_entry *a, const struct pack_entry *b)
{
    return memcmp(a->hash, b->hash, PACK_HASH_LEN) == 0 && a->codec == b->codec &&
           a->plain_len == b->plain_len && a->stored_len == b->stored_len && a->crc == b->crc &&
           a->offset == b->offset;
}

void pack_encode_file_hdr(uint8_t p[PACK_FILE_HDR_LEN])
{
    memcpy(p, pack_magic, 8);
    be_put32(p + 8, PACK_VERSION);
    be_put32(p + 12, 0);
}

void pack_encode_index_hdr(uint8_t p[PACK_INDEX_HDR_LEN], uint32_t count)
{
    memcpy(p, index_magic, 4);
    be_put32(p + 4, count);
}

void pack_encode_footer(uint8_t p[PACK_FOOTER_LEN], uint64_t index_off, uint32_t count,
                        uint32_t index_crc)
{
    be_put64(p, index_off);
    be_put32(p + 8, count);
    be_put32(p + 12, index_crc);
    memcpy(p + 16, footer_magic, 8);
}

/* ---- Parsing ------------------------------------------------------------ */

/* Sequential reads through a window of the pack. */
struct scan {
    const struct pack_src *src;
    const char *path;              /* src->name */
    uint64_t size;
    uint8_t *buf;
    size_t cap;
    uint64_t win_off;
    size_t win_len;
    /* What the walk found so far. */
    bool check_ids;
    bool have_footer;              /* index_off is the footer's word */
    uint64_t index_off;
    struct pack_entry *entries;
    size_t count, ecap;
    ZSTD_DCtx *dctx;               /* check_ids: decoding */
    uint8_t *plain;
    size_t plain_cap;
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
    n = s->src->read(s->src->opaque, s->buf, s->cap < s->size - off ? s->cap : (size_t)(s->size - off), off);
    if (n < 0) {
        error_prefix("pack %s: ", s->path);
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

/* The file header, and the footer's word on where the index starts: that
 * tells a damaged index header from a damaged entry.  The walk still stops
 * at an "NBDI" where an entry should start, and the footer is checked in
 * full after it. */
static int scan_header(struct scan *s)
{
    bool short_read;
    const uint8_t *p = scan_need(s, 0, PACK_FILE_HDR_LEN, "file header");
    if (!p)
        return -1;
    if (memcmp(p, pack_magic, 8) != 0) {
        error_set(EIO, "pack %s: not a pack file (bad magic)", s->path);
        return -1;
    }
    if (be_get32(p + 8) != PACK_VERSION) {
        error_set(EIO, "pack %s: unsupported version %u", s->path, be_get32(p + 8));
        return -1;
    }
    if (be_get32(p + 12) != 0) {
        error_set(EIO, "pack %s: reserved header field is not zero", s->path);
        return -1;
    }
    if (s->size >= PACK_FILE_HDR_LEN + PACK_INDEX_HDR_LEN + PACK_FOOTER_LEN) {
        p = scan_at(s, s->size - PACK_FOOTER_LEN, PACK_FOOTER_LEN, &short_read);
        if (!p && !short_read)
            return -1;
        if (p && memcmp(p + 16, footer_magic, 8) == 0) {
            s->index_off = be_get64(p);
            s->have_footer = s->index_off >= PACK_FILE_HDR_LEN &&
                             s->index_off <= s->size - PACK_FOOTER_LEN - PACK_INDEX_HDR_LEN;
        }
    }
    return 0;
}

/* Decodes an entry's data and checks it against its id (a sealed entry
 * needs the key, which a pack walk does not have: its CRC was checked). */
static int scan_check_id(struct scan *s, const struct pack_entry *e, const uint8_t *data)
{
    if (e->codec & CHUNK_CODEC_SEALED)
        return 0;
    if (!s->dctx && !(s->dctx = ZSTD_createDCtx())) {
        error_set(ENOMEM, "pack %s: out of memory", s->path);
        return -1;
    }
    if (e->plain_len > s->plain_cap || !s->plain) {
        uint8_t *nb = realloc(s->plain, e->plain_len ? e->plain_len : 1);
        if (!nb) {
            error_set(ENOMEM, "pack %s: out of memory", s->path);
            return -1;
        }
        s->plain = nb;
        s->plain_cap = e->plain_len;
    }
    if (chunk_decode(s->dctx, e->codec, data, e->stored_len, e->crc, s->plain, e->plain_len, e->hash) < 0) {
        error_prefix("pack %s: entry at offset %llu: ", s->path, (unsigned long long)e->offset);
        return -1;
    }
    return 0;
}

/* The entry at off, checked and kept: 0, or -1. */
static int scan_entry(struct scan *s, uint64_t off, struct pack_entry *e)
{
    const uint8_t *p = scan_need(s, off, PACK_ENTRY_HDR_LEN, "entry header");
    if (!p)
        return -1;
    if (pack_decode_entry_hdr(p, off, e) < 0) {
        error_prefix("pack %s: ", s->path);
        return -1;
    }
    if (pack_check_entry(e, EIO) < 0) {
        error_prefix("pack %s: entry at offset %llu: ", s->path, (unsigned long long)off);
        return -1;
    }
    uint64_t end = off + PACK_ENTRY_HDR_LEN + e->stored_len;
    if (s->have_footer && end > s->index_off) {
        error_set(EIO, "pack %s: entry at offset %llu runs past offset %llu, where the "
                  "footer says the index starts", s->path, (unsigned long long)off,
                  (unsigned long long)s->index_off);
        return -1;
    }
    p = scan_need(s, off + PACK_ENTRY_HDR_LEN, e->stored_len, "entry data");
    if (!p)
        return -1;
    if (chunk_crc(p, e->stored_len) != e->crc) {
        error_set(EIO, "pack %s: entry at offset %llu: CRC mismatch", s->path, (unsigned long long)off);
        return -1;
    }
    if (s->check_ids && scan_check_id(s, e, p) < 0)
        return -1;
    if (s->count == s->ecap) {
        size_t ncap = s->ecap ? 2 * s->ecap : 256;
        struct pack_entry *nb = realloc(s->entries, ncap * sizeof *nb);
        if (!nb) {
            error_set(ENOMEM, "pack %s: out of memory", s->path);
            return -1;
        }
        s->entries = nb;
        s->ecap = ncap;
    }
    s->entries[s->count++] = *e;
    return 0;
}

/* Entries from the front, up to the index: the index's offset, or -1
 * (fn's non-zero value stops it too: *stop). */
static int64_t scan_entries(struct scan *s, int (*fn)(void *opaque, const struct pack_entry *e),
                            void *opaque, int *stop)
{
    uint64_t off = PACK_FILE_HDR_LEN;
    for (;;) {
        struct pack_entry e;

        if (s->have_footer && off == s->index_off)
            return (int64_t)off;
        if (off == s->size) {
            error_set(EIO, "pack %s: truncated at offset %llu (no index)", s->path, (unsigned long long)off);
            return -1;
        }
        const uint8_t *p = scan_need(s, off, 4, "entry");
        if (!p)
            return -1;
        if (memcmp(p, index_magic, 4) == 0)
            return (int64_t)off;
        if (scan_entry(s, off, &e) < 0)
            return -1;
        if (fn && (*stop = fn(opaque, &e)) != 0)
            return -1;
        off += PACK_ENTRY_HDR_LEN + e.stored_len;
    }
}

/* The index header at index_off and its size against the file's. */
static int scan_index_hdr(struct scan *s, uint64_t index_off, uint32_t *crc)
{
    const uint8_t *p = scan_need(s, index_off, PACK_INDEX_HDR_LEN, "index header");
    if (!p)
        return -1;
    if (memcmp(p, index_magic, 4) != 0) {
        error_set(EIO, "pack %s: index at offset %llu: bad magic", s->path, (unsigned long long)index_off);
        return -1;
    }
    uint32_t n_index = be_get32(p + 4);
    *crc = chunk_crc_update(0, p, PACK_INDEX_HDR_LEN);
    if (n_index != s->count) {
        error_set(EIO, "pack %s: index at offset %llu lists %u entries, the pack holds %zu", s->path,
                  (unsigned long long)index_off, n_index, s->count);
        return -1;
    }
    uint64_t end = index_off + PACK_INDEX_HDR_LEN + (uint64_t)s->count * PACK_INDEX_REC_LEN + PACK_FOOTER_LEN;
    if (end > s->size) {
        error_set(EIO, "pack %s: truncated at offset %llu (the index at offset %llu and "
                  "footer need %llu bytes)", s->path, (unsigned long long)s->size,
                  (unsigned long long)index_off, (unsigned long long)(end - index_off));
        return -1;
    }
    if (end < s->size) {
        error_set(EIO, "pack %s: %llu unexpected bytes after the footer at offset %llu", s->path,
                  (unsigned long long)(s->size - end), (unsigned long long)(end - PACK_FOOTER_LEN));
        return -1;
    }
    return 0;
}

/* The index: its header, then one record per entry, then the footer,
 * which must end the file. */
static int scan_index(struct scan *s, uint64_t index_off)
{
    uint32_t crc;
    if (scan_index_hdr(s, index_off, &crc) < 0)
        return -1;
    uint64_t off = index_off + PACK_INDEX_HDR_LEN;
    for (size_t i = 0; i < s->count; i++, off += PACK_INDEX_REC_LEN) {
        struct pack_entry rec;
        const uint8_t *p = scan_need(s, off, PACK_INDEX_REC_LEN, "index record");
        if (!p)
            return -1;
        crc = chunk_crc_update(crc, p, PACK_INDEX_REC_LEN);
        pack_decode_index_rec(p, &rec);
        if (p[33] != 0 || p[34] != 0 || p[35] != 0 || !pack_entry_equal(&rec, &s->entries[i])) {
            error_set(EIO, "pack %s: index record %zu at offset %llu does not match the "
                      "entry at offset %llu", s->path, i, (unsigned long long)off,
                      (unsigned long long)s->entries[i].offset);
            return -1;
        }
    }
    const uint8_t *p = scan_need(s, off, PACK_FOOTER_LEN, "footer");
    if (!p)
        return -1;
    if (memcmp(p + 16, footer_magic, 8) != 0) {
        error_set(EIO, "pack %s: footer at offset %llu: bad magic", s->path, (unsigned long long)off);
        return -1;
    }
    if (be_get64(p) != index_off || be_get32(p + 8) != s->count) {
        error_set(EIO, "pack %s: footer at offset %llu: index offset %llu and count %u, "
                  "expected %llu and %zu", s->path, (unsigned long long)off,
                  (unsigned long long)be_get64(p), be_get32(p + 8), (unsigned long long)index_off,
                  s->count);
        return -1;
    }
    if (be_get32(p + 12) != crc) {
        error_set(EIO, "pack %s: index CRC mismatch", s->path);
        return -1;
    }
    return 0;
}

int pack_parse(const struct pack_src *src, bool check_ids,
               int (*fn)(void *opaque, const struct pack_entry *e), void *opaque)
{
    struct scan s = { .src = src, .path = src->name, .size = src->size, .check_ids = check_ids };
    int stop = 0, r = -1;

    s.cap = SCAN_BUF_SIZE;
    s.buf = malloc(s.cap);
    if (!s.buf) {
        error_set(ENOMEM, "pack %s: out of memory", s.path);
        return -1;
    }
    if (scan_header(&s) == 0) {
        int64_t index_off = scan_entries(&s, fn, opaque, &stop);
        if (stop)
            r = stop;
        else if (index_off >= 0)
            r = scan_index(&s, (uint64_t)index_off);
    }
    free(s.buf);
    free(s.entries);
    free(s.plain);
    ZSTD_freeDCtx(s.dctx);
    return r;
}

/* Exactly len bytes at off, or -1 naming what was short. */
static int read_exact(const struct pack_src *src, void *buf, size_t len, uint64_t off,
                      const char *what)
{
    ssize_t n = src->read(src->opaque, buf, len, off);
    if (n < 0) {
        error_prefix("pack %s: ", src->name);
        return -1;
    }
    if ((size_t)n < len) {
        error_set(EIO, "pack %s: truncated at offset %llu (%s at offset %llu needs %zu bytes)",
                  src->name, (unsigned long long)(off + (uint64_t)n), what,
                  (unsigned long long)off, len);
        return -1;
    }
    return 0;
}

/* The footer: where the index starts and how many records it holds, which
 * must end the pack exactly. */
static int index_footer(const struct pack_src *src, uint64_t *index_off, uint32_t *count,
                        uint32_t *crc)
{
    uint8_t f[PACK_FOOTER_LEN];

    if (src->size < PACK_FILE_HDR_LEN + PACK_INDEX_HDR_LEN + PACK_FOOTER_LEN) {
        error_set(EIO, "pack %s: truncated at offset %llu (a pack holds at least %d bytes)",
                  src->name, (unsigned long long)src->size,
                  PACK_FILE_HDR_LEN + PACK_INDEX_HDR_LEN + PACK_FOOTER_LEN);
        return -1;
    }
    uint64_t off = src->size - PACK_FOOTER_LEN;
    if (read_exact(src, f, sizeof f, off, "footer") < 0)
        return -1;
    if (memcmp(f + 16, footer_magic, 8) != 0) {
        error_set(EIO, "pack %s: footer at offset %llu: bad magic", src->name, (unsigned long long)off);
        return -1;
    }
    *index_off = be_get64(f);
    *count = be_get32(f + 8);
    *crc = be_get32(f + 12);
    uint64_t len = PACK_INDEX_HDR_LEN + (uint64_t)*count * PACK_INDEX_REC_LEN;
    if (*index_off < PACK_FILE_HDR_LEN || *index_off > off || len != off - *index_off) {
        error_set(EIO, "pack %s: footer at offset %llu: an index of %u records at offset %llu "
                  "does not end where the footer starts", src->name, (unsigned long long)off,
                  *count, (unsigned long long)*index_off);
        return -1;
    }
    return 0;
}

/* One record against the pack's layout: its entry lies after the one before
 * it (prev_end) and before the index. */
static int index_record(const struct pack_src *src, const uint8_t *p, size_t i, uint64_t index_off,
                        uint64_t *prev_end, struct pack_entry *e)
{
    pack_decode_index_rec(p, e);
    if (p[33] || p[34] || p[35] || pack_check_entry(e, EIO) < 0 || e->offset < *prev_end ||
        e->offset > index_off || PACK_ENTRY_HDR_LEN + (uint64_t)e->stored_len > index_off - e->offset) {
        error_set(EIO, "pack %s: index record %zu (entry at offset %llu, %u stored bytes) does "
                  "not fit the pack", src->name, i, (unsigned long long)e->offset, e->stored_len);
        return -1;
    }
    *prev_end = e->offset + PACK_ENTRY_HDR_LEN + e->stored_len;
    return 0;
}

int pack_parse_index(const struct pack_src *src, struct pack_entry **entries, size_t *count)
{
    uint64_t index_off, prev_end = PACK_FILE_HDR_LEN;
    uint32_t n, crc;

    *entries = NULL;
    *count = 0;
    if (index_footer(src, &index_off, &n, &crc) < 0)
        return -1;
    size_t len = PACK_INDEX_HDR_LEN + (size_t)n * PACK_INDEX_REC_LEN;
    uint8_t *buf = malloc(len);
    struct pack_entry *e = malloc((n ? n : 1) * sizeof *e);
    if (!buf || !e) {
        error_set(ENOMEM, "pack %s: out of memory", src->name);
        goto fail;
    }
    if (read_exact(src, buf, len, index_off, "index") < 0)
        goto fail;
    if (memcmp(buf, index_magic, 4) != 0 || be_get32(buf + 4) != n) {
        error_set(EIO, "pack %s: index at offset %llu: bad magic or count", src->name,
                  (unsigned long long)index_off);
        goto fail;
    }
    if (chunk_crc_update(0, buf, len) != crc) {
        error_set(EIO, "pack %s: index CRC mismatch", src->name);
        goto fail;
    }
    for (size_t i = 0; i < n; i++)
        if (index_record(src, buf + PACK_INDEX_HDR_LEN + i * PACK_INDEX_REC_LEN, i, index_off,
                         &prev_end, &e[i]) < 0)
            goto fail;
    free(buf);
    *entries = e;
    *count = n;
    return 0;
fail:
    free(buf);
    free(e);
    return -1;
}

struct mem {
    const uint8_t *data;
    size_t len;
};

static ssize_t mem_read(void *opaque, void *buf, size_t len, uint64_t off)
{
    const struct mem *m = opaque;

    if (off >= m->len)
        return 0;
    if (len > m->len - off)
        len = m->len - (size_t)off;
    memcpy(buf, m->data + off, len);
    return (ssize_t)len;
}

int pack_parse_buffer(const char *name, const void *data, size_t len, bool check_ids,
                      int (*fn)(void *opaque, const struct pack_entry *e), void *opaque)
{
    struct mem m = { data, len };
    struct pack_src src = { name, len, mem_read, &m };

    return pack_parse(&src, check_ids, fn, opaque);
}
