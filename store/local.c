/* store/local.c: the local directory backend.
 *
 * An object is the file DIR/KEY.  A put writes DIR/STEM.tmp (KEY with its
 * last extension replaced by ".tmp"), fsyncs it, renames it to DIR/KEY and
 * fsyncs every directory from the file's up to DIR (DIR itself too when
 * the put created one of its folders): another put may have created a
 * folder and not synced it yet.  The file is opened with O_DIRECT where
 * the file system takes it: data goes from the caller's buffer to the
 * device without a copy into the page cache (ext4's buffered write was 12%
 * of an incremental backup's CPU), and a backup does not push the host's
 * cached data out.  Direct writes are whole aligned blocks; a last short
 * one is padded and the file truncated to its size at commit.  Elsewhere
 * (or when a direct write is refused with EINVAL) the writes are buffered,
 * with writeback started every few MiB so that the fsync at the end finds
 * little left to write (a 32 MiB pack's fsync 17 ms -> 0.3 ms).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fsync.h"
#include "store/internal.h"

#define WRITEBACK_EVERY (4u * 1024 * 1024)

struct local {
    struct store base;
    char dir[PATH_MAX];
};

struct local_put {
    struct store_put base;
    char path[PATH_MAX];           /* DIR/KEY */
    char tmp[PATH_MAX];            /* DIR/STEM.tmp */
    bool new_top;                  /* this put created a folder right under DIR */
    int fd;                        /* -1 once closed */
    bool direct;
    bool committed;
    uint64_t size;                 /* bytes written */
    uint64_t unsynced;             /* buffered: bytes since writeback was started */
};

struct local_obj {
    struct store_obj base;
    char path[PATH_MAX];
    int fd;
    uint64_t size;
};

static struct local *L(const struct store *s)
{
    return (struct local *)s;
}

static int path_of(const struct local *l, const char *key, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%s", l->dir, key);

    if (n < 0 || (size_t)n >= cap) {
        error_set(ENAMETOOLONG, "path %s/%s is too long", l->dir, key);
        return -1;
    }
    return 0;
}

/* The directories from path's parent up to (not including) dir, then dir
 * itself when with_root: fsynced. */
static int fsync_parents(const char *dir, const char *path, bool with_root)
{
    char p[PATH_MAX];
    size_t root = strlen(dir);
    char *slash;

    snprintf(p, sizeof p, "%s", path);
    while ((slash = strrchr(p, '/')) && (size_t)(slash - p) > root) {
        *slash = 0;
        if (fsync_dir(p) < 0) {
            error_set(errno, "fsync %s: %s", p, strerror(errno));
            return -1;
        }
    }
    if (with_root && fsync_dir(dir) < 0) {
        error_set(errno, "fsync %s: %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

/* Creates the folders of path below dir; *new_top tells whether the one
 * right under dir is new (then dir itself needs a sync). */
static int make_parents(const char *dir, const char *path, bool *new_top)
{
    char p[PATH_MAX];
    size_t root = strlen(dir);
    bool first = true;

    *new_top = false;
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + root + 1; (s = strchr(s, '/')); s++, first = false) {
        *s = 0;
        if (mkdir(p, 0700) == 0) {
            if (first)
                *new_top = true;
        } else if (errno != EEXIST) {
            error_set(errno, "create %s: %s", p, strerror(errno));
            return -1;
        }
        *s = '/';
    }
    return 0;
}

/* ---- Writing ------------------------------------------------------------ */

static struct store_put *local_put_begin(struct store *s, const char *key)
{
    struct local *l = L(s);
    struct local_put *p = calloc(1, sizeof *p);
    char *dot, *slash;

    if (!p) {
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    p->base.s = s;
    p->fd = -1;
    if (path_of(l, key, p->path, sizeof p->path) < 0)
        goto fail;
    strcpy(p->tmp, p->path);
    dot = strrchr(p->tmp, '.');
    slash = strrchr(p->tmp, '/');
    if (dot && dot > slash)
        *dot = 0;
    if (strlen(p->tmp) + 5 > sizeof p->tmp) {
        error_set(ENAMETOOLONG, "path %s is too long", p->path);
        goto fail;
    }
    strcat(p->tmp, ".tmp");
    if (make_parents(l->dir, p->path, &p->new_top) < 0)
        goto fail;
    p->fd = open(p->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (p->fd < 0) {
        error_set(errno, "create %s: %s", p->tmp, strerror(errno));
        goto fail;
    }
    int fl = fcntl(p->fd, F_GETFL);
    p->direct = store_direct && fl >= 0 && fcntl(p->fd, F_SETFL, fl | O_DIRECT) == 0;
    return &p->base;
fail:
    free(p);
    return NULL;
}

static int pwrite_full(int fd, const uint8_t *b, size_t len, uint64_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, b, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO;
            return -1;
        }
        b += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static int buffered(struct local_put *p)
{
    int fl = fcntl(p->fd, F_GETFL);

    if (fl < 0 || fcntl(p->fd, F_SETFL, fl & ~O_DIRECT) < 0)
        return -1;
    p->direct = false;
    return 0;
}

static int write_at(struct local_put *p, uint8_t *b, size_t len, size_t cap)
{
    if (p->direct) {
        size_t padded = (len + STORE_ALIGN - 1) & ~(size_t)(STORE_ALIGN - 1);
        if (p->size % STORE_ALIGN == 0 && (uintptr_t)b % STORE_ALIGN == 0 && padded <= cap) {
            memset(b + len, 0, padded - len);
            if (pwrite_full(p->fd, b, padded, p->size) == 0)
                return 0;
            if (errno != EINVAL)
                return -1;
        }
        /* Refused (an alignment this device wants, say) or not aligned:
         * buffered from here on. */
        if (buffered(p) < 0)
            return -1;
    }
    if (pwrite_full(p->fd, b, len, p->size) < 0)
        return -1;
    p->unsynced += len;
    if (p->unsynced >= WRITEBACK_EVERY) {
        /* Only a hint: a failure shows up again at the fsync. */
        (void)sync_file_range(p->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        p->unsynced = 0;
    }
    return 0;
}

static int local_put_write(struct store_put *sp, void *buf, size_t len, size_t cap)
{
    struct local_put *p = (struct local_put *)sp;

    if (p->fd < 0 || p->committed) {
        error_set(EINVAL, "write %s: already finished", p->path);
        return -1;
    }
    if (write_at(p, buf, len, cap) < 0) {
        error_set(errno, "write %s: %s", p->tmp, strerror(errno));
        return -1;
    }
    p->size += len;
    return 0;
}

static int local_put_commit(struct store_put *sp)
{
    struct local_put *p = (struct local_put *)sp;
    struct local *l = L(sp->s);
    int fd = p->fd;

    if (fd < 0 || p->committed) {
        error_set(EINVAL, "write %s: already finished", p->path);
        return -1;
    }
    /* Direct writes padded the last block. */
    if (ftruncate(fd, (off_t)p->size) < 0 || fsync(fd) < 0) {
        error_set(errno, "write %s: %s", p->tmp, strerror(errno));
        return -1;
    }
    p->fd = -1;
    if (close(fd) < 0 || rename(p->tmp, p->path) < 0) {
        error_set(errno, "write %s: %s", p->path, strerror(errno));
        unlink(p->tmp);
        return -1;
    }
    /* From here the final name exists: on failure take it back, so that
     * nothing not known to be durable stands under its key. */
    if (fsync_parents(l->dir, p->path, p->new_top) < 0) {
        int err = error_errno();
        unlink(p->path);
        errno = err;
        return -1;
    }
    p->committed = true;
    return 0;
}

static void local_put_free(struct store_put *sp)
{
    struct local_put *p = (struct local_put *)sp;

    if (p->fd >= 0) {
        close(p->fd);
        unlink(p->tmp);
    }
    free(p);
}

/* ---- Reading ------------------------------------------------------------ */

static struct store_obj *local_obj_open(struct store *s, const char *key)
{
    struct local_obj *o = calloc(1, sizeof *o);
    struct stat st;

    if (!o) {
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    o->base.s = s;
    if (path_of(L(s), key, o->path, sizeof o->path) < 0)
        goto fail;
    o->fd = open(o->path, O_RDONLY | O_CLOEXEC);
    if (o->fd < 0) {
        if (errno == ENOENT)
            error_set(ENOENT, "%s is missing", o->path);
        else
            error_set(errno, "open %s: %s", o->path, strerror(errno));
        goto fail;
    }
    if (fstat(o->fd, &st) < 0) {
        error_set(errno, "stat %s: %s", o->path, strerror(errno));
        close(o->fd);
        goto fail;
    }
    o->size = (uint64_t)st.st_size;
    return &o->base;
fail:
    free(o);
    return NULL;
}

static uint64_t local_obj_size(const struct store_obj *so)
{
    return ((const struct local_obj *)so)->size;
}

static ssize_t local_obj_read(struct store_obj *so, void *buf, size_t len, uint64_t off)
{
    struct local_obj *o = (struct local_obj *)so;
    uint8_t *b = buf;
    size_t done = 0;

    while (done < len) {
        ssize_t n = pread(o->fd, b + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            error_set(errno, "read %s at offset %llu: %s", o->path,
                      (unsigned long long)(off + done), strerror(errno));
            return -1;
        }
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

static void local_obj_close(struct store_obj *so)
{
    struct local_obj *o = (struct local_obj *)so;

    close(o->fd);
    free(o);
}

/* ---- Listing and removing ----------------------------------------------- */

static int not_dot(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

struct walk {
    struct local *l;
    const char *prefix;
    int (*fn)(void *opaque, const char *key, uint64_t size, bool partial);
    void *opaque;
};

/* Walks DIR/rel (rel "" or ending in '/'), sorted by name. */
static int walk_dir(struct walk *w, const char *rel)
{
    char path[PATH_MAX], key[STORE_KEY_MAX + 8];
    struct dirent **ents = NULL;
    int n, r = 0;

    if (snprintf(path, sizeof path, "%s/%s", w->l->dir, rel) >= (int)sizeof path) {
        error_set(ENAMETOOLONG, "path %s/%s is too long", w->l->dir, rel);
        return -1;
    }
    n = scandir(path, &ents, not_dot, alphasort);
    if (n < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return 0;              /* nothing written there yet; a stray file */
        error_set(errno, "list %s: %s", path, strerror(errno));
        return -1;
    }
    for (int i = 0; i < n && r == 0; i++) {
        struct stat st;
        int len = snprintf(key, sizeof key, "%s%s", rel, ents[i]->d_name);
        size_t plen = strlen(w->prefix);

        if (len < 0 || (size_t)len >= STORE_KEY_MAX)
            continue;              /* not a name this store writes */
        if (strncmp(key, w->prefix, (size_t)len < plen ? (size_t)len : plen) != 0)
            continue;
        if (snprintf(path, sizeof path, "%s/%s", w->l->dir, key) >= (int)sizeof path ||
            lstat(path, &st) < 0)
            continue;              /* gone since, or unreachable */
        if (S_ISDIR(st.st_mode)) {
            strcat(key, "/");
            r = walk_dir(w, key);
        } else if (S_ISREG(st.st_mode) && (size_t)len >= plen) {
            size_t kl = (size_t)len;
            bool partial = kl > 4 && strcmp(key + kl - 4, ".tmp") == 0;
            r = w->fn(w->opaque, key, (uint64_t)st.st_size, partial);
        }
    }
    for (int i = 0; i < n; i++)
        free(ents[i]);
    free(ents);
    return r;
}

static int local_list(struct store *s, const char *prefix,
                      int (*fn)(void *opaque, const char *key, uint64_t size, bool partial),
                      void *opaque)
{
    struct walk w = { L(s), prefix, fn, opaque };
    char rel[STORE_KEY_MAX];
    const char *slash = strrchr(prefix, '/');
    size_t n = slash ? (size_t)(slash - prefix) + 1 : 0;

    if (n >= sizeof rel) {
        error_set(EINVAL, "invalid prefix \"%s\"", prefix);
        return -1;
    }
    memcpy(rel, prefix, n);
    rel[n] = 0;
    return walk_dir(&w, rel);
}

static int local_stat(struct store *s, const char *key, uint64_t *size)
{
    char path[PATH_MAX];
    struct stat st;

    if (path_of(L(s), key, path, sizeof path) < 0)
        return -1;
    if (stat(path, &st) < 0) {
        if (errno == ENOENT)
            error_set(ENOENT, "%s is missing", path);
        else
            error_set(errno, "stat %s: %s", path, strerror(errno));
        return -1;
    }
    *size = (uint64_t)st.st_size;
    return 0;
}

static int local_remove(struct store *s, const char *key)
{
    struct local *l = L(s);
    char path[PATH_MAX], dir[PATH_MAX];

    if (path_of(l, key, path, sizeof path) < 0)
        return -1;
    if (unlink(path) < 0) {
        if (errno == ENOENT)
            error_set(ENOENT, "%s is missing", path);
        else
            error_set(errno, "remove %s: %s", path, strerror(errno));
        return -1;
    }
    strcpy(dir, path);
    *strrchr(dir, '/') = 0;
    if (fsync_dir(dir) < 0) {
        error_set(errno, "fsync %s: %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- The store ---------------------------------------------------------- */

static const char *local_state_dir(const struct store *s)
{
    return L(s)->dir;
}

static int local_display_name(const struct store *s, const char *key, char *out, size_t cap)
{
    return path_of(L(s), key, out, cap);
}

static void local_close(struct store *s)
{
    free(s->location);
    free(s);
}

static const struct store_ops local_ops = {
    .kind = "local",
    .close = local_close,
    .state_dir = local_state_dir,
    .display_name = local_display_name,
    .put_begin = local_put_begin,
    .put_write = local_put_write,
    .put_commit = local_put_commit,
    .put_free = local_put_free,
    .obj_open = local_obj_open,
    .obj_size = local_obj_size,
    .obj_read = local_obj_read,
    .obj_close = local_obj_close,
    .list = local_list,
    .stat = local_stat,
    .remove = local_remove,
};

struct store *store_local_open(const char *dir)
{
    struct local *l;
    struct stat st;

    if (stat(dir, &st) < 0) {
        error_set(errno, "%s: %s", dir, strerror(errno));
        return NULL;
    }
    if (!S_ISDIR(st.st_mode)) {
        error_set(ENOTDIR, "%s is not a directory", dir);
        return NULL;
    }
    if (strlen(dir) >= sizeof l->dir - STORE_KEY_MAX - 8) {
        error_set(ENAMETOOLONG, "path %s is too long", dir);
        return NULL;
    }
    l = calloc(1, sizeof *l);
    if (!l || !(l->base.location = strdup(dir))) {
        free(l);
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    l->base.ops = &local_ops;
    snprintf(l->dir, sizeof l->dir, "%s", dir);
    /* "repo/" and "repo" are the same store. */
    for (size_t n = strlen(l->dir); n > 1 && l->dir[n - 1] == '/'; n--)
        l->dir[n - 1] = 0;
    return &l->base;
}
