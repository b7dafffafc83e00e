/*
 * tally-cdc publish: the journal, a page at a time, onto the broker (cdc.h).
 *
 * The loop: read the page after the last entry published and publish each of its
 * entries; with CDC_PAGES_IN_FLIGHT pages out, wait until the broker has confirmed the
 * oldest, then replace the cursor file durably with its last entry. A broker that
 * fails anywhere in that is dropped and everything after the cursor published again
 * on a new connection, so an entry may be published twice but never skipped. The
 * cluster's client follows a new leader by itself; while no node answers, the loop
 * waits and asks again.
 */
#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger/arena.h"
#include "ledger/ledger.h"
#include "rpc/checkpoint.h"
#include "rpc/files.h"
#include "tools/cdc/cdc.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name
/* The arena a page of answers is decoded into. */
#define PUB_ARENA_BYTES (8u << 20)

struct pub {
	const struct cdc_opts *o;
	struct tally_client *client;
	struct tally_arena arena;
	struct cdc_broker b;
	uint64_t seq;                     /* the cursor: last confirmed entry, 0 = none */
	uint8_t leaf[TALLY_HASH_BYTES];   /* and its leaf hash */
	uint64_t published;               /* entries confirmed by this run */
	uint64_t published_seq;           /* the last entry published on this connection */
	struct page {                     /* published, not yet confirmed: oldest first */
		uint64_t last_tag, last_seq;
		uint8_t leaf[TALLY_HASH_BYTES];
		size_t n;
	} pages[CDC_PAGES_IN_FLIGHT];
	size_t n_pages;
	unsigned backoff_ms;
	char last_err[CDC_TEXT_BYTES + 64]; /* the retryable failure last logged */
	char err[CDC_TEXT_BYTES + 64];
};

/* "tally-cdc v1 seq N leaf HEX": 0 (no file: seq 0), or -1 with p->err. */
static int cursor_load(struct pub *p)
{
	FILE *f = fopen(p->o->cursor, "r");
	if (f == NULL)
		return 0;
	char hex[2 * TALLY_HASH_BYTES + 2] = "";
	unsigned long long seq = 0;
	bool ok = fscanf(f, "tally-cdc v1 seq %llu leaf %65s", &seq, hex) == 2 &&
		  tally_hex_decode(hex, strlen(hex), p->leaf, sizeof(p->leaf)) == 0;
	fclose(f);
	if (!ok) {
		snprintf(p->err, sizeof(p->err), "%s: not a tally-cdc cursor", p->o->cursor);
		return -1;
	}
	p->seq = seq;
	return 0;
}

static int cursor_save(struct pub *p)
{
	char hex[2 * TALLY_HASH_BYTES + 1], text[160];
	tally_hex_encode(p->leaf, sizeof(p->leaf), hex);
	int n = snprintf(text, sizeof(text), "tally-cdc v1 seq %" PRIu64 " leaf %s\n", p->seq, hex);
	return tally_file_replace(p->o->cursor, text, (size_t)n, 0644, p->err,
				  sizeof(p->err));
}

/* Logs a failure that will be retried (once while it repeats), then backs off. */
static void retry_after(struct pub *p, const char *why)
{
	if (strcmp(why, p->last_err) != 0)
		fprintf(stderr, "tally-cdc: %s (retrying)\n", why);
	snprintf(p->last_err, sizeof(p->last_err), "%s", why);
	cdc_backoff(&p->backoff_ms);
}

static void healthy(struct pub *p)
{
	if (p->last_err[0] != '\0')
		fprintf(stderr, "tally-cdc: working again\n");
	p->last_err[0] = '\0';
	p->backoff_ms = CDC_RETRY_MS_MIN;
}

/* A query: 0 with *res OK, 1 retryable (named in p->err), -1 a definite refusal. */
static int query(struct pub *p, Tally__V1__Query *q, Tally__V1__QueryResult **res)
{
	tally_arena_reset(&p->arena);
	q->stale = p->o->stale;
	Tally__V1__ResultCode rc = tally_client_query(p->client, q, &p->arena, res);
	if (rc != CODE(OK)) {
		snprintf(p->err, sizeof(p->err), "the cluster: %s: %s", tally_result_name(rc),
			 tally_client_error(p->client));
		return 1;
	}
	if ((*res)->code != CODE(OK)) {
		snprintf(p->err, sizeof(p->err), "the cluster refused: %s: %s",
			 tally_result_name((*res)->code), (*res)->message);
		return -1;
	}
	return 0;
}

/* The cursor's entry must be the cluster's: same leaf hash at the same seq. */
static int cursor_check(struct pub *p)
{
	Tally__V1__GetEntry g = TALLY__V1__GET_ENTRY__INIT;
	g.seq = p->seq;
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	q.q_case = TALLY__V1__QUERY__Q_ENTRY;
	q.entry = &g;
	Tally__V1__QueryResult *res;
	int rc;
	while ((rc = query(p, &q, &res)) == 1 && !cdc_stop)
		retry_after(p, p->err);
	if (rc != 0)
		return cdc_stop ? 1 : -1;
	uint8_t leaf[TALLY_HASH_BYTES];
	const Tally__V1__StoredEntry *e = res->entry;
	if (e != NULL)
		tally_merkle_leaf_hash(e->entry.data, e->entry.len, leaf);
	if (e == NULL || e->seq != p->seq || memcmp(leaf, p->leaf, sizeof(leaf)) != 0) {
		snprintf(p->err, sizeof(p->err), "%s: entry %" PRIu64 " is not the cluster's entry "
			 "%" PRIu64 " (another cluster, or a journal that changed)", p->o->cursor,
			 p->seq, p->seq);
		return -1;
	}
	return 0;
}

/* The page after the last entry published: 0 (res may hold no entries), 1 retry, -1
 * failed. */
static int page_fetch(struct pub *p, Tally__V1__QueryResult **res)
{
	Tally__V1__ListEntries g = TALLY__V1__LIST_ENTRIES__INIT;
	g.from_seq = p->published_seq + 1;
	g.limit = p->o->window;
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	q.q_case = TALLY__V1__QUERY__Q_ENTRIES;
	q.entries = &g;
	int rc = query(p, &q, res);
	for (size_t i = 0; rc == 0 && i < (*res)->n_entries; i++)
		if ((*res)->entries[i]->seq != p->published_seq + 1 + i) {
			snprintf(p->err, sizeof(p->err), "the cluster sent entry %" PRIu64 " where %"
				 PRIu64 " belongs", (*res)->entries[i]->seq, p->published_seq + 1 + i);
			rc = -1;
		}
	return rc;
}

static void message_props(const struct cdc_opts *o, const struct cdc_message *m,
			  amqp_basic_properties_t *props)
{
	memset(props, 0, sizeof(*props));
	props->_flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
			AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_TYPE_FLAG |
			AMQP_BASIC_APP_ID_FLAG;
	props->content_type = amqp_cstring_bytes(o->format == CDC_FORMAT_JSON ? CDC_CONTENT_JSON
									       : CDC_CONTENT_PROTOBUF);
	props->delivery_mode = AMQP_DELIVERY_PERSISTENT;
	props->message_id = amqp_cstring_bytes(m->message_id);
	props->timestamp = m->timestamp_s;
	props->type = amqp_cstring_bytes(m->type);
	props->app_id = amqp_cstring_bytes("tally-cdc");
}

/* Publishes a page, which joins the pages in flight: 0, 1 (the broker failed), -1 (an
 * entry that does not parse). */
static int page_publish(struct pub *p, const Tally__V1__QueryResult *res)
{
	assert(res->n_entries > 0 && p->n_pages < CDC_PAGES_IN_FLIGHT);
	struct page *pg = &p->pages[p->n_pages];
	for (size_t i = 0; i < res->n_entries; i++) {
		struct cdc_message m;
		amqp_basic_properties_t props;
		if (cdc_encode(res->entries[i], p->o->format, &m) != 0) {
			snprintf(p->err, sizeof(p->err), "entry %" PRIu64 " does not parse",
				 res->entries[i]->seq);
			return -1;
		}
		message_props(p->o, &m, &props);
		int rc = cdc_broker_publish(&p->b, p->o->exchange, m.routing_key, &props, m.body, m.len,
					    &pg->last_tag);
		free(m.body);
		if (rc != 0)
			return 1;
	}
	const Tally__V1__StoredEntry *last = res->entries[res->n_entries - 1];
	pg->last_seq = last->seq;
	pg->n = res->n_entries;
	tally_merkle_leaf_hash(last->entry.data, last->entry.len, pg->leaf);
	p->published_seq = last->seq;
	p->n_pages++;
	return 0;
}

/* The oldest page in flight, confirmed: the cursor moves to its last entry, on disk
 * before anything else happens. */
static int page_done(struct pub *p)
{
	assert(p->n_pages > 0 && p->pages[0].last_seq > p->seq);
	p->seq = p->pages[0].last_seq;
	memcpy(p->leaf, p->pages[0].leaf, sizeof(p->leaf));
	p->published += p->pages[0].n;
	memmove(&p->pages[0], &p->pages[1], (size_t)(--p->n_pages) * sizeof(p->pages[0]));
	return cursor_save(p);
}

/* The broker failed: what it had not confirmed goes again on a new connection. */
static int broker_lost(struct pub *p)
{
	snprintf(p->err, sizeof(p->err), "the broker: %s", p->b.err);
	cdc_broker_close(&p->b);
	p->n_pages = 0;
	p->published_seq = p->seq;
	retry_after(p, p->err);
	return 0;
}

/* One turn of the loop: publish the next page while fewer than CDC_PAGES_IN_FLIGHT
 * are, else (or when there is none) wait for the oldest one's confirms and move the
 * cursor. 0 go on, 1 caught up, -1 failed (p->err). */
static int turn(struct pub *p)
{
	if (p->b.conn == NULL) {
		if (cdc_broker_open(&p->b, p->o, true) != 0) {
			snprintf(p->err, sizeof(p->err), "the broker: %s", p->b.err);
			if (p->b.refused)
				return -1;
			retry_after(p, p->err);
			return 0;
		}
		p->n_pages = 0;
		p->published_seq = p->seq;
	}
	if (p->n_pages < CDC_PAGES_IN_FLIGHT) {
		Tally__V1__QueryResult *res;
		int rc = page_fetch(p, &res);
		if (rc < 0)
			return -1;
		if (rc > 0 && p->n_pages == 0) {
			retry_after(p, p->err);
			return 0;
		}
		if (rc == 0 && res->n_entries > 0) {
			rc = page_publish(p, res);
			return rc < 0 ? -1 : rc > 0 ? broker_lost(p) : 0;
		}
		if (p->n_pages == 0)
			return 1;
	}
	if (cdc_broker_confirmed(&p->b, p->pages[0].last_tag) != 0)
		return broker_lost(p);
	if (page_done(p) != 0)
		return -1;
	healthy(p);
	return 0;
}

static int run(struct pub *p)
{
	double t0 = cdc_now_s();
	uint64_t first = p->seq + 1;
	int rc = 0;
	while (!cdc_stop && rc >= 0) {
		rc = turn(p);
		if (rc == 1 && p->o->exit_at_end)
			break;
		if (rc == 1)
			cdc_sleep_ms(p->o->poll_ms);
	}
	/* Stopped: the pages out are waited for once, so the cursor records them (what the
	 * broker does not confirm now goes again at the next start). */
	while (rc >= 0 && p->n_pages > 0 && cdc_broker_confirmed(&p->b, p->pages[0].last_tag) == 0)
		rc = page_done(p) == 0 ? 0 : -1;
	double secs = cdc_now_s() - t0;
	if (rc < 0)
		return CDC_EXIT_FAILED;
	printf("published %" PRIu64 " entr%s", p->published, p->published == 1 ? "y" : "ies");
	if (p->published > 0)
		printf(" (seq %" PRIu64 "..%" PRIu64 ")", first, p->seq);
	printf(" in %.2f s, %.0f entries/s; cursor at %" PRIu64 "\n", secs,
	       secs > 0 ? (double)p->published / secs : 0.0, p->seq);
	return CDC_EXIT_DONE;
}

/* Opens the cluster's client, retrying while no node answers: 0 (p->client open, or
 * NULL when a signal came first), or the exit status of a failure. */
static int open_client(struct pub *p)
{
	struct tally_client_options co = {.timeout_ms = 10000, .attempts = 10};
	while (!cdc_stop) {
		Tally__V1__ResultCode rc = tally_connect_open(&p->o->conn, "tally-cdc", "auditor", co,
							      &p->client, p->err, sizeof(p->err));
		if (rc == CODE(OK))
			return 0;
		if (rc != CODE(UNAVAILABLE))
			return rc == CODE(INVALID_ARGUMENT) ? CDC_EXIT_USAGE : CDC_EXIT_FAILED;
		retry_after(p, p->err);
	}
	p->err[0] = '\0';
	return 0;
}

int cdc_publish(const struct cdc_opts *o)
{
	struct pub *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return CDC_EXIT_FAILED;
	p->o = o;
	p->backoff_ms = CDC_RETRY_MS_MIN;
	int rc = cursor_load(p) != 0 ? CDC_EXIT_FAILED : open_client(p);
	if (rc == 0 && p->client != NULL) {
		tally_arena_init(&p->arena, PUB_ARENA_BYTES, 0);
		int checked = p->seq > 0 ? cursor_check(p) : 0;
		rc = checked < 0 ? CDC_EXIT_FAILED : checked > 0 ? CDC_EXIT_DONE : run(p);
		tally_arena_free(&p->arena);
		tally_client_close(p->client);
	}
	if (rc != CDC_EXIT_DONE && p->err[0] != '\0')
		fprintf(stderr, "tally-cdc: %s\n", p->err);
	cdc_broker_close(&p->b);
	free(p);
	return rc;
}
