/* storeopts.c: the object-storage options every command takes
 * (--s3-endpoint, --cache-dir, ...), taken out of argv before the
 * command's own getopt sees it, and the same keys of a config file's
 * [repository] section ("s3-endpoint = ..."). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "store/store.h"

static struct store_s3_config s3 = { .path_style = -1 };
static bool given[16];
static char *strs[16];

enum { O_ENDPOINT, O_REGION, O_PATH, O_CA, O_CONNS, O_LOCK_DAYS, O_LOCK_MODE, O_CACHE, O_KEYFILE,
       O_PASSFILE, O_N };
static const char *const names[O_N] = {
    "s3-endpoint", "s3-region", "s3-path-style", "s3-ca-file", "s3-connections",
    "s3-object-lock-days", "s3-object-lock-mode", "cache-dir", "key-file", "password-file",
};

static struct agent_key_source keys = { .use_env = true, .ask = cli_ask_passphrase };

const char cli_store_help[] =
    "Repositories in a bucket (--repo s3://BUCKET[/PREFIX]), options of every command:\n"
    "  --s3-endpoint URL         the S3 endpoint (else AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL)\n"
    "  --s3-region NAME          the region (else AWS_REGION, AWS_DEFAULT_REGION, us-east-1)\n"
    "  --s3-path-style yes|no    path-style URLs (default: yes for an IP address)\n"
    "  --s3-ca-file FILE         CA certificates for https (default: the system's)\n"
    "  --s3-connections N        requests at once (default 8)\n"
    "  --s3-object-lock-days N   write new objects with an Object Lock retention of N days\n"
    "  --s3-object-lock-mode M   governance (default) or compliance\n"
    "  --cache-dir DIR           the local catalog cache (default $XDG_CACHE_HOME/nbdvault/ID)\n"
    "Credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN), or AWS_PROFILE\n"
    "in ~/.aws/credentials.  The same settings in a config file: [repository] s3-endpoint = ...\n"
    "\n"
    "Encrypted repositories (init --encrypt), options of every command:\n"
    "  --key-file FILE           the repository's master key (init --encrypt: kept only there)\n"
    "  --password-file FILE      a passphrase of one of its key slots (its first line)\n"
    "Else NBDVAULT_PASSWORD, else a passphrase typed on the terminal.  In a config file:\n"
    "[repository] key-file = ..., password-file = ...\n";

/* Applies one setting; 0, or -1 with a message. */
static int apply(const char *cmd, int which, const char *v, bool from_file)
{
    unsigned n;

    if (from_file && given[which])
        return 0;                  /* the command line wins */
    given[which] = true;
    switch (which) {
    case O_PATH:
        if (strcmp(v, "yes") && strcmp(v, "no"))
            goto bad;
        s3.path_style = !strcmp(v, "yes");
        break;
    case O_CONNS:
        if (cli_parse_unsigned(v, 64, &n) < 0 || !n)
            goto bad;
        s3.connections = n;
        break;
    case O_LOCK_DAYS:
        if (cli_parse_unsigned(v, 36500, &n) < 0)
            goto bad;
        s3.lock_days = n;
        break;
    case O_LOCK_MODE:
        if (strcasecmp(v, "governance") && strcasecmp(v, "compliance"))
            goto bad;
        s3.lock_compliance = !strcasecmp(v, "compliance");
        break;
    default:
        free(strs[which]);
        strs[which] = strdup(v);
        if (which == O_ENDPOINT)
            s3.endpoint = strs[which];
        else if (which == O_REGION)
            s3.region = strs[which];
        else if (which == O_CA)
            s3.ca_file = strs[which];
        else if (which == O_KEYFILE)
            keys.key_file = strs[which];
        else if (which == O_PASSFILE)
            keys.password_file = strs[which];
        else
            agent_set_cache_dir(strs[which]);
    }
    store_s3_configure(&s3);
    agent_set_key_source(&keys);
    return 0;
bad:
    if (!from_file)
        cli_usage_error(cmd, "bad --%s \"%s\"", names[which], v);
    return -1;
}

void cli_keys_optional(bool on)
{
    keys.optional = on;
    agent_set_key_source(&keys);
}

int cli_take_store_opts(int *argc, char **argv, const char *cmd)
{
    int out = 1;

    agent_set_key_source(&keys);
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        int which = -1;
        const char *v = NULL;
        if (!strcmp(a, "--")) {
            while (i < *argc)
                argv[out++] = argv[i++];
            break;
        }
        for (int k = 0; k < O_N && a[0] == '-' && a[1] == '-'; k++) {
            size_t n = strlen(names[k]);
            if (!strncmp(a + 2, names[k], n) && (a[2 + n] == 0 || a[2 + n] == '=')) {
                which = k;
                v = a[2 + n] == '=' ? a + 3 + n : NULL;
            }
        }
        if (which < 0) {
            argv[out++] = argv[i];
            continue;
        }
        if (!v && i + 1 >= *argc) {
            cli_usage_error(cmd, "--%s needs a value", names[which]);
            return -1;
        }
        if (!v)
            v = argv[++i];
        if (apply(cmd, which, v, false) < 0)
            return -1;
    }
    argv[out] = NULL;
    *argc = out;
    return 0;
}

int cli_store_config_key(const char *cmd, const char *name, const char *value)
{
    for (int k = 0; k < O_N; k++)
        if (!strcmp(name, names[k]))
            return apply(cmd, k, value, true) < 0 ? -1 : 1;
    return 0;
}
