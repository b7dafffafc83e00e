/*
 * consensus/raft015 — a way around a canonical raft 0.15 bug, from outside raft.
 *
 * A follower rejects an AppendEntries whose previous entry lies inside its snapshot:
 * raft's log has no term for an index its snapshot replaced (logTermOf returns 0), so
 * the log-matching check fails, although every entry a snapshot covers is committed and
 * therefore the same in the leader's log. A leader whose idea of the follower is older
 * than the follower's snapshot (the follower's answers were lost while it took
 * entries, snapshotted, and restarted) probes it from below that snapshot and never
 * gets past it: it walks down, sends its own, older snapshot (which the follower
 * acknowledges without installing), and starts again. The deterministic simulator
 * found it (tests/sim.c, seed 749 before this): a follower that never caught up.
 *
 * What is done: an incoming AppendEntries whose previous index is below this node's
 * snapshot, whose entries reach past the snapshot and at least as far as everything
 * this node stored, is trimmed to the entries after the snapshot, its previous entry
 * becoming the snapshot's last (index and term). That is the message the leader would
 * have sent had it known the snapshot: the entries dropped are committed, and equal to
 * the ones the snapshot holds (log matching, leader completeness). The condition on
 * the end matters: raft 0.15 answers a successful AppendEntries with its last stored
 * index rather than the last index the message covered, so a message that left part
 * of this node's log unchecked could make the leader count entries it never compared.
 *
 * The second: a leader's view of a follower that lost its data (a wiped node started
 * again). The leader still counts that follower's old match index, so when the
 * follower answers the InstallSnapshot it had to be sent, its answer (the snapshot's
 * last index) moves no index and raft 0.15 ignores it: the follower stays in the
 * snapshot state, sent nothing, until install_snapshot_timeout has passed (fsm.c
 * sizes that by the snapshot: 98 s for 1.1 GB, measured by tools/bench-memory). An
 * answer that shows the snapshot installed ends that wait at once, as raft's own
 * timeout would: the leader probes the follower from where it stands and goes on.
 *
 * The third is not raft's bug but this transport's: a follower that declines an
 * InstallSnapshot (tlsnet.c: it left out a segment the follower no longer holds)
 * never answers it, and the leader would wait out the timeout as well; the follower's
 * word that it declined ends the wait the same way (node_snapshot_declined).
 *
 * Any other message passes untouched.
 */
#include <assert.h>
#include <string.h>

#include "consensus/internal.h"

#define RAFT015_PROGRESS_SNAPSHOT 2 /* raft 0.15's PROGRESS__SNAPSHOT (src/progress.h) */

/* Drops the first k entries of an AppendEntries, keeping at least one: their bytes
 * stay in the message's batch, which raft frees with the remaining entries. */
static void entries_drop_front(struct raft_append_entries *a, unsigned k)
{
	assert(a != NULL && k > 0 && k < a->n_entries);
	memmove(a->entries, a->entries + k, (a->n_entries - k) * sizeof(a->entries[0]));
	a->n_entries -= k;
}

/* The follower's AppendEntries: trimmed to start at this node's snapshot. */
static void append_entries_fix(struct tally_node *n, struct raft_message *m)
{
	const struct raft *r = n->raft;
	struct raft_append_entries *a = &m->append_entries;
	raft_index snap = r->log.snapshot.last_index;
	raft_index end = a->prev_log_index + a->n_entries; /* the message's last entry */
	if (snap == 0 || a->prev_log_index >= snap || end <= snap || end < r->last_stored ||
	    raft_state((struct raft *)r) != RAFT_FOLLOWER || r->snapshot.put.data != NULL)
		return;
	entries_drop_front(a, (unsigned)(snap - a->prev_log_index));
	a->prev_log_index = snap;
	a->prev_log_term = r->log.snapshot.last_term;
}

/* Ends the leader's wait on the InstallSnapshot it sent the follower in progress slot
 * i, as raft's own timeout would: raft probes the follower from where it stands at the
 * next heartbeat, and sends a snapshot again if it needs one. raft asks whether
 * now - snapshot_last_send >= the timeout, in unsigned arithmetic: this makes the
 * difference the timeout exactly, even when the clock (the loop's, from boot) has not
 * yet reached the timeout itself. */
static void snapshot_wait_end(struct raft *r, unsigned i)
{
	struct raft_progress *p = &r->leader_state.progress[i];
	raft_time now = r->io->time(r->io);
	p->snapshot_last_send = now - (raft_time)r->install_snapshot_timeout;
}

/* The progress slot of server id while this node leads, or -1. */
static int progress_of(const struct raft *r, raft_id id)
{
	if (raft_state((struct raft *)r) != RAFT_LEADER)
		return -1;
	for (unsigned i = 0; i < r->configuration.n; i++)
		if (r->configuration.servers[i].id == id)
			return (int)i;
	return -1;
}

/* The leader's view of a follower's answer: a snapshot installed that raft would not
 * see, because the answer moves no index (the follower lost its data). */
static void snapshot_installed_fix(struct tally_node *n, const struct raft_message *m)
{
	struct raft *r = n->raft;
	const struct raft_append_entries_result *res = &m->append_entries_result;
	int i = progress_of(r, m->server_id);
	if (i < 0 || res->rejected != 0 || res->term != r->current_term)
		return;
	const struct raft_progress *p = &r->leader_state.progress[i];
	if (p->state != RAFT015_PROGRESS_SNAPSHOT || p->snapshot_index == 0 ||
	    res->last_log_index < p->snapshot_index || p->match_index < res->last_log_index)
		return; /* not installed yet, or raft sees it: its index moves */
	snapshot_wait_end(r, (unsigned)i);
	n->stats.install_waits_ended++;
}

void node_snapshot_declined(void *data, raft_id id)
{
	struct tally_node *n = data;
	assert(n != NULL && n->raft != NULL);
	int i = progress_of(n->raft, id);
	if (i < 0 || n->raft->leader_state.progress[i].state != RAFT015_PROGRESS_SNAPSHOT)
		return; /* no longer waiting on it: raft goes on as it would */
	snapshot_wait_end(n->raft, (unsigned)i);
	n->stats.install_declines_resent++;
}

void node_recv_fix(struct tally_node *n, struct raft_message *m)
{
	assert(n != NULL && m != NULL);
	if (m->type == RAFT_IO_APPEND_ENTRIES)
		append_entries_fix(n, m);
	else if (m->type == RAFT_IO_APPEND_ENTRIES_RESULT)
		snapshot_installed_fix(n, m);
}
