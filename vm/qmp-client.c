/* qmp-client.c: see qmp-client.h.
 *
 * QMP is one JSON object per line in each direction.  A reply carries the
 * id of its command ("return" or "error"); an event has "event", "data"
 * and "timestamp" and may come at any time, also between a command and its
 * reply: events read while waiting are queued.
 */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"
#include "common/clock.h"
#include "vm/qmp-client.h"

#define QMP_MAX_LINE (4u << 20)   /* a query of many nodes is long, not this long */
#define QMP_MAX_QUEUED 4096

struct qmp {
    int fd;
    int timeout_ms;
    unsigned long next_id;
    char *buf;                    /* received, not yet a whole line */
    size_t len, cap;
    struct json_object *events;   /* array of queued events */
};

/* The next JSON object from the monitor, or NULL (error set). */
static struct json_object *read_msg(struct qmp *q, long long deadline)
{
    for (;;) {
        char *nl = q->len ? memchr(q->buf, '\n', q->len) : NULL;
        if (nl) {
            *nl = 0;
            struct json_object *o = json_tokener_parse(q->buf);
            size_t used = (size_t)(nl - q->buf) + 1;
            memmove(q->buf, q->buf + used, q->len - used);
            q->len -= used;
            if (!o || !json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                error_set(EPROTO, "QMP: a line that is not a JSON object");
                return NULL;
            }
            return o;
        }
        if (q->len == q->cap) {
            if (q->cap >= QMP_MAX_LINE) {
                error_set(EPROTO, "QMP: a line over %u bytes", QMP_MAX_LINE);
                return NULL;
            }
            size_t ncap = q->cap ? q->cap * 2 : 65536;
            char *n = realloc(q->buf, ncap + 1);
            if (!n) {
                error_set(ENOMEM, "out of memory");
                return NULL;
            }
            q->buf = n;
            q->cap = ncap;
        }
        long long left = deadline - clock_mono_ms();
        if (left <= 0) {
            error_set(ETIMEDOUT, "QMP: no answer from QEMU within %d ms", q->timeout_ms);
            return NULL;
        }
        struct pollfd p = { q->fd, POLLIN, 0 };
        int r = poll(&p, 1, (int)(left > 1000000 ? 1000000 : left));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            continue;
        ssize_t n = read(q->fd, q->buf + q->len, q->cap - q->len);
        if (n == 0) {
            error_set(ECONNRESET, "QEMU closed the QMP connection");
            return NULL;
        }
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            error_set(errno, "QMP: read: %s", strerror(errno));
            return NULL;
        }
        q->len += (size_t)n;
    }
}

static int write_msg(struct qmp *q, struct json_object *o)
{
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    size_t len = strlen(s), off = 0;
    char *line = malloc(len + 1);
    if (!line) {
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    memcpy(line, s, len);
    line[len++] = '\n';
    while (off < len) {
        ssize_t n = send(q->fd, line + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            error_set(errno ? errno : EPIPE, "QMP: send: %s", strerror(errno ? errno : EPIPE));
            free(line);
            return -1;
        }
        off += (size_t)n;
    }
    free(line);
    return 0;
}

static void queue_event(struct qmp *q, struct json_object *ev)
{
    if (json_object_array_length(q->events) >= QMP_MAX_QUEUED)
        json_object_array_del_idx(q->events, 0, 1);
    json_object_array_add(q->events, ev);
}

struct qmp *qmp_connect(const char *path, int timeout_ms)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    struct qmp *q = calloc(1, sizeof *q);

    if (!q) {
        error_set(ENOMEM, "out of memory");
        return NULL;
    }
    q->fd = -1;
    q->timeout_ms = timeout_ms > 0 ? timeout_ms : 60000;
    q->events = json_object_new_array();
    if (strlen(path) >= sizeof sun.sun_path) {
        error_set(ENAMETOOLONG, "QMP socket %s: path too long", path);
        goto fail;
    }
    strcpy(sun.sun_path, path);
    q->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (q->fd < 0 || connect(q->fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
        error_set(errno, "QMP socket %s: %s", path, strerror(errno));
        goto fail;
    }
    struct json_object *greeting = read_msg(q, clock_mono_ms() + q->timeout_ms), *v;
    if (!greeting) {
        error_prefix("QMP socket %s: ", path);
        goto fail;
    }
    bool ok = json_object_object_get_ex(greeting, "QMP", &v);
    json_object_put(greeting);
    if (!ok) {
        error_set(EPROTO, "QMP socket %s: no QMP greeting (another monitor protocol?)", path);
        goto fail;
    }
    if (qmp_run(q, "qmp_capabilities", NULL) < 0) {
        error_prefix("QMP socket %s: ", path);
        goto fail;
    }
    return q;
fail:
    qmp_close(q);
    return NULL;
}

void qmp_close(struct qmp *q)
{
    if (!q)
        return;
    if (q->fd >= 0)
        close(q->fd);
    json_object_put(q->events);
    free(q->buf);
    free(q);
}

struct json_object *qmp_exec(struct qmp *q, const char *cmd, struct json_object *args)
{
    char id[32];
    struct json_object *req = json_object_new_object(), *v;

    snprintf(id, sizeof id, "nbdvault-%lu", ++q->next_id);
    json_object_object_add(req, "execute", json_object_new_string(cmd));
    if (args)
        json_object_object_add(req, "arguments", args);
    json_object_object_add(req, "id", json_object_new_string(id));
    int w = write_msg(q, req);
    json_object_put(req);
    if (w < 0) {
        error_prefix("QMP %s: ", cmd);
        return NULL;
    }
    long long deadline = clock_mono_ms() + q->timeout_ms;
    for (;;) {
        struct json_object *m = read_msg(q, deadline);
        if (!m) {
            error_prefix("QMP %s: ", cmd);
            return NULL;
        }
        if (json_object_object_get_ex(m, "event", &v)) {
            queue_event(q, m);
            continue;
        }
        const char *mid = qmp_str(m, "id");
        if (!mid || strcmp(mid, id) != 0) {
            json_object_put(m);   /* a reply to a command we gave up on */
            continue;
        }
        if (json_object_object_get_ex(m, "error", &v)) {
            const char *cls = qmp_str(v, "class"), *desc = qmp_str(v, "desc");
            error_set(EIO, "QMP %s: %s: %s", cmd, cls ? cls : "error", desc ? desc : "(no description)");
            json_object_put(m);
            return NULL;
        }
        struct json_object *ret = NULL;
        if (json_object_object_get_ex(m, "return", &v))
            ret = json_object_get(v);
        json_object_put(m);
        return ret ? ret : json_object_new_object();
    }
}

int qmp_run(struct qmp *q, const char *cmd, struct json_object *args)
{
    struct json_object *r = qmp_exec(q, cmd, args);
    json_object_put(r);
    return r ? 0 : -1;
}

/* Takes a matching event out of the queue: its data, or NULL. */
static struct json_object *take_queued(struct qmp *q, const char *name, const char *key,
                                       const char *value)
{
    size_t n = json_object_array_length(q->events);
    for (size_t i = 0; i < n; i++) {
        struct json_object *ev = json_object_array_get_idx(q->events, i), *data = NULL;
        const char *en = qmp_str(ev, "event");
        if (!en || strcmp(en, name) != 0)
            continue;
        json_object_object_get_ex(ev, "data", &data);
        if (key) {
            const char *dv = qmp_str(data, key);
            if (!dv || strcmp(dv, value) != 0)
                continue;
        }
        struct json_object *ret = data ? json_object_get(data) : json_object_new_object();
        json_object_array_del_idx(q->events, i, 1);
        return ret;
    }
    return NULL;
}

void qmp_drop_events(struct qmp *q, const char *name, const char *key, const char *value)
{
    struct json_object *d;
    while ((d = take_queued(q, name, key, value)))
        json_object_put(d);
}

struct json_object *qmp_wait_event(struct qmp *q, const char *name, const char *key,
                                   const char *value, int timeout_ms)
{
    long long deadline = clock_mono_ms() + (timeout_ms > 0 ? timeout_ms : q->timeout_ms);
    for (;;) {
        struct json_object *d = take_queued(q, name, key, value), *v;
        if (d)
            return d;
        struct json_object *m = read_msg(q, deadline);
        if (!m) {
            error_prefix("waiting for QMP event %s: ", name);
            return NULL;
        }
        if (json_object_object_get_ex(m, "event", &v))
            queue_event(q, m);
        else
            json_object_put(m);
    }
}

struct json_object *qmp_args(const char *key, ...)
{
    struct json_object *o = json_object_new_object();
    va_list ap;
    va_start(ap, key);
    for (const char *k = key; k; k = va_arg(ap, const char *))
        json_object_object_add(o, k, va_arg(ap, struct json_object *));
    va_end(ap);
    return o;
}

const char *qmp_str(struct json_object *obj, const char *key)
{
    struct json_object *v;
    if (!obj || !json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}
