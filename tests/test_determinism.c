/*
 * Determinism and durability: the same commands reach the same state whatever the
 * batch split, a snapshot restores to the same digest and keeps pace, and the books
 * balance after every batch of a long random run.
 *
 * The workload is generated adaptively (captures name holds that exist, reversals
 * name entries that exist) during a first run, recorded, and replayed with another
 * split. Time advances only at epoch boundaries that every split respects, because a
 * batch has one timestamp.
 */
#include "ledger/internal.h"
#include "tests/util.h"

#include <fcntl.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MEMBERS 400
#define EPOCH_COMMANDS 1000
#define BUSY_BATCH_MAX 12
#define BRANDS 3

static const char *const brand_ids[BRANDS] = {"aurora", "borealis", "cygnus"};

struct rng {
	uint64_t s;
};

static uint64_t rnd(struct rng *r)
{
	/* xorshift64*: deterministic across platforms */
	r->s ^= r->s >> 12;
	r->s ^= r->s << 25;
	r->s ^= r->s >> 27;
	return r->s * 2685821657736338717ULL;
}

static uint64_t below(struct rng *r, uint64_t n)
{
	return rnd(r) % n;
}

struct workload {
	struct fx *f;
	struct rng rng;
	Tally__V1__Principal *roles[4]; /* admin, mall, dealer, partner */
	Tally__V1__Command **cmds;      /* everything generated, in order */
	size_t n;
	size_t cap;
	uint64_t holds[256];            /* recent hold ids */
	size_t n_holds;
	uint64_t entries[256];          /* recent accrual/redemption entries */
	size_t n_entries;
	unsigned members_open;
	/* A busy run: under these rules (0: the first), this many members (0: MEMBERS / 2),
	 * half the commands accruals, batches of 1 to BUSY_BATCH_MAX commands and every
	 * batch at its own minute of the epoch, so that accounts gather a lot per batch
	 * instead of one per epoch. */
	uint32_t rules;
	unsigned members;
	size_t most_lots;               /* a busy run: the most lots an account held */
	size_t *batch_ends;             /* where each generated batch ended */
	size_t n_batches;
};

static void push_cmd(struct workload *w, Tally__V1__Command *c)
{
	if (w->n == w->cap) {
		w->cap = w->cap == 0 ? 1024 : w->cap * 2;
		w->cmds = realloc(w->cmds, w->cap * sizeof(*w->cmds));
		assert_non_null(w->cmds);
	}
	w->cmds[w->n++] = c;
}

static const char *member_name(struct workload *w, unsigned i)
{
	char buf[32];
	snprintf(buf, sizeof(buf), "member-%04u", i);
	return tally_arena_strdup(&w->f->build, buf);
}

static const char *any_member(struct workload *w)
{
	/* A few ids past the open ones exercise UNKNOWN_MEMBER (one in a busy run). */
	return member_name(w, (unsigned)below(&w->rng, w->members_open + (w->members > 0 ? 1 : 3)));
}

static const char *any_brand(struct workload *w)
{
	return brand_ids[below(&w->rng, BRANDS)];
}

static Tally__V1__Command *tiered_brand(struct fx *f, const char *id, uint32_t months)
{
	Tally__V1__Command *c = c_brand(f, admin(f), id, months);
	Tally__V1__RegisterBrand *b = c->register_brand;
	static Tally__V1__Tier silver = TALLY__V1__TIER__INIT, gold = TALLY__V1__TIER__INIT;
	static Tally__V1__Tier *tiers[2] = {&silver, &gold};
	silver.name = (char *)"silver";
	silver.min_points = 2000;
	gold.name = (char *)"gold";
	gold.min_points = 10000;
	b->tiers = tiers;
	b->n_tiers = 2;
	b->tier_window_days = 30;
	b->transfer_max_points = 5000;
	b->transfer_daily_cap_points = 8000;
	b->community_daily_cap_points = 3000;
	return c;
}

/* Brands, agreements and members: the fixed start of every run. */
static void setup_commands(struct workload *w)
{
	struct fx *f = w->f;
	if (w->rules > TALLY_RULES_FIRST)
		push_cmd(w, c_set_rules(f, w->rules));
	push_cmd(w, tiered_brand(f, "aurora", 1));
	push_cmd(w, c_brand(f, admin(f), "borealis", 0));
	push_cmd(w, tiered_brand(f, "cygnus", 12));
	for (int i = 0; i < BRANDS; i++) {
		Tally__V1__Command *c = c_agreement(f, admin(f), brand_ids[i],
						    brand_ids[(i + 1) % BRANDS], 3 + i, 7);
		c->set_agreement->daily_cap_points = 20000;
		push_cmd(w, c);
	}
	w->members_open = w->members > 0 ? w->members : MEMBERS / 2;
	for (unsigned i = 0; i < w->members_open; i++)
		push_cmd(w, c_member(f, admin(f), member_name(w, i)));
}

static void remember(uint64_t *ring, size_t *n, uint64_t v)
{
	ring[*n % 256] = v;
	(*n)++;
}

static uint64_t recall(struct workload *w, const uint64_t *ring, size_t n)
{
	if (n == 0)
		return 1 + below(&w->rng, 50);
	size_t live = n < 256 ? n : 256;
	return ring[below(&w->rng, live)];
}

static Tally__V1__Command *random_points_command(struct workload *w, unsigned dice)
{
	struct fx *f = w->f;
	int64_t pts = 1 + (int64_t)below(&w->rng, 1500);
	if (dice < 30)
		return c_accrue(f, w->roles[2], any_brand(w), any_member(w), pts);
	if (dice < 45)
		return c_redeem(f, w->roles[1], any_brand(w), any_member(w), pts);
	if (dice < 55)
		return c_hold(f, w->roles[1], any_brand(w), any_member(w), pts,
			      (uint32_t)(3600 + below(&w->rng, 3 * 86400)));
	if (dice < 63)
		return c_capture(f, w->roles[1], recall(w, w->holds, w->n_holds),
				 (int64_t)below(&w->rng, 2) * pts / 3);
	if (dice < 68)
		return c_void(f, w->roles[1], recall(w, w->holds, w->n_holds));
	if (dice < 75)
		return c_reverse(f, w->roles[0], recall(w, w->entries, w->n_entries),
				 (int64_t)below(&w->rng, 2) * pts / 5);
	if (dice < 85)
		return c_transfer(f, w->roles[1], any_brand(w), any_member(w), any_member(w), pts);
	if (dice < 90) {
		unsigned i = (unsigned)below(&w->rng, BRANDS);
		return c_exchange(f, w->roles[3], brand_ids[i], brand_ids[(i + 1) % BRANDS],
				  any_member(w), pts);
	}
	if (dice < 93)
		return c_adjust(f, w->roles[0], any_brand(w), any_member(w),
				below(&w->rng, 2) ? pts : -pts, "goodwill");
	if (dice < 95)
		return c_expire(f, w->roles[0]);
	if (dice < 97 && w->members == 0 && w->members_open < MEMBERS)
		return c_member(f, w->roles[0], member_name(w, w->members_open++));
	unsigned i = (unsigned)below(&w->rng, BRANDS);
	return c_settle(f, w->roles[3], brand_ids[i], brand_ids[(i + 1) % BRANDS],
			f->now_ms - 1 - (int64_t)below(&w->rng, 3 * DAY_MS));
}

/* A replay of an earlier command (same request id): either exactly, or with other
 * content, which must be refused as a conflict. */
static Tally__V1__Command *random_retry(struct workload *w)
{
	Tally__V1__Command *old = w->cmds[below(&w->rng, w->n)];
	if (old->body_case != TALLY__V1__COMMAND__BODY_ACCRUE || below(&w->rng, 2) == 0)
		return old;
	Tally__V1__Command *c = c_accrue(w->f, old->principal, old->accrue->brand,
					 old->accrue->member, old->accrue->points + 1);
	c->request_id = old->request_id;
	return c;
}

static unsigned long outcome[32][32]; /* [body][code], printed by the 100k test */

static void learn(struct workload *w, Tally__V1__Command *c, const Tally__V1__CommandResult *r)
{
	if ((unsigned)c->body_case < 32 && (unsigned)r->code < 32)
		outcome[c->body_case][r->code]++;
	if (r->code != TALLY__V1__RESULT_CODE__OK || r->replay)
		return;
	if (c->body_case == TALLY__V1__COMMAND__BODY_HOLD)
		remember(w->holds, &w->n_holds, r->hold_id);
	if (c->body_case == TALLY__V1__COMMAND__BODY_ACCRUE ||
	    c->body_case == TALLY__V1__COMMAND__BODY_REDEEM ||
	    c->body_case == TALLY__V1__COMMAND__BODY_CAPTURE)
		remember(w->entries, &w->n_entries, r->entry_seq);
}

static int64_t epoch_time(size_t epoch)
{
	/* About 1.3 days per epoch with a jitter that never goes back. */
	return T0_MS + (int64_t)epoch * (DAY_MS + DAY_MS / 3) + (int64_t)(epoch % 7) * 3600000;
}

/* Applies cmds[from, to) in batches of random size, never crossing an epoch. */
static void apply_split(struct fx *f, Tally__V1__Command **cmds, size_t from, size_t to,
			struct rng *split, size_t max_batch, bool check_each)
{
	while (from < to) {
		size_t epoch = from / EPOCH_COMMANDS;
		size_t end = (epoch + 1) * EPOCH_COMMANDS;
		size_t n = 1 + below(split, max_batch);
		if (from + n > end)
			n = end - from;
		if (from + n > to)
			n = to - from;
		f->now_ms = epoch_time(epoch);
		apply_n(f, cmds + from, n);
		if (check_each)
			assert_invariants(f);
		from += n;
	}
}

/* A workload of commands for the ledger of f, opened. */
static void workload_open(struct workload *w, struct fx *f)
{
	memset(w, 0, sizeof(*w));
	fx_open(f);
	w->f = f;
}

/* Generates `total` commands while applying them to f, batch by batch. */
static void generate(struct workload *w, size_t total, uint64_t seed, bool check_each)
{
	struct rng split = {seed ^ 0x9e3779b97f4a7c15ULL};
	w->rng.s = seed;
	w->roles[0] = admin(w->f);
	w->roles[1] = who(w->f, TALLY__V1__ROLE__MALL, "mall", "*");
	w->roles[2] = who(w->f, TALLY__V1__ROLE__DEALER, "dealer", "*");
	w->roles[3] = who(w->f, TALLY__V1__ROLE__PARTNER, "partner", "*");
	setup_commands(w);
	size_t done = 0;
	while (w->n < total) {
		size_t epoch = w->n / EPOCH_COMMANDS;
		size_t batch = 1 + below(&split, w->members > 0 ? BUSY_BATCH_MAX : 150);
		size_t end = (epoch + 1) * EPOCH_COMMANDS;
		w->f->now_ms = epoch_time(epoch);
		if (w->members > 0) /* a minute per command into the epoch: under 17 hours */
			w->f->now_ms += (int64_t)(w->n % EPOCH_COMMANDS) * 60000;
		while (w->n < total && w->n < done + batch && w->n < end) {
			unsigned dice = (unsigned)below(&w->rng, 100);
			if (w->members > 0 && dice % 2 == 0)
				dice = 2; /* an accrual (0 and 1 are retries) */
			push_cmd(w, dice < 2 ? random_retry(w) : random_points_command(w, dice));
		}
		Tally__V1__CommandResult **rs = apply_n(w->f, w->cmds + done, w->n - done);
		w->batch_ends = realloc(w->batch_ends, (w->n_batches + 1) * sizeof(size_t));
		assert_non_null(w->batch_ends);
		w->batch_ends[w->n_batches++] = w->n;
		for (size_t i = done; i < w->n; i++)
			learn(w, w->cmds[i], rs[i - done]);
		if (check_each)
			assert_invariants(w->f);
		for (unsigned m = 0; w->members > 0 && m < w->members; m++)
			for (int b = 0; b < BRANDS; b++) {
				size_t n = account(w->f, brand_ids[b], member_name(w, m))->n_lots;
				w->most_lots = n > w->most_lots ? n : w->most_lots;
			}
		done = w->n;
	}
}

static size_t workload_size(size_t full)
{
	return quick_mode() ? full / 10 : full;
}

static void assert_same_digest(struct fx *a, struct fx *b)
{
	struct tally_digest da, db;
	assert_int_equal(tally_ledger_digest(a->l, &da), 0);
	assert_int_equal(tally_ledger_digest(b->l, &db), 0);
	assert_int_equal(da.tree_size, db.tree_size);
	assert_memory_equal(da.root, db.root, 32);
	assert_memory_equal(da.state_digest, db.state_digest, 32);
	assert_int_equal(da.time_ms, db.time_ms);
}

/* The account of (brand, member) reads the same in both, lots and holds included. */
static void assert_same_accounts_of(struct fx *a, struct fx *b, const char *brand,
				    const char *member)
{
	Tally__V1__Account *x = account(a, brand, member);
	Tally__V1__Account *y = account(b, brand, member);
	size_t nx = tally__v1__account__get_packed_size(x);
	size_t ny = tally__v1__account__get_packed_size(y);
	assert_int_equal(nx, ny);
	uint8_t *px = tally_arena_alloc(&a->build, nx + 1);
	uint8_t *py = tally_arena_alloc(&b->build, ny + 1);
	tally__v1__account__pack(x, px);
	tally__v1__account__pack(y, py);
	assert_memory_equal(px, py, nx);
}

/* Every account of every member reads the same, lots and holds included. */
static void assert_same_accounts(struct fx *a, struct fx *b)
{
	for (int i = 0; i < BRANDS; i++) {
		for (unsigned m = 0; m < MEMBERS + 3; m++) {
			char id[32];
			snprintf(id, sizeof(id), "member-%04u", m);
			assert_same_accounts_of(a, b, brand_ids[i], id);
		}
		tally_arena_reset(&a->build);
		tally_arena_reset(&b->build);
	}
}

static void test_two_batch_splits_of_100k_commands_reach_identical_state(void **state)
{
	(void)state;
	struct fx a, b;
	struct workload w;
	workload_open(&w, &a);
	fx_open(&b);
	size_t total = workload_size(100000);
	generate(&w, total, 20261122, false);
	assert_int_equal(w.n, total);

	/* The same commands, split differently (bigger batches), into another directory. */
	struct rng split = {77};
	apply_split(&b, w.cmds, 0, w.n, &split, 997, false);

	assert_same_digest(&a, &b);
	assert_invariants(&a);
	assert_invariants(&b);
	struct tally_digest d;
	assert_int_equal(tally_ledger_digest(a.l, &d), 0);
	assert_true(d.tree_size > total / 3); /* the workload did real work */
	print_message("journal %llu entries; outcomes (command: code=count):\n",
		      (unsigned long long)d.tree_size);
	for (int c = 0; c < 32; c++) {
		char line[512];
		int n = 0;
		for (int k = 0; k < 32; k++)
			if (outcome[c][k] != 0)
				n += snprintf(line + n, sizeof(line) - (size_t)n, " %s=%lu",
					      tally_result_name((Tally__V1__ResultCode)k), outcome[c][k]);
		if (n > 0)
			print_message("  %d:%s\n", c, line);
	}
	/* The builders' arena holds the commands: compare accounts only after. */
	assert_same_accounts(&a, &b);
	free(w.cmds);
	free(w.batch_ends);
	fx_close(&a);
	fx_close(&b);
}

static void test_replicas_fed_the_same_batches_are_byte_identical(void **state)
{
	(void)state;
	struct fx a, b;
	struct workload w;
	workload_open(&w, &a);
	fx_open(&b);
	generate(&w, workload_size(20000), 4242, false);
	/* Replay exactly the generator's batches: same raft indexes, times and commands. */
	size_t done = 0;
	for (size_t i = 0; i < w.n_batches; i++) {
		b.now_ms = epoch_time(done / EPOCH_COMMANDS);
		apply_n(&b, w.cmds + done, w.batch_ends[i] - done);
		done = w.batch_ends[i];
	}
	uint8_t ha[32], hb[32];
	assert_int_equal(tally_ledger_content_hash(a.l, ha), 0);
	assert_int_equal(tally_ledger_content_hash(b.l, hb), 0);
	assert_memory_equal(ha, hb, 32);
	assert_int_equal(tally_ledger_applied_index(a.l), tally_ledger_applied_index(b.l));
	free(w.cmds);
	free(w.batch_ends);
	fx_close(&a);
	fx_close(&b);
}

/* Replays the generator's batches into f as they were (raft indexes, times, commands),
 * in groups of 1..max_group batches, each group one transaction; returns the groups. */
static size_t replay_grouped(struct fx *f, const struct workload *w, struct rng *r, size_t max_group)
{
	const Tally__V1__Batch *bs[TALLY_LEDGER_GROUP_BATCHES_MAX];
	Tally__V1__Batch store[TALLY_LEDGER_GROUP_BATCHES_MAX];
	Tally__V1__CommandResult **rs[TALLY_LEDGER_GROUP_BATCHES_MAX];
	bool skipped[TALLY_LEDGER_GROUP_BATCHES_MAX];
	assert_true(max_group <= TALLY_LEDGER_GROUP_BATCHES_MAX);
	size_t groups = 0, done = 0;
	for (size_t i = 0; i < w->n_batches; groups++) {
		size_t n = 1 + below(r, max_group);
		if (n > w->n_batches - i)
			n = w->n_batches - i;
		for (size_t k = 0; k < n; k++, i++) {
			store[k] = (Tally__V1__Batch)TALLY__V1__BATCH__INIT;
			store[k].raft_index = ++f->index;
			store[k].raft_term = 1;
			store[k].time_ms = epoch_time(done / EPOCH_COMMANDS);
			store[k].commands = w->cmds + done;
			store[k].n_commands = w->batch_ends[i] - done;
			bs[k] = &store[k];
			done = w->batch_ends[i];
		}
		struct tally_ledger_group g = {.batches = bs, .n = n, .results = rs, .skipped = skipped};
		tally_arena_reset(&f->results);
		assert_int_equal(tally_ledger_apply_group(f->l, &g, &f->results), 0);
		for (size_t k = 0; k < n; k++)
			assert_false(skipped[k]);
	}
	assert_int_equal(done, w->n);
	return groups;
}

/* A follower applies the entries of one raft pass in one transaction (consensus/fsm.c):
 * the ledger it reaches must be the one a transaction per batch reaches, record for
 * record, across hold sweeps, expiries and time that moves from batch to batch. */
static void test_batches_applied_in_groups_reach_the_same_ledger(void **state)
{
	(void)state;
	struct fx a, b;
	struct workload w;
	workload_open(&w, &a);
	fx_open(&b);
	generate(&w, workload_size(30000), 1205, false);
	struct rng r = {31337};
	size_t groups = replay_grouped(&b, &w, &r, 40);
	print_message("%zu batches in %zu transactions\n", w.n_batches, groups);
	assert_true(groups < w.n_batches / 4);
	uint8_t ha[32], hb[32];
	assert_int_equal(tally_ledger_content_hash(a.l, ha), 0);
	assert_int_equal(tally_ledger_content_hash(b.l, hb), 0);
	assert_memory_equal(ha, hb, 32);
	assert_same_digest(&a, &b);
	assert_int_equal(tally_ledger_applied_index(a.l), tally_ledger_applied_index(b.l));
	assert_invariants(&b);
	/* A group already applied is skipped whole, and nothing is written. */
	Tally__V1__Batch again = TALLY__V1__BATCH__INIT;
	again.raft_index = b.index;
	again.raft_term = 1;
	const Tally__V1__Batch *one[1] = {&again};
	Tally__V1__CommandResult **rs[1];
	bool skipped[1] = {false};
	struct tally_ledger_group g = {.batches = one, .n = 1, .results = rs, .skipped = skipped};
	assert_int_equal(tally_ledger_apply_group(b.l, &g, &b.results), 0);
	assert_true(skipped[0]);
	assert_int_equal(tally_ledger_content_hash(b.l, hb), 0);
	assert_memory_equal(ha, hb, 32);
	assert_same_accounts(&a, &b);
	free(w.cmds);
	free(w.batch_ends);
	fx_close(&a);
	fx_close(&b);
}

/* The whole of a snapshot file, malloc'd (as raft hands a snapshot to restore). */
static uint8_t *read_snapshot(int fd, size_t *len)
{
	off_t end = lseek(fd, 0, SEEK_END);
	assert_true(end > 0);
	uint8_t *buf = malloc((size_t)end);
	assert_non_null(buf);
	assert_int_equal(pread(fd, buf, (size_t)end, 0), end);
	*len = (size_t)end;
	return buf;
}

/* A sealed snapshot of a small ledger, in memory. */
static uint8_t *small_snapshot(struct fx *a, size_t *len)
{
	setup_brand(a, "aurora", 0);
	static const char *const ids[] = {"m1", "m2"};
	setup_members(a, ids, 2);
	return fx_snapshot(a, len);
}

/* Restores snap into a fresh directory; returns the code, *pending as restore set it. */
static int restore_into_fresh_dir(const uint8_t *snap, size_t len, bool *pending)
{
	char *target = fx_tmpdir();
	struct tally_ledger *l = NULL;
	struct tally_ledger_options o = {.map_size_bytes = 1ULL << 30, .nosync = true};
	int rc = tally_ledger_restore(target, snap, len, &o, &l, pending);
	if (rc == 0) {
		char msg[256];
		assert_int_equal(tally_ledger_check_invariants(l, msg, sizeof(msg)), 0);
		tally_ledger_close(l);
	} else {
		assert_null(l);
	}
	fx_remove_dir(target);
	free(target);
	return rc;
}

static void test_snapshot_restores_to_same_digest_and_stays_equal(void **state)
{
	(void)state;
	struct fx a, b;
	struct workload w;
	workload_open(&w, &a);
	size_t total = workload_size(30000);
	generate(&w, total * 2 / 3, 99, false);
	size_t cut = w.n;

	char *snapdir = fx_tmpdir();
	char path[512];
	snprintf(path, sizeof(path), "%s/snap", snapdir);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	uint64_t index = 0;
	assert_int_equal(tally_ledger_snapshot(a.l, fd, &index), 0);
	assert_int_equal(index, tally_ledger_applied_index(a.l));
	size_t len;
	uint8_t *snap = read_snapshot(fd, &len);
	close(fd);

	/* Restore into an empty directory: the seal verified, the full check left to us. */
	char *dir = fx_tmpdir();
	memset(&b, 0, sizeof(b));
	struct tally_ledger *l = NULL;
	struct tally_ledger_options o = {.map_size_bytes = 1ULL << 30, .nosync = true};
	bool pending = false;
	assert_int_equal(tally_ledger_restore(dir, snap, len, &o, &l, &pending), 0);
	assert_true(pending);
	free(snap);
	tally_ledger_close(l);
	fx_open_in(&b, dir);
	free(dir);
	assert_int_equal(tally_ledger_applied_index(b.l), index);
	assert_same_digest(&a, &b);
	assert_invariants(&b);

	/* Both continue with the same batches and stay equal. */
	struct rng rest = {5};
	w.rng.s = 1234;
	size_t more = total - cut;
	for (size_t i = 0; i < more; i++)
		push_cmd(&w, random_points_command(&w, (unsigned)below(&w.rng, 100)));
	struct rng rest2 = rest;
	a.index = b.index = index;
	apply_split(&a, w.cmds, cut, w.n, &rest, 200, false);
	apply_split(&b, w.cmds, cut, w.n, &rest2, 200, false);
	assert_same_digest(&a, &b);
	uint8_t ha[32], hb[32];
	assert_int_equal(tally_ledger_content_hash(a.l, ha), 0);
	assert_int_equal(tally_ledger_content_hash(b.l, hb), 0);
	assert_memory_equal(ha, hb, 32);
	assert_invariants(&b);
	unlink(path);
	fx_remove_dir(snapdir);
	free(snapdir);
	free(w.cmds);
	free(w.batch_ends);
	fx_close(&a);
	fx_close(&b);
}

static void test_restore_refuses_a_corrupt_snapshot(void **state)
{
	(void)state;
	static const char junk[] = "not an lmdb file at all";
	bool pending = true;
	assert_int_not_equal(restore_into_fresh_dir((const uint8_t *)junk, sizeof(junk), &pending),
			     0);
	assert_false(pending);
}

static void test_restore_refuses_a_snapshot_changed_in_one_byte_before_replacing_anything(void **state)
{
	(void)state;
	struct fx a;
	fx_open(&a);
	size_t len;
	uint8_t *snap = small_snapshot(&a, &len);
	bool pending;
	assert_int_equal(restore_into_fresh_dir(snap, len, &pending), 0);
	assert_true(pending);
	/* Every byte of the copy is sealed: one flipped bit anywhere is refused, the
	 * ledger already in the directory stays as it was. */
	size_t spots[] = {0, len / 3, len / 2, len - 100};
	for (size_t i = 0; i < sizeof(spots) / sizeof(spots[0]); i++) {
		snap[spots[i]] ^= 0x10;
		struct tally_digest before;
		assert_int_equal(tally_ledger_digest(a.l, &before), 0);
		struct tally_ledger *l = NULL;
		tally_ledger_close(a.l);
		a.l = NULL;
		struct tally_ledger_options o = {.map_size_bytes = 1ULL << 30, .nosync = true};
		assert_int_equal(tally_ledger_restore(a.dir, snap, len, &o, &l, &pending),
				 TALLY_ECORRUPT);
		assert_null(l);
		assert_int_equal(tally_ledger_open(a.dir, &o, &a.l), 0);
		struct tally_digest after;
		assert_int_equal(tally_ledger_digest(a.l, &after), 0);
		assert_memory_equal(&before, &after, sizeof(before));
		snap[spots[i]] ^= 0x10;
	}
	/* Cut short, the trailer is gone and the copy does not reach its last page:
	 * refused before LMDB maps it (it would fault reading past the end). */
	size_t copy_len = len - TALLY_SNAPSHOT_TRAILER_BYTES;
	assert_int_equal(restore_into_fresh_dir(snap, len / 2, &pending), TALLY_ECORRUPT);
	assert_int_equal(restore_into_fresh_dir(snap, copy_len - 4096, &pending), TALLY_ECORRUPT);
	free(snap);
	fx_close(&a);
}

static void test_restore_checks_an_unsealed_snapshot_in_full_before_replacing(void **state)
{
	(void)state;
	struct fx a;
	fx_open(&a);
	size_t len;
	uint8_t *snap = small_snapshot(&a, &len);
	/* Without the trailer (a snapshot taken before it existed): the LMDB copy alone. */
	size_t copy_len = len - TALLY_SNAPSHOT_TRAILER_BYTES;
	assert_memory_equal(snap + copy_len, TALLY_SNAPSHOT_MAGIC, strlen(TALLY_SNAPSHOT_MAGIC));
	bool pending = true;
	assert_int_equal(restore_into_fresh_dir(snap, copy_len, &pending), 0);
	assert_false(pending);
	free(snap);
	fx_close(&a);
}

/* A snapshot an older node sealed (TALLYSNAP1: the copy's SHA-256) still restores,
 * checked by its seal; one bit changed in its copy is refused. */
static void test_a_snapshot_sealed_by_sha256_restores_and_is_checked(void **state)
{
	(void)state;
	struct fx a;
	fx_open(&a);
	size_t len;
	uint8_t *snap = small_snapshot(&a, &len);
	size_t copy_len = len - TALLY_SNAPSHOT_TRAILER_BYTES;
	uint8_t *t = snap + copy_len;
	memset(t, 0, 16);
	memcpy(t, TALLY_SNAPSHOT_MAGIC_SHA256, strlen(TALLY_SNAPSHOT_MAGIC_SHA256));
	SHA256(snap, copy_len, t + 24);
	bool pending = false;
	assert_int_equal(restore_into_fresh_dir(snap, len, &pending), 0);
	assert_true(pending); /* sealed: the full check is left to the caller */
	snap[copy_len / 2] ^= 0x01;
	assert_int_equal(restore_into_fresh_dir(snap, len, &pending), TALLY_ECORRUPT);
	free(snap);
	fx_close(&a);
}

/* CRC32C bit by bit, as its definition reads: the reference for the seal's lanes. */
static uint32_t crc32c_reference(const uint8_t *p, size_t n)
{
	uint32_t c = 0xFFFFFFFFu;
	for (size_t i = 0; i < n; i++) {
		c ^= p[i];
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
	}
	return c ^ 0xFFFFFFFFu;
}

/* The seal's lanes are CRC32C of every SEAL_LANES-th block, whichever way they are
 * computed (the CRC32 instruction or the table), at any length and alignment. */
static void test_the_seal_lanes_are_crc32c_of_every_eighth_block(void **state)
{
	(void)state;
	uint32_t hw[SEAL_LANES], soft[SEAL_LANES];
	crc32c_lanes("123456789", 9, hw);
	assert_int_equal(hw[0], 0xE3069283u); /* CRC32C's check value */
	for (int i = 1; i < SEAL_LANES; i++)
		assert_int_equal(hw[i], 0); /* CRC32C of nothing */

	const size_t group = (size_t)SEAL_LANES * SEAL_BLOCK_BYTES;
	const size_t lens[] = {0, 1, 7, 8, 9, SEAL_BLOCK_BYTES - 1, SEAL_BLOCK_BYTES,
			       SEAL_BLOCK_BYTES + 1, group - 1, group, group + 9,
			       3 * group + 5 * SEAL_BLOCK_BYTES + 13};
	size_t max = lens[sizeof(lens) / sizeof(lens[0]) - 1];
	uint8_t *buf = malloc(max + 8), *lane = malloc(max);
	assert_non_null(buf);
	assert_non_null(lane);
	uint32_t x = 12345;
	for (size_t i = 0; i < max + 8; i++) {
		x = x * 1103515245u + 12345u;
		buf[i] = (uint8_t)(x >> 16);
	}
	for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++)
		for (size_t shift = 0; shift < 8; shift += 3) {
			const uint8_t *p = buf + shift;
			size_t n = lens[k];
			crc32c_lanes(p, n, hw);
			crc32c_lanes_soft(p, n, soft);
			for (int i = 0; i < SEAL_LANES; i++) {
				size_t m = 0;
				for (size_t at = (size_t)i * SEAL_BLOCK_BYTES; at < n; at += group) {
					size_t take = n - at < SEAL_BLOCK_BYTES ? n - at : SEAL_BLOCK_BYTES;
					memcpy(lane + m, p + at, take);
					m += take;
				}
				uint32_t want = crc32c_reference(lane, m);
				assert_int_equal(hw[i], want);
				assert_int_equal(soft[i], want);
			}
		}
	free(buf);
	free(lane);
}

/* Writes len bytes of p to path (a new file). */
static void write_whole(const char *path, const uint8_t *p, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, p, len), (ssize_t)len);
	close(fd);
}

/* A node checks a restored ledger in raft's copy of the snapshot, opened read-only. */
static void test_a_sealed_snapshot_file_opens_read_only_only_while_its_seal_matches(void **state)
{
	(void)state;
	struct fx a;
	fx_open(&a);
	size_t len;
	uint8_t *snap = small_snapshot(&a, &len);
	char *dir = fx_tmpdir();
	char path[512];
	snprintf(path, sizeof(path), "%s/snapshot-1-2-3", dir);
	struct tally_ledger *c = (struct tally_ledger *)1;
	assert_int_equal(tally_ledger_open_snapshot(path, NULL, &c), TALLY_ENOTFOUND);
	assert_null(c);

	/* The same state as the ledger it was taken of; checked in full; never written. */
	write_whole(path, snap, len);
	assert_int_equal(tally_ledger_open_snapshot(path, NULL, &c), 0);
	struct tally_digest da, dc;
	assert_int_equal(tally_ledger_digest(a.l, &da), 0);
	assert_int_equal(tally_ledger_digest(c, &dc), 0);
	assert_memory_equal(&da, &dc, sizeof(da));
	char msg[256];
	assert_int_equal(tally_ledger_check_invariants(c, msg, sizeof(msg)), 0);
	Tally__V1__Command *cmd = c_member(&a, admin(&a), "m3");
	Tally__V1__Batch b = TALLY__V1__BATCH__INIT;
	b.raft_index = da.applied_index + 1;
	b.raft_term = 1;
	b.time_ms = a.now_ms;
	b.commands = &cmd;
	b.n_commands = 1;
	Tally__V1__CommandResult **rs;
	bool skipped;
	assert_int_not_equal(tally_ledger_apply_batch(c, &b, &a.results, &rs, &skipped), 0);
	tally_ledger_close(c);
	size_t n;
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	uint8_t *after = read_snapshot(fd, &n);
	close(fd);
	assert_int_equal(n, len);
	assert_memory_equal(after, snap, len);
	free(after);

	/* One bit changed anywhere in the copy, or no trailer: refused before LMDB opens it. */
	size_t spots[] = {0, len / 2, len - TALLY_SNAPSHOT_TRAILER_BYTES - 1};
	for (size_t i = 0; i < sizeof(spots) / sizeof(spots[0]); i++) {
		snap[spots[i]] ^= 0x04;
		write_whole(path, snap, len);
		assert_int_equal(tally_ledger_open_snapshot(path, NULL, &c), TALLY_ECORRUPT);
		assert_null(c);
		snap[spots[i]] ^= 0x04;
	}
	write_whole(path, snap, len - TALLY_SNAPSHOT_TRAILER_BYTES);
	assert_int_equal(tally_ledger_open_snapshot(path, NULL, &c), TALLY_ECORRUPT);
	free(snap);
	fx_remove_dir(dir);
	free(dir);
	fx_close(&a);
}

static void test_invariants_hold_after_every_batch_of_a_long_random_run(void **state)
{
	(void)state;
	struct fx a;
	struct workload w;
	workload_open(&w, &a);
	generate(&w, workload_size(15000), 31337, true);
	free(w.cmds);
	free(w.batch_ends);
	fx_close(&a);
}

/* ---- batches that meet thousands of records ---------------------------------------
 * Each batch indexes the digested records it reads or writes (ledger/store.c, "what the
 * batch knows"): KNOWN_CAP_MIN slots at first, grown while it holds entries. Batches that meet
 * thousands of records must reach the digest batches of seven commands reach, and the
 * one a scan of every record computes. */

#define WIDE_MEMBERS 3000

/* Applies cmds[0, n) in batches of `step`, every command expected to succeed. */
static void apply_in_steps(struct fx *f, Tally__V1__Command **cmds, size_t n, size_t step)
{
	for (size_t at = 0; at < n; at += step) {
		size_t k = n - at < step ? n - at : step;
		Tally__V1__CommandResult **rs = apply_n(f, cmds + at, k);
		for (size_t i = 0; i < k; i++)
			assert_int_equal(rs[i]->code, TALLY__V1__RESULT_CODE__OK);
	}
}

static void wide_run(struct fx *f, const char (*ids)[16], size_t step)
{
	Tally__V1__Principal *dealer = who(f, TALLY__V1__ROLE__DEALER, "dealer", "*");
	Tally__V1__Principal *mall = who(f, TALLY__V1__ROLE__MALL, "mall", "*");
	Tally__V1__Command **cmds = malloc(2 * WIDE_MEMBERS * sizeof(*cmds));
	assert_non_null(cmds);
	setup_brand(f, "aurora", 12);
	setup_brand(f, "borealis", 12);
	for (size_t i = 0; i < WIDE_MEMBERS; i++)
		cmds[i] = c_member(f, admin(f), ids[i]);
	apply_in_steps(f, cmds, WIDE_MEMBERS, step);
	for (size_t i = 0; i < WIDE_MEMBERS; i++) { /* two new accounts per member */
		cmds[2 * i] = c_accrue(f, dealer, "aurora", ids[i], 100 + (int64_t)i);
		cmds[2 * i + 1] = c_accrue(f, dealer, "borealis", ids[i], 50);
	}
	apply_in_steps(f, cmds, 2 * WIDE_MEMBERS, step);
	for (size_t i = 0; i < WIDE_MEMBERS; i++) /* each account read, then replaced */
		cmds[i] = c_redeem(f, mall, "aurora", ids[i], 1 + (int64_t)(i % 100));
	apply_in_steps(f, cmds, WIDE_MEMBERS, step);
	free(cmds);
	assert_invariants(f);
}

static void test_batches_that_meet_thousands_of_records_keep_the_digest(void **state)
{
	(void)state;
	static char ids[WIDE_MEMBERS][16];
	for (size_t i = 0; i < WIDE_MEMBERS; i++)
		snprintf(ids[i], sizeof(ids[i]), "w%05zu", i);
	struct fx wide, narrow;
	fx_open(&wide);
	fx_open(&narrow);
	wide_run(&wide, (const char (*)[16])ids, 2 * WIDE_MEMBERS);
	wide_run(&narrow, (const char (*)[16])ids, 7);
	assert_same_digest(&wide, &narrow);
	assert_int_equal(available(&wide, "aurora", ids[1234]), 100 + 1234 - 1 - 34);
	assert_int_equal(available(&wide, "borealis", ids[2999]), 50);
	fx_close(&wide);
	fx_close(&narrow);
}

/* ---- chain heads with and without their path (format 9, ledger/chain.c) ------------ */

#define PATH_MEMBERS 10

/* Opens the closed ledger in dir for raw writes (the tables are LMDB's named ones). */
static MDB_env *raw_open(const char *dir, MDB_txn **txn)
{
	MDB_env *env;
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 64), 0);
	assert_int_equal(mdb_env_set_mapsize(env, 1ULL << 30), 0);
	assert_int_equal(mdb_env_open(env, dir, 0, 0644), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, txn), 0);
	return env;
}

/* Rewrites every head of table `name` in dir as format 8 stored it (no path, the flag
 * clear); returns how many carried a path of one seq or more. */
static size_t strip_paths_of(MDB_txn *txn, const char *name)
{
	MDB_dbi dbi;
	MDB_cursor *cur;
	assert_int_equal(mdb_dbi_open(txn, name, 0, &dbi), 0);
	assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
	MDB_val k, v;
	size_t with_rest = 0;
	for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		size_t head = chain_head_size(&v);
		assert_true(head >= CHAIN_HEAD_BYTES);
		uint8_t *old = v.mv_data, buf[4096];
		assert_true(v.mv_size - head + CHAIN_HEAD_BYTES <= sizeof(buf));
		with_rest += head > CHAIN_HEAD_BYTES;
		memcpy(buf, old, CHAIN_HEAD_BYTES);
		be64_put(buf + 8, be64_get(buf + 8) & ~CHAIN_HEAD_PATH_FLAG);
		memcpy(buf + CHAIN_HEAD_BYTES, old + head, v.mv_size - head);
		MDB_val nv = {v.mv_size - head + CHAIN_HEAD_BYTES, buf};
		uint8_t key[KEY_BYTES_MAX]; /* k points into the page the put rewrites */
		assert_true(k.mv_size <= sizeof(key));
		memcpy(key, k.mv_data, k.mv_size);
		k.mv_data = key;
		assert_int_equal(mdb_cursor_put(cur, &k, &nv, MDB_CURRENT), 0);
	}
	mdb_cursor_close(cur);
	return with_rest;
}

/* Makes the closed ledger in dir one that format 8 wrote: no head has its path. */
static size_t strip_paths(const char *dir)
{
	MDB_txn *txn;
	MDB_env *env = raw_open(dir, &txn);
	size_t n = strip_paths_of(txn, "accounts") + strip_paths_of(txn, "members");
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
	uint8_t version[8];
	be64_put(version, 8);
	meta_poke(dir, "version", version, sizeof(version));
	return n;
}

/* Accruals into PATH_MEMBERS accounts, `rounds` each: chains long enough that most
 * heads' paths hold seqs past the skip. */
static void path_run(struct fx *f, unsigned rounds, bool open)
{
	char id[16];
	if (open)
		ok(f, c_brand(f, admin(f), "aurora", 12));
	for (unsigned m = 0; open && m < PATH_MEMBERS; m++) {
		snprintf(id, sizeof(id), "p%u", m);
		ok(f, c_member(f, admin(f), id));
	}
	for (unsigned i = 0; i < rounds * PATH_MEMBERS; i++) {
		snprintf(id, sizeof(id), "p%u", i % PATH_MEMBERS);
		ok(f, c_accrue(f, admin(f), "aurora", id, 1 + i % 7));
	}
}

/* A ledger that format 8 wrote (heads without their path) has the same digest, passes
 * its checks, and reaches the same ledger as one that always had the paths: each
 * head gets its path back, read from the journal, when the next entry joins its
 * chain, and the entries' links are the same. */
static void test_heads_without_their_path_give_the_same_digest_and_the_same_ledger(void **state)
{
	(void)state;
	struct fx old, cur;
	fx_open(&old);
	fx_open(&cur);
	path_run(&old, 29, true);
	path_run(&cur, 29, true);
	fx_ledger_close(&old);
	assert_int_equal(strip_paths(old.dir), PATH_MEMBERS); /* ordinal 29: 4 bits set */
	assert_int_equal(fx_ledger_open(&old), 0);
	assert_same_digest(&old, &cur);
	assert_invariants(&old);
	path_run(&old, 13, false);
	path_run(&cur, 13, false);
	assert_same_digest(&old, &cur);
	assert_invariants(&old);
	assert_invariants(&cur);
	/* Every account got its path back (ordinal 42: 3 bits set); both strip to the
	 * same bytes, links in the journal included. */
	fx_ledger_close(&old);
	fx_ledger_close(&cur);
	assert_int_equal(strip_paths(old.dir), PATH_MEMBERS);
	assert_int_equal(strip_paths(cur.dir), PATH_MEMBERS);
	assert_int_equal(fx_ledger_open(&old), 0);
	assert_int_equal(fx_ledger_open(&cur), 0);
	uint8_t ho[32], hc[32];
	assert_int_equal(tally_ledger_content_hash(old.l, ho), 0);
	assert_int_equal(tally_ledger_content_hash(cur.l, hc), 0);
	assert_memory_equal(ho, hc, 32);
	fx_close(&old);
	fx_close(&cur);
}

/* The stored record of aurora/member changed in place by edit(record, its size, ctx),
 * the ledger closed and opened again around it. */
static void account_poke(struct fx *f, const char *member,
			 void (*edit)(uint8_t *rec, size_t n, const void *ctx), const void *ctx)
{
	fx_ledger_close(f);
	MDB_txn *txn;
	MDB_env *env = raw_open(f->dir, &txn);
	MDB_dbi dbi;
	assert_int_equal(mdb_dbi_open(txn, "accounts", 0, &dbi), 0);
	struct key k;
	key_reset(&k);
	key_str(&k, "aurora");
	key_raw(&k, member);
	MDB_val key = {k.n, k.b}, v;
	assert_int_equal(mdb_get(txn, dbi, &key, &v), 0);
	static uint8_t buf[1 << 16];
	assert_true(v.mv_size <= sizeof(buf));
	memcpy(buf, v.mv_data, v.mv_size);
	edit(buf, v.mv_size, ctx);
	MDB_val nv = {v.mv_size, buf};
	assert_int_equal(mdb_put(txn, dbi, &key, &nv, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
	assert_int_equal(fx_ledger_open(f), 0);
}

/* The first seq past the skip in a head with two: one more than it was (a path that
 * reads), or the skip's own (a path whose seqs do not fall, which does not). */
static void path_edit(uint8_t *rec, size_t n, const void *ctx)
{
	MDB_val v = {n, rec};
	assert_true(chain_head_size(&v) == CHAIN_HEAD_BYTES + 16);
	bool to_the_skip = *(const bool *)ctx;
	uint64_t first = be64_get(rec + CHAIN_HEAD_BYTES);
	be64_put(rec + CHAIN_HEAD_BYTES, to_the_skip ? be64_get(rec + 24) : first + 1);
}

static void path_poke(struct fx *f, const char *member, bool to_the_skip)
{
	account_poke(f, member, path_edit, &to_the_skip);
}

/* The digest leaves a head's path out, so the ledger's check is what finds a wrong one:
 * it reads the path again from the journal; one whose seqs do not fall does not even
 * decode. */
static void test_a_head_whose_path_is_wrong_fails_the_check(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	path_run(&f, 29, true);
	assert_invariants(&f);
	char msg[256];
	path_poke(&f, "p3", false);
	assert_int_equal(tally_ledger_check_invariants(f.l, msg, sizeof(msg)), TALLY_ECORRUPT);
	assert_non_null(strstr(msg, "aurora/p3: its chain head's path is not that of its entries"));
	path_poke(&f, "p3", true);
	assert_int_equal(tally_ledger_check_invariants(f.l, msg, sizeof(msg)), TALLY_ECORRUPT);
	assert_non_null(strstr(msg, "an account record does not decode"));
	fx_close(&f);
}

/* ---- accounts hashed in parts (rules 4) ---------------------------------------------
 * Under TALLY_RULES_LOTS_APART an account record with more than
 * TALLY_ACCOUNT_LOTS_APART_MIN lots adds to the state digest in parts, and each command
 * takes out and puts in only the lots it changed (ledger/account.c). The check
 * recomputes the digest from every record as it is stored (record_hash), so the two
 * must agree after any command. */

/* Account records of the closed ledger in dir: how many are hashed in parts, and how
 * many lots the largest of those holds. */
static size_t records_in_parts(const char *dir, size_t *most_lots)
{
	MDB_txn *txn;
	MDB_env *env = raw_open(dir, &txn);
	MDB_dbi dbi;
	MDB_cursor *cur;
	assert_int_equal(mdb_dbi_open(txn, "accounts", 0, &dbi), 0);
	assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
	struct tally_arena arena;
	tally_arena_init(&arena, 1 << 16, 0);
	MDB_val k, v;
	size_t n = 0;
	*most_lots = 0;
	for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		struct chain_head head;
		tally_arena_reset(&arena);
		Tally__V1__Account *a =
			chain_record_unpack(&v, &tally__v1__account__descriptor, &arena, &head);
		assert_non_null(a);
		if (!head.lots_apart)
			continue;
		n++;
		if (a->n_lots > *most_lots)
			*most_lots = a->n_lots;
	}
	tally_arena_free(&arena);
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	mdb_env_close(env);
	return n;
}

/* Two members over three brands take the random workload's every kind of command
 * (holds, captures, voids, reversals, transfers, exchanges, adjustments, expiries),
 * half of them accruals: their accounts gather over a hundred lots, and the digest the
 * commands keep equals the one recomputed from the records after every batch. */
static void test_accounts_hashed_in_parts_keep_the_digest_through_a_busy_random_run(void **state)
{
	(void)state;
	struct fx a;
	struct workload w;
	workload_open(&w, &a);
	memset(outcome, 0, sizeof(outcome));
	w.rules = TALLY_RULES_LOTS_APART;
	w.members = 2;
	generate(&w, 3000, 4242, true); /* not shortened in quick mode: lots need batches */
	fx_ledger_close(&a);
	size_t most = 0, apart = records_in_parts(a.dir, &most);
	assert_int_equal(fx_ledger_open(&a), 0);
	print_message("an account held up to %zu lots; at the end %zu records in parts, the "
		      "largest with %zu lots\n", w.most_lots, apart, most);
	/* Written with more than the least, a record is written in parts. */
	assert_true(w.most_lots > 2 * TALLY_ACCOUNT_LOTS_APART_MIN);
	assert_true(apart > 0 && most > TALLY_ACCOUNT_LOTS_APART_MIN);
	free(w.cmds);
	free(w.batch_ends);
	fx_close(&a);
}

/* Accruals to one member at minutes apart, each its own lot. */
static void busy_accruals(struct fx *f, const char *member, int n)
{
	for (int i = 0; i < n; i++) {
		f->now_ms += 60000;
		ok(f, c_accrue(f, admin(f), "aurora", member, 10 + i % 7));
	}
}

/* The head's lots flag set or cleared. */
static void lots_flag_edit(uint8_t *rec, size_t n, const void *ctx)
{
	assert_true(n >= CHAIN_HEAD_BYTES);
	uint64_t ord = be64_get(rec + 8);
	bool set = *(const bool *)ctx;
	be64_put(rec + 8, set ? ord | CHAIN_HEAD_LOTS_FLAG : ord & ~CHAIN_HEAD_LOTS_FLAG);
}

static void lots_flag_poke(struct fx *f, const char *member, bool set)
{
	account_poke(f, member, lots_flag_edit, &set);
}

/* An account crosses TALLY_ACCOUNT_LOTS_APART_MIN both ways, and its record is hashed
 * in parts exactly while above it; the same commands under rules 3 leave the same
 * accounts (only the digest differs). The flag is in what the digest covers: cleared
 * or set by hand, the check finds the record wrong. */
static void test_an_account_is_hashed_in_parts_while_it_holds_many_lots(void **state)
{
	(void)state;
	enum { MIN = TALLY_ACCOUNT_LOTS_APART_MIN };
	struct fx parts, whole;
	struct fx *both[2] = {&parts, &whole};
	for (int i = 0; i < 2; i++) {
		struct fx *f = both[i];
		fx_open(f);
		f->now_ms = T0_MS;
		ok(f, c_set_rules(f, i == 0 ? TALLY_RULES_LOTS_APART : TALLY_RULES_IDEM_SEQ));
		ok(f, c_brand(f, admin(f), "aurora", 12));
		ok(f, c_member(f, admin(f), "busy"));
		ok(f, c_member(f, admin(f), "calm"));
		busy_accruals(f, "busy", MIN);
		busy_accruals(f, "calm", 3);
	}
	size_t most;
	for (int step = 0; step < 6; step++) {
		for (int i = 0; i < 2; i++) {
			struct fx *f = both[i];
			f->now_ms += 60000;
			Tally__V1__CommandResult *r;
			switch (step) {
			case 0: busy_accruals(f, "busy", 1); break;                      /* MIN + 1 */
			case 1: ok(f, c_redeem(f, admin(f), "aurora", "busy", 25)); break; /* a lot gone, one cut */
			case 2: busy_accruals(f, "busy", 9); break;
			case 3:
				r = ok(f, c_hold(f, admin(f), "aurora", "busy", 40, 600));
				ok(f, c_void(f, admin(f), r->hold_id)); /* the lots come back */
				ok(f, c_transfer(f, admin(f), "aurora", "busy", "calm", 30));
				break;
			case 4: ok(f, c_redeem(f, admin(f), "aurora", "busy", 200)); break; /* below MIN */
			default: busy_accruals(f, "busy", 12); break;
			}
			assert_invariants(f);
		}
		fx_ledger_close(&parts);
		size_t apart = records_in_parts(parts.dir, &most);
		assert_int_equal(fx_ledger_open(&parts), 0);
		Tally__V1__Account *a = account(&parts, "aurora", "busy");
		assert_int_equal(apart, a->n_lots > MIN ? 1 : 0);
		assert_true(step != 4 || a->n_lots <= MIN);
		assert_true(step != 5 || a->n_lots > MIN);
		assert_same_accounts_of(&parts, &whole, "aurora", "busy");
		assert_same_accounts_of(&parts, &whole, "aurora", "calm");
	}
	fx_ledger_close(&whole);
	assert_int_equal(records_in_parts(whole.dir, &most), 0);
	assert_int_equal(fx_ledger_open(&whole), 0);

	char msg[256];
	lots_flag_poke(&parts, "busy", false);
	assert_int_equal(tally_ledger_check_invariants(parts.l, msg, sizeof(msg)), TALLY_ECORRUPT);
	assert_non_null(strstr(msg, "state digest"));
	lots_flag_poke(&parts, "busy", true);
	assert_invariants(&parts);
	lots_flag_poke(&parts, "calm", true);
	assert_int_equal(tally_ledger_check_invariants(parts.l, msg, sizeof(msg)), TALLY_ECORRUPT);
	assert_non_null(strstr(msg, "aurora/calm is hashed in parts"));
	fx_close(&parts);
	fx_close(&whole);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_two_batch_splits_of_100k_commands_reach_identical_state),
		cmocka_unit_test(test_replicas_fed_the_same_batches_are_byte_identical),
		cmocka_unit_test(test_batches_applied_in_groups_reach_the_same_ledger),
		cmocka_unit_test(test_snapshot_restores_to_same_digest_and_stays_equal),
		cmocka_unit_test(test_restore_refuses_a_corrupt_snapshot),
		cmocka_unit_test(test_restore_refuses_a_snapshot_changed_in_one_byte_before_replacing_anything),
		cmocka_unit_test(test_restore_checks_an_unsealed_snapshot_in_full_before_replacing),
		cmocka_unit_test(test_a_snapshot_sealed_by_sha256_restores_and_is_checked),
		cmocka_unit_test(test_the_seal_lanes_are_crc32c_of_every_eighth_block),
		cmocka_unit_test(test_a_sealed_snapshot_file_opens_read_only_only_while_its_seal_matches),
		cmocka_unit_test(test_invariants_hold_after_every_batch_of_a_long_random_run),
		cmocka_unit_test(test_batches_that_meet_thousands_of_records_keep_the_digest),
		cmocka_unit_test(test_heads_without_their_path_give_the_same_digest_and_the_same_ledger),
		cmocka_unit_test(test_a_head_whose_path_is_wrong_fails_the_check),
		cmocka_unit_test(test_accounts_hashed_in_parts_keep_the_digest_through_a_busy_random_run),
		cmocka_unit_test(test_an_account_is_hashed_in_parts_while_it_holds_many_lots),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
