/* catalog/remote.c: the catalog as a cache of a bucket's manifests.
 *
 * Each point of a repository on an object store has a remote row: the uid
 * and generation of its manifest.  Imports record a manifest's point, its
 * chunks (a known hash keeps its first location) and its runs in one
 * transaction; drops remove a point whose manifest left the bucket.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog/internal.h"
#include "common/error.h"
#include "common/vec.h"

int catalog_remote_get(struct catalog *c, int64_t point_id, struct catalog_remote *out)
{
    sqlite3_stmt *st = cat_stmt(c, "SELECT uid, gen FROM remote_points WHERE point_id = ?1");
    int rc;

    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, point_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        memset(out, 0, sizeof *out);
        out->point_id = point_id;
        cat_column_text(st, 0, out->uid, sizeof out->uid);
        out->gen = (unsigned)sqlite3_column_int64(st, 1);
    } else if (rc != SQLITE_DONE) {
        cat_fail(c, "get remote point");
    }
    cat_done(c, st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

int catalog_remote_set(struct catalog *c, const struct catalog_remote *r)
{
    sqlite3_stmt *st = cat_stmt(c, "INSERT OR REPLACE INTO remote_points(point_id, uid, gen, dirty) "
                                   "VALUES (?1, ?2, ?3, 0)");
    int ret;

    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, r->point_id);
    sqlite3_bind_text(st, 2, r->uid, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, r->gen);
    ret = cat_exec_stmt(c, st, "record remote point");
    cat_done(c, st);
    return ret;
}

static int remote_rows(struct catalog *c, const char *sql,
                       int (*fn)(void *opaque, const struct catalog_remote *r), void *opaque)
{
    sqlite3_stmt *st = cat_stmt(c, sql);
    struct catalog_remote *v = NULL;
    size_t n = 0, cap = 0;
    int rc, ret = -1;

    if (!st)
        return -1;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (VEC_RESERVE(v, n, cap, 64) < 0)
            goto out;
        memset(&v[n], 0, sizeof v[n]);
        v[n].point_id = sqlite3_column_int64(st, 0);
        cat_column_text(st, 1, v[n].uid, sizeof v[n].uid);
        v[n].gen = (unsigned)sqlite3_column_int64(st, 2);
        n++;
    }
    if (rc != SQLITE_DONE) {
        cat_fail(c, "list remote points");
        goto out;
    }
    cat_done(c, st);
    st = NULL;
    ret = 0;
    for (size_t i = 0; i < n && ret == 0; i++)
        ret = fn(opaque, &v[i]);
out:
    if (st)
        cat_done(c, st);
    free(v);
    return ret;
}

int catalog_point_own(struct catalog *c, int64_t id,
                      int (*fn)(void *opaque, const struct catalog_run *run,
                                const struct catalog_chunk *ch),
                      void *opaque)
{
    sqlite3_stmt *st = cat_stmt(c,
        "SELECT ce.first_cell, ce.count, " CAT_CHUNK_COLUMNS " FROM cells ce "
        "LEFT JOIN chunks ch ON ch.id = ce.chunk_id LEFT JOIN packs pk ON pk.id = ch.pack_id "
        "WHERE ce.point_id = ?1 ORDER BY ce.first_cell");
    int rc, ret = 0;

    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    while (ret == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct catalog_run run = { cat_column_u64(st, 0), cat_column_u64(st, 1), 0, 1 };
        struct catalog_chunk ch;
        bool zero = sqlite3_column_type(st, 2) == SQLITE_NULL;
        if (!zero) {
            memset(&ch, 0, sizeof ch);
            ch.id = sqlite3_column_int64(st, 2);
            if (sqlite3_column_bytes(st, 3) == CATALOG_HASH_LEN)
                memcpy(ch.hash, sqlite3_column_blob(st, 3), CATALOG_HASH_LEN);
            ch.pack_id = sqlite3_column_int64(st, 4);
            cat_column_text(st, 5, ch.pack, sizeof ch.pack);
            ch.offset = cat_column_u64(st, 6);
            ch.stored_len = (uint32_t)sqlite3_column_int64(st, 7);
            ch.plain_len = (uint32_t)sqlite3_column_int64(st, 8);
            ch.codec = (uint8_t)sqlite3_column_int(st, 9);
            ch.crc = (uint32_t)sqlite3_column_int64(st, 10);
            run.chunk_id = ch.id;
        }
        ret = fn(opaque, &run, zero ? NULL : &ch);
    }
    if (ret == 0 && rc != SQLITE_DONE)
        ret = cat_fail(c, "read a point's cells");
    cat_done(c, st);
    return ret;
}

int catalog_pack_ensure(struct catalog *c, const char *name, uint64_t size, int64_t *id)
{
    sqlite3_stmt *st;
    int rc = cat_id_by_text(c, "SELECT id FROM packs WHERE name = ?1", name, id, "find pack");

    if (rc != 0)
        return rc < 0 ? -1 : 0;
    if (!(st = cat_stmt(c, "INSERT INTO packs(name, size, location, uploaded) VALUES (?1, ?2, 'remote', 1)")))
        return -1;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    cat_bind_u64(st, 2, size);
    rc = cat_exec_stmt(c, st, "add pack");
    cat_done(c, st);
    if (rc < 0)
        return -1;
    *id = sqlite3_last_insert_rowid(c->db);
    return 0;
}

int catalog_chunk_import(struct catalog *c, int64_t pack_id, const struct catalog_chunk *ch,
                         int64_t *id)
{
    int known = catalog_chunk_id(c, ch->hash, id);

    if (known != 0)
        return known < 0 ? -1 : 0;
    return cat_chunk_insert(c, pack_id, ch, id);
}

int catalog_remote_list(struct catalog *c, int (*fn)(void *opaque, const struct catalog_remote *r),
                        void *opaque)
{
    return remote_rows(c, "SELECT point_id, uid, gen FROM remote_points ORDER BY point_id", fn, opaque);
}

int catalog_remote_dirty(struct catalog *c, int (*fn)(void *opaque, const struct catalog_remote *r),
                         void *opaque)
{
    return remote_rows(c, "SELECT point_id, uid, gen FROM remote_points WHERE dirty ORDER BY point_id",
                       fn, opaque);
}

int catalog_remote_gone(struct catalog *c, int (*fn)(void *opaque, const struct catalog_remote *r),
                        void *opaque)
{
    return remote_rows(c, "SELECT 0, uid, 0 FROM remote_gone ORDER BY uid", fn, opaque);
}

int catalog_remote_gone_done(struct catalog *c, const char *uid)
{
    sqlite3_stmt *st = cat_stmt(c, "DELETE FROM remote_gone WHERE uid = ?1");
    int ret;

    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, uid, -1, SQLITE_STATIC);
    ret = cat_exec_stmt(c, st, "forget a removed point");
    cat_done(c, st);
    return ret;
}

/* An existing point back to 'running' with its new parent and kind, its
 * runs gone (then added again). */
static int reopen_point(struct catalog *c, const struct catalog_point *p)
{
    sqlite3_stmt *st = cat_stmt(c, "UPDATE points SET status = 'running', parent_id = ?2, kind = ?3 "
                                   "WHERE id = ?1");
    int rc;

    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, p->id);
    if (p->parent)
        sqlite3_bind_int64(st, 2, p->parent);
    sqlite3_bind_text(st, 3, p->full ? "full" : "incremental", -1, SQLITE_STATIC);
    rc = cat_exec_stmt(c, st, "re-record point");
    cat_done(c, st);
    if (rc < 0 || !(st = cat_stmt(c, "DELETE FROM cells WHERE point_id = ?1")))
        return -1;
    sqlite3_bind_int64(st, 1, p->id);
    rc = cat_exec_stmt(c, st, "re-record point");
    cat_done(c, st);
    return rc;
}

int64_t catalog_point_import(struct catalog *c, const struct catalog_point *p,
                             const struct catalog_run *runs, size_t n,
                             const struct catalog_remote *rem)
{
    struct catalog_point q = *p;
    struct catalog_remote r = *rem;

    if (cat_begin(c) == -1)
        return -1;
    if (q.id) {
        if (reopen_point(c, &q) < 0)
            goto fail;
    } else if ((q.id = catalog_point_begin(c, &q)) < 0) {
        goto fail;
    }
    r.point_id = q.id;
    if ((n && catalog_cells_add(c, q.id, runs, n) < 0) || catalog_remote_set(c, &r) < 0 ||
        catalog_point_commit(c, &q) < 0 || cat_commit(c) < 0)
        goto fail;
    return q.id;
fail:
    cat_rollback(c);
    error_prefix("import point %s: ", rem->uid);
    return -1;
}

int catalog_point_drop(struct catalog *c, int64_t id)
{
    sqlite3_stmt *st;
    int rc;

    if (cat_begin(c) == -1)
        return -1;
    /* Its manifest is gone already: the row goes first, so that the
     * trigger does not ask for the manifest's removal. */
    if (!(st = cat_stmt(c, "DELETE FROM remote_points WHERE point_id = ?1")))
        goto fail;
    sqlite3_bind_int64(st, 1, id);
    rc = cat_exec_stmt(c, st, "drop point");
    cat_done(c, st);
    if (rc < 0 || !(st = cat_stmt(c, "DELETE FROM points WHERE id = ?1")))
        goto fail;
    sqlite3_bind_int64(st, 1, id);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) {
        if (sqlite3_extended_errcode(c->db) == SQLITE_CONSTRAINT_FOREIGNKEY)
            error_set(EBUSY, "catalog: drop point %lld: a later point still depends on it",
                      (long long)id);
        else
            cat_fail(c, "drop point");
        cat_done(c, st);
        goto fail;
    }
    cat_done(c, st);
    return cat_commit(c);
fail:
    cat_rollback(c);
    return -1;
}

int catalog_pack_size(struct catalog *c, int64_t pack_id, uint64_t *size)
{
    sqlite3_stmt *st = cat_stmt(c, "SELECT size FROM packs WHERE id = ?1");
    int rc;

    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, pack_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *size = cat_column_u64(st, 0);
    else if (rc == SQLITE_DONE)
        error_set(ENOENT, "catalog: no pack %lld", (long long)pack_id);
    else
        cat_fail(c, "pack size");
    cat_done(c, st);
    return rc == SQLITE_ROW ? 0 : -1;
}

int catalog_pack_forget(struct catalog *c, int64_t pack_id)
{
    sqlite3_stmt *st;
    int rc;

    if (cat_begin(c) == -1)
        return -1;
    if (!(st = cat_stmt(c, "DELETE FROM chunks WHERE pack_id = ?1 AND id NOT IN "
                           "(SELECT chunk_id FROM cells WHERE chunk_id IS NOT NULL)")))
        goto fail;
    sqlite3_bind_int64(st, 1, pack_id);
    rc = cat_exec_stmt(c, st, "forget a lost pack");
    cat_done(c, st);
    if (rc < 0 || !(st = cat_stmt(c, "DELETE FROM packs WHERE id = ?1 AND NOT EXISTS "
                                     "(SELECT 1 FROM chunks WHERE pack_id = ?1)")))
        goto fail;
    sqlite3_bind_int64(st, 1, pack_id);
    rc = cat_exec_stmt(c, st, "forget a lost pack");
    cat_done(c, st);
    if (rc < 0)
        goto fail;
    return cat_commit(c);
fail:
    cat_rollback(c);
    return -1;
}
