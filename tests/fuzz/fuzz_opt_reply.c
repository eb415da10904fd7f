/* fuzz_opt_reply.c: the handshake decoders of nbdcore/codec.c fed with a
 * stream of option replies from a hostile server.
 *
 * Input layout (tests/fuzz/make-corpus.py writes seeds that follow it):
 *   byte 0   bit 7 set: each reply is checked against the option its own
 *            header names (so every header passes that check); clear: the
 *            option we wait for is byte 0 & 0x7f (mostly 1-11)
 *   then     replies: a 20-byte header (magic, option, type, length) and
 *            its payload, until the input runs out
 *
 * Each payload is copied into a buffer of exactly its size and handed to
 * the decoder its reply type calls for: nbd_decode_rep_server,
 * nbd_decode_rep_info, nbd_decode_rep_meta_context, nbd_check_string for
 * an error message; an answer to NBD_OPT_EXPORT_NAME goes through
 * nbd_decode_export_name_reply, and an unknown reply type through the
 * greeting decoders.  A header that fails to decode is skipped (20 bytes)
 * so that the rest of the input still gets parsed.  The harness aborts
 * when a decoder accepts something it promised to refuse.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdcore/codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void broken(const char *what)
{
    fprintf(stderr, "fuzz_opt_reply: %s\n", what);
    abort();
}

/* A decoded string must lie within the payload and obey the string rules. */
static void check_str(const uint8_t *p, size_t len, const char *s, size_t slen)
{
    const uint8_t *u = (const uint8_t *)s;

    if (slen && (u < p || u > p + len || slen > (size_t)(p + len - u)))
        broken("a decoded string lies outside the payload");
    if (slen > NBD_MAX_STRING)
        broken("a decoded string is over 4096 bytes");
    if (slen && memchr(s, 0, slen))
        broken("a decoded string contains a NUL byte");
}

static void decode_info(const uint8_t *p, size_t len)
{
    struct nbd_rep_info ri;

    if (nbd_decode_rep_info(p, len, &ri) < 0)
        return;
    switch (ri.type) {
    case NBD_INFO_EXPORT:
        if (len != 12 || ri.size >> 63 || !(ri.flags & NBD_FLAG_HAS_FLAGS))
            broken("bad NBD_INFO_EXPORT accepted");
        break;
    case NBD_INFO_NAME:
    case NBD_INFO_DESCRIPTION:
        if (ri.str != (const char *)p + 2 || ri.strlen != len - 2)
            broken("NBD_INFO_NAME/DESCRIPTION string misplaced");
        check_str(p, len, ri.str, ri.strlen);
        break;
    case NBD_INFO_BLOCK_SIZE:
        if (len != 14)
            broken("NBD_INFO_BLOCK_SIZE of the wrong length accepted");
        if (ri.block_size_valid &&
            (ri.min_block == 0 || (ri.min_block & (ri.min_block - 1)) || ri.min_block > 65536 ||
             ri.pref_block < 512 || ri.pref_block < ri.min_block || ri.max_block < ri.pref_block))
            broken("inconsistent block sizes called valid");
        break;
    default:
        break;
    }
}

static void decode_payload(uint32_t opt, uint32_t type, const uint8_t *p, size_t len)
{
    const char *name, *desc;
    size_t nlen, dlen;
    uint32_t id;

    if (opt == NBD_OPT_EXPORT_NAME && len >= 10) {
        uint64_t esize;
        uint16_t eflags;
        if (nbd_decode_export_name_reply(p, &esize, &eflags) == 0 &&
            (esize >> 63 || !(eflags & NBD_FLAG_HAS_FLAGS)))
            broken("bad EXPORT_NAME reply accepted");
    }
    switch (type) {
    case NBD_REP_ACK:
        if (len)
            broken("ACK with a payload accepted");
        break;
    case NBD_REP_SERVER:
        if (nbd_decode_rep_server(p, len, &name, &nlen, &desc, &dlen) == 0) {
            check_str(p, len, name, nlen);
            check_str(p, len, desc, dlen);
            if (4 + nlen + dlen != len)
                broken("NBD_REP_SERVER pieces do not add up");
        }
        break;
    case NBD_REP_INFO:
        decode_info(p, len);
        break;
    case NBD_REP_META_CONTEXT:
        if (nbd_decode_rep_meta_context(p, len, &id, &name, &nlen) == 0) {
            check_str(p, len, name, nlen);
            if (nlen == 0 || nlen + 4 != len || id != nbd_get32(p))
                broken("NBD_REP_META_CONTEXT misdecoded");
        }
        break;
    default:
        if (type & NBD_REP_FLAG_ERROR) {
            nbd_check_string("error message", (const char *)p, len);
        } else if (len >= 16) {
            bool oldstyle;
            if (nbd_decode_greeting_magic(p, &oldstyle) == 0 && len >= 18)
                (void)nbd_decode_greeting_flags(p);
        }
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;

    bool self = data[0] & 0x80;
    uint32_t want = data[0] & 0x7f;
    size_t pos = 1;

    while (size - pos >= 20) {
        const uint8_t *hdr = data + pos;
        uint32_t expect = self ? nbd_get32(hdr + 8) : want;
        struct nbd_opt_reply r;

        pos += 20;
        if (nbd_decode_opt_reply(hdr, expect, &r) < 0)
            continue;
        if (r.option != expect || r.length > NBD_MAX_OPT_REPLY)
            broken("bad option reply header accepted");
        if (r.length > size - pos)
            break; /* the server hung up mid-payload */
        uint8_t *p = malloc(r.length ? r.length : 1);
        if (!p)
            abort();
        memcpy(p, data + pos, r.length);
        pos += r.length;
        decode_payload(r.option, r.reply, p, r.length);
        free(p);
    }
    return 0;
}
