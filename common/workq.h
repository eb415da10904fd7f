/* common/workq.h: a fixed set of buffers passed between one driving thread
 * and a pool of worker threads.
 *
 * The driving thread (the one that talks to NBD) takes a free item, fills
 * it, and submits it; a worker runs it and then releases it (back on the
 * free list) or hands it on to whoever releases it later (a writer).  Each
 * release wakes the driving thread through an eventfd, which it can poll
 * together with its sockets (nbd_pool_poll).  The first error of any
 * thread wins (common/latch.h); once it is set, workers release what they
 * are given without running it, and the driving thread stops taking.
 * Memory is the items the owner gives it: nothing here allocates per item.
 */
#ifndef COMMON_WORKQ_H
#define COMMON_WORKQ_H

#include <stdbool.h>

#include "common/latch.h"

/* The first member of the owner's item. */
struct workq_item {
    struct workq_item *next;
};

struct workq_ops {
    /* In each worker thread before its first item: its context, or NULL
     * with the thread's error set (the job fails; the thread still drains
     * its share).  May be NULL. */
    void *(*start)(void *opaque);
    /* Runs one item; owns it from then on (workq_release, or handed on). */
    void (*run)(void *opaque, void *wctx, struct workq_item *it);
    /* In the worker thread after its last item (wctx as start gave it,
     * possibly NULL).  May be NULL. */
    void (*end)(void *opaque, void *wctx);
};

struct workq;

/* NULL with the error set. */
struct workq *workq_new(const struct workq_ops *ops, void *opaque);
/* Frees the queue (stopping the workers first); not the items. */
void workq_free(struct workq *q);
struct latch *workq_latch(struct workq *q);
bool workq_failed(struct workq *q);

/* Starts n worker threads (at most CPUS_MAX_WORKERS): 0, or -1 with the
 * error set (those started run until workq_stop). */
int workq_start(struct workq *q, unsigned n);
/* Lets the workers finish what is queued, and joins them. */
void workq_stop(struct workq *q);

/* An item for the free list (before the work starts). */
void workq_add_free(struct workq *q, struct workq_item *it);
/* A free item, calling wait(arg) (which should block until something is
 * released, a few hundred ms at most) while there is none; NULL when the
 * job failed or wait returned < 0. */
struct workq_item *workq_get(struct workq *q, int (*wait)(void *arg), void *arg);
/* Gives an item back unused (the driving thread). */
void workq_unget(struct workq *q, struct workq_item *it);
void workq_submit(struct workq *q, struct workq_item *it);
/* Any thread: the item is free again; wakes the driving thread. */
void workq_release(struct workq *q, struct workq_item *it);
/* Items not on the free list (taken, queued, running, handed on). */
unsigned workq_busy(struct workq *q);

/* The eventfd that releases (and workq_wake) make readable. */
int workq_efd(struct workq *q);
void workq_wake(struct workq *q);
/* Empties the eventfd after a poll found it readable. */
void workq_consume(struct workq *q);
/* Polls the eventfd alone for up to ms (and empties it). */
void workq_wait(struct workq *q, int ms);

#endif
