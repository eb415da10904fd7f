/* restore.c: `nbdvault restore`. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "common/error.h"
#include "common/log.h"

static const char restore_help[] =
    "Usage: nbdvault restore --repo DIR --disk NAME [--point ID]\n"
    "                        (--output FILE | --to URI) [--connections N] [--json]\n"
    "       nbdvault restore --repo DIR (--libvirt DOMAIN | --vm NAME) [--point ID]\n"
    "                        --output-dir DIR [--format raw|qcow2] [--json]\n"
    "\n"
    "Restores a disk as it was at a restore point (the newest by default):\n"
    "to a raw, sparse file of the disk's exact size, or to an NBD export that is\n"
    "at least as large (data written, zeros as WRITE_ZEROES, flushed at the end).\n"
    "Every chunk is checked against its id; a damaged one stops the restore and\n"
    "no output file is left behind.\n"
    "\n"
    "With --libvirt DOMAIN (or --vm NAME for a QMP-backed-up VM) every disk of one\n"
    "backup run of the VM is restored into --output-dir as TARGET.raw (sparse) or,\n"
    "with --format qcow2, TARGET.qcow2 (converted by qemu-img convert), ready to\n"
    "define a VM on.  --point names any point of the run; by default the newest\n"
    "run that backed up every disk.\n"
    "\n"
    "  --repo DIR         the repository\n"
    "  --disk NAME        the disk\n"
    "  --point ID         the restore point (see 'nbdvault list')\n"
    "  --output FILE      write a raw image file\n"
    "  --to URI           write to an NBD export\n"
    "  --libvirt DOMAIN   restore every disk of a VM (disks DOMAIN/TARGET)\n"
    "  --vm NAME          the same, for any VM name (QMP: NAME/NODE)\n"
    "  --output-dir DIR   where the VM's disks go (created if missing)\n"
    "  --format FMT       raw (default) or qcow2\n"
    "  --connections N    NBD connections when the server allows multi-conn\n"
    "  --config FILE      defaults from FILE\n"
    "  --json             print the result as JSON\n"
    "  --help             this text\n";

static void restore_warn(void *opaque, const char *msg)
{
    log_msg(LOG_LEVEL_WARN, "%s", msg);
}

/* qemu-img convert -f raw -O qcow2 SRC DST: 0 or -1 (printed). */
static int to_qcow2(const char *src, const char *dst)
{
    pid_t pid = fork();
    if (pid < 0)
        return cli_error("restore", "fork: %s", strerror(errno)), -1;
    if (pid == 0) {
        execlp("qemu-img", "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", src, dst,
               (char *)NULL);
        fprintf(stderr, "nbdvault restore: qemu-img: %s\n", strerror(errno));
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        unlink(dst);
        return cli_error("restore", "qemu-img convert %s to qcow2 %s failed (%s %d)", src, dst,
                         WIFEXITED(st) ? "exit" : "signal",
                         WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st)), -1;
    }
    return 0;
}

static int restore_vm(struct agent_repo *r, const char *vm, int64_t point, const char *dir,
                      bool qcow2, unsigned conns, bool json)
{
    struct agent_point *pts;
    size_t n;
    if (agent_vm_run_points(r, vm, point, &pts, &n) < 0)
        return cli_error("restore", "%s", error_msg());
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        free(pts);
        return cli_error("restore", "%s: %s", dir, strerror(errno));
    }
    struct json_object *arr = json ? json_object_new_array() : NULL;
    int ret = CLI_EXIT_OK;
    for (size_t i = 0; i < n && ret == CLI_EXIT_OK; i++) {
        char target[256], raw[4096], out[4096];
        snprintf(target, sizeof target, "%s", pts[i].disk + strlen(vm) + 1);
        for (char *c = target; *c; c++)
            if (*c == '/')
                *c = '_';
        snprintf(out, sizeof out, "%s/%s.%s", dir, target, qcow2 ? "qcow2" : "raw");
        snprintf(raw, sizeof raw, qcow2 ? "%s/.%s.raw.tmp" : "%s", qcow2 ? dir : out, target);
        struct cli_progress prog = { .what = pts[i].disk };
        struct agent_restore_opts o = {
            .disk = pts[i].disk, .point = pts[i].id, .output = raw, .connections = conns,
            .progress = cli_progress_wanted(json) ? cli_progress : NULL, .opaque = &prog,
            .warn = restore_warn,
        };
        struct agent_restore_result res;
        if (agent_restore(r, &o, &res) < 0) {
            ret = cli_error("restore", "disk %s: %s", pts[i].disk, error_msg());
            break;
        }
        if (qcow2) {
            int c = to_qcow2(raw, out);
            unlink(raw);
            if (c < 0) {
                ret = CLI_EXIT_FAIL;
                break;
            }
        }
        if (json) {
            struct json_object *j = json_object_new_object();
            json_object_object_add(j, "point", json_object_new_int64(res.point));
            json_object_object_add(j, "disk", json_object_new_string(pts[i].disk));
            json_object_object_add(j, "output", json_object_new_string(out));
            json_object_object_add(j, "disk_size", json_object_new_int64((int64_t)res.disk_size));
            json_object_object_add(j, "bytes_written", json_object_new_int64((int64_t)res.bytes_written));
            json_object_object_add(j, "seconds", json_object_new_double(res.seconds));
            json_object_array_add(arr, j);
        } else {
            char w[32];
            cli_human_size(w, sizeof w, res.bytes_written);
            printf("restored point %lld of disk %s to %s: %s of data, %.1f s\n",
                   (long long)res.point, pts[i].disk, out, w, res.seconds);
        }
    }
    if (json && ret == CLI_EXIT_OK)
        cli_print_json(arr);
    else
        json_object_put(arr);
    free(pts);
    return ret;
}

int cli_restore(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repo", required_argument, NULL, 'r' },
        { "disk", required_argument, NULL, 'd' },
        { "point", required_argument, NULL, 'p' },
        { "output", required_argument, NULL, 'o' },
        { "to", required_argument, NULL, 't' },
        { "libvirt", required_argument, NULL, 'L' },
        { "vm", required_argument, NULL, 'V' },
        { "output-dir", required_argument, NULL, 'O' },
        { "format", required_argument, NULL, 'F' },
        { "connections", required_argument, NULL, 'n' },
        { "config", required_argument, NULL, 'C' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    const char *repo = NULL, *config = NULL, *point = NULL, *conns = NULL;
    const char *vm = NULL, *outdir = NULL, *format = NULL;
    struct agent_restore_opts o = { 0 };
    bool json = false;
    int ch;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': repo = optarg; break;
        case 'd': o.disk = optarg; break;
        case 'p': point = optarg; break;
        case 'o': o.output = optarg; break;
        case 't': o.to_uri = optarg; break;
        case 'L': case 'V': vm = optarg; break;
        case 'O': outdir = optarg; break;
        case 'F': format = optarg; break;
        case 'n': conns = optarg; break;
        case 'C': config = optarg; break;
        case 'j': json = true; break;
        case 'h': fputs(restore_help, stdout); return CLI_EXIT_OK;
        default: /* getopt said what is wrong */
            return cli_try_help("restore");
        }
    }
    if (optind != argc)
        return cli_usage_error("restore", "unexpected argument \"%s\"", argv[optind]);
    if (vm && (o.disk || o.output || o.to_uri))
        return cli_usage_error("restore", "--libvirt/--vm restore every disk of the VM into "
                                          "--output-dir: no --disk, --output or --to");
    if (vm && !outdir)
        return cli_usage_error("restore", "--output-dir DIR is required with --libvirt/--vm");
    if (!vm && (outdir || format))
        return cli_usage_error("restore", "--output-dir and --format are for --libvirt/--vm");
    if (format && strcmp(format, "raw") && strcmp(format, "qcow2"))
        return cli_usage_error("restore", "bad --format \"%s\" (raw or qcow2)", format);
    if (!vm && !o.disk)
        return cli_usage_error("restore", "--disk NAME is required");
    if (!vm && !o.output == !o.to_uri)
        return cli_usage_error("restore", "give exactly one of --output FILE and --to URI");
    if (point) {
        char *end;
        o.point = strtoll(point, &end, 10);
        if (*end || o.point <= 0)
            return cli_usage_error("restore", "bad --point \"%s\"", point);
    }
    if (conns && (cli_parse_unsigned(conns, 64, &o.connections) < 0 || !o.connections))
        return cli_usage_error("restore", "bad --connections \"%s\" (1 to 64)", conns);
    int code;
    struct agent_repo *r = cli_open_repo("restore", repo, config, &code);
    if (!r)
        return code;
    if (vm) {
        int ret = restore_vm(r, vm, o.point, outdir, format && !strcmp(format, "qcow2"),
                             o.connections, json);
        agent_repo_close(r);
        return ret;
    }
    struct cli_progress prog = { .what = o.disk };
    o.progress = cli_progress_wanted(json) ? cli_progress : NULL;
    o.warn = restore_warn;
    o.opaque = &prog;
    struct agent_restore_result res;
    int ret = CLI_EXIT_OK;
    if (agent_restore(r, &o, &res) < 0) {
        ret = cli_error("restore", "disk %s: %s", o.disk, error_msg());
    } else if (json) {
        struct json_object *j = json_object_new_object();
        json_object_object_add(j, "point", json_object_new_int64(res.point));
        json_object_object_add(j, "disk", json_object_new_string(o.disk));
        json_object_object_add(j, "disk_size", json_object_new_int64((int64_t)res.disk_size));
        json_object_object_add(j, "bytes_written", json_object_new_int64((int64_t)res.bytes_written));
        json_object_object_add(j, "bytes_zero", json_object_new_int64((int64_t)res.bytes_zero));
        json_object_object_add(j, "seconds", json_object_new_double(res.seconds));
        json_object_object_add(j, "retries", json_object_new_int64((int64_t)res.retries));
        cli_print_json(j);
    } else {
        char w[32];
        cli_human_size(w, sizeof w, res.bytes_written);
        printf("restored point %lld of disk %s to %s: %s of data, %.1f s\n", (long long)res.point,
               o.disk, o.output ? o.output : o.to_uri, w, res.seconds);
        if (res.retries)
            printf("  %llu object store request(s) retried\n", (unsigned long long)res.retries);
    }
    agent_repo_close(r);
    return ret;
}
