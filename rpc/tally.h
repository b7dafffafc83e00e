/*
 * libtally — the C client of a Tally cluster.
 *
 * A client holds one authenticated TCP connection to one node of the cluster. It
 * finds the leader by following NOT_LEADER answers, retries what definitely did not
 * apply (UNAVAILABLE, a refused or broken connection before the request was sent)
 * with backoff, and reports an unknown outcome (TIMEOUT, a connection lost after the
 * request was sent) as such: the caller may retry with the same request id, which
 * the ledger makes safe.
 *
 * Every call returns a tally.v1.ResultCode for the transport outcome:
 *   OK               the cluster answered; the business result is in *result
 *                    (which may itself be a rejection such as INSUFFICIENT_POINTS)
 *   UNAVAILABLE      definitely not applied (no leader reachable within the retries)
 *   TIMEOUT          unknown outcome
 *   UNAUTHENTICATED  the key or secret was refused
 *   INVALID_ARGUMENT the request could not be encoded or was refused as malformed
 *   INTERNAL         a protocol error (an answer that does not decode)
 * Results are allocated in the caller's arena. A client is used by one thread.
 *
 * Retries: `attempts` bounds the tries of one call (the first included). A NOT_LEADER
 * naming the leader is followed at once; UNAVAILABLE (or NOT_LEADER without an
 * address) backs off 50 ms, doubling up to 1 s, and goes to the next node of the list;
 * a refused connection or one closed before the request was written goes to the next
 * node, backing off once every node failed in a row. An unknown outcome ends a
 * command, batch or membership change with TIMEOUT; queries and admin STATUS have no
 * effect and are tried again on the next node. Every wait (connect and handshake
 * together, then each request) is bounded by timeout_ms.
 */
#ifndef TALLY_CLIENT_H
#define TALLY_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "ledger/arena.h"
#include "proto/tally.pb-c.h"

struct tally_client;

struct tally_client_options {
	const char *cluster;      /* "host:port,host:port,..." client addresses */
	const char *key_name;
	const char *secret;
	unsigned timeout_ms;      /* per attempt; 0 = 5000 */
	unsigned attempts;        /* definite failures retried; 0 = 6 */
	size_t frame_bytes_max;   /* 0 = 4 MiB */
};

/* Connects to the first reachable node of the list and authenticates. Returns a
 * ResultCode as above; on failure err says why. */
Tally__V1__ResultCode tally_client_open(struct tally_client **out,
					const struct tally_client_options *o,
					char *err, size_t errcap);
void tally_client_close(struct tally_client *c);

/* The address of the node the client is connected to now (or tried last). */
const char *tally_client_address(const struct tally_client *c);

/* Why the last call that did not return OK failed ("127.0.0.1:8001: no answer within
 * 5000 ms"), or the message of a non-OK Response; "" when nothing failed yet. Valid
 * until the next call on c. */
const char *tally_client_error(const struct tally_client *c);

/* One command; the principal is filled by the server from the key. */
Tally__V1__ResultCode tally_client_command(struct tally_client *c, const Tally__V1__Command *cmd,
					   struct tally_arena *arena,
					   Tally__V1__CommandResult **result);

/* Up to 8192 commands in one request, one result each (same order). */
Tally__V1__ResultCode tally_client_batch(struct tally_client *c,
					 Tally__V1__Command *const *cmds, size_t n,
					 struct tally_arena *arena,
					 Tally__V1__BatchResult **results);

/* A query (linearizable unless q->stale). */
Tally__V1__ResultCode tally_client_query(struct tally_client *c, const Tally__V1__Query *q,
					 struct tally_arena *arena, Tally__V1__QueryResult **res);

/* An operator request (status and membership); the whole response is returned. */
Tally__V1__ResultCode tally_client_admin(struct tally_client *c, const Tally__V1__Admin *a,
					 struct tally_arena *arena, Tally__V1__Response **res);

/* Pipelining: send requests without waiting, then receive responses in any order,
 * matched by call id. tally_client_send assigns req->call_id, connects first when
 * needed and returns OK once the request is written (UNAVAILABLE: definitely not
 * sent). tally_client_recv returns OK with the next Response whatever its code (a
 * NOT_LEADER response is returned as it is; tally_client_follow(c, leader)
 * reconnects there, handshake included). Every send that returned OK gets exactly one
 * outcome from recv: OK with its Response, TIMEOUT when the connection was lost (or
 * the timeout passed) before its answer — unknown, match by the call ids never
 * answered — or INTERNAL for an answer that does not decode; after a failed recv the
 * connection is closed and the other answers still due come back as TIMEOUT. recv
 * with nothing outstanding returns INVALID_ARGUMENT. At most 65536 outstanding.
 * Blocking calls return INVALID_ARGUMENT while pipelined answers are outstanding. */
Tally__V1__ResultCode tally_client_send(struct tally_client *c, Tally__V1__Request *req);
Tally__V1__ResultCode tally_client_recv(struct tally_client *c, struct tally_arena *arena,
					Tally__V1__Response **res);
Tally__V1__ResultCode tally_client_follow(struct tally_client *c, const char *address);

#endif
