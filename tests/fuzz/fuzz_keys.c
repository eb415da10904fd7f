/* fuzz_keys.c: the parsers of an encrypted repository's key material
 * (crypt/keys.c) on whatever a damaged or hostile repository or key file
 * could hold: a key file, a key slot.
 *
 * The sanitizers catch memory errors and leaks; the harness aborts when a
 * promise is broken: parse returns 0 or -1 with a message, what a key file
 * parses to formats back to a text that parses to the same key, and a
 * slot that parses keeps its Argon2id parameters in range.
 * Seeds: tests/fuzz/corpus/fuzz_keys (a key file and a slot).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "crypt/crypt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char id[33], again_id[33], *text;
    uint8_t master[CRYPT_KEY_LEN], again[CRYPT_KEY_LEN];
    struct crypt_slot_info info;

    int r = crypt_keyfile_parse((const char *)data, size, id, master);
    if (r != 0 && r != -1)
        abort();
    if (r < 0 && !error_msg()[0])
        abort();
    if (r == 0) {
        if (strlen(id) != 32 || crypt_keyfile_format(master, id, &text) != 0 ||
            crypt_keyfile_parse(text, strlen(text), again_id, again) != 0 || strcmp(id, again_id) ||
            memcmp(master, again, sizeof master))
            abort();
        free(text);
    }
    r = crypt_slot_info((const char *)data, size, &info);
    if (r != 0 && r != -1)
        abort();
    if (r == 0 && (info.kdf.t_cost < 1 || info.kdf.m_cost_kib < 8 || info.kdf.lanes < 1 ||
                   info.kdf.lanes > 16 || !memchr(info.label, 0, sizeof info.label)))
        abort();
    return 0;
}
