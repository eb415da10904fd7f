/* client.c: the NBD client's transmission phase.
 *
 * Requests are queued, encoded into an output staging buffer (headers and
 * small payloads gathered so that many requests leave in one send), and
 * matched to replies by cookie.  Large WRITE payloads go straight from the
 * caller's memory and large READ data straight into it.  The receive side
 * is a small state machine fed either from the socket (nbd_step) or from a
 * buffer (nbd_rx_feed, for the fuzzer): it never trusts the server, and any
 * violation kills the connection and fails every request in flight.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "common/clock.h"
#include "internal.h"

#define OBUF_SIZE (64 * 1024)
#define IBUF_SIZE (64 * 1024)
/* Reads from this size up are received straight into their buffers (see
 * receive()). */
#define BIG_READ (16 * 1024)
#define SMALL_PAYLOAD 4096
#define DEFAULT_MAX_IN_FLIGHT 64
#define MAX_PORTABLE_REQUEST (32u * 1024 * 1024)
/* READ and WRITE are sent in requests of at most this much (unless the
 * server prefers larger blocks).  QEMU's NBD server (qemu-nbd, a VM's
 * pull-mode export) allocates a buffer for every request: from 1 MiB up a
 * fresh qemu-nbd maps and faults in new memory for nearly each one (300,000
 * page faults and 5 CPU-seconds for a 2 GiB read on a 2-vCPU VM, more than
 * the copy); at 256 KiB, nbdcopy's default, it reuses its memory. */
#define REQUEST_SIZE (256u * 1024)
/* TRIM / WRITE_ZEROES / BLOCK_STATUS need no payload; QEMU < 5.1 mishandled
 * lengths over 2 GiB, so pieces stay at 1 GiB. */
#define MAX_EFFECT_REQUEST (1u << 30)

/* One user-level operation: may be split into several requests. */
struct op {
    nbd_done_fn done;
    void *opaque;
    nbd_extent_fn extent_fn;
    void *extent_opaque;
    int64_t context_index;        /* block status: only this context (-1: all) */
    unsigned pending;             /* requests not yet answered */
    int err;
    char errmsg[400];
};

enum rx_state {
    RX_HDR,           /* the first bytes of a reply header */
    RX_HDR_REST,      /* the rest of a structured (20-byte) header */
    RX_SIMPLE_DATA,   /* READ data after a simple reply */
    RX_DATA_OFFSET,   /* the 8-byte offset of an OFFSET_DATA chunk */
    RX_DATA,          /* its data, into the request's buffer */
    RX_PAYLOAD,       /* any other chunk payload, into rx_payload */
};

/* ---- Connection lifecycle ------------------------------------------------ */

static void free_contexts(struct nbd_conn *c)
{
    for (size_t i = 0; i < c->ncontexts; i++)
        free(c->contexts[i].name);
    free(c->contexts);
    c->contexts = NULL;
    c->ncontexts = 0;
}

static void conn_free(struct nbd_conn *c)
{
    if (!c)
        return;
    nbd_transmission_free(c);
    nbd_sock_close(c->sock);
    nbd_uri_clear(&c->uri);
    free(c->uri_string);
    if (c->want_contexts)
        for (char **p = c->want_contexts; *p; p++)
            free(*p);
    free(c->want_contexts);
    free(c->canonical_name);
    free(c->description);
    free_contexts(c);
    free(c);
}

static char **dup_strv(const char *const *v)
{
    size_t n = 0;
    char **r;

    while (v && v[n])
        n++;
    r = calloc(n + 1, sizeof *r);
    if (!r)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (!(r[i] = strdup(v[i]))) {
            for (size_t j = 0; j < i; j++)
                free(r[j]);
            free(r);
            return NULL;
        }
    }
    return r;
}

static char *dup_uri_field(const char *s)
{
    return s ? strdup(s) : NULL;
}

static struct nbd_conn *conn_new(const struct nbd_uri *u, const struct nbd_conn_opts *opts)
{
    struct nbd_conn *c = calloc(1, sizeof *c);

    if (!c) {
        nbd_set_error(ENOMEM, "out of memory");
        return NULL;
    }
    if (opts)
        c->opts = *opts;
    c->opts.meta_contexts = NULL;
    c->want_contexts = dup_strv(opts ? opts->meta_contexts : NULL);
    c->uri = (struct nbd_uri){
        .tls = u->tls,
        .transport = u->transport,
        .user = dup_uri_field(u->user),
        .host = dup_uri_field(u->host),
        .port = dup_uri_field(u->port),
        .socket = dup_uri_field(u->socket),
        .export_name = strdup(u->export_name ? u->export_name : ""),
        .tls_certificates = dup_uri_field(u->tls_certificates),
        .tls_psk_file = dup_uri_field(u->tls_psk_file),
        .tls_hostname = dup_uri_field(u->tls_hostname),
        .tls_verify_peer = u->tls_verify_peer,
    };
    c->protocol = "newstyle-fixed";
    c->mode = NBD_MODE_SIMPLE;
    if (!c->want_contexts || !c->uri.export_name) {
        conn_free(c);
        nbd_set_error(ENOMEM, "out of memory");
        return NULL;
    }
    return c;
}

struct nbd_conn *nbd_connect(const struct nbd_uri *u, const struct nbd_conn_opts *opts)
{
    struct nbd_conn *c = conn_new(u, opts);

    if (!c)
        return NULL;
    if (nbd_handshake_start(c) < 0)
        goto fail;
    if (!c->opts.opt_mode && !c->in_transmission && nbd_opt_go(c) < 0)
        goto fail;
    return c;
fail:;
    int err = nbd_get_errno();
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", nbd_get_error());
    if (c->sock && !c->in_transmission && !c->negotiation_over && c->fixed)
        nbd_handshake_abort(c);
    conn_free(c);
    nbd_set_error(err ? err : EIO, "%s", msg);
    return NULL;
}

struct nbd_conn *nbd_connect_uri(const char *uri, const struct nbd_conn_opts *opts)
{
    struct nbd_uri u;
    struct nbd_conn *c;

    if (nbd_uri_parse(uri, &u) < 0)
        return NULL;
    c = nbd_connect(&u, opts);
    nbd_uri_clear(&u);
    return c;
}

/* Waits for the requests in flight to be answered, for as long as the
 * server makes progress (an answer, or bytes of one): a server that stays
 * silent for CLOSE_WAIT_MS is given up on, and its requests fail. */
#define CLOSE_WAIT_MS 5000

static void close_drain(struct nbd_conn *c)
{
    int64_t deadline = clock_mono_ms() + CLOSE_WAIT_MS;
    unsigned ops = c->ops_in_flight;
    uint64_t rx_left = c->rx_left;
    size_t ipos = c->ipos, ilen = c->ilen;

    while (!c->dead && c->ops_in_flight) {
        int64_t left = deadline - clock_mono_ms();

        if (left <= 0) {
            nbd_conn_kill(c, ETIMEDOUT, "close: %u request%s unanswered, the server silent "
                          "for %d s", c->ops_in_flight, c->ops_in_flight == 1 ? "" : "s",
                          CLOSE_WAIT_MS / 1000);
            return;
        }
        if (nbd_poll(c, (int)left) < 0)
            return;
        if (c->ops_in_flight != ops || c->rx_left != rx_left || c->ipos != ipos || c->ilen != ilen) {
            deadline = clock_mono_ms() + CLOSE_WAIT_MS;
            ops = c->ops_in_flight;
            rx_left = c->rx_left;
            ipos = c->ipos;
            ilen = c->ilen;
        }
    }
}

void nbd_close(struct nbd_conn *c)
{
    if (!c)
        return;
    /* A destructor: the caller's last error survives it. */
    int err = error_errno();
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", error_msg());

    if (c->in_transmission && c->sock && !c->dead) {
        /* Finish what is in flight, then DISC and half-close. */
        close_drain(c);
        if (!c->dead) {
            uint8_t hdr[32];
            size_t n = nbd_encode_request(hdr, c->extended, 0, NBD_CMD_DISC, c->next_cookie++, 0, 0);
            int fl = fcntl(nbd_sock_fd(c->sock), F_GETFL);
            fcntl(nbd_sock_fd(c->sock), F_SETFL, fl & ~O_NONBLOCK);
            nbd_sock_set_timeout(c->sock, 2000);
            if (nbd_sock_send_all(c->sock, hdr, n) == 0) {
                nbd_sock_shutdown_write(c->sock);
                uint8_t drain[512];
                for (int i = 0; i < 64; i++)
                    if (nbd_sock_recv(c->sock, drain, sizeof drain) <= 0)
                        break;
            }
        }
    } else if (c->sock && !c->in_transmission && !c->negotiation_over && c->fixed) {
        nbd_handshake_abort(c);
    }
    conn_free(c);
    error_set(err, "%s", err || strcmp(msg, "no error") ? msg : "");
}

/* ---- Getters ---------------------------------------------------------------- */

uint64_t nbd_get_size(const struct nbd_conn *c) { return c->size; }
uint16_t nbd_get_flags(const struct nbd_conn *c) { return c->eflags; }
bool nbd_has_block_size(const struct nbd_conn *c) { return c->has_block_size; }
const char *nbd_get_protocol(const struct nbd_conn *c) { return c->protocol; }
bool nbd_is_tls(const struct nbd_conn *c) { return c->tls; }
bool nbd_is_structured(const struct nbd_conn *c) { return c->structured; }
bool nbd_is_extended(const struct nbd_conn *c) { return c->extended; }
const char *nbd_get_export_name(const struct nbd_conn *c) { return c->uri.export_name; }
const char *nbd_get_description(const struct nbd_conn *c) { return c->description; }
const char *nbd_get_canonical_name(const struct nbd_conn *c) { return c->canonical_name; }
size_t nbd_context_count(const struct nbd_conn *c) { return c->ncontexts; }
uint32_t nbd_max_request(const struct nbd_conn *c) { return c->max_request; }
bool nbd_is_dead(const struct nbd_conn *c) { return c->dead; }
unsigned nbd_in_flight(const struct nbd_conn *c) { return c->ops_in_flight; }

const char *nbd_context_name(const struct nbd_conn *c, size_t i)
{
    return i < c->ncontexts ? c->contexts[i].name : NULL;
}

int64_t nbd_conn_context_index(const struct nbd_conn *c, const char *name)
{
    for (size_t i = 0; i < c->ncontexts; i++)
        if (strcmp(c->contexts[i].name, name) == 0)
            return (int64_t)i;
    return -1;
}

bool nbd_has_context(const struct nbd_conn *c, const char *name)
{
    return nbd_conn_context_index(c, name) >= 0;
}

void nbd_get_block_size(const struct nbd_conn *c, uint32_t *min, uint32_t *pref, uint32_t *max)
{
    if (min)
        *min = c->has_block_size ? c->min_block : 1;
    if (pref)
        *pref = c->has_block_size ? c->pref_block : 4096;
    if (max)
        *max = c->has_block_size ? c->max_block : MAX_PORTABLE_REQUEST;
}

bool nbd_can(const struct nbd_conn *c, uint16_t flag)
{
    uint16_t f = c->eflags;

    if (!c->structured)
        f &= ~NBD_FLAG_SEND_DF;
    if (!(f & NBD_FLAG_SEND_WRITE_ZEROES))
        f &= ~NBD_FLAG_SEND_FAST_ZERO;
    if (!c->extended)
        f &= ~NBD_FLAG_BLOCK_STAT_PAYLOAD;
    return (f & flag) == flag;
}

/* ---- Transmission setup --------------------------------------------------- */

uint32_t nbd_conn_alignment(const struct nbd_conn *c)
{
    return c->has_block_size ? c->min_block : 1;
}

int nbd_transmission_init(struct nbd_conn *c)
{
    uint32_t max = MAX_PORTABLE_REQUEST;

    if (c->has_block_size && c->max_block < max)
        max = c->max_block;
    if (c->has_block_size) {
        uint32_t unit = c->pref_block <= max ? c->pref_block : c->min_block;
        if (max >= unit)
            max -= max % unit;
    }
    c->max_payload = max;
    /* REQUEST_SIZE is a power of two from 64 KiB (the largest minimum
     * block size) up: a multiple of any server's unit. */
    uint32_t want = REQUEST_SIZE;
    if (c->has_block_size && c->pref_block > want)
        want = c->pref_block;
    c->max_request = want < max ? want : max;
    c->mode = c->extended ? NBD_MODE_EXTENDED : c->structured ? NBD_MODE_STRUCTURED : NBD_MODE_SIMPLE;
    if (!c->opts.max_in_flight)
        c->opts.max_in_flight = DEFAULT_MAX_IN_FLIGHT;
    c->obuf = malloc(OBUF_SIZE);
    c->ibuf = malloc(IBUF_SIZE);
    if (!c->obuf || !c->ibuf) {
        nbd_set_error(ENOMEM, "out of memory");
        return -1;
    }
    c->rx_state = RX_HDR;
    c->rx_ptr = c->rx_hdr;
    c->rx_left = nbd_reply_first_len(c->mode);
    c->next_cookie = 1;
    if (c->sock) {
        int fd = nbd_sock_fd(c->sock);
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
            nbd_set_error(errno, "fcntl: %s", strerror(errno));
            return -1;
        }
    }
    return 0;
}

static void request_free(struct request *r)
{
    nbd_cover_free(&r->cover);
    free(r->bounce);
    free(r);
}

void nbd_transmission_free(struct nbd_conn *c)
{
    if (c->in_transmission && (c->ops_in_flight || c->in_flight))
        nbd_conn_kill(c, ECONNABORTED, "connection closed with requests in flight");
    free(c->obuf);
    free(c->ibuf);
    free(c->rx_payload);
    c->obuf = c->ibuf = c->rx_payload = NULL;
}

struct nbd_conn *nbd_conn_new_detached(bool structured, bool extended, uint64_t size,
                                       uint16_t eflags, const char *const *contexts)
{
    struct nbd_uri u = { .export_name = "" };
    struct nbd_conn *c = conn_new(&u, NULL);

    if (!c)
        return NULL;
    c->fixed = true;
    c->structured = structured || extended;
    c->extended = extended;
    c->size = size;
    c->eflags = eflags | NBD_FLAG_HAS_FLAGS;
    for (size_t i = 0; contexts && contexts[i]; i++) {
        struct context *nc = realloc(c->contexts, (c->ncontexts + 1) * sizeof *nc);
        if (!nc)
            break;
        c->contexts = nc;
        c->contexts[c->ncontexts].id = (uint32_t)i;
        c->contexts[c->ncontexts++].name = strdup(contexts[i]);
    }
    c->in_transmission = c->negotiation_over = true;
    if (nbd_transmission_init(c) < 0) {
        conn_free(c);
        return NULL;
    }
    return c;
}

/* ---- Completion ------------------------------------------------------------ */

static void setmsg(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = 0;
}

static void op_fail(struct op *op, int err, const char *msg)
{
    if (op->err)
        return;
    op->err = err ? err : EIO;
    setmsg(op->errmsg, sizeof op->errmsg, msg);
}

static void op_put(struct nbd_conn *c, struct op *op)
{
    if (--op->pending)
        return;
    c->ops_in_flight--;
    if (op->err)
        nbd_set_error(op->err, "%s", op->errmsg);
    if (op->done)
        op->done(op->opaque, op->err);
    free(op);
}

static struct request **bucket(struct nbd_conn *c, uint64_t cookie)
{
    return &c->inflight[cookie % NBD_HASH_BUCKETS];
}

static struct request *inflight_take(struct nbd_conn *c, uint64_t cookie)
{
    for (struct request **p = bucket(c, cookie); *p; p = &(*p)->hnext) {
        if ((*p)->cookie == cookie) {
            struct request *r = *p;
            *p = r->hnext;
            return r;
        }
    }
    return NULL;
}

static struct request *inflight_find(struct nbd_conn *c, uint64_t cookie)
{
    for (struct request *r = *bucket(c, cookie); r; r = r->hnext)
        if (r->cookie == cookie)
            return r;
    return NULL;
}

/* A request got its final reply. */
static void request_done(struct nbd_conn *c, struct request *r)
{
    struct op *op = r->op;

    inflight_take(c, r->cookie);
    c->in_flight--;
    if (r->type == NBD_CMD_READ && r->count >= BIG_READ)
        c->big_reads--;
    if (!r->err && r->type == NBD_CMD_READ && r->cover.total != r->count) {
        r->err = EIO;
        snprintf(r->errmsg, sizeof r->errmsg,
                 "server's reply to read 0x%llx+%llu covered only %llu bytes",
                 (unsigned long long)r->offset, (unsigned long long)r->count,
                 (unsigned long long)r->cover.total);
    }
    if (!r->err && r->type == NBD_CMD_BLOCK_STATUS && !r->status_seen && !r->status_seen_hi) {
        r->err = EIO;
        snprintf(r->errmsg, sizeof r->errmsg,
                 "server's reply to block status 0x%llx+%llu carried no extents",
                 (unsigned long long)r->offset, (unsigned long long)r->count);
    }
    if (r->err)
        op_fail(op, r->err, r->errmsg);
    else if (r->bounce)
        memcpy(r->user_dst, r->bounce + r->bounce_skip, r->user_len);
    request_free(r);
    op_put(c, op);
}

void nbd_conn_kill(struct nbd_conn *c, int err, const char *fmt, ...)
{
    va_list ap;

    if (!c->dead) {
        va_start(ap, fmt);
        vsnprintf(c->dead_msg, sizeof c->dead_msg, fmt, ap);
        va_end(ap);
        c->dead = true;
        c->dead_errno = err ? err : EIO;
        nbd_debug("connection dead: %s", c->dead_msg);
    }
    /* Fail everything queued or in flight. */
    c->sendq_head = c->sendq_tail = NULL;
    for (size_t b = 0; b < NBD_HASH_BUCKETS; b++) {
        while (c->inflight[b]) {
            struct request *r = c->inflight[b];
            if (!r->err) {
                r->err = c->dead_errno;
                setmsg(r->errmsg, sizeof r->errmsg, c->dead_msg);
            }
            r->cover.total = r->count; /* no coverage complaint on top */
            r->status_seen = 1;
            request_done(c, r);
        }
    }
    c->in_flight = 0;
    c->rx_req = NULL;
    nbd_set_error(c->dead_errno, "%s", c->dead_msg);
}

/* ---- Submission -------------------------------------------------------------- */

int nbd_conn_refuse(struct nbd_conn *c, const char *what)
{
    if (c->dead) {
        nbd_set_error(c->dead_errno, "%s: %s", what, c->dead_msg);
        return -1;
    }
    if (!c->in_transmission) {
        nbd_set_error(EINVAL, "%s: the connection is not in transmission", what);
        return -1;
    }
    return 0;
}

int nbd_conn_check_range(struct nbd_conn *c, const char *what, uint64_t count, uint64_t offset)
{
    if (count == 0) {
        nbd_set_error(EINVAL, "%s: zero-length request", what);
        return -1;
    }
    if (offset > c->size || count > c->size - offset) {
        nbd_set_error(EINVAL, "%s 0x%llx+%llu: past the end of the export (size %llu)", what,
                      (unsigned long long)offset, (unsigned long long)count,
                      (unsigned long long)c->size);
        return -1;
    }
    return 0;
}

static int check_aligned(struct nbd_conn *c, const char *what, uint64_t count, uint64_t offset)
{
    uint32_t a = nbd_conn_alignment(c);

    if (offset % a || (count % a && offset + count != c->size)) {
        nbd_set_error(EINVAL, "%s 0x%llx+%llu: not aligned to the server's minimum block size %u",
                      what, (unsigned long long)offset, (unsigned long long)count, a);
        return -1;
    }
    return 0;
}

static int check_flags(struct nbd_conn *c, const char *what, uint16_t type, uint32_t flags)
{
    uint32_t allowed = 0;

    if (nbd_can(c, NBD_FLAG_SEND_FUA))
        allowed |= NBD_CMD_FLAG_FUA;
    switch (type) {
    case NBD_CMD_READ:
        if (nbd_can(c, NBD_FLAG_SEND_DF))
            allowed |= NBD_CMD_FLAG_DF;
        break;
    case NBD_CMD_WRITE_ZEROES:
        allowed |= NBD_CMD_FLAG_NO_HOLE;
        if (nbd_can(c, NBD_FLAG_SEND_FAST_ZERO))
            allowed |= NBD_CMD_FLAG_FAST_ZERO;
        break;
    case NBD_CMD_BLOCK_STATUS:
        allowed |= NBD_CMD_FLAG_REQ_ONE;
        break;
    }
    if (flags & ~allowed) {
        nbd_set_error(EINVAL, "%s: flags 0x%x not allowed (the server did not advertise them)",
                      what, flags & ~allowed);
        return -1;
    }
    return 0;
}

static struct op *op_new(struct nbd_conn *c, nbd_done_fn done, void *opaque)
{
    struct op *op = calloc(1, sizeof *op);

    if (!op) {
        nbd_set_error(ENOMEM, "out of memory");
        return NULL;
    }
    op->done = done;
    op->opaque = opaque;
    op->context_index = -1;
    op->pending = 1; /* held by the submitter until every piece is queued */
    if (c->ops_in_flight++ == 0)
        c->wait_since_ms = clock_mono_ms();
    return op;
}

static struct request *queue_request(struct nbd_conn *c, struct op *op, uint16_t type,
                                     uint16_t flags, uint64_t offset, uint64_t count)
{
    struct request *r = calloc(1, sizeof *r);

    if (!r) {
        op_fail(op, ENOMEM, "out of memory");
        return NULL;
    }
    r->op = op;
    r->type = type;
    r->flags = flags;
    r->offset = offset;
    r->count = count;
    r->cookie = c->next_cookie++;
    r->hdrlen = nbd_encode_request(r->hdr, c->extended, flags, type, r->cookie, offset, count);
    r->hnext = *bucket(c, r->cookie);
    *bucket(c, r->cookie) = r;
    if (c->sock) { /* detached (tests, fuzzers): counts as sent at once */
        if (c->sendq_tail)
            c->sendq_tail->next = r;
        else
            c->sendq_head = r;
        c->sendq_tail = r;
    }
    c->in_flight++;
    if (type == NBD_CMD_READ && count >= BIG_READ)
        c->big_reads++;
    op->pending++;
    return r;
}

/* Ends submission: the op completes when its requests have (or at once if
 * none could be queued). */
static int op_submitted(struct nbd_conn *c, struct op *op)
{
    if (op->err && op->pending == 1) {
        int err = op->err;
        char msg[sizeof op->errmsg];
        memcpy(msg, op->errmsg, sizeof msg);
        c->ops_in_flight--;
        free(op);
        nbd_set_error(err, "%s", msg);
        return -1;
    }
    op_put(c, op);
    return 0;
}

int nbd_aio_pread(struct nbd_conn *c, void *buf, uint64_t count, uint64_t offset,
                  uint32_t flags, nbd_done_fn done, void *opaque)
{
    uint32_t a;
    uint64_t start, end, pos;
    struct op *op;

    if (nbd_conn_refuse(c, "read") < 0 || nbd_conn_check_range(c, "read", count, offset) < 0 ||
        check_flags(c, "read", NBD_CMD_READ, flags) < 0)
        return -1;
    if (!(op = op_new(c, done, opaque)))
        return -1;
    a = nbd_conn_alignment(c);
    start = offset - offset % a;
    end = offset + count;
    if (end % a)
        end += a - end % a;
    if (end > c->size)
        end = c->size;
    for (pos = start; pos < end && !op->err;) {
        uint64_t len = end - pos < c->max_request ? end - pos : c->max_request;
        uint64_t ustart = pos > offset ? pos : offset;
        uint64_t uend = pos + len < offset + count ? pos + len : offset + count;
        bool direct = ustart == pos && uend == pos + len;
        /* The bounce buffer first: a request on the wire needs somewhere
         * to put its data. */
        uint8_t *bounce = direct ? NULL : malloc(len);
        if (!direct && !bounce) {
            op_fail(op, ENOMEM, "out of memory");
            break;
        }
        struct request *r = queue_request(c, op, NBD_CMD_READ, (uint16_t)flags, pos, len);
        if (!r) {
            free(bounce);
            break;
        }
        if (direct) {
            r->buf = (uint8_t *)buf + (pos - offset);
        } else {
            r->bounce = bounce;
            r->buf = r->bounce;
            r->bounce_skip = ustart - pos;
            r->user_len = uend - ustart;
            r->user_dst = (uint8_t *)buf + (ustart - offset);
        }
        pos += len;
    }
    return op_submitted(c, op);
}

int nbd_aio_pwrite(struct nbd_conn *c, const void *buf, uint64_t count, uint64_t offset,
                   uint32_t flags, nbd_done_fn done, void *opaque)
{
    struct op *op;

    if (nbd_conn_refuse(c, "write") < 0)
        return -1;
    if (c->eflags & NBD_FLAG_READ_ONLY) {
        nbd_set_error(EPERM, "write: the export is read-only");
        return -1;
    }
    if (nbd_conn_check_range(c, "write", count, offset) < 0 || check_aligned(c, "write", count, offset) < 0 ||
        check_flags(c, "write", NBD_CMD_WRITE, flags) < 0)
        return -1;
    if (!(op = op_new(c, done, opaque)))
        return -1;
    for (uint64_t pos = 0; pos < count && !op->err;) {
        uint64_t len = count - pos < c->max_request ? count - pos : c->max_request;
        /* Extended headers: PAYLOAD_LEN is mandatory on WRITE. */
        uint16_t fl = (uint16_t)(flags | (c->extended ? NBD_CMD_FLAG_PAYLOAD_LEN : 0));
        struct request *r = queue_request(c, op, NBD_CMD_WRITE, fl, offset + pos, len);
        if (!r)
            break;
        r->payload = (const uint8_t *)buf + pos;
        r->payload_len = len;
        pos += len;
    }
    return op_submitted(c, op);
}

int nbd_aio_flush(struct nbd_conn *c, uint32_t flags, nbd_done_fn done, void *opaque)
{
    struct op *op;

    if (nbd_conn_refuse(c, "flush") < 0)
        return -1;
    if (!nbd_can(c, NBD_FLAG_SEND_FLUSH)) {
        nbd_set_error(ENOTSUP, "flush: the server does not support NBD_CMD_FLUSH");
        return -1;
    }
    if (check_flags(c, "flush", NBD_CMD_FLUSH, flags) < 0 || !(op = op_new(c, done, opaque)))
        return -1;
    queue_request(c, op, NBD_CMD_FLUSH, (uint16_t)flags, 0, 0);
    return op_submitted(c, op);
}

static int effect_request(struct nbd_conn *c, uint16_t type, uint16_t need, const char *what,
                          uint64_t count, uint64_t offset, uint32_t flags, uint64_t piece,
                          nbd_done_fn done, void *opaque)
{
    struct op *op;

    if (nbd_conn_refuse(c, what) < 0)
        return -1;
    if (type != NBD_CMD_CACHE && (c->eflags & NBD_FLAG_READ_ONLY)) {
        nbd_set_error(EPERM, "%s: the export is read-only", what);
        return -1;
    }
    if (!nbd_can(c, need)) {
        nbd_set_error(ENOTSUP, "%s: the server does not support %s", what, nbd_cmd_name(type));
        return -1;
    }
    if (nbd_conn_check_range(c, what, count, offset) < 0 || check_flags(c, what, type, flags) < 0)
        return -1;
    if (type == NBD_CMD_CACHE) {
        uint32_t a = nbd_conn_alignment(c); /* advisory: round outward */
        uint64_t end = offset + count;
        offset -= offset % a;
        if (end % a)
            end += a - end % a;
        if (end > c->size)
            end = c->size;
        count = end - offset;
    } else if (check_aligned(c, what, count, offset) < 0) {
        return -1;
    }
    if (!(op = op_new(c, done, opaque)))
        return -1;
    for (uint64_t pos = 0; pos < count && !op->err;) {
        uint64_t len = count - pos < piece ? count - pos : piece;
        if (!queue_request(c, op, type, (uint16_t)flags, offset + pos, len))
            break;
        pos += len;
    }
    return op_submitted(c, op);
}

int nbd_aio_trim(struct nbd_conn *c, uint64_t count, uint64_t offset, uint32_t flags,
                 nbd_done_fn done, void *opaque)
{
    return effect_request(c, NBD_CMD_TRIM, NBD_FLAG_SEND_TRIM, "trim", count, offset, flags,
                          MAX_EFFECT_REQUEST, done, opaque);
}

int nbd_aio_zero(struct nbd_conn *c, uint64_t count, uint64_t offset, uint32_t flags,
                 nbd_done_fn done, void *opaque)
{
    return effect_request(c, NBD_CMD_WRITE_ZEROES, NBD_FLAG_SEND_WRITE_ZEROES, "write zeroes",
                          count, offset, flags, MAX_EFFECT_REQUEST, done, opaque);
}

int nbd_aio_cache(struct nbd_conn *c, uint64_t count, uint64_t offset, uint32_t flags,
                  nbd_done_fn done, void *opaque)
{
    return effect_request(c, NBD_CMD_CACHE, NBD_FLAG_SEND_CACHE, "cache", count, offset, flags,
                          c->max_payload, done, opaque);
}

int nbd_aio_block_status(struct nbd_conn *c, uint64_t count, uint64_t offset, uint32_t flags,
                         const char *context, nbd_extent_fn fn, void *fn_opaque,
                         nbd_done_fn done, void *opaque)
{
    struct op *op;
    int64_t idx = -1;
    uint32_t a;

    if (nbd_conn_refuse(c, "block status") < 0)
        return -1;
    if (!c->ncontexts) {
        nbd_set_error(ENOTSUP, "block status: no metadata context was negotiated");
        return -1;
    }
    if (context && (idx = nbd_conn_context_index(c, context)) < 0) {
        nbd_set_error(ENOTSUP, "block status: the server did not agree to context %s", context);
        return -1;
    }
    if (nbd_conn_check_range(c, "block status", count, offset) < 0 ||
        check_flags(c, "block status", NBD_CMD_BLOCK_STATUS, flags) < 0)
        return -1;
    a = nbd_conn_alignment(c);
    if (!c->extended && count > UINT32_MAX) {
        count = UINT32_MAX - UINT32_MAX % a;
    }
    if (!(op = op_new(c, done, opaque)))
        return -1;
    op->extent_fn = fn;
    op->extent_opaque = fn_opaque;
    op->context_index = idx;
    bool filter = idx >= 0 && c->ncontexts > 1 && nbd_can(c, NBD_FLAG_BLOCK_STAT_PAYLOAD);
    struct request *r = queue_request(c, op, NBD_CMD_BLOCK_STATUS,
                                      (uint16_t)(flags | (filter ? NBD_CMD_FLAG_PAYLOAD_LEN : 0)),
                                      offset, filter ? 12 : count);
    if (r && filter) {
        nbd_put64(r->filter, count);
        nbd_put32(r->filter + 8, c->contexts[idx].id);
        r->payload = r->filter;
        r->payload_len = 12;
        r->count = count; /* the effect length, for checking the reply */
    }
    return op_submitted(c, op);
}

bool nbd_busy(const struct nbd_conn *c)
{
    return c->in_flight >= c->opts.max_in_flight;
}

/* ---- Sending ----------------------------------------------------------------- */

/* Moves queued requests into the staging buffer; a large payload is left
 * in c->direct to be sent from the caller's memory after the buffer. */
static void fill_obuf(struct nbd_conn *c)
{
    c->olen = c->opos = 0;
    while (c->sendq_head && !c->direct) {
        struct request *r = c->sendq_head;
        size_t small = r->payload_len <= SMALL_PAYLOAD ? r->payload_len : 0;
        if (OBUF_SIZE - c->olen < r->hdrlen + small)
            break;
        memcpy(c->obuf + c->olen, r->hdr, r->hdrlen);
        c->olen += r->hdrlen;
        if (r->payload_len && small) {
            memcpy(c->obuf + c->olen, r->payload, small);
            c->olen += small;
        } else if (r->payload_len) {
            c->direct = r->payload;
            c->direct_len = r->payload_len;
            c->direct_pos = 0;
        }
        c->sendq_head = r->next;
        if (!c->sendq_head)
            c->sendq_tail = NULL;
        r->next = NULL;
    }
}

static int flush_out(struct nbd_conn *c)
{
    for (;;) {
        const uint8_t *p;
        size_t n;
        if (c->opos < c->olen) {
            p = c->obuf + c->opos;
            n = c->olen - c->opos;
        } else if (c->direct) {
            p = c->direct + c->direct_pos;
            n = c->direct_len - c->direct_pos;
        } else {
            fill_obuf(c);
            if (c->olen == 0 && !c->direct)
                return 0;
            continue;
        }
        ssize_t w = nbd_sock_send(c->sock, p, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            nbd_conn_kill(c, errno, "send to server: %s", nbd_get_error());
            return -1;
        }
        if (c->opos < c->olen) {
            c->opos += (size_t)w;
        } else {
            c->direct_pos += (size_t)w;
            if (c->direct_pos == c->direct_len)
                c->direct = NULL;
        }
    }
}

static bool want_send(const struct nbd_conn *c)
{
    return c->opos < c->olen || c->direct || c->sendq_head;
}

/* ---- Receiving ---------------------------------------------------------------- */

#define KILL(c, ...) (nbd_conn_kill((c), EPROTO, __VA_ARGS__), -1)

static void rx_expect_header(struct nbd_conn *c)
{
    c->rx_state = RX_HDR;
    c->rx_ptr = c->rx_hdr;
    c->rx_left = nbd_reply_first_len(c->mode);
    c->rx_req = NULL;
}

static void request_error(struct request *r, uint32_t wire, const char *msg, size_t msglen)
{
    char clean[128];
    size_t j = 0;

    if (r->err)
        return;
    for (size_t i = 0; i < msglen && j + 1 < sizeof clean; i++)
        clean[j++] = (msg[i] >= 0x20 && msg[i] < 0x7f) ? msg[i] : '?';
    clean[j] = 0;
    r->err = nbd_errno_from_wire(wire);
    /* "Input/output error (NBD_EIO)", then the server's own words if any. */
    const char *name = nbd_err_name(wire);
    char unknown[40];
    if (!strncmp(name, "unknown", 7)) {
        snprintf(unknown, sizeof unknown, "unknown NBD error %u", wire);
        name = unknown;
    }
    snprintf(r->errmsg, sizeof r->errmsg, "server failed %s 0x%llx+%llu: %s (%s)%s%s",
             nbd_cmd_name(r->type), (unsigned long long)r->offset, (unsigned long long)r->count,
             strerror(r->err), name, j ? ": " : "", clean);
}

static int finish_chunk(struct nbd_conn *c)
{
    struct request *r = c->rx_req;

    rx_expect_header(c);
    if (c->rx_h.flags & NBD_REPLY_FLAG_DONE)
        request_done(c, r);
    return 0;
}

static int64_t context_by_id(const struct nbd_conn *c, uint32_t id)
{
    for (size_t i = 0; i < c->ncontexts; i++)
        if (c->contexts[i].id == id)
            return (int64_t)i;
    return -1;
}

static int take_status(struct nbd_conn *c, struct request *r, const uint8_t *p, size_t len)
{
    uint16_t type = c->rx_h.type;
    uint32_t id;
    size_t count;
    struct op *op = r->op;

    if ((type == NBD_REPLY_TYPE_BLOCK_STATUS_EXT) != c->extended)
        return KILL(c, "server sent %s while extended headers are %s", nbd_reply_type_name(type),
                    c->extended ? "on" : "off");
    if (nbd_decode_chunk_status(type, p, len, &id, &count) < 0)
        return KILL(c, "%s", nbd_get_error());
    int64_t idx = context_by_id(c, id);
    if (idx < 0)
        return KILL(c, "block status chunk for context id %u, which was not negotiated", id);
    if (idx < 32) {
        if (r->status_seen & (1u << idx))
            return KILL(c, "two block status chunks for context %s in one reply",
                        c->contexts[idx].name);
        r->status_seen |= 1u << idx;
    } else {
        r->status_seen_hi++;
    }
    if ((r->flags & NBD_CMD_FLAG_PAYLOAD_LEN) && idx != op->context_index)
        return KILL(c, "block status for context %s, which the request did not ask for",
                    c->contexts[idx].name);

    /* Check every descriptor, clip to the request (the last may run past
     * its end; later ones are ignored, as QEMU's client does). */
    struct nbd_extent *ext = malloc(count * sizeof *ext);
    size_t n = 0;
    uint64_t pos = r->offset, end = r->offset + r->count;
    if (!ext)
        return KILL(c, "out of memory");
    for (size_t i = 0; i < count; i++) {
        uint64_t elen, eflags;
        nbd_status_entry(type, p, i, &elen, &eflags);
        if (elen == 0) {
            free(ext);
            return KILL(c, "block status for context %s has a zero-length extent at 0x%llx",
                        c->contexts[idx].name, (unsigned long long)pos);
        }
        if (!c->extended && eflags > UINT32_MAX) {
            free(ext);
            return KILL(c, "block status flags overflow 32 bits");
        }
        if (pos >= end)
            continue;
        if (elen > end - pos)
            elen = end - pos;
        ext[n].length = elen;
        ext[n].flags = eflags;
        n++;
        pos += elen;
        if (r->flags & NBD_CMD_FLAG_REQ_ONE)
            break;
    }
    int ret = 0;
    if (op->extent_fn && (op->context_index < 0 || op->context_index == idx) && !r->err) {
        if (op->extent_fn(op->extent_opaque, c->contexts[idx].name, r->offset, ext, n) < 0) {
            r->err = nbd_get_errno() ? nbd_get_errno() : EIO;
            setmsg(r->errmsg, sizeof r->errmsg, nbd_get_error());
        }
    }
    free(ext);
    return ret;
}

static int rx_payload_done(struct nbd_conn *c)
{
    struct request *r = c->rx_req;
    const uint8_t *p = c->rx_payload;
    size_t len = (size_t)c->rx_h.length;
    uint16_t type = c->rx_h.type;

    if (type == NBD_REPLY_TYPE_OFFSET_HOLE) {
        uint64_t off;
        uint32_t size;
        if (nbd_decode_chunk_hole(p, len, &off, &size) < 0)
            return KILL(c, "%s", nbd_get_error());
        if (!nbd_range_within(r->offset, r->count, off, size))
            return KILL(c, "hole chunk 0x%llx+%u lies outside read 0x%llx+%llu",
                        (unsigned long long)off, size, (unsigned long long)r->offset,
                        (unsigned long long)r->count);
        int a = nbd_cover_add(&r->cover, off, size);
        if (a == -1)
            return KILL(c, "hole chunk 0x%llx+%u overlaps earlier data of the same read",
                        (unsigned long long)off, size);
        if (a < 0)
            return KILL(c, "out of memory");
        memset(r->buf + (off - r->offset), 0, size);
    } else if (type & NBD_REPLY_TYPE_ERROR_BIT) {
        uint32_t err;
        const char *msg;
        size_t msglen;
        bool has_off;
        uint64_t off;
        if (nbd_decode_chunk_error(type, p, len, &err, &msg, &msglen, &has_off, &off) < 0)
            return KILL(c, "%s", nbd_get_error());
        if (has_off && (r->type != NBD_CMD_READ || !nbd_range_within(r->offset, r->count, off, 1)))
            return KILL(c, "error offset 0x%llx lies outside %s 0x%llx+%llu",
                        (unsigned long long)off, nbd_cmd_name(r->type),
                        (unsigned long long)r->offset, (unsigned long long)r->count);
        request_error(r, err, msg, msglen);
    } else if (type == NBD_REPLY_TYPE_BLOCK_STATUS || type == NBD_REPLY_TYPE_BLOCK_STATUS_EXT) {
        if (take_status(c, r, p, len) < 0)
            return -1;
    }
    return finish_chunk(c);
}

/* Whether r has not completely left yet: still queued, or its large
 * payload still going out from the caller's memory.  Requests leave in
 * cookie order, so the queue holds exactly the cookies from its head on,
 * and a payload in transit belongs to the request just before the head.
 * A server that answers such a request guessed its cookie; completing it
 * would free a queued request or hand back a buffer still being sent. */
static bool request_unsent(const struct nbd_conn *c, const struct request *r)
{
    uint64_t first_queued = c->sendq_head ? c->sendq_head->cookie : c->next_cookie;

    return r->cookie >= first_queued || (c->direct && r->cookie == first_queued - 1);
}

static int rx_header(struct nbd_conn *c)
{
    struct nbd_reply_hdr *h = &c->rx_h;
    struct request *r;

    if (nbd_decode_reply_header(c->rx_hdr, c->mode, h) < 0)
        return KILL(c, "%s", nbd_get_error());
    r = inflight_find(c, h->cookie);
    if (!r)
        return KILL(c, "reply for unknown cookie 0x%llx", (unsigned long long)h->cookie);
    if (request_unsent(c, r))
        return KILL(c, "reply for cookie 0x%llx before its request was sent",
                    (unsigned long long)h->cookie);
    c->rx_req = r;
    if (h->simple) {
        if (h->error == 0 && r->type == NBD_CMD_BLOCK_STATUS)
            return KILL(c, "simple reply without extents to NBD_CMD_BLOCK_STATUS");
        if (h->error == 0 && r->type == NBD_CMD_READ && c->structured)
            return KILL(c, "simple reply to NBD_CMD_READ while structured replies are on");
        if (h->error) {
            request_error(r, h->error, NULL, 0);
            rx_expect_header(c);
            request_done(c, r);
            return 0;
        }
        if (r->type == NBD_CMD_READ) {
            c->rx_state = RX_SIMPLE_DATA;
            c->rx_ptr = r->buf;
            c->rx_left = r->count;
            return 0;
        }
        rx_expect_header(c);
        request_done(c, r);
        return 0;
    }

    switch (h->type) {
    case NBD_REPLY_TYPE_NONE:
        return finish_chunk(c);
    case NBD_REPLY_TYPE_OFFSET_DATA:
        if (r->type != NBD_CMD_READ)
            return KILL(c, "data chunk in reply to %s", nbd_cmd_name(r->type));
        if (h->length < 9)
            return KILL(c, "data chunk of %llu bytes carries no data",
                        (unsigned long long)h->length);
        c->rx_state = RX_DATA_OFFSET;
        c->rx_ptr = c->rx_off8;
        c->rx_left = 8;
        return 0;
    case NBD_REPLY_TYPE_OFFSET_HOLE:
        if (r->type != NBD_CMD_READ)
            return KILL(c, "hole chunk in reply to %s", nbd_cmd_name(r->type));
        break;
    case NBD_REPLY_TYPE_BLOCK_STATUS:
    case NBD_REPLY_TYPE_BLOCK_STATUS_EXT:
        if (r->type != NBD_CMD_BLOCK_STATUS)
            return KILL(c, "block status chunk in reply to %s", nbd_cmd_name(r->type));
        break;
    default:
        if (!(h->type & NBD_REPLY_TYPE_ERROR_BIT))
            return KILL(c, "unknown reply chunk type %u", h->type);
        break;
    }
    if (h->length == 0)
        return rx_payload_done(c);
    if (h->length > c->rx_payload_cap) {
        uint8_t *p = realloc(c->rx_payload, (size_t)h->length);
        if (!p)
            return KILL(c, "out of memory for a %llu-byte chunk", (unsigned long long)h->length);
        c->rx_payload = p;
        c->rx_payload_cap = (size_t)h->length;
    }
    c->rx_state = RX_PAYLOAD;
    c->rx_ptr = c->rx_payload;
    c->rx_left = h->length;
    return 0;
}

/* The current piece is complete: act on it. */
static int rx_advance(struct nbd_conn *c)
{
    struct request *r = c->rx_req;
    size_t full;

    switch (c->rx_state) {
    case RX_HDR:
        if (nbd_reply_header_len(c->rx_hdr, c->mode, &full) < 0)
            return KILL(c, "%s", nbd_get_error());
        if (full > nbd_reply_first_len(c->mode)) {
            c->rx_state = RX_HDR_REST;
            c->rx_ptr = c->rx_hdr + nbd_reply_first_len(c->mode);
            c->rx_left = full - nbd_reply_first_len(c->mode);
            return 0;
        }
        return rx_header(c);
    case RX_HDR_REST:
        return rx_header(c);
    case RX_SIMPLE_DATA:
        nbd_cover_add(&r->cover, r->offset, r->count);
        rx_expect_header(c);
        request_done(c, r);
        return 0;
    case RX_DATA_OFFSET: {
        uint64_t off = nbd_get64(c->rx_off8), size = c->rx_h.length - 8;
        if (!nbd_range_within(r->offset, r->count, off, size))
            return KILL(c, "data chunk 0x%llx+%llu lies outside read 0x%llx+%llu",
                        (unsigned long long)off, (unsigned long long)size,
                        (unsigned long long)r->offset, (unsigned long long)r->count);
        int a = nbd_cover_add(&r->cover, off, size);
        if (a == -1)
            return KILL(c, "data chunk 0x%llx+%llu overlaps earlier data of the same read",
                        (unsigned long long)off, (unsigned long long)size);
        if (a < 0)
            return KILL(c, "out of memory");
        c->rx_state = RX_DATA;
        c->rx_ptr = r->buf + (off - r->offset);
        c->rx_left = size;
        return 0;
    }
    case RX_DATA:
        return finish_chunk(c);
    case RX_PAYLOAD:
        return rx_payload_done(c);
    }
    return KILL(c, "internal error: bad receive state");
}

int nbd_rx_feed(struct nbd_conn *c, const uint8_t *p, size_t n)
{
    while (n && !c->dead) {
        size_t take = c->rx_left < n ? (size_t)c->rx_left : n;
        memcpy(c->rx_ptr, p, take);
        c->rx_ptr += take;
        c->rx_left -= take;
        p += take;
        n -= take;
        if (c->rx_left == 0 && rx_advance(c) < 0)
            return -1;
    }
    return c->dead ? -1 : 0;
}

/* Takes what the socket has, up to 256 receive calls (then the caller's
 * poll comes round again: the socket is still readable).  What is in ibuf
 * is always used up before returning: no poll would ever wake us for
 * bytes already taken from the socket. */
static int receive(struct nbd_conn *c)
{
    for (int rounds = 0; !c->dead;) {
        if (c->ipos < c->ilen) {
            size_t n = c->ilen - c->ipos;
            const uint8_t *p = c->ibuf + c->ipos;
            size_t take = c->rx_left < n ? (size_t)c->rx_left : n;
            c->ipos += take;
            if (nbd_rx_feed(c, p, take) < 0)
                return -1;
            continue;
        }
        if (rounds++ == 256)
            break;
        ssize_t got;
        bool data = c->rx_state == RX_DATA || c->rx_state == RX_SIMPLE_DATA;
        if (c->rx_left >= IBUF_SIZE / 2 || (data && c->big_reads)) {
            /* Large data: straight into its destination. */
            size_t want = c->rx_left > SSIZE_MAX ? SSIZE_MAX : (size_t)c->rx_left;
            got = nbd_sock_recv(c->sock, c->rx_ptr, want);
            if (got > 0) {
                c->wait_since_ms = clock_mono_ms();
                c->rx_ptr += got;
                c->rx_left -= (uint64_t)got;
                if (c->rx_left == 0 && rx_advance(c) < 0)
                    return -1;
                continue;
            }
        } else {
            /* With large reads in flight, a reply's header is taken alone
             * (with the offset of a data chunk) so that its data then goes
             * straight into the read's buffer: gathering whatever is queued
             * into ibuf would copy nearly every byte read a second time.
             * Otherwise many small replies come in with one call. */
            size_t want = IBUF_SIZE;
            if (c->big_reads && c->rx_state == RX_HDR)
                want = c->mode == NBD_MODE_EXTENDED     ? NBD_EXTENDED_REPLY_LEN + 8
                       : c->mode == NBD_MODE_STRUCTURED ? NBD_STRUCTURED_REPLY_LEN + 8
                                                        : NBD_SIMPLE_REPLY_LEN;
            got = nbd_sock_recv(c->sock, c->ibuf, want);
            if (got > 0) {
                c->wait_since_ms = clock_mono_ms();
                c->ilen = (size_t)got;
                c->ipos = 0;
                continue;
            }
        }
        if (got == 0) {
            if (c->in_flight || c->rx_state != RX_HDR || c->rx_left != nbd_reply_first_len(c->mode))
                nbd_conn_kill(c, ECONNRESET, "server closed the connection%s",
                              c->in_flight ? " with requests in flight" : "");
            else
                nbd_conn_kill(c, ECONNRESET, "server closed the connection");
            return -1;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno == EINTR)
            continue;
        nbd_conn_kill(c, errno, "receive from server: %s", nbd_get_error());
        return -1;
    }
    return c->dead ? -1 : 0;
}

/* ---- Driving ------------------------------------------------------------------ */

int nbd_get_fd(const struct nbd_conn *c)
{
    return c->sock ? nbd_sock_fd(c->sock) : -1;
}

short nbd_want_events(const struct nbd_conn *c)
{
    if (c->dead)
        return 0;
    return (short)(POLLIN | (want_send(c) ? POLLOUT : 0));
}

int nbd_step(struct nbd_conn *c, short revents)
{
    if (c->dead)
        return -1;
    if (!c->sock)
        return 0;
    if (want_send(c) && flush_out(c) < 0)
        return -1;
    if ((revents & (POLLIN | POLLHUP | POLLERR)) || nbd_sock_pending(c->sock))
        if (receive(c) < 0)
            return -1;
    if (want_send(c) && flush_out(c) < 0)
        return -1;
    return 0;
}

int nbd_poll(struct nbd_conn *c, int timeout_ms)
{
    struct pollfd p;
    int r;

    if (c->dead) {
        nbd_set_error(c->dead_errno, "%s", c->dead_msg);
        return -1;
    }
    if (!c->sock) {
        nbd_set_error(ENOTCONN, "no connection");
        return -1;
    }
    if (want_send(c) && flush_out(c) < 0)
        return -1;
    if (nbd_sock_pending(c->sock))
        return nbd_step(c, POLLIN);
    p.fd = nbd_sock_fd(c->sock);
    p.events = nbd_want_events(c);
    p.revents = 0;
    r = poll(&p, 1, nbd_stall_clamp(c, timeout_ms));
    if (r < 0) {
        if (errno == EINTR)
            return 0;
        nbd_set_error(errno, "poll: %s", strerror(errno));
        return -1;
    }
    if (r == 0)
        return nbd_stall_check(c);
    return nbd_step(c, p.revents);
}
