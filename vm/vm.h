/* vm/vm.h: running VMs: the one public header of vm/.
 *
 * vm/ owns what a backup of a running VM needs from its hypervisor: the
 * VM's identity and disks, a pull-mode backup job that exports every
 * selected disk as NBD at one consistent moment, and the checkpoints
 * (dirty bitmaps) that make the next backup incremental.  It hands agent/
 * an NBD URI and a bitmap name per disk; it knows nothing of repositories.
 *
 * Two backends behind one interface: libvirt (the C API: virDomainBackupBegin
 * with a checkpoint created in the same call; vm/libvirt.c is the only file
 * that includes libvirt.h) and QEMU's QMP (vm/qmp.c, vm/qmp-backup.c: the
 * fleecing sequence of docs/ARCHITECTURE.md / QMP-BACKUP).
 *
 * Checkpoints.  A checkpoint is named by nbdvault ("nbdvault-<time>-<rand>",
 * see vm_checkpoint_name); on libvirt it is a domain checkpoint, on QMP a
 * persistent dirty bitmap of that name on every selected disk's node.  Every
 * checkpoint keeps recording from its creation on, so "changes since C"
 * stays complete while a newer checkpoint exists; deleting an old one loses
 * nothing newer.  Only checkpoints whose names start with VM_CHECKPOINT_PREFIX
 * are ever deleted.
 *
 * The cycle (agent/vmbackup.c drives it):
 *   vm_open                 identity, disks
 *   vm_cleanup(keep)        leftovers of a killed run: a job of ours still
 *                           running, checkpoints of ours not in keep, scratch
 *   vm_checkpoint_check     is checkpoint C usable as the base of disk i?
 *   vm_backup_begin         one job over all disks, new checkpoint created
 *   ... agent_backup of each export ...
 *   vm_backup_end_reads     as soon as the last read returned: exports and
 *                           fleecing torn down (the guest is slowed no more)
 *   vm_backup_finish        success: the job's checkpoint stays; failure:
 *                           the new checkpoint is removed (QMP: merged back
 *                           into the base bitmap first), the old one kept
 *   vm_cleanup(keep={new})  after the points are committed: rotation
 *
 * Errors: -1 / NULL with common/error.h's message, naming the VM and disk.
 */
#ifndef VM_H
#define VM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define VM_CHECKPOINT_PREFIX "nbdvault-"
#define VM_MAX_DISKS 64

enum vm_kind { VM_LIBVIRT, VM_QMP };

/* Log lines of vm/ (what it creates, deletes, cleans up). */
enum vm_log_level { VM_LOG_DEBUG, VM_LOG_INFO, VM_LOG_WARN };
typedef void (*vm_log_fn)(void *opaque, enum vm_log_level level, const char *msg);

struct vm_open_opts {
    enum vm_kind kind;
    const char *domain;           /* libvirt: domain name or UUID */
    const char *connect;          /* libvirt: connection URI; NULL = qemu:///system */
    const char *qmp_socket;       /* QMP: the monitor's Unix socket */
    const char *name;             /* QMP: the VM's name; NULL = query-name */
    const char *const *disks;     /* targets (vda) / node names to back up; */
    size_t ndisks;                /* 0 = every disk */
    const char *workdir;          /* where private 0700 job directories go;
                                   * NULL = $TMPDIR or /var/tmp */
    unsigned timeout_s;           /* per hypervisor command; 0 = 60 */
    vm_log_fn log;
    void *opaque;
};

struct vm_disk {
    char name[64];                /* libvirt target "vda", QMP node "disk0" */
    uint64_t size;                /* virtual size, bytes */
    char source[1024];            /* the image's path, for messages ("" unknown) */
};

struct vm;

struct vm *vm_open(const struct vm_open_opts *o);
void vm_close(struct vm *v);
enum vm_kind vm_kind(const struct vm *v);
const char *vm_name(const struct vm *v);
/* The identity the catalog records: libvirt's UUID; QMP's query-uuid
 * (the all-zero UUID when QEMU was given none: then the name alone). */
const char *vm_uuid(const struct vm *v);
size_t vm_ndisks(const struct vm *v);           /* the selected disks */
const struct vm_disk *vm_disk(const struct vm *v, size_t i);

/* A fresh checkpoint name, VM_CHECKPOINT_PREFIX + UTC time + random. */
void vm_checkpoint_name(char *buf, size_t cap);

/* Is checkpoint NAME usable as the base of an incremental of disk i?
 * 1 yes; 0 no, with the reason in why ("checkpoint X does not exist",
 * "bitmap X of node disk0 is inconsistent", "... is not recording", ...);
 * -1 error. */
int vm_checkpoint_check(struct vm *v, const char *name, size_t disk, char *why, size_t cap);

/* Removes what a killed run left: a backup job of ours still running (its
 * exports and fleecing nodes), checkpoints named VM_CHECKPOINT_PREFIX* not
 * in keep, leftover job directories of ours for this VM.  Each removal is
 * logged at VM_LOG_INFO/WARN.  Returns how many things it removed, -1 on
 * error. */
int vm_cleanup(struct vm *v, const char *const *keep, size_t nkeep);

/* One disk of a job: index into vm_disk(), and the checkpoint to read
 * changes since (NULL: a full backup of this disk). */
struct vm_backup_req {
    size_t disk;
    const char *incremental;
};

/* What the job exports for one disk. */
struct vm_export {
    char uri[1200];               /* nbd+unix:///EXPORT?socket=/private/dir/S */
    char bitmap[128];             /* the dirty bitmap to read for an incremental;
                                   * "" for a full one */
};

struct vm_job;

/* Starts one pull-mode backup of n disks at one consistent moment, and
 * creates checkpoint new_checkpoint (on every disk of the job) in the same
 * step.  exports[i] describes reqs[i]. */
struct vm_job *vm_backup_begin(struct vm *v, const struct vm_backup_req *reqs, size_t n,
                               const char *new_checkpoint, struct vm_export *exports);
/* The reads are over: removes the exports and the fleecing/scratch state.
 * Idempotent; vm_backup_finish calls it when it was not called. */
int vm_backup_end_reads(struct vm_job *j);
/* Ends the job and frees it.  success: the new checkpoint stays (the old
 * ones are rotated away by vm_cleanup once the points are committed);
 * failure: the new checkpoint is removed and the old ones kept, so that the
 * next incremental still covers everything. */
int vm_backup_finish(struct vm_job *j, bool success);

#endif
