/*
 * consensus/ioguard — a failed raft disk write ends the node.
 *
 * canonical raft 0.15 does not stop when its own log write fails. A leader whose
 * append fails truncates the entries from its in-memory log and stays leader, although
 * it has already sent them to the followers; its next entries then take the same
 * indexes in the same term with different content. The followers see a matching
 * (index, term), keep the old entry, and acknowledge: the leader commits and applies
 * the new batch while they apply the old one. Jepsen's fsync nemesis found exactly
 * that (jepsen/findings/2026-11-22-idempotence-fsync). A follower whose append fails
 * rejects the request but keeps the entries in memory.
 *
 * A disk failure is fatal to a node (fail-stop, failstop.c), and this is where it is
 * enforced. The raft_io methods of raft_uv (struct raft_io in raft.h), one by one:
 *
 *   append, truncate, snapshot_put, set_term, set_vote — wrapped. They write the log,
 *     the snapshots and the metadata, and raft 0.15 carries on after their failure
 *     (above). Any failure, reported at once or in the callback, ends the process
 *     (node_fail_stop: 74, or 71 for RAFT_NOMEM) before raft sees it, so the failed
 *     write can neither be applied here nor acknowledged to a client. That includes
 *     the guard's own allocation of a request: returning RAFT_NOMEM to raft would be
 *     the very failure raft mishandles.
 *   init, load, bootstrap, recover, start — not wrapped against failure: they run
 *     inside raft_init, raft_bootstrap and raft_start, whose failure
 *     tally_node_init/start report (tallyd exits 1 without having served anything).
 *     load is wrapped only to note the index of the snapshot raft restores at start
 *     (n->load_snapshot_index: fsm.c keeps a ledger that already holds it).
 *   send — not wrapped: a message that cannot be sent is lost, which raft expects of
 *     a network and repairs by sending again.
 *   snapshot_get — not wrapped: a read; a failure aborts that one InstallSnapshot and
 *     the leader tries again later.
 *   async_work — not wrapped: raft uses it only to take a snapshot (fsm.c); a failed
 *     snapshot is dropped and taken again at the next threshold.
 *   time, random — cannot fail.
 *   close — wrapped: under the simulator it first answers the writes raft asked of a
 *     dead node (guard_dead); a real node's close passes straight through.
 *
 * What reached the disk is loaded again at restart and raft's ordinary log repair
 * reconciles it with the leader's. RAFT_CANCELED (raft_uv cancelling requests while
 * it closes) is not a failure and passes through.
 */
#include <assert.h>
#include <stdlib.h>

#include "consensus/internal.h"

/* Returns rv, unless it is a failure: then the process ends. Under the simulator the
 * node is dead instead and 0 goes back: raft must not run its own handling of the
 * failure, which a real node never reaches; the caller keeps raft's request until raft
 * closes (guard_dead), and the simulator restarts the node from its disk. */
static int checked(struct tally_node *n, const char *what, int rv)
{
	assert(n != NULL && what != NULL);
	if (rv == 0 || rv == RAFT_CANCELED)
		return rv;
	/* raft 0.15's raft_strerror has no text for RAFT_NOSPACE ("unknown error"). */
	node_fail_stop(n, rv == RAFT_NOMEM ? TALLY_NODE_EXIT_NOMEM : TALLY_NODE_EXIT_IO,
		       "raft %s failed: %s (%s)", what,
		       rv == RAFT_NOSPACE ? "no space left on device" : raft_strerror(rv),
		       n->io->errmsg);
	return 0;
}

/* The guard's own request for `what`: a failed allocation ends the process too (NULL
 * only under the simulator, whose node is then dead: 0 goes back, as in checked). */
static void *guard_alloc(struct tally_node *n, size_t size_bytes, const char *what)
{
	assert(n != NULL && size_bytes > 0);
	void *g = malloc(size_bytes);
	if (g == NULL)
		node_fail_stop(n, TALLY_NODE_EXIT_NOMEM, "raft %s: no memory for the I/O guard's "
			       "request", what);
	return g;
}

/* A write raft asked of the simulator's dead node: never done, and answered when raft
 * closes the I/O, so that raft frees its request. The answer is 0: raft is unavailable
 * by then and discards it, whereas RAFT_CANCELED would send raft 0.15's leader append
 * callback looking for its client requests, which closing cleared. A real node never
 * gets here: it has ended. */
struct guard_dead {
	struct guard_dead *next;
	struct raft_io_append *append;    /* one of the two */
	raft_io_append_cb append_cb;
	struct raft_io_snapshot_put *put;
	raft_io_snapshot_put_cb put_cb;
};

static int dead_write(struct tally_node *n, const struct guard_dead *w)
{
	assert(n->dead && n->cfg.fail_stop != NULL);
	struct guard_dead *d = malloc(sizeof(*d));
	if (d == NULL)
		abort(); /* the simulator only */
	*d = *w;
	d->next = n->dead_writes;
	n->dead_writes = d;
	return 0;
}

static void guard_close(struct raft_io *io, raft_io_close_cb cb)
{
	struct tally_node *n = node_of_io(io);
	while (n->dead_writes != NULL) {
		struct guard_dead *d = n->dead_writes;
		n->dead_writes = d->next;
		if (d->append != NULL)
			d->append_cb(d->append, 0);
		else
			d->put_cb(d->put, 0);
		free(d);
	}
	n->io_next.close(io, cb);
}

struct guard_append {
	struct raft_io_append req;        /* what raft_uv sees */
	struct raft_io_append *outer;     /* raft's request */
	raft_io_append_cb cb;
	struct tally_node *n;
};

static void guard_append_cb(struct raft_io_append *req, int status)
{
	struct guard_append *g = req->data;
	struct raft_io_append *outer = g->outer;
	raft_io_append_cb cb = g->cb;
	struct tally_node *n = g->n;
	free(g);
	int rv = checked(n, "log append", status);
	if (n->dead) /* the simulator's node died (here or before): it never hears back */
		dead_write(n, &(struct guard_dead){.append = outer, .append_cb = cb});
	else
		cb(outer, rv);
}

static int guard_append(struct raft_io *io, struct raft_io_append *req,
			const struct raft_entry entries[], unsigned n_entries, raft_io_append_cb cb)
{
	struct tally_node *n = node_of_io(io);
	if (n->dead) /* the simulator's dead node writes nothing more */
		return dead_write(n, &(struct guard_dead){.append = req, .append_cb = cb});
	struct guard_append *g = guard_alloc(n, sizeof(*g), "log append");
	int rv = 0;
	if (g != NULL) {
		*g = (struct guard_append){.outer = req, .cb = cb, .n = n};
		g->req.data = g;
		rv = n->io_next.append(io, &g->req, entries, n_entries, guard_append_cb);
		if (rv == 0)
			return 0;
		free(g);
		rv = checked(n, "log append", rv);
	}
	if (n->dead) /* the simulator's node died here */
		return dead_write(n, &(struct guard_dead){.append = req, .append_cb = cb});
	return rv;
}

struct guard_put {
	struct raft_io_snapshot_put req;
	struct raft_io_snapshot_put *outer;
	raft_io_snapshot_put_cb cb;
	struct tally_node *n;
};

static void guard_put_cb(struct raft_io_snapshot_put *req, int status)
{
	struct guard_put *g = req->data;
	struct raft_io_snapshot_put *outer = g->outer;
	raft_io_snapshot_put_cb cb = g->cb;
	struct tally_node *n = g->n;
	free(g);
	int rv = checked(n, "snapshot write", status);
	if (n->dead) /* the simulator's node died (here or before): it never hears back */
		dead_write(n, &(struct guard_dead){.put = outer, .put_cb = cb});
	else
		cb(outer, rv);
}

static int guard_snapshot_put(struct raft_io *io, unsigned trailing,
			      struct raft_io_snapshot_put *req, const struct raft_snapshot *snapshot,
			      raft_io_snapshot_put_cb cb)
{
	struct tally_node *n = node_of_io(io);
	if (n->dead) /* the simulator's dead node writes nothing more */
		return dead_write(n, &(struct guard_dead){.put = req, .put_cb = cb});
	struct guard_put *g = guard_alloc(n, sizeof(*g), "snapshot write");
	int rv = 0;
	if (g != NULL) {
		*g = (struct guard_put){.outer = req, .cb = cb, .n = n};
		g->req.data = g;
		rv = n->io_next.snapshot_put(io, trailing, &g->req, snapshot, guard_put_cb);
		if (rv == 0)
			return 0;
		free(g);
		rv = checked(n, "snapshot write", rv);
	}
	if (n->dead) /* the simulator's node died here */
		return dead_write(n, &(struct guard_dead){.put = req, .put_cb = cb});
	return rv;
}

static int guard_load(struct raft_io *io, raft_term *term, raft_id *voted_for,
		      struct raft_snapshot **snapshot, raft_index *start_index,
		      struct raft_entry **entries, size_t *n_entries)
{
	struct tally_node *n = node_of_io(io);
	int rv = n->io_next.load(io, term, voted_for, snapshot, start_index, entries, n_entries);
	n->load_snapshot_index = rv == 0 && *snapshot != NULL ? (*snapshot)->index : 0;
	return rv;
}

static int guard_truncate(struct raft_io *io, raft_index index)
{
	struct tally_node *n = node_of_io(io);
	return checked(n, "log truncate", n->io_next.truncate(io, index));
}

static int guard_set_term(struct raft_io *io, raft_term term)
{
	struct tally_node *n = node_of_io(io);
	if (n->dead)
		return 0;
	return checked(n, "term write", n->io_next.set_term(io, term));
}

static int guard_set_vote(struct raft_io *io, raft_id server_id)
{
	struct tally_node *n = node_of_io(io);
	if (n->dead)
		return 0;
	return checked(n, "vote write", n->io_next.set_vote(io, server_id));
}

void node_ioguard_remove(struct tally_node *n)
{
	assert(n != NULL && n->io != NULL && n->io->append == guard_append);
	assert(n->dead_writes == NULL); /* raft_close answered them */
	n->io->append = n->io_next.append;
	n->io->snapshot_put = n->io_next.snapshot_put;
	n->io->truncate = n->io_next.truncate;
	n->io->set_term = n->io_next.set_term;
	n->io->set_vote = n->io_next.set_vote;
	n->io->close = n->io_next.close;
	n->io->load = n->io_next.load;
	n->io->start = n->io_next.start; /* health.c's wrapper */
}

void node_ioguard_install(struct tally_node *n)
{
	n->io_next = *n->io;
	n->io->append = guard_append;
	n->io->snapshot_put = guard_snapshot_put;
	n->io->truncate = guard_truncate;
	n->io->set_term = guard_set_term;
	n->io->set_vote = guard_set_vote;
	n->io->close = guard_close;
	n->io->load = guard_load;
}
