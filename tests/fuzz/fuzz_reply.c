/* fuzz_reply.c: the client's reply state machine (nbdcore/client.c) fed
 * with whatever a hostile server could send during transmission.
 *
 * A detached connection (no socket) gets a fixed set of requests, then the
 * input is fed to it as if received, and the connection is closed.  The
 * sanitizers catch memory errors and leaks; the harness itself aborts when
 * a documented promise of the API is broken: every accepted request
 * completes exactly once, a dead connection has failed everything, and the
 * extents handed to a callback are non-empty and stay within the request.
 *
 * Input layout (tests/fuzz/make-corpus.py writes seeds that follow it):
 *   byte 0, bits 0-1  reply mode: 0 simple, 1 structured, 2-3 extended
 *           bit 2     BLOCK_STATUS with NBD_CMD_FLAG_REQ_ONE
 *           bit 3     BLOCK_STATUS names context 1 (qemu:dirty-bitmap:bm0)
 *           bit 4     the server advertises NBD_FLAG_BLOCK_STAT_PAYLOAD
 *           bit 5     three contexts instead of two
 *           bits 6-7  how the rest is cut before feeding: 0 in one piece,
 *                     1 byte by byte, 2 in 7-byte slices, 3 in three pieces
 *   the rest          reply bytes
 *
 * Requests, in cookie order (the detached connection starts at 1):
 *   1  READ 64 KiB at 0x10000
 *   2  BLOCK_STATUS 128 KiB at 0
 *   3  WRITE 4 KiB at 0x20000
 *   4  FLUSH
 *   5  READ 512 bytes at 1 MiB - 512 (with NBD_CMD_FLAG_DF unless simple)
 * Contexts: id 0 base:allocation, 1 qemu:dirty-bitmap:bm0,
 * 2 qemu:allocation-depth; export size 1 MiB.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdcore/internal.h"
#include "nbdcore/nbdcore.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define EXPORT_SIZE (1024 * 1024)
#define NREQ 5

static const char *const contexts3[] = { "base:allocation", "qemu:dirty-bitmap:bm0",
                                         "qemu:allocation-depth", NULL };
static const char *const contexts2[] = { "base:allocation", "qemu:dirty-bitmap:bm0", NULL };

struct req {
    bool submitted;
    int calls;
    int err;
    uint64_t offset, count;       /* what extents must stay within */
    const char *context;          /* block status: the context asked for, or NULL */
};

static struct req reqs[NREQ];

static void broken(const char *what)
{
    fprintf(stderr, "fuzz_reply: %s\n", what);
    abort();
}

static void done(void *opaque, int err)
{
    struct req *r = opaque;

    if (++r->calls > 1)
        broken("a completion was called twice");
    r->err = err;
}

static int extents(void *opaque, const char *context, uint64_t offset,
                   const struct nbd_extent *e, size_t n)
{
    struct req *r = opaque;
    uint64_t sum = 0;

    if (offset != r->offset)
        broken("extents do not start at the request's offset");
    if (n == 0)
        broken("extent callback with no extents");
    if (r->context && strcmp(context, r->context) != 0)
        broken("extents of a context the request did not name");
    for (size_t i = 0; i < n; i++) {
        if (e[i].length == 0)
            broken("zero-length extent reached the callback");
        if (e[i].length > r->count - sum)
            broken("extents run past the request");
        sum += e[i].length;
    }
    /* Now and then, the caller refuses the extents. */
    return n > 3 && e[n - 1].flags == 7 ? -1 : 0;
}

static void feed(struct nbd_conn *c, const uint8_t *p, size_t n, unsigned how)
{
    size_t step;

    switch (how) {
    case 0:
        nbd_rx_feed(c, p, n);
        return;
    case 1:
        step = 1;
        break;
    case 2:
        step = 7;
        break;
    default:
        step = n / 3 + 1;
        break;
    }
    for (size_t pos = 0; pos < n && !nbd_is_dead(c); pos += step)
        nbd_rx_feed(c, p + pos, n - pos < step ? n - pos : step);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;

    uint8_t ctl = data[0];
    unsigned mode = ctl & 3;
    bool structured = mode >= 1, extended = mode >= 2;
    uint16_t eflags = NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_DF |
                      (ctl & 0x10 ? NBD_FLAG_BLOCK_STAT_PAYLOAD : 0);
    struct nbd_conn *c = nbd_conn_new_detached(structured, extended, EXPORT_SIZE, eflags,
                                               ctl & 0x20 ? contexts3 : contexts2);
    if (!c)
        return 0;

    /* Exact-size heap buffers, so that a stray write is caught. */
    uint8_t *rbuf = malloc(65536), *rbuf2 = malloc(512), *wbuf = calloc(1, 4096);
    if (!rbuf || !rbuf2 || !wbuf)
        abort();
    memset(reqs, 0, sizeof reqs);
    reqs[0] = (struct req){ .offset = 0x10000, .count = 65536 };
    reqs[1] = (struct req){ .offset = 0, .count = 131072,
                            .context = ctl & 8 ? "qemu:dirty-bitmap:bm0" : NULL };
    reqs[2] = (struct req){ .offset = 0x20000, .count = 4096 };
    reqs[4] = (struct req){ .offset = EXPORT_SIZE - 512, .count = 512 };

    reqs[0].submitted = nbd_aio_pread(c, rbuf, 65536, 0x10000, 0, done, &reqs[0]) == 0;
    reqs[1].submitted =
        nbd_aio_block_status(c, 131072, 0, ctl & 4 ? NBD_CMD_FLAG_REQ_ONE : 0, reqs[1].context,
                             extents, &reqs[1], done, &reqs[1]) == 0;
    reqs[2].submitted = nbd_aio_pwrite(c, wbuf, 4096, 0x20000, 0, done, &reqs[2]) == 0;
    reqs[3].submitted = nbd_aio_flush(c, 0, done, &reqs[3]) == 0;
    reqs[4].submitted = nbd_aio_pread(c, rbuf2, 512, EXPORT_SIZE - 512,
                                      structured ? NBD_CMD_FLAG_DF : 0, done, &reqs[4]) == 0;
    for (int i = 0; i < NREQ; i++)
        if (!reqs[i].submitted)
            broken("a request was refused");

    feed(c, data + 1, size - 1, ctl >> 6);

    unsigned pending = 0;
    for (int i = 0; i < NREQ; i++)
        if (reqs[i].calls == 0)
            pending++;
    if (nbd_in_flight(c) != pending)
        broken("nbd_in_flight disagrees with the completions seen");
    if (nbd_is_dead(c) && pending)
        broken("a dead connection left requests pending");

    /* Closing fails whatever is still in flight. */
    nbd_close(c);
    for (int i = 0; i < NREQ; i++)
        if (reqs[i].calls != 1)
            broken("a request did not complete exactly once");
    free(rbuf);
    free(rbuf2);
    free(wbuf);
    return 0;
}
