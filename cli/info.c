/* info.c: `nbdvault info URI [--list] [--json]`: what an export offers,
 * printed as nbdinfo prints it (same JSON keys where they overlap). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "nbdcore/nbdcore.h"

static const char info_help[] =
    "Usage: nbdvault info URI [--list] [--json]\n"
    "\n"
    "Connects to an NBD server and shows the protocol, TLS, structured replies\n"
    "and extended headers, and for the export: size, flags, block sizes and the\n"
    "metadata contexts it offers.\n"
    "\n"
    "  URI          nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH,\n"
    "               nbds://... and nbds+unix://... for TLS (tls-certificates=DIR,\n"
    "               tls-psk-file=FILE, the TLS user as USER@ in the authority)\n"
    "  --list, -L   list every export of the server (NBD_OPT_LIST)\n"
    "  --json       print JSON (the keys of nbdinfo --json, plus\n"
    "               \"extended_headers\")\n"
    "  --help       this text\n";

struct export_entry {
    char *name, *description;
};

struct export_list {
    struct export_entry *e;
    size_t n;
};

static int on_export(void *opaque, const char *name, const char *desc)
{
    struct export_list *l = opaque;
    struct export_entry *ne = realloc(l->e, (l->n + 1) * sizeof *ne);
    if (!ne)
        return -1;
    l->e = ne;
    l->e[l->n].name = strdup(name);
    l->e[l->n].description = desc ? strdup(desc) : NULL;
    l->n++;
    return 0;
}

struct strv {
    char **s;
    size_t n;
};

static int on_context(void *opaque, const char *name)
{
    struct strv *v = opaque;
    char **ns = realloc(v->s, (v->n + 1) * sizeof *ns);
    if (!ns)
        return -1;
    v->s = ns;
    v->s[v->n++] = strdup(name);
    return 0;
}

static void strv_free(struct strv *v)
{
    for (size_t i = 0; i < v->n; i++)
        free(v->s[i]);
    free(v->s);
    v->s = NULL;
    v->n = 0;
}

/* What we show of one export. */
struct shown {
    const char *name;
    uint64_t size;
    uint16_t flags;
    bool has_block_size;
    uint32_t min, pref, max;
    const char *description;
    struct strv contexts;
    bool structured;
};

static const struct {
    const char *key;
    uint16_t flag;
    bool invert;
} flag_keys[] = {
    { "is_rotational", NBD_FLAG_ROTATIONAL, false },
    { "is_read_only", NBD_FLAG_READ_ONLY, false },
    { "can_cache", NBD_FLAG_SEND_CACHE, false },
    { "can_df", NBD_FLAG_SEND_DF, false },
    { "can_fast_zero", NBD_FLAG_SEND_FAST_ZERO, false },
    { "can_flush", NBD_FLAG_SEND_FLUSH, false },
    { "can_fua", NBD_FLAG_SEND_FUA, false },
    { "can_multi_conn", NBD_FLAG_CAN_MULTI_CONN, false },
    { "can_trim", NBD_FLAG_SEND_TRIM, false },
    { "can_zero", NBD_FLAG_SEND_WRITE_ZEROES, false },
    { "can_block_status_payload", NBD_FLAG_BLOCK_STAT_PAYLOAD, false },
};

static bool flag_set(const struct shown *s, uint16_t flag)
{
    uint16_t f = s->flags;
    if (!s->structured)
        f &= ~NBD_FLAG_SEND_DF;
    if (!(f & NBD_FLAG_SEND_WRITE_ZEROES))
        f &= ~NBD_FLAG_SEND_FAST_ZERO;
    return (f & flag) != 0;
}

/* The size as nbdinfo shows it: in the largest unit that divides it
 * exactly ("1536K", "5242881", "0"), not rounded as cli_human_size does.
 * Returns whether a unit was added (nbdinfo prints "(...)" only then). */
static bool size_str(char *buf, size_t cap, uint64_t bytes)
{
    static const char units[] = "KMGTPE";
    int u = -1;

    while (bytes != 0 && bytes % 1024 == 0 && u < 5) {
        bytes /= 1024;
        u++;
    }
    if (u < 0)
        snprintf(buf, cap, "%llu", (unsigned long long)bytes);
    else
        snprintf(buf, cap, "%llu%c", (unsigned long long)bytes, units[u]);
    return u >= 0;
}

static void print_export_text(const struct shown *s, const char *uri)
{
    char hs[32];

    printf("export=\"%s\":\n", s->name);
    if (s->description)
        printf("\tdescription: %s\n", s->description);
    if (size_str(hs, sizeof hs, s->size))
        printf("\texport-size: %llu (%s)\n", (unsigned long long)s->size, hs);
    else
        printf("\texport-size: %llu\n", (unsigned long long)s->size);
    if (uri)
        printf("\turi: %s\n", uri);
    if (s->contexts.n) {
        printf("\tcontexts:\n");
        for (size_t i = 0; i < s->contexts.n; i++)
            printf("\t\t%s\n", s->contexts.s[i]);
    }
    for (size_t i = 0; i < sizeof flag_keys / sizeof *flag_keys; i++)
        printf("\t%s: %s\n", flag_keys[i].key, flag_set(s, flag_keys[i].flag) ? "true" : "false");
    if (s->has_block_size) {
        printf("\tblock_size_minimum: %u\n", s->min);
        printf("\tblock_size_preferred: %u\n", s->pref);
        printf("\tblock_size_maximum: %u\n", s->max);
    }
}

static struct json_object *export_json(const struct shown *s, const char *uri)
{
    struct json_object *o = json_object_new_object();
    char hs[32];

    json_object_object_add(o, "export-name", json_object_new_string(s->name));
    if (s->description)
        json_object_object_add(o, "description", json_object_new_string(s->description));
    if (uri)
        json_object_object_add(o, "uri", json_object_new_string(uri));
    struct json_object *ctx = json_object_new_array();
    for (size_t i = 0; i < s->contexts.n; i++)
        json_object_array_add(ctx, json_object_new_string(s->contexts.s[i]));
    json_object_object_add(o, "contexts", ctx);
    for (size_t i = 0; i < sizeof flag_keys / sizeof *flag_keys; i++)
        json_object_object_add(o, flag_keys[i].key,
                               json_object_new_boolean(flag_set(s, flag_keys[i].flag)));
    if (s->has_block_size) {
        json_object_object_add(o, "block_size_minimum", json_object_new_int64(s->min));
        json_object_object_add(o, "block_size_preferred", json_object_new_int64(s->pref));
        json_object_object_add(o, "block_size_maximum", json_object_new_int64(s->max));
    }
    json_object_object_add(o, "export-size", json_object_new_int64((int64_t)s->size));
    size_str(hs, sizeof hs, s->size);
    json_object_object_add(o, "export-size-str", json_object_new_string(hs));
    return o;
}

static const char *protocol_text(struct nbd_conn *c)
{
    return nbd_is_extended(c) ? "using extended headers"
           : nbd_is_structured(c) ? "using structured packets"
                                  : "using simple packets";
}

static struct json_object *header_json(struct nbd_conn *c)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "protocol", json_object_new_string(nbd_get_protocol(c)));
    json_object_object_add(o, "TLS", json_object_new_boolean(nbd_is_tls(c)));
    json_object_object_add(o, "structured", json_object_new_boolean(nbd_is_structured(c)));
    json_object_object_add(o, "extended_headers", json_object_new_boolean(nbd_is_extended(c)));
    return o;
}

/* URI of another export of the same server, for --list. */
static char *uri_for_export(const char *uri, const char *name)
{
    struct nbd_uri u;
    char *out = NULL;
    if (nbd_uri_parse(uri, &u) < 0)
        return NULL;
    /* Rebuild: scheme://authority/NAME?query, keeping the original query. */
    const char *q = strchr(uri, '?');
    const char *p = strstr(uri, "://");
    const char *slash = p ? strchr(p + 3, '/') : NULL;
    size_t auth_end = slash ? (size_t)(slash - uri) : q ? (size_t)(q - uri) : strlen(uri);
    size_t cap = auth_end + 3 * strlen(name) + 2 + (q ? strlen(q) : 0) + 1;
    out = malloc(cap);
    if (out) {
        size_t j = 0;
        memcpy(out, uri, auth_end);
        j = auth_end;
        out[j++] = '/';
        for (const unsigned char *s = (const unsigned char *)name; *s; s++) {
            if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
                strchr("-._~/:@!$'()*+,=", *s))
                out[j++] = (char)*s;
            else
                j += (size_t)sprintf(out + j, "%%%02X", *s);
        }
        if (q) {
            strcpy(out + j, q);
            j += strlen(q);
        }
        out[j] = 0;
    }
    nbd_uri_clear(&u);
    return out;
}

int cli_info(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "list", no_argument, NULL, 'L' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    bool list = false, json = false;
    int ch, ret = CLI_EXIT_FAIL;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "Lh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'L': list = true; break;
        case 'j': json = true; break;
        case 'h': fputs(info_help, stdout); return CLI_EXIT_OK;
        default: /* getopt said what is wrong */
            return cli_try_help("info");
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("info", "expected one NBD URI");
    const char *uri = argv[optind];

    struct nbd_conn_opts opts = { .opt_mode = true };
    struct nbd_conn *c = nbd_connect_uri(uri, &opts);
    if (!c)
        return cli_error("info", "%s: %s", uri, nbd_get_error());

    struct export_list exports = { 0 };
    struct json_object *root = json ? header_json(c) : NULL;
    struct json_object *arr = json ? json_object_new_array() : NULL;

    if (!json)
        printf("protocol: %s %s TLS, %s\n", nbd_get_protocol(c),
               nbd_is_tls(c) ? "with" : "without", protocol_text(c));

    if (list) {
        if (nbd_opt_list(c, on_export, &exports) < 0) {
            ret = cli_error("info", "%s: list exports: %s", uri, nbd_get_error());
            goto out;
        }
        for (size_t i = 0; i < exports.n; i++) {
            struct shown s = { .name = exports.e[i].name, .structured = nbd_is_structured(c) };
            struct nbd_export_info inf;
            if (nbd_opt_info(c, s.name, &inf) < 0) {
                ret = cli_error("info", "%s: export \"%s\": %s", uri, s.name, nbd_get_error());
                goto out;
            }
            if (nbd_is_structured(c))
                (void)nbd_opt_list_meta_context(c, s.name, NULL, on_context, &s.contexts);
            s.size = inf.size;
            s.flags = inf.flags;
            s.has_block_size = inf.has_block_size;
            s.min = inf.min_block;
            s.pref = inf.pref_block;
            s.max = inf.max_block;
            s.description = inf.description ? inf.description : exports.e[i].description;
            char *euri = uri_for_export(uri, s.name);
            if (json)
                json_object_array_add(arr, export_json(&s, euri));
            else
                print_export_text(&s, euri);
            free(euri);
            nbd_export_info_clear(&inf);
            strv_free(&s.contexts);
        }
        nbd_opt_abort(c);
    } else {
        struct shown s = { .name = nbd_get_export_name(c), .structured = nbd_is_structured(c) };
        if (nbd_is_structured(c) &&
            nbd_opt_list_meta_context(c, NULL, NULL, on_context, &s.contexts) < 0) {
            strv_free(&s.contexts); /* not fatal: the export just has none to show */
        }
        if (nbd_opt_go(c) < 0) {
            strv_free(&s.contexts);
            ret = cli_error("info", "%s: %s", uri, nbd_get_error());
            goto out;
        }
        s.size = nbd_get_size(c);
        s.flags = nbd_get_flags(c);
        s.has_block_size = nbd_has_block_size(c);
        nbd_get_block_size(c, &s.min, &s.pref, &s.max);
        s.description = nbd_get_description(c);
        if (json)
            json_object_array_add(arr, export_json(&s, uri));
        else
            print_export_text(&s, uri);
        strv_free(&s.contexts);
    }
    if (json) {
        json_object_object_add(root, "exports", arr);
        arr = NULL;
        cli_print_json(root);
        root = NULL;
    }
    ret = CLI_EXIT_OK;
out:
    if (arr)
        json_object_put(arr);
    if (root)
        json_object_put(root);
    for (size_t i = 0; i < exports.n; i++) {
        free(exports.e[i].name);
        free(exports.e[i].description);
    }
    free(exports.e);
    nbd_close(c);
    return ret;
}
