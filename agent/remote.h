/* agent/remote.h (agent internal): a repository whose store is a bucket.
 *
 * The bucket is the truth: a "config" object (format, chunk size, id),
 * packs, and one manifest per restore point ("points/<uid>.<gen>",
 * agent/manifest.h).  The catalog is a local cache in the cache directory
 * (--cache-dir, else $XDG_CACHE_HOME/nbdvault/<id>), brought up to date
 * from the manifests when the repository opens: new or rewritten manifests
 * imported (parents first), points whose manifest is gone dropped.
 * A backup's point stays 'running' until its manifest is in the bucket.
 */
#ifndef AGENT_REMOTE_H
#define AGENT_REMOTE_H

#include <stdbool.h>
#include <stdint.h>

struct agent_repo;
struct catalog_point;
struct store;

/* Writes the config object of a new repository (EEXIST when one is there). */
int remote_init(struct store *st, const char *url, uint32_t chunk_size, bool encrypt, const char *key_file);
/* For agent_repo_open: reads the config object, opens (creating) the cache
 * and its catalog, and syncs it.  Fills r->cat, r->catalog_path,
 * r->chunk_size. */
int remote_open(struct agent_repo *r);
/* Imports what the bucket has and the cache lacks, drops what it lost. */
int remote_sync(struct agent_repo *r);
/* Writes the manifest of a running point (its fields in p, disk name
 * included) and records its remote row: after this the point may commit. */
int remote_publish(struct agent_repo *r, const struct catalog_point *p);

/* Sends what changed here to the bucket: rewritten manifests of points
 * whose map a prune changed, then the removal of the points it removed
 * (both recorded in the catalog by the prune's own transaction, so that a
 * killed prune is finished by the next command). */
int remote_flush(struct agent_repo *r);

/* Until when the manifest of a point is under S3 Object Lock (*until 0:
 * it is not). */
#include <time.h>
int remote_point_locked(struct agent_repo *r, int64_t point_id, time_t *until);

/* A lock object in the bucket (agent/remote-lock.c): shared for a backup,
 * exclusive for prune and gc.  NULL with EBUSY naming the holder (what,
 * host, pid, time) when a live conflicting lock is there; a lock not
 * refreshed for 30 minutes is stale and broken with a warning.  Held locks
 * are refreshed every 5 minutes by a thread of their own. */
struct remote_lock;
#include "agent/agent.h"
struct remote_lock *remote_lock(struct agent_repo *r, bool exclusive, const char *what,
                                agent_warn_fn warn, void *opaque);
void remote_unlock(struct remote_lock *l);   /* accepts NULL */
/* The lock a command takes in a bucket, named "TASK of DISK" (or "TASK"
 * without a disk): shared for backup, copy, restore, serve and verify,
 * exclusive for prune and gc; then the cache brought up to date under it
 * (nothing another host's prune or gc did can be missed).  A conflicting
 * lock is waited for up to wait_s seconds (saying so once through warn),
 * then refused with EBUSY naming its holder. */
int agent_bucket_lock(struct agent_repo *r, bool exclusive, const char *task, const char *disk,
                      unsigned wait_s, agent_warn_fn warn, void *opaque, struct remote_lock **out);

#endif
