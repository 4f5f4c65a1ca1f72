/* What every benchmark program measures with: a monotonic clock in seconds and bytes as MiB. */
#ifndef LATHE_BENCH_CLOCK_H
#define LATHE_BENCH_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Seconds on the monotonic clock. */
static inline double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Bytes as mebibytes. */
static inline double mib(uint64_t b) { return (double)b / 1048576.0; }

#endif
