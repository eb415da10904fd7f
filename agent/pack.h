/* agent/pack.h (agent internal): packs in a repository's store.
 *
 * Chunks (agent/chunk.h) are stored in packs of about 32 MiB, the objects
 * "packs/<name>" of the repository's store (store/store.h), where <name>
 * is "xx/<32 hex digits>.pack".  A pack is self-describing
 * (agent/packfmt.h, docs/FORMAT.md): every entry carries the chunk id,
 * codec, stored and plain lengths and a CRC-32 of the stored bytes, and a
 * trailer indexes them, so the catalog can be rebuilt from the packs alone.
 *
 * A pack is durable in the store before any catalog row points at it.
 *
 * Errors: -1 with common/error.h's message naming the pack and the chunk.
 */
#ifndef AGENT_PACK_H
#define AGENT_PACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/chunk.h"
#include "agent/packfmt.h"

struct store;

#define PACK_TARGET_SIZE (32u * 1024 * 1024)
#define PACK_NAME_MAX 80

/* ---- Writing ------------------------------------------------------------ */
struct pack_writer;
/* Starts a new pack with a random name (nothing stands under it until
 * pack_writer_finish). */
struct pack_writer *pack_writer_open(struct store *st);
/* Appends one stored chunk; fills e->offset.  e: hash, codec, lengths, crc. */
int pack_writer_add(struct pack_writer *w, struct pack_entry *e, const void *stored);
uint64_t pack_writer_size(const struct pack_writer *w);
size_t pack_writer_count(const struct pack_writer *w);
const struct pack_entry *pack_writer_entries(const struct pack_writer *w);
/* Writes the index trailer and commits the pack to the store.  name
 * receives the pack's name relative to packs/ (e.g. "ab/ab12...ef.pack"),
 * size its length.  The writer stays valid for
 * pack_writer_entries until pack_writer_free. */
int pack_writer_finish(struct pack_writer *w, char name[PACK_NAME_MAX], uint64_t *size);
/* pack_writer_finish in two steps: seal writes the trailer and leaves the
 * rest (the last writes, the store's commit) to the writer's
 * thread, returning the name and size at once; wait returns when the pack
 * is durable under its name (0) or failed (-1).  What needs the pack to be
 * durable (its catalog commit) comes after wait; what does not can overlap
 * it. */
int pack_writer_seal(struct pack_writer *w, char name[PACK_NAME_MAX], uint64_t *size);
int pack_writer_wait(struct pack_writer *w);
/* Frees; removes what an unfinished pack wrote.  Accepts NULL. */
void pack_writer_free(struct pack_writer *w);

/* ---- Reading ------------------------------------------------------------ */
/* Reads chunks from packs, keeping a small cache of open packs; keys (NULL
 * for a plain repository, or when the key is not known: sealed chunks then
 * fail with EACCES) stay the caller's and must outlive the reader. */
struct pack_reader;
struct pack_reader *pack_reader_open(struct store *st, const struct crypt_keys *keys);
void pack_reader_close(struct pack_reader *r);
/* Whether pack_reader_get checks each chunk's id (SHA-256 of the
 * plaintext) besides its CRC and framing: on by default (restore, verify,
 * backup); serve turns it off for speed, its reads still checked by the
 * CRC of the stored bytes and zstd's own framing. */
void pack_reader_check_ids(struct pack_reader *r, bool on);
/* Reads and checks one chunk (CRC and id) into out[e->plain_len]. */
int pack_reader_get(struct pack_reader *r, const char *pack_name, const struct pack_entry *e,
                    void *out);

/* pack_parse (agent/packfmt.h) of the pack <name> in the store; messages
 * call it by its display name (its path, for a local store). */
int pack_scan(struct store *st, const char *name, bool check_ids,
              int (*fn)(void *opaque, const struct pack_entry *e), void *opaque);

/* pack_parse_index (agent/packfmt.h) of the pack <name>: its trailer only
 * (two ranged reads in a bucket); *size receives the pack's size, also
 * when its trailer is damaged (UINT64_MAX when the pack could not be opened). */
int pack_read_index(struct store *st, const char *name, uint64_t *size, struct pack_entry **entries,
                    size_t *count);

/* Removes the pack <name> (or a leftover partial one) durably. */
int pack_remove(struct store *st, const char *name);
/* Calls fn for every pack and leftover partial pack (is_temp) in the
 * store, sorted by name; a nonzero return from fn stops the walk and is
 * returned. */
int pack_list_files(struct store *st, int (*fn)(void *opaque, const char *name, bool is_temp),
                    void *opaque);

#endif
