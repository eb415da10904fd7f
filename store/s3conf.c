/* store/s3conf.c: where an S3 store's settings come from.
 *
 * The URL gives the bucket and the prefix; the process's store_s3_config
 * (the command line and the config file) comes first, then the AWS CLI's
 * environment variables, then the defaults.  Credentials: AWS_ACCESS_KEY_ID
 * and AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN), else the profile
 * AWS_PROFILE ("default") of ~/.aws/credentials (AWS_SHARED_CREDENTIALS_FILE),
 * read with inih.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "store/internal.h"
#include "store/s3int.h"

#define DEFAULT_CONNECTIONS 8
#define DEFAULT_RETRIES 8
#define DEFAULT_TIMEOUT 300
#define DEFAULT_LOW_SPEED_TIME 30

static struct store_s3_config cfg = { .path_style = -1 };
static char cfg_strings[3][512];

void store_s3_configure(const struct store_s3_config *c)
{
    cfg = *c;
    const char **f[3] = { &cfg.endpoint, &cfg.region, &cfg.ca_file };
    const char *v[3] = { c->endpoint, c->region, c->ca_file };
    for (int i = 0; i < 3; i++) {
        if (v[i]) {
            snprintf(cfg_strings[i], sizeof cfg_strings[i], "%s", v[i]);
            *f[i] = cfg_strings[i];
        }
    }
}

static const char *env(const char *a, const char *b)
{
    const char *v = getenv(a);
    if ((!v || !*v) && b)
        v = getenv(b);
    return v && *v ? v : NULL;
}

static unsigned env_uint(const char *name, unsigned set, unsigned dflt)
{
    const char *v = getenv(name);
    if (set)
        return set;
    if (v && *v) {
        char *end;
        unsigned long x = strtoul(v, &end, 10);
        if (!*end && x < 100000)
            return (unsigned)x;
    }
    return dflt;
}

struct profile {
    const char *want;
    struct s3 *s;
    bool found;
};

static int on_cred(void *user, const char *section, const char *name, const char *value)
{
    struct profile *p = user;

    if (strcmp(section, p->want))
        return 1;
    p->found = true;
    if (!strcmp(name, "aws_access_key_id"))
        snprintf(p->s->access, sizeof p->s->access, "%s", value);
    else if (!strcmp(name, "aws_secret_access_key"))
        snprintf(p->s->secret, sizeof p->s->secret, "%s", value);
    else if (!strcmp(name, "aws_session_token"))
        snprintf(p->s->token, sizeof p->s->token, "%s", value);
    return 1;
}

static int credentials(struct s3 *s)
{
    const char *ak = env("AWS_ACCESS_KEY_ID", NULL), *sk = env("AWS_SECRET_ACCESS_KEY", NULL);
    char path[512];

    if (ak && sk) {
        snprintf(s->access, sizeof s->access, "%s", ak);
        snprintf(s->secret, sizeof s->secret, "%s", sk);
        const char *tok = env("AWS_SESSION_TOKEN", NULL);
        if (tok)
            snprintf(s->token, sizeof s->token, "%s", tok);
        return 0;
    }
    struct profile p = { env("AWS_PROFILE", NULL), s, false };
    if (!p.want)
        p.want = "default";
    const char *file = env("AWS_SHARED_CREDENTIALS_FILE", NULL);
    if (file)
        snprintf(path, sizeof path, "%s", file);
    else
        snprintf(path, sizeof path, "%s/.aws/credentials", env("HOME", NULL) ? env("HOME", NULL) : "");
    int r = ini_parse(path, on_cred, &p);
    if (r == 0 && p.found && s->access[0] && s->secret[0])
        return 0;
    if (r > 0) {
        error_set(EINVAL, "%s, line %d: syntax error", path, r);
        return -1;
    }
    error_set(EACCES, "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                      "or a profile \"%s\" in %s", p.want, path);
    return -1;
}

static bool host_is_ip(const char *endpoint)
{
    const char *h = strstr(endpoint, "://");
    char host[256];
    struct in6_addr a6;
    struct in_addr a4;

    h = h ? h + 3 : endpoint;
    if (*h == '[')
        return true;
    snprintf(host, sizeof host, "%.*s", (int)strcspn(h, ":/"), h);
    return inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1 ||
           !strcmp(host, "localhost");
}

static int parse_url(struct s3 *s, const char *url)
{
    const char *b = url + 5, *slash = strchr(b, '/');
    size_t blen = slash ? (size_t)(slash - b) : strlen(b);

    if (strncmp(url, "s3://", 5) || blen == 0 || blen >= sizeof s->bucket) {
        error_set(EINVAL, "bad repository URL \"%s\" (s3://BUCKET[/PREFIX])", url);
        return -1;
    }
    memcpy(s->bucket, b, blen);
    s->bucket[blen] = 0;
    s->prefix[0] = 0;
    if (slash) {
        const char *p = slash;
        while (*p == '/')
            p++;
        size_t plen = strlen(p);
        while (plen && p[plen - 1] == '/')
            plen--;
        if (plen && plen + 2 >= sizeof s->prefix / 2) {
            error_set(ENAMETOOLONG, "repository URL \"%s\": the prefix is too long", url);
            return -1;
        }
        if (plen) {
            memcpy(s->prefix, p, plen);
            s->prefix[plen] = '/';
            s->prefix[plen + 1] = 0;
        }
    }
    return 0;
}

int s3_configure(struct s3 *s, const char *url)
{
    const char *ep, *region;

    if (parse_url(s, url) < 0)
        return -1;
    region = cfg.region ? cfg.region : env("AWS_REGION", "AWS_DEFAULT_REGION");
    snprintf(s->region, sizeof s->region, "%s", region ? region : "us-east-1");
    ep = cfg.endpoint ? cfg.endpoint : env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL");
    if (ep)
        snprintf(s->endpoint, sizeof s->endpoint, "%s", ep);
    else
        snprintf(s->endpoint, sizeof s->endpoint, "https://s3.%s.amazonaws.com", s->region);
    if (!strstr(s->endpoint, "://")) {
        error_set(EINVAL, "bad S3 endpoint \"%s\" (http://HOST[:PORT] or https://...)", s->endpoint);
        return -1;
    }
    for (size_t n = strlen(s->endpoint); n && s->endpoint[n - 1] == '/'; n--)
        s->endpoint[n - 1] = 0;
    s->path_style = cfg.path_style >= 0 ? cfg.path_style == 1 : host_is_ip(s->endpoint);
    if (cfg.ca_file)
        snprintf(s->ca_file, sizeof s->ca_file, "%s", cfg.ca_file);
    s->connections = cfg.connections ? cfg.connections : DEFAULT_CONNECTIONS;
    if (s->connections > S3_MAX_HANDLES)
        s->connections = S3_MAX_HANDLES;
    s->retries = env_uint("NBDVAULT_S3_RETRIES", cfg.retries, DEFAULT_RETRIES);
    s->timeout = env_uint("NBDVAULT_S3_TIMEOUT", cfg.timeout, DEFAULT_TIMEOUT);
    s->low_speed_time = env_uint("NBDVAULT_S3_LOW_SPEED_TIME", cfg.low_speed_time, DEFAULT_LOW_SPEED_TIME);
    s->lock_days = cfg.lock_days;
    s->lock_compliance = cfg.lock_compliance;
    return credentials(s);
}
