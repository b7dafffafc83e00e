/*
 * consensus/flush — large writes reach the disk a step at a time (see flush.h).
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "consensus/flush.h"
#include "ledger/interpose.h"

/* Whether a step's error is a write-back error of the file (EIO, ENOSPC, ...), rather
 * than one saying the file cannot be stepped (the sync after it decides then). */
static bool flush_error_is_the_files(int err)
{
	return err != EBADF && err != EINVAL && err != ESPIPE && err != ENOMEM && err != ENOSYS;
}

int node_flush_stepwise(int fd, uint64_t size, node_flush_range_fn range)
{
	return node_flush_steps(fd, 0, size, range);
}

int node_flush_steps(int fd, uint64_t from, uint64_t to, node_flush_range_fn range)
{
	assert(range != NULL && from <= to);
	const unsigned flags = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
			       SYNC_FILE_RANGE_WAIT_AFTER;
	for (uint64_t at = from; at < to; at += NODE_FLUSH_STEP_BYTES) {
		uint64_t len = to - at < NODE_FLUSH_STEP_BYTES ? to - at : NODE_FLUSH_STEP_BYTES;
		if (range(fd, (off_t)at, (off_t)len, flags) != 0)
			return flush_error_is_the_files(errno) ? errno : 0;
	}
	return 0;
}

int node_flush_ledger(struct tally_ledger *l)
{
	assert(l != NULL);
	int fd = tally_ledger_file_dup(l);
	if (fd < 0)
		return errno;
	struct stat st;
	int err = fstat(fd, &st) == 0 ? node_flush_stepwise(fd, (uint64_t)st.st_size, sync_file_range)
				       : errno;
	if (err == 0 && fdatasync(fd) != 0)
		err = errno;
	close(fd);
	if (err == 0 && tally_ledger_journal_sync(l) != 0)
		err = EIO;
	return err;
}

/* The fsync() this one stands in front of: libc's, or a fault injector's preloaded
 * in front of libc (libfiu, in the tests). */
static int next_fsync(int fd)
{
	static void *_Atomic next;
	int (*f)(int) = (int (*)(int))ledger_next_symbol(&next, "fsync");
	return f != NULL ? f(fd) : (int)syscall(SYS_fsync, fd);
}

/* fsync() for the whole process (flush.h): raft's store of a snapshot file. */
__attribute__((visibility("default"))) int fsync(int fd)
{
	struct stat st;
	int step_error = 0;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
	    (uint64_t)st.st_size > NODE_FLUSH_STEP_BYTES)
		step_error = node_flush_stepwise(fd, (uint64_t)st.st_size, sync_file_range);
	int rc = next_fsync(fd);
	if (rc == 0 && step_error != 0) {
		errno = step_error;
		return -1;
	}
	return rc;
}

const char *node_fd_path(int fd, char *path, size_t cap)
{
	assert(path != NULL && cap > 1);
	char proc[sizeof("/proc/self/fd/") + 3 * sizeof(int)];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(proc, path, cap - 1);
	if (n <= 0 || (size_t)n >= cap - 1)
		return NULL;
	path[n] = '\0';
	const char *slash = strrchr(path, '/');
	return slash != NULL ? slash + 1 : NULL;
}
