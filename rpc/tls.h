/*
 * rpc/tls — TLS 1.3 for Tally's ports: the cluster's certificates and one session
 * engine that every transport drives.
 *
 * Trust: a cluster has its own certificate authority (tools/tally-certs makes it).
 * Every node holds a certificate of that CA whose subject common name is
 * "tally-node-<id>" — the raft id is bound to the key. On the raft port both ends
 * present their node certificate and each checks that the other's id is the one it
 * claims (consensus/tlsnet.c). On the client port the node presents the same
 * certificate and the client checks it against the CA (any node of the cluster, so a
 * redirect can lead only to a member); clients prove a key, not a certificate.
 *
 * The engine knows nothing of sockets: the transport feeds it the bytes it received
 * (tally_tls_feed), takes the bytes it must send (tally_tls_take), and reads and writes
 * plaintext. libuv transports and the blocking client share it.
 */
#ifndef TALLY_RPC_TLS_H
#define TALLY_RPC_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TALLY_TLS_CN_PREFIX "tally-node-" /* a node certificate's CN: prefix + id */
#define TALLY_TLS_ALPN_RAFT "tally-raft/3" /* offered by a connecting node (12 bytes): the
					    * raft port takes this transport's own messages
					    * (consensus/raftwire.h); a node that does not
					    * agree on it is of an earlier version */
#define TALLY_TLS_EXPORTER_BYTES 32       /* tally_tls_exporter's output */
#define TALLY_TLS_ERROR_BYTES 160         /* a session's or context's error text */

struct tally_tls_ctx; /* certificates and settings, shared by sessions */
struct tally_tls;     /* one TLS session */

/* What a session is for. */
enum tally_tls_mode {
	TALLY_TLS_PEER_ACCEPT,   /* raft port, accepted: requires the peer's node certificate */
	TALLY_TLS_PEER_CONNECT,  /* raft port, outgoing: presents ours, verifies theirs */
	TALLY_TLS_CLIENT_ACCEPT, /* client port, accepted: presents ours, asks none */
	TALLY_TLS_CLIENT_CONNECT /* a client: verifies the node against the CA */
};

/* The outcome of tally_tls_handshake and tally_tls_read. */
enum tally_tls_status {
	TALLY_TLS_DONE = 0,   /* handshake complete / bytes read */
	TALLY_TLS_AGAIN = 1,  /* needs more bytes from the peer */
	TALLY_TLS_CLOSED = 2, /* the peer closed the session cleanly */
	TALLY_TLS_FAILED = 3  /* a protocol, certificate or identity error: see tally_tls_error */
};

/* A node's context: the CA that signs every node, this node's certificate and key.
 * Checks that the certificate is the CA's, that the key matches and, when id > 0, that
 * the certificate names node `id`. Returns 0, or -1 with the reason in err. */
int tally_tls_ctx_node(struct tally_tls_ctx **out, const char *ca_file, const char *cert_file,
		       const char *key_file, uint64_t id, char *err, size_t errcap);

/* A client's context: the CA only. Returns 0, or -1 with the reason in err. */
int tally_tls_ctx_client(struct tally_tls_ctx **out, const char *ca_file, char *err,
			 size_t errcap);

void tally_tls_ctx_free(struct tally_tls_ctx *ctx);

/* A new session (NULL when out of memory). A CLIENT_CONNECT session has something to
 * send at once: call tally_tls_handshake, then tally_tls_take. */
struct tally_tls *tally_tls_new(struct tally_tls_ctx *ctx, enum tally_tls_mode mode);
void tally_tls_free(struct tally_tls *t);

/* Hands the engine `len` bytes received from the peer. */
void tally_tls_feed(struct tally_tls *t, const void *in, size_t len);

/* Bytes the engine has for the peer (0 when none). */
size_t tally_tls_pending(const struct tally_tls *t);

/* Moves up to cap of those bytes into buf; returns how many. */
size_t tally_tls_take(struct tally_tls *t, void *buf, size_t cap);

/* Advances the handshake with what was fed: DONE once complete (peer verified; for
 * PEER_* sessions the peer's node id is known), AGAIN, or FAILED. Idempotent once DONE. */
enum tally_tls_status tally_tls_handshake(struct tally_tls *t);

/* Whether the handshake completed (tally_tls_read and tally_tls_write may be used). */
bool tally_tls_done(const struct tally_tls *t);

/* Decrypts up to cap bytes of plaintext into buf (*got bytes): DONE with *got > 0,
 * AGAIN when nothing complete has arrived, CLOSED, or FAILED. */
enum tally_tls_status tally_tls_read(struct tally_tls *t, void *buf, size_t cap, size_t *got);

/* Encrypts len bytes for the peer (then tally_tls_take them). Returns 0, or -1 (the
 * session failed: see tally_tls_error). */
int tally_tls_write(struct tally_tls *t, const void *buf, size_t len);

/* The node id of the peer's certificate after a PEER_* or CLIENT_CONNECT handshake;
 * 0 when there is none. */
uint64_t tally_tls_peer_id(const struct tally_tls *t);

/* Whether a PEER_* handshake agreed on TALLY_TLS_ALPN_RAFT (both nodes take the
 * transport's own messages). */
bool tally_tls_alpn_raft(const struct tally_tls *t);

/* A value both ends of this session compute alike and a relay cannot (RFC 8446
 * exporter, label "EXPORTER-tally-key-proof"). Returns 0 or -1. */
int tally_tls_exporter(struct tally_tls *t, uint8_t out[TALLY_TLS_EXPORTER_BYTES]);

/* Why the session failed ("" if it did not). */
const char *tally_tls_error(const struct tally_tls *t);

/* The node id a certificate common name names ("tally-node-7" → 7); 0 if none. */
uint64_t tally_tls_cn_id(const char *cn);

#endif /* TALLY_RPC_TLS_H */
