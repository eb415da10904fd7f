/* agent/chunk.c: chunk coding (SHA-256 or keyed ids, zstd, CRC-32, seals); no I/O. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <isa-l/crc.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "agent/chunk.h"
#include "common/be.h"
#include "common/error.h"
#include "crypt/crypt.h"

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

uint32_t chunk_crc_update(uint32_t crc, const void *data, size_t len)
{
    return crc32_gzip_refl(crc, data, len);
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

void chunk_id(const struct crypt_keys *keys, const void *data, size_t len, uint8_t out[PACK_HASH_LEN])
{
    if (keys)
        crypt_chunk_id(keys, data, len, out);
    else
        chunk_hash(data, len, out);
}

/* What a seal authenticates besides the bytes: id, codec, plain length. */
static void seal_aad(const uint8_t id[PACK_HASH_LEN], uint8_t codec, uint32_t plain_len, uint8_t aad[37])
{
    memcpy(aad, id, PACK_HASH_LEN);
    aad[32] = codec;
    be_put32(aad + 33, plain_len);
}

int chunk_seal(const struct crypt_keys *keys, const uint8_t id[PACK_HASH_LEN], uint8_t *codec,
               uint32_t plain_len, const void *in, size_t len, void *out)
{
    uint8_t aad[37];

    *codec |= CHUNK_CODEC_SEALED;
    seal_aad(id, *codec, plain_len, aad);
    return crypt_seal(keys->chunk, aad, sizeof aad, in, len, out);
}

/* The coded bytes of a sealed chunk, opened into a new buffer (*plain). */
static int unseal(const struct crypt_keys *keys, uint8_t codec, const void *stored, size_t stored_len,
                  size_t plain_len, const uint8_t hash[PACK_HASH_LEN], uint8_t **coded)
{
    char hex[65];
    uint8_t aad[37];

    *coded = NULL;
    chunk_hash_hex(hash, hex);
    if (!keys) {
        error_set(EACCES, "chunk %s is encrypted: the repository's key is needed", hex);
        return -1;
    }
    if (stored_len < CRYPT_OVERHEAD) {
        error_set(EIO, "chunk %s: %zu sealed bytes are too few for a seal", hex, stored_len);
        return -1;
    }
    if (!(*coded = malloc(stored_len - CRYPT_OVERHEAD + 1))) {
        error_set(ENOMEM, "chunk %s: out of memory", hex);
        return -1;
    }
    seal_aad(hash, codec, (uint32_t)plain_len, aad);
    if (crypt_open(keys->chunk, aad, sizeof aad, stored, stored_len, *coded) < 0) {
        char why[256];
        snprintf(why, sizeof why, "%s", error_msg());
        error_set(EIO, "chunk %s: its seal does not hold (%s)", hex, why);
        free(*coded);
        *coded = NULL;
        return -1;
    }
    return 0;
}

static int decode_coded(void *dctx, uint8_t codec, const void *stored, size_t stored_len, void *out,
                        size_t plain_len, const uint8_t hash[PACK_HASH_LEN])
{
    char hex[65] = "";
    size_t r;

    switch (codec) {
    case CHUNK_CODEC_RAW:
        if (stored_len != plain_len) {
            chunk_hash_hex(hash, hex);
            error_set(EIO, "chunk %s: raw chunk of %zu bytes, expected %zu", hex, stored_len,
                      plain_len);
            return -1;
        }
        memcpy(out, stored, plain_len);
        return 0;
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
        return 0;
    default:
        chunk_hash_hex(hash, hex);
        error_set(EIO, "chunk %s: unknown codec %u", hex, codec);
        return -1;
    }
}

int chunk_decode_check(void *dctx, const struct crypt_keys *keys, uint8_t codec, const void *stored,
                       size_t stored_len, uint32_t crc, void *out, size_t plain_len,
                       const uint8_t hash[PACK_HASH_LEN], bool check_id)
{
    char hex[65] = "";
    uint8_t got[PACK_HASH_LEN], *coded = NULL;
    /* A sealed chunk opened with the key needs no CRC: its GCM tag
     * authenticates every stored byte (nonce, ciphertext, tag), and a
     * changed one is named by the seal.  Without the key, the CRC is what
     * can be checked. */
    bool sealed = (codec & CHUNK_CODEC_SEALED) && keys;
    uint32_t c = sealed ? crc : chunk_crc(stored, stored_len);

    if (c != crc) {
        chunk_hash_hex(hash, hex);
        error_set(EIO, "chunk %s: CRC mismatch (stored bytes have 0x%08x, expected 0x%08x)",
                  hex, c, crc);
        return -1;
    }
    if (codec & CHUNK_CODEC_SEALED) {
        if (unseal(keys, codec, stored, stored_len, plain_len, hash, &coded) < 0)
            return -1;
        stored = coded;
        stored_len -= CRYPT_OVERHEAD;
    }
    int r = decode_coded(dctx, CHUNK_CODING(codec), stored, stored_len, out, plain_len, hash);
    free(coded);
    if (r < 0 || !check_id)
        return r;
    chunk_id(keys, out, plain_len, got);
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
    return chunk_decode_check(dctx, NULL, codec, stored, stored_len, crc, out, plain_len, hash, true);
}
