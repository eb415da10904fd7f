/* copy.c: `nbdvault copy`. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "common/error.h"

static const char copy_help[] =
    "Usage: nbdvault copy --repo SOURCE --to TARGET [--disk NAME] [--point ID]\n"
    "                     [--json] [--config FILE]\n"
    "\n"
    "Copies restore points to another repository, typically off the host:\n"
    "--to s3://BUCKET[/PREFIX].  Only the points the target lacks are copied\n"
    "(a point is the same when its disk and start time are), and only the\n"
    "chunks the target lacks are uploaded: a rerun after an interruption copies\n"
    "what is missing and nothing twice.  A point whose parent the target has is\n"
    "copied as an incremental of it, otherwise as a full point.  The target\n"
    "keeps its own retention: prune it on its own.  Both repositories must have\n"
    "the same chunk size.\n"
    "\n"
    "  --disk NAME   only this disk's points (default: every disk)\n"
    "  --point ID    only this point of --disk\n"
    "  --json        print the result as JSON\n"
    "\n"
    "  --to-key-file FILE, --to-password-file FILE\n"
    "                the target's key when it is encrypted with another than the\n"
    "                source's (else NBDVAULT_TO_PASSWORD, else the source's key\n"
    "                options); chunks are decrypted with the one and sealed with\n"
    "                the other, and a plain repository takes no key\n"
    "\n"
    "A config file's [repository] key copy-to = TARGET makes `backup` copy each\n"
    "new point right after it commits (the target opened with the source's key\n"
    "options).\n";

struct copy_out {
    bool json;
};

static void copy_note(void *opaque, const char *msg)
{
    struct copy_out *c = opaque;
    if (!c->json)
        printf("%s\n", msg);
}

static struct agent_key_source to_keys;
static bool to_keys_set;

int cli_copy_points(struct agent_repo *r, const char *to, const char *disk, int64_t point, bool json,
                    const char *cmd)
{
    struct copy_out out = { json };
    struct agent_copy_opts o = { .to = to, .disk = disk, .point = point, .warn = copy_note,
                                 .opaque = &out, .to_keys = to_keys_set ? &to_keys : NULL };
    struct agent_copy_result res;

    if (agent_copy(r, &o, &res) < 0)
        return cli_error(cmd, "copy to %s: %s", to, error_msg());
    if (json) {
        struct json_object *j = json_object_new_object();
        json_object_object_add(j, "to", json_object_new_string(to));
        json_object_object_add(j, "copied", json_object_new_int64(res.copied));
        json_object_object_add(j, "skipped", json_object_new_int64(res.skipped));
        json_object_object_add(j, "bytes_read", json_object_new_int64((int64_t)res.bytes_read));
        json_object_object_add(j, "bytes_stored", json_object_new_int64((int64_t)res.bytes_stored));
        json_object_object_add(j, "chunks_new", json_object_new_int64((int64_t)res.chunks_new));
        json_object_object_add(j, "chunks_reused", json_object_new_int64((int64_t)res.chunks_reused));
        json_object_object_add(j, "seconds", json_object_new_double(res.seconds));
        cli_print_json(j);
    } else {
        char st[32];
        cli_human_size(st, sizeof st, res.bytes_stored);
        printf("copied %u point(s) to %s (%u already there): %s uploaded, %llu new chunk(s), "
               "%llu already there, %.1f s\n", res.copied, to, res.skipped, st,
               (unsigned long long)res.chunks_new, (unsigned long long)res.chunks_reused,
               res.seconds);
    }
    return CLI_EXIT_OK;
}

int cli_copy(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repo", required_argument, NULL, 'r' },
        { "to", required_argument, NULL, 't' },
        { "disk", required_argument, NULL, 'd' },
        { "point", required_argument, NULL, 'p' },
        { "config", required_argument, NULL, 'C' },
        { "json", no_argument, NULL, 'j' },
        { "to-key-file", required_argument, NULL, 'K' },
        { "to-password-file", required_argument, NULL, 'P' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    const char *repo = NULL, *to = NULL, *disk = NULL, *point = NULL, *config = NULL;
    bool json = false;
    int64_t pid = 0;
    int ch;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': repo = optarg; break;
        case 't': to = optarg; break;
        case 'd': disk = optarg; break;
        case 'p': point = optarg; break;
        case 'C': config = optarg; break;
        case 'j': json = true; break;
        case 'K': to_keys.key_file = optarg; to_keys_set = true; break;
        case 'P': to_keys.password_file = optarg; to_keys_set = true; break;
        case 'h': fputs(copy_help, stdout); return CLI_EXIT_OK;
        default: return cli_try_help("copy");
        }
    }
    if (optind != argc)
        return cli_usage_error("copy", "unexpected argument \"%s\"", argv[optind]);
    if (!to)
        return cli_usage_error("copy", "--to TARGET is required");
    if (point && !disk)
        return cli_usage_error("copy", "--point needs --disk");
    if (point) {
        char *end;
        pid = strtoll(point, &end, 10);
        if (*end || pid <= 0)
            return cli_usage_error("copy", "bad --point \"%s\"", point);
    }
    if (!to_keys_set && getenv("NBDVAULT_TO_PASSWORD")) {
        to_keys.password = getenv("NBDVAULT_TO_PASSWORD");
        to_keys_set = true;
    }
    int code;
    struct agent_repo *r = cli_open_repo("copy", repo, config, &code);
    if (!r)
        return code;
    int ret = cli_copy_points(r, to, disk, pid, json, "copy");
    agent_repo_close(r);
    return ret;
}
