/* backup.c: `nbdvault init` and `nbdvault backup`. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "common/error.h"

static const char init_help[] =
    "Usage: nbdvault init --repo DIR [--chunk-size SIZE] [--config FILE]\n"
    "\n"
    "Creates a repository: a directory holding the SQLite catalog and the pack\n"
    "files.  (backup creates one with the defaults on first use.)\n"
    "\n"
    "  --repo DIR         the repository directory\n"
    "  --chunk-size SIZE  a power of two from 64K to 16M (default 64K, fixed for\n"
    "                     the repository's life; see docs/FORMAT.md)\n"
    "  --config FILE      read defaults from FILE (see agent.conf.example)\n"
    "  --help             this text\n";

int cli_init(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repo", required_argument, NULL, 'r' },
        { "chunk-size", required_argument, NULL, 'c' },
        { "config", required_argument, NULL, 'C' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    struct cli_config cfg;
    const char *chunk = NULL, *repo = NULL, *config = NULL;
    int ch;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': repo = optarg; break;
        case 'c': chunk = optarg; break;
        case 'C': config = optarg; break;
        case 'h': fputs(init_help, stdout); return CLI_EXIT_OK;
        default: /* getopt said what is wrong */
            return cli_try_help("init");
        }
    }
    if (optind != argc)
        return cli_usage_error("init", "unexpected argument \"%s\"", argv[optind]);
    cli_config_defaults(&cfg);
    if (config && cli_config_load(&cfg, config, "init") < 0) {
        cli_config_free(&cfg);
        return CLI_EXIT_USAGE;
    }
    if (!repo)
        repo = cfg.repo;
    if (!repo) {
        cli_config_free(&cfg);
        return cli_usage_error("init", "--repo DIR is required");
    }
    if (chunk) {
        uint64_t v;
        if (cli_parse_size(chunk, &v) < 0 || v > UINT32_MAX) {
            cli_config_free(&cfg);
            return cli_usage_error("init", "bad --chunk-size \"%s\"", chunk);
        }
        cfg.chunk_size = (uint32_t)v;
    }
    int ret = CLI_EXIT_OK;
    if (agent_repo_init(repo, cfg.chunk_size) < 0)
        ret = cli_error("init", "%s", error_msg());
    else
        printf("created repository %s (chunk size %u)\n", repo, cfg.chunk_size);
    cli_config_free(&cfg);
    return ret;
}

static const char backup_help[] =
    "Usage: nbdvault backup URI --repo DIR --disk NAME [--bitmap NAME] [--full]\n"
    "                       [--connections N] [--compress-level N] [--config FILE]\n"
    "                       [--json]\n"
    "\n"
    "Backs up an NBD export into the repository as a new restore point.  The\n"
    "first backup of a disk is full: it reads what base:allocation reports as\n"
    "data.  Later backups with --bitmap are incremental: they read only what the\n"
    "export's qemu:dirty-bitmap:NAME marks dirty, completing partly dirty chunks\n"
    "from the previous point in the repository.\n"
    "\n"
    "  --repo DIR            the repository (created on first use)\n"
    "  --disk NAME           the disk's name in the repository\n"
    "  --bitmap NAME         the dirty bitmap exported by the server (qemu-nbd -B)\n"
    "  --full                a full backup even when an incremental is possible\n"
    "  --connections N       NBD connections when the server allows multi-conn\n"
    "                        (default 4)\n"
    "  --compress-level N    zstd level (default 1; level 1 uses a smaller hash\n"
    "                        table than zstd's own: faster, ~2% larger)\n"
    "  --config FILE         defaults from FILE (see agent.conf.example)\n"
    "  --json                print the result as JSON\n"
    "  --help                this text\n"
    "\n"
    "Exit codes: 0 success, 1 failure (nothing recorded), 2 bad usage.\n";

static void backup_warn(void *opaque, const char *msg)
{
    fprintf(stderr, "nbdvault backup: warning: %s\n", msg);
}

int cli_backup(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repo", required_argument, NULL, 'r' },
        { "disk", required_argument, NULL, 'd' },
        { "bitmap", required_argument, NULL, 'b' },
        { "full", no_argument, NULL, 'f' },
        { "connections", required_argument, NULL, 'n' },
        { "compress-level", required_argument, NULL, 'l' },
        { "config", required_argument, NULL, 'C' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    struct cli_config cfg;
    const char *repo = NULL, *disk = NULL, *bitmap = NULL, *config = NULL;
    const char *conns = NULL, *level = NULL;
    bool full = false, json = false;
    int ch, ret = CLI_EXIT_FAIL;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': repo = optarg; break;
        case 'd': disk = optarg; break;
        case 'b': bitmap = optarg; break;
        case 'f': full = true; break;
        case 'n': conns = optarg; break;
        case 'l': level = optarg; break;
        case 'C': config = optarg; break;
        case 'j': json = true; break;
        case 'h': fputs(backup_help, stdout); return CLI_EXIT_OK;
        default: /* getopt said what is wrong */
            return cli_try_help("backup");
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("backup", "expected one NBD URI");
    cli_config_defaults(&cfg);
    if (config && cli_config_load(&cfg, config, "backup") < 0)
        goto usage;
    if (!repo)
        repo = cfg.repo;
    if (!bitmap)
        bitmap = cfg.bitmap;
    if (!repo || !disk) {
        cli_usage_error("backup", "--repo DIR and --disk NAME are required");
        goto usage;
    }
    if (conns && (cli_parse_unsigned(conns, 64, &cfg.connections) < 0 || !cfg.connections)) {
        cli_usage_error("backup", "bad --connections \"%s\" (1 to 64)", conns);
        goto usage;
    }
    if (level && (cli_parse_unsigned(level, 22, (unsigned *)&cfg.compress_level) < 0 ||
                  !cfg.compress_level)) {
        cli_usage_error("backup", "bad --compress-level \"%s\" (1 to 22)", level);
        goto usage;
    }

    struct agent_repo *r = agent_repo_open(repo, true);
    if (!r) {
        ret = cli_error("backup", "%s", error_msg());
        goto out;
    }
    struct cli_progress prog = { .what = disk };
    struct agent_backup_opts o = {
        .uri = argv[optind],
        .disk = disk,
        .bitmap = bitmap,
        .full = full,
        .connections = cfg.connections,
        .compress_level = cfg.compress_level,
        .progress = cli_progress_wanted(json) ? cli_progress : NULL,
        .warn = backup_warn,
        .opaque = &prog,
    };
    struct agent_backup_result res;
    if (agent_backup(r, &o, &res) < 0) {
        ret = cli_error("backup", "disk %s: %s", disk, error_msg());
        agent_repo_close(r);
        goto out;
    }
    agent_repo_close(r);
    if (json) {
        struct json_object *j = json_object_new_object();
        json_object_object_add(j, "point", json_object_new_int64(res.point));
        json_object_object_add(j, "disk", json_object_new_string(disk));
        json_object_object_add(j, "kind", json_object_new_string(res.full ? "full" : "incremental"));
        json_object_object_add(j, "parent", res.parent ? json_object_new_int64(res.parent) : NULL);
        json_object_object_add(j, "disk_size", json_object_new_int64((int64_t)res.disk_size));
        json_object_object_add(j, "bytes_planned", json_object_new_int64((int64_t)res.bytes_planned));
        json_object_object_add(j, "bytes_read", json_object_new_int64((int64_t)res.bytes_read));
        json_object_object_add(j, "bytes_stored", json_object_new_int64((int64_t)res.bytes_stored));
        json_object_object_add(j, "chunks_new", json_object_new_int64((int64_t)res.chunks_new));
        json_object_object_add(j, "chunks_reused", json_object_new_int64((int64_t)res.chunks_reused));
        json_object_object_add(j, "connections", json_object_new_int64(res.connections));
        json_object_object_add(j, "seconds", json_object_new_double(res.seconds));
        cli_print_json(j);
    } else {
        char rd[32], st[32], sz[32];
        cli_human_size(rd, sizeof rd, res.bytes_read);
        cli_human_size(st, sizeof st, res.bytes_stored);
        cli_human_size(sz, sizeof sz, res.disk_size);
        printf("point %lld: %s backup of disk %s (%s): read %s, stored %s, %llu new chunks, "
               "%llu reused, %.1f s\n",
               (long long)res.point, res.full ? "full" : "incremental", disk, sz, rd, st,
               (unsigned long long)res.chunks_new, (unsigned long long)res.chunks_reused,
               res.seconds);
    }
    ret = CLI_EXIT_OK;
out:
    cli_config_free(&cfg);
    return ret;
usage:
    cli_config_free(&cfg);
    return CLI_EXIT_USAGE;
}
