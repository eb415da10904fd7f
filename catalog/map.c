/* catalog/map.c: the cell map: adding runs, resolving a point's map through
 * its chain of parents, and merging a removed point into its children.
 *
 * Each point stores runs of consecutive cells (first_cell, count, chunk_id;
 * NULL = zero) for the cells it changed against its parent; the runs of one
 * point never overlap (cells_add checks it).  The resolved map of a point at
 * cell x is the run covering x in the shallowest level of its chain (the
 * point itself is depth 1, its parent 2...), or "never written" (zero,
 * depth 0) when no level covers x.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog/internal.h"
#include "common/error.h"
#include "common/vec.h"

/* The run of a point that starts at or before cell ?2 (the only one that can
 * cover it), and the first run starting at or after ?2. */
static const char SQL_RUN_AT[] =
    "SELECT first_cell, count, chunk_id FROM cells WHERE point_id = ?1 AND first_cell <= ?2 "
    "ORDER BY first_cell DESC LIMIT 1";
static const char SQL_RUN_FROM[] =
    "SELECT first_cell, count, chunk_id FROM cells WHERE point_id = ?1 AND first_cell >= ?2 "
    "ORDER BY first_cell LIMIT 1";
static const char SQL_INSERT[] =
    "INSERT INTO cells(point_id, first_cell, count, chunk_id) VALUES (?1, ?2, ?3, ?4)";

struct row {
    uint64_t first, count;
    int64_t chunk;                /* 0 = zero */
};

/* Runs SQL_RUN_AT / SQL_RUN_FROM: 1 with *r, 0 none, -1 error. */
static int run_query(struct catalog *c, const char *sql, int64_t point, uint64_t cell,
                     struct row *r)
{
    sqlite3_stmt *st = cat_stmt(c, sql);
    int rc;

    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, point);
    cat_bind_u64(st, 2, cell);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        r->first = cat_column_u64(st, 0);
        r->count = cat_column_u64(st, 1);
        r->chunk = sqlite3_column_int64(st, 2);
    } else if (rc != SQLITE_DONE) {
        cat_fail(c, "read cells");
    }
    cat_done(c, st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

static int insert_run(struct catalog *c, int64_t point, uint64_t first, uint64_t count,
                      int64_t chunk)
{
    sqlite3_stmt *st = cat_stmt(c, SQL_INSERT);
    int rc;

    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, point);
    cat_bind_u64(st, 2, first);
    cat_bind_u64(st, 3, count);
    if (chunk)
        sqlite3_bind_int64(st, 4, chunk);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) {
        int ext = sqlite3_extended_errcode(c->db);

        if (ext == SQLITE_CONSTRAINT_FOREIGNKEY)
            error_set(EINVAL, "catalog: cells %llu+%llu: chunk %lld does not exist",
                      (unsigned long long)first, (unsigned long long)count, (long long)chunk);
        else if (ext == SQLITE_CONSTRAINT_PRIMARYKEY)
            error_set(EEXIST, "catalog: cells %llu+%llu of point %lld: already recorded",
                      (unsigned long long)first, (unsigned long long)count, (long long)point);
        else
            cat_fail(c, "add cells");
    }
    cat_done(c, st);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* ---- Adding runs ---------------------------------------------------------- */

int catalog_cells_add(struct catalog *c, int64_t point_id, const struct catalog_run *runs,
                      size_t n)
{
    struct catalog_point p;
    uint64_t ncells;
    size_t i;
    int r;

    if (cat_begin(c) == -1)
        return -1;
    if ((r = catalog_point_get(c, point_id, &p)) != 1) {
        if (r == 0)
            error_set(ENOENT, "catalog: add cells: no point %lld", (long long)point_id);
        goto fail;
    }
    if (p.complete) {
        error_set(EINVAL, "catalog: add cells: point %lld is complete", (long long)point_id);
        goto fail;
    }
    ncells = cat_cells_of(c, p.disk_size);
    for (i = 0; i < n; i++) {
        const struct catalog_run *run = &runs[i];
        struct row prev;

        if (run->count == 0 || run->first_cell > ncells || run->count > ncells - run->first_cell ||
            run->chunk_id < 0) {
            error_set(EINVAL, "catalog: add cells %llu+%llu to point %lld: outside its %llu "
                      "cells, empty, or a negative chunk", (unsigned long long)run->first_cell,
                      (unsigned long long)run->count, (long long)point_id,
                      (unsigned long long)ncells);
            goto fail;
        }
        /* Runs never overlap, so only the last run starting before our end
         * can overlap us. */
        if ((r = run_query(c, SQL_RUN_AT, point_id, run->first_cell + run->count - 1, &prev)) == -1)
            goto fail;
        if (r == 1 && prev.first + prev.count > run->first_cell) {
            error_set(EEXIST, "catalog: add cells %llu+%llu to point %lld: overlaps the "
                      "recorded run %llu+%llu", (unsigned long long)run->first_cell,
                      (unsigned long long)run->count, (long long)point_id,
                      (unsigned long long)prev.first, (unsigned long long)prev.count);
            goto fail;
        }
        if (insert_run(c, point_id, run->first_cell, run->count, run->chunk_id) == -1)
            goto fail;
    }
    return cat_commit(c);

fail:
    cat_rollback(c);
    return -1;
}

/* ---- Resolving a map -------------------------------------------------------
 * One cursor per level of the chain, each over that level's runs in cell
 * order, starting at the run that contains `first`.  The cursors are swept
 * together as a sequence of events: a level's run starts (the level covers
 * the position from then on) or ends (it no longer does; its cursor moves to
 * its next run).  A min-heap orders the levels by the cell of their next
 * event; a bitset holds the levels covering the current position, and the
 * lowest set bit is the winner.  Between two events the winner cannot
 * change, so each interval becomes one piece; pieces with the same chunk
 * and depth are merged on the way out.
 *
 * Cost: O(R (log L + L/64)) for R runs of all levels intersecting the range
 * and a chain of L levels, plus one SQLite seek per batch of runs; memory
 * O(L * batch).  A cursor is a batch of rows read by one complete query
 * (LIMIT batch from the last first_cell), so no SQLite statement or read
 * transaction stays open between calls: the caller may write through the
 * same handle while a map is open.  The levels are read at different times;
 * the disk lock keeps prune from changing the chain meanwhile.
 */

enum { WAIT, ACTIVE, DONE };

struct level {
    int64_t point;
    struct row *rows;             /* the batch: rows[i..n) not consumed yet */
    unsigned n, i;
    bool eof;                     /* the batch ends the level's rows */
    uint64_t from;                /* first_cell where the next batch starts */
    int state;
    uint64_t s, e;                /* current run, clipped to start at >= pos */
    int64_t chunk;
};

struct catalog_map {
    struct catalog *c;
    uint64_t pos, end;
    unsigned nlev, batch;
    struct level *lev;            /* lev[i] is depth i + 1 */
    struct row *rows;             /* nlev * batch */
    unsigned *heap, hn;           /* level indexes by key() */
    uint64_t *active;             /* bit i: lev[i] covers pos */
    unsigned nwords;
    bool have_pending, failed;
    struct catalog_run pending;
};

static const char SQL_BATCH[] =
    "SELECT first_cell, count, chunk_id FROM cells WHERE point_id = ?1 AND first_cell >= ?2 "
    "AND first_cell < ?3 ORDER BY first_cell LIMIT ?4";

static uint64_t key(const struct catalog_map *m, unsigned l)
{
    return m->lev[l].state == WAIT ? m->lev[l].s : m->lev[l].e;
}

static void sift_down(struct catalog_map *m, unsigned i)
{
    for (;;) {
        unsigned l = 2 * i + 1, r = l + 1, min = i, t;

        if (l < m->hn && key(m, m->heap[l]) < key(m, m->heap[min]))
            min = l;
        if (r < m->hn && key(m, m->heap[r]) < key(m, m->heap[min]))
            min = r;
        if (min == i)
            return;
        t = m->heap[i];
        m->heap[i] = m->heap[min];
        m->heap[min] = t;
        i = min;
    }
}

static void sift_up(struct catalog_map *m, unsigned i)
{
    while (i > 0) {
        unsigned parent = (i - 1) / 2, t;

        if (key(m, m->heap[parent]) <= key(m, m->heap[i]))
            return;
        t = m->heap[i];
        m->heap[i] = m->heap[parent];
        m->heap[parent] = t;
        i = parent;
    }
}

/* Reads the next batch of a level. */
static int refill(struct catalog_map *m, struct level *L)
{
    sqlite3_stmt *st = cat_stmt(m->c, SQL_BATCH);
    int rc;

    if (!st)
        return -1;
    L->n = L->i = 0;
    sqlite3_bind_int64(st, 1, L->point);
    cat_bind_u64(st, 2, L->from);
    cat_bind_u64(st, 3, m->end);
    sqlite3_bind_int(st, 4, (int)m->batch);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct row *r = &L->rows[L->n++];

        r->first = cat_column_u64(st, 0);
        r->count = cat_column_u64(st, 1);
        r->chunk = sqlite3_column_int64(st, 2);
    }
    if (rc != SQLITE_DONE) {
        cat_fail(m->c, "read map");
        cat_done(m->c, st);
        return -1;
    }
    cat_done(m->c, st);
    L->eof = L->n < m->batch;
    if (L->n)
        L->from = L->rows[L->n - 1].first + 1;
    return 0;
}

/* Moves a level to its next run ending after pos (state WAIT), or DONE. */
static int advance(struct catalog_map *m, struct level *L)
{
    for (;;) {
        struct row *r;

        if (L->i == L->n) {
            if (!L->eof && refill(m, L) == -1)
                return -1;
            if (L->i == L->n) {   /* eof, or an empty last batch */
                L->state = DONE;
                return 0;
            }
        }
        r = &L->rows[L->i++];
        if (r->first + r->count <= m->pos)
            continue;             /* the run before `first` that ends before it */
        L->s = r->first > m->pos ? r->first : m->pos;
        L->e = r->first + r->count;
        L->chunk = r->chunk;
        L->state = WAIT;
        return 0;
    }
}

/* The next interval between two events: 1, 0 at the end, -1 on error. */
static int piece(struct catalog_map *m, struct catalog_run *out)
{
    unsigned w;
    uint64_t next;

    if (m->pos >= m->end)
        return 0;
    while (m->hn && key(m, m->heap[0]) <= m->pos) {
        unsigned l = m->heap[0];
        struct level *L = &m->lev[l];

        if (L->state == WAIT) {
            L->state = ACTIVE;
            m->active[l / 64] |= 1ull << (l % 64);
        } else {
            m->active[l / 64] &= ~(1ull << (l % 64));
            if (advance(m, L) == -1)
                return -1;
            if (L->state == DONE)
                m->heap[0] = m->heap[--m->hn];
        }
        sift_down(m, 0);
    }
    next = m->hn && key(m, m->heap[0]) < m->end ? key(m, m->heap[0]) : m->end;
    out->first_cell = m->pos;
    out->count = next - m->pos;
    out->chunk_id = 0;
    out->depth = 0;
    for (w = 0; w < m->nwords; w++)
        if (m->active[w]) {
            unsigned l = w * 64 + (unsigned)__builtin_ctzll(m->active[w]);

            out->chunk_id = m->lev[l].chunk;
            out->depth = l + 1;
            break;
        }
    m->pos = next;
    return 1;
}

/* The chain of a point, itself first, into a malloc'ed array. */
static int read_chain(struct catalog *c, int64_t point_id, int64_t **chain, unsigned *n)
{
    int64_t *v = NULL, id = point_id;
    size_t cap = 0;

    *n = 0;
    while (id) {
        sqlite3_stmt *st = cat_stmt(c, "SELECT parent_id, kind = 'full' FROM points WHERE id = ?1");
        int64_t parent;
        bool full;
        int rc;

        if (!st)
            goto fail;
        sqlite3_bind_int64(st, 1, id);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW) {
            if (rc == SQLITE_DONE)
                error_set(*n ? EIO : ENOENT, "catalog: map of point %lld: no point %lld",
                          (long long)point_id, (long long)id);
            else
                cat_fail(c, "read chain");
            cat_done(c, st);
            goto fail;
        }
        parent = sqlite3_column_int64(st, 0);
        full = sqlite3_column_int(st, 1) != 0;
        cat_done(c, st);
        if (VEC_RESERVE(v, *n, cap, 16) < 0) {
            error_prefix("catalog: map: ");
            goto fail;
        }
        v[(*n)++] = id;
        if (parent && parent >= id) {
            error_set(EIO, "catalog: map of point %lld: corrupt chain (parent %lld of %lld)",
                      (long long)point_id, (long long)parent, (long long)id);
            goto fail;
        }
        id = full ? 0 : parent;
    }
    *chain = v;
    return 0;

fail:
    free(v);
    return -1;
}

struct catalog_map *catalog_map_open(struct catalog *c, int64_t point_id, uint64_t first,
                                     uint64_t end)
{
    struct catalog_map *m;
    int64_t *chain = NULL;
    unsigned n, i;

    if (first > end || end > INT64_MAX) {
        error_set(EINVAL, "catalog: map of point %lld: bad range [%llu, %llu)",
                  (long long)point_id, (unsigned long long)first, (unsigned long long)end);
        return NULL;
    }
    if (read_chain(c, point_id, &chain, &n) == -1)
        return NULL;
    if (!(m = calloc(1, sizeof *m)))
        goto nomem;
    m->c = c;
    m->pos = first;
    m->end = end;
    m->nlev = n;
    m->batch = 32768 / n;
    m->batch = m->batch < 16 ? 16 : m->batch > 1024 ? 1024 : m->batch;
    m->nwords = (n + 63) / 64;
    m->lev = calloc(n, sizeof *m->lev);
    m->rows = calloc((size_t)n * m->batch, sizeof *m->rows);
    m->heap = calloc(n, sizeof *m->heap);
    m->active = calloc(m->nwords, sizeof *m->active);
    if (!m->lev || !m->rows || !m->heap || !m->active)
        goto nomem;
    for (i = 0; i < n && first < end; i++) {
        struct level *L = &m->lev[i];
        struct row r;
        int found;

        L->point = chain[i];
        L->rows = &m->rows[(size_t)i * m->batch];
        if ((found = run_query(c, SQL_RUN_AT, L->point, first, &r)) == -1)
            goto fail;
        L->from = found ? r.first : first;
        if (advance(m, L) == -1)
            goto fail;
        if (L->state != DONE) {
            m->heap[m->hn++] = i;
            sift_up(m, m->hn - 1);
        }
    }
    free(chain);
    return m;

nomem:
    error_set(ENOMEM, "catalog: map of point %lld: out of memory", (long long)point_id);
fail:
    free(chain);
    catalog_map_close(m);
    return NULL;
}

int catalog_map_next(struct catalog_map *m, struct catalog_run *run)
{
    struct catalog_run nx;
    int r;

    if (m->failed)
        return -1;
    if (!m->have_pending) {
        if ((r = piece(m, &m->pending)) != 1)
            goto out;
        m->have_pending = true;
    }
    for (;;) {
        if ((r = piece(m, &nx)) == -1)
            goto out;
        if (r == 0) {
            *run = m->pending;
            m->have_pending = false;
            return 1;
        }
        if (nx.chunk_id == m->pending.chunk_id && nx.depth == m->pending.depth) {
            m->pending.count += nx.count;
            continue;
        }
        *run = m->pending;
        m->pending = nx;
        return 1;
    }

out:
    if (r == -1)
        m->failed = true;
    return r;
}

void catalog_map_close(struct catalog_map *m)
{
    if (!m)
        return;
    free(m->lev);
    free(m->rows);
    free(m->heap);
    free(m->active);
    free(m);
}

/* ---- Removing a point -----------------------------------------------------
 * For each child, the parts of the removed point's runs that the child's own
 * runs do not cover are inserted into the child: the child's resolved map is
 * unchanged, and so is every descendant's.  Each removed run costs one seek,
 * each child run inside it one more, and each gap one insert: the cost is
 * that of the rows involved, not of the disk.  No cursor stays open across
 * an insert into the same table.
 */
static int merge_into(struct catalog *c, int64_t removed, int64_t child)
{
    struct row rr, cr;
    uint64_t from = 0;
    int r;

    while ((r = run_query(c, SQL_RUN_FROM, removed, from, &rr)) == 1) {
        uint64_t pos = rr.first, e = rr.first + rr.count;

        from = e;
        if ((r = run_query(c, SQL_RUN_AT, child, pos, &cr)) == -1)
            return -1;
        if (r == 1 && cr.first + cr.count > pos)
            pos = cr.first + cr.count;
        while (pos < e) {
            uint64_t gap_end;

            if ((r = run_query(c, SQL_RUN_FROM, child, pos, &cr)) == -1)
                return -1;
            if (r == 1 && cr.first == pos) {
                pos = cr.first + cr.count;
                continue;
            }
            gap_end = r == 1 && cr.first < e ? cr.first : e;
            if (insert_run(c, child, pos, gap_end - pos, rr.chunk) == -1)
                return -1;
            pos = gap_end;
        }
    }
    return r;
}

int catalog_point_remove(struct catalog *c, int64_t id)
{
    struct catalog_point p;
    sqlite3_stmt *st = NULL;
    int64_t *children = NULL;
    size_t n = 0, cap = 0, i;
    int rc;

    if (cat_begin(c) == -1)
        return -1;
    if ((rc = catalog_point_get(c, id, &p)) != 1) {
        if (rc == 0)
            error_set(ENOENT, "catalog: no point %lld", (long long)id);
        goto fail;
    }
    if (!p.complete) {
        error_set(EINVAL, "catalog: point %lld is running (abort it instead)", (long long)id);
        goto fail;
    }
    if (!(st = cat_stmt(c, "SELECT id FROM points WHERE parent_id = ?1 ORDER BY id")))
        goto fail;
    sqlite3_bind_int64(st, 1, id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (VEC_RESERVE(children, n, cap, 4) < 0) {
            error_prefix("catalog: ");
            goto fail;
        }
        children[n++] = sqlite3_column_int64(st, 0);
    }
    if (rc != SQLITE_DONE) {
        cat_fail(c, "find children");
        goto fail;
    }
    cat_done(c, st);
    st = NULL;
    for (i = 0; i < n; i++)
        if (merge_into(c, id, children[i]) == -1) {
            error_prefix("merge into point %lld: ", (long long)children[i]);
            goto fail;
        }
    /* A full point's children become full, with no parent. */
    if (!(st = cat_stmt(c, "UPDATE points SET parent_id = ?2, "
                           "kind = CASE WHEN ?2 IS NULL THEN 'full' ELSE kind END "
                           "WHERE parent_id = ?1")))
        goto fail;
    sqlite3_bind_int64(st, 1, id);
    if (p.parent && !p.full)
        sqlite3_bind_int64(st, 2, p.parent);
    if (cat_exec_stmt(c, st, "reparent children") == -1)
        goto fail;
    cat_done(c, st);
    if (!(st = cat_stmt(c, "DELETE FROM cells WHERE point_id = ?1")))
        goto fail;
    sqlite3_bind_int64(st, 1, id);
    if (cat_exec_stmt(c, st, "delete cells") == -1)
        goto fail;
    cat_done(c, st);
    if (!(st = cat_stmt(c, "DELETE FROM points WHERE id = ?1")))
        goto fail;
    sqlite3_bind_int64(st, 1, id);
    if (cat_exec_stmt(c, st, "delete point") == -1)
        goto fail;
    cat_done(c, st);
    free(children);
    if (cat_commit(c) == -1)
        goto fail_prefix;
    return 0;

fail:
    cat_done(c, st);
    free(children);
    cat_rollback(c);
fail_prefix:
    error_prefix("remove point %lld: ", (long long)id);
    return -1;
}
