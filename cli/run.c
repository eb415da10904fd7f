/* run.c: `nbdvault run`: the nightly job.  Every source of one INI file
 * ([vm NAME] sections, [defaults] for what they share) is backed up, its
 * retention applied, and gc run where its day has come; one summary line
 * per source and a total, or one JSON object per source. */
#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "common/vec.h"

static const char run_help[] =
    "Usage: nbdvault run --config FILE [--only NAME]... [--jobs N] [--dry-run]\n"
    "                    [--syslog] [--json]\n"
    "\n"
    "Runs the nightly job of every source that FILE lists, each in a section of\n"
    "its own ([vm NAME]; [defaults] holds keys every section shares).  Keys are\n"
    "backup's and prune's options without the dashes (see agent.conf.example):\n"
    "\n"
    "    [defaults]\n"
    "    repo = /backup\n"
    "    keep-daily = 7\n"
    "    gc = sunday\n"
    "    [vm web1]\n"
    "    libvirt = web1       ; or: qmp = SOCKET   or: uri = NBD-URI, bitmap = NAME\n"
    "\n"
    "[defaults] also takes the repository settings of every command (s3-endpoint,\n"
    "cache-dir, key-file, password-file, ...: `nbdvault --help`), for every source.\n"
    "\n"
    "Each source is backed up, copied to copy-to = REPO when it is given (an\n"
    "s3:// bucket: its new points leave the host at once), then pruned by its\n"
    "keep-* rules (only the disks\n"
    "that were backed up this run); gc runs on a repository after its sources\n"
    "when one of them names today (gc = sunday, mon,thu, daily, never).  A\n"
    "failing source does not stop the others.  Two runs never overlap on one\n"
    "repository (the second is refused, naming the first).  Log lines go to\n"
    "stderr with a timestamp and a level, and to syslog with --syslog.\n"
    "\n"
    "  --config FILE   the job file (required)\n"
    "  --only NAME     run only this section (repeatable)\n"
    "  --jobs N        sources backed up at once (default 1)\n"
    "  --dry-run       check the file and print what would be done\n"
    "  --syslog        log to syslog too (facility daemon)\n"
    "  --json          print one JSON object per source\n"
    "  --help          this text\n"
    "\n"
    "Exit codes: 0 every source succeeded, 1 some failed (the others still ran),\n"
    "2 bad usage or a bad config file.\n";

#define NKEEP 6
static const char *const keep_keys[NKEEP] = { "keep-last", "keep-hourly", "keep-daily",
                                              "keep-weekly", "keep-monthly", "keep-yearly" };

struct job {
    char *name;
    /* Keys (strdup'ed; NULL = unset). */
    char *repo, *libvirt, *connect, *qmp, *vm, *uri, *bitmap, *disk, *work_dir, *gc;
    char *full, *connections, *compress_level, *max_rate, *copy_to;
    char *keep[NKEEP];
    char *targets[CLI_MAX_DISKS];  /* disk = (libvirt) / node = (qmp), repeatable */
    size_t ntargets;
    bool node_keys, disk_keys;
    /* Parsed. */
    struct cli_source src;
    unsigned keepv[NKEEP];
    bool has_keep, selected;
    /* Results. */
    bool ok;
    char error[1024];
    struct json_object *disks;    /* backup's objects, one per disk */
    unsigned pruned, kept;
    double seconds;
};

struct runfile {
    struct job defaults;
    struct job *jobs;
    size_t n, cap;
    struct job *cur;
    char section[256];
    char err[512];
};

static char **job_key(struct job *j, const char *name)
{
    static const char *const names[] = { "repo", "libvirt", "connect", "qmp", "vm", "uri",
                                         "bitmap", "work-dir", "gc", "full", "connections",
                                         "compress-level", "max-rate", "copy-to" };
    char **slots[] = { &j->repo, &j->libvirt, &j->connect, &j->qmp, &j->vm, &j->uri,
                       &j->bitmap, &j->work_dir, &j->gc, &j->full, &j->connections,
                       &j->compress_level, &j->max_rate, &j->copy_to };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(name, names[i]))
            return slots[i];
    for (size_t i = 0; i < NKEEP; i++)
        if (!strcmp(name, keep_keys[i]))
            return &j->keep[i];
    return NULL;
}

static int on_section(struct runfile *f, const char *section)
{
    if (!strcmp(section, "defaults")) {
        f->cur = &f->defaults;
        return 1;
    }
    if (strncmp(section, "vm ", 3) != 0 || !section[3]) {
        snprintf(f->err, sizeof f->err, "unknown section [%s] (expected [vm NAME] or [defaults])",
                 section);
        return 0;
    }
    const char *name = section + 3;
    for (size_t i = 0; i < f->n; i++)
        if (!strcmp(f->jobs[i].name, name)) {
            snprintf(f->err, sizeof f->err, "section [vm %s] given twice", name);
            return 0;
        }
    if (VEC_RESERVE(f->jobs, f->n, f->cap, 8) < 0) {
        snprintf(f->err, sizeof f->err, "out of memory");
        return 0;
    }
    f->cur = &f->jobs[f->n++];
    memset(f->cur, 0, sizeof *f->cur);
    f->cur->name = strdup(name);
    return 1;
}

/* inih calls the handler per key only: a section starts with its first
 * key (a section without keys would be empty anyway; check_job refuses a
 * source without one). */
static int on_ini_key(void *user, const char *section, const char *name, const char *value)
{
    struct runfile *f = user;
    if (!section[0]) {
        snprintf(f->err, sizeof f->err, "key \"%s\" outside a section", name);
        return 0;
    }
    if (strcmp(section, f->section) != 0) {
        snprintf(f->section, sizeof f->section, "%s", section);
        if (!on_section(f, section))
            return 0;
    }
    struct job *j = f->cur;
    if (!strcmp(name, "disk") || !strcmp(name, "node")) {
        if (j == &f->defaults || j->ntargets == CLI_MAX_DISKS) {
            snprintf(f->err, sizeof f->err, "\"%s\" belongs in a [vm NAME] section (at most %d)",
                     name, CLI_MAX_DISKS);
            return 0;
        }
        j->targets[j->ntargets++] = strdup(value);
        if (!strcmp(name, "node"))
            j->node_keys = true;
        else
            j->disk_keys = true;
        return 1;
    }
    /* [defaults] also takes the repository settings of every command
     * (s3-endpoint, key-file, password-file, ...): for every source. */
    int sk = j == &f->defaults ? cli_store_config_key("run", name, value) : 0;
    if (sk > 0)
        return 1;
    if (sk < 0) {
        snprintf(f->err, sizeof f->err, "bad value \"%s\" for \"%s\"", value, name);
        return 0;
    }
    char **slot = job_key(j, name);
    if (!slot) {
        snprintf(f->err, sizeof f->err, "unknown key \"%s\" in section [%s]", name, section);
        return 0;
    }
    if (*slot) {
        snprintf(f->err, sizeof f->err, "key \"%s\" given twice in section [%s]", name, section);
        return 0;
    }
    *slot = strdup(value);
    return 1;
}

static void job_free(struct job *j)
{
    char **all[] = { &j->name, &j->repo, &j->libvirt, &j->connect, &j->qmp, &j->vm, &j->uri,
                     &j->bitmap, &j->disk, &j->work_dir, &j->gc, &j->full, &j->connections,
                     &j->compress_level, &j->max_rate, &j->copy_to };
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        free(*all[i]);
    for (size_t i = 0; i < NKEEP; i++)
        free(j->keep[i]);
    for (size_t i = 0; i < j->ntargets; i++)
        free(j->targets[i]);
    json_object_put(j->disks);
}

/* ---- Checking a section ---------------------------------------------------- */

static const char *inherit(const char *v, const char *d)
{
    return v ? v : d;
}

static int bad(const char *file, const struct job *j, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad(const char *file, const struct job *j, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s run: config %s, section [vm %s]: %s\n", cli_progname, file, j->name, msg);
    return -1;
}

static bool yes(const char *v)
{
    return v && (!strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcmp(v, "1") ||
                 !strcasecmp(v, "on"));
}

/* gc on the weekdays that value names: 1 today, 0 not today, -1 bad. */
static int gc_today(const char *value, int wday)
{
    static const char *const days[] = { "sun", "mon", "tue", "wed", "thu", "fri", "sat" };
    if (!value || !strcasecmp(value, "never") || !strcasecmp(value, "no"))
        return 0;
    if (!strcasecmp(value, "daily") || !strcasecmp(value, "always") || !strcasecmp(value, "yes"))
        return 1;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", value);
    int today = 0, any = 0;
    for (char *save, *t = strtok_r(buf, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        int d = -1;
        for (int k = 0; k < 7; k++)
            if (!strncasecmp(t, days[k], 3) && strlen(t) >= 3)
                d = k;
        if (d < 0)
            return -1;
        any = 1;
        today |= d == wday;
    }
    return any ? today : -1;
}

static int check_job(const char *file, struct job *j, const struct job *d)
{
    struct cli_source *s = &j->src;
    const char *v;

    memset(s, 0, sizeof *s);
    s->name = j->name;
    s->uri = inherit(j->uri, NULL);
    s->libvirt = j->libvirt;
    s->qmp = j->qmp;
    s->connect = inherit(j->connect, d->connect);
    s->bitmap = j->bitmap;
    s->workdir = inherit(j->work_dir, d->work_dir);
    s->vm = j->qmp ? inherit(j->vm, j->name) : j->vm;
    s->full = yes(inherit(j->full, d->full));
    for (size_t i = 0; i < j->ntargets; i++)
        s->disks[s->ndisks++] = j->targets[i];
    s->n_node_opts = j->node_keys ? (unsigned)j->ntargets : 0;
    s->n_disk_opts = j->disk_keys ? (unsigned)j->ntargets : 0;
    if (s->uri) {
        s->disk = j->ntargets ? j->targets[0] : j->name;
        s->n_disk_opts = 1;
        s->n_node_opts = j->node_keys;
    }
    if (!s->libvirt && s->connect == d->connect)
        s->connect = NULL;   /* a default for libvirt sources only */
    if (!inherit(j->repo, d->repo))
        return bad(file, j, "no repo (give it here or in [defaults])");
    if ((s->uri != NULL) + (s->libvirt != NULL) + (s->qmp != NULL) != 1)
        return bad(file, j, "give exactly one of libvirt =, qmp = and uri =");
    if (s->uri && j->ntargets > 1)
        return bad(file, j, "one disk = (the disk's name) with uri =");
    if (s->libvirt && j->node_keys)
        return bad(file, j, "node = is for qmp sources; name libvirt disks with disk =");
    if (s->qmp && j->disk_keys)
        return bad(file, j, "disk = is for libvirt sources; name QMP nodes with node =");
    if (!s->uri && s->bitmap)
        return bad(file, j, "bitmap = is for uri sources (VM checkpoints are nbdvault's own)");
    if (j->vm && !s->qmp)
        return bad(file, j, "vm = is for qmp sources");
    s->connections = AGENT_DEFAULT_CONNECTIONS;
    if ((v = inherit(j->connections, d->connections)) &&
        (cli_parse_unsigned(v, 64, &s->connections) < 0 || !s->connections))
        return bad(file, j, "bad connections \"%s\" (1 to 64)", v);
    s->compress_level = AGENT_DEFAULT_COMPRESS_LEVEL;
    if ((v = inherit(j->compress_level, d->compress_level)) &&
        (cli_parse_unsigned(v, 22, (unsigned *)&s->compress_level) < 0 || !s->compress_level))
        return bad(file, j, "bad compress-level \"%s\" (1 to 22)", v);
    if ((v = inherit(j->max_rate, d->max_rate)) &&
        (cli_parse_size(v, &s->max_rate) < 0 || !s->max_rate))
        return bad(file, j, "bad max-rate \"%s\" (bytes per second: 200M, 1G)", v);
    for (size_t i = 0; i < NKEEP; i++) {
        if (!(v = inherit(j->keep[i], d->keep[i])))
            continue;
        if (cli_parse_unsigned(v, 1000000, &j->keepv[i]) < 0)
            return bad(file, j, "bad %s \"%s\"", keep_keys[i], v);
        j->has_keep |= j->keepv[i] > 0;
    }
    if (gc_today(inherit(j->gc, d->gc), 0) < 0)
        return bad(file, j, "bad gc \"%s\" (never, daily, or weekdays: sun,wed)",
                   inherit(j->gc, d->gc));
    return 0;
}

static const char *job_repo(const struct job *j, const struct job *d)
{
    return inherit(j->repo, d->repo);
}

/* ---- Running ----------------------------------------------------------------- */

struct repo_slot {
    const char *path;
    int lock_fd;                  /* -1: not locked (error says why) */
    char error[1024];
    bool gc_due;
    bool any_ok;
};

struct run {
    struct runfile *f;
    struct repo_slot *repos;
    size_t nrepos;
    pthread_mutex_t lock;
    size_t next;                  /* the next job to take */
    bool dry_run;
};

static struct repo_slot *repo_of(struct run *R, const struct job *j)
{
    const char *p = job_repo(j, &R->f->defaults);
    for (size_t i = 0; i < R->nrepos; i++)
        if (!strcmp(R->repos[i].path, p))
            return &R->repos[i];
    return NULL;
}

static void prune_warn(void *opaque, const char *msg)
{
    log_msg(LOG_LEVEL_WARN, "%s", msg);
}

/* Applies the job's retention to the disks backed up this run. */
static int prune_disks(struct agent_repo *r, struct job *j)
{
    size_t n = json_object_array_length(j->disks);
    int ret = 0;
    for (size_t i = 0; i < n; i++) {
        struct json_object *o = json_object_array_get_idx(j->disks, i), *d, *e;
        if (json_object_object_get_ex(o, "error", &e) || !json_object_object_get_ex(o, "disk", &d))
            continue;
        struct agent_prune_opts po = {
            .disk = json_object_get_string(d),
            .keep_last = j->keepv[0], .keep_hourly = j->keepv[1], .keep_daily = j->keepv[2],
            .keep_weekly = j->keepv[3], .keep_monthly = j->keepv[4], .keep_yearly = j->keepv[5],
            .warn = prune_warn,
        };
        struct agent_prune_result pr;
        if (agent_prune(r, &po, &pr) < 0) {
            log_msg(LOG_LEVEL_ERROR, "%s: prune %s: %s", j->name, po.disk, error_msg());
            snprintf(j->error, sizeof j->error, "prune %s: %s", po.disk, error_msg());
            ret = -1;
            continue;
        }
        log_msg(LOG_LEVEL_INFO, "%s: prune %s: removed %u point(s), kept %u", j->name, po.disk,
                pr.removed, pr.kept);
        j->pruned += pr.removed;
        j->kept += pr.kept;
    }
    return ret;
}

static void run_job(struct run *R, struct job *j)
{
    struct repo_slot *rs = repo_of(R, j);
    double t0 = (double)time(NULL);
    double m0 = clock_mono_s();

    j->disks = json_object_new_array();
    if (rs->lock_fd < 0) {
        snprintf(j->error, sizeof j->error, "%s", rs->error);
        log_msg(LOG_LEVEL_ERROR, "%s: %s", j->name, j->error);
        return;
    }
    log_msg(LOG_LEVEL_INFO, "%s: backup into %s", j->name, rs->path);
    struct agent_repo *r = agent_repo_open(rs->path, true);
    if (!r) {
        snprintf(j->error, sizeof j->error, "%s", error_msg());
        log_msg(LOG_LEVEL_ERROR, "%s: %s", j->name, j->error);
        return;
    }
    j->ok = cli_backup_source(r, &j->src, true, j->disks, "run") == 0;
    if (!j->ok) {
        /* The first failure's message, for the summary. */
        size_t n = json_object_array_length(j->disks);
        for (size_t i = 0; i < n && !j->error[0]; i++) {
            struct json_object *e;
            if (json_object_object_get_ex(json_object_array_get_idx(j->disks, i), "error", &e))
                snprintf(j->error, sizeof j->error, "%s", json_object_get_string(e));
        }
        if (!j->error[0])
            snprintf(j->error, sizeof j->error, "backup failed");
    }
    /* The new points leave the host right after they commit. */
    const char *to = inherit(j->copy_to, R->f->defaults.copy_to);
    if (j->ok && to) {
        struct agent_copy_opts co = { .to = to };
        struct agent_copy_result cr;
        if (agent_copy(r, &co, &cr) < 0) {
            j->ok = false;
            snprintf(j->error, sizeof j->error, "copy to %s: %s", to, error_msg());
            log_msg(LOG_LEVEL_ERROR, "%s: %s", j->name, j->error);
        } else {
            log_msg(LOG_LEVEL_INFO, "%s: copied %u point(s) to %s (%llu new chunk(s))", j->name,
                    cr.copied, to, (unsigned long long)cr.chunks_new);
        }
    }
    if (j->has_keep && prune_disks(r, j) < 0)
        j->ok = false;
    agent_repo_close(r);
    j->seconds = clock_mono_s() - m0;
    (void)t0;
}

static void *worker(void *opaque)
{
    struct run *R = opaque;
    for (;;) {
        pthread_mutex_lock(&R->lock);
        struct job *j = NULL;
        while (R->next < R->f->n && !j) {
            j = &R->f->jobs[R->next++];
            if (!j->selected)
                j = NULL;
        }
        pthread_mutex_unlock(&R->lock);
        if (!j)
            return NULL;
        run_job(R, j);
    }
}

/* Opens and locks every repository the selected jobs name. */
static int open_repos(struct run *R, int wday)
{
    struct runfile *f = R->f;
    R->repos = calloc(f->n ? f->n : 1, sizeof *R->repos);
    if (!R->repos)
        return -1;
    for (size_t i = 0; i < f->n; i++) {
        struct job *j = &f->jobs[i];
        if (!j->selected)
            continue;
        struct repo_slot *rs = repo_of(R, j);
        if (!rs) {
            rs = &R->repos[R->nrepos++];
            rs->path = job_repo(j, &f->defaults);
            rs->lock_fd = -1;
            struct agent_repo *r = agent_repo_open(rs->path, true);
            if (r && (rs->lock_fd = agent_repo_run_lock(r)) < 0)
                snprintf(rs->error, sizeof rs->error, "%s", error_msg());
            else if (!r)
                snprintf(rs->error, sizeof rs->error, "%s", error_msg());
            agent_repo_close(r);
        }
        if (gc_today(inherit(j->gc, f->defaults.gc), wday) == 1)
            rs->gc_due = true;
    }
    return 0;
}

static int run_gc(struct repo_slot *rs)
{
    struct agent_repo *r = agent_repo_open(rs->path, false);
    struct agent_gc_result gr;
    struct agent_gc_opts go = { 0 };
    int ret = -1;

    if (r && agent_gc(r, &go, &gr) == 0) {
        char fr[32];
        cli_human_size(fr, sizeof fr, gr.bytes_freed);
        log_msg(LOG_LEVEL_INFO, "gc %s: %llu packs removed, %llu rewritten, %s freed", rs->path,
                (unsigned long long)gr.packs_removed, (unsigned long long)gr.packs_rewritten, fr);
        ret = 0;
    } else {
        log_msg(LOG_LEVEL_ERROR, "gc %s: %s", rs->path, error_msg());
        snprintf(rs->error, sizeof rs->error, "gc: %s", error_msg());
    }
    agent_repo_close(r);
    return ret;
}

/* ---- Output ------------------------------------------------------------------ */

static const char *source_text(const struct job *j, char *buf, size_t cap)
{
    const struct cli_source *s = &j->src;
    char disks[512] = "";
    size_t k = 0;
    for (size_t i = 0; i < s->ndisks && k < sizeof disks - 2; i++)
        k += (size_t)snprintf(disks + k, sizeof disks - k, "%s%s", i ? "," : "", s->disks[i]);
    if (s->libvirt)
        snprintf(buf, cap, "libvirt domain %s (%s)", s->libvirt, k ? disks : "every disk");
    else if (s->qmp)
        snprintf(buf, cap, "QMP %s as VM %s (%s)", s->qmp, s->vm, k ? disks : "every disk");
    else
        snprintf(buf, cap, "%s as disk %s%s%s", s->uri, s->disk, s->bitmap ? ", bitmap " : "",
                 s->bitmap ? s->bitmap : "");
    return buf;
}

static void print_plan(const struct run *R, int wday)
{
    for (size_t i = 0; i < R->f->n; i++) {
        const struct job *j = &R->f->jobs[i];
        char src[1024], keep[256] = "";
        size_t k = 0;
        if (!j->selected)
            continue;
        for (size_t r = 0; r < NKEEP; r++)
            if (j->keepv[r])
                k += (size_t)snprintf(keep + k, sizeof keep - k, " %s=%u", keep_keys[r], j->keepv[r]);
        int gc = gc_today(inherit(j->gc, R->f->defaults.gc), wday);
        printf("%s: would back up %s into %s%s; %s%s; gc %s\n", j->name,
               source_text(j, src, sizeof src), job_repo(j, &R->f->defaults),
               j->src.full ? " (full)" : "", j->has_keep ? "then prune" : "no retention rules",
               keep, gc ? "today" : "not today");
    }
}

static void job_totals(const struct job *j, uint64_t *rd, uint64_t *st, unsigned *full,
                       unsigned *inc)
{
    size_t n = json_object_array_length(j->disks);
    for (size_t i = 0; i < n; i++) {
        struct json_object *o = json_object_array_get_idx(j->disks, i), *v;
        if (json_object_object_get_ex(o, "error", &v))
            continue;
        if (json_object_object_get_ex(o, "bytes_read", &v))
            *rd += (uint64_t)json_object_get_int64(v);
        if (json_object_object_get_ex(o, "bytes_stored", &v))
            *st += (uint64_t)json_object_get_int64(v);
        if (json_object_object_get_ex(o, "kind", &v))
            (*(strcmp(json_object_get_string(v), "full") ? inc : full))++;
    }
}

static void print_summary(const struct run *R, bool json, double seconds)
{
    struct json_object *arr = json ? json_object_new_array() : NULL;
    unsigned ok = 0, failed = 0;
    uint64_t trd = 0, tst = 0;

    for (size_t i = 0; i < R->f->n; i++) {
        struct job *j = &R->f->jobs[i];
        if (!j->selected)
            continue;
        uint64_t rd = 0, st = 0;
        unsigned full = 0, inc = 0;
        job_totals(j, &rd, &st, &full, &inc);
        trd += rd;
        tst += st;
        j->ok ? ok++ : failed++;
        if (json) {
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, "name", json_object_new_string(j->name));
            json_object_object_add(o, "ok", json_object_new_boolean(j->ok));
            json_object_object_add(o, "error", j->error[0] ? json_object_new_string(j->error) : NULL);
            json_object_object_add(o, "repo", json_object_new_string(job_repo(j, &R->f->defaults)));
            json_object_object_add(o, "disks", json_object_get(j->disks));
            json_object_object_add(o, "pruned", json_object_new_int64(j->pruned));
            json_object_object_add(o, "seconds", json_object_new_double(j->seconds));
            json_object_array_add(arr, o);
            continue;
        }
        char r[32], s[32];
        cli_human_size(r, sizeof r, rd);
        cli_human_size(s, sizeof s, st);
        if (j->ok)
            printf("%s: ok: %u disk(s) (%u full, %u incremental), read %s, stored %s, "
                   "pruned %u point(s), %.1f s\n", j->name, full + inc, full, inc, r, s, j->pruned,
                   j->seconds);
        else
            printf("%s: FAILED: %s%s\n", j->name, j->error, full + inc ? " (other disks kept)" : "");
    }
    for (size_t i = 0; i < R->nrepos; i++)
        if (R->repos[i].error[0] && R->repos[i].lock_fd >= 0 && !json)
            printf("%s: FAILED: %s\n", R->repos[i].path, R->repos[i].error);
    if (json) {
        cli_print_json(arr);
        return;
    }
    char r[32], s[32];
    cli_human_size(r, sizeof r, trd);
    cli_human_size(s, sizeof s, tst);
    printf("total: %u source(s), %u succeeded, %u failed; read %s, stored %s, %.1f s\n",
           ok + failed, ok, failed, r, s, seconds);
}

/* ---- The command ---------------------------------------------------------------- */

static int load(const char *file, struct runfile *f, const char *const *only, size_t nonly)
{
    int r = ini_parse(file, on_ini_key, f);
    if (r == -1) {
        fprintf(stderr, "%s run: config %s: %s\n", cli_progname, file, strerror(errno));
        return -1;
    }
    if (r != 0) {
        fprintf(stderr, "%s run: config %s, line %d: %s\n", cli_progname, file, r,
                f->err[0] ? f->err : "syntax error");
        return -1;
    }
    if (f->n == 0) {
        fprintf(stderr, "%s run: config %s: no [vm NAME] section\n", cli_progname, file);
        return -1;
    }
    for (size_t i = 0; i < f->n; i++)
        if (check_job(file, &f->jobs[i], &f->defaults) < 0)
            return -1;
    for (size_t k = 0; k < nonly; k++) {
        size_t i;
        for (i = 0; i < f->n && strcmp(f->jobs[i].name, only[k]); i++)
            ;
        if (i == f->n) {
            fprintf(stderr, "%s run: --only %s: no section [vm %s] in %s\n", cli_progname,
                    only[k], only[k], file);
            return -1;
        }
        f->jobs[i].selected = true;
    }
    for (size_t i = 0; i < f->n && !nonly; i++)
        f->jobs[i].selected = true;
    return 0;
}

static int execute(struct run *R, unsigned jobs, bool json, int wday)
{
    double t0 = clock_mono_s();
    pthread_mutex_init(&R->lock, NULL);
    if (open_repos(R, wday) < 0)
        return cli_error("run", "out of memory");
    pthread_t tids[64];
    unsigned started = 0;
    for (; started < jobs; started++)
        if (pthread_create(&tids[started], NULL, worker, R) != 0)
            break;
    if (!started)
        worker(R);
    for (unsigned i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    bool gc_failed = false;
    for (size_t i = 0; i < R->nrepos; i++) {
        struct repo_slot *rs = &R->repos[i];
        if (rs->lock_fd >= 0 && rs->gc_due && run_gc(rs) < 0)
            gc_failed = true;
    }
    print_summary(R, json, clock_mono_s() - t0);
    bool all_ok = !gc_failed;
    for (size_t i = 0; i < R->f->n; i++)
        if (R->f->jobs[i].selected && !R->f->jobs[i].ok)
            all_ok = false;
    for (size_t i = 0; i < R->nrepos; i++)
        if (R->repos[i].lock_fd >= 0)
            close(R->repos[i].lock_fd);
    pthread_mutex_destroy(&R->lock);
    return all_ok ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

int cli_run(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "config", required_argument, NULL, 'C' },
        { "only", required_argument, NULL, 'o' },
        { "jobs", required_argument, NULL, 'J' },
        { "dry-run", no_argument, NULL, 'n' },
        { "syslog", no_argument, NULL, 's' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    const char *config = NULL, *only[64];
    size_t nonly = 0;
    unsigned jobs = 1;
    bool dry = false, use_syslog = false, json = false;
    int ch;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'C': config = optarg; break;
        case 'o':
            if (nonly == 64)
                return cli_usage_error("run", "at most 64 --only");
            only[nonly++] = optarg;
            break;
        case 'J':
            if (cli_parse_unsigned(optarg, 64, &jobs) < 0 || !jobs)
                return cli_usage_error("run", "bad --jobs \"%s\" (1 to 64)", optarg);
            break;
        case 'n': dry = true; break;
        case 's': use_syslog = true; break;
        case 'j': json = true; break;
        case 'h': fputs(run_help, stdout); return CLI_EXIT_OK;
        default: /* getopt said what is wrong */
            return cli_try_help("run");
        }
    }
    if (optind != argc)
        return cli_usage_error("run", "unexpected argument \"%s\"", argv[optind]);
    if (!config)
        return cli_usage_error("run", "--config FILE is required");

    struct runfile f = { 0 };
    struct run R = { .f = &f, .dry_run = dry };
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    int ret = CLI_EXIT_USAGE;
    if (load(config, &f, only, nonly) < 0)
        goto out;
    if (dry) {
        print_plan(&R, tm.tm_wday);
        ret = CLI_EXIT_OK;
        goto out;
    }
    log_setup("nbdvault run", LOG_LEVEL_INFO, true, use_syslog);
    cli_errors_to_log = true;
    ret = execute(&R, jobs, json, tm.tm_wday);
out:
    for (size_t i = 0; i < f.n; i++)
        job_free(&f.jobs[i]);
    job_free(&f.defaults);
    free(f.jobs);
    free(R.repos);
    return ret;
}
