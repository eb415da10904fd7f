/* main.c: nbdvault's entry point: dispatches to one command. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "nbdcore/nbdcore.h"

const char *cli_progname = "nbdvault";

static const struct cli_command commands[] = {
    { "info", "show what an NBD export offers (like nbdinfo)", cli_info },
    { "map", "print the extents of one metadata context (like nbdinfo --map)", cli_map },
    { "init", "create a repository", cli_init },
    { "backup", "back up an NBD export (full, or incremental with a dirty bitmap)", cli_backup },
    { "list", "list disks and restore points", cli_list },
    { "restore", "restore a point to a file or an NBD export", cli_restore },
    { "verify", "check every chunk, pack and the catalog", cli_verify },
    { "prune", "remove old restore points by retention rules", cli_prune },
    { "gc", "give back the space of removed points", cli_gc },
    { "serve", "serve restore points as read-only NBD exports", cli_serve },
    { "copy", "copy restore points to another repository (a bucket)", cli_copy },
    { "catalog", "rebuild the catalog cache of a repository in a bucket", cli_catalog },
    { "key", "the key slots of an encrypted repository (list, add, remove, export)", cli_key },
    { "run", "the nightly job: back up and prune every source of a config file", cli_run },
};

static void usage(FILE *f)
{
    fprintf(f, "Usage: nbdvault COMMAND [OPTIONS]\n"
               "\n"
               "Incremental backups of virtual-machine disks over NBD.\n"
               "\n"
               "Commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n"
               "Run 'nbdvault COMMAND --help' for the options of one command.\n"
               "Exit codes: 0 success, 1 failure, 2 bad usage.\n"
               "\n%s", cli_store_help);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    cli_setup_logging();
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("nbdvault 0.1\n");
        return CLI_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name)) {
            /* getopt starts its messages with argv[0]: "nbdvault info:
             * unrecognized option '--x'", as our own messages start. */
            char prog[64];
            snprintf(prog, sizeof prog, "%s %s", cli_progname, commands[i].name);
            argv[1] = prog;
            int n = argc - 1;
            if (cli_take_store_opts(&n, argv + 1, commands[i].name) < 0)
                return CLI_EXIT_USAGE;
            return commands[i].run(n, argv + 1);
        }
    fprintf(stderr, "nbdvault: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return CLI_EXIT_USAGE;
}
