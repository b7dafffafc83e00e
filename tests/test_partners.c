/* Partner brands: exchange under agreements, obligations, settlement and confirmation. */
#include "tests/util.h"

#include <stdio.h>
#include <string.h>

#include "ledger/merkle.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name
#define PRICE 5000 /* price_micros set by c_agreement */
#define T0_PLUS_12_MONTHS 1798761600000LL /* 2027-01-01T00:00:00Z */

/* ---- helpers ---------------------------------------------------------------------- */

/* Applies c, expects `code` and a message naming `field`, and that nothing changed. */
static void expect_unchanged(struct fx *f, Tally__V1__Command *c, Tally__V1__ResultCode code,
			     const char *field)
{
	struct snap before = snap_take(f);
	Tally__V1__CommandResult *r = expect(f, c, code);
	if (field != NULL && strstr(r->message, field) == NULL)
		fail_msg("message \"%s\" does not name %s", r->message, field);
	assert_int_equal(r->entry_seq, 0);
	struct snap after = snap_take(f);
	assert_snap_equal(&before, &after);
}

static Tally__V1__QueryResult *obligations(struct fx *f, const char *a, const char *b)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__ListObligations g = TALLY__V1__LIST_OBLIGATIONS__INIT;
	g.brand_a = (char *)a;
	g.brand_b = (char *)b;
	q.q_case = TALLY__V1__QUERY__Q_OBLIGATIONS;
	q.obligations = &g;
	Tally__V1__QueryResult *res = query(f, &q, admin(f));
	assert_int_equal(res->code, CODE(OK));
	return res;
}

static Tally__V1__QueryResult *settlements(struct fx *f, const char *a, const char *b)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__ListSettlements g = TALLY__V1__LIST_SETTLEMENTS__INIT;
	g.brand_a = (char *)a;
	g.brand_b = (char *)b;
	q.q_case = TALLY__V1__QUERY__Q_SETTLEMENTS;
	q.settlements = &g;
	Tally__V1__QueryResult *res = query(f, &q, admin(f));
	assert_int_equal(res->code, CODE(OK));
	return res;
}

static Tally__V1__Settlement *settlement(struct fx *f, uint64_t id)
{
	Tally__V1__QueryResult *res = settlements(f, "b1", "b2");
	for (size_t i = 0; i < res->n_settlements; i++)
		if (res->settlements[i]->id == id)
			return res->settlements[i];
	fail_msg("settlement %llu not listed", (unsigned long long)id);
	return NULL;
}

static Tally__V1__SetAgreement *agreement_body(Tally__V1__Command *c)
{
	assert_int_equal(c->body_case, TALLY__V1__COMMAND__BODY_SET_AGREEMENT);
	return c->set_agreement;
}

/* Brands b1 (points never expire) and b2 (12 months), members m1 and m2 with
 * `points` in b1 each. */
static void setup_pair(struct fx *f, int64_t points)
{
	setup_brand(f, "b1", 0);
	setup_brand(f, "b2", 12);
	const char *ms[] = {"m1", "m2"};
	setup_members(f, ms, 2);
	if (points > 0) {
		ok(f, c_accrue(f, admin(f), "b1", "m1", points));
		ok(f, c_accrue(f, admin(f), "b1", "m2", points));
	}
}

static int64_t posting_sum(const Tally__V1__Entry *e, const char *brand)
{
	int64_t sum = 0;
	for (size_t i = 0; i < e->n_postings; i++)
		if (strcmp(e->postings[i]->brand, brand) == 0)
			sum += e->postings[i]->points;
	return sum;
}

static const Tally__V1__Posting *find_posting(const Tally__V1__Entry *e, const char *brand,
					      Tally__V1__SystemAccount acct)
{
	for (size_t i = 0; i < e->n_postings; i++)
		if (strcmp(e->postings[i]->brand, brand) == 0 && e->postings[i]->account == acct)
			return e->postings[i];
	fail_msg("entry %llu has no posting of %s/%d", (unsigned long long)e->seq, brand, (int)acct);
	return NULL;
}

/* ---- exchange ----------------------------------------------------------------------- */

static void test_exchange_converts_at_floor_rate_and_posts_balanced_in_both_brands(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 5000);
	ok(&f, c_agreement(&f, admin(&f), "b1", "b2", 3, 7));
	Tally__V1__CommandResult *r = ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 1000));
	assert_int_equal(r->points, 428); /* floor(1000 * 3 / 7) */
	assert_int_equal(r->available, 4000);
	uint64_t seq = r->entry_seq;
	assert_true(seq > 0);

	/* Both accounts moved: source down by the source points, destination up. */
	assert_int_equal(available(&f, "b1", "m1"), 4000);
	Tally__V1__Account *dst = account(&f, "b2", "m1");
	assert_int_equal(dst->available, 428);
	assert_int_equal(dst->earned, 428);
	assert_int_equal(available(&f, "b1", "m2"), 5000);

	/* Four postings, each brand summing to zero on its own. */
	Tally__V1__Entry *e = entry_at(&f, seq);
	assert_int_equal(e->n_postings, 4);
	assert_int_equal(posting_sum(e, "b1"), 0);
	assert_int_equal(posting_sum(e, "b2"), 0);
	const Tally__V1__Posting *p = find_posting(e, "b1", TALLY__V1__SYSTEM_ACCOUNT__MEMBER);
	assert_string_equal(p->member, "m1");
	assert_int_equal(p->points, -1000);
	p = find_posting(e, "b1", TALLY__V1__SYSTEM_ACCOUNT__CLEARING);
	assert_string_equal(p->partner, "b2");
	assert_int_equal(p->points, 1000);
	p = find_posting(e, "b2", TALLY__V1__SYSTEM_ACCOUNT__CLEARING);
	assert_string_equal(p->partner, "b1");
	assert_int_equal(p->points, -428);
	p = find_posting(e, "b2", TALLY__V1__SYSTEM_ACCOUNT__MEMBER);
	assert_string_equal(p->member, "m1");
	assert_int_equal(p->points, 428);

	/* The destination lot follows the destination brand's policy (12 months), not
	 * the source's (never). */
	assert_int_equal(dst->n_lots, 1);
	assert_int_equal(dst->lots[0]->expiry_ms, T0_PLUS_12_MONTHS);
	assert_int_equal(dst->lots[0]->points, 428);
	assert_int_equal(e->n_lots, 1);
	assert_int_equal(e->lots[0]->expiry_ms, T0_PLUS_12_MONTHS);
	assert_int_equal(e->lots[0]->points, 428);

	/* b1 owes b2 the converted points at the agreed price. */
	Tally__V1__QueryResult *res = obligations(&f, "b2", "b1");
	assert_int_equal(res->n_obligations, 1);
	Tally__V1__Obligation *o = res->obligations[0];
	assert_int_equal(o->seq, seq);
	assert_string_equal(o->payer, "b1");
	assert_string_equal(o->payee, "b2");
	assert_int_equal(o->points, 428);
	assert_int_equal(o->amount_micros, 428 * PRICE);
	assert_int_equal(o->time_ms, f.now_ms);
	assert_invariants(&f);
	fx_close(&f);
}

/* An account holding TALLY_ACCOUNT_LOTS_EXACT_MAX lots takes exchanged points into the
 * lot of their expiry's month end, and the entry names that lot. */
static void test_exchange_into_a_full_account_goes_to_the_lot_of_its_month_end(void **state)
{
	(void)state;
	enum { MINUTE = 60000 };
	const int64_t feb_2027 = 1801440000000LL; /* 2027-02-01T00:00:00Z */
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 5000);
	ok(&f, c_set_rules(&f, TALLY_RULES_BOUNDED_LOTS));
	ok(&f, c_agreement(&f, admin(&f), "b1", "b2", 1, 1));
	int64_t t0 = f.now_ms;
	for (int64_t i = 1; i <= TALLY_ACCOUNT_LOTS_EXACT_MAX; i++) {
		f.now_ms = t0 + i * MINUTE;
		ok(&f, c_accrue(&f, admin(&f), "b2", "m1", 1));
	}
	assert_int_equal(account(&f, "b2", "m1")->n_lots, TALLY_ACCOUNT_LOTS_EXACT_MAX);
	f.now_ms += MINUTE; /* its own expiry would be 2027-01-01T04:17Z */
	Tally__V1__CommandResult *r = ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 10));
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->n_lots, 1);
	assert_int_equal(e->lots[0]->expiry_ms, feb_2027);
	assert_int_equal(e->lots[0]->points, 10);
	Tally__V1__Account *dst = account(&f, "b2", "m1");
	assert_int_equal(dst->n_lots, TALLY_ACCOUNT_LOTS_EXACT_MAX + 1);
	assert_int_equal(dst->lots[dst->n_lots - 1]->expiry_ms, feb_2027);
	assert_int_equal(dst->lots[dst->n_lots - 1]->points, 10);
	assert_int_equal(dst->available, TALLY_ACCOUNT_LOTS_EXACT_MAX + 10);
	assert_invariants(&f);
	fx_close(&f);
}

/* Under the first rules (before the ledger's set_rules entry) an exchange into an
 * account holding TALLY_ACCOUNT_LOTS_RULES_1_MAX lots is refused and changes nothing,
 * as before the bounded lots; once the rules are switched, the same exchange goes to
 * the lot of its expiry's month end. */
static void test_the_first_rules_refuse_an_exchange_into_an_account_at_their_cap(void **state)
{
	(void)state;
	enum { MAX = TALLY_ACCOUNT_LOTS_RULES_1_MAX, FEEDERS = 100, PER_FEEDER = MAX / FEEDERS };
	const int64_t feb_2027 = 1801440000000LL; /* 2027-02-01T00:00:00Z */
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 5000);
	ok(&f, c_agreement(&f, admin(&f), "b1", "b2", 1, 1));
	/* One accrual per millisecond makes one lot; feeder accounts of 100 lots each,
	 * given to m1 by transfers (the receiver keeps the expiries), keep every record
	 * rewritten small until the last. */
	char feeders[FEEDERS][16];
	for (int k = 0; k < FEEDERS; k++) {
		snprintf(feeders[k], sizeof(feeders[k]), "f%d", k);
		ok(&f, c_member(&f, admin(&f), feeders[k]));
	}
	int64_t t0 = f.now_ms;
	for (int64_t i = 0; i < MAX; i++) {
		f.now_ms = t0 + i;
		Tally__V1__CommandResult *r = apply1(&f, c_accrue(&f, admin(&f), "b2", feeders[i % FEEDERS], 1));
		if (r->code != CODE(OK))
			fail_msg("accrual %lld: %s: %s", (long long)i, tally_result_name(r->code), r->message);
	}
	for (int k = 0; k < FEEDERS; k++)
		ok(&f, c_transfer(&f, admin(&f), "b2", feeders[k], "m1", PER_FEEDER));
	assert_int_equal(account(&f, "b2", "m1")->n_lots, MAX);

	f.now_ms = t0 + MAX; /* a new expiry: lot MAX + 1 */
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 10), CODE(LIMIT_EXCEEDED),
			 "lots");
	assert_int_equal(account(&f, "b1", "m1")->available, 5000);

	ok(&f, c_set_rules(&f, TALLY_RULES_BOUNDED_LOTS));
	Tally__V1__CommandResult *r = ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 10));
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->n_lots, 1);
	assert_int_equal(e->lots[0]->expiry_ms, feb_2027);
	Tally__V1__Account *dst = account(&f, "b2", "m1");
	assert_int_equal(dst->n_lots, MAX + 1);
	assert_int_equal(dst->available, MAX + 10);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_exchange_into_never_expiring_brand_creates_a_lot_without_expiry(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 0);
	ok(&f, c_accrue(&f, admin(&f), "b2", "m1", 1000)); /* a lot expiring in 12 months */
	ok(&f, c_agreement(&f, admin(&f), "b2", "b1", 1, 2));
	Tally__V1__CommandResult *r = ok(&f, c_exchange(&f, admin(&f), "b2", "b1", "m1", 701));
	assert_int_equal(r->points, 350); /* floor(701 / 2) */
	assert_int_equal(r->available, 299);
	Tally__V1__Account *dst = account(&f, "b1", "m1");
	assert_int_equal(dst->available, 350);
	assert_int_equal(dst->n_lots, 1);
	assert_int_equal(dst->lots[0]->expiry_ms, 0);
	Tally__V1__Account *src = account(&f, "b2", "m1");
	assert_int_equal(src->n_lots, 1);
	assert_int_equal(src->lots[0]->expiry_ms, T0_PLUS_12_MONTHS);
	assert_int_equal(src->lots[0]->points, 299);
	Tally__V1__Obligation *o = obligations(&f, "b1", "b2")->obligations[0];
	assert_string_equal(o->payer, "b2");
	assert_string_equal(o->payee, "b1");
	assert_int_equal(o->amount_micros, 350 * PRICE);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_exchange_without_an_active_agreement_is_no_agreement(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 5000);
	/* No agreement at all. */
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 100), CODE(NO_AGREEMENT), NULL);
	/* An agreement one way does not cover the other direction. */
	ok(&f, c_agreement(&f, admin(&f), "b2", "b1", 1, 1));
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 100), CODE(NO_AGREEMENT), NULL);
	/* A suspended agreement. */
	Tally__V1__Command *c = c_agreement(&f, admin(&f), "b1", "b2", 1, 1);
	agreement_body(c)->active = false;
	ok(&f, c);
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 100), CODE(NO_AGREEMENT), NULL);
	/* Re-activated, it works. */
	ok(&f, c_agreement(&f, admin(&f), "b1", "b2", 1, 1));
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 100));
	assert_int_equal(available(&f, "b2", "m1"), 100);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_exchange_outside_the_validity_window_is_no_agreement(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 5000);
	int64_t from = f.now_ms + 3600000, until = from + DAY_MS;
	Tally__V1__Command *c = c_agreement(&f, admin(&f), "b1", "b2", 1, 1);
	agreement_body(c)->valid_from_ms = from;
	agreement_body(c)->valid_until_ms = until;
	ok(&f, c);
	/* Before valid_from. */
	f.now_ms = from - 1;
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 100), CODE(NO_AGREEMENT), NULL);
	/* At valid_from (inclusive) and just before valid_until. */
	f.now_ms = from;
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 100));
	f.now_ms = until - 1;
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 100));
	/* At valid_until (exclusive) and after. */
	f.now_ms = until;
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 100), CODE(NO_AGREEMENT), NULL);
	f.now_ms = until + DAY_MS;
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 100), CODE(NO_AGREEMENT), NULL);
	assert_int_equal(available(&f, "b1", "m1"), 4800);
	assert_int_equal(available(&f, "b2", "m1"), 200);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_exchange_below_minimum_or_above_maximum_is_limit_exceeded(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 5000);
	Tally__V1__Command *c = c_agreement(&f, admin(&f), "b1", "b2", 1, 1);
	agreement_body(c)->min_points = 100;
	agreement_body(c)->max_points = 1000;
	ok(&f, c);
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 99), CODE(LIMIT_EXCEEDED), "points");
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 1001), CODE(LIMIT_EXCEEDED), "points");
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 100));
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 1000));
	assert_int_equal(available(&f, "b2", "m1"), 1100);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_exchange_daily_cap_per_member_resets_on_the_next_utc_day(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 5000);
	Tally__V1__Command *c = c_agreement(&f, admin(&f), "b1", "b2", 1, 1);
	agreement_body(c)->daily_cap_points = 1000;
	ok(&f, c);
	f.now_ms = T0_MS + 10 * 3600000LL; /* 10:00 UTC */
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 600));
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 401), CODE(LIMIT_EXCEEDED), "points");
	/* The cap is per member: m2 has its own. */
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m2", 1000));
	/* The rest of m1's cap, to the last millisecond of the UTC day. */
	f.now_ms = T0_MS + DAY_MS - 1;
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 400));
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 1), CODE(LIMIT_EXCEEDED), "points");
	/* Midnight UTC: a new day, a new cap. */
	f.now_ms = T0_MS + DAY_MS;
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 1000));
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 1), CODE(LIMIT_EXCEEDED), "points");
	assert_int_equal(available(&f, "b1", "m1"), 3000);
	assert_int_equal(available(&f, "b2", "m1"), 2000);
	assert_int_equal(available(&f, "b2", "m2"), 1000);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_exchange_converting_to_zero_points_is_limit_exceeded(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 5000);
	ok(&f, c_agreement(&f, admin(&f), "b1", "b2", 1, 1000));
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 999), CODE(LIMIT_EXCEEDED), "points");
	Tally__V1__CommandResult *r = ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 1999));
	assert_int_equal(r->points, 1);
	assert_int_equal(available(&f, "b1", "m1"), 5000 - 1999);
	assert_int_equal(available(&f, "b2", "m1"), 1);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_exchange_without_enough_source_points_is_insufficient(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 500);
	ok(&f, c_agreement(&f, admin(&f), "b1", "b2", 2, 1));
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 501),
			 CODE(INSUFFICIENT_POINTS), NULL);
	/* Points in the destination brand do not count. */
	ok(&f, c_accrue(&f, admin(&f), "b2", "m1", 10000));
	expect_unchanged(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 501),
			 CODE(INSUFFICIENT_POINTS), NULL);
	Tally__V1__CommandResult *r = ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 500));
	assert_int_equal(r->points, 1000);
	assert_int_equal(r->available, 0);
	assert_int_equal(available(&f, "b2", "m1"), 11000);
	assert_int_equal(obligations(&f, "b1", "b2")->n_obligations, 1);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_exchange_retried_with_its_request_id_replays_without_a_second_effect(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 1000);
	ok(&f, c_agreement(&f, admin(&f), "b1", "b2", 3, 7));
	Tally__V1__Principal *p = who(&f, TALLY__V1__ROLE__PARTNER, "p-b2", "b2");
	Tally__V1__Command *c = c_exchange(&f, p, "b1", "b2", "m1", 100);
	Tally__V1__CommandResult *r = ok(&f, c);
	uint64_t seq = r->entry_seq;
	assert_false(r->replay);
	struct snap before = snap_take(&f);
	r = ok(&f, c);
	assert_true(r->replay);
	assert_int_equal(r->entry_seq, seq);
	assert_int_equal(r->points, 42);
	struct snap after = snap_take(&f);
	assert_snap_equal(&before, &after);
	Tally__V1__Command *other = c_exchange(&f, p, "b1", "b2", "m1", 200);
	other->request_id = c->request_id;
	expect_unchanged(&f, other, CODE(IDEMPOTENCY_CONFLICT), "request_id");
	assert_int_equal(available(&f, "b1", "m1"), 900);
	assert_int_equal(available(&f, "b2", "m1"), 42);
	assert_int_equal(obligations(&f, "b1", "b2")->n_obligations, 1);
	assert_invariants(&f);
	fx_close(&f);
}

/* ---- settlement --------------------------------------------------------------------- */

static void test_settle_nets_both_directions_up_to_the_cutoff_with_the_journal_root(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 10000);
	ok(&f, c_accrue(&f, admin(&f), "b2", "m1", 10000));
	ok(&f, c_agreement(&f, admin(&f), "b1", "b2", 1, 1)); /* 5000 micros a point */
	Tally__V1__Command *c = c_agreement(&f, admin(&f), "b2", "b1", 1, 1);
	agreement_body(c)->price_micros = 3000;
	ok(&f, c);

	f.now_ms = T0_MS + 1000;
	uint64_t s1 = ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 100))->entry_seq;
	ok(&f, c_exchange(&f, admin(&f), "b2", "b1", "m1", 50));
	f.now_ms = T0_MS + 2000;
	uint64_t s3 = ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 200))->entry_seq;
	struct snap cut = snap_take(&f); /* the journal as of the cut-off */
	f.now_ms = T0_MS + 3000;
	uint64_t s4 = ok(&f, c_exchange(&f, admin(&f), "b2", "b1", "m1", 1000))->entry_seq;
	assert_int_equal(obligations(&f, "b1", "b2")->n_obligations, 4);

	/* Brands given in either order; the record orders them. */
	f.now_ms = T0_MS + 4000;
	Tally__V1__CommandResult *r = ok(&f, c_settle(&f, admin(&f), "b2", "b1", T0_MS + 2000));
	assert_int_equal(r->count, 3);
	assert_int_equal(r->settlement_id, r->entry_seq);
	Tally__V1__Settlement *s = settlement(&f, r->settlement_id);
	assert_string_equal(s->brand_a, "b1");
	assert_string_equal(s->brand_b, "b2");
	assert_int_equal(s->until_ms, T0_MS + 2000);
	assert_int_equal(s->gross_a_to_b_micros, 300 * 5000);
	assert_int_equal(s->gross_b_to_a_micros, 50 * 3000);
	assert_int_equal(s->net_micros, 300 * 5000 - 50 * 3000);
	assert_string_equal(s->payer, "b1");
	assert_string_equal(s->payee, "b2");
	assert_int_equal(s->count, 3);
	assert_int_equal(s->first_seq, s1);
	assert_int_equal(s->last_seq, s3);
	assert_false(s->confirmed);
	assert_int_equal(s->created_ms, T0_MS + 4000);

	/* tree_size counts the entries at or before the cut-off... */
	uint64_t n = 0;
	for (uint64_t seq = 1; seq < r->entry_seq; seq++)
		if (entry_at(&f, seq)->time_ms <= T0_MS + 2000)
			n++;
	assert_int_equal(s->tree_size, n);
	assert_int_equal(s->tree_size, cut.size);
	/* ...and merkle_root is the journal root at that size, a prefix of today's tree. */
	assert_int_equal(s->merkle_root.len, 32);
	assert_memory_equal(s->merkle_root.data, cut.root, 32);
	struct snap now = snap_take(&f);
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetConsistency g = TALLY__V1__GET_CONSISTENCY__INIT;
	g.old_size = s->tree_size;
	q.q_case = TALLY__V1__QUERY__Q_CONSISTENCY;
	q.consistency = &g;
	Tally__V1__QueryResult *res = query(&f, &q, admin(&f));
	assert_int_equal(res->code, CODE(OK));
	assert_int_equal(res->consistency->new_size, now.size);
	uint8_t path[TALLY_MERKLE_PROOF_MAX][32];
	assert_true(res->consistency->n_path <= TALLY_MERKLE_PROOF_MAX);
	for (size_t i = 0; i < res->consistency->n_path; i++) {
		assert_int_equal(res->consistency->path[i].len, 32);
		memcpy(path[i], res->consistency->path[i].data, 32);
	}
	assert_int_equal(tally_merkle_verify_consistency(s->tree_size, now.size, s->merkle_root.data,
							 now.root, (const uint8_t(*)[32])path,
							 res->consistency->n_path), 0);

	/* The obligation after the cut-off stays open. */
	res = obligations(&f, "b1", "b2");
	assert_int_equal(res->n_obligations, 1);
	assert_int_equal(res->obligations[0]->seq, s4);

	/* Settling the same cut-off again finds nothing: never settled twice. */
	r = ok(&f, c_settle(&f, admin(&f), "b1", "b2", T0_MS + 2000));
	assert_int_equal(r->count, 0);
	s = settlement(&f, r->settlement_id);
	assert_int_equal(s->count, 0);
	assert_int_equal(s->gross_a_to_b_micros, 0);
	assert_int_equal(s->gross_b_to_a_micros, 0);
	assert_int_equal(s->net_micros, 0);
	assert_string_equal(s->payer, "");
	assert_string_equal(s->payee, "");
	assert_int_equal(obligations(&f, "b1", "b2")->n_obligations, 1);

	/* A later cut-off takes the rest, in the other direction. */
	f.now_ms = T0_MS + 5000;
	r = ok(&f, c_settle(&f, admin(&f), "b1", "b2", T0_MS + 3000));
	assert_int_equal(r->count, 1);
	s = settlement(&f, r->settlement_id);
	assert_int_equal(s->gross_a_to_b_micros, 0);
	assert_int_equal(s->gross_b_to_a_micros, 1000 * 3000);
	assert_int_equal(s->net_micros, 1000 * 3000);
	assert_string_equal(s->payer, "b2");
	assert_string_equal(s->payee, "b1");
	assert_int_equal(s->first_seq, s4);
	assert_int_equal(s->last_seq, s4);
	assert_int_equal(obligations(&f, "b1", "b2")->n_obligations, 0);
	assert_int_equal(settlements(&f, "b1", "b2")->n_settlements, 3);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_settle_does_not_touch_obligations_of_other_pairs(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 10000);
	setup_brand(&f, "b3", 0);
	ok(&f, c_agreement(&f, admin(&f), "b1", "b2", 1, 1));
	ok(&f, c_agreement(&f, admin(&f), "b1", "b3", 1, 1));
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 10));
	ok(&f, c_exchange(&f, admin(&f), "b1", "b3", "m1", 20));
	f.now_ms += 1000;
	Tally__V1__CommandResult *r = ok(&f, c_settle(&f, admin(&f), "b1", "b3", f.now_ms - 1));
	assert_int_equal(r->count, 1);
	assert_int_equal(obligations(&f, "b1", "b2")->n_obligations, 1);
	assert_int_equal(obligations(&f, "b1", "b3")->n_obligations, 0);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_settle_with_a_cutoff_not_in_the_past_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 1000);
	ok(&f, c_agreement(&f, admin(&f), "b1", "b2", 1, 1));
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 10));
	expect_unchanged(&f, c_settle(&f, admin(&f), "b1", "b2", f.now_ms), CODE(INVALID_ARGUMENT), "until_ms");
	expect_unchanged(&f, c_settle(&f, admin(&f), "b1", "b2", f.now_ms + DAY_MS), CODE(INVALID_ARGUMENT), "until_ms");
	expect_unchanged(&f, c_settle(&f, admin(&f), "b1", "b2", -1), CODE(INVALID_ARGUMENT), "until_ms");
	assert_int_equal(obligations(&f, "b1", "b2")->n_obligations, 1);
	assert_int_equal(settlements(&f, "b1", "b2")->n_settlements, 0);
	/* A cut-off before the journal began settles nothing, at the empty tree. */
	f.now_ms += 1;
	Tally__V1__CommandResult *r = ok(&f, c_settle(&f, admin(&f), "b1", "b2", 0));
	assert_int_equal(r->count, 0);
	Tally__V1__Settlement *s = settlement(&f, r->settlement_id);
	uint8_t empty[32];
	tally_merkle_empty_root(empty);
	assert_int_equal(s->tree_size, 0);
	assert_memory_equal(s->merkle_root.data, empty, 32);
	assert_int_equal(ok(&f, c_settle(&f, admin(&f), "b1", "b2", f.now_ms - 1))->count, 1);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_settle_whose_gross_would_overflow_is_limit_exceeded_not_a_failed_batch(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 0);
	ok(&f, c_accrue(&f, admin(&f), "b1", "m1", 6000000));
	Tally__V1__Command *c = c_agreement(&f, admin(&f), "b1", "b2", 1, 1);
	agreement_body(c)->price_micros = TALLY_POINTS_MAX; /* the highest price allowed */
	ok(&f, c);
	/* Each obligation is 3e6 x 1e12 = 3e18 micros, within TALLY_BALANCE_MAX; two are not. */
	f.now_ms = T0_MS + 1000;
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 3000000));
	f.now_ms = T0_MS + 2000;
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 3000000));
	f.now_ms = T0_MS + 3000;
	expect_unchanged(&f, c_settle(&f, admin(&f), "b1", "b2", T0_MS + 2000), CODE(LIMIT_EXCEEDED),
			 "until_ms");
	assert_int_equal(obligations(&f, "b1", "b2")->n_obligations, 2);
	/* An earlier cut-off splits the obligations into settlements that fit. */
	Tally__V1__CommandResult *r = ok(&f, c_settle(&f, admin(&f), "b1", "b2", T0_MS + 1000));
	assert_int_equal(r->count, 1);
	assert_int_equal(settlement(&f, r->settlement_id)->net_micros, 3000000000000000000LL);
	r = ok(&f, c_settle(&f, admin(&f), "b1", "b2", T0_MS + 2000));
	assert_int_equal(r->count, 1);
	assert_int_equal(obligations(&f, "b1", "b2")->n_obligations, 0);
	assert_invariants(&f);
	fx_close(&f);
}

/* ---- confirmation ------------------------------------------------------------------- */

static void test_only_the_payee_brand_confirms_a_settlement_once(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 1000);
	ok(&f, c_agreement(&f, admin(&f), "b1", "b2", 1, 1));
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 10));
	f.now_ms += 1000;
	uint64_t id = ok(&f, c_settle(&f, admin(&f), "b1", "b2", f.now_ms - 1))->settlement_id;
	Tally__V1__Settlement *s = settlement(&f, id);
	assert_string_equal(s->payer, "b1");
	assert_string_equal(s->payee, "b2");

	Tally__V1__Principal *payer = who(&f, TALLY__V1__ROLE__PARTNER, "p-b1", "b1");
	Tally__V1__Principal *payee = who(&f, TALLY__V1__ROLE__PARTNER, "p-b2", "b2");
	Tally__V1__Principal *other = who(&f, TALLY__V1__ROLE__PARTNER, "p-b3", "b3");
	expect_unchanged(&f, c_confirm(&f, payer, id), CODE(PERMISSION_DENIED), "settlement_id");
	expect_unchanged(&f, c_confirm(&f, other, id), CODE(PERMISSION_DENIED), "settlement_id");
	assert_false(settlement(&f, id)->confirmed);

	f.now_ms += 1000;
	Tally__V1__CommandResult *r = ok(&f, c_confirm(&f, payee, id));
	assert_int_equal(r->settlement_id, id);
	s = settlement(&f, id);
	assert_true(s->confirmed);
	assert_int_equal(s->confirmed_ms, f.now_ms);
	assert_string_equal(s->confirmed_by, "p-b2");

	/* A second confirmation (a new request, not a retry) is refused. */
	expect_unchanged(&f, c_confirm(&f, payee, id), CODE(ALREADY_EXISTS), "settlement_id");
	expect_unchanged(&f, c_confirm(&f, admin(&f), id), CODE(ALREADY_EXISTS), "settlement_id");
	expect_unchanged(&f, c_confirm(&f, payee, id + 1000), CODE(NOT_FOUND), "settlement_id");
	expect_unchanged(&f, c_confirm(&f, payee, 0), CODE(NOT_FOUND), "settlement_id");
	assert_true(settlement(&f, id)->confirmed);
	assert_invariants(&f);
	fx_close(&f);
}

static bool lists_seq(struct fx *f, const Tally__V1__Principal *p, const char *brand, uint64_t seq)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__ListEntries g = TALLY__V1__LIST_ENTRIES__INIT;
	g.brand = (char *)brand;
	g.limit = 1000;
	q.q_case = TALLY__V1__QUERY__Q_ENTRIES;
	q.entries = &g;
	Tally__V1__QueryResult *res = query(f, &q, p);
	assert_int_equal(res->code, CODE(OK));
	for (size_t i = 0; i < res->n_entries; i++)
		if (res->entries[i]->seq == seq)
			return true;
	return false;
}

/* GetEntry with an inclusion proof, checked against the root it came with. */
static void assert_entry_readable(struct fx *f, const Tally__V1__Principal *p, uint64_t seq)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetEntry g = TALLY__V1__GET_ENTRY__INIT;
	g.seq = seq;
	g.proof = true;
	q.q_case = TALLY__V1__QUERY__Q_ENTRY;
	q.entry = &g;
	Tally__V1__QueryResult *res = query(f, &q, p);
	if (res->code != CODE(OK))
		fail_msg("entry %llu for %s: %s: %s", (unsigned long long)seq, p->key_name,
			 tally_result_name(res->code), res->message);
	uint8_t leaf[32], path[TALLY_MERKLE_PROOF_MAX][32];
	tally_merkle_leaf_hash(res->entry->entry.data, res->entry->entry.len, leaf);
	assert_true(res->proof->n_path <= TALLY_MERKLE_PROOF_MAX);
	for (size_t i = 0; i < res->proof->n_path; i++)
		memcpy(path[i], res->proof->path[i].data, 32);
	assert_int_equal(tally_merkle_verify_inclusion(leaf, seq - 1, res->proof->tree_size,
						       (const uint8_t(*)[32])path, res->proof->n_path,
						       res->proof->root.data), 0);
}

static void test_both_brands_of_a_pair_read_its_agreement_and_settlement_entries(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_pair(&f, 1000);
	uint64_t ag = ok(&f, c_agreement(&f, admin(&f), "b1", "b2", 1, 1))->entry_seq;
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 10));
	f.now_ms += 1000;
	/* Named with the payee first, so neither brand is special by order. */
	uint64_t st = ok(&f, c_settle(&f, admin(&f), "b2", "b1", f.now_ms - 1))->entry_seq;
	Tally__V1__Principal *p1 = who(&f, TALLY__V1__ROLE__PARTNER, "p-b1", "b1");
	Tally__V1__Principal *p2 = who(&f, TALLY__V1__ROLE__PARTNER, "p-b2", "b2");
	const Tally__V1__Principal *ps[] = {p1, p2};
	const char *brands[] = {"b1", "b2"};
	for (int i = 0; i < 2; i++) {
		assert_entry_readable(&f, ps[i], ag);
		assert_entry_readable(&f, ps[i], st);
		if (!lists_seq(&f, ps[i], brands[i], ag))
			fail_msg("agreement entry not listed under %s", brands[i]);
		if (!lists_seq(&f, ps[i], brands[i], st))
			fail_msg("settle entry not listed under %s", brands[i]);
	}
	/* A third brand sees neither. */
	setup_brand(&f, "b3", 0);
	Tally__V1__Principal *p3 = who(&f, TALLY__V1__ROLE__PARTNER, "p-b3", "b3");
	assert_false(lists_seq(&f, p3, "b3", st));
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetEntry g = TALLY__V1__GET_ENTRY__INIT;
	g.seq = st;
	q.q_case = TALLY__V1__QUERY__Q_ENTRY;
	q.entry = &g;
	assert_int_equal(query(&f, &q, p3)->code, CODE(PERMISSION_DENIED));
	assert_invariants(&f);
	fx_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exchange_converts_at_floor_rate_and_posts_balanced_in_both_brands),
		cmocka_unit_test(test_exchange_into_never_expiring_brand_creates_a_lot_without_expiry),
		cmocka_unit_test(test_exchange_into_a_full_account_goes_to_the_lot_of_its_month_end),
		cmocka_unit_test(test_the_first_rules_refuse_an_exchange_into_an_account_at_their_cap),
		cmocka_unit_test(test_exchange_without_an_active_agreement_is_no_agreement),
		cmocka_unit_test(test_exchange_outside_the_validity_window_is_no_agreement),
		cmocka_unit_test(test_exchange_below_minimum_or_above_maximum_is_limit_exceeded),
		cmocka_unit_test(test_exchange_daily_cap_per_member_resets_on_the_next_utc_day),
		cmocka_unit_test(test_exchange_converting_to_zero_points_is_limit_exceeded),
		cmocka_unit_test(test_exchange_without_enough_source_points_is_insufficient),
		cmocka_unit_test(test_exchange_retried_with_its_request_id_replays_without_a_second_effect),
		cmocka_unit_test(test_settle_nets_both_directions_up_to_the_cutoff_with_the_journal_root),
		cmocka_unit_test(test_settle_does_not_touch_obligations_of_other_pairs),
		cmocka_unit_test(test_settle_with_a_cutoff_not_in_the_past_is_invalid_argument),
		cmocka_unit_test(test_settle_whose_gross_would_overflow_is_limit_exceeded_not_a_failed_batch),
		cmocka_unit_test(test_both_brands_of_a_pair_read_its_agreement_and_settlement_entries),
		cmocka_unit_test(test_only_the_payee_brand_confirms_a_settlement_once),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
