/*
 * tally-audit's books: accounts and brand totals from postings alone (books.h).
 */
#include "tools/audit/books.h"

#include "tools/audit/audit.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define ACCOUNTS_FIRST 4096

static int books_fail(char *err, size_t errcap, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int books_fail(char *err, size_t errcap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errcap, fmt, ap);
	va_end(ap);
	return -1;
}

int audit_books_init(struct audit_books *b, char *err, size_t errcap)
{
	memset(b, 0, sizeof(*b));
	tally_arena_init(&b->strings, 1 << 20, 0);
	tally_arena_init(&b->scratch, 64 << 10, 0);
	b->cap_accounts = ACCOUNTS_FIRST;
	b->n_slots = 2 * ACCOUNTS_FIRST;
	b->accounts = malloc(b->cap_accounts * sizeof(*b->accounts));
	b->slots = calloc(b->n_slots, sizeof(*b->slots));
	if (b->accounts == NULL || b->slots == NULL)
		return books_fail(err, errcap, "out of memory");
	return 0;
}

void audit_books_free(struct audit_books *b)
{
	free(b->accounts);
	free(b->slots);
	tally_arena_free(&b->strings);
	tally_arena_free(&b->scratch);
}

/* ---- the account table --------------------------------------------------------------- */

static uint64_t key_hash(const char *brand, const char *member)
{
	uint64_t h = 14695981039346656037u; /* FNV-1a over brand, a NUL, member */
	for (const char *p = brand;; p++) {
		h = (h ^ (uint8_t)*p) * 1099511628211u;
		if (*p == '\0')
			break;
	}
	for (const char *p = member; *p != '\0'; p++)
		h = (h ^ (uint8_t)*p) * 1099511628211u;
	h ^= h >> 33; /* FNV's low bits are weak for ids that differ in one digit: mix */
	h *= 0xff51afd7ed558ccdu;
	h ^= h >> 33;
	return h;
}

static size_t slot_of(const struct audit_books *b, uint64_t h, const char *brand,
		      const char *member)
{
	size_t mask = b->n_slots - 1;
	uint32_t tag = (uint32_t)(h >> 32);
	for (size_t i = h & mask;; i = (i + 1) & mask) {
		const struct audit_slot *s = &b->slots[i];
		if (s->index == 0)
			return i;
		if (s->tag != tag)
			continue;
		const struct audit_account *a = &b->accounts[s->index - 1];
		if (strcmp(a->member, member) == 0 && strcmp(a->brand, brand) == 0)
			return i;
	}
}

static int books_grow(struct audit_books *b)
{
	size_t cap = 2 * b->cap_accounts, n_slots = 2 * cap;
	struct audit_account *a = realloc(b->accounts, cap * sizeof(*a));
	struct audit_slot *slots = calloc(n_slots, sizeof(*slots));
	if (a == NULL || slots == NULL || cap > UINT32_MAX) {
		if (a != NULL)
			b->accounts = a;
		free(slots);
		return -1;
	}
	b->accounts = a;
	b->last = NULL; /* the accounts moved */
	b->cap_accounts = cap;
	free(b->slots);
	b->slots = slots;
	b->n_slots = n_slots;
	for (size_t i = 0; i < b->n_accounts; i++)
		b->slots[slot_of(b, a[i].hash, a[i].brand, a[i].member)] =
			(struct audit_slot){(uint32_t)(i + 1), (uint32_t)(a[i].hash >> 32)};
	return 0;
}

const struct audit_account *audit_books_account(const struct audit_books *b, const char *brand,
						const char *member)
{
	uint32_t s = b->slots[slot_of(b, key_hash(brand, member), brand, member)].index;
	return s == 0 ? NULL : &b->accounts[s - 1];
}

static struct audit_account *account_get(struct audit_books *b, const char *brand,
					 const char *member, uint64_t seq, int64_t time_ms)
{
	uint64_t h = key_hash(brand, member);
	size_t i = slot_of(b, h, brand, member);
	if (b->slots[i].index != 0)
		return &b->accounts[b->slots[i].index - 1];
	assert(b->n_accounts < b->cap_accounts); /* audit_books_apply made room */
	struct audit_account *a = &b->accounts[b->n_accounts];
	memset(a, 0, sizeof(*a));
	a->hash = h;
	a->brand = tally_arena_strdup(&b->strings, brand);
	a->member = tally_arena_strdup(&b->strings, member);
	if (a->brand == NULL || a->member == NULL)
		return NULL;
	a->first_seq = seq;
	a->first_ms = time_ms;
	b->slots[i] = (struct audit_slot){(uint32_t)++b->n_accounts, (uint32_t)(h >> 32)};
	return a;
}

/* ---- brands --------------------------------------------------------------------------- */

static struct audit_brand *brand_find(struct audit_books *b, const char *id)
{
	for (size_t i = 0; i < b->n_brands; i++)
		if (strcmp(b->brands[i].id, id) == 0)
			return &b->brands[i];
	return NULL;
}

/* A brand registered or changed by the entry's command. */
static int books_brand_command(struct audit_books *b, const Tally__V1__Command *c, uint64_t seq,
			       char *err, size_t errcap)
{
	if (c->body_case == TALLY__V1__COMMAND__BODY_REGISTER_BRAND) {
		const Tally__V1__RegisterBrand *r = c->register_brand;
		if (brand_find(b, r->id) != NULL || b->n_brands == AUDIT_BRANDS_MAX ||
		    strlen(r->id) >= sizeof(b->brands[0].id))
			return books_fail(err, errcap, "entry %" PRIu64 ": brand %s registered twice, "
					  "or too many brands", seq, r->id);
		struct audit_brand *br = &b->brands[b->n_brands++];
		memset(br, 0, sizeof(*br));
		snprintf(br->id, sizeof(br->id), "%s", r->id);
		snprintf(br->currency, sizeof(br->currency), "%s", r->currency);
		br->point_value_micros = r->point_value_micros;
	} else if (c->body_case == TALLY__V1__COMMAND__BODY_UPDATE_BRAND) {
		const Tally__V1__UpdateBrand *u = c->update_brand;
		struct audit_brand *br = brand_find(b, u->id);
		if (br == NULL)
			return books_fail(err, errcap, "entry %" PRIu64 ": brand %s updated before it "
					  "was registered", seq, u->id);
		if (u->point_value_micros != NULL)
			br->point_value_micros = u->point_value_micros->value;
		if (u->currency != NULL)
			snprintf(br->currency, sizeof(br->currency), "%s", u->currency->value);
	}
	return 0;
}

/* ---- one entry ------------------------------------------------------------------------ */

/* What one entry posted in one brand. */
struct entry_brand {
	struct audit_brand *brand;
	int64_t sum, issuance, redeemed, expired;
	struct audit_account *member;     /* the member whose points moved, if one */
	unsigned members;
};

static struct entry_brand *entry_brand(struct entry_brand *eb, size_t *n, struct audit_brand *br)
{
	for (size_t i = 0; i < *n; i++)
		if (eb[i].brand == br)
			return &eb[i];
	if (*n == AUDIT_ENTRY_BRANDS_MAX)
		return NULL;
	memset(&eb[*n], 0, sizeof(eb[*n]));
	eb[*n].brand = br;
	return &eb[(*n)++];
}

static int books_posting(struct audit_books *b, const Tally__V1__Entry *e,
			 const Tally__V1__Posting *p, struct entry_brand *eb, size_t *n,
			 char *err, size_t errcap)
{
	struct audit_brand *br = brand_find(b, p->brand);
	struct entry_brand *x = br != NULL ? entry_brand(eb, n, br) : NULL;
	if (x == NULL)
		return books_fail(err, errcap, "entry %" PRIu64 ": a posting to brand %s, which no "
				  "earlier entry registered (or too many brands)", e->seq, p->brand);
	x->sum += p->points;
	switch (p->account) {
	case TALLY__V1__SYSTEM_ACCOUNT__MEMBER: {
		struct audit_account *a = account_get(b, p->brand, p->member, e->seq, e->time_ms);
		if (a == NULL)
			return books_fail(err, errcap, "out of memory");
		a->brand_index = (uint32_t)(br - b->brands);
		b->last = a;
		*(p->bucket == TALLY__V1__BUCKET__HELD ? &a->held : &a->available) += p->points;
		a->last_seq = e->seq;
		if (x->member != a)
			x->members++;
		x->member = a;
		break;
	}
	case TALLY__V1__SYSTEM_ACCOUNT__ISSUANCE: x->issuance += p->points; br->issued -= p->points; break;
	case TALLY__V1__SYSTEM_ACCOUNT__REDEEMED: x->redeemed += p->points; br->redeemed += p->points; break;
	case TALLY__V1__SYSTEM_ACCOUNT__EXPIRED: x->expired += p->points; br->expired += p->points; break;
	case TALLY__V1__SYSTEM_ACCOUNT__CLEARING: br->exchanged += p->points; break;
	case TALLY__V1__SYSTEM_ACCOUNT__ADJUSTMENT: br->adjusted -= p->points; break;
	default:
		return books_fail(err, errcap, "entry %" PRIu64 ": a posting to an unknown account %d",
				  e->seq, (int)p->account);
	}
	b->postings++;
	return 0;
}

/* Per brand: the postings sum to zero; the one member's earnings, redemptions and
 * expiries; no balance below zero. */
static int books_close_entry(const Tally__V1__Entry *e, struct entry_brand *eb, size_t n,
			     char *err, size_t errcap)
{
	for (size_t i = 0; i < n; i++) {
		struct entry_brand *x = &eb[i];
		if (x->sum != 0)
			return books_fail(err, errcap, "entry %" PRIu64 ": the postings in brand %s sum "
					  "to %" PRId64 ", not zero", e->seq, x->brand->id, x->sum);
		struct audit_account *a = x->members == 1 ? x->member : NULL;
		if (a != NULL) {
			a->earned -= x->issuance;
			a->redeemed += x->redeemed;
			a->expired += x->expired;
			if (x->issuance < 0) {
				a->last_earned_ms = e->time_ms;
				a->earn_events++;
			}
		}
		if (a != NULL && (a->available < 0 || a->held < 0))
			return books_fail(err, errcap, "entry %" PRIu64 ": %s/%s goes below zero "
					  "(available %" PRId64 ", held %" PRId64 ")", e->seq, a->brand,
					  a->member, a->available, a->held);
	}
	return 0;
}

/* The ledger stored, in each entry's result, the account the entry is about as it was
 * after the entry: the postings so far must make exactly that. */
static int books_reported(const struct audit_books *b, const Tally__V1__Entry *e, char *err,
			  size_t errcap)
{
	if (e->result == NULL || e->result->code != TALLY__V1__RESULT_CODE__OK ||
	    e->brand[0] == '\0' || e->member[0] == '\0')
		return 0;
	const struct audit_account *a = b->last != NULL && strcmp(b->last->member, e->member) == 0 &&
						 strcmp(b->last->brand, e->brand) == 0
					? b->last
					: audit_books_account(b, e->brand, e->member);
	if (a == NULL || (a->available == e->result->available && a->held == e->result->held))
		return 0;
	return books_fail(err, errcap, "entry %" PRIu64 ": the ledger reported %s/%s at available "
			  "%" PRId64 ", held %" PRId64 "; its postings make %" PRId64 ", %" PRId64,
			  e->seq, e->brand, e->member, e->result->available, e->result->held,
			  a->available, a->held);
}

const Tally__V1__Entry *audit_books_decode(struct audit_books *b, uint64_t seq,
					   const uint8_t *bytes, size_t len, char *err,
					   size_t errcap)
{
	tally_arena_reset(&b->scratch);
	Tally__V1__Entry *e = tally__v1__entry__unpack(tally_arena_protobuf(&b->scratch), len, bytes);
	if (e == NULL)
		books_fail(err, errcap, "entry %" PRIu64 ": its bytes do not decode as an Entry", seq);
	else if (e->seq != seq)
		books_fail(err, errcap, "entry %" PRIu64 " of the journal says it is entry %" PRIu64
			   ": entries are missing, repeated or out of order", seq, e->seq);
	else if (e->time_ms < b->last_ms)
		books_fail(err, errcap, "entry %" PRIu64 ": its time goes back (%" PRId64
			   " after %" PRId64 ")", seq, e->time_ms, b->last_ms);
	else
		return e;
	return NULL;
}

int audit_books_apply(struct audit_books *b, const Tally__V1__Entry *e, char *err, size_t errcap)
{
	b->last_ms = e->time_ms;
	bool applied = e->result != NULL && e->result->code == TALLY__V1__RESULT_CODE__OK;
	if (e->command != NULL && applied &&
	    books_brand_command(b, e->command, e->seq, err, errcap) != 0)
		return -1;
	/* Room first for every account this entry could open: the table must not move
	 * while the entry's postings hold pointers into it (entry_brand.member). */
	while (b->n_accounts + e->n_postings > b->cap_accounts)
		if (books_grow(b) != 0)
			return books_fail(err, errcap, "out of memory");
	struct entry_brand eb[AUDIT_ENTRY_BRANDS_MAX];
	size_t n = 0;
	for (size_t i = 0; i < e->n_postings; i++)
		if (books_posting(b, e, e->postings[i], eb, &n, err, errcap) != 0)
			return -1;
	b->entries++;
	if (books_close_entry(e, eb, n, err, errcap) != 0)
		return -1;
	return books_reported(b, e, err, errcap);
}

int audit_books_entry(struct audit_books *b, uint64_t seq, const uint8_t *bytes, size_t len,
		      char *err, size_t errcap)
{
	const Tally__V1__Entry *e = audit_books_decode(b, seq, bytes, len, err, errcap);
	return e == NULL ? -1 : audit_books_apply(b, e, err, errcap);
}

int audit_walk(const char *dir, struct audit_books *b,
	       bool (*stop)(void *ctx, const Tally__V1__Entry *e),
	       int (*each)(void *ctx, const Tally__V1__Entry *e), void *ctx, char *err,
	       size_t errcap)
{
	struct audit_reader r;
	if (audit_reader_open(dir, &r, err, errcap) != 0)
		return -1;
	int rc = 0;
	for (;;) {
		uint64_t seq;
		const uint8_t *bytes;
		size_t len;
		int got = audit_reader_next(&r, &seq, &bytes, &len, err, errcap);
		if (got <= 0) {
			rc = got;
			break;
		}
		const Tally__V1__Entry *e = audit_books_decode(b, seq, bytes, len, err, errcap);
		if (e == NULL) {
			rc = -1;
			break;
		}
		if (stop != NULL && stop(ctx, e))
			break;
		if (audit_books_apply(b, e, err, errcap) != 0 || (each != NULL && each(ctx, e) != 0)) {
			rc = -1;
			break;
		}
		if ((seq & 0xffff) == 0)
			audit_progress("entries read", seq, 0);
	}
	audit_progress_done();
	audit_reader_close(&r);
	return rc;
}

int audit_grow(void **p, size_t *cap, size_t n, size_t size)
{
	if (n < *cap)
		return 0;
	size_t c = *cap ? 2 * *cap : 64;
	void *q = realloc(*p, c * size);
	if (q == NULL)
		return -1;
	*p = q;
	*cap = c;
	return 0;
}

/* ---- the report ------------------------------------------------------------------------ */

int audit_books_totals(struct audit_books *b, char *err, size_t errcap)
{
	for (size_t k = 0; k < b->n_brands; k++)
		b->brands[k].outstanding = 0;
	for (size_t i = 0; i < b->n_accounts; i++) {
		const struct audit_account *a = &b->accounts[i];
		assert(a->brand_index < b->n_brands);
		b->brands[a->brand_index].outstanding += a->available + a->held;
	}
	for (size_t k = 0; k < b->n_brands; k++) {
		const struct audit_brand *br = &b->brands[k];
		int64_t owed = br->issued - br->redeemed - br->expired - br->exchanged + br->adjusted;
		if (owed != br->outstanding)
			return books_fail(err, errcap, "brand %s: its members hold %" PRId64 " points; "
					  "issued - redeemed - expired - exchanged + adjusted is %" PRId64,
					  br->id, br->outstanding, owed);
	}
	return 0;
}

static int by_id(const void *x, const void *y)
{
	return strcmp(((const struct audit_brand *)x)->id, ((const struct audit_brand *)y)->id);
}

void audit_books_report(const struct audit_books *b, const struct tally_checkpoint *last,
			size_t n_checkpoints, double secs, bool json, FILE *out)
{
	static struct audit_brand sorted[AUDIT_BRANDS_MAX];
	memcpy(sorted, b->brands, b->n_brands * sizeof(sorted[0]));
	qsort(sorted, b->n_brands, sizeof(sorted[0]), by_id);
	char root[2 * TALLY_HASH_BYTES + 1];
	tally_hex_encode(last->root, TALLY_HASH_BYTES, root);
	double rate = secs > 0 ? (double)b->entries / secs : 0;
	if (json)
		fprintf(out, "{\"verified\":true,\"entries\":%" PRIu64 ",\"postings\":%" PRIu64
			",\"accounts\":%zu,\"checkpoints\":%zu,\"tree_size\":%" PRIu64 ",\"root\":\"%s\","
			"\"seconds\":%.3f,\"entries_per_s\":%.0f,\"brands\":[",
			b->entries, b->postings, b->n_accounts, n_checkpoints, last->tree_size, root,
			secs, rate);
	else
		fprintf(out, "verified: %" PRIu64 " entries, %" PRIu64 " postings, %zu accounts, %zu "
			"checkpoints; root at %" PRIu64 ": %s\n%.2f s, %.0f entries/s\n\n"
			"%-12s %14s %14s %14s %14s %14s %14s %20s\n", b->entries, b->postings,
			b->n_accounts, n_checkpoints, last->tree_size, root, secs, rate, "brand",
			"issued", "redeemed", "expired", "exchanged", "adjusted", "outstanding",
			"liability");
	for (size_t k = 0; k < b->n_brands; k++) {
		const struct audit_brand *br = &sorted[k];
		char money[TALLY_MONEY_BYTES];
		tally_money_of_points(br->outstanding, br->point_value_micros, br->currency, money);
		if (json)
			fprintf(out, "%s{\"brand\":\"%s\",\"issued\":%" PRId64 ",\"redeemed\":%" PRId64
				",\"expired\":%" PRId64 ",\"exchanged\":%" PRId64 ",\"adjusted\":%" PRId64
				",\"outstanding\":%" PRId64 ",\"point_value_micros\":%" PRId64
				",\"liability\":\"%s\"}", k ? "," : "", br->id, br->issued, br->redeemed,
				br->expired, br->exchanged, br->adjusted, br->outstanding,
				br->point_value_micros, money);
		else
			fprintf(out, "%-12s %14" PRId64 " %14" PRId64 " %14" PRId64 " %14" PRId64
				" %14" PRId64 " %14" PRId64 " %20s\n", br->id, br->issued, br->redeemed,
				br->expired, br->exchanged, br->adjusted, br->outstanding, money);
	}
	if (json)
		fprintf(out, "]}\n");
}
