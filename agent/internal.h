/* agent/internal.h (agent internal): what the agent's files share. */
#ifndef AGENT_INTERNAL_H
#define AGENT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "agent/agent.h"
#include "catalog/catalog.h"

struct store;

struct crypt_keys;
struct agent_repo {
    char *dir;                    /* the location as given, for messages */
    bool encrypted;               /* agent/keys.c */
    struct crypt_keys *keys;      /* NULL: plain, or the key was not given */
    char repo_id[33];             /* encrypted: the id its keys belong to */
    struct store *store;          /* where the packs live */
    char *catalog_path;           /* in the store's state directory */
    struct catalog *cat;          /* the opening thread's handle */
    uint32_t chunk_size;
    bool remote;                  /* a bucket: the catalog is its cache (agent/remote.h) */
};

/* A formatted message to a caller's callback (fn NULL: dropped). */
void agent_notify(agent_warn_fn fn, void *opaque, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The id of the disk named name: 0, or -1 with the error set (ENOENT: "the
 * repository has no disk named ..."). */
int agent_disk_id(struct agent_repo *r, const char *name, int64_t *id);

/* The lock of a command that only reads chunks (restore, verify): the
 * catalog lock "restore:TASK-PID", which only gc excludes, and in a bucket the
 * shared lock "TASK of DISK" that every host's gc and prune respect.  A gc
 * or prune under way is waited for, up to AGENT_GC_WAIT_S (said once
 * through warn). */
#define AGENT_GC_WAIT_S 3600
struct remote_lock;
struct agent_read_lock {
    char name[64];
    struct remote_lock *rl;
    bool held;
};
int agent_read_lock(struct agent_repo *r, const char *task, const char *disk, agent_warn_fn warn,
                    void *opaque, struct agent_read_lock *l);
void agent_read_unlock(struct agent_repo *r, struct agent_read_lock *l);   /* keeps the error */

/* A new chunk's stored form: compressed into out[chunk_bound(len)], then
 * in an encrypted repository sealed into sealed[chunk_bound(len) +
 * CRYPT_OVERHEAD] (unused otherwise); *stored points at one of them or at
 * plain (kept raw). */
int agent_chunk_encode(const struct agent_repo *r, void *cctx, int level, const uint8_t *plain,
                       size_t len, const uint8_t id[32], uint8_t *out, size_t cap, uint8_t *sealed,
                       const void **stored, size_t *stored_len, uint8_t *codec);

struct pack_reader;
/* Reads and checks the chunk a catalog row names into out[ch->plain_len]
 * (the one conversion of a catalog row into a pack entry). */
int agent_chunk_read(struct pack_reader *r, const struct catalog_chunk *ch, void *out);

/* Throttles progress calls to a few per second (force: always call). */
struct agent_progress {
    agent_progress_fn fn;
    void *opaque;
    double last;
};
void agent_progress_report(struct agent_progress *p, uint64_t done, uint64_t total, int force);

#endif
