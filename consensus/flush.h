/*
 * consensus/flush — large flushes reach the disk a step at a time, so that the raft
 * log's commits never wait behind more than one step.
 *
 * The raft log commits with small O_DSYNC writes. A flush of a large file hands the
 * disk all its dirty pages at once, and a commit then waits behind all of them: on
 * this project's VM, a 4 KiB O_DSYNC write waited 70-84 ms behind one fsync of
 * 100 MiB, and at most 4-6 ms when the same file was written back 1 MiB at a time
 * (tools/flush-probe). A node makes two such flushes, and both now go by steps of
 * NODE_FLUSH_STEP_BYTES, each waited for before the next:
 *
 *   - raft 0.15 stores a snapshot (its own, or one a leader installs) by writing the
 *     whole file, then one fsync. flush.c defines fsync() for the process (raft's
 *     calls included, as snapshot.c does read()): a regular file larger than a step is
 *     written back step by step first, then synced by the fsync() it stands in front
 *     of (libc's, or a fault injector's preloaded before libc: libfiu in the tests,
 *     jepsen's lostwrites.so), so that injected sync failures still reach raft.
 *   - the sync of a restored ledger (snapshot.c, node_snapshot_verify): the whole
 *     ledger, which was one msync.
 *
 * Linux reports a write-back error once per open file, to the first call that waits
 * for it, so a step that gets one is where it is reported: node_flush_stepwise
 * returns it and fsync() fails with it, as the plain system call would have.
 *
 * node_flush_stepwise: writes [0, size) of fd back with `range` (sync_file_range), a
 *                      step at a time, each waited for. Returns 0, or the errno of a
 *                      write-back error a step reported (where it stopped); a file
 *                      that cannot be stepped (a pipe: EINVAL) stops it with 0.
 * node_flush_steps:    the same for [from, to) of fd (writeback.c: the ledger behind
 *                      its growth).
 * node_flush_ledger:   the ledger's file written back step by step, then
 *                      fdatasync, then the journal's segments: 0 or an errno. Any
 *                      thread.
 * node_fd_path:        the path of the file behind fd (from /proc/self/fd) in path
 *                      (cap bytes): its last component, or NULL when it has no '/'
 *                      or does not fit. What the stand-ins decide by.
 */
#ifndef TALLY_CONSENSUS_FLUSH_H
#define TALLY_CONSENSUS_FLUSH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ledger/ledger.h"

#define NODE_FLUSH_STEP_BYTES (1u << 20) /* the most a flush queues at once */

typedef int (*node_flush_range_fn)(int fd, off_t offset, off_t len, unsigned flags);
int node_flush_stepwise(int fd, uint64_t size, node_flush_range_fn range);
int node_flush_steps(int fd, uint64_t from, uint64_t to, node_flush_range_fn range);
int node_flush_ledger(struct tally_ledger *l);
const char *node_fd_path(int fd, char *path, size_t cap);

#endif
