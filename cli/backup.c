/* backup.c: `nbdvault backup`: of an NBD export, or of a running VM's disks
 * through libvirt or QMP.  cli_backup_source is shared with `run`. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "common/error.h"
#include "common/log.h"

static const char backup_help[] =
    "Usage: nbdvault backup URI --repo DIR --disk NAME [--bitmap NAME] [OPTIONS]\n"
    "       nbdvault backup --libvirt DOMAIN [--connect URI] [--disk TARGET]...\n"
    "                       --repo DIR [OPTIONS]\n"
    "       nbdvault backup --qmp SOCKET [--node NODE]... [--vm NAME] --repo DIR\n"
    "                       [OPTIONS]\n"
    "\n"
    "Backs up an NBD export, or every disk of a running VM, into the repository\n"
    "as new restore points.  The first backup of a disk is full: it reads what\n"
    "base:allocation reports as data.  Later ones are incremental: they read only\n"
    "what the dirty bitmap marks dirty, completing partly dirty chunks from the\n"
    "previous point in the repository.\n"
    "\n"
    "With --libvirt or --qmp nbdvault drives the hypervisor itself: one pull-mode\n"
    "backup job over all the VM's disks (one consistent moment), a new checkpoint\n"
    "created in the same step, the previous one deleted only once the points are\n"
    "committed.  Disks are recorded as VM/TARGET (libvirt) or VM/NODE (QMP).  An\n"
    "incremental is taken only when it is safe: same VM, same disk size, and the\n"
    "checkpoint of the last point present and consistent; otherwise the backup is\n"
    "full and says why.  What a killed run left (a job, a checkpoint, scratch\n"
    "files) is cleaned up by the next run.\n"
    "\n"
    "  --repo DIR            the repository (created on first use)\n"
    "  --disk NAME           NBD: the disk's name in the repository;\n"
    "                        libvirt: a target to back up (repeatable; default all)\n"
    "  --bitmap NAME         NBD: the dirty bitmap exported by the server (qemu-nbd -B)\n"
    "  --libvirt DOMAIN      a running libvirt domain (name or UUID)\n"
    "  --connect URI         libvirt connection (default qemu:///system)\n"
    "  --qmp SOCKET          a running QEMU's QMP socket\n"
    "  --node NODE           QMP: a block node to back up (repeatable; default all)\n"
    "  --vm NAME             QMP: the VM's name (default: QEMU's -name)\n"
    "  --work-dir DIR        where private job directories (sockets, scratch\n"
    "                        files) go (default $TMPDIR or /var/tmp)\n"
    "  --full                a full backup even when an incremental is possible\n"
    "  --connections N       NBD connections when the server allows multi-conn\n"
    "                        (default 4)\n"
    "  --max-rate RATE       read at most RATE bytes per second over all connections\n"
    "                        (200M, 1G; default: no limit): gentle on a live VM\n"
    "  --io-timeout SECONDS  fail when the server sends nothing for SECONDS while\n"
    "                        reads are in flight (default 300; 0 = wait for ever)\n"
    "  --compress-level N    zstd level (default 1; level 1 uses a smaller hash\n"
    "                        table than zstd's own: faster, ~2% larger)\n"
    "  --config FILE         defaults from FILE (see agent.conf.example)\n"
    "  --json                print the result as JSON (an array, one object per\n"
    "                        disk, with --libvirt and --qmp)\n"
    "  --help                this text\n"
    "\n"
    "Exit codes: 0 success, 1 failure (nothing recorded for a failed disk; with\n"
    "several disks the others are kept), 2 bad usage.\n";

static void backup_warn(void *opaque, const char *msg)
{
    log_msg(LOG_LEVEL_WARN, "%s", msg);
}

static void backup_note(void *opaque, const char *msg)
{
    log_msg(LOG_LEVEL_INFO, "%s", msg);
}

static void disk_start(void *opaque, const char *disk)
{
    struct cli_progress *p = opaque;
    p->what = disk;
}

static struct json_object *result_json(const char *disk, const struct agent_backup_result *res,
                                       const char *full_reason)
{
    struct json_object *j = json_object_new_object();
    json_object_object_add(j, "point", json_object_new_int64(res->point));
    json_object_object_add(j, "disk", json_object_new_string(disk));
    json_object_object_add(j, "kind", json_object_new_string(res->full ? "full" : "incremental"));
    json_object_object_add(j, "parent", res->parent ? json_object_new_int64(res->parent) : NULL);
    if (full_reason)
        json_object_object_add(j, "full_reason",
                               full_reason[0] ? json_object_new_string(full_reason) : NULL);
    json_object_object_add(j, "disk_size", json_object_new_int64((int64_t)res->disk_size));
    json_object_object_add(j, "bytes_planned", json_object_new_int64((int64_t)res->bytes_planned));
    json_object_object_add(j, "bytes_read", json_object_new_int64((int64_t)res->bytes_read));
    json_object_object_add(j, "bytes_stored", json_object_new_int64((int64_t)res->bytes_stored));
    json_object_object_add(j, "chunks_new", json_object_new_int64((int64_t)res->chunks_new));
    json_object_object_add(j, "chunks_reused", json_object_new_int64((int64_t)res->chunks_reused));
    json_object_object_add(j, "cells_unchanged", json_object_new_int64((int64_t)res->cells_unchanged));
    json_object_object_add(j, "connections", json_object_new_int64(res->connections));
    json_object_object_add(j, "seconds", json_object_new_double(res->seconds));
    json_object_object_add(j, "plan_seconds", json_object_new_double(res->plan_seconds));
    json_object_object_add(j, "retries", json_object_new_int64((int64_t)res->retries));
    return j;
}

static void result_line(const char *disk, const struct agent_backup_result *res,
                        const char *full_reason)
{
    char rd[32], st[32], sz[32];
    cli_human_size(rd, sizeof rd, res->bytes_read);
    cli_human_size(st, sizeof st, res->bytes_stored);
    cli_human_size(sz, sizeof sz, res->disk_size);
    printf("point %lld: %s backup of disk %s (%s): read %s, stored %s, %llu new chunks, "
           "%llu reused, %.1f s%s%s%s\n",
           (long long)res->point, res->full ? "full" : "incremental", disk, sz, rd, st,
           (unsigned long long)res->chunks_new, (unsigned long long)res->chunks_reused,
           res->seconds, full_reason && full_reason[0] ? " (full: " : "",
           full_reason && full_reason[0] ? full_reason : "", full_reason && full_reason[0] ? ")" : "");
    if (res->retries)
        printf("  %llu object store request(s) retried\n", (unsigned long long)res->retries);
}

static int backup_vm(struct agent_repo *r, const struct cli_source *s, bool json,
                     struct json_object *arr, const char *cmd)
{
    struct cli_progress prog = { .what = s->name };
    struct agent_vm_opts o = {
        .qmp = s->qmp != NULL,
        .domain = s->libvirt,
        .connect = s->connect,
        .qmp_socket = s->qmp,
        .vm_name = s->vm,
        .disks = s->disks,
        .ndisks = s->ndisks,
        .workdir = s->workdir,
        .full = s->full,
        .connections = s->connections,
        .compress_level = s->compress_level,
        .max_rate = s->max_rate,
        .io_timeout_ms = s->io_timeout_ms,
        .disk_start = disk_start,
        .note = backup_note,
        .progress = cli_progress_wanted(json) ? cli_progress : NULL,
        .warn = backup_warn,
        .opaque = &prog,
    };
    struct agent_vm_disk_result *res;
    size_t n;
    int ret = agent_backup_vm(r, &o, &res, &n);
    if (ret < 0 && n == 0) {
        cli_error(cmd, "%s %s: %s", s->qmp ? "QMP" : "domain", s->qmp ? s->qmp : s->libvirt,
                  error_msg());
        if (arr) {
            struct json_object *j = json_object_new_object();
            json_object_object_add(j, "vm", json_object_new_string(s->qmp ? s->qmp : s->libvirt));
            json_object_object_add(j, "error", json_object_new_string(error_msg()));
            json_object_array_add(arr, j);
        }
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (!res[i].ok) {
            cli_error(cmd, "disk %s: %s", res[i].disk, res[i].error);
            if (arr) {
                struct json_object *j = json_object_new_object();
                json_object_object_add(j, "disk", json_object_new_string(res[i].disk));
                json_object_object_add(j, "error", json_object_new_string(res[i].error));
                json_object_array_add(arr, j);
            }
        } else if (arr) {
            json_object_array_add(arr, result_json(res[i].disk, &res[i].r, res[i].full_reason));
        } else if (!json) {
            result_line(res[i].disk, &res[i].r, res[i].full_reason);
        }
    }
    free(res);
    return ret;
}

int cli_backup_source(struct agent_repo *r, const struct cli_source *s, bool json,
                      struct json_object *arr, const char *cmd)
{
    if (s->libvirt || s->qmp)
        return backup_vm(r, s, json, arr, cmd);

    struct cli_progress prog = { .what = s->disk };
    struct agent_backup_opts o = {
        .uri = s->uri,
        .disk = s->disk,
        .bitmap = s->bitmap,
        .full = s->full,
        .connections = s->connections,
        .compress_level = s->compress_level,
        .max_rate = s->max_rate,
        .io_timeout_ms = s->io_timeout_ms,
        .progress = cli_progress_wanted(json) ? cli_progress : NULL,
        .warn = backup_warn,
        .opaque = &prog,
    };
    struct agent_backup_result res;
    if (agent_backup(r, &o, &res) < 0) {
        cli_error(cmd, "disk %s: %s", s->disk, error_msg());
        if (arr) {
            struct json_object *j = json_object_new_object();
            json_object_object_add(j, "disk", json_object_new_string(s->disk));
            json_object_object_add(j, "error", json_object_new_string(error_msg()));
            json_object_array_add(arr, j);
        }
        return -1;
    }
    if (arr)
        json_object_array_add(arr, result_json(s->disk, &res, NULL));
    else if (json)
        cli_print_json(result_json(s->disk, &res, NULL));
    else
        result_line(s->disk, &res, NULL);
    return 0;
}

/* Checks what a source needs; prints the usage error.  0 or -1. */
int cli_source_check(const struct cli_source *s, const char *cmd)
{
    int kinds = (s->uri != NULL) + (s->libvirt != NULL) + (s->qmp != NULL);
    if (kinds != 1)
        return cli_usage_error(cmd, "give one source: an NBD URI, --libvirt DOMAIN or --qmp SOCKET"),
               -1;
    if (s->uri && !s->disk)
        return cli_usage_error(cmd, "--disk NAME is required with an NBD URI"), -1;
    if (s->uri && (s->n_disk_opts > 1 || s->n_node_opts))
        return cli_usage_error(cmd, "one --disk NAME (and no --node) with an NBD URI"), -1;
    if (!s->uri && s->bitmap)
        return cli_usage_error(cmd, "--bitmap is for NBD URIs: with --libvirt and --qmp "
                                    "nbdvault manages the checkpoints itself"), -1;
    if (s->libvirt && s->n_node_opts)
        return cli_usage_error(cmd, "--node is for --qmp; with --libvirt name disks with --disk"), -1;
    if (s->qmp && s->n_disk_opts)
        return cli_usage_error(cmd, "--disk is for --libvirt; with --qmp name nodes with --node"), -1;
    if (s->connect && !s->libvirt)
        return cli_usage_error(cmd, "--connect is for --libvirt"), -1;
    if (s->vm && !s->qmp)
        return cli_usage_error(cmd, "--vm is for --qmp"), -1;
    return 0;
}

int cli_source_add_disk(struct cli_source *s, const char *name, const char *cmd)
{
    if (s->ndisks == CLI_MAX_DISKS)
        return cli_usage_error(cmd, "at most %d disks", CLI_MAX_DISKS), -1;
    s->disks[s->ndisks++] = name;
    return 0;
}

int cli_backup(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repo", required_argument, NULL, 'r' },
        { "disk", required_argument, NULL, 'd' },
        { "bitmap", required_argument, NULL, 'b' },
        { "libvirt", required_argument, NULL, 'L' },
        { "connect", required_argument, NULL, 'c' },
        { "qmp", required_argument, NULL, 'Q' },
        { "node", required_argument, NULL, 'N' },
        { "vm", required_argument, NULL, 'V' },
        { "work-dir", required_argument, NULL, 'W' },
        { "full", no_argument, NULL, 'f' },
        { "connections", required_argument, NULL, 'n' },
        { "max-rate", required_argument, NULL, 'm' },
        { "io-timeout", required_argument, NULL, 'T' },
        { "compress-level", required_argument, NULL, 'l' },
        { "config", required_argument, NULL, 'C' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    struct cli_config cfg;
    struct cli_source s = { 0 };
    const char *repo = NULL, *config = NULL, *conns = NULL, *level = NULL, *rate = NULL, *iot = NULL;
    bool json = false;
    int ch, ret = CLI_EXIT_USAGE;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': repo = optarg; break;
        case 'd':
            s.disk = optarg;
            s.n_disk_opts++;
            if (cli_source_add_disk(&s, optarg, "backup") < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'N':
            s.n_node_opts++;
            if (cli_source_add_disk(&s, optarg, "backup") < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'b': s.bitmap = optarg; break;
        case 'L': s.libvirt = optarg; break;
        case 'c': s.connect = optarg; break;
        case 'Q': s.qmp = optarg; break;
        case 'V': s.vm = optarg; break;
        case 'W': s.workdir = optarg; break;
        case 'f': s.full = true; break;
        case 'n': conns = optarg; break;
        case 'm': rate = optarg; break;
        case 'T': iot = optarg; break;
        case 'l': level = optarg; break;
        case 'C': config = optarg; break;
        case 'j': json = true; break;
        case 'h': fputs(backup_help, stdout); return CLI_EXIT_OK;
        default: /* getopt said what is wrong */
            return cli_try_help("backup");
        }
    }
    if (optind < argc - 1)
        return cli_usage_error("backup", "unexpected argument \"%s\"", argv[optind + 1]);
    if (optind == argc - 1)
        s.uri = argv[optind];
    cli_config_defaults(&cfg);
    if (config && cli_config_load(&cfg, config, "backup") < 0)
        goto out;
    if (!repo)
        repo = cfg.repo;
    if (!s.bitmap && s.uri)
        s.bitmap = cfg.bitmap;
    if (!s.workdir)
        s.workdir = cfg.work_dir;
    s.max_rate = cfg.max_rate;
    if (!s.connect && s.libvirt)
        s.connect = cfg.connect;
    if (!repo) {
        cli_usage_error("backup", "--repo DIR is required");
        goto out;
    }
    if (cli_source_check(&s, "backup") < 0)
        goto out;
    if (conns && (cli_parse_unsigned(conns, 64, &cfg.connections) < 0 || !cfg.connections)) {
        cli_usage_error("backup", "bad --connections \"%s\" (1 to 64)", conns);
        goto out;
    }
    if (level && (cli_parse_unsigned(level, 22, (unsigned *)&cfg.compress_level) < 0 ||
                  !cfg.compress_level)) {
        cli_usage_error("backup", "bad --compress-level \"%s\" (1 to 22)", level);
        goto out;
    }
    if (rate && (cli_parse_size(rate, &s.max_rate) < 0 || !s.max_rate)) {
        cli_usage_error("backup", "bad --max-rate \"%s\" (bytes per second: 200M, 1G)", rate);
        goto out;
    }
    if (iot) {
        unsigned secs;
        if (cli_parse_unsigned(iot, 86400, &secs) < 0) {
            cli_usage_error("backup", "bad --io-timeout \"%s\" (seconds, 0 to 86400; 0 = no limit)", iot);
            goto out;
        }
        s.io_timeout_ms = secs ? (int)secs * 1000 : -1;
    }
    s.connections = cfg.connections;
    s.compress_level = cfg.compress_level;
    s.name = s.libvirt ? s.libvirt : s.qmp ? s.qmp : s.disk;

    bool vm = s.libvirt || s.qmp;
    /* What a VM backup decides and cleans up is said (info lines). */
    if (vm)
        log_setup("nbdvault backup", LOG_LEVEL_INFO, false, false);
    struct agent_repo *r = agent_repo_open(repo, true);
    if (!r) {
        ret = cli_error("backup", "%s", error_msg());
        goto out;
    }
    struct json_object *arr = json && vm ? json_object_new_array() : NULL;
    ret = cli_backup_source(r, &s, json, arr, "backup") < 0 ? CLI_EXIT_FAIL : CLI_EXIT_OK;
    if (arr)
        cli_print_json(arr);
    /* copy-to: the new points leave the host right after they commit (the
     * copy's summary on stderr, so that --json stays one document). */
    if (ret == CLI_EXIT_OK && cfg.copy_to) {
        struct agent_copy_opts co = { .to = cfg.copy_to };
        struct agent_copy_result cr;
        if (agent_copy(r, &co, &cr) < 0)
            ret = cli_error("backup", "copy to %s: %s", cfg.copy_to, error_msg());
        else
            fprintf(stderr, "nbdvault backup: copied %u point(s) to %s (%llu new chunk(s))\n",
                    cr.copied, cfg.copy_to, (unsigned long long)cr.chunks_new);
    }
    agent_repo_close(r);
out:
    cli_config_free(&cfg);
    return ret;
}
