/*
 * tally-audit verify — proves DIR: every checkpoint signed by a pinned key and linked
 * to the one before by its consistency proof; every leaf over the stored bytes, the
 * Merkle root at every checkpoint's size; dense sequence numbers; the postings of
 * every entry summing to zero per brand; every account rebuilt from postings alone
 * (never negative, equal to what the ledger reported after each command); and the
 * totals per brand. The first problem is named and ends the run (exit 1).
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ledger/arena.h"
#include "ledger/error.h"
#include "tools/audit/audit.h"
#include "tools/audit/books.h"

struct verify {
	const struct audit_opts *o;
	struct tally_checkpoint_keys keys;
	struct audit_checkpoint *cps;
	size_t n_cps, next_cp;        /* the next checkpoint the journal reaches */
	struct tally_merkle_frontier tree;
	struct audit_books books;
	struct tally_arena arena;
	char err[1024];
};

static int verify_fail(struct verify *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int verify_fail(struct verify *v, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(v->err, sizeof(v->err), fmt, ap);
	va_end(ap);
	return AUDIT_EXIT_FAILED;
}

/* Each checkpoint: its signature, its key pinned for its node, and its consistency
 * proof from an earlier checkpoint of DIR. */
static int verify_checkpoints(struct verify *v)
{
	for (size_t i = 0; i < v->n_cps; i++) {
		const struct audit_checkpoint *cp = &v->cps[i];
		if (tally_checkpoint_verify(&cp->c) != 0)
			return verify_fail(v, "%s: the signature does not verify", cp->file);
		if (!tally_checkpoint_pinned(&v->keys, &cp->c))
			return verify_fail(v, "%s: node %" PRIu64 "'s key is not the pinned one (%s)",
					   cp->file, cp->c.node_id, v->o->keys);
		if (cp->p.from == 0)
			continue;
		const struct audit_checkpoint *old = NULL;
		for (size_t j = 0; j < i; j++)
			if (v->cps[j].c.tree_size == cp->p.from)
				old = &v->cps[j];
		if (old == NULL)
			return verify_fail(v, "%s: its proof starts at %" PRIu64 ", and DIR has no "
					   "checkpoint of that size", cp->file, cp->p.from);
		if (tally_merkle_verify_consistency(old->c.tree_size, cp->c.tree_size, old->c.root,
						    cp->c.root, cp->p.path, cp->p.n) != 0)
			return verify_fail(v, "%s does not extend %s: the consistency proof fails, "
					   "the two are of different histories (forked or rewritten)",
					   cp->file, old->file);
	}
	return 0;
}

static int no_put(void *ctx, unsigned level, uint64_t index, const uint8_t hash[TALLY_HASH_BYTES])
{
	(void)ctx, (void)level, (void)index, (void)hash;
	return 0;
}

/* After `size` leaves: every checkpoint of that size must have this root. */
static int verify_roots_at(struct verify *v)
{
	uint8_t root[TALLY_HASH_BYTES];
	while (v->next_cp < v->n_cps && v->cps[v->next_cp].c.tree_size == v->tree.size) {
		const struct audit_checkpoint *cp = &v->cps[v->next_cp++];
		tally_merkle_frontier_root(&v->tree, root);
		if (memcmp(root, cp->c.root, TALLY_HASH_BYTES) != 0) {
			uint64_t after = v->next_cp >= 2 ? v->cps[v->next_cp - 2].c.tree_size : 0;
			return verify_fail(v, "the journal's root at %" PRIu64 " is not %s's: an entry "
					   "in %" PRIu64 "..%" PRIu64 " was changed, dropped, added or "
					   "moved", cp->c.tree_size, cp->file, after + 1,
					   cp->c.tree_size);
		}
	}
	return 0;
}

static int verify_journal(struct verify *v)
{
	struct audit_reader r;
	if (audit_reader_open(v->o->dir, &r, v->err, sizeof(v->err)) != 0)
		return AUDIT_EXIT_FAILED;
	const struct tally_merkle_store store = {.put = no_put};
	uint64_t total = v->n_cps > 0 ? v->cps[v->n_cps - 1].c.tree_size : 0;
	int rc = verify_roots_at(v);
	for (;;) {
		uint64_t seq;
		const uint8_t *bytes;
		size_t len;
		int got = rc == 0 ? audit_reader_next(&r, &seq, &bytes, &len, v->err, sizeof(v->err)) : 0;
		if (got < 0)
			rc = AUDIT_EXIT_FAILED;
		if (got <= 0)
			break;
		uint8_t leaf[TALLY_HASH_BYTES];
		tally_merkle_leaf_hash(bytes, len, leaf);
		if (tally_merkle_append(&v->tree, &store, leaf) != 0)
			rc = verify_fail(v, "entry %" PRIu64 ": the tree is full", seq);
		if (rc == 0 && audit_books_entry(&v->books, seq, bytes, len, v->err, sizeof(v->err)) != 0)
			rc = AUDIT_EXIT_FAILED;
		if (rc == 0)
			rc = verify_roots_at(v);
		if ((seq & 0xfff) == 0)
			audit_progress("verify", seq, total);
	}
	audit_progress_done();
	audit_reader_close(&r);
	if (rc == 0 && v->next_cp < v->n_cps)
		rc = verify_fail(v, "%s covers %" PRIu64 " entries; the journal holds %" PRIu64,
				 v->cps[v->next_cp].file, v->cps[v->next_cp].c.tree_size, v->tree.size);
	return rc;
}

int audit_verify(const struct audit_opts *o)
{
	if (o->keys == NULL) {
		fprintf(stderr, "tally-audit: verify needs --keys FILE, the cluster's pinned checkpoint "
				"keys (tally-cluster writes checkpoint-keys)\n");
		return AUDIT_EXIT_USAGE;
	}
	struct verify *v = calloc(1, sizeof(*v));
	if (v == NULL)
		return AUDIT_EXIT_FAILED;
	v->o = o;
	tally_merkle_frontier_init(&v->tree);
	double t0 = audit_now_s();
	int rc = 0;
	if (tally_checkpoint_keys_load(o->keys, &v->keys, v->err, sizeof(v->err)) != 0 ||
	    audit_checkpoints_load(o->dir, &v->cps, &v->n_cps, v->err, sizeof(v->err)) != 0 ||
	    audit_books_init(&v->books, v->err, sizeof(v->err)) != 0)
		rc = AUDIT_EXIT_FAILED;
	if (rc == 0 && v->n_cps == 0)
		rc = verify_fail(v, "%s/checkpoints: no checkpoint to verify against", o->dir);
	if (rc == 0)
		rc = verify_checkpoints(v);
	if (rc == 0)
		rc = verify_journal(v);
	if (rc == 0 && audit_books_totals(&v->books, v->err, sizeof(v->err)) != 0)
		rc = AUDIT_EXIT_FAILED;
	double secs = audit_now_s() - t0;
	if (rc == 0)
		audit_books_report(&v->books, &v->cps[v->n_cps - 1].c, v->n_cps, secs, o->json, stdout);
	else
		fprintf(stderr, "tally-audit: verify: FAILED: %s\n", v->err);
	audit_books_free(&v->books);
	free(v->cps);
	free(v);
	return rc;
}
