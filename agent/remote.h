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

/* Writes the config object of a new repository (EEXIST when one is there). */
int remote_init(struct store *st, const char *url, uint32_t chunk_size);
/* For agent_repo_open: reads the config object, opens (creating) the cache
 * and its catalog, and syncs it.  Fills r->cat, r->catalog_path,
 * r->chunk_size. */
int remote_open(struct agent_repo *r);
/* Imports what the bucket has and the cache lacks, drops what it lost. */
int remote_sync(struct agent_repo *r);
/* Writes the manifest of a running point (its fields in p, disk name
 * included) and records its remote row: after this the point may commit. */
int remote_publish(struct agent_repo *r, const struct catalog_point *p);

#endif
