/* agent/packfmt.h (agent internal): the pack format, pure (no I/O).
 *
 * The layout is described in docs/FORMAT.md, "Packs"; agent/packfmt.c is
 * its only implementation.  In short (all integers big-endian):
 *
 *   file header  16  "NBDVPACK", version u32 (1), reserved u32 (0)
 *   entry        56  "NBDE", hash[32], codec u8, reserved[3], plain_len u32,
 *                    stored_len u32, crc u32 (of the stored bytes),
 *                    hdr_crc u32 (of the 52 bytes before it)
 *                    followed by stored_len stored bytes
 *   ...
 *   index header  8  "NBDI", count u32
 *   index record 56  hash[32], codec u8, reserved[3], plain_len u32,
 *                    stored_len u32, crc u32, offset u64 (of the entry)
 *   ...
 *   footer       24  index offset u64, count u32, CRC-32 of the index
 *                    (header and records), "NBDVPIDX"
 *
 * A pack can be read from the front, entry by entry, until "NBDI" (this is
 * how a damaged pack is salvaged), or from the back through the footer.
 */
#ifndef AGENT_PACKFMT_H
#define AGENT_PACKFMT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent/chunk.h"

#define PACK_FILE_HDR_LEN 16
#define PACK_ENTRY_HDR_LEN 56
#define PACK_INDEX_HDR_LEN 8
#define PACK_INDEX_REC_LEN 56
#define PACK_FOOTER_LEN 24

/* One chunk as a pack records it. */
struct pack_entry {
    uint8_t hash[PACK_HASH_LEN];
    uint8_t codec;
    uint32_t stored_len, plain_len;
    uint32_t crc;
    uint64_t offset;              /* of the entry header in the pack */
};

void pack_encode_file_hdr(uint8_t p[PACK_FILE_HDR_LEN]);
void pack_encode_entry_hdr(uint8_t p[PACK_ENTRY_HDR_LEN], const struct pack_entry *e);
/* Decodes an entry header at pack offset off; checks its magic and its own
 * CRC but not its lengths.  Messages start with "entry at offset N". */
int pack_decode_entry_hdr(const uint8_t p[PACK_ENTRY_HDR_LEN], uint64_t off,
                          struct pack_entry *e);
/* Checks what a pack of version 1 allows of an entry's fields; errnum:
 * EINVAL for a caller's argument, EIO for what was read. */
int pack_check_entry(const struct pack_entry *e, int errnum);
void pack_encode_index_hdr(uint8_t p[PACK_INDEX_HDR_LEN], uint32_t count);
void pack_encode_index_rec(uint8_t p[PACK_INDEX_REC_LEN], const struct pack_entry *e);
void pack_encode_footer(uint8_t p[PACK_FOOTER_LEN], uint64_t index_off, uint32_t count,
                        uint32_t index_crc);
bool pack_entry_equal(const struct pack_entry *a, const struct pack_entry *b);

/* Where pack_parse reads a pack from: size bytes, read(opaque, buf, len,
 * off) returning the count (short only at the end) or -1 with a message;
 * name is how messages call it. */
struct pack_src {
    const char *name;
    uint64_t size;
    ssize_t (*read)(void *opaque, void *buf, size_t len, uint64_t off);
    void *opaque;
};

/* Walks a whole pack: checks its header, every entry's framing and CRC
 * (and, when check_ids, decompresses and checks each id), and the trailer
 * against the entries.  fn (may be NULL) sees each entry as soon as the
 * entry itself checks out, before the trailer is checked: a salvage can
 * keep the entries seen before a failure; a nonzero return from fn stops
 * the walk and is returned.  0 when the pack is whole, -1 with a message
 * ("pack NAME: ...") describing the damage. */
int pack_parse(const struct pack_src *src, bool check_ids,
               int (*fn)(void *opaque, const struct pack_entry *e), void *opaque);
/* Reads only a pack's trailer, from the back: the footer, which must end
 * the pack, and the index it names, checked by its CRC and against the
 * pack's layout (entries in order, between the file header and the index).
 * The entries themselves are not read.  *entries (free() it) receives the
 * records in pack order, *count their number; -1 with a message ("pack
 * NAME: ...") when the trailer is damaged. */
int pack_parse_index(const struct pack_src *src, struct pack_entry **entries, size_t *count);
/* pack_parse over a pack in memory. */
int pack_parse_buffer(const char *name, const void *data, size_t len, bool check_ids,
                      int (*fn)(void *opaque, const struct pack_entry *e), void *opaque);

#endif
