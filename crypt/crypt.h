/* crypt/crypt.h: the cryptography of an encrypted repository, pure (no
 * I/O but the system's random numbers).  docs/FORMAT.md, "Encryption",
 * describes what it writes.
 *
 * A repository's master key (32 random bytes) never leaves the host in
 * the clear.  Keys for each purpose are derived from it with HKDF-SHA256:
 * chunks and metadata are sealed with AES-256-GCM under a fresh random
 * 96-bit nonce each (nonce | ciphertext | tag), and a chunk's id is the
 * HMAC-SHA256 of its plaintext under a key of its own, so that equal
 * plaintext dedups inside a repository and shows nothing across them.
 *
 * The master key is kept in the repository in key slots, each wrapping it
 * under a key derived from a passphrase with Argon2id (libargon2), or only
 * outside it, in a key file.
 *
 * Errors: -1 with common/error.h's message; EBADMSG when an
 * authentication tag does not match (tampered or wrong key), EACCES for a
 * passphrase or key that does not open the repository.
 */
#ifndef CRYPT_CRYPT_H
#define CRYPT_CRYPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CRYPT_KEY_LEN 32
#define CRYPT_NONCE_LEN 12
#define CRYPT_TAG_LEN 16
#define CRYPT_OVERHEAD (CRYPT_NONCE_LEN + CRYPT_TAG_LEN)
#define CRYPT_ID_LEN 32

/* The keys of one repository, derived from its master key. */
struct crypt_keys {
    uint8_t master[CRYPT_KEY_LEN];
    uint8_t chunk[CRYPT_KEY_LEN];  /* AES-256-GCM of chunks */
    uint8_t id[CRYPT_KEY_LEN];     /* HMAC-SHA256 chunk ids */
    uint8_t meta[CRYPT_KEY_LEN];   /* AES-256-GCM of manifests */
    uint8_t check[CRYPT_KEY_LEN];  /* the key check value */
};

int crypt_random(void *buf, size_t len);
/* A new master key and its derived keys. */
int crypt_keys_new(struct crypt_keys *k);
int crypt_keys_derive(const uint8_t master[CRYPT_KEY_LEN], struct crypt_keys *k);
void crypt_keys_wipe(struct crypt_keys *k);

/* A chunk's id: HMAC-SHA256 of its plaintext under k->id. */
void crypt_chunk_id(const struct crypt_keys *k, const void *data, size_t len, uint8_t out[CRYPT_ID_LEN]);

/* AES-256-GCM: out[len + CRYPT_OVERHEAD] = nonce | ciphertext | tag of
 * in[len], authenticating aad too. */
int crypt_seal(const uint8_t key[CRYPT_KEY_LEN], const void *aad, size_t aad_len, const void *in,
               size_t len, void *out);
/* The reverse: in[len] (len >= CRYPT_OVERHEAD) into out[len -
 * CRYPT_OVERHEAD]; EBADMSG when the tag does not match. */
int crypt_open(const uint8_t key[CRYPT_KEY_LEN], const void *aad, size_t aad_len, const void *in,
               size_t len, void *out);

/* The value that tells whether a master key is the repository's (64 hex
 * digits and NUL): HMAC of the repository id under k->check. */
void crypt_key_check(const struct crypt_keys *k, const char *repo_id, char out[65]);

/* ---- Key slots: the master key wrapped under a passphrase ---------------- */

struct crypt_kdf {
    uint32_t t_cost;              /* Argon2id passes */
    uint32_t m_cost_kib;          /* memory */
    uint32_t lanes;
};
/* The default: 3 passes over 64 MiB, 1 lane (about a quarter of a second
 * here); NBDVAULT_KDF_MEMORY_KIB lowers the memory for tests. */
void crypt_kdf_default(struct crypt_kdf *kdf);

/* A slot (JSON text, free() it) wrapping master for repository repo_id
 * under passphrase; label names it in `key list`. */
int crypt_slot_make(const uint8_t master[CRYPT_KEY_LEN], const char *repo_id, const char *pass,
                    size_t pass_len, const struct crypt_kdf *kdf, const char *label, char **json);
/* Unwraps a slot: 0, -1 with EACCES (the passphrase does not open it) or
 * EINVAL (the slot is damaged or not for this repository). */
int crypt_slot_open(const char *json, size_t len, const char *repo_id, const char *pass,
                    size_t pass_len, uint8_t master[CRYPT_KEY_LEN]);
struct crypt_slot_info {
    char label[128], host[128];
    int64_t created;
    struct crypt_kdf kdf;
};
int crypt_slot_info(const char *json, size_t len, struct crypt_slot_info *info);

/* ---- Key files: the master key outside the repository -------------------- */

/* The text of a key file (and of `key export`'s paper backup): the
 * repository id and the master key in hex, with a checksum per line. */
int crypt_keyfile_format(const uint8_t master[CRYPT_KEY_LEN], const char *repo_id, char **text);
/* Reads that text back (the id into repo_id[33]); EINVAL names what is
 * wrong with it. */
int crypt_keyfile_parse(const char *text, size_t len, char repo_id[33], uint8_t master[CRYPT_KEY_LEN]);

#endif
