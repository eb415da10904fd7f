/* codec.c: the sans-I/O NBD wire codec (see codec.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "error.h"

#define VIOLATION(...) (nbd_set_error(EPROTO, __VA_ARGS__), -1)

/* ---- Output buffer ------------------------------------------------------ */

void nbd_wbuf_free(struct nbd_wbuf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

void nbd_wbuf_put(struct nbd_wbuf *b, const void *p, size_t n)
{
    if (b->failed)
        return;
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n) {
            if (cap > SIZE_MAX / 2) {
                b->failed = true;
                return;
            }
            cap *= 2;
        }
        uint8_t *d = realloc(b->data, cap);
        if (!d) {
            b->failed = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
}

void nbd_wbuf_put16(struct nbd_wbuf *b, uint16_t v)
{
    uint8_t x[2];
    nbd_put16(x, v);
    nbd_wbuf_put(b, x, 2);
}

void nbd_wbuf_put32(struct nbd_wbuf *b, uint32_t v)
{
    uint8_t x[4];
    nbd_put32(x, v);
    nbd_wbuf_put(b, x, 4);
}

void nbd_wbuf_put64(struct nbd_wbuf *b, uint64_t v)
{
    uint8_t x[8];
    nbd_put64(x, v);
    nbd_wbuf_put(b, x, 8);
}

static int wbuf_result(struct nbd_wbuf *b)
{
    if (b->failed) {
        nbd_set_error(ENOMEM, "out of memory encoding an option");
        return -1;
    }
    return 0;
}

/* ---- Handshake, client side --------------------------------------------- */

int nbd_decode_greeting_magic(const uint8_t in[16], bool *oldstyle)
{
    uint64_t magic = nbd_get64(in), version = nbd_get64(in + 8);

    if (magic != NBD_MAGIC)
        return VIOLATION("not an NBD server: bad greeting magic 0x%016llx",
                         (unsigned long long)magic);
    if (version == NBD_OLD_VERSION) {
        *oldstyle = true;
        return 0;
    }
    if (version != NBD_NEW_VERSION)
        return VIOLATION("bad greeting: unknown version magic 0x%016llx",
                         (unsigned long long)version);
    *oldstyle = false;
    return 0;
}

uint16_t nbd_decode_greeting_flags(const uint8_t in[18])
{
    return nbd_get16(in + 16);
}

void nbd_encode_client_flags(uint8_t out[4], uint32_t flags)
{
    nbd_put32(out, flags);
}

int nbd_encode_opt(struct nbd_wbuf *b, uint32_t opt, const void *data, uint32_t len)
{
    nbd_wbuf_put64(b, NBD_NEW_VERSION);
    nbd_wbuf_put32(b, opt);
    nbd_wbuf_put32(b, len);
    nbd_wbuf_put(b, data, len);
    return wbuf_result(b);
}

static int check_out_string(const char *what, const char *s, size_t *len)
{
    *len = strlen(s);
    if (*len > NBD_MAX_STRING) {
        nbd_set_error(EINVAL, "%s is longer than %d bytes", what, NBD_MAX_STRING);
        return -1;
    }
    return 0;
}

int nbd_encode_opt_export_name(struct nbd_wbuf *b, const char *name)
{
    size_t n;

    if (check_out_string("export name", name, &n) < 0)
        return -1;
    return nbd_encode_opt(b, NBD_OPT_EXPORT_NAME, name, (uint32_t)n);
}

int nbd_encode_opt_info(struct nbd_wbuf *b, uint32_t opt, const char *name,
                        const uint16_t *infos, size_t ninfos)
{
    size_t n;

    if (check_out_string("export name", name, &n) < 0)
        return -1;
    if (ninfos > 64) {
        nbd_set_error(EINVAL, "too many information requests");
        return -1;
    }
    nbd_wbuf_put64(b, NBD_NEW_VERSION);
    nbd_wbuf_put32(b, opt);
    nbd_wbuf_put32(b, (uint32_t)(4 + n + 2 + 2 * ninfos));
    nbd_wbuf_put32(b, (uint32_t)n);
    nbd_wbuf_put(b, name, n);
    nbd_wbuf_put16(b, (uint16_t)ninfos);
    for (size_t i = 0; i < ninfos; i++)
        nbd_wbuf_put16(b, infos[i]);
    return wbuf_result(b);
}

int nbd_encode_opt_meta_context(struct nbd_wbuf *b, uint32_t opt, const char *name,
                                const char *const *queries)
{
    size_t n, total, nq = 0, qlen;

    if (check_out_string("export name", name, &n) < 0)
        return -1;
    total = 4 + n + 4;
    for (; queries && queries[nq]; nq++) {
        if (check_out_string("metadata context query", queries[nq], &qlen) < 0)
            return -1;
        total += 4 + qlen;
    }
    if (nq > 1024 || total > NBD_MAX_OPT_DATA) {
        nbd_set_error(EINVAL, "too many metadata context queries");
        return -1;
    }
    nbd_wbuf_put64(b, NBD_NEW_VERSION);
    nbd_wbuf_put32(b, opt);
    nbd_wbuf_put32(b, (uint32_t)total);
    nbd_wbuf_put32(b, (uint32_t)n);
    nbd_wbuf_put(b, name, n);
    nbd_wbuf_put32(b, (uint32_t)nq);
    for (size_t i = 0; i < nq; i++) {
        qlen = strlen(queries[i]);
        nbd_wbuf_put32(b, (uint32_t)qlen);
        nbd_wbuf_put(b, queries[i], qlen);
    }
    return wbuf_result(b);
}

int nbd_decode_opt_reply(const uint8_t in[20], uint32_t expect_opt, struct nbd_opt_reply *r)
{
    uint64_t magic = nbd_get64(in);

    if (magic != NBD_OPT_REPLY_MAGIC)
        return VIOLATION("bad option reply magic 0x%016llx", (unsigned long long)magic);
    r->option = nbd_get32(in + 8);
    r->reply = nbd_get32(in + 12);
    r->length = nbd_get32(in + 16);
    if (r->option != expect_opt)
        return VIOLATION("option reply for option %u while waiting for option %u",
                         r->option, expect_opt);
    if (r->length > NBD_MAX_OPT_REPLY)
        return VIOLATION("option reply of %u bytes is over the limit of %u", r->length,
                         NBD_MAX_OPT_REPLY);
    if (r->reply == NBD_REP_ACK && r->length != 0)
        return VIOLATION("ACK with a payload of %u bytes", r->length);
    return 0;
}

int nbd_check_string(const char *what, const char *s, size_t len)
{
    if (len > NBD_MAX_STRING)
        return VIOLATION("%s of %zu bytes is over the limit of %d", what, len, NBD_MAX_STRING);
    if (memchr(s, 0, len))
        return VIOLATION("%s contains a NUL byte", what);
    return 0;
}

static bool is_pow2(uint32_t v)
{
    return v && !(v & (v - 1));
}

int nbd_decode_rep_info(const uint8_t *p, size_t len, struct nbd_rep_info *info)
{
    memset(info, 0, sizeof *info);
    if (len < 2)
        return VIOLATION("NBD_REP_INFO of %zu bytes has no type", len);
    info->type = nbd_get16(p);
    switch (info->type) {
    case NBD_INFO_EXPORT:
        if (len != 12)
            return VIOLATION("NBD_INFO_EXPORT of %zu bytes (must be 12)", len);
        info->size = nbd_get64(p + 2);
        info->flags = nbd_get16(p + 10);
        if (info->size >= UINT64_C(1) << 63)
            return VIOLATION("export size %llu is 2^63 or more",
                             (unsigned long long)info->size);
        if (!(info->flags & NBD_FLAG_HAS_FLAGS))
            return VIOLATION("transmission flags 0x%04x lack NBD_FLAG_HAS_FLAGS", info->flags);
        return 0;
    case NBD_INFO_NAME:
    case NBD_INFO_DESCRIPTION:
        info->str = (const char *)p + 2;
        info->strlen = len - 2;
        return nbd_check_string(info->type == NBD_INFO_NAME ? "export name" : "export description",
                                info->str, info->strlen);
    case NBD_INFO_BLOCK_SIZE:
        if (len != 14)
            return VIOLATION("NBD_INFO_BLOCK_SIZE of %zu bytes (must be 14)", len);
        info->min_block = nbd_get32(p + 2);
        info->pref_block = nbd_get32(p + 6);
        info->max_block = nbd_get32(p + 10);
        /* Inconsistent advertisements are ignored, as libnbd does. */
        info->block_size_valid =
            is_pow2(info->min_block) && info->min_block <= 65536 &&
            is_pow2(info->pref_block) && info->pref_block >= 512 &&
            info->pref_block >= info->min_block && info->max_block >= info->pref_block &&
            (info->max_block == UINT32_MAX || info->max_block % info->min_block == 0);
        return 0;
    default:
        return 0; /* unknown types are skipped */
    }
}

int nbd_decode_rep_server(const uint8_t *p, size_t len, const char **name, size_t *namelen,
                          const char **desc, size_t *desclen)
{
    uint32_t n;

    if (len < 4)
        return VIOLATION("NBD_REP_SERVER of %zu bytes is too short", len);
    n = nbd_get32(p);
    if (n > len - 4)
        return VIOLATION("NBD_REP_SERVER name length %u overruns the reply of %zu bytes", n, len);
    *name = (const char *)p + 4;
    *namelen = n;
    *desc = (const char *)p + 4 + n;
    *desclen = len - 4 - n;
    if (nbd_check_string("export name", *name, *namelen) < 0 ||
        nbd_check_string("export description", *desc, *desclen) < 0)
        return -1;
    return 0;
}

int nbd_decode_rep_meta_context(const uint8_t *p, size_t len, uint32_t *id,
                                const char **name, size_t *namelen)
{
    if (len < 5)
        return VIOLATION("NBD_REP_META_CONTEXT of %zu bytes is too short", len);
    *id = nbd_get32(p);
    *name = (const char *)p + 4;
    *namelen = len - 4;
    return nbd_check_string("metadata context name", *name, *namelen);
}

int nbd_decode_export_name_reply(const uint8_t in[10], uint64_t *size, uint16_t *flags)
{
    *size = nbd_get64(in);
    *flags = nbd_get16(in + 8);
    if (*size >= UINT64_C(1) << 63)
        return VIOLATION("export size %llu is 2^63 or more", (unsigned long long)*size);
    if (!(*flags & NBD_FLAG_HAS_FLAGS))
        return VIOLATION("transmission flags 0x%04x lack NBD_FLAG_HAS_FLAGS", *flags);
    return 0;
}

/* ---- Transmission -------------------------------------------------------- */

size_t nbd_encode_request(uint8_t out[32], bool extended, uint16_t flags, uint16_t type,
                          uint64_t cookie, uint64_t offset, uint64_t count)
{
    if (extended) {
        nbd_put32(out, NBD_EXTENDED_REQUEST_MAGIC);
        nbd_put16(out + 4, flags);
        nbd_put16(out + 6, type);
        nbd_put64(out + 8, cookie);
        nbd_put64(out + 16, offset);
        nbd_put64(out + 24, count);
        return NBD_EXTENDED_REQUEST_LEN;
    }
    if (count > UINT32_MAX)
        return 0;
    nbd_put32(out, NBD_REQUEST_MAGIC);
    nbd_put16(out + 4, flags);
    nbd_put16(out + 6, type);
    nbd_put64(out + 8, cookie);
    nbd_put64(out + 16, offset);
    nbd_put32(out + 24, (uint32_t)count);
    return NBD_REQUEST_LEN;
}

size_t nbd_reply_first_len(enum nbd_reply_mode mode)
{
    return mode == NBD_MODE_EXTENDED ? NBD_EXTENDED_REPLY_LEN : NBD_SIMPLE_REPLY_LEN;
}

int nbd_reply_header_len(const uint8_t *in, enum nbd_reply_mode mode, size_t *len)
{
    uint32_t magic = nbd_get32(in);

    switch (magic) {
    case NBD_SIMPLE_REPLY_MAGIC:
        if (mode == NBD_MODE_EXTENDED)
            return VIOLATION("simple reply while extended headers are in use");
        *len = NBD_SIMPLE_REPLY_LEN;
        return 0;
    case NBD_STRUCTURED_REPLY_MAGIC:
        if (mode != NBD_MODE_STRUCTURED)
            return VIOLATION("structured reply chunk while %s",
                             mode == NBD_MODE_SIMPLE ? "structured replies were not negotiated"
                                                     : "extended headers are in use");
        *len = NBD_STRUCTURED_REPLY_LEN;
        return 0;
    case NBD_EXTENDED_REPLY_MAGIC:
        if (mode != NBD_MODE_EXTENDED)
            return VIOLATION("extended reply chunk while extended headers were not negotiated");
        *len = NBD_EXTENDED_REPLY_LEN;
        return 0;
    default:
        return VIOLATION("bad reply magic 0x%08x", magic);
    }
}

int nbd_decode_reply_header(const uint8_t *in, enum nbd_reply_mode mode, struct nbd_reply_hdr *h)
{
    size_t len;

    memset(h, 0, sizeof *h);
    if (nbd_reply_header_len(in, mode, &len) < 0)
        return -1;
    h->magic = nbd_get32(in);
    if (h->magic == NBD_SIMPLE_REPLY_MAGIC) {
        h->simple = true;
        h->error = nbd_get32(in + 4);
        h->cookie = nbd_get64(in + 8);
        h->flags = NBD_REPLY_FLAG_DONE;
        return 0;
    }
    h->flags = nbd_get16(in + 4);
    h->type = nbd_get16(in + 6);
    h->cookie = nbd_get64(in + 8);
    if (h->magic == NBD_EXTENDED_REPLY_MAGIC) {
        h->offset = nbd_get64(in + 16);
        h->length = nbd_get64(in + 24);
    } else {
        h->length = nbd_get32(in + 16);
    }
    if (h->flags & ~NBD_REPLY_FLAG_DONE)
        return VIOLATION("reply chunk with unknown flags 0x%04x", h->flags);
    switch (h->type) {
    case NBD_REPLY_TYPE_NONE:
        if (h->length != 0)
            return VIOLATION("NBD_REPLY_TYPE_NONE chunk with a payload of %llu bytes",
                             (unsigned long long)h->length);
        if (!(h->flags & NBD_REPLY_FLAG_DONE))
            return VIOLATION("NBD_REPLY_TYPE_NONE chunk without NBD_REPLY_FLAG_DONE");
        return 0;
    case NBD_REPLY_TYPE_OFFSET_DATA:
        if (h->length > (uint64_t)NBD_MAX_PAYLOAD + 8)
            return VIOLATION("data chunk of %llu bytes is over the limit",
                             (unsigned long long)h->length);
        return 0;
    case NBD_REPLY_TYPE_BLOCK_STATUS:
    case NBD_REPLY_TYPE_BLOCK_STATUS_EXT:
        if (h->length > NBD_MAX_STATUS_CHUNK)
            return VIOLATION("block status chunk of %llu bytes is over the limit",
                             (unsigned long long)h->length);
        return 0;
    default:
        if (h->length > NBD_MAX_META_CHUNK)
            return VIOLATION("%s chunk of %llu bytes is over the limit",
                             h->type & NBD_REPLY_TYPE_ERROR_BIT ? "error" : "reply",
                             (unsigned long long)h->length);
        return 0;
    }
}

int nbd_decode_chunk_error(uint16_t type, const uint8_t *p, size_t len, uint32_t *err,
                           const char **msg, size_t *msglen, bool *has_offset, uint64_t *offset)
{
    uint16_t n;

    *has_offset = false;
    if (len < 6)
        return VIOLATION("error chunk of %zu bytes is too short", len);
    *err = nbd_get32(p);
    n = nbd_get16(p + 4);
    if (*err == 0)
        return VIOLATION("error chunk with error number 0");
    if (n > len - 6)
        return VIOLATION("error chunk message of %u bytes overruns the chunk", n);
    *msg = (const char *)p + 6;
    *msglen = n;
    if (type == NBD_REPLY_TYPE_ERROR) {
        if (len != 6u + n)
            return VIOLATION("NBD_REPLY_TYPE_ERROR chunk of %zu bytes with a %u-byte message",
                             len, n);
    } else if (type == NBD_REPLY_TYPE_ERROR_OFFSET) {
        if (len != 14u + n)
            return VIOLATION("NBD_REPLY_TYPE_ERROR_OFFSET chunk of %zu bytes with a %u-byte message",
                             len, n);
        *has_offset = true;
        *offset = nbd_get64(p + 6 + n);
    }
    return 0;
}

int nbd_decode_chunk_hole(const uint8_t *p, size_t len, uint64_t *offset, uint32_t *size)
{
    if (len != 12)
        return VIOLATION("hole chunk of %zu bytes (must be 12)", len);
    *offset = nbd_get64(p);
    *size = nbd_get32(p + 8);
    if (*size == 0)
        return VIOLATION("hole chunk of length 0");
    return 0;
}

int nbd_decode_chunk_status(uint16_t type, const uint8_t *p, size_t len, uint32_t *context_id,
                            size_t *count)
{
    if (type == NBD_REPLY_TYPE_BLOCK_STATUS) {
        if (len < 12 || (len - 4) % 8)
            return VIOLATION("block status chunk of %zu bytes is malformed", len);
        *context_id = nbd_get32(p);
        *count = (len - 4) / 8;
        return 0;
    }
    if (len < 24 || (len - 8) % 16)
        return VIOLATION("extended block status chunk of %zu bytes is malformed", len);
    *context_id = nbd_get32(p);
    *count = nbd_get32(p + 4);
    if (*count != (len - 8) / 16)
        return VIOLATION("extended block status chunk claims %zu descriptors in %zu bytes",
                         *count, len);
    return 0;
}

void nbd_status_entry(uint16_t type, const uint8_t *p, size_t i, uint64_t *length, uint64_t *flags)
{
    if (type == NBD_REPLY_TYPE_BLOCK_STATUS) {
        *length = nbd_get32(p + 4 + 8 * i);
        *flags = nbd_get32(p + 8 + 8 * i);
    } else {
        *length = nbd_get64(p + 8 + 16 * i);
        *flags = nbd_get64(p + 16 + 16 * i);
    }
}

/* ---- Read coverage -------------------------------------------------------- */

int nbd_cover_add(struct nbd_cover *c, uint64_t start, uint64_t len)
{
    uint64_t end = start + len; /* the caller checked the range */
    size_t lo = 0, hi = c->n;

    /* Fast path: chunks in order extend the last range. */
    if (c->n && c->iv[c->n - 1].end <= start) {
        lo = c->n;
    } else {
        while (lo < hi) { /* first range with end > start */
            size_t mid = lo + (hi - lo) / 2;
            if (c->iv[mid].end <= start)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < c->n && c->iv[lo].start < end)
            return -1; /* overlap */
    }
    c->total += len;
    if (lo > 0 && c->iv[lo - 1].end == start) {
        c->iv[lo - 1].end = end;
        if (lo < c->n && c->iv[lo].start == end) { /* fills a gap: merge */
            c->iv[lo - 1].end = c->iv[lo].end;
            memmove(&c->iv[lo], &c->iv[lo + 1], (c->n - lo - 1) * sizeof *c->iv);
            c->n--;
        }
        return 0;
    }
    if (lo < c->n && c->iv[lo].start == end) {
        c->iv[lo].start = start;
        return 0;
    }
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        struct nbd_range *iv = realloc(c->iv, cap * sizeof *iv);
        if (!iv) {
            nbd_set_error(ENOMEM, "out of memory");
            return -2;
        }
        c->iv = iv;
        c->cap = cap;
    }
    memmove(&c->iv[lo + 1], &c->iv[lo], (c->n - lo) * sizeof *c->iv);
    c->iv[lo].start = start;
    c->iv[lo].end = end;
    c->n++;
    return 0;
}

void nbd_cover_free(struct nbd_cover *c)
{
    free(c->iv);
    memset(c, 0, sizeof *c);
}

/* ---- Server side encoders ---------------------------------------------- */

void nbd_encode_greeting(uint8_t out[18], uint16_t gflags)
{
    nbd_put64(out, NBD_MAGIC);
    nbd_put64(out + 8, NBD_NEW_VERSION);
    nbd_put16(out + 16, gflags);
}

int nbd_encode_opt_reply(struct nbd_wbuf *b, uint32_t opt, uint32_t reply,
                         const void *payload, uint32_t len)
{
    nbd_wbuf_put64(b, NBD_OPT_REPLY_MAGIC);
    nbd_wbuf_put32(b, opt);
    nbd_wbuf_put32(b, reply);
    nbd_wbuf_put32(b, len);
    nbd_wbuf_put(b, payload, len);
    return wbuf_result(b);
}

size_t nbd_encode_simple_reply(uint8_t out[16], uint32_t error, uint64_t cookie)
{
    nbd_put32(out, NBD_SIMPLE_REPLY_MAGIC);
    nbd_put32(out + 4, error);
    nbd_put64(out + 8, cookie);
    return NBD_SIMPLE_REPLY_LEN;
}

size_t nbd_encode_chunk_header(uint8_t out[32], bool extended, uint16_t flags, uint16_t type,
                               uint64_t cookie, uint64_t offset, uint64_t length)
{
    if (extended) {
        nbd_put32(out, NBD_EXTENDED_REPLY_MAGIC);
        nbd_put16(out + 4, flags);
        nbd_put16(out + 6, type);
        nbd_put64(out + 8, cookie);
        nbd_put64(out + 16, offset);
        nbd_put64(out + 24, length);
        return NBD_EXTENDED_REPLY_LEN;
    }
    nbd_put32(out, NBD_STRUCTURED_REPLY_MAGIC);
    nbd_put16(out + 4, flags);
    nbd_put16(out + 6, type);
    nbd_put64(out + 8, cookie);
    nbd_put32(out + 16, (uint32_t)length);
    return NBD_STRUCTURED_REPLY_LEN;
}
