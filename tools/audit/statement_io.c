/*
 * tally-audit's settlement statements as written: totals, a table, CSV, and JSON with
 * the evidence (statement.h).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/json.h"
#include "tools/audit/audit.h"
#include "tools/audit/books.h"
#include "tools/audit/statement.h"

int audit_statement_add(struct audit_statement *st, const struct audit_statement_line *l)
{
	if (audit_grow((void **)&st->lines, &st->cap, st->n, sizeof(*st->lines)) != 0)
		return -1;
	st->lines[st->n++] = *l;
	return 0;
}

void audit_statement_totals(struct audit_statement *st)
{
	st->gross_a_to_b = st->gross_b_to_a = 0;
	for (size_t i = 0; i < st->n; i++)
		*(strcmp(st->lines[i].payer, st->brand_a) == 0 ? &st->gross_a_to_b : &st->gross_b_to_a) +=
			st->lines[i].amount_micros;
	int64_t net = st->gross_a_to_b - st->gross_b_to_a;
	st->net = net < 0 ? -net : net;
	snprintf(st->payer, sizeof(st->payer), "%s", net > 0 ? st->brand_a : net < 0 ? st->brand_b : "");
	snprintf(st->payee, sizeof(st->payee), "%s", net > 0 ? st->brand_b : net < 0 ? st->brand_a : "");
}

void audit_statement_free(struct audit_statement *st)
{
	free(st->lines);
}

int audit_statement_write_table(const struct audit_statement *st, bool csv)
{
	char m[64], when[40];
	if (csv)
		printf("settlement,seq,time,member,payer,payee,points,converted_points,price_micros,"
		       "amount_micros,amount,agreement_seq\n");
	else
		printf("settlement %" PRIu64 " of %s and %s, obligations up to %s: %zu\n%10s  %-24s "
		       "%-16s %-10s %-10s %10s %10s %12s %16s\n", st->settlement, st->brand_a,
		       st->brand_b, (tally_time_format(st->until_ms, when), when), st->n, "seq",
		       "time", "member", "payer", "payee", "points", "converted", "price", "amount");
	for (size_t i = 0; i < st->n; i++) {
		const struct audit_statement_line *l = &st->lines[i];
		tally_money_format(l->amount_micros, st->currency, m);
		tally_time_format(l->time_ms, when);
		if (csv)
			printf("%" PRIu64 ",%" PRIu64 ",%s,%s,%s,%s,%" PRId64 ",%" PRId64 ",%" PRId64
			       ",%" PRId64 ",%s,%" PRIu64 "\n", st->settlement, l->seq, when, l->member,
			       l->payer, l->payee, l->points, l->converted_points, l->price_micros,
			       l->amount_micros, m, l->agreement_seq);
		else
			printf("%10" PRIu64 "  %-24s %-16s %-10s %-10s %10" PRId64 " %10" PRId64
			       " %12" PRId64 " %16s\n", l->seq, when, l->member, l->payer, l->payee,
			       l->points, l->converted_points, l->price_micros, m);
	}
	char ab[64], ba[64], net[64];
	tally_money_format(st->gross_a_to_b, st->currency, ab);
	tally_money_format(st->gross_b_to_a, st->currency, ba);
	tally_money_format(st->net, st->currency, net);
	if (csv)
		printf("# gross %s to %s,%s\n# gross %s to %s,%s\n# net,%s,%s pays %s\n", st->brand_a,
		       st->brand_b, ab, st->brand_b, st->brand_a, ba, net,
		       st->payer[0] ? st->payer : "nobody", st->payee[0] ? st->payee : "anyone");
	else
		printf("gross %s -> %s: %s; %s -> %s: %s; net %s%s%s%s%s\n%s\n", st->brand_a, st->brand_b,
		       ab, st->brand_b, st->brand_a, ba, net, st->payer[0] ? ", " : "", st->payer,
		       st->payer[0] ? " pays " : "", st->payee,
		       st->confirmed_seq ? "confirmed by the payee" : "not confirmed yet");
	return 0;
}

/* ---- JSON with evidence ------------------------------------------------------------- */

struct evidence {
	uint64_t seq;
	uint8_t *bytes;
	size_t len;
};

static int by_seq(const void *a, const void *b)
{
	uint64_t x = ((const struct evidence *)a)->seq, y = ((const struct evidence *)b)->seq;
	return x < y ? -1 : x > y;
}

/* The entries the statement cites, sorted, once each. */
static struct evidence *evidence_list(const struct audit_statement *st, size_t *n)
{
	struct evidence *ev = calloc(2 * st->n + 2, sizeof(*ev));
	if (ev == NULL)
		return NULL;
	size_t k = 0;
	ev[k++].seq = st->settlement;
	if (st->confirmed_seq != 0)
		ev[k++].seq = st->confirmed_seq;
	for (size_t i = 0; i < st->n; i++) {
		ev[k++].seq = st->lines[i].seq;
		ev[k++].seq = st->lines[i].agreement_seq;
	}
	qsort(ev, k, sizeof(*ev), by_seq);
	size_t u = 0;
	for (size_t i = 0; i < k; i++)
		if (u == 0 || ev[u - 1].seq != ev[i].seq)
			ev[u++] = ev[i];
	*n = u;
	return ev;
}

/* Pass 2: the tree of the first `size` entries, and the cited entries' bytes. */
static int evidence_read(const char *dir, uint64_t size, struct audit_tree *t,
			 struct evidence *ev, size_t n, char *err, size_t errcap)
{
	struct audit_reader r;
	if (audit_reader_open(dir, &r, err, errcap) != 0)
		return -1;
	size_t next = 0;
	int rc = 0;
	for (uint64_t i = 0; i < size && rc == 0; i++) {
		uint64_t seq;
		const uint8_t *bytes;
		size_t len;
		int got = audit_reader_next(&r, &seq, &bytes, &len, err, errcap);
		if (got <= 0) {
			if (got == 0)
				snprintf(err, errcap, "the journal ends before its checkpoint's size");
			rc = -1;
			break;
		}
		rc = audit_tree_append(t, bytes, len);
		if (rc == 0 && next < n && ev[next].seq == seq) {
			ev[next].bytes = malloc(len);
			if (ev[next].bytes == NULL)
				rc = -1;
			else
				memcpy(ev[next].bytes, bytes, len);
			ev[next++].len = len;
		}
	}
	audit_reader_close(&r);
	return rc;
}

static void json_line(const struct audit_statement_line *l, bool last)
{
	printf("    {\"seq\": %" PRIu64 ", \"time_ms\": %" PRId64 ", \"member\": ", l->seq, l->time_ms);
	tally_json_write_str(stdout, l->member);
	printf(", \"payer\": \"%s\", \"payee\": \"%s\", \"points\": %" PRId64 ", \"converted_points\": %"
	       PRId64 ", \"price_micros\": %" PRId64 ", \"amount_micros\": %" PRId64
	       ", \"agreement_seq\": %" PRIu64 "}%s\n", l->payer, l->payee, l->points,
	       l->converted_points, l->price_micros, l->amount_micros, l->agreement_seq,
	       last ? "" : ",");
}

static int json_evidence(struct audit_tree *t, const struct evidence *e, uint64_t size, bool last)
{
	uint8_t path[TALLY_MERKLE_PROOF_MAX][TALLY_HASH_BYTES];
	size_t n;
	if (audit_tree_proof(t, e->seq, size, path, &n) != 0)
		return -1;
	char *hex = malloc(2 * e->len + 1);
	if (hex == NULL)
		return -1;
	tally_hex_encode(e->bytes, e->len, hex);
	printf("    {\"seq\": %" PRIu64 ", \"entry\": \"%s\", \"proof\": [", e->seq, hex);
	free(hex);
	for (size_t i = 0; i < n; i++) {
		char h[2 * TALLY_HASH_BYTES + 1];
		tally_hex_encode(path[i], TALLY_HASH_BYTES, h);
		printf("%s\"%s\"", i ? ", " : "", h);
	}
	printf("]}%s\n", last ? "" : ",");
	return 0;
}

static void json_head(const struct audit_statement *st, const struct tally_checkpoint *c)
{
	char when[40], until[40], net[64];
	tally_time_format(st->time_ms, when);
	tally_time_format(st->until_ms, until);
	tally_money_format(st->net, st->currency, net);
	printf("{\n  \"format\": \"" STATEMENT_FORMAT "\",\n  \"settlement\": %" PRIu64 ",\n"
	       "  \"time\": \"%s\",\n  \"brand_a\": \"%s\",\n  \"brand_b\": \"%s\",\n"
	       "  \"until_ms\": %" PRId64 ",\n  \"until\": \"%s\",\n  \"confirmed_seq\": %" PRIu64 ",\n"
	       "  \"count\": %zu,\n  \"currency\": \"%s\",\n  \"gross_a_to_b_micros\": %" PRId64 ",\n"
	       "  \"gross_b_to_a_micros\": %" PRId64 ",\n  \"net_micros\": %" PRId64 ",\n"
	       "  \"net\": \"%s\",\n  \"payer\": \"%s\",\n  \"payee\": \"%s\",\n"
	       "  \"checkpoint_tree_size\": %" PRIu64 ",\n  \"checkpoint_node_id\": %" PRIu64 ",\n"
	       "  \"lines\": [\n", st->settlement, when, st->brand_a, st->brand_b, st->until_ms, until,
	       st->confirmed_seq, st->n, st->currency, st->gross_a_to_b, st->gross_b_to_a, st->net,
	       net, st->payer, st->payee, c->tree_size, c->node_id);
}

int audit_statement_write_json(const struct audit_statement *st, const char *dir, char *err, size_t errcap)
{
	struct audit_checkpoint *cps = NULL;
	size_t n_cps = 0, n_ev = 0;
	if (audit_checkpoints_load(dir, &cps, &n_cps, err, errcap) != 0 || n_cps == 0) {
		if (n_cps == 0 && cps != NULL)
			snprintf(err, errcap, "%s/checkpoints: none to prove the statement against", dir);
		free(cps);
		return -1;
	}
	const struct tally_checkpoint *c = &cps[n_cps - 1].c;
	struct evidence *ev = evidence_list(st, &n_ev);
	struct audit_tree *t = malloc(sizeof(*t));
	int rc = ev != NULL && t != NULL ? 0 : -1;
	if (rc == 0 && ev[n_ev - 1].seq > c->tree_size) {
		snprintf(err, errcap, "the last checkpoint (%" PRIu64 ") is older than entry %" PRIu64
			 ": pull again", c->tree_size, ev[n_ev - 1].seq);
		rc = -1;
	}
	uint8_t root[TALLY_HASH_BYTES];
	bool tree = rc == 0;
	if (tree) {
		audit_tree_init(t);
		rc = evidence_read(dir, c->tree_size, t, ev, n_ev, err, errcap);
		if (rc == 0 && (audit_tree_root(t, c->tree_size, root) != 0 ||
				memcmp(root, c->root, TALLY_HASH_BYTES) != 0)) {
			snprintf(err, errcap, "the journal is not the one of %s: run verify",
				 cps[n_cps - 1].file);
			rc = -1;
		}
	}
	if (rc == 0) {
		json_head(st, c);
		for (size_t i = 0; i < st->n; i++)
			json_line(&st->lines[i], i + 1 == st->n);
		printf("  ],\n  \"evidence\": [\n");
		for (size_t i = 0; rc == 0 && i < n_ev; i++)
			rc = json_evidence(t, &ev[i], c->tree_size, i + 1 == n_ev);
		printf("  ]\n}\n");
	}
	if (tree)
		audit_tree_free(t);
	for (size_t i = 0; ev != NULL && i < n_ev; i++)
		free(ev[i].bytes);
	free(ev);
	free(t);
	free(cps);
	return rc;
}
