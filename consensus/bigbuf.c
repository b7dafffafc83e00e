/*
 * consensus/bigbuf — a snapshot raft loads is a mapping of its file, not heap.
 *
 * raft 0.15 holds a snapshot it loads as one buffer: at start (it restores the latest
 * snapshot) and whenever it sends the snapshot to a follower. raft_uv allocates the
 * buffer with raft_malloc(size of the file) and fills it with one read() of the whole
 * file. Filled by reading, every byte of it is anonymous memory: a restarted follower
 * of a 1M-member ledger held 3.5 GB of heap for its 3.64 GB snapshot
 * (docs/performance.md, Memory).
 *
 * Two pieces change that, for the whole process:
 *   - raft's heap (raft_heap_set, tally_node_snapshot_mappings): an allocation of at least
 *     NODE_BIGBUF_MIN bytes is an anonymous mapping of its own, remembered in a table
 *     of at most NODE_BIGBUF_MAX; raft_free of it unmaps it. Anything smaller, and
 *     anything once the table is full, is libc's, zeroed (raft 0.15 writes bytes of
 *     its buffers it never set to its files: valgrind's complaint, and bytes on disk
 *     that would differ from run to run).
 *   - read() (consensus/snapshot.c): a read of one of raft_uv's snapshot files into
 *     the whole of such a mapping, from a page-aligned offset, no further than the
 *     file's end, maps the file there (MAP_PRIVATE | MAP_FIXED) instead of copying it
 *     (node_bigbuf_read_file).
 *   - an InstallSnapshot's payload (tlsnet.c): written as it arrives to an unlinked
 *     file beside the ledger (O_TMPFILE), then mapped whole (node_bigbuf_map_file);
 *     the file goes when raft frees the buffer. The buffer then holds the file's page cache, which the
 *     kernel can drop and read back; a page raft or the node wrote to would become
 *     private (neither does: the node writes the snapshot to its staging file, raft
 *     sends it or frees it).
 *
 * raft_uv deletes a snapshot's file only after a newer one, and never rewrites a file
 * in place, so a mapping never outlives what it maps; an unlinked file stays readable
 * through it. Thread-safe: raft_uv loads a snapshot to send it on libuv's thread pool.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "consensus/bigbuf.h"
#include "consensus/flush.h"
#include "consensus/node.h"

#define NODE_BIGBUF_PATH_MAX 4096 /* a snapshot file's path, read back from /proc */

struct bigbuf {
	void *base;
	size_t len;
};

static pthread_mutex_t bigbuf_lock = PTHREAD_MUTEX_INITIALIZER;
static struct bigbuf bigbufs[NODE_BIGBUF_MAX];

static bool bigbuf_add(void *base, size_t len)
{
	bool added = false;
	pthread_mutex_lock(&bigbuf_lock);
	for (unsigned i = 0; i < NODE_BIGBUF_MAX && !added; i++)
		if (bigbufs[i].base == NULL) {
			bigbufs[i] = (struct bigbuf){base, len};
			added = true;
		}
	pthread_mutex_unlock(&bigbuf_lock);
	return added;
}

/* The length of the big buffer at base (0: none); `take` forgets it. */
static size_t bigbuf_find(const void *base, bool take)
{
	size_t len = 0;
	pthread_mutex_lock(&bigbuf_lock);
	for (unsigned i = 0; i < NODE_BIGBUF_MAX; i++)
		if (base != NULL && bigbufs[i].base == base) {
			len = bigbufs[i].len;
			if (take)
				bigbufs[i] = (struct bigbuf){NULL, 0};
			break;
		}
	pthread_mutex_unlock(&bigbuf_lock);
	return len;
}

static void *bigbuf_malloc(void *data, size_t size)
{
	(void)data;
	if (size < NODE_BIGBUF_MIN) /* zeroed: raft 0.15 writes some bytes it never set */
		return calloc(1, size);
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	if (!bigbuf_add(p, size)) {
		munmap(p, size);
		return calloc(1, size);
	}
	return p;
}

static void bigbuf_free(void *data, void *ptr)
{
	(void)data;
	size_t len = bigbuf_find(ptr, true);
	if (len > 0)
		munmap(ptr, len);
	else
		free(ptr);
}

static void *bigbuf_calloc(void *data, size_t nmemb, size_t size)
{
	if (size != 0 && nmemb > SIZE_MAX / size)
		return NULL;
	if (nmemb * size < NODE_BIGBUF_MIN)
		return calloc(nmemb, size);
	return bigbuf_malloc(data, nmemb * size); /* anonymous mappings start zeroed */
}

static void *bigbuf_realloc(void *data, void *ptr, size_t size)
{
	size_t len = bigbuf_find(ptr, false);
	if (len == 0)
		return realloc(ptr, size);
	void *p = bigbuf_malloc(data, size);
	if (p != NULL) {
		memcpy(p, ptr, len < size ? len : size);
		bigbuf_free(data, ptr);
	}
	return p;
}

static void *bigbuf_aligned_alloc(void *data, size_t alignment, size_t size)
{
	(void)data;
	return aligned_alloc(alignment, size);
}

static void bigbuf_aligned_free(void *data, size_t alignment, void *ptr)
{
	(void)data, (void)alignment;
	free(ptr);
}

static struct raft_heap bigbuf_heap = {
	.malloc = bigbuf_malloc,
	.free = bigbuf_free,
	.calloc = bigbuf_calloc,
	.realloc = bigbuf_realloc,
	.aligned_alloc = bigbuf_aligned_alloc,
	.aligned_free = bigbuf_aligned_free,
};

static bool bigbuf_installed;

void tally_node_snapshot_mappings(void)
{
	raft_heap_set(&bigbuf_heap);
	bigbuf_installed = true;
}

bool node_bigbuf_on(void)
{
	return bigbuf_installed;
}

void *node_bigbuf_map_file(int fd, size_t len)
{
	assert(bigbuf_installed && len > 0);
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED)
		return NULL;
	if (!bigbuf_add(p, len)) {
		munmap(p, len);
		return NULL;
	}
	return p;
}

/* Whether fd is one of raft_uv's snapshot files ("snapshot-TERM-INDEX-TIMESTAMP"),
 * which it never rewrites or truncates: a log segment it may truncate is never
 * mapped (a page past a truncated end would fault). */
static bool bigbuf_is_snapshot_file(int fd)
{
	char path[NODE_BIGBUF_PATH_MAX];
	const char *name = node_fd_path(fd, path, sizeof(path));
	return name != NULL && strncmp(name, "snapshot-", 9) == 0 && strchr(name, '.') == NULL;
}

ssize_t node_bigbuf_read_file(int fd, void *buf, size_t count)
{
	if (count < NODE_BIGBUF_MIN || bigbuf_find(buf, false) != count)
		return -1;
	int saved_errno = errno;
	bool snapshot = bigbuf_is_snapshot_file(fd);
	errno = saved_errno;
	if (!snapshot)
		return -1;
	struct stat st;
	off_t at = lseek(fd, 0, SEEK_CUR);
	long page = sysconf(_SC_PAGESIZE);
	if (at < 0 || page <= 0 || at % page != 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
	    st.st_size < at || (uint64_t)(st.st_size - at) < count)
		return -1;
	int saved = errno;
	void *p = mmap(buf, count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, at);
	if (p == MAP_FAILED) {
		/* A failed MAP_FIXED may have unmapped the range: anonymous pages again, for
		 * read() to copy into (if even that fails, the process cannot go on). */
		p = mmap(buf, count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		if (p == MAP_FAILED)
			abort();
		errno = saved;
		return -1;
	}
	assert(p == buf);
	if (lseek(fd, at + (off_t)count, SEEK_SET) < 0) {
		errno = saved;
		return -1; /* the mapping holds the bytes; read() reads them again */
	}
	return (ssize_t)count;
}
