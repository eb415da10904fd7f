/* common/error.c: the per-thread last error. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"

#define ERRMAX 1024

static __thread char last_error[ERRMAX];
static __thread int last_errno;

const char *error_msg(void)
{
    return last_error[0] ? last_error : "no error";
}

int error_errno(void)
{
    return last_errno;
}

void error_set(int errnum, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    last_errno = errnum;
    errno = errnum;
}

void error_save(struct error_saved *e)
{
    e->errnum = last_errno;
    memcpy(e->msg, last_error, sizeof e->msg);
}

void error_restore(const struct error_saved *e)
{
    error_set(e->errnum, "%s", e->msg);
}

void error_prefix(const char *fmt, ...)
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
