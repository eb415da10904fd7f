/* uri.c: NBD URIs -> struct nbd_uri.
 *
 * Follows the NBD URI specification (doc/uri.md of the NBD project) and,
 * where the spec leaves the client free, what libnbd's nbd_connect_uri does:
 *
 *   nbd[s]://[user@]host[:port][/export][?query]
 *   nbd[s]+unix://[user@]/[export]?socket=PATH[&query]
 *   nbd[s]+vsock://[user@][cid][:port][/export][?query]
 *
 * The parser is hand-written over the RFC 3986 grammar and needs nothing
 * but libc.  It is deliberately strict where a lenient reading could
 * connect to the wrong place or weaken TLS without anyone noticing:
 *
 *   - every character must be legal in a URI (a raw space or '#' inside an
 *     export name is an error, not something to guess about);
 *   - a fragment ("#...") is rejected: it is most likely an unescaped '#'
 *     that would silently truncate the export name (libnbd ignores it);
 *   - %00 is rejected everywhere, so abstract Unix sockets are not
 *     supported (the spec allows, but does not require, them);
 *   - a tls-* query parameter we do not know is rejected, because ignoring
 *     it could change how the server is authenticated.  Other unknown
 *     parameters (x-* included) are ignored with a debug message, as the
 *     spec allows and libnbd does.
 *
 * Where the spec leaves a choice, libnbd's answer is taken: TCP without a
 * host means "localhost", vsock without a CID means 2 (the host), query
 * parameters are separated by '&' or ';', and a repeated parameter keeps its
 * last value.  The scheme is case-insensitive (RFC 3986, 3.1).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "nbdcore.h"
#include "error.h"

/* How much of the URI an error message quotes. */
#define URI_QUOTE_MAX 200

struct scheme {
    const char *name;
    enum nbd_transport transport;
    bool tls;
};

static const struct scheme schemes[] = {
    { "nbd",        NBD_TRANSPORT_TCP,   false },
    { "nbds",       NBD_TRANSPORT_TCP,   true  },
    { "nbd+unix",   NBD_TRANSPORT_UNIX,  false },
    { "nbds+unix",  NBD_TRANSPORT_UNIX,  true  },
    { "nbd+vsock",  NBD_TRANSPORT_VSOCK, false },
    { "nbds+vsock", NBD_TRANSPORT_VSOCK, true  },
};

/* Parser state: the input and the scheme once known (for messages). */
struct parser {
    const char *uri;
    const struct scheme *scheme;
    const char *tls_type;       /* borrowed from the decoded query, or NULL */
};

/* Sets the error "NBD URI "<uri>": <message>" and returns -1.  The quoted
 * URI is cut short and stripped of non-printable bytes so that a message
 * stays one readable line. */
static int __attribute__((format(printf, 3, 4)))
uri_error(const struct parser *p, int err, const char *fmt, ...)
{
    char quoted[URI_QUOTE_MAX + 4], msg[512];
    size_t i;
    va_list ap;

    for (i = 0; p->uri[i] && i < URI_QUOTE_MAX; i++) {
        unsigned char c = (unsigned char) p->uri[i];
        quoted[i] = (c >= 0x20 && c < 0x7f) ? (char) c : '?';
    }
    if (p->uri[i])
        memcpy(&quoted[i], "...", 3), i += 3;
    quoted[i] = '\0';

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    nbd_set_error(err, "NBD URI \"%s\": %s", quoted, msg);
    return -1;
}

static int no_memory(const struct parser *p)
{
    return uri_error(p, ENOMEM, "out of memory");
}

/* ---- Character classes (RFC 3986, 2.2 and 2.3) -------------------------- */

static bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static bool is_unreserved(char c)
{
    return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

static bool is_sub_delim(char c)
{
    return c != '\0' && strchr("!$&'()*+,;=", c) != NULL;
}

/* Anything that may appear in a URI, as is. */
static bool is_uri_char(char c)
{
    return is_unreserved(c) || is_sub_delim(c) || c == '%' ||
           (c != '\0' && strchr(":/?#[]@", c) != NULL);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* ---- Percent decoding -------------------------------------------------- */

/* Decodes s[0..n) into a new string in *out.  what names the component in
 * messages ("export name", "socket= value", ...).  Rejects a '%' not
 * followed by two hex digits, and %00 (the result is a C string, and NBD
 * strings may not contain NUL). */
static int decode(const struct parser *p, const char *s, size_t n, const char *what, char **out)
{
    char *r = malloc(n + 1);    /* n < strlen(uri), so n + 1 cannot wrap */
    size_t i, j = 0;

    if (!r)
        return no_memory(p);
    for (i = 0; i < n; i++) {
        if (s[i] != '%') {
            r[j++] = s[i];
            continue;
        }
        int hi = i + 1 < n ? hex_value(s[i + 1]) : -1;
        int lo = i + 2 < n ? hex_value(s[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            free(r);
            return uri_error(p, EINVAL, "bad percent escape \"%.*s\" in the %s "
                             "(a '%%' must be followed by two hex digits; write %%25 for '%%')",
                             (int) (n - i < 3 ? n - i : 3), &s[i], what);
        }
        if (hi == 0 && lo == 0) {
            free(r);
            return uri_error(p, EINVAL, "%%00 (NUL byte) is not allowed in the %s", what);
        }
        r[j++] = (char) (hi << 4 | lo);
        i += 2;
    }
    r[j] = '\0';
    *out = r;
    return 0;
}

/* Replaces *field with a copy of s (last value wins). */
static int set_string(const struct parser *p, char **field, const char *s)
{
    char *copy = strdup(s);

    if (!copy)
        return no_memory(p);
    free(*field);
    *field = copy;
    return 0;
}

/* ---- Scheme ------------------------------------------------------------ */

/* Parses "scheme://" and returns the position after it through *rest. */
static int parse_scheme(struct parser *p, struct nbd_uri *u, const char **rest)
{
    const char *s = p->uri, *colon;
    size_t n, i;

    /* scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) */
    colon = s;
    if (is_alpha(*colon))
        while (is_alpha(*colon) || is_digit(*colon) || *colon == '+' ||
               *colon == '-' || *colon == '.')
            colon++;
    if (colon == s || *colon != ':')
        return uri_error(p, EINVAL, "no scheme: an NBD URI starts with nbd://, nbds://, "
                         "nbd+unix:// or nbd+vsock:// (for a local socket use "
                         "nbd+unix:///?socket=PATH)");
    n = (size_t) (colon - s);
    for (i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
        if (strlen(schemes[i].name) == n && strncasecmp(schemes[i].name, s, n) == 0)
            p->scheme = &schemes[i];
    if (!p->scheme)
        return uri_error(p, EINVAL, "unknown scheme \"%.*s\" (expected nbd, nbds, nbd+unix, "
                         "nbds+unix, nbd+vsock or nbds+vsock)", n > 32 ? 32 : (int) n, s);

    /* Insist on scheme://authority, as libnbd does: "nbd:export" or
     * "nbd:/export" has no place for a host and is almost surely a typo. */
    if (strncmp(colon, "://", 3) != 0)
        return uri_error(p, EINVAL, "expected \"%s://\" at the start", p->scheme->name);

    u->transport = p->scheme->transport;
    u->tls = p->scheme->tls;
    *rest = colon + 3;
    return 0;
}

/* ---- Authority --------------------------------------------------------- */

/* Parses a port: digits only, 1..max.  An empty port ("host:") is the same
 * as none (RFC 3986, 6.2.3). */
static int parse_port(const struct parser *p, const char *s, size_t n, uint32_t max,
                      struct nbd_uri *u)
{
    uint64_t v = 0;
    size_t i;
    char buf[24];

    if (n == 0)
        return 0;
    for (i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return uri_error(p, EINVAL, "bad port \"%.*s\": not a decimal number",
                             n > 32 ? 32 : (int) n, s);
        v = v * 10 + (uint64_t) (s[i] - '0');
        if (v > max)            /* stops before v can overflow */
            break;
    }
    if (v == 0 || v > max)
        return uri_error(p, EINVAL, "bad port \"%.*s\": must be between 1 and %" PRIu32,
                         n > 32 ? 32 : (int) n, s, max);
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    return set_string(p, &u->port, buf);
}

/* Parses the host of "[ipv6]" form (s points after '[', n excludes ']'):
 * hex digits, ':' and '.' for an embedded IPv4, optionally followed by a
 * zone "%25zone" (RFC 6874), which is decoded to "%zone" for getaddrinfo. */
static int parse_ipv6(const struct parser *p, const char *s, size_t n, struct nbd_uri *u)
{
    size_t i, colons = 0;

    for (i = 0; i < n && s[i] != '%'; i++) {
        if (s[i] == ':')
            colons++;
        else if (hex_value(s[i]) < 0 && s[i] != '.')
            return uri_error(p, EINVAL, "bad IPv6 address \"[%.*s]\" (only hex digits, ':' and "
                             "'.' may appear between the brackets)", n > 64 ? 64 : (int) n, s);
    }
    if (colons < 2)
        return uri_error(p, EINVAL, "bad IPv6 address \"[%.*s]\"", n > 64 ? 64 : (int) n, s);
    if (i < n && (n - i < 4 || strncmp(&s[i], "%25", 3) != 0))
        return uri_error(p, EINVAL, "bad IPv6 zone in \"[%.*s]\" (write it as %%25zone, "
                         "e.g. [fe80::1%%25eth0])", n > 64 ? 64 : (int) n, s);
    return decode(p, s, n, "IPv6 address", &u->host);
}

/* Parses [userinfo@]host[:port] in s[0..n). */
static int parse_authority(struct parser *p, const char *s, size_t n, struct nbd_uri *u)
{
    const char *at = memchr(s, '@', n), *host, *end = s + n, *port = NULL;
    size_t host_len;
    bool has_port = false;

    if (at) {
        /* userinfo = *( unreserved / pct-encoded / sub-delims / ":" ) */
        if (memchr(s, ':', (size_t) (at - s))) {
            /* Not quoted: the message must not carry the password on. */
            nbd_set_error(EINVAL, "NBD URI: a password in the URI (user:password@) is not "
                          "supported; give only a user name");
            return -1;
        }
        if (memchr(s, '[', (size_t) (at - s)) || memchr(s, ']', (size_t) (at - s)))
            return uri_error(p, EINVAL, "'[' or ']' in the user name");
        if (at > s && decode(p, s, (size_t) (at - s), "user name", &u->user) == -1)
            return -1;
        host = at + 1;
        if (memchr(host, '@', (size_t) (end - host)))
            return uri_error(p, EINVAL, "more than one '@' in the authority (write %%40 "
                             "for an '@' in the user name)");
    }
    else
        host = s;

    if (host < end && *host == '[') {
        const char *close = memchr(host, ']', (size_t) (end - host));
        if (!close)
            return uri_error(p, EINVAL, "'[' without a closing ']' in the host");
        if (close + 1 < end && close[1] != ':')
            return uri_error(p, EINVAL, "unexpected text after the IPv6 address \"%.*s\"",
                             (int) (close + 1 - host), host);
        if (close + 1 < end) {
            has_port = true;
            port = close + 2;
        }
        if (p->scheme->transport == NBD_TRANSPORT_VSOCK)
            return uri_error(p, EINVAL, "%s:// takes a numeric CID, not an IPv6 address",
                             p->scheme->name);
        if (parse_ipv6(p, host + 1, (size_t) (close - host - 1), u) == -1)
            return -1;
    }
    else {
        const char *colon = memchr(host, ':', (size_t) (end - host));
        host_len = (size_t) ((colon ? colon : end) - host);
        if (colon) {
            has_port = true;
            port = colon + 1;
            if (memchr(port, ':', (size_t) (end - port)))
                return uri_error(p, EINVAL, "more than one ':' in the authority (an IPv6 "
                                 "address must be written in brackets: nbd://[::1]:10809/)");
        }
        if (memchr(host, '[', host_len) || memchr(host, ']', host_len))
            return uri_error(p, EINVAL, "'[' or ']' in the host name");
        if (host_len > 0 && decode(p, host, host_len, "host name", &u->host) == -1)
            return -1;
    }

    switch (p->scheme->transport) {
    case NBD_TRANSPORT_UNIX:
        /* The spec leaves this to the client; a host here means the user
         * expected TCP, so say so rather than ignore it. */
        if (u->host || has_port)
            return uri_error(p, EINVAL, "%s:// takes no host or port (the socket is given by "
                             "socket=, e.g. %s:///export?socket=/run/nbd.sock)",
                             p->scheme->name, p->scheme->name);
        return 0;

    case NBD_TRANSPORT_TCP:
        if (has_port && parse_port(p, port, (size_t) (end - port), 65535, u) == -1)
            return -1;
        /* No host: libnbd (and QEMU) use localhost; the spec allows defaults. */
        if (!u->host)
            return set_string(p, &u->host, "localhost");
        return 0;

    case NBD_TRANSPORT_VSOCK: {
        /* The host is the numeric CID; none means 2, the hypervisor. */
        uint64_t cid = 0;
        size_t i;
        char buf[24];

        if (has_port && parse_port(p, port, (size_t) (end - port), UINT32_MAX - 1, u) == -1)
            return -1;
        if (!u->host)
            return set_string(p, &u->host, "2");
        for (i = 0; u->host[i]; i++) {
            if (!is_digit(u->host[i]) || (cid = cid * 10 + (uint64_t) (u->host[i] - '0')) > UINT32_MAX)
                return uri_error(p, EINVAL, "bad vsock CID \"%s\": must be a number "
                                 "(2 = the host)", u->host);
        }
        snprintf(buf, sizeof buf, "%" PRIu64, cid);
        return set_string(p, &u->host, buf);
    }
    }
    return 0;
}

/* ---- Query ------------------------------------------------------------- */

/* The query parameters stored as strings in struct nbd_uri. */
static char **string_param(struct nbd_uri *u, const char *name)
{
    if (strcmp(name, "socket") == 0)           return &u->socket;
    if (strcmp(name, "tls-certificates") == 0) return &u->tls_certificates;
    if (strcmp(name, "tls-psk-file") == 0)     return &u->tls_psk_file;
    if (strcmp(name, "tls-hostname") == 0)     return &u->tls_hostname;
    return NULL;
}

static int parse_bool(const char *s)
{
    static const char *const yes[] = { "1", "true", "yes", "on" };
    static const char *const no[] = { "0", "false", "no", "off" };
    size_t i;

    for (i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) return 1;
        if (strcasecmp(s, no[i]) == 0)  return 0;
    }
    return -1;
}

/* Applies one decoded name=value.  *value may be taken over (set to NULL). */
static int apply_param(struct parser *p, struct nbd_uri *u, const char *name, char **value)
{
    char **field = string_param(u, name);

    if (field) {
        if (**value == '\0')
            return uri_error(p, EINVAL, "%s= needs a value", name);
        free(*field);
        *field = *value;
        *value = NULL;
        return 0;
    }
    if (strcmp(name, "tls-verify-peer") == 0) {
        int b = parse_bool(*value);
        if (b < 0)
            return uri_error(p, EINVAL, "tls-verify-peer=%s: expected true or false",
                             *value);
        u->tls_verify_peer = b;
        return 0;
    }
    if (strcmp(name, "tls-type") == 0) {
        /* Spec-defined; there is no field for it, so it is only checked
         * against the credentials given (see check_tls_type). */
        if (strcmp(*value, "x509") != 0 && strcmp(*value, "psk") != 0)
            return uri_error(p, EINVAL, "tls-type=%s is not supported (x509 or psk)", *value);
        p->tls_type = strcmp(*value, "psk") == 0 ? "psk" : "x509";
        return 0;
    }
    if (strncmp(name, "tls-", 4) == 0)
        return uri_error(p, EINVAL, "unknown TLS query parameter %s= (known: tls-certificates, "
                         "tls-psk-file, tls-hostname, tls-verify-peer, tls-type)", name);
    nbd_debug("NBD URI: ignoring unknown query parameter %s=%s", name, *value);
    return 0;
}

/* Parses the query s[0..n): name=value pairs separated by '&' or ';'.  A
 * name without '=' has the value "" and a pair with an empty name is
 * skipped (both as libnbd). */
static int parse_query(struct parser *p, const char *s, size_t n, struct nbd_uri *u)
{
    const char *end = s + n;

    while (s < end) {
        const char *sep = s, *eq;
        char *name = NULL, *value = NULL;
        int r;

        while (sep < end && *sep != '&' && *sep != ';')
            sep++;
        eq = memchr(s, '=', (size_t) (sep - s));
        if (!eq)
            eq = sep;
        if (eq == s) {
            if (sep > s)
                nbd_debug("NBD URI: ignoring query parameter without a name");
        }
        else {
            if (decode(p, s, (size_t) (eq - s), "query parameter name", &name) == -1)
                return -1;
            if (eq < sep)
                r = decode(p, eq + 1, (size_t) (sep - eq - 1), "query parameter value", &value);
            else
                r = (value = strdup("")) ? 0 : no_memory(p);
            if (r == 0)
                r = apply_param(p, u, name, &value);
            free(name);
            free(value);
            if (r == -1)
                return -1;
        }
        s = sep < end ? sep + 1 : end;
    }
    return 0;
}

/* ---- Putting it together ----------------------------------------------- */

static int parse(struct parser *p, struct nbd_uri *u)
{
    const char *s = p->uri, *auth = s, *path, *query, *end;
    size_t i;

    for (i = 0; s[i]; i++) {
        unsigned char c = (unsigned char) s[i];
        if (!is_uri_char(s[i])) {
            if (c >= 0x20 && c < 0x7f)
                return uri_error(p, EINVAL, "character '%c' at offset %zu is not allowed in "
                                 "a URI (percent-encode it as %%%02X)", c, i, c);
            return uri_error(p, EINVAL, "byte 0x%02x at offset %zu is not allowed in a URI "
                             "(percent-encode it as %%%02X)", c, i, c);
        }
    }
    if (parse_scheme(p, u, &auth) == -1)
        return -1;
    if (strchr(auth, '#'))
        return uri_error(p, EINVAL, "a fragment (#...) is not allowed; write %%23 for a "
                         "'#' in the export name");

    path = auth + strcspn(auth, "/?");
    query = path + strcspn(path, "?");
    end = query + strlen(query);

    if (parse_authority(p, auth, (size_t) (path - auth), u) == -1)
        return -1;

    /* Export name: the path without its leading '/'; none or "/" -> "". */
    if (memchr(path, '[', (size_t) (query - path)) || memchr(path, ']', (size_t) (query - path)))
        return uri_error(p, EINVAL, "'[' or ']' in the export name (write %%5B and %%5D)");
    if (path < query) {
        if (decode(p, path + 1, (size_t) (query - path - 1), "export name", &u->export_name) == -1)
            return -1;
    }
    else if (set_string(p, &u->export_name, "") == -1)
        return -1;
    if (strlen(u->export_name) > NBD_MAX_STRING)
        return uri_error(p, EINVAL, "export name longer than %d bytes", NBD_MAX_STRING);

    if (query < end) {
        if (strpbrk(query, "[]"))
            return uri_error(p, EINVAL, "'[' or ']' in the query (write %%5B and %%5D)");
        if (parse_query(p, query + 1, (size_t) (end - query - 1), u) == -1)
            return -1;
    }

    if (u->transport == NBD_TRANSPORT_UNIX && !u->socket)
        return uri_error(p, EINVAL, "%s:// needs a socket= query parameter "
                         "(e.g. %s:///export?socket=/run/nbd.sock)",
                         p->scheme->name, p->scheme->name);
    if (u->transport != NBD_TRANSPORT_UNIX && u->socket)
        return uri_error(p, EINVAL, "socket= is only for Unix sockets (did you mean %s+unix://"
                         "?socket=...)", u->tls ? "nbds" : "nbd");

    if (p->tls_type) {
        bool psk = strcmp(p->tls_type, "psk") == 0;
        if (psk && !u->tls_psk_file)
            return uri_error(p, EINVAL, "tls-type=psk needs tls-psk-file=");
        if (!psk && u->tls_psk_file)
            return uri_error(p, EINVAL, "tls-type=x509 conflicts with tls-psk-file=");
    }
    return 0;
}

int nbd_uri_parse(const char *s, struct nbd_uri *u)
{
    struct parser p = { .uri = s ? s : "" };

    memset(u, 0, sizeof *u);
    if (!s) {
        nbd_set_error(EINVAL, "NBD URI: no URI given");
        return -1;
    }
    u->tls_verify_peer = -1;
    if (parse(&p, u) == -1) {
        int saved = errno;
        nbd_uri_clear(u);
        errno = saved;
        return -1;
    }
    return 0;
}

void nbd_uri_clear(struct nbd_uri *u)
{
    if (!u)
        return;
    free(u->user);
    free(u->host);
    free(u->port);
    free(u->socket);
    free(u->export_name);
    free(u->tls_certificates);
    free(u->tls_psk_file);
    free(u->tls_hostname);
    memset(u, 0, sizeof *u);
}
