/* agent/sink.h (agent internal): where a restore writes.
 *
 * A sink takes decoded cells from the restore's workers (any thread) and
 * zero runs from its main thread, writes them, and gives each cell's
 * buffer back to the restore's work queue once it is written.  It makes
 * the result durable and puts it in place only at commit; closing a sink
 * that was not committed leaves no partial output behind where it can
 * (a file sink writes a temporary file renamed at commit).
 *
 *   file   a regular file (sparse: zero runs are holes), or a device or
 *          other special file written in place; a writer thread of its
 *          own, consecutive cells in one pwritev, O_DIRECT where taken.
 *   nbd    an NBD export over a multi-conn pool, pipelined WRITEs from the
 *          main thread, WRITE_ZEROES (FAST_ZERO first when offered), FLUSH
 *          at commit.
 *
 * Errors of the sink's own threads and callbacks go to the queue's latch.
 */
#ifndef AGENT_SINK_H
#define AGENT_SINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/workq.h"

/* A decoded cell: the first member of the restore's item. */
struct sink_block {
    struct workq_item q;
    uint64_t off;
    size_t len;
    uint8_t *buf;                 /* SINK_ALIGN-aligned */
    struct sink *k;               /* the sink's, while it holds the block */
};

#define SINK_ALIGN 4096

struct sink;

struct sink_ops {
    /* Any thread: a block to write, released to the queue once written
     * (or on failure). */
    void (*put)(struct sink *k, struct sink_block *blk);
    /* Main thread: zeros over [off, off + len). */
    void (*zero)(struct sink *k, uint64_t off, uint64_t len);
    /* Main thread: runs the sink's I/O until something happens (a block is
     * released, a request completes), for up to ms. */
    void (*wait)(struct sink *k, int ms);
    /* Requests of the sink's own (zeros) still in flight. */
    bool (*busy)(struct sink *k);
    /* Everything durable and in place: 0, or -1 with the error set. */
    int (*commit)(struct sink *k);
    /* Frees the sink; without a commit, removes what it can. */
    void (*close)(struct sink *k);
};

struct sink {
    const struct sink_ops *ops;
    struct workq *q;
    uint64_t size;
    uint32_t chunk;
    uint64_t written, zeroed;     /* bytes (atomic) */
};

struct sink_opts {
    uint64_t size;                /* the disk's */
    uint32_t chunk;               /* the largest block */
    unsigned connections;         /* nbd: 0 = default */
    struct workq *q;
};

/* NULL with the error set. */
struct sink *sink_file_open(const char *path, const struct sink_opts *o);
struct sink *sink_nbd_open(const char *uri, const struct sink_opts *o);

/* Bytes written and zeroed so far (for progress). */
uint64_t sink_done(struct sink *k);

#endif
