/* error.h (nbdcore internal): errors and debug logging.
 *
 * nbdcore never prints and never exits.  A failing function stores a
 * message and an errno (common/error.h, read back by the public
 * nbd_get_error / nbd_get_errno) and returns -1 / NULL.
 */
#ifndef NBDCORE_ERROR_H
#define NBDCORE_ERROR_H

#include "common/error.h"

#define nbd_set_error error_set
#define nbd_prefix_error error_prefix

/* Debug log through the application's callback (nbd_set_log). */
void nbd_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
