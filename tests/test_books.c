/*
 * tally-audit's books (tools/audit/books.c) on entries made here: the account table
 * growing in the middle of the journal, balances and totals from postings alone, and
 * the rules a hostile journal breaks.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "tools/audit/books.h"

#define OK TALLY__V1__RESULT_CODE__OK

static Tally__V1__CommandResult ok_result = TALLY__V1__COMMAND_RESULT__INIT;

static void posting(Tally__V1__Posting *p, const char *member, Tally__V1__SystemAccount acct,
		    int64_t points)
{
	tally__v1__posting__init(p);
	p->brand = (char *)"b";
	p->account = acct;
	p->member = (char *)(member != NULL ? member : "");
	p->points = points;
}

/* Books one entry of seq with these postings; returns what audit_books_apply did. */
static int book(struct audit_books *b, uint64_t seq, Tally__V1__Posting *ps, size_t n,
		char *err, size_t cap)
{
	Tally__V1__Posting *ptrs[4];
	assert_true(n <= 4);
	for (size_t i = 0; i < n; i++)
		ptrs[i] = &ps[i];
	Tally__V1__Entry e = TALLY__V1__ENTRY__INIT;
	e.seq = seq;
	e.time_ms = 1000;
	e.kind = TALLY__V1__ENTRY_KIND__COMMAND;
	e.result = &ok_result;
	e.postings = ptrs;
	e.n_postings = n;
	e.brand = (char *)"";
	e.member = (char *)"";
	return audit_books_apply(b, &e, err, cap);
}

static void register_brand(struct audit_books *b, char *err, size_t cap)
{
	Tally__V1__RegisterBrand r = TALLY__V1__REGISTER_BRAND__INIT;
	r.id = (char *)"b";
	r.currency = (char *)"EUR";
	r.point_value_micros = 10000;
	Tally__V1__Command c = TALLY__V1__COMMAND__INIT;
	c.body_case = TALLY__V1__COMMAND__BODY_REGISTER_BRAND;
	c.register_brand = &r;
	Tally__V1__Entry e = TALLY__V1__ENTRY__INIT;
	e.seq = 1;
	e.time_ms = 1000;
	e.kind = TALLY__V1__ENTRY_KIND__COMMAND;
	e.command = &c;
	e.result = &ok_result;
	e.brand = (char *)"b";
	e.member = (char *)"";
	assert_int_equal(audit_books_apply(b, &e, err, cap), 0);
}

/* Books with brand b registered. */
static void books_open(struct audit_books *b, char *err, size_t cap)
{
	ok_result.code = OK;
	assert_int_equal(audit_books_init(b, err, cap), 0);
	register_brand(b, err, cap);
}

/* A transfer to a new member once the table first made holds as many accounts as it
 * has room for: the table grows for that entry (before its postings point into it),
 * and both postings land on the right accounts. */
static void test_the_table_grows_in_the_middle_of_a_transfer(void **state)
{
	(void)state;
	static struct audit_books b;
	char err[256];
	books_open(&b, err, sizeof(err));
	uint64_t seq = 2;
	char name[32];
	size_t first_cap = b.cap_accounts;
	while (b.n_accounts < first_cap) { /* as many accounts as the table first holds */
		Tally__V1__Posting ps[2];
		snprintf(name, sizeof(name), "m%zu", b.n_accounts);
		posting(&ps[0], name, TALLY__V1__SYSTEM_ACCOUNT__MEMBER, 10);
		posting(&ps[1], NULL, TALLY__V1__SYSTEM_ACCOUNT__ISSUANCE, -10);
		assert_int_equal(book(&b, seq++, ps, 2, err, sizeof(err)), 0);
	}
	size_t full = b.n_accounts;
	Tally__V1__Posting ps[2];
	posting(&ps[0], "m0", TALLY__V1__SYSTEM_ACCOUNT__MEMBER, -4);
	posting(&ps[1], "newcomer", TALLY__V1__SYSTEM_ACCOUNT__MEMBER, 4);
	assert_int_equal(book(&b, seq++, ps, 2, err, sizeof(err)), 0);
	assert_int_equal(b.n_accounts, full + 1);
	assert_int_equal(audit_books_account(&b, "b", "m0")->available, 6);
	assert_int_equal(audit_books_account(&b, "b", "newcomer")->available, 4);
	assert_int_equal(audit_books_totals(&b, err, sizeof(err)), 0);
	assert_int_equal(b.brands[0].outstanding, (int64_t)full * 10);
	audit_books_free(&b);
}

static void test_postings_that_do_not_sum_to_zero_are_named(void **state)
{
	(void)state;
	static struct audit_books b;
	char err[256];
	books_open(&b, err, sizeof(err));
	Tally__V1__Posting ps[2];
	posting(&ps[0], "m", TALLY__V1__SYSTEM_ACCOUNT__MEMBER, 10);
	posting(&ps[1], NULL, TALLY__V1__SYSTEM_ACCOUNT__ISSUANCE, -9);
	assert_int_equal(book(&b, 2, ps, 2, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "entry 2: the postings in brand b sum to 1, not zero"));
	audit_books_free(&b);
}

static void test_a_balance_below_zero_is_named(void **state)
{
	(void)state;
	static struct audit_books b;
	char err[256];
	books_open(&b, err, sizeof(err));
	Tally__V1__Posting ps[2];
	posting(&ps[0], "m", TALLY__V1__SYSTEM_ACCOUNT__MEMBER, -5);
	posting(&ps[1], NULL, TALLY__V1__SYSTEM_ACCOUNT__REDEEMED, 5);
	assert_int_equal(book(&b, 2, ps, 2, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "b/m goes below zero"));
	audit_books_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_the_table_grows_in_the_middle_of_a_transfer),
		cmocka_unit_test(test_postings_that_do_not_sum_to_zero_are_named),
		cmocka_unit_test(test_a_balance_below_zero_is_named),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
