/* catalog/db.c: opening and creating a catalog, its schema and migrations,
 * the statement cache, transactions, errors and the integrity check.
 *
 * Every connection runs with WAL, synchronous=FULL (a committed point
 * survives a power cut), a busy_timeout (a second process waits for the
 * writer instead of failing) and foreign keys on.  Every write transaction
 * is BEGIN IMMEDIATE: the write lock is taken at the start, so a transaction
 * never fails half-way because another connection wrote first.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "catalog/internal.h"
#include "common/error.h"

#define BUSY_TIMEOUT_MS 10000

/* ---- Schema ----------------------------------------------------------------
 * The schema version is PRAGMA user_version: the number of migrations
 * applied.  A migration is appended to the table below and never edited once
 * released; catalog_open applies the missing ones in one transaction.  The
 * repository's format_version row follows the schema version.
 */
static const char SCHEMA_V1[] =
    "CREATE TABLE repo ("
    "  key   TEXT PRIMARY KEY,"
    "  value NOT NULL"
    ") WITHOUT ROWID;"

    "CREATE TABLE disks ("
    "  id   INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  name TEXT NOT NULL UNIQUE"
    ");"

    "CREATE TABLE points ("
    "  id            INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  disk_id       INTEGER NOT NULL REFERENCES disks(id),"
    "  parent_id     INTEGER REFERENCES points(id),"
    "  kind          TEXT NOT NULL CHECK (kind IN ('full', 'incremental')),"
    "  status        TEXT NOT NULL CHECK (status IN ('running', 'complete')),"
    "  started       REAL NOT NULL,"
    "  finished      REAL,"
    "  disk_size     INTEGER NOT NULL,"
    "  source_uri    TEXT NOT NULL DEFAULT '',"
    "  bitmap        TEXT NOT NULL DEFAULT '',"
    "  bytes_planned INTEGER NOT NULL DEFAULT 0,"
    "  bytes_read    INTEGER NOT NULL DEFAULT 0,"
    "  bytes_stored  INTEGER NOT NULL DEFAULT 0,"
    "  chunks_new    INTEGER NOT NULL DEFAULT 0,"
    "  chunks_reused INTEGER NOT NULL DEFAULT 0,"
    "  holder_pid    INTEGER,"
    "  holder_host   TEXT,"
    "  CHECK ((kind = 'full') = (parent_id IS NULL))"
    ");"
    "CREATE INDEX points_disk ON points(disk_id, status, id);"
    "CREATE INDEX points_parent ON points(parent_id);"

    "CREATE TABLE packs ("
    "  id       INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  name     TEXT NOT NULL UNIQUE,"
    "  size     INTEGER NOT NULL,"
    "  location TEXT NOT NULL DEFAULT 'local',"
    "  uploaded INTEGER NOT NULL DEFAULT 0"
    ");"

    "CREATE TABLE chunks ("
    "  id         INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  hash       BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),"
    "  pack_id    INTEGER NOT NULL REFERENCES packs(id),"
    "  offset     INTEGER NOT NULL,"
    "  stored_len INTEGER NOT NULL,"
    "  plain_len  INTEGER NOT NULL,"
    "  codec      INTEGER NOT NULL,"
    "  crc        INTEGER NOT NULL"
    ");"
    "CREATE INDEX chunks_pack ON chunks(pack_id, offset);"

    "CREATE TABLE cells ("
    "  point_id   INTEGER NOT NULL REFERENCES points(id) ON DELETE CASCADE,"
    "  first_cell INTEGER NOT NULL CHECK (first_cell >= 0),"
    "  count      INTEGER NOT NULL CHECK (count > 0),"
    "  chunk_id   INTEGER REFERENCES chunks(id),"
    "  PRIMARY KEY (point_id, first_cell)"
    ") WITHOUT ROWID;"
    "CREATE INDEX cells_chunk ON cells(chunk_id) WHERE chunk_id IS NOT NULL;"

    "CREATE TABLE locks ("
    "  name  TEXT PRIMARY KEY,"
    "  pid   INTEGER NOT NULL,"
    "  host  TEXT NOT NULL,"
    "  since INTEGER NOT NULL"
    ") WITHOUT ROWID;";

/* Version 2: dedup look-ups go through an index of the first 8 bytes of
 * the hash (chunks_hkey) instead of the whole hash (a UNIQUE constraint's
 * index): an entry shrinks from ~41 to ~14 bytes, so a look-up walks a
 * third of the pages, and a backup's inserts, each landing on a random page
 * of this index, dirty fewer of them (each written to the WAL, and again by
 * the checkpoint).  Writers keep one row per hash (look-up and insert share
 * a write transaction).  SQLite cannot drop a UNIQUE constraint: the table
 * is rebuilt, its ids and its AUTOINCREMENT sequence kept (foreign keys are
 * off meanwhile: see catalog_open). */
static const char SCHEMA_V2[] =
    "CREATE TABLE chunks_v2 ("
    "  id         INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  hash       BLOB NOT NULL CHECK (length(hash) = 32),"
    "  pack_id    INTEGER NOT NULL REFERENCES packs(id),"
    "  offset     INTEGER NOT NULL,"
    "  stored_len INTEGER NOT NULL,"
    "  plain_len  INTEGER NOT NULL,"
    "  codec      INTEGER NOT NULL,"
    "  crc        INTEGER NOT NULL"
    ");"
    "INSERT INTO chunks_v2 SELECT id, hash, pack_id, offset, stored_len, plain_len, codec, crc "
    "  FROM chunks ORDER BY id;"
    /* The ids of chunks gc deleted stay used. */
    "UPDATE sqlite_sequence SET seq = max(seq, (SELECT seq FROM sqlite_sequence "
    "  WHERE name = 'chunks')) WHERE name = 'chunks_v2';"
    "INSERT INTO sqlite_sequence(name, seq) SELECT 'chunks_v2', seq FROM sqlite_sequence "
    "  WHERE name = 'chunks' AND NOT EXISTS "
    "  (SELECT 1 FROM sqlite_sequence WHERE name = 'chunks_v2');"
    "DROP TABLE chunks;"
    "ALTER TABLE chunks_v2 RENAME TO chunks;"
    "CREATE INDEX chunks_hkey ON chunks(substr(hash, 1, 8));"
    "CREATE INDEX chunks_pack ON chunks(pack_id, offset);";

/* Version 3: what a point was taken from, so that the next backup of a
 * running VM can tell whether an incremental is safe: the VM's identity
 * (libvirt UUID / QMP name and UUID), the checkpoint the point's job
 * created (the base of the next incremental), and why a point is full when
 * an incremental was asked for.  Older points read as '' (taken from an
 * NBD URI). */
static const char SCHEMA_V3[] =
    "ALTER TABLE points ADD COLUMN source_kind TEXT NOT NULL DEFAULT 'nbd';"
    "ALTER TABLE points ADD COLUMN vm_uuid TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE points ADD COLUMN checkpoint TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE points ADD COLUMN full_reason TEXT NOT NULL DEFAULT '';";

/* Version 4: a repository on an object store keeps in its catalog (a
 * cache of the bucket) which manifest each point came from or went to,
 * and what the bucket still has to be told: points whose map changed here
 * (a prune merged their parent into them: dirty) and points removed here
 * (remote_gone), both set by triggers in the transaction that changed
 * them, and sent by the next command that reaches the bucket. */
static const char SCHEMA_V4[] =
    "CREATE TABLE remote_points ("
    "  point_id INTEGER PRIMARY KEY REFERENCES points(id) ON DELETE CASCADE,"
    "  uid      TEXT NOT NULL UNIQUE,"
    "  gen      INTEGER NOT NULL,"
    "  dirty    INTEGER NOT NULL DEFAULT 0"
    ");"
    "CREATE TABLE remote_gone ("
    "  uid TEXT PRIMARY KEY"
    ") WITHOUT ROWID;"
    "CREATE TRIGGER remote_point_changed AFTER UPDATE OF parent_id, kind ON points "
    "  BEGIN UPDATE remote_points SET dirty = 1 WHERE point_id = NEW.id; END;"
    "CREATE TRIGGER remote_point_removed BEFORE DELETE ON points "
    "  BEGIN INSERT OR IGNORE INTO remote_gone(uid) "
    "    SELECT uid FROM remote_points WHERE point_id = OLD.id; END;";

struct migration {
    const char *sql;
    int (*fn)(struct catalog *c);  /* data changes after sql, may be NULL */
};

static const struct migration migrations[] = {
    { SCHEMA_V1, NULL },               /* version 1 */
    { SCHEMA_V2, NULL },               /* version 2 */
    { SCHEMA_V3, NULL },               /* version 3 */
    { SCHEMA_V4, NULL },               /* version 4 */
};

#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

const char *cat_migration_sql(int version)
{
    return version >= 1 && version <= SCHEMA_VERSION ? migrations[version - 1].sql : NULL;
}
_Static_assert(sizeof migrations / sizeof migrations[0] == CATALOG_FORMAT_VERSION,
               "one migration per catalog format version");

/* ---- Errors --------------------------------------------------------------- */

int cat_errno(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK: case SQLITE_ROW: case SQLITE_DONE: return 0;
    case SQLITE_BUSY: case SQLITE_LOCKED: return EBUSY;
    case SQLITE_NOMEM: return ENOMEM;
    case SQLITE_READONLY: return EROFS;
    case SQLITE_FULL: return ENOSPC;
    case SQLITE_PERM: case SQLITE_AUTH: return EACCES;
    case SQLITE_CANTOPEN: return ENOENT;
    case SQLITE_TOOBIG: return E2BIG;
    case SQLITE_CONSTRAINT:
        if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY)
            return EEXIST;
        return EINVAL;
    case SQLITE_MISUSE: case SQLITE_RANGE: case SQLITE_ERROR: return EINVAL;
    default: return EIO;    /* IOERR, CORRUPT, NOTADB, PROTOCOL... */
    }
}

static int db_errno(sqlite3 *db)
{
    int rc = sqlite3_extended_errcode(db);
    int sys = sqlite3_system_errno(db);

    if (((rc & 0xff) == SQLITE_IOERR || (rc & 0xff) == SQLITE_CANTOPEN) && sys > 0)
        return sys;
    return cat_errno(rc);
}

int cat_fail(struct catalog *c, const char *what)
{
    error_set(db_errno(c->db), "catalog: %s: %s", what, sqlite3_errmsg(c->db));
    return -1;
}

/* ---- Statements ----------------------------------------------------------- */

sqlite3_stmt *cat_stmt(struct catalog *c, const char *sql)
{
    sqlite3_stmt *st = NULL;
    struct cat_cached *e = NULL;
    unsigned i;

    for (i = 0; i < c->ncache; i++)
        if (c->cache[i].sql == sql) {
            e = &c->cache[i];
            break;
        }
    if (e && !e->busy) {
        e->busy = true;
        return e->st;
    }
    if (!e && c->ncache < CAT_STMT_CACHE) {
        if (sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
            cat_fail(c, "prepare");
            return NULL;
        }
        e = &c->cache[c->ncache++];
        e->sql = sql;
        e->st = st;
        e->busy = true;
        return st;
    }
    /* In use by a caller up the stack (or the cache is full): a one-off. */
    if (sqlite3_prepare_v2(c->db, sql, -1, &st, NULL) != SQLITE_OK) {
        cat_fail(c, "prepare");
        return NULL;
    }
    return st;
}

void cat_done(struct catalog *c, sqlite3_stmt *st)
{
    unsigned i;

    if (!st)
        return;
    for (i = 0; i < c->ncache; i++)
        if (c->cache[i].st == st) {
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            c->cache[i].busy = false;
            return;
        }
    sqlite3_finalize(st);
}

int cat_exec_stmt(struct catalog *c, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);

    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return cat_fail(c, what);
    return 0;
}

int cat_exec(struct catalog *c, const char *sql, const char *what)
{
    char *msg = NULL;

    if (sqlite3_exec(c->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        error_set(db_errno(c->db), "catalog: %s: %s", what, msg ? msg : sqlite3_errmsg(c->db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

void cat_column_text(sqlite3_stmt *st, int i, char *buf, size_t cap)
{
    const unsigned char *s = sqlite3_column_text(st, i);

    snprintf(buf, cap, "%s", s ? (const char *)s : "");
}

/* ---- Transactions --------------------------------------------------------- */

static const char SQL_BEGIN[] = "BEGIN IMMEDIATE";
static const char SQL_COMMIT[] = "COMMIT";
static const char SQL_ROLLBACK[] = "ROLLBACK";
static const char SQL_SAVEPOINT[] = "SAVEPOINT nested";
static const char SQL_RELEASE[] = "RELEASE nested";
static const char SQL_ROLLBACK_TO[] = "ROLLBACK TO nested";

static int run(struct catalog *c, const char *sql, const char *what)
{
    sqlite3_stmt *st = cat_stmt(c, sql);
    int r;

    if (!st)
        return -1;
    r = cat_exec_stmt(c, st, what);
    cat_done(c, st);
    return r;
}

int cat_begin(struct catalog *c)
{
    if (run(c, c->tx_depth ? SQL_SAVEPOINT : SQL_BEGIN, "begin transaction") == -1)
        return -1;
    c->tx_depth++;
    return 0;
}

int cat_commit(struct catalog *c)
{
    assert(c->tx_depth > 0);
    if (c->tx_depth > 1) {
        if (run(c, SQL_RELEASE, "release savepoint") == -1) {
            cat_rollback(c);
            return -1;
        }
        c->tx_depth--;
        return 0;
    }
    if (run(c, SQL_COMMIT, "commit") == -1) {
        cat_rollback(c);
        return -1;
    }
    c->tx_depth = 0;
    return 0;
}

int catalog_begin(struct catalog *c)
{
    return cat_begin(c);
}

int catalog_commit(struct catalog *c)
{
    return cat_commit(c);
}

void catalog_rollback(struct catalog *c)
{
    if (c->tx_depth)
        cat_rollback(c);
}

int catalog_snapshot_begin(struct catalog *c)
{
    if (c->tx_depth) {
        error_set(EBUSY, "catalog: a transaction is already open on this handle");
        return -1;
    }
    if (run(c, "BEGIN DEFERRED", "begin read snapshot") == -1)
        return -1;
    /* A deferred transaction takes its snapshot at its first read. */
    if (run(c, "SELECT count(*) FROM repo", "begin read snapshot") == -1) {
        run(c, SQL_ROLLBACK, "rollback");
        return -1;
    }
    c->tx_depth = 1;
    return 0;
}

int catalog_snapshot_end(struct catalog *c)
{
    if (c->tx_depth != 1)
        return 0;
    c->tx_depth = 0;
    return run(c, SQL_COMMIT, "end read snapshot");
}

void cat_rollback(struct catalog *c)
{
    sqlite3_stmt *st;

    assert(c->tx_depth > 0);
    if (c->tx_depth > 1) {
        if ((st = cat_stmt(c, SQL_ROLLBACK_TO))) {
            sqlite3_step(st);
            cat_done(c, st);
        }
        if ((st = cat_stmt(c, SQL_RELEASE))) {
            sqlite3_step(st);
            cat_done(c, st);
        }
        c->tx_depth--;
        return;
    }
    /* SQLite may already have rolled back on its own (SQLITE_FULL...). */
    if (!sqlite3_get_autocommit(c->db) && (st = cat_stmt(c, SQL_ROLLBACK))) {
        sqlite3_step(st);
        cat_done(c, st);
    }
    c->tx_depth = 0;
}

/* ---- Open, create, close -------------------------------------------------- */

static int get_user_version(struct catalog *c, int *v)
{
    sqlite3_stmt *st;

    if (sqlite3_prepare_v2(c->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
        return cat_fail(c, "read schema version");
    if (sqlite3_step(st) != SQLITE_ROW) {
        cat_fail(c, "read schema version");
        sqlite3_finalize(st);
        return -1;
    }
    *v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return 0;
}

/* Applies migrations after version `from`, inside the caller's transaction. */
static int apply_migrations(struct catalog *c, int from)
{
    char sql[128];
    int v;

    for (v = from; v < SCHEMA_VERSION; v++) {
        char what[64];

        snprintf(what, sizeof what, "migrate schema to version %d", v + 1);
        if (cat_exec(c, migrations[v].sql, what) == -1)
            return -1;
        if (migrations[v].fn && migrations[v].fn(c) == -1) {
            error_prefix("catalog: %s: ", what);
            return -1;
        }
    }
    snprintf(sql, sizeof sql,
             "PRAGMA user_version = %d;"
             "INSERT OR REPLACE INTO repo(key, value) VALUES ('format_version', %d);",
             SCHEMA_VERSION, CATALOG_FORMAT_VERSION);
    return cat_exec(c, sql, "record schema version");
}

/* PRAGMA foreign_key_check finds nothing: 0, or -1 naming the first row. */
static int foreign_keys_hold(struct catalog *c)
{
    sqlite3_stmt *st;
    int rc;

    if (sqlite3_prepare_v2(c->db, "PRAGMA foreign_key_check", -1, &st, NULL) != SQLITE_OK)
        return cat_fail(c, "check foreign keys");
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        error_set(EINVAL, "catalog: row %lld of %s refers to a missing row of %s",
                  (long long)sqlite3_column_int64(st, 1), sqlite3_column_text(st, 0),
                  sqlite3_column_text(st, 2));
    else if (rc != SQLITE_DONE)
        cat_fail(c, "check foreign keys");
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* journal_mode=WAL answers the mode in force: a file system that cannot
 * share memory for the WAL index keeps the old one. */
static int set_wal(struct catalog *c)
{
    sqlite3_stmt *st;
    int r = -1;

    if (sqlite3_prepare_v2(c->db, "PRAGMA journal_mode = WAL", -1, &st, NULL) != SQLITE_OK)
        return cat_fail(c, "set WAL mode");
    if (sqlite3_step(st) != SQLITE_ROW)
        cat_fail(c, "set WAL mode");
    else if (sqlite3_stricmp((const char *)sqlite3_column_text(st, 0), "wal") != 0)
        error_set(ENOTSUP, "catalog: WAL mode refused (journal mode stays %s)",
                  sqlite3_column_text(st, 0));
    else
        r = 0;
    sqlite3_finalize(st);
    return r;
}

/* Statement journals (a statement's undo inside a transaction) stay in
 * memory up to 4 MiB, where SQLite's default spills them to a temporary
 * file from 64 KiB: each pack's chunk inserts wrote hundreds of pages to
 * one.  Process-wide, so set once before the first connection. */
static pthread_once_t sqlite_once = PTHREAD_ONCE_INIT;

static void sqlite_setup(void)
{
    sqlite3_config(SQLITE_CONFIG_STMTJRNL_SPILL, 4 * 1024 * 1024);
}

static struct catalog *handle_open(const char *path)
{
    struct catalog *c = calloc(1, sizeof *c);
    int rc;

    if (!c || !(c->path = strdup(path))) {
        error_set(ENOMEM, "catalog %s: out of memory", path);
        free(c);
        return NULL;
    }
    c->pid = getpid();
    if (gethostname(c->host, sizeof c->host - 1) == -1)
        snprintf(c->host, sizeof c->host, "localhost");
    pthread_once(&sqlite_once, sqlite_setup);
    rc = sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        if (c->db)
            error_set(db_errno(c->db), "catalog %s: open: %s", path, sqlite3_errmsg(c->db));
        else
            error_set(ENOMEM, "catalog %s: open: out of memory", path);
        sqlite3_close(c->db);
        free(c->path);
        free(c);
        return NULL;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
    if (set_wal(c) == -1 ||
        cat_exec(c, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
                 "set up connection") == -1) {
        error_prefix("%s: ", path);
        catalog_close(c);
        return NULL;
    }
    return c;
}

/* Removes the -wal and -shm files of a catalog (keeps errno). */
static void unlink_aux(const char *path)
{
    int saved = errno;
    char aux[4096];

    snprintf(aux, sizeof aux, "%s-wal", path);
    unlink(aux);
    snprintf(aux, sizeof aux, "%s-shm", path);
    unlink(aux);
    errno = saved;
}

int catalog_create(const char *path, uint32_t chunk_size)
{
    return catalog_create_with(path, chunk_size, NULL, NULL);
}

int catalog_create_with(const char *path, uint32_t chunk_size, const char *key, const char *value)
{
    struct catalog *c;
    sqlite3_stmt *st;
    int fd;

    if (chunk_size < 65536 || chunk_size > 16u << 20 || (chunk_size & (chunk_size - 1))) {
        error_set(EINVAL, "catalog %s: chunk size %" PRIu32 " is not a power of two "
                  "from 64 KiB to 16 MiB", path, chunk_size);
        return -1;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1) {
        error_set(errno, "catalog %s: create: %s", path, strerror(errno));
        return -1;
    }
    close(fd);
    /* The file is new and ours: a WAL left by a deleted catalog of the same
     * name must not be replayed into it. */
    unlink_aux(path);
    if (!(c = handle_open(path)))
        goto fail;
    if (cat_begin(c) == -1)
        goto fail_close;
    if (apply_migrations(c, 0) == -1)
        goto fail_rollback;
    if (!(st = cat_stmt(c, "INSERT INTO repo(key, value) VALUES "
                           "('chunk_size', ?1), ('created', ?2)")))
        goto fail_rollback;
    sqlite3_bind_int64(st, 1, chunk_size);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)time(NULL));
    if (cat_exec_stmt(c, st, "write repository rows") == -1) {
        cat_done(c, st);
        goto fail_rollback;
    }
    cat_done(c, st);
    if (key && catalog_repo_text_set(c, key, value) < 0)
        goto fail_rollback;
    if (cat_commit(c) == -1)
        goto fail_close;
    catalog_close(c);
    return 0;

fail_rollback:
    cat_rollback(c);
fail_close:
    error_prefix("%s: ", path);
    catalog_close(c);
fail:
    unlink_aux(path);
    {
        int saved = errno;

        unlink(path);
        errno = saved;
    }
    return -1;
}

int catalog_repo_text_get(struct catalog *c, const char *key, char **value)
{
    sqlite3_stmt *st = cat_stmt(c, "SELECT value FROM repo WHERE key = ?1");
    int rc;

    *value = NULL;
    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && !(*value = strdup((const char *)sqlite3_column_text(st, 0) ?: "")))
        error_set(ENOMEM, "out of memory");
    else if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        cat_fail(c, "read repository");
    cat_done(c, st);
    return rc == SQLITE_ROW ? (*value ? 1 : -1) : rc == SQLITE_DONE ? 0 : -1;
}

int catalog_repo_text_set(struct catalog *c, const char *key, const char *value)
{
    sqlite3_stmt *st = cat_stmt(c, "INSERT OR REPLACE INTO repo(key, value) VALUES (?1, ?2)");
    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
    int r = cat_exec_stmt(c, st, "write repository row");
    cat_done(c, st);
    return r == -1 ? -1 : 0;
}

/* Reads an integer row of the repo table: 0, or -1 when missing. */
static int repo_int(struct catalog *c, const char *key, int64_t *v)
{
    sqlite3_stmt *st = cat_stmt(c, "SELECT value FROM repo WHERE key = ?1");
    int rc;

    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *v = sqlite3_column_int64(st, 0);
    else if (rc == SQLITE_DONE)
        error_set(EINVAL, "catalog: repository row '%s' is missing", key);
    else
        cat_fail(c, "read repository");
    cat_done(c, st);
    return rc == SQLITE_ROW ? 0 : -1;
}

struct catalog *catalog_open(const char *path)
{
    struct catalog *c;
    int version;
    int64_t format, chunk;

    if (access(path, F_OK) == -1) {
        error_set(errno, "catalog %s: %s", path, strerror(errno));
        return NULL;
    }
    if (!(c = handle_open(path)))
        return NULL;
    if (get_user_version(c, &version) == -1)
        goto fail;
    if (version == 0) {
        error_set(EINVAL, "catalog %s: not an nbdvault catalog (no schema; an interrupted "
                  "create?)", path);
        goto fail;
    }
    if (version > SCHEMA_VERSION) {
        error_set(ENOTSUP, "catalog %s: schema version %d is newer than this nbdvault "
                  "knows (%d): upgrade nbdvault", path, version, SCHEMA_VERSION);
        goto fail;
    }
    if (version < SCHEMA_VERSION) {
        /* Re-read under the write lock: another process may have migrated.
         * A migration may rebuild a table others reference: foreign keys
         * are off while it runs (SQLite only switches them outside a
         * transaction) and checked as a whole before the commit. */
        if (cat_exec(c, "PRAGMA foreign_keys = OFF", "migrate") == -1)
            goto fail_prefix;
        if (cat_begin(c) == -1)
            goto fail_prefix;
        if (get_user_version(c, &version) == -1 ||
            (version < SCHEMA_VERSION &&
             (apply_migrations(c, version) == -1 || foreign_keys_hold(c) == -1))) {
            cat_rollback(c);
            goto fail_prefix;
        }
        if (cat_commit(c) == -1 ||
            cat_exec(c, "PRAGMA foreign_keys = ON", "migrate") == -1)
            goto fail_prefix;
    }
    if (repo_int(c, "format_version", &format) == -1 || repo_int(c, "chunk_size", &chunk) == -1)
        goto fail_prefix;
    if (format > CATALOG_FORMAT_VERSION) {
        error_set(ENOTSUP, "catalog %s: repository format version %" PRId64 " is newer than "
                  "this nbdvault knows (%d): upgrade nbdvault", path, format,
                  CATALOG_FORMAT_VERSION);
        goto fail;
    }
    if (chunk < 65536 || chunk > 16 << 20 || (chunk & (chunk - 1))) {
        error_set(EINVAL, "catalog %s: invalid chunk size %" PRId64, path, chunk);
        goto fail;
    }
    c->chunk_size = (uint32_t)chunk;
    return c;

fail_prefix:
    error_prefix("%s: ", path);
fail:
    catalog_close(c);
    return NULL;
}

void catalog_close(struct catalog *c)
{
    unsigned i;
    int saved = errno;

    if (!c)
        return;
    if (c->db) {
        if (c->locks[0]) {
            /* Keep the caller's error: close often follows a failure. */
            char msg[1024];
            int err = error_errno();

            snprintf(msg, sizeof msg, "%s", error_msg());
            cat_release_locks(c);
            error_set(err, "%s", msg);
        }
        for (i = 0; i < c->ncache; i++)
            sqlite3_finalize(c->cache[i].st);
        sqlite3_close_v2(c->db);
    }
    free(c->path);
    free(c);
    errno = saved;
}

uint32_t catalog_chunk_size(const struct catalog *c)
{
    return c->chunk_size;
}

/* ---- Integrity ------------------------------------------------------------
 * SQLite's own check, the foreign keys, and the invariants the code relies
 * on but SQL cannot state: chains go backwards in time and stay on one disk,
 * and the runs of one point do not overlap. */
static const char *const CHECKS[] = {
    "PRAGMA integrity_check",
    "SELECT 'foreign key: ' || \"table\" || ' row ' || coalesce(rowid, '?') || ' -> ' || parent "
    "FROM pragma_foreign_key_check",
    "SELECT 'point ' || c.id || ': parent ' || p.id || ' is newer, on another disk, or not "
    "complete' FROM points c JOIN points p ON p.id = c.parent_id "
    "WHERE p.id >= c.id OR p.disk_id != c.disk_id OR p.status != 'complete'",
    "SELECT 'point ' || point_id || ': run at cell ' || first_cell || ' overlaps the run "
    "before it' FROM (SELECT point_id, first_cell, lag(first_cell + count) OVER "
    "(PARTITION BY point_id ORDER BY first_cell) AS prev_end FROM cells) "
    "WHERE prev_end > first_cell",
};

int catalog_integrity_check(struct catalog *c, char **report)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f;
    unsigned i;
    int problems = 0;

    *report = NULL;
    if (!(f = open_memstream(&buf, &len))) {
        error_set(errno, "catalog: integrity check: %s", strerror(errno));
        return -1;
    }
    for (i = 0; i < sizeof CHECKS / sizeof CHECKS[0]; i++) {
        sqlite3_stmt *st;
        int rc;

        if (sqlite3_prepare_v2(c->db, CHECKS[i], -1, &st, NULL) != SQLITE_OK) {
            cat_fail(c, "integrity check");
            goto fail;
        }
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            const char *line = (const char *)sqlite3_column_text(st, 0);

            if (i == 0 && line && strcmp(line, "ok") == 0)
                continue;
            fprintf(f, "%s\n", line ? line : "(null)");
            problems++;
        }
        if (rc != SQLITE_DONE) {
            cat_fail(c, "integrity check");
            sqlite3_finalize(st);
            goto fail;
        }
        sqlite3_finalize(st);
    }
    if (fclose(f) != 0) {
        f = NULL;
        error_set(ENOMEM, "catalog: integrity check: out of memory");
        goto fail;
    }
    if (!problems) {
        free(buf);
        return 0;
    }
    *report = buf;
    return 1;

fail:
    if (f)
        fclose(f);
    free(buf);
    return -1;
}

int cat_id_by_text(struct catalog *c, const char *sql, const char *text, int64_t *id, const char *what)
{
    sqlite3_stmt *st = cat_stmt(c, sql);
    int rc;

    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *id = sqlite3_column_int64(st, 0);
    else if (rc != SQLITE_DONE)
        cat_fail(c, what);
    cat_done(c, st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}
