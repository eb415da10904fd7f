/* map.c: `nbdvault map URI [--context NAME] [--totals] [--json]`: the
 * extents of one metadata context, printed as nbdinfo --map prints them. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "nbdcore/nbdcore.h"

static const char map_help[] =
    "Usage: nbdvault map URI [--context NAME] [--totals] [--json]\n"
    "\n"
    "Prints the extents of one metadata context of an NBD export, one per line:\n"
    "offset, length, type number and description, adjacent extents of the same\n"
    "type merged (as nbdinfo --map prints them).\n"
    "\n"
    "  --context NAME  base:allocation (default), qemu:allocation-depth,\n"
    "                  qemu:dirty-bitmap:BITMAP, or any context the server offers\n"
    "  --totals        the total size of each type instead of the extents\n"
    "  --json          print JSON\n"
    "  --help          this text\n";

/* The description nbdinfo gives a type, or NULL. */
static char *describe(const char *ctx, uint64_t type)
{
    char *s = NULL;

    if (!strcmp(ctx, NBD_CONTEXT_BASE_ALLOCATION)) {
        static const char *const names[] = { "data", "hole", "zero", "hole,zero" };
        return type < 4 ? strdup(names[type]) : NULL;
    }
    if (!strncmp(ctx, NBD_CONTEXT_QEMU_DIRTY_BITMAP_PREFIX,
                 strlen(NBD_CONTEXT_QEMU_DIRTY_BITMAP_PREFIX)))
        return type < 2 ? strdup(type ? "dirty" : "clean") : NULL;
    if (!strcmp(ctx, NBD_CONTEXT_QEMU_ALLOCATION_DEPTH)) {
        if (type == 0)
            return strdup("absent");
        if (type == 1)
            return strdup("local");
        if (asprintf(&s, "backing depth %" PRIu64, type) < 0)
            return NULL;
        return s;
    }
    return NULL;
}

struct total {
    uint64_t type, size;
};

struct map_state {
    bool json, totals;
    const char *ctx;
    struct json_object *arr;
    struct total *t;
    size_t nt;
};

static int on_extent(void *opaque, const char *ctx, uint64_t off, const struct nbd_extent *e,
                     size_t n)
{
    struct map_state *m = opaque;

    for (size_t i = 0; i < n; i++, off += e[i - 1].length) {
        if (m->totals) {
            size_t j;
            for (j = 0; j < m->nt && m->t[j].type != e[i].flags; j++)
                ;
            if (j == m->nt) {
                struct total *nt = realloc(m->t, (m->nt + 1) * sizeof *nt);
                if (!nt)
                    return -1;
                m->t = nt;
                m->t[m->nt++] = (struct total){ e[i].flags, 0 };
            }
            m->t[j].size += e[i].length;
            continue;
        }
        char *d = describe(ctx, e[i].flags);
        if (m->json) {
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, "offset", json_object_new_int64((int64_t)off));
            json_object_object_add(o, "length", json_object_new_int64((int64_t)e[i].length));
            json_object_object_add(o, "type", json_object_new_int64((int64_t)e[i].flags));
            if (d)
                json_object_object_add(o, "description", json_object_new_string(d));
            json_object_array_add(m->arr, o);
        } else {
            printf("%10" PRIu64 "  %10" PRIu64 "  %3" PRIu64 "%s%s\n", off, e[i].length,
                   e[i].flags, d ? "  " : "", d ? d : "");
        }
        free(d);
    }
    return 0;
}

static int cmp_total(const void *a, const void *b)
{
    const struct total *x = a, *y = b;
    return x->type < y->type ? -1 : x->type > y->type;
}

int cli_map(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "context", required_argument, NULL, 'c' },
        { "totals", no_argument, NULL, 't' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    struct map_state m = { .ctx = NBD_CONTEXT_BASE_ALLOCATION };
    int ch, ret = CLI_EXIT_FAIL;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c': m.ctx = optarg; break;
        case 't': m.totals = true; break;
        case 'j': m.json = true; break;
        case 'h': fputs(map_help, stdout); return CLI_EXIT_OK;
        default: /* getopt said what is wrong */
            return cli_try_help("map");
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("map", "expected one NBD URI");
    const char *uri = argv[optind];

    const char *ctxs[] = { m.ctx, NULL };
    struct nbd_conn_opts opts = { .meta_contexts = ctxs };
    struct nbd_conn *c = nbd_connect_uri(uri, &opts);
    if (!c)
        return cli_error("map", "%s: %s", uri, nbd_get_error());
    if (!nbd_has_context(c, m.ctx)) {
        ret = cli_error("map", "%s: the server does not offer metadata context \"%s\"", uri, m.ctx);
        goto out;
    }
    if (m.json)
        m.arr = json_object_new_array();
    if (nbd_block_status_walk(c, m.ctx, 0, nbd_get_size(c), true, on_extent, &m) < 0) {
        ret = cli_error("map", "%s: %s", uri, nbd_get_error());
        goto out;
    }
    if (m.totals) {
        uint64_t size = nbd_get_size(c);
        qsort(m.t, m.nt, sizeof *m.t, cmp_total);
        for (size_t i = 0; i < m.nt; i++) {
            double pct = size ? 100.0 * (double)m.t[i].size / (double)size : 0;
            char *d = describe(m.ctx, m.t[i].type);
            if (m.json) {
                struct json_object *o = json_object_new_object();
                json_object_object_add(o, "size", json_object_new_int64((int64_t)m.t[i].size));
                json_object_object_add(o, "percent", json_object_new_double(pct));
                json_object_object_add(o, "type", json_object_new_int64((int64_t)m.t[i].type));
                if (d)
                    json_object_object_add(o, "description", json_object_new_string(d));
                json_object_array_add(m.arr, o);
            } else {
                printf("%10" PRIu64 " %5.1f%% %3" PRIu64 "%s%s\n", m.t[i].size, pct, m.t[i].type,
                       d ? " " : "", d ? d : "");
            }
            free(d);
        }
    }
    if (m.json) {
        cli_print_json(m.arr);
        m.arr = NULL;
    }
    ret = CLI_EXIT_OK;
out:
    if (m.arr)
        json_object_put(m.arr);
    free(m.t);
    nbd_close(c);
    return ret;
}
