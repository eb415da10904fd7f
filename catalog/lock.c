/* catalog/lock.c: the repository's advisory locks.
 *
 * A lock is a row of the locks table: name, holder pid and host, and since
 * when.  "disk:D" is held by a backup or a prune of disk D; "vm:V" by a
 * backup of a running VM V (its checkpoints); "restore:ID" by each
 * restore (so that gc never takes a chunk away from under one); "gc" by gc.
 * "gc" conflicts with every lock, "disk:D" with "gc" and "disk:D".  A
 * conflicting row whose holder is on this host and dead (kill(pid, 0) gives
 * ESRCH) is stale: it is broken, and the 'running' points that holder left
 * are deleted.  Everything happens in one BEGIN IMMEDIATE transaction, so two
 * processes can never both see the lock free.
 *
 * A holder on another host cannot be checked: its lock stays until it is
 * released (or removed by hand).  A recycled pid makes a stale lock look
 * alive, which errs on the safe side.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "catalog/internal.h"
#include "common/error.h"
#include "common/vec.h"

struct lock_row {
    char name[300];
    int64_t pid;
    char host[256];
    int64_t since;
};

bool cat_holder_dead(const struct catalog *c, int64_t pid, const char *host)
{
    if (!host || strcmp(host, c->host) != 0 || pid <= 0 || pid > 0x7fffffff)
        return false;
    if (pid == c->pid)
        return false;
    return kill((pid_t)pid, 0) == -1 && errno == ESRCH;
}

static bool valid_name(const char *name)
{
    if (strcmp(name, "gc") == 0)
        return true;
    if (strncmp(name, "vm:", 3) == 0)
        return name[3] && strlen(name + 3) < 256;
    if (strncmp(name, "restore:", 8) == 0)
        return name[8] && strlen(name + 8) < 64;
    return strncmp(name, "disk:", 5) == 0 && name[5] && strlen(name + 5) < 256;
}

static bool conflicts(const char *a, const char *b)
{
    return strcmp(a, "gc") == 0 || strcmp(b, "gc") == 0 || strcmp(a, b) == 0;
}

/* "backup/prune of disk vm1" or "gc". */
static void describe(const char *name, char *buf, size_t cap)
{
    if (strncmp(name, "disk:", 5) == 0)
        snprintf(buf, cap, "backup/prune of disk %s", name + 5);
    else if (strncmp(name, "vm:", 3) == 0)
        snprintf(buf, cap, "backup of VM %s", name + 3);
    else if (strncmp(name, "restore:", 8) == 0)
        snprintf(buf, cap, "a restore");
    else
        snprintf(buf, cap, "%s", name);
}

static void format_time(int64_t t, char *buf, size_t cap)
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (!localtime_r(&tt, &tm) || !strftime(buf, cap, "%Y-%m-%d %H:%M:%S", &tm))
        snprintf(buf, cap, "@%lld", (long long)t);
}

static void append(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t cap, const char *fmt, ...)
{
    size_t len;
    va_list ap;

    if (!buf || !cap)
        return;
    len = strlen(buf);
    if (len + 1 >= cap)
        return;
    va_start(ap, fmt);
    vsnprintf(buf + len, cap - len, fmt, ap);
    va_end(ap);
}

/* Reads every lock row (there are a handful). */
static int read_locks(struct catalog *c, struct lock_row **rows, size_t *n)
{
    sqlite3_stmt *st = cat_stmt(c, "SELECT name, pid, host, since FROM locks ORDER BY name");
    size_t cap = 0;
    int rc;

    *rows = NULL;
    *n = 0;
    if (!st)
        return -1;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct lock_row *r;

        if (VEC_RESERVE(*rows, *n, cap, 8) < 0) {
            error_prefix("catalog: read locks: ");
            goto fail;
        }
        r = &(*rows)[(*n)++];
        cat_column_text(st, 0, r->name, sizeof r->name);
        r->pid = sqlite3_column_int64(st, 1);
        cat_column_text(st, 2, r->host, sizeof r->host);
        r->since = sqlite3_column_int64(st, 3);
    }
    if (rc != SQLITE_DONE) {
        cat_fail(c, "read locks");
        goto fail;
    }
    cat_done(c, st);
    return 0;

fail:
    cat_done(c, st);
    free(*rows);
    *rows = NULL;
    return -1;
}

/* Deletes the running points of one holder; returns how many, -1 on error. */
static int64_t delete_points_of(struct catalog *c, int64_t pid, const char *host)
{
    sqlite3_stmt *st = cat_stmt(c, "DELETE FROM points WHERE status = 'running' "
                                   "AND holder_pid = ?1 AND holder_host = ?2");
    int64_t n;

    if (!st)
        return -1;
    sqlite3_bind_int64(st, 1, pid);
    sqlite3_bind_text(st, 2, host, -1, SQLITE_STATIC);
    if (cat_exec_stmt(c, st, "delete unfinished points") == -1) {
        cat_done(c, st);
        return -1;
    }
    n = sqlite3_changes64(c->db);
    cat_done(c, st);
    return n;
}

/* Deletes the running points, in the scope of lock `name`, whose holder is
 * on this host and dead (a holder may have released its lock and died
 * before committing).  Returns how many, -1 on error. */
static int64_t sweep_dead_points(struct catalog *c, const char *name)
{
    sqlite3_stmt *st = cat_stmt(c,
        "SELECT p.id, p.holder_pid FROM points p JOIN disks d ON d.id = p.disk_id "
        "WHERE p.status = 'running' AND p.holder_host = ?1 AND (?2 IS NULL OR d.name = ?2)");
    sqlite3_stmt *del = NULL;
    int64_t *dead = NULL, n = 0, i;
    size_t cap = 0;
    int rc;

    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, c->host, -1, SQLITE_STATIC);
    if (strncmp(name, "disk:", 5) == 0)
        sqlite3_bind_text(st, 2, name + 5, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!cat_holder_dead(c, sqlite3_column_int64(st, 1), c->host))
            continue;
        if (VEC_RESERVE(dead, n, cap, 8) < 0) {
            error_prefix("catalog: ");
            goto fail;
        }
        dead[n++] = sqlite3_column_int64(st, 0);
    }
    if (rc != SQLITE_DONE) {
        cat_fail(c, "find unfinished points");
        goto fail;
    }
    cat_done(c, st);
    st = NULL;
    for (i = 0; i < n; i++) {
        if (!(del = cat_stmt(c, "DELETE FROM points WHERE id = ?1 AND status = 'running'")))
            goto fail;
        sqlite3_bind_int64(del, 1, dead[i]);
        if (cat_exec_stmt(c, del, "delete unfinished point") == -1)
            goto fail;
        cat_done(c, del);
        del = NULL;
    }
    free(dead);
    return n;

fail:
    cat_done(c, st);
    cat_done(c, del);
    free(dead);
    return -1;
}

int catalog_lock(struct catalog *c, const char *name, char *broken_msg, size_t cap)
{
    struct lock_row *rows = NULL;
    sqlite3_stmt *st = NULL;
    size_t n, i, held;
    int64_t k;
    char *copy;

    if (broken_msg && cap)
        broken_msg[0] = '\0';
    if (!valid_name(name)) {
        error_set(EINVAL, "catalog: invalid lock name '%s' (\"gc\", \"disk:NAME\", \"vm:NAME\" or \"restore:ID\")", name);
        return -1;
    }
    for (held = 0; held < CAT_MAX_LOCKS && c->locks[held]; held++)
        ;
    if (held == CAT_MAX_LOCKS) {
        error_set(ENOSPC, "catalog: lock %s: this handle already holds %d locks", name,
                  CAT_MAX_LOCKS);
        return -1;
    }
    if (!(copy = strdup(name))) {
        error_set(ENOMEM, "catalog: lock %s: out of memory", name);
        return -1;
    }
    if (cat_begin(c) == -1)
        goto fail_free;
    if (read_locks(c, &rows, &n) == -1)
        goto fail;
    /* First any live conflict: then nothing is broken. */
    for (i = 0; i < n; i++) {
        char what[300], since[64];

        if (!conflicts(name, rows[i].name) || cat_holder_dead(c, rows[i].pid, rows[i].host))
            continue;
        describe(rows[i].name, what, sizeof what);
        format_time(rows[i].since, since, sizeof since);
        error_set(EBUSY, "repository is locked by %s (pid %lld on host %s since %s)", what,
                  (long long)rows[i].pid, rows[i].host, since);
        goto fail;
    }
    for (i = 0; i < n; i++) {
        char since[64];

        if (!conflicts(name, rows[i].name))
            continue;
        if (!(st = cat_stmt(c, "DELETE FROM locks WHERE name = ?1")))
            goto fail;
        sqlite3_bind_text(st, 1, rows[i].name, -1, SQLITE_STATIC);
        if (cat_exec_stmt(c, st, "break stale lock") == -1)
            goto fail;
        cat_done(c, st);
        st = NULL;
        if ((k = delete_points_of(c, rows[i].pid, rows[i].host)) == -1)
            goto fail;
        format_time(rows[i].since, since, sizeof since);
        append(broken_msg, cap, "%sbroke stale lock %s of pid %lld on host %s (since %s, "
               "process gone); deleted %lld unfinished point(s)",
               broken_msg && broken_msg[0] ? "; " : "", rows[i].name, (long long)rows[i].pid,
               rows[i].host, since, (long long)k);
    }
    if ((k = sweep_dead_points(c, name)) == -1)
        goto fail;
    if (k)
        append(broken_msg, cap, "%sdeleted %lld unfinished point(s) left by dead processes",
               broken_msg && broken_msg[0] ? "; " : "", (long long)k);
    if (!(st = cat_stmt(c, "INSERT INTO locks(name, pid, host, since) VALUES (?1, ?2, ?3, ?4)")))
        goto fail;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, c->pid);
    sqlite3_bind_text(st, 3, c->host, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)time(NULL));
    if (cat_exec_stmt(c, st, "take lock") == -1)
        goto fail;
    cat_done(c, st);
    st = NULL;
    if (cat_commit(c) == -1)
        goto fail_free;
    free(rows);
    c->locks[held] = copy;
    return 0;

fail:
    cat_done(c, st);
    cat_rollback(c);
fail_free:
    if (broken_msg && cap)
        broken_msg[0] = '\0';
    free(rows);
    free(copy);
    if (error_errno() != EBUSY)
        error_prefix("lock %s: ", name);
    return -1;
}

static void forget(struct catalog *c, const char *name)
{
    unsigned i;

    for (i = 0; i < CAT_MAX_LOCKS && c->locks[i]; i++)
        if (strcmp(c->locks[i], name) == 0) {
            free(c->locks[i]);
            memmove(&c->locks[i], &c->locks[i + 1], (CAT_MAX_LOCKS - i - 1) * sizeof c->locks[0]);
            c->locks[CAT_MAX_LOCKS - 1] = NULL;
            return;
        }
}

int catalog_unlock(struct catalog *c, const char *name)
{
    sqlite3_stmt *st;
    int64_t n;

    if (cat_begin(c) == -1)
        goto fail;
    if (!(st = cat_stmt(c, "DELETE FROM locks WHERE name = ?1 AND pid = ?2 AND host = ?3"))) {
        cat_rollback(c);
        goto fail;
    }
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, c->pid);
    sqlite3_bind_text(st, 3, c->host, -1, SQLITE_STATIC);
    if (cat_exec_stmt(c, st, "release lock") == -1) {
        cat_done(c, st);
        cat_rollback(c);
        goto fail;
    }
    n = sqlite3_changes64(c->db);
    cat_done(c, st);
    if (cat_commit(c) == -1)
        goto fail;
    forget(c, name);
    if (n == 0) {
        error_set(ENOENT, "catalog: unlock %s: not held by this process", name);
        return -1;
    }
    return 0;

fail:
    error_prefix("unlock %s: ", name);
    return -1;
}

/* Called by catalog_close: a handle's locks go with it (unless the handle
 * crossed a fork, where they belong to the parent). */
void cat_release_locks(struct catalog *c)
{
    while (c->locks[0]) {
        char *name = c->locks[0];

        if (c->pid == getpid())
            catalog_unlock(c, name);   /* forgets it when it succeeds */
        if (c->locks[0] == name)
            forget(c, name);
    }
}
