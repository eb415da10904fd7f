/* backup.c: full and incremental backups of a live NBD export.
 *
 *   plan (plan.h: block status, cell by cell)
 *     -> reads (the multi-conn pool, many requests in flight, driven by
 *        this thread)
 *     -> batches of consecutive cells (partly dirty cells completed from
 *        the parent point's chunks in the store, never from the disk)
 *     -> workers (common/workq.h) put each cell into the session
 *        (session.h: zero check, SHA-256, dedup, zstd, packs, rows)
 *     -> the session's committer -> one commit of the point.
 *
 * This file is the orchestration: the point, the batches and the reads.
 * Memory is a fixed number of batch buffers plus the plan's extents,
 * whatever the size of the disk.  Nothing reaches the catalog before the
 * pack holding it is durable, and the point stays 'running' (invisible)
 * until the final commit: a crash leaves every earlier point as it was.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "agent/grid.h"
#include "agent/internal.h"
#include "agent/plan.h"
#include "agent/remote.h"
#include "agent/session.h"
#include "store/store.h"
#include "common/clock.h"
#include "common/cpus.h"
#include "common/error.h"
#include "common/latch.h"
#include "common/vec.h"
#include "common/workq.h"
#include "nbdcore/nbdcore.h"

#define BATCH_BYTES (1u << 20)
#define NBATCHES 32
#define MAX_BATCH_CELLS 16

struct fill {
    uint32_t cell;                /* index in the batch */
    uint32_t off, len;            /* within the cell: taken from the parent chunk */
};

struct batch {
    struct workq_item q;          /* first */
    uint64_t first_cell;
    unsigned ncells;
    uint8_t *buf;
    struct grid_range reads[MAX_BATCH_CELLS * 8]; /* disk ranges, merged */
    size_t nreads;
    struct fill *fills;
    size_t nfills, capfills;
    int64_t parent_chunk[MAX_BATCH_CELLS]; /* to complete a partly dirty cell */
    /* The parent's chunk of each cell (incrementals; 0 = zero): a cell
     * whose new content is the same is not recorded (a bitmap that is
     * never cleared marks the same cells night after night). */
    int64_t prev_chunk[MAX_BATCH_CELLS];
    unsigned reads_pending;
    struct backup *b;
};

struct backup {
    struct agent_repo *repo;
    const struct agent_backup_opts *o;
    struct nbd_pool *pool;
    uint64_t size;
    uint32_t chunk;
    bool full;
    int64_t point;
    char *bitmap_ctx;             /* "qemu:dirty-bitmap:NAME" or NULL */
    bool have_alloc;
    int level;
    struct catalog_map *pmap;     /* incrementals: the parent's map */
    struct catalog_point np;      /* the point being taken */
    uint64_t retries0;            /* the store's retries when it began */

    struct plan *plan;
    struct session *session;
    struct workq *q;
    struct latch *latch;          /* the workq's: the first error of any thread */

    /* The main thread's. */
    struct agent_progress progress;
    uint64_t planned, read_bytes;
    double rate_start;            /* --max-rate: when the first read was sent */
    struct batch batches[NBATCHES];
};

static void fail(struct backup *b, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(struct backup *b, int err, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    latch_set(b->latch, err, "%s", msg);
}

static bool failed(struct backup *b)
{
    return latch_isset(b->latch);
}

/* ---- Workers ---------------------------------------------------------------- */

static void *worker_start(void *opaque)
{
    struct backup *b = opaque;
    return session_worker_open(b->session, b->chunk);
}

static void worker_end(void *opaque, void *wctx)
{
    (void)opaque;
    session_worker_close(wctx);
}

/* Cell i of a batch: the clean parts from the parent's chunk, then into
 * the session. */
static int process_cell(struct session_worker *w, struct batch *bt, unsigned i)
{
    struct backup *b = bt->b;
    uint64_t cell = bt->first_cell + i, len = grid_cell_len(b->size, b->chunk, cell);
    uint8_t *data = bt->buf + (size_t)i * b->chunk;
    const uint8_t *parent = NULL;

    for (size_t f = 0; f < bt->nfills; f++) {
        if (bt->fills[f].cell != i)
            continue;
        if (!bt->parent_chunk[i])
            continue; /* the parent's cell is zero: the buffer already is */
        if (!parent && !(parent = session_chunk(w, bt->parent_chunk[i], len))) {
            error_prefix("cell %llu: parent chunk: ", (unsigned long long)cell);
            return -1;
        }
        memcpy(data + bt->fills[f].off, parent + bt->fills[f].off, bt->fills[f].len);
    }
    return session_put(w, cell, data, len, bt->prev_chunk[i]);
}

static void worker_run(void *opaque, void *wctx, struct workq_item *it)
{
    struct backup *b = opaque;
    struct batch *bt = (struct batch *)it;

    for (unsigned i = 0; i < bt->ncells && !failed(b); i++) {
        if (process_cell(wctx, bt, i) < 0) {
            latch_set_error(b->latch);
            break;
        }
    }
    workq_release(b->q, it);
}

/* ---- Reading ---------------------------------------------------------------- */

static void read_done(void *opaque, int err)
{
    struct batch *bt = opaque;
    struct backup *b = bt->b;

    if (err)
        fail(b, err, "read from %s: %s", b->o->uri, error_msg());
    if (--bt->reads_pending == 0)
        workq_submit(b->q, &bt->q);
}

/* Runs the connections until something happens (a read completes or a
 * worker hands a batch back), for up to ms. */
static int drive_for(struct backup *b, int ms)
{
    int r = nbd_pool_poll(b->pool, workq_efd(b->q), ms);
    if (r < 0) {
        fail(b, error_errno(), "%s", error_msg());
        return -1;
    }
    if (r > 0)
        workq_consume(b->q);
    agent_progress_report(&b->progress, b->read_bytes, b->planned, 0);
    return 0;
}

static int drive(void *opaque)
{
    return drive_for(opaque, 250);
}

/* --max-rate: before sending len more bytes of reads, waits (driving the
 * connections meanwhile, so that replies keep flowing) until the bytes sent
 * since the first read are within the rate, with one batch of burst. */
static void throttle(struct backup *b, uint64_t len)
{
    uint64_t rate = b->o->max_rate;

    if (!rate)
        return;
    double now = clock_mono_s();
    if (b->rate_start == 0)
        b->rate_start = now;
    for (;;) {
        double due = b->rate_start + (double)(b->read_bytes + len) / (double)rate;
        double wait = due - now - (double)BATCH_BYTES / (double)rate;
        if (wait <= 0 || failed(b))
            return;
        if (drive_for(b, wait > 0.25 ? 250 : (int)(wait * 1000) + 1) < 0)
            return;
        now = clock_mono_s();
    }
}

static void dispatch(struct backup *b, struct batch *bt)
{
    if (bt->nreads == 0) {
        workq_submit(b->q, &bt->q);
        return;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < bt->nreads; i++)
        total += bt->reads[i].end - bt->reads[i].start;
    throttle(b, total);
    bt->reads_pending = 1; /* held while submitting */
    uint64_t base = grid_cell_start(b->chunk, bt->first_cell);
    /* In pieces of the connections' request size, each to the connection
     * with the fewest in flight: a batch spreads over all of them. */
    for (size_t i = 0; i < bt->nreads && !failed(b); i++) {
        for (uint64_t off = bt->reads[i].start, end = bt->reads[i].end; off < end;) {
            struct nbd_conn *c = nbd_pool_pick(b->pool);
            if (!c) {
                fail(b, EIO, "read from %s: every connection is dead", b->o->uri);
                break;
            }
            uint64_t len = end - off < nbd_max_request(c) ? end - off : nbd_max_request(c);
            if (nbd_aio_pread(c, bt->buf + (off - base), len, off, 0, read_done, bt) < 0) {
                fail(b, error_errno(), "read from %s: %s", b->o->uri, error_msg());
                break;
            }
            bt->reads_pending++;
            b->read_bytes += len;
            off += len;
        }
    }
    if (--bt->reads_pending == 0)
        workq_submit(b->q, &bt->q);
}

static struct batch *get_batch(struct backup *b, uint64_t first_cell)
{
    struct batch *bt = (struct batch *)workq_get(b->q, drive, b);
    if (bt) {
        bt->nreads = bt->nfills = 0;
        bt->ncells = 0;
        bt->first_cell = first_cell;
        bt->b = b;
    }
    return bt;
}

/* Whether cell c can join batch bt. */
static bool fits(const struct backup *b, const struct batch *bt, const struct plan_cell *c)
{
    unsigned maxcells = BATCH_BYTES / b->chunk ? BATCH_BYTES / b->chunk : 1;
    return bt->ncells < maxcells && bt->first_cell + bt->ncells == c->cell &&
           bt->nreads + c->g.nreads <= sizeof bt->reads / sizeof *bt->reads;
}

/* Appends cell c to batch bt: its reads, and the parts to take from the
 * parent's chunk. */
static int add_cell(struct backup *b, struct batch *bt, const struct plan_cell *c)
{
    unsigned i = bt->ncells++;
    bt->parent_chunk[i] = c->fill_from;
    bt->prev_chunk[i] = c->prev;
    /* What the reads do not cover reads as zeroes (or comes from the
     * parent's chunk, over zeroes). */
    uint64_t cs = grid_cell_start(b->chunk, c->cell), clen = grid_cell_len(b->size, b->chunk, c->cell);
    if (grid_plan_read_bytes(&c->g) < clen)
        memset(bt->buf + (size_t)i * b->chunk, 0, clen);
    for (size_t r = 0; r < c->g.nreads; r++) {
        if (bt->nreads && bt->reads[bt->nreads - 1].end == c->g.reads[r].start)
            bt->reads[bt->nreads - 1].end = c->g.reads[r].end;
        else
            bt->reads[bt->nreads++] = c->g.reads[r];
    }
    /* A zero parent cell needs nothing: the buffer is zeros. */
    for (size_t f = 0; c->fill_from && f < c->g.nfills; f++) {
        if (VEC_RESERVE(bt->fills, bt->nfills, bt->capfills, 64) < 0)
            return -1;
        bt->fills[bt->nfills++] = (struct fill){ i, (uint32_t)(c->g.fills[f].start - cs),
                                                 (uint32_t)(c->g.fills[f].end - c->g.fills[f].start) };
    }
    return 0;
}

/* Every planned cell read and put into the session; returns once every
 * read has returned and every batch is back. */
static int plan_and_read(struct backup *b)
{
    struct batch *bt = NULL;
    struct plan_cell c;
    int r = 0;

    while (!failed(b) && (r = plan_next(b->plan, &c)) > 0) {
        if (c.g.nreads == 0 && c.fill_from == 0) {
            /* All zero, nothing to read (GRID_ZERO, or only zeros dirty
             * where the parent's cell is zero). */
            if (bt) {
                dispatch(b, bt);
                bt = NULL;
            }
            if (session_put_zero(b->session, c.cell, c.prev) < 0)
                break;
            continue;
        }
        if (bt && !fits(b, bt, &c)) {
            dispatch(b, bt);
            bt = NULL;
        }
        if (!bt && !(bt = get_batch(b, c.cell)))
            break;
        if (add_cell(b, bt, &c) < 0)
            break;
    }
    if (r != 0 && !failed(b))
        latch_set_error(b->latch); /* plan_next, session_put_zero or add_cell */
    if (bt && !failed(b))
        dispatch(b, bt);
    else if (bt)
        workq_unget(b->q, &bt->q);
    /* Wait for every read and every batch. */
    while (workq_busy(b->q) || nbd_pool_in_flight(b->pool))
        drive_for(b, 250);
    return failed(b) ? -1 : 0;
}

/* ---- The backup ---------------------------------------------------------------- */

static void warn(const struct agent_backup_opts *o, const char *msg)
{
    if (o->warn)
        o->warn(o->opaque, msg);
}

/* Connects, asking for the contexts the plan needs. */
static int connect_source(struct backup *b)
{
    const struct agent_backup_opts *o = b->o;
    const char *ctxs[3] = { NBD_CONTEXT_BASE_ALLOCATION, NULL, NULL };
    if (o->bitmap) {
        if (asprintf(&b->bitmap_ctx, "%s%s", NBD_CONTEXT_QEMU_DIRTY_BITMAP_PREFIX, o->bitmap) < 0) {
            b->bitmap_ctx = NULL;
            error_set(ENOMEM, "out of memory");
            return -1;
        }
        ctxs[1] = b->bitmap_ctx;
    }
    struct nbd_conn_opts copts = { .meta_contexts = ctxs, .reply_timeout_ms = o->io_timeout_ms };
    b->pool = nbd_pool_open(o->uri, &copts, o->connections ? o->connections : AGENT_DEFAULT_CONNECTIONS);
    if (!b->pool) {
        error_prefix("%s: ", o->uri);
        return -1;
    }
    struct nbd_conn *c0 = nbd_pool_conn(b->pool, 0);
    b->size = nbd_get_size(c0);
    b->have_alloc = nbd_has_context(c0, NBD_CONTEXT_BASE_ALLOCATION);
    if (o->bitmap && !nbd_has_context(c0, b->bitmap_ctx)) {
        error_set(ENOENT, "%s: the export does not offer the dirty bitmap \"%s\" (%s)", o->uri,
                  o->bitmap, b->bitmap_ctx);
        return -1;
    }
    return 0;
}

/* Full or incremental, and the running point (b->np). */
static int begin_point(struct backup *b, double t0)
{
    const struct agent_backup_opts *o = b->o;
    struct catalog *cat = b->repo->cat;
    int64_t disk_id;
    struct catalog_point parent;
    int found = catalog_disk_find(cat, o->disk, &disk_id);
    if (found < 0)
        return -1;
    if (!found && (disk_id = catalog_disk_add(cat, o->disk)) < 0)
        return -1;
    int have_parent = catalog_point_latest(cat, disk_id, &parent);
    if (have_parent < 0)
        return -1;
    b->full = o->full || !have_parent || !o->bitmap;
    if (!b->full && parent.disk_size != b->size) {
        error_set(EINVAL, "%s: the export's size %llu differs from point %lld's size %llu; "
                          "take a --full backup", o->uri, (unsigned long long)b->size,
                  (long long)parent.id, (unsigned long long)parent.disk_size);
        return -1;
    }

    struct catalog_point *np = &b->np;
    *np = (struct catalog_point){ .disk_id = disk_id, .parent = b->full ? 0 : parent.id,
                                  .full = b->full, .started = t0, .disk_size = b->size };
    snprintf(np->source_uri, sizeof np->source_uri, "%s", o->source_label ? o->source_label : o->uri);
    snprintf(np->bitmap, sizeof np->bitmap, "%s", o->bitmap ? o->bitmap : "");
    snprintf(np->source_kind, sizeof np->source_kind, "%s", o->source_kind ? o->source_kind : "nbd");
    snprintf(np->vm_uuid, sizeof np->vm_uuid, "%s", o->vm_uuid ? o->vm_uuid : "");
    snprintf(np->checkpoint, sizeof np->checkpoint, "%s", o->checkpoint ? o->checkpoint : "");
    snprintf(np->full_reason, sizeof np->full_reason, "%s",
             b->full && o->full_reason ? o->full_reason : "");
    if ((b->point = catalog_point_begin(cat, np)) < 0)
        return -1;
    np->id = b->point;
    if (!b->full && !(b->pmap = catalog_map_open(cat, np->parent, 0, grid_cells(b->size, b->chunk))))
        return -1;
    return 0;
}

/* The batches, the session, the workers and the plan. */
static int start_pipeline(struct backup *b)
{
    static const struct workq_ops ops = { worker_start, worker_run, worker_end };
    if (!(b->q = workq_new(&ops, b)))
        return -1;
    b->latch = workq_latch(b->q);
    size_t bufsize = b->chunk > BATCH_BYTES ? b->chunk : BATCH_BYTES;
    for (unsigned i = 0; i < NBATCHES; i++) {
        if (!(b->batches[i].buf = malloc(bufsize))) {
            error_set(ENOMEM, "out of memory");
            return -1;
        }
        workq_add_free(b->q, &b->batches[i].q);
    }
    struct session_opts so = { .repo = b->repo, .point = b->point, .full = b->full,
                               .keep_running = b->repo->remote,
                               .level = b->level, .latch = b->latch };
    if (!(b->session = session_open(&so)) || workq_start(b->q, cpus_workers()) < 0)
        return -1;
    struct plan_opts po = { .conn = nbd_pool_conn(b->pool, 0), .uri = b->o->uri, .size = b->size,
                            .chunk = b->chunk, .full = b->full, .have_alloc = b->have_alloc,
                            .bitmap_ctx = b->bitmap_ctx, .parent = b->pmap };
    return (b->plan = plan_open(&po)) ? 0 : -1;
}

/* Plans, reads, and once every read has returned lets the source go (a
 * VM's backup job can end now) while the workers finish. */
static int read_all(struct backup *b, struct agent_backup_result *res)
{
    /* Without a plan nothing was read: the backup must fail, never record
     * an empty point. */
    double t0 = clock_mono_s();
    if (plan_count(b->plan, &b->planned) < 0)
        return -1;
    res->plan_seconds = clock_mono_s() - t0;
    agent_progress_report(&b->progress, 0, b->planned, 1);
    if (plan_and_read(b) < 0)
        return latch_raise(b->latch);
    res->connections = nbd_pool_size(b->pool);
    nbd_pool_close(b->pool);
    b->pool = NULL;
    if (b->o->reads_done)
        b->o->reads_done(b->o->reads_opaque);
    return 0;
}

/* The last pack, the last rows and the point in one transaction. */
static int commit_point(struct backup *b, struct agent_backup_result *res, double t0)
{
    struct session_stats st;
    workq_stop(b->q);
    if (latch_raise(b->latch) < 0)
        return -1;
    session_stats(b->session, &st);
    b->np.finished = clock_wall_s();
    b->np.bytes_planned = b->planned;
    b->np.bytes_read = b->read_bytes;
    b->np.bytes_stored = st.bytes_stored;
    b->np.chunks_new = st.chunks_new;
    b->np.chunks_reused = st.chunks_reused;
    b->np.id = b->point;
    snprintf(b->np.disk, sizeof b->np.disk, "%s", b->o->disk);
    if (session_commit(b->session, &b->np) < 0)
        return -1;
    agent_progress_report(&b->progress, b->read_bytes, b->planned, 1);
    res->point = b->point;
    res->parent = b->np.parent;
    res->full = b->full;
    res->disk_size = b->size;
    res->bytes_planned = b->planned;
    res->bytes_read = b->read_bytes;
    res->bytes_stored = st.bytes_stored;
    res->chunks_new = st.chunks_new;
    res->chunks_reused = st.chunks_reused;
    res->cells_unchanged = st.cells_unchanged;
    res->seconds = clock_wall_s() - t0;
    res->retries = store_retries(b->repo->store) - b->retries0;
    return 0;
}

/* Everything the backup holds, the running point aborted unless done. */
static void backup_end(struct backup *b, bool done)
{
    struct error_saved e;
    error_save(&e);
    if (b->q)
        workq_stop(b->q);
    session_close(b->session);
    if (!done && b->point > 0)
        catalog_point_abort(b->repo->cat, b->point);
    plan_close(b->plan);
    catalog_map_close(b->pmap);
    nbd_pool_close(b->pool);
    workq_free(b->q);
    for (unsigned i = 0; i < NBATCHES; i++) {
        free(b->batches[i].buf);
        free(b->batches[i].fills);
    }
    free(b->bitmap_ctx);
    free(b);
    error_restore(&e);
}

int agent_backup(struct agent_repo *r, const struct agent_backup_opts *o,
                 struct agent_backup_result *res)
{
    struct backup *b = calloc(1, sizeof *b);
    char lockname[300], broken[512] = "";
    double t0 = clock_wall_s();
    int ret = -1;

    memset(res, 0, sizeof *res);
    if (!b) {
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    b->repo = r;
    b->o = o;
    b->retries0 = store_retries(r->store);
    b->chunk = r->chunk_size;
    b->level = o->compress_level ? o->compress_level : AGENT_DEFAULT_COMPRESS_LEVEL;
    b->progress = (struct agent_progress){ o->progress, o->opaque, 0 };
    if (b->level < 1 || b->level > ZSTD_maxCLevel()) {
        error_set(EINVAL, "compression level %d is outside 1..%d", b->level, ZSTD_maxCLevel());
        free(b);
        return -1;
    }
    snprintf(lockname, sizeof lockname, "disk:%s", o->disk);
    if (catalog_lock(r->cat, lockname, broken, sizeof broken) < 0) {
        free(b);
        return -1;
    }
    if (broken[0])
        warn(o, broken);
    struct remote_lock *rl = NULL;
    if (r->remote && agent_bucket_lock(r, false, "backup", o->disk, 0, o->warn, o->opaque, &rl) < 0) {
        struct error_saved e;
        error_save(&e);
        catalog_unlock(r->cat, lockname);
        free(b);
        error_restore(&e);
        return -1;
    }

    if (connect_source(b) == 0 && begin_point(b, t0) == 0 && start_pipeline(b) == 0 &&
        read_all(b, res) == 0 && commit_point(b, res, t0) == 0)
        ret = 0;
    backup_end(b, ret == 0);

    struct error_saved e;
    error_save(&e);
    remote_unlock(rl);
    catalog_unlock(r->cat, lockname);
    error_restore(&e);
    return ret;
}
