/*
 * consensus/applier — a follower's applies on a thread of their own.
 *
 * raft 0.15 applies committed entries on the node's loop, from the handler of the
 * message that committed them, and takes an entry as applied once the FSM's apply
 * returns. A follower applying a large entry (8–11 ms for ~1,400 commands) reads,
 * stores and acknowledges nothing meanwhile, so the leader's next commit waits for
 * it. With the applier, a follower's fsm_apply copies the entry into a queue and
 * returns; one thread applies the queue in raft order while the loop goes on
 * replicating.
 *
 * raft then believes entries applied that the ledger does not have yet. So whatever
 * on the loop reads or replaces the ledger first waits for the queue (node_ledger and
 * node_apply_drain, fsm.c): the snapshot raft asks for (its index must not be past
 * the ledger's), a restore, the node's own applies as leader (the first one drains
 * what it queued as a follower), proposals, queries, status, metrics, the rules
 * check, shutdown. The thread touches only the ledger and its job; what a job leaves
 * for the node (statistics, the ledger time it reached, a failure) is collected on the
 * loop at each tick and each drain. A failed job ends the node when collected, and
 * the thread applies nothing after it. The queue is bounded (applier.h): past the
 * bound, fsm_apply waits for room, which is the loop applying, as without the thread.
 * The bound in bytes follows the thread's pace, so that a wait for the whole queue
 * holds the loop no longer than the node allows, however slow the thread has become.
 *
 * The simulator (no loop) and a node that still tracks proposals of its own apply on
 * the loop, as before.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "consensus/applier.h"

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

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* A job of len bytes took ns: the pace's running mean (an eighth per job) and the
 * bound it sets. The lock held. */
static void applier_paced(struct node_applier *ap, size_t len, uint64_t ns)
{
	uint64_t sample = ns * 1024 / (len > 0 ? len : 1);
	ap->ns_per_kib = ap->ns_per_kib == 0 ? sample : (ap->ns_per_kib * 7 + sample) / 8;
	uint64_t fits = ap->ns_per_kib > 0 ? ap->hold_ns / ap->ns_per_kib * 1024 : UINT64_MAX;
	ap->bound_bytes = fits > NODE_APPLIER_QUEUE_BYTES_MAX   ? NODE_APPLIER_QUEUE_BYTES_MAX
			  : fits < NODE_APPLIER_QUEUE_BYTES_MIN ? NODE_APPLIER_QUEUE_BYTES_MIN
								: (size_t)fits;
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

		uint64_t t0 = now_ns();
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

		uint64_t took = now_ns() - t0;

		pthread_mutex_lock(&ap->lock);
		assert(ap->queued_jobs > 0 && ap->queued_bytes >= job->len);
		if (!failed)
			applier_paced(ap, job->len, took);
		ap->queued_jobs--;
		ap->queued_bytes -= job->len;
		ap->busy = false;
		ap->failed |= job->rc != 0;
		job_append(&ap->done, &ap->done_tail, job);
		pthread_cond_broadcast(&ap->idle);
	}
	pthread_mutex_unlock(&ap->lock);
	return NULL;
}

int node_applier_start(struct node_applier *ap, struct tally_node *n, node_apply_fn apply,
		       unsigned hold_ms)
{
	assert(ap != NULL && n != NULL && apply != NULL && !ap->running && hold_ms > 0);
	memset(ap, 0, sizeof(*ap));
	ap->node = n;
	ap->apply = apply;
	ap->hold_ns = (uint64_t)hold_ms * 1000000u;
	ap->bound_bytes = NODE_APPLIER_QUEUE_BYTES_MIN; /* until the first job sets a pace */
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
	       (ap->queued_jobs > 0 && ap->queued_bytes + len > ap->bound_bytes);
}

bool node_applier_push(struct node_applier *ap, uint64_t index, const void *bytes, size_t len)
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
	pthread_cond_destroy(&ap->idle);
	pthread_cond_destroy(&ap->work);
	pthread_mutex_destroy(&ap->lock);
}
