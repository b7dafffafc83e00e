/*
 * tally-cdc — the journal as a stream of messages on RabbitMQ (README "Change stream").
 *
 * `tally-cdc publish` reads the journal a page at a time through the client API (an
 * auditor's key, scope *) and publishes every entry, in order, to a durable exchange:
 * persistent messages, message id = the entry's sequence number, each page waited on
 * with publisher confirms before the cursor file (the last confirmed entry and its
 * leaf hash) is replaced durably. After a crash of the publisher, of the broker or of
 * the cluster's leader it resumes after the cursor: delivery is at least once, and a
 * consumer drops a sequence number it has seen. `tally-cdc consume` is such a
 * consumer: it prints each new entry and fails on a gap.
 *
 * Files: main.c (flags), publish.c (the publisher's loop and cursor), consume.c (the
 * consumer), broker.c (librabbitmq: connect, declare, publish, confirms, consume),
 * encode.c (an entry as a message body and routing key).
 */
#ifndef TALLY_TOOLS_CDC_H
#define TALLY_TOOLS_CDC_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <amqp.h>

#include "ledger/merkle.h"
#include "rpc/connect.h"

/* Entries per page read and published before one wait for confirms (ListEntries
 * serves at most 10,000 a page). */
#define CDC_WINDOW_DEFAULT 1000
#define CDC_WINDOW_MAX 10000
/* How long publish waits before reading the journal again once it has caught up. */
#define CDC_POLL_MS_DEFAULT 100
/* The longest wait for the broker's next confirm: then the connection is dropped and
 * what it had not confirmed published again on a new one. */
#define CDC_CONFIRM_MS 30000
/* Retries of an unreachable broker or cluster back off from the first wait up to the
 * last, doubling. */
#define CDC_RETRY_MS_MIN 100
#define CDC_RETRY_MS_MAX 2000
/* Messages a consumer has unacknowledged at once (basic.qos prefetch). */
#define CDC_PREFETCH 1000
#define CDC_BROKER_DEFAULT "amqp://guest:guest@127.0.0.1:5672"
#define CDC_EXCHANGE_DEFAULT "tally.journal"
/* Longest broker URL, exchange, queue, path or error text. */
#define CDC_TEXT_BYTES 512
/* Longest routing key: "<kind>.<brand>" (a brand id is at most 32 bytes). */
#define CDC_ROUTING_KEY_BYTES 64

enum cdc_exit {
	CDC_EXIT_DONE = 0,
	CDC_EXIT_FAILED = 1,   /* named on stderr: a gap, a cursor the cluster contradicts */
	CDC_EXIT_USAGE = 2,
	CDC_EXIT_UNAVAILABLE = 3,
};

enum cdc_format { CDC_FORMAT_PROTOBUF, CDC_FORMAT_JSON };

struct cdc_opts {
	struct tally_connect conn;
	const char *broker;       /* amqp://user:pass@host:port/vhost */
	const char *exchange;
	const char *queue;        /* declared durable and bound to every entry; NULL: none */
	const char *cursor;       /* publish: the cursor file */
	enum cdc_format format;
	unsigned window, poll_ms;
	bool stale;               /* publish: read from the first node without a barrier */
	bool exit_at_end;         /* publish: stop once caught up (and report entries/s) */
	uint64_t from_seq;        /* consume: the first entry expected; 0: whatever comes */
	uint64_t until_seq;       /* consume: stop once this entry is printed */
	bool quiet;               /* consume: only the summary */
};

/* ---- broker.c ---------------------------------------------------------------- */

/* Pages a publisher has published and not yet seen confirmed: the next page goes out
 * while the broker confirms the one before. */
#define CDC_PAGES_IN_FLIGHT 2
/* Publishes not yet confirmed, at most (a ring of flags indexed by delivery tag). */
#define CDC_UNCONFIRMED_MAX (CDC_PAGES_IN_FLIGHT * CDC_WINDOW_MAX)

struct cdc_broker {
	amqp_connection_state_t conn;     /* NULL while not connected */
	uint64_t next_tag;                /* delivery tag of the next publish (confirms) */
	uint64_t confirmed;               /* every tag up to this one is confirmed */
	uint8_t acked[CDC_UNCONFIRMED_MAX]; /* tags above it confirmed, by tag % size */
	bool refused;                     /* the last failure was the broker's answer */
	char err[CDC_TEXT_BYTES];
};

/* Connects, declares the durable exchange (topic) and, when o->queue is set, the
 * durable queue bound to it with "#". With `confirms`, puts the channel in confirm
 * mode. 0, or -1 with why in b->err (b stays closed); b->refused when the broker
 * itself said no (a login refused, no such vhost, an exchange of another type): a
 * configuration to fix, not an outage to wait out. */
int cdc_broker_open(struct cdc_broker *b, const struct cdc_opts *o, bool confirms);
void cdc_broker_close(struct cdc_broker *b);
/* Publishes one persistent message; *tag is its delivery tag. At most
 * CDC_UNCONFIRMED_MAX may be unconfirmed. 0, or -1 with b->err. */
int cdc_broker_publish(struct cdc_broker *b, const char *exchange, const char *routing_key,
		       const amqp_basic_properties_t *props, const void *body, size_t len,
		       uint64_t *tag);
/* Waits until the broker has confirmed every publish up to tag. 0, or -1 with b->err
 * (a nack, the connection lost, CDC_CONFIRM_MS passed without a confirm). */
int cdc_broker_confirmed(struct cdc_broker *b, uint64_t tag);
/* Starts consuming o->queue with manual acknowledgements. 0, or -1 with b->err. */
int cdc_broker_consume(struct cdc_broker *b, const struct cdc_opts *o);

/* ---- encode.c ------------------------------------------------------------------ */

/* One entry as a message: protobuf (the StoredEntry as served, so a consumer can check
 * the leaf hash over the exact bytes) or JSON (rpc/pbjson's mapping of the Entry, with
 * seq, raft_index, raft_term and the leaf hash in hex beside it). The routing key is
 * "<kind>.<brand>" in lower case ("command.acme", "lot_expired.acme"). */
struct cdc_message {
	char routing_key[CDC_ROUTING_KEY_BYTES];
	char message_id[24];
	const char *type;                 /* the entry's kind: "COMMAND", ... */
	uint64_t timestamp_s;
	void *body;
	size_t len;
};
/* body is malloc'ed (the caller frees it). 0, or -1 when the stored bytes do not parse
 * as an Entry. */
int cdc_encode(const Tally__V1__StoredEntry *e, enum cdc_format f, struct cdc_message *m);
extern const char CDC_CONTENT_PROTOBUF[], CDC_CONTENT_JSON[];
/* An entry kind's name ("COMMAND", "LOT_EXPIRED", ...), "UNKNOWN" for one this build
 * does not know. */
const char *cdc_kind_name(Tally__V1__EntryKind k);

/* ---- publish.c, consume.c ------------------------------------------------------- */

int cdc_publish(const struct cdc_opts *o);
int cdc_consume(const struct cdc_opts *o);

/* Monotonic seconds, for rates. */
double cdc_now_s(void);
/* Sleeps ms (cut short by a signal). */
void cdc_sleep_ms(unsigned ms);
/* Sleeps *ms, then doubles it up to CDC_RETRY_MS_MAX (start it at CDC_RETRY_MS_MIN). */
void cdc_backoff(unsigned *ms);
/* Set by SIGINT and SIGTERM: finish what is under way and stop. */
extern volatile sig_atomic_t cdc_stop;

#endif
