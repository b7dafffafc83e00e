/*
 * consensus/failstop — the one place where a node ends itself.
 *
 * A replica that cannot write its raft log or apply a committed entry must not stay
 * up: raft 0.15 would keep it in the cluster (as leader, even) with a state machine
 * that has stopped, or let it reuse log indexes it already sent. So every such
 * failure — in the I/O guard (ioguard.c) or the state machine (fsm.c) — calls
 * node_fail_stop, which logs what failed and ends the process at once with _exit: no
 * later raft callback runs, so nothing more is applied, and no answer is sent for an
 * entry this node did not apply (fsm.c hands results to callers only after the
 * ledger committed them). Answers still queued for entries applied before are lost
 * with the connections; their callers see an unknown outcome and retry with the same
 * request id. The statuses are listed in node.h (TALLY_NODE_EXIT_*).
 */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "consensus/internal.h"

int node_exit_status(int tally_error)
{
	assert(tally_error != 0);
	switch (tally_error) {
	case TALLY_ENOMEM: return TALLY_NODE_EXIT_NOMEM;
	case TALLY_EIO:
	case TALLY_ENOSPC:
	case TALLY_EFULL: return TALLY_NODE_EXIT_IO;
	case TALLY_ECORRUPT:
	case TALLY_EVERSION: return TALLY_NODE_EXIT_DATA;
	default: return TALLY_NODE_EXIT_SOFTWARE;
	}
}

static const char *status_name(int status)
{
	switch (status) {
	case TALLY_NODE_EXIT_IO: return "storage";
	case TALLY_NODE_EXIT_NOMEM: return "out of memory";
	case TALLY_NODE_EXIT_DATA: return "data does not verify";
	default: return "internal error";
	}
}

void node_fail_stop(struct tally_node *n, int status, const char *fmt, ...)
{
	assert(n != NULL && fmt != NULL);
	assert(status == TALLY_NODE_EXIT_IO || status == TALLY_NODE_EXIT_NOMEM ||
	       status == TALLY_NODE_EXIT_DATA || status == TALLY_NODE_EXIT_SOFTWARE);
	char what[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	node_log(n, "FATAL: %s; exiting with status %d (%s) before anything more is applied "
		 "or answered", what, status, status_name(status));
	if (n->cfg.fail_stop == NULL)
		_exit(status);
	n->dead = true; /* the simulator's process "exit": it crashes this node next */
	n->cfg.fail_stop(n->cfg.hook_data, status, what);
}
