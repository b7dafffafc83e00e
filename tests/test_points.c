/*
 * The points of one brand, as the ledger promises them: accrual into lots with a
 * calendar expiry, qualifying points and tiers over a rolling window, redemption
 * first-expiring-first, holds (capture, void, timeout), reversals, transfers and
 * their limits, community caps, operator adjustments, the expire sweep,
 * idempotency, and double-entry postings.
 *
 * Each test sets up only what it needs, asserts what a client or an auditor can
 * observe (results, account records, journal entries, the digest) and ends with
 * the full invariant check. Where a test claims "nothing changes", no lot can
 * expire in its setup, so the digest must be identical before and after.
 */
#include "tests/util.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define CODE(name) TALLY__V1__RESULT_CODE__##name
#define KIND(name) TALLY__V1__ENTRY_KIND__##name
#define SYS(name) TALLY__V1__SYSTEM_ACCOUNT__##name
#define BUCKET(name) TALLY__V1__BUCKET__##name
#define HOUR_MS 3600000LL
#define MIN_MS 60000LL

/* ---- time ------------------------------------------------------------------------ */

/* UNIX ms of a UTC civil time (proleptic Gregorian, H. Hinnant's days_from_civil). */
static int64_t utc(int64_t y, int64_t mo, int64_t d, int64_t h, int64_t mi, int64_t s)
{
	y -= mo <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	int64_t days = era * 146097 + doe - 719468;
	return days * DAY_MS + h * HOUR_MS + mi * MIN_MS + s * 1000;
}

/* ---- principals ------------------------------------------------------------------ */

static Tally__V1__Principal *dealer(struct fx *f)
{
	return who(f, TALLY__V1__ROLE__DEALER, "dealer", "*");
}

static Tally__V1__Principal *mall(struct fx *f)
{
	return who(f, TALLY__V1__ROLE__MALL, "mall", "*");
}

static Tally__V1__Principal *community(struct fx *f)
{
	return who(f, TALLY__V1__ROLE__COMMUNITY, "community", "*");
}

static Tally__V1__Principal *timer(struct fx *f)
{
	return who(f, TALLY__V1__ROLE__SYSTEM, "timer", "*");
}

/* ---- command builders not in util.c ---------------------------------------------- */

/* The rules of a brand beyond its expiry. */
struct rules {
	uint32_t expiry_months;
	uint32_t tier_window_days;
	size_t n_tiers;
	const char *tier_names[4];
	int64_t tier_mins[4];
	int64_t transfer_max_points;
	int64_t transfer_daily_cap_points;
	int64_t community_daily_cap_points;
};

static Tally__V1__Command *c_brand_rules(struct fx *f, const char *id, const struct rules *ru)
{
	assert_true(ru->n_tiers <= 4);
	Tally__V1__Command *c = c_brand(f, admin(f), id, ru->expiry_months);
	Tally__V1__RegisterBrand *m = c->register_brand;
	m->tier_window_days = ru->tier_window_days;
	m->transfer_max_points = ru->transfer_max_points;
	m->transfer_daily_cap_points = ru->transfer_daily_cap_points;
	m->community_daily_cap_points = ru->community_daily_cap_points;
	m->n_tiers = ru->n_tiers;
	m->tiers = zalloc(f, (ru->n_tiers + 1) * sizeof(*m->tiers));
	for (size_t i = 0; i < ru->n_tiers; i++) {
		Tally__V1__Tier *t = zalloc(f, sizeof(*t));
		tally__v1__tier__init(t);
		t->name = sdup(f, ru->tier_names[i]);
		t->min_points = ru->tier_mins[i];
		m->tiers[i] = t;
	}
	return c;
}

static Tally__V1__Command *c_expire_max(struct fx *f, uint32_t max_items)
{
	Tally__V1__Command *c = c_expire(f, timer(f));
	c->expire->max_items = max_items;
	return c;
}

/* The same command content under a request id chosen by the test. */
static Tally__V1__Command *with_req(struct fx *f, Tally__V1__Command *c, const char *req)
{
	c->request_id = sdup(f, req);
	return c;
}

/* ---- setup ----------------------------------------------------------------------- */

static const char *const MEMBERS[] = {"m1", "m2", "m3", "m4"};

/* Brand `id` with `rules` and members m1..m4 open. */
static void setup_rules(struct fx *f, const char *id, const struct rules *ru)
{
	ok(f, c_brand_rules(f, id, ru));
	setup_members(f, MEMBERS, 4);
}

static void setup_plain(struct fx *f, const char *id, uint32_t expiry_months)
{
	setup_brand(f, id, expiry_months);
	setup_members(f, MEMBERS, 4);
}

/* ---- observations ---------------------------------------------------------------- */

static struct tally_digest digest(struct fx *f)
{
	struct tally_digest d;
	assert_int_equal(tally_ledger_digest(f->l, &d), 0);
	return d;
}

static void assert_unchanged(struct fx *f, const struct tally_digest *before)
{
	struct tally_digest now = digest(f);
	assert_int_equal(now.tree_size, before->tree_size);
	assert_memory_equal(now.state_digest, before->state_digest, 32);
	assert_memory_equal(now.root, before->root, 32);
}

static uint64_t tree_size(struct fx *f)
{
	return digest(f).tree_size;
}

/* Points of the account's lot that expires at expiry_ms (0 = never); 0 if none. */
static int64_t lot_points(const Tally__V1__Account *acct, int64_t expiry_ms)
{
	for (size_t i = 0; i < acct->n_lots; i++)
		if (acct->lots[i]->expiry_ms == expiry_ms)
			return acct->lots[i]->points;
	return 0;
}

static void assert_lot_move(const Tally__V1__Entry *e, size_t i, int64_t expiry_ms, int64_t points)
{
	assert_true(i < e->n_lots);
	assert_int_equal(e->lots[i]->expiry_ms, expiry_ms);
	assert_int_equal(e->lots[i]->points, points);
}

/* Sum of the postings of `e` on one account (member may be NULL for system ones). */
static int64_t posted(const Tally__V1__Entry *e, Tally__V1__SystemAccount acct, const char *member,
		      Tally__V1__Bucket bucket)
{
	int64_t sum = 0;
	for (size_t i = 0; i < e->n_postings; i++) {
		const Tally__V1__Posting *p = e->postings[i];
		if (p->account != acct)
			continue;
		if (acct == SYS(MEMBER) && (strcmp(p->member, member) != 0 || p->bucket != bucket))
			continue;
		sum += p->points;
	}
	return sum;
}

/* Every entry's postings sum to zero per brand. */
static void assert_entry_balanced(const Tally__V1__Entry *e)
{
	for (size_t i = 0; i < e->n_postings; i++) {
		int64_t sum = 0;
		for (size_t j = 0; j < e->n_postings; j++)
			if (strcmp(e->postings[j]->brand, e->postings[i]->brand) == 0)
				sum += e->postings[j]->points;
		if (sum != 0)
			fail_msg("entry %llu: postings of brand %s sum to %lld",
				 (unsigned long long)e->seq, e->postings[i]->brand, (long long)sum);
	}
}

static void assert_journal_balanced(struct fx *f)
{
	uint64_t n = tree_size(f);
	for (uint64_t seq = 1; seq <= n; seq++) {
		Tally__V1__Entry *e = entry_at(f, seq);
		assert_int_equal(e->seq, seq);
		assert_entry_balanced(e);
	}
}

/* How many entries of `kind` were appended after `from_seq`; *last gets the last. */
static size_t count_kind(struct fx *f, uint64_t from_seq, Tally__V1__EntryKind kind,
			 Tally__V1__Entry **last)
{
	size_t n = 0;
	uint64_t size = tree_size(f);
	for (uint64_t seq = from_seq + 1; seq <= size; seq++) {
		Tally__V1__Entry *e = entry_at(f, seq);
		if (e->kind == kind) {
			n++;
			if (last != NULL)
				*last = e;
		}
	}
	return n;
}

static const Tally__V1__HoldRecord *open_hold(const Tally__V1__Account *acct, uint64_t id)
{
	for (size_t i = 0; i < acct->n_holds; i++)
		if (acct->holds[i]->id == id)
			return acct->holds[i];
	return NULL;
}

/* ================================================================================ */
/* accrue, expiry dates, tiers                                                       */
/* ================================================================================ */

static void test_accrue_creates_lot_expiring_calendar_months_later_at_same_time_of_day(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	assert_int_equal(utc(2026, 1, 1, 0, 0, 0), T0_MS);
	setup_plain(&f, "b", 1);
	f.now_ms = utc(2026, 1, 31, 10, 20, 30);
	Tally__V1__CommandResult *r = ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 250));
	int64_t expiry = utc(2026, 2, 28, 10, 20, 30); /* clamped to the month's end */
	assert_int_equal(r->available, 250);
	assert_int_equal(r->points, 250);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->kind, KIND(COMMAND));
	assert_int_equal(e->n_lots, 1);
	assert_lot_move(e, 0, expiry, 250);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 250);
	assert_int_equal(a->earned, 250);
	assert_int_equal(a->n_lots, 1);
	assert_int_equal(a->lots[0]->expiry_ms, expiry);
	assert_int_equal(a->lots[0]->points, 250);
	assert_invariants(&f);
	fx_close(&f);
}

/* tallyctl import: a legacy balance keeps the expiry it had, is issued like an
 * accrual (earned, from issuance) but not counted toward tiers, and its entry is the
 * import command; it expires at that time like any lot. */
static void test_import_keeps_the_original_expiry_and_marks_the_entry(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 24);
	int64_t legacy = utc(2026, 1, 20, 0, 0, 0); /* not 24 months from now: its own date */
	Tally__V1__CommandResult *r = ok(&f, c_import(&f, admin(&f), "b", "m1", 500, legacy));
	assert_int_equal(r->points, 500);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->command->body_case, TALLY__V1__COMMAND__BODY_IMPORT_POINTS);
	assert_string_equal(e->command->import_points->reference, "legacy-crm");
	assert_lot_move(e, 0, legacy, 500);
	ok(&f, c_import(&f, admin(&f), "b", "m1", 70, 0)); /* never expires */
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 570);
	assert_int_equal(a->earned, 570);
	assert_int_equal(a->qualifying, 0);
	assert_int_equal(lot_points(a, legacy), 500);
	assert_int_equal(lot_points(a, 0), 70);
	f.now_ms = legacy;
	ok(&f, c_expire(&f, timer(&f)));
	a = account(&f, "b", "m1");
	assert_int_equal(a->available, 70);
	assert_int_equal(a->expired, 500);
	assert_invariants(&f);
	fx_close(&f);
}

/* An import that cannot be taken is refused with the reason and writes nothing. */
static void test_import_refusals_change_nothing(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 24);
	ok(&f, c_set_rules(&f, TALLY_RULES_BOUNDED_LOTS)); /* the horizon below is theirs */
	struct tally_digest before = digest(&f);
	expect(&f, c_import(&f, admin(&f), "b", "m1", 10, f.now_ms), CODE(INVALID_ARGUMENT));
	expect(&f, c_import(&f, admin(&f), "b", "m1", 10, f.now_ms - 1), CODE(INVALID_ARGUMENT));
	expect(&f, c_import(&f, admin(&f), "b", "m1", 10, -1), CODE(INVALID_ARGUMENT));
	expect(&f, c_import(&f, admin(&f), "b", "m1", 10, TALLY_IMPORT_EXPIRY_MAX_MS + 1),
	       CODE(INVALID_ARGUMENT));
	/* The horizon of every lot: TALLY_EXPIRY_MONTHS_MAX months after the batch. */
	f.now_ms = utc(2026, 3, 15, 10, 0, 0);
	int64_t horizon = utc(2126, 3, 15, 10, 0, 0);
	Tally__V1__CommandResult *r =
		expect(&f, c_import(&f, admin(&f), "b", "m1", 10, horizon + 1), CODE(INVALID_ARGUMENT));
	assert_non_null(strstr(r->message, "1200 months"));
	expect(&f, c_import(&f, admin(&f), "b", "m1", 0, 0), CODE(INVALID_ARGUMENT));
	expect(&f, c_import(&f, admin(&f), "b", "nobody", 10, 0), CODE(UNKNOWN_MEMBER));
	expect(&f, c_import(&f, admin(&f), "x", "m1", 10, 0), CODE(UNKNOWN_BRAND));
	expect(&f, c_import(&f, dealer(&f), "b", "m1", 10, 0), CODE(PERMISSION_DENIED));
	assert_unchanged(&f, &before);
	assert_int_equal(available(&f, "b", "m1"), 0);
	ok(&f, c_import(&f, admin(&f), "b", "m1", 10, horizon));
	assert_int_equal(lot_points(account(&f, "b", "m1"), horizon), 10);
	fx_close(&f);
}

static void test_accrue_expiry_clamps_to_month_end_and_knows_leap_years(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "one", 1);
	setup_brand(&f, "thirteen", 13);
	f.now_ms = utc(2026, 1, 31, 23, 59, 59);
	ok(&f, c_accrue(&f, dealer(&f), "thirteen", "m1", 10));
	assert_int_equal(account(&f, "thirteen", "m1")->lots[0]->expiry_ms,
			 utc(2027, 2, 28, 23, 59, 59));
	f.now_ms = utc(2026, 3, 31, 8, 0, 0);
	ok(&f, c_accrue(&f, dealer(&f), "one", "m2", 10));
	assert_int_equal(account(&f, "one", "m2")->lots[0]->expiry_ms, utc(2026, 4, 30, 8, 0, 0));
	f.now_ms = utc(2028, 1, 31, 12, 0, 0);
	ok(&f, c_accrue(&f, dealer(&f), "one", "m3", 10));
	assert_int_equal(account(&f, "one", "m3")->lots[0]->expiry_ms, utc(2028, 2, 29, 12, 0, 0));
	f.now_ms = utc(2028, 5, 15, 1, 2, 3); /* no clamping needed: same day next month */
	ok(&f, c_accrue(&f, dealer(&f), "one", "m4", 10));
	assert_int_equal(account(&f, "one", "m4")->lots[0]->expiry_ms, utc(2028, 6, 15, 1, 2, 3));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_accrue_in_brand_without_expiry_creates_lot_that_never_expires(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 0);
	Tally__V1__CommandResult *r = ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 500));
	assert_lot_move(entry_at(&f, r->entry_seq), 0, 0, 500);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->n_lots, 1);
	assert_int_equal(a->lots[0]->expiry_ms, 0);
	f.now_ms += 3650 * DAY_MS;
	r = ok(&f, c_expire(&f, timer(&f)));
	assert_int_equal(r->count, 0);
	r = ok(&f, c_redeem(&f, mall(&f), "b", "m1", 1));
	assert_int_equal(r->available, 499);
	a = account(&f, "b", "m1");
	assert_int_equal(a->expired, 0);
	assert_int_equal(lot_points(a, 0), 499);
	assert_invariants(&f);
	fx_close(&f);
}

static const struct rules TIERED = {
	.expiry_months = 0,
	.tier_window_days = 30,
	.n_tiers = 2,
	.tier_names = {"silver", "gold"},
	.tier_mins = {100, 200},
};

static void test_accrue_adds_qualifying_points_and_raises_tier(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_rules(&f, "b", &TIERED);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 99));
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->qualifying, 99);
	assert_string_equal(a->tier, "");
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 1));
	a = account(&f, "b", "m1");
	assert_int_equal(a->qualifying, 100);
	assert_string_equal(a->tier, "silver");
	f.now_ms += 3 * DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 150));
	a = account(&f, "b", "m1");
	assert_int_equal(a->qualifying, 250);
	assert_int_equal(a->earned, 250);
	assert_string_equal(a->tier, "gold");
	/* Spending does not reduce qualifying points. */
	ok(&f, c_redeem(&f, mall(&f), "b", "m1", 200));
	a = account(&f, "b", "m1");
	assert_int_equal(a->qualifying, 250);
	assert_string_equal(a->tier, "gold");
	assert_invariants(&f);
	fx_close(&f);
}

/* 150 on day 0 and 100 on day 20 with a 30-day window: gold until day 30, then the
 * day-0 points leave (silver), and after day 50 nothing qualifies. */
static void tier_window_setup(struct fx *f)
{
	setup_rules(f, "b", &TIERED);
	ok(f, c_accrue(f, dealer(f), "b", "m1", 150));
	f->now_ms += 20 * DAY_MS;
	ok(f, c_accrue(f, dealer(f), "b", "m1", 100));
	assert_string_equal(account(f, "b", "m1")->tier, "gold");
}

static void test_tier_falls_when_points_leave_window_on_expire_command(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	int64_t t0 = f.now_ms;
	tier_window_setup(&f);
	f.now_ms = t0 + 29 * DAY_MS + 23 * HOUR_MS; /* day 29: still inside */
	Tally__V1__CommandResult *r = ok(&f, c_expire(&f, timer(&f)));
	assert_int_equal(r->count, 0);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->qualifying, 250);
	assert_string_equal(a->tier, "gold");
	f.now_ms = t0 + 31 * DAY_MS;
	r = ok(&f, c_expire(&f, timer(&f)));
	assert_int_equal(r->count, 1);
	assert_false(r->more);
	a = account(&f, "b", "m1");
	assert_int_equal(a->qualifying, 100);
	assert_string_equal(a->tier, "silver");
	assert_int_equal(a->available, 250); /* points themselves do not expire */
	assert_int_equal(a->earned, 250);
	f.now_ms = t0 + 51 * DAY_MS;
	r = ok(&f, c_expire(&f, timer(&f)));
	assert_int_equal(r->count, 1);
	a = account(&f, "b", "m1");
	assert_int_equal(a->qualifying, 0);
	assert_string_equal(a->tier, "");
	assert_invariants(&f);
	fx_close(&f);
}

static void test_tier_falls_when_points_leave_window_on_next_command_touching_account(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	int64_t t0 = f.now_ms;
	tier_window_setup(&f);
	f.now_ms = t0 + 31 * DAY_MS;
	/* A command on another account leaves m1 as stored. */
	ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 5));
	assert_string_equal(account(&f, "b", "m1")->tier, "gold");
	ok(&f, c_redeem(&f, mall(&f), "b", "m1", 1));
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->qualifying, 100);
	assert_string_equal(a->tier, "silver");
	/* Even a command that is then rejected lets time pass for the account. */
	f.now_ms = t0 + 51 * DAY_MS;
	expect(&f, c_redeem(&f, mall(&f), "b", "m1", 1000), CODE(INSUFFICIENT_POINTS));
	a = account(&f, "b", "m1");
	assert_int_equal(a->qualifying, 0);
	assert_string_equal(a->tier, "");
	/* New accruals qualify again from zero. */
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 120));
	a = account(&f, "b", "m1");
	assert_int_equal(a->qualifying, 120);
	assert_string_equal(a->tier, "silver");
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* redeem                                                                            */
/* ================================================================================ */

static void test_redeem_spends_lots_first_expiring_first(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	int64_t t0 = f.now_ms;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 300)); /* expires t0 + 12 months */
	ok(&f, c_brand_expiry(&f, "b", 0));
	f.now_ms = t0 + DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 50)); /* never expires */
	ok(&f, c_brand_expiry(&f, "b", 1));
	f.now_ms = t0 + 2 * DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100)); /* expires first, accrued last */
	int64_t year = utc(2027, 1, 1, 0, 0, 0), month = utc(2026, 2, 3, 0, 0, 0);
	Tally__V1__CommandResult *r = ok(&f, c_redeem(&f, mall(&f), "b", "m1", 150));
	assert_int_equal(r->available, 300);
	assert_int_equal(r->points, 150);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->n_lots, 2);
	assert_lot_move(e, 0, month, 100);
	assert_lot_move(e, 1, year, 50);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->n_lots, 2);
	assert_int_equal(lot_points(a, month), 0);
	assert_int_equal(lot_points(a, year), 250);
	assert_int_equal(lot_points(a, 0), 50);
	assert_int_equal(a->redeemed, 150);
	/* The never-expiring lot is spent last. */
	r = ok(&f, c_redeem(&f, mall(&f), "b", "m1", 260));
	e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->n_lots, 2);
	assert_lot_move(e, 0, year, 250);
	assert_lot_move(e, 1, 0, 10);
	a = account(&f, "b", "m1");
	assert_int_equal(a->n_lots, 1);
	assert_int_equal(lot_points(a, 0), 40);
	assert_int_equal(a->redeemed, 410);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_redeem_rejects_when_points_insufficient_and_changes_nothing(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 24);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	ok(&f, c_hold(&f, mall(&f), "b", "m1", 30, 3600)); /* held points are not available */
	struct tally_digest before = digest(&f);
	Tally__V1__CommandResult *r =
		expect(&f, c_redeem(&f, mall(&f), "b", "m1", 71), CODE(INSUFFICIENT_POINTS));
	assert_int_equal(r->entry_seq, 0);
	expect(&f, c_redeem(&f, mall(&f), "b", "m2", 1), CODE(INSUFFICIENT_POINTS));
	assert_unchanged(&f, &before);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 70);
	assert_int_equal(a->held, 30);
	assert_int_equal(a->redeemed, 0);
	ok(&f, c_redeem(&f, mall(&f), "b", "m1", 70));
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* holds                                                                             */
/* ================================================================================ */

static void test_hold_moves_points_from_available_to_held(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	int64_t t0 = f.now_ms, exp1 = utc(2026, 2, 1, 0, 0, 0), exp2 = utc(2026, 2, 2, 0, 0, 0);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 60));
	f.now_ms = t0 + DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 60));
	Tally__V1__CommandResult *r = ok(&f, c_hold(&f, mall(&f), "b", "m1", 100, 600));
	assert_int_equal(r->hold_id, r->entry_seq);
	assert_int_equal(r->available, 20);
	assert_int_equal(r->held, 100);
	assert_int_equal(r->points, 100);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), -100);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(HELD)), 100);
	assert_entry_balanced(e);
	assert_int_equal(e->n_lots, 2);
	assert_lot_move(e, 0, exp1, 60);
	assert_lot_move(e, 1, exp2, 40);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 20);
	assert_int_equal(a->held, 100);
	assert_int_equal(a->n_lots, 1);
	assert_int_equal(lot_points(a, exp2), 20);
	assert_int_equal(a->n_holds, 1);
	const Tally__V1__HoldRecord *h = a->holds[0];
	assert_int_equal(h->id, r->hold_id);
	assert_int_equal(h->points, 100);
	assert_int_equal(h->status, TALLY__V1__HOLD_STATUS__OPEN);
	assert_int_equal(h->created_ms, f.now_ms);
	assert_int_equal(h->expires_ms, f.now_ms + 600 * 1000);
	/* timeout 0 means the default */
	r = ok(&f, c_hold(&f, mall(&f), "b", "m1", 5, 0));
	h = open_hold(account(&f, "b", "m1"), r->hold_id);
	assert_non_null(h);
	assert_int_equal(h->expires_ms, f.now_ms + TALLY_HOLD_TIMEOUT_S_DEFAULT * 1000LL);
	struct tally_digest before = digest(&f);
	expect(&f, c_hold(&f, mall(&f), "b", "m1", 16, 600), CODE(INSUFFICIENT_POINTS));
	assert_unchanged(&f, &before);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_capture_of_whole_hold_redeems_every_held_point(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	uint64_t hold = ok(&f, c_hold(&f, mall(&f), "b", "m1", 80, 600))->hold_id;
	Tally__V1__CommandResult *r = ok(&f, c_capture(&f, mall(&f), hold, 0));
	assert_int_equal(r->hold_id, hold);
	assert_int_equal(r->points, 80);
	assert_int_equal(r->available, 20);
	assert_int_equal(r->held, 0);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->cause_seq, hold);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(HELD)), -80);
	assert_int_equal(posted(e, SYS(REDEEMED), NULL, 0), 80);
	assert_entry_balanced(e);
	assert_int_equal(e->n_lots, 1);
	assert_lot_move(e, 0, utc(2027, 1, 1, 0, 0, 0), 80);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 20);
	assert_int_equal(a->held, 0);
	assert_int_equal(a->redeemed, 80);
	assert_int_equal(a->n_holds, 0);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_partial_capture_returns_the_rest_to_available_with_its_expiry(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	int64_t t0 = f.now_ms, exp1 = utc(2026, 2, 1, 0, 0, 0), exp2 = utc(2026, 2, 2, 0, 0, 0);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 50));
	f.now_ms = t0 + DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 50));
	uint64_t hold = ok(&f, c_hold(&f, mall(&f), "b", "m1", 90, 600))->hold_id;
	assert_int_equal(available(&f, "b", "m1"), 10);
	Tally__V1__CommandResult *r = ok(&f, c_capture(&f, mall(&f), hold, 60));
	assert_int_equal(r->points, 60);
	assert_int_equal(r->available, 40);
	assert_int_equal(r->held, 0);
	/* The earliest-expiring held points are the ones captured. */
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->n_lots, 2);
	assert_lot_move(e, 0, exp1, 50);
	assert_lot_move(e, 1, exp2, 10);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(HELD)), -90);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), 30);
	assert_int_equal(posted(e, SYS(REDEEMED), NULL, 0), 60);
	assert_entry_balanced(e);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 40);
	assert_int_equal(a->held, 0);
	assert_int_equal(a->redeemed, 60);
	assert_int_equal(a->n_lots, 1);
	assert_int_equal(lot_points(a, exp2), 40);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_void_returns_every_held_point_to_its_lot(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	uint64_t hold = ok(&f, c_hold(&f, mall(&f), "b", "m1", 70, 600))->hold_id;
	Tally__V1__CommandResult *r = ok(&f, c_void(&f, mall(&f), hold));
	assert_int_equal(r->hold_id, hold);
	assert_int_equal(r->points, 70);
	assert_int_equal(r->available, 100);
	assert_int_equal(r->held, 0);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(HELD)), -70);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), 70);
	assert_int_equal(posted(e, SYS(REDEEMED), NULL, 0), 0);
	assert_entry_balanced(e);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 100);
	assert_int_equal(a->held, 0);
	assert_int_equal(a->redeemed, 0);
	assert_int_equal(a->n_holds, 0);
	assert_int_equal(a->n_lots, 1);
	assert_int_equal(lot_points(a, utc(2027, 1, 1, 0, 0, 0)), 100);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_void_after_the_held_lot_ran_out_posts_its_points_as_expired(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100)); /* expires 2026-02-01 */
	uint64_t hold = ok(&f, c_hold(&f, mall(&f), "b", "m1", 40, 90 * 86400))->hold_id;
	f.now_ms = utc(2026, 2, 10, 0, 0, 0);
	Tally__V1__CommandResult *r = ok(&f, c_void(&f, mall(&f), hold));
	assert_int_equal(r->available, 0);
	assert_int_equal(r->held, 0);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(HELD)), -40);
	assert_int_equal(posted(e, SYS(EXPIRED), NULL, 0), 40);
	assert_entry_balanced(e);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->expired, 100); /* 60 on touch, 40 from the hold */
	assert_int_equal(a->available, 0);
	assert_int_equal(a->n_lots, 0);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_second_resolve_of_a_hold_is_rejected_with_hold_resolved(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	uint64_t captured = ok(&f, c_hold(&f, mall(&f), "b", "m1", 30, 600))->hold_id;
	uint64_t voided = ok(&f, c_hold(&f, mall(&f), "b", "m1", 20, 600))->hold_id;
	ok(&f, c_capture(&f, mall(&f), captured, 10));
	ok(&f, c_void(&f, mall(&f), voided));
	struct tally_digest before = digest(&f);
	expect(&f, c_capture(&f, mall(&f), captured, 0), CODE(HOLD_RESOLVED));
	expect(&f, c_void(&f, mall(&f), captured), CODE(HOLD_RESOLVED));
	expect(&f, c_capture(&f, mall(&f), voided, 0), CODE(HOLD_RESOLVED));
	expect(&f, c_void(&f, mall(&f), voided), CODE(HOLD_RESOLVED));
	assert_unchanged(&f, &before);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 90);
	assert_int_equal(a->redeemed, 10);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_capture_of_more_than_held_is_rejected_and_changes_nothing(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	uint64_t hold = ok(&f, c_hold(&f, mall(&f), "b", "m1", 30, 600))->hold_id;
	struct tally_digest before = digest(&f);
	expect(&f, c_capture(&f, mall(&f), hold, 31), CODE(LIMIT_EXCEEDED));
	expect(&f, c_capture(&f, mall(&f), hold, -1), CODE(INVALID_ARGUMENT));
	assert_unchanged(&f, &before);
	ok(&f, c_capture(&f, mall(&f), hold, 30));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_hold_past_its_timeout_is_released_by_first_batch_past_it_then_capture_is_hold_expired(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	int64_t placed = f.now_ms;
	Tally__V1__CommandResult *r = ok(&f, c_hold(&f, mall(&f), "b", "m1", 40, 60));
	uint64_t hold = r->hold_id;
	/* A batch before the timeout leaves the hold open. */
	f.now_ms = placed + 59 * 1000;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 1));
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_non_null(open_hold(a, hold));
	assert_int_equal(a->held, 40);
	/* The first batch past it releases it before its own commands, whatever they are. */
	uint64_t before = tree_size(&f);
	f.now_ms = placed + 61 * 1000;
	r = ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 1));
	assert_int_equal(r->entry_seq, before + 2);
	Tally__V1__Entry *e = entry_at(&f, before + 1);
	assert_int_equal(e->kind, KIND(HOLD_RELEASED));
	assert_int_equal(e->cause_seq, hold);
	assert_string_equal(e->brand, "b");
	assert_string_equal(e->member, "m1");
	assert_null(e->command);
	assert_int_equal(e->result->points, 40);
	assert_int_equal(e->result->available, 100);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(HELD)), -40);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), 40);
	assert_entry_balanced(e);
	assert_lot_move(e, 0, utc(2027, 1, 1, 0, 0, 0), 40);
	a = account(&f, "b", "m1");
	assert_int_equal(a->available, 100);
	assert_int_equal(a->held, 0);
	assert_int_equal(a->redeemed, 0);
	assert_int_equal(a->n_holds, 0);
	struct tally_digest d = digest(&f);
	expect(&f, c_capture(&f, mall(&f), hold, 0), CODE(HOLD_EXPIRED));
	expect(&f, c_void(&f, mall(&f), hold), CODE(HOLD_EXPIRED));
	assert_unchanged(&f, &d);
	assert_int_equal(count_kind(&f, 0, KIND(HOLD_RELEASED), NULL), 1);
	assert_invariants(&f);
	fx_close(&f);
}

/* Three budgets' worth of 1-point holds (750 on each of m1..m4) placed in one batch,
 * all timing out together; returns their ids in order and when they time out. */
#define SWEEP_HOLDS (3 * TALLY_HOLD_RELEASES_PER_BATCH_MAX)
static int64_t sweep_setup(struct fx *f, uint64_t ids[SWEEP_HOLDS])
{
	setup_plain(f, "b", 12);
	for (size_t m = 0; m < 4; m++)
		ok(f, c_accrue(f, dealer(f), "b", MEMBERS[m], SWEEP_HOLDS));
	Tally__V1__Command **cmds = zalloc(f, SWEEP_HOLDS * sizeof(*cmds));
	for (size_t i = 0; i < SWEEP_HOLDS; i++)
		cmds[i] = c_hold(f, mall(f), "b", MEMBERS[i % 4], 1, 60);
	Tally__V1__CommandResult **rs = apply_n(f, cmds, SWEEP_HOLDS);
	for (size_t i = 0; i < SWEEP_HOLDS; i++) {
		assert_int_equal(rs[i]->code, CODE(OK));
		ids[i] = rs[i]->hold_id;
	}
	return f->now_ms + 60 * 1000;
}

/* Applies an expire command alone; returns the holds the batch released and whether
 * the expire command reported more work. */
static size_t sweep_batch(struct fx *f, bool *more)
{
	uint64_t before = tree_size(f);
	Tally__V1__CommandResult *r = ok(f, c_expire(f, timer(f)));
	*more = r->more;
	assert_int_equal(r->count, 0); /* no lot, window or counter to expire */
	return count_kind(f, before, KIND(HOLD_RELEASED), NULL);
}

/* The whole drain: expire, a capture of the last hold (beyond two budgets), expire,
 * expire; returns the digest reached. */
static struct tally_digest sweep_drain(struct fx *f)
{
	uint64_t *ids = zalloc(f, SWEEP_HOLDS * sizeof(*ids));
	int64_t due = sweep_setup(f, ids);
	f->now_ms = due + 1000;
	bool more;
	assert_int_equal(sweep_batch(f, &more), TALLY_HOLD_RELEASES_PER_BATCH_MAX);
	assert_true(more);
	/* The next batch's sweep takes the second budget; the last hold is beyond it, yet
	 * its capture is refused as timed out and the capture releases it. */
	uint64_t before = tree_size(f);
	Tally__V1__Command *two[2] = {c_capture(f, mall(f), ids[SWEEP_HOLDS - 1], 0),
				      c_void(f, mall(f), ids[SWEEP_HOLDS - 1])};
	Tally__V1__CommandResult **rs = apply_n(f, two, 2);
	assert_int_equal(rs[0]->code, CODE(HOLD_EXPIRED));
	assert_int_equal(rs[0]->entry_seq, 0);
	assert_int_equal(rs[1]->code, CODE(HOLD_EXPIRED));
	assert_int_equal(count_kind(f, before, KIND(HOLD_RELEASED), NULL),
			 TALLY_HOLD_RELEASES_PER_BATCH_MAX + 1);
	/* The capture changed state (it released the hold) and was refused: its entry
	 * carries the refusal; the void after it changed nothing and left none. */
	Tally__V1__Entry *refused = entry_at(f, tree_size(f));
	assert_int_equal(refused->kind, KIND(COMMAND));
	assert_int_equal(refused->command->body_case, TALLY__V1__COMMAND__BODY_CAPTURE);
	assert_int_equal(refused->result->code, CODE(HOLD_EXPIRED));
	assert_int_equal(refused->result->entry_seq, 0);
	assert_int_equal(refused->n_postings, 0);
	Tally__V1__Entry *last = entry_at(f, tree_size(f) - 1);
	assert_int_equal(last->kind, KIND(HOLD_RELEASED));
	assert_int_equal(last->cause_seq, ids[SWEEP_HOLDS - 1]);
	assert_int_equal(posted(last, SYS(MEMBER), MEMBERS[(SWEEP_HOLDS - 1) % 4], BUCKET(AVAILABLE)), 1);
	assert_int_equal(sweep_batch(f, &more), TALLY_HOLD_RELEASES_PER_BATCH_MAX - 1);
	assert_false(more);
	assert_int_equal(sweep_batch(f, &more), 0);
	assert_false(more);
	assert_int_equal(count_kind(f, 0, KIND(HOLD_RELEASED), NULL), SWEEP_HOLDS);
	for (size_t m = 0; m < 4; m++) {
		Tally__V1__Account *a = account(f, "b", MEMBERS[m]);
		assert_int_equal(a->available, SWEEP_HOLDS);
		assert_int_equal(a->held, 0);
		assert_int_equal(a->n_holds, 0);
	}
	expect(f, c_capture(f, mall(f), ids[0], 0), CODE(HOLD_EXPIRED));
	assert_journal_balanced(f);
	assert_invariants(f);
	return digest(f);
}

static void test_hold_sweep_releases_at_most_its_budget_per_batch_and_expire_reports_more_until_drained(void **state)
{
	(void)state;
	struct fx f1, f2;
	fx_open(&f1);
	fx_open(&f2);
	struct tally_digest d1 = sweep_drain(&f1), d2 = sweep_drain(&f2);
	/* Two replicas applying the same batches end in the same state. */
	assert_int_equal(d1.tree_size, d2.tree_size);
	assert_memory_equal(d1.root, d2.root, 32);
	assert_memory_equal(d1.state_digest, d2.state_digest, 32);
	fx_close(&f1);
	fx_close(&f2);
}

static void test_holds_timed_out_beyond_the_budget_are_released_by_the_next_client_batches(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	uint64_t *ids = zalloc(&f, SWEEP_HOLDS * sizeof(*ids));
	int64_t due = sweep_setup(&f, ids);
	/* Still open one second before; the batches after release a budget each. */
	f.now_ms = due - 1000;
	uint64_t before = tree_size(&f);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 1));
	assert_int_equal(count_kind(&f, before, KIND(HOLD_RELEASED), NULL), 0);
	f.now_ms = due;
	for (int batch = 0; batch < 3; batch++) {
		before = tree_size(&f);
		ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 1));
		assert_int_equal(count_kind(&f, before, KIND(HOLD_RELEASED), NULL),
				 TALLY_HOLD_RELEASES_PER_BATCH_MAX);
		/* Released oldest first: the budget's last hold, not the next one. */
		size_t last = (size_t)(batch + 1) * TALLY_HOLD_RELEASES_PER_BATCH_MAX - 1;
		assert_int_equal(entry_at(&f, tree_size(&f) - 1)->cause_seq, ids[last]);
	}
	assert_int_equal(account(&f, "b", "m3")->held, 0);
	assert_int_equal(account(&f, "b", "m3")->available, SWEEP_HOLDS);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_capture_or_void_of_unknown_hold_is_rejected_with_hold_not_found(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	uint64_t accrual = ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100))->entry_seq;
	struct tally_digest before = digest(&f);
	expect(&f, c_capture(&f, mall(&f), 999, 0), CODE(HOLD_NOT_FOUND));
	expect(&f, c_void(&f, mall(&f), 999), CODE(HOLD_NOT_FOUND));
	expect(&f, c_capture(&f, mall(&f), 0, 0), CODE(HOLD_NOT_FOUND));
	/* An entry that is not a hold is not a hold. */
	expect(&f, c_capture(&f, mall(&f), accrual, 0), CODE(HOLD_NOT_FOUND));
	assert_unchanged(&f, &before);
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* reverse                                                                           */
/* ================================================================================ */

static void test_reverse_of_redemption_returns_points_to_their_lots(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	int64_t t0 = f.now_ms, exp1 = utc(2026, 2, 1, 0, 0, 0), exp2 = utc(2026, 2, 2, 0, 0, 0);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	f.now_ms = t0 + DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	uint64_t red = ok(&f, c_redeem(&f, mall(&f), "b", "m1", 150))->entry_seq;
	f.now_ms = t0 + 5 * DAY_MS;
	Tally__V1__CommandResult *r = ok(&f, c_reverse(&f, mall(&f), red, 0));
	assert_int_equal(r->points, 150);
	assert_int_equal(r->available, 200);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->cause_seq, red);
	assert_int_equal(posted(e, SYS(REDEEMED), NULL, 0), -150);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), 150);
	assert_int_equal(posted(e, SYS(EXPIRED), NULL, 0), 0);
	assert_entry_balanced(e);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 200);
	assert_int_equal(a->redeemed, 0);
	assert_int_equal(a->expired, 0);
	assert_int_equal(a->n_lots, 2);
	assert_int_equal(lot_points(a, exp1), 100);
	assert_int_equal(lot_points(a, exp2), 100);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_reverse_of_redemption_posts_parts_whose_lots_expired_since_as_expired(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	int64_t t0 = f.now_ms, exp_a = utc(2026, 2, 1, 0, 0, 0), exp_b = utc(2026, 2, 11, 0, 0, 0);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100)); /* lot A */
	f.now_ms = t0 + 10 * DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100)); /* lot B */
	f.now_ms = t0 + 15 * DAY_MS;
	uint64_t red = ok(&f, c_redeem(&f, mall(&f), "b", "m1", 150))->entry_seq; /* A 100, B 50 */
	/* Lot A runs out between the redemption and the refund; B is still valid. */
	f.now_ms = utc(2026, 2, 5, 0, 0, 0);
	Tally__V1__CommandResult *r = ok(&f, c_reverse(&f, mall(&f), red, 0));
	assert_int_equal(r->points, 150);
	assert_int_equal(r->available, 100);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->cause_seq, red);
	assert_int_equal(posted(e, SYS(REDEEMED), NULL, 0), -150);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), 50);
	assert_int_equal(posted(e, SYS(EXPIRED), NULL, 0), 100);
	assert_entry_balanced(e);
	assert_int_equal(e->n_lots, 1);
	assert_lot_move(e, 0, exp_b, 50);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 100);
	assert_int_equal(a->redeemed, 0);
	assert_int_equal(a->expired, 100);
	assert_int_equal(a->n_lots, 1);
	assert_int_equal(lot_points(a, exp_b), 100);
	assert_int_equal(lot_points(a, exp_a), 0);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_reverse_of_capture_returns_captured_points(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	uint64_t hold = ok(&f, c_hold(&f, mall(&f), "b", "m1", 80, 600))->hold_id;
	uint64_t cap = ok(&f, c_capture(&f, mall(&f), hold, 60))->entry_seq;
	assert_int_equal(available(&f, "b", "m1"), 40);
	Tally__V1__CommandResult *r = ok(&f, c_reverse(&f, mall(&f), cap, 25));
	assert_int_equal(r->points, 25);
	assert_int_equal(r->available, 65);
	r = ok(&f, c_reverse(&f, mall(&f), cap, 0)); /* the rest: 35 */
	assert_int_equal(r->points, 35);
	assert_int_equal(r->available, 100);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->cause_seq, cap);
	assert_int_equal(posted(e, SYS(REDEEMED), NULL, 0), -35);
	assert_entry_balanced(e);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->redeemed, 0);
	assert_int_equal(a->held, 0);
	assert_int_equal(lot_points(a, utc(2027, 1, 1, 0, 0, 0)), 100);
	expect(&f, c_reverse(&f, mall(&f), cap, 0), CODE(ALREADY_REVERSED));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_reverse_of_accrual_claws_back_points_and_qualifying(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_rules(&f, "b", &TIERED);
	uint64_t acc = ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 150))->entry_seq;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 60));
	assert_string_equal(account(&f, "b", "m1")->tier, "gold");
	Tally__V1__CommandResult *r = ok(&f, c_reverse(&f, dealer(&f), acc, 0));
	assert_int_equal(r->points, 150);
	assert_int_equal(r->available, 60);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->cause_seq, acc);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), -150);
	assert_int_equal(posted(e, SYS(ISSUANCE), NULL, 0), 150);
	assert_entry_balanced(e);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 60);
	assert_int_equal(a->earned, 60);
	assert_int_equal(a->qualifying, 60);
	assert_string_equal(a->tier, "");
	assert_int_equal(lot_points(a, 0), 60);
	/* Points already spent cannot be clawed back. */
	uint64_t acc2 = ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 100))->entry_seq;
	ok(&f, c_redeem(&f, mall(&f), "b", "m2", 50));
	struct tally_digest before = digest(&f);
	expect(&f, c_reverse(&f, dealer(&f), acc2, 0), CODE(INSUFFICIENT_POINTS));
	assert_unchanged(&f, &before);
	r = ok(&f, c_reverse(&f, dealer(&f), acc2, 50));
	assert_int_equal(r->available, 0);
	assert_int_equal(account(&f, "b", "m2")->qualifying, 50);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_partial_reversals_add_up_to_the_original_then_already_reversed(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 200));
	uint64_t red = ok(&f, c_redeem(&f, mall(&f), "b", "m1", 100))->entry_seq;
	ok(&f, c_reverse(&f, mall(&f), red, 60));
	struct tally_digest before = digest(&f);
	Tally__V1__CommandResult *r = expect(&f, c_reverse(&f, mall(&f), red, 41), CODE(ALREADY_REVERSED));
	assert_int_equal(r->entry_seq, 0);
	assert_unchanged(&f, &before);
	r = ok(&f, c_reverse(&f, mall(&f), red, 40));
	assert_int_equal(r->available, 200);
	before = digest(&f);
	expect(&f, c_reverse(&f, mall(&f), red, 0), CODE(ALREADY_REVERSED));
	expect(&f, c_reverse(&f, mall(&f), red, 1), CODE(ALREADY_REVERSED));
	assert_unchanged(&f, &before);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 200);
	assert_int_equal(a->redeemed, 0);
	/* The same for an accrual. */
	uint64_t acc = ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 30))->entry_seq;
	ok(&f, c_reverse(&f, dealer(&f), acc, 10));
	ok(&f, c_reverse(&f, dealer(&f), acc, 20));
	expect(&f, c_reverse(&f, dealer(&f), acc, 1), CODE(ALREADY_REVERSED));
	a = account(&f, "b", "m2");
	assert_int_equal(a->available, 0);
	assert_int_equal(a->earned, 0);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_reverse_of_entry_that_is_not_accrual_redemption_or_capture_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	uint64_t brand = 1, member = 2;
	assert_int_equal(entry_at(&f, brand)->command->body_case, TALLY__V1__COMMAND__BODY_REGISTER_BRAND);
	assert_int_equal(entry_at(&f, member)->command->body_case, TALLY__V1__COMMAND__BODY_OPEN_MEMBER);
	uint64_t acc = ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100))->entry_seq;
	uint64_t xfer = ok(&f, c_transfer(&f, mall(&f), "b", "m1", "m2", 10))->entry_seq;
	uint64_t adj = ok(&f, c_adjust(&f, admin(&f), "b", "m1", 5, "goodwill"))->entry_seq;
	uint64_t hold = ok(&f, c_hold(&f, mall(&f), "b", "m1", 10, 600))->hold_id;
	uint64_t voided = ok(&f, c_void(&f, mall(&f), hold))->entry_seq;
	uint64_t rev = ok(&f, c_reverse(&f, dealer(&f), acc, 5))->entry_seq;
	f.now_ms = utc(2026, 3, 1, 0, 0, 0);
	ok(&f, c_expire(&f, timer(&f)));
	Tally__V1__Entry *expired = NULL;
	assert_int_equal(count_kind(&f, rev, KIND(LOT_EXPIRED), &expired), 2);
	uint64_t targets[] = {brand, member, xfer, adj, hold, voided, rev, expired->seq};
	struct tally_digest before = digest(&f);
	for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
		Tally__V1__CommandResult *r =
			expect(&f, c_reverse(&f, admin(&f), targets[i], 0), CODE(INVALID_ARGUMENT));
		assert_non_null(strstr(r->message, "entry_seq"));
	}
	assert_unchanged(&f, &before);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_reverse_of_unknown_entry_is_not_found(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	struct tally_digest before = digest(&f);
	expect(&f, c_reverse(&f, admin(&f), 0, 0), CODE(NOT_FOUND));
	expect(&f, c_reverse(&f, admin(&f), before.tree_size + 1, 0), CODE(NOT_FOUND));
	expect(&f, c_reverse(&f, admin(&f), 1000000, 0), CODE(NOT_FOUND));
	expect(&f, c_reverse(&f, admin(&f), UINT64_MAX, 0), CODE(NOT_FOUND));
	assert_unchanged(&f, &before);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_refund_after_partial_refund_returns_the_rest_and_posts_expired_parts(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	int64_t t0 = f.now_ms, exp_a = utc(2026, 2, 1, 0, 0, 0), exp_b = utc(2026, 2, 11, 0, 0, 0);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100)); /* lot A */
	f.now_ms = t0 + 10 * DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100)); /* lot B */
	uint64_t red = ok(&f, c_redeem(&f, mall(&f), "b", "m1", 150))->entry_seq; /* A 100, B 50 */
	/* A first partial refund, while both lots are valid, returns the latest lot first. */
	Tally__V1__CommandResult *r = ok(&f, c_reverse(&f, mall(&f), red, 30));
	assert_lot_move(entry_at(&f, r->entry_seq), 0, exp_b, 30);
	assert_int_equal(lot_points(account(&f, "b", "m1"), exp_b), 80);
	f.now_ms = utc(2026, 2, 5, 0, 0, 0); /* A ran out */
	r = ok(&f, c_reverse(&f, mall(&f), red, 0));
	assert_int_equal(r->points, 120);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->n_lots, 1);
	assert_lot_move(e, 0, exp_b, 20);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), 20);
	assert_int_equal(posted(e, SYS(EXPIRED), NULL, 0), 100);
	assert_int_equal(posted(e, SYS(REDEEMED), NULL, 0), -120);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 100);
	assert_int_equal(a->expired, 100);
	assert_int_equal(a->redeemed, 0);
	assert_int_equal(lot_points(a, exp_b), 100);
	assert_int_equal(lot_points(a, exp_a), 0);
	expect(&f, c_reverse(&f, mall(&f), red, 0), CODE(ALREADY_REVERSED));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_reverse_of_capture_posts_points_of_lots_expired_since_as_expired(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	int64_t t0 = f.now_ms, exp_b = utc(2026, 2, 21, 0, 0, 0);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 40)); /* lot A, 2026-02-01 */
	f.now_ms = t0 + 20 * DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 60)); /* lot B */
	uint64_t hold = ok(&f, c_hold(&f, mall(&f), "b", "m1", 70, 600))->hold_id;
	uint64_t cap = ok(&f, c_capture(&f, mall(&f), hold, 0))->entry_seq; /* A 40, B 30 */
	f.now_ms = utc(2026, 2, 10, 0, 0, 0);
	Tally__V1__CommandResult *r = ok(&f, c_reverse(&f, mall(&f), cap, 0));
	assert_int_equal(r->points, 70);
	assert_int_equal(r->available, 60);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(posted(e, SYS(EXPIRED), NULL, 0), 40);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), 30);
	assert_entry_balanced(e);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->expired, 40);
	assert_int_equal(a->redeemed, 0);
	assert_int_equal(lot_points(a, exp_b), 60);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_reverse_of_accrual_whose_day_left_the_window_leaves_qualifying_alone(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_rules(&f, "b", &TIERED);
	int64_t t0 = f.now_ms;
	uint64_t old = ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100))->entry_seq;
	f.now_ms = t0 + 40 * DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 150));
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->qualifying, 150);
	assert_string_equal(a->tier, "silver");
	ok(&f, c_reverse(&f, dealer(&f), old, 0));
	a = account(&f, "b", "m1");
	assert_int_equal(a->available, 150);
	assert_int_equal(a->earned, 150);
	assert_int_equal(a->qualifying, 150);
	assert_string_equal(a->tier, "silver");
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* transfer                                                                          */
/* ================================================================================ */

static void test_transfer_moves_points_and_receiver_lots_keep_sender_expiries(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	int64_t t0 = f.now_ms, exp1 = utc(2026, 2, 1, 0, 0, 0), exp2 = utc(2026, 2, 6, 0, 0, 0);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	f.now_ms = t0 + 5 * DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	f.now_ms = t0 + 10 * DAY_MS; /* a gift does not renew points */
	Tally__V1__CommandResult *r = ok(&f, c_transfer(&f, community(&f), "b", "m1", "m2", 150));
	assert_int_equal(r->points, 150);
	assert_int_equal(r->available, 50);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), -150);
	assert_int_equal(posted(e, SYS(MEMBER), "m2", BUCKET(AVAILABLE)), 150);
	assert_entry_balanced(e);
	assert_int_equal(e->n_lots, 2);
	assert_lot_move(e, 0, exp1, 100);
	assert_lot_move(e, 1, exp2, 50);
	Tally__V1__Account *from = account(&f, "b", "m1"), *to = account(&f, "b", "m2");
	assert_int_equal(from->available, 50);
	assert_int_equal(from->n_lots, 1);
	assert_int_equal(lot_points(from, exp2), 50);
	assert_int_equal(to->available, 150);
	assert_int_equal(to->earned, 150); /* earned counts transfer-in (tally.proto) */
	assert_int_equal(to->n_lots, 2);
	assert_int_equal(lot_points(to, exp1), 100);
	assert_int_equal(lot_points(to, exp2), 50);
	/* The received points expire with the sender's dates. */
	f.now_ms = utc(2026, 2, 3, 0, 0, 0);
	r = ok(&f, c_redeem(&f, mall(&f), "b", "m2", 1));
	assert_int_equal(r->available, 49);
	assert_int_equal(account(&f, "b", "m2")->expired, 100);
	assert_invariants(&f);
	fx_close(&f);
}

static const struct rules LIMITED = {
	.expiry_months = 12,
	.transfer_max_points = 100,
	.transfer_daily_cap_points = 150,
	.community_daily_cap_points = 100,
};

static void test_transfer_of_more_than_transfer_max_points_is_limit_exceeded(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_rules(&f, "b", &LIMITED);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 1000));
	struct tally_digest before = digest(&f);
	Tally__V1__CommandResult *r =
		expect(&f, c_transfer(&f, mall(&f), "b", "m1", "m2", 101), CODE(LIMIT_EXCEEDED));
	assert_non_null(strstr(r->message, "points"));
	assert_unchanged(&f, &before);
	r = ok(&f, c_transfer(&f, mall(&f), "b", "m1", "m2", 100));
	assert_int_equal(r->available, 900);
	assert_int_equal(available(&f, "b", "m2"), 100);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_transfer_daily_cap_counts_per_sender_per_utc_day_and_resets_next_day(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_rules(&f, "b", &LIMITED);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 1000));
	ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 1000));
	f.now_ms = T0_MS + 22 * HOUR_MS;
	ok(&f, c_transfer(&f, mall(&f), "b", "m1", "m3", 100));
	ok(&f, c_transfer(&f, mall(&f), "b", "m1", "m4", 40));
	struct tally_digest before = digest(&f);
	expect(&f, c_transfer(&f, mall(&f), "b", "m1", "m3", 11), CODE(LIMIT_EXCEEDED));
	assert_unchanged(&f, &before);
	ok(&f, c_transfer(&f, mall(&f), "b", "m1", "m3", 10)); /* exactly the cap */
	expect(&f, c_transfer(&f, mall(&f), "b", "m1", "m3", 1), CODE(LIMIT_EXCEEDED));
	/* Another sender has a cap of its own, and receiving does not use one's cap. */
	ok(&f, c_transfer(&f, mall(&f), "b", "m2", "m1", 100));
	ok(&f, c_transfer(&f, mall(&f), "b", "m2", "m1", 50));
	expect(&f, c_transfer(&f, mall(&f), "b", "m2", "m1", 1), CODE(LIMIT_EXCEEDED));
	/* Two hours later is the next UTC day: a fresh cap (not a rolling 24 h). */
	f.now_ms = T0_MS + DAY_MS;
	Tally__V1__CommandResult *r = ok(&f, c_transfer(&f, mall(&f), "b", "m1", "m3", 100));
	assert_int_equal(r->available, 1000 - 150 + 150 - 100);
	ok(&f, c_transfer(&f, mall(&f), "b", "m1", "m3", 50));
	expect(&f, c_transfer(&f, mall(&f), "b", "m1", "m3", 1), CODE(LIMIT_EXCEEDED));
	assert_int_equal(available(&f, "b", "m3"), 260);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_transfer_to_self_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	struct tally_digest before = digest(&f);
	Tally__V1__CommandResult *r =
		expect(&f, c_transfer(&f, mall(&f), "b", "m1", "m1", 10), CODE(INVALID_ARGUMENT));
	assert_non_null(strstr(r->message, "to_member"));
	assert_unchanged(&f, &before);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_transfer_rejects_when_sender_points_insufficient_and_changes_nothing(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 100));
	struct tally_digest before = digest(&f);
	expect(&f, c_transfer(&f, mall(&f), "b", "m1", "m2", 101), CODE(INSUFFICIENT_POINTS));
	expect(&f, c_transfer(&f, mall(&f), "b", "m3", "m2", 1), CODE(INSUFFICIENT_POINTS));
	expect(&f, c_transfer(&f, mall(&f), "b", "m1", "nobody", 1), CODE(UNKNOWN_MEMBER));
	assert_unchanged(&f, &before);
	assert_int_equal(available(&f, "b", "m1"), 100);
	assert_int_equal(available(&f, "b", "m2"), 100);
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* community cap                                                                     */
/* ================================================================================ */

static void test_community_accruals_are_capped_per_member_per_utc_day(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_rules(&f, "b", &LIMITED);
	ok(&f, c_accrue(&f, community(&f), "b", "m1", 70));
	struct tally_digest before = digest(&f);
	Tally__V1__CommandResult *r =
		expect(&f, c_accrue(&f, community(&f), "b", "m1", 31), CODE(LIMIT_EXCEEDED));
	assert_non_null(strstr(r->message, "community"));
	assert_unchanged(&f, &before);
	ok(&f, c_accrue(&f, community(&f), "b", "m1", 30));
	expect(&f, c_accrue(&f, community(&f), "b", "m1", 1), CODE(LIMIT_EXCEEDED));
	ok(&f, c_accrue(&f, community(&f), "b", "m2", 100)); /* per member */
	f.now_ms += DAY_MS;
	r = ok(&f, c_accrue(&f, community(&f), "b", "m1", 100)); /* next day */
	assert_int_equal(r->available, 200);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->earned, 200);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_dealer_accruals_ignore_and_do_not_use_the_community_cap(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_rules(&f, "b", &LIMITED);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 1000));
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 1000));
	Tally__V1__CommandResult *r = ok(&f, c_accrue(&f, community(&f), "b", "m1", 100));
	assert_int_equal(r->available, 2100);
	expect(&f, c_accrue(&f, community(&f), "b", "m1", 1), CODE(LIMIT_EXCEEDED));
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 1));
	assert_int_equal(available(&f, "b", "m1"), 2101);
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* adjust                                                                            */
/* ================================================================================ */

static void test_positive_adjustment_creates_lot_under_brand_expiry(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 3);
	Tally__V1__CommandResult *r = ok(&f, c_adjust(&f, admin(&f), "b", "m1", 40, "goodwill"));
	assert_int_equal(r->available, 40);
	assert_int_equal(r->points, 40);
	int64_t expiry = utc(2026, 4, 1, 0, 0, 0);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_lot_move(e, 0, expiry, 40);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), 40);
	assert_int_equal(posted(e, SYS(ADJUSTMENT), NULL, 0), -40);
	assert_entry_balanced(e);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 40);
	assert_int_equal(lot_points(a, expiry), 40);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_negative_adjustment_spends_lots_first_expiring_first(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	int64_t t0 = f.now_ms, exp1 = utc(2026, 2, 1, 0, 0, 0), exp2 = utc(2026, 2, 3, 0, 0, 0);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 30));
	f.now_ms = t0 + 2 * DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 70));
	Tally__V1__CommandResult *r = ok(&f, c_adjust(&f, admin(&f), "b", "m1", -50, "correction"));
	assert_int_equal(r->available, 50);
	assert_int_equal(r->points, -50);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->n_lots, 2);
	assert_lot_move(e, 0, exp1, 30);
	assert_lot_move(e, 1, exp2, 20);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), -50);
	assert_int_equal(posted(e, SYS(ADJUSTMENT), NULL, 0), 50);
	assert_entry_balanced(e);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->n_lots, 1);
	assert_int_equal(lot_points(a, exp2), 50);
	struct tally_digest before = digest(&f);
	expect(&f, c_adjust(&f, admin(&f), "b", "m1", -51, "correction"), CODE(INSUFFICIENT_POINTS));
	assert_unchanged(&f, &before);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_adjustment_without_reason_is_invalid_argument_naming_reason(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	struct tally_digest before = digest(&f);
	Tally__V1__CommandResult *r =
		expect(&f, c_adjust(&f, admin(&f), "b", "m1", 10, ""), CODE(INVALID_ARGUMENT));
	assert_non_null(strstr(r->message, "reason"));
	r = expect(&f, c_adjust(&f, admin(&f), "b", "m1", -10, ""), CODE(INVALID_ARGUMENT));
	assert_non_null(strstr(r->message, "reason"));
	r = expect(&f, c_adjust(&f, admin(&f), "b", "m1", 0, "zero"), CODE(INVALID_ARGUMENT));
	assert_non_null(strstr(r->message, "points"));
	assert_unchanged(&f, &before);
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* expire                                                                            */
/* ================================================================================ */

static void test_expire_posts_lot_expired_entry_for_every_lot_that_ran_out(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	int64_t t0 = f.now_ms, exp1 = utc(2026, 2, 1, 0, 0, 0), exp2 = utc(2026, 2, 3, 0, 0, 0);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 10));
	ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 20));
	f.now_ms = t0 + 2 * DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 30));
	ok(&f, c_redeem(&f, mall(&f), "b", "m1", 5));
	f.now_ms = t0 + 20 * DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m3", 40)); /* expires 2026-02-21 */
	f.now_ms = utc(2026, 2, 10, 0, 0, 0);
	uint64_t before = tree_size(&f);
	Tally__V1__CommandResult *r = ok(&f, c_expire(&f, timer(&f)));
	assert_int_equal(r->count, 3);
	assert_false(r->more);
	/* three LOT_EXPIRED entries, then the expire command's own entry (it changed state) */
	assert_int_equal(tree_size(&f), before + 4);
	assert_int_equal(entry_at(&f, before + 4)->kind, KIND(COMMAND));
	assert_int_equal(entry_at(&f, before + 4)->command->body_case, TALLY__V1__COMMAND__BODY_EXPIRE);
	assert_int_equal(entry_at(&f, before + 4)->result->count, 3);
	int64_t m1_seen = 0, m2_seen = 0;
	for (uint64_t seq = before + 1; seq <= before + 3; seq++) {
		Tally__V1__Entry *e = entry_at(&f, seq);
		assert_int_equal(e->kind, KIND(LOT_EXPIRED));
		assert_null(e->command);
		assert_int_equal(e->n_lots, 1);
		int64_t p = e->lots[0]->points;
		assert_int_equal(e->result->points, p);
		assert_int_equal(posted(e, SYS(MEMBER), e->member, BUCKET(AVAILABLE)), -p);
		assert_int_equal(posted(e, SYS(EXPIRED), NULL, 0), p);
		assert_entry_balanced(e);
		if (strcmp(e->member, "m1") == 0) {
			assert_true(e->lots[0]->expiry_ms == exp1 || e->lots[0]->expiry_ms == exp2);
			assert_int_equal(p, e->lots[0]->expiry_ms == exp1 ? 5 : 30);
			m1_seen += p;
		} else {
			assert_string_equal(e->member, "m2");
			assert_lot_move(e, 0, exp1, 20);
			m2_seen += p;
		}
	}
	assert_int_equal(m1_seen, 35);
	assert_int_equal(m2_seen, 20);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 0);
	assert_int_equal(a->expired, 35);
	assert_int_equal(a->redeemed, 5);
	assert_int_equal(a->n_lots, 0);
	a = account(&f, "b", "m2");
	assert_int_equal(a->available, 0);
	assert_int_equal(a->expired, 20);
	a = account(&f, "b", "m3");
	assert_int_equal(a->available, 40);
	assert_int_equal(a->expired, 0);
	/* Nothing more to do. */
	struct tally_digest d = digest(&f);
	r = ok(&f, c_expire(&f, timer(&f)));
	assert_int_equal(r->count, 0);
	assert_false(r->more);
	assert_unchanged(&f, &d);
	assert_invariants(&f);
	fx_close(&f);
}

/* The expiry row stays behind when the first lot goes (a redemption writes no index
 * row), moves ahead at once for a lot that expires sooner, and is moved on by the sweep
 * when its time comes, which expires nothing then and says so (count 0). */
static void test_the_expiry_row_stays_behind_a_spent_lot_until_the_sweep_moves_it(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	int64_t t0 = f.now_ms;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 10));
	int64_t e1 = account(&f, "b", "m1")->lots[0]->expiry_ms;
	f.now_ms = t0 + DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 20));
	ok(&f, c_redeem(&f, mall(&f), "b", "m1", 10)); /* the first lot is spent */
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->n_lots, 1);
	int64_t e2 = a->lots[0]->expiry_ms;
	assert_true(e2 > e1);
	assert_int_equal(a->lot_index_ms, e1); /* behind the first lot, not past it */
	assert_invariants(&f);
	/* A lot that expires sooner than the row moves it at once. */
	int64_t early = t0 + 10 * DAY_MS;
	ok(&f, c_import(&f, admin(&f), "b", "m2", 5, e1));
	ok(&f, c_import(&f, admin(&f), "b", "m2", 5, early));
	assert_int_equal(account(&f, "b", "m2")->lot_index_ms, early);
	/* The sweep at e1 expires nothing of m1 and moves its row to e2. */
	f.now_ms = e1;
	uint64_t before = tree_size(&f);
	Tally__V1__CommandResult *r = ok(&f, c_expire(&f, timer(&f)));
	assert_int_equal(r->count, 2); /* m2's two lots */
	assert_false(r->more);
	assert_int_equal(count_kind(&f, before, KIND(LOT_EXPIRED), NULL), 2);
	a = account(&f, "b", "m1");
	assert_int_equal(a->available, 20);
	assert_int_equal(a->lot_index_ms, e2);
	assert_int_equal(account(&f, "b", "m2")->lot_index_ms, 0);
	assert_invariants(&f);
	/* A row that only moves is budgeted but not counted, and its change is journaled. */
	int64_t e3 = e1 + HOUR_MS; /* before m1's row at e2 */
	ok(&f, c_import(&f, admin(&f), "b", "m3", 10, e3));
	ok(&f, c_redeem(&f, mall(&f), "b", "m3", 10));
	assert_int_equal(account(&f, "b", "m3")->lot_index_ms, e3);
	f.now_ms = e3;
	before = tree_size(&f);
	r = ok(&f, c_expire_max(&f, 1));
	assert_int_equal(r->count, 0);
	assert_false(r->more);
	assert_int_equal(tree_size(&f), before + 1); /* the expire's own entry */
	assert_int_equal(entry_at(&f, before + 1)->result->count, 0);
	assert_int_equal(account(&f, "b", "m3")->lot_index_ms, 0);
	struct tally_digest d = digest(&f);
	r = ok(&f, c_expire(&f, timer(&f)));
	assert_int_equal(r->count, 0);
	assert_unchanged(&f, &d);
	/* At e2, m1's lot expires and its row goes. */
	f.now_ms = e2;
	r = ok(&f, c_expire(&f, timer(&f)));
	assert_int_equal(r->count, 1);
	a = account(&f, "b", "m1");
	assert_int_equal(a->available, 0);
	assert_int_equal(a->lot_index_ms, 0);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_expire_handles_at_most_max_items_and_reports_more(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	for (size_t i = 0; i < 3; i++)
		ok(&f, c_accrue(&f, dealer(&f), "b", MEMBERS[i], 10));
	f.now_ms = utc(2026, 2, 2, 0, 0, 0);
	uint64_t before = tree_size(&f);
	Tally__V1__CommandResult *r = ok(&f, c_expire_max(&f, 2));
	assert_int_equal(r->count, 2);
	assert_true(r->more);
	assert_int_equal(tree_size(&f), before + 2 + 1); /* and the expire's own entry */
	r = ok(&f, c_expire_max(&f, 2));
	assert_int_equal(r->count, 1);
	assert_false(r->more);
	assert_int_equal(tree_size(&f), before + 3 + 2);
	/* an expire that finds nothing changes nothing and leaves no entry */
	r = ok(&f, c_expire_max(&f, 2));
	assert_int_equal(r->count, 0);
	assert_int_equal(tree_size(&f), before + 3 + 2);
	assert_int_equal(count_kind(&f, before, KIND(LOT_EXPIRED), NULL), 3);
	for (size_t i = 0; i < 3; i++)
		assert_int_equal(account(&f, "b", MEMBERS[i])->expired, 10);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_expire_reports_no_more_when_the_budget_is_exactly_used_up(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 10));
	ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 10));
	f.now_ms = utc(2026, 2, 2, 0, 0, 0);
	Tally__V1__CommandResult *r = ok(&f, c_expire_max(&f, 2));
	assert_int_equal(r->count, 2);
	assert_false(r->more);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_expire_never_handles_more_than_max_items_within_one_account(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	int64_t t0 = f.now_ms;
	for (int i = 0; i < 3; i++) {
		f.now_ms = t0 + i * DAY_MS;
		ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 10 + i));
	}
	f.now_ms = utc(2026, 3, 1, 0, 0, 0);
	uint64_t before = tree_size(&f);
	Tally__V1__CommandResult *r = ok(&f, c_expire_max(&f, 2));
	assert_int_equal(r->count, 2);
	assert_true(r->more);
	assert_int_equal(tree_size(&f), before + 2 + 1); /* and the expire's own entry */
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->expired, 10 + 11); /* first-expiring first */
	assert_int_equal(a->available, 12);
	assert_invariants(&f);
	r = ok(&f, c_expire_max(&f, 2));
	assert_int_equal(r->count, 1);
	assert_false(r->more);
	a = account(&f, "b", "m1");
	assert_int_equal(a->expired, 33);
	assert_int_equal(a->available, 0);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_expire_budget_spans_lots_and_tier_windows(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	struct rules ru = TIERED;
	ru.expiry_months = 1;
	setup_rules(&f, "b", &ru);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 150)); /* lot runs out 2026-02-01 */
	ok(&f, c_brand_expiry(&f, "b", 0));
	ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 120)); /* never runs out, leaves window */
	f.now_ms = utc(2026, 2, 15, 0, 0, 0);
	Tally__V1__CommandResult *r = ok(&f, c_expire_max(&f, 1));
	assert_int_equal(r->count, 1);
	assert_true(r->more);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->expired, 150);
	assert_int_equal(a->qualifying, 0); /* the same touch let its window pass */
	assert_string_equal(account(&f, "b", "m2")->tier, "silver");
	r = ok(&f, c_expire_max(&f, 1));
	assert_int_equal(r->count, 1);
	assert_false(r->more);
	a = account(&f, "b", "m2");
	assert_int_equal(a->qualifying, 0);
	assert_string_equal(a->tier, "");
	assert_int_equal(a->available, 120);
	r = ok(&f, c_expire_max(&f, 1));
	assert_int_equal(r->count, 0);
	assert_false(r->more);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_hold_released_after_its_lot_ran_out_posts_the_points_as_expired(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100)); /* runs out 2026-02-01 */
	uint64_t hold = ok(&f, c_hold(&f, mall(&f), "b", "m1", 100, 40 * 86400))->hold_id;
	f.now_ms = utc(2026, 2, 15, 0, 0, 0);
	uint64_t before = tree_size(&f);
	ok(&f, c_expire(&f, timer(&f)));
	Tally__V1__Entry *e = entry_at(&f, before + 1);
	assert_int_equal(e->kind, KIND(HOLD_RELEASED));
	assert_int_equal(e->cause_seq, hold);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(HELD)), -100);
	assert_int_equal(posted(e, SYS(EXPIRED), NULL, 0), 100);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), 0);
	assert_entry_balanced(e);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 0);
	assert_int_equal(a->held, 0);
	assert_int_equal(a->expired, 100);
	assert_int_equal(a->n_lots, 0);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_expire_batch_releases_every_hold_past_its_timeout(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 100));
	uint64_t h1 = ok(&f, c_hold(&f, mall(&f), "b", "m1", 10, 60))->hold_id;
	uint64_t h2 = ok(&f, c_hold(&f, mall(&f), "b", "m2", 20, 120))->hold_id;
	uint64_t h3 = ok(&f, c_hold(&f, mall(&f), "b", "m2", 30, 3600))->hold_id;
	uint64_t before = tree_size(&f);
	f.now_ms += 10 * MIN_MS;
	ok(&f, c_expire(&f, timer(&f)));
	assert_int_equal(count_kind(&f, before, KIND(HOLD_RELEASED), NULL), 2);
	assert_int_equal(entry_at(&f, before + 1)->cause_seq, h1);
	assert_int_equal(entry_at(&f, before + 2)->cause_seq, h2);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 100);
	assert_int_equal(a->held, 0);
	a = account(&f, "b", "m2");
	assert_int_equal(a->available, 70);
	assert_int_equal(a->held, 30);
	assert_int_equal(a->n_holds, 1);
	assert_int_equal(a->holds[0]->id, h3);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_lot_is_expired_when_a_command_next_touches_the_account(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	int64_t exp1 = utc(2026, 2, 1, 0, 0, 0);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	f.now_ms = utc(2026, 2, 15, 0, 0, 0);
	/* Untouched, the stored account still shows the lot. */
	assert_int_equal(available(&f, "b", "m1"), 100);
	uint64_t before = tree_size(&f);
	Tally__V1__CommandResult *r = ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 50));
	assert_int_equal(r->available, 50);
	assert_int_equal(r->entry_seq, before + 2);
	Tally__V1__Entry *e = entry_at(&f, before + 1);
	assert_int_equal(e->kind, KIND(LOT_EXPIRED));
	assert_string_equal(e->brand, "b");
	assert_string_equal(e->member, "m1");
	assert_lot_move(e, 0, exp1, 100);
	assert_int_equal(e->result->points, 100);
	assert_int_equal(e->result->available, 0);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), -100);
	assert_int_equal(posted(e, SYS(EXPIRED), NULL, 0), 100);
	assert_entry_balanced(e);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 50);
	assert_int_equal(a->expired, 100);
	assert_int_equal(a->earned, 150);
	assert_int_equal(a->n_lots, 1);
	assert_int_equal(lot_points(a, exp1), 0);
	/* A command rejected after time passed keeps the expiry it caused. */
	ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 30));
	f.now_ms = utc(2026, 3, 20, 0, 0, 0);
	before = tree_size(&f);
	expect(&f, c_redeem(&f, mall(&f), "b", "m2", 30), CODE(INSUFFICIENT_POINTS));
	assert_int_equal(tree_size(&f), before + 2);
	assert_int_equal(entry_at(&f, before + 1)->kind, KIND(LOT_EXPIRED));
	/* the refused redeem changed state, so the journal holds it with its refusal */
	Tally__V1__Entry *refused = entry_at(&f, before + 2);
	assert_int_equal(refused->kind, KIND(COMMAND));
	assert_int_equal(refused->result->code, CODE(INSUFFICIENT_POINTS));
	assert_int_equal(refused->n_postings, 0);
	/* ... and a refused command's entry cannot be reversed: it moved no points */
	Tally__V1__Command *rev = c_reverse(&f, mall(&f), before + 2, 0);
	expect(&f, rev, CODE(INVALID_ARGUMENT));
	a = account(&f, "b", "m2");
	assert_int_equal(a->available, 0);
	assert_int_equal(a->expired, 30);
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* idempotency                                                                       */
/* ================================================================================ */

/* The idempotency tests run under the first rules (a record with the content's
 * SHA-256) and under TALLY_RULES_IDEM_SEQ (the entry's seq alone): the rules are the
 * test's prestate, none meaning the first. */
static void fx_open_under(struct fx *f, void **state)
{
	fx_open(f);
	uint32_t rules = state != NULL && *state != NULL ? *(const uint32_t *)*state : TALLY_RULES_FIRST;
	if (rules > TALLY_RULES_FIRST)
		ok(f, c_set_rules(f, rules));
}

static const uint32_t rules_idem_seq = TALLY_RULES_IDEM_SEQ;
#define UNDER_RULES_IDEM_SEQ(f) {#f " (rules 3)", f, NULL, NULL, (void *)&rules_idem_seq}

static void test_retry_with_same_key_request_id_and_content_returns_original_result_as_replay(void **state)
{
	struct fx f;
	fx_open_under(&f, state);
	setup_plain(&f, "b", 12);
	Tally__V1__CommandResult *r =
		ok(&f, with_req(&f, c_accrue(&f, dealer(&f), "b", "m1", 100), "req-1"));
	uint64_t seq = r->entry_seq;
	assert_false(r->replay);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 5)); /* the account moves on */
	struct tally_digest before = digest(&f);
	r = ok(&f, with_req(&f, c_accrue(&f, dealer(&f), "b", "m1", 100), "req-1"));
	assert_true(r->replay);
	assert_int_equal(r->entry_seq, seq);
	assert_int_equal(r->available, 100); /* the original result, not today's balance */
	assert_int_equal(r->points, 100);
	assert_unchanged(&f, &before);
	assert_int_equal(available(&f, "b", "m1"), 105);
	/* A hold's retry names the same hold and holds nothing more. */
	Tally__V1__CommandResult *h =
		ok(&f, with_req(&f, c_hold(&f, mall(&f), "b", "m1", 30, 600), "req-1"));
	uint64_t hold = h->hold_id;
	before = digest(&f);
	h = ok(&f, with_req(&f, c_hold(&f, mall(&f), "b", "m1", 30, 600), "req-1"));
	assert_true(h->replay);
	assert_int_equal(h->hold_id, hold);
	assert_int_equal(h->entry_seq, hold);
	assert_unchanged(&f, &before);
	/* Retries inside one batch are replays too. */
	Tally__V1__Command *twice[2] = {
		with_req(&f, c_redeem(&f, mall(&f), "b", "m1", 10), "req-2"),
		with_req(&f, c_redeem(&f, mall(&f), "b", "m1", 10), "req-2"),
	};
	Tally__V1__CommandResult **rs = apply_n(&f, twice, 2);
	assert_int_equal(rs[0]->code, CODE(OK));
	assert_int_equal(rs[1]->code, CODE(OK));
	assert_false(rs[0]->replay);
	assert_true(rs[1]->replay);
	assert_int_equal(rs[1]->entry_seq, rs[0]->entry_seq);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->available, 65);
	assert_int_equal(a->held, 30);
	assert_int_equal(a->redeemed, 10);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_same_request_id_with_different_content_is_idempotency_conflict(void **state)
{
	struct fx f;
	fx_open_under(&f, state);
	setup_plain(&f, "b", 12);
	ok(&f, with_req(&f, c_accrue(&f, dealer(&f), "b", "m1", 100), "req-1"));
	struct tally_digest before = digest(&f);
	Tally__V1__CommandResult *r = expect(
		&f, with_req(&f, c_accrue(&f, dealer(&f), "b", "m1", 101), "req-1"),
		CODE(IDEMPOTENCY_CONFLICT));
	assert_int_equal(r->entry_seq, 0);
	assert_false(r->replay);
	expect(&f, with_req(&f, c_accrue(&f, dealer(&f), "b", "m2", 100), "req-1"),
	       CODE(IDEMPOTENCY_CONFLICT));
	expect(&f, with_req(&f, c_redeem(&f, dealer(&f), "b", "m1", 100), "req-1"),
	       CODE(PERMISSION_DENIED)); /* the role check comes first */
	expect(&f, with_req(&f, c_member(&f, dealer(&f), "m9"), "req-1"), CODE(IDEMPOTENCY_CONFLICT));
	assert_unchanged(&f, &before);
	assert_int_equal(available(&f, "b", "m1"), 100);
	assert_invariants(&f);
	fx_close(&f);
}

/* Records written before the ledger switched to TALLY_RULES_IDEM_SEQ keep the content's
 * hash and still answer retries and conflicts after it; records written after hold
 * the seq alone, and both kinds live side by side. */
static void test_idempotency_records_of_both_rules_answer_after_the_switch(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	ok(&f, c_set_rules(&f, TALLY_RULES_BOUNDED_LOTS));
	setup_plain(&f, "b", 12);
	Tally__V1__CommandResult *before_switch =
		ok(&f, with_req(&f, c_accrue(&f, dealer(&f), "b", "m1", 100), "old"));
	uint64_t old_seq = before_switch->entry_seq;
	ok(&f, c_set_rules(&f, TALLY_RULES_IDEM_SEQ));
	Tally__V1__CommandResult *after_switch =
		ok(&f, with_req(&f, c_accrue(&f, dealer(&f), "b", "m1", 7), "new"));
	uint64_t new_seq = after_switch->entry_seq;
	struct tally_digest before = digest(&f);
	Tally__V1__CommandResult *r =
		ok(&f, with_req(&f, c_accrue(&f, dealer(&f), "b", "m1", 100), "old"));
	assert_true(r->replay);
	assert_int_equal(r->entry_seq, old_seq);
	r = ok(&f, with_req(&f, c_accrue(&f, dealer(&f), "b", "m1", 7), "new"));
	assert_true(r->replay);
	assert_int_equal(r->entry_seq, new_seq);
	expect(&f, with_req(&f, c_accrue(&f, dealer(&f), "b", "m1", 101), "old"),
	       CODE(IDEMPOTENCY_CONFLICT));
	expect(&f, with_req(&f, c_accrue(&f, dealer(&f), "b", "m2", 7), "new"),
	       CODE(IDEMPOTENCY_CONFLICT));
	assert_unchanged(&f, &before);
	assert_int_equal(available(&f, "b", "m1"), 107);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_rejected_command_leaves_no_record_and_its_retry_can_succeed(void **state)
{
	struct fx f;
	fx_open_under(&f, state);
	setup_plain(&f, "b", 12);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 50));
	struct tally_digest before = digest(&f);
	expect(&f, with_req(&f, c_redeem(&f, mall(&f), "b", "m1", 80), "req-1"),
	       CODE(INSUFFICIENT_POINTS));
	assert_unchanged(&f, &before);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 50));
	Tally__V1__CommandResult *r =
		ok(&f, with_req(&f, c_redeem(&f, mall(&f), "b", "m1", 80), "req-1"));
	assert_false(r->replay);
	assert_int_equal(r->available, 20);
	uint64_t seq = r->entry_seq;
	r = ok(&f, with_req(&f, c_redeem(&f, mall(&f), "b", "m1", 80), "req-1"));
	assert_true(r->replay);
	assert_int_equal(r->entry_seq, seq);
	assert_int_equal(available(&f, "b", "m1"), 20);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_same_request_id_under_another_key_is_a_different_intent(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100));
	Tally__V1__Principal *a = who(&f, TALLY__V1__ROLE__MALL, "mall-a", "*");
	Tally__V1__Principal *b = who(&f, TALLY__V1__ROLE__MALL, "mall-b", "*");
	Tally__V1__CommandResult *r1 = ok(&f, with_req(&f, c_redeem(&f, a, "b", "m1", 30), "req-1"));
	uint64_t seq1 = r1->entry_seq;
	Tally__V1__CommandResult *r2 = ok(&f, with_req(&f, c_redeem(&f, b, "b", "m1", 30), "req-1"));
	assert_false(r2->replay);
	assert_int_not_equal(r2->entry_seq, seq1);
	assert_int_equal(r2->available, 40);
	/* ... and different content under the other key is no conflict either. */
	ok(&f, with_req(&f, c_redeem(&f, who(&f, TALLY__V1__ROLE__MALL, "mall-c", "*"), "b", "m1", 5),
			"req-1"));
	Tally__V1__Account *acct = account(&f, "b", "m1");
	assert_int_equal(acct->available, 35);
	assert_int_equal(acct->redeemed, 65);
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* postings                                                                          */
/* ================================================================================ */

static void test_every_entry_posts_to_member_and_system_accounts_summing_to_zero_per_brand(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	setup_brand(&f, "c", 0);
	uint64_t acc = ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 500))->entry_seq;
	ok(&f, c_accrue(&f, dealer(&f), "c", "m1", 70));
	uint64_t red = ok(&f, c_redeem(&f, mall(&f), "b", "m1", 100))->entry_seq;
	uint64_t h1 = ok(&f, c_hold(&f, mall(&f), "b", "m1", 50, 60))->hold_id;
	uint64_t h2 = ok(&f, c_hold(&f, mall(&f), "b", "m1", 40, 3600))->hold_id;
	uint64_t h3 = ok(&f, c_hold(&f, mall(&f), "b", "m1", 30, 3600))->hold_id;
	uint64_t cap = ok(&f, c_capture(&f, mall(&f), h2, 25))->entry_seq;
	ok(&f, c_void(&f, mall(&f), h3));
	ok(&f, c_transfer(&f, mall(&f), "b", "m1", "m2", 60));
	ok(&f, c_adjust(&f, admin(&f), "b", "m2", 15, "goodwill"));
	ok(&f, c_adjust(&f, admin(&f), "b", "m2", -5, "correction"));
	ok(&f, c_reverse(&f, mall(&f), red, 40));
	ok(&f, c_reverse(&f, mall(&f), cap, 0));
	ok(&f, c_reverse(&f, dealer(&f), acc, 10));
	f.now_ms += 2 * MIN_MS; /* releases h1 */
	ok(&f, c_redeem(&f, mall(&f), "c", "m1", 20));
	f.now_ms = utc(2026, 3, 1, 0, 0, 0);
	ok(&f, c_expire(&f, timer(&f)));
	assert_int_equal(count_kind(&f, 0, KIND(HOLD_RELEASED), NULL), 1);
	assert_true(count_kind(&f, 0, KIND(LOT_EXPIRED), NULL) >= 2);
	(void)h1;
	assert_journal_balanced(&f);
	/* A few entries posting by posting. */
	Tally__V1__Entry *e = entry_at(&f, acc);
	assert_int_equal(e->n_postings, 2);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), 500);
	assert_int_equal(posted(e, SYS(ISSUANCE), NULL, 0), -500);
	e = entry_at(&f, red);
	assert_int_equal(e->n_postings, 2);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), -100);
	assert_int_equal(posted(e, SYS(REDEEMED), NULL, 0), 100);
	for (size_t i = 0; i < e->n_postings; i++)
		assert_string_equal(e->postings[i]->brand, "b");
	Tally__V1__Entry *last = NULL;
	count_kind(&f, 0, KIND(LOT_EXPIRED), &last);
	assert_int_equal(last->n_postings, 2);
	assert_int_equal(posted(last, SYS(MEMBER), last->member, BUCKET(AVAILABLE)),
			 -last->lots[0]->points);
	assert_int_equal(posted(last, SYS(EXPIRED), NULL, 0), last->lots[0]->points);
	/* Nothing of brand c moved with brand b: its accounts stand alone. */
	Tally__V1__Account *a = account(&f, "c", "m1");
	assert_int_equal(a->available, 50);
	assert_int_equal(a->redeemed, 20);
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* reversal of an expired accrual, the lot limit                                     */
/* ================================================================================ */

static void test_reverse_of_accrual_whose_lot_ran_out_takes_expired_points_not_other_lots(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 1);
	int64_t exp_a = utc(2026, 2, 1, 0, 0, 0), exp_b = utc(2026, 3, 5, 0, 0, 0);
	uint64_t acc_a = ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 100))->entry_seq; /* lot A */
	/* A month and more later lot A ran out: the accrual of lot B touches m1 first. */
	f.now_ms = utc(2026, 2, 5, 0, 0, 0);
	uint64_t before = tree_size(&f);
	Tally__V1__CommandResult *r = ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 50)); /* lot B */
	assert_int_equal(r->available, 50);
	Tally__V1__Entry *expired = NULL;
	assert_int_equal(count_kind(&f, before, KIND(LOT_EXPIRED), &expired), 1);
	assert_lot_move(expired, 0, exp_a, 100);
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->expired, 100);
	assert_int_equal(a->earned, 150);
	assert_int_equal(a->n_lots, 1);
	assert_int_equal(lot_points(a, exp_b), 50);

	r = ok(&f, c_reverse(&f, dealer(&f), acc_a, 0));
	assert_int_equal(r->points, 100);
	assert_int_equal(r->available, 50);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->cause_seq, acc_a);
	assert_int_equal(e->n_postings, 2);
	assert_int_equal(posted(e, SYS(EXPIRED), NULL, 0), -100);
	assert_int_equal(posted(e, SYS(ISSUANCE), NULL, 0), 100);
	assert_int_equal(posted(e, SYS(MEMBER), "m1", BUCKET(AVAILABLE)), 0);
	assert_int_equal(e->n_lots, 0); /* no lot gave anything */
	assert_entry_balanced(e);
	a = account(&f, "b", "m1");
	assert_int_equal(a->available, 50);
	assert_int_equal(a->expired, 0);
	assert_int_equal(a->earned, 50);
	assert_int_equal(a->n_lots, 1);
	assert_int_equal(lot_points(a, exp_b), 50); /* lot B untouched */
	assert_int_equal(lot_points(a, exp_a), 0);
	expect(&f, c_reverse(&f, dealer(&f), acc_a, 0), CODE(ALREADY_REVERSED));
	assert_invariants(&f);

	/* m2 spent 70 of lot C before it ran out: only 30 of it expired, and a reversal
	 * takes no more than that, however many points m2 holds now. */
	uint64_t acc_c = ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 100))->entry_seq;
	ok(&f, c_redeem(&f, mall(&f), "b", "m2", 70));
	f.now_ms = utc(2026, 3, 10, 0, 0, 0);
	ok(&f, c_accrue(&f, dealer(&f), "b", "m2", 200)); /* expires C's 30 first */
	a = account(&f, "b", "m2");
	assert_int_equal(a->expired, 30);
	assert_int_equal(a->available, 200);
	struct tally_digest d = digest(&f);
	r = expect(&f, c_reverse(&f, dealer(&f), acc_c, 0), CODE(INSUFFICIENT_POINTS));
	assert_non_null(strstr(r->message, "expired"));
	expect(&f, c_reverse(&f, dealer(&f), acc_c, 31), CODE(INSUFFICIENT_POINTS));
	assert_unchanged(&f, &d);
	r = ok(&f, c_reverse(&f, dealer(&f), acc_c, 30));
	assert_int_equal(r->available, 200);
	a = account(&f, "b", "m2");
	assert_int_equal(a->expired, 0);
	assert_int_equal(a->available, 200);
	assert_int_equal(a->earned, 270);
	expect(&f, c_reverse(&f, dealer(&f), acc_c, 1), CODE(INSUFFICIENT_POINTS));
	assert_invariants(&f);
	fx_close(&f);
}

/* Lots of the account whose expiry is a month's first millisecond or never: the lots
 * a full account may add (TALLY_ACCOUNT_LOTS_EXACT_MAX). */
static size_t month_lots(const Tally__V1__Account *acct)
{
	size_t n = 0;
	for (size_t i = 0; i < acct->n_lots; i++) {
		int64_t e = acct->lots[i]->expiry_ms;
		time_t t = (time_t)(e / 1000);
		struct tm tm;
		assert_non_null(gmtime_r(&t, &tm));
		n += e == 0 || (e % 1000 == 0 && tm.tm_mday == 1 && tm.tm_hour == 0 &&
				tm.tm_min == 0 && tm.tm_sec == 0);
	}
	return n;
}

static int64_t lots_sum(const Tally__V1__Account *acct)
{
	int64_t sum = 0;
	for (size_t i = 0; i < acct->n_lots; i++)
		sum += acct->lots[i]->points;
	return sum;
}

/* A ledger follows the first rules until a set_rules entry, and the bounded lots from
 * that entry on: the journal says where the rules changed, so a replay of it switches
 * at the same place. Only the cluster may switch (SYSTEM), only forward, and a version
 * this binary does not have stops the batch with nothing written. */
static void test_set_rules_switches_the_ledger_at_its_entry(void **state)
{
	(void)state;
	enum { EXACT = TALLY_ACCOUNT_LOTS_EXACT_MAX };
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	assert_int_equal(tally_ledger_rules(f.l), TALLY_RULES_FIRST);
	Tally__V1__Principal *d = dealer(&f);
	int64_t t0 = utc(2026, 1, 1, 0, 1, 0), e0 = utc(2027, 1, 1, 0, 1, 0);
	for (int64_t i = 0; i <= EXACT; i++) {
		f.now_ms = t0 + i;
		ok(&f, c_accrue(&f, d, "b", "m1", 1));
	}
	/* Under the first rules lot EXACT + 1 keeps its exact expiry. */
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->n_lots, EXACT + 1);
	assert_int_equal(a->lots[EXACT]->expiry_ms, e0 + EXACT);
	/* And an import may keep an expiry past the horizon of the bounded lots. */
	int64_t far = utc(2200, 1, 1, 0, 0, 0);
	ok(&f, c_import(&f, admin(&f), "b", "m2", 10, far));

	/* Nobody but the cluster switches the rules. */
	struct tally_digest before = digest(&f);
	Tally__V1__Command *c = c_set_rules(&f, TALLY_RULES_BOUNDED_LOTS);
	c->principal = admin(&f);
	expect(&f, c, CODE(PERMISSION_DENIED));
	expect(&f, c_set_rules(&f, 0), CODE(INVALID_ARGUMENT));
	expect(&f, c_set_rules(&f, TALLY_RULES_FIRST), CODE(ALREADY_EXISTS));
	assert_unchanged(&f, &before);

	/* A version this binary does not have: the batch fails whole, nothing written. */
	Tally__V1__Command *later[2] = {c_accrue(&f, d, "b", "m2", 1),
					c_set_rules(&f, TALLY_RULES_CURRENT + 1)};
	Tally__V1__Batch b = TALLY__V1__BATCH__INIT;
	b.raft_index = f.index + 1;
	b.raft_term = 1;
	b.time_ms = f.now_ms;
	b.n_commands = 2;
	b.commands = later;
	Tally__V1__CommandResult **rs;
	bool skipped;
	assert_int_equal(tally_ledger_apply_batch(f.l, &b, &f.results, &rs, &skipped), TALLY_EVERSION);
	assert_unchanged(&f, &before);
	assert_int_equal(tally_ledger_applied_index(f.l), f.index);
	assert_int_equal(tally_ledger_rules(f.l), TALLY_RULES_FIRST);

	/* The switch is an entry of the journal, with no postings. */
	Tally__V1__CommandResult *r = ok(&f, c_set_rules(&f, TALLY_RULES_BOUNDED_LOTS));
	assert_int_equal(r->entry_seq, before.tree_size + 1);
	Tally__V1__Entry *e = entry_at(&f, r->entry_seq);
	assert_int_equal(e->kind, TALLY__V1__ENTRY_KIND__COMMAND);
	assert_int_equal(e->command->body_case, TALLY__V1__COMMAND__BODY_SET_RULES);
	assert_int_equal(e->command->set_rules->version, TALLY_RULES_BOUNDED_LOTS);
	assert_int_equal(e->n_postings, 0);
	assert_string_equal(e->brand, "");
	assert_int_equal(tally_ledger_rules(f.l), TALLY_RULES_BOUNDED_LOTS);
	before = digest(&f);
	expect(&f, c_set_rules(&f, TALLY_RULES_BOUNDED_LOTS), CODE(ALREADY_EXISTS));
	assert_unchanged(&f, &before);

	/* From here the account's lots are bounded, and so are imports. */
	f.now_ms = t0 + EXACT + 1;
	r = ok(&f, c_accrue(&f, d, "b", "m1", 5));
	assert_lot_move(entry_at(&f, r->entry_seq), 0, utc(2027, 2, 1, 0, 0, 0), 5);
	expect(&f, c_import(&f, admin(&f), "b", "m2", 10, far), CODE(INVALID_ARGUMENT));

	/* The rules are the ledger's: they survive a reopen. */
	fx_ledger_close(&f);
	assert_int_equal(fx_ledger_open(&f), 0);
	assert_int_equal(tally_ledger_rules(f.l), TALLY_RULES_BOUNDED_LOTS);
	assert_invariants(&f);
	fx_close(&f);
}

/* The rules of a ledger written before they were recorded are those its format
 * applied: formats 3 and 4 the first rules, format 5 the bounded lots. From format 6 the
 * record is read, and a version this binary does not have is refused at open. */
static void test_a_ledger_of_an_older_format_is_under_the_rules_it_applied(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_set_rules(&f, TALLY_RULES_BOUNDED_LOTS));
	static const struct {
		uint8_t version;
		uint32_t rules;
	} formats[] = {{3, TALLY_RULES_FIRST}, {4, TALLY_RULES_FIRST}, {5, TALLY_RULES_BOUNDED_LOTS}};
	for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
		fx_ledger_close(&f);
		uint8_t version[8] = {0, 0, 0, 0, 0, 0, 0, formats[i].version};
		meta_poke(f.dir, "version", version, sizeof(version));
		meta_poke(f.dir, "rules", NULL, 0);
		assert_int_equal(fx_ledger_open(&f), 0);
		assert_int_equal(tally_ledger_rules(f.l), formats[i].rules);
		ok(&f, c_accrue(&f, dealer(&f), "b", "m1", 1)); /* written back as format 6 */
		fx_ledger_close(&f);
		assert_int_equal(fx_ledger_open(&f), 0);
		assert_int_equal(tally_ledger_rules(f.l), formats[i].rules);
	}
	uint8_t later[4] = {0, 0, 0, TALLY_RULES_CURRENT + 1}, none[4] = {0};
	fx_ledger_close(&f);
	meta_poke(f.dir, "rules", later, sizeof(later));
	assert_int_equal(fx_ledger_open(&f), TALLY_EVERSION);
	meta_poke(f.dir, "rules", none, sizeof(none));
	assert_int_equal(fx_ledger_open(&f), TALLY_ECORRUPT);
	meta_poke(f.dir, "rules", NULL, 0);
	assert_int_equal(fx_ledger_open(&f), TALLY_ECORRUPT); /* format 6 without its record */
	fx_close(&f);
}

/* Under the first rules (a ledger before its set_rules entry) an account holds at
 * most TALLY_ACCOUNT_LOTS_RULES_1_MAX lots and is refused points that would start
 * another, as Tally did before the bounded lots; the rules switched, the same accrual
 * goes to the lot of its month end. Replaying a journal of those days needs exactly
 * this. */
static void test_the_first_rules_refuse_a_lot_past_their_cap_until_set_rules(void **state)
{
	(void)state;
	enum { MAX = TALLY_ACCOUNT_LOTS_RULES_1_MAX, FEEDERS = 100, PER_FEEDER = MAX / FEEDERS };
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	Tally__V1__Principal *d = dealer(&f);
	/* One accrual per millisecond makes one lot. Every command rewrites the whole
	 * account record, so the accruals go to 100 feeder accounts of 100 lots each, and
	 * 100 transfers (the receiver keeps the sender's expiries) bring them all to m1. */
	char feeders[FEEDERS][16];
	Tally__V1__Command *cmds[FEEDERS];
	Tally__V1__CommandResult **rs;
	for (int k = 0; k < FEEDERS; k++) {
		snprintf(feeders[k], sizeof(feeders[k]), "f%d", k);
		cmds[k] = c_member(&f, admin(&f), feeders[k]);
	}
	rs = apply_n(&f, cmds, FEEDERS);
	for (int k = 0; k < FEEDERS; k++)
		assert_int_equal(rs[k]->code, CODE(OK));
	int64_t t0 = f.now_ms;
	for (int64_t i = 0; i < MAX; i++) {
		f.now_ms = t0 + i;
		Tally__V1__CommandResult *r = apply1(&f, c_accrue(&f, d, "b", feeders[i % FEEDERS], 1));
		if (r->code != CODE(OK))
			fail_msg("accrual %lld: %s: %s", (long long)i, tally_result_name(r->code),
				 r->message);
	}
	for (int k = 0; k < FEEDERS; k++)
		cmds[k] = c_transfer(&f, mall(&f), "b", feeders[k], "m1", PER_FEEDER);
	rs = apply_n(&f, cmds, FEEDERS);
	for (int k = 0; k < FEEDERS; k++)
		if (rs[k]->code != CODE(OK))
			fail_msg("transfer %d: %s: %s", k, tally_result_name(rs[k]->code),
				 rs[k]->message);
	int64_t last = utc(2027, 1, 1, 0, 0, 0) + MAX - 1;
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->n_lots, MAX);
	assert_int_equal(a->lots[MAX - 1]->expiry_ms, last);

	/* At the time of the newest lot an accrual merges into it: no new lot needed. */
	ok(&f, c_accrue(&f, d, "b", "m1", 5));
	assert_int_equal(lot_points(account(&f, "b", "m1"), last), 6);

	/* One millisecond later it would need lot MAX + 1: accrual, adjustment, transfer
	 * and exchange in are refused and change nothing. */
	f.now_ms = t0 + MAX;
	ok(&f, c_accrue(&f, d, "b", "m2", 10)); /* other accounts are not limited by m1's */
	struct tally_digest before = digest(&f);
	Tally__V1__CommandResult *r = expect(&f, c_accrue(&f, d, "b", "m1", 1), CODE(LIMIT_EXCEEDED));
	assert_non_null(strstr(r->message, "lots"));
	assert_int_equal(r->entry_seq, 0);
	r = expect(&f, c_adjust(&f, admin(&f), "b", "m1", 1, "goodwill"), CODE(LIMIT_EXCEEDED));
	assert_non_null(strstr(r->message, "lots"));
	r = expect(&f, c_transfer(&f, mall(&f), "b", "m2", "m1", 1), CODE(LIMIT_EXCEEDED));
	assert_non_null(strstr(r->message, "lots"));
	assert_unchanged(&f, &before);

	/* Switched to the bounded lots, the same accrual is taken, into the lot of the
	 * end of its expiry's month. */
	ok(&f, c_set_rules(&f, TALLY_RULES_BOUNDED_LOTS));
	r = ok(&f, c_accrue(&f, d, "b", "m1", 1));
	assert_lot_move(entry_at(&f, r->entry_seq), 0, utc(2027, 2, 1, 0, 0, 0), 1);
	a = account(&f, "b", "m1");
	assert_int_equal(a->n_lots, MAX + 1);
	assert_int_equal(lots_sum(a), a->available);
	assert_invariants(&f);
	fx_close(&f);
}

/* An account keeps TALLY_ACCOUNT_LOTS_EXACT_MAX lots at their exact expiries; points
 * that would start one more go to the lot at the end of their expiry's month, never
 * sooner, and the entry says which. However often a member earns, it is never refused
 * for the count of its lots. */
static void test_a_full_account_puts_new_points_in_the_lot_of_their_expirys_month_end(void **state)
{
	(void)state;
	enum { EXACT = TALLY_ACCOUNT_LOTS_EXACT_MAX, MINUTE = 60000 };
	struct fx f;
	fx_open(&f);
	setup_plain(&f, "b", 12);
	ok(&f, c_set_rules(&f, TALLY_RULES_BOUNDED_LOTS));
	Tally__V1__Principal *d = dealer(&f);
	int64_t t0 = utc(2026, 1, 1, 0, 1, 0), e0 = utc(2027, 1, 1, 0, 1, 0);
	for (int64_t i = 0; i < EXACT; i++) {
		f.now_ms = t0 + i * MINUTE;
		Tally__V1__CommandResult *r = ok(&f, c_accrue(&f, d, "b", "m1", 1));
		assert_lot_move(entry_at(&f, r->entry_seq), 0, e0 + i * MINUTE, 1);
	}
	Tally__V1__Account *a = account(&f, "b", "m1");
	assert_int_equal(a->n_lots, EXACT);
	assert_int_equal(a->lots[EXACT - 1]->expiry_ms, e0 + (EXACT - 1) * MINUTE);

	/* One more exact expiry would be lot EXACT + 1: the points go to the end of
	 * January 2027 instead, and so do later ones of that month. */
	int64_t feb = utc(2027, 2, 1, 0, 0, 0), mar = utc(2027, 3, 1, 0, 0, 0);
	f.now_ms = t0 + EXACT * MINUTE;
	Tally__V1__CommandResult *r = ok(&f, c_accrue(&f, d, "b", "m1", 5));
	uint64_t rounded_seq = r->entry_seq;
	assert_lot_move(entry_at(&f, rounded_seq), 0, feb, 5);
	f.now_ms = utc(2026, 1, 31, 23, 59, 59) + 999;
	ok(&f, c_adjust(&f, admin(&f), "b", "m1", 2, "goodwill"));
	f.now_ms = utc(2026, 2, 1, 0, 0, 0); /* expires at feb exactly: that lot */
	ok(&f, c_accrue(&f, d, "b", "m1", 3));
	a = account(&f, "b", "m1");
	assert_int_equal(a->n_lots, EXACT + 1);
	assert_int_equal(lot_points(a, feb), 10);
	f.now_ms += 1; /* a millisecond into February: the end of February 2027 */
	r = ok(&f, c_accrue(&f, d, "b", "m1", 7));
	assert_lot_move(entry_at(&f, r->entry_seq), 0, mar, 7);
	a = account(&f, "b", "m1");
	assert_int_equal(a->n_lots, EXACT + 2);
	assert_int_equal(lot_points(a, mar), 7);

	/* Points that come back or come over take the same way: a void returns the first
	 * lot's point to its month's end once that lot is gone, and says so. */
	r = ok(&f, c_hold(&f, mall(&f), "b", "m1", 1, 600));
	assert_int_equal(account(&f, "b", "m1")->n_lots, EXACT + 1);
	r = ok(&f, c_void(&f, mall(&f), r->hold_id));
	assert_lot_move(entry_at(&f, r->entry_seq), 0, feb, 1);
	assert_int_equal(lot_points(account(&f, "b", "m1"), feb), 11);
	assert_int_equal(lot_points(account(&f, "b", "m1"), e0), 0);
	ok(&f, c_accrue(&f, d, "b", "m2", 4)); /* m2's lot: 2027-02-01 00:00:00.001 */
	ok(&f, c_transfer(&f, mall(&f), "b", "m2", "m1", 4));
	assert_int_equal(lot_points(account(&f, "b", "m1"), mar), 11);
	/* A reversal takes from the lot the entry names. */
	ok(&f, c_reverse(&f, d, rounded_seq, 5));
	a = account(&f, "b", "m1");
	assert_int_equal(lot_points(a, feb), 6);
	assert_int_equal(a->n_lots, EXACT + 1);
	assert_int_equal(lots_sum(a), a->available);

	/* Two years of a member earning every six hours, its old lots expiring as it
	 * goes: never refused, never more lots than the exact ones plus month ends. */
	for (int i = 0; i < 2920; i++) {
		f.now_ms += 6 * 3600 * 1000LL;
		r = apply1(&f, c_accrue(&f, d, "b", "m1", 1 + i % 7));
		if (r->code != CODE(OK))
			fail_msg("accrual %d: %s: %s", i, tally_result_name(r->code), r->message);
		if (i % 97 != 0)
			continue;
		a = account(&f, "b", "m1");
		assert_true(a->n_lots <= EXACT + month_lots(a));
		assert_true(month_lots(a) <= 12 + 2);
		assert_int_equal(lots_sum(a), a->available);
	}
	assert_invariants(&f);
	fx_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_accrue_creates_lot_expiring_calendar_months_later_at_same_time_of_day),
		cmocka_unit_test(test_accrue_expiry_clamps_to_month_end_and_knows_leap_years),
		cmocka_unit_test(test_import_keeps_the_original_expiry_and_marks_the_entry),
		cmocka_unit_test(test_import_refusals_change_nothing),
		cmocka_unit_test(test_accrue_in_brand_without_expiry_creates_lot_that_never_expires),
		cmocka_unit_test(test_accrue_adds_qualifying_points_and_raises_tier),
		cmocka_unit_test(test_tier_falls_when_points_leave_window_on_expire_command),
		cmocka_unit_test(test_tier_falls_when_points_leave_window_on_next_command_touching_account),
		cmocka_unit_test(test_redeem_spends_lots_first_expiring_first),
		cmocka_unit_test(test_redeem_rejects_when_points_insufficient_and_changes_nothing),
		cmocka_unit_test(test_hold_moves_points_from_available_to_held),
		cmocka_unit_test(test_capture_of_whole_hold_redeems_every_held_point),
		cmocka_unit_test(test_partial_capture_returns_the_rest_to_available_with_its_expiry),
		cmocka_unit_test(test_void_returns_every_held_point_to_its_lot),
		cmocka_unit_test(test_void_after_the_held_lot_ran_out_posts_its_points_as_expired),
		cmocka_unit_test(test_second_resolve_of_a_hold_is_rejected_with_hold_resolved),
		cmocka_unit_test(test_capture_of_more_than_held_is_rejected_and_changes_nothing),
		cmocka_unit_test(test_hold_past_its_timeout_is_released_by_first_batch_past_it_then_capture_is_hold_expired),
		cmocka_unit_test(test_hold_sweep_releases_at_most_its_budget_per_batch_and_expire_reports_more_until_drained),
		cmocka_unit_test(test_holds_timed_out_beyond_the_budget_are_released_by_the_next_client_batches),
		cmocka_unit_test(test_capture_or_void_of_unknown_hold_is_rejected_with_hold_not_found),
		cmocka_unit_test(test_reverse_of_redemption_returns_points_to_their_lots),
		cmocka_unit_test(test_reverse_of_redemption_posts_parts_whose_lots_expired_since_as_expired),
		cmocka_unit_test(test_reverse_of_capture_returns_captured_points),
		cmocka_unit_test(test_reverse_of_accrual_claws_back_points_and_qualifying),
		cmocka_unit_test(test_partial_reversals_add_up_to_the_original_then_already_reversed),
		cmocka_unit_test(test_reverse_of_entry_that_is_not_accrual_redemption_or_capture_is_invalid_argument),
		cmocka_unit_test(test_reverse_of_unknown_entry_is_not_found),
		cmocka_unit_test(test_refund_after_partial_refund_returns_the_rest_and_posts_expired_parts),
		cmocka_unit_test(test_reverse_of_capture_posts_points_of_lots_expired_since_as_expired),
		cmocka_unit_test(test_reverse_of_accrual_whose_day_left_the_window_leaves_qualifying_alone),
		cmocka_unit_test(test_transfer_moves_points_and_receiver_lots_keep_sender_expiries),
		cmocka_unit_test(test_transfer_of_more_than_transfer_max_points_is_limit_exceeded),
		cmocka_unit_test(test_transfer_daily_cap_counts_per_sender_per_utc_day_and_resets_next_day),
		cmocka_unit_test(test_transfer_to_self_is_invalid_argument),
		cmocka_unit_test(test_transfer_rejects_when_sender_points_insufficient_and_changes_nothing),
		cmocka_unit_test(test_community_accruals_are_capped_per_member_per_utc_day),
		cmocka_unit_test(test_dealer_accruals_ignore_and_do_not_use_the_community_cap),
		cmocka_unit_test(test_positive_adjustment_creates_lot_under_brand_expiry),
		cmocka_unit_test(test_negative_adjustment_spends_lots_first_expiring_first),
		cmocka_unit_test(test_adjustment_without_reason_is_invalid_argument_naming_reason),
		cmocka_unit_test(test_expire_posts_lot_expired_entry_for_every_lot_that_ran_out),
		cmocka_unit_test(test_expire_handles_at_most_max_items_and_reports_more),
		cmocka_unit_test(test_expire_reports_no_more_when_the_budget_is_exactly_used_up),
		cmocka_unit_test(test_expire_never_handles_more_than_max_items_within_one_account),
		cmocka_unit_test(test_the_expiry_row_stays_behind_a_spent_lot_until_the_sweep_moves_it),
		cmocka_unit_test(test_expire_budget_spans_lots_and_tier_windows),
		cmocka_unit_test(test_expire_batch_releases_every_hold_past_its_timeout),
		cmocka_unit_test(test_hold_released_after_its_lot_ran_out_posts_the_points_as_expired),
		cmocka_unit_test(test_lot_is_expired_when_a_command_next_touches_the_account),
		cmocka_unit_test(test_retry_with_same_key_request_id_and_content_returns_original_result_as_replay),
		UNDER_RULES_IDEM_SEQ(test_retry_with_same_key_request_id_and_content_returns_original_result_as_replay),
		cmocka_unit_test(test_same_request_id_with_different_content_is_idempotency_conflict),
		UNDER_RULES_IDEM_SEQ(test_same_request_id_with_different_content_is_idempotency_conflict),
		cmocka_unit_test(test_rejected_command_leaves_no_record_and_its_retry_can_succeed),
		cmocka_unit_test(test_idempotency_records_of_both_rules_answer_after_the_switch),
		UNDER_RULES_IDEM_SEQ(test_rejected_command_leaves_no_record_and_its_retry_can_succeed),
		cmocka_unit_test(test_same_request_id_under_another_key_is_a_different_intent),
		cmocka_unit_test(test_every_entry_posts_to_member_and_system_accounts_summing_to_zero_per_brand),
		cmocka_unit_test(test_reverse_of_accrual_whose_lot_ran_out_takes_expired_points_not_other_lots),
		cmocka_unit_test(test_a_full_account_puts_new_points_in_the_lot_of_their_expirys_month_end),
		cmocka_unit_test(test_set_rules_switches_the_ledger_at_its_entry),
		cmocka_unit_test(test_a_ledger_of_an_older_format_is_under_the_rules_it_applied),
		cmocka_unit_test(test_the_first_rules_refuse_a_lot_past_their_cap_until_set_rules),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
