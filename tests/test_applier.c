/*
 * test_applier — the follower's apply queue (consensus/applier.c) on its own: entries
 * applied in raft order on one thread, nothing applied after a failure, the queue's
 * bound held while the thread is busy, a stop that applies what was queued, and a
 * slow thread's queue bounded in bytes by its pace.
 * The cluster tests run it for real (every follower of a tallyd uses it);
 * tests/test_metrics.py checks that followers, and only they, apply through it.
 */
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "consensus/applier.h"

#define JOBS 300
#define HOLD_MS 50 /* what a whole queue may take to apply (node_applier_start) */

/* What the fake apply saw. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t seen[JOBS * 8];
	unsigned n_seen;
	uint64_t fail_at;       /* this index fails (0: none) */
	uint64_t hold_at;       /* this index waits until released (0: none) */
	bool held, released;
	bool bad;               /* a job reached the thread not as pushed */
	unsigned queued_max;    /* the most jobs queued that the thread ever saw */
	struct node_applier *ap;
} fake;

static void fake_reset(struct node_applier *ap)
{
	memset(fake.seen, 0, sizeof(fake.seen));
	fake.n_seen = 0;
	fake.fail_at = fake.hold_at = 0;
	fake.held = fake.released = false;
	fake.queued_max = 0;
	fake.bad = false;
	fake.ap = ap;
}

static void fake_apply(struct tally_node *n, struct node_apply_job *job)
{
	(void)n; /* cmocka's asserts belong to the test's thread: note, check there */
	uint64_t v = 0;
	if (job->bytes == NULL || job->len != 8)
		fake.bad = true;
	else
		memcpy(&v, job->bytes, 8);
	if (v != job->index * 7) /* the copy of what was pushed */
		fake.bad = true;
	pthread_mutex_lock(&fake.ap->lock);
	if (fake.ap->queued_jobs > fake.queued_max)
		fake.queued_max = fake.ap->queued_jobs;
	pthread_mutex_unlock(&fake.ap->lock);
	pthread_mutex_lock(&fake.lock);
	fake.seen[fake.n_seen++] = job->index;
	if (job->index == fake.hold_at) {
		fake.held = true;
		pthread_cond_broadcast(&fake.cond);
		while (!fake.released)
			pthread_cond_wait(&fake.cond, &fake.lock);
	}
	pthread_mutex_unlock(&fake.lock);
	job->commands = job->index;
	if (job->index == fake.fail_at) {
		job->rc = -5;
		job->what = "fake";
	}
}

static void push(struct node_applier *ap, uint64_t index)
{
	uint64_t v = index * 7;
	assert_true(node_applier_push(ap, index, &v, sizeof(v)));
}

/* Collects every job and checks they come in raft order from `first`; returns how many. */
static unsigned collect_in_order(struct node_applier *ap, uint64_t first, int *failed_rc)
{
	unsigned n = 0;
	struct node_apply_job *j = node_applier_collect(ap);
	while (j != NULL) {
		struct node_apply_job *next = j->next;
		assert_int_equal(j->index, first + n);
		assert_null(j->bytes); /* freed once run */
		if (j->rc != 0 && *failed_rc == 0)
			*failed_rc = j->rc;
		free(j);
		j = next;
		n++;
	}
	return n;
}

static void test_jobs_run_in_order_on_one_thread_and_are_collected(void **state)
{
	(void)state;
	struct node_applier ap = {0};
	fake_reset(&ap);
	assert_int_equal(node_applier_start(&ap, (struct tally_node *)&fake, fake_apply, HOLD_MS), 0);
	for (uint64_t i = 1; i <= JOBS; i++)
		push(&ap, i);
	node_applier_wait(&ap);
	bool pending = node_applier_pending(&ap);
	unsigned seen = fake.n_seen;
	int rc = 0;
	unsigned collected = collect_in_order(&ap, 1, &rc);
	bool again = node_applier_collect(&ap) != NULL;
	node_applier_stop(&ap); /* before any assert: a failed one leaves no thread behind */
	assert_false(pending);
	assert_false(fake.bad);
	assert_int_equal(seen, JOBS);
	for (unsigned i = 0; i < JOBS; i++)
		assert_int_equal(fake.seen[i], i + 1);
	assert_int_equal(collected, JOBS);
	assert_int_equal(rc, 0);
	assert_false(again); /* collected once */
	assert_false(node_applier_push(&ap, JOBS + 1, "x", 1)); /* stopped: the loop applies */
}

static void test_nothing_is_applied_after_a_failed_job(void **state)
{
	(void)state;
	struct node_applier ap = {0};
	fake_reset(&ap);
	fake.fail_at = 10;
	assert_int_equal(node_applier_start(&ap, (struct tally_node *)&fake, fake_apply, HOLD_MS), 0);
	for (uint64_t i = 1; i <= 20; i++)
		push(&ap, i);
	node_applier_stop(&ap); /* before any assert: a failed one leaves no thread behind */
	assert_int_equal(fake.n_seen, 10); /* 11..20 never reached the ledger */
	struct node_apply_job *j = node_applier_collect(&ap);
	for (uint64_t i = 1; i <= 20; i++) {
		assert_non_null(j);
		assert_int_equal(j->index, i);
		if (i < 10)
			assert_int_equal(j->rc, 0);
		else if (i == 10)
			assert_int_equal(j->rc, -5);
		else
			assert_int_not_equal(j->rc, 0);
		struct node_apply_job *next = j->next;
		free(j);
		j = next;
	}
	assert_null(j);
}

struct pusher {
	struct node_applier *ap;
	uint64_t from, to;
};

static void *push_range(void *arg)
{
	struct pusher *p = arg;
	for (uint64_t i = p->from; i <= p->to; i++)
		push(p->ap, i);
	return NULL;
}

/* While the thread holds job 1, a pusher offers more than the queue holds: it waits
 * for room instead of queueing past NODE_APPLIER_QUEUE_JOBS_MAX, and every job still
 * runs, in order. */
static void test_the_queue_holds_its_bound_while_the_thread_is_busy(void **state)
{
	(void)state;
	struct node_applier ap = {0};
	fake_reset(&ap);
	fake.hold_at = 1;
	assert_int_equal(node_applier_start(&ap, (struct tally_node *)&fake, fake_apply, HOLD_MS), 0);
	push(&ap, 1);
	pthread_mutex_lock(&fake.lock);
	while (!fake.held)
		pthread_cond_wait(&fake.cond, &fake.lock);
	pthread_mutex_unlock(&fake.lock);
	uint64_t last = 1 + NODE_APPLIER_QUEUE_JOBS_MAX + 50;
	struct pusher p = {&ap, 2, last};
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, push_range, &p), 0);
	/* The pusher fills the queue, then waits for room, which only job 1 ending
	 * makes: the queue is seen full (and not past it) before the release. */
	bool over = false;
	for (;;) {
		pthread_mutex_lock(&ap.lock);
		unsigned queued = ap.queued_jobs;
		pthread_mutex_unlock(&ap.lock);
		if (queued >= NODE_APPLIER_QUEUE_JOBS_MAX) {
			over = queued > NODE_APPLIER_QUEUE_JOBS_MAX;
			break;
		}
		sched_yield();
	}
	pthread_mutex_lock(&fake.lock);
	fake.released = true;
	pthread_cond_broadcast(&fake.cond);
	pthread_mutex_unlock(&fake.lock);
	int joined = pthread_join(t, NULL);
	node_applier_stop(&ap); /* before any assert: a failed one leaves no thread behind */
	assert_int_equal(joined, 0);
	assert_false(over);
	assert_false(fake.bad);
	assert_int_equal(fake.n_seen, last);
	assert_true(fake.queued_max <= NODE_APPLIER_QUEUE_JOBS_MAX);
	int rc = 0;
	assert_int_equal(collect_in_order(&ap, 1, &rc), last);
	assert_int_equal(rc, 0);
}

static void test_a_stop_applies_what_was_queued(void **state)
{
	(void)state;
	struct node_applier ap = {0};
	fake_reset(&ap);
	assert_int_equal(node_applier_start(&ap, (struct tally_node *)&fake, fake_apply, HOLD_MS), 0);
	for (uint64_t i = 1; i <= 50; i++)
		push(&ap, i);
	node_applier_stop(&ap);
	assert_int_equal(fake.n_seen, 50);
	int rc = 0;
	assert_int_equal(collect_in_order(&ap, 1, &rc), 50); /* collected after the stop */
	assert_int_equal(rc, 0);
}

/* Each job takes at least SLOW_MS. */
#define SLOW_MS 10
#define SLOW_JOB_BYTES (64u << 10)
static void slow_apply(struct tally_node *n, struct node_apply_job *job)
{
	(void)n;
	(void)job;
	nanosleep(&(struct timespec){0, SLOW_MS * 1000000L}, NULL);
}

/* A thread that takes at least 10 ms per 64 KiB job may hold HOLD_MS = 50 ms of work,
 * at most 5 such jobs (320 KiB), not NODE_APPLIER_QUEUE_BYTES_MAX: once it has run one
 * job, jobs pushed as fast as they come are never queued past that. The more slowly
 * it runs, the smaller the bound, down to NODE_APPLIER_QUEUE_BYTES_MIN. */
static void test_a_slow_thread_queues_only_what_it_applies_in_the_hold(void **state)
{
	(void)state;
	enum { N = 30 };
	static uint8_t job[SLOW_JOB_BYTES];
	struct node_applier ap = {0};
	fake_reset(&ap);
	assert_int_equal(node_applier_start(&ap, (struct tally_node *)&fake, slow_apply, HOLD_MS), 0);
	assert_int_equal(ap.bound_bytes, NODE_APPLIER_QUEUE_BYTES_MIN); /* no pace yet */
	assert_true(node_applier_push(&ap, 1, job, sizeof(job)));
	node_applier_wait(&ap);
	size_t most = 0, bound = 0;
	for (uint64_t i = 2; i <= N; i++) {
		assert_true(node_applier_push(&ap, i, job, sizeof(job)));
		pthread_mutex_lock(&ap.lock);
		most = ap.queued_bytes > most ? ap.queued_bytes : most;
		bound = ap.bound_bytes;
		pthread_mutex_unlock(&ap.lock);
	}
	node_applier_stop(&ap);
	int rc = 0;
	unsigned collected = collect_in_order(&ap, 1, &rc);
	size_t fits = (size_t)HOLD_MS / SLOW_MS * SLOW_JOB_BYTES;
	assert_true(bound >= NODE_APPLIER_QUEUE_BYTES_MIN && bound <= fits);
	assert_true(most <= fits);
	assert_true(most >= NODE_APPLIER_QUEUE_BYTES_MIN - SLOW_JOB_BYTES); /* it did fill */
	assert_int_equal(collected, N);
	assert_int_equal(rc, 0);
}

int main(void)
{
	pthread_mutex_init(&fake.lock, NULL);
	pthread_cond_init(&fake.cond, NULL);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_jobs_run_in_order_on_one_thread_and_are_collected),
		cmocka_unit_test(test_nothing_is_applied_after_a_failed_job),
		cmocka_unit_test(test_the_queue_holds_its_bound_while_the_thread_is_busy),
		cmocka_unit_test(test_a_stop_applies_what_was_queued),
		cmocka_unit_test(test_a_slow_thread_queues_only_what_it_applies_in_the_hold),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
