/* agent/copy.c: copying restore points from one repository to another
 * (a local one to a bucket, typically).
 *
 * A point is the same in both when its disk and start time are: those
 * the target has are skipped, so that a rerun after an interruption copies
 * only what is missing.  Each point is written through the target's own
 * backup session: its chunks are decoded from the source and put cell by
 * cell, so the target's dedup index stores only chunks it lacks (a chunk's
 * id is the SHA-256 of its plaintext in both), in the target's packs, with
 * the target's locks and, for a bucket, its manifest.  A point whose
 * parent the target has is copied as an incremental of it (its own runs);
 * otherwise as a full point (its resolved map).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/grid.h"
#include "agent/internal.h"
#include "agent/pack.h"
#include "agent/remote.h"
#include "agent/session.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/latch.h"
#include "common/vec.h"

struct copy {
    struct agent_repo *src, *dst;
    const struct agent_copy_opts *o;
    struct agent_copy_result *res;
    struct pack_reader *reader;
    uint8_t *buf;
    struct session *session;
    struct session_worker *worker;
    struct latch latch;
    uint64_t size;
};

struct scan_ctx {
    double started;
    int64_t id;
};

static int scan_one(void *opaque, const struct catalog_point *x)
{
    struct scan_ctx *c = opaque;
    if (fabs(x->started - c->started) < 1e-6)
        c->id = x->id;
    return 0;
}

/* The target's point with p's disk and start time: its id, 0 none, -1. */
static int64_t find_in_target(struct agent_repo *dst, const struct catalog_point *p, int64_t disk_id)
{
    struct catalog_point q;
    int r = catalog_point_latest(dst->cat, disk_id, &q);

    /* Copies arrive oldest first: the newest is the usual match. */
    if (r < 0)
        return -1;
    if (r == 1 && fabs(q.started - p->started) < 1e-6)
        return q.id;
    struct scan_ctx c = { p->started, 0 };
    if (catalog_point_list(dst->cat, p->disk, scan_one, &c) < 0)
        return -1;
    return c.id;
}

/* One run of the source's map into the session, cell by cell. */
static int put_run(struct copy *c, const struct catalog_run *run)
{
    if (run->chunk_id == 0) {
        for (uint64_t k = 0; k < run->count; k++)
            if (session_put_zero(c->session, run->first_cell + k, 0) < 0)
                return -1;
        return 0;
    }
    struct catalog_chunk ch;
    if (catalog_chunk_get(c->src->cat, run->chunk_id, &ch) != 1 ||
        agent_chunk_read(c->reader, &ch, c->buf) < 0) {
        error_prefix("read chunk %lld: ", (long long)run->chunk_id);
        return -1;
    }
    for (uint64_t k = 0; k < run->count; k++) {
        uint64_t cell = run->first_cell + k;
        uint64_t len = grid_cell_len(c->size, c->src->chunk_size, cell);
        if (len != ch.plain_len) {
            error_set(EINVAL, "chunk %lld holds %u bytes, cell %llu %llu", (long long)ch.id,
                      ch.plain_len, (unsigned long long)cell, (unsigned long long)len);
            return -1;
        }
        if (session_put(c->worker, cell, c->buf, len, 0) < 0)
            return -1;
        c->res->bytes_read += len;
    }
    return 0;
}

static int own_run(void *opaque, const struct catalog_run *run, const struct catalog_chunk *ch)
{
    return put_run(opaque, run);
}

/* The cells of source point p: its own runs, or its whole map. */
static int put_cells(struct copy *c, const struct catalog_point *p, bool own)
{
    if (own)
        return catalog_point_own(c->src->cat, p->id, own_run, c);
    uint64_t ncells = grid_cells(p->disk_size, c->src->chunk_size);
    struct catalog_map *map = catalog_map_open(c->src->cat, p->id, 0, ncells);
    struct catalog_run run;
    int m;

    if (!map)
        return -1;
    while ((m = catalog_map_next(map, &run)) > 0)
        if (run.depth > 0 && put_run(c, &run) < 0) {
            m = -1;
            break;
        }
    catalog_map_close(map);
    return m;
}

/* Copies one point; parent: the target's id of its parent, 0 none. */
static int copy_point(struct copy *c, const struct catalog_point *p, int64_t disk_id, int64_t parent,
                      int64_t *out)
{
    struct catalog_point np = *p;
    int ret = -1;

    np.id = 0;
    np.disk_id = disk_id;
    np.parent = parent;
    np.full = parent == 0;
    if (!np.full)
        np.full_reason[0] = 0;
    else if (!p->full)
        snprintf(np.full_reason, sizeof np.full_reason, "copied without its parent");
    c->size = p->disk_size;
    latch_init(&c->latch);
    if ((np.id = catalog_point_begin(c->dst->cat, &np)) < 0)
        return -1;
    struct session_opts so = { .repo = c->dst, .point = np.id, .full = true,
                               .keep_running = c->dst->remote, .latch = &c->latch,
                               .level = c->o->compress_level ? c->o->compress_level
                                                             : AGENT_DEFAULT_COMPRESS_LEVEL };
    if (!(c->session = session_open(&so)) ||
        !(c->worker = session_worker_open(c->session, c->dst->chunk_size)))
        goto out;
    if (put_cells(c, p, parent != 0) < 0) {
        latch_set_error(&c->latch);
        goto out;
    }
    struct session_stats st;
    session_stats(c->session, &st);
    np.bytes_stored = st.bytes_stored;
    np.chunks_new = st.chunks_new;
    np.chunks_reused = st.chunks_reused;
    session_worker_close(c->worker);
    c->worker = NULL;
    if (session_commit(c->session, &np) < 0)
        goto out;
    c->res->bytes_stored += st.bytes_stored;
    c->res->chunks_new += st.chunks_new;
    c->res->chunks_reused += st.chunks_reused;
    *out = np.id;
    ret = 0;
out:;
    struct error_saved e;
    error_save(&e);
    session_worker_close(c->worker);
    c->worker = NULL;
    session_close(c->session);
    c->session = NULL;
    if (ret < 0)
        catalog_point_abort(c->dst->cat, np.id);
    latch_destroy(&c->latch);
    error_restore(&e);
    return ret;
}

struct plist {
    struct catalog_point *p;
    size_t n, cap;
};

static int collect(void *opaque, const struct catalog_point *p)
{
    struct plist *l = opaque;
    if (VEC_RESERVE(l->p, l->n, l->cap, 64) < 0)
        return -1;
    l->p[l->n++] = *p;
    return 0;
}

/* The points of one disk, oldest first, each copied unless the target has
 * it; src ids map to target ids through map[] for the parents. */
static int copy_disk(struct copy *c, const char *disk)
{
    struct plist l = { 0 };
    int64_t *map = NULL, disk_id;
    char lockname[300], broken[512] = "";
    struct remote_lock *rl = NULL;
    int ret = -1;

    if (catalog_point_list(c->src->cat, disk, collect, &l) < 0)
        goto out;
    if (!(map = calloc(l.n ? l.n : 1, sizeof *map))) {
        error_set(ENOMEM, "out of memory");
        goto out;
    }
    int f = catalog_disk_find(c->dst->cat, disk, &disk_id);
    if (f < 0 || (f == 0 && (disk_id = catalog_disk_add(c->dst->cat, disk)) < 0))
        goto out;
    snprintf(lockname, sizeof lockname, "disk:%s", disk);
    if (catalog_lock(c->dst->cat, lockname, broken, sizeof broken) < 0)
        goto out;
    if (broken[0])
        agent_notify(c->o->warn, c->o->opaque, "%s", broken);
    if (c->dst->remote && agent_bucket_lock(c->dst, false, "copy", disk, 0, c->o->warn, c->o->opaque, &rl) < 0)
        goto unlock;
    for (size_t i = 0; i < l.n; i++) {
        struct catalog_point *p = &l.p[i];
        if (c->o->point && p->id != c->o->point)
            continue;
        if ((map[i] = find_in_target(c->dst, p, disk_id)) < 0)
            goto unlock;
        if (map[i]) {
            c->res->skipped++;
            continue;
        }
        int64_t parent = 0;
        for (size_t k = 0; k < i && p->parent; k++)
            if (l.p[k].id == p->parent)
                parent = map[k];
        if (copy_point(c, p, disk_id, parent, &map[i]) < 0) {
            error_prefix("point %lld of %s: ", (long long)p->id, disk);
            goto unlock;
        }
        c->res->copied++;
        agent_notify(c->o->warn, c->o->opaque, "copied point %lld of %s as point %lld",
                     (long long)p->id, disk, (long long)map[i]);
    }
    ret = 0;
unlock:;
    struct error_saved e;
    error_save(&e);
    remote_unlock(rl);
    catalog_unlock(c->dst->cat, lockname);
    error_restore(&e);
out:
    free(l.p);
    free(map);
    return ret;
}

struct dlist {
    char (*name)[256];
    size_t n, cap;
};

static int add_disk(struct dlist *d, const char *name)
{
    for (size_t i = 0; i < d->n; i++)
        if (!strcmp(d->name[i], name))
            return 0;
    if (VEC_RESERVE(d->name, d->n, d->cap, 16) < 0)
        return -1;
    snprintf(d->name[d->n++], sizeof *d->name, "%s", name);
    return 0;
}

static int collect_disk(void *opaque, const struct catalog_point *p)
{
    return add_disk(opaque, p->disk);
}

int agent_copy(struct agent_repo *src, const struct agent_copy_opts *o, struct agent_copy_result *res)
{
    struct copy c = { .src = src, .o = o, .res = res };
    struct dlist d = { 0 };
    double t0 = clock_wall_s();
    int ret = -1;

    memset(res, 0, sizeof *res);
    /* The target may have a key of its own. */
    struct agent_key_source saved = *agent_key_source();
    if (o->to_keys)
        agent_set_key_source(o->to_keys);
    c.dst = agent_repo_open(o->to, false);
    agent_set_key_source(&saved);
    if (!c.dst) {
        error_prefix("target: ");
        return -1;
    }
    if (c.dst->chunk_size != src->chunk_size) {
        error_set(EINVAL, "the target's chunk size (%u) is not the source's (%u)", c.dst->chunk_size,
                  src->chunk_size);
        goto out;
    }
    if (!(c.reader = pack_reader_open(src->store, src->keys)) || !(c.buf = malloc(src->chunk_size))) {
        if (c.reader)
            error_set(ENOMEM, "out of memory");
        goto out;
    }
    if (o->disk) {
        int64_t id;
        if (agent_disk_id(src, o->disk, &id) < 0 || add_disk(&d, o->disk) < 0)
            goto out;
    } else if (catalog_point_list(src->cat, NULL, collect_disk, &d) < 0) {
        goto out;
    }
    ret = 0;
    for (size_t i = 0; i < d.n && ret == 0; i++)
        ret = copy_disk(&c, d.name[i]);
    res->seconds = clock_wall_s() - t0;
out:;
    struct error_saved e;
    error_save(&e);
    pack_reader_close(c.reader);
    free(c.buf);
    free(d.name);
    agent_repo_close(c.dst);
    error_restore(&e);
    return ret;
}
