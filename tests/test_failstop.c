/*
 * Fail-stop, readiness and room on disk (issue 8).
 *
 * A node that cannot apply a committed entry ends its process with a documented
 * status (consensus/node.h) before it answers anything it did not apply. Each such
 * node here runs in a child process — a single-node cluster on its own loop — so that
 * its real exit status can be checked; the parent then restarts the node in-process
 * and checks that everything committed is applied. Also: the readiness rule behind
 * /health, the exit status of each ledger error, and a writemap ledger's map, which
 * covers only blocks allocated on disk and grows with the data.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <valgrind/valgrind.h>

#include "consensus/flush.h"
#include "consensus/internal.h"
#include "ledger/internal.h"
#include "tests/ports.h"
#include "tests/util.h"

#define CODE(x) TALLY__V1__RESULT_CODE__##x
#define WAIT_MS 60000        /* watchdog: only a failing run waits this long */
#define FILL_ROUND 32        /* commands submitted in one loop turn: one raft entry */
#define FILL_ROUNDS_MAX 4000 /* a child whose ledger never fills up: a hang */
#define FULL_MAP_BYTES (1u << 20)

/* Exit statuses of a child for what is not the node's own doing. */
#define CHILD_SETUP_FAILED 90
#define CHILD_REFUSED 91     /* a command was answered with something but OK */
#define CHILD_NEVER_FULL 92

static struct ports_block ports = {0, -1};

/* A single-node cluster on a loop of its own: a child's, or the parent's restart. */
struct solo {
	uv_loop_t loop;
	struct tally_node *node;
	struct fx f;                     /* its arena: command builders */
	Tally__V1__Principal *admin, *dealer;
	unsigned answered;               /* commands, in the current round */
	int report_fd;                   /* a child writes a byte there per command acknowledged */
	bool queried, closed;
	int64_t available;               /* the query's answer, -1 if not OK */
};

/* A command's answer in a child: told to the parent at once, so that an answer given
 * just before the node ends itself is not lost. */
static void child_result(void *data, const Tally__V1__CommandResult *r)
{
	struct solo *ch = data;
	ch->answered++;
	if (r->code != CODE(OK))
		_exit(CHILD_REFUSED);
	if (write(ch->report_fd, "a", 1) != 1)
		_exit(CHILD_SETUP_FAILED);
}

/* Runs the loop until `done` holds, or the watchdog expires; returns whether it holds. */
static bool solo_run_until(struct solo *so, bool (*done)(struct solo *))
{
	uint64_t deadline = uv_now(&so->loop) + WAIT_MS;
	while (!done(so) && uv_now(&so->loop) < deadline)
		uv_run(&so->loop, UV_RUN_ONCE); /* the tick timer wakes it every heartbeat */
	return done(so);
}

static bool solo_ready(struct solo *so)
{
	struct tally_node_health h;
	tally_node_health(so->node, &h);
	return h.ready;
}

static bool solo_round_answered(struct solo *so)
{
	return so->answered == FILL_ROUND;
}

static void address_of(char *out, size_t cap)
{
	snprintf(out, cap, "127.0.0.1:%d|127.0.0.1:%d", ports.base + 1, ports.base + 101);
}

/* A single-node cluster in dir, started (ready once elected and its barrier done). */
static int node_up(uv_loop_t *loop, const char *dir, uint64_t map_cap_bytes,
		   unsigned writeback_age_ms, struct tally_node **out)
{
	char address[96], bootstrap[128], err[256];
	address_of(address, sizeof(address));
	snprintf(bootstrap, sizeof(bootstrap), "1=%s", address);
	struct tally_node_config cfg = {
		.id = 1, .address = address, .dir = dir, .bootstrap = bootstrap,
		.heartbeat_ms = 50, .election_timeout_ms = RUNNING_ON_VALGRIND ? 2000 : 400,
		.expire_interval_ms = 3600 * 1000, /* no expire commands among the test's */
		.map_size_bytes = map_cap_bytes, .writeback_age_ms = writeback_age_ms,
	};
	int rc = tally_node_init(out, loop, &cfg, err, sizeof(err));
	if (rc == 0)
		rc = tally_node_start(*out, err, sizeof(err));
	if (rc != 0)
		fprintf(stderr, "node: %s\n", err);
	return rc;
}

/* The child: a node whose ledger may grow to map_cap_bytes takes rounds of accruals
 * until it ends itself. Never returns. */
static void child_fill(const char *dir, uint64_t map_cap_bytes, int report_fd)
{
	static struct solo ch;
	ch.report_fd = report_fd;
	if (uv_loop_init(&ch.loop) != 0 ||
	    node_up(&ch.loop, dir, map_cap_bytes, 0, &ch.node) != 0 ||
	    !solo_run_until(&ch, solo_ready))
		_exit(CHILD_SETUP_FAILED);
	tally_arena_init(&ch.f.build, 64 << 10, 0);
	for (unsigned round = 0; round < FILL_ROUNDS_MAX; round++) {
		ch.answered = 0;
		tally_arena_reset(&ch.f.build);
		ch.admin = admin(&ch.f);
		ch.dealer = who(&ch.f, TALLY__V1__ROLE__DEALER, "dealer", "*");
		for (unsigned i = 0; i < FILL_ROUND; i++) {
			Tally__V1__Command *c =
				round == 0 && i == 0 ? c_brand(&ch.f, ch.admin, "aurora", 24)
				: round == 0 && i == 1 ? c_member(&ch.f, ch.admin, "m1")
						       : c_accrue(&ch.f, ch.dealer, "aurora", "m1", 1);
			tally_node_submit(ch.node, c, child_result, &ch);
		}
		if (!solo_run_until(&ch, solo_round_answered))
			_exit(CHILD_SETUP_FAILED);
	}
	_exit(CHILD_NEVER_FULL);
}

/* One child's run: its directory, its log, its pid and the read end of its pipe. */
struct run {
	char *root;
	char dir[300], log[300];
	pid_t pid;
	int report;
};

/* Forks a child running fn(dir, arg, report pipe) on a fresh directory, its stderr
 * going to a log beside it. */
static void child_start(struct run *r, void (*fn)(const char *, uint64_t, int), uint64_t arg)
{
	r->root = fx_tmpdir();
	snprintf(r->dir, sizeof(r->dir), "%s/node", r->root);
	snprintf(r->log, sizeof(r->log), "%s/child.log", r->root);
	assert_int_equal(mkdir(r->dir, 0755), 0);
	int p[2];
	assert_int_equal(pipe(p), 0);
	fflush(NULL);
	r->pid = fork();
	assert_true(r->pid >= 0);
	if (r->pid == 0) {
		close(p[0]);
		int fd = open(r->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0 || dup2(fd, 2) < 0)
			_exit(CHILD_SETUP_FAILED);
		fn(r->dir, arg, p[1]);
		_exit(CHILD_SETUP_FAILED);
	}
	close(p[1]);
	r->report = p[0];
}

/* Waits for the child; returns its exit status (128 + signal when killed), and its
 * FATAL log line ("" when none) in *fatal, printed. */
static int child_end(struct run *r, const char **fatal)
{
	close(r->report);
	int st;
	assert_int_equal(waitpid(r->pid, &st, 0), r->pid);
	int status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	static char text[1 << 16];
	FILE *f = fopen(r->log, "r");
	assert_non_null(f);
	text[fread(text, 1, sizeof(text) - 1, f)] = '\0';
	fclose(f);
	char *line = strstr(text, "FATAL: ");
	*fatal = line != NULL ? line : "";
	if (line != NULL)
		line[strcspn(line, "\n")] = '\0';
	print_message("child ended with status %d: %s\n", status, *fatal);
	return status;
}

static void run_remove(struct run *r)
{
	fx_remove_dir(r->root);
	free(r->root);
}

/* ---- the parent's restart ------------------------------------------------------------ */

static void solo_closed(void *data)
{
	((struct solo *)data)->closed = true;
}

static void solo_query(void *data, Tally__V1__ResultCode code, const char *message,
		       Tally__V1__QueryResult *res)
{
	struct solo *so = data;
	(void)message;
	so->queried = true;
	so->available = code == CODE(OK) && res->code == CODE(OK) && res->n_accounts == 1
				? res->accounts[0]->available : -1;
}

static bool solo_queried(struct solo *so)
{
	return so->queried;
}

static bool solo_closed_p(struct solo *so)
{
	return so->closed;
}

/* The node of dir started in this process on so's own loop, ready (elected, its first
 * barrier done), with an arena of arena_bytes for building commands. */
static void solo_up_aged(struct solo *so, const char *dir, size_t arena_bytes,
			 unsigned writeback_age_ms)
{
	memset(so, 0, sizeof(*so));
	assert_int_equal(uv_loop_init(&so->loop), 0);
	assert_int_equal(node_up(&so->loop, dir, 0, writeback_age_ms, &so->node), 0);
	assert_true(solo_run_until(so, solo_ready));
	tally_arena_init(&so->f.build, arena_bytes, 0);
}

/* solo_up_aged with the default write-back age. */
static void solo_up(struct solo *so, const char *dir, size_t arena_bytes)
{
	solo_up_aged(so, dir, arena_bytes, 0);
}

/* Closes and frees so's node and its loop. */
static void solo_down(struct solo *so)
{
	tally_node_close(so->node, solo_closed, so);
	assert_true(solo_run_until(so, solo_closed_p));
	tally_node_free(so->node);
	uv_run(&so->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&so->loop), 0);
	tally_arena_free(&so->f.build);
}

/* Restarts the node of dir in this process (map without a small cap) and returns m1's
 * points in aurora once everything committed is applied (the node is ready: its first
 * barrier, after every committed entry, is done). */
static int64_t restarted_available(const char *dir)
{
	static struct solo p;
	solo_up(&p, dir, 16 << 10);
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetAccounts g = TALLY__V1__GET_ACCOUNTS__INIT;
	char *members[1] = {(char *)"m1"};
	g.brand = (char *)"aurora";
	g.members = members;
	g.n_members = 1;
	q.q_case = TALLY__V1__QUERY__Q_ACCOUNTS;
	q.accounts = &g;
	tally_node_query(p.node, &q, admin(&p.f), solo_query, &p);
	assert_true(solo_run_until(&p, solo_queried));
	solo_down(&p);
	return p.available;
}

/* ---- fail-stop ------------------------------------------------------------------------ */

/* A node whose ledger may not grow past 1 MiB takes rounds of FILL_ROUND commands (one
 * raft entry each) until an entry does not fit. It must end itself with status 74 and
 * a log line naming the entry and the error, without answering any command of that
 * entry; every earlier round was answered in full. Restarted with room, it applies
 * every committed entry: exactly what was acknowledged, plus the entry it could not
 * apply before (committed, never answered). */
static void test_a_node_whose_ledger_is_full_exits_74_without_answering_what_it_did_not_apply(
	void **state)
{
	(void)state;
	struct run r;
	child_start(&r, child_fill, FULL_MAP_BYTES);
	char buf[4096];
	ssize_t got;
	uint64_t acked = 0;
	while ((got = read(r.report, buf, sizeof(buf))) > 0)
		acked += (uint64_t)got;
	const char *fatal;
	int status = child_end(&r, &fatal);
	print_message("%llu commands acknowledged\n", (unsigned long long)acked);
	assert_int_equal(acked % FILL_ROUND, 0); /* a round is answered in full, or not at all */
	assert_int_equal(status, TALLY_NODE_EXIT_IO);
	assert_true(acked >= FILL_ROUND);
	assert_non_null(strstr(fatal, "apply of raft entry "));
	assert_non_null(strstr(fatal, tally_strerror(TALLY_EFULL)));
	assert_non_null(strstr(fatal, "exiting with status 74"));
	/* Round 0 holds the brand and the member; every other command is 1 point. */
	int64_t acked_points = (int64_t)acked - 2;
	assert_int_equal(restarted_available(r.dir), acked_points + FILL_ROUND);
	run_remove(&r);
}

/* The child: a node takes one raft entry that does not decode as a Batch, then one
 * command; it must end with status 65 before answering the command (child_result
 * would tell the parent). */

static void garbage_applied(struct raft_apply *req, int status, void *result)
{
	(void)req, (void)status, (void)result;
	_exit(CHILD_REFUSED); /* raft says the entry was applied: it must not be */
}

static bool solo_never(struct solo *so)
{
	(void)so;
	return false;
}

static void child_garbage(const char *dir, uint64_t unused, int report_fd)
{
	(void)unused;
	static struct solo ch;
	ch.report_fd = report_fd;
	if (uv_loop_init(&ch.loop) != 0 || node_up(&ch.loop, dir, 0, 0, &ch.node) != 0 ||
	    !solo_run_until(&ch, solo_ready))
		_exit(CHILD_SETUP_FAILED);
	static struct raft_apply req;
	struct raft_buffer buf = {.base = raft_malloc(8), .len = 8};
	if (buf.base == NULL)
		_exit(CHILD_SETUP_FAILED);
	memset(buf.base, 0xff, 8); /* an unterminated varint: no protobuf decodes it */
	if (raft_apply(ch.node->raft, &req, &buf, 1, garbage_applied) != 0)
		_exit(CHILD_SETUP_FAILED);
	tally_arena_init(&ch.f.build, 16 << 10, 0);
	tally_node_submit(ch.node, c_brand(&ch.f, admin(&ch.f), "aurora", 24), child_result, &ch);
	solo_run_until(&ch, solo_never);
	_exit(CHILD_NEVER_FULL);
}

static void test_a_committed_entry_that_does_not_decode_ends_the_node_with_65(void **state)
{
	(void)state;
	struct run r;
	child_start(&r, child_garbage, 0);
	uint8_t byte;
	assert_int_equal(read(r.report, &byte, 1), 0); /* nothing answered */
	const char *fatal;
	assert_int_equal(child_end(&r, &fatal), TALLY_NODE_EXIT_DATA);
	assert_non_null(strstr(fatal, "apply of raft entry "));
	assert_non_null(strstr(fatal, "batch does not decode"));
	run_remove(&r);
}

static void test_each_ledger_error_has_its_exit_status(void **state)
{
	(void)state;
	assert_int_equal(node_exit_status(TALLY_ENOMEM), TALLY_NODE_EXIT_NOMEM);
	assert_int_equal(node_exit_status(TALLY_EIO), TALLY_NODE_EXIT_IO);
	assert_int_equal(node_exit_status(TALLY_ENOSPC), TALLY_NODE_EXIT_IO);
	assert_int_equal(node_exit_status(TALLY_EFULL), TALLY_NODE_EXIT_IO);
	assert_int_equal(node_exit_status(TALLY_ECORRUPT), TALLY_NODE_EXIT_DATA);
	assert_int_equal(node_exit_status(TALLY_EVERSION), TALLY_NODE_EXIT_DATA);
	for (int e = 1; e < TALLY_ERROR_COUNT; e++) {
		int st = node_exit_status(e);
		assert_true(st == TALLY_NODE_EXIT_IO || st == TALLY_NODE_EXIT_NOMEM ||
			    st == TALLY_NODE_EXIT_DATA || st == TALLY_NODE_EXIT_SOFTWARE);
	}
	assert_int_equal(node_exit_status(TALLY_ESTORE), TALLY_NODE_EXIT_SOFTWARE);
	assert_int_equal(node_exit_status(TALLY_ESTATE), TALLY_NODE_EXIT_SOFTWARE);
}

/* ---- readiness ------------------------------------------------------------------------ */

static struct tally_node_health readiness(struct tally_node_health_facts f)
{
	struct tally_node_health h;
	tally_node_readiness(&f, &h);
	assert_true(h.ready == (strcmp(h.why, "ok") == 0));
	return h;
}

static void test_readiness_follows_the_documented_rule(void **state)
{
	(void)state;
	const struct tally_node_health_facts follower = {
		.started = true, .leader_id = 2, .leader_silent_ms = 10, .election_timeout_ms = 400,
		.applied_index = 1000, .commit_index = 1000};
	struct tally_node_health_facts f = follower;
	assert_true(readiness(f).ready);
	f.commit_index = 1000 + TALLY_NODE_READY_LAG_ENTRIES;
	assert_true(readiness(f).ready);
	f.commit_index++;
	assert_string_equal(readiness(f).why, "catching up: applied 1000 of 1257");
	f = follower;
	f.installing_snapshot = true;
	assert_string_equal(readiness(f).why, "catching up: installing a snapshot, applied 1000 of 1000");
	f = follower;
	f.leader_id = 0;
	assert_string_equal(readiness(f).why, "no leader");
	f = follower;
	f.leader_silent_ms = 401;
	assert_string_equal(readiness(f).why, "no word from the leader for 401 ms");
	f.leader_silent_ms = 400;
	assert_true(readiness(f).ready);
	f = follower;
	f.closing = true;
	f.leader_id = 0;
	assert_string_equal(readiness(f).why, "shutting down");
	f = follower;
	f.started = false;
	assert_string_equal(readiness(f).why, "not started");
	/* A leader: silence does not apply; its first barrier does. */
	const struct tally_node_health_facts leader = {
		.started = true, .leader = true, .leader_ready = true, .leader_id = 1,
		.leader_silent_ms = 100000, .election_timeout_ms = 400, .applied_index = 7,
		.commit_index = 7};
	f = leader;
	struct tally_node_health h = readiness(f);
	assert_true(h.ready);
	assert_int_equal(h.leader_id, 1);
	assert_int_equal(h.applied_index, 7);
	assert_int_equal(h.commit_index, 7);
	f.leader_ready = false;
	assert_string_equal(readiness(f).why, "new leader: applying what earlier leaders committed");
	/* A leader without ledger time refuses every write: not ready. A follower's clocks
	 * do not matter to its readiness. */
	f = leader;
	f.leader_no_time = true;
	assert_string_equal(readiness(f).why,
			    "no ledger time: the clocks of a majority of voters do not agree");
	/* A commit index below the applied one (a node restored from a newer snapshot than
	 * raft knows committed) counts as none behind. */
	f = follower;
	f.commit_index = 3;
	h = readiness(f);
	assert_true(h.ready);
	assert_int_equal(h.commit_index, 1000);
}

/* ---- room on disk --------------------------------------------------------------------- */

static void ledger_open_with(const char *dir, bool writemap, uint64_t cap_bytes,
			     uint64_t room_bytes, struct tally_ledger **out)
{
	struct tally_ledger_options o = {.map_size_bytes = cap_bytes, .map_room_bytes = room_bytes,
					 .nosync = true, .writemap = writemap};
	assert_int_equal(tally_ledger_open(dir, &o, out), 0);
}

/* Applies cmds as the batch at raft index `index`; returns the ledger's error. */
static int batch_apply(struct tally_ledger *l, struct fx *f, Tally__V1__Command **cmds, size_t n,
		       uint64_t index)
{
	Tally__V1__Batch b = TALLY__V1__BATCH__INIT;
	b.raft_index = index;
	b.raft_term = 1;
	b.time_ms = T0_MS;
	b.commands = cmds;
	b.n_commands = n;
	Tally__V1__CommandResult **rs;
	bool skipped;
	tally_arena_reset(&f->results);
	int rc = tally_ledger_apply_batch(l, &b, &f->results, &rs, &skipped);
	for (size_t i = 0; rc == 0 && i < n; i++)
		if (rs[i]->code != CODE(OK))
			fail_msg("command %zu: %s %s", i, tally_result_name(rs[i]->code), rs[i]->message);
	return rc;
}

/* n accruals of 1 point to m1 with the longest texts allowed (they fill pages fast). */
static Tally__V1__Command **accruals(struct fx *f, size_t n)
{
	static char text[TALLY_TEXT_BYTES_MAX + 1];
	memset(text, 'x', TALLY_TEXT_BYTES_MAX);
	Tally__V1__Command **cmds = tally_arena_alloc(&f->build, n * sizeof(*cmds));
	assert_non_null(cmds);
	for (size_t i = 0; i < n; i++) {
		cmds[i] = c_accrue(f, admin(f), "aurora", "m1", 1);
		cmds[i]->accrue->reason = cmds[i]->accrue->reference = text;
	}
	return cmds;
}

/* data.mdb's size, failing unless every byte of it has a block on disk. */
static uint64_t data_file_allocated(const char *dir)
{
	char path[300];
	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	if ((uint64_t)st.st_blocks * 512 < (uint64_t)st.st_size)
		fail_msg("%s: %lld bytes long, %lld allocated: holes a write through the map "
			 "could fault on", path, (long long)st.st_size, (long long)st.st_blocks * 512);
	return (uint64_t)st.st_size;
}

/* A writemap ledger in dir (cap and room as ledger_open_with) with brand "aurora" and
 * member "m1" applied as the batch at raft index 1; f's arenas made for batch_apply. */
static struct tally_ledger *member_ledger_open(const char *dir, uint64_t cap_bytes,
					       uint64_t room_bytes, struct fx *f)
{
	struct tally_ledger *l;
	ledger_open_with(dir, true, cap_bytes, room_bytes, &l);
	tally_arena_init(&f->build, 1 << 20, 0);
	tally_arena_init(&f->results, 1 << 20, 0);
	Tally__V1__Command *setup[2] = {c_brand(f, admin(f), "aurora", 24),
					c_member(f, admin(f), "m1")};
	assert_int_equal(batch_apply(l, f, setup, 2, 1), 0);
	return l;
}

/* Closes what member_ledger_open opened, and removes dir (and frees it). */
static void member_ledger_close(struct tally_ledger *l, char *dir, struct fx *f)
{
	tally_ledger_close(l);
	fx_remove_dir(dir);
	free(dir);
	tally_arena_free(&f->build);
	tally_arena_free(&f->results);
}

/* A writemap ledger's data file is allocated over the whole map (no hole for a store
 * through the map to fault on), starts at its room (64 MiB by default, not the 64 GiB
 * cap), and grows with the data. With 1 MiB of room, a batch of several MiB gets
 * MDB_MAP_FULL (the room grows once before a batch, by 1 MiB) and is applied again in
 * larger maps. The result is the same as a ledger with a fixed map. */
static void test_a_writemap_ledger_maps_only_allocated_blocks_and_grows_with_the_data(void **state)
{
	(void)state;
	/* Enough for LMDB's file to pass 2 MiB. Since the journal's entries went to segment
	 * files (ledger format 7) an accrual grows LMDB far less, and 2048 of them (what
	 * TALLY_TEST_QUICK ran, as under valgrind) stayed within the first MiB. */
	size_t big = 8192;
	char *dirs[3] = {fx_tmpdir(), fx_tmpdir(), fx_tmpdir()};
	struct tally_ledger *l[3];
	ledger_open_with(dirs[2], true, 0, 0, &l[2]);
	uint64_t fresh = data_file_allocated(dirs[2]); /* the data's pages and the room */
	assert_true(fresh >= (64u << 20) && fresh <= (65u << 20));
	tally_ledger_close(l[2]);
	ledger_open_with(dirs[0], true, 0, 1u << 20, &l[0]);
	ledger_open_with(dirs[1], false, 1ULL << 30, 0, &l[1]);
	uint64_t size0 = data_file_allocated(dirs[0]);
	assert_int_equal(size0, 1u << 20); /* what a new ledger needs, and the room */
	struct fx f = {0};
	tally_arena_init(&f.build, 1 << 20, 0);
	tally_arena_init(&f.results, 1 << 20, 0);
	Tally__V1__Command *setup[2] = {c_brand(&f, admin(&f), "aurora", 24),
					c_member(&f, admin(&f), "m1")};
	Tally__V1__Command **cmds = accruals(&f, big);
	for (int k = 0; k < 2; k++) {
		assert_int_equal(batch_apply(l[k], &f, setup, 2, 1), 0);
		assert_int_equal(batch_apply(l[k], &f, cmds, big, 2), 0);
	}
	uint64_t size1 = data_file_allocated(dirs[0]);
	print_message("data.mdb: %llu KiB, then %llu KiB after %zu accruals\n",
		      (unsigned long long)size0 >> 10, (unsigned long long)size1 >> 10, big);
	/* Ahead of a batch the map grows by its room (1 MiB) at most: the rest is retries. */
	assert_true(size1 >= size0 + (2u << 20));
	uint8_t h[2][32];
	for (int k = 0; k < 2; k++)
		assert_int_equal(tally_ledger_content_hash(l[k], h[k]), 0);
	assert_memory_equal(h[0], h[1], 32);
	/* Reopened, it is as allocated and as applied as before. */
	tally_ledger_close(l[0]);
	ledger_open_with(dirs[0], true, 0, 1u << 20, &l[0]);
	assert_true(data_file_allocated(dirs[0]) >= size1);
	assert_int_equal(tally_ledger_applied_index(l[0]), 2);
	char msg[256];
	assert_int_equal(tally_ledger_check_invariants(l[0], msg, sizeof(msg)), 0);
	for (int k = 0; k < 3; k++) {
		if (k < 2)
			tally_ledger_close(l[k]);
		fx_remove_dir(dirs[k]);
		free(dirs[k]);
	}
	tally_arena_free(&f.build);
	tally_arena_free(&f.results);
}

/* At its cap (map_size_bytes) a writemap ledger refuses a batch whole with TALLY_EFULL:
 * nothing of it applied, the ledger intact. Opened with a larger cap, it takes the
 * same batch. */
static void test_a_writemap_ledger_at_its_cap_refuses_a_batch_whole(void **state)
{
	(void)state;
	char *dir = fx_tmpdir();
	struct fx f = {0};
	struct tally_ledger *l = member_ledger_open(dir, FULL_MAP_BYTES, 0, &f);
	Tally__V1__Command **cmds;
	uint64_t index = 2;
	int rc;
	while ((rc = batch_apply(l, &f, cmds = accruals(&f, 64), 64, index)) == 0)
		if (++index > 1000)
			fail_msg("a ledger capped at 1 MiB took %llu batches", (unsigned long long)index);
	assert_int_equal(rc, TALLY_EFULL);
	assert_int_equal(tally_ledger_applied_index(l), index - 1);
	struct tally_digest before, after;
	assert_int_equal(tally_ledger_digest(l, &before), 0);
	char msg[256];
	assert_int_equal(tally_ledger_check_invariants(l, msg, sizeof(msg)), 0);
	tally_ledger_close(l);
	ledger_open_with(dir, true, 64u << 20, 0, &l);
	assert_int_equal(tally_ledger_digest(l, &after), 0);
	assert_memory_equal(&before, &after, sizeof(before));
	assert_int_equal(batch_apply(l, &f, cmds, 64, index), 0);
	assert_int_equal(tally_ledger_applied_index(l), index);
	assert_int_equal(tally_ledger_check_invariants(l, msg, sizeof(msg)), 0);
	member_ledger_close(l, dir, &f);
}

/* Pages of data.mdb in [from, to) that are not in the page cache. */
static size_t pages_not_cached(const char *dir, uint64_t from, uint64_t to)
{
	char path[300];
	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	uint8_t *map = mmap(NULL, (size_t)to, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(map != MAP_FAILED);
	size_t page = (size_t)sysconf(_SC_PAGESIZE), n = (size_t)(to - from) / page, missing = 0;
	unsigned char *in = malloc(n);
	assert_non_null(in);
	assert_int_equal(mincore(map + from, (size_t)(to - from), in), 0);
	for (size_t i = 0; i < n; i++)
		missing += (in[i] & 1) == 0;
	free(in);
	munmap(map, (size_t)to);
	close(fd);
	return missing;
}

/* KiB of this process's page tables mapping files named data.mdb under dir: the Rss
 * of their mappings in /proc/self/smaps. */
static uint64_t data_file_mapped_kib(const char *dir)
{
	char real[4096], want[4200], line[4096], key[64];
	assert_non_null(realpath(dir, real));
	snprintf(want, sizeof(want), "%s/data.mdb", real);
	FILE *fp = fopen("/proc/self/smaps", "r");
	assert_non_null(fp);
	uint64_t kib = 0;
	bool ours = false;
	while (fgets(line, sizeof(line), fp) != NULL) {
		unsigned long long v;
		if (sscanf(line, "%63[A-Za-z_]: %llu", key, &v) == 2) /* a field of a mapping */
			kib += ours && strcmp(key, "Rss") == 0 ? v : 0;
		else /* a mapping's first line, with its file; or VmFlags, its last */
			ours = strstr(line, want) != NULL;
	}
	fclose(fp);
	return kib;
}

/* Where this process maps the file data.mdb under dir: the lowest start among its
 * mappings in /proc/self/maps (0: none). */
static uintptr_t data_file_map_start(const char *dir)
{
	char real[4096], want[4200], line[4400];
	assert_non_null(realpath(dir, real));
	snprintf(want, sizeof(want), "%s/data.mdb", real);
	FILE *fp = fopen("/proc/self/maps", "r");
	assert_non_null(fp);
	uintptr_t start = 0;
	while (fgets(line, sizeof(line), fp) != NULL) {
		unsigned long long from;
		if (strstr(line, want) != NULL && sscanf(line, "%llx-", &from) == 1 &&
		    (start == 0 || from < start))
			start = (uintptr_t)from;
	}
	fclose(fp);
	return start;
}

/* A writemap ledger's map grows in place (ledger/remap.c): the pages mapped before a
 * growth are still mapped after it, where unmapping and mapping the file again (LMDB's
 * own way) would leave only those the batch touched since. The ledger is as correct
 * as before. */
static void test_a_writemap_ledgers_map_grows_in_place(void **state)
{
	(void)state;
	char *dir = fx_tmpdir();
	struct fx f = {0};
	struct tally_ledger *l = member_ledger_open(dir, 0, 1u << 20, &f); /* room: 1 MiB */
	uint64_t index = 2, before_kib = 0, after_kib = 0, remaps = 0;
	while (before_kib < (4u << 10)) { /* a growth with 4 MiB or more mapped before it */
		Tally__V1__Command **cmds = accruals(&f, 64);
		uint64_t kib = data_file_mapped_kib(dir), size = data_file_allocated(dir);
		remaps = tally_ledger_remaps_in_place();
		assert_int_equal(batch_apply(l, &f, cmds, 64, index++), 0);
		if (data_file_allocated(dir) > size && kib >= (4u << 10)) {
			before_kib = kib;
			after_kib = data_file_mapped_kib(dir);
		}
		if (index > 2000)
			fail_msg("no growth past 4 MiB mapped in %llu batches", (unsigned long long)index);
	}
	print_message("data.mdb mapped: %llu KiB before a growth, %llu KiB after it\n",
		      (unsigned long long)before_kib, (unsigned long long)after_kib);
	assert_true(tally_ledger_remaps_in_place() > remaps);
	assert_true(after_kib >= before_kib);
	char msg[256];
	assert_int_equal(tally_ledger_check_invariants(l, msg, sizeof(msg)), 0);
	member_ledger_close(l, dir, &f);
}

/* A reader on another thread (a snapshot's copy) holds the map where it is. */
struct pin_holder {
	struct tally_ledger *l;
	uint64_t waits_before;  /* tally_ledger_map_waits when it was taken */
	_Atomic bool pinned;
	_Atomic bool release;   /* the batches are done */
};

static void *pin_hold(void *arg)
{
	struct pin_holder *p = arg;
	map_pin(p->l);
	atomic_store(&p->pinned, true);
	/* Until the batches are done, or until a growth waits for the pin: that is the
	 * failure asserted below, not a deadlock. */
	while (!atomic_load(&p->release) && tally_ledger_map_waits() == p->waits_before)
		sched_yield();
	map_unpin(p->l);
	return NULL;
}

/* Starts a thread that holds l's map pinned (pin_hold), once it holds it. */
static void pin_start(struct pin_holder *p, pthread_t *t, struct tally_ledger *l)
{
	*p = (struct pin_holder){.l = l, .waits_before = tally_ledger_map_waits()};
	assert_int_equal(pthread_create(t, NULL, pin_hold, p), 0);
	while (!atomic_load(&p->pinned))
		sched_yield();
}

/* Lets the pinning thread go and waits for it. */
static void pin_stop(struct pin_holder *p, pthread_t t)
{
	atomic_store(&p->release, true);
	assert_int_equal(pthread_join(t, NULL), 0);
}

/* A writemap ledger's map grows where it is, into the address space held for it
 * (ledger/remap.c), so a growth does not wait for a reader on another thread: batches
 * that grow the map twice go through while another thread holds the map pinned, as a
 * snapshot's copy does. The map stays at its address and the ledger is as correct as
 * before. */
static void test_a_writemap_ledgers_map_grows_while_a_reader_holds_it(void **state)
{
	(void)state;
	char *dir = fx_tmpdir();
	struct fx f = {0};
	struct tally_ledger *l = member_ledger_open(dir, 0, 1u << 20, &f); /* room: 1 MiB */
	MDB_envinfo before, after;
	assert_int_equal(mdb_env_info(l->env, &before), 0);
	uintptr_t at = data_file_map_start(dir);
	assert_true(at != 0);
	struct pin_holder p;
	pthread_t t;
	pin_start(&p, &t, l);
	uint64_t index = 2, size = data_file_allocated(dir);
	unsigned growths = 0;
	while (growths < 2) {
		Tally__V1__Command **cmds = accruals(&f, 64);
		assert_int_equal(batch_apply(l, &f, cmds, 64, index++), 0);
		growths += data_file_allocated(dir) > size;
		size = data_file_allocated(dir);
		if (index > 2000)
			fail_msg("the map did not grow twice in %llu batches", (unsigned long long)index);
	}
	pin_stop(&p, t);
	assert_int_equal(mdb_env_info(l->env, &after), 0);
	print_message("map grew from %zu to %zu bytes, at %#llx before and %#llx after; "
		      "%llu growths waited\n", before.me_mapsize, after.me_mapsize,
		      (unsigned long long)at, (unsigned long long)data_file_map_start(dir),
		      (unsigned long long)(tally_ledger_map_waits() - p.waits_before));
	assert_int_equal(tally_ledger_map_waits(), p.waits_before);
	assert_true(after.me_mapsize > before.me_mapsize);
	assert_true(data_file_map_start(dir) == at);
	char msg[256];
	assert_int_equal(tally_ledger_check_invariants(l, msg, sizeof(msg)), 0);
	member_ledger_close(l, dir, &f);
}

/* A growth past the address space held for the map moves it (ledger/remap.c), and a
 * move waits for a reader on another thread: with 4 MiB held at least, batches go on
 * while another thread holds the map pinned until one growth has to move the map;
 * that one waits (the pinning thread then lets go), and the map is then elsewhere,
 * with the ledger as correct as before. */
static void test_a_growth_past_the_held_space_moves_the_map_after_its_reader(void **state)
{
	(void)state;
	remap_set_reserve_min(4u << 20);
	char *dir = fx_tmpdir();
	struct fx f = {0};
	struct tally_ledger *l = member_ledger_open(dir, 0, 1u << 20, &f); /* room: 1 MiB */
	uintptr_t at = data_file_map_start(dir);
	assert_true(at != 0);
	struct pin_holder p;
	pthread_t t;
	pin_start(&p, &t, l);
	uint64_t index = 2;
	while (data_file_map_start(dir) == at) {
		Tally__V1__Command **cmds = accruals(&f, 64);
		assert_int_equal(batch_apply(l, &f, cmds, 64, index++), 0);
		if (index > 4000)
			fail_msg("the map did not move in %llu batches", (unsigned long long)index);
	}
	pin_stop(&p, t);
	print_message("the map moved from %#llx to %#llx after %llu batches; %llu growths waited\n",
		      (unsigned long long)at, (unsigned long long)data_file_map_start(dir),
		      (unsigned long long)(index - 2),
		      (unsigned long long)(tally_ledger_map_waits() - p.waits_before));
	assert_int_equal(tally_ledger_map_waits(), p.waits_before + 1);
	char msg[256];
	assert_int_equal(tally_ledger_check_invariants(l, msg, sizeof(msg)), 0);
	member_ledger_close(l, dir, &f);
	remap_set_reserve_min(0);
}

/* The pages just past a writemap ledger's data are in the page cache before a batch
 * first stores into them (map.c, "Pages warmed ahead"): a fault there would otherwise
 * zero a whole readahead window at once. Checked after the first batches of a fresh
 * ledger (which catch up LEDGER_WARM_STEP_BYTES at a time) and after a reopen. Skipped
 * on tmpfs, whose pages are not read from anything. */
static void test_a_writemap_ledger_warms_the_pages_ahead_of_its_data(void **state)
{
	(void)state;
	char *dir = fx_tmpdir();
	struct statfs fs;
	assert_int_equal(statfs(dir, &fs), 0);
	if (fs.f_type == 0x01021994 /* TMPFS_MAGIC */) {
		print_message("SKIPPED: %s is on tmpfs, which has no readahead to warm ahead of\n", dir);
		fx_remove_dir(dir);
		free(dir);
		skip();
	}
	struct fx f = {0};
	struct tally_ledger *l = member_ledger_open(dir, 0, 0, &f);
	uint64_t index = 2, steps = LEDGER_WARM_AHEAD_BYTES / LEDGER_WARM_STEP_BYTES;
	for (int reopened = 0; reopened < 2; reopened++) {
		/* One batch per step to catch up, and one more to be applied after the last. */
		for (uint64_t k = 0; k <= steps; k++, index++)
			assert_int_equal(batch_apply(l, &f, accruals(&f, 16), 16, index), 0);
		MDB_envinfo info;
		MDB_stat st;
		assert_int_equal(mdb_env_info(l->env, &info), 0);
		assert_int_equal(mdb_env_stat(l->env, &st), 0);
		uint64_t used = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
		uint64_t end = used + LEDGER_WARM_AHEAD_BYTES - LEDGER_WARM_STEP_BYTES;
		assert_true(end <= info.me_mapsize);
		size_t missing = pages_not_cached(dir, used, end);
		print_message("data %llu KiB; of the next %llu KiB, %zu pages not cached\n",
			      (unsigned long long)used >> 10,
			      (unsigned long long)(end - used) >> 10, missing);
		assert_int_equal(missing, 0);
		tally_ledger_close(l);
		/* Out of the cache, so that the reopened ledger has to warm them again. */
		char path[300];
		snprintf(path, sizeof(path), "%s/data.mdb", dir);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		assert_true(fd >= 0);
		assert_int_equal(fdatasync(fd), 0);
		assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
		close(fd);
		assert_true(pages_not_cached(dir, used, end) > 0);
		ledger_open_with(dir, true, 0, 0, &l);
	}
	member_ledger_close(l, dir, &f);
}

/* ---- the ledger written back behind its growth ---------------------------------------- */

#define WB_ROUND 256 /* commands submitted in one loop turn */

static bool solo_wb_round_answered(struct solo *so)
{
	return so->answered == WB_ROUND;
}

static void solo_result(void *data, const Tally__V1__CommandResult *r)
{
	struct solo *so = data;
	so->answered++;
	if (r->code != CODE(OK))
		fail_msg("a command was answered %s: %s", tally_result_name(r->code), r->message);
}

/* The part of the ledger's file the node should have written back by now: whole steps
 * up to NODE_WRITEBACK_BEHIND_BYTES behind the data's end. */
static uint64_t writeback_due(struct solo *so)
{
	uint64_t data = tally_ledger_data_bytes(tally_node_ledger(so->node));
	return (data - NODE_WRITEBACK_BEHIND_BYTES) / NODE_FLUSH_STEP_BYTES * NODE_FLUSH_STEP_BYTES;
}

static bool solo_writeback_idle(struct solo *so)
{
	return !so->node->writeback.busy && so->node->writeback.done_to == writeback_due(so);
}

/* cachestat(2) (Linux 6.5; not in this distribution's headers): the page cache's
 * pages of a file's range, and how many of them are dirty. */
#define SYS_CACHESTAT 451
struct cachestat_range {
	uint64_t off, len;
};
struct cachestat {
	uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};

/* Dirty pages of fd's file in [0, len), or -1 with errno (ENOSYS: an older kernel). */
static int64_t dirty_pages(int fd, uint64_t len)
{
	struct cachestat_range r = {0, len};
	struct cachestat cs;
	return syscall(SYS_CACHESTAT, fd, &r, &cs, 0) == 0 ? (int64_t)cs.nr_dirty : -1;
}

/* Whether the write-back can be watched here: not on tmpfs (nothing to write back),
 * nor on kernels without cachestat. Prints why it cannot. */
static bool writeback_observable(const char *root)
{
	struct statfs fs;
	assert_int_equal(statfs(root, &fs), 0);
	char probe[300];
	snprintf(probe, sizeof(probe), "%s/probe", root);
	int fd = open(probe, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	bool no_cachestat = dirty_pages(fd, 4096) < 0;
	close(fd);
	unlink(probe);
	if (fs.f_type == 0x01021994 /* TMPFS_MAGIC */ || no_cachestat) {
		print_message("SKIPPED: %s\n", no_cachestat ? "this kernel has no cachestat(2) "
							   "to count dirty pages with"
							 : "the test directory is on tmpfs");
		return false;
	}
	return true;
}

/* A new root with an empty node directory in it (dir) for a write-back test, or NULL
 * when the write-back cannot be watched there (the test is then skipped). */
static char *writeback_root(char *dir, size_t cap)
{
	char *root = fx_tmpdir();
	snprintf(dir, cap, "%s/node", root);
	assert_int_equal(mkdir(dir, 0755), 0);
	if (writeback_observable(root))
		return root;
	fx_remove_dir(root);
	free(root);
	return NULL;
}

/* Rounds of WB_ROUND accruals (one raft entry each) until so's ledger holds
 * NODE_WRITEBACK_BEHIND_BYTES and one and a half jobs more. */
static void grow_past_the_writeback_lag(struct solo *so)
{
	struct tally_ledger *l = tally_node_ledger(so->node);
	uint64_t goal = NODE_WRITEBACK_BEHIND_BYTES + 3 * NODE_WRITEBACK_JOB_BYTES / 2;
	for (unsigned round = 0; tally_ledger_data_bytes(l) < goal; round++) {
		assert_true(round < 4000); /* a ledger that never grows: a hang */
		so->answered = 0;
		tally_arena_reset(&so->f.build);
		Tally__V1__Command **cmds = accruals(&so->f, WB_ROUND);
		if (round == 0) {
			cmds[0] = c_brand(&so->f, admin(&so->f), "aurora", 24);
			cmds[1] = c_member(&so->f, admin(&so->f), "m1");
		}
		for (unsigned i = 0; i < WB_ROUND; i++)
			tally_node_submit(so->node, cmds[i], solo_result, so);
		assert_true(solo_run_until(so, solo_wb_round_answered));
	}
}

/* The journal's segments written back up to their last whole step: the node's ticks
 * have looked at the ledger's file since the growth ended. */
static bool solo_journal_written_back(struct solo *so)
{
	uint64_t first, len;
	tally_ledger_journal_tail(tally_node_ledger(so->node), &first, &len);
	return !so->node->writeback.busy && so->node->writeback.seg_first == first &&
	       so->node->writeback.seg_done == len / NODE_FLUSH_STEP_BYTES * NODE_FLUSH_STEP_BYTES;
}

/* A node writes its ledger's file back itself once the data has grown past
 * NODE_WRITEBACK_BEHIND_BYTES and the write-back age has passed, by whole steps up to
 * that far behind the data's end (writeback.c): tally_ledger_writeback_bytes_total
 * counts it, and the page cache (cachestat) then holds few dirty pages there, where
 * without it all of them would be. With an age of 1 ms every tick may write back. */
static void test_a_node_writes_its_ledger_back_behind_the_growth(void **state)
{
	(void)state;
	char dir[300], *root = writeback_root(dir, sizeof(dir));
	if (root == NULL)
		skip();
	static struct solo so;
	solo_up_aged(&so, dir, 1 << 20, 1);
	struct tally_ledger *l = tally_node_ledger(so.node);
	grow_past_the_writeback_lag(&so);
	/* More than one job's worth behind the end: the ticks queue one after another. */
	assert_true(solo_run_until(&so, solo_writeback_idle));
	uint64_t data = tally_ledger_data_bytes(l), due = writeback_due(&so);
	uint64_t wb = tally_node_stats(so.node)->ledger_writeback_bytes;
	int fd = tally_ledger_file_dup(l);
	assert_true(fd >= 0);
	int64_t dirty = dirty_pages(fd, due), dirty_after = dirty_pages(fd, data) - dirty;
	close(fd);
	print_message("data %llu KiB: %llu KiB written back by the node, up to %llu KiB; "
		      "dirty pages there %lld, and %lld past it\n", (unsigned long long)data >> 10,
		      (unsigned long long)wb >> 10, (unsigned long long)due >> 10,
		      (long long)dirty, (long long)dirty_after);
	/* From where the data ended at the node's first tick (well under a step) to due. */
	assert_true(wb <= due && wb + NODE_FLUSH_STEP_BYTES > due);
	/* Written, not only counted: what is still dirty there is what the apply stored
	 * to since (pages LMDB freed and reused), a small part. */
	assert_true(dirty >= 0 && (uint64_t)dirty < due / 4096 / 4);
	solo_down(&so);
	fx_remove_dir(root);
	free(root);
}

/* Well within the kernel's 30 s before it writes back a page dirty that long. */
#define KERNEL_SWEEP_WITHIN_MS 20000u

/* With an age of an hour (the default is NODE_WRITEBACK_AGE_MS, 15 s), the same
 * growth is left to the kernel: the ticks that wrote the journal's segments back after
 * it wrote none of the ledger's file, whose pages that far behind the end are still
 * dirty. */
static void test_a_node_leaves_the_ledgers_newest_growth_dirty(void **state)
{
	(void)state;
	char dir[300], *root = writeback_root(dir, sizeof(dir));
	if (root == NULL)
		skip();
	static struct solo so;
	solo_up_aged(&so, dir, 1 << 20, 3600 * 1000);
	struct tally_ledger *l = tally_node_ledger(so.node);
	uint64_t t0 = (uint64_t)tally_node_mono_ms(so.node);
	grow_past_the_writeback_lag(&so);
	assert_true(solo_run_until(&so, solo_journal_written_back));
	uint64_t elapsed = (uint64_t)tally_node_mono_ms(so.node) - t0;
	uint64_t due = writeback_due(&so);
	assert_int_equal(tally_node_stats(so.node)->ledger_writeback_bytes, 0);
	assert_true(tally_node_stats(so.node)->journal_writeback_bytes > 0);
	int fd = tally_ledger_file_dup(l);
	assert_true(fd >= 0);
	int64_t dirty = dirty_pages(fd, due);
	close(fd);
	print_message("grown in %llu ms: none of the ledger written back, %lld dirty pages in "
		      "the %llu KiB the age holds back\n", (unsigned long long)elapsed,
		      (long long)dirty, (unsigned long long)due >> 10);
	/* The kernel's own sweep cleans what has been dirty for vm.dirty_expire_centisecs
	 * (30 s by default): a growth well within that still has most of it dirty. */
	if (elapsed < KERNEL_SWEEP_WITHIN_MS)
		assert_true(dirty > 0 && (uint64_t)dirty > due / 4096 / 2);
	else
		print_message("the growth took %llu ms: the kernel's sweep may have cleaned its "
			      "pages, so they are not counted\n", (unsigned long long)elapsed);
	solo_down(&so);
	fx_remove_dir(root);
	free(root);
}

/* A tmpfs mounted by a test, unmounted by its teardown even when the test fails. */
static char small_fs[256];

static int small_fs_teardown(void **state)
{
	(void)state;
	if (small_fs[0] != '\0') {
		umount2(small_fs, MNT_DETACH);
		fx_remove_dir(small_fs);
		small_fs[0] = '\0';
	}
	return 0;
}

/* On a full file system a writemap ledger's batch fails whole with TALLY_ENOSPC, a
 * clean error: no SIGBUS (this process would die of it), nothing of the batch applied,
 * the ledger intact. Once there is room again the same batch applies. Skipped where
 * mounting a tmpfs is not permitted. */
static void test_a_writemap_ledger_on_a_full_disk_refuses_a_batch_whole_with_enospc(void **state)
{
	(void)state;
	char *dir = fx_tmpdir();
	snprintf(small_fs, sizeof(small_fs), "%s", dir);
	free(dir);
	if (mount("tally-test", small_fs, "tmpfs", MS_NOSUID | MS_NODEV, "size=4096k") != 0) {
		print_message("SKIPPED: cannot mount a tmpfs for a small disk (%s; needs root or "
			      "CAP_SYS_ADMIN)\n", strerror(errno));
		fx_remove_dir(small_fs);
		small_fs[0] = '\0';
		skip();
	}
	struct fx f = {0};
	struct tally_ledger *l = member_ledger_open(small_fs, 0, 1u << 20, &f);
	Tally__V1__Command **cmds;
	uint64_t index = 2;
	int rc;
	while ((rc = batch_apply(l, &f, cmds = accruals(&f, 64), 64, index)) == 0)
		if (++index > 10000)
			fail_msg("a ledger on a 4 MiB tmpfs took %llu batches", (unsigned long long)index);
	print_message("batch %llu: %s\n", (unsigned long long)index, tally_strerror(rc));
	assert_int_equal(rc, TALLY_ENOSPC);
	assert_int_equal(tally_ledger_applied_index(l), index - 1);
	char msg[256];
	assert_int_equal(tally_ledger_check_invariants(l, msg, sizeof(msg)), 0);
	assert_int_equal(mount("tally-test", small_fs, "tmpfs", MS_REMOUNT | MS_NOSUID | MS_NODEV,
			       "size=65536k"), 0);
	assert_int_equal(batch_apply(l, &f, cmds, 64, index), 0);
	assert_int_equal(tally_ledger_applied_index(l), index);
	assert_int_equal(tally_ledger_check_invariants(l, msg, sizeof(msg)), 0);
	tally_ledger_close(l);
	tally_arena_free(&f.build);
	tally_arena_free(&f.results);
}

static int setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	fx_raft_heap_zeroed(true);
	const int offsets[] = {1, 101};
	ports_acquire(&ports, offsets, 2);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	ports_release(&ports);
	fx_raft_heap_zeroed(false);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_readiness_follows_the_documented_rule),
		cmocka_unit_test(test_each_ledger_error_has_its_exit_status),
		cmocka_unit_test(test_a_writemap_ledger_maps_only_allocated_blocks_and_grows_with_the_data),
		cmocka_unit_test(test_a_writemap_ledger_at_its_cap_refuses_a_batch_whole),
		cmocka_unit_test(test_a_writemap_ledger_warms_the_pages_ahead_of_its_data),
		cmocka_unit_test(test_a_writemap_ledgers_map_grows_in_place),
		cmocka_unit_test(test_a_writemap_ledgers_map_grows_while_a_reader_holds_it),
		cmocka_unit_test(test_a_growth_past_the_held_space_moves_the_map_after_its_reader),
		cmocka_unit_test_teardown(test_a_writemap_ledger_on_a_full_disk_refuses_a_batch_whole_with_enospc,
					  small_fs_teardown),
		cmocka_unit_test(test_a_node_writes_its_ledger_back_behind_the_growth),
		cmocka_unit_test(test_a_node_leaves_the_ledgers_newest_growth_dirty),
		cmocka_unit_test(test_a_node_whose_ledger_is_full_exits_74_without_answering_what_it_did_not_apply),
		cmocka_unit_test(test_a_committed_entry_that_does_not_decode_ends_the_node_with_65),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
