/*
 * rpc/server — the client-facing TCP server of a node, on the node's libuv loop.
 *
 * Each connection: handshake (Hello → Challenge → Proof → Welcome, see rpc/keys.h)
 * within handshake_timeout_ms, then any number of requests in flight, answered by
 * call id as they complete. The server fills the principal of every command from
 * the connection's key; a client cannot claim a role. A frame that is oversized or
 * does not decode is answered with INVALID_ARGUMENT naming the problem and the
 * connection is closed; nothing else is affected.
 *
 * Lifecycle: tally_server_init → (tally_server_set_keys on reload) → tally_server_close
 * (cb once every connection is closed) → tally_server_free.
 */
#ifndef TALLY_RPC_SERVER_H
#define TALLY_RPC_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "consensus/node.h"
#include "rpc/checkpoint.h"
#include "rpc/keys.h"

struct tally_server;

struct tally_tls_ctx;

struct tally_server_config {
	const char *listen_address;     /* "127.0.0.1:8001" */
	size_t frame_bytes_max;         /* 0 = 4 MiB */
	unsigned handshake_timeout_ms;  /* 0 = 5000 */
	unsigned idle_timeout_ms;       /* 0 = 600000 (10 min) */
	unsigned connections_max;       /* 0 = 1024 */
	unsigned connections_per_address_max; /* from one IP address; 0 = 256 */
	/* TLS 1.3 with this node's certificate (rpc/tls.h; not owned). NULL: plaintext,
	 * only with tallyd --insecure. With TLS a refused connection is closed unanswered
	 * and the key proof is bound to the TLS session (rpc/keys.h). */
	struct tally_tls_ctx *tls;
	/* The node's checkpoint key (rpc/checkpoint.h; not owned): GetCheckpoint answers
	 * are signed with it. NULL: GetCheckpoint is answered UNAVAILABLE. */
	EVP_PKEY *checkpoint_key;
};

/* Until a connection has proved a key it may send only frames of this size (a Hello,
 * Proof or Ping is far smaller): half-sent or oversized frames cost no memory before
 * login. After the Proof, frame_bytes_max applies. */
#define TALLY_SERVER_PREAUTH_FRAME_BYTES_MAX 1024

struct tally_server_stats {
	uint64_t connections_open;
	uint64_t connections_total;
	uint64_t connections_refused;   /* over connections_max or the per-address cap */
	uint64_t auth_failures;
	uint64_t tls_failures;          /* TLS handshakes or records that failed */
	uint64_t sessions_revoked;      /* ended by a keys reload (key removed or changed) */
	uint64_t reads_paused;          /* a connection at its cap of requests in the node */
	uint64_t bad_frames;
	uint64_t requests;
	uint64_t results[32];           /* command results by ResultCode */
	/* Command and batch requests: from their submission to the node to their answer,
	 * µs, in buckets of tally_node_commit_us_bounds (time in the node, not in the
	 * client's queue or the network). */
	uint64_t request_us_hist[TALLY_NODE_HIST_BOUNDS + 1];
	uint64_t request_us_sum;
};

/* Starts listening. `keys` is owned by the server from now on. */
int tally_server_init(struct tally_server **out, uv_loop_t *loop, struct tally_node *node,
		      struct tally_keys *keys, const struct tally_server_config *cfg,
		      char *err, size_t errcap);

/* Replaces the keys (owned by the server from now on) and ends every session whose
 * key was removed or changed (tallyd: SIGHUP). */
void tally_server_set_keys(struct tally_server *s, struct tally_keys *keys);

const struct tally_server_stats *tally_server_stats(const struct tally_server *s);

/* Stops accepting, closes every connection, then calls cb. */
void tally_server_close(struct tally_server *s, void (*cb)(void *data), void *data);
void tally_server_free(struct tally_server *s);

#endif
