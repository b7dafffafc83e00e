/*
 * consensus/health — whether this node is serving (tallyd's /health).
 *
 * A node is ready when it is started and not shutting down, knows a leader, and is not
 * catching up: not installing a snapshot, and its applied index within
 * TALLY_NODE_READY_LAG_ENTRIES of the highest commit index it has heard of. On the
 * leader, its term's first barrier must also have completed (node.c's ready_term):
 * until then it has not yet applied everything earlier leaders committed; and it must
 * have ledger time (consensus/clock.h), without which it refuses every write. A follower
 * must also have heard from the leader within the election timeout: what it knows of
 * the leader's commit index is only as fresh as the leader's last message.
 *
 * raft 0.15 applies every entry as soon as it knows it committed, so a follower's own
 * commit index (min(leader's commit, last entry stored)) is never far ahead of what it
 * applied, even when it lacks thousands of entries. What the leader has committed
 * travels in its AppendEntries (leader_commit) and InstallSnapshot (last_index)
 * messages: the node watches raft's incoming messages (raft_io->start's receive
 * callback, wrapped here) and keeps the highest of those, and when the last one came.
 * A node that was paused longer than the election timeout is therefore not ready when
 * it resumes until the leader's next message has told it how far behind it is.
 */
#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "consensus/internal.h"

/* raft_io->recv, wrapped: refuses a message contradicting a committed entry
 * (recvguard.c), notes the leader's commit index and counts InstallSnapshot copies,
 * then hands the message on. */
static void health_recv(struct raft_io *io, struct raft_message *m)
{
	struct tally_node *n = node_of_io(io);
	assert(n != NULL && m != NULL && n->raft_recv != NULL);
	if (!node_recv_guard(n, m)) { /* refused: raft rejects it; it tells nothing */
		n->raft_recv(io, m);
		return;
	}
	uint64_t committed = m->type == RAFT_IO_APPEND_ENTRIES ? m->append_entries.leader_commit
			     : m->type == RAFT_IO_INSTALL_SNAPSHOT ? m->install_snapshot.last_index
								   : 0;
	if (committed > n->leader_commit_seen)
		n->leader_commit_seen = committed;
	if (m->type == RAFT_IO_APPEND_ENTRIES || m->type == RAFT_IO_INSTALL_SNAPSHOT)
		n->leader_heard_ms = (uint64_t)tally_node_mono_ms(n);
	n->stats.install_snapshots_received += m->type == RAFT_IO_INSTALL_SNAPSHOT;
	node_recv_fix(n, m);
	n->raft_recv(io, m);
}

static int health_start(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick,
			raft_io_recv_cb recv)
{
	struct tally_node *n = node_of_io(io);
	assert(n != NULL && recv != NULL);
	n->raft_recv = recv;
	if (n->transport.tls != NULL) /* messages over TLS come from tlsnet.c, not raft_uv */
		tally_tlsnet_receive_to(&n->transport, io, health_recv);
	return n->io_next.start(io, msecs, tick, health_recv);
}

void node_health_install(struct tally_node *n)
{
	assert(n != NULL && n->io_next.start != NULL);
	n->io->start = health_start;
}

void tally_node_readiness(const struct tally_node_health_facts *f, struct tally_node_health *out)
{
	assert(f != NULL && out != NULL);
	memset(out, 0, sizeof(*out));
	out->leader_id = f->leader_id;
	out->applied_index = f->applied_index;
	out->commit_index = f->commit_index > f->applied_index ? f->commit_index : f->applied_index;
	unsigned long long applied = out->applied_index, commit = out->commit_index;
	char *why = out->why;
	size_t cap = sizeof(out->why);
	if (!f->started)
		snprintf(why, cap, "not started");
	else if (f->closing)
		snprintf(why, cap, "shutting down");
	else if (f->leader_id == 0)
		snprintf(why, cap, "no leader");
	else if (!f->leader && f->leader_silent_ms > f->election_timeout_ms)
		snprintf(why, cap, "no word from the leader for %llu ms",
			 (unsigned long long)f->leader_silent_ms);
	else if (f->installing_snapshot || commit - applied > TALLY_NODE_READY_LAG_ENTRIES)
		snprintf(why, cap, "catching up: %sapplied %llu of %llu",
			 f->installing_snapshot ? "installing a snapshot, " : "", applied, commit);
	else if (f->leader && !f->leader_ready)
		snprintf(why, cap, "new leader: applying what earlier leaders committed");
	else if (f->leader && f->leader_no_time)
		snprintf(why, cap, "no ledger time: the clocks of a majority of voters do not agree");
	else
		out->ready = true;
	if (out->ready)
		snprintf(why, cap, "ok");
}

void tally_node_health(struct tally_node *n, struct tally_node_health *out)
{
	assert(n != NULL && out != NULL);
	struct tally_node_health_facts f = {.started = n->started,
					    .closing = n->phase != NODE_OPEN,
					    .election_timeout_ms = n->cfg.election_timeout_ms};
	if (n->started && n->phase < NODE_RAFT_CLOSE) {
		raft_id id = 0;
		const char *address = NULL;
		raft_leader(n->raft, &id, &address);
		f.leader_id = id;
		f.leader = raft_state(n->raft) == RAFT_LEADER;
		f.leader_silent_ms = (uint64_t)tally_node_mono_ms(n) - n->leader_heard_ms;
		f.leader_ready = n->leader_term == n->raft->current_term &&
				 n->ready_term == n->leader_term;
		if (f.leader) {
			struct tally_node_clock k;
			tally_node_clock_status(n, &k);
			f.leader_no_time = !k.synchronized;
		}
		/* As raft's replicationInstallSnapshotBusy: a snapshot being stored in place
		 * of the log (last_stored is 0 until it is restored). */
		f.installing_snapshot = n->raft->last_stored == 0 && n->raft->snapshot.put.data != NULL;
		f.applied_index = raft_last_applied(n->raft);
		f.commit_index = n->raft->commit_index > n->leader_commit_seen ? n->raft->commit_index
									     : n->leader_commit_seen;
	}
	tally_node_readiness(&f, out);
}
