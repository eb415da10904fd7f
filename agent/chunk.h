/* agent/chunk.h (agent internal): chunk coding, pure (no I/O).
 *
 * A chunk is the content of one grid cell; its id is the SHA-256 of its
 * plaintext (in an encrypted repository the HMAC-SHA256 under the
 * repository's id key).  It is stored zstd-compressed, or raw when
 * compression does not shrink it, then in an encrypted repository sealed,
 * with a CRC-32 of the stored bytes.
 *
 * Errors: -1 with common/error.h's message naming the chunk.
 */
#ifndef AGENT_CHUNK_H
#define AGENT_CHUNK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PACK_HASH_LEN 32
#define CHUNK_CODEC_RAW 0
#define CHUNK_CODEC_ZSTD 1
/* A flag on the codec: the stored bytes are the coded bytes sealed with
 * AES-256-GCM (crypt/crypt.h: nonce | ciphertext | tag), the chunk's id,
 * codec and plain length authenticated with them. */
#define CHUNK_CODEC_SEALED 0x80
#define CHUNK_CODING(codec) ((codec) & 0x7f)

struct crypt_keys;
/* Largest plain or stored length of one chunk; chunks are at most 16 MiB,
 * this leaves room and bounds what a damaged header can make a reader
 * allocate. */
#define PACK_ENTRY_MAX (64u * 1024 * 1024)

/* SHA-256 of a buffer (gnutls). */
void chunk_hash(const void *data, size_t len, uint8_t out[PACK_HASH_LEN]);
/* A chunk's id: chunk_hash, or with keys (not NULL) the keyed id. */
void chunk_id(const struct crypt_keys *keys, const void *data, size_t len, uint8_t out[PACK_HASH_LEN]);
/* Seals coded bytes in[len] of the chunk id (plain_len bytes of plaintext)
 * into out[len + CRYPT_OVERHEAD]; *codec gains CHUNK_CODEC_SEALED. */
int chunk_seal(const struct crypt_keys *keys, const uint8_t id[PACK_HASH_LEN], uint8_t *codec,
               uint32_t plain_len, const void *in, size_t len, void *out);
/* Lower-case hex of a hash, for messages (65 bytes with the NUL). */
void chunk_hash_hex(const uint8_t hash[PACK_HASH_LEN], char out[65]);
/* CRC-32 (the IEEE polynomial, reflected: zlib's crc32()) of stored bytes;
 * _update continues one (start from 0). */
uint32_t chunk_crc(const void *data, size_t len);
uint32_t chunk_crc_update(uint32_t crc, const void *data, size_t len);

/* Compresses in[len] with zstd at level into out (cap >= chunk_bound(len)).
 * Sets *stored to what to store and its length: out with CHUNK_CODEC_ZSTD,
 * or in itself with CHUNK_CODEC_RAW when compression would not shrink it.
 * Level 1 on chunks up to 128 KiB uses a 2^11-entry hash table (see
 * chunk.c).  cctx: a ZSTD_CCtx * owned by the caller (one per thread). */
size_t chunk_bound(size_t len);
int chunk_compress(void *cctx, int level, const void *in, size_t len, void *out, size_t cap,
                   const void **stored, size_t *stored_len, uint8_t *codec);
/* Decodes a stored chunk into out[plain_len] and checks its CRC, its
 * seal (a sealed chunk needs keys: EACCES without them; a seal that does
 * not hold is damage like any other) and (when check_id) its id: a damaged
 * chunk fails with EIO and a message naming it.  chunk_decode: no keys,
 * and always checks the id. */
int chunk_decode_check(void *dctx, const struct crypt_keys *keys, uint8_t codec, const void *stored,
                       size_t stored_len, uint32_t crc, void *out, size_t plain_len,
                       const uint8_t hash[PACK_HASH_LEN], bool check_id);
int chunk_decode(void *dctx, uint8_t codec, const void *stored, size_t stored_len, uint32_t crc,
                 void *out, size_t plain_len, const uint8_t hash[PACK_HASH_LEN]);

#endif
