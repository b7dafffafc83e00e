/*
 * tally-audit statement — a settlement's statement from DIR's journal: every
 * obligation it settled (the exchange entry, the member, points each way, the price
 * of the agreement in force and the money), gross each way, net and direction; as a
 * table, CSV, or JSON with the evidence: each exchange entry, each agreement entry
 * cited and the settle entry, with its bytes and its inclusion proof in the tree of
 * DIR's last checkpoint, so the payee checks it without the rest of the journal
 * (check-statement, checkstatement.c).
 *
 * What a settlement settles follows the ledger's rule: the pair's obligations not
 * settled before, in sequence order, whose time is at or before the cut-off.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/json.h"
#include "tools/audit/audit.h"
#include "tools/audit/books.h"
#include "tools/audit/statement.h"

struct agreement {
	char from[40], to[40];
	int64_t price_micros;
	uint64_t seq;
};

struct find {
	const struct audit_opts *o;
	struct audit_books books;
	struct audit_statement st;
	struct agreement *ags;
	size_t n_ags, cap_ags;
	struct audit_statement_line *open;    /* every obligation, settled or not */
	bool *settled;
	size_t n_open, cap_open;
	char err[1024];
};

static const struct agreement *agreement_of(const struct find *f, const char *from, const char *to)
{
	for (size_t i = f->n_ags; i-- > 0;)
		if (strcmp(f->ags[i].from, from) == 0 && strcmp(f->ags[i].to, to) == 0)
			return &f->ags[i];
	return NULL;
}

static int note_agreement(struct find *f, const Tally__V1__Entry *e)
{
	const Tally__V1__SetAgreement *s = e->command->set_agreement;
	if (audit_grow((void **)&f->ags, &f->cap_ags, f->n_ags, sizeof(*f->ags)) != 0)
		return -1;
	struct agreement *a = &f->ags[f->n_ags++];
	snprintf(a->from, sizeof(a->from), "%s", s->from_brand);
	snprintf(a->to, sizeof(a->to), "%s", s->to_brand);
	a->price_micros = s->price_micros;
	a->seq = e->seq;
	return 0;
}

static int note_exchange(struct find *f, const Tally__V1__Entry *e)
{
	const Tally__V1__Exchange *x = e->command->exchange;
	const struct agreement *ag = agreement_of(f, x->from_brand, x->to_brand);
	if (ag == NULL || e->result == NULL) {
		snprintf(f->err, sizeof(f->err), "entry %" PRIu64 ": an exchange without an agreement "
			 "entry before it", e->seq);
		return -1;
	}
	if (audit_grow((void **)&f->open, &f->cap_open, f->n_open, sizeof(*f->open)) != 0)
		return -1;
	size_t cap = f->cap_open;
	bool *s = realloc(f->settled, cap * sizeof(*s));
	if (s == NULL)
		return -1;
	f->settled = s;
	struct audit_statement_line *l = &f->open[f->n_open];
	f->settled[f->n_open++] = false;
	memset(l, 0, sizeof(*l));
	l->seq = e->seq;
	l->time_ms = e->time_ms;
	snprintf(l->member, sizeof(l->member), "%s", x->member);
	snprintf(l->payer, sizeof(l->payer), "%s", x->from_brand);
	snprintf(l->payee, sizeof(l->payee), "%s", x->to_brand);
	l->points = x->points;
	l->converted_points = e->result->points;
	l->price_micros = ag->price_micros;
	l->amount_micros = l->converted_points * ag->price_micros;
	l->agreement_seq = ag->seq;
	return 0;
}

/* A settle entry: marks what it settles; the one asked for fills f->st. */
static int note_settle(struct find *f, const Tally__V1__Entry *e)
{
	const Tally__V1__Settle *s = e->command->settle;
	bool ordered = strcmp(s->brand_a, s->brand_b) < 0;
	const char *a = ordered ? s->brand_a : s->brand_b, *b = ordered ? s->brand_b : s->brand_a;
	bool wanted = e->seq == f->o->settlement;
	for (size_t i = 0; i < f->n_open; i++) {
		const struct audit_statement_line *l = &f->open[i];
		bool pair = (strcmp(l->payer, a) == 0 && strcmp(l->payee, b) == 0) ||
			    (strcmp(l->payer, b) == 0 && strcmp(l->payee, a) == 0);
		if (f->settled[i] || !pair || l->time_ms > s->until_ms)
			continue;
		f->settled[i] = true;
		if (wanted && audit_statement_add(&f->st, l) != 0)
			return -1;
	}
	if (!wanted)
		return 0;
	f->st.settlement = e->seq;
	f->st.time_ms = e->time_ms;
	snprintf(f->st.brand_a, sizeof(f->st.brand_a), "%s", a);
	snprintf(f->st.brand_b, sizeof(f->st.brand_b), "%s", b);
	f->st.until_ms = s->until_ms;
	if (e->result == NULL || (uint64_t)e->result->count != f->st.n) {
		snprintf(f->err, sizeof(f->err), "entry %" PRIu64 ": the ledger settled %" PRId64
			 " obligations, the journal shows %zu", e->seq,
			 e->result ? e->result->count : 0, f->st.n);
		return -1;
	}
	return 0;
}

static int find_entry(struct find *f, const Tally__V1__Entry *e)
{
	const Tally__V1__Command *c = e->command;
	if (e->kind != TALLY__V1__ENTRY_KIND__COMMAND || c == NULL || e->result == NULL ||
	    e->result->code != TALLY__V1__RESULT_CODE__OK) /* a refused command settles nothing */
		return 0;
	switch (c->body_case) {
	case TALLY__V1__COMMAND__BODY_SET_AGREEMENT: return note_agreement(f, e);
	case TALLY__V1__COMMAND__BODY_EXCHANGE: return note_exchange(f, e);
	case TALLY__V1__COMMAND__BODY_SETTLE: return note_settle(f, e);
	case TALLY__V1__COMMAND__BODY_CONFIRM_SETTLEMENT:
		if (c->confirm_settlement->settlement_id == f->o->settlement)
			f->st.confirmed_seq = e->seq;
		return 0;
	default: return 0;
	}
}

static int find_each(void *ctx, const Tally__V1__Entry *e)
{
	return find_entry(ctx, e);
}

/* Pass 1: the statement's lines, from the whole journal. */
static int find_lines(struct find *f)
{
	if (audit_walk(f->o->dir, &f->books, NULL, find_each, f, f->err, sizeof(f->err)) != 0)
		return -1;
	if (f->st.settlement != 0)
		return 0;
	snprintf(f->err, sizeof(f->err), "no settlement %" PRIu64 " in the journal", f->o->settlement);
	return -1;
}

int audit_statement(const struct audit_opts *o)
{
	if (o->settlement == 0) {
		fprintf(stderr, "tally-audit: statement needs --settlement ID\n");
		return AUDIT_EXIT_USAGE;
	}
	struct find *f = calloc(1, sizeof(*f));
	if (f == NULL)
		return AUDIT_EXIT_FAILED;
	f->o = o;
	int rc = AUDIT_EXIT_FAILED;
	if (audit_books_init(&f->books, f->err, sizeof(f->err)) == 0 && find_lines(f) == 0) {
		const struct audit_brand *payee = NULL;
		for (size_t i = 0; i < f->books.n_brands; i++)
			if (f->st.n > 0 && strcmp(f->books.brands[i].id, f->st.lines[0].payee) == 0)
				payee = &f->books.brands[i];
		snprintf(f->st.currency, sizeof(f->st.currency), "%s", payee ? payee->currency : "");
		audit_statement_totals(&f->st);
		rc = o->json ? audit_statement_write_json(&f->st, o->dir, f->err, sizeof(f->err))
			     : audit_statement_write_table(&f->st, o->csv);
		if (rc != 0)
			rc = AUDIT_EXIT_FAILED;
	}
	if (rc != 0)
		fprintf(stderr, "tally-audit: statement: %s\n", f->err);
	audit_statement_free(&f->st);
	audit_books_free(&f->books);
	free(f->ags);
	free(f->open);
	free(f->settled);
	free(f);
	return rc;
}
