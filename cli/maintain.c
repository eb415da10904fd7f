/* maintain.c: `nbdvault verify`, `nbdvault prune` and `nbdvault gc`. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "common/error.h"


/* ---- verify ---------------------------------------------------------------- */

static const char verify_help[] =
    "Usage: nbdvault verify --repo DIR [--disk NAME] [--point ID]\n"
    "                       [--read-data | --read-data-subset N%] [--json]\n"
    "\n"
    "Reads every chunk the selected points reference and checks it against its\n"
    "id, checks the packs' own checksums, and runs SQLite's integrity check on\n"
    "the catalog.  Prints what is damaged and which points it affects.\n"
    "\n"
    "In a bucket (s3://...) verify reads no chunk by default: every manifest is\n"
    "decoded and checked when the cache is brought up to date, and every pack's\n"
    "index (its trailer, two ranged reads) is checked by its CRC and against\n"
    "the catalog's rows, and its size against the catalog's.  --read-data\n"
    "reads every pack as a local verify does; --read-data-subset N% reads a\n"
    "fixed N% of the packs (chosen by name, so that a nightly N% covers the\n"
    "same packs, and several different percentages overlap).\n"
    "\n"
    "An encrypted repository is verified with its key when one is given\n"
    "(--key-file, --password-file, NBDVAULT_PASSWORD); without one, only the\n"
    "packs' CRCs, layout and sizes are checked, and verify says so.\n"
    "\n"
    "Exit codes: 0 nothing damaged, 1 damage found or the check failed, 2 bad usage.\n";

struct vout {
    bool json;
    struct json_object *arr;
};

static void on_damage(void *opaque, const char *msg)
{
    struct vout *v = opaque;
    if (v->json)
        json_object_array_add(v->arr, json_object_new_string(msg));
    else
        printf("damaged: %s\n", msg);
}

static void on_verify_warn(void *opaque, const char *msg)
{
    (void)opaque;
    fprintf(stderr, "nbdvault verify: warning: %s\n", msg);
}

int cli_verify(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repo", required_argument, NULL, 'r' },
        { "disk", required_argument, NULL, 'd' },
        { "point", required_argument, NULL, 'p' },
        { "config", required_argument, NULL, 'C' },
        { "json", no_argument, NULL, 'j' },
        { "read-data", no_argument, NULL, 'R' },
        { "read-data-subset", required_argument, NULL, 'S' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    const char *repo = NULL, *config = NULL;
    struct agent_verify_opts o = { .read_data_pct = -1 };
    struct vout v = { 0 };
    int ch;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': repo = optarg; break;
        case 'd': o.disk = optarg; break;
        case 'p': {
            char *end;
            o.point = strtoll(optarg, &end, 10);
            if (*end || o.point <= 0)
                return cli_usage_error("verify", "bad --point \"%s\"", optarg);
            break;
        }
        case 'C': config = optarg; break;
        case 'j': v.json = true; break;
        case 'R': o.read_data_pct = 100; break;
        case 'S': {
            char *end;
            long pct = strtol(optarg, &end, 10);
            if (end == optarg || (*end && strcmp(end, "%")) || pct < 0 || pct > 100)
                return cli_usage_error("verify", "bad --read-data-subset \"%s\" (0%% to 100%%)", optarg);
            o.read_data_pct = (int)pct;
            break;
        }
        case 'h': fputs(verify_help, stdout); return CLI_EXIT_OK;
        default: /* getopt said what is wrong */
            return cli_try_help("verify");
        }
    }
    if (optind != argc)
        return cli_usage_error("verify", "unexpected argument \"%s\"", argv[optind]);
    int code;
    cli_keys_optional(true);
    struct agent_repo *r = cli_open_repo("verify", repo, config, &code);
    if (!r)
        return code;
    struct cli_progress prog = { .what = "verify" };
    o.damage = on_damage;
    o.warn = on_verify_warn;
    o.progress = NULL;
    o.opaque = &v;
    (void)prog;
    if (v.json)
        v.arr = json_object_new_array();
    struct agent_verify_result res;
    int ret;
    if (agent_verify(r, &o, &res) < 0) {
        ret = cli_error("verify", "%s", error_msg());
        json_object_put(v.arr);
        agent_repo_close(r);
        return ret;
    }
    bool bad = res.damaged_chunks || res.damaged_packs || !res.catalog_ok;
    if (v.json) {
        struct json_object *j = json_object_new_object();
        json_object_object_add(j, "ok", json_object_new_boolean(!bad));
        json_object_object_add(j, "points", json_object_new_int64((int64_t)res.points));
        json_object_object_add(j, "packs", json_object_new_int64((int64_t)res.packs));
        json_object_object_add(j, "chunks", json_object_new_int64((int64_t)res.chunks));
        json_object_object_add(j, "packs_index_only", json_object_new_int64((int64_t)res.packs_index_only));
        json_object_object_add(j, "bytes", json_object_new_int64((int64_t)res.bytes));
        json_object_object_add(j, "catalog_ok", json_object_new_boolean(res.catalog_ok));
        json_object_object_add(j, "decrypted", json_object_new_boolean(!res.no_key));
        json_object_object_add(j, "damaged_packs", json_object_new_int64((int64_t)res.damaged_packs));
        json_object_object_add(j, "damaged_chunks", json_object_new_int64((int64_t)res.damaged_chunks));
        struct json_object *aff = json_object_new_array();
        for (size_t i = 0; i < res.naffected; i++)
            json_object_array_add(aff, json_object_new_int64(res.affected[i]));
        json_object_object_add(j, "affected_points", aff);
        json_object_object_add(j, "damage", v.arr);
        cli_print_json(j);
    } else {
        char b[32];
        cli_human_size(b, sizeof b, res.bytes);
        printf("checked %llu point(s), %llu pack(s), %llu chunk(s) (%s); catalog %s\n",
               (unsigned long long)res.points, (unsigned long long)res.packs,
               (unsigned long long)res.chunks, b, res.catalog_ok ? "ok" : "DAMAGED");
        if (res.no_key)
            printf("encrypted, and no key was given: the packs' CRCs and sizes were checked; no "
                   "chunk was decrypted or checked against its id\n");
        if (res.packs_index_only)
            printf("%llu pack(s) checked by their index only (--read-data reads them)\n",
                   (unsigned long long)res.packs_index_only);
        if (bad) {
            printf("DAMAGE: %llu pack(s), %llu chunk(s)", (unsigned long long)res.damaged_packs,
                   (unsigned long long)res.damaged_chunks);
            if (res.naffected) {
                printf("; affected points:");
                for (size_t i = 0; i < res.naffected; i++)
                    printf(" %lld", (long long)res.affected[i]);
            }
            printf("\n");
        } else {
            printf("no damage found\n");
        }
    }
    agent_verify_result_free(&res);
    agent_repo_close(r);
    return bad ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

/* ---- prune ------------------------------------------------------------------ */

static const char prune_help[] =
    "Usage: nbdvault prune --repo DIR --disk NAME [--keep-last N] [--keep-hourly N]\n"
    "                      [--keep-daily N] [--keep-weekly N] [--keep-monthly N]\n"
    "                      [--keep-yearly N] [--dry-run] [--json]\n"
    "\n"
    "Removes the restore points of a disk that no rule keeps (restic's rules:\n"
    "--keep-last N keeps the N newest points; --keep-daily N the newest point of\n"
    "each of the N newest days that have one; and so on).  What later points\n"
    "still need from a removed point is merged into them, so every kept point\n"
    "stays whole.  Space is given back by 'nbdvault gc'.\n";

struct pout {
    bool json;
    struct json_object *arr;
};

static void on_decision(void *opaque, int64_t point, double t, bool keep, const char *why)
{
    struct pout *p = opaque;
    char when[64];
    time_t s = (time_t)t;
    struct tm tm;
    localtime_r(&s, &tm);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    if (p->json) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "point", json_object_new_int64(point));
        json_object_object_add(o, "time", json_object_new_string(when));
        json_object_object_add(o, "keep", json_object_new_boolean(keep));
        json_object_object_add(o, "reason", json_object_new_string(why));
        json_object_array_add(p->arr, o);
    } else {
        printf("%-6s point %-6lld %s  (%s)\n", keep ? "keep" : "remove", (long long)point, when, why);
    }
}

static void on_prune_warn(void *opaque, const char *msg)
{
    fprintf(stderr, "nbdvault prune: warning: %s\n", msg);
}

int cli_prune(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repo", required_argument, NULL, 'r' },
        { "disk", required_argument, NULL, 'd' },
        { "keep-last", required_argument, NULL, '0' },
        { "keep-hourly", required_argument, NULL, '1' },
        { "keep-daily", required_argument, NULL, '2' },
        { "keep-weekly", required_argument, NULL, '3' },
        { "keep-monthly", required_argument, NULL, '4' },
        { "keep-yearly", required_argument, NULL, '5' },
        { "dry-run", no_argument, NULL, 'n' },
        { "config", required_argument, NULL, 'C' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    const char *repo = NULL, *config = NULL;
    struct agent_prune_opts o = { 0 };
    struct pout p = { 0 };
    unsigned *keep[] = { &o.keep_last, &o.keep_hourly, &o.keep_daily,
                         &o.keep_weekly, &o.keep_monthly, &o.keep_yearly };
    int ch;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': repo = optarg; break;
        case 'd': o.disk = optarg; break;
        case '0': case '1': case '2': case '3': case '4': case '5':
            if (cli_parse_unsigned(optarg, 1000000, keep[ch - '0']) < 0)
                return cli_usage_error("prune", "bad count \"%s\"", optarg);
            break;
        case 'n': o.dry_run = true; break;
        case 'C': config = optarg; break;
        case 'j': p.json = true; break;
        case 'h': fputs(prune_help, stdout); return CLI_EXIT_OK;
        default: /* getopt said what is wrong */
            return cli_try_help("prune");
        }
    }
    if (optind != argc)
        return cli_usage_error("prune", "unexpected argument \"%s\"", argv[optind]);
    if (!o.disk)
        return cli_usage_error("prune", "--disk NAME is required");
    if (!o.keep_last && !o.keep_hourly && !o.keep_daily && !o.keep_weekly && !o.keep_monthly &&
        !o.keep_yearly)
        return cli_usage_error("prune", "give at least one --keep-* rule");
    int code;
    struct agent_repo *r = cli_open_repo("prune", repo, config, &code);
    if (!r)
        return code;
    o.decision = on_decision;
    o.warn = on_prune_warn;
    o.opaque = &p;
    if (p.json)
        p.arr = json_object_new_array();
    struct agent_prune_result res;
    int ret = CLI_EXIT_OK;
    if (agent_prune(r, &o, &res) < 0) {
        ret = cli_error("prune", "disk %s: %s", o.disk, error_msg());
        json_object_put(p.arr);
    } else if (p.json) {
        struct json_object *j = json_object_new_object();
        json_object_object_add(j, "disk", json_object_new_string(o.disk));
        json_object_object_add(j, "dry_run", json_object_new_boolean(o.dry_run));
        json_object_object_add(j, "kept", json_object_new_int64(res.kept));
        json_object_object_add(j, "removed", json_object_new_int64(res.removed));
        json_object_object_add(j, "points", p.arr);
        cli_print_json(j);
    } else {
        printf("%s %u point(s), kept %u\n", o.dry_run ? "would remove" : "removed", res.removed,
               res.kept);
    }
    agent_repo_close(r);
    return ret;
}

/* ---- gc ------------------------------------------------------------------------ */

static const char gc_help[] =
    "Usage: nbdvault gc --repo DIR [--dry-run] [--json]\n"
    "\n"
    "Removes the chunks no restore point references, deletes packs left empty,\n"
    "rewrites packs that are mostly garbage, and removes files no catalog row\n"
    "points at (left by an interrupted backup).  Runs under the repository lock:\n"
    "no backup or prune runs meanwhile.\n";

static void on_note(void *opaque, const char *msg)
{
    if (!*(bool *)opaque)
        printf("%s\n", msg);
}

int cli_gc(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repo", required_argument, NULL, 'r' },
        { "dry-run", no_argument, NULL, 'n' },
        { "config", required_argument, NULL, 'C' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    const char *repo = NULL, *config = NULL;
    struct agent_gc_opts o = { 0 };
    bool json = false;
    int ch;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': repo = optarg; break;
        case 'n': o.dry_run = true; break;
        case 'C': config = optarg; break;
        case 'j': json = true; break;
        case 'h': fputs(gc_help, stdout); return CLI_EXIT_OK;
        default: /* getopt said what is wrong */
            return cli_try_help("gc");
        }
    }
    if (optind != argc)
        return cli_usage_error("gc", "unexpected argument \"%s\"", argv[optind]);
    int code;
    struct agent_repo *r = cli_open_repo("gc", repo, config, &code);
    if (!r)
        return code;
    o.note = on_note;
    o.opaque = &json;
    struct agent_gc_result res;
    int ret = CLI_EXIT_OK;
    if (agent_gc(r, &o, &res) < 0) {
        ret = cli_error("gc", "%s", error_msg());
    } else if (json) {
        struct json_object *j = json_object_new_object();
        json_object_object_add(j, "dry_run", json_object_new_boolean(o.dry_run));
        json_object_object_add(j, "chunks_removed", json_object_new_int64((int64_t)res.chunks_removed));
        json_object_object_add(j, "packs_removed", json_object_new_int64((int64_t)res.packs_removed));
        json_object_object_add(j, "packs_rewritten", json_object_new_int64((int64_t)res.packs_rewritten));
        json_object_object_add(j, "orphans_removed", json_object_new_int64((int64_t)res.orphans_removed));
        json_object_object_add(j, "packs_locked", json_object_new_int64(res.packs_locked));
        json_object_object_add(j, "bytes_freed", json_object_new_int64((int64_t)res.bytes_freed));
        cli_print_json(j);
    } else {
        char b[32];
        cli_human_size(b, sizeof b, res.bytes_freed);
        printf("%s %llu chunk(s), %llu pack(s), %llu orphan file(s); rewrote %llu pack(s); "
               "%s freed\n", o.dry_run ? "would remove" : "removed",
               (unsigned long long)res.chunks_removed, (unsigned long long)res.packs_removed,
               (unsigned long long)res.orphans_removed, (unsigned long long)res.packs_rewritten, b);
        if (res.packs_locked)
            printf("kept %u pack(s) under S3 Object Lock\n", res.packs_locked);
    }
    agent_repo_close(r);
    return ret;
}
