/*
 * rpc/peerclock — asks every peer for its wall clock, so that the node can take ledger
 * time from what a majority of the voters' clocks agree on (consensus/clock.h).
 *
 * Every PEERCLOCK_INTERVAL_MS a timer reads the configuration (tally_node_peers) and,
 * for each other server, keeps one connection to its client port on which a Ping
 * goes out whenever none is outstanding. The Pong's wall clock, with the monotonic
 * times at which the Ping left and the Pong arrived, is handed to the node as a sample
 * (tally_node_clock_sample). A connection that fails, closes (servers end connections
 * that never authenticate after their handshake timeout), or leaves a Ping unanswered
 * for PEERCLOCK_ANSWER_MS is closed and opened again at a later tick. A Pong from a
 * node other than the one configured at that address is ignored. With TLS (tls, this
 * node's context) the peer must present the node certificate of the id configured. Nothing here can
 * change the ledger: a peer that lies about its clock is one voice among the voters.
 *
 * Lifecycle: tally_peerclock_init → tally_peerclock_close (cb once every handle is
 * closed) → tally_peerclock_free. Runs on the node's loop.
 */
#ifndef TALLY_RPC_PEERCLOCK_H
#define TALLY_RPC_PEERCLOCK_H

#include <uv.h>

#include "consensus/node.h"

#define PEERCLOCK_INTERVAL_MS 500      /* one Ping per peer at most this often */
#define PEERCLOCK_ANSWER_MS 2000       /* a Ping unanswered this long closes the connection */
#define PEERCLOCK_FRAME_BYTES_MAX 4096 /* a Pong (or a server's goodbye) is far smaller */

struct tally_peerclock;

/* Starts probing the peers of `node` on `loop`. Returns 0 or TALLY_ENOMEM. */
int tally_peerclock_init(struct tally_peerclock **out, uv_loop_t *loop, struct tally_node *node,
			 struct tally_tls_ctx *tls);

/* Closes every connection and the timer, then calls cb. */
void tally_peerclock_close(struct tally_peerclock *p, void (*cb)(void *data), void *data);

/* Frees a closed prober (NULL is fine). */
void tally_peerclock_free(struct tally_peerclock *p);

#endif /* TALLY_RPC_PEERCLOCK_H */
