/* common/error.h: the per-thread last error shared by every layer.
 *
 * A failing function stores a message and an errno and returns -1 / NULL;
 * each caller on the way up may put its context in front of the message
 * ("backup vm1: read 0x1000+65536: " + "server closed the connection").
 * nbdcore's nbd_get_error() / nbd_get_errno() read the same storage.
 */
#ifndef COMMON_ERROR_H
#define COMMON_ERROR_H

void error_set(int errnum, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *error_msg(void);   /* never NULL */
int error_errno(void);

/* Keeps the current error across clean-up code that may set its own:
 *   struct error_saved e; error_save(&e); ...clean up...; error_restore(&e); */
struct error_saved {
    int errnum;
    char msg[1024];
};
void error_save(struct error_saved *e);
void error_restore(const struct error_saved *e);

#endif
