/*
 * libtally — the C client of a Tally cluster.
 *
 * A client holds one authenticated TCP connection to one node of the cluster. It
 * finds the leader by following NOT_LEADER answers, retries what definitely did not
 * apply (UNAVAILABLE, a refused or broken connection before the request was sent)
 * with backoff, and reports an unknown outcome as such (TIMEOUT): the caller may
 * retry with the same request id, which the ledger makes safe.
 *
 * Every call returns a tally.v1.ResultCode for the transport outcome, kept apart from
 * the business result (a CommandResult, BatchResult or QueryResult code, or the code
 * of an admin Response). Calls WITH AN EFFECT are commands, batches and the admin
 * operations ADD, ASSIGN, REMOVE and TRANSFER; queries and admin STATUS have none.
 *   OK               the node answered with a well-formed answer; the business result
 *                    is inside and is definite (it may be a rejection such as
 *                    INSUFFICIENT_POINTS: nothing applied)
 *   UNAVAILABLE      definitely not applied: no request reached a node that could act
 *                    on it within the attempts (connections refused or closed before
 *                    the whole request was written, handshakes failed, every answer
 *                    NOT_LEADER or UNAVAILABLE)
 *   TIMEOUT          with an effect: UNKNOWN OUTCOME. The whole request was written
 *                    and no well-formed definite answer came: none within timeout_ms,
 *                    the connection closed (also mid-answer) or said goodbye, the node
 *                    answered TIMEOUT, or the answer is a protocol error (does not
 *                    decode, exceeds frame_bytes_max, carries another call id or an
 *                    unknown code, lacks the body the request calls for, a batch
 *                    answer without exactly one known result per command). Retry
 *                    with the same request id; tally_client_error says which.
 *                    Without an effect: no answer from any node tried (nothing to know).
 *   UNAUTHENTICATED  the key or secret was refused (nothing sent)
 *   INVALID_ARGUMENT the request could not be encoded, or the node refused it whole as
 *                    malformed (nothing applied)
 *   INTERNAL         definitely not applied: the node answered INTERNAL (it failed in a
 *                    way that is not the caller's fault), the handshake met a protocol
 *                    error (no request sent), out of memory here; and, for a call
 *                    without an effect, a protocol error in the answer
 *   other codes      the node refused the whole request with that code (nothing
 *                    applied); see tally_client_admin for the admin operations
 * So for a call with an effect, TIMEOUT is the one unknown outcome; every other code
 * is definite. Results are allocated in the caller's arena. A client is used by one
 * thread.
 *
 * Retries: `attempts` bounds the tries of one call (the first included). A NOT_LEADER
 * naming the leader is followed at once; UNAVAILABLE (or NOT_LEADER without an
 * address) backs off 50 ms, doubling up to 1 s, and goes to the next node of the list;
 * a refused connection or one closed before the request was written goes to the next
 * node, backing off once every node failed in a row. Each of these answers is
 * definite, so a request is sent again only after the node it went to said it did
 * not take it. An unknown outcome ends a call with an effect with TIMEOUT at once (it
 * is never resent blindly); a query or STATUS without an answer is tried again on the
 * next node, and a malformed answer to one ends it with INTERNAL. Every wait (connect
 * and handshake together, then each request) is bounded by timeout_ms.
 */
#ifndef TALLY_CLIENT_H
#define TALLY_CLIENT_H

#include <stdbool.h>
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
	/* The cluster's CA certificate (PEM): connections are TLS 1.3 and every node must
	 * present a node certificate of this CA (a redirect leads only to a member), and
	 * the key proof is bound to the TLS session. NULL: plaintext, for nodes started
	 * with --insecure only. */
	const char *ca_file;
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

/* One command; the principal is filled by the server from the key. On OK, *result
 * holds the ledger's answer: OK (result->replay for an idempotent replay) or a
 * business rejection (codes OK..NOT_FOUND), both definite. */
Tally__V1__ResultCode tally_client_command(struct tally_client *c, const Tally__V1__Command *cmd,
					   struct tally_arena *arena,
					   Tally__V1__CommandResult **result);

/* Up to 8192 commands in one request, one result each (same order). On OK, each
 * result is a ledger answer (definite), or the transport outcome of that command
 * alone: NOT_LEADER or UNAVAILABLE (not applied: resend it) or TIMEOUT (unknown:
 * resend it with the same request id). A batch answered NOT_LEADER for every command
 * is followed like a single command. */
Tally__V1__ResultCode tally_client_batch(struct tally_client *c,
					 Tally__V1__Command *const *cmds, size_t n,
					 struct tally_arena *arena,
					 Tally__V1__BatchResult **results);

/* A query (linearizable unless q->stale); on OK, (*res)->code is OK or a definite
 * refusal (UNKNOWN_BRAND, NOT_FOUND, PERMISSION_DENIED, ...). */
Tally__V1__ResultCode tally_client_query(struct tally_client *c, const Tally__V1__Query *q,
					 struct tally_arena *arena, Tally__V1__QueryResult **res);

/* An operator request (status and membership); the whole response is returned in
 * *res. OK means the node answered the operation itself, and (*res)->code says how:
 * OK (done; STATUS carries res->status) or a definite refusal, nothing changed
 * (PERMISSION_DENIED: not an admin key; ALREADY_EXISTS: the id or address is taken,
 * or the node already has the role; NOT_FOUND: no such node; INVALID_ARGUMENT).
 * Any other return is the transport outcome as above: for ADD, ASSIGN, REMOVE and
 * TRANSFER, TIMEOUT is unknown (the change may still take effect: read STATUS from
 * the leader, or retry — a retry answered ALREADY_EXISTS or NOT_FOUND tells that an
 * earlier try took effect); UNAVAILABLE (also "a change is under way") and INTERNAL
 * mean nothing changed. *res is NULL unless a well-formed answer came. */
Tally__V1__ResultCode tally_client_admin(struct tally_client *c, const Tally__V1__Admin *a,
					 struct tally_arena *arena, Tally__V1__Response **res);

/* For bindings (clients/python): `request` is a serialized tally.v1.Request whose
 * body is a command, a batch, a query or an admin request; it runs as
 * tally_client_command, _batch, _query or _admin would (the principal and call id are
 * the client's own), with the same return codes, and on OK *answer holds the
 * serialized CommandResult, BatchResult, QueryResult or Response (*answer_len bytes;
 * release it with tally_client_free_bytes). INVALID_ARGUMENT: the bytes do not decode
 * or the body is none of those; nothing was sent. */
Tally__V1__ResultCode tally_client_call_bytes(struct tally_client *c, const void *request,
					      size_t len, void **answer, size_t *answer_len);
void tally_client_free_bytes(void *answer);

/* Pipelining: send requests without waiting, then receive responses in any order,
 * matched by call id. tally_client_send assigns req->call_id, connects first when
 * needed and returns OK once the whole request is written (UNAVAILABLE: definitely
 * not sent; INTERNAL: out of memory, not sent). tally_client_recv returns OK with the
 * next well-formed Response to a request still due, whatever its code (checked as for
 * the blocking calls; a NOT_LEADER response is returned as it is, and
 * tally_client_follow(c, leader) reconnects there, handshake included). Every send
 * that returned OK gets exactly one outcome from recv: OK with its Response, or
 * TIMEOUT — no well-formed answer: the connection was lost, the timeout passed, the
 * node said goodbye (call id 0), or sent a protocol error (bytes that do not decode,
 * an answer to a call id not due, a body that does not fit the request). Which
 * request a TIMEOUT stands for is not known: it is one of the call ids never
 * answered, unknown for those with an effect. After a failed recv the connection is
 * closed and every other answer still due comes back as TIMEOUT. recv with nothing
 * outstanding returns INVALID_ARGUMENT. At most 65536 outstanding. Blocking calls
 * return INVALID_ARGUMENT while pipelined answers are outstanding. */
Tally__V1__ResultCode tally_client_send(struct tally_client *c, Tally__V1__Request *req);
Tally__V1__ResultCode tally_client_recv(struct tally_client *c, struct tally_arena *arena,
					Tally__V1__Response **res);
Tally__V1__ResultCode tally_client_follow(struct tally_client *c, const char *address);

/* Waits at most timeout_us microseconds (negative: without limit) for something
 * tally_client_recv can take: 1 when an answer has arrived or begun to arrive (recv
 * then waits at most for the rest of it), the connection ended, an outcome is already
 * decided, or nothing is outstanding; 0 when the time passed first (or a signal
 * interrupted the wait). For a caller that sends on a schedule of its own while
 * answers are due, such as a load generator offering a fixed rate. A recv after a
 * wait that saw the socket readable reads it at once, without polling it again. */
int tally_client_wait(struct tally_client *c, int64_t timeout_us);

/* tally_client_wait over several clients, for one thread driving many connections
 * (at most TALLY_CLIENT_WAIT_ANY_MAX): waits at most timeout_us (negative: without
 * limit) until a client with an answer due has something its next recv can take, then
 * sets ready[i] for every client that has (those with nothing due are not waited on)
 * and returns how many; 0 when the time passed first, a signal interrupted the wait, or
 * none has an answer due. */
#define TALLY_CLIENT_WAIT_ANY_MAX 256
size_t tally_client_wait_any(struct tally_client *const *clients, size_t n, int64_t timeout_us,
			     bool *ready);

#endif
