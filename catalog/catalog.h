/* catalog/catalog.h: the SQLite catalog of a repository.
 *
 * The only public header of catalog/, and catalog/ is the only folder that
 * includes sqlite3.h.  It records the repository (format version, chunk
 * size), disks, restore points, the changed-cell map of each point, chunks
 * and packs, and the locks that keep a backup, a prune and a gc from
 * running over each other.
 *
 * Durability: WAL journal, synchronous=FULL, busy_timeout, write
 * transactions begun with BEGIN IMMEDIATE, schema versioned with
 * PRAGMA user_version and migrated forward on open.
 *
 * Errors: -1 / NULL with common/error.h's message and errno.
 * A struct catalog is used by one thread at a time; open one per thread.
 */
#ifndef CATALOG_H
#define CATALOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CATALOG_HASH_LEN 32        /* SHA-256 */
#define CATALOG_FORMAT_VERSION 4

struct catalog;

/* Creates a new catalog file (fails with EEXIST if one is there). */
int catalog_create(const char *path, uint32_t chunk_size);
/* The same with one more text row of the repo table (key = value) written
 * in the same transaction. */
int catalog_create_with(const char *path, uint32_t chunk_size, const char *key, const char *value);
/* A text row of the repo table: 1 found (*value malloc'ed), 0 none, -1. */
int catalog_repo_text_get(struct catalog *c, const char *key, char **value);
int catalog_repo_text_set(struct catalog *c, const char *key, const char *value);
struct catalog *catalog_open(const char *path);
void catalog_close(struct catalog *c);
uint32_t catalog_chunk_size(const struct catalog *c);
/* PRAGMA integrity_check: 0 when "ok", 1 with *report (malloc'ed) when not,
 * -1 on error. */
int catalog_integrity_check(struct catalog *c, char **report);

/* A read snapshot: every read through this handle until
 * catalog_snapshot_end sees the catalog as it was at the begin, whatever
 * prune or gc commit meanwhile (WAL).  Restores and served exports resolve
 * maps inside one, so a concurrent prune can never mix two states of a
 * chain.  No writes through the handle meanwhile. */
int catalog_snapshot_begin(struct catalog *c);
int catalog_snapshot_end(struct catalog *c);

/* A write transaction around several calls (each of which otherwise
 * commits on its own): one commit, one sync, all or nothing.  Calls inside
 * it nest as savepoints. */
int catalog_begin(struct catalog *c);
int catalog_commit(struct catalog *c);
void catalog_rollback(struct catalog *c);

/* ---- Locks ---------------------------------------------------------------
 * A backup or prune of disk D holds "disk:D", a backup of running VM V
 * "vm:V" (around the disks' own); gc holds "gc", which excludes
 * every other lock.  A lock whose holder pid is dead on this host is broken
 * (with a warning through *broken_msg when not NULL), and the 'running'
 * points it left are deleted with their cells.  Returns 0, or -1 with
 * EBUSY and a message naming the holder (pid, host, since when). */
int catalog_lock(struct catalog *c, const char *name, char *broken_msg, size_t cap);
int catalog_unlock(struct catalog *c, const char *name);

/* ---- Disks and points ---------------------------------------------------- */

struct catalog_point {
    int64_t id;
    int64_t disk_id;
    char disk[256];
    int64_t parent;               /* 0 = none */
    bool full;                    /* kind: full / incremental */
    bool complete;                /* status */
    double started, finished;     /* Unix time */
    uint64_t disk_size;
    char source_uri[512];
    char bitmap[256];
    char source_kind[16];         /* "nbd", "libvirt", "qmp" ("" = "nbd") */
    char vm_uuid[64];             /* the VM's identity ("" for an NBD URI) */
    char checkpoint[128];         /* the checkpoint this point's job created */
    char full_reason[256];        /* why a full point is full ("" = first or asked) */
    uint64_t bytes_planned, bytes_read, bytes_stored;
    uint64_t chunks_new, chunks_reused;
};

/* Finds a disk by name: 1 found (*id set), 0 not found, -1 error. */
int catalog_disk_find(struct catalog *c, const char *name, int64_t *id);
int64_t catalog_disk_add(struct catalog *c, const char *name); /* -1 on error */
/* The newest complete point of a disk: 1 found, 0 none, -1 error. */
int catalog_point_latest(struct catalog *c, int64_t disk_id, struct catalog_point *p);
/* 1 found, 0 none, -1 error. */
int catalog_point_get(struct catalog *c, int64_t id, struct catalog_point *p);
/* Complete points, oldest first; disk NULL = every disk.  fn returns -1 to
 * stop with an error. */
int catalog_point_list(struct catalog *c, const char *disk,
                       int (*fn)(void *opaque, const struct catalog_point *p), void *opaque);
/* Starts a point in status 'running' (invisible to list/latest) and returns
 * its id.  p: disk_id, parent, full, started, disk_size, source_uri, bitmap,
 * source_kind, vm_uuid, checkpoint, full_reason. */
int64_t catalog_point_begin(struct catalog *c, const struct catalog_point *p);
/* Records the statistics and flips the point to 'complete' in one
 * transaction. */
int catalog_point_commit(struct catalog *c, const struct catalog_point *p);
/* Records the statistics of a running point that stays 'running' (a
 * point of an object store waits for its manifest, then commits). */
int catalog_point_record(struct catalog *c, const struct catalog_point *p);
/* Deletes a 'running' point and its cells. */
int catalog_point_abort(struct catalog *c, int64_t id);

/* ---- Chunks and packs ---------------------------------------------------- */

struct catalog_chunk {
    int64_t id;
    uint8_t hash[CATALOG_HASH_LEN];
    int64_t pack_id;
    char pack[80];                /* pack file name (relative to packs/) */
    uint64_t offset;              /* of the chunk's entry in the pack */
    uint32_t stored_len, plain_len;
    uint8_t codec;                /* 0 raw, 1 zstd */
    uint32_t crc;                 /* of the stored bytes */
};

/* By hash: 1 found (*out filled), 0 not found, -1 error. */
int catalog_chunk_find(struct catalog *c, const uint8_t hash[CATALOG_HASH_LEN],
                       struct catalog_chunk *out);
/* The dedup look-up: only the id (no join with the packs).  1 found, 0 not
 * found, -1 error. */
int catalog_chunk_id(struct catalog *c, const uint8_t hash[CATALOG_HASH_LEN], int64_t *id);
int catalog_chunk_get(struct catalog *c, int64_t id, struct catalog_chunk *out);
/* Records a durable pack and its chunks in one transaction.  A chunk whose
 * hash is already known keeps its first location.  ids[i] receives the
 * chunk id of chunks[i] (new or existing).  chunks[i].pack/pack_id are
 * ignored. */
int catalog_pack_add(struct catalog *c, const char *pack_name, uint64_t pack_size,
                     const struct catalog_chunk *chunks, size_t n, int64_t *ids);

/* ---- The cell map ---------------------------------------------------------
 * A point records only the cells that changed against its parent, as runs
 * of consecutive cells holding the same chunk (chunk_id 0 = a zero cell). */
struct catalog_run {
    uint64_t first_cell, count;
    int64_t chunk_id;             /* 0 = zero */
    unsigned depth;               /* map iterator: 1 = this point, 2 = parent...; 0 = never written */
};

/* Appends runs to a point (in any order; one transaction per call). */
int catalog_cells_add(struct catalog *c, int64_t point_id, const struct catalog_run *runs, size_t n);

/* The full map of a point, resolved through its chain of parents, over
 * cells [first, end): consecutive runs covering the range in order, each
 * clipped to it, adjacent cells with the same chunk and depth merged.
 * Memory stays bounded by the length of the chain, whatever the disk size. */
struct catalog_map;
struct catalog_map *catalog_map_open(struct catalog *c, int64_t point_id, uint64_t first,
                                     uint64_t end);
int catalog_map_next(struct catalog_map *m, struct catalog_run *run); /* 1 run, 0 end, -1 error */
void catalog_map_close(struct catalog_map *m);

/* ---- Prune and gc --------------------------------------------------------- */

/* Removes a complete point; what later points still need from it is merged
 * into its child (which becomes full if the removed point was), all in one
 * transaction. */
int catalog_point_remove(struct catalog *c, int64_t id);

/* Chunks no cell references: fn is called for each (then they are deleted
 * when delete is true), in one transaction.  Returns the count, -1 on error. */
int64_t catalog_chunks_unreferenced(struct catalog *c, bool delete,
                                    int (*fn)(void *opaque, const struct catalog_chunk *ch),
                                    void *opaque);

struct catalog_pack {
    int64_t id;
    char name[80];
    uint64_t size;
    uint64_t live_bytes;          /* stored bytes of chunks still in the catalog */
    uint64_t live_chunks;
    bool uploaded;
};
int catalog_pack_list(struct catalog *c, int (*fn)(void *opaque, const struct catalog_pack *p),
                      void *opaque);
/* Chunks stored in a pack, in offset order. */
int catalog_pack_chunks(struct catalog *c, int64_t pack_id,
                        int (*fn)(void *opaque, const struct catalog_chunk *ch), void *opaque);
/* Moves chunks to a new durable pack and drops the old pack row, in one
 * transaction (gc's rewrite).  moved[i]: id, new offset, stored_len, codec, crc. */
int catalog_pack_replace(struct catalog *c, int64_t old_pack_id, const char *new_name,
                         uint64_t new_size, const struct catalog_chunk *moved, size_t n);
int catalog_pack_delete(struct catalog *c, int64_t pack_id); /* no chunk may still point at it */

/* Every chunk id referenced by the chains of the given points (all complete
 * points when n == 0), each once, ordered by pack and offset; fn returns -1
 * to stop. */
int catalog_chunks_referenced(struct catalog *c, const int64_t *points, size_t n,
                              int (*fn)(void *opaque, const struct catalog_chunk *ch),
                              void *opaque);
/* Points whose resolved map uses a chunk (for verify's report). */
int catalog_points_using_chunk(struct catalog *c, int64_t chunk_id,
                               int (*fn)(void *opaque, int64_t point_id), void *opaque);

/* ---- Repositories on an object store (catalog/remote.c) -------------------
 * The catalog of such a repository is a cache of the bucket: each point
 * stands in the bucket as a manifest "points/<uid>.<gen>", and the cache
 * remembers which uid and generation each of its points was imported
 * from or published as.  A point's generation grows when its manifest is
 * rewritten (a prune merged its parent into it). */
struct catalog_remote {
    int64_t point_id;
    char uid[40];                 /* the manifest's UID (docs/FORMAT.md) */
    unsigned gen;
};
/* 1 found, 0 none, -1 error. */
int catalog_remote_get(struct catalog *c, int64_t point_id, struct catalog_remote *out);
int catalog_remote_set(struct catalog *c, const struct catalog_remote *r);
/* Every remote row (read first: fn may change the catalog). */
int catalog_remote_list(struct catalog *c, int (*fn)(void *opaque, const struct catalog_remote *r),
                        void *opaque);
/* The rows whose point changed here since it was published (dirty), and
 * the uids of points removed here whose manifests may still be in the
 * bucket (point_id and gen 0); catalog_remote_gone_done forgets one. */
int catalog_remote_dirty(struct catalog *c, int (*fn)(void *opaque, const struct catalog_remote *r),
                         void *opaque);
int catalog_remote_gone(struct catalog *c, int (*fn)(void *opaque, const struct catalog_remote *r),
                        void *opaque);
int catalog_remote_gone_done(struct catalog *c, const char *uid);
/* The runs a point itself recorded (not its parents'), in cell order, each
 * with its chunk (NULL for a zero run). */
int catalog_point_own(struct catalog *c, int64_t id,
                      int (*fn)(void *opaque, const struct catalog_run *run,
                                const struct catalog_chunk *ch),
                      void *opaque);
/* The size of a pack (ENOENT: no such pack). */
int catalog_pack_size(struct catalog *c, int64_t pack_id, uint64_t *size);
/* The id of a pack, recorded (with its size) when new. */
int catalog_pack_ensure(struct catalog *c, const char *name, uint64_t size, int64_t *id);
/* The id of a chunk by hash; when unknown, recorded at ch's location in
 * pack_id. */
int catalog_chunk_import(struct catalog *c, int64_t pack_id, const struct catalog_chunk *ch,
                         int64_t *id);
/* A complete point as a manifest describes it (its own runs, chunk ids of
 * this catalog), with its remote row, in one transaction: a new point when
 * p->id is 0, else the point p->id re-recorded (parent, kind, runs).
 * Returns the point's id, or -1. */
int64_t catalog_point_import(struct catalog *c, const struct catalog_point *p,
                             const struct catalog_run *runs, size_t n,
                             const struct catalog_remote *rem);
/* A pack the bucket lost: its chunks no cell uses are forgotten (and the
 * pack with them when none is left). */
int catalog_pack_forget(struct catalog *c, int64_t pack_id);
/* Deletes a point with its cells and remote row, merging nothing (its
 * manifest is gone from the bucket); it must have no child. */
int catalog_point_drop(struct catalog *c, int64_t id);

#endif
