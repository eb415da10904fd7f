/* common/cpus.h: how many CPUs this process may run on. */
#ifndef COMMON_CPUS_H
#define COMMON_CPUS_H

/* The CPUs of the process's affinity mask (taskset, cgroups cpusets), at
 * least 1; NBDVAULT_THREADS=N overrides it (tests, benchmarks). */
unsigned cpus_available(void);

/* Worker threads of a parallel stage: one per CPU available, at most
 * CPUS_MAX_WORKERS (the size of the callers' arrays). */
#define CPUS_MAX_WORKERS 16
unsigned cpus_workers(void);

#endif
