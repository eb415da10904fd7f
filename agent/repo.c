/* repo.c: opening and creating repositories. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/internal.h"
#include "agent/keys.h"
#include "agent/pack.h"
#include "agent/remote.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/fsync.h"
#include "crypt/crypt.h"
#include "store/store.h"

static char *path_in(const char *dir, const char *name)
{
    char *s;
    if (asprintf(&s, "%s/%s", dir, name) < 0) {
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    return s;
}

static int repo_init(const char *dir, uint32_t chunk_size, bool encrypt, const char *key_file);

int agent_repo_init(const char *dir, uint32_t chunk_size)
{
    return repo_init(dir, chunk_size, false, NULL);
}

int agent_repo_init_encrypted(const char *dir, uint32_t chunk_size, const char *key_file)
{
    return repo_init(dir, chunk_size, true, key_file);
}

bool agent_repo_encrypted(const struct agent_repo *r)
{
    return r->encrypted;
}

/* A new repository id: 32 hex digits. */
static int new_id(char id[33])
{
    uint8_t b[16];
    if (crypt_random(b, sizeof b) < 0)
        return -1;
    for (int i = 0; i < 16; i++)
        snprintf(id + 2 * i, 3, "%02x", b[i]);
    return 0;
}

static int repo_init(const char *dir, uint32_t chunk_size, bool encrypt, const char *key_file)
{
    struct store *st = NULL;
    char *cat = NULL, *desc = NULL, id[33];
    int ret = -1;

    if (chunk_size < AGENT_MIN_CHUNK_SIZE || chunk_size > AGENT_MAX_CHUNK_SIZE ||
        (chunk_size & (chunk_size - 1))) {
        error_set(EINVAL, "chunk size %u is not a power of two from 64 KiB to 16 MiB", chunk_size);
        return -1;
    }
    if (store_is_remote_location(dir)) {
        if (!(st = store_open(dir)) || remote_init(st, dir, chunk_size, encrypt, key_file) < 0) {
            error_prefix("create repository: ");
            store_close(st);
            return -1;
        }
        store_close(st);
        return 0;
    }
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        error_set(errno, "create repository %s: %s", dir, strerror(errno));
        return -1;
    }
    if (!(st = store_open(dir))) {
        error_prefix("create repository: ");
        return -1;
    }
    if (!(cat = path_in(store_state_dir(st), "catalog.db")))
        goto out;
    if (access(cat, F_OK) == 0) {
        error_set(EEXIST, "%s already holds a repository", dir);
        goto out;
    }
    /* The key (its slot or key file) first: a repository that stands is
     * never without the key its descriptor names. */
    if (encrypt && (new_id(id) < 0 || !(desc = keys_create(st, dir, id, key_file)))) {
        error_prefix("create repository %s: ", dir);
        goto out;
    }
    if (catalog_create_with(cat, chunk_size, desc ? "encryption" : NULL, desc) < 0) {
        error_prefix("create repository %s: ", dir);
        goto out;
    }
    fsync_dir(store_state_dir(st));
    ret = 0;
out:
    free(cat);
    free(desc);
    store_close(st);
    return ret;
}

/* A backup's repository made on first use: plain, unless a key was
 * given, which asks for `init --encrypt` instead of a plain repository. */
static int auto_init(const char *dir)
{
    if (agent_key_given(agent_key_source())) {
        error_set(ENOENT, "%s is not a repository; a key was given: create it encrypted with "
                  "'nbdvault init --encrypt --repo %s'", dir, dir);
        return -1;
    }
    return agent_repo_init(dir, AGENT_DEFAULT_CHUNK_SIZE);
}

struct agent_repo *agent_repo_open(const char *dir, bool create)
{
    struct agent_repo *r = calloc(1, sizeof *r);

    if (!r) {
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    if (!(r->dir = strdup(dir)))
        goto fail;
    if (store_is_remote_location(dir)) {
        if (!(r->store = store_open(dir)) || remote_open(r) < 0) {
            error_prefix("repository: ");
            goto fail;
        }
        return r;
    }
    if (create && access(dir, F_OK) < 0 && auto_init(dir) < 0)
        goto fail;
    if (!(r->store = store_open(dir))) {
        if (error_errno() == ENOENT)
            error_set(ENOENT, "%s is not a repository (no catalog.db; create one with "
                              "'nbdvault init --repo %s')", dir, dir);
        else
            error_prefix("repository: ");
        goto fail;
    }
    if (!(r->catalog_path = path_in(store_state_dir(r->store), "catalog.db")))
        goto fail;
    if (access(r->catalog_path, F_OK) < 0) {
        if (!create) {
            error_set(ENOENT, "%s is not a repository (no catalog.db; create one with "
                              "'nbdvault init --repo %s')", dir, dir);
            goto fail;
        }
        if (auto_init(dir) < 0)
            goto fail;
    }
    if (!(r->cat = catalog_open(r->catalog_path))) {
        error_prefix("repository %s: ", dir);
        goto fail;
    }
    r->chunk_size = catalog_chunk_size(r->cat);
    char *desc;
    int f = catalog_repo_text_get(r->cat, "encryption", &desc);
    if (f < 0 || (f > 0 && keys_load(r, desc) < 0)) {
        free(desc);
        goto fail;
    }
    free(desc);
    return r;
fail:
    agent_repo_close(r);
    return NULL;
}

void agent_repo_close(struct agent_repo *r)
{
    if (!r)
        return;
    catalog_close(r->cat);
    store_close(r->store);
    keys_free(r);
    free(r->dir);
    free(r->catalog_path);
    free(r);
}

bool agent_repo_remote(const struct agent_repo *r)
{
    return r->remote;
}

uint64_t agent_repo_retries(const struct agent_repo *r)
{
    return store_retries(r->store);
}

uint32_t agent_repo_chunk_size(const struct agent_repo *r)
{
    return r->chunk_size;
}

void agent_progress_report(struct agent_progress *p, uint64_t done, uint64_t total, int force)
{
    if (!p->fn)
        return;
    double now = clock_mono_s();
    if (!force && now - p->last < 0.25)
        return;
    p->last = now;
    p->fn(p->opaque, done, total);
}

void agent_notify(agent_warn_fn fn, void *opaque, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;

    if (!fn)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fn(opaque, msg);
}

int agent_disk_id(struct agent_repo *r, const char *name, int64_t *id)
{
    int f = catalog_disk_find(r->cat, name, id);
    if (f == 0)
        error_set(ENOENT, "the repository has no disk named \"%s\"", name);
    return f > 0 ? 0 : -1;
}

struct point_list_ctx {
    int (*fn)(void *opaque, const struct agent_point *p);
    void *opaque;
};

static int list_one(void *opaque, const struct catalog_point *cp)
{
    struct point_list_ctx *l = opaque;
    struct agent_point p = {
        .id = cp->id,
        .parent = cp->parent,
        .full = cp->full,
        .started = cp->started,
        .finished = cp->finished,
        .disk_size = cp->disk_size,
        .bytes_stored = cp->bytes_stored,
        .bytes_read = cp->bytes_read,
    };
    snprintf(p.disk, sizeof p.disk, "%s", cp->disk);
    snprintf(p.source_uri, sizeof p.source_uri, "%s", cp->source_uri);
    snprintf(p.bitmap, sizeof p.bitmap, "%s", cp->bitmap);
    snprintf(p.source_kind, sizeof p.source_kind, "%s", cp->source_kind);
    snprintf(p.vm_uuid, sizeof p.vm_uuid, "%s", cp->vm_uuid);
    snprintf(p.checkpoint, sizeof p.checkpoint, "%s", cp->checkpoint);
    snprintf(p.full_reason, sizeof p.full_reason, "%s", cp->full_reason);
    return l->fn(l->opaque, &p);
}

int agent_list(struct agent_repo *r, const char *disk,
               int (*fn)(void *opaque, const struct agent_point *p), void *opaque)
{
    struct point_list_ctx l = { fn, opaque };
    return catalog_point_list(r->cat, disk, list_one, &l);
}

/* The lock of `nbdvault run`: an flock on run.lock in the repository, held
 * as long as the returned descriptor is open (a killed run's lock goes
 * with its process).  The file holds the holder's pid and host, for the
 * message of the one refused. */
int agent_repo_run_lock(struct agent_repo *r)
{
    char *path = path_in(store_state_dir(r->store), "run.lock");
    char host[256] = "";
    int fd;

    if (!path)
        return -1;
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        error_set(errno, "%s: %s", path, strerror(errno));
        free(path);
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int err = errno;
        char holder[300] = "";
        ssize_t n = pread(fd, holder, sizeof holder - 1, 0);
        holder[n > 0 ? n : 0] = 0;
        holder[strcspn(holder, "\n")] = 0;
        if (err == EWOULDBLOCK)
            error_set(EBUSY, "repository %s: another nbdvault run holds it (%s)", r->dir,
                      holder[0] ? holder : "holder unknown");
        else
            error_set(err, "%s: %s", path, strerror(err));
        close(fd);
        free(path);
        return -1;
    }
    gethostname(host, sizeof host - 1);
    char line[400];
    int len = snprintf(line, sizeof line, "pid %d on %s since %lld\n", (int)getpid(), host,
                       (long long)time(NULL));
    if (ftruncate(fd, 0) < 0 || pwrite(fd, line, (size_t)len, 0) < 0) {
        /* the lock holds without its note */
    }
    free(path);
    return fd;
}

int agent_read_lock(struct agent_repo *r, const char *task, const char *disk, agent_warn_fn warn,
                    void *opaque, struct agent_read_lock *l)
{
    char broken[512];
    bool said = false;

    memset(l, 0, sizeof *l);
    /* "restore:" is the catalog's class of readers that only gc excludes. */
    snprintf(l->name, sizeof l->name, "restore:%s-%d", task, (int)getpid());
    for (int waited = 0; catalog_lock(r->cat, l->name, broken, sizeof broken) < 0; waited++) {
        if (error_errno() != EBUSY || waited >= AGENT_GC_WAIT_S)
            return -1;
        if (!said)
            agent_notify(warn, opaque, "waiting for the repository: %s", error_msg());
        said = true;
        sleep(1);
    }
    l->held = true;
    if (broken[0])
        agent_notify(warn, opaque, "%s", broken);
    if (r->remote && agent_bucket_lock(r, false, task, disk, AGENT_GC_WAIT_S, warn, opaque, &l->rl) < 0) {
        agent_read_unlock(r, l);
        return -1;
    }
    return 0;
}

void agent_read_unlock(struct agent_repo *r, struct agent_read_lock *l)
{
    struct error_saved e;

    error_save(&e);
    remote_unlock(l->rl);
    l->rl = NULL;
    if (l->held)
        catalog_unlock(r->cat, l->name);
    l->held = false;
    error_restore(&e);
}

int agent_chunk_encode(const struct agent_repo *r, void *cctx, int level, const uint8_t *plain,
                       size_t len, const uint8_t id[32], uint8_t *out, size_t cap, uint8_t *sealed,
                       const void **stored, size_t *stored_len, uint8_t *codec)
{
    if (chunk_compress(cctx, level, plain, len, out, cap, stored, stored_len, codec) < 0)
        return -1;
    if (!r->encrypted)
        return 0;
    if (!r->keys) {
        error_set(EACCES, "repository %s is encrypted: its key is needed to write", r->dir);
        return -1;
    }
    if (chunk_seal(r->keys, id, codec, (uint32_t)len, *stored, *stored_len, sealed) < 0)
        return -1;
    *stored = sealed;
    *stored_len += CRYPT_OVERHEAD;
    return 0;
}

int agent_chunk_read(struct pack_reader *r, const struct catalog_chunk *ch, void *out)
{
    struct pack_entry e = { .codec = ch->codec, .stored_len = ch->stored_len,
                            .plain_len = ch->plain_len, .crc = ch->crc, .offset = ch->offset };

    memcpy(e.hash, ch->hash, PACK_HASH_LEN);
    return pack_reader_get(r, ch->pack, &e, out);
}
