/* list.c: `nbdvault list`. */
#include <getopt.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

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
        json_object_object_add(o, "source", json_object_new_string(p->source_kind));
        json_object_object_add(o, "checkpoint",
                               p->checkpoint[0] ? json_object_new_string(p->checkpoint) : NULL);
        json_object_object_add(o, "full_reason",
                               p->full_reason[0] ? json_object_new_string(p->full_reason) : NULL);
        json_object_array_add(l->arr, o);
    } else {
        if (!l->n++)
            printf("%-6s %-6s %-16s %-12s %-19s %10s %10s  %s\n", "point", "parent", "disk", "kind",
                   "time", "size", "stored", "why full");
        cli_human_size(sz, sizeof sz, p->disk_size);
        cli_human_size(st, sizeof st, p->bytes_stored);
        char parent[24] = "-";
        if (p->parent)
            snprintf(parent, sizeof parent, "%lld", (long long)p->parent);
        printf("%-6lld %-6s %-16s %-12s %-19s %10s %10s  %s\n", (long long)p->id, parent, p->disk,
               p->full ? "full" : "incremental", when, sz, st, p->full_reason);
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
