/* cpus.c: see cpus.h. */
#include <sched.h>
#include <stdlib.h>

#include "common/cpus.h"

unsigned cpus_available(void)
{
    const char *env = getenv("NBDVAULT_THREADS");
    if (env && *env) {
        long n = strtol(env, NULL, 10);
        if (n >= 1 && n <= 1024)
            return (unsigned)n;
    }
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n >= 1)
            return (unsigned)n;
    }
    return 1;
}

unsigned cpus_workers(void)
{
    unsigned n = cpus_available();
    return n < CPUS_MAX_WORKERS ? n : CPUS_MAX_WORKERS;
}
