/*
 * Whole-ledger verification, the content hash, snapshot and restore.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ledger/internal.h"

struct check {
	struct tally_ledger *l;
	MDB_txn *txn;
	struct meta m;
	struct tally_arena arena;
	char *msg;
	size_t cap;
};

static int fail(struct check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(struct check *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (c->cap > 0)
		vsnprintf(c->msg, c->cap, fmt, ap);
	va_end(ap);
	return TALLY_ECORRUPT;
}

/* Iterates the records of table t whose keys start with prefix. */
typedef int (*row_fn)(struct check *c, const MDB_val *k, const MDB_val *v, void *ctx);

struct each_call {
	struct check *c;
	row_fn fn;
	void *ctx;
};

static int each_row(void *arg, const MDB_val *k, const MDB_val *v)
{
	struct each_call *e = arg;
	return e->fn(e->c, k, v, e->ctx);
}

static int each(struct check *c, enum table t, const void *prefix, size_t n, row_fn fn, void *ctx)
{
	struct each_call e = {c, fn, ctx};
	return txn_scan(c->txn, c->l->dbi[t], prefix, n, SIZE_MAX, each_row, &e);
}

static int64_t i64_of(const MDB_val *v)
{
	return v->mv_size == 8 ? (int64_t)be64_get(v->mv_data) : INT64_MIN;
}

/* ---- balances per account and per brand -------------------------------------------- */

static int sum_holds(struct check *c, const MDB_val *k, const MDB_val *v, void *ctx)
{
	(void)v;
	uint8_t kb[8];
	memcpy(kb, (uint8_t *)k->mv_data + k->mv_size - 8, 8);
	MDB_val hk = {8, kb}, hv;
	int rc = lmdb_error(mdb_get(c->txn, c->l->dbi[T_HOLDS], &hk, &hv));
	if (rc != 0)
		return rc == TALLY_ENOTFOUND ? fail(c, "index names a missing hold") : rc;
	Tally__V1__HoldRecord *h = tally__v1__hold_record__unpack(tally_arena_protobuf(&c->arena),
								  hv.mv_size, hv.mv_data);
	if (h == NULL || h->status != TALLY__V1__HOLD_STATUS__OPEN)
		return fail(c, "hold %llu indexed as open is not", (unsigned long long)be64_get(kb));
	*(int64_t *)ctx += h->points;
	return 0;
}

/* Lots are in order (never-expiring last), positive, and the account sits in the
 * expiry index under its first lot's expiry. */
static int check_lots(struct check *c, const Tally__V1__Account *a, int64_t *sum)
{
	for (size_t i = 0; i < a->n_lots; i++) {
		const Tally__V1__Lot *lot = a->lots[i];
		uint64_t order = lot->expiry_ms == 0 ? UINT64_MAX : (uint64_t)lot->expiry_ms;
		uint64_t prev = i == 0 ? 0 : a->lots[i - 1]->expiry_ms == 0
			? UINT64_MAX : (uint64_t)a->lots[i - 1]->expiry_ms;
		if (lot->points <= 0 || lot->expiry_ms < 0 || (i > 0 && order <= prev))
			return fail(c, "account %s/%s: lot %zu is out of order or empty", a->brand,
				    a->member, i);
		*sum += lot->points;
	}
	/* The expiry row is at or before the first lot's expiry (account.c). */
	int64_t first = a->n_lots > 0 ? a->lots[0]->expiry_ms : 0;
	if (first != 0 && (a->lot_index_ms == 0 || a->lot_index_ms > first))
		return fail(c, "account %s/%s: indexed under %lld, first lot expires %lld", a->brand,
			    a->member, (long long)a->lot_index_ms, (long long)first);
	if (a->lot_index_ms < 0)
		return fail(c, "account %s/%s: indexed under %lld", a->brand, a->member,
			    (long long)a->lot_index_ms);
	if (a->lot_index_ms == 0)
		return 0;
	struct key k;
	key_reset(&k);
	key_u64(&k, (uint64_t)a->lot_index_ms);
	key_str(&k, a->brand);
	key_raw(&k, a->member);
	MDB_val kv = {k.n, k.b}, v;
	int rc = mdb_get(c->txn, c->l->dbi[T_LOT_EXP], &kv, &v);
	if (rc == MDB_NOTFOUND)
		return fail(c, "account %s/%s: missing from the expiry index", a->brand, a->member);
	return lmdb_error(rc);
}

struct brand_sum {
	int64_t members;
	int64_t system;
	uint64_t accounts;
	uint64_t indexed;   /* accounts in the expiry index */
};

static int check_account(struct check *c, const MDB_val *k, const MDB_val *v, void *ctx)
{
	struct brand_sum *s = ctx;
	tally_arena_reset(&c->arena);
	struct chain_head head;
	Tally__V1__Account *a = chain_record_unpack(v, &tally__v1__account__descriptor,
						    &c->arena, &head);
	if (a == NULL)
		return fail(c, "an account record does not decode");
	/* Only account_write hashes a record in parts, and only these (account_apart). */
	if (head.lots_apart &&
	    (c->m.rules < TALLY_RULES_LOTS_APART ||
	     a->n_lots <= TALLY_ACCOUNT_LOTS_APART_MIN || !codec_account_plain(a)))
		return fail(c, "account %s/%s is hashed in parts, which its rules or its %zu lots "
			    "do not allow", a->brand, a->member, a->n_lots);
	if (a->available < 0 || a->held < 0)
		return fail(c, "account %s/%s is negative", a->brand, a->member);
	struct key prefix;
	key_reset(&prefix);
	key_str(&prefix, a->brand);
	key_str(&prefix, a->member);
	if (k->mv_size + 1 != prefix.n || memcmp(k->mv_data, prefix.b, k->mv_size) != 0)
		return fail(c, "account %s/%s stored under another key", a->brand, a->member);
	int rc = chain_path_verify(c->txn, c->l->dbi[T_ENTRIES], &c->arena, &head, a->brand,
				   a->member);
	if (rc == TALLY_ECORRUPT)
		return fail(c, "account %s/%s: its chain head's path is not that of its entries",
			    a->brand, a->member);
	int64_t lots = 0, held = 0;
	if (rc == 0)
		rc = check_lots(c, a, &lots);
	if (rc == 0)
		rc = each(c, T_HOLD_ACCT, prefix.b, prefix.n, sum_holds, &held);
	if (rc != 0)
		return rc;
	if (lots != a->available)
		return fail(c, "account %s/%s: available %lld but lots sum to %lld", a->brand,
			    a->member, (long long)a->available, (long long)lots);
	if (held != a->held)
		return fail(c, "account %s/%s: held %lld but open holds sum to %lld", a->brand,
			    a->member, (long long)a->held, (long long)held);
	s->members += a->available + a->held;
	s->accounts++;
	s->indexed += a->lot_index_ms != 0;
	return 0;
}

static int sum_system(struct check *c, const MDB_val *k, const MDB_val *v, void *ctx)
{
	(void)k;
	int64_t x = i64_of(v);
	if (x == INT64_MIN)
		return fail(c, "a system account does not decode");
	((struct brand_sum *)ctx)->system += x;
	return 0;
}

/* Σ member available + held + Σ system accounts = 0: every point a member holds was
 * issued, and not redeemed, expired, exchanged away or adjusted out. */
static int check_brand(struct check *c, const MDB_val *k, const MDB_val *v, void *ctx)
{
	(void)v;
	struct brand_sum *total = ctx;
	struct key prefix;
	char id[TALLY_BRAND_ID_BYTES_MAX + 1];
	if (k->mv_size == 0 || k->mv_size > TALLY_BRAND_ID_BYTES_MAX)
		return fail(c, "a brand key is malformed");
	memcpy(id, k->mv_data, k->mv_size);
	id[k->mv_size] = '\0';
	key_reset(&prefix);
	key_str(&prefix, id);
	struct brand_sum s = {0, 0, 0, 0};
	int rc = each(c, T_ACCOUNTS, prefix.b, prefix.n, check_account, &s);
	if (rc == 0)
		rc = each(c, T_SYSACCT, prefix.b, prefix.n, sum_system, &s);
	if (rc != 0)
		return rc;
	if (s.members + s.system != 0)
		return fail(c, "brand %s: members hold %lld but system accounts balance %lld", id,
			    (long long)s.members, (long long)s.system);
	total->accounts += s.accounts;
	total->indexed += s.indexed;
	return 0;
}

/* ---- journal ---------------------------------------------------------------------- */

struct journal_walk {
	struct tally_merkle_frontier tree;
	int64_t last_time;
};

static int null_put(void *ctx, unsigned level, uint64_t index, const uint8_t hash[32])
{
	(void)ctx, (void)level, (void)index, (void)hash;
	return 0;
}

/* Entry seq, found by the walk at *walked, is also what a reader finding it through
 * the index reaches: checked at every row a reader may start from (each stride's; a
 * segment's first is found through its row by the walk itself). */
static int index_reaches(struct check *c, uint64_t seq, const MDB_val *walked)
{
	if (seq % JOURNAL_INDEX_STRIDE != 0)
		return 0;
	MDB_val direct;
	int rc = txn_entry_get(c->txn, c->l->dbi[T_ENTRIES], seq, &direct);
	if (rc == 0 && direct.mv_data != walked->mv_data)
		rc = TALLY_ECORRUPT;
	return rc;
}

/* Calls fn for every entry, 1 to the tree's size, with its seq as key (big-endian)
 * and the stored entry as value. */
static int each_entry(struct check *c, uint64_t size, row_fn fn, void *ctx)
{
	int rc = 0;
	MDB_val raw, prev;
	for (uint64_t seq = 1; rc == 0 && seq <= size; seq++, prev = raw) {
		uint8_t kb[8];
		be64_put(kb, seq);
		MDB_val k = {8, kb};
		rc = txn_entry_next(c->txn, c->l->dbi[T_ENTRIES], seq, seq > 1 ? &prev : NULL, &raw);
		if (rc == 0)
			rc = index_reaches(c, seq, &raw);
		if (rc != 0) {
			fail(c, "journal: entry %llu: %s", (unsigned long long)seq,
			     tally_strerror(rc));
			return rc;
		}
		rc = fn(c, &k, &raw, ctx);
	}
	return rc;
}

/* A T_ENTRIES row names the record of the entry of its key. */
static int check_index_row(struct check *c, const MDB_val *k, const MDB_val *row, void *ctx)
{
	tally_arena_reset(&c->arena);
	uint64_t seq = k->mv_size == 8 ? be64_get(k->mv_data) : 0;
	MDB_val named = *row;
	const uint8_t *bytes;
	size_t n;
	if (seq == 0 || seq > *(const uint64_t *)ctx)
		return fail(c, "journal: a row for entry %llu, past the journal's end",
			    (unsigned long long)seq);
	Tally__V1__Entry *e = NULL;
	if (entry_resolve(c->txn, seq, &named) == 0 && entry_payload(&named, &bytes, &n) == 0)
		e = tally__v1__entry__unpack(tally_arena_protobuf(&c->arena), n, bytes);
	if (e == NULL || e->seq != seq)
		return fail(c, "journal: the row of entry %llu names another record",
			    (unsigned long long)seq);
	return 0;
}

static int check_entry(struct check *c, const MDB_val *k, const MDB_val *raw, void *ctx)
{
	struct journal_walk *j = ctx;
	tally_arena_reset(&c->arena);
	uint64_t seq = be64_get(k->mv_data);
	const uint8_t *bytes;
	size_t n;
	if (entry_payload(raw, &bytes, &n) != 0)
		return fail(c, "journal: entry %llu is not whole", (unsigned long long)seq);
	Tally__V1__Entry *e = tally__v1__entry__unpack(tally_arena_protobuf(&c->arena), n, bytes);
	if (e == NULL)
		return fail(c, "entry %llu does not decode", (unsigned long long)seq);
	if (e->seq != seq)
		return fail(c, "journal: where entry %llu should be, entry %llu is",
			    (unsigned long long)seq, (unsigned long long)e->seq);
	const char *brands[ENTRY_CHAINS_MAX], *members[ENTRY_CHAINS_MAX];
	if (entry_chains(e, brands, members) != ((const uint8_t *)raw->mv_data)[ENTRY_HEADER_BYTES])
		return fail(c, "entry %llu: not linked into its members' chains", (unsigned long long)seq);
	if (e->time_ms < j->last_time)
		return fail(c, "entry %llu goes back in time", (unsigned long long)seq);
	j->last_time = e->time_ms;
	for (size_t i = 0; i < e->n_postings; i++) {
		int64_t sum = 0;
		for (size_t x = 0; x < e->n_postings; x++)
			if (strcmp(e->postings[x]->brand, e->postings[i]->brand) == 0)
				sum += e->postings[x]->points;
		if (sum != 0)
			return fail(c, "entry %llu: postings of brand %s sum to %lld",
				    (unsigned long long)seq, e->postings[i]->brand, (long long)sum);
	}
	uint8_t leaf[32];
	tally_merkle_leaf_hash(bytes, n, leaf);
	struct tally_merkle_store s = {NULL, NULL, null_put};
	return tally_merkle_append(&j->tree, &s, leaf);
}

/* ---- state digest ------------------------------------------------------------------- */

struct digest_ctx {
	enum table t;
	uint8_t sum[32];
};

static int add_record(struct check *c, const MDB_val *k, const MDB_val *v, void *ctx)
{
	(void)c;
	struct digest_ctx *d = ctx;
	uint8_t h[32];
	record_hash(d->t, k, v, h);
	digest_add(d->sum, h);
	return 0;
}

static int check_digest(struct check *c)
{
	struct digest_ctx d;
	memset(&d, 0, sizeof(d));
	for (int t = 0; t < T_COUNT; t++) {
		if (!table_digested[t])
			continue;
		d.t = (enum table)t;
		int rc = each(c, d.t, "", 0, add_record, &d);
		if (rc != 0)
			return rc;
	}
	if (memcmp(d.sum, c->m.digest, 32) != 0)
		return fail(c, "state digest: recomputed value differs from the stored one");
	return 0;
}

/* A member record's own chain (its open and updates) is that of its entries. */
static int check_member(struct check *c, const MDB_val *k, const MDB_val *v, void *ctx)
{
	(void)ctx;
	tally_arena_reset(&c->arena);
	struct chain_head head;
	Tally__V1__Member *m = chain_record_unpack(v, &tally__v1__member__descriptor,
						   &c->arena, &head);
	if (m == NULL)
		return fail(c, "a member record does not decode");
	if (k->mv_size != strlen(m->id) || memcmp(k->mv_data, m->id, k->mv_size) != 0)
		return fail(c, "member %s stored under another key", m->id);
	int rc = chain_path_verify(c->txn, c->l->dbi[T_ENTRIES], &c->arena, &head, "", m->id);
	if (rc == TALLY_ECORRUPT)
		return fail(c, "member %s: its chain head's path is not that of its entries", m->id);
	return rc;
}

static int count_row(struct check *c, const MDB_val *k, const MDB_val *v, void *ctx)
{
	(void)c, (void)k, (void)v;
	(*(uint64_t *)ctx)++;
	return 0;
}

static int check_all(struct check *c)
{
	struct brand_sum all = {0, 0, 0, 0};
	uint64_t rows = 0, index_rows = 0;
	int rc = each(c, T_BRANDS, "", 0, check_brand, &all);
	if (rc == 0)
		rc = each(c, T_MEMBERS, "", 0, check_member, NULL);
	if (rc == 0)
		rc = each(c, T_ACCOUNTS, "", 0, count_row, &rows);
	if (rc == 0 && rows != all.accounts)
		return fail(c, "%llu accounts belong to no brand",
			    (unsigned long long)(rows - all.accounts));
	if (rc == 0)
		rc = each(c, T_LOT_EXP, "", 0, count_row, &index_rows);
	if (rc == 0 && index_rows != all.indexed)
		return fail(c, "the expiry index holds %llu rows for %llu accounts with lots",
			    (unsigned long long)index_rows, (unsigned long long)all.indexed);
	struct journal_walk j = {.last_time = 0};
	tally_merkle_frontier_init(&j.tree);
	if (rc == 0)
		rc = each(c, T_ENTRIES, "", 0, check_index_row, &c->m.tree.size);
	if (rc == 0)
		rc = each_entry(c, c->m.tree.size, check_entry, &j);
	if (rc != 0)
		return rc;
	assert(j.tree.size == c->m.tree.size);
	uint8_t a[32], b[32];
	tally_merkle_frontier_root(&j.tree, a);
	tally_merkle_frontier_root(&c->m.tree, b);
	if (memcmp(a, b, 32) != 0)
		return fail(c, "Merkle root recomputed from the entries differs from the stored one");
	struct tally_merkle_store st = tree_store(c->txn, c->l->dbi);
	if (c->m.tree.size > 0 && (tally_merkle_root_at(&st, c->m.tree.size, a) != 0 ||
				   memcmp(a, b, 32) != 0))
		return fail(c, "Merkle nodes stored do not produce the stored root");
	return check_digest(c);
}

int tally_ledger_check_invariants(struct tally_ledger *l, char *msg, size_t cap)
{
	assert(l != NULL);
	assert(msg != NULL || cap == 0);
	struct check c = {.l = l, .msg = msg, .cap = cap};
	if (cap > 0)
		msg[0] = '\0';
	tally_arena_init(&c.arena, 64 << 10, 0);
	map_pin(l); /* a restored ledger is checked on another thread: no remap meanwhile */
	int rc = lmdb_error(mdb_txn_begin(l->env, NULL, MDB_RDONLY, &c.txn));
	if (rc == 0) {
		rc = meta_load(c.txn, l, &c.m);
		if (rc == 0)
			rc = check_all(&c);
		mdb_txn_abort(c.txn);
	}
	map_unpin(l);
	if (rc != 0 && cap > 0 && msg[0] == '\0')
		snprintf(msg, cap, "%s", tally_strerror(rc));
	tally_arena_free(&c.arena);
	return rc;
}

/* ---- content hash ------------------------------------------------------------------- */

static int hash_row(struct check *c, const MDB_val *k, const MDB_val *v, void *ctx)
{
	(void)c;
	uint8_t *acc = ctx, lens[8];
	be64_put(lens, ((uint64_t)k->mv_size << 32) | v->mv_size);
	const void *parts[4] = {acc, lens, k->mv_data, v->mv_data};
	size_t sizes[4] = {32, 8, k->mv_size, v->mv_size};
	sha256_parts(parts, sizes, 4, acc); /* a running chain: order matters here */
	return 0;
}

int tally_ledger_content_hash(struct tally_ledger *l, uint8_t out[32])
{
	assert(l != NULL && out != NULL);
	struct check c = {.l = l};
	memset(out, 0, 32);
	int rc = lmdb_error(mdb_txn_begin(l->env, NULL, MDB_RDONLY, &c.txn));
	struct meta m;
	if (rc == 0)
		rc = meta_load(c.txn, l, &m);
	for (int t = 0; rc == 0 && t < T_COUNT; t++) {
		const void *parts[2] = {out, table_names[t]};
		size_t sizes[2] = {32, strlen(table_names[t])};
		sha256_parts(parts, sizes, 2, out);
		/* the journal as its entries, one per seq, however the rows index them */
		rc = t == T_ENTRIES ? each_entry(&c, m.tree.size, hash_row, out)
				    : each(&c, (enum table)t, "", 0, hash_row, out);
	}
	if (c.txn != NULL)
		mdb_txn_abort(c.txn);
	return rc;
}

/* ---- snapshot and restore ----------------------------------------------------------- *
 * A snapshot is the compacted LMDB copy followed by a trailer that seals it: magic,
 * the copy's length and its check (ledger.h: CRC32C lanes, or SHA-256 in a snapshot
 * an older node took). A restore checks the seal before it replaces anything (a copy
 * cut short or damaged on the way is refused), and leaves the full invariant check, a
 * scan of every record, to its caller, who can run it off the event loop. A snapshot
 * without the trailer (taken before it existed) is checked in full before it replaces
 * anything. */

#define SNAPSHOT_MAGIC_BYTES 16 /* TALLY_SNAPSHOT_MAGIC, zero-padded */
#define SNAPSHOT_CHECK_BYTES 32
#define SNAPSHOT_TRAILER_BYTES TALLY_SNAPSHOT_TRAILER_BYTES
_Static_assert(SNAPSHOT_TRAILER_BYTES == SNAPSHOT_MAGIC_BYTES + 8 + SNAPSHOT_CHECK_BYTES,
	       "trailer layout");
_Static_assert(SEAL_LANES * 4 == SNAPSHOT_CHECK_BYTES, "the lanes fill the check");

enum seal { SEAL_NONE, SEAL_SHA256, SEAL_CRC32C };

/* The check of copy[0..len) of the given kind. */
static void seal_check(enum seal kind, const uint8_t *copy, size_t len,
		       uint8_t out[SNAPSHOT_CHECK_BYTES])
{
	assert(kind == SEAL_SHA256 || kind == SEAL_CRC32C);
	if (kind == SEAL_SHA256) {
		const void *parts[1] = {copy};
		size_t lens[1] = {len};
		sha256_parts(parts, lens, 1, out);
		return;
	}
	uint32_t lanes[SEAL_LANES];
	crc32c_lanes(copy, len, lanes);
	for (int i = 0; i < SEAL_LANES; i++)
		be32_put(out + 4 * i, lanes[i]);
}

static bool magic_is(const uint8_t *t, const char *magic)
{
	uint8_t m[SNAPSHOT_MAGIC_BYTES] = {0};
	memcpy(m, magic, strlen(magic));
	return memcmp(t, m, SNAPSHOT_MAGIC_BYTES) == 0;
}

/* The trailer that seals copy[0..len): TALLY_SNAPSHOT_MAGIC, len, the copy's check. */
static void trailer_make(uint8_t t[SNAPSHOT_TRAILER_BYTES], const uint8_t *copy, size_t len)
{
	memset(t, 0, SNAPSHOT_TRAILER_BYTES);
	memcpy(t, TALLY_SNAPSHOT_MAGIC, strlen(TALLY_SNAPSHOT_MAGIC));
	be64_put(t + SNAPSHOT_MAGIC_BYTES, len);
	seal_check(SEAL_CRC32C, copy, len, t + SNAPSHOT_MAGIC_BYTES + 8);
}

/* The kind of trailer the snapshot ends with (SEAL_NONE: none); *copy_len is then the
 * LMDB copy's length. */
static enum seal trailer_find(const uint8_t *snap, size_t len, size_t *copy_len)
{
	if (len < SNAPSHOT_TRAILER_BYTES)
		return SEAL_NONE;
	const uint8_t *t = snap + len - SNAPSHOT_TRAILER_BYTES;
	enum seal kind = magic_is(t, TALLY_SNAPSHOT_MAGIC)	   ? SEAL_CRC32C
			 : magic_is(t, TALLY_SNAPSHOT_MAGIC_SHA256) ? SEAL_SHA256
								    : SEAL_NONE;
	if (kind != SEAL_NONE)
		*copy_len = len - SNAPSHOT_TRAILER_BYTES;
	return kind;
}

/* Whether the copy before the trailer has the length and check the trailer names. */
static bool trailer_verify(enum seal kind, const uint8_t *snap, size_t copy_len)
{
	const uint8_t *t = snap + copy_len;
	uint8_t check[SNAPSHOT_CHECK_BYTES];
	if (be64_get(t + SNAPSHOT_MAGIC_BYTES) != copy_len)
		return false;
	seal_check(kind, snap, copy_len, check);
	return memcmp(check, t + SNAPSHOT_MAGIC_BYTES + 8, SNAPSHOT_CHECK_BYTES) == 0;
}

/* A snapshot's parts: LMDB's copy, the journal's section, the trailer sealing both,
 * and the appendix a sender may have put after it. */
struct snap_parts {
	enum seal kind;     /* SEAL_NONE: no trailer (an older node's snapshot) */
	size_t sealed_len;  /* the copy and the section */
	size_t copy_len;
	struct jsnap_source src;
};

static void snap_parse(const uint8_t *snap, size_t len, const char *links_dir,
		       struct snap_parts *p)
{
	memset(p, 0, sizeof(*p));
	size_t body = jsnap_appendix_split(snap, len, &p->src.appendix, &p->src.appendix_len);
	p->sealed_len = body;
	p->kind = trailer_find(snap, body, &p->sealed_len);
	p->copy_len = jsnap_find(snap, p->sealed_len);
	p->src.links_dir = links_dir;
}

int tally_ledger_link_segments(struct tally_ledger *l)
{
	assert(l != NULL);
	return l->links_dir[0] != '\0' ? jsnap_link_closed(&l->journal, l->links_dir) : 0;
}

int tally_ledger_snapshot(struct tally_ledger *l, int fd, uint64_t *applied_index)
{
	assert(l != NULL && fd >= 0);
	map_pin(l); /* runs on another thread than the batches: no remap meanwhile */
	struct tally_digest d;
	int rc = tally_ledger_digest(l, &d);
	if (rc == 0 && applied_index != NULL)
		*applied_index = d.applied_index;
	struct stat st;
	if (rc == 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || lseek(fd, 0, SEEK_CUR) != 0))
		rc = TALLY_EINVAL;
	if (rc == 0)
		rc = lmdb_error(mdb_env_copyfd2(l->env, fd, MDB_CP_COMPACT));
	map_unpin(l); /* the journal and the seal read the file, not the map */
	/* LMDB's compacting copy writes its pages in order from the file's offset: where it
	 * ends is the copy's length, whatever the file held past it before (a snapshot file
	 * written over again: its pages are written over too, and it is cut to length
	 * last, so that none of them is given back to the kernel and taken again). */
	off_t end = rc == 0 ? lseek(fd, 0, SEEK_CUR) : -1;
	if (rc == 0 && end <= 0)
		rc = TALLY_EIO;
	/* Then the journal's segments: at least every record the copy names (the segments
	 * only grow; a restore cuts them back to the copy). */
	uint64_t section = 0;
	if (rc == 0)
		rc = jsnap_write(&l->journal, fd, (uint64_t)end,
				 l->links_dir[0] != '\0' ? l->links_dir : NULL, &section);
	if (rc != 0)
		return rc;
	/* Sealed from the bytes as they are in the file (in the page cache now). */
	size_t sealed_len = (size_t)end + (size_t)section;
	void *sealed = mmap(NULL, sealed_len, PROT_READ, MAP_SHARED, fd, 0);
	if (sealed == MAP_FAILED)
		return TALLY_EIO;
	uint8_t t[SNAPSHOT_TRAILER_BYTES];
	trailer_make(t, sealed, sealed_len);
	munmap(sealed, sealed_len);
	ssize_t put = pwrite(fd, t, sizeof(t), (off_t)sealed_len);
	if (put != (ssize_t)sizeof(t))
		return put < 0 && errno == ENOSPC ? TALLY_ENOSPC : TALLY_EIO;
	return ftruncate(fd, (off_t)(sealed_len + sizeof(t))) == 0 ? 0 : TALLY_EIO;
}

/* LMDB reads pages through its map without checking them against the file's size: a
 * copy cut short faults (SIGBUS) on open. So the copy must reach the last page named by
 * the newer of its two meta pages (pages 0 and 1; LMDB uses the one with the larger
 * txnid). Fields of LMDB's data format (version 1, lmdb.h MDB_meta after a 16-byte
 * page header, little-endian on these machines): magic at 16, the page size in the
 * free DB's md_pad at 40 (meta page 0), the last page number at 136, the txnid at 144. */
#define LMDB_MAGIC 0xBEEFC0DEu
#define LMDB_META_MAGIC_AT 16
#define LMDB_META_PSIZE_AT 40
#define LMDB_META_LAST_PG_AT 136
#define LMDB_META_TXNID_AT 144
#define LMDB_PAGE_BYTES_MIN 512u
#define LMDB_PAGE_BYTES_MAX 65536u

static uint64_t le_at(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = n; i-- > 0;)
		v = v << 8 | p[i];
	return v;
}

static bool lmdb_copy_whole(const uint8_t *copy, size_t len)
{
	if (len < LMDB_META_TXNID_AT + 8)
		return false;
	uint64_t psize = le_at(copy + LMDB_META_PSIZE_AT, 4);
	if (le_at(copy + LMDB_META_MAGIC_AT, 4) != LMDB_MAGIC || psize < LMDB_PAGE_BYTES_MIN ||
	    psize > LMDB_PAGE_BYTES_MAX || (psize & (psize - 1)) != 0 || len % psize != 0 ||
	    len < 2 * psize)
		return false;
	const uint8_t *m0 = copy, *m1 = copy + psize;
	if (le_at(m1 + LMDB_META_MAGIC_AT, 4) != LMDB_MAGIC)
		return false;
	const uint8_t *m = le_at(m1 + LMDB_META_TXNID_AT, 8) > le_at(m0 + LMDB_META_TXNID_AT, 8)
				   ? m1
				   : m0;
	return le_at(m + LMDB_META_LAST_PG_AT, 8) < len / psize;
}

int tally_ledger_open_snapshot(const char *path, const char *links_dir,
			       struct tally_ledger **out)
{
	assert(path != NULL && out != NULL);
	*out = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? TALLY_ENOTFOUND : TALLY_EIO;
	struct stat st;
	void *base = MAP_FAILED;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0)
		base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (base == MAP_FAILED)
		return TALLY_EIO;
	madvise(base, (size_t)st.st_size, MADV_SEQUENTIAL);
	struct snap_parts p;
	snap_parse(base, (size_t)st.st_size, links_dir, &p);
	bool sound = p.kind != SEAL_NONE && trailer_verify(p.kind, base, p.sealed_len) &&
		     lmdb_copy_whole(base, p.copy_len);
	if (!sound) {
		munmap(base, (size_t)st.st_size);
		return TALLY_ECORRUPT;
	}
	return ledger_open_copy(path, base, (size_t)st.st_size, p.copy_len,
				p.sealed_len - p.copy_len, &p.src, out);
}

enum tally_snapshot_resolved tally_ledger_snapshot_unresolved(const void *snap, size_t len,
							      const char *links_dir, char *name,
							      size_t cap)
{
	assert((snap != NULL || len == 0) && name != NULL && cap > 0);
	struct snap_parts p;
	snap_parse(snap, len, links_dir, &p);
	return (enum tally_snapshot_resolved)jsnap_unresolved(
		(const uint8_t *)snap + p.copy_len, p.sealed_len - p.copy_len, &p.src, name, cap);
}

uint64_t tally_ledger_snapshot_sent_bytes(const void *snap, size_t len)
{
	assert(snap != NULL || len == 0);
	struct snap_parts p;
	snap_parse(snap, len, NULL, &p);
	if (p.kind == SEAL_NONE)
		return len;
	/* a received one's appendix, which may leave segments out, is sent anew */
	return len - p.src.appendix_len + jsnap_referenced_bytes((const uint8_t *)snap + p.copy_len,
								 p.sealed_len - p.copy_len);
}

int tally_ledger_snapshot_appendix(const void *snap, size_t len, const char *links_dir,
				   const struct tally_segment_held *held, size_t n_held,
				   struct tally_snapshot_appendix *out)
{
	assert(snap != NULL && out != NULL);
	memset(out, 0, sizeof(*out));
	out->snap_len = len;
	struct snap_parts p;
	snap_parse(snap, len, links_dir, &p);
	if (p.kind == SEAL_NONE)
		return 0;
	int rc = jsnap_appendix((const uint8_t *)snap + p.copy_len, p.sealed_len - p.copy_len,
				&p.src, held, n_held, out);
	if (rc != 0)
		tally_ledger_snapshot_appendix_free(out);
	else if (out->bytes > 0)
		out->snap_len = len - p.src.appendix_len; /* a received one's: carried anew */
	return rc;
}

static int path_join(char *buf, size_t cap, const char *dir, const char *name)
{
	int n = snprintf(buf, cap, "%s/%s", dir, name);
	return n < 0 || (size_t)n >= cap ? TALLY_EINVAL : 0;
}

/* Writes the copy to stage/data.mdb and the journal section's segments to
 * stage/journal, and opens the ledger there (which cuts the segments back to the copy):
 * the format version and the meta must read; `full` runs the invariant check too. */
static int restore_stage(const char *stage, const char *staged, const uint8_t *copy,
			 size_t len, size_t journal_len, const struct jsnap_source *src,
			 const struct tally_ledger_options *opts, bool full)
{
	char msg[256];
	if (mkdir(stage, 0755) != 0 && errno != EEXIST)
		return TALLY_EIO;
	int rc = journal_remove(stage); /* what an earlier restore left */
	if (rc == 0)
		rc = journal_file_write(staged, copy, len); /* no sync: see tally_ledger_restore */
	if (rc == 0)
		rc = jsnap_unpack(copy + len, journal_len, src, stage);
	struct tally_ledger *l = NULL;
	struct tally_digest d;
	if (rc == 0)
		rc = tally_ledger_open(stage, opts, &l);
	if (rc == 0)
		rc = tally_ledger_digest(l, &d);
	if (rc == 0 && full)
		rc = tally_ledger_check_invariants(l, msg, sizeof(msg));
	tally_ledger_close(l);
	return rc;
}

int tally_ledger_restore(const char *dir, const void *snap, size_t len,
			 const struct tally_ledger_options *opts, struct tally_ledger **out,
			 bool *check_pending)
{
	assert(dir != NULL && (snap != NULL || len == 0));
	assert(out != NULL && check_pending != NULL);
	*out = NULL;
	*check_pending = false;
	char stage[4096], staged[4096], final[4096], lock[4096], slock[4096];
	char sjournal[4096], journal[4096];
	int rc = path_join(stage, sizeof(stage), dir, ".restore");
	if (rc == 0)
		rc = path_join(sjournal, sizeof(sjournal), stage, "journal");
	if (rc == 0)
		rc = path_join(journal, sizeof(journal), dir, "journal");
	if (rc == 0)
		rc = path_join(staged, sizeof(staged), stage, "data.mdb");
	if (rc == 0)
		rc = path_join(slock, sizeof(slock), stage, "lock.mdb");
	if (rc == 0)
		rc = path_join(final, sizeof(final), dir, "data.mdb");
	if (rc == 0)
		rc = path_join(lock, sizeof(lock), dir, "lock.mdb");
	if (rc != 0)
		return rc;
	struct snap_parts p;
	snap_parse(snap, len, opts != NULL ? opts->snapshot_links_dir : NULL, &p);
	bool sealed = p.kind != SEAL_NONE;
	if ((sealed && !trailer_verify(p.kind, snap, p.sealed_len)) ||
	    !lmdb_copy_whole(snap, p.copy_len))
		return TALLY_ECORRUPT;
	rc = restore_stage(stage, staged, snap, p.copy_len, p.sealed_len - p.copy_len, &p.src,
			   opts, !sealed);
	unlink(slock);
	if (rc != 0) {
		unlink(staged);
		journal_remove(stage);
		rmdir(stage);
		return rc;
	}
	/* No sync here: the ledger runs without syncs (the raft log and raft's own copy
	 * of this snapshot are the durable record, and raft restores that copy at every
	 * start); the caller syncs it with the check, off the loop. */
	unlink(lock);
	if (journal_remove(dir) != 0 || rename(sjournal, journal) != 0 || rename(staged, final) != 0)
		return TALLY_EIO;
	rmdir(stage);
	rc = tally_ledger_open(dir, opts, out);
	*check_pending = rc == 0 && sealed;
	return rc;
}
