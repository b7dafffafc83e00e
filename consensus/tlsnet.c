/*
 * consensus/tlsnet — raft's transport over mutually authenticated TLS 1.3.
 *
 * Every connection between two nodes runs a TLS session (rpc/tls.h) in which both ends
 * present a node certificate of the cluster's CA; then the connecting side sends a
 * preamble (magic, version, its raft id, its full "raft|client" address). A connection
 * carries raft's messages only when
 *
 *   - outgoing: the certificate of whoever answered names the id raft sends to;
 *   - incoming: the id in the preamble is the one the peer's certificate names,
 *
 * so no peer can speak for another id, and a peer without a certificate of the CA
 * never reaches the decoder. Every refused connection is logged with the peer's
 * address and the reason.
 *
 * raft_uv writes each message to a stream of its own and reads each one in three
 * reads. Over TLS that stream would be one end of a socketpair, pumped to and from the
 * TLS session here: three more system calls and a wake-up per message each way. So
 * the node gives raft_io->send to this file (tally_tlsnet_send) and the messages go
 * straight into the TLS session, encoded by raftwire.c; an incoming connection decodes
 * them and hands them to raft's receive callback (tally_tlsnet_receive_to). raft_uv
 * still calls listen and close on this transport, never connect.
 *
 * Sending, as raft_uv does it: one outgoing connection per peer, made on the first
 * message. Messages wait in the peer's queue while it connects (an AppendEntries
 * replaces one queued that it carries all of: tlsnet_supersede); a failed attempt
 * drops all but the TLSNET_PENDING_MAX newest (raft is told RAFT_NOCONNECTION) and
 * tries again after TLSNET_RETRY_MS; a connection that breaks is made again at once.
 * A message is encrypted as the socket drains (at most TLSNET_QUEUE_MAX bytes of
 * ciphertext queued per connection), so a snapshot is never copied whole, and at most
 * TLSNET_TURN_BYTES of a peer's messages go into its session per loop turn: raft 0.15
 * sends a follower that fell behind all it lacks in one message, and encrypting that
 * whole held the loop (every client's request behind it) for over 100 ms; and it sends
 * that message again at every heartbeat until the follower answers, which copies are
 * not sent (tlsnet_resend). raft's send callback runs once all of a message went into
 * the TLS session, from the next loop turn.
 *
 * Have-lists. A node whose handshake agreed on TALLY_TLS_ALPN_RAFT with the node it
 * connects to sends it, before any other message, a Have (raftwire.h): the closed
 * journal segments this node holds as links, and again whenever a snapshot linked
 * more. The receiving node keeps it on that connection, and only while it is open;
 * an InstallSnapshot it sends to that node then leaves out the segments the list
 * names by first seq, length and hash (ledger.h, the appendix). A node that receives
 * an InstallSnapshot leaving out a segment it no longer holds (its link gone or
 * replaced since it said so) declines it before raft sees it: it sends a fresh Have
 * marked declined, on which the sender's raft is made to send the snapshot again at
 * once (raft015.c), and the snapshot then carries what is missing.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "consensus/bigbuf.h"
#include "consensus/raftwire.h"
#include "consensus/transport.h"
#include "ledger/ledger.h"
#include "rpc/stream.h"
#include "rpc/tls.h"

#define TLSNET_MAGIC 0x544c5952u         /* "TLYR": a Tally raft preamble */
#define TLSNET_VERSION 2u                /* 2: raft's messages in raftwire.h's format */
#define TLSNET_PREAMBLE_FIXED 14         /* magic 4, version 1, id 8, address length 1 */
#define TLSNET_HANDSHAKE_MS 5000         /* TCP connect + TLS + preamble, each connection */
#define TLSNET_QUEUE_MAX (4u << 20)      /* ciphertext queued on a socket before encrypting stops */
#define TLSNET_READ_BYTES (64u << 10)    /* one read, one decrypt, one encrypt */
#define TLSNET_TURN_BYTES (256u << 10)   /* plaintext one peer's messages put into its
					  * TLS session in one loop turn */
#define TLSNET_RESEND_MIN_BYTES (1u << 20) /* an AppendEntries this large is not sent again */
#define TLSNET_RESEND_HOLD_MS 1000       /* ... until the peer answers, or this long
					  * (t->resend_hold_ms) */
#define TLSNET_BACKLOG 64
#define TLSNET_PENDING_MAX 3u            /* messages kept for a peer after a failed attempt */
#define TLSNET_RETRY_MS 1000             /* between attempts to connect to a peer */

enum tlsnet_state { TLSNET_CONNECTING, TLSNET_HANDSHAKE, TLSNET_PREAMBLE, TLSNET_PUMPING };
enum tlsnet_reading { TLSNET_READ_PREFIX, TLSNET_READ_HEADER, TLSNET_READ_PAYLOAD };

/* What tells two AppendEntries of one leader apart: the same term and previous entry
 * mean the same entries, as far as the shorter one goes (raft's log matching). */
struct tlsnet_append {
	raft_term term, prev_term;
	raft_index prev_index;
	unsigned n_entries;
	uint64_t bytes;                  /* the entries' */
};

/* One message on its way: its prefix and header (ours), then its payload pieces
 * (raft's, alive until raft's send callback). */
struct tlsnet_send {
	struct tlsnet_send *next;
	struct raft_io_send *req;
	int status;                      /* for raft's callback, once done */
	bool is_append;                  /* an AppendEntries, as `append` says */
	struct tlsnet_append append;
	unsigned n_pieces, piece;        /* pieces, and the one being sent */
	size_t offset;                   /* bytes of that piece already sent */
	struct tally_raftwire_piece *pieces; /* head, then the payload's: inside this allocation */
	struct tally_snapshot_appendix *appendix; /* after an InstallSnapshot's bytes, or NULL */
	uint8_t head[];                  /* prefix + header; pieces after it */
};

/* Where raft's messages to one server go. */
struct tlsnet_peer {
	struct tlsnet_peer *next;
	struct tally_transport *t;
	raft_id id;
	char address[TALLY_ADDRESS_BYTES_MAX + 1];
	struct tlsnet_conn *conn;        /* connecting or connected; NULL: none */
	uv_timer_t retry;
	bool retry_armed;
	struct tlsnet_send *head, *tail; /* waiting or being sent, oldest first */
	unsigned queued;
	bool have_due;                   /* a Have goes before the next message */
	bool declined;                   /* and says an InstallSnapshot was declined */
	bool turn_spent;                 /* sent TLSNET_TURN_BYTES this loop turn */
	struct {                         /* the last large AppendEntries queued (tlsnet_resend) */
		bool on;
		struct tlsnet_append append;
		uint64_t at_ms;
	} big;
};

struct tlsnet_conn {
	struct tally_transport *t;
	struct tlsnet_conn *next, *prev; /* t->conns */
	struct tlsnet_peer *owner;       /* outgoing: the peer it sends to, until closed */
	uv_tcp_t tcp;
	uv_timer_t timer;                /* handshake deadline */
	uv_connect_t connect;
	struct tally_tls *tls;
	enum tlsnet_state state;
	bool outgoing, closing, tcp_reading;
	bool have_ok;                    /* the handshake agreed on TALLY_TLS_ALPN_RAFT */
	unsigned handles;                /* libuv handles still open */
	raft_id id;                      /* outgoing: the id asked for; incoming: the peer's */
	size_t tcp_queued;               /* ciphertext bytes in uv_write requests */
	/* Incoming: the message being read. */
	enum tlsnet_reading reading;
	struct tally_raftwire_sizes sizes;
	uint8_t prefix[TALLY_RAFTWIRE_PREFIX_BYTES];
	uint8_t *header, *payload;       /* malloc; raft's heap (raft takes it) */
	int spool_fd;                    /* a snapshot's payload being written; -1: none */
	uint64_t got;                    /* bytes of the current part read */
	uint8_t preamble[TLSNET_PREAMBLE_FIXED + TALLY_ADDRESS_BYTES_MAX];
	size_t preamble_len;
	char peer[64];                   /* "ip:port" for log lines */
	char address[TALLY_ADDRESS_BYTES_MAX + 1]; /* incoming: the peer's full address */
	struct tally_segment_held *have; /* incoming: the peer's last Have; NULL: none */
	size_t n_have;
	bool have_known;                 /* a Have arrived (it may name none) */
};

struct tlsnet_write {
	uv_write_t w;
	struct tlsnet_conn *c;
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

static void tlsnet_closer_closed(uv_handle_t *h)
{
	struct tally_transport *t = h->data;
	raft_uv_transport_close_cb cb = t->close_cb;
	assert(cb != NULL && t->closer_open);
	t->closer_open = false;
	t->close_cb = NULL;
	cb(&t->outer);
}

/* Tells raft_uv the transport is closed once every handle of ours is, one close phase
 * after the last of them (the closer): raft_uv 0.15 ends its close when its transport
 * is closed and nothing else it counts is pending, but it does not count the handles
 * of the log segment writer it closes just before the transport; their close
 * callbacks, run after ours in the same phase (libuv runs a phase's closes last to
 * first), then end its close a second time, after the node has freed it. Handles
 * closed from a close callback go to the next phase, after the writer's. */
static void tlsnet_maybe_closed(struct tally_transport *t)
{
	if (t->close_cb == NULL || t->conns != NULL || t->listener_open || t->peers != NULL ||
	    t->turn_idle_open)
		return;
	if (t->closer_open) {
		if (!uv_is_closing((uv_handle_t *)&t->closer))
			uv_close((uv_handle_t *)&t->closer, tlsnet_closer_closed);
		return;
	}
	raft_uv_transport_close_cb cb = t->close_cb; /* never listened: raft_uv closes in its close */
	t->close_cb = NULL;
	cb(&t->outer);
}

/* ---- the next loop turn: raft's send callbacks, and sending that gave way ---- */

static void tlsnet_peer_pump(struct tlsnet_peer *p);

/* Runs raft's callbacks for the messages done, then goes on with each peer whose
 * sending gave way to the loop's other work last turn (tlsnet_peer_pump). */
static void tlsnet_turn_run(uv_idle_t *idle)
{
	struct tally_transport *t = idle->data;
	uv_idle_stop(idle);
	struct tlsnet_send *s = t->done_head;
	t->done_head = t->done_tail = NULL;
	while (s != NULL) {
		struct tlsnet_send *next = s->next;
		struct raft_io_send *req = s->req;
		int status = s->status;
		tally_ledger_snapshot_appendix_free(s->appendix);
		free(s->appendix);
		free(s);
		if (req != NULL && req->cb != NULL)
			req->cb(req, status);
		s = next;
	}
	if (t->close_cb != NULL)
		return;
	for (struct tlsnet_peer *p = t->peers; p != NULL; p = p->next)
		if (p->turn_spent) {
			p->turn_spent = false;
			tlsnet_peer_pump(p);
		}
}

/* Has tlsnet_turn_run run on the next loop turn. */
static void tlsnet_turn_next(struct tally_transport *t)
{
	assert(!t->turn_idle_closing);
	if (!t->turn_idle_open) {
		uv_idle_init(t->loop, &t->turn_idle);
		t->turn_idle.data = t;
		t->turn_idle_open = true;
	}
	uv_idle_start(&t->turn_idle, tlsnet_turn_run);
}

static void tlsnet_done(struct tally_transport *t, struct tlsnet_send *s, int status)
{
	s->status = status;
	s->next = NULL;
	if (t->done_tail != NULL)
		t->done_tail->next = s;
	else
		t->done_head = s;
	t->done_tail = s;
	tlsnet_turn_next(t);
}

/* ---- connections ---- */

static void tlsnet_peer_lost(struct tlsnet_peer *p, bool was_up);

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
	if (c->spool_fd >= 0)
		close(c->spool_fd);
	free(c->header);
	raft_free(c->payload);
	free(c->have);
	free(c);
	tlsnet_maybe_closed(t);
}

/* Ends a connection. An outgoing one leaves its peer, which connects again. */
static void tlsnet_close(struct tlsnet_conn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	uv_close((uv_handle_t *)&c->timer, tlsnet_handle_closed);
	uv_close((uv_handle_t *)&c->tcp, tlsnet_handle_closed);
	struct tlsnet_peer *p = c->owner;
	if (p != NULL) {
		assert(p->conn == c);
		c->owner = NULL;
		p->conn = NULL;
		tlsnet_peer_lost(p, c->state == TLSNET_PUMPING);
	}
}

/* Logs why a connection is refused and ends it. */
static void tlsnet_refuse(struct tlsnet_conn *c, const char *why)
{
	tlsnet_log(c->t, "raft connection %s %s refused: %s", c->outgoing ? "to" : "from", c->peer, why);
	tlsnet_close(c);
}

static void tlsnet_read_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	char *p = malloc(TLSNET_READ_BYTES);
	*buf = uv_buf_init(p, p != NULL ? TLSNET_READ_BYTES : 0);
}

static void tlsnet_tcp_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void tlsnet_read_start(struct tlsnet_conn *c)
{
	if (!c->closing && !c->tcp_reading) {
		c->tcp_reading = true;
		uv_read_start((uv_stream_t *)&c->tcp, tlsnet_read_alloc, tlsnet_tcp_read);
	}
}

static void tlsnet_written(uv_write_t *w, int status)
{
	struct tlsnet_write *wr = (struct tlsnet_write *)w;
	struct tlsnet_conn *c = wr->c;
	assert(c->tcp_queued >= wr->len);
	c->tcp_queued -= wr->len;
	free(wr);
	if (c->closing)
		return;
	if (status != 0) {
		tlsnet_close(c);
		return;
	}
	if (c->owner != NULL)
		tlsnet_peer_pump(c->owner);
}

/* Writes len bytes of ciphertext: what the socket takes at once (rpc/stream.h), the
 * rest queued (copied). */
static int tlsnet_send_tcp(struct tlsnet_conn *c, const void *data, size_t len)
{
	uv_stream_t *s = (uv_stream_t *)&c->tcp;
	size_t done = tally_stream_write_now(s, data, len);
	if (done == len)
		return 0;
	data = (const uint8_t *)data + done;
	len -= done;
	struct tlsnet_write *wr = malloc(sizeof(*wr) + len);
	if (wr == NULL)
		return -1;
	wr->c = c;
	wr->len = len;
	memcpy(wr->data, data, len);
	uv_buf_t b = uv_buf_init((char *)wr->data, (unsigned)len);
	if (uv_write(&wr->w, s, &b, 1, tlsnet_written) != 0) {
		free(wr);
		return -1;
	}
	c->tcp_queued += len;
	return 0;
}

/* Sends whatever ciphertext the TLS session has produced. */
static int tlsnet_flush(struct tlsnet_conn *c)
{
	uint8_t buf[TLSNET_READ_BYTES];
	size_t n;
	while ((n = tally_tls_take(c->tls, buf, sizeof(buf))) > 0)
		if (tlsnet_send_tcp(c, buf, n) != 0)
			return -1;
	return 0;
}

/* Encrypts and sends len bytes of plaintext. */
static int tlsnet_seal(struct tlsnet_conn *c, const void *data, size_t len)
{
	if (tally_tls_write(c->tls, data, len) != 0)
		return -1;
	c->t->bytes_sealed += len;
	return tlsnet_flush(c);
}

/* ---- sending: each peer's queue into its connection's TLS session ---- */

/* The last Have node `id` sent on a connection still open, or NULL. */
static const struct tlsnet_conn *tlsnet_have_of(const struct tally_transport *t, raft_id id)
{
	for (const struct tlsnet_conn *c = t->conns; c != NULL; c = c->next) /* newest first */
		if (!c->outgoing && !c->closing && c->id == id && c->have_known)
			return c;
	return NULL;
}

/* What an InstallSnapshot carries after the snapshot's bytes: the closed segments it
 * names (ledger.h) but those the receiver said it holds, or nothing. NULL with *rc 0:
 * nothing to add. */
static struct tally_snapshot_appendix *tlsnet_appendix(const struct tally_transport *t,
							 const struct raft_message *m, int *rc)
{
	*rc = 0;
	if (m->type != RAFT_IO_INSTALL_SNAPSHOT || t->links_dir == NULL)
		return NULL;
	struct tally_snapshot_appendix *a = calloc(1, sizeof(*a));
	if (a == NULL) {
		*rc = RAFT_NOMEM;
		return NULL;
	}
	const struct raft_buffer *d = &m->install_snapshot.data;
	const struct tlsnet_conn *have = tlsnet_have_of(t, m->server_id);
	int lrc = tally_ledger_snapshot_appendix(d->base, d->len, t->links_dir,
						 have != NULL ? have->have : NULL,
						 have != NULL ? have->n_have : 0, a);
	if (lrc == 0 && a->bytes > 0)
		return a;
	free(a);
	*rc = lrc == 0 ? 0 : lrc == TALLY_ENOMEM ? RAFT_NOMEM : RAFT_IOERR;
	return NULL;
}

/* A message as pieces: its head, then its payload's (raftwire.h), then an appendix. */
static struct tlsnet_send *tlsnet_send_new(const struct tally_transport *t,
					   const struct raft_message *m, struct raft_io_send *req,
					   int *rc)
{
	struct tally_snapshot_appendix *a = tlsnet_appendix(t, m, rc);
	if (*rc != 0)
		return NULL;
	struct raft_message sized = *m; /* the payload's length counts the appendix */
	if (a != NULL) /* (in place of the one a received snapshot came with) */
		sized.install_snapshot.data.len = a->snap_len + (size_t)a->bytes;
	unsigned n_raft = tally_raftwire_piece_count(m);
	unsigned n_pieces = 1 + n_raft + (a != NULL ? (unsigned)a->n_pieces : 0);
	size_t head = tally_raftwire_head_bytes(m);
	size_t pieces_at = (head + 7) & ~(size_t)7;
	struct tlsnet_send *s = malloc(sizeof(*s) + pieces_at + n_pieces * sizeof(*s->pieces));
	if (s == NULL) {
		tally_ledger_snapshot_appendix_free(a);
		free(a);
		*rc = RAFT_NOMEM;
		return NULL;
	}
	memset(s, 0, sizeof(*s));
	s->req = req;
	s->n_pieces = n_pieces;
	s->appendix = a;
	s->pieces = (struct tally_raftwire_piece *)(s->head + pieces_at);
	tally_raftwire_head_write(&sized, s->head);
	s->pieces[0] = (struct tally_raftwire_piece){s->head, head};
	tally_raftwire_pieces(m, s->pieces + 1);
	if (a != NULL)
		s->pieces[1].len = a->snap_len;
	for (size_t i = 0; a != NULL && i < a->n_pieces; i++)
		s->pieces[1 + n_raft + i] = (struct tally_raftwire_piece){a->pieces[i].base,
									 a->pieces[i].len};
	return s;
}

/* Copies up to cap bytes of s into buf; returns how many. s is done when piece ==
 * n_pieces. */
static size_t tlsnet_send_take(struct tlsnet_send *s, uint8_t *buf, size_t cap)
{
	size_t took = 0;
	while (took < cap && s->piece < s->n_pieces) {
		const struct tally_raftwire_piece *pc = &s->pieces[s->piece];
		size_t n = pc->len - s->offset;
		if (n > cap - took)
			n = cap - took;
		memcpy(buf + took, pc->base + s->offset, n);
		took += n;
		s->offset += n;
		if (s->offset == pc->len) {
			s->piece++;
			s->offset = 0;
		}
	}
	return took;
}

/* Whether some of s went into the TLS session already. */
static bool tlsnet_send_begun(const struct tlsnet_send *s)
{
	return s->piece > 0 || s->offset > 0;
}

static struct tlsnet_send *tlsnet_peer_pop(struct tlsnet_peer *p)
{
	struct tlsnet_send *s = p->head;
	assert(s != NULL && p->queued > 0);
	p->head = s->next;
	if (p->head == NULL)
		p->tail = NULL;
	p->queued--;
	return s;
}

/* Sends this node's Have on p's connection (one that agreed on it). */
static int tlsnet_have_seal(struct tlsnet_peer *p, struct tlsnet_conn *c)
{
	struct tally_transport *t = p->t;
	assert(c->have_ok && t->held_read);
	size_t len = tally_raftwire_have_bytes(t->n_held);
	uint8_t *msg = malloc(len);
	if (msg == NULL)
		return -1;
	tally_raftwire_have_write(p->declined ? TALLY_RAFTWIRE_HAVE_DECLINED : 0, t->held, t->n_held,
				  msg);
	int rc = tlsnet_seal(c, msg, len);
	free(msg);
	p->have_due = p->declined = false;
	return rc;
}

/* Whether a Have may go now: no message is half sent. */
static bool tlsnet_have_now(const struct tlsnet_peer *p)
{
	return p->have_due && (p->head == NULL || !tlsnet_send_begun(p->head));
}

/* Encrypts queued messages into the connection while its socket keeps up; several
 * small messages share one TLS record. A Have that is due goes between two messages.
 * At most TLSNET_TURN_BYTES go in per loop turn: the rest waits for the next turn,
 * so that a catch-up's many megabytes do not hold the loop (and the requests, the
 * other peers and the timers behind it) for the whole of their encryption. */
static void tlsnet_peer_pump(struct tlsnet_peer *p)
{
	struct tlsnet_conn *c = p->conn;
	if (c == NULL || c->closing || c->state != TLSNET_PUMPING || p->turn_spent)
		return;
	uint8_t buf[TLSNET_READ_BYTES];
	size_t fill = 0, sealed = 0;
	while ((p->head != NULL || p->have_due) && c->tcp_queued < TLSNET_QUEUE_MAX) {
		if (sealed >= TLSNET_TURN_BYTES) {
			p->turn_spent = true;
			p->t->send_turns_yielded++;
			tlsnet_turn_next(p->t);
			break;
		}
		if (tlsnet_have_now(p)) {
			if ((fill > 0 && tlsnet_seal(c, buf, fill) != 0) || tlsnet_have_seal(p, c) != 0) {
				tlsnet_close(c);
				return;
			}
			sealed += fill + tally_raftwire_have_bytes(p->t->n_held);
			fill = 0;
			continue;
		}
		if (p->head == NULL)
			break;
		fill += tlsnet_send_take(p->head, buf + fill, sizeof(buf) - fill);
		if (p->head->piece == p->head->n_pieces)
			tlsnet_done(p->t, tlsnet_peer_pop(p), 0);
		if (fill == sizeof(buf) || p->head == NULL) {
			if (tlsnet_seal(c, buf, fill) != 0) {
				tlsnet_close(c);
				return;
			}
			sealed += fill;
			fill = 0;
		}
	}
	assert(fill == 0); /* the loop seals whenever a message ends or buf is full */
}

/* Fails the oldest messages until `keep` are left. */
static void tlsnet_peer_drop(struct tlsnet_peer *p, unsigned keep, int status)
{
	while (p->queued > keep)
		tlsnet_done(p->t, tlsnet_peer_pop(p), status);
}

static void tlsnet_peer_connect(struct tlsnet_peer *p);

static void tlsnet_peer_retry(uv_timer_t *timer)
{
	struct tlsnet_peer *p = timer->data;
	p->retry_armed = false;
	if ((p->head != NULL || p->declined) && p->conn == NULL)
		tlsnet_peer_connect(p);
}

/* The peer's connection ended: a message half sent is lost; one that was up is made
 * again at once, a failed attempt is tried again after TLSNET_RETRY_MS. */
static void tlsnet_peer_lost(struct tlsnet_peer *p, bool was_up)
{
	struct tally_transport *t = p->t;
	if (p->head != NULL && tlsnet_send_begun(p->head))
		tlsnet_done(t, tlsnet_peer_pop(p), RAFT_NOCONNECTION);
	p->have_due = false; /* the next connection sends one first */
	p->big.on = false;   /* what was sent may be lost: raft's next copy goes */
	if (t->close_cb != NULL)
		return;
	if (was_up) {
		if (p->head != NULL || p->declined)
			tlsnet_peer_connect(p);
		return;
	}
	t->connect_failures++;
	tlsnet_peer_drop(p, TLSNET_PENDING_MAX, RAFT_NOCONNECTION);
	if (!p->retry_armed) {
		p->retry_armed = true;
		uv_timer_start(&p->retry, tlsnet_peer_retry, TLSNET_RETRY_MS, 0);
	}
}

static void tlsnet_peer_closed(uv_handle_t *h)
{
	struct tlsnet_peer *p = h->data;
	struct tally_transport *t = p->t;
	struct tlsnet_peer **at = &t->peers;
	while (*at != p)
		at = &(*at)->next;
	*at = p->next;
	free(p);
	tlsnet_maybe_closed(t);
}

/* The peer of `id`, or NULL. */
static struct tlsnet_peer *tlsnet_peer_find(struct tally_transport *t, raft_id id)
{
	struct tlsnet_peer *p = t->peers;
	while (p != NULL && p->id != id)
		p = p->next;
	return p;
}

/* The peer of `id`, created on its first message; a new address drops the old
 * connection and what was queued for it, as raft_uv does. */

static struct tlsnet_peer *tlsnet_peer_get(struct tally_transport *t, raft_id id, const char *address)
{
	struct tlsnet_peer *p = tlsnet_peer_find(t, id);
	if (p == NULL) {
		p = calloc(1, sizeof(*p));
		if (p == NULL)
			return NULL;
		p->t = t;
		p->id = id;
		snprintf(p->address, sizeof(p->address), "%s", address);
		uv_timer_init(t->loop, &p->retry);
		p->retry.data = p;
		p->next = t->peers;
		t->peers = p;
	} else if (strcmp(p->address, address) != 0) {
		tlsnet_peer_drop(p, 0, RAFT_NOCONNECTION);
		snprintf(p->address, sizeof(p->address), "%s", address);
		if (p->conn != NULL)
			tlsnet_close(p->conn);
	}
	return p;
}

/* ---- this node's Have ---- */

/* Reads which links this node holds; returns whether that changed. */
static bool tlsnet_held_read(struct tally_transport *t)
{
	struct tally_segment_held *h;
	size_t n;
	int rc = tally_ledger_segments_held(t->links_dir, &h, &n);
	if (rc != 0) {
		tlsnet_log(t, "reading the links in %s: %s; the last list stands", t->links_dir,
			   tally_strerror(rc));
		return false;
	}
	bool same = t->held_read && n == t->n_held &&
		    (n == 0 || memcmp(h, t->held, n * sizeof(*h)) == 0);
	free(t->held);
	t->held = h;
	t->n_held = n;
	t->held_read = true;
	return !same;
}

/* p's connection sends a Have before its next message, where it agreed on them. */
static void tlsnet_have_due(struct tlsnet_peer *p)
{
	struct tlsnet_conn *c = p->conn;
	if (c != NULL && c->state == TLSNET_PUMPING && c->have_ok) {
		p->have_due = true;
		tlsnet_peer_pump(p);
	} else if (c == NULL && p->declined && !p->retry_armed) {
		tlsnet_peer_connect(p); /* its Have goes first (tlsnet_up) */
	}
}

void tally_tlsnet_held_changed(struct tally_transport *t)
{
	assert(t != NULL);
	if (t->tls == NULL || t->links_dir == NULL || t->close_cb != NULL || !tlsnet_held_read(t))
		return;
	for (struct tlsnet_peer *p = t->peers; p != NULL; p = p->next)
		tlsnet_have_due(p);
}

/* Whether m is an AppendEntries; if so, what tells it apart, in *a. */
static bool tlsnet_append_of(const struct raft_message *m, struct tlsnet_append *a)
{
	if (m->type != RAFT_IO_APPEND_ENTRIES)
		return false;
	const struct raft_append_entries *ae = &m->append_entries;
	*a = (struct tlsnet_append){.term = ae->term, .prev_term = ae->prev_log_term,
				    .prev_index = ae->prev_log_index, .n_entries = ae->n_entries};
	for (unsigned i = 0; i < ae->n_entries; i++)
		a->bytes += ae->entries[i].buf.len;
	return true;
}

static bool tlsnet_same_prev(const struct tlsnet_append *x, const struct tlsnet_append *y)
{
	return x->term == y->term && x->prev_index == y->prev_index && x->prev_term == y->prev_term;
}

/* Whether `a` is raft sending p again, whole, a large AppendEntries p has not
 * answered yet; a large one that is not becomes the one p's next copies are held
 * against. raft 0.15 sends a follower in probe state every entry it lacks in one
 * message, and sends it again at every heartbeat until the follower answers; after a
 * restart that is tens of megabytes every 50 ms, each copy encrypted on this loop and
 * decoded on the follower's while it is still storing the first. So the copy is not
 * sent (raft is told it was: a message lost on the way is one it is ready for). It
 * goes again once p answers, its connection ends or t->resend_hold_ms passed. */
static bool tlsnet_resend(struct tlsnet_peer *p, const struct tlsnet_append *a)
{
	uint64_t now = uv_now(p->t->loop);
	if (p->big.on && (p->conn == NULL || now - p->big.at_ms >= p->t->resend_hold_ms))
		p->big.on = false;
	if (p->big.on && a->n_entries > 0 && tlsnet_same_prev(a, &p->big.append)) {
		p->t->resends_skipped++;
		p->t->resend_bytes_skipped += a->bytes;
		return true;
	}
	if (a->bytes >= TLSNET_RESEND_MIN_BYTES) {
		p->big.on = true;
		p->big.append = *a;
		p->big.at_ms = now;
	}
	return false;
}

/* Drops from p's queue each AppendEntries not yet begun that `a`, queued after it,
 * carries all of: the same term and previous entry, no more entries (so the same
 * ones; and a's commit index is no earlier: raft's only grows). While p cannot be
 * reached, raft 0.15 in probe state queues a copy of one catch-up at every heartbeat,
 * each a little longer; sent on reconnection one after another, they were tens of
 * megabytes for a follower back after ten seconds. raft's callback of a dropped one
 * runs with status 0: to raft it is a message lost on the way. */
static void tlsnet_supersede(struct tlsnet_peer *p, const struct tlsnet_append *a)
{
	struct tlsnet_send **at = &p->head, *before = NULL;
	while (*at != NULL) {
		struct tlsnet_send *q = *at;
		if (tlsnet_send_begun(q) || !q->is_append || !tlsnet_same_prev(&q->append, a) ||
		    q->append.n_entries > a->n_entries) {
			before = q;
			at = &q->next;
			continue;
		}
		*at = q->next;
		if (p->tail == q)
			p->tail = before;
		p->queued--;
		p->t->appends_superseded++;
		p->t->append_bytes_superseded += q->append.bytes;
		tlsnet_done(p->t, q, 0);
	}
}

/* Answers raft's req for a message not sent, from the next loop turn. */
static int tlsnet_skip(struct tally_transport *t, struct raft_io_send *req, raft_io_send_cb cb)
{
	struct tlsnet_send *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return RAFT_NOMEM;
	s->req = req;
	req->cb = cb;
	tlsnet_done(t, s, 0);
	return 0;
}

int tally_tlsnet_send(struct tally_transport *t, struct raft_io_send *req, const struct raft_message *m,
		      raft_io_send_cb cb)
{
	assert(t != NULL && t->tls != NULL && req != NULL && m != NULL && t->close_cb == NULL);
	if (strlen(m->server_address) > TALLY_ADDRESS_BYTES_MAX)
		return RAFT_NAMETOOLONG;
	struct tlsnet_peer *p = tlsnet_peer_get(t, m->server_id, m->server_address);
	struct tlsnet_append a;
	bool is_append = tlsnet_append_of(m, &a);
	if (p != NULL && is_append && tlsnet_resend(p, &a))
		return tlsnet_skip(t, req, cb);
	int rc = p != NULL ? 0 : RAFT_NOMEM;
	struct tlsnet_send *s = p != NULL ? tlsnet_send_new(t, m, req, &rc) : NULL;
	if (s == NULL)
		return rc != 0 ? rc : RAFT_NOMEM;
	if (is_append) {
		tlsnet_supersede(p, &a);
		s->is_append = true;
		s->append = a;
	}
	if (s->appendix != NULL) {
		t->snapshot_appendix_bytes += s->appendix->bytes;
		t->snapshot_segments_held += s->appendix->held;
		t->snapshot_segment_bytes_held += s->appendix->held_bytes;
	}
	req->cb = cb;
	if (p->tail != NULL)
		p->tail->next = s;
	else
		p->head = s;
	p->tail = s;
	p->queued++;
	if (p->conn == NULL && !p->retry_armed)
		tlsnet_peer_connect(p);
	else
		tlsnet_peer_pump(p);
	return 0;
}

void tally_tlsnet_receive_to(struct tally_transport *t, struct raft_io *io, raft_io_recv_cb recv)
{
	assert(t != NULL && io != NULL && recv != NULL);
	t->recv_io = io;
	t->recv = recv;
}

/* ---- receiving: an incoming connection's messages, to raft ---- */

/* A Have from the node that connected: kept on this connection. */
static int tlsnet_have_received(struct tlsnet_conn *c)
{
	struct tally_transport *t = c->t;
	uint64_t flags;
	struct tally_segment_held *held;
	size_t n;
	const char *why = tally_raftwire_have_decode(&c->sizes, c->header, c->payload, &flags,
						     &held, &n);
	free(c->header);
	c->header = NULL;
	raft_free(c->payload);
	c->payload = NULL;
	if (why != NULL) {
		tlsnet_refuse(c, why);
		return -1;
	}
	c->reading = TLSNET_READ_PREFIX;
	c->got = 0;
	free(c->have);
	c->have = held;
	c->n_have = n;
	c->have_known = true;
	if ((flags & TALLY_RAFTWIRE_HAVE_DECLINED) != 0) {
		tlsnet_log(t, "node %" PRIu64 " declined an InstallSnapshot (it no longer holds a "
			      "segment it said it held); sending it again with what it holds now (%zu segments)",
			   (uint64_t)c->id, n);
		if (t->declined != NULL)
			t->declined(t->declined_data, c->id);
	}
	return 0;
}

/* Whether this node declines InstallSnapshot m from c's node: it leaves out a segment
 * as one this node holds, which it no longer does. Then that node is told (a Have
 * marked declined) and sends it again; raft never sees this one. */
static bool tlsnet_decline(struct tlsnet_conn *c, const struct raft_message *m)
{
	struct tally_transport *t = c->t;
	const struct raft_buffer *d = &m->install_snapshot.data;
	char name[TALLY_ADDRESS_BYTES_MAX + 4096];
	if (t->links_dir == NULL ||
	    tally_ledger_snapshot_unresolved(d->base, d->len, t->links_dir, name, sizeof(name)) !=
		    TALLY_SNAPSHOT_HELD_MISSING)
		return false;
	t->snapshots_declined++;
	tlsnet_log(t, "declined an InstallSnapshot from node %" PRIu64 ": it leaves out %s, which "
		      "this node no longer holds; telling it what this node holds",
		   (uint64_t)c->id, name);
	(void)tlsnet_held_read(t);
	struct tlsnet_peer *p = tlsnet_peer_find(t, c->id); /* at the address raft gave it */
	if (p == NULL)
		p = tlsnet_peer_get(t, c->id, c->address);
	if (p != NULL) {
		p->declined = true;
		tlsnet_have_due(p);
	}
	return true;
}

/* A whole message has been read: decoded and handed to raft. */
static int tlsnet_deliver(struct tlsnet_conn *c)
{
	struct tally_transport *t = c->t;
	if (c->sizes.type == TALLY_RAFTWIRE_HAVE)
		return tlsnet_have_received(c);
	struct raft_message m;
	const char *why = tally_raftwire_decode(&c->sizes, c->header, c->payload, &m);
	free(c->header);
	c->header = NULL;
	if (why != NULL) {
		tlsnet_refuse(c, why); /* the payload is freed with the connection */
		return -1;
	}
	c->payload = NULL; /* the message's now */
	c->reading = TLSNET_READ_PREFIX;
	c->got = 0;
	m.server_id = c->id;
	m.server_address = c->address;
	if (m.type == RAFT_IO_APPEND_ENTRIES_RESULT) {
		struct tlsnet_peer *p = tlsnet_peer_find(t, c->id);
		if (p != NULL)
			p->big.on = false; /* it answered: raft's next message goes */
	}
	if (t->recv == NULL || t->close_cb != NULL ||
	    (m.type == RAFT_IO_INSTALL_SNAPSHOT && tlsnet_decline(c, &m))) {
		tally_raftwire_release(&m);
		return c->closing ? -1 : 0;
	}
	t->recv(t->recv_io, &m);
	return c->closing ? -1 : 0;
}

/* The prefix is in: room for the header. */
static int tlsnet_prefix_read(struct tlsnet_conn *c)
{
	const char *why = tally_raftwire_prefix(c->prefix, &c->sizes);
	if (why != NULL) {
		tlsnet_refuse(c, why);
		return -1;
	}
	c->header = malloc(c->sizes.header_bytes);
	if (c->header == NULL) {
		tlsnet_refuse(c, "out of memory for a raft message's header");
		return -1;
	}
	c->reading = TLSNET_READ_HEADER;
	c->got = 0;
	return 0;
}

/* The header is in: room for the payload, or the message is whole. */
static int tlsnet_header_read(struct tlsnet_conn *c)
{
	unsigned type = c->sizes.type;
	if (type == TALLY_RAFTWIRE_HAVE && !c->have_ok) {
		tlsnet_refuse(c, "a Have on a connection that did not agree on them");
		return -1;
	}
	if (type != RAFT_IO_APPEND_ENTRIES && type != RAFT_IO_INSTALL_SNAPSHOT &&
	    type != TALLY_RAFTWIRE_HAVE)
		return tlsnet_deliver(c);
	if (type == RAFT_IO_INSTALL_SNAPSHOT && c->sizes.payload_bytes > 0 && node_bigbuf_on() &&
	    c->t->spool_dir != NULL)
		c->spool_fd = open(c->t->spool_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	uint64_t bytes = c->sizes.payload_bytes > 8 ? c->sizes.payload_bytes : 8;
	if (c->spool_fd < 0)
		c->payload = raft_malloc((size_t)bytes);
	if (c->spool_fd < 0 && c->payload == NULL) {
		tlsnet_refuse(c, "out of memory for a raft message's payload");
		return -1;
	}
	c->reading = TLSNET_READ_PAYLOAD;
	c->got = 0;
	return c->sizes.payload_bytes == 0 ? tlsnet_deliver(c) : 0;
}

/* A snapshot's bytes, to its spool file; the whole of it then mapped as the payload. */
static int tlsnet_spool(struct tlsnet_conn *c, const uint8_t *in, size_t n)
{
	while (n > 0) {
		ssize_t w = write(c->spool_fd, in, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			char why[96];
			snprintf(why, sizeof(why), "writing a received snapshot to %.40s: %s",
				 c->t->spool_dir, strerror(w < 0 ? errno : EIO));
			tlsnet_refuse(c, why);
			return -1;
		}
		in += w, n -= (size_t)w;
	}
	return 0;
}

/* The payload is in: a spooled one is mapped (its file goes with the mapping). */
static int tlsnet_payload_read(struct tlsnet_conn *c)
{
	if (c->spool_fd >= 0) {
		c->payload = node_bigbuf_map_file(c->spool_fd, (size_t)c->sizes.payload_bytes);
		close(c->spool_fd);
		c->spool_fd = -1;
		if (c->payload == NULL) {
			tlsnet_refuse(c, "out of memory for a received snapshot's mapping");
			return -1;
		}
		c->t->snapshot_bytes_spooled += c->sizes.payload_bytes;
	}
	return tlsnet_deliver(c);
}

/* Plaintext after the preamble: messages, each prefix, header and payload. */
static int tlsnet_message_bytes(struct tlsnet_conn *c, const uint8_t *in, size_t n)
{
	while (n > 0) {
		uint8_t *dst = c->reading == TLSNET_READ_PREFIX ? c->prefix
			       : c->reading == TLSNET_READ_HEADER ? c->header
								   : c->payload;
		uint64_t want = c->reading == TLSNET_READ_PREFIX ? TALLY_RAFTWIRE_PREFIX_BYTES
				: c->reading == TLSNET_READ_HEADER ? c->sizes.header_bytes
								    : c->sizes.payload_bytes;
		size_t take = want - c->got < n ? (size_t)(want - c->got) : n;
		if (c->reading == TLSNET_READ_PAYLOAD && c->spool_fd >= 0) {
			if (tlsnet_spool(c, in, take) != 0)
				return -1;
		} else {
			memcpy(dst + c->got, in, take);
		}
		c->got += take;
		in += take;
		n -= take;
		if (c->got < want)
			return 0;
		int rc = c->reading == TLSNET_READ_PREFIX ? tlsnet_prefix_read(c)
			 : c->reading == TLSNET_READ_HEADER ? tlsnet_header_read(c)
							     : tlsnet_payload_read(c);
		if (rc != 0)
			return -1;
	}
	return 0;
}

/* ---- the handshake and the preamble ---- */

/* The connection carries raft's messages from now on. */
static void tlsnet_up(struct tlsnet_conn *c)
{
	struct tally_transport *t = c->t;
	uv_timer_stop(&c->timer);
	c->state = TLSNET_PUMPING;
	c->reading = TLSNET_READ_PREFIX;
	c->got = 0;
	c->have_ok = tally_tls_alpn_raft(c->tls);
	if (c->owner == NULL)
		return;
	if (c->have_ok && t->links_dir != NULL) { /* our Have first */
		if (!t->held_read)
			(void)tlsnet_held_read(t);
		c->owner->have_due = true;
	}
	tlsnet_peer_pump(c->owner);
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
	if (tlsnet_seal(c, p, TLSNET_PREAMBLE_FIXED + alen) != 0) {
		tlsnet_refuse(c, tally_tls_error(c->tls)[0] ? tally_tls_error(c->tls) : "write failed");
		return;
	}
	tlsnet_up(c);
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
	tlsnet_up(c);
	return (ssize_t)took;
}

/* Decrypted bytes from the peer: an incoming connection's preamble, then messages.
 * An outgoing connection carries nothing from the peer but TLS itself. */
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
				tlsnet_close(c);
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
		if (at < got && (c->outgoing || c->state != TLSNET_PUMPING)) {
			tlsnet_refuse(c, c->outgoing ? "data from the node this connection sends to"
						     : "data before the preamble was complete");
			return -1;
		}
		if (at < got && tlsnet_message_bytes(c, buf + at, got - at) != 0)
			return -1;
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
		tlsnet_close(c);
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
	(void)tlsnet_plaintext(c);
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
	c->spool_fd = -1;
	c->outgoing = outgoing;
	c->state = outgoing ? TLSNET_CONNECTING : TLSNET_HANDSHAKE;
	uv_tcp_init(t->loop, &c->tcp);
	uv_timer_init(t->loop, &c->timer);
	c->tcp.data = c->timer.data = c;
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
		tlsnet_close(c);
		return;
	}
	uv_tcp_nodelay(&c->tcp, 1);
	tlsnet_peer_name(c);
	tlsnet_read_start(c);
}

static void tlsnet_tcp_connected(uv_connect_t *req, int status)
{
	struct tlsnet_conn *c = req->data;
	if (c->closing)
		return;
	if (status != 0) {
		tlsnet_close(c); /* peer down: tried again later, no log line */
		return;
	}
	uv_tcp_nodelay(&c->tcp, 1);
	c->state = TLSNET_HANDSHAKE;
	(void)tally_tls_handshake(c->tls); /* the ClientHello */
	if (tlsnet_flush(c) != 0) {
		tlsnet_close(c);
		return;
	}
	tlsnet_read_start(c);
}

/* A new outgoing connection to p (raft_uv's client does the same on its own streams). */
static void tlsnet_peer_connect(struct tlsnet_peer *p)
{
	struct tally_transport *t = p->t;
	assert(p->conn == NULL && t->close_cb == NULL);
	char raft_address[TALLY_ADDRESS_BYTES_MAX + 1];
	struct sockaddr_storage sa;
	struct tlsnet_conn *c = NULL;
	if (tally_address_raft(p->address, raft_address, sizeof(raft_address)) == 0 &&
	    tally_address_sockaddr(raft_address, &sa) == 0)
		c = tlsnet_conn_new(t, true);
	if (c == NULL) {
		tlsnet_peer_lost(p, false);
		return;
	}
	c->id = p->id;
	c->owner = p;
	p->conn = c;
	snprintf(c->peer, sizeof(c->peer), "%.63s", raft_address);
	c->connect.data = c;
	if (uv_tcp_connect(&c->connect, &c->tcp, (struct sockaddr *)&sa, tlsnet_tcp_connected) != 0)
		tlsnet_close(c);
}

/* ---- raft_uv's side: listen and close ---- */

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
	(void)cb; /* raft gets its messages from tlsnet_deliver, not from streams */
	int rv = tally_address_sockaddr(t->raft_address, &sa);
	if (rv == 0 && !t->closer_open) {
		uv_timer_init(t->loop, &t->closer);
		t->closer.data = t;
		t->closer_open = true;
	}
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

/* raft_uv connects only to send, and over TLS the node sends through
 * tally_tlsnet_send: never called. */
static int tlsnet_connect(struct raft_uv_transport *outer, struct raft_uv_connect *req,
			  raft_id id, const char *address, raft_uv_connect_cb cb)
{
	(void)req, (void)id, (void)address, (void)cb;
	strcpy(outer->errmsg, "raft_uv's own connections are not used over TLS");
	return RAFT_NOCONNECTION;
}

static void tlsnet_listener_closed(uv_handle_t *h)
{
	struct tally_transport *t = h->data;
	t->listener_open = false;
	tlsnet_maybe_closed(t);
}

static void tlsnet_turn_closed(uv_handle_t *h)
{
	struct tally_transport *t = h->data;
	t->turn_idle_open = false;
	tlsnet_maybe_closed(t);
}

/* Ends every connection and answers every message raft is still waiting for
 * (RAFT_CANCELED) before raft's close callback. */
static void tlsnet_transport_close(struct raft_uv_transport *outer, raft_uv_transport_close_cb cb)
{
	struct tally_transport *t = outer->impl;
	assert(t->close_cb == NULL && cb != NULL);
	t->close_cb = cb;
	for (struct tlsnet_conn *c = t->conns; c != NULL; c = c->next)
		tlsnet_close(c);
	for (struct tlsnet_peer *p = t->peers; p != NULL; p = p->next) {
		tlsnet_peer_drop(p, 0, RAFT_CANCELED);
		uv_close((uv_handle_t *)&p->retry, tlsnet_peer_closed);
	}
	if (t->turn_idle_open) {
		tlsnet_turn_run(&t->turn_idle);
		t->turn_idle_closing = true;
		uv_close((uv_handle_t *)&t->turn_idle, tlsnet_turn_closed);
	}
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
	t->resend_hold_ms = TLSNET_RESEND_HOLD_MS;
}
