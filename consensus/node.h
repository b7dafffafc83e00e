/*
 * consensus/node — one Tally replica: canonical raft over libuv driving the ledger.
 *
 * Everything runs on the caller's libuv loop (one thread); snapshots are written by
 * raft's async work on the libuv thread pool. Lifecycle:
 *   tally_node_init → tally_node_start → submit / query / admin ... → tally_node_close
 *   (close_cb) → tally_node_free.
 *
 * Group commit: commands submitted while earlier batches are in flight are packed
 * into the next raft entry (up to batch_commands_max commands or batch_bytes_max
 * bytes), with up to inflight_max entries in flight; the leader stamps each batch
 * with ledger time as consensus/clock.h defines it (never its own wall clock taken at
 * face value). Each caller gets its own result.
 *
 * Addresses: a node's raft address in the raft configuration is
 * "RAFT_HOST:RAFT_PORT|CLIENT_HOST:CLIENT_PORT"; the transport uses the part before
 * '|', and everyone can tell clients where the leader's client port is.
 */
#ifndef TALLY_CONSENSUS_NODE_H
#define TALLY_CONSENSUS_NODE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "consensus/transport.h"
#include "ledger/ledger.h"

struct tally_node;

/* The slowest a snapshot is assumed to travel from leader to follower, load to
 * restore, in bytes per second (tally_node_config.install_snapshot_timeout_ms). This
 * machine did a 2.5 GB one in about a minute, 40 MB/s; the margin is 2.5x. */
#define TALLY_NODE_SNAPSHOT_SEND_RATE (16ULL << 20)

struct tally_node_config {
	uint64_t id;                      /* raft server id, >= 1 */
	const char *address;              /* "127.0.0.1:7001|127.0.0.1:8001" (raft|client) */
	const char *dir;                  /* data directory; raft/ and ledger/ live below it */
	/* First start of a new cluster: "1=ADDR,2=ADDR,3=ADDR" (ADDR as `address`). Used
	 * only when the raft directory holds no state. NULL for a node that will be
	 * added to an existing cluster (--join). */
	const char *bootstrap;
	unsigned election_timeout_ms;     /* 0 = 1000 */
	unsigned heartbeat_ms;            /* 0 = 50 */
	unsigned snapshot_threshold;      /* raft entries between snapshots; 0 = 20000 */
	unsigned snapshot_trailing;       /* entries kept after a snapshot; 0 = 4096 */
	/* raft keeps its whole log since the last snapshot in memory: a snapshot is also
	 * taken once the entries applied since the last one hold this many bytes, and
	 * the entries kept after it are cut to half of it. 0 = 64 MiB. */
	size_t snapshot_log_bytes;
	/* How long a leader waits for a follower to answer an InstallSnapshot before it
	 * sends the snapshot again: this many ms, plus one second for every
	 * TALLY_NODE_SNAPSHOT_SEND_RATE bytes of this node's latest snapshot (loaded,
	 * sent, stored and restored before the answer comes). 0 = 30000, raft's own. */
	unsigned install_snapshot_timeout_ms;
	unsigned expire_interval_ms;      /* leader's expire timer; 0 = 1000 */
	size_t batch_commands_max;        /* 0 = 8192 */
	size_t batch_bytes_max;           /* 0 = 1 MiB */
	unsigned inflight_max;            /* raft entries in flight; 0 = 64 */
	/* A leader tells its followers of a commit before it applies an entry of at least
	 * this many bytes (consensus/notice.c); 0 = NODE_NOTICE_ENTRY_BYTES_MIN, 16 KiB. */
	size_t notice_entry_bytes_min;
	uint64_t map_size_bytes;          /* LMDB map; 0 = ledger default */
	size_t segment_bytes;             /* raft log segment size, a multiple of 4096; 0 = raft's 8 MiB */
	uint64_t map_room_bytes;          /* LMDB map kept free ahead of the data; 0 = ledger default */
	/* The node writes the ledger's file back once the data grew past a page this many
	 * ms ago (consensus/writeback.c); 0 = NODE_WRITEBACK_AGE_MS, 15 s. */
	unsigned writeback_age_ms;
	bool ledger_pwrite;               /* LMDB writes with pwrite, not through its map (MDB_WRITEMAP) */
	/* Where the journal's segment files close; 0 = 64 MiB (ledger.h). The same on every
	 * node of a cluster: tests make it small to close segments early. */
	uint64_t journal_segment_bytes;
	/* A follower applies committed entries on the loop, as the leader does, instead
	 * of on a thread of its own (consensus/applier.c). The simulator always does. */
	bool apply_on_loop;
	/* The raft port's TLS (rpc/tls.h: this node's certificate, the cluster CA); not
	 * owned, alive until tally_node_free. NULL = plaintext raft (tallyd --insecure). */
	struct tally_tls_ctx *tls;
	/* Hooks for tests and the simulator, each called with hook_data. */
	void *hook_data;
	/* Clocks: NULL = CLOCK_MONOTONIC / CLOCK_REALTIME (ms). */
	int64_t (*mono_ms)(void *hook_data);
	int64_t (*wall_ms)(void *hook_data);
	/* The simulator only: called where the node would end the process (fail-stop),
	 * with the exit status and what failed; the node is dead from then on. NULL (every
	 * real node) = _exit. */
	void (*fail_stop)(void *hook_data, int status, const char *what);
	/* The node's log lines (without the newline); NULL = stderr. */
	void (*log_line)(void *hook_data, const char *line);
};

/* Fail-stop: a node that cannot write its raft log or apply a committed entry ends
 * the process at once (consensus/failstop.c), before anything it could not apply is
 * answered, so that a healthy node takes over; raft 0.15 would keep it in the
 * cluster, as leader even, answering UNAVAILABLE for ever or letting replicas
 * diverge. Restart it once the cause is gone: it catches up from the others. The
 * exit statuses, from sysexits(3):
 *
 *   74 EX_IOERR    storage: a raft write failed (log append, truncate, snapshot,
 *                  term, vote; a full disk included), or the ledger's (no space left
 *                  on device, an I/O error, its map at map_size_bytes).
 *                  Free space or replace the disk, then restart.
 *   71 EX_OSERR    out of memory (the I/O guard's requests, applying, restoring).
 *   65 EX_DATAERR  data does not verify: a committed entry that does not decode, a
 *                  snapshot or a stored record that is corrupt or of another format
 *                  version. Wipe the node's data directory and restart it: it rejoins
 *                  by snapshot (tallyctl cluster add if it was removed).
 *   70 EX_SOFTWARE any other failure to apply or restore (an unexpected LMDB error):
 *                  a bug; report it with the node's log.
 *
 * A failed snapshot restore (installing the leader's snapshot, or the node's own at
 * start) exits with the status of its cause. The log line says what failed: the raft
 * index of the entry, or the raft operation, and the error. */
#define TALLY_NODE_EXIT_DATA 65
#define TALLY_NODE_EXIT_SOFTWARE 70
#define TALLY_NODE_EXIT_NOMEM 71
#define TALLY_NODE_EXIT_IO 74

/* The outcome of one submitted command. On OK or a business rejection, r is the
 * ledger's result. For transport outcomes r->code is NOT_LEADER (r->message holds the
 * leader's client address, "" if unknown), UNAVAILABLE (definitely not applied) or
 * TIMEOUT (leadership lost while in flight: unknown, retry with the same request id).
 * r is valid only during the call. */
typedef void (*tally_node_result_cb)(void *data, const Tally__V1__CommandResult *r);

/* A query answer: code OK with res set, or NOT_LEADER / UNAVAILABLE with res NULL
 * (message carries the leader's client address for NOT_LEADER). res is valid only
 * during the call. */
typedef void (*tally_node_query_cb)(void *data, Tally__V1__ResultCode code,
				    const char *message, Tally__V1__QueryResult *res);

/* The outcome of a membership change or leadership transfer (msg says why):
 *   OK                      done
 *   NOT_LEADER              not started: msg is the leader's client address ("" unknown)
 *   UNAVAILABLE             not started (a change under way, shutting down, out of
 *                           memory), or a promotion given up before anything was appended
 *   ALREADY_EXISTS          not started: the id or address is taken, or the node already
 *                           has the role
 *   NOT_FOUND               not started: no such node in the configuration
 *   INVALID_ARGUMENT        not started: a bad address, id or role
 *   INTERNAL                not started: any other raft refusal
 *   TIMEOUT                 raft took the request and then gave up (leadership lost,
 *                           shutdown; a transfer whose target does not lead yet): the
 *                           change may still take effect — unknown.
 * Every code but OK and TIMEOUT means nothing changed. cb runs exactly once, possibly
 * before the call returns. */
typedef void (*tally_node_admin_cb)(void *data, Tally__V1__ResultCode code, const char *msg);

/* Makes every raft snapshot a node loads (at start, and to send it to a follower) a
 * mapping of raft's file rather than a copy in the heap (consensus/bigbuf.c): raft's
 * allocations of 64 MiB and more become mappings of their own. Process-wide (it sets
 * raft's heap); call it once, before the first node starts. tallyd does. */
void tally_node_snapshot_mappings(void);

/* Creates a node on `loop`: opens the ledger, prepares raft (not started). */
int tally_node_init(struct tally_node **out, uv_loop_t *loop,
		    const struct tally_node_config *cfg, char *errmsg, size_t errcap);

/* Bootstraps if configured and new, then starts raft. */
int tally_node_start(struct tally_node *n, char *errmsg, size_t errcap);

/* Queues a command (deep-copied: the caller keeps ownership of cmd). cb runs exactly
 * once, possibly before this returns (NOT_LEADER, UNAVAILABLE when shutting down or
 * when the queue is full). The principal must already be set by the caller. */
void tally_node_submit(struct tally_node *n, const Tally__V1__Command *cmd,
		       tally_node_result_cb cb, void *data);

/* Answers a query: linearizable (after a raft barrier shared by all queries waiting
 * at that moment, leader only) unless q->stale, in which case it is served from this
 * node's ledger at once, with res->applied_index telling what it reflects. */
void tally_node_query(struct tally_node *n, const Tally__V1__Query *q,
		      const Tally__V1__Principal *who, tally_node_query_cb cb, void *data);

/* Membership (leader only): add a node as spare, assign a role (0 standby, 1 voter,
 * 2 spare, as RAFT_STANDBY/RAFT_VOTER/RAFT_SPARE), remove, transfer leadership
 * (id 0 = let raft pick). */
void tally_node_add(struct tally_node *n, uint64_t id, const char *address,
		    tally_node_admin_cb cb, void *data);
void tally_node_assign(struct tally_node *n, uint64_t id, int role, tally_node_admin_cb cb,
		       void *data);
void tally_node_remove(struct tally_node *n, uint64_t id, tally_node_admin_cb cb, void *data);
void tally_node_transfer(struct tally_node *n, uint64_t id, tally_node_admin_cb cb, void *data);

/* Switches the ledger to rules `version` (0: TALLY_RULES_CURRENT) with a set_rules
 * command (consensus/rules.c); cb gets its result: OK, ALREADY_EXISTS (the ledger
 * applies those rules or later ones already), INVALID_ARGUMENT (this binary does not
 * have them), NOT_LEADER, UNAVAILABLE, TIMEOUT. Every node must run a binary that has
 * the rules first: one that does not stops at the entry. */
void tally_node_rules(struct tally_node *n, uint32_t version, tally_node_admin_cb cb, void *data);

/* Fills status (leader, configuration, applied index, term, state) in `arena`. */
void tally_node_status(struct tally_node *n, struct tally_arena *arena, Tally__V1__Status *out);

bool tally_node_is_leader(struct tally_node *n);

/* The leader's client address ("" when unknown); valid until the next loop turn. */
const char *tally_node_leader_client(struct tally_node *n);

/* The node's ledger (for stale reads, metrics and tests). */
struct tally_ledger *tally_node_ledger(struct tally_node *n);

/* Counters for /metrics. A histogram counts values per bucket: bucket i holds those
 * <= bounds[i] (and above bounds[i - 1]), the last one those above every bound. */
#define TALLY_NODE_HIST_BOUNDS 7
extern const uint64_t tally_node_batch_bounds[TALLY_NODE_HIST_BOUNDS];     /* commands */
extern const uint64_t tally_node_apply_us_bounds[TALLY_NODE_HIST_BOUNDS];  /* µs */
extern const uint64_t tally_node_commit_us_bounds[TALLY_NODE_HIST_BOUNDS]; /* µs */
/* The bucket of v in a histogram of these bounds. */
unsigned tally_node_hist_slot(uint64_t v, const uint64_t bounds[TALLY_NODE_HIST_BOUNDS]);
struct tally_node_stats {
	uint64_t commits;            /* raft entries applied */
	uint64_t commands;           /* commands applied (the sum of batch_size_hist) */
	uint64_t batch_size_hist[TALLY_NODE_HIST_BOUNDS + 1]; /* commands per entry */
	uint64_t apply_us_hist[TALLY_NODE_HIST_BOUNDS + 1];   /* µs to apply an entry */
	uint64_t apply_us_sum;
	uint64_t snapshots;          /* snapshots this node took (stored or not) */
	uint64_t snapshots_adopted;  /* of them, stored by raft as the copy itself, unwritten
				      * (consensus/snapstore.h) */
	uint64_t snapshots_reused;   /* of them, copied over a snapshot file raft had removed */
	uint64_t snapshots_installed; /* leader's snapshots this node restored */
	bool ledger_kept_at_start;   /* its ledger kept over raft's snapshot at start, as
				      * written in this boot (consensus/bootmark.c) */
	uint64_t snapshot_trailing;  /* raft log entries kept behind the latest snapshot */
	uint64_t snapshots_kept_log; /* leader: snapshots behind which it kept more of the log
				      * for a follower catching up (fsm.c) */
	uint64_t journal_writeback_bytes; /* of the journal's segments, written back behind
					   * its growth by the node (writeback.c) */
	uint64_t ledger_writeback_bytes; /* of the ledger's file, written back behind its
					  * growth by the node (writeback.c) */
	uint64_t log_segments_filled; /* raft log segments written with zeros when made, so
				       * that the log's writes stay asynchronous
				       * (consensus/logfill.h) */
	uint64_t aio_contexts_reaped; /* raft's kernel AIO contexts destroyed off the loop, by
				       * this process (consensus/aioreap.h) */
	uint64_t install_snapshots_received; /* InstallSnapshot messages (copies) received */
	uint64_t install_snapshot_bytes_mapped; /* their bytes received into a mapping of an
					 * unlinked file, not the heap (consensus/bigbuf.h) */
	uint64_t snapshot_appendix_bytes; /* leader: closed journal segments' bytes sent
					   * after InstallSnapshots (ledger.h, the appendix) */
	uint64_t snapshot_segments_held;  /* leader: closed segments left out of them, the
					   * follower holding them (its Have, tlsnet.c) */
	uint64_t snapshot_segment_bytes_held;
	uint64_t snapshots_declined;      /* follower: InstallSnapshots declined, as they
					   * left out a segment it no longer holds */
	uint64_t install_declines_resent; /* leader: InstallSnapshots sent again at once on
					   * a follower's decline (consensus/raft015.c) */
	uint64_t send_turns_yielded; /* sending to a node stopped for a loop turn, its share
				      * of the turn spent (consensus/tlsnet.c) */
	uint64_t resends_skipped;    /* leader: large AppendEntries raft sent again before the
				      * follower answered the first, not sent (tlsnet.c) */
	uint64_t resend_bytes_skipped; /* their entries' bytes */
	uint64_t raft_connect_failures; /* attempts to connect to another node that failed
					 * (tlsnet.c) */
	uint64_t raft_bytes_sent;    /* raft's messages (and the transport's own) put into
				      * TLS sessions to other nodes (tlsnet.c) */
	uint64_t appends_superseded; /* leader: AppendEntries queued for a follower it could
				      * not reach, dropped unsent as a later one carried
				      * them (tlsnet.c) */
	uint64_t append_bytes_superseded; /* their entries' bytes */
	uint64_t commit_notices;     /* leader: commit indexes sent to a follower before this
				      * node's apply (consensus/notice.c) */
	uint64_t applied_off_loop;   /* follower: entries applied on the applier's thread
				      * (consensus/applier.c) */
	uint64_t apply_groups;       /* transactions of entries applied on the loop (fsm.c) */
	uint64_t apply_group_entries; /* the entries in them */
	uint64_t install_waits_ended; /* leader: snapshots a follower installed that raft 0.15
				       * would have waited out (consensus/raft015.c) */
	uint64_t install_snapshot_timeout_ms; /* what a leader would wait now for an
				      * InstallSnapshot's answer (config above) */
	uint64_t commit_us_hist[TALLY_NODE_HIST_BOUNDS + 1];  /* leader: proposal to results, µs */
	uint64_t commit_us_sum;
	uint64_t rejections[32];     /* by ResultCode */
	uint64_t loop_stall_max_us;  /* the most the tick timer (every heartbeat_ms) fired late:
				      * the longest the node's loop was kept from heartbeats */
	uint64_t raft_messages_refused; /* peers' messages contradicting a committed entry
					 * (consensus/recvguard.c) */
};
const struct tally_node_stats *tally_node_stats(struct tally_node *n);

/* This node's raft id. */
uint64_t tally_node_id(struct tally_node *n);

/* Ledger time (consensus/clock.h). The node's monotonic clock, ms: what peer clock
 * samples are measured with; and its wall clock, ms since the epoch, as it answers
 * its peers' probes. */
int64_t tally_node_mono_ms(struct tally_node *n);
int64_t tally_node_wall_ms(struct tally_node *n);

/* A peer's wall clock read remote_wall_ms, answering a probe sent at this node's
 * monotonic time sent_mono_ms and answered at recv_mono_ms (rpc/peerclock.c). */
void tally_node_clock_sample(struct tally_node *n, uint64_t peer_id, int64_t remote_wall_ms,
			     int64_t sent_mono_ms, int64_t recv_mono_ms);

/* The clocks as the node sees them now, for /metrics. */
struct tally_node_clock {
	bool synchronized;           /* a majority of the voters' clocks agree */
	unsigned agreeing, voters;   /* clocks in the agreeing group; voters */
	int64_t offset_ms;           /* this node's wall clock minus cluster time (0: unsynchronized) */
	int64_t ledger_time_ms;      /* time of the last applied batch */
	int64_t estimate_ms;         /* the monotonic estimate of ledger time now */
	uint64_t samples;            /* peer samples received */
	uint64_t samples_dropped;    /* ... of which dropped (round trip too slow) */
	uint64_t catchups;           /* batches the cluster's clocks pulled forward > 1 s */
};
void tally_node_clock_status(struct tally_node *n, struct tally_node_clock *out);

/* A peer in the configuration: its id and client address, for clock probes. At most
 * TALLY_NODE_PEERS_MAX are sampled (consensus/clock.h keeps as many samples). */
#define TALLY_NODE_PEERS_MAX 64
struct tally_node_peer {
	uint64_t id;
	char client[TALLY_ADDRESS_BYTES_MAX + 1];
};
/* The other servers of the configuration (at most cap) into out; their number. */
size_t tally_node_peers(struct tally_node *n, struct tally_node_peer *out, size_t cap);

/* Readiness (tallyd's /health). A node is ready when it is started and not shutting
 * down, knows a leader, and is not catching up: not installing a snapshot, and its
 * applied index at most TALLY_NODE_READY_LAG_ENTRIES raft entries behind the highest
 * commit index it has heard of (its own, or the leader's in the leader's messages). A
 * follower must have heard from the leader within the election timeout (what it knows
 * of the leader's commits is that old); a leader is ready once its term's first
 * barrier has completed (it has applied all that earlier leaders committed) and while
 * it has ledger time (a majority of the voters' clocks agree: without it, it refuses
 * writes). The lag
 * allows for the entries a healthy follower has in flight under full load
 * (inflight_max, 64 by default, plus those committed since the leader's last
 * message). */
#define TALLY_NODE_READY_LAG_ENTRIES 256

struct tally_node_health {
	bool ready;
	char why[96];             /* "ok", or why not: "no leader", "catching up: applied 120 of
				   * 4000", "shutting down", ... */
	uint64_t leader_id;       /* 0: none known */
	uint64_t applied_index;   /* raft entries applied here */
	uint64_t commit_index;    /* highest committed raft index this node has heard of */
};
void tally_node_health(struct tally_node *n, struct tally_node_health *out);

/* What readiness is decided from (tally_node_health gathers it from the node); the
 * rule alone, for tests. */
struct tally_node_health_facts {
	bool started, closing;
	bool leader;                 /* this node leads ... */
	bool leader_ready;           /* ... and its term's first barrier completed */
	bool leader_no_time;         /* ... but has no ledger time (consensus/clock.h) */
	bool installing_snapshot;
	uint64_t leader_id;
	uint64_t leader_silent_ms;   /* since the leader's last message (followers) */
	unsigned election_timeout_ms;
	uint64_t applied_index, commit_index;
};
void tally_node_readiness(const struct tally_node_health_facts *f, struct tally_node_health *out);

/* Stops proposing, fails queued commands with UNAVAILABLE and in-flight ones with
 * TIMEOUT, hands leadership over when leader, closes raft and then calls cb. */
void tally_node_close(struct tally_node *n, void (*cb)(void *data), void *data);

/* Frees a closed node (after close's callback). */
void tally_node_free(struct tally_node *n);

#endif
