/*
 * consensus/transport — raft's libuv TCP transport with TCP_NODELAY and Tally addresses.
 *
 * canonical raft 0.15's raft_uv_tcp never disables Nagle's algorithm, so an entry of a
 * few KB waits for the peer's delayed ACK (measured 4-6x slower). This wrapper hands
 * raft the streams of an inner raft_uv_tcp transport after calling uv_tcp_nodelay on
 * each, outgoing and accepted alike.
 *
 * A Tally server address is "RAFT_HOST:RAFT_PORT|CLIENT_HOST:CLIENT_PORT". The raft
 * configuration stores the whole string, so every node can tell clients where the
 * leader's client port is; the wrapper listens on and connects to the part before '|'.
 * The full address travels in raft's connection handshake, so a follower learns the
 * leader's full address too.
 *
 * With a TLS context (the default in tallyd) the wrapper does not use raft_uv_tcp at
 * all: consensus/tlsnet.c listens and connects itself, over mutually authenticated
 * TLS 1.3, and carries raft's messages itself (raft_io->send is tally_tlsnet_send;
 * what arrives goes to raft's receive callback) only once the peer proved the id it
 * claims. Without one (tallyd --insecure) it wraps raft_uv_tcp as described above.
 *
 * Lifecycle: tally_transport_init → (raft_uv_init with &t->outer, raft runs it)
 * → raft_close (closes it) → tally_transport_free.
 */
#ifndef TALLY_CONSENSUS_TRANSPORT_H
#define TALLY_CONSENSUS_TRANSPORT_H

#include <stddef.h>
#include <raft.h>
#include <raft/uv.h>

struct tally_tls_ctx;
struct tlsnet_conn;
struct tlsnet_peer;
struct tlsnet_send;

#define TALLY_ADDRESS_BYTES_MAX 255 /* a whole "raft|client" address */

struct tally_transport {
	struct raft_uv_transport outer;          /* what raft_uv_init is given */
	struct raft_uv_transport inner;          /* raft_uv_tcp doing the work */
	raft_uv_accept_cb accept_cb;             /* raft's, set by listen */
	raft_uv_transport_close_cb close_cb;     /* raft's, set by close */
	unsigned connects_pending;               /* wrapped connect requests alive */
	char raft_address[TALLY_ADDRESS_BYTES_MAX + 1]; /* our "host:port" to listen on */
	/* TLS (consensus/tlsnet.c); tls == NULL: plaintext through `inner`. */
	struct tally_tls_ctx *tls;               /* not owned */
	uv_loop_t *loop;
	uv_tcp_t listener;
	bool listener_open;
	struct tlsnet_conn *conns;               /* connections not yet closed */
	raft_id id;                              /* ours */
	char address[TALLY_ADDRESS_BYTES_MAX + 1]; /* ours, whole: sent in the preamble */
	void (*log)(void *data, const char *line); /* refused peers; NULL = stderr */
	void *log_data;
	/* Over TLS raft's messages bypass raft_uv's streams (tlsnet.c). */
	struct tlsnet_peer *peers;               /* where messages go, one per server */
	struct tlsnet_send *done_head, *done_tail; /* raft's send callbacks due */
	uv_idle_t turn_idle;                     /* runs them on the next loop turn, and
						  * goes on with sending that gave way */
	bool turn_idle_open, turn_idle_closing;
	uv_timer_t closer;                       /* closed last: see tlsnet_maybe_closed */
	bool closer_open;
	struct raft_io *recv_io;                 /* messages received go to recv(recv_io, m) */
	raft_io_recv_cb recv;
	uint64_t snapshot_bytes_spooled;         /* received snapshots kept as mappings */
	uint64_t snapshot_appendix_bytes;        /* closed segments' bytes sent after
						  * InstallSnapshots (the appendix) */
	const char *spool_dir;                   /* a received snapshot's bytes go to an
						  * unlinked file here (consensus/bigbuf.h);
						  * NULL: the heap */
	const char *links_dir;                   /* the closed segments snapshots name: an
						  * InstallSnapshot carries them after the
						  * snapshot (ledger.h, the appendix); NULL:
						  * snapshots carry their own */
	uint64_t resend_hold_ms;                 /* a large AppendEntries is not sent again
						  * for this long unless answered (tlsnet.c;
						  * tally_tlsnet_setup sets
						  * TLSNET_RESEND_HOLD_MS) */
	/* Have-lists (tlsnet.c): the links this node holds, told to every node it
	 * connects to; what a connecting node holds is on its connection. */
	struct tally_segment_held *held;         /* this node's, by first seq */
	size_t n_held;
	bool held_read;
	uint64_t snapshot_segments_held;         /* segments left out of InstallSnapshots
						  * sent: the receiver holds them */
	uint64_t snapshot_segment_bytes_held;
	uint64_t send_turns_yielded;             /* a peer's sending stopped for the loop
						  * turn at TLSNET_TURN_BYTES */
	uint64_t resends_skipped;                /* large AppendEntries raft sent again before
						  * the peer answered, not sent (tlsnet.c) */
	uint64_t resend_bytes_skipped;           /* their entries' bytes */
	uint64_t connect_failures;               /* attempts to connect to a peer that failed */
	uint64_t bytes_sealed;                   /* plaintext put into TLS sessions: messages,
						  * Haves, preambles */
	uint64_t appends_superseded;             /* queued AppendEntries dropped unsent: a
						  * later one carries them (tlsnet.c) */
	uint64_t append_bytes_superseded;        /* their entries' bytes */
	uint64_t snapshots_declined;             /* InstallSnapshots received that left out
						  * a segment this node no longer holds */
	void (*declined)(void *data, raft_id id); /* node `id` declined one of ours: raft
						  * should send it again, now */
	void *declined_data;
};

/* Prepares the wrapper on `loop`: over TLS with `tls` (kept, not owned), else with an
 * inner raft_uv_tcp transport. Returns 0 or a RAFT_* code. After success, set t->log
 * if wanted and pass &t->outer to raft_uv_init. */
int tally_transport_init(struct tally_transport *t, uv_loop_t *loop, struct tally_tls_ctx *tls);

/* consensus/tlsnet.c: points t->outer at the TLS transport (t->tls set). */
void tally_tlsnet_setup(struct tally_transport *t);

/* raft_io->send over TLS (t->tls set): m goes to its server straight through the TLS
 * session, not through raft_uv's stream. Returns 0 (cb follows, from a later loop
 * turn) or RAFT_NOMEM / RAFT_NAMETOOLONG. */
int tally_tlsnet_send(struct tally_transport *t, struct raft_io_send *req, const struct raft_message *m,
		      raft_io_send_cb cb);

/* Reads again which links this node holds (after a snapshot linked segments) and,
 * where that changed, tells every node it is connected to. */
void tally_tlsnet_held_changed(struct tally_transport *t);

/* Where messages received over TLS go: recv(io, m), as raft_uv would call raft's
 * receive callback. Set before raft_io->start listens. */
void tally_tlsnet_receive_to(struct tally_transport *t, struct raft_io *io, raft_io_recv_cb recv);

/* Releases the inner transport's memory; only after raft closed the transport (or
 * when raft never initialised it). */
void tally_transport_free(struct tally_transport *t);

/* Copies the raft part of `address` (before '|', or all of it) into buf. Returns 0, or
 * RAFT_NAMETOOLONG when it does not fit in cap bytes with its NUL. */
int tally_address_raft(const char *address, char *buf, size_t cap);

/* Copies the client part of `address` (after '|', "" when there is none) into buf.
 * Returns 0, or RAFT_NAMETOOLONG when it does not fit. */
int tally_address_client(const char *address, char *buf, size_t cap);

/* Parses a numeric "HOST:PORT" (IPv4 "1.2.3.4:80" or IPv6 "::1:80", port 1..65535)
 * into *out: the one parser of listen and peer addresses (clients resolve names with
 * getaddrinfo instead). Returns 0 or UV_EINVAL. */
int tally_address_sockaddr(const char *host_port, struct sockaddr_storage *out);

#endif /* TALLY_CONSENSUS_TRANSPORT_H */
