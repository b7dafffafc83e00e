/*
 * What the ledger benchmarks share: the workload's random numbers, so that
 * ledger-floor draws exactly the members and kinds ledger-bench draws, and the
 * monotonic clock they time with.
 */
#ifndef TALLY_TOOLS_BENCH_H
#define TALLY_TOOLS_BENCH_H

#include <stdint.h>
#include <time.h>

/* Marsaglia's xorshift64 from a fixed seed: the same sequence in every run. */
#define BENCH_SEED 88172645463325252ULL

static inline uint64_t bench_rnd(uint64_t *state)
{
	*state ^= *state << 13;
	*state ^= *state >> 7;
	*state ^= *state << 17;
	return *state;
}

static inline double bench_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#endif /* TALLY_TOOLS_BENCH_H */
