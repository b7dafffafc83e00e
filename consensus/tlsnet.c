/*
 * consensus/tlsnet — raft's transport over mutually authenticated TLS 1.3.
 *
 * raft_uv wants a libuv stream per connection and never looks inside it. This
 * transport listens and connects itself; on each TCP connection it runs a TLS session
 * (rpc/tls.h) in which both ends present a node certificate of the cluster's CA; then
 * the connecting side sends a preamble (magic, version, its raft id, its full
 * "raft|client" address). A connection is handed to raft only when
 *
 *   - outgoing: the certificate of whoever answered names the id raft asked for;
 *   - incoming: the id in the preamble is the one the peer's certificate names,
 *
 * so no peer can speak for another id, and a peer without a certificate of the CA
 * never reaches raft's decoder. raft gets one end of a socketpair (a uv_pipe_t it
 * allocates and frees like its TCP handles: raft_malloc); this file pumps bytes
 * between the other end and the TLS session, with backpressure both ways.
 *
 * Every refused connection is logged with the peer's address and the reason.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "consensus/transport.h"
#include "rpc/stream.h"
#include "rpc/tls.h"

#define TLSNET_MAGIC 0x544c5952u         /* "TLYR": a Tally raft preamble */
#define TLSNET_VERSION 1u
#define TLSNET_PREAMBLE_FIXED 14         /* magic 4, version 1, id 8, address length 1 */
#define TLSNET_HANDSHAKE_MS 5000         /* TCP connect + TLS + preamble, each connection */
#define TLSNET_QUEUE_MAX (4u << 20)      /* bytes queued one way before reading stops */
#define TLSNET_READ_BYTES (64u << 10)    /* one read or one decrypt */
#define TLSNET_BACKLOG 64

enum tlsnet_state { TLSNET_CONNECTING, TLSNET_HANDSHAKE, TLSNET_PREAMBLE, TLSNET_PUMPING };

struct tlsnet_conn {
	struct tally_transport *t;
	struct tlsnet_conn *next, *prev; /* t->conns */
	uv_tcp_t tcp;
	uv_timer_t timer;                /* handshake deadline */
	uv_pipe_t pipe;                  /* our end of raft's socketpair, once pumping */
	uv_connect_t connect;
	struct tally_tls *tls;
	enum tlsnet_state state;
	bool outgoing, pipe_open, closing, tcp_reading, pipe_reading;
	unsigned handles;                /* libuv handles still open */
	raft_id id;                      /* outgoing: the id asked for; incoming: the peer's */
	struct raft_uv_connect *req;     /* outgoing: raft's request until answered */
	size_t tcp_queued, pipe_queued;  /* bytes in uv_write requests, each way */
	uint8_t preamble[TLSNET_PREAMBLE_FIXED + TALLY_ADDRESS_BYTES_MAX];
	size_t preamble_len;
	char peer[64];                   /* "ip:port" for log lines */
	char address[TALLY_ADDRESS_BYTES_MAX + 1]; /* the peer's full address */
};

struct tlsnet_write {
	uv_write_t w;
	struct tlsnet_conn *c;
	bool to_tcp;
	size_t len;
	uint8_t data[];
};

static void tlsnet_log(struct tally_transport *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void tlsnet_log(struct tally_transport *t, const char *fmt, ...)
{
	char line[384];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (t->log != NULL)
		t->log(t->log_data, line);
	else
		fprintf(stderr, "%s\n", line);
}

static void tlsnet_maybe_closed(struct tally_transport *t)
{
	if (t->close_cb != NULL && t->conns == NULL && !t->listener_open) {
		raft_uv_transport_close_cb cb = t->close_cb;
		t->close_cb = NULL;
		cb(&t->outer);
	}
}

static void tlsnet_handle_closed(uv_handle_t *h)
{
	struct tlsnet_conn *c = h->data;
	assert(c != NULL && c->handles > 0);
	if (--c->handles > 0)
		return;
	struct tally_transport *t = c->t;
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		t->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	tally_tls_free(c->tls);
	free(c);
	tlsnet_maybe_closed(t);
}

/* Ends a connection. An outgoing one raft still waits for is answered with status. */
static void tlsnet_close(struct tlsnet_conn *c, int status)
{
	if (c->closing)
		return;
	c->closing = true;
	if (c->req != NULL) {
		struct raft_uv_connect *req = c->req;
		c->req = NULL;
		req->cb(req, NULL, status);
	}
	uv_close((uv_handle_t *)&c->timer, tlsnet_handle_closed);
	uv_close((uv_handle_t *)&c->tcp, tlsnet_handle_closed);
	if (c->pipe_open)
		uv_close((uv_handle_t *)&c->pipe, tlsnet_handle_closed);
}

/* Logs why a connection is refused and ends it. */
static void tlsnet_refuse(struct tlsnet_conn *c, const char *why)
{
	tlsnet_log(c->t, "raft connection %s %s refused: %s", c->outgoing ? "to" : "from", c->peer, why);
	tlsnet_close(c, RAFT_NOCONNECTION);
}

static void tlsnet_read_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	char *p = malloc(TLSNET_READ_BYTES);
	*buf = uv_buf_init(p, p != NULL ? TLSNET_READ_BYTES : 0);
}

static void tlsnet_tcp_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void tlsnet_pipe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

/* Starts or stops reading each side so that neither write queue grows past the cap. */
static void tlsnet_flow(struct tlsnet_conn *c)
{
	if (c->closing)
		return;
	bool tcp_ok = c->pipe_queued < TLSNET_QUEUE_MAX;
	if (tcp_ok != c->tcp_reading) {
		c->tcp_reading = tcp_ok;
		if (tcp_ok)
			uv_read_start((uv_stream_t *)&c->tcp, tlsnet_read_alloc, tlsnet_tcp_read);
		else
			uv_read_stop((uv_stream_t *)&c->tcp);
	}
	bool pipe_ok = c->pipe_open && c->state == TLSNET_PUMPING && c->tcp_queued < TLSNET_QUEUE_MAX;
	if (pipe_ok != c->pipe_reading) {
		c->pipe_reading = pipe_ok;
		if (pipe_ok)
			uv_read_start((uv_stream_t *)&c->pipe, tlsnet_read_alloc, tlsnet_pipe_read);
		else
			uv_read_stop((uv_stream_t *)&c->pipe);
	}
}

static void tlsnet_written(uv_write_t *w, int status)
{
	struct tlsnet_write *wr = (struct tlsnet_write *)w;
	struct tlsnet_conn *c = wr->c;
	size_t *queued = wr->to_tcp ? &c->tcp_queued : &c->pipe_queued;
	assert(*queued >= wr->len);
	*queued -= wr->len;
	free(wr);
	if (status != 0 && !c->closing) {
		tlsnet_close(c, RAFT_NOCONNECTION);
		return;
	}
	tlsnet_flow(c);
}

/* Writes len bytes on the TCP side (ciphertext) or the pipe side (plaintext): what the
 * socket takes at once (rpc/stream.h), the rest queued (copied). */
static int tlsnet_send(struct tlsnet_conn *c, bool to_tcp, const void *data, size_t len)
{
	uv_stream_t *s = to_tcp ? (uv_stream_t *)&c->tcp : (uv_stream_t *)&c->pipe;
	size_t done = tally_stream_write_now(s, data, len);
	if (done == len)
		return 0;
	data = (const uint8_t *)data + done;
	len -= done;
	struct tlsnet_write *wr = malloc(sizeof(*wr) + len);
	if (wr == NULL)
		return -1;
	wr->c = c;
	wr->to_tcp = to_tcp;
	wr->len = len;
	memcpy(wr->data, data, len);
	uv_buf_t b = uv_buf_init((char *)wr->data, (unsigned)len);
	if (uv_write(&wr->w, s, &b, 1, tlsnet_written) != 0) {
		free(wr);
		return -1;
	}
	*(to_tcp ? &c->tcp_queued : &c->pipe_queued) += len;
	return 0;
}

/* Sends whatever ciphertext the TLS session has produced. */
static int tlsnet_flush(struct tlsnet_conn *c)
{
	uint8_t buf[TLSNET_READ_BYTES];
	size_t n;
	while ((n = tally_tls_take(c->tls, buf, sizeof(buf))) > 0)
		if (tlsnet_send(c, true, buf, n) != 0)
			return -1;
	return 0;
}

/* Hands raft its end of a new socketpair; ours is read and written from here on. */
static int tlsnet_handoff(struct tlsnet_conn *c, struct uv_stream_s **raft_stream)
{
	int fds[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) != 0)
		return -1;
	uv_pipe_t *theirs = raft_malloc(sizeof(*theirs));
	if (theirs == NULL || uv_pipe_init(c->t->loop, &c->pipe, 0) != 0) {
		raft_free(theirs);
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	c->pipe.data = c;
	c->pipe_open = true;
	c->handles++;
	if (uv_pipe_open(&c->pipe, fds[0]) != 0) {
		close(fds[0]);
		close(fds[1]);
		raft_free(theirs);
		return -1;
	}
	if (uv_pipe_init(c->t->loop, theirs, 0) != 0 || uv_pipe_open(theirs, fds[1]) != 0) {
		/* an initialised pipe must be closed through the loop; raft_free after */
		close(fds[1]);
		uv_close((uv_handle_t *)theirs, (uv_close_cb)raft_free);
		return -1;
	}
	uv_timer_stop(&c->timer);
	c->state = TLSNET_PUMPING;
	*raft_stream = (struct uv_stream_s *)theirs;
	tlsnet_flow(c);
	return 0;
}

/* Outgoing, after the handshake: the right node answered; introduce ourselves. */
static void tlsnet_connected(struct tlsnet_conn *c)
{
	if (tally_tls_peer_id(c->tls) != c->id) {
		char why[96];
		snprintf(why, sizeof(why), "certificate names node %" PRIu64 ", expected node %" PRIu64,
			 tally_tls_peer_id(c->tls), (uint64_t)c->id);
		tlsnet_refuse(c, why);
		return;
	}
	size_t alen = strlen(c->t->address);
	uint8_t p[TLSNET_PREAMBLE_FIXED + TALLY_ADDRESS_BYTES_MAX];
	uint32_t magic = htonl(TLSNET_MAGIC);
	uint64_t id = c->t->id;
	memcpy(p, &magic, 4);
	p[4] = TLSNET_VERSION;
	for (int i = 0; i < 8; i++)
		p[5 + i] = (uint8_t)(id >> (56 - 8 * i));
	p[13] = (uint8_t)alen;
	memcpy(p + TLSNET_PREAMBLE_FIXED, c->t->address, alen);
	struct uv_stream_s *stream = NULL;
	if (tally_tls_write(c->tls, p, TLSNET_PREAMBLE_FIXED + alen) != 0 || tlsnet_flush(c) != 0 ||
	    tlsnet_handoff(c, &stream) != 0) {
		tlsnet_refuse(c, tally_tls_error(c->tls)[0] ? tally_tls_error(c->tls) : "out of resources");
		return;
	}
	struct raft_uv_connect *req = c->req;
	c->req = NULL;
	req->cb(req, stream, 0);
}

/* Incoming: collects the preamble from the first plaintext; returns how many of the
 * n bytes it took, or -1 after refusing the connection. */
static ssize_t tlsnet_preamble(struct tlsnet_conn *c, const uint8_t *in, size_t n)
{
	size_t want = TLSNET_PREAMBLE_FIXED;
	if (c->preamble_len >= TLSNET_PREAMBLE_FIXED)
		want += c->preamble[13];
	size_t took = 0;
	while (took < n && c->preamble_len < want) {
		c->preamble[c->preamble_len++] = in[took++];
		if (c->preamble_len == TLSNET_PREAMBLE_FIXED)
			want += c->preamble[13];
	}
	if (c->preamble_len < want)
		return (ssize_t)took;
	uint32_t magic;
	memcpy(&magic, c->preamble, 4);
	uint64_t id = 0;
	for (int i = 0; i < 8; i++)
		id = id << 8 | c->preamble[5 + i];
	char why[128];
	if (ntohl(magic) != TLSNET_MAGIC || c->preamble[4] != TLSNET_VERSION) {
		tlsnet_refuse(c, "not a Tally raft preamble (or another version)");
		return -1;
	}
	if (id == 0 || id != tally_tls_peer_id(c->tls)) {
		snprintf(why, sizeof(why), "claims node %" PRIu64 " but its certificate names node %" PRIu64,
			 id, tally_tls_peer_id(c->tls));
		tlsnet_refuse(c, why);
		return -1;
	}
	size_t alen = c->preamble[13];
	memcpy(c->address, c->preamble + TLSNET_PREAMBLE_FIXED, alen);
	c->address[alen] = '\0';
	if (alen == 0 || strlen(c->address) != alen) {
		tlsnet_refuse(c, "empty or malformed address in the preamble");
		return -1;
	}
	c->id = id;
	struct uv_stream_s *stream = NULL;
	if (tlsnet_handoff(c, &stream) != 0) {
		tlsnet_refuse(c, "out of resources");
		return -1;
	}
	c->t->accept_cb(&c->t->outer, c->id, c->address, stream);
	return (ssize_t)took;
}

/* Decrypted bytes from the peer: the preamble first (incoming), then raft's. */
static int tlsnet_plaintext(struct tlsnet_conn *c)
{
	uint8_t buf[TLSNET_READ_BYTES];
	for (;;) {
		size_t got = 0;
		enum tally_tls_status s = tally_tls_read(c->tls, buf, sizeof(buf), &got);
		if (s == TALLY_TLS_AGAIN)
			return 0;
		if (s != TALLY_TLS_DONE) {
			if (s == TALLY_TLS_CLOSED)
				tlsnet_close(c, RAFT_NOCONNECTION);
			else
				tlsnet_refuse(c, tally_tls_error(c->tls));
			return -1;
		}
		size_t at = 0;
		if (c->state == TLSNET_PREAMBLE) {
			ssize_t took = tlsnet_preamble(c, buf, got);
			if (took < 0)
				return -1;
			at = (size_t)took;
		}
		if (at < got && c->state != TLSNET_PUMPING) {
			tlsnet_refuse(c, "data before the preamble was complete");
			return -1;
		}
		if (at < got && tlsnet_send(c, false, buf + at, got - at) != 0) {
			tlsnet_close(c, RAFT_NOCONNECTION);
			return -1;
		}
	}
}

/* Ciphertext from the network. */
static void tlsnet_tcp_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct tlsnet_conn *c = s->data;
	if (n > 0 && !c->closing)
		tally_tls_feed(c->tls, buf->base, (size_t)n);
	free(buf->base);
	if (c->closing || n == 0)
		return;
	if (n < 0) {
		tlsnet_close(c, RAFT_NOCONNECTION);
		return;
	}
	if (c->state == TLSNET_HANDSHAKE) {
		enum tally_tls_status st = tally_tls_handshake(c->tls);
		if (tlsnet_flush(c) != 0 || st == TALLY_TLS_FAILED) {
			tlsnet_refuse(c, tally_tls_error(c->tls)[0] ? tally_tls_error(c->tls) : "write failed");
			return;
		}
		if (st == TALLY_TLS_AGAIN)
			return;
		if (c->outgoing) {
			tlsnet_connected(c);
			if (c->closing)
				return;
		} else {
			c->state = TLSNET_PREAMBLE;
		}
	}
	if (tlsnet_plaintext(c) == 0)
		tlsnet_flow(c);
}

/* Plaintext from raft. EOF: raft closed its end. */
static void tlsnet_pipe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct tlsnet_conn *c = s->data;
	int rc = 0;
	if (n > 0 && !c->closing)
		rc = tally_tls_write(c->tls, buf->base, (size_t)n) == 0 ? tlsnet_flush(c) : -1;
	free(buf->base);
	if (c->closing || n == 0)
		return;
	if (n < 0 || rc != 0) {
		tlsnet_close(c, RAFT_NOCONNECTION);
		return;
	}
	tlsnet_flow(c);
}

static void tlsnet_deadline(uv_timer_t *timer)
{
	struct tlsnet_conn *c = timer->data;
	tlsnet_refuse(c, c->state == TLSNET_CONNECTING ? "no connection within the deadline"
						       : "handshake not complete within the deadline");
}

static struct tlsnet_conn *tlsnet_conn_new(struct tally_transport *t, bool outgoing)
{
	struct tlsnet_conn *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	c->tls = tally_tls_new(t->tls, outgoing ? TALLY_TLS_PEER_CONNECT : TALLY_TLS_PEER_ACCEPT);
	if (c->tls == NULL) {
		free(c);
		return NULL;
	}
	c->t = t;
	c->outgoing = outgoing;
	c->state = outgoing ? TLSNET_CONNECTING : TLSNET_HANDSHAKE;
	uv_tcp_init(t->loop, &c->tcp);
	uv_timer_init(t->loop, &c->timer);
	c->tcp.data = c->timer.data = c->pipe.data = c;
	c->handles = 2;
	c->next = t->conns;
	if (t->conns != NULL)
		t->conns->prev = c;
	t->conns = c;
	uv_timer_start(&c->timer, tlsnet_deadline, TLSNET_HANDSHAKE_MS, 0);
	return c;
}

static void tlsnet_peer_name(struct tlsnet_conn *c)
{
	struct sockaddr_storage sa;
	int len = sizeof(sa);
	char host[INET6_ADDRSTRLEN] = "?";
	int port = 0;
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &len) == 0) {
		if (sa.ss_family == AF_INET) {
			uv_ip4_name((struct sockaddr_in *)&sa, host, sizeof(host));
			port = ntohs(((struct sockaddr_in *)&sa)->sin_port);
		} else {
			uv_ip6_name((struct sockaddr_in6 *)&sa, host, sizeof(host));
			port = ntohs(((struct sockaddr_in6 *)&sa)->sin6_port);
		}
	}
	snprintf(c->peer, sizeof(c->peer), "%s:%d", host, port);
}

static void tlsnet_accepted(uv_stream_t *listener, int status)
{
	struct tally_transport *t = listener->data;
	if (status != 0 || t->close_cb != NULL)
		return;
	struct tlsnet_conn *c = tlsnet_conn_new(t, false);
	if (c == NULL)
		return; /* the connection stays in the backlog; the peer retries */
	if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
		tlsnet_close(c, 0);
		return;
	}
	uv_tcp_nodelay(&c->tcp, 1);
	tlsnet_peer_name(c);
	tlsnet_flow(c);
}

static void tlsnet_tcp_connected(uv_connect_t *req, int status)
{
	struct tlsnet_conn *c = req->data;
	if (c->closing)
		return;
	if (status != 0) {
		tlsnet_close(c, RAFT_NOCONNECTION); /* peer down: raft retries, no log line */
		return;
	}
	uv_tcp_nodelay(&c->tcp, 1);
	c->state = TLSNET_HANDSHAKE;
	(void)tally_tls_handshake(c->tls); /* the ClientHello */
	if (tlsnet_flush(c) != 0) {
		tlsnet_close(c, RAFT_NOCONNECTION);
		return;
	}
	tlsnet_flow(c);
}

static int tlsnet_init(struct raft_uv_transport *outer, raft_id id, const char *address)
{
	struct tally_transport *t = outer->impl;
	assert(t != NULL && id > 0 && address != NULL);
	if (strlen(address) > TALLY_ADDRESS_BYTES_MAX) {
		strcpy(outer->errmsg, "address too long");
		return RAFT_NAMETOOLONG;
	}
	strcpy(t->address, address);
	t->id = id;
	return tally_address_raft(address, t->raft_address, sizeof(t->raft_address));
}

static int tlsnet_listen(struct raft_uv_transport *outer, raft_uv_accept_cb cb)
{
	struct tally_transport *t = outer->impl;
	struct sockaddr_storage sa;
	t->accept_cb = cb;
	int rv = tally_address_sockaddr(t->raft_address, &sa);
	if (rv == 0) {
		uv_tcp_init(t->loop, &t->listener);
		t->listener.data = t;
		t->listener_open = true;
		rv = uv_tcp_bind(&t->listener, (struct sockaddr *)&sa, 0);
		if (rv == 0)
			rv = uv_listen((uv_stream_t *)&t->listener, TLSNET_BACKLOG, tlsnet_accepted);
	}
	if (rv != 0) {
		snprintf(outer->errmsg, sizeof(outer->errmsg), "listen on %.64s: %s", t->raft_address,
			 uv_strerror(rv));
		return RAFT_IOERR;
	}
	return 0;
}

static int tlsnet_connect(struct raft_uv_transport *outer, struct raft_uv_connect *req,
			  raft_id id, const char *address, raft_uv_connect_cb cb)
{
	struct tally_transport *t = outer->impl;
	assert(req != NULL && cb != NULL && address != NULL);
	char raft_address[TALLY_ADDRESS_BYTES_MAX + 1];
	struct sockaddr_storage sa;
	if (tally_address_raft(address, raft_address, sizeof(raft_address)) != 0 ||
	    tally_address_sockaddr(raft_address, &sa) != 0) {
		strcpy(outer->errmsg, "bad peer address");
		return RAFT_NOCONNECTION;
	}
	struct tlsnet_conn *c = tlsnet_conn_new(t, true);
	if (c == NULL) {
		strcpy(outer->errmsg, "out of memory");
		return RAFT_NOMEM;
	}
	c->id = id;
	snprintf(c->peer, sizeof(c->peer), "%.63s", raft_address);
	req->cb = cb;
	c->req = req;
	c->connect.data = c;
	int rv = uv_tcp_connect(&c->connect, &c->tcp, (struct sockaddr *)&sa, tlsnet_tcp_connected);
	if (rv != 0) {
		c->req = NULL; /* answered by the return value, not the callback */
		tlsnet_close(c, 0);
		strcpy(outer->errmsg, "connect failed");
		return RAFT_NOCONNECTION;
	}
	return 0;
}

static void tlsnet_listener_closed(uv_handle_t *h)
{
	struct tally_transport *t = h->data;
	t->listener_open = false;
	tlsnet_maybe_closed(t);
}

static void tlsnet_transport_close(struct raft_uv_transport *outer, raft_uv_transport_close_cb cb)
{
	struct tally_transport *t = outer->impl;
	assert(t->close_cb == NULL && cb != NULL);
	t->close_cb = cb;
	for (struct tlsnet_conn *c = t->conns; c != NULL; c = c->next)
		tlsnet_close(c, RAFT_CANCELED);
	if (t->listener_open)
		uv_close((uv_handle_t *)&t->listener, tlsnet_listener_closed);
	else
		tlsnet_maybe_closed(t);
}

void tally_tlsnet_setup(struct tally_transport *t)
{
	assert(t != NULL && t->tls != NULL);
	t->outer.impl = t;
	t->outer.init = tlsnet_init;
	t->outer.listen = tlsnet_listen;
	t->outer.connect = tlsnet_connect;
	t->outer.close = tlsnet_transport_close;
}
