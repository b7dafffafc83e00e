/*
 * rpc/peerclock — see peerclock.h.
 */
#include "rpc/peerclock.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "ledger/error.h"
#include "rpc/frame.h"
#include "rpc/tls.h"

#define PING_FRAME_BYTES_MAX 64 /* header + Request{call_id, ping}: about 16 bytes */

enum peer_state { PEER_FREE, PEER_IDLE, PEER_CONNECTING, PEER_OPEN, PEER_CLOSING };

/* One peer: its connection, and the Ping outstanding on it. */
struct peer {
	struct tally_peerclock *p;
	enum peer_state state;
	uint64_t id;
	char address[TALLY_ADDRESS_BYTES_MAX + 1];
	uv_tcp_t tcp;
	uv_connect_t connect;
	unsigned writes;                /* write requests in flight */
	struct tally_tls *tls;          /* NULL: a plaintext cluster */
	bool ready;                     /* TLS handshake done (or none) */
	struct tally_frame_reader reader;
	uint64_t call_id;               /* of the outstanding Ping; 0 when none */
	int64_t sent_mono_ms;
	uint8_t frame[PING_FRAME_BYTES_MAX];
};

struct tally_peerclock {
	uv_loop_t *loop;
	struct tally_node *node;
	uv_timer_t timer;
	bool timer_open;
	bool closing;
	struct tally_tls_ctx *tls;      /* this node's (not owned); NULL: plaintext */
	uint64_t next_call_id;
	struct peer peers[TALLY_NODE_PEERS_MAX];
	void (*close_cb)(void *data);
	void *close_data;
};

static void peerclock_maybe_closed(struct tally_peerclock *p)
{
	assert(p != NULL);
	if (!p->closing || p->timer_open)
		return;
	for (size_t i = 0; i < TALLY_NODE_PEERS_MAX; i++)
		if (p->peers[i].state == PEER_CLOSING || p->peers[i].writes > 0)
			return;
	if (p->close_cb != NULL) {
		void (*cb)(void *) = p->close_cb;
		p->close_cb = NULL;
		cb(p->close_data);
	}
}

static void peer_closed_cb(uv_handle_t *h)
{
	struct peer *peer = h->data;
	assert(peer != NULL && peer->state == PEER_CLOSING);
	peer->state = PEER_IDLE;
	peer->call_id = 0;
	tally_tls_free(peer->tls);
	peer->tls = NULL;
	peer->ready = false;
	tally_frame_reader_reset(&peer->reader);
	peerclock_maybe_closed(peer->p);
}

static void peer_close(struct peer *peer)
{
	assert(peer != NULL);
	if (peer->state != PEER_CONNECTING && peer->state != PEER_OPEN)
		return;
	peer->state = PEER_CLOSING;
	uv_close((uv_handle_t *)&peer->tcp, peer_closed_cb);
}

struct peer_write {
	uv_write_t w;
	struct peer *peer;
	uint8_t data[];
};

static void peer_write_cb(uv_write_t *w, int status)
{
	struct peer_write *pw = (struct peer_write *)w;
	struct peer *peer = pw->peer;
	free(pw);
	assert(peer != NULL && peer->writes > 0);
	peer->writes--;
	if (status != 0)
		peer_close(peer);
	peerclock_maybe_closed(peer->p);
}

/* Sends len bytes as they are (a copy). Returns 0 or -1. */
static int peer_send_raw(struct peer *peer, const uint8_t *data, size_t len)
{
	struct peer_write *pw = malloc(sizeof(*pw) + len);
	if (pw == NULL)
		return -1;
	pw->peer = peer;
	memcpy(pw->data, data, len);
	uv_buf_t buf = uv_buf_init((char *)pw->data, (unsigned)len);
	if (uv_write(&pw->w, (uv_stream_t *)&peer->tcp, &buf, 1, peer_write_cb) != 0) {
		free(pw);
		return -1;
	}
	peer->writes++;
	return 0;
}

/* Sends what the TLS session has for the peer. */
static int peer_tls_flush(struct peer *peer)
{
	uint8_t buf[PEERCLOCK_FRAME_BYTES_MAX];
	size_t n;
	while ((n = tally_tls_take(peer->tls, buf, sizeof(buf))) > 0)
		if (peer_send_raw(peer, buf, n) != 0)
			return -1;
	return 0;
}

static void peer_ping(struct peer *peer)
{
	assert(peer != NULL && peer->state == PEER_OPEN && peer->ready);
	assert(peer->call_id == 0);
	struct tally_peerclock *p = peer->p;
	Tally__V1__Ping ping = TALLY__V1__PING__INIT;
	Tally__V1__Request req = TALLY__V1__REQUEST__INIT;
	req.call_id = ++p->next_call_id;
	req.body_case = TALLY__V1__REQUEST__BODY_PING;
	req.ping = &ping;
	size_t len = tally__v1__request__get_packed_size(&req);
	assert(len + TALLY_FRAME_HEADER_BYTES <= sizeof(peer->frame));
	tally_frame_header(peer->frame, (uint32_t)len);
	tally__v1__request__pack(&req, peer->frame + TALLY_FRAME_HEADER_BYTES);
	len += TALLY_FRAME_HEADER_BYTES;
	int rc = peer->tls != NULL ? (tally_tls_write(peer->tls, peer->frame, len) == 0 ? peer_tls_flush(peer) : -1)
				   : peer_send_raw(peer, peer->frame, len);
	if (rc != 0) {
		peer_close(peer);
		return;
	}
	peer->call_id = req.call_id;
	peer->sent_mono_ms = tally_node_mono_ms(p->node);
}

/* One frame from the peer: the Pong we wait for becomes a sample; anything else (a
 * server's goodbye before it closes) is ignored. */
static void peer_frame(struct peer *peer, const uint8_t *body, size_t len)
{
	assert(peer != NULL && body != NULL);
	Tally__V1__Response *res = tally__v1__response__unpack(NULL, len, body);
	if (res == NULL) {
		peer_close(peer);
		return;
	}
	if (res->body_case == TALLY__V1__RESPONSE__BODY_PONG && peer->call_id != 0 &&
	    res->call_id == peer->call_id) {
		int64_t recv_ms = tally_node_mono_ms(peer->p->node);
		peer->call_id = 0;
		if (res->pong->node_id == peer->id)
			tally_node_clock_sample(peer->p->node, peer->id, res->pong->wall_ms,
						peer->sent_mono_ms, recv_ms);
	}
	tally__v1__response__free_unpacked(res, NULL);
}

static void peer_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	static char slab[PEERCLOCK_FRAME_BYTES_MAX]; /* one loop thread */
	*buf = uv_buf_init(slab, sizeof(slab));
}

/* TLS records from the peer: the handshake (a node certificate of the cluster's CA
 * naming the id configured at that address), then plaintext for the frame reader. */
static int peer_tls_input(struct peer *peer, const uint8_t *in, size_t n)
{
	tally_tls_feed(peer->tls, in, n);
	if (!peer->ready) {
		enum tally_tls_status st = tally_tls_handshake(peer->tls);
		if (peer_tls_flush(peer) != 0 || st == TALLY_TLS_FAILED ||
		    (st == TALLY_TLS_DONE && tally_tls_peer_id(peer->tls) != peer->id))
			return -1;
		if (st == TALLY_TLS_AGAIN)
			return 0;
		peer->ready = true;
		peer_ping(peer);
	}
	static uint8_t plain[PEERCLOCK_FRAME_BYTES_MAX]; /* one loop thread */
	for (;;) {
		size_t got = 0;
		enum tally_tls_status st = tally_tls_read(peer->tls, plain, sizeof(plain), &got);
		if (st == TALLY_TLS_AGAIN)
			return 0;
		if (st != TALLY_TLS_DONE || tally_frame_reader_feed(&peer->reader, plain, got) != 0)
			return -1;
	}
}

static void peer_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct peer *peer = s->data;
	assert(peer != NULL);
	if (nread < 0 || peer->state != PEER_OPEN) {
		peer_close(peer);
		return;
	}
	int rc = peer->tls != NULL ? peer_tls_input(peer, (const uint8_t *)buf->base, (size_t)nread)
				   : tally_frame_reader_feed(&peer->reader, buf->base, (size_t)nread);
	if (rc != 0) {
		peer_close(peer);
		return;
	}
	for (unsigned i = 0; peer->state == PEER_OPEN; i++) {
		assert(i <= PEERCLOCK_FRAME_BYTES_MAX); /* each frame takes >= 4 bytes fed */
		const uint8_t *body;
		size_t len;
		rc = tally_frame_reader_next(&peer->reader, &body, &len);
		if (rc == 0)
			return;
		if (rc < 0) {
			peer_close(peer);
			return;
		}
		peer_frame(peer, body, len);
	}
}

static void peer_connect_cb(uv_connect_t *req, int status)
{
	struct peer *peer = req->data;
	assert(peer != NULL);
	if (peer->state != PEER_CONNECTING)
		return; /* closed meanwhile */
	if (status != 0 || uv_read_start((uv_stream_t *)&peer->tcp, peer_alloc_cb, peer_read_cb) != 0) {
		peer_close(peer);
		return;
	}
	uv_tcp_nodelay(&peer->tcp, 1);
	peer->state = PEER_OPEN;
	if (peer->p->tls == NULL) {
		peer->ready = true;
		peer_ping(peer);
		return;
	}
	peer->sent_mono_ms = tally_node_mono_ms(peer->p->node); /* the handshake's deadline */
	peer->tls = tally_tls_new(peer->p->tls, TALLY_TLS_CLIENT_CONNECT);
	if (peer->tls == NULL || tally_tls_handshake(peer->tls) == TALLY_TLS_FAILED ||
	    peer_tls_flush(peer) != 0)
		peer_close(peer);
}

static void peer_connect(struct peer *peer)
{
	assert(peer != NULL && peer->state == PEER_IDLE);
	struct sockaddr_storage sa;
	if (tally_address_sockaddr(peer->address, &sa) != 0)
		return; /* not a numeric address: nothing to probe */
	if (uv_tcp_init(peer->p->loop, &peer->tcp) != 0)
		return;
	peer->tcp.data = peer;
	peer->connect.data = peer;
	peer->state = PEER_CONNECTING;
	if (uv_tcp_connect(&peer->connect, &peer->tcp, (struct sockaddr *)&sa, peer_connect_cb) != 0)
		peer_close(peer);
}

/* The slot of peer `id` at `address`, taking a free one for a new peer. */
static struct peer *peer_slot(struct tally_peerclock *p, const struct tally_node_peer *np)
{
	assert(p != NULL && np != NULL);
	struct peer *free_slot = NULL;
	for (size_t i = 0; i < TALLY_NODE_PEERS_MAX; i++) {
		struct peer *peer = &p->peers[i];
		if (peer->state != PEER_FREE && peer->id == np->id) {
			if (strcmp(peer->address, np->client) != 0)
				peer_close(peer); /* moved: reopened at its new address later */
			snprintf(peer->address, sizeof(peer->address), "%s", np->client);
			return peer;
		}
		if (peer->state == PEER_FREE && free_slot == NULL)
			free_slot = peer;
	}
	if (free_slot != NULL) {
		free_slot->state = PEER_IDLE;
		free_slot->id = np->id;
		snprintf(free_slot->address, sizeof(free_slot->address), "%s", np->client);
	}
	return free_slot;
}

static void peer_tick(struct peer *peer, int64_t now_ms)
{
	assert(peer != NULL);
	if (peer->state == PEER_IDLE)
		peer_connect(peer);
	else if (peer->state == PEER_OPEN && (peer->call_id != 0 || !peer->ready) &&
		 now_ms - peer->sent_mono_ms > PEERCLOCK_ANSWER_MS)
		peer_close(peer); /* a Ping, or the TLS handshake, unanswered */
	else if (peer->state == PEER_OPEN && peer->ready && peer->call_id == 0 && peer->writes == 0)
		peer_ping(peer);
}

static void peerclock_tick_cb(uv_timer_t *t)
{
	struct tally_peerclock *p = t->data;
	assert(p != NULL && !p->closing);
	struct tally_node_peer now[TALLY_NODE_PEERS_MAX];
	size_t n = tally_node_peers(p->node, now, TALLY_NODE_PEERS_MAX);
	bool listed[TALLY_NODE_PEERS_MAX] = {false};
	for (size_t i = 0; i < n; i++) {
		struct peer *peer = peer_slot(p, &now[i]);
		if (peer != NULL)
			listed[peer - p->peers] = true;
	}
	int64_t now_ms = tally_node_mono_ms(p->node);
	for (size_t i = 0; i < TALLY_NODE_PEERS_MAX; i++) {
		struct peer *peer = &p->peers[i];
		if (peer->state == PEER_FREE)
			continue;
		if (!listed[i]) { /* left the configuration */
			peer_close(peer);
			if (peer->state == PEER_IDLE)
				peer->state = PEER_FREE;
			continue;
		}
		peer_tick(peer, now_ms);
	}
}

int tally_peerclock_init(struct tally_peerclock **out, uv_loop_t *loop, struct tally_node *node,
			 struct tally_tls_ctx *tls)
{
	assert(out != NULL && loop != NULL && node != NULL);
	struct tally_peerclock *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return TALLY_ENOMEM;
	p->loop = loop;
	p->node = node;
	p->tls = tls;
	for (size_t i = 0; i < TALLY_NODE_PEERS_MAX; i++) {
		p->peers[i].p = p;
		tally_frame_reader_init(&p->peers[i].reader, PEERCLOCK_FRAME_BYTES_MAX);
	}
	int rc = uv_timer_init(loop, &p->timer);
	assert(rc == 0); /* cannot fail */
	(void)rc;
	p->timer.data = p;
	p->timer_open = true;
	uv_timer_start(&p->timer, peerclock_tick_cb, 0, PEERCLOCK_INTERVAL_MS);
	*out = p;
	return 0;
}

static void peerclock_timer_closed_cb(uv_handle_t *h)
{
	struct tally_peerclock *p = h->data;
	assert(p != NULL && p->closing);
	p->timer_open = false;
	peerclock_maybe_closed(p);
}

void tally_peerclock_close(struct tally_peerclock *p, void (*cb)(void *data), void *data)
{
	assert(p != NULL && !p->closing);
	p->closing = true;
	p->close_cb = cb;
	p->close_data = data;
	for (size_t i = 0; i < TALLY_NODE_PEERS_MAX; i++)
		peer_close(&p->peers[i]);
	uv_close((uv_handle_t *)&p->timer, peerclock_timer_closed_cb);
}

void tally_peerclock_free(struct tally_peerclock *p)
{
	if (p == NULL)
		return;
	assert(p->closing && !p->timer_open);
	for (size_t i = 0; i < TALLY_NODE_PEERS_MAX; i++)
		tally_frame_reader_free(&p->peers[i].reader);
	free(p);
}
