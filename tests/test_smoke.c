/* A first end-to-end pass through the ledger: a brand, members, points in and out. */
#include "tests/util.h"

static void test_accrue_then_redeem_moves_points_and_keeps_books_balanced(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_brand(&f, "aurora", 24);
	const char *ms[] = {"m1", "m2"};
	setup_members(&f, ms, 2);
	Tally__V1__Principal *dealer = who(&f, TALLY__V1__ROLE__DEALER, "dealer", "*");
	Tally__V1__Principal *mall = who(&f, TALLY__V1__ROLE__MALL, "mall", "*");
	Tally__V1__CommandResult *r = ok(&f, c_accrue(&f, dealer, "aurora", "m1", 1000));
	assert_int_equal(r->available, 1000);
	r = ok(&f, c_redeem(&f, mall, "aurora", "m1", 300));
	assert_int_equal(r->available, 700);
	expect(&f, c_redeem(&f, mall, "aurora", "m1", 701), TALLY__V1__RESULT_CODE__INSUFFICIENT_POINTS);
	assert_int_equal(available(&f, "aurora", "m1"), 700);
	assert_invariants(&f);
	fx_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_accrue_then_redeem_moves_points_and_keeps_books_balanced),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
