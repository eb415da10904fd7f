/* test_grid.c: the chunk grid and the plan of one cell (agent/grid.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/grid.h"
#include "nbdcore/nbd-protocol.h"

#define UNUSED __attribute__((unused))

#define DATA 0
#define ZERO NBD_STATE_ZERO
#define HOLE (NBD_STATE_HOLE | NBD_STATE_ZERO)
#define DIRTY NBD_STATE_DIRTY
#define CLEAN 0

/* ---- Helpers ------------------------------------------------------------ */

static struct grid_input input(bool full, const struct grid_extent *alloc, size_t nalloc,
                               const struct grid_extent *dirty, size_t ndirty)
{
    return (struct grid_input){ .full = full, .have_alloc = alloc != NULL,
                                .alloc = { alloc, nalloc, 0 }, .dirty = { dirty, ndirty, 0 } };
}

/* The ranges of a plan must be exactly want[] (pairs start, end). */
static void expect_ranges(const char *what, const struct grid_range *r, size_t n,
                          const uint64_t (*want)[2], size_t nwant)
{
    if (n != nwant) {
        for (size_t i = 0; i < n; i++)
            print_message("  %s[%zu] = [%llu, %llu)\n", what, i, (unsigned long long)r[i].start,
                          (unsigned long long)r[i].end);
        fail_msg("%zu %s, expected %zu", n, what, nwant);
    }
    for (size_t i = 0; i < n; i++)
        if (r[i].start != want[i][0] || r[i].end != want[i][1])
            fail_msg("%s[%zu] = [%llu, %llu), expected [%llu, %llu)", what, i,
                     (unsigned long long)r[i].start, (unsigned long long)r[i].end,
                     (unsigned long long)want[i][0], (unsigned long long)want[i][1]);
}

#define READS(p, ...) do { \
        const uint64_t w_[][2] = { __VA_ARGS__ }; \
        expect_ranges("reads", (p)->reads, (p)->nreads, w_, sizeof w_ / sizeof w_[0]); \
    } while (0)
#define FILLS(p, ...) do { \
        const uint64_t w_[][2] = { __VA_ARGS__ }; \
        expect_ranges("fills", (p)->fills, (p)->nfills, w_, sizeof w_ / sizeof w_[0]); \
    } while (0)
#define NO_READS(p) assert_int_equal((p)->nreads, 0)
#define NO_FILLS(p) assert_int_equal((p)->nfills, 0)

/* ---- Cell arithmetic ------------------------------------------------------ */

static void test_cells_multiple(void **state UNUSED)
{
    uint32_t c = 65536;
    assert_int_equal(grid_cells(4 * (uint64_t)c, c), 4);
    for (uint64_t i = 0; i < 4; i++)
        assert_int_equal(grid_cell_len(4 * (uint64_t)c, c, i), c);
    assert_int_equal(grid_cell_start(c, 3), 3 * (uint64_t)c);
    assert_int_equal(grid_cell_of(c, 0), 0);
    assert_int_equal(grid_cell_of(c, c - 1), 0);
    assert_int_equal(grid_cell_of(c, c), 1);
    assert_int_equal(grid_cell_of(c, 4 * (uint64_t)c - 1), 3);
    assert_int_equal(grid_cells(0, c), 0);
}

static void test_cells_not_multiple(void **state UNUSED)
{
    uint32_t c = 65536;
    uint64_t size = 3 * (uint64_t)c + 512;
    assert_int_equal(grid_cells(size, c), 4);
    assert_int_equal(grid_cell_len(size, c, 2), c);
    assert_int_equal(grid_cell_len(size, c, 3), 512);
    assert_int_equal(grid_cell_of(c, size - 1), 3);
    assert_int_equal(grid_cells(3 * (uint64_t)c + 1, c), 4);
    assert_int_equal(grid_cell_len(3 * (uint64_t)c + 1, c, 3), 1);
    assert_int_equal(grid_cells(4 * (uint64_t)c - 1, c), 4);
    assert_int_equal(grid_cell_len(4 * (uint64_t)c - 1, c, 3), c - 1);
}

static void test_cells_smaller_than_chunk(void **state UNUSED)
{
    uint32_t c = 16u << 20;
    assert_int_equal(grid_cells(1, c), 1);
    assert_int_equal(grid_cell_len(1, c, 0), 1);
    assert_int_equal(grid_cells(4096, c), 1);
    assert_int_equal(grid_cell_len(4096, c, 0), 4096);
    assert_int_equal(grid_cell_of(c, 4095), 0);
}

static void test_cells_huge(void **state UNUSED)
{
    uint64_t size = (UINT64_C(1) << 40) + 1;
    uint32_t c = 65536;
    assert_int_equal(grid_cells(size, c), (UINT64_C(1) << 24) + 1);
    uint64_t last = grid_cells(size, c) - 1;
    assert_int_equal(grid_cell_start(c, last), UINT64_C(1) << 40);
    assert_int_equal(grid_cell_len(size, c, last), 1);
    assert_int_equal(grid_cell_len(size, c, last - 1), c);
    assert_int_equal(grid_cell_of(c, size - 1), last);
    assert_int_equal(grid_cell_of(c, size - 2), last - 1);
    /* No overflow in the rounding up, near 2^64. */
    assert_int_equal(grid_cells(UINT64_MAX, c), (UINT64_MAX / c) + 1);
    assert_int_equal(grid_cell_len(UINT64_MAX, c, UINT64_MAX / c), UINT64_MAX % c);

    /* The short last cell of a 2^40+1 disk, planned. */
    struct grid_extent al[] = { { 0, size, DATA } };
    struct grid_input in = input(true, al, 1, NULL, 0);
    struct grid_plan p;
    grid_plan_cell(&in, UINT64_C(1) << 40, size, &p);
    assert_int_equal(p.kind, GRID_WORK);
    READS(&p, { UINT64_C(1) << 40, size });
    struct grid_input in2 = input(true, al, 1, NULL, 0);
    assert_int_equal(grid_planned(&in2, size, c, (UINT64_C(1) << 40) - c, size), c + 1);
}

/* ---- Full backups ---------------------------------------------------------- */

static void test_full_split_cell(void **state UNUSED)
{
    /* One 64 KiB cell: data, zero, data, hole, data. */
    struct grid_extent al[] = {
        { 0, 4096, DATA }, { 4096, 8192, ZERO }, { 12288, 4096, DATA },
        { 16384, 32768, HOLE }, { 49152, 16384, DATA },
    };
    struct grid_input in = input(true, al, 5, NULL, 0);
    struct grid_plan p;
    grid_plan_cell(&in, 0, 65536, &p);
    assert_int_equal(p.kind, GRID_WORK);
    assert_false(p.partial);
    assert_false(p.fragmented);
    READS(&p, { 0, 4096 }, { 12288, 16384 }, { 49152, 65536 });
    NO_FILLS(&p);
    assert_int_equal(grid_plan_read_bytes(&p), 4096 + 4096 + 16384);
}

static void test_full_adjacent_data_merged(void **state UNUSED)
{
    /* Unmerged data extents (a walk without merge) and a HOLE-only flag,
     * which base:allocation still reports as data to read. */
    struct grid_extent al[] = {
        { 0, 100, DATA }, { 100, 100, DATA }, { 200, 100, NBD_STATE_HOLE }, { 300, 724, ZERO },
    };
    struct grid_input in = input(true, al, 4, NULL, 0);
    struct grid_plan p;
    grid_plan_cell(&in, 0, 1024, &p);
    READS(&p, { 0, 300 });
}

static void test_full_extents_span_cells(void **state UNUSED)
{
    /* chunk 1024, disk 5000: data [500, 2600), zero [2600, 4100), data to the end. */
    struct grid_extent al[] = { { 0, 500, ZERO }, { 500, 2100, DATA }, { 2600, 1500, ZERO },
                                { 4100, 900, DATA } };
    struct grid_input in = input(true, al, 4, NULL, 0);
    struct grid_plan p;
    uint32_t c = 1024;
    uint64_t size = 5000;

    assert_int_equal(grid_cells(size, c), 5);
    grid_plan_cell(&in, 0, 1024, &p);
    assert_int_equal(p.kind, GRID_WORK);
    READS(&p, { 500, 1024 });
    grid_plan_cell(&in, 1024, 2048, &p);
    READS(&p, { 1024, 2048 });
    grid_plan_cell(&in, 2048, 3072, &p);
    READS(&p, { 2048, 2600 });
    grid_plan_cell(&in, 3072, 4096, &p);
    assert_int_equal(p.kind, GRID_ZERO); /* wholly inside a zero extent */
    NO_READS(&p);
    NO_FILLS(&p);
    grid_plan_cell(&in, 4096, 5000, &p);
    READS(&p, { 4100, 5000 });

    struct grid_input in2 = input(true, al, 4, NULL, 0);
    assert_int_equal(grid_planned(&in2, size, c, 0, size), 2100 + 900);
    /* Two windows, cursors fresh for each, add up to the same. */
    struct grid_input w1 = input(true, al, 4, NULL, 0), w2 = input(true, al, 4, NULL, 0);
    assert_int_equal(grid_planned(&w1, size, c, 0, 2048) + grid_planned(&w2, size, c, 2048, size),
                     3000);
}

static void test_full_zero_cell(void **state UNUSED)
{
    struct grid_extent al[] = { { 0, 65536, HOLE } };
    struct grid_input in = input(true, al, 1, NULL, 0);
    struct grid_plan p;
    grid_plan_cell(&in, 0, 65536, &p);
    assert_int_equal(p.kind, GRID_ZERO);
    NO_READS(&p);
    NO_FILLS(&p);
    assert_false(p.partial);
    assert_int_equal(grid_plan_read_bytes(&p), 0);
}

static void test_full_no_alloc_context(void **state UNUSED)
{
    struct grid_input in = input(true, NULL, 0, NULL, 0);
    struct grid_plan p;
    grid_plan_cell(&in, 0, 65536, &p);
    assert_int_equal(p.kind, GRID_WORK);
    READS(&p, { 0, 65536 });
    NO_FILLS(&p);
    grid_plan_cell(&in, 65536, 65600, &p);
    READS(&p, { 65536, 65600 });
    struct grid_input in2 = input(true, NULL, 0, NULL, 0);
    assert_int_equal(grid_planned(&in2, 65600, 65536, 0, 65600), 65600);
}

static void test_full_fragmented(void **state UNUSED)
{
    /* 65 data runs in a cell: read it whole. */
    struct grid_extent al[130];
    for (size_t i = 0; i < 130; i++)
        al[i] = (struct grid_extent){ i * 16, 16, i % 2 ? ZERO : DATA };
    struct grid_input in = input(true, al, 130, NULL, 0);
    struct grid_plan p;
    grid_plan_cell(&in, 0, 4096, &p);
    assert_true(p.fragmented);
    READS(&p, { 0, 4096 });

    /* 64 runs still fit. */
    in = input(true, al, 128, NULL, 0);
    grid_plan_cell(&in, 0, 2048, &p);
    assert_false(p.fragmented);
    assert_int_equal(p.nreads, 64);
    assert_int_equal(grid_plan_read_bytes(&p), 1024);
}

/* ---- Incremental backups ------------------------------------------------------ */

static void test_incr_clean_skipped(void **state UNUSED)
{
    struct grid_extent al[] = { { 0, 3 * 1024, DATA } };
    struct grid_extent di[] = { { 0, 1024, CLEAN }, { 1024, 1024, DIRTY }, { 2048, 1024, CLEAN } };
    struct grid_input in = input(false, al, 1, di, 3);
    struct grid_plan p;

    grid_plan_cell(&in, 0, 1024, &p);
    assert_int_equal(p.kind, GRID_SKIP);
    NO_READS(&p);
    grid_plan_cell(&in, 1024, 2048, &p);
    assert_int_equal(p.kind, GRID_WORK);
    grid_plan_cell(&in, 2048, 3072, &p);
    assert_int_equal(p.kind, GRID_SKIP);

    /* No dirty extent at all. */
    struct grid_input in2 = input(false, al, 1, NULL, 0);
    grid_plan_cell(&in2, 0, 1024, &p);
    assert_int_equal(p.kind, GRID_SKIP);
    struct grid_input in3 = input(false, al, 1, NULL, 0);
    assert_int_equal(grid_planned(&in3, 3072, 1024, 0, 3072), 0);
}

static void test_incr_wholly_dirty(void **state UNUSED)
{
    /* Dirty in two unmerged extents that cover the cell. */
    struct grid_extent al[] = { { 0, 512, DATA }, { 512, 256, ZERO }, { 768, 256, DATA } };
    struct grid_extent di[] = { { 0, 300, DIRTY }, { 300, 724, DIRTY } };
    struct grid_input in = input(false, al, 3, di, 2);
    struct grid_plan p;
    grid_plan_cell(&in, 0, 1024, &p);
    assert_int_equal(p.kind, GRID_WORK);
    assert_false(p.partial);
    NO_FILLS(&p);
    READS(&p, { 0, 512 }, { 768, 1024 });
}

static void test_incr_partly_dirty(void **state UNUSED)
{
    /* Cell [1024, 2048): data except a zero extent [1500, 1700); dirty
     * [1100, 1200) and [1400, 1800) (through the zero extent) and the tail
     * [2000, 2100) past the cell. */
    struct grid_extent al[] = { { 0, 1500, DATA }, { 1500, 200, ZERO }, { 1700, 1372, DATA } };
    struct grid_extent di[] = { { 0, 1100, CLEAN }, { 1100, 100, DIRTY }, { 1200, 200, CLEAN },
                                { 1400, 400, DIRTY }, { 1800, 200, CLEAN }, { 2000, 100, DIRTY },
                                { 2100, 972, CLEAN } };
    struct grid_input in = input(false, al, 3, di, 7);
    struct grid_plan p;

    grid_plan_cell(&in, 0, 1024, &p);
    assert_int_equal(p.kind, GRID_SKIP);
    grid_plan_cell(&in, 1024, 2048, &p);
    assert_int_equal(p.kind, GRID_WORK);
    assert_true(p.partial);
    assert_false(p.fragmented);
    READS(&p, { 1100, 1200 }, { 1400, 1500 }, { 1700, 1800 }, { 2000, 2048 });
    FILLS(&p, { 1024, 1100 }, { 1200, 1400 }, { 1800, 2000 });
    grid_plan_cell(&in, 2048, 3072, &p);
    assert_true(p.partial);
    READS(&p, { 2048, 2100 });
    FILLS(&p, { 2100, 3072 });

    struct grid_input in2 = input(false, al, 3, di, 7);
    assert_int_equal(grid_planned(&in2, 3072, 1024, 0, 3072), 100 + 100 + 100 + 48 + 52);
}

static void test_incr_dirty_zero_not_read(void **state UNUSED)
{
    struct grid_extent al[] = { { 0, 1024, DATA }, { 1024, 1024, HOLE } };
    struct grid_extent di[] = { { 0, 1024, CLEAN }, { 1024, 1024, DIRTY } };
    struct grid_input in = input(false, al, 2, di, 2);
    struct grid_plan p;

    /* Wholly dirty, wholly zero (trimmed): a zero cell, no read. */
    grid_plan_cell(&in, 1024, 2048, &p);
    assert_int_equal(p.kind, GRID_ZERO);
    NO_READS(&p);
    NO_FILLS(&p);

    /* Partly dirty, the dirty part zero: no read, but the rest comes from
     * the parent (a zero cell only if the parent's is). */
    struct grid_extent di2[] = { { 0, 1200, CLEAN }, { 1200, 100, DIRTY }, { 1300, 748, CLEAN } };
    in = input(false, al, 2, di2, 3);
    grid_plan_cell(&in, 1024, 2048, &p);
    assert_int_equal(p.kind, GRID_WORK);
    assert_true(p.partial);
    NO_READS(&p);
    FILLS(&p, { 1024, 1200 }, { 1300, 2048 });
}

static void test_incr_unaligned_dirty(void **state UNUSED)
{
    /* Dirty extents at odd offsets, across a cell boundary, without
     * base:allocation. */
    struct grid_extent di[] = { { 3, 5, DIRTY }, { 8, 1, DIRTY }, { 1000, 50, DIRTY },
                                { 1050, 7, CLEAN }, { 1057, 1, DIRTY } };
    struct grid_input in = input(false, NULL, 0, di, 5);
    struct grid_plan p;

    grid_plan_cell(&in, 0, 1024, &p);
    READS(&p, { 3, 9 }, { 1000, 1024 });
    FILLS(&p, { 0, 3 }, { 9, 1000 });
    grid_plan_cell(&in, 1024, 1059, &p); /* a short last cell */
    READS(&p, { 1024, 1050 }, { 1057, 1058 });
    FILLS(&p, { 1050, 1057 }, { 1058, 1059 });
}

static void test_incr_fragmented_dirty(void **state UNUSED)
{
    /* 65 dirty runs: the cell is taken as wholly dirty. */
    struct grid_extent di[130], al[] = { { 0, 1000, DATA }, { 1000, 3096, ZERO } };
    for (size_t i = 0; i < 130; i++)
        di[i] = (struct grid_extent){ i * 16, 16, i % 2 ? CLEAN : DIRTY };
    struct grid_input in = input(false, al, 2, di, 130);
    struct grid_plan p;
    grid_plan_cell(&in, 0, 4096, &p);
    assert_true(p.fragmented);
    assert_false(p.partial);
    assert_int_equal(p.kind, GRID_WORK);
    READS(&p, { 0, 1000 });
    NO_FILLS(&p);

    /* 64 are tracked. */
    in = input(false, al, 2, di, 128);
    grid_plan_cell(&in, 0, 4096, &p);
    assert_false(p.fragmented);
    assert_true(p.partial);
    assert_int_equal(p.nfills, 64);
}

static void test_incr_fragmented_reads(void **state UNUSED)
{
    /* 40 dirty runs and 40 data runs, each data run straddling two dirty
     * runs: 80 read ranges, though neither list alone is fragmented.  The
     * fallback must read the data from the start of the cell, although the
     * dirty runs moved the cursor well past it. */
    struct grid_extent di[81], al[81];
    size_t nd = 0, na = 0;
    for (uint64_t i = 0; i < 40; i++) {
        di[nd++] = (struct grid_extent){ i * 100, 60, DIRTY };
        di[nd++] = (struct grid_extent){ i * 100 + 60, 40, CLEAN };
        al[na++] = (struct grid_extent){ i * 100 + (i ? 20 : 0), i ? 30 : 50, ZERO };
        al[na++] = (struct grid_extent){ i * 100 + 50, 70, DATA };
    }
    al[na++] = (struct grid_extent){ 4020, 76, ZERO };
    di[nd++] = (struct grid_extent){ 4000, 96, CLEAN };
    struct grid_input in = input(false, al, na, di, nd);
    struct grid_plan p;
    grid_plan_cell(&in, 0, 4096, &p);
    assert_true(p.fragmented);
    assert_false(p.partial);
    NO_FILLS(&p);
    assert_int_equal(p.nreads, 40);
    for (size_t i = 0; i < 40; i++) {
        assert_int_equal(p.reads[i].start, i * 100 + 50);
        assert_int_equal(p.reads[i].end, i * 100 + 120);
    }
    struct grid_input in2 = input(false, al, na, di, nd);
    assert_int_equal(grid_planned(&in2, 4096, 4096, 0, 4096), 40 * 70);
}

/* ---- Against a model, byte by byte ------------------------------------------------ */

#define MAX_SIZE 2600
#define MAX_EXT (MAX_SIZE + 1)

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

/* Consecutive extents over [0, size), lengths 1..maxlen, flags from fl[];
 * with gaps, some are left out (bytes no extent covers). */
static size_t gen_extents(uint64_t *rng, uint64_t size, uint64_t maxlen, const uint64_t *fl,
                          size_t nfl, bool gaps, struct grid_extent *out)
{
    size_t n = 0;
    for (uint64_t pos = 0; pos < size;) {
        uint64_t len = 1 + rng_next(rng) % maxlen;
        if (len > size - pos)
            len = size - pos;
        if (!gaps || rng_next(rng) % 8)
            out[n++] = (struct grid_extent){ pos, len, fl[rng_next(rng) % nfl] };
        pos += len;
    }
    return n;
}

/* bit[] of the bytes that extents matching (flags & mask) == want cover. */
static void paint(const struct grid_extent *e, size_t n, uint64_t mask, uint64_t want, bool *bit)
{
    for (size_t i = 0; i < n; i++)
        if ((e[i].flags & mask) == want)
            for (uint64_t b = e[i].off; b < e[i].off + e[i].len; b++)
                bit[b] = true;
}

static size_t runs(const bool *bit, uint64_t s, uint64_t e)
{
    size_t n = 0;
    for (uint64_t b = s; b < e; b++)
        if (bit[b] && (b == s || !bit[b - 1]))
            n++;
    return n;
}

/* Ranges must be ascending, inside the cell, merged; marks their bytes. */
static void mark(const char *what, const struct grid_range *r, size_t n, uint64_t cs, uint64_t ce,
                 bool *bit, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) {
        if (r[i].start < cs || r[i].end > ce || r[i].start >= r[i].end ||
            (i && r[i].start <= r[i - 1].end))
            fail_msg("seed %llu: cell [%llu, %llu): %s[%zu] = [%llu, %llu) out of order",
                     (unsigned long long)seed, (unsigned long long)cs, (unsigned long long)ce,
                     what, i, (unsigned long long)r[i].start, (unsigned long long)r[i].end);
        for (uint64_t b = r[i].start; b < r[i].end; b++)
            bit[b] = true;
    }
}

struct tally {
    unsigned cells, skipped, zero, partial, frag_full, frag_incr, frag_whole_read;
};

static void check_seed(uint64_t seed, struct tally *t)
{
    static const uint32_t chunks[] = { 64, 256, 512, 1024 };
    static const uint64_t maxlens[] = { 2, 3, 5, 40, 700 };
    static const uint64_t alloc_fl[] = { DATA, ZERO, HOLE, NBD_STATE_HOLE };
    static const uint64_t dirty_fl[] = { DIRTY, CLEAN };
    static struct grid_extent al[MAX_EXT], di[MAX_EXT];
    static bool data[MAX_SIZE], dirty[MAX_SIZE], both[MAX_SIZE], rd[MAX_SIZE], fl[MAX_SIZE];
    uint64_t rng = seed * 0x9e3779b97f4a7c15ull + 1;

    uint32_t chunk = chunks[rng_next(&rng) % 4];
    uint64_t size = 1 + rng_next(&rng) % (MAX_SIZE < 5 * chunk ? MAX_SIZE : 5 * chunk);
    bool full = rng_next(&rng) % 3 == 0;
    bool have_alloc = rng_next(&rng) % 5 != 0;
    size_t na = gen_extents(&rng, size, maxlens[rng_next(&rng) % 5], alloc_fl, 4,
                            rng_next(&rng) % 4 == 0, al);
    size_t nd = gen_extents(&rng, size, maxlens[rng_next(&rng) % 5], dirty_fl,
                            1 + rng_next(&rng) % 2, rng_next(&rng) % 4 == 0, di);
    if (rng_next(&rng) % 3 == 0) /* sparse dirt: mostly clean */
        for (size_t i = 0; i < nd; i++)
            if (rng_next(&rng) % 4)
                di[i].flags = CLEAN;

    memset(data, 0, size);
    memset(dirty, 0, size);
    if (have_alloc)
        paint(al, na, NBD_STATE_ZERO, 0, data);
    else
        memset(data, 1, size);
    paint(di, nd, DIRTY, DIRTY, dirty);

    struct grid_input in = input(full, have_alloc ? al : NULL, na, di, nd);
    struct grid_plan p;
    uint64_t planned = 0;
    for (uint64_t cell = 0; cell < grid_cells(size, chunk); cell++) {
        uint64_t cs = grid_cell_start(chunk, cell), ce = cs + grid_cell_len(size, chunk, cell);
        size_t apos = in.alloc.pos, dpos = in.dirty.pos;
        grid_plan_cell(&in, cs, ce, &p);
        assert_true(in.alloc.pos >= apos);
        assert_true(in.dirty.pos >= dpos);
        t->cells++;

        /* The model. */
        bool skip = false, frag = false;
        for (uint64_t b = cs; b < ce; b++)
            both[b] = (full || dirty[b]) && data[b];
        if (full) {
            if (runs(data, cs, ce) > GRID_MAX_RANGES) {
                frag = true; /* read whole */
                for (uint64_t b = cs; b < ce; b++)
                    both[b] = true;
            }
        } else if (runs(dirty, cs, ce) == 0) {
            skip = true;
        } else if (runs(dirty, cs, ce) > GRID_MAX_RANGES || runs(both, cs, ce) > GRID_MAX_RANGES) {
            frag = true; /* wholly dirty */
            bool whole = runs(data, cs, ce) > GRID_MAX_RANGES;
            for (uint64_t b = cs; b < ce; b++) {
                dirty[b] = true;
                both[b] = whole || data[b];
            }
        }
        bool any_read = false, any_fill = false;
        for (uint64_t b = cs; b < ce; b++) {
            both[b] = both[b] && !skip;
            any_read |= both[b];
            any_fill |= !full && !skip && !dirty[b];
        }

        /* The plan, byte by byte. */
        if (skip) {
            if (p.kind != GRID_SKIP)
                fail_msg("seed %llu: cell %llu has nothing dirty, not skipped",
                         (unsigned long long)seed, (unsigned long long)cell);
            t->skipped++;
            continue;
        }
        enum grid_kind kind = !any_read && !any_fill ? GRID_ZERO : GRID_WORK;
        if (p.kind != kind || p.fragmented != frag || p.partial != any_fill)
            fail_msg("seed %llu: cell %llu: kind %d fragmented %d partial %d, expected %d %d %d",
                     (unsigned long long)seed, (unsigned long long)cell, p.kind, p.fragmented,
                     p.partial, kind, frag, any_fill);
        memset(rd + cs, 0, ce - cs);
        memset(fl + cs, 0, ce - cs);
        mark("reads", p.reads, p.nreads, cs, ce, rd, seed);
        mark("fills", p.fills, p.nfills, cs, ce, fl, seed);
        for (uint64_t b = cs; b < ce; b++) {
            bool want_fill = !full && !dirty[b];
            if (rd[b] != both[b] || fl[b] != want_fill)
                fail_msg("seed %llu (%s, chunk %u, size %llu): byte %llu: read %d fill %d, "
                         "expected %d %d", (unsigned long long)seed, full ? "full" : "incr",
                         chunk, (unsigned long long)size, (unsigned long long)b, rd[b], fl[b],
                         both[b], want_fill);
            planned += both[b];
        }
        t->zero += kind == GRID_ZERO;
        t->partial += p.partial;
        if (frag && full)
            t->frag_full++;
        if (frag && !full)
            t->frag_incr++;
        if (frag && p.nreads == 1 && p.reads[0].start == cs && p.reads[0].end == ce && have_alloc &&
            runs(data, cs, ce) > GRID_MAX_RANGES)
            t->frag_whole_read++;
    }

    /* Planned bytes: the sum of the reads, over the disk or in two windows. */
    struct grid_input in2 = input(full, have_alloc ? al : NULL, na, di, nd);
    uint64_t total = grid_planned(&in2, size, chunk, 0, size);
    if (total != planned)
        fail_msg("seed %llu: planned %llu, the reads add up to %llu", (unsigned long long)seed,
                 (unsigned long long)total, (unsigned long long)planned);
    uint64_t split = grid_cell_start(chunk, rng_next(&rng) % (grid_cells(size, chunk) + 1));
    struct grid_input w1 = input(full, have_alloc ? al : NULL, na, di, nd);
    struct grid_input w2 = input(full, have_alloc ? al : NULL, na, di, nd);
    uint64_t sum = grid_planned(&w1, size, chunk, 0, split);
    if (split < size)
        sum += grid_planned(&w2, size, chunk, split, size);
    assert_int_equal(sum, planned);
}

static void test_model_random(void **state UNUSED)
{
    struct tally t = { 0 };
    for (uint64_t seed = 1; seed <= 20000; seed++)
        check_seed(seed, &t);
    print_message("  %u cells: %u skipped, %u zero, %u partial, fragmented %u full / %u incr, "
                  "%u read whole\n", t.cells, t.skipped, t.zero, t.partial, t.frag_full,
                  t.frag_incr, t.frag_whole_read);
    /* The seeds reach every branch. */
    assert_true(t.skipped > 0 && t.zero > 0 && t.partial > 0);
    assert_true(t.frag_full > 0 && t.frag_incr > 0 && t.frag_whole_read > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cells_multiple),
        cmocka_unit_test(test_cells_not_multiple),
        cmocka_unit_test(test_cells_smaller_than_chunk),
        cmocka_unit_test(test_cells_huge),
        cmocka_unit_test(test_full_split_cell),
        cmocka_unit_test(test_full_adjacent_data_merged),
        cmocka_unit_test(test_full_extents_span_cells),
        cmocka_unit_test(test_full_zero_cell),
        cmocka_unit_test(test_full_no_alloc_context),
        cmocka_unit_test(test_full_fragmented),
        cmocka_unit_test(test_incr_clean_skipped),
        cmocka_unit_test(test_incr_wholly_dirty),
        cmocka_unit_test(test_incr_partly_dirty),
        cmocka_unit_test(test_incr_dirty_zero_not_read),
        cmocka_unit_test(test_incr_unaligned_dirty),
        cmocka_unit_test(test_incr_fragmented_dirty),
        cmocka_unit_test(test_incr_fragmented_reads),
        cmocka_unit_test(test_model_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
