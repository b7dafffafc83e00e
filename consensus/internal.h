/*
 * consensus/internal — the node's state, shared by node.c (lifecycle, group commit,
 * reads, close), fsm.c (raft's state machine callbacks) and admin.c (membership and
 * status). Not a public header.
 *
 * Threads: everything runs on the node's libuv loop except fsm snapshot_async and the
 * check of a restored ledger, which run on the libuv thread pool and touch only the
 * ledger handle (LMDB read transactions, MDB_NOTLS), their own buffers and raft_malloc,
 * and a follower's applies, on the applier's thread (applier.c), which touch only the
 * ledger, applier_arena and their jobs. The loop reaches the ledger through node_ledger,
 * which waits for the applier and applies the loop's group first.
 */
#ifndef TALLY_CONSENSUS_INTERNAL_H
#define TALLY_CONSENSUS_INTERNAL_H

#include <raft.h>
#include <raft/uv.h>
#include <stddef.h>

#include "consensus/applier.h"
#include "consensus/bigbuf.h"
#include "consensus/clock.h"
#include "consensus/node.h"
#include "consensus/transport.h"

#define NODE_PATH_BYTES_MAX 4096
#define NODE_QUEUE_COMMANDS_MAX 65536       /* commands waiting for a batch */
#define NODE_QUEUE_BYTES_MAX (64u << 20)    /* their serialized bytes */
#define NODE_QUERIES_MAX 65536              /* linearizable queries waiting */
#define NODE_QUERY_BYTES_MAX (4u << 20)     /* one serialized query or principal */
#define NODE_BOOTSTRAP_SERVERS_MAX 64
#define NODE_SNAPSHOT_BYTES_MAX (1ULL << 36) /* one snapshot (raft loads it into its heap) */
#define NODE_READ_ONCE_MAX 0x7ffff000ULL  /* Linux: the most one read() returns */
/* The largest count raft 0.15's int takes back from read() as it is; snapshot.c's
 * read() answers a larger whole read so that raft takes it for whole too. */
#define NODE_SNAPSHOT_INT_COUNT_MAX 0xfffffffeULL
#define NODE_ARENA_CHUNK_BYTES (256u << 10)
#define NODE_BATCH_BYTES_MAX (64u << 20)    /* one raft entry (raft: 32-bit lengths) */
#define NODE_INFLIGHT_MAX 4096              /* raft entries in flight */
#define NODE_SNAPSHOT_PHASES 3              /* nodes snapshot a third of a budget apart */
#define NODE_SNAPSHOT_CATCHUP_ENTRIES_MAX 65536u /* a leader keeps at most this many
					  * entries behind a snapshot for a follower
					  * catching up (fsm.c: fsm_trailing) */

/* A command waiting for the next batch: its serialized bytes (the deep copy). */
struct node_command {
	struct node_command *next;
	tally_node_result_cb cb;
	void *data;
	size_t len;
	uint8_t bytes[];
};

struct node_waiter {
	tally_node_result_cb cb;
	void *data;
};

/* One raft entry this node proposed and raft has not called back yet. */
struct node_batch {
	struct raft_apply req;            /* req.data = this; raft sets req.index */
	struct tally_node *n;
	struct node_batch *prev, *next;   /* in n->inflight_*, by raft index */
	uint64_t term;                    /* the term stamped into the batch */
	bool delivered;                   /* the FSM handed results to the waiters */
	uint64_t proposed_ns;             /* uv_hrtime at raft_apply (stats.commit_us_hist) */
	size_t n_waiters;                 /* one per command, in batch order */
	struct node_waiter waiters[];
};

/* A linearizable query waiting for a barrier: serialized query then principal. */
struct node_query {
	struct node_query *next;
	tally_node_query_cb cb;
	void *data;
	size_t query_len, who_len;
	uint8_t bytes[];
};

enum node_phase {
	NODE_OPEN,        /* serving */
	NODE_DRAIN,       /* closing: waiting for in-flight entries and the barrier */
	NODE_TRANSFER,    /* closing: leadership transfer requested, waiting for it */
	NODE_RAFT_CLOSE,  /* closing: raft_close called, waiting for its callback */
	NODE_HANDLES,     /* closing: our libuv handles are closing */
	NODE_CLOSED       /* close callback called; tally_node_free may run */
};

/* The ledger's file and its journal's segments written back behind their growth
 * (writeback.c says why). */
#define NODE_WRITEBACK_BEHIND_BYTES (16ULL << 20) /* the ledger's file: written back once
                                                   * this far behind the end */
#define NODE_WRITEBACK_AGE_MS 15000u              /* and once the data grew past it this
                                                   * long ago (default of the config's
                                                   * writeback_age_ms) */
#define NODE_WRITEBACK_MARKS 8u                   /* the data's end noted every age / 8 */
#define NODE_WRITEBACK_JOB_BYTES (8ULL << 20)     /* at most this much per job */

struct node_writeback {
	uv_work_t work;
	bool busy;                        /* a job on the thread pool */
	int fd;                           /* the job's own descriptor of the file, or -1 */
	uint64_t job_from, job_to;        /* the job's range */
	bool job_journal;                 /* of a journal segment (else the ledger's file) */
	int job_error;                    /* its errno, or 0 */
	bool error_logged;
	uint64_t done_to;                 /* the ledger's file: handed to a job up to here */
	struct {                          /* the data's end as the ticks found it, oldest first */
		uint64_t at_ms, data_bytes;
	} marks[NODE_WRITEBACK_MARKS + 1];
	unsigned marks_n;
	uint64_t seg_first, seg_done;     /* the journal's: segment, handed to a job up to */
	const struct tally_ledger *ledger; /* the ledger these count in */
};

/* The loop's group: entries raft applied in one pass, not yet in the ledger (fsm.c). A
 * group holds the loop no longer than the largest batch would. */
#define NODE_APPLY_GROUP_ENTRIES_MAX 256u
#define NODE_APPLY_GROUP_COMMANDS_MAX TALLY_BATCH_COMMANDS_MAX
_Static_assert(NODE_APPLY_GROUP_ENTRIES_MAX <= TALLY_LEDGER_GROUP_BATCHES_MAX,
	       "a loop's group fits in one ledger group");
struct node_apply_group {
	struct node_apply_job jobs[NODE_APPLY_GROUP_ENTRIES_MAX];
	const Tally__V1__Batch *batches[NODE_APPLY_GROUP_ENTRIES_MAX]; /* in apply_arena */
	size_t n;
	uint64_t commands;
	bool flushing; /* its results going out: no entry joins */
};

struct tally_node {
	uv_loop_t *loop;
	struct tally_node_config cfg;     /* defaults applied; strings point below */
	char address[TALLY_ADDRESS_BYTES_MAX + 1];
	char dir[NODE_PATH_BYTES_MAX];
	char raft_dir[NODE_PATH_BYTES_MAX];
	char ledger_dir[NODE_PATH_BYTES_MAX];
	char links_dir[NODE_PATH_BYTES_MAX]; /* closed journal segments snapshots name (TLS) */
	char *bootstrap;                  /* malloc'd copy or NULL */
	struct tally_ledger_options ledger_opts;
	struct tally_ledger *ledger;

	struct raft *raft;                /* &raft_store, or the simulator's (sim.c) */
	struct raft_io *io;               /* &io_store, or the simulator's */
	struct raft raft_store;
	struct raft_io io_store;          /* raft_uv behind the I/O guard (ioguard.c) */
	struct raft_io io_next;           /* the I/O's own methods, called by the guard */
	raft_io_recv_cb raft_recv;        /* raft's receive callback (health.c watches it) */
	uint64_t leader_commit_seen;      /* highest commit index in a leader's message */
	uint64_t notice_commit;           /* leader: the commit index last told (notice.c) */
	uint64_t leader_heard_ms;         /* monotonic ms when the last one came */
	struct raft_fsm fsm;
	struct tally_transport transport;
	bool raft_inited, started;
	bool dead;                        /* fail-stop under the simulator: does nothing more */
	struct guard_dead *dead_writes;   /* writes raft asked of a dead node (ioguard.c) */
	bool sim_kicked;                  /* no loop (the simulator): a service turn is due */

	uv_timer_t tick;                  /* leadership watch, expire timer, close deadline */
	uint64_t tick_last_ns;            /* when it last fired (stats.loop_stall_max_us) */
	uv_idle_t idle;                   /* deferred service: flush, barrier, close steps */
	unsigned handles_open;

	struct tally_arena apply_arena;   /* the group's decoded batches and their results */
	struct node_apply_group group;    /* entries of raft's pass, applied together (fsm.c) */
	struct node_applier applier;      /* a follower's applies (applier.c) */
	struct tally_arena applier_arena; /* the same, on the applier's thread */
	struct tally_arena query_arena;   /* one query answer at a time */
	unsigned query_depth;             /* nested query answers (callbacks re-entering) */

	/* Group commit. */
	struct node_command *queue_head, *queue_tail;
	size_t queue_commands, queue_bytes;
	struct node_batch *inflight_head, *inflight_tail;
	unsigned inflight;

	/* Linearizable reads: `queries` wait for the next barrier; the barrier in flight
	 * serves `barrier_queries`, the ones waiting when it was issued. */
	struct node_query *queries_head, *queries_tail;
	size_t queries;
	struct raft_barrier barrier;
	struct node_query *barrier_queries;
	bool barrier_busy;
	uint64_t barrier_term;
	uint64_t leader_term;             /* term we are known leader in, 0 when not */
	uint64_t ready_term;              /* term in which a barrier completed */

	/* Ledger time (ledgertime.c). */
	struct tally_clock clock;
	bool time_synchronized;           /* as last read: logged when it changes */
	bool time_off_logged;             /* this node's wall clock is far off the cluster's */
	int64_t time_off_log_ms;          /* monotonic time of that log line */
	int64_t time_wait_since_ms;       /* since when the leader has had no ledger time (0: has it) */
	struct {
		uint64_t samples, samples_dropped, catchups;
	} time_stats;

	/* Expire timer (leader only). */
	uint64_t expire_last_ms;          /* monotonic ms of the last expire submitted */
	uint64_t expire_count;            /* expires submitted (labels their request ids) */
	bool expire_busy, expire_more;

	/* set_rules on a new ledger (rules.c). */
	uint64_t rules_count;             /* set_rules submitted (labels their request ids) */
	uint64_t rules_term;              /* the term that proposed one for a new ledger */
	bool rules_busy;

	/* Snapshots. */
	bool snapshot_busy;               /* from raft's snapshot call until the copy is released */
	uv_work_t release_work;           /* unmaps the copy raft stored, off the loop (fsm.c) */
	struct raft_buffer release_copy;
	bool release_busy;
	bool release_adopted; /* the copy released was raft's stored snapshot */
	bool snapshot_reused; /* the copy taken was written over a file raft had removed */
	int link_rc;          /* the restore's links of its closed segments (fsm.c) */
	uint64_t links_told;  /* tally_ledger_segments_linked when the transport last read
			       * which links this node holds (tally_tlsnet_held_changed) */
	uint64_t log_bytes, log_entries;  /* applied since the last snapshot began (fsm.c) */
	uint64_t log_bytes_total;         /* applied since start or restore (fsm.c) */
	uint64_t log_snapshot_at;         /* the next snapshot point in log_bytes_total */
	uint64_t load_snapshot_index;     /* of the snapshot raft loaded at start, or 0
					   * (ioguard.c) */
	bool boot_same;                   /* the ledger opened at start was written only in
					   * this boot (bootmark.c) */
	/* The full check of a restored ledger, off the loop (fsm.c). */
	uv_work_t check_work;
	bool check_busy;
	bool check_queued;                /* a restore's check, to start once the last ends */
	pthread_mutex_t check_lock;       /* check_ran: set by the check's thread */
	pthread_cond_t check_cond;
	bool check_ran;
	int check_rc;
	uint64_t check_index;             /* the restored ledger's applied index */
	uint64_t check_start_ns;
	char check_msg[256];
	char check_file[NODE_PATH_BYTES_MAX]; /* raft's file of the restored snapshot, or "" */
	char check_file_next[NODE_PATH_BYTES_MAX]; /* the queued check's (check_queued) */
	struct node_writeback writeback;  /* writeback.c */

	/* Admin requests raft has not called back yet. */
	unsigned admins_pending;

	/* Close. */
	enum node_phase phase;
	uint64_t close_deadline_ms;       /* monotonic ms after which draining stops waiting */
	struct raft_transfer close_transfer;
	bool close_transferred;           /* the close's transfer came back */
	void (*close_cb)(void *data);
	void *close_data;

	struct tally_node_stats stats;
	char leader_client[TALLY_ADDRESS_BYTES_MAX + 1];
};

/* ledgertime.c: the time for the next batch the leader proposes (observed as
 * proposed); false when there is none yet (a new ledger, clocks not synchronized). */
bool node_time_next(struct tally_node *n, int64_t *time_ms);

/* ledgertime.c: observes the ledger's time now (after a restore, an open), or the
 * time an applied entry left it at (node_time_observed, time_ms > 0). */
void node_time_observe(struct tally_node *n);
void node_time_observed(struct tally_node *n, int64_t time_ms);

/* init.c: a node with its configuration, directories, ledger (checked), clock and
 * fsm, and no raft yet (loop NULL: the simulator drives it, sim.c). */
int node_create(struct tally_node **out, uv_loop_t *loop, const struct tally_node_config *cfg,
		char *errmsg, size_t errcap);

/* init.c: frees what node_create made (the ledger closed). */
void node_free_parts(struct tally_node *n);

/* init.c: n->raft (inited) belongs to n, with the node's raft settings. */
void node_raft_settings(struct tally_node *n);


/* node.c: a service turn (group commit, barrier, leadership watch, close steps). */
void node_service(struct tally_node *n);

/* node.c: what the tick timer does every heartbeat_ms (service, a new ledger's rules,
 * expire timer). */
void node_tick(struct tally_node *n);
/* writeback.c: on each tick, a job for the part of the ledger's file far enough behind
 * its data's end, when none runs; reset where the ledger is opened or replaced. */
void node_writeback_tick(struct tally_node *n);
void node_writeback_reset(struct tally_node *n);

/* node.c: whether this node leads and has applied everything of earlier terms (its
 * barrier of this term is applied): the state the cluster's own commands start from. */
bool node_leader_ready(struct tally_node *n);

/* node.c: submits cmd (request id set, principal NULL) as the cluster itself: role
 * SYSTEM, key name "tally-system", every brand. */
void node_submit_as_system(struct tally_node *n, Tally__V1__Command *cmd,
			   tally_node_result_cb cb, void *data);

/* rules.c: on a ready leader of a new ledger (journal empty, older rules), proposes
 * set_rules to the newest rules once a term. */
void node_rules_maybe(struct tally_node *n);

/* ioguard.c: gives n->io its own methods back (the guard's and health.c's wrappers
 * removed): the simulator's next incarnation of the server wraps it again. */
void node_ioguard_remove(struct tally_node *n);

/* node.c: answers what waits in the queues (commands UNAVAILABLE: never proposed;
 * queries UNAVAILABLE). */
void node_queues_fail(struct tally_node *n);

/* raft015.c: before raft sees an incoming message it would mishandle, rewrites it (an
 * AppendEntries from below this node's snapshot) or, on a leader, ends the wait for a
 * snapshot a follower installed but whose answer raft ignores. */
void node_recv_fix(struct tally_node *n, struct raft_message *m);

/* raft015.c, the transport's declined callback (data: the node): follower `id`
 * declined the InstallSnapshot this leader sent it; raft sends one again at once. */
void node_snapshot_declined(void *data, raft_id id);

/* notice.c: on the leader, about to apply an entry of entry_bytes: each follower raft
 * streams to is sent the new commit index at once (a heartbeat), rather than after this
 * apply, when the entry is large enough for its apply to matter
 * (cfg.notice_entry_bytes_min; by default this: ~230 accruals, ~1 ms of apply here). */
#define NODE_NOTICE_ENTRY_BYTES_MIN (16u << 10)
void node_commit_notice(struct tally_node *n, size_t entry_bytes);

/* recvguard.c: the term of this node's raft log entry at index i (as raft 0.15's
 * logTermOf reads it); 0 when it has none. */
raft_term node_log_term(const struct raft *r, raft_index i);

/* recvguard.c: an AppendEntries that contradicts a committed entry of this node is
 * logged, counted and turned into one raft rejects untouched (its term set to 0):
 * false then, true for any other message. */
bool node_recv_guard(struct tally_node *n, struct raft_message *m);

/* bootmark.c: whether the ledger's mark names this boot: the ledger was written only
 * in it, and is as sound as the last process left it. */
bool node_bootmark_same(const struct tally_node *n);

/* bootmark.c: marks the ledger sound in this boot (logged when it cannot: the next
 * start then restores raft's snapshot, as it would without the mark). */
void node_bootmark_write(struct tally_node *n);

/* bootmark.c: after raft_start, marks the ledger unless a restore's check is still to
 * pass (fsm.c marks it then). */
void node_bootmark_started(struct tally_node *n);

/* bootmark.c: removes the mark, before a restore replaces the ledger. Returns 0 or an
 * errno. */
int node_bootmark_clear(const struct tally_node *n);

/* ioguard.c: wraps the raft_io methods that write so that a failure ends the
 * process (node_fail_stop). Call after raft_uv_init. */
void node_ioguard_install(struct tally_node *n);

/* health.c: wraps raft_io->start to watch the commit index in the leader's messages.
 * Call after node_ioguard_install. */
void node_health_install(struct tally_node *n);

/* failstop.c: logs "FATAL: <what>" and ends the process with `status` (one of
 * TALLY_NODE_EXIT_*), at once: the only place the node exits. Under the simulator
 * (tally_node_config.fail_stop set) it marks the node dead instead and returns, and
 * the caller returns a failure to raft: the simulator crashes the node before raft
 * runs anything else of it. */
void node_fail_stop(struct tally_node *n, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* failstop.c: the exit status for a failure of the ledger (a TALLY_E* code). */
int node_exit_status(int tally_error);

/* The node whose raft uses io: raft_init points io->data at the raft, whose data is
 * the node (set right after raft_init, before raft calls any I/O method). */
static inline struct tally_node *node_of_io(struct raft_io *io)
{
	struct raft *r = io->data;
	return r->data;
}

/* fsm.c: fills n->fsm (version 3). */
void node_fsm_init(struct tally_node *n);
/* fsm.c: the applier (applier.c) started for a node on a loop, unless
 * cfg.apply_on_loop; ended (its queue applied and collected) before the ledger closes. */
void node_applier_begin(struct tally_node *n);
void node_applier_end(struct tally_node *n);
/* fsm.c: what the applier's thread finished, taken in on the loop (the tick does it);
 * node_apply_drain first waits for everything queued. */
void node_apply_collect(struct tally_node *n);
void node_apply_drain(struct tally_node *n);
/* fsm.c: the loop's group of entries (fsm.c, "a pass of committed entries") applied in
 * one transaction and settled, if it holds any; 0, or what a failed entry's fsm_fail
 * returned (the node ends). node_apply_drain and the tick call it. */
int node_apply_group_flush(struct tally_node *n);
/* fsm.c: the ledger, for the loop: the applier has applied all it was given. */
struct tally_ledger *node_ledger(struct tally_node *n);
/* fsm.c: after start or a restore, sets this node's snapshot points: by entries, the
 * multiples of the threshold, and by bytes applied, every snapshot_log_bytes; both a
 * third of the way early per phase ((id - 1) mod NODE_SNAPSHOT_PHASES), so that nodes
 * applying the same entries do not all snapshot at once. */
void node_snapshot_stagger(struct tally_node *n);

/* fsm.c: this node's latest snapshot holds `bytes`: the time raft waits for a follower to
 * answer an InstallSnapshot grows with it (tally_node_config.install_snapshot_timeout_ms).
 * raft 0.15 starts that wait before it loads the snapshot and sends it again once the
 * wait is over; a 2.5 GB snapshot under raft's fixed 30 s went out 15 times, each
 * copy queued ahead of the entries the follower was waiting for. */
void node_snapshot_sized(struct tally_node *n, uint64_t bytes);

/* node.c: hands results[i] to waiter i of an in-flight batch (results NULL: the
 * outcome is unknown, TIMEOUT); marks it delivered. */
void node_batch_deliver(struct tally_node *n, struct node_batch *b,
			Tally__V1__CommandResult **results, size_t n_results);

/* node.c: the in-flight batch proposed at raft `index` in `term`, or NULL. */
struct node_batch *node_inflight_find(struct tally_node *n, uint64_t index, uint64_t term);

/* node.c: schedules node_service on the next loop turn. */
void node_kick(struct tally_node *n);

/* node.c: the last step of closing, once the handles are closed and no check of a
 * restored ledger runs (fsm.c calls it when the check ends during a close). */
void node_close_finish(struct tally_node *n);

/* node.c: initialises the tick timer and the idle handle (0 or a libuv error). */
int node_handles_init(struct tally_node *n);

/* node.c: starts the tick timer (every heartbeat_ms). */
void node_tick_start(struct tally_node *n);

/* node.c: prints one line to stderr, prefixed with the node id. */
void node_log(struct tally_node *n, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* admin.c: the client part of the current leader's address ("" unknown) into buf. */
void node_leader_client(struct tally_node *n, char *buf, size_t cap);

/* admin.c: whether a voter other than this node is in the configuration. */
bool node_has_other_voters(struct tally_node *n);

#endif /* TALLY_CONSENSUS_INTERNAL_H */
