/* catalog.c: `nbdvault catalog rebuild`. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "common/error.h"

static const char catalog_help[] =
    "Usage: nbdvault catalog rebuild --repo s3://BUCKET[/PREFIX] [--json] [--config FILE]\n"
    "\n"
    "The catalog of a repository in a bucket is a local cache of the bucket's\n"
    "manifests (in --cache-dir).  Every command brings it up to date first;\n"
    "rebuild throws it away and reads it again from the bucket alone, as on a\n"
    "new machine.  A local repository's catalog is its own record: there is\n"
    "nothing to rebuild it from.\n";

int cli_catalog(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repo", required_argument, NULL, 'r' },
        { "config", required_argument, NULL, 'C' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    const char *repo = NULL, *config = NULL;
    bool json = false;
    int ch;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': repo = optarg; break;
        case 'C': config = optarg; break;
        case 'j': json = true; break;
        case 'h': fputs(catalog_help, stdout); return CLI_EXIT_OK;
        default: return cli_try_help("catalog");
        }
    }
    if (optind >= argc)
        return cli_usage_error("catalog", "which action? (rebuild)");
    if (strcmp(argv[optind], "rebuild"))
        return cli_usage_error("catalog", "unknown action \"%s\" (rebuild)", argv[optind]);
    if (optind + 1 != argc)
        return cli_usage_error("catalog", "unexpected argument \"%s\"", argv[optind + 1]);
    struct cli_config cfg;
    cli_config_defaults(&cfg);
    if (config && cli_config_load(&cfg, config, "catalog") < 0)
        return CLI_EXIT_USAGE;
    if (!repo)
        repo = cfg.repo;
    if (!repo) {
        cli_config_free(&cfg);
        return cli_usage_error("catalog", "--repo s3://BUCKET[/PREFIX] is required");
    }
    unsigned points;
    int ret = CLI_EXIT_OK;
    if (agent_catalog_rebuild(repo, &points) < 0) {
        ret = cli_error("catalog", "rebuild %s: %s", repo, error_msg());
    } else if (json) {
        struct json_object *j = json_object_new_object();
        json_object_object_add(j, "repository", json_object_new_string(repo));
        json_object_object_add(j, "points", json_object_new_int64(points));
        cli_print_json(j);
    } else {
        printf("rebuilt the catalog of %s from the bucket: %u restore point(s)\n", repo, points);
    }
    cli_config_free(&cfg);
    return ret;
}
