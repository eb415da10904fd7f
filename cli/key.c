/* key.c: `nbdvault key list|add|remove|export`: the key slots of an
 * encrypted repository. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/agent.h"
#include "cli/cli.h"
#include "common/error.h"

static const char key_help[] =
    "Usage: nbdvault key list   --repo DIR [--json]\n"
    "       nbdvault key add    --repo DIR [--label TEXT] [--new-password-file FILE]\n"
    "       nbdvault key remove --repo DIR --id ID [--force]\n"
    "       nbdvault key export --repo DIR [--output FILE]\n"
    "\n"
    "The key slots of an encrypted repository: each wraps its one master key\n"
    "under a passphrase (Argon2id).  Every action but list needs the key\n"
    "(--key-file, --password-file, NBDVAULT_PASSWORD or the terminal).\n"
    "\n"
    "  add     a slot for a new passphrase: the first line of --new-password-file,\n"
    "          else NBDVAULT_NEW_PASSWORD, else typed twice on the terminal\n"
    "  remove  a slot by its id (key list); the last one only with --force\n"
    "  export  the master key as a key file (a paper backup; --key-file opens the\n"
    "          repository with it): to stdout, or to --output FILE (created, 0600)\n"
    "\n"
    "Exit codes: 0 done, 1 failure (a wrong passphrase or key, ...), 2 bad usage.\n";

static int print_key(void *opaque, const struct agent_key_info *k)
{
    struct json_object *arr = opaque;
    char when[32] = "?";
    time_t t = (time_t)k->created;
    struct tm tm;

    if (k->created > 0 && gmtime_r(&t, &tm))
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    if (arr) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(k->id));
        json_object_object_add(o, "label", json_object_new_string(k->label));
        json_object_object_add(o, "host", json_object_new_string(k->host));
        json_object_object_add(o, "created", json_object_new_int64(k->created));
        json_object_object_add(o, "kdf", json_object_new_string("argon2id"));
        json_object_object_add(o, "kdf_t", json_object_new_int64(k->kdf_t));
        json_object_object_add(o, "kdf_m_kib", json_object_new_int64(k->kdf_m_kib));
        json_object_object_add(o, "damaged", json_object_new_boolean(k->damaged));
        json_object_array_add(arr, o);
    } else if (k->damaged) {
        printf("%-16s  DAMAGED (not a readable key slot)\n", k->id);
    } else {
        printf("%-16s  %-19s  %-16s  argon2id t=%u m=%uMiB  %s\n", k->id, when, k->host, k->kdf_t,
               k->kdf_m_kib / 1024, k->label);
    }
    return 0;
}

static char *new_passphrase(const char *file)
{
    if (file) {
        FILE *f = fopen(file, "r");
        char buf[1024];
        if (!f || !fgets(buf, sizeof buf, f)) {
            if (f)
                fclose(f);
            error_set(EINVAL, "--new-password-file %s: cannot read its first line", file);
            return NULL;
        }
        fclose(f);
        buf[strcspn(buf, "\r\n")] = 0;
        return strdup(buf);
    }
    if (getenv("NBDVAULT_NEW_PASSWORD"))
        return strdup(getenv("NBDVAULT_NEW_PASSWORD"));
    char *p = cli_ask_passphrase("the new key slot", true);
    if (!p)
        error_set(EINVAL, "no new passphrase (--new-password-file FILE, NBDVAULT_NEW_PASSWORD, "
                  "or a terminal)");
    return p;
}

static int do_action(const char *action, struct agent_repo *r, const char *id, const char *label,
                     const char *newpw, const char *output, bool force, bool json)
{
    if (!strcmp(action, "list")) {
        struct json_object *arr = json ? json_object_new_array() : NULL;
        int rc = agent_key_list(r, print_key, arr);
        if (rc == 0 && arr)
            cli_print_json(arr);
        else if (arr)
            json_object_put(arr);
        return rc < 0 ? cli_error("key", "%s", error_msg()) : CLI_EXIT_OK;
    }
    if (!strcmp(action, "add")) {
        char *p = new_passphrase(newpw), nid[17];
        int rc = p ? agent_key_add(r, p, label, nid) : -1;
        if (p) {
            memset(p, 0, strlen(p));
            free(p);
        }
        if (rc < 0)
            return cli_error("key", "add: %s", error_msg());
        printf("added key %s\n", nid);
        return CLI_EXIT_OK;
    }
    if (!strcmp(action, "remove")) {
        if (agent_key_remove(r, id, force) < 0)
            return cli_error("key", "remove: %s", error_msg());
        printf("removed key %s\n", id);
        return CLI_EXIT_OK;
    }
    char *text;
    if (agent_key_export(r, &text) < 0)
        return cli_error("key", "export: %s", error_msg());
    int ret = CLI_EXIT_OK;
    if (!output) {
        fputs(text, stdout);
    } else {
        FILE *f = NULL;
        int fd = open(output, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || !(f = fdopen(fd, "w")) || fputs(text, f) < 0 || fclose(f) != 0)
            ret = cli_error("key", "export: %s: %s", output, strerror(errno));
        else
            fprintf(stderr, "wrote the master key to %s\n", output);
    }
    memset(text, 0, strlen(text));
    free(text);
    return ret;
}

int cli_key(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "repo", required_argument, NULL, 'r' },
        { "config", required_argument, NULL, 'C' },
        { "id", required_argument, NULL, 'i' },
        { "label", required_argument, NULL, 'l' },
        { "new-password-file", required_argument, NULL, 'n' },
        { "output", required_argument, NULL, 'o' },
        { "force", no_argument, NULL, 'f' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { 0 },
    };
    const char *repo = NULL, *config = NULL, *id = NULL, *label = NULL, *newpw = NULL, *output = NULL;
    bool json = false, force = false;
    int ch;

    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': repo = optarg; break;
        case 'C': config = optarg; break;
        case 'i': id = optarg; break;
        case 'l': label = optarg; break;
        case 'n': newpw = optarg; break;
        case 'o': output = optarg; break;
        case 'f': force = true; break;
        case 'j': json = true; break;
        case 'h': fputs(key_help, stdout); return CLI_EXIT_OK;
        default: return cli_try_help("key");
        }
    }
    if (optind >= argc)
        return cli_usage_error("key", "which action? (list, add, remove, export)");
    const char *action = argv[optind];
    if (strcmp(action, "list") && strcmp(action, "add") && strcmp(action, "remove") && strcmp(action, "export"))
        return cli_usage_error("key", "unknown action \"%s\" (list, add, remove, export)", action);
    if (optind + 1 != argc)
        return cli_usage_error("key", "unexpected argument \"%s\"", argv[optind + 1]);
    if (!strcmp(action, "remove") && !id)
        return cli_usage_error("key", "remove: --id ID is required (see `nbdvault key list`)");
    if (!strcmp(action, "list"))
        cli_keys_optional(true);   /* the slots are listed without the key */
    int code;
    struct agent_repo *r = cli_open_repo("key", repo, config, &code);
    if (!r)
        return code;
    int ret = do_action(action, r, id, label, newpw, output, force, json);
    agent_repo_close(r);
    return ret;
}
