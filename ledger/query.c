/*
 * Queries: each answers from one LMDB read transaction, so a multi-account read is
 * a consistent snapshot, and reports the applied index it reflects. Everything in
 * the answer lives in the caller's arena.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger/internal.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name

struct query {
	struct tally_ledger *l;
	MDB_txn *txn;
	struct tally_arena *arena;
	const Tally__V1__Principal *who;
	Tally__V1__QueryResult *res;
	struct meta m;
};

static int qfail(struct query *q, Tally__V1__ResultCode code, const char *msg)
{
	q->res->code = code;
	q->res->message = tally_arena_strdup(q->arena, msg);
	return q->res->message == NULL ? TALLY_ENOMEM : 0;
}

static int qdenied(struct query *q, const char *brand)
{
	char msg[160];
	snprintf(msg, sizeof(msg), "key %s is not scoped to brand %s", q->who->key_name, brand);
	return qfail(q, CODE(PERMISSION_DENIED), msg);
}

static int qget(struct query *q, enum table t, const struct key *k, MDB_val *v)
{
	MDB_val key = {k->n, (void *)k->b};
	return lmdb_error(mdb_get(q->txn, q->l->dbi[t], &key, v));
}

static int qrec(struct query *q, enum table t, const struct key *k,
		const ProtobufCMessageDescriptor *d, void **out)
{
	MDB_val v;
	int rc = qget(q, t, k, &v);
	if (rc != 0)
		return rc;
	*out = protobuf_c_message_unpack(d, tally_arena_protobuf(q->arena), v.mv_size, v.mv_data);
	return *out == NULL ? TALLY_ECORRUPT : 0;
}

/* A record with a member chain's head in front of it (accounts, members). */
static int qrec_chained(struct query *q, enum table t, const struct key *k,
			const ProtobufCMessageDescriptor *d, void **out, struct chain_head *head)
{
	MDB_val v;
	int rc = qget(q, t, k, &v);
	if (rc != 0)
		return rc;
	*out = chain_record_unpack(&v, d, q->arena, head);
	return *out == NULL ? TALLY_ECORRUPT : 0;
}

/* Calls fn for each record whose key starts with prefix, in key order, up to limit. */
typedef int (*scan_fn)(struct query *q, const MDB_val *k, const MDB_val *v, void *ctx);

struct qscan_call {
	struct query *q;
	scan_fn fn;
	void *ctx;
};

static int qscan_row(void *arg, const MDB_val *k, const MDB_val *v)
{
	struct qscan_call *s = arg;
	return s->fn(s->q, k, v, s->ctx);
}

static int qscan(struct query *q, enum table t, const struct key *prefix, size_t limit,
		 scan_fn fn, void *ctx)
{
	struct qscan_call s = {q, fn, ctx};
	return txn_scan(q->txn, q->l->dbi[t], prefix->b, prefix->n, limit, qscan_row, &s);
}

/* A growing array of pointers in the arena. */
static int push(struct query *q, void ***items, size_t *n, void *item)
{
	if ((*n & (*n - 1)) == 0) { /* 0, 1, 2, 4, ...: grow to the next power of two */
		size_t cap = *n == 0 ? 4 : *n * 2;
		void **p = tally_arena_alloc(q->arena, cap * sizeof(*p));
		if (p == NULL)
			return TALLY_ENOMEM;
		if (*n > 0)
			memcpy(p, *items, *n * sizeof(*p));
		*items = p;
	}
	(*items)[(*n)++] = item;
	return 0;
}

/* ---- accounts --------------------------------------------------------------------- */

static int hold_row(struct query *q, const MDB_val *k, const MDB_val *v, void *ctx)
{
	(void)v;
	Tally__V1__Account *acct = ctx;
	struct key hk;
	Tally__V1__HoldRecord *h;
	key_reset(&hk);
	key_u64(&hk, be64_get((uint8_t *)k->mv_data + k->mv_size - 8));
	int rc = qrec(q, T_HOLDS, &hk, &tally__v1__hold_record__descriptor, (void **)&h);
	if (rc != 0)
		return rc == TALLY_ENOTFOUND ? TALLY_ECORRUPT : rc;
	return push(q, (void ***)&acct->holds, &acct->n_holds, h);
}

static int account_read(struct query *q, const char *brand, const char *member, bool with_lots,
			Tally__V1__Account **out)
{
	struct key k;
	key_reset(&k);
	key_str(&k, brand);
	key_raw(&k, member);
	struct chain_head head;
	int rc = qrec_chained(q, T_ACCOUNTS, &k, &tally__v1__account__descriptor, (void **)out,
			      &head);
	if (rc == TALLY_ENOTFOUND) {
		Tally__V1__Account *a = tally_arena_alloc(q->arena, sizeof(*a));
		if (a == NULL)
			return TALLY_ENOMEM;
		tally__v1__account__init(a);
		a->brand = tally_arena_strdup(q->arena, brand);
		a->member = tally_arena_strdup(q->arena, member);
		*out = a;
		rc = a->brand != NULL && a->member != NULL ? TALLY_ENOTFOUND : TALLY_ENOMEM;
	}
	if (rc != 0)
		return rc;
	if (!with_lots) {
		(*out)->n_lots = 0; /* the record carries them; the answer need not */
		return 0;
	}
	key_reset(&k);
	key_str(&k, brand);
	key_str(&k, member);
	return qscan(q, T_HOLD_ACCT, &k, SIZE_MAX, hold_row, *out);
}

static int q_accounts(struct query *q, const Tally__V1__GetAccounts *g)
{
	if (!valid_brand_id(g->brand))
		return qfail(q, CODE(INVALID_ARGUMENT), "brand: must match [a-z0-9_-]{1,32}");
	if (g->n_members == 0 || g->n_members > TALLY_ACCOUNTS_QUERY_MAX)
		return qfail(q, CODE(INVALID_ARGUMENT), "members: 1..8192 ids");
	if (!in_scope(q->who, g->brand))
		return qdenied(q, g->brand);
	struct key k;
	MDB_val v;
	key_reset(&k);
	key_raw(&k, g->brand);
	int rc = qget(q, T_BRANDS, &k, &v);
	if (rc == TALLY_ENOTFOUND)
		return qfail(q, CODE(UNKNOWN_BRAND), "brand: not registered");
	if (rc != 0)
		return rc;
	q->res->accounts = tally_arena_alloc(q->arena, g->n_members * sizeof(*q->res->accounts));
	if (q->res->accounts == NULL)
		return TALLY_ENOMEM;
	for (size_t i = 0; i < g->n_members; i++) {
		if (!valid_member_id(g->members[i]))
			return qfail(q, CODE(INVALID_ARGUMENT), "members: ids are 1..64 printable bytes");
		rc = account_read(q, g->brand, g->members[i], g->with_lots, &q->res->accounts[i]);
		if (rc != 0 && rc != TALLY_ENOTFOUND)
			return rc;
		q->res->n_accounts++;
	}
	return 0;
}

/* ---- entries ---------------------------------------------------------------------- */

static int stored_entry(struct query *q, uint64_t seq, Tally__V1__StoredEntry **out)
{
	MDB_val raw;
	const uint8_t *payload;
	size_t n;
	int rc = txn_entry_get(q->txn, q->l->dbi[T_ENTRIES], seq, &raw);
	if (rc == 0)
		rc = entry_payload(&raw, &payload, &n);
	if (rc != 0)
		return rc;
	Tally__V1__StoredEntry *s = tally_arena_alloc(q->arena, sizeof(*s));
	uint8_t *bytes = tally_arena_alloc(q->arena, n);
	if (s == NULL || bytes == NULL)
		return TALLY_ENOMEM;
	tally__v1__stored_entry__init(s);
	s->seq = seq;
	s->raft_index = be64_get(raw.mv_data);
	s->raft_term = be64_get((uint8_t *)raw.mv_data + 8);
	memcpy(bytes, payload, n);
	s->entry.data = bytes;
	s->entry.len = n;
	*out = s;
	return 0;
}

/* Whether the entry touches `brand`, or (brand NULL) any brand in the key's scope. */
static bool entry_matches(struct query *q, const Tally__V1__StoredEntry *s, const char *brand)
{
	if (brand == NULL && is_all_scope(q->who))
		return true;
	Tally__V1__Entry *e = tally__v1__entry__unpack(tally_arena_protobuf(q->arena),
						       s->entry.len, s->entry.data);
	if (e == NULL)
		return false;
	const char *brands[ENTRY_BRANDS_MAX];
	size_t n = entry_brands(e, brands);
	for (size_t i = 0; i < n; i++)
		if (brand != NULL ? strcmp(brands[i], brand) == 0 : in_scope(q->who, brands[i]))
			return true;
	return false;
}

static int proof_bytes(struct query *q, uint8_t (*path)[32], size_t n, ProtobufCBinaryData **out)
{
	ProtobufCBinaryData *p = tally_arena_alloc(q->arena, (n + 1) * sizeof(*p));
	if (p == NULL)
		return TALLY_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		p[i].len = 32;
		p[i].data = tally_arena_alloc(q->arena, 32);
		if (p[i].data == NULL)
			return TALLY_ENOMEM;
		memcpy(p[i].data, path[i], 32);
	}
	*out = p;
	return 0;
}

static int q_entry(struct query *q, const Tally__V1__GetEntry *g)
{
	if (g->seq == 0 || g->seq > q->m.tree.size)
		return qfail(q, CODE(NOT_FOUND), "seq: no such entry");
	int rc = stored_entry(q, g->seq, &q->res->entry);
	if (rc != 0)
		return rc == TALLY_ENOTFOUND ? TALLY_ECORRUPT : rc;
	if (!entry_matches(q, q->res->entry, NULL)) {
		q->res->entry = NULL;
		return qfail(q, CODE(PERMISSION_DENIED), "seq: entry of a brand outside the key's scope");
	}
	if (!g->proof)
		return 0;
	uint8_t path[TALLY_MERKLE_PROOF_MAX][32];
	size_t n;
	struct tally_merkle_store st = tree_store(q->txn, q->l->dbi);
	rc = tally_merkle_inclusion_proof(&st, g->seq - 1, q->m.tree.size, path,
					  TALLY_MERKLE_PROOF_MAX, &n);
	Tally__V1__InclusionProof *p = tally_arena_alloc(q->arena, sizeof(*p));
	uint8_t *root = tally_arena_alloc(q->arena, 32);
	if (rc == 0 && (p == NULL || root == NULL))
		rc = TALLY_ENOMEM;
	if (rc != 0)
		return rc;
	tally__v1__inclusion_proof__init(p);
	p->index = g->seq - 1;
	p->tree_size = q->m.tree.size;
	tally_merkle_frontier_root(&q->m.tree, root);
	p->root.data = root;
	p->root.len = 32;
	p->n_path = n;
	q->res->proof = p;
	return proof_bytes(q, path, n, &p->path);
}

struct entries_scan {
	const char *brand;      /* only entries touching this brand, when not NULL */
	size_t limit;
	uint64_t examined;      /* bounded by TALLY_ENTRIES_SCAN_MAX */
};

/* Adds entry seq to the page if it passes the brand filter. Stops the scan (with
 * TALLY_ERANGE) when the page is full or the scan budget is spent, leaving next_seq
 * where the next page starts. */
static int entries_add(struct query *q, uint64_t seq, struct entries_scan *s)
{
	if (q->res->n_entries == s->limit || s->examined == TALLY_ENTRIES_SCAN_MAX) {
		q->res->next_seq = seq;
		return TALLY_ERANGE;
	}
	s->examined++;
	Tally__V1__StoredEntry *e;
	int rc = stored_entry(q, seq, &e);
	if (rc != 0)
		return rc == TALLY_ENOTFOUND ? TALLY_ECORRUPT : rc;
	if (s->brand != NULL && !entry_matches(q, e, s->brand))
		return 0;
	return push(q, (void ***)&q->res->entries, &q->res->n_entries, e);
}

/* ---- a member's entries: its chains merged ------------------------------------------ */

#define MEMBER_CHUNK 256 /* seqs read from each chain per round of the merge */

struct member_chain {
	const char *brand;      /* "" for the member record's own chain */
	struct chain_head head;
};

struct member_chains {
	struct query *q;
	const char *member;
	struct member_chain **v;
	size_t n;
};

static int chain_push(struct member_chains *m, const char *brand, const MDB_val *v)
{
	struct member_chain *c = tally_arena_alloc(m->q->arena, sizeof(*c));
	if (c == NULL)
		return TALLY_ENOMEM;
	c->brand = brand;
	MDB_val body;
	int rc = chain_head_decode(v, &c->head, &body);
	if (rc != 0)
		return rc;
	return push(m->q, (void ***)&m->v, &m->n, c);
}

/* Every brand's account of the member, found by brand (brands are few). */
static int brand_chain(void *arg, const MDB_val *k, const MDB_val *v)
{
	(void)v;
	struct member_chains *m = arg;
	struct key ak;
	MDB_val av;
	char *brand = tally_arena_strndup(m->q->arena, k->mv_data, k->mv_size);
	if (brand == NULL)
		return TALLY_ENOMEM;
	key_reset(&ak);
	key_str(&ak, brand);
	key_raw(&ak, m->member);
	int rc = qget(m->q, T_ACCOUNTS, &ak, &av);
	if (rc == TALLY_ENOTFOUND)
		return 0;
	return rc != 0 ? rc : chain_push(m, brand, &av);
}

static int cmp_u64(const void *x, const void *y)
{
	uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
	return a < b ? -1 : a > b;
}

/* One round: up to MEMBER_CHUNK seqs >= from of each chain, merged; the seqs up to
 * the lowest last seq of a chain cut short are complete and go to the page. */
static int member_round(struct query *q, struct member_chains *m, struct tally_arena *scratch,
			uint64_t *from, struct entries_scan *s, bool *done)
{
	uint64_t *all = tally_arena_alloc(scratch, m->n * MEMBER_CHUNK * sizeof(*all));
	uint64_t bound = UINT64_MAX;
	size_t total = 0;
	if (all == NULL)
		return TALLY_ENOMEM;
	for (size_t i = 0; i < m->n; i++) {
		size_t got;
		int rc = chain_collect(q->txn, q->l->dbi[T_ENTRIES], scratch, &m->v[i]->head,
				       m->v[i]->brand, m->member, *from, MEMBER_CHUNK, all + total, &got);
		if (rc != 0)
			return rc;
		if (got == MEMBER_CHUNK && all[total + got - 1] < bound)
			bound = all[total + got - 1];
		total += got;
	}
	qsort(all, total, sizeof(*all), cmp_u64);
	for (size_t i = 0; i < total && all[i] <= bound; i++) {
		if (i > 0 && all[i] == all[i - 1])
			continue; /* an entry in two of the member's chains is listed once */
		int rc = entries_add(q, all[i], s);
		if (rc != 0)
			return rc;
	}
	*done = bound == UINT64_MAX;
	*from = bound + 1;
	return 0;
}

/* Entries of one member, starting at seq `from`: the member record's chain and its
 * accounts' chains, merged in seq order. */
static int member_entries(struct query *q, const char *member, uint64_t from,
			  struct entries_scan *s)
{
	struct member_chains m = {q, member, NULL, 0};
	struct key k;
	MDB_val v;
	key_reset(&k);
	key_raw(&k, member);
	int rc = qget(q, T_MEMBERS, &k, &v);
	if (rc == TALLY_ENOTFOUND)
		return 0; /* accounts and postings are only for open members */
	if (rc == 0)
		rc = chain_push(&m, "", &v);
	if (rc == 0)
		rc = txn_scan(q->txn, q->l->dbi[T_BRANDS], "", 0, SIZE_MAX, brand_chain, &m);
	struct tally_arena scratch;
	tally_arena_init(&scratch, 64 << 10, 0);
	for (bool done = false; rc == 0 && !done;) {
		tally_arena_reset(&scratch);
		rc = member_round(q, &m, &scratch, &from, s, &done);
	}
	tally_arena_free(&scratch);
	return rc;
}

static int q_entries(struct query *q, const Tally__V1__ListEntries *g)
{
	struct entries_scan s = {NULL, g->limit != 0 ? g->limit : 100, 0};
	if (g->limit > TALLY_ENTRIES_PAGE_MAX)
		return qfail(q, CODE(INVALID_ARGUMENT), "limit: at most 10000");
	bool by_brand = g->brand[0] != '\0', by_member = g->member[0] != '\0';
	if (by_brand && !valid_brand_id(g->brand))
		return qfail(q, CODE(INVALID_ARGUMENT), "brand: must match [a-z0-9_-]{1,32}");
	if (by_member && !valid_member_id(g->member))
		return qfail(q, CODE(INVALID_ARGUMENT), "member: must be 1..64 printable bytes");
	if (by_brand ? !in_scope(q->who, g->brand) : !is_all_scope(q->who))
		return by_brand ? qdenied(q, g->brand)
				: qfail(q, CODE(PERMISSION_DENIED), "brand: required for a scoped key");
	s.brand = by_brand ? g->brand : NULL;
	uint64_t from = g->from_seq != 0 ? g->from_seq : 1;
	int rc = 0;
	if (by_member)
		rc = member_entries(q, g->member, from, &s);
	else
		for (uint64_t seq = from; rc == 0 && seq <= q->m.tree.size; seq++)
			rc = entries_add(q, seq, &s);
	return rc == TALLY_ERANGE ? 0 : rc;
}

/* ---- partners ---------------------------------------------------------------------- */

static int q_agreement(struct query *q, const Tally__V1__GetAgreement *g)
{
	if (!valid_brand_id(g->from_brand) || !valid_brand_id(g->to_brand))
		return qfail(q, CODE(INVALID_ARGUMENT), "from_brand, to_brand: brand ids required");
	if (!in_scope(q->who, g->from_brand) && !in_scope(q->who, g->to_brand))
		return qdenied(q, g->from_brand);
	struct key k;
	key_reset(&k);
	key_str(&k, g->from_brand);
	key_str(&k, g->to_brand);
	int rc = qrec(q, T_AGREEMENTS, &k, &tally__v1__agreement__descriptor,
		      (void **)&q->res->agreement);
	return rc == TALLY_ENOTFOUND ? qfail(q, CODE(NO_AGREEMENT), "no such agreement") : rc;
}

static int obligation_row(struct query *q, const MDB_val *k, const MDB_val *v, void *ctx)
{
	(void)k;
	(void)ctx;
	Tally__V1__Obligation *o = tally__v1__obligation__unpack(tally_arena_protobuf(q->arena),
								 v->mv_size, v->mv_data);
	if (o == NULL)
		return TALLY_ECORRUPT;
	return push(q, (void ***)&q->res->obligations, &q->res->n_obligations, o);
}

static bool pair_args(struct query *q, const char *x, const char *y, struct key *prefix)
{
	if (!valid_brand_id(x) || !valid_brand_id(y) || strcmp(x, y) == 0)
		return false;
	bool ordered = strcmp(x, y) < 0;
	key_reset(prefix);
	key_str(prefix, ordered ? x : y);
	key_str(prefix, ordered ? y : x);
	(void)q;
	return true;
}

static int q_obligations(struct query *q, const Tally__V1__ListObligations *g)
{
	struct key prefix;
	if (!pair_args(q, g->brand_a, g->brand_b, &prefix))
		return qfail(q, CODE(INVALID_ARGUMENT), "brand_a, brand_b: two different brand ids");
	if (!in_scope(q->who, g->brand_a) && !in_scope(q->who, g->brand_b))
		return qdenied(q, g->brand_a);
	size_t limit = g->limit != 0 && g->limit <= TALLY_ENTRIES_PAGE_MAX ? g->limit : TALLY_ENTRIES_PAGE_MAX;
	return qscan(q, T_OBLIGATIONS, &prefix, limit, obligation_row, NULL);
}

struct settlements_scan {
	uint64_t from_id;
	size_t limit;
};

static int settlement_row(struct query *q, const MDB_val *k, const MDB_val *v, void *ctx)
{
	(void)v;
	const struct settlements_scan *s = ctx;
	struct key sk;
	Tally__V1__Settlement *st;
	uint64_t id = be64_get((uint8_t *)k->mv_data + k->mv_size - 8);
	if (id < s->from_id)
		return 0;
	if (q->res->n_settlements == s->limit)
		return TALLY_ERANGE; /* page full: stop the scan */
	key_reset(&sk);
	key_u64(&sk, id);
	int rc = qrec(q, T_SETTLEMENTS, &sk, &tally__v1__settlement__descriptor, (void **)&st);
	if (rc != 0)
		return rc == TALLY_ENOTFOUND ? TALLY_ECORRUPT : rc;
	if (!in_scope(q->who, st->brand_a) && !in_scope(q->who, st->brand_b))
		return 0;
	return push(q, (void ***)&q->res->settlements, &q->res->n_settlements, st);
}

static int q_settlements(struct query *q, const Tally__V1__ListSettlements *g)
{
	struct key prefix;
	struct settlements_scan s = {g->from_id, g->limit != 0 && g->limit <= TALLY_ENTRIES_PAGE_MAX
							 ? g->limit : TALLY_ENTRIES_PAGE_MAX};
	enum table t = T_SETTLE_PAIR;
	key_reset(&prefix);
	if (g->brand_a[0] == '\0' && g->brand_b[0] == '\0') {
		t = T_SETTLEMENTS; /* every settlement the key may see */
	} else if (!pair_args(q, g->brand_a, g->brand_b, &prefix)) {
		return qfail(q, CODE(INVALID_ARGUMENT), "brand_a, brand_b: two different brand ids");
	} else if (!in_scope(q->who, g->brand_a) && !in_scope(q->who, g->brand_b)) {
		return qdenied(q, g->brand_a);
	}
	int rc = qscan(q, t, &prefix, SIZE_MAX, settlement_row, &s);
	return rc == TALLY_ERANGE ? 0 : rc;
}

/* ---- small ones -------------------------------------------------------------------- */

static int q_brand(struct query *q, const Tally__V1__GetBrand *g)
{
	if (!valid_brand_id(g->id))
		return qfail(q, CODE(INVALID_ARGUMENT), "id: must match [a-z0-9_-]{1,32}");
	if (!in_scope(q->who, g->id))
		return qdenied(q, g->id);
	struct key k;
	key_reset(&k);
	key_raw(&k, g->id);
	int rc = qrec(q, T_BRANDS, &k, &tally__v1__brand__descriptor, (void **)&q->res->brand);
	return rc == TALLY_ENOTFOUND ? qfail(q, CODE(UNKNOWN_BRAND), "id: not registered") : rc;
}

/* Whether the key may see a member's record: a key of every brand always; a brand's
 * key when the member has an account in one of its brands. */
static bool member_visible(struct query *q, const char *member)
{
	if (is_all_scope(q->who))
		return true;
	for (size_t i = 0; i < q->who->n_brands; i++) {
		struct key k;
		MDB_val v;
		key_reset(&k);
		key_str(&k, q->who->brands[i]);
		key_raw(&k, member);
		if (qget(q, T_ACCOUNTS, &k, &v) == 0)
			return true;
	}
	return false;
}

static int q_member(struct query *q, const Tally__V1__GetMember *g)
{
	if (!valid_member_id(g->id))
		return qfail(q, CODE(INVALID_ARGUMENT), "id: must be 1..64 printable bytes");
	struct key k;
	key_reset(&k);
	key_raw(&k, g->id);
	struct chain_head head;
	int rc = qrec_chained(q, T_MEMBERS, &k, &tally__v1__member__descriptor,
			      (void **)&q->res->member, &head);
	if (rc == TALLY_ENOTFOUND || (rc == 0 && !member_visible(q, g->id))) {
		q->res->member = NULL; /* a brand's key learns nothing of other brands' members */
		return qfail(q, CODE(UNKNOWN_MEMBER), "id: not open");
	}
	return rc;
}

/* The digest and consistency proofs are of the whole journal, every brand's: for keys
 * of scope * (auditors), not one brand's. */
static int q_whole_journal(struct query *q)
{
	return is_all_scope(q->who) ? 0
				    : qfail(q, CODE(PERMISSION_DENIED),
					    "the whole journal's digest and proofs need a key of scope *");
}

static int q_digest(struct query *q)
{
	int rc = q_whole_journal(q);
	if (rc != 0 || q->res->code != CODE(OK))
		return rc;
	Tally__V1__Digest *d = tally_arena_alloc(q->arena, sizeof(*d));
	uint8_t *root = tally_arena_alloc(q->arena, 32), *sd = tally_arena_alloc(q->arena, 32);
	if (d == NULL || root == NULL || sd == NULL)
		return TALLY_ENOMEM;
	tally__v1__digest__init(d);
	d->applied_index = q->m.applied_index;
	d->applied_term = q->m.applied_term;
	d->tree_size = q->m.tree.size;
	d->time_ms = q->m.time_ms;
	tally_merkle_frontier_root(&q->m.tree, root);
	memcpy(sd, q->m.digest, 32);
	d->root.data = root;
	d->root.len = 32;
	d->state_digest.data = sd;
	d->state_digest.len = 32;
	q->res->digest = d;
	return 0;
}

static int q_consistency(struct query *q, const Tally__V1__GetConsistency *g)
{
	int rc0 = q_whole_journal(q);
	if (rc0 != 0 || q->res->code != CODE(OK))
		return rc0;
	uint64_t new_size = g->new_size != 0 ? g->new_size : q->m.tree.size;
	if (g->old_size == 0 || g->old_size > new_size || new_size > q->m.tree.size)
		return qfail(q, CODE(INVALID_ARGUMENT), "old_size, new_size: need 1 <= old <= new <= tree size");
	uint8_t path[TALLY_MERKLE_PROOF_MAX][32];
	size_t n;
	struct tally_merkle_store st = tree_store(q->txn, q->l->dbi);
	int rc = tally_merkle_consistency_proof(&st, g->old_size, new_size, path,
						TALLY_MERKLE_PROOF_MAX, &n);
	Tally__V1__ConsistencyProof *p = tally_arena_alloc(q->arena, sizeof(*p));
	if (rc == 0 && p == NULL)
		rc = TALLY_ENOMEM;
	if (rc != 0)
		return rc;
	tally__v1__consistency_proof__init(p);
	p->old_size = g->old_size;
	p->new_size = new_size;
	p->n_path = n;
	q->res->consistency = p;
	return proof_bytes(q, path, n, &p->path);
}

/* The digest to sign and a consistency proof from old_size, of one read: the node
 * signs the digest (rpc/checkpoint.h) when it answers. */
static int q_checkpoint(struct query *q, const Tally__V1__GetCheckpoint *g)
{
	int rc = q_digest(q);
	if (rc != 0 || q->res->code != CODE(OK) || g->old_size == 0)
		return rc;
	Tally__V1__GetConsistency c = TALLY__V1__GET_CONSISTENCY__INIT;
	c.old_size = g->old_size;
	return q_consistency(q, &c);
}

static int q_dispatch(struct query *q, const Tally__V1__Query *in)
{
	switch (in->q_case) {
	case TALLY__V1__QUERY__Q_BRAND: return q_brand(q, in->brand);
	case TALLY__V1__QUERY__Q_MEMBER: return q_member(q, in->member);
	case TALLY__V1__QUERY__Q_ACCOUNTS: return q_accounts(q, in->accounts);
	case TALLY__V1__QUERY__Q_ENTRY: return q_entry(q, in->entry);
	case TALLY__V1__QUERY__Q_ENTRIES: return q_entries(q, in->entries);
	case TALLY__V1__QUERY__Q_AGREEMENT: return q_agreement(q, in->agreement);
	case TALLY__V1__QUERY__Q_OBLIGATIONS: return q_obligations(q, in->obligations);
	case TALLY__V1__QUERY__Q_SETTLEMENTS: return q_settlements(q, in->settlements);
	case TALLY__V1__QUERY__Q_DIGEST: return q_digest(q);
	case TALLY__V1__QUERY__Q_CONSISTENCY: return q_consistency(q, in->consistency);
	case TALLY__V1__QUERY__Q_CHECKPOINT: return q_checkpoint(q, in->checkpoint);
	default: return qfail(q, CODE(INVALID_ARGUMENT), "q: missing or unknown query");
	}
}

int tally_ledger_query(struct tally_ledger *l, const Tally__V1__Query *in,
		       const Tally__V1__Principal *who, struct tally_arena *arena,
		       Tally__V1__QueryResult **out)
{
	assert(l != NULL && in != NULL);
	assert(who != NULL && arena != NULL && out != NULL);
	struct query q = {.l = l, .arena = arena, .who = who};
	q.res = tally_arena_alloc(arena, sizeof(*q.res));
	if (q.res == NULL)
		return TALLY_ENOMEM;
	tally__v1__query_result__init(q.res);
	*out = q.res;
	if (who->role <= TALLY__V1__ROLE__ROLE_UNSPECIFIED || who->role > TALLY__V1__ROLE__SYSTEM ||
	    who->key_name == NULL)
		return qfail(&q, CODE(PERMISSION_DENIED), "principal: no valid role");
	int rc = lmdb_error(mdb_txn_begin(l->env, NULL, MDB_RDONLY, &q.txn));
	if (rc != 0)
		return rc;
	rc = meta_load(q.txn, l, &q.m);
	if (rc == 0) {
		q.res->applied_index = q.m.applied_index;
		q.res->code = CODE(OK);
		rc = q_dispatch(&q, in);
	}
	mdb_txn_abort(q.txn);
	return rc;
}

int tally_ledger_digest(struct tally_ledger *l, struct tally_digest *out)
{
	assert(l != NULL && out != NULL);
	MDB_txn *txn;
	struct meta m;
	int rc = lmdb_error(mdb_txn_begin(l->env, NULL, MDB_RDONLY, &txn));
	if (rc != 0)
		return rc;
	rc = meta_load(txn, l, &m);
	mdb_txn_abort(txn);
	if (rc != 0)
		return rc;
	out->applied_index = m.applied_index;
	out->applied_term = m.applied_term;
	out->tree_size = m.tree.size;
	out->time_ms = m.time_ms;
	tally_merkle_frontier_root(&m.tree, out->root);
	memcpy(out->state_digest, m.digest, 32);
	return 0;
}

int tally_ledger_account(struct tally_ledger *l, const char *brand, const char *member,
			 bool with_lots, struct tally_arena *arena, Tally__V1__Account **out)
{
	assert(l != NULL && brand != NULL && member != NULL);
	struct query q = {.l = l, .arena = arena};
	int rc = lmdb_error(mdb_txn_begin(l->env, NULL, MDB_RDONLY, &q.txn));
	if (rc != 0)
		return rc;
	rc = account_read(&q, brand, member, with_lots, out);
	mdb_txn_abort(q.txn);
	return rc;
}
