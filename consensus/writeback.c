/*
 * consensus/writeback — the ledger's file and its journal's segments written back
 * behind their growth.
 *
 * The ledger runs unsynced (MDB_NOSYNC, and the journal's segments never synced as
 * they are written: raft's log and snapshots are what is durable), so the kernel
 * writes their dirty pages back on its own: once a file has been dirty for
 * vm.dirty_expire_centisecs (30 s), each sweep writes all of its dirty pages at once.
 * Most of them are the data's growth (journal entries, idempotency records: ~500
 * bytes a command), so ~30 s of growth reached the disk in one burst (300 MB per node
 * at 20,000 commands/s), and the raft log's small O_DSYNC commits, on the same disk,
 * waited behind it for hundreds of ms.
 *
 * The node writes back, on libuv's thread pool, NODE_FLUSH_STEP_BYTES at a time (each
 * step waited for, as flush.c does, so a commit waits behind one step at most):
 *
 *   - the part of the ledger's file that lies more than NODE_WRITEBACK_BEHIND_BYTES
 *     behind the data's end and that the data grew past writeback_age_ms (15 s) ago or
 *     longer, as the data grows. A page written back is write-protected, and the next
 *     store to it faults and flushes the TLB of every core the process runs on. LMDB
 *     copies a page to change it and reuses the pages it freed, so the newest pages of
 *     the file are the likeliest to be stored to again soon: writing back the whole
 *     file cost more in those faults than it saved (docs/performance.md, "Writing the
 *     ledger back from the node was tried and not kept"), and so did a lag of 16 MiB
 *     alone once the data grew by ~10 MB/s (batches of 100: it was 1.6 s of growth).
 *     The age keeps the pages written back older than that, and still younger than
 *     the kernel's own sweep (vm.dirty_expire_centisecs, 30 s), whose burst this is
 *     for; the ticks note the data's end every writeback_age_ms / 8 to know it;
 *   - the journal's last segment up to its last whole step of committed records, and a
 *     segment that closed, to its end. Segments are written by pwritev, never through a
 *     writable map, and never again once written, so nothing need stay behind. (The
 *     first snapshot after a segment closes syncs it before linking it: ledger/jsnap.c.
 *     Written back already, that sync has little left to write.)
 *
 * The loop's tick decides (node_writeback_tick), the journal first; one job runs at a
 * time, with its own descriptor of the file, so a ledger closed or replaced
 * meanwhile is not touched through a stale one. A job covers at most
 * NODE_WRITEBACK_JOB_BYTES. Where the ledger says nothing of its size (not writemap)
 * the ledger's file is not written back; the journal's segments are.
 */
#include <assert.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "consensus/flush.h"
#include "consensus/internal.h"

static void writeback_work_cb(uv_work_t *work)
{
	struct tally_node *n = work->data;
	assert(n != NULL && n->writeback.busy && n->writeback.fd >= 0);
	struct node_writeback *w = &n->writeback;
	w->job_error = node_flush_steps(w->fd, w->job_from, w->job_to, sync_file_range);
}

static void writeback_after_cb(uv_work_t *work, int status)
{
	struct tally_node *n = work->data;
	assert(n != NULL && n->writeback.busy);
	struct node_writeback *w = &n->writeback;
	close(w->fd);
	w->fd = -1;
	w->busy = false;
	if (status == 0 && w->job_error == 0 && w->job_journal)
		n->stats.journal_writeback_bytes += w->job_to - w->job_from;
	else if (status == 0 && w->job_error == 0)
		n->stats.ledger_writeback_bytes += w->job_to - w->job_from;
	else if (status == 0 && !w->error_logged) {
		/* The kernel's own write-back still runs; the error is a disk's, and raft's
		 * log, on the same file system, reports it where it matters. */
		w->error_logged = true;
		node_log(n, "ledger write-back behind the data failed (%s); the kernel's own "
			    "write-back goes on", strerror(w->job_error));
	}
	if (n->phase == NODE_HANDLES && n->handles_open == 0)
		node_close_finish(n);
}

void node_writeback_reset(struct tally_node *n)
{
	assert(n != NULL);
	struct node_writeback *w = &n->writeback;
	w->ledger = n->ledger;
	w->done_to = n->ledger != NULL ? tally_ledger_data_bytes(n->ledger) : 0;
	w->marks_n = 0;
	w->seg_first = w->seg_done = 0;
	if (n->ledger != NULL)
		tally_ledger_journal_tail(n->ledger, &w->seg_first, &w->seg_done);
}

/* Queues a job writing [from, to) of fd back (fd is the job's from here on). */
static void job_queue(struct tally_node *n, int fd, uint64_t from, uint64_t to, bool journal)
{
	struct node_writeback *w = &n->writeback;
	assert(!w->busy && fd >= 0 && from < to);
	w->fd = fd;
	w->job_from = from;
	w->job_to = to;
	w->job_journal = journal;
	w->busy = true; /* before the queue: the work may run at once */
	w->work.data = n;
	if (uv_queue_work(n->loop, &w->work, writeback_work_cb, writeback_after_cb) != 0) {
		close(w->fd);
		w->fd = -1;
		w->busy = false;
	}
}

/* [from, to) rounded down to whole steps and cut to one job; whether it is worth one. */
static bool job_range(uint64_t from, uint64_t *to)
{
	*to = *to / NODE_FLUSH_STEP_BYTES * NODE_FLUSH_STEP_BYTES;
	if (*to < from + NODE_FLUSH_STEP_BYTES)
		return false;
	if (*to - from > NODE_WRITEBACK_JOB_BYTES)
		*to = from + NODE_WRITEBACK_JOB_BYTES;
	return true;
}

/* A job for the journal: the rest of a segment that closed, or the last one's whole
 * steps. Whether one was queued. */
static bool journal_tick(struct tally_node *n)
{
	struct node_writeback *w = &n->writeback;
	uint64_t first, len;
	tally_ledger_journal_tail(n->ledger, &first, &len);
	if (first == 0)
		return false;
	uint64_t from = w->seg_done, to = len;
	int fd = -1;
	if (w->seg_first != first) {
		/* The segment written back so far closed: the rest of it, to its end (a
		 * failed job is not tried again: the kernel's sweep has it). */
		fd = w->seg_first != 0 ? tally_ledger_journal_segment_open(n->ledger, w->seg_first)
				       : -1;
		struct stat st;
		to = fd >= 0 && fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
		w->seg_first = first;
		w->seg_done = 0;
		if (to > from) {
			job_queue(n, fd, from, to, true);
			return true;
		}
		if (fd >= 0)
			close(fd);
		return false;
	}
	if (!job_range(from, &to))
		return false;
	fd = tally_ledger_journal_segment_open(n->ledger, first);
	if (fd < 0)
		return false;
	w->seg_done = to;
	job_queue(n, fd, from, to, true);
	return true;
}

/* Notes the data's end at most every writeback_age_ms / NODE_WRITEBACK_MARKS, and
 * returns where it was writeback_age_ms ago or longer (0: no note is that old yet). */
static uint64_t aged_end(struct tally_node *n, uint64_t data)
{
	struct node_writeback *w = &n->writeback;
	uint64_t now = (uint64_t)tally_node_mono_ms(n), age = n->cfg.writeback_age_ms;
	unsigned cap = NODE_WRITEBACK_MARKS + 1;
	assert(w->marks_n <= cap);
	if (w->marks_n == 0 || now - w->marks[w->marks_n - 1].at_ms >= age / NODE_WRITEBACK_MARKS) {
		if (w->marks_n == cap) {
			memmove(&w->marks[0], &w->marks[1], (cap - 1) * sizeof(w->marks[0]));
			w->marks_n--;
		}
		w->marks[w->marks_n].at_ms = now;
		w->marks[w->marks_n].data_bytes = data;
		w->marks_n++;
	}
	uint64_t end = 0;
	for (unsigned i = 0; i < w->marks_n && now - w->marks[i].at_ms >= age; i++)
		end = w->marks[i].data_bytes;
	return end;
}

void node_writeback_tick(struct tally_node *n)
{
	assert(n != NULL);
	struct node_writeback *w = &n->writeback;
	if (w->busy || n->ledger == NULL || n->loop == NULL)
		return;
	if (w->ledger != n->ledger)
		node_writeback_reset(n);
	if (journal_tick(n))
		return;
	uint64_t data = tally_ledger_data_bytes(n->ledger), aged = aged_end(n, data);
	if (data < NODE_WRITEBACK_BEHIND_BYTES)
		return;
	uint64_t to = data - NODE_WRITEBACK_BEHIND_BYTES;
	if (to > aged)
		to = aged;
	if (!job_range(w->done_to, &to))
		return;
	int fd = tally_ledger_file_dup(n->ledger);
	if (fd < 0)
		return;
	uint64_t from = w->done_to;
	w->done_to = to; /* a failed job is not tried again: the kernel's sweep has it */
	job_queue(n, fd, from, to, false);
}
