/* maintain.c: verify, prune and gc: keeping a repository honest and small. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zstd.h>

#include "agent/internal.h"
#include "agent/pack.h"
#include "agent/remote.h"
#include "common/error.h"
#include "crypt/crypt.h"
#include "store/store.h"
#include "common/vec.h"

/* Points removed per prune transaction. */
#define PRUNE_BATCH 256

/* ---- A small set of ids ------------------------------------------------- */

struct idset {
    int64_t *v;
    size_t n, cap;
};

static bool idset_has(const struct idset *s, int64_t id)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i] == id)
            return true;
    return false;
}

static int idset_add(struct idset *s, int64_t id)
{
    if (idset_has(s, id))
        return 0;
    if (VEC_RESERVE(s->v, s->n, s->cap, 16) < 0)
        return -1;
    s->v[s->n++] = id;
    return 0;
}

static int idset_cb(void *opaque, int64_t id)
{
    return idset_add(opaque, id);
}

/* ---- verify ------------------------------------------------------------- */

struct verify {
    struct agent_repo *r;
    const struct agent_verify_opts *o;
    struct agent_verify_result *res;
    struct pack_reader *reader;
    uint8_t *buf;
    struct idset selected, packs_seen, affected;
    struct pack_entry *index;     /* the trailer of the pack checked last */
    size_t nindex;
    int64_t index_pack;
    bool index_bad;
    struct agent_progress progress;
    int pct;                      /* packs read, percent */
};

#define damage(v, ...) agent_notify((v)->o->damage, (v)->o->opaque, __VA_ARGS__)

/* Whether a pack's data is read: a fixed subset of pct percent by name. */
static bool pack_read(const struct verify *v, const char *name)
{
    uint32_t h = 2166136261u;
    if (v->pct >= 100)
        return true;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 16777619u;
    return (int)(h % 100) < v->pct;
}

/* A pack whose data is not read: its trailer, read from the back, and its
 * size against the catalog's; the chunks that follow compare their rows
 * with its records (index_entry). */
static int load_index(struct verify *v, int64_t pack_id, const char *name)
{
    uint64_t want, have = UINT64_MAX;

    free(v->index);
    v->index = NULL;
    v->nindex = 0;
    v->index_pack = pack_id;
    v->index_bad = false;
    if (catalog_pack_size(v->r->cat, pack_id, &want) < 0)
        return -1;
    int ri = pack_read_index(v->r->store, name, &have, &v->index, &v->nindex);
    if (ri < 0 && (have == UINT64_MAX || have == want)) {
        v->index_bad = true;
        v->res->damaged_packs++;
        damage(v, "%s", error_msg());
    } else if (have != want) {       /* the clearer word on a cut or grown pack */
        v->index_bad = true;
        v->res->damaged_packs++;
        damage(v, "pack %s: %llu bytes in the store, %llu recorded", name,
               (unsigned long long)have, (unsigned long long)want);
    }
    return 0;
}

static int check_index(struct verify *v, int64_t pack_id, const char *name)
{
    v->res->packs_index_only++;
    return load_index(v, pack_id, name);
}

static int by_offset(const void *key, const void *elem)
{
    uint64_t off = *(const uint64_t *)key, e = ((const struct pack_entry *)elem)->offset;
    return off < e ? -1 : off > e;
}

/* Whether the index of a pack not read holds the record a catalog row
 * says it does. */
static bool index_agrees(const struct verify *v, const struct catalog_chunk *ch)
{
    struct pack_entry want = { .codec = ch->codec, .stored_len = ch->stored_len,
                               .plain_len = ch->plain_len, .crc = ch->crc, .offset = ch->offset };
    const struct pack_entry *e = v->nindex ? bsearch(&ch->offset, v->index, v->nindex, sizeof *v->index,
                                                     by_offset) : NULL;

    memcpy(want.hash, ch->hash, PACK_HASH_LEN);
    return e && pack_entry_equal(e, &want);
}

static int select_point(void *opaque, const struct agent_point *p)
{
    struct verify *v = opaque;
    if (v->o->point && p->id != v->o->point)
        return 0;
    return idset_add(&v->selected, p->id);
}

static int scan_pack_once(struct verify *v, int64_t pack_id, const char *name)
{
    if (idset_has(&v->packs_seen, pack_id))
        return 0;
    if (idset_add(&v->packs_seen, pack_id) < 0)
        return -1;
    v->res->packs++;
    if (!pack_read(v, name))
        return check_index(v, pack_id, name);
    if (pack_scan(v->r->store, name, false, NULL, NULL) < 0) {
        v->res->damaged_packs++;
        damage(v, "%s", error_msg());
    }
    return 0;
}

/* Adds the points that use a damaged chunk to the report; msg (NULL: the
 * pack's own damage was reported) names the damage. */
static int chunk_damaged(struct verify *v, const struct catalog_chunk *ch, const char *msg)
{
    char list[512] = "";
    struct idset pts = { 0 };
    size_t used = 0;
    int ret = -1;

    if (msg)
        v->res->damaged_chunks++;
    if (catalog_points_using_chunk(v->r->cat, ch->id, idset_cb, &pts) < 0)
        goto out;
    for (size_t i = 0; i < pts.n; i++) {
        if (used + 24 < sizeof list)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%lld", i ? ", " : "",
                                     (long long)pts.v[i]);
        if (idset_add(&v->affected, pts.v[i]) < 0)
            goto out;
    }
    if (msg)
        damage(v, "%s; affects point%s %s", msg, pts.n == 1 ? "" : "s", pts.n ? list : "(none)");
    ret = 0;
out:
    free(pts.v);
    return ret;
}

static int verify_chunk(void *opaque, const struct catalog_chunk *ch)
{
    struct verify *v = opaque;
    char msg[1024];

    if (scan_pack_once(v, ch->pack_id, ch->pack) < 0)
        return -1;
    if (!pack_read(v, ch->pack)) {
        if (v->index_pack != ch->pack_id && load_index(v, ch->pack_id, ch->pack) < 0)
            return -1;
        if (v->index_bad)
            return chunk_damaged(v, ch, NULL);
        if (index_agrees(v, ch))
            return 0;
        snprintf(msg, sizeof msg, "pack %s: the index has no entry at offset %llu as the catalog "
                 "records it", ch->pack, (unsigned long long)ch->offset);
        return chunk_damaged(v, ch, msg);
    }
    if (v->r->encrypted && !v->r->keys)
        return 0;                 /* no key: the pack's walk checked its CRCs */
    v->res->chunks++;
    v->res->bytes += ch->plain_len;
    if (agent_chunk_read(v->reader, ch, v->buf) < 0) {
        snprintf(msg, sizeof msg, "%s", error_msg());
        if (chunk_damaged(v, ch, msg) < 0)
            return -1;
    }
    agent_progress_report(&v->progress, v->res->bytes, 0, 0);
    return 0;
}

static int scan_all_packs(void *opaque, const struct catalog_pack *p)
{
    return scan_pack_once(opaque, p->id, p->name);
}

int agent_verify(struct agent_repo *r, const struct agent_verify_opts *o,
                 struct agent_verify_result *res)
{
    struct verify v = { .r = r, .o = o, .res = res };
    char *report = NULL;
    int ret = -1;

    memset(res, 0, sizeof *res);
    /* gc would make a chunk it moves look lost.  A lock that cannot be
     * written (a damaged catalog, read-only credentials) does not stop the
     * check. */
    struct agent_read_lock lk;
    if (agent_read_lock(r, "verify", o->disk, o->warn, o->opaque, &lk) < 0) {
        if (error_errno() == EBUSY)
            return -1;
        agent_notify(o->warn, o->opaque, "verifying without a lock against gc: %s", error_msg());
    }
    v.progress = (struct agent_progress){ o->progress, o->opaque, 0 };
    v.pct = o->read_data_pct < 0 ? (r->remote ? 0 : 100) : o->read_data_pct;
    res->no_key = r->encrypted && !r->keys;

    int ic = catalog_integrity_check(r->cat, &report);
    if (ic < 0)
        goto out;
    res->catalog_ok = ic == 0;
    if (ic > 0) {
        damage(&v, "catalog: SQLite integrity check: %s", report ? report : "failed");
        free(report);
    }
    if (agent_list(r, o->disk, select_point, &v) < 0)
        goto out;
    res->points = v.selected.n;
    if (o->point && !v.selected.n) {
        error_set(ENOENT, "no restore point %lld%s%s", (long long)o->point,
                  o->disk ? " of disk " : "", o->disk ? o->disk : "");
        goto out;
    }
    if (!(v.reader = pack_reader_open(r->store, r->keys)) || !(v.buf = malloc(r->chunk_size)))
        goto out;
    if (v.selected.n &&
        catalog_chunks_referenced(r->cat, v.selected.v, v.selected.n, verify_chunk, &v) < 0)
        goto out;
    /* Verifying the whole repository also checks the packs no point uses. */
    if (!o->disk && !o->point && catalog_pack_list(r->cat, scan_all_packs, &v) < 0)
        goto out;
    agent_progress_report(&v.progress, res->bytes, res->bytes, 1);
    res->affected = v.affected.v;
    res->naffected = v.affected.n;
    v.affected.v = NULL;
    ret = 0;
out:
    pack_reader_close(v.reader);
    free(v.buf);
    free(v.selected.v);
    free(v.packs_seen.v);
    free(v.affected.v);
    free(v.index);
    agent_read_unlock(r, &lk);
    return ret;
}

void agent_verify_result_free(struct agent_verify_result *res)
{
    free(res->affected);
    res->affected = NULL;
    res->naffected = 0;
}

/* ---- prune ---------------------------------------------------------------- */

struct pinfo {
    int64_t id;
    double time;
    char why[128];
    bool keep;
};

struct pvec {
    struct pinfo *p;
    size_t n, cap;
};

static int collect_pinfo(void *opaque, const struct agent_point *ap)
{
    struct pvec *v = opaque;
    if (VEC_RESERVE(v->p, v->n, v->cap, 32) < 0)
        return -1;
    v->p[v->n++] = (struct pinfo){ .id = ap->id, .time = ap->finished };
    return 0;
}

/* The bucket of a point's time for one rule (restic's semantics: the newest
 * point of each of the newest N buckets is kept). */
static long long bucket(double t, int rule)
{
    time_t s = (time_t)t;
    struct tm tm;
    localtime_r(&s, &tm);
    long long y = tm.tm_year + 1900;
    switch (rule) {
    case 1: return ((y * 1000 + tm.tm_yday) * 100) + tm.tm_hour;
    case 2: return y * 1000 + tm.tm_yday;
    case 3: {
        char w[16];
        strftime(w, sizeof w, "%G%V", &tm);
        return atoll(w);
    }
    case 4: return y * 100 + tm.tm_mon;
    default: return y;
    }
}

int agent_prune(struct agent_repo *r, const struct agent_prune_opts *o,
                struct agent_prune_result *res)
{
    static const char *const rule_names[] = { "last", "hourly", "daily", "weekly", "monthly", "yearly" };
    unsigned keep[6] = { o->keep_last, o->keep_hourly, o->keep_daily,
                         o->keep_weekly, o->keep_monthly, o->keep_yearly };
    struct pvec v = { 0 };
    char lockname[300], broken[512] = "";
    bool locked = false;
    struct remote_lock *rl = NULL;
    int ret = -1;

    memset(res, 0, sizeof *res);
    if (!keep[0] && !keep[1] && !keep[2] && !keep[3] && !keep[4] && !keep[5]) {
        error_set(EINVAL, "no --keep-* rule given: prune would remove every point");
        return -1;
    }
    int64_t disk_id;
    if (agent_disk_id(r, o->disk, &disk_id) < 0)
        return -1;
    if (!o->dry_run) {
        snprintf(lockname, sizeof lockname, "disk:%s", o->disk);
        if (catalog_lock(r->cat, lockname, broken, sizeof broken) < 0)
            return -1;
        locked = true;
        if (broken[0] && o->warn)
            o->warn(o->opaque, broken);
        /* In a bucket: exclusive against every host's backups and gc. */
        if (r->remote && agent_bucket_lock(r, true, "prune", o->disk, 0, o->warn, o->opaque, &rl) < 0)
            goto out;
    }
    if (agent_list(r, o->disk, collect_pinfo, &v) < 0)
        goto out;

    /* Newest first: each rule keeps the newest point of its newest buckets. */
    for (size_t i = 0; i < v.n / 2; i++) {
        struct pinfo t = v.p[i];
        v.p[i] = v.p[v.n - 1 - i];
        v.p[v.n - 1 - i] = t;
    }
    for (int rule = 0; rule < 6; rule++) {
        unsigned left = keep[rule];
        long long last = 0;
        bool have = false;
        for (size_t i = 0; i < v.n && left; i++) {
            long long bk = rule == 0 ? (long long)i : bucket(v.p[i].time, rule);
            if (have && bk == last)
                continue;
            have = true;
            last = bk;
            left--;
            v.p[i].keep = true;
            size_t len = strlen(v.p[i].why);
            snprintf(v.p[i].why + len, sizeof v.p[i].why - len, "%s%s", len ? ", " : "",
                     rule_names[rule]);
        }
    }
    /* What S3 Object Lock still retains stays (its removal would only hide
     * it behind a delete marker). */
    for (size_t i = 0; i < v.n && r->remote; i++) {
        time_t until;
        if (v.p[i].keep)
            continue;
        if (remote_point_locked(r, v.p[i].id, &until) < 0)
            goto out;
        if (until > time(NULL)) {
            struct tm tm;
            gmtime_r(&until, &tm);
            v.p[i].keep = true;
            strftime(v.p[i].why, sizeof v.p[i].why, "object lock until %Y-%m-%d %H:%M UTC", &tm);
        }
    }
    /* The decisions, oldest first. */
    for (size_t k = v.n; k-- > 0;) {
        struct pinfo *p = &v.p[k];
        if (o->decision)
            o->decision(o->opaque, p->id, p->time, p->keep, p->keep ? p->why : "no rule keeps it");
        if (p->keep)
            res->kept++;
        else if (o->dry_run)
            res->removed++;
    }
    /* Removed newest first: each removal merges only its own cells into its
     * child (the kept point above a run of removed ones gathers them once;
     * oldest first would copy the growing map of the run again at every
     * step).  In batches of PRUNE_BATCH points per transaction (one sync
     * each, not one per point): a kill loses at most the batch under way,
     * and every committed state is whole. */
    unsigned in_batch = 0, batch = PRUNE_BATCH;
    const char *bs = getenv("NBDVAULT_PRUNE_BATCH");   /* tests: smaller batches */
    if (bs && atoi(bs) > 0)
        batch = (unsigned)atoi(bs);
    for (size_t k = 0; k < v.n && !o->dry_run; k++) {
        struct pinfo *p = &v.p[k];
        if (p->keep)
            continue;
        if (in_batch == 0 && catalog_begin(r->cat) < 0)
            goto out;
        if (catalog_point_remove(r->cat, p->id) < 0) {
            error_prefix("remove point %lld: ", (long long)p->id);
            catalog_rollback(r->cat);
            goto out;
        }
        if (++in_batch == batch) {
            if (catalog_commit(r->cat) < 0)
                goto out;
            res->removed += in_batch;
            in_batch = 0;
        }
    }
    if (in_batch) {
        if (catalog_commit(r->cat) < 0)
            goto out;
        res->removed += in_batch;
    }
    /* The bucket told: children's manifests rewritten, then the removed
     * points' deleted (a kill before this leaves it to the next command). */
    if (r->remote && !o->dry_run && remote_flush(r) < 0)
        goto out;
    ret = 0;
out:
    if (locked) {
        struct error_saved e;
        error_save(&e);
        remote_unlock(rl);
        catalog_unlock(r->cat, lockname);
        if (ret < 0)
            error_restore(&e);
    }
    free(v.p);
    return ret;
}

/* ---- gc -------------------------------------------------------------------- */

struct gc {
    struct agent_repo *r;
    const struct agent_gc_opts *o;
    struct agent_gc_result *res;
    struct {
        int64_t id;
        char name[80];
        uint64_t size, live, live_chunks;
    } *packs;
    size_t npacks, cappacks;
    char (*known)[80];
    size_t nknown, capknown;
};

#define gc_note(g, ...) agent_notify((g)->o->note, (g)->o->opaque, __VA_ARGS__)

static int count_chunk(void *opaque, const struct catalog_chunk *ch)
{
    struct gc *g = opaque;
    g->res->chunks_removed++;
    g->res->bytes_freed += ch->stored_len;
    return 0;
}

static int gather_pack(void *opaque, const struct catalog_pack *p)
{
    struct gc *g = opaque;
    if (VEC_RESERVE(g->packs, g->npacks, g->cappacks, 64) < 0)
        return -1;
    g->packs[g->npacks].id = p->id;
    snprintf(g->packs[g->npacks].name, sizeof g->packs[g->npacks].name, "%s", p->name);
    g->packs[g->npacks].size = p->size;
    g->packs[g->npacks].live = p->live_bytes;
    g->packs[g->npacks].live_chunks = p->live_chunks;
    g->npacks++;
    return 0;
}

struct rewrite {
    struct gc *g;
    struct pack_reader *reader;
    struct pack_writer *w;
    ZSTD_CCtx *cctx;
    uint8_t *plain, *stored, *sealed;
    size_t storedcap;
    const struct agent_repo *r;
    struct catalog_chunk *moved;
    size_t nmoved, capmoved;
};

static int rewrite_chunk(void *opaque, const struct catalog_chunk *ch)
{
    struct rewrite *rw = opaque;
    const void *sbytes;
    size_t stored;
    uint8_t codec;

    /* Decoding checks the chunk; a damaged one stops the rewrite, keeping
     * the old pack for verify to report. */
    if (agent_chunk_read(rw->reader, ch, rw->plain) < 0)
        return -1;
    if (agent_chunk_encode(rw->r, rw->cctx, AGENT_DEFAULT_COMPRESS_LEVEL, rw->plain, ch->plain_len,
                           ch->hash, rw->stored, rw->storedcap, rw->sealed, &sbytes, &stored, &codec) < 0)
        return -1;
    struct pack_entry ne = { .codec = codec, .stored_len = (uint32_t)stored,
                             .plain_len = ch->plain_len, .crc = chunk_crc(sbytes, stored) };
    memcpy(ne.hash, ch->hash, PACK_HASH_LEN);
    if (pack_writer_add(rw->w, &ne, sbytes) < 0)
        return -1;
    if (VEC_RESERVE(rw->moved, rw->nmoved, rw->capmoved, 256) < 0)
        return -1;
    struct catalog_chunk m = *ch;
    m.offset = ne.offset;
    m.stored_len = ne.stored_len;
    m.codec = ne.codec;
    m.crc = ne.crc;
    rw->moved[rw->nmoved++] = m;
    return 0;
}

static int rewrite_pack(struct gc *g, size_t i)
{
    struct rewrite rw = { .g = g, .r = g->r };
    char name[PACK_NAME_MAX];
    uint64_t size;
    int ret = -1;

    rw.storedcap = chunk_bound(g->r->chunk_size);
    if (!(rw.reader = pack_reader_open(g->r->store, g->r->keys)) || !(rw.w = pack_writer_open(g->r->store)) ||
        !(rw.cctx = ZSTD_createCCtx()) || !(rw.plain = malloc(g->r->chunk_size)) ||
        !(rw.stored = malloc(rw.storedcap)) || !(rw.sealed = malloc(rw.storedcap + CRYPT_OVERHEAD))) {
        if (!rw.cctx || !rw.plain || !rw.stored || !rw.sealed)
            error_set(ENOMEM, "out of memory");
        goto out;
    }
    if (catalog_pack_chunks(g->r->cat, g->packs[i].id, rewrite_chunk, &rw) < 0)
        goto out;
    if (pack_writer_finish(rw.w, name, &size) < 0)
        goto out;
    if (catalog_pack_replace(g->r->cat, g->packs[i].id, name, size, rw.moved, rw.nmoved) < 0)
        goto out;
    /* The catalog no longer points at the old pack: remove it. */
    if (pack_remove(g->r->store, g->packs[i].name) < 0)
        goto out;
    g->res->packs_rewritten++;
    g->res->bytes_freed += g->packs[i].size > size ? g->packs[i].size - size : 0;
    gc_note(g, "rewrote pack %s (%llu of %llu bytes in use) as %s", g->packs[i].name,
            (unsigned long long)g->packs[i].live, (unsigned long long)g->packs[i].size, name);
    ret = 0;
out:
    pack_reader_close(rw.reader);
    pack_writer_free(rw.w);
    ZSTD_freeCCtx(rw.cctx);
    free(rw.plain);
    free(rw.stored);
    free(rw.sealed);
    free(rw.moved);
    return ret;
}

static int gather_known(void *opaque, const struct catalog_pack *p)
{
    struct gc *g = opaque;
    if (VEC_RESERVE(g->known, g->nknown, g->capknown, 64) < 0)
        return -1;
    snprintf(g->known[g->nknown++], sizeof *g->known, "%s", p->name);
    return 0;
}

/* A pack S3 Object Lock still retains: said, and kept (1); 0 not; -1. */
static int locked_pack(struct gc *g, const char *name)
{
    char key[PACK_NAME_MAX + 8];
    time_t until;

    if (!g->r->remote)
        return 0;
    snprintf(key, sizeof key, "packs/%s", name);
    if (store_locked_until(g->r->store, key, &until) < 0)
        return -1;
    if (until <= time(NULL))
        return 0;
    char when[40];
    struct tm tm;
    gmtime_r(&until, &tm);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", &tm);
    gc_note(g, "kept pack %s: under object lock until %s", name, when);
    g->res->packs_locked++;
    return 1;
}

static int sweep_file(void *opaque, const char *name, bool is_temp)
{
    struct gc *g = opaque;
    if (!is_temp)
        for (size_t i = 0; i < g->nknown; i++)
            if (!strcmp(g->known[i], name))
                return 0;
    /* A temporary file, or a pack the catalog never recorded (a backup or
     * gc killed before its commit): nothing points at it. */
    int kept = is_temp ? 0 : locked_pack(g, name);
    if (kept)
        return kept < 0 ? -1 : 0;
    g->res->orphans_removed++;
    gc_note(g, "%s orphan %s %s", g->o->dry_run ? "would remove" : "removed",
            is_temp ? "temporary file" : "pack", name);
    if (!g->o->dry_run && pack_remove(g->r->store, name) < 0)
        return -1;
    return 0;
}

/* Bytes of a pack that hold no live chunk: its size less the live chunks,
 * their entry headers and index records, and the fixed header and footer
 * (docs/FORMAT.md, "Packs"). */
static uint64_t dead_bytes(const struct gc *g, size_t i)
{
    uint64_t used = g->packs[i].live + 48 + 112 * g->packs[i].live_chunks;
    return g->packs[i].size > used ? g->packs[i].size - used : 0;
}

int agent_gc(struct agent_repo *r, const struct agent_gc_opts *o, struct agent_gc_result *res)
{
    struct gc g = { .r = r, .o = o, .res = res };
    char broken[512] = "";
    double below = o->rewrite_below > 0 ? o->rewrite_below : 0.5;
    int ret = -1;

    memset(res, 0, sizeof *res);
    if (catalog_lock(r->cat, "gc", broken, sizeof broken) < 0)
        return -1;
    if (broken[0])
        gc_note(&g, "%s", broken);
    /* In a bucket: exclusive against every host's backups (a running one
     * may reference packs no manifest names yet), then the cache brought
     * up to date under the lock. */
    struct remote_lock *rl = NULL;
    if (r->remote && agent_bucket_lock(r, true, "gc", NULL, 0, o->note, o->opaque, &rl) < 0)
        goto out;

    /* 1. Chunks no point references any more. */
    if (catalog_chunks_unreferenced(r->cat, !o->dry_run, count_chunk, &g) < 0)
        goto out;
    /* 2. Packs: empty ones go, mostly-garbage ones are rewritten. */
    if (catalog_pack_list(r->cat, gather_pack, &g) < 0)
        goto out;
    for (size_t i = 0; i < g.npacks; i++) {
        if (g.packs[i].live == 0) {
            int kept = locked_pack(&g, g.packs[i].name);
            if (kept < 0)
                goto out;
            if (kept)
                continue;
            res->packs_removed++;
            gc_note(&g, "%s pack %s (no chunk in use)", o->dry_run ? "would remove" : "removed",
                    g.packs[i].name);
            if (!o->dry_run && (catalog_pack_delete(r->cat, g.packs[i].id) < 0 ||
                                pack_remove(r->store, g.packs[i].name) < 0))
                goto out;
        } else if (!r->remote && (double)dead_bytes(&g, i) > below * (double)g.packs[i].size) {
            /* In a bucket, packs are not rewritten: the manifests of every
             * point using them name their chunks' locations. */
            if (o->dry_run) {
                res->packs_rewritten++;
                gc_note(&g, "would rewrite pack %s (%llu of %llu bytes in use)", g.packs[i].name,
                        (unsigned long long)g.packs[i].live, (unsigned long long)g.packs[i].size);
            } else if (rewrite_pack(&g, i) < 0) {
                goto out;
            }
        }
    }
    /* 3. Files that no catalog row points at. */
    if (catalog_pack_list(r->cat, gather_known, &g) < 0 || pack_list_files(r->store, sweep_file, &g) < 0)
        goto out;
    ret = 0;
out:;
    struct error_saved e;
    error_save(&e);
    remote_unlock(rl);
    catalog_unlock(r->cat, "gc");
    if (ret < 0)
        error_restore(&e);
    free(g.packs);
    free(g.known);
    return ret;
}
