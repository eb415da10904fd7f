/* test_crypt.c: the cryptography of an encrypted repository (crypt/) and
 * sealed chunks (agent/chunk.c): what is sealed opens to the same bytes,
 * and any change to the bytes, their context, the passphrase, the slot or
 * the key file is refused, naming what. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "agent/chunk.h"
#include "common/error.h"
#include "crypt/crypt.h"

#define UNUSED __attribute__((unused))
#define ID "0123456789abcdef0123456789abcdef"

static void expect_error(int r, int err, const char *word)
{
    if (r != -1)
        fail_msg("expected a failure, got %d", r);
    if (error_errno() != err)
        fail_msg("errno %d, expected %d; message \"%s\"", error_errno(), err, error_msg());
    if (word && !strstr(error_msg(), word))
        fail_msg("error \"%s\" does not mention \"%s\"", error_msg(), word);
}

static void test_seal_open(void **state UNUSED)
{
    struct crypt_keys k;
    uint8_t in[1000], sealed[1000 + CRYPT_OVERHEAD], out[1000], again[sizeof sealed];

    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (uint8_t)(i * 7);
    assert_int_equal(crypt_keys_new(&k), 0);
    assert_int_equal(crypt_seal(k.meta, "aad", 3, in, sizeof in, sealed), 0);
    assert_int_equal(crypt_open(k.meta, "aad", 3, sealed, sizeof sealed, out), 0);
    assert_memory_equal(in, out, sizeof in);
    /* A fresh nonce each time: the same plaintext seals differently. */
    assert_int_equal(crypt_seal(k.meta, "aad", 3, in, sizeof in, again), 0);
    assert_memory_not_equal(sealed, again, sizeof sealed);
    /* No part can change: ciphertext, nonce, tag, context, key. */
    size_t at[] = { 0, CRYPT_NONCE_LEN + 10, sizeof sealed - 1 };
    for (size_t i = 0; i < 3; i++) {
        sealed[at[i]] ^= 1;
        expect_error(crypt_open(k.meta, "aad", 3, sealed, sizeof sealed, out), EBADMSG, "authentication");
        sealed[at[i]] ^= 1;
    }
    expect_error(crypt_open(k.meta, "aaD", 3, sealed, sizeof sealed, out), EBADMSG, NULL);
    expect_error(crypt_open(k.chunk, "aad", 3, sealed, sizeof sealed, out), EBADMSG, NULL);
    expect_error(crypt_open(k.meta, "aad", 3, sealed, CRYPT_OVERHEAD - 1, out), EBADMSG, "shorter");
}

static void test_ids(void **state UNUSED)
{
    struct crypt_keys a, b;
    uint8_t ia[32], ia2[32], ib[32], plain[32];
    const char data[] = "the same cell content";

    assert_int_equal(crypt_keys_new(&a), 0);
    assert_int_equal(crypt_keys_new(&b), 0);
    chunk_id(&a, data, sizeof data, ia);
    chunk_id(&a, data, sizeof data, ia2);
    chunk_id(&b, data, sizeof data, ib);
    chunk_id(NULL, data, sizeof data, plain);
    assert_memory_equal(ia, ia2, 32);          /* dedup inside a repository */
    assert_memory_not_equal(ia, ib, 32);       /* nothing shows across them */
    assert_memory_not_equal(ia, plain, 32);    /* nor against the plain SHA-256 */
    /* The same master key derives the same keys. */
    struct crypt_keys c;
    assert_int_equal(crypt_keys_derive(a.master, &c), 0);
    assert_memory_equal(&a, &c, sizeof a);
    char ca[65], cb[65];
    crypt_key_check(&a, ID, ca);
    crypt_key_check(&b, ID, cb);
    assert_string_not_equal(ca, cb);
}

static void test_slots(void **state UNUSED)
{
    struct crypt_keys k;
    struct crypt_kdf kdf = { 1, 8192, 1 };
    struct crypt_slot_info info;
    uint8_t m[CRYPT_KEY_LEN];
    char *json;

    assert_int_equal(crypt_keys_new(&k), 0);
    assert_int_equal(crypt_slot_make(k.master, ID, "pass word", 9, &kdf, "laptop", &json), 0);
    assert_null(strstr(json, "pass word"));
    assert_int_equal(crypt_slot_open(json, strlen(json), ID, "pass word", 9, m), 0);
    assert_memory_equal(m, k.master, sizeof m);
    assert_int_equal(crypt_slot_info(json, strlen(json), &info), 0);
    assert_string_equal(info.label, "laptop");
    assert_int_equal(info.kdf.m_cost_kib, 8192);
    expect_error(crypt_slot_open(json, strlen(json), ID, "pass wore", 9, m), EACCES, "passphrase");
    /* Another repository's slot does not open (its id is authenticated). */
    expect_error(crypt_slot_open(json, strlen(json), "f123456789abcdef0123456789abcdef", "pass word", 9, m),
                 EACCES, NULL);
    /* One digit of the wrapped key changed. */
    char *w = strstr(json, "\"wrapped\"");
    assert_non_null(w);
    w = strchr(w + 10, '"') + 5;
    *w = *w == '0' ? '1' : '0';
    expect_error(crypt_slot_open(json, strlen(json), ID, "pass word", 9, m), EACCES, NULL);
    expect_error(crypt_slot_open("{\"version\":1}", 13, ID, "pass word", 9, m), EINVAL, "damaged");
    free(json);
}

static void test_keyfile(void **state UNUSED)
{
    struct crypt_keys k;
    uint8_t m[CRYPT_KEY_LEN];
    char id[33], *text;

    assert_int_equal(crypt_keys_new(&k), 0);
    assert_int_equal(crypt_keyfile_format(k.master, ID, &text), 0);
    assert_int_equal(crypt_keyfile_parse(text, strlen(text), id, m), 0);
    assert_string_equal(id, ID);
    assert_memory_equal(m, k.master, sizeof m);
    char *digit = strstr(text, "\nkey ") + 6;
    *digit = *digit == '0' ? '1' : '0';
    expect_error(crypt_keyfile_parse(text, strlen(text), id, m), EINVAL, "checksum");
    expect_error(crypt_keyfile_parse("hello\n", 6, id, m), EINVAL, "not an nbdvault key file");
    const char *nokey = "nbdvault key file v1\nrepository " ID "\ncheck 00000000\n";
    expect_error(crypt_keyfile_parse(nokey, strlen(nokey), id, m), EINVAL, "key line");
    free(text);
}

static void test_sealed_chunk(void **state UNUSED)
{
    struct crypt_keys k;
    uint8_t plain[4096], coded[8192], sealed[8192 + CRYPT_OVERHEAD], out[4096], id[32];
    const void *stored;
    size_t len;
    uint8_t codec;
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_DCtx *dc = ZSTD_createDCtx();

    memset(plain, 'x', sizeof plain);
    memcpy(plain, "known text", 10);
    assert_int_equal(crypt_keys_new(&k), 0);
    chunk_id(&k, plain, sizeof plain, id);
    assert_int_equal(chunk_compress(cc, 1, plain, sizeof plain, coded, sizeof coded, &stored, &len, &codec), 0);
    assert_int_equal(codec, CHUNK_CODEC_ZSTD);
    assert_int_equal(chunk_seal(&k, id, &codec, sizeof plain, stored, len, sealed), 0);
    assert_int_equal(codec, CHUNK_CODEC_ZSTD | CHUNK_CODEC_SEALED);
    size_t slen = len + CRYPT_OVERHEAD;
    uint32_t crc = chunk_crc(sealed, slen);
    assert_int_equal(chunk_decode_check(dc, &k, codec, sealed, slen, crc, out, sizeof out, id, true), 0);
    assert_memory_equal(out, plain, sizeof plain);
    /* Without the key: refused, not decoded. */
    expect_error(chunk_decode_check(dc, NULL, codec, sealed, slen, crc, out, sizeof out, id, true), EACCES,
                 "encrypted");
    /* A byte changed and its CRC made to match: the seal catches it. */
    sealed[20] ^= 1;
    expect_error(chunk_decode_check(dc, &k, codec, sealed, slen, chunk_crc(sealed, slen), out, sizeof out,
                                    id, true), EIO, "seal does not hold");
    /* A byte changed with the CRC left as it was: with the key the seal
     * names it (the tag covers every stored byte, so no CRC is computed);
     * without the key the CRC does. */
    expect_error(chunk_decode_check(dc, &k, codec, sealed, slen, crc, out, sizeof out, id, true), EIO,
                 "seal does not hold");
    expect_error(chunk_decode_check(dc, NULL, codec, sealed, slen, crc, out, sizeof out, id, true), EIO,
                 "CRC mismatch");
    sealed[20] ^= 1;
    /* The entry's fields are sealed with it: another id, length or codec. */
    uint8_t other[32];
    memcpy(other, id, 32);
    other[0] ^= 1;
    expect_error(chunk_decode_check(dc, &k, codec, sealed, slen, crc, out, sizeof out, other, false), EIO,
                 "seal does not hold");
    expect_error(chunk_decode_check(dc, &k, CHUNK_CODEC_RAW | CHUNK_CODEC_SEALED, sealed, slen, crc, out,
                                    sizeof out, id, false), EIO, "seal does not hold");
    ZSTD_freeCCtx(cc);
    ZSTD_freeDCtx(dc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seal_open),
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_slots),
        cmocka_unit_test(test_keyfile),
        cmocka_unit_test(test_sealed_chunk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
