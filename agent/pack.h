/* agent/pack.h (agent internal): pack files and chunk coding.
 *
 * A chunk is the content of one grid cell; its id is the SHA-256 of its
 * plaintext.  It is stored zstd-compressed, or raw when compression does not
 * shrink it, in a pack file of about 32 MiB under DIR/packs/.  A pack is
 * self-describing (docs/FORMAT.md): every entry carries the chunk id, codec,
 * stored and plain lengths and a CRC-32 of the stored bytes, and a trailer
 * indexes them, so the catalog can be rebuilt from the packs alone.
 *
 * A pack is written to a temporary name, fsynced, renamed, and its
 * directory fsynced before any catalog row points at it.
 *
 * Errors: -1 with common/error.h's message naming the pack and the chunk.
 */
#ifndef AGENT_PACK_H
#define AGENT_PACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PACK_HASH_LEN 32
#define PACK_TARGET_SIZE (32u * 1024 * 1024)
#define PACK_NAME_MAX 80
#define CHUNK_CODEC_RAW 0
#define CHUNK_CODEC_ZSTD 1

/* SHA-256 of a buffer (gnutls). */
void chunk_hash(const void *data, size_t len, uint8_t out[PACK_HASH_LEN]);
/* Lower-case hex of a hash, for messages (65 bytes with the NUL). */
void chunk_hash_hex(const uint8_t hash[PACK_HASH_LEN], char out[65]);
/* CRC-32 (the IEEE polynomial, reflected: zlib's crc32()) of stored bytes. */
uint32_t chunk_crc(const void *data, size_t len);

/* Compresses in[len] with zstd at level into out (cap >= chunk_bound(len)).
 * Sets *stored to what to store and its length: out with CHUNK_CODEC_ZSTD,
 * or in itself with CHUNK_CODEC_RAW when compression would not shrink it.
 * Level 1 on chunks up to 128 KiB uses a 2^11-entry hash table (see
 * pack.c).  cctx: a ZSTD_CCtx * owned by the caller (one per thread). */
size_t chunk_bound(size_t len);
int chunk_compress(void *cctx, int level, const void *in, size_t len, void *out, size_t cap,
                   const void **stored, size_t *stored_len, uint8_t *codec);
/* Decodes a stored chunk into out[plain_len] and checks its CRC and its id:
 * a damaged chunk fails with EIO and a message naming it. */
int chunk_decode(void *dctx, uint8_t codec, const void *stored, size_t stored_len, uint32_t crc,
                 void *out, size_t plain_len, const uint8_t hash[PACK_HASH_LEN]);

/* One chunk as a pack records it. */
struct pack_entry {
    uint8_t hash[PACK_HASH_LEN];
    uint8_t codec;
    uint32_t stored_len, plain_len;
    uint32_t crc;
    uint64_t offset;              /* of the entry header in the pack */
};

/* ---- Writing ------------------------------------------------------------ */
struct pack_writer;
/* Starts a new pack under repo_dir/packs/ with a random name (temporary
 * file until pack_writer_finish). */
/* Whether packs opened from now on try O_DIRECT (the default; the writes
 * fall back to buffered I/O where the file system refuses it).  Tests turn
 * it off to take the buffered path. */
void pack_writer_direct_io(bool on);
struct pack_writer *pack_writer_open(const char *repo_dir);
/* Appends one stored chunk; fills e->offset.  e: hash, codec, lengths, crc. */
int pack_writer_add(struct pack_writer *w, struct pack_entry *e, const void *stored);
uint64_t pack_writer_size(const struct pack_writer *w);
size_t pack_writer_count(const struct pack_writer *w);
const struct pack_entry *pack_writer_entries(const struct pack_writer *w);
/* Writes the index trailer, fsyncs, renames to the final name, fsyncs the
 * directory.  name receives the pack's name relative to packs/ (e.g.
 * "ab/ab12...ef.pack"), size its length.  The writer stays valid for
 * pack_writer_entries until pack_writer_free. */
int pack_writer_finish(struct pack_writer *w, char name[PACK_NAME_MAX], uint64_t *size);
/* pack_writer_finish in two steps: seal writes the trailer and leaves the
 * rest (the last writes, fsync, rename, directory syncs) to the writer's
 * thread, returning the name and size at once; wait returns when the pack
 * is durable under its name (0) or failed (-1).  What needs the pack to be
 * durable (its catalog commit) comes after wait; what does not can overlap
 * it. */
int pack_writer_seal(struct pack_writer *w, char name[PACK_NAME_MAX], uint64_t *size);
int pack_writer_wait(struct pack_writer *w);
/* Frees; removes the temporary file when not finished.  Accepts NULL. */
void pack_writer_free(struct pack_writer *w);

/* ---- Reading ------------------------------------------------------------ */
/* Reads chunks from packs, keeping a small cache of open files. */
struct pack_reader;
struct pack_reader *pack_reader_open(const char *repo_dir);
void pack_reader_close(struct pack_reader *r);
/* Whether pack_reader_get checks each chunk's id (SHA-256 of the
 * plaintext) besides its CRC and framing: on by default (restore, verify,
 * backup); serve turns it off for speed, its reads still checked by the
 * CRC of the stored bytes and zstd's own framing. */
void pack_reader_check_ids(struct pack_reader *r, bool on);
/* Reads and checks one chunk (CRC and id) into out[e->plain_len]. */
int pack_reader_get(struct pack_reader *r, const char *pack_name, const struct pack_entry *e,
                    void *out);

/* Walks a whole pack file: checks its header, every entry's framing and
 * CRC (and, when check_ids, decompresses and checks each id), and the
 * trailer against the entries.  fn (may be NULL) sees each entry; returns
 * 0 when the pack is whole, -1 with a message describing the damage. */
int pack_scan(const char *path, bool check_ids,
              int (*fn)(void *opaque, const struct pack_entry *e), void *opaque);

/* Removes repo_dir/packs/<name>, fsyncing the directory. */
int pack_remove(const char *repo_dir, const char *name);
/* Calls fn for every pack file and leftover temporary file under packs/
 * (name relative to packs/, is_temp). */
int pack_list_files(const char *repo_dir, int (*fn)(void *opaque, const char *name, bool is_temp),
                    void *opaque);

#endif
