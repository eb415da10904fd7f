/* common/clock.h: the clocks every layer reads. */
#ifndef COMMON_CLOCK_H
#define COMMON_CLOCK_H

#include <stdint.h>

/* Monotonic: for timeouts, rates and durations. */
int64_t clock_mono_ms(void);
double clock_mono_s(void);
/* Wall clock, seconds since the epoch with fractions: for what is recorded. */
double clock_wall_s(void);

#endif
