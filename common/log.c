/* log.c: see log.h. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <sys/time.h>

#include "common/log.h"

static char log_prefix[64] = "nbdvault";
static enum log_level log_level = LOG_LEVEL_WARN;
static bool log_timestamps, log_syslog;

void log_setup(const char *prefix, enum log_level level, bool timestamps, bool use_syslog)
{
    snprintf(log_prefix, sizeof log_prefix, "%s", prefix);
    log_level = getenv("NBDVAULT_DEBUG") ? LOG_LEVEL_DEBUG : level;
    log_timestamps = timestamps;
    if (use_syslog && !log_syslog)
        openlog("nbdvault", LOG_PID, LOG_DAEMON);
    log_syslog = use_syslog;
}

bool log_enabled(enum log_level level)
{
    return level <= log_level || (log_syslog && level <= LOG_LEVEL_INFO);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    static const char *const names[] = { "error: ", "warning: ", "", "debug: " };
    static const int prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
    char msg[2048], ts[40] = "";
    va_list ap;

    if (!log_enabled(level))
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (log_syslog && level <= LOG_LEVEL_INFO)
        syslog(prio[level], "%s%s", names[level], msg);
    if (level > log_level)
        return;
    if (log_timestamps) {
        struct timeval tv;
        struct tm tm;
        gettimeofday(&tv, NULL);
        gmtime_r(&tv.tv_sec, &tm);
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ ", &tm);
    }
    fprintf(stderr, "%s%s: %s%s\n", ts, log_prefix, names[level], msg);
}
