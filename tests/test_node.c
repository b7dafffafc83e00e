/*
 * A three-node cluster in one process on one libuv loop: election, group commit,
 * entries in flight back to back, leader redirection, linearizable and stale reads,
 * identical replicas, the leader's expire timer, status, failover after the leader
 * closes, a restart that catches up through snapshots (taken every 32 entries here),
 * and the refusals of a misconfigured or unstarted node.
 *
 * The tests run in order on one cluster (the group state). Every wait runs the loop
 * under a watchdog timer; nothing sleeps.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <raft.h>
#include <valgrind/valgrind.h>

#include "consensus/clock.h"
#include "consensus/node.h"
#include "tests/ports.h"
#include "tests/util.h"

#define NODES 3
#define ACCRUES 100
#define POINTS_EACH 10
#define ROUNDS 40
#define PER_ROUND 3
#define LOG_BUDGET_BYTES (16u << 10) /* snapshot_log_bytes of the log-budget group */
#define WAIT_MS 60000 /* watchdog: only a failing run waits this long; never a performance assertion */
#define CODE(x) TALLY__V1__RESULT_CODE__##x

struct outcome {
	bool done;
	Tally__V1__ResultCode code;
	char message[128];
	int64_t available;       /* commands: the account after; queries: accounts[0] */
	uint64_t applied_index;  /* queries */
	uint64_t hold_id;        /* a hold's result */
};

struct cluster;

/* What a node's injected clocks need: real time, plus an offset on the wall clock. */
struct node_clocks {
	struct cluster *c;
	int i;
};

struct cluster {
	uv_loop_t loop;
	struct tally_node *node[NODES];
	bool closed[NODES];
	char *dir[NODES];
	char address[NODES][96];
	char client[NODES][32];
	struct fx f;                       /* only its arena: command builders */
	Tally__V1__Principal *admin, *dealer;
	uint64_t target_index;             /* for predicates: an applied index */
	uint64_t target_commands;          /* for predicates: a command count */
	char bootstrap[512];
	/* Clocks: node i's wall clock is real time + wall_offset_ms[i]; `sampler` hands
	 * every node a sample of every other's wall clock, as rpc/peerclock.c does in
	 * tallyd (no client ports here). */
	int64_t wall_offset_ms[NODES];
	struct node_clocks clocks[NODES];
	uv_timer_t sampler;
	bool sampler_closed;
	unsigned snapshot_threshold;       /* raft entries between snapshots */
	size_t snapshot_log_bytes;         /* 0: the node's default */
	unsigned install_snapshot_ms;      /* 0: the node's default (30 s) */
	/* What node i's last full check of a restored ledger read (its log line). */
	char checked[NODES][512];
};

#define SAMPLE_INTERVAL_MS 100

/* ---- plumbing ----------------------------------------------------------------------- */

/* The ports of this program's cluster: node i listens on base+1+i (raft) and
 * base+101+i (clients); the unstarted node of one test on base+10 and base+110. */
static struct ports_block ports = {0, -1};

static unsigned port_of(int offset)
{
	assert_true(ports.base > 0);
	return (unsigned)(ports.base + offset);
}

static void timer_fired(uv_timer_t *t)
{
	if (t->data != NULL)
		*(bool *)t->data = true;
}

static void handle_closed(uv_handle_t *h)
{
	*(bool *)h->data = true;
}

/* Runs the loop until pred holds or timeout_ms pass; returns whether it holds. */
static bool run_until(struct cluster *c, bool (*pred)(struct cluster *), unsigned timeout_ms)
{
	uv_timer_t dog, wake;
	bool expired = false, dog_closed = false, wake_closed = false;
	uv_timer_init(&c->loop, &dog);
	uv_timer_init(&c->loop, &wake);
	dog.data = &expired;
	wake.data = NULL;
	uv_timer_start(&dog, timer_fired, timeout_ms, 0);
	uv_timer_start(&wake, timer_fired, 5, 5);
	bool ok;
	while (!(ok = pred(c)) && !expired)
		uv_run(&c->loop, UV_RUN_ONCE);
	dog.data = &dog_closed;
	wake.data = &wake_closed;
	uv_close((uv_handle_t *)&dog, handle_closed);
	uv_close((uv_handle_t *)&wake, handle_closed);
	while (!dog_closed || !wake_closed)
		uv_run(&c->loop, UV_RUN_ONCE);
	return ok;
}

static int leader_of(struct cluster *c)
{
	int leader = -1;
	for (int i = 0; i < NODES; i++)
		if (!c->closed[i] && c->node[i] != NULL && tally_node_is_leader(c->node[i]))
			leader = leader < 0 ? i : -2; /* two leaders: keep waiting */
	return leader;
}

static bool one_leader(struct cluster *c)
{
	return leader_of(c) >= 0;
}

static int follower_of(struct cluster *c, int leader)
{
	for (int i = 0; i < NODES; i++)
		if (i != leader && !c->closed[i])
			return i;
	return -1;
}

static void on_result(void *data, const Tally__V1__CommandResult *r)
{
	struct outcome *o = data;
	assert_false(o->done);
	o->done = true;
	o->code = r->code;
	o->available = r->available;
	o->hold_id = r->hold_id;
	snprintf(o->message, sizeof(o->message), "%s", r->message != NULL ? r->message : "");
}

static void on_query(void *data, Tally__V1__ResultCode code, const char *message,
		     Tally__V1__QueryResult *res)
{
	struct outcome *o = data;
	assert_false(o->done);
	o->done = true;
	o->code = code;
	snprintf(o->message, sizeof(o->message), "%s", message != NULL ? message : "");
	if (code == CODE(OK)) {
		assert_non_null(res);
		o->applied_index = res->applied_index;
		o->available = res->n_accounts > 0 ? res->accounts[0]->available : -1;
		if (res->code != CODE(OK))
			o->code = res->code;
	}
}

static struct outcome *pending_outcomes;
static size_t pending_n;

static bool all_done(struct cluster *c)
{
	(void)c;
	for (size_t i = 0; i < pending_n; i++)
		if (!pending_outcomes[i].done)
			return false;
	return true;
}

static void wait_all(struct cluster *c, struct outcome *o, size_t n, unsigned timeout_ms)
{
	pending_outcomes = o;
	pending_n = n;
	assert_true(run_until(c, all_done, timeout_ms));
}

static bool transport_outcome(Tally__V1__ResultCode code)
{
	return code == CODE(NOT_LEADER) || code == CODE(UNAVAILABLE) || code == CODE(TIMEOUT);
}

/* Submits every command to the current leader, per_turn of them per loop turn (0: all
 * in one turn), then resubmits with the same request id each one answered with a
 * transport outcome (a leader change in a slow run, e.g. under valgrind); one that did
 * apply is answered from the idempotency record. Fails unless all end OK. Returns the
 * number of resubmissions. */
static unsigned submit_until_ok(struct cluster *c, Tally__V1__Command **cmds, struct outcome *o,
				size_t n, size_t per_turn)
{
	unsigned resubmitted = 0;
	for (int attempt = 0; attempt < 5; attempt++) {
		assert_true(run_until(c, one_leader, WAIT_MS));
		struct tally_node *leader = c->node[leader_of(c)];
		size_t sent = 0;
		for (size_t i = 0; i < n; i++) {
			if (attempt > 0 && !transport_outcome(o[i].code))
				continue;
			memset(&o[i], 0, sizeof(o[i]));
			tally_node_submit(leader, cmds[i], on_result, &o[i]);
			if (per_turn != 0 && ++sent % per_turn == 0)
				uv_run(&c->loop, UV_RUN_NOWAIT); /* proposed before the next ones */
			resubmitted += attempt > 0;
		}
		wait_all(c, o, n, 20000);
	}
	for (size_t i = 0; i < n; i++)
		if (o[i].code != CODE(OK))
			fail_msg("command %zu: %s %s", i, tally_result_name(o[i].code), o[i].message);
	return resubmitted;
}

static Tally__V1__Query *accounts_query(struct cluster *c, bool stale)
{
	Tally__V1__GetAccounts *g = tally_arena_zalloc(&c->f.build, sizeof(*g));
	Tally__V1__Query *q = tally_arena_zalloc(&c->f.build, sizeof(*q));
	char **members = tally_arena_zalloc(&c->f.build, sizeof(char *));
	assert_true(g != NULL && q != NULL && members != NULL);
	tally__v1__get_accounts__init(g);
	tally__v1__query__init(q);
	g->brand = (char *)"aurora";
	members[0] = (char *)"m1";
	g->members = members;
	g->n_members = 1;
	q->q_case = TALLY__V1__QUERY__Q_ACCOUNTS;
	q->accounts = g;
	q->stale = stale;
	return q;
}

/* ---- the cluster -------------------------------------------------------------------- */

static int64_t real_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t node_mono_ms(void *data)
{
	(void)data;
	return real_ms(CLOCK_MONOTONIC);
}

static int64_t node_wall_ms(void *data)
{
	const struct node_clocks *k = data;
	return real_ms(CLOCK_REALTIME) + k->c->wall_offset_ms[k->i];
}

#define CHECK_PASSED_MARK ") passed the full check in "
#define CHECK_OF_MARK " ms, of "

/* Every node's log on stderr, as without the hook; a passed check's subject kept. */
static void node_log_line(void *data, const char *line)
{
	const struct node_clocks *k = data;
	fprintf(stderr, "tally node %d: %s\n", k->i + 1, line);
	const char *of = strstr(line, CHECK_PASSED_MARK) != NULL ? strstr(line, CHECK_OF_MARK) : NULL;
	if (of != NULL)
		snprintf(k->c->checked[k->i], sizeof(k->c->checked[k->i]), "%s",
			 of + strlen(CHECK_OF_MARK));
}

static void sampler_tick(uv_timer_t *t)
{
	struct cluster *c = t->data;
	for (int i = 0; i < NODES; i++) {
		for (int j = 0; j < NODES; j++) {
			if (i == j || c->closed[i] || c->closed[j] || c->node[i] == NULL ||
			    c->node[j] == NULL)
				continue;
			int64_t m = tally_node_mono_ms(c->node[i]);
			tally_node_clock_sample(c->node[i], (uint64_t)j + 1,
						tally_node_wall_ms(c->node[j]), m, m);
		}
	}
}

static void node_open(struct cluster *c, int i, const char *bootstrap)
{
	c->clocks[i] = (struct node_clocks){c, i};
	struct tally_node_config cfg = {
		.id = (uint64_t)i + 1, .address = c->address[i], .dir = c->dir[i],
		.bootstrap = bootstrap, .heartbeat_ms = 50,
		.mono_ms = node_mono_ms, .wall_ms = node_wall_ms, .log_line = node_log_line,
		.hook_data = &c->clocks[i],
		/* valgrind runs one thread at a time: a snapshot stalls the loop */
		.election_timeout_ms = RUNNING_ON_VALGRIND ? 2000 : 400,
		.expire_interval_ms = 300, .map_size_bytes = 1ULL << 30,
		.snapshot_threshold = c->snapshot_threshold, .snapshot_trailing = 8,
		.snapshot_log_bytes = c->snapshot_log_bytes,
		.install_snapshot_timeout_ms = c->install_snapshot_ms,
	};
	char err[256];
	int rc = tally_node_init(&c->node[i], &c->loop, &cfg, err, sizeof(err));
	if (rc == 0)
		rc = tally_node_start(c->node[i], err, sizeof(err));
	if (rc != 0)
		fail_msg("node %d: %s", i + 1, err);
}

static int cluster_setup_with(void **state, unsigned snapshot_threshold, size_t log_bytes,
			      unsigned install_snapshot_ms)
{
	signal(SIGPIPE, SIG_IGN); /* a peer closing must not kill the process */
	fx_raft_heap_zeroed(true);
	struct cluster *c = calloc(1, sizeof(*c));
	assert_non_null(c);
	c->snapshot_threshold = snapshot_threshold;
	c->snapshot_log_bytes = log_bytes;
	c->install_snapshot_ms = install_snapshot_ms;
	assert_int_equal(uv_loop_init(&c->loop), 0);
	tally_arena_init(&c->f.build, 64 << 10, 0);
	c->admin = admin(&c->f);
	c->dealer = who(&c->f, TALLY__V1__ROLE__DEALER, "dealer", "*");
	char *bootstrap = c->bootstrap;
	const int offsets[] = {1, 2, 3, 10, 101, 102, 103, 110};
	assert_true(NODES <= 3);
	ports_acquire(&ports, offsets, sizeof(offsets) / sizeof(offsets[0]));
	for (int i = 0; i < NODES; i++) {
		c->dir[i] = fx_tmpdir();
		unsigned raft = port_of(1 + i), client = port_of(101 + i);
		snprintf(c->client[i], sizeof(c->client[i]), "127.0.0.1:%u", client);
		snprintf(c->address[i], sizeof(c->address[i]), "127.0.0.1:%u|127.0.0.1:%u", raft, client);
		size_t at = strlen(bootstrap);
		snprintf(bootstrap + at, sizeof(c->bootstrap) - at, "%s%d=%s", i ? "," : "", i + 1,
			 c->address[i]);
	}
	for (int i = 0; i < NODES; i++)
		node_open(c, i, bootstrap);
	assert_int_equal(uv_timer_init(&c->loop, &c->sampler), 0);
	c->sampler.data = c;
	uv_timer_start(&c->sampler, sampler_tick, 0, SAMPLE_INTERVAL_MS);
	*state = c;
	return 0;
}

static int cluster_setup(void **state)
{
	return cluster_setup_with(state, 32, 0, 0); /* exercise snapshots */
}

/* Snapshots only by the bytes of the log: a threshold of entries never reached. */
static int cluster_setup_log_budget(void **state)
{
	return cluster_setup_with(state, 1000000, LOG_BUDGET_BYTES, 0);
}

/* A leader that would wait 30 days for an InstallSnapshot's answer: only an answer it
 * heeds ends the wait. Longer than any test machine has been up, on purpose: raft's
 * clock (libuv's loop time) counts from boot, and a wait ended by setting the last send
 * back by the timeout once failed only where the clock had not reached it. */
#define INSTALL_WAIT_LONG_MS (30u * 24 * 3600 * 1000)
static int cluster_setup_long_install_wait(void **state)
{
	return cluster_setup_with(state, 32, 0, INSTALL_WAIT_LONG_MS);
}

static void on_node_closed(void *data)
{
	*(bool *)data = true;
}

static bool all_closed(struct cluster *c)
{
	for (int i = 0; i < NODES; i++)
		if (!c->closed[i])
			return false;
	return true;
}

static int cluster_teardown(void **state)
{
	struct cluster *c = *state;
	for (int i = 0; i < NODES; i++)
		if (!c->closed[i])
			tally_node_close(c->node[i], on_node_closed, &c->closed[i]);
	assert_true(run_until(c, all_closed, WAIT_MS));
	c->sampler.data = &c->sampler_closed;
	uv_close((uv_handle_t *)&c->sampler, handle_closed);
	for (int i = 0; i < NODES; i++) {
		tally_node_free(c->node[i]);
		fx_remove_dir(c->dir[i]);
		free(c->dir[i]);
	}
	uv_run(&c->loop, UV_RUN_DEFAULT); /* nothing may be left running */
	assert_int_equal(uv_loop_close(&c->loop), 0);
	tally_arena_free(&c->f.build);
	free(c);
	fx_raft_heap_zeroed(false);
	ports_release(&ports); /* the next group takes a block of its own */
	return 0;
}

/* ---- tests -------------------------------------------------------------------------- */

static void test_bootstrapped_cluster_elects_one_leader(void **state)
{
	struct cluster *c = *state;
	assert_true(run_until(c, one_leader, WAIT_MS));
	int leader = leader_of(c);
	assert_string_equal(tally_node_leader_client(c->node[leader]), c->client[leader]);
}

static void test_concurrent_commands_are_group_committed_and_each_gets_its_result(void **state)
{
	struct cluster *c = *state;
	Tally__V1__Command *setup[3] = {
		c_brand(&c->f, c->admin, "aurora", 0), c_member(&c->f, c->admin, "m1"),
		c_member(&c->f, c->admin, "m2")};
	struct outcome setup_o[3];
	submit_until_ok(c, setup, setup_o, 3, 0);

	int leader = leader_of(c);
	assert_true(leader >= 0);
	const struct tally_node_stats *s = tally_node_stats(c->node[leader]);
	uint64_t commits0 = s->commits, commands0 = s->commands;
	static Tally__V1__Command *cmds[ACCRUES];
	static struct outcome acc[ACCRUES];
	for (int i = 0; i < ACCRUES; i++)
		cmds[i] = c_accrue(&c->f, c->dealer, "aurora", "m1", POINTS_EACH);
	unsigned resubmitted = submit_until_ok(c, cmds, acc, ACCRUES, 0);
	int64_t max_available = 0;
	for (int i = 0; i < ACCRUES; i++)
		max_available = acc[i].available > max_available ? acc[i].available : max_available;
	assert_int_equal(max_available, ACCRUES * POINTS_EACH);
	uint64_t commits = s->commits - commits0, commands = s->commands - commands0;
	if (resubmitted > 0 || leader_of(c) != leader)
		return; /* leadership moved during the run: the counters are split */
	assert_true(commands >= ACCRUES);
	if (commits >= commands)
		fail_msg("%llu raft entries for %llu commands: no group commit",
			 (unsigned long long)commits, (unsigned long long)commands);
}

/* Many entries in flight at once travel together in AppendEntries messages and segment
 * writes; each must arrive intact (raft 0.15 needs 8-byte multiples, see node.c). */
static void test_batches_proposed_back_to_back_replicate_intact(void **state)
{
	struct cluster *c = *state;
	int leader = leader_of(c);
	assert_true(leader >= 0);
	const struct tally_node_stats *s = tally_node_stats(c->node[leader]);
	uint64_t commits0 = s->commits;
	static Tally__V1__Command *cmds[ROUNDS * PER_ROUND];
	static struct outcome acc[ROUNDS * PER_ROUND];
	for (int i = 0; i < ROUNDS * PER_ROUND; i++)
		cmds[i] = c_accrue(&c->f, c->dealer, "aurora", "m2", 1 + i % 7);
	unsigned resubmitted = submit_until_ok(c, cmds, acc, ROUNDS * PER_ROUND, PER_ROUND);
	if (resubmitted == 0 && leader_of(c) == leader)
		assert_true(s->commits - commits0 >= ROUNDS / 2); /* really several entries */
}

static void test_follower_answers_submit_with_not_leader_and_the_leader_client_address(void **state)
{
	struct cluster *c = *state;
	int leader = leader_of(c);
	int f = follower_of(c, leader);
	struct outcome o = {0};
	tally_node_submit(c->node[f], c_accrue(&c->f, c->dealer, "aurora", "m1", 1), on_result, &o);
	assert_true(o.done); /* at once */
	assert_int_equal(o.code, CODE(NOT_LEADER));
	assert_string_equal(o.message, c->client[leader]);
}

static void test_linearizable_query_is_served_by_the_leader_and_sees_every_commit(void **state)
{
	struct cluster *c = *state;
	int leader = leader_of(c);
	int f = follower_of(c, leader);
	struct outcome via_follower = {0}, via_leader = {0};
	tally_node_query(c->node[f], accounts_query(c, false), c->admin, on_query, &via_follower);
	assert_true(via_follower.done);
	assert_int_equal(via_follower.code, CODE(NOT_LEADER));
	assert_string_equal(via_follower.message, c->client[leader]);

	tally_node_query(c->node[leader], accounts_query(c, false), c->admin, on_query, &via_leader);
	wait_all(c, &via_leader, 1, WAIT_MS);
	assert_int_equal(via_leader.code, CODE(OK));
	assert_int_equal(via_leader.available, ACCRUES * POINTS_EACH);
	assert_true(via_leader.applied_index > 0);
}

/* Every follower's stale read reflects the leader's applied index (polled). */
static bool followers_caught_up(struct cluster *c)
{
	for (int i = 0; i < NODES; i++) {
		if (c->closed[i])
			continue;
		struct outcome o = {0};
		tally_node_query(c->node[i], accounts_query(c, true), c->admin, on_query, &o);
		assert_true(o.done); /* stale reads answer at once */
		if (o.code != CODE(OK) || o.applied_index < c->target_index || o.available != ACCRUES * POINTS_EACH)
			return false;
	}
	return true;
}

static void test_stale_queries_on_followers_reach_the_leader_applied_index(void **state)
{
	struct cluster *c = *state;
	int leader = leader_of(c);
	c->target_index = tally_ledger_applied_index(tally_node_ledger(c->node[leader]));
	assert_true(c->target_index > 0);
	assert_true(run_until(c, followers_caught_up, WAIT_MS));
}

/* All open replicas at the same applied index with the same digest. */
static bool replicas_identical(struct cluster *c)
{
	struct tally_digest first = {0};
	bool have = false;
	for (int i = 0; i < NODES; i++) {
		if (c->closed[i])
			continue;
		struct tally_digest d;
		assert_int_equal(tally_ledger_digest(tally_node_ledger(c->node[i]), &d), 0);
		if (have && memcmp(&d, &first, sizeof(d)) != 0)
			return false;
		first = d;
		have = true;
	}
	return true;
}

static void test_every_replica_reaches_the_same_digest_and_contents(void **state)
{
	struct cluster *c = *state;
	/* The expire timer keeps adding entries: wait for a moment all replicas agree. */
	assert_true(run_until(c, replicas_identical, WAIT_MS));
	uint8_t h[NODES][32];
	for (int i = 0; i < NODES; i++)
		assert_int_equal(tally_ledger_content_hash(tally_node_ledger(c->node[i]), h[i]), 0);
	struct tally_digest d[NODES];
	for (int i = 0; i < NODES; i++)
		assert_int_equal(tally_ledger_digest(tally_node_ledger(c->node[i]), &d[i]), 0);
	/* Only compare contents when no entry slipped in between the two reads. */
	if (memcmp(&d[0], &d[1], sizeof(d[0])) == 0 && memcmp(&d[0], &d[2], sizeof(d[0])) == 0) {
		assert_memory_equal(h[0], h[1], 32);
		assert_memory_equal(h[0], h[2], 32);
	}
	assert_true(d[0].tree_size >= 3 + ACCRUES + ROUNDS * PER_ROUND);
}

static bool leader_expired_twice(struct cluster *c)
{
	int leader = leader_of(c);
	return leader >= 0 && tally_node_stats(c->node[leader])->commands >= c->target_commands;
}

static void test_leader_submits_expire_commands_on_its_timer(void **state)
{
	struct cluster *c = *state;
	int leader = leader_of(c);
	/* No client submits now: only the expire timer (300 ms) can add commands. */
	c->target_commands = tally_node_stats(c->node[leader])->commands + 2;
	assert_true(run_until(c, leader_expired_twice, WAIT_MS));
	assert_int_equal(tally_node_stats(c->node[leader])->rejections[CODE(PERMISSION_DENIED)], 0);
}

static void test_status_lists_the_configuration_and_the_leader(void **state)
{
	struct cluster *c = *state;
	int leader = leader_of(c);
	int f = follower_of(c, leader);
	struct tally_arena a;
	tally_arena_init(&a, 4096, 0);
	Tally__V1__Status st;
	tally_node_status(c->node[f], &a, &st);
	assert_string_equal(st.state, "follower");
	assert_int_equal(st.node_id, (uint64_t)f + 1);
	assert_int_equal(st.n_nodes, NODES);
	for (size_t i = 0; i < st.n_nodes; i++)
		assert_string_equal(st.nodes[i]->role, "voter");
	assert_non_null(st.leader);
	assert_int_equal(st.leader->id, (uint64_t)leader + 1);
	assert_string_equal(st.leader->client_address, c->client[leader]);
	assert_true(st.term > 0 && st.applied_index > 0);
	tally_arena_free(&a);
}

/* ---- ledger time (consensus/clock.h) ------------------------------------------------ */

/* Holds `points` of m2 for timeout_s on the leader; the hold's id. (m2: test
 * _closing_the_leader counts m1's balance.) */
static uint64_t hold_m2(struct cluster *c, int64_t points, uint32_t timeout_s)
{
	Tally__V1__Command *cmd = c_hold(&c->f, c->admin, "aurora", "m2", points, timeout_s);
	struct outcome o;
	submit_until_ok(c, &cmd, &o, 1, 0);
	assert_true(o.hold_id > 0);
	return o.hold_id;
}

/* Captures a hold through the leader; the result code (OK, HOLD_EXPIRED, ...). */
static Tally__V1__ResultCode capture(struct cluster *c, uint64_t hold)
{
	assert_true(run_until(c, one_leader, WAIT_MS));
	struct outcome o = {0};
	tally_node_submit(c->node[leader_of(c)], c_capture(&c->f, c->admin, hold, 0), on_result, &o);
	wait_all(c, &o, 1, WAIT_MS);
	return o.code;
}

/* The node's ledger time is not ahead of real time by more than the documented bound. */
static void assert_ledger_time_bounded(struct cluster *c, int i)
{
	int64_t ledger = tally_ledger_time_ms(tally_node_ledger(c->node[i]));
	int64_t real = real_ms(CLOCK_REALTIME);
	if (ledger > real + CLOCK_ERROR_MAX_MS)
		fail_msg("node %d's ledger time is %lld ms ahead of real time (bound %d ms)", i + 1,
			 (long long)(ledger - real), CLOCK_ERROR_MAX_MS);
}

/* Every node's clocks agree, all three, within the bound: no sample of a clock a
 * previous test moved is still held (samples live CLOCK_SAMPLE_AGE_MAX_MS; under
 * valgrind the sampler can lag the reset, and a stale sample of a clock an hour ahead
 * would agree with a node a test now moves an hour ahead: two faulty clocks of three,
 * outside what ledger time promises). */
static bool clocks_settled(struct cluster *c)
{
	unsigned open = 0;
	for (int i = 0; i < NODES; i++)
		open += !c->closed[i] && c->node[i] != NULL;
	for (int i = 0; i < NODES; i++) {
		struct tally_node_clock k;
		if (c->closed[i] || c->node[i] == NULL)
			continue;
		tally_node_clock_status(c->node[i], &k);
		if (!k.synchronized || k.agreeing != open || k.offset_ms > CLOCK_ERROR_MAX_MS ||
		    k.offset_ms < -CLOCK_ERROR_MAX_MS)
			return false;
	}
	return true;
}

static bool leader_synchronized_off_an_hour(struct cluster *c)
{
	int leader = leader_of(c);
	struct tally_node_clock k;
	if (leader < 0)
		return false;
	tally_node_clock_status(c->node[leader], &k);
	return k.synchronized && k.offset_ms > 3600000 - CLOCK_ERROR_MAX_MS;
}

/* A leader whose wall clock steps an hour ahead is outvoted by the other two: its
 * batches carry the majority's time, and a hold of 120 s still captures. */
static void test_a_leader_whose_clock_steps_an_hour_ahead_releases_no_hold_early(void **state)
{
	struct cluster *c = *state;
	assert_true(run_until(c, one_leader, WAIT_MS));
	assert_true(run_until(c, clocks_settled, WAIT_MS));
	int leader = leader_of(c);
	uint64_t hold = hold_m2(c, 10, 120);
	c->wall_offset_ms[leader] = 3600000;
	assert_true(run_until(c, leader_synchronized_off_an_hour, WAIT_MS));
	Tally__V1__Command *cmd = c_accrue(&c->f, c->dealer, "aurora", "m2", 1);
	struct outcome o;
	submit_until_ok(c, &cmd, &o, 1, 0); /* a batch stamped after the step */
	assert_ledger_time_bounded(c, leader_of(c));
	assert_int_equal(capture(c, hold), CODE(OK));
	c->wall_offset_ms[leader] = 0;
}

static int new_leader = -1;
static bool transfer_answered;

static void on_transfer(void *data, Tally__V1__ResultCode code, const char *msg)
{
	(void)data;
	transfer_answered = true;
	if (code != CODE(OK))
		print_message("transfer: %s\n", msg);
}

static bool new_leader_elected(struct cluster *c)
{
	return leader_of(c) == new_leader;
}

static bool transfer_over(struct cluster *c)
{
	return transfer_answered && leader_of(c) >= 0;
}

/* Makes node `to` the leader. A transfer is not certain to succeed (on a busy machine
 * the target may not win within an election timeout, and another node may win the
 * election that follows): it is asked again of whoever leads until `to` does. */
static void transfer_to(struct cluster *c, int to)
{
	new_leader = to;
	for (int attempt = 0; attempt < 20 && !new_leader_elected(c); attempt++) {
		assert_true(run_until(c, one_leader, WAIT_MS));
		transfer_answered = false;
		tally_node_transfer(c->node[leader_of(c)], (uint64_t)to + 1, on_transfer, NULL);
		assert_true(run_until(c, transfer_over, WAIT_MS));
	}
	assert_true(new_leader_elected(c));
}

/* A follower an hour ahead that wins leadership (a transfer here) stamps the
 * majority's time from its first batch on. */
static void test_a_node_an_hour_ahead_at_election_releases_no_hold_early(void **state)
{
	struct cluster *c = *state;
	assert_true(run_until(c, one_leader, WAIT_MS));
	assert_true(run_until(c, clocks_settled, WAIT_MS));
	int leader = leader_of(c);
	uint64_t hold = hold_m2(c, 10, 120);
	int to = follower_of(c, leader);
	c->wall_offset_ms[to] = 3600000;
	struct outcome o = {0};
	transfer_to(c, to);
	Tally__V1__Command *cmd = c_accrue(&c->f, c->dealer, "aurora", "m2", 1);
	submit_until_ok(c, &cmd, &o, 1, 0);
	assert_ledger_time_bounded(c, new_leader);
	assert_int_equal(capture(c, hold), CODE(OK));
	c->wall_offset_ms[new_leader] = 0;
}

static bool hold_released(struct cluster *c)
{
	int leader = leader_of(c);
	Tally__V1__Account *a = NULL;
	if (leader < 0)
		return false;
	struct tally_ledger *l = tally_node_ledger(c->node[leader]);
	if (tally_ledger_account(l, "aurora", "m2", false, &c->f.build, &a) != 0)
		return false;
	return a->held == 0;
}

/* Every clock agrees that 20 minutes passed that the ledger did not see (as after a
 * whole-cluster outage): ledger time catches up at once and a 15-minute hold is
 * released by the next sweep. */
static void test_when_every_clock_agrees_time_passed_ledger_time_catches_up(void **state)
{
	struct cluster *c = *state;
	assert_true(run_until(c, one_leader, WAIT_MS));
	assert_true(run_until(c, clocks_settled, WAIT_MS));
	uint64_t hold = hold_m2(c, 10, 900);
	int leader = leader_of(c);
	uint64_t catchups0;
	struct tally_node_clock k;
	tally_node_clock_status(c->node[leader], &k);
	catchups0 = k.catchups;
	for (int i = 0; i < NODES; i++)
		c->wall_offset_ms[i] = 1200000;
	assert_true(run_until(c, hold_released, WAIT_MS));
	assert_int_equal(capture(c, hold), CODE(HOLD_EXPIRED));
	tally_node_clock_status(c->node[leader_of(c)], &k);
	if (leader_of(c) == leader)
		assert_true(k.catchups > catchups0);
	assert_true(k.synchronized);
}

static bool leader_synchronized_is(struct cluster *c, bool want)
{
	int leader = leader_of(c);
	struct tally_node_clock k;
	if (leader < 0)
		return false;
	tally_node_clock_status(c->node[leader], &k);
	return k.synchronized == want;
}

static bool leader_unsynchronized(struct cluster *c)
{
	return leader_synchronized_is(c, false);
}

static bool leader_synchronized(struct cluster *c)
{
	return leader_synchronized_is(c, true);
}

/* When no two clocks agree there is no ledger time: a command is refused UNAVAILABLE
 * (definitely not applied) rather than stamped with a guess; writes resume once a
 * majority agrees again. */
static void test_without_a_majority_of_agreeing_clocks_writes_are_refused_unapplied(void **state)
{
	struct cluster *c = *state;
	assert_true(run_until(c, one_leader, WAIT_MS));
	assert_true(run_until(c, clocks_settled, WAIT_MS));
	int64_t base = c->wall_offset_ms[0];
	c->wall_offset_ms[0] = base + 3600000;
	c->wall_offset_ms[1] = base - 3600000;
	c->wall_offset_ms[2] = base + 7200000;
	assert_true(run_until(c, leader_unsynchronized, WAIT_MS)); /* old samples aged out */
	int leader = leader_of(c);
	uint64_t index0 = tally_ledger_applied_index(tally_node_ledger(c->node[leader]));
	struct outcome o = {0};
	tally_node_submit(c->node[leader], c_accrue(&c->f, c->dealer, "aurora", "m2", 1), on_result, &o);
	wait_all(c, &o, 1, WAIT_MS);
	if (o.code == CODE(NOT_LEADER))
		skip(); /* leadership moved meanwhile: nothing to conclude */
	assert_int_equal(o.code, CODE(UNAVAILABLE));
	assert_non_null(strstr(o.message, "no ledger time"));
	assert_int_equal(tally_ledger_applied_index(tally_node_ledger(c->node[leader])), index0);
	for (int i = 0; i < NODES; i++)
		c->wall_offset_ms[i] = base;
	assert_true(run_until(c, leader_synchronized, WAIT_MS));
	Tally__V1__Command *cmd = c_accrue(&c->f, c->dealer, "aurora", "m2", 1);
	submit_until_ok(c, &cmd, &o, 1, 0);
}

static int closed_leader = -1;

static bool closed_and_new_leader(struct cluster *c)
{
	int leader = leader_of(c);
	return c->closed[closed_leader] && leader >= 0 && leader != closed_leader;
}

static void test_closing_the_leader_elects_a_new_one_that_accepts_commands(void **state)
{
	struct cluster *c = *state;
	closed_leader = leader_of(c);
	assert_true(closed_leader >= 0);
	/* Commands in flight when the close starts get an answer (OK or a transport code). */
	struct outcome racing = {0};
	tally_node_submit(c->node[closed_leader], c_accrue(&c->f, c->dealer, "aurora", "m1", 5),
			  on_result, &racing);
	uv_run(&c->loop, UV_RUN_NOWAIT); /* proposed: in flight when the close starts */
	tally_node_close(c->node[closed_leader], on_node_closed, &c->closed[closed_leader]);
	assert_true(run_until(c, closed_and_new_leader, WAIT_MS));
	assert_true(racing.done);
	assert_true(racing.code == CODE(OK) || racing.code == CODE(UNAVAILABLE) ||
		    racing.code == CODE(TIMEOUT));

	Tally__V1__Command *more = c_accrue(&c->f, c->dealer, "aurora", "m1", 7);
	struct outcome o;
	submit_until_ok(c, &more, &o, 1, 0);
	int leader = leader_of(c);
	int64_t expected = ACCRUES * POINTS_EACH + 7 + (racing.code == CODE(OK) ? 5 : 0);
	assert_int_equal(o.available, expected);

	int f = follower_of(c, leader);
	struct outcome redirect = {0};
	tally_node_submit(c->node[f], c_accrue(&c->f, c->dealer, "aurora", "m1", 1), on_result,
			  &redirect);
	assert_true(redirect.done);
	assert_int_equal(redirect.code, CODE(NOT_LEADER));
	assert_string_equal(redirect.message, c->client[leader]);
}

static bool lone_closed;

static bool lone_node_closed(struct cluster *c)
{
	(void)c;
	return lone_closed;
}

static void test_misconfigured_node_is_refused_and_an_unstarted_node_closes_cleanly(void **state)
{
	struct cluster *c = *state;
	char *dir = fx_tmpdir(), address[96], err[256];
	snprintf(address, sizeof(address), "127.0.0.1:%u|127.0.0.1:%u", port_of(10), port_of(110));
	struct tally_node *n = NULL;
	struct tally_node_config bad = {.id = 0, .address = address, .dir = dir};
	assert_int_equal(tally_node_init(&n, &c->loop, &bad, err, sizeof(err)), TALLY_EINVAL);
	assert_null(n);

	struct tally_node_config cfg = {.id = 9, .address = address, .dir = dir,
					.bootstrap = "1=127.0.0.1:1|127.0.0.1:2",
					.map_size_bytes = 1ULL << 30};
	assert_int_equal(tally_node_init(&n, &c->loop, &cfg, err, sizeof(err)), 0);
	assert_int_equal(tally_node_start(n, err, sizeof(err)), TALLY_EINVAL);
	assert_non_null(strstr(err, "not listed"));
	struct outcome o = {0};
	tally_node_submit(n, c_accrue(&c->f, c->dealer, "aurora", "m1", 1), on_result, &o);
	assert_true(o.done);
	assert_int_equal(o.code, CODE(UNAVAILABLE));
	lone_closed = false;
	tally_node_close(n, on_node_closed, &lone_closed);
	assert_true(run_until(c, lone_node_closed, WAIT_MS));
	tally_node_free(n);
	fx_remove_dir(dir);
	free(dir);
}

/* The index of the latest snapshot in node i's raft directory (0: none); its size in
 * *bytes when bytes is not NULL. */
static unsigned long long latest_snapshot(struct cluster *c, int i, uint64_t *bytes)
{
	char path[512], latest_name[256] = "";
	snprintf(path, sizeof(path), "%s/raft", c->dir[i]);
	DIR *d = opendir(path);
	assert_non_null(d);
	unsigned long long latest = 0, term, index, ms;
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		if (strstr(e->d_name, ".meta") == NULL &&
		    sscanf(e->d_name, "snapshot-%llu-%llu-%llu", &term, &index, &ms) == 3 &&
		    index > latest) {
			latest = index;
			snprintf(latest_name, sizeof(latest_name), "%s", e->d_name);
		}
	closedir(d);
	if (bytes != NULL) {
		struct stat st;
		snprintf(path, sizeof(path), "%s/raft/%s", c->dir[i], latest_name);
		assert_int_equal(stat(path, &st), 0);
		*bytes = (uint64_t)st.st_size;
	}
	return latest;
}

static unsigned long long latest_snapshot_index(struct cluster *c, int i)
{
	return latest_snapshot(c, i, NULL);
}

/* A leader waits for an InstallSnapshot's answer 30 s (the default), plus a second per
 * TALLY_NODE_SNAPSHOT_SEND_RATE bytes of its latest snapshot. */
static uint64_t install_wait_ms(const struct cluster *c, uint64_t snapshot_bytes)
{
	uint64_t base = c->install_snapshot_ms != 0 ? c->install_snapshot_ms : 30000;
	return base + snapshot_bytes * 1000 / TALLY_NODE_SNAPSHOT_SEND_RATE;
}

/* Node i waits as long for an InstallSnapshot's answer as its latest snapshot needs. */
static bool install_wait_fits(struct cluster *c, int i)
{
	uint64_t bytes;
	latest_snapshot(c, i, &bytes);
	return tally_node_stats(c->node[i])->install_snapshot_timeout_ms == install_wait_ms(c, bytes);
}

static bool install_waits_fit(struct cluster *c)
{
	for (int i = 0; i < NODES; i++)
		if (!install_wait_fits(c, i))
			return false;
	return true;
}

static bool restarted_caught_up(struct cluster *c)
{
	return tally_ledger_applied_index(tally_node_ledger(c->node[closed_leader])) >=
		       c->target_index && replicas_identical(c);
}

static bool restarted_checked(struct cluster *c)
{
	return closed_leader >= 0 && c->checked[closed_leader][0] != '\0';
}

/* Node i's ledger as after a reboot: its mark names another boot (consensus/bootmark.c),
 * so its next start restores raft's latest snapshot over it. */
static void mark_another_boot(struct cluster *c, int i)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/ledger.boot", c->dir[i]);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "00000000-0000-0000-0000-000000000000 0:0\n");
	assert_int_equal(fclose(f), 0);
}

static int snapshots_on_disk(struct cluster *c, int i);

static bool restarted_closed(struct cluster *c)
{
	return c->closed[closed_leader];
}

static void test_restarted_node_catches_up_from_a_snapshot_and_matches(void **state)
{
	struct cluster *c = *state;
	int leader = leader_of(c);
	assert_true(leader >= 0 && closed_leader >= 0 && c->closed[closed_leader]);
	/* Enough entries while it is down that the leader compacts past its log. It
	 * restores its own snapshot at start, then catches up from the leader's snapshot or
	 * from entries the leader queued for it while it was down (raft_uv keeps a few
	 * messages for a peer it cannot reach): which one is timing. The wiped node below
	 * must install the leader's. */
	static Tally__V1__Command *cmds[2 * ROUNDS];
	static struct outcome acc[2 * ROUNDS];
	for (int r = 0; r < 2 * ROUNDS; r++)
		cmds[r] = c_accrue(&c->f, c->dealer, "aurora", "m2", 1);
	submit_until_ok(c, cmds, acc, 2 * ROUNDS, 1);
	leader = leader_of(c);
	c->target_index = tally_ledger_applied_index(tally_node_ledger(c->node[leader]));

	tally_node_free(c->node[closed_leader]);
	c->node[closed_leader] = NULL;
	c->closed[closed_leader] = false;
	c->checked[closed_leader][0] = '\0';
	mark_another_boot(c, closed_leader);
	node_open(c, closed_leader, c->bootstrap); /* bootstrap is ignored: state exists */
	assert_false(tally_node_stats(c->node[closed_leader])->ledger_kept_at_start);
	/* If the InstallSnapshot arrives while the node takes a snapshot of its own (it
	 * replays past the threshold), raft 0.15 drops it (RAFT_BUSY) and the leader only
	 * resends after install_snapshot_timeout, 30 s by default: allow for one resend. */
	assert_true(run_until(c, restarted_caught_up, 30000 + WAIT_MS));
	/* The restored ledger was checked in raft's snapshot file, not in the live ledger
	 * (whose freed pages a check's reader would keep from reuse meanwhile). */
	assert_true(run_until(c, restarted_checked, WAIT_MS));
	char raft_files[512];
	snprintf(raft_files, sizeof(raft_files), "%s/raft/snapshot-", c->dir[closed_leader]);
	if (strncmp(c->checked[closed_leader], raft_files, strlen(raft_files)) != 0)
		fail_msg("checked %s, not a file %s*", c->checked[closed_leader], raft_files);
	char msg[256];
	assert_int_equal(tally_ledger_check_invariants(tally_node_ledger(c->node[closed_leader]),
						       msg, sizeof(msg)), 0);

	/* Closed and opened again in the same boot, it keeps that ledger over its latest
	 * snapshot: nothing restored, nothing to check, and it catches up all the same. */
	assert_true(snapshots_on_disk(c, closed_leader) >= 1);
	tally_node_close(c->node[closed_leader], on_node_closed, &c->closed[closed_leader]);
	assert_true(run_until(c, restarted_closed, WAIT_MS));
	tally_node_free(c->node[closed_leader]);
	c->node[closed_leader] = NULL;
	c->closed[closed_leader] = false;
	c->checked[closed_leader][0] = '\0';
	node_open(c, closed_leader, c->bootstrap);
	assert_true(tally_node_stats(c->node[closed_leader])->ledger_kept_at_start);
	Tally__V1__Command *one = c_accrue(&c->f, c->dealer, "aurora", "m2", 1);
	struct outcome o;
	submit_until_ok(c, &one, &o, 1, 0);
	c->target_index = tally_ledger_applied_index(tally_node_ledger(c->node[leader_of(c)]));
	assert_true(run_until(c, restarted_caught_up, WAIT_MS));
	assert_string_equal(c->checked[closed_leader], "");
}

static int wiped = -1;

static bool wiped_closed(struct cluster *c)
{
	return c->closed[wiped];
}

static bool wiped_caught_up(struct cluster *c)
{
	return tally_ledger_applied_index(tally_node_ledger(c->node[wiped])) >= c->target_index &&
	       replicas_identical(c);
}

static bool wiped_checked(struct cluster *c)
{
	return c->checked[wiped][0] != '\0';
}

static bool wiped_install_wait_fits(struct cluster *c)
{
	return install_wait_fits(c, wiped);
}

/* Snapshots (raft_uv's snapshot-TERM-INDEX-TIME files) in node i's raft directory. */
static int snapshots_on_disk(struct cluster *c, int i)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/raft", c->dir[i]);
	DIR *d = opendir(path);
	assert_non_null(d);
	int n = 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		n += strncmp(e->d_name, "snapshot-", 9) == 0 && strstr(e->d_name, ".meta") == NULL;
	closedir(d);
	return n;
}

static bool every_node_snapshotted(struct cluster *c)
{
	for (int i = 0; i < NODES; i++)
		if (snapshots_on_disk(c, i) == 0)
			return false;
	return true;
}

/* Every node has released a snapshot it took that raft stored as the copy itself
 * (consensus/snapstore.h), not written again. */
static bool every_node_stored_a_copy_itself(struct cluster *c)
{
	for (int i = 0; i < NODES; i++)
		if (tally_node_stats(c->node[i])->snapshots_adopted == 0)
			return false;
	return true;
}

/* Every node has taken a snapshot over the file of one raft had removed. */
static bool every_node_reused_a_snapshot_file(struct cluster *c)
{
	for (int i = 0; i < NODES; i++)
		if (tally_node_stats(c->node[i])->snapshots_reused == 0)
			return false;
	return true;
}

/* Brand aurora and one member of it, on a fresh cluster. */
static void open_brand_and_member(struct cluster *c, const char *member)
{
	Tally__V1__Command *setup[2] = {c_brand(&c->f, c->admin, "aurora", 0),
					c_member(&c->f, c->admin, member)};
	struct outcome setup_o[2];
	submit_until_ok(c, setup, setup_o, 2, 0);
}

/* A follower that lost its data comes back empty: the leader no longer holds the log
 * from its start, so it must send its snapshot. (A node restarted with its data may
 * catch up either way: messages the leader queued while it was down can still carry
 * the entries.) The leader still counts the follower's old match index, past its
 * snapshot, so raft 0.15 would ignore the answer to the InstallSnapshot and wait out
 * install_snapshot_timeout, here 30 days (cluster_setup_long_install_wait):
 * consensus/raft015.c ends that wait once the answer shows the snapshot installed. */
static void test_a_wiped_node_rejoins_by_installing_the_leaders_snapshot(void **state)
{
	struct cluster *c = *state;
	open_brand_and_member(c, "m2");
	/* Entries one at a time: snapshots every 32, 8 kept after each, so the leader's log
	 * soon starts far past index 2; every follower has all of them. */
	static Tally__V1__Command *cmds[2 * ROUNDS];
	static struct outcome acc[2 * ROUNDS];
	for (int r = 0; r < 2 * ROUNDS; r++)
		cmds[r] = c_accrue(&c->f, c->dealer, "aurora", "m2", 1);
	submit_until_ok(c, cmds, acc, 2 * ROUNDS, 1);
	assert_true(run_until(c, every_node_snapshotted, WAIT_MS));
	assert_true(run_until(c, replicas_identical, WAIT_MS));
	int leader = leader_of(c);
	c->target_index = tally_ledger_applied_index(tally_node_ledger(c->node[leader]));
	assert_true(c->target_index > 64);
	wiped = follower_of(c, leader);
	assert_true(wiped >= 0);
	tally_node_close(c->node[wiped], on_node_closed, &c->closed[wiped]);
	assert_true(run_until(c, wiped_closed, WAIT_MS));
	tally_node_free(c->node[wiped]);
	c->node[wiped] = NULL;
	c->closed[wiped] = false;
	char path[600];
	snprintf(path, sizeof(path), "%s/raft", c->dir[wiped]);
	fx_remove_dir(path);
	snprintf(path, sizeof(path), "%s/ledger", c->dir[wiped]);
	fx_remove_dir(path);
	/* No state: it bootstraps the cluster's first configuration (index 1), as it did. */
	c->checked[wiped][0] = '\0';
	node_open(c, wiped, c->bootstrap);
	assert_true(run_until(c, wiped_caught_up, WAIT_MS));
	assert_true(run_until(c, wiped_checked, WAIT_MS));
	/* It counts the snapshot it installed, and, were it to lead, would wait for a
	 * follower's answer as long as that snapshot's size asks (fsm.c). */
	const struct tally_node_stats *st = tally_node_stats(c->node[wiped]);
	assert_true(st->snapshots_installed >= 1);
	assert_true(st->install_snapshots_received >= st->snapshots_installed);
	assert_true(run_until(c, wiped_install_wait_fits, WAIT_MS));
	/* The snapshot it installed (the one its check read). When the leader had taken
	 * none past the follower's old index, raft 0.15 would have waited the 30 days, and the
	 * leader says it ended that wait. */
	unsigned long long term, index, ms;
	const char *name = strrchr(c->checked[wiped], '/');
	assert_non_null(name);
	assert_int_equal(sscanf(name, "/snapshot-%llu-%llu-%llu", &term, &index, &ms), 3);
	leader = leader_of(c);
	assert_true(leader >= 0);
	if (index <= c->target_index)
		assert_true(tally_node_stats(c->node[leader])->install_waits_ended >= 1);
	char msg[256];
	assert_int_equal(tally_ledger_check_invariants(tally_node_ledger(c->node[wiped]), msg,
						       sizeof(msg)), 0);
}


/* Accruals of 1 to m1, n in all, a round of BUDGET_ROUND commands (about one entry) at
 * a time, every node applying it before the next: raft 0.15 takes a snapshot at the end
 * of an apply pass, so many entries applied in one pass would blur the points at which
 * each node snapshots. */
static void budget_rounds(struct cluster *c, Tally__V1__Command **cmds, struct outcome *acc,
			  size_t n)
{
	enum { BUDGET_ROUND = 10 };
	for (size_t i = 0; i < n; i++)
		cmds[i] = c_accrue(&c->f, c->dealer, "aurora", "m1", 1);
	for (size_t i = 0; i < n; i += BUDGET_ROUND) {
		submit_until_ok(c, &cmds[i], &acc[i], n - i < BUDGET_ROUND ? n - i : BUDGET_ROUND, 0);
		assert_true(run_until(c, replicas_identical, WAIT_MS));
	}
}

/* raft 0.15 snapshots by entry count only and keeps every entry since in memory: with a
 * threshold never reached, the log's bytes alone must bring a snapshot (fsm.c), on
 * each node at its own points of the log. */
static void test_a_log_past_its_byte_budget_is_snapshotted(void **state)
{
	struct cluster *c = *state;
	open_brand_and_member(c, "m1");
	int leader = leader_of(c);
	assert_true(leader >= 0);
	assert_int_equal(snapshots_on_disk(c, leader), 0);
	/* Each round's entry is well over 100 bytes: 4 x the budget in all. */
	static Tally__V1__Command *cmds[4 * LOG_BUDGET_BYTES / 100];
	static struct outcome acc[4 * LOG_BUDGET_BYTES / 100];
	size_t n = sizeof(cmds) / sizeof(cmds[0]);
	budget_rounds(c, cmds, acc, n);
	/* taken on the thread pool, then stored by raft_uv: waited for */
	assert_true(run_until(c, every_node_snapshotted, WAIT_MS));
	assert_true(run_until(c, every_node_stored_a_copy_itself, WAIT_MS));
	assert_true(run_until(c, replicas_identical, WAIT_MS));
	/* Staggered: the nodes apply the same entries, but each snapshots at points a third
	 * of the budget from the others' (NODE_SNAPSHOT_PHASES), even after a first
	 * snapshot that all of them took late (each waits for the check of its ledger at
	 * start to end). */
	/* raft 0.15 sends a snapshot again once its wait for the answer is over: the wait
	 * grows with the snapshot, so a large one is not sent over and over (fsm.c). */
	assert_true(run_until(c, install_waits_fit, WAIT_MS));
	for (int i = 0; i < NODES; i++) {
		uint64_t bytes;
		latest_snapshot(c, i, &bytes);
		assert_true(install_wait_ms(c, bytes) > 30000); /* a snapshot over 16 KiB */
	}
	unsigned long long at[NODES];
	for (int i = 0; i < NODES; i++) {
		at[i] = latest_snapshot_index(c, i);
		for (int j = 0; j < i; j++)
			if (at[i] == at[j])
				fail_msg("nodes %d and %d both snapshotted last at index %llu", j + 1,
					 i + 1, at[i]);
	}
	/* More of the log, a budget at a time: once a node has three snapshots, raft removes
	 * the oldest, and the node's next copy is written over that file
	 * (consensus/snapstore.h). A node snapshots at most once per budget (fewer while
	 * one is still being stored): REUSE_BUDGETS_MAX is a bound, not a wait. */
	enum { REUSE_BUDGETS_MAX = 32 };
	static Tally__V1__Command *more[LOG_BUDGET_BYTES / 100];
	static struct outcome more_acc[LOG_BUDGET_BYTES / 100];
	for (int k = 0; k < REUSE_BUDGETS_MAX && !every_node_reused_a_snapshot_file(c); k++)
		budget_rounds(c, more, more_acc, sizeof(more) / sizeof(more[0]));
	assert_true(run_until(c, every_node_reused_a_snapshot_file, WAIT_MS)); /* counted once stored */
	assert_true(run_until(c, replicas_identical, WAIT_MS));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bootstrapped_cluster_elects_one_leader),
		cmocka_unit_test(test_concurrent_commands_are_group_committed_and_each_gets_its_result),
		cmocka_unit_test(test_batches_proposed_back_to_back_replicate_intact),
		cmocka_unit_test(test_follower_answers_submit_with_not_leader_and_the_leader_client_address),
		cmocka_unit_test(test_linearizable_query_is_served_by_the_leader_and_sees_every_commit),
		cmocka_unit_test(test_stale_queries_on_followers_reach_the_leader_applied_index),
		cmocka_unit_test(test_every_replica_reaches_the_same_digest_and_contents),
		cmocka_unit_test(test_leader_submits_expire_commands_on_its_timer),
		cmocka_unit_test(test_status_lists_the_configuration_and_the_leader),
		cmocka_unit_test(test_a_leader_whose_clock_steps_an_hour_ahead_releases_no_hold_early),
		cmocka_unit_test(test_a_node_an_hour_ahead_at_election_releases_no_hold_early),
		cmocka_unit_test(test_when_every_clock_agrees_time_passed_ledger_time_catches_up),
		cmocka_unit_test(test_without_a_majority_of_agreeing_clocks_writes_are_refused_unapplied),
		cmocka_unit_test(test_closing_the_leader_elects_a_new_one_that_accepts_commands),
		cmocka_unit_test(test_restarted_node_catches_up_from_a_snapshot_and_matches),
		cmocka_unit_test(test_misconfigured_node_is_refused_and_an_unstarted_node_closes_cleanly),
	};
	const struct CMUnitTest budget[] = {
		cmocka_unit_test(test_a_log_past_its_byte_budget_is_snapshotted),
	};
	const struct CMUnitTest wipe[] = {
		cmocka_unit_test(test_a_wiped_node_rejoins_by_installing_the_leaders_snapshot),
	};
	int failed = cmocka_run_group_tests(tests, cluster_setup, cluster_teardown);
	failed += cmocka_run_group_tests(budget, cluster_setup_log_budget, cluster_teardown);
	return failed + cmocka_run_group_tests(wipe, cluster_setup_long_install_wait,
					       cluster_teardown);
}
