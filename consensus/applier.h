/*
 * consensus/applier — a follower's applies on a thread of their own (applier.c says
 * why and what waits for it). Not a public header.
 */
#ifndef TALLY_CONSENSUS_APPLIER_H
#define TALLY_CONSENSUS_APPLIER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The queue's bounds: past either, the next entry waits on the loop for room. Whatever
 * waits on the queue (a snapshot, a restore, a query) holds the loop while it drains,
 * and a loop held past the election timeout makes a follower stand for election: 8 MiB
 * is ~55,000 accruals, a quarter of a second of apply here. An applier slower than
 * that (a starved core, a slow disk) gets a smaller bound in bytes: what it applies in
 * the hold the node allows (node_applier_start's hold_ms), by the rate it measured,
 * but never under NODE_APPLIER_QUEUE_BYTES_MIN, which is also the bound until the
 * first job has set a pace (a node replaying its log at start would otherwise queue
 * the whole bound at an unknown pace). */
#define NODE_APPLIER_QUEUE_BYTES_MAX (8u << 20)
#define NODE_APPLIER_QUEUE_BYTES_MIN (256u << 10)
#define NODE_APPLIER_QUEUE_JOBS_MAX 256u
/* A node lets a wait for the whole queue hold its loop for this share of its election
 * timeout (a quarter: 250 ms by default, about what 8 MiB takes at full speed here). */
#define NODE_APPLIER_HOLD_SHARE 4u
#define NODE_APPLIER_REJECTION_CODES 32 /* result codes counted per code (tally_node_stats) */
/* Entries smaller than this are applied on the loop when nothing is queued: their
 * apply (under ~1 ms, ~230 accruals) costs less than handing them to the thread, which
 * at 8 single commands in flight took each follower ~15 % more CPU per command. */
#define NODE_APPLIER_ENTRY_BYTES_MIN (16u << 10)

struct tally_node;

/* One committed entry, queued by the loop, applied by the thread, collected by the loop. */
struct node_apply_job {
	struct node_apply_job *next;
	uint64_t index;                 /* its raft index */
	uint8_t *bytes;                 /* a copy of the entry; freed once applied */
	size_t len;
	/* Left by the thread for the loop. */
	int rc;                         /* 0, or why it was not applied */
	const char *what;               /* where it failed */
	bool skipped;                   /* at or below the ledger's applied index */
	uint64_t commands;
	uint64_t apply_us;
	int64_t ledger_time_ms;         /* the ledger's time once applied */
	uint64_t rejections[NODE_APPLIER_REJECTION_CODES];
};

typedef void (*node_apply_fn)(struct tally_node *n, struct node_apply_job *job);

struct node_applier {
	bool running;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t work;            /* signalled: a job queued, or stop */
	pthread_cond_t idle;            /* signalled: the queue ran empty */
	struct node_apply_job *queue, *queue_tail; /* queued, in raft order */
	struct node_apply_job *done, *done_tail;  /* applied (or not), to collect */
	bool busy;                      /* the thread holds a job */
	bool failed;                    /* a job failed: no later one is applied */
	bool stop;
	size_t queued_bytes;
	unsigned queued_jobs;
	uint64_t hold_ns;               /* how long a full queue may take to apply */
	uint64_t ns_per_kib;            /* the thread's pace, a running mean (0: none yet) */
	size_t bound_bytes;             /* the queue's bound in bytes, from the two above */
	struct tally_node *node;
	node_apply_fn apply;            /* run on the thread, one job at a time */
	unsigned delay_ms;              /* fault injection: a wait before each job */
};

/* Tests only: the environment variable that makes the thread wait this many ms before
 * each job (at most NODE_APPLIER_DELAY_MS_MAX), so that whatever must wait for the
 * queue finds it busy. */
#define NODE_APPLIER_DELAY_ENV "TALLY_TEST_APPLIER_DELAY_MS"
#define NODE_APPLIER_DELAY_MS_MAX 1000u

/* Starts the thread, its queue bounded to what it applies in hold_ms (at most
 * NODE_APPLIER_QUEUE_BYTES_MAX); 0 or an errno. */
int node_applier_start(struct node_applier *ap, struct tally_node *n, node_apply_fn apply,
		       unsigned hold_ms);
/* Queues a copy of the entry; false when the applier is not running or out of memory
 * (the caller applies on the loop). Waits for room first when the queue is full. */
bool node_applier_push(struct node_applier *ap, uint64_t index, const void *bytes, size_t len);
/* Waits until every queued job was run. */
void node_applier_wait(struct node_applier *ap);
/* The jobs run since the last call, in raft order (the caller frees each). */
struct node_apply_job *node_applier_collect(struct node_applier *ap);
/* Whether a job is queued or running. */
bool node_applier_pending(struct node_applier *ap);
/* Waits for the queue, ends the thread; the jobs left to collect stay. */
void node_applier_stop(struct node_applier *ap);

#endif
