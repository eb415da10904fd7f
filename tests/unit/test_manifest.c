/* test_manifest.c: a point's manifest (agent/manifest.c): what is encoded
 * decodes to the same point, and damage of any kind is refused with the
 * object's name. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "agent/manifest.h"
#include "common/error.h"

#define UNUSED __attribute__((unused))

static void sample(struct manifest *m)
{
    memset(m, 0, sizeof *m);
    snprintf(m->uid, sizeof m->uid, "20261206T120000Z-0123456789abcdef");
    snprintf(m->parent_uid, sizeof m->parent_uid, "20261205T120000Z-fedcba9876543210");
    m->gen = 3;
    m->chunk_size = 65536;
    snprintf(m->host, sizeof m->host, "host1");
    snprintf(m->pt.disk, sizeof m->pt.disk, "vm1/vda");
    m->pt.full = false;
    m->pt.started = 1796500000.25;
    m->pt.finished = 1796500009.5;
    m->pt.disk_size = 10 * 65536 + 100;
    snprintf(m->pt.source_uri, sizeof m->pt.source_uri, "nbd+unix:///vda?socket=/run/s");
    snprintf(m->pt.bitmap, sizeof m->pt.bitmap, "b0");
    snprintf(m->pt.source_kind, sizeof m->pt.source_kind, "libvirt");
    m->pt.bytes_read = 12345;
    m->pt.chunks_new = 2;
    assert_int_equal(manifest_add_pack(m, "ab/abcdef.pack", 1000000), 0);
    assert_int_equal(manifest_add_pack(m, "cd/cdef01.pack", 2000000), 0);
    struct catalog_chunk c = { 0 };
    for (int i = 0; i < 3; i++) {
        memset(c.hash, 0x10 + i, sizeof c.hash);
        c.pack_id = i % 2;
        c.offset = 16 + 1000 * (uint64_t)i;
        c.stored_len = 900;
        c.plain_len = 65536;
        c.codec = 1;
        c.crc = 0xdead0000u + (uint32_t)i;
        assert_int_equal(manifest_add_chunk(m, &c), 0);
    }
    assert_int_equal(manifest_add_run(m, 0, 2, 0), 0);
    assert_int_equal(manifest_add_run(m, 3, 4, MANIFEST_ZERO), 0);
    assert_int_equal(manifest_add_run(m, 7, 1, 2), 0);
    assert_int_equal(manifest_add_run(m, 9, 2, 1), 0);   /* the short last cell */
}

static void test_round_trip(void **state UNUSED)
{
    struct manifest m, d;
    void *buf;
    size_t len;

    sample(&m);
    assert_int_equal(manifest_encode(&m, &buf, &len), 0);
    assert_memory_equal(buf, MANIFEST_MAGIC, 8);
    assert_int_equal(manifest_decode(buf, len, "t", &d), 0);
    assert_string_equal(d.uid, m.uid);
    assert_string_equal(d.parent_uid, m.parent_uid);
    assert_int_equal(d.gen, 3);
    assert_string_equal(d.pt.disk, "vm1/vda");
    assert_false(d.pt.full);
    assert_true(d.pt.started == m.pt.started);
    assert_int_equal(d.pt.disk_size, m.pt.disk_size);
    assert_string_equal(d.pt.source_kind, "libvirt");
    assert_int_equal(d.pt.bytes_read, 12345);
    assert_int_equal(d.npacks, 2);
    assert_string_equal(d.packs[1].name, "cd/cdef01.pack");
    assert_int_equal(d.packs[1].size, 2000000);
    assert_int_equal(d.nchunks, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_memory_equal(d.chunks[i].hash, m.chunks[i].hash, 32);
        assert_int_equal(d.chunks[i].offset, m.chunks[i].offset);
        assert_int_equal(d.chunks[i].crc, m.chunks[i].crc);
        assert_string_equal(d.chunks[i].pack, i % 2 ? "cd/cdef01.pack" : "ab/abcdef.pack");
    }
    assert_int_equal(d.nruns, 4);
    assert_int_equal(d.runs[1].chunk, MANIFEST_ZERO);
    assert_int_equal(d.runs[3].first, 9);
    manifest_free(&d);
    manifest_free(&m);
    free(buf);
}

/* A flipped bit anywhere in the object (magic, frame, body, checksum) is
 * refused with the object's name in the message, or, where it only
 * touches bits zstd does not use (its window size, say), decodes to the
 * very same point: never to another one. */
static void test_every_flip_refused(void **state UNUSED)
{
    struct manifest m, d;
    uint8_t *buf;
    size_t len;

    sample(&m);
    assert_int_equal(manifest_encode(&m, (void **)&buf, &len), 0);
    for (size_t i = 0; i < len; i++) {
        buf[i] ^= 0x04;
        int r = manifest_decode(buf, len, "points/x.000001", &d);
        buf[i] ^= 0x04;
        if (r == 0) {
            void *again;
            size_t alen;
            assert_int_equal(manifest_encode(&d, &again, &alen), 0);
            assert_int_equal(alen, len);
            assert_memory_equal(again, buf, len);
            free(again);
            manifest_free(&d);
            continue;
        }
        assert_int_equal(r, -1);
        assert_non_null(strstr(error_msg(), "points/x.000001"));
    }
    for (size_t cut = 0; cut < len; cut += 7)
        assert_int_equal(manifest_decode(buf, cut, "t", &d), -1);
    manifest_free(&m);
    free(buf);
}

/* A body whose checksum holds but whose content breaks a rule: runs out
 * of order, a chunk index past the table, a run past the disk. */
static void body_case(void (*spoil)(struct manifest *), const char *want)
{
    struct manifest m, d;
    void *buf;
    size_t len;

    sample(&m);
    spoil(&m);
    assert_int_equal(manifest_encode(&m, &buf, &len), 0);
    assert_int_equal(manifest_decode(buf, len, "t", &d), -1);
    assert_non_null(strstr(error_msg(), want));
    manifest_free(&m);
    free(buf);
}

static void unordered(struct manifest *m) { m->runs[2].first = 1; }
static void bad_index(struct manifest *m) { m->runs[0].chunk = 7; }
static void past_end(struct manifest *m) { m->runs[3].count = 3; }
static void no_parent(struct manifest *m) { m->parent_uid[0] = 0; }

static void test_rules(void **state UNUSED)
{
    body_case(unordered, "run 2");
    body_case(bad_index, "run 0");
    body_case(past_end, "run 3");
    body_case(no_parent, "header");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_every_flip_refused),
        cmocka_unit_test(test_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
