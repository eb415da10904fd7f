/* error.c: nbdcore's errors live in the process-wide per-thread error of
 * common/error.c; this file adds the log callback. */
#include <stdarg.h>
#include <stdio.h>

#include "common/error.h"
#include "nbdcore.h"
#include "error.h"

static nbd_log_fn log_fn;
static void *log_opaque;

const char *nbd_get_error(void)
{
    return error_msg();
}

int nbd_get_errno(void)
{
    return error_errno();
}

void nbd_set_log(nbd_log_fn fn, void *opaque)
{
    log_fn = fn;
    log_opaque = opaque;
}

void nbd_debug(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    if (!log_fn)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_fn(log_opaque, 2, msg);
}
