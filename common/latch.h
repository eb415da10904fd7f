/* common/latch.h: the first error of a job that runs on several threads.
 *
 * Whichever thread fails first sets it; later failures (mostly echoes of
 * the first: a reader that stops because the job stopped) are dropped.
 * The owner raises it into the thread's error (common/error.h) at the end.
 * One hook, called once when it is set, wakes a thread that waits on a
 * condition of its own (the backup's committer, say).
 */
#ifndef COMMON_LATCH_H
#define COMMON_LATCH_H

#include <pthread.h>
#include <stdbool.h>

struct latch {
    pthread_mutex_t lock;
    int err;                      /* 0 until set (read atomically) */
    char msg[1024];
    void (*hook)(void *opaque);
    void *hook_opaque;
};

void latch_init(struct latch *l);
void latch_destroy(struct latch *l);
void latch_on_set(struct latch *l, void (*hook)(void *opaque), void *opaque);

void latch_set(struct latch *l, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Sets it from the thread's current error (error_errno, error_msg). */
void latch_set_error(struct latch *l);
bool latch_isset(struct latch *l);
/* -1 with the thread's error set to the latch's when it is set, else 0. */
int latch_raise(struct latch *l);

#endif
