/* vmbackup.c: backups of running VMs: one hypervisor job (vm/) over all
 * the selected disks, each disk backed up by agent_backup from the job's
 * NBD export.
 *
 * Why a checkpoint is never lost: every checkpoint keeps recording from its
 * creation on (vm/vm.h), and a checkpoint is deleted only when no disk's
 * newest complete point names it.  The points of a job name the job's new
 * checkpoint; so until they are committed the old checkpoint is what the
 * catalog names, and it stays.  A run killed at any moment (even SIGKILL)
 * leaves at most: a job still running, its new checkpoint, its private
 * directory; the next run removes all three (vm_cleanup, keeping what the
 * catalog names) before it starts its own job, under the repository lock
 * "vm:NAME".  A disk whose point was committed before the kill has its new
 * checkpoint kept (its point names it); a disk whose point was not still
 * has its old one.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/internal.h"
#include "common/error.h"
#include "common/vec.h"
#include "vm/vm.h"

struct vmb {
    struct agent_repo *repo;
    const struct agent_vm_opts *o;
    struct vm *vm;
    struct vm_job *job;
    size_t ndisks;
    char names[VM_MAX_DISKS][256];           /* "vm1/vda" */
    bool have_latest[VM_MAX_DISKS];
    struct catalog_point latest[VM_MAX_DISKS];
    const char *base[VM_MAX_DISKS];          /* checkpoint to go from, NULL = full */
    char reason[VM_MAX_DISKS][256];          /* why full */
    struct vm_export exports[VM_MAX_DISKS];
    char checkpoint[128];
    size_t reads_left;                       /* disks whose reads have not ended */
};

#define tell(o, ...) agent_notify((o)->note, (o)->opaque, __VA_ARGS__)

static void vm_log_cb(void *opaque, enum vm_log_level level, const char *msg)
{
    const struct agent_vm_opts *o = opaque;

    if (level == VM_LOG_WARN && o->warn)
        o->warn(o->opaque, msg);
    else if (level == VM_LOG_INFO && o->note)
        o->note(o->opaque, msg);
}

/* ---- What the catalog says ------------------------------------------------ */

struct keep_ctx {
    const char *prefix;           /* "vm1/" */
    size_t plen;
    char (*disks)[256];           /* newest checkpoint per disk of the VM */
    char (*ckpts)[128];
    size_t n;
};

/* Points come oldest first: the last one seen of a disk is its newest. */
static int keep_one(void *opaque, const struct catalog_point *p)
{
    struct keep_ctx *k = opaque;
    size_t i;

    if (strncmp(p->disk, k->prefix, k->plen) != 0)
        return 0;
    for (i = 0; i < k->n; i++)
        if (!strcmp(k->disks[i], p->disk))
            break;
    if (i == k->n) {
        if (k->n == VM_MAX_DISKS * 4)
            return 0;
        snprintf(k->disks[k->n++], 256, "%s", p->disk);
    }
    snprintf(k->ckpts[i], 128, "%s", p->checkpoint);
    return 0;
}

/* Removes the leftovers of earlier runs, keeping every checkpoint that the
 * newest point of one of the VM's disks names. */
static int cleanup(struct vmb *v)
{
    char prefix[300];
    struct keep_ctx k = { .prefix = prefix };
    const char *keep[VM_MAX_DISKS * 4];
    size_t nkeep = 0;
    int ret = -1;

    snprintf(prefix, sizeof prefix, "%s/", vm_name(v->vm));
    k.plen = strlen(prefix);
    k.disks = calloc(VM_MAX_DISKS * 4, sizeof *k.disks);
    k.ckpts = calloc(VM_MAX_DISKS * 4, sizeof *k.ckpts);
    if (!k.disks || !k.ckpts) {
        error_set(ENOMEM, "out of memory");
        goto out;
    }
    if (catalog_point_list(v->repo->cat, NULL, keep_one, &k) < 0)
        goto out;
    for (size_t i = 0; i < k.n; i++)
        if (k.ckpts[i][0])
            keep[nkeep++] = k.ckpts[i];
    if (vm_cleanup(v->vm, keep, nkeep) < 0) {
        error_prefix("clean up after earlier runs: ");
        goto out;
    }
    ret = 0;
out:
    free(k.disks);
    free(k.ckpts);
    return ret;
}

/* Full or incremental, and why. */
static int decide(struct vmb *v, size_t i)
{
    const struct vm_disk *d = vm_disk(v->vm, i);
    const char *kind = v->o->qmp ? "qmp" : "libvirt";
    struct catalog_point *p = &v->latest[i];
    char *why = v->reason[i];
    const size_t cap = sizeof v->reason[i];
    int64_t disk_id;

    v->base[i] = NULL;
    why[0] = 0;
    int r = catalog_disk_find(v->repo->cat, v->names[i], &disk_id);
    if (r == 1)
        r = catalog_point_latest(v->repo->cat, disk_id, p);
    if (r < 0)
        return -1;
    v->have_latest[i] = r == 1;
    if (!v->have_latest[i] || v->o->full)
        return 0;
    if (strcmp(p->source_kind, kind) != 0)
        snprintf(why, cap, "point %lld was taken from %s, not from this VM's checkpoints",
                 (long long)p->id, !strcmp(p->source_kind, "nbd") ? "an NBD URI" : p->source_kind);
    else if (strcmp(p->vm_uuid, vm_uuid(v->vm)) != 0)
        snprintf(why, cap, "point %lld is of another VM (UUID %s, this one is %s)",
                 (long long)p->id, p->vm_uuid, vm_uuid(v->vm));
    else if (p->disk_size != d->size)
        snprintf(why, cap, "the disk was resized from %llu to %llu bytes since point %lld",
                 (unsigned long long)p->disk_size, (unsigned long long)d->size, (long long)p->id);
    else if (!p->checkpoint[0])
        snprintf(why, cap, "point %lld names no checkpoint", (long long)p->id);
    else {
        char cwhy[256] = "";
        r = vm_checkpoint_check(v->vm, p->checkpoint, i, cwhy, sizeof cwhy);
        if (r < 0)
            return -1;
        if (r == 1) {
            v->base[i] = p->checkpoint;
            return 0;
        }
        snprintf(why, cap, "%s", cwhy);
    }
    tell(v->o, "%s: full backup: %s", v->names[i], why);
    return 0;
}

/* ---- The job -------------------------------------------------------------- */

static int begin_job(struct vmb *v)
{
    struct vm_backup_req reqs[VM_MAX_DISKS];
    bool any_incremental = false;

    vm_checkpoint_name(v->checkpoint, sizeof v->checkpoint);
    for (size_t i = 0; i < v->ndisks; i++) {
        reqs[i] = (struct vm_backup_req){ .disk = i, .incremental = v->base[i] };
        any_incremental |= v->base[i] != NULL;
    }
    v->job = vm_backup_begin(v->vm, reqs, v->ndisks, v->checkpoint, v->exports);
    if (v->job || !any_incremental)
        return v->job ? 0 : -1;
    /* The hypervisor refused the incremental (a bitmap it cannot use):
     * everything full, with its word for why. */
    char msg[256];
    snprintf(msg, sizeof msg, "the hypervisor refused the incremental: %.200s", error_msg());
    for (size_t i = 0; i < v->ndisks; i++) {
        if (v->base[i]) {
            snprintf(v->reason[i], sizeof v->reason[i], "%s", msg);
            tell(v->o, "%s: full backup: %s", v->names[i], msg);
        }
        v->base[i] = NULL;
        reqs[i].incremental = NULL;
    }
    v->job = vm_backup_begin(v->vm, reqs, v->ndisks, v->checkpoint, v->exports);
    return v->job ? 0 : -1;
}

/* The last disk's reads are over: the guest is slowed no more. */
static void end_reads(struct vmb *v)
{
    if (v->reads_left > 0 && --v->reads_left > 0)
        return;
    if (v->job && vm_backup_end_reads(v->job) < 0 && v->o->warn) {
        char msg[1200];
        snprintf(msg, sizeof msg, "ending the backup job: %s", error_msg());
        v->o->warn(v->o->opaque, msg);
    }
}

struct disk_cb {
    struct vmb *v;
    bool called;
};

static void reads_done(void *opaque)
{
    struct disk_cb *cb = opaque;

    cb->called = true;
    end_reads(cb->v);
}

static void backup_disk(struct vmb *v, size_t i, struct agent_vm_disk_result *res)
{
    const struct agent_vm_opts *o = v->o;
    struct disk_cb cb = { v, false };
    char label[1024];

    if (o->qmp)
        snprintf(label, sizeof label, "qmp:%s#%s", o->qmp_socket, vm_disk(v->vm, i)->name);
    else
        snprintf(label, sizeof label, "libvirt:%s#%s/%s", o->connect ? o->connect : "qemu:///system",
                 vm_name(v->vm), vm_disk(v->vm, i)->name);
    struct agent_backup_opts bo = {
        .uri = v->exports[i].uri,
        .disk = v->names[i],
        .bitmap = v->base[i] ? v->exports[i].bitmap : NULL,
        .full = !v->base[i],
        .connections = o->connections,
        .compress_level = o->compress_level,
        .max_rate = o->max_rate,
        .io_timeout_ms = o->io_timeout_ms,
        .source_kind = o->qmp ? "qmp" : "libvirt",
        .vm_uuid = vm_uuid(v->vm),
        .checkpoint = v->checkpoint,
        .full_reason = v->reason[i],
        .source_label = label,
        .reads_done = reads_done,
        .reads_opaque = &cb,
        .progress = o->progress,
        .warn = o->warn,
        .opaque = o->opaque,
    };
    if (o->disk_start)
        o->disk_start(o->opaque, v->names[i]);
    snprintf(res->full_reason, sizeof res->full_reason, "%s", v->reason[i]);
    res->ok = agent_backup(v->repo, &bo, &res->r) == 0;
    if (!res->ok) {
        snprintf(res->error, sizeof res->error, "%s", error_msg());
        if (!cb.called)
            end_reads(v);
    }
}

static int start(struct vmb *v, struct agent_vm_disk_result *res)
{
    if (cleanup(v) < 0)
        return -1;
    for (size_t i = 0; i < v->ndisks; i++) {
        snprintf(v->names[i], sizeof v->names[i], "%s/%s", vm_name(v->vm), vm_disk(v->vm, i)->name);
        snprintf(res[i].disk, sizeof res[i].disk, "%s", v->names[i]);
        if (decide(v, i) < 0) {
            error_prefix("%s: ", v->names[i]);
            return -1;
        }
    }
    if (begin_job(v) < 0) {
        error_prefix("%s: start the backup job: ", vm_name(v->vm));
        return -1;
    }
    return 0;
}

/* After the job: rotation (checkpoints no newest point names), and when
 * no disk succeeded, the job's checkpoint goes (vm_backup_finish). */
static int finish(struct vmb *v, bool any_ok)
{
    int ret = 0;

    if (vm_backup_finish(v->job, any_ok) < 0) {
        error_prefix("%s: end the backup job: ", vm_name(v->vm));
        ret = -1;
    }
    v->job = NULL;
    if (ret == 0 && cleanup(v) < 0) {
        error_prefix("%s: rotate checkpoints: ", vm_name(v->vm));
        ret = -1;
    }
    return ret;
}

int agent_backup_vm(struct agent_repo *r, const struct agent_vm_opts *o,
                    struct agent_vm_disk_result **resp, size_t *np)
{
    struct vmb *v = calloc(1, sizeof *v);
    struct agent_vm_disk_result *res = NULL;
    char lockname[300], broken[512] = "";
    bool locked = false;
    int ret = -1;

    *resp = NULL;
    *np = 0;
    if (!v) {
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    v->repo = r;
    v->o = o;
    struct vm_open_opts vo = {
        .kind = o->qmp ? VM_QMP : VM_LIBVIRT,
        .domain = o->domain,
        .connect = o->connect,
        .qmp_socket = o->qmp_socket,
        .name = o->vm_name,
        .disks = o->disks,
        .ndisks = o->ndisks,
        .workdir = o->workdir,
        .log = vm_log_cb,
        .opaque = (void *)o,
    };
    if (!(v->vm = vm_open(&vo)))
        goto out;
    v->ndisks = vm_ndisks(v->vm);
    if (v->ndisks == 0) {
        error_set(ENOENT, "%s: no disk to back up", vm_name(v->vm));
        goto out;
    }
    if (!(res = calloc(v->ndisks, sizeof *res))) {
        error_set(ENOMEM, "out of memory");
        goto out;
    }
    snprintf(lockname, sizeof lockname, "vm:%s", vm_name(v->vm));
    if (catalog_lock(r->cat, lockname, broken, sizeof broken) < 0)
        goto out;
    locked = true;
    if (broken[0] && o->warn)
        o->warn(o->opaque, broken);
    if (start(v, res) < 0)
        goto out;
    v->reads_left = v->ndisks;
    bool any_ok = false, all_ok = true;
    for (size_t i = 0; i < v->ndisks; i++) {
        backup_disk(v, i, &res[i]);
        any_ok |= res[i].ok;
        all_ok &= res[i].ok;
    }
    *resp = res;
    *np = v->ndisks;
    res = NULL;
    /* The points are committed whatever happens next: a job that does not
     * end cleanly or checkpoints not rotated are the next run's to clean up
     * (a warning), not a failed backup. */
    if (finish(v, any_ok) < 0 && o->warn)
        o->warn(o->opaque, error_msg());
    if (!all_ok)
        error_set(EIO, "%s: %s", vm_name(v->vm),
                  any_ok ? "some disks failed" : "every disk failed");
    ret = all_ok ? 0 : -1;

out:;
    struct error_saved e;
    error_save(&e);
    if (v->job)
        vm_backup_finish(v->job, false);
    if (locked)
        catalog_unlock(r->cat, lockname);
    vm_close(v->vm);
    error_restore(&e);
    free(res);
    free(v);
    return ret;
}

/* ---- One run's points ------------------------------------------------------- */

struct run_ctx {
    const char *prefix;
    size_t plen;
    struct agent_point *v;
    size_t n, cap;
    int err;
};

static int collect_vm(void *opaque, const struct agent_point *p)
{
    struct run_ctx *c = opaque;
    if (strncmp(p->disk, c->prefix, c->plen) != 0 || !p->checkpoint[0])
        return 0;
    if (VEC_RESERVE(c->v, c->n, c->cap, 32) < 0)
        return -1;
    c->v[c->n++] = *p;
    return 0;
}

/* Does every disk seen in v have a point made by checkpoint ck? */
static bool run_complete(const struct agent_point *v, size_t n, const char *ck)
{
    for (size_t i = 0; i < n; i++) {
        bool found = false;
        for (size_t k = 0; k < n && !found; k++)
            found = !strcmp(v[k].disk, v[i].disk) && !strcmp(v[k].checkpoint, ck);
        if (!found)
            return false;
    }
    return true;
}

int agent_vm_run_points(struct agent_repo *r, const char *vm, int64_t point,
                        struct agent_point **out, size_t *nout)
{
    char prefix[300];
    struct run_ctx c = { .prefix = prefix };
    const char *ck = NULL;

    *out = NULL;
    *nout = 0;
    snprintf(prefix, sizeof prefix, "%s/", vm);
    c.plen = strlen(prefix);
    if (agent_list(r, NULL, collect_vm, &c) < 0) {
        free(c.v);
        return -1;
    }
    if (c.n == 0) {
        error_set(ENOENT, "no restore point of VM %s (disks named %s*)", vm, prefix);
        goto fail;
    }
    if (point) {
        for (size_t i = 0; i < c.n && !ck; i++)
            if (c.v[i].id == point)
                ck = c.v[i].checkpoint;
        if (!ck) {
            error_set(ENOENT, "point %lld is not a point of VM %s", (long long)point, vm);
            goto fail;
        }
    } else {
        /* The newest run in which every disk of the VM was backed up. */
        for (size_t i = c.n; i-- > 0 && !ck;)
            if (run_complete(c.v, c.n, c.v[i].checkpoint))
                ck = c.v[i].checkpoint;
        if (!ck) {
            error_set(ENOENT, "no run of VM %s backed up all its disks; name one with --point", vm);
            goto fail;
        }
    }
    char ckbuf[128];
    snprintf(ckbuf, sizeof ckbuf, "%s", ck);
    size_t k = 0;
    for (size_t i = 0; i < c.n; i++)
        if (!strcmp(c.v[i].checkpoint, ckbuf))
            c.v[k++] = c.v[i];
    *out = c.v;
    *nout = k;
    return 0;
fail:
    free(c.v);
    return -1;
}
