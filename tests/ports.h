/*
 * tests/ports — blocks of loopback TCP ports for the clusters tests start.
 *
 * A test cluster's nodes must be told every address before they start (the raft
 * bootstrap configuration lists them all), so the kernel cannot pick the ports for
 * them. Ports chosen at random, or from the PID, collide sooner or later: with a
 * local cluster someone left running, with another test program started at the same
 * time (`make check` and `make SANITIZE=1 check` side by side, two checkouts), or
 * with an outgoing connection when the port lies in the ephemeral range.
 *
 * So a block is taken, not guessed:
 *   - blocks are PORTS_BLOCK_SIZE consecutive ports starting at PORTS_FIRST, all below
 *     the kernel's ephemeral range (net.ipv4.ip_local_port_range), so no outgoing
 *     connection is ever given one of them;
 *   - a block belongs to one process at a time: an exclusive flock(2) on a lock file
 *     named after the block, in a directory of the user's, held until released (the
 *     kernel drops it when the process dies, so a crashed test leaves nothing behind);
 *   - every port the caller will listen on is probed by binding it the way libuv does
 *     (SO_REUSEADDR), so a port some other program listens on makes the block be
 *     skipped rather than a node fail to start.
 */
#ifndef TALLY_TESTS_PORTS_H
#define TALLY_TESTS_PORTS_H

#include <stddef.h>

#define PORTS_FIRST 10000      /* lowest port of the first block */
#define PORTS_BLOCK_SIZE 300   /* ports per block: raft P+i, client P+100+i, HTTP P+200+i */

struct ports_block {
	int base;      /* first port of the block, 0 when none is held */
	int lock_fd;   /* the block's lock file, held open; -1 when none */
};

/* Takes a free block: locks it and checks that base + offsets[i] binds for every i
 * (each offset below PORTS_BLOCK_SIZE). Fails the test (cmocka) when no block is
 * free, naming why. */
void ports_acquire(struct ports_block *b, const int *offsets, size_t n_offsets);

/* Releases a block taken by ports_acquire (nothing when none is held). */
void ports_release(struct ports_block *b);

#endif /* TALLY_TESTS_PORTS_H */
