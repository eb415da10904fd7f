/* nbdcore-tool: drives nbdcore's client from the integration tests, one
 * NBD command per invocation, so that each behaviour is checked against a
 * real server with real tools (cmp, qemu-img compare).
 *
 *   nbdcore-tool pread URI OFFSET LENGTH        > data
 *   nbdcore-tool pwrite URI OFFSET FILE [fua]
 *   nbdcore-tool zero URI OFFSET LENGTH [fast] [nohole] [fua]
 *   nbdcore-tool trim URI OFFSET LENGTH
 *   nbdcore-tool cache URI OFFSET LENGTH
 *   nbdcore-tool flush URI
 *   nbdcore-tool download URI FILE CONNECTIONS  (pool read of the whole export)
 *   nbdcore-tool upload URI FILE CONNECTIONS    (pool write + flush)
 *
 * Prints "connections: N" for the pool commands; exits 1 with the error on
 * stderr on failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nbdcore/nbdcore.h"

static int fail(const char *what)
{
    fprintf(stderr, "nbdcore-tool: %s: %s\n", what, nbd_get_error());
    return 1;
}

static bool has(int argc, char **argv, int from, const char *word)
{
    for (int i = from; i < argc; i++)
        if (!strcmp(argv[i], word))
            return true;
    return false;
}

static uint8_t *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    uint8_t *buf;

    if (fd < 0 || fstat(fd, &st) < 0) {
        perror(path);
        exit(1);
    }
    buf = malloc(st.st_size ? (size_t)st.st_size : 1);
    *len = (size_t)st.st_size;
    for (size_t got = 0; got < *len;) {
        ssize_t r = read(fd, buf + got, *len - got);
        if (r <= 0) {
            perror(path);
            exit(1);
        }
        got += (size_t)r;
    }
    close(fd);
    return buf;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: nbdcore-tool CMD URI ARGS...\n");
        return 2;
    }
    const char *cmd = argv[1], *uri = argv[2];
    int ret = 0;

    if (!strcmp(cmd, "download") || !strcmp(cmd, "upload")) {
        if (argc < 5)
            return 2;
        bool up = !strcmp(cmd, "upload");
        struct nbd_pool *p = nbd_pool_open(uri, NULL, (unsigned)atoi(argv[4]));
        if (!p)
            return fail("connect");
        uint64_t size = nbd_get_size(nbd_pool_conn(p, 0));
        printf("connections: %u\n", nbd_pool_size(p));
        if (up) {
            size_t len;
            uint8_t *buf = read_file(argv[3], &len);
            if (len > size) {
                fprintf(stderr, "nbdcore-tool: %s is larger than the export\n", argv[3]);
                return 1;
            }
            if (nbd_pool_pwrite(p, buf, len, 0) < 0 || nbd_pool_flush(p) < 0)
                ret = fail("upload");
            free(buf);
        } else {
            uint8_t *buf = malloc(size ? size : 1);
            if (nbd_pool_pread(p, buf, size, 0) < 0) {
                ret = fail("download");
            } else {
                FILE *f = fopen(argv[3], "wb");
                if (!f || fwrite(buf, 1, size, f) != size || fclose(f) != 0) {
                    perror(argv[3]);
                    ret = 1;
                }
            }
            free(buf);
        }
        nbd_pool_close(p);
        return ret;
    }

    struct nbd_conn *c = nbd_connect_uri(uri, NULL);
    if (!c)
        return fail("connect");
    uint32_t fua = has(argc, argv, 3, "fua") ? NBD_CMD_FLAG_FUA : 0;
    if (!strcmp(cmd, "pread") && argc >= 5) {
        uint64_t off = strtoull(argv[3], NULL, 0), len = strtoull(argv[4], NULL, 0);
        uint8_t *buf = malloc(len ? len : 1);
        if (nbd_pread(c, buf, len, off, 0) < 0)
            ret = fail("pread");
        else if (fwrite(buf, 1, len, stdout) != len)
            ret = 1;
        free(buf);
    } else if (!strcmp(cmd, "pwrite") && argc >= 5) {
        size_t len;
        uint8_t *buf = read_file(argv[4], &len);
        if (nbd_pwrite(c, buf, len, strtoull(argv[3], NULL, 0), fua) < 0)
            ret = fail("pwrite");
        free(buf);
    } else if (!strcmp(cmd, "zero") && argc >= 5) {
        uint32_t fl = fua | (has(argc, argv, 5, "fast") ? NBD_CMD_FLAG_FAST_ZERO : 0) |
                      (has(argc, argv, 5, "nohole") ? NBD_CMD_FLAG_NO_HOLE : 0);
        if (nbd_zero(c, strtoull(argv[4], NULL, 0), strtoull(argv[3], NULL, 0), fl) < 0)
            ret = fail("zero");
    } else if (!strcmp(cmd, "trim") && argc >= 5) {
        if (nbd_trim(c, strtoull(argv[4], NULL, 0), strtoull(argv[3], NULL, 0), fua) < 0)
            ret = fail("trim");
    } else if (!strcmp(cmd, "cache") && argc >= 5) {
        if (nbd_cache(c, strtoull(argv[4], NULL, 0), strtoull(argv[3], NULL, 0), 0) < 0)
            ret = fail("cache");
    } else if (!strcmp(cmd, "flush")) {
        if (nbd_flush(c, 0) < 0)
            ret = fail("flush");
    } else {
        fprintf(stderr, "nbdcore-tool: bad command\n");
        ret = 2;
    }
    nbd_close(c);
    return ret;
}
