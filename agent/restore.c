/* restore.c: a restore point back to a file or to an NBD export.
 *
 * The point's map is resolved through its chain of parents (the catalog's
 * map iterator), data cells are read from the packs and checked against
 * their ids by worker threads, and written: by a writer thread into a
 * temporary file (O_DIRECT where it is taken) renamed over the output at
 * the end, or with pipelined WRITEs over a multi-conn pool.  Zero cells are holes in a file and WRITE_ZEROES on an
 * export (FAST_ZERO first when offered).  A damaged chunk stops the
 * restore with its name; a failed restore leaves no output file behind.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/internal.h"
#include "agent/pack.h"
#include "common/cpus.h"
#include "common/error.h"
#include "nbdcore/nbdcore.h"

#define NBUFS 32
#define DIO_ALIGN 4096
#define RESTORE_GC_WAIT_S 3600
#define WRITEBACK_EVERY (64u * 1024 * 1024)

struct item {
    struct item *next;
    uint64_t cell;
    struct catalog_chunk ch;
    uint8_t *buf;
    struct restore *rs;
};

struct restore {
    struct agent_repo *repo;
    const struct agent_restore_opts *o;
    uint32_t chunk;
    uint64_t size;
    int fd;                       /* file target */
    bool regular;
    struct nbd_pool *pool;        /* NBD target */
    bool can_zero, can_fast_zero;
    uint8_t *zeros;               /* for servers without WRITE_ZEROES */

    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct item items[NBUFS];
    struct item *free_list;
    struct item *todo_head, *todo_tail;   /* to decode */
    struct item *done_head;               /* decoded, to write (NBD) */
    unsigned busy;                        /* items not on the free list */
    bool stop;
    int efd;
    int err;
    char errmsg[1024];
    uint64_t written, zeroed;
    unsigned zeros_in_flight;
    uint64_t unsynced;            /* bytes written since writeback was started */
    struct agent_progress progress;


    /* File target: decoded chunks are written by a thread of their own
     * (under lock: wr_cond, wr_stop), with O_DIRECT where the output takes
     * it (direct: the writer may drop it, see file_write). */
    pthread_t wr_tid;
    bool wr_started, wr_stop;
    pthread_cond_t wr_cond;
    bool direct;
};

static void rfail(struct restore *rs, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void rfail(struct restore *rs, int err, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&rs->lock);
    if (!rs->err) {
        rs->err = err ? err : EIO;
        va_start(ap, fmt);
        vsnprintf(rs->errmsg, sizeof rs->errmsg, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&rs->lock);
}

static bool rfailed(struct restore *rs)
{
    pthread_mutex_lock(&rs->lock);
    bool f = rs->err != 0;
    pthread_mutex_unlock(&rs->lock);
    return f;
}

static void wake_main(struct restore *rs)
{
    uint64_t one = 1;
    if (write(rs->efd, &one, sizeof one) < 0) {
        /* the main thread polls with a timeout too */
    }
}

static void item_free(struct restore *rs, struct item *it)
{
    pthread_mutex_lock(&rs->lock);
    it->next = rs->free_list;
    rs->free_list = it;
    rs->busy--;
    pthread_cond_broadcast(&rs->cond);
    pthread_mutex_unlock(&rs->lock);
    wake_main(rs);
}

static uint64_t cell_bytes(const struct restore *rs, uint64_t cell)
{
    uint64_t off = cell * rs->chunk;
    return rs->size - off < rs->chunk ? rs->size - off : rs->chunk;
}

struct rworker {
    struct restore *rs;
    pthread_t tid;
    struct pack_reader *reader;
};

static void *rworker_main(void *opaque)
{
    struct rworker *w = opaque;
    struct restore *rs = w->rs;

    for (;;) {
        pthread_mutex_lock(&rs->lock);
        while (!rs->todo_head && !rs->stop)
            pthread_cond_wait(&rs->cond, &rs->lock);
        struct item *it = rs->todo_head;
        if (!it) {
            pthread_mutex_unlock(&rs->lock);
            return NULL;
        }
        rs->todo_head = it->next;
        if (!rs->todo_head)
            rs->todo_tail = NULL;
        bool skip = rs->err != 0;
        pthread_mutex_unlock(&rs->lock);
        if (skip) {
            item_free(rs, it);
            continue;
        }
        uint64_t len = cell_bytes(rs, it->cell);
        if (it->ch.plain_len != len) {
            rfail(rs, EIO, "cell %llu: chunk %lld holds %u bytes where the cell has %llu",
                  (unsigned long long)it->cell, (long long)it->ch.id, it->ch.plain_len,
                  (unsigned long long)len);
            item_free(rs, it);
            continue;
        }
        if (agent_chunk_read(w->reader, &it->ch, it->buf) < 0) {
            rfail(rs, error_errno(), "%s", error_msg());
            item_free(rs, it);
            continue;
        }
        /* One writer: the file's thread (consecutive cells in one
         * pwritev), or the main thread (pipelined WRITEs to NBD). */
        pthread_mutex_lock(&rs->lock);
        it->next = rs->done_head;
        rs->done_head = it;
        if (!rs->pool)
            pthread_cond_signal(&rs->wr_cond);
        pthread_mutex_unlock(&rs->lock);
        if (rs->pool)
            wake_main(rs);
    }
}

/* ---- NBD target: writes from the main thread ------------------------------ */

static void write_done(void *opaque, int err)
{
    struct item *it = opaque;
    struct restore *rs = it->rs;
    if (err)
        rfail(rs, err, "write to %s: %s", rs->o->to_uri, error_msg());
    else
        rs->written += cell_bytes(rs, it->cell);
    item_free(rs, it);
}

struct zero_req {
    struct restore *rs;
    uint64_t off, len;
    bool fast;
};

static void submit_zero(struct restore *rs, uint64_t off, uint64_t len, bool fast);

static void zero_done(void *opaque, int err)
{
    struct zero_req *z = opaque;
    struct restore *rs = z->rs;
    rs->zeros_in_flight--;
    if (err == ENOTSUP && z->fast) {
        /* Not faster than writing: zero it the ordinary way. */
        rs->can_fast_zero = false;
        submit_zero(rs, z->off, z->len, false);
    } else if (err) {
        rfail(rs, err, "write zeroes to %s: %s", rs->o->to_uri, error_msg());
    } else {
        rs->zeroed += z->len;
    }
    free(z);
}

static struct nbd_conn *pick_conn(struct restore *rs)
{
    struct nbd_conn *best = NULL;
    for (unsigned i = 0; i < nbd_pool_size(rs->pool); i++) {
        struct nbd_conn *c = nbd_pool_conn(rs->pool, i);
        if (!nbd_is_dead(c) && (!best || nbd_in_flight(c) < nbd_in_flight(best)))
            best = c;
    }
    return best;
}

static void submit_zero(struct restore *rs, uint64_t off, uint64_t len, bool fast)
{
    struct nbd_conn *c = pick_conn(rs);
    struct zero_req *z = malloc(sizeof *z);
    if (!c || !z) {
        free(z);
        rfail(rs, EIO, "write zeroes to %s: no connection", rs->o->to_uri);
        return;
    }
    *z = (struct zero_req){ rs, off, len, fast };
    if (nbd_aio_zero(c, len, off, fast ? NBD_CMD_FLAG_FAST_ZERO : 0, zero_done, z) < 0) {
        rfail(rs, error_errno(), "write zeroes to %s: %s", rs->o->to_uri, error_msg());
        free(z);
        return;
    }
    rs->zeros_in_flight++;
}

/* Zeros on a server without WRITE_ZEROES: written, one buffer at a time. */
static int write_zeros_sync(struct restore *rs, uint64_t off, uint64_t len)
{
    struct nbd_conn *c = nbd_pool_conn(rs->pool, 0);
    while (len) {
        uint64_t n = len < rs->chunk ? len : rs->chunk;
        if (nbd_pwrite(c, rs->zeros, n, off, 0) < 0) {
            error_prefix("write to %s: ", rs->o->to_uri);
            return -1;
        }
        rs->zeroed += n;
        off += n;
        len -= n;
    }
    return 0;
}

static void drain_done(struct restore *rs)
{
    pthread_mutex_lock(&rs->lock);
    struct item *list = rs->done_head;
    rs->done_head = NULL;
    pthread_mutex_unlock(&rs->lock);
    while (list) {
        struct item *it = list;
        list = it->next;
        struct nbd_conn *c = pick_conn(rs);
        if (rfailed(rs) || !c ||
            nbd_aio_pwrite(c, it->buf, cell_bytes(rs, it->cell), it->cell * rs->chunk, 0,
                           write_done, it) < 0) {
            if (!rfailed(rs))
                rfail(rs, error_errno(), "write to %s: %s", rs->o->to_uri, error_msg());
            item_free(rs, it);
        }
    }
}

static int cmp_item(const void *a, const void *b)
{
    const struct item *x = *(struct item *const *)a, *y = *(struct item *const *)b;
    return x->cell < y->cell ? -1 : x->cell > y->cell;
}

/* One run of consecutive cells to the file (the writer thread): 0, or -1
 * with errno.  A direct write the output refuses (EINVAL: an unaligned
 * last cell, a device that wants more) switches the file to buffered
 * writes and is done again. */
static int file_write(struct restore *rs, struct iovec *v, int cnt, uint64_t off, size_t left)
{
    while (left) {
        ssize_t w = pwritev(rs->fd, v, cnt, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EINVAL && __atomic_load_n(&rs->direct, __ATOMIC_RELAXED)) {
            int fl = fcntl(rs->fd, F_GETFL);
            if (fl < 0 || fcntl(rs->fd, F_SETFL, fl & ~O_DIRECT) < 0)
                return -1;
            __atomic_store_n(&rs->direct, false, __ATOMIC_RELAXED);
            continue;
        }
        if (w <= 0) {
            if (w == 0)
                errno = EIO;
            return -1;
        }
        left -= (size_t)w;
        off += (uint64_t)w;
        while (cnt && (size_t)w >= v->iov_len) {
            w -= (ssize_t)v->iov_len;
            v++;
            cnt--;
        }
        if (cnt && w) {
            v->iov_base = (uint8_t *)v->iov_base + w;
            v->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* The file target's writer: decoded chunks, sorted, consecutive cells
 * gathered into one pwritev each; at most half the buffers at a time, so
 * that the workers always have some to decode into while it writes. */
static void *file_writer_main(void *opaque)
{
    struct restore *rs = opaque;
    struct item *its[NBUFS / 2];

    pthread_mutex_lock(&rs->lock);
    for (;;) {
        while (!rs->done_head && !rs->wr_stop)
            pthread_cond_wait(&rs->wr_cond, &rs->lock);
        if (!rs->done_head)
            break;
        size_t n = 0;
        while (rs->done_head && n < NBUFS / 2) {
            its[n++] = rs->done_head;
            rs->done_head = rs->done_head->next;
        }
        bool failed = rs->err != 0;
        pthread_mutex_unlock(&rs->lock);
        qsort(its, n, sizeof *its, cmp_item);
        for (size_t i = 0; i < n;) {
            struct iovec iov[NBUFS / 2];
            size_t j = i, total = 0;
            while (j < n && (j == i || its[j]->cell == its[j - 1]->cell + 1)) {
                iov[j - i].iov_base = its[j]->buf;
                iov[j - i].iov_len = cell_bytes(rs, its[j]->cell);
                total += iov[j - i].iov_len;
                j++;
            }
            if (!failed) {
                if (file_write(rs, iov, (int)(j - i), its[i]->cell * rs->chunk, total) < 0) {
                    rfail(rs, errno, "write %s: %s", rs->o->output, strerror(errno));
                    failed = true;
                } else {
                    __atomic_fetch_add(&rs->written, total, __ATOMIC_RELAXED);
                    /* Buffered: start writeback as we go, so that the final
                     * fsync does not find the whole disk still in the page
                     * cache (only a hint: a failure shows up again at the
                     * fsync).  This thread may block in it; the workers go
                     * on decoding into the other half of the buffers. */
                    rs->unsynced += total;
                    if (!__atomic_load_n(&rs->direct, __ATOMIC_RELAXED) &&
                        rs->unsynced >= WRITEBACK_EVERY) {
                        (void)sync_file_range(rs->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
                        rs->unsynced = 0;
                    }
                }
            }
            for (size_t k = i; k < j; k++)
                item_free(rs, its[k]);
            i = j;
        }
        pthread_mutex_lock(&rs->lock);
    }
    pthread_mutex_unlock(&rs->lock);
    return NULL;
}

static void file_writer_stop(struct restore *rs)
{
    if (!rs->wr_started)
        return;
    pthread_mutex_lock(&rs->lock);
    rs->wr_stop = true;
    pthread_cond_broadcast(&rs->wr_cond);
    pthread_mutex_unlock(&rs->lock);
    pthread_join(rs->wr_tid, NULL);
    rs->wr_started = false;
}

/* Waits for something to happen: an NBD reply, or a worker's signal. */
static void rwait(struct restore *rs)
{
    if (rs->pool) {
        if (nbd_pool_poll(rs->pool, rs->efd, 250) > 0) {
            uint64_t v;
            if (read(rs->efd, &v, sizeof v) < 0) {
                /* nothing */
            }
        }
        drain_done(rs);
    } else {
        /* The writer thread frees buffers and signals. */
        struct pollfd p = { .fd = rs->efd, .events = POLLIN };
        if (poll(&p, 1, 250) > 0) {
            uint64_t v;
            if (read(rs->efd, &v, sizeof v) < 0) {
                /* nothing */
            }
        }
    }
    agent_progress_report(&rs->progress,
                          __atomic_load_n(&rs->written, __ATOMIC_RELAXED) + rs->zeroed, rs->size, 0);
}

static struct item *get_item(struct restore *rs)
{
    for (;;) {
        pthread_mutex_lock(&rs->lock);
        struct item *it = rs->free_list;
        if (it) {
            rs->free_list = it->next;
            rs->busy++;
        }
        pthread_mutex_unlock(&rs->lock);
        if (it)
            return it;
        if (rfailed(rs))
            return NULL;
        rwait(rs);
    }
}

static int fsync_parent(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return -1;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    free(copy);
    if (fd < 0)
        return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

/* Takes the restore's lock, waiting (up to RESTORE_GC_WAIT_S) while a gc
 * holds the repository. */
static int restore_lock(struct agent_repo *r, const struct agent_restore_opts *o, const char *name)
{
    char broken[512];
    bool said = false;
    for (int waited = 0;; waited++) {
        if (catalog_lock(r->cat, name, broken, sizeof broken) == 0) {
            if (broken[0] && o->warn)
                o->warn(o->opaque, broken);
            return 0;
        }
        if (error_errno() != EBUSY || waited >= RESTORE_GC_WAIT_S)
            return -1;
        if (!said && o->warn) {
            char msg[1200];
            snprintf(msg, sizeof msg, "waiting for the repository: %s", error_msg());
            o->warn(o->opaque, msg);
            said = true;
        }
        sleep(1);
    }
}

int agent_restore(struct agent_repo *r, const struct agent_restore_opts *o,
                  struct agent_restore_result *res)
{
    struct restore rs = { .repo = r, .o = o, .chunk = r->chunk_size, .fd = -1, .efd = -1 };
    struct rworker workers[CPUS_MAX_WORKERS];
    unsigned nwant = cpus_workers();
    struct catalog_point pt;
    struct catalog_map *map = NULL;
    char *tmp = NULL;
    int ret = -1;
    double t0 = agent_now();
    unsigned nworkers = 0;
    bool snapshot = false, locked = false;
    char lockname[64];

    memset(workers, 0, sizeof workers);
    memset(res, 0, sizeof *res);
    pthread_mutex_init(&rs.lock, NULL);
    pthread_cond_init(&rs.cond, NULL);
    pthread_cond_init(&rs.wr_cond, NULL);
    rs.progress = (struct agent_progress){ o->progress, o->opaque, 0 };

    /* A lock that only gc conflicts with: gc never moves or deletes a
     * chunk this restore may still read; a gc under way is waited for. */
    snprintf(lockname, sizeof lockname, "restore:%d", (int)getpid());
    if (restore_lock(r, o, lockname) < 0)
        goto out;
    locked = true;

    /* One read snapshot for the whole restore: a prune committing meanwhile
     * cannot mix two states of the chain. */
    if (catalog_snapshot_begin(r->cat) < 0)
        goto out;
    snapshot = true;

    /* Which point. */
    int64_t disk_id;
    int f = catalog_disk_find(r->cat, o->disk, &disk_id);
    if (f <= 0) {
        if (f == 0)
            error_set(ENOENT, "the repository has no disk named \"%s\"", o->disk);
        goto out;
    }
    f = o->point ? catalog_point_get(r->cat, o->point, &pt) : catalog_point_latest(r->cat, disk_id, &pt);
    if (f < 0)
        goto out;
    if (f == 0 || !pt.complete || pt.disk_id != disk_id) {
        if (o->point)
            error_set(ENOENT, "disk \"%s\" has no restore point %lld", o->disk, (long long)o->point);
        else
            error_set(ENOENT, "disk \"%s\" has no restore point", o->disk);
        goto out;
    }
    rs.size = pt.disk_size;
    uint64_t ncells = (rs.size + rs.chunk - 1) / rs.chunk;

    /* The target. */
    if (o->to_uri) {
        rs.pool = nbd_pool_open(o->to_uri, NULL, o->connections ? o->connections : AGENT_DEFAULT_CONNECTIONS);
        if (!rs.pool) {
            error_prefix("%s: ", o->to_uri);
            goto out;
        }
        struct nbd_conn *c0 = nbd_pool_conn(rs.pool, 0);
        if (nbd_get_flags(c0) & NBD_FLAG_READ_ONLY) {
            error_set(EROFS, "%s: the export is read-only", o->to_uri);
            goto out;
        }
        if (nbd_get_size(c0) < rs.size) {
            error_set(ENOSPC, "%s: the export (%llu bytes) is smaller than the disk (%llu bytes)",
                      o->to_uri, (unsigned long long)nbd_get_size(c0), (unsigned long long)rs.size);
            goto out;
        }
        rs.can_zero = nbd_can(c0, NBD_FLAG_SEND_WRITE_ZEROES);
        rs.can_fast_zero = nbd_can(c0, NBD_FLAG_SEND_FAST_ZERO);
        if (!rs.can_zero && !(rs.zeros = calloc(1, rs.chunk))) {
            error_set(ENOMEM, "out of memory");
            goto out;
        }
    } else {
        struct stat st;
        bool exists = stat(o->output, &st) == 0;
        rs.regular = !exists || S_ISREG(st.st_mode);
        if (rs.regular) {
            if (asprintf(&tmp, "%s.nbdvault-tmp", o->output) < 0) {
                tmp = NULL;
                error_set(ENOMEM, "out of memory");
                goto out;
            }
            rs.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        } else {
            rs.fd = open(o->output, O_WRONLY | O_CLOEXEC);
        }
        if (rs.fd < 0) {
            error_set(errno, "open %s: %s", tmp ? tmp : o->output, strerror(errno));
            goto out;
        }
        if (rs.regular && ftruncate(rs.fd, (off_t)rs.size) < 0) {
            error_set(errno, "%s: cannot set its size to %llu: %s", o->output,
                      (unsigned long long)rs.size, strerror(errno));
            goto out;
        }
        if (!rs.regular) {
            if (!(rs.zeros = aligned_alloc(DIO_ALIGN, rs.chunk))) {
                error_set(ENOMEM, "out of memory");
                goto out;
            }
            memset(rs.zeros, 0, rs.chunk);
        }
        /* Direct writes where the output takes them: the restored disk goes
         * to the device without a copy into the page cache (2 GiB of
         * buffered writes cost the restore a core-second here), and the
         * host's cached data stays.  Buffers are aligned for it. */
        int fl = fcntl(rs.fd, F_GETFL);
        rs.direct = fl >= 0 && fcntl(rs.fd, F_SETFL, fl | O_DIRECT) == 0;
        if (pthread_create(&rs.wr_tid, NULL, file_writer_main, &rs) != 0) {
            error_set(EAGAIN, "cannot start the writer thread");
            goto out;
        }
        rs.wr_started = true;
    }

    if ((rs.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        error_set(errno, "eventfd: %s", strerror(errno));
        goto out;
    }
    for (unsigned i = 0; i < NBUFS; i++) {
        rs.items[i].rs = &rs;
        if (!(rs.items[i].buf = aligned_alloc(DIO_ALIGN, rs.chunk))) {
            error_set(ENOMEM, "out of memory");
            goto out;
        }
        rs.items[i].next = rs.free_list;
        rs.free_list = &rs.items[i];
    }
    for (; nworkers < nwant; nworkers++) {
        workers[nworkers].rs = &rs;
        if (!(workers[nworkers].reader = pack_reader_open(r->store)))
            goto stop;
        if (pthread_create(&workers[nworkers].tid, NULL, rworker_main, &workers[nworkers]) != 0) {
            pack_reader_close(workers[nworkers].reader);
            error_set(EAGAIN, "cannot start a worker thread");
            goto stop;
        }
    }

    if (!(map = catalog_map_open(r->cat, pt.id, 0, ncells)))
        goto stop;
    agent_progress_report(&rs.progress, 0, rs.size, 1);
    struct catalog_run run;
    int m = 0;
    while (!rfailed(&rs) && (m = catalog_map_next(map, &run)) > 0) {
        uint64_t off = run.first_cell * rs.chunk;
        uint64_t end = (run.first_cell + run.count) * rs.chunk;
        if (end > rs.size)
            end = rs.size;
        if (run.chunk_id == 0) {
            if (rs.pool) {
                if (rs.can_zero)
                    submit_zero(&rs, off, end - off, rs.can_fast_zero);
                else if (write_zeros_sync(&rs, off, end - off) < 0)
                    rfail(&rs, error_errno(), "%s", error_msg());
            } else if (!rs.regular) {
                for (uint64_t p = off; p < end && !rfailed(&rs); p += rs.chunk) {
                    uint64_t n = end - p < rs.chunk ? end - p : rs.chunk;
                    struct iovec z = { rs.zeros, n };
                    if (file_write(&rs, &z, 1, p, n) < 0)
                        rfail(&rs, errno, "write %s: %s", o->output, strerror(errno));
                }
            } else {
                rs.zeroed += end - off; /* a hole of the sparse file */
            }
            continue;
        }
        struct catalog_chunk ch;
        int g = catalog_chunk_get(r->cat, run.chunk_id, &ch);
        if (g <= 0) {
            if (g == 0)
                error_set(EIO, "cell %llu: chunk %lld is not in the catalog",
                          (unsigned long long)run.first_cell, (long long)run.chunk_id);
            rfail(&rs, error_errno(), "%s", error_msg());
            break;
        }
        for (uint64_t cell = run.first_cell; cell < run.first_cell + run.count; cell++) {
            struct item *it = get_item(&rs);
            if (!it)
                break;
            it->cell = cell;
            it->ch = ch;
            pthread_mutex_lock(&rs.lock);
            it->next = NULL;
            if (rs.todo_tail)
                rs.todo_tail->next = it;
            else
                rs.todo_head = it;
            rs.todo_tail = it;
            pthread_cond_broadcast(&rs.cond);
            pthread_mutex_unlock(&rs.lock);
        }
        if (rs.pool)
            drain_done(&rs);
    }
    if (m < 0 && !rfailed(&rs))
        rfail(&rs, error_errno(), "%s", error_msg());

    /* Wait for every chunk and every write. */
    for (;;) {
        pthread_mutex_lock(&rs.lock);
        unsigned busy = rs.busy;
        pthread_mutex_unlock(&rs.lock);
        if (!busy && !rs.zeros_in_flight)
            break;
        rwait(&rs);
    }

stop:
    pthread_mutex_lock(&rs.lock);
    rs.stop = true;
    pthread_cond_broadcast(&rs.cond);
    pthread_mutex_unlock(&rs.lock);
    for (unsigned i = 0; i < nworkers; i++) {
        pthread_join(workers[i].tid, NULL);
        pack_reader_close(workers[i].reader);
    }
    file_writer_stop(&rs);
    if (rs.err) {
        error_set(rs.err, "%s", rs.errmsg);
        goto out;
    }
    if (nworkers < nwant || !map)
        goto out;

    /* Durable before we say so. */
    if (rs.pool) {
        if (nbd_pool_flush(rs.pool) < 0) {
            error_prefix("flush %s: ", o->to_uri);
            goto out;
        }
    } else {
        /* A special file that cannot sync (EINVAL: /dev/null, say) has
         * nothing to make durable. */
        if (fsync(rs.fd) < 0 && !(errno == EINVAL && !rs.regular)) {
            error_set(errno, "fsync %s: %s", o->output, strerror(errno));
            goto out;
        }
        if (tmp) {
            if (rename(tmp, o->output) < 0) {
                error_set(errno, "rename %s to %s: %s", tmp, o->output, strerror(errno));
                goto out;
            }
            free(tmp);
            tmp = NULL;
            fsync_parent(o->output);
        }
    }
    agent_progress_report(&rs.progress, rs.size, rs.size, 1);
    res->point = pt.id;
    res->disk_size = rs.size;
    res->bytes_written = rs.written;
    res->bytes_zero = rs.zeroed;
    res->seconds = agent_now() - t0;
    ret = 0;
out:
    file_writer_stop(&rs);
    if (ret < 0 && tmp) {
        struct error_saved e;
        error_save(&e);
        unlink(tmp);
        error_restore(&e);
    }
    catalog_map_close(map);
    if (snapshot)
        catalog_snapshot_end(r->cat);
    if (locked) {
        struct error_saved e;
        error_save(&e);
        catalog_unlock(r->cat, lockname);
        error_restore(&e);
    }
    if (rs.fd >= 0)
        close(rs.fd);
    nbd_pool_close(rs.pool);
    if (rs.efd >= 0)
        close(rs.efd);
    for (unsigned i = 0; i < NBUFS; i++)
        free(rs.items[i].buf);
    free(rs.zeros);
    free(tmp);
    pthread_mutex_destroy(&rs.lock);
    pthread_cond_destroy(&rs.cond);
    pthread_cond_destroy(&rs.wr_cond);
    return ret;
}
