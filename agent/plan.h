/* agent/plan.h (agent internal): what a backup reads, cell by cell.
 *
 * Block status of the source (base:allocation, and for an incremental the
 * dirty bitmap) is asked for the whole disk at once and kept, or, for a
 * disk with too many extents to keep, one window at a time; each cell is
 * planned from it by the grid (agent/grid.h) and, for an incremental,
 * paired with the parent point's chunk from the parent's resolved map.
 * Memory stays bounded by PLAN_CACHE_EXTENTS or one window's extents.
 */
#ifndef AGENT_PLAN_H
#define AGENT_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "agent/grid.h"

struct nbd_conn;
struct catalog_map;

struct plan_opts {
    struct nbd_conn *conn;        /* block status goes over this connection */
    const char *uri;              /* for messages */
    uint64_t size;
    uint32_t chunk;
    bool full;
    bool have_alloc;              /* the source offers base:allocation */
    const char *bitmap_ctx;       /* incrementals: "qemu:dirty-bitmap:NAME" */
    struct catalog_map *parent;   /* incrementals: the parent's map, all cells */
};

/* One cell whose content the backup decides (cells the bitmap calls clean
 * are not given: the parent's chunk stands). */
struct plan_cell {
    uint64_t cell;
    struct grid_plan g;           /* what to read; what to take from the parent */
    int64_t prev;                 /* the parent's chunk of this cell (0: zero; full: 0) */
    int64_t fill_from;            /* prev when g has fills, else 0 */
};

struct plan;

/* NULL with the error set.  Keeps o->conn and o->parent (the caller's). */
struct plan *plan_open(const struct plan_opts *o);
void plan_close(struct plan *p);
/* The bytes the plan will read (asks for block status; call once, first). */
int plan_count(struct plan *p, uint64_t *bytes);
/* The next cell: 1, 0 at the end, -1 with the error set. */
int plan_next(struct plan *p, struct plan_cell *c);

#endif
