/* fuzz_server.c: the server engine of nbdcore/server.c fed with a hostile
 * client's byte stream: option haggling (every option, STARTTLS, INFO/GO,
 * EXPORT_NAME, meta contexts, extended headers) and then requests.
 *
 * Input layout (tests/fuzz/make-server-corpus.py writes seeds that follow
 * it):
 *   byte 0   bit 0 set: the server requires TLS (PSK), so that the
 *            FORCEDTLS refusals and a TLS handshake over garbage are reached
 *   then     what the client sends, from its flags after the greeting on
 *
 * The stream is written into one end of a socketpair by a thread that
 * drains the server's replies at the same time (so that neither side can
 * block the other), then shuts down its writing side: the server always
 * sees EOF, and nbd_server_serve_fd, running on the other end in the
 * calling thread, must return.  The engine's contract with the export is
 * checked by the callbacks: a read or block status outside the export, an
 * unknown context index or an empty range aborts.
 *
 * Exports: "" and "disk" (1 MiB: even 64 KiB cells read as holes; reads
 * at 512 KiB-576 KiB and allocation-depth status past 900 KiB fail with
 * EIO) and "big" (4 TiB, extents of 8 GiB, so that 64-bit lengths meet
 * compact replies).  Their contexts: base:allocation, qemu:dirty-bitmap:fuzz
 * (only on every other open, as if pruned and made again between
 * options) and qemu:allocation-depth.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nbdcore/nbdcore.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SMALL (UINT64_C(1) << 20)
#define BIG (UINT64_C(1) << 42)
#define CELL 65536

static const char *const contexts[] = {
    "base:allocation",
    "qemu:dirty-bitmap:fuzz",
    "qemu:allocation-depth",
};

struct fexport {
    uint64_t size;
    size_t ncontexts;
    const char *contexts[3];
    char desc[32];
};

/* Opens of this input so far: every other open of an export lacks the
 * bitmap, as when a point is pruned between two options (the contexts
 * chosen by SET_META_CONTEXT must be mapped onto the export GO opens). */
static unsigned opens;

static void broken(const char *what)
{
    fprintf(stderr, "fuzz_server: %s\n", what);
    abort();
}

static void check_range(const struct fexport *e, uint64_t off, uint64_t len)
{
    if (len == 0 || off > e->size || len > e->size - off)
        broken("the engine passed a range outside the export to a callback");
}

static int ex_read(void *handle, void *buf, uint64_t count, uint64_t offset)
{
    struct fexport *e = handle;
    check_range(e, offset, count);
    if (e->size == SMALL && offset < 576 * 1024 && offset + count > 512 * 1024)
        return -EIO;
    bool zero = true;
    uint8_t *p = buf;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t o = offset + i;
        if ((o / CELL) % 2 == 0) {
            p[i] = 0;
        } else {
            p[i] = (uint8_t)(o * 7 + (o >> 16));
            zero = false;
        }
    }
    return zero ? 1 : 0;
}

static int ex_block_status(void *handle, size_t ctx, uint64_t offset, uint64_t length,
                           struct nbd_extent *out, size_t max)
{
    struct fexport *e = handle;
    check_range(e, offset, length);
    if (ctx >= e->ncontexts)
        broken("block status for a context the export does not offer");
    if (max == 0)
        broken("block status with room for no extent");
    /* The context's behaviour follows its name, not its index. */
    const char *name = e->contexts[ctx];
    ctx = !strcmp(name, contexts[0]) ? 0 : !strcmp(name, contexts[1]) ? 1 : 2;
    if (ctx == 2 && e->size == SMALL && offset >= 900 * 1024)
        return -EIO;
    uint64_t gran = e->size == BIG ? UINT64_C(1) << 33 : (uint64_t)4096 << ctx;
    uint64_t pos = offset, end = offset + length;
    size_t n = 0;
    while (pos < end && n < max) {
        uint64_t next = (pos / gran + 1) * gran;
        if (next > end)
            next = end;
        uint64_t k = pos / gran;
        out[n].length = next - pos;
        out[n].flags = ctx == 0 ? (k % 2 ? 0 : NBD_STATE_HOLE | NBD_STATE_ZERO)
                     : ctx == 1 ? (k % 3 == 0) : (k % 4);
        n++;
        pos = next;
    }
    return (int)n;
}

static void ex_close(void *handle)
{
    free(handle);
}

static int ex_open(void *opaque, const char *name, struct nbd_server_export *x)
{
    uint64_t size;
    if (!strcmp(name, "") || !strcmp(name, "disk"))
        size = SMALL;
    else if (!strcmp(name, "big"))
        size = BIG;
    else {
        errno = ENOENT;
        return -1;
    }
    struct fexport *e = calloc(1, sizeof *e);
    if (!e) {
        errno = ENOMEM;
        return -1;
    }
    e->size = size;
    e->contexts[e->ncontexts++] = contexts[0];
    if (opens++ % 2 == 0)
        e->contexts[e->ncontexts++] = contexts[1];
    e->contexts[e->ncontexts++] = contexts[2];
    snprintf(e->desc, sizeof e->desc, "%s export", size == BIG ? "big" : "small");
    *x = (struct nbd_server_export){
        .handle = e,
        .size = size,
        .flags = NBD_FLAG_READ_ONLY | NBD_FLAG_CAN_MULTI_CONN,
        .description = e->desc,
        .ncontexts = e->ncontexts,
        .contexts = e->contexts,
        .read = ex_read,
        .block_status = ex_block_status,
        .close = ex_close,
    };
    return 0;
}

static int ex_list(void *opaque, int (*fn)(void *, const char *, const char *), void *fnopaque)
{
    if (fn(fnopaque, "disk", "a small disk") < 0 || fn(fnopaque, "big", NULL) < 0)
        return -1;
    return 0;
}

static struct nbd_server *servers[2];

static void setup(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    char psk[] = "/tmp/fuzz_server-psk.XXXXXX";
    int fd = mkstemp(psk);
    const char line[] = "alice:00112233445566778899aabbccddeeff\n";
    if (fd < 0 || write(fd, line, sizeof line - 1) != (ssize_t)sizeof line - 1)
        broken("cannot write the PSK file");
    close(fd);
    struct nbd_server_callbacks cb = { .open = ex_open, .list = ex_list };
    struct nbd_server_opts o = { .handshake_timeout_ms = 2000 };
    servers[0] = nbd_server_new(&o, &cb);
    o.tls_psk_file = psk;
    servers[1] = nbd_server_new(&o, &cb);
    unlink(psk);
    if (!servers[0] || !servers[1])
        broken("nbd_server_new failed");
}

struct feeder {
    int fd;
    const uint8_t *data;
    size_t size;
    size_t written, replied;
};

/* Writes the input while draining the replies; then half-closes and
 * drains until the server closes. */
static void *feed(void *opaque)
{
    struct feeder *f = opaque;
    size_t pos = 0;
    bool wdone = false;
    uint8_t sink[65536];

    if (f->size == 0) {
        shutdown(f->fd, SHUT_WR);
        wdone = true;
    }
    for (;;) {
        struct pollfd p = { f->fd, (short)(POLLIN | (wdone ? 0 : POLLOUT)), 0 };
        if (poll(&p, 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t k = recv(f->fd, sink, sizeof sink, MSG_DONTWAIT);
            if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR))
                break; /* the server closed its end */
            if (k > 0)
                f->replied += (size_t)k;
        }
        if (!wdone && (p.revents & POLLOUT)) {
            ssize_t k = send(f->fd, f->data + pos, f->size - pos, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (k > 0)
                pos += (size_t)k;
            else if (k < 0 && errno != EAGAIN && errno != EINTR)
                wdone = true; /* the server stopped reading: fine */
            if (pos == f->size)
                wdone = true;
            if (wdone)
                shutdown(f->fd, SHUT_WR);
        }
    }
    f->written = pos;
    return NULL;
}

static void log_line(void *opaque, int level, const char *msg)
{
    fprintf(stderr, "fuzz_server: log %d: %s\n", level, msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    pthread_t t;

    if (size < 1)
        return 0;
    setup();
    /* FUZZ_SERVER_VERBOSE=1: what each input got (for checking the seeds). */
    static int verbose = -1;
    if (verbose < 0) {
        verbose = getenv("FUZZ_SERVER_VERBOSE") != NULL;
        if (verbose)
            nbd_set_log(log_line, NULL);
    }
    struct nbd_server *s = servers[data[0] & 1];
    opens = 0;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        broken("socketpair failed");
    struct feeder f = { sv[1], data + 1, size - 1, 0, 0 };
    if (pthread_create(&t, NULL, feed, &f) != 0)
        broken("pthread_create failed");
    nbd_server_serve_fd(s, sv[0]); /* closes sv[0] */
    pthread_join(t, NULL);
    close(sv[1]);
    if (verbose)
        fprintf(stderr, "fuzz_server: sent %zu of %zu bytes, got %zu bytes of replies\n",
                f.written, f.size, f.replied);
    return 0;
}
