/*
 * consensus/bigbuf — raft's whole-snapshot buffers as mappings of files, not heap
 * (bigbuf.c says how and why). tally_node_snapshot_mappings (node.h) turns it on for
 * the process.
 */
#ifndef TALLY_CONSENSUS_BIGBUF_H
#define TALLY_CONSENSUS_BIGBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* raft's allocations of at least this many bytes are mappings of their own, and a
 * snapshot file read whole into one is mapped there instead. */
#define NODE_BIGBUF_MIN ((size_t)64 << 20)
#define NODE_BIGBUF_MAX 64 /* such buffers alive at once; past it, malloc as before */

/* Whether raft's heap is this file's (tally_node_snapshot_mappings was called). */
bool node_bigbuf_on(void);

/* read() of a whole snapshot file into a big buffer of raft's heap maps the file
 * there. Returns count, or -1 (errno kept) when it does not apply: read() then reads
 * as usual. */
ssize_t node_bigbuf_read_file(int fd, void *buf, size_t count);

/* A private mapping of the first len bytes of fd as a buffer of raft's heap (raft_free
 * unmaps it); NULL when it cannot be made or the table is full. Only with
 * node_bigbuf_on(). */
void *node_bigbuf_map_file(int fd, size_t len);

#endif
