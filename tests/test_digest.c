/*
 * Tests of the state digest's arithmetic (ledger/hash.c): a 256-bit integer in 32
 * little-endian bytes, to which record hashes are added and from which they are taken
 * away modulo 2^256. Checked against the definition worked a byte at a time: random
 * values, and the carries and borrows that cross every 64-bit limb.
 */
#include <stdint.h>
#include <string.h>

#include "ledger/internal.h"
#include "tests/util.h"

#define RANDOM_PAIRS 200000

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* The definition: byte i weighs 2^(8i); the sum and difference wrap at 2^256. */
static void add_bytes(uint8_t acc[32], const uint8_t h[32])
{
	unsigned carry = 0;
	for (int i = 0; i < 32; i++) {
		unsigned s = (unsigned)acc[i] + h[i] + carry;
		acc[i] = (uint8_t)s;
		carry = s >> 8;
	}
}

static void sub_bytes(uint8_t acc[32], const uint8_t h[32])
{
	int borrow = 0;
	for (int i = 0; i < 32; i++) {
		int d = (int)acc[i] - h[i] - borrow;
		borrow = d < 0;
		acc[i] = (uint8_t)(d + (borrow ? 256 : 0));
	}
}

/* One of the values that stress carries: random, all ones, all zeros, or a limb's worth
 * of ones ending at a limb boundary. */
static void any_value(uint8_t v[32])
{
	switch (rnd() % 5) {
	case 0: memset(v, 0xff, 32); break;
	case 1: memset(v, 0, 32); break;
	case 2:
		memset(v, 0, 32);
		memset(v + 8 * (rnd() % 4), 0xff, 8);
		break;
	default:
		for (int i = 0; i < 32; i++)
			v[i] = (uint8_t)rnd();
	}
	if (rnd() % 3 == 0)
		v[rnd() % 32] = (uint8_t)rnd();
}

static void test_addition_and_subtraction_are_the_definitions(void **state)
{
	(void)state;
	for (int n = 0; n < RANDOM_PAIRS; n++) {
		uint8_t acc[32], h[32], want[32];
		any_value(acc);
		any_value(h);
		memcpy(want, acc, 32);
		add_bytes(want, h);
		uint8_t got[32];
		memcpy(got, acc, 32);
		digest_add(got, h);
		assert_memory_equal(got, want, 32);
		sub_bytes(want, h);
		digest_sub(got, h);
		assert_memory_equal(got, want, 32);
		assert_memory_equal(got, acc, 32); /* taking away what was added restores it */
	}
}

static void test_carries_cross_every_limb(void **state)
{
	(void)state;
	uint8_t acc[32], one[32] = {1};
	memset(acc, 0xff, 32);
	digest_add(acc, one); /* 2^256 - 1 + 1 wraps to 0 */
	uint8_t zero[32] = {0};
	assert_memory_equal(acc, zero, 32);
	digest_sub(acc, one); /* and back */
	for (int i = 0; i < 32; i++)
		assert_int_equal(acc[i], 0xff);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_addition_and_subtraction_are_the_definitions),
		cmocka_unit_test(test_carries_cross_every_limb),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
