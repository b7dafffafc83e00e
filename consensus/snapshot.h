/*
 * consensus/snapshot — the ledger as a raft snapshot, apart from raft's callbacks so
 * that tools/snapshot-bench measures exactly what a node does.
 *
 * node_snapshot_take:    (thread pool) syncs the ledger and puts a copy of it into
 *                        *out, a buffer raft can store and hand back; the copy may
 *                        already hold entries past raft's snapshot index.
 * node_snapshot_free:    releases a buffer from node_snapshot_take.
 * node_snapshot_restore: (main loop) replaces the ledger in `dir` by the snapshot in
 *                        buf (raft's buffer: the caller still owns it) and opens it.
 *                        *check_pending says whether the full invariant check is still
 *                        to be run (node_snapshot_check) before the copy is trusted.
 * node_snapshot_io_init: how raft_uv stores the snapshots (after raft_uv_init).
 */
#ifndef TALLY_CONSENSUS_SNAPSHOT_H
#define TALLY_CONSENSUS_SNAPSHOT_H

#include <raft.h>
#include <stdbool.h>

#include "ledger/ledger.h"

int node_snapshot_take(struct tally_ledger *l, const char *dir, struct raft_buffer *out);
void node_snapshot_free(struct raft_buffer *buf);
int node_snapshot_restore(const char *dir, const struct raft_buffer *buf,
			  const struct tally_ledger_options *opts, struct tally_ledger **out,
			  bool *check_pending);
void node_snapshot_io_init(struct raft_io *io);

#endif
