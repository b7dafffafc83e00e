/*
 * consensus/applier — a node's large applies on a thread of their own.
 *
 * raft 0.15 applies committed entries on the node's loop, from the handler of the
 * message that committed them, and takes an entry as applied once the FSM's apply
 * returns. A node applying a large entry (8–11 ms for ~1,400 commands) reads, stores
 * and sends nothing meanwhile: a follower acknowledges nothing, so the leader's next
 * commit waits for it, and the leader replicates nothing and answers no one. With the
 * applier, fsm_apply copies the entry into a queue and returns; one thread applies the
 * queue in raft order while the loop goes on replicating.
 *
 * raft then believes entries applied that the ledger does not have yet. So whatever
 * on the loop reads or replaces the ledger first waits for the queue (node_ledger and
 * node_apply_drain, fsm.c): the snapshot raft asks for (its index must not be past
 * the ledger's), a restore, an apply on the loop (a small entry while nothing is
 * queued), a new leader's first proposal (the ledger's time), queries, status,
 * metrics, the rules check, shutdown. The thread touches only the ledger, its arenas
 * and its job; what a job leaves for the node (statistics, the ledger time it
 * reached, a failure) is collected on the loop at each tick and each drain. A failed
 * job ends the node when collected, and the thread applies nothing after it. The
 * queue is bounded (applier.h): past the bound, fsm_apply waits for room, which is
 * the loop applying, as without the thread.
 *
 * The leader's entries carry callers. raft answers a proposal (its apply callback)
 * right after fsm_apply returns, so the proposal (struct node_batch) goes with the job
 * instead, and its callers are answered from the job's results when it is collected.
 * Those results must outlive the thread's next job, so such a job is applied into an
 * arena of its own, taken from a small pool and given back once delivered; and the
 * thread wakes the loop (node_wake_fn) as soon as such a job is done, rather than at
 * the next tick.
 *
 * The simulator (no loop) applies on the loop, as before.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "consensus/applier.h"
#include "ledger/arena.h"

/* Appends job to the list (head, tail). */
static void job_append(struct node_apply_job **head, struct node_apply_job **tail,
		       struct node_apply_job *job)
{
	job->next = NULL;
	if (*tail != NULL)
		(*tail)->next = job;
	else
		*head = job;
	*tail = job;
}

/* Whether a job is queued or running (the lock held). */
static bool applier_working(const struct node_applier *ap)
{
	return ap->queue != NULL || ap->busy;
}

static void *applier_main(void *arg)
{
	struct node_applier *ap = arg;
	pthread_mutex_lock(&ap->lock);
	for (;;) {
		while (ap->queue == NULL && !ap->stop)
			pthread_cond_wait(&ap->work, &ap->lock);
		if (ap->queue == NULL)
			break; /* stopped, and nothing is left */
		struct node_apply_job *job = ap->queue;
		ap->queue = job->next;
		if (ap->queue == NULL)
			ap->queue_tail = NULL;
		ap->busy = true;
		bool failed = ap->failed;
		pthread_mutex_unlock(&ap->lock);

		if (ap->delay_ms > 0)
			nanosleep(&(struct timespec){ap->delay_ms / 1000, (long)(ap->delay_ms % 1000) * 1000000L},
				  NULL);
		if (failed) {
			job->rc = -1;
			job->what = "not applied: an earlier entry failed";
		} else {
			ap->apply(ap->node, job);
		}
		free(job->bytes);
		job->bytes = NULL;

		pthread_mutex_lock(&ap->lock);
		assert(ap->queued_jobs > 0 && ap->queued_bytes >= job->len);
		ap->queued_jobs--;
		ap->queued_bytes -= job->len;
		ap->busy = false;
		ap->failed |= job->rc != 0;
		job_append(&ap->done, &ap->done_tail, job);
		/* Under the lock: a wait that saw the queue idle knows no wake is under way,
		 * so the loop may close what the wake touches. */
		if (ap->wake != NULL && (job->batch != NULL || job->rc != 0))
			ap->wake(ap->node);
		pthread_cond_broadcast(&ap->idle);
	}
	pthread_mutex_unlock(&ap->lock);
	return NULL;
}

int node_applier_start(struct node_applier *ap, struct tally_node *n, node_apply_fn apply,
		       node_wake_fn wake)
{
	assert(ap != NULL && n != NULL && apply != NULL && !ap->running);
	memset(ap, 0, sizeof(*ap));
	ap->node = n;
	ap->apply = apply;
	ap->wake = wake;
	const char *delay = getenv(NODE_APPLIER_DELAY_ENV);
	if (delay != NULL) {
		unsigned long ms = strtoul(delay, NULL, 10);
		ap->delay_ms = ms < NODE_APPLIER_DELAY_MS_MAX ? (unsigned)ms : NODE_APPLIER_DELAY_MS_MAX;
	}
	pthread_mutex_init(&ap->lock, NULL);
	pthread_cond_init(&ap->work, NULL);
	pthread_cond_init(&ap->idle, NULL);
	int rc = pthread_create(&ap->thread, NULL, applier_main, ap);
	if (rc != 0) {
		pthread_cond_destroy(&ap->idle);
		pthread_cond_destroy(&ap->work);
		pthread_mutex_destroy(&ap->lock);
		return rc;
	}
	ap->running = true;
	return 0;
}

static bool applier_full(const struct node_applier *ap, size_t len)
{
	return ap->queued_jobs >= NODE_APPLIER_QUEUE_JOBS_MAX ||
	       (ap->queued_jobs > 0 && ap->queued_bytes + len > NODE_APPLIER_QUEUE_BYTES_MAX);
}

bool node_applier_push(struct node_applier *ap, uint64_t index, const void *bytes, size_t len,
		       struct node_batch *batch)
{
	assert(ap != NULL && (bytes != NULL || len == 0));
	if (!ap->running)
		return false;
	struct node_apply_job *job = calloc(1, sizeof(*job));
	uint8_t *copy = malloc(len > 0 ? len : 1);
	if (job == NULL || copy == NULL) {
		free(job);
		free(copy);
		return false; /* the loop applies it, after what is queued */
	}
	memcpy(copy, bytes, len);
	job->index = index;
	job->bytes = copy;
	job->len = len;
	job->batch = batch;
	pthread_mutex_lock(&ap->lock);
	while (applier_full(ap, len))
		pthread_cond_wait(&ap->idle, &ap->lock);
	ap->queued_jobs++;
	ap->queued_bytes += len;
	job_append(&ap->queue, &ap->queue_tail, job);
	pthread_cond_signal(&ap->work);
	pthread_mutex_unlock(&ap->lock);
	return true;
}

struct tally_arena *node_applier_arena_take(struct node_applier *ap)
{
	assert(ap != NULL);
	struct tally_arena *a = NULL;
	pthread_mutex_lock(&ap->lock);
	if (ap->spares > 0)
		a = ap->spare[--ap->spares];
	pthread_mutex_unlock(&ap->lock);
	if (a == NULL && (a = malloc(sizeof(*a))) != NULL)
		tally_arena_init(a, NODE_APPLIER_ARENA_CHUNK_BYTES, 0);
	return a;
}

void node_applier_arena_give(struct node_applier *ap, struct tally_arena *arena)
{
	assert(ap != NULL && arena != NULL);
	tally_arena_reset(arena);
	bool kept = false;
	if (ap->running) { /* a job collected after the stop: its arena goes */
		pthread_mutex_lock(&ap->lock);
		kept = ap->spares < NODE_APPLIER_ARENAS_SPARE_MAX;
		if (kept)
			ap->spare[ap->spares++] = arena;
		pthread_mutex_unlock(&ap->lock);
	}
	if (!kept) {
		tally_arena_free(arena);
		free(arena);
	}
}

void node_applier_wait(struct node_applier *ap)
{
	assert(ap != NULL);
	if (!ap->running)
		return;
	pthread_mutex_lock(&ap->lock);
	while (applier_working(ap))
		pthread_cond_wait(&ap->idle, &ap->lock);
	pthread_mutex_unlock(&ap->lock);
}

bool node_applier_pending(struct node_applier *ap)
{
	assert(ap != NULL);
	if (!ap->running)
		return false;
	pthread_mutex_lock(&ap->lock);
	bool pending = applier_working(ap);
	pthread_mutex_unlock(&ap->lock);
	return pending;
}

struct node_apply_job *node_applier_collect(struct node_applier *ap)
{
	assert(ap != NULL);
	if (ap->running)
		pthread_mutex_lock(&ap->lock);
	struct node_apply_job *done = ap->done;
	ap->done = ap->done_tail = NULL;
	if (ap->running)
		pthread_mutex_unlock(&ap->lock);
	return done;
}

void node_applier_stop(struct node_applier *ap)
{
	assert(ap != NULL);
	if (!ap->running)
		return;
	pthread_mutex_lock(&ap->lock);
	ap->stop = true;
	pthread_cond_signal(&ap->work);
	pthread_mutex_unlock(&ap->lock);
	pthread_join(ap->thread, NULL);
	ap->running = false;
	assert(!applier_working(ap));
	while (ap->spares > 0) {
		struct tally_arena *a = ap->spare[--ap->spares];
		tally_arena_free(a);
		free(a);
	}
	pthread_cond_destroy(&ap->idle);
	pthread_cond_destroy(&ap->work);
	pthread_mutex_destroy(&ap->lock);
}
