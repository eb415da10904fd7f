/* sock.c: the byte stream under a connection, plain or TLS (GnuTLS).
 *
 * Design notes
 *
 * - GnuTLS reaches the socket only through our own push / pull / pull-timeout
 *   functions (transport pointer = struct nbd_sock).  That gives us two
 *   things the built-in transport cannot: every send carries MSG_NOSIGNAL (a
 *   dead peer is EPIPE, never SIGPIPE), and the blocking helpers (*_all, the
 *   handshake, close_notify) can add MSG_DONTWAIT per call, so that they wait
 *   in our own poll() with the remaining time to their deadline even when
 *   the fd itself is blocking.  The single-step nbd_sock_recv/send leave the
 *   fd's own mode alone: blocking fd, blocking step; non-blocking fd, EAGAIN.
 *
 * - gnutls_record_send that returned GNUTLS_E_AGAIN has already encrypted a
 *   record and must be called again with the same data.  nbd_sock_send maps
 *   that to EAGAIN and relies on the caller retrying from the same position
 *   of the same bytes (a longer length is harmless: GnuTLS first flushes the
 *   pending record and reports only its size).  Every caller in nbdcore does
 *   so: it advances only by what was reported moved.
 *
 * - A failed handshake leaves the session in place and nbd_sock_is_tls()
 *   true, so that nothing can fall back to plaintext on this socket; the
 *   caller must drop the connection.
 *
 * - Server credentials are loaded once and shared by every connection; they
 *   must outlive every socket that used them.  The PSK file is read on each
 *   handshake (as QEMU does), so keys can be changed without a restart.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

#include "nbdcore.h"
#include "error.h"
#include "sock.h"
#include "common/clock.h"

/* Key exchanges added for PSK (as libnbd and QEMU do); TLS < 1.2 off. */
#define PRIO_PSK_APPEND "+ECDHE-PSK:+DHE-PSK:+PSK:-VERS-TLS1.0:-VERS-TLS1.1"
#define PRIO_X509_APPEND "-VERS-TLS1.0:-VERS-TLS1.1"

struct nbd_sock {
    int fd;
    int timeout_ms;             /* for the blocking helpers; <= 0 = none */
    bool tls;                   /* true from STARTTLS on, even if it failed */
    bool dontwait;              /* transport calls add MSG_DONTWAIT */
    bool eof;                   /* TLS: the peer has closed; GnuTLS would now
                                 * say "invalidated session" */
    int io_errno;               /* last errno of the transport functions */
    gnutls_session_t session;
    gnutls_certificate_credentials_t x509_cred; /* client side, owned */
    gnutls_psk_client_credentials_t psk_cred;   /* client side, owned */
    const struct nbd_tls_server_creds *server_creds; /* server side, shared */
};

struct nbd_tls_server_creds {
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk;
    char *psk_file;
    bool verify_peer;
};

/* ---- GnuTLS global state ------------------------------------------------- */

static pthread_once_t tls_once = PTHREAD_ONCE_INIT;
static int tls_init_ret;

static void tls_init_once(void)
{
    tls_init_ret = gnutls_global_init();
}

static int tls_init(void)
{
    pthread_once(&tls_once, tls_init_once);
    if (tls_init_ret < 0) {
        nbd_set_error(EIO, "gnutls_global_init: %s", gnutls_strerror(tls_init_ret));
        return -1;
    }
    return 0;
}

/* Errno for a fatal GnuTLS error code. */
static int tls_errno(int r)
{
    switch (r) {
    case GNUTLS_E_PULL_ERROR:
    case GNUTLS_E_PUSH_ERROR:
    case GNUTLS_E_PREMATURE_TERMINATION:
        return ECONNRESET;
    case GNUTLS_E_TIMEDOUT:
        return ETIMEDOUT;
    case GNUTLS_E_MEMORY_ERROR:
        return ENOMEM;
    default:
        return EIO;
    }
}

/* Sets the error for a failed GnuTLS call on s, adding the socket's errno
 * when the failure came from the transport. */
static void set_tls_error(struct nbd_sock *s, int r, const char *what)
{
    if ((r == GNUTLS_E_PULL_ERROR || r == GNUTLS_E_PUSH_ERROR) && s->io_errno)
        nbd_set_error(s->io_errno, "%s: %s", what, strerror(s->io_errno));
    else if (r == GNUTLS_E_FATAL_ALERT_RECEIVED)
        nbd_set_error(ECONNRESET, "%s: %s (%s)", what, gnutls_strerror(r),
                      gnutls_alert_get_name(gnutls_alert_get(s->session)));
    else
        nbd_set_error(tls_errno(r), "%s: %s", what, gnutls_strerror(r));
}

/* ---- Time and waiting ---------------------------------------------------- */

static int64_t deadline_of(const struct nbd_sock *s)
{
    return s->timeout_ms > 0 ? clock_mono_ms() + s->timeout_ms : -1;
}

/* The events the last would-block operation waits for: for TLS, GnuTLS
 * knows (a record_recv may need to write, e.g. a TLS 1.3 key update). */
static short want_events(const struct nbd_sock *s, short plain)
{
    if (s->tls && s->session)
        return gnutls_record_get_direction(s->session) ? POLLOUT : POLLIN;
    return plain;
}

/* Waits until the fd is ready for events; -1 with ETIMEDOUT once the
 * deadline (-1 = none) has passed.  POLLERR / POLLHUP count as ready: the
 * next recv / send reports what happened. */
static int wait_fd(const struct nbd_sock *s, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd p = { .fd = s->fd, .events = events };
        int ms = -1;
        int r;

        if (deadline >= 0) {
            int64_t left = deadline - clock_mono_ms();
            if (left <= 0) {
                nbd_set_error(ETIMEDOUT, "timed out after %d ms", s->timeout_ms);
                return -1;
            }
            ms = left > INT_MAX ? INT_MAX : (int)left;
        }
        r = poll(&p, 1, ms);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR) {
            nbd_set_error(errno, "poll: %s", strerror(errno));
            return -1;
        }
        /* r == 0 or EINTR: the top of the loop checks the deadline. */
    }
}

/* ---- GnuTLS transport ---------------------------------------------------- */

static ssize_t tls_vec_push(gnutls_transport_ptr_t ptr, const giovec_t *iov, int iovcnt)
{
    struct nbd_sock *s = ptr;
    struct msghdr msg = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt };
    ssize_t r = sendmsg(s->fd, &msg, MSG_NOSIGNAL | (s->dontwait ? MSG_DONTWAIT : 0));

    if (r < 0) {
        s->io_errno = errno;
        gnutls_transport_set_errno(s->session, errno);
    }
    return r;
}

static ssize_t tls_pull(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
    struct nbd_sock *s = ptr;
    ssize_t r = recv(s->fd, buf, len, s->dontwait ? MSG_DONTWAIT : 0);

    if (r < 0) {
        s->io_errno = errno;
        gnutls_transport_set_errno(s->session, errno);
    }
    return r;
}

/* GnuTLS uses this to wait for the handshake timeout: > 0 ready, 0 timeout. */
static int tls_pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms)
{
    struct nbd_sock *s = ptr;
    struct pollfd p = { .fd = s->fd, .events = POLLIN };
    int r = poll(&p, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : ms > INT_MAX ? INT_MAX : (int)ms);

    if (r < 0) {
        s->io_errno = errno;
        gnutls_transport_set_errno(s->session, errno);
    }
    return r;
}

static int session_create(struct nbd_sock *s, unsigned flags)
{
    int r;

    if (tls_init() < 0)
        return -1;
    if (s->session) {
        nbd_set_error(EINVAL, "TLS is already on");
        return -1;
    }
    r = gnutls_init(&s->session, flags);
    if (r < 0) {
        s->session = NULL;
        nbd_set_error(tls_errno(r), "gnutls_init: %s", gnutls_strerror(r));
        return -1;
    }
    s->tls = true;
    gnutls_session_set_ptr(s->session, s);
    gnutls_transport_set_ptr(s->session, s);
    gnutls_transport_set_vec_push_function(s->session, tls_vec_push);
    gnutls_transport_set_pull_function(s->session, tls_pull);
    gnutls_transport_set_pull_timeout_function(s->session, tls_pull_timeout);
    return 0;
}

static int set_priority(struct nbd_sock *s, const char *append)
{
    const char *err_pos = NULL;
    int r = gnutls_set_default_priority_append(s->session, append, &err_pos, 0);

    if (r < 0) {
        nbd_set_error(EINVAL, "TLS priority \"%s\" at \"%s\": %s", append, err_pos ? err_pos : "",
                      gnutls_strerror(r));
        return -1;
    }
    return 0;
}

/* ---- The stream ---------------------------------------------------------- */

struct nbd_sock *nbd_sock_new(int fd)
{
    struct nbd_sock *s;

    if (fd < 0) {
        nbd_set_error(EBADF, "invalid file descriptor %d", fd);
        return NULL;
    }
    s = calloc(1, sizeof *s);
    if (!s) {
        close(fd);
        nbd_set_error(ENOMEM, "out of memory");
        return NULL;
    }
    s->fd = fd;
    return s;
}

int nbd_sock_fd(const struct nbd_sock *s)
{
    return s->fd;
}

bool nbd_sock_is_tls(const struct nbd_sock *s)
{
    return s->tls;
}

void nbd_sock_set_timeout(struct nbd_sock *s, int timeout_ms)
{
    s->timeout_ms = timeout_ms;
}

/* One receive step; dontwait forces a non-blocking attempt. */
static ssize_t sock_recv(struct nbd_sock *s, void *buf, size_t len, bool dontwait)
{
    if (!s->tls) {
        for (;;) {
            ssize_t r = recv(s->fd, buf, len, dontwait ? MSG_DONTWAIT : 0);
            if (r >= 0)
                return r;
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                errno = EAGAIN;
                return -1;
            }
            nbd_set_error(errno, "recv: %s", strerror(errno));
            return -1;
        }
    }

    if (s->eof)
        return 0;
    s->dontwait = dontwait;
    for (;;) {
        ssize_t r = gnutls_record_recv(s->session, buf, len);
        if (r > 0)
            return r;
        if (r == 0) {
            s->eof = true; /* close_notify */
            return 0;
        }
        switch (r) {
        case GNUTLS_E_INTERRUPTED:
        case GNUTLS_E_REHANDSHAKE:          /* declined by ignoring it */
        case GNUTLS_E_WARNING_ALERT_RECEIVED:
            continue;
        case GNUTLS_E_AGAIN:
            errno = EAGAIN;
            return -1;
        case GNUTLS_E_PREMATURE_TERMINATION:
            s->eof = true; /* qemu-nbd closes without close_notify */
            return 0;
        default:
            set_tls_error(s, (int)r, "TLS recv");
            return -1;
        }
    }
}

static ssize_t sock_send(struct nbd_sock *s, const void *buf, size_t len, bool dontwait)
{
    if (!s->tls) {
        for (;;) {
            ssize_t r = send(s->fd, buf, len, MSG_NOSIGNAL | (dontwait ? MSG_DONTWAIT : 0));
            if (r >= 0)
                return r;
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                errno = EAGAIN;
                return -1;
            }
            nbd_set_error(errno, "send: %s", strerror(errno));
            return -1;
        }
    }

    s->dontwait = dontwait;
    for (;;) {
        ssize_t r = gnutls_record_send(s->session, buf, len);
        if (r >= 0)
            return r;
        switch (r) {
        case GNUTLS_E_INTERRUPTED:
            continue; /* same data again, as GnuTLS requires */
        case GNUTLS_E_AGAIN:
            errno = EAGAIN;
            return -1;
        default:
            set_tls_error(s, (int)r, "TLS send");
            return -1;
        }
    }
}

ssize_t nbd_sock_recv(struct nbd_sock *s, void *buf, size_t len)
{
    return sock_recv(s, buf, len, false);
}

/* After EAGAIN the caller must call again from the same position of the
 * same bytes (see the top of the file). */
ssize_t nbd_sock_send(struct nbd_sock *s, const void *buf, size_t len)
{
    return sock_send(s, buf, len, false);
}

bool nbd_sock_pending(const struct nbd_sock *s)
{
    return s->tls && s->session && gnutls_record_check_pending(s->session) > 0;
}

int nbd_sock_send_all(struct nbd_sock *s, const void *buf, size_t len)
{
    const char *p = buf;
    int64_t deadline = deadline_of(s);

    while (len > 0) {
        ssize_t n = sock_send(s, p, len, true);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n == 0) {
            nbd_set_error(EIO, "send moved no data");
            return -1;
        }
        if (errno != EAGAIN)
            return -1;
        if (wait_fd(s, want_events(s, POLLOUT), deadline) < 0)
            return -1;
    }
    return 0;
}

/* Two buffers in one sendmsg on a plain socket: a reply's header and its
 * data reach the peer together (one wake-up instead of two). */
int nbd_sock_send_all2(struct nbd_sock *s, const void *a, size_t alen, const void *b, size_t blen)
{
    if (s->tls)
        return nbd_sock_send_all(s, a, alen) < 0 ? -1 : nbd_sock_send_all(s, b, blen);
    struct iovec v[2] = { { (void *)a, alen }, { (void *)b, blen } };
    int64_t deadline = deadline_of(s);
    int i = 0;

    while (i < 2) {
        if (!v[i].iov_len) {
            i++;
            continue;
        }
        struct msghdr m = { .msg_iov = v + i, .msg_iovlen = (size_t)(2 - i) };
        ssize_t r = sendmsg(s->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                nbd_set_error(errno, "send: %s", strerror(errno));
                return -1;
            }
            if (wait_fd(s, POLLOUT, deadline) < 0)
                return -1;
            continue;
        }
        for (size_t left = (size_t)r; left && i < 2;) {
            size_t t = left < v[i].iov_len ? left : v[i].iov_len;
            v[i].iov_base = (char *)v[i].iov_base + t;
            v[i].iov_len -= t;
            left -= t;
            if (!v[i].iov_len)
                i++;
        }
    }
    return 0;
}

int nbd_sock_recv_all(struct nbd_sock *s, void *buf, size_t len)
{
    char *p = buf;
    int64_t deadline = deadline_of(s);

    while (len > 0) {
        ssize_t n = sock_recv(s, p, len, true);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n == 0) {
            nbd_set_error(ECONNRESET, "peer closed the connection");
            return -1;
        }
        if (errno != EAGAIN)
            return -1;
        if (nbd_sock_pending(s))
            continue;
        if (wait_fd(s, want_events(s, POLLIN), deadline) < 0)
            return -1;
    }
    return 0;
}

int nbd_sock_shutdown_write(struct nbd_sock *s)
{
    if (s->tls && s->session) {
        /* close_notify, best effort and bounded by the timeout. */
        int64_t deadline = deadline_of(s);
        s->dontwait = true;
        for (;;) {
            int r = gnutls_bye(s->session, GNUTLS_SHUT_WR);
            if (r == GNUTLS_E_INTERRUPTED)
                continue;
            if (r != GNUTLS_E_AGAIN || wait_fd(s, want_events(s, POLLOUT), deadline) < 0)
                break;
        }
    }
    if (shutdown(s->fd, SHUT_WR) < 0) {
        nbd_set_error(errno, "shutdown: %s", strerror(errno));
        return -1;
    }
    return 0;
}

void nbd_sock_close(struct nbd_sock *s)
{
    if (!s)
        return;
    if (s->session)
        gnutls_deinit(s->session);
    if (s->x509_cred)
        gnutls_certificate_free_credentials(s->x509_cred);
    if (s->psk_cred)
        gnutls_psk_free_client_credentials(s->psk_cred);
    if (s->fd >= 0)
        close(s->fd);
    free(s);
}

/* ---- Handshake ----------------------------------------------------------- */

/* The certificate verification status as text, into the caller's buffer. */
static void verify_status_text(gnutls_session_t session, unsigned status, char *out, size_t outlen)
{
    gnutls_datum_t txt = { NULL, 0 };

    if (gnutls_certificate_verification_status_print(status, gnutls_certificate_type_get(session),
                                                     &txt, 0) == 0 && txt.data) {
        size_t n = strlen((const char *)txt.data);
        while (n > 0 && txt.data[n - 1] == ' ')
            n--;
        snprintf(out, outlen, "%.*s", (int)n, (const char *)txt.data);
    } else {
        snprintf(out, outlen, "certificate verification failed (status 0x%x)", status);
    }
    gnutls_free(txt.data);
}

/* Runs the handshake within the socket's timeout.  expected_host (may be
 * NULL) only serves the error message. */
static int tls_handshake(struct nbd_sock *s, const char *who, const char *expected_host)
{
    int64_t deadline = deadline_of(s);
    int r;

    gnutls_handshake_set_timeout(s->session,
                                 s->timeout_ms > 0 ? (unsigned)s->timeout_ms : GNUTLS_INDEFINITE_TIMEOUT);
    s->dontwait = true;
    s->io_errno = 0;
    for (;;) {
        r = gnutls_handshake(s->session);
        if (r == GNUTLS_E_SUCCESS)
            break;
        if (r == GNUTLS_E_AGAIN) {
            if (wait_fd(s, want_events(s, POLLIN), deadline) < 0) {
                nbd_prefix_error("TLS handshake failed: ");
                return -1;
            }
            continue;
        }
        if (r == GNUTLS_E_INTERRUPTED || !gnutls_error_is_fatal(r))
            continue;

        if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
            unsigned status = gnutls_session_get_verify_cert_status(s->session);
            char txt[512];
            verify_status_text(s->session, status, txt, sizeof txt);
            if ((status & GNUTLS_CERT_UNEXPECTED_OWNER) && expected_host)
                nbd_set_error(EACCES, "TLS handshake failed: %s (the %s certificate is not valid for host name \"%s\")",
                              txt, who, expected_host);
            else
                nbd_set_error(EACCES, "TLS handshake failed: %s (%s certificate)", txt, who);
        } else {
            set_tls_error(s, r, "TLS handshake failed");
        }
        /* Tell the peer why, so that it fails with a reason rather than on a
         * closed socket.  Never for transport errors (nothing to talk to). */
        if (r != GNUTLS_E_TIMEDOUT && r != GNUTLS_E_PUSH_ERROR && r != GNUTLS_E_PULL_ERROR &&
            r != GNUTLS_E_PREMATURE_TERMINATION && r != GNUTLS_E_FATAL_ALERT_RECEIVED)
            gnutls_alert_send_appropriate(s->session, r);
        return -1;
    }

    char *desc = gnutls_session_get_desc(s->session);
    nbd_debug("TLS handshake done: %s", desc ? desc : "?");
    gnutls_free(desc);
    return 0;
}

/* ---- Credentials --------------------------------------------------------- */

/* Copies a peer-supplied string into out for a message: printable ASCII
 * only, capped. */
static const char *sanitize(const char *in, char *out, size_t outlen)
{
    size_t i;

    for (i = 0; in[i] && i + 1 < outlen; i++)
        out[i] = (in[i] >= 0x20 && in[i] < 0x7f) ? in[i] : '?';
    out[i] = '\0';
    return out;
}

/* The hex key of user in a "username:hexkey" file, malloc'ed (the caller
 * wipes and frees it); NULL with an error. */
static char *psk_lookup(const char *file, const char *user)
{
    FILE *fp = fopen(file, "re");
    char *line = NULL;
    size_t cap = 0, ulen = strlen(user);
    ssize_t n;
    char *key = NULL;

    if (!fp) {
        nbd_set_error(errno, "%s: %s", file, strerror(errno));
        return NULL;
    }
    while ((n = getline(&line, &cap, fp)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if ((size_t)n > ulen && line[ulen] == ':' && memcmp(line, user, ulen) == 0) {
            key = strdup(line + ulen + 1);
            if (!key)
                nbd_set_error(ENOMEM, "out of memory");
            break;
        }
    }
    if (line) {
        explicit_bzero(line, cap);
        free(line);
    }
    if (ferror(fp) && !key) {
        nbd_set_error(EIO, "%s: read error", file);
        fclose(fp);
        return NULL;
    }
    fclose(fp);
    if (!key && n < 0) {
        char u[80];
        nbd_set_error(ENOENT, "no key for user %s in %s", sanitize(user, u, sizeof u), file);
    }
    if (key && !key[0]) {
        char u[80];
        free(key);
        key = NULL;
        nbd_set_error(EINVAL, "empty key for user %s in %s", sanitize(user, u, sizeof u), file);
    }
    return key;
}

static void free_secret(char *p)
{
    if (p) {
        explicit_bzero(p, strlen(p));
        free(p);
    }
}

/* dir/name, malloc'ed. */
static char *path_join(const char *dir, const char *name)
{
    char *p;

    if (asprintf(&p, "%s/%s", dir, name) < 0) {
        nbd_set_error(ENOMEM, "out of memory");
        return NULL;
    }
    return p;
}

static bool file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* Loads the CA (required) and CRL (optional) of dir into cred. */
static int load_ca(gnutls_certificate_credentials_t cred, const char *dir)
{
    char *ca = path_join(dir, "ca-cert.pem");
    char *crl = NULL;
    int r, ret = -1;

    if (!ca)
        return -1;
    if (access(ca, R_OK) < 0) {
        nbd_set_error(errno, "CA certificate %s: %s", ca, strerror(errno));
        goto out;
    }
    r = gnutls_certificate_set_x509_trust_file(cred, ca, GNUTLS_X509_FMT_PEM);
    if (r < 0) {
        nbd_set_error(EINVAL, "CA certificate %s: %s", ca, gnutls_strerror(r));
        goto out;
    }
    if (r == 0) {
        nbd_set_error(EINVAL, "CA certificate %s: no certificate found", ca);
        goto out;
    }
    crl = path_join(dir, "ca-crl.pem");
    if (!crl)
        goto out;
    if (file_exists(crl)) {
        r = gnutls_certificate_set_x509_crl_file(cred, crl, GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            nbd_set_error(EINVAL, "CRL %s: %s", crl, gnutls_strerror(r));
            goto out;
        }
    }
    ret = 0;
out:
    free(ca);
    free(crl);
    return ret;
}

/* Loads dir/cert_name + dir/key_name.  With optional, a missing pair (or
 * half of it) is skipped; otherwise each file is required. */
static int load_key_pair(gnutls_certificate_credentials_t cred, const char *dir, const char *cert_name,
                         const char *key_name, bool optional)
{
    char *cert = path_join(dir, cert_name);
    char *key = cert ? path_join(dir, key_name) : NULL;
    int r, ret = -1;

    if (!key)
        goto out;
    if (optional && !(file_exists(cert) && file_exists(key))) {
        if (file_exists(cert) || file_exists(key))
            nbd_debug("TLS: %s and %s must both exist; not sending a client certificate", cert, key);
        ret = 0;
        goto out;
    }
    if (access(cert, R_OK) < 0) {
        nbd_set_error(errno, "certificate %s: %s", cert, strerror(errno));
        goto out;
    }
    if (access(key, R_OK) < 0) {
        nbd_set_error(errno, "private key %s: %s", key, strerror(errno));
        goto out;
    }
    r = gnutls_certificate_set_x509_key_file(cred, cert, key, GNUTLS_X509_FMT_PEM);
    if (r < 0) {
        nbd_set_error(EINVAL, "certificate %s with key %s: %s", cert, key, gnutls_strerror(r));
        goto out;
    }
    ret = 0;
out:
    free(cert);
    free(key);
    return ret;
}

/* The login name of the effective user, malloc'ed. */
static char *login_name(void)
{
    struct passwd pw, *res = NULL;
    char buf[16384];
    char *name;
    int e = getpwuid_r(geteuid(), &pw, buf, sizeof buf, &res);

    if (!res) {
        nbd_set_error(e ? e : ENOENT, "TLS PSK: no user name given and uid %u has no login name",
                      (unsigned)geteuid());
        return NULL;
    }
    name = strdup(pw.pw_name);
    if (!name)
        nbd_set_error(ENOMEM, "out of memory");
    return name;
}

static int client_setup_psk(struct nbd_sock *s, const struct nbd_tls_client_config *cfg)
{
    char *user = cfg->username ? strdup(cfg->username) : login_name();
    char *hex = NULL;
    gnutls_datum_t key;
    int r, ret = -1;

    if (!user) {
        if (cfg->username)
            nbd_set_error(ENOMEM, "out of memory");
        return -1;
    }
    hex = psk_lookup(cfg->psk_file, user);
    if (!hex)
        goto out;
    r = gnutls_psk_allocate_client_credentials(&s->psk_cred);
    if (r < 0) {
        s->psk_cred = NULL;
        nbd_set_error(tls_errno(r), "TLS PSK credentials: %s", gnutls_strerror(r));
        goto out;
    }
    key.data = (unsigned char *)hex;
    key.size = (unsigned)strlen(hex);
    r = gnutls_psk_set_client_credentials(s->psk_cred, user, &key, GNUTLS_PSK_KEY_HEX);
    if (r < 0) {
        nbd_set_error(EINVAL, "key of user %s in %s: %s", user, cfg->psk_file, gnutls_strerror(r));
        goto out;
    }
    if (set_priority(s, PRIO_PSK_APPEND) < 0)
        goto out;
    r = gnutls_credentials_set(s->session, GNUTLS_CRD_PSK, s->psk_cred);
    if (r < 0) {
        nbd_set_error(tls_errno(r), "gnutls_credentials_set: %s", gnutls_strerror(r));
        goto out;
    }
    ret = 0;
out:
    free_secret(hex);
    free(user);
    return ret;
}

static bool is_ip_literal(const char *host)
{
    unsigned char addr[16];
    return inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
}

static int client_setup_x509(struct nbd_sock *s, const struct nbd_tls_client_config *cfg)
{
    const char *dir = cfg ? cfg->certificates_dir : NULL;
    const char *host = cfg ? cfg->hostname : NULL;
    bool verify = cfg ? cfg->verify_peer : true;
    int r;

    r = gnutls_certificate_allocate_credentials(&s->x509_cred);
    if (r < 0) {
        s->x509_cred = NULL;
        nbd_set_error(tls_errno(r), "TLS certificate credentials: %s", gnutls_strerror(r));
        return -1;
    }
    if (dir) {
        if (load_ca(s->x509_cred, dir) < 0)
            return -1;
        if (load_key_pair(s->x509_cred, dir, "client-cert.pem", "client-key.pem", true) < 0)
            return -1;
    } else {
        r = gnutls_certificate_set_x509_system_trust(s->x509_cred);
        if (r < 0) {
            nbd_set_error(EIO, "TLS: loading the system trust store: %s", gnutls_strerror(r));
            return -1;
        }
        if (r == 0)
            nbd_debug("TLS: the system trust store holds no certificate");
    }
    if (set_priority(s, PRIO_X509_APPEND) < 0)
        return -1;
    r = gnutls_credentials_set(s->session, GNUTLS_CRD_CERTIFICATE, s->x509_cred);
    if (r < 0) {
        nbd_set_error(tls_errno(r), "gnutls_credentials_set: %s", gnutls_strerror(r));
        return -1;
    }
    if (host && host[0] && !is_ip_literal(host)) {
        r = gnutls_server_name_set(s->session, GNUTLS_NAME_DNS, host, strlen(host));
        if (r < 0) {
            nbd_set_error(EINVAL, "TLS server name \"%s\": %s", host, gnutls_strerror(r));
            return -1;
        }
    }
    if (verify)
        gnutls_session_set_verify_cert(s->session, host && host[0] ? host : NULL, 0);
    return 0;
}

int nbd_sock_starttls_client(struct nbd_sock *s, const struct nbd_tls_client_config *cfg)
{
    if (session_create(s, GNUTLS_CLIENT) < 0)
        return -1;
    if (cfg && cfg->psk_file) {
        if (client_setup_psk(s, cfg) < 0)
            return -1;
        return tls_handshake(s, "server", NULL);
    }
    if (client_setup_x509(s, cfg) < 0)
        return -1;
    return tls_handshake(s, "server", cfg ? cfg->hostname : NULL);
}

/* GnuTLS asks for the key of a PSK user (server side).  The key is
 * returned in gnutls_malloc'ed memory, which GnuTLS frees. */
static int psk_server_key(gnutls_session_t session, const char *username, gnutls_datum_t *key)
{
    struct nbd_sock *s = gnutls_session_get_ptr(session);
    char *hex;
    gnutls_datum_t h;
    int r;

    if (!s || !s->server_creds || !s->server_creds->psk_file)
        return -1;
    hex = psk_lookup(s->server_creds->psk_file, username);
    if (!hex) {
        nbd_debug("TLS PSK: %s", nbd_get_error());
        return -1;
    }
    h.data = (unsigned char *)hex;
    h.size = (unsigned)strlen(hex);
    r = gnutls_hex_decode2(&h, key);
    free_secret(hex);
    if (r < 0) {
        nbd_debug("TLS PSK: the key in %s is not hex: %s", s->server_creds->psk_file, gnutls_strerror(r));
        return -1;
    }
    return 0;
}

struct nbd_tls_server_creds *nbd_tls_server_creds_load(const char *x509_dir, const char *psk_file,
                                                       bool verify_peer)
{
    struct nbd_tls_server_creds *c;
    int r;

    if (tls_init() < 0)
        return NULL;
    if (!x509_dir == !psk_file) {
        nbd_set_error(EINVAL, "TLS server credentials: give either an X.509 directory or a PSK file");
        return NULL;
    }
    c = calloc(1, sizeof *c);
    if (!c) {
        nbd_set_error(ENOMEM, "out of memory");
        return NULL;
    }
    c->verify_peer = verify_peer;

    if (psk_file) {
        if (access(psk_file, R_OK) < 0) {
            nbd_set_error(errno, "PSK file %s: %s", psk_file, strerror(errno));
            goto fail;
        }
        c->psk_file = strdup(psk_file);
        if (!c->psk_file) {
            nbd_set_error(ENOMEM, "out of memory");
            goto fail;
        }
        r = gnutls_psk_allocate_server_credentials(&c->psk);
        if (r < 0) {
            c->psk = NULL;
            nbd_set_error(tls_errno(r), "TLS PSK credentials: %s", gnutls_strerror(r));
            goto fail;
        }
        gnutls_psk_set_server_credentials_function(c->psk, psk_server_key);
        /* For DHE-PSK in TLS 1.2 (TLS 1.3 negotiates its groups). */
        gnutls_psk_set_server_known_dh_params(c->psk, GNUTLS_SEC_PARAM_MEDIUM);
        return c;
    }

    r = gnutls_certificate_allocate_credentials(&c->x509);
    if (r < 0) {
        c->x509 = NULL;
        nbd_set_error(tls_errno(r), "TLS certificate credentials: %s", gnutls_strerror(r));
        goto fail;
    }
    if (load_ca(c->x509, x509_dir) < 0 ||
        load_key_pair(c->x509, x509_dir, "server-cert.pem", "server-key.pem", false) < 0)
        goto fail;
    gnutls_certificate_set_known_dh_params(c->x509, GNUTLS_SEC_PARAM_MEDIUM);
    return c;

fail:
    nbd_tls_server_creds_free(c);
    return NULL;
}

void nbd_tls_server_creds_free(struct nbd_tls_server_creds *c)
{
    if (!c)
        return;
    if (c->x509)
        gnutls_certificate_free_credentials(c->x509);
    if (c->psk)
        gnutls_psk_free_server_credentials(c->psk);
    free(c->psk_file);
    free(c);
}

/* After the handshake: the client's certificate chain must verify against
 * our CA (GnuTLS checked it already through set_verify_cert; this also
 * insists that there was one). */
static int check_client_cert(struct nbd_sock *s)
{
    unsigned status = 0;
    int r = gnutls_certificate_verify_peers3(s->session, NULL, &status);

    if (r == GNUTLS_E_NO_CERTIFICATE_FOUND) {
        nbd_set_error(EACCES, "TLS: the client sent no certificate");
        return -1;
    }
    if (r < 0) {
        nbd_set_error(EACCES, "TLS: verifying the client certificate: %s", gnutls_strerror(r));
        return -1;
    }
    if (status) {
        char txt[512];
        verify_status_text(s->session, status, txt, sizeof txt);
        nbd_set_error(EACCES, "TLS: client certificate: %s", txt);
        return -1;
    }
    return 0;
}

int nbd_sock_starttls_server(struct nbd_sock *s, struct nbd_tls_server_creds *creds)
{
    int r;

    if (!creds) {
        nbd_set_error(EINVAL, "TLS: no server credentials");
        return -1;
    }
    if (session_create(s, GNUTLS_SERVER) < 0)
        return -1;
    s->server_creds = creds;
    if (creds->psk) {
        if (set_priority(s, PRIO_PSK_APPEND) < 0)
            return -1;
        r = gnutls_credentials_set(s->session, GNUTLS_CRD_PSK, creds->psk);
    } else {
        if (set_priority(s, PRIO_X509_APPEND) < 0)
            return -1;
        r = gnutls_credentials_set(s->session, GNUTLS_CRD_CERTIFICATE, creds->x509);
        if (r >= 0) {
            gnutls_certificate_server_set_request(s->session, creds->verify_peer ? GNUTLS_CERT_REQUIRE
                                                                                 : GNUTLS_CERT_IGNORE);
            if (creds->verify_peer)
                gnutls_session_set_verify_cert(s->session, NULL, 0);
        }
    }
    if (r < 0) {
        nbd_set_error(tls_errno(r), "gnutls_credentials_set: %s", gnutls_strerror(r));
        return -1;
    }
    if (tls_handshake(s, "client", NULL) < 0)
        return -1;
    if (creds->x509 && creds->verify_peer && check_client_cert(s) < 0)
        return -1;
    return 0;
}
