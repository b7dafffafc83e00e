/*
 * tally_ledger_query end to end: journal listing and paging (unfiltered, by brand, by
 * member, both), single entries with inclusion proofs, consistency proofs, multi-
 * account reads with lots and holds, and the small lookups (brand, member, agreement,
 * obligations, settlements, digest) with their not-found codes.
 *
 * Expected entry sets are computed by the test from the decoded journal with its own
 * reading of "touches": an entry touches a brand through its brand field, a posting of
 * that brand, or as one of the two brands of a set_agreement or settle command; it
 * touches a member through its member field or a posting to the member's account.
 * Proofs are verified with the public verifiers against roots taken from
 * tally_ledger_digest, never against what the answer claims alone.
 */
#include "tests/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>

#include "ledger/merkle.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name
#define BODY(name) TALLY__V1__COMMAND__BODY_##name
#define SEQS_MAX 1024

/* ---- principals ------------------------------------------------------------------ */

static Tally__V1__Principal *dealer(struct fx *f)
{
	return who(f, TALLY__V1__ROLE__DEALER, "dealer", "*");
}

static Tally__V1__Principal *mall(struct fx *f)
{
	return who(f, TALLY__V1__ROLE__MALL, "mall", "*");
}

/* A read-only key scoped to `brands` (comma-separated). */
static Tally__V1__Principal *auditor(struct fx *f, const char *brands)
{
	return who(f, TALLY__V1__ROLE__AUDITOR, "auditor", brands);
}

/* ---- small helpers --------------------------------------------------------------- */

static struct tally_digest digest(struct fx *f)
{
	struct tally_digest d;
	assert_int_equal(tally_ledger_digest(f->l, &d), 0);
	return d;
}

/* Applies the commands as one batch and fails unless every one is OK. */
static void apply_all_ok(struct fx *f, Tally__V1__Command **cmds, size_t n)
{
	Tally__V1__CommandResult **rs = apply_n(f, cmds, n);
	for (size_t i = 0; i < n; i++)
		if (rs[i]->code != CODE(OK))
			fail_msg("command %zu: %s: %s", i, tally_result_name(rs[i]->code),
				 rs[i]->message);
}

struct seqs {
	uint64_t v[SEQS_MAX];
	size_t n;
};

static void seqs_push(struct seqs *s, uint64_t seq)
{
	assert_true(s->n < SEQS_MAX);
	s->v[s->n++] = seq;
}

static bool seqs_has(const struct seqs *s, uint64_t seq)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->v[i] == seq)
			return true;
	return false;
}

static void assert_seqs_equal(const struct seqs *got, const struct seqs *want, const char *what)
{
	size_t n = got->n < want->n ? got->n : want->n;
	for (size_t i = 0; i < n; i++)
		if (got->v[i] != want->v[i])
			fail_msg("%s: item %zu is seq %llu, expected %llu", what, i,
				 (unsigned long long)got->v[i], (unsigned long long)want->v[i]);
	if (got->n != want->n)
		fail_msg("%s: %zu entries, expected %zu", what, got->n, want->n);
}

/* ---- queries --------------------------------------------------------------------- */

static void expect_code(const Tally__V1__QueryResult *res, Tally__V1__ResultCode code)
{
	if (res->code != code)
		fail_msg("expected %s, got %s: %s", tally_result_name(code),
			 tally_result_name(res->code), res->message);
}

/* Expects `code` and a message that names `word`. */
static void expect_rejected(const Tally__V1__QueryResult *res, Tally__V1__ResultCode code,
			    const char *word)
{
	expect_code(res, code);
	if (strstr(res->message, word) == NULL)
		fail_msg("message \"%s\" does not name %s", res->message, word);
}

static Tally__V1__QueryResult *list_entries(struct fx *f, const Tally__V1__Principal *p,
					    uint64_t from, uint32_t limit, const char *brand,
					    const char *member)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__ListEntries g = TALLY__V1__LIST_ENTRIES__INIT;
	g.from_seq = from;
	g.limit = limit;
	g.brand = (char *)(brand != NULL ? brand : "");
	g.member = (char *)(member != NULL ? member : "");
	q.q_case = TALLY__V1__QUERY__Q_ENTRIES;
	q.entries = &g;
	return query(f, &q, p);
}

static Tally__V1__QueryResult *get_entry(struct fx *f, const Tally__V1__Principal *p,
					 uint64_t seq, bool proof)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetEntry g = TALLY__V1__GET_ENTRY__INIT;
	g.seq = seq;
	g.proof = proof;
	q.q_case = TALLY__V1__QUERY__Q_ENTRY;
	q.entry = &g;
	return query(f, &q, p);
}

static Tally__V1__QueryResult *get_consistency(struct fx *f, uint64_t old_size, uint64_t new_size)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetConsistency g = TALLY__V1__GET_CONSISTENCY__INIT;
	g.old_size = old_size;
	g.new_size = new_size;
	q.q_case = TALLY__V1__QUERY__Q_CONSISTENCY;
	q.consistency = &g;
	return query(f, &q, admin(f));
}

static Tally__V1__QueryResult *get_accounts(struct fx *f, const Tally__V1__Principal *p,
					    const char *brand, char **members, size_t n,
					    bool with_lots)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetAccounts g = TALLY__V1__GET_ACCOUNTS__INIT;
	g.brand = (char *)brand;
	g.members = members;
	g.n_members = n;
	g.with_lots = with_lots;
	q.q_case = TALLY__V1__QUERY__Q_ACCOUNTS;
	q.accounts = &g;
	return query(f, &q, p);
}

static Tally__V1__QueryResult *get_brand(struct fx *f, const Tally__V1__Principal *p,
					 const char *id)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetBrand g = TALLY__V1__GET_BRAND__INIT;
	g.id = (char *)id;
	q.q_case = TALLY__V1__QUERY__Q_BRAND;
	q.brand = &g;
	return query(f, &q, p);
}

static Tally__V1__QueryResult *get_member_as(struct fx *f, const Tally__V1__Principal *p,
					     const char *id)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetMember g = TALLY__V1__GET_MEMBER__INIT;
	g.id = (char *)id;
	q.q_case = TALLY__V1__QUERY__Q_MEMBER;
	q.member = &g;
	return query(f, &q, p);
}

static Tally__V1__QueryResult *get_member(struct fx *f, const char *id)
{
	return get_member_as(f, auditor(f, "*"), id);
}

static Tally__V1__QueryResult *get_agreement(struct fx *f, const Tally__V1__Principal *p,
					     const char *from, const char *to)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetAgreement g = TALLY__V1__GET_AGREEMENT__INIT;
	g.from_brand = (char *)from;
	g.to_brand = (char *)to;
	q.q_case = TALLY__V1__QUERY__Q_AGREEMENT;
	q.agreement = &g;
	return query(f, &q, p);
}

static Tally__V1__QueryResult *list_obligations(struct fx *f, const Tally__V1__Principal *p,
						const char *a, const char *b, uint32_t limit)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__ListObligations g = TALLY__V1__LIST_OBLIGATIONS__INIT;
	g.brand_a = (char *)a;
	g.brand_b = (char *)b;
	g.limit = limit;
	q.q_case = TALLY__V1__QUERY__Q_OBLIGATIONS;
	q.obligations = &g;
	return query(f, &q, p);
}

static Tally__V1__QueryResult *list_settlements(struct fx *f, const Tally__V1__Principal *p,
						const char *a, const char *b, uint64_t from_id,
						uint32_t limit)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__ListSettlements g = TALLY__V1__LIST_SETTLEMENTS__INIT;
	g.brand_a = (char *)a;
	g.brand_b = (char *)b;
	g.from_id = from_id;
	g.limit = limit;
	q.q_case = TALLY__V1__QUERY__Q_SETTLEMENTS;
	q.settlements = &g;
	return query(f, &q, p);
}

static Tally__V1__QueryResult *get_digest(struct fx *f, const Tally__V1__Principal *p)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetDigest g = TALLY__V1__GET_DIGEST__INIT;
	q.q_case = TALLY__V1__QUERY__Q_DIGEST;
	q.digest = &g;
	return query(f, &q, p);
}

static Tally__V1__Entry *decode(struct fx *f, const Tally__V1__StoredEntry *s)
{
	Tally__V1__Entry *e = tally__v1__entry__unpack(tally_arena_protobuf(&f->build),
						       s->entry.len, s->entry.data);
	assert_non_null(e);
	assert_int_equal(e->seq, s->seq);
	return e;
}

/* Every result reflects the state it was read from. */
static void assert_applied(struct fx *f, const Tally__V1__QueryResult *res)
{
	assert_int_equal(res->applied_index, tally_ledger_applied_index(f->l));
	assert_int_equal(res->applied_index, f->index);
}

/* ---- the test's own reading of which entries a filter selects ------------------------ */

static bool touches_brand(const Tally__V1__Entry *e, const char *brand)
{
	if (strcmp(e->brand, brand) == 0)
		return true;
	for (size_t i = 0; i < e->n_postings; i++)
		if (strcmp(e->postings[i]->brand, brand) == 0)
			return true;
	const Tally__V1__Command *c = e->command;
	if (c != NULL && c->body_case == BODY(SET_AGREEMENT))
		return strcmp(c->set_agreement->from_brand, brand) == 0 ||
		       strcmp(c->set_agreement->to_brand, brand) == 0;
	if (c != NULL && c->body_case == BODY(SETTLE))
		return strcmp(c->settle->brand_a, brand) == 0 ||
		       strcmp(c->settle->brand_b, brand) == 0;
	return false;
}

static bool touches_member(const Tally__V1__Entry *e, const char *member)
{
	if (strcmp(e->member, member) == 0)
		return true;
	for (size_t i = 0; i < e->n_postings; i++)
		if (e->postings[i]->account == TALLY__V1__SYSTEM_ACCOUNT__MEMBER &&
		    strcmp(e->postings[i]->member, member) == 0)
			return true;
	return false;
}

/* The seqs of the whole journal a filter selects (NULL: no filter on that field). */
static void expected_entries(struct fx *f, const char *brand, const char *member,
			     struct seqs *out)
{
	out->n = 0;
	uint64_t size = digest(f).tree_size;
	for (uint64_t seq = 1; seq <= size; seq++) {
		Tally__V1__Entry *e = entry_at(f, seq);
		if ((brand == NULL || touches_brand(e, brand)) &&
		    (member == NULL || touches_member(e, member)))
			seqs_push(out, seq);
	}
}

/* Follows next_seq from the start with pages of `limit` and collects every entry,
 * checking that each page is within its limit, in seq order, and that next_seq
 * points past the page. *pages receives the number of queries made. */
static void collect_pages(struct fx *f, const Tally__V1__Principal *p, const char *brand,
			  const char *member, uint32_t limit, struct seqs *out, size_t *pages)
{
	out->n = 0;
	*pages = 0;
	uint64_t from = 0, last = 0;
	for (;;) {
		Tally__V1__QueryResult *res = list_entries(f, p, from, limit, brand, member);
		expect_code(res, CODE(OK));
		assert_applied(f, res);
		(*pages)++;
		assert_true(*pages <= SEQS_MAX);
		assert_true(res->n_entries <= limit);
		for (size_t i = 0; i < res->n_entries; i++) {
			uint64_t seq = res->entries[i]->seq;
			if (seq <= last || seq < from)
				fail_msg("page from %llu: seq %llu after %llu",
					 (unsigned long long)from, (unsigned long long)seq,
					 (unsigned long long)last);
			decode(f, res->entries[i]);
			seqs_push(out, seq);
			last = seq;
		}
		if (res->next_seq == 0)
			return;
		/* A page that continues is full and the next one starts after it. */
		assert_int_equal(res->n_entries, limit);
		assert_true(res->next_seq > last);
		from = res->next_seq;
	}
}

/* ---- a journal touching three brands and four members -------------------------------- */

struct world {
	uint64_t reg[3];          /* register b1, b2, b3 */
	uint64_t open[4];         /* open m1..m4 */
	uint64_t acc_b1_m1, acc_b2_m2, acc_b3_m4;
	uint64_t xfer_b1_m1_m3;   /* m3 receives */
	uint64_t agree_b1_b2;     /* filed under b1, concerns b2 too */
	uint64_t exch_m1_b1_b2;   /* m1 in both brands */
	uint64_t redeem_b2_m2;
	uint64_t hold_b1_m3, void_b1_m3;
	uint64_t adjust_b3_m4;
	uint64_t settle_b1_b2;    /* no postings: b2 knows it only as one of the pair */
	uint64_t acc_b1_m2;
	uint64_t acc_b2_m3;
};

static void world_setup(struct fx *f, struct world *w)
{
	const char *brands[] = {"b1", "b2", "b3"}, *members[] = {"m1", "m2", "m3", "m4"};
	for (int i = 0; i < 3; i++)
		w->reg[i] = ok(f, c_brand(f, admin(f), brands[i], 12))->entry_seq;
	for (int i = 0; i < 4; i++)
		w->open[i] = ok(f, c_member(f, admin(f), members[i]))->entry_seq;
	w->acc_b1_m1 = ok(f, c_accrue(f, dealer(f), "b1", "m1", 100))->entry_seq;
	w->acc_b2_m2 = ok(f, c_accrue(f, dealer(f), "b2", "m2", 100))->entry_seq;
	w->acc_b3_m4 = ok(f, c_accrue(f, dealer(f), "b3", "m4", 100))->entry_seq;
	w->xfer_b1_m1_m3 = ok(f, c_transfer(f, mall(f), "b1", "m1", "m3", 30))->entry_seq;
	w->agree_b1_b2 = ok(f, c_agreement(f, admin(f), "b1", "b2", 1, 1))->entry_seq;
	w->exch_m1_b1_b2 = ok(f, c_exchange(f, admin(f), "b1", "b2", "m1", 20))->entry_seq;
	w->redeem_b2_m2 = ok(f, c_redeem(f, mall(f), "b2", "m2", 10))->entry_seq;
	w->hold_b1_m3 = ok(f, c_hold(f, mall(f), "b1", "m3", 5, 600))->hold_id;
	w->void_b1_m3 = ok(f, c_void(f, mall(f), w->hold_b1_m3))->entry_seq;
	w->adjust_b3_m4 = ok(f, c_adjust(f, admin(f), "b3", "m4", -10, "correction"))->entry_seq;
	f->now_ms += 1000;
	/* Named payee first: filed under the smaller id, b1. */
	Tally__V1__CommandResult *r = ok(f, c_settle(f, admin(f), "b2", "b1", f->now_ms - 1));
	w->settle_b1_b2 = r->entry_seq;
	w->acc_b1_m2 = ok(f, c_accrue(f, dealer(f), "b1", "m2", 7))->entry_seq;
	w->acc_b2_m3 = ok(f, c_accrue(f, dealer(f), "b2", "m3", 3))->entry_seq;
	assert_int_equal(entry_at(f, w->settle_b1_b2)->n_postings, 0);
	assert_string_equal(entry_at(f, w->settle_b1_b2)->brand, "b1");
	assert_string_equal(entry_at(f, w->agree_b1_b2)->brand, "b1");
}

/* Every entry of a full listing with the given filters, in one page. */
static void list_all(struct fx *f, const Tally__V1__Principal *p, const char *brand,
		     const char *member, struct seqs *out)
{
	Tally__V1__QueryResult *res = list_entries(f, p, 0, TALLY_ENTRIES_PAGE_MAX, brand, member);
	expect_code(res, CODE(OK));
	assert_int_equal(res->next_seq, 0);
	out->n = 0;
	for (size_t i = 0; i < res->n_entries; i++) {
		decode(f, res->entries[i]);
		seqs_push(out, res->entries[i]->seq);
	}
}

/* ================================================================================ */
/* ListEntries without filters                                                        */
/* ================================================================================ */

static void test_list_entries_without_filters_pages_by_seq_without_gaps_or_duplicates(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	struct world w;
	world_setup(&f, &w);
	Tally__V1__Command *cmds[120];
	for (size_t i = 0; i < 120; i++)
		cmds[i] = c_accrue(&f, dealer(&f), i % 2 ? "b1" : "b2", "m1", (int64_t)i + 1);
	apply_all_ok(&f, cmds, 120);
	uint64_t size = digest(&f).tree_size;
	assert_true(size > 130);

	/* One page: limit, from_seq and next_seq. */
	Tally__V1__QueryResult *res = list_entries(&f, admin(&f), 0, 5, NULL, NULL);
	expect_code(res, CODE(OK));
	assert_applied(&f, res);
	assert_int_equal(res->n_entries, 5);
	for (size_t i = 0; i < 5; i++) {
		assert_int_equal(res->entries[i]->seq, i + 1);
		assert_int_equal(res->entries[i]->raft_term, 1);
		assert_int_equal(decode(&f, res->entries[i])->seq, i + 1);
	}
	assert_int_equal(res->next_seq, 6);
	res = list_entries(&f, admin(&f), 6, 3, NULL, NULL);
	assert_int_equal(res->n_entries, 3);
	assert_int_equal(res->entries[0]->seq, 6);
	assert_int_equal(res->entries[2]->seq, 8);
	assert_int_equal(res->next_seq, 9);
	/* The journal carries the raft index of the batch that made each entry. */
	for (size_t i = 1; i < res->n_entries; i++)
		assert_true(res->entries[i]->raft_index >= res->entries[i - 1]->raft_index);
	assert_int_equal(list_entries(&f, admin(&f), size, 10, NULL, NULL)->entries[0]->raft_index,
			 f.index);

	/* Following next_seq visits 1..size exactly once, whatever the page size. */
	const uint32_t limits[] = {1, 7, 50, 100, (uint32_t)size, (uint32_t)size + 1};
	for (size_t l = 0; l < sizeof(limits) / sizeof(limits[0]); l++) {
		struct seqs got, want = {.n = 0};
		size_t pages;
		collect_pages(&f, admin(&f), NULL, NULL, limits[l], &got, &pages);
		for (uint64_t seq = 1; seq <= size; seq++)
			seqs_push(&want, seq);
		assert_seqs_equal(&got, &want, "unfiltered pages");
		assert_int_equal(pages, (size + limits[l] - 1) / limits[l]);
	}

	/* The last page ends with next_seq 0, also when it is exactly full. */
	res = list_entries(&f, admin(&f), size - 4, 5, NULL, NULL);
	assert_int_equal(res->n_entries, 5);
	assert_int_equal(res->next_seq, 0);
	res = list_entries(&f, admin(&f), size - 4, 6, NULL, NULL);
	assert_int_equal(res->n_entries, 5);
	assert_int_equal(res->next_seq, 0);
	/* Past the end: nothing, and nothing more. */
	res = list_entries(&f, admin(&f), size + 1, 10, NULL, NULL);
	expect_code(res, CODE(OK));
	assert_int_equal(res->n_entries, 0);
	assert_int_equal(res->next_seq, 0);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_list_entries_limit_zero_means_100_and_limit_over_10000_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_brand(&f, "b1", 0);
	Tally__V1__Command *cmds[150];
	for (size_t i = 0; i < 150; i++) {
		char id[16];
		snprintf(id, sizeof(id), "m%zu", i);
		cmds[i] = c_member(&f, admin(&f), id);
	}
	apply_all_ok(&f, cmds, 150);
	Tally__V1__QueryResult *res = list_entries(&f, admin(&f), 0, 0, NULL, NULL);
	expect_code(res, CODE(OK));
	assert_int_equal(res->n_entries, 100);
	assert_int_equal(res->next_seq, 101);
	res = list_entries(&f, admin(&f), 0, TALLY_ENTRIES_PAGE_MAX, NULL, NULL);
	expect_code(res, CODE(OK));
	assert_int_equal(res->n_entries, 151);
	assert_int_equal(res->next_seq, 0);
	res = list_entries(&f, admin(&f), 0, TALLY_ENTRIES_PAGE_MAX + 1, NULL, NULL);
	expect_rejected(res, CODE(INVALID_ARGUMENT), "limit");
	assert_int_equal(res->n_entries, 0);
	res = list_entries(&f, admin(&f), 0, UINT32_MAX, "b1", NULL);
	expect_rejected(res, CODE(INVALID_ARGUMENT), "limit");
	assert_invariants(&f);
	fx_close(&f);
}

static void test_list_entries_without_brand_filter_is_permission_denied_for_a_scoped_key(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	struct world w;
	world_setup(&f, &w);
	Tally__V1__Principal *b1 = auditor(&f, "b1"), *b12 = auditor(&f, "b1,b2");
	Tally__V1__QueryResult *res = list_entries(&f, b1, 0, 10, NULL, NULL);
	expect_rejected(res, CODE(PERMISSION_DENIED), "brand");
	assert_int_equal(res->n_entries, 0);
	expect_code(list_entries(&f, b12, 0, 10, NULL, NULL), CODE(PERMISSION_DENIED));
	/* A member filter does not replace the brand filter. */
	expect_code(list_entries(&f, b1, 0, 10, NULL, "m1"), CODE(PERMISSION_DENIED));
	/* A brand outside the scope is refused; one inside is listed. */
	expect_code(list_entries(&f, b1, 0, 10, "b2", NULL), CODE(PERMISSION_DENIED));
	expect_code(list_entries(&f, b1, 0, 10, "b1", NULL), CODE(OK));
	expect_code(list_entries(&f, b12, 0, 10, "b2", "m2"), CODE(OK));
	/* Every role with "*" may list everything. */
	expect_code(list_entries(&f, auditor(&f, "*"), 0, 10, NULL, NULL), CODE(OK));
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* ListEntries with brand and member filters                                          */
/* ================================================================================ */

static void test_list_entries_by_brand_returns_exactly_the_entries_touching_the_brand_in_seq_order(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	struct world w;
	world_setup(&f, &w);
	const char *brands[] = {"b1", "b2", "b3"};
	for (int i = 0; i < 3; i++) {
		struct seqs got, want;
		expected_entries(&f, brands[i], NULL, &want);
		list_all(&f, admin(&f), brands[i], NULL, &got);
		assert_seqs_equal(&got, &want, brands[i]);
		/* The brand's own key reads the same list. */
		list_all(&f, auditor(&f, brands[i]), brands[i], NULL, &got);
		assert_seqs_equal(&got, &want, brands[i]);
	}
	/* The same, spelled out for the entries that matter. */
	struct seqs b1, b2, b3;
	list_all(&f, admin(&f), "b1", NULL, &b1);
	list_all(&f, admin(&f), "b2", NULL, &b2);
	list_all(&f, admin(&f), "b3", NULL, &b3);
	uint64_t in_b1[] = {w.reg[0], w.acc_b1_m1, w.xfer_b1_m1_m3, w.agree_b1_b2, w.exch_m1_b1_b2,
			    w.hold_b1_m3, w.void_b1_m3, w.settle_b1_b2, w.acc_b1_m2};
	uint64_t in_b2[] = {w.reg[1], w.acc_b2_m2, w.agree_b1_b2, w.exch_m1_b1_b2, w.redeem_b2_m2,
			    w.settle_b1_b2, w.acc_b2_m3};
	uint64_t in_b3[] = {w.reg[2], w.acc_b3_m4, w.adjust_b3_m4};
	assert_int_equal(b1.n, sizeof(in_b1) / sizeof(in_b1[0]));
	assert_int_equal(b2.n, sizeof(in_b2) / sizeof(in_b2[0]));
	assert_int_equal(b3.n, sizeof(in_b3) / sizeof(in_b3[0]));
	for (size_t i = 0; i < b1.n; i++)
		assert_int_equal(b1.v[i], in_b1[i]);
	for (size_t i = 0; i < b2.n; i++)
		assert_int_equal(b2.v[i], in_b2[i]);
	for (size_t i = 0; i < b3.n; i++)
		assert_int_equal(b3.v[i], in_b3[i]);
	/* Member records belong to no brand. */
	for (int i = 0; i < 4; i++)
		assert_false(seqs_has(&b1, w.open[i]) || seqs_has(&b2, w.open[i]) ||
			     seqs_has(&b3, w.open[i]));
	/* A brand nobody registered has no entries. */
	struct seqs none;
	list_all(&f, admin(&f), "b9", NULL, &none);
	assert_int_equal(none.n, 0);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_list_entries_by_brand_pages_with_next_seq_without_gaps_or_duplicates(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	struct world w;
	world_setup(&f, &w);
	/* Interleave the brands so pages end on entries of other brands too. */
	Tally__V1__Command *cmds[60];
	for (size_t i = 0; i < 60; i++)
		cmds[i] = c_accrue(&f, dealer(&f), i % 3 == 0 ? "b1" : i % 3 == 1 ? "b2" : "b3",
				   i % 2 ? "m1" : "m4", 1);
	apply_all_ok(&f, cmds, 60);
	const char *brands[] = {"b1", "b2", "b3"};
	const uint32_t limits[] = {1, 2, 3, 10};
	for (int b = 0; b < 3; b++) {
		struct seqs want;
		expected_entries(&f, brands[b], NULL, &want);
		assert_true(want.n > 20);
		for (size_t l = 0; l < sizeof(limits) / sizeof(limits[0]); l++) {
			struct seqs got;
			size_t pages;
			collect_pages(&f, auditor(&f, brands[b]), brands[b], NULL, limits[l], &got,
				      &pages);
			assert_seqs_equal(&got, &want, brands[b]);
			/* At most one trailing page finds nothing more. */
			assert_true(pages <= (want.n + limits[l] - 1) / limits[l] + 1);
		}
	}
	/* A page starting in the middle starts at from_seq, not before. */
	struct seqs want;
	expected_entries(&f, "b2", NULL, &want);
	Tally__V1__QueryResult *res = list_entries(&f, admin(&f), want.v[5], 3, "b2", NULL);
	assert_int_equal(res->n_entries, 3);
	for (size_t i = 0; i < 3; i++)
		assert_int_equal(res->entries[i]->seq, want.v[5 + i]);
	res = list_entries(&f, admin(&f), want.v[5] + 1, 1, "b2", NULL);
	assert_int_equal(res->entries[0]->seq, want.v[6]);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_list_entries_by_member_returns_exactly_the_member_entries_including_receiver_and_exchange(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	struct world w;
	world_setup(&f, &w);
	const char *members[] = {"m1", "m2", "m3", "m4"};
	for (int i = 0; i < 4; i++) {
		struct seqs got, want;
		size_t pages;
		expected_entries(&f, NULL, members[i], &want);
		list_all(&f, admin(&f), NULL, members[i], &got);
		assert_seqs_equal(&got, &want, members[i]);
		for (uint32_t limit = 1; limit <= 3; limit++) {
			collect_pages(&f, admin(&f), NULL, members[i], limit, &got, &pages);
			assert_seqs_equal(&got, &want, members[i]);
			/* The member index knows when nothing follows: no empty last page. */
			assert_int_equal(pages, (want.n + limit - 1) / limit);
		}
	}
	struct seqs m1, m3;
	list_all(&f, admin(&f), NULL, "m1", &m1);
	list_all(&f, admin(&f), NULL, "m3", &m3);
	uint64_t in_m1[] = {w.open[0], w.acc_b1_m1, w.xfer_b1_m1_m3, w.exch_m1_b1_b2};
	uint64_t in_m3[] = {w.open[2], w.xfer_b1_m1_m3, w.hold_b1_m3, w.void_b1_m3, w.acc_b2_m3};
	assert_int_equal(m1.n, 4); /* the exchange posts m1 twice, and is listed once */
	for (size_t i = 0; i < m1.n; i++)
		assert_int_equal(m1.v[i], in_m1[i]);
	assert_int_equal(m3.n, 5); /* the transfer lists under its receiver */
	for (size_t i = 0; i < m3.n; i++)
		assert_int_equal(m3.v[i], in_m3[i]);
	struct seqs none;
	list_all(&f, admin(&f), NULL, "nobody", &none);
	assert_int_equal(none.n, 0);
	expect_rejected(list_entries(&f, admin(&f), 0, 10, NULL, "bad\nid"),
			CODE(INVALID_ARGUMENT), "member");
	assert_invariants(&f);
	fx_close(&f);
}

/* A member's entries are found through chains in the journal (ledger/chain.c): long
 * chains in two brands plus the member's own, read from every start and page size,
 * give exactly the entries the journal holds for the member. */
static void test_list_entries_by_member_over_long_chains_matches_the_journal_from_every_start(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	ok(&f, c_brand(&f, admin(&f), "b1", 12));
	ok(&f, c_brand(&f, admin(&f), "b2", 12));
	ok(&f, c_member(&f, admin(&f), "m1"));
	ok(&f, c_member(&f, admin(&f), "m2"));
	for (int i = 0; i < 300; i++) {
		ok(&f, c_accrue(&f, dealer(&f), i % 3 == 0 ? "b2" : "b1", "m1", 10));
		if (i % 5 == 1)
			ok(&f, c_transfer(&f, mall(&f), "b1", "m1", "m2", 1));
		if (i % 7 == 0)
			ok(&f, c_accrue(&f, dealer(&f), "b2", "m2", 1));
	}
	const char *members[] = {"m1", "m2"};
	for (int m = 0; m < 2; m++) {
		struct seqs want, got;
		expected_entries(&f, NULL, members[m], &want);
		assert_true(want.n > 2);
		list_all(&f, admin(&f), NULL, members[m], &got);
		assert_seqs_equal(&got, &want, members[m]);
		uint32_t limits[] = {1, 7, 257, TALLY_ENTRIES_PAGE_MAX};
		for (size_t from = 1; from <= want.v[want.n - 1] + 1; from += 13) {
			for (size_t li = 0; li < 4; li++) {
				Tally__V1__QueryResult *res =
					list_entries(&f, admin(&f), from, limits[li], NULL, members[m]);
				expect_code(res, CODE(OK));
				size_t first = 0;
				while (first < want.n && want.v[first] < from)
					first++;
				size_t n = want.n - first < limits[li] ? want.n - first : limits[li];
				assert_int_equal(res->n_entries, n);
				for (size_t i = 0; i < n; i++)
					assert_int_equal(res->entries[i]->seq, want.v[first + i]);
				assert_int_equal(res->next_seq, first + n < want.n ? want.v[first + n] : 0);
			}
		}
	}
	assert_invariants(&f);
	fx_close(&f);
}

static void test_list_entries_by_member_and_brand_returns_the_intersection(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	struct world w;
	world_setup(&f, &w);
	const char *brands[] = {"b1", "b2", "b3"}, *members[] = {"m1", "m2", "m3", "m4"};
	for (int b = 0; b < 3; b++) {
		for (int m = 0; m < 4; m++) {
			struct seqs got, want;
			size_t pages;
			expected_entries(&f, brands[b], members[m], &want);
			list_all(&f, auditor(&f, brands[b]), brands[b], members[m], &got);
			assert_seqs_equal(&got, &want, "member and brand");
			collect_pages(&f, auditor(&f, brands[b]), brands[b], members[m], 1, &got,
				      &pages);
			assert_seqs_equal(&got, &want, "member and brand, pages of 1");
		}
	}
	/* m1 appears in b2 only through the exchange; m2 in b1 only through one accrual. */
	struct seqs got;
	list_all(&f, admin(&f), "b2", "m1", &got);
	assert_int_equal(got.n, 1);
	assert_int_equal(got.v[0], w.exch_m1_b1_b2);
	list_all(&f, admin(&f), "b1", "m2", &got);
	assert_int_equal(got.n, 1);
	assert_int_equal(got.v[0], w.acc_b1_m2);
	list_all(&f, admin(&f), "b3", "m1", &got);
	assert_int_equal(got.n, 0);
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* GetEntry                                                                           */
/* ================================================================================ */

/* SHA-256(0x00 || bytes), computed here rather than by the module under test. */
static void leaf_of(const uint8_t *bytes, size_t len, uint8_t out[32])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int n = 0;
	const uint8_t zero = 0x00;
	assert_non_null(ctx);
	assert_int_equal(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL), 1);
	assert_int_equal(EVP_DigestUpdate(ctx, &zero, 1), 1);
	assert_int_equal(EVP_DigestUpdate(ctx, bytes, len), 1);
	assert_int_equal(EVP_DigestFinal_ex(ctx, out, &n), 1);
	EVP_MD_CTX_free(ctx);
	assert_int_equal(n, 32);
}

/* Verifies the answer's inclusion proof for `bytes` against `root`. */
static int verify_inclusion(const Tally__V1__InclusionProof *p, const uint8_t *bytes, size_t len,
			    const uint8_t root[32])
{
	uint8_t leaf[32], path[TALLY_MERKLE_PROOF_MAX][32];
	leaf_of(bytes, len, leaf);
	assert_true(p->n_path <= TALLY_MERKLE_PROOF_MAX);
	for (size_t i = 0; i < p->n_path; i++) {
		assert_int_equal(p->path[i].len, 32);
		memcpy(path[i], p->path[i].data, 32);
	}
	return tally_merkle_verify_inclusion(leaf, p->index, p->tree_size,
					     (const uint8_t(*)[32])path, p->n_path, root);
}

static void test_get_entry_of_unknown_seq_is_not_found(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	/* An empty journal has no entry 1. */
	Tally__V1__QueryResult *res = get_entry(&f, admin(&f), 1, true);
	expect_rejected(res, CODE(NOT_FOUND), "seq");
	assert_null(res->entry);
	assert_null(res->proof);
	setup_brand(&f, "b1", 0);
	uint64_t size = digest(&f).tree_size;
	const uint64_t bad[] = {0, size + 1, size + 1000, UINT64_MAX};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		res = get_entry(&f, admin(&f), bad[i], i % 2 == 0);
		expect_rejected(res, CODE(NOT_FOUND), "seq");
		assert_null(res->entry);
		assert_applied(&f, res);
	}
	expect_code(get_entry(&f, admin(&f), size, false), CODE(OK));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_get_entry_proof_verifies_against_the_current_root_and_fails_for_a_flipped_byte(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	/* A tree of one leaf: an empty path whose root is the leaf itself. */
	setup_brand(&f, "b0", 0);
	Tally__V1__QueryResult *res = get_entry(&f, admin(&f), 1, true);
	expect_code(res, CODE(OK));
	struct tally_digest d = digest(&f);
	assert_int_equal(res->proof->n_path, 0);
	assert_int_equal(verify_inclusion(res->proof, res->entry->entry.data, res->entry->entry.len,
					  d.root), 0);

	struct world w;
	world_setup(&f, &w);
	d = digest(&f);
	assert_true(d.tree_size > 20);
	for (uint64_t seq = 1; seq <= d.tree_size; seq++) {
		res = get_entry(&f, admin(&f), seq, true);
		expect_code(res, CODE(OK));
		assert_applied(&f, res);
		assert_int_equal(res->entry->seq, seq);
		assert_int_equal(decode(&f, res->entry)->seq, seq);
		const Tally__V1__InclusionProof *p = res->proof;
		assert_non_null(p);
		assert_int_equal(p->index, seq - 1);
		assert_int_equal(p->tree_size, d.tree_size);
		assert_int_equal(p->root.len, 32);
		assert_memory_equal(p->root.data, d.root, 32);
		uint8_t mine[32], theirs[32];
		leaf_of(res->entry->entry.data, res->entry->entry.len, mine);
		tally_merkle_leaf_hash(res->entry->entry.data, res->entry->entry.len, theirs);
		assert_memory_equal(mine, theirs, 32);
		assert_int_equal(verify_inclusion(p, res->entry->entry.data, res->entry->entry.len,
						  d.root), 0);
		/* Any flipped byte of the entry breaks the proof. */
		size_t len = res->entry->entry.len;
		uint8_t *copy = zalloc(&f, len);
		for (size_t at = 0; at < len; at += len / 3 + 1) {
			memcpy(copy, res->entry->entry.data, len);
			copy[at] ^= 0x01;
			assert_int_equal(verify_inclusion(p, copy, len, d.root), TALLY_ECORRUPT);
		}
		/* And so does the right entry under another index. */
		if (seq > 1) {
			Tally__V1__InclusionProof moved = *p;
			moved.index = seq - 2;
			assert_int_not_equal(verify_inclusion(&moved, res->entry->entry.data, len,
							      d.root), 0);
		}
	}
	/* Without proof=true no proof comes back. */
	res = get_entry(&f, admin(&f), 3, false);
	expect_code(res, CODE(OK));
	assert_null(res->proof);
	/* The proof of an old entry follows the tree as it grows. */
	ok(&f, c_accrue(&f, dealer(&f), "b1", "m1", 1));
	struct tally_digest later = digest(&f);
	res = get_entry(&f, admin(&f), 3, true);
	assert_int_equal(res->proof->tree_size, later.tree_size);
	assert_memory_equal(res->proof->root.data, later.root, 32);
	assert_int_equal(verify_inclusion(res->proof, res->entry->entry.data, res->entry->entry.len,
					  later.root), 0);
	assert_int_not_equal(verify_inclusion(res->proof, res->entry->entry.data,
					      res->entry->entry.len, d.root), 0);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_get_entry_of_another_brand_is_permission_denied_for_a_scoped_key(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	struct world w;
	world_setup(&f, &w);
	Tally__V1__Principal *b1 = auditor(&f, "b1"), *b2 = auditor(&f, "b2"), *b3 = auditor(&f, "b3");
	Tally__V1__QueryResult *res = get_entry(&f, b2, w.acc_b1_m1, true);
	expect_rejected(res, CODE(PERMISSION_DENIED), "scope");
	assert_null(res->entry);
	assert_null(res->proof);
	expect_code(get_entry(&f, b2, w.xfer_b1_m1_m3, false), CODE(PERMISSION_DENIED));
	expect_code(get_entry(&f, b1, w.acc_b3_m4, true), CODE(PERMISSION_DENIED));
	expect_code(get_entry(&f, b3, w.settle_b1_b2, true), CODE(PERMISSION_DENIED));
	/* In scope: the brand's entries, and two-brand entries for either brand. */
	expect_code(get_entry(&f, b1, w.acc_b1_m1, true), CODE(OK));
	expect_code(get_entry(&f, b2, w.exch_m1_b1_b2, true), CODE(OK));
	expect_code(get_entry(&f, b2, w.agree_b1_b2, true), CODE(OK));
	expect_code(get_entry(&f, b2, w.settle_b1_b2, true), CODE(OK));
	expect_code(get_entry(&f, auditor(&f, "b3,b1"), w.acc_b1_m1, true), CODE(OK));
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* GetConsistency                                                                     */
/* ================================================================================ */

static int verify_consistency(const Tally__V1__ConsistencyProof *p, const uint8_t old_root[32],
			      const uint8_t new_root[32])
{
	uint8_t path[TALLY_MERKLE_PROOF_MAX][32];
	assert_true(p->n_path <= TALLY_MERKLE_PROOF_MAX);
	for (size_t i = 0; i < p->n_path; i++) {
		assert_int_equal(p->path[i].len, 32);
		memcpy(path[i], p->path[i].data, 32);
	}
	return tally_merkle_verify_consistency(p->old_size, p->new_size, old_root, new_root,
					       (const uint8_t(*)[32])path, p->n_path);
}

static void test_get_consistency_from_an_old_digest_to_the_current_size_verifies(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_brand(&f, "b1", 12);
	setup_brand(&f, "b2", 0);
	/* Digests as an auditor would have kept them, one per batch of growing size. */
	struct tally_digest old[40];
	size_t n_old = 0;
	const char *const members[] = {"m1", "m2", "m3"};
	setup_members(&f, members, 3);
	old[n_old++] = digest(&f);
	for (size_t i = 0; i < 39; i++) {
		Tally__V1__Command *cmds[3];
		size_t n = i % 3 + 1;
		for (size_t j = 0; j < n; j++)
			cmds[j] = c_accrue(&f, dealer(&f), j % 2 ? "b2" : "b1", members[j], 10);
		apply_all_ok(&f, cmds, n);
		old[n_old++] = digest(&f);
	}
	struct tally_digest now = digest(&f);
	for (size_t i = 0; i < n_old; i++) {
		Tally__V1__QueryResult *res = get_consistency(&f, old[i].tree_size, 0);
		expect_code(res, CODE(OK));
		assert_applied(&f, res);
		assert_int_equal(res->consistency->old_size, old[i].tree_size);
		assert_int_equal(res->consistency->new_size, now.tree_size);
		assert_int_equal(verify_consistency(res->consistency, old[i].root, now.root), 0);
		/* The same with new_size spelled out, and between two old sizes. */
		res = get_consistency(&f, old[i].tree_size, now.tree_size);
		assert_int_equal(verify_consistency(res->consistency, old[i].root, now.root), 0);
		size_t j = (i + n_old) / 2;
		res = get_consistency(&f, old[i].tree_size, old[j].tree_size);
		expect_code(res, CODE(OK));
		assert_int_equal(res->consistency->new_size, old[j].tree_size);
		assert_int_equal(verify_consistency(res->consistency, old[i].root, old[j].root), 0);
		/* A root the journal never had does not verify. */
		uint8_t forged[32];
		memcpy(forged, old[i].root, 32);
		forged[31] ^= 0x80;
		res = get_consistency(&f, old[i].tree_size, 0);
		assert_int_not_equal(verify_consistency(res->consistency, forged, now.root), 0);
	}
	/* Equal sizes: an empty proof, and the roots must be equal. */
	Tally__V1__QueryResult *res = get_consistency(&f, now.tree_size, now.tree_size);
	expect_code(res, CODE(OK));
	assert_int_equal(res->consistency->n_path, 0);
	assert_int_equal(verify_consistency(res->consistency, now.root, now.root), 0);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_get_consistency_with_invalid_sizes_is_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	/* An empty journal has no size to prove anything about. */
	expect_rejected(get_consistency(&f, 1, 0), CODE(INVALID_ARGUMENT), "old_size");
	setup_brand(&f, "b1", 0);
	setup_brand(&f, "b2", 0);
	setup_brand(&f, "b3", 0);
	uint64_t size = digest(&f).tree_size;
	const uint64_t bad[][2] = {
		{0, 0}, {0, size}, {size + 1, 0}, {size, size - 1}, {2, 1},
		{1, size + 1}, {size + 1, size + 1}, {UINT64_MAX, 0}, {1, UINT64_MAX},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		Tally__V1__QueryResult *res = get_consistency(&f, bad[i][0], bad[i][1]);
		expect_rejected(res, CODE(INVALID_ARGUMENT), "size");
		assert_null(res->consistency);
	}
	expect_code(get_consistency(&f, 1, size), CODE(OK));
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* GetAccounts                                                                        */
/* ================================================================================ */

static void test_get_accounts_reads_many_members_in_one_call_with_zero_accounts_for_unseen_members(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_brand(&f, "b1", 12);
	setup_brand(&f, "b2", 12);
	Tally__V1__Command *cmds[100];
	char ids[50][8];
	for (size_t i = 0; i < 50; i++) {
		snprintf(ids[i], sizeof(ids[i]), "m%zu", i);
		cmds[i] = c_member(&f, admin(&f), ids[i]);
		cmds[50 + i] = c_accrue(&f, dealer(&f), "b1", ids[i], (int64_t)i + 1);
	}
	apply_all_ok(&f, cmds, 100);
	ok(&f, c_member(&f, admin(&f), "quiet")); /* open, never accrued */
	ok(&f, c_accrue(&f, dealer(&f), "b2", "m7", 500)); /* another brand's account */
	/* Asked: every member, interleaved with members never seen and one asked twice. */
	char *ask[104];
	size_t n = 0;
	for (size_t i = 0; i < 50; i++) {
		ask[n++] = ids[i];
		if (i % 20 == 0)
			ask[n++] = (char *)"ghost";
	}
	ask[n++] = (char *)"quiet";
	ask[n++] = ids[7];
	Tally__V1__QueryResult *res = get_accounts(&f, auditor(&f, "b1"), "b1", ask, n, false);
	expect_code(res, CODE(OK));
	assert_applied(&f, res);
	assert_int_equal(res->n_accounts, n);
	for (size_t i = 0; i < n; i++) {
		const Tally__V1__Account *a = res->accounts[i];
		assert_string_equal(a->brand, "b1");
		assert_string_equal(a->member, ask[i]);
		if (ask[i][0] == 'm') {
			int64_t k = strtoll(ask[i] + 1, NULL, 10);
			assert_int_equal(a->available, k + 1);
			assert_int_equal(a->earned, k + 1);
		} else { /* never-seen and never-accrued members read as zero accounts */
			assert_int_equal(a->available, 0);
			assert_int_equal(a->held, 0);
			assert_int_equal(a->earned, 0);
			assert_int_equal(a->redeemed, 0);
			assert_int_equal(a->expired, 0);
			assert_int_equal(a->n_lots, 0);
			assert_int_equal(a->n_holds, 0);
		}
	}
	/* The brand asked about is the one read: m7's b2 account is separate. */
	char *m7[] = {ids[7]};
	res = get_accounts(&f, admin(&f), "b2", m7, 1, true);
	assert_int_equal(res->accounts[0]->available, 500);

	/* The largest call: 8192 members, most never seen. */
	char **many = zalloc(&f, TALLY_ACCOUNTS_QUERY_MAX * sizeof(*many));
	for (size_t i = 0; i < TALLY_ACCOUNTS_QUERY_MAX; i++) {
		char id[16];
		snprintf(id, sizeof(id), "%c%zu", i % 100 == 0 ? 'm' : 'x', i % 100 == 0 ? i / 100 : i);
		many[i] = sdup(&f, id);
	}
	res = get_accounts(&f, admin(&f), "b1", many, TALLY_ACCOUNTS_QUERY_MAX, true);
	expect_code(res, CODE(OK));
	assert_int_equal(res->n_accounts, TALLY_ACCOUNTS_QUERY_MAX);
	for (size_t i = 0; i < TALLY_ACCOUNTS_QUERY_MAX; i++) {
		int64_t want = i % 100 == 0 && i / 100 < 50 ? (int64_t)(i / 100) + 1 : 0;
		assert_string_equal(res->accounts[i]->member, many[i]);
		assert_int_equal(res->accounts[i]->available, want);
	}
	assert_invariants(&f);
	fx_close(&f);
}

static void test_get_accounts_with_lots_returns_lots_first_expiring_first_and_open_holds(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_brand(&f, "b1", 12);
	const char *const members[] = {"m1", "m2"};
	setup_members(&f, members, 2);
	int64_t t0 = f.now_ms;
	int64_t year = 1798761600000LL; /* 2027-01-01: t0 + 12 months */
	ok(&f, c_accrue(&f, dealer(&f), "b1", "m1", 100)); /* expires in a year */
	ok(&f, c_brand_expiry(&f, "b1", 0));
	ok(&f, c_accrue(&f, dealer(&f), "b1", "m1", 50)); /* never expires */
	ok(&f, c_brand_expiry(&f, "b1", 1));
	f.now_ms = t0 + DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b1", "m1", 70)); /* expires first, accrued last */
	const uint32_t week_s = 7 * 86400; /* no hold times out in this test */
	uint64_t open1 = ok(&f, c_hold(&f, mall(&f), "b1", "m1", 30, week_s))->hold_id;
	uint64_t done = ok(&f, c_hold(&f, mall(&f), "b1", "m1", 10, week_s))->hold_id;
	ok(&f, c_capture(&f, mall(&f), done, 0));
	uint64_t voided = ok(&f, c_hold(&f, mall(&f), "b1", "m1", 5, week_s))->hold_id;
	ok(&f, c_void(&f, mall(&f), voided));
	uint64_t open2 = ok(&f, c_hold(&f, mall(&f), "b1", "m1", 40, week_s))->hold_id;
	ok(&f, c_accrue(&f, dealer(&f), "b1", "m2", 9));
	/* FEFO: the 1-month lot gave 30 + 10 + 30 of its 70, then the yearly one 10. */
	char *ask[] = {(char *)"m1", (char *)"m2", (char *)"ghost"};
	Tally__V1__QueryResult *res = get_accounts(&f, auditor(&f, "b1"), "b1", ask, 3, true);
	expect_code(res, CODE(OK));
	assert_applied(&f, res);
	assert_int_equal(res->n_accounts, 3);
	const Tally__V1__Account *a = res->accounts[0];
	assert_int_equal(a->available, 140);
	assert_int_equal(a->held, 70);
	assert_int_equal(a->redeemed, 10);
	assert_int_equal(a->n_lots, 2);
	assert_int_equal(a->lots[0]->expiry_ms, year);
	assert_int_equal(a->lots[0]->points, 90);
	assert_int_equal(a->lots[1]->expiry_ms, 0); /* never-expiring last */
	assert_int_equal(a->lots[1]->points, 50);
	/* Only the open holds, each with its lots. */
	assert_int_equal(a->n_holds, 2);
	uint64_t got0 = a->holds[0]->id, got1 = a->holds[1]->id;
	assert_true((got0 == open1 && got1 == open2) || (got0 == open2 && got1 == open1));
	int64_t held = 0;
	for (size_t i = 0; i < a->n_holds; i++) {
		const Tally__V1__HoldRecord *h = a->holds[i];
		assert_int_equal(h->status, TALLY__V1__HOLD_STATUS__OPEN);
		assert_string_equal(h->brand, "b1");
		assert_string_equal(h->member, "m1");
		int64_t in_lots = 0;
		for (size_t j = 0; j < h->n_lots; j++)
			in_lots += h->lots[j]->points;
		assert_int_equal(in_lots, h->points);
		held += h->points;
	}
	assert_int_equal(held, a->held);
	/* The order of lots: add a lot expiring before the others, it comes first. */
	f.now_ms = t0 + 2 * DAY_MS;
	ok(&f, c_accrue(&f, dealer(&f), "b1", "m1", 11)); /* 2026-02-03 */
	res = get_accounts(&f, admin(&f), "b1", ask, 1, true);
	a = res->accounts[0];
	assert_int_equal(a->n_lots, 3);
	assert_int_equal(a->lots[0]->points, 11);
	assert_true(a->lots[0]->expiry_ms > 0 && a->lots[0]->expiry_ms < a->lots[1]->expiry_ms);
	assert_int_equal(a->lots[2]->expiry_ms, 0);
	assert_int_equal(res->accounts[0]->available, 151);
	/* Other members' lots and holds are theirs alone. */
	res = get_accounts(&f, admin(&f), "b1", ask + 1, 2, true);
	assert_int_equal(res->accounts[0]->n_lots, 1);
	assert_int_equal(res->accounts[0]->lots[0]->points, 9);
	assert_int_equal(res->accounts[0]->n_holds, 0);
	assert_int_equal(res->accounts[1]->n_lots, 0);
	assert_int_equal(res->accounts[1]->n_holds, 0);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_get_accounts_without_with_lots_returns_no_lots_or_holds(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_brand(&f, "b1", 12);
	const char *const members[] = {"m1"};
	setup_members(&f, members, 1);
	ok(&f, c_accrue(&f, dealer(&f), "b1", "m1", 100));
	f.now_ms += 1000;
	ok(&f, c_accrue(&f, dealer(&f), "b1", "m1", 100));
	ok(&f, c_hold(&f, mall(&f), "b1", "m1", 30, 3600));
	char *ask[] = {(char *)"m1"};
	Tally__V1__QueryResult *res = get_accounts(&f, admin(&f), "b1", ask, 1, false);
	expect_code(res, CODE(OK));
	const Tally__V1__Account *a = res->accounts[0];
	assert_int_equal(a->available, 170);
	assert_int_equal(a->held, 30);
	assert_int_equal(a->earned, 200);
	assert_int_equal(a->n_lots, 0);
	assert_int_equal(a->n_holds, 0);
	res = get_accounts(&f, admin(&f), "b1", ask, 1, true);
	assert_int_equal(res->accounts[0]->n_lots, 2);
	assert_int_equal(res->accounts[0]->n_holds, 1);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_get_accounts_of_unknown_brand_is_unknown_brand_and_bad_member_counts_are_invalid_argument(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_brand(&f, "b1", 12);
	char *one[] = {(char *)"m1"};
	Tally__V1__QueryResult *res = get_accounts(&f, admin(&f), "nope", one, 1, true);
	expect_rejected(res, CODE(UNKNOWN_BRAND), "brand");
	assert_int_equal(res->n_accounts, 0);
	assert_applied(&f, res);
	expect_rejected(get_accounts(&f, admin(&f), "B1!", one, 1, false), CODE(INVALID_ARGUMENT),
			"brand");
	expect_rejected(get_accounts(&f, admin(&f), "b1", one, 0, false), CODE(INVALID_ARGUMENT),
			"members");
	char **many = zalloc(&f, (TALLY_ACCOUNTS_QUERY_MAX + 1) * sizeof(*many));
	for (size_t i = 0; i <= TALLY_ACCOUNTS_QUERY_MAX; i++)
		many[i] = (char *)"m1";
	res = get_accounts(&f, admin(&f), "b1", many, TALLY_ACCOUNTS_QUERY_MAX + 1, false);
	expect_rejected(res, CODE(INVALID_ARGUMENT), "members");
	assert_int_equal(res->n_accounts, 0);
	res = get_accounts(&f, admin(&f), "b1", many, TALLY_ACCOUNTS_QUERY_MAX, false);
	expect_code(res, CODE(OK));
	char *bad[] = {(char *)"m1", (char *)""};
	expect_rejected(get_accounts(&f, admin(&f), "b1", bad, 2, false), CODE(INVALID_ARGUMENT),
			"members");
	/* A key scoped to another brand is refused before the brand is looked up. */
	expect_code(get_accounts(&f, auditor(&f, "b2"), "b1", one, 1, false),
		    CODE(PERMISSION_DENIED));
	assert_invariants(&f);
	fx_close(&f);
}

/* ================================================================================ */
/* Small lookups                                                                      */
/* ================================================================================ */

static void test_get_brand_returns_the_brand_or_unknown_brand(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	f.now_ms += 5000;
	uint64_t seq = ok(&f, c_brand(&f, admin(&f), "b1", 24))->entry_seq;
	Tally__V1__QueryResult *res = get_brand(&f, auditor(&f, "b1"), "b1");
	expect_code(res, CODE(OK));
	assert_applied(&f, res);
	assert_non_null(res->brand);
	assert_string_equal(res->brand->id, "b1");
	assert_string_equal(res->brand->name, "b1");
	assert_string_equal(res->brand->currency, "EUR");
	assert_int_equal(res->brand->point_value_micros, 10000);
	assert_int_equal(res->brand->expiry_months, 24);
	assert_int_equal(res->brand->created_ms, T0_MS + 5000);
	assert_int_equal(res->brand->created_seq, seq);
	/* An update shows at once. */
	ok(&f, c_brand_expiry(&f, "b1", 3));
	assert_int_equal(get_brand(&f, admin(&f), "b1")->brand->expiry_months, 3);
	res = get_brand(&f, admin(&f), "b2");
	expect_rejected(res, CODE(UNKNOWN_BRAND), "id");
	assert_null(res->brand);
	expect_rejected(get_brand(&f, admin(&f), ""), CODE(INVALID_ARGUMENT), "id");
	expect_code(get_brand(&f, auditor(&f, "b2"), "b1"), CODE(PERMISSION_DENIED));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_get_member_returns_the_member_or_unknown_member(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_brand(&f, "b1", 0);
	f.now_ms += 7000;
	ok(&f, c_member(&f, admin(&f), "m1"));
	Tally__V1__QueryResult *res = get_member(&f, "m1");
	expect_code(res, CODE(OK));
	assert_applied(&f, res);
	assert_string_equal(res->member->id, "m1");
	assert_int_equal(res->member->segment, TALLY__V1__SEGMENT__OWNER_PASSENGER);
	assert_int_equal(res->member->joined_ms, T0_MS + 7000);
	res = get_member(&f, "m2");
	expect_rejected(res, CODE(UNKNOWN_MEMBER), "id");
	assert_null(res->member);
	expect_rejected(get_member(&f, ""), CODE(INVALID_ARGUMENT), "id");
	/* A brand's key sees a member once they have an account in its brand; before, and
	 * for other brands' keys, the member does not exist. */
	res = get_member_as(&f, auditor(&f, "b1"), "m1");
	expect_rejected(res, CODE(UNKNOWN_MEMBER), "id");
	assert_null(res->member);
	ok(&f, c_accrue(&f, admin(&f), "b1", "m1", 10));
	res = get_member_as(&f, auditor(&f, "b2,b1"), "m1");
	expect_code(res, CODE(OK));
	assert_string_equal(res->member->id, "m1");
	expect_rejected(get_member_as(&f, auditor(&f, "b2"), "m1"), CODE(UNKNOWN_MEMBER), "id");
	assert_invariants(&f);
	fx_close(&f);
}

static void test_get_agreement_returns_the_agreement_or_no_agreement(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_brand(&f, "b1", 0);
	setup_brand(&f, "b2", 0);
	setup_brand(&f, "b3", 0);
	uint64_t seq = ok(&f, c_agreement(&f, admin(&f), "b1", "b2", 3, 2))->entry_seq;
	/* Either brand of the pair may read it. */
	const char *scopes[] = {"b1", "b2"};
	for (int i = 0; i < 2; i++) {
		Tally__V1__QueryResult *res = get_agreement(&f, auditor(&f, scopes[i]), "b1", "b2");
		expect_code(res, CODE(OK));
		assert_applied(&f, res);
		const Tally__V1__Agreement *ag = res->agreement;
		assert_string_equal(ag->from_brand, "b1");
		assert_string_equal(ag->to_brand, "b2");
		assert_int_equal(ag->rate_num, 3);
		assert_int_equal(ag->rate_den, 2);
		assert_int_equal(ag->price_micros, 5000);
		assert_true(ag->active);
		assert_int_equal(ag->updated_seq, seq);
	}
	/* Agreements have a direction. */
	Tally__V1__QueryResult *res = get_agreement(&f, admin(&f), "b2", "b1");
	expect_code(res, CODE(NO_AGREEMENT));
	assert_null(res->agreement);
	expect_code(get_agreement(&f, admin(&f), "b1", "b3"), CODE(NO_AGREEMENT));
	expect_code(get_agreement(&f, admin(&f), "b1", "b9"), CODE(NO_AGREEMENT));
	expect_code(get_agreement(&f, admin(&f), "b1", ""), CODE(INVALID_ARGUMENT));
	expect_code(get_agreement(&f, auditor(&f, "b3"), "b1", "b2"), CODE(PERMISSION_DENIED));
	assert_invariants(&f);
	fx_close(&f);
}

/* b1 and b2 with agreements both ways and m1 holding points in both. */
static void pair_setup(struct fx *f)
{
	setup_brand(f, "b1", 0);
	setup_brand(f, "b2", 0);
	setup_brand(f, "b3", 0);
	ok(f, c_member(f, admin(f), "m1"));
	ok(f, c_accrue(f, dealer(f), "b1", "m1", 1000));
	ok(f, c_accrue(f, dealer(f), "b2", "m1", 1000));
	ok(f, c_agreement(f, admin(f), "b1", "b2", 1, 1));
	ok(f, c_agreement(f, admin(f), "b2", "b1", 2, 1));
}

static void test_list_obligations_returns_open_obligations_of_the_pair_in_seq_order(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	pair_setup(&f);
	uint64_t x1 = ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 10))->entry_seq;
	f.now_ms += 1000;
	uint64_t x2 = ok(&f, c_exchange(&f, admin(&f), "b2", "b1", "m1", 20))->entry_seq;
	f.now_ms += 1000;
	uint64_t x3 = ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 30))->entry_seq;
	/* Either order of the pair, either brand's key. */
	Tally__V1__QueryResult *res = list_obligations(&f, auditor(&f, "b2"), "b2", "b1", 0);
	expect_code(res, CODE(OK));
	assert_applied(&f, res);
	assert_int_equal(res->n_obligations, 3);
	assert_int_equal(res->obligations[0]->seq, x1);
	assert_int_equal(res->obligations[1]->seq, x2);
	assert_int_equal(res->obligations[2]->seq, x3);
	assert_string_equal(res->obligations[0]->payer, "b1");
	assert_string_equal(res->obligations[0]->payee, "b2");
	assert_int_equal(res->obligations[0]->points, 10);
	assert_int_equal(res->obligations[0]->amount_micros, 10 * 5000);
	assert_string_equal(res->obligations[1]->payer, "b2");
	assert_int_equal(res->obligations[1]->points, 40);
	assert_int_equal(res->obligations[1]->time_ms, T0_MS + 1000);
	res = list_obligations(&f, auditor(&f, "b1"), "b1", "b2", 2);
	assert_int_equal(res->n_obligations, 2);
	assert_int_equal(res->obligations[1]->seq, x2);
	/* Other pairs have none; a pair of one brand is not a pair. */
	assert_int_equal(list_obligations(&f, admin(&f), "b1", "b3", 0)->n_obligations, 0);
	expect_code(list_obligations(&f, admin(&f), "b1", "b1", 0), CODE(INVALID_ARGUMENT));
	expect_code(list_obligations(&f, auditor(&f, "b3"), "b1", "b2", 0),
		    CODE(PERMISSION_DENIED));
	/* Settled obligations are no longer open. */
	f.now_ms += 1000;
	ok(&f, c_settle(&f, admin(&f), "b1", "b2", T0_MS + 1500));
	res = list_obligations(&f, admin(&f), "b1", "b2", 0);
	assert_int_equal(res->n_obligations, 1);
	assert_int_equal(res->obligations[0]->seq, x3);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_list_settlements_returns_settlements_of_the_pair_or_all_from_an_id(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	pair_setup(&f);
	ok(&f, c_agreement(&f, admin(&f), "b1", "b3", 1, 1));
	ok(&f, c_exchange(&f, admin(&f), "b1", "b2", "m1", 10));
	ok(&f, c_exchange(&f, admin(&f), "b1", "b3", "m1", 10));
	f.now_ms += 1000;
	uint64_t s1 = ok(&f, c_settle(&f, admin(&f), "b2", "b1", f.now_ms - 1))->settlement_id;
	uint64_t s2 = ok(&f, c_settle(&f, admin(&f), "b1", "b3", f.now_ms - 1))->settlement_id;
	f.now_ms += 1000;
	uint64_t s3 = ok(&f, c_settle(&f, admin(&f), "b1", "b2", f.now_ms - 1))->settlement_id;
	assert_true(s1 < s2 && s2 < s3);
	Tally__V1__QueryResult *res = list_settlements(&f, auditor(&f, "b2"), "b1", "b2", 0, 0);
	expect_code(res, CODE(OK));
	assert_applied(&f, res);
	assert_int_equal(res->n_settlements, 2);
	assert_int_equal(res->settlements[0]->id, s1);
	assert_int_equal(res->settlements[1]->id, s3);
	assert_string_equal(res->settlements[0]->brand_a, "b1");
	assert_string_equal(res->settlements[0]->brand_b, "b2");
	assert_string_equal(res->settlements[0]->payer, "b1");
	assert_int_equal(res->settlements[0]->count, 1);
	assert_int_equal(res->settlements[1]->count, 0);
	/* from_id and limit. */
	res = list_settlements(&f, admin(&f), "b2", "b1", s1 + 1, 0);
	assert_int_equal(res->n_settlements, 1);
	assert_int_equal(res->settlements[0]->id, s3);
	res = list_settlements(&f, admin(&f), "b1", "b2", 0, 1);
	assert_int_equal(res->n_settlements, 1);
	assert_int_equal(res->settlements[0]->id, s1);
	/* Without a pair: every settlement the key may see. */
	res = list_settlements(&f, admin(&f), "", "", 0, 0);
	assert_int_equal(res->n_settlements, 3);
	assert_int_equal(res->settlements[0]->id, s1);
	assert_int_equal(res->settlements[1]->id, s2);
	assert_int_equal(res->settlements[2]->id, s3);
	res = list_settlements(&f, auditor(&f, "b3"), "", "", 0, 0);
	assert_int_equal(res->n_settlements, 1);
	assert_int_equal(res->settlements[0]->id, s2);
	res = list_settlements(&f, admin(&f), "", "", s2, 0);
	assert_int_equal(res->n_settlements, 2);
	assert_int_equal(res->settlements[0]->id, s2);
	/* A pair that never settled, a bad pair, a pair out of scope. */
	assert_int_equal(list_settlements(&f, admin(&f), "b2", "b3", 0, 0)->n_settlements, 0);
	expect_code(list_settlements(&f, admin(&f), "b1", "", 0, 0), CODE(INVALID_ARGUMENT));
	expect_code(list_settlements(&f, auditor(&f, "b3"), "b1", "b2", 0, 0),
		    CODE(PERMISSION_DENIED));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_get_digest_equals_tally_ledger_digest(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	/* The whole journal's digest is for keys of every brand. */
	expect_code(get_digest(&f, auditor(&f, "b1")), CODE(PERMISSION_DENIED));
	/* The empty ledger: the empty root. */
	Tally__V1__QueryResult *res = get_digest(&f, auditor(&f, "*"));
	expect_code(res, CODE(OK));
	uint8_t empty[32];
	tally_merkle_empty_root(empty);
	assert_int_equal(res->digest->tree_size, 0);
	assert_memory_equal(res->digest->root.data, empty, 32);
	struct world w;
	world_setup(&f, &w);
	for (int round = 0; round < 2; round++) {
		res = get_digest(&f, auditor(&f, "*"));
		expect_code(res, CODE(OK));
		assert_applied(&f, res);
		struct tally_digest d = digest(&f);
		const Tally__V1__Digest *g = res->digest;
		assert_int_equal(g->applied_index, d.applied_index);
		assert_int_equal(g->applied_index, tally_ledger_applied_index(f.l));
		assert_int_equal(g->applied_term, d.applied_term);
		assert_int_equal(g->tree_size, d.tree_size);
		assert_int_equal(g->time_ms, d.time_ms);
		assert_int_equal(g->time_ms, f.now_ms);
		assert_int_equal(g->root.len, 32);
		assert_memory_equal(g->root.data, d.root, 32);
		assert_int_equal(g->state_digest.len, 32);
		assert_memory_equal(g->state_digest.data, d.state_digest, 32);
		f.now_ms += 1000;
		ok(&f, c_accrue(&f, dealer(&f), "b1", "m1", 1));
	}
	assert_invariants(&f);
	fx_close(&f);
}

static void test_query_without_a_body_is_invalid_argument_and_without_a_role_is_permission_denied(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_brand(&f, "b1", 0);
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	expect_rejected(query(&f, &q, admin(&f)), CODE(INVALID_ARGUMENT), "q");
	Tally__V1__Principal *nobody = who(&f, TALLY__V1__ROLE__ROLE_UNSPECIFIED, "nobody", "*");
	expect_code(get_brand(&f, nobody, "b1"), CODE(PERMISSION_DENIED));
	assert_invariants(&f);
	fx_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_list_entries_without_filters_pages_by_seq_without_gaps_or_duplicates),
		cmocka_unit_test(test_list_entries_limit_zero_means_100_and_limit_over_10000_is_invalid_argument),
		cmocka_unit_test(test_list_entries_without_brand_filter_is_permission_denied_for_a_scoped_key),
		cmocka_unit_test(test_list_entries_by_brand_returns_exactly_the_entries_touching_the_brand_in_seq_order),
		cmocka_unit_test(test_list_entries_by_brand_pages_with_next_seq_without_gaps_or_duplicates),
		cmocka_unit_test(test_list_entries_by_member_returns_exactly_the_member_entries_including_receiver_and_exchange),
		cmocka_unit_test(test_list_entries_by_member_over_long_chains_matches_the_journal_from_every_start),
		cmocka_unit_test(test_list_entries_by_member_and_brand_returns_the_intersection),
		cmocka_unit_test(test_get_entry_of_unknown_seq_is_not_found),
		cmocka_unit_test(test_get_entry_proof_verifies_against_the_current_root_and_fails_for_a_flipped_byte),
		cmocka_unit_test(test_get_entry_of_another_brand_is_permission_denied_for_a_scoped_key),
		cmocka_unit_test(test_get_consistency_from_an_old_digest_to_the_current_size_verifies),
		cmocka_unit_test(test_get_consistency_with_invalid_sizes_is_invalid_argument),
		cmocka_unit_test(test_get_accounts_reads_many_members_in_one_call_with_zero_accounts_for_unseen_members),
		cmocka_unit_test(test_get_accounts_with_lots_returns_lots_first_expiring_first_and_open_holds),
		cmocka_unit_test(test_get_accounts_without_with_lots_returns_no_lots_or_holds),
		cmocka_unit_test(test_get_accounts_of_unknown_brand_is_unknown_brand_and_bad_member_counts_are_invalid_argument),
		cmocka_unit_test(test_get_brand_returns_the_brand_or_unknown_brand),
		cmocka_unit_test(test_get_member_returns_the_member_or_unknown_member),
		cmocka_unit_test(test_get_agreement_returns_the_agreement_or_no_agreement),
		cmocka_unit_test(test_list_obligations_returns_open_obligations_of_the_pair_in_seq_order),
		cmocka_unit_test(test_list_settlements_returns_settlements_of_the_pair_or_all_from_an_id),
		cmocka_unit_test(test_get_digest_equals_tally_ledger_digest),
		cmocka_unit_test(test_query_without_a_body_is_invalid_argument_and_without_a_role_is_permission_denied),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
