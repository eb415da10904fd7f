/* test_codec.c: the sans-I/O codec (nbdcore/codec.c) and the client's reply
 * state machine (nbdcore/client.c) driven through a detached connection.
 *
 * Expected bytes are never produced by the codec itself: the little
 * builders below append big-endian fields one byte at a time, following
 * the layouts of NBD-NOTES §1 and §3, so that a byte-order or layout slip
 * in the codec shows up as a difference. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "nbdcore/codec.h"
#include "nbdcore/internal.h"
#include "nbdcore/nbdcore.h"

#define UNUSED __attribute__((unused))

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

/* ---- Byte builders ------------------------------------------------------ */

struct bb {
    uint8_t *d;
    size_t n, cap;
};

static void bb_put(struct bb *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        b->d = realloc(b->d, cap);
        assert_non_null(b->d);
        b->cap = cap;
    }
    if (n)
        memcpy(b->d + b->n, p, n);
    b->n += n;
}

static void bb_u8(struct bb *b, uint8_t v) { bb_put(b, &v, 1); }

static void bb_be16(struct bb *b, uint16_t v)
{
    bb_u8(b, (uint8_t)(v >> 8));
    bb_u8(b, (uint8_t)v);
}

static void bb_be32(struct bb *b, uint32_t v)
{
    for (int shift = 24; shift >= 0; shift -= 8)
        bb_u8(b, (uint8_t)(v >> shift));
}

static void bb_be64(struct bb *b, uint64_t v)
{
    for (int shift = 56; shift >= 0; shift -= 8)
        bb_u8(b, (uint8_t)(v >> shift));
}

static void bb_str(struct bb *b, const char *s) { bb_put(b, s, strlen(s)); }

static void bb_fill(struct bb *b, uint8_t v, size_t n)
{
    while (n--)
        bb_u8(b, v);
}

static void bb_free(struct bb *b)
{
    free(b->d);
    memset(b, 0, sizeof *b);
}

/* Option request header (NBD-NOTES §1.3): "IHAVEOPT", option, length. */
static void b_opt(struct bb *b, uint32_t opt, uint32_t len)
{
    bb_str(b, "IHAVEOPT");
    bb_be32(b, opt);
    bb_be32(b, len);
}

/* Option reply header (§1.4). */
static void b_opt_reply(struct bb *b, uint32_t opt, uint32_t type, uint32_t len)
{
    bb_be64(b, UINT64_C(0x0003e889045565a9));
    bb_be32(b, opt);
    bb_be32(b, type);
    bb_be32(b, len);
}

/* Compact (§3.1) or extended (§3.3) request header. */
static void b_request(struct bb *b, bool extended, uint16_t flags, uint16_t type,
                      uint64_t cookie, uint64_t offset, uint64_t count)
{
    bb_be32(b, extended ? 0x21e41c71 : 0x25609513);
    bb_be16(b, flags);
    bb_be16(b, type);
    bb_be64(b, cookie);
    bb_be64(b, offset);
    if (extended)
        bb_be64(b, count);
    else
        bb_be32(b, (uint32_t)count);
}

/* Simple reply (§3.2). */
static void b_simple(struct bb *b, uint32_t error, uint64_t cookie)
{
    bb_be32(b, 0x67446698);
    bb_be32(b, error);
    bb_be64(b, cookie);
}

/* Structured (20-byte) or extended (32-byte) chunk header; offset only
 * exists in the extended form. */
static void b_chunk(struct bb *b, enum nbd_reply_mode mode, uint16_t flags, uint16_t type,
                    uint64_t cookie, uint64_t offset, uint64_t length)
{
    if (mode == NBD_MODE_EXTENDED) {
        bb_be32(b, 0x6e8a278c);
        bb_be16(b, flags);
        bb_be16(b, type);
        bb_be64(b, cookie);
        bb_be64(b, offset);
        bb_be64(b, length);
    } else {
        bb_be32(b, 0x668e33ef);
        bb_be16(b, flags);
        bb_be16(b, type);
        bb_be64(b, cookie);
        bb_be32(b, (uint32_t)length);
    }
}

#define DONE NBD_REPLY_FLAG_DONE

/* Whole chunks. */
static void b_data(struct bb *b, enum nbd_reply_mode m, uint16_t flags, uint64_t cookie,
                   uint64_t offset, const uint8_t *data, size_t len)
{
    b_chunk(b, m, flags, NBD_REPLY_TYPE_OFFSET_DATA, cookie, 0, 8 + len);
    bb_be64(b, offset);
    bb_put(b, data, len);
}

static void b_hole(struct bb *b, enum nbd_reply_mode m, uint16_t flags, uint64_t cookie,
                   uint64_t offset, uint32_t size)
{
    b_chunk(b, m, flags, NBD_REPLY_TYPE_OFFSET_HOLE, cookie, 0, 12);
    bb_be64(b, offset);
    bb_be32(b, size);
}

static void b_error(struct bb *b, enum nbd_reply_mode m, uint16_t flags, uint64_t cookie,
                    uint32_t err, const char *msg)
{
    b_chunk(b, m, flags, NBD_REPLY_TYPE_ERROR, cookie, 0, 6 + strlen(msg));
    bb_be32(b, err);
    bb_be16(b, (uint16_t)strlen(msg));
    bb_str(b, msg);
}

static void b_none(struct bb *b, enum nbd_reply_mode m, uint64_t cookie)
{
    b_chunk(b, m, DONE, NBD_REPLY_TYPE_NONE, cookie, 0, 0);
}

/* A compact status chunk: n pairs (length, flags). */
static void b_status(struct bb *b, enum nbd_reply_mode m, uint16_t flags, uint64_t cookie,
                     uint32_t id, size_t n, const uint32_t *pairs)
{
    b_chunk(b, m, flags, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, 0, 4 + 8 * n);
    bb_be32(b, id);
    for (size_t i = 0; i < 2 * n; i++)
        bb_be32(b, pairs[i]);
}

/* An extended status chunk: n pairs of 64-bit (length, flags). */
static void b_status_ext(struct bb *b, enum nbd_reply_mode m, uint16_t flags, uint64_t cookie,
                         uint32_t id, size_t n, const uint64_t *pairs)
{
    b_chunk(b, m, flags, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, cookie, 0, 8 + 16 * n);
    bb_be32(b, id);
    bb_be32(b, (uint32_t)n);
    for (size_t i = 0; i < 2 * n; i++)
        bb_be64(b, pairs[i]);
}

/* ---- Assertions ------------------------------------------------------- */

static void assert_bytes(const uint8_t *got, size_t gotlen, const struct bb *want)
{
    if (gotlen != want->n)
        fail_msg("encoded %zu bytes, expected %zu", gotlen, want->n);
    for (size_t i = 0; i < gotlen; i++)
        if (got[i] != want->d[i])
            fail_msg("byte %zu is 0x%02x, expected 0x%02x", i, got[i], want->d[i]);
}

/* A decoder's -1 with EPROTO and a message naming the violation. */
static void assert_violation(int rc, const char *word)
{
    if (rc != -1)
        fail_msg("decoder returned %d, expected a violation about \"%s\"", rc, word);
    assert_int_equal(nbd_get_errno(), EPROTO);
    if (!strstr(nbd_get_error(), word))
        fail_msg("error \"%s\" does not mention \"%s\"", nbd_get_error(), word);
}

static void assert_ok(int rc)
{
    if (rc != 0)
        fail_msg("decoder failed: %s", nbd_get_error());
}

/* ======================================================================
 * Encoding
 * ==================================================================== */

static void test_encode_client_flags(void **state UNUSED)
{
    uint8_t out[4];
    static const uint8_t want3[4] = { 0x00, 0x00, 0x00, 0x03 };
    static const uint8_t want1[4] = { 0x00, 0x00, 0x00, 0x01 };

    nbd_encode_client_flags(out, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    assert_memory_equal(out, want3, 4);
    nbd_encode_client_flags(out, NBD_FLAG_C_FIXED_NEWSTYLE);
    assert_memory_equal(out, want1, 4);
}

/* ABORT, LIST, STARTTLS, STRUCTURED_REPLY, EXTENDED_HEADERS: no data. */
static void test_encode_opt_no_data(void **state UNUSED)
{
    static const uint32_t opts[] = { NBD_OPT_ABORT, NBD_OPT_LIST, NBD_OPT_STARTTLS,
                                     NBD_OPT_STRUCTURED_REPLY, NBD_OPT_EXTENDED_HEADERS };
    /* Fully written out once: STRUCTURED_REPLY. */
    static const uint8_t sr[16] = { 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T',
                                    0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00 };

    for (size_t i = 0; i < sizeof opts / sizeof *opts; i++) {
        struct nbd_wbuf w = { 0 };
        struct bb want = { 0 };
        b_opt(&want, opts[i], 0);
        assert_int_equal(nbd_encode_opt(&w, opts[i], NULL, 0), 0);
        assert_bytes(w.data, w.len, &want);
        if (opts[i] == NBD_OPT_STRUCTURED_REPLY)
            assert_memory_equal(w.data, sr, sizeof sr);
        nbd_wbuf_free(&w);
        bb_free(&want);
    }
}

static void test_encode_opt_appends(void **state UNUSED)
{
    struct nbd_wbuf w = { 0 };
    struct bb want = { 0 };

    b_opt(&want, NBD_OPT_STARTTLS, 0);
    b_opt(&want, NBD_OPT_STRUCTURED_REPLY, 0);
    b_opt(&want, NBD_OPT_EXPORT_NAME, 3);
    bb_str(&want, "abc");
    assert_int_equal(nbd_encode_opt(&w, NBD_OPT_STARTTLS, NULL, 0), 0);
    assert_int_equal(nbd_encode_opt(&w, NBD_OPT_STRUCTURED_REPLY, NULL, 0), 0);
    assert_int_equal(nbd_encode_opt_export_name(&w, "abc"), 0);
    assert_bytes(w.data, w.len, &want);
    nbd_wbuf_free(&w);
    bb_free(&want);
}

static char *long_string(size_t n, char ch)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, ch, n);
    s[n] = 0;
    return s;
}

static void test_encode_opt_export_name(void **state UNUSED)
{
    static const char *const names[] = { "", "disk", "vm1/sda", "\xc3\xa9t\xc3\xa9" };
    char *max = long_string(4096, 'n'), *over = long_string(4097, 'n');

    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        struct nbd_wbuf w = { 0 };
        struct bb want = { 0 };
        b_opt(&want, NBD_OPT_EXPORT_NAME, (uint32_t)strlen(names[i]));
        bb_str(&want, names[i]);
        assert_int_equal(nbd_encode_opt_export_name(&w, names[i]), 0);
        assert_bytes(w.data, w.len, &want);
        nbd_wbuf_free(&w);
        bb_free(&want);
    }

    /* 4096 bytes is the limit: accepted; one more is refused and nothing
     * is appended. */
    struct nbd_wbuf w = { 0 };
    struct bb want = { 0 };
    b_opt(&want, NBD_OPT_EXPORT_NAME, 4096);
    bb_str(&want, max);
    assert_int_equal(nbd_encode_opt_export_name(&w, max), 0);
    assert_bytes(w.data, w.len, &want);
    nbd_wbuf_free(&w);
    assert_int_equal(nbd_encode_opt_export_name(&w, over), -1);
    assert_int_equal(nbd_get_errno(), EINVAL);
    assert_non_null(strstr(nbd_get_error(), "4096"));
    assert_int_equal(w.len, 0);
    nbd_wbuf_free(&w);
    bb_free(&want);
    free(max);
    free(over);
}

/* INFO / GO: name length, name, count, info codes (§1.5). */
static void check_opt_info(uint32_t opt, const char *name, const uint16_t *infos, size_t n)
{
    struct nbd_wbuf w = { 0 };
    struct bb want = { 0 };

    b_opt(&want, opt, (uint32_t)(4 + strlen(name) + 2 + 2 * n));
    bb_be32(&want, (uint32_t)strlen(name));
    bb_str(&want, name);
    bb_be16(&want, (uint16_t)n);
    for (size_t i = 0; i < n; i++)
        bb_be16(&want, infos[i]);
    assert_int_equal(nbd_encode_opt_info(&w, opt, name, infos, n), 0);
    assert_bytes(w.data, w.len, &want);
    nbd_wbuf_free(&w);
    bb_free(&want);
}

static void test_encode_opt_info_go(void **state UNUSED)
{
    static const uint16_t bs[] = { NBD_INFO_BLOCK_SIZE };
    static const uint16_t full[] = { NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE };
    static const uint16_t all[] = { NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_INFO_DESCRIPTION,
                                    NBD_INFO_BLOCK_SIZE };
    /* Written out: GO "sda", {BLOCK_SIZE}. */
    static const uint8_t go_sda[] = {
        'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 7, 0, 0, 0, 11,
        0, 0, 0, 3, 's', 'd', 'a', 0, 1, 0, 3,
    };
    struct nbd_wbuf w = { 0 };

    for (uint32_t opt = NBD_OPT_INFO; opt <= NBD_OPT_GO; opt++) {
        check_opt_info(opt, "", NULL, 0);
        check_opt_info(opt, "sda", bs, 1);
        check_opt_info(opt, "vm1/sda", full, 3);
        check_opt_info(opt, "x", all, 4);
    }
    assert_int_equal(nbd_encode_opt_info(&w, NBD_OPT_GO, "sda", bs, 1), 0);
    assert_int_equal(w.len, sizeof go_sda);
    assert_memory_equal(w.data, go_sda, sizeof go_sda);
    nbd_wbuf_free(&w);

    char *over = long_string(4097, 'e');
    assert_int_equal(nbd_encode_opt_info(&w, NBD_OPT_GO, over, bs, 1), -1);
    assert_int_equal(nbd_get_errno(), EINVAL);
    assert_int_equal(w.len, 0);
    free(over);
    uint16_t many[65] = { 0 };
    assert_int_equal(nbd_encode_opt_info(&w, NBD_OPT_INFO, "", many, 65), -1);
    assert_int_equal(nbd_get_errno(), EINVAL);
    nbd_wbuf_free(&w);
}

/* LIST / SET_META_CONTEXT (§4.1). */
static void check_opt_meta(uint32_t opt, const char *name, const char *const *q)
{
    struct nbd_wbuf w = { 0 };
    struct bb want = { 0 }, body = { 0 };
    size_t n = 0;

    bb_be32(&body, (uint32_t)strlen(name));
    bb_str(&body, name);
    while (q && q[n])
        n++;
    bb_be32(&body, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        bb_be32(&body, (uint32_t)strlen(q[i]));
        bb_str(&body, q[i]);
    }
    b_opt(&want, opt, (uint32_t)body.n);
    bb_put(&want, body.d, body.n);
    assert_int_equal(nbd_encode_opt_meta_context(&w, opt, name, q), 0);
    assert_bytes(w.data, w.len, &want);
    nbd_wbuf_free(&w);
    bb_free(&want);
    bb_free(&body);
}

static void test_encode_opt_meta_context(void **state UNUSED)
{
    static const char *const none[] = { NULL };
    static const char *const one[] = { "base:allocation", NULL };
    static const char *const several[] = { "base:allocation", "qemu:dirty-bitmap:bm0",
                                           "qemu:allocation-depth", "qemu:", NULL };
    /* Written out: SET "d" {"base:allocation"}. */
    static const uint8_t set_d[] = {
        'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 10, 0, 0, 0, 28,
        0, 0, 0, 1, 'd', 0, 0, 0, 1, 0, 0, 0, 15,
        'b', 'a', 's', 'e', ':', 'a', 'l', 'l', 'o', 'c', 'a', 't', 'i', 'o', 'n',
    };
    struct nbd_wbuf w = { 0 };

    for (uint32_t opt = NBD_OPT_LIST_META_CONTEXT; opt <= NBD_OPT_SET_META_CONTEXT; opt++) {
        check_opt_meta(opt, "", NULL);
        check_opt_meta(opt, "", none);
        check_opt_meta(opt, "sda", one);
        check_opt_meta(opt, "vm1/sda", several);
    }
    assert_int_equal(nbd_encode_opt_meta_context(&w, NBD_OPT_SET_META_CONTEXT, "d", one), 0);
    assert_int_equal(w.len, sizeof set_d);
    assert_memory_equal(w.data, set_d, sizeof set_d);
    nbd_wbuf_free(&w);

    char *over = long_string(4097, 'q');
    const char *const bad[] = { "base:allocation", over, NULL };
    assert_int_equal(nbd_encode_opt_meta_context(&w, NBD_OPT_SET_META_CONTEXT, "", bad), -1);
    assert_int_equal(nbd_get_errno(), EINVAL);
    assert_int_equal(nbd_encode_opt_meta_context(&w, NBD_OPT_LIST_META_CONTEXT, over, one), -1);
    assert_int_equal(nbd_get_errno(), EINVAL);
    assert_int_equal(w.len, 0);
    nbd_wbuf_free(&w);
    free(over);
}

/* Every command, compact and extended. */
static void test_encode_requests(void **state UNUSED)
{
    static const struct {
        uint16_t type, flags;
        uint64_t offset, count;
    } reqs[] = {
        { NBD_CMD_READ, 0, 0, 512 },
        { NBD_CMD_READ, NBD_CMD_FLAG_DF | NBD_CMD_FLAG_FUA, 0x123456789a, 65536 },
        { NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 4096, 1048576 },
        { NBD_CMD_DISC, 0, 0, 0 },
        { NBD_CMD_FLUSH, 0, 0, 0 },
        { NBD_CMD_TRIM, 0, GiB, 2 * GiB },
        { NBD_CMD_CACHE, 0, 7, 9 },
        { NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO, 0xfffff000, 0x1000 },
        { NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, UINT64_C(0x7fffffff00000000), 0xffffffff },
    };
    uint8_t out[32];

    for (size_t i = 0; i < sizeof reqs / sizeof *reqs; i++) {
        for (int ext = 0; ext <= 1; ext++) {
            struct bb want = { 0 };
            uint64_t cookie = UINT64_C(0x0102030405060708) + i;
            b_request(&want, ext, reqs[i].flags, reqs[i].type, cookie, reqs[i].offset,
                      reqs[i].count);
            memset(out, 0xee, sizeof out);
            size_t n = nbd_encode_request(out, ext, reqs[i].flags, reqs[i].type, cookie,
                                          reqs[i].offset, reqs[i].count);
            assert_int_equal(n, ext ? 32 : 28);
            assert_bytes(out, n, &want);
            bb_free(&want);
        }
    }

    /* Written out: compact READ, cookie 1, 0x1000+65536. */
    static const uint8_t read28[28] = {
        0x25, 0x60, 0x95, 0x13, 0x00, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 1,
        0, 0, 0, 0, 0, 0, 0x10, 0x00, 0x00, 0x01, 0x00, 0x00,
    };
    /* Written out: extended WRITE with PAYLOAD_LEN, cookie 2, 0+5 GiB. */
    static const uint8_t write32[32] = {
        0x21, 0xe4, 0x1c, 0x71, 0x00, 0x20, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 2,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x40, 0x00, 0x00, 0x00,
    };
    assert_int_equal(nbd_encode_request(out, false, 0, NBD_CMD_READ, 1, 0x1000, 65536), 28);
    assert_memory_equal(out, read28, 28);
    assert_int_equal(nbd_encode_request(out, true, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_WRITE, 2, 0,
                                        5 * GiB),
                     32);
    assert_memory_equal(out, write32, 32);

    /* Compact counts are 32 bits: 2^32-1 fits, 2^32 is refused. */
    assert_int_equal(nbd_encode_request(out, false, 0, NBD_CMD_TRIM, 1, 0, UINT32_MAX), 28);
    assert_int_equal(nbd_encode_request(out, false, 0, NBD_CMD_TRIM, 1, 0,
                                        (uint64_t)UINT32_MAX + 1),
                     0);
    assert_int_equal(nbd_encode_request(out, false, 0, NBD_CMD_READ, 1, 0, UINT64_MAX), 0);
    assert_int_equal(nbd_encode_request(out, true, 0, NBD_CMD_TRIM, 1, 0,
                                        (uint64_t)UINT32_MAX + 1),
                     32);
}

/* The server-side encoders, against the same layouts. */
static void test_encode_server_side(void **state UNUSED)
{
    uint8_t out[32];
    struct bb want = { 0 };
    struct nbd_wbuf w = { 0 };
    static const uint8_t greeting[18] = { 'N', 'B', 'D', 'M', 'A', 'G', 'I', 'C',
                                          'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 3 };

    nbd_encode_greeting(out, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    assert_memory_equal(out, greeting, 18);

    b_opt_reply(&want, NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, 2);
    bb_str(&want, "no");
    assert_int_equal(nbd_encode_opt_reply(&w, NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, "no", 2), 0);
    assert_bytes(w.data, w.len, &want);
    nbd_wbuf_free(&w);
    bb_free(&want);

    b_simple(&want, NBD_EIO, 77);
    assert_int_equal(nbd_encode_simple_reply(out, NBD_EIO, 77), 16);
    assert_bytes(out, 16, &want);
    bb_free(&want);

    b_chunk(&want, NBD_MODE_STRUCTURED, DONE, NBD_REPLY_TYPE_OFFSET_DATA, 5, 0, 4104);
    assert_int_equal(nbd_encode_chunk_header(out, false, DONE, NBD_REPLY_TYPE_OFFSET_DATA, 5, 99,
                                             4104),
                     20);
    assert_bytes(out, 20, &want);
    bb_free(&want);

    b_chunk(&want, NBD_MODE_EXTENDED, 0, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, 6, 8 * GiB, 40);
    assert_int_equal(nbd_encode_chunk_header(out, true, 0, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, 6,
                                             8 * GiB, 40),
                     32);
    assert_bytes(out, 32, &want);
    bb_free(&want);
}

/* ======================================================================
 * Decoding: handshake
 * ==================================================================== */

static void test_decode_greeting(void **state UNUSED)
{
    struct bb b = { 0 };
    bool old = true;

    bb_str(&b, "NBDMAGICIHAVEOPT");
    bb_be16(&b, 3);
    assert_ok(nbd_decode_greeting_magic(b.d, &old));
    assert_false(old);
    assert_int_equal(nbd_decode_greeting_flags(b.d), 3);
    bb_free(&b);

    bb_str(&b, "NBDMAGIC");
    bb_be64(&b, UINT64_C(0x0000420281861253));
    assert_ok(nbd_decode_greeting_magic(b.d, &old));
    assert_true(old);
    bb_free(&b);

    bb_str(&b, "NBDMAGIXIHAVEOPT");
    assert_violation(nbd_decode_greeting_magic(b.d, &old), "magic");
    bb_free(&b);

    bb_str(&b, "NBDMAGICIHAVEOPX");
    assert_violation(nbd_decode_greeting_magic(b.d, &old), "version");
    bb_free(&b);
}

static void test_decode_export_name_reply(void **state UNUSED)
{
    struct bb b = { 0 };
    uint64_t size;
    uint16_t flags;

    bb_be64(&b, 10 * GiB);
    bb_be16(&b, 0x0ced);
    bb_fill(&b, 0, 124);
    assert_ok(nbd_decode_export_name_reply(b.d, &size, &flags));
    assert_int_equal(size, 10 * GiB);
    assert_int_equal(flags, 0x0ced);
    bb_free(&b);

    bb_be64(&b, UINT64_C(1) << 63);
    bb_be16(&b, 1);
    assert_violation(nbd_decode_export_name_reply(b.d, &size, &flags), "2^63");
    bb_free(&b);

    bb_be64(&b, 4096);
    bb_be16(&b, 0x0004);
    assert_violation(nbd_decode_export_name_reply(b.d, &size, &flags), "HAS_FLAGS");
    bb_free(&b);
}

static void test_decode_opt_reply_header(void **state UNUSED)
{
    struct bb b = { 0 };
    struct nbd_opt_reply r;

    b_opt_reply(&b, NBD_OPT_GO, NBD_REP_ACK, 0);
    assert_ok(nbd_decode_opt_reply(b.d, NBD_OPT_GO, &r));
    assert_int_equal(r.option, NBD_OPT_GO);
    assert_int_equal(r.reply, NBD_REP_ACK);
    assert_int_equal(r.length, 0);
    bb_free(&b);

    /* Every reply kind with a payload. */
    static const uint32_t kinds[] = { NBD_REP_SERVER, NBD_REP_INFO, NBD_REP_META_CONTEXT };
    for (size_t i = 0; i < 3; i++) {
        b_opt_reply(&b, NBD_OPT_LIST, kinds[i], 40);
        assert_ok(nbd_decode_opt_reply(b.d, NBD_OPT_LIST, &r));
        assert_int_equal(r.reply, kinds[i]);
        assert_int_equal(r.length, 40);
        bb_free(&b);
    }

    /* Error replies, with or without a message. */
    for (uint32_t e = NBD_REP_ERR_UNSUP; e <= NBD_REP_ERR_EXT_HEADER_REQD; e++) {
        b_opt_reply(&b, NBD_OPT_STRUCTURED_REPLY, e, e & 1 ? 11 : 0);
        assert_ok(nbd_decode_opt_reply(b.d, NBD_OPT_STRUCTURED_REPLY, &r));
        assert_int_equal(r.reply, e);
        assert_true(r.reply & NBD_REP_FLAG_ERROR);
        bb_free(&b);
    }
    /* An unknown error, an unknown reply type: the caller decides. */
    b_opt_reply(&b, NBD_OPT_INFO, NBD_REP_FLAG_ERROR | 99, 0);
    assert_ok(nbd_decode_opt_reply(b.d, NBD_OPT_INFO, &r));
    bb_free(&b);

    /* The limit is 64 KiB. */
    b_opt_reply(&b, NBD_OPT_LIST, NBD_REP_SERVER, 65536);
    assert_ok(nbd_decode_opt_reply(b.d, NBD_OPT_LIST, &r));
    bb_free(&b);
    b_opt_reply(&b, NBD_OPT_LIST, NBD_REP_SERVER, 65537);
    assert_violation(nbd_decode_opt_reply(b.d, NBD_OPT_LIST, &r), "over the limit");
    bb_free(&b);
    b_opt_reply(&b, NBD_OPT_LIST, NBD_REP_ERR_INVALID, UINT32_MAX);
    assert_violation(nbd_decode_opt_reply(b.d, NBD_OPT_LIST, &r), "over the limit");
    bb_free(&b);

    b_opt_reply(&b, NBD_OPT_GO, NBD_REP_ACK, 1);
    assert_violation(nbd_decode_opt_reply(b.d, NBD_OPT_GO, &r), "ACK");
    bb_free(&b);

    b_opt_reply(&b, NBD_OPT_INFO, NBD_REP_ACK, 0);
    assert_violation(nbd_decode_opt_reply(b.d, NBD_OPT_GO, &r), "option 6");
    bb_free(&b);

    bb_be64(&b, UINT64_C(0x0003e889045565aa));
    bb_be32(&b, NBD_OPT_GO);
    bb_be32(&b, NBD_REP_ACK);
    bb_be32(&b, 0);
    assert_violation(nbd_decode_opt_reply(b.d, NBD_OPT_GO, &r), "magic");
    bb_free(&b);
}

static void test_decode_rep_server(void **state UNUSED)
{
    struct bb b = { 0 };
    const char *name, *desc;
    size_t nlen, dlen;

    bb_be32(&b, 4);
    bb_str(&b, "disk");
    bb_str(&b, "the disk");
    assert_ok(nbd_decode_rep_server(b.d, b.n, &name, &nlen, &desc, &dlen));
    assert_int_equal(nlen, 4);
    assert_memory_equal(name, "disk", 4);
    assert_int_equal(dlen, 8);
    assert_memory_equal(desc, "the disk", 8);
    bb_free(&b);

    /* The default export, no description. */
    bb_be32(&b, 0);
    assert_ok(nbd_decode_rep_server(b.d, b.n, &name, &nlen, &desc, &dlen));
    assert_int_equal(nlen, 0);
    assert_int_equal(dlen, 0);
    bb_free(&b);

    bb_be32(&b, 5);
    bb_str(&b, "disk");
    assert_violation(nbd_decode_rep_server(b.d, b.n, &name, &nlen, &desc, &dlen), "overruns");
    bb_free(&b);
    bb_be32(&b, UINT32_MAX);
    bb_str(&b, "disk");
    assert_violation(nbd_decode_rep_server(b.d, b.n, &name, &nlen, &desc, &dlen), "overruns");
    bb_free(&b);

    bb_fill(&b, 0, 3);
    assert_violation(nbd_decode_rep_server(b.d, b.n, &name, &nlen, &desc, &dlen), "too short");
    bb_free(&b);

    bb_be32(&b, 3);
    bb_put(&b, "d\0k", 3);
    assert_violation(nbd_decode_rep_server(b.d, b.n, &name, &nlen, &desc, &dlen), "NUL");
    bb_free(&b);

    bb_be32(&b, 1);
    bb_put(&b, "dde\0sc", 6);
    assert_violation(nbd_decode_rep_server(b.d, b.n, &name, &nlen, &desc, &dlen), "NUL");
    bb_free(&b);

    bb_be32(&b, 4097);
    bb_fill(&b, 'a', 4097);
    assert_violation(nbd_decode_rep_server(b.d, b.n, &name, &nlen, &desc, &dlen), "4096");
    bb_free(&b);

    bb_be32(&b, 4096);
    bb_fill(&b, 'a', 4096);
    assert_ok(nbd_decode_rep_server(b.d, b.n, &name, &nlen, &desc, &dlen));
    bb_fill(&b, 'b', 4097);
    assert_violation(nbd_decode_rep_server(b.d, b.n, &name, &nlen, &desc, &dlen), "description");
    bb_free(&b);
}

static void info_export(struct bb *b, uint64_t size, uint16_t flags)
{
    bb_be16(b, NBD_INFO_EXPORT);
    bb_be64(b, size);
    bb_be16(b, flags);
}

static void info_block_size(struct bb *b, uint32_t min, uint32_t pref, uint32_t max)
{
    bb_be16(b, NBD_INFO_BLOCK_SIZE);
    bb_be32(b, min);
    bb_be32(b, pref);
    bb_be32(b, max);
}

static void test_decode_rep_info(void **state UNUSED)
{
    struct bb b = { 0 };
    struct nbd_rep_info ri;

    /* EXPORT */
    info_export(&b, 1 * GiB, 0x048f);
    assert_ok(nbd_decode_rep_info(b.d, b.n, &ri));
    assert_int_equal(ri.type, NBD_INFO_EXPORT);
    assert_int_equal(ri.size, GiB);
    assert_int_equal(ri.flags, 0x048f);
    bb_free(&b);
    info_export(&b, (UINT64_C(1) << 63) - 1, 1);
    assert_ok(nbd_decode_rep_info(b.d, b.n, &ri));
    bb_free(&b);
    info_export(&b, UINT64_C(1) << 63, 1);
    assert_violation(nbd_decode_rep_info(b.d, b.n, &ri), "2^63");
    bb_free(&b);
    info_export(&b, UINT64_MAX, 1);
    assert_violation(nbd_decode_rep_info(b.d, b.n, &ri), "2^63");
    bb_free(&b);
    info_export(&b, 4096, 0x0002);
    assert_violation(nbd_decode_rep_info(b.d, b.n, &ri), "HAS_FLAGS");
    bb_free(&b);
    info_export(&b, 4096, 1);
    bb_u8(&b, 0);
    assert_violation(nbd_decode_rep_info(b.d, b.n, &ri), "must be 12");
    assert_violation(nbd_decode_rep_info(b.d, 11, &ri), "must be 12");
    assert_violation(nbd_decode_rep_info(b.d, 2, &ri), "must be 12");
    bb_free(&b);

    /* NAME and DESCRIPTION */
    for (uint16_t t = NBD_INFO_NAME; t <= NBD_INFO_DESCRIPTION; t++) {
        bb_be16(&b, t);
        bb_str(&b, "vm1/sda");
        assert_ok(nbd_decode_rep_info(b.d, b.n, &ri));
        assert_int_equal(ri.type, t);
        assert_int_equal(ri.strlen, 7);
        assert_memory_equal(ri.str, "vm1/sda", 7);
        bb_free(&b);

        bb_be16(&b, t);
        assert_ok(nbd_decode_rep_info(b.d, b.n, &ri)); /* empty */
        assert_int_equal(ri.strlen, 0);
        bb_put(&b, "a\0b", 3);
        assert_violation(nbd_decode_rep_info(b.d, b.n, &ri), "NUL");
        bb_free(&b);

        bb_be16(&b, t);
        bb_fill(&b, 'x', 4096);
        assert_ok(nbd_decode_rep_info(b.d, b.n, &ri));
        bb_u8(&b, 'x');
        assert_violation(nbd_decode_rep_info(b.d, b.n, &ri), "4096");
        assert_non_null(strstr(nbd_get_error(),
                               t == NBD_INFO_NAME ? "export name" : "export description"));
        bb_free(&b);
    }

    /* BLOCK_SIZE: consistent ones are valid, inconsistent ones decode but
     * are flagged to be ignored. */
    static const struct {
        uint32_t min, pref, max;
        bool valid;
    } bs[] = {
        { 1, 4096, 32 * MiB, true },
        { 512, 4096, 0xffffffff, true },
        { 65536, 65536, 65536, true },
        { 4096, 4096, 3 * 4096, true },   /* max need not be a power of 2 */
        { 0, 4096, 32 * MiB, false },     /* min 0 */
        { 3, 4096, 32 * MiB, false },     /* min not a power of 2 */
        { 131072, 131072, 32 * MiB, false }, /* min over 64 KiB */
        { 512, 256, 32 * MiB, false },    /* pref under 512 */
        { 512, 3000, 32 * MiB, false },   /* pref not a power of 2 */
        { 8192, 4096, 32 * MiB, false },  /* min > pref */
        { 512, 4096, 2048, false },       /* pref > max */
        { 4096, 4096, 4096 * 3 + 512, false }, /* max not a multiple of min */
    };
    for (size_t i = 0; i < sizeof bs / sizeof *bs; i++) {
        info_block_size(&b, bs[i].min, bs[i].pref, bs[i].max);
        assert_ok(nbd_decode_rep_info(b.d, b.n, &ri));
        assert_int_equal(ri.type, NBD_INFO_BLOCK_SIZE);
        assert_int_equal(ri.min_block, bs[i].min);
        assert_int_equal(ri.pref_block, bs[i].pref);
        assert_int_equal(ri.max_block, bs[i].max);
        if (ri.block_size_valid != bs[i].valid)
            fail_msg("block size %u/%u/%u: valid=%d, expected %d", bs[i].min, bs[i].pref,
                     bs[i].max, ri.block_size_valid, bs[i].valid);
        bb_free(&b);
    }
    info_block_size(&b, 512, 4096, 32 * MiB);
    assert_violation(nbd_decode_rep_info(b.d, 13, &ri), "must be 14");
    bb_u8(&b, 0);
    assert_violation(nbd_decode_rep_info(b.d, b.n, &ri), "must be 14");
    bb_free(&b);

    /* Unknown types are skipped whatever their payload. */
    bb_be16(&b, 4);
    bb_put(&b, "\0\0\xff", 3);
    assert_ok(nbd_decode_rep_info(b.d, b.n, &ri));
    assert_int_equal(ri.type, 4);
    bb_free(&b);
    bb_be16(&b, 0xffff);
    assert_ok(nbd_decode_rep_info(b.d, b.n, &ri));
    assert_int_equal(ri.type, 0xffff);
    bb_free(&b);

    /* No room for the type. */
    bb_u8(&b, 0);
    assert_violation(nbd_decode_rep_info(b.d, 1, &ri), "no type");
    assert_violation(nbd_decode_rep_info(b.d, 0, &ri), "no type");
    bb_free(&b);
}

static void test_decode_rep_meta_context(void **state UNUSED)
{
    struct bb b = { 0 };
    uint32_t id;
    const char *name;
    size_t nlen;

    bb_be32(&b, 0x01020304);
    bb_str(&b, "qemu:dirty-bitmap:bm0");
    assert_ok(nbd_decode_rep_meta_context(b.d, b.n, &id, &name, &nlen));
    assert_int_equal(id, 0x01020304);
    assert_int_equal(nlen, 21);
    assert_memory_equal(name, "qemu:dirty-bitmap:bm0", 21);
    bb_free(&b);

    bb_be32(&b, 0);
    assert_violation(nbd_decode_rep_meta_context(b.d, b.n, &id, &name, &nlen), "too short");
    bb_put(&b, "base\0x", 6);
    assert_violation(nbd_decode_rep_meta_context(b.d, b.n, &id, &name, &nlen), "NUL");
    bb_free(&b);

    bb_be32(&b, 1);
    bb_fill(&b, 'c', 4096);
    assert_ok(nbd_decode_rep_meta_context(b.d, b.n, &id, &name, &nlen));
    bb_u8(&b, 'c');
    assert_violation(nbd_decode_rep_meta_context(b.d, b.n, &id, &name, &nlen), "4096");
    bb_free(&b);
}

static void test_check_string(void **state UNUSED)
{
    char *s = long_string(4097, 's');

    assert_ok(nbd_check_string("thing", "", 0));
    assert_ok(nbd_check_string("thing", s, 4096));
    assert_violation(nbd_check_string("thing", s, 4097), "thing");
    assert_violation(nbd_check_string("thing", "a\0b", 3), "NUL");
    free(s);
}

/* ======================================================================
 * Decoding: reply headers and chunk payloads
 * ==================================================================== */

static void test_reply_first_len(void **state UNUSED)
{
    assert_int_equal(nbd_reply_first_len(NBD_MODE_SIMPLE), 16);
    assert_int_equal(nbd_reply_first_len(NBD_MODE_STRUCTURED), 16);
    assert_int_equal(nbd_reply_first_len(NBD_MODE_EXTENDED), 32);
}

static void test_decode_simple_reply(void **state UNUSED)
{
    struct bb b = { 0 };
    struct nbd_reply_hdr h;
    size_t len;

    b_simple(&b, NBD_EPERM, UINT64_C(0xdeadbeefcafe0001));
    for (int m = NBD_MODE_SIMPLE; m <= NBD_MODE_STRUCTURED; m++) {
        assert_ok(nbd_reply_header_len(b.d, m, &len));
        assert_int_equal(len, 16);
        assert_ok(nbd_decode_reply_header(b.d, m, &h));
        assert_true(h.simple);
        assert_int_equal(h.magic, NBD_SIMPLE_REPLY_MAGIC);
        assert_int_equal(h.error, NBD_EPERM);
        assert_int_equal(h.cookie, UINT64_C(0xdeadbeefcafe0001));
        assert_int_equal(h.flags, DONE);
        assert_int_equal(h.length, 0);
    }
    /* Forbidden once extended headers are on (even padded to 32 bytes). */
    bb_fill(&b, 0, 16);
    assert_violation(nbd_reply_header_len(b.d, NBD_MODE_EXTENDED, &len), "simple reply");
    assert_violation(nbd_decode_reply_header(b.d, NBD_MODE_EXTENDED, &h), "simple reply");
    bb_free(&b);

    bb_be32(&b, 0x67446699);
    bb_fill(&b, 0, 28);
    for (int m = NBD_MODE_SIMPLE; m <= NBD_MODE_EXTENDED; m++) {
        assert_violation(nbd_reply_header_len(b.d, m, &len), "magic");
        assert_violation(nbd_decode_reply_header(b.d, m, &h), "magic");
    }
    bb_free(&b);
}

static void test_decode_structured_header(void **state UNUSED)
{
    struct bb b = { 0 };
    struct nbd_reply_hdr h;
    size_t len;

    b_chunk(&b, NBD_MODE_STRUCTURED, DONE, NBD_REPLY_TYPE_OFFSET_DATA, 42, 0, 4104);
    assert_ok(nbd_reply_header_len(b.d, NBD_MODE_STRUCTURED, &len));
    assert_int_equal(len, 20);
    assert_ok(nbd_decode_reply_header(b.d, NBD_MODE_STRUCTURED, &h));
    assert_false(h.simple);
    assert_int_equal(h.magic, NBD_STRUCTURED_REPLY_MAGIC);
    assert_int_equal(h.flags, DONE);
    assert_int_equal(h.type, NBD_REPLY_TYPE_OFFSET_DATA);
    assert_int_equal(h.cookie, 42);
    assert_int_equal(h.length, 4104);
    /* Not negotiated, or superseded by extended headers. */
    bb_fill(&b, 0, 12);
    assert_violation(nbd_reply_header_len(b.d, NBD_MODE_SIMPLE, &len), "not negotiated");
    assert_violation(nbd_decode_reply_header(b.d, NBD_MODE_SIMPLE, &h), "not negotiated");
    assert_violation(nbd_reply_header_len(b.d, NBD_MODE_EXTENDED, &len), "extended");
    assert_violation(nbd_decode_reply_header(b.d, NBD_MODE_EXTENDED, &h), "extended");
    bb_free(&b);
}

static void test_decode_extended_header(void **state UNUSED)
{
    struct bb b = { 0 };
    struct nbd_reply_hdr h;
    size_t len;

    b_chunk(&b, NBD_MODE_EXTENDED, 0, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, UINT64_MAX, 6 * GiB, 40);
    assert_ok(nbd_reply_header_len(b.d, NBD_MODE_EXTENDED, &len));
    assert_int_equal(len, 32);
    assert_ok(nbd_decode_reply_header(b.d, NBD_MODE_EXTENDED, &h));
    assert_false(h.simple);
    assert_int_equal(h.magic, NBD_EXTENDED_REPLY_MAGIC);
    assert_int_equal(h.flags, 0);
    assert_int_equal(h.type, NBD_REPLY_TYPE_BLOCK_STATUS_EXT);
    assert_int_equal(h.cookie, UINT64_MAX);
    assert_int_equal(h.offset, 6 * GiB);
    assert_int_equal(h.length, 40);
    assert_violation(nbd_reply_header_len(b.d, NBD_MODE_STRUCTURED, &len), "not negotiated");
    assert_violation(nbd_reply_header_len(b.d, NBD_MODE_SIMPLE, &len), "not negotiated");
    bb_free(&b);

    /* A 64-bit length the caps refuse. */
    b_chunk(&b, NBD_MODE_EXTENDED, DONE, NBD_REPLY_TYPE_OFFSET_DATA, 1, 0, UINT64_C(1) << 40);
    assert_violation(nbd_decode_reply_header(b.d, NBD_MODE_EXTENDED, &h), "over the limit");
    bb_free(&b);
    b_chunk(&b, NBD_MODE_EXTENDED, DONE, NBD_REPLY_TYPE_ERROR, 1, 0, UINT64_MAX);
    assert_violation(nbd_decode_reply_header(b.d, NBD_MODE_EXTENDED, &h), "over the limit");
    bb_free(&b);
}

static void test_decode_chunk_header_rules(void **state UNUSED)
{
    struct nbd_reply_hdr h;

    for (int m = NBD_MODE_STRUCTURED; m <= NBD_MODE_EXTENDED; m++) {
        struct bb b = { 0 };

        /* Unknown flags. */
        b_chunk(&b, m, DONE | 2, NBD_REPLY_TYPE_NONE, 1, 0, 0);
        assert_violation(nbd_decode_reply_header(b.d, m, &h), "flags");
        bb_free(&b);
        b_chunk(&b, m, 0x8000, NBD_REPLY_TYPE_OFFSET_DATA, 1, 0, 9);
        assert_violation(nbd_decode_reply_header(b.d, m, &h), "flags");
        bb_free(&b);

        /* NONE: empty and final. */
        b_chunk(&b, m, DONE, NBD_REPLY_TYPE_NONE, 1, 0, 0);
        assert_ok(nbd_decode_reply_header(b.d, m, &h));
        bb_free(&b);
        b_chunk(&b, m, DONE, NBD_REPLY_TYPE_NONE, 1, 0, 1);
        assert_violation(nbd_decode_reply_header(b.d, m, &h), "payload");
        bb_free(&b);
        b_chunk(&b, m, 0, NBD_REPLY_TYPE_NONE, 1, 0, 0);
        assert_violation(nbd_decode_reply_header(b.d, m, &h), "DONE");
        bb_free(&b);

        /* Caps: data 64 MiB + 8, status 8 + 16 * 2^20, others 64 KiB. */
        b_chunk(&b, m, 0, NBD_REPLY_TYPE_OFFSET_DATA, 1, 0, 64 * MiB + 8);
        assert_ok(nbd_decode_reply_header(b.d, m, &h));
        bb_free(&b);
        b_chunk(&b, m, 0, NBD_REPLY_TYPE_OFFSET_DATA, 1, 0, 64 * MiB + 9);
        assert_violation(nbd_decode_reply_header(b.d, m, &h), "data chunk");
        bb_free(&b);
        for (uint16_t t = NBD_REPLY_TYPE_BLOCK_STATUS; t <= NBD_REPLY_TYPE_BLOCK_STATUS_EXT; t++) {
            b_chunk(&b, m, 0, t, 1, 0, 8 + 16 * MiB);
            assert_ok(nbd_decode_reply_header(b.d, m, &h));
            bb_free(&b);
            b_chunk(&b, m, 0, t, 1, 0, 9 + 16 * MiB);
            assert_violation(nbd_decode_reply_header(b.d, m, &h), "block status chunk");
            bb_free(&b);
        }
        static const uint16_t meta[] = { NBD_REPLY_TYPE_OFFSET_HOLE, NBD_REPLY_TYPE_ERROR,
                                         NBD_REPLY_TYPE_ERROR_OFFSET, 0x8003, 77 };
        for (size_t i = 0; i < sizeof meta / sizeof *meta; i++) {
            b_chunk(&b, m, 0, meta[i], 1, 0, 65536);
            assert_ok(nbd_decode_reply_header(b.d, m, &h));
            bb_free(&b);
            b_chunk(&b, m, 0, meta[i], 1, 0, 65537);
            assert_violation(nbd_decode_reply_header(b.d, m, &h),
                             meta[i] & 0x8000 ? "error chunk" : "over the limit");
            bb_free(&b);
        }
    }
}

static void test_decode_chunk_error(void **state UNUSED)
{
    struct bb b = { 0 };
    uint32_t err;
    const char *msg;
    size_t mlen;
    bool has_off;
    uint64_t off;

    bb_be32(&b, NBD_EIO);
    bb_be16(&b, 4);
    bb_str(&b, "boom");
    assert_ok(nbd_decode_chunk_error(NBD_REPLY_TYPE_ERROR, b.d, b.n, &err, &msg, &mlen, &has_off,
                                     &off));
    assert_int_equal(err, NBD_EIO);
    assert_int_equal(mlen, 4);
    assert_memory_equal(msg, "boom", 4);
    assert_false(has_off);
    /* One byte too many for ERROR; an unknown error type tolerates it. */
    bb_u8(&b, 0);
    assert_violation(nbd_decode_chunk_error(NBD_REPLY_TYPE_ERROR, b.d, b.n, &err, &msg, &mlen,
                                            &has_off, &off),
                     "4-byte message");
    assert_ok(nbd_decode_chunk_error(0x8003, b.d, b.n, &err, &msg, &mlen, &has_off, &off));
    assert_false(has_off);
    assert_int_equal(mlen, 4);
    /* Not the 8 offset bytes ERROR_OFFSET needs. */
    assert_violation(nbd_decode_chunk_error(NBD_REPLY_TYPE_ERROR_OFFSET, b.d, b.n, &err, &msg,
                                            &mlen, &has_off, &off),
                     "ERROR_OFFSET");
    bb_free(&b);

    /* Empty message. */
    bb_be32(&b, NBD_EINVAL);
    bb_be16(&b, 0);
    assert_ok(nbd_decode_chunk_error(NBD_REPLY_TYPE_ERROR, b.d, b.n, &err, &msg, &mlen, &has_off,
                                     &off));
    assert_int_equal(err, NBD_EINVAL);
    assert_int_equal(mlen, 0);
    bb_free(&b);

    /* ERROR_OFFSET */
    bb_be32(&b, NBD_ENOSPC);
    bb_be16(&b, 2);
    bb_str(&b, "no");
    bb_be64(&b, 0x123456789);
    assert_ok(nbd_decode_chunk_error(NBD_REPLY_TYPE_ERROR_OFFSET, b.d, b.n, &err, &msg, &mlen,
                                     &has_off, &off));
    assert_int_equal(err, NBD_ENOSPC);
    assert_true(has_off);
    assert_int_equal(off, 0x123456789);
    assert_memory_equal(msg, "no", 2);
    bb_free(&b);

    /* Malformed: short, error 0, message overrunning. */
    bb_be32(&b, NBD_EIO);
    bb_u8(&b, 0);
    assert_violation(nbd_decode_chunk_error(NBD_REPLY_TYPE_ERROR, b.d, b.n, &err, &msg, &mlen,
                                            &has_off, &off),
                     "too short");
    bb_free(&b);
    bb_be32(&b, 0);
    bb_be16(&b, 0);
    assert_violation(nbd_decode_chunk_error(NBD_REPLY_TYPE_ERROR, b.d, b.n, &err, &msg, &mlen,
                                            &has_off, &off),
                     "error number 0");
    bb_free(&b);
    bb_be32(&b, NBD_EIO);
    bb_be16(&b, 5);
    bb_str(&b, "boom");
    for (uint16_t t = NBD_REPLY_TYPE_ERROR; t <= 0x8003; t++)
        assert_violation(nbd_decode_chunk_error(t, b.d, b.n, &err, &msg, &mlen, &has_off, &off),
                         "overruns");
    bb_free(&b);
    bb_be32(&b, NBD_EIO);
    bb_be16(&b, 0xffff);
    assert_violation(nbd_decode_chunk_error(NBD_REPLY_TYPE_ERROR, b.d, b.n, &err, &msg, &mlen,
                                            &has_off, &off),
                     "overruns");
    bb_free(&b);
}

static void test_decode_chunk_hole(void **state UNUSED)
{
    struct bb b = { 0 };
    uint64_t off;
    uint32_t size;

    bb_be64(&b, 8 * GiB);
    bb_be32(&b, 65536);
    assert_ok(nbd_decode_chunk_hole(b.d, b.n, &off, &size));
    assert_int_equal(off, 8 * GiB);
    assert_int_equal(size, 65536);
    assert_violation(nbd_decode_chunk_hole(b.d, 11, &off, &size), "must be 12");
    bb_u8(&b, 0);
    assert_violation(nbd_decode_chunk_hole(b.d, b.n, &off, &size), "must be 12");
    bb_free(&b);
    bb_be64(&b, 0);
    bb_be32(&b, 0);
    assert_violation(nbd_decode_chunk_hole(b.d, b.n, &off, &size), "length 0");
    bb_free(&b);
}

static void test_decode_chunk_status(void **state UNUSED)
{
    struct bb b = { 0 };
    uint32_t id;
    size_t count;
    uint64_t len, flags;

    /* Compact: id + n * (length, flags). */
    bb_be32(&b, 3);
    bb_be32(&b, 4096);
    bb_be32(&b, 3);
    bb_be32(&b, 0xfffff000);
    bb_be32(&b, 0xffffffff);
    assert_ok(nbd_decode_chunk_status(NBD_REPLY_TYPE_BLOCK_STATUS, b.d, b.n, &id, &count));
    assert_int_equal(id, 3);
    assert_int_equal(count, 2);
    nbd_status_entry(NBD_REPLY_TYPE_BLOCK_STATUS, b.d, 0, &len, &flags);
    assert_int_equal(len, 4096);
    assert_int_equal(flags, 3);
    nbd_status_entry(NBD_REPLY_TYPE_BLOCK_STATUS, b.d, 1, &len, &flags);
    assert_int_equal(len, 0xfffff000);
    assert_int_equal(flags, 0xffffffff);
    assert_violation(nbd_decode_chunk_status(NBD_REPLY_TYPE_BLOCK_STATUS, b.d, b.n - 1, &id,
                                             &count),
                     "malformed");
    assert_violation(nbd_decode_chunk_status(NBD_REPLY_TYPE_BLOCK_STATUS, b.d, 4, &id, &count),
                     "malformed");
    assert_violation(nbd_decode_chunk_status(NBD_REPLY_TYPE_BLOCK_STATUS, b.d, 8, &id, &count),
                     "malformed");
    assert_ok(nbd_decode_chunk_status(NBD_REPLY_TYPE_BLOCK_STATUS, b.d, 12, &id, &count));
    assert_int_equal(count, 1);
    bb_free(&b);

    /* Extended: id + count + n * (64-bit length, 64-bit flags). */
    bb_be32(&b, 1);
    bb_be32(&b, 2);
    bb_be64(&b, 5 * GiB);
    bb_be64(&b, UINT64_C(0x100000003));
    bb_be64(&b, 1);
    bb_be64(&b, 0);
    assert_ok(nbd_decode_chunk_status(NBD_REPLY_TYPE_BLOCK_STATUS_EXT, b.d, b.n, &id, &count));
    assert_int_equal(id, 1);
    assert_int_equal(count, 2);
    nbd_status_entry(NBD_REPLY_TYPE_BLOCK_STATUS_EXT, b.d, 0, &len, &flags);
    assert_int_equal(len, 5 * GiB);
    assert_int_equal(flags, UINT64_C(0x100000003));
    nbd_status_entry(NBD_REPLY_TYPE_BLOCK_STATUS_EXT, b.d, 1, &len, &flags);
    assert_int_equal(len, 1);
    assert_int_equal(flags, 0);
    /* The count must match the length. */
    assert_violation(nbd_decode_chunk_status(NBD_REPLY_TYPE_BLOCK_STATUS_EXT, b.d, 24, &id,
                                             &count),
                     "claims 2 descriptors");
    assert_violation(nbd_decode_chunk_status(NBD_REPLY_TYPE_BLOCK_STATUS_EXT, b.d, b.n - 8, &id,
                                             &count),
                     "malformed");
    assert_violation(nbd_decode_chunk_status(NBD_REPLY_TYPE_BLOCK_STATUS_EXT, b.d, 8, &id,
                                             &count),
                     "malformed");
    bb_free(&b);
    bb_be32(&b, 1);
    bb_be32(&b, 0);
    bb_fill(&b, 0, 16);
    assert_violation(nbd_decode_chunk_status(NBD_REPLY_TYPE_BLOCK_STATUS_EXT, b.d, b.n, &id,
                                             &count),
                     "claims 0 descriptors");
    bb_free(&b);
}

static void test_range_within(void **state UNUSED)
{
    assert_true(nbd_range_within(100, 50, 100, 50));
    assert_true(nbd_range_within(100, 50, 149, 1));
    assert_true(nbd_range_within(100, 50, 120, 0));
    assert_false(nbd_range_within(100, 50, 99, 1));
    assert_false(nbd_range_within(100, 50, 149, 2));
    assert_false(nbd_range_within(100, 50, 150, 1));
    assert_false(nbd_range_within(100, 50, 100, 51));
    /* Wrapping offsets and lengths. */
    assert_false(nbd_range_within(100, 50, UINT64_MAX, 2));
    assert_false(nbd_range_within(100, 50, 110, UINT64_MAX));
    assert_false(nbd_range_within(UINT64_MAX - 10, 10, UINT64_MAX - 5, 10));
    assert_true(nbd_range_within(UINT64_MAX - 10, 10, UINT64_MAX - 5, 5));
}

/* ---- Coverage ----------------------------------------------------------- */

static void assert_cover(const struct nbd_cover *c, size_t n, const uint64_t *se)
{
    if (c->n != n)
        fail_msg("%zu ranges, expected %zu", c->n, n);
    for (size_t i = 0; i < n; i++)
        if (c->iv[i].start != se[2 * i] || c->iv[i].end != se[2 * i + 1])
            fail_msg("range %zu is [%llu, %llu), expected [%llu, %llu)", i,
                     (unsigned long long)c->iv[i].start, (unsigned long long)c->iv[i].end,
                     (unsigned long long)se[2 * i], (unsigned long long)se[2 * i + 1]);
}

static void test_cover_in_order(void **state UNUSED)
{
    struct nbd_cover c = { 0 };

    assert_int_equal(nbd_cover_add(&c, 0, 10), 0);
    assert_int_equal(nbd_cover_add(&c, 10, 10), 0);
    assert_int_equal(nbd_cover_add(&c, 20, 5), 0);
    assert_cover(&c, 1, (const uint64_t[]){ 0, 25 });
    assert_int_equal(c.total, 25);
    /* A gap, then in order again. */
    assert_int_equal(nbd_cover_add(&c, 30, 5), 0);
    assert_int_equal(nbd_cover_add(&c, 35, 5), 0);
    assert_cover(&c, 2, (const uint64_t[]){ 0, 25, 30, 40 });
    assert_int_equal(c.total, 35);
    nbd_cover_free(&c);
    assert_null(c.iv);
    assert_int_equal(c.n, 0);
}

static void test_cover_out_of_order(void **state UNUSED)
{
    struct nbd_cover c = { 0 };

    assert_int_equal(nbd_cover_add(&c, 40, 10), 0);
    assert_int_equal(nbd_cover_add(&c, 0, 10), 0);
    assert_int_equal(nbd_cover_add(&c, 20, 10), 0);
    assert_cover(&c, 3, (const uint64_t[]){ 0, 10, 20, 30, 40, 50 });
    /* Joins the range after it. */
    assert_int_equal(nbd_cover_add(&c, 35, 5), 0);
    assert_cover(&c, 3, (const uint64_t[]){ 0, 10, 20, 30, 35, 50 });
    /* Fills a gap exactly: three ranges become... two. */
    assert_int_equal(nbd_cover_add(&c, 10, 10), 0);
    assert_cover(&c, 2, (const uint64_t[]){ 0, 30, 35, 50 });
    assert_int_equal(nbd_cover_add(&c, 30, 5), 0);
    assert_cover(&c, 1, (const uint64_t[]){ 0, 50 });
    assert_int_equal(c.total, 50);
    nbd_cover_free(&c);

    /* Many single bytes, odd ones backwards, then the even ones. */
    for (int64_t i = 199; i >= 1; i -= 2)
        assert_int_equal(nbd_cover_add(&c, (uint64_t)i, 1), 0);
    assert_int_equal(c.n, 100);
    for (uint64_t i = 0; i < 200; i += 2)
        assert_int_equal(nbd_cover_add(&c, i, 1), 0);
    assert_cover(&c, 1, (const uint64_t[]){ 0, 200 });
    assert_int_equal(c.total, 200);
    nbd_cover_free(&c);
}

static void test_cover_overlap(void **state UNUSED)
{
    struct nbd_cover c = { 0 };

    assert_int_equal(nbd_cover_add(&c, 100, 100), 0);
    assert_int_equal(nbd_cover_add(&c, 300, 100), 0);
    /* Partial overlaps on either side, containment, straddling two. */
    assert_int_equal(nbd_cover_add(&c, 50, 51), -1);
    assert_int_equal(nbd_cover_add(&c, 199, 2), -1);
    assert_int_equal(nbd_cover_add(&c, 120, 10), -1);
    assert_int_equal(nbd_cover_add(&c, 0, 1000), -1);
    assert_int_equal(nbd_cover_add(&c, 150, 200), -1);
    assert_int_equal(nbd_cover_add(&c, 399, 1), -1);
    assert_int_equal(nbd_cover_add(&c, 100, 100), -1);
    /* Nothing changed. */
    assert_cover(&c, 2, (const uint64_t[]){ 100, 200, 300, 400 });
    assert_int_equal(c.total, 200);
    /* Touching is not overlapping. */
    assert_int_equal(nbd_cover_add(&c, 200, 100), 0);
    assert_int_equal(nbd_cover_add(&c, 0, 100), 0);
    assert_int_equal(nbd_cover_add(&c, 400, 1), 0);
    assert_cover(&c, 1, (const uint64_t[]){ 0, 401 });
    assert_int_equal(c.total, 401);
    nbd_cover_free(&c);
}

/* ======================================================================
 * The client's reply state machine
 * ==================================================================== */

static const char *const two_contexts[] = { "base:allocation", "qemu:dirty-bitmap:bm0", NULL };

#define ALL_EFLAGS                                                                              \
    (NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |                             \
     NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_CACHE | NBD_FLAG_SEND_DF |                      \
     NBD_FLAG_SEND_FAST_ZERO)

static struct nbd_conn *detached(enum nbd_reply_mode m, uint64_t size, uint16_t eflags,
                                 const char *const *contexts)
{
    struct nbd_conn *c = nbd_conn_new_detached(m != NBD_MODE_SIMPLE, m == NBD_MODE_EXTENDED,
                                               size, eflags, contexts);
    if (!c)
        fail_msg("nbd_conn_new_detached: %s", nbd_get_error());
    assert_false(nbd_is_dead(c));
    return c;
}

/* A completion. */
struct rec {
    int calls;
    int err;
    char msg[512];
};

static void rec_done(void *opaque, int err)
{
    struct rec *r = opaque;

    r->calls++;
    r->err = err;
    snprintf(r->msg, sizeof r->msg, "%s", err ? nbd_get_error() : "");
}

/* Extents handed to the callback. */
struct ext_call {
    char context[64];
    uint64_t offset;
    size_t n;
    struct nbd_extent e[8];
};
struct ext_rec {
    int calls;
    struct ext_call call[4];
};

static int rec_extents(void *opaque, const char *context, uint64_t offset,
                       const struct nbd_extent *e, size_t n)
{
    struct ext_rec *r = opaque;
    struct ext_call *k;

    assert_true(r->calls < 4);
    k = &r->call[r->calls++];
    snprintf(k->context, sizeof k->context, "%s", context);
    k->offset = offset;
    k->n = n;
    for (size_t i = 0; i < n && i < 8; i++)
        k->e[i] = e[i];
    return 0;
}

/* Feeds b in slices of `slice` bytes (0: all at once); returns the last
 * result of nbd_rx_feed. */
static int feed(struct nbd_conn *c, const struct bb *b, size_t slice)
{
    int rc = 0;

    if (!slice)
        slice = b->n ? b->n : 1;
    for (size_t pos = 0; pos < b->n && rc == 0; pos += slice)
        rc = nbd_rx_feed(c, b->d + pos, b->n - pos < slice ? b->n - pos : slice);
    return rc;
}

static void assert_done(const struct rec *r, int err)
{
    if (r->calls != 1)
        fail_msg("completion called %d times, expected once", r->calls);
    if (r->err != err)
        fail_msg("completion got err %d (%s), expected %d", r->err, r->msg, err);
}

static void assert_pending(const struct rec *r)
{
    if (r->calls)
        fail_msg("completion called early (err %d: %s)", r->err, r->msg);
}

static void assert_msg(const struct rec *r, const char *word)
{
    if (!strstr(r->msg, word))
        fail_msg("completion message \"%s\" does not mention \"%s\"", r->msg, word);
}

static const struct request *find_request(struct nbd_conn *c, uint64_t cookie)
{
    for (const struct request *r = c->inflight[cookie % NBD_HASH_BUCKETS]; r; r = r->hnext)
        if (r->cookie == cookie)
            return r;
    return NULL;
}

static void fill_pattern(uint8_t *p, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(seed + i * 7 + (i >> 8));
}

/* ---- What the submit functions queue ------------------------------------ */

static void check_submitted_headers(enum nbd_reply_mode m)
{
    bool ext = m == NBD_MODE_EXTENDED;
    struct nbd_conn *c = detached(m, 4 * GiB, ALL_EFLAGS, two_contexts);
    static uint8_t buf[8192];
    struct rec r[8] = { 0 };
    struct ext_rec er = { 0 };
    struct bb want = { 0 };

    assert_int_equal(nbd_aio_pread(c, buf, 4096, 8192, 0, rec_done, &r[0]), 0);
    assert_int_equal(nbd_aio_pwrite(c, buf, 512, 3 * GiB, NBD_CMD_FLAG_FUA, rec_done, &r[1]), 0);
    assert_int_equal(nbd_aio_flush(c, 0, rec_done, &r[2]), 0);
    assert_int_equal(nbd_aio_trim(c, 65536, 0, 0, rec_done, &r[3]), 0);
    assert_int_equal(nbd_aio_zero(c, 4096, 4096, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
                                  rec_done, &r[4]),
                     0);
    assert_int_equal(nbd_aio_cache(c, 1 * MiB, 1 * MiB, 0, rec_done, &r[5]), 0);
    assert_int_equal(nbd_aio_block_status(c, 2 * GiB, 0, NBD_CMD_FLAG_REQ_ONE, NULL,
                                          rec_extents, &er, rec_done, &r[6]),
                     0);
    assert_int_equal(nbd_aio_pread(c, buf, 512, 4 * GiB - 512, NBD_CMD_FLAG_DF, rec_done, &r[7]),
                     0);
    assert_int_equal(nbd_in_flight(c), 8);

    /* Cookies start at 1 and count wire requests. */
    b_request(&want, ext, 0, NBD_CMD_READ, 1, 8192, 4096);
    b_request(&want, ext, NBD_CMD_FLAG_FUA | (ext ? NBD_CMD_FLAG_PAYLOAD_LEN : 0), NBD_CMD_WRITE,
              2, 3 * GiB, 512);
    b_request(&want, ext, 0, NBD_CMD_FLUSH, 3, 0, 0);
    b_request(&want, ext, 0, NBD_CMD_TRIM, 4, 0, 65536);
    b_request(&want, ext, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_WRITE_ZEROES, 5,
              4096, 4096);
    b_request(&want, ext, 0, NBD_CMD_CACHE, 6, MiB, MiB);
    b_request(&want, ext, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 7, 0, 2 * GiB);
    b_request(&want, ext, NBD_CMD_FLAG_DF, NBD_CMD_READ, 8, 4 * GiB - 512, 512);
    size_t hl = ext ? 32 : 28;
    for (uint64_t cookie = 1; cookie <= 8; cookie++) {
        const struct request *q = find_request(c, cookie);
        assert_non_null(q);
        struct bb one = { .d = want.d + (cookie - 1) * hl, .n = hl };
        assert_bytes(q->hdr, q->hdrlen, &one);
    }
    assert_null(find_request(c, 9));
    const struct request *w = find_request(c, 2);
    assert_ptr_equal(w->payload, buf);
    assert_int_equal(w->payload_len, 512);
    bb_free(&want);

    /* Closing fails every request in flight, once. */
    nbd_close(c);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_not_equal(r[i].err, 0);
    }
    assert_int_equal(er.calls, 0);
}

static void test_client_submit_compact(void **state UNUSED)
{
    check_submitted_headers(NBD_MODE_STRUCTURED);
}

static void test_client_submit_extended(void **state UNUSED)
{
    check_submitted_headers(NBD_MODE_EXTENDED);
}

/* Compact requests hold 32-bit lengths: a long block status is clipped,
 * a long trim is split in pieces. */
static void test_client_submit_splits(void **state UNUSED)
{
    struct nbd_conn *c = detached(NBD_MODE_STRUCTURED, 8 * GiB, ALL_EFLAGS, two_contexts);
    struct rec r[2] = { 0 };

    assert_int_equal(nbd_aio_block_status(c, 6 * GiB, 0, 0, NULL, NULL, NULL, rec_done, &r[0]), 0);
    assert_int_equal(find_request(c, 1)->count, UINT32_MAX);
    assert_int_equal(nbd_aio_trim(c, 3 * GiB, 0, 0, rec_done, &r[1]), 0);
    assert_int_equal(find_request(c, 2)->count, GiB);
    assert_int_equal(find_request(c, 4)->offset, 2 * GiB);
    assert_null(find_request(c, 5));
    nbd_close(c);
    assert_done(&r[0], ECONNABORTED);
    assert_done(&r[1], ECONNABORTED);
}

/* READ and WRITE go out in requests of 256 KiB: QEMU's server faults in
 * fresh memory for each request of 1 MiB and more. */
static void test_client_request_size(void **state UNUSED)
{
    struct nbd_conn *c = detached(NBD_MODE_STRUCTURED, 8 * MiB, ALL_EFLAGS, NULL);
    static uint8_t buf[MiB + 4096];
    struct rec r[2] = { 0 };

    assert_int_equal(nbd_max_request(c), 256 * 1024);
    assert_int_equal(nbd_aio_pread(c, buf, MiB + 4096, 0, 0, rec_done, &r[0]), 0);
    for (uint64_t i = 1; i <= 4; i++) {
        assert_int_equal(find_request(c, i)->count, 256 * 1024);
        assert_int_equal(find_request(c, i)->offset, (i - 1) * 256 * 1024);
    }
    assert_int_equal(find_request(c, 5)->count, 4096);
    assert_int_equal(nbd_aio_pwrite(c, buf, 512 * 1024, MiB, 0, rec_done, &r[1]), 0);
    assert_int_equal(find_request(c, 6)->count, 256 * 1024);
    assert_int_equal(find_request(c, 7)->offset, MiB + 256 * 1024);
    assert_null(find_request(c, 8));
    nbd_close(c);
    assert_done(&r[0], ECONNABORTED);
    assert_done(&r[1], ECONNABORTED);
}

/* ---- Successful replies -------------------------------------------------- */

/* A structured READ of 4096 bytes at 8192 answered out of order with data
 * and hole chunks, fed in the given slices. */
static void check_structured_read(enum nbd_reply_mode m, size_t slice)
{
    struct nbd_conn *c = detached(m, MiB, ALL_EFLAGS, NULL);
    uint8_t buf[4096], expect[4096], d1[1024], d2[1024];
    struct rec r = { 0 };
    struct bb b = { 0 };

    memset(buf, 0xff, sizeof buf);
    fill_pattern(d1, sizeof d1, 1);
    fill_pattern(d2, sizeof d2, 2);
    memset(expect, 0, 2048);
    memcpy(expect + 2048, d1, 1024);
    memcpy(expect + 3072, d2, 1024);

    assert_int_equal(nbd_aio_pread(c, buf, 4096, 8192, 0, rec_done, &r), 0);
    b_data(&b, m, 0, 1, 8192 + 3072, d2, 1024);
    b_hole(&b, m, 0, 1, 8192 + 1024, 1024);
    b_data(&b, m, 0, 1, 8192 + 2048, d1, 1024);
    b_hole(&b, m, DONE, 1, 8192, 1024);
    assert_int_equal(feed(c, &b, slice), 0);
    assert_done(&r, 0);
    assert_memory_equal(buf, expect, sizeof buf);
    assert_false(nbd_is_dead(c));
    assert_int_equal(nbd_in_flight(c), 0);
    bb_free(&b);

    /* Again, with a trailing NONE carrying DONE. */
    memset(buf, 0xff, sizeof buf);
    memset(&r, 0, sizeof r);
    assert_int_equal(nbd_aio_pread(c, buf, 4096, 8192, 0, rec_done, &r), 0);
    b_hole(&b, m, 0, 2, 8192, 2048);
    b_data(&b, m, 0, 2, 8192 + 2048, d1, 1024);
    b_data(&b, m, 0, 2, 8192 + 3072, d2, 1024);
    assert_int_equal(feed(c, &b, slice), 0);
    assert_pending(&r);
    bb_free(&b);
    b_none(&b, m, 2);
    assert_int_equal(feed(c, &b, slice), 0);
    assert_done(&r, 0);
    assert_memory_equal(buf, expect, sizeof buf);
    bb_free(&b);
    nbd_close(c);
}

static void test_client_structured_read(void **state UNUSED)
{
    check_structured_read(NBD_MODE_STRUCTURED, 0);
    check_structured_read(NBD_MODE_STRUCTURED, 1);
    check_structured_read(NBD_MODE_STRUCTURED, 7);
    check_structured_read(NBD_MODE_EXTENDED, 0);
    check_structured_read(NBD_MODE_EXTENDED, 1);
    check_structured_read(NBD_MODE_EXTENDED, 13);
}

/* Two reads answered interleaved. */
static void test_client_interleaved(void **state UNUSED)
{
    struct nbd_conn *c = detached(NBD_MODE_STRUCTURED, MiB, ALL_EFLAGS, NULL);
    uint8_t a[1024], b2[1024], da[1024], db[1024];
    struct rec ra = { 0 }, rb = { 0 }, rf = { 0 };
    struct bb b = { 0 };

    fill_pattern(da, sizeof da, 3);
    fill_pattern(db, sizeof db, 4);
    assert_int_equal(nbd_aio_pread(c, a, 1024, 0, 0, rec_done, &ra), 0);
    assert_int_equal(nbd_aio_pread(c, b2, 1024, 4096, 0, rec_done, &rb), 0);
    assert_int_equal(nbd_aio_flush(c, 0, rec_done, &rf), 0);
    b_data(&b, NBD_MODE_STRUCTURED, 0, 2, 4096 + 512, db + 512, 512);
    b_data(&b, NBD_MODE_STRUCTURED, 0, 1, 0, da, 512);
    b_simple(&b, 0, 3); /* a simple reply to FLUSH is fine */
    b_data(&b, NBD_MODE_STRUCTURED, DONE, 2, 4096, db, 512);
    b_data(&b, NBD_MODE_STRUCTURED, DONE, 1, 512, da + 512, 512);
    assert_int_equal(feed(c, &b, 3), 0);
    assert_done(&ra, 0);
    assert_done(&rb, 0);
    assert_done(&rf, 0);
    assert_memory_equal(a, da, 1024);
    assert_memory_equal(b2, db, 1024);
    bb_free(&b);
    nbd_close(c);
}

static void test_client_simple_read(void **state UNUSED)
{
    for (size_t slice = 0; slice < 3; slice++) {
        struct nbd_conn *c = detached(NBD_MODE_SIMPLE, MiB, ALL_EFLAGS, NULL);
        uint8_t buf[4096], data[4096];
        uint8_t wbuf[512] = { 0 };
        struct rec r1 = { 0 }, r2 = { 0 }, r3 = { 0 }, r4 = { 0 };
        struct bb b = { 0 };

        fill_pattern(data, sizeof data, 9);
        assert_int_equal(nbd_aio_pread(c, buf, 4096, 65536, 0, rec_done, &r1), 0);
        assert_int_equal(nbd_aio_pwrite(c, wbuf, 512, 0, 0, rec_done, &r2), 0);
        assert_int_equal(nbd_aio_pread(c, buf, 512, 0, 0, rec_done, &r3), 0);
        assert_int_equal(nbd_aio_flush(c, 0, rec_done, &r4), 0);
        b_simple(&b, 0, 2);            /* WRITE ok */
        b_simple(&b, 0, 1);            /* READ ok + 4096 bytes */
        bb_put(&b, data, sizeof data);
        b_simple(&b, NBD_EPERM, 3);    /* READ failed: no data follows */
        b_simple(&b, NBD_ENOSPC, 4);
        assert_int_equal(feed(c, &b, slice == 2 ? 5 : slice), 0);
        assert_done(&r1, 0);
        assert_memory_equal(buf, data, sizeof data);
        assert_done(&r2, 0);
        assert_done(&r3, EPERM);
        assert_msg(&r3, "NBD_EPERM");
        assert_done(&r4, ENOSPC);
        assert_false(nbd_is_dead(c));
        bb_free(&b);
        nbd_close(c);
    }
}

static void test_client_read_error_chunk(void **state UNUSED)
{
    struct nbd_conn *c = detached(NBD_MODE_STRUCTURED, MiB, ALL_EFLAGS, NULL);
    uint8_t buf[4096];
    struct rec r1 = { 0 }, r2 = { 0 }, r3 = { 0 }, r4 = { 0 };
    struct bb b = { 0 };

    assert_int_equal(nbd_aio_pread(c, buf, 4096, 0, 0, rec_done, &r1), 0);
    assert_int_equal(nbd_aio_pread(c, buf, 4096, 0, 0, rec_done, &r2), 0);
    assert_int_equal(nbd_aio_pread(c, buf, 4096, 0, 0, rec_done, &r3), 0);
    assert_int_equal(nbd_aio_flush(c, 0, rec_done, &r4), 0);
    /* ERROR + DONE */
    b_error(&b, NBD_MODE_STRUCTURED, DONE, 1, NBD_EIO, "disk on fire");
    /* some data, an ERROR_OFFSET, then NONE */
    b_hole(&b, NBD_MODE_STRUCTURED, 0, 2, 0, 2048);
    b_chunk(&b, NBD_MODE_STRUCTURED, 0, NBD_REPLY_TYPE_ERROR_OFFSET, 2, 0, 6 + 3 + 8);
    bb_be32(&b, NBD_ENOSPC);
    bb_be16(&b, 3);
    bb_str(&b, "bad");
    bb_be64(&b, 2048);
    b_none(&b, NBD_MODE_STRUCTURED, 2);
    /* An unknown error type and an unknown error number: EINVAL. */
    b_chunk(&b, NBD_MODE_STRUCTURED, DONE, 0x8123, 3, 0, 6 + 4);
    bb_be32(&b, 9999);
    bb_be16(&b, 2);
    bb_str(&b, "\x01\xff"); /* sanitised */
    bb_be16(&b, 0xabcd);    /* extra bytes an unknown error type may carry */
    /* An error chunk to a FLUSH. */
    b_error(&b, NBD_MODE_STRUCTURED, DONE, 4, NBD_EIO, "");
    assert_int_equal(feed(c, &b, 0), 0);
    assert_done(&r1, EIO);
    assert_msg(&r1, "server failed NBD_CMD_READ 0x0+4096: Input/output error (NBD_EIO): disk on fire");
    assert_done(&r2, ENOSPC);
    assert_msg(&r2, "bad");
    assert_done(&r3, EINVAL);
    assert_msg(&r3, "Invalid argument (unknown NBD error 9999): ?" "?"); /* split: not a trigraph */
    assert_done(&r4, EIO);
    assert_false(nbd_is_dead(c));
    bb_free(&b);
    nbd_close(c);
}

/* A READ whose chunks cover less than asked: that request fails with EIO,
 * the connection lives on (request_done in client.c). */
static void test_client_short_read(void **state UNUSED)
{
    struct nbd_conn *c = detached(NBD_MODE_STRUCTURED, MiB, ALL_EFLAGS, NULL);
    uint8_t buf[4096], data[2048];
    struct rec r1 = { 0 }, r2 = { 0 }, r3 = { 0 };
    struct bb b = { 0 };

    fill_pattern(data, sizeof data, 5);
    assert_int_equal(nbd_aio_pread(c, buf, 4096, 0, 0, rec_done, &r1), 0);
    assert_int_equal(nbd_aio_pread(c, buf, 4096, 0, 0, rec_done, &r2), 0);
    assert_int_equal(nbd_aio_flush(c, 0, rec_done, &r3), 0);
    b_data(&b, NBD_MODE_STRUCTURED, DONE, 1, 1024, data, 2048);
    b_none(&b, NBD_MODE_STRUCTURED, 2); /* nothing at all */
    assert_int_equal(feed(c, &b, 0), 0);
    assert_done(&r1, EIO);
    assert_msg(&r1, "covered only 2048 bytes");
    assert_done(&r2, EIO);
    assert_msg(&r2, "covered only 0 bytes");
    assert_false(nbd_is_dead(c));
    assert_pending(&r3);
    bb_free(&b);
    b_simple(&b, 0, 3);
    assert_int_equal(feed(c, &b, 0), 0);
    assert_done(&r3, 0);
    bb_free(&b);
    nbd_close(c);
}

/* Reads with a minimum block size go through a bounce buffer; only the
 * asked bytes reach the caller. */
static void test_client_bounce_read(void **state UNUSED)
{
    struct nbd_conn *c = detached(NBD_MODE_STRUCTURED, MiB, ALL_EFLAGS, NULL);
    uint8_t buf[200], data[1024];
    struct rec r = { 0 };
    struct bb b = { 0 };

    c->has_block_size = true;
    c->min_block = 512;
    memset(buf, 0xee, sizeof buf);
    fill_pattern(data, sizeof data, 6);
    assert_int_equal(nbd_aio_pread(c, buf, 100, 500, 0, rec_done, &r), 0);
    assert_int_equal(find_request(c, 1)->offset, 0);
    assert_int_equal(find_request(c, 1)->count, 1024);
    b_data(&b, NBD_MODE_STRUCTURED, DONE, 1, 0, data, 1024);
    assert_int_equal(feed(c, &b, 0), 0);
    assert_done(&r, 0);
    assert_memory_equal(buf, data + 500, 100);
    for (size_t i = 100; i < sizeof buf; i++)
        assert_int_equal(buf[i], 0xee);
    bb_free(&b);
    nbd_close(c);
}

static void test_client_block_status_clipped(void **state UNUSED)
{
    struct nbd_conn *c = detached(NBD_MODE_STRUCTURED, MiB, ALL_EFLAGS, two_contexts);
    struct rec r = { 0 };
    struct ext_rec er = { 0 };
    struct bb b = { 0 };
    static const uint32_t ba[] = { 1024, 0, 8192, 3, 512, 1 }; /* runs past the end */
    static const uint32_t bm[] = { 4096, 1 };

    assert_int_equal(nbd_aio_block_status(c, 4096, 8192, 0, NULL, rec_extents, &er, rec_done, &r),
                     0);
    b_status(&b, NBD_MODE_STRUCTURED, 0, 1, 1, 1, bm);
    b_status(&b, NBD_MODE_STRUCTURED, DONE, 1, 0, 3, ba);
    assert_int_equal(feed(c, &b, 0), 0);
    assert_done(&r, 0);
    assert_int_equal(er.calls, 2);
    assert_string_equal(er.call[0].context, "qemu:dirty-bitmap:bm0");
    assert_int_equal(er.call[0].offset, 8192);
    assert_int_equal(er.call[0].n, 1);
    assert_int_equal(er.call[0].e[0].length, 4096);
    assert_int_equal(er.call[0].e[0].flags, 1);
    assert_string_equal(er.call[1].context, "base:allocation");
    assert_int_equal(er.call[1].offset, 8192);
    assert_int_equal(er.call[1].n, 2);
    assert_int_equal(er.call[1].e[0].length, 1024);
    assert_int_equal(er.call[1].e[0].flags, 0);
    assert_int_equal(er.call[1].e[1].length, 3072); /* clipped */
    assert_int_equal(er.call[1].e[1].flags, 3);
    bb_free(&b);

    /* REQ_ONE: only the first descriptor counts; a named context drops
     * the other context's extents. */
    memset(&r, 0, sizeof r);
    memset(&er, 0, sizeof er);
    assert_int_equal(nbd_aio_block_status(c, 4096, 0, NBD_CMD_FLAG_REQ_ONE, "base:allocation",
                                          rec_extents, &er, rec_done, &r),
                     0);
    b_status(&b, NBD_MODE_STRUCTURED, 0, 2, 0, 3, ba);
    b_status(&b, NBD_MODE_STRUCTURED, DONE, 2, 1, 1, bm);
    assert_int_equal(feed(c, &b, 0), 0);
    assert_done(&r, 0);
    assert_int_equal(er.calls, 1);
    assert_string_equal(er.call[0].context, "base:allocation");
    assert_int_equal(er.call[0].n, 1);
    assert_int_equal(er.call[0].e[0].length, 1024);
    bb_free(&b);

    /* No extents at all: the request fails, the connection lives. */
    memset(&r, 0, sizeof r);
    assert_int_equal(nbd_aio_block_status(c, 4096, 0, 0, NULL, NULL, NULL, rec_done, &r), 0);
    b_none(&b, NBD_MODE_STRUCTURED, 3);
    assert_int_equal(feed(c, &b, 0), 0);
    assert_done(&r, EIO);
    assert_msg(&r, "no extents");
    assert_false(nbd_is_dead(c));
    bb_free(&b);

    /* An error chunk for block status. */
    memset(&r, 0, sizeof r);
    assert_int_equal(nbd_aio_block_status(c, 4096, 0, 0, NULL, NULL, NULL, rec_done, &r), 0);
    b_error(&b, NBD_MODE_STRUCTURED, DONE, 4, NBD_EINVAL, "");
    assert_int_equal(feed(c, &b, 0), 0);
    assert_done(&r, EINVAL);
    assert_false(nbd_is_dead(c));
    bb_free(&b);
    nbd_close(c);
}

/* Extended headers: 64-bit lengths and flags. */
static void test_client_block_status_extended(void **state UNUSED)
{
    struct nbd_conn *c = detached(NBD_MODE_EXTENDED, 16 * GiB, ALL_EFLAGS, two_contexts);
    struct rec r = { 0 };
    struct ext_rec er = { 0 };
    struct bb b = { 0 };
    const uint64_t ba[] = { 5 * GiB, UINT64_C(0x100000003), 4 * GiB, 0 };
    const uint64_t bm[] = { 8 * GiB, 1 };

    assert_int_equal(nbd_aio_block_status(c, 8 * GiB, 4 * GiB, 0, NULL, rec_extents, &er,
                                          rec_done, &r),
                     0);
    assert_int_equal(find_request(c, 1)->count, 8 * GiB); /* not clipped to 32 bits */
    b_status_ext(&b, NBD_MODE_EXTENDED, 0, 1, 0, 2, ba);
    b_status_ext(&b, NBD_MODE_EXTENDED, 0, 1, 1, 1, bm);
    b_none(&b, NBD_MODE_EXTENDED, 1);
    assert_int_equal(feed(c, &b, 5), 0);
    assert_done(&r, 0);
    assert_int_equal(er.calls, 2);
    assert_string_equal(er.call[0].context, "base:allocation");
    assert_int_equal(er.call[0].offset, 4 * GiB);
    assert_int_equal(er.call[0].n, 2);
    assert_int_equal(er.call[0].e[0].length, 5 * GiB);
    assert_int_equal(er.call[0].e[0].flags, UINT64_C(0x100000003));
    assert_int_equal(er.call[0].e[1].length, 3 * GiB);
    assert_int_equal(er.call[1].n, 1);
    assert_int_equal(er.call[1].e[0].length, 8 * GiB);
    bb_free(&b);
    nbd_close(c);
}

/* Extended headers + BLOCK_STATUS_PAYLOAD: the request names its context
 * in a payload, and an answer for another context is a violation. */
static void test_client_block_status_filter(void **state UNUSED)
{
    const uint16_t ef = ALL_EFLAGS | NBD_FLAG_BLOCK_STAT_PAYLOAD;
    struct nbd_conn *c = detached(NBD_MODE_EXTENDED, 16 * GiB, ef, two_contexts);
    struct rec r = { 0 };
    struct ext_rec er = { 0 };
    struct bb b = { 0 }, want = { 0 };
    const uint64_t bm[] = { 4096, 1 };

    assert_int_equal(nbd_aio_block_status(c, 6 * GiB, 0, 0, "qemu:dirty-bitmap:bm0", rec_extents,
                                          &er, rec_done, &r),
                     0);
    const struct request *q = find_request(c, 1);
    b_request(&want, true, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 1, 0, 12);
    assert_bytes(q->hdr, q->hdrlen, &want);
    bb_free(&want);
    bb_be64(&want, 6 * GiB);
    bb_be32(&want, 1);
    assert_bytes(q->payload, q->payload_len, &want);
    bb_free(&want);
    b_status_ext(&b, NBD_MODE_EXTENDED, DONE, 1, 1, 1, bm);
    assert_int_equal(feed(c, &b, 0), 0);
    assert_done(&r, 0);
    assert_int_equal(er.calls, 1);
    assert_string_equal(er.call[0].context, "qemu:dirty-bitmap:bm0");
    bb_free(&b);

    memset(&r, 0, sizeof r);
    assert_int_equal(nbd_aio_block_status(c, 4096, 0, 0, "qemu:dirty-bitmap:bm0", rec_extents,
                                          &er, rec_done, &r),
                     0);
    b_status_ext(&b, NBD_MODE_EXTENDED, DONE, 2, 0, 1, bm);
    assert_int_equal(feed(c, &b, 0), -1);
    assert_true(nbd_is_dead(c));
    assert_done(&r, EPROTO);
    assert_msg(&r, "did not ask for");
    bb_free(&b);
    nbd_close(c);
}

/* ---- Violations ---------------------------------------------------------- */

/* Three requests in flight: a READ of 4096 at 0 (cookie 1), a BLOCK_STATUS
 * of 65536 at 0 (cookie 2), a FLUSH (cookie 3).  The reply bytes must kill
 * the connection with a message containing word, and every completion
 * must get EPROTO and that message. */
static void check_violation(enum nbd_reply_mode m, const struct bb *reply, const char *word)
{
    struct nbd_conn *c = detached(m, MiB, ALL_EFLAGS, two_contexts);
    uint8_t buf[4096];
    struct rec r[3] = { 0 };

    assert_int_equal(nbd_aio_pread(c, buf, 4096, 0, 0, rec_done, &r[0]), 0);
    assert_int_equal(nbd_aio_block_status(c, 65536, 0, 0, NULL, NULL, NULL, rec_done, &r[1]), 0);
    assert_int_equal(nbd_aio_flush(c, 0, rec_done, &r[2]), 0);
    for (size_t slice = 0; slice <= 1; slice++) {
        int rc = feed(c, reply, slice);
        if (slice == 0) {
            assert_int_equal(rc, -1);
            assert_true(nbd_is_dead(c));
            assert_int_equal(nbd_in_flight(c), 0);
            assert_int_equal(nbd_get_errno(), EPROTO);
            if (!strstr(nbd_get_error(), word))
                fail_msg("error \"%s\" does not name \"%s\"", nbd_get_error(), word);
            for (int i = 0; i < 3; i++) {
                assert_done(&r[i], EPROTO);
                assert_msg(&r[i], word);
            }
        } else {
            /* A dead connection takes nothing more and fails submits. */
            assert_int_equal(rc, -1);
            assert_int_equal(nbd_aio_flush(c, 0, rec_done, &r[2]), -1);
            assert_int_equal(nbd_get_errno(), EPROTO);
            assert_int_equal(r[2].calls, 1);
        }
    }
    nbd_close(c);
}

static void test_violation_outside_request(void **state UNUSED)
{
    static const uint8_t d[16] = { 0 };
    struct bb b = { 0 };

    for (int m = NBD_MODE_STRUCTURED; m <= NBD_MODE_EXTENDED; m++) {
        b_data(&b, m, 0, 1, 4090, d, 7); /* one byte past the end */
        check_violation(m, &b, "lies outside read");
        bb_free(&b);
        b_data(&b, m, 0, 1, UINT64_MAX - 3, d, 8); /* wraps */
        check_violation(m, &b, "lies outside read");
        bb_free(&b);
        b_hole(&b, m, 0, 1, 4096, 1);
        check_violation(m, &b, "lies outside read");
        bb_free(&b);
        b_hole(&b, m, 0, 1, 0, 4097);
        check_violation(m, &b, "lies outside read");
        bb_free(&b);
        b_chunk(&b, m, DONE, NBD_REPLY_TYPE_ERROR_OFFSET, 1, 0, 14);
        bb_be32(&b, NBD_EIO);
        bb_be16(&b, 0);
        bb_be64(&b, 4096);
        check_violation(m, &b, "lies outside");
        bb_free(&b);
        b_chunk(&b, m, DONE, NBD_REPLY_TYPE_ERROR_OFFSET, 3, 0, 14); /* not a READ */
        bb_be32(&b, NBD_EIO);
        bb_be16(&b, 0);
        bb_be64(&b, 0);
        check_violation(m, &b, "lies outside");
        bb_free(&b);
    }
}

static void test_violation_overlap(void **state UNUSED)
{
    static const uint8_t d[4096] = { 0 };
    struct bb b = { 0 };

    for (int m = NBD_MODE_STRUCTURED; m <= NBD_MODE_EXTENDED; m++) {
        b_data(&b, m, 0, 1, 0, d, 2048);
        b_hole(&b, m, 0, 1, 1024, 2048);
        check_violation(m, &b, "overlaps");
        bb_free(&b);
        b_hole(&b, m, 0, 1, 2048, 2048);
        b_data(&b, m, 0, 1, 0, d, 2049);
        check_violation(m, &b, "overlaps");
        bb_free(&b);
        b_data(&b, m, 0, 1, 100, d, 1);
        b_data(&b, m, DONE, 1, 100, d, 1);
        check_violation(m, &b, "overlaps");
        bb_free(&b);
    }
}

static void test_violation_unknown_cookie(void **state UNUSED)
{
    struct bb b = { 0 };

    b_simple(&b, 0, 4);
    check_violation(NBD_MODE_SIMPLE, &b, "unknown cookie");
    bb_free(&b);
    for (int m = NBD_MODE_STRUCTURED; m <= NBD_MODE_EXTENDED; m++) {
        b_none(&b, m, 0);
        check_violation(m, &b, "unknown cookie");
        bb_free(&b);
        b_error(&b, m, DONE, UINT64_MAX, NBD_EIO, "");
        check_violation(m, &b, "unknown cookie 0xffffffffffffffff");
        bb_free(&b);

        /* A cookie already answered. */
        struct nbd_conn *c = detached(m, MiB, ALL_EFLAGS, NULL);
        struct rec r1 = { 0 }, r2 = { 0 };
        assert_int_equal(nbd_aio_flush(c, 0, rec_done, &r1), 0);
        assert_int_equal(nbd_aio_flush(c, 0, rec_done, &r2), 0);
        b_none(&b, m, 1);
        b_none(&b, m, 1);
        assert_int_equal(feed(c, &b, 0), -1);
        assert_true(nbd_is_dead(c));
        assert_done(&r1, 0);
        assert_done(&r2, EPROTO);
        assert_msg(&r2, "unknown cookie 0x1");
        bb_free(&b);
        nbd_close(c);
    }
}

static void test_violation_status_shapes(void **state UNUSED)
{
    struct bb b = { 0 };
    static const uint32_t zero[] = { 4096, 0, 0, 0 };
    static const uint32_t one[] = { 65536, 0 };
    const uint64_t zero64[] = { 0, 3 };
    const uint64_t one64[] = { 65536, 0 };

    b_status(&b, NBD_MODE_STRUCTURED, 0, 2, 0, 2, zero);
    check_violation(NBD_MODE_STRUCTURED, &b, "zero-length extent");
    bb_free(&b);
    b_status_ext(&b, NBD_MODE_EXTENDED, 0, 2, 1, 1, zero64);
    check_violation(NBD_MODE_EXTENDED, &b, "zero-length extent");
    bb_free(&b);

    b_status(&b, NBD_MODE_STRUCTURED, 0, 2, 7, 1, one);
    check_violation(NBD_MODE_STRUCTURED, &b, "context id 7");
    bb_free(&b);
    b_status_ext(&b, NBD_MODE_EXTENDED, 0, 2, 0x80000000, 1, one64);
    check_violation(NBD_MODE_EXTENDED, &b, "not negotiated");
    bb_free(&b);

    /* The wrong form for the mode. */
    b_status_ext(&b, NBD_MODE_STRUCTURED, 0, 2, 0, 1, one64);
    check_violation(NBD_MODE_STRUCTURED, &b, "extended headers are off");
    bb_free(&b);
    b_status(&b, NBD_MODE_EXTENDED, 0, 2, 0, 1, one);
    check_violation(NBD_MODE_EXTENDED, &b, "extended headers are on");
    bb_free(&b);

    /* The same context twice. */
    b_status(&b, NBD_MODE_STRUCTURED, 0, 2, 1, 1, one);
    b_status(&b, NBD_MODE_STRUCTURED, DONE, 2, 1, 1, one);
    check_violation(NBD_MODE_STRUCTURED, &b, "two block status chunks");
    bb_free(&b);

    /* Malformed payloads. */
    b_chunk(&b, NBD_MODE_STRUCTURED, 0, NBD_REPLY_TYPE_BLOCK_STATUS, 2, 0, 8);
    bb_be32(&b, 0);
    bb_be32(&b, 4096);
    check_violation(NBD_MODE_STRUCTURED, &b, "malformed");
    bb_free(&b);
    b_chunk(&b, NBD_MODE_EXTENDED, 0, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, 2, 0, 24);
    bb_be32(&b, 0);
    bb_be32(&b, 2);
    bb_be64(&b, 4096);
    bb_be64(&b, 0);
    check_violation(NBD_MODE_EXTENDED, &b, "claims 2 descriptors");
    bb_free(&b);
}

static void test_violation_wrong_chunk_for_command(void **state UNUSED)
{
    static const uint8_t d[8] = { 0 };
    static const uint32_t one[] = { 4096, 0 };
    struct bb b = { 0 };

    for (int m = NBD_MODE_STRUCTURED; m <= NBD_MODE_EXTENDED; m++) {
        b_data(&b, m, DONE, 2, 0, d, 8);
        check_violation(m, &b, "data chunk in reply to NBD_CMD_BLOCK_STATUS");
        bb_free(&b);
        b_data(&b, m, DONE, 3, 0, d, 8);
        check_violation(m, &b, "data chunk in reply to NBD_CMD_FLUSH");
        bb_free(&b);
        b_hole(&b, m, DONE, 2, 0, 512);
        check_violation(m, &b, "hole chunk in reply to");
        bb_free(&b);
        b_chunk(&b, m, DONE, NBD_REPLY_TYPE_OFFSET_DATA, 1, 0, 8);
        bb_be64(&b, 0);
        check_violation(m, &b, "carries no data");
        bb_free(&b);
        b_chunk(&b, m, DONE, 3, 1, 0, 0);
        check_violation(m, &b, "unknown reply chunk type");
        bb_free(&b);
    }
    b_status(&b, NBD_MODE_STRUCTURED, DONE, 1, 0, 1, one);
    check_violation(NBD_MODE_STRUCTURED, &b, "block status chunk in reply to NBD_CMD_READ");
    bb_free(&b);
    /* Simple replies where they cannot be. */
    b_simple(&b, 0, 1);
    check_violation(NBD_MODE_STRUCTURED, &b, "simple reply to NBD_CMD_READ");
    bb_free(&b);
    b_simple(&b, 0, 2);
    check_violation(NBD_MODE_STRUCTURED, &b, "simple reply without extents");
    bb_free(&b);
    b_simple(&b, 0, 2);
    check_violation(NBD_MODE_SIMPLE, &b, "simple reply without extents");
    bb_free(&b);
}

static void test_violation_headers(void **state UNUSED)
{
    struct bb b = { 0 };

    b_chunk(&b, NBD_MODE_STRUCTURED, DONE, NBD_REPLY_TYPE_NONE, 3, 0, 0);
    check_violation(NBD_MODE_SIMPLE, &b, "structured replies were not negotiated");
    bb_fill(&b, 0, 12); /* extended mode reads 32 bytes first */
    check_violation(NBD_MODE_EXTENDED, &b, "structured reply chunk while extended headers");
    bb_free(&b);
    b_simple(&b, 0, 3);
    bb_fill(&b, 0, 16);
    check_violation(NBD_MODE_EXTENDED, &b, "simple reply while extended");
    bb_free(&b);
    b_chunk(&b, NBD_MODE_EXTENDED, DONE, NBD_REPLY_TYPE_NONE, 3, 0, 0);
    check_violation(NBD_MODE_STRUCTURED, &b, "extended reply chunk");
    bb_free(&b);
    bb_str(&b, "HTTP/1.1 400 Bad Request\r\n\r\n....");
    check_violation(NBD_MODE_STRUCTURED, &b, "bad reply magic");
    bb_free(&b);
    for (int m = NBD_MODE_STRUCTURED; m <= NBD_MODE_EXTENDED; m++) {
        b_chunk(&b, m, 4, NBD_REPLY_TYPE_NONE, 3, 0, 0);
        check_violation(m, &b, "unknown flags");
        bb_free(&b);
        b_chunk(&b, m, 0, NBD_REPLY_TYPE_NONE, 3, 0, 0);
        check_violation(m, &b, "without NBD_REPLY_FLAG_DONE");
        bb_free(&b);
        b_chunk(&b, m, DONE, NBD_REPLY_TYPE_NONE, 3, 0, 4);
        check_violation(m, &b, "NBD_REPLY_TYPE_NONE chunk with a payload");
        bb_free(&b);
        b_chunk(&b, m, DONE, NBD_REPLY_TYPE_ERROR, 3, 0, 70000);
        check_violation(m, &b, "over the limit");
        bb_free(&b);
        b_chunk(&b, m, DONE, NBD_REPLY_TYPE_ERROR, 3, 0, 6);
        bb_be32(&b, 0);
        bb_be16(&b, 0);
        check_violation(m, &b, "error number 0");
        bb_free(&b);
    }
}

/* ---- Replies to requests not yet on the wire ----------------------------- */

/* With a real socket, requests wait in a send queue and a large WRITE
 * payload leaves straight from the caller's buffer.  A server that answers
 * a cookie it has not received yet (cookies are predictable) must not
 * complete it: that would free a queued request, or hand the caller back
 * a buffer still being sent. */
static void check_early_reply(bool big_write)
{
    int sv[2];
    struct nbd_conn *c = detached(NBD_MODE_STRUCTURED, 64 * MiB, ALL_EFLAGS, NULL);
    size_t wlen = big_write ? 16 * MiB : 4096;
    uint8_t *wbuf = calloc(1, wlen);
    struct rec r[256] = { 0 };
    struct bb b = { 0 };
    uint64_t target;
    int n = big_write ? 1 : 256;

    assert_non_null(wbuf);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK), 0);
    c->sock = nbd_sock_new(sv[0]);
    assert_non_null(c->sock);
    for (int i = 0; i < n; i++)
        assert_int_equal(nbd_aio_pwrite(c, wbuf, wlen, (uint64_t)i * wlen, 0, rec_done, &r[i]), 0);
    /* Send until the socket is full: the peer reads nothing. */
    for (int i = 0; i < 4; i++)
        assert_int_equal(nbd_step(c, 0), 0);
    if (big_write) {
        assert_non_null(c->direct);
        target = 1;
    } else {
        assert_non_null(c->sendq_head);
        target = c->sendq_head->cookie;
    }
    b_simple(&b, 0, target);
    assert_int_equal(write(sv[1], b.d, b.n), (ssize_t)b.n);
    assert_int_equal(nbd_step(c, POLLIN), -1);
    assert_true(nbd_is_dead(c));
    assert_int_equal(nbd_get_errno(), EPROTO);
    assert_non_null(strstr(nbd_get_error(), "before its request was sent"));
    for (int i = 0; i < n; i++)
        assert_done(&r[i], EPROTO);
    nbd_close(c);
    close(sv[1]);
    bb_free(&b);
    free(wbuf);
}

static void test_client_reply_before_sent(void **state UNUSED)
{
    check_early_reply(false);
    check_early_reply(true);
}

/* ---- Replies over a real socket ------------------------------------------- */

/* Large read data is received straight into the caller's buffer, the header
 * of its reply alone before it; small replies are gathered.  Over a real
 * socket, with reads large and small, a block status and errors in flight
 * together, replies out of order, data split into several chunks around a
 * hole, and the peer writing in odd slices: every buffer must hold exactly
 * its bytes, and nothing past its end may be touched. */
struct peer {
    int fd;
    size_t req_bytes;             /* requests to read before answering */
    const struct bb *reply;
    size_t slice;
};

static void *peer_main(void *opaque)
{
    struct peer *p = opaque;
    uint8_t tmp[4096];
    size_t got = 0;

    while (got < p->req_bytes) {
        ssize_t n = read(p->fd, tmp, sizeof tmp);
        if (n <= 0)
            return NULL;
        got += (size_t)n;
    }
    for (size_t pos = 0; pos < p->reply->n;) {
        size_t n = p->reply->n - pos < p->slice ? p->reply->n - pos : p->slice;
        ssize_t w = write(p->fd, p->reply->d + pos, n);
        if (w <= 0)
            return NULL;
        pos += (size_t)w;
    }
    return NULL;
}

static uint8_t pattern(uint64_t off) { return (uint8_t)(off * 131 + (off >> 12)); }

static void check_socket_reads(enum nbd_reply_mode m, size_t slice)
{
    /* offset, length, error (0 or an NBD error), split into chunks */
    static const struct { uint64_t off; uint32_t len; uint32_t err; } rd[] = {
        { 0, 65536, 0 },      { 1 << 20, 512, 0 },      { 3 << 20, 262144, 0 },
        { 5 << 20, 4096, 0 }, { 7 << 20, 65536, NBD_EIO }, { 9 << 20, 16384, 0 },
        { 11 << 20, 100000, 0 },
    };
    enum { N = sizeof rd / sizeof rd[0], GUARD = 64 };
    const bool structured = m != NBD_MODE_SIMPLE;
    struct nbd_conn *c = detached(m, 64 * MiB, ALL_EFLAGS, structured ? two_contexts : NULL);
    struct rec r[N + 1] = { 0 };
    struct ext_rec er = { 0 };
    uint8_t *buf[N];
    struct bb b = { 0 };
    int sv[2];
    size_t nreq = 0;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK), 0);
    c->sock = nbd_sock_new(sv[0]);
    assert_non_null(c->sock);
    for (size_t i = 0; i < N; i++) {
        buf[i] = malloc(rd[i].len + GUARD);
        assert_non_null(buf[i]);
        memset(buf[i], 0xee, rd[i].len + GUARD);
        assert_int_equal(nbd_aio_pread(c, buf[i], rd[i].len, rd[i].off, 0, rec_done, &r[i]), 0);
        nreq++;
        if (i == 2 && structured) { /* a block status among the reads */
            assert_int_equal(nbd_aio_block_status(c, 4096, 8192, 0, NULL, rec_extents, &er,
                                                  rec_done, &r[N]),
                             0);
            nreq++;
        }
    }
    /* Cookies follow submission: read i is i + 1, or i + 2 after the block
     * status (cookie 4).  Answered last first. */
    for (size_t k = N; k-- > 0;) {
        uint64_t cookie = k + 1 + (structured && k > 2);
        uint32_t len = rd[k].len;
        uint8_t *data = malloc(len);
        assert_non_null(data);
        for (uint32_t j = 0; j < len; j++)
            data[j] = pattern(rd[k].off + j);
        if (!structured) {
            b_simple(&b, rd[k].err, cookie);
            if (!rd[k].err)
                bb_put(&b, data, len);
        } else if (rd[k].err) {
            b_error(&b, m, DONE, cookie, rd[k].err, "boom");
        } else if (len >= 65536) {
            /* The second half first, a hole, then the first third. */
            uint32_t third = len / 3, half = len / 2;
            b_data(&b, m, 0, cookie, rd[k].off + half, data + half, len - half);
            b_hole(&b, m, 0, cookie, rd[k].off + third, half - third);
            b_data(&b, m, DONE, cookie, rd[k].off, data, third);
        } else {
            b_data(&b, m, DONE, cookie, rd[k].off, data, len);
        }
        free(data);
        if (k == 3 && structured) {
            static const uint32_t ba[] = { 4096, 1 };
            static const uint64_t ba64[] = { 4096, 1 };
            if (m == NBD_MODE_EXTENDED)
                b_status_ext(&b, m, DONE, 4, 0, 1, ba64);
            else
                b_status(&b, m, DONE, 4, 0, 1, ba);
        }
    }
    struct peer p = { sv[1], nreq * (m == NBD_MODE_EXTENDED ? 32 : 28), &b, slice };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, peer_main, &p), 0);
    for (time_t end = time(NULL) + 10; c->ops_in_flight;) {
        if (nbd_poll(c, 1000) < 0)
            fail_msg("mode %d slice %zu: %s", m, slice, nbd_get_error());
        if (time(NULL) > end)
            fail_msg("mode %d slice %zu: replies not all taken after 10 s", m, slice);
    }
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(c->ops_in_flight, 0);
    assert_false(nbd_is_dead(c));
    assert_int_equal(c->big_reads, 0);

    for (size_t i = 0; i < N; i++) {
        assert_done(&r[i], rd[i].err ? EIO : 0);
        for (uint32_t j = 0; !rd[i].err && j < rd[i].len; j++) {
            bool hole = structured && rd[i].len >= 65536 && j >= rd[i].len / 3 && j < rd[i].len / 2;
            uint8_t want = hole ? 0 : pattern(rd[i].off + j);
            if (buf[i][j] != want)
                fail_msg("mode %d slice %zu: read %zu byte %u is 0x%02x, not 0x%02x", m, slice, i,
                         j, buf[i][j], want);
        }
        for (size_t j = rd[i].len; j < rd[i].len + GUARD; j++)
            if (buf[i][j] != 0xee)
                fail_msg("mode %d slice %zu: read %zu was written past its end", m, slice, i);
        free(buf[i]);
    }
    if (structured) {
        assert_done(&r[N], 0);
        assert_int_equal(er.calls, 1);
        assert_int_equal(er.call[0].offset, 8192);
    }
    close(sv[1]); /* the peer hangs up first: nbd_close need not wait */
    nbd_close(c);
    bb_free(&b);
}

static void test_client_socket_reads(void **state UNUSED)
{
    static const size_t slices[] = { 1 << 20, 65536, 4099, 17 };
    for (size_t s = 0; s < sizeof slices / sizeof *slices; s++) {
        check_socket_reads(NBD_MODE_SIMPLE, slices[s]);
        check_socket_reads(NBD_MODE_STRUCTURED, slices[s]);
        check_socket_reads(NBD_MODE_EXTENDED, slices[s]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_client_flags),
        cmocka_unit_test(test_encode_opt_no_data),
        cmocka_unit_test(test_encode_opt_appends),
        cmocka_unit_test(test_encode_opt_export_name),
        cmocka_unit_test(test_encode_opt_info_go),
        cmocka_unit_test(test_encode_opt_meta_context),
        cmocka_unit_test(test_encode_requests),
        cmocka_unit_test(test_encode_server_side),
        cmocka_unit_test(test_decode_greeting),
        cmocka_unit_test(test_decode_export_name_reply),
        cmocka_unit_test(test_decode_opt_reply_header),
        cmocka_unit_test(test_decode_rep_server),
        cmocka_unit_test(test_decode_rep_info),
        cmocka_unit_test(test_decode_rep_meta_context),
        cmocka_unit_test(test_check_string),
        cmocka_unit_test(test_reply_first_len),
        cmocka_unit_test(test_decode_simple_reply),
        cmocka_unit_test(test_decode_structured_header),
        cmocka_unit_test(test_decode_extended_header),
        cmocka_unit_test(test_decode_chunk_header_rules),
        cmocka_unit_test(test_decode_chunk_error),
        cmocka_unit_test(test_decode_chunk_hole),
        cmocka_unit_test(test_decode_chunk_status),
        cmocka_unit_test(test_range_within),
        cmocka_unit_test(test_cover_in_order),
        cmocka_unit_test(test_cover_out_of_order),
        cmocka_unit_test(test_cover_overlap),
        cmocka_unit_test(test_client_submit_compact),
        cmocka_unit_test(test_client_submit_extended),
        cmocka_unit_test(test_client_submit_splits),
        cmocka_unit_test(test_client_request_size),
        cmocka_unit_test(test_client_structured_read),
        cmocka_unit_test(test_client_interleaved),
        cmocka_unit_test(test_client_simple_read),
        cmocka_unit_test(test_client_read_error_chunk),
        cmocka_unit_test(test_client_short_read),
        cmocka_unit_test(test_client_bounce_read),
        cmocka_unit_test(test_client_block_status_clipped),
        cmocka_unit_test(test_client_block_status_extended),
        cmocka_unit_test(test_client_block_status_filter),
        cmocka_unit_test(test_violation_outside_request),
        cmocka_unit_test(test_violation_overlap),
        cmocka_unit_test(test_violation_unknown_cookie),
        cmocka_unit_test(test_violation_status_shapes),
        cmocka_unit_test(test_violation_wrong_chunk_for_command),
        cmocka_unit_test(test_violation_headers),
        cmocka_unit_test(test_client_reply_before_sent),
        cmocka_unit_test(test_client_socket_reads),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
