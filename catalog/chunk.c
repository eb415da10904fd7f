/* catalog/chunk.c: chunks and packs, and the queries of gc and verify.
 *
 * A chunk row says where the one stored copy of a content hash lives: its
 * pack, its entry's offset, its lengths, codec and checksum.  A pack row is
 * written in the same transaction as its chunks, after the pack file is
 * durable.  Cells reference chunks (NULL = a zero cell), chunks reference
 * packs; the foreign keys keep gc from dropping anything still referenced.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog/internal.h"
#include "common/error.h"
#include "common/vec.h"

#define CHUNK_SELECT "SELECT " CAT_CHUNK_COLUMNS " FROM chunks ch JOIN packs pk ON pk.id = ch.pack_id "
/* A hash's row, through the index of its first 8 bytes (chunks_hkey: the
 * expression must be written as in the index for SQLite to use it). */
#define CHUNK_BY_HASH(t) "substr(" t "hash, 1, 8) = ?1 AND " t "hash = ?2"
#define HKEY_LEN 8

static void bind_hash(sqlite3_stmt *st, const uint8_t *hash)
{
    sqlite3_bind_blob(st, 1, hash, HKEY_LEN, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, hash, CATALOG_HASH_LEN, SQLITE_STATIC);
}

void cat_chunk_from_row(sqlite3_stmt *st, struct catalog_chunk *ch)
{
    const void *hash = sqlite3_column_blob(st, 1);

    memset(ch, 0, sizeof *ch);
    ch->id = sqlite3_column_int64(st, 0);
    if (hash && sqlite3_column_bytes(st, 1) == CATALOG_HASH_LEN)
        memcpy(ch->hash, hash, CATALOG_HASH_LEN);
    ch->pack_id = sqlite3_column_int64(st, 2);
    cat_column_text(st, 3, ch->pack, sizeof ch->pack);
    ch->offset = cat_column_u64(st, 4);
    ch->stored_len = (uint32_t)sqlite3_column_int64(st, 5);
    ch->plain_len = (uint32_t)sqlite3_column_int64(st, 6);
    ch->codec = (uint8_t)sqlite3_column_int(st, 7);
    ch->crc = (uint32_t)sqlite3_column_int64(st, 8);
}

/* Runs a chunk query returning at most one row: 1, 0 or -1. */
static int chunk_one(struct catalog *c, sqlite3_stmt *st, struct catalog_chunk *out,
                     const char *what)
{
    int rc = sqlite3_step(st);

    if (rc == SQLITE_ROW)
        cat_chunk_from_row(st, out);
    else if (rc != SQLITE_DONE)
        cat_fail(c, what);
    cat_done(c, st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

/* Streams the chunk rows of st to fn; returns the count, -1 on error or when
 * fn returns -1.  Takes st back. */
static int64_t chunk_each(struct catalog *c, sqlite3_stmt *st, const char *what,
                          int (*fn)(void *opaque, const struct catalog_chunk *ch), void *opaque)
{
    struct catalog_chunk ch;
    int64_t n = 0;
    int rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        cat_chunk_from_row(st, &ch);
        n++;
        if (fn && fn(opaque, &ch) == -1) {
            cat_done(c, st);
            return -1;
        }
    }
    if (rc != SQLITE_DONE) {
        cat_fail(c, what);
        n = -1;
    }
    cat_done(c, st);
    return n;
}

int catalog_chunk_find(struct catalog *c, const uint8_t hash[CATALOG_HASH_LEN],
                       struct catalog_chunk *out)
{
    sqlite3_stmt *st = cat_stmt(c, CHUNK_SELECT "WHERE " CHUNK_BY_HASH("ch."));

    if (!st)
        return -1;
    bind_hash(st, hash);
    return chunk_one(c, st, out, "find chunk");
}

int catalog_chunk_get(struct catalog *c, int64_t id, struct catalog_chunk *out)
{
    sqlite3_stmt *st = cat_stmt(c, CHUNK_SELECT "WHERE ch.id = ?1");

    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    return chunk_one(c, st, out, "get chunk");
}

/* ---- Packs ---------------------------------------------------------------- */

static int check_pack_name(const char *name)
{
    /* Relative to packs/, e.g. "e0/e04f...9e38.pack": no way out of it. */
    if (!name[0] || strlen(name) >= sizeof ((struct catalog_pack *)0)->name ||
        name[0] == '/' || strstr(name, "..")) {
        error_set(EINVAL, "catalog: invalid pack name '%.100s'", name);
        return -1;
    }
    return 0;
}

/* Inserts a pack row (inside the caller's transaction); 0 or -1. */
static int insert_pack(struct catalog *c, const char *name, uint64_t size, int64_t *id)
{
    sqlite3_stmt *st = cat_stmt(c, "INSERT INTO packs(name, size) VALUES (?1, ?2)");

    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    cat_bind_u64(st, 2, size);
    if (sqlite3_step(st) != SQLITE_DONE) {
        if (sqlite3_extended_errcode(c->db) == SQLITE_CONSTRAINT_UNIQUE)
            error_set(EEXIST, "catalog: pack %s is already recorded", name);
        else
            cat_fail(c, "add pack");
        cat_done(c, st);
        return -1;
    }
    *id = sqlite3_last_insert_rowid(c->db);
    cat_done(c, st);
    return 0;
}

int catalog_chunk_id(struct catalog *c, const uint8_t hash[CATALOG_HASH_LEN], int64_t *id)
{
    sqlite3_stmt *st = cat_stmt(c, "SELECT id FROM chunks WHERE " CHUNK_BY_HASH(""));
    int rc;

    if (!st)
        return -1;
    bind_hash(st, hash);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *id = sqlite3_column_int64(st, 0);
    else if (rc != SQLITE_DONE)
        cat_fail(c, "find chunk");
    cat_done(c, st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

int cat_chunk_insert(struct catalog *c, int64_t pack_id, const struct catalog_chunk *ch, int64_t *id)
{
    sqlite3_stmt *st = cat_stmt(c, "INSERT INTO chunks(hash, pack_id, offset, stored_len, plain_len, "
                                   "codec, crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    int rc;

    if (!st)
        return -1;
    sqlite3_bind_blob(st, 1, ch->hash, CATALOG_HASH_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, pack_id);
    cat_bind_u64(st, 3, ch->offset);
    sqlite3_bind_int64(st, 4, ch->stored_len);
    sqlite3_bind_int64(st, 5, ch->plain_len);
    sqlite3_bind_int(st, 6, ch->codec);
    sqlite3_bind_int64(st, 7, ch->crc);
    rc = cat_exec_stmt(c, st, "add chunk");
    cat_done(c, st);
    if (rc == -1)
        return -1;
    *id = sqlite3_last_insert_rowid(c->db);
    return 0;
}

int catalog_pack_add(struct catalog *c, const char *pack_name, uint64_t pack_size,
                     const struct catalog_chunk *chunks, size_t n, int64_t *ids)
{
    sqlite3_stmt *st = NULL;
    int64_t pack_id;
    size_t i;

    if (check_pack_name(pack_name) == -1)
        return -1;
    if (cat_begin(c) == -1)
        return -1;
    if (insert_pack(c, pack_name, pack_size, &pack_id) == -1)
        goto fail;
    for (i = 0; i < n; i++) {
        const struct catalog_chunk *ch = &chunks[i];

        /* A known chunk keeps its first location: one row per hash (this
         * look-up and the insert share the write transaction). */
        int known = catalog_chunk_id(c, ch->hash, &ids[i]);
        if (known == -1)
            goto fail;
        if (known)
            continue;
        if (cat_chunk_insert(c, pack_id, ch, &ids[i]) == -1)
            goto fail;
    }
    if (cat_commit(c) == -1)
        goto fail_prefix;
    return 0;

fail:
    cat_done(c, st);
    cat_rollback(c);
fail_prefix:
    error_prefix("pack %s: ", pack_name);
    return -1;
}

/* Packs are few (one per ~32 MiB): they are read first and handed to fn
 * after the query, so fn may rewrite or delete them. */
int catalog_pack_list(struct catalog *c, int (*fn)(void *opaque, const struct catalog_pack *p),
                      void *opaque)
{
    sqlite3_stmt *st = cat_stmt(c,
        "SELECT pk.id, pk.name, pk.size, pk.uploaded, coalesce(sum(ch.stored_len), 0), "
        "count(ch.id) FROM packs pk LEFT JOIN chunks ch ON ch.pack_id = pk.id "
        "GROUP BY pk.id ORDER BY pk.id");
    struct catalog_pack *v = NULL;
    size_t n = 0, cap = 0, i;
    int rc;

    if (!st)
        return -1;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct catalog_pack *p;

        if (VEC_RESERVE(v, n, cap, 64) < 0) {
            error_prefix("catalog: list packs: ");
            goto fail;
        }
        p = &v[n++];
        memset(p, 0, sizeof *p);
        p->id = sqlite3_column_int64(st, 0);
        cat_column_text(st, 1, p->name, sizeof p->name);
        p->size = cat_column_u64(st, 2);
        p->uploaded = sqlite3_column_int(st, 3) != 0;
        p->live_bytes = cat_column_u64(st, 4);
        p->live_chunks = cat_column_u64(st, 5);
    }
    if (rc != SQLITE_DONE) {
        cat_fail(c, "list packs");
        goto fail;
    }
    cat_done(c, st);
    for (i = 0; i < n; i++)
        if (fn(opaque, &v[i]) == -1) {
            free(v);
            return -1;
        }
    free(v);
    return 0;

fail:
    cat_done(c, st);
    free(v);
    return -1;
}

int catalog_pack_chunks(struct catalog *c, int64_t pack_id,
                        int (*fn)(void *opaque, const struct catalog_chunk *ch), void *opaque)
{
    sqlite3_stmt *st = cat_stmt(c, CHUNK_SELECT "WHERE ch.pack_id = ?1 ORDER BY ch.offset");

    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, pack_id);
    return chunk_each(c, st, "list chunks of pack", fn, opaque) == -1 ? -1 : 0;
}

/* Chunks still recorded in a pack, or -1. */
static int64_t pack_chunk_count(struct catalog *c, int64_t pack_id)
{
    sqlite3_stmt *st = cat_stmt(c, "SELECT count(*) FROM chunks WHERE pack_id = ?1");
    int64_t n = -1;

    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, pack_id);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    else
        cat_fail(c, "count chunks of pack");
    cat_done(c, st);
    return n;
}

/* Deletes a pack row that no chunk references (inside a transaction). */
static int delete_pack_row(struct catalog *c, int64_t pack_id)
{
    sqlite3_stmt *st;
    int64_t left = pack_chunk_count(c, pack_id);

    if (left == -1)
        return -1;
    if (left > 0) {
        error_set(ENOTEMPTY, "catalog: pack %lld still holds %lld chunk(s)",
                  (long long)pack_id, (long long)left);
        return -1;
    }
    if (!(st = cat_stmt(c, "DELETE FROM packs WHERE id = ?1")))
        return -1;
    sqlite3_bind_int64(st, 1, pack_id);
    if (cat_exec_stmt(c, st, "delete pack") == -1) {
        cat_done(c, st);
        return -1;
    }
    cat_done(c, st);
    if (sqlite3_changes64(c->db) != 1) {
        error_set(ENOENT, "catalog: no pack %lld", (long long)pack_id);
        return -1;
    }
    return 0;
}

/* A moved chunk's new place, and its stored form: gc encodes it again (an
 * encrypted chunk gets a new nonce, so new stored bytes and CRC). */
int catalog_pack_replace(struct catalog *c, int64_t old_pack_id, const char *new_name,
                         uint64_t new_size, const struct catalog_chunk *moved, size_t n)
{
    sqlite3_stmt *st = NULL;
    int64_t new_id;
    size_t i;

    if (check_pack_name(new_name) == -1)
        return -1;
    if (cat_begin(c) == -1)
        return -1;
    if (insert_pack(c, new_name, new_size, &new_id) == -1)
        goto fail;
    for (i = 0; i < n; i++) {
        st = cat_stmt(c, "UPDATE chunks SET pack_id = ?1, offset = ?2, stored_len = ?5, codec = ?6, "
                         "crc = ?7 WHERE id = ?3 AND pack_id = ?4");
        if (!st)
            goto fail;
        sqlite3_bind_int64(st, 1, new_id);
        cat_bind_u64(st, 2, moved[i].offset);
        sqlite3_bind_int64(st, 3, moved[i].id);
        sqlite3_bind_int64(st, 4, old_pack_id);
        sqlite3_bind_int64(st, 5, moved[i].stored_len);
        sqlite3_bind_int64(st, 6, moved[i].codec);
        sqlite3_bind_int64(st, 7, moved[i].crc);
        if (cat_exec_stmt(c, st, "move chunk") == -1)
            goto fail;
        cat_done(c, st);
        st = NULL;
        if (sqlite3_changes64(c->db) != 1) {
            error_set(EINVAL, "catalog: chunk %lld is not in pack %lld", (long long)moved[i].id,
                      (long long)old_pack_id);
            goto fail;
        }
    }
    if (delete_pack_row(c, old_pack_id) == -1)
        goto fail;
    if (cat_commit(c) == -1)
        goto fail_prefix;
    return 0;

fail:
    cat_done(c, st);
    cat_rollback(c);
fail_prefix:
    error_prefix("replace pack %lld by %s: ", (long long)old_pack_id, new_name);
    return -1;
}

int catalog_pack_delete(struct catalog *c, int64_t pack_id)
{
    if (cat_begin(c) == -1)
        return -1;
    if (delete_pack_row(c, pack_id) == -1) {
        cat_rollback(c);
        return -1;
    }
    return cat_commit(c);
}

/* ---- gc and verify -------------------------------------------------------- */

/* In one transaction (so no backup can reference a chunk between the list
 * and the delete; gc's lock keeps backups out anyway).  Cells of running
 * points count as references: a running backup's chunks are kept. */
int64_t catalog_chunks_unreferenced(struct catalog *c, bool delete,
                                    int (*fn)(void *opaque, const struct catalog_chunk *ch),
                                    void *opaque)
{
    sqlite3_stmt *st;
    int64_t n;

    if (cat_begin(c) == -1)
        return -1;
    st = cat_stmt(c, CHUNK_SELECT "WHERE NOT EXISTS (SELECT 1 FROM cells WHERE chunk_id = ch.id) "
                     "ORDER BY ch.pack_id, ch.offset");
    if (!st || (n = chunk_each(c, st, "list unreferenced chunks", fn, opaque)) == -1)
        goto fail;
    if (delete && n > 0) {
        st = cat_stmt(c, "DELETE FROM chunks WHERE NOT EXISTS "
                         "(SELECT 1 FROM cells WHERE chunk_id = chunks.id)");
        if (!st)
            goto fail;
        if (cat_exec_stmt(c, st, "delete unreferenced chunks") == -1) {
            cat_done(c, st);
            goto fail;
        }
        cat_done(c, st);
        if (sqlite3_changes64(c->db) != n) {
            error_set(EIO, "catalog: unreferenced chunks changed during the transaction");
            goto fail;
        }
    }
    if (cat_commit(c) == -1)
        return -1;
    return n;

fail:
    cat_rollback(c);
    return -1;
}

static const char SQL_SEL_CREATE[] =
    "CREATE TEMP TABLE IF NOT EXISTS sel_points(id INTEGER PRIMARY KEY)";

/* Restoring a point reads the cells of its whole chain, so the chain's
 * chunks are what it needs, including those a newer level hides (verify
 * reads what it lists; the hidden ones cost a little extra reading). */
int catalog_chunks_referenced(struct catalog *c, const int64_t *points, size_t n,
                              int (*fn)(void *opaque, const struct catalog_chunk *ch),
                              void *opaque)
{
    sqlite3_stmt *st = NULL;
    int64_t missing;
    size_t i;

    if (cat_exec(c, SQL_SEL_CREATE, "referenced chunks") == -1 ||
        cat_exec(c, "DELETE FROM temp.sel_points", "referenced chunks") == -1)
        return -1;
    if (n == 0 && cat_exec(c, "INSERT INTO temp.sel_points SELECT id FROM points "
                              "WHERE status = 'complete'", "referenced chunks") == -1)
        return -1;
    for (i = 0; i < n; i++) {
        if (!(st = cat_stmt(c, "INSERT OR IGNORE INTO temp.sel_points(id) VALUES (?1)")))
            return -1;
        sqlite3_bind_int64(st, 1, points[i]);
        if (cat_exec_stmt(c, st, "referenced chunks") == -1)
            goto fail;
        cat_done(c, st);
    }
    st = cat_stmt(c, "SELECT count(*) FROM temp.sel_points s WHERE NOT EXISTS "
                     "(SELECT 1 FROM points WHERE id = s.id)");
    if (!st)
        return -1;
    if (sqlite3_step(st) != SQLITE_ROW) {
        cat_fail(c, "referenced chunks");
        goto fail;
    }
    missing = sqlite3_column_int64(st, 0);
    cat_done(c, st);
    if (missing) {
        error_set(ENOENT, "catalog: referenced chunks: %lld of the points do not exist",
                  (long long)missing);
        return -1;
    }
    st = cat_stmt(c,
        "WITH RECURSIVE chain(id) AS ("
        "  SELECT id FROM temp.sel_points"
        "  UNION SELECT p.parent_id FROM points p JOIN chain ON p.id = chain.id"
        "  WHERE p.parent_id IS NOT NULL) "
        CHUNK_SELECT "WHERE ch.id IN (SELECT chunk_id FROM cells "
        "WHERE point_id IN chain AND chunk_id IS NOT NULL) ORDER BY ch.pack_id, ch.offset");
    if (!st)
        return -1;
    return chunk_each(c, st, "referenced chunks", fn, opaque) == -1 ? -1 : 0;

fail:
    cat_done(c, st);
    return -1;
}

/* A point "uses" a chunk when a cell row of its chain references it: the
 * rows referencing the chunk give the points that wrote it, and every
 * complete descendant of those is reported.  A newer level may hide the
 * chunk in some of them: verify's report may name a point that does not
 * read it, never miss one that does. */
int catalog_points_using_chunk(struct catalog *c, int64_t chunk_id,
                               int (*fn)(void *opaque, int64_t point_id), void *opaque)
{
    sqlite3_stmt *st = cat_stmt(c,
        "WITH RECURSIVE d(id) AS ("
        "  SELECT point_id FROM cells WHERE chunk_id = ?1"
        "  UNION SELECT p.id FROM points p JOIN d ON p.parent_id = d.id) "
        "SELECT d.id FROM d JOIN points p ON p.id = d.id WHERE p.status = 'complete' "
        "ORDER BY d.id");
    int64_t *v = NULL;
    size_t n = 0, cap = 0, i;
    int rc;

    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, chunk_id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (VEC_RESERVE(v, n, cap, 16) < 0) {
            error_prefix("catalog: points using chunk: ");
            goto fail;
        }
        v[n++] = sqlite3_column_int64(st, 0);
    }
    if (rc != SQLITE_DONE) {
        cat_fail(c, "points using chunk");
        goto fail;
    }
    cat_done(c, st);
    for (i = 0; i < n; i++)
        if (fn(opaque, v[i]) == -1) {
            free(v);
            return -1;
        }
    free(v);
    return 0;

fail:
    cat_done(c, st);
    free(v);
    return -1;
}
