/*
 * consensus/admin — membership changes, leadership transfer and status.
 *
 * Each admin call wraps one raft request; raft calls every request back exactly once
 * (raft_close fails the outstanding ones), so each wrapper is freed in its callback.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "consensus/internal.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name

struct node_admin {
	union {
		struct raft_change change;
		struct raft_transfer transfer;
	} req;
	struct tally_node *n;
	tally_node_admin_cb cb;
	void *data;
};

static const char *const role_names[] = {
	[RAFT_STANDBY] = "standby", [RAFT_VOTER] = "voter", [RAFT_SPARE] = "spare"};

static const char *const state_names[] = {
	[RAFT_UNAVAILABLE] = "unavailable", [RAFT_FOLLOWER] = "follower",
	[RAFT_CANDIDATE] = "candidate", [RAFT_LEADER] = "leader"};

static const char *role_name(int role)
{
	return role >= 0 && role <= RAFT_SPARE ? role_names[role] : "unknown";
}

static const struct raft_server *config_get(struct tally_node *n, raft_id id)
{
	assert(n != NULL);
	const struct raft_configuration *c = &n->raft->configuration;
	for (unsigned i = 0; i < c->n; i++)
		if (c->servers[i].id == id)
			return &c->servers[i];
	return NULL;
}

void node_leader_client(struct tally_node *n, char *buf, size_t cap)
{
	assert(n != NULL && buf != NULL && cap > 0);
	buf[0] = '\0';
	if (!n->raft_inited || n->phase >= NODE_RAFT_CLOSE)
		return;
	raft_id id = 0;
	const char *address = NULL;
	raft_leader(n->raft, &id, &address);
	if (id == 0)
		return;
	/* The configuration holds the full "raft|client" address of every server. */
	const struct raft_server *s = config_get(n, id);
	const char *full = s != NULL ? s->address : address;
	if (full == NULL || tally_address_client(full, buf, cap) != 0)
		buf[0] = '\0';
}

bool node_has_other_voters(struct tally_node *n)
{
	assert(n != NULL && n->raft_inited);
	const struct raft_configuration *c = &n->raft->configuration;
	for (unsigned i = 0; i < c->n; i++)
		if (c->servers[i].id != n->cfg.id && c->servers[i].role == RAFT_VOTER)
			return true;
	return false;
}

/* Starts an admin request or answers at once (UNAVAILABLE: nothing was started). */
static struct node_admin *admin_new(struct tally_node *n, tally_node_admin_cb cb, void *data)
{
	assert(n != NULL && cb != NULL);
	if (n->phase != NODE_OPEN || !n->started) {
		cb(data, CODE(UNAVAILABLE), "node is not running");
		return NULL;
	}
	struct node_admin *a = calloc(1, sizeof(*a));
	if (a == NULL) {
		cb(data, CODE(UNAVAILABLE), "out of memory");
		return NULL;
	}
	a->n = n;
	a->cb = cb;
	a->data = data;
	return a;
}

/* What a raft call that refused to start a request (rv != 0) tells the caller: raft
 * changed nothing, so every answer here is definite. Raft checks "a change is under
 * way" before it looks at the ids, so ALREADY_EXISTS and NOT_FOUND describe a
 * committed configuration. */
static Tally__V1__ResultCode admin_refusal(struct tally_node *n, int rv, const char **msg)
{
	assert(n != NULL && msg != NULL);
	assert(rv != 0);
	/* raft_errmsg() is not reset by every refusal, so the messages are ours. */
	*msg = raft_strerror(rv);
	switch (rv) {
	case RAFT_NOTLEADER:
		if (tally_node_is_leader(n)) {
			*msg = "leadership transfer under way";
			return CODE(UNAVAILABLE);
		}
		*msg = tally_node_leader_client(n);
		return CODE(NOT_LEADER);
	case RAFT_DUPLICATEID:
	case RAFT_DUPLICATEADDRESS:
		*msg = "a node with that id or address is already in the configuration";
		return CODE(ALREADY_EXISTS);
	case RAFT_BADROLE: /* the role is checked first: raft means "already has it" */
		*msg = "the node already has that role";
		return CODE(ALREADY_EXISTS);
	case RAFT_BADID:
	case RAFT_NOTFOUND:
		*msg = "no such node in the configuration";
		return CODE(NOT_FOUND);
	case RAFT_INVALID:
		return CODE(INVALID_ARGUMENT);
	case RAFT_CANTCHANGE:
		*msg = "a configuration change is under way: retry";
		return CODE(UNAVAILABLE);
	case RAFT_NOMEM:
	case RAFT_SHUTDOWN:
	case RAFT_BUSY:
	case RAFT_TOOMANY:
	case RAFT_NOCONNECTION:
		return CODE(UNAVAILABLE);
	default:
		return CODE(INTERNAL);
	}
}

static void admin_started(struct node_admin *a, int rv)
{
	assert(a != NULL);
	if (rv == 0) {
		a->n->admins_pending++;
		return;
	}
	const char *msg = NULL;
	Tally__V1__ResultCode code = admin_refusal(a->n, rv, &msg);
	a->cb(a->data, code, msg);
	free(a);
}

/* Raft took the change and reports how it ended. A failure after the start is an
 * unknown outcome (the entry may be in the log and committed by the next leader),
 * except an aborted promotion: raft gives up on a node that does not catch up before
 * it appends anything. */
static void admin_change_cb(struct raft_change *req, int status)
{
	struct node_admin *a = req->data;
	assert(a != NULL && a->n->admins_pending > 0);
	a->n->admins_pending--;
	if (status == 0)
		a->cb(a->data, CODE(OK), "ok");
	else if (status == RAFT_NOCONNECTION)
		a->cb(a->data, CODE(UNAVAILABLE), "the node did not catch up: not promoted");
	else
		a->cb(a->data, CODE(TIMEOUT), "outcome unknown: read the status or retry");
	free(a);
}

void tally_node_add(struct tally_node *n, uint64_t id, const char *address,
		    tally_node_admin_cb cb, void *data)
{
	assert(n != NULL && address != NULL);
	struct node_admin *a = admin_new(n, cb, data);
	if (a == NULL)
		return;
	a->req.change.data = a;
	char raft_part[TALLY_ADDRESS_BYTES_MAX + 1];
	int rv = tally_address_raft(address, raft_part, sizeof(raft_part));
	if (rv == 0 && (id == 0 || raft_part[0] == '\0'))
		rv = RAFT_INVALID;
	if (rv == 0)
		rv = raft_add(n->raft, &a->req.change, id, address, admin_change_cb);
	admin_started(a, rv);
}

void tally_node_assign(struct tally_node *n, uint64_t id, int role, tally_node_admin_cb cb,
		       void *data)
{
	assert(n != NULL);
	struct node_admin *a = admin_new(n, cb, data);
	if (a == NULL)
		return;
	a->req.change.data = a;
	if (role < RAFT_STANDBY || role > RAFT_SPARE) {
		cb(data, CODE(INVALID_ARGUMENT), "role: 0 standby, 1 voter or 2 spare");
		free(a);
		return;
	}
	admin_started(a, raft_assign(n->raft, &a->req.change, id, role, admin_change_cb));
}

void tally_node_remove(struct tally_node *n, uint64_t id, tally_node_admin_cb cb, void *data)
{
	assert(n != NULL);
	struct node_admin *a = admin_new(n, cb, data);
	if (a == NULL)
		return;
	a->req.change.data = a;
	admin_started(a, raft_remove(n->raft, &a->req.change, id, admin_change_cb));
}

/* raft_transfer_cb: raft reports no status; success means the target now leads.
 * Otherwise the target may still win the election it was asked to start: unknown. */
static void admin_transfer_cb(struct raft_transfer *req)
{
	struct node_admin *a = req->data;
	assert(a != NULL && a->n->admins_pending > 0);
	struct tally_node *n = a->n;
	n->admins_pending--;
	raft_id leader = 0;
	const char *address = NULL;
	if (n->phase < NODE_RAFT_CLOSE)
		raft_leader(n->raft, &leader, &address);
	char msg[96];
	snprintf(msg, sizeof(msg), "leadership has not moved to node %llu yet: outcome unknown",
		 req->id);
	a->cb(a->data, leader == req->id ? CODE(OK) : CODE(TIMEOUT), leader == req->id ? "ok" : msg);
	node_kick(n);
	free(a);
}

void tally_node_transfer(struct tally_node *n, uint64_t id, tally_node_admin_cb cb, void *data)
{
	assert(n != NULL);
	struct node_admin *a = admin_new(n, cb, data);
	if (a == NULL)
		return;
	a->req.transfer.data = a;
	int rv = raft_transfer(n->raft, &a->req.transfer, id, admin_transfer_cb);
	if (rv == RAFT_BADID) { /* raft's word for "not a voter other than the leader" */
		cb(data, CODE(INVALID_ARGUMENT), "the target is not a voter other than the leader");
		free(a);
		return;
	}
	admin_started(a, rv);
}

size_t tally_node_peers(struct tally_node *n, struct tally_node_peer *out, size_t cap)
{
	assert(n != NULL && (out != NULL || cap == 0));
	if (!n->raft_inited || n->phase >= NODE_RAFT_CLOSE)
		return 0;
	const struct raft_configuration *c = &n->raft->configuration;
	size_t k = 0;
	for (unsigned i = 0; i < c->n && k < cap; i++) {
		const struct raft_server *s = &c->servers[i];
		if (s->id == n->cfg.id || s->address == NULL ||
		    tally_address_client(s->address, out[k].client, sizeof(out[k].client)) != 0 ||
		    out[k].client[0] == '\0')
			continue;
		out[k++].id = s->id;
	}
	return k;
}

/* One NodeInfo in `arena` from a configuration entry. */
static Tally__V1__NodeInfo *status_node(struct tally_arena *arena, raft_id id,
					const char *address, int role)
{
	assert(arena != NULL && address != NULL);
	Tally__V1__NodeInfo *ni = tally_arena_alloc(arena, sizeof(*ni));
	char raft_part[TALLY_ADDRESS_BYTES_MAX + 1], client[TALLY_ADDRESS_BYTES_MAX + 1];
	if (ni == NULL || tally_address_raft(address, raft_part, sizeof(raft_part)) != 0 ||
	    tally_address_client(address, client, sizeof(client)) != 0)
		return NULL;
	tally__v1__node_info__init(ni);
	ni->id = id;
	ni->address = tally_arena_strdup(arena, raft_part);
	ni->client_address = tally_arena_strdup(arena, client);
	ni->role = (char *)role_name(role);
	return ni->address != NULL && ni->client_address != NULL ? ni : NULL;
}

void tally_node_status(struct tally_node *n, struct tally_arena *arena, Tally__V1__Status *out)
{
	assert(n != NULL && arena != NULL && out != NULL);
	tally__v1__status__init(out);
	out->node_id = n->cfg.id;
	struct tally_ledger *l = node_ledger(n);
	out->applied_index = l != NULL ? tally_ledger_applied_index(l) : 0;
	out->rules = l != NULL ? tally_ledger_rules(l) : 0;
	out->rules_max = TALLY_RULES_CURRENT;
	bool live = n->raft_inited && n->phase < NODE_RAFT_CLOSE;
	int state = live ? raft_state(n->raft) : RAFT_UNAVAILABLE;
	out->state = (char *)(state >= 0 && state <= RAFT_LEADER ? state_names[state] : "unknown");
	if (!live)
		return;
	out->term = n->raft->current_term;
	const struct raft_configuration *c = &n->raft->configuration;
	out->nodes = tally_arena_alloc(arena, (c->n > 0 ? c->n : 1) * sizeof(*out->nodes));
	for (unsigned i = 0; out->nodes != NULL && i < c->n; i++) {
		const struct raft_server *s = &c->servers[i];
		Tally__V1__NodeInfo *ni = status_node(arena, s->id, s->address, s->role);
		if (ni != NULL)
			out->nodes[out->n_nodes++] = ni;
	}
	raft_id id = 0;
	const char *address = NULL;
	raft_leader(n->raft, &id, &address);
	const struct raft_server *s = id != 0 ? config_get(n, id) : NULL;
	if (s != NULL)
		out->leader = status_node(arena, s->id, s->address, s->role);
}
