/* agent/session.h (agent internal): where a backup's cells become chunks.
 *
 * A session belongs to one running point.  Workers put each cell's bytes
 * (session_put): a zero cell is recorded as zero, other content is hashed
 * and looked up (in the packs this backup has not recorded yet, then in the
 * catalog), and only new content is compressed and added to the open pack.
 * Each cell's row reaches the catalog once the chunk it names is durable: a
 * full pack is sealed and handed to the committer thread, which waits for
 * the store, then records the pack, its chunks and the rows that waited
 * for it in one transaction, while the workers fill the next pack.  An
 * incremental's cell whose content is the parent's is not recorded at all.
 *
 * session_commit records the last pack, the last rows and the point itself
 * in one transaction: until then the point stays 'running' (invisible).
 * Errors go to the latch the owner gives; any thread's failure stops the
 * committer from recording more.
 */
#ifndef AGENT_SESSION_H
#define AGENT_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct agent_repo;
struct catalog_point;
struct latch;

struct session_opts {
    struct agent_repo *repo;
    int64_t point;                /* the running point the rows belong to */
    bool full;                    /* no parent: every cell is recorded */
    int level;                    /* zstd level */
    bool keep_running;            /* a bucket's repository: the committer
                                   * records the figures and the point stays
                                   * 'running' until session_commit has
                                   * written its manifest */
    struct latch *latch;          /* the backup's first error */
};

struct session_stats {
    uint64_t bytes_stored;        /* compressed bytes of new chunks */
    uint64_t chunks_new, chunks_reused;
    uint64_t cells_unchanged;     /* read, and the same as the parent's */
};

struct session;
struct session_worker;

/* Starts the committer thread; NULL with the error set. */
struct session *session_open(const struct session_opts *o);
/* Stops the committer (without recording the point unless session_commit
 * did) and frees everything not recorded. */
void session_close(struct session *s);

/* A worker thread's own catalog handle, pack reader and buffers (chunk:
 * the most bytes a cell holds); NULL with the error set. */
struct session_worker *session_worker_open(struct session *s, uint32_t chunk);
void session_worker_close(struct session_worker *w);

/* A recorded chunk, decoded into the worker's buffer (valid until its next
 * call): for completing a partly dirty cell from the parent's.  len: the
 * bytes the cell holds, which the chunk must hold too. */
const uint8_t *session_chunk(struct session_worker *w, int64_t chunk_id, uint64_t len);

/* A cell's new content.  prev: the parent's chunk of the cell (0: zero;
 * unused for a full backup). */
int session_put(struct session_worker *w, uint64_t cell, const uint8_t *data, size_t len,
                int64_t prev);
/* A cell known to be zero without reading it (any thread). */
int session_put_zero(struct session *s, uint64_t cell, int64_t prev);

void session_stats(struct session *s, struct session_stats *st);

/* After the last put (every worker done): records what is left and the
 * point (final, with its id, disk name and figures) in one transaction
 * (with keep_running: then writes its manifest and completes it).  0 once
 * the point is complete, else -1 with the error set. */
int session_commit(struct session *s, const struct catalog_point *final);

#endif
