/* The authorization matrix of ledger.h, cell by cell, and brand scopes. */
#include "tests/util.h"

#include <stdio.h>
#include <string.h>

#define CODE(name) TALLY__V1__RESULT_CODE__##name
#define ROLE(name) TALLY__V1__ROLE__##name
#define N_ROLES 7
#define PER_ROLE N_ROLES

static const Tally__V1__Role roles[N_ROLES] = {
	ROLE(ADMIN), ROLE(MALL), ROLE(COMMUNITY), ROLE(DEALER), ROLE(PARTNER), ROLE(AUDITOR),
	ROLE(SYSTEM),
};
static const char *const role_names[N_ROLES] = {
	"admin", "mall", "community", "dealer", "partner", "auditor", "system",
};

/* Matrix columns as bits. */
#define A (1u << 0)
#define M (1u << 1)
#define C (1u << 2)
#define D (1u << 3)
#define P (1u << 4)
#define U (1u << 5) /* auditor */
#define S (1u << 6)

/* ---- helpers ---------------------------------------------------------------------- */

static void expect_denied_unchanged(struct fx *f, Tally__V1__Command *c)
{
	struct snap before = snap_take(f);
	expect(f, c, CODE(PERMISSION_DENIED));
	struct snap after = snap_take(f);
	assert_true(snap_equal(&before, &after));
}

static Tally__V1__Command *c_update_brand(struct fx *f, const Tally__V1__Principal *p,
					  const char *id)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	Tally__V1__UpdateBrand *m = zalloc(f, sizeof(*m));
	Tally__V1__StringValue *name = zalloc(f, sizeof(*name));
	tally__v1__update_brand__init(m);
	tally__v1__string_value__init(name);
	name->value = sdup(f, "Renamed");
	m->id = sdup(f, id);
	m->name = name;
	c->body_case = TALLY__V1__COMMAND__BODY_UPDATE_BRAND;
	c->update_brand = m;
	return c;
}

static Tally__V1__Command *c_update_member(struct fx *f, const Tally__V1__Principal *p,
					   const char *id)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	Tally__V1__UpdateMember *m = zalloc(f, sizeof(*m));
	tally__v1__update_member__init(m);
	m->id = sdup(f, id);
	m->segment = TALLY__V1__SEGMENT__FAN;
	c->body_case = TALLY__V1__COMMAND__BODY_UPDATE_MEMBER;
	c->update_member = m;
	return c;
}

static Tally__V1__QueryResult *q_accounts(struct fx *f, const Tally__V1__Principal *p,
					  const char *brand, const char *member)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetAccounts g = TALLY__V1__GET_ACCOUNTS__INIT;
	char *members[1] = {(char *)member};
	g.brand = (char *)brand;
	g.members = members;
	g.n_members = 1;
	q.q_case = TALLY__V1__QUERY__Q_ACCOUNTS;
	q.accounts = &g;
	return query(f, &q, p);
}

static Tally__V1__QueryResult *q_entries(struct fx *f, const Tally__V1__Principal *p,
					 const char *brand, const char *member)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__ListEntries g = TALLY__V1__LIST_ENTRIES__INIT;
	g.brand = (char *)brand;
	g.member = (char *)member;
	g.limit = 1000;
	q.q_case = TALLY__V1__QUERY__Q_ENTRIES;
	q.entries = &g;
	return query(f, &q, p);
}

/* ---- the world every matrix row starts from --------------------------------------- */

struct world {
	uint64_t holds[PER_ROLE];       /* open holds of 10 points of b1/m1 */
	uint64_t redemptions[PER_ROLE]; /* redemptions of 10 points of b1/m1 */
	uint64_t accruals[PER_ROLE];    /* accruals of 10 points to b1/m1 */
	uint64_t settlements[PER_ROLE]; /* unconfirmed settlements of b1/b2 */
};

static void apply_ok(struct fx *f, Tally__V1__Command **cmds, size_t n, uint64_t *out,
		     bool hold_ids)
{
	Tally__V1__CommandResult **rs = apply_n(f, cmds, n);
	for (size_t i = 0; i < n; i++) {
		if (rs[i]->code != CODE(OK))
			fail_msg("setup command %zu: %s: %s", i, tally_result_name(rs[i]->code),
				 rs[i]->message);
		out[i] = hold_ids ? rs[i]->hold_id
			 : rs[i]->settlement_id != 0 ? rs[i]->settlement_id : rs[i]->entry_seq;
	}
}

static void world_setup(struct fx *f, struct world *w)
{
	Tally__V1__Command *cmds[PER_ROLE];
	setup_brand(f, "b1", 0);
	setup_brand(f, "b2", 0);
	const char *ms[] = {"m1", "m2"};
	setup_members(f, ms, 2);
	ok(f, c_accrue(f, admin(f), "b1", "m1", 100000));
	ok(f, c_accrue(f, admin(f), "b2", "m1", 100000));
	ok(f, c_agreement(f, admin(f), "b1", "b2", 1, 1));
	for (int i = 0; i < PER_ROLE; i++)
		cmds[i] = c_hold(f, admin(f), "b1", "m1", 10, 0);
	apply_ok(f, cmds, PER_ROLE, w->holds, true);
	for (int i = 0; i < PER_ROLE; i++)
		cmds[i] = c_redeem(f, admin(f), "b1", "m1", 10);
	apply_ok(f, cmds, PER_ROLE, w->redemptions, false);
	for (int i = 0; i < PER_ROLE; i++)
		cmds[i] = c_accrue(f, admin(f), "b1", "m1", 10);
	apply_ok(f, cmds, PER_ROLE, w->accruals, false);
	ok(f, c_exchange(f, admin(f), "b1", "b2", "m1", 10));
	f->now_ms += 1000;
	for (int i = 0; i < PER_ROLE; i++)
		cmds[i] = c_settle(f, admin(f), "b1", "b2", f->now_ms - 1);
	apply_ok(f, cmds, PER_ROLE, w->settlements, false);
	f->now_ms += 1000;
}

/* ---- the matrix --------------------------------------------------------------------- */

typedef Tally__V1__Command *(*build_fn)(struct fx *f, const struct world *w,
					const Tally__V1__Principal *p, int i);

static Tally__V1__Command *b_register_brand(struct fx *f, const struct world *w,
					    const Tally__V1__Principal *p, int i)
{
	(void)w;
	char id[16];
	snprintf(id, sizeof(id), "new%d", i);
	return c_brand(f, p, id, 0);
}

static Tally__V1__Command *b_update_brand(struct fx *f, const struct world *w,
					  const Tally__V1__Principal *p, int i)
{
	(void)w, (void)i;
	return c_update_brand(f, p, "b1");
}

static Tally__V1__Command *b_open_member(struct fx *f, const struct world *w,
					 const Tally__V1__Principal *p, int i)
{
	(void)w;
	char id[16];
	snprintf(id, sizeof(id), "new%d", i);
	return c_member(f, p, id);
}

static Tally__V1__Command *b_update_member(struct fx *f, const struct world *w,
					   const Tally__V1__Principal *p, int i)
{
	(void)w, (void)i;
	return c_update_member(f, p, "m2");
}

static Tally__V1__Command *b_accrue(struct fx *f, const struct world *w,
				    const Tally__V1__Principal *p, int i)
{
	(void)w, (void)i;
	return c_accrue(f, p, "b1", "m1", 10);
}

static Tally__V1__Command *b_redeem(struct fx *f, const struct world *w,
				    const Tally__V1__Principal *p, int i)
{
	(void)w, (void)i;
	return c_redeem(f, p, "b1", "m1", 10);
}

static Tally__V1__Command *b_hold(struct fx *f, const struct world *w,
				  const Tally__V1__Principal *p, int i)
{
	(void)w, (void)i;
	return c_hold(f, p, "b1", "m1", 10, 0);
}

static Tally__V1__Command *b_capture(struct fx *f, const struct world *w,
				     const Tally__V1__Principal *p, int i)
{
	return c_capture(f, p, w->holds[i], 0);
}

static Tally__V1__Command *b_void(struct fx *f, const struct world *w,
				  const Tally__V1__Principal *p, int i)
{
	return c_void(f, p, w->holds[i]);
}

static Tally__V1__Command *b_reverse_redemption(struct fx *f, const struct world *w,
						const Tally__V1__Principal *p, int i)
{
	return c_reverse(f, p, w->redemptions[i], 0);
}

static Tally__V1__Command *b_reverse_accrual(struct fx *f, const struct world *w,
					     const Tally__V1__Principal *p, int i)
{
	return c_reverse(f, p, w->accruals[i], 0);
}

static Tally__V1__Command *b_transfer(struct fx *f, const struct world *w,
				      const Tally__V1__Principal *p, int i)
{
	(void)w, (void)i;
	return c_transfer(f, p, "b1", "m1", "m2", 10);
}

static Tally__V1__Command *b_set_agreement(struct fx *f, const struct world *w,
					   const Tally__V1__Principal *p, int i)
{
	(void)w, (void)i;
	return c_agreement(f, p, "b2", "b1", 1, 2);
}

static Tally__V1__Command *b_exchange(struct fx *f, const struct world *w,
				      const Tally__V1__Principal *p, int i)
{
	(void)w, (void)i;
	return c_exchange(f, p, "b1", "b2", "m1", 10);
}

static Tally__V1__Command *b_settle(struct fx *f, const struct world *w,
				    const Tally__V1__Principal *p, int i)
{
	(void)w, (void)i;
	return c_settle(f, p, "b1", "b2", f->now_ms - 1);
}

static Tally__V1__Command *b_confirm(struct fx *f, const struct world *w,
				     const Tally__V1__Principal *p, int i)
{
	return c_confirm(f, p, w->settlements[i]);
}

static Tally__V1__Command *b_adjust(struct fx *f, const struct world *w,
				    const Tally__V1__Principal *p, int i)
{
	(void)w, (void)i;
	return c_adjust(f, p, "b1", "m1", -5, "correction");
}

static Tally__V1__Command *b_expire(struct fx *f, const struct world *w,
				    const Tally__V1__Principal *p, int i)
{
	(void)w, (void)i;
	return c_expire(f, p);
}

static Tally__V1__Command *b_set_rules(struct fx *f, const struct world *w,
				       const Tally__V1__Principal *p, int i)
{
	(void)w, (void)i;
	Tally__V1__Command *c = c_set_rules(f, TALLY_RULES_BOUNDED_LOTS);
	c->principal = (Tally__V1__Principal *)p;
	return c;
}

static Tally__V1__Command *b_import(struct fx *f, const struct world *w,
				    const Tally__V1__Principal *p, int i)
{
	(void)w, (void)i;
	return c_import(f, p, "b1", "m1", 5, 0);
}

struct row {
	const char *name;
	unsigned allowed;
	build_fn build;
	Tally__V1__Command__BodyCase body;
};

/* The matrix of ledger.h, transcribed. */
static const struct row matrix[] = {
	{"register_brand", A, b_register_brand, TALLY__V1__COMMAND__BODY_REGISTER_BRAND},
	{"update_brand", A, b_update_brand, TALLY__V1__COMMAND__BODY_UPDATE_BRAND},
	{"open_member", A | M | C | D | P, b_open_member, TALLY__V1__COMMAND__BODY_OPEN_MEMBER},
	{"update_member", A | M | C | D | P, b_update_member, TALLY__V1__COMMAND__BODY_UPDATE_MEMBER},
	{"accrue", A | C | D | P, b_accrue, TALLY__V1__COMMAND__BODY_ACCRUE},
	{"redeem", A | M, b_redeem, TALLY__V1__COMMAND__BODY_REDEEM},
	{"hold", A | M, b_hold, TALLY__V1__COMMAND__BODY_HOLD},
	{"capture", A | M, b_capture, TALLY__V1__COMMAND__BODY_CAPTURE},
	{"void", A | M, b_void, TALLY__V1__COMMAND__BODY_VOID},
	{"reverse (redemption)", A | M, b_reverse_redemption, TALLY__V1__COMMAND__BODY_REVERSE},
	{"reverse (accrual)", A | C | D | P, b_reverse_accrual, TALLY__V1__COMMAND__BODY_REVERSE},
	{"transfer", A | M | C, b_transfer, TALLY__V1__COMMAND__BODY_TRANSFER},
	{"set_agreement", A, b_set_agreement, TALLY__V1__COMMAND__BODY_SET_AGREEMENT},
	{"exchange", A | P, b_exchange, TALLY__V1__COMMAND__BODY_EXCHANGE},
	{"settle", A | P, b_settle, TALLY__V1__COMMAND__BODY_SETTLE},
	{"confirm_settlement", A | P, b_confirm, TALLY__V1__COMMAND__BODY_CONFIRM_SETTLEMENT},
	{"adjust", A, b_adjust, TALLY__V1__COMMAND__BODY_ADJUST},
	{"expire", A | S, b_expire, TALLY__V1__COMMAND__BODY_EXPIRE},
	{"import_points", A, b_import, TALLY__V1__COMMAND__BODY_IMPORT_POINTS},
	{"set_rules", S, b_set_rules, TALLY__V1__COMMAND__BODY_SET_RULES},
};

#define N_ROWS (sizeof(matrix) / sizeof(matrix[0]))

static Tally__V1__Principal *role_key(struct fx *f, int i, const char *scope)
{
	char key[32];
	snprintf(key, sizeof(key), "key-%s", role_names[i]);
	return who(f, roles[i], key, scope);
}

/* Every role against one row: allowed cells apply (OK), denied cells are
 * PERMISSION_DENIED and leave the state and the journal as they were. */
static void check_row(const struct row *row)
{
	struct fx f;
	struct world w;
	fx_open(&f);
	world_setup(&f, &w);
	for (int i = 0; i < N_ROLES; i++) {
		bool allowed = (row->allowed & (1u << i)) != 0;
		struct snap before = snap_take(&f);
		Tally__V1__CommandResult *r = apply1(&f, row->build(&f, &w, role_key(&f, i, "*"), i));
		struct snap after = snap_take(&f);
		if (allowed && r->code != CODE(OK))
			fail_msg("%s by %s: allowed by the matrix, got %s: %s", row->name,
				 role_names[i], tally_result_name(r->code), r->message);
		if (!allowed && r->code != CODE(PERMISSION_DENIED))
			fail_msg("%s by %s: denied by the matrix, got %s: %s", row->name,
				 role_names[i], tally_result_name(r->code), r->message);
		/* expire journals what it expires, not itself: nothing is due here */
		if (allowed && r->entry_seq == 0 && row->body != TALLY__V1__COMMAND__BODY_EXPIRE)
			fail_msg("%s by %s: OK without a journal entry", row->name, role_names[i]);
		if (!allowed && !snap_equal(&before, &after))
			fail_msg("%s by %s: denied, yet the state or journal changed", row->name,
				 role_names[i]);
	}
	assert_invariants(&f);
	fx_close(&f);
}

#define ROW_TEST(fn, index)                                   \
	static void fn(void **state)                          \
	{                                                     \
		(void)state;                                  \
		assert_true((index) < N_ROWS);                \
		check_row(&matrix[(index)]);                  \
	}

ROW_TEST(test_matrix_register_brand_only_admin, 0)
ROW_TEST(test_matrix_update_brand_only_admin, 1)
ROW_TEST(test_matrix_open_member_by_every_writer_role, 2)
ROW_TEST(test_matrix_update_member_by_every_writer_role, 3)
ROW_TEST(test_matrix_accrue_by_admin_community_dealer_partner, 4)
ROW_TEST(test_matrix_redeem_by_admin_and_mall, 5)
ROW_TEST(test_matrix_hold_by_admin_and_mall, 6)
ROW_TEST(test_matrix_capture_by_admin_and_mall, 7)
ROW_TEST(test_matrix_void_by_admin_and_mall, 8)
ROW_TEST(test_matrix_reverse_redemption_by_admin_and_mall, 9)
ROW_TEST(test_matrix_reverse_accrual_by_admin_community_dealer_partner, 10)
ROW_TEST(test_matrix_transfer_by_admin_mall_community, 11)
ROW_TEST(test_matrix_set_agreement_only_admin, 12)
ROW_TEST(test_matrix_exchange_by_admin_and_partner, 13)
ROW_TEST(test_matrix_settle_by_admin_and_partner, 14)
ROW_TEST(test_matrix_confirm_settlement_by_admin_and_partner, 15)
ROW_TEST(test_matrix_adjust_only_admin, 16)
ROW_TEST(test_matrix_expire_by_admin_and_system, 17)
ROW_TEST(test_matrix_import_points_only_admin, 18)
ROW_TEST(test_matrix_set_rules_only_system, 19)

/* The early check exported for the RPC layer agrees with the matrix (reverse: the
 * union of its two rows, refined in apply). */
static void test_role_allows_agrees_with_the_matrix(void **state)
{
	(void)state;
	for (size_t r = 0; r < N_ROWS; r++) {
		unsigned mask = matrix[r].allowed;
		if (matrix[r].body == TALLY__V1__COMMAND__BODY_REVERSE)
			mask = A | M | C | D | P;
		for (int i = 0; i < N_ROLES; i++) {
			bool want = (mask & (1u << i)) != 0;
			if (tally_ledger_role_allows(roles[i], matrix[r].body) != want)
				fail_msg("tally_ledger_role_allows(%s, %s) != %d", role_names[i],
					 matrix[r].name, want);
		}
		assert_false(tally_ledger_role_allows(TALLY__V1__ROLE__ROLE_UNSPECIFIED, matrix[r].body));
		assert_false(tally_ledger_role_allows((Tally__V1__Role)42, matrix[r].body));
	}
	for (int i = 0; i < N_ROLES; i++)
		assert_false(tally_ledger_role_allows(roles[i], TALLY__V1__COMMAND__BODY__NOT_SET));
}

/* Queries: every role may read, within its scope. */
static void test_matrix_queries_by_every_role(void **state)
{
	(void)state;
	struct fx f;
	struct world w;
	fx_open(&f);
	world_setup(&f, &w);
	struct snap before = snap_take(&f);
	for (int i = 0; i < N_ROLES; i++) {
		Tally__V1__Principal *p = role_key(&f, i, "*");
		Tally__V1__Query q = TALLY__V1__QUERY__INIT;
		Tally__V1__GetBrand gb = TALLY__V1__GET_BRAND__INIT;
		Tally__V1__GetMember gm = TALLY__V1__GET_MEMBER__INIT;
		Tally__V1__GetEntry ge = TALLY__V1__GET_ENTRY__INIT;
		Tally__V1__GetAgreement ga = TALLY__V1__GET_AGREEMENT__INIT;
		Tally__V1__ListObligations lo = TALLY__V1__LIST_OBLIGATIONS__INIT;
		Tally__V1__ListSettlements ls = TALLY__V1__LIST_SETTLEMENTS__INIT;
		Tally__V1__GetDigest gd = TALLY__V1__GET_DIGEST__INIT;
		Tally__V1__GetConsistency gc = TALLY__V1__GET_CONSISTENCY__INIT;
		gb.id = (char *)"b1";
		gm.id = (char *)"m1";
		ge.seq = w.accruals[0];
		ge.proof = true;
		ga.from_brand = (char *)"b1";
		ga.to_brand = (char *)"b2";
		lo.brand_a = ls.brand_a = (char *)"b1";
		lo.brand_b = ls.brand_b = (char *)"b2";
		gc.old_size = 1;
		struct {
			const char *name;
			Tally__V1__Query__QCase qc;
		} qs[] = {
			{"GetBrand", TALLY__V1__QUERY__Q_BRAND},
			{"GetMember", TALLY__V1__QUERY__Q_MEMBER},
			{"GetEntry", TALLY__V1__QUERY__Q_ENTRY},
			{"GetAgreement", TALLY__V1__QUERY__Q_AGREEMENT},
			{"ListObligations", TALLY__V1__QUERY__Q_OBLIGATIONS},
			{"ListSettlements", TALLY__V1__QUERY__Q_SETTLEMENTS},
			{"GetDigest", TALLY__V1__QUERY__Q_DIGEST},
			{"GetConsistency", TALLY__V1__QUERY__Q_CONSISTENCY},
		};
		for (size_t k = 0; k < sizeof(qs) / sizeof(qs[0]); k++) {
			q.q_case = qs[k].qc;
			switch (qs[k].qc) {
			case TALLY__V1__QUERY__Q_BRAND: q.brand = &gb; break;
			case TALLY__V1__QUERY__Q_MEMBER: q.member = &gm; break;
			case TALLY__V1__QUERY__Q_ENTRY: q.entry = &ge; break;
			case TALLY__V1__QUERY__Q_AGREEMENT: q.agreement = &ga; break;
			case TALLY__V1__QUERY__Q_OBLIGATIONS: q.obligations = &lo; break;
			case TALLY__V1__QUERY__Q_SETTLEMENTS: q.settlements = &ls; break;
			case TALLY__V1__QUERY__Q_DIGEST: q.digest = &gd; break;
			case TALLY__V1__QUERY__Q_CONSISTENCY: q.consistency = &gc; break;
			default: fail();
			}
			Tally__V1__QueryResult *res = query(&f, &q, p);
			if (res->code != CODE(OK))
				fail_msg("query %s by %s: %s: %s", qs[k].name, role_names[i],
					 tally_result_name(res->code), res->message);
		}
		Tally__V1__QueryResult *res = q_accounts(&f, p, "b1", "m1");
		if (res->code != CODE(OK) || res->n_accounts != 1)
			fail_msg("GetAccounts by %s: %s", role_names[i], tally_result_name(res->code));
		assert_int_equal(res->accounts[0]->available, available(&f, "b1", "m1"));
		res = q_entries(&f, p, "", "");
		if (res->code != CODE(OK) || res->n_entries == 0)
			fail_msg("ListEntries by %s: %s", role_names[i], tally_result_name(res->code));
	}
	/* A principal without a valid role reads nothing. */
	Tally__V1__Principal *bad = who(&f, (Tally__V1__Role)42, "bad", "*");
	assert_int_equal(q_accounts(&f, bad, "b1", "m1")->code, CODE(PERMISSION_DENIED));
	bad = who(&f, TALLY__V1__ROLE__ROLE_UNSPECIFIED, "bad", "*");
	assert_int_equal(q_accounts(&f, bad, "b1", "m1")->code, CODE(PERMISSION_DENIED));
	struct snap after = snap_take(&f);
	assert_true(snap_equal(&before, &after));
	assert_invariants(&f);
	fx_close(&f);
}

/* ---- brand scope ---------------------------------------------------------------------- */

static void test_auditor_cannot_write_anything(void **state)
{
	(void)state;
	struct fx f;
	struct world w;
	fx_open(&f);
	world_setup(&f, &w);
	Tally__V1__Principal *auditor = who(&f, ROLE(AUDITOR), "audit", "*");
	for (size_t r = 0; r < N_ROWS; r++) {
		struct snap before = snap_take(&f);
		Tally__V1__CommandResult *res = apply1(&f, matrix[r].build(&f, &w, auditor, 0));
		struct snap after = snap_take(&f);
		if (res->code != CODE(PERMISSION_DENIED) || !snap_equal(&before, &after))
			fail_msg("auditor %s: %s", matrix[r].name, tally_result_name(res->code));
	}
	assert_invariants(&f);
	fx_close(&f);
}

/* An operator key runs the cluster (rpc/server.c) and nothing in the ledger. */
static void test_operator_runs_no_command_and_reads_nothing(void **state)
{
	(void)state;
	struct fx f;
	struct world w;
	fx_open(&f);
	world_setup(&f, &w);
	Tally__V1__Principal *op = who(&f, ROLE(OPERATOR), "ops", "*");
	for (size_t r = 0; r < N_ROWS; r++) {
		assert_false(tally_ledger_role_allows(ROLE(OPERATOR), matrix[r].body));
		struct snap before = snap_take(&f);
		Tally__V1__CommandResult *res = apply1(&f, matrix[r].build(&f, &w, op, 0));
		struct snap after = snap_take(&f);
		if (res->code != CODE(PERMISSION_DENIED) || !snap_equal(&before, &after))
			fail_msg("operator %s: %s", matrix[r].name, tally_result_name(res->code));
	}
	assert_int_equal(q_accounts(&f, op, "b1", "m1")->code, CODE(PERMISSION_DENIED));
	assert_invariants(&f);
	fx_close(&f);
}

/* A member is shared by every brand: one brand's key opens members but cannot change
 * one (its segment is what every brand sees); a key of scope * can. */
static void test_a_brand_scoped_key_cannot_change_a_shared_member(void **state)
{
	(void)state;
	struct fx f;
	struct world w;
	fx_open(&f);
	world_setup(&f, &w);
	const Tally__V1__Role writers[] = {ROLE(ADMIN), ROLE(MALL), ROLE(COMMUNITY), ROLE(DEALER),
					   ROLE(PARTNER)};
	for (size_t i = 0; i < sizeof(writers) / sizeof(writers[0]); i++) {
		Tally__V1__Principal *scoped = who(&f, writers[i], "scoped", "b1");
		expect_denied_unchanged(&f, c_update_member(&f, scoped, "m2"));
	}
	ok(&f, c_update_member(&f, who(&f, ROLE(DEALER), "global", "*"), "m2"));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_partner_scoped_to_b1_accrues_in_b1_but_not_in_b2(void **state)
{
	(void)state;
	struct fx f;
	struct world w;
	fx_open(&f);
	world_setup(&f, &w);
	Tally__V1__Principal *p = who(&f, ROLE(PARTNER), "p-b1", "b1");
	int64_t b1 = available(&f, "b1", "m2"), b2 = available(&f, "b2", "m2");
	expect_denied_unchanged(&f, c_accrue(&f, p, "b2", "m2", 50));
	ok(&f, c_accrue(&f, p, "b1", "m2", 50));
	assert_int_equal(available(&f, "b1", "m2"), b1 + 50);
	assert_int_equal(available(&f, "b2", "m2"), b2);
	/* Members are global: a scoped key opens them. */
	ok(&f, c_member(&f, p, "m9"));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_mall_scoped_to_b1_cannot_capture_or_void_a_hold_of_b2(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_brand(&f, "b1", 0);
	setup_brand(&f, "b2", 0);
	const char *ms[] = {"m1"};
	setup_members(&f, ms, 1);
	ok(&f, c_accrue(&f, admin(&f), "b1", "m1", 100));
	ok(&f, c_accrue(&f, admin(&f), "b2", "m1", 100));
	uint64_t h1 = ok(&f, c_hold(&f, admin(&f), "b1", "m1", 40, 0))->hold_id;
	uint64_t h2 = ok(&f, c_hold(&f, admin(&f), "b2", "m1", 40, 0))->hold_id;
	Tally__V1__Principal *mall = who(&f, ROLE(MALL), "mall-b1", "b1");
	expect_denied_unchanged(&f, c_capture(&f, mall, h2, 0));
	expect_denied_unchanged(&f, c_capture(&f, mall, h2, 10));
	expect_denied_unchanged(&f, c_void(&f, mall, h2));
	expect_denied_unchanged(&f, c_hold(&f, mall, "b2", "m1", 10, 0));
	expect_denied_unchanged(&f, c_redeem(&f, mall, "b2", "m1", 10));
	ok(&f, c_capture(&f, mall, h1, 0));
	Tally__V1__Account *a2 = account(&f, "b2", "m1");
	assert_int_equal(a2->held, 40);
	assert_int_equal(a2->available, 60);
	assert_int_equal(account(&f, "b1", "m1")->held, 0);
	/* The hold of b2 is still open for a key in scope. */
	ok(&f, c_void(&f, who(&f, ROLE(MALL), "mall-b2", "b2"), h2));
	assert_int_equal(available(&f, "b2", "m1"), 100);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_reverse_of_an_accrual_is_denied_to_mall_and_allowed_to_dealer(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_brand(&f, "b1", 0);
	const char *ms[] = {"m1"};
	setup_members(&f, ms, 1);
	Tally__V1__Principal *dealer = who(&f, ROLE(DEALER), "dealer", "b1");
	Tally__V1__Principal *mall = who(&f, ROLE(MALL), "mall", "*");
	uint64_t seq = ok(&f, c_accrue(&f, dealer, "b1", "m1", 300))->entry_seq;
	expect_denied_unchanged(&f, c_reverse(&f, mall, seq, 0));
	expect_denied_unchanged(&f, c_reverse(&f, mall, seq, 100));
	Tally__V1__CommandResult *r = ok(&f, c_reverse(&f, dealer, seq, 100));
	assert_int_equal(r->points, 100);
	assert_int_equal(available(&f, "b1", "m1"), 200);
	/* A dealer scoped to another brand may not. */
	expect_denied_unchanged(&f, c_reverse(&f, who(&f, ROLE(DEALER), "dealer2", "b2"), seq, 0));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_reverse_of_a_redemption_is_denied_to_dealer_and_allowed_to_mall(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	setup_brand(&f, "b1", 0);
	const char *ms[] = {"m1"};
	setup_members(&f, ms, 1);
	Tally__V1__Principal *dealer = who(&f, ROLE(DEALER), "dealer", "*");
	Tally__V1__Principal *mall = who(&f, ROLE(MALL), "mall", "b1");
	ok(&f, c_accrue(&f, dealer, "b1", "m1", 300));
	uint64_t seq = ok(&f, c_redeem(&f, mall, "b1", "m1", 200))->entry_seq;
	expect_denied_unchanged(&f, c_reverse(&f, dealer, seq, 0));
	expect_denied_unchanged(&f, c_reverse(&f, who(&f, ROLE(COMMUNITY), "comm", "*"), seq, 0));
	expect_denied_unchanged(&f, c_reverse(&f, who(&f, ROLE(PARTNER), "partner", "*"), seq, 0));
	/* A capture is a redemption too. */
	uint64_t hold = ok(&f, c_hold(&f, mall, "b1", "m1", 50, 0))->hold_id;
	uint64_t cap = ok(&f, c_capture(&f, mall, hold, 0))->entry_seq;
	expect_denied_unchanged(&f, c_reverse(&f, dealer, cap, 0));
	ok(&f, c_reverse(&f, mall, seq, 0));
	ok(&f, c_reverse(&f, mall, cap, 0));
	assert_int_equal(available(&f, "b1", "m1"), 300);
	assert_invariants(&f);
	fx_close(&f);
}

static void test_brand_scope_applies_to_every_brand_a_command_touches(void **state)
{
	(void)state;
	struct fx f;
	struct world w;
	fx_open(&f);
	world_setup(&f, &w);
	setup_brand(&f, "b3", 0);
	Tally__V1__Principal *admin_b1 = who(&f, ROLE(ADMIN), "admin-b1", "b1");
	Tally__V1__Principal *partner_b2 = who(&f, ROLE(PARTNER), "p-b2", "b2");
	Tally__V1__Principal *partner_b3 = who(&f, ROLE(PARTNER), "p-b3", "b3");
	Tally__V1__Principal *mall_b1 = who(&f, ROLE(MALL), "mall-b1", "b1");
	/* Brands. */
	expect_denied_unchanged(&f, c_brand(&f, admin_b1, "b9", 0));
	expect_denied_unchanged(&f, c_update_brand(&f, admin_b1, "b2"));
	ok(&f, c_update_brand(&f, admin_b1, "b1"));
	/* One-brand commands. */
	expect_denied_unchanged(&f, c_adjust(&f, admin_b1, "b2", "m1", 5, "fix"));
	expect_denied_unchanged(&f, c_transfer(&f, mall_b1, "b2", "m1", "m2", 5));
	ok(&f, c_transfer(&f, mall_b1, "b1", "m1", "m2", 5));
	/* An admin needs both brands of an agreement, an exchange and a settlement. */
	expect_denied_unchanged(&f, c_agreement(&f, admin_b1, "b1", "b2", 1, 1));
	expect_denied_unchanged(&f, c_exchange(&f, admin_b1, "b1", "b2", "m1", 5));
	expect_denied_unchanged(&f, c_settle(&f, admin_b1, "b1", "b2", f.now_ms - 1));
	/* A partner needs one of the two; a third brand's partner has none. */
	expect_denied_unchanged(&f, c_exchange(&f, partner_b3, "b1", "b2", "m1", 5));
	expect_denied_unchanged(&f, c_settle(&f, partner_b3, "b1", "b2", f.now_ms - 1));
	expect_denied_unchanged(&f, c_confirm(&f, partner_b3, w.settlements[0]));
	ok(&f, c_exchange(&f, partner_b2, "b1", "b2", "m1", 5));
	ok(&f, c_settle(&f, partner_b2, "b1", "b2", f.now_ms - 1));
	assert_invariants(&f);
	fx_close(&f);
}

/* ---- query scope ---------------------------------------------------------------------- */

static void test_auditor_reads_balances_of_every_brand(void **state)
{
	(void)state;
	struct fx f;
	struct world w;
	fx_open(&f);
	world_setup(&f, &w);
	Tally__V1__Principal *auditor = who(&f, ROLE(AUDITOR), "audit", "*");
	const char *brands[] = {"b1", "b2"};
	for (int i = 0; i < 2; i++) {
		Tally__V1__QueryResult *res = q_accounts(&f, auditor, brands[i], "m1");
		assert_int_equal(res->code, CODE(OK));
		assert_int_equal(res->n_accounts, 1);
		assert_int_equal(res->accounts[0]->available, available(&f, brands[i], "m1"));
		assert_true(res->accounts[0]->available > 0);
	}
	/* A scoped auditor reads its own brand only. */
	Tally__V1__Principal *a1 = who(&f, ROLE(AUDITOR), "audit-b1", "b1");
	assert_int_equal(q_accounts(&f, a1, "b1", "m1")->code, CODE(OK));
	assert_int_equal(q_accounts(&f, a1, "b2", "m1")->code, CODE(PERMISSION_DENIED));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_key_scoped_to_b1_cannot_read_b2(void **state)
{
	(void)state;
	struct fx f;
	struct world w;
	fx_open(&f);
	world_setup(&f, &w);
	Tally__V1__Principal *mall = who(&f, ROLE(MALL), "mall-b1", "b1");
	Tally__V1__QueryResult *res = q_accounts(&f, mall, "b2", "m1");
	assert_int_equal(res->code, CODE(PERMISSION_DENIED));
	assert_int_equal(res->n_accounts, 0);
	res = q_accounts(&f, mall, "b1", "m1");
	assert_int_equal(res->code, CODE(OK));
	assert_int_equal(res->n_accounts, 1);
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetBrand gb = TALLY__V1__GET_BRAND__INIT;
	gb.id = (char *)"b2";
	q.q_case = TALLY__V1__QUERY__Q_BRAND;
	q.brand = &gb;
	res = query(&f, &q, mall);
	assert_int_equal(res->code, CODE(PERMISSION_DENIED));
	assert_null(res->brand);
	/* An entry of b2 alone (its accrual) is out of reach too. */
	Tally__V1__CommandResult *r = ok(&f, c_accrue(&f, admin(&f), "b2", "m2", 5));
	Tally__V1__GetEntry ge = TALLY__V1__GET_ENTRY__INIT;
	ge.seq = r->entry_seq;
	q.q_case = TALLY__V1__QUERY__Q_ENTRY;
	q.entry = &ge;
	res = query(&f, &q, mall);
	assert_int_equal(res->code, CODE(PERMISSION_DENIED));
	assert_null(res->entry);
	ge.seq = w.accruals[0]; /* an accrual of b1 */
	res = query(&f, &q, mall);
	assert_int_equal(res->code, CODE(OK));
	assert_non_null(res->entry);
	/* Settlements without a pair: only those of the key's brands. */
	Tally__V1__ListSettlements ls = TALLY__V1__LIST_SETTLEMENTS__INIT;
	q.q_case = TALLY__V1__QUERY__Q_SETTLEMENTS;
	q.settlements = &ls;
	assert_int_equal(query(&f, &q, mall)->n_settlements, PER_ROLE);
	res = query(&f, &q, who(&f, ROLE(PARTNER), "p-b3", "b3"));
	assert_int_equal(res->code, CODE(OK));
	assert_int_equal(res->n_settlements, 0);
	ls.brand_a = (char *)"b1";
	ls.brand_b = (char *)"b2";
	assert_int_equal(query(&f, &q, who(&f, ROLE(PARTNER), "p-b3", "b3"))->code,
			 CODE(PERMISSION_DENIED));
	Tally__V1__ListObligations lo = TALLY__V1__LIST_OBLIGATIONS__INIT;
	lo.brand_a = (char *)"b2";
	lo.brand_b = (char *)"b3";
	q.q_case = TALLY__V1__QUERY__Q_OBLIGATIONS;
	q.obligations = &lo;
	assert_int_equal(query(&f, &q, mall)->code, CODE(PERMISSION_DENIED));
	assert_invariants(&f);
	fx_close(&f);
}

static void test_scoped_key_cannot_list_all_entries_without_a_brand_filter(void **state)
{
	(void)state;
	struct fx f;
	struct world w;
	fx_open(&f);
	world_setup(&f, &w);
	Tally__V1__Principal *p = who(&f, ROLE(PARTNER), "p-b1", "b1");
	Tally__V1__QueryResult *res = q_entries(&f, p, "", "");
	assert_int_equal(res->code, CODE(PERMISSION_DENIED));
	assert_int_equal(res->n_entries, 0);
	res = q_entries(&f, p, "", "m1"); /* a member filter alone spans brands */
	assert_int_equal(res->code, CODE(PERMISSION_DENIED));
	assert_int_equal(res->n_entries, 0);
	res = q_entries(&f, p, "b2", "");
	assert_int_equal(res->code, CODE(PERMISSION_DENIED));
	assert_int_equal(res->n_entries, 0);
	/* With its brand it lists exactly the entries touching b1. */
	res = q_entries(&f, p, "b1", "");
	assert_int_equal(res->code, CODE(OK));
	assert_true(res->n_entries > 0);
	for (size_t i = 0; i < res->n_entries; i++) {
		Tally__V1__Entry *e = entry_at(&f, res->entries[i]->seq);
		bool touches = strcmp(e->brand, "b1") == 0;
		for (size_t k = 0; k < e->n_postings; k++)
			touches = touches || strcmp(e->postings[k]->brand, "b1") == 0;
		assert_true(touches);
	}
	/* An all-brand key lists everything. */
	res = q_entries(&f, who(&f, ROLE(AUDITOR), "audit", "*"), "", "");
	assert_int_equal(res->code, CODE(OK));
	struct snap s = snap_take(&f);
	assert_int_equal(res->n_entries, s.size);
	assert_invariants(&f);
	fx_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_matrix_register_brand_only_admin),
		cmocka_unit_test(test_matrix_update_brand_only_admin),
		cmocka_unit_test(test_matrix_open_member_by_every_writer_role),
		cmocka_unit_test(test_matrix_update_member_by_every_writer_role),
		cmocka_unit_test(test_operator_runs_no_command_and_reads_nothing),
		cmocka_unit_test(test_a_brand_scoped_key_cannot_change_a_shared_member),
		cmocka_unit_test(test_matrix_accrue_by_admin_community_dealer_partner),
		cmocka_unit_test(test_matrix_redeem_by_admin_and_mall),
		cmocka_unit_test(test_matrix_hold_by_admin_and_mall),
		cmocka_unit_test(test_matrix_capture_by_admin_and_mall),
		cmocka_unit_test(test_matrix_void_by_admin_and_mall),
		cmocka_unit_test(test_matrix_reverse_redemption_by_admin_and_mall),
		cmocka_unit_test(test_matrix_reverse_accrual_by_admin_community_dealer_partner),
		cmocka_unit_test(test_matrix_transfer_by_admin_mall_community),
		cmocka_unit_test(test_matrix_set_agreement_only_admin),
		cmocka_unit_test(test_matrix_exchange_by_admin_and_partner),
		cmocka_unit_test(test_matrix_settle_by_admin_and_partner),
		cmocka_unit_test(test_matrix_confirm_settlement_by_admin_and_partner),
		cmocka_unit_test(test_matrix_adjust_only_admin),
		cmocka_unit_test(test_matrix_expire_by_admin_and_system),
		cmocka_unit_test(test_matrix_import_points_only_admin),
		cmocka_unit_test(test_matrix_set_rules_only_system),
		cmocka_unit_test(test_role_allows_agrees_with_the_matrix),
		cmocka_unit_test(test_matrix_queries_by_every_role),
		cmocka_unit_test(test_auditor_cannot_write_anything),
		cmocka_unit_test(test_partner_scoped_to_b1_accrues_in_b1_but_not_in_b2),
		cmocka_unit_test(test_mall_scoped_to_b1_cannot_capture_or_void_a_hold_of_b2),
		cmocka_unit_test(test_reverse_of_an_accrual_is_denied_to_mall_and_allowed_to_dealer),
		cmocka_unit_test(test_reverse_of_a_redemption_is_denied_to_dealer_and_allowed_to_mall),
		cmocka_unit_test(test_brand_scope_applies_to_every_brand_a_command_touches),
		cmocka_unit_test(test_auditor_reads_balances_of_every_brand),
		cmocka_unit_test(test_key_scoped_to_b1_cannot_read_b2),
		cmocka_unit_test(test_scoped_key_cannot_list_all_entries_without_a_brand_filter),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
