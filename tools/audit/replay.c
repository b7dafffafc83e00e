/*
 * tally-audit replay DIR --out LEDGERDIR — re-runs the journal through the ledger
 * library into a fresh LMDB and proves it reaches exactly the root and the state
 * digest of every checkpoint in DIR.
 *
 * Since ledger format 2 every change of state has an entry, so the COMMAND entries
 * (applied ones and those refused after they changed state) are the whole input:
 * consecutive COMMAND entries of one time form a batch of that time, with their
 * principals as recorded. The ledger itself makes the rest again: the hold releases at
 * a batch's start and the lots that ran out; a release or expiry entry that no
 * command of its time follows comes from a batch of which every command was refused
 * without changing anything, and an empty batch of its time makes it again. Every
 * entry replay makes must be the journal's, byte for byte (compared through the Merkle
 * root after each batch, entry by entry on a difference: the first entry where replay
 * diverges is named), and at every checkpoint's size the state digest must be the
 * signed one. (Batch boundaries matter to the result only when more than 1,000 holds
 * run out in one batch; then replay names where it diverges.)
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ledger/arena.h"
#include "ledger/ledger.h"
#include "tools/audit/audit.h"

#define REPLAY_BATCH_MAX 8192 /* commands per replayed batch, as a raft entry carries */

struct replay {
	const struct audit_opts *o;
	struct tally_ledger *l;
	struct audit_checkpoint *cps;
	size_t n_cps, next_cp;
	struct tally_merkle_frontier journal;  /* the journal's tree, as far as read */
	struct tally_arena pending_arena;      /* the batch being formed: its entries */
	Tally__V1__Command *pending[REPLAY_BATCH_MAX];
	uint64_t pending_seq[REPLAY_BATCH_MAX];
	Tally__V1__ResultCode pending_code[REPLAY_BATCH_MAX];
	size_t n_pending;
	int64_t pending_ms;
	uint64_t raft_index, produced, matched;
	struct tally_arena results;
	char err[1024];
};

static int replay_fail(struct replay *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int replay_fail(struct replay *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->err, sizeof(r->err), fmt, ap);
	va_end(ap);
	return -1;
}

/* ---- naming a divergence ------------------------------------------------------------- */

static const char *what_of(const Tally__V1__Entry *e)
{
	if (e == NULL)
		return "nothing";
	if (e->kind == TALLY__V1__ENTRY_KIND__LOT_EXPIRED)
		return "a lot_expired entry";
	if (e->kind == TALLY__V1__ENTRY_KIND__HOLD_RELEASED)
		return "a hold_released entry";
	const ProtobufCFieldDescriptor *f =
		e->command != NULL ? protobuf_c_message_descriptor_get_field(
					     &tally__v1__command__descriptor, (unsigned)e->command->body_case)
				   : NULL;
	return f != NULL ? f->name : "an entry";
}

/* The replayed ledger's entry seq (NULL when it has none), decoded into a. */
static const Tally__V1__Entry *ledger_entry(struct replay *r, uint64_t seq, struct tally_arena *a,
					    ProtobufCBinaryData *bytes)
{
	static char *const all[] = {(char *)"*"};
	Tally__V1__Principal who = TALLY__V1__PRINCIPAL__INIT;
	who.key_name = (char *)"replay";
	who.role = TALLY__V1__ROLE__AUDITOR;
	who.brands = (char **)all;
	who.n_brands = 1;
	Tally__V1__GetEntry g = TALLY__V1__GET_ENTRY__INIT;
	g.seq = seq;
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	q.q_case = TALLY__V1__QUERY__Q_ENTRY;
	q.entry = &g;
	Tally__V1__QueryResult *res;
	if (tally_ledger_query(r->l, &q, &who, a, &res) != 0 || res->entry == NULL)
		return NULL;
	*bytes = res->entry->entry;
	return tally__v1__entry__unpack(tally_arena_protobuf(a), bytes->len, bytes->data);
}

/* The first entry after r->matched where the replayed ledger and the journal differ. */
static int replay_diverged(struct replay *r)
{
	struct audit_reader rd;
	struct tally_arena a;
	if (audit_reader_open(r->o->dir, &rd, r->err, sizeof(r->err)) != 0)
		return -1;
	tally_arena_init(&a, 64 << 10, 0);
	int rc = replay_fail(r, "replay diverges after entry %" PRIu64 ", but no entry differs",
			     r->matched);
	for (;;) {
		uint64_t seq;
		const uint8_t *bytes;
		size_t len;
		if (audit_reader_next(&rd, &seq, &bytes, &len, r->err, sizeof(r->err)) <= 0)
			break;
		if (seq <= r->matched)
			continue;
		tally_arena_reset(&a);
		ProtobufCBinaryData mine = {0, NULL};
		const Tally__V1__Entry *made = ledger_entry(r, seq, &a, &mine);
		if (made != NULL && mine.len == len && memcmp(mine.data, bytes, len) == 0)
			continue;
		const Tally__V1__Entry *want =
			tally__v1__entry__unpack(tally_arena_protobuf(&a), len, bytes);
		rc = replay_fail(r, "replay diverges at entry %" PRIu64 ": the journal has %s, replay "
				 "made %s", seq, what_of(want), what_of(made));
		break;
	}
	tally_arena_free(&a);
	audit_reader_close(&rd);
	return rc;
}

/* ---- batches ------------------------------------------------------------------------- */

/* After a batch: what replay made must be the journal as far as read (`r->journal`),
 * except entries still awaited (a lot that ran out, made by a command of the same time
 * still to come). At every checkpoint's size the state digest must be the signed one. */
static int replay_check(struct replay *r)
{
	struct tally_digest d;
	if (tally_ledger_digest(r->l, &d) != 0)
		return replay_fail(r, "the replayed ledger cannot be read");
	r->produced = d.tree_size;
	if (r->produced > r->journal.size)
		return replay_diverged(r); /* replay made entries the journal does not have there */
	if (r->produced < r->journal.size)
		return 0;
	uint8_t root[TALLY_HASH_BYTES];
	tally_merkle_frontier_root(&r->journal, root);
	if (memcmp(root, d.root, TALLY_HASH_BYTES) != 0)
		return replay_diverged(r);
	r->matched = r->produced;
	for (; r->next_cp < r->n_cps && r->cps[r->next_cp].c.tree_size <= r->matched; r->next_cp++) {
		const struct audit_checkpoint *cp = &r->cps[r->next_cp];
		if (cp->c.tree_size == r->matched &&
		    memcmp(cp->c.state_digest, d.state_digest, TALLY_HASH_BYTES) != 0)
			return replay_fail(r, "the state after entry %" PRIu64 " is not %s's: its state "
					   "digest differs", r->matched, cp->file);
	}
	return 0;
}

/* One batch of the pending commands (none: an empty batch) at time_ms; each command
 * must come to the outcome the journal recorded. */
static int replay_apply(struct replay *r, int64_t time_ms)
{
	Tally__V1__Batch b = TALLY__V1__BATCH__INIT;
	b.raft_index = ++r->raft_index;
	b.raft_term = 1;
	b.time_ms = time_ms;
	b.commands = r->pending;
	b.n_commands = r->n_pending;
	Tally__V1__CommandResult **results;
	bool skipped;
	tally_arena_reset(&r->results);
	int rc = tally_ledger_apply_batch(r->l, &b, &r->results, &results, &skipped);
	if (rc != 0 || skipped)
		return replay_fail(r, "the ledger could not apply a batch: %s", tally_strerror(rc));
	for (size_t i = 0; i < r->n_pending; i++)
		if (results[i]->code != r->pending_code[i])
			return replay_fail(r, "replay diverges at entry %" PRIu64 ": the journal's "
					   "command came to %s, replay's to %s", r->pending_seq[i],
					   tally_result_name(r->pending_code[i]),
					   tally_result_name(results[i]->code));
	r->n_pending = 0;
	tally_arena_reset(&r->pending_arena);
	return replay_check(r);
}

static int replay_flush(struct replay *r)
{
	return r->n_pending == 0 ? 0 : replay_apply(r, r->pending_ms);
}

/* ---- the walk ------------------------------------------------------------------------- */

static int no_put(void *ctx, unsigned level, uint64_t index, const uint8_t hash[TALLY_HASH_BYTES])
{
	(void)ctx, (void)level, (void)index, (void)hash;
	return 0;
}

/* A COMMAND entry joins the batch of its time (decoded again into the batch's arena,
 * where it lives until the batch is applied). */
static int replay_pend(struct replay *r, uint64_t seq, int64_t time_ms, const uint8_t *bytes,
		       size_t len)
{
	if (r->n_pending > 0 && (r->pending_ms != time_ms || r->n_pending == REPLAY_BATCH_MAX)) {
		int rc = replay_flush(r);
		if (rc != 0)
			return rc;
	}
	uint8_t *copy = tally_arena_alloc(&r->pending_arena, len ? len : 1);
	Tally__V1__Entry *e = copy == NULL ? NULL : (memcpy(copy, bytes, len),
		tally__v1__entry__unpack(tally_arena_protobuf(&r->pending_arena), len, copy));
	if (e == NULL)
		return replay_fail(r, "out of memory");
	r->pending[r->n_pending] = e->command;
	r->pending_seq[r->n_pending] = seq;
	r->pending_code[r->n_pending++] = e->result->code;
	r->pending_ms = time_ms;
	return 0;
}

static int replay_entry(struct replay *r, struct tally_arena *scratch, uint64_t seq,
			const uint8_t *bytes, size_t len)
{
	tally_arena_reset(scratch);
	const Tally__V1__Entry *e = tally__v1__entry__unpack(tally_arena_protobuf(scratch), len, bytes);
	if (e == NULL)
		return replay_fail(r, "entry %" PRIu64 ": does not decode (run verify)", seq);
	if (e->seq != seq)
		return replay_fail(r, "entry %" PRIu64 " of the journal says it is entry %" PRIu64
				   " (run verify)", seq, e->seq);
	uint8_t leaf[TALLY_HASH_BYTES];
	const struct tally_merkle_store store = {.put = no_put};
	tally_merkle_leaf_hash(bytes, len, leaf);
	if (tally_merkle_append(&r->journal, &store, leaf) != 0)
		return replay_fail(r, "the journal's tree is full");
	int rc = 0;
	if (seq <= r->produced) /* made already, by a batch of commands after it */
		rc = replay_check(r);
	else if (e->kind == TALLY__V1__ENTRY_KIND__COMMAND && e->command != NULL && e->result != NULL)
		rc = replay_pend(r, seq, e->time_ms, bytes, len);
	else { /* a release or an expiry: made at a batch's start, or by a command to come */
		int64_t time_ms = e->time_ms;
		rc = replay_flush(r);
		if (rc == 0 && r->produced < seq)
			rc = replay_apply(r, time_ms);
	}
	/* a checkpoint ends at a batch's end: its state is compared there */
	if (rc == 0 && r->next_cp < r->n_cps && r->cps[r->next_cp].c.tree_size == seq)
		rc = replay_flush(r);
	return rc;
}

static int replay_walk(struct replay *r)
{
	struct audit_reader rd;
	struct tally_arena scratch;
	if (audit_reader_open(r->o->dir, &rd, r->err, sizeof(r->err)) != 0)
		return -1;
	tally_arena_init(&scratch, 64 << 10, 0);
	uint64_t total = r->n_cps > 0 ? r->cps[r->n_cps - 1].c.tree_size : 0;
	int rc = 0;
	for (;;) {
		uint64_t seq;
		const uint8_t *bytes;
		size_t len;
		int got = audit_reader_next(&rd, &seq, &bytes, &len, r->err, sizeof(r->err));
		if (got <= 0) {
			rc = got;
			break;
		}
		rc = replay_entry(r, &scratch, seq, bytes, len);
		if (rc != 0)
			break;
		if ((seq & 0xfff) == 0)
			audit_progress("replay", seq, total);
	}
	audit_progress_done();
	if (rc == 0)
		rc = replay_flush(r);
	if (rc == 0 && r->produced != r->journal.size)
		rc = replay_diverged(r);
	tally_arena_free(&scratch);
	audit_reader_close(&rd);
	return rc;
}

static void replay_report(const struct replay *r, double secs)
{
	const struct audit_checkpoint *last = &r->cps[r->n_cps - 1];
	char root[2 * TALLY_HASH_BYTES + 1], digest[2 * TALLY_HASH_BYTES + 1];
	tally_hex_encode(last->c.root, TALLY_HASH_BYTES, root);
	tally_hex_encode(last->c.state_digest, TALLY_HASH_BYTES, digest);
	double rate = secs > 0 ? (double)r->journal.size / secs : 0;
	if (r->o->json)
		printf("{\"replayed\":true,\"entries\":%" PRIu64 ",\"batches\":%" PRIu64 ",\"checkpoints\":"
		       "%zu,\"root\":\"%s\",\"state_digest\":\"%s\",\"seconds\":%.3f,\"entries_per_s\":"
		       "%.0f}\n", r->journal.size, r->raft_index, r->n_cps, root, digest, secs, rate);
	else
		printf("replayed %" PRIu64 " entries in %" PRIu64 " batches into %s in %.2f s (%.0f "
		       "entries/s)\nthe root and the state digest equal those of all %zu checkpoints; "
		       "at %s: root %s, state digest %s\n", r->journal.size, r->raft_index, r->o->out,
		       secs, rate, r->n_cps, last->file, root, digest);
}

int audit_replay(const struct audit_opts *o)
{
	if (o->out == NULL) {
		fprintf(stderr, "tally-audit: replay needs --out LEDGERDIR (a new directory)\n");
		return AUDIT_EXIT_USAGE;
	}
	struct replay *r = calloc(1, sizeof(*r));
	if (r == NULL)
		return AUDIT_EXIT_FAILED;
	r->o = o;
	tally_merkle_frontier_init(&r->journal);
	tally_arena_init(&r->pending_arena, 1 << 20, 0);
	tally_arena_init(&r->results, 1 << 20, 0);
	double t0 = audit_now_s();
	struct tally_ledger_options lo = {.nosync = true, .writemap = true};
	int rc = audit_checkpoints_load(o->dir, &r->cps, &r->n_cps, r->err, sizeof(r->err));
	if (rc == 0 && r->n_cps == 0)
		rc = replay_fail(r, "%s/checkpoints: no checkpoint to replay to", o->dir);
	if (rc == 0 && mkdir(o->out, 0755) != 0)
		rc = replay_fail(r, "%s: %s (replay makes a new ledger)", o->out, strerror(errno));
	if (rc == 0 && tally_ledger_open(o->out, &lo, &r->l) != 0)
		rc = replay_fail(r, "%s: the ledger cannot be opened", o->out);
	if (rc == 0)
		rc = replay_walk(r);
	if (rc == 0 && r->next_cp < r->n_cps)
		rc = replay_fail(r, "%s covers %" PRIu64 " entries; the journal holds %" PRIu64,
				 r->cps[r->next_cp].file, r->cps[r->next_cp].c.tree_size, r->journal.size);
	if (rc == 0)
		replay_report(r, audit_now_s() - t0);
	else
		fprintf(stderr, "tally-audit: replay: FAILED: %s\n", r->err);
	tally_ledger_close(r->l);
	tally_arena_free(&r->pending_arena);
	tally_arena_free(&r->results);
	free(r->cps);
	free(r);
	return rc == 0 ? AUDIT_EXIT_OK : AUDIT_EXIT_FAILED;
}
