/* keys.c: key slots (Argon2id, libargon2) and key files. */
#include <argon2.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <json-c/json.h>

#include "common/error.h"
#include "crypt/crypt.h"

#define SALT_LEN 16
#define WRAPPED_LEN (CRYPT_KEY_LEN + CRYPT_OVERHEAD)

static void to_hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* Hex digits into out[n], skipping blanks; 0 when exactly n bytes came. */
static int from_hex(const char *s, uint8_t *out, size_t n)
{
    size_t got = 0;
    int hi = -1;

    for (; *s; s++) {
        if (*s == ' ' || *s == '\t' || *s == '-')
            continue;
        int v = isdigit((unsigned char)*s) ? *s - '0'
              : (*s >= 'a' && *s <= 'f') ? *s - 'a' + 10
              : (*s >= 'A' && *s <= 'F') ? *s - 'A' + 10 : -1;
        if (v < 0 || got == n)
            return -1;
        if (hi < 0) {
            hi = v;
        } else {
            out[got++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
    }
    return got == n && hi < 0 ? 0 : -1;
}

void crypt_kdf_default(struct crypt_kdf *kdf)
{
    const char *m = getenv("NBDVAULT_KDF_MEMORY_KIB");   /* tests: a faster KDF */
    kdf->t_cost = 3;
    kdf->m_cost_kib = m && atoi(m) >= 8 ? (uint32_t)atoi(m) : 64 * 1024;
    kdf->lanes = 1;
}

/* The key that wraps the master key in a slot. */
static int wrap_key(const char *pass, size_t pass_len, const uint8_t salt[SALT_LEN],
                    const struct crypt_kdf *kdf, uint8_t out[CRYPT_KEY_LEN])
{
    if (kdf->t_cost < 1 || kdf->t_cost > 100 || kdf->m_cost_kib < 8 || kdf->m_cost_kib > (4u << 20) ||
        kdf->lanes < 1 || kdf->lanes > 16) {
        error_set(EINVAL, "key slot: Argon2id parameters out of range (t %u, m %u KiB, p %u)",
                  kdf->t_cost, kdf->m_cost_kib, kdf->lanes);
        return -1;
    }
    int r = argon2id_hash_raw(kdf->t_cost, kdf->m_cost_kib, kdf->lanes, pass, pass_len, salt,
                              SALT_LEN, out, CRYPT_KEY_LEN);
    if (r != ARGON2_OK) {
        error_set(r == ARGON2_MEMORY_ALLOCATION_ERROR ? ENOMEM : EINVAL, "Argon2id: %s",
                  argon2_error_message(r));
        return -1;
    }
    return 0;
}

static void slot_aad(const char *repo_id, char *out, size_t cap)
{
    snprintf(out, cap, "nbdvault key slot v1 %s", repo_id);
}

int crypt_slot_make(const uint8_t master[CRYPT_KEY_LEN], const char *repo_id, const char *pass,
                    size_t pass_len, const struct crypt_kdf *kdf, const char *label, char **json)
{
    uint8_t salt[SALT_LEN], wk[CRYPT_KEY_LEN], wrapped[WRAPPED_LEN];
    char aad[128], hs[2 * SALT_LEN + 1], hw[2 * WRAPPED_LEN + 1], host[128] = "";
    int ret = -1;

    *json = NULL;
    slot_aad(repo_id, aad, sizeof aad);
    if (crypt_random(salt, sizeof salt) < 0 || wrap_key(pass, pass_len, salt, kdf, wk) < 0 ||
        crypt_seal(wk, aad, strlen(aad), master, CRYPT_KEY_LEN, wrapped) < 0)
        goto out;
    to_hex(salt, sizeof salt, hs);
    to_hex(wrapped, sizeof wrapped, hw);
    gethostname(host, sizeof host - 1);
    struct json_object *j = json_object_new_object();
    json_object_object_add(j, "version", json_object_new_int(1));
    json_object_object_add(j, "kdf", json_object_new_string("argon2id"));
    json_object_object_add(j, "t", json_object_new_int64(kdf->t_cost));
    json_object_object_add(j, "m_kib", json_object_new_int64(kdf->m_cost_kib));
    json_object_object_add(j, "p", json_object_new_int64(kdf->lanes));
    json_object_object_add(j, "salt", json_object_new_string(hs));
    json_object_object_add(j, "wrapped", json_object_new_string(hw));
    json_object_object_add(j, "label", json_object_new_string(label ? label : ""));
    json_object_object_add(j, "host", json_object_new_string(host));
    json_object_object_add(j, "created", json_object_new_int64((int64_t)time(NULL)));
    *json = strdup(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(j);
    if (!*json)
        error_set(ENOMEM, "out of memory");
    else
        ret = 0;
out:
    gnutls_memset(wk, 0, sizeof wk);
    return ret;
}

/* The fields of a slot; EINVAL when one is missing or malformed. */
struct slot {
    struct crypt_slot_info info;
    uint8_t salt[SALT_LEN], wrapped[WRAPPED_LEN];
};

static const char *jstr(struct json_object *j, const char *k)
{
    struct json_object *v;
    return json_object_object_get_ex(j, k, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v) : NULL;
}

static int64_t jint(struct json_object *j, const char *k)
{
    struct json_object *v;
    return json_object_object_get_ex(j, k, &v) && json_object_is_type(v, json_type_int)
               ? json_object_get_int64(v) : -1;
}

static int slot_parse(const char *text, size_t len, struct slot *s)
{
    char *t = strndup(text, len);
    struct json_object *j = t ? json_tokener_parse(t) : NULL;
    int ret = -1;

    free(t);
    memset(s, 0, sizeof *s);
    if (!j || !json_object_is_type(j, json_type_object))
        goto out;
    const char *kdf = jstr(j, "kdf"), *salt = jstr(j, "salt"), *w = jstr(j, "wrapped");
    int64_t tc = jint(j, "t"), m = jint(j, "m_kib"), p = jint(j, "p");
    if (jint(j, "version") != 1 || !kdf || strcmp(kdf, "argon2id") || !salt || !w || tc < 1 ||
        tc > 100 || m < 8 || m > (4 << 20) || p < 1 || p > 16 ||
        from_hex(salt, s->salt, SALT_LEN) < 0 || from_hex(w, s->wrapped, WRAPPED_LEN) < 0)
        goto out;
    s->info.kdf = (struct crypt_kdf){ (uint32_t)tc, (uint32_t)m, (uint32_t)p };
    snprintf(s->info.label, sizeof s->info.label, "%s", jstr(j, "label") ? jstr(j, "label") : "");
    snprintf(s->info.host, sizeof s->info.host, "%s", jstr(j, "host") ? jstr(j, "host") : "");
    s->info.created = jint(j, "created");
    ret = 0;
out:
    json_object_put(j);
    if (ret < 0)
        error_set(EINVAL, "the key slot is damaged (not a version 1 Argon2id slot)");
    return ret;
}

int crypt_slot_info(const char *json, size_t len, struct crypt_slot_info *info)
{
    struct slot s;
    if (slot_parse(json, len, &s) < 0)
        return -1;
    *info = s.info;
    return 0;
}

int crypt_slot_open(const char *json, size_t len, const char *repo_id, const char *pass,
                    size_t pass_len, uint8_t master[CRYPT_KEY_LEN])
{
    struct slot s;
    uint8_t wk[CRYPT_KEY_LEN];
    char aad[128];
    int ret = -1;

    if (slot_parse(json, len, &s) < 0)
        return -1;
    slot_aad(repo_id, aad, sizeof aad);
    if (wrap_key(pass, pass_len, s.salt, &s.info.kdf, wk) < 0)
        goto out;
    if (crypt_open(wk, aad, strlen(aad), s.wrapped, WRAPPED_LEN, master) < 0) {
        if (error_errno() == EBADMSG)
            error_set(EACCES, "the passphrase does not open this key slot");
        goto out;
    }
    ret = 0;
out:
    gnutls_memset(wk, 0, sizeof wk);
    return ret;
}

/* ---- Key files ------------------------------------------------------------ */

#define KEYFILE_MAGIC "nbdvault key file v1"

/* The checksum line: the first 4 bytes of SHA-256 over the id and the key. */
static void keyfile_check(const uint8_t master[CRYPT_KEY_LEN], const char *repo_id, char out[9])
{
    uint8_t buf[64 + CRYPT_KEY_LEN], d[32];
    size_t n = strlen(repo_id) < 64 ? strlen(repo_id) : 64;

    memcpy(buf, repo_id, n);
    memcpy(buf + n, master, CRYPT_KEY_LEN);
    gnutls_hash_fast(GNUTLS_DIG_SHA256, buf, n + CRYPT_KEY_LEN, d);
    gnutls_memset(buf, 0, sizeof buf);
    to_hex(d, 4, out);
}

int crypt_keyfile_format(const uint8_t master[CRYPT_KEY_LEN], const char *repo_id, char **text)
{
    char hex[2 * CRYPT_KEY_LEN + 1], check[9];

    to_hex(master, CRYPT_KEY_LEN, hex);
    keyfile_check(master, repo_id, check);
    int n = asprintf(text,
                     KEYFILE_MAGIC "\n"
                     "# The master key of an nbdvault repository.  Whoever holds this file can\n"
                     "# read every backup in it; without it (or a passphrase of one of its key\n"
                     "# slots) nobody can.  Keep it off the backed-up host, e.g. on paper.\n"
                     "repository %s\n"
                     "key %.16s %.16s %.16s %.16s\n"
                     "check %s\n",
                     repo_id, hex, hex + 16, hex + 32, hex + 48, check);
    gnutls_memset(hex, 0, sizeof hex);
    if (n < 0) {
        *text = NULL;
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    return 0;
}

/* One "word value" line of a key file into its slot of *got. */
static int keyfile_line(char *line, char repo_id[33], uint8_t master[CRYPT_KEY_LEN], char check[9],
                        unsigned *got)
{
    char *sp = strchr(line, ' ');
    if (!sp)
        return -1;
    *sp++ = 0;
    if (!strcmp(line, "repository") && strlen(sp) == 32 && !(*got & 1)) {
        memcpy(repo_id, sp, 33);
        *got |= 1;
    } else if (!strcmp(line, "key") && !(*got & 2) && from_hex(sp, master, CRYPT_KEY_LEN) == 0) {
        *got |= 2;
    } else if (!strcmp(line, "check") && strlen(sp) == 8 && !(*got & 4)) {
        memcpy(check, sp, 9);
        *got |= 4;
    } else {
        return -1;
    }
    return 0;
}

int crypt_keyfile_parse(const char *text, size_t len, char repo_id[33], uint8_t master[CRYPT_KEY_LEN])
{
    size_t tl = strnlen(text, len);
    char *t = strndup(text, tl), *save = NULL, check[9] = "", want[9];
    unsigned got = 0, lineno = 0;
    int ret = -1;

    if (!t) {
        error_set(ENOMEM, "out of memory");
        return -1;
    }
    for (char *line = strtok_r(t, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        size_t n = strlen(line);
        while (n && (line[n - 1] == '\r' || line[n - 1] == ' '))
            line[--n] = 0;
        if (lineno++ == 0) {
            if (strcmp(line, KEYFILE_MAGIC) != 0) {
                error_set(EINVAL, "not an nbdvault key file (its first line is not \"" KEYFILE_MAGIC "\")");
                goto out;
            }
            continue;
        }
        if (!n || line[0] == '#')
            continue;
        if (keyfile_line(line, repo_id, master, check, &got) < 0) {
            error_set(EINVAL, "key file line %u is not \"repository\", \"key\" or \"check\" as written", lineno);
            goto out;
        }
    }
    if (got != 7) {
        error_set(EINVAL, "the key file lacks its %s line", !(got & 1) ? "repository" : !(got & 2) ? "key" : "check");
        goto out;
    }
    keyfile_check(master, repo_id, want);
    if (strcmp(want, check) != 0) {
        error_set(EINVAL, "the key file's checksum does not match its key (a mistyped digit?)");
        goto out;
    }
    ret = 0;
out:
    if (ret < 0)
        gnutls_memset(master, 0, CRYPT_KEY_LEN);
    gnutls_memset(t, 0, tl);
    free(t);
    return ret;
}
