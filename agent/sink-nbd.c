/* sink-nbd.c: a restore onto an NBD export (see sink.h). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "agent/sink.h"
#include "common/error.h"
#include "nbdcore/nbdcore.h"

struct nsink {
    struct sink k;                /* first */
    char *uri;
    struct nbd_pool *pool;
    bool can_zero, can_fast_zero;
    uint8_t *zeros;               /* for servers without WRITE_ZEROES */
    unsigned zeros_in_flight;
    pthread_mutex_t lock;
    struct sink_block *head;      /* decoded, to write from the main thread */
};

static struct nsink *N(struct sink *k)
{
    return (struct nsink *)k;
}

static void fail(struct nsink *n, const char *what)
{
    latch_set(workq_latch(n->k.q), error_errno(), "%s %s: %s", what, n->uri, error_msg());
}

static void ns_put(struct sink *k, struct sink_block *blk)
{
    struct nsink *n = N(k);
    pthread_mutex_lock(&n->lock);
    blk->q.next = (struct workq_item *)n->head;
    n->head = blk;
    pthread_mutex_unlock(&n->lock);
    workq_wake(k->q);
}

static void write_done(void *opaque, int err)
{
    struct sink_block *blk = opaque;
    struct nsink *n = N(blk->k);
    if (err)
        latch_set(workq_latch(n->k.q), err, "write to %s: %s", n->uri, error_msg());
    else
        n->k.written += blk->len;
    workq_release(n->k.q, &blk->q);
}

/* The blocks the workers handed over, as pipelined WRITEs. */
static void drain(struct nsink *n)
{
    pthread_mutex_lock(&n->lock);
    struct sink_block *list = n->head;
    n->head = NULL;
    pthread_mutex_unlock(&n->lock);
    while (list) {
        struct sink_block *blk = list;
        list = (struct sink_block *)blk->q.next;
        blk->k = &n->k;
        struct nbd_conn *c = nbd_pool_pick(n->pool);
        if (workq_failed(n->k.q))
            workq_release(n->k.q, &blk->q);
        else if (!c || nbd_aio_pwrite(c, blk->buf, blk->len, blk->off, 0, write_done, blk) < 0) {
            if (!c)
                error_set(EIO, "every connection is dead");
            fail(n, "write to");
            workq_release(n->k.q, &blk->q);
        }
    }
}

struct zero_req {
    struct nsink *n;
    uint64_t off, len;
    bool fast;
};

static void submit_zero(struct nsink *n, uint64_t off, uint64_t len, bool fast);

static void zero_done(void *opaque, int err)
{
    struct zero_req *z = opaque;
    struct nsink *n = z->n;
    n->zeros_in_flight--;
    if (err == ENOTSUP && z->fast) {
        /* Not faster than writing: zero it the ordinary way. */
        n->can_fast_zero = false;
        submit_zero(n, z->off, z->len, false);
    } else if (err) {
        latch_set(workq_latch(n->k.q), err, "write zeroes to %s: %s", n->uri, error_msg());
    } else {
        n->k.zeroed += z->len;
    }
    free(z);
}

static void submit_zero(struct nsink *n, uint64_t off, uint64_t len, bool fast)
{
    struct nbd_conn *c = nbd_pool_pick(n->pool);
    struct zero_req *z = malloc(sizeof *z);
    if (!c || !z) {
        free(z);
        latch_set(workq_latch(n->k.q), EIO, "write zeroes to %s: no connection", n->uri);
        return;
    }
    *z = (struct zero_req){ n, off, len, fast };
    if (nbd_aio_zero(c, len, off, fast ? NBD_CMD_FLAG_FAST_ZERO : 0, zero_done, z) < 0) {
        fail(n, "write zeroes to");
        free(z);
        return;
    }
    n->zeros_in_flight++;
}

/* Zeros on a server without WRITE_ZEROES: written, one buffer at a time. */
static void write_zeros(struct nsink *n, uint64_t off, uint64_t len)
{
    struct nbd_conn *c = nbd_pool_conn(n->pool, 0);
    while (len && !workq_failed(n->k.q)) {
        uint64_t m = len < n->k.chunk ? len : n->k.chunk;
        if (nbd_pwrite(c, n->zeros, m, off, 0) < 0) {
            fail(n, "write to");
            return;
        }
        n->k.zeroed += m;
        off += m;
        len -= m;
    }
}

static void ns_zero(struct sink *k, uint64_t off, uint64_t len)
{
    struct nsink *n = N(k);
    if (n->can_zero)
        submit_zero(n, off, len, n->can_fast_zero);
    else
        write_zeros(n, off, len);
    drain(n);
}

static void ns_wait(struct sink *k, int ms)
{
    struct nsink *n = N(k);
    if (nbd_pool_poll(n->pool, workq_efd(k->q), ms) > 0)
        workq_consume(k->q);
    drain(n);
}

static bool ns_busy(struct sink *k)
{
    return N(k)->zeros_in_flight > 0;
}

static int ns_commit(struct sink *k)
{
    struct nsink *n = N(k);
    if (latch_raise(workq_latch(k->q)) < 0)
        return -1;
    if (nbd_pool_flush(n->pool) < 0) {
        error_prefix("flush %s: ", n->uri);
        return -1;
    }
    return 0;
}

static void ns_close(struct sink *k)
{
    struct nsink *n = N(k);
    nbd_pool_close(n->pool);
    pthread_mutex_destroy(&n->lock);
    free(n->zeros);
    free(n->uri);
    free(n);
}

static const struct sink_ops nbd_ops = { ns_put, ns_zero, ns_wait, ns_busy, ns_commit, ns_close };

struct sink *sink_nbd_open(const char *uri, const struct sink_opts *o)
{
    struct nsink *n = calloc(1, sizeof *n);
    if (!n || !(n->uri = strdup(uri))) {
        free(n);
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    n->k = (struct sink){ .ops = &nbd_ops, .q = o->q, .size = o->size, .chunk = o->chunk };
    pthread_mutex_init(&n->lock, NULL);
    n->pool = nbd_pool_open(uri, NULL, o->connections ? o->connections : AGENT_DEFAULT_CONNECTIONS);
    if (!n->pool) {
        error_prefix("%s: ", uri);
        goto fail;
    }
    struct nbd_conn *c0 = nbd_pool_conn(n->pool, 0);
    if (nbd_get_flags(c0) & NBD_FLAG_READ_ONLY) {
        error_set(EROFS, "%s: the export is read-only", uri);
        goto fail;
    }
    if (nbd_get_size(c0) < o->size) {
        error_set(ENOSPC, "%s: the export (%llu bytes) is smaller than the disk (%llu bytes)", uri,
                  (unsigned long long)nbd_get_size(c0), (unsigned long long)o->size);
        goto fail;
    }
    n->can_zero = nbd_can(c0, NBD_FLAG_SEND_WRITE_ZEROES);
    n->can_fast_zero = nbd_can(c0, NBD_FLAG_SEND_FAST_ZERO);
    if (!n->can_zero && !(n->zeros = calloc(1, o->chunk))) {
        error_set(ENOMEM, "out of memory");
        goto fail;
    }
    return &n->k;
fail:
    ns_close(&n->k);
    return NULL;
}
