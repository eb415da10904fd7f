/* init.c: `nbdvault init`. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "common/error.h"

static const char init_help[] =
    "Usage: nbdvault init --repo DIR [--chunk-size SIZE] [--encrypt [--key-file FILE]]\n"
    "                     [--config FILE]\n"
    "\n"
    "Creates a repository: a directory holding the SQLite catalog and the pack\n"
    "files, or a bucket (s3://BUCKET/PREFIX).  (backup creates a plain one with\n"
    "the defaults on first use.)\n"
    "\n"
    "  --repo DIR         the repository directory\n"
    "  --encrypt          encrypt it (AES-256-GCM, keyed chunk ids; docs/FORMAT.md):\n"
    "                     a new random master key, wrapped in a key slot by the\n"
    "                     passphrase of --password-file, NBDVAULT_PASSWORD or the\n"
    "                     terminal (Argon2id), or with --key-file FILE kept only\n"
    "                     in FILE (created; for unattended use, keep a copy)\n"
    "  --chunk-size SIZE  a power of two from 64K to 16M (default 64K, fixed for\n"
    "                     the repository's life; see docs/FORMAT.md)\n"
    "  --config FILE      read defaults from FILE (see agent.conf.example)\n"
    "  --help             this text\n";

int cli_init(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repo", required_argument, NULL, 'r' },
        { "chunk-size", required_argument, NULL, 'c' },
        { "encrypt", no_argument, NULL, 'e' },
        { "config", required_argument, NULL, 'C' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    struct cli_config cfg;
    const char *chunk = NULL, *repo = NULL, *config = NULL;
    bool encrypt = false;
    int ch;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': repo = optarg; break;
        case 'c': chunk = optarg; break;
        case 'e': encrypt = true; break;
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
    const char *key_file = agent_key_source()->key_file;
    if (!encrypt && key_file) {
        cli_config_free(&cfg);
        return cli_usage_error("init", "--key-file makes sense with --encrypt only");
    }
    if ((encrypt ? agent_repo_init_encrypted(repo, cfg.chunk_size, key_file)
                 : agent_repo_init(repo, cfg.chunk_size)) < 0)
        ret = cli_error("init", "%s", error_msg());
    else if (encrypt)
        printf("created encrypted repository %s (chunk size %u; its master key %s)\n", repo,
               cfg.chunk_size, key_file ? "is only in the key file" : "is in a key slot");
    else
        printf("created repository %s (chunk size %u)\n", repo, cfg.chunk_size);
    cli_config_free(&cfg);
    return ret;
}
