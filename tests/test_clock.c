/*
 * consensus/clock: the rules of ledger time, without clocks (every reading is an
 * argument). The bound is checked by a randomised property test as well.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "consensus/clock.h"

#define HOUR_MS 3600000
#define REAL0_MS 1796000000000 /* real time at monotonic 0 in these tests */

static const uint64_t three[] = {1, 2, 3};
static const uint64_t five[] = {1, 2, 3, 4, 5};

/* Peer `id`, whose wall clock is `skew_ms` off real time, answers at monotonic `mono`
 * after a round trip of rtt_ms. */
static void sample(struct tally_clock *c, uint64_t id, int64_t mono, int64_t skew_ms,
		   int64_t rtt_ms)
{
	int64_t sent = mono - rtt_ms, answered = mono - rtt_ms / 2;
	assert_true(tally_clock_sample(c, id, REAL0_MS + answered + skew_ms, sent, mono));
}

static void read3(const struct tally_clock *c, int64_t mono, int64_t self_skew_ms,
		  struct clock_reading *r)
{
	tally_clock_read(c, mono, REAL0_MS + mono + self_skew_ms, 1, three, 3, r);
}

static void test_a_new_ledger_has_no_time_until_a_majority_of_clocks_agree(void **state)
{
	(void)state;
	struct tally_clock c;
	tally_clock_init(&c);
	struct clock_reading r;
	int64_t t = -1;
	read3(&c, 1000, 0, &r);
	assert_false(r.synchronized);
	assert_int_equal(r.agreeing, 1);
	assert_false(tally_clock_next(&c, &r, &t));
	sample(&c, 2, 1000, 0, 2);
	read3(&c, 1000, 0, &r);
	assert_true(r.synchronized);
	assert_int_equal(r.agreeing, 2);
	assert_true(tally_clock_next(&c, &r, &t));
	assert_true(llabs(t - (REAL0_MS + 1000)) <= 2);
}

static void test_a_single_voter_trusts_its_own_clock(void **state)
{
	(void)state;
	struct tally_clock c;
	tally_clock_init(&c);
	struct clock_reading r;
	const uint64_t one[] = {1};
	tally_clock_read(&c, 50, REAL0_MS + 50, 1, one, 1, &r);
	assert_true(r.synchronized);
	int64_t t;
	assert_true(tally_clock_next(&c, &r, &t));
	assert_int_equal(t, REAL0_MS + 50);
}

static void test_a_leader_an_hour_ahead_is_outvoted_by_the_other_two(void **state)
{
	(void)state;
	struct tally_clock c;
	tally_clock_init(&c);
	tally_clock_observe(&c, REAL0_MS + 10000, 10000);
	sample(&c, 2, 20000, 0, 4);
	sample(&c, 3, 20000, 30, 6);
	struct clock_reading r;
	read3(&c, 20000, HOUR_MS, &r);
	assert_true(r.synchronized);
	assert_int_equal(r.agreeing, 2);
	assert_true(r.offset_ms > HOUR_MS - CLOCK_ERROR_MAX_MS);
	int64_t t;
	assert_true(tally_clock_next(&c, &r, &t));
	assert_true(t <= REAL0_MS + 20000 + CLOCK_ERROR_MAX_MS);
	assert_true(t >= REAL0_MS + 20000); /* E: no less than the monotonic time seen */
}

/* Without a majority there is no time, even with a ledger time observed: a batch
 * stamped by the estimate alone could lag and shorten the holds it starts. */
static void test_clocks_that_all_disagree_leave_no_time(void **state)
{
	(void)state;
	struct tally_clock c;
	tally_clock_init(&c);
	tally_clock_observe(&c, REAL0_MS + 1000, 1000);
	sample(&c, 2, 6000, -HOUR_MS, 2);
	sample(&c, 3, 6000, 2 * HOUR_MS, 2);
	struct clock_reading r;
	read3(&c, 6000, HOUR_MS, &r);
	assert_false(r.synchronized);
	assert_int_equal(r.agreeing, 1);
	assert_int_equal(r.estimate_ms, REAL0_MS + 6000);
	int64_t t = -1;
	assert_false(tally_clock_next(&c, &r, &t));
	assert_int_equal(t, -1);
}

static void test_samples_older_than_the_limit_are_forgotten(void **state)
{
	(void)state;
	struct tally_clock c;
	tally_clock_init(&c);
	sample(&c, 2, 1000, 0, 2);
	struct clock_reading r;
	read3(&c, 1000 + CLOCK_SAMPLE_AGE_MAX_MS, 0, &r);
	assert_true(r.synchronized);
	read3(&c, 1000 + CLOCK_SAMPLE_AGE_MAX_MS + 1, 0, &r);
	assert_false(r.synchronized);
	assert_int_equal(r.sources, 1);
}

static void test_a_slow_round_trip_or_a_backward_one_is_dropped(void **state)
{
	(void)state;
	struct tally_clock c;
	tally_clock_init(&c);
	assert_false(tally_clock_sample(&c, 2, REAL0_MS, 0, CLOCK_SAMPLE_RTT_MAX_MS + 1));
	assert_false(tally_clock_sample(&c, 2, REAL0_MS, 10, 9));
	assert_int_equal(c.samples_dropped, 2);
	struct clock_reading r;
	read3(&c, CLOCK_SAMPLE_RTT_MAX_MS + 1, 0, &r);
	assert_int_equal(r.sources, 1);
	assert_true(tally_clock_sample(&c, 2, REAL0_MS, 0, CLOCK_SAMPLE_RTT_MAX_MS));
}

static void test_only_voters_count_and_a_forgotten_peer_counts_no_more(void **state)
{
	(void)state;
	struct tally_clock c;
	tally_clock_init(&c);
	sample(&c, 7, 100, 0, 2); /* not a voter */
	struct clock_reading r;
	read3(&c, 100, 0, &r);
	assert_false(r.synchronized);
	sample(&c, 3, 100, 0, 2);
	read3(&c, 100, 0, &r);
	assert_true(r.synchronized);
	tally_clock_forget(&c, 3);
	read3(&c, 100, 0, &r);
	assert_false(r.synchronized);
}

static void test_the_estimate_only_rises_and_counts_monotonic_time(void **state)
{
	(void)state;
	struct tally_clock c;
	tally_clock_init(&c);
	tally_clock_observe(&c, REAL0_MS + 5000, 100);
	tally_clock_observe(&c, REAL0_MS + 5000, 900); /* the same time seen later: ignored */
	tally_clock_observe(&c, REAL0_MS + 4000, 100); /* an older ledger time: ignored */
	sample(&c, 2, 1100, 0, 2);
	struct clock_reading r;
	read3(&c, 1100, 0, &r);
	assert_true(r.synchronized);
	assert_int_equal(r.estimate_ms, REAL0_MS + 6000);
	int64_t t;
	assert_true(tally_clock_next(&c, &r, &t));
	assert_int_equal(t, REAL0_MS + 6000); /* ahead of the clocks (within the bound): E */
}

static void test_after_an_outage_the_agreeing_clocks_pull_ledger_time_forward(void **state)
{
	(void)state;
	struct tally_clock c;
	tally_clock_init(&c);
	/* The ledger's last batch is two hours old; this node just started (mono 500). */
	tally_clock_observe(&c, REAL0_MS - 2 * HOUR_MS, 500);
	sample(&c, 2, 600, 0, 2);
	sample(&c, 3, 600, 0, 2);
	struct clock_reading r;
	read3(&c, 600, 0, &r);
	assert_true(r.synchronized);
	int64_t t;
	assert_true(tally_clock_next(&c, &r, &t));
	assert_true(llabs(t - (REAL0_MS + 600)) <= 2);
}

static void test_cluster_time_behind_the_estimate_never_moves_time_back(void **state)
{
	(void)state;
	struct tally_clock c;
	tally_clock_init(&c);
	tally_clock_observe(&c, REAL0_MS + HOUR_MS, 1000); /* a time from an earlier leader */
	sample(&c, 2, 2000, 0, 2);
	struct clock_reading r;
	read3(&c, 2000, 0, &r);
	assert_true(r.synchronized);
	int64_t t;
	assert_true(tally_clock_next(&c, &r, &t));
	assert_int_equal(t, REAL0_MS + HOUR_MS + 1000);
}

static void test_a_step_of_the_own_wall_clock_does_not_move_the_peers_samples(void **state)
{
	(void)state;
	struct tally_clock c;
	tally_clock_init(&c);
	sample(&c, 2, 1000, 0, 2);
	sample(&c, 3, 1000, 0, 2);
	struct clock_reading before, after;
	read3(&c, 1200, 0, &before);
	read3(&c, 1200, -HOUR_MS, &after); /* stepped back an hour */
	assert_true(after.synchronized);
	assert_int_equal(after.agreeing, 2);
	assert_true(llabs(after.cluster_ms - before.cluster_ms) <= CLOCK_ERROR_MAX_MS);
}

static void test_two_liars_among_five_cannot_move_cluster_time(void **state)
{
	(void)state;
	struct tally_clock c;
	tally_clock_init(&c);
	sample(&c, 2, 1000, 0, 2);
	sample(&c, 3, 1000, 100, 2);
	sample(&c, 4, 1000, HOUR_MS, 2);
	sample(&c, 5, 1000, HOUR_MS + 10, 2);
	struct clock_reading r;
	tally_clock_read(&c, 1000, REAL0_MS + 1000, 1, five, 5, &r);
	assert_true(r.synchronized);
	assert_int_equal(r.agreeing, 3); /* 1, 2 and 3 against the two liars */
	assert_true(r.cluster_ms <= REAL0_MS + 1000 + CLOCK_ERROR_MAX_MS);
	/* Two against two (a fifth unreachable) is no majority. */
	tally_clock_forget(&c, 3);
	tally_clock_read(&c, 1000, REAL0_MS + 1000, 1, five, 5, &r);
	assert_false(r.synchronized);
}

/* xorshift64: a fixed sequence, so a failure reproduces. */
static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static int64_t rng_range(uint64_t *s, int64_t lo, int64_t hi)
{
	return lo + (int64_t)(rng_next(s) % (uint64_t)(hi - lo + 1));
}

/* The bound, randomised: a majority of clocks within tolerance/2 of real time, the
 * rest anywhere, round trips up to the limit: every batch time is within
 * CLOCK_ERROR_MAX_MS of real time, either way. */
static void test_with_a_correct_majority_batch_time_is_within_the_bound(void **state)
{
	(void)state;
	uint64_t seed = 0x9e3779b97f4a7c15ULL;
	const int64_t half = CLOCK_TOLERANCE_MS / 2;
	int synchronized = 0;
	for (int round = 0; round < 20000; round++) {
		struct tally_clock c;
		tally_clock_init(&c);
		int n = (int)rng_range(&seed, 1, 5);
		int bad = (int)rng_range(&seed, 0, (n - 1) / 2);
		int64_t mono = rng_range(&seed, 10000, 1000000);
		int64_t skew[5];
		for (int i = 0; i < n; i++)
			skew[i] = i < n - bad ? rng_range(&seed, -half, half)
					      : rng_range(&seed, -3 * HOUR_MS, 3 * HOUR_MS);
		/* Which node reads (the leader) is random, liars included. */
		int self = (int)rng_range(&seed, 0, n - 1);
		for (int i = 0; i < n; i++) {
			if (i == self)
				continue;
			int64_t rtt = rng_range(&seed, 0, CLOCK_SAMPLE_RTT_MAX_MS);
			int64_t at = rng_range(&seed, mono - CLOCK_SAMPLE_AGE_MAX_MS + rtt, mono);
			int64_t answered = at - rng_range(&seed, 0, rtt);
			assert_true(tally_clock_sample(&c, five[i], REAL0_MS + answered + skew[i],
						       at - rtt, at));
		}
		if (rng_range(&seed, 0, 1)) { /* a ledger time seen earlier, within the bound then */
			int64_t seen = mono - rng_range(&seed, 0, 5000);
			tally_clock_observe(&c, REAL0_MS + seen + rng_range(&seed, -HOUR_MS,
									     CLOCK_ERROR_MAX_MS), seen);
		}
		struct clock_reading r;
		tally_clock_read(&c, mono, REAL0_MS + mono + skew[self], five[self], five,
				 (size_t)n, &r);
		int64_t t;
		if (!tally_clock_next(&c, &r, &t))
			continue;
		synchronized++;
		if (t > REAL0_MS + mono + CLOCK_ERROR_MAX_MS)
			fail_msg("round %d: %d voters, %d bad, self %d: time %lld ms ahead", round,
				 n, bad, self, (long long)(t - REAL0_MS - mono));
		if (t < REAL0_MS + mono - CLOCK_ERROR_MAX_MS)
			fail_msg("round %d: %d voters, %d bad, self %d: time %lld ms behind", round,
				 n, bad, self, (long long)(REAL0_MS + mono - t));
	}
	assert_true(synchronized > 10000); /* with a correct majority, nearly always */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_new_ledger_has_no_time_until_a_majority_of_clocks_agree),
		cmocka_unit_test(test_a_single_voter_trusts_its_own_clock),
		cmocka_unit_test(test_a_leader_an_hour_ahead_is_outvoted_by_the_other_two),
		cmocka_unit_test(test_clocks_that_all_disagree_leave_no_time),
		cmocka_unit_test(test_samples_older_than_the_limit_are_forgotten),
		cmocka_unit_test(test_a_slow_round_trip_or_a_backward_one_is_dropped),
		cmocka_unit_test(test_only_voters_count_and_a_forgotten_peer_counts_no_more),
		cmocka_unit_test(test_the_estimate_only_rises_and_counts_monotonic_time),
		cmocka_unit_test(test_after_an_outage_the_agreeing_clocks_pull_ledger_time_forward),
		cmocka_unit_test(test_cluster_time_behind_the_estimate_never_moves_time_back),
		cmocka_unit_test(test_a_step_of_the_own_wall_clock_does_not_move_the_peers_samples),
		cmocka_unit_test(test_two_liars_among_five_cannot_move_cluster_time),
		cmocka_unit_test(test_with_a_correct_majority_batch_time_is_within_the_bound),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
