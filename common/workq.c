/* common/workq.c: buffers between a driving thread and worker threads. */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/cpus.h"
#include "common/error.h"
#include "common/workq.h"

struct workq {
    struct workq_ops ops;
    void *opaque;
    struct latch latch;
    pthread_mutex_t lock;
    pthread_cond_t cond;          /* work queued, or stop */
    struct workq_item *free_list;
    struct workq_item *head, *tail;
    unsigned busy;
    bool stop;
    int efd;
    pthread_t tids[CPUS_MAX_WORKERS];
    unsigned nthreads;
};

struct workq *workq_new(const struct workq_ops *ops, void *opaque)
{
    struct workq *q = calloc(1, sizeof *q);
    if (!q) {
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    q->ops = *ops;
    q->opaque = opaque;
    if ((q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        error_set(errno, "eventfd: %s", strerror(errno));
        free(q);
        return NULL;
    }
    latch_init(&q->latch);
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    return q;
}

void workq_free(struct workq *q)
{
    if (!q)
        return;
    workq_stop(q);
    close(q->efd);
    latch_destroy(&q->latch);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    free(q);
}

struct latch *workq_latch(struct workq *q)
{
    return &q->latch;
}

bool workq_failed(struct workq *q)
{
    return latch_isset(&q->latch);
}

static void *worker_main(void *opaque)
{
    struct workq *q = opaque;
    void *wctx = NULL;

    pthread_setname_np(pthread_self(), "nbdvault-work");

    if (q->ops.start && !(wctx = q->ops.start(q->opaque)))
        latch_set_error(&q->latch);
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (!q->head && !q->stop)
            pthread_cond_wait(&q->cond, &q->lock);
        struct workq_item *it = q->head;
        if (!it)
            break;
        q->head = it->next;
        if (!q->head)
            q->tail = NULL;
        pthread_mutex_unlock(&q->lock);
        if (latch_isset(&q->latch))
            workq_release(q, it);
        else
            q->ops.run(q->opaque, wctx, it);
        pthread_mutex_lock(&q->lock);
    }
    pthread_mutex_unlock(&q->lock);
    if (q->ops.end)
        q->ops.end(q->opaque, wctx);
    return NULL;
}

int workq_start(struct workq *q, unsigned n)
{
    if (n > CPUS_MAX_WORKERS)
        n = CPUS_MAX_WORKERS;
    while (q->nthreads < n) {
        if (pthread_create(&q->tids[q->nthreads], NULL, worker_main, q) != 0) {
            error_set(EAGAIN, "cannot start a worker thread");
            return -1;
        }
        q->nthreads++;
    }
    return 0;
}

void workq_stop(struct workq *q)
{
    pthread_mutex_lock(&q->lock);
    q->stop = true;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    for (unsigned i = 0; i < q->nthreads; i++)
        pthread_join(q->tids[i], NULL);
    q->nthreads = 0;
}

void workq_add_free(struct workq *q, struct workq_item *it)
{
    pthread_mutex_lock(&q->lock);
    it->next = q->free_list;
    q->free_list = it;
    pthread_mutex_unlock(&q->lock);
}

struct workq_item *workq_get(struct workq *q, int (*wait)(void *arg), void *arg)
{
    for (;;) {
        pthread_mutex_lock(&q->lock);
        struct workq_item *it = q->free_list;
        if (it) {
            q->free_list = it->next;
            q->busy++;
        }
        pthread_mutex_unlock(&q->lock);
        if (it)
            return it;
        if (latch_isset(&q->latch) || wait(arg) < 0)
            return NULL;
    }
}

void workq_unget(struct workq *q, struct workq_item *it)
{
    pthread_mutex_lock(&q->lock);
    it->next = q->free_list;
    q->free_list = it;
    q->busy--;
    pthread_mutex_unlock(&q->lock);
}

void workq_submit(struct workq *q, struct workq_item *it)
{
    pthread_mutex_lock(&q->lock);
    it->next = NULL;
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

void workq_release(struct workq *q, struct workq_item *it)
{
    workq_unget(q, it);
    workq_wake(q);
}

unsigned workq_busy(struct workq *q)
{
    pthread_mutex_lock(&q->lock);
    unsigned n = q->busy;
    pthread_mutex_unlock(&q->lock);
    return n;
}

int workq_efd(struct workq *q)
{
    return q->efd;
}

void workq_wake(struct workq *q)
{
    uint64_t one = 1;
    if (write(q->efd, &one, sizeof one) < 0) {
        /* full (it never is at 2^64 - 2) or closed: the waiter polls with a
         * timeout anyway */
    }
}

void workq_consume(struct workq *q)
{
    uint64_t v;
    if (read(q->efd, &v, sizeof v) < 0) {
        /* EAGAIN: nothing was pending */
    }
}

void workq_wait(struct workq *q, int ms)
{
    struct pollfd p = { .fd = q->efd, .events = POLLIN };
    if (poll(&p, 1, ms) > 0)
        workq_consume(q);
}
