/*
 * consensus/clock — see clock.h for the rules and the bound.
 */
#include "consensus/clock.h"

#include <assert.h>
#include <string.h>

/* One end of a source's interval, for the sweep. */
struct clock_edge {
	int64_t at_ms;
	int delta;                   /* +1 opens an interval, -1 closes one */
};

void tally_clock_init(struct tally_clock *c)
{
	assert(c != NULL);
	memset(c, 0, sizeof(*c));
}

void tally_clock_observe(struct tally_clock *c, int64_t ledger_ms, int64_t mono_ms)
{
	assert(c != NULL);
	assert(ledger_ms >= 0 && mono_ms >= 0);
	int64_t base = ledger_ms - mono_ms;
	if (!c->observed || base > c->base_ms)
		c->base_ms = base;
	c->observed = true;
}

static struct clock_sample *sample_slot(struct tally_clock *c, uint64_t peer_id)
{
	assert(c != NULL && peer_id != 0);
	struct clock_sample *free_slot = NULL;
	for (size_t i = 0; i < CLOCK_PEERS_MAX; i++) {
		if (c->samples[i].peer_id == peer_id)
			return &c->samples[i];
		if (c->samples[i].peer_id == 0 && free_slot == NULL)
			free_slot = &c->samples[i];
	}
	return free_slot;
}

bool tally_clock_sample(struct tally_clock *c, uint64_t peer_id, int64_t remote_wall_ms,
			int64_t sent_mono_ms, int64_t recv_mono_ms)
{
	assert(c != NULL && peer_id != 0);
	int64_t rtt_ms = recv_mono_ms - sent_mono_ms;
	struct clock_sample *s = sample_slot(c, peer_id);
	if (rtt_ms < 0 || rtt_ms > CLOCK_SAMPLE_RTT_MAX_MS || s == NULL) {
		c->samples_dropped++;
		return false;
	}
	/* The peer read its clock at some instant between sending and receiving: its
	 * offset against our monotonic clock lies in [wall - recv, wall - sent]. */
	s->peer_id = peer_id;
	s->offset_lo_ms = remote_wall_ms - recv_mono_ms;
	s->offset_hi_ms = remote_wall_ms - sent_mono_ms;
	s->taken_mono_ms = recv_mono_ms;
	assert(s->offset_lo_ms <= s->offset_hi_ms);
	return true;
}

void tally_clock_forget(struct tally_clock *c, uint64_t peer_id)
{
	assert(c != NULL);
	for (size_t i = 0; i < CLOCK_PEERS_MAX; i++)
		if (c->samples[i].peer_id == peer_id)
			memset(&c->samples[i], 0, sizeof(c->samples[i]));
}

static bool is_voter(uint64_t id, const uint64_t *voters, size_t n_voters)
{
	for (size_t i = 0; i < n_voters; i++)
		if (voters[i] == id)
			return true;
	return false;
}

/* Edges sort by time; at equal times an opening edge comes first, so intervals that
 * touch count as agreeing. Insertion sort: at most 2 * (CLOCK_PEERS_MAX + 1) edges. */
static void edges_sort(struct clock_edge *e, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		struct clock_edge x = e[i];
		size_t j = i;
		while (j > 0 && (e[j - 1].at_ms > x.at_ms ||
				 (e[j - 1].at_ms == x.at_ms && e[j - 1].delta < x.delta))) {
			e[j] = e[j - 1];
			j--;
		}
		e[j] = x;
	}
}

/* Marzullo's algorithm: the largest number of intervals sharing a point, and the
 * interval [*lo, *hi] they share. Among equally large groups, the one containing
 * `prefer` (this node's own offset) wins, else the earliest. */
static unsigned marzullo(struct clock_edge *e, size_t n, int64_t prefer, int64_t *lo,
			 int64_t *hi)
{
	assert(e != NULL && n % 2 == 0);
	edges_sort(e, n);
	unsigned best = 0;
	bool best_has_prefer = false;
	int count = 0;
	for (size_t i = 0; i + 1 < n; i++) {
		count += e[i].delta;
		assert(count >= 0);
		if (e[i].delta < 0 || count <= 0)
			continue;
		/* An opening edge: [e[i], e[i + 1]] is shared by `count` intervals. */
		bool has_prefer = e[i].at_ms <= prefer && prefer <= e[i + 1].at_ms;
		if ((unsigned)count > best || ((unsigned)count == best && has_prefer && !best_has_prefer)) {
			best = (unsigned)count;
			best_has_prefer = has_prefer;
			*lo = e[i].at_ms;
			*hi = e[i + 1].at_ms;
		}
	}
	return best;
}

void tally_clock_read(const struct tally_clock *c, int64_t mono_ms, int64_t wall_ms,
		      uint64_t self, const uint64_t *voters, size_t n_voters,
		      struct clock_reading *r)
{
	assert(c != NULL && r != NULL);
	assert(voters != NULL || n_voters == 0);
	memset(r, 0, sizeof(*r));
	r->estimate_ms = c->base_ms + mono_ms;
	r->voters = (unsigned)n_voters;
	struct clock_edge edges[2 * (CLOCK_PEERS_MAX + 1)];
	size_t n = 0;
	const int64_t half = CLOCK_TOLERANCE_MS / 2, own = wall_ms - mono_ms;
	if (is_voter(self, voters, n_voters)) {
		edges[n++] = (struct clock_edge){own - half, +1};
		edges[n++] = (struct clock_edge){own + half, -1};
	}
	for (size_t i = 0; i < CLOCK_PEERS_MAX; i++) {
		const struct clock_sample *s = &c->samples[i];
		if (s->peer_id == 0 || s->peer_id == self || !is_voter(s->peer_id, voters, n_voters) ||
		    mono_ms - s->taken_mono_ms > CLOCK_SAMPLE_AGE_MAX_MS)
			continue;
		edges[n++] = (struct clock_edge){s->offset_lo_ms - half, +1};
		edges[n++] = (struct clock_edge){s->offset_hi_ms + half, -1};
	}
	r->sources = (unsigned)(n / 2);
	if (n == 0)
		return;
	int64_t lo = 0, hi = 0;
	r->agreeing = marzullo(edges, n, own, &lo, &hi);
	r->synchronized = n_voters > 0 && r->agreeing >= n_voters / 2 + 1;
	if (!r->synchronized)
		return;
	int64_t offset = own < lo ? lo : own > hi ? hi : own;
	r->cluster_ms = mono_ms + offset;
	r->offset_ms = wall_ms - r->cluster_ms;
}

bool tally_clock_next(const struct tally_clock *c, const struct clock_reading *r,
		      int64_t *time_ms)
{
	assert(c != NULL && r != NULL && time_ms != NULL);
	if (!r->synchronized)
		return false;
	int64_t t = r->cluster_ms;
	if (c->observed && r->estimate_ms > t)
		t = r->estimate_ms;
	*time_ms = t < 0 ? 0 : t;
	return true;
}
