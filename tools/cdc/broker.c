/*
 * tally-cdc's broker connection on librabbitmq (cdc.h): one channel, a durable topic
 * exchange, an optional durable queue bound to every entry, publisher confirms.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <amqp_tcp_socket.h>

#include "tools/cdc/cdc.h"

#define CHANNEL 1
/* Connecting, logging in and each declaration: given up after this long. */
#define BROKER_RPC_MS 10000

static struct timeval ms_tv(unsigned ms)
{
	return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

/* Whether an RPC's reply is a success; if not, says why in b->err. */
static bool reply_ok(struct cdc_broker *b, amqp_rpc_reply_t r, const char *what)
{
	if (r.reply_type == AMQP_RESPONSE_NORMAL)
		return true;
	b->refused = r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION;
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
		snprintf(b->err, sizeof(b->err), "%s: %s", what, amqp_error_string2(r.library_error));
	else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD || r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
		/* Both close methods start with reply_code, reply_text. */
		const amqp_channel_close_t *m = r.reply.decoded;
		snprintf(b->err, sizeof(b->err), "%s: the broker closed the %s: %u %.*s", what,
			 r.reply.id == AMQP_CHANNEL_CLOSE_METHOD ? "channel" : "connection",
			 m->reply_code, (int)m->reply_text.len, (const char *)m->reply_text.bytes);
	} else
		snprintf(b->err, sizeof(b->err), "%s: the broker answered %s", what,
			 amqp_method_name(r.reply.id));
	return false;
}

/* Whether the last RPC on b (amqp_get_rpc_reply) succeeded. */
static bool rpc_ok(struct cdc_broker *b, const char *what)
{
	return reply_ok(b, amqp_get_rpc_reply(b->conn), what);
}

static int connect_login(struct cdc_broker *b, const char *url)
{
	char copy[CDC_TEXT_BYTES];
	struct amqp_connection_info ci;
	snprintf(copy, sizeof(copy), "%s", url);
	if (amqp_parse_url(copy, &ci) != AMQP_STATUS_OK || ci.ssl) {
		snprintf(b->err, sizeof(b->err), "--broker: not an amqp:// URL: %s", url);
		return -1;
	}
	b->conn = amqp_new_connection();
	amqp_socket_t *sock = b->conn != NULL ? amqp_tcp_socket_new(b->conn) : NULL;
	struct timeval tv = ms_tv(BROKER_RPC_MS);
	if (sock == NULL) {
		snprintf(b->err, sizeof(b->err), "out of memory");
		return -1;
	}
	int st = amqp_socket_open_noblock(sock, ci.host, ci.port, &tv);
	if (st != AMQP_STATUS_OK) {
		snprintf(b->err, sizeof(b->err), "%s:%d: %s", ci.host, ci.port, amqp_error_string2(st));
		return -1;
	}
	amqp_set_handshake_timeout(b->conn, &tv);
	amqp_set_rpc_timeout(b->conn, &tv);
	amqp_rpc_reply_t r = amqp_login(b->conn, ci.vhost, 1, AMQP_DEFAULT_FRAME_SIZE, 0,
					AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
	if (!reply_ok(b, r, "login"))
		return -1;
	amqp_channel_open(b->conn, CHANNEL);
	return rpc_ok(b, "channel") ? 0 : -1;
}

static int declare(struct cdc_broker *b, const struct cdc_opts *o)
{
	amqp_bytes_t ex = amqp_cstring_bytes(o->exchange);
	amqp_exchange_declare(b->conn, CHANNEL, ex, amqp_cstring_bytes("topic"), 0, 1, 0, 0,
			      amqp_empty_table);
	if (!rpc_ok(b, "declaring the exchange"))
		return -1;
	if (o->queue == NULL)
		return 0;
	amqp_bytes_t q = amqp_cstring_bytes(o->queue);
	amqp_queue_declare(b->conn, CHANNEL, q, 0, 1, 0, 0, amqp_empty_table);
	if (!rpc_ok(b, "declaring the queue"))
		return -1;
	amqp_queue_bind(b->conn, CHANNEL, q, ex, amqp_cstring_bytes("#"), amqp_empty_table);
	return rpc_ok(b, "binding the queue") ? 0 : -1;
}

int cdc_broker_open(struct cdc_broker *b, const struct cdc_opts *o, bool confirms)
{
	b->err[0] = '\0';
	b->refused = false;
	if (connect_login(b, o->broker) != 0 || declare(b, o) != 0) {
		cdc_broker_close(b);
		return -1;
	}
	if (confirms) {
		amqp_confirm_select(b->conn, CHANNEL);
		if (!rpc_ok(b, "confirm.select")) {
			cdc_broker_close(b);
			return -1;
		}
	}
	b->next_tag = 1; /* a channel in confirm mode numbers its publishes from 1 */
	b->confirmed = 0;
	memset(b->acked, 0, sizeof(b->acked));
	return 0;
}

void cdc_broker_close(struct cdc_broker *b)
{
	if (b->conn == NULL)
		return;
	/* A polite close when the connection still works; a lost one just goes. */
	struct timeval tv = ms_tv(1000);
	amqp_set_rpc_timeout(b->conn, &tv);
	amqp_channel_close(b->conn, CHANNEL, AMQP_REPLY_SUCCESS);
	amqp_connection_close(b->conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(b->conn);
	b->conn = NULL;
}

int cdc_broker_publish(struct cdc_broker *b, const char *exchange, const char *routing_key,
		       const amqp_basic_properties_t *props, const void *body, size_t len,
		       uint64_t *tag)
{
	assert(b->next_tag - b->confirmed <= CDC_UNCONFIRMED_MAX);
	amqp_bytes_t data = {.len = len, .bytes = (void *)body};
	int st = amqp_basic_publish(b->conn, CHANNEL, amqp_cstring_bytes(exchange),
				    amqp_cstring_bytes(routing_key), 0, 0, props, data);
	if (st != AMQP_STATUS_OK) {
		snprintf(b->err, sizeof(b->err), "publish: %s", amqp_error_string2(st));
		return -1;
	}
	*tag = b->next_tag++;
	return 0;
}

/* Marks tag (with `multiple`, every tag up to it) confirmed, and moves b->confirmed
 * over every confirmed tag that follows it. */
static void ack(struct cdc_broker *b, uint64_t tag, bool multiple)
{
	if (tag >= b->next_tag || tag <= b->confirmed)
		return; /* not one of ours, or known already */
	if (multiple)
		for (uint64_t t = b->confirmed + 1; t <= tag; t++)
			b->acked[t % CDC_UNCONFIRMED_MAX] = 1;
	else
		b->acked[tag % CDC_UNCONFIRMED_MAX] = 1;
	while (b->confirmed + 1 < b->next_tag && b->acked[(b->confirmed + 1) % CDC_UNCONFIRMED_MAX]) {
		b->confirmed++;
		b->acked[b->confirmed % CDC_UNCONFIRMED_MAX] = 0;
	}
}

/* One frame of the confirm wait: 0 handled, -1 with b->err. */
static int confirm_frame(struct cdc_broker *b, const amqp_frame_t *f)
{
	if (f->frame_type != AMQP_FRAME_METHOD)
		return 0; /* a heartbeat or a body: nothing here asks for either */
	amqp_method_number_t id = f->payload.method.id;
	if (id == AMQP_BASIC_ACK_METHOD) {
		const amqp_basic_ack_t *a = f->payload.method.decoded;
		ack(b, a->delivery_tag, a->multiple);
		return 0;
	}
	if (id == AMQP_BASIC_NACK_METHOD) {
		const amqp_basic_nack_t *n = f->payload.method.decoded;
		snprintf(b->err, sizeof(b->err), "the broker refused message %llu (nack)",
			 (unsigned long long)n->delivery_tag);
		return -1;
	}
	snprintf(b->err, sizeof(b->err), "waiting for confirms, the broker sent %s",
		 amqp_method_name(id));
	return -1;
}

int cdc_broker_confirmed(struct cdc_broker *b, uint64_t tag)
{
	double deadline = cdc_now_s() + CDC_CONFIRM_MS / 1000.0;
	while (b->confirmed < tag) {
		double left = deadline - cdc_now_s();
		if (left <= 0) {
			snprintf(b->err, sizeof(b->err), "no confirm within %d ms", CDC_CONFIRM_MS);
			return -1;
		}
		struct timeval tv = ms_tv((unsigned)(left * 1000) + 1);
		amqp_frame_t f;
		amqp_maybe_release_buffers(b->conn);
		int st = amqp_simple_wait_frame_noblock(b->conn, &f, &tv);
		if (st == AMQP_STATUS_TIMEOUT)
			continue;
		if (st != AMQP_STATUS_OK) {
			snprintf(b->err, sizeof(b->err), "waiting for confirms: %s", amqp_error_string2(st));
			return -1;
		}
		uint64_t before = b->confirmed;
		if (confirm_frame(b, &f) != 0)
			return -1;
		if (b->confirmed > before)
			deadline = cdc_now_s() + CDC_CONFIRM_MS / 1000.0;
	}
	return 0;
}

int cdc_broker_consume(struct cdc_broker *b, const struct cdc_opts *o)
{
	amqp_basic_qos(b->conn, CHANNEL, 0, CDC_PREFETCH, 0);
	if (!rpc_ok(b, "basic.qos"))
		return -1;
	amqp_basic_consume(b->conn, CHANNEL, amqp_cstring_bytes(o->queue), amqp_empty_bytes, 0, 0, 0,
			   amqp_empty_table);
	return rpc_ok(b, "basic.consume") ? 0 : -1;
}
