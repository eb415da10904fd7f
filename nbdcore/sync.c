/* sync.c: the synchronous API over the asynchronous one (each call waits
 * for its own reply), the block status walk, and the reply timeout that
 * every wait honours: a server that sends nothing for reply_timeout_ms while
 * requests are in flight is dead, not slow. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "common/clock.h"
#include "internal.h"

/* ---- Reply timeout ------------------------------------------------------------ */

static int reply_timeout_ms(const struct nbd_conn *c)
{
    int t = c->opts.reply_timeout_ms;
    return t == 0 ? NBD_REPLY_TIMEOUT_DEFAULT_MS : t;
}

int nbd_stall_clamp(const struct nbd_conn *c, int timeout_ms)
{
    int t = reply_timeout_ms(c);
    if (c->dead || !c->ops_in_flight || t < 0)
        return timeout_ms;
    int64_t left = c->wait_since_ms + t - clock_mono_ms();
    if (left < 0)
        left = 0;
    if (timeout_ms < 0 || left < timeout_ms)
        return (int)left;
    return timeout_ms;
}

int nbd_stall_check(struct nbd_conn *c)
{
    int t = reply_timeout_ms(c);
    if (c->dead || !c->ops_in_flight || t < 0)
        return 0;
    if (clock_mono_ms() - c->wait_since_ms < t)
        return 0;
    nbd_conn_kill(c, ETIMEDOUT, "no reply from the server for %d s with %u request%s in flight",
                  (t + 999) / 1000, c->ops_in_flight, c->ops_in_flight == 1 ? "" : "s");
    return -1;
}

static void setmsg(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = 0;
}

/* ---- Synchronous API ----------------------------------------------------------- */

struct sync_wait {
    bool done;
    int err;
    char msg[512];
};

static void sync_done(void *opaque, int err)
{
    struct sync_wait *w = opaque;

    w->done = true;
    w->err = err;
    if (err)
        setmsg(w->msg, sizeof w->msg, nbd_get_error());
}

static int sync_run(struct nbd_conn *c, struct sync_wait *w)
{
    while (!w->done)
        if (nbd_poll(c, -1) < 0 && !w->done)
            return -1;
    if (w->err) {
        nbd_set_error(w->err, "%s", w->msg);
        return -1;
    }
    return 0;
}

int nbd_pread(struct nbd_conn *c, void *buf, uint64_t count, uint64_t offset, uint32_t flags)
{
    struct sync_wait w = { 0 };
    if (nbd_aio_pread(c, buf, count, offset, flags, sync_done, &w) < 0)
        return -1;
    return sync_run(c, &w);
}

int nbd_pwrite(struct nbd_conn *c, const void *buf, uint64_t count, uint64_t offset, uint32_t flags)
{
    struct sync_wait w = { 0 };
    if (nbd_aio_pwrite(c, buf, count, offset, flags, sync_done, &w) < 0)
        return -1;
    return sync_run(c, &w);
}

int nbd_flush(struct nbd_conn *c, uint32_t flags)
{
    struct sync_wait w = { 0 };
    if (nbd_aio_flush(c, flags, sync_done, &w) < 0)
        return -1;
    return sync_run(c, &w);
}

int nbd_trim(struct nbd_conn *c, uint64_t count, uint64_t offset, uint32_t flags)
{
    struct sync_wait w = { 0 };
    if (nbd_aio_trim(c, count, offset, flags, sync_done, &w) < 0)
        return -1;
    return sync_run(c, &w);
}

int nbd_zero(struct nbd_conn *c, uint64_t count, uint64_t offset, uint32_t flags)
{
    struct sync_wait w = { 0 };
    if (nbd_aio_zero(c, count, offset, flags, sync_done, &w) < 0)
        return -1;
    return sync_run(c, &w);
}

int nbd_cache(struct nbd_conn *c, uint64_t count, uint64_t offset, uint32_t flags)
{
    struct sync_wait w = { 0 };
    if (nbd_aio_cache(c, count, offset, flags, sync_done, &w) < 0)
        return -1;
    return sync_run(c, &w);
}

/* ---- Block status walk --------------------------------------------------------- */

struct extent_vec {
    struct nbd_extent *e;
    size_t n, cap;
};

static int collect_extents(void *opaque, const char *context, uint64_t offset,
                           const struct nbd_extent *e, size_t n)
{
    struct extent_vec *v = opaque;

    if (v->n + n > v->cap) {
        size_t cap = v->cap ? v->cap : 64;
        while (cap < v->n + n)
            cap *= 2;
        struct nbd_extent *ne = realloc(v->e, cap * sizeof *ne);
        if (!ne) {
            nbd_set_error(ENOMEM, "out of memory");
            return -1;
        }
        v->e = ne;
        v->cap = cap;
    }
    memcpy(v->e + v->n, e, n * sizeof *e);
    v->n += n;
    return 0;
}

struct walk_out {
    nbd_extent_fn fn;
    void *opaque;
    const char *context;
    bool merge;
    bool have;
    uint64_t off;
    struct nbd_extent cur;
};

static int walk_emit(struct walk_out *o, uint64_t off, uint64_t len, uint64_t flags)
{
    if (o->merge && o->have && o->cur.flags == flags && o->off + o->cur.length == off) {
        o->cur.length += len;
        return 0;
    }
    if (o->have && o->fn(o->opaque, o->context, o->off, &o->cur, 1) < 0)
        return -1;
    o->have = true;
    o->off = off;
    o->cur.length = len;
    o->cur.flags = flags;
    return 0;
}

int nbd_block_status_walk(struct nbd_conn *c, const char *context, uint64_t offset,
                          uint64_t length, bool merge, nbd_extent_fn fn, void *opaque)
{
    struct extent_vec v = { 0 };
    struct walk_out o = { .fn = fn, .opaque = opaque, .context = context, .merge = merge };
    uint32_t a = nbd_conn_alignment(c);
    uint64_t pos = offset, end = offset + length;
    bool dirty_ctx = strncmp(context, NBD_CONTEXT_QEMU_DIRTY_BITMAP_PREFIX,
                             strlen(NBD_CONTEXT_QEMU_DIRTY_BITMAP_PREFIX)) == 0;
    int ret = -1;

    if (nbd_conn_refuse(c, "block status") < 0)
        return -1;
    if (nbd_conn_context_index(c, context) < 0) {
        nbd_set_error(ENOTSUP, "the server did not agree to metadata context %s", context);
        return -1;
    }
    if (length == 0)
        return 0;
    if (nbd_conn_check_range(c, "block status", length, offset) < 0)
        return -1;
    while (pos < end) {
        struct sync_wait w = { 0 };
        v.n = 0;
        if (nbd_aio_block_status(c, end - pos, pos, 0, context, collect_extents, &v, sync_done,
                                 &w) < 0 ||
            sync_run(c, &w) < 0)
            goto out;
        if (v.n == 0) {
            nbd_set_error(EPROTO, "server sent no extents for %s at 0x%llx", context,
                          (unsigned long long)pos);
            goto out;
        }
        for (size_t i = 0; i < v.n && pos < end; i++) {
            uint64_t len = v.e[i].length, fl = v.e[i].flags;
            if (len > end - pos)
                len = end - pos;
            if ((pos + len) % a && pos + len != end) {
                /* An extent ending off the minimum block size: round down;
                 * a lone sub-block extent becomes one block of the safe
                 * status (0, or dirty for a bitmap). */
                uint64_t down = len - (pos + len) % a;
                if (down == 0) {
                    len = end - pos < a ? end - pos : a;
                    fl = dirty_ctx ? NBD_STATE_DIRTY : 0;
                } else {
                    len = down;
                }
                if (walk_emit(&o, pos, len, fl) < 0)
                    goto out;
                pos += len;
                break; /* the rest is misaligned: ask again */
            }
            if (walk_emit(&o, pos, len, fl) < 0)
                goto out;
            pos += len;
        }
    }
    if (o.have && fn(opaque, context, o.off, &o.cur, 1) < 0)
        goto out;
    ret = 0;
out:
    free(v.e);
    return ret;
}
