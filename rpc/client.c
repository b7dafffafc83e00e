/*
 * libtally — a blocking client of a Tally cluster over POSIX sockets and poll(2).
 *
 * One connection at a time. Every exchange has a deadline (timeout_ms from the
 * moment it starts); the socket is non-blocking and every wait is a poll() bounded by
 * that deadline, so no call blocks longer than its attempts allow.
 *
 * What an attempt can come to, and what the client does about it (tally.h):
 *   connect or handshake failed        definite: the next node of the list (a
 *                                      handshake answer that is not one: INTERNAL)
 *   closed before the request was out  definite: the next node of the list
 *   NOT_LEADER with leader_address     definite: that address, at once
 *   UNAVAILABLE, NOT_LEADER without    definite: backoff, then the next node
 *   written, then no well-formed       unknown: TIMEOUT for anything with an effect
 *   answer (none in time, connection   (command, batch, membership change); a query
 *   closed, a goodbye, bytes that are  or STATUS is tried again on the next node, or
 *   not an answer to this request)     ends with INTERNAL for a malformed answer
 * After every node of the list failed in a row the client also backs off
 * (50 ms doubling up to 1 s) before trying the list again.
 *
 * "Written" means the whole frame: a node acts on a request only once it holds the
 * whole frame, and when a write fails part-way the connection is closed at once, so
 * the rest never leaves and the node cannot have acted on it.
 *
 * Pipelining keeps the requests written on the current connection and not answered
 * yet in a table by call id (`due`, `pending` of them), and counts `lost` requests
 * whose connection went away before their answer. Every successful tally_client_send
 * gets exactly one outcome from tally_client_recv: a well-formed response to a due
 * request, or TIMEOUT for a lost one.
 */
#include "rpc/tally.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "ledger/error.h"
#include "rpc/frame.h"
#include "rpc/keys.h"
#include "rpc/tls.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name

#define CLIENT_VERSION 1
#define CLIENT_NODES_MAX 64
#define CLIENT_HOST_BYTES_MAX 255
#define CLIENT_PORT_BYTES_MAX 5
#define CLIENT_ADDRESS_BYTES_MAX (CLIENT_HOST_BYTES_MAX + CLIENT_PORT_BYTES_MAX + 3)
#define CLIENT_CLUSTER_BYTES_MAX (CLIENT_NODES_MAX * (CLIENT_ADDRESS_BYTES_MAX + 1))
#define CLIENT_TIMEOUT_MS_DEFAULT 5000u
#define CLIENT_TIMEOUT_MS_MAX 3600000u
#define CLIENT_ATTEMPTS_DEFAULT 6u
#define CLIENT_ATTEMPTS_MAX 1000u
#define CLIENT_FRAME_BYTES_MIN 1024u
#define CLIENT_FRAME_BYTES_MAX (1u << 30)
#define CLIENT_BACKOFF_MS_MIN 50u
#define CLIENT_BACKOFF_MS_MAX 1000u
#define CLIENT_READ_BYTES 65536
#define CLIENT_PIPELINE_MAX 65536u
#define CLIENT_DUE_SLOTS_MIN 64u        /* first size of the table of due requests */
#define CLIENT_HANDSHAKE_BYTES 256      /* a packed Hello or Proof fits */
#define CLIENT_SCRATCH_BYTES_MAX (256u << 10)
#define CLIENT_ERR_BYTES 256
#define CLIENT_SECRET_BYTES_MIN 16

/* What a request asked for: enough to tell a well-formed answer from a protocol error. */
struct client_ask {
	uint64_t call_id;                      /* 0: a free slot of the table of due requests */
	uint32_t n_commands;                   /* batch */
	uint8_t body;                          /* Tally__V1__Request__BodyCase */
	uint8_t op;                            /* Tally__V1__Admin__Op of an admin request */
};

struct tally_client {
	char nodes[CLIENT_NODES_MAX][CLIENT_ADDRESS_BYTES_MAX + 1];
	size_t n_nodes;
	size_t cursor;                         /* the node of the list to try next */
	char address[CLIENT_ADDRESS_BYTES_MAX + 1]; /* connected (or last tried) node */
	char redirect[CLIENT_ADDRESS_BYTES_MAX + 1]; /* leader to try next, "" if none */
	char key_name[TALLY_KEY_NAME_BYTES_MAX + 1];
	char secret[TALLY_SECRET_BYTES_MAX + 1];
	unsigned timeout_ms;
	unsigned attempts;
	size_t frame_bytes_max;
	int fd;                                /* -1 when not connected */
	bool readable;                         /* a wait saw fd readable since the last recv */
	struct tally_tls_ctx *tls_ctx;         /* the cluster's CA; NULL = plaintext */
	struct tally_tls *tls;                 /* this connection's session */
	uint64_t call_id_next;
	unsigned pending;                      /* pipelined, written on this connection */
	unsigned lost;                         /* pipelined, connection gone before answer */
	struct client_ask *due;                /* the pending requests, open addressing */
	size_t due_slots;                      /* a power of two, at least 2 x pending */
	struct tally_frame_reader reader;
	uint8_t *wbuf;                         /* the encoded request: header + body */
	size_t wcap;
	struct tally_arena scratch;            /* handshake answers */
	uint8_t rbuf[CLIENT_READ_BYTES];
	char err[CLIENT_ERR_BYTES];
};

/* What one exchange with a node came to. */
enum client_io {
	IO_OK,
	IO_UNSENT, /* connection failed or broke before the request was fully written */
	IO_LOST,   /* written, then the connection broke, the node said goodbye or the
		    * deadline passed */
	IO_BAD,    /* the node sent bytes that are not a well-formed answer */
};

/* What the retry loop of a blocking call does next. */
enum client_step {
	STEP_DONE,    /* return the code */
	STEP_FOLLOW,  /* go to c->redirect at once */
	STEP_NEXT,    /* the next node at once (backoff once the whole list failed) */
	STEP_BACKOFF, /* wait, then the next node */
};

static void clientErr(struct tally_client *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void clientErr(struct tally_client *c, const char *fmt, ...)
{
	assert(c != NULL && fmt != NULL);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->err, sizeof(c->err), fmt, ap);
	va_end(ap);
}

static int64_t clientNowMs(void)
{
	struct timespec ts;
	int rc = clock_gettime(CLOCK_MONOTONIC, &ts);
	assert(rc == 0);
	(void)rc;
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void clientSleepMs(unsigned ms)
{
	assert(ms <= CLIENT_BACKOFF_MS_MAX);
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* ---- addresses ---------------------------------------------------------------- */

/* Splits "host:port" or "[v6]:port" (len bytes of s) into host and port. */
static bool clientSplitAddress(const char *s, size_t len, char host[CLIENT_HOST_BYTES_MAX + 1],
			       char port[CLIENT_PORT_BYTES_MAX + 1])
{
	assert(s != NULL && host != NULL && port != NULL);
	const char *colon = NULL;
	const char *h = s;
	size_t hlen = 0;
	if (len > 0 && s[0] == '[') {
		const char *close = memchr(s, ']', len);
		if (close == NULL || close + 1 >= s + len || close[1] != ':')
			return false;
		h = s + 1;
		hlen = (size_t)(close - h);
		colon = close + 1;
	} else {
		colon = memchr(s, ':', len);
		if (colon == NULL || memchr(colon + 1, ':', len - (size_t)(colon + 1 - s)) != NULL)
			return false;
		hlen = (size_t)(colon - s);
	}
	size_t plen = len - (size_t)(colon + 1 - s);
	if (hlen == 0 || hlen > CLIENT_HOST_BYTES_MAX || plen == 0 || plen > CLIENT_PORT_BYTES_MAX)
		return false;
	unsigned long value = 0;
	for (size_t i = 0; i < plen; i++) {
		if (colon[1 + i] < '0' || colon[1 + i] > '9')
			return false;
		value = value * 10 + (unsigned long)(colon[1 + i] - '0');
	}
	for (size_t i = 0; i < hlen; i++)
		if ((unsigned char)h[i] <= 0x20 || (unsigned char)h[i] >= 0x7f)
			return false;
	if (value == 0 || value > 65535)
		return false;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	memcpy(port, colon + 1, plen);
	port[plen] = '\0';
	return true;
}

static bool clientValidAddress(const char *s)
{
	char host[CLIENT_HOST_BYTES_MAX + 1];
	char port[CLIENT_PORT_BYTES_MAX + 1];
	assert(s != NULL);
	size_t len = strnlen(s, CLIENT_ADDRESS_BYTES_MAX + 1);
	return len <= CLIENT_ADDRESS_BYTES_MAX && clientSplitAddress(s, len, host, port);
}

/* "host:port,host:port": blanks around entries are ignored, none may be empty. */
static bool clientParseCluster(struct tally_client *c, const char *cluster)
{
	assert(c != NULL && cluster != NULL);
	size_t total = strnlen(cluster, CLIENT_CLUSTER_BYTES_MAX + 1);
	if (total > CLIENT_CLUSTER_BYTES_MAX) {
		clientErr(c, "cluster list longer than %d bytes", CLIENT_CLUSTER_BYTES_MAX);
		return false;
	}
	const char *s = cluster;
	for (c->n_nodes = 0;; s++) {
		const char *next = s + strcspn(s, ","); /* the ',' or the final NUL */
		const char *end = next;
		while (s < end && (*s == ' ' || *s == '\t'))
			s++;
		while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		if (c->n_nodes == CLIENT_NODES_MAX) {
			clientErr(c, "more than %d nodes in the cluster list", CLIENT_NODES_MAX);
			return false;
		}
		char host[CLIENT_HOST_BYTES_MAX + 1];
		char port[CLIENT_PORT_BYTES_MAX + 1];
		size_t n = (size_t)(end - s);
		if (n > CLIENT_ADDRESS_BYTES_MAX || !clientSplitAddress(s, n, host, port)) {
			clientErr(c, "bad address '%.*s' in the cluster list (expected host:port)",
				  (int)(n > 64 ? 64 : n), s);
			return false;
		}
		memcpy(c->nodes[c->n_nodes], s, n);
		c->nodes[c->n_nodes++][n] = '\0';
		s = next;
		if (*s == '\0')
			return true;
	}
}

/* ---- sockets ------------------------------------------------------------------ */

/* Waits for `events` on fd until the deadline: 1 ready, 0 deadline passed, -1 error. */
static int clientWait(int fd, short events, int64_t deadline_ms)
{
	assert(fd >= 0);
	assert(events != 0);
	for (;;) {
		int64_t left_ms = deadline_ms - clientNowMs();
		if (left_ms < 0)
			left_ms = 0;
		struct pollfd p = {.fd = fd, .events = events, .revents = 0};
		int rc = poll(&p, 1, left_ms > INT_MAX ? INT_MAX : (int)left_ms);
		if (rc > 0)
			return 1;
		if (rc == 0 && left_ms == 0)
			return 0;
		if (rc < 0 && errno != EINTR)
			return -1;
	}
}

static void clientDisconnect(struct tally_client *c)
{
	assert(c != NULL);
	assert(c->pending + c->lost <= CLIENT_PIPELINE_MAX);
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->readable = false;
	tally_tls_free(c->tls);
	c->tls = NULL;
	if (c->pending > 0) /* every request due on this connection is lost */
		memset(c->due, 0, c->due_slots * sizeof(*c->due));
	c->lost += c->pending;
	c->pending = 0;
	tally_frame_reader_reset(&c->reader);
}

/* A non-blocking connect of one resolved address; the socket or -1 (errno set). */
static int clientDialOne(const struct addrinfo *ai, int64_t deadline_ms)
{
	assert(ai != NULL);
	int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
	if (fd < 0)
		return -1;
	int one = 1;
	int err = 0;
	socklen_t err_len = sizeof(err);
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0 ||
	    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0)
		goto fail;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
		if (errno != EINPROGRESS)
			goto fail;
		int ready = clientWait(fd, POLLOUT, deadline_ms);
		if (ready <= 0) {
			errno = ready == 0 ? ETIMEDOUT : errno;
			goto fail;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) != 0)
			goto fail;
		if (err != 0) {
			errno = err;
			goto fail;
		}
	}
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
		goto fail;
	return fd;
fail:
	err = errno;
	close(fd);
	errno = err;
	return -1;
}

/* Resolves and connects to `address` (every address it resolves to, in order). */
static enum client_io clientDial(struct tally_client *c, const char *address,
				 int64_t deadline_ms)
{
	assert(c != NULL && address != NULL);
	assert(c->fd < 0);
	char host[CLIENT_HOST_BYTES_MAX + 1];
	char port[CLIENT_PORT_BYTES_MAX + 1];
	if (!clientSplitAddress(address, strlen(address), host, port)) {
		clientErr(c, "bad address '%.64s'", address);
		return IO_UNSENT;
	}
	struct addrinfo hints;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	struct addrinfo *res = NULL;
	int gai = getaddrinfo(host, port, &hints, &res);
	if (gai != 0) {
		clientErr(c, "%s: %s", address, gai_strerror(gai));
		return IO_UNSENT;
	}
	int err = ECONNREFUSED;
	for (const struct addrinfo *ai = res; ai != NULL && c->fd < 0; ai = ai->ai_next) {
		c->fd = clientDialOne(ai, deadline_ms);
		err = errno;
	}
	freeaddrinfo(res);
	if (c->fd < 0) {
		clientErr(c, "%s: connect: %s", address, strerror(err));
		return IO_UNSENT;
	}
	return IO_OK;
}

/* Whether an idle connection (nothing asked, nothing due) is unusable: checked before
 * a request goes out, so that a connection the node closed while idle counts as
 * "closed before the request". An idle connection has nothing to read; anything there
 * is the end of the stream or a goodbye frame (call id 0: idle timeout, shutdown)
 * after which the node closes, and a request written now would meet that frame. */
static bool clientIdleUnusable(struct tally_client *c)
{
	assert(c != NULL && c->fd >= 0);
	assert(c->pending == 0);
	struct pollfd p = {.fd = c->fd, .events = POLLIN, .revents = 0};
	int rc = poll(&p, 1, 0);
	if (rc > 0)
		clientErr(c, "%s: the node spoke or closed while idle", c->address);
	return rc != 0;
}

/* Sends len bytes as they are: IO_OK, or IO_UNSENT when the connection broke or the
 * deadline passed first, even part-way. */
static enum client_io clientSendRaw(struct tally_client *c, const uint8_t *buf, size_t len,
				    int64_t deadline_ms)
{
	assert(c != NULL && c->fd >= 0);
	assert(buf != NULL || len == 0);
	size_t off = 0;
	while (off < len) {
		ssize_t n = send(c->fd, buf + off, len - off, MSG_NOSIGNAL);
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int ready = clientWait(c->fd, POLLOUT, deadline_ms);
			if (ready > 0)
				continue;
			clientErr(c, "%s: request not written within %u ms", c->address,
				  c->timeout_ms);
			return IO_UNSENT;
		}
		clientErr(c, "%s: send: %s", c->address, strerror(errno));
		return IO_UNSENT;
	}
	return IO_OK;
}

/* Sends whatever the TLS session has for the node. */
static enum client_io clientTlsFlush(struct tally_client *c, int64_t deadline_ms)
{
	uint8_t buf[CLIENT_READ_BYTES];
	size_t n;
	while ((n = tally_tls_take(c->tls, buf, sizeof(buf))) > 0)
		if (clientSendRaw(c, buf, n, deadline_ms) != IO_OK)
			return IO_UNSENT;
	return IO_OK;
}

/* Writes a whole frame (encrypted on a TLS connection): IO_OK, or IO_UNSENT when the
 * connection broke or the deadline passed first, even part-way (the caller closes the
 * connection, so the node never holds the whole frame and cannot act on it). */
static enum client_io clientWriteAll(struct tally_client *c, const uint8_t *buf, size_t len,
				     int64_t deadline_ms)
{
	assert(c != NULL && c->fd >= 0);
	assert(buf != NULL && len >= TALLY_FRAME_HEADER_BYTES);
	if (c->tls == NULL)
		return clientSendRaw(c, buf, len, deadline_ms);
	if (tally_tls_write(c->tls, buf, len) != 0) {
		clientErr(c, "%s: %s", c->address, tally_tls_error(c->tls));
		return IO_UNSENT;
	}
	return clientTlsFlush(c, deadline_ms);
}

/* Reads what the node sent (decrypted on a TLS connection) into the frame reader:
 * IO_OK, or IO_LOST (closed, failed or the deadline passed). */
static enum client_io clientReceive(struct tally_client *c, int64_t deadline_ms)
{
	for (;;) {
		if (c->tls != NULL) {
			size_t got = 0;
			enum tally_tls_status st = tally_tls_read(c->tls, c->rbuf, sizeof(c->rbuf), &got);
			if (st == TALLY_TLS_DONE)
				return tally_frame_reader_feed(&c->reader, c->rbuf, got) == 0 ? IO_OK : IO_LOST;
			if (st != TALLY_TLS_AGAIN) {
				clientErr(c, "%s: connection lost: %s", c->address,
					  st == TALLY_TLS_CLOSED ? "closed by the node" : tally_tls_error(c->tls));
				return IO_LOST;
			}
		}
		/* A wait that saw the socket readable spares the poll: recv goes first. */
		int ready = c->readable ? 1 : clientWait(c->fd, POLLIN, deadline_ms);
		c->readable = false;
		if (ready <= 0) {
			clientErr(c, "%s: no answer within %u ms", c->address, c->timeout_ms);
			return IO_LOST;
		}
		ssize_t n = recv(c->fd, c->rbuf, sizeof(c->rbuf), 0);
		if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
			continue;
		if (n <= 0) {
			clientErr(c, "%s: connection lost: %s", c->address,
				  n == 0 ? "closed by the node" : strerror(errno));
			return IO_LOST;
		}
		if (c->tls != NULL)
			tally_tls_feed(c->tls, c->rbuf, (size_t)n);
		else
			return tally_frame_reader_feed(&c->reader, c->rbuf, (size_t)n) == 0 ? IO_OK : IO_LOST;
	}
}

/* The next whole frame from the connection, at most frame_bytes_max long. */
static enum client_io clientReadFrame(struct tally_client *c, int64_t deadline_ms,
				      const uint8_t **body, size_t *len)
{
	assert(c != NULL && c->fd >= 0);
	assert(body != NULL && len != NULL);
	for (;;) {
		int rc = tally_frame_reader_next(&c->reader, body, len);
		if (rc == 1)
			return IO_OK;
		if (rc < 0) {
			clientErr(c, "%s: answer larger than %zu bytes", c->address,
				  c->frame_bytes_max);
			return IO_BAD;
		}
		enum client_io io = clientReceive(c, deadline_ms);
		if (io != IO_OK)
			return io;
	}
}

/* The TLS handshake on the fresh connection c->fd: the node must present a node
 * certificate of the cluster's CA, so a redirect can lead only to a member. */
static enum client_io clientTlsHandshake(struct tally_client *c, int64_t deadline_ms)
{
	assert(c != NULL && c->tls_ctx != NULL && c->tls == NULL);
	c->tls = tally_tls_new(c->tls_ctx, TALLY_TLS_CLIENT_CONNECT);
	if (c->tls == NULL) {
		clientErr(c, "%s: out of memory", c->address);
		return IO_UNSENT;
	}
	for (;;) {
		enum tally_tls_status st = tally_tls_handshake(c->tls);
		if (clientTlsFlush(c, deadline_ms) != IO_OK)
			return IO_UNSENT;
		if (st == TALLY_TLS_DONE)
			return IO_OK;
		if (st == TALLY_TLS_FAILED) {
			clientErr(c, "%s: TLS: %s", c->address, tally_tls_error(c->tls));
			return IO_UNSENT;
		}
		int ready = clientWait(c->fd, POLLIN, deadline_ms);
		ssize_t n = ready > 0 ? recv(c->fd, c->rbuf, sizeof(c->rbuf), 0) : -1;
		if (n < 0 && ready > 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0) {
			clientErr(c, "%s: TLS handshake: %s", c->address,
				  ready <= 0 ? "no answer in time" : n == 0 ? "closed by the node" : strerror(errno));
			return IO_UNSENT;
		}
		tally_tls_feed(c->tls, c->rbuf, (size_t)n);
	}
}

/* ---- messages ----------------------------------------------------------------- */

/* Encodes req as a frame into c->wbuf; its size, or 0 when it cannot be sent. */
static size_t clientEncode(struct tally_client *c, const Tally__V1__Request *req)
{
	assert(c != NULL && req != NULL);
	assert(req->body_case != TALLY__V1__REQUEST__BODY__NOT_SET);
	size_t body = tally__v1__request__get_packed_size(req);
	if (body > c->frame_bytes_max) {
		clientErr(c, "request of %zu bytes exceeds the frame limit of %zu bytes", body,
			  c->frame_bytes_max);
		return 0;
	}
	size_t need = TALLY_FRAME_HEADER_BYTES + body;
	if (need > c->wcap) {
		uint8_t *buf = realloc(c->wbuf, need);
		if (buf == NULL) {
			clientErr(c, "out of memory encoding a request of %zu bytes", body);
			return 0;
		}
		c->wbuf = buf;
		c->wcap = need;
	}
	size_t packed = tally__v1__request__pack(req, c->wbuf + TALLY_FRAME_HEADER_BYTES);
	assert(packed == body);
	tally_frame_header(c->wbuf, (uint32_t)packed);
	return need;
}

/* Decodes an answer into `arena`; NULL (described) when it is not a valid Response. */
static Tally__V1__Response *clientDecode(struct tally_client *c, const uint8_t *body,
					 size_t len, struct tally_arena *arena)
{
	assert(c != NULL && arena != NULL);
	assert(body != NULL || len == 0);
	Tally__V1__Response *r =
		tally__v1__response__unpack(tally_arena_protobuf(arena), len, body);
	if (r == NULL) {
		clientErr(c, "%s: an answer of %zu bytes does not decode", c->address, len);
		return NULL;
	}
	if (r->code <= CODE(RESULT_CODE_UNSPECIFIED) || r->code > CODE(INTERNAL)) {
		clientErr(c, "%s: an answer with unknown code %d", c->address, (int)r->code);
		return NULL;
	}
	return r;
}

/* What `req` asks for, to check its answer against. */
static struct client_ask clientAskOf(const Tally__V1__Request *req)
{
	assert(req != NULL && req->call_id != 0);
	struct client_ask ask = {.call_id = req->call_id, .body = (uint8_t)req->body_case};
	if (req->body_case == TALLY__V1__REQUEST__BODY_BATCH)
		ask.n_commands = (uint32_t)req->batch->n_commands;
	if (req->body_case == TALLY__V1__REQUEST__BODY_ADMIN)
		ask.op = (uint8_t)req->admin->op;
	return ask;
}

/* Whether the request may change state (command, batch, membership change, leadership
 * transfer): then an answer that is not well-formed leaves its outcome unknown. A
 * query or STATUS has no effect and may be asked again anywhere. */
static bool clientHasEffect(const struct client_ask *ask)
{
	assert(ask != NULL);
	if (ask->body == TALLY__V1__REQUEST__BODY_QUERY)
		return false;
	return ask->body != TALLY__V1__REQUEST__BODY_ADMIN || ask->op != TALLY__V1__ADMIN__OP__STATUS;
}

/* The codes a ledger result may carry: OK and the business rejections. */
static bool clientBusinessCode(Tally__V1__ResultCode code)
{
	return code >= CODE(OK) && code <= CODE(NOT_FOUND);
}

/* The codes one command of a batch may carry: a ledger result, or the transport
 * outcome of that command alone (NOT_LEADER, UNAVAILABLE: not applied; TIMEOUT). */
static bool clientBatchItemCode(Tally__V1__ResultCode code)
{
	return clientBusinessCode(code) || code == CODE(NOT_LEADER) ||
	       code == CODE(UNAVAILABLE) || code == CODE(TIMEOUT);
}

/* Whether r, the answer carrying ask's call id, is well formed: with OK, the body the
 * request calls for, every code in it known and a batch answered command by command.
 * A code other than OK needs no body (clientDecode already checked it is known). */
static bool clientWellFormed(struct tally_client *c, const struct client_ask *ask,
			     const Tally__V1__Response *r)
{
	assert(c != NULL && ask != NULL && r != NULL);
	assert(r->call_id == ask->call_id);
	if (r->code != CODE(OK))
		return true;
	bool ok = false;
	switch (ask->body) {
	case TALLY__V1__REQUEST__BODY_COMMAND:
		ok = r->body_case == TALLY__V1__RESPONSE__BODY_RESULT &&
		     clientBusinessCode(r->result->code);
		break;
	case TALLY__V1__REQUEST__BODY_BATCH:
		ok = r->body_case == TALLY__V1__RESPONSE__BODY_BATCH &&
		     r->batch->n_results == ask->n_commands;
		for (size_t i = 0; ok && i < r->batch->n_results; i++)
			ok = clientBatchItemCode(r->batch->results[i]->code);
		break;
	case TALLY__V1__REQUEST__BODY_QUERY:
		ok = r->body_case == TALLY__V1__RESPONSE__BODY_QUERY &&
		     clientBusinessCode(r->query->code);
		break;
	case TALLY__V1__REQUEST__BODY_ADMIN:
		ok = r->body_case == (ask->op == TALLY__V1__ADMIN__OP__STATUS
					      ? TALLY__V1__RESPONSE__BODY_STATUS
					      : TALLY__V1__RESPONSE__BODY__NOT_SET);
		break;
	default:
		assert(false); /* tally_client_send and the blocking calls ask nothing else */
	}
	if (!ok)
		clientErr(c, "%s: an OK answer (body %d) that does not fit the request (%d, %u "
			     "commands)", c->address, (int)r->body_case, (int)ask->body,
			  (unsigned)ask->n_commands);
	return ok;
}

/* Writes one encoded request and reads its answer: the Response with its call id, or
 * one with call id 0 and an error code (the node refusing a frame or closing the
 * connection: a goodbye). A blocking call is alone on its connection, so an answer
 * with any other call id, or call id 0 and OK, is a protocol error (IO_BAD). */
static enum client_io clientRoundTrip(struct tally_client *c, const uint8_t *frame,
				      size_t frame_len, uint64_t call_id, int64_t deadline_ms,
				      struct tally_arena *arena, Tally__V1__Response **out)
{
	assert(c != NULL && frame != NULL && arena != NULL && out != NULL);
	assert(call_id != 0 && c->pending == 0);
	enum client_io io = clientWriteAll(c, frame, frame_len, deadline_ms);
	if (io != IO_OK)
		return io;
	const uint8_t *body = NULL;
	size_t len = 0;
	io = clientReadFrame(c, deadline_ms, &body, &len);
	if (io != IO_OK)
		return io;
	Tally__V1__Response *r = clientDecode(c, body, len, arena);
	if (r == NULL)
		return IO_BAD;
	if (r->call_id != call_id && (r->call_id != 0 || r->code == CODE(OK))) {
		clientErr(c, "%s: an answer to call %llu, expected call %llu", c->address,
			  (unsigned long long)r->call_id, (unsigned long long)call_id);
		return IO_BAD;
	}
	*out = r;
	return IO_OK;
}

/* ---- handshake ---------------------------------------------------------------- */

/* One request of the handshake and its answer, which must have body `want`. Nothing
 * has been asked of the node yet, so every failure to talk is definite. */
static Tally__V1__ResultCode clientHandshakeStep(struct tally_client *c, Tally__V1__Request *req,
						 Tally__V1__Response__BodyCase want,
						 int64_t deadline_ms, Tally__V1__Response **out)
{
	assert(c != NULL && req != NULL && out != NULL);
	uint8_t frame[CLIENT_HANDSHAKE_BYTES];
	req->call_id = c->call_id_next++;
	size_t body = tally__v1__request__get_packed_size(req);
	assert(body <= sizeof(frame) - TALLY_FRAME_HEADER_BYTES);
	tally__v1__request__pack(req, frame + TALLY_FRAME_HEADER_BYTES);
	tally_frame_header(frame, (uint32_t)body);
	Tally__V1__Response *r = NULL;
	enum client_io io = clientRoundTrip(c, frame, TALLY_FRAME_HEADER_BYTES + body,
					    req->call_id, deadline_ms, &c->scratch, &r);
	if (io == IO_BAD)
		return CODE(INTERNAL);
	if (io != IO_OK)
		return CODE(UNAVAILABLE);
	if (r->code == CODE(UNAUTHENTICATED)) {
		clientErr(c, "%s: key '%s' refused: %.120s", c->address, c->key_name, r->message);
		return CODE(UNAUTHENTICATED);
	}
	if (r->code != CODE(OK)) {
		clientErr(c, "%s: handshake answered %d: %.120s", c->address, (int)r->code,
			  r->message);
		bool elsewhere = r->code == CODE(UNAVAILABLE) || r->code == CODE(NOT_LEADER) ||
				 r->code == CODE(TIMEOUT);
		return elsewhere ? CODE(UNAVAILABLE) : r->code;
	}
	if (r->body_case != want) {
		clientErr(c, "%s: handshake answered with body %d, expected %d", c->address,
			  (int)r->body_case, (int)want);
		return CODE(INTERNAL);
	}
	*out = r;
	return CODE(OK);
}

/* Hello → Challenge → Proof → Welcome on the fresh connection c->fd. */
static Tally__V1__ResultCode clientHandshake(struct tally_client *c, int64_t deadline_ms)
{
	assert(c != NULL && c->fd >= 0);
	assert(c->pending == 0);
	tally_arena_reset(&c->scratch);
	Tally__V1__Hello hello = TALLY__V1__HELLO__INIT;
	hello.version = CLIENT_VERSION;
	hello.key_name = c->key_name;
	Tally__V1__Request req = TALLY__V1__REQUEST__INIT;
	req.body_case = TALLY__V1__REQUEST__BODY_HELLO;
	req.hello = &hello;
	Tally__V1__Response *r = NULL;
	Tally__V1__ResultCode code =
		clientHandshakeStep(c, &req, TALLY__V1__RESPONSE__BODY_CHALLENGE, deadline_ms, &r);
	if (code != CODE(OK))
		return code;
	if (r->challenge->nonce.len != TALLY_NONCE_BYTES) {
		clientErr(c, "%s: challenge nonce of %zu bytes, expected %d", c->address,
			  r->challenge->nonce.len, TALLY_NONCE_BYTES);
		return CODE(INTERNAL);
	}
	uint8_t mac[TALLY_HMAC_BYTES], binding[TALLY_TLS_EXPORTER_BYTES];
	if (c->tls != NULL && tally_tls_exporter(c->tls, binding) != 0) {
		clientErr(c, "%s: TLS exporter failed", c->address);
		return CODE(INTERNAL);
	}
	tally_keys_proof(c->secret, r->challenge->nonce.data, c->tls != NULL ? binding : NULL,
			 c->key_name, mac);
	Tally__V1__Proof proof = TALLY__V1__PROOF__INIT;
	proof.hmac.data = mac;
	proof.hmac.len = sizeof(mac);
	req.body_case = TALLY__V1__REQUEST__BODY_PROOF;
	req.proof = &proof;
	code = clientHandshakeStep(c, &req, TALLY__V1__RESPONSE__BODY_WELCOME, deadline_ms, &r);
	tally_arena_reset(&c->scratch);
	return code;
}

/* Connects to `address` and authenticates: OK, UNAVAILABLE (definite, try another
 * node), or a final code (UNAUTHENTICATED, INTERNAL, ...). */
static Tally__V1__ResultCode clientConnect(struct tally_client *c, const char *address)
{
	assert(c != NULL && address != NULL);
	assert(address != c->address);
	clientDisconnect(c);
	snprintf(c->address, sizeof(c->address), "%s", address);
	int64_t deadline_ms = clientNowMs() + c->timeout_ms;
	if (clientDial(c, c->address, deadline_ms) != IO_OK ||
	    (c->tls_ctx != NULL && clientTlsHandshake(c, deadline_ms) != IO_OK)) {
		clientDisconnect(c);
		return CODE(UNAVAILABLE);
	}
	Tally__V1__ResultCode code = clientHandshake(c, deadline_ms);
	if (code != CODE(OK))
		clientDisconnect(c);
	return code;
}

/* The list node after the current one: a failed node is tried again last. */
static void clientAdvance(struct tally_client *c)
{
	assert(c != NULL && c->n_nodes > 0);
	assert(c->cursor < c->n_nodes);
	c->cursor = (c->cursor + 1) % c->n_nodes;
}

static void clientBackoff(unsigned *backoff_ms)
{
	assert(backoff_ms != NULL);
	assert(*backoff_ms >= CLIENT_BACKOFF_MS_MIN && *backoff_ms <= CLIENT_BACKOFF_MS_MAX);
	clientSleepMs(*backoff_ms);
	*backoff_ms = *backoff_ms * 2 > CLIENT_BACKOFF_MS_MAX ? CLIENT_BACKOFF_MS_MAX
							       : *backoff_ms * 2;
}

/* Connects to the list nodes in turn, from the cursor, up to `budget` tries, backing
 * off after each round of the whole list. */
static Tally__V1__ResultCode clientConnectAny(struct tally_client *c, unsigned budget)
{
	assert(c != NULL && c->n_nodes > 0);
	assert(budget > 0);
	unsigned backoff_ms = CLIENT_BACKOFF_MS_MIN;
	size_t failed = 0;
	for (unsigned i = 0; i < budget; i++) {
		Tally__V1__ResultCode code = clientConnect(c, c->nodes[c->cursor]);
		if (code != CODE(UNAVAILABLE))
			return code;
		clientAdvance(c);
		if (++failed >= c->n_nodes && i + 1 < budget) {
			clientBackoff(&backoff_ms);
			failed = 0;
		}
	}
	return CODE(UNAVAILABLE);
}

/* ---- blocking calls ------------------------------------------------------------ */

/* What a well-formed answer to a blocking call means for the retry loop. The node's
 * word is taken: NOT_LEADER and UNAVAILABLE are definite and tried elsewhere, TIMEOUT
 * is unknown, every other code is final (a refusal: nothing was applied). */
static enum client_step clientOutcome(struct tally_client *c, const Tally__V1__Response *r,
				      Tally__V1__ResultCode *code)
{
	assert(c != NULL && r != NULL && code != NULL);
	*code = r->code;
	if (r->code == CODE(OK))
		return STEP_DONE;
	clientErr(c, "%s: %s: %.160s", c->address, tally_result_name(r->code), r->message);
	if (r->call_id == 0) /* the node refused the frame and closes the connection */
		clientDisconnect(c);
	if (r->code == CODE(NOT_LEADER) && clientValidAddress(r->leader_address)) {
		snprintf(c->redirect, sizeof(c->redirect), "%s", r->leader_address);
		clientDisconnect(c);
		return STEP_FOLLOW;
	}
	if (r->code == CODE(NOT_LEADER) || r->code == CODE(UNAVAILABLE)) {
		*code = CODE(UNAVAILABLE);
		clientDisconnect(c);
		clientAdvance(c);
		return STEP_BACKOFF;
	}
	return STEP_DONE;
}

/* Connects for an attempt when not connected: STEP_DONE with OK to go on, or where
 * the retry loop goes (nothing was sent: every outcome here is definite). */
static enum client_step clientAttemptConnect(struct tally_client *c, Tally__V1__ResultCode *code)
{
	assert(c != NULL && code != NULL);
	*code = CODE(OK);
	if (c->fd >= 0 && clientIdleUnusable(c)) {
		/* Most likely an idle timeout: the same node first. */
		snprintf(c->redirect, sizeof(c->redirect), "%s", c->address);
		clientDisconnect(c);
	}
	if (c->fd >= 0)
		return STEP_DONE;
	char target[sizeof(c->redirect)];
	bool follow = c->redirect[0] != '\0';
	snprintf(target, sizeof(target), "%s", follow ? c->redirect : c->nodes[c->cursor]);
	c->redirect[0] = '\0';
	*code = clientConnect(c, target);
	assert(*code != CODE(TIMEOUT)); /* a handshake that failed sent no request */
	if (*code != CODE(UNAVAILABLE))
		return STEP_DONE;
	if (!follow)
		clientAdvance(c);
	/* A leader named by a follower but unreachable is most likely dead and an
	 * election under way: back off before asking again. */
	return follow ? STEP_BACKOFF : STEP_NEXT;
}

/* One attempt: (re)connect when needed, send the request in c->wbuf, read its answer.
 * Anything but a well-formed answer after the request went out is unknown for a
 * request with an effect (TIMEOUT, final) and no answer for one without (tried again
 * elsewhere; INTERNAL, final, for a malformed answer). */
static enum client_step clientAttempt(struct tally_client *c, const struct client_ask *ask,
				      size_t frame_len, struct tally_arena *arena,
				      Tally__V1__Response **out, Tally__V1__ResultCode *code)
{
	assert(c != NULL && ask != NULL && arena != NULL && out != NULL && code != NULL);
	assert(c->pending == 0 && c->lost == 0);
	enum client_step step = clientAttemptConnect(c, code);
	if (step != STEP_DONE || *code != CODE(OK))
		return step;
	enum client_io io = clientRoundTrip(c, c->wbuf, frame_len, ask->call_id,
					    clientNowMs() + c->timeout_ms, arena, out);
	if (io == IO_OK && (*out)->call_id == 0 && (*out)->code != CODE(INVALID_ARGUMENT)) {
		/* A goodbye (idle timeout, shutdown) with the request in the node's hands. */
		clientErr(c, "%s: the node closed the connection: %s: %.120s", c->address,
			  tally_result_name((*out)->code), (*out)->message);
		io = IO_LOST;
	} else if (io == IO_OK && (*out)->call_id != 0 && !clientWellFormed(c, ask, *out)) {
		io = IO_BAD;
	}
	if (io == IO_OK)
		return clientOutcome(c, *out, code);
	clientDisconnect(c);
	assert(c->lost == 0); /* a blocking call has no pipelined requests to lose */
	*out = NULL;
	bool effect = clientHasEffect(ask);
	if (io == IO_BAD) {
		*code = effect ? CODE(TIMEOUT) : CODE(INTERNAL);
		return STEP_DONE;
	}
	clientAdvance(c);
	*code = io == IO_UNSENT ? CODE(UNAVAILABLE) : CODE(TIMEOUT);
	return io == IO_UNSENT || !effect ? STEP_NEXT : STEP_DONE;
}

/* Sends req (call id assigned here) until an attempt is final or the attempts run
 * out. *out is the answer when a well-formed one came (whatever its code), else NULL.
 * Every attempt before the last one ended definitely not applied, so running out of
 * attempts is UNAVAILABLE (or, for a request without effect, TIMEOUT). */
static Tally__V1__ResultCode clientCall(struct tally_client *c, Tally__V1__Request *req,
					struct tally_arena *arena, Tally__V1__Response **out)
{
	assert(c != NULL && req != NULL && arena != NULL && out != NULL);
	assert(c->attempts > 0);
	*out = NULL;
	if (c->pending != 0 || c->lost != 0) {
		clientErr(c, "pipelined answers outstanding: receive them first");
		return CODE(INVALID_ARGUMENT);
	}
	req->call_id = c->call_id_next++;
	size_t frame_len = clientEncode(c, req);
	if (frame_len == 0)
		return CODE(INVALID_ARGUMENT);
	const struct client_ask ask = clientAskOf(req);
	unsigned backoff_ms = CLIENT_BACKOFF_MS_MIN;
	size_t failed = 0;
	Tally__V1__ResultCode code = CODE(UNAVAILABLE);
	for (unsigned attempt = 0; attempt < c->attempts; attempt++) {
		bool last = attempt + 1 == c->attempts;
		switch (clientAttempt(c, &ask, frame_len, arena, out, &code)) {
		case STEP_DONE:
			return code;
		case STEP_FOLLOW:
			break;
		case STEP_NEXT:
			if (++failed >= c->n_nodes && !last) {
				clientBackoff(&backoff_ms);
				failed = 0;
			}
			break;
		case STEP_BACKOFF:
			if (!last)
				clientBackoff(&backoff_ms);
			failed = 0;
			break;
		}
	}
	*out = NULL;
	assert(code != CODE(TIMEOUT) || !clientHasEffect(&ask));
	return code == CODE(NOT_LEADER) ? CODE(UNAVAILABLE) : code;
}

Tally__V1__ResultCode tally_client_command(struct tally_client *c, const Tally__V1__Command *cmd,
					   struct tally_arena *arena,
					   Tally__V1__CommandResult **result)
{
	assert(c != NULL && cmd != NULL);
	assert(arena != NULL && result != NULL);
	*result = NULL;
	Tally__V1__Request req = TALLY__V1__REQUEST__INIT;
	req.body_case = TALLY__V1__REQUEST__BODY_COMMAND;
	req.command = (Tally__V1__Command *)cmd;
	Tally__V1__Response *r = NULL;
	Tally__V1__ResultCode code = clientCall(c, &req, arena, &r);
	if (code == CODE(OK))
		*result = r->result; /* well formed: clientWellFormed */
	return code;
}

Tally__V1__ResultCode tally_client_batch(struct tally_client *c,
					 Tally__V1__Command *const *cmds, size_t n,
					 struct tally_arena *arena,
					 Tally__V1__BatchResult **results)
{
	assert(c != NULL && (cmds != NULL || n == 0));
	assert(arena != NULL && results != NULL);
	*results = NULL;
	if (n > TALLY_BATCH_COMMANDS_MAX) {
		clientErr(c, "batch of %zu commands, at most %d", n, TALLY_BATCH_COMMANDS_MAX);
		return CODE(INVALID_ARGUMENT);
	}
	Tally__V1__CommandList list = TALLY__V1__COMMAND_LIST__INIT;
	list.n_commands = n;
	list.commands = (Tally__V1__Command **)cmds;
	Tally__V1__Request req = TALLY__V1__REQUEST__INIT;
	req.body_case = TALLY__V1__REQUEST__BODY_BATCH;
	req.batch = &list;
	Tally__V1__Response *r = NULL;
	Tally__V1__ResultCode code = clientCall(c, &req, arena, &r);
	if (code == CODE(OK))
		*results = r->batch; /* n results: clientWellFormed */
	return code;
}

Tally__V1__ResultCode tally_client_query(struct tally_client *c, const Tally__V1__Query *q,
					 struct tally_arena *arena, Tally__V1__QueryResult **res)
{
	assert(c != NULL && q != NULL);
	assert(arena != NULL && res != NULL);
	*res = NULL;
	Tally__V1__Request req = TALLY__V1__REQUEST__INIT;
	req.body_case = TALLY__V1__REQUEST__BODY_QUERY;
	req.query = (Tally__V1__Query *)q;
	Tally__V1__Response *r = NULL;
	Tally__V1__ResultCode code = clientCall(c, &req, arena, &r);
	if (code == CODE(OK))
		*res = r->query;
	return code;
}

Tally__V1__ResultCode tally_client_admin(struct tally_client *c, const Tally__V1__Admin *a,
					 struct tally_arena *arena, Tally__V1__Response **res)
{
	assert(c != NULL && a != NULL);
	assert(arena != NULL && res != NULL);
	*res = NULL;
	Tally__V1__Request req = TALLY__V1__REQUEST__INIT;
	req.body_case = TALLY__V1__REQUEST__BODY_ADMIN;
	req.admin = (Tally__V1__Admin *)a;
	Tally__V1__Response *r = NULL;
	Tally__V1__ResultCode code = clientCall(c, &req, arena, &r);
	/* The node answered the operation itself: done, or refused (nothing changed). */
	if (r != NULL && clientBusinessCode(r->code)) {
		*res = r;
		return CODE(OK);
	}
	return code;
}

/* ---- pipelining ---------------------------------------------------------------- */

/* The slot of call_id in the table of due requests: its entry, or the free slot where
 * it would go. Call ids are consecutive, so the low bits spread them evenly. */
static size_t clientDueSlot(const struct tally_client *c, uint64_t call_id)
{
	assert(c != NULL && c->due_slots > 0);
	assert(call_id != 0);
	size_t mask = c->due_slots - 1;
	size_t i = (size_t)call_id & mask;
	while (c->due[i].call_id != 0 && c->due[i].call_id != call_id)
		i = (i + 1) & mask;
	return i;
}

/* Makes room for one more due request (the table stays at most half full). */
static bool clientDueReserve(struct tally_client *c)
{
	assert(c != NULL);
	assert(c->pending < CLIENT_PIPELINE_MAX);
	if (2 * ((size_t)c->pending + 1) <= c->due_slots)
		return true;
	size_t slots = c->due_slots == 0 ? CLIENT_DUE_SLOTS_MIN : 2 * c->due_slots;
	struct client_ask *old = c->due;
	size_t old_slots = c->due_slots;
	c->due = calloc(slots, sizeof(*c->due));
	if (c->due == NULL) {
		c->due = old;
		clientErr(c, "out of memory for %u requests in flight", c->pending + 1);
		return false;
	}
	c->due_slots = slots;
	for (size_t i = 0; i < old_slots; i++)
		if (old[i].call_id != 0)
			c->due[clientDueSlot(c, old[i].call_id)] = old[i];
	free(old);
	return true;
}

/* Removes the entry in slot i, moving later entries of its probe run back so that
 * every entry stays reachable from its home slot. */
static void clientDueRemove(struct tally_client *c, size_t i)
{
	assert(c != NULL && i < c->due_slots);
	assert(c->due[i].call_id != 0 && c->pending > 0);
	size_t mask = c->due_slots - 1;
	for (size_t j = (i + 1) & mask; c->due[j].call_id != 0; j = (j + 1) & mask) {
		size_t home = (size_t)c->due[j].call_id & mask;
		/* The entry at j may fill the hole at i unless its home lies in (i, j]. */
		if (((j - home) & mask) < ((j - i) & mask))
			continue;
		c->due[i] = c->due[j];
		i = j;
	}
	c->due[i].call_id = 0;
	c->pending--;
}

Tally__V1__ResultCode tally_client_send(struct tally_client *c, Tally__V1__Request *req)
{
	assert(c != NULL && req != NULL);
	assert(c->attempts > 0);
	/* Only the kinds whose answers clientWellFormed knows how to check. */
	if (req->body_case != TALLY__V1__REQUEST__BODY_COMMAND &&
	    req->body_case != TALLY__V1__REQUEST__BODY_BATCH &&
	    req->body_case != TALLY__V1__REQUEST__BODY_QUERY &&
	    req->body_case != TALLY__V1__REQUEST__BODY_ADMIN) {
		clientErr(c, "a request needs a command, batch, query or admin body");
		return CODE(INVALID_ARGUMENT);
	}
	if (c->pending + c->lost >= CLIENT_PIPELINE_MAX) {
		clientErr(c, "%u answers outstanding: receive some first", CLIENT_PIPELINE_MAX);
		return CODE(INVALID_ARGUMENT);
	}
	req->call_id = c->call_id_next++;
	size_t frame_len = clientEncode(c, req);
	if (frame_len == 0)
		return CODE(INVALID_ARGUMENT);
	if (!clientDueReserve(c))
		return CODE(INTERNAL);
	if (c->fd >= 0 && c->pending == 0 && clientIdleUnusable(c))
		clientDisconnect(c);
	for (unsigned attempt = 0; attempt < c->attempts; attempt++) {
		if (c->fd < 0) {
			Tally__V1__ResultCode code = clientConnectAny(c, c->attempts);
			if (code != CODE(OK))
				return code;
		}
		int64_t deadline_ms = clientNowMs() + c->timeout_ms;
		if (clientWriteAll(c, c->wbuf, frame_len, deadline_ms) == IO_OK) {
			c->due[clientDueSlot(c, req->call_id)] = clientAskOf(req);
			c->pending++;
			return CODE(OK);
		}
		clientDisconnect(c);
		clientAdvance(c);
	}
	return CODE(UNAVAILABLE);
}

Tally__V1__ResultCode tally_client_recv(struct tally_client *c, struct tally_arena *arena,
					Tally__V1__Response **res)
{
	assert(c != NULL && arena != NULL && res != NULL);
	assert(c->pending == 0 || c->fd >= 0);
	*res = NULL;
	if (c->lost > 0) {
		c->lost--;
		return CODE(TIMEOUT);
	}
	if (c->pending == 0) {
		clientErr(c, "nothing outstanding to receive");
		return CODE(INVALID_ARGUMENT);
	}
	const uint8_t *body = NULL;
	size_t len = 0;
	enum client_io io = clientReadFrame(c, clientNowMs() + c->timeout_ms, &body, &len);
	Tally__V1__Response *r = io == IO_OK ? clientDecode(c, body, len, arena) : NULL;
	size_t slot = 0;
	bool due = false;
	if (r != NULL && r->call_id == 0) {
		clientErr(c, "%s: the node closed the connection: %s: %.120s", c->address,
			  tally_result_name(r->code), r->message);
	} else if (r != NULL) {
		slot = clientDueSlot(c, r->call_id);
		due = c->due[slot].call_id != 0 && clientWellFormed(c, &c->due[slot], r);
		if (c->due[slot].call_id == 0)
			clientErr(c, "%s: an answer to call %llu, which is not due", c->address,
				  (unsigned long long)r->call_id);
	}
	if (!due) {
		clientDisconnect(c); /* every answer still due is lost; this is one of them */
		assert(c->lost > 0);
		c->lost--;
		return CODE(TIMEOUT);
	}
	clientDueRemove(c, slot);
	*res = r;
	return CODE(OK);
}

/* Decrypts what the TLS session holds into the frame reader, without reading the
 * socket: false when the session ended or failed (recv then says so). */
static bool clientTlsDrain(struct tally_client *c)
{
	assert(c != NULL && c->tls != NULL);
	for (;;) {
		size_t got = 0;
		enum tally_tls_status st = tally_tls_read(c->tls, c->rbuf, sizeof(c->rbuf), &got);
		if (st == TALLY_TLS_AGAIN)
			return true;
		if (st != TALLY_TLS_DONE || tally_frame_reader_feed(&c->reader, c->rbuf, got) != 0)
			return false;
	}
}

/* Whether recv, with an answer due, can take something without waiting for the
 * socket: an outcome decided, or a frame (or the start of one) already read. */
static bool clientReadyNow(struct tally_client *c)
{
	assert(c->pending > 0 && c->fd >= 0);
	if (c->lost > 0 || tally_frame_reader_ready(&c->reader))
		return true;
	return c->tls != NULL && (!clientTlsDrain(c) || tally_frame_reader_ready(&c->reader));
}

static int clientPoll(struct pollfd *p, size_t n, int64_t timeout_us)
{
	struct timespec t = {(time_t)(timeout_us / 1000000), (long)(timeout_us % 1000000) * 1000};
	int rc = ppoll(p, (nfds_t)n, timeout_us < 0 ? NULL : &t, NULL);
	return rc < 0 && errno == EINTR ? 0 : rc; /* an error: recv reports it */
}

int tally_client_wait(struct tally_client *c, int64_t timeout_us)
{
	assert(c != NULL);
	assert(c->pending == 0 || c->fd >= 0);
	if (c->pending == 0 || clientReadyNow(c))
		return 1;
	struct pollfd p = {.fd = c->fd, .events = POLLIN, .revents = 0};
	c->readable = clientPoll(&p, 1, timeout_us) > 0;
	return c->readable;
}

size_t tally_client_wait_any(struct tally_client *const *clients, size_t n, int64_t timeout_us,
			     bool *ready)
{
	assert((clients != NULL && ready != NULL) || n == 0);
	assert(n <= TALLY_CLIENT_WAIT_ANY_MAX);
	struct pollfd p[TALLY_CLIENT_WAIT_ANY_MAX];
	size_t at[TALLY_CLIENT_WAIT_ANY_MAX], k = 0, found = 0;
	for (size_t i = 0; i < n; i++) {
		struct tally_client *c = clients[i];
		assert(c != NULL);
		ready[i] = c->pending > 0 && clientReadyNow(c);
		found += ready[i];
		if (c->pending > 0 && !ready[i]) {
			p[k] = (struct pollfd){.fd = c->fd, .events = POLLIN, .revents = 0};
			at[k++] = i;
		}
	}
	/* With an answer in hand already, only a look at the other sockets. */
	if (k == 0 || clientPoll(p, k, found > 0 ? 0 : timeout_us) == 0)
		return found;
	for (size_t j = 0; j < k; j++) {
		ready[at[j]] = p[j].revents != 0;
		clients[at[j]]->readable = ready[at[j]];
		found += ready[at[j]];
	}
	return found;
}

Tally__V1__ResultCode tally_client_follow(struct tally_client *c, const char *address)
{
	assert(c != NULL && address != NULL);
	if (!clientValidAddress(address)) {
		clientErr(c, "bad address '%.64s' (expected host:port)", address);
		return CODE(INVALID_ARGUMENT);
	}
	char target[CLIENT_ADDRESS_BYTES_MAX + 1];
	snprintf(target, sizeof(target), "%s", address);
	c->redirect[0] = '\0';
	return clientConnect(c, target);
}

/* ---- lifecycle ----------------------------------------------------------------- */

/* Copies and checks the options; INVALID_ARGUMENT (described) when one is wrong. */
static Tally__V1__ResultCode clientConfigure(struct tally_client *c,
					     const struct tally_client_options *o)
{
	assert(c != NULL && o != NULL);
	c->timeout_ms = o->timeout_ms == 0 ? CLIENT_TIMEOUT_MS_DEFAULT : o->timeout_ms;
	c->attempts = o->attempts == 0 ? CLIENT_ATTEMPTS_DEFAULT : o->attempts;
	c->frame_bytes_max = o->frame_bytes_max == 0 ? TALLY_FRAME_BYTES_DEFAULT
						     : o->frame_bytes_max;
	size_t name_len = o->key_name == NULL ? 0 : strnlen(o->key_name, 256);
	size_t secret_len = o->secret == NULL ? 0 : strnlen(o->secret, 1024);
	if (o->cluster == NULL || !clientParseCluster(c, o->cluster)) {
		if (o->cluster == NULL)
			clientErr(c, "no cluster list");
	} else if (name_len == 0 || name_len > TALLY_KEY_NAME_BYTES_MAX) {
		clientErr(c, "key name must be 1..%d bytes", TALLY_KEY_NAME_BYTES_MAX);
	} else if (secret_len < CLIENT_SECRET_BYTES_MIN || secret_len > TALLY_SECRET_BYTES_MAX) {
		clientErr(c, "secret must be %d..%d bytes", CLIENT_SECRET_BYTES_MIN,
			  TALLY_SECRET_BYTES_MAX);
	} else if (c->timeout_ms > CLIENT_TIMEOUT_MS_MAX || c->attempts > CLIENT_ATTEMPTS_MAX) {
		clientErr(c, "timeout_ms at most %u, attempts at most %u", CLIENT_TIMEOUT_MS_MAX,
			  CLIENT_ATTEMPTS_MAX);
	} else if (c->frame_bytes_max < CLIENT_FRAME_BYTES_MIN ||
		   c->frame_bytes_max > CLIENT_FRAME_BYTES_MAX) {
		clientErr(c, "frame_bytes_max must be %u..%u", CLIENT_FRAME_BYTES_MIN,
			  CLIENT_FRAME_BYTES_MAX);
	} else if (o->ca_file != NULL &&
		   tally_tls_ctx_client(&c->tls_ctx, o->ca_file, c->err, sizeof(c->err)) != 0) {
		/* c->err says why */
	} else {
		memcpy(c->key_name, o->key_name, name_len + 1);
		memcpy(c->secret, o->secret, secret_len + 1);
		return CODE(OK);
	}
	return CODE(INVALID_ARGUMENT);
}

Tally__V1__ResultCode tally_client_open(struct tally_client **out,
					const struct tally_client_options *o,
					char *err, size_t errcap)
{
	assert(out != NULL && o != NULL);
	assert(err != NULL || errcap == 0);
	*out = NULL;
	struct tally_client *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		if (errcap > 0)
			snprintf(err, errcap, "out of memory");
		return CODE(INTERNAL);
	}
	c->fd = -1;
	c->call_id_next = 1;
	Tally__V1__ResultCode code = clientConfigure(c, o);
	if (code == CODE(OK)) {
		/* Left zeroed otherwise, which tally_client_close accepts. */
		tally_frame_reader_init(&c->reader, c->frame_bytes_max);
		tally_arena_init(&c->scratch, 4096, CLIENT_SCRATCH_BYTES_MAX);
		unsigned budget = c->attempts > c->n_nodes ? c->attempts : (unsigned)c->n_nodes;
		code = clientConnectAny(c, budget);
	}
	if (code != CODE(OK)) {
		if (errcap > 0)
			snprintf(err, errcap, "%s", c->err);
		tally_client_close(c);
		return code;
	}
	c->err[0] = '\0';
	*out = c;
	return CODE(OK);
}

void tally_client_close(struct tally_client *c)
{
	if (c == NULL)
		return;
	assert(c->n_nodes <= CLIENT_NODES_MAX);
	clientDisconnect(c);
	tally_frame_reader_free(&c->reader);
	tally_arena_free(&c->scratch);
	free(c->wbuf);
	free(c->due);
	tally_tls_ctx_free(c->tls_ctx);
	OPENSSL_cleanse(c->secret, sizeof(c->secret));
	free(c);
}

const char *tally_client_address(const struct tally_client *c)
{
	assert(c != NULL);
	return c->address;
}

const char *tally_client_error(const struct tally_client *c)
{
	assert(c != NULL);
	return c->err;
}
