/*
 * consensus/snapshot — the ledger as a raft snapshot (see snapshot.h).
 */
#include <assert.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "consensus/internal.h"
#include "consensus/snapshot.h"

#define SNAPSHOT_FILE_TEMPLATE ".snapshot-XXXXXX" /* in the ledger directory, unlinked */

int node_snapshot_take(struct tally_ledger *l, const char *dir, struct raft_buffer *out)
{
	assert(l != NULL && dir != NULL && out != NULL);
	char path[NODE_PATH_BYTES_MAX + sizeof(SNAPSHOT_FILE_TEMPLATE) + 1];
	int n = snprintf(path, sizeof(path), "%s/" SNAPSHOT_FILE_TEMPLATE, dir);
	if (n < 0 || (size_t)n >= sizeof(path))
		return RAFT_IOERR;
	int fd = mkostemp(path, O_CLOEXEC);
	if (fd < 0)
		return RAFT_IOERR;
	unlink(path); /* nameless: its blocks go with the mapping, or with the process */
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
			rv = 0;
		}
	}
	close(fd);
	return rv;
}

void node_snapshot_free(struct raft_buffer *buf)
{
	assert(buf != NULL && buf->base != NULL && buf->len > 0);
	munmap(buf->base, buf->len);
	buf->base = NULL;
	buf->len = 0;
}

int node_snapshot_verify(struct tally_ledger *l, char *msg, size_t cap)
{
	assert(l != NULL && msg != NULL && cap > 0);
	int rc = tally_ledger_check_invariants(l, msg, cap);
	if (rc == 0 && (rc = tally_ledger_sync(l)) != 0)
		snprintf(msg, cap, "sync: %s", tally_strerror(rc));
	return rc;
}

void node_snapshot_io_init(struct raft_io *io)
{
	assert(io != NULL);
	/* Stored as they are: LZ4 (raft's default where it has it) would compress the
	 * whole snapshot into one more heap buffer while storing it, and decompress it
	 * into another next to the compressed copy whenever raft loads it (at start, to
	 * send it to a follower). The copy is sealed by its own SHA-256 (ledger/check.c). */
	raft_uv_set_snapshot_compression(io, false);
}
