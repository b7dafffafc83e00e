/*
 * tally-audit pull — fetches a signed checkpoint, then every entry up to it that DIR
 * does not hold yet, through the client API with an auditor's key (scope *).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ledger/arena.h"
#include "ledger/error.h"
#include "ledger/ledger.h"
#include "tools/audit/audit.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name

struct pull {
	const struct audit_opts *o;
	struct tally_client *client;
	struct tally_arena arena;
	struct audit_writer w;
	char err[512];
};

static int pull_query(struct pull *p, Tally__V1__Query *q, Tally__V1__QueryResult **res)
{
	tally_arena_reset(&p->arena);
	q->stale = p->o->stale;
	Tally__V1__ResultCode rc = tally_client_query(p->client, q, &p->arena, res);
	if (rc != CODE(OK)) {
		snprintf(p->err, sizeof(p->err), "%s: %s", tally_result_name(rc),
			 tally_client_error(p->client));
		return AUDIT_EXIT_UNAVAILABLE;
	}
	if ((*res)->code != CODE(OK)) {
		snprintf(p->err, sizeof(p->err), "%s: %s", tally_result_name((*res)->code),
			 (*res)->message);
		return AUDIT_EXIT_FAILED;
	}
	return 0;
}

/* The cluster's signed checkpoint, with a consistency proof from DIR's last one. */
static int pull_checkpoint(struct pull *p, struct tally_checkpoint *c,
			   struct tally_checkpoint_proof *proof)
{
	uint64_t prev = audit_checkpoint_last(p->o->dir);
	Tally__V1__GetCheckpoint g = TALLY__V1__GET_CHECKPOINT__INIT;
	g.old_size = prev;
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	q.q_case = TALLY__V1__QUERY__Q_CHECKPOINT;
	q.checkpoint = &g;
	Tally__V1__QueryResult *res;
	int rc = pull_query(p, &q, &res);
	if (rc != 0)
		return rc;
	if (tally_checkpoint_from_proto(res, c, proof) != 0 || tally_checkpoint_verify(c) != 0 ||
	    (prev != 0 && proof->from != prev)) {
		snprintf(p->err, sizeof(p->err), "node %" PRIu64 " sent a checkpoint that does not "
			 "verify (fields, signature or proof)", res->checkpoint ? res->checkpoint->node_id : 0);
		return AUDIT_EXIT_FAILED;
	}
	return 0;
}

/* Entries from w.next_seq through tree_size, a page at a time. */
static int pull_entries(struct pull *p, uint64_t tree_size)
{
	uint64_t first = p->w.next_seq;
	while (p->w.next_seq <= tree_size) {
		uint64_t want = tree_size - p->w.next_seq + 1;
		Tally__V1__ListEntries g = TALLY__V1__LIST_ENTRIES__INIT;
		g.from_seq = p->w.next_seq;
		g.limit = (uint32_t)(want < AUDIT_PAGE_ENTRIES ? want : AUDIT_PAGE_ENTRIES);
		Tally__V1__Query q = TALLY__V1__QUERY__INIT;
		q.q_case = TALLY__V1__QUERY__Q_ENTRIES;
		q.entries = &g;
		Tally__V1__QueryResult *res;
		int rc = pull_query(p, &q, &res);
		if (rc != 0)
			return rc;
		if (res->n_entries == 0) {
			snprintf(p->err, sizeof(p->err), "the node has no entry %" PRIu64
				 " although its checkpoint covers %" PRIu64, p->w.next_seq, tree_size);
			return AUDIT_EXIT_FAILED;
		}
		for (size_t i = 0; i < res->n_entries && p->w.next_seq <= tree_size; i++) {
			const Tally__V1__StoredEntry *e = res->entries[i];
			if (e->seq != p->w.next_seq) {
				snprintf(p->err, sizeof(p->err), "asked for entry %" PRIu64 ", got %" PRIu64,
					 p->w.next_seq, e->seq);
				return AUDIT_EXIT_FAILED;
			}
			if (audit_writer_append(&p->w, e->entry.data, e->entry.len, p->err,
						sizeof(p->err)) != 0)
				return AUDIT_EXIT_FAILED;
		}
		audit_progress("pull", p->w.next_seq - first, tree_size - first + 1);
	}
	audit_progress_done();
	return 0;
}

static void pull_report(const struct audit_opts *o, uint64_t fetched, const struct tally_checkpoint *c,
			double secs)
{
	double rate = secs > 0 ? (double)fetched / secs : 0;
	if (o->json)
		printf("{\"fetched\":%" PRIu64 ",\"tree_size\":%" PRIu64 ",\"node_id\":%" PRIu64
		       ",\"checkpoint\":\"checkpoints/%" PRIu64 ".json\",\"seconds\":%.3f,"
		       "\"entries_per_s\":%.0f}\n",
		       fetched, c->tree_size, c->node_id, c->tree_size, secs, rate);
	else
		printf("pulled %" PRIu64 " new entr%s (journal now %" PRIu64 " entries) in %.2f s, "
		       "%.0f entries/s; checkpoint of node %" PRIu64 " in %s/checkpoints/%" PRIu64 ".json\n",
		       fetched, fetched == 1 ? "y" : "ies", c->tree_size, secs, rate, c->node_id, o->dir,
		       c->tree_size);
}

int audit_pull(const struct audit_opts *o)
{
	struct pull p = {.o = o};
	struct tally_client_options co = {.timeout_ms = 30000, .attempts = 20};
	if (audit_writer_open(o->dir, &p.w, p.err, sizeof(p.err)) != 0) {
		fprintf(stderr, "tally-audit: %s\n", p.err);
		return AUDIT_EXIT_FAILED;
	}
	Tally__V1__ResultCode crc = tally_connect_open(&o->conn, "tally-audit", "auditor", co,
						       &p.client, p.err, sizeof(p.err));
	if (crc != CODE(OK)) {
		fprintf(stderr, "tally-audit: %s\n", p.err);
		audit_writer_close(&p.w, p.err, sizeof(p.err));
		return crc == CODE(INVALID_ARGUMENT) ? AUDIT_EXIT_USAGE : AUDIT_EXIT_UNAVAILABLE;
	}
	tally_arena_init(&p.arena, 1 << 20, 0);
	double t0 = audit_now_s();
	uint64_t had = p.w.next_seq - 1;
	struct tally_checkpoint c;
	struct tally_checkpoint_proof *proof = calloc(1, sizeof(*proof));
	int rc = proof == NULL ? AUDIT_EXIT_FAILED : pull_checkpoint(&p, &c, proof);
	if (rc == 0 && had > c.tree_size) {
		snprintf(p.err, sizeof(p.err), "DIR holds %" PRIu64 " entries, the cluster's checkpoint "
			 "only %" PRIu64 ": not this cluster's journal, or its history was cut", had,
			 c.tree_size);
		rc = AUDIT_EXIT_FAILED;
	}
	if (rc == 0)
		rc = pull_entries(&p, c.tree_size);
	if (audit_writer_close(&p.w, p.err, sizeof(p.err)) != 0 && rc == 0)
		rc = AUDIT_EXIT_FAILED;
	if (rc == 0 && audit_checkpoint_save(o->dir, &c, proof, p.err, sizeof(p.err)) != 0)
		rc = AUDIT_EXIT_FAILED;
	if (rc == 0)
		pull_report(o, c.tree_size - had, &c, audit_now_s() - t0);
	else
		fprintf(stderr, "tally-audit: pull: %s\n", p.err);
	free(proof);
	tally_arena_free(&p.arena);
	tally_client_close(p.client);
	return rc;
}
