/*
 * What the ledger benchmarks share: the workload's random numbers, so that
 * ledger-floor draws exactly the members and kinds ledger-bench draws, the monotonic
 * clock they time with, the order they sort latencies in, and the kinds of request
 * ids they send (--request-ids).
 */
#ifndef TALLY_TOOLS_BENCH_H
#define TALLY_TOOLS_BENCH_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>
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

/* qsort's comparators for the tools' latency samples, ascending. */
static inline int bench_cmp_double(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;
	return a < b ? -1 : a > b;
}

static inline int bench_cmp_u32(const void *x, const void *y)
{
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
	return a < b ? -1 : a > b;
}

/* Request ids (--request-ids): a counter, which each tool writes its own way; 32 hex
 * digits at random (as the peers of bench-compare draw theirs); or the time in
 * milliseconds in 12 hex digits, then 20 at random (UUIDv7's layout, what tallyctl and
 * the Python client send). */
enum bench_ids { BENCH_IDS_COUNTER, BENCH_IDS_RANDOM, BENCH_IDS_TIME };

/* The kind named s ("counter", "random", "time"); -1 for any other. */
static inline int bench_ids_parse(const char *s)
{
	static const char *const names[] = {"counter", "random", "time"};
	for (int i = 0; i < 3; i++)
		if (strcmp(s, names[i]) == 0)
			return i;
	return -1;
}

/* A random or time-first id into out (33 bytes): hi and lo its random bits, ms the time. */
static inline void bench_id_format(char out[33], enum bench_ids ids, uint64_t hi, uint64_t lo,
				   uint64_t ms)
{
	if (ids == BENCH_IDS_TIME)
		hi = (ms & 0xffffffffffffULL) << 16 | (hi & 0xffff);
	snprintf(out, 33, "%016llx%016llx", (unsigned long long)hi, (unsigned long long)lo);
}

#endif /* TALLY_TOOLS_BENCH_H */
