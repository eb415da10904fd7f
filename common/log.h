/* common/log.h: log lines of the process: stderr, and syslog when asked.
 *
 * One interface for every command: "nbdvault run: warning: vm1/vda: ..."
 * on stderr (with an ISO 8601 UTC timestamp in front when timestamps are
 * on, as `run` does), and the same line without the program name to
 * syslog(3) with --syslog.  Thread-safe (one write per line).
 */
#ifndef COMMON_LOG_H
#define COMMON_LOG_H

#include <stdbool.h>

enum log_level { LOG_LEVEL_ERROR, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };

/* prefix: "nbdvault run"; level: the least important level shown on stderr
 * (LOG_LEVEL_WARN by default; NBDVAULT_DEBUG=1 shows everything). */
void log_setup(const char *prefix, enum log_level level, bool timestamps, bool use_syslog);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool log_enabled(enum log_level level);

#endif
