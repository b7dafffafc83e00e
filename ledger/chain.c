/*
 * Member chains: the entries of each (brand, member) account, and of each member
 * record, linked through the journal instead of an index row per entry.
 *
 * Entry of ordinal n in a chain links to ordinal n - 1 (prev) and to ordinal
 * n & (n - 1) (skip: n with its lowest set bit cleared). From the head, any ordinal or
 * the first seq at or after a bound is reached by taking skip while it does not pass
 * the target and prev otherwise: O(log^2 n) entry reads. Appending needs the seq of
 * ordinal n & (n - 1), which is on the head's skip path from n - 1 (n - 1 is that
 * ordinal followed by tz(n) one bits): the head carries that whole path (format 9),
 * one seq per set bit of its ordinal, so that appending reads no entry. Reading them
 * instead (tz(n) - 1 entries, 0.25 on average, each an old entry of the journal
 * likely out of every cache) cost a sixth of apply once the journal grew past memory's
 * caches (docs/performance.md).
 */
#include <assert.h>
#include <string.h>

#include "ledger/internal.h"

size_t chain_head_bytes(const struct chain_head *h)
{
	assert(h->ord < CHAIN_HEAD_LOTS_FLAG);
	return CHAIN_HEAD_BYTES + (h->path_unknown ? 0 : 8 * (size_t)chain_rest_count(h->ord));
}

size_t chain_head_encode(uint8_t *p, const struct chain_head *h)
{
	assert((h->seq == 0) == (h->ord == 0) && h->ord < CHAIN_HEAD_LOTS_FLAG);
	be64_put(p, h->seq);
	be64_put(p + 8, h->ord | (h->path_unknown ? 0 : CHAIN_HEAD_PATH_FLAG) |
				(h->lots_apart ? CHAIN_HEAD_LOTS_FLAG : 0));
	be64_put(p + 16, h->prev);
	be64_put(p + 24, h->skip);
	size_t n = CHAIN_HEAD_BYTES;
	for (unsigned i = 0; !h->path_unknown && i < chain_rest_count(h->ord); i++, n += 8)
		be64_put(p + n, h->rest[i]);
	assert(n == chain_head_bytes(h));
	return n;
}

int chain_head_decode(const MDB_val *v, struct chain_head *h, MDB_val *body)
{
	size_t n = chain_head_size(v);
	if (n == 0)
		return TALLY_ECORRUPT;
	const uint8_t *p = v->mv_data;
	uint64_t ord = be64_get(p + 8);
	*h = (struct chain_head){
		.seq = be64_get(p),
		.ord = ord & ~CHAIN_HEAD_FLAGS,
		.prev = be64_get(p + 16),
		.skip = be64_get(p + 24),
		.path_unknown = !(ord & CHAIN_HEAD_PATH_FLAG),
		.lots_apart = (ord & CHAIN_HEAD_LOTS_FLAG) != 0,
	};
	body->mv_data = (uint8_t *)v->mv_data + n;
	body->mv_size = v->mv_size - n;
	bool skips = h->ord & (h->ord - 1);
	if ((h->seq == 0) != (h->ord == 0) || (h->skip != 0) != skips ||
	    (skips && h->skip >= h->seq))
		return TALLY_ECORRUPT;
	/* Entries join a chain in seq order, so the path's seqs fall from the skip on. */
	uint64_t above = h->skip;
	for (unsigned i = 0; !h->path_unknown && i < chain_rest_count(h->ord); i++) {
		h->rest[i] = be64_get(p + CHAIN_HEAD_BYTES + 8 * i);
		if (h->rest[i] == 0 || h->rest[i] >= above)
			return TALLY_ECORRUPT;
		above = h->rest[i];
	}
	return 0;
}

void *chain_record_unpack(const MDB_val *v, const ProtobufCMessageDescriptor *d,
			  struct tally_arena *arena, struct chain_head *h)
{
	MDB_val body;
	if (chain_head_decode(v, h, &body) != 0)
		return NULL;
	return protobuf_c_message_unpack(d, tally_arena_protobuf(arena), body.mv_size,
					 body.mv_data);
}

static size_t entry_header_bytes(const MDB_val *raw)
{
	if (raw->mv_size <= ENTRY_HEADER_BYTES)
		return 0;
	size_t n = ENTRY_HEADER_BYTES + 1 +
		   (size_t)((const uint8_t *)raw->mv_data)[ENTRY_HEADER_BYTES] * CHAIN_LINK_BYTES;
	return n <= raw->mv_size ? n : 0;
}

int entry_payload(const MDB_val *raw, const uint8_t **bytes, size_t *n)
{
	size_t h = entry_header_bytes(raw);
	if (h == 0)
		return TALLY_ECORRUPT;
	*bytes = (const uint8_t *)raw->mv_data + h;
	*n = raw->mv_size - h;
	return 0;
}

static void chain_add(const char **brands, const char **members, size_t *n, const char *brand,
		      const char *member)
{
	for (size_t i = 0; i < *n; i++)
		if (strcmp(brands[i], brand) == 0 && strcmp(members[i], member) == 0)
			return;
	assert(*n < ENTRY_CHAINS_MAX);
	brands[*n] = brand;
	members[(*n)++] = member;
}

size_t entry_chains(const Tally__V1__Entry *e, const char *brands[ENTRY_CHAINS_MAX],
		    const char *members[ENTRY_CHAINS_MAX])
{
	size_t n = 0;
	if (e->member[0] != '\0')
		chain_add(brands, members, &n, e->brand, e->member);
	for (size_t i = 0; i < e->n_postings && i < POSTINGS_MAX; i++)
		if (e->postings[i]->account == TALLY__V1__SYSTEM_ACCOUNT__MEMBER)
			chain_add(brands, members, &n, e->postings[i]->brand, e->postings[i]->member);
	return n;
}

int chain_node_at(MDB_txn *txn, MDB_dbi entries, struct tally_arena *arena, uint64_t seq,
		  const char *brand, const char *member, struct chain_head *out)
{
	MDB_val raw;
	const uint8_t *bytes;
	size_t n;
	int rc = txn_entry_get(txn, entries, seq, &raw);
	if (rc == 0)
		rc = entry_payload(&raw, &bytes, &n);
	if (rc != 0)
		return rc == TALLY_ENOTFOUND ? TALLY_ECORRUPT : rc;
	Tally__V1__Entry *e = tally__v1__entry__unpack(tally_arena_protobuf(arena), n, bytes);
	if (e == NULL)
		return TALLY_ECORRUPT;
	const char *brands[ENTRY_CHAINS_MAX], *members[ENTRY_CHAINS_MAX];
	size_t nc = entry_chains(e, brands, members);
	size_t links = ((const uint8_t *)raw.mv_data)[ENTRY_HEADER_BYTES];
	for (size_t i = 0; i < nc && i < links; i++) {
		if (strcmp(brands[i], brand) != 0 || strcmp(members[i], member) != 0)
			continue;
		const uint8_t *p = (const uint8_t *)raw.mv_data + ENTRY_HEADER_BYTES + 1 +
				   i * CHAIN_LINK_BYTES;
		out->seq = seq;
		out->prev = be64_get(p);
		out->skip = be64_get(p + 8);
		out->ord = be64_get(p + 16);
		out->path_unknown = true; /* a node inside the chain: its links, not a path */
		return out->ord == 0 || out->ord >= CHAIN_HEAD_PATH_FLAG ? TALLY_ECORRUPT : 0;
	}
	return TALLY_ECORRUPT; /* a link named an entry outside the chain */
}

/* Fills in the path of a head read without one: each node on it, from the skip on,
 * read from the journal for its own skip (chain_rest_count(ord) reads, once per head
 * of a ledger older than format 9). */
static int chain_path_read(MDB_txn *txn, MDB_dbi entries, struct tally_arena *arena,
			   struct chain_head *h, const char *brand, const char *member)
{
	assert(h->path_unknown);
	uint64_t ord = h->ord & (h->ord - 1), at = h->skip;
	for (unsigned i = 0; i < chain_rest_count(h->ord); i++) {
		struct chain_head node;
		int rc = chain_node_at(txn, entries, arena, at, brand, member, &node);
		if (rc != 0)
			return rc;
		if (node.ord != ord || node.skip == 0)
			return TALLY_ECORRUPT; /* the skip links do not clear a bit at a time */
		ord &= ord - 1;
		at = h->rest[i] = node.skip;
	}
	h->path_unknown = false;
	return 0;
}

int chain_path_verify(MDB_txn *txn, MDB_dbi entries, struct tally_arena *arena,
		      const struct chain_head *h, const char *brand, const char *member)
{
	if (h->path_unknown || chain_rest_count(h->ord) == 0)
		return 0;
	struct chain_head read = *h;
	read.path_unknown = true;
	int rc = chain_path_read(txn, entries, arena, &read, brand, member);
	if (rc != 0)
		return rc;
	size_t n = 8 * (size_t)chain_rest_count(h->ord);
	return memcmp(read.rest, h->rest, n) == 0 ? 0 : TALLY_ECORRUPT;
}

int chain_append(MDB_txn *txn, MDB_dbi entries, struct tally_arena *arena,
		 struct chain_head *h, const char *brand, const char *member, uint64_t seq,
		 uint8_t link[CHAIN_LINK_BYTES])
{
	assert(seq > h->seq && h->ord + 1 < CHAIN_HEAD_PATH_FLAG);
	if (h->path_unknown) {
		int rc = chain_path_read(txn, entries, arena, h, brand, member);
		if (rc != 0)
			return rc;
	}
	/* The path from the head by skips, p(0) = seq, p(1) = skip, p(i + 2) = rest[i],
	 * has the ordinals ord, ord & (ord - 1), ... The new ordinal n skips to
	 * n & (n - 1), which is ord with its t = tz(n) lowest bits cleared: p(t). From
	 * there on the two paths are the same, so the new rest is p(t + 1), p(t + 2), ...
	 * in place: rest shifted up by one with skip in front (t = 0), kept (t = 1), or
	 * shifted down by t - 1. */
	uint64_t n = h->ord + 1;
	unsigned t = (unsigned)__builtin_ctzll(n), len = chain_path_length(h->ord);
	unsigned rest = chain_rest_count(n);
	assert(t <= len && (t < len) == ((n & (n - 1)) != 0));
	uint64_t skip = t == len ? 0 : t == 0 ? h->seq : t == 1 ? h->skip : h->rest[t - 2];
	assert(rest == 0 || (t == 0 ? rest == chain_rest_count(h->ord) + 1
				   : t - 1 + rest == chain_rest_count(h->ord)));
	if (t == 0 && rest > 0) {
		memmove(h->rest + 1, h->rest, 8 * (size_t)(rest - 1));
		h->rest[0] = h->skip;
	} else if (t > 1) {
		memmove(h->rest, h->rest + t - 1, 8 * (size_t)rest);
	}
	be64_put(link, h->seq);
	be64_put(link + 8, skip);
	be64_put(link + 16, n);
	h->prev = h->seq;
	h->seq = seq;
	h->ord = n;
	h->skip = skip;
	return 0;
}

/* Walks from head to the first node with seq >= from (head.seq >= from). */
static int seek_seq(MDB_txn *txn, MDB_dbi entries, struct tally_arena *arena,
		    const char *brand, const char *member, uint64_t from, struct chain_head *cur)
{
	for (;;) {
		uint64_t to = cur->skip != 0 && cur->skip >= from ? cur->skip
			    : cur->prev != 0 && cur->prev >= from ? cur->prev : 0;
		if (to == 0)
			return 0;
		int rc = chain_node_at(txn, entries, arena, to, brand, member, cur);
		if (rc != 0)
			return rc;
	}
}

/* Walks from *cur (ordinal >= ord) to the node of ordinal ord. */
static int seek_ord(MDB_txn *txn, MDB_dbi entries, struct tally_arena *arena,
		    const char *brand, const char *member, uint64_t ord, struct chain_head *cur)
{
	while (cur->ord > ord) {
		uint64_t skip_ord = cur->ord & (cur->ord - 1);
		uint64_t to = cur->skip != 0 && skip_ord >= ord ? cur->skip : cur->prev;
		if (to == 0)
			return TALLY_ECORRUPT;
		int rc = chain_node_at(txn, entries, arena, to, brand, member, cur);
		if (rc != 0)
			return rc;
	}
	return cur->ord == ord ? 0 : TALLY_ECORRUPT;
}

int chain_collect(MDB_txn *txn, MDB_dbi entries, struct tally_arena *arena,
		  const struct chain_head *head, const char *brand, const char *member,
		  uint64_t from, size_t max, uint64_t *out, size_t *n)
{
	assert(max > 0);
	*n = 0;
	if (head->seq == 0 || head->seq < from)
		return 0;
	struct chain_head first = *head, cur = *head;
	int rc = seek_seq(txn, entries, arena, brand, member, from, &first);
	uint64_t last = first.ord + max - 1 < head->ord ? first.ord + max - 1 : head->ord;
	if (rc == 0)
		rc = seek_ord(txn, entries, arena, brand, member, last, &cur);
	size_t count = (size_t)(last - first.ord + 1);
	for (size_t i = count; rc == 0 && i-- > 0;) {
		out[i] = cur.seq;
		if (i > 0)
			rc = chain_node_at(txn, entries, arena, cur.prev, brand, member, &cur);
	}
	if (rc == 0 && out[0] != first.seq)
		return TALLY_ECORRUPT;
	*n = rc == 0 ? count : 0;
	return rc;
}
