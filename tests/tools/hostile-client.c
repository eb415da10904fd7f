/* hostile-client: a deliberately misbehaving NBD client, for the
 * integration tests of `nbdvault serve` (tests/integration/
 * test-serve-hostile.sh), plus a careful client for what no reference
 * client speaks (the block status payload filter of extended headers).
 * It shares no code with nbdcore: it builds every byte itself from the
 * layouts of NBD-NOTES, so the server's parser is checked by a second,
 * independent reading of the protocol.
 *
 *   hostile-client list                          names the attacks
 *   hostile-client ATTACK SOCKET EXPORT          one attack, its answer checked
 *   hostile-client idle SOCKET N SECONDS         holds N silent connections
 *   hostile-client ext-map SOCKET EXPORT CONTEXT the map of CONTEXT, asked
 *                                                over extended headers with
 *                                                the payload filter naming
 *                                                only CONTEXT's id among every
 *                                                context of the export
 *   hostile-client dump SOCKET EXPORT MODE       the whole export (<= 32 MiB)
 *                                                in one READ to stdout; MODE:
 *                                                simple, structured, extended,
 *                                                or df (64 KiB DF reads)
 *   hostile-client race-set-go SOCKET EXPORT CONTEXT FILE
 *                                                SET_META_CONTEXT, then waits
 *                                                until FILE exists, then GO
 *                                                and the map of CONTEXT (or
 *                                                "refused ERRNO")
 *
 * SOCKET is a Unix socket path, or HOST:PORT.  ext-map and race-set-go
 * print one line "OFFSET LENGTH FLAGS" per extent, adjacent equal flags
 * merged.
 *
 * Exit status: 0 when the server answered as NBD-NOTES §9 wants (an error
 * reply with the connection kept, or a hard disconnect where the protocol
 * leaves nothing else); 1 when it did anything else (success for a bad
 * request, a malformed reply, no answer within 10 s); 2 for bad usage.
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "nbdcore/nbd-protocol.h"

#define TIMEOUT_MS 10000
#define MAX_CTX 64

static const char *attack = "?";
static const char *where;
static const char *export_name;

static void fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "hostile-client: %s: FAIL: ", attack);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void note(const char *fmt, ...)
{
    va_list ap;
    printf("%s: ", attack);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* ---- Big-endian ----------------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, (uint16_t)v); }
static void put64(uint8_t *p, uint64_t v) { put32(p, v >> 32); put32(p + 4, (uint32_t)v); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

/* ---- Sockets ---------------------------------------------------------------- */

static int xconnect(void)
{
    int fd;
    const char *colon = strrchr(where, ':');

    if (!colon || strchr(where, '/')) {
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        if (strlen(where) >= sizeof sun.sun_path)
            fail("socket path too long");
        strcpy(sun.sun_path, where);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0)
            fail("connect %s: %s", where, strerror(errno));
        return fd;
    }
    char host[256];
    snprintf(host, sizeof host, "%.*s", (int)(colon - where), where);
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res;
    if (getaddrinfo(host, colon + 1, &hints, &res))
        fail("cannot resolve %s", where);
    fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) < 0)
        fail("connect %s: %s", where, strerror(errno));
    freeaddrinfo(res);
    return fd;
}

/* Sends everything; -1 when the server has closed (EPIPE, ECONNRESET). */
static int wr(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n) {
        struct pollfd pfd = { fd, POLLOUT, 0 };
        int r = poll(&pfd, 1, TIMEOUT_MS);
        if (r == 0)
            fail("the server stopped reading for %d ms", TIMEOUT_MS);
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Reads exactly n bytes: 0, or 1 at EOF (or a reset: the server hung up).
 * No answer within the time limit fails the attack. */
static int rd(int fd, void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        int r = poll(&pfd, 1, TIMEOUT_MS);
        if (r == 0)
            fail("no answer from the server within %d ms", TIMEOUT_MS);
        ssize_t k = recv(fd, p, n, 0);
        if (k == 0 || (k < 0 && errno == ECONNRESET))
            return 1;
        if (k < 0) {
            if (errno == EINTR)
                continue;
            fail("recv: %s", strerror(errno));
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* The server must hang up now: any bytes it still sends are skipped (and
 * counted); no EOF within the time limit fails the attack. */
static size_t expect_hangup(int fd, const char *why)
{
    uint8_t buf[65536];
    size_t total = 0;
    for (;;) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        int r = poll(&pfd, 1, TIMEOUT_MS);
        if (r == 0)
            fail("%s: the server did not close the connection within %d ms", why, TIMEOUT_MS);
        ssize_t k = recv(fd, buf, sizeof buf, 0);
        if (k == 0 || (k < 0 && errno == ECONNRESET))
            break;
        if (k < 0) {
            if (errno == EINTR)
                continue;
            fail("recv: %s", strerror(errno));
        }
        total += (size_t)k;
    }
    close(fd);
    note("%s: the server closed the connection (after %zu more bytes)", why, total);
    return total;
}

/* ---- Handshake ---------------------------------------------------------------- */

struct conn {
    int fd;
    bool ext;
    uint64_t size;
    uint16_t eflags;
    size_t nctx;
    uint32_t ids[MAX_CTX];
    char names[MAX_CTX][160];
};

struct rep {
    uint32_t opt, type, len;
    uint8_t *data;
};

static void greet(struct conn *c, uint32_t cflags)
{
    uint8_t g[18], f[4];
    if (rd(c->fd, g, 18))
        fail("the server closed before its greeting");
    if (get64(g) != NBD_MAGIC || get64(g + 8) != NBD_NEW_VERSION)
        fail("bad greeting");
    if (!(get16(g + 16) & NBD_FLAG_FIXED_NEWSTYLE))
        fail("the server is not fixed-newstyle");
    put32(f, cflags);
    if (wr(c->fd, f, 4))
        fail("the server closed after its greeting");
}

static int opt_send(struct conn *c, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t h[16];
    put64(h, NBD_NEW_VERSION);
    put32(h + 8, opt);
    put32(h + 12, len);
    if (wr(c->fd, h, 16))
        return -1;
    return len ? wr(c->fd, data, len) : 0;
}

/* One option reply: 0, or 1 when the server hung up instead. */
static int opt_recv(struct conn *c, uint32_t opt, struct rep *r)
{
    uint8_t h[20];
    free(r->data);
    r->data = NULL;
    if (rd(c->fd, h, 20))
        return 1;
    if (get64(h) != NBD_OPT_REPLY_MAGIC)
        fail("bad option reply magic");
    r->opt = get32(h + 8);
    r->type = get32(h + 12);
    r->len = get32(h + 16);
    if (r->opt != opt)
        fail("reply for option %u to option %u", r->opt, opt);
    if (r->len > 1u << 20)
        fail("option reply of %u bytes", r->len);
    r->data = malloc(r->len + 1);
    if (rd(c->fd, r->data, r->len))
        return 1;
    r->data[r->len] = 0;
    if (r->type == NBD_REP_ACK && r->len)
        fail("an ACK with a payload");
    if ((r->type & NBD_REP_FLAG_ERROR) && r->len > NBD_MAX_STRING)
        fail("an error message of %u bytes", r->len);
    return 0;
}

/* Sends an option and reads its replies up to the final one, whose type it
 * returns (0 when the server hung up).  Non-final replies are handed to fn. */
static uint32_t opt_do(struct conn *c, uint32_t opt, const void *data, uint32_t len,
                       void (*fn)(struct conn *, struct rep *))
{
    struct rep r = { 0 };
    if (opt_send(c, opt, data, len))
        return 0;
    for (;;) {
        if (opt_recv(c, opt, &r)) {
            free(r.data);
            return 0;
        }
        if (r.type == NBD_REP_ACK || (r.type & NBD_REP_FLAG_ERROR)) {
            if (r.type & NBD_REP_FLAG_ERROR)
                note("option %u: error 0x%08x \"%s\"", opt, r.type, (char *)r.data);
            free(r.data);
            return r.type;
        }
        if (fn)
            fn(c, &r);
    }
}

static void want_error(uint32_t got, uint32_t want, const char *what)
{
    if (got == 0)
        fail("%s: the server hung up instead of answering with an error", what);
    if (!(got & NBD_REP_FLAG_ERROR))
        fail("%s: the server accepted it (reply 0x%x)", what, got);
    if (want && got != want)
        fail("%s: error 0x%08x, expected 0x%08x", what, got, want);
}

static void on_info(struct conn *c, struct rep *r)
{
    if (r->type != NBD_REP_INFO)
        fail("unexpected reply type %u during GO", r->type);
    if (r->len >= 2 && get16(r->data) == NBD_INFO_EXPORT) {
        if (r->len != 12)
            fail("NBD_INFO_EXPORT of %u bytes", r->len);
        c->size = get64(r->data + 2);
        c->eflags = get16(r->data + 10);
    }
}

static void on_meta(struct conn *c, struct rep *r)
{
    if (r->type != NBD_REP_META_CONTEXT || r->len < 5)
        fail("unexpected reply type %u (%u bytes) to a meta context option", r->type, r->len);
    if (c->nctx == MAX_CTX)
        fail("too many contexts");
    if (r->len - 4 >= sizeof c->names[0])
        fail("a context name of %u bytes", r->len - 4);
    c->ids[c->nctx] = get32(r->data);
    memcpy(c->names[c->nctx], r->data + 4, r->len - 4);
    c->names[c->nctx][r->len - 4] = 0;
    c->nctx++;
}

/* The data of INFO/GO for name (namelen bytes) with n info requests. */
static uint8_t *info_data(const char *name, uint32_t namelen, uint32_t *len)
{
    uint8_t *d = calloc(1, 4 + namelen + 4);
    put32(d, namelen);
    memcpy(d + 4, name, namelen);
    put16(d + 4 + namelen, 1);
    put16(d + 6 + namelen, NBD_INFO_BLOCK_SIZE);
    *len = 4 + namelen + 4;
    return d;
}

static uint8_t *meta_data(const char *name, const char *const *q, size_t nq, uint32_t *len)
{
    size_t n = 8 + strlen(name);
    for (size_t i = 0; i < nq; i++)
        n += 4 + strlen(q[i]);
    uint8_t *d = malloc(n), *p = d;
    put32(p, (uint32_t)strlen(name));
    memcpy(p + 4, name, strlen(name));
    p += 4 + strlen(name);
    put32(p, (uint32_t)nq);
    p += 4;
    for (size_t i = 0; i < nq; i++) {
        put32(p, (uint32_t)strlen(q[i]));
        memcpy(p + 4, q[i], strlen(q[i]));
        p += 4 + strlen(q[i]);
    }
    *len = (uint32_t)n;
    return d;
}

static void do_go(struct conn *c)
{
    uint32_t len;
    uint8_t *d = info_data(export_name, (uint32_t)strlen(export_name), &len);
    uint32_t t = opt_do(c, NBD_OPT_GO, d, len, on_info);
    free(d);
    if (t != NBD_REP_ACK)
        fail("GO %s failed (0x%x)", export_name, t);
    if (!(c->eflags & NBD_FLAG_HAS_FLAGS) || !c->size)
        fail("GO without NBD_INFO_EXPORT");
}

/* Connects and negotiates: structured replies (or extended headers), the
 * contexts (NULL: none; an empty list: every context of the export), GO. */
static void setup(struct conn *c, bool ext, const char *const *ctx, size_t nctx)
{
    memset(c, 0, sizeof *c);
    c->fd = xconnect();
    greet(c, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    if (opt_do(c, ext ? NBD_OPT_EXTENDED_HEADERS : NBD_OPT_STRUCTURED_REPLY, NULL, 0, NULL) !=
        NBD_REP_ACK)
        fail("%s refused", ext ? "NBD_OPT_EXTENDED_HEADERS" : "NBD_OPT_STRUCTURED_REPLY");
    c->ext = ext;
    if (ctx) {
        uint32_t len;
        uint8_t *d;
        const char *all[MAX_CTX];
        static char listed[MAX_CTX][160];
        if (nctx == 0) {
            /* LIST every context, then SET all of them. */
            d = meta_data(export_name, NULL, 0, &len);
            if (opt_do(c, NBD_OPT_LIST_META_CONTEXT, d, len, on_meta) != NBD_REP_ACK)
                fail("LIST_META_CONTEXT failed");
            free(d);
            for (size_t i = 0; i < c->nctx; i++) {
                memcpy(listed[i], c->names[i], sizeof listed[i]);
                all[i] = listed[i];
            }
            nctx = c->nctx;
            ctx = all;
            c->nctx = 0;
        }
        d = meta_data(export_name, ctx, nctx, &len);
        if (opt_do(c, NBD_OPT_SET_META_CONTEXT, d, len, on_meta) != NBD_REP_ACK)
            fail("SET_META_CONTEXT failed");
        free(d);
        if (c->nctx != nctx)
            fail("asked for %zu contexts, got %zu", nctx, c->nctx);
    }
    do_go(c);
}

/* ---- Transmission ---------------------------------------------------------------- */

static int req(struct conn *c, uint16_t flags, uint16_t type, uint64_t cookie, uint64_t off,
               uint64_t len, const void *payload, size_t plen)
{
    uint8_t h[32];
    size_t hl;
    if (c->ext) {
        put32(h, NBD_EXTENDED_REQUEST_MAGIC);
        put64(h + 24, len);
        hl = 32;
    } else {
        put32(h, NBD_REQUEST_MAGIC);
        put32(h + 24, (uint32_t)len);
        hl = 28;
    }
    put16(h + 4, flags);
    put16(h + 6, type);
    put64(h + 8, cookie);
    put64(h + 16, off);
    if (wr(c->fd, h, hl))
        return -1;
    return plen ? wr(c->fd, payload, plen) : 0;
}

struct reply {
    bool simple;
    uint16_t flags, type;
    uint64_t cookie, off;
    uint32_t err;
    uint64_t len;
    uint8_t *p;
};

/* One reply (simple header, or a chunk with its payload): 0, or 1 at EOF. */
static int reply(struct conn *c, struct reply *r)
{
    uint8_t h[32];
    free(r->p);
    memset(r, 0, sizeof *r);
    if (rd(c->fd, h, 4))
        return 1;
    uint32_t magic = get32(h);
    if (magic == NBD_SIMPLE_REPLY_MAGIC) {
        if (c->ext)
            fail("a simple reply with extended headers");
        if (rd(c->fd, h + 4, 12))
            return 1;
        r->simple = true;
        r->err = get32(h + 4);
        r->cookie = get64(h + 8);
        return 0;
    }
    if (magic == NBD_STRUCTURED_REPLY_MAGIC && !c->ext) {
        if (rd(c->fd, h + 4, 16))
            return 1;
        r->len = get32(h + 16);
    } else if (magic == NBD_EXTENDED_REPLY_MAGIC && c->ext) {
        if (rd(c->fd, h + 4, 28))
            return 1;
        r->off = get64(h + 16);
        r->len = get64(h + 24);
    } else {
        fail("bad reply magic 0x%08x", magic);
    }
    r->flags = get16(h + 4);
    r->type = get16(h + 6);
    r->cookie = get64(h + 8);
    if (r->len > (64u << 20) + 64)
        fail("a chunk of %llu bytes", (unsigned long long)r->len);
    r->p = malloc(r->len + 1);
    if (rd(c->fd, r->p, r->len))
        return 1;
    if (r->type & NBD_REPLY_TYPE_ERROR_BIT) {
        if (r->len < 6 || get16(r->p + 4) > r->len - 6)
            fail("malformed error chunk");
        r->err = get32(r->p);
        if (!r->err)
            fail("an error chunk with error 0");
        if (r->len > 1000)
            fail("an error chunk of %llu bytes (QEMU refuses > 1000)", (unsigned long long)r->len);
    }
    return 0;
}

/* The request cookie must fail with want (0: any error); the connection
 * stays.  Returns the error. */
static uint32_t expect_error(struct conn *c, uint64_t cookie, uint32_t want, const char *what)
{
    struct reply r = { 0 };
    uint32_t err = 0;
    for (;;) {
        if (reply(c, &r))
            fail("%s: the server hung up instead of answering with an error", what);
        if (r.cookie != cookie)
            fail("%s: a reply for cookie %llu", what, (unsigned long long)r.cookie);
        if (r.simple) {
            err = r.err;
            break;
        }
        if (r.type & NBD_REPLY_TYPE_ERROR_BIT)
            err = r.err;
        else if (r.type != NBD_REPLY_TYPE_NONE)
            fail("%s: answered with a chunk of type %u, not an error", what, r.type);
        if (r.flags & NBD_REPLY_FLAG_DONE)
            break;
    }
    free(r.p);
    if (!err)
        fail("%s: the server said it succeeded", what);
    if (want && err != want)
        fail("%s: error %u, expected %u", what, err, want);
    note("%s: error %u", what, err);
    return err;
}

/* A READ that must succeed: fills buf from the chunks, checking bounds. */
static void read_ok(struct conn *c, uint64_t cookie, uint64_t off, uint32_t len, uint8_t *buf)
{
    struct reply r = { 0 };
    uint64_t got = 0;
    if (req(c, 0, NBD_CMD_READ, cookie, off, len, NULL, 0))
        fail("the server hung up before a READ");
    for (;;) {
        if (reply(c, &r))
            fail("the server hung up during a READ");
        if (r.cookie != cookie)
            fail("READ: a reply for cookie %llu", (unsigned long long)r.cookie);
        if (r.simple)
            fail("a simple reply with structured replies on");
        if (r.type & NBD_REPLY_TYPE_ERROR_BIT)
            fail("READ %llu+%u failed with %u", (unsigned long long)off, len, r.err);
        if (r.type == NBD_REPLY_TYPE_OFFSET_DATA) {
            uint64_t o = get64(r.p);
            if (r.len < 9 || o < off || o - off > len || r.len - 8 > len - (o - off))
                fail("READ: a data chunk outside the request");
            memcpy(buf + (o - off), r.p + 8, r.len - 8);
            got += r.len - 8;
        } else if (r.type == NBD_REPLY_TYPE_OFFSET_HOLE) {
            uint64_t o = get64(r.p);
            uint32_t n = get32(r.p + 8);
            if (r.len != 12 || o < off || o - off > len || n > len - (o - off) || !n)
                fail("READ: a hole chunk outside the request");
            memset(buf + (o - off), 0, n);
            got += n;
        } else if (r.type != NBD_REPLY_TYPE_NONE) {
            fail("READ: a chunk of type %u", r.type);
        }
        if (r.flags & NBD_REPLY_FLAG_DONE)
            break;
    }
    free(r.p);
    if (got != len)
        fail("READ: %llu bytes of %u", (unsigned long long)got, len);
}

/* The connection still serves: a READ of the first 4 KiB, then DISC. */
static void still_serves(struct conn *c)
{
    uint8_t buf[4096];
    read_ok(c, 999, 0, sizeof buf, buf);
    req(c, 0, NBD_CMD_DISC, 1000, 0, 0, NULL, 0);
    expect_hangup(c->fd, "after DISC");
}

/* ---- Attacks: handshake ------------------------------------------------------------ */

static char *long_name(size_t n)
{
    char *s = malloc(n + 1);
    memset(s, 'a', n);
    s[n] = 0;
    return s;
}

static void opt_long_name(uint32_t opt)
{
    struct conn c = { .fd = xconnect() };
    uint32_t len;
    char *name = long_name(NBD_MAX_STRING + 1);
    uint8_t *d = info_data(name, NBD_MAX_STRING + 1, &len);
    greet(&c, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    want_error(opt_do(&c, opt, d, len, NULL), 0, "an export name of 4097 bytes");
    /* The connection goes on. */
    do_go(&c);
    note("GO %s after the refusal: size %llu", export_name, (unsigned long long)c.size);
    free(name);
    free(d);
    c.ext = false;
    req(&c, 0, NBD_CMD_DISC, 1, 0, 0, NULL, 0);
    expect_hangup(c.fd, "after DISC");
}

static void a_name_go(void) { opt_long_name(NBD_OPT_GO); }
static void a_name_info(void) { opt_long_name(NBD_OPT_INFO); }

static void a_name_export_name(void)
{
    struct conn c = { .fd = xconnect() };
    char *name = long_name(NBD_MAX_STRING + 1);
    greet(&c, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    opt_send(&c, NBD_OPT_EXPORT_NAME, name, NBD_MAX_STRING + 1);
    /* EXPORT_NAME cannot carry an error: the server must close. */
    if (expect_hangup(c.fd, "EXPORT_NAME of 4097 bytes"))
        fail("the server answered an EXPORT_NAME it cannot satisfy");
    free(name);
}

static void a_opt_len_max(void)
{
    struct conn c = { .fd = xconnect() };
    uint8_t junk[4096] = { 0 };
    greet(&c, NBD_FLAG_C_FIXED_NEWSTYLE);
    opt_send(&c, NBD_OPT_GO, NULL, 0xffffffffu);
    wr(c.fd, junk, sizeof junk);
    expect_hangup(c.fd, "an option of 0xffffffff bytes");
}

static void a_opt_unknown_big(void)
{
    struct conn c = { .fd = xconnect() };
    uint8_t *junk = calloc(1, 60000);
    greet(&c, NBD_FLAG_C_FIXED_NEWSTYLE);
    want_error(opt_do(&c, 0x4242, junk, 60000, NULL), NBD_REP_ERR_UNSUP,
               "an unknown option with 60000 bytes");
    free(junk);
    /* Its data was consumed: the next option is understood. */
    want_error(opt_do(&c, NBD_OPT_LIST, "x", 1, NULL), NBD_REP_ERR_INVALID, "LIST with data");
    do_go(&c);
    req(&c, 0, NBD_CMD_DISC, 1, 0, 0, NULL, 0);
    expect_hangup(c.fd, "after DISC");
}

static void a_cflags(void)
{
    struct conn c = { .fd = xconnect() };
    greet(&c, 0x80000001u | NBD_FLAG_C_NO_ZEROES);
    opt_send(&c, NBD_OPT_LIST, NULL, 0);
    if (expect_hangup(c.fd, "unknown client flags"))
        fail("the server answered a client with unknown flags");
}

static void a_request_before_go(void)
{
    struct conn c = { .fd = xconnect() };
    greet(&c, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    req(&c, 0, NBD_CMD_READ, 1, 0, 4096, NULL, 0);
    req(&c, 0, NBD_CMD_READ, 2, 0, 4096, NULL, 0);
    if (expect_hangup(c.fd, "requests during the handshake"))
        fail("the server answered requests sent during the handshake");
}

static void a_garbage(void)
{
    int fd = xconnect();
    uint8_t junk[8192];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof junk; i++) {
        x = x * 1103515245 + 12345;
        junk[i] = (uint8_t)(x >> 16);
    }
    wr(fd, junk, sizeof junk);
    expect_hangup(fd, "8 KiB of garbage");
}

static void a_garbage_after_go(void)
{
    struct conn c;
    uint8_t junk[8192];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 7 + 3);
    setup(&c, false, NULL, 0);
    wr(c.fd, junk, sizeof junk);
    expect_hangup(c.fd, "garbage in transmission");
}

static void a_many_options(void)
{
    struct conn c = { .fd = xconnect() };
    greet(&c, NBD_FLAG_C_FIXED_NEWSTYLE);
    for (int i = 0; i < 100000; i++) {
        uint32_t t = opt_do(&c, 0x4242, NULL, 0, NULL);
        if (t == 0) {
            note("the server hung up after %d options", i);
            close(c.fd);
            return;
        }
        if (t != NBD_REP_ERR_UNSUP)
            fail("unknown option answered 0x%x", t);
    }
    fail("the server took 100000 options on one connection");
}

static void a_meta_bad(void)
{
    struct conn c = { .fd = xconnect() };
    uint8_t d[64];
    uint32_t mlen, ilen, ulen;
    greet(&c, NBD_FLAG_C_FIXED_NEWSTYLE);
    const char *q[] = { "base:allocation" };
    uint8_t *m = meta_data(export_name, q, 1, &mlen);
    want_error(opt_do(&c, NBD_OPT_SET_META_CONTEXT, m, mlen, NULL), NBD_REP_ERR_INVALID,
               "SET_META_CONTEXT before STRUCTURED_REPLY");
    if (opt_do(&c, NBD_OPT_STRUCTURED_REPLY, NULL, 0, NULL) != NBD_REP_ACK)
        fail("STRUCTURED_REPLY refused");
    want_error(opt_do(&c, NBD_OPT_STRUCTURED_REPLY, NULL, 0, NULL), 0, "a second STRUCTURED_REPLY");
    /* A query count far beyond the data. */
    put32(d, 0);
    put32(d + 4, 0xffffffffu);
    want_error(opt_do(&c, NBD_OPT_SET_META_CONTEXT, d, 8, NULL), 0, "2^32-1 queries in 8 bytes");
    put32(d + 4, 200);
    want_error(opt_do(&c, NBD_OPT_LIST_META_CONTEXT, d, 8, NULL), 0, "LIST: 200 queries in 8 bytes");
    /* A query length past the data. */
    put32(d + 4, 1);
    put32(d + 8, 0xfffffff0u);
    memcpy(d + 12, "base:allocation", 15);
    want_error(opt_do(&c, NBD_OPT_SET_META_CONTEXT, d, 27, NULL), 0, "a query length past the data");
    want_error(opt_do(&c, NBD_OPT_LIST_META_CONTEXT, d, 27, NULL), 0,
               "LIST: a query length past the data");
    /* An export name length past the data. */
    put32(d, 0x7fffffffu);
    want_error(opt_do(&c, NBD_OPT_SET_META_CONTEXT, d, 8, NULL), 0, "a name length past the data");
    /* INFO with an info count past the data. */
    uint8_t *i = info_data(export_name, (uint32_t)strlen(export_name), &ilen);
    put16(i + 4 + strlen(export_name), 0xffff);
    want_error(opt_do(&c, NBD_OPT_INFO, i, ilen, NULL), 0, "INFO with 65535 info requests in 2 bytes");
    /* INFO shorter than its fixed part. */
    want_error(opt_do(&c, NBD_OPT_INFO, i, 3, NULL), 0, "INFO of 3 bytes");
    /* A name with a NUL byte. */
    uint8_t nul[12] = { 0, 0, 0, 4, 'v', 0, 'm', '1', 0, 0 };
    want_error(opt_do(&c, NBD_OPT_GO, nul, 10, NULL), 0, "GO for a name with a NUL byte");
    /* No such export. */
    uint8_t *u = info_data("no-such-disk@1", 14, &ulen);
    want_error(opt_do(&c, NBD_OPT_GO, u, ulen, NULL), NBD_REP_ERR_UNKNOWN, "GO for no-such-disk@1");
    /* The session is still good: the context, then GO. */
    c.nctx = 0;
    if (opt_do(&c, NBD_OPT_SET_META_CONTEXT, m, mlen, on_meta) != NBD_REP_ACK || c.nctx != 1)
        fail("SET_META_CONTEXT after the refusals");
    free(m);
    free(i);
    free(u);
    do_go(&c);
    still_serves(&c);
}

static void a_starttls(void)
{
    struct conn c = { .fd = xconnect() };
    greet(&c, NBD_FLAG_C_FIXED_NEWSTYLE);
    want_error(opt_do(&c, NBD_OPT_STARTTLS, NULL, 0, NULL), 0, "STARTTLS without TLS configured");
    do_go(&c);
    c.ext = false;
    req(&c, 0, NBD_CMD_DISC, 1, 0, 0, NULL, 0);
    expect_hangup(c.fd, "after DISC");
}

static void a_abort(void)
{
    struct conn c = { .fd = xconnect() };
    greet(&c, NBD_FLAG_C_FIXED_NEWSTYLE);
    if (opt_do(&c, NBD_OPT_ABORT, NULL, 0, NULL) != NBD_REP_ACK)
        fail("ABORT not acknowledged");
    expect_hangup(c.fd, "after ABORT");
}

/* ---- Attacks: transmission ------------------------------------------------------------ */

static const char *const two_ctx[] = { "base:allocation", "qemu:allocation-depth" };

static void a_bs_bounds(void)
{
    struct conn c;
    setup(&c, false, two_ctx, 2);
    uint64_t s = c.size;
    req(&c, 0, NBD_CMD_BLOCK_STATUS, 1, s - 512, 0xffffffffu, NULL, 0);
    /* Either refused, or answered within the export. */
    struct reply r = { 0 };
    for (;;) {
        if (reply(&c, &r))
            fail("hung up on BLOCK_STATUS of 0xffffffff bytes at the end");
        if (r.simple || (r.type & NBD_REPLY_TYPE_ERROR_BIT)) {
            note("BLOCK_STATUS 0xffffffff bytes at size-512: error %u", r.err);
        } else if (r.type == NBD_REPLY_TYPE_BLOCK_STATUS) {
            uint64_t sum = 0;
            for (uint64_t i = 4; i + 8 <= r.len; i += 8)
                sum += get32(r.p + i);
            if (sum > 512)
                fail("extents of %llu bytes past offset size-512", (unsigned long long)sum);
        } else {
            fail("a chunk of type %u to BLOCK_STATUS", r.type);
        }
        if (r.simple || (r.flags & NBD_REPLY_FLAG_DONE))
            break;
    }
    free(r.p);
    req(&c, 0, NBD_CMD_BLOCK_STATUS, 2, s, 1, NULL, 0);
    expect_error(&c, 2, NBD_EINVAL, "BLOCK_STATUS at the end of the export");
    req(&c, 0, NBD_CMD_BLOCK_STATUS, 3, s - 4096, 8192, NULL, 0);
    expect_error(&c, 3, NBD_EINVAL, "BLOCK_STATUS across the end of the export");
    req(&c, 0, NBD_CMD_BLOCK_STATUS, 4, UINT64_MAX - 100, 4096, NULL, 0);
    expect_error(&c, 4, NBD_EINVAL, "BLOCK_STATUS whose offset+length wraps");
    req(&c, 0, NBD_CMD_BLOCK_STATUS, 5, 0, 0, NULL, 0);
    expect_error(&c, 5, NBD_EINVAL, "BLOCK_STATUS of length 0");
    still_serves(&c);
}

static void a_bs_no_context(void)
{
    struct conn c;
    setup(&c, false, NULL, 0);
    req(&c, 0, NBD_CMD_BLOCK_STATUS, 1, 0, 4096, NULL, 0);
    expect_error(&c, 1, NBD_EINVAL, "BLOCK_STATUS without a context");
    still_serves(&c);
}

static void a_read_bounds(void)
{
    struct conn c;
    setup(&c, false, NULL, 0);
    req(&c, 0, NBD_CMD_READ, 1, 0, (32u << 20) + 1, NULL, 0);
    expect_error(&c, 1, NBD_EINVAL, "READ of 32 MiB + 1");
    req(&c, 0, NBD_CMD_READ, 2, 0, 0xffffffffu, NULL, 0);
    expect_error(&c, 2, NBD_EINVAL, "READ of 4 GiB - 1");
    req(&c, 0, NBD_CMD_READ, 3, c.size - 100, 4096, NULL, 0);
    expect_error(&c, 3, NBD_EINVAL, "READ across the end");
    req(&c, 0, NBD_CMD_READ, 4, UINT64_MAX - 10, 4096, NULL, 0);
    expect_error(&c, 4, NBD_EINVAL, "READ whose offset+length wraps");
    req(&c, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_READ, 5, 0, 4096, NULL, 0);
    expect_error(&c, 5, NBD_EINVAL, "READ with REQ_ONE");
    req(&c, 0x8000, NBD_CMD_READ, 6, 0, 4096, NULL, 0);
    expect_error(&c, 6, NBD_EINVAL, "READ with an unknown flag");
    req(&c, 0, 0x99, 7, 0, 4096, NULL, 0);
    expect_error(&c, 7, NBD_EINVAL, "command 0x99");
    req(&c, 0, NBD_CMD_RESIZE, 8, 0, 4096, NULL, 0);
    expect_error(&c, 8, NBD_EINVAL, "NBD_CMD_RESIZE");
    req(&c, NBD_CMD_FLAG_DF, NBD_CMD_READ, 9, 0, 65537, NULL, 0);
    expect_error(&c, 9, NBD_EOVERFLOW, "a DF READ of 64 KiB + 1");
    req(&c, 0, NBD_CMD_READ, 10, 0, 0, NULL, 0);
    expect_error(&c, 10, NBD_EINVAL, "READ of length 0");
    still_serves(&c);
}

static void a_read_ext(void)
{
    struct conn c;
    setup(&c, true, NULL, 0);
    req(&c, 0, NBD_CMD_READ, 1, 0, UINT64_C(1) << 40, NULL, 0);
    expect_error(&c, 1, NBD_EINVAL, "extended READ of 1 TiB");
    /* A READ carrying a payload: consumed, and failed with EINVAL. */
    uint8_t junk[16] = { 0 };
    req(&c, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_READ, 2, 0, sizeof junk, junk, sizeof junk);
    expect_error(&c, 2, NBD_EINVAL, "READ with a payload");
    req(&c, 0, NBD_CMD_BLOCK_STATUS, 3, 0, UINT64_MAX, NULL, 0);
    expect_error(&c, 3, NBD_EINVAL, "extended BLOCK_STATUS of 2^64-1 bytes (no context)");
    still_serves(&c);
}

static void a_write_refused(void)
{
    struct conn c;
    setup(&c, false, NULL, 0);
    uint8_t *buf = calloc(1, 1 << 20);
    req(&c, 0, NBD_CMD_WRITE, 1, 0, 1 << 20, buf, 1 << 20);
    expect_error(&c, 1, NBD_EPERM, "WRITE of 1 MiB");
    req(&c, NBD_CMD_FLAG_FUA, NBD_CMD_WRITE, 2, 0, 4096, buf, 4096);
    expect_error(&c, 2, 0, "WRITE with FUA");
    req(&c, 0, NBD_CMD_WRITE_ZEROES, 3, 0, 4096, NULL, 0);
    expect_error(&c, 3, NBD_EPERM, "WRITE_ZEROES");
    req(&c, 0, NBD_CMD_TRIM, 4, 0, 4096, NULL, 0);
    expect_error(&c, 4, NBD_EPERM, "TRIM");
    free(buf);
    still_serves(&c);
}

static void a_write_huge(void)
{
    struct conn c;
    setup(&c, false, NULL, 0);
    /* A payload claim over 64 MiB, no payload sent. */
    req(&c, 0, NBD_CMD_WRITE, 1, 0, (64u << 20) + 4096, NULL, 0);
    expect_hangup(c.fd, "WRITE claiming 64 MiB + 4 KiB");
}

static void a_write_huge_ext(void)
{
    struct conn c;
    setup(&c, true, NULL, 0);
    req(&c, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_WRITE, 1, 0, UINT64_C(1) << 62, NULL, 0);
    expect_hangup(c.fd, "extended WRITE claiming 2^62 bytes");
}

static void a_mid_request(void)
{
    struct conn c;
    /* Half a request header, then gone. */
    setup(&c, false, NULL, 0);
    uint8_t h[14] = { 0x25, 0x60, 0x95, 0x13 };
    wr(c.fd, h, sizeof h);
    close(c.fd);
    /* A large READ, then gone before the reply. */
    setup(&c, false, NULL, 0);
    req(&c, 0, NBD_CMD_READ, 1, 0, 8u << 20, NULL, 0);
    close(c.fd);
    /* A WRITE with half its payload, then gone. */
    setup(&c, false, NULL, 0);
    uint8_t *buf = calloc(1, 65536);
    req(&c, 0, NBD_CMD_WRITE, 1, 0, 131072, buf, 65536);
    close(c.fd);
    /* Between options, in an option's data, in the greeting. */
    c.fd = xconnect();
    greet(&c, NBD_FLAG_C_FIXED_NEWSTYLE);
    opt_send(&c, NBD_OPT_GO, NULL, 100);
    close(c.fd);
    c.fd = xconnect();
    close(c.fd);
    /* Many READs pipelined, then gone without reading a reply. */
    setup(&c, true, NULL, 0);
    for (int i = 0; i < 64; i++)
        req(&c, 0, NBD_CMD_READ, (uint64_t)i, 0, 1u << 20, NULL, 0);
    close(c.fd);
    free(buf);
    note("five clients left in the middle of something");
}

/* The pipelined requests, sent by a thread of their own while the main
 * thread reads the replies (a client that writes everything before reading
 * deadlocks against any server once the socket buffers are full). */
enum { PIPELINE_N = 100 };

static void *pipeline_writer(void *opaque)
{
    struct conn *c = opaque;
    for (int i = 0; i < PIPELINE_N; i++) {
        int r;
        if (i % 3 == 2)
            r = req(c, 0, NBD_CMD_BLOCK_STATUS, (uint64_t)i, 0, (uint32_t)c->size, NULL, 0);
        else
            r = req(c, i % 3 ? NBD_CMD_FLAG_DF : 0, NBD_CMD_READ, (uint64_t)i, (uint64_t)i * 4096,
                    65536, NULL, 0);
        if (r)
            return NULL;
    }
    req(c, 0, NBD_CMD_DISC, PIPELINE_N, 0, 0, NULL, 0);
    return NULL;
}

static void a_pipeline(void)
{
    struct conn c;
    setup(&c, false, two_ctx, 2);
    /* 100 requests in flight, then DISC: every one answered exactly once. */
    int seen[PIPELINE_N] = { 0 };
    pthread_t t;
    if (pthread_create(&t, NULL, pipeline_writer, &c))
        fail("pthread_create");
    struct reply r = { 0 };
    int done = 0;
    while (done < PIPELINE_N) {
        if (reply(&c, &r))
            fail("hung up with %d requests unanswered", PIPELINE_N - done);
        if (r.cookie >= PIPELINE_N)
            fail("a reply for cookie %llu", (unsigned long long)r.cookie);
        if (r.simple || (r.type & NBD_REPLY_TYPE_ERROR_BIT))
            fail("request %llu failed (%u)", (unsigned long long)r.cookie, r.err);
        if (r.flags & NBD_REPLY_FLAG_DONE) {
            if (seen[r.cookie]++)
                fail("cookie %llu finished twice", (unsigned long long)r.cookie);
            done++;
        }
    }
    free(r.p);
    pthread_join(t, NULL);
    expect_hangup(c.fd, "after the pipelined requests and DISC");
}

static void a_filter_bad(void)
{
    struct conn c;
    setup(&c, true, two_ctx, 2);
    if (!(c.eflags & NBD_FLAG_BLOCK_STAT_PAYLOAD))
        fail("no NBD_FLAG_BLOCK_STAT_PAYLOAD with extended headers");
    uint8_t p[64];
    put64(p, 65536);
    put32(p + 8, 0xdeadbeef);
    req(&c, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 1, 0, 12, p, 12);
    expect_error(&c, 1, NBD_EINVAL, "payload filter with an unknown context id");
    put32(p + 8, c.ids[0]);
    put32(p + 12, c.ids[0]);
    req(&c, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 2, 0, 16, p, 16);
    expect_error(&c, 2, NBD_EINVAL, "payload filter with a duplicate id");
    req(&c, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 3, 0, 5, p, 5);
    expect_error(&c, 3, NBD_EINVAL, "payload filter of 5 bytes");
    req(&c, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 4, 0, 8, p, 8);
    expect_error(&c, 4, NBD_EINVAL, "payload filter without ids");
    uint8_t *big = calloc(1, 1 << 20);
    req(&c, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 5, 0, 1 << 20, big, 1 << 20);
    expect_error(&c, 5, NBD_EINVAL, "payload filter of 1 MiB");
    free(big);
    put64(p, c.size + 1);
    put32(p + 8, c.ids[1]);
    req(&c, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 6, 0, 12, p, 12);
    expect_error(&c, 6, NBD_EINVAL, "payload filter with an effect length past the end");
    /* Both ids: one chunk each. */
    put64(p, c.size);
    put32(p + 8, c.ids[1]);
    put32(p + 12, c.ids[0]);
    req(&c, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 7, 0, 16, p, 16);
    struct reply r = { 0 };
    int got[2] = { 0, 0 };
    for (;;) {
        if (reply(&c, &r))
            fail("hung up");
        if (r.type != NBD_REPLY_TYPE_BLOCK_STATUS_EXT || r.len < 24)
            fail("filter of two ids: a chunk of type %u", r.type);
        uint32_t id = get32(r.p);
        if (id == c.ids[0])
            got[0]++;
        else if (id == c.ids[1])
            got[1]++;
        else
            fail("a chunk for context %u", id);
        if (r.flags & NBD_REPLY_FLAG_DONE)
            break;
    }
    free(r.p);
    if (got[0] != 1 || got[1] != 1)
        fail("filter of two ids: %d and %d chunks", got[0], got[1]);
    still_serves(&c);
}

/* ---- ext-map and idle ------------------------------------------------------------------ */

static int ext_map(const char *context)
{
    struct conn c;
    setup(&c, true, (const char *const[]){ NULL }, 0);
    if (!(c.eflags & NBD_FLAG_BLOCK_STAT_PAYLOAD))
        fail("no NBD_FLAG_BLOCK_STAT_PAYLOAD with extended headers");
    size_t k;
    for (k = 0; k < c.nctx && strcmp(c.names[k], context); k++)
        ;
    if (k == c.nctx)
        fail("the export offers no context %s", context);
    fprintf(stderr, "ext-map: %zu contexts, %s has id %u\n", c.nctx, context, c.ids[k]);
    uint64_t off = 0, run_off = 0, run_len = 0, run_flags = 0;
    uint64_t cookie = 1;
    while (off < c.size) {
        uint8_t p[12];
        put64(p, c.size - off);
        put32(p + 8, c.ids[k]);
        if (req(&c, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, cookie, off, 12, p, 12))
            fail("hung up");
        struct reply r = { 0 };
        if (reply(&c, &r))
            fail("hung up");
        if (r.cookie != cookie || r.type != NBD_REPLY_TYPE_BLOCK_STATUS_EXT ||
            !(r.flags & NBD_REPLY_FLAG_DONE))
            fail("expected one BLOCK_STATUS_EXT chunk with DONE (type %u flags %u)", r.type, r.flags);
        if (r.off != off)
            fail("the reply header names offset %llu, not %llu", (unsigned long long)r.off,
                 (unsigned long long)off);
        if (r.len < 24 || get32(r.p) != c.ids[k] || r.len != 8 + 16 * (uint64_t)get32(r.p + 4))
            fail("a malformed or foreign status chunk (id %u, %llu bytes)", get32(r.p),
                 (unsigned long long)r.len);
        uint32_t n = get32(r.p + 4);
        for (uint32_t i = 0; i < n && off < c.size; i++) {
            uint64_t len = get64(r.p + 8 + 16 * i), fl = get64(r.p + 16 + 16 * i);
            if (!len)
                fail("an extent of length 0");
            if (len > c.size - off)
                fail("an extent past the end of the export");
            if (run_len && fl == run_flags) {
                run_len += len;
            } else {
                if (run_len)
                    printf("%llu %llu %llu\n", (unsigned long long)run_off,
                           (unsigned long long)run_len, (unsigned long long)run_flags);
                run_off = off;
                run_len = len;
                run_flags = fl;
            }
            off += len;
        }
        free(r.p);
        cookie++;
    }
    if (run_len)
        printf("%llu %llu %llu\n", (unsigned long long)run_off, (unsigned long long)run_len,
               (unsigned long long)run_flags);
    fprintf(stderr, "ext-map: %llu requests\n", (unsigned long long)cookie - 1);
    req(&c, 0, NBD_CMD_DISC, cookie, 0, 0, NULL, 0);
    close(c.fd);
    return 0;
}

/* SET_META_CONTEXT, then wait for file to exist (the test prunes points
 * meanwhile), then GO and map the context.  Prints "refused N" when the
 * block status fails, else the extents (merged) of the announced id. */
static int race_set_go(const char *context, const char *file)
{
    struct conn c;
    uint32_t len;
    memset(&c, 0, sizeof c);
    c.fd = xconnect();
    greet(&c, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    if (opt_do(&c, NBD_OPT_STRUCTURED_REPLY, NULL, 0, NULL) != NBD_REP_ACK)
        fail("STRUCTURED_REPLY refused");
    uint8_t *d = meta_data(export_name, &context, 1, &len);
    if (opt_do(&c, NBD_OPT_SET_META_CONTEXT, d, len, on_meta) != NBD_REP_ACK || c.nctx != 1)
        fail("SET_META_CONTEXT %s failed", context);
    free(d);
    fprintf(stderr, "race: %s has id %u; waiting for %s\n", context, c.ids[0], file);
    for (int i = 0; access(file, F_OK) < 0; i++) {
        if (i == 200)
            fail("%s did not appear", file);
        usleep(25000);
    }
    do_go(&c);
    uint64_t off = 0, run_off = 0, run_len = 0, run_flags = 0, cookie = 1;
    while (off < c.size) {
        uint64_t len32 = c.size - off > 0xfffff000u ? 0xfffff000u : c.size - off;
        req(&c, 0, NBD_CMD_BLOCK_STATUS, cookie, off, len32, NULL, 0);
        struct reply r = { 0 };
        uint64_t got = 0;
        for (;;) {
            if (reply(&c, &r))
                fail("hung up");
            if (r.cookie != cookie)
                fail("a reply for cookie %llu", (unsigned long long)r.cookie);
            if (r.simple || (r.type & NBD_REPLY_TYPE_ERROR_BIT)) {
                printf("refused %u\n", r.err);
                free(r.p);
                close(c.fd);
                return 0;
            }
            if (r.type != NBD_REPLY_TYPE_BLOCK_STATUS || r.len < 12 || (r.len - 4) % 8)
                fail("a chunk of type %u", r.type);
            if (get32(r.p) != c.ids[0])
                fail("a status chunk for context id %u; %s was given id %u", get32(r.p), context,
                     c.ids[0]);
            for (uint64_t i = 4; i < r.len && off + got < c.size; i += 8) {
                uint64_t l = get32(r.p + i), fl = get32(r.p + i + 4);
                if (!l)
                    fail("an extent of length 0");
                if (l > c.size - off - got)
                    l = c.size - off - got;
                if (run_len && fl == run_flags) {
                    run_len += l;
                } else {
                    if (run_len)
                        printf("%llu %llu %llu\n", (unsigned long long)run_off,
                               (unsigned long long)run_len, (unsigned long long)run_flags);
                    run_off = off + got;
                    run_len = l;
                    run_flags = fl;
                }
                got += l;
            }
            if (r.flags & NBD_REPLY_FLAG_DONE)
                break;
        }
        free(r.p);
        off += got;
        cookie++;
    }
    if (run_len)
        printf("%llu %llu %llu\n", (unsigned long long)run_off, (unsigned long long)run_len,
               (unsigned long long)run_flags);
    close(c.fd);
    return 0;
}

/* The whole export in one READ (at most 32 MiB) to stdout; mode "simple"
 * (no structured replies), "structured", "extended" or "df" (structured,
 * DF: one chunk, so at most 64 KiB at a time). */
static int dump(const char *mode)
{
    struct conn c;
    bool simple = !strcmp(mode, "simple"), df = !strcmp(mode, "df");
    if (simple) {
        memset(&c, 0, sizeof c);
        c.fd = xconnect();
        greet(&c, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
        do_go(&c);
    } else {
        setup(&c, !strcmp(mode, "extended"), NULL, 0);
    }
    if (c.size > 32u << 20)
        fail("the export is over 32 MiB");
    uint8_t *buf = malloc(c.size);
    uint64_t step = df ? 65536 : c.size;
    for (uint64_t off = 0, k = 1; off < c.size; off += step, k++) {
        uint32_t n = (uint32_t)(c.size - off < step ? c.size - off : step);
        if (!simple) {
            if (df) {
                struct reply r = { 0 };
                req(&c, NBD_CMD_FLAG_DF, NBD_CMD_READ, k, off, n, NULL, 0);
                if (reply(&c, &r) || r.type != NBD_REPLY_TYPE_OFFSET_DATA ||
                    !(r.flags & NBD_REPLY_FLAG_DONE) || r.len != 8 + (uint64_t)n || get64(r.p) != off)
                    fail("a DF read not answered with one data chunk");
                memcpy(buf + off, r.p + 8, n);
                free(r.p);
            } else {
                read_ok(&c, k, off, n, buf + off);
            }
            continue;
        }
        struct reply r = { 0 };
        req(&c, 0, NBD_CMD_READ, k, off, n, NULL, 0);
        if (reply(&c, &r) || !r.simple || r.cookie != k)
            fail("no simple reply");
        if (r.err)
            fail("READ failed with %u", r.err);
        if (rd(c.fd, buf + off, n))
            fail("hung up in the data of a simple reply");
    }
    fwrite(buf, 1, c.size, stdout);
    free(buf);
    req(&c, 0, NBD_CMD_DISC, 0, 0, 0, NULL, 0);
    close(c.fd);
    return 0;
}

static int idle(int n, int seconds)
{
    int *fds = calloc((size_t)n, sizeof *fds);
    for (int i = 0; i < n; i++)
        fds[i] = xconnect();
    printf("holding %d connections\n", n);
    fflush(stdout);
    sleep((unsigned)seconds);
    int closed = 0;
    for (int i = 0; i < n; i++) {
        char b[64];
        struct pollfd p = { fds[i], POLLIN, 0 };
        /* Evicted connections read EOF (after their greeting). */
        while (poll(&p, 1, 0) > 0) {
            ssize_t k = recv(fds[i], b, sizeof b, 0);
            if (k <= 0) {
                closed++;
                break;
            }
        }
        close(fds[i]);
    }
    printf("the server closed %d of %d idle connections\n", closed, n);
    free(fds);
    return 0;
}

static const struct {
    const char *name;
    void (*fn)(void);
} attacks[] = {
    { "name-go", a_name_go },
    { "name-info", a_name_info },
    { "name-export-name", a_name_export_name },
    { "opt-len-max", a_opt_len_max },
    { "opt-unknown-big", a_opt_unknown_big },
    { "client-flags", a_cflags },
    { "request-before-go", a_request_before_go },
    { "garbage", a_garbage },
    { "garbage-after-go", a_garbage_after_go },
    { "many-options", a_many_options },
    { "meta-bad", a_meta_bad },
    { "starttls", a_starttls },
    { "abort", a_abort },
    { "bs-bounds", a_bs_bounds },
    { "bs-no-context", a_bs_no_context },
    { "read-bounds", a_read_bounds },
    { "read-ext", a_read_ext },
    { "write-refused", a_write_refused },
    { "write-huge", a_write_huge },
    { "write-huge-ext", a_write_huge_ext },
    { "mid-request", a_mid_request },
    { "pipeline", a_pipeline },
    { "filter-bad", a_filter_bad },
};

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "list")) {
        for (size_t i = 0; i < sizeof attacks / sizeof *attacks; i++)
            puts(attacks[i].name);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "idle")) {
        attack = "idle";
        where = argv[2];
        return idle(atoi(argv[3]), atoi(argv[4]));
    }
    if (argc == 5 && !strcmp(argv[1], "ext-map")) {
        attack = "ext-map";
        where = argv[2];
        export_name = argv[3];
        return ext_map(argv[4]);
    }
    if (argc == 5 && !strcmp(argv[1], "dump")) {
        attack = "dump";
        where = argv[2];
        export_name = argv[3];
        return dump(argv[4]);
    }
    if (argc == 6 && !strcmp(argv[1], "race-set-go")) {
        attack = "race-set-go";
        where = argv[2];
        export_name = argv[3];
        return race_set_go(argv[4], argv[5]);
    }
    if (argc == 4) {
        for (size_t i = 0; i < sizeof attacks / sizeof *attacks; i++) {
            if (!strcmp(argv[1], attacks[i].name)) {
                attack = argv[1];
                where = argv[2];
                export_name = argv[3];
                attacks[i].fn();
                note("ok");
                return 0;
            }
        }
    }
    fprintf(stderr, "usage: hostile-client list | ATTACK SOCKET EXPORT | idle SOCKET N SECONDS |\n"
                    "       ext-map SOCKET EXPORT CONTEXT | race-set-go SOCKET EXPORT CONTEXT FILE |\n"
                    "       dump SOCKET EXPORT simple|structured|extended|df\n");
    return 2;
}
