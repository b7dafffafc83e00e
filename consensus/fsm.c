/*
 * consensus/fsm — raft's state machine callbacks (fsm version 3) driving the ledger.
 *
 * apply:    decode the Batch into the apply arena, stamp the raft index (raft 0.15
 *           does not pass it: it is raft_last_applied() + 1), apply it in one LMDB
 *           transaction (MDB_NOSYNC: the raft log is the durable copy, the applied
 *           index travels in the same transaction and replays are skipped), and, when
 *           this node proposed the entry and raft still tracks the request, hand each
 *           waiting caller its result. Nothing is allocated per apply: followers and
 *           replays produce results in the arena and drop them.
 * snapshot: main loop, only notes that a snapshot is being taken.
 * snapshot_async: thread pool; node_snapshot_take (consensus/snapshot.c) maps a sealed
 *           copy of the ledger from a file without a name in raft's directory: page
 *           cache, not heap. raft stores it as its snapshot file (the copy itself,
 *           adopted, not written again) and syncs it; that file, restored at start
 *           after a reboot, is what makes the entries up to the snapshot index
 *           durable, so the ledger's own file is not synced. The copy may already
 *           contain entries past raft's snapshot index; they are skipped when raft
 *           replays them.
 * snapshot_finalize: main loop, hands the copy (raft hands back only what we made) to
 *           the thread pool to unmap: a copy raft did not adopt has no name, so the
 *           unmap frees its blocks, which on a file system mounted with `discard` waits
 *           for the disk.
 *           A 1.2 GB copy held a loop for seconds that way, past the election
 *           timeout. The next snapshot waits until the copy is gone.
 * restore:  main loop, replaces the ledger with the snapshot after checking its seal
 *           and that it opens (tally_ledger_restore), finds raft's file of the
 *           snapshot (node_snapshot_find), frees raft's buffer, then runs the full
 *           invariant check of that file on the thread pool (node_snapshot_verify).
 *           At start, a ledger that holds all of the snapshot and was written only
 *           in this boot is kept instead (fsm_restore_kept, consensus/bootmark.c).
 *
 * The size of each snapshot taken or restored sets how long this node, as leader,
 * waits for a follower to answer an InstallSnapshot (node_snapshot_sized: by what the
 * InstallSnapshot carries, the closed segments the snapshot names included).
 *
 * An entry that cannot be applied, a snapshot that cannot be restored, or a restored
 * ledger that fails its check ends the node (node_fail_stop, with the status of the
 * cause: failstop.c, node.h) inside the callback, before raft moves on: the entry's
 * callers get no answer from this node, and nothing after it is applied here.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "consensus/internal.h"
#include "consensus/snapshot.h"

/* A committed entry this node cannot apply: the node ends (raft 0.15 would stop
 * applying and keep it in the cluster). Returns only under the simulator, whose node
 * is then dead: 0, so that raft runs none of its own failure handling. */
static int fsm_fail(struct tally_node *n, uint64_t index, const char *what, int rc)
{
	assert(n != NULL && rc != 0);
	node_fail_stop(n, node_exit_status(rc), "apply of raft entry %llu: %s: %s",
		       (unsigned long long)index, what, tally_strerror(rc));
	return 0;
}

const uint64_t tally_node_batch_bounds[TALLY_NODE_HIST_BOUNDS] = {1, 4, 16, 64, 256, 1024, 4096};
const uint64_t tally_node_apply_us_bounds[TALLY_NODE_HIST_BOUNDS] = {100, 300, 1000, 3000,
								   10000, 30000, 100000};
const uint64_t tally_node_commit_us_bounds[TALLY_NODE_HIST_BOUNDS] = {250, 500, 1000, 2000,
								    5000, 10000, 50000};

/* The bucket of v (tally_node_stats): the first bound at least v, or the last bucket. */
unsigned tally_node_hist_slot(uint64_t v, const uint64_t bounds[TALLY_NODE_HIST_BOUNDS])
{
	assert(bounds != NULL);
	unsigned i = 0;
	while (i < TALLY_NODE_HIST_BOUNDS && v > bounds[i])
		i++;
	return i;
}

_Static_assert(NODE_APPLIER_REJECTION_CODES ==
		       sizeof(((struct tally_node_stats *)0)->rejections) / sizeof(uint64_t),
	       "a job counts rejections by the codes tally_node_stats does");

/* What an applied entry adds to tally_node_stats (the applier's job carries it). */
static void fsm_count(struct tally_node *n, const struct node_apply_job *j)
{
	struct tally_node_stats *s = &n->stats;
	assert(j != NULL && !j->skipped);
	s->commits++;
	s->commands += j->commands;
	s->batch_size_hist[tally_node_hist_slot(j->commands, tally_node_batch_bounds)]++;
	s->apply_us_hist[tally_node_hist_slot(j->apply_us, tally_node_apply_us_bounds)]++;
	s->apply_us_sum += j->apply_us;
	for (unsigned code = 0; code < NODE_APPLIER_REJECTION_CODES; code++)
		s->rejections[code] += j->rejections[code];
}

/* A batch this node proposed is applied: its round, proposal to results. */
static void fsm_count_round(struct tally_node *n, const struct node_batch *b)
{
	uint64_t us = (uv_hrtime() - b->proposed_ns) / 1000;
	n->stats.commit_us_hist[tally_node_hist_slot(us, tally_node_commit_us_bounds)]++;
	n->stats.commit_us_sum += us;
}

/* raft 0.15 keeps every entry since its last snapshot in memory and snapshots by
 * entry count only, whatever the entries weigh (a batch entry may be 1 MiB). Once
 * the bytes applied since start reach the next snapshot point, the threshold drops
 * to 1 so that raft snapshots right after this apply; fsm_snapshot puts it back.
 * Snapshot points are cfg.snapshot_log_bytes apart, at a phase of their own on each
 * node (node_snapshot_stagger), and fixed: a snapshot that came late (the previous
 * one still running, a restored ledger under its check) does not move the next. */
static void fsm_log_grew(struct tally_node *n, size_t entry_bytes)
{
	n->log_bytes += entry_bytes;
	n->log_entries++;
	n->log_bytes_total += entry_bytes;
	if (n->log_bytes_total >= n->log_snapshot_at && !n->snapshot_busy)
		raft_set_snapshot_threshold(n->raft, 1);
}

/* This node's phase: (id - 1) mod NODE_SNAPSHOT_PHASES. */
static uint64_t fsm_phase(const struct tally_node *n)
{
	assert(n->cfg.id >= 1);
	return (n->cfg.id - 1) % NODE_SNAPSHOT_PHASES;
}

/* Entries from index `at` to this node's next snapshot point by count: the multiples
 * of cfg.snapshot_threshold, early by the node's phase (a third of it per phase),
 * the first at least `min` entries away. */
static unsigned fsm_entries_to_point(const struct tally_node *n, uint64_t at, uint64_t min)
{
	uint64_t t = n->cfg.snapshot_threshold;
	uint64_t early = t * fsm_phase(n) / NODE_SNAPSHOT_PHASES;
	assert(t >= 1 && early < t && min <= t);
	uint64_t next = ((at + early) / t + 1) * t - early;
	if (next - at < min)
		next += t;
	assert(next > at && next - at <= t + min && next - at <= UINT_MAX);
	return (unsigned)(next - at);
}

/* As leader: the lowest index another server is known to hold (its match index), or
 * 0 if there is none (not leader; or no answer from it in this term). */
static uint64_t fsm_lowest_match(const struct tally_node *n)
{
	const struct raft *r = n->raft;
	if (raft_state((struct raft *)r) != RAFT_LEADER)
		return 0;
	uint64_t low = 0;
	for (unsigned i = 0; i < r->configuration.n; i++) {
		uint64_t match = r->leader_state.progress[i].match_index;
		if (r->configuration.servers[i].id != r->id && match > 0 && (low == 0 || match < low))
			low = match;
	}
	return low;
}

/* The entries raft keeps behind this snapshot: as many as fit in half the byte budget
 * (at their mean size since the last one), at most cfg.snapshot_trailing; and as
 * leader, enough for a follower that fell behind to catch up from the log rather than
 * by an InstallSnapshot (every one of its entries sent again, and often a second one
 * when the first took longer than a snapshot period), so long as that fits in the
 * same half of the budget and NODE_SNAPSHOT_CATCHUP_ENTRIES_MAX. */
static unsigned fsm_trailing(const struct tally_node *n, bool *for_follower)
{
	uint64_t budget = n->cfg.snapshot_log_bytes;
	uint64_t trailing = n->cfg.snapshot_trailing, fit = trailing;
	if (n->log_entries > 0) {
		uint64_t mean = n->log_bytes / n->log_entries;
		fit = budget / 2 / (mean > 0 ? mean : 1);
		trailing = fit < 1 ? 1 : fit < trailing ? fit : trailing;
	}
	uint64_t applied = n->raft->last_applied, low = fsm_lowest_match(n);
	uint64_t catchup = low > 0 && low < applied ? applied - low + 1 : 0; /* match..applied */
	*for_follower = catchup > trailing && catchup <= fit &&
			catchup <= NODE_SNAPSHOT_CATCHUP_ENTRIES_MAX;
	if (*for_follower)
		trailing = catchup;
	assert(trailing >= 1 && trailing <= UINT_MAX);
	return (unsigned)trailing;
}

/* A snapshot begins. The next points, by entries and by bytes, are the first at least
 * half a period past what was applied: a snapshot stands for a point of the other
 * kind that was about to come (the two periods are independent, and each point
 * used to bring its own snapshot, often two a second apart, each a copy of the whole
 * ledger). raft keeps fsm_trailing() entries behind it. */
static void fsm_log_snapshotted(struct tally_node *n)
{
	uint64_t budget = n->cfg.snapshot_log_bytes;
	bool for_follower;
	unsigned trailing = fsm_trailing(n, &for_follower);
	n->stats.snapshot_trailing = trailing;
	n->stats.snapshots_kept_log += for_follower;
	raft_set_snapshot_trailing(n->raft, trailing);
	uint64_t half = n->cfg.snapshot_threshold / 2;
	raft_set_snapshot_threshold(n->raft, fsm_entries_to_point(n, n->raft->last_applied, half));
	uint64_t at_least = n->log_bytes_total + budget / 2;
	if (at_least >= n->log_snapshot_at)
		n->log_snapshot_at += ((at_least - n->log_snapshot_at) / budget + 1) * budget;
	assert(n->log_snapshot_at > at_least);
	n->log_bytes = 0;
	n->log_entries = 0;
}

void node_snapshot_stagger(struct tally_node *n)
{
	assert(n != NULL && n->raft != NULL);
	assert(n->cfg.snapshot_log_bytes > 0);
	uint64_t applied = n->ledger != NULL ? tally_ledger_applied_index(n->ledger) : 0;
	raft_set_snapshot_threshold(n->raft, fsm_entries_to_point(n, applied, 0));
	n->log_bytes_total = 0;
	n->log_snapshot_at = n->cfg.snapshot_log_bytes -
			     n->cfg.snapshot_log_bytes / NODE_SNAPSHOT_PHASES * fsm_phase(n);
}

void node_snapshot_sized(struct tally_node *n, uint64_t bytes)
{
	assert(n != NULL && n->raft != NULL && n->cfg.install_snapshot_timeout_ms > 0);
	uint64_t ms = n->cfg.install_snapshot_timeout_ms + bytes * 1000 / TALLY_NODE_SNAPSHOT_SEND_RATE;
	if (ms > UINT32_MAX)
		ms = UINT32_MAX;
	raft_set_install_snapshot_timeout(n->raft, (unsigned)ms);
	n->stats.install_snapshot_timeout_ms = ms;
}

/* An entry's bytes decoded into `arena` as the batch of raft index j->index; NULL when
 * they do not decode, with j->rc and j->what saying so. */
static Tally__V1__Batch *fsm_decode(struct tally_arena *arena, const void *bytes, size_t len,
				    struct node_apply_job *j)
{
	Tally__V1__Batch *b = tally_ledger_batch_decode(arena, bytes, len);
	if (b == NULL) {
		j->rc = TALLY_ECORRUPT;
		j->what = "batch does not decode";
		return NULL;
	}
	if (b->raft_index != 0) {
		j->rc = TALLY_ECORRUPT;
		j->what = "batch carries a raft index";
		return NULL;
	}
	b->raft_index = j->index;
	return b;
}

/* Applies n decoded entries in one transaction into `arena`, leaving in each job what
 * the loop needs (fsm_applied) and in results[i] each one's results when its rc is 0.
 * A group's time is shared among its entries by their commands. Runs on the loop or on
 * the applier's thread: it touches only the ledger, the arena and the jobs. */
static void fsm_apply_decoded(struct tally_ledger *l, struct tally_arena *arena, size_t n,
			      struct node_apply_job *jobs, const Tally__V1__Batch *const *b,
			      Tally__V1__CommandResult ***results)
{
	assert(l != NULL && arena != NULL && n > 0 && n <= NODE_APPLY_GROUP_ENTRIES_MAX);
	bool skipped[NODE_APPLY_GROUP_ENTRIES_MAX];
	uint64_t t0_ns = uv_hrtime(), commands = 0;
	struct tally_ledger_group g = {.batches = b, .n = n, .results = results, .skipped = skipped};
	int rc = tally_ledger_apply_group(l, &g, arena);
	uint64_t us = (uv_hrtime() - t0_ns) / 1000;
	int64_t time_ms = tally_ledger_time_ms(l);
	for (size_t i = 0; i < n; i++)
		commands += b[i]->n_commands;
	for (size_t i = 0; i < n; i++) {
		struct node_apply_job *j = &jobs[i];
		j->rc = rc;
		j->what = rc != 0 ? "ledger" : NULL;
		if (rc != 0)
			continue;
		j->skipped = skipped[i];
		j->ledger_time_ms = time_ms;
		j->commands = b[i]->n_commands;
		j->apply_us = commands > 0 ? us * j->commands / commands : us / n;
		for (size_t c = 0; !j->skipped && c < b[i]->n_commands; c++) {
			unsigned code = results[i][c] != NULL ? (unsigned)results[i][c]->code : 0;
			if (code != TALLY__V1__RESULT_CODE__OK && code < NODE_APPLIER_REJECTION_CODES)
				j->rejections[code]++;
		}
	}
}

/* The applier's thread: one queued entry. */
static void fsm_apply_queued(struct tally_node *n, struct node_apply_job *j)
{
	tally_arena_reset(&n->applier_arena);
	const Tally__V1__Batch *b = fsm_decode(&n->applier_arena, j->bytes, j->len, j);
	Tally__V1__CommandResult **results;
	if (b != NULL)
		fsm_apply_decoded(n->ledger, &n->applier_arena, 1, j, &b, &results);
}

/* The loop's part of an applied entry: a failure ends the node (returns 0 only under
 * the simulator, as fsm_fail); otherwise the ledger's time and the statistics. */
static int fsm_applied(struct tally_node *n, const struct node_apply_job *j)
{
	if (j->rc != 0)
		return fsm_fail(n, j->index, j->what, j->rc);
	if (j->ledger_time_ms > 0) /* a new ledger's time 0 is no time at all */
		node_time_observed(n, j->ledger_time_ms);
	if (!j->skipped)
		fsm_count(n, j);
	return 0;
}

void node_apply_collect(struct tally_node *n)
{
	assert(n != NULL);
	struct node_apply_job *j = node_applier_collect(&n->applier);
	while (j != NULL) {
		struct node_apply_job *next = j->next;
		if (!n->dead) {
			n->stats.applied_off_loop += j->rc == 0;
			fsm_applied(n, j);
		}
		free(j);
		j = next;
	}
}

void node_apply_drain(struct tally_node *n)
{
	assert(n != NULL);
	node_applier_wait(&n->applier);
	node_apply_collect(n);
	(void)node_apply_group_flush(n); /* a failure ends the node (dead, under the simulator) */
}

struct tally_ledger *node_ledger(struct tally_node *n)
{
	assert(n != NULL);
	node_apply_drain(n);
	return n->ledger;
}

void node_applier_begin(struct tally_node *n)
{
	assert(n != NULL && !n->applier.running);
	if (n->loop == NULL || n->cfg.apply_on_loop)
		return; /* the simulator stays on one thread, deterministic */
	unsigned hold_ms = n->cfg.election_timeout_ms / NODE_APPLIER_HOLD_SHARE;
	int rc = node_applier_start(&n->applier, n, fsm_apply_queued, hold_ms > 0 ? hold_ms : 1);
	if (rc != 0)
		node_log(n, "applier thread not started (%s): applying on the loop", strerror(rc));
}

void node_applier_end(struct tally_node *n)
{
	assert(n != NULL);
	node_applier_stop(&n->applier);
	node_apply_collect(n);
	(void)node_apply_group_flush(n);
}

/* Whether this entry goes to the applier: a follower's, when no proposal of this node
 * is still tracked (its callers get their results from the loop's apply), and when it
 * is large enough to be worth the hand-over or must queue behind one that was. The
 * loop's group goes first: it holds entries before this one. */
static bool fsm_queue(struct tally_node *n, const struct raft_buffer *buf, uint64_t index)
{
	if (!n->applier.running || n->inflight > 0 || raft_state(n->raft) == RAFT_LEADER)
		return false;
	if (buf->len < NODE_APPLIER_ENTRY_BYTES_MIN && !node_applier_pending(&n->applier))
		return false;
	if (node_apply_group_flush(n) != 0 || n->dead)
		return false; /* the loop's apply then sees the node dead */
	return node_applier_push(&n->applier, index, buf->base, buf->len);
}

/* ---- a pass of committed entries in one transaction -----------------------------
 * raft applies the entries a commit covers one after another, each in its own call
 * of fsm_apply (replicationApply). In a transaction of its own, an entry of a few
 * commands paid more for the commit (LMDB's copied branch pages, the meta record, the
 * journal's write, its free list) than for its commands. So an entry applied on the
 * loop joins the group of its pass, and the group is applied in one transaction
 * (tally_ledger_apply_group) by the entry at raft's commit index, the last of the
 * pass; once it holds NODE_APPLY_GROUP_ENTRIES_MAX entries or
 * NODE_APPLY_GROUP_COMMANDS_MAX commands; before an entry goes to the applier; and
 * before anything reads or replaces the ledger (node_apply_drain) and at each tick. raft
 * takes the grouped entries as applied as soon as fsm_apply returns, as it does the
 * applier's. A batch writes the same records in a group as alone, so replicas agree
 * however their passes fell. An entry this node proposed ends its group at once: raft
 * answers the proposal as soon as fsm_apply returns, and its results must be out by
 * then. So a leader groups only what it did not propose (a log replayed at start). */

/* The group's entry j has been applied (or failed): the loop's part, then its
 * proposer's results. Returns what fsm_applied does. */
static int fsm_group_settle(struct tally_node *n, const struct node_apply_job *j,
			    const Tally__V1__Batch *b, Tally__V1__CommandResult **results)
{
	int rc = fsm_applied(n, j);
	if (j->rc != 0)
		return rc; /* the node ends (dead, under the simulator) */
	struct node_batch *mine = node_inflight_find(n, j->index, b->raft_term);
	if (mine != NULL) {
		fsm_count_round(n, mine);
		node_batch_deliver(n, mine, j->skipped ? NULL : results, b->n_commands);
	}
	return 0;
}

int node_apply_group_flush(struct tally_node *n)
{
	assert(n != NULL);
	struct node_apply_group *g = &n->group;
	size_t count = g->n;
	if (count == 0)
		return 0;
	if (n->dead) { /* the simulator's crashed node applies nothing more */
		g->n = 0;
		g->commands = 0;
		return 0;
	}
	assert(!node_applier_pending(&n->applier)); /* it was drained before the first entry */
	g->n = 0;
	g->commands = 0;
	g->flushing = true; /* no entry joins while results go out */
	Tally__V1__CommandResult **results[NODE_APPLY_GROUP_ENTRIES_MAX];
	fsm_apply_decoded(n->ledger, &n->apply_arena, count, g->jobs, g->batches, results);
	n->stats.apply_groups++;
	n->stats.apply_group_entries += count;
	int rc = 0;
	for (size_t i = 0; rc == 0 && i < count && !n->dead; i++)
		rc = fsm_group_settle(n, &g->jobs[i], g->batches[i], results[i]);
	g->flushing = false;
	return rc;
}

/* The loop's apply of the entry at index: into the group, applied with the entries
 * after it in this pass or now. */
static int fsm_apply_loop(struct tally_node *n, const struct raft_buffer *buf, uint64_t index)
{
	struct node_apply_group *g = &n->group;
	assert(!g->flushing && g->n < NODE_APPLY_GROUP_ENTRIES_MAX);
	if (g->n == 0) {
		node_apply_drain(n); /* what a follower queued goes first */
		if (n->dead)
			return 0;
		tally_arena_reset(&n->apply_arena);
	}
	struct node_apply_job *j = &g->jobs[g->n];
	*j = (struct node_apply_job){.index = index, .len = buf->len};
	const Tally__V1__Batch *b = fsm_decode(&n->apply_arena, buf->base, buf->len, j);
	if (b == NULL) {
		struct node_apply_job failed = *j;
		int rc = node_apply_group_flush(n); /* the entries before it first */
		return rc != 0 || n->dead ? rc : fsm_applied(n, &failed);
	}
	g->batches[g->n++] = b;
	g->commands += b->n_commands;
	/* raft answers this node's own proposal right after fsm_apply returns: its results
	 * must be out by then. */
	bool mine = node_inflight_find(n, index, b->raft_term) != NULL;
	if (!mine && index < n->raft->commit_index && g->n < NODE_APPLY_GROUP_ENTRIES_MAX &&
	    g->commands < NODE_APPLY_GROUP_COMMANDS_MAX)
		return 0; /* raft applies more now: they join */
	return node_apply_group_flush(n);
}

/* raft_fsm->apply. */
static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
	struct tally_node *n = fsm->data;
	assert(n != NULL && buf != NULL);
	assert(result != NULL);
	*result = NULL;
	if (n->dead)
		return 0; /* the simulator's crashed node applies (and answers) nothing more */
	uint64_t index = raft_last_applied(n->raft) + 1;
	node_commit_notice(n, buf->len);
	if (!fsm_queue(n, buf, index)) {
		int rc = fsm_apply_loop(n, buf, index);
		if (rc != 0 || n->dead)
			return rc;
	}
	fsm_log_grew(n, buf->len);
	return 0;
}

/* raft_fsm->snapshot (main loop): the work happens in snapshot_async. */
static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
	struct tally_node *n = fsm->data;
	assert(n != NULL && bufs != NULL && n_bufs != NULL);
	/* raft's snapshot index is its last applied: the ledger must have reached it (the
	 * copy may go further, snapshot_async). */
	node_apply_drain(n);
	/* Not of a restored ledger still under its check either: a snapshot of it would
	 * outlive a failed check. */
	if (n->snapshot_busy || n->check_busy || n->dead)
		return RAFT_BUSY; /* raft retries at the next threshold crossing */
	*bufs = NULL;
	*n_bufs = 0;
	n->snapshot_busy = true;
	n->stats.snapshots++;
	fsm_log_snapshotted(n);
	return 0;
}

/* raft_fsm->snapshot_async (thread pool). */
static int fsm_snapshot_async(struct raft_fsm *fsm, struct raft_buffer *bufs[],
			      unsigned *n_bufs)
{
	struct tally_node *n = fsm->data;
	assert(n != NULL && n->snapshot_busy);
	assert(bufs != NULL && n_bufs != NULL);
	*bufs = NULL;
	*n_bufs = 0;
	struct raft_buffer *one = raft_malloc(sizeof(*one));
	if (one == NULL)
		return RAFT_NOMEM;
	int rv = node_snapshot_take(n->ledger, n->raft_dir, one, &n->snapshot_reused);
	if (rv != 0) {
		raft_free(one);
		return rv;
	}
	*bufs = one;
	*n_bufs = 1;
	return 0;
}

/* Thread pool: the copy's last reference goes, and with it the file's blocks. */
static void release_work_cb(uv_work_t *work)
{
	struct tally_node *n = work->data;
	assert(n != NULL && n->release_busy && n->release_copy.base != NULL);
	n->release_adopted = node_snapshot_free(&n->release_copy);
}

/* Main loop, once the copy is released: the next snapshot may begin. */
static void release_after_cb(uv_work_t *work, int status)
{
	struct tally_node *n = work->data;
	assert(n != NULL && n->release_busy && n->snapshot_busy);
	if (status != 0 && n->release_copy.base != NULL) /* not run (cancelled): here, then */
		n->release_adopted = node_snapshot_free(&n->release_copy);
	assert(n->release_copy.base == NULL);
	n->stats.snapshots_adopted += n->release_adopted;
	n->release_busy = false;
	n->snapshot_busy = false;
	if (n->phase == NODE_HANDLES && n->handles_open == 0)
		node_close_finish(n);
}

/* Main loop: where this process linked more segments (a snapshot, a restore's), the
 * nodes this one sends to are told what it holds now. */
static void fsm_links_tell(struct tally_node *n)
{
	uint64_t linked = tally_ledger_segments_linked(NULL);
	if (linked != n->links_told) {
		n->links_told = linked;
		tally_tlsnet_held_changed(&n->transport);
	}
}

/* raft_fsm->snapshot_finalize (main loop), after the snapshot was stored or failed. */
static int fsm_snapshot_finalize(struct raft_fsm *fsm, struct raft_buffer *bufs[],
				 unsigned *n_bufs)
{
	struct tally_node *n = fsm->data;
	assert(n != NULL && bufs != NULL && n_bufs != NULL);
	assert(*bufs != NULL || *n_bufs == 0);
	assert(*n_bufs <= 1 && n->snapshot_busy && !n->release_busy); /* fsm_snapshot_async */
	if (*n_bufs == 1) {
		n->release_copy = (*bufs)[0];
		node_snapshot_sized(n, tally_ledger_snapshot_sent_bytes(n->release_copy.base,
								       n->release_copy.len));
		n->stats.snapshots_reused += n->snapshot_reused; /* set by snapshot_async */
		fsm_links_tell(n);
	}
	raft_free(*bufs);
	*bufs = NULL;
	*n_bufs = 0;
	if (n->release_copy.base != NULL && n->loop != NULL) {
		n->release_busy = true; /* before the queue: the work may run at once */
		n->release_work.data = n;
		if (uv_queue_work(n->loop, &n->release_work, release_work_cb, release_after_cb) == 0)
			return 0;
		n->release_busy = false;
	}
	if (n->release_copy.base != NULL) /* the simulator, or no queue: here */
		n->stats.snapshots_adopted += node_snapshot_free(&n->release_copy);
	n->snapshot_busy = false;
	return 0;
}

static void check_start(struct tally_node *n);

/* Thread pool: the full check tally_ledger_restore left pending. */
static void check_work_cb(uv_work_t *work)
{
	struct tally_node *n = work->data;
	assert(n != NULL && n->check_busy);
	n->check_rc = node_snapshot_verify(n->ledger, n->ledger_opts.snapshot_links_dir,
					   n->check_file, n->check_msg, sizeof(n->check_msg));
	/* The segments a leader's snapshot carried, linked now rather than at this node's
	 * next snapshot, so that it can tell the nodes it sends to that it holds them. */
	n->link_rc = n->check_rc == 0 && n->transport.links_dir != NULL
			     ? tally_ledger_link_segments(n->ledger)
			     : 0;
	pthread_mutex_lock(&n->check_lock); /* done with the ledger: a restore may go on */
	n->check_ran = true;
	pthread_cond_signal(&n->check_cond);
	pthread_mutex_unlock(&n->check_lock);
}

/* Main loop: waits until the running check is done with the ledger (its result is
 * concluded later, in check_after_cb, on the loop). */
static void check_wait(struct tally_node *n)
{
	pthread_mutex_lock(&n->check_lock);
	while (!n->check_ran)
		pthread_cond_wait(&n->check_cond, &n->check_lock);
	pthread_mutex_unlock(&n->check_lock);
}

/* Main loop, after the check. A restored ledger that fails it is not the cluster's
 * state: the node ends (it rejoins by snapshot once its data directory is wiped). */
static void check_after_cb(uv_work_t *work, int status)
{
	struct tally_node *n = work->data;
	assert(n != NULL && n->check_busy);
	n->check_busy = false;
	uint64_t ms = (uv_hrtime() - n->check_start_ns) / 1000000;
	if (status != 0)
		node_fail_stop(n, TALLY_NODE_EXIT_SOFTWARE, "the full check of a restored ledger "
			       "(applied index %llu) did not run: %s",
			       (unsigned long long)n->check_index, uv_strerror(status));
	else if (n->check_rc != 0)
		node_fail_stop(n, node_exit_status(n->check_rc), "restored ledger (applied index "
			       "%llu) fails the full check: %s", (unsigned long long)n->check_index,
			       n->check_msg);
	else
		node_log(n, "restored ledger (applied index %llu) passed the full check in "
			 "%llu ms, of %s", (unsigned long long)n->check_index, (unsigned long long)ms,
			 n->check_file[0] != '\0' ? n->check_file : "the live ledger");
	if (status == 0 && n->check_rc == 0 && n->link_rc != 0)
		node_log(n, "linking the restored journal's closed segments: %s (the next "
			 "snapshot links them)", tally_strerror(n->link_rc));
	else if (status == 0 && n->check_rc == 0)
		fsm_links_tell(n);
	if (status == 0 && n->check_rc == 0 && !n->check_queued && !n->dead)
		node_bootmark_write(n); /* the ledger is sound, as of this boot */
	if (n->check_queued && !n->dead) { /* a restore came while this one ran */
		n->check_queued = false;
		memcpy(n->check_file, n->check_file_next, sizeof(n->check_file));
		check_start(n);
		return;
	}
	if (n->phase == NODE_HANDLES && n->handles_open == 0)
		node_close_finish(n);
}

static void check_start(struct tally_node *n)
{
	assert(n != NULL && !n->check_busy);
	n->check_busy = true;
	n->check_ran = false; /* no check thread runs: no lock needed */
	n->check_rc = 0;
	n->check_msg[0] = '\0';
	n->check_index = tally_ledger_applied_index(n->ledger);
	n->check_start_ns = uv_hrtime();
	n->check_work.data = n;
	if (n->loop == NULL) { /* the simulator: at once, deterministically */
		check_work_cb(&n->check_work);
		check_after_cb(&n->check_work, 0);
		return;
	}
	int rv = uv_queue_work(n->loop, &n->check_work, check_work_cb, check_after_cb);
	if (rv != 0)
		node_fail_stop(n, TALLY_NODE_EXIT_SOFTWARE, "the full check of a restored ledger "
			       "(applied index %llu) cannot be queued: %s",
			       (unsigned long long)n->check_index, uv_strerror(rv));
}

/* What a dead node (the simulator's) does with a snapshot raft hands it: takes it
 * (as restore must on success) and keeps nothing. */
static int fsm_dead_restore(struct raft_buffer *buf)
{
	raft_free(buf->base);
	buf->base = NULL;
	return 0;
}

/* A snapshot this node cannot restore: the node ends (returns only under the
 * simulator; see fsm_fail). */
static int fsm_restore_fail(struct tally_node *n, struct raft_buffer *buf, const char *what,
			    int status, const char *why)
{
	assert(n != NULL && what != NULL && why != NULL);
	if (!n->started) /* raft_start restores the latest snapshot */
		node_fail_stop(n, status, "restore of the latest raft snapshot at start: %s: %s",
			       what, why);
	else
		node_fail_stop(n, status, "restore of the leader's snapshot (applied index %llu "
			       "before it): %s: %s", (unsigned long long)raft_last_applied(n->raft),
			       what, why);
	return fsm_dead_restore(buf);
}

/* raft_start's restore of this node's latest snapshot, when the ledger on disk already
 * holds all of it (its applied index is at least the snapshot's) and was written only
 * in this boot (bootmark.c): the ledger stays, not written again and checked again;
 * raft's buffer is freed, and raft's replay of the entries after the snapshot skips
 * those the ledger holds. Returns whether it did. */
static bool fsm_restore_kept(struct tally_node *n, struct raft_buffer *buf)
{
	uint64_t at = n->ledger != NULL ? tally_ledger_applied_index(n->ledger) : 0;
	if (n->started || !n->boot_same || n->load_snapshot_index == 0 ||
	    at < n->load_snapshot_index)
		return false;
	node_snapshot_sized(n, tally_ledger_snapshot_sent_bytes(buf->base, buf->len));
	raft_free(buf->base);
	buf->base = NULL;
	n->stats.ledger_kept_at_start = true;
	node_log(n, "ledger kept (applied index %llu) over raft's snapshot at %llu: written "
		 "only in this boot", (unsigned long long)at,
		 (unsigned long long)n->load_snapshot_index);
	node_time_observe(n);
	node_snapshot_stagger(n);
	return true;
}

/* raft_fsm->restore (main loop): on success the FSM owns buf->base. What holds the
 * loop is one pass to check the seal and one to write the staging file; the full
 * check runs on the thread pool afterwards. Any failure ends the node: the ledger is
 * closed by then, and raft has stored the snapshot in place of its log (a follower)
 * or holds nothing else to start from (at start). */
static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
	struct tally_node *n = fsm->data;
	assert(n != NULL && buf != NULL);
	assert(!n->snapshot_busy); /* raft never installs while it takes one */
	node_apply_drain(n); /* nothing queued may land on the restored ledger */
	if (n->dead)
		return fsm_dead_restore(buf);
	if (fsm_restore_kept(n, buf))
		return 0;
	int err = node_bootmark_clear(n); /* a process ended before the check: no mark */
	if (err != 0)
		return fsm_restore_fail(n, buf, "ledger", TALLY_NODE_EXIT_IO, strerror(err));
	/* The last restore's check may still be running. Refusing this one would leave
	 * raft 0.15 with its log already replaced by this snapshot (it does that before
	 * the restore) and the ledger not: so it waits for the check to be done with the
	 * ledger, and this restore's own check starts once that one is concluded. */
	if (n->check_busy) {
		uint64_t w0_ns = uv_hrtime();
		check_wait(n);
		n->check_queued = true;
		node_log(n, "snapshot restore waited %llu ms for the last restore's check",
			 (unsigned long long)((uv_hrtime() - w0_ns) / 1000000));
	}
	uint64_t t0_ns = uv_hrtime();
	tally_ledger_close(n->ledger);
	n->ledger = NULL;
	bool check_pending;
	int rc = tally_ledger_restore(n->ledger_dir, buf->base, buf->len, &n->ledger_opts,
				      &n->ledger, &check_pending);
	char missing[NODE_PATH_BYTES_MAX + 64], why[sizeof(missing) + 64];
	if (rc == TALLY_ECORRUPT &&
	    tally_ledger_snapshot_unresolved(buf->base, buf->len, n->ledger_opts.snapshot_links_dir,
					     missing, sizeof(missing))) {
		snprintf(why, sizeof(why), "the journal segment it names, %s, is missing or of "
			 "another length", missing);
		return fsm_restore_fail(n, buf, "ledger", node_exit_status(rc), why);
	}
	if (rc != 0)
		return fsm_restore_fail(n, buf, "ledger", node_exit_status(rc), tally_strerror(rc));
	if (n->started) /* not the node's own, at start */
		n->stats.snapshots_installed++;
	node_snapshot_sized(n, tally_ledger_snapshot_sent_bytes(buf->base, buf->len));
	/* (the last restore's check, still to be concluded, keeps its file's name) */
	char *file = n->check_busy ? n->check_file_next : n->check_file;
	file[0] = '\0';
	if (check_pending)
		node_snapshot_find(n->raft_dir, buf->base, buf->len, file, NODE_PATH_BYTES_MAX);
	raft_free(buf->base);
	buf->base = NULL;
	node_log(n, "ledger restored from a raft snapshot: applied index %llu, %llu ms on the "
		    "loop%s", (unsigned long long)tally_ledger_applied_index(n->ledger),
		 (unsigned long long)((uv_hrtime() - t0_ns) / 1000000),
		 check_pending ? "; full check running off the loop" : "");
	node_time_observe(n);
	node_writeback_reset(n); /* the restored ledger: its check syncs it whole */
	node_snapshot_stagger(n); /* raft counts from the leader's snapshot now */
	if (check_pending && !n->check_busy)
		check_start(n);
	else if (!check_pending)
		n->check_queued = false; /* nothing of this one to check */
	return 0;
}

void node_fsm_init(struct tally_node *n)
{
	assert(n != NULL);
	memset(&n->fsm, 0, sizeof(n->fsm));
	n->fsm.version = 3;
	n->fsm.data = n;
	n->fsm.apply = fsm_apply;
	n->fsm.snapshot = fsm_snapshot;
	n->fsm.restore = fsm_restore;
	n->fsm.snapshot_finalize = fsm_snapshot_finalize;
	n->fsm.snapshot_async = fsm_snapshot_async;
}
