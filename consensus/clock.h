/*
 * consensus/clock — ledger time that no single clock can bend.
 *
 * The ledger has no clock of its own: each batch carries a time chosen by the leader,
 * and every replica applies it as max(batch time, time of the previous batch). Holds
 * time out and lots expire against that time, on every replica and for good. A leader
 * that stamped batches with its own wall clock could therefore release every open
 * hold early by stepping its clock forward, or by winning an election while it runs
 * an hour ahead. This module chooses the time of the leader's next batch so that no
 * single clock can do that:
 *
 *   time = max(E, C), and no time at all unless a majority of clocks agree
 *
 *   E  the monotonic estimate: the largest (ledger time - monotonic time) this node
 *      has observed, plus its monotonic clock now. Observations are every batch this
 *      node applied or proposed and every snapshot it restored. E counts only time
 *      this node saw pass, so it never runs ahead of real time; after an election, a
 *      restart or an outage it lags behind.
 *   C  cluster time, only while a majority of the voters' wall clocks agree: this
 *      node's wall clock, clamped into the interval of offsets that the largest group
 *      of agreeing clocks share (Marzullo's algorithm), where each clock is this
 *      node's own or the latest sample of a peer's (rpc/peerclock.c asks every peer
 *      for its wall clock twice a second). C lets ledger time catch up with real time
 *      after elections and after a whole-cluster outage, but only as far as a
 *      majority of clocks agree it has passed.
 *
 * Offsets are kept against the monotonic clock (remote wall time - local monotonic
 * time), so a step of this node's own wall clock does not move its samples of the
 * others; this node's wall clock is just one more source, read when it is needed.
 *
 * The bound. If a majority of the voters' wall clocks are within
 * CLOCK_TOLERANCE_MS / 2 of real time, and monotonic clocks run at the rate of real
 * time, then C is within CLOCK_ERROR_MAX_MS of real time either way. (Each correct
 * clock's interval contains the true offset; the correct clocks are a majority, so
 * any group as large as the chosen one includes a correct clock, and the chosen
 * interval is at most one interval wide: CLOCK_TOLERANCE_MS plus one round trip of at
 * most CLOCK_SAMPLE_RTT_MAX_MS.) E only adds monotonic time to ledger times observed
 * earlier, so it stays within the bound above. Every batch time is therefore within
 * CLOCK_ERROR_MAX_MS of real time, and a hold, or a lot, is never released or expired
 * more than CLOCK_EARLY_MAX_MS before its time has really passed (its start may be
 * stamped up to the bound late, its end up to the bound early). Clocks that are not
 * part of a majority can hold C back or leave it undefined, never push it.
 *
 * Not synchronized (no majority agrees, or too few fresh samples): there is no ledger
 * time, and the leader proposes nothing (tally_clock_next returns false). Stamping E
 * alone would be safe going forward, but a batch stamped late by an unknown lag would
 * shorten every hold it starts once the clocks agree again. The price: writes need a
 * majority of voters with correct clocks, as they need a majority of voters.
 *
 * Pure: every input (monotonic and wall readings, samples, the voters) is passed
 * in, so the rules are unit-tested without clocks and the same code runs in the
 * simulator. No allocation; limits below.
 */
#ifndef TALLY_CONSENSUS_CLOCK_H
#define TALLY_CONSENSUS_CLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CLOCK_TOLERANCE_MS 500       /* how far apart two healthy wall clocks may be */
#define CLOCK_SAMPLE_RTT_MAX_MS 500  /* a slower round trip says too little: dropped */
#define CLOCK_SAMPLE_AGE_MAX_MS 5000 /* a sample older than this is forgotten */
#define CLOCK_PEERS_MAX 64           /* peers whose samples are kept */
/* How far from real time a batch time may be, either way (see "The bound" above). */
#define CLOCK_ERROR_MAX_MS (CLOCK_TOLERANCE_MS + CLOCK_SAMPLE_RTT_MAX_MS)
/* How much earlier than its timeout a hold may be released (or a lot expired). */
#define CLOCK_EARLY_MAX_MS (2 * CLOCK_ERROR_MAX_MS)

/* The latest wall-clock sample of one peer, as an interval of offsets
 * (remote wall time - local monotonic time, ms). */
struct clock_sample {
	uint64_t peer_id;            /* 0: slot unused */
	int64_t offset_lo_ms;
	int64_t offset_hi_ms;
	int64_t taken_mono_ms;       /* local monotonic time the answer arrived */
};

struct tally_clock {
	bool observed;               /* a ledger time has been observed */
	int64_t base_ms;             /* max(ledger time - monotonic time) observed */
	struct clock_sample samples[CLOCK_PEERS_MAX];
	uint64_t samples_dropped;    /* round trip too slow, or no free slot */
};

/* What one reading found, for the caller's logs and metrics. */
struct clock_reading {
	bool synchronized;           /* a majority of the voters agree */
	unsigned agreeing;           /* clocks in the chosen group (this node included) */
	unsigned voters;             /* voters in the configuration */
	unsigned sources;            /* clocks considered: this node + fresh samples */
	int64_t estimate_ms;         /* E; meaningful when the clock has observed a time */
	int64_t cluster_ms;          /* C; meaningful when synchronized */
	int64_t offset_ms;           /* this node's wall clock - C, when synchronized */
};

/* An empty clock: nothing observed, no samples. */
void tally_clock_init(struct tally_clock *c);

/* Records that ledger time was `ledger_ms` at local monotonic time `mono_ms` (a batch
 * applied or proposed, a snapshot restored). Only raises the estimate. */
void tally_clock_observe(struct tally_clock *c, int64_t ledger_ms, int64_t mono_ms);

/* Records peer `peer_id`'s answer: its wall clock read `remote_wall_ms` between local
 * monotonic times sent_mono_ms and recv_mono_ms. Returns false (and keeps nothing)
 * when the round trip was longer than CLOCK_SAMPLE_RTT_MAX_MS or negative, or no slot
 * is free. Replaces the peer's previous sample. */
bool tally_clock_sample(struct tally_clock *c, uint64_t peer_id, int64_t remote_wall_ms,
			int64_t sent_mono_ms, int64_t recv_mono_ms);

/* Forgets the samples of a peer (removed from the configuration). */
void tally_clock_forget(struct tally_clock *c, uint64_t peer_id);

/* Reads the clocks at monotonic time mono_ms and wall time wall_ms of this node
 * (`self`), for a configuration whose voters are voters[0..n_voters) (self among
 * them or not). Fills *r. */
void tally_clock_read(const struct tally_clock *c, int64_t mono_ms, int64_t wall_ms,
		      uint64_t self, const uint64_t *voters, size_t n_voters,
		      struct clock_reading *r);

/* The time for the next batch: max(E, C) from a synchronized reading. Returns false
 * when the reading is not synchronized: propose nothing. Does not observe the result:
 * the caller does once it proposed. */
bool tally_clock_next(const struct tally_clock *c, const struct clock_reading *r,
		      int64_t *time_ms);

#endif /* TALLY_CONSENSUS_CLOCK_H */
