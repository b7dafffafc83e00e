/*
 * consensus/snapshot — the ledger as a raft snapshot (see snapshot.h).
 */
/* read() is defined below: a fortified build would make it an inline wrapper. */
#undef _FORTIFY_SOURCE
#include <assert.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "consensus/flush.h"
#include "consensus/internal.h"
#include "consensus/snapshot.h"

#define SNAPSHOT_FILE_TEMPLATE ".snapshot-XXXXXX" /* in the ledger directory, unlinked */
#define SNAPSHOT_RAFT_PREFIX "snapshot-"         /* raft_uv's: snapshot-TERM-INDEX-TIME */
#define SNAPSHOT_RAFT_TMP_PREFIX "tmp-snapshot-" /* raft_uv's, while it writes one */
#define SNAPSHOT_SPARE_SUFFIX ".adopt"           /* the copy's name for a moment */
#define SNAPSHOT_PROC_FD "/proc/self/fd/"

/*
 * The copies node_snapshot_take made and node_snapshot_free has not yet freed, by their
 * mapping: what raft_uv's store of one can adopt instead of writing (pwrite64 below).
 * Each keeps its file open for writing. A node has one at a time (fsm.c waits for the
 * last to be freed); a copy that finds no free slot is stored by writing, as before.
 */
struct snapshot_copy {
	const void *base; /* NULL: a free slot */
	size_t len;
	int fd;
	bool adopting; /* copy_adopt runs, without the lock */
	bool adopted;  /* raft's snapshot file is this copy */
};
static pthread_mutex_t copies_lock = PTHREAD_MUTEX_INITIALIZER;
static struct snapshot_copy copies[NODE_SNAPSHOT_COPIES_MAX];
static atomic_int copies_live; /* slots in use: pwrite64's way past all this */

/* A file for the copy in dir with no name: O_TMPFILE, which linkat can name later; or,
 * where the file system has none, a named file unlinked at once (never adopted). */
static int copy_open(const char *dir)
{
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, S_IRUSR | S_IWUSR);
	if (fd >= 0)
		return fd;
	char path[NODE_PATH_BYTES_MAX + sizeof(SNAPSHOT_FILE_TEMPLATE) + 1];
	int n = snprintf(path, sizeof(path), "%s/" SNAPSHOT_FILE_TEMPLATE, dir);
	if (n < 0 || (size_t)n >= sizeof(path))
		return -1;
	fd = mkostemp(path, O_CLOEXEC);
	if (fd >= 0)
		unlink(path); /* nameless: its blocks go with the mapping, or with the process */
	return fd;
}

/* Keeps fd with the copy mapped at base; closes it when no slot is free. */
static void copy_register(const void *base, size_t len, int fd)
{
	pthread_mutex_lock(&copies_lock);
	for (size_t i = 0; fd >= 0 && i < NODE_SNAPSHOT_COPIES_MAX; i++) {
		if (copies[i].base == NULL) {
			copies[i] = (struct snapshot_copy){.base = base, .len = len, .fd = fd};
			atomic_fetch_add(&copies_live, 1);
			fd = -1;
		}
	}
	pthread_mutex_unlock(&copies_lock);
	if (fd >= 0)
		close(fd);
}

int node_snapshot_take(struct tally_ledger *l, const char *dir, struct raft_buffer *out)
{
	assert(l != NULL && dir != NULL && out != NULL);
	int fd = copy_open(dir);
	if (fd < 0)
		return RAFT_IOERR;
	struct stat st;
	int rv = RAFT_IOERR;
	/* No sync of the ledger first: raft restores its own copy of this snapshot at
	 * every start, so what the ledger's file holds on disk is never read again. */
	if (tally_ledger_snapshot(l, fd, NULL) == 0 &&
	    fstat(fd, &st) == 0 && st.st_size > 0) {
		void *base = MAP_FAILED;
		if ((uint64_t)st.st_size > NODE_SNAPSHOT_BYTES_MAX)
			rv = RAFT_TOOBIG;
		else
			base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
		if (base != MAP_FAILED) {
			out->base = base;
			out->len = (size_t)st.st_size;
			copy_register(base, out->len, fd);
			return 0;
		}
	}
	close(fd);
	return rv;
}

bool node_snapshot_free(struct raft_buffer *buf)
{
	assert(buf != NULL && buf->base != NULL && buf->len > 0);
	bool adopted = false;
	pthread_mutex_lock(&copies_lock);
	for (size_t i = 0; i < NODE_SNAPSHOT_COPIES_MAX; i++) {
		if (copies[i].base == buf->base) {
			assert(!copies[i].adopting); /* raft frees a snapshot once it is stored */
			adopted = copies[i].adopted;
			close(copies[i].fd);
			copies[i] = (struct snapshot_copy){.base = NULL};
			atomic_fetch_sub(&copies_live, 1);
		}
	}
	pthread_mutex_unlock(&copies_lock);
	munmap(buf->base, buf->len);
	buf->base = NULL;
	buf->len = 0;
	return adopted;
}

/*
 * Makes raft's file behind fd the copy. fd is raft's temporary file of a snapshot's
 * data, still empty; its name becomes the copy's (linked at a spare name beside it,
 * then renamed over it: a name with raft's temporary prefix, which raft removes at
 * start if a crash leaves it), and fd becomes a descriptor of the copy, opened again
 * by that name, so that raft's fsync of fd is of the copy and everything that follows
 * file descriptors (a fault injector's preload) sees the file raft goes on with. The
 * copy is synced first. false when any step fails before the rename: raft then writes
 * the bytes as before. After the rename, raft's name holds the copy's bytes, durable,
 * whatever happens next, and any bytes raft writes behind fd are the same ones.
 */
static bool copy_adopt(struct snapshot_copy c, int fd)
{
	struct stat cs, fs;
	if (fstat(c.fd, &cs) != 0 || fstat(fd, &fs) != 0 || !S_ISREG(fs.st_mode) ||
	    fs.st_size != 0 || fs.st_dev != cs.st_dev || (uint64_t)cs.st_size != c.len)
		return false;
	char proc[sizeof(SNAPSHOT_PROC_FD) + 3 * sizeof(int)];
	char path[NODE_PATH_BYTES_MAX], spare[NODE_PATH_BYTES_MAX + sizeof(SNAPSHOT_SPARE_SUFFIX)];
	snprintf(proc, sizeof(proc), SNAPSHOT_PROC_FD "%d", fd);
	ssize_t n = readlink(proc, path, sizeof(path) - 1);
	if (n <= 0 || (size_t)n >= sizeof(path) - 1)
		return false;
	path[n] = '\0';
	const char *name = strrchr(path, '/');
	if (name == NULL || strncmp(name + 1, SNAPSHOT_RAFT_TMP_PREFIX,
				    strlen(SNAPSHOT_RAFT_TMP_PREFIX)) != 0 ||
	    strstr(name, ".meta") != NULL)
		return false;
	/* Durable before raft's name holds it: should fd not become the copy below, raft
	 * syncs the file behind fd, not this one. fsync() is flush.c's, a step at a time. */
	if (fsync(c.fd) != 0)
		return false;
	snprintf(spare, sizeof(spare), "%s" SNAPSHOT_SPARE_SUFFIX, path);
	snprintf(proc, sizeof(proc), SNAPSHOT_PROC_FD "%d", c.fd);
	if (linkat(AT_FDCWD, proc, AT_FDCWD, spare, AT_SYMLINK_FOLLOW) != 0)
		return false; /* a named copy (no O_TMPFILE), another file system */
	if (rename(spare, path) != 0) {
		unlink(spare);
		return false;
	}
	int again = open(path, O_WRONLY | O_CLOEXEC);
	bool onto = again >= 0 && dup3(again, fd, O_CLOEXEC) == fd;
	if (again >= 0)
		close(again);
	return onto;
}

/* The pwrite64() this one stands in front of (libc's, or a preloaded injector's). */
static ssize_t next_pwrite64(int fd, const void *buf, size_t count, off_t offset)
{
	static ssize_t (*_Atomic next)(int, const void *, size_t, off_t);
	ssize_t (*f)(int, const void *, size_t, off_t) =
		atomic_load_explicit(&next, memory_order_relaxed);
	if (f == NULL) {
		f = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
		if (f == NULL)
			return syscall(SYS_pwrite64, fd, buf, count, offset);
		atomic_store_explicit(&next, f, memory_order_relaxed);
	}
	return f(fd, buf, count, offset);
}

/* Whether the write of count bytes at buf into fd was the store of a whole copy, which
 * is now raft's file. The lock is not held while copy_adopt syncs the copy (seconds,
 * for GBs): raft's loop writes its metadata with pwrite64 too. */
static bool copy_store(int fd, const void *buf, size_t count)
{
	struct snapshot_copy *c = NULL;
	pthread_mutex_lock(&copies_lock);
	for (size_t i = 0; i < NODE_SNAPSHOT_COPIES_MAX; i++)
		if (copies[i].base == buf && copies[i].len == count && !copies[i].adopted &&
		    !copies[i].adopting)
			c = &copies[i];
	if (c != NULL)
		c->adopting = true;
	struct snapshot_copy claimed = c != NULL ? *c : (struct snapshot_copy){.fd = -1};
	pthread_mutex_unlock(&copies_lock);
	if (c == NULL)
		return false;
	bool adopted = copy_adopt(claimed, fd);
	pthread_mutex_lock(&copies_lock);
	c->adopting = false;
	c->adopted = adopted;
	pthread_mutex_unlock(&copies_lock);
	return adopted;
}

/*
 * raft_uv stores a snapshot by writing its buffers into a new temporary file (libuv's
 * uv_fs_write: one pwrite64 per buffer), syncing it and renaming it. The buffer of a
 * snapshot this node took is the mapping of a copy that is already a file with those
 * bytes: a busy node spent about as much CPU writing them again as taking the copy.
 * This pwrite64 stands in front of libc's for the whole process (as read() below): a
 * write of a whole copy from its own mapping, at offset 0, adopts the copy as raft's
 * file (copy_adopt) and answers that it wrote every byte. Anything else is the plain
 * call.
 */
__attribute__((visibility("default"))) ssize_t pwrite64(int fd, const void *buf, size_t count,
							off_t offset)
{
	if (offset == 0 && count > 0 && atomic_load(&copies_live) > 0 &&
	    copy_store(fd, buf, count))
		return (ssize_t)count;
	return next_pwrite64(fd, buf, count, offset);
}

/* Whether the file at path is len bytes long and ends with `trailer`. */
static bool file_ends_with(const char *path, size_t len, const uint8_t *trailer)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	uint8_t t[TALLY_SNAPSHOT_TRAILER_BYTES];
	struct stat st;
	bool same = fstat(fd, &st) == 0 && (uint64_t)st.st_size == len &&
		    pread(fd, t, sizeof(t), (off_t)(len - sizeof(t))) == (ssize_t)sizeof(t) &&
		    memcmp(t, trailer, sizeof(t)) == 0;
	close(fd);
	return same;
}

void node_snapshot_find(const char *raft_dir, const void *snap, size_t len, char *path,
			size_t cap)
{
	assert(raft_dir != NULL && snap != NULL && path != NULL && cap > 0);
	path[0] = '\0';
	DIR *d = len > TALLY_SNAPSHOT_TRAILER_BYTES ? opendir(raft_dir) : NULL;
	if (d == NULL)
		return;
	const uint8_t *trailer = (const uint8_t *)snap + len - TALLY_SNAPSHOT_TRAILER_BYTES;
	for (struct dirent *e; path[0] == '\0' && (e = readdir(d)) != NULL;) {
		const char *name = e->d_name;
		if (strncmp(name, SNAPSHOT_RAFT_PREFIX, strlen(SNAPSHOT_RAFT_PREFIX)) != 0 ||
		    strstr(name, ".meta") != NULL)
			continue;
		int w = snprintf(path, cap, "%s/%s", raft_dir, name);
		if (w < 0 || (size_t)w >= cap || !file_ends_with(path, len, trailer))
			path[0] = '\0';
	}
	closedir(d);
}

int node_snapshot_verify(struct tally_ledger *l, char *file, char *msg, size_t cap)
{
	assert(l != NULL && file != NULL && msg != NULL && cap > 0);
	struct tally_ledger *copy = NULL;
	int rc = file[0] != '\0' ? tally_ledger_open_snapshot(file, &copy) : TALLY_ENOTFOUND;
	if (rc == 0) {
		rc = tally_ledger_check_invariants(copy, msg, cap);
		tally_ledger_close(copy);
	} else if (rc == TALLY_ENOTFOUND) {
		file[0] = '\0';
		rc = tally_ledger_check_invariants(l, msg, cap);
	} else {
		snprintf(msg, cap, "raft's snapshot file %s: %s", file, tally_strerror(rc));
	}
	int err = rc == 0 ? node_flush_ledger(l) : 0;
	if (err != 0) {
		rc = TALLY_EIO;
		snprintf(msg, cap, "sync: %s", strerror(err));
	}
	return rc;
}

/*
 * What read() answers raft 0.15 for a whole read of `count` bytes. Its UvFsReadInto
 * (the load of a snapshot file) keeps the result in an int, fails on -1 and on a value
 * below the count once the int is widened back: a count up to 4 GiB - 2 passes as it
 * is (the int is negative, widened past the count), but 4 GiB - 1 wraps to -1 and a
 * larger count to its remainder, both failures. For those the answer is 2 GiB, whose
 * int is INT_MIN: what raft takes for "all of it". Only raft reads that much at once.
 */
static ssize_t snapshot_read_answer(size_t count)
{
	if (count <= NODE_SNAPSHOT_INT_COUNT_MAX)
		return (ssize_t)count;
	ssize_t answer = (ssize_t)1 << 31;
	assert((int)answer < -1 && (size_t)(ssize_t)(int)answer >= count); /* as raft reads it */
	return answer;
}

/*
 * raft 0.15 loads a snapshot file with one read() of the whole file (at start, and
 * to send the snapshot to a follower), and Linux returns at most NODE_READ_ONCE_MAX
 * bytes from one read(): past 2 GiB raft failed with "short read". This read()
 * stands in front of libc's for the whole process, raft's calls included (the
 * dynamic linker looks in the executable first). A read of up to the kernel's
 * limit is the plain system call, as before; a longer one of a regular file goes on
 * from where the last stopped until it has the count, the end of the file or an
 * error, as POSIX lets read() do, and a whole one answers what raft's int count
 * takes for whole (snapshot_read_answer), so a snapshot past 4 GiB loads too.
 */
__attribute__((visibility("default"))) ssize_t read(int fd, void *buf, size_t count)
{
	if (count >= NODE_BIGBUF_MIN) { /* a whole snapshot file into raft's buffer: mapped */
		ssize_t mapped = node_bigbuf_read_file(fd, buf, count);
		if (mapped >= 0)
			return (size_t)mapped == count ? snapshot_read_answer(count) : mapped;
	}
	ssize_t got = syscall(SYS_read, fd, buf, count);
	struct stat st;
	if (count <= NODE_READ_ONCE_MAX || got <= 0 || (size_t)got == count ||
	    fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
		return got;
	size_t done = (size_t)got;
	int saved = errno;
	while (done < count) {
		ssize_t more = syscall(SYS_read, fd, (char *)buf + done, count - done);
		if (more <= 0)
			break; /* the end of the file, or an error after bytes read: the bytes */
		done += (size_t)more;
	}
	errno = saved;
	return done == count ? snapshot_read_answer(count) : (ssize_t)done;
}

void node_snapshot_io_init(struct raft_io *io)
{
	assert(io != NULL);
	/* Stored as they are: LZ4 (raft's default where it has it) would compress the
	 * whole snapshot into one more heap buffer while storing it, and decompress it
	 * into another next to the compressed copy whenever raft loads it (at start, to
	 * send it to a follower). The copy is sealed by its own check (ledger/check.c). */
	raft_uv_set_snapshot_compression(io, false);
}
