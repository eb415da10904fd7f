/* common/latch.c: the first error of a job that runs on several threads. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

#include "common/error.h"
#include "common/latch.h"

void latch_init(struct latch *l)
{
    pthread_mutex_init(&l->lock, NULL);
    l->err = 0;
    l->msg[0] = '\0';
    l->hook = NULL;
    l->hook_opaque = NULL;
}

void latch_destroy(struct latch *l)
{
    pthread_mutex_destroy(&l->lock);
}

void latch_on_set(struct latch *l, void (*hook)(void *opaque), void *opaque)
{
    pthread_mutex_lock(&l->lock);
    l->hook = hook;
    l->hook_opaque = opaque;
    pthread_mutex_unlock(&l->lock);
}

void latch_set(struct latch *l, int err, const char *fmt, ...)
{
    va_list ap;
    bool first = false;

    pthread_mutex_lock(&l->lock);
    if (!l->err) {
        va_start(ap, fmt);
        vsnprintf(l->msg, sizeof l->msg, fmt, ap);
        va_end(ap);
        __atomic_store_n(&l->err, err ? err : EIO, __ATOMIC_RELEASE);
        first = true;
    }
    void (*hook)(void *) = l->hook;
    void *opaque = l->hook_opaque;
    pthread_mutex_unlock(&l->lock);
    /* Outside the lock: the hook takes a lock of its owner's, whose holder
     * may be the one failing. */
    if (first && hook)
        hook(opaque);
}

void latch_set_error(struct latch *l)
{
    latch_set(l, error_errno(), "%s", error_msg());
}

bool latch_isset(struct latch *l)
{
    return __atomic_load_n(&l->err, __ATOMIC_ACQUIRE) != 0;
}

int latch_raise(struct latch *l)
{
    if (!latch_isset(l))
        return 0;
    pthread_mutex_lock(&l->lock);
    error_set(l->err, "%s", l->msg);
    pthread_mutex_unlock(&l->lock);
    return -1;
}
