/* keys.c: encrypted repositories: the descriptor that says a repository is
 * encrypted, its key slots (objects "keys/<id>" of its store), where a
 * command's key comes from, and `nbdvault key`'s operations.  The
 * cryptography itself is crypt/crypt.h's. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "agent/internal.h"
#include "agent/keys.h"
#include "common/error.h"
#include "common/vec.h"
#include "crypt/crypt.h"
#include "store/store.h"

#define SLOTS "keys/"

static struct agent_key_source source;

void agent_set_key_source(const struct agent_key_source *ks)
{
    source = ks ? *ks : (struct agent_key_source){ 0 };
}

const struct agent_key_source *agent_key_source(void)
{
    return &source;
}

bool agent_key_given(const struct agent_key_source *ks)
{
    return ks->key_file || ks->password_file || ks->password || (ks->use_env && getenv("NBDVAULT_PASSWORD"));
}

/* ---- The descriptor ------------------------------------------------------ */

char *keys_descriptor(const char *repo_id, const struct crypt_keys *k)
{
    char check[65];
    crypt_key_check(k, repo_id, check);
    struct json_object *j = json_object_new_object();
    json_object_object_add(j, "version", json_object_new_int(1));
    json_object_object_add(j, "cipher", json_object_new_string("AES-256-GCM"));
    json_object_object_add(j, "chunk_id", json_object_new_string("HMAC-SHA256"));
    json_object_object_add(j, "kdf", json_object_new_string("Argon2id"));
    json_object_object_add(j, "id", json_object_new_string(repo_id));
    json_object_object_add(j, "key_check", json_object_new_string(check));
    char *s = strdup(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
    json_object_put(j);
    if (!s)
        error_set(ENOMEM, "out of memory");
    return s;
}

static int descriptor_parse(const char *repo, const char *text, char id[33], char check[65])
{
    struct json_object *j = json_tokener_parse(text), *v;
    int ok = j && json_object_object_get_ex(j, "version", &v) && json_object_get_int(v) == 1 &&
             json_object_object_get_ex(j, "id", &v) && strlen(json_object_get_string(v)) == 32;
    if (ok)
        snprintf(id, 33, "%s", json_object_get_string(v));
    ok = ok && json_object_object_get_ex(j, "key_check", &v) && strlen(json_object_get_string(v)) == 64;
    if (ok)
        snprintf(check, 65, "%s", json_object_get_string(v));
    json_object_put(j);
    if (!ok) {
        error_set(EINVAL, "%s: its encryption descriptor is damaged or newer than this nbdvault", repo);
        return -1;
    }
    return 0;
}

/* ---- Finding the master key ------------------------------------------------ */

static int read_small(const char *path, const char *what, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    char buf[4097];
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);

    if (fd >= 0)
        close(fd);
    if (n < 0) {
        error_set(errno, "%s %s: %s", what, path, strerror(errno));
        return -1;
    }
    buf[n] = 0;
    *len = (size_t)n;
    if (!(*out = malloc((size_t)n + 1))) {
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    memcpy(*out, buf, (size_t)n + 1);
    memset(buf, 0, sizeof buf);
    return 0;
}

static int from_key_file(struct agent_repo *r, const char *id, uint8_t master[CRYPT_KEY_LEN])
{
    char *text, fid[33];
    size_t len;

    if (read_small(source.key_file, "key file", &text, &len) < 0)
        return -1;
    int p = crypt_keyfile_parse(text, len, fid, master);
    memset(text, 0, len);
    free(text);
    if (p < 0) {
        error_prefix("key file %s: ", source.key_file);
        return -1;
    }
    if (strcmp(fid, id) != 0) {
        error_set(EACCES, "key file %s is the key of repository %s, not of %s (id %s)", source.key_file,
                  fid, r->dir, id);
        return -1;
    }
    return 0;
}

/* The passphrase: the first line of --password-file, NBDVAULT_PASSWORD, or
 * typed; NULL with the error set when there is none. */
static char *passphrase(struct agent_repo *r, size_t *len)
{
    char *p = NULL;

    if (source.password_file) {
        if (read_small(source.password_file, "password file", &p, len) < 0)
            return NULL;
        p[strcspn(p, "\r\n")] = 0;
    } else if (source.password) {
        p = strdup(source.password);
    } else if (source.use_env && getenv("NBDVAULT_PASSWORD")) {
        p = strdup(getenv("NBDVAULT_PASSWORD"));
    } else if (source.ask) {
        p = source.ask(r->dir, false);
    }
    if (!p) {
        error_set(EACCES, "repository %s is encrypted: its key is needed (--key-file FILE, "
                  "--password-file FILE, NBDVAULT_PASSWORD, or a terminal to type it on)", r->dir);
        return NULL;
    }
    *len = strlen(p);
    return p;
}

struct slots {
    char (*key)[STORE_KEY_MAX];
    size_t n, cap;
};

static int list_slot(void *opaque, const char *key, uint64_t size, bool partial)
{
    struct slots *s = opaque;
    if (partial || size > 65536)
        return 0;
    if (VEC_RESERVE(s->key, s->n, s->cap, 8) < 0)
        return -1;
    snprintf(s->key[s->n++], sizeof *s->key, "%s", key);
    return 0;
}

static int from_slots(struct agent_repo *r, const char *id, const char *pass, size_t plen,
                      uint8_t master[CRYPT_KEY_LEN])
{
    struct slots s = { 0 };
    char damaged[300] = "";
    int ret = -1;

    if (store_list(r->store, SLOTS, list_slot, &s) < 0)
        goto out;
    for (size_t i = 0; i < s.n && ret < 0; i++) {
        void *buf;
        size_t len;
        if (store_get_all(r->store, s.key[i], &buf, &len) < 0)
            goto out;
        ret = crypt_slot_open(buf, len, id, pass, plen, master);
        if (ret < 0 && error_errno() == EINVAL)
            snprintf(damaged, sizeof damaged, " (key slot %s is damaged)", s.key[i]);
        free(buf);
    }
    if (ret < 0 && s.n)
        error_set(EACCES, "the passphrase opens none of the %zu key slot(s) of %s%s", s.n, r->dir,
                  damaged);
    else if (ret < 0)
        error_set(EACCES, "repository %s has no key slot: open it with its key file (--key-file)",
                  r->dir);
out:
    free(s.key);
    return ret;
}

int keys_load(struct agent_repo *r, const char *descriptor)
{
    char id[33], check[65], got[65];
    uint8_t master[CRYPT_KEY_LEN];
    int ret = -1;

    if (descriptor_parse(r->dir, descriptor, id, check) < 0)
        return -1;
    r->encrypted = true;
    if (!agent_key_given(&source) && source.optional)
        return 0;                  /* without the key: verify checks what it can */
    if (source.key_file) {
        if (from_key_file(r, id, master) < 0)
            return -1;
    } else {
        size_t plen;
        char *pass = passphrase(r, &plen);
        if (!pass)
            return -1;
        int f = from_slots(r, id, pass, plen, master);
        memset(pass, 0, plen);
        free(pass);
        if (f < 0)
            return -1;
    }
    if (!(r->keys = malloc(sizeof *r->keys))) {
        error_set(ENOMEM, "out of memory");
        goto out;
    }
    if (crypt_keys_derive(master, r->keys) < 0)
        goto out;
    crypt_key_check(r->keys, id, got);
    if (strcmp(got, check) != 0) {
        error_set(EACCES, "%s does not open repository %s (its key check differs)",
                  source.key_file ? source.key_file : "the key", r->dir);
        goto out;
    }
    snprintf(r->repo_id, sizeof r->repo_id, "%s", id);
    ret = 0;
out:
    memset(master, 0, sizeof master);
    if (ret < 0 && r->keys) {
        crypt_keys_wipe(r->keys);
        free(r->keys);
        r->keys = NULL;
    }
    return ret;
}

void keys_free(struct agent_repo *r)
{
    if (r->keys) {
        crypt_keys_wipe(r->keys);
        free(r->keys);
        r->keys = NULL;
    }
}

/* ---- Creating: the first slot or the key file ------------------------------ */

static int write_new_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    size_t len = strlen(text);
    if (fd < 0) {
        error_set(errno, "key file %s: %s", path, strerror(errno));
        return -1;
    }
    if (write(fd, text, len) != (ssize_t)len || fsync(fd) < 0) {
        error_set(errno ? errno : EIO, "key file %s: %s", path, strerror(errno ? errno : EIO));
        close(fd);
        unlink(path);
        return -1;
    }
    close(fd);
    return 0;
}

int keys_add_slot(struct store *st, const char *repo_id, const struct crypt_keys *k, const char *pass,
                  size_t plen, const char *label, char slot_id[17])
{
    struct crypt_kdf kdf;
    char key[STORE_KEY_MAX], *json;
    uint8_t rnd[8];

    crypt_kdf_default(&kdf);
    if (crypt_random(rnd, sizeof rnd) < 0)
        return -1;
    for (int i = 0; i < 8; i++)
        snprintf(slot_id + 2 * i, 3, "%02x", rnd[i]);
    snprintf(key, sizeof key, SLOTS "%s", slot_id);
    if (crypt_slot_make(k->master, repo_id, pass, plen, &kdf, label, &json) < 0)
        return -1;
    int r = store_put_all(st, key, json, strlen(json));
    free(json);
    return r;
}

char *keys_create(struct store *st, const char *dir, const char *repo_id, const char *key_file)
{
    struct crypt_keys k;
    char *desc = NULL, slot[17];

    if (crypt_keys_new(&k) < 0)
        return NULL;
    if (key_file) {
        char *text;
        if (crypt_keyfile_format(k.master, repo_id, &text) < 0)
            goto out;
        int w = write_new_file(key_file, text);
        memset(text, 0, strlen(text));
        free(text);
        if (w < 0)
            goto out;
    } else {
        struct agent_repo tmp = { .dir = (char *)dir };
        size_t plen;
        char *pass = source.ask && !source.password_file && !(source.use_env && getenv("NBDVAULT_PASSWORD"))
                         ? source.ask(dir, true) : passphrase(&tmp, &plen);
        if (!pass) {
            error_set(EACCES, "an encrypted repository needs a passphrase (--password-file FILE, "
                      "NBDVAULT_PASSWORD, a terminal) or --key-file FILE");
            goto out;
        }
        plen = strlen(pass);
        int a = plen ? keys_add_slot(st, repo_id, &k, pass, plen, "first", slot) : -1;
        if (!plen)
            error_set(EINVAL, "the passphrase is empty");
        memset(pass, 0, plen);
        free(pass);
        if (a < 0)
            goto out;
    }
    desc = keys_descriptor(repo_id, &k);
out:
    crypt_keys_wipe(&k);
    return desc;
}

/* ---- `nbdvault key` ----------------------------------------------------------- */

static int need_keys(struct agent_repo *r)
{
    if (!r->encrypted) {
        error_set(EINVAL, "repository %s is not encrypted (it has no keys)", r->dir);
        return -1;
    }
    if (!r->keys) {
        error_set(EACCES, "repository %s is encrypted: its key is needed", r->dir);
        return -1;
    }
    return 0;
}

int agent_key_list(struct agent_repo *r, int (*fn)(void *opaque, const struct agent_key_info *k),
                   void *opaque)
{
    struct slots s = { 0 };
    int ret = -1;

    if (!r->encrypted) {
        error_set(EINVAL, "repository %s is not encrypted (it has no keys)", r->dir);
        return -1;
    }
    if (store_list(r->store, SLOTS, list_slot, &s) < 0)
        goto out;
    ret = 0;
    for (size_t i = 0; i < s.n && ret == 0; i++) {
        struct agent_key_info ki = { 0 };
        struct crypt_slot_info si;
        void *buf;
        size_t len;
        if (store_get_all(r->store, s.key[i], &buf, &len) < 0) {
            ret = -1;
            break;
        }
        snprintf(ki.id, sizeof ki.id, "%s", s.key[i] + strlen(SLOTS));
        if (crypt_slot_info(buf, len, &si) == 0) {
            snprintf(ki.label, sizeof ki.label, "%s", si.label);
            snprintf(ki.host, sizeof ki.host, "%s", si.host);
            ki.created = si.created;
            ki.kdf_t = si.kdf.t_cost;
            ki.kdf_m_kib = si.kdf.m_cost_kib;
            ki.kdf_p = si.kdf.lanes;
        } else {
            ki.damaged = true;
        }
        free(buf);
        ret = fn(opaque, &ki);
    }
out:
    free(s.key);
    return ret;
}

int agent_key_add(struct agent_repo *r, const char *pass, const char *label, char id[17])
{
    if (need_keys(r) < 0)
        return -1;
    if (!pass || !*pass) {
        error_set(EINVAL, "the new passphrase is empty");
        return -1;
    }
    return keys_add_slot(r->store, r->repo_id, r->keys, pass, strlen(pass), label, id);
}

static int count_slot(void *opaque, const struct agent_key_info *k)
{
    (*(size_t *)opaque)++;
    return 0;
}

int agent_key_remove(struct agent_repo *r, const char *id, bool force)
{
    char key[STORE_KEY_MAX];
    uint64_t size;
    size_t n = 0;

    if (need_keys(r) < 0)
        return -1;
    if (strlen(id) != 16 || strspn(id, "0123456789abcdef") != 16) {
        error_set(EINVAL, "\"%s\" is not a key id (16 hex digits, as `nbdvault key list` shows)", id);
        return -1;
    }
    snprintf(key, sizeof key, SLOTS "%s", id);
    if (store_stat(r->store, key, &size) < 0) {
        if (error_errno() == ENOENT)
            error_set(ENOENT, "repository %s has no key %s", r->dir, id);
        return -1;
    }
    if (agent_key_list(r, count_slot, &n) < 0)
        return -1;
    if (n <= 1 && !force) {
        error_set(EBUSY, "key %s is the last key slot of %s: without it only a key file opens the "
                  "repository (save one with `nbdvault key export`, then --force)", id, r->dir);
        return -1;
    }
    return store_remove(r->store, key);
}

int agent_key_export(struct agent_repo *r, char **text)
{
    *text = NULL;
    if (need_keys(r) < 0)
        return -1;
    return crypt_keyfile_format(r->keys->master, r->repo_id, text);
}
