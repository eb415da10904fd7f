/* handshake.c: connecting and the fixed-newstyle negotiation (client side).
 *
 * The handshake runs on a blocking socket with a deadline: one option in
 * flight, each reply read whole and checked by the codec.  TLS required
 * (nbds://) never falls back: an oldstyle or non-fixed server, or any reply
 * to STARTTLS but an ACK, ends the connection.  Everything negotiated before
 * STARTTLS is forgotten.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "error.h"
#include "internal.h"

#define DEFAULT_HANDSHAKE_TIMEOUT_MS 30000

/* ---- Sockets ------------------------------------------------------------ */

static int connect_with_timeout(int fd, const struct sockaddr *sa, socklen_t len, int timeout_ms)
{
    int flags = fcntl(fd, F_GETFL);

    if (fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -1;
    if (connect(fd, sa, len) < 0) {
        if (errno != EINPROGRESS)
            return -1;
        struct pollfd p = { .fd = fd, .events = POLLOUT };
        int r;
        do
            r = poll(&p, 1, timeout_ms > 0 ? timeout_ms : -1);
        while (r < 0 && errno == EINTR);
        if (r == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (r < 0)
            return -1;
        int err = 0;
        socklen_t elen = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
            return -1;
        if (err) {
            errno = err;
            return -1;
        }
    }
    return fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
}

static int open_socket(struct nbd_conn *c, int timeout_ms)
{
    const struct nbd_uri *u = &c->uri;
    int fd, err;

    if (u->transport == NBD_TRANSPORT_UNIX) {
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        if (strlen(u->socket) >= sizeof sun.sun_path) {
            nbd_set_error(ENAMETOOLONG, "socket path %s is too long", u->socket);
            return -1;
        }
        strcpy(sun.sun_path, u->socket);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect_with_timeout(fd, (struct sockaddr *)&sun, sizeof sun, timeout_ms) < 0) {
            err = errno;
            if (fd >= 0)
                close(fd);
            nbd_set_error(err, "connect to %s: %s", u->socket, strerror(err));
            return -1;
        }
        return fd;
    }
    if (u->transport == NBD_TRANSPORT_VSOCK) {
        struct sockaddr_vm svm = { .svm_family = AF_VSOCK };
        char *end;
        svm.svm_cid = (unsigned)strtoul(u->host ? u->host : "", &end, 10);
        svm.svm_port = u->port ? (unsigned)strtoul(u->port, NULL, 10) : NBD_DEFAULT_PORT;
        fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect_with_timeout(fd, (struct sockaddr *)&svm, sizeof svm, timeout_ms) < 0) {
            err = errno;
            if (fd >= 0)
                close(fd);
            nbd_set_error(err, "connect to vsock %s: %s", u->host ? u->host : "", strerror(err));
            return -1;
        }
        return fd;
    }

    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG };
    struct addrinfo *res, *ai;
    char portbuf[16];
    const char *port = u->port;
    if (!port) {
        snprintf(portbuf, sizeof portbuf, "%d", NBD_DEFAULT_PORT);
        port = portbuf;
    }
    int r = getaddrinfo(u->host, port, &hints, &res);
    if (r) {
        nbd_set_error(EHOSTUNREACH, "resolve %s:%s: %s", u->host, port, gai_strerror(r));
        return -1;
    }
    err = ECONNREFUSED;
    fd = -1;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect_with_timeout(fd, ai->ai_addr, ai->ai_addrlen, timeout_ms) == 0)
            break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        nbd_set_error(err, "connect to %s:%s: %s", u->host, port, strerror(err));
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* ---- Option exchange ---------------------------------------------------- */

static void sanitize(char *dst, size_t cap, const uint8_t *src, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; i < len && j + 1 < cap; i++)
        dst[j++] = (src[i] >= 0x20 && src[i] < 0x7f) ? (char)src[i] : '?';
    dst[j] = 0;
}

typedef int (*reply_fn)(struct nbd_conn *c, const struct nbd_opt_reply *r,
                        const uint8_t *payload, void *arg);

/* Sends one option and reads its replies until the final one.  Returns 0
 * on ACK, the error reply type (> 0, message in *errmsg) on an error reply,
 * -1 on a failure that kills the connection. */
static int64_t opt_exchange(struct nbd_conn *c, struct nbd_wbuf *msg, uint32_t opt,
                            reply_fn fn, void *arg, char *errmsg, size_t errcap)
{
    uint8_t hdr[20];
    uint8_t *payload = NULL;
    struct nbd_opt_reply r;
    int64_t ret = -1;

    if (errmsg && errcap)
        errmsg[0] = 0;
    if (nbd_sock_send_all(c->sock, msg->data, msg->len) < 0) {
        nbd_prefix_error("send %s: ", nbd_opt_name(opt));
        return -1;
    }
    for (;;) {
        if (nbd_sock_recv_all(c->sock, hdr, sizeof hdr) < 0) {
            nbd_prefix_error("reply to %s: ", nbd_opt_name(opt));
            goto out;
        }
        if (nbd_decode_opt_reply(hdr, opt, &r) < 0) {
            nbd_prefix_error("reply to %s: ", nbd_opt_name(opt));
            goto out;
        }
        free(payload);
        payload = malloc(r.length ? r.length : 1);
        if (!payload) {
            nbd_set_error(ENOMEM, "out of memory");
            goto out;
        }
        if (r.length && nbd_sock_recv_all(c->sock, payload, r.length) < 0) {
            nbd_prefix_error("reply to %s: ", nbd_opt_name(opt));
            goto out;
        }
        if (r.reply == NBD_REP_ACK) {
            ret = 0;
            goto out;
        }
        if (r.reply & NBD_REP_FLAG_ERROR) {
            if (errmsg)
                sanitize(errmsg, errcap, payload, r.length < 512 ? r.length : 512);
            ret = r.reply;
            goto out;
        }
        if (!fn || fn(c, &r, payload, arg) < 0) {
            if (!fn)
                nbd_set_error(EPROTO, "unexpected %s (%u) in reply to %s", nbd_rep_name(r.reply),
                              r.reply, nbd_opt_name(opt));
            goto out;
        }
    }
out:
    free(payload);
    return ret;
}

static void opt_error(uint32_t opt, int64_t rep, const char *msg, int err)
{
    nbd_set_error(err, "server refused %s with %s%s%s%s", nbd_opt_name(opt),
                  nbd_rep_name((uint32_t)rep), msg && *msg ? " (\"" : "", msg ? msg : "",
                  msg && *msg ? "\")" : "");
}

/* Option without data that only gets ACK or an error. */
static int64_t simple_opt(struct nbd_conn *c, uint32_t opt, char *errmsg, size_t cap)
{
    struct nbd_wbuf b = { 0 };
    int64_t r = -1;

    if (nbd_encode_opt(&b, opt, NULL, 0) == 0)
        r = opt_exchange(c, &b, opt, NULL, NULL, errmsg, cap);
    nbd_wbuf_free(&b);
    return r;
}

static void forget_negotiated(struct nbd_conn *c)
{
    c->structured = c->extended = false;
    for (size_t i = 0; i < c->ncontexts; i++)
        free(c->contexts[i].name);
    free(c->contexts);
    c->contexts = NULL;
    c->ncontexts = 0;
}

static int do_starttls(struct nbd_conn *c, bool required)
{
    char msg[256];
    int64_t r = simple_opt(c, NBD_OPT_STARTTLS, msg, sizeof msg);

    if (r < 0)
        return -1;
    if (r > 0) {
        if (required) {
            opt_error(NBD_OPT_STARTTLS, r, msg, ECONNREFUSED);
            nbd_prefix_error("TLS is required (nbds://) but ");
            return -1;
        }
        nbd_debug("server refused STARTTLS; going on without TLS");
        return 0;
    }
    struct nbd_tls_client_config cfg = {
        .certificates_dir = c->uri.tls_certificates,
        .psk_file = c->uri.tls_psk_file,
        .username = c->uri.user,
        .hostname = c->uri.transport == NBD_TRANSPORT_TCP
                        ? (c->uri.tls_hostname ? c->uri.tls_hostname : c->uri.host)
                        : c->uri.tls_hostname,
        .verify_peer = c->uri.tls_verify_peer != 0,
    };
    if (nbd_sock_starttls_client(c->sock, &cfg) < 0) {
        /* A failed TLS setup or handshake ends with a hard disconnect: the
         * session cannot carry an ABORT (nor a close_notify) any more. */
        c->negotiation_over = true;
        return -1;
    }
    c->tls = true;
    forget_negotiated(c);
    return 0;
}

/* The first option after STARTTLS failed: when the server closed or reset
 * the connection right after the TLS handshake, the likely reason is that
 * it verifies its clients (with TLS 1.3 the client's certificate is only
 * checked after the client's side of the handshake is over). */
static void tls_closed_hint(struct nbd_conn *c)
{
    const char *dir = c->uri.tls_certificates;
    int err = nbd_get_errno();
    char msg[1024], cert[4096], key[4096];

    if ((err != ECONNRESET && err != EPIPE) || c->uri.tls_psk_file)
        return;
    snprintf(msg, sizeof msg, "%s", nbd_get_error());
    snprintf(cert, sizeof cert, "%s/client-cert.pem", dir ? dir : "");
    snprintf(key, sizeof key, "%s/client-key.pem", dir ? dir : "");
    /* The client sends a certificate when it has both files (sock.c). */
    if (dir && access(cert, F_OK) == 0 && access(key, F_OK) == 0)
        nbd_set_error(err, "%s: the server closed the TLS session: did it reject our client "
                      "certificate %s?", msg, cert);
    else
        nbd_set_error(err, "%s: the server closed the TLS session: does it require a client "
                      "certificate (client-cert.pem / client-key.pem in the tls-certificates "
                      "directory)?", msg);
}

int nbd_handshake_start(struct nbd_conn *c)
{
    uint8_t greet[NBD_OLDSTYLE_GREETING_LEN];
    bool oldstyle;
    int timeout = c->opts.handshake_timeout_ms ? c->opts.handshake_timeout_ms
                                               : DEFAULT_HANDSHAKE_TIMEOUT_MS;
    enum nbd_tls_mode tls = c->uri.tls ? NBD_TLS_REQUIRE
                            : (c->opts.tls_allow && (c->uri.tls_certificates || c->uri.tls_psk_file))
                                ? NBD_TLS_ALLOW
                                : NBD_TLS_OFF;

    int fd = open_socket(c, timeout);
    if (fd < 0)
        return -1;
    c->sock = nbd_sock_new(fd);
    if (!c->sock) {
        close(fd);
        return -1;
    }
    nbd_sock_set_timeout(c->sock, timeout);

    if (nbd_sock_recv_all(c->sock, greet, 16) < 0) {
        nbd_prefix_error("greeting: ");
        return -1;
    }
    if (nbd_decode_greeting_magic(greet, &oldstyle) < 0)
        return -1;
    if (oldstyle) {
        if (tls == NBD_TLS_REQUIRE) {
            nbd_set_error(ECONNREFUSED, "TLS is required (nbds://) but the server speaks oldstyle NBD, "
                                        "which cannot do TLS");
            return -1;
        }
        if (nbd_sock_recv_all(c->sock, greet + 16, sizeof greet - 16) < 0) {
            nbd_prefix_error("oldstyle greeting: ");
            return -1;
        }
        c->protocol = "oldstyle";
        c->size = nbd_get64(greet + 16);
        c->eflags = (uint16_t)nbd_get32(greet + 24);
        if (c->size >= UINT64_C(1) << 63) {
            nbd_set_error(EPROTO, "export size %llu is 2^63 or more", (unsigned long long)c->size);
            return -1;
        }
        c->negotiation_over = true;
        c->in_transmission = true;
        return nbd_transmission_init(c);
    }
    if (nbd_sock_recv_all(c->sock, greet + 16, 2) < 0) {
        nbd_prefix_error("greeting: ");
        return -1;
    }
    c->gflags = nbd_decode_greeting_flags(greet);
    c->fixed = c->gflags & NBD_FLAG_FIXED_NEWSTYLE;
    c->no_zeroes = c->gflags & NBD_FLAG_NO_ZEROES;
    c->protocol = c->fixed ? "newstyle-fixed" : "newstyle";
    if (!c->fixed && tls == NBD_TLS_REQUIRE) {
        nbd_set_error(ECONNREFUSED, "TLS is required (nbds://) but the server does not speak "
                                    "fixed newstyle NBD");
        return -1;
    }
    uint8_t cflags[4];
    nbd_encode_client_flags(cflags, c->gflags & (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
    if (nbd_sock_send_all(c->sock, cflags, 4) < 0) {
        nbd_prefix_error("send client flags: ");
        return -1;
    }
    if (!c->fixed)
        return 0; /* only EXPORT_NAME is possible */

    if (tls != NBD_TLS_OFF && do_starttls(c, tls == NBD_TLS_REQUIRE) < 0)
        return -1;

    /* Whether the next option is the first one inside the TLS session. */
    bool first_in_tls = c->tls;
    if (!c->opts.no_structured_replies && !c->opts.no_extended_headers) {
        int64_t r = simple_opt(c, NBD_OPT_EXTENDED_HEADERS, NULL, 0);
        if (r < 0) {
            if (first_in_tls)
                tls_closed_hint(c);
            return -1;
        }
        first_in_tls = false;
        if (r == 0)
            c->extended = c->structured = true;
    }
    if (!c->structured && !c->opts.no_structured_replies) {
        int64_t r = simple_opt(c, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
        if (r < 0) {
            if (first_in_tls)
                tls_closed_hint(c);
            return -1;
        }
        c->structured = r == 0;
    }
    return 0;
}

/* ---- LIST, LIST_META_CONTEXT, INFO -------------------------------------- */

static int need_options(struct nbd_conn *c, const char *what)
{
    if (c->in_transmission || c->negotiation_over) {
        nbd_set_error(EINVAL, "%s: the negotiation is over", what);
        return -1;
    }
    if (!c->fixed) {
        nbd_set_error(ENOTSUP, "%s: the server does not speak fixed newstyle NBD", what);
        return -1;
    }
    return 0;
}

struct list_arg { nbd_list_fn fn; void *opaque; };

static int on_list_reply(struct nbd_conn *c, const struct nbd_opt_reply *r, const uint8_t *p, void *arg)
{
    struct list_arg *a = arg;
    const char *name, *desc;
    size_t nlen, dlen;

    if (r->reply != NBD_REP_SERVER) {
        nbd_set_error(EPROTO, "unexpected %s in reply to NBD_OPT_LIST", nbd_rep_name(r->reply));
        return -1;
    }
    if (nbd_decode_rep_server(p, r->length, &name, &nlen, &desc, &dlen) < 0)
        return -1;
    char *n = strndup(name, nlen), *d = strndup(desc, dlen);
    int ret = (n && d) ? a->fn(a->opaque, n, dlen ? d : NULL) : -1;
    free(n);
    free(d);
    return ret < 0 ? -1 : 0;
}

int nbd_opt_list(struct nbd_conn *c, nbd_list_fn fn, void *opaque)
{
    struct nbd_wbuf b = { 0 };
    struct list_arg a = { fn, opaque };
    char msg[256];
    int64_t r;

    if (need_options(c, "NBD_OPT_LIST") < 0)
        return -1;
    if (nbd_encode_opt(&b, NBD_OPT_LIST, NULL, 0) < 0)
        return -1;
    r = opt_exchange(c, &b, NBD_OPT_LIST, on_list_reply, &a, msg, sizeof msg);
    nbd_wbuf_free(&b);
    if (r > 0) {
        opt_error(NBD_OPT_LIST, r, msg, r == NBD_REP_ERR_UNSUP ? ENOTSUP : EPERM);
        return -1;
    }
    return r < 0 ? -1 : 0;
}

struct meta_arg {
    nbd_context_fn fn;
    void *opaque;
    bool set;                     /* SET: record the selection */
};

static int on_meta_reply(struct nbd_conn *c, const struct nbd_opt_reply *r, const uint8_t *p, void *arg)
{
    struct meta_arg *a = arg;
    uint32_t id;
    const char *name;
    size_t nlen;

    if (r->reply != NBD_REP_META_CONTEXT) {
        nbd_set_error(EPROTO, "unexpected %s in reply to a metadata context option",
                      nbd_rep_name(r->reply));
        return -1;
    }
    if (nbd_decode_rep_meta_context(p, r->length, &id, &name, &nlen) < 0)
        return -1;
    char *n = strndup(name, nlen);
    if (!n) {
        nbd_set_error(ENOMEM, "out of memory");
        return -1;
    }
    if (a->set) {
        for (size_t i = 0; i < c->ncontexts; i++) {
            if (c->contexts[i].id == id) {
                nbd_set_error(EPROTO, "server gave context id %u to both %s and %s", id,
                              c->contexts[i].name, n);
                free(n);
                return -1;
            }
        }
        if (c->ncontexts >= 1024) {
            nbd_set_error(EPROTO, "server selected more than 1024 metadata contexts");
            free(n);
            return -1;
        }
        struct context *nc = realloc(c->contexts, (c->ncontexts + 1) * sizeof *nc);
        if (!nc) {
            free(n);
            nbd_set_error(ENOMEM, "out of memory");
            return -1;
        }
        c->contexts = nc;
        c->contexts[c->ncontexts].id = id;
        c->contexts[c->ncontexts].name = n;
        c->ncontexts++;
        return 0;
    }
    int ret = a->fn ? a->fn(a->opaque, n) : 0;
    free(n);
    return ret < 0 ? -1 : 0;
}

int nbd_opt_list_meta_context(struct nbd_conn *c, const char *export_name,
                              const char *const *queries, nbd_context_fn fn, void *opaque)
{
    struct nbd_wbuf b = { 0 };
    struct meta_arg a = { fn, opaque, false };
    char msg[256];
    int64_t r;

    if (need_options(c, "NBD_OPT_LIST_META_CONTEXT") < 0)
        return -1;
    if (!c->structured) {
        nbd_set_error(ENOTSUP, "metadata contexts need structured replies, which the server "
                               "did not agree to");
        return -1;
    }
    if (nbd_encode_opt_meta_context(&b, NBD_OPT_LIST_META_CONTEXT,
                                    export_name ? export_name : c->uri.export_name, queries) < 0)
        return -1;
    r = opt_exchange(c, &b, NBD_OPT_LIST_META_CONTEXT, on_meta_reply, &a, msg, sizeof msg);
    nbd_wbuf_free(&b);
    if (r > 0) {
        opt_error(NBD_OPT_LIST_META_CONTEXT, r, msg, r == NBD_REP_ERR_UNSUP ? ENOTSUP : EINVAL);
        return -1;
    }
    return r < 0 ? -1 : 0;
}

struct info_arg {
    struct nbd_export_info *info;
    bool got_export;
};

static int on_info_reply(struct nbd_conn *c, const struct nbd_opt_reply *r, const uint8_t *p, void *arg)
{
    struct info_arg *a = arg;
    struct nbd_rep_info ri;

    if (r->reply != NBD_REP_INFO) {
        nbd_set_error(EPROTO, "unexpected %s in reply to NBD_OPT_GO/INFO", nbd_rep_name(r->reply));
        return -1;
    }
    if (nbd_decode_rep_info(p, r->length, &ri) < 0)
        return -1;
    switch (ri.type) {
    case NBD_INFO_EXPORT:
        a->info->size = ri.size;
        a->info->flags = ri.flags;
        a->got_export = true;
        break;
    case NBD_INFO_BLOCK_SIZE:
        if (ri.block_size_valid) {
            a->info->has_block_size = true;
            a->info->min_block = ri.min_block;
            a->info->pref_block = ri.pref_block;
            a->info->max_block = ri.max_block;
        } else {
            nbd_debug("ignoring inconsistent block sizes %u/%u/%u", ri.min_block, ri.pref_block,
                      ri.max_block);
        }
        break;
    case NBD_INFO_NAME:
    case NBD_INFO_DESCRIPTION: {
        char *s = strndup(ri.str, ri.strlen);
        if (!s) {
            nbd_set_error(ENOMEM, "out of memory");
            return -1;
        }
        char **dst = ri.type == NBD_INFO_NAME ? &a->info->name : &a->info->description;
        free(*dst);
        *dst = s;
        break;
    }
    default:
        break;
    }
    return 0;
}

static int64_t info_or_go(struct nbd_conn *c, uint32_t opt, const char *name,
                          struct nbd_export_info *info, char *msg, size_t cap)
{
    static const uint16_t infos[] = { NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME, NBD_INFO_DESCRIPTION };
    struct nbd_wbuf b = { 0 };
    struct info_arg a = { info, false };
    int64_t r;

    memset(info, 0, sizeof *info);
    if (nbd_encode_opt_info(&b, opt, name, infos, 3) < 0)
        return -1;
    r = opt_exchange(c, &b, opt, on_info_reply, &a, msg, cap);
    nbd_wbuf_free(&b);
    if (r == 0 && !a.got_export) {
        nbd_set_error(EPROTO, "server ended %s without NBD_INFO_EXPORT", nbd_opt_name(opt));
        return -1;
    }
    return r;
}

static int go_error(struct nbd_conn *c, uint32_t opt, int64_t r, const char *msg, const char *name)
{
    switch (r) {
    case NBD_REP_ERR_UNKNOWN:
        nbd_set_error(ENOENT, "server has no export named \"%s\"%s%s%s", name,
                      *msg ? " (\"" : "", msg, *msg ? "\")" : "");
        break;
    case NBD_REP_ERR_TLS_REQD:
        nbd_set_error(EACCES, "server requires TLS (use an nbds:// URI with TLS credentials)%s%s%s",
                      *msg ? " (\"" : "", msg, *msg ? "\")" : "");
        break;
    default:
        opt_error(opt, r, msg, EINVAL);
        break;
    }
    return -1;
}

int nbd_opt_info(struct nbd_conn *c, const char *export_name, struct nbd_export_info *info)
{
    char msg[256];
    const char *name = export_name ? export_name : c->uri.export_name;

    if (need_options(c, "NBD_OPT_INFO") < 0)
        return -1;
    int64_t r = info_or_go(c, NBD_OPT_INFO, name, info, msg, sizeof msg);
    if (r > 0) {
        nbd_export_info_clear(info);
        if (r == NBD_REP_ERR_UNSUP) {
            nbd_set_error(ENOTSUP, "server does not support NBD_OPT_INFO");
            return -1;
        }
        return go_error(c, NBD_OPT_INFO, r, msg, name);
    }
    if (r < 0)
        nbd_export_info_clear(info);
    return r < 0 ? -1 : 0;
}

void nbd_export_info_clear(struct nbd_export_info *info)
{
    if (!info)
        return;
    free(info->name);
    free(info->description);
    memset(info, 0, sizeof *info);
}

/* ---- Entering transmission ------------------------------------------------ */

static int select_contexts(struct nbd_conn *c)
{
    struct nbd_wbuf b = { 0 };
    struct meta_arg a = { NULL, NULL, true };
    char msg[256];
    int64_t r;

    for (size_t i = 0; i < c->ncontexts; i++)
        free(c->contexts[i].name);
    free(c->contexts);
    c->contexts = NULL;
    c->ncontexts = 0;
    if (!c->want_contexts || !c->want_contexts[0])
        return 0;
    if (!c->structured) {
        nbd_debug("no structured replies: metadata contexts unavailable");
        return 0;
    }
    if (nbd_encode_opt_meta_context(&b, NBD_OPT_SET_META_CONTEXT, c->uri.export_name,
                                    (const char *const *)c->want_contexts) < 0)
        return -1;
    r = opt_exchange(c, &b, NBD_OPT_SET_META_CONTEXT, on_meta_reply, &a, msg, sizeof msg);
    nbd_wbuf_free(&b);
    if (r < 0)
        return -1;
    if (r > 0) {
        /* The selection is void after an error; the feature stays off. */
        for (size_t i = 0; i < c->ncontexts; i++)
            free(c->contexts[i].name);
        free(c->contexts);
        c->contexts = NULL;
        c->ncontexts = 0;
        nbd_debug("server refused NBD_OPT_SET_META_CONTEXT with %s", nbd_rep_name((uint32_t)r));
    }
    return 0;
}

static int export_name_fallback(struct nbd_conn *c)
{
    struct nbd_wbuf b = { 0 };
    uint8_t rep[134];
    size_t need = c->no_zeroes ? 10 : 134;

    if (nbd_encode_opt_export_name(&b, c->uri.export_name) < 0)
        return -1;
    int r = nbd_sock_send_all(c->sock, b.data, b.len);
    nbd_wbuf_free(&b);
    if (r < 0) {
        nbd_prefix_error("send NBD_OPT_EXPORT_NAME: ");
        return -1;
    }
    if (nbd_sock_recv_all(c->sock, rep, need) < 0) {
        nbd_set_error(ENOENT, "server closed the connection after NBD_OPT_EXPORT_NAME "
                              "(no export named \"%s\"?)", c->uri.export_name);
        return -1;
    }
    if (nbd_decode_export_name_reply(rep, &c->size, &c->eflags) < 0)
        return -1;
    /* No metadata contexts: SET_META_CONTEXT must name the export chosen by
     * GO, which was not used. */
    for (size_t i = 0; i < c->ncontexts; i++)
        free(c->contexts[i].name);
    free(c->contexts);
    c->contexts = NULL;
    c->ncontexts = 0;
    return 0;
}

int nbd_opt_go(struct nbd_conn *c)
{
    struct nbd_export_info info;
    char msg[256];
    int64_t r;

    if (c->in_transmission && !strcmp(c->protocol, "oldstyle"))
        return 0; /* an oldstyle server has nothing to negotiate */
    if (c->in_transmission || c->negotiation_over) {
        nbd_set_error(EINVAL, "NBD_OPT_GO: the negotiation is over");
        return -1;
    }
    if (!c->fixed) {
        if (export_name_fallback(c) < 0)
            goto fail;
        goto done;
    }
    if (select_contexts(c) < 0)
        goto fail;
    r = info_or_go(c, NBD_OPT_GO, c->uri.export_name, &info, msg, sizeof msg);
    if (r < 0)
        goto fail;
    if (r == NBD_REP_ERR_UNSUP) {
        if (export_name_fallback(c) < 0)
            goto fail;
        goto done;
    }
    if (r > 0) {
        go_error(c, NBD_OPT_GO, r, msg, c->uri.export_name);
        goto fail;
    }
    c->size = info.size;
    c->eflags = info.flags;
    c->has_block_size = info.has_block_size;
    c->min_block = info.min_block;
    c->pref_block = info.pref_block;
    c->max_block = info.max_block;
    c->canonical_name = info.name;
    c->description = info.description;
done:
    c->in_transmission = true;
    c->negotiation_over = true;
    return nbd_transmission_init(c);
fail:
    c->negotiation_over = true;
    return -1;
}

int nbd_opt_abort(struct nbd_conn *c)
{
    if (c->in_transmission || c->negotiation_over) {
        nbd_set_error(EINVAL, "NBD_OPT_ABORT: the negotiation is over");
        return -1;
    }
    nbd_handshake_abort(c);
    return 0;
}

/* Soft disconnect during negotiation: ABORT, read the ACK if it comes
 * quickly, close the write side. */
void nbd_handshake_abort(struct nbd_conn *c)
{
    struct nbd_wbuf b = { 0 };
    uint8_t hdr[20];

    c->negotiation_over = true;
    if (!c->sock || !c->fixed)
        return;
    nbd_sock_set_timeout(c->sock, 1000);
    if (nbd_encode_opt(&b, NBD_OPT_ABORT, NULL, 0) == 0 &&
        nbd_sock_send_all(c->sock, b.data, b.len) == 0)
        (void)nbd_sock_recv_all(c->sock, hdr, sizeof hdr);
    nbd_wbuf_free(&b);
    nbd_sock_shutdown_write(c->sock);
}
