/* vm/internal.h: what vm/'s files share; never included outside vm/. */
#ifndef VM_INTERNAL_H
#define VM_INTERNAL_H

#include "vm/vm.h"

struct vm_ops {
    /* Fills v->name, v->uuid, v->disks / v->ndisks (selected disks only,
     * in the order of o->disks when given) and v->priv. */
    int (*open)(struct vm *v, const struct vm_open_opts *o);
    void (*close)(struct vm *v);
    int (*checkpoint_check)(struct vm *v, const char *name, size_t disk, char *why, size_t cap);
    int (*cleanup)(struct vm *v, const char *const *keep, size_t nkeep);
    /* Fills j->priv. */
    int (*backup_begin)(struct vm_job *j, const struct vm_backup_req *reqs, size_t n,
                        const char *new_checkpoint, struct vm_export *exports);
    int (*end_reads)(struct vm_job *j);
    int (*finish)(struct vm_job *j, bool success);  /* frees j->priv */
};

struct vm {
    const struct vm_ops *ops;
    enum vm_kind kind;
    char name[256];
    char uuid[64];
    struct vm_disk disks[VM_MAX_DISKS];
    size_t ndisks;
    char workdir[512];            /* where job directories go */
    unsigned timeout_s;
    vm_log_fn log;
    void *opaque;
    void *priv;                   /* the backend's */
};

struct vm_job {
    struct vm *vm;
    bool reads_ended;
    void *priv;                   /* the backend's */
};

extern const struct vm_ops vm_libvirt_ops;
extern const struct vm_ops vm_qmp_ops;

void vm_log(struct vm *v, enum vm_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A private job directory: WORKDIR/nbdvault-job-<vmname>-XXXXXX, mode
 * 0700, owned by uid/gid (-1: unchanged).  dir receives its path. */
int vm_job_dir(struct vm *v, uid_t uid, gid_t gid, char *dir, size_t cap);
/* Removes a job directory and the files in it (sockets, scratch images). */
void vm_job_dir_remove(struct vm *v, const char *dir);
/* Leftover job directories of this VM from killed runs: removed; returns
 * how many. */
int vm_job_dirs_cleanup(struct vm *v);

#endif
