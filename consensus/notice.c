/*
 * consensus/notice — a commit told to the followers before the leader applies it.
 *
 * raft 0.15 applies newly committed entries on the leader from the handler of the
 * answer that committed them, and a follower learns the new commit index only from
 * the leader's next AppendEntries: after that apply (tens of milliseconds for a large
 * entry), or a heartbeat. So the followers' applies waited for the leader's instead of
 * running beside it (docs/performance.md, "The apply holds the loop").
 *
 * What is done: when the leader is about to apply an entry and its commit index has
 * moved since the last notice, every follower raft is streaming to (pipeline state) is
 * sent the heartbeat raft itself would send it: an AppendEntries without entries whose
 * previous entry is the last one sent to it (next_index - 1, with the leader's term for
 * it). The follower has that entry by the time the notice arrives (the connection keeps
 * the order), so it checks, answers and applies as for any heartbeat. The commit index
 * the notice carries is at most that previous entry, so a follower never takes as
 * committed an entry the notice did not check (raft 0.15 takes min(commit, last stored),
 * which may reach past it). A follower in any other state (probed, or being sent a
 * snapshot) is left to raft.
 *
 * Only before an entry of cfg.notice_entry_bytes_min or more (NODE_NOTICE_ENTRY_BYTES_MIN
 * unless set; the simulator sends one before every entry): the notice and its answer
 * are four system calls more on the leader and two on the follower, which a small
 * entry's apply (a few commands, tens of microseconds) does not repay. Measured with
 * single commands at 8 in flight (2 commands an entry), a notice before every apply cost
 * ~20 % more CPU per command on each node.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "consensus/internal.h"

#define RAFT015_PROGRESS_PIPELINE 1 /* raft 0.15's PROGRESS__PIPELINE (src/progress.h) */

static void notice_sent(struct raft_io_send *req, int status)
{
	(void)status; /* lost or not, raft's own messages follow */
	free(req);
}

/* The notice to the i-th server: false when it gets none. */
static bool notice_one(struct tally_node *n, unsigned i)
{
	struct raft *r = n->raft;
	const struct raft_server *s = &r->configuration.servers[i];
	const struct raft_progress *p = &r->leader_state.progress[i];
	if (s->id == r->id || s->role == RAFT_SPARE || p->state != RAFT015_PROGRESS_PIPELINE ||
	    p->next_index < 2)
		return false;
	raft_index prev = p->next_index - 1;
	raft_term prev_term = node_log_term(r, prev);
	if (prev_term == 0)
		return false;
	struct raft_io_send *req = malloc(sizeof(*req));
	if (req == NULL)
		return false;
	struct raft_message m;
	memset(&m, 0, sizeof(m));
	m.type = RAFT_IO_APPEND_ENTRIES;
	m.server_id = s->id;
	m.server_address = s->address;
	m.append_entries.term = r->current_term;
	m.append_entries.prev_log_index = prev;
	m.append_entries.prev_log_term = prev_term;
	m.append_entries.leader_commit = r->commit_index < prev ? r->commit_index : prev;
	req->data = n;
	if (r->io->send(r->io, req, &m, notice_sent) != 0) {
		free(req);
		return false;
	}
	return true;
}

void node_commit_notice(struct tally_node *n, size_t entry_bytes)
{
	assert(n != NULL && n->raft != NULL);
	struct raft *r = n->raft;
	if (entry_bytes < n->cfg.notice_entry_bytes_min || raft_state(r) != RAFT_LEADER ||
	    r->commit_index <= n->notice_commit)
		return;
	n->notice_commit = r->commit_index;
	for (unsigned i = 0; i < r->configuration.n; i++)
		n->stats.commit_notices += notice_one(n, i);
}
