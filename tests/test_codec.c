/* The account codec of the apply path (ledger/codec.c) against protobuf-c: the same
 * bytes for every account, the same account read back, and protobuf-c's answer for
 * whatever else the bytes may hold. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ledger/internal.h"

#define ROUNDS 20000
#define LOTS_MAX 40
#define CODEC_BYTES_MAX 4096

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Numbers as they come: often 0 (left out), small, large, negative, the extremes. */
static int64_t any_i64(void)
{
	switch (rnd() % 6) {
	case 0: return 0;
	case 1: return (int64_t)(rnd() % 200);
	case 2: return (int64_t)(rnd() % 2000000000000000LL);
	case 3: return -(int64_t)(rnd() % 100000);
	case 4: return rnd() % 2 ? INT64_MAX : INT64_MIN;
	default: return (int64_t)rnd();
	}
}

static char *any_str(struct tally_arena *a, const char *prefix)
{
	char buf[200];
	size_t n = rnd() % 4 == 0 ? 0 : rnd() % 140;
	for (size_t i = 0; i < n; i++)
		buf[i] = prefix[i % strlen(prefix)];
	buf[n] = '\0';
	return n == 0 ? (char *)protobuf_c_empty_string : tally_arena_strdup(a, buf);
}

static Tally__V1__Account *any_account(struct tally_arena *a)
{
	Tally__V1__Account *acct = tally_arena_alloc(a, sizeof(*acct));
	tally__v1__account__init(acct);
	acct->brand = any_str(a, "aurora");
	acct->member = any_str(a, "m0012345");
	acct->tier = any_str(a, "gold");
	int64_t *nums[] = {&acct->available, &acct->held, &acct->earned, &acct->redeemed,
			   &acct->expired, &acct->qualifying, &acct->updated_ms,
			   &acct->qualifying_day, &acct->lot_index_ms};
	for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++)
		*nums[i] = any_i64();
	acct->n_lots = rnd() % 3 == 0 ? 0 : rnd() % LOTS_MAX;
	acct->lots = tally_arena_alloc(a, (acct->n_lots + 1) * sizeof(*acct->lots));
	for (size_t i = 0; i < acct->n_lots; i++) {
		Tally__V1__Lot *lot = tally_arena_alloc(a, sizeof(*lot));
		tally__v1__lot__init(lot);
		lot->expiry_ms = any_i64();
		lot->points = any_i64();
		acct->lots[i] = lot;
	}
	return acct;
}

static void assert_accounts_equal(const Tally__V1__Account *x, const Tally__V1__Account *y)
{
	assert_string_equal(x->brand, y->brand);
	assert_string_equal(x->member, y->member);
	assert_string_equal(x->tier, y->tier);
	assert_true(x->available == y->available && x->held == y->held);
	assert_true(x->earned == y->earned && x->redeemed == y->redeemed);
	assert_true(x->expired == y->expired && x->qualifying == y->qualifying);
	assert_true(x->updated_ms == y->updated_ms && x->qualifying_day == y->qualifying_day);
	assert_true(x->lot_index_ms == y->lot_index_ms);
	assert_int_equal(x->n_holds, 0);
	assert_int_equal(y->n_holds, 0);
	assert_int_equal(x->n_lots, y->n_lots);
	for (size_t i = 0; i < x->n_lots; i++) {
		assert_true(x->lots[i]->expiry_ms == y->lots[i]->expiry_ms);
		assert_true(x->lots[i]->points == y->lots[i]->points);
	}
}

static void test_random_accounts_encode_to_protobuf_c_bytes_and_back(void **state)
{
	(void)state;
	struct tally_arena a;
	tally_arena_init(&a, 1 << 16, 0);
	static uint8_t ours[CODEC_BYTES_MAX], theirs[CODEC_BYTES_MAX];
	for (int round = 0; round < ROUNDS; round++) {
		tally_arena_reset(&a);
		Tally__V1__Account *acct = any_account(&a);
		size_t n = account_packed_size(acct);
		assert_int_equal(n, tally__v1__account__get_packed_size(acct));
		assert_true(n <= CODEC_BYTES_MAX);
		assert_int_equal(account_pack(acct, ours), n);
		assert_int_equal(tally__v1__account__pack(acct, theirs), n);
		assert_memory_equal(ours, theirs, n);
		Tally__V1__Account *back = account_unpack(&a, ours, n);
		assert_non_null(back);
		assert_accounts_equal(acct, back);
	}
	tally_arena_free(&a);
}

/* Bytes our encoder never writes are still read as protobuf-c reads them: fields out
 * of order, an unknown field, a hold, a zero written out; broken bytes fail alike. */
static void test_other_encodings_are_read_as_protobuf_c_reads_them(void **state)
{
	(void)state;
	struct tally_arena a;
	tally_arena_init(&a, 1 << 16, 0);
	static const struct {
		const char *what;
		size_t n;
		uint8_t b[24];
	} cases[] = {
		{"fields out of order", 9, {0x18, 0x05, 0x0a, 0x01, 'b', 0x12, 0x02, 'm', '1'}},
		{"an unknown varint field", 5, {0x18, 0x05, 0xf8, 0x01, 0x07}},
		{"a hold", 6, {0x18, 0x05, 0x6a, 0x02, 0x08, 0x01}},
		{"a zero written out", 4, {0x18, 0x00, 0x20, 0x03}},
		{"a lot with an unknown field", 6, {0x62, 0x04, 0x08, 0x01, 0x18, 0x02}},
		{"a varint cut short", 2, {0x18, 0x85}},
		{"a string past the end", 3, {0x0a, 0x05, 'b'}},
		{"a lot past the end", 3, {0x62, 0x09, 0x08}},
		{"a wrong wire type", 3, {0x19, 0x01, 0x02}},
		{"an eleven-byte varint", 12,
		 {0x18, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		tally_arena_reset(&a);
		Tally__V1__Account *ours = account_unpack(&a, cases[i].b, cases[i].n);
		Tally__V1__Account *theirs =
			tally__v1__account__unpack(tally_arena_protobuf(&a), cases[i].n, cases[i].b);
		if ((ours == NULL) != (theirs == NULL))
			fail_msg("%s: ours %s, protobuf-c %s", cases[i].what,
				 ours ? "read it" : "refused it", theirs ? "read it" : "refused it");
		if (ours != NULL && theirs->n_holds == 0)
			assert_accounts_equal(ours, theirs);
		if (ours != NULL && theirs->n_holds > 0)
			assert_int_equal(ours->n_holds, theirs->n_holds);
		if (ours == NULL || theirs->n_holds > 0)
			continue;
		/* Written back, it is protobuf-c's bytes again, unknown fields included. */
		uint8_t mine[64], pc[64];
		size_t n = account_packed_size(ours);
		assert_int_equal(n, tally__v1__account__get_packed_size(theirs));
		assert_int_equal(account_pack(ours, mine), n);
		assert_int_equal(tally__v1__account__pack(theirs, pc), n);
		assert_memory_equal(mine, pc, n);
	}
	tally_arena_free(&a);
}

static void test_the_empty_account_is_zero_bytes(void **state)
{
	(void)state;
	struct tally_arena a;
	tally_arena_init(&a, 1 << 12, 0);
	Tally__V1__Account acct = TALLY__V1__ACCOUNT__INIT;
	uint8_t b[1];
	assert_int_equal(account_packed_size(&acct), 0);
	assert_int_equal(account_pack(&acct, b), 0);
	Tally__V1__Account *back = account_unpack(&a, b, 0);
	assert_non_null(back);
	assert_accounts_equal(&acct, back);
	tally_arena_free(&a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_random_accounts_encode_to_protobuf_c_bytes_and_back),
		cmocka_unit_test(test_other_encodings_are_read_as_protobuf_c_reads_them),
		cmocka_unit_test(test_the_empty_account_is_zero_bytes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
