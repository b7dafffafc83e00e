/*
 * The client-facing server: connections, handshake, requests, responses.
 *
 * Memory: a connection is freed when its handles are closed AND no request of it is
 * still waiting on the node (`pending`), so a late callback never touches freed
 * memory. Responses are packed into the connection's output buffer and written once
 * per loop turn (a uv_check handle), so answers to a pipelined stream cost one write
 * each turn rather than one each. A request is decoded with protobuf-c's default allocator and freed when
 * its answer has been written to the connection (or the connection is gone).
 */
#include "rpc/server.h"

#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "rpc/frame.h"
#include "rpc/stream.h"
#include "rpc/tls.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name

enum conn_state { C_HELLO, C_PROOF, C_READY, C_CLOSING };

struct conn {
	struct tally_server *s;
	uv_tcp_t tcp;
	uv_timer_t timer;                 /* handshake, then idle timeout */
	struct tally_frame_reader reader;
	enum conn_state state;
	unsigned handles_open;            /* tcp and timer until their close callbacks */
	unsigned pending;                 /* requests waiting on the node */
	unsigned calls;                   /* of which requests (not writes): capped */
	bool reading;                     /* uv_read_start in effect */
	bool draining;                    /* conn_drain on the stack */
	struct sockaddr_storage peer;     /* for the per-address cap */
	struct tally_tls *tls;            /* NULL: a plaintext server (tallyd --insecure) */
	uint8_t nonce[TALLY_NONCE_BYTES];
	struct tally_key key;             /* trusted once the proof verified */
	char *slots[TALLY_SCOPE_BRANDS_MAX];
	Tally__V1__Principal principal;
	uint8_t *out;                     /* responses packed since the last flush */
	size_t out_len;
	size_t out_cap;
	bool out_close;                   /* close once what is queued has been written */
	bool queued;                      /* on the server's flush list (holds `pending`) */
	struct conn *flush_next;
	struct conn *prev, *next;
};

struct tally_server {
	uv_loop_t *loop;
	uv_tcp_t listener;
	struct tally_node *node;
	struct tally_keys *keys;
	struct tally_server_config cfg;
	struct tally_server_stats stats;
	struct conn *conns;
	uv_check_t flusher;               /* writes queued responses once per loop turn */
	struct conn *flush_head;
	bool closing;
	bool listener_closed;
	bool flusher_closed;
	void (*close_cb)(void *data);
	void *close_data;
};

/* One request waiting on the node. */
struct call {
	struct conn *c;
	Tally__V1__Request *req;           /* decoded into arena, freed with it */
	struct tally_arena arena;
	size_t n;                          /* batch: commands, answered so far */
	size_t done;
	size_t refused;                    /* batch: commands refused before the node */
	Tally__V1__CommandResult **results; /* batch: each points into kept */
	Tally__V1__CommandResult *kept;     /* batch: the results, kept until all are in */
	struct batch_item *items;           /* batch: one callback context per command */
	uint64_t submitted_ns;              /* command, batch: when given to the node */
};

struct batch_item {
	struct call *call;
	size_t index;
};

#define OUT_BYTES_MAX (64u << 20) /* a client that reads nothing is cut off here */
/* Requests of one connection in the node at once; further frames stay unread (the
 * kernel's buffers fill, the client's writes block) until one is answered. */
#define SERVER_CONN_CALLS_MAX 1024
#define SERVER_RESULT_FIELDS 11 /* CommandResult's fields, as result_keep copies them */
/* A call's arena for its decoded request: a first block of MIN + PER_BYTE bytes per
 * byte of the frame, about what a batch of accruals decodes to (a command of ~50 bytes
 * becomes a Command, its body and three strings: ~200), so one block mostly holds it. */
#define SERVER_CALL_ARENA_BYTES_MIN 1024
#define SERVER_CALL_ARENA_PER_BYTE 4

struct wreq {
	uv_write_t w;
	struct conn *c;
	bool close_after;
	uint8_t *base;                     /* the flushed output buffer, owned here */
	uv_buf_t buf;                      /* what is left of it to write */
};

static void conn_close(struct conn *c);
static void conn_drain(struct conn *c);

/* ---- lifetime ---------------------------------------------------------------------- */

static void server_maybe_done(struct tally_server *s)
{
	if (s->closing && s->listener_closed && s->flusher_closed && s->conns == NULL &&
	    s->close_cb != NULL) {
		void (*cb)(void *) = s->close_cb;
		s->close_cb = NULL;
		cb(s->close_data);
	}
}

static void conn_maybe_free(struct conn *c)
{
	if (c->handles_open > 0 || c->pending > 0)
		return;
	struct tally_server *s = c->s;
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	tally_frame_reader_free(&c->reader);
	tally_tls_free(c->tls);
	free(c->out);
	free(c);
	s->stats.connections_open--;
	server_maybe_done(s);
}

static void on_handle_closed(uv_handle_t *h)
{
	struct conn *c = h->data;
	assert(c->handles_open > 0);
	c->handles_open--;
	conn_maybe_free(c);
}

static void conn_close(struct conn *c)
{
	if (c->state == C_CLOSING)
		return;
	c->state = C_CLOSING;
	uv_read_stop((uv_stream_t *)&c->tcp);
	uv_close((uv_handle_t *)&c->timer, on_handle_closed);
	uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

/* The message of a kept result that has none (most do: OK carries no message). */
static char result_no_message[] = "";

/* A call for a frame: its request decoded into the call's own arena, one block for a
 * request of any size (protobuf-c's allocator made one allocation per message and
 * string: a batch of 100 accruals took ~400, and as many frees). NULL when out of
 * memory; k->req NULL when the bytes do not decode. */
static struct call *call_new(struct conn *c, const uint8_t *body, size_t len)
{
	struct call *k = calloc(1, sizeof(*k));
	if (k == NULL)
		return NULL;
	k->c = c;
	tally_arena_init(&k->arena, SERVER_CALL_ARENA_BYTES_MIN + SERVER_CALL_ARENA_PER_BYTE * len, 0);
	k->req = tally__v1__request__unpack(tally_arena_protobuf(&k->arena), len, body);
	return k;
}

/* A call that never reached the node (a handshake, a ping, a frame that does not decode). */
static void call_discard(struct call *k)
{
	tally_arena_free(&k->arena);
	free(k);
}

static void call_free(struct call *k)
{
	if (k->kept != NULL) /* zeroed until kept: a NULL message */
		for (size_t i = 0; i < k->n; i++)
			if (k->kept[i].message != result_no_message)
				free(k->kept[i].message);
	free(k->kept);
	free(k->results);
	free(k->items);
	tally_arena_free(&k->arena);
	struct conn *c = k->c;
	free(k);
	assert(c->pending > 0 && c->calls > 0);
	c->pending--;
	c->calls--;
	if (!c->reading && c->calls < SERVER_CONN_CALLS_MAX)
		conn_drain(c); /* frames left unread at the cap */
	conn_maybe_free(c);
}

/* ---- writing ------------------------------------------------------------------------ */

static void on_written(uv_write_t *w, int status)
{
	struct wreq *wr = (struct wreq *)w;
	struct conn *c = wr->c;
	bool close_after = wr->close_after || status != 0;
	free(wr->base);
	free(wr);
	c->pending--;
	if (close_after)
		conn_close(c);
	conn_maybe_free(c);
}

/* Writes `out` (owned from here) to the socket, encrypted first when `encrypt` (frames
 * on a TLS connection; TLS's own handshake records go as they are); closes the
 * connection after it when close_after, or when writing fails. */
static void conn_write(struct conn *c, uint8_t *out, size_t len, bool close_after, bool encrypt)
{
	if (encrypt && len > 0 && c->state != C_CLOSING) {
		assert(c->tls != NULL);
		int rc = tally_tls_write(c->tls, out, len);
		free(out);
		len = rc == 0 ? tally_tls_pending(c->tls) : 0;
		out = len > 0 ? malloc(len) : NULL;
		if (rc != 0 || (len > 0 && out == NULL))
			len = 0, close_after = true;
		else if (len > 0)
			len = tally_tls_take(c->tls, out, len);
	}
	/* Most answers fit the socket's buffer: written now (rpc/stream.h). A write that
	 * closes after it goes through a request, whose callback closes. */
	size_t done = 0;
	if (c->state != C_CLOSING && !close_after) {
		done = tally_stream_write_now((uv_stream_t *)&c->tcp, out, len);
		if (len > 0 && done == len) {
			free(out);
			assert(c->handles_open > 0); /* open until C_CLOSING: c stays valid */
			return;
		}
	}
	struct wreq *wr = c->state == C_CLOSING ? NULL : malloc(sizeof(*wr));
	if (wr == NULL) {
		free(out);
		conn_close(c);
		conn_maybe_free(c);
		return;
	}
	wr->c = c;
	wr->close_after = close_after;
	wr->base = out;
	wr->buf = uv_buf_init((char *)out + done, (unsigned)(len - done));
	c->pending++;
	if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &wr->buf, 1, on_written) != 0) {
		free(wr->base);
		free(wr);
		c->pending--;
		conn_close(c);
		conn_maybe_free(c);
	}
}

/* Hands the connection's queued output to one write. */
static void conn_flush(struct conn *c)
{
	assert(c->queued);
	c->queued = false;
	c->pending--; /* the queue's hold; the write takes its own */
	uint8_t *out = c->out;
	size_t len = c->out_len;
	bool close_after = c->out_close;
	c->out = NULL;
	c->out_len = c->out_cap = 0;
	c->out_close = false;
	if (c->state == C_CLOSING || (c->tls != NULL && !tally_tls_done(c->tls))) {
		/* a goodbye (handshake timeout) before TLS is up: nothing to say it in */
		free(out);
		if (close_after)
			conn_close(c);
		conn_maybe_free(c);
		return;
	}
	conn_write(c, out, len, close_after, c->tls != NULL);
}

static void on_check(uv_check_t *h)
{
	struct tally_server *s = h->data;
	while (s->flush_head != NULL) {
		struct conn *c = s->flush_head;
		s->flush_head = c->flush_next;
		conn_flush(c);
	}
}

/* Makes room for `more` bytes of output; false when the client reads too little. */
static bool out_reserve(struct conn *c, size_t more)
{
	if (c->out_len + more <= c->out_cap)
		return true;
	return c->out_len + more <= OUT_BYTES_MAX &&
	       tally_buf_reserve(&c->out, &c->out_cap, c->out_len + more, 4096) == 0;
}

/* Queues a response on the connection (written at the end of this loop turn); the
 * connection closes after it when close_after. */
static void respond(struct conn *c, Tally__V1__Response *res, bool close_after)
{
	if (c->state == C_CLOSING)
		return;
	size_t n = tally__v1__response__get_packed_size(res);
	if (!out_reserve(c, TALLY_FRAME_HEADER_BYTES + n)) {
		conn_close(c);
		return;
	}
	uint8_t *p = c->out + c->out_len;
	tally_frame_header(p, (uint32_t)n);
	tally__v1__response__pack(res, p + TALLY_FRAME_HEADER_BYTES);
	c->out_len += TALLY_FRAME_HEADER_BYTES + n;
	c->out_close |= close_after;
	if (!c->queued) {
		c->queued = true;
		c->pending++; /* the queue holds the connection until the flush */
		c->flush_next = c->s->flush_head;
		c->s->flush_head = c;
	}
}

static void respond_code(struct conn *c, uint64_t call_id, Tally__V1__ResultCode code,
			 const char *message, bool close_after)
{
	Tally__V1__Response res = TALLY__V1__RESPONSE__INIT;
	res.call_id = call_id;
	res.code = code;
	res.message = (char *)message;
	respond(c, &res, close_after);
}

/* ---- handshake --------------------------------------------------------------------- */

static void on_timeout(uv_timer_t *t)
{
	struct conn *c = t->data;
	const char *why = c->state == C_READY ? "idle timeout" : "handshake timeout";
	respond_code(c, 0, c->state == C_READY ? CODE(TIMEOUT) : CODE(UNAUTHENTICATED), why, true);
}

static void handle_hello(struct conn *c, const Tally__V1__Request *req)
{
	const struct tally_key *key = NULL;
	if (req->body_case == TALLY__V1__REQUEST__BODY_HELLO)
		key = tally_keys_find(c->s->keys, req->hello->key_name);
	if (key == NULL || getrandom(c->nonce, sizeof(c->nonce), 0) != sizeof(c->nonce)) {
		c->s->stats.auth_failures++;
		respond_code(c, req->call_id, CODE(UNAUTHENTICATED),
			     key == NULL ? "hello: unknown key" : "hello: no randomness", true);
		return;
	}
	c->key = *key; /* a reload later does not change what this connection proves */
	Tally__V1__Challenge ch = TALLY__V1__CHALLENGE__INIT;
	ch.nonce.data = c->nonce;
	ch.nonce.len = sizeof(c->nonce);
	Tally__V1__Response res = TALLY__V1__RESPONSE__INIT;
	res.call_id = req->call_id;
	res.code = CODE(OK);
	res.body_case = TALLY__V1__RESPONSE__BODY_CHALLENGE;
	res.challenge = &ch;
	c->state = C_PROOF;
	respond(c, &res, false);
}

static void handle_proof(struct conn *c, const Tally__V1__Request *req)
{
	_Static_assert(TALLY_KEYS_BINDING_BYTES == TALLY_TLS_EXPORTER_BYTES, "binding size");
	uint8_t binding[TALLY_TLS_EXPORTER_BYTES];
	bool bound = c->tls == NULL || tally_tls_exporter(c->tls, binding) == 0;
	bool ok = bound && req->body_case == TALLY__V1__REQUEST__BODY_PROOF &&
		  tally_keys_verify(&c->key, c->nonce, c->tls != NULL ? binding : NULL,
				    req->proof->hmac.data, req->proof->hmac.len);
	if (!ok) {
		c->s->stats.auth_failures++;
		respond_code(c, req->call_id, CODE(UNAUTHENTICATED), "proof: does not match the key",
			     true);
		return;
	}
	tally_keys_principal(&c->key, c->slots, &c->principal);
	Tally__V1__Welcome w = TALLY__V1__WELCOME__INIT;
	w.role = c->principal.role;
	w.brands = c->principal.brands;
	w.n_brands = c->principal.n_brands;
	Tally__V1__Response res = TALLY__V1__RESPONSE__INIT;
	res.call_id = req->call_id;
	res.code = CODE(OK);
	res.body_case = TALLY__V1__RESPONSE__BODY_WELCOME;
	res.welcome = &w;
	c->state = C_READY;
	c->reader.max_bytes = c->s->cfg.frame_bytes_max; /* 1 KiB until now */
	uv_timer_start(&c->timer, on_timeout, c->s->cfg.idle_timeout_ms, 0);
	respond(c, &res, false);
}

/* ---- commands ---------------------------------------------------------------------- */

static bool transport_code(Tally__V1__ResultCode code)
{
	return code == CODE(NOT_LEADER) || code == CODE(UNAVAILABLE) || code == CODE(TIMEOUT);
}

/* A command or batch request is answered: its time in the node. */
static void request_timed(struct call *k)
{
	struct tally_server_stats *st = &k->c->s->stats;
	uint64_t us = (uv_hrtime() - k->submitted_ns) / 1000;
	st->request_us_hist[tally_node_hist_slot(us, tally_node_commit_us_bounds)]++;
	st->request_us_sum += us;
}

static void on_command_result(void *data, const Tally__V1__CommandResult *r)
{
	struct call *k = data;
	struct conn *c = k->c;
	if ((unsigned)r->code < 32)
		c->s->stats.results[r->code]++;
	Tally__V1__Response res = TALLY__V1__RESPONSE__INIT;
	res.call_id = k->req->call_id;
	if (transport_code(r->code)) {
		res.code = r->code;
		res.message = r->message;
		if (r->code == CODE(NOT_LEADER))
			res.leader_address = r->message;
	} else {
		res.code = CODE(OK);
		res.body_case = TALLY__V1__RESPONSE__BODY_RESULT;
		res.result = (Tally__V1__CommandResult *)r;
	}
	respond(c, &res, false);
	request_timed(k);
	call_free(k);
}

/* A command as the node should see it: the connection's principal, never the
 * client's. Refuses early what the role can never do. */
static bool prepare_command(struct conn *c, Tally__V1__Command *cmd, Tally__V1__CommandResult *r)
{
	cmd->principal = &c->principal; /* the client's claim, if any, is ignored */
	if (tally_ledger_role_allows(c->principal.role, cmd->body_case))
		return true;
	r->code = CODE(PERMISSION_DENIED);
	r->message = (char *)"the key's role may not run this command";
	return false;
}

static void submit_command(struct call *k)
{
	Tally__V1__Command *cmd = k->req->command;
	Tally__V1__CommandResult r = TALLY__V1__COMMAND_RESULT__INIT;
	k->submitted_ns = uv_hrtime();
	if (!prepare_command(k->c, cmd, &r)) {
		on_command_result(k, &r);
		return;
	}
	tally_node_submit(k->c->s->node, cmd, on_command_result, k);
}

/* Keeps a batch item's result until the batch is answered: the node's r lives only
 * during its callback. A CommandResult is scalars and one string (checked against the
 * schema), so a flat copy and the message's own copy keep all of it; unknown fields
 * (a result replayed from a newer binary's journal entry) are not answered. */
static void result_keep(Tally__V1__CommandResult *dst, const Tally__V1__CommandResult *r)
{
	assert(tally__v1__command_result__descriptor.n_fields == SERVER_RESULT_FIELDS);
	*dst = *r;
	dst->base.n_unknown_fields = 0;
	dst->base.unknown_fields = NULL;
	dst->message = result_no_message;
	if (r->message == NULL || r->message[0] == '\0')
		return;
	dst->message = strdup(r->message);
	if (dst->message == NULL) /* out of memory: the outcome stands, without its words */
		dst->message = result_no_message;
}

static void batch_finish(struct call *k)
{
	Tally__V1__BatchResult br = TALLY__V1__BATCH_RESULT__INIT;
	br.results = k->results;
	br.n_results = k->n;
	size_t not_leader = 0;
	const char *leader = NULL;
	for (size_t i = 0; i < k->n; i++)
		if (k->results[i]->code == CODE(NOT_LEADER)) {
			not_leader++;
			leader = leader != NULL ? leader : k->results[i]->message;
		}
	Tally__V1__Response res = TALLY__V1__RESPONSE__INIT;
	res.call_id = k->req->call_id;
	if (not_leader > 0 && not_leader + k->refused == k->n) {
		/* Nothing reached a leader here (the rest was refused at the door, as it will
		 * be there): let the client follow the leader with all of it. */
		res.code = CODE(NOT_LEADER);
		res.leader_address = (char *)leader;
		res.message = (char *)leader;
	} else {
		res.code = CODE(OK);
		res.body_case = TALLY__V1__RESPONSE__BODY_BATCH;
		res.batch = &br;
	}
	respond(k->c, &res, false);
	request_timed(k);
	call_free(k);
}

static void on_batch_item(void *data, const Tally__V1__CommandResult *r)
{
	struct batch_item *item = data;
	struct call *k = item->call;
	assert(item->index < k->n && k->done < k->n);
	result_keep(&k->kept[item->index], r);
	if ((unsigned)r->code < 32)
		k->c->s->stats.results[r->code]++;
	if (++k->done == k->n)
		batch_finish(k);
}

static void submit_batch(struct call *k)
{
	Tally__V1__CommandList *list = k->req->batch;
	k->submitted_ns = uv_hrtime();
	k->n = list->n_commands;
	if (k->n == 0 || k->n > TALLY_BATCH_COMMANDS_MAX) {
		respond_code(k->c, k->req->call_id, CODE(INVALID_ARGUMENT),
			     "batch: 1..8192 commands", false);
		call_free(k);
		return;
	}
	k->results = calloc(k->n, sizeof(*k->results));
	k->kept = calloc(k->n, sizeof(*k->kept));
	k->items = calloc(k->n, sizeof(*k->items));
	if (k->results == NULL || k->kept == NULL || k->items == NULL) {
		respond_code(k->c, k->req->call_id, CODE(UNAVAILABLE), "server out of memory", false);
		call_free(k);
		return;
	}
	for (size_t i = 0; i < k->n; i++) {
		k->items[i].call = k;
		k->items[i].index = i;
		k->results[i] = &k->kept[i];
	}
	/* The call lives until its last item is answered, which cannot happen before the
	 * last item is submitted: nothing here touches k after that submission. */
	size_t n = k->n;
	struct batch_item *items = k->items;
	struct conn *c = k->c;
	for (size_t i = 0; i < n; i++) {
		Tally__V1__Command *cmd = list->commands[i];
		Tally__V1__CommandResult r = TALLY__V1__COMMAND_RESULT__INIT;
		if (!prepare_command(c, cmd, &r)) {
			k->refused++; /* before the answer: the last one frees k */
			on_batch_item(&items[i], &r);
		} else {
			tally_node_submit(c->s->node, cmd, on_batch_item, &items[i]);
		}
	}
}

/* ---- queries and admin ------------------------------------------------------------- */

/* A GetCheckpoint answer: the digest the ledger read, signed with the node's key into
 * *cp (whose bytes point into `sig`, valid while the response is written). */
static void sign_checkpoint(struct tally_server *s, Tally__V1__QueryResult *qr,
			    Tally__V1__Checkpoint *cp, struct tally_checkpoint *sig)
{
	const Tally__V1__Digest *d = qr->digest;
	assert(d != NULL && d->root.len == TALLY_HASH_BYTES &&
	       d->state_digest.len == TALLY_HASH_BYTES);
	memset(sig, 0, sizeof(*sig));
	sig->node_id = tally_node_id(s->node);
	sig->tree_size = d->tree_size;
	sig->applied_index = d->applied_index;
	sig->time_ms = d->time_ms;
	memcpy(sig->root, d->root.data, TALLY_HASH_BYTES);
	memcpy(sig->state_digest, d->state_digest.data, TALLY_HASH_BYTES);
	if (s->cfg.checkpoint_key == NULL || tally_checkpoint_sign(s->cfg.checkpoint_key, sig) != 0) {
		qr->code = CODE(UNAVAILABLE);
		qr->message = (char *)"this node has no checkpoint key";
		return;
	}
	tally__v1__checkpoint__init(cp);
	cp->tree_size = sig->tree_size;
	cp->root = d->root;
	cp->state_digest = d->state_digest;
	cp->applied_index = sig->applied_index;
	cp->time_ms = sig->time_ms;
	cp->node_id = sig->node_id;
	cp->public_key = (ProtobufCBinaryData){TALLY_CHECKPOINT_PUBLIC_BYTES, sig->public_key};
	cp->signature = (ProtobufCBinaryData){TALLY_CHECKPOINT_SIGNATURE_BYTES, sig->signature};
	qr->checkpoint = cp;
}

static void on_query(void *data, Tally__V1__ResultCode code, const char *message,
		     Tally__V1__QueryResult *qr)
{
	struct call *k = data;
	Tally__V1__Checkpoint cp;
	struct tally_checkpoint sig;
	if (code == CODE(OK) && qr != NULL && qr->code == CODE(OK) && qr->digest != NULL &&
	    k->req->query->q_case == TALLY__V1__QUERY__Q_CHECKPOINT)
		sign_checkpoint(k->c->s, qr, &cp, &sig);
	Tally__V1__Response res = TALLY__V1__RESPONSE__INIT;
	res.call_id = k->req->call_id;
	res.code = code;
	res.message = (char *)(message != NULL ? message : "");
	if (code == CODE(NOT_LEADER))
		res.leader_address = res.message;
	if (code == CODE(OK) && qr != NULL) {
		res.body_case = TALLY__V1__RESPONSE__BODY_QUERY;
		res.query = qr;
	}
	respond(k->c, &res, false);
	call_free(k);
}

/* The node's outcome as it is (consensus/node.h): NOT_LEADER carries the leader's
 * address, TIMEOUT an unknown outcome, every other refusal a change not made. */
static void on_admin(void *data, Tally__V1__ResultCode code, const char *msg)
{
	struct call *k = data;
	Tally__V1__Response res = TALLY__V1__RESPONSE__INIT;
	res.call_id = k->req->call_id;
	res.code = code;
	res.message = (char *)(code == CODE(OK) || msg == NULL ? "" : msg);
	if (code == CODE(NOT_LEADER))
		res.leader_address = res.message;
	respond(k->c, &res, false);
	call_free(k);
}

/* Who runs the cluster (membership, leadership, node addresses): an operator key, or
 * an admin key of every brand ("*"). A brand's admin runs that brand, not the cluster. */
static bool server_may_operate(const Tally__V1__Principal *p)
{
	return p->role == TALLY__V1__ROLE__OPERATOR ||
	       (p->role == TALLY__V1__ROLE__ADMIN && p->n_brands == 1 && strcmp(p->brands[0], "*") == 0);
}

/* Everyone may see who leads and how far the node is; only operators where nodes are. */
static void status_hide_addresses(Tally__V1__Status *st)
{
	if (st->leader != NULL)
		st->leader->address = st->leader->client_address = (char *)"";
	for (size_t i = 0; i < st->n_nodes; i++)
		st->nodes[i]->address = st->nodes[i]->client_address = (char *)"";
}

static void handle_status(struct call *k)
{
	struct tally_arena arena;
	tally_arena_init(&arena, 4096, 0);
	Tally__V1__Status st = TALLY__V1__STATUS__INIT;
	tally_node_status(k->c->s->node, &arena, &st);
	if (!server_may_operate(&k->c->principal))
		status_hide_addresses(&st);
	Tally__V1__Response res = TALLY__V1__RESPONSE__INIT;
	res.call_id = k->req->call_id;
	res.code = CODE(OK);
	res.body_case = TALLY__V1__RESPONSE__BODY_STATUS;
	res.status = &st;
	respond(k->c, &res, false);
	tally_arena_free(&arena);
	call_free(k);
}

static void handle_admin(struct call *k)
{
	const Tally__V1__Admin *a = k->req->admin;
	struct tally_node *node = k->c->s->node;
	if (a->op == TALLY__V1__ADMIN__OP__STATUS) {
		handle_status(k);
		return;
	}
	if (!server_may_operate(&k->c->principal)) {
		respond_code(k->c, k->req->call_id, CODE(PERMISSION_DENIED),
			     "admin: cluster changes need an operator key or an admin key of scope *",
			     false);
		call_free(k);
		return;
	}
	switch (a->op) {
	case TALLY__V1__ADMIN__OP__ADD: tally_node_add(node, a->node_id, a->address, on_admin, k); break;
	case TALLY__V1__ADMIN__OP__ASSIGN: tally_node_assign(node, a->node_id, (int)a->role, on_admin, k); break;
	case TALLY__V1__ADMIN__OP__REMOVE: tally_node_remove(node, a->node_id, on_admin, k); break;
	case TALLY__V1__ADMIN__OP__TRANSFER: tally_node_transfer(node, a->node_id, on_admin, k); break;
	case TALLY__V1__ADMIN__OP__RULES: tally_node_rules(node, a->rules, on_admin, k); break;
	default:
		respond_code(k->c, k->req->call_id, CODE(INVALID_ARGUMENT), "admin.op: unknown", false);
		call_free(k);
	}
}

/* ---- requests ----------------------------------------------------------------------- */

static void handle_ready(struct call *k)
{
	struct conn *c = k->c;
	Tally__V1__Request *req = k->req;
	c->pending++;
	c->calls++;
	c->s->stats.requests++;
	switch (req->body_case) {
	case TALLY__V1__REQUEST__BODY_COMMAND: submit_command(k); break;
	case TALLY__V1__REQUEST__BODY_BATCH: submit_batch(k); break;
	case TALLY__V1__REQUEST__BODY_QUERY:
		tally_node_query(c->s->node, req->query, &c->principal, on_query, k);
		break;
	case TALLY__V1__REQUEST__BODY_ADMIN: handle_admin(k); break;
	default:
		respond_code(c, req->call_id, CODE(INVALID_ARGUMENT),
			     "body: expected command, batch, query or admin", false);
		call_free(k);
	}
}

/* A peer asking for this node's wall clock (rpc/peerclock.c): answered in any state,
 * it reveals the time and the node id only. */
static void handle_ping(struct conn *c, const Tally__V1__Request *req)
{
	assert(c != NULL && req->body_case == TALLY__V1__REQUEST__BODY_PING);
	Tally__V1__Pong pong = TALLY__V1__PONG__INIT;
	pong.wall_ms = tally_node_wall_ms(c->s->node);
	pong.node_id = tally_node_id(c->s->node);
	Tally__V1__Response res = TALLY__V1__RESPONSE__INIT;
	res.call_id = req->call_id;
	res.code = CODE(OK);
	res.body_case = TALLY__V1__RESPONSE__BODY_PONG;
	res.pong = &pong;
	respond(c, &res, false);
}

/* ---- a look at the wire before decoding ---------------------------------------------- */

/* Reads a varint at *p; false when it runs past end or over 10 bytes. */
static bool wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	*v = 0;
	for (unsigned shift = 0; shift < 70 && *p < end; shift += 7) {
		uint8_t b = *(*p)++;
		*v |= (uint64_t)(b & 0x7f) << shift;
		if ((b & 0x80) == 0)
			return true;
	}
	return false;
}

/* Steps over one field's value of wire type wt; its length when length-delimited. */
static bool wire_skip(const uint8_t **p, const uint8_t *end, unsigned wt, uint64_t *len)
{
	uint64_t v;
	*len = 0;
	switch (wt) {
	case 0: return wire_varint(p, end, &v);
	case 1: return (size_t)(end - *p) >= 8 ? (*p += 8, true) : false;
	case 5: return (size_t)(end - *p) >= 4 ? (*p += 4, true) : false;
	case 2:
		if (!wire_varint(p, end, len) || *len > (uint64_t)(end - *p))
			return false;
		*p += *len;
		return true;
	default: return false;
	}
}

/* How many commands a Request's batch holds (field 5, its field 1), counted on the
 * wire: protobuf-c would allocate every one before the limit could be checked (a 4 MiB
 * frame of two million empty commands took 217 MB and 0.6 s). Also the call id.
 * Returns false when the bytes are not well-formed protobuf (decoding will say so). */
static bool wire_batch_commands(const uint8_t *body, size_t len, size_t *n, uint64_t *call_id)
{
	const uint8_t *p = body, *end = body + len;
	*n = 0;
	*call_id = 0;
	while (p < end) {
		uint64_t tag, flen;
		const uint8_t *value;
		if (!wire_varint(&p, end, &tag))
			return false;
		value = p;
		if (!wire_skip(&p, end, (unsigned)(tag & 7), &flen))
			return false;
		if (tag == (1u << 3 | 0)) {
			const uint8_t *q = value;
			(void)wire_varint(&q, end, call_id);
		} else if (tag == (5u << 3 | 2)) {
			const uint8_t *q = p - flen, *qend = p;
			while (q < qend) {
				uint64_t t, l;
				if (!wire_varint(&q, qend, &t) || !wire_skip(&q, qend, (unsigned)(t & 7), &l))
					return false;
				*n += t == (1u << 3 | 2);
			}
		}
	}
	return true;
}

static void handle_frame(struct conn *c, const uint8_t *body, size_t len)
{
	size_t commands;
	uint64_t call_id;
	if (wire_batch_commands(body, len, &commands, &call_id) &&
	    commands > TALLY_BATCH_COMMANDS_MAX) {
		c->s->stats.bad_frames++;
		respond_code(c, call_id, CODE(INVALID_ARGUMENT), "batch: 1..8192 commands", false);
		return;
	}
	struct call *k = call_new(c, body, len);
	if (k == NULL) {
		respond_code(c, call_id, CODE(UNAVAILABLE), "server out of memory", false);
		return;
	}
	Tally__V1__Request *req = k->req;
	if (req == NULL) {
		call_discard(k);
		c->s->stats.bad_frames++;
		respond_code(c, 0, CODE(INVALID_ARGUMENT),
			     "frame: does not decode as a tally.v1.Request", true);
		return;
	}
	if (req->body_case == TALLY__V1__REQUEST__BODY_PING && c->state != C_CLOSING) {
		handle_ping(c, req);
		call_discard(k);
		return;
	}
	switch (c->state) {
	case C_HELLO:
		handle_hello(c, req);
		break;
	case C_PROOF:
		handle_proof(c, req);
		break;
	case C_READY:
		uv_timer_again(&c->timer);
		handle_ready(k); /* takes k */
		return;
	case C_CLOSING:
		break;
	}
	call_discard(k);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	static _Thread_local char slab[64 << 10];
	(void)suggested;
	*buf = uv_buf_init(slab, sizeof(slab));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

/* Handles the complete frames buffered, as long as the connection may take more
 * requests; reads more once they are all handled, stops reading at the cap. */
static void conn_drain(struct conn *c)
{
	if (c->draining)
		return; /* an answer given while handling a frame: the loop below goes on */
	c->draining = true;
	while (c->state != C_CLOSING) {
		if (c->calls >= SERVER_CONN_CALLS_MAX) {
			if (c->reading) {
				uv_read_stop((uv_stream_t *)&c->tcp);
				c->s->stats.reads_paused++;
			}
			c->reading = false;
			break;
		}
		const uint8_t *body;
		size_t len;
		int rc = tally_frame_reader_next(&c->reader, &body, &len);
		if (rc == 0) {
			if (!c->reading)
				uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
			c->reading = true;
			break;
		}
		if (rc < 0) {
			c->s->stats.bad_frames++;
			char msg[96];
			snprintf(msg, sizeof(msg), "frame: larger than the limit of %zu bytes%s",
				 c->reader.max_bytes,
				 c->state == C_READY ? "" : " before the handshake completes");
			respond_code(c, 0, CODE(INVALID_ARGUMENT), msg, true);
			uv_read_stop((uv_stream_t *)&c->tcp);
			c->reading = false;
			break;
		}
		handle_frame(c, body, len);
	}
	c->draining = false;
}

/* TLS records from the client: the handshake's (answered at once), then plaintext for
 * the frame reader. Returns 0, or -1 when the connection must close. */
static int conn_tls_input(struct conn *c, const uint8_t *in, size_t n)
{
	tally_tls_feed(c->tls, in, n);
	enum tally_tls_status st = tally_tls_handshake(c->tls);
	size_t out_len = tally_tls_pending(c->tls);
	if (out_len > 0 && c->state != C_READY) { /* handshake messages, alerts */
		uint8_t *out = malloc(out_len);
		if (out == NULL)
			return -1;
		conn_write(c, out, tally_tls_take(c->tls, out, out_len), st == TALLY_TLS_FAILED, false);
	}
	if (st == TALLY_TLS_FAILED) {
		c->s->stats.tls_failures++;
		/* with an alert to send, the connection closes once it is written */
		return out_len > 0 && c->state != C_READY ? 0 : -1;
	}
	if (st == TALLY_TLS_AGAIN)
		return 0;
	static _Thread_local uint8_t plain[64 << 10];
	for (;;) {
		size_t got = 0;
		st = tally_tls_read(c->tls, plain, sizeof(plain), &got);
		if (st == TALLY_TLS_AGAIN)
			return 0;
		if (st != TALLY_TLS_DONE)
			return -1;
		if (tally_frame_reader_feed(&c->reader, plain, got) != 0)
			return -1;
	}
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct conn *c = stream->data;
	if (nread < 0) {
		conn_close(c);
		return;
	}
	if (nread == 0 || c->state == C_CLOSING)
		return;
	int rc = c->tls != NULL ? conn_tls_input(c, (const uint8_t *)buf->base, (size_t)nread)
				: tally_frame_reader_feed(&c->reader, buf->base, (size_t)nread);
	if (rc != 0) {
		conn_close(c);
		return;
	}
	conn_drain(c);
}

/* ---- accepting ---------------------------------------------------------------------- */

/* Connections open from the address c's peer has (c included). */
static unsigned server_conns_from(const struct tally_server *s, const struct conn *c)
{
	unsigned n = 0;
	for (const struct conn *o = s->conns; o != NULL; o = o->next) {
		if (o->peer.ss_family != c->peer.ss_family || o->state == C_CLOSING)
			continue;
		if (c->peer.ss_family == AF_INET)
			n += ((const struct sockaddr_in *)&o->peer)->sin_addr.s_addr ==
			     ((const struct sockaddr_in *)&c->peer)->sin_addr.s_addr;
		else if (c->peer.ss_family == AF_INET6)
			n += memcmp(&((const struct sockaddr_in6 *)&o->peer)->sin6_addr,
				    &((const struct sockaddr_in6 *)&c->peer)->sin6_addr,
				    sizeof(struct in6_addr)) == 0;
	}
	return n;
}

static void on_connection(uv_stream_t *listener, int status)
{
	struct tally_server *s = listener->data;
	if (status != 0 || s->closing)
		return;
	struct conn *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return;
	c->s = s;
	uv_tcp_init(s->loop, &c->tcp);
	uv_timer_init(s->loop, &c->timer);
	c->tcp.data = c->timer.data = c;
	c->handles_open = 2;
	/* Before the handshake completes a frame can only be a Hello, Proof or Ping. */
	tally_frame_reader_init(&c->reader, TALLY_SERVER_PREAUTH_FRAME_BYTES_MAX);
	c->next = s->conns;
	if (s->conns != NULL)
		s->conns->prev = c;
	s->conns = c;
	s->stats.connections_open++;
	s->stats.connections_total++;
	if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
		conn_close(c);
		return;
	}
	int len = sizeof(c->peer);
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&c->peer, &len) != 0)
		c->peer.ss_family = AF_UNSPEC;
	const char *refused = s->stats.connections_open > s->cfg.connections_max
				      ? "too many connections"
			      : server_conns_from(s, c) > s->cfg.connections_per_address_max
				      ? "too many connections from this address"
				      : NULL;
	if (refused == NULL && s->cfg.tls != NULL && (c->tls = tally_tls_new(s->cfg.tls,
									   TALLY_TLS_CLIENT_ACCEPT)) == NULL)
		refused = "out of memory";
	if (refused != NULL) {
		s->stats.connections_refused++;
		if (s->cfg.tls != NULL)
			conn_close(c); /* no TLS session to answer in: closed at once */
		else
			respond_code(c, 0, CODE(UNAVAILABLE), refused, true);
		return;
	}
	uv_tcp_nodelay(&c->tcp, 1);
	uv_timer_start(&c->timer, on_timeout, s->cfg.handshake_timeout_ms, 0);
	uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
	c->reading = true;
}

int tally_server_init(struct tally_server **out, uv_loop_t *loop, struct tally_node *node,
		      struct tally_keys *keys, const struct tally_server_config *cfg,
		      char *err, size_t errcap)
{
	assert(out != NULL && loop != NULL && node != NULL && keys != NULL && cfg != NULL);
	struct tally_server *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return TALLY_ENOMEM;
	s->loop = loop;
	s->node = node;
	s->keys = keys;
	s->cfg = *cfg;
	if (s->cfg.frame_bytes_max == 0)
		s->cfg.frame_bytes_max = TALLY_FRAME_BYTES_DEFAULT;
	if (s->cfg.handshake_timeout_ms == 0)
		s->cfg.handshake_timeout_ms = 5000;
	if (s->cfg.idle_timeout_ms == 0)
		s->cfg.idle_timeout_ms = 600000;
	if (s->cfg.connections_max == 0)
		s->cfg.connections_max = 1024;
	if (s->cfg.connections_per_address_max == 0)
		s->cfg.connections_per_address_max = 256;
	struct sockaddr_storage addr;
	int rc = tally_address_sockaddr(cfg->listen_address, &addr);
	uv_tcp_init(loop, &s->listener);
	s->listener.data = s;
	if (rc == 0)
		rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&s->listener, 128, on_connection);
	if (rc == 0) {
		uv_check_init(loop, &s->flusher);
		s->flusher.data = s;
		rc = uv_check_start(&s->flusher, on_check);
	}
	if (rc != 0) {
		snprintf(err, errcap, "listen on %s: %s", cfg->listen_address, uv_strerror(rc));
		uv_close((uv_handle_t *)&s->listener, NULL);
		uv_run(loop, UV_RUN_NOWAIT); /* let the close complete before freeing */
		free(s);
		return TALLY_EIO;
	}
	*out = s;
	return 0;
}

void tally_server_set_keys(struct tally_server *s, struct tally_keys *keys)
{
	assert(s != NULL && keys != NULL);
	tally_keys_free(s->keys);
	free(s->keys);
	s->keys = keys;
	/* A session lives on what its key was when it was proved: one whose key is gone
	 * or different now ends (answered UNAUTHENTICATED, call id 0), and its client
	 * must prove the key it has now (requests still in the node go unanswered: their
	 * outcome is unknown to the client, as after any lost connection). */
	for (struct conn *c = s->conns; c != NULL; c = c->next) {
		if (c->state != C_PROOF && c->state != C_READY)
			continue;
		const struct tally_key *now = tally_keys_find(keys, c->key.name);
		if (now != NULL && tally_keys_equal(now, &c->key))
			continue;
		s->stats.sessions_revoked++;
		respond_code(c, 0, CODE(UNAUTHENTICATED),
			     now == NULL ? "key removed: session ended" : "key changed: session ended",
			     true);
	}
}

const struct tally_server_stats *tally_server_stats(const struct tally_server *s)
{
	return &s->stats;
}

static void on_listener_closed(uv_handle_t *h)
{
	struct tally_server *s = h->data;
	s->listener_closed = true;
	server_maybe_done(s);
}

static void on_flusher_closed(uv_handle_t *h)
{
	struct tally_server *s = h->data;
	s->flusher_closed = true;
	server_maybe_done(s);
}

void tally_server_close(struct tally_server *s, void (*cb)(void *data), void *data)
{
	assert(s != NULL && !s->closing);
	s->closing = true;
	s->close_cb = cb;
	s->close_data = data;
	uv_close((uv_handle_t *)&s->listener, on_listener_closed);
	for (struct conn *c = s->conns; c != NULL; c = c->next)
		conn_close(c);
	on_check(&s->flusher); /* release the queues' holds on the closing connections */
	uv_close((uv_handle_t *)&s->flusher, on_flusher_closed);
}

void tally_server_free(struct tally_server *s)
{
	if (s == NULL)
		return;
	assert(s->conns == NULL);
	tally_keys_free(s->keys);
	free(s->keys);
	free(s);
}
