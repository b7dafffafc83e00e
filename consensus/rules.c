/*
 * consensus/rules — the cluster's set_rules commands (ledger.h, "Rules").
 *
 * The rules a ledger applies change only at a set_rules entry of its journal, so that
 * every replica, and every replay of the journal, switches at the same command. The
 * cluster proposes one itself (role SYSTEM), in two cases:
 *  - a new ledger: its leader, once ready, proposes the newest rules this binary has
 *    while the journal is still empty, so a ledger begun now is under the newest rules
 *    from its first entries;
 *  - a ledger begun under older rules: only when an operator asks (Admin RULES,
 *    `tallyctl rules upgrade`), after every node runs a binary that has the rules. A
 *    node whose binary lacks them stops at the entry (fail-stop, TALLY_EVERSION)
 *    rather than apply other rules than its peers, so switching on its own in the
 *    middle of a rolling upgrade would stop the nodes not yet upgraded.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

#include "consensus/internal.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name

static void rules_submit(struct tally_node *n, uint32_t version, tally_node_result_cb cb,
			 void *data)
{
	assert(version >= TALLY_RULES_FIRST && version <= TALLY_RULES_CURRENT);
	char request_id[64]; /* a label only: set_rules is not idempotency-claimed */
	snprintf(request_id, sizeof(request_id), "rules-%u-%llu-%llu", (unsigned)version,
		 (unsigned long long)n->leader_term, (unsigned long long)++n->rules_count);
	Tally__V1__SetRules m = TALLY__V1__SET_RULES__INIT;
	m.version = version;
	Tally__V1__Command cmd = TALLY__V1__COMMAND__INIT;
	cmd.request_id = request_id;
	cmd.body_case = TALLY__V1__COMMAND__BODY_SET_RULES;
	cmd.set_rules = &m;
	node_submit_as_system(n, &cmd, cb, data);
}

static void rules_new_done(void *data, const Tally__V1__CommandResult *r)
{
	struct tally_node *n = data;
	assert(n != NULL && r != NULL && n->rules_busy);
	n->rules_busy = false;
	if (r->code == CODE(OK))
		node_log(n, "the new ledger applies rules %u", (unsigned)TALLY_RULES_CURRENT);
	else if (r->code != CODE(NOT_LEADER) && r->code != CODE(UNAVAILABLE) &&
		 r->code != CODE(TIMEOUT))
		node_log(n, "set_rules on the new ledger refused: %s %s",
			 tally_result_name(r->code), r->message);
}

void node_rules_maybe(struct tally_node *n)
{
	assert(n != NULL);
	if (n->rules_busy || !node_leader_ready(n) || n->rules_term == n->leader_term)
		return;
	struct tally_ledger *l = node_ledger(n);
	if (tally_ledger_rules(l) >= TALLY_RULES_CURRENT || tally_ledger_journal_size(l) != 0)
		return;
	n->rules_term = n->leader_term; /* once a term: a refusal is not retried every tick */
	n->rules_busy = true;
	rules_submit(n, TALLY_RULES_CURRENT, rules_new_done, n);
}

struct rules_call {
	tally_node_admin_cb cb;
	void *data;
};

static void rules_asked_done(void *data, const Tally__V1__CommandResult *r)
{
	struct rules_call *k = data;
	assert(k != NULL && r != NULL);
	k->cb(k->data, r->code, r->message);
	free(k);
}

void tally_node_rules(struct tally_node *n, uint32_t version, tally_node_admin_cb cb, void *data)
{
	assert(n != NULL && cb != NULL);
	if (version == 0)
		version = TALLY_RULES_CURRENT;
	if (version > TALLY_RULES_CURRENT) {
		char msg[96];
		snprintf(msg, sizeof(msg), "rules: this node has rules %d to %d", TALLY_RULES_FIRST,
			 TALLY_RULES_CURRENT);
		cb(data, CODE(INVALID_ARGUMENT), msg);
		return;
	}
	struct rules_call *k = malloc(sizeof(*k));
	if (k == NULL) {
		cb(data, CODE(UNAVAILABLE), "node out of memory");
		return;
	}
	k->cb = cb;
	k->data = data;
	rules_submit(n, version, rules_asked_done, k);
}
