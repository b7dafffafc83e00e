/*
 * ledger-demo: one realistic story told through the ledger library, then the
 * journal, the balances and an auditor's verification.
 *
 * Aurora (a car maker) and Borealis (a partner brand) run points programs. Owners
 * and fans join; a dealer awards service points; the community awards check-ins;
 * the mall holds, captures and partly refunds an order; a member gifts points to
 * family; points are exchanged across brands; the brands settle; two years pass and
 * the unused points expire. An auditor then replays nothing but the journal bytes.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ledger/ledger.h"
#include "ledger/merkle.h"

#define DAY_MS 86400000LL

static struct tally_ledger *ledger;
static struct tally_arena arena, out;
static uint64_t raft_index;
static int64_t now_ms = 1767258000000LL; /* 2026-01-01 09:00 UTC */
static unsigned request;

static Tally__V1__Principal *principal(const char *key, Tally__V1__Role role, const char *brand)
{
	Tally__V1__Principal *p = tally_arena_zalloc(&arena, sizeof(*p));
	tally__v1__principal__init(p);
	p->key_name = (char *)key;
	p->role = role;
	p->brands = tally_arena_alloc(&arena, sizeof(char *));
	p->brands[0] = (char *)brand;
	p->n_brands = 1;
	return p;
}

static Tally__V1__Command *command(const Tally__V1__Principal *p)
{
	Tally__V1__Command *c = tally_arena_zalloc(&arena, sizeof(*c));
	tally__v1__command__init(c);
	char buf[32];
	snprintf(buf, sizeof(buf), "demo-%u", ++request);
	c->request_id = tally_arena_strdup(&arena, buf);
	c->principal = (Tally__V1__Principal *)p;
	return c;
}

#define BODY(c, field, type, CASE)                                          \
	type *m = tally_arena_zalloc(&arena, sizeof(type));                 \
	(c)->body_case = TALLY__V1__COMMAND__BODY_##CASE;                   \
	(c)->field = m

/* Applies one command as its own batch and narrates the outcome. */
static Tally__V1__CommandResult *run(Tally__V1__Command *c, const char *story, ...)
{
	Tally__V1__Batch b = TALLY__V1__BATCH__INIT;
	b.raft_index = ++raft_index;
	b.raft_term = 1;
	b.time_ms = now_ms;
	b.commands = &c;
	b.n_commands = 1;
	Tally__V1__CommandResult **rs;
	bool skipped;
	int rc = tally_ledger_apply_batch(ledger, &b, &out, &rs, &skipped);
	if (rc != 0) {
		fprintf(stderr, "apply failed: %s\n", tally_strerror(rc));
		exit(1);
	}
	va_list ap;
	va_start(ap, story);
	printf("  ");
	vprintf(story, ap);
	va_end(ap);
	if (rs[0]->code == TALLY__V1__RESULT_CODE__OK && rs[0]->entry_seq == 0)
		printf("  -> ok\n");
	else if (rs[0]->code == TALLY__V1__RESULT_CODE__OK)
		printf("  -> ok, entry %llu\n", (unsigned long long)rs[0]->entry_seq);
	else
		printf("  -> %s: %s\n", tally_result_name(rs[0]->code), rs[0]->message);
	return rs[0];
}

static void brand(const Tally__V1__Principal *p, const char *id, const char *name,
		  uint32_t months)
{
	Tally__V1__Command *c = command(p);
	BODY(c, register_brand, Tally__V1__RegisterBrand, REGISTER_BRAND);
	tally__v1__register_brand__init(m);
	static Tally__V1__Tier silver = TALLY__V1__TIER__INIT, gold = TALLY__V1__TIER__INIT;
	static Tally__V1__Tier *tiers[2] = {&silver, &gold};
	silver.name = (char *)"silver";
	silver.min_points = 5000;
	gold.name = (char *)"gold";
	gold.min_points = 20000;
	m->id = (char *)id;
	m->name = (char *)name;
	m->currency = (char *)"EUR";
	m->point_value_micros = 10000;
	m->expiry_months = months;
	m->tiers = tiers;
	m->n_tiers = 2;
	m->tier_window_days = 365;
	m->community_daily_cap_points = 500;
	m->transfer_max_points = 10000;
	run(c, "register brand %-10s (points expire after %u months, tiers silver/gold)", id, months);
}

static void member(const Tally__V1__Principal *p, const char *id, Tally__V1__Segment seg)
{
	Tally__V1__Command *c = command(p);
	BODY(c, open_member, Tally__V1__OpenMember, OPEN_MEMBER);
	tally__v1__open_member__init(m);
	m->id = (char *)id;
	m->segment = seg;
	run(c, "open member %-8s", id);
}

static Tally__V1__CommandResult *accrue(const Tally__V1__Principal *p, const char *b,
					const char *mem, int64_t pts, const char *why)
{
	Tally__V1__Command *c = command(p);
	BODY(c, accrue, Tally__V1__Accrue, ACCRUE);
	tally__v1__accrue__init(m);
	m->brand = (char *)b;
	m->member = (char *)mem;
	m->points = pts;
	m->reason = (char *)why;
	return run(c, "%-9s accrues %6lld %s points to %-6s for %s", p->key_name,
		   (long long)pts, b, mem, why);
}

static void print_account(const char *b, const char *mem)
{
	Tally__V1__Account *a = NULL;
	tally_ledger_account(ledger, b, mem, true, &arena, &a);
	printf("  %-9s %-6s available %7lld  held %5lld  earned %7lld  redeemed %6lld  "
	       "expired %6lld  tier %s\n", b, mem, (long long)a->available, (long long)a->held,
	       (long long)a->earned, (long long)a->redeemed, (long long)a->expired,
	       a->tier[0] ? a->tier : "-");
}

static void print_settlements(const Tally__V1__Principal *auditor)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__ListSettlements ls = TALLY__V1__LIST_SETTLEMENTS__INIT;
	q.q_case = TALLY__V1__QUERY__Q_SETTLEMENTS;
	q.settlements = &ls;
	Tally__V1__QueryResult *res;
	tally_ledger_query(ledger, &q, auditor, &arena, &res);
	for (size_t i = 0; i < res->n_settlements; i++) {
		const Tally__V1__Settlement *s = res->settlements[i];
		printf("  settlement %llu: %lld exchange(s); %s owes %s %lld.%06lld EUR net; "
		       "journal root at cut-off (size %llu) %02x%02x%02x%02x...; %s\n",
		       (unsigned long long)s->id, (long long)s->count, s->payer, s->payee,
		       (long long)(s->net_micros / 1000000), (long long)(s->net_micros % 1000000),
		       (unsigned long long)s->tree_size, s->merkle_root.data[0],
		       s->merkle_root.data[1], s->merkle_root.data[2], s->merkle_root.data[3],
		       s->confirmed ? "confirmed" : "unconfirmed");
	}
}

static const char *kind_name(const Tally__V1__Entry *e)
{
	if (e->kind == TALLY__V1__ENTRY_KIND__LOT_EXPIRED)
		return "lot_expired";
	if (e->kind == TALLY__V1__ENTRY_KIND__HOLD_RELEASED)
		return "hold_released";
	const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(
		&tally__v1__command__descriptor, (unsigned)e->command->body_case);
	return f != NULL ? f->name : "?";
}

static const char *account_name(const Tally__V1__Posting *p, char *buf, size_t n)
{
	static const char *const sys[] = {"member", "issuance", "redeemed", "expired",
					  "clearing", "adjustment"};
	if (p->account == TALLY__V1__SYSTEM_ACCOUNT__MEMBER)
		snprintf(buf, n, "%s/%s%s", p->brand, p->member,
			 p->bucket == TALLY__V1__BUCKET__HELD ? "(held)" : "");
	else
		snprintf(buf, n, "%s/%s%s%s", p->brand, sys[p->account],
			 p->partner[0] ? ":" : "", p->partner);
	return buf;
}

/* The auditor's part: read the journal, check every leaf against the root. */
static void audit(const Tally__V1__Principal *auditor)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__ListEntries le = TALLY__V1__LIST_ENTRIES__INIT;
	le.limit = 1000;
	q.q_case = TALLY__V1__QUERY__Q_ENTRIES;
	q.entries = &le;
	Tally__V1__QueryResult *res;
	tally_ledger_query(ledger, &q, auditor, &arena, &res);
	struct tally_digest d;
	tally_ledger_digest(ledger, &d);
	printf("\nJournal (%zu entries; each line: seq, time, what, postings)\n", res->n_entries);
	for (size_t i = 0; i < res->n_entries; i++) {
		const Tally__V1__StoredEntry *se = res->entries[i];
		Tally__V1__Entry *e = tally__v1__entry__unpack(tally_arena_protobuf(&arena),
							       se->entry.len, se->entry.data);
		time_t t = (time_t)(e->time_ms / 1000);
		char when[32], acc[96];
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M", gmtime(&t));
		printf("  %3llu  %s  %-18s", (unsigned long long)e->seq, when, kind_name(e));
		for (size_t p = 0; p < e->n_postings; p++)
			printf(" %s%+lld", account_name(e->postings[p], acc, sizeof(acc)),
			       (long long)e->postings[p]->points);
		printf("\n");
	}
	char msg[256];
	int rc = tally_ledger_check_invariants(ledger, msg, sizeof(msg));
	printf("\nAuditor: journal root ");
	for (int i = 0; i < 32; i++)
		printf("%02x", d.root[i]);
	printf("\n         state digest ");
	for (int i = 0; i < 32; i++)
		printf("%02x", d.state_digest[i]);
	printf("\n         check_invariants: %s\n", rc == 0 ? "books balance, root and digest recomputed" : msg);

	/* Verify one entry as an outside auditor would: bytes → leaf → proof → root. */
	Tally__V1__GetEntry ge = TALLY__V1__GET_ENTRY__INIT;
	ge.seq = d.tree_size / 2;
	ge.proof = true;
	q.q_case = TALLY__V1__QUERY__Q_ENTRY;
	q.entry = &ge;
	tally_ledger_query(ledger, &q, auditor, &arena, &res);
	uint8_t leaf[32], path[TALLY_MERKLE_PROOF_MAX][32];
	tally_merkle_leaf_hash(res->entry->entry.data, res->entry->entry.len, leaf);
	for (size_t i = 0; i < res->proof->n_path; i++)
		memcpy(path[i], res->proof->path[i].data, 32);
	rc = tally_merkle_verify_inclusion(leaf, res->proof->index, res->proof->tree_size,
					   (const uint8_t(*)[32])path, res->proof->n_path, d.root);
	printf("         inclusion proof of entry %llu (%zu hashes): %s\n",
	       (unsigned long long)ge.seq, res->proof->n_path, rc == 0 ? "verified" : "FAILED");
}

/* Who signs the story's commands. */
struct cast {
	Tally__V1__Principal *admin, *dealer, *community, *mall, *partner, *auditor;
};

static void day_one(const struct cast *k)
{
	printf("Day 1: programs and members\n");
	brand(k->admin, "aurora", "Aurora Motors", 24);
	brand(k->admin, "borealis", "Borealis Energy", 12);
	Tally__V1__Command *c = command(k->admin);
	{
		BODY(c, set_agreement, Tally__V1__SetAgreement, SET_AGREEMENT);
		tally__v1__set_agreement__init(m);
		m->from_brand = (char *)"aurora";
		m->to_brand = (char *)"borealis";
		m->rate_num = 1;
		m->rate_den = 2;
		m->min_points = 100;
		m->daily_cap_points = 5000;
		m->price_micros = 4000;
		m->active = true;
	}
	run(c, "agreement aurora -> borealis at 1/2, min 100, daily cap 5000, 0.004 EUR/point");
	member(k->admin, "alice", TALLY__V1__SEGMENT__OWNER_PASSENGER);
	member(k->admin, "bob", TALLY__V1__SEGMENT__FAN);
	member(k->admin, "carol", TALLY__V1__SEGMENT__OWNER_PASSENGER);
}

static void week_one(const struct cast *k)
{
	printf("\nWeek 1: earning\n");
	accrue(k->dealer, "aurora", "alice", 18000, "vehicle purchase");
	now_ms += 2 * DAY_MS;
	accrue(k->dealer, "aurora", "alice", 2500, "first service");
	accrue(k->community, "aurora", "bob", 300, "event check-in");
	accrue(k->community, "aurora", "bob", 250, "referral (over the daily cap of 500)");
	accrue(principal("dealer-2", TALLY__V1__ROLE__DEALER, "aurora"), "borealis", "bob", 100,
	       "scope test (must be refused)");
}

static void week_two(const struct cast *k)
{
	printf("\nWeek 2: the mall\n");
	now_ms += 5 * DAY_MS;
	Tally__V1__Command *c = command(k->mall);
	{
		BODY(c, hold, Tally__V1__Hold, HOLD);
		tally__v1__hold__init(m);
		m->brand = (char *)"aurora";
		m->member = (char *)"alice";
		m->points = 1500;
		m->timeout_s = 7 * 86400;
		m->reference = (char *)"order-8812";
	}
	uint64_t hold = run(c, "mall holds 1500 points of alice for order-8812")->hold_id;
	now_ms += DAY_MS;
	c = command(k->mall);
	{
		BODY(c, capture, Tally__V1__Capture, CAPTURE);
		tally__v1__capture__init(m);
		m->hold_id = hold;
		m->points = 1200;
	}
	uint64_t capture = run(c, "mall captures 1200 at shipment (300 return)")->entry_seq;
	now_ms += 3 * DAY_MS;
	c = command(k->mall);
	{
		BODY(c, reverse, Tally__V1__Reverse, REVERSE);
		tally__v1__reverse__init(m);
		m->entry_seq = capture;
		m->points = 400;
		m->reason = (char *)"item returned";
	}
	run(c, "mall refunds 400 of the capture (a returned item)");
}

static void week_three(const struct cast *k)
{
	printf("\nWeek 3: family and partners\n");
	Tally__V1__Command *c = command(k->mall);
	{
		BODY(c, transfer, Tally__V1__Transfer, TRANSFER);
		tally__v1__transfer__init(m);
		m->brand = (char *)"aurora";
		m->from_member = (char *)"alice";
		m->to_member = (char *)"carol";
		m->points = 1000;
		m->reason = (char *)"family pooling";
	}
	run(c, "alice gives 1000 aurora points to carol");
	c = command(k->partner);
	{
		BODY(c, exchange, Tally__V1__Exchange, EXCHANGE);
		tally__v1__exchange__init(m);
		m->from_brand = (char *)"aurora";
		m->to_brand = (char *)"borealis";
		m->member = (char *)"alice";
		m->points = 3001;
	}
	run(c, "alice exchanges 3001 aurora points into borealis points (floor 1/2 = 1500)");
	int64_t cutoff = now_ms;
	now_ms += DAY_MS;
	c = command(k->partner);
	{
		BODY(c, settle, Tally__V1__Settle, SETTLE);
		tally__v1__settle__init(m);
		m->brand_a = (char *)"aurora";
		m->brand_b = (char *)"borealis";
		m->until_ms = cutoff;
	}
	uint64_t settlement = run(c, "partner settles aurora/borealis up to yesterday")->settlement_id;
	c = command(k->partner);
	{
		BODY(c, confirm_settlement, Tally__V1__ConfirmSettlement, CONFIRM_SETTLEMENT);
		tally__v1__confirm_settlement__init(m);
		m->settlement_id = settlement;
	}
	run(c, "borealis (the payee) confirms settlement %llu", (unsigned long long)settlement);
	print_settlements(k->auditor);
}

static void balances_now(void)
{
	print_account("aurora", "alice");
	print_account("aurora", "bob");
	print_account("aurora", "carol");
	print_account("borealis", "alice");
}

static void two_years_later(void)
{
	printf("\nTwo years and a month later: the leader's timer runs expire\n");
	now_ms += (365 + 366 + 31) * DAY_MS;
	Tally__V1__Command *c = command(principal("tally-system", TALLY__V1__ROLE__SYSTEM, "*"));
	{
		BODY(c, expire, Tally__V1__Expire, EXPIRE);
		tally__v1__expire__init(m);
	}
	Tally__V1__CommandResult *r = run(c, "expire");
	printf("  (%lld lots and windows handled)\n", (long long)r->count);
	balances_now();
}

int main(int argc, char **argv)
{
	char tmpl[] = "/tmp/tally-demo-XXXXXX";
	const char *dir = argc > 1 ? argv[1] : mkdtemp(tmpl);
	struct tally_ledger_options o = {.map_size_bytes = 1ULL << 30, .nosync = true};
	if (dir == NULL || tally_ledger_open(dir, &o, &ledger) != 0) {
		fprintf(stderr, "cannot open a ledger in %s\n", dir ? dir : "(mkdtemp failed)");
		return 1;
	}
	tally_arena_init(&arena, 64 << 10, 0);
	tally_arena_init(&out, 64 << 10, 0);
	struct cast k = {
		.admin = principal("ops-admin", TALLY__V1__ROLE__ADMIN, "*"),
		.dealer = principal("dealer-17", TALLY__V1__ROLE__DEALER, "aurora"),
		.community = principal("community", TALLY__V1__ROLE__COMMUNITY, "aurora"),
		.mall = principal("mall", TALLY__V1__ROLE__MALL, "aurora"),
		.partner = principal("partner-borealis", TALLY__V1__ROLE__PARTNER, "borealis"),
		.auditor = principal("auditor", TALLY__V1__ROLE__AUDITOR, "*"),
	};
	printf("Tally ledger demo (the state machine as a library, one replica; data in %s)\n\n", dir);
	day_one(&k);
	week_one(&k);
	week_two(&k);
	week_three(&k);
	printf("\nBalances after three weeks\n");
	balances_now();
	two_years_later();
	audit(k.auditor);
	tally_ledger_close(ledger);
	tally_arena_free(&arena);
	tally_arena_free(&out);
	if (argc <= 1) { /* our own temporary directory: leave nothing behind */
		char cmd[256];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dir);
	}
	return 0;
}
