/*
 * consensus/fsm — raft's state machine callbacks (fsm version 3) driving the ledger.
 *
 * apply:    decode the Batch into the apply arena, stamp the raft index (raft 0.15
 *           does not pass it: it is raft_last_applied() + 1), apply it in one LMDB
 *           transaction (MDB_NOSYNC: the raft log is the durable copy, the applied
 *           index travels in the same transaction and replays are skipped), and, when
 *           this node proposed the entry and raft still tracks the request, hand each
 *           waiting caller its result. Nothing is allocated per apply: followers and
 *           replays produce results in the arena and drop them.
 * snapshot: main loop, only notes that a snapshot is being taken.
 * snapshot_async: thread pool; syncs LMDB (entries up to the snapshot index must be
 *           durable before raft may drop them from its log) and copies the ledger
 *           into one raft_malloc'd buffer. The copy may already contain entries past
 *           raft's snapshot index; they are skipped when raft replays them.
 * snapshot_finalize: main loop, frees the buffer.
 * restore:  main loop, replaces the ledger with the snapshot (verified by the ledger
 *           before it replaces anything) and takes ownership of the buffer.
 *
 * An entry that cannot be applied, or a snapshot that cannot be restored, ends the
 * node (node_fail_stop, with the status of the cause: failstop.c, node.h) inside the
 * callback, before raft moves on: the entry's callers get no answer from this node,
 * and nothing after it is applied here.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "consensus/internal.h"

/* A committed entry this node cannot apply: the node ends (raft 0.15 would stop
 * applying and keep it in the cluster). */
static void fsm_fail(struct tally_node *n, uint64_t index, const char *what, int rc)
	__attribute__((noreturn));

static void fsm_fail(struct tally_node *n, uint64_t index, const char *what, int rc)
{
	assert(n != NULL && rc != 0);
	node_fail_stop(n, node_exit_status(rc), "apply of raft entry %llu: %s: %s",
		       (unsigned long long)index, what, tally_strerror(rc));
}

static unsigned hist_slot(uint64_t v, const uint64_t *bounds, unsigned n_bounds)
{
	assert(bounds != NULL && n_bounds > 0);
	unsigned i = 0;
	while (i < n_bounds && v > bounds[i])
		i++;
	return i;
}

static void fsm_count(struct tally_node *n, const Tally__V1__Batch *b,
		      Tally__V1__CommandResult **results, uint64_t apply_us)
{
	static const uint64_t batch_bounds[] = {1, 8, 64, 512, 4096};
	static const uint64_t us_bounds[] = {100, 300, 1000, 3000, 10000, 30000, 100000};
	struct tally_node_stats *s = &n->stats;
	assert(b != NULL && results != NULL);
	s->commits++;
	s->commands += b->n_commands;
	s->batch_size_hist[hist_slot(b->n_commands, batch_bounds, 5)]++;
	s->apply_us_hist[hist_slot(apply_us, us_bounds, 7)]++;
	for (size_t i = 0; i < b->n_commands; i++) {
		unsigned code = results[i] != NULL ? (unsigned)results[i]->code : 0;
		if (code != TALLY__V1__RESULT_CODE__OK && code < 32)
			s->rejections[code]++;
	}
}

/* raft_fsm->apply. */
static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
	struct tally_node *n = fsm->data;
	assert(n != NULL && buf != NULL);
	assert(result != NULL);
	*result = NULL;
	uint64_t index = raft_last_applied(&n->raft) + 1;
	uint64_t t0_ns = uv_hrtime();
	tally_arena_reset(&n->apply_arena);
	Tally__V1__Batch *b = tally__v1__batch__unpack(tally_arena_protobuf(&n->apply_arena),
						       buf->len, buf->base);
	if (b == NULL)
		fsm_fail(n, index, "batch does not decode", TALLY_ECORRUPT);
	if (b->raft_index != 0)
		fsm_fail(n, index, "batch carries a raft index", TALLY_ECORRUPT);
	b->raft_index = index;
	Tally__V1__CommandResult **results = NULL;
	bool skipped = false;
	int rc = tally_ledger_apply_batch(n->ledger, b, &n->apply_arena, &results, &skipped);
	if (rc != 0)
		fsm_fail(n, index, "ledger", rc);
	if (!skipped)
		fsm_count(n, b, results, (uv_hrtime() - t0_ns) / 1000);
	struct node_batch *mine = node_inflight_find(n, index, b->raft_term);
	if (mine != NULL)
		node_batch_deliver(n, mine, skipped ? NULL : results, b->n_commands);
	return 0;
}

/* raft_fsm->snapshot (main loop): the work happens in snapshot_async. */
static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
	struct tally_node *n = fsm->data;
	assert(n != NULL && bufs != NULL && n_bufs != NULL);
	if (n->snapshot_busy)
		return RAFT_BUSY; /* raft retries at the next threshold crossing */
	*bufs = NULL;
	*n_bufs = 0;
	n->snapshot_busy = true;
	return 0;
}

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

/* raft_fsm->snapshot_async (thread pool). */
static int fsm_snapshot_async(struct raft_fsm *fsm, struct raft_buffer *bufs[],
			      unsigned *n_bufs)
{
	struct tally_node *n = fsm->data;
	assert(n != NULL && n->snapshot_busy);
	assert(bufs != NULL && n_bufs != NULL);
	*bufs = NULL;
	*n_bufs = 0;
	struct raft_buffer *one = raft_malloc(sizeof(*one));
	if (one == NULL)
		return RAFT_NOMEM;
	int fd = memfd_create("tally-snapshot", MFD_CLOEXEC);
	if (fd < 0) {
		raft_free(one);
		return RAFT_IOERR;
	}
	uint64_t index = 0;
	struct stat st;
	int rv = RAFT_IOERR;
	if (tally_ledger_sync(n->ledger) == 0 && tally_ledger_snapshot(n->ledger, fd, &index) == 0 &&
	    fstat(fd, &st) == 0) {
		rv = (uint64_t)st.st_size > NODE_SNAPSHOT_BYTES_MAX
			     ? RAFT_TOOBIG
			     : fsm_read_all(fd, (size_t)st.st_size, one);
	}
	close(fd);
	if (rv != 0) {
		raft_free(one);
		return rv;
	}
	*bufs = one;
	*n_bufs = 1;
	return 0;
}

/* raft_fsm->snapshot_finalize (main loop), after the snapshot was stored or failed. */
static int fsm_snapshot_finalize(struct raft_fsm *fsm, struct raft_buffer *bufs[],
				 unsigned *n_bufs)
{
	struct tally_node *n = fsm->data;
	assert(n != NULL && bufs != NULL && n_bufs != NULL);
	assert(*bufs != NULL || *n_bufs == 0);
	for (unsigned i = 0; i < *n_bufs; i++)
		raft_free((*bufs)[i].base);
	raft_free(*bufs);
	*bufs = NULL;
	*n_bufs = 0;
	n->snapshot_busy = false;
	return 0;
}

/* Writes buf to the memfd fd and rewinds it: 0 or an errno value. */
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
			return put < 0 ? errno : EIO;
		done += (size_t)put;
	}
	return lseek(fd, 0, SEEK_SET) == 0 ? 0 : errno;
}

/* The exit status for a memfd that cannot be made or filled: memfds live in memory. */
static int fsm_memfd_status(int e)
{
	return e == ENOMEM || e == ENOSPC ? TALLY_NODE_EXIT_NOMEM : TALLY_NODE_EXIT_IO;
}

/* A snapshot this node cannot restore: the node ends. */
static void fsm_restore_fail(struct tally_node *n, const char *what, int status, const char *why)
	__attribute__((noreturn));

static void fsm_restore_fail(struct tally_node *n, const char *what, int status, const char *why)
{
	assert(n != NULL && what != NULL && why != NULL);
	if (!n->started) /* raft_start restores the latest snapshot */
		node_fail_stop(n, status, "restore of the latest raft snapshot at start: %s: %s",
			       what, why);
	node_fail_stop(n, status, "restore of the leader's snapshot (applied index %llu "
		       "before it): %s: %s", (unsigned long long)raft_last_applied(&n->raft), what,
		       why);
}

/* raft_fsm->restore (main loop): on success the FSM owns buf->base. Any failure ends
 * the node: the ledger is closed by then, and raft has stored the snapshot in place of
 * its log (a follower) or holds nothing else to start from (at start). */
static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
	struct tally_node *n = fsm->data;
	assert(n != NULL && buf != NULL);
	assert(!n->snapshot_busy); /* raft never installs while it takes one */
	int fd = memfd_create("tally-restore", MFD_CLOEXEC);
	if (fd < 0)
		fsm_restore_fail(n, "memfd_create", fsm_memfd_status(errno), strerror(errno));
	int e = fsm_write_all(fd, buf);
	if (e != 0)
		fsm_restore_fail(n, "copying it to a memfd", fsm_memfd_status(e), strerror(e));
	tally_ledger_close(n->ledger);
	n->ledger = NULL;
	int rc = tally_ledger_restore(n->ledger_dir, fd, &n->ledger_opts, &n->ledger);
	close(fd);
	if (rc != 0)
		fsm_restore_fail(n, "ledger", node_exit_status(rc), tally_strerror(rc));
	node_log(n, "ledger restored from a raft snapshot: applied index %llu",
		 (unsigned long long)tally_ledger_applied_index(n->ledger));
	raft_free(buf->base);
	buf->base = NULL;
	return 0;
}

void node_fsm_init(struct tally_node *n)
{
	assert(n != NULL);
	memset(&n->fsm, 0, sizeof(n->fsm));
	n->fsm.version = 3;
	n->fsm.data = n;
	n->fsm.apply = fsm_apply;
	n->fsm.snapshot = fsm_snapshot;
	n->fsm.restore = fsm_restore;
	n->fsm.snapshot_finalize = fsm_snapshot_finalize;
	n->fsm.snapshot_async = fsm_snapshot_async;
}
