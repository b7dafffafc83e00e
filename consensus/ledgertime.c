/*
 * consensus/ledgertime — the node's side of ledger time (the rules are in clock.h):
 * the node's clocks, the voters, what the leader stamps on a batch, what every
 * replica observes when it applies one, peers' samples, and the log lines and
 * counters an operator needs when clocks disagree.
 */
#include <assert.h>
#include <inttypes.h>
#include <time.h>

#include "consensus/internal.h"

_Static_assert(TALLY_NODE_PEERS_MAX == CLOCK_PEERS_MAX, "one sample slot per peer");

#define TIME_DISAGREE_LOG_MS 2000       /* a wall clock this far off the cluster's is logged */
#define TIME_CATCHUP_LOG_MS 1000        /* the cluster's clocks pulling a batch this far is logged */
#define TIME_LOG_INTERVAL_MS 60000      /* repeated conditions are logged at most this often */

static int64_t clock_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t tally_node_mono_ms(struct tally_node *n)
{
	assert(n != NULL);
	return n->cfg.mono_ms != NULL ? n->cfg.mono_ms(n->cfg.hook_data) : clock_ms(CLOCK_MONOTONIC);
}

uint64_t tally_node_id(struct tally_node *n)
{
	assert(n != NULL);
	return n->cfg.id;
}

int64_t tally_node_wall_ms(struct tally_node *n)
{
	assert(n != NULL);
	return n->cfg.wall_ms != NULL ? n->cfg.wall_ms(n->cfg.hook_data) : clock_ms(CLOCK_REALTIME);
}

/* The voters of the current configuration into ids (at most cap); their number. */
static size_t voters_of(struct tally_node *n, uint64_t *ids, size_t cap)
{
	assert(n != NULL && ids != NULL);
	const struct raft_configuration *c = &n->raft->configuration;
	size_t k = 0;
	for (unsigned i = 0; i < c->n && k < cap; i++)
		if (c->servers[i].role == RAFT_VOTER)
			ids[k++] = c->servers[i].id;
	return k;
}

/* Reads the clocks now; logs a change of synchronization and a wall clock that is far
 * off the cluster's (at most every TIME_LOG_INTERVAL_MS while it lasts). */
static void time_read(struct tally_node *n, struct clock_reading *r)
{
	assert(n != NULL && r != NULL);
	uint64_t voters[CLOCK_PEERS_MAX + 1];
	size_t n_voters = n->raft_inited ? voters_of(n, voters, CLOCK_PEERS_MAX + 1) : 0;
	int64_t mono = tally_node_mono_ms(n), wall = tally_node_wall_ms(n);
	tally_clock_read(&n->clock, mono, wall, n->cfg.id, voters, n_voters, r);
	if (r->synchronized != n->time_synchronized) {
		n->time_synchronized = r->synchronized;
		if (r->synchronized)
			node_log(n, "clock: synchronized (%u of %u voters' clocks agree; this node's "
				 "is %+" PRId64 " ms off)", r->agreeing, r->voters, r->offset_ms);
		else
			node_log(n, "clock: not synchronized (%u of %u voters' clocks agree); no "
				 "ledger time: a leader stamps no batch until a majority agrees",
				 r->agreeing, r->voters);
	}
	bool off = r->synchronized &&
		   (r->offset_ms > TIME_DISAGREE_LOG_MS || r->offset_ms < -TIME_DISAGREE_LOG_MS);
	if (off && (!n->time_off_logged || mono - n->time_off_log_ms >= TIME_LOG_INTERVAL_MS)) {
		node_log(n, "clock: this node's wall clock is %+" PRId64 " ms off the cluster's "
			 "(%u of %u voters agree); ledger time follows the cluster", r->offset_ms,
			 r->agreeing, r->voters);
		n->time_off_log_ms = mono;
	}
	n->time_off_logged = off;
}

bool node_time_next(struct tally_node *n, int64_t *time_ms)
{
	assert(n != NULL && time_ms != NULL);
	struct clock_reading r;
	time_read(n, &r);
	if (!tally_clock_next(&n->clock, &r, time_ms))
		return false;
	if (n->clock.observed && *time_ms - r.estimate_ms > TIME_CATCHUP_LOG_MS) {
		n->time_stats.catchups++;
		node_log(n, "clock: ledger time caught up %" PRId64 " ms with the cluster's clocks "
			 "(%u of %u voters agree)", *time_ms - r.estimate_ms, r.agreeing, r.voters);
	}
	tally_clock_observe(&n->clock, *time_ms, tally_node_mono_ms(n));
	return true;
}

void node_time_observed(struct tally_node *n, int64_t time_ms)
{
	assert(n != NULL && time_ms > 0);
	tally_clock_observe(&n->clock, time_ms, tally_node_mono_ms(n));
}

void node_time_observe(struct tally_node *n)
{
	assert(n != NULL);
	struct tally_ledger *l = node_ledger(n);
	/* A new ledger's time 0 is no time at all: its first batch waits for the clocks. */
	if (l != NULL && tally_ledger_time_ms(l) > 0)
		node_time_observed(n, tally_ledger_time_ms(l));
}

void tally_node_clock_sample(struct tally_node *n, uint64_t peer_id, int64_t remote_wall_ms,
			     int64_t sent_mono_ms, int64_t recv_mono_ms)
{
	assert(n != NULL && peer_id != 0);
	if (peer_id == n->cfg.id)
		return;
	n->time_stats.samples++;
	if (!tally_clock_sample(&n->clock, peer_id, remote_wall_ms, sent_mono_ms, recv_mono_ms))
		n->time_stats.samples_dropped++;
}

void tally_node_clock_status(struct tally_node *n, struct tally_node_clock *out)
{
	assert(n != NULL && out != NULL);
	struct clock_reading r;
	time_read(n, &r);
	out->synchronized = r.synchronized;
	out->agreeing = r.agreeing;
	out->voters = r.voters;
	out->offset_ms = r.synchronized ? r.offset_ms : 0;
	struct tally_ledger *l = node_ledger(n);
	out->ledger_time_ms = l != NULL ? tally_ledger_time_ms(l) : 0;
	out->estimate_ms = n->clock.observed ? r.estimate_ms : 0;
	out->samples = n->time_stats.samples;
	out->samples_dropped = n->time_stats.samples_dropped;
	out->catchups = n->time_stats.catchups;
}
