/* restore.c: `nbdvault list` and `nbdvault restore`. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "common/error.h"

static const char list_help[] =
    "Usage: nbdvault list --repo DIR [--disk NAME] [--json] [--config FILE]\n"
    "\n"
    "Lists the disks of a repository and their restore points: id, parent,\n"
    "kind, time, disk size and bytes stored.\n";

struct list_out {
    bool json;
    struct json_object *arr;
    unsigned n;
};

static void fmt_time(double t, char *buf, size_t cap)
{
    time_t s = (time_t)t;
    struct tm tm;
    localtime_r(&s, &tm);
    strftime(buf, cap, "%Y-%m-%d %H:%M:%S", &tm);
}

static int list_one(void *opaque, const struct agent_point *p)
{
    struct list_out *l = opaque;
    char when[64], sz[32], st[32];

    fmt_time(p->finished, when, sizeof when);
    if (l->json) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "point", json_object_new_int64(p->id));
        json_object_object_add(o, "disk", json_object_new_string(p->disk));
        json_object_object_add(o, "parent", p->parent ? json_object_new_int64(p->parent) : NULL);
        json_object_object_add(o, "kind", json_object_new_string(p->full ? "full" : "incremental"));
        json_object_object_add(o, "time", json_object_new_string(when));
        json_object_object_add(o, "timestamp", json_object_new_double(p->finished));
        json_object_object_add(o, "disk_size", json_object_new_int64((int64_t)p->disk_size));
        json_object_object_add(o, "bytes_stored", json_object_new_int64((int64_t)p->bytes_stored));
        json_object_object_add(o, "bytes_read", json_object_new_int64((int64_t)p->bytes_read));
        json_object_array_add(l->arr, o);
    } else {
        if (!l->n++)
            printf("%-6s %-6s %-16s %-12s %-19s %10s %10s\n", "point", "parent", "disk", "kind",
                   "time", "size", "stored");
        cli_human_size(sz, sizeof sz, p->disk_size);
        cli_human_size(st, sizeof st, p->bytes_stored);
        char parent[24] = "-";
        if (p->parent)
            snprintf(parent, sizeof parent, "%lld", (long long)p->parent);
        printf("%-6lld %-6s %-16s %-12s %-19s %10s %10s\n", (long long)p->id, parent, p->disk,
               p->full ? "full" : "incremental", when, sz, st);
    }
    return 0;
}

int cli_list(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repo", required_argument, NULL, 'r' },
        { "disk", required_argument, NULL, 'd' },
        { "config", required_argument, NULL, 'C' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    const char *repo = NULL, *disk = NULL, *config = NULL;
    struct list_out l = { 0 };
    int ch;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': repo = optarg; break;
        case 'd': disk = optarg; break;
        case 'C': config = optarg; break;
        case 'j': l.json = true; break;
        case 'h': fputs(list_help, stdout); return CLI_EXIT_OK;
        default: /* getopt said what is wrong */
            return cli_try_help("list");
        }
    }
    if (optind != argc)
        return cli_usage_error("list", "unexpected argument \"%s\"", argv[optind]);
    int code;
    struct agent_repo *r = cli_open_repo("list", repo, config, &code);
    if (!r)
        return code;
    if (l.json)
        l.arr = json_object_new_array();
    int ret = CLI_EXIT_OK;
    if (agent_list(r, disk, list_one, &l) < 0) {
        ret = cli_error("list", "%s", error_msg());
        json_object_put(l.arr);
    } else if (l.json) {
        cli_print_json(l.arr);
    } else if (!l.n) {
        printf("no restore points%s%s\n", disk ? " for disk " : "", disk ? disk : "");
    }
    agent_repo_close(r);
    return ret;
}

static const char restore_help[] =
    "Usage: nbdvault restore --repo DIR --disk NAME [--point ID]\n"
    "                        (--output FILE | --to URI) [--connections N] [--json]\n"
    "\n"
    "Restores a disk as it was at a restore point (the newest by default):\n"
    "to a raw, sparse file of the disk's exact size, or to an NBD export that is\n"
    "at least as large (data written, zeros as WRITE_ZEROES, flushed at the end).\n"
    "Every chunk is checked against its id; a damaged one stops the restore and\n"
    "no output file is left behind.\n"
    "\n"
    "  --repo DIR         the repository\n"
    "  --disk NAME        the disk\n"
    "  --point ID         the restore point (see 'nbdvault list')\n"
    "  --output FILE      write a raw image file\n"
    "  --to URI           write to an NBD export\n"
    "  --connections N    NBD connections when the server allows multi-conn\n"
    "  --config FILE      defaults from FILE\n"
    "  --json             print the result as JSON\n"
    "  --help             this text\n";

int cli_restore(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repo", required_argument, NULL, 'r' },
        { "disk", required_argument, NULL, 'd' },
        { "point", required_argument, NULL, 'p' },
        { "output", required_argument, NULL, 'o' },
        { "to", required_argument, NULL, 't' },
        { "connections", required_argument, NULL, 'n' },
        { "config", required_argument, NULL, 'C' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    const char *repo = NULL, *config = NULL, *point = NULL, *conns = NULL;
    struct agent_restore_opts o = { 0 };
    bool json = false;
    int ch;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': repo = optarg; break;
        case 'd': o.disk = optarg; break;
        case 'p': point = optarg; break;
        case 'o': o.output = optarg; break;
        case 't': o.to_uri = optarg; break;
        case 'n': conns = optarg; break;
        case 'C': config = optarg; break;
        case 'j': json = true; break;
        case 'h': fputs(restore_help, stdout); return CLI_EXIT_OK;
        default: /* getopt said what is wrong */
            return cli_try_help("restore");
        }
    }
    if (optind != argc)
        return cli_usage_error("restore", "unexpected argument \"%s\"", argv[optind]);
    if (!o.disk)
        return cli_usage_error("restore", "--disk NAME is required");
    if (!o.output == !o.to_uri)
        return cli_usage_error("restore", "give exactly one of --output FILE and --to URI");
    if (point) {
        char *end;
        o.point = strtoll(point, &end, 10);
        if (*end || o.point <= 0)
            return cli_usage_error("restore", "bad --point \"%s\"", point);
    }
    if (conns && (cli_parse_unsigned(conns, 64, &o.connections) < 0 || !o.connections))
        return cli_usage_error("restore", "bad --connections \"%s\" (1 to 64)", conns);
    int code;
    struct agent_repo *r = cli_open_repo("restore", repo, config, &code);
    if (!r)
        return code;
    struct cli_progress prog = { .what = o.disk };
    o.progress = cli_progress_wanted(json) ? cli_progress : NULL;
    o.opaque = &prog;
    struct agent_restore_result res;
    int ret = CLI_EXIT_OK;
    if (agent_restore(r, &o, &res) < 0) {
        ret = cli_error("restore", "disk %s: %s", o.disk, error_msg());
    } else if (json) {
        struct json_object *j = json_object_new_object();
        json_object_object_add(j, "point", json_object_new_int64(res.point));
        json_object_object_add(j, "disk", json_object_new_string(o.disk));
        json_object_object_add(j, "disk_size", json_object_new_int64((int64_t)res.disk_size));
        json_object_object_add(j, "bytes_written", json_object_new_int64((int64_t)res.bytes_written));
        json_object_object_add(j, "bytes_zero", json_object_new_int64((int64_t)res.bytes_zero));
        json_object_object_add(j, "seconds", json_object_new_double(res.seconds));
        cli_print_json(j);
    } else {
        char w[32];
        cli_human_size(w, sizeof w, res.bytes_written);
        printf("restored point %lld of disk %s to %s: %s of data, %.1f s\n", (long long)res.point,
               o.disk, o.output ? o.output : o.to_uri, w, res.seconds);
    }
    agent_repo_close(r);
    return ret;
}
