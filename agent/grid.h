/* agent/grid.h (agent internal): the chunk grid, and the plan of one cell.
 *
 * A disk of size S is the grid of ceil(S / chunk) cells; the last cell may
 * be short (docs/FORMAT.md).  Planning a backup decides, cell by cell and
 * from block status alone, what to read from the server and what to take
 * from the parent point's chunk:
 *
 *   full          read what base:allocation reports as data; holes and
 *                 zero extents stay zeros in the buffer, unread.
 *   incremental   a cell with nothing dirty is skipped (the parent's chunk
 *                 stands); otherwise read dirty ∩ data, and complete the
 *                 rest of the cell ("fills") from the parent's chunk.
 *
 * A cell that would need more than GRID_MAX_RANGES dirty runs or read
 * ranges is "fragmented": it is planned as wholly dirty, and if its data is
 * still too scattered, read whole.
 *
 * Pure arithmetic: no I/O, no threads, no catalog.  plan.c walks block
 * status one window at a time and hands the extents here.
 */
#ifndef AGENT_GRID_H
#define AGENT_GRID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Cells, by index.  chunk > 0; cell < grid_cells(size, chunk). */
uint64_t grid_cells(uint64_t size, uint32_t chunk);
uint64_t grid_cell_of(uint32_t chunk, uint64_t off);
uint64_t grid_cell_start(uint32_t chunk, uint64_t cell);
uint64_t grid_cell_len(uint64_t size, uint32_t chunk, uint64_t cell);

/* Most dirty runs and read ranges a cell's plan tracks. */
#define GRID_MAX_RANGES 64

/* One extent of a block status walk, at its disk offset; flags are the
 * context's NBD_STATE_* bits. */
struct grid_extent {
    uint64_t off, len;
    uint64_t flags;
};

/* Extents sorted by offset, not overlapping, and a cursor into them that
 * only moves forward: cells must be planned in ascending order. */
struct grid_list {
    const struct grid_extent *e;
    size_t n;
    size_t pos;
};

/* What the plan of a window of the disk is made from. */
struct grid_input {
    bool full;                  /* full backup: the dirty list is unused */
    bool have_alloc;            /* false: no base:allocation, all is data */
    struct grid_list alloc;     /* base:allocation (NBD_STATE_ZERO: not read) */
    struct grid_list dirty;     /* the dirty bitmap (NBD_STATE_DIRTY) */
};

/* [start, end) in disk offsets. */
struct grid_range {
    uint64_t start, end;
};

enum grid_kind {
    GRID_SKIP,                  /* incremental, nothing dirty: the parent's chunk stands */
    GRID_ZERO,                  /* nothing to read, nothing from the parent: zero */
    GRID_WORK,                  /* reads and/or fills, then a chunk to store */
};

struct grid_plan {
    enum grid_kind kind;
    bool partial;               /* fills is not empty (incremental only) */
    bool fragmented;            /* planned by the fallback (see above) */
    size_t nreads, nfills;
    /* To read from the server: ascending, merged (never adjacent). */
    struct grid_range reads[GRID_MAX_RANGES];
    /* To take from the parent's chunk (the cell minus what is dirty); when
     * the parent's cell is zero, nothing to do: the buffer is zeros. */
    struct grid_range fills[GRID_MAX_RANGES + 1];
};

/* Plans cell [cs, ce) (cs < ce), moving in's cursors forward. */
void grid_plan_cell(struct grid_input *in, uint64_t cs, uint64_t ce, struct grid_plan *p);

/* Bytes the plans read, summed over one plan / over the cells that start
 * in [s, e) of a disk of the given size (s on a cell boundary). */
uint64_t grid_plan_read_bytes(const struct grid_plan *p);
uint64_t grid_planned(struct grid_input *in, uint64_t size, uint32_t chunk, uint64_t s, uint64_t e);

#endif
