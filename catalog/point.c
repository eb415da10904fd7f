/* catalog/point.c: disks and restore points.
 *
 * A point is begun 'running' (invisible to list and latest), receives its
 * cells, and is committed 'complete' with its statistics in one
 * transaction; or aborted, or deleted by the next lock taker once its holder
 * is dead (lock.c).  A full point has no parent, an incremental one has a
 * complete parent on the same disk (the schema checks the first rule, begin
 * the second), so a chain always ends at a full point and parents are older
 * than their children.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog/internal.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/vec.h"

#define POINT_SELECT \
    "SELECT p.id, p.disk_id, d.name, p.parent_id, p.kind, p.status, p.started, p.finished, " \
    "p.disk_size, p.source_uri, p.bitmap, p.bytes_planned, p.bytes_read, p.bytes_stored, " \
    "p.chunks_new, p.chunks_reused, p.source_kind, p.vm_uuid, p.checkpoint, p.full_reason " \
    "FROM points p JOIN disks d ON d.id = p.disk_id "

static void point_from_row(sqlite3_stmt *st, struct catalog_point *p)
{
    memset(p, 0, sizeof *p);
    p->id = sqlite3_column_int64(st, 0);
    p->disk_id = sqlite3_column_int64(st, 1);
    cat_column_text(st, 2, p->disk, sizeof p->disk);
    p->parent = sqlite3_column_int64(st, 3);   /* NULL reads as 0 */
    p->full = strcmp((const char *)sqlite3_column_text(st, 4), "full") == 0;
    p->complete = strcmp((const char *)sqlite3_column_text(st, 5), "complete") == 0;
    p->started = sqlite3_column_double(st, 6);
    p->finished = sqlite3_column_double(st, 7);
    p->disk_size = cat_column_u64(st, 8);
    cat_column_text(st, 9, p->source_uri, sizeof p->source_uri);
    cat_column_text(st, 10, p->bitmap, sizeof p->bitmap);
    p->bytes_planned = cat_column_u64(st, 11);
    p->bytes_read = cat_column_u64(st, 12);
    p->bytes_stored = cat_column_u64(st, 13);
    p->chunks_new = cat_column_u64(st, 14);
    p->chunks_reused = cat_column_u64(st, 15);
    cat_column_text(st, 16, p->source_kind, sizeof p->source_kind);
    cat_column_text(st, 17, p->vm_uuid, sizeof p->vm_uuid);
    cat_column_text(st, 18, p->checkpoint, sizeof p->checkpoint);
    cat_column_text(st, 19, p->full_reason, sizeof p->full_reason);
}

/* Runs a point query returning at most one row: 1, 0 or -1. */
static int point_one(struct catalog *c, sqlite3_stmt *st, struct catalog_point *p,
                     const char *what)
{
    int rc = sqlite3_step(st);

    if (rc == SQLITE_ROW)
        point_from_row(st, p);
    else if (rc != SQLITE_DONE)
        cat_fail(c, what);
    cat_done(c, st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

/* ---- Disks ---------------------------------------------------------------- */

int catalog_disk_find(struct catalog *c, const char *name, int64_t *id)
{
    return cat_id_by_text(c, "SELECT id FROM disks WHERE name = ?1", name, id, "find disk");
}

int64_t catalog_disk_add(struct catalog *c, const char *name)
{
    sqlite3_stmt *st;
    int64_t id;
    int rc;

    if (!name[0] || strlen(name) >= sizeof ((struct catalog_point *)0)->disk) {
        error_set(EINVAL, "catalog: disk name '%.40s' is empty or too long", name);
        return -1;
    }
    if (cat_begin(c) == -1)
        return -1;
    if (!(st = cat_stmt(c, "INSERT INTO disks(name) VALUES (?1)"))) {
        cat_rollback(c);
        return -1;
    }
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) {
        if (sqlite3_extended_errcode(c->db) == SQLITE_CONSTRAINT_UNIQUE)
            error_set(EEXIST, "catalog: disk %s already exists", name);
        else
            cat_fail(c, "add disk");
        cat_done(c, st);
        cat_rollback(c);
        return -1;
    }
    id = sqlite3_last_insert_rowid(c->db);
    cat_done(c, st);
    if (cat_commit(c) == -1)
        return -1;
    return id;
}

/* ---- Reading points ------------------------------------------------------- */

int catalog_point_latest(struct catalog *c, int64_t disk_id, struct catalog_point *p)
{
    sqlite3_stmt *st = cat_stmt(c, POINT_SELECT "WHERE p.disk_id = ?1 AND p.status = 'complete' "
                                   "ORDER BY p.id DESC LIMIT 1");

    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, disk_id);
    return point_one(c, st, p, "latest point");
}

int catalog_point_get(struct catalog *c, int64_t id, struct catalog_point *p)
{
    sqlite3_stmt *st = cat_stmt(c, POINT_SELECT "WHERE p.id = ?1");

    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    return point_one(c, st, p, "get point");
}

/* The points are read first and handed to fn after the query is over: fn may
 * then write (prune removes points from its list) without holding a read
 * snapshot open.  A repository has thousands of points, not millions. */
int catalog_point_list(struct catalog *c, const char *disk,
                       int (*fn)(void *opaque, const struct catalog_point *p), void *opaque)
{
    sqlite3_stmt *st = cat_stmt(c, POINT_SELECT "WHERE p.status = 'complete' "
                                   "AND (?1 IS NULL OR d.name = ?1) ORDER BY p.id");
    struct catalog_point *v = NULL;
    size_t n = 0, cap = 0, i;
    int rc;

    if (!st)
        return -1;
    if (disk)
        sqlite3_bind_text(st, 1, disk, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (VEC_RESERVE(v, n, cap, 16) < 0) {
            error_prefix("catalog: list points: ");
            goto fail;
        }
        point_from_row(st, &v[n++]);
    }
    if (rc != SQLITE_DONE) {
        cat_fail(c, "list points");
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

/* ---- Point lifecycle ------------------------------------------------------ */

static bool terminated(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

int64_t catalog_point_begin(struct catalog *c, const struct catalog_point *p)
{
    struct catalog_point parent;
    sqlite3_stmt *st = NULL;
    int64_t id;
    int r;

    if (!terminated(p->source_uri, sizeof p->source_uri) ||
        !terminated(p->bitmap, sizeof p->bitmap) ||
        !terminated(p->source_kind, sizeof p->source_kind) ||
        !terminated(p->vm_uuid, sizeof p->vm_uuid) ||
        !terminated(p->checkpoint, sizeof p->checkpoint) ||
        !terminated(p->full_reason, sizeof p->full_reason)) {
        error_set(EINVAL, "catalog: begin point: a text field is not terminated");
        return -1;
    }
    if (p->full != (p->parent == 0)) {
        error_set(EINVAL, "catalog: begin point: a %s point %s a parent",
                  p->full ? "full" : "incremental", p->full ? "cannot have" : "needs");
        return -1;
    }
    if (p->disk_size > INT64_MAX) {
        error_set(EINVAL, "catalog: begin point: disk size %llu too large",
                  (unsigned long long)p->disk_size);
        return -1;
    }
    if (cat_begin(c) == -1)
        return -1;
    if (p->parent) {
        if ((r = catalog_point_get(c, p->parent, &parent)) == -1)
            goto fail;
        if (r == 0 || !parent.complete || parent.disk_id != p->disk_id) {
            error_set(EINVAL, "catalog: begin point: parent %lld %s", (long long)p->parent,
                      r == 0 ? "does not exist" : !parent.complete ? "is not complete"
                      : "belongs to another disk");
            goto fail;
        }
    }
    st = cat_stmt(c, "INSERT INTO points(disk_id, parent_id, kind, status, started, disk_size, "
                     "source_uri, bitmap, holder_pid, holder_host, source_kind, vm_uuid, checkpoint, "
                     "full_reason) "
                     "VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)");
    if (!st)
        goto fail;
    sqlite3_bind_int64(st, 1, p->disk_id);
    if (p->parent)
        sqlite3_bind_int64(st, 2, p->parent);
    sqlite3_bind_text(st, 3, p->full ? "full" : "incremental", -1, SQLITE_STATIC);
    sqlite3_bind_double(st, 4, p->started);
    cat_bind_u64(st, 5, p->disk_size);
    sqlite3_bind_text(st, 6, p->source_uri, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, p->bitmap, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 8, c->pid);
    sqlite3_bind_text(st, 9, c->host, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 10, p->source_kind[0] ? p->source_kind : "nbd", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 11, p->vm_uuid, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 12, p->checkpoint, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 13, p->full_reason, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        if (sqlite3_extended_errcode(c->db) == SQLITE_CONSTRAINT_FOREIGNKEY)
            error_set(ENOENT, "catalog: begin point: disk %lld does not exist",
                      (long long)p->disk_id);
        else
            cat_fail(c, "begin point");
        goto fail;
    }
    id = sqlite3_last_insert_rowid(c->db);
    cat_done(c, st);
    if (cat_commit(c) == -1)
        return -1;
    return id;

fail:
    cat_done(c, st);
    cat_rollback(c);
    return -1;
}

/* Explains why point id is not 'running' (sets the error). */
static void not_running(struct catalog *c, int64_t id, const char *what)
{
    struct catalog_point p;
    int r = catalog_point_get(c, id, &p);

    if (r == 0)
        error_set(ENOENT, "catalog: %s %lld: no such point", what, (long long)id);
    else if (r == 1)
        error_set(EINVAL, "catalog: %s %lld: the point is already complete", what,
                  (long long)id);
}

/* The figures of a running point, and with complete its flip to
 * 'complete', in one transaction. */
static int point_finish(struct catalog *c, const struct catalog_point *p, bool complete)
{
    sqlite3_stmt *st;
    double finished = p->finished ? p->finished : clock_wall_s();

    if (cat_begin(c) == -1)
        return -1;
    st = cat_stmt(c, complete
        ? "UPDATE points SET status = 'complete', finished = ?2, bytes_planned = ?3, "
          "bytes_read = ?4, bytes_stored = ?5, chunks_new = ?6, chunks_reused = ?7 "
          "WHERE id = ?1 AND status = 'running'"
        : "UPDATE points SET finished = ?2, bytes_planned = ?3, "
          "bytes_read = ?4, bytes_stored = ?5, chunks_new = ?6, chunks_reused = ?7 "
          "WHERE id = ?1 AND status = 'running'");
    if (!st)
        goto fail;
    sqlite3_bind_int64(st, 1, p->id);
    sqlite3_bind_double(st, 2, finished);
    cat_bind_u64(st, 3, p->bytes_planned);
    cat_bind_u64(st, 4, p->bytes_read);
    cat_bind_u64(st, 5, p->bytes_stored);
    cat_bind_u64(st, 6, p->chunks_new);
    cat_bind_u64(st, 7, p->chunks_reused);
    if (cat_exec_stmt(c, st, "commit point") == -1) {
        cat_done(c, st);
        goto fail;
    }
    cat_done(c, st);
    if (sqlite3_changes64(c->db) != 1) {
        not_running(c, p->id, "commit point");
        goto fail;
    }
    return cat_commit(c);

fail:
    cat_rollback(c);
    return -1;
}

int catalog_point_commit(struct catalog *c, const struct catalog_point *p)
{
    return point_finish(c, p, true);
}

int catalog_point_record(struct catalog *c, const struct catalog_point *p)
{
    return point_finish(c, p, false);
}

int catalog_point_abort(struct catalog *c, int64_t id)
{
    sqlite3_stmt *st;

    if (cat_begin(c) == -1)
        return -1;
    if (!(st = cat_stmt(c, "DELETE FROM points WHERE id = ?1 AND status = 'running'")))
        goto fail;
    sqlite3_bind_int64(st, 1, id);
    if (cat_exec_stmt(c, st, "abort point") == -1) {
        cat_done(c, st);
        goto fail;
    }
    cat_done(c, st);
    if (sqlite3_changes64(c->db) != 1) {
        not_running(c, id, "abort point");
        goto fail;
    }
    return cat_commit(c);

fail:
    cat_rollback(c);
    return -1;
}
