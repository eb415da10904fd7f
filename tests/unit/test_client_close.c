/* test_client_close.c: nbd_close with requests in flight, and many
 * replies arriving at once.
 *
 * A tiny oldstyle server runs in a thread on a Unix socket: it reads the
 * requests and either answers the first one after a pause or never answers
 * at all.  nbd_close must wait for a slow answer, and give a silent server
 * up after a bounded time, failing the request and keeping the caller's
 * last error.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/error.h"
#include "nbdcore/codec.h"
#include "nbdcore/nbd-protocol.h"
#include "nbdcore/nbdcore.h"

#define EXPORT_SIZE (1024 * 1024)

struct server {
    int listen_fd;
    int answer_after_ms;   /* < 0: never answer */
    int batch;             /* > 0: answer after this many reads, all in one write */
    char path[108];
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool read_all(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

static bool write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* Oldstyle greeting, then requests until the client goes away. */
static void *server_main(void *opaque)
{
    struct server *s = opaque;
    uint8_t greet[NBD_OLDSTYLE_GREETING_LEN] = { 0 }, req[28];
    bool answered = false;
    uint8_t *out = NULL;
    int fd = accept(s->listen_fd, NULL, NULL);

    if (fd < 0)
        return NULL;
    nbd_put64(greet, NBD_MAGIC);
    nbd_put64(greet + 8, UINT64_C(0x00420281861253));
    nbd_put64(greet + 16, EXPORT_SIZE);
    nbd_put32(greet + 24, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY);
    if (!write_all(fd, greet, sizeof greet))
        goto out;
    out = s->batch ? malloc((size_t)s->batch * 17) : NULL;
    int nout = 0;
    while (read_all(fd, req, sizeof req)) {
        uint16_t type = (uint16_t)(req[6] << 8 | req[7]);
        uint32_t len = nbd_get32(req + 24);

        if (type == NBD_CMD_DISC)
            break;
        if (s->batch) {
            /* One-byte reads: every reply is gathered, then all are sent in
             * one write, so that they reach the client together. */
            uint8_t *r = out + (size_t)nout * 17;
            nbd_put32(r, NBD_SIMPLE_REPLY_MAGIC);
            nbd_put32(r + 4, 0);
            memcpy(r + 8, req + 8, 8);
            r[16] = (uint8_t)nout;
            if (++nout == s->batch && !write_all(fd, out, (size_t)nout * 17))
                break;
            continue;
        }
        if (type != NBD_CMD_READ || s->answer_after_ms < 0 || answered)
            continue;
        usleep((useconds_t)s->answer_after_ms * 1000);
        uint8_t hdr[16];
        uint8_t *data = malloc(len ? len : 1);
        nbd_put32(hdr, NBD_SIMPLE_REPLY_MAGIC);
        nbd_put32(hdr + 4, 0);
        memcpy(hdr + 8, req + 8, 8);
        memset(data, 0x5a, len);
        bool ok = write_all(fd, hdr, sizeof hdr) && write_all(fd, data, len);
        free(data);
        if (!ok)
            break;
        answered = true;
    }
out:
    free(out);
    close(fd);
    return NULL;
}

static void start_server(struct server *s, pthread_t *th, int answer_after_ms)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };

    snprintf(s->path, sizeof s->path, "/tmp/nbdvault-close-%d-%d.sock", (int)getpid(),
             answer_after_ms);
    unlink(s->path);
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", s->path);
    s->answer_after_ms = answer_after_ms;
    s->batch = 0;
    s->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->listen_fd >= 0);
    assert_int_equal(bind(s->listen_fd, (struct sockaddr *)&sun, sizeof sun), 0);
    assert_int_equal(listen(s->listen_fd, 1), 0);
    assert_int_equal(pthread_create(th, NULL, server_main, s), 0);
}

static void stop_server(struct server *s, pthread_t th)
{
    pthread_join(th, NULL);
    close(s->listen_fd);
    unlink(s->path);
}

struct done { bool called; int err; };

static void on_done(void *opaque, int err)
{
    struct done *d = opaque;
    d->called = true;
    d->err = err;
}

/* Connects, submits one 64 KiB read, and lets it leave. */
static struct nbd_conn *connect_and_read(struct server *s, uint8_t *buf, struct done *d)
{
    char uri[200];
    struct nbd_conn *c;

    snprintf(uri, sizeof uri, "nbd+unix:///?socket=%s", s->path);
    c = nbd_connect_uri(uri, NULL);
    if (!c)
        fail_msg("connect: %s", nbd_get_error());
    assert_int_equal(nbd_aio_pread(c, buf, 65536, 0, 0, on_done, d), 0);
    for (int i = 0; i < 10; i++)
        assert_int_equal(nbd_poll(c, 10), 0);
    assert_false(d->called);
    return c;
}

/* A server that never answers: nbd_close gives up after about 5 s, fails
 * the read, and leaves the caller's error as it was. */
static void test_close_silent_server(void **state)
{
    struct server s;
    pthread_t th;
    struct done d = { 0 };
    uint8_t *buf = malloc(65536);

    (void)state;
    start_server(&s, &th, -1);
    struct nbd_conn *c = connect_and_read(&s, buf, &d);
    error_set(EAGAIN, "the caller's own error");
    double t0 = now();
    nbd_close(c);
    double took = now() - t0;
    print_message("nbd_close took %.2f s\n", took);
    assert_true(took >= 4.5 && took < 9);
    assert_true(d.called);
    assert_int_equal(d.err, ETIMEDOUT);
    assert_string_equal(error_msg(), "the caller's own error");
    assert_int_equal(error_errno(), EAGAIN);
    stop_server(&s, th);
    free(buf);
}

/* A slow server is waited for: the read completes, then DISC. */
static void test_close_slow_server(void **state)
{
    struct server s;
    pthread_t th;
    struct done d = { 0 };
    uint8_t *buf = malloc(65536);

    (void)state;
    start_server(&s, &th, 1500);
    struct nbd_conn *c = connect_and_read(&s, buf, &d);
    double t0 = now();
    nbd_close(c);
    double took = now() - t0;
    assert_true(took >= 1.0 && took < 4.5);
    assert_true(d.called);
    assert_int_equal(d.err, 0);
    for (size_t i = 0; i < 65536; i++)
        if (buf[i] != 0x5a)
            fail_msg("byte %zu of the read is 0x%02x", i, buf[i]);
    stop_server(&s, th);
    free(buf);
}

/* 200 replies in the socket at once (400 pieces: more than the client
 * handles per receive call): every one is taken from the input buffer,
 * none is left waiting for the socket to become readable again (it never
 * would: the server has said everything). */
static void test_many_replies_at_once(void **state)
{
    enum { N = 200 };
    struct server s;
    pthread_t th;
    struct done d[N];
    uint8_t buf[N];
    char uri[200];

    (void)state;
    memset(d, 0, sizeof d);
    memset(buf, 0xee, sizeof buf);
    start_server(&s, &th, 0);
    s.batch = N;
    snprintf(uri, sizeof uri, "nbd+unix:///?socket=%s", s.path);
    struct nbd_conn_opts o = { .max_in_flight = N };
    struct nbd_conn *c = nbd_connect_uri(uri, &o);
    if (!c)
        fail_msg("connect: %s", nbd_get_error());
    for (int i = 0; i < N; i++)
        assert_int_equal(nbd_aio_pread(c, buf + i, 1, (uint64_t)i, 0, on_done, &d[i]), 0);
    double t0 = now();
    int done = 0;
    while (done < N && now() - t0 < 5) {
        assert_int_equal(nbd_poll(c, 100), 0);
        done = 0;
        for (int i = 0; i < N; i++)
            done += d[i].called;
    }
    assert_int_equal(done, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(d[i].err, 0);
        assert_int_equal(buf[i], (uint8_t)i);
    }
    nbd_close(c);
    stop_server(&s, th);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_silent_server),
        cmocka_unit_test(test_close_slow_server),
        cmocka_unit_test(test_many_replies_at_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
