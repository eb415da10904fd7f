/* progress.c: a one-line progress display on a terminal (stderr). */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/clock.h"

bool cli_progress_wanted(bool json)
{
    return !json && isatty(STDERR_FILENO);
}

void cli_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct cli_progress *p = opaque;
    char d[32], t[32], r[32];
    double el;

    if (!p->start)
        p->start = clock_mono_s();
    el = clock_mono_s() - p->start;
    cli_human_size(d, sizeof d, done);
    cli_human_size(t, sizeof t, total);
    cli_human_size(r, sizeof r, el > 0 ? (uint64_t)((double)done / el) : 0);
    if (total && done < total && done > 0 && el > 0) {
        double left = el * (double)(total - done) / (double)done;
        fprintf(stderr, "\r%s: %s / %s (%.0f%%), %s/s, %.0f s left   ", p->what, d, t,
                100.0 * (double)done / (double)total, r, left);
    } else {
        fprintf(stderr, "\r%s: %s / %s, %s/s          ", p->what, d, t, r);
    }
    if (total && done >= total)
        fputc('\n', stderr);
    fflush(stderr);
}
