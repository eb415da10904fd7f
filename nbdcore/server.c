/* server.c: the NBD server engine.
 *
 * One thread per connection: a fixed-newstyle handshake under a time
 * limit (every option, STARTTLS with gnutls, INFO/GO, structured replies,
 * extended headers, metadata contexts), then a loop reading one request at
 * a time and answering it.  Clients are not trusted: every length is
 * capped, every string checked; a malformed or hostile request closes that
 * one connection and the server goes on serving everyone else.  When all
 * connection slots are taken, a new client evicts the connection that has
 * been idle longest - in its handshake, or between requests after GO - if
 * that is over a second (idle sockets cannot lock others out; connections
 * opened together by a multi-conn client do not evict each other).  A
 * connection with no request for idle_timeout_ms is closed.
 *
 * What an export holds comes from callbacks (struct nbd_server_callbacks).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "common/clock.h"
#include "internal.h"

#define DEFAULT_MAX_CONNECTIONS 64
#define DEFAULT_HANDSHAKE_MS 10000
#define DEFAULT_IDLE_MS (300 * 1000)
/* A handshake younger than this is not evicted: a client's handshake takes
 * milliseconds, and the connections a multi-conn client opens together
 * must not evict each other.  (A newcomer that finds no older handshake to
 * evict is refused instead.) */
#define EVICT_AFTER_S 1.0
#define MAX_OPTIONS 256               /* per connection */
#define MAX_QUERIES 256
#define MAX_SELECTED 64
#define MAX_READ (32u * 1024 * 1024)
#define MAX_WRITE_PAYLOAD (64u * 1024 * 1024)
/* QEMU's client refuses non-data chunks over 1000 bytes. */
#define MAX_STATUS_PAYLOAD 1000

struct sconn {
    struct nbd_server *srv;
    struct sconn *prev, *next;
    struct nbd_sock *sock;
    int fd;
    pthread_t tid;
    bool in_handshake;
    double started;
    /* In transmission: since when it waits for a request (ms of
     * CLOCK_MONOTONIC), or -1 while it serves one; read by the accepting
     * thread to choose whom to evict. */
    _Atomic int64_t idle_since_ms;
    bool evicted;                 /* under srv->lock */

    bool tls, structured, extended, no_zeroes;
    bool filter_logged;           /* the first payload filter was logged */
    /* The export in transmission. */
    struct nbd_server_export exp;
    bool have_exp;
    /* The last SET_META_CONTEXT: for which export, which contexts.  The
     * export is opened again by GO, and its list of contexts may have
     * changed meanwhile (a point pruned or added): the selection is kept
     * by name and mapped onto the export GO opened. */
    char *meta_export;
    size_t nsel;
    size_t sel[MAX_SELECTED];     /* context indices in exp (after GO) */
    uint32_t sel_id[MAX_SELECTED]; /* the ids the client was given */
    char *sel_name[MAX_SELECTED];
    uint8_t *buf;
    size_t bufcap;
};

struct nbd_server {
    struct nbd_server_opts o;
    struct nbd_server_callbacks cb;
    struct nbd_tls_server_creds *creds;
    int listen_fd;
    int stop_pipe[2];
    char *unix_path;
    dev_t unix_dev;               /* the socket file we made: removed at the end */
    ino_t unix_ino;               /* only if it is still ours */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct sconn *conns;
    unsigned nconns;
};

/* ---- Replies during the handshake ---------------------------------------- */

static int send_rep(struct sconn *c, uint32_t opt, uint32_t rep, const void *payload, uint32_t len)
{
    struct nbd_wbuf b = { 0 };
    int r = nbd_encode_opt_reply(&b, opt, rep, payload, len);
    if (r == 0)
        r = nbd_sock_send_all(c->sock, b.data, b.len);
    nbd_wbuf_free(&b);
    return r;
}

static int send_err(struct sconn *c, uint32_t opt, uint32_t rep, const char *msg)
{
    return send_rep(c, opt, rep, msg, msg ? (uint32_t)strlen(msg) : 0);
}

/* The handshake's time limit, applied to every read and write. */
static int arm_deadline(struct sconn *c)
{
    int limit = c->srv->o.handshake_timeout_ms;
    int left = (int)(limit - (clock_mono_s() - c->started) * 1000);
    if (left <= 0) {
        nbd_set_error(ETIMEDOUT, "handshake took longer than %d ms", limit);
        return -1;
    }
    nbd_sock_set_timeout(c->sock, left);
    return 0;
}

static void close_export(struct sconn *c)
{
    if (c->have_exp && c->exp.close)
        c->exp.close(c->exp.handle);
    c->have_exp = false;
}

static void clear_selection(struct sconn *c)
{
    for (size_t k = 0; k < c->nsel; k++)
        free(c->sel_name[k]);
    c->nsel = 0;
}

static void forget_state(struct sconn *c)
{
    c->structured = c->extended = false;
    free(c->meta_export);
    c->meta_export = NULL;
    clear_selection(c);
}

/* Maps the selection onto the export GO opened: a context it no longer
 * offers is dropped (never answered for with another one's extents). */
static void map_selection(struct sconn *c, const struct nbd_server_export *e)
{
    size_t m = 0;
    for (size_t k = 0; k < c->nsel; k++) {
        size_t i;
        for (i = 0; i < e->ncontexts && strcmp(e->contexts[i], c->sel_name[k]); i++)
            ;
        if (i == e->ncontexts) {
            free(c->sel_name[k]);
            continue;
        }
        c->sel[m] = i;
        c->sel_id[m] = c->sel_id[k];
        c->sel_name[m] = c->sel_name[k];
        m++;
    }
    c->nsel = m;
}

/* Opens an export for a moment (INFO, LIST_META_CONTEXT). */
static int peek_export(struct sconn *c, const char *name, struct nbd_server_export *e)
{
    memset(e, 0, sizeof *e);
    return c->srv->cb.open(c->srv->cb.opaque, name, e);
}

static void unpeek(struct nbd_server_export *e)
{
    if (e->close)
        e->close(e->handle);
}

static uint16_t export_flags(const struct sconn *c, const struct nbd_server_export *e)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_CACHE | e->flags;
    if (c->structured)
        f |= NBD_FLAG_SEND_DF;
    if (c->extended)
        f |= NBD_FLAG_BLOCK_STAT_PAYLOAD;
    if (c->srv->o.max_connections == 1)
        f &= (uint16_t)~NBD_FLAG_CAN_MULTI_CONN; /* a second connection would be refused */
    return f;
}

/* INFO and GO: name, requested information, the export's description. */
static int opt_info(struct sconn *c, uint32_t opt, const uint8_t *d, uint32_t len, bool *go)
{
    uint32_t namelen;
    uint16_t n;
    char name[NBD_MAX_STRING + 1];
    bool want_name = false, want_desc = false;
    struct nbd_server_export e;

    if (len < 6 || (namelen = nbd_get32(d)) > len - 6 || namelen > NBD_MAX_STRING)
        return send_err(c, opt, NBD_REP_ERR_INVALID, "malformed request");
    n = nbd_get16(d + 4 + namelen);
    if (len != 4 + namelen + 2 + 2u * n)
        return send_err(c, opt, NBD_REP_ERR_INVALID, "malformed request");
    if (memchr(d + 4, 0, namelen))
        return send_err(c, opt, NBD_REP_ERR_INVALID, "export name contains a NUL byte");
    memcpy(name, d + 4, namelen);
    name[namelen] = 0;
    for (uint16_t i = 0; i < n; i++) {
        uint16_t t = nbd_get16(d + 4 + namelen + 2 + 2 * i);
        want_name |= t == NBD_INFO_NAME;
        want_desc |= t == NBD_INFO_DESCRIPTION;
    }
    if (peek_export(c, name, &e) < 0) {
        if (errno == ENOENT)
            return send_err(c, opt, NBD_REP_ERR_UNKNOWN, "no such export");
        return send_err(c, opt, NBD_REP_ERR_INVALID, "cannot open the export");
    }
    uint8_t info[14];
    int r;
    nbd_put16(info, NBD_INFO_EXPORT);
    nbd_put64(info + 2, e.size);
    nbd_put16(info + 10, export_flags(c, &e));
    r = send_rep(c, opt, NBD_REP_INFO, info, 12);
    if (r == 0 && want_name) {
        uint8_t *p = malloc(2 + namelen);
        if (!p) {
            r = -1;
        } else {
            nbd_put16(p, NBD_INFO_NAME);
            memcpy(p + 2, name, namelen);
            r = send_rep(c, opt, NBD_REP_INFO, p, 2 + namelen);
            free(p);
        }
    }
    if (r == 0 && want_desc && e.description) {
        size_t dl = strnlen(e.description, NBD_MAX_STRING);
        uint8_t *p = malloc(2 + dl);
        if (!p) {
            r = -1;
        } else {
            nbd_put16(p, NBD_INFO_DESCRIPTION);
            memcpy(p + 2, e.description, dl);
            r = send_rep(c, opt, NBD_REP_INFO, p, (uint32_t)(2 + dl));
            free(p);
        }
    }
    if (r == 0) {
        nbd_put16(info, NBD_INFO_BLOCK_SIZE);
        nbd_put32(info + 2, 1);
        nbd_put32(info + 6, 4096);
        nbd_put32(info + 10, MAX_READ);
        r = send_rep(c, opt, NBD_REP_INFO, info, 14);
    }
    if (r == 0)
        r = send_rep(c, opt, NBD_REP_ACK, NULL, 0);
    if (r < 0 || opt != NBD_OPT_GO) {
        unpeek(&e);
        return r;
    }
    /* GO: the export is ours until the end. */
    if (c->meta_export && strcmp(c->meta_export, name))
        clear_selection(c); /* contexts chosen for another export do not apply */
    else
        map_selection(c, &e);
    c->exp = e;
    c->have_exp = true;
    *go = true;
    return 0;
}

static bool query_matches(const char *q, size_t qlen, const char *name, bool list)
{
    size_t nlen = strlen(name);
    if (list && qlen && q[qlen - 1] == ':')
        return nlen >= qlen && !memcmp(q, name, qlen); /* "base:", "qemu:", "qemu:dirty-bitmap:" */
    return nlen == qlen && !memcmp(q, name, qlen);
}

static int opt_meta(struct sconn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
    bool list = opt == NBD_OPT_LIST_META_CONTEXT;
    uint32_t namelen, nq, pos;
    char name[NBD_MAX_STRING + 1];
    struct nbd_server_export e;
    const uint8_t *q[MAX_QUERIES];
    uint32_t qlen[MAX_QUERIES];

    if (!list)
        clear_selection(c); /* SET replaces the selection, even when it fails */
    if (!c->structured)
        return send_err(c, opt, NBD_REP_ERR_INVALID, "structured replies first");
    if (len < 8 || (namelen = nbd_get32(d)) > len - 8 || namelen > NBD_MAX_STRING)
        return send_err(c, opt, NBD_REP_ERR_INVALID, "malformed request");
    if (memchr(d + 4, 0, namelen))
        return send_err(c, opt, NBD_REP_ERR_INVALID, "export name contains a NUL byte");
    memcpy(name, d + 4, namelen);
    name[namelen] = 0;
    nq = nbd_get32(d + 4 + namelen);
    if (nq > MAX_QUERIES)
        return send_err(c, opt, NBD_REP_ERR_TOO_BIG, "too many queries");
    pos = 8 + namelen;
    for (uint32_t i = 0; i < nq; i++) {
        if (len - pos < 4 || (qlen[i] = nbd_get32(d + pos)) > len - pos - 4 ||
            qlen[i] > NBD_MAX_STRING)
            return send_err(c, opt, NBD_REP_ERR_INVALID, "malformed query");
        q[i] = d + pos + 4;
        pos += 4 + qlen[i];
    }
    if (pos != len)
        return send_err(c, opt, NBD_REP_ERR_INVALID, "malformed request");
    if (peek_export(c, name, &e) < 0)
        return send_err(c, opt, errno == ENOENT ? NBD_REP_ERR_UNKNOWN : NBD_REP_ERR_INVALID,
                        "no such export");
    int r = 0;
    size_t nsel = 0, sel[MAX_SELECTED];
    for (size_t i = 0; i < e.ncontexts && r == 0; i++) {
        bool hit = list && nq == 0;
        for (uint32_t j = 0; j < nq && !hit; j++)
            hit = query_matches((const char *)q[j], qlen[j], e.contexts[i], list);
        if (!hit)
            continue;
        if (!list && nsel == MAX_SELECTED)
            break;
        size_t nl = strnlen(e.contexts[i], NBD_MAX_STRING);
        uint8_t *p = malloc(4 + nl);
        if (!p) {
            r = -1;
            break;
        }
        nbd_put32(p, list ? 0 : (uint32_t)(i + 1));
        memcpy(p + 4, e.contexts[i], nl);
        r = send_rep(c, opt, NBD_REP_META_CONTEXT, p, (uint32_t)(4 + nl));
        free(p);
        if (!list)
            sel[nsel++] = i;
    }
    if (r < 0) {
        unpeek(&e);
        return -1;
    }
    if (!list) {
        free(c->meta_export);
        if (!(c->meta_export = strdup(name))) {
            unpeek(&e);
            return -1;
        }
        for (size_t k = 0; k < nsel; k++) {
            if (!(c->sel_name[k] = strdup(e.contexts[sel[k]]))) {
                unpeek(&e);
                return -1;
            }
            c->sel[k] = sel[k];
            c->sel_id[k] = (uint32_t)(sel[k] + 1);
            c->nsel = k + 1;
        }
    }
    unpeek(&e);
    return send_rep(c, opt, NBD_REP_ACK, NULL, 0);
}

struct rep_server_ctx {
    struct sconn *c;
    int r;
};

static int list_one(void *opaque, const char *name, const char *desc)
{
    struct rep_server_ctx *l = opaque;
    size_t nl = strnlen(name, NBD_MAX_STRING), dl = desc ? strnlen(desc, NBD_MAX_STRING) : 0;
    uint8_t *p = malloc(4 + nl + dl);
    if (!p)
        return l->r = -1;
    nbd_put32(p, (uint32_t)nl);
    memcpy(p + 4, name, nl);
    if (dl)
        memcpy(p + 4 + nl, desc, dl);
    l->r = send_rep(l->c, NBD_OPT_LIST, NBD_REP_SERVER, p, (uint32_t)(4 + nl + dl));
    free(p);
    return l->r;
}

/* Returns 1 when transmission starts, 0 to go on, -1 to close. */
static int handle_option(struct sconn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
    bool need_tls = c->srv->creds && !c->tls;
    bool go = false;

    if (need_tls && opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT) {
        if (opt == NBD_OPT_EXPORT_NAME) {
            nbd_set_error(EACCES, "NBD_OPT_EXPORT_NAME before STARTTLS");
            return -1;
        }
        return send_err(c, opt, NBD_REP_ERR_TLS_REQD, "TLS is required") < 0 ? -1 : 0;
    }
    switch (opt) {
    case NBD_OPT_EXPORT_NAME: {
        char name[NBD_MAX_STRING + 1];
        struct nbd_server_export e;
        if (len > NBD_MAX_STRING || memchr(d, 0, len) || c->extended) {
            nbd_set_error(EINVAL, "bad NBD_OPT_EXPORT_NAME");
            return -1;
        }
        memcpy(name, d, len);
        name[len] = 0;
        if (peek_export(c, name, &e) < 0) {
            nbd_set_error(ENOENT, "no export \"%s\"", name);
            return -1; /* EXPORT_NAME cannot carry an error: close */
        }
        uint8_t rep[134] = { 0 };
        nbd_put64(rep, e.size);
        nbd_put16(rep + 8, export_flags(c, &e));
        c->exp = e;
        c->have_exp = true;
        clear_selection(c);
        if (nbd_sock_send_all(c->sock, rep, c->no_zeroes ? 10 : 134) < 0)
            return -1;
        return 1;
    }
    case NBD_OPT_ABORT:
        send_rep(c, opt, NBD_REP_ACK, NULL, 0);
        nbd_set_error(0, "client aborted");
        return -1;
    case NBD_OPT_LIST: {
        if (len)
            return send_err(c, opt, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data") < 0 ? -1 : 0;
        struct rep_server_ctx l = { c, 0 };
        if (c->srv->cb.list && c->srv->cb.list(c->srv->cb.opaque, list_one, &l) < 0 && l.r == 0)
            return send_err(c, opt, NBD_REP_ERR_INVALID, "cannot list exports") < 0 ? -1 : 0;
        if (l.r < 0)
            return -1;
        return send_rep(c, opt, NBD_REP_ACK, NULL, 0) < 0 ? -1 : 0;
    }
    case NBD_OPT_STARTTLS:
        if (!c->srv->creds)
            return send_err(c, opt, NBD_REP_ERR_POLICY, "TLS is not configured") < 0 ? -1 : 0;
        if (c->tls || len)
            return send_err(c, opt, NBD_REP_ERR_INVALID, "bad STARTTLS") < 0 ? -1 : 0;
        if (send_rep(c, opt, NBD_REP_ACK, NULL, 0) < 0)
            return -1;
        if (nbd_sock_starttls_server(c->sock, c->srv->creds) < 0)
            return -1;
        c->tls = true;
        forget_state(c);
        return 0;
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        if (opt_info(c, opt, d, len, &go) < 0)
            return -1;
        return go ? 1 : 0;
    case NBD_OPT_STRUCTURED_REPLY:
        if (len)
            return send_err(c, opt, NBD_REP_ERR_INVALID, "takes no data") < 0 ? -1 : 0;
        if (c->extended)
            return send_err(c, opt, NBD_REP_ERR_EXT_HEADER_REQD, "extended headers are on") < 0 ? -1 : 0;
        if (c->structured)
            return send_err(c, opt, NBD_REP_ERR_INVALID, "already negotiated") < 0 ? -1 : 0;
        c->structured = true;
        return send_rep(c, opt, NBD_REP_ACK, NULL, 0) < 0 ? -1 : 0;
    case NBD_OPT_EXTENDED_HEADERS:
        if (len)
            return send_err(c, opt, NBD_REP_ERR_INVALID, "takes no data") < 0 ? -1 : 0;
        if (c->extended)
            return send_err(c, opt, NBD_REP_ERR_INVALID, "already negotiated") < 0 ? -1 : 0;
        c->extended = c->structured = true;
        return send_rep(c, opt, NBD_REP_ACK, NULL, 0) < 0 ? -1 : 0;
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        return opt_meta(c, opt, d, len) < 0 ? -1 : 0;
    default:
        return send_err(c, opt, NBD_REP_ERR_UNSUP, "unsupported option") < 0 ? -1 : 0;
    }
}

static int handshake(struct sconn *c)
{
    uint8_t greet[18], cflags[4], hdr[16];

    nbd_encode_greeting(greet, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    if (arm_deadline(c) < 0 || nbd_sock_send_all(c->sock, greet, sizeof greet) < 0 ||
        arm_deadline(c) < 0 || nbd_sock_recv_all(c->sock, cflags, 4) < 0)
        return -1;
    uint32_t cf = nbd_get32(cflags);
    if (cf & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        nbd_set_error(EPROTO, "unknown client flags 0x%x", cf);
        return -1;
    }
    c->no_zeroes = cf & NBD_FLAG_C_NO_ZEROES;
    for (unsigned n = 0; n < MAX_OPTIONS; n++) {
        if (arm_deadline(c) < 0 || nbd_sock_recv_all(c->sock, hdr, sizeof hdr) < 0)
            return -1;
        if (nbd_get64(hdr) != NBD_NEW_VERSION) {
            nbd_set_error(EPROTO, "bad option magic");
            return -1;
        }
        uint32_t opt = nbd_get32(hdr + 8), len = nbd_get32(hdr + 12);
        if (len > NBD_MAX_OPT_DATA) {
            nbd_set_error(EPROTO, "option %u with %u bytes of data", opt, len);
            return -1;
        }
        uint8_t *d = malloc(len ? len : 1);
        if (!d)
            return -1;
        if (len && nbd_sock_recv_all(c->sock, d, len) < 0) {
            free(d);
            return -1;
        }
        if (!(cf & NBD_FLAG_C_FIXED_NEWSTYLE) && opt != NBD_OPT_EXPORT_NAME) {
            free(d);
            nbd_set_error(EPROTO, "option %u from a client without fixed newstyle", opt);
            return -1;
        }
        int r = handle_option(c, opt, d, len);
        free(d);
        if (r != 0)
            return r > 0 ? 0 : -1;
    }
    nbd_set_error(EPROTO, "more than %d options", MAX_OPTIONS);
    return -1;
}

/* ---- Transmission ------------------------------------------------------- */

static int send_simple(struct sconn *c, uint64_t cookie, int err)
{
    uint8_t h[16];
    nbd_encode_simple_reply(h, nbd_errno_to_wire(err), cookie);
    return nbd_sock_send_all(c->sock, h, 16);
}

static int send_chunk(struct sconn *c, uint16_t flags, uint16_t type, uint64_t cookie,
                      uint64_t offset, const void *payload, size_t len)
{
    uint8_t h[32];
    size_t n = nbd_encode_chunk_header(h, c->extended, flags, type, cookie, offset, len);
    return nbd_sock_send_all2(c->sock, h, n, payload, len);
}

static int send_error(struct sconn *c, uint64_t cookie, uint64_t offset, int err, const char *msg)
{
    if (!c->structured)
        return send_simple(c, cookie, err);
    uint8_t p[6 + 128];
    size_t ml = msg ? strnlen(msg, 128) : 0;
    nbd_put32(p, nbd_errno_to_wire(err));
    nbd_put16(p + 4, (uint16_t)ml);
    memcpy(p + 6, msg, ml);
    return send_chunk(c, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie, offset, p, 6 + ml);
}

/* A READ is served READ_PIECE bytes at a time, so that a connection never
 * holds more than that (64 clients asking 32 MiB each would otherwise pin
 * 2 GiB): with structured replies one data or hole chunk per piece; with
 * simple replies the header, then the pieces (a piece that fails after
 * the header has gone out can only be reported by hanging up).  A DF read
 * must fit one chunk: up to 64 KiB (the spec's minimum), else EOVERFLOW. */
#define READ_PIECE (1u << 20)
#define MAX_DF_READ 65536u

static int read_piece(struct sconn *c, uint64_t off, uint64_t len)
{
    if (len > c->bufcap) {
        uint8_t *b = realloc(c->buf, len);
        if (!b)
            return -ENOMEM;
        c->buf = b;
        c->bufcap = len;
    }
    int r = c->exp.read(c->exp.handle, c->buf, len, off);
    if (r == 1)
        memset(c->buf, 0, len);
    return r < 0 ? r : r == 1;
}

static int do_read(struct sconn *c, uint64_t cookie, uint16_t flags, uint64_t off, uint64_t len)
{
    bool df = flags & NBD_CMD_FLAG_DF;
    if (df && len > MAX_DF_READ)
        return send_error(c, cookie, off, EOVERFLOW, "DF read over 64 KiB");
    for (uint64_t pos = off, end = off + len; pos < end;) {
        uint64_t n = df ? len : end - pos < READ_PIECE ? end - pos : READ_PIECE;
        bool last = pos + n == end;
        int r = read_piece(c, pos, n);
        if (r < 0) {
            if (!c->structured && pos != off) {
                nbd_set_error(-r, "read at %llu failed after the reply header was sent",
                              (unsigned long long)pos);
                return -1;
            }
            return send_error(c, cookie, off, -r, "read failed");
        }
        if (!c->structured) {
            uint8_t h[16];
            nbd_encode_simple_reply(h, 0, cookie);
            if (nbd_sock_send_all2(c->sock, h, pos == off ? 16 : 0, c->buf, n) < 0)
                return -1;
        } else if (r == 1 && !df) {
            uint8_t p[12];
            nbd_put64(p, pos);
            nbd_put32(p + 8, (uint32_t)n);
            if (send_chunk(c, last ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_OFFSET_HOLE, cookie,
                           off, p, 12) < 0)
                return -1;
        } else {
            uint8_t h[32 + 8];
            size_t hl = nbd_encode_chunk_header(h, c->extended, last ? NBD_REPLY_FLAG_DONE : 0,
                                                NBD_REPLY_TYPE_OFFSET_DATA, cookie, off, 8 + n);
            nbd_put64(h + hl, pos);
            if (nbd_sock_send_all2(c->sock, h, hl + 8, c->buf, n) < 0)
                return -1;
        }
        pos += n;
    }
    return 0;
}

static int do_block_status(struct sconn *c, uint64_t cookie, uint16_t flags, uint64_t off,
                           uint64_t len, const uint8_t *payload, size_t plen)
{
    size_t ids[MAX_SELECTED], nids = 0;

    if (!c->nsel || !c->meta_export)
        return send_error(c, cookie, off, EINVAL, "no metadata context selected");
    if (payload) {
        /* The payload filter: an effect length and the ids wanted. */
        if (plen < 12 || (plen - 8) % 4)
            return send_error(c, cookie, off, EINVAL, "malformed block status payload");
        len = nbd_get64(payload);
        for (size_t i = 8; i < plen; i += 4) {
            uint32_t id = nbd_get32(payload + i);
            size_t k;
            for (k = 0; k < c->nsel && c->sel_id[k] != id; k++)
                ;
            if (k == c->nsel)
                return send_error(c, cookie, off, EINVAL, "unknown context id");
            for (size_t j = 0; j < nids; j++)
                if (ids[j] == k)
                    return send_error(c, cookie, off, EINVAL, "duplicate context id");
            if (nids == MAX_SELECTED)
                return send_error(c, cookie, off, EINVAL, "too many context ids");
            ids[nids++] = k;
        }
        if (!c->filter_logged) {
            c->filter_logged = true;
            nbd_debug("block status with a payload filter (%zu of %zu contexts)", nids, c->nsel);
        }
    } else {
        for (size_t k = 0; k < c->nsel; k++)
            ids[nids++] = k;
    }
    if (len == 0 || off > c->exp.size || len > c->exp.size - off)
        return send_error(c, cookie, off, EINVAL, "range outside the export");
    size_t per = c->extended ? (MAX_STATUS_PAYLOAD - 8) / 16 : (MAX_STATUS_PAYLOAD - 4) / 8;
    if (flags & NBD_CMD_FLAG_REQ_ONE)
        per = 1;
    struct nbd_extent ext[(MAX_STATUS_PAYLOAD - 4) / 8];
    uint8_t p[MAX_STATUS_PAYLOAD];

    for (size_t j = 0; j < nids; j++) {
        size_t ctx = c->sel[ids[j]];
        int n = c->exp.block_status(c->exp.handle, ctx, off, len, ext, per);
        if (n <= 0)
            return send_error(c, cookie, off, n < 0 ? -n : EIO, "block status failed");
        /* Clip to the request, keep lengths non-zero and within 32 bits
         * for compact replies. */
        size_t m = 0;
        uint64_t pos = off, end = off + len;
        for (int i = 0; i < n && pos < end; i++) {
            uint64_t l = ext[i].length;
            if (l == 0)
                break;
            if (l > end - pos)
                l = end - pos;
            if (!c->extended && l > UINT32_MAX)
                l = UINT32_MAX & ~(uint64_t)511;
            ext[m].length = l;
            ext[m].flags = ext[i].flags;
            m++;
            pos += l;
            if (!c->extended && l != ext[i].length && pos < end)
                break; /* shortened: the client asks again */
        }
        if (m == 0)
            return send_error(c, cookie, off, EIO, "block status failed");
        size_t pl;
        nbd_put32(p, c->sel_id[ids[j]]);
        if (c->extended) {
            nbd_put32(p + 4, (uint32_t)m);
            for (size_t i = 0; i < m; i++) {
                nbd_put64(p + 8 + 16 * i, ext[i].length);
                nbd_put64(p + 16 + 16 * i, ext[i].flags);
            }
            pl = 8 + 16 * m;
        } else {
            for (size_t i = 0; i < m; i++) {
                nbd_put32(p + 4 + 8 * i, (uint32_t)ext[i].length);
                nbd_put32(p + 8 + 8 * i, (uint32_t)ext[i].flags);
            }
            pl = 4 + 8 * m;
        }
        if (send_chunk(c, j + 1 == nids ? NBD_REPLY_FLAG_DONE : 0,
                       c->extended ? NBD_REPLY_TYPE_BLOCK_STATUS_EXT : NBD_REPLY_TYPE_BLOCK_STATUS,
                       cookie, off, p, pl) < 0)
            return -1;
    }
    return 0;
}

/* Reads and discards n bytes (a payload we refuse). */
static int discard(struct sconn *c, uint64_t n)
{
    uint8_t tmp[65536];
    while (n) {
        size_t k = n < sizeof tmp ? (size_t)n : sizeof tmp;
        if (nbd_sock_recv_all(c->sock, tmp, k) < 0)
            return -1;
        n -= k;
    }
    return 0;
}

static int transmission(struct sconn *c)
{
    uint8_t h[32];
    size_t hl = c->extended ? NBD_EXTENDED_REQUEST_LEN : NBD_REQUEST_LEN;
    const uint16_t known = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_DF |
                           NBD_CMD_FLAG_REQ_ONE | NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_PAYLOAD_LEN;

    int idle = c->srv->o.idle_timeout_ms;
    nbd_sock_set_timeout(c->sock, idle > 0 ? idle : 0);
    for (;;) {
        c->idle_since_ms = clock_mono_ms();
        if (nbd_sock_recv_all(c->sock, h, hl) < 0) {
            if (errno == ETIMEDOUT) {
                nbd_debug("closing a connection idle for %d ms", idle);
                return 0;
            }
            return errno == ECONNRESET ? 0 : -1; /* a client that just left */
        }
        c->idle_since_ms = -1;
        uint32_t magic = nbd_get32(h);
        if (magic != (c->extended ? NBD_EXTENDED_REQUEST_MAGIC : NBD_REQUEST_MAGIC)) {
            nbd_set_error(EPROTO, "bad request magic 0x%08x", magic);
            return -1;
        }
        uint16_t flags = nbd_get16(h + 4), type = nbd_get16(h + 6);
        uint64_t cookie = nbd_get64(h + 8), off = nbd_get64(h + 16);
        uint64_t len = c->extended ? nbd_get64(h + 24) : nbd_get32(h + 24);
        uint64_t plen = 0;
        if (c->extended ? (flags & NBD_CMD_FLAG_PAYLOAD_LEN) || type == NBD_CMD_WRITE
                        : type == NBD_CMD_WRITE)
            plen = len;
        if (plen > MAX_WRITE_PAYLOAD) {
            nbd_set_error(EPROTO, "request payload of %llu bytes", (unsigned long long)plen);
            return -1;
        }
        if (type == NBD_CMD_DISC)
            return 0;
        if ((flags & ~known) || ((flags & NBD_CMD_FLAG_PAYLOAD_LEN) && !c->extended) ||
            ((flags & NBD_CMD_FLAG_DF) && (type != NBD_CMD_READ || !c->structured)) ||
            ((flags & NBD_CMD_FLAG_REQ_ONE) && type != NBD_CMD_BLOCK_STATUS)) {
            if (discard(c, plen) < 0 || send_error(c, cookie, off, EINVAL, "bad flags") < 0)
                return -1;
            continue;
        }
        /* Only WRITE and the BLOCK_STATUS filter carry a payload: any other
         * is consumed and the request failed. */
        if (plen && type != NBD_CMD_WRITE && type != NBD_CMD_BLOCK_STATUS) {
            if (discard(c, plen) < 0 ||
                send_error(c, cookie, off, EINVAL, "unexpected payload") < 0)
                return -1;
            continue;
        }
        int r;
        switch (type) {
        case NBD_CMD_READ:
            if (len == 0 || len > MAX_READ || off > c->exp.size || len > c->exp.size - off)
                r = send_error(c, cookie, off, EINVAL, "bad read range");
            else
                r = do_read(c, cookie, flags, off, len);
            break;
        case NBD_CMD_WRITE:
        case NBD_CMD_TRIM:
        case NBD_CMD_WRITE_ZEROES:
            if (discard(c, plen) < 0)
                return -1;
            r = send_error(c, cookie, off, EPERM, "the export is read-only");
            break;
        case NBD_CMD_FLUSH:
            r = c->structured ? send_chunk(c, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, off, NULL, 0)
                              : send_simple(c, cookie, 0);
            break;
        case NBD_CMD_CACHE:
            if (off > c->exp.size || len > c->exp.size - off)
                r = send_error(c, cookie, off, EINVAL, "bad cache range");
            else
                r = c->structured ? send_chunk(c, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, off, NULL, 0)
                                  : send_simple(c, cookie, 0);
            break;
        case NBD_CMD_BLOCK_STATUS: {
            uint8_t *pl = NULL;
            if (plen) {
                if (plen > 8 + 4 * MAX_SELECTED) {
                    if (discard(c, plen) < 0)
                        return -1;
                    r = send_error(c, cookie, off, EINVAL, "block status payload too long");
                    break;
                }
                pl = malloc(plen);
                if (!pl || nbd_sock_recv_all(c->sock, pl, plen) < 0) {
                    free(pl);
                    return -1;
                }
            }
            if (!c->structured)
                r = send_simple(c, cookie, EINVAL);
            else
                r = do_block_status(c, cookie, flags, off, len, pl, plen);
            free(pl);
            break;
        }
        default:
            r = send_error(c, cookie, off, EINVAL, "unknown command");
            break;
        }
        if (r < 0)
            return -1;
    }
}

/* ---- Connections ---------------------------------------------------------- */


static void conn_run(struct sconn *c)
{
    if (handshake(c) == 0) {
        pthread_mutex_lock(&c->srv->lock);
        c->in_handshake = false;
        pthread_mutex_unlock(&c->srv->lock);
        if (transmission(c) < 0)
            nbd_debug("connection closed: %s", nbd_get_error());
    } else {
        nbd_debug("handshake ended: %s", nbd_get_error());
    }
    close_export(c);
    forget_state(c);
    free(c->buf);
    c->buf = NULL;
}

static void *conn_thread(void *opaque)
{
    struct sconn *c = opaque;

    pthread_setname_np(pthread_self(), "nbdvault-conn");
    struct nbd_server *s = c->srv;

    conn_run(c);
    pthread_mutex_lock(&s->lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    nbd_sock_close(c->sock);
    free(c);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static struct sconn *conn_new(struct nbd_server *s, int fd)
{
    struct sconn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->srv = s;
    c->fd = fd;
    c->in_handshake = true;
    c->started = clock_mono_s();
    c->idle_since_ms = -1;
    if (!(c->sock = nbd_sock_new(fd))) {
        free(c);
        return NULL;
    }
    return c;
}

int nbd_server_serve_fd(struct nbd_server *s, int fd)
{
    struct sconn *c = conn_new(s, fd);
    if (!c) {
        close(fd);
        return -1;
    }
    conn_run(c);
    nbd_sock_close(c->sock);
    free(c);
    return 0;
}

static int listen_unix(struct nbd_server *s, const char *path);
static int listen_tcp(const char *spec);

struct nbd_server *nbd_server_new(const struct nbd_server_opts *o, const struct nbd_server_callbacks *cb)
{
    struct nbd_server *s = calloc(1, sizeof *s);
    if (!s) {
        nbd_set_error(ENOMEM, "out of memory");
        return NULL;
    }
    s->o = *o;
    s->cb = *cb;
    s->listen_fd = -1;
    s->stop_pipe[0] = s->stop_pipe[1] = -1;
    if (!s->o.max_connections)
        s->o.max_connections = DEFAULT_MAX_CONNECTIONS;
    if (!s->o.handshake_timeout_ms)
        s->o.handshake_timeout_ms = DEFAULT_HANDSHAKE_MS;
    if (!s->o.idle_timeout_ms)
        s->o.idle_timeout_ms = DEFAULT_IDLE_MS;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (o->tls_certificates || o->tls_psk_file) {
        s->creds = nbd_tls_server_creds_load(o->tls_certificates, o->tls_psk_file, o->tls_verify_peer);
        if (!s->creds) {
            nbd_server_free(s);
            return NULL;
        }
    }
    if (pipe2(s->stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        nbd_set_error(errno, "pipe: %s", strerror(errno));
        nbd_server_free(s);
        return NULL;
    }
    /* Listening now, so that the caller can say so truthfully before
     * nbd_server_run (clients connecting early wait in the backlog). */
    if (o->socket_path || o->listen) {
        s->listen_fd = o->socket_path ? listen_unix(s, o->socket_path) : listen_tcp(o->listen);
        if (s->listen_fd < 0) {
            nbd_server_free(s);
            return NULL;
        }
    }
    return s;
}

void nbd_server_stop(struct nbd_server *s)
{
    char x = 1;
    if (write(s->stop_pipe[1], &x, 1) < 0) {
        /* already signalled */
    }
}

void nbd_server_free(struct nbd_server *s)
{
    if (!s)
        return;
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    struct stat st;
    if (s->unix_path && stat(s->unix_path, &st) == 0 && st.st_dev == s->unix_dev &&
        st.st_ino == s->unix_ino)
        unlink(s->unix_path); /* not another server's, made since */
    free(s->unix_path);
    for (int i = 0; i < 2; i++)
        if (s->stop_pipe[i] >= 0)
            close(s->stop_pipe[i]);
    nbd_tls_server_creds_free(s->creds);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}

static int listen_unix(struct nbd_server *s, const char *path)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    struct stat st;

    if (strlen(path) >= sizeof sun.sun_path) {
        nbd_set_error(ENAMETOOLONG, "socket path %s is too long", path);
        return -1;
    }
    strcpy(sun.sun_path, path);
    if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        /* A stale socket of an earlier run is replaced; a live one (a
         * server answers on it) is not taken over. */
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool live = probe >= 0 && connect(probe, (struct sockaddr *)&sun, sizeof sun) == 0;
        if (probe >= 0)
            close(probe);
        if (live) {
            nbd_set_error(EADDRINUSE, "listen on %s: a server is already running there", path);
            return -1;
        }
        unlink(path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof sun) < 0 || listen(fd, 128) < 0 ||
        stat(path, &st) < 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        nbd_set_error(err, "listen on %s: %s", path, strerror(err));
        return -1;
    }
    s->unix_path = strdup(path);
    s->unix_dev = st.st_dev;
    s->unix_ino = st.st_ino;
    return fd;
}

static int listen_tcp(const char *spec)
{
    char host[256];
    const char *port;
    const char *colon = strrchr(spec, ':');

    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof host) {
        nbd_set_error(EINVAL, "listen address \"%s\" is not HOST:PORT", spec);
        return -1;
    }
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = 0;
    port = colon + 1;
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = 0;
    }
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
    struct addrinfo *res;
    int r = getaddrinfo(host, port, &hints, &res);
    if (r) {
        nbd_set_error(EINVAL, "listen address %s: %s", spec, gai_strerror(r));
        return -1;
    }
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol), one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 128) < 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        nbd_set_error(err, "listen on %s: %s", spec, strerror(err));
        return -1;
    }
    freeaddrinfo(res);
    return fd;
}

/* All slots taken: the oldest connection still in its handshake, if it
 * has been there for EVICT_AFTER_S, makes room (its thread sees its socket
 * shut down). */
static bool evict_one(struct nbd_server *s)
{
    struct sconn *old = NULL;
    int64_t oldest = 0, now = clock_mono_ms(), limit = now - (int64_t)(EVICT_AFTER_S * 1000);
    double now_wall = clock_mono_s();
    for (struct sconn *c = s->conns; c; c = c->next) {
        int64_t since;
        if (c->evicted)
            continue;
        if (c->in_handshake)
            since = now - (int64_t)((now_wall - c->started) * 1000);
        else if ((since = c->idle_since_ms) < 0)
            continue;   /* serving a request */
        if (since <= limit && (!old || since < oldest)) {
            old = c;
            oldest = since;
        }
    }
    if (!old)
        return false;
    nbd_debug("evicting the connection idle for %lld ms to make room",
              (long long)(now - oldest));
    shutdown(old->fd, SHUT_RDWR);
    old->evicted = true; /* do not pick it twice */
    return true;
}

int nbd_server_run(struct nbd_server *s)
{
    if (s->listen_fd < 0) {
        nbd_set_error(EINVAL, "nowhere to listen");
        return -1;
    }

    for (;;) {
        struct pollfd p[2] = { { s->listen_fd, POLLIN, 0 }, { s->stop_pipe[0], POLLIN, 0 } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            nbd_set_error(errno, "poll: %s", strerror(errno));
            break;
        }
        if (p[1].revents)
            break;
        if (!(p[0].revents & POLLIN))
            continue;
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_mutex_lock(&s->lock);
        if (s->nconns >= s->o.max_connections && !evict_one(s)) {
            pthread_mutex_unlock(&s->lock);
            close(fd); /* every slot serves a client */
            continue;
        }
        struct sconn *c = conn_new(s, fd);
        if (!c) {
            pthread_mutex_unlock(&s->lock);
            close(fd);
            continue;
        }
        c->next = s->conns;
        if (s->conns)
            s->conns->prev = c;
        s->conns = c;
        s->nconns++;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&c->tid, &attr, conn_thread, c) != 0) {
            s->conns = c->next;
            if (c->next)
                c->next->prev = NULL;
            s->nconns--;
            nbd_sock_close(c->sock);
            free(c);
        }
        pthread_attr_destroy(&attr);
        pthread_mutex_unlock(&s->lock);
    }

    /* Stopping: disconnect everyone, wait for their threads. */
    close(s->listen_fd);
    s->listen_fd = -1;
    pthread_mutex_lock(&s->lock);
    for (struct sconn *c = s->conns; c; c = c->next)
        shutdown(c->fd, SHUT_RDWR);
    while (s->nconns)
        pthread_cond_wait(&s->cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
    return 0;
}
