/* qmp.c: the QMP backend of vm/: a running QEMU without libvirt.
 *
 * A checkpoint is a persistent dirty bitmap of that name on the node of
 * every disk of the job.  A backup job (the sequence of QMP-BACKUP in
 * docs/ARCHITECTURE.md):
 *   1. per disk, a fleecing overlay: a qcow2 scratch file in the job's
 *      private directory, made by blockdev-create (a job: its
 *      JOB_STATUS_CHANGE "concluded" event, then job-dismiss), opened as
 *      node nbdvault-fleece-<node> with the disk's node as its backing;
 *   2. one transaction for all disks (one consistent moment): for an
 *      incremental disk, the export bitmap nbdvault-export (not persistent,
 *      disabled) filled from the base checkpoint; for every disk the next
 *      checkpoint (persistent, recording) and a blockdev-backup sync=none
 *      job into the overlay (copy-before-write: the overlay keeps what the
 *      guest overwrites);
 *   3. nbd-server-start on a socket in the job directory, and per disk a
 *      read-only, multi-conn block-export-add of the overlay, with the
 *      export bitmap.
 * Ending the reads undoes 3, 2's jobs and 1 (the guest's writes are no
 * longer slowed); a failure also merges the new checkpoint into the base
 * and removes it.  Objects of ours carry the prefix "nbdvault-", so a
 * killed run's leftovers are found by name (qmp_cleanup).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/error.h"
#include "vm/internal.h"
#include "vm/qmp-client.h"

#define OURS "nbdvault-"
#define EXPORT_BITMAP "nbdvault-export"
#define CBW_PREFIX "nbdvault-cbw-"    /* the fleecing job's filter node: + the disk's node */

struct qmp_vm {
    struct qmp *q;
    int timeout_ms;
};

struct qmp_job_disk {
    size_t disk;
    const char *base;             /* NULL: full */
    char fleece_file[64], fleece[64], job[64], export_id[64], cbw[80], create[80];
    bool file_added, creating, fleece_added, export_bitmap, checkpoint, job_started, exported;
};

struct qmp_job {
    char dir[1024];
    char checkpoint[128];
    bool server;
    size_t n;
    struct qmp_job_disk d[VM_MAX_DISKS];
};

static struct qmp *Q(struct vm *v)
{
    return ((struct qmp_vm *)v->priv)->q;
}

static struct json_object *jstr(const char *s) { return json_object_new_string(s); }

/* ---- Opening: identity and disks ----------------------------------------- */

static int list_disks(struct vm *v, const struct vm_open_opts *o)
{
    struct json_object *blocks = qmp_exec(Q(v), "query-block", NULL);
    struct vm_disk all[VM_MAX_DISKS];
    size_t nall = 0;

    if (!blocks)
        return -1;
    size_t n = json_object_array_length(blocks);
    for (size_t i = 0; i < n && nall < VM_MAX_DISKS; i++) {
        struct json_object *b = json_object_array_get_idx(blocks, i), *ins, *img, *x;
        if (!json_object_object_get_ex(b, "inserted", &ins))
            continue;   /* an empty drive */
        if (json_object_object_get_ex(ins, "ro", &x) && json_object_get_boolean(x))
            continue;   /* a CD-ROM, a read-only disk: no checkpoint possible */
        const char *node = qmp_str(ins, "node-name");
        if (!node || !json_object_object_get_ex(ins, "image", &img))
            continue;
        /* A fleecing job of a killed run still holds its filter above the
         * disk's node: named after it, so the disk keeps its name. */
        if (!strncmp(node, CBW_PREFIX, strlen(CBW_PREFIX)))
            node += strlen(CBW_PREFIX);
        struct vm_disk *d = &all[nall++];
        memset(d, 0, sizeof *d);
        snprintf(d->name, sizeof d->name, "%s", node);
        if (json_object_object_get_ex(img, "virtual-size", &x))
            d->size = (uint64_t)json_object_get_int64(x);
        snprintf(d->source, sizeof d->source, "%s", qmp_str(img, "filename") ? qmp_str(img, "filename") : "");
    }
    json_object_put(blocks);
    if (!o->ndisks) {
        memcpy(v->disks, all, nall * sizeof *all);
        v->ndisks = nall;
        return 0;
    }
    for (size_t k = 0; k < o->ndisks; k++) {
        size_t i;
        for (i = 0; i < nall && strcmp(all[i].name, o->disks[k]); i++)
            ;
        if (i == nall) {
            char known[512] = "";
            size_t len = 0;
            for (size_t j = 0; j < nall && len < sizeof known - 2; j++)
                len += (size_t)snprintf(known + len, sizeof known - len, "%s%s", j ? ", " : "", all[j].name);
            error_set(ENOENT, "QEMU has no writable disk node \"%s\" (its disks: %s)", o->disks[k],
                      nall ? known : "none");
            return -1;
        }
        v->disks[v->ndisks++] = all[i];
    }
    return 0;
}

static int qmp_open(struct vm *v, const struct vm_open_opts *o)
{
    struct qmp_vm *p = calloc(1, sizeof *p);
    if (!p) {
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    p->timeout_ms = (int)v->timeout_s * 1000;
    v->priv = p;
    if (!o->qmp_socket || !(p->q = qmp_connect(o->qmp_socket, p->timeout_ms)))
        goto fail;
    if (o->name && *o->name) {
        snprintf(v->name, sizeof v->name, "%s", o->name);
    } else {
        struct json_object *r = qmp_exec(p->q, "query-name", NULL);
        if (!r)
            goto fail;
        const char *name = qmp_str(r, "name");
        snprintf(v->name, sizeof v->name, "%s", name ? name : "");
        json_object_put(r);
        if (!v->name[0]) {
            error_set(EINVAL, "QEMU at %s has no name (-name): give the VM's name with --vm NAME",
                      o->qmp_socket);
            goto fail;
        }
    }
    if (strchr(v->name, '/')) {
        error_set(EINVAL, "VM name \"%s\" has a '/'", v->name);
        goto fail;
    }
    struct json_object *u = qmp_exec(p->q, "query-uuid", NULL);
    if (!u)
        goto fail;
    snprintf(v->uuid, sizeof v->uuid, "%s", qmp_str(u, "UUID") ? qmp_str(u, "UUID") : "");
    json_object_put(u);
    if (list_disks(v, o) < 0)
        goto fail;
    return 0;
fail:
    error_prefix("QMP %s: ", o->qmp_socket ? o->qmp_socket : "(no socket)");
    qmp_close(p->q);
    free(p);
    v->priv = NULL;
    return -1;
}

static void qmp_close_vm(struct vm *v)
{
    struct qmp_vm *p = v->priv;
    if (!p)
        return;
    qmp_close(p->q);
    free(p);
}

/* ---- Bitmaps -------------------------------------------------------------- */

/* The dirty-bitmaps array of a node (the caller puts it), or NULL.  (Every
 * named node, also one below a filter, is in query-named-block-nodes.) */
static struct json_object *node_bitmaps(struct vm *v, const char *node)
{
    struct json_object *blocks = qmp_exec(Q(v), "query-named-block-nodes", NULL), *ret = NULL;
    if (!blocks)
        return NULL;
    size_t n = json_object_array_length(blocks);
    for (size_t i = 0; i < n && !ret; i++) {
        struct json_object *b = json_object_array_get_idx(blocks, i), *bms;
        const char *nn = qmp_str(b, "node-name");
        if (!nn || strcmp(nn, node) != 0)
            continue;
        ret = json_object_object_get_ex(b, "dirty-bitmaps", &bms) ? json_object_get(bms)
                                                                 : json_object_new_array();
    }
    json_object_put(blocks);
    if (!ret)
        error_set(ENOENT, "node %s is not in QEMU any more", node);
    return ret;
}

static bool flag(struct json_object *o, const char *key)
{
    struct json_object *x;
    return json_object_object_get_ex(o, key, &x) && json_object_get_boolean(x);
}

static int qmp_checkpoint_check(struct vm *v, const char *name, size_t disk, char *why, size_t cap)
{
    const char *node = v->disks[disk].name;
    struct json_object *bms = node_bitmaps(v, node), *found = NULL;
    if (!bms)
        return -1;
    for (size_t i = 0; i < json_object_array_length(bms) && !found; i++) {
        struct json_object *b = json_object_array_get_idx(bms, i);
        const char *bn = qmp_str(b, "name");
        if (bn && !strcmp(bn, name))
            found = b;
    }
    int ret = 1;
    if (!found)
        snprintf(why, cap, "bitmap %s does not exist on node %s", name, node), ret = 0;
    else if (flag(found, "inconsistent"))
        snprintf(why, cap, "QEMU marks bitmap %s of node %s inconsistent", name, node), ret = 0;
    else if (flag(found, "busy"))
        snprintf(why, cap, "bitmap %s of node %s is busy (in use by another job)", name, node), ret = 0;
    else if (!flag(found, "recording"))
        snprintf(why, cap, "bitmap %s of node %s is not recording", name, node), ret = 0;
    json_object_put(bms);
    return ret;
}

static int bitmap_remove(struct vm *v, const char *node, const char *name)
{
    return qmp_run(Q(v), "block-dirty-bitmap-remove",
                   qmp_args("node", jstr(node), "name", jstr(name), NULL));
}

/* ---- Fleecing overlays ------------------------------------------------------ */

/* The status of job id ("" when QEMU has no such job). */
static void job_status(struct vm *v, const char *id, char *st, size_t n)
{
    struct json_object *r = qmp_exec(Q(v), "query-jobs", NULL);
    snprintf(st, n, "%s", "");
    for (size_t i = 0; r && i < json_object_array_length(r); i++) {
        struct json_object *j = json_object_array_get_idx(r, i);
        if (qmp_str(j, "id") && !strcmp(qmp_str(j, "id"), id))
            snprintf(st, n, "%s", qmp_str(j, "status") ? qmp_str(j, "status") : "");
    }
    json_object_put(r);
}

/* Ends job id whatever its state: cancelled when it still runs, waited for
 * (bounded), dismissed.  0 when QEMU dismissed it or has no such job. */
static int job_reap(struct vm *v, const char *id)
{
    struct qmp_vm *p = v->priv;
    char st[32];
    job_status(v, id, st, sizeof st);
    if (!st[0])
        return 0;
    if (strcmp(st, "concluded") && strcmp(st, "null"))
        qmp_run(p->q, "job-cancel", qmp_args("id", jstr(id), NULL));
    for (int64_t t0 = clock_mono_ms(); st[0] && strcmp(st, "concluded") && strcmp(st, "null") &&
                                    clock_mono_ms() - t0 < p->timeout_ms;) {
        usleep(20000);
        job_status(v, id, st, sizeof st);
    }
    int r = qmp_run(p->q, "job-dismiss", qmp_args("id", jstr(id), NULL));
    qmp_drop_events(p->q, "JOB_STATUS_CHANGE", "id", id);
    return r;
}

/* Waits for job id to conclude (JOB_STATUS_CHANGE), then checks its
 * outcome and dismisses it. */
static int wait_job(struct vm *v, const char *id)
{
    struct qmp_vm *p = v->priv;
    for (;;) {
        struct json_object *d = qmp_wait_event(p->q, "JOB_STATUS_CHANGE", "id", id, p->timeout_ms);
        if (!d)
            return -1;
        const char *st = qmp_str(d, "status");
        bool concluded = st && (!strcmp(st, "concluded") || !strcmp(st, "null"));
        json_object_put(d);
        if (concluded)
            break;
    }
    struct json_object *jobs = qmp_exec(p->q, "query-jobs", NULL);
    char err[512] = "";
    for (size_t i = 0; jobs && i < json_object_array_length(jobs); i++) {
        struct json_object *j = json_object_array_get_idx(jobs, i);
        if (qmp_str(j, "id") && !strcmp(qmp_str(j, "id"), id) && qmp_str(j, "error"))
            snprintf(err, sizeof err, "%s", qmp_str(j, "error"));
    }
    json_object_put(jobs);
    qmp_run(p->q, "job-dismiss", qmp_args("id", jstr(id), NULL));
    if (err[0]) {
        error_set(EIO, "job %s failed: %s", id, err);
        return -1;
    }
    return 0;
}

static int add_overlay(struct vm *v, struct qmp_job *j, struct qmp_job_disk *d)
{
    const struct vm_disk *disk = &v->disks[d->disk];
    char path[1200];
    snprintf(path, sizeof path, "%s/fleece-%s.qcow2", j->dir, disk->name);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        error_set(errno, "%s: %s", path, strerror(errno));
        return -1;
    }
    close(fd);
    if (qmp_run(Q(v), "blockdev-add",
                qmp_args("driver", jstr("file"), "node-name", jstr(d->fleece_file),
                         "filename", jstr(path), NULL)) < 0)
        return -1;
    d->file_added = true;
    snprintf(d->create, sizeof d->create, OURS "create-%s", disk->name);
    struct json_object *opts = qmp_args("driver", jstr("qcow2"), "file", jstr(d->fleece_file),
                                        "size", json_object_new_int64((int64_t)disk->size), NULL);
    /* An event of an earlier job of this id (one reaped at cleanup) is not
     * this one's. */
    qmp_drop_events(Q(v), "JOB_STATUS_CHANGE", "id", d->create);
    if (qmp_run(Q(v), "blockdev-create", qmp_args("job-id", jstr(d->create), "options", opts, NULL)) < 0)
        return -1;
    d->creating = true;
    if (wait_job(v, d->create) < 0)
        return -1;
    d->creating = false;
    if (qmp_run(Q(v), "blockdev-add",
                qmp_args("driver", jstr("qcow2"), "node-name", jstr(d->fleece),
                         "file", jstr(d->fleece_file), "backing", jstr(disk->name), NULL)) < 0)
        return -1;
    d->fleece_added = true;
    return 0;
}

/* One transaction: the export bitmaps, the new checkpoint, the fleecing
 * jobs of every disk. */
static int start_fleecing(struct vm *v, struct qmp_job *j)
{
    struct json_object *acts = json_object_new_array();
    for (size_t i = 0; i < j->n; i++) {
        struct qmp_job_disk *d = &j->d[i];
        const char *node = v->disks[d->disk].name;
        if (d->base) {
            json_object_array_add(acts, qmp_args("type", jstr("block-dirty-bitmap-add"), "data",
                qmp_args("node", jstr(node), "name", jstr(EXPORT_BITMAP),
                         "persistent", json_object_new_boolean(0),
                         "disabled", json_object_new_boolean(1), NULL), NULL));
            struct json_object *src = json_object_new_array();
            json_object_array_add(src, jstr(d->base));
            json_object_array_add(acts, qmp_args("type", jstr("block-dirty-bitmap-merge"), "data",
                qmp_args("node", jstr(node), "target", jstr(EXPORT_BITMAP), "bitmaps", src, NULL),
                NULL));
        }
        json_object_array_add(acts, qmp_args("type", jstr("block-dirty-bitmap-add"), "data",
            qmp_args("node", jstr(node), "name", jstr(j->checkpoint),
                     "persistent", json_object_new_boolean(1), NULL), NULL));
        json_object_array_add(acts, qmp_args("type", jstr("blockdev-backup"), "data",
            qmp_args("job-id", jstr(d->job), "device", jstr(node), "target", jstr(d->fleece),
                     "sync", jstr("none"), "filter-node-name", jstr(d->cbw), NULL), NULL));
    }
    if (qmp_run(Q(v), "transaction", qmp_args("actions", acts, NULL)) < 0)
        return -1;
    for (size_t i = 0; i < j->n; i++) {
        j->d[i].export_bitmap = j->d[i].base != NULL;
        j->d[i].checkpoint = j->d[i].job_started = true;
    }
    return 0;
}

static int start_exports(struct vm *v, struct qmp_job *j, struct vm_export *exports)
{
    char sock[1100];
    snprintf(sock, sizeof sock, "%s/nbd.sock", j->dir);
    if (qmp_run(Q(v), "nbd-server-start",
                qmp_args("addr", qmp_args("type", jstr("unix"), "data",
                                          qmp_args("path", jstr(sock), NULL), NULL), NULL)) < 0)
        return -1;
    j->server = true;
    for (size_t i = 0; i < j->n; i++) {
        struct qmp_job_disk *d = &j->d[i];
        const char *node = v->disks[d->disk].name;
        struct json_object *a = qmp_args("type", jstr("nbd"), "id", jstr(d->export_id),
                                         "node-name", jstr(d->fleece), "name", jstr(node),
                                         "writable", json_object_new_boolean(0),
                                         "multi-conn", jstr("on"), NULL);
        if (d->base) {
            struct json_object *bms = json_object_new_array();
            json_object_array_add(bms, qmp_args("node", jstr(node), "name", jstr(EXPORT_BITMAP), NULL));
            json_object_object_add(a, "bitmaps", bms);
        }
        /* QEMU 8.1 and later take multi-conn; before, a read-only export
         * advertises it by itself. */
        struct json_object *a2 = NULL;
        json_object_deep_copy(a, &a2, NULL);
        json_object_object_del(a2, "multi-conn");
        int r = qmp_run(Q(v), "block-export-add", json_object_get(a));
        if (r < 0 && strstr(error_msg(), "'multi-conn' is unexpected"))
            r = qmp_run(Q(v), "block-export-add", json_object_get(a2));
        json_object_put(a);
        json_object_put(a2);
        if (r < 0)
            return -1;
        d->exported = true;
        snprintf(exports[i].uri, sizeof exports[i].uri, "nbd+unix:///%.60s?socket=%s", node, sock);
        snprintf(exports[i].bitmap, sizeof exports[i].bitmap, "%s", d->base ? EXPORT_BITMAP : "");
    }
    return 0;
}

/* ---- Teardown ------------------------------------------------------------------ */

/* Runs a teardown step; the first failure's message is kept in first. */
static void step(int r, struct error_saved *first, bool *failed)
{
    if (r < 0 && !*failed) {
        error_save(first);
        *failed = true;
    }
}

static int cancel_job(struct vm *v, const char *job)
{
    struct qmp_vm *p = v->priv;
    if (qmp_run(p->q, "block-job-cancel", qmp_args("device", jstr(job), "force",
                                                   json_object_new_boolean(1), NULL)) < 0)
        return -1;
    struct json_object *d = qmp_wait_event(p->q, "BLOCK_JOB_CANCELLED", "device", job, p->timeout_ms);
    json_object_put(d);
    return d ? 0 : -1;
}

static int del_export(struct vm *v, const char *id)
{
    struct qmp_vm *p = v->priv;
    if (qmp_run(p->q, "block-export-del", qmp_args("id", jstr(id), "mode", jstr("hard"), NULL)) < 0)
        return -1;
    struct json_object *d = qmp_wait_event(p->q, "BLOCK_EXPORT_DELETED", "id", id, p->timeout_ms);
    json_object_put(d);
    return d ? 0 : -1;
}

/* Undoes what the job set up, newest first: exports, server, fleecing
 * jobs, overlays, export bitmaps (not the checkpoint). */
static int teardown(struct vm *v, struct qmp_job *j)
{
    struct error_saved first;
    bool failed = false;

    for (size_t i = j->n; i-- > 0;)
        if (j->d[i].exported) {
            step(del_export(v, j->d[i].export_id), &first, &failed);
            j->d[i].exported = false;
        }
    if (j->server) {
        step(qmp_run(Q(v), "nbd-server-stop", NULL), &first, &failed);
        j->server = false;
    }
    for (size_t i = j->n; i-- > 0;) {
        struct qmp_job_disk *d = &j->d[i];
        const char *node = v->disks[d->disk].name;
        if (d->job_started)
            step(cancel_job(v, d->job), &first, &failed);
        if (d->creating)
            step(job_reap(v, d->create), &first, &failed);
        if (d->fleece_added)
            step(qmp_run(Q(v), "blockdev-del", qmp_args("node-name", jstr(d->fleece), NULL)), &first, &failed);
        if (d->file_added)
            step(qmp_run(Q(v), "blockdev-del", qmp_args("node-name", jstr(d->fleece_file), NULL)), &first, &failed);
        if (d->export_bitmap)
            step(bitmap_remove(v, node, EXPORT_BITMAP), &first, &failed);
        d->job_started = d->creating = d->fleece_added = d->file_added = d->export_bitmap = false;
    }
    if (j->dir[0]) {
        vm_job_dir_remove(v, j->dir);
        j->dir[0] = 0;
    }
    if (failed)
        error_restore(&first);
    return failed ? -1 : 0;
}

/* The new checkpoint goes; each base keeps what it recorded and gets the
 * new one's bits too (both recorded every write since the job began). */
static int drop_checkpoint(struct vm *v, struct qmp_job *j)
{
    struct error_saved first;
    bool failed = false;
    for (size_t i = 0; i < j->n; i++) {
        struct qmp_job_disk *d = &j->d[i];
        const char *node = v->disks[d->disk].name;
        if (!d->checkpoint)
            continue;
        if (d->base) {
            struct json_object *src = json_object_new_array();
            json_object_array_add(src, jstr(j->checkpoint));
            step(qmp_run(Q(v), "block-dirty-bitmap-merge",
                         qmp_args("node", jstr(node), "target", jstr(d->base), "bitmaps", src, NULL)),
                 &first, &failed);
        }
        step(bitmap_remove(v, node, j->checkpoint), &first, &failed);
        d->checkpoint = false;
    }
    if (failed)
        error_restore(&first);
    return failed ? -1 : 0;
}

static int qmp_backup_begin(struct vm_job *vj, const struct vm_backup_req *reqs, size_t n,
                            const char *new_checkpoint, struct vm_export *exports)
{
    struct vm *v = vj->vm;
    struct qmp_job *j = calloc(1, sizeof *j);
    if (!j) {
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    j->n = n;
    snprintf(j->checkpoint, sizeof j->checkpoint, "%s", new_checkpoint);
    for (size_t i = 0; i < n; i++) {
        struct qmp_job_disk *d = &j->d[i];
        const char *node = v->disks[reqs[i].disk].name;
        d->disk = reqs[i].disk;
        d->base = reqs[i].incremental;
        snprintf(d->fleece_file, sizeof d->fleece_file, OURS "fleece-file-%.40s", node);
        snprintf(d->fleece, sizeof d->fleece, OURS "fleece-%.40s", node);
        snprintf(d->job, sizeof d->job, OURS "fleece-job-%.40s", node);
        snprintf(d->export_id, sizeof d->export_id, OURS "export-%.40s", node);
        snprintf(d->cbw, sizeof d->cbw, CBW_PREFIX "%.60s", node);
    }
    if (vm_job_dir(v, (uid_t)-1, (gid_t)-1, j->dir, sizeof j->dir) < 0) {
        j->dir[0] = 0;
        goto fail;
    }
    for (size_t i = 0; i < n; i++)
        if (add_overlay(v, j, &j->d[i]) < 0)
            goto fail;
    if (start_fleecing(v, j) < 0 || start_exports(v, j, exports) < 0)
        goto fail;
    vm_log(v, VM_LOG_DEBUG, "backup job of %s started, checkpoint %s", v->name, new_checkpoint);
    vj->priv = j;
    return 0;
fail:;
    struct error_saved e;
    error_save(&e);
    teardown(v, j);
    drop_checkpoint(v, j);
    error_restore(&e);
    free(j);
    return -1;
}

static int qmp_end_reads(struct vm_job *vj)
{
    return teardown(vj->vm, vj->priv);
}

static int qmp_finish(struct vm_job *vj, bool success)
{
    struct qmp_job *j = vj->priv;
    int r = success ? 0 : drop_checkpoint(vj->vm, j);
    free(j);
    return r;
}

/* ---- Leftovers of killed runs --------------------------------------------------- */

static bool ours(const char *s)
{
    return s && !strncmp(s, OURS, strlen(OURS));
}

static bool kept(const char *name, const char *const *keep, size_t nkeep)
{
    for (size_t i = 0; i < nkeep; i++)
        if (!strcmp(name, keep[i]))
            return true;
    return false;
}

/* Jobs of ours that block-job-cancel does not reach (blockdev-create): a
 * run killed while one ran leaves it running or concluded and never
 * dismissed, and its id would refuse every later run's. */
static void cleanup_other_jobs(struct vm *v, int *count)
{
    struct json_object *r = qmp_exec(Q(v), "query-jobs", NULL);
    for (size_t i = 0; r && i < json_object_array_length(r); i++) {
        const char *id = qmp_str(json_object_array_get_idx(r, i), "id");
        if (ours(id) && job_reap(v, id) == 0) {
            vm_log(v, VM_LOG_INFO, "%s: dismissed job %s, left by an earlier run", v->name, id);
            (*count)++;
        }
    }
    json_object_put(r);
}

/* Exports, the NBD server, block jobs and overlays of ours. */
static int cleanup_jobs(struct vm *v, int *count)
{
    struct json_object *r;
    bool had_dirs = false;

    if ((r = qmp_exec(Q(v), "query-block-exports", NULL))) {
        for (size_t i = 0; i < json_object_array_length(r); i++) {
            const char *id = qmp_str(json_object_array_get_idx(r, i), "id");
            if (ours(id) && del_export(v, id) == 0) {
                vm_log(v, VM_LOG_INFO, "%s: removed export %s, left by an earlier run", v->name, id);
                (*count)++;
                had_dirs = true;
            }
        }
        json_object_put(r);
    }
    /* The NBD server of a killed run (its exports gone or never added)
     * serves from a job directory of ours: stopped when one is left. */
    int dirs = vm_job_dirs_cleanup(v);
    *count += dirs;
    if ((had_dirs || dirs) && qmp_run(Q(v), "nbd-server-stop", NULL) == 0)
        vm_log(v, VM_LOG_INFO, "%s: stopped the NBD server of an earlier run", v->name);
    if ((r = qmp_exec(Q(v), "query-block-jobs", NULL))) {
        for (size_t i = 0; i < json_object_array_length(r); i++) {
            const char *id = qmp_str(json_object_array_get_idx(r, i), "device");
            if (ours(id) && cancel_job(v, id) == 0) {
                vm_log(v, VM_LOG_INFO, "%s: cancelled job %s, left by an earlier run", v->name, id);
                (*count)++;
            }
        }
        json_object_put(r);
    }
    cleanup_other_jobs(v, count);
    if (!(r = qmp_exec(Q(v), "query-named-block-nodes", NULL)))
        return -1;
    /* Overlays before the files under them. */
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < json_object_array_length(r); i++) {
            const char *nn = qmp_str(json_object_array_get_idx(r, i), "node-name");
            bool file = nn && strstr(nn, "fleece-file-");
            if (!ours(nn) || file != (pass == 1) || !strncmp(nn, CBW_PREFIX, strlen(CBW_PREFIX)))
                continue;
            if (qmp_run(Q(v), "blockdev-del", qmp_args("node-name", jstr(nn), NULL)) == 0) {
                vm_log(v, VM_LOG_INFO, "%s: removed node %s, left by an earlier run", v->name, nn);
                (*count)++;
            }
        }
    json_object_put(r);
    return 0;
}

static int qmp_cleanup(struct vm *v, const char *const *keep, size_t nkeep)
{
    int count = 0;
    if (cleanup_jobs(v, &count) < 0)
        return -1;
    for (size_t k = 0; k < v->ndisks; k++) {
        const char *node = v->disks[k].name;
        struct json_object *bms = node_bitmaps(v, node);
        if (!bms)
            return -1;
        for (size_t i = 0; i < json_object_array_length(bms); i++) {
            const char *bn = qmp_str(json_object_array_get_idx(bms, i), "name");
            if (!ours(bn) || kept(bn, keep, nkeep))
                continue;
            if (bitmap_remove(v, node, bn) < 0) {
                json_object_put(bms);
                return -1;
            }
            vm_log(v, VM_LOG_INFO, "%s: removed bitmap %s of node %s%s", v->name, bn, node,
                   strcmp(bn, EXPORT_BITMAP) ? " (a checkpoint no point names)" : ", left by an earlier run");
            count++;
        }
        json_object_put(bms);
    }
    return count;
}

const struct vm_ops vm_qmp_ops = {
    .open = qmp_open,
    .close = qmp_close_vm,
    .checkpoint_check = qmp_checkpoint_check,
    .cleanup = qmp_cleanup,
    .backup_begin = qmp_backup_begin,
    .end_reads = qmp_end_reads,
    .finish = qmp_finish,
};
