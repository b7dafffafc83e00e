/*
 * Member chains: the entries of each (brand, member) account, and of each member
 * record, linked through the journal instead of an index row per entry.
 *
 * Entry of ordinal n in a chain links to ordinal n - 1 (prev) and to ordinal
 * n & (n - 1) (skip: n with its lowest set bit cleared). From the head, any ordinal or
 * the first seq at or after a bound is reached by taking skip while it does not pass
 * the target and prev otherwise: O(log^2 n) entry reads. Appending needs the seq of
 * ordinal n & (n - 1): the head's skip path from n - 1 reaches it, in tz(n) - 1 reads
 * (0.25 on average), since n - 1 is that ordinal followed by tz(n) one bits.
 */
#include <assert.h>
#include <string.h>

#include "ledger/internal.h"

void chain_head_encode(uint8_t p[CHAIN_HEAD_BYTES], const struct chain_head *h)
{
	be64_put(p, h->seq);
	be64_put(p + 8, h->ord);
	be64_put(p + 16, h->prev);
	be64_put(p + 24, h->skip);
}

int chain_head_decode(const MDB_val *v, struct chain_head *h)
{
	if (v->mv_size < CHAIN_HEAD_BYTES)
		return TALLY_ECORRUPT;
	const uint8_t *p = v->mv_data;
	h->seq = be64_get(p);
	h->ord = be64_get(p + 8);
	h->prev = be64_get(p + 16);
	h->skip = be64_get(p + 24);
	return (h->seq == 0) == (h->ord == 0) ? 0 : TALLY_ECORRUPT;
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
		return out->ord == 0 ? TALLY_ECORRUPT : 0;
	}
	return TALLY_ECORRUPT; /* a link named an entry outside the chain */
}

int chain_append(MDB_txn *txn, MDB_dbi entries, struct tally_arena *arena,
		 struct chain_head *h, const char *brand, const char *member, uint64_t seq,
		 uint8_t link[CHAIN_LINK_BYTES])
{
	assert(seq > h->seq);
	uint64_t n = h->ord + 1, m = n & (n - 1), skip = 0;
	if (m != 0 && m == h->ord) {
		skip = h->seq;
	} else if (m != 0) {
		/* Clear the lowest bits of n - 1 one at a time until m: seqs along the way. */
		struct chain_head cur = *h;
		for (;;) {
			uint64_t next = cur.ord & (cur.ord - 1);
			assert(next >= m && cur.skip != 0);
			if (next == m) {
				skip = cur.skip;
				break;
			}
			int rc = chain_node_at(txn, entries, arena, cur.skip, brand, member, &cur);
			if (rc != 0)
				return rc;
		}
	}
	be64_put(link, h->seq);
	be64_put(link + 8, skip);
	be64_put(link + 16, n);
	*h = (struct chain_head){seq, n, h->seq, skip};
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
