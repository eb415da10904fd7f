/* cli.h: what the command-line front end shares between its commands. */
#ifndef CLI_H
#define CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <json-c/json.h>

struct agent_repo;

/* Exit codes (documented in README.md). */
#define CLI_EXIT_OK      0
#define CLI_EXIT_FAIL    1   /* the command failed: message on stderr */
#define CLI_EXIT_USAGE   2   /* bad usage */

extern const char *cli_progname;
/* Set by `run`: cli_error goes through common/log.h (timestamps, syslog). */
extern bool cli_errors_to_log;

/* A command: runs with argv[0] = its name; returns an exit code. */
struct cli_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
};

int cli_info(int argc, char **argv);
int cli_map(int argc, char **argv);
int cli_init(int argc, char **argv);
int cli_backup(int argc, char **argv);
int cli_list(int argc, char **argv);
int cli_restore(int argc, char **argv);
int cli_verify(int argc, char **argv);
int cli_prune(int argc, char **argv);
int cli_gc(int argc, char **argv);
int cli_serve(int argc, char **argv);
int cli_run(int argc, char **argv);
int cli_catalog(int argc, char **argv);
int cli_key(int argc, char **argv);
int cli_copy(int argc, char **argv);
/* Copies points of r to `to` and prints the result (cli/copy.c). */
int cli_copy_points(struct agent_repo *r, const char *to, const char *disk, int64_t point, bool json,
                    const char *cmd);

/* What one backup reads: an NBD export, a libvirt domain or a QMP socket
 * (`backup`'s options, or one section of `run`'s file). */
#define CLI_MAX_DISKS 64
struct cli_source {
    const char *name;             /* for messages: the section, domain, socket or disk */
    const char *uri, *disk, *bitmap;          /* NBD */
    const char *libvirt, *connect;            /* libvirt */
    const char *qmp, *vm;                     /* QMP */
    const char *disks[CLI_MAX_DISKS];         /* --disk targets / --node nodes */
    size_t ndisks;
    unsigned n_disk_opts, n_node_opts;        /* for the usage checks */
    const char *workdir;
    bool full;
    unsigned connections;
    int compress_level;
    uint64_t max_rate;
    int io_timeout_ms;            /* --io-timeout: 0 = default, -1 = never */
};
/* Usage checks (prints the error): 0 or -1. */
int cli_source_check(const struct cli_source *s, const char *cmd);
int cli_source_add_disk(struct cli_source *s, const char *name, const char *cmd);
/* Backs up s into r.  Results: appended to arr when given, else printed
 * (JSON when json).  Errors are printed.  0 when every disk succeeded. */
struct json_object;
int cli_backup_source(struct agent_repo *r, const struct cli_source *s, bool json,
                      struct json_object *arr, const char *cmd);

/* The configuration file (--config FILE); the command line overrides it. */
struct cli_config {
    char *repo;
    uint32_t chunk_size;
    unsigned connections;
    int compress_level;
    char *bitmap;
    char *work_dir;               /* [backup] work_dir */
    char *connect;                /* [backup] libvirt_connect */
    uint64_t max_rate;            /* [backup] max_rate */
    char *copy_to;                /* [repository] copy-to */
};
void cli_config_defaults(struct cli_config *c);
int cli_config_load(struct cli_config *c, const char *path, const char *cmd); /* prints errors */
void cli_config_free(struct cli_config *c);
int cli_parse_size(const char *v, uint64_t *out);            /* 64K, 4M, 1G, 1MiB */
int cli_parse_unsigned(const char *v, unsigned max, unsigned *out);

/* Opens the repository of --repo (or of the config file's [repository]
 * path); on failure prints why and sets *code to the exit code. */
struct agent_repo;
struct agent_repo *cli_open_repo(const char *cmd, const char *repo, const char *config, int *code);

/* The object-storage options of every command (cli/storeopts.c): taken
 * out of argv (0, or -1 after printing a usage error); the same keys of a
 * config file's [repository] section (1 taken, 0 not one of them, -1 bad
 * value); the help paragraph. */
int cli_take_store_opts(int *argc, char **argv, const char *cmd);
int cli_store_config_key(const char *cmd, const char *name, const char *value);
extern const char cli_store_help[];
/* verify: an encrypted repository opens without its key when none was
 * given. */
void cli_keys_optional(bool on);
/* A passphrase typed on the controlling terminal, without echo (confirm:
 * twice, for a new one); NULL when stdin is not a terminal or they differ
 * (cli/passphrase.c). */
char *cli_ask_passphrase(const char *repo, bool confirm);

/* Progress on a terminal. */
struct cli_progress {
    const char *what;
    double start;
};
bool cli_progress_wanted(bool json);
void cli_progress(void *opaque, uint64_t done, uint64_t total);

/* "nbdvault CMD: msg\n" on stderr; returns CLI_EXIT_FAIL / CLI_EXIT_USAGE. */
int cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "Try 'nbdvault CMD --help'." on stderr (after getopt's own complaint);
 * returns CLI_EXIT_USAGE. */
int cli_try_help(const char *cmd);
/* Prints obj (pretty) followed by a newline, and releases it. */
void cli_print_json(struct json_object *obj);
/* "64M", "1.5G" ... as nbdinfo prints sizes. */
void cli_human_size(char *buf, size_t cap, uint64_t bytes);
/* Installs nbdcore's log callback (NBDVAULT_DEBUG=1 shows debug lines). */
void cli_setup_logging(void);

#endif
