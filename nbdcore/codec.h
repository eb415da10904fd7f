/* codec.h (nbdcore internal): the sans-I/O wire codec.
 *
 * Pure functions that encode requests and options into bytes and decode the
 * peer's bytes into structs, checking every length before it is used.  They
 * never touch a socket, so the unit tests and the fuzzers call them directly
 * and the client and server engines are thin I/O loops around them.
 *
 * Decoders return 0 on success and -1 with nbd_set_error(EPROTO, "...") on a
 * protocol violation; the message names the violation.  Decoded strings are
 * pointers into the caller's buffer with a length (not NUL-terminated).
 */
#ifndef NBDCORE_CODEC_H
#define NBDCORE_CODEC_H

#include "common/be.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nbd-protocol.h"

/* Caps on what a peer may send us (beyond the spec's own limits). */
#define NBD_MAX_OPT_REPLY     (64u * 1024)        /* one option reply payload */
#define NBD_MAX_OPT_DATA      (64u * 1024)        /* one option's data, server side */
#define NBD_MAX_PAYLOAD       (64u * 1024 * 1024) /* READ / WRITE payloads */
#define NBD_MAX_STATUS_CHUNK  (8u + 16u * NBD_MAX_BLOCK_STATUS_DESCRIPTORS)
#define NBD_MAX_META_CHUNK    (64u * 1024)        /* error chunks and other metadata */

/* ---- Byte order -------------------------------------------------------- */
/* common/be.h's helpers under the names the protocol code uses. */
#define nbd_get16 be_get16
#define nbd_get32 be_get32
#define nbd_get64 be_get64
#define nbd_put16 be_put16
#define nbd_put32 be_put32
#define nbd_put64 be_put64

/* ---- A growable output buffer for options ------------------------------ */
struct nbd_wbuf {
    uint8_t *data;
    size_t len, cap;
    bool failed;                  /* an allocation failed: the content is void */
};
void nbd_wbuf_free(struct nbd_wbuf *b);
void nbd_wbuf_put(struct nbd_wbuf *b, const void *p, size_t n);
void nbd_wbuf_put16(struct nbd_wbuf *b, uint16_t v);
void nbd_wbuf_put32(struct nbd_wbuf *b, uint32_t v);
void nbd_wbuf_put64(struct nbd_wbuf *b, uint64_t v);

/* ---- Handshake: client side -------------------------------------------- */

/* in: the first 16 bytes of the greeting.  *oldstyle set for an oldstyle
 * server (the caller decides whether it may go on); else reads gflags from
 * in[16..17] (the caller passes 18 bytes). */
int nbd_decode_greeting_magic(const uint8_t in[16], bool *oldstyle);
uint16_t nbd_decode_greeting_flags(const uint8_t in[18]);

void nbd_encode_client_flags(uint8_t out[4], uint32_t flags);
/* Option header (16 bytes) + data, appended to b.  Each returns 0 or -1
 * (a string over NBD_MAX_STRING, or out of memory). */
int nbd_encode_opt(struct nbd_wbuf *b, uint32_t opt, const void *data, uint32_t len);
int nbd_encode_opt_export_name(struct nbd_wbuf *b, const char *name);
int nbd_encode_opt_info(struct nbd_wbuf *b, uint32_t opt, const char *name,
                        const uint16_t *infos, size_t ninfos);
int nbd_encode_opt_meta_context(struct nbd_wbuf *b, uint32_t opt, const char *name,
                                const char *const *queries);

struct nbd_opt_reply {
    uint32_t option;
    uint32_t reply;
    uint32_t length;
};
/* Checks the magic, that the option echoes expect_opt, that the length is
 * within NBD_MAX_OPT_REPLY and that an ACK carries nothing. */
int nbd_decode_opt_reply(const uint8_t in[20], uint32_t expect_opt, struct nbd_opt_reply *r);

struct nbd_rep_info {
    uint16_t type;
    uint64_t size;                /* NBD_INFO_EXPORT */
    uint16_t flags;
    uint32_t min_block, pref_block, max_block; /* NBD_INFO_BLOCK_SIZE */
    bool block_size_valid;        /* false: inconsistent, to be ignored */
    const char *str;              /* NBD_INFO_NAME / _DESCRIPTION */
    size_t strlen;
};
int nbd_decode_rep_info(const uint8_t *p, size_t len, struct nbd_rep_info *info);
int nbd_decode_rep_server(const uint8_t *p, size_t len, const char **name, size_t *namelen,
                          const char **desc, size_t *desclen);
int nbd_decode_rep_meta_context(const uint8_t *p, size_t len, uint32_t *id,
                                const char **name, size_t *namelen);
/* EXPORT_NAME's reply: the first 10 bytes (size, flags). */
int nbd_decode_export_name_reply(const uint8_t in[10], uint64_t *size, uint16_t *flags);
/* A string from the peer: at most NBD_MAX_STRING bytes, no NUL. */
int nbd_check_string(const char *what, const char *s, size_t len);

/* ---- Transmission ------------------------------------------------------ */

/* Writes a compact (28 bytes) or extended (32 bytes) request header and
 * returns its length; 0 when count does not fit a compact request. */
size_t nbd_encode_request(uint8_t out[32], bool extended, uint16_t flags, uint16_t type,
                          uint64_t cookie, uint64_t offset, uint64_t count);

enum nbd_reply_mode { NBD_MODE_SIMPLE, NBD_MODE_STRUCTURED, NBD_MODE_EXTENDED };

struct nbd_reply_hdr {
    uint32_t magic;
    bool simple;                  /* a simple reply (error in .error) */
    uint32_t error;               /* simple replies */
    uint16_t flags, type;         /* chunks */
    uint64_t cookie;
    uint64_t offset;              /* extended chunks */
    uint64_t length;              /* chunk payload length */
};
/* How many bytes to read first for a reply in this mode (16 or 32). */
size_t nbd_reply_first_len(enum nbd_reply_mode mode);
/* From the first bytes read, the full header length for this magic, or -1
 * (violation: bad magic, or a kind of reply not negotiated). */
int nbd_reply_header_len(const uint8_t *in, enum nbd_reply_mode mode, size_t *len);
/* Decodes a full header (nbd_reply_header_len bytes).  Checks the magic,
 * unknown flags, the NONE chunk's shape and the payload length caps. */
int nbd_decode_reply_header(const uint8_t *in, enum nbd_reply_mode mode, struct nbd_reply_hdr *h);

/* Chunk payloads. */
int nbd_decode_chunk_error(uint16_t type, const uint8_t *p, size_t len, uint32_t *err,
                           const char **msg, size_t *msglen, bool *has_offset, uint64_t *offset);
int nbd_decode_chunk_hole(const uint8_t *p, size_t len, uint64_t *offset, uint32_t *size);
/* BLOCK_STATUS (compact) or BLOCK_STATUS_EXT: checks the shape; entries are
 * read with nbd_status_entry. */
int nbd_decode_chunk_status(uint16_t type, const uint8_t *p, size_t len, uint32_t *context_id,
                            size_t *count);
void nbd_status_entry(uint16_t type, const uint8_t *p, size_t i, uint64_t *length, uint64_t *flags);

/* Overflow-safe: [off, off+len) lies within [req_off, req_off+req_len). */
static inline bool nbd_range_within(uint64_t req_off, uint64_t req_len, uint64_t off, uint64_t len)
{
    return off >= req_off && len <= req_len && off - req_off <= req_len - len;
}

/* Coverage of one READ: the ranges its chunks filled, kept sorted and
 * merged, so that overlap and missing pieces are both detected. */
struct nbd_cover {
    struct nbd_range { uint64_t start, end; } *iv;
    size_t n, cap;
    uint64_t total;
};
int nbd_cover_add(struct nbd_cover *c, uint64_t start, uint64_t len); /* -1: overlap */
void nbd_cover_free(struct nbd_cover *c);

/* ---- Handshake: server side (used by the server engine) ---------------- */
void nbd_encode_greeting(uint8_t out[18], uint16_t gflags);
/* Option reply header + payload appended to b. */
int nbd_encode_opt_reply(struct nbd_wbuf *b, uint32_t opt, uint32_t reply,
                         const void *payload, uint32_t len);
/* Reply chunk headers. */
size_t nbd_encode_simple_reply(uint8_t out[16], uint32_t error, uint64_t cookie);
size_t nbd_encode_chunk_header(uint8_t out[32], bool extended, uint16_t flags, uint16_t type,
                               uint64_t cookie, uint64_t offset, uint64_t length);

#endif
