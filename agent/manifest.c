/* agent/manifest.c: encoding and decoding a point's manifest.
 *
 * Body (big-endian): u32 version; u32 header length, the JSON header; u32
 * pack count, each u8 name length, name, u64 size; u32 chunk count, each
 * hash[32], u32 pack index, u64 offset, u32 stored length, u32 plain
 * length, u8 codec, u32 crc; u64 run count, each u64 first cell, u64
 * count, u32 chunk index (MANIFEST_ZERO: zero); SHA-256 of all that.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/crypto.h>
#include <json-c/json.h>
#include <zstd.h>

#include "agent/manifest.h"
#include "common/be.h"
#include "common/error.h"
#include "common/vec.h"

#define CHUNK_REC 57
#define RUN_REC 20
/* The largest body read: 256 MiB holds some 13 million runs.  The frame's
 * claimed size is never trusted for an allocation: the body is
 * decompressed into a buffer that grows with what really comes out. */
#define MAX_BODY (256ull << 20)

int manifest_add_pack(struct manifest *m, const char *name, uint64_t size)
{
    if (VEC_RESERVE(m->packs, m->npacks, m->cap_packs, 16) < 0)
        return -1;
    struct manifest_pack *p = &m->packs[m->npacks++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->size = size;
    return 0;
}

int manifest_add_chunk(struct manifest *m, const struct catalog_chunk *ch)
{
    if (VEC_RESERVE(m->chunks, m->nchunks, m->cap_chunks, 256) < 0)
        return -1;
    m->chunks[m->nchunks++] = *ch;
    return 0;
}

int manifest_add_run(struct manifest *m, uint64_t first, uint64_t count, uint32_t chunk)
{
    if (VEC_RESERVE(m->runs, m->nruns, m->cap_runs, 256) < 0)
        return -1;
    m->runs[m->nruns++] = (struct manifest_run){ first, count, chunk };
    return 0;
}

void manifest_free(struct manifest *m)
{
    free(m->packs);
    free(m->chunks);
    free(m->runs);
    memset(m, 0, sizeof *m);
}

/* ---- Encoding ------------------------------------------------------------------ */

static char *header_json(const struct manifest *m)
{
    const struct catalog_point *p = &m->pt;
    struct json_object *j = json_object_new_object();
    char *s;

#define STR(k, v) json_object_object_add(j, k, json_object_new_string(v))
#define INT(k, v) json_object_object_add(j, k, json_object_new_int64((int64_t)(v)))
    STR("uid", m->uid);
    INT("gen", m->gen);
    STR("parent", m->parent_uid);
    STR("disk", p->disk);
    STR("kind", p->full ? "full" : "incremental");
    json_object_object_add(j, "started", json_object_new_double(p->started));
    json_object_object_add(j, "finished", json_object_new_double(p->finished));
    INT("disk_size", p->disk_size);
    INT("chunk_size", m->chunk_size);
    STR("source_uri", p->source_uri);
    STR("bitmap", p->bitmap);
    STR("source_kind", p->source_kind);
    STR("vm_uuid", p->vm_uuid);
    STR("checkpoint", p->checkpoint);
    STR("full_reason", p->full_reason);
    INT("bytes_planned", p->bytes_planned);
    INT("bytes_read", p->bytes_read);
    INT("bytes_stored", p->bytes_stored);
    INT("chunks_new", p->chunks_new);
    INT("chunks_reused", p->chunks_reused);
    STR("host", m->host);
#undef STR
#undef INT
    s = strdup(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
    json_object_put(j);
    return s;
}

int manifest_encode(const struct manifest *m, void **out, size_t *len)
{
    char *hdr = header_json(m);
    size_t hlen = hdr ? strlen(hdr) : 0;
    size_t body_len = 4 + 4 + hlen + 4 + 4 + 8 + 32;
    uint8_t *b = NULL, *p, *z = NULL;

    for (size_t i = 0; i < m->npacks; i++)
        body_len += 1 + strlen(m->packs[i].name) + 8;
    body_len += m->nchunks * CHUNK_REC + m->nruns * RUN_REC;
    if (!hdr || !(b = malloc(body_len)))
        goto oom;
    p = b;
    be_put32(p, MANIFEST_VERSION), p += 4;
    be_put32(p, (uint32_t)hlen), p += 4;
    memcpy(p, hdr, hlen), p += hlen;
    be_put32(p, (uint32_t)m->npacks), p += 4;
    for (size_t i = 0; i < m->npacks; i++) {
        size_t n = strlen(m->packs[i].name);
        *p++ = (uint8_t)n;
        memcpy(p, m->packs[i].name, n), p += n;
        be_put64(p, m->packs[i].size), p += 8;
    }
    be_put32(p, (uint32_t)m->nchunks), p += 4;
    for (size_t i = 0; i < m->nchunks; i++) {
        const struct catalog_chunk *c = &m->chunks[i];
        memcpy(p, c->hash, 32), p += 32;
        be_put32(p, (uint32_t)c->pack_id), p += 4;
        be_put64(p, c->offset), p += 8;
        be_put32(p, c->stored_len), p += 4;
        be_put32(p, c->plain_len), p += 4;
        *p++ = c->codec;
        be_put32(p, c->crc), p += 4;
    }
    be_put64(p, m->nruns), p += 8;
    for (size_t i = 0; i < m->nruns; i++) {
        be_put64(p, m->runs[i].first), p += 8;
        be_put64(p, m->runs[i].count), p += 8;
        be_put32(p, m->runs[i].chunk), p += 4;
    }
    if (gnutls_hash_fast(GNUTLS_DIG_SHA256, b, (size_t)(p - b), p) < 0) {
        error_set(EIO, "manifest: cannot hash");
        goto fail;
    }
    size_t zcap = 8 + ZSTD_compressBound(body_len);
    if (!(z = malloc(zcap)))
        goto oom;
    memcpy(z, MANIFEST_MAGIC, 8);
    size_t zn = ZSTD_compress(z + 8, zcap - 8, b, body_len, 3);
    if (ZSTD_isError(zn)) {
        error_set(EIO, "manifest: zstd: %s", ZSTD_getErrorName(zn));
        goto fail;
    }
    free(hdr);
    free(b);
    *out = z;
    *len = 8 + zn;
    return 0;
oom:
    error_set(ENOMEM, "manifest: out of memory");
fail:
    free(hdr);
    free(b);
    free(z);
    return -1;
}

/* ---- Decoding ------------------------------------------------------------------ */

struct cur {
    const uint8_t *p, *end;
    const char *name;
};

static int need(struct cur *c, uint64_t n)
{
    if ((uint64_t)(c->end - c->p) < n) {
        error_set(EINVAL, "manifest %s is damaged (truncated)", c->name);
        return -1;
    }
    return 0;
}

static int header_str(struct json_object *j, const char *k, char *out, size_t cap)
{
    struct json_object *v;
    if (!json_object_object_get_ex(j, k, &v) || !json_object_is_type(v, json_type_string))
        return -1;
    snprintf(out, cap, "%s", json_object_get_string(v));
    return 0;
}

static int header_num(struct json_object *j, const char *k, double *out)
{
    struct json_object *v;
    if (!json_object_object_get_ex(j, k, &v) ||
        !(json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)))
        return -1;
    *out = json_object_get_double(v);
    return 0;
}

static uint64_t header_u64(struct json_object *j, const char *k, int *bad)
{
    struct json_object *v;
    if (!json_object_object_get_ex(j, k, &v) || !json_object_is_type(v, json_type_int) ||
        json_object_get_int64(v) < 0) {
        *bad = 1;
        return 0;
    }
    return (uint64_t)json_object_get_int64(v);
}

static int parse_header(struct cur *c, uint32_t hlen, struct manifest *m)
{
    char *txt = strndup((const char *)c->p, hlen), kind[16] = "";
    struct json_object *j = txt ? json_tokener_parse(txt) : NULL;
    struct catalog_point *p = &m->pt;
    int bad = 0;

    free(txt);
    if (!j || !json_object_is_type(j, json_type_object)) {
        json_object_put(j);
        error_set(EINVAL, "manifest %s is damaged (its header is not JSON)", c->name);
        return -1;
    }
    bad |= header_str(j, "uid", m->uid, sizeof m->uid);
    bad |= header_str(j, "parent", m->parent_uid, sizeof m->parent_uid);
    bad |= header_str(j, "disk", p->disk, sizeof p->disk);
    bad |= header_str(j, "kind", kind, sizeof kind);
    bad |= header_num(j, "started", &p->started);
    bad |= header_num(j, "finished", &p->finished);
    bad |= header_str(j, "source_uri", p->source_uri, sizeof p->source_uri);
    bad |= header_str(j, "bitmap", p->bitmap, sizeof p->bitmap);
    bad |= header_str(j, "source_kind", p->source_kind, sizeof p->source_kind);
    bad |= header_str(j, "vm_uuid", p->vm_uuid, sizeof p->vm_uuid);
    bad |= header_str(j, "checkpoint", p->checkpoint, sizeof p->checkpoint);
    bad |= header_str(j, "full_reason", p->full_reason, sizeof p->full_reason);
    (void)header_str(j, "host", m->host, sizeof m->host);
    m->gen = (unsigned)header_u64(j, "gen", &bad);
    p->disk_size = header_u64(j, "disk_size", &bad);
    m->chunk_size = (uint32_t)header_u64(j, "chunk_size", &bad);
    p->bytes_planned = header_u64(j, "bytes_planned", &bad);
    p->bytes_read = header_u64(j, "bytes_read", &bad);
    p->bytes_stored = header_u64(j, "bytes_stored", &bad);
    p->chunks_new = header_u64(j, "chunks_new", &bad);
    p->chunks_reused = header_u64(j, "chunks_reused", &bad);
    json_object_put(j);
    p->full = !strcmp(kind, "full");
    p->complete = true;
    if (bad || (!p->full && strcmp(kind, "incremental")) || p->full != !m->parent_uid[0] ||
        !m->uid[0] || !p->disk[0] || !m->chunk_size || (m->chunk_size & (m->chunk_size - 1))) {
        error_set(EINVAL, "manifest %s is damaged (a field of its header is missing or wrong)", c->name);
        return -1;
    }
    c->p += hlen;
    return 0;
}

static int parse_tables(struct cur *c, struct manifest *m)
{
    if (need(c, 4) < 0)
        return -1;
    uint32_t np = be_get32(c->p);
    c->p += 4;
    for (uint32_t i = 0; i < np; i++) {
        char name[80];
        if (need(c, 1) < 0 || need(c, 1 + (uint64_t)c->p[0] + 8) < 0)
            return -1;
        size_t n = c->p[0];
        if (n == 0 || n >= sizeof name) {
            error_set(EINVAL, "manifest %s is damaged (a pack name)", c->name);
            return -1;
        }
        memcpy(name, c->p + 1, n);
        name[n] = 0;
        if (manifest_add_pack(m, name, be_get64(c->p + 1 + n)) < 0)
            return -1;
        c->p += 1 + n + 8;
    }
    if (need(c, 4) < 0)
        return -1;
    uint32_t nc = be_get32(c->p);
    c->p += 4;
    if (need(c, (uint64_t)nc * CHUNK_REC) < 0)
        return -1;
    for (uint32_t i = 0; i < nc; i++, c->p += CHUNK_REC) {
        struct catalog_chunk ch = { 0 };
        memcpy(ch.hash, c->p, 32);
        ch.pack_id = be_get32(c->p + 32);
        ch.offset = be_get64(c->p + 36);
        ch.stored_len = be_get32(c->p + 44);
        ch.plain_len = be_get32(c->p + 48);
        ch.codec = c->p[52];
        ch.crc = be_get32(c->p + 53);
        if ((uint64_t)ch.pack_id >= np || ch.plain_len == 0 || ch.plain_len > m->chunk_size) {
            error_set(EINVAL, "manifest %s is damaged (chunk %u)", c->name, i);
            return -1;
        }
        snprintf(ch.pack, sizeof ch.pack, "%s", m->packs[ch.pack_id].name);
        if (manifest_add_chunk(m, &ch) < 0)
            return -1;
    }
    return 0;
}

static int parse_runs(struct cur *c, struct manifest *m)
{
    uint64_t cells = (m->pt.disk_size + m->chunk_size - 1) / m->chunk_size, end = 0;

    if (need(c, 8) < 0)
        return -1;
    uint64_t nr = be_get64(c->p);
    c->p += 8;
    if (nr > (uint64_t)(c->end - c->p) / RUN_REC || need(c, nr * RUN_REC) < 0) {
        error_set(EINVAL, "manifest %s is damaged (truncated)", c->name);
        return -1;
    }
    for (uint64_t i = 0; i < nr; i++, c->p += RUN_REC) {
        uint64_t first = be_get64(c->p), count = be_get64(c->p + 8);
        uint32_t chunk = be_get32(c->p + 16);
        if (count == 0 || first < end || first > cells || count > cells - first ||
            (chunk != MANIFEST_ZERO && chunk >= m->nchunks)) {
            error_set(EINVAL, "manifest %s is damaged (run %llu)", c->name, (unsigned long long)i);
            return -1;
        }
        end = first + count;
        if (manifest_add_run(m, first, count, chunk) < 0)
            return -1;
    }
    return 0;
}

static int parse_body(const uint8_t *b, size_t len, const char *name, struct manifest *m)
{
    uint8_t d[32];
    struct cur c = { b, b + len - 32, name };

    if (len < 32 + 8 || gnutls_hash_fast(GNUTLS_DIG_SHA256, b, len - 32, d) < 0 ||
        memcmp(d, b + len - 32, 32)) {
        error_set(EINVAL, "manifest %s is damaged (its checksum does not match)", name);
        return -1;
    }
    if (be_get32(b) != MANIFEST_VERSION) {
        error_set(EINVAL, "manifest %s has version %u; this nbdvault reads version %u", name,
                  be_get32(b), MANIFEST_VERSION);
        return -1;
    }
    c.p += 4;
    uint32_t hlen = be_get32(c.p);
    c.p += 4;
    if (need(&c, hlen) < 0 || parse_header(&c, hlen, m) < 0 || parse_tables(&c, m) < 0 ||
        parse_runs(&c, m) < 0)
        return -1;
    if (c.p != c.end) {
        error_set(EINVAL, "manifest %s is damaged (bytes after its runs)", name);
        return -1;
    }
    return 0;
}

/* The frame into *out (*n bytes, exactly want): NULL, or why not. */
static const char *inflate(const uint8_t *in, size_t len, size_t want, uint8_t **out, size_t *n)
{
    ZSTD_DStream *ds = ZSTD_createDStream();
    ZSTD_inBuffer ib = { in, len, 0 };
    size_t cap = want < (1u << 20) ? want : (1u << 20);
    uint8_t *b = malloc(cap);
    const char *why = NULL;

    if (!ds || !b) {
        why = "out of memory";
        goto out;
    }
    for (;;) {
        ZSTD_outBuffer ob = { b, cap, *n };
        size_t r = ZSTD_decompressStream(ds, &ob, &ib);
        *n = ob.pos;
        if (ZSTD_isError(r)) {
            why = "is damaged (its frame does not decompress)";
            break;
        }
        if (r == 0)
            break;                 /* the frame is complete */
        if (*n > want || (ib.pos == ib.size && ob.pos < ob.size)) {
            why = "is damaged (short or long frame)";
            break;
        }
        if (ob.pos == ob.size) {
            size_t ncap = cap * 2 > want ? want + 1 : cap * 2;
            uint8_t *nb = realloc(b, ncap);
            if (!nb) {
                why = "out of memory";
                break;
            }
            b = nb;
            cap = ncap;
        }
    }
    if (!why && (*n != want || ib.pos != ib.size))
        why = "is damaged (its frame's size)";
out:
    ZSTD_freeDStream(ds);
    if (why) {
        free(b);
        b = NULL;
    }
    *out = b;
    return why;
}

int manifest_decode(const void *buf, size_t len, const char *name, struct manifest *m)
{
    const uint8_t *in = buf;
    uint8_t *b = NULL;
    int ret = -1;

    memset(m, 0, sizeof *m);
    if (len < 8 || memcmp(in, MANIFEST_MAGIC, 8)) {
        error_set(EINVAL, "%s is not an nbdvault manifest", name);
        return -1;
    }
    unsigned long long size = ZSTD_getFrameContentSize(in + 8, len - 8);
    if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN || size > MAX_BODY ||
        size < 40) {
        error_set(EINVAL, "manifest %s is damaged (its frame)", name);
        return -1;
    }
    size_t n = 0;
    const char *why = inflate(in + 8, len - 8, (size_t)size, &b, &n);
    if (why)
        error_set(why[0] == 'o' ? ENOMEM : EINVAL, "manifest %s %s", name, why);
    else
        ret = parse_body(b, n, name, m);
    free(b);
    if (ret < 0)
        manifest_free(m);
    return ret;
}
