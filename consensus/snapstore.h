/*
 * consensus/snapstore — the files of the snapshot copies a node takes, as raft_uv
 * stores and removes them.
 *
 * raft 0.15 stores a snapshot by writing its buffers into a new temporary file
 * (`tmp-snapshot-…`, one pwrite64 through libuv), syncing it and renaming it; it
 * removes all but its last two snapshots with unlink. A node's buffer is already the
 * mapping of a file holding those bytes (node_snapshot_take), so two things are done
 * from outside raft, by functions that stand in front of libc's for the whole process
 * (as snapshot.c's read() and flush.c's fsync()):
 *
 *   pwrite64: a write of a whole copy, from its own mapping, at offset 0, into raft's
 *             temporary file of a snapshot's data adopts the copy as that file instead
 *             of writing it again (snapstore.c says how); it answers that it wrote
 *             every byte. Anything else is the plain call.
 *   unlink:   raft's removal of one of its snapshot files, in a directory copies were
 *             made in, keeps the file as that directory's spare (SNAPSTORE_SPARE,
 *             replacing the one before) when nothing else has it open, and the next
 *             copy is written over it: its pages are in the page cache already, and
 *             fresh page cache costs ~20 µs a page on this project's VMs
 *             (docs/performance.md, "What memory costs here"). A file something
 *             still reads (a snapshot being sent, or checked) is removed as before.
 *
 * Both spare and copy names carry raft's temporary prefix, which raft removes at start.
 *
 * node_snapstore_open:    a file for a new copy in dir (raft's directory), at offset 0:
 *                         the spare, renamed to a name of its own (written in `name`),
 *                         or a file without a name (O_TMPFILE; `name` empty). -1 with
 *                         errno on failure.
 * node_snapstore_keep:    the copy, now mapped at base (len bytes), may be adopted
 *                         until released; takes fd (closed when no slot is free).
 * node_snapstore_drop:    a copy that was not made (fd and name from open): gone.
 * node_snapstore_release: the copy mapped at base is no longer raft's to store:
 *                         whether raft's snapshot file is now the copy. Its name, if
 *                         it was not adopted, is removed.
 * node_snapstore_raft_data: whether a file name (no directory) is raft_uv's file of a
 *                         snapshot's data: snapshot-TERM-INDEX-TIME, not its .meta.
 */
#ifndef TALLY_CONSENSUS_SNAPSTORE_H
#define TALLY_CONSENSUS_SNAPSTORE_H

#include <stdbool.h>
#include <stddef.h>

/* Copies taken and not yet released that raft can adopt (one per node at a time; more,
 * as in a bench, are stored by writing), and directories with a spare. */
#define NODE_SNAPSTORE_SLOTS 4
#define SNAPSTORE_SPARE "tmp-tally-spare" /* a removed snapshot, kept for the next copy */
#define SNAPSTORE_COPY "tmp-tally-copy-" /* + a number: the spare while a copy is written over it */

int node_snapstore_open(const char *dir, char *name, size_t cap);
bool node_snapstore_raft_data(const char *name);
void node_snapstore_keep(const void *base, size_t len, int fd, const char *name);
void node_snapstore_drop(int fd, const char *name);
bool node_snapstore_release(const void *base);

#endif
