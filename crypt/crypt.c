/* crypt.c: keys, AES-256-GCM and keyed chunk ids (gnutls). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include "common/error.h"
#include "crypt/crypt.h"

int crypt_random(void *buf, size_t len)
{
    if (gnutls_rnd(GNUTLS_RND_KEY, buf, len) < 0) {
        error_set(EIO, "gnutls: no random numbers");
        return -1;
    }
    return 0;
}

/* One purpose's key: HKDF-SHA256 of the master key (RFC 5869, no salt),
 * its info naming the purpose. */
static int derive(const uint8_t master[CRYPT_KEY_LEN], const char *purpose, uint8_t out[CRYPT_KEY_LEN])
{
    uint8_t prk[32];
    gnutls_datum_t key = { (unsigned char *)master, CRYPT_KEY_LEN };
    gnutls_datum_t salt = { (unsigned char *)"", 0 };
    gnutls_datum_t info = { (unsigned char *)purpose, (unsigned)strlen(purpose) };

    if (gnutls_hkdf_extract(GNUTLS_MAC_SHA256, &key, &salt, prk) < 0) {
        error_set(EIO, "gnutls: HKDF failed");
        return -1;
    }
    gnutls_datum_t pk = { prk, sizeof prk };
    int r = gnutls_hkdf_expand(GNUTLS_MAC_SHA256, &pk, &info, out, CRYPT_KEY_LEN);
    gnutls_memset(prk, 0, sizeof prk);
    if (r < 0) {
        error_set(EIO, "gnutls: HKDF failed");
        return -1;
    }
    return 0;
}

int crypt_keys_derive(const uint8_t master[CRYPT_KEY_LEN], struct crypt_keys *k)
{
    memcpy(k->master, master, CRYPT_KEY_LEN);
    if (derive(master, "nbdvault v1 chunk encryption", k->chunk) < 0 ||
        derive(master, "nbdvault v1 chunk id", k->id) < 0 ||
        derive(master, "nbdvault v1 metadata encryption", k->meta) < 0 ||
        derive(master, "nbdvault v1 key check", k->check) < 0) {
        crypt_keys_wipe(k);
        return -1;
    }
    return 0;
}

int crypt_keys_new(struct crypt_keys *k)
{
    uint8_t m[CRYPT_KEY_LEN];
    int r = crypt_random(m, sizeof m) < 0 ? -1 : crypt_keys_derive(m, k);
    gnutls_memset(m, 0, sizeof m);
    return r;
}

void crypt_keys_wipe(struct crypt_keys *k)
{
    gnutls_memset(k, 0, sizeof *k);
}

void crypt_chunk_id(const struct crypt_keys *k, const void *data, size_t len, uint8_t out[CRYPT_ID_LEN])
{
    (void)gnutls_hmac_fast(GNUTLS_MAC_SHA256, k->id, CRYPT_KEY_LEN, data, len, out);
}

static int aead(gnutls_aead_cipher_hd_t *h, const uint8_t key[CRYPT_KEY_LEN])
{
    gnutls_datum_t kd = { (unsigned char *)key, CRYPT_KEY_LEN };
    if (gnutls_aead_cipher_init(h, GNUTLS_CIPHER_AES_256_GCM, &kd) < 0) {
        error_set(EIO, "gnutls: AES-256-GCM is not available");
        return -1;
    }
    return 0;
}

int crypt_seal(const uint8_t key[CRYPT_KEY_LEN], const void *aad, size_t aad_len, const void *in,
               size_t len, void *out)
{
    gnutls_aead_cipher_hd_t h;
    uint8_t *o = out;
    size_t clen = len + CRYPT_TAG_LEN;

    if (crypt_random(o, CRYPT_NONCE_LEN) < 0 || aead(&h, key) < 0)
        return -1;
    int r = gnutls_aead_cipher_encrypt(h, o, CRYPT_NONCE_LEN, aad, aad_len, CRYPT_TAG_LEN, in, len,
                                       o + CRYPT_NONCE_LEN, &clen);
    gnutls_aead_cipher_deinit(h);
    if (r < 0 || clen != len + CRYPT_TAG_LEN) {
        error_set(EIO, "gnutls: AES-256-GCM: %s", gnutls_strerror(r));
        return -1;
    }
    return 0;
}

int crypt_open(const uint8_t key[CRYPT_KEY_LEN], const void *aad, size_t aad_len, const void *in,
               size_t len, void *out)
{
    gnutls_aead_cipher_hd_t h;
    const uint8_t *i = in;

    if (len < CRYPT_OVERHEAD) {
        error_set(EBADMSG, "sealed data of %zu bytes is shorter than its nonce and tag", len);
        return -1;
    }
    size_t plen = len - CRYPT_OVERHEAD;
    if (aead(&h, key) < 0)
        return -1;
    int r = gnutls_aead_cipher_decrypt(h, i, CRYPT_NONCE_LEN, aad, aad_len, CRYPT_TAG_LEN,
                                       i + CRYPT_NONCE_LEN, len - CRYPT_NONCE_LEN, out, &plen);
    gnutls_aead_cipher_deinit(h);
    if (r == GNUTLS_E_DECRYPTION_FAILED) {
        error_set(EBADMSG, "authentication failed (tampered, or another key)");
        return -1;
    }
    if (r < 0 || plen != len - CRYPT_OVERHEAD) {
        error_set(EIO, "gnutls: AES-256-GCM: %s", gnutls_strerror(r));
        return -1;
    }
    return 0;
}

void crypt_key_check(const struct crypt_keys *k, const char *repo_id, char out[65])
{
    uint8_t d[32];
    (void)gnutls_hmac_fast(GNUTLS_MAC_SHA256, k->check, CRYPT_KEY_LEN, repo_id, strlen(repo_id), d);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}
