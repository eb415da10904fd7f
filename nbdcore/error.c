/* error.c: the per-thread last error and the log callback. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "nbdcore.h"
#include "error.h"

#define ERRMAX 1024

static __thread char last_error[ERRMAX];
static __thread int last_errno;

static nbd_log_fn log_fn;
static void *log_opaque;

const char *nbd_get_error(void)
{
    return last_error[0] ? last_error : "no error";
}

int nbd_get_errno(void)
{
    return last_errno;
}

void nbd_set_error(int errnum, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    last_errno = errnum;
    errno = errnum;
}

void nbd_prefix_error(const char *fmt, ...)
{
    char old[ERRMAX];
    va_list ap;
    int saved = last_errno;
    int n;

    memcpy(old, last_error, sizeof old);
    va_start(ap, fmt);
    n = vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof last_error)
        snprintf(last_error + n, sizeof last_error - (size_t)n, "%s", old);
    errno = saved;
}

void nbd_set_log(nbd_log_fn fn, void *opaque)
{
    log_fn = fn;
    log_opaque = opaque;
}

void nbd_debug(const char *fmt, ...)
{
    char msg[ERRMAX];
    va_list ap;

    if (!log_fn)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_fn(log_opaque, 2, msg);
}
