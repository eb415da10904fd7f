/* test_catalog.c: the SQLite catalog (catalog/), on temporary files.
 *
 * The map and the prune merge are checked against a brute-force model: every
 * point's own cells as an array, resolved cell by cell through the chain.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catalog/catalog.h"
#include "catalog/internal.h"
#include "common/error.h"

#define UNUSED __attribute__((unused))
#define CHUNK 65536u

static char dir[256];
static char path[300];

/* ---- Fixture -------------------------------------------------------------- */

static int setup(void **state UNUSED)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

    snprintf(dir, sizeof dir, "%s/test_catalog.XXXXXX", base);
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof path, "%s/catalog.db", dir);
    return 0;
}

static int teardown(void **state UNUSED)
{
    char f[400];

    unlink(path);
    snprintf(f, sizeof f, "%s-wal", path);
    unlink(f);
    snprintf(f, sizeof f, "%s-shm", path);
    unlink(f);
    snprintf(f, sizeof f, "%s/other", dir);
    unlink(f);
    rmdir(dir);
    return 0;
}

#define CHECK(e) do { \
        if (!(e)) \
            fail_msg("%s:%d: %s failed: %s (errno %d)", __FILE__, __LINE__, #e, error_msg(), \
                     error_errno()); \
    } while (0)

#define CHECK_FAILS(e, err) do { \
        errno = 0; \
        if (e) \
            fail_msg("%s:%d: %s succeeded, expected errno %d", __FILE__, __LINE__, #e, err); \
        if (error_errno() != (err)) \
            fail_msg("%s:%d: %s: errno %d, expected %d (%s)", __FILE__, __LINE__, #e, \
                     error_errno(), err, error_msg()); \
        assert_int_equal(errno, err); \
    } while (0)

static struct catalog *new_catalog(void)
{
    struct catalog *c;

    CHECK(catalog_create(path, CHUNK) == 0);
    CHECK((c = catalog_open(path)) != NULL);
    return c;
}

static void hash_of(unsigned i, uint8_t h[CATALOG_HASH_LEN])
{
    unsigned k;

    for (k = 0; k < CATALOG_HASH_LEN; k++)
        h[k] = (uint8_t)(i * 131 + k * 7 + (i >> 8));
}

/* Adds a pack of n chunks with hashes first..first+n-1; ids out. */
static void add_pack(struct catalog *c, const char *name, unsigned first, unsigned n,
                     int64_t *ids)
{
    struct catalog_chunk *ch = calloc(n, sizeof *ch);
    unsigned i;

    assert_non_null(ch);
    for (i = 0; i < n; i++) {
        hash_of(first + i, ch[i].hash);
        ch[i].offset = 1000 * (n - i);   /* not in id order */
        ch[i].stored_len = 100 + i;
        ch[i].plain_len = CHUNK;
        ch[i].codec = 1;
        ch[i].crc = 0xdead0000u + i;
    }
    CHECK(catalog_pack_add(c, name, 32u << 20, ch, n, ids) == 0);
    free(ch);
}

static int64_t begin_point(struct catalog *c, int64_t disk, int64_t parent, uint64_t size)
{
    struct catalog_point p;
    int64_t id;

    memset(&p, 0, sizeof p);
    p.disk_id = disk;
    p.parent = parent;
    p.full = parent == 0;
    p.started = 1e9;
    p.disk_size = size;
    snprintf(p.source_uri, sizeof p.source_uri, "nbd+unix:///sda?socket=/run/x.sock");
    snprintf(p.bitmap, sizeof p.bitmap, "nbdvault-1");
    CHECK((id = catalog_point_begin(c, &p)) > 0);
    return id;
}

static void commit_point(struct catalog *c, int64_t id)
{
    struct catalog_point p;

    memset(&p, 0, sizeof p);
    p.id = id;
    p.finished = 2e9;
    p.bytes_planned = 10;
    p.bytes_read = 20;
    p.bytes_stored = 30;
    p.chunks_new = 4;
    p.chunks_reused = 5;
    CHECK(catalog_point_commit(c, &p) == 0);
}

/* ---- Create and open ------------------------------------------------------ */

static void test_create_open(void **state UNUSED)
{
    struct catalog *c;
    char other[400];
    char *report;
    int fd;

    CHECK_FAILS(catalog_create(path, 12345) == 0, EINVAL);
    CHECK_FAILS(catalog_create(path, 32u << 20) == 0, EINVAL);
    CHECK_FAILS(catalog_open(path) != NULL, ENOENT);
    CHECK(catalog_create(path, 1u << 20) == 0);
    CHECK_FAILS(catalog_create(path, CHUNK) == 0, EEXIST);
    CHECK((c = catalog_open(path)) != NULL);
    assert_int_equal(catalog_chunk_size(c), 1u << 20);
    CHECK(catalog_integrity_check(c, &report) == 0);
    assert_null(report);
    CHECK(catalog_disk_add(c, "vm1") > 0);
    catalog_close(c);
    /* Reopen: the data is there. */
    CHECK((c = catalog_open(path)) != NULL);
    {
        int64_t id;

        assert_int_equal(catalog_disk_find(c, "vm1", &id), 1);
        assert_int_equal(catalog_disk_find(c, "vm2", &id), 0);
    }
    catalog_close(c);
    catalog_close(NULL);

    /* An empty file is an SQLite database without our schema. */
    snprintf(other, sizeof other, "%s/other", dir);
    fd = open(other, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    close(fd);
    CHECK_FAILS(catalog_open(other) != NULL, EINVAL);
    assert_non_null(strstr(error_msg(), "not an nbdvault catalog"));
    /* Garbage is not a database at all. */
    fd = open(other, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, "this is not a database, not at all, no.........................."
                           "................................................................",
                     128), 128);
    close(fd);
    errno = 0;
    assert_null(catalog_open(other));
    assert_int_not_equal(error_errno(), 0);
}

/* A catalog written by a newer nbdvault: user_version is the big-endian
 * 32-bit word at offset 60 of the database header. */
static void test_newer_version(void **state UNUSED)
{
    struct catalog *c = new_catalog();
    uint8_t v[4] = { 0, 0, 0, CATALOG_FORMAT_VERSION + 1 };
    int fd;

    catalog_close(c);
    fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, v, 4, 60), 4);
    close(fd);
    CHECK_FAILS(catalog_open(path) != NULL, ENOTSUP);
    assert_non_null(strstr(error_msg(), "newer"));
    assert_non_null(strstr(error_msg(), "upgrade"));
}

/* A catalog written by nbdvault with schema version 1 (a UNIQUE index on
 * the whole hash) is migrated on open: the chunks table is rebuilt with the
 * same ids and AUTOINCREMENT sequence, look-ups go through the new index,
 * a known hash keeps its one row, foreign keys hold and are enforced. */
static void v1_exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;

    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", sql, err);
}

static void v1_hash(uint8_t h[CATALOG_HASH_LEN], int i)
{
    memset(h, 0x5a, CATALOG_HASH_LEN); /* chunks 1 and 2 share the first 8 bytes */
    h[20] = (uint8_t)i;
    if (i > 2)
        h[0] = (uint8_t)i;
}

static void test_migrate_from_v1(void **state UNUSED)
{
    struct catalog *c;
    struct catalog_chunk ch, add[2];
    uint8_t h[CATALOG_HASH_LEN];
    int64_t ids[2], id;
    sqlite3 *db;
    sqlite3_stmt *st;

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    v1_exec(db, "PRAGMA journal_mode = WAL");
    v1_exec(db, cat_migration_sql(1));
    v1_exec(db, "INSERT INTO repo VALUES ('format_version', 1), ('chunk_size', 65536), "
                "('created', 0);"
                "PRAGMA user_version = 1;"
                "INSERT INTO disks(name) VALUES ('vm1');"
                "INSERT INTO packs(name, size) VALUES ('aa/a.pack', 1000), ('bb/b.pack', 2000);"
                "INSERT INTO points(disk_id, kind, status, started, disk_size) "
                "VALUES (1, 'full', 'complete', 0, 655360);");
    assert_int_equal(sqlite3_prepare_v2(db, "INSERT INTO chunks(hash, pack_id, offset, stored_len, "
                                            "plain_len, codec, crc) VALUES (?1, ?2, ?3, 10, 65536, 1, ?4)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    for (int i = 1; i <= 5; i++) {
        v1_hash(h, i);
        sqlite3_bind_blob(st, 1, h, CATALOG_HASH_LEN, SQLITE_TRANSIENT);
        sqlite3_bind_int(st, 2, i % 2 + 1);
        sqlite3_bind_int(st, 3, 100 * i);
        sqlite3_bind_int(st, 4, 7 * i);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    /* Chunk 5 was deleted by gc: its id must never come back. */
    v1_exec(db, "DELETE FROM chunks WHERE id = 5;"
                "INSERT INTO cells VALUES (1, 0, 2, 1), (1, 2, 1, 2), (1, 3, 1, 4), (1, 4, 1, NULL);");
    assert_int_equal(sqlite3_close(db), SQLITE_OK);

    CHECK((c = catalog_open(path)) != NULL);
    for (int i = 1; i <= 4; i++) {
        v1_hash(h, i);
        CHECK(catalog_chunk_find(c, h, &ch) == 1);
        assert_int_equal(ch.id, i);
        assert_memory_equal(ch.hash, h, CATALOG_HASH_LEN);
        assert_int_equal(ch.pack_id, i % 2 + 1);
        assert_string_equal(ch.pack, i % 2 ? "bb/b.pack" : "aa/a.pack");
        assert_int_equal(ch.offset, 100 * i);
        assert_int_equal(ch.crc, 7 * i);
        CHECK(catalog_chunk_id(c, h, &id) == 1);
        assert_int_equal(id, i);
    }
    v1_hash(h, 5);
    CHECK(catalog_chunk_find(c, h, &ch) == 0);
    CHECK(catalog_chunk_id(c, h, &id) == 0);
    v1_hash(h, 1);
    h[31] ^= 1; /* the first 8 bytes of chunks 1 and 2, neither hash */
    CHECK(catalog_chunk_find(c, h, &ch) == 0);
    CHECK(catalog_chunk_id(c, h, &id) == 0);

    /* A known hash keeps its row; a new one gets an id past the deleted 5. */
    memset(add, 0, sizeof add);
    v1_hash(add[0].hash, 2);
    v1_hash(add[1].hash, 9);
    add[1].stored_len = add[1].plain_len = 4096;
    CHECK(catalog_pack_add(c, "cc/c.pack", 5000, add, 2, ids) == 0);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 6);
    CHECK(catalog_chunk_get(c, 2, &ch) == 1);
    assert_string_equal(ch.pack, "aa/a.pack");

    /* Foreign keys are back on: a referenced pack cannot go. */
    assert_int_not_equal(sqlite3_exec(c->db, "DELETE FROM packs WHERE id = 1", NULL, NULL, NULL),
                         SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(c->db, "SELECT (SELECT count(*) FROM pragma_foreign_key_check), "
                                               "(SELECT integrity_check FROM pragma_integrity_check), "
                                               "(SELECT value FROM repo WHERE key = 'format_version'), "
                                               "(SELECT user_version FROM pragma_user_version)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 0);
    assert_string_equal((const char *)sqlite3_column_text(st, 1), "ok");
    assert_int_equal(sqlite3_column_int(st, 2), CATALOG_FORMAT_VERSION);
    assert_int_equal(sqlite3_column_int(st, 3), CATALOG_FORMAT_VERSION);
    sqlite3_finalize(st);
    catalog_close(c);

    /* Opened again: nothing left to migrate, the same rows. */
    CHECK((c = catalog_open(path)) != NULL);
    v1_hash(h, 9);
    CHECK(catalog_chunk_find(c, h, &ch) == 1);
    assert_int_equal(ch.id, 6);
    catalog_close(c);
}

/* ---- Locks ---------------------------------------------------------------- */

static void test_locks(void **state UNUSED)
{
    struct catalog *c1 = new_catalog(), *c2;
    char msg[512], pid[32];

    CHECK((c2 = catalog_open(path)) != NULL);
    snprintf(pid, sizeof pid, "pid %d ", (int)getpid());
    CHECK(catalog_lock(c1, "disk:vm1", msg, sizeof msg) == 0);
    assert_string_equal(msg, "");
    CHECK_FAILS(catalog_lock(c2, "disk:vm1", msg, sizeof msg) == 0, EBUSY);
    assert_non_null(strstr(error_msg(), "repository is locked by"));
    assert_non_null(strstr(error_msg(), "disk vm1"));
    assert_non_null(strstr(error_msg(), pid));
    assert_non_null(strstr(error_msg(), " since "));
    CHECK_FAILS(catalog_lock(c2, "gc", NULL, 0) == 0, EBUSY);
    CHECK(catalog_lock(c2, "disk:vm2", NULL, 0) == 0);
    CHECK_FAILS(catalog_lock(c1, "gc", NULL, 0) == 0, EBUSY);
    CHECK_FAILS(catalog_lock(c1, "disk:vm1", NULL, 0) == 0, EBUSY);
    CHECK_FAILS(catalog_lock(c1, "foo", NULL, 0) == 0, EINVAL);
    CHECK_FAILS(catalog_lock(c1, "disk:", NULL, 0) == 0, EINVAL);
    CHECK(catalog_unlock(c1, "disk:vm1") == 0);
    CHECK_FAILS(catalog_unlock(c1, "disk:vm1") == 0, ENOENT);
    CHECK(catalog_lock(c1, "disk:vm1", NULL, 0) == 0);
    CHECK(catalog_unlock(c1, "disk:vm1") == 0);
    CHECK_FAILS(catalog_lock(c1, "gc", NULL, 0) == 0, EBUSY);   /* c2 holds disk:vm2 */
    catalog_close(c2);                                          /* releases it */
    CHECK(catalog_lock(c1, "gc", NULL, 0) == 0);
    CHECK((c2 = catalog_open(path)) != NULL);
    CHECK_FAILS(catalog_lock(c2, "disk:vm3", NULL, 0) == 0, EBUSY);
    assert_non_null(strstr(error_msg(), "locked by gc"));
    CHECK(catalog_unlock(c1, "gc") == 0);
    CHECK(catalog_lock(c2, "disk:vm3", NULL, 0) == 0);
    catalog_close(c2);
    catalog_close(c1);
}

/* In a child: takes disk:<disk>, begins a running point, reports its id on
 * fd, then waits for `wait_fd` to close (-1: exits at once, leaving its lock
 * and point behind as a crash would). */
static void child_holder(const char *disk, int fd, int wait_fd)
{
    struct catalog *c = catalog_open(path);
    char name[64];
    int64_t disk_id, id;
    struct catalog_run run = { .first_cell = 3, .count = 5, .chunk_id = 0 };
    char b;

    snprintf(name, sizeof name, "disk:%s", disk);
    if (!c || catalog_lock(c, name, NULL, 0) != 0 || catalog_disk_find(c, disk, &disk_id) != 1)
        _exit(1);
    struct catalog_point p = { .disk_id = disk_id, .full = true, .started = 1,
                               .disk_size = 100 * (uint64_t)CHUNK };

    if ((id = catalog_point_begin(c, &p)) <= 0 || catalog_cells_add(c, id, &run, 1) != 0)
        _exit(1);
    if (write(fd, &id, sizeof id) != sizeof id)
        _exit(1);
    if (wait_fd >= 0)
        while (read(wait_fd, &b, 1) > 0)
            ;
    _exit(0);   /* no unlock, no close */
}

static pid_t spawn_holder(const char *disk, bool stay, int *wait_w, int64_t *point)
{
    int res[2], hold[2] = { -1, -1 };
    pid_t pid;

    assert_int_equal(pipe(res), 0);
    if (stay)
        assert_int_equal(pipe(hold), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(res[0]);
        if (stay)
            close(hold[1]);
        child_holder(disk, res[1], hold[0]);
    }
    close(res[1]);
    if (stay) {
        close(hold[0]);
        *wait_w = hold[1];
    }
    if (read(res[0], point, sizeof *point) != sizeof *point)
        fail_msg("the lock holder child failed");
    close(res[0]);
    return pid;
}

static void test_stale_lock(void **state UNUSED)
{
    struct catalog *c = new_catalog();
    struct catalog_point p;
    char msg[512], word[64];
    int64_t vm1, vm2, pa, pb, mine;
    pid_t a, b;
    int a_wait = -1, status;

    CHECK((vm1 = catalog_disk_add(c, "vm1")) > 0);
    CHECK((vm2 = catalog_disk_add(c, "vm2")) > 0);
    catalog_close(c);   /* no connection across fork */

    a = spawn_holder("vm1", true, &a_wait, &pa);      /* stays alive */
    b = spawn_holder("vm2", false, NULL, &pb);        /* exits */
    assert_int_equal(waitpid(b, &status, 0), b);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    CHECK((c = catalog_open(path)) != NULL);
    assert_int_equal(catalog_point_get(c, pb, &p), 1);
    assert_false(p.complete);
    /* B is dead: its lock is broken and its running point deleted. */
    CHECK(catalog_lock(c, "disk:vm2", msg, sizeof msg) == 0);
    snprintf(word, sizeof word, "pid %d ", (int)b);
    assert_non_null(strstr(msg, "stale"));
    assert_non_null(strstr(msg, word));
    assert_non_null(strstr(msg, "deleted 1 unfinished point"));
    assert_int_equal(catalog_point_get(c, pb, &p), 0);
    /* A is alive: its lock holds and its point survives. */
    CHECK_FAILS(catalog_lock(c, "disk:vm1", msg, sizeof msg) == 0, EBUSY);
    snprintf(word, sizeof word, "pid %d ", (int)a);
    assert_non_null(strstr(error_msg(), word));
    assert_non_null(strstr(error_msg(), "disk vm1"));
    CHECK_FAILS(catalog_lock(c, "gc", msg, sizeof msg) == 0, EBUSY);
    assert_int_equal(catalog_point_get(c, pa, &p), 1);

    /* A point of a live holder without a lock (ours) survives a gc lock. */
    mine = begin_point(c, vm2, 0, 10 * (uint64_t)CHUNK);
    CHECK(catalog_unlock(c, "disk:vm2") == 0);

    /* A dies too (its process is reaped, so the pid is free). */
    close(a_wait);
    assert_int_equal(waitpid(a, &status, 0), a);
    CHECK(catalog_lock(c, "gc", msg, sizeof msg) == 0);
    assert_non_null(strstr(msg, word));
    assert_int_equal(catalog_point_get(c, pa, &p), 0);
    assert_int_equal(catalog_point_get(c, mine, &p), 1);
    CHECK(catalog_unlock(c, "gc") == 0);
    CHECK(catalog_point_abort(c, mine) == 0);
    catalog_close(c);
}

/* ---- Points --------------------------------------------------------------- */

static int collect_points(void *opaque, const struct catalog_point *p)
{
    int64_t *v = opaque;

    v[++v[0]] = p->id;
    return 0;
}

static int stop_points(void *opaque, const struct catalog_point *p)
{
    (*(int *)opaque)++;
    error_set(ECANCELED, "stop");
    return -1;
}

static void test_point_lifecycle(void **state UNUSED)
{
    struct catalog *c = new_catalog();
    struct catalog_point p, q;
    int64_t vm1, vm2, f, i1, i2, got[16];
    int calls = 0;

    CHECK((vm1 = catalog_disk_add(c, "vm1")) > 0);
    CHECK_FAILS(catalog_disk_add(c, "vm1") > 0, EEXIST);
    CHECK_FAILS(catalog_disk_add(c, "") > 0, EINVAL);
    CHECK((vm2 = catalog_disk_add(c, "vm2")) > 0);

    f = begin_point(c, vm1, 0, 1000 * (uint64_t)CHUNK);
    assert_int_equal(catalog_point_latest(c, vm1, &p), 0);
    got[0] = 0;
    CHECK(catalog_point_list(c, NULL, collect_points, got) == 0);
    assert_int_equal(got[0], 0);
    assert_int_equal(catalog_point_get(c, f, &p), 1);
    assert_false(p.complete);
    assert_true(p.full);
    /* No incremental on a running parent. */
    memset(&q, 0, sizeof q);
    q.disk_id = vm1;
    q.parent = f;
    CHECK_FAILS(catalog_point_begin(c, &q) > 0, EINVAL);
    q.full = true;          /* a full point has no parent */
    CHECK_FAILS(catalog_point_begin(c, &q) > 0, EINVAL);
    q.parent = 0;
    q.full = false;         /* an incremental one has one */
    CHECK_FAILS(catalog_point_begin(c, &q) > 0, EINVAL);
    q.full = true;
    q.disk_id = 999;
    CHECK_FAILS(catalog_point_begin(c, &q) > 0, ENOENT);

    commit_point(c, f);
    CHECK_FAILS(catalog_point_abort(c, f) == 0, EINVAL);
    assert_int_equal(catalog_point_latest(c, vm1, &p), 1);
    assert_int_equal(p.id, f);
    assert_true(p.complete);
    assert_true(p.full);
    assert_int_equal(p.parent, 0);
    assert_string_equal(p.disk, "vm1");
    assert_int_equal(p.disk_size, 1000 * (uint64_t)CHUNK);
    assert_string_equal(p.bitmap, "nbdvault-1");
    assert_string_equal(p.source_uri, "nbd+unix:///sda?socket=/run/x.sock");
    assert_true(p.started == 1e9 && p.finished == 2e9);
    assert_int_equal(p.bytes_planned, 10);
    assert_int_equal(p.bytes_read, 20);
    assert_int_equal(p.bytes_stored, 30);
    assert_int_equal(p.chunks_new, 4);
    assert_int_equal(p.chunks_reused, 5);
    CHECK_FAILS(catalog_point_commit(c, &p) == 0, EINVAL);
    p.id = 12345;
    CHECK_FAILS(catalog_point_commit(c, &p) == 0, ENOENT);

    /* Another disk's parent is refused. */
    memset(&q, 0, sizeof q);
    q.disk_id = vm2;
    q.parent = f;
    CHECK_FAILS(catalog_point_begin(c, &q) > 0, EINVAL);

    i1 = begin_point(c, vm1, f, 1000 * (uint64_t)CHUNK);
    CHECK(catalog_point_abort(c, i1) == 0);
    assert_int_equal(catalog_point_get(c, i1, &p), 0);
    CHECK_FAILS(catalog_point_abort(c, i1) == 0, ENOENT);
    i1 = begin_point(c, vm1, f, 1000 * (uint64_t)CHUNK);
    commit_point(c, i1);
    i2 = begin_point(c, vm2, 0, 10 * (uint64_t)CHUNK);
    commit_point(c, i2);
    assert_int_equal(catalog_point_latest(c, vm1, &p), 1);
    assert_int_equal(p.id, i1);
    assert_false(p.full);
    assert_int_equal(p.parent, f);

    got[0] = 0;
    CHECK(catalog_point_list(c, NULL, collect_points, got) == 0);
    assert_int_equal(got[0], 3);
    assert_true(got[1] == f && got[2] == i1 && got[3] == i2);
    got[0] = 0;
    CHECK(catalog_point_list(c, "vm1", collect_points, got) == 0);
    assert_true(got[0] == 2 && got[1] == f && got[2] == i1);
    got[0] = 0;
    CHECK(catalog_point_list(c, "nope", collect_points, got) == 0);
    assert_int_equal(got[0], 0);
    CHECK_FAILS(catalog_point_list(c, NULL, stop_points, &calls) == 0, ECANCELED);
    assert_int_equal(calls, 1);

    /* A complete point takes no more cells; a missing one neither. */
    {
        struct catalog_run r = { .first_cell = 0, .count = 1 };

        CHECK_FAILS(catalog_cells_add(c, f, &r, 1) == 0, EINVAL);
        CHECK_FAILS(catalog_cells_add(c, 4242, &r, 1) == 0, ENOENT);
    }
    catalog_close(c);
}

/* ---- Chunks and packs ----------------------------------------------------- */

struct chunk_list {
    int64_t id[64];
    uint64_t offset[64];
    char pack[64][80];
    int n;
};

static int collect_chunks(void *opaque, const struct catalog_chunk *ch)
{
    struct chunk_list *l = opaque;

    assert_true(l->n < 64);
    l->id[l->n] = ch->id;
    l->offset[l->n] = ch->offset;
    snprintf(l->pack[l->n], sizeof l->pack[0], "%s", ch->pack);
    l->n++;
    return 0;
}

struct pack_list {
    struct catalog_pack p[16];
    int n;
};

static int collect_packs(void *opaque, const struct catalog_pack *p)
{
    struct pack_list *l = opaque;

    assert_true(l->n < 16);
    l->p[l->n++] = *p;
    return 0;
}

static void test_chunks_packs(void **state UNUSED)
{
    struct catalog *c = new_catalog();
    struct catalog_chunk ch[2], got;
    struct chunk_list cl;
    struct pack_list pl;
    int64_t ids[3], ids2[2];
    uint8_t h[CATALOG_HASH_LEN];
    int i;

    add_pack(c, "e0/e04f642fbd21c4fcf601cc6eaf8f9e38.pack", 0, 3, ids);
    assert_true(ids[0] > 0 && ids[1] > ids[0] && ids[2] > ids[1]);
    hash_of(1, h);
    assert_int_equal(catalog_chunk_find(c, h, &got), 1);
    assert_int_equal(got.id, ids[1]);
    assert_memory_equal(got.hash, h, CATALOG_HASH_LEN);
    assert_string_equal(got.pack, "e0/e04f642fbd21c4fcf601cc6eaf8f9e38.pack");
    assert_int_equal(got.offset, 2000);
    assert_int_equal(got.stored_len, 101);
    assert_int_equal(got.plain_len, CHUNK);
    assert_int_equal(got.codec, 1);
    assert_int_equal(got.crc, 0xdead0001u);
    hash_of(77, h);
    assert_int_equal(catalog_chunk_find(c, h, &got), 0);
    assert_int_equal(catalog_chunk_get(c, ids[2], &got), 1);
    assert_int_equal(got.offset, 1000);
    assert_int_equal(catalog_chunk_get(c, 999, &got), 0);

    /* A second pack with a known hash: it keeps its first location. */
    memset(ch, 0, sizeof ch);
    hash_of(2, ch[0].hash);
    ch[0].offset = 0;
    ch[0].stored_len = 7;
    hash_of(3, ch[1].hash);
    ch[1].offset = 50;
    ch[1].stored_len = 9;
    CHECK(catalog_pack_add(c, "pack-0002", 4096, ch, 2, ids2) == 0);
    assert_int_equal(ids2[0], ids[2]);
    assert_true(ids2[1] > ids[2]);
    assert_int_equal(catalog_chunk_get(c, ids[2], &got), 1);
    assert_string_equal(got.pack, "e0/e04f642fbd21c4fcf601cc6eaf8f9e38.pack");
    assert_int_equal(got.stored_len, 102);
    CHECK_FAILS(catalog_pack_add(c, "pack-0002", 4096, ch, 2, ids2) == 0, EEXIST);
    CHECK_FAILS(catalog_pack_add(c, "/abs", 4096, ch, 2, ids2) == 0, EINVAL);
    CHECK_FAILS(catalog_pack_add(c, "../up", 4096, ch, 2, ids2) == 0, EINVAL);
    CHECK_FAILS(catalog_pack_add(c, "", 4096, ch, 2, ids2) == 0, EINVAL);

    memset(&pl, 0, sizeof pl);
    CHECK(catalog_pack_list(c, collect_packs, &pl) == 0);
    assert_int_equal(pl.n, 2);
    assert_string_equal(pl.p[0].name, "e0/e04f642fbd21c4fcf601cc6eaf8f9e38.pack");
    assert_int_equal(pl.p[0].size, 32u << 20);
    assert_int_equal(pl.p[0].live_chunks, 3);
    assert_int_equal(pl.p[0].live_bytes, 100 + 101 + 102);
    assert_false(pl.p[0].uploaded);
    assert_string_equal(pl.p[1].name, "pack-0002");
    assert_int_equal(pl.p[1].live_chunks, 1);
    assert_int_equal(pl.p[1].live_bytes, 9);

    memset(&cl, 0, sizeof cl);
    CHECK(catalog_pack_chunks(c, pl.p[0].id, collect_chunks, &cl) == 0);
    assert_int_equal(cl.n, 3);
    for (i = 0; i < 3; i++)
        assert_int_equal(cl.id[i], ids[2 - i]);   /* offset order */
    CHECK_FAILS(catalog_pack_delete(c, pl.p[0].id) == 0, ENOTEMPTY);
    CHECK_FAILS(catalog_pack_delete(c, 999) == 0, ENOENT);
    catalog_close(c);
}

/* ---- The brute-force model ------------------------------------------------ */

#define NCELLS 300
#define MAXPTS 64
#define NCHUNK 6

struct model {
    int n;
    int64_t id[MAXPTS];
    int parent[MAXPTS];           /* index, -1 = none (full) */
    bool removed[MAXPTS];
    int own[MAXPTS][NCELLS];      /* index into chunk ids, -1 = not covered */
};

static int64_t chunk_ids[NCHUNK + 1];   /* [0] = 0: the zero chunk */

/* The model's resolved map of point k: chunk id and depth per cell. */
static void model_resolve(const struct model *m, int k, int64_t *chunk, unsigned *depth)
{
    int x;

    for (x = 0; x < NCELLS; x++) {
        int j = k;
        unsigned d = 1;

        chunk[x] = 0;
        depth[x] = 0;
        for (; j >= 0; j = m->parent[j], d++)
            if (m->own[j][x] >= 0) {
                chunk[x] = chunk_ids[m->own[j][x]];
                depth[x] = d;
                break;
            }
    }
}

/* Checks catalog_map over [a, b) against expected per-cell values; depth
 * NULL compares only chunks and whether a cell was ever written. */
static void check_map(struct catalog *c, int64_t point, uint64_t a, uint64_t b,
                      const int64_t *chunk, const unsigned *depth, const unsigned *written)
{
    struct catalog_map *m;
    struct catalog_run run, prev = { 0 };
    uint64_t pos = a, x;
    int r, n = 0;

    CHECK((m = catalog_map_open(c, point, a, b)) != NULL);
    while ((r = catalog_map_next(m, &run)) == 1) {
        if (run.first_cell != pos || run.count == 0 || run.first_cell + run.count > b)
            fail_msg("point %lld [%llu,%llu): run %llu+%llu at pos %llu", (long long)point,
                     (unsigned long long)a, (unsigned long long)b,
                     (unsigned long long)run.first_cell, (unsigned long long)run.count,
                     (unsigned long long)pos);
        if (n && depth && prev.chunk_id == run.chunk_id && prev.depth == run.depth)
            fail_msg("point %lld: runs at %llu and %llu not merged", (long long)point,
                     (unsigned long long)prev.first_cell, (unsigned long long)run.first_cell);
        for (x = run.first_cell; x < run.first_cell + run.count; x++) {
            bool ok = chunk[x] == run.chunk_id;

            if (depth)
                ok = ok && depth[x] == run.depth;
            else
                ok = ok && (written[x] != 0) == (run.depth != 0);
            if (!ok)
                fail_msg("point %lld cell %llu: got chunk %lld depth %u, expected chunk %lld "
                         "depth %u", (long long)point, (unsigned long long)x,
                         (long long)run.chunk_id, run.depth, (long long)chunk[x],
                         depth ? depth[x] : written[x]);
        }
        pos += run.count;
        prev = run;
        n++;
    }
    CHECK(r == 0);
    assert_int_equal(pos, b);
    assert_int_equal(catalog_map_next(m, &run), 0);
    catalog_map_close(m);
}

/* Random runs for point k of the model, added to the catalog in random
 * order and in two batches. */
static void random_cells(struct catalog *c, struct model *m, int k, bool full)
{
    struct catalog_run runs[NCELLS];
    int n = 0, pos = 0, i, x;

    for (x = 0; x < NCELLS; x++)
        m->own[k][x] = -1;
    while (pos < NCELLS) {
        int gap = full && rand() % 3 ? 0 : rand() % 25;
        int len = 1 + rand() % (rand() % 4 ? 12 : 60);
        int ch = rand() % (NCHUNK + 1);

        pos += gap;
        if (pos >= NCELLS)
            break;
        if (len > NCELLS - pos)
            len = NCELLS - pos;
        runs[n].first_cell = (uint64_t)pos;
        runs[n].count = (uint64_t)len;
        runs[n].chunk_id = chunk_ids[ch];
        n++;
        for (x = pos; x < pos + len; x++)
            m->own[k][x] = ch;
        pos += len;
    }
    for (i = n - 1; i > 0; i--) {
        int j = rand() % (i + 1);
        struct catalog_run t = runs[i];

        runs[i] = runs[j];
        runs[j] = t;
    }
    CHECK(catalog_cells_add(c, m->id[k], runs, (size_t)n / 2) == 0);
    CHECK(catalog_cells_add(c, m->id[k], runs + n / 2, (size_t)(n - n / 2)) == 0);
}

/* Builds a random tree of points on a new disk: point 0 full, each other
 * one the child of a random earlier point (mostly the previous one). */
static void random_tree(struct catalog *c, struct model *m, const char *disk, int npoints)
{
    int64_t d;
    int k;

    CHECK((d = catalog_disk_add(c, disk)) > 0);
    memset(m, 0, sizeof *m);
    m->n = npoints;
    for (k = 0; k < npoints; k++) {
        bool full = k == 0 || rand() % 10 == 0;

        m->parent[k] = full ? -1 : rand() % 4 ? k - 1 : rand() % k;
        /* The size varies (a resized disk); NCELLS cells fit every size. */
        m->id[k] = begin_point(c, d, full ? 0 : m->id[m->parent[k]],
                               (uint64_t)(NCELLS - 1) * CHUNK + 1 + (uint64_t)(rand() % CHUNK));
        random_cells(c, m, k, full);
        commit_point(c, m->id[k]);
    }
}

static void setup_chunks(struct catalog *c)
{
    add_pack(c, "pack-model", 0, NCHUNK, chunk_ids + 1);
    chunk_ids[0] = 0;
}

static void test_map_random(void **state UNUSED)
{
    struct catalog *c = new_catalog();
    struct model m;
    int64_t chunk[NCELLS];
    unsigned depth[NCELLS];
    char disk[32];
    int seed, k, t;

    setup_chunks(c);
    for (seed = 0; seed < 400; seed++) {
        srand((unsigned)seed);
        snprintf(disk, sizeof disk, "disk%d", seed);
        random_tree(c, &m, disk, 1 + seed % 8);
        for (k = 0; k < m.n; k++) {
            model_resolve(&m, k, chunk, depth);
            check_map(c, m.id[k], 0, NCELLS, chunk, depth, NULL);
            for (t = 0; t < 6; t++) {
                uint64_t a = (uint64_t)(rand() % (NCELLS + 1));
                uint64_t b = a + (uint64_t)(rand() % (NCELLS + 1 - (int)a));

                check_map(c, m.id[k], a, b, chunk, depth, NULL);
            }
        }
    }
    {
        struct catalog_map *mp;
        struct catalog_run run;

        CHECK_FAILS(catalog_map_open(c, 99999, 0, 10) != NULL, ENOENT);
        CHECK_FAILS(catalog_map_open(c, m.id[0], 10, 5) != NULL, EINVAL);
        /* Beyond every run: one never-written run. */
        CHECK((mp = catalog_map_open(c, m.id[0], 1000, 5000)) != NULL);
        assert_int_equal(catalog_map_next(mp, &run), 1);
        assert_true(run.first_cell == 1000 && run.count == 4000 && run.chunk_id == 0 &&
                    run.depth == 0);
        assert_int_equal(catalog_map_next(mp, &run), 0);
        catalog_map_close(mp);
    }
    catalog_close(c);
}

/* A deep chain (400 levels): the sweep stays right, and fast. */
static void test_map_deep(void **state UNUSED)
{
    struct catalog *c = new_catalog();
    static int own[400][NCELLS];
    int64_t chunk[NCELLS], d, prev = 0;
    unsigned depth[NCELLS];
    int k, x;

    setup_chunks(c);
    CHECK((d = catalog_disk_add(c, "deep")) > 0);
    srand(7);
    for (k = 0; k < 400; k++) {
        struct catalog_run runs[3];
        int n = 0, pos = rand() % NCELLS;

        prev = begin_point(c, d, prev, NCELLS * (uint64_t)CHUNK);
        for (x = 0; x < NCELLS; x++)
            own[k][x] = -1;
        if (k == 0) {
            /* One row per cell: the bottom level needs several batches. */
            struct catalog_run base[NCELLS];

            for (x = 0; x < NCELLS; x++) {
                own[0][x] = 1 + x % NCHUNK;
                base[x] = (struct catalog_run){ .first_cell = (uint64_t)x, .count = 1,
                                                .chunk_id = chunk_ids[own[0][x]] };
            }
            CHECK(catalog_cells_add(c, prev, base, NCELLS) == 0);
        }
        while (k > 0 && n < 3 && pos < NCELLS) {
            int len = 1 + rand() % 5, ch = rand() % (NCHUNK + 1);

            if (len > NCELLS - pos)
                len = NCELLS - pos;
            runs[n++] = (struct catalog_run){ .first_cell = (uint64_t)pos,
                                              .count = (uint64_t)len,
                                              .chunk_id = chunk_ids[ch] };
            for (x = pos; x < pos + len; x++)
                own[k][x] = ch;
            pos += len + rand() % 40;
        }
        CHECK(catalog_cells_add(c, prev, runs, (size_t)n) == 0);
        commit_point(c, prev);
    }
    for (x = 0; x < NCELLS; x++)
        for (k = 399; k >= 0; k--)
            if (own[k][x] >= 0) {
                chunk[x] = chunk_ids[own[k][x]];
                depth[x] = (unsigned)(400 - k);
                break;
            }
    check_map(c, prev, 0, NCELLS, chunk, depth, NULL);
    check_map(c, prev, 17, 211, chunk, depth, NULL);
    catalog_close(c);
}

/* A wide disk: levels with more rows than one batch of the sweep. */
static void test_map_wide(void **state UNUSED)
{
    enum { N = 6000, DEPTH = 4 };
    struct catalog *c = new_catalog();
    static int own[DEPTH][N];
    static struct catalog_run runs[N];
    static int64_t chunk[N];
    static unsigned depth[N];
    int64_t d, id[DEPTH];
    int k, x, t;

    setup_chunks(c);
    CHECK((d = catalog_disk_add(c, "wide")) > 0);
    srand(11);
    for (k = 0; k < DEPTH; k++) {
        int n = 0, pos = 0;

        id[k] = begin_point(c, d, k ? id[k - 1] : 0, N * (uint64_t)CHUNK);
        for (x = 0; x < N; x++)
            own[k][x] = -1;
        while (pos < N) {
            int len = 1 + rand() % 3, ch = rand() % (NCHUNK + 1);

            pos += k ? rand() % 6 : 0;
            if (pos >= N)
                break;
            if (len > N - pos)
                len = N - pos;
            runs[n++] = (struct catalog_run){ .first_cell = (uint64_t)pos, .count = (uint64_t)len,
                                              .chunk_id = chunk_ids[ch] };
            for (x = pos; x < pos + len; x++)
                own[k][x] = ch;
            pos += len;
        }
        CHECK(catalog_cells_add(c, id[k], runs, (size_t)n) == 0);
        commit_point(c, id[k]);
    }
    for (k = 0; k < DEPTH; k++) {
        for (x = 0; x < N; x++) {
            int j;

            chunk[x] = 0;
            depth[x] = 0;
            for (j = k; j >= 0; j--)
                if (own[j][x] >= 0) {
                    chunk[x] = chunk_ids[own[j][x]];
                    depth[x] = (unsigned)(k - j + 1);
                    break;
                }
        }
        check_map(c, id[k], 0, N, chunk, depth, NULL);
        for (t = 0; t < 5; t++) {
            uint64_t a = (uint64_t)(rand() % N), b = a + (uint64_t)(rand() % (N - (int)a + 1));

            check_map(c, id[k], a, b, chunk, depth, NULL);
        }
    }
    catalog_close(c);
}

/* ---- Prune's merge -------------------------------------------------------- */

struct idset {
    int64_t v[256];
    int n;
};

static int collect_ids(void *opaque, const struct catalog_chunk *ch)
{
    struct idset *s = opaque;

    assert_true(s->n < 256);
    s->v[s->n++] = ch->id;
    return 0;
}

static bool has(const struct idset *s, int64_t id)
{
    int i;

    for (i = 0; i < s->n; i++)
        if (s->v[i] == id)
            return true;
    return false;
}

static void test_point_remove_random(void **state UNUSED)
{
    struct catalog *c = new_catalog();
    static struct model m[3];
    static int64_t chunk[3][MAXPTS][NCELLS];
    static unsigned depth[3][MAXPTS][NCELLS];
    char disk[32], *report;
    int seed, t, k, left;

    setup_chunks(c);
    for (seed = 0; seed < 100; seed++) {
        srand(1000u + (unsigned)seed);
        for (t = 0; t < 3; t++) {
            snprintf(disk, sizeof disk, "s%d-%d", seed, t);
            random_tree(c, &m[t], disk, 2 + rand() % 10);
            for (k = 0; k < m[t].n; k++) {
                model_resolve(&m[t], k, chunk[t][k], depth[t][k]);
                check_map(c, m[t].id[k], 0, NCELLS, chunk[t][k], depth[t][k], NULL);
            }
        }
        /* Remove random points until about a third of them are left. */
        for (t = 0; t < 3; t++) {
            left = m[t].n;
            while (left > m[t].n / 3) {
                struct catalog_point p;
                int j, i;

                k = rand() % m[t].n;
                if (m[t].removed[k])
                    continue;
                CHECK(catalog_point_remove(c, m[t].id[k]) == 0);
                m[t].removed[k] = true;
                left--;
                assert_int_equal(catalog_point_get(c, m[t].id[k], &p), 0);
                /* Children are re-parented in the model too. */
                for (j = 0; j < m[t].n; j++)
                    if (m[t].parent[j] == k)
                        m[t].parent[j] = m[t].parent[k];
                for (i = 0; i < 3; i++)
                    for (j = 0; j < m[i].n; j++) {
                        if (m[i].removed[j])
                            continue;
                        check_map(c, m[i].id[j], 0, NCELLS, chunk[i][j], NULL, depth[i][j]);
                        if (i == t) {
                            assert_int_equal(catalog_point_get(c, m[i].id[j], &p), 1);
                            assert_int_equal(p.full, m[i].parent[j] < 0);
                            assert_int_equal(p.parent,
                                             m[i].parent[j] < 0 ? 0 : m[i].id[m[i].parent[j]]);
                        }
                    }
            }
        }
        /* Referenced and unreferenced chunks split the chunk set, and every
         * chunk a resolved map shows is referenced. */
        {
            struct idset ref = { .n = 0 }, unref = { .n = 0 };
            int64_t n;
            int x;

            CHECK(catalog_chunks_referenced(c, NULL, 0, collect_ids, &ref) == 0);
            CHECK((n = catalog_chunks_unreferenced(c, false, collect_ids, &unref)) >= 0);
            assert_int_equal(n, unref.n);
            assert_int_equal(ref.n + unref.n, NCHUNK);
            for (k = 1; k <= NCHUNK; k++)
                assert_true(has(&ref, chunk_ids[k]) != has(&unref, chunk_ids[k]));
            for (t = 0; t < 3; t++)
                for (k = 0; k < m[t].n; k++)
                    for (x = 0; x < NCELLS && !m[t].removed[k]; x++)
                        if (chunk[t][k][x])
                            assert_true(has(&ref, chunk[t][k][x]));
        }
        /* Empty the disks for the next seed, newest first and oldest first. */
        for (t = 0; t < 3; t++)
            for (k = 0; k < m[t].n; k++) {
                int j = t == 1 ? m[t].n - 1 - k : k;

                if (!m[t].removed[j])
                    CHECK(catalog_point_remove(c, m[t].id[j]) == 0);
            }
    }
    CHECK(catalog_integrity_check(c, &report) == 0);
    CHECK_FAILS(catalog_point_remove(c, 424242) == 0, ENOENT);
    catalog_close(c);
}

/* ---- gc: unreferenced chunks, pack rewrite ------------------------------- */

static int count_points(void *opaque, int64_t id)
{
    int64_t *v = opaque;

    v[++v[0]] = id;
    return 0;
}

static void test_gc(void **state UNUSED)
{
    struct catalog *c = new_catalog();
    struct catalog_point p;
    struct catalog_chunk moved[2], got;
    struct chunk_list cl;
    struct pack_list pl;
    struct idset ids = { .n = 0 };
    int64_t ch[4], d, f, inc, run_pt, pts[8];
    char *report;
    /* a = ch[0], b = ch[1], c = ch[2]; ch[3] never used */
    struct catalog_run full_runs[] = {
        { .first_cell = 0, .count = 10, .chunk_id = 0 },
        { .first_cell = 10, .count = 10, .chunk_id = 0 },
        { .first_cell = 20, .count = 5, .chunk_id = 0 },   /* zero */
    };
    struct catalog_run inc_runs[] = { { .first_cell = 0, .count = 10, .chunk_id = 0 } };

    add_pack(c, "pack-a", 0, 4, ch);
    full_runs[0].chunk_id = ch[0];
    full_runs[1].chunk_id = ch[1];
    inc_runs[0].chunk_id = ch[2];
    CHECK((d = catalog_disk_add(c, "vm")) > 0);
    f = begin_point(c, d, 0, 100 * (uint64_t)CHUNK);
    CHECK(catalog_cells_add(c, f, full_runs, 3) == 0);
    commit_point(c, f);
    inc = begin_point(c, d, f, 100 * (uint64_t)CHUNK);
    CHECK(catalog_cells_add(c, inc, inc_runs, 1) == 0);
    commit_point(c, inc);

    pts[0] = 0;
    CHECK(catalog_points_using_chunk(c, ch[0], count_points, pts) == 0);
    assert_true(pts[0] == 2 && pts[1] == f && pts[2] == inc);   /* see its definition */
    pts[0] = 0;
    CHECK(catalog_points_using_chunk(c, ch[2], count_points, pts) == 0);
    assert_true(pts[0] == 1 && pts[1] == inc);
    memset(&cl, 0, sizeof cl);
    CHECK(catalog_chunks_referenced(c, &inc, 1, collect_chunks, &cl) == 0);
    assert_int_equal(cl.n, 3);     /* a, b (parent) and c; by offset: c, b, a */
    assert_true(cl.id[0] == ch[2] && cl.id[1] == ch[1] && cl.id[2] == ch[0]);
    memset(&cl, 0, sizeof cl);
    CHECK(catalog_chunks_referenced(c, &f, 1, collect_chunks, &cl) == 0);
    assert_true(cl.n == 2 && cl.id[0] == ch[1] && cl.id[1] == ch[0]);
    pts[0] = 999;
    CHECK_FAILS(catalog_chunks_referenced(c, pts, 1, collect_chunks, &cl) == 0, ENOENT);

    /* A running point's cells count as references. */
    run_pt = begin_point(c, d, inc, 100 * (uint64_t)CHUNK);
    {
        struct catalog_run r = { .first_cell = 50, .count = 1, .chunk_id = ch[3] };

        CHECK(catalog_cells_add(c, run_pt, &r, 1) == 0);
    }
    assert_int_equal(catalog_chunks_unreferenced(c, false, NULL, NULL), 0);
    CHECK(catalog_point_abort(c, run_pt) == 0);

    /* Prune the full point: the incremental becomes full, a is no longer
     * referenced. */
    CHECK(catalog_point_remove(c, f) == 0);
    assert_int_equal(catalog_point_get(c, inc, &p), 1);
    assert_true(p.full && p.parent == 0);
    assert_int_equal(catalog_chunks_unreferenced(c, false, collect_ids, &ids), 2);
    assert_true(has(&ids, ch[0]) && has(&ids, ch[3]));
    ids.n = 0;
    assert_int_equal(catalog_chunks_unreferenced(c, true, collect_ids, &ids), 2);
    assert_int_equal(catalog_chunk_get(c, ch[0], &got), 0);
    assert_int_equal(catalog_chunks_unreferenced(c, true, NULL, NULL), 0);

    memset(&pl, 0, sizeof pl);
    CHECK(catalog_pack_list(c, collect_packs, &pl) == 0);
    assert_true(pl.n == 1 && pl.p[0].live_chunks == 2 && pl.p[0].live_bytes == 101 + 102);

    /* Rewrite pack-a as pack-b with b and c. */
    memset(moved, 0, sizeof moved);
    moved[0].id = ch[1];
    moved[0].offset = 0;
    CHECK_FAILS(catalog_pack_replace(c, pl.p[0].id, "pack-b", 500, moved, 1) == 0, ENOTEMPTY);
    moved[1].id = 4242;
    CHECK_FAILS(catalog_pack_replace(c, pl.p[0].id, "pack-b", 500, moved, 2) == 0, EINVAL);
    /* The moved chunks' rows as they were, at new offsets; c encoded
     * again (a sealed chunk's new nonce: new bytes, length and CRC). */
    assert_int_equal(catalog_chunk_get(c, ch[1], &moved[0]), 1);
    assert_int_equal(catalog_chunk_get(c, ch[2], &moved[1]), 1);
    moved[0].offset = 0;
    moved[1].offset = 300;
    moved[1].stored_len = 102;
    moved[1].crc = 0x5eed;
    moved[1].codec = 0x81;
    CHECK(catalog_pack_replace(c, pl.p[0].id, "pack-b", 500, moved, 2) == 0);
    memset(&pl, 0, sizeof pl);
    CHECK(catalog_pack_list(c, collect_packs, &pl) == 0);
    assert_true(pl.n == 1 && pl.p[0].live_chunks == 2 && pl.p[0].size == 500);
    assert_string_equal(pl.p[0].name, "pack-b");
    assert_int_equal(catalog_chunk_get(c, ch[2], &got), 1);
    assert_string_equal(got.pack, "pack-b");
    assert_int_equal(got.offset, 300);
    assert_int_equal(got.stored_len, 102);
    assert_int_equal(got.crc, 0x5eed);
    assert_int_equal(got.codec, 0x81);
    {
        int64_t cells[100];
        unsigned written[100];
        int x;

        for (x = 0; x < 100; x++) {
            cells[x] = x < 10 ? ch[2] : x < 20 ? ch[1] : 0;
            written[x] = x < 25;
        }
        check_map(c, inc, 0, 100, cells, NULL, written);
    }
    /* An empty pack can go. */
    CHECK(catalog_pack_add(c, "pack-empty", 10, NULL, 0, NULL) == 0);
    memset(&pl, 0, sizeof pl);
    CHECK(catalog_pack_list(c, collect_packs, &pl) == 0);
    assert_int_equal(pl.n, 2);
    CHECK(catalog_pack_delete(c, pl.p[1].id) == 0);
    /* The last point goes too: everything is unreferenced. */
    CHECK(catalog_point_remove(c, inc) == 0);
    assert_int_equal(catalog_chunks_unreferenced(c, true, NULL, NULL), 2);
    CHECK(catalog_pack_delete(c, pl.p[0].id) == 0);
    CHECK(catalog_integrity_check(c, &report) == 0);
    catalog_close(c);
}

/* ---- cells_add's checks ---------------------------------------------------- */

static void test_cells_add_errors(void **state UNUSED)
{
    struct catalog *c = new_catalog();
    int64_t d, p, ch[2];
    int64_t cells[20];
    unsigned written[20];
    int x;
    struct catalog_run ok[] = {
        { .first_cell = 5, .count = 5 },
        { .first_cell = 12, .count = 3 },
    };
    struct catalog_run bad[2];

    add_pack(c, "pack", 0, 2, ch);
    CHECK((d = catalog_disk_add(c, "vm")) > 0);
    p = begin_point(c, d, 0, 19 * (uint64_t)CHUNK + 1);   /* 20 cells */
    ok[0].chunk_id = ch[0];
    CHECK(catalog_cells_add(c, p, ok, 2) == 0);
#define BAD(f, n, k, err) do { \
        bad[0] = (struct catalog_run){ .first_cell = 0, .count = 1 }; \
        bad[1] = (struct catalog_run){ .first_cell = f, .count = n, .chunk_id = k }; \
        CHECK_FAILS(catalog_cells_add(c, p, bad, 2) == 0, err); \
    } while (0)
    BAD(5, 1, 0, EEXIST);          /* same first cell */
    BAD(3, 3, 0, EEXIST);          /* overlaps the start of 5+5 */
    BAD(9, 2, 0, EEXIST);          /* overlaps its end */
    BAD(4, 12, 0, EEXIST);         /* covers two runs */
    BAD(0, 1, 0, EEXIST);          /* overlaps the batch's own first run */
    BAD(15, 6, 0, EINVAL);         /* beyond the disk's 20 cells */
    BAD(15, 0, 0, EINVAL);         /* empty */
    BAD(UINT64_MAX, 2, 0, EINVAL); /* wraps */
    BAD(16, 2, 4242, EINVAL);      /* no such chunk */
#undef BAD
    /* Nothing of the failed batches was kept. */
    for (x = 0; x < 20; x++) {
        cells[x] = x >= 5 && x < 10 ? ch[0] : 0;
        written[x] = (x >= 5 && x < 10) || (x >= 12 && x < 15);
    }
    check_map(c, p, 0, 20, cells, NULL, written);
    /* Fits exactly: the gap and the short last cell. */
    bad[0] = (struct catalog_run){ .first_cell = 10, .count = 2, .chunk_id = ch[1] };
    bad[1] = (struct catalog_run){ .first_cell = 15, .count = 5, .chunk_id = 0 };
    CHECK(catalog_cells_add(c, p, bad, 2) == 0);
    CHECK(catalog_point_abort(c, p) == 0);
    catalog_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newer_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_from_v1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_locks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_point_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunks_packs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cells_add_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_random, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_deep, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_wide, setup, teardown),
        cmocka_unit_test_setup_teardown(test_point_remove_random, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
