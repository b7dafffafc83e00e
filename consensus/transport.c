/*
 * consensus/transport — TCP_NODELAY and "raft|client" addresses around raft_uv_tcp.
 *
 * Every callback of the inner transport finds the wrapper through inner.data; the
 * outer transport's `data` belongs to raft_uv (it uses it as its "transport open"
 * flag), so the wrapper keeps its own state in outer.impl only.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "consensus/transport.h"

/* One outgoing connection attempt: raft's request plus the inner one we issue. */
struct transport_connect {
	struct raft_uv_connect inner;  /* handed to raft_uv_tcp; inner.data = this */
	struct raft_uv_connect *outer; /* raft's request, completed from ours */
	struct tally_transport *t;
	char raft_address[TALLY_ADDRESS_BYTES_MAX + 1];
};

static int address_part(const char *address, bool client, char *buf, size_t cap)
{
	assert(address != NULL && buf != NULL && cap > 0);
	const char *bar = strchr(address, '|');
	const char *from = client ? (bar != NULL ? bar + 1 : address + strlen(address)) : address;
	size_t len = client ? strlen(from) : (bar != NULL ? (size_t)(bar - address) : strlen(address));
	if (len >= cap)
		return RAFT_NAMETOOLONG;
	memcpy(buf, from, len);
	buf[len] = '\0';
	return 0;
}

int tally_address_raft(const char *address, char *buf, size_t cap)
{
	return address_part(address, false, buf, cap);
}

int tally_address_client(const char *address, char *buf, size_t cap)
{
	return address_part(address, true, buf, cap);
}

int tally_address_sockaddr(const char *host_port, struct sockaddr_storage *out)
{
	assert(host_port != NULL && out != NULL);
	char host[TALLY_ADDRESS_BYTES_MAX + 1];
	const char *colon = strrchr(host_port, ':');
	if (colon == NULL || (size_t)(colon - host_port) >= sizeof(host))
		return UV_EINVAL;
	memcpy(host, host_port, (size_t)(colon - host_port));
	host[colon - host_port] = '\0';
	char *end = NULL;
	long port = strtol(colon + 1, &end, 10);
	if (end == colon + 1 || *end != '\0' || port <= 0 || port > 65535)
		return UV_EINVAL;
	memset(out, 0, sizeof(*out));
	if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)out) == 0)
		return 0;
	return uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)out);
}

/* Disables Nagle on a stream raft is about to use. Failure only costs latency. */
static void transport_nodelay(struct uv_stream_s *stream)
{
	assert(stream != NULL);
	assert(stream->type == UV_TCP);
	(void)uv_tcp_nodelay((uv_tcp_t *)stream, 1);
}

static void transport_errmsg(struct tally_transport *t)
{
	memcpy(t->outer.errmsg, t->inner.errmsg, sizeof(t->outer.errmsg));
	t->outer.errmsg[sizeof(t->outer.errmsg) - 1] = '\0';
}

/* raft_uv_transport->init: listen on the raft part, announce the whole address. The
 * inner transport keeps the `address` pointer (raft's own copy, alive until close). */
static int transport_init(struct raft_uv_transport *outer, raft_id id, const char *address)
{
	struct tally_transport *t = outer->impl;
	assert(t != NULL && id > 0);
	assert(address != NULL);
	int rv = tally_address_raft(address, t->raft_address, sizeof(t->raft_address));
	if (rv != 0) {
		strcpy(outer->errmsg, "address too long");
		return rv;
	}
	rv = raft_uv_tcp_set_bind_address(&t->inner, t->raft_address);
	if (rv != 0) {
		strcpy(outer->errmsg, "raft address is not IPv4 host:port");
		return rv;
	}
	rv = t->inner.init(&t->inner, id, address);
	if (rv != 0)
		transport_errmsg(t);
	return rv;
}

static void transport_accept_cb(struct raft_uv_transport *inner, raft_id id,
				const char *address, struct uv_stream_s *stream)
{
	struct tally_transport *t = inner->data;
	assert(t != NULL && t->accept_cb != NULL);
	transport_nodelay(stream);
	t->accept_cb(&t->outer, id, address, stream);
}

/* raft_uv_tcp 0.15 reports a failed bind or listen as RAFT_IOERR and says nothing
 * more, which left a node that could not take its port logging "raft start: ". Binding
 * the address again, as libuv does (SO_REUSEADDR), recovers the reason. */
static void transport_listen_error(struct tally_transport *t)
{
	assert(t != NULL);
	struct sockaddr_storage sa;
	int err = EINVAL;
	if (tally_address_sockaddr(t->raft_address, &sa) == 0) {
		int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
		socklen_t len = sa.ss_family == AF_INET ? sizeof(struct sockaddr_in)
							: sizeof(struct sockaddr_in6);
		if (fd < 0)
			err = errno;
		else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
			 bind(fd, (struct sockaddr *)&sa, len) != 0 || listen(fd, 1) != 0)
			err = errno;
		else
			err = 0;
		if (fd >= 0)
			close(fd);
	}
	snprintf(t->outer.errmsg, sizeof(t->outer.errmsg), "listen on %.64s: %s", t->raft_address,
		 err != 0 ? strerror(err) : "failed (the address binds now: a transient error)");
}

static int transport_listen(struct raft_uv_transport *outer, raft_uv_accept_cb cb)
{
	struct tally_transport *t = outer->impl;
	assert(t != NULL && cb != NULL);
	t->accept_cb = cb;
	int rv = t->inner.listen(&t->inner, transport_accept_cb);
	if (rv != 0) {
		transport_errmsg(t);
		if (t->outer.errmsg[0] == '\0')
			transport_listen_error(t);
	}
	return rv;
}

static void transport_connect_cb(struct raft_uv_connect *inner, struct uv_stream_s *stream,
				 int status)
{
	struct transport_connect *c = inner->data;
	assert(c != NULL && c->outer != NULL);
	struct raft_uv_connect *outer = c->outer;
	struct tally_transport *t = c->t;
	assert(t->connects_pending > 0);
	t->connects_pending--;
	free(c);
	if (status == 0 && stream != NULL)
		transport_nodelay(stream);
	outer->cb(outer, stream, status);
}

static int transport_connect(struct raft_uv_transport *outer, struct raft_uv_connect *req,
			     raft_id id, const char *address, raft_uv_connect_cb cb)
{
	struct tally_transport *t = outer->impl;
	assert(t != NULL && req != NULL);
	assert(address != NULL && cb != NULL);
	struct transport_connect *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		strcpy(outer->errmsg, "out of memory");
		return RAFT_NOMEM;
	}
	int rv = tally_address_raft(address, c->raft_address, sizeof(c->raft_address));
	if (rv != 0) {
		free(c);
		strcpy(outer->errmsg, "address too long");
		return rv;
	}
	req->cb = cb;
	c->outer = req;
	c->t = t;
	c->inner.data = c;
	rv = t->inner.connect(&t->inner, &c->inner, id, c->raft_address, transport_connect_cb);
	if (rv != 0) {
		transport_errmsg(t);
		free(c);
		return rv;
	}
	t->connects_pending++;
	return 0;
}

static void transport_close_cb(struct raft_uv_transport *inner)
{
	struct tally_transport *t = inner->data;
	assert(t != NULL && t->close_cb != NULL);
	assert(t->connects_pending == 0);
	t->close_cb(&t->outer);
}

static void transport_close(struct raft_uv_transport *outer, raft_uv_transport_close_cb cb)
{
	struct tally_transport *t = outer->impl;
	assert(t != NULL && cb != NULL);
	assert(t->close_cb == NULL);
	t->close_cb = cb;
	t->inner.close(&t->inner, transport_close_cb);
}

int tally_transport_init(struct tally_transport *t, uv_loop_t *loop, struct tally_tls_ctx *tls)
{
	assert(t != NULL && loop != NULL);
	memset(t, 0, sizeof(*t));
	t->loop = loop;
	t->tls = tls;
	if (tls != NULL) {
		tally_tlsnet_setup(t);
		return 0;
	}
	t->inner.data = t; /* raft_uv_tcp_init keeps `data` */
	int rv = raft_uv_tcp_init(&t->inner, loop);
	if (rv != 0)
		return rv;
	assert(t->inner.data == t);
	t->outer.impl = t;
	t->outer.init = transport_init;
	t->outer.listen = transport_listen;
	t->outer.connect = transport_connect;
	t->outer.close = transport_close;
	return 0;
}

void tally_transport_free(struct tally_transport *t)
{
	assert(t != NULL);
	assert(t->connects_pending == 0);
	if (t->inner.impl != NULL)
		raft_uv_tcp_close(&t->inner);
	t->inner.impl = NULL;
	free(t->held);
	t->held = NULL;
	t->n_held = 0;
}
