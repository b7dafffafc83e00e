/*
 * tally-audit check-statement FILE --checkpoint C --keys K — what a payee runs on a
 * statement it was sent, without the journal: the checkpoint's signature by a pinned
 * key; every cited entry's bytes in the checkpoint's tree (its inclusion proof); and
 * every line and total of the statement recomputed from those entries: the settle
 * entry (pair, cut-off, count), each exchange (member, brands, points, time) and the
 * agreement entry it cites (price). The first difference is named (exit 1).
 *
 * What a statement alone cannot show: that no later agreement entry changed the price
 * before an exchange, or that a line's exchange was not settled by an earlier
 * settlement. verify over the whole journal shows both; the statement's cited entries
 * are the ledger's own, so a payer cannot invent one.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ledger/arena.h"
#include "rpc/json.h"
#include "tools/audit/audit.h"
#include "tools/audit/statement.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name

struct cited {
	uint64_t seq;
	const Tally__V1__Entry *e;
};

struct check {
	const struct audit_opts *o;
	struct tally_checkpoint c;
	struct audit_statement st;          /* as the file states it */
	uint64_t count;               /* the obligations it says it lists */
	struct cited *cited;
	size_t n_cited;
	struct tally_arena arena;
	char err[1024];
};

static int check_fail(struct check *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int check_fail(struct check *k, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(k->err, sizeof(k->err), fmt, ap);
	va_end(ap);
	return -1;
}

static char *read_all(const char *path, size_t max)
{
	FILE *f = fopen(path, "r");
	char *buf = f != NULL ? malloc(max + 1) : NULL;
	size_t n = buf != NULL ? fread(buf, 1, max + 1, f) : 0;
	if (f != NULL)
		fclose(f);
	if (buf == NULL || n > max) {
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	return buf;
}

static int load_checkpoint(struct check *k)
{
	char *text = read_all(k->o->checkpoint, TALLY_CHECKPOINT_JSON_BYTES_MAX);
	struct tally_checkpoint_keys keys;
	char why[256];
	if (text == NULL)
		return check_fail(k, "%s: unreadable", k->o->checkpoint);
	int rc = tally_checkpoint_parse_json(text, &k->c, NULL, why, sizeof(why));
	free(text);
	if (rc != 0)
		return check_fail(k, "%s: %s", k->o->checkpoint, why);
	if (tally_checkpoint_verify(&k->c) != 0)
		return check_fail(k, "%s: the signature does not verify", k->o->checkpoint);
	if (tally_checkpoint_keys_load(k->o->keys, &keys, why, sizeof(why)) != 0)
		return check_fail(k, "%s", why);
	if (!tally_checkpoint_pinned(&keys, &k->c))
		return check_fail(k, "%s: node %" PRIu64 "'s key is not the pinned one", k->o->checkpoint,
				  k->c.node_id);
	return 0;
}

/* The statement's own totals and identity (the part before "lines"). */
static int parse_head(struct check *k, const char *head)
{
	struct audit_statement *st = &k->st;
	char format[32];
	uint64_t count, size;
	if (!tally_json_str(head, "format", format, sizeof(format)) || strcmp(format, STATEMENT_FORMAT))
		return check_fail(k, "not a statement (format)");
	bool ok = tally_json_u64(head, "settlement", &st->settlement) &&
		  tally_json_str(head, "brand_a", st->brand_a, sizeof(st->brand_a)) &&
		  tally_json_str(head, "brand_b", st->brand_b, sizeof(st->brand_b)) &&
		  tally_json_i64(head, "until_ms", &st->until_ms) &&
		  tally_json_u64(head, "confirmed_seq", &st->confirmed_seq) &&
		  tally_json_u64(head, "count", &count) &&
		  tally_json_i64(head, "gross_a_to_b_micros", &st->gross_a_to_b) &&
		  tally_json_i64(head, "gross_b_to_a_micros", &st->gross_b_to_a) &&
		  tally_json_i64(head, "net_micros", &st->net) &&
		  tally_json_str(head, "payer", st->payer, sizeof(st->payer)) &&
		  tally_json_str(head, "payee", st->payee, sizeof(st->payee)) &&
		  tally_json_u64(head, "checkpoint_tree_size", &size);
	if (!ok)
		return check_fail(k, "the statement's header is missing a field or malformed");
	if (size != k->c.tree_size)
		return check_fail(k, "the statement proves against tree size %" PRIu64 "; the checkpoint "
				  "is of %" PRIu64, size, k->c.tree_size);
	k->count = count;
	return 0;
}

/* One line object of "lines". */
static int parse_line(struct check *k, const char *text, size_t no)
{
	struct audit_statement_line l;
	memset(&l, 0, sizeof(l));
	bool ok = tally_json_u64(text, "seq", &l.seq) && tally_json_i64(text, "time_ms", &l.time_ms) &&
		  tally_json_str(text, "member", l.member, sizeof(l.member)) &&
		  tally_json_str(text, "payer", l.payer, sizeof(l.payer)) &&
		  tally_json_str(text, "payee", l.payee, sizeof(l.payee)) &&
		  tally_json_i64(text, "points", &l.points) &&
		  tally_json_i64(text, "converted_points", &l.converted_points) &&
		  tally_json_i64(text, "price_micros", &l.price_micros) &&
		  tally_json_i64(text, "amount_micros", &l.amount_micros) &&
		  tally_json_u64(text, "agreement_seq", &l.agreement_seq);
	if (!ok)
		return check_fail(k, "line %zu: a field is missing or malformed", no);
	return audit_statement_add(&k->st, &l) == 0 ? 0 : check_fail(k, "out of memory");
}

/* One evidence object: its bytes in the checkpoint's tree, decoded. */
static int parse_evidence(struct check *k, const char *text)
{
	uint64_t seq;
	const char *hex = tally_json_value(text, "entry");
	const char *end = hex != NULL && *hex == '"' ? strchr(hex + 1, '"') : NULL;
	uint8_t path[TALLY_MERKLE_PROOF_MAX][TALLY_HASH_BYTES];
	size_t n_path;
	if (!tally_json_u64(text, "seq", &seq) || end == NULL ||
	    !tally_json_hashes(tally_json_value(text, "proof"), path, TALLY_MERKLE_PROOF_MAX, &n_path))
		return check_fail(k, "evidence: a field is missing or malformed");
	size_t len = (size_t)(end - hex - 1) / 2;
	uint8_t *bytes = tally_arena_alloc(&k->arena, len ? len : 1);
	if (bytes == NULL || tally_hex_decode(hex + 1, (size_t)(end - hex - 1), bytes, len) != 0)
		return check_fail(k, "evidence for entry %" PRIu64 ": the bytes are not hex", seq);
	uint8_t leaf[TALLY_HASH_BYTES];
	tally_merkle_leaf_hash(bytes, len, leaf);
	if (seq == 0 || tally_merkle_verify_inclusion(leaf, seq - 1, k->c.tree_size, path, n_path,
						      k->c.root) != 0)
		return check_fail(k, "entry %" PRIu64 ": not in the tree of the checkpoint (its bytes "
				  "or its proof were changed)", seq);
	Tally__V1__Entry *e = tally__v1__entry__unpack(tally_arena_protobuf(&k->arena), len, bytes);
	if (e == NULL || e->seq != seq)
		return check_fail(k, "entry %" PRIu64 ": does not decode as that entry", seq);
	struct cited *c = realloc(k->cited, (k->n_cited + 1) * sizeof(*c));
	if (c == NULL)
		return check_fail(k, "out of memory");
	k->cited = c;
	k->cited[k->n_cited++] = (struct cited){seq, e};
	return 0;
}

/* Calls fn on each "{...}" text line of the section from `from` up to `to`. */
static int each_object(struct check *k, char *from, const char *to,
		       int (*fn)(struct check *, char *, size_t))
{
	size_t no = 0;
	for (char *line = from; line < to;) {
		size_t len = strcspn(line, "\n"); /* a line ends at a newline or a cut one */
		char *next = line + len + 1;
		line[len] = '\0';
		while (*line == ' ')
			line++;
		if (*line == '{' && fn(k, line, ++no) != 0)
			return -1;
		line = next;
	}
	return 0;
}

static int on_line(struct check *k, char *text, size_t no)
{
	return parse_line(k, text, no);
}

static int on_evidence(struct check *k, char *text, size_t no)
{
	(void)no;
	return parse_evidence(k, text);
}

static int parse_statement(struct check *k, char *text)
{
	char *lines = strstr(text, "\"lines\"");
	char *evidence = lines != NULL ? strstr(lines, "\"evidence\"") : NULL;
	if (evidence == NULL)
		return check_fail(k, "not a statement (no lines or evidence)");
	const char *end = evidence + strlen(evidence); /* before each_object cuts lines */
	*lines = '\0';
	if (parse_head(k, text) != 0 || each_object(k, lines + 1, evidence, on_line) != 0 ||
	    each_object(k, evidence + 1, end, on_evidence) != 0)
		return -1;
	if (k->st.n != k->count)
		return check_fail(k, "the statement counts %" PRIu64 " obligations and lists %zu",
				  k->count, k->st.n);
	return 0;
}

static const Tally__V1__Entry *cited(const struct check *k, uint64_t seq,
				     Tally__V1__Command__BodyCase want)
{
	for (size_t i = 0; i < k->n_cited; i++)
		if (k->cited[i].seq == seq) {
			const Tally__V1__Entry *e = k->cited[i].e;
			bool ok = e->kind == TALLY__V1__ENTRY_KIND__COMMAND && e->command != NULL &&
				  e->command->body_case == want && e->result != NULL &&
				  e->result->code == CODE(OK);
			return ok ? e : NULL;
		}
	return NULL;
}

/* The settle entry: the pair, the cut-off, how many it settled. */
static int recheck_settle(struct check *k)
{
	const struct audit_statement *st = &k->st;
	const Tally__V1__Entry *e = cited(k, st->settlement, TALLY__V1__COMMAND__BODY_SETTLE);
	if (e == NULL)
		return check_fail(k, "settlement %" PRIu64 ": its settle entry is not in the evidence",
				  st->settlement);
	const Tally__V1__Settle *s = e->command->settle;
	bool ordered = strcmp(s->brand_a, s->brand_b) < 0;
	const char *a = ordered ? s->brand_a : s->brand_b, *b = ordered ? s->brand_b : s->brand_a;
	if (strcmp(a, st->brand_a) != 0 || strcmp(b, st->brand_b) != 0 || s->until_ms != st->until_ms)
		return check_fail(k, "settlement %" PRIu64 ": the entry settles %s and %s up to %" PRId64
				  ", not what the statement says", st->settlement, a, b, s->until_ms);
	if ((uint64_t)e->result->count != st->n)
		return check_fail(k, "settlement %" PRIu64 ": the ledger settled %" PRId64
				  " obligations, the statement lists %zu", st->settlement,
				  e->result->count, st->n);
	if (st->confirmed_seq != 0) {
		const Tally__V1__Entry *c = cited(k, st->confirmed_seq,
						  TALLY__V1__COMMAND__BODY_CONFIRM_SETTLEMENT);
		if (c == NULL || c->command->confirm_settlement->settlement_id != st->settlement)
			return check_fail(k, "confirmed_seq %" PRIu64 ": not a confirmation of this "
					  "settlement in the evidence", st->confirmed_seq);
	}
	return 0;
}

/* Line i against its exchange entry and the agreement entry it cites. */
static int recheck_line(struct check *k, size_t i)
{
	const struct audit_statement_line *l = &k->st.lines[i];
	const Tally__V1__Entry *e = cited(k, l->seq, TALLY__V1__COMMAND__BODY_EXCHANGE);
	const Tally__V1__Entry *g = cited(k, l->agreement_seq, TALLY__V1__COMMAND__BODY_SET_AGREEMENT);
	if (e == NULL || g == NULL)
		return check_fail(k, "line %zu: entry %" PRIu64 " (an exchange) or %" PRIu64
				  " (an agreement) is not in the evidence", i + 1, l->seq, l->agreement_seq);
	const Tally__V1__Exchange *x = e->command->exchange;
	const Tally__V1__SetAgreement *a = g->command->set_agreement;
	const char *what = NULL;
	if (strcmp(x->member, l->member) != 0)
		what = "member";
	else if (strcmp(x->from_brand, l->payer) != 0 || strcmp(x->to_brand, l->payee) != 0)
		what = "payer or payee";
	else if (x->points != l->points || e->result->points != l->converted_points)
		what = "points";
	else if (e->time_ms != l->time_ms || l->time_ms > k->st.until_ms || l->seq >= k->st.settlement)
		what = "time";
	else if (strcmp(a->from_brand, x->from_brand) != 0 || strcmp(a->to_brand, x->to_brand) != 0 ||
		 l->agreement_seq >= l->seq || a->price_micros != l->price_micros)
		what = "agreement or price";
	else if (l->amount_micros != l->converted_points * l->price_micros)
		what = "amount";
	return what == NULL ? 0
			    : check_fail(k, "line %zu (entry %" PRIu64 "): its %s is not what the "
					 "ledger's entries make", i + 1, l->seq, what);
}

static int recheck(struct check *k)
{
	if (recheck_settle(k) != 0)
		return -1;
	for (size_t i = 0; i < k->st.n; i++)
		if (recheck_line(k, i) != 0 || (i > 0 && k->st.lines[i - 1].seq >= k->st.lines[i].seq))
			return k->err[0] ? -1 : check_fail(k, "line %zu: lines out of order or repeated", i + 1);
	struct audit_statement sums = k->st;
	audit_statement_totals(&sums);
	if (sums.gross_a_to_b != k->st.gross_a_to_b || sums.gross_b_to_a != k->st.gross_b_to_a ||
	    sums.net != k->st.net || strcmp(sums.payer, k->st.payer) != 0 ||
	    strcmp(sums.payee, k->st.payee) != 0)
		return check_fail(k, "the totals are not the sum of the lines (gross %" PRId64 " / %" PRId64
				  ", net %" PRId64 " %s pays %s)", sums.gross_a_to_b, sums.gross_b_to_a,
				  sums.net, sums.payer, sums.payee);
	return 0;
}

int audit_statement_verify(char *text, const struct tally_checkpoint *c,
			   struct audit_statement *summary, char *err, size_t errcap)
{
	struct check *k = calloc(1, sizeof(*k));
	if (k == NULL)
		return -1;
	k->c = *c;
	tally_arena_init(&k->arena, 1 << 20, 0);
	int rc = parse_statement(k, text);
	if (rc == 0)
		rc = recheck(k);
	if (rc == 0 && summary != NULL) {
		*summary = k->st;
		summary->lines = NULL;
		summary->cap = 0;
	}
	if (rc != 0)
		snprintf(err, errcap, "%s", k->err);
	free(k->cited);
	audit_statement_free(&k->st);
	tally_arena_free(&k->arena);
	free(k);
	return rc;
}

int audit_check_statement(const struct audit_opts *o)
{
	if (o->checkpoint == NULL || o->keys == NULL) {
		fprintf(stderr, "tally-audit: check-statement needs --checkpoint FILE and --keys FILE\n");
		return AUDIT_EXIT_USAGE;
	}
	struct check *k = calloc(1, sizeof(*k));
	if (k == NULL)
		return AUDIT_EXIT_FAILED;
	k->o = o;
	char *text = read_all(o->dir, 1u << 30);
	int rc = text == NULL ? check_fail(k, "%s: unreadable", o->dir) : load_checkpoint(k);
	struct audit_statement st;
	if (rc == 0)
		rc = audit_statement_verify(text, &k->c, &st, k->err, sizeof(k->err));
	if (rc == 0 && o->json)
		printf("{\"checked\":true,\"settlement\":%" PRIu64 ",\"obligations\":%zu,"
		       "\"net_micros\":%" PRId64 ",\"payer\":\"%s\",\"payee\":\"%s\","
		       "\"checkpoint_node_id\":%" PRIu64 ",\"checkpoint_tree_size\":%" PRIu64 "}\n",
		       st.settlement, st.n, st.net, st.payer, st.payee, k->c.node_id, k->c.tree_size);
	else if (rc == 0)
		printf("statement of settlement %" PRIu64 " checked against %s (node %" PRIu64
		       ", tree size %" PRIu64 "): %zu obligations, every line and total follows from "
		       "the ledger's entries\n", st.settlement, o->checkpoint, k->c.node_id,
		       k->c.tree_size, st.n);
	else
		fprintf(stderr, "tally-audit: check-statement: FAILED: %s\n", k->err);
	free(text);
	free(k);
	return rc == 0 ? AUDIT_EXIT_OK : AUDIT_EXIT_FAILED;
}
