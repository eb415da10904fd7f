/* agent/agent.h: the backup agent: the one public header of agent/.
 *
 * A repository is a directory holding the SQLite catalog (catalog.db) and
 * the pack files (packs/).  Backups read an NBD export through nbdcore;
 * restores write a file or an NBD export; verify, prune and gc keep the
 * repository honest and small.  Errors: -1 with common/error.h's message.
 */
#ifndef AGENT_H
#define AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AGENT_DEFAULT_CHUNK_SIZE (64u * 1024)
#define AGENT_MIN_CHUNK_SIZE (64u * 1024)
#define AGENT_MAX_CHUNK_SIZE (16u * 1024 * 1024)
#define AGENT_DEFAULT_CONNECTIONS 4
#define AGENT_DEFAULT_COMPRESS_LEVEL 1

struct agent_repo;

/* Creates a repository (DIR may exist but must not hold one).  DIR may be
 * s3://BUCKET[/PREFIX] (store/store.h's store_s3_configure). */
int agent_repo_init(const char *dir, uint32_t chunk_size);
/* Where the catalog cache of a repository in a bucket lives (NULL:
 * $XDG_CACHE_HOME/nbdvault/<repository id>). */
void agent_set_cache_dir(const char *dir);
/* Rebuilds the catalog cache of a repository in a bucket from its
 * manifests alone; *points: how many it holds. */
int agent_catalog_rebuild(const char *url, unsigned *points);
/* Whether the repository is in a bucket; requests retried so far. */
bool agent_repo_remote(const struct agent_repo *r);
uint64_t agent_repo_retries(const struct agent_repo *r);
/* ---- Encryption (agent/keys.c) ------------------------------------------------ */

/* Where the key of an encrypted repository comes from, for every
 * agent_repo_open and agent_repo_init_encrypted after it: the first of
 * key_file (the master key itself), password_file (its first line),
 * NBDVAULT_PASSWORD (use_env), ask (a passphrase typed on a terminal,
 * malloc'ed; confirm: asked twice, for a new one).  optional: an encrypted
 * repository opens without its key (verify checks what it can). */
struct agent_key_source {
    const char *key_file;
    const char *password_file;
    const char *password;         /* given as is (copy's NBDVAULT_TO_PASSWORD) */
    bool use_env;
    char *(*ask)(const char *repo, bool confirm);
    bool optional;
};
void agent_set_key_source(const struct agent_key_source *ks);
const struct agent_key_source *agent_key_source(void);
/* Whether a key was given (not counting ask). */
bool agent_key_given(const struct agent_key_source *ks);
/* Creates an encrypted repository: a new master key in key_file (created,
 * 0600; the repository keeps no slot) or wrapped by the source's
 * passphrase (Argon2id) in its first key slot. */
int agent_repo_init_encrypted(const char *dir, uint32_t chunk_size, const char *key_file);
/* Whether a repository is encrypted (with or without its key). */
bool agent_repo_encrypted(const struct agent_repo *r);

struct agent_key_info {
    char id[17], label[128], host[128];
    int64_t created;
    unsigned kdf_t, kdf_m_kib, kdf_p;
    bool damaged;
};
int agent_key_list(struct agent_repo *r, int (*fn)(void *opaque, const struct agent_key_info *k),
                   void *opaque);
/* A new slot for passphrase (the repository opened with its key). */
int agent_key_add(struct agent_repo *r, const char *pass, const char *label, char id[17]);
/* Removes a slot; the last one only with force. */
int agent_key_remove(struct agent_repo *r, const char *id, bool force);
/* The key file's text (a paper backup of the master key; free() it). */
int agent_key_export(struct agent_repo *r, char **text);

/* Opens a repository; with create, makes one with the default chunk size
 * when DIR holds none. */
struct agent_repo *agent_repo_open(const char *dir, bool create);
void agent_repo_close(struct agent_repo *r);
uint32_t agent_repo_chunk_size(const struct agent_repo *r);
/* The lock that keeps two `nbdvault run`s off one repository: a descriptor
 * to close to release it, or -1 with EBUSY naming the holder. */
int agent_repo_run_lock(struct agent_repo *r);

/* Progress of long work: done / total bytes, called at most a few times a
 * second and once at the end. */
typedef void (*agent_progress_fn)(void *opaque, uint64_t done, uint64_t total);
/* Warnings that do not stop the work (a stale lock broken, ...). */
typedef void (*agent_warn_fn)(void *opaque, const char *msg);

struct agent_backup_opts {
    const char *uri;
    const char *disk;
    const char *bitmap;           /* NULL: full backups only */
    bool full;                    /* force a full backup */
    unsigned connections;         /* 0 = default */
    int compress_level;           /* zstd level; 0 = default */
    uint64_t max_rate;            /* bytes per second read, over all connections; 0 = no limit */
    int io_timeout_ms;            /* no reply for this long fails the backup; 0 = default, -1 = never */
    /* What the point records of its source (agent_backup_vm sets them):
     * source_kind "nbd" (NULL) / "libvirt" / "qmp", the VM's identity, the
     * checkpoint its job created, and why a full point is full. */
    const char *source_kind, *vm_uuid, *checkpoint, *full_reason;
    const char *source_label;     /* recorded instead of uri when set */
    /* Called once every read has returned and the connections are closed,
     * before the last pack and the point are committed. */
    void (*reads_done)(void *reads_opaque);
    void *reads_opaque;
    agent_progress_fn progress;
    agent_warn_fn warn;
    void *opaque;
};

struct agent_backup_result {
    int64_t point, parent;        /* parent 0 = none */
    bool full;
    uint64_t disk_size;
    uint64_t bytes_planned, bytes_read, bytes_stored;
    uint64_t chunks_new, chunks_reused;
    uint64_t cells_unchanged;     /* read but the same as the parent's: not recorded */
    unsigned connections;
    double seconds;
    double plan_seconds;          /* of them, asking for block status (the plan) */
    uint64_t retries;             /* object store requests retried */
};

int agent_backup(struct agent_repo *r, const struct agent_backup_opts *o,
                 struct agent_backup_result *res);

/* ---- Running VMs ---------------------------------------------------------
 * One backup job of a running VM (libvirt or QMP, through vm/): every
 * selected disk at one consistent moment, recorded as "VM/DISK".  Each
 * disk's backup is incremental from the checkpoint its last point created
 * when the catalog and the hypervisor agree that it is safe (same VM, same
 * size, checkpoint present and consistent), full with the reason otherwise.
 * The checkpoint the job creates becomes the base of the next run once the
 * points are committed; older ones are deleted then, never before. */
struct agent_vm_opts {
    bool qmp;                     /* false: libvirt */
    const char *domain;           /* libvirt: domain name or UUID */
    const char *connect;          /* libvirt: connection URI (NULL = qemu:///system) */
    const char *qmp_socket;       /* QMP: the monitor socket */
    const char *vm_name;          /* QMP: the name (NULL = query-name) */
    const char *const *disks;     /* targets / node names; ndisks 0 = every disk */
    size_t ndisks;
    const char *workdir;          /* private job directories (NULL = $TMPDIR or /var/tmp) */
    bool full;
    unsigned connections;
    int compress_level;
    uint64_t max_rate;            /* bytes per second over all reads; 0 = no limit */
    int io_timeout_ms;            /* as in agent_backup_opts */
    /* Called before each disk's backup with its name ("vm1/vda"). */
    void (*disk_start)(void *opaque, const char *disk);
    /* Info lines: what was decided and cleaned up ("vm1/vda: full backup:
     * checkpoint X does not exist"). */
    void (*note)(void *opaque, const char *msg);
    agent_progress_fn progress;
    agent_warn_fn warn;
    void *opaque;
};

struct agent_vm_disk_result {
    char disk[256];               /* "vm1/vda" */
    bool ok;
    char error[1024];             /* when !ok */
    char full_reason[256];        /* why it is full ("" = first backup or --full) */
    struct agent_backup_result r; /* when ok */
};

/* Backs up the VM's disks.  *res receives one entry per selected disk
 * (malloc'ed, *n of them), also when some failed.  Returns 0 when every
 * disk succeeded, -1 when any failed or nothing could start (then *n may be
 * 0 and the error says why). */
int agent_backup_vm(struct agent_repo *r, const struct agent_vm_opts *o,
                    struct agent_vm_disk_result **res, size_t *n);

struct agent_point;
/* The points of one run of agent_backup_vm (one per disk, the same
 * checkpoint): the run of point when it is not 0, else the newest run that
 * backed up every disk of the VM.  *out is malloc'ed. */
int agent_vm_run_points(struct agent_repo *r, const char *vm, int64_t point,
                        struct agent_point **out, size_t *n);

struct agent_point {
    int64_t id, parent;
    char disk[256];
    bool full;
    double started, finished;
    uint64_t disk_size, bytes_stored, bytes_read;
    char source_uri[512];
    char bitmap[256];
    char source_kind[16];         /* "nbd", "libvirt", "qmp" */
    char vm_uuid[64];
    char checkpoint[128];         /* the checkpoint its job created ("" for nbd) */
    char full_reason[256];        /* why a full point is full ("" = first, or --full) */
};

/* Complete points, oldest first; disk NULL = every disk. */
int agent_list(struct agent_repo *r, const char *disk,
               int (*fn)(void *opaque, const struct agent_point *p), void *opaque);

struct agent_restore_opts {
    const char *disk;
    int64_t point;                /* 0 = newest */
    const char *output;           /* a file, or ... */
    const char *to_uri;           /* ... an NBD export */
    unsigned connections;
    agent_progress_fn progress;
    agent_warn_fn warn;           /* waiting for a gc, a stale lock broken */
    void *opaque;
};

struct agent_restore_result {
    int64_t point;
    uint64_t disk_size, bytes_written, bytes_zero;
    uint64_t retries;             /* object store requests retried */
    double seconds;
};

int agent_restore(struct agent_repo *r, const struct agent_restore_opts *o,
                  struct agent_restore_result *res);

/* ---- serve ------------------------------------------------------------------- */

struct agent_serve_opts {
    const char *socket_path;      /* a Unix socket, or ... */
    const char *listen;           /* ... HOST:PORT */
    const char *tls_certificates; /* X.509 directory (server side) */
    const char *tls_psk_file;
    bool tls_verify_peer;
    unsigned max_connections;     /* 0 = 64 */
    int idle_timeout_ms;          /* 0 = 5 min; -1 = never */
    size_t cache_bytes;           /* decompressed chunk cache; 0 = 64 MiB */
    void (*ready)(void *opaque);  /* called once listening */
    void *opaque;
};

/* Serves every restore point as a read-only NBD export "<disk>@<point>",
 * and "<disk>" as its newest point, until SIGTERM or SIGINT. */
int agent_serve(struct agent_repo *r, const struct agent_serve_opts *o);
/* Makes the running agent_serve return (after its connections end);
 * async-signal-safe, for the caller's SIGTERM/SIGINT handler. */
void agent_serve_stop(void);

/* ---- verify ---------------------------------------------------------------- */

struct agent_verify_opts {
    const char *disk;             /* NULL: every disk */
    int64_t point;                /* 0: every point (of the disk) */
    /* Packs whose data is read (every chunk checked): 0-100 percent, a
     * fixed subset by name; the others are checked by their index and size.
     * -1: the default, every pack locally, none in a bucket (--read-data:
     * 100). */
    int read_data_pct;
    /* Each damage found, as one line ("chunk ... in pack ...: CRC mismatch;
     * points 3, 4"). */
    void (*damage)(void *opaque, const char *msg);
    agent_warn_fn warn;           /* waiting for a gc, a stale lock broken */
    agent_progress_fn progress;
    void *opaque;
};

struct agent_verify_result {
    uint64_t points, packs, chunks, bytes;
    uint64_t packs_index_only;    /* checked by their index and size, data not read */
    uint64_t damaged_packs, damaged_chunks;
    bool catalog_ok;
    bool no_key;                  /* encrypted, no key given: packs walked and
                                   * their CRCs checked, no chunk decrypted */
    int64_t *affected;            /* points affected by damage (malloc'ed) */
    size_t naffected;
};

/* Returns 0 when the check ran (damage or not: see the result), -1 when it
 * could not run. */
int agent_verify(struct agent_repo *r, const struct agent_verify_opts *o,
                 struct agent_verify_result *res);
void agent_verify_result_free(struct agent_verify_result *res);

/* ---- prune ------------------------------------------------------------------ */

struct agent_prune_opts {
    const char *disk;
    unsigned keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly;
    bool dry_run;
    /* Each point's fate: keep (with the reasons) or remove. */
    void (*decision)(void *opaque, int64_t point, double time, bool keep, const char *why);
    agent_warn_fn warn;           /* a stale lock broken, ... */
    void *opaque;
};

struct agent_prune_result {
    unsigned kept, removed;
};

int agent_prune(struct agent_repo *r, const struct agent_prune_opts *o,
                struct agent_prune_result *res);

/* ---- gc ----------------------------------------------------------------------- */

struct agent_gc_opts {
    bool dry_run;
    /* A pack is rewritten when less than this share of it is still used. */
    double rewrite_below;         /* 0 = default 0.5 */
    void (*note)(void *opaque, const char *msg);
    void *opaque;
};

struct agent_gc_result {
    uint64_t chunks_removed, packs_removed, packs_rewritten, orphans_removed;
    uint64_t bytes_freed;
    unsigned packs_locked;        /* kept: under S3 Object Lock */
};

int agent_gc(struct agent_repo *r, const struct agent_gc_opts *o, struct agent_gc_result *res);

/* Copies restore points to another repository (a bucket, typically):
 * those the target lacks (same disk and start time), uploading only
 * chunks it lacks; interrupted, a rerun copies only what is missing. */
struct agent_copy_opts {
    const char *to;               /* the target repository */
    const struct agent_key_source *to_keys;   /* its key (NULL: the source's) */
    const char *disk;             /* NULL: every disk */
    int64_t point;                /* 0: every point (of disk) */
    int compress_level;           /* 0: the default */
    agent_warn_fn warn;           /* "copied point N ...", stale locks */
    void *opaque;
};
struct agent_copy_result {
    unsigned copied, skipped;
    uint64_t bytes_read, bytes_stored, chunks_new, chunks_reused;
    double seconds;
};
int agent_copy(struct agent_repo *src, const struct agent_copy_opts *o, struct agent_copy_result *res);

#endif
