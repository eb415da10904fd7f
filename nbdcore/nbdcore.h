/* nbdcore.h: the public API of nbdcore, nbdvault's NBD protocol library.
 *
 * nbdcore is a protocol library that knows nothing about backups: an NBD
 * client (URIs, fixed-newstyle handshake, STARTTLS, structured replies,
 * extended headers, metadata contexts, pipelined requests matched by cookie,
 * a multi-conn pool) and a server engine.
 *
 * Conventions: functions return 0 / a pointer on success and -1 / NULL on
 * failure, with a message and an errno kept per thread (nbd_get_error,
 * nbd_get_errno).  Nothing here prints or exits.  Objects are created by
 * _open / _connect / _new and freed by _close / _free, which accept NULL.
 * A connection is not thread-safe: one thread drives it at a time.
 */
#ifndef NBDCORE_H
#define NBDCORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nbd-protocol.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Errors and logging ------------------------------------------------- */

const char *nbd_get_error(void); /* never NULL */
int nbd_get_errno(void);
/* level: 0 error, 1 warning, 2 debug. */
typedef void (*nbd_log_fn)(void *opaque, int level, const char *msg);
void nbd_set_log(nbd_log_fn fn, void *opaque);

/* ---- NBD URIs (NBD URI spec; libnbd's nbd_connect_uri) ------------------ */

enum nbd_transport { NBD_TRANSPORT_TCP, NBD_TRANSPORT_UNIX, NBD_TRANSPORT_VSOCK };

struct nbd_uri {
    bool tls;                 /* nbds... */
    enum nbd_transport transport;
    char *user;               /* TLS user name from the authority, or NULL */
    char *host;               /* TCP / vsock: host (brackets removed for IPv6) */
    char *port;               /* TCP: port string, NULL = 10809 */
    char *socket;             /* Unix: socket path (query socket=) */
    char *export_name;        /* percent-decoded path without its leading '/'; "" default */
    char *tls_certificates;   /* query tls-certificates=DIR */
    char *tls_psk_file;       /* query tls-psk-file=FILE */
    char *tls_hostname;       /* query tls-hostname=NAME (overrides host for checks) */
    int tls_verify_peer;      /* query tls-verify-peer=false|true; -1 = unset */
};

/* Parses s into *u (zeroed first).  Rejects unknown schemes, missing socket=
 * for +unix, a socket= for TCP, bad percent escapes, and unknown query
 * parameters that would change the meaning (see uri.c). */
int nbd_uri_parse(const char *s, struct nbd_uri *u);
void nbd_uri_clear(struct nbd_uri *u);

/* ---- Connecting --------------------------------------------------------- */

enum nbd_tls_mode { NBD_TLS_OFF = 0, NBD_TLS_ALLOW = 1, NBD_TLS_REQUIRE = 2 };

struct nbd_conn;

struct nbd_conn_opts {
    /* Contexts to select with SET_META_CONTEXT (e.g. "base:allocation",
     * "qemu:dirty-bitmap:b0").  NULL-terminated; NULL = none. */
    const char *const *meta_contexts;
    /* Stop after STARTTLS / STRUCTURED_REPLY / EXTENDED_HEADERS so that the
     * caller can run LIST, INFO, LIST_META_CONTEXT, then nbd_opt_go. */
    bool opt_mode;
    bool no_structured_replies;   /* never ask (tests, old servers) */
    bool no_extended_headers;
    bool tls_allow;               /* nbd:// with TLS credentials: try STARTTLS, fall back */
    unsigned max_in_flight;       /* 0 = default (64) */
    int handshake_timeout_ms;     /* 0 = default (30 s); < 0 = none */
    /* In transmission: a connection that receives nothing for this long
     * while requests are in flight is killed (ETIMEDOUT), failing them. */
    int reply_timeout_ms;         /* 0 = default (NBD_REPLY_TIMEOUT_DEFAULT_MS); < 0 = none */
};
#define NBD_REPLY_TIMEOUT_DEFAULT_MS (300 * 1000)

/* Connects to uri and, unless opts->opt_mode, completes the handshake. */
struct nbd_conn *nbd_connect_uri(const char *uri, const struct nbd_conn_opts *opts);
struct nbd_conn *nbd_connect(const struct nbd_uri *uri, const struct nbd_conn_opts *opts);

/* Orderly close: waits for in-flight requests (giving up after 5 s without
 * progress: they then fail with ETIMEDOUT), sends DISC (or ABORT during
 * negotiation), half-closes, frees.  Keeps the caller's last error.
 * Accepts NULL. */
void nbd_close(struct nbd_conn *c);

/* Negotiation mode (opts.opt_mode). */
typedef int (*nbd_list_fn)(void *opaque, const char *name, const char *description);
typedef int (*nbd_context_fn)(void *opaque, const char *name);
int nbd_opt_list(struct nbd_conn *c, nbd_list_fn fn, void *opaque);
/* queries: NULL-terminated, NULL or empty = every context of the export. */
int nbd_opt_list_meta_context(struct nbd_conn *c, const char *export_name,
                              const char *const *queries, nbd_context_fn fn, void *opaque);
struct nbd_export_info {
    uint64_t size;
    uint16_t flags;               /* transmission flags */
    bool has_block_size;
    uint32_t min_block, pref_block, max_block;
    char *name;                   /* canonical name, or NULL */
    char *description;            /* or NULL */
};
/* OPT_INFO about an export; fills *info (free with nbd_export_info_clear). */
int nbd_opt_info(struct nbd_conn *c, const char *export_name, struct nbd_export_info *info);
void nbd_export_info_clear(struct nbd_export_info *info);
/* SET_META_CONTEXT (opts.meta_contexts) + GO for the URI's export.  After
 * success the connection is in transmission. */
int nbd_opt_go(struct nbd_conn *c);
/* Send ABORT and close the negotiation (the handle stays to be closed). */
int nbd_opt_abort(struct nbd_conn *c);

/* ---- What was negotiated ------------------------------------------------ */

uint64_t nbd_get_size(const struct nbd_conn *c);
uint16_t nbd_get_flags(const struct nbd_conn *c);
bool nbd_can(const struct nbd_conn *c, uint16_t transmission_flag); /* with libnbd's masking */
void nbd_get_block_size(const struct nbd_conn *c, uint32_t *min, uint32_t *pref, uint32_t *max);
bool nbd_has_block_size(const struct nbd_conn *c); /* the server advertised it */
const char *nbd_get_protocol(const struct nbd_conn *c); /* "newstyle-fixed", "newstyle", "oldstyle" */
bool nbd_is_tls(const struct nbd_conn *c);
bool nbd_is_structured(const struct nbd_conn *c);
bool nbd_is_extended(const struct nbd_conn *c);
const char *nbd_get_export_name(const struct nbd_conn *c);
const char *nbd_get_description(const struct nbd_conn *c); /* or NULL */
const char *nbd_get_canonical_name(const struct nbd_conn *c); /* or NULL */
/* The contexts the server selected (SET_META_CONTEXT replies). */
size_t nbd_context_count(const struct nbd_conn *c);
const char *nbd_context_name(const struct nbd_conn *c, size_t i);
bool nbd_has_context(const struct nbd_conn *c, const char *name);
/* The largest READ/WRITE payload the library will send in one request:
 * 256 KiB (or the server's preferred block size if larger), never over the
 * server's maximum. */
uint32_t nbd_max_request(const struct nbd_conn *c);

/* ---- Transmission: asynchronous ---------------------------------------- */

/* Completion: err is 0 or an errno.  Called exactly once for every request
 * that was accepted (submit returned 0), from nbd_poll / nbd_step. */
typedef void (*nbd_done_fn)(void *opaque, int err);

struct nbd_extent { uint64_t length; uint64_t flags; };
/* Extents of one context starting at offset, already checked: each length
 * is > 0 and together they stay within the request.  Return -1 to fail the
 * request (with nbd_set_error-style errno EIO). */
typedef int (*nbd_extent_fn)(void *opaque, const char *context, uint64_t offset,
                             const struct nbd_extent *e, size_t n);

/* Requests larger than nbd_max_request() are split by the library and
 * complete once, when every piece has.  flags are NBD_CMD_FLAG_*; a flag the
 * server did not advertise fails the submit with EINVAL. */
int nbd_aio_pread(struct nbd_conn *c, void *buf, uint64_t count, uint64_t offset,
                  uint32_t flags, nbd_done_fn done, void *opaque);
int nbd_aio_pwrite(struct nbd_conn *c, const void *buf, uint64_t count, uint64_t offset,
                   uint32_t flags, nbd_done_fn done, void *opaque);
int nbd_aio_flush(struct nbd_conn *c, uint32_t flags, nbd_done_fn done, void *opaque);
int nbd_aio_trim(struct nbd_conn *c, uint64_t count, uint64_t offset, uint32_t flags,
                 nbd_done_fn done, void *opaque);
int nbd_aio_zero(struct nbd_conn *c, uint64_t count, uint64_t offset, uint32_t flags,
                 nbd_done_fn done, void *opaque);
int nbd_aio_cache(struct nbd_conn *c, uint64_t count, uint64_t offset, uint32_t flags,
                  nbd_done_fn done, void *opaque);
/* One BLOCK_STATUS request.  context: when not NULL and the server offers
 * the payload filter, only that context is asked for; extents of other
 * contexts are dropped either way when context is not NULL. */
int nbd_aio_block_status(struct nbd_conn *c, uint64_t count, uint64_t offset, uint32_t flags,
                         const char *context, nbd_extent_fn fn, void *fn_opaque,
                         nbd_done_fn done, void *opaque);

/* Requests submitted and not yet completed. */
unsigned nbd_in_flight(const struct nbd_conn *c);
/* Whether submitting now would exceed max_in_flight (the caller should step). */
bool nbd_busy(const struct nbd_conn *c);
/* Runs the connection: sends queued requests, reads replies, calls
 * completions.  Waits at most timeout_ms (-1 = until something happens).
 * Returns -1 when the connection is dead (every in-flight request has then
 * completed with an error), else 0. */
int nbd_poll(struct nbd_conn *c, int timeout_ms);
/* For callers that poll many connections themselves. */
int nbd_get_fd(const struct nbd_conn *c);
short nbd_want_events(const struct nbd_conn *c); /* POLLIN / POLLOUT */
int nbd_step(struct nbd_conn *c, short revents);
bool nbd_is_dead(const struct nbd_conn *c);

/* ---- Transmission: synchronous (built on the above) --------------------- */

int nbd_pread(struct nbd_conn *c, void *buf, uint64_t count, uint64_t offset, uint32_t flags);
int nbd_pwrite(struct nbd_conn *c, const void *buf, uint64_t count, uint64_t offset, uint32_t flags);
int nbd_flush(struct nbd_conn *c, uint32_t flags);
int nbd_trim(struct nbd_conn *c, uint64_t count, uint64_t offset, uint32_t flags);
int nbd_zero(struct nbd_conn *c, uint64_t count, uint64_t offset, uint32_t flags);
int nbd_cache(struct nbd_conn *c, uint64_t count, uint64_t offset, uint32_t flags);

/* Walks [offset, offset+length) of one negotiated context, looping over
 * short answers and past 4 GiB, and hands fn consecutive extents that cover
 * the range exactly: over-long extents are clipped, an unaligned end is
 * rounded down to the minimum block size (or, for a lone short block at the
 * export's end, kept).  Adjacent extents with the same flags are merged
 * when merge is true. */
int nbd_block_status_walk(struct nbd_conn *c, const char *context, uint64_t offset,
                          uint64_t length, bool merge, nbd_extent_fn fn, void *opaque);

/* ---- Multi-conn pool ---------------------------------------------------- */

struct nbd_pool;
/* Opens one connection; when the server advertises CAN_MULTI_CONN opens
 * n - 1 more to the same export, otherwise stays at one (with a deeper
 * pipeline). */
struct nbd_pool *nbd_pool_open(const char *uri, const struct nbd_conn_opts *opts, unsigned n);
unsigned nbd_pool_size(const struct nbd_pool *p);
struct nbd_conn *nbd_pool_conn(struct nbd_pool *p, unsigned i);
/* For callers' own aio requests: the live connection with the fewest
 * requests in flight (NULL when every one is dead), and the requests in
 * flight over all of them. */
struct nbd_conn *nbd_pool_pick(struct nbd_pool *p);
unsigned nbd_pool_in_flight(struct nbd_pool *p);
/* Split over every connection, many requests in flight, driven from the
 * calling thread. */
int nbd_pool_pread(struct nbd_pool *p, void *buf, uint64_t count, uint64_t offset);
int nbd_pool_pwrite(struct nbd_pool *p, const void *buf, uint64_t count, uint64_t offset);
/* FLUSH on one connection once every write on every connection has been
 * answered (the multi-conn consistency rule). */
int nbd_pool_flush(struct nbd_pool *p);
void nbd_pool_close(struct nbd_pool *p);
/* For callers that drive the pool's connections with their own aio
 * requests: waits until a connection can make progress, extra_fd (when
 * >= 0) is readable, or timeout_ms passes, then runs the connections.
 * Returns 1 when extra_fd is readable, else 0; -1 on a poll failure (a
 * dead connection is not a failure here: its requests complete with
 * errors). */
int nbd_pool_poll(struct nbd_pool *p, int extra_fd, int timeout_ms);

/* ---- Server engine --------------------------------------------------------
 * Fixed-newstyle NBD server: every option (STARTTLS with X.509 or PSK,
 * INFO/GO, structured replies, extended headers, metadata contexts, LIST),
 * READ / BLOCK_STATUS / CACHE / FLUSH / DISC, writes refused with EPERM on a
 * read-only export.  One thread per connection.  What an export holds comes
 * from callbacks: the engine knows nothing about backups. */

struct nbd_server_export {
    void *handle;                 /* passed to every callback */
    uint64_t size;
    uint16_t flags;               /* NBD_FLAG_READ_ONLY, NBD_FLAG_CAN_MULTI_CONN, ... */
    const char *description;      /* or NULL; valid until close */
    size_t ncontexts;
    const char *const *contexts;  /* metadata context names; valid until close */
    /* Fills buf[count] from offset.  Returns 0, 1 when the range reads as
     * zeroes (a hole is sent; buf may be left as is), or -errno. */
    int (*read)(void *handle, void *buf, uint64_t count, uint64_t offset);
    /* Extents of context ctx from offset, within length: fills at most max
     * (>= 1) entries and returns how many (>= 1), or -errno. */
    int (*block_status)(void *handle, size_t ctx, uint64_t offset, uint64_t length,
                        struct nbd_extent *out, size_t max);
    void (*close)(void *handle);
};

struct nbd_server_callbacks {
    void *opaque;
    /* Opens an export by name: 0 with *e filled, or -1 with errno ENOENT
     * when there is none (other errnos: a failure). */
    int (*open)(void *opaque, const char *name, struct nbd_server_export *e);
    /* Lists the exports: fn for each; fn returns -1 to stop. */
    int (*list)(void *opaque, int (*fn)(void *fnopaque, const char *name, const char *description),
                void *fnopaque);
};

struct nbd_server_opts {
    const char *socket_path;      /* a Unix socket, or ... */
    const char *listen;           /* ... HOST:PORT for TCP */
    const char *tls_certificates; /* X.509 directory: ca-cert.pem server-cert.pem server-key.pem */
    const char *tls_psk_file;     /* or PSK: "user:hexkey" lines */
    bool tls_verify_peer;         /* X.509: require and check client certificates */
    unsigned max_connections;     /* 0 = 64 */
    int handshake_timeout_ms;     /* 0 = 10 s */
    /* A connection with no request for this long is closed; 0 = 5 min,
     * -1 = never.  (When every slot is taken, a new client also evicts the
     * connection idle longest, if over a second.) */
    int idle_timeout_ms;
};

struct nbd_server;
struct nbd_server *nbd_server_new(const struct nbd_server_opts *o, const struct nbd_server_callbacks *cb);
/* Serves (nbd_server_new already listens) until nbd_server_stop; then
 * waits for every connection to end (their clients are disconnected). */
int nbd_server_run(struct nbd_server *s);
/* Async-signal-safe: makes nbd_server_run return. */
void nbd_server_stop(struct nbd_server *s);
void nbd_server_free(struct nbd_server *s);
/* Serves one connected socket in the calling thread (tests, fuzzing, inetd
 * style); takes ownership of fd. */
int nbd_server_serve_fd(struct nbd_server *s, int fd);

/* ---- Names for logs ----------------------------------------------------- */
const char *nbd_opt_name(uint32_t opt);
const char *nbd_rep_name(uint32_t rep);
const char *nbd_cmd_name(uint16_t cmd);
const char *nbd_reply_type_name(uint16_t type);
const char *nbd_err_name(uint32_t err);
/* NBD error number to errno and back (unknown -> EINVAL). */
int nbd_errno_from_wire(uint32_t err);
uint32_t nbd_errno_to_wire(int err);

#ifdef __cplusplus
}
#endif
#endif
