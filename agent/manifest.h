/* agent/manifest.h (agent internal): a restore point as an object of the
 * bucket (pure code: no I/O, fuzzed).
 *
 * A manifest holds everything a catalog needs to know of one point: its
 * fields (a JSON header), the packs and chunks its own runs use (with
 * their locations, so that an empty cache can be rebuilt from manifests
 * alone) and the runs themselves.  The object: "NBDVMAN1", then a zstd
 * frame of the body, whose last 32 bytes are the SHA-256 of the rest.
 * docs/FORMAT.md has the byte layout.
 */
#ifndef AGENT_MANIFEST_H
#define AGENT_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include "catalog/catalog.h"

#define MANIFEST_MAGIC "NBDVMAN1"
#define MANIFEST_VERSION 1
#define MANIFEST_ZERO UINT32_MAX  /* a run's chunk index: zero cells */

struct manifest_pack {
    char name[80];
    uint64_t size;
};

struct manifest_run {
    uint64_t first, count;
    uint32_t chunk;               /* index into chunks, or MANIFEST_ZERO */
};

struct manifest {
    struct catalog_point pt;      /* ids unused: disk by name, parent by uid */
    char uid[40];
    char parent_uid[40];          /* "" for a full point */
    unsigned gen;
    uint32_t chunk_size;
    char host[256];
    struct manifest_pack *packs;
    size_t npacks, cap_packs;
    struct catalog_chunk *chunks; /* pack_id: index into packs */
    size_t nchunks, cap_chunks;
    struct manifest_run *runs;
    size_t nruns, cap_runs;
};

/* Appending while building (0, or -1 with ENOMEM). */
int manifest_add_pack(struct manifest *m, const char *name, uint64_t size);
int manifest_add_chunk(struct manifest *m, const struct catalog_chunk *ch);
int manifest_add_run(struct manifest *m, uint64_t first, uint64_t count, uint32_t chunk);

/* The object's bytes (*out malloc'ed). */
int manifest_encode(const struct manifest *m, void **out, size_t *len);
/* Parses and checks an object (name: for messages); every index in
 * range, runs in order and inside the disk. */
int manifest_decode(const void *buf, size_t len, const char *name, struct manifest *m);
void manifest_free(struct manifest *m);

#endif
