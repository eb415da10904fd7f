/* replay-main.c: runs a libFuzzer harness over saved inputs without
 * libFuzzer, so that `make check` replays the corpus with the ordinary
 * compiler (and the sanitizers under SANITIZE=1).
 *
 *   fuzz_X-replay PATH...
 *
 * Each PATH is a file, or a directory whose regular files are replayed in
 * name order.  LLVMFuzzerTestOneInput is called once per input; a crash or
 * a sanitizer report fails the run, anything else exits 0.
 */
#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads the whole file; returns 0, or -1 after printing why. */
static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;

    if (!f) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    for (;;) {
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 65536;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                fprintf(stderr, "replay: %s: out of memory\n", path);
                free(buf);
                fclose(f);
                return -1;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        fprintf(stderr, "replay: %s: read error\n", path);
        free(buf);
        fclose(f);
        return -1;
    }
    fclose(f);
    /* An exact-size copy, so that an over-read is caught by the sanitizers. */
    uint8_t *exact = malloc(len ? len : 1);
    if (!exact) {
        free(buf);
        return -1;
    }
    memcpy(exact, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 0;
}

static int regular_only(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

/* Replays every regular file of dir, sorted by name; returns the count or -1. */
static long replay_dir(const char *dir)
{
    struct dirent **names;
    int n = scandir(dir, &names, regular_only, alphasort);
    long count = 0;
    int ret = 0;

    if (n < 0) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    for (int i = 0; i < n; i++) {
        size_t plen = strlen(dir) + 1 + strlen(names[i]->d_name) + 1;
        char *path = malloc(plen);
        struct stat st;
        if (!path) {
            ret = -1;
        } else {
            snprintf(path, plen, "%s/%s", dir, names[i]->d_name);
            if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
                if (replay_file(path) < 0)
                    ret = -1;
                else
                    count++;
            }
            free(path);
        }
        free(names[i]);
    }
    free(names);
    return ret < 0 ? -1 : count;
}

int main(int argc, char **argv)
{
    int status = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        struct stat st;
        long n;

        if (stat(argv[i], &st) < 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            status = 1;
            continue;
        }
        if (S_ISDIR(st.st_mode))
            n = replay_dir(argv[i]);
        else
            n = replay_file(argv[i]) < 0 ? -1 : 1;
        if (n < 0) {
            status = 1;
            continue;
        }
        printf("replayed %ld inputs from %s\n", n, argv[i]);
    }
    return status;
}
