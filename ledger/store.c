/*
 * The LMDB side of the ledger: tables, keys, records that keep the state digest,
 * the meta record and the Merkle node store.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ledger/internal.h"

const char *const table_names[T_COUNT] = {
	[T_META] = "meta",           [T_ENTRIES] = "entries",
	[T_TREE] = "tree",           [T_IDEM] = "idem",
	[T_BRANDS] = "brands",       [T_MEMBERS] = "members",
	[T_ACCOUNTS] = "accounts",   [T_SYSACCT] = "sysacct",
	[T_LOT_EXP] = "lot_exp",
	[T_HOLDS] = "holds",         [T_HOLD_EXP] = "hold_exp",
	[T_HOLD_ACCT] = "hold_acct", [T_QUAL] = "qual",
	[T_QUAL_DAY] = "qual_day",   [T_DAILY] = "daily",
	[T_AGREEMENTS] = "agreements", [T_OBLIGATIONS] = "obligations",
	[T_SETTLEMENTS] = "settlements", [T_SETTLE_PAIR] = "settle_pair",
	[T_REVERSED] = "reversed",
};

const bool table_digested[T_COUNT] = {
	[T_IDEM] = true,     [T_BRANDS] = true,      [T_MEMBERS] = true,
	[T_ACCOUNTS] = true, [T_SYSACCT] = true,
	[T_HOLDS] = true,    [T_QUAL] = true,        [T_DAILY] = true,
	[T_AGREEMENTS] = true, [T_OBLIGATIONS] = true, [T_SETTLEMENTS] = true,
	[T_REVERSED] = true,
};

/* ---- keys ----------------------------------------------------------------------- */

void key_reset(struct key *k)
{
	assert(k != NULL);
	k->n = 0;
}

static void key_bytes(struct key *k, const void *p, size_t n)
{
	/* Every component is bounded by validation long before it reaches a key. */
	assert(k->n + n <= KEY_BYTES_MAX);
	memcpy(k->b + k->n, p, n);
	k->n += n;
}

void key_str(struct key *k, const char *s)
{
	assert(s != NULL);
	key_bytes(k, s, strlen(s) + 1);
}

void key_raw(struct key *k, const char *s)
{
	assert(s != NULL);
	key_bytes(k, s, strlen(s));
}

void key_u8(struct key *k, uint8_t v)
{
	key_bytes(k, &v, 1);
}

void key_u32(struct key *k, uint32_t v)
{
	uint8_t b[4];
	be32_put(b, v);
	key_bytes(k, b, 4);
}

void key_u64(struct key *k, uint64_t v)
{
	uint8_t b[8];
	be64_put(b, v);
	key_bytes(k, b, 8);
}

/* ---- records ---------------------------------------------------------------------- */

int lmdb_error(int rc)
{
	switch (rc) {
	case 0: return 0;
	case MDB_NOTFOUND: return TALLY_ENOTFOUND;
	case MDB_MAP_FULL: return TALLY_EFULL;
	case MDB_CORRUPTED: return TALLY_ECORRUPT;
	case MDB_VERSION_MISMATCH: return TALLY_EVERSION;
	case ENOMEM: return TALLY_ENOMEM;
	case EIO: return TALLY_EIO;
	case ENOSPC: return TALLY_ENOSPC;
	default: return TALLY_ESTORE;
	}
}

/* ---- what the batch knows ------------------------------------------------------ */

#define KNOWN_CAP_MIN 4096

static uint64_t known_tag(enum table t, const uint8_t *key, size_t n)
{
	uint64_t h = 1469598103934665603ULL ^ (uint64_t)t; /* FNV-1a */
	for (size_t i = 0; i < n; i++)
		h = (h ^ key[i]) * 1099511628211ULL;
	return h | 1; /* never 0 */
}

/* The slot for (t, key): the matching one, or the empty one where it would go. */
static struct known *known_slot(struct tally_ledger *l, enum table t, const MDB_val *key,
				uint64_t tag)
{
	assert(l->known_cap > 0 && (l->known_cap & (l->known_cap - 1)) == 0);
	size_t mask = l->known_cap - 1;
	for (size_t i = tag & mask;; i = (i + 1) & mask) {
		struct known *s = &l->known[i];
		if (s->gen != l->known_gen)
			return s;
		if (s->tag == tag && s->table == t && s->key_bytes == key->mv_size &&
		    memcmp(s->key, key->mv_data, key->mv_size) == 0)
			return s;
	}
}

static int known_grow(struct tally_ledger *l)
{
	size_t cap = l->known_cap == 0 ? KNOWN_CAP_MIN : l->known_cap * 2;
	struct known *old = l->known;
	size_t old_cap = l->known_cap;
	l->known = calloc(cap, sizeof(*l->known));
	if (l->known == NULL) {
		l->known = old;
		return TALLY_ENOMEM;
	}
	l->known_cap = cap;
	for (size_t i = 0; i < old_cap; i++) {
		if (old[i].gen != l->known_gen)
			continue;
		MDB_val k = {old[i].key_bytes, (void *)old[i].key};
		*known_slot(l, (enum table)old[i].table, &k, old[i].tag) = old[i];
	}
	free(old);
	return 0;
}

/* Forgets everything known: called at the start of each batch. */
void known_reset(struct tally_ledger *l)
{
	l->known_gen++;
	l->known_used = 0;
	if (l->known_gen == 0) { /* wrapped: clear for real */
		memset(l->known, 0, l->known_cap * sizeof(*l->known));
		l->known_gen = 1;
	}
}

void known_free(struct tally_ledger *l)
{
	free(l->known);
	l->known = NULL;
	l->known_cap = 0;
}

/* The slot of (t, key): the one that knows it this batch, or the empty one where it
 * would go (the table grown first, so that one more fits). *tag is for known_take.
 * NULL when out of memory. */
static struct known *known_find(struct tally_ledger *l, enum table t, const MDB_val *key,
				uint64_t *tag)
{
	if (l->known_cap == 0 || (l->known_used + 1) * 2 > l->known_cap) {
		if (known_grow(l) != 0)
			return NULL;
	}
	*tag = known_tag(t, key->mv_data, key->mv_size);
	return known_slot(l, t, key, *tag);
}

static bool known_now(const struct tally_ledger *l, const struct known *s)
{
	return s->gen == l->known_gen;
}

/* Makes the empty slot s that of (t, key), in the state v: its value's hash, or absent
 * (v == NULL). */
static int known_take(struct tally_ledger *l, struct known *s, enum table t, const MDB_val *key,
		      uint64_t tag, const MDB_val *v)
{
	assert(!known_now(l, s));
	uint8_t *copy = tally_arena_alloc(&l->batch, key->mv_size + 1);
	if (copy == NULL)
		return TALLY_ENOMEM;
	memcpy(copy, key->mv_data, key->mv_size);
	s->gen = l->known_gen;
	s->tag = tag;
	s->table = (uint8_t)t;
	s->key_bytes = (uint16_t)key->mv_size;
	s->key = copy;
	l->known_used++;
	s->present = v != NULL;
	if (v != NULL)
		record_hash(t, key, v, s->hash);
	return 0;
}

/* ---- cursors ----------------------------------------------------------------------
 * The batch keeps one cursor per table. A record read and then written (an account,
 * a counter) is found once: the write replaces it where the read left the cursor. */

int st_cursor(struct apply *a, enum table t, MDB_cursor **out)
{
	assert(t < T_COUNT);
	if (a->cur[t] == NULL) {
		int rc = mdb_cursor_open(a->txn, a->l->dbi[t], &a->cur[t]);
		if (rc != 0)
			return lmdb_error(rc);
	}
	*out = a->cur[t];
	return 0;
}

void st_cursors_close(struct apply *a)
{
	for (int t = 0; t < T_COUNT; t++) {
		if (a->cur[t] != NULL)
			mdb_cursor_close(a->cur[t]);
		a->cur[t] = NULL;
	}
}

/* Whether the cursor stands on `key` (so a write may replace in place). */
static bool st_at(MDB_cursor *cur, const MDB_val *key)
{
	MDB_val k, v;
	return mdb_cursor_get(cur, &k, &v, MDB_GET_CURRENT) == 0 && k.mv_size == key->mv_size &&
	       memcmp(k.mv_data, key->mv_data, k.mv_size) == 0;
}

int st_get_own(struct apply *a, enum table t, const struct key *k, MDB_val *v)
{
	assert(a != NULL && a->txn != NULL);
	assert(t < T_COUNT);
	MDB_val key = {k->n, (void *)k->b};
	MDB_cursor *cur = NULL;
	int rc = st_cursor(a, t, &cur);
	if (rc != 0)
		return rc;
	return lmdb_error(mdb_cursor_get(cur, &key, v, MDB_SET_KEY));
}

int st_get(struct apply *a, enum table t, const struct key *k, MDB_val *v)
{
	int rc = st_get_own(a, t, k, v);
	MDB_val key = {k->n, (void *)k->b};
	if (rc != 0 && rc != TALLY_ENOTFOUND)
		return rc;
	if (table_digested[t]) {
		uint64_t tag;
		struct known *s = known_find(a->l, t, &key, &tag);
		if (s == NULL)
			return TALLY_ENOMEM;
		if (!known_now(a->l, s)) {
			int krc = known_take(a->l, s, t, &key, tag, rc == 0 ? v : NULL);
			if (krc != 0)
				return krc;
		}
	}
	return rc;
}

/* The record under `key` becomes v (NULL: none) in the digest: the hash of the one it
 * replaces, if any, is taken out and v's put in, with what the batch knows of it (one
 * lookup: it is found once). */
static int digest_replace(struct apply *a, enum table t, const MDB_val *key, const MDB_val *v)
{
	uint64_t tag;
	struct known *s = known_find(a->l, t, key, &tag);
	if (s == NULL)
		return TALLY_ENOMEM;
	if (known_now(a->l, s)) {
		if (s->present)
			digest_sub(a->m.digest, s->hash);
		s->present = v != NULL;
		if (v != NULL)
			record_hash(t, key, v, s->hash);
	} else {
		MDB_val old;
		int rc = mdb_get(a->txn, a->l->dbi[t], (MDB_val *)key, &old);
		if (rc != 0 && rc != MDB_NOTFOUND)
			return lmdb_error(rc);
		if (rc == 0) {
			uint8_t h[32];
			record_hash(t, key, &old, h);
			digest_sub(a->m.digest, h);
		}
		rc = known_take(a->l, s, t, key, tag, v);
		if (rc != 0)
			return rc;
	}
	if (v != NULL)
		digest_add(a->m.digest, s->hash);
	return 0;
}

int st_put(struct apply *a, enum table t, const struct key *k, const void *v, size_t n)
{
	assert(a != NULL && a->txn != NULL);
	assert(t < T_COUNT);
	MDB_val key = {k->n, (void *)k->b};
	MDB_val val = {n, (void *)v};
	if (table_digested[t]) {
		int rc = digest_replace(a, t, &key, &val);
		if (rc != 0)
			return rc;
	}
	return st_put_own(a, t, k, v, n);
}

int st_put_own(struct apply *a, enum table t, const struct key *k, const void *v, size_t n)
{
	assert(a != NULL && a->txn != NULL);
	assert(t < T_COUNT);
	MDB_val key = {k->n, (void *)k->b};
	MDB_val val = {n, (void *)v};
	MDB_cursor *cur;
	int rc = st_cursor(a, t, &cur);
	if (rc != 0)
		return rc;
	return lmdb_error(mdb_cursor_put(cur, &key, &val, st_at(cur, &key) ? MDB_CURRENT : 0));
}

int st_del(struct apply *a, enum table t, const struct key *k)
{
	assert(a != NULL && a->txn != NULL);
	assert(t < T_COUNT);
	MDB_val key = {k->n, (void *)k->b};
	if (table_digested[t]) {
		int rc = digest_replace(a, t, &key, NULL);
		if (rc != 0)
			return rc;
	}
	MDB_cursor *cur;
	int rc = st_cursor(a, t, &cur);
	if (rc != 0)
		return rc;
	if (!st_at(cur, &key)) {
		MDB_val v;
		rc = mdb_cursor_get(cur, &key, &v, MDB_SET);
		if (rc == MDB_NOTFOUND)
			return 0;
		if (rc != 0)
			return lmdb_error(rc);
	}
	return lmdb_error(mdb_cursor_del(cur, 0));
}

/* int64 values are stored big-endian in 8 bytes; an absent record reads as 0. */
int st_get_i64(struct apply *a, enum table t, const struct key *k, int64_t *v)
{
	MDB_val val;
	int rc = st_get(a, t, k, &val);
	*v = 0;
	if (rc == TALLY_ENOTFOUND)
		return 0;
	if (rc != 0)
		return rc;
	if (val.mv_size != 8)
		return TALLY_ECORRUPT;
	*v = (int64_t)be64_get(val.mv_data);
	return 0;
}

/* Stores v, or deletes the record when v is 0 so that empty rows do not pile up. */
int st_put_i64(struct apply *a, enum table t, const struct key *k, int64_t v)
{
	if (v == 0)
		return st_del(a, t, k);
	uint8_t b[8];
	be64_put(b, (uint64_t)v);
	return st_put(a, t, k, b, sizeof(b));
}

int rec_get(struct apply *a, enum table t, const struct key *k,
	    const ProtobufCMessageDescriptor *d, void **msg)
{
	assert(d != NULL && msg != NULL);
	MDB_val val;
	int rc = st_get(a, t, k, &val);
	if (rc != 0)
		return rc;
	*msg = protobuf_c_message_unpack(d, tally_arena_protobuf(a->tmp), val.mv_size,
					 val.mv_data);
	return *msg == NULL ? TALLY_ECORRUPT : 0;
}

int rec_put(struct apply *a, enum table t, const struct key *k, const void *msg)
{
	assert(msg != NULL);
	const ProtobufCMessage *m = msg;
	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t *buf = tally_arena_alloc(a->tmp, n);
	if (buf == NULL)
		return TALLY_ENOMEM;
	size_t w = protobuf_c_message_pack(m, buf);
	assert(w == n);
	return st_put(a, t, k, buf, w);
}

/* ---- meta ------------------------------------------------------------------------ */

static const char META_APPLIED[] = "applied";   /* index(8) term(8) time(8) */
static const char META_TREE[] = "tree";         /* frontier encoding */
static const char META_DIGEST[] = "digest";     /* 32 bytes */
static const char META_VERSION[] = "version";   /* u64 */
static const char META_RULES[] = "rules";       /* u32: TALLY_RULES_*, from format 6 */

static int meta_get(MDB_txn *txn, MDB_dbi dbi, const char *name, MDB_val *v)
{
	MDB_val k = {strlen(name), (void *)name};
	return mdb_get(txn, dbi, &k, v);
}

/* The rules of a ledger whose data is of format `version`: recorded from format 6 on;
 * format 5 applied the bounded lots without recording them, and every format before
 * it the first rules. */
static int meta_rules(MDB_txn *txn, MDB_dbi dbi, uint64_t version, uint32_t *rules)
{
	if (version <= 4) {
		*rules = TALLY_RULES_FIRST;
		return 0;
	}
	if (version == 5) {
		*rules = TALLY_RULES_BOUNDED_LOTS;
		return 0;
	}
	MDB_val v;
	if (meta_get(txn, dbi, META_RULES, &v) != 0 || v.mv_size != 4)
		return TALLY_ECORRUPT;
	*rules = be32_get(v.mv_data);
	if (*rules < TALLY_RULES_FIRST)
		return TALLY_ECORRUPT;
	return *rules > TALLY_RULES_CURRENT ? TALLY_EVERSION : 0;
}

int meta_load(MDB_txn *txn, struct tally_ledger *l, struct meta *m)
{
	assert(txn != NULL && m != NULL);
	MDB_dbi dbi = l->dbi[T_META];
	memset(m, 0, sizeof(*m));
	tally_merkle_frontier_init(&m->tree);
	m->rules = TALLY_RULES_FIRST;
	MDB_val v;
	int rc = meta_get(txn, dbi, META_VERSION, &v);
	if (rc == MDB_NOTFOUND)
		return 0; /* a new ledger */
	if (rc != 0)
		return lmdb_error(rc);
	if (v.mv_size != 8 || be64_get(v.mv_data) < LEDGER_FORMAT_READABLE_MIN ||
	    be64_get(v.mv_data) > LEDGER_FORMAT_VERSION)
		return TALLY_EVERSION;
	rc = meta_rules(txn, dbi, be64_get(v.mv_data), &m->rules);
	if (rc != 0)
		return rc;
	if (meta_get(txn, dbi, META_APPLIED, &v) != 0 || v.mv_size != 24)
		return TALLY_ECORRUPT;
	m->applied_index = be64_get(v.mv_data);
	m->applied_term = be64_get((uint8_t *)v.mv_data + 8);
	m->time_ms = (int64_t)be64_get((uint8_t *)v.mv_data + 16);
	if (meta_get(txn, dbi, META_TREE, &v) != 0 ||
	    tally_merkle_frontier_decode(&m->tree, v.mv_data, v.mv_size) != 0)
		return TALLY_ECORRUPT;
	if (meta_get(txn, dbi, META_DIGEST, &v) != 0 || v.mv_size != 32)
		return TALLY_ECORRUPT;
	memcpy(m->digest, v.mv_data, 32);
	return 0;
}

static int meta_put(struct apply *a, const char *name, const void *p, size_t n)
{
	MDB_val k = {strlen(name), (void *)name};
	MDB_val v = {n, (void *)p};
	return lmdb_error(mdb_put(a->txn, a->l->dbi[T_META], &k, &v, 0));
}

int meta_save(struct apply *a)
{
	assert(a != NULL && a->txn != NULL);
	uint8_t applied[24], version[8], rules[4];
	assert(a->m.rules >= TALLY_RULES_FIRST && a->m.rules <= TALLY_RULES_CURRENT);
	be32_put(rules, a->m.rules);
	be64_put(applied, a->m.applied_index);
	be64_put(applied + 8, a->m.applied_term);
	be64_put(applied + 16, (uint64_t)a->m.time_ms);
	be64_put(version, LEDGER_FORMAT_VERSION);
	uint8_t tree[TALLY_MERKLE_FRONTIER_BYTES_MAX];
	size_t n = tally_merkle_frontier_encode(&a->m.tree, tree, sizeof(tree));
	assert(n > 0);
	int rc = meta_put(a, META_VERSION, version, sizeof(version));
	if (rc == 0)
		rc = meta_put(a, META_APPLIED, applied, sizeof(applied));
	if (rc == 0)
		rc = meta_put(a, META_TREE, tree, n);
	if (rc == 0)
		rc = meta_put(a, META_DIGEST, a->m.digest, 32);
	if (rc == 0)
		rc = meta_put(a, META_RULES, rules, sizeof(rules));
	return rc;
}

/* ---- Merkle node store on LMDB -------------------------------------------------- */

/* Nodes below TREE_LEVEL_STORED are not stored: a perfect subtree of at most
 * 2^(TREE_LEVEL_STORED - 1) leaves is recomputed from the entries it covers when a
 * proof needs it. This saves most tree writes on the apply path. */
#define TREE_LEVEL_STORED 4

struct tree_ctx {
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_dbi entries;
};

static void tree_key(uint8_t k[9], unsigned level, uint64_t index)
{
	k[0] = (uint8_t)level;
	be64_put(k + 1, index);
}

/* The hash of the perfect subtree (level, index), computed from its entries. */
static int tree_compute(struct tree_ctx *t, unsigned level, uint64_t index, uint8_t out[32])
{
	assert(level < TREE_LEVEL_STORED);
	uint8_t h[1u << (TREE_LEVEL_STORED - 1)][32];
	uint64_t n = 1ull << level;
	for (uint64_t i = 0; i < n; i++) {
		MDB_val raw;
		const uint8_t *bytes;
		size_t n_bytes;
		int rc = txn_entry_get(t->txn, t->entries, (index << level) + i + 1, &raw);
		if (rc == 0)
			rc = entry_payload(&raw, &bytes, &n_bytes);
		if (rc != 0)
			return rc;
		tally_merkle_leaf_hash(bytes, n_bytes, h[i]);
	}
	for (; n > 1; n /= 2)
		for (uint64_t i = 0; i < n / 2; i++)
			tally_merkle_node_hash(h[2 * i], h[2 * i + 1], h[i]);
	memcpy(out, h[0], 32);
	return 0;
}

static int tree_get(void *ctx, unsigned level, uint64_t index, uint8_t out[32])
{
	struct tree_ctx *t = ctx;
	if (level < TREE_LEVEL_STORED)
		return tree_compute(t, level, index, out);
	uint8_t kb[9];
	tree_key(kb, level, index);
	MDB_val k = {sizeof(kb), kb}, v;
	int rc = mdb_get(t->txn, t->dbi, &k, &v);
	if (rc != 0)
		return lmdb_error(rc);
	if (v.mv_size != 32)
		return TALLY_ECORRUPT;
	memcpy(out, v.mv_data, 32);
	return 0;
}

static int tree_put(void *ctx, unsigned level, uint64_t index, const uint8_t hash[32])
{
	struct tree_ctx *t = ctx;
	if (level < TREE_LEVEL_STORED)
		return 0;
	uint8_t kb[9];
	tree_key(kb, level, index);
	MDB_val k = {sizeof(kb), kb}, v = {32, (void *)hash};
	return lmdb_error(mdb_put(t->txn, t->dbi, &k, &v, 0));
}

/* The store keeps its context in a per-thread slot: a tree_store is used for the
 * duration of one call by one thread, never concurrently. */
static _Thread_local struct tree_ctx tree_tls;

struct tally_merkle_store tree_store(MDB_txn *txn, const MDB_dbi *dbi)
{
	assert(txn != NULL && dbi != NULL);
	tree_tls.txn = txn;
	tree_tls.dbi = dbi[T_TREE];
	tree_tls.entries = dbi[T_ENTRIES];
	struct tally_merkle_store s = {&tree_tls, tree_get, tree_put};
	return s;
}

int txn_scan(MDB_txn *txn, MDB_dbi dbi, const void *prefix, size_t n, size_t limit,
	     int (*fn)(void *arg, const MDB_val *k, const MDB_val *v), void *arg)
{
	return txn_scan_from(txn, dbi, prefix, n, prefix, n, limit, fn, arg);
}

int txn_scan_from(MDB_txn *txn, MDB_dbi dbi, const void *prefix, size_t n, const void *start,
		  size_t start_n, size_t limit,
		  int (*fn)(void *arg, const MDB_val *k, const MDB_val *v), void *arg)
{
	assert(txn != NULL && fn != NULL);
	assert((prefix != NULL || n == 0) && (start != NULL || start_n == 0));
	MDB_cursor *cur;
	int rc = lmdb_error(mdb_cursor_open(txn, dbi, &cur));
	if (rc != 0)
		return rc;
	MDB_val k = {start_n, (void *)start}, v;
	int mrc = mdb_cursor_get(cur, &k, &v, start_n > 0 ? MDB_SET_RANGE : MDB_FIRST);
	for (size_t seen = 0; rc == 0 && mrc == 0 && seen < limit; seen++) {
		if (k.mv_size < n || memcmp(k.mv_data, prefix, n) != 0)
			break;
		rc = fn(arg, &k, &v);
		if (rc == 0)
			mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	if (rc == 0 && mrc != 0 && mrc != MDB_NOTFOUND)
		rc = lmdb_error(mrc);
	return rc;
}

static struct journal *txn_journal(MDB_txn *txn)
{
	struct tally_ledger *l = mdb_env_get_userctx(mdb_txn_env(txn));
	assert(l != NULL);
	return &l->journal;
}

/* raw, the T_ENTRIES row of key `key`, made entry seq. */
static int row_resolve(MDB_txn *txn, uint64_t seq, uint64_t key, MDB_val *raw)
{
	if (raw->mv_size == JOURNAL_INDEX_BYTES) {
		uint8_t index[JOURNAL_INDEX_BYTES];
		memcpy(index, raw->mv_data, sizeof(index));
		return journal_read(txn_journal(txn), seq, key, index, raw);
	}
	/* A row of format 6 or older holds the entry itself. */
	return key != seq || raw->mv_size <= ENTRY_HEADER_BYTES ? TALLY_ECORRUPT : 0;
}

int txn_entry_get(MDB_txn *txn, MDB_dbi dbi, uint64_t seq, MDB_val *raw)
{
	assert(txn != NULL && raw != NULL);
	struct journal *j = txn_journal(txn);
	if (journal_pending_read(j, seq, raw) == 0)
		return 0;
	uint64_t key = seq;
	int rc = journal_row_key(j, seq, &key);
	bool in_segments = rc == 0;
	if (rc != 0 && rc != TALLY_ENOTFOUND)
		return rc;
	uint8_t kb[8];
	be64_put(kb, key);
	MDB_val k = {8, kb};
	rc = lmdb_error(mdb_get(txn, dbi, &k, raw));
	if (rc == TALLY_ENOTFOUND && in_segments)
		return TALLY_ECORRUPT; /* a row the index must hold */
	return rc != 0 ? rc : row_resolve(txn, seq, key, raw);
}

int txn_entry_next(MDB_txn *txn, MDB_dbi dbi, uint64_t seq, const MDB_val *prev, MDB_val *raw)
{
	assert(txn != NULL && raw != NULL);
	if (prev != NULL && journal_read_after(txn_journal(txn), seq, prev, raw) == 0)
		return 0;
	return txn_entry_get(txn, dbi, seq, raw);
}

int entry_resolve(MDB_txn *txn, uint64_t seq, MDB_val *raw)
{
	assert(txn != NULL && raw != NULL);
	return row_resolve(txn, seq, seq, raw);
}

/* ---- open / close ---------------------------------------------------------------- */

static int env_open(struct tally_ledger *l, const char *dir, const struct tally_ledger_options *o)
{
	int rc = mdb_env_create(&l->env);
	if (rc != 0)
		return lmdb_error(rc);
	mdb_env_set_maxdbs(l->env, T_COUNT);
	rc = mdb_env_set_mapsize(l->env, (size_t)map_open_bytes(o));
	if (rc != 0)
		return lmdb_error(rc);
	unsigned flags = MDB_NOTLS;
	if (o->nosync)
		flags |= MDB_NOSYNC;
	if (o->writemap)
		flags |= MDB_WRITEMAP;
	rc = lmdb_error(mdb_env_set_userctx(l->env, l));
	if (rc == 0)
		rc = map_before_open(dir, o);
	if (rc == 0)
		rc = lmdb_error(mdb_env_open(l->env, dir, flags, 0644));
	if (rc == 0)
		rc = map_after_open(l, dir, o);
	return rc;
}

/* A handle with nothing open yet: its lock, arenas and where it lives. */
static int ledger_new(const char *where, struct tally_ledger **out)
{
	*out = NULL;
	struct tally_ledger *l = calloc(1, sizeof(*l));
	if (l == NULL)
		return TALLY_ENOMEM;
	if (strlen(where) >= sizeof(l->dir)) {
		free(l);
		return TALLY_EINVAL;
	}
	strcpy(l->dir, where);
	pthread_mutex_init(&l->map_lock, NULL);
	tally_arena_init(&l->scratch, 64 << 10, 0);
	tally_arena_init(&l->decode, 256 << 10, 0);
	tally_arena_init(&l->batch, 256 << 10, 0);
	*out = l;
	return 0;
}

/* The journal's segments cut back to the last record LMDB committed (journal.c). */
static int journal_settle_opened(struct tally_ledger *l)
{
	MDB_txn *txn = NULL;
	MDB_cursor *cur = NULL;
	int rc = lmdb_error(mdb_txn_begin(l->env, NULL, MDB_RDONLY, &txn));
	if (rc == 0)
		rc = lmdb_error(mdb_cursor_open(txn, l->dbi[T_ENTRIES], &cur));
	MDB_val k, v;
	int mrc = rc == 0 ? mdb_cursor_get(cur, &k, &v, MDB_LAST) : 0;
	if (rc == 0 && mrc != 0 && mrc != MDB_NOTFOUND)
		rc = lmdb_error(mrc);
	uint8_t index[JOURNAL_INDEX_BYTES];
	bool in_segments = rc == 0 && mrc == 0 && v.mv_size == JOURNAL_INDEX_BYTES;
	uint64_t key = rc == 0 && mrc == 0 && k.mv_size == 8 ? be64_get(k.mv_data) : 0;
	if (rc == 0 && mrc == 0 && (key == 0 || key > l->meta.tree.size ||
				    (!in_segments && key != l->meta.tree.size)))
		rc = TALLY_ECORRUPT; /* the last row is not the tree's last leaf's */
	if (in_segments)
		memcpy(index, v.mv_data, sizeof(index));
	if (cur != NULL)
		mdb_cursor_close(cur);
	if (txn != NULL)
		mdb_txn_abort(txn);
	if (rc == 0)
		rc = journal_settle_open(&l->journal, l->meta.tree.size, key,
					 in_segments ? index : NULL);
	return rc;
}

/* Every table's handle (each created if missing when `create`) and the meta. */
static int tables_open(struct tally_ledger *l, bool create)
{
	MDB_txn *txn = NULL;
	int rc = lmdb_error(mdb_txn_begin(l->env, NULL, create ? 0 : MDB_RDONLY, &txn));
	for (int t = 0; rc == 0 && t < T_COUNT; t++)
		rc = lmdb_error(mdb_dbi_open(txn, table_names[t], create ? MDB_CREATE : 0, &l->dbi[t]));
	if (rc == 0)
		rc = meta_load(txn, l, &l->meta);
	if (rc == 0)
		rc = lmdb_error(mdb_txn_commit(txn));
	else
		mdb_txn_abort(txn);
	return rc;
}

/* The end of an open: the handle to the caller, or closed on an error. */
static int ledger_opened(struct tally_ledger *l, int rc, struct tally_ledger **out)
{
	if (rc == 0)
		*out = l;
	else
		tally_ledger_close(l);
	return rc;
}

int tally_ledger_open(const char *dir, const struct tally_ledger_options *opts,
		      struct tally_ledger **out)
{
	assert(dir != NULL && out != NULL);
	static const struct tally_ledger_options defaults;
	const struct tally_ledger_options *o = opts != NULL ? opts : &defaults;
	struct tally_ledger *l;
	int rc = ledger_new(dir, &l);
	if (rc == 0)
		rc = env_open(l, dir, o);
	if (rc == 0)
		rc = tables_open(l, true);
	if (rc == 0 && o->journal_segment_bytes > JOURNAL_SEGMENT_BYTES)
		rc = TALLY_EINVAL; /* (a snapshot's reader bounds a segment by it) */
	if (rc == 0 && o->snapshot_links_dir != NULL && !o->snapshot_segments_inline &&
	    snprintf(l->links_dir, sizeof(l->links_dir), "%s", o->snapshot_links_dir) >=
		    (int)sizeof(l->links_dir))
		rc = TALLY_EINVAL;
	if (rc == 0)
		rc = journal_open(&l->journal, dir, true, o->journal_segment_bytes);
	if (rc == 0)
		rc = journal_settle_opened(l);
	return ledger_opened(l, rc, out);
}

int ledger_open_copy(const char *path, const uint8_t *map, size_t map_len, size_t section,
		     size_t journal_len, const struct jsnap_source *src, struct tally_ledger **out)
{
	assert(path != NULL && out != NULL && map != NULL);
	assert(section <= map_len && journal_len <= map_len - section);
	struct tally_ledger *l;
	int rc = ledger_new(path, &l);
	if (rc != 0) {
		munmap((void *)map, map_len);
		return rc;
	}
	l->copy_map = (void *)map; /* unmapped by tally_ledger_close */
	l->copy_map_len = map_len;
	rc = lmdb_error(mdb_env_create(&l->env));
	if (rc == 0)
		rc = lmdb_error(mdb_env_set_maxdbs(l->env, T_COUNT));
	if (rc == 0)
		rc = lmdb_error(mdb_env_set_userctx(l->env, l));
	if (rc == 0)
		rc = lmdb_error(mdb_env_open(l->env, path, MDB_RDONLY | MDB_NOSUBDIR | MDB_NOLOCK |
						 MDB_NOTLS, 0));
	if (rc == 0)
		rc = tables_open(l, false);
	if (rc == 0)
		rc = jsnap_open(&l->journal, map + section, journal_len, src);
	return ledger_opened(l, rc, out);
}

int tally_ledger_journal_sync(struct tally_ledger *l)
{
	assert(l != NULL);
	return journal_sync(&l->journal);
}

int tally_ledger_remove(const char *dir)
{
	assert(dir != NULL);
	int rc = 0;
	for (const char *const *f = (const char *const[]){"data.mdb", "lock.mdb", NULL}; *f != NULL; f++) {
		char path[4096];
		int n = snprintf(path, sizeof(path), "%s/%s", dir, *f);
		if (n < 0 || (size_t)n >= sizeof(path))
			return TALLY_EINVAL;
		if (unlink(path) != 0 && errno != ENOENT)
			rc = TALLY_EIO;
	}
	int jrc = journal_remove(dir);
	return rc != 0 ? rc : jrc;
}

void tally_ledger_close(struct tally_ledger *l)
{
	if (l == NULL)
		return;
	if (l->env != NULL) {
		mdb_env_sync(l->env, 1); /* a copy opened read-only: EACCES, nothing to sync */
		mdb_env_close(l->env);
	}
	remap_release(&l->map_region);
	journal_close(&l->journal);
	if (l->copy_map != NULL)
		munmap(l->copy_map, l->copy_map_len);
	tally_arena_free(&l->scratch);
	tally_arena_free(&l->decode);
	tally_arena_free(&l->batch);
	known_free(l);
	pthread_mutex_destroy(&l->map_lock);
	free(l);
}

int tally_ledger_file_dup(struct tally_ledger *l)
{
	assert(l != NULL && l->env != NULL);
	mdb_filehandle_t fd;
	if (mdb_env_get_fd(l->env, &fd) != 0) {
		errno = EBADF;
		return -1;
	}
	return fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

void tally_ledger_journal_tail(struct tally_ledger *l, uint64_t *first, uint64_t *len)
{
	assert(l != NULL && first != NULL && len != NULL);
	journal_tail(&l->journal, first, len);
}

int tally_ledger_journal_segment_open(struct tally_ledger *l, uint64_t first)
{
	assert(l != NULL);
	return journal_seg_open_read(&l->journal, first);
}

uint64_t tally_ledger_applied_index(struct tally_ledger *l)
{
	assert(l != NULL);
	return l->meta.applied_index;
}

uint64_t tally_ledger_journal_size(const struct tally_ledger *l)
{
	assert(l != NULL);
	return l->meta.tree.size;
}

uint32_t tally_ledger_rules(const struct tally_ledger *l)
{
	assert(l != NULL);
	assert(l->meta.rules >= TALLY_RULES_FIRST && l->meta.rules <= TALLY_RULES_CURRENT);
	return l->meta.rules;
}

int64_t tally_ledger_time_ms(struct tally_ledger *l)
{
	assert(l != NULL);
	assert(l->meta.time_ms >= 0);
	return l->meta.time_ms;
}
