/*
 * consensus/recvguard — a peer's message that contradicts a committed entry.
 *
 * Raft trusts its peers: it tolerates crashes and lost messages, not lies. Every peer
 * on the raft port has proven a node certificate of the cluster's CA (tlsnet.c), so a
 * lie takes a stolen node key or a broken node. One lie canonical raft 0.15 cannot
 * survive is an AppendEntries that contradicts an entry this node knows is committed
 * (a different term at an index at or below its commit index): raft then stops the
 * node for good ("unavailable") while the process stays up. No correct leader of this
 * node's term or a later one ever sends one (leader completeness: an entry committed
 * by term T is in the log of every leader after T), so such a message is proof of a
 * faulty sender.
 *
 * A message of an earlier term proves nothing: a leader deposed while its message was
 * on the way (a loop stalled past the election timeout does that) sends entries it
 * never got committed, and the new leader may have committed others at those indexes.
 * Raft rejects any message of an earlier term before it looks at the entries, so such
 * a message goes to raft as it is, neither counted nor logged.
 *
 * What is done: before raft sees an AppendEntries, its previous entry and every entry
 * at or below this node's commit index are compared with this node's log; on a
 * contradiction the message's term is set to 0, below any term this node has had, so
 * raft answers it as a stale leader's (rejected, its entries freed, this node's term
 * and log untouched). The node logs the sender and counts the message
 * (tally_raft_messages_refused_total). It keeps serving the true leader.
 *
 * raft 0.15's log layout (struct raft_log in raft.h: a ring of entries after
 * `offset`, and the snapshot's last index and term) is read as raft's own logTermOf
 * reads it.
 */
#include <assert.h>

#include "consensus/internal.h"

raft_term node_log_term(const struct raft *r, raft_index i)
{
	const struct raft_log *l = &r->log;
	if (i == 0)
		return 0;
	if (i == l->snapshot.last_index)
		return l->snapshot.last_term;
	size_t stored = l->back >= l->front ? l->back - l->front : l->size - l->front + l->back;
	if (i <= l->offset || i > l->offset + stored)
		return 0;
	return l->entries[(l->front + (size_t)(i - 1 - l->offset)) % l->size].term;
}

/* Whether this node holds index i, committed, with a term other than `term`. */
static bool contradicts(const struct raft *r, raft_index i, raft_term term)
{
	if (i == 0 || i > r->commit_index)
		return false;
	raft_term mine = node_log_term(r, i);
	return mine != 0 && mine != term;
}

/* The first committed index the message contradicts; 0 when none. */
static raft_index first_contradiction(const struct raft *r, const struct raft_append_entries *a)
{
	if (contradicts(r, a->prev_log_index, a->prev_log_term))
		return a->prev_log_index;
	for (unsigned j = 0; j < a->n_entries; j++) {
		raft_index i = a->prev_log_index + 1 + j;
		if (i > r->commit_index)
			break;
		if (contradicts(r, i, a->entries[j].term))
			return i;
	}
	return 0;
}

bool node_recv_guard(struct tally_node *n, struct raft_message *m)
{
	assert(n != NULL && m != NULL);
	if (m->type != RAFT_IO_APPEND_ENTRIES)
		return true;
	const struct raft *r = n->raft;
	struct raft_append_entries *a = &m->append_entries;
	if (a->term < r->current_term)
		return true; /* a deposed leader's: raft rejects it on its term alone */
	raft_index at = first_contradiction(r, a);
	if (at == 0)
		return true;
	n->stats.raft_messages_refused++;
	node_log(n, "raft message from node %llu (%s) refused: its entry %llu contradicts "
		    "a committed one (term %llu here); the sender is faulty or forged",
		 (unsigned long long)m->server_id, m->server_address, (unsigned long long)at,
		 (unsigned long long)node_log_term(r, at));
	a->term = 0; /* raft rejects it as a stale leader's and frees its entries */
	return false;
}
