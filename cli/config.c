/* config.c: the agent's configuration file (INI, read with inih).
 * agent.conf.example documents every key and its default. */
#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "cli/cli.h"

void cli_config_defaults(struct cli_config *c)
{
    memset(c, 0, sizeof *c);
    c->connections = AGENT_DEFAULT_CONNECTIONS;
    c->compress_level = AGENT_DEFAULT_COMPRESS_LEVEL;
    c->chunk_size = AGENT_DEFAULT_CHUNK_SIZE;
}

static int parse_uint(const char *v, unsigned long long max, unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v)
        return -1;
    switch (*end) {
    case 'k': case 'K': x <<= 10; end++; break;
    case 'm': case 'M': x <<= 20; end++; break;
    case 'g': case 'G': x <<= 30; end++; break;
    }
    if ((*end == 'i' || *end == 'I') && (end[1] == 'B' || end[1] == 'b'))
        end += 2;
    if (*end || x > max)
        return -1;
    *out = x;
    return 0;
}

int cli_parse_size(const char *v, uint64_t *out)
{
    unsigned long long x;
    if (parse_uint(v, UINT64_MAX >> 1, &x) < 0)
        return -1;
    *out = x;
    return 0;
}

int cli_parse_unsigned(const char *v, unsigned max, unsigned *out)
{
    unsigned long long x;
    if (parse_uint(v, max, &x) < 0)
        return -1;
    *out = (unsigned)x;
    return 0;
}

struct ini_ctx {
    struct cli_config *c;
    char err[256];
};

static int on_key(void *user, const char *section, const char *name, const char *value)
{
    struct ini_ctx *x = user;
    struct cli_config *c = x->c;
    uint64_t size;
    int r;

    if (!strcmp(section, "repository") && !strcmp(name, "path")) {
        free(c->repo);
        c->repo = strdup(value);
    } else if (!strcmp(section, "repository") && !strcmp(name, "chunk_size")) {
        if (cli_parse_size(value, &size) < 0 || size > UINT32_MAX)
            goto bad;
        c->chunk_size = (uint32_t)size;
    } else if (!strcmp(section, "backup") && !strcmp(name, "connections")) {
        if (cli_parse_unsigned(value, 64, &c->connections) < 0 || !c->connections)
            goto bad;
    } else if (!strcmp(section, "backup") && !strcmp(name, "compress_level")) {
        if (cli_parse_unsigned(value, 22, (unsigned *)&c->compress_level) < 0 || !c->compress_level)
            goto bad;
    } else if (!strcmp(section, "backup") && !strcmp(name, "max_rate")) {
        if (cli_parse_size(value, &c->max_rate) < 0)
            goto bad;
    } else if (!strcmp(section, "backup") && !strcmp(name, "work_dir")) {
        free(c->work_dir);
        c->work_dir = strdup(value);
    } else if (!strcmp(section, "backup") && !strcmp(name, "libvirt_connect")) {
        free(c->connect);
        c->connect = strdup(value);
    } else if (!strcmp(section, "backup") && !strcmp(name, "bitmap")) {
        free(c->bitmap);
        c->bitmap = strdup(value);
    } else if (!strcmp(section, "repository") && !strcmp(name, "copy-to")) {
        free(c->copy_to);
        c->copy_to = strdup(value);
    } else if (!strcmp(section, "repository") &&
               (r = cli_store_config_key("config", name, value)) != 0) {
        if (r < 0)
            goto bad;
    } else {
        snprintf(x->err, sizeof x->err, "unknown key \"%s\" in section [%s]", name, section);
        return 0;
    }
    return 1;
bad:
    snprintf(x->err, sizeof x->err, "bad value \"%s\" for %s.%s", value, section, name);
    return 0;
}

int cli_config_load(struct cli_config *c, const char *path, const char *cmd)
{
    struct ini_ctx x = { .c = c };
    int r = ini_parse(path, on_key, &x);

    if (r == -1) {
        cli_error(cmd, "config %s: %s", path, strerror(errno));
        return -1;
    }
    if (r != 0) {
        cli_error(cmd, "config %s, line %d: %s", path, r, x.err[0] ? x.err : "syntax error");
        return -1;
    }
    return 0;
}

void cli_config_free(struct cli_config *c)
{
    free(c->repo);
    free(c->bitmap);
    free(c->work_dir);
    free(c->connect);
    free(c->copy_to);
}
