/* sink-file.c: a restore into a file or a device (see sink.h). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "agent/sink.h"
#include "common/error.h"
#include "common/fsync.h"

/* The most blocks one pwritev gathers; the workers keep the rest of the
 * queue's buffers to decode into meanwhile. */
#define GATHER 16
#define WRITEBACK_EVERY (64u * 1024 * 1024)

struct fsink {
    struct sink k;                /* first */
    char *path, *tmp;             /* tmp: a regular file's, renamed at commit */
    int fd;
    bool regular;
    bool committed;
    uint8_t *zeros;               /* special files: a chunk of zeros to write */
    bool direct;                  /* O_DIRECT on (the writer may drop it) */
    uint64_t unsynced;            /* bytes written since writeback was started */

    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct sink_block *head;      /* decoded, to write (linked through q.next) */
    bool stop;
    pthread_t tid;
    bool started;
};

static struct fsink *F(struct sink *k)
{
    return (struct fsink *)k;
}

/* One run of consecutive blocks: 0, or -1 with errno.  A direct write the
 * output refuses (EINVAL: an unaligned last cell, a device that wants
 * more) switches the file to buffered writes and is done again. */
static int file_write(struct fsink *f, struct iovec *v, int cnt, uint64_t off, size_t left)
{
    while (left) {
        ssize_t w = pwritev(f->fd, v, cnt, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EINVAL && __atomic_load_n(&f->direct, __ATOMIC_RELAXED)) {
            int fl = fcntl(f->fd, F_GETFL);
            if (fl < 0 || fcntl(f->fd, F_SETFL, fl & ~O_DIRECT) < 0)
                return -1;
            __atomic_store_n(&f->direct, false, __ATOMIC_RELAXED);
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

static int cmp_block(const void *a, const void *b)
{
    const struct sink_block *x = *(struct sink_block *const *)a, *y = *(struct sink_block *const *)b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Writes blks[0..n) (sorted), consecutive ones gathered, and releases them. */
static void write_blocks(struct fsink *f, struct sink_block **blks, size_t n)
{
    bool failed = workq_failed(f->k.q);
    for (size_t i = 0; i < n;) {
        struct iovec iov[GATHER];
        size_t j = i, total = 0;
        while (j < n && j - i < GATHER && (j == i || blks[j]->off == blks[j - 1]->off + blks[j - 1]->len)) {
            iov[j - i] = (struct iovec){ blks[j]->buf, blks[j]->len };
            total += blks[j]->len;
            j++;
        }
        if (!failed && file_write(f, iov, (int)(j - i), blks[i]->off, total) < 0) {
            latch_set(workq_latch(f->k.q), errno, "write %s: %s", f->path, strerror(errno));
            failed = true;
        } else if (!failed) {
            __atomic_fetch_add(&f->k.written, total, __ATOMIC_RELAXED);
            /* Buffered: start writeback as we go, so that the final fsync
             * does not find the whole disk still in the page cache (only a
             * hint: a failure shows up again at the fsync).  This thread
             * may block in it; the workers go on decoding meanwhile. */
            f->unsynced += total;
            if (!__atomic_load_n(&f->direct, __ATOMIC_RELAXED) && f->unsynced >= WRITEBACK_EVERY) {
                (void)sync_file_range(f->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
                f->unsynced = 0;
            }
        }
        for (size_t k = i; k < j; k++)
            workq_release(f->k.q, &blks[k]->q);
        i = j;
    }
}

/* The writer thread: decoded blocks, GATHER at a time, sorted. */
static void *writer_main(void *opaque)
{
    struct fsink *f = opaque;

    pthread_setname_np(pthread_self(), "nbdvault-write");
    struct sink_block *blks[GATHER];

    pthread_mutex_lock(&f->lock);
    for (;;) {
        while (!f->head && !f->stop)
            pthread_cond_wait(&f->cond, &f->lock);
        if (!f->head)
            break;
        size_t n = 0;
        while (f->head && n < GATHER) {
            blks[n++] = f->head;
            f->head = (struct sink_block *)f->head->q.next;
        }
        pthread_mutex_unlock(&f->lock);
        qsort(blks, n, sizeof *blks, cmp_block);
        write_blocks(f, blks, n);
        pthread_mutex_lock(&f->lock);
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

static void writer_stop(struct fsink *f)
{
    if (!f->started)
        return;
    pthread_mutex_lock(&f->lock);
    f->stop = true;
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
    pthread_join(f->tid, NULL);
    f->started = false;
}

static void fs_put(struct sink *k, struct sink_block *blk)
{
    struct fsink *f = F(k);
    pthread_mutex_lock(&f->lock);
    blk->q.next = (struct workq_item *)f->head;
    f->head = blk;
    pthread_cond_signal(&f->cond);
    pthread_mutex_unlock(&f->lock);
}

static void fs_zero(struct sink *k, uint64_t off, uint64_t len)
{
    struct fsink *f = F(k);
    if (f->regular) {
        __atomic_fetch_add(&k->zeroed, len, __ATOMIC_RELAXED); /* a hole of the sparse file */
        return;
    }
    for (uint64_t p = off; p < off + len && !workq_failed(k->q); p += k->chunk) {
        uint64_t n = off + len - p < k->chunk ? off + len - p : k->chunk;
        struct iovec z = { f->zeros, n };
        if (file_write(f, &z, 1, p, n) < 0)
            latch_set(workq_latch(k->q), errno, "write %s: %s", f->path, strerror(errno));
        else
            __atomic_fetch_add(&k->zeroed, n, __ATOMIC_RELAXED);
    }
}

static void fs_wait(struct sink *k, int ms)
{
    /* The writer thread releases blocks, which wakes the queue's eventfd. */
    workq_wait(k->q, ms);
}

static bool fs_busy(struct sink *k)
{
    (void)k;
    return false;
}

static int fs_commit(struct sink *k)
{
    struct fsink *f = F(k);
    writer_stop(f);
    if (latch_raise(workq_latch(k->q)) < 0)
        return -1;
    /* A special file that cannot sync (EINVAL: /dev/null, say) has nothing
     * to make durable. */
    if (fsync(f->fd) < 0 && !(errno == EINVAL && !f->regular)) {
        error_set(errno, "fsync %s: %s", f->path, strerror(errno));
        return -1;
    }
    if (f->tmp) {
        if (rename(f->tmp, f->path) < 0) {
            error_set(errno, "rename %s to %s: %s", f->tmp, f->path, strerror(errno));
            return -1;
        }
        free(f->tmp);
        f->tmp = NULL;
        (void)fsync_parent(f->path);
    }
    f->committed = true;
    return 0;
}

static void fs_close(struct sink *k)
{
    struct fsink *f = F(k);
    writer_stop(f);
    if (f->tmp && !f->committed)
        unlink(f->tmp);
    if (f->fd >= 0)
        close(f->fd);
    pthread_mutex_destroy(&f->lock);
    pthread_cond_destroy(&f->cond);
    free(f->zeros);
    free(f->tmp);
    free(f->path);
    free(f);
}

static const struct sink_ops file_ops = { fs_put, fs_zero, fs_wait, fs_busy, fs_commit, fs_close };

/* The output (or its temporary file), sized; a special file's zeros. */
static int open_output(struct fsink *f)
{
    struct stat st;
    bool exists = stat(f->path, &st) == 0;
    f->regular = !exists || S_ISREG(st.st_mode);
    if (f->regular) {
        if (asprintf(&f->tmp, "%s.nbdvault-tmp", f->path) < 0) {
            f->tmp = NULL;
            error_set(ENOMEM, "out of memory");
            return -1;
        }
        f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    } else {
        f->fd = open(f->path, O_WRONLY | O_CLOEXEC);
    }
    if (f->fd < 0) {
        error_set(errno, "open %s: %s", f->tmp ? f->tmp : f->path, strerror(errno));
        return -1;
    }
    if (f->regular && ftruncate(f->fd, (off_t)f->k.size) < 0) {
        error_set(errno, "%s: cannot set its size to %llu: %s", f->path, (unsigned long long)f->k.size,
                  strerror(errno));
        return -1;
    }
    if (!f->regular) {
        if (!(f->zeros = aligned_alloc(SINK_ALIGN, f->k.chunk))) {
            error_set(ENOMEM, "out of memory");
            return -1;
        }
        memset(f->zeros, 0, f->k.chunk);
    }
    return 0;
}

struct sink *sink_file_open(const char *path, const struct sink_opts *o)
{
    struct fsink *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    f->k = (struct sink){ .ops = &file_ops, .q = o->q, .size = o->size, .chunk = o->chunk };
    f->fd = -1;
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->cond, NULL);
    if (open_output(f) < 0) {
        fs_close(&f->k);
        return NULL;
    }
    /* Direct writes where the output takes them: the restored disk goes to
     * the device without a copy into the page cache (2 GiB of buffered
     * writes cost the restore a core-second here), and the host's cached
     * data stays.  Buffers are aligned for it. */
    int fl = fcntl(f->fd, F_GETFL);
    f->direct = fl >= 0 && fcntl(f->fd, F_SETFL, fl | O_DIRECT) == 0;
    if (pthread_create(&f->tid, NULL, writer_main, f) != 0) {
        error_set(EAGAIN, "cannot start the writer thread");
        fs_close(&f->k);
        return NULL;
    }
    f->started = true;
    return &f->k;
}

uint64_t sink_done(struct sink *k)
{
    return __atomic_load_n(&k->written, __ATOMIC_RELAXED) + __atomic_load_n(&k->zeroed, __ATOMIC_RELAXED);
}
