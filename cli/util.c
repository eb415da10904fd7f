/* util.c: output helpers shared by the commands. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "common/error.h"
#include "common/log.h"
#include "nbdcore/nbdcore.h"

int cli_try_help(const char *cmd)
{
    fprintf(stderr, "Try '%s %s --help'.\n", cli_progname, cmd);
    return CLI_EXIT_USAGE;
}

bool cli_errors_to_log;

static int verror(int code, const char *cmd, const char *fmt, va_list ap)
{
    if (cli_errors_to_log && code != CLI_EXIT_USAGE) {
        char msg[2048];
        vsnprintf(msg, sizeof msg, fmt, ap);
        log_msg(LOG_LEVEL_ERROR, "%s", msg);
        return code;
    }
    fprintf(stderr, "%s %s: ", cli_progname, cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    if (code == CLI_EXIT_USAGE)
        cli_try_help(cmd);
    return code;
}

int cli_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = verror(CLI_EXIT_FAIL, cmd, fmt, ap);
    va_end(ap);
    return r;
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = verror(CLI_EXIT_USAGE, cmd, fmt, ap);
    va_end(ap);
    return r;
}

void cli_print_json(struct json_object *obj)
{
    puts(json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                 JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(obj);
}

void cli_human_size(char *buf, size_t cap, uint64_t bytes)
{
    static const char units[] = "KMGTPE";
    int u = -1;
    uint64_t div = 1;

    while (u < 5 && bytes / div >= 1024) {
        div *= 1024;
        u++;
    }
    if (u < 0)
        snprintf(buf, cap, "%llu", (unsigned long long)bytes);
    else if (bytes % div == 0)
        snprintf(buf, cap, "%llu%c", (unsigned long long)(bytes / div), units[u]);
    else
        snprintf(buf, cap, "%.1f%c", (double)bytes / (double)div, units[u]);
}

/* nbdcore's levels: 0 error, 1 warning, 2 debug. */
static void log_cb(void *opaque, int level, const char *msg)
{
    log_msg(level == 0 ? LOG_LEVEL_ERROR : level == 1 ? LOG_LEVEL_WARN : LOG_LEVEL_DEBUG, "%s", msg);
}

void cli_setup_logging(void)
{
    log_setup(cli_progname, LOG_LEVEL_WARN, false, false);
    nbd_set_log(log_cb, NULL);
}

struct agent_repo *cli_open_repo(const char *cmd, const char *repo, const char *config, int *code)
{
    struct cli_config cfg;
    struct agent_repo *r = NULL;

    *code = CLI_EXIT_USAGE;
    cli_config_defaults(&cfg);
    if (config && cli_config_load(&cfg, config, cmd) < 0)
        goto out;
    if (!repo)
        repo = cfg.repo;
    if (!repo) {
        cli_usage_error(cmd, "--repo DIR is required");
        goto out;
    }
    *code = CLI_EXIT_FAIL;
    if (!(r = agent_repo_open(repo, false)))
        cli_error(cmd, "%s", error_msg());
out:
    cli_config_free(&cfg);
    return r;
}
