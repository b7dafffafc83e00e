/*
 * consensus/node — lifecycle, group commit, linearizable reads, the expire timer and
 * the safe close order for canonical raft 0.15 (docs/design.md, "canonical raft 0.15").
 *
 * Group commit: tally_node_submit only queues a serialized copy of the command and
 * schedules a service turn (a uv_idle handle, so it runs in this loop iteration
 * without blocking in poll). The service packs whatever is queued into one Batch per
 * raft entry, while fewer than inflight_max entries are in flight. Commands arriving
 * in the same loop turn therefore share an entry, and a busy leader batches whatever
 * piled up while the previous entries were replicating. No timer delays a proposal.
 *
 * Results: the FSM (fsm.c) applies the entry and, when this node proposed it and raft
 * still tracks the request (the in-flight list, keyed by raft index and term), hands
 * each waiter its result. raft's apply callback then only frees the batch, or, on
 * NOTLEADER / LEADERSHIPLOST / any error, answers NOT_LEADER or TIMEOUT (unknown).
 *
 * Nothing here calls into raft from inside a raft callback except what raft allows
 * (reading state): proposals, barriers, transfers and raft_close run from the service
 * turn or the tick timer, so callbacks that re-enter the node are harmless.
 */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "consensus/aioreap.h"
#include "consensus/internal.h"
#include "consensus/logfill.h"

#define CODE(x) TALLY__V1__RESULT_CODE__##x
#define BATCH_OVERHEAD_BYTES_MAX 42 /* padding, raft_term, time_ms, one command's tag+length */

static const char *const system_brands[] = {"*"};

void node_log(struct tally_node *n, const char *fmt, ...)
{
	assert(n != NULL && fmt != NULL);
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n->cfg.log_line != NULL)
		n->cfg.log_line(n->cfg.hook_data, line);
	else
		fprintf(stderr, "tally node %llu: %s\n", (unsigned long long)n->cfg.id, line);
}

static bool node_leading(struct tally_node *n)
{
	assert(n != NULL);
	return n->started && !n->dead && n->phase == NODE_OPEN &&
	       raft_state(n->raft) == RAFT_LEADER;
}

const char *tally_node_leader_client(struct tally_node *n)
{
	assert(n != NULL);
	node_leader_client(n, n->leader_client, sizeof(n->leader_client));
	return n->leader_client;
}

bool tally_node_is_leader(struct tally_node *n)
{
	assert(n != NULL);
	return node_leading(n);
}

struct tally_ledger *tally_node_ledger(struct tally_node *n)
{
	assert(n != NULL);
	return node_ledger(n);
}

const struct tally_node_stats *tally_node_stats(struct tally_node *n)
{
	assert(n != NULL);
	node_apply_drain(n); /* a follower's counts include every entry raft applied */
	n->stats.install_snapshot_bytes_mapped = n->transport.snapshot_bytes_spooled;
	n->stats.snapshot_appendix_bytes = n->transport.snapshot_appendix_bytes;
	n->stats.snapshot_segments_held = n->transport.snapshot_segments_held;
	n->stats.snapshot_segment_bytes_held = n->transport.snapshot_segment_bytes_held;
	n->stats.snapshots_declined = n->transport.snapshots_declined;
	n->stats.send_turns_yielded = n->transport.send_turns_yielded;
	n->stats.resends_skipped = n->transport.resends_skipped;
	n->stats.resend_bytes_skipped = n->transport.resend_bytes_skipped;
	n->stats.raft_bytes_sent = n->transport.bytes_sealed;
	n->stats.raft_connect_failures = n->transport.connect_failures;
	n->stats.appends_superseded = n->transport.appends_superseded;
	n->stats.append_bytes_superseded = n->transport.append_bytes_superseded;
	n->stats.log_segments_filled = node_logfill_count(n->raft_dir);
	n->stats.aio_contexts_reaped = node_aio_reaped();
	return &n->stats;
}

static void idle_cb(uv_idle_t *idle);

void node_kick(struct tally_node *n)
{
	assert(n != NULL);
	if (n->loop == NULL) { /* the simulator runs node_service when it sees this */
		n->sim_kicked = true;
		return;
	}
	if (n->handles_open == 2 && n->phase < NODE_RAFT_CLOSE &&
	    !uv_is_active((uv_handle_t *)&n->idle))
		(void)uv_idle_start(&n->idle, idle_cb); /* fails only on a closing handle */
}

/* ---- answers ------------------------------------------------------------------------ */

/* Answers a command with a transport outcome (NOT_LEADER, UNAVAILABLE, TIMEOUT ...). */
static void answer(struct tally_node *n, tally_node_result_cb cb, void *data,
		   Tally__V1__ResultCode code, const char *message)
{
	assert(n != NULL && cb != NULL);
	assert(code != CODE(OK));
	Tally__V1__CommandResult r = TALLY__V1__COMMAND_RESULT__INIT;
	r.code = code;
	r.message = (char *)(message != NULL ? message : "");
	if ((unsigned)code < 32)
		n->stats.rejections[code]++;
	cb(data, &r);
}

/* The transport outcome for callers when this node cannot propose. */
static Tally__V1__ResultCode refusal(struct tally_node *n, const char **message)
{
	assert(n != NULL && message != NULL);
	if (n->phase != NODE_OPEN || !n->started || n->dead) {
		*message = "node is shutting down or not started";
		return CODE(UNAVAILABLE);
	}
	*message = tally_node_leader_client(n);
	return CODE(NOT_LEADER);
}

static void queue_fail(struct tally_node *n, Tally__V1__ResultCode code, const char *message)
{
	assert(n != NULL);
	struct node_command *c = n->queue_head;
	n->queue_head = n->queue_tail = NULL;
	n->queue_commands = n->queue_bytes = 0;
	while (c != NULL) {
		struct node_command *next = c->next;
		answer(n, c->cb, c->data, code, message);
		free(c);
		c = next;
	}
}

static void query_list_fail(struct node_query *q, Tally__V1__ResultCode code, const char *message)
{
	while (q != NULL) {
		struct node_query *next = q->next;
		q->cb(q->data, code, message, NULL);
		free(q);
		q = next;
	}
}

static void queries_fail(struct tally_node *n, Tally__V1__ResultCode code, const char *message)
{
	assert(n != NULL);
	struct node_query *q = n->queries_head;
	n->queries_head = n->queries_tail = NULL;
	n->queries = 0;
	query_list_fail(q, code, message);
}

/* ---- in-flight batches ------------------------------------------------------------- */

struct node_batch *node_inflight_find(struct tally_node *n, uint64_t index, uint64_t term)
{
	assert(n != NULL && index > 0);
	unsigned seen = 0;
	for (struct node_batch *b = n->inflight_head; b != NULL; b = b->next) {
		assert(++seen <= n->inflight);
		if (b->req.index == index)
			return b->term == term && !b->delivered ? b : NULL;
		if (b->req.index > index)
			break;
	}
	return NULL;
}

void node_batch_deliver(struct tally_node *n, struct node_batch *b,
			Tally__V1__CommandResult **results, size_t n_results)
{
	assert(n != NULL && b != NULL);
	assert(!b->delivered);
	b->delivered = true;
	bool known = results != NULL && n_results == b->n_waiters;
	for (size_t i = 0; i < b->n_waiters; i++) {
		struct node_waiter *w = &b->waiters[i];
		if (known && results[i] != NULL)
			w->cb(w->data, results[i]);
		else
			answer(n, w->cb, w->data, CODE(TIMEOUT), "outcome unknown: retry");
	}
}

static void inflight_unlink(struct tally_node *n, struct node_batch *b)
{
	assert(n != NULL && b != NULL);
	assert(n->inflight > 0);
	if (b->prev != NULL)
		b->prev->next = b->next;
	else
		n->inflight_head = b->next;
	if (b->next != NULL)
		b->next->prev = b->prev;
	else
		n->inflight_tail = b->prev;
	n->inflight--;
}

/* raft_apply_cb: status 0 means the FSM already delivered the results. Raft accepted
 * the entry into its log, so whatever else ends it (leadership lost, shutdown) leaves
 * its outcome unknown: the next leader may still commit it. Never NOT_LEADER here. */
static void batch_apply_cb(struct raft_apply *req, int status, void *result)
{
	struct node_batch *b = req->data;
	assert(b != NULL && result == NULL);
	struct tally_node *n = b->n;
	inflight_unlink(n, b);
	if (!b->delivered) {
		b->delivered = true;
		const char *msg = status == 0 ? "outcome unknown: retry"
			: "leadership lost while in flight: outcome unknown, retry";
		for (size_t i = 0; i < b->n_waiters; i++)
			answer(n, b->waiters[i].cb, b->waiters[i].data, CODE(TIMEOUT), msg);
	}
	free(b);
	node_kick(n);
}

/* ---- group commit ------------------------------------------------------------------- */

static size_t varint_bytes(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static uint8_t *varint_put(uint8_t *p, uint64_t v)
{
	while (v >= 0x80) {
		*p++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*p++ = (uint8_t)v;
	return p;
}

/* How many queued commands the next batch takes; *bytes receives the size of their
 * encoded fields (tag, length, bytes each). */
static size_t batch_measure(struct tally_node *n, size_t header_bytes, size_t *bytes)
{
	assert(n != NULL && bytes != NULL);
	size_t count = 0, total = header_bytes;
	for (struct node_command *c = n->queue_head; c != NULL; c = c->next) {
		size_t one = 1 + varint_bytes(c->len) + c->len;
		if (count == n->cfg.batch_commands_max ||
		    (count > 0 && total + one > n->cfg.batch_bytes_max))
			break;
		total += one;
		count++;
	}
	*bytes = total;
	return count;
}

/* raft 0.15 requires every entry's length to be a multiple of 8: its segment writer
 * and its AppendEntries decoder assume 8-byte padding between entries of a batch but
 * neither adds it (an assert compiled out in release builds), so an odd-sized entry
 * corrupts the next one in the same write or message. A Batch is padded from the
 * front with raft_index (field 1) = 0 written as an over-long varint, which every
 * protobuf decoder reads as 0: k extra bytes, k = 0 or 2..9, with k = pad (mod 8). */
static size_t batch_pad_bytes(size_t len)
{
	size_t pad = (8 - len % 8) % 8;
	return pad == 0 ? 0 : pad >= 2 ? pad : pad + 8;
}

static uint8_t *batch_pad_put(uint8_t *p, size_t k)
{
	assert(p != NULL && (k == 0 || (k >= 2 && k <= 9)));
	if (k == 0)
		return p;
	*p++ = 0x08;                  /* field 1, varint */
	for (size_t i = 0; i + 2 < k; i++)
		*p++ = 0x80;          /* continuation, no value bits */
	*p++ = 0x00;
	return p;
}

/* Moves the next batch's commands out of the queue into a serialized tally.v1.Batch:
 * raft_index = 1 (padding only, value 0: the FSM stamps it), raft_term = 2 (varint),
 * time_ms = 3 (varint), commands = 4 (length-delimited, the queued bytes verbatim). */
static struct node_batch *batch_take(struct tally_node *n, struct raft_buffer *buf,
				     int64_t batch_time_ms)
{
	assert(n != NULL && buf != NULL && n->queue_head != NULL);
	assert(batch_time_ms >= 0);
	uint64_t term = n->raft->current_term, time_ms = (uint64_t)batch_time_ms;
	size_t header = 2 + varint_bytes(term) + varint_bytes(time_ms), bytes = 0;
	size_t count = batch_measure(n, header, &bytes);
	size_t pad = batch_pad_bytes(bytes);
	assert(count > 0);
	struct node_batch *b = calloc(1, sizeof(*b) + count * sizeof(b->waiters[0]));
	uint8_t *base = raft_malloc(bytes + pad);
	if (b == NULL || base == NULL) {
		free(b);
		raft_free(base);
		return NULL;
	}
	b->n = n;
	b->term = term;
	b->req.data = b;
	uint8_t *p = batch_pad_put(base, pad);
	*p++ = 0x10;
	p = varint_put(p, term);
	*p++ = 0x18;
	p = varint_put(p, time_ms);
	for (size_t i = 0; i < count; i++) {
		struct node_command *c = n->queue_head;
		n->queue_head = c->next;
		n->queue_commands--;
		n->queue_bytes -= c->len;
		*p++ = 0x22;
		p = varint_put(p, c->len);
		memcpy(p, c->bytes, c->len);
		p += c->len;
		b->waiters[b->n_waiters++] = (struct node_waiter){c->cb, c->data};
		free(c);
	}
	if (n->queue_head == NULL)
		n->queue_tail = NULL;
	buf->base = base;
	buf->len = (size_t)(p - base);
	assert(buf->len == bytes + pad && buf->len % 8 == 0);
	return b;
}

/* Proposes one batch stamped batch_time_ms. Returns 0 or the raft error (the batch's
 * callers are answered). */
static int batch_propose(struct tally_node *n, int64_t batch_time_ms)
{
	assert(n != NULL && n->inflight < n->cfg.inflight_max);
	struct raft_buffer buf;
	struct node_batch *b = batch_take(n, &buf, batch_time_ms);
	if (b == NULL)
		return RAFT_NOMEM; /* the queue is intact: retried at the next tick */
	b->proposed_ns = uv_hrtime();
	int rv = raft_apply(n->raft, &b->req, &buf, 1, batch_apply_cb);
	if (rv != 0) {
		raft_free(buf.base); /* raft_apply takes ownership only on success */
		Tally__V1__ResultCode code = rv == RAFT_NOTLEADER ? CODE(NOT_LEADER) : CODE(UNAVAILABLE);
		const char *msg = rv == RAFT_NOTLEADER ? tally_node_leader_client(n) : raft_strerror(rv);
		for (size_t i = 0; i < b->n_waiters; i++)
			answer(n, b->waiters[i].cb, b->waiters[i].data, code, msg);
		free(b);
		return rv;
	}
	b->prev = n->inflight_tail;
	if (n->inflight_tail != NULL)
		n->inflight_tail->next = b;
	else
		n->inflight_head = b;
	n->inflight_tail = b;
	n->inflight++;
	return 0;
}

/* No ledger time (the clocks of a majority of voters do not agree, consensus/clock.h):
 * commands wait for it this long (the first probes after a start or an election),
 * then are answered UNAVAILABLE, definitely not applied, at once until it returns. */
#define NODE_TIME_WAIT_MS 2000

/* Whether a batch may be stamped now (*time_ms); otherwise the queue waits for the
 * clocks, or is refused once they disagreed for NODE_TIME_WAIT_MS. */
static bool flush_time(struct tally_node *n, int64_t *time_ms)
{
	assert(n != NULL && time_ms != NULL && n->queue_head != NULL);
	if (node_time_next(n, time_ms)) {
		n->time_wait_since_ms = 0;
		return true;
	}
	int64_t now = tally_node_mono_ms(n);
	if (n->time_wait_since_ms == 0)
		n->time_wait_since_ms = now;
	else if (now - n->time_wait_since_ms >= NODE_TIME_WAIT_MS)
		queue_fail(n, CODE(UNAVAILABLE), "no ledger time: the clocks of a majority of "
			   "voters do not agree");
	return false;
}

/* Proposes queued commands while entries may be added in flight. */
static void node_flush(struct tally_node *n)
{
	assert(n != NULL);
	unsigned rounds = 0;
	if (n->queue_head != NULL && node_leading(n))
		node_apply_drain(n); /* what it applied as a follower first: the ledger's time */
	while (n->queue_head != NULL && n->inflight < n->cfg.inflight_max) {
		assert(++rounds <= n->cfg.inflight_max + 1);
		if (!node_leading(n)) {
			const char *msg = NULL;
			Tally__V1__ResultCode code = refusal(n, &msg);
			queue_fail(n, code, msg);
			return;
		}
		if (n->raft->transfer != NULL)
			return; /* a leadership transfer decides: wait for it */
		int64_t time_ms;
		if (!flush_time(n, &time_ms))
			return; /* the tick timer tries again */
		int rv = batch_propose(n, time_ms);
		if (rv != 0 && rv != RAFT_NOTLEADER)
			return;
	}
}

void tally_node_submit(struct tally_node *n, const Tally__V1__Command *cmd,
		       tally_node_result_cb cb, void *data)
{
	assert(n != NULL && cmd != NULL && cb != NULL);
	const char *msg = NULL;
	if (!node_leading(n)) {
		Tally__V1__ResultCode code = refusal(n, &msg);
		answer(n, cb, data, code, msg);
		return;
	}
	size_t len = tally_ledger_command_pack(cmd, NULL, 0);
	if (len + BATCH_OVERHEAD_BYTES_MAX > n->cfg.batch_bytes_max) {
		answer(n, cb, data, CODE(INVALID_ARGUMENT), "command is larger than a batch may be");
		return;
	}
	if (n->queue_commands >= NODE_QUEUE_COMMANDS_MAX ||
	    n->queue_bytes + len > NODE_QUEUE_BYTES_MAX) {
		answer(n, cb, data, CODE(UNAVAILABLE), "proposal queue is full");
		return;
	}
	struct node_command *c = malloc(sizeof(*c) + len);
	if (c == NULL) {
		answer(n, cb, data, CODE(UNAVAILABLE), "out of memory");
		return;
	}
	c->next = NULL;
	c->cb = cb;
	c->data = data;
	c->len = tally_ledger_command_pack(cmd, c->bytes, len);
	assert(c->len == len);
	if (n->queue_tail != NULL)
		n->queue_tail->next = c;
	else
		n->queue_head = c;
	n->queue_tail = c;
	n->queue_commands++;
	n->queue_bytes += len;
	node_kick(n);
}

/* ---- reads -------------------------------------------------------------------------- */

/* Runs one query and answers it. The node's query arena serves the outermost answer;
 * a callback that queries again gets a temporary arena. */
static void query_answer(struct tally_node *n, const Tally__V1__Query *q,
			 const Tally__V1__Principal *who, const struct node_query *packed,
			 tally_node_query_cb cb, void *data)
{
	assert(n != NULL && cb != NULL);
	assert((q != NULL && who != NULL) || packed != NULL);
	struct tally_arena local, *a = &n->query_arena;
	if (n->query_depth > 0) {
		tally_arena_init(&local, 16 << 10, 0);
		a = &local;
	}
	n->query_depth++;
	if (packed != NULL) {
		ProtobufCAllocator *pb = tally_arena_protobuf(a);
		q = tally__v1__query__unpack(pb, packed->query_len, packed->bytes);
		who = tally__v1__principal__unpack(pb, packed->who_len,
						   packed->bytes + packed->query_len);
	}
	Tally__V1__QueryResult *res = NULL;
	int rc = q == NULL || who == NULL ? TALLY_ECORRUPT
					 : tally_ledger_query(node_ledger(n), q, who, a, &res);
	if (rc == 0)
		cb(data, CODE(OK), "", res);
	else
		cb(data, CODE(UNAVAILABLE), tally_strerror(rc), NULL);
	n->query_depth--;
	if (a == &local)
		tally_arena_free(&local);
	else
		tally_arena_reset(a);
}

/* raft_barrier_cb: serves the queries that were waiting when the barrier was issued. */
static void barrier_cb(struct raft_barrier *req, int status)
{
	struct tally_node *n = req->data;
	assert(n != NULL && n->barrier_busy);
	n->barrier_busy = false;
	struct node_query *q = n->barrier_queries;
	n->barrier_queries = NULL;
	if (status == 0) {
		n->ready_term = n->barrier_term;
		while (q != NULL) {
			struct node_query *next = q->next;
			query_answer(n, NULL, NULL, q, q->cb, q->data);
			free(q);
			q = next;
		}
	} else if (n->phase != NODE_OPEN) {
		query_list_fail(q, CODE(UNAVAILABLE), "node is shutting down");
	} else {
		/* While raft steps down it still reports itself as leader: say "unknown". */
		query_list_fail(q, CODE(NOT_LEADER),
				status == RAFT_LEADERSHIPLOST ? "" : tally_node_leader_client(n));
	}
	node_kick(n);
}

/* Issues a barrier for every waiting query, or the first barrier of a new term. */
static void barrier_issue(struct tally_node *n)
{
	assert(n != NULL);
	bool election = n->leader_term != 0 && n->ready_term != n->leader_term;
	if (n->barrier_busy || (n->queries_head == NULL && !election))
		return;
	if (!node_leading(n)) {
		const char *msg = NULL;
		Tally__V1__ResultCode code = refusal(n, &msg);
		queries_fail(n, code, msg);
		return;
	}
	if (n->raft->transfer != NULL)
		return;
	n->barrier.data = n;
	n->barrier_term = n->raft->current_term;
	int rv = raft_barrier(n->raft, &n->barrier, barrier_cb);
	if (rv != 0) {
		queries_fail(n, rv == RAFT_NOTLEADER ? CODE(NOT_LEADER) : CODE(UNAVAILABLE),
			     rv == RAFT_NOTLEADER ? tally_node_leader_client(n) : raft_strerror(rv));
		return;
	}
	n->barrier_busy = true;
	n->barrier_queries = n->queries_head;
	n->queries_head = n->queries_tail = NULL;
	n->queries = 0;
}

void tally_node_query(struct tally_node *n, const Tally__V1__Query *q,
		      const Tally__V1__Principal *who, tally_node_query_cb cb, void *data)
{
	assert(n != NULL && q != NULL);
	assert(who != NULL && cb != NULL);
	if (n->phase != NODE_OPEN) {
		cb(data, CODE(UNAVAILABLE), "node is shutting down", NULL);
		return;
	}
	if (q->stale) {
		query_answer(n, q, who, NULL, cb, data);
		return;
	}
	const char *msg = NULL;
	if (!node_leading(n)) {
		Tally__V1__ResultCode code = refusal(n, &msg);
		cb(data, code, msg, NULL);
		return;
	}
	size_t qlen = tally__v1__query__get_packed_size(q);
	size_t wlen = tally__v1__principal__get_packed_size(who);
	struct node_query *w = NULL;
	if (n->queries < NODE_QUERIES_MAX && qlen <= NODE_QUERY_BYTES_MAX &&
	    wlen <= NODE_QUERY_BYTES_MAX)
		w = malloc(sizeof(*w) + qlen + wlen);
	if (w == NULL) {
		cb(data, CODE(UNAVAILABLE), "too many queries waiting", NULL);
		return;
	}
	w->next = NULL;
	w->cb = cb;
	w->data = data;
	w->query_len = tally__v1__query__pack(q, w->bytes);
	w->who_len = tally__v1__principal__pack(who, w->bytes + w->query_len);
	assert(w->query_len == qlen && w->who_len == wlen);
	if (n->queries_tail != NULL)
		n->queries_tail->next = w;
	else
		n->queries_head = w;
	n->queries_tail = w;
	n->queries++;
	node_kick(n);
}

/* ---- leadership, expire timer, service ---------------------------------------------- */

/* Notices gaining and losing leadership (raft 0.15 has no state-change callback). */
static void node_watch(struct tally_node *n)
{
	assert(n != NULL && n->phase == NODE_OPEN);
	if (!n->started)
		return;
	bool leader = raft_state(n->raft) == RAFT_LEADER;
	uint64_t term = n->raft->current_term;
	if (leader && n->leader_term != term) {
		n->leader_term = term;
		n->time_wait_since_ms = 0; /* a new leader gives its probes time again */
		n->expire_last_ms = (uint64_t)tally_node_mono_ms(n);
		n->expire_more = false;
	} else if (!leader && n->leader_term != 0) {
		n->leader_term = 0;
		const char *leader_client = tally_node_leader_client(n);
		queue_fail(n, CODE(NOT_LEADER), leader_client);
		queries_fail(n, CODE(NOT_LEADER), leader_client);
	}
}

static void expire_done(void *data, const Tally__V1__CommandResult *r)
{
	struct tally_node *n = data;
	assert(n != NULL && r != NULL);
	assert(n->expire_busy);
	n->expire_busy = false;
	n->expire_more = r->code == CODE(OK) && r->more;
	if (r->code != CODE(OK) && r->code != CODE(NOT_LEADER) && r->code != CODE(UNAVAILABLE) &&
	    r->code != CODE(TIMEOUT))
		node_log(n, "expire rejected: %s %s", tally_result_name(r->code), r->message);
}

bool node_leader_ready(struct tally_node *n)
{
	assert(n != NULL);
	return n->leader_term != 0 && n->ready_term == n->leader_term && node_leading(n);
}

void node_submit_as_system(struct tally_node *n, Tally__V1__Command *cmd,
			   tally_node_result_cb cb, void *data)
{
	assert(n != NULL && cmd != NULL && cmd->principal == NULL && cmd->request_id != NULL);
	Tally__V1__Principal who = TALLY__V1__PRINCIPAL__INIT;
	who.key_name = (char *)"tally-system";
	who.role = TALLY__V1__ROLE__SYSTEM;
	who.n_brands = 1;
	who.brands = (char **)system_brands;
	cmd->principal = &who;
	tally_node_submit(n, cmd, cb, data); /* copies the command, principal included */
	cmd->principal = NULL;
}

/* The leader's expire timer: one expire command in flight at most, every
 * expire_interval_ms, or at once while the previous one reported more work. */
static void expire_maybe(struct tally_node *n)
{
	assert(n != NULL);
	if (n->expire_busy || !node_leader_ready(n))
		return;
	uint64_t now = (uint64_t)tally_node_mono_ms(n);
	if (!n->expire_more && now - n->expire_last_ms < n->cfg.expire_interval_ms)
		return;
	n->expire_last_ms = now;
	char request_id[48]; /* a label only: expire commands are not idempotency-claimed */
	snprintf(request_id, sizeof(request_id), "expire-%llu-%llu",
		 (unsigned long long)n->leader_term, (unsigned long long)++n->expire_count);
	Tally__V1__Expire expire = TALLY__V1__EXPIRE__INIT;
	Tally__V1__Command cmd = TALLY__V1__COMMAND__INIT;
	cmd.request_id = request_id;
	cmd.body_case = TALLY__V1__COMMAND__BODY_EXPIRE;
	cmd.expire = &expire;
	n->expire_busy = true;
	node_submit_as_system(n, &cmd, expire_done, n);
}

static void close_step(struct tally_node *n);

void node_service(struct tally_node *n)
{
	assert(n != NULL);
	n->sim_kicked = false;
	if (n->dead)
		return;
	if (n->phase != NODE_OPEN) {
		close_step(n);
		return;
	}
	node_watch(n);
	node_flush(n);
	barrier_issue(n);
}

static void idle_cb(uv_idle_t *idle)
{
	struct tally_node *n = idle->data;
	assert(n != NULL);
	uv_idle_stop(idle);
	node_service(n);
}

/* How late the tick fired: what kept the loop from its timers (raft's heartbeats
 * among them) for longer than one period. */
static void stall_observe(struct tally_node *n)
{
	uint64_t now_ns = uv_hrtime(), period_ns = (uint64_t)n->cfg.heartbeat_ms * 1000000;
	if (n->tick_last_ns != 0 && now_ns - n->tick_last_ns > period_ns) {
		uint64_t late_us = (now_ns - n->tick_last_ns - period_ns) / 1000;
		if (late_us > n->stats.loop_stall_max_us)
			n->stats.loop_stall_max_us = late_us;
	}
	n->tick_last_ns = now_ns;
}

void node_tick(struct tally_node *n)
{
	assert(n != NULL);
	node_apply_collect(n);
	(void)node_apply_group_flush(n); /* raft's pass ended on an entry not of the FSM */
	node_service(n);
	if (n->phase == NODE_OPEN && !n->dead) {
		node_rules_maybe(n);
		expire_maybe(n);
		node_writeback_tick(n);
	}
}

static void tick_cb(uv_timer_t *tick)
{
	struct tally_node *n = tick->data;
	assert(n != NULL);
	stall_observe(n);
	node_tick(n);
}

int node_handles_init(struct tally_node *n)
{
	assert(n != NULL && n->handles_open == 0);
	int rc = uv_timer_init(n->loop, &n->tick);
	if (rc != 0)
		return rc;
	rc = uv_idle_init(n->loop, &n->idle);
	assert(rc == 0); /* cannot fail */
	n->tick.data = n;
	n->idle.data = n;
	n->handles_open = 2;
	return 0;
}

void node_tick_start(struct tally_node *n)
{
	assert(n != NULL && n->handles_open == 2);
	int rc = uv_timer_start(&n->tick, tick_cb, n->cfg.heartbeat_ms, n->cfg.heartbeat_ms);
	assert(rc == 0);
	(void)rc;
}

/* ---- close -------------------------------------------------------------------------- */

static void handle_closed_cb(uv_handle_t *h)
{
	struct tally_node *n = h->data;
	assert(n != NULL && n->handles_open > 0);
	if (--n->handles_open > 0)
		return;
	node_close_finish(n);
}

void node_close_finish(struct tally_node *n)
{
	assert(n != NULL && n->handles_open == 0);
	assert(n->phase == NODE_HANDLES);
	assert(n->inflight == 0 && !n->barrier_busy && n->queue_head == NULL);
	if (n->check_busy || n->release_busy || n->writeback.busy)
		return; /* work on the thread pool: its end calls this again */
	node_applier_end(n);
	tally_ledger_close(n->ledger);
	n->ledger = NULL;
	n->phase = NODE_CLOSED;
	if (n->close_cb != NULL)
		n->close_cb(n->close_data);
}

static void close_handles(struct tally_node *n)
{
	assert(n != NULL && n->handles_open == 2);
	n->phase = NODE_HANDLES;
	uv_close((uv_handle_t *)&n->tick, handle_closed_cb);
	uv_close((uv_handle_t *)&n->idle, handle_closed_cb);
}

static void raft_closed_cb(struct raft *r)
{
	struct tally_node *n = r->data;
	assert(n != NULL && n->phase == NODE_RAFT_CLOSE);
	raft_uv_close(n->io);
	tally_transport_free(&n->transport);
	close_handles(n);
}

/* raft_close fails whatever raft still tracks (TIMEOUT for our batches). */
static void close_raft(struct tally_node *n)
{
	assert(n != NULL && n->phase < NODE_RAFT_CLOSE);
	n->phase = NODE_RAFT_CLOSE;
	uv_timer_stop(&n->tick);
	uv_idle_stop(&n->idle);
	raft_close(n->raft, raft_closed_cb);
	assert(n->inflight == 0 && !n->barrier_busy);
}

static void close_transfer_cb(struct raft_transfer *req)
{
	struct tally_node *n = req->data;
	assert(n != NULL);
	if (n->phase == NODE_TRANSFER) {
		n->phase = NODE_DRAIN; /* nothing left to drain: the next step closes raft */
		n->close_transferred = true;
		node_kick(n);
	}
}

/* Drain in-flight entries (bounded), hand leadership over, then close raft. */
static void close_step(struct tally_node *n)
{
	assert(n != NULL && n->phase != NODE_OPEN);
	if (n->phase != NODE_DRAIN)
		return;
	bool busy = n->inflight > 0 || n->barrier_busy;
	if (busy && (uint64_t)tally_node_mono_ms(n) < n->close_deadline_ms)
		return;
	bool transfer = !n->close_transferred && n->started &&
			raft_state(n->raft) == RAFT_LEADER && n->raft->transfer == NULL &&
			node_has_other_voters(n);
	if (transfer) {
		n->close_transfer.data = n;
		if (raft_transfer(n->raft, &n->close_transfer, 0, close_transfer_cb) == 0) {
			n->phase = NODE_TRANSFER;
			return;
		}
	}
	close_raft(n);
}

void tally_node_close(struct tally_node *n, void (*cb)(void *data), void *data)
{
	assert(n != NULL);
	assert(n->phase == NODE_OPEN);
	n->phase = NODE_DRAIN;
	n->close_cb = cb;
	n->close_data = data;
	/* Long enough for entries in flight to commit; raft bounds the transfer itself. */
	n->close_deadline_ms =
		(uint64_t)tally_node_mono_ms(n) + 2ULL * n->cfg.election_timeout_ms + 1;
	node_queues_fail(n);
	node_kick(n);
}

void node_queues_fail(struct tally_node *n)
{
	assert(n != NULL);
	queue_fail(n, CODE(UNAVAILABLE), "node is shutting down");
	queries_fail(n, CODE(UNAVAILABLE), "node is shutting down");
}

void tally_node_free(struct tally_node *n)
{
	if (n == NULL)
		return;
	assert(n->phase == NODE_CLOSED);
	assert(n->admins_pending == 0 && n->queries_head == NULL);
	tally_arena_free(&n->apply_arena);
	tally_arena_free(&n->applier_arena);
	tally_arena_free(&n->query_arena);
	free(n->bootstrap);
	pthread_mutex_destroy(&n->check_lock);
	pthread_cond_destroy(&n->check_cond);
	free(n);
}
