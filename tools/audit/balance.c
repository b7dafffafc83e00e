/*
 * tally-audit balance — one account at any point of its history, from DIR's journal
 * alone: its balances after entry --at SEQ (or the last entry at or before --at TIME;
 * the end of the journal without --at), and every entry that moved it. Run verify
 * first: balance reads what DIR holds.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tools/audit/audit.h"
#include "tools/audit/books.h"

struct moved {
	uint64_t seq;
	int64_t time_ms;
	const char *what;               /* the command, or the entry kind */
	int64_t available, held;        /* after the entry */
	int64_t d_available, d_held;
};

struct balance {
	const struct audit_opts *o;
	struct audit_books books;
	struct moved *lines;
	size_t n, cap;
	int64_t available, held;        /* before the entry being read */
	uint64_t at_seq;
	int64_t at_ms;
	char err[1024];
};

static const char *entry_what(const Tally__V1__Entry *e)
{
	if (e->kind == TALLY__V1__ENTRY_KIND__LOT_EXPIRED)
		return "lot_expired";
	if (e->kind == TALLY__V1__ENTRY_KIND__HOLD_RELEASED)
		return "hold_released";
	const ProtobufCFieldDescriptor *f =
		e->command != NULL ? protobuf_c_message_descriptor_get_field(
					     &tally__v1__command__descriptor, (unsigned)e->command->body_case)
				   : NULL;
	return f != NULL ? f->name : "entry";
}

/* After entry e: a line when it moved the account. */
static int balance_note(struct balance *b, const Tally__V1__Entry *e)
{
	const struct audit_account *a = audit_books_account(&b->books, b->o->brand, b->o->member);
	if (a == NULL || a->last_seq != e->seq)
		return 0;
	if (audit_grow((void **)&b->lines, &b->cap, b->n, sizeof(*b->lines)) != 0)
		return -1;
	b->lines[b->n++] = (struct moved){e->seq, e->time_ms, entry_what(e), a->available, a->held,
					  a->available - b->available, a->held - b->held};
	b->available = a->available;
	b->held = a->held;
	return 0;
}

static bool balance_stop(void *ctx, const Tally__V1__Entry *e)
{
	const struct balance *b = ctx;
	return (b->at_seq != 0 && e->seq > b->at_seq) || (b->at_ms != 0 && e->time_ms > b->at_ms);
}

static int balance_each(void *ctx, const Tally__V1__Entry *e)
{
	return balance_note(ctx, e);
}

static void balance_print(const struct balance *b)
{
	const struct audit_account *a = audit_books_account(&b->books, b->o->brand, b->o->member);
	struct audit_account none = {.brand = b->o->brand, .member = b->o->member};
	if (a == NULL)
		a = &none;
	char when[40];
	tally_time_format(b->books.last_ms, when);
	if (b->o->json) {
		printf("{\"brand\":\"%s\",\"member\":\"%s\",\"at_seq\":%" PRIu64 ",\"at_time\":\"%s\","
		       "\"available\":%" PRId64 ",\"held\":%" PRId64 ",\"earned\":%" PRId64
		       ",\"redeemed\":%" PRId64 ",\"expired\":%" PRId64 ",\"entries\":[",
		       a->brand, a->member, b->books.entries, when, a->available, a->held, a->earned,
		       a->redeemed, a->expired);
		for (size_t i = 0; i < b->n; i++) {
			const struct moved *m = &b->lines[i];
			printf("%s{\"seq\":%" PRIu64 ",\"time_ms\":%" PRId64 ",\"what\":\"%s\","
			       "\"available_change\":%" PRId64 ",\"held_change\":%" PRId64
			       ",\"available\":%" PRId64 ",\"held\":%" PRId64 "}", i ? "," : "", m->seq,
			       m->time_ms, m->what, m->d_available, m->d_held, m->available, m->held);
		}
		printf("]}\n");
		return;
	}
	printf("%s/%s after entry %" PRIu64 " (%s):\n  available %" PRId64 ", held %" PRId64
	       "; earned %" PRId64 ", redeemed %" PRId64 ", expired %" PRId64 "\n",
	       a->brand, a->member, b->books.entries, when, a->available, a->held, a->earned,
	       a->redeemed, a->expired);
	printf("%zu entries moved it:\n  %10s  %-24s  %-16s %12s %12s %12s %12s\n", b->n, "seq", "time",
	       "what", "available", "change", "held", "change");
	for (size_t i = 0; i < b->n; i++) {
		const struct moved *m = &b->lines[i];
		tally_time_format(m->time_ms, when);
		printf("  %10" PRIu64 "  %-24s  %-16s %12" PRId64 " %+12" PRId64 " %12" PRId64
		       " %+12" PRId64 "\n", m->seq, when, m->what, m->available, m->d_available,
		       m->held, m->d_held);
	}
}

int audit_balance(const struct audit_opts *o)
{
	if (o->brand == NULL || o->member == NULL) {
		fprintf(stderr, "tally-audit: balance needs --brand B --member M\n");
		return AUDIT_EXIT_USAGE;
	}
	struct balance *b = calloc(1, sizeof(*b));
	if (b == NULL)
		return AUDIT_EXIT_FAILED;
	b->o = o;
	int rc = 0;
	if (o->at != NULL && audit_parse_at(o->at, &b->at_seq, &b->at_ms) != 0) {
		fprintf(stderr, "tally-audit: --at: a sequence number or an RFC 3339 time "
				"(2026-11-30T12:00:00Z)\n");
		rc = AUDIT_EXIT_USAGE;
	} else if (audit_books_init(&b->books, b->err, sizeof(b->err)) != 0 ||
		   audit_walk(o->dir, &b->books, balance_stop, balance_each, b, b->err,
			      sizeof(b->err)) != 0) {
		fprintf(stderr, "tally-audit: balance: %s\n", b->err);
		rc = AUDIT_EXIT_FAILED;
	} else {
		balance_print(b);
	}
	audit_books_free(&b->books);
	free(b->lines);
	free(b);
	return rc;
}
