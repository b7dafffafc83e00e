/*
 * consensus/logfill — raft's log segments made written, not only allocated (see
 * logfill.h).
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "consensus/flush.h"
#include "consensus/internal.h"
#include "consensus/logfill.h"
#include "ledger/interpose.h"

#define RAFT_OPEN_PREFIX "open-" /* raft_uv's name of an open segment: open-N */
#define LOGFILL_ALIGN 4096 /* what O_DIRECT asks of a write's buffer, offset and length */

struct logdir {
	char path[NODE_PATH_BYTES_MAX]; /* canonical; "" : a free slot */
	uint64_t filled;                /* its segments written */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct logdir dirs[NODE_LOGFILL_DIRS];
static unsigned dirs_made;
static atomic_int dirs_n; /* slots in use: posix_fallocate's way past all this */
/* Never written: in .bss, its pages are the kernel's zero page until read. */
static uint8_t zeros[NODE_FLUSH_STEP_BYTES] __attribute__((aligned(LOGFILL_ALIGN)));

typedef int (*fallocate_fn)(int, off_t, off_t);

static int plain_posix_fallocate(int fd, off_t offset, off_t len)
{
	static void *_Atomic next;
	fallocate_fn f = (fallocate_fn)ledger_next_symbol(&next, "posix_fallocate");
	if (f != NULL)
		return f(fd, offset, len);
	return syscall(SYS_fallocate, fd, 0, offset, len) == 0 ? 0 : errno;
}

/* The slot of the directory dir_len bytes of path name, or -1. Locked. */
static int dir_slot(const char *path, size_t dir_len)
{
	for (int i = 0; i < NODE_LOGFILL_DIRS; i++)
		if (strncmp(dirs[i].path, path, dir_len) == 0 && dirs[i].path[dir_len] == '\0' &&
		    dirs[i].path[0] != '\0')
			return i;
	return -1;
}

void node_logfill_dir(const char *dir)
{
	assert(dir != NULL);
	char real[PATH_MAX];
	if (realpath(dir, real) == NULL || strlen(real) >= NODE_PATH_BYTES_MAX)
		return; /* its segments are allocated as raft_uv does it */
	pthread_mutex_lock(&lock);
	if (dir_slot(real, strlen(real)) < 0) {
		struct logdir *d = &dirs[dirs_made++ % NODE_LOGFILL_DIRS];
		if (d->path[0] == '\0')
			atomic_fetch_add(&dirs_n, 1);
		snprintf(d->path, sizeof(d->path), "%s", real);
		d->filled = 0;
	}
	pthread_mutex_unlock(&lock);
}

uint64_t node_logfill_count(const char *dir)
{
	assert(dir != NULL);
	char real[PATH_MAX];
	uint64_t n = 0;
	if (realpath(dir, real) == NULL)
		return 0;
	pthread_mutex_lock(&lock);
	int slot = dir_slot(real, strlen(real));
	if (slot >= 0)
		n = dirs[slot].filled;
	pthread_mutex_unlock(&lock);
	return n;
}

/* Whether name is raft_uv's name of an open segment: open- and digits, nothing else. */
static bool segment_name(const char *name)
{
	size_t p = strlen(RAFT_OPEN_PREFIX);
	if (strncmp(name, RAFT_OPEN_PREFIX, p) != 0 || name[p] == '\0')
		return false;
	return strspn(name + p, "0123456789") == strlen(name + p);
}

/* Writes [0, len) of the file at path (a new segment) with zeros, a step at a time,
 * and syncs it: 0, an errno, or -1 when the file system refuses O_DIRECT and nothing
 * was written (the plain call then allocates). */
static int zero_fill(const char *path, off_t len)
{
	int d = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC);
	if (d < 0)
		return -1;
	int rc = 0;
	for (off_t at = 0; rc == 0 && at < len;) {
		size_t n = (size_t)(len - at) < sizeof(zeros) ? (size_t)(len - at) : sizeof(zeros);
		ssize_t w = pwrite(d, zeros, n, at);
		if (w > 0)
			at += w;
		else
			rc = w == 0 ? EIO : at == 0 && errno == EINVAL ? -1 : errno;
	}
	if (rc == 0 && fdatasync(d) != 0)
		rc = errno;
	close(d);
	return rc;
}

/* posix_fallocate(fd, 0, len) made by writing, when fd is a new segment of a registered
 * raft directory: 0 or an errno. -1: not a segment of one, or no O_DIRECT. */
static int segment_fill(int fd, off_t len)
{
	char path[NODE_PATH_BYTES_MAX];
	struct stat st;
	const char *name = node_fd_path(fd, path, sizeof(path));
	if (name == NULL || !segment_name(name))
		return -1;
	size_t dir_len = (size_t)(name - 1 - path);
	/* Zeros only where nothing was written: a new, empty file (raft_uv's O_EXCL). */
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size != 0)
		return -1;
	pthread_mutex_lock(&lock);
	int slot = dir_slot(path, dir_len);
	pthread_mutex_unlock(&lock);
	if (slot < 0)
		return -1;
	int rc = zero_fill(path, len);
	if (rc == 0) {
		pthread_mutex_lock(&lock);
		if (dir_slot(path, dir_len) == slot)
			dirs[slot].filled++;
		pthread_mutex_unlock(&lock);
	}
	return rc;
}

/* raft_uv allocates each new segment with posix_fallocate (on libuv's thread pool): a
 * segment of a registered directory is written with zeros instead (segment_fill).
 * Anything else is the plain call. */
__attribute__((visibility("default"))) int posix_fallocate(int fd, off_t offset, off_t len)
{
	if (atomic_load(&dirs_n) > 0 && offset == 0 && len > 0 && len % LOGFILL_ALIGN == 0) {
		int rc = segment_fill(fd, len);
		if (rc >= 0)
			return rc;
	}
	return plain_posix_fallocate(fd, offset, len);
}
