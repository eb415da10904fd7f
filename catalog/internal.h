/* catalog/internal.h: what the files of catalog/ share, and nothing else
 * includes.  The handle, the statement cache, transactions and the error
 * helpers.
 */
#ifndef CATALOG_INTERNAL_H
#define CATALOG_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <sqlite3.h>

#include "catalog/catalog.h"

/* More than the distinct SQL texts of catalog/ (about 50); past it,
 * statements are prepared for each use. */
#define CAT_STMT_CACHE 96
#define CAT_MAX_LOCKS 8

struct cat_cached {
    const char *sql;              /* the static string: compared by address */
    sqlite3_stmt *st;
    bool busy;                    /* handed out and not yet cat_done */
};

struct catalog {
    sqlite3 *db;
    char *path;
    uint32_t chunk_size;
    pid_t pid;                    /* the holder identity of locks and points */
    char host[256];
    unsigned tx_depth;            /* 0: autocommit; >1: nested as savepoints */
    struct cat_cached cache[CAT_STMT_CACHE];
    unsigned ncache;
    char *locks[CAT_MAX_LOCKS];   /* names taken through this handle */
};

/* ---- Errors (db.c) --------------------------------------------------------
 * cat_fail sets the error from the connection's last SQLite error, with
 * `what` in front, and returns -1.  cat_errno maps an SQLite result code to
 * an errno. */
int cat_fail(struct catalog *c, const char *what);
/* The SQL of the migration to `version` (1 creates the schema); for tests
 * that build a catalog as an older nbdvault wrote it. */
const char *cat_migration_sql(int version);
int cat_errno(int rc);

/* ---- Statements (db.c) ------------------------------------------------------
 * cat_stmt returns the handle's prepared statement for sql (a static string,
 * cached by its address), reset and unbound; when that one is busy (a
 * callback re-entering the catalog) a fresh one is prepared.  Every statement
 * goes back with cat_done, which resets (or finalizes) it. */
sqlite3_stmt *cat_stmt(struct catalog *c, const char *sql);
void cat_done(struct catalog *c, sqlite3_stmt *st);
/* Runs a statement that returns no row: 0 or -1 (with the error set). */
int cat_exec_stmt(struct catalog *c, sqlite3_stmt *st, const char *what);
/* Runs SQL text once, without caching (schema, pragmas). */
int cat_exec(struct catalog *c, const char *sql, const char *what);

/* Binds a uint64 that the caller knows fits an SQLite INTEGER. */
static inline int cat_bind_u64(sqlite3_stmt *st, int i, uint64_t v)
{
    return sqlite3_bind_int64(st, i, (sqlite3_int64)v);
}

static inline uint64_t cat_column_u64(sqlite3_stmt *st, int i)
{
    sqlite3_int64 v = sqlite3_column_int64(st, i);
    return v < 0 ? 0 : (uint64_t)v;
}

/* Copies a text column into a fixed buffer (truncating, always terminated). */
void cat_column_text(sqlite3_stmt *st, int i, char *buf, size_t cap);

/* ---- Transactions (db.c) ----------------------------------------------------
 * cat_begin starts a BEGIN IMMEDIATE transaction, or a savepoint when one is
 * already open through this handle (a callback writing from inside a
 * transaction).  cat_commit ends it; cat_rollback undoes it and keeps the
 * error already set. */
int cat_begin(struct catalog *c);
int cat_commit(struct catalog *c);
void cat_rollback(struct catalog *c);

/* ---- Shared helpers ------------------------------------------------------ */

/* Number of cells of a disk of `size` bytes. */
static inline uint64_t cat_cells_of(const struct catalog *c, uint64_t size)
{
    return size / c->chunk_size + (size % c->chunk_size != 0);
}

/* lock.c: true when pid on this host is known dead (kill gives ESRCH). */
bool cat_holder_dead(const struct catalog *c, int64_t pid, const char *host);
/* lock.c: releases every lock this handle took (catalog_close). */
void cat_release_locks(struct catalog *c);

/* chunk.c: fills a chunk from a row of CAT_CHUNK_COLUMNS. */
#define CAT_CHUNK_COLUMNS \
    "ch.id, ch.hash, ch.pack_id, pk.name, ch.offset, ch.stored_len, ch.plain_len, ch.codec, ch.crc"
void cat_chunk_from_row(sqlite3_stmt *st, struct catalog_chunk *ch);
/* Inserts a chunk row at ch's location in pack_id (the caller knows the
 * hash is new); *id gets its id. */
int cat_chunk_insert(struct catalog *c, int64_t pack_id, const struct catalog_chunk *ch, int64_t *id);
/* Runs a one-row query of one integer with one text parameter: 1 found
 * (*id set), 0 none, -1 error (what: for the message). */
int cat_id_by_text(struct catalog *c, const char *sql, const char *text, int64_t *id, const char *what);

#endif
