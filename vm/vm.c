/* vm.c: the backend-independent part of vm/: dispatch, checkpoint names,
 * private job directories. */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"
#include "vm/internal.h"

#define JOB_DIR_PREFIX "nbdvault-job-"

void vm_log(struct vm *v, enum vm_log_level level, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;

    if (!v->log)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    v->log(v->opaque, level, msg);
}

struct vm *vm_open(const struct vm_open_opts *o)
{
    struct vm *v = calloc(1, sizeof *v);

    if (!v) {
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    v->kind = o->kind;
    v->ops = o->kind == VM_LIBVIRT ? &vm_libvirt_ops : &vm_qmp_ops;
    v->timeout_s = o->timeout_s ? o->timeout_s : 60;
    v->log = o->log;
    v->opaque = o->opaque;
    const char *wd = o->workdir;
    if (!wd || !*wd)
        wd = getenv("TMPDIR");
    if (!wd || !*wd)
        wd = "/var/tmp";
    snprintf(v->workdir, sizeof v->workdir, "%s", wd);
    if (o->ndisks > VM_MAX_DISKS) {
        error_set(EINVAL, "at most %d disks", VM_MAX_DISKS);
        free(v);
        return NULL;
    }
    if (v->ops->open(v, o) < 0) {
        free(v);
        return NULL;
    }
    return v;
}

void vm_close(struct vm *v)
{
    if (!v)
        return;
    v->ops->close(v);
    free(v);
}

enum vm_kind vm_kind(const struct vm *v) { return v->kind; }
const char *vm_name(const struct vm *v) { return v->name; }
const char *vm_uuid(const struct vm *v) { return v->uuid; }
size_t vm_ndisks(const struct vm *v) { return v->ndisks; }

const struct vm_disk *vm_disk(const struct vm *v, size_t i)
{
    return i < v->ndisks ? &v->disks[i] : NULL;
}

void vm_checkpoint_name(char *buf, size_t cap)
{
    time_t t = time(NULL);
    struct tm tm;
    uint32_t rnd = 0;
    char ts[32];

    if (getrandom(&rnd, sizeof rnd, 0) != sizeof rnd)
        rnd = (uint32_t)getpid() ^ (uint32_t)t;
    gmtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%Y%m%dT%H%M%SZ", &tm);
    snprintf(buf, cap, VM_CHECKPOINT_PREFIX "%s-%08x", ts, rnd);
}

int vm_checkpoint_check(struct vm *v, const char *name, size_t disk, char *why, size_t cap)
{
    if (disk >= v->ndisks) {
        error_set(EINVAL, "no disk %zu", disk);
        return -1;
    }
    if (strncmp(name, VM_CHECKPOINT_PREFIX, strlen(VM_CHECKPOINT_PREFIX)) != 0) {
        snprintf(why, cap, "checkpoint \"%s\" is not one of nbdvault's", name);
        return 0;
    }
    return v->ops->checkpoint_check(v, name, disk, why, cap);
}

int vm_cleanup(struct vm *v, const char *const *keep, size_t nkeep)
{
    return v->ops->cleanup(v, keep, nkeep);
}

struct vm_job *vm_backup_begin(struct vm *v, const struct vm_backup_req *reqs, size_t n,
                               const char *new_checkpoint, struct vm_export *exports)
{
    struct vm_job *j = calloc(1, sizeof *j);

    if (!j) {
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    j->vm = v;
    for (size_t i = 0; i < n; i++)
        if (reqs[i].disk >= v->ndisks) {
            error_set(EINVAL, "no disk %zu", reqs[i].disk);
            free(j);
            return NULL;
        }
    memset(exports, 0, n * sizeof *exports);
    if (v->ops->backup_begin(j, reqs, n, new_checkpoint, exports) < 0) {
        free(j);
        return NULL;
    }
    return j;
}

int vm_backup_end_reads(struct vm_job *j)
{
    if (j->reads_ended)
        return 0;
    j->reads_ended = true;
    return j->vm->ops->end_reads(j);
}

int vm_backup_finish(struct vm_job *j, bool success)
{
    if (!j)
        return 0;
    int ret = 0;
    struct error_saved e;
    error_save(&e);
    if (!j->reads_ended && vm_backup_end_reads(j) < 0)
        ret = -1;
    if (j->vm->ops->finish(j, success) < 0)
        ret = -1;
    if (ret == 0)
        error_restore(&e);
    free(j);
    return ret;
}

/* ---- Job directories ------------------------------------------------------ */

static void dir_component(const char *name, char *out, size_t cap)
{
    size_t k = 0;
    for (const char *p = name; *p && k + 1 < cap && k < 48; p++)
        out[k++] = (char)((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                                  (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'
                              ? *p
                              : '_');
    out[k] = 0;
}

int vm_job_dir(struct vm *v, uid_t uid, gid_t gid, char *dir, size_t cap)
{
    char comp[64];

    dir_component(v->name, comp, sizeof comp);
    if ((size_t)snprintf(dir, cap, "%s/" JOB_DIR_PREFIX "%s-XXXXXX", v->workdir, comp) >= cap) {
        error_set(ENAMETOOLONG, "job directory under %s: name too long", v->workdir);
        return -1;
    }
    if (!mkdtemp(dir)) {
        error_set(errno, "cannot create a job directory under %s: %s", v->workdir,
                  strerror(errno));
        return -1;
    }
    if (chmod(dir, 0700) < 0 ||
        ((uid != (uid_t)-1 || gid != (gid_t)-1) && chown(dir, uid, gid) < 0)) {
        error_set(errno, "%s: %s", dir, strerror(errno));
        rmdir(dir);
        return -1;
    }
    return 0;
}

void vm_job_dir_remove(struct vm *v, const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        char path[1200];
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                continue;
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            if (unlink(path) < 0)
                vm_log(v, VM_LOG_WARN, "cannot remove %s: %s", path, strerror(errno));
        }
        closedir(d);
    }
    if (rmdir(dir) < 0 && errno != ENOENT)
        vm_log(v, VM_LOG_WARN, "cannot remove %s: %s", dir, strerror(errno));
}

int vm_job_dirs_cleanup(struct vm *v)
{
    char comp[64], prefix[128], path[1200];
    int n = 0;

    dir_component(v->name, comp, sizeof comp);
    snprintf(prefix, sizeof prefix, JOB_DIR_PREFIX "%s-", comp);
    DIR *d = opendir(v->workdir);
    if (!d)
        return 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        /* The prefix and exactly the six characters of mkdtemp. */
        if (strncmp(de->d_name, prefix, strlen(prefix)) != 0 ||
            strlen(de->d_name) != strlen(prefix) + 6)
            continue;
        snprintf(path, sizeof path, "%s/%s", v->workdir, de->d_name);
        vm_log(v, VM_LOG_INFO, "removing %s, left by an earlier run", path);
        vm_job_dir_remove(v, path);
        n++;
    }
    closedir(d);
    return n;
}
