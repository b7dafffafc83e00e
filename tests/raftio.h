/*
 * A raft_uv on a loop of its own, as a node's raft runs it, for the tests of what
 * raft_uv does with the files and calls the node stands in front of (test_logfill,
 * test_aioreap, test_snapshot_files).
 *
 * raftio_init:  loop, TCP transport and raft_uv on dir; the caller may then set
 *               raft_uv up (segment size, the node's heap) before raftio_start.
 * raftio_start: raft_uv's init as node 1 at 127.0.0.1:9001.
 * raftio_load:  raft's load, as at start: its snapshot (NULL: none; the caller frees
 *               it) and *n_entries the entries it found (freed here).
 * raftio_append_one: an 8-byte entry of term 1 appended and stored.
 * raftio_wait:  runs the loop until a callback fires (done != 0).
 * raftio_close: raft_uv closed and released with its transport, the loop run out
 *               and closed.
 * A raftio is static in its test: should an assertion end the test with raft_uv's
 * work still on libuv's pool, that work finds its loop where it was.
 */
#ifndef TALLY_TESTS_RAFTIO_H
#define TALLY_TESTS_RAFTIO_H

#include <raft.h>
#include <raft/uv.h>
#include <stddef.h>
#include <uv.h>

struct raftio {
	uv_loop_t loop;
	struct raft_uv_transport transport;
	struct raft_io io;
	int done;                  /* callbacks fired */
	int status;                /* the last one's */
	struct raft_snapshot *got; /* what a snapshot_get gave */
};

void raftio_init(struct raftio *b, const char *dir);
void raftio_start(struct raftio *b);
struct raft_snapshot *raftio_load(struct raftio *b, size_t *n_entries);
void raftio_append_one(struct raftio *b);
void raftio_wait(struct raftio *b);
void raftio_close(struct raftio *b);

#endif
