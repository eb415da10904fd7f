/* agent/remote.c: the catalog of a bucket's repository, kept as a cache of
 * its manifests (agent/remote.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "agent/internal.h"
#include "agent/keys.h"
#include "agent/manifest.h"
#include "agent/pack.h"
#include "agent/remote.h"
#include "common/error.h"
#include "crypt/crypt.h"
#include "common/vec.h"
#include "store/store.h"

#define CONFIG_KEY "config"
#define POINTS "points/"
#define REPO_FORMAT 1

static char cache_dir_opt[PATH_MAX];

void agent_set_cache_dir(const char *dir)
{
    snprintf(cache_dir_opt, sizeof cache_dir_opt, "%s", dir ? dir : "");
}

static int random_hex(char *out, size_t bytes)
{
    uint8_t b[32];
    if (bytes > sizeof b || getrandom(b, bytes, 0) != (ssize_t)bytes) {
        error_set(EIO, "getrandom: %s", strerror(errno));
        return -1;
    }
    for (size_t i = 0; i < bytes; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    return 0;
}

/* ---- The config object ------------------------------------------------------ */

int remote_init(struct store *st, const char *url, uint32_t chunk_size, bool encrypt, const char *key_file)
{
    uint64_t size;
    char id[33], *desc = NULL;

    if (store_stat(st, CONFIG_KEY, &size) == 0) {
        error_set(EEXIST, "%s already holds a repository", url);
        return -1;
    }
    if (error_errno() != ENOENT)
        return -1;
    if (random_hex(id, 16) < 0)
        return -1;
    /* The key's slot (or key file) before the config that names it. */
    if (encrypt && !(desc = keys_create(st, url, id, key_file)))
        return -1;
    struct json_object *j = json_object_new_object();
    json_object_object_add(j, "format", json_object_new_string("nbdvault"));
    json_object_object_add(j, "version", json_object_new_int(REPO_FORMAT));
    json_object_object_add(j, "id", json_object_new_string(id));
    json_object_object_add(j, "chunk_size", json_object_new_int64(chunk_size));
    json_object_object_add(j, "created", json_object_new_int64((int64_t)time(NULL)));
    if (desc)
        json_object_object_add(j, "encryption", json_tokener_parse(desc));
    const char *txt = json_object_to_json_string_ext(j, JSON_C_TO_STRING_PRETTY);
    int r = store_put_all(st, CONFIG_KEY, txt, strlen(txt));
    json_object_put(j);
    free(desc);
    return r;
}

static int read_config(struct agent_repo *r, char id[33], uint32_t *chunk, char **encryption)
{
    void *buf;
    size_t len;
    int bad = 0;

    if (encryption)
        *encryption = NULL;
    if (store_get_all(r->store, CONFIG_KEY, &buf, &len) < 0) {
        if (error_errno() == ENOENT)
            error_set(ENOENT, "%s is not a repository (no config object; create one with "
                              "'nbdvault init --repo %s')", r->dir, r->dir);
        return -1;
    }
    char *txt = strndup(buf, len);
    free(buf);
    struct json_object *j = txt ? json_tokener_parse(txt) : NULL, *v;
    free(txt);
    if (!j || !json_object_object_get_ex(j, "format", &v) || strcmp(json_object_get_string(v), "nbdvault"))
        bad = 1;
    if (!bad && (!json_object_object_get_ex(j, "version", &v) || json_object_get_int(v) != REPO_FORMAT))
        bad = 2;
    if (!bad && (!json_object_object_get_ex(j, "id", &v) || strlen(json_object_get_string(v)) != 32))
        bad = 1;
    if (!bad)
        snprintf(id, 33, "%s", json_object_get_string(v));
    if (!bad && json_object_object_get_ex(j, "chunk_size", &v))
        *chunk = (uint32_t)json_object_get_int64(v);
    else
        bad = bad ? bad : 1;
    if (!bad && encryption && json_object_object_get_ex(j, "encryption", &v) &&
        !(*encryption = strdup(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN))))
        bad = 1;
    json_object_put(j);
    if (bad) {
        error_set(EINVAL, bad == 2 ? "%s: the repository's format is newer than this nbdvault reads"
                                   : "%s: its config object is damaged", r->dir);
        return -1;
    }
    return 0;
}

/* ---- The cache -------------------------------------------------------------- */

static int mkdirs(const char *path)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = 0;
        if (mkdir(p, 0700) < 0 && errno != EEXIST)
            return -1;
        *s = '/';
    }
    return mkdir(p, 0700) < 0 && errno != EEXIST ? -1 : 0;
}

static int cache_dir(const char *id, char *out, size_t cap)
{
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n;

    if (cache_dir_opt[0])
        n = snprintf(out, cap, "%s", cache_dir_opt);
    else if (xdg && xdg[0] == '/')
        n = snprintf(out, cap, "%s/nbdvault/%s", xdg, id);
    else if (home && home[0])
        n = snprintf(out, cap, "%s/.cache/nbdvault/%s", home, id);
    else
        n = snprintf(out, cap, "/var/cache/nbdvault/%s", id);
    if (n < 0 || (size_t)n >= cap) {
        error_set(ENAMETOOLONG, "cache directory name too long");
        return -1;
    }
    if (mkdirs(out) < 0) {
        error_set(errno, "cache directory %s: %s", out, strerror(errno));
        return -1;
    }
    return 0;
}

/* A cache belongs to one repository: its id is written in it. */
static int cache_claim(const char *dir, const char *id, const char *url)
{
    char path[PATH_MAX + 16], have[40] = "";
    int fd;

    snprintf(path, sizeof path, "%s/repository-id", dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        error_set(errno, "%s: %s", path, strerror(errno));
        return -1;
    }
    ssize_t n = pread(fd, have, 32, 0);
    if (n == 32 && strncmp(have, id, 32)) {
        close(fd);
        error_set(EINVAL, "cache directory %s belongs to another repository (id %.32s, and %s is %s)",
                  dir, have, url, id);
        return -1;
    }
    if (n != 32 && (pwrite(fd, id, 32, 0) != 32 || fsync(fd) < 0)) {
        error_set(errno, "%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* The bucket's word on encryption against the cache's: a cache that has
 * known the repository encrypted refuses a config that says it is plain
 * (someone removed the encryption to have the next backup write plain
 * chunks). */
static int open_keys(struct agent_repo *r, char *desc)
{
    char *known = NULL;
    int f = catalog_repo_text_get(r->cat, "encryption", &known), ret = -1;

    if (f < 0)
        goto out;
    if (!desc && f > 0) {
        error_set(EACCES, "%s: the bucket's config says the repository is not encrypted, but this "
                  "cache knew it encrypted: refusing (restore the config object)", r->dir);
        goto out;
    }
    if (desc && (f == 0 || strcmp(known, desc)) && catalog_repo_text_set(r->cat, "encryption", desc) < 0)
        goto out;
    ret = desc ? keys_load(r, desc) : 0;
out:
    free(known);
    return ret;
}

int remote_open(struct agent_repo *r)
{
    char id[33], dir[PATH_MAX], *desc = NULL;
    uint32_t chunk = 0;

    if (read_config(r, id, &chunk, &desc) < 0 || cache_dir(id, dir, sizeof dir) < 0 ||
        cache_claim(dir, id, r->dir) < 0 || store_set_state_dir(r->store, dir) < 0) {
        free(desc);
        return -1;
    }
    if (asprintf(&r->catalog_path, "%s/catalog.db", dir) < 0) {
        r->catalog_path = NULL;
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    if (access(r->catalog_path, F_OK) < 0 && catalog_create(r->catalog_path, chunk) < 0) {
        error_prefix("cache of %s: ", r->dir);
        free(desc);
        return -1;
    }
    if (!(r->cat = catalog_open(r->catalog_path))) {
        error_prefix("cache of %s: ", r->dir);
        free(desc);
        return -1;
    }
    r->chunk_size = catalog_chunk_size(r->cat);
    if (r->chunk_size != chunk) {
        error_set(EINVAL, "cache %s has chunk size %u, the repository %u", dir, r->chunk_size, chunk);
        free(desc);
        return -1;
    }
    r->remote = true;
    int k = open_keys(r, desc);
    free(desc);
    return k < 0 ? -1 : remote_sync(r);
}

/* ---- Publishing -------------------------------------------------------------------- */

struct idmap {
    int64_t *keys;
    uint32_t *vals;
    size_t cap, n;
};

static uint32_t *idmap_slot(struct idmap *m, int64_t key)
{
    size_t i = (size_t)((uint64_t)key * 0x9e3779b97f4a7c15ull >> 20) & (m->cap - 1);
    while (m->keys[i] && m->keys[i] != key)
        i = (i + 1) & (m->cap - 1);
    return &m->vals[i];
}

static int idmap_grow(struct idmap *m)
{
    struct idmap n = { calloc(m->cap ? 2 * m->cap : 1024, sizeof *n.keys),
                       calloc(m->cap ? 2 * m->cap : 1024, sizeof *n.vals), m->cap ? 2 * m->cap : 1024, 0 };
    if (!n.keys || !n.vals) {
        free(n.keys);
        free(n.vals);
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i])
            continue;
        uint32_t *v = idmap_slot(&n, m->keys[i]);
        n.keys[v - n.vals] = m->keys[i];
        *v = m->vals[i];
        n.n++;
    }
    free(m->keys);
    free(m->vals);
    *m = n;
    return 0;
}

/* The index of key, or UINT32_MAX when absent (inserted as val when
 * insert). */
static int idmap_find(struct idmap *m, int64_t key, uint32_t *val, bool insert)
{
    if ((m->n + 1) * 2 > m->cap && idmap_grow(m) < 0)
        return -1;
    uint32_t *v = idmap_slot(m, key);
    if (m->keys[v - m->vals]) {
        *val = *v;
        return 1;
    }
    if (insert) {
        m->keys[v - m->vals] = key;
        *v = *val;
        m->n++;
    }
    return 0;
}

struct build {
    struct catalog *cat;
    struct manifest *m;
    struct idmap chunks, packs;
};

static int build_run(void *opaque, const struct catalog_run *run, const struct catalog_chunk *ch)
{
    struct build *b = opaque;
    uint32_t ci = MANIFEST_ZERO, pi;
    int f;

    if (ch) {
        ci = (uint32_t)b->m->nchunks;
        if ((f = idmap_find(&b->chunks, ch->id, &ci, true)) < 0)
            return -1;
        if (!f) {
            pi = (uint32_t)b->m->npacks;
            if ((f = idmap_find(&b->packs, ch->pack_id, &pi, true)) < 0)
                return -1;
            if (!f) {
                uint64_t size;
                if (catalog_pack_size(b->cat, ch->pack_id, &size) < 0 ||
                    manifest_add_pack(b->m, ch->pack, size) < 0)
                    return -1;
            }
            struct catalog_chunk c = *ch;
            c.pack_id = pi;
            if (manifest_add_chunk(b->m, &c) < 0)
                return -1;
        }
    }
    return manifest_add_run(b->m, run->first_cell, run->count, ci);
}

static void key_of(const char *uid, unsigned gen, char *out, size_t cap)
{
    snprintf(out, cap, POINTS "%s.%06u", uid, gen);
}

/* ---- Sealed manifests ------------------------------------------------------------ */

/* In an encrypted repository a manifest is "NBDVMANE" and the manifest
 * object sealed under the metadata key, its key in the bucket
 * authenticated with it (a manifest cannot stand in for another). */
#define SEALED_MAGIC "NBDVMANE"

static int seal_manifest(struct agent_repo *r, const char *key, void **obj, size_t *len)
{
    if (!r->encrypted)
        return 0;
    if (!r->keys) {
        error_set(EACCES, "repository %s is encrypted: its key is needed to write", r->dir);
        return -1;
    }
    uint8_t *out = malloc(8 + *len + CRYPT_OVERHEAD);
    if (!out) {
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    memcpy(out, SEALED_MAGIC, 8);
    if (crypt_seal(r->keys->meta, key, strlen(key), *obj, *len, out + 8) < 0) {
        free(out);
        return -1;
    }
    free(*obj);
    *obj = out;
    *len += 8 + CRYPT_OVERHEAD;
    return 0;
}

/* The manifest object behind a sealed one, in place of *buf; 1 when it is
 * sealed and there is no key (the caller skips it). */
static int open_manifest(struct agent_repo *r, const char *key, const char *name, void **buf, size_t *len)
{
    bool sealed = *len >= 8 && !memcmp(*buf, SEALED_MAGIC, 8);

    if (!sealed && r->encrypted) {
        error_set(EACCES, "manifest %s is not encrypted, in an encrypted repository: refused", name);
        return -1;
    }
    if (!sealed)
        return 0;
    if (!r->encrypted) {
        error_set(EINVAL, "manifest %s is encrypted, in a repository that is not", name);
        return -1;
    }
    if (!r->keys)
        return 1;
    if (*len < 8 + CRYPT_OVERHEAD) {
        error_set(EIO, "manifest %s is damaged (too short for its seal)", name);
        return -1;
    }
    size_t plen = *len - 8 - CRYPT_OVERHEAD;
    uint8_t *plain = malloc(plen ? plen : 1);
    if (!plain) {
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    if (crypt_open(r->keys->meta, key, strlen(key), (uint8_t *)*buf + 8, *len - 8, plain) < 0) {
        char why[256];
        snprintf(why, sizeof why, "%s", error_msg());
        error_set(EIO, "manifest %s is damaged or not this repository's: its seal does not hold (%s)",
                  name, why);
        free(plain);
        return -1;
    }
    free(*buf);
    *buf = plain;
    *len = plen;
    return 0;
}

/* Writes points/UID.GEN for point p as the cache holds it. */
static int put_manifest(struct agent_repo *r, const struct catalog_point *p, const char *uid,
                        unsigned gen)
{
    struct manifest m = { 0 };
    struct build b = { r->cat, &m, { 0 }, { 0 } };
    struct catalog_remote parent;
    char key[STORE_KEY_MAX];
    void *obj = NULL;
    size_t len;
    int ret = -1;

    m.pt = *p;
    m.chunk_size = r->chunk_size;
    m.gen = gen;
    snprintf(m.uid, sizeof m.uid, "%s", uid);
    gethostname(m.host, sizeof m.host - 1);
    if (p->parent) {
        int f = catalog_remote_get(r->cat, p->parent, &parent);
        if (f <= 0) {
            if (f == 0)
                error_set(ENOENT, "point %lld has no manifest in the bucket", (long long)p->parent);
            goto out;
        }
        snprintf(m.parent_uid, sizeof m.parent_uid, "%s", parent.uid);
    }
    key_of(uid, gen, key, sizeof key);
    if (catalog_point_own(r->cat, p->id, build_run, &b) == 0 && manifest_encode(&m, &obj, &len) == 0 &&
        seal_manifest(r, key, &obj, &len) == 0 && store_put_all(r->store, key, obj, len) == 0)
        ret = 0;
out:
    free(obj);
    free(b.chunks.keys);
    free(b.chunks.vals);
    free(b.packs.keys);
    free(b.packs.vals);
    manifest_free(&m);
    return ret;
}

int remote_publish(struct agent_repo *r, const struct catalog_point *p)
{
    struct catalog_remote rem = { .point_id = p->id, .gen = 1 };
    char key[STORE_KEY_MAX], stamp[32], rnd[17];
    time_t t = (time_t)p->started;
    unsigned ms = (unsigned)((p->started - (double)t) * 1000.0) % 1000;
    struct tm tm;

    /* A uid sorts by the point's start to the millisecond: parents list
     * before children, and a rebuilt cache numbers points by their start. */
    gmtime_r(&t, &tm);
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%S", &tm);
    if (random_hex(rnd, 8) < 0)
        goto fail;
    snprintf(rem.uid, sizeof rem.uid, "%.15s%03uZ-%.16s", stamp, ms, rnd);
    if (put_manifest(r, p, rem.uid, rem.gen) < 0)
        goto fail;
    if (catalog_remote_set(r->cat, &rem) < 0) {
        struct error_saved e;
        error_save(&e);
        key_of(rem.uid, rem.gen, key, sizeof key);
        (void)store_remove(r->store, key);
        error_restore(&e);
        goto fail;
    }
    return 0;
fail:
    error_prefix("publish point: ");
    return -1;
}

int remote_point_locked(struct agent_repo *r, int64_t point_id, time_t *until)
{
    struct catalog_remote rem;
    char key[STORE_KEY_MAX];
    int f = catalog_remote_get(r->cat, point_id, &rem);

    *until = 0;
    if (f <= 0)
        return f;
    key_of(rem.uid, rem.gen, key, sizeof key);
    return store_locked_until(r->store, key, until) < 0 ? -1 : 0;
}

/* ---- Telling the bucket what changed here ---------------------------------------- */

struct gens {
    struct agent_repo *r;
    unsigned keep;                /* the generation to keep, 0: none */
};

static int remove_gen(void *opaque, const char *key, uint64_t size, bool partial)
{
    struct gens *g = opaque;
    const char *dot = strrchr(key, '.');

    if (dot && strtoul(dot + 1, NULL, 10) == g->keep)
        return 0;
    return store_remove(g->r->store, key) < 0 && error_errno() != ENOENT ? -1 : 0;
}

/* Removes the manifests of uid except generation keep. */
static int remove_gens(struct agent_repo *r, const char *uid, unsigned keep)
{
    char prefix[STORE_KEY_MAX];
    struct gens g = { r, keep };

    snprintf(prefix, sizeof prefix, POINTS "%s.", uid);
    return store_list(r->store, prefix, remove_gen, &g);
}

static int flush_dirty(void *opaque, const struct catalog_remote *rem)
{
    struct agent_repo *r = opaque;
    struct catalog_point p;
    struct catalog_remote next = *rem;

    if (catalog_point_get(r->cat, rem->point_id, &p) != 1)
        return -1;
    next.gen = rem->gen + 1;
    if (put_manifest(r, &p, rem->uid, next.gen) < 0 || catalog_remote_set(r->cat, &next) < 0 ||
        remove_gens(r, rem->uid, next.gen) < 0) {
        error_prefix("rewrite the manifest of point %lld: ", (long long)rem->point_id);
        return -1;
    }
    return 0;
}

static int flush_gone(void *opaque, const struct catalog_remote *rem)
{
    struct agent_repo *r = opaque;

    if (remove_gens(r, rem->uid, 0) < 0 || catalog_remote_gone_done(r->cat, rem->uid) < 0) {
        error_prefix("remove the manifest of %s: ", rem->uid);
        return -1;
    }
    return 0;
}

/* Children rewritten first, so that no manifest names a parent that is
 * gone, then the removed points' manifests deleted. */
int remote_flush(struct agent_repo *r)
{
    if (catalog_remote_dirty(r->cat, flush_dirty, r) < 0 || catalog_remote_gone(r->cat, flush_gone, r) < 0)
        return -1;
    return 0;
}

/* ---- Syncing --------------------------------------------------------------------- */

struct entry {
    char uid[40];
    unsigned gen;
    int64_t point;                /* in the cache, 0 none */
    unsigned have_gen;
    bool done;
    bool skipped;                 /* sealed, and no key: not imported */
    struct entry *waits;          /* the parent it waits for, not yet imported */
};

struct listing {
    struct entry *e;
    size_t n, cap;
};

static int list_point(void *opaque, const char *key, uint64_t size, bool partial)
{
    struct listing *l = opaque;
    const char *name = key + strlen(POINTS), *dot = strrchr(name, '.');
    char *end;

    if (partial || !dot || dot == name || (size_t)(dot - name) >= sizeof l->e->uid)
        return 0;                  /* not a manifest */
    unsigned long gen = strtoul(dot + 1, &end, 10);
    if (*end || !gen || gen > 999999)
        return 0;
    if (l->n && !strncmp(l->e[l->n - 1].uid, name, (size_t)(dot - name)) &&
        !l->e[l->n - 1].uid[dot - name]) {
        if (gen > l->e[l->n - 1].gen)
            l->e[l->n - 1].gen = (unsigned)gen;   /* keys sort: older generations first */
        return 0;
    }
    if (VEC_RESERVE(l->e, l->n, l->cap, 64) < 0)
        return -1;
    memset(&l->e[l->n], 0, sizeof l->e[l->n]);
    snprintf(l->e[l->n].uid, sizeof l->e[l->n].uid, "%.*s", (int)(dot - name), name);
    l->e[l->n].gen = (unsigned)gen;
    l->n++;
    return 0;
}

static struct entry *find_uid(struct listing *l, const char *uid)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->e[i].uid, uid))
            return &l->e[i];
    return NULL;
}

struct cached {
    struct listing *l;
    struct catalog_remote *gone;
    size_t ngone, cap;
};

static int note_cached(void *opaque, const struct catalog_remote *rem)
{
    struct cached *c = opaque;
    struct entry *e = find_uid(c->l, rem->uid);

    if (e) {
        e->point = rem->point_id;
        e->have_gen = rem->gen;
        e->done = rem->gen >= e->gen;
        return 0;
    }
    if (VEC_RESERVE(c->gone, c->ngone, c->cap, 16) < 0)
        return -1;
    c->gone[c->ngone++] = *rem;
    return 0;
}

/* The manifest's point in the cache; 0 imported, 1 waits for its parent. */
static int import_one(struct agent_repo *r, struct listing *l, struct entry *e)
{
    char key[STORE_KEY_MAX], name[STORE_KEY_MAX + 64];
    struct manifest m;
    void *buf;
    size_t len;
    int ret = -1;

    key_of(e->uid, e->gen, key, sizeof key);
    if (store_display_name(r->store, key, name, sizeof name) < 0 ||
        store_get_all(r->store, key, &buf, &len) < 0)
        return -1;
    int o = open_manifest(r, key, name, &buf, &len);
    if (o != 0) {
        free(buf);
        if (o > 0)
            e->skipped = e->done = true;   /* its children are sealed too */
        return o < 0 ? -1 : 0;
    }
    int d = manifest_decode(buf, len, name, &m);
    free(buf);
    if (d < 0)
        return -1;
    struct catalog_point p = m.pt;
    struct catalog_run *runs = calloc(m.nruns ? m.nruns : 1, sizeof *runs);
    int64_t *ids = calloc(m.nchunks ? m.nchunks : 1, sizeof *ids);
    struct catalog_remote rem = { .gen = e->gen };
    snprintf(rem.uid, sizeof rem.uid, "%s", e->uid);
    if (!runs || !ids) {
        error_set(ENOMEM, "out of memory");
        goto out;
    }
    if (strcmp(m.uid, e->uid) || m.gen != e->gen || m.chunk_size != r->chunk_size) {
        error_set(EINVAL, "manifest %s does not belong under its name or to this repository", name);
        goto out;
    }
    if (m.parent_uid[0]) {
        struct entry *pe = find_uid(l, m.parent_uid);
        if (!pe) {
            error_set(ENOENT, "manifest %s: its parent %s is not in the bucket", name, m.parent_uid);
            goto out;
        }
        if (!pe->done) {
            e->waits = pe;
            ret = 1;
            goto out;
        }
        p.parent = pe->point;
    }
    p.id = e->point;
    if (catalog_begin(r->cat) < 0)
        goto out;
    if (agent_disk_id(r, p.disk, &p.disk_id) < 0 &&
        (error_errno() != ENOENT || (p.disk_id = catalog_disk_add(r->cat, p.disk)) < 0))
        goto rollback;
    for (size_t i = 0; i < m.npacks; i++) {
        int64_t pid;
        if (catalog_pack_ensure(r->cat, m.packs[i].name, m.packs[i].size, &pid) < 0)
            goto rollback;
        m.packs[i].size = (uint64_t)pid;   /* from here: the pack's id */
    }
    for (size_t i = 0; i < m.nchunks; i++)
        if (catalog_chunk_import(r->cat, (int64_t)m.packs[m.chunks[i].pack_id].size, &m.chunks[i], &ids[i]) < 0)
            goto rollback;
    for (size_t i = 0; i < m.nruns; i++)
        runs[i] = (struct catalog_run){ m.runs[i].first, m.runs[i].count,
                                        m.runs[i].chunk == MANIFEST_ZERO ? 0 : ids[m.runs[i].chunk], 0 };
    if ((e->point = catalog_point_import(r->cat, &p, runs, m.nruns, &rem)) < 0 ||
        catalog_commit(r->cat) < 0)
        goto rollback;
    e->done = true;
    ret = 0;
    goto out;
rollback:;
    struct error_saved es;
    error_save(&es);
    catalog_rollback(r->cat);
    error_restore(&es);
out:
    free(runs);
    free(ids);
    manifest_free(&m);
    return ret;
}

/* In listing order (the points' start), except that a point met before its
 * parent is imported right after it: every cache rebuilt from the bucket
 * numbers the points alike, and as a host that wrote them alone did. */
static int import_all(struct agent_repo *r, struct listing *l)
{
    size_t waiting = 0;

    for (size_t i = 0; i < l->n;) {
        struct entry *e = &l->e[i];
        if (e->done || (e->waits && !e->waits->done)) {
            i++;
            continue;
        }
        bool waited = e->waits != NULL;
        int k = import_one(r, l, e);
        if (k < 0)
            return -1;
        if (k > 0) {
            waiting += !waited;
            i++;
            continue;
        }
        waiting -= waited;
        size_t next = i + 1;
        for (size_t j = 0; waiting && j < i; j++)
            if (l->e[j].waits == e && !l->e[j].done) {
                next = j;
                break;
            }
        i = next;
    }
    if (waiting) {
        error_set(EINVAL, "the bucket's manifests name parents in a cycle");
        return -1;
    }
    return 0;
}

struct packset {
    char (*name)[80];
    size_t n, cap;
    struct agent_repo *r;
};

static int list_pack(void *opaque, const char *name, bool is_temp)
{
    struct packset *ps = opaque;
    if (is_temp)
        return 0;
    if (VEC_RESERVE(ps->name, ps->n, ps->cap, 256) < 0)
        return -1;
    snprintf(ps->name[ps->n++], sizeof *ps->name, "%s", name);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(a, b);
}

static int forget_if_lost(void *opaque, const struct catalog_pack *p)
{
    struct packset *ps = opaque;
    if (ps->n && bsearch(p->name, ps->name, ps->n, sizeof *ps->name, by_name))
        return 0;
    return catalog_pack_forget(ps->r->cat, p->id);
}

/* Chunks of packs the bucket no longer has (another machine's gc removed
 * them) must not be found by a backup's dedup here. */
static int forget_lost_packs(struct agent_repo *r)
{
    struct packset ps = { .r = r };
    int ret = pack_list_files(r->store, list_pack, &ps);

    if (ret == 0) {
        if (ps.n)
            qsort(ps.name, ps.n, sizeof *ps.name, by_name);
        ret = catalog_pack_list(r->cat, forget_if_lost, &ps);
    }
    free(ps.name);
    return ret;
}

static int by_point_desc(const void *a, const void *b)
{
    const struct catalog_remote *x = a, *y = b;
    return x->point_id < y->point_id ? 1 : x->point_id > y->point_id ? -1 : 0;
}

int remote_sync(struct agent_repo *r)
{
    struct listing l = { 0 };
    struct cached c = { &l, NULL, 0, 0 };
    char lock[PATH_MAX + 16];
    int fd, ret = -1;

    /* One sync at a time per cache. */
    snprintf(lock, sizeof lock, "%s/sync.lock", store_state_dir(r->store));
    if ((fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0 || flock(fd, LOCK_EX) < 0) {
        error_set(errno, "%s: %s", lock, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (remote_flush(r) < 0 || store_list(r->store, POINTS, list_point, &l) < 0 ||
        catalog_remote_list(r->cat, note_cached, &c) < 0 || import_all(r, &l) < 0)
        goto out;
    /* Newest first, so that a child goes before its parent. */
    if (c.ngone)
        qsort(c.gone, c.ngone, sizeof *c.gone, by_point_desc);
    for (size_t i = 0; i < c.ngone; i++)
        if (catalog_point_drop(r->cat, c.gone[i].point_id) < 0)
            goto out;
    ret = forget_lost_packs(r);
out:
    if (ret < 0)
        error_prefix("bring the cache of %s up to date: ", r->dir);
    close(fd);
    free(l.e);
    free(c.gone);
    return ret;
}

/* ---- Rebuilding -------------------------------------------------------------------- */

static int count_point(void *opaque, const struct catalog_point *p)
{
    (*(unsigned *)opaque)++;
    return 0;
}

int agent_catalog_rebuild(const char *url, unsigned *points)
{
    struct agent_repo tmp = { .dir = (char *)url };
    char id[33], dir[PATH_MAX], path[PATH_MAX + 32];
    uint32_t chunk;
    int ret = -1;

    *points = 0;
    if (!store_is_remote_location(url)) {
        error_set(EINVAL, "%s is a local repository: its catalog is the repository's own "
                          "record, not a cache (check it with 'nbdvault verify')", url);
        return -1;
    }
    if (!(tmp.store = store_open(url)))
        return -1;
    if (read_config(&tmp, id, &chunk, NULL) == 0 && cache_dir(id, dir, sizeof dir) == 0 &&
        cache_claim(dir, id, url) == 0) {
        static const char *const files[] = { "catalog.db", "catalog.db-wal", "catalog.db-shm" };
        ret = 0;
        for (size_t i = 0; i < 3 && ret == 0; i++) {
            snprintf(path, sizeof path, "%s/%s", dir, files[i]);
            if (unlink(path) < 0 && errno != ENOENT) {
                error_set(errno, "remove %s: %s", path, strerror(errno));
                ret = -1;
            }
        }
    }
    store_close(tmp.store);
    if (ret < 0)
        return -1;
    struct agent_repo *r = agent_repo_open(url, false);
    if (!r)
        return -1;
    ret = catalog_point_list(r->cat, NULL, count_point, points);
    agent_repo_close(r);
    return ret;
}
