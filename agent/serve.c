/* serve.c: restore points as read-only NBD exports.
 *
 * Every complete point is an export named "<disk>@<point>", and "<disk>" is
 * the newest point of that disk.  Each export offers:
 *   base:allocation                  zero cells are hole+zero
 *   qemu:allocation-depth            1 = written by this point, 2 = by its
 *                                    parent, ...; 0 = never written
 *   qemu:dirty-bitmap:since-<P>      for each earlier point P of the disk:
 *                                    the cells whose content differs from P's
 * so a second nbdvault can back up from this one incrementally.
 *
 * Each connection has its own catalog handle and pack reader; maps are
 * resolved a window of cells at a time inside one read snapshot; chunks are
 * checked against their ids and kept in a bounded cache shared by every
 * connection (chunk ids are never reused, so a cached chunk is always
 * right).  A point pruned while served fails its reads: never wrong bytes.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/grid.h"
#include "agent/internal.h"
#include "agent/remote.h"
#include "agent/pack.h"
#include "common/error.h"
#include "common/vec.h"
#include "nbdcore/nbdcore.h"

#define WINDOW_CELLS 2048
#define DEFAULT_CACHE (64u * 1024 * 1024)

/* ---- The shared chunk cache (direct-mapped) -------------------------------- */

struct cache_slot {
    int64_t id;
    uint32_t len;
    uint8_t *data;
};

#define CACHE_STRIPES 64

struct chunk_cache {
    pthread_mutex_t lock[CACHE_STRIPES];    /* slot i is guarded by lock[i % STRIPES] */
    size_t n;
    uint32_t chunk;
    struct cache_slot *slots;
};

static bool cache_get(struct chunk_cache *cc, int64_t id, uint8_t *out, uint32_t len)
{
    bool hit = false;
    if (!cc->n)
        return false;
    size_t i = (uint64_t)id % cc->n;
    pthread_mutex_lock(&cc->lock[i % CACHE_STRIPES]);
    struct cache_slot *s = &cc->slots[i];
    if (s->id == id && s->len == len && s->data) {
        memcpy(out, s->data, len);
        hit = true;
    }
    pthread_mutex_unlock(&cc->lock[i % CACHE_STRIPES]);
    return hit;
}

static void cache_put(struct chunk_cache *cc, int64_t id, const uint8_t *data, uint32_t len)
{
    if (!cc->n)
        return;
    size_t i = (uint64_t)id % cc->n;
    pthread_mutex_lock(&cc->lock[i % CACHE_STRIPES]);
    struct cache_slot *s = &cc->slots[i];
    if (!s->data)
        s->data = malloc(cc->chunk);
    if (s->data) {
        memcpy(s->data, data, len);
        s->id = id;
        s->len = len;
    }
    pthread_mutex_unlock(&cc->lock[i % CACHE_STRIPES]);
}

/* ---- One served export (one per connection) ------------------------------- */

struct map_window {
    int64_t point;
    uint64_t first, end;          /* cells */
    struct catalog_run *runs;
    size_t n, cap;
};

struct served {
    struct serve_ctx *sc;
    struct catalog *cat;
    struct pack_reader *reader;
    int64_t point;
    uint64_t size, ncells;
    uint32_t chunk;
    unsigned base_depth;          /* depth of the chain's full point */
    char **names;                 /* context names */
    int64_t *since;               /* since[i] for context i >= 2 */
    size_t ncontexts;
    char desc[300];
    struct map_window w_self, w_other;
    uint8_t *tmp;
};

struct serve_ctx {
    struct agent_repo *repo;
    struct chunk_cache cache;
    struct nbd_server *srv;
};

static void served_free(struct served *sp)
{
    if (!sp)
        return;
    catalog_close(sp->cat);
    pack_reader_close(sp->reader);
    for (size_t i = 0; i < sp->ncontexts; i++)
        free(sp->names[i]);
    free(sp->names);
    free(sp->since);
    free(sp->w_self.runs);
    free(sp->w_other.runs);
    free(sp->tmp);
    free(sp);
}

static void served_close(void *handle)
{
    served_free(handle);
}

/* The window of cells holding cell, resolved in one snapshot. */
static int window_load(struct served *sp, struct map_window *w, int64_t point, uint64_t cell)
{
    struct catalog_point pt;
    struct catalog_run run;
    int r, ret = -1;

    w->point = 0;
    w->n = 0;
    w->first = cell - cell % WINDOW_CELLS;
    w->end = w->first + WINDOW_CELLS;
    if (catalog_snapshot_begin(sp->cat) < 0)
        return -1;
    if ((r = catalog_point_get(sp->cat, point, &pt)) <= 0 || !pt.complete) {
        if (r == 0 || (r > 0 && !pt.complete))
            error_set(EIO, "restore point %lld is gone (pruned while served)", (long long)point);
        goto out;
    }
    struct catalog_map *m = catalog_map_open(sp->cat, point, w->first, w->end);
    if (!m)
        goto out;
    while ((r = catalog_map_next(m, &run)) > 0) {
        if (VEC_RESERVE(w->runs, w->n, w->cap, 64) < 0) {
            r = -1;
            break;
        }
        w->runs[w->n++] = run;
    }
    catalog_map_close(m);
    if (r < 0)
        goto out;
    w->point = point;
    ret = 0;
out:
    catalog_snapshot_end(sp->cat);
    return ret;
}

/* The run of point covering cell (zero with depth 0 where nothing does). */
static int run_at(struct served *sp, struct map_window *w, int64_t point, uint64_t cell,
                  struct catalog_run *out)
{
    if (w->point != point || cell < w->first || cell >= w->end)
        if (window_load(sp, w, point, cell) < 0)
            return -1;
    size_t lo = 0, hi = w->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (w->runs[mid].first_cell + w->runs[mid].count <= cell)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < w->n && w->runs[lo].first_cell <= cell) {
        *out = w->runs[lo];
    } else {
        uint64_t next = lo < w->n ? w->runs[lo].first_cell : w->end;
        *out = (struct catalog_run){ cell, next - cell, 0, 0 };
    }
    /* Never past the window. */
    if (out->first_cell + out->count > w->end)
        out->count = w->end - out->first_cell;
    return 0;
}

/* The plaintext of a chunk into out (sp->tmp or the caller's buffer).
 * Chunks read whole (a streaming copy) are not cached: what is cached is
 * what small reads (a VM booting from the point) come back to. */
static int load_chunk(struct served *sp, int64_t id, uint32_t len, uint8_t *out, bool keep)
{
    struct catalog_chunk ch;

    if (cache_get(&sp->sc->cache, id, out, len))
        return 0;
    /* 0: no such chunk (gc removed it after its point was pruned while
     * served); ch is then not filled, and must not be read. */
    int f = catalog_chunk_get(sp->cat, id, &ch);
    if (f <= 0) {
        if (f == 0)
            error_set(EIO, "chunk %lld is gone (its point was pruned while served)", (long long)id);
        return -1;
    }
    if (ch.plain_len != len) {
        error_set(EIO, "chunk %lld holds %u bytes where the cell has %u", (long long)id,
                  ch.plain_len, len);
        return -1;
    }
    if (agent_chunk_read(sp->reader, &ch, out) < 0)
        return -1;
    if (keep)
        cache_put(&sp->sc->cache, id, out, len);
    return 0;
}

static int served_read(void *handle, void *buf, uint64_t count, uint64_t offset)
{
    struct served *sp = handle;
    uint64_t pos = offset, end = offset + count;
    bool zero = true;

    while (pos < end) {
        uint64_t cell = grid_cell_of(sp->chunk, pos), cs = grid_cell_start(sp->chunk, cell);
        uint64_t clen = grid_cell_len(sp->size, sp->chunk, cell);
        uint64_t in = pos - cs, n = end - pos < clen - in ? end - pos : clen - in;
        struct catalog_run run;
        if (run_at(sp, &sp->w_self, sp->point, cell, &run) < 0)
            goto fail;
        if (run.chunk_id == 0) {
            memset((uint8_t *)buf + (pos - offset), 0, n);
        } else {
            uint8_t *dst = (uint8_t *)buf + (pos - offset);
            if (in == 0 && n == clen) {
                if (load_chunk(sp, run.chunk_id, (uint32_t)clen, dst, false) < 0)
                    goto fail;
            } else {
                if (load_chunk(sp, run.chunk_id, (uint32_t)clen, sp->tmp, true) < 0)
                    goto fail;
                memcpy(dst, sp->tmp + in, n);
            }
            zero = false;
        }
        pos += n;
    }
    return zero ? 1 : 0;
fail:
    return -EIO;
}

static int served_block_status(void *handle, size_t ctx, uint64_t offset, uint64_t length,
                               struct nbd_extent *out, size_t max)
{
    struct served *sp = handle;
    uint64_t pos = offset, end = offset + length;
    size_t n = 0;

    while (pos < end && n < max) {
        uint64_t cell = grid_cell_of(sp->chunk, pos);
        struct catalog_run a, b;
        if (run_at(sp, &sp->w_self, sp->point, cell, &a) < 0)
            return n ? (int)n : -EIO;
        uint64_t seg_end = a.first_cell + a.count;
        uint64_t flags;
        if (ctx == 0) {
            flags = a.chunk_id ? 0 : NBD_STATE_HOLE | NBD_STATE_ZERO;
        } else if (ctx == 1) {
            flags = (a.chunk_id == 0 && (a.depth == 0 || a.depth >= sp->base_depth)) ? 0 : a.depth;
        } else {
            if (run_at(sp, &sp->w_other, sp->since[ctx], cell, &b) < 0)
                return n ? (int)n : -EIO;
            if (b.first_cell + b.count < seg_end)
                seg_end = b.first_cell + b.count;
            flags = a.chunk_id != b.chunk_id ? NBD_STATE_DIRTY : 0;
        }
        uint64_t bend = seg_end < sp->ncells ? grid_cell_start(sp->chunk, seg_end) : sp->size;
        if (n && out[n - 1].flags == flags)
            out[n - 1].length += bend - pos;
        else
            out[n++] = (struct nbd_extent){ bend - pos, flags };
        pos = bend;
    }
    return (int)n;
}

/* ---- Exports by name --------------------------------------------------------- */

struct since_list {
    int64_t point;
    int64_t *ids;
    size_t n, cap;
};

static int add_since(void *opaque, const struct catalog_point *p)
{
    struct since_list *l = opaque;
    if (p->id >= l->point)
        return 0;
    if (VEC_RESERVE(l->ids, l->n, l->cap, 16) < 0)
        return -1;
    l->ids[l->n++] = p->id;
    return 0;
}

static int serve_open(void *opaque, const char *name, struct nbd_server_export *e)
{
    struct serve_ctx *sc = opaque;
    struct agent_repo *r = sc->repo;
    struct served *sp = calloc(1, sizeof *sp);
    char disk[256];
    int64_t point = 0, disk_id;
    struct catalog_point pt;
    struct since_list sl = { 0 };

    if (!sp) {
        errno = ENOMEM;
        return -1;
    }
    sp->sc = sc;
    const char *at = strrchr(name, '@');
    size_t dl = at ? (size_t)(at - name) : strlen(name);
    if (dl == 0 || dl >= sizeof disk)
        goto noent;
    memcpy(disk, name, dl);
    disk[dl] = 0;
    if (at) {
        char *endp;
        point = strtoll(at + 1, &endp, 10);
        if (*endp || point <= 0)
            goto noent;
    }
    if (!(sp->cat = catalog_open(r->catalog_path)) || !(sp->reader = pack_reader_open(r->store, r->keys)))
        goto fail;
    /* Served reads are checked by the CRC of the stored bytes and zstd's
     * framing; the SHA-256 of every chunk would cost a third of the time. */
    pack_reader_check_ids(sp->reader, false);
    int f = catalog_disk_find(sp->cat, disk, &disk_id);
    if (f <= 0)
        goto noent;
    f = point ? catalog_point_get(sp->cat, point, &pt) : catalog_point_latest(sp->cat, disk_id, &pt);
    if (f <= 0 || !pt.complete || pt.disk_id != disk_id)
        goto noent;
    sp->point = pt.id;
    sp->size = pt.disk_size;
    sp->chunk = r->chunk_size;
    sp->ncells = grid_cells(sp->size, sp->chunk);
    /* The chain's length: depth of its full point. */
    struct catalog_point q = pt;
    sp->base_depth = 1;
    while (q.parent && catalog_point_get(sp->cat, q.parent, &q) > 0)
        sp->base_depth++;
    /* Contexts: allocation, depth, and one bitmap per earlier point. */
    sl.point = pt.id;
    if (catalog_point_list(sp->cat, disk, add_since, &sl) < 0)
        goto fail;
    sp->ncontexts = 2 + sl.n;
    sp->names = calloc(sp->ncontexts, sizeof *sp->names);
    sp->since = calloc(sp->ncontexts, sizeof *sp->since);
    if (!sp->names || !sp->since || !(sp->tmp = malloc(sp->chunk)))
        goto fail;
    sp->names[0] = strdup(NBD_CONTEXT_BASE_ALLOCATION);
    sp->names[1] = strdup(NBD_CONTEXT_QEMU_ALLOCATION_DEPTH);
    for (size_t i = 0; i < sl.n; i++) {
        if (asprintf(&sp->names[2 + i], "%ssince-%lld", NBD_CONTEXT_QEMU_DIRTY_BITMAP_PREFIX,
                     (long long)sl.ids[i]) < 0)
            sp->names[2 + i] = NULL;
        sp->since[2 + i] = sl.ids[i];
    }
    for (size_t i = 0; i < sp->ncontexts; i++)
        if (!sp->names[i])
            goto fail;
    free(sl.ids);
    snprintf(sp->desc, sizeof sp->desc, "%s point %lld (%s)", disk, (long long)pt.id,
             pt.full ? "full" : "incremental");
    *e = (struct nbd_server_export){
        .handle = sp,
        .size = sp->size,
        .flags = NBD_FLAG_READ_ONLY | NBD_FLAG_CAN_MULTI_CONN,
        .description = sp->desc,
        .ncontexts = sp->ncontexts,
        .contexts = (const char *const *)sp->names,
        .read = served_read,
        .block_status = served_block_status,
        .close = served_close,
    };
    return 0;
noent:
    free(sl.ids);
    served_free(sp);
    errno = ENOENT;
    return -1;
fail:
    free(sl.ids);
    served_free(sp);
    errno = EIO;
    return -1;
}

struct export_list_ctx {
    int (*fn)(void *, const char *, const char *);
    void *fnopaque;
    char **seen;                  /* disks already listed */
    size_t nseen;
};

static int list_point(void *opaque, const struct catalog_point *p)
{
    struct export_list_ctx *l = opaque;
    char name[300], desc[300];
    snprintf(name, sizeof name, "%s@%lld", p->disk, (long long)p->id);
    snprintf(desc, sizeof desc, "%s point %lld (%s)", p->disk, (long long)p->id,
             p->full ? "full" : "incremental");
    return l->fn(l->fnopaque, name, desc);
}

static int list_disk_newest(void *opaque, const struct catalog_point *p)
{
    struct export_list_ctx *l = opaque;
    for (size_t i = 0; i < l->nseen; i++)
        if (!strcmp(l->seen[i], p->disk))
            return 0;
    char **ns = realloc(l->seen, (l->nseen + 1) * sizeof *ns);
    if (!ns || !(ns[l->nseen] = strdup(p->disk))) {
        if (ns)
            l->seen = ns;
        return -1;
    }
    l->seen = ns;
    l->nseen++;
    {
        char desc[300];
        snprintf(desc, sizeof desc, "%s, newest point", p->disk);
        if (l->fn(l->fnopaque, p->disk, desc) < 0)
            return -1;
    }
    return 0;
}

static int serve_list(void *opaque, int (*fn)(void *, const char *, const char *), void *fnopaque)
{
    struct serve_ctx *sc = opaque;
    struct export_list_ctx l = { .fn = fn, .fnopaque = fnopaque };
    /* A handle of its own: this runs on a connection's thread. */
    struct catalog *cat = catalog_open(sc->repo->catalog_path);
    int r = -1;
    if (cat && catalog_point_list(cat, NULL, list_disk_newest, &l) == 0)
        r = catalog_point_list(cat, NULL, list_point, &l);
    catalog_close(cat);
    for (size_t i = 0; i < l.nseen; i++)
        free(l.seen[i]);
    free(l.seen);
    return r;
}

/* ---- The server ------------------------------------------------------------------ */

static struct nbd_server *volatile running;
static volatile sig_atomic_t stop_requested;

void agent_serve_stop(void)
{
    struct nbd_server *s = running;

    stop_requested = 1;
    if (s)
        nbd_server_stop(s);
}

int agent_serve(struct agent_repo *r, const struct agent_serve_opts *o)
{
    struct serve_ctx sc = { .repo = r };
    size_t cache = o->cache_bytes ? o->cache_bytes : DEFAULT_CACHE;
    struct remote_lock *rl = NULL;
    int ret = -1;

    /* In a bucket: a shared lock for as long as points are served, so that
     * no host's gc deletes a pack a client may still read. */
    if (r->remote && agent_bucket_lock(r, false, "serve", NULL, 0, NULL, NULL, &rl) < 0)
        return -1;

    for (int i = 0; i < CACHE_STRIPES; i++)
        pthread_mutex_init(&sc.cache.lock[i], NULL);
    sc.cache.chunk = r->chunk_size;
    sc.cache.n = cache / r->chunk_size;
    if (sc.cache.n < 4)
        sc.cache.n = 4;
    sc.cache.slots = calloc(sc.cache.n, sizeof *sc.cache.slots);
    if (!sc.cache.slots) {
        error_set(ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < sc.cache.n; i++)
        sc.cache.slots[i].id = -1;

    struct nbd_server_opts so = {
        .socket_path = o->socket_path,
        .listen = o->listen,
        .tls_certificates = o->tls_certificates,
        .tls_psk_file = o->tls_psk_file,
        .tls_verify_peer = o->tls_verify_peer,
        .max_connections = o->max_connections,
        .idle_timeout_ms = o->idle_timeout_ms,
    };
    struct nbd_server_callbacks cb = { .opaque = &sc, .open = serve_open, .list = serve_list };
    /* The repository is read through a handle per connection: the catalog
     * handle of the caller is not used from other threads. */
    sc.srv = nbd_server_new(&so, &cb);
    if (!sc.srv)
        goto out;
    running = sc.srv;
    if (stop_requested)            /* a signal came before the server stood */
        nbd_server_stop(sc.srv);
    if (o->ready)
        o->ready(o->opaque);
    ret = nbd_server_run(sc.srv);
    running = NULL;
out:
    nbd_server_free(sc.srv);
    for (size_t i = 0; sc.cache.slots && i < sc.cache.n; i++)
        free(sc.cache.slots[i].data);
    free(sc.cache.slots);
    for (int i = 0; i < CACHE_STRIPES; i++)
        pthread_mutex_destroy(&sc.cache.lock[i]);
    struct error_saved e;
    error_save(&e);
    remote_unlock(rl);
    error_restore(&e);
    return ret;
}
