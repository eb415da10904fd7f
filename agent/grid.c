/* agent/grid.c: the chunk grid, and the plan of one cell (see grid.h).
 *
 * Every range below is clipped to the cell and merged with the one before
 * it when they touch, so a cell's dirty runs and reads are the maximal runs
 * of their bytes; counting them is what decides "fragmented".
 */
#include <assert.h>

#include "agent/grid.h"
#include "nbdcore/nbd-protocol.h"

uint64_t grid_cells(uint64_t size, uint32_t chunk)
{
    assert(chunk > 0);
    return size / chunk + (size % chunk != 0); /* no overflow near 2^64 */
}

uint64_t grid_cell_of(uint32_t chunk, uint64_t off)
{
    assert(chunk > 0);
    return off / chunk;
}

uint64_t grid_cell_start(uint32_t chunk, uint64_t cell)
{
    return cell * chunk;
}

uint64_t grid_cell_len(uint64_t size, uint32_t chunk, uint64_t cell)
{
    assert(cell < grid_cells(size, chunk));
    uint64_t off = cell * chunk;
    return size - off < chunk ? size - off : chunk;
}

/* A bounded list of ranges; adding past the bound sets overflow. */
struct ranges {
    struct grid_range *r;
    size_t n;
    bool overflow;
};

static void ranges_add(struct ranges *v, uint64_t s, uint64_t e)
{
    if (v->n && v->r[v->n - 1].end == s) {
        v->r[v->n - 1].end = e;
        return;
    }
    if (v->n == GRID_MAX_RANGES) {
        v->overflow = true;
        return;
    }
    v->r[v->n++] = (struct grid_range){ s, e };
}

/* Adds the intersections of [s, e) with the extents of l that match
 * (flags & mask) == want.  Moves l's cursor past the extents that end at or
 * before s: they cannot matter to this call or any later one. */
static void add_pieces(struct grid_list *l, uint64_t s, uint64_t e, uint64_t mask, uint64_t want,
                       struct ranges *out)
{
    while (l->pos < l->n && l->e[l->pos].off + l->e[l->pos].len <= s)
        l->pos++;
    for (size_t i = l->pos; i < l->n && l->e[i].off < e && !out->overflow; i++) {
        if ((l->e[i].flags & mask) != want)
            continue;
        uint64_t ps = l->e[i].off > s ? l->e[i].off : s;
        uint64_t pe = l->e[i].off + l->e[i].len < e ? l->e[i].off + l->e[i].len : e;
        if (ps < pe)
            ranges_add(out, ps, pe);
    }
}

/* Reads of [s, e): what base:allocation reports as data (zero extents and
 * holes read as zeros: they are left so in the buffer). */
static void add_reads(struct grid_input *in, uint64_t s, uint64_t e, struct ranges *out)
{
    if (!in->have_alloc)
        ranges_add(out, s, e);
    else
        add_pieces(&in->alloc, s, e, NBD_STATE_ZERO, 0, out);
}

void grid_plan_cell(struct grid_input *in, uint64_t cs, uint64_t ce, struct grid_plan *p)
{
    struct grid_range dirty_r[GRID_MAX_RANGES];
    struct ranges reads = { p->reads, 0, false };
    struct ranges dirty = { dirty_r, 0, false };
    size_t apos = in->alloc.pos;

    assert(cs < ce);
    p->partial = p->fragmented = false;
    p->nreads = p->nfills = 0;

    if (in->full) {
        add_reads(in, cs, ce, &reads);
    } else {
        add_pieces(&in->dirty, cs, ce, NBD_STATE_DIRTY, NBD_STATE_DIRTY, &dirty);
        if (dirty.n == 0) {
            p->kind = GRID_SKIP; /* unchanged: inherited from the parent */
            return;
        }
        for (size_t d = 0; d < dirty.n && !dirty.overflow && !reads.overflow; d++)
            add_reads(in, dirty.r[d].start, dirty.r[d].end, &reads);
        if (dirty.overflow || reads.overflow) {
            /* Too fragmented to track: treat the cell as wholly dirty.  The
             * reads start over from the cell's first extent, wherever the
             * dirty runs left the cursor. */
            p->fragmented = true;
            dirty = (struct ranges){ dirty_r, 0, false };
            ranges_add(&dirty, cs, ce);
            reads = (struct ranges){ p->reads, 0, false };
            in->alloc.pos = apos;
            add_reads(in, cs, ce, &reads);
        }
    }
    if (reads.overflow) {
        /* Data too scattered even for the whole cell: read it all. */
        p->fragmented = true;
        reads = (struct ranges){ p->reads, 0, false };
        ranges_add(&reads, cs, ce);
    }
    p->nreads = reads.n;

    if (!in->full) {
        /* The clean parts: the cell minus its dirty runs. */
        uint64_t pos = cs;
        for (size_t d = 0; d <= dirty.n; d++) {
            uint64_t gap_end = d < dirty.n ? dirty.r[d].start : ce;
            if (gap_end > pos)
                p->fills[p->nfills++] = (struct grid_range){ pos, gap_end };
            if (d < dirty.n)
                pos = dirty.r[d].end;
        }
        p->partial = p->nfills > 0;
    }
    p->kind = p->nreads == 0 && !p->partial ? GRID_ZERO : GRID_WORK;
}

uint64_t grid_plan_read_bytes(const struct grid_plan *p)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < p->nreads; i++)
        sum += p->reads[i].end - p->reads[i].start;
    return sum;
}

uint64_t grid_planned(struct grid_input *in, uint64_t size, uint32_t chunk, uint64_t s, uint64_t e)
{
    struct grid_plan p;
    uint64_t sum = 0;

    assert(s % chunk == 0);
    for (uint64_t cell = grid_cell_of(chunk, s); cell < grid_cells(size, chunk) &&
                                                 grid_cell_start(chunk, cell) < e; cell++) {
        uint64_t cs = grid_cell_start(chunk, cell);
        grid_plan_cell(in, cs, cs + grid_cell_len(size, chunk, cell), &p);
        if (p.kind == GRID_WORK)
            sum += grid_plan_read_bytes(&p);
    }
    return sum;
}
