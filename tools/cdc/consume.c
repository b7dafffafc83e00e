/*
 * tally-cdc consume: a consumer of the change stream (cdc.h) — the demo's, and the
 * model for others. It prints each entry once, in order: a sequence number it has
 * already seen (a message published again after a crash) is acknowledged and dropped,
 * and one that skips ahead is a gap, reported and fatal. A message is acknowledged
 * only after its line is written. A lost broker is reconnected to.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/checkpoint.h"
#include "rpc/units.h"
#include "tools/cdc/cdc.h"

/* How long one wait for a delivery lasts before the stop flag is looked at again. */
#define CONSUME_WAIT_MS 250
/* Bytes of an entry's leaf hash a printed line shows. */
#define CONSUME_LEAF_SHOWN 8

struct con {
	const struct cdc_opts *o;
	struct cdc_broker b;
	uint64_t last;                    /* the last sequence number printed */
	uint64_t received, duplicates;
	unsigned backoff_ms;
	char err[CDC_TEXT_BYTES];
};

/* "#42 2026-11-30T21:40:54.379Z COMMAND accrue acme/m-001 points 120 available 1240
 * leaf 3f0c9a1e2b7d4c55": the leaf hash's first 8 bytes, to match against a journal
 * (tally-audit) or an inclusion proof. */
static void print_protobuf(const amqp_bytes_t *body)
{
	Tally__V1__StoredEntry *s = tally__v1__stored_entry__unpack(NULL, body->len, body->bytes);
	Tally__V1__Entry *e = s != NULL ? tally__v1__entry__unpack(NULL, s->entry.len, s->entry.data)
				      : NULL;
	if (e == NULL) {
		printf("(an entry that does not parse)\n");
	} else {
		char when[TALLY_TIME_BYTES];
		const ProtobufCFieldDescriptor *fd = e->command != NULL
			? protobuf_c_message_descriptor_get_field(&tally__v1__command__descriptor,
								  (int)e->command->body_case)
			: NULL;
		printf("%s %s %s %s%s%s", tally_time_format(e->time_ms, when),
		       cdc_kind_name(e->kind), fd != NULL ? fd->name : "-", e->brand,
		       e->brand[0] != '\0' && e->member[0] != '\0' ? "/" : "", e->member);
		if (e->result != NULL && e->result->code != TALLY__V1__RESULT_CODE__OK)
			printf(" refused");
		else if (e->result != NULL && e->brand[0] != '\0' && e->member[0] != '\0')
			printf(" points %" PRId64 " available %" PRId64, e->result->points,
			       e->result->available);
		uint8_t leaf[TALLY_HASH_BYTES];
		char hex[2 * TALLY_HASH_BYTES + 1];
		tally_merkle_leaf_hash(s->entry.data, s->entry.len, leaf);
		tally_hex_encode(leaf, CONSUME_LEAF_SHOWN, hex);
		printf(" leaf %s\n", hex);
	}
	tally__v1__entry__free_unpacked(e, NULL);
	tally__v1__stored_entry__free_unpacked(s, NULL);
}

static bool is_json(const amqp_basic_properties_t *p)
{
	return (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG) &&
	       p->content_type.len == strlen(CDC_CONTENT_JSON) &&
	       memcmp(p->content_type.bytes, CDC_CONTENT_JSON, p->content_type.len) == 0;
}

/* The message's sequence number (its message id), 0 when it has none. */
static uint64_t message_seq(const amqp_basic_properties_t *p)
{
	char id[24];
	if (!(p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) || p->message_id.len == 0 ||
	    p->message_id.len >= sizeof(id))
		return 0;
	memcpy(id, p->message_id.bytes, p->message_id.len);
	id[p->message_id.len] = '\0';
	char *end;
	unsigned long long v = strtoull(id, &end, 10);
	return *end == '\0' ? v : 0;
}

/* One delivery: 0 go on, 1 done (--until-seq reached), -1 a gap or a bad message. */
static int delivery(struct con *c, const amqp_envelope_t *env)
{
	const amqp_basic_properties_t *p = &env->message.properties;
	uint64_t seq = message_seq(p);
	c->received++;
	if (seq == 0) {
		snprintf(c->err, sizeof(c->err), "a message without a sequence number as its id");
		return -1;
	}
	uint64_t want = c->last + 1;
	if (c->last == 0) /* the first entry: --from-seq, or the first message that comes */
		want = c->o->from_seq != 0 ? c->o->from_seq : seq;
	if (seq < want) {
		c->duplicates++;
	} else if (seq > want) {
		snprintf(c->err, sizeof(c->err), "a gap: entry %" PRIu64 " came after %" PRIu64, seq,
			 c->last);
		return -1;
	} else {
		c->last = seq;
		if (!c->o->quiet) {
			printf("#%" PRIu64 " ", seq);
			if (is_json(p))
				printf("%.*s\n", (int)env->message.body.len, (const char *)env->message.body.bytes);
			else
				print_protobuf(&env->message.body);
			fflush(stdout);
		}
	}
	if (amqp_basic_ack(c->b.conn, env->channel, env->delivery_tag, 0) != AMQP_STATUS_OK)
		return 0; /* not acknowledged: it comes again, and is dropped then */
	return c->o->until_seq != 0 && c->last >= c->o->until_seq ? 1 : 0;
}

/* 0 connected or to be retried, -1 the broker refused (a configuration to fix). */
static int reconnect(struct con *c)
{
	cdc_broker_close(&c->b);
	if (cdc_broker_open(&c->b, c->o, false) == 0 && cdc_broker_consume(&c->b, c->o) == 0) {
		c->backoff_ms = CDC_RETRY_MS_MIN;
		return 0;
	}
	if (c->b.refused) {
		snprintf(c->err, sizeof(c->err), "%s", c->b.err);
		return -1;
	}
	fprintf(stderr, "tally-cdc consume: %s (retrying)\n", c->b.err);
	cdc_broker_close(&c->b);
	cdc_backoff(&c->backoff_ms);
	return 0;
}

/* One wait for a delivery: 0 go on, 1 done, -1 failed. */
static int consume_one(struct con *c)
{
	if (c->b.conn == NULL)
		return reconnect(c);
	amqp_envelope_t env;
	struct timeval tv = {.tv_sec = 0, .tv_usec = CONSUME_WAIT_MS * 1000};
	amqp_maybe_release_buffers(c->b.conn);
	amqp_rpc_reply_t r = amqp_consume_message(c->b.conn, &env, &tv, 0);
	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		int rc = delivery(c, &env);
		amqp_destroy_envelope(&env);
		return rc;
	}
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
		return 0;
	/* The connection or the channel is gone (or the broker said something other than
	 * a delivery): start again on a new one; unacknowledged messages come again. */
	fprintf(stderr, "tally-cdc consume: the broker connection ended (%s); reconnecting\n",
		r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION ? amqp_error_string2(r.library_error)
								 : "closed by the broker");
	cdc_broker_close(&c->b);
	return 0;
}

int cdc_consume(const struct cdc_opts *o)
{
	struct con *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return CDC_EXIT_FAILED;
	c->o = o;
	c->backoff_ms = CDC_RETRY_MS_MIN;
	int rc = 0;
	while (!cdc_stop && rc == 0)
		rc = consume_one(c);
	if (rc < 0)
		fprintf(stderr, "tally-cdc consume: %s\n", c->err);
	printf("received %" PRIu64 " message%s, %" PRIu64 " duplicate%s dropped; last entry %" PRIu64
	       "\n", c->received, c->received == 1 ? "" : "s", c->duplicates,
	       c->duplicates == 1 ? "" : "s", c->last);
	cdc_broker_close(&c->b);
	free(c);
	return rc < 0 ? CDC_EXIT_FAILED : CDC_EXIT_DONE;
}
