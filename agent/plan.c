/* plan.c: what a backup reads, cell by cell (see plan.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "agent/plan.h"
#include "catalog/catalog.h"
#include "common/error.h"
#include "common/vec.h"
#include "nbdcore/nbdcore.h"

#define WINDOW_BYTES (UINT64_C(256) << 20)
/* plan_count keeps up to this many extents of each context (24 bytes
 * each) for plan_next. */
#define PLAN_CACHE_EXTENTS (64u * 1024)

struct extv {
    struct grid_extent *e;
    size_t n, cap;
    size_t limit;                 /* 0, or the most extents to take ... */
    bool over;                    /* ... and whether there were more */
};

/* The extents of both contexts over part of the disk. */
struct extents {
    struct extv alloc, dirty;
};

struct plan {
    struct plan_opts o;
    struct extents ext;           /* the whole disk (cached) or one window */
    bool cached;
    /* plan_next's position */
    uint64_t ws, we;              /* the window loaded, [ws, we) */
    bool loaded;
    uint64_t cell;
    struct grid_input in;
    /* The parent's map, a cursor that only moves forward. */
    struct catalog_run prun;
    bool prun_valid;
};

static int collect(void *opaque, const char *ctx, uint64_t off, const struct nbd_extent *e, size_t n)
{
    struct extv *v = opaque;
    for (size_t i = 0; i < n; off += e[i].length, i++) {
        if (v->limit && v->n == v->limit) {
            v->over = true;
            error_set(E2BIG, "more than %zu extents of %s", v->limit, ctx);
            return -1;
        }
        if (VEC_RESERVE(v->e, v->n, v->cap, 256) < 0)
            return -1;
        v->e[v->n++] = (struct grid_extent){ off, e[i].length, e[i].flags };
    }
    return 0;
}

struct plan *plan_open(const struct plan_opts *o)
{
    struct plan *p = calloc(1, sizeof *p);
    if (!p) {
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    p->o = *o;
    return p;
}

static void extents_free(struct extents *x)
{
    free(x->alloc.e);
    free(x->dirty.e);
    memset(x, 0, sizeof *x);
}

void plan_close(struct plan *p)
{
    if (!p)
        return;
    extents_free(&p->ext);
    free(p);
}

/* Replaces the extents with block status of [ws, we). */
static int load(struct plan *p, uint64_t ws, uint64_t we)
{
    struct extents *x = &p->ext;
    x->alloc.n = x->dirty.n = 0;
    x->alloc.over = x->dirty.over = false;
    if (p->o.have_alloc && nbd_block_status_walk(p->o.conn, NBD_CONTEXT_BASE_ALLOCATION, ws, we - ws,
                                                 true, collect, &x->alloc) < 0) {
        error_prefix("block status (base:allocation) of %s: ", p->o.uri);
        return -1;
    }
    if (!p->o.full &&
        nbd_block_status_walk(p->o.conn, p->o.bitmap_ctx, ws, we - ws, true, collect, &x->dirty) < 0) {
        error_prefix("block status (%s) of %s: ", p->o.bitmap_ctx, p->o.uri);
        return -1;
    }
    return 0;
}

/* The grid's view of the loaded extents, its cursors at the start. */
static struct grid_input input(const struct plan *p)
{
    const struct extents *x = &p->ext;
    return (struct grid_input){ .full = p->o.full, .have_alloc = p->o.have_alloc,
                                .alloc = { x->alloc.e, x->alloc.n, 0 },
                                .dirty = { x->dirty.e, x->dirty.n, 0 } };
}

static uint64_t window_end(const struct plan *p, uint64_t ws)
{
    return p->o.size - ws < WINDOW_BYTES ? p->o.size : ws + WINDOW_BYTES;
}

/* Block status of the whole disk is asked for at once and kept for
 * plan_next (the usual case: a few requests in all, one round trip each);
 * a disk with more than PLAN_CACHE_EXTENTS extents is counted window by
 * window instead, and plan_next asks again for each window. */
int plan_count(struct plan *p, uint64_t *bytes)
{
    /* NBDVAULT_PLAN_CACHE_EXTENTS: a smaller limit, so that tests can take
     * the path of a disk with too many extents to keep. */
    const char *lim = getenv("NBDVAULT_PLAN_CACHE_EXTENTS");
    size_t limit = lim ? strtoul(lim, NULL, 10) : PLAN_CACHE_EXTENTS;
    uint64_t size = p->o.size;

    *bytes = 0;
    if (limit) {
        p->ext.alloc.limit = p->ext.dirty.limit = limit;
        if (load(p, 0, size) == 0) {
            p->cached = true;
            struct grid_input in = input(p);
            *bytes = grid_planned(&in, size, p->o.chunk, 0, size);
            return 0;
        }
        bool over = p->ext.alloc.over || p->ext.dirty.over;
        extents_free(&p->ext);
        if (!over)
            return -1;
    }
    for (uint64_t ws = 0; ws < size; ws += WINDOW_BYTES) {
        if (load(p, ws, window_end(p, ws)) < 0)
            return -1;
        struct grid_input in = input(p);
        *bytes += grid_planned(&in, size, p->o.chunk, ws, window_end(p, ws));
    }
    return 0;
}

/* The parent's chunk of a cell (0 = zero). */
static int parent_chunk(struct plan *p, uint64_t cell, int64_t *chunk)
{
    while (!p->prun_valid || p->prun.first_cell + p->prun.count <= cell) {
        int r = catalog_map_next(p->o.parent, &p->prun);
        if (r < 0)
            return -1;
        if (r == 0) {
            *chunk = 0;
            p->prun_valid = false;
            return 0;
        }
        p->prun_valid = true;
    }
    *chunk = p->prun.first_cell <= cell ? p->prun.chunk_id : 0;
    return 0;
}

/* Moves to the window holding p->cell: 1, 0 past the end, -1. */
static int next_window(struct plan *p)
{
    uint64_t off = grid_cell_start(p->o.chunk, p->cell);
    if (off >= p->o.size)
        return 0;
    if (p->loaded && off < p->we)
        return 1;
    if (p->cached) {
        p->ws = 0;
        p->we = p->o.size;
    } else {
        p->ws = off - off % WINDOW_BYTES;
        p->we = window_end(p, p->ws);
        if (load(p, p->ws, p->we) < 0)
            return -1;
    }
    p->in = input(p);
    p->loaded = true;
    return 1;
}

int plan_next(struct plan *p, struct plan_cell *c)
{
    uint32_t chunk = p->o.chunk;
    for (;; p->cell++) {
        int w = next_window(p);
        if (w <= 0)
            return w;
        uint64_t cs = grid_cell_start(chunk, p->cell);
        grid_plan_cell(&p->in, cs, cs + grid_cell_len(p->o.size, chunk, p->cell), &c->g);
        if (c->g.kind == GRID_SKIP)
            continue; /* unchanged: inherited from the parent */
        c->cell = p->cell++;
        c->prev = 0;
        if (!p->o.full && parent_chunk(p, c->cell, &c->prev) < 0)
            return -1;
        c->fill_from = c->g.partial ? c->prev : 0;
        return 1;
    }
}
