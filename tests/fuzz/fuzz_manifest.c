/* fuzz_manifest.c: the manifest decoder (agent/manifest.c) on whatever a
 * damaged or hostile bucket could hold under points/.
 *
 * The sanitizers catch memory errors and leaks; the harness aborts when a
 * promise of the API is broken: decode returns 0 or -1, a failure names
 * the object, and what decodes satisfies the rules a catalog import relies
 * on (every index in range, runs in order inside the disk) and encodes
 * back to an object that decodes to the same point.
 * Seeds: tests/fuzz/make-manifest-corpus.py.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/manifest.h"
#include "common/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const struct manifest *m)
{
    uint64_t cells = (m->pt.disk_size + m->chunk_size - 1) / m->chunk_size, end = 0;

    if (!m->chunk_size || (m->chunk_size & (m->chunk_size - 1)))
        abort();
    for (size_t i = 0; i < m->nchunks; i++)
        if ((size_t)m->chunks[i].pack_id >= m->npacks || m->chunks[i].plain_len > m->chunk_size)
            abort();
    for (size_t i = 0; i < m->nruns; i++) {
        const struct manifest_run *r = &m->runs[i];
        if (!r->count || r->first < end || r->first + r->count > cells ||
            (r->chunk != MANIFEST_ZERO && r->chunk >= m->nchunks))
            abort();
        end = r->first + r->count;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct manifest m, again;
    void *buf;
    size_t len;

    int r = manifest_decode(data, size, "fuzz", &m);
    if (r != 0 && r != -1)
        abort();
    if (r < 0) {
        if (!strstr(error_msg(), "fuzz"))
            abort();
        return 0;
    }
    check(&m);
    if (manifest_encode(&m, &buf, &len) != 0 || manifest_decode(buf, len, "again", &again) != 0)
        abort();
    if (again.nruns != m.nruns || again.nchunks != m.nchunks || strcmp(again.uid, m.uid))
        abort();
    free(buf);
    manifest_free(&again);
    manifest_free(&m);
    return 0;
}
