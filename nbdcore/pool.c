/* pool.c: a multi-conn pool: N connections to one export, driven together
 * from one thread with poll().  More than one connection is opened only
 * when the server advertises NBD_FLAG_CAN_MULTI_CONN; without it the one
 * connection gets a deeper pipeline instead. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "internal.h"

#define POOL_PIECE (2u * 1024 * 1024)
#define EXTRA_CONN_TIMEOUT_MS 10000

struct nbd_pool {
    struct nbd_conn **c;
    unsigned n;
};

/* The thread of one extra connection's handshake. */
struct extra_arg {
    pthread_t tid;
    bool started;
    const char *uri;
    struct nbd_conn_opts *o;
    struct nbd_conn *c;
    char err[256];
};

static void *open_extra(void *opaque)
{
    struct extra_arg *x = opaque;
    x->c = nbd_connect_uri(x->uri, x->o);
    if (!x->c)
        snprintf(x->err, sizeof x->err, "%s", nbd_get_error());
    return NULL;
}

struct nbd_pool *nbd_pool_open(const char *uri, const struct nbd_conn_opts *opts, unsigned n)
{
    struct nbd_pool *p = calloc(1, sizeof *p);
    struct nbd_conn_opts o = { 0 };

    if (opts)
        o = *opts;
    if (n == 0)
        n = 1;
    if (!p || !(p->c = calloc(n, sizeof *p->c))) {
        free(p);
        nbd_set_error(ENOMEM, "out of memory");
        return NULL;
    }
    if (!(p->c[0] = nbd_connect_uri(uri, &o))) {
        free(p->c);
        free(p);
        return NULL;
    }
    p->n = 1;
    if (n > 1 && nbd_can(p->c[0], NBD_FLAG_CAN_MULTI_CONN)) {
        /* A server may cap its connections below n (qemu-nbd --shared):
         * stay with what could be opened.  The handshakes run in parallel,
         * each in a thread of its own. */
        o.handshake_timeout_ms = EXTRA_CONN_TIMEOUT_MS;
        struct extra_arg *x = calloc(n, sizeof *x);
        if (!x) {
            nbd_pool_close(p);
            nbd_set_error(ENOMEM, "out of memory");
            return NULL;
        }
        for (unsigned i = 1; i < n; i++) {
            x[i].uri = uri;
            x[i].o = &o;
            x[i].started = pthread_create(&x[i].tid, NULL, open_extra, &x[i]) == 0;
        }
        for (unsigned i = 1; i < n; i++) {
            if (x[i].started)
                pthread_join(x[i].tid, NULL);
        }
        bool bad_size = false;
        for (unsigned i = 1; i < n; i++) {
            if (!x[i].c) {
                if (x[i].started)
                    nbd_debug("multi-conn: a connection failed: %s", x[i].err);
                continue;
            }
            if (nbd_get_size(x[i].c) != nbd_get_size(p->c[0]))
                bad_size = true;
            p->c[p->n++] = x[i].c;
        }
        free(x);
        if (bad_size) {
            nbd_pool_close(p);
            nbd_set_error(EPROTO, "multi-conn: connections disagree on the export size");
            return NULL;
        }
    } else if (n > 1) {
        unsigned depth = p->c[0]->opts.max_in_flight * n;
        p->c[0]->opts.max_in_flight = depth > 256 ? 256 : depth;
    }
    return p;
}

unsigned nbd_pool_size(const struct nbd_pool *p)
{
    return p->n;
}

struct nbd_conn *nbd_pool_conn(struct nbd_pool *p, unsigned i)
{
    return i < p->n ? p->c[i] : NULL;
}

struct nbd_conn *nbd_pool_pick(struct nbd_pool *p)
{
    struct nbd_conn *best = NULL;
    for (unsigned i = 0; i < p->n; i++) {
        struct nbd_conn *c = p->c[i];
        if (!nbd_is_dead(c) && (!best || nbd_in_flight(c) < nbd_in_flight(best)))
            best = c;
    }
    return best;
}

unsigned nbd_pool_in_flight(struct nbd_pool *p)
{
    unsigned n = 0;
    for (unsigned i = 0; i < p->n; i++)
        n += nbd_in_flight(p->c[i]);
    return n;
}

void nbd_pool_close(struct nbd_pool *p)
{
    if (!p)
        return;
    for (unsigned i = 0; i < p->n; i++)
        nbd_close(p->c[i]);
    free(p->c);
    free(p);
}

/* One pooled transfer: pieces handed out round-robin, completions counted. */
struct xfer {
    unsigned outstanding;
    int err;
    char msg[512];
};

static void xfer_done(void *opaque, int err)
{
    struct xfer *x = opaque;

    x->outstanding--;
    if (err && !x->err) {
        x->err = err;
        const char *m = nbd_get_error();
        size_t n = strnlen(m, sizeof x->msg - 1);
        memcpy(x->msg, m, n);
        x->msg[n] = 0;
    }
}

int nbd_pool_poll(struct nbd_pool *p, int extra_fd, int timeout_ms)
{
    struct pollfd fds[p->n + 1];
    bool pending = false;
    unsigned n = p->n;

    for (unsigned i = 0; i < p->n; i++) {
        fds[i].fd = nbd_is_dead(p->c[i]) ? -1 : nbd_get_fd(p->c[i]);
        fds[i].events = nbd_want_events(p->c[i]);
        fds[i].revents = 0;
        if (p->c[i]->sock && !nbd_is_dead(p->c[i]) && nbd_sock_pending(p->c[i]->sock))
            pending = true;
    }
    if (extra_fd >= 0) {
        fds[n].fd = extra_fd;
        fds[n].events = POLLIN;
        fds[n].revents = 0;
        n++;
    }
    for (unsigned i = 0; i < p->n; i++)
        timeout_ms = nbd_stall_clamp(p->c[i], timeout_ms);
    if (poll(fds, n, pending ? 0 : timeout_ms) < 0 && errno != EINTR) {
        nbd_set_error(errno, "poll: %s", strerror(errno));
        return -1;
    }
    for (unsigned i = 0; i < p->n; i++)
        if (!nbd_is_dead(p->c[i]) && nbd_step(p->c[i], fds[i].revents) == 0 && !fds[i].revents)
            nbd_stall_check(p->c[i]);
    return extra_fd >= 0 && (fds[p->n].revents & POLLIN) ? 1 : 0;
}

static int pool_transfer(struct nbd_pool *p, bool write, void *buf, uint64_t count,
                         uint64_t offset)
{
    struct xfer x = { 0 };
    uint64_t pos = 0;
    uint32_t piece = nbd_max_request(p->c[0]) < POOL_PIECE ? nbd_max_request(p->c[0]) : POOL_PIECE;
    unsigned next = 0;

    while ((pos < count && !x.err) || x.outstanding) {
        /* Hand out pieces round-robin, one per connection per turn, until
         * every connection is full: a transfer smaller than one pipeline
         * still spreads over all the connections. */
        for (unsigned full = 0; full < p->n && pos < count && !x.err;) {
            struct nbd_conn *c = p->c[next];
            next = (next + 1) % p->n;
            if (nbd_busy(c) || nbd_is_dead(c)) {
                full++;
                continue;
            }
            full = 0;
            uint64_t len = count - pos < piece ? count - pos : piece;
            int r = write ? nbd_aio_pwrite(c, (uint8_t *)buf + pos, len, offset + pos, 0,
                                           xfer_done, &x)
                          : nbd_aio_pread(c, (uint8_t *)buf + pos, len, offset + pos, 0,
                                          xfer_done, &x);
            if (r < 0) {
                x.err = nbd_get_errno() ? nbd_get_errno() : EIO;
                snprintf(x.msg, sizeof x.msg, "%s", nbd_get_error());
                break;
            }
            x.outstanding++;
            pos += len;
        }
        if (!x.outstanding) {
            /* Nothing in flight and nothing could be sent: every
             * connection is dead.  Never report a partial transfer as done. */
            if (pos < count && !x.err) {
                x.err = ENOTCONN;
                snprintf(x.msg, sizeof x.msg, "every connection of the pool is dead");
            }
            break;
        }
        if (nbd_pool_poll(p, -1, -1) < 0)
            return -1;
    }
    if (x.err) {
        nbd_set_error(x.err, "%s", x.msg);
        return -1;
    }
    return 0;
}

int nbd_pool_pread(struct nbd_pool *p, void *buf, uint64_t count, uint64_t offset)
{
    return pool_transfer(p, false, buf, count, offset);
}

int nbd_pool_pwrite(struct nbd_pool *p, const void *buf, uint64_t count, uint64_t offset)
{
    return pool_transfer(p, true, (void *)buf, count, offset);
}

int nbd_pool_flush(struct nbd_pool *p)
{
    /* nbd_pool_pwrite returns only once every write has been answered, so
     * one FLUSH now covers them all (the multi-conn consistency rule). */
    return nbd_flush(p->c[0], 0);
}
