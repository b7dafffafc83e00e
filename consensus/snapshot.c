/*
 * consensus/snapshot — the ledger as a raft snapshot (see snapshot.h).
 */
/* read() is defined below: a fortified build would make it an inline wrapper. */
#undef _FORTIFY_SOURCE
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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
#include "consensus/snapstore.h"

int node_snapshot_take(struct tally_ledger *l, const char *dir, struct raft_buffer *out,
		       bool *reused)
{
	assert(l != NULL && dir != NULL && out != NULL);
	char name[NODE_PATH_BYTES_MAX];
	int fd = node_snapstore_open(dir, name, sizeof(name));
	if (fd < 0)
		return RAFT_IOERR;
	if (reused != NULL)
		*reused = name[0] != '\0';
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
			node_snapstore_keep(base, out->len, fd, name);
			return 0;
		}
	}
	node_snapstore_drop(fd, name);
	return rv;
}

bool node_snapshot_free(struct raft_buffer *buf)
{
	assert(buf != NULL && buf->base != NULL && buf->len > 0);
	bool adopted = node_snapstore_release(buf->base);
	munmap(buf->base, buf->len);
	buf->base = NULL;
	buf->len = 0;
	return adopted;
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
		if (!node_snapstore_raft_data(name))
			continue;
		int w = snprintf(path, cap, "%s/%s", raft_dir, name);
		if (w < 0 || (size_t)w >= cap || !file_ends_with(path, len, trailer))
			path[0] = '\0';
	}
	closedir(d);
}

int node_snapshot_verify(struct tally_ledger *l, const char *links_dir, char *file, char *msg,
			 size_t cap)
{
	assert(l != NULL && file != NULL && msg != NULL && cap > 0);
	struct tally_ledger *copy = NULL;
	int rc = file[0] != '\0' ? tally_ledger_open_snapshot(file, links_dir, &copy)
				 : TALLY_ENOTFOUND;
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
