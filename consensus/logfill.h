/*
 * consensus/logfill — raft's log segments are made written, not only allocated, so
 * that every write of the log stays on the kernel's asynchronous path.
 *
 * raft_uv makes each open segment of the log (open-N) ahead of use, on libuv's
 * thread pool: it creates the file and calls posix_fallocate for the segment's size.
 * It then writes the log into it with O_DIRECT | O_DSYNC through the kernel's AIO,
 * asking with RWF_NOWAIT that the submission not block, and hands any write the
 * kernel refuses (EAGAIN) to a thread of the pool. On ext4 a block that was allocated
 * but never written is an unwritten extent: the first write into it must change the
 * file's metadata, which RWF_NOWAIT refuses. So every write that reached a new block
 * took the slow way: a thread woken to write, blocking, then the loop woken by it
 * (28 % of a follower's log writes at 32 requests in flight, by strace).
 *
 * logfill.c defines posix_fallocate() for the process (as snapstore.c does pwrite64
 * and unlink): for a new, empty file named open-N in a directory registered here (a
 * node's raft directory), it writes the range with zeros instead, with O_DIRECT, a
 * NODE_FLUSH_STEP_BYTES step at a time (a commit waits behind one step at most), and
 * syncs it; the blocks are then allocated and written, and the log's writes into them
 * change no metadata. Anything else, or a file system that refuses O_DIRECT, is the
 * plain call. The cost: each segment is written twice, once as zeros off the commit's
 * path (8 MiB per segment by default).
 *
 * node_logfill_dir:   dir's segments are written when made (a node's raft directory,
 *                     before raft starts). At most NODE_LOGFILL_DIRS at a time: one
 *                     more takes the place of the one registered longest ago, whose
 *                     segments are then allocated as before.
 * node_logfill_count: segments of dir written so far by this process (0: none, or dir
 *                     not registered).
 */
#ifndef TALLY_CONSENSUS_LOGFILL_H
#define TALLY_CONSENSUS_LOGFILL_H

#include <stdint.h>

#define NODE_LOGFILL_DIRS 8 /* raft directories at once: a test process runs up to 5 nodes */

void node_logfill_dir(const char *dir);
uint64_t node_logfill_count(const char *dir);

#endif
