/* Bad input: every field check gives INVALID_ARGUMENT naming the field and changes
 * nothing; lookups, duplicates and limits give their own codes; batches and bytes
 * that cannot be applied are refused whole. */
#include "tests/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger/internal.h" /* seed_balance only: a state no test can reach by commands */

#define CODE(name) TALLY__V1__RESULT_CODE__##name

/* ---- helpers ---------------------------------------------------------------------- */

/* Applies c; expects `code` with a message naming `field`, no entry and no change. */
static void reject_as(struct fx *f, Tally__V1__Command *c, Tally__V1__ResultCode code,
		      const char *field)
{
	struct snap before = snap_take(f);
	Tally__V1__CommandResult *r = apply1(f, c);
	if (r->code != code)
		fail_msg("expected %s naming %s, got %s: %s", tally_result_name(code), field,
			 tally_result_name(r->code), r->message);
	if (field != NULL && (r->message == NULL || strstr(r->message, field) == NULL))
		fail_msg("%s: message \"%s\" does not name %s", tally_result_name(code),
			 r->message != NULL ? r->message : "(null)", field);
	assert_int_equal(r->entry_seq, 0);
	struct snap after = snap_take(f);
	assert_snap_equal(&before, &after);
}

#define invalid(f, c, field) reject_as((f), (c), CODE(INVALID_ARGUMENT), (field))

/* A string of n copies of ch, in the fixture's arena. */
static char *rep(struct fx *f, char ch, size_t n)
{
	char *s = zalloc(f, n + 1);
	memset(s, ch, n);
	return s;
}

static Tally__V1__Command *c_update_member(struct fx *f, const Tally__V1__Principal *p,
					   const char *id, Tally__V1__Segment segment)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	Tally__V1__UpdateMember *m = zalloc(f, sizeof(*m));
	tally__v1__update_member__init(m);
	m->id = tally_arena_strdup(&f->build, id);
	m->segment = segment;
	c->body_case = TALLY__V1__COMMAND__BODY_UPDATE_MEMBER;
	c->update_member = m;
	return c;
}

static Tally__V1__Tier *tier(struct fx *f, const char *name, int64_t min_points)
{
	Tally__V1__Tier *t = zalloc(f, sizeof(*t));
	tally__v1__tier__init(t);
	t->name = tally_arena_strdup(&f->build, name);
	t->min_points = min_points;
	return t;
}

static Tally__V1__Command *c_brand_tiers(struct fx *f, const char *id, int64_t first,
					 int64_t second)
{
	Tally__V1__Command *c = c_brand(f, admin(f), id, 0);
	Tally__V1__Tier **tiers = zalloc(f, 2 * sizeof(*tiers));
	tiers[0] = tier(f, "silver", first);
	tiers[1] = tier(f, "gold", second);
	c->register_brand->tiers = tiers;
	c->register_brand->n_tiers = 2;
	c->register_brand->tier_window_days = 365;
	return c;
}

/* Brand b1 and members m1, m2; m1 holds 1000 points of b1. */
static void setup(struct fx *f)
{
	setup_brand(f, "b1", 0);
	const char *ms[] = {"m1", "m2"};
	setup_members(f, ms, 2);
	ok(f, c_accrue(f, admin(f), "b1", "m1", 1000));
}

/* ---- the envelope ------------------------------------------------------------------- */

static void test_missing_or_empty_request_id_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	Tally__V1__Command *c = c_accrue(&f, admin(&f), "b1", "m1", 10);
	c->request_id = (char *)protobuf_c_empty_string; /* what a decoder gives when absent */
	invalid(&f, c, "request_id");
	c = c_accrue(&f, admin(&f), "b1", "m1", 10);
	c->request_id = (char *)"";
	invalid(&f, c, "request_id");
	c = c_accrue(&f, admin(&f), "b1", "m1", 10);
	c->request_id = (char *)"line\nbreak";
	invalid(&f, c, "request_id");
	assert_int_equal(available(&f, "b1", "m1"), 1000);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_request_id_over_64_bytes_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	Tally__V1__Command *c = c_accrue(&f, admin(&f), "b1", "m1", 10);
	c->request_id = rep(&f, 'r', 65);
	invalid(&f, c, "request_id");
	c = c_accrue(&f, admin(&f), "b1", "m1", 10);
	c->request_id = rep(&f, 'r', 64);
	ok(&f, c);
	assert_int_equal(available(&f, "b1", "m1"), 1010);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_missing_principal_or_unknown_role_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	Tally__V1__Command *c = c_accrue(&f, admin(&f), "b1", "m1", 10);
	c->principal = NULL;
	invalid(&f, c, "principal");
	invalid(&f, c_accrue(&f, who(&f, (Tally__V1__Role)42, "k", "*"), "b1", "m1", 10), "role");
	invalid(&f, c_accrue(&f, who(&f, TALLY__V1__ROLE__ROLE_UNSPECIFIED, "k", "*"), "b1", "m1", 10),
		"role");
	invalid(&f, c_accrue(&f, who(&f, TALLY__V1__ROLE__ADMIN, "", "*"), "b1", "m1", 10),
		"key_name");
	/* A scope must name brands (or "*"). */
	invalid(&f, c_accrue(&f, who(&f, TALLY__V1__ROLE__ADMIN, "k", ""), "b1", "m1", 10),
		"brands");
	invalid(&f, c_accrue(&f, who(&f, TALLY__V1__ROLE__ADMIN, "k", "B1"), "b1", "m1", 10),
		"brands");
	assert_invariants(&f);
	fx_close(&f);
}

static void test_command_without_a_known_body_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	Tally__V1__Command *c = cmd_new(&f, admin(&f), NULL);
	assert_int_equal(c->body_case, TALLY__V1__COMMAND__BODY__NOT_SET);
	invalid(&f, c, "body");
	c = cmd_new(&f, admin(&f), NULL);
	c->body_case = (Tally__V1__Command__BodyCase)99;
	invalid(&f, c, "body");
	assert_invariants(&f);
	fx_close(&f);
}

/* ---- fields --------------------------------------------------------------------------- */

static void test_points_outside_one_to_10e12_are_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	const int64_t bad[] = {0, -1, -1000, INT64_MIN, TALLY_POINTS_MAX + 1, INT64_MAX};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		invalid(&f, c_accrue(&f, admin(&f), "b1", "m1", bad[i]), "points");
		invalid(&f, c_redeem(&f, admin(&f), "b1", "m1", bad[i]), "points");
		invalid(&f, c_hold(&f, admin(&f), "b1", "m1", bad[i], 0), "points");
		invalid(&f, c_transfer(&f, admin(&f), "b1", "m1", "m2", bad[i]), "points");
		invalid(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", bad[i]), "points");
	}
	invalid(&f, c_adjust(&f, admin(&f), "b1", "m1", 0, "fix"), "points");
	invalid(&f, c_adjust(&f, admin(&f), "b1", "m1", TALLY_POINTS_MAX + 1, "fix"), "points");
	invalid(&f, c_adjust(&f, admin(&f), "b1", "m1", -TALLY_POINTS_MAX - 1, "fix"), "points");
	invalid(&f, c_adjust(&f, admin(&f), "b1", "m1", INT64_MIN, "fix"), "points");
	invalid(&f, c_capture(&f, admin(&f), 1, -1), "points");
	invalid(&f, c_reverse(&f, admin(&f), 1, -1), "points");
	/* 10^12 itself is fine. */
	Tally__V1__CommandResult *r = ok(&f, c_accrue(&f, admin(&f), "b1", "m1", TALLY_POINTS_MAX));
	assert_int_equal(r->available, TALLY_POINTS_MAX + 1000);
	ok(&f, c_redeem(&f, admin(&f), "b1", "m1", TALLY_POINTS_MAX));
	assert_int_equal(available(&f, "b1", "m1"), 1000);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_brand_id_with_capitals_or_over_32_bytes_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	invalid(&f, c_brand(&f, admin(&f), "Brand", 0), "id");
	invalid(&f, c_brand(&f, admin(&f), "b.1", 0), "id");
	invalid(&f, c_brand(&f, admin(&f), "", 0), "id");
	invalid(&f, c_brand(&f, admin(&f), rep(&f, 'b', 33), 0), "id");
	invalid(&f, c_accrue(&f, admin(&f), "B1", "m1", 10), "brand");
	invalid(&f, c_accrue(&f, admin(&f), rep(&f, 'b', 33), "m1", 10), "brand");
	invalid(&f, c_exchange(&f, admin(&f), "B1", "b1", "m1", 10), "from_brand");
	invalid(&f, c_exchange(&f, admin(&f), "b1", "B2", "m1", 10), "to_brand");
	invalid(&f, c_agreement(&f, admin(&f), "b1", "B2", 1, 1), "to_brand");
	invalid(&f, c_settle(&f, admin(&f), "B1", "b2", 0), "brand_a");
	ok(&f, c_brand(&f, admin(&f), rep(&f, 'b', 32), 0));
	ok(&f, c_brand(&f, admin(&f), "a-z_0-9", 0));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_member_id_over_64_bytes_or_with_control_char_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	invalid(&f, c_member(&f, admin(&f), rep(&f, 'm', 65)), "id");
	invalid(&f, c_member(&f, admin(&f), "m\x01"), "id");
	invalid(&f, c_member(&f, admin(&f), "tab\there"), "id");
	invalid(&f, c_member(&f, admin(&f), "del\x7f"), "id");
	invalid(&f, c_member(&f, admin(&f), ""), "id");
	invalid(&f, c_accrue(&f, admin(&f), "b1", rep(&f, 'm', 65), 10), "member");
	invalid(&f, c_accrue(&f, admin(&f), "b1", "m\n1", 10), "member");
	invalid(&f, c_transfer(&f, admin(&f), "b1", "m1", "m\x02", 10), "to_member");
	invalid(&f, c_exchange(&f, admin(&f), "b1", "b2", "m\x03", 10), "member");
	ok(&f, c_member(&f, admin(&f), rep(&f, 'm', 64)));
	ok(&f, c_member(&f, admin(&f), "ÿ-utf8-é and spaces"));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_unknown_segment_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	Tally__V1__Command *c = c_member(&f, admin(&f), "m9");
	c->open_member->segment = (Tally__V1__Segment)99;
	invalid(&f, c, "segment");
	c = c_member(&f, admin(&f), "m9");
	c->open_member->segment = TALLY__V1__SEGMENT__SEGMENT_UNSPECIFIED;
	invalid(&f, c, "segment");
	invalid(&f, c_update_member(&f, admin(&f), "m1", (Tally__V1__Segment)99), "segment");
	invalid(&f, c_update_member(&f, admin(&f), "m1", (Tally__V1__Segment)-1), "segment");
	ok(&f, c_update_member(&f, admin(&f), "m1", TALLY__V1__SEGMENT__CHANNEL_PARTNER));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_bad_currency_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	const char *bad[] = {"", "eur", "EU", "EURO", "E1R", "Eur"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		Tally__V1__Command *c = c_brand(&f, admin(&f), "b1", 0);
		c->register_brand->currency = (char *)bad[i];
		invalid(&f, c, "currency");
	}
	Tally__V1__Command *c = c_brand(&f, admin(&f), "b1", 0);
	c->register_brand->currency = (char *)"JPY";
	ok(&f, c);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_tiers_not_strictly_increasing_are_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	invalid(&f, c_brand_tiers(&f, "b1", 100, 100), "tiers");
	invalid(&f, c_brand_tiers(&f, "b1", 200, 100), "tiers");
	invalid(&f, c_brand_tiers(&f, "b1", -1, 100), "tiers");
	Tally__V1__Command *c = c_brand_tiers(&f, "b1", 100, 200);
	c->register_brand->tier_window_days = 0;
	invalid(&f, c, "tier_window_days");
	ok(&f, c_brand_tiers(&f, "b1", 100, 200));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_reason_over_128_bytes_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	Tally__V1__Command *c = c_accrue(&f, admin(&f), "b1", "m1", 10);
	c->accrue->reason = rep(&f, 'x', 129);
	invalid(&f, c, "reason");
	invalid(&f, c_adjust(&f, admin(&f), "b1", "m1", 10, rep(&f, 'x', 129)), "reason");
	invalid(&f, c_adjust(&f, admin(&f), "b1", "m1", 10, ""), "reason"); /* required */
	c = c_accrue(&f, admin(&f), "b1", "m1", 10);
	c->accrue->reference = rep(&f, 'x', 129);
	invalid(&f, c, "reference");
	c = c_accrue(&f, admin(&f), "b1", "m1", 10);
	c->accrue->reason = rep(&f, 'x', 128);
	ok(&f, c);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_hold_timeout_over_a_year_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	invalid(&f, c_hold(&f, admin(&f), "b1", "m1", 10, TALLY_HOLD_TIMEOUT_S_MAX + 1), "timeout_s");
	invalid(&f, c_hold(&f, admin(&f), "b1", "m1", 10, UINT32_MAX), "timeout_s");
	Tally__V1__CommandResult *r =
		ok(&f, c_hold(&f, admin(&f), "b1", "m1", 10, TALLY_HOLD_TIMEOUT_S_MAX));
	assert_int_equal(r->held, 10);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_agreement_rate_zero_or_out_of_range_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	setup_brand(&f, "b2", 0);
	invalid(&f, c_agreement(&f, admin(&f), "b1", "b2", 0, 1), "rate_num");
	invalid(&f, c_agreement(&f, admin(&f), "b1", "b2", -1, 1), "rate_num");
	invalid(&f, c_agreement(&f, admin(&f), "b1", "b2", TALLY_RATE_MAX + 1, 1), "rate_num");
	invalid(&f, c_agreement(&f, admin(&f), "b1", "b2", 1, 0), "rate_den");
	invalid(&f, c_agreement(&f, admin(&f), "b1", "b2", 1, -7), "rate_den");
	invalid(&f, c_agreement(&f, admin(&f), "b1", "b2", 1, TALLY_RATE_MAX + 1), "rate_den");
	invalid(&f, c_agreement(&f, admin(&f), "b1", "b1", 1, 1), "to_brand");
	Tally__V1__Command *c = c_agreement(&f, admin(&f), "b1", "b2", 1, 1);
	c->set_agreement->min_points = 10;
	c->set_agreement->max_points = 5;
	invalid(&f, c, "max_points");
	c = c_agreement(&f, admin(&f), "b1", "b2", 1, 1);
	c->set_agreement->valid_from_ms = T0_MS;
	c->set_agreement->valid_until_ms = T0_MS;
	invalid(&f, c, "valid_until_ms");
	ok(&f, c_agreement(&f, admin(&f), "b1", "b2", TALLY_RATE_MAX, TALLY_RATE_MAX));
	assert_invariants(&f);
	fx_close(&f);
}

/* ---- limits, lookups, duplicates ---------------------------------------------------- */

static void raw_put(struct apply *a, enum table t, const struct key *k, const void *v, size_t n)
{
	MDB_val key = {k->n, (void *)k->b}, val = {n, (void *)v}, old;
	assert_int_equal(mdb_get(a->txn, a->l->dbi[t], &key, &old), MDB_NOTFOUND);
	uint8_t h[32];
	record_hash(t, &key, &val, h);
	digest_add(a->m.digest, h);
	assert_int_equal(mdb_put(a->txn, a->l->dbi[t], &key, &val, 0), 0);
}

/* Gives `member` `points` in `brand` (which has seen no points yet) as if issued, with
 * the records and the digest the ledger keeps: reaching TALLY_BALANCE_MAX through
 * commands would take four million accruals. */
static void seed_balance(struct fx *f, const char *brand, const char *member, int64_t points)
{
	struct tally_ledger *l = f->l;
	struct apply a;
	memset(&a, 0, sizeof(a));
	a.l = l;
	a.m = l->meta;
	assert_int_equal(mdb_txn_begin(l->env, NULL, 0, &a.txn), 0);
	Tally__V1__Account acct = TALLY__V1__ACCOUNT__INIT;
	acct.brand = (char *)brand;
	acct.member = (char *)member;
	acct.available = points;
	acct.earned = points;
	acct.updated_ms = f->now_ms;
	Tally__V1__Lot lot = TALLY__V1__LOT__INIT, *lots[1] = {&lot};
	lot.points = points; /* expiry 0: never, so the expiry index has no row */
	acct.lots = lots;
	acct.n_lots = 1;
	uint8_t buf[512], v[8];
	assert_true(CHAIN_HEAD_BYTES + tally__v1__account__get_packed_size(&acct) <= sizeof(buf));
	static const struct chain_head no_entries; /* the chain of its entries: none */
	size_t head = chain_head_encode(buf, &no_entries);
	size_t n = head + tally__v1__account__pack(&acct, buf + head);
	struct key k;
	key_reset(&k);
	key_str(&k, brand);
	key_raw(&k, member);
	raw_put(&a, T_ACCOUNTS, &k, buf, n);
	key_reset(&k);
	key_str(&k, brand);
	key_u8(&k, TALLY__V1__SYSTEM_ACCOUNT__ISSUANCE);
	key_raw(&k, "");
	be64_put(v, (uint64_t)-points);
	raw_put(&a, T_SYSACCT, &k, v, 8);
	assert_int_equal(meta_save(&a), 0);
	assert_int_equal(mdb_txn_commit(a.txn), 0);
	l->meta = a.m;
}

static void test_accrue_past_the_balance_maximum_is_limit_exceeded(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	setup_brand(&f, "big", 0);
	seed_balance(&f, "big", "m1", TALLY_BALANCE_MAX - 10);
	assert_invariants(&f);
	assert_int_equal(available(&f, "big", "m1"), TALLY_BALANCE_MAX - 10);
	reject_as(&f, c_accrue(&f, admin(&f), "big", "m1", 11), CODE(LIMIT_EXCEEDED), "points");
	reject_as(&f, c_accrue(&f, admin(&f), "big", "m1", TALLY_POINTS_MAX), CODE(LIMIT_EXCEEDED),
		  "points");
	reject_as(&f, c_adjust(&f, admin(&f), "big", "m1", 11, "fix"), CODE(LIMIT_EXCEEDED), "points");
	/* Up to the maximum itself is fine. */
	Tally__V1__CommandResult *r = ok(&f, c_accrue(&f, admin(&f), "big", "m1", 10));
	assert_int_equal(r->available, TALLY_BALANCE_MAX);
	reject_as(&f, c_accrue(&f, admin(&f), "big", "m1", 1), CODE(LIMIT_EXCEEDED), "points");
	/* Another member of the brand is not affected. */
	ok(&f, c_accrue(&f, admin(&f), "big", "m2", 1));
	assert_int_equal(available(&f, "big", "m1"), TALLY_BALANCE_MAX);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_unknown_brand_or_member_is_rejected_with_its_code(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	reject_as(&f, c_accrue(&f, admin(&f), "nope", "m1", 10), CODE(UNKNOWN_BRAND), "brand");
	reject_as(&f, c_redeem(&f, admin(&f), "nope", "m1", 10), CODE(UNKNOWN_BRAND), "brand");
	reject_as(&f, c_hold(&f, admin(&f), "nope", "m1", 10, 0), CODE(UNKNOWN_BRAND), "brand");
	reject_as(&f, c_agreement(&f, admin(&f), "b1", "nope", 1, 1), CODE(UNKNOWN_BRAND), "to_brand");
	reject_as(&f, c_exchange(&f, admin(&f), "nope", "b1", "m1", 10), CODE(UNKNOWN_BRAND), "from_brand");
	reject_as(&f, c_settle(&f, admin(&f), "b1", "nope", 0), CODE(UNKNOWN_BRAND), "brand_b");
	reject_as(&f, c_accrue(&f, admin(&f), "b1", "ghost", 10), CODE(UNKNOWN_MEMBER), "member");
	reject_as(&f, c_redeem(&f, admin(&f), "b1", "ghost", 10), CODE(UNKNOWN_MEMBER), "member");
	reject_as(&f, c_transfer(&f, admin(&f), "b1", "m1", "ghost", 10), CODE(UNKNOWN_MEMBER), "member");
	reject_as(&f, c_update_member(&f, admin(&f), "ghost", TALLY__V1__SEGMENT__FAN),
		  CODE(UNKNOWN_MEMBER), "id");
	assert_invariants(&f);
	fx_close(&f);
}

static void test_creating_an_existing_brand_or_member_is_already_exists(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	reject_as(&f, c_brand(&f, admin(&f), "b1", 12), CODE(ALREADY_EXISTS), "b1");
	reject_as(&f, c_member(&f, admin(&f), "m1"), CODE(ALREADY_EXISTS), "m1");
	/* A new request id is a new intent: still refused, and the original stays. */
	reject_as(&f, c_member(&f, who(&f, TALLY__V1__ROLE__MALL, "mall", "*"), "m1"),
		  CODE(ALREADY_EXISTS), "m1");
	assert_int_equal(available(&f, "b1", "m1"), 1000);
	assert_invariants(&f);
	fx_close(&f);
}

/* ---- batches and bytes ------------------------------------------------------------------ */

static void test_batch_over_8192_commands_rejects_every_command(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	size_t n = TALLY_BATCH_COMMANDS_MAX + 1;
	Tally__V1__Command **cmds = zalloc(&f, n * sizeof(*cmds));
	Tally__V1__Principal *p = admin(&f);
	for (size_t i = 0; i < n; i++)
		cmds[i] = c_accrue(&f, p, "b1", "m1", 1);
	struct snap before = snap_take(&f);
	Tally__V1__CommandResult **rs = apply_n(&f, cmds, n);
	for (size_t i = 0; i < n; i++) {
		if (rs[i]->code != CODE(INVALID_ARGUMENT) || strstr(rs[i]->message, "batch") == NULL)
			fail_msg("command %zu: %s: %s", i, tally_result_name(rs[i]->code), rs[i]->message);
		assert_int_equal(rs[i]->entry_seq, 0);
	}
	struct snap after = snap_take(&f);
	assert_snap_equal(&before, &after);
	assert_int_equal(available(&f, "b1", "m1"), 1000);
	/* At the limit, every command applies. */
	rs = apply_n(&f, cmds + 1, TALLY_BATCH_COMMANDS_MAX);
	for (size_t i = 0; i < TALLY_BATCH_COMMANDS_MAX; i++)
		if (rs[i]->code != CODE(OK))
			fail_msg("command %zu: %s: %s", i, tally_result_name(rs[i]->code), rs[i]->message);
	assert_int_equal(available(&f, "b1", "m1"), 1000 + TALLY_BATCH_COMMANDS_MAX);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_batch_at_or_below_the_applied_index_is_skipped(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	assert_int_equal(tally_ledger_applied_index(f.l), f.index);
	struct snap before = snap_take(&f);
	Tally__V1__Command *cmds[2] = {c_accrue(&f, admin(&f), "b1", "m1", 10),
				       c_member(&f, admin(&f), "m3")};
	const uint64_t indexes[] = {f.index, f.index - 1, 1};
	for (size_t k = 0; k < 3; k++) {
		Tally__V1__Batch b = TALLY__V1__BATCH__INIT;
		b.raft_index = indexes[k];
		b.raft_term = 1;
		b.time_ms = f.now_ms + DAY_MS;
		b.commands = cmds;
		b.n_commands = 2;
		Tally__V1__CommandResult **rs = NULL;
		bool skipped = false;
		tally_arena_reset(&f.results);
		assert_int_equal(tally_ledger_apply_batch(f.l, &b, &f.results, &rs, &skipped), 0);
		assert_true(skipped);
		assert_non_null(rs);
		for (size_t i = 0; i < 2; i++) {
			assert_int_equal(rs[i]->code, TALLY__V1__RESULT_CODE__RESULT_CODE_UNSPECIFIED);
			assert_int_equal(rs[i]->entry_seq, 0);
		}
	}
	struct snap after = snap_take(&f);
	assert_snap_equal(&before, &after);
	struct tally_digest d;
	assert_int_equal(tally_ledger_digest(f.l, &d), 0);
	assert_int_equal(d.applied_index, f.index);
	assert_int_equal(d.time_ms, f.now_ms); /* the skipped batch's later time is not taken */
	assert_int_equal(available(&f, "b1", "m1"), 1000);
	/* The next index applies the same commands. */
	Tally__V1__CommandResult **rs = apply_n(&f, cmds, 2);
	assert_int_equal(rs[0]->code, CODE(OK));
	assert_int_equal(rs[1]->code, CODE(OK));
	assert_int_equal(available(&f, "b1", "m1"), 1010);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_apply_bytes_with_garbage_is_corrupt_and_changes_nothing(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	struct snap before = snap_take(&f);
	static const uint8_t g1[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	static const uint8_t g2[] = {0x22, 0x64, 0x0a, 0x02};        /* commands: 100 bytes, 2 given */
	static const uint8_t g3[] = {0x08, 0x80};                    /* raft_index: varint cut short */
	static const uint8_t g4[] = {0x22, 0x03, 0x0a, 0x05, 0x61}; /* request_id longer than command */
	static const uint8_t g5[] = {0x0f, 0x01};                    /* wire type 7 */
	const struct {
		const uint8_t *p;
		size_t n;
	} garbage[] = {{g1, sizeof(g1)}, {g2, sizeof(g2)}, {g3, sizeof(g3)}, {g4, sizeof(g4)},
		       {g5, sizeof(g5)}};
	for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
		Tally__V1__CommandResult **rs = NULL;
		size_t n = 0;
		bool skipped = false;
		tally_arena_reset(&f.results);
		int rc = tally_ledger_apply_bytes(f.l, garbage[i].p, garbage[i].n, &f.results, &rs, &n,
						  &skipped);
		if (rc != TALLY_ECORRUPT)
			fail_msg("garbage %zu: %s", i, tally_strerror(rc));
	}
	struct snap after = snap_take(&f);
	assert_snap_equal(&before, &after);
	assert_int_equal(tally_ledger_applied_index(f.l), f.index);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_apply_bytes_with_a_serialized_batch_applies_it(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup(&f);
	Tally__V1__Command *cmds[3] = {c_accrue(&f, admin(&f), "b1", "m1", 10),
				       c_redeem(&f, who(&f, TALLY__V1__ROLE__MALL, "mall", "*"), "b1",
						"m1", 2000),
				       c_member(&f, admin(&f), "m3")};
	Tally__V1__Batch b = TALLY__V1__BATCH__INIT;
	b.raft_index = ++f.index;
	b.raft_term = 3;
	b.time_ms = f.now_ms;
	b.commands = cmds;
	b.n_commands = 3;
	size_t len = tally__v1__batch__get_packed_size(&b);
	uint8_t *buf = malloc(len);
	assert_non_null(buf);
	assert_int_equal(tally__v1__batch__pack(&b, buf), len);
	Tally__V1__CommandResult **rs = NULL;
	size_t n = 0;
	bool skipped = true;
	tally_arena_reset(&f.results);
	assert_int_equal(tally_ledger_apply_bytes(f.l, buf, len, &f.results, &rs, &n, &skipped), 0);
	assert_false(skipped);
	assert_int_equal(n, 3);
	assert_int_equal(rs[0]->code, CODE(OK));
	assert_int_equal(rs[0]->available, 1010);
	assert_int_equal(rs[1]->code, CODE(INSUFFICIENT_POINTS));
	assert_int_equal(rs[2]->code, CODE(OK));
	assert_int_equal(available(&f, "b1", "m1"), 1010);
	struct tally_digest d;
	assert_int_equal(tally_ledger_digest(f.l, &d), 0);
	assert_int_equal(d.applied_index, f.index);
	assert_int_equal(d.applied_term, 3);
	/* The same bytes again are a replay of an applied index: skipped. */
	struct snap before = snap_take(&f);
	tally_arena_reset(&f.results);
	assert_int_equal(tally_ledger_apply_bytes(f.l, buf, len, &f.results, &rs, &n, &skipped), 0);
	assert_true(skipped);
	struct snap after = snap_take(&f);
	assert_snap_equal(&before, &after);
	free(buf);
	assert_invariants(&f);
	fx_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_missing_or_empty_request_id_is_invalid_argument),
		cmocka_unit_test(test_request_id_over_64_bytes_is_invalid_argument),
		cmocka_unit_test(test_missing_principal_or_unknown_role_is_invalid_argument),
		cmocka_unit_test(test_command_without_a_known_body_is_invalid_argument),
		cmocka_unit_test(test_points_outside_one_to_10e12_are_invalid_argument),
		cmocka_unit_test(test_brand_id_with_capitals_or_over_32_bytes_is_invalid_argument),
		cmocka_unit_test(test_member_id_over_64_bytes_or_with_control_char_is_invalid_argument),
		cmocka_unit_test(test_unknown_segment_is_invalid_argument),
		cmocka_unit_test(test_bad_currency_is_invalid_argument),
		cmocka_unit_test(test_tiers_not_strictly_increasing_are_invalid_argument),
		cmocka_unit_test(test_reason_over_128_bytes_is_invalid_argument),
		cmocka_unit_test(test_hold_timeout_over_a_year_is_invalid_argument),
		cmocka_unit_test(test_agreement_rate_zero_or_out_of_range_is_invalid_argument),
		cmocka_unit_test(test_accrue_past_the_balance_maximum_is_limit_exceeded),
		cmocka_unit_test(test_unknown_brand_or_member_is_rejected_with_its_code),
		cmocka_unit_test(test_creating_an_existing_brand_or_member_is_already_exists),
		cmocka_unit_test(test_batch_over_8192_commands_rejects_every_command),
		cmocka_unit_test(test_batch_at_or_below_the_applied_index_is_skipped),
		cmocka_unit_test(test_apply_bytes_with_garbage_is_corrupt_and_changes_nothing),
		cmocka_unit_test(test_apply_bytes_with_a_serialized_batch_applies_it),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
