/*
 * consensus/snapstore — the files of a node's snapshot copies (see snapstore.h).
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "consensus/flush.h"
#include "consensus/internal.h"
#include "consensus/snapstore.h"
#include "ledger/interpose.h"

#define RAFT_SNAPSHOT_PREFIX "snapshot-" /* raft_uv's: snapshot-TERM-INDEX-TIME */
#define RAFT_META_SUFFIX ".meta"           /* and its metadata, beside it */
#define RAFT_TMP_PREFIX "tmp-"             /* raft_uv's name for a file it is writing */
#define ADOPT_SUFFIX ".adopt" /* a nameless copy's name for a moment */
#define PROC_FD "/proc/self/fd/"

/* A copy raft may adopt, by its mapping. */
struct copy {
	const void *base; /* NULL: a free slot */
	size_t len;
	int fd;
	char name[NODE_PATH_BYTES_MAX]; /* "" for a file without a name */
	bool adopting;                  /* copy_adopt runs, without the lock */
	bool adopted;                   /* raft's snapshot file is this copy */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct copy copies[NODE_SNAPSTORE_SLOTS];
static char spare_dirs[NODE_SNAPSTORE_SLOTS][NODE_PATH_BYTES_MAX]; /* "" : free */
static atomic_int copies_live;    /* slots in use: pwrite64's way past all this */
static atomic_int spare_dirs_n;   /* directories with a spare: unlink's way past */
static atomic_uint copy_names;    /* numbers the copies' names */

typedef ssize_t (*pwrite64_fn)(int, const void *, size_t, off_t);
typedef int (*unlink_fn)(const char *);

static ssize_t plain_pwrite64(int fd, const void *buf, size_t count, off_t offset)
{
	static void *_Atomic next;
	pwrite64_fn f = (pwrite64_fn)ledger_next_symbol(&next, "pwrite64");
	return f != NULL ? f(fd, buf, count, offset) : syscall(SYS_pwrite64, fd, buf, count, offset);
}

static int plain_unlink(const char *path)
{
	static void *_Atomic next;
	unlink_fn f = (unlink_fn)ledger_next_symbol(&next, "unlink");
	return f != NULL ? f(path) : (int)syscall(SYS_unlink, path);
}

/* dir's slot among the directories with a spare, made if `make` (-1: none): when all
 * are taken, in place of the one made longest ago (a process that ran more nodes than
 * slots, as the tests do: that directory's snapshots are then removed as asked).
 * Locked. */
static int spare_dir(const char *dir, size_t dir_len, bool make)
{
	static unsigned made;
	for (int i = 0; i < NODE_SNAPSTORE_SLOTS; i++)
		if (spare_dirs[i][0] != '\0' && strncmp(spare_dirs[i], dir, dir_len) == 0 &&
		    spare_dirs[i][dir_len] == '\0')
			return i;
	if (!make || dir_len >= NODE_PATH_BYTES_MAX)
		return -1;
	int slot = (int)(made++ % NODE_SNAPSTORE_SLOTS);
	if (spare_dirs[slot][0] == '\0')
		atomic_fetch_add(&spare_dirs_n, 1);
	memcpy(spare_dirs[slot], dir, dir_len);
	spare_dirs[slot][dir_len] = '\0';
	return slot;
}

int node_snapstore_open(const char *dir, char *name, size_t cap)
{
	assert(dir != NULL && name != NULL && cap > 0);
	name[0] = '\0';
	pthread_mutex_lock(&lock);
	spare_dir(dir, strlen(dir), true);
	pthread_mutex_unlock(&lock);
	char spare[NODE_PATH_BYTES_MAX + sizeof(SNAPSTORE_SPARE) + 1];
	int n = snprintf(spare, sizeof(spare), "%s/" SNAPSTORE_SPARE, dir);
	int m = snprintf(name, cap, "%s/" SNAPSTORE_COPY "%u", dir, atomic_fetch_add(&copy_names, 1));
	if (n > 0 && (size_t)n < sizeof(spare) && m > 0 && (size_t)m < cap &&
	    renameat2(AT_FDCWD, spare, AT_FDCWD, name, RENAME_NOREPLACE) == 0) {
		int fd = open(name, O_RDWR | O_CLOEXEC);
		if (fd >= 0)
			return fd;
		plain_unlink(name);
	}
	name[0] = '\0';
	return open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, S_IRUSR | S_IWUSR);
}

bool node_snapstore_raft_data(const char *name)
{
	assert(name != NULL);
	return strncmp(name, RAFT_SNAPSHOT_PREFIX, strlen(RAFT_SNAPSHOT_PREFIX)) == 0 &&
	       strstr(name, RAFT_META_SUFFIX) == NULL;
}

void node_snapstore_drop(int fd, const char *name)
{
	assert(name != NULL);
	if (fd >= 0)
		close(fd);
	if (name[0] != '\0')
		plain_unlink(name);
}

void node_snapstore_keep(const void *base, size_t len, int fd, const char *name)
{
	assert(base != NULL && len > 0 && fd >= 0 && name != NULL);
	pthread_mutex_lock(&lock);
	for (size_t i = 0; fd >= 0 && i < NODE_SNAPSTORE_SLOTS; i++) {
		if (copies[i].base == NULL) {
			copies[i] = (struct copy){.base = base, .len = len, .fd = fd};
			snprintf(copies[i].name, sizeof(copies[i].name), "%s", name);
			atomic_fetch_add(&copies_live, 1);
			fd = -1;
		}
	}
	pthread_mutex_unlock(&lock);
	if (fd >= 0) /* no slot: raft writes it; a named copy's name goes with the mapping */
		node_snapstore_drop(fd, name);
}

bool node_snapstore_release(const void *base)
{
	assert(base != NULL);
	bool adopted = false;
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < NODE_SNAPSTORE_SLOTS; i++) {
		struct copy *c = &copies[i];
		if (c->base != base)
			continue;
		assert(!c->adopting); /* raft releases a snapshot once it is stored */
		adopted = c->adopted;
		node_snapstore_drop(c->fd, adopted ? "" : c->name);
		*c = (struct copy){.base = NULL};
		atomic_fetch_sub(&copies_live, 1);
	}
	pthread_mutex_unlock(&lock);
	return adopted;
}

/*
 * Makes raft's file behind fd the copy c. fd is raft's temporary file of a snapshot's
 * data, still empty. The copy is synced, then takes raft's name: a named copy is
 * renamed over it; one without a name is first linked at a spare name beside it (raft's
 * temporary prefix, which raft removes at start if a crash leaves it). Then fd becomes a
 * descriptor of the copy, opened again by that name, so that raft's fsync of fd is of
 * the copy and everything that follows file descriptors (a fault injector's preload)
 * sees the file raft goes on with. false when a step fails before raft's name is the
 * copy's: raft then writes the bytes as before. After that it is true: raft's name
 * holds the copy's bytes, durable, whatever happens next (should fd not become the
 * copy, raft syncs and closes its own empty file and renames the copy).
 */
static bool copy_adopt(const struct copy *c, int fd)
{
	struct stat cs, fs;
	if (fstat(c->fd, &cs) != 0 || fstat(fd, &fs) != 0 || !S_ISREG(fs.st_mode) ||
	    fs.st_size != 0 || fs.st_dev != cs.st_dev || (uint64_t)cs.st_size != c->len)
		return false;
	char proc[sizeof(PROC_FD) + 3 * sizeof(int)];
	char path[NODE_PATH_BYTES_MAX], spare[NODE_PATH_BYTES_MAX + sizeof(ADOPT_SUFFIX)];
	const char *name = node_fd_path(fd, path, sizeof(path));
	if (name == NULL || strncmp(name, RAFT_TMP_PREFIX, strlen(RAFT_TMP_PREFIX)) != 0 ||
	    !node_snapstore_raft_data(name + strlen(RAFT_TMP_PREFIX)))
		return false;
	/* Durable before raft's name holds it: should fd not become the copy below, raft
	 * syncs the file behind fd, not this one. fsync() is flush.c's, a step at a time. */
	if (fsync(c->fd) != 0)
		return false;
	const char *from = c->name;
	if (from[0] == '\0') {
		snprintf(spare, sizeof(spare), "%s" ADOPT_SUFFIX, path);
		snprintf(proc, sizeof(proc), PROC_FD "%d", c->fd);
		if (linkat(AT_FDCWD, proc, AT_FDCWD, spare, AT_SYMLINK_FOLLOW) != 0)
			return false; /* a file system without O_TMPFILE's link, another one */
		from = spare;
	}
	if (rename(from, path) != 0) {
		if (from == spare)
			plain_unlink(spare);
		return false;
	}
	int again = open(path, O_WRONLY | O_CLOEXEC);
	if (again >= 0) {
		dup3(again, fd, O_CLOEXEC);
		close(again);
	}
	return true;
}

/* Whether the write of count bytes at buf into fd stored a whole copy by adopting it.
 * The lock is not held while copy_adopt syncs the copy (seconds, for GBs): raft's loop
 * writes its metadata with pwrite64 too. */
static bool copy_store(int fd, const void *buf, size_t count)
{
	struct copy *c = NULL;
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < NODE_SNAPSTORE_SLOTS; i++)
		if (copies[i].base == buf && copies[i].len == count && !copies[i].adopted &&
		    !copies[i].adopting)
			c = &copies[i];
	if (c != NULL)
		c->adopting = true;
	pthread_mutex_unlock(&lock);
	if (c == NULL)
		return false;
	bool adopted = copy_adopt(c, fd); /* the slot is this thread's while adopting */
	pthread_mutex_lock(&lock);
	c->adopting = false;
	c->adopted = adopted;
	pthread_mutex_unlock(&lock);
	return adopted;
}

/* raft_uv's store of a snapshot writes each buffer with one pwrite64 (libuv's
 * uv_fs_write): a whole copy, from its mapping, at offset 0, is adopted instead. */
__attribute__((visibility("default"))) ssize_t pwrite64(int fd, const void *buf, size_t count,
							off_t offset)
{
	if (offset == 0 && count > 0 && atomic_load(&copies_live) > 0 &&
	    copy_store(fd, buf, count))
		return (ssize_t)count;
	return plain_pwrite64(fd, buf, count, offset);
}

/* Whether nothing but the caller has the file at path open: a write lease is granted
 * only then (open file descriptions, mappings' included, of any process). */
static bool file_alone(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	bool alone = fcntl(fd, F_SETLEASE, F_WRLCK) == 0;
	if (alone)
		fcntl(fd, F_SETLEASE, F_UNLCK);
	close(fd);
	return alone;
}

/*
 * Whether raft's removal of path, one of its snapshot data files in a directory copies
 * are made in, kept it as that directory's spare instead. It is first renamed to a
 * name only this function knows, so that no one opens it meanwhile, then checked to be
 * open nowhere else (a snapshot being sent, or checked: such a file is removed as
 * asked), then renamed over the spare, whose own file goes.
 */
static bool spare_keep(const char *path)
{
	const char *slash = strrchr(path, '/');
	if (slash == NULL || !node_snapstore_raft_data(slash + 1))
		return false;
	int dir_len = (int)(slash - path);
	pthread_mutex_lock(&lock);
	int slot = spare_dir(path, (size_t)dir_len, false);
	pthread_mutex_unlock(&lock);
	char keep[NODE_PATH_BYTES_MAX + 32];
	char spare[NODE_PATH_BYTES_MAX + sizeof(SNAPSTORE_SPARE) + 1];
	unsigned number = atomic_fetch_add(&copy_names, 1);
	if (slot < 0 ||
	    snprintf(keep, sizeof(keep), "%.*s/" SNAPSTORE_SPARE "-%u", dir_len, path,
		     number) >= (int)sizeof(keep) ||
	    snprintf(spare, sizeof(spare), "%.*s/" SNAPSTORE_SPARE, dir_len,
		     path) >= (int)sizeof(spare) ||
	    renameat2(AT_FDCWD, path, AT_FDCWD, keep, RENAME_NOREPLACE) != 0)
		return false; /* the plain unlink then says what it would have */
	if (!file_alone(keep) || rename(keep, spare) != 0)
		plain_unlink(keep);
	return true;
}

/* raft_uv removes its old snapshots with unlink (libuv's uv_fs_unlink): one of them
 * may become the next copy's file (spare_keep). Anything else is the plain call. */
__attribute__((visibility("default"))) int unlink(const char *path)
{
	if (atomic_load(&spare_dirs_n) > 0 && spare_keep(path))
		return 0;
	return plain_unlink(path);
}
