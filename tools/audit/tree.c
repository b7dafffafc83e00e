/*
 * tally-audit's Merkle tree in memory: every node of the journal's tree, level by
 * level, so that inclusion proofs come from DIR alone (tree.h in audit.h).
 */
#include <stdlib.h>
#include <string.h>

#include "ledger/error.h"
#include "tools/audit/audit.h"

static int tree_put(void *ctx, unsigned level, uint64_t index, const uint8_t hash[TALLY_HASH_BYTES])
{
	struct audit_tree *t = ctx;
	if (level >= TALLY_MERKLE_LEVELS_MAX)
		return TALLY_ERANGE;
	if (index >= t->cap[level]) {
		size_t cap = t->cap[level] ? 2 * t->cap[level] : 1024;
		while (cap <= index)
			cap *= 2;
		uint8_t(*grown)[TALLY_HASH_BYTES] = realloc(t->level[level], cap * TALLY_HASH_BYTES);
		if (grown == NULL)
			return TALLY_ENOMEM;
		t->level[level] = grown;
		t->cap[level] = cap;
	}
	memcpy(t->level[level][index], hash, TALLY_HASH_BYTES);
	if (index >= t->n[level])
		t->n[level] = index + 1;
	return 0;
}

static int tree_get(void *ctx, unsigned level, uint64_t index, uint8_t out[TALLY_HASH_BYTES])
{
	const struct audit_tree *t = ctx;
	if (level >= TALLY_MERKLE_LEVELS_MAX || index >= t->n[level])
		return TALLY_ENOTFOUND;
	memcpy(out, t->level[level][index], TALLY_HASH_BYTES);
	return 0;
}

void audit_tree_init(struct audit_tree *t)
{
	memset(t, 0, sizeof(*t));
	tally_merkle_frontier_init(&t->frontier);
}

void audit_tree_free(struct audit_tree *t)
{
	for (unsigned i = 0; i < TALLY_MERKLE_LEVELS_MAX; i++)
		free(t->level[i]);
}

int audit_tree_append(struct audit_tree *t, const void *bytes, size_t len)
{
	uint8_t leaf[TALLY_HASH_BYTES];
	tally_merkle_leaf_hash(bytes, len, leaf);
	struct tally_merkle_store s = {.ctx = t, .get = tree_get, .put = tree_put};
	return tally_merkle_append(&t->frontier, &s, leaf);
}

int audit_tree_proof(struct audit_tree *t, uint64_t seq, uint64_t size,
		     uint8_t path[][TALLY_HASH_BYTES], size_t *n)
{
	struct tally_merkle_store s = {.ctx = t, .get = tree_get, .put = tree_put};
	return tally_merkle_inclusion_proof(&s, seq - 1, size, path, TALLY_MERKLE_PROOF_MAX, n);
}

int audit_tree_root(struct audit_tree *t, uint64_t size, uint8_t root[TALLY_HASH_BYTES])
{
	struct tally_merkle_store s = {.ctx = t, .get = tree_get, .put = tree_put};
	return tally_merkle_root_at(&s, size, root);
}
