/*
 * Tests of consensus/aioreap: io_destroy() asked through syscall() returns at once and
 * the context goes on the reaper's thread; every other syscall() is libc's.
 *
 * A context is alive while io_submit() of no request on it answers 0; once destroyed,
 * the kernel answers EINVAL. The reaper can be held between two contexts, so a test
 * sees a queued context alive after its io_destroy() returned, which a destruction in
 * place would not leave.
 */
#include <errno.h>
#include <linux/aio_abi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "consensus/aioreap.h"
#include "tests/raftio.h"
#include "tests/util.h"

static aio_context_t context(void)
{
	aio_context_t ctx = 0;
	assert_int_equal(syscall(SYS_io_setup, 1, &ctx), 0);
	assert_true(ctx != 0);
	return ctx;
}

static bool alive(aio_context_t ctx)
{
	long rc = syscall(SYS_io_submit, ctx, 0L, NULL);
	assert_true(rc == 0 || (rc == -1 && errno == EINVAL));
	return rc == 0;
}

static void test_other_calls_are_libcs(void **state)
{
	(void)state;
	assert_int_equal(syscall(SYS_getpid), getpid());
	/* six arguments */
	char *p = (char *)syscall(SYS_mmap, NULL, 4096L, (long)(PROT_READ | PROT_WRITE),
				  (long)(MAP_PRIVATE | MAP_ANONYMOUS), -1L, 0L);
	assert_true(p != MAP_FAILED);
	p[4095] = 7;
	assert_int_equal(munmap(p, 4096), 0);
	/* an error is libc's: -1 and errno */
	errno = 0;
	assert_int_equal(syscall(SYS_close, -1), -1);
	assert_int_equal(errno, EBADF);
	/* a context of 0 is no context: the kernel's answer, not the queue's */
	errno = 0;
	assert_int_equal(syscall(SYS_io_destroy, 0L), -1);
	assert_int_equal(errno, EINVAL);
}

static void test_a_context_goes_on_the_reapers_thread(void **state)
{
	(void)state;
	uint64_t before = node_aio_reaped();
	aio_context_t ctx = context();
	node_aio_reap_hold(true);
	assert_int_equal(syscall(SYS_io_destroy, ctx), 0);
	assert_true(alive(ctx)); /* answered, not yet destroyed */
	node_aio_reap_hold(false);
	node_aio_reap_drain();
	assert_false(alive(ctx));
	assert_int_equal(node_aio_reaped(), before + 1);
}

static void test_past_the_queue_a_context_is_destroyed_in_place(void **state)
{
	(void)state;
	uint64_t before = node_aio_reaped();
	aio_context_t ctx[NODE_AIO_REAP_QUEUE + 1];
	for (unsigned i = 0; i <= NODE_AIO_REAP_QUEUE; i++)
		ctx[i] = context();
	node_aio_reap_hold(true);
	for (unsigned i = 0; i <= NODE_AIO_REAP_QUEUE; i++)
		assert_int_equal(syscall(SYS_io_destroy, ctx[i]), 0);
	for (unsigned i = 0; i < NODE_AIO_REAP_QUEUE; i++)
		assert_true(alive(ctx[i]));
	assert_false(alive(ctx[NODE_AIO_REAP_QUEUE]));
	node_aio_reap_hold(false);
	node_aio_reap_drain();
	for (unsigned i = 0; i < NODE_AIO_REAP_QUEUE; i++)
		assert_false(alive(ctx[i]));
	assert_int_equal(node_aio_reaped(), before + NODE_AIO_REAP_QUEUE);
}

/* A child of fork() has none of its parent's contexts and no reaper thread; its
 * own contexts still go on a reaper, its own. */
static void test_a_forked_child_reaps_its_own(void **state)
{
	(void)state;
	aio_context_t parents = context();
	node_aio_reap_hold(true);
	assert_int_equal(syscall(SYS_io_destroy, parents), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		uint64_t before = node_aio_reaped();
		aio_context_t ctx = context();
		bool ok = syscall(SYS_io_destroy, ctx) == 0;
		node_aio_reap_drain();
		_exit(ok && !alive(ctx) && node_aio_reaped() == before + 1 ? 0 : 1);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_true(alive(parents));
	node_aio_reap_hold(false);
	node_aio_reap_drain();
	assert_false(alive(parents));
}

/* raft_uv's writer of the open segment destroys its context when it closes: with
 * the reaper held, the close completes, and the context is the reaper's. */
static void test_raft_uv_destroys_its_contexts_off_its_loop(void **state)
{
	(void)state;
	char *dir = fx_tmpdir();
	static struct raftio b; /* static: see raftio.h */
	raftio_init(&b, dir);
	raftio_start(&b);
	assert_null(raftio_load(&b, NULL));
	raftio_append_one(&b);
	node_aio_reap_drain();
	uint64_t before = node_aio_reaped();
	node_aio_reap_hold(true);
	raftio_close(&b);
	/* closed while the reaper was held; what it destroyed was queued, not in place */
	node_aio_reap_hold(false);
	node_aio_reap_drain();
	assert_true(node_aio_reaped() >= before + 1);
	fx_remove_dir(dir);
	free(dir);
}

/* A test that failed while holding the reaper leaves it held: let it go, so that the
 * next test's drain does not wait on it. */
static int let_go(void **state)
{
	(void)state;
	node_aio_reap_hold(false);
	node_aio_reap_drain();
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_other_calls_are_libcs),
		cmocka_unit_test_teardown(test_a_context_goes_on_the_reapers_thread, let_go),
		cmocka_unit_test_teardown(test_past_the_queue_a_context_is_destroyed_in_place, let_go),
		cmocka_unit_test_teardown(test_a_forked_child_reaps_its_own, let_go),
		cmocka_unit_test_teardown(test_raft_uv_destroys_its_contexts_off_its_loop, let_go),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
