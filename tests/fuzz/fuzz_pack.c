/* fuzz_pack.c: the pack parser (agent/packfmt.c) on whatever a damaged or
 * hostile pack file could hold.
 *
 * Input: byte 0 bit 0 chooses whether each chunk's id is checked (the
 * decompressing path); the rest is the pack.  The sanitizers catch memory
 * errors and leaks; the harness aborts when a promise of the API is
 * broken: the walk returns 0 or -1, a failure has a message naming the
 * pack, every entry handed to the callback lies inside the input with its
 * stored bytes, and a pack that parses whole handed over entries in order.
 * Seeds: tests/fuzz/make-pack-corpus.py.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/packfmt.h"
#include "common/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct seen {
    size_t len;
    uint64_t last_end;
    size_t n;
};

static int entry_cb(void *opaque, const struct pack_entry *e)
{
    struct seen *s = opaque;
    uint64_t end = e->offset + PACK_ENTRY_HDR_LEN + e->stored_len;

    if (e->offset < PACK_FILE_HDR_LEN || end > s->len || e->offset < s->last_end)
        abort();
    if (e->stored_len > PACK_ENTRY_MAX || e->plain_len > PACK_ENTRY_MAX)
        abort();
    s->last_end = end;
    s->n++;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct seen s = { 0 };
    int r;

    if (size < 1)
        return 0;
    s.len = size - 1;
    r = pack_parse_buffer("fuzz.pack", data + 1, size - 1, data[0] & 1, entry_cb, &s);
    if (r != 0 && r != -1)
        abort();
    if (r == -1 && !strstr(error_msg(), "fuzz.pack"))
        abort();
    return 0;
}
