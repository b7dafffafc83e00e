/*
 * consensus/snapshot — the ledger as a raft snapshot (see snapshot.h).
 */
#include <assert.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "consensus/internal.h"
#include "consensus/snapshot.h"

/* Reads the whole of fd (size_bytes long) into a raft_malloc'd buffer. */
static int fsm_read_all(int fd, size_t size_bytes, struct raft_buffer *out)
{
	assert(fd >= 0 && out != NULL);
	uint8_t *base = raft_malloc(size_bytes > 0 ? size_bytes : 1);
	if (base == NULL)
		return RAFT_NOMEM;
	size_t done = 0;
	while (done < size_bytes) {
		ssize_t got = pread(fd, base + done, size_bytes - done, (off_t)done);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			raft_free(base);
			return RAFT_IOERR;
		}
		done += (size_t)got;
	}
	out->base = base;
	out->len = size_bytes;
	return 0;
}

int node_snapshot_take(struct tally_ledger *l, const char *dir, struct raft_buffer *out)
{
	assert(l != NULL && dir != NULL && out != NULL);
	int fd = memfd_create("tally-snapshot", MFD_CLOEXEC);
	if (fd < 0)
		return RAFT_IOERR;
	uint64_t index = 0;
	struct stat st;
	int rv = RAFT_IOERR;
	if (tally_ledger_sync(l) == 0 && tally_ledger_snapshot(l, fd, &index) == 0 &&
	    fstat(fd, &st) == 0) {
		rv = (uint64_t)st.st_size > NODE_SNAPSHOT_BYTES_MAX
			     ? RAFT_TOOBIG
			     : fsm_read_all(fd, (size_t)st.st_size, out);
	}
	close(fd);
	return rv;
}

void node_snapshot_free(struct raft_buffer *buf)
{
	assert(buf != NULL);
	raft_free(buf->base);
	buf->base = NULL;
	buf->len = 0;
}

static int fsm_write_all(int fd, const struct raft_buffer *buf)
{
	assert(fd >= 0 && buf != NULL);
	const uint8_t *p = buf->base;
	size_t done = 0;
	while (done < buf->len) {
		ssize_t put = write(fd, p + done, buf->len - done);
		if (put < 0 && errno == EINTR)
			continue;
		if (put <= 0)
			return RAFT_IOERR;
		done += (size_t)put;
	}
	return lseek(fd, 0, SEEK_SET) == 0 ? 0 : RAFT_IOERR;
}

int node_snapshot_restore(const char *dir, const struct raft_buffer *buf,
			  const struct tally_ledger_options *opts, struct tally_ledger **out,
			  bool *check_pending)
{
	assert(dir != NULL && buf != NULL && opts != NULL);
	assert(out != NULL && check_pending != NULL);
	*check_pending = false;
	int fd = memfd_create("tally-restore", MFD_CLOEXEC);
	if (fd < 0)
		return TALLY_EIO;
	int rc = fsm_write_all(fd, buf) == 0 ? tally_ledger_restore(dir, fd, opts, out) : TALLY_EIO;
	close(fd);
	return rc;
}

void node_snapshot_io_init(struct raft_io *io)
{
	assert(io != NULL);
	raft_uv_set_snapshot_compression(io, true); /* raft's default where it has LZ4 */
}
