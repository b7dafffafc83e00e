/*
 * consensus/snapshot — the ledger as a raft snapshot, apart from raft's callbacks so
 * that tools/snapshot-bench measures exactly what a node does.
 *
 * canonical raft 0.15 wants a snapshot as buffers in memory: raft_uv writes them to
 * its snapshot file (snapshot_put) and hands them back to snapshot_finalize. The
 * buffer node_snapshot_take makes is a read-only shared mapping of a file in raft's
 * directory (snapstore.h: written over a snapshot raft removed, or new and without a
 * name): its pages are page cache the kernel can write back and drop, not anonymous
 * memory, so a snapshot of any size costs the node no heap. raft_uv's write of that
 * buffer into its snapshot file does not copy it: the copy itself becomes raft's file
 * (snapstore.h), so each snapshot is written once. A copy raft did not adopt leaves
 * nothing on disk once it is unmapped or the process ends. Restores get raft's own
 * buffer (raft_malloc'd, read from its file or received in an InstallSnapshot):
 * tally_ledger_restore writes it straight to the staging file, checks its seal and
 * opens it; the full check runs later, off the loop (node_snapshot_verify).
 *
 * node_snapshot_take:    (thread pool) maps a sealed copy of the ledger, made in
 *                        `dir` (raft's directory: raft adopts a copy only on its
 *                        own file system), into *out; the copy may already hold entries
 *                        past raft's snapshot index (raft's replay skips them).
 *                        *reused (may be NULL): whether it was written over a
 *                        snapshot file raft had removed (snapstore.h).
 * node_snapshot_free:    (snapshot_finalize) unmaps a buffer from node_snapshot_take;
 *                        true when raft stored it by adopting the copy.
 * node_snapshot_find:    (restore, before raft's buffer is freed) the file in raft's
 *                        directory that holds the snapshot being restored: raft 0.15
 *                        stores an uncompressed snapshot's bytes as they are. It is
 *                        the one of that length that ends with the same trailer.
 * node_snapshot_verify:  (thread pool) the full invariant check a restore left
 *                        pending, then a sync of the restored ledger, a step at a
 *                        time (flush.h). It checks raft's file
 *                        (tally_ledger_open_snapshot) rather than the live ledger:
 *                        a read transaction of the live ledger held for the whole scan
 *                        would keep LMDB from reusing any page the entries applied
 *                        meanwhile free, and the file would grow by all they write
 *                        (4 GB in 14 s of catching up at 1M members). With no file
 *                        (raft's gone, or none found) it checks the live ledger and
 *                        empties `file`.
 * node_snapshot_io_init: how raft_uv stores snapshots (after raft_uv_init).
 *
 * snapshot.c also defines read() for the process, so that raft 0.15 can load a
 * snapshot file over Linux's 2 GiB limit on one read(), and past the 4 GiB its int
 * count holds (NODE_SNAPSHOT_INT_COUNT_MAX).
 */
#ifndef TALLY_CONSENSUS_SNAPSHOT_H
#define TALLY_CONSENSUS_SNAPSHOT_H

#include <raft.h>
#include <stdbool.h>
#include <stddef.h>

#include "ledger/ledger.h"

int node_snapshot_take(struct tally_ledger *l, const char *dir, struct raft_buffer *out,
		       bool *reused);
bool node_snapshot_free(struct raft_buffer *buf);
void node_snapshot_find(const char *raft_dir, const void *snap, size_t len, char *path,
			size_t cap);
int node_snapshot_verify(struct tally_ledger *l, const char *links_dir, char *file, char *msg,
			 size_t cap);
void node_snapshot_io_init(struct raft_io *io);

#endif
