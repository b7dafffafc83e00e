/*
 * consensus/writeback — the ledger's file written back behind its growth.
 *
 * The ledger runs unsynced (MDB_NOSYNC: raft's log and snapshots are what is
 * durable), so the kernel writes its dirty pages back on its own: once the file has
 * been dirty for vm.dirty_expire_centisecs (30 s), each sweep writes all of its dirty
 * pages at once. Most of them are the data's growth (journal entries, idempotency
 * records: ~500 bytes a command), so ~30 s of growth reached the disk in one burst
 * (300 MB per node at 20,000 commands/s), and the raft log's small O_DSYNC commits,
 * on the same disk, waited behind it for hundreds of ms.
 *
 * The node now writes back the part of the file that lies more than
 * NODE_WRITEBACK_BEHIND_BYTES behind the data's end, as the data grows, on libuv's
 * thread pool, NODE_FLUSH_STEP_BYTES at a time (each step waited for, as flush.c
 * does, so a commit waits behind one step at most). Pages that far behind the end
 * are seldom stored to again (LMDB copies a page on write; a page is reused only
 * after it is freed), so the write-back does not make the apply fault on pages it
 * write-protected, which is what writing back the whole file did
 * (docs/performance.md, "Writing the ledger back from the node was tried and not
 * kept").
 *
 * The loop's tick decides (node_writeback_tick); one job runs at a time, with its own
 * descriptor of the file, so a ledger closed or replaced meanwhile is not touched
 * through a stale one. A job covers at most NODE_WRITEBACK_JOB_BYTES. Where the
 * ledger says nothing of its size (not writemap) nothing is written back.
 */
#include <assert.h>
#include <fcntl.h>
#include <string.h>
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
	if (status == 0 && w->job_error == 0)
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
	n->writeback.ledger = n->ledger;
	n->writeback.done_to = n->ledger != NULL ? tally_ledger_data_bytes(n->ledger) : 0;
}

void node_writeback_tick(struct tally_node *n)
{
	assert(n != NULL);
	struct node_writeback *w = &n->writeback;
	if (w->busy || n->ledger == NULL || n->loop == NULL)
		return;
	if (w->ledger != n->ledger)
		node_writeback_reset(n);
	uint64_t data = tally_ledger_data_bytes(n->ledger);
	if (data < NODE_WRITEBACK_BEHIND_BYTES)
		return;
	uint64_t to = (data - NODE_WRITEBACK_BEHIND_BYTES) / NODE_FLUSH_STEP_BYTES *
		      NODE_FLUSH_STEP_BYTES;
	if (to < w->done_to + NODE_FLUSH_STEP_BYTES)
		return;
	if (to - w->done_to > NODE_WRITEBACK_JOB_BYTES)
		to = w->done_to + NODE_WRITEBACK_JOB_BYTES;
	w->fd = tally_ledger_file_dup(n->ledger);
	if (w->fd < 0)
		return;
	w->job_from = w->done_to;
	w->job_to = to;
	w->done_to = to; /* a failed job is not tried again: the kernel's sweep has it */
	w->busy = true;  /* before the queue: the work may run at once */
	w->work.data = n;
	if (uv_queue_work(n->loop, &w->work, writeback_work_cb, writeback_after_cb) != 0) {
		close(w->fd);
		w->fd = -1;
		w->busy = false;
	}
}
