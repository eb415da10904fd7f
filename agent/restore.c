/* restore.c: a restore point back to a file or to an NBD export.
 *
 * The point's map is resolved through its chain of parents (the catalog's
 * map iterator); data cells are read from the packs and checked against
 * their ids by worker threads (common/workq.h) and handed to a sink
 * (sink.h: a file, renamed into place at the end, or an NBD export); zero
 * runs go to the sink from this thread.  A damaged chunk stops the restore
 * with its name; a failed restore leaves no output file behind.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/grid.h"
#include "agent/internal.h"
#include "agent/remote.h"
#include "agent/pack.h"
#include "agent/sink.h"
#include "common/clock.h"
#include "common/cpus.h"
#include "common/error.h"
#include "store/store.h"
#include "common/workq.h"

#define NBUFS 32

struct item {
    struct sink_block blk;        /* first */
    uint64_t cell;
    struct catalog_chunk ch;
};

struct restore {
    struct agent_repo *repo;
    const struct agent_restore_opts *o;
    uint32_t chunk;
    uint64_t size;
    struct workq *q;
    struct sink *sink;
    struct agent_progress progress;
    struct item items[NBUFS];
};

/* ---- Workers: chunks read and checked ------------------------------------- */

static void *worker_start(void *opaque)
{
    struct restore *rs = opaque;
    return pack_reader_open(rs->repo->store, rs->repo->keys);
}

static void worker_end(void *opaque, void *wctx)
{
    (void)opaque;
    pack_reader_close(wctx);
}

static void worker_run(void *opaque, void *wctx, struct workq_item *qi)
{
    struct restore *rs = opaque;
    struct item *it = (struct item *)qi;
    uint64_t len = grid_cell_len(rs->size, rs->chunk, it->cell);

    if (it->ch.plain_len != len) {
        latch_set(workq_latch(rs->q), EIO, "cell %llu: chunk %lld holds %u bytes where the cell has %llu",
                  (unsigned long long)it->cell, (long long)it->ch.id, it->ch.plain_len,
                  (unsigned long long)len);
        workq_release(rs->q, qi);
        return;
    }
    if (agent_chunk_read(wctx, &it->ch, it->blk.buf) < 0) {
        latch_set_error(workq_latch(rs->q));
        workq_release(rs->q, qi);
        return;
    }
    it->blk.off = grid_cell_start(rs->chunk, it->cell);
    it->blk.len = len;
    rs->sink->ops->put(rs->sink, &it->blk);
}

/* ---- The main thread ------------------------------------------------------ */

static int wait_sink(void *opaque)
{
    struct restore *rs = opaque;
    rs->sink->ops->wait(rs->sink, 250);
    agent_progress_report(&rs->progress, sink_done(rs->sink), rs->size, 0);
    return 0;
}

/* The point to restore (the disk's latest when o->point is 0). */
static int find_point(struct agent_repo *r, const struct agent_restore_opts *o, struct catalog_point *pt)
{
    int64_t disk_id;
    if (agent_disk_id(r, o->disk, &disk_id) < 0)
        return -1;
    int f = o->point ? catalog_point_get(r->cat, o->point, pt) : catalog_point_latest(r->cat, disk_id, pt);
    if (f < 0)
        return -1;
    if (f == 0 || !pt->complete || pt->disk_id != disk_id) {
        if (o->point)
            error_set(ENOENT, "disk \"%s\" has no restore point %lld", o->disk, (long long)o->point);
        else
            error_set(ENOENT, "disk \"%s\" has no restore point", o->disk);
        return -1;
    }
    return 0;
}

/* The buffers, the workers and the sink. */
static int start(struct restore *rs)
{
    static const struct workq_ops ops = { worker_start, worker_run, worker_end };
    if (!(rs->q = workq_new(&ops, rs)))
        return -1;
    for (unsigned i = 0; i < NBUFS; i++) {
        if (!(rs->items[i].blk.buf = aligned_alloc(SINK_ALIGN, rs->chunk))) {
            error_set(ENOMEM, "out of memory");
            return -1;
        }
        workq_add_free(rs->q, &rs->items[i].blk.q);
    }
    struct sink_opts so = { .size = rs->size, .chunk = rs->chunk, .connections = rs->o->connections,
                            .q = rs->q };
    rs->sink = rs->o->to_uri ? sink_nbd_open(rs->o->to_uri, &so) : sink_file_open(rs->o->output, &so);
    if (!rs->sink)
        return -1;
    return workq_start(rs->q, cpus_workers());
}

/* One run of the map: zeros to the sink, or each cell to a worker. */
static int restore_run(struct restore *rs, const struct catalog_run *run)
{
    uint64_t off = grid_cell_start(rs->chunk, run->first_cell);
    uint64_t last = run->first_cell + run->count - 1;
    uint64_t end = grid_cell_start(rs->chunk, last) + grid_cell_len(rs->size, rs->chunk, last);
    if (run->chunk_id == 0) {
        rs->sink->ops->zero(rs->sink, off, end - off);
        return 0;
    }
    struct catalog_chunk ch;
    int g = catalog_chunk_get(rs->repo->cat, run->chunk_id, &ch);
    if (g <= 0) {
        if (g == 0)
            error_set(EIO, "cell %llu: chunk %lld is not in the catalog",
                      (unsigned long long)run->first_cell, (long long)run->chunk_id);
        return -1;
    }
    for (uint64_t cell = run->first_cell; cell < run->first_cell + run->count; cell++) {
        struct item *it = (struct item *)workq_get(rs->q, wait_sink, rs);
        if (!it)
            return 0; /* failed: the latch has it */
        it->cell = cell;
        it->ch = ch;
        workq_submit(rs->q, &it->blk.q);
    }
    return 0;
}

/* Every cell of point pt to the sink, then durable. */
static int restore_all(struct restore *rs, const struct catalog_point *pt)
{
    uint64_t ncells = grid_cells(rs->size, rs->chunk);
    struct catalog_map *map = catalog_map_open(rs->repo->cat, pt->id, 0, ncells);
    if (!map)
        return -1;
    agent_progress_report(&rs->progress, 0, rs->size, 1);
    struct catalog_run run;
    int m = 0;
    while (!workq_failed(rs->q) && (m = catalog_map_next(map, &run)) > 0) {
        if (restore_run(rs, &run) < 0) {
            latch_set_error(workq_latch(rs->q));
            break;
        }
        /* Hand what the workers decoded meanwhile to the sink's I/O. */
        rs->sink->ops->wait(rs->sink, 0);
    }
    if (m < 0 && !workq_failed(rs->q))
        latch_set_error(workq_latch(rs->q));
    catalog_map_close(map);
    /* Wait for every chunk and every write. */
    while (workq_busy(rs->q) || rs->sink->ops->busy(rs->sink))
        wait_sink(rs);
    workq_stop(rs->q);
    /* Durable before we say so. */
    if (rs->sink->ops->commit(rs->sink) < 0)
        return -1;
    agent_progress_report(&rs->progress, rs->size, rs->size, 1);
    return 0;
}

int agent_restore(struct agent_repo *r, const struct agent_restore_opts *o,
                  struct agent_restore_result *res)
{
    struct restore rs = { .repo = r, .o = o, .chunk = r->chunk_size };
    struct catalog_point pt;
    int ret = -1;
    double t0 = clock_mono_s();
    bool snapshot = false;

    memset(res, 0, sizeof *res);
    rs.progress = (struct agent_progress){ o->progress, o->opaque, 0 };
    uint64_t retries0 = store_retries(r->store);

    /* gc never moves or deletes a chunk this restore may still read. */
    struct agent_read_lock lk;
    if (agent_read_lock(r, "restore", o->disk, o->warn, o->opaque, &lk) < 0)
        return -1;

    /* One read snapshot for the whole restore: a prune committing meanwhile
     * cannot mix two states of the chain. */
    if (catalog_snapshot_begin(r->cat) == 0) {
        snapshot = true;
        if (find_point(r, o, &pt) == 0) {
            rs.size = pt.disk_size;
            if (start(&rs) == 0 && restore_all(&rs, &pt) == 0)
                ret = 0;
        }
    }
    if (ret == 0) {
        res->point = pt.id;
        res->disk_size = rs.size;
        res->bytes_written = rs.sink->written;
        res->bytes_zero = rs.sink->zeroed;
        res->seconds = clock_mono_s() - t0;
        res->retries = store_retries(r->store) - retries0;
    }

    struct error_saved e;
    error_save(&e);
    if (rs.q)
        workq_stop(rs.q);
    if (rs.sink)
        rs.sink->ops->close(rs.sink);
    workq_free(rs.q);
    for (unsigned i = 0; i < NBUFS; i++)
        free(rs.items[i].blk.buf);
    if (snapshot)
        catalog_snapshot_end(r->cat);
    agent_read_unlock(r, &lk);
    error_restore(&e);
    return ret;
}
