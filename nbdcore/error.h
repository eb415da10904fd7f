/* error.h (nbdcore internal): the per-thread last error.
 *
 * nbdcore never prints and never exits.  A failing function stores a message
 * and an errno here and returns -1 / NULL; the public nbd_get_error() and
 * nbd_get_errno() read them back.  nbd_prefix_error() lets a caller add its
 * context in front of the message of a callee ("handshake: " + "...").
 */
#ifndef NBDCORE_ERROR_H
#define NBDCORE_ERROR_H

#include <stdarg.h>

void nbd_set_error(int errnum, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void nbd_prefix_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Debug log through the application's callback (nbd_set_log); cheap no-op
 * when none is installed. */
void nbd_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
