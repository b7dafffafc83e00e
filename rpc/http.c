/* A one-request-per-connection HTTP/1.0 responder on the node's loop. */
#include "rpc/http.h"

#include <assert.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "consensus/transport.h"
#include "ledger/error.h"

#define HTTP_REQUEST_BYTES_MAX 8192
#define HTTP_BODY_BYTES_MAX (256 << 10)

struct tally_http {
	uv_loop_t *loop;
	uv_tcp_t listener;
	tally_http_render_fn render;
	void *data;
	unsigned open;             /* connections plus the listener */
	unsigned conns;            /* connections not yet closing (capped at HTTP_CONNECTIONS_MAX) */
	struct hconn *list;        /* every connection, to end them at close */
	void (*close_cb)(void *data);
	void *close_data;
	bool closing;
};

struct hconn {
	struct tally_http *h;
	struct hconn *prev, *next;
	uv_tcp_t tcp;
	uv_timer_t timer;          /* the whole request must arrive within HTTP_REQUEST_MS */
	unsigned handles;          /* tcp and timer until their close callbacks */
	uv_write_t w;
	size_t len;
	char req[HTTP_REQUEST_BYTES_MAX];
	char *out;
};

static void http_maybe_done(struct tally_http *h)
{
	if (h->closing && h->open == 0 && h->close_cb != NULL) {
		void (*cb)(void *) = h->close_cb;
		h->close_cb = NULL;
		cb(h->close_data);
	}
}

static void on_hconn_closed(uv_handle_t *handle)
{
	struct hconn *c = handle->data;
	if (--c->handles > 0)
		return;
	struct tally_http *h = c->h;
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		h->list = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	free(c->out);
	free(c);
	h->open--;
	http_maybe_done(h);
}

/* The socket is closed here, so it leaves the cap here: a peer that has seen its
 * connection end and connects again must not meet a cap still counting it until the
 * close callbacks run, later in the loop's turn. */
static void hconn_close(struct hconn *c)
{
	if (!uv_is_closing((uv_handle_t *)&c->tcp)) {
		assert(c->h->conns > 0);
		c->h->conns--;
		uv_close((uv_handle_t *)&c->tcp, on_hconn_closed);
		uv_close((uv_handle_t *)&c->timer, on_hconn_closed);
	}
}

static void on_deadline(uv_timer_t *t)
{
	hconn_close(t->data); /* too slow to ask, or to read the answer */
}

static void on_sent(uv_write_t *w, int status)
{
	(void)status;
	hconn_close(w->data);
}

static void reply(struct hconn *c, int status, const char *type, const char *body, size_t n)
{
	const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found"
			   : status == 503 ? "Service Unavailable" : "Bad Request";
	c->out = malloc(n + 256);
	if (c->out == NULL) {
		hconn_close(c);
		return;
	}
	int head = snprintf(c->out, 256,
			    "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			    "Connection: close\r\n\r\n", status, reason, type, n);
	memcpy(c->out + head, body, n);
	uv_buf_t buf = uv_buf_init(c->out, (unsigned)(head + (int)n));
	c->w.data = c;
	uv_read_stop((uv_stream_t *)&c->tcp);
	if (uv_write(&c->w, (uv_stream_t *)&c->tcp, &buf, 1, on_sent) != 0)
		hconn_close(c);
}

static void answer(struct hconn *c)
{
	char path[256];
	if (sscanf(c->req, "GET %255s", path) != 1) {
		reply(c, 400, "text/plain", "bad request\n", 12);
		return;
	}
	char *body = malloc(HTTP_BODY_BYTES_MAX);
	if (body == NULL) {
		hconn_close(c);
		return;
	}
	int status = 404;
	const char *type = "text/plain";
	size_t n = c->h->render(c->h->data, path, body, HTTP_BODY_BYTES_MAX, &status, &type);
	reply(c, status, type, body, n);
	free(body);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
	(void)suggested;
	struct hconn *c = handle->data;
	*buf = uv_buf_init(c->req + c->len, (unsigned)(sizeof(c->req) - 1 - c->len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	(void)buf;
	struct hconn *c = s->data;
	if (nread < 0) {
		hconn_close(c);
		return;
	}
	c->len += (size_t)nread;
	c->req[c->len] = '\0';
	if (strstr(c->req, "\r\n\r\n") != NULL || strstr(c->req, "\n\n") != NULL)
		answer(c);
	else if (c->len + 1 >= sizeof(c->req))
		reply(c, 400, "text/plain", "request too large\n", 18);
}

static void on_connection(uv_stream_t *listener, int status)
{
	struct tally_http *h = listener->data;
	if (status != 0 || h->closing)
		return;
	struct hconn *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return;
	c->h = h;
	uv_tcp_init(h->loop, &c->tcp);
	uv_timer_init(h->loop, &c->timer);
	c->tcp.data = c->timer.data = c;
	c->handles = 2;
	c->next = h->list;
	if (h->list != NULL)
		h->list->prev = c;
	h->list = c;
	h->open++;
	h->conns++;
	if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0 || h->conns > HTTP_CONNECTIONS_MAX ||
	    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
		hconn_close(c); /* over the cap: closed unanswered, the scraper retries */
		return;
	}
	uv_timer_start(&c->timer, on_deadline, HTTP_REQUEST_MS, 0);
}

int tally_http_init(struct tally_http **out, uv_loop_t *loop, const char *listen_address,
		    tally_http_render_fn render, void *data, char *err, size_t errcap)
{
	assert(out != NULL && loop != NULL && render != NULL);
	struct tally_http *h = calloc(1, sizeof(*h));
	if (h == NULL)
		return TALLY_ENOMEM;
	h->loop = loop;
	h->render = render;
	h->data = data;
	struct sockaddr_storage addr;
	int rc = tally_address_sockaddr(listen_address, &addr);
	uv_tcp_init(loop, &h->listener);
	h->listener.data = h;
	h->open = 1;
	if (rc == 0)
		rc = uv_tcp_bind(&h->listener, (const struct sockaddr *)&addr, 0);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&h->listener, 64, on_connection);
	if (rc != 0) {
		snprintf(err, errcap, "http listen on %s: %s", listen_address, uv_strerror(rc));
		h->closing = true;
		uv_close((uv_handle_t *)&h->listener, NULL);
		uv_run(loop, UV_RUN_NOWAIT);
		free(h);
		return TALLY_EIO;
	}
	*out = h;
	return 0;
}

static void on_listener_closed(uv_handle_t *handle)
{
	struct tally_http *h = handle->data;
	h->open--;
	http_maybe_done(h);
}

void tally_http_close(struct tally_http *h, void (*cb)(void *data), void *data)
{
	assert(h != NULL && !h->closing);
	h->closing = true;
	h->close_cb = cb;
	h->close_data = data;
	uv_close((uv_handle_t *)&h->listener, on_listener_closed);
	for (struct hconn *c = h->list; c != NULL; c = c->next)
		hconn_close(c);
}

void tally_http_free(struct tally_http *h)
{
	free(h);
}
