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
 * with its clock (uv_now-independent wall clock, ms). Each caller gets its own result.
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

#include "ledger/ledger.h"

struct tally_node;

struct tally_node_config {
	uint64_t id;                      /* raft server id, >= 1 */
	const char *address;              /* "127.0.0.1:7001|127.0.0.1:8001" (raft|client) */
	const char *dir;                  /* data directory; raft/ and ledger/ live below it */
	/* First start of a new cluster: "1=ADDR,2=ADDR,3=ADDR" (ADDR as `address`). Used
	 * only when the raft directory holds no state. NULL for a node that will be
	 * added to an existing cluster (--join). */
	const char *bootstrap;
	unsigned election_timeout_ms;     /* 0 = 400 */
	unsigned heartbeat_ms;            /* 0 = 50 */
	unsigned snapshot_threshold;      /* raft entries between snapshots; 0 = 20000 */
	unsigned snapshot_trailing;       /* entries kept after a snapshot; 0 = 4096 */
	unsigned expire_interval_ms;      /* leader's expire timer; 0 = 1000 */
	size_t batch_commands_max;        /* 0 = 8192 */
	size_t batch_bytes_max;           /* 0 = 1 MiB */
	unsigned inflight_max;            /* raft entries in flight; 0 = 64 */
	uint64_t map_size_bytes;          /* LMDB map; 0 = ledger default */
	size_t segment_bytes;             /* raft log segment size, a multiple of 4096; 0 = raft's 8 MiB */
};

/* A node whose raft disk write fails (log append, truncate, snapshot, term or vote)
 * ends the process with this status (EX_IOERR) before the failed write can be
 * applied or acknowledged; raft 0.15 would carry on and let replicas diverge. */
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

/* Fills status (leader, configuration, applied index, term, state) in `arena`. */
void tally_node_status(struct tally_node *n, struct tally_arena *arena, Tally__V1__Status *out);

bool tally_node_is_leader(struct tally_node *n);

/* The leader's client address ("" when unknown); valid until the next loop turn. */
const char *tally_node_leader_client(struct tally_node *n);

/* The node's ledger (for stale reads, metrics and tests). */
struct tally_ledger *tally_node_ledger(struct tally_node *n);

/* Counters for /metrics. */
struct tally_node_stats {
	uint64_t commits;            /* raft entries applied */
	uint64_t commands;           /* commands applied */
	uint64_t batch_size_hist[8]; /* commands per batch: <=1, <=8, <=64, <=512, <=4096, more */
	uint64_t apply_us_hist[8];   /* apply latency µs: <=100, <=300, <=1000, <=3000, <=10000, <=30000, <=100000, more */
	uint64_t rejections[32];     /* by ResultCode */
};
const struct tally_node_stats *tally_node_stats(struct tally_node *n);

/* Stops proposing, fails queued commands with UNAVAILABLE and in-flight ones with
 * TIMEOUT, hands leadership over when leader, closes raft and then calls cb. */
void tally_node_close(struct tally_node *n, void (*cb)(void *data), void *data);

/* Frees a closed node (after close's callback). */
void tally_node_free(struct tally_node *n);

#endif
