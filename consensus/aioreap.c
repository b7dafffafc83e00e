/*
 * consensus/aioreap — raft's kernel AIO contexts destroyed off the event loop (see
 * aioreap.h).
 */
#include <assert.h>
#include <errno.h>
#include <linux/aio_abi.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "consensus/aioreap.h"
#include "consensus/flush.h"
#include "ledger/interpose.h"

typedef long (*syscall_fn)(long, ...);

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queued = PTHREAD_COND_INITIALIZER;  /* a context, or the hold let go */
static pthread_cond_t drained = PTHREAD_COND_INITIALIZER; /* the queue ran empty */
static aio_context_t queue[NODE_AIO_REAP_QUEUE];
static unsigned queue_head, queue_len; /* a ring */
static bool reaping;                   /* the thread is inside one io_destroy */
static bool held;
static bool started, start_failed;
static _Atomic uint64_t reaped;

/* libc's syscall(), or whatever was preloaded in front of it; NULL only if the
 * process has none, which a dynamically linked program on Linux always has. */
static syscall_fn next_syscall(void)
{
	static void *_Atomic next;
	return (syscall_fn)ledger_next_symbol(&next, "syscall");
}

static long destroy_now(aio_context_t ctx)
{
	syscall_fn f = next_syscall();
	if (f == NULL) {
		errno = ENOSYS;
		return -1;
	}
	return f(SYS_io_destroy, ctx);
}

static void *reaper_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	for (;;) {
		while (queue_len == 0 || held)
			pthread_cond_wait(&queued, &lock);
		aio_context_t ctx = queue[queue_head];
		queue_head = (queue_head + 1) % NODE_AIO_REAP_QUEUE;
		queue_len--;
		reaping = true;
		pthread_mutex_unlock(&lock);
		/* raft's own call ignores an error but for its start-up probe, where only
		 * a context it has just set up is destroyed; nothing here to tell either. */
		(void)destroy_now(ctx);
		atomic_fetch_add_explicit(&reaped, 1, memory_order_relaxed);
		pthread_mutex_lock(&lock);
		reaping = false;
		if (queue_len == 0)
			pthread_cond_broadcast(&drained);
	}
	return NULL;
}

/* fork() keeps the lock consistent. A child has none of its parent's AIO contexts
 * and no reaper thread: it starts with an empty queue and starts its own. */
static void fork_prepare(void)
{
	pthread_mutex_lock(&lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&lock);
}

static void fork_child(void)
{
	queue_head = queue_len = 0;
	reaping = held = started = start_failed = false;
	/* the parent's reaper may have been waiting on them: no thread here is */
	pthread_cond_init(&queued, NULL);
	pthread_cond_init(&drained, NULL);
	pthread_mutex_unlock(&lock);
}

/* Under the lock: the reaper thread, started on the first context. */
static bool reaper_running(void)
{
	static bool fork_handled;
	if (!fork_handled)
		fork_handled = pthread_atfork(fork_prepare, fork_parent, fork_child) == 0;
	if (!started && !start_failed) {
		pthread_attr_t attr;
		pthread_t t;
		start_failed = pthread_attr_init(&attr) != 0;
		if (!start_failed) {
			pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
			start_failed = pthread_create(&t, &attr, reaper_main, NULL) != 0;
			pthread_attr_destroy(&attr);
		}
		started = !start_failed;
	}
	return started;
}

/* Whether ctx went on the queue; false: the caller destroys it in place. */
static bool reap_later(aio_context_t ctx)
{
	pthread_mutex_lock(&lock);
	bool ok = queue_len < NODE_AIO_REAP_QUEUE && reaper_running();
	if (ok) {
		queue[(queue_head + queue_len) % NODE_AIO_REAP_QUEUE] = ctx;
		queue_len++;
		pthread_cond_signal(&queued);
	}
	pthread_mutex_unlock(&lock);
	return ok;
}

/* syscall() for the whole process (aioreap.h). libc's takes six arguments from
 * where a call would put them, whatever the call passed; so does this one. A call
 * with fewer leaves the last of them in its own frame, which libc's (assembly) reads
 * unseen and ASan would take for an overflow: this function is not instrumented. */
__attribute__((visibility("default"), no_sanitize_address)) long syscall(long number, ...)
{
	va_list ap;
	va_start(ap, number);
	long a[6];
	for (int i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);
	if (number == SYS_io_destroy && a[0] != 0 && reap_later((aio_context_t)a[0]))
		return 0;
	syscall_fn f = next_syscall();
	if (f == NULL) {
		errno = ENOSYS;
		return -1;
	}
	return f(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

uint64_t node_aio_reaped(void)
{
	return atomic_load_explicit(&reaped, memory_order_relaxed);
}

void node_aio_reap_drain(void)
{
	pthread_mutex_lock(&lock);
	assert(!held || queue_len == 0);
	while (queue_len > 0 || reaping)
		pthread_cond_wait(&drained, &lock);
	pthread_mutex_unlock(&lock);
}

void node_aio_reap_hold(bool hold)
{
	pthread_mutex_lock(&lock);
	held = hold;
	if (!hold)
		pthread_cond_signal(&queued);
	pthread_mutex_unlock(&lock);
}
