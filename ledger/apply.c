/*
 * Applying a batch: one result per command, one journal entry per applied command, in
 * one LMDB write transaction of its own or shared with the batches around it (a group,
 * tally_ledger_apply_group): a batch writes the same records either way.
 *
 * Order inside a batch (every replica follows it):
 *   1. skip the batch if its raft index is not above the applied one;
 *   2. now = max(batch time, previous batch time): time never runs backwards;
 *   3. release the open holds whose timeout is at or before now (HOLD_RELEASED),
 *      oldest first, at most TALLY_HOLD_RELEASES_PER_BATCH_MAX (the rest wait for the
 *      next batches; capture and void release a timed-out hold they name);
 *   4. each command in order: envelope → role → idempotency → handler;
 *   5. write the system accounts' movements of the batch.
 * Then, once per transaction: store the applied index (of its last batch), the tree
 * frontier and the digest; commit.
 */
#include <assert.h>
#include <string.h>

#include "ledger/internal.h"

static const handler_fn handlers[] = {
	[TALLY__V1__COMMAND__BODY_REGISTER_BRAND] = do_register_brand,
	[TALLY__V1__COMMAND__BODY_UPDATE_BRAND] = do_update_brand,
	[TALLY__V1__COMMAND__BODY_OPEN_MEMBER] = do_open_member,
	[TALLY__V1__COMMAND__BODY_UPDATE_MEMBER] = do_update_member,
	[TALLY__V1__COMMAND__BODY_ACCRUE] = do_accrue,
	[TALLY__V1__COMMAND__BODY_REDEEM] = do_redeem,
	[TALLY__V1__COMMAND__BODY_HOLD] = do_hold,
	[TALLY__V1__COMMAND__BODY_CAPTURE] = do_capture,
	[TALLY__V1__COMMAND__BODY_VOID] = do_void,
	[TALLY__V1__COMMAND__BODY_REVERSE] = do_reverse,
	[TALLY__V1__COMMAND__BODY_TRANSFER] = do_transfer,
	[TALLY__V1__COMMAND__BODY_SET_AGREEMENT] = do_set_agreement,
	[TALLY__V1__COMMAND__BODY_EXCHANGE] = do_exchange,
	[TALLY__V1__COMMAND__BODY_SETTLE] = do_settle,
	[TALLY__V1__COMMAND__BODY_CONFIRM_SETTLEMENT] = do_confirm_settlement,
	[TALLY__V1__COMMAND__BODY_ADJUST] = do_adjust,
	[TALLY__V1__COMMAND__BODY_EXPIRE] = do_expire,
	[TALLY__V1__COMMAND__BODY_IMPORT_POINTS] = do_import_points,
	[TALLY__V1__COMMAND__BODY_SET_RULES] = do_set_rules,
};

#define HANDLERS_N (sizeof(handlers) / sizeof(handlers[0]))

static const char *enum_name(const ProtobufCEnumDescriptor *d, int v)
{
	const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(d, v);
	return ev != NULL ? ev->name : "?";
}

static const char *body_name(Tally__V1__Command__BodyCase body)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field(&tally__v1__command__descriptor, body);
	return f != NULL ? f->name : "?";
}

/* ---- entries ---------------------------------------------------------------------- */

uint64_t next_seq(const struct apply *a)
{
	return a->m.tree.size + 1;
}

static Tally__V1__Posting *posting_new(struct apply *a, const char *brand, int64_t points)
{
	assert(a->n_postings < POSTINGS_MAX);
	assert(points != 0);
	Tally__V1__Posting *p = &a->postings[a->n_postings++];
	tally__v1__posting__init(p);
	p->brand = (char *)brand;
	p->points = points;
	return p;
}

int post_member(struct apply *a, const char *brand, const char *member,
		Tally__V1__Bucket bucket, int64_t points)
{
	assert(member != NULL);
	if (points == 0)
		return 0;
	Tally__V1__Posting *p = posting_new(a, brand, points);
	p->account = TALLY__V1__SYSTEM_ACCOUNT__MEMBER;
	p->member = (char *)member;
	p->bucket = bucket;
	return 0;
}

/* Records the posting and moves the system account's balance with it, so the two
 * can never disagree. */
int post_system(struct apply *a, const char *brand, Tally__V1__SystemAccount acct,
		const char *partner, int64_t points)
{
	assert(acct != TALLY__V1__SYSTEM_ACCOUNT__MEMBER);
	if (points == 0)
		return 0;
	Tally__V1__Posting *p = posting_new(a, brand, points);
	p->account = acct;
	p->partner = (char *)(partner != NULL ? partner : "");
	struct key k;
	key_reset(&k);
	key_str(&k, brand);
	key_u8(&k, (uint8_t)acct);
	key_raw(&k, p->partner);
	/* System accounts are hot (every accrual of a brand moves its issuance) and no
	 * command reads them: gather the batch's movements, write each row once. */
	for (size_t i = 0; i < a->n_sys; i++) {
		if (a->sys[i].k.n == k.n && memcmp(a->sys[i].k.b, k.b, k.n) == 0) {
			a->sys[i].delta += points;
			return 0;
		}
	}
	if (a->n_sys == SYS_DELTAS_MAX) {
		int rc = sys_flush(a);
		if (rc != 0)
			return rc;
	}
	a->sys[a->n_sys].k = k;
	a->sys[a->n_sys].delta = points;
	a->n_sys++;
	return 0;
}

int sys_flush(struct apply *a)
{
	int rc = 0;
	for (size_t i = 0; rc == 0 && i < a->n_sys; i++) {
		int64_t bal;
		rc = st_get_i64(a, T_SYSACCT, &a->sys[i].k, &bal);
		/* |balance| stays far below INT64 limits: every movement is bounded by
		 * points limits and member balances by TALLY_BALANCE_MAX. */
		if (rc == 0 && (bal > INT64_MAX / 2 || bal < INT64_MIN / 2))
			rc = TALLY_ERANGE;
		uint8_t b[8];
		be64_put(b, (uint64_t)(bal + a->sys[i].delta));
		if (rc == 0)
			rc = st_put(a, T_SYSACCT, &a->sys[i].k, b, 8); /* kept at 0: a stable row */
	}
	a->n_sys = 0;
	return rc;
}

int lot_move(struct apply *a, int64_t expiry_ms, int64_t points)
{
	assert(points > 0);
	if (a->n_lots == a->cap_lots) {
		size_t cap = a->cap_lots == 0 ? 16 : a->cap_lots * 2;
		Tally__V1__LotMove **n = tally_arena_alloc(a->tmp, cap * sizeof(*n));
		if (n == NULL)
			return TALLY_ENOMEM;
		if (a->n_lots > 0)
			memcpy(n, a->lots, a->n_lots * sizeof(*n));
		a->lots = n;
		a->cap_lots = cap;
	}
	/* Consecutive moves of the same lot merge into one. */
	if (a->n_lots > 0 && a->lots[a->n_lots - 1]->expiry_ms == expiry_ms) {
		a->lots[a->n_lots - 1]->points += points;
		return 0;
	}
	Tally__V1__LotMove *m = tally_arena_alloc(a->tmp, sizeof(*m));
	if (m == NULL)
		return TALLY_ENOMEM;
	tally__v1__lot_move__init(m);
	m->expiry_ms = expiry_ms;
	m->points = points;
	a->lots[a->n_lots++] = m;
	return 0;
}

static void add_unique(const char **list, size_t *n, const char *s)
{
	for (size_t i = 0; i < *n; i++)
		if (strcmp(list[i], s) == 0)
			return;
	list[(*n)++] = s;
}

size_t entry_brands(const Tally__V1__Entry *e, const char *out[ENTRY_BRANDS_MAX])
{
	const char *pair[2];
	size_t n = 0;
	if (e->brand[0] != '\0')
		add_unique(out, &n, e->brand);
	command_pair(e->command, pair); /* both brands of an agreement or settlement */
	for (int i = 0; i < 2; i++)
		if (pair[i] != NULL)
			add_unique(out, &n, pair[i]);
	for (size_t i = 0; i < e->n_postings && i < POSTINGS_MAX; i++)
		add_unique(out, &n, e->postings[i]->brand);
	return n;
}

/* The links of the entry into the chains of the members it touches (chain.c): each
 * chain's head is in the account the command opened, or in the member record that
 * member_store writes; both are written after the entry. */
static int entry_links(struct apply *a, const Tally__V1__Entry *e,
		       uint8_t links[ENTRY_CHAINS_MAX][CHAIN_LINK_BYTES], size_t *n)
{
	const char *brands[ENTRY_CHAINS_MAX], *members[ENTRY_CHAINS_MAX];
	*n = entry_chains(e, brands, members);
	for (size_t i = 0; i < *n; i++) {
		struct chain_head *h;
		if (brands[i][0] == '\0') {
			if (a->member_chain.id == NULL || strcmp(a->member_chain.id, members[i]) != 0)
				return TALLY_ECORRUPT; /* only member_store names a member alone */
			h = &a->member_chain.head;
		} else {
			struct open_account *o = account_opened(a, brands[i], members[i]);
			if (o == NULL)
				return TALLY_ECORRUPT; /* a posting to an account nobody opened */
			o->save = true;
			h = &o->head;
		}
		int rc = chain_append(a->txn, a->l->dbi[T_ENTRIES], a->tmp, h, brands[i],
				      members[i], e->seq, links[i]);
		if (rc != 0)
			return rc;
	}
	return 0;
}

static int entry_store(struct apply *a, const Tally__V1__Entry *e)
{
	uint8_t links[ENTRY_CHAINS_MAX][CHAIN_LINK_BYTES];
	size_t n_links;
	int rc = entry_links(a, e, links, &n_links);
	if (rc != 0)
		return rc;
	size_t head = ENTRY_HEADER_BYTES + 1 + n_links * CHAIN_LINK_BYTES;
	size_t n;
	const uint8_t *bytes = codec_pack_arena(a->tmp, e, 0, &n);
	if (bytes == NULL)
		return TALLY_ENOMEM;
	uint8_t *p, index[JOURNAL_INDEX_BYTES], kb[8];
	rc = journal_reserve(&a->l->journal, e->seq, head + n, &p, index);
	if (rc != 0)
		return rc;
	if (journal_index_row(e->seq, index)) {
		be64_put(kb, e->seq);
		MDB_val k = {8, kb}, v = {sizeof(index), index};
		rc = mdb_put(a->txn, a->l->dbi[T_ENTRIES], &k, &v, MDB_APPEND);
		if (rc != 0)
			return lmdb_error(rc);
	}
	be64_put(p, a->raft_index);
	be64_put(p + 8, a->raft_term);
	be64_put(p + 16, (uint64_t)a->now_ms);
	p[ENTRY_HEADER_BYTES] = (uint8_t)n_links;
	if (n_links > 0)
		memcpy(p + ENTRY_HEADER_BYTES + 1, links, n_links * CHAIN_LINK_BYTES);
	memcpy(p + head, bytes, n);
	uint8_t leaf[32];
	tally_merkle_leaf_hash(p + head, n, leaf);
	struct tally_merkle_store s = tree_store(a->txn, a->l->dbi);
	return tally_merkle_append(&a->m.tree, &s, leaf);
}

int emit_entry(struct apply *a, Tally__V1__EntryKind kind, Tally__V1__CommandResult *r,
	       const char *brand, const char *member, uint64_t cause_seq)
{
	assert(a != NULL && r != NULL);
	assert(kind != TALLY__V1__ENTRY_KIND__COMMAND || a->cmd != NULL);
	Tally__V1__Entry e = TALLY__V1__ENTRY__INIT;
	Tally__V1__Posting *postings[POSTINGS_MAX];
	e.seq = next_seq(a);
	e.time_ms = a->now_ms;
	e.kind = kind;
	e.command = kind == TALLY__V1__ENTRY_KIND__COMMAND ? (Tally__V1__Command *)a->cmd : NULL;
	r->code = TALLY__V1__RESULT_CODE__OK;
	r->entry_seq = e.seq;
	e.result = r;
	for (size_t i = 0; i < a->n_postings; i++)
		postings[i] = &a->postings[i];
	e.postings = postings;
	e.n_postings = a->n_postings;
	e.lots = a->lots;
	e.n_lots = a->n_lots;
	e.cause_seq = cause_seq;
	e.brand = (char *)(brand != NULL ? brand : "");
	e.member = (char *)(member != NULL ? member : "");
	if (kind == TALLY__V1__ENTRY_KIND__COMMAND)
		a->cmd_entry = true;
	int rc = entry_store(a, &e);
	a->n_postings = 0;
	a->n_lots = 0;
	a->lots = NULL;
	a->cap_lots = 0;
	return rc;
}

/* A command rejected after it had changed state: an account it opened had lots run out
 * or its tier window move (saved so that the account stays consistent), a hold it
 * named had run out and was released. Its entry carries the command and the rejection
 * (result.entry_seq stays 0) and no postings, so that replaying the journal repeats the
 * change; a rejection that changed nothing leaves no entry. */
static int journal_rejected(struct apply *a, Tally__V1__CommandResult *r)
{
	assert(a->cmd != NULL && r->code != TALLY__V1__RESULT_CODE__OK && a->n_postings == 0);
	Tally__V1__Entry e = TALLY__V1__ENTRY__INIT;
	e.seq = next_seq(a);
	e.time_ms = a->now_ms;
	e.kind = TALLY__V1__ENTRY_KIND__COMMAND;
	e.command = (Tally__V1__Command *)a->cmd;
	e.result = r;
	e.brand = (char *)"";
	e.member = (char *)"";
	a->cmd_entry = true;
	return entry_store(a, &e);
}

/* ---- commands --------------------------------------------------------------------- */

static bool valid_scope(const Tally__V1__Principal *p)
{
	if (p->n_brands == 0 || p->n_brands > TALLY_SCOPE_BRANDS_MAX)
		return false;
	for (size_t i = 0; i < p->n_brands; i++)
		if (strcmp(p->brands[i], "*") != 0 && !valid_brand_id(p->brands[i]))
			return false;
	return true;
}

static int check_envelope(struct apply *a, const Tally__V1__Command *c,
			  Tally__V1__CommandResult *r)
{
	const Tally__V1__Principal *p = c->principal;
	if ((size_t)c->body_case >= HANDLERS_N || handlers[c->body_case] == NULL)
		return reject(a, r, TALLY__V1__RESULT_CODE__INVALID_ARGUMENT,
			      "body: missing or unknown command");
	if (!valid_text(c->request_id, 1, TALLY_REQUEST_ID_BYTES_MAX))
		return reject(a, r, TALLY__V1__RESULT_CODE__INVALID_ARGUMENT,
			      "request_id: must be 1..%d printable bytes",
			      TALLY_REQUEST_ID_BYTES_MAX);
	if (p == NULL)
		return reject(a, r, TALLY__V1__RESULT_CODE__INVALID_ARGUMENT,
			      "principal: missing");
	if (!valid_text(p->key_name, 1, TALLY_KEY_NAME_BYTES_MAX))
		return reject(a, r, TALLY__V1__RESULT_CODE__INVALID_ARGUMENT,
			      "principal.key_name: must be 1..%d printable bytes",
			      TALLY_KEY_NAME_BYTES_MAX);
	if (p->role <= TALLY__V1__ROLE__ROLE_UNSPECIFIED || p->role > TALLY__V1__ROLE__OPERATOR)
		return reject(a, r, TALLY__V1__RESULT_CODE__INVALID_ARGUMENT,
			      "principal.role: unknown role %d", (int)p->role);
	if (!valid_scope(p))
		return reject(a, r, TALLY__V1__RESULT_CODE__INVALID_ARGUMENT,
			      "principal.brands: must be \"*\" or 1..%d brand ids",
			      TALLY_SCOPE_BRANDS_MAX);
	if (!tally_ledger_role_allows(p->role, c->body_case))
		return reject(a, r, TALLY__V1__RESULT_CODE__PERMISSION_DENIED,
			      "role %s may not %s",
			      enum_name(&tally__v1__role__descriptor, p->role),
			      body_name(c->body_case));
	return 0;
}

/* The content that must match for a retry to count as the same intent: the command
 * without request_id and principal. */
static int content_hash(struct apply *a, const Tally__V1__Command *c, uint8_t out[32])
{
	Tally__V1__Command body = *c;
	body.request_id = (char *)"";
	body.principal = NULL;
	size_t n;
	const uint8_t *buf = codec_pack_arena(a->tmp, &body, 0, &n);
	if (buf == NULL)
		return TALLY_ENOMEM;
	const void *parts[1] = {buf};
	size_t lens[1] = {n};
	sha256_parts(parts, lens, 1, out);
	return 0;
}

/* An idempotency record: under rules 3 on, the seq of the command's entry
 * (IDEM_SEQ_BYTES); before, the SHA-256 of the command's content and then the seq
 * (IDEM_HASHED_BYTES). A ledger holds both kinds once its rules changed. */
#define IDEM_SEQ_BYTES 8
#define IDEM_HASHED_BYTES 40

static bool idem_hashed(const struct apply *a)
{
	return a->m.rules < TALLY_RULES_IDEM_SEQ;
}

static void idem_key(struct key *k, const Tally__V1__Command *c)
{
	key_reset(k);
	key_str(k, c->principal->key_name);
	key_raw(k, c->request_id);
}

/* A retry of (key name, request id), whose record is v: the original's result from its
 * journal entry, or IDEMPOTENCY_CONFLICT when the content differs (compared with the
 * hash the record holds, or else with the content of the command the entry holds). */
static int idem_replay(struct apply *a, const Tally__V1__Command *c, const MDB_val *v,
		       Tally__V1__CommandResult *r)
{
	if (v->mv_size != IDEM_SEQ_BYTES && v->mv_size != IDEM_HASHED_BYTES)
		return TALLY_ECORRUPT;
	const uint8_t *rec = v->mv_data;
	bool hashed = v->mv_size == IDEM_HASHED_BYTES;
	MDB_val raw;
	const uint8_t *bytes;
	size_t n;
	int rc = txn_entry_get(a->txn, a->l->dbi[T_ENTRIES], be64_get(rec + (hashed ? 32 : 0)), &raw);
	if (rc == 0)
		rc = entry_payload(&raw, &bytes, &n);
	if (rc != 0)
		return rc == TALLY_ENOTFOUND ? TALLY_ECORRUPT : rc;
	Tally__V1__Entry *e = tally__v1__entry__unpack(tally_arena_protobuf(a->tmp), n, bytes);
	if (e == NULL || e->result == NULL || (!hashed && e->command == NULL))
		return TALLY_ECORRUPT;
	uint8_t mine[32], theirs[32];
	rc = content_hash(a, c, mine);
	if (rc == 0 && !hashed)
		rc = content_hash(a, e->command, theirs);
	if (rc != 0)
		return rc;
	if (memcmp(mine, hashed ? rec : theirs, 32) != 0)
		return reject(a, r, TALLY__V1__RESULT_CODE__IDEMPOTENCY_CONFLICT,
			      "request_id: %s was used for a different command", c->request_id);
	*r = *e->result;
	r->message = tally_arena_strdup(a->out, e->result->message);
	r->replay = true;
	return r->message == NULL ? TALLY_ENOMEM : 0;
}

/* Claims (key name, request id) for this command, or answers a retry (idem_replay);
 * *done tells whether it was a retry. The claim is one B-tree descent: an insert of a
 * record of the final size that fails when the key exists, leaving the idempotency
 * cursor on the new row for idem_settle. hash: the content's, under rules before 3. */
static int idem_claim(struct apply *a, const Tally__V1__Command *c, const uint8_t *hash,
		      Tally__V1__CommandResult *r, bool *done)
{
	assert((hash != NULL) == idem_hashed(a));
	struct key k;
	uint8_t claim[IDEM_HASHED_BYTES] = {0};
	if (hash != NULL)
		memcpy(claim, hash, 32);
	idem_key(&k, c);
	MDB_val key = {k.n, k.b};
	MDB_val v = {hash != NULL ? IDEM_HASHED_BYTES : IDEM_SEQ_BYTES, claim};
	MDB_cursor *cur;
	*done = false;
	int rc = st_cursor(a, T_IDEM, &cur);
	if (rc != 0)
		return rc;
	rc = mdb_cursor_put(cur, &key, &v, MDB_NOOVERWRITE);
	if (rc == 0)
		return 0;
	if (rc != MDB_KEYEXIST)
		return lmdb_error(rc);
	*done = true;
	return idem_replay(a, c, &v, r);
}

/* Completes the claim: the entry's seq for an applied command (and its hash joins the
 * state digest), or no record at all for a rejected one. */
static int idem_settle(struct apply *a, const Tally__V1__Command *c, const uint8_t *hash,
		       const Tally__V1__CommandResult *r)
{
	assert((hash != NULL) == idem_hashed(a));
	MDB_cursor *cur;
	int rc = st_cursor(a, T_IDEM, &cur);
	if (rc != 0)
		return rc;
	if (r->code != TALLY__V1__RESULT_CODE__OK)
		return lmdb_error(mdb_cursor_del(cur, 0));
	struct key k;
	uint8_t value[IDEM_HASHED_BYTES];
	size_t at = 0;
	if (hash != NULL) {
		memcpy(value, hash, 32);
		at = 32;
	}
	idem_key(&k, c);
	be64_put(value + at, r->entry_seq);
	MDB_val key = {k.n, k.b}, v = {at + IDEM_SEQ_BYTES, value};
	uint8_t h[32];
	record_hash(T_IDEM, &key, &v, h);
	digest_add(a->m.digest, h);
	return lmdb_error(mdb_cursor_put(cur, &key, &v, MDB_CURRENT));
}

static int apply_command(struct apply *a, const Tally__V1__Command *c,
			 Tally__V1__CommandResult *r)
{
	assert(a->n_postings == 0 && a->n_lots == 0 && a->n_open == 0);
	a->cmd = c;
	int rc = check_envelope(a, c, r);
	if (rc != 0 || r->code != TALLY__V1__RESULT_CODE__RESULT_CODE_UNSPECIFIED)
		return rc;
	/* The cluster's own commands are not claimed: the timer's expire repeats, and a
	 * set_rules sent again is refused by the version it names. */
	bool idempotent = c->body_case != TALLY__V1__COMMAND__BODY_EXPIRE &&
			  c->body_case != TALLY__V1__COMMAND__BODY_SET_RULES;
	uint8_t content[32];
	const uint8_t *hash = NULL; /* the content's, kept in the record before rules 3 */
	if (idempotent) {
		bool done;
		if (idem_hashed(a)) {
			rc = content_hash(a, c, content);
			hash = content;
		}
		if (rc == 0)
			rc = idem_claim(a, c, hash, r, &done);
		if (rc != 0 || done)
			return rc;
	}
	uint8_t digest[32];
	uint64_t size = a->m.tree.size;
	memcpy(digest, a->m.digest, sizeof(digest));
	a->cmd_entry = false;
	rc = handlers[c->body_case](a, c, r);
	if (rc == 0)
		rc = accounts_flush(a); /* what the command saved, before changes are judged */
	if (rc != 0)
		return rc;
	assert(r->code != TALLY__V1__RESULT_CODE__RESULT_CODE_UNSPECIFIED);
	assert(a->n_postings == 0); /* a rejection must not leave half an entry */
	a->n_lots = 0;              /* moves planned in memory before a rejection */
	a->lots = NULL;
	a->cap_lots = 0;
	bool changed = a->m.tree.size != size || memcmp(digest, a->m.digest, sizeof(digest)) != 0;
	if (changed && !a->cmd_entry)
		rc = r->code != TALLY__V1__RESULT_CODE__OK ? journal_rejected(a, r) : emit_entry(a, TALLY__V1__ENTRY_KIND__COMMAND,
									r, NULL, NULL, 0);
	if (rc != 0)
		return rc;
	assert(!changed || a->cmd_entry); /* every change of state is in the journal */
	if (idempotent)
		rc = idem_settle(a, c, hash, r);
	if (r->message == NULL)
		r->message = (char *)"";
	return rc;
}

/* ---- batches ---------------------------------------------------------------------- */

static int results_new(struct tally_arena *arena, size_t n, Tally__V1__CommandResult ***out)
{
	Tally__V1__CommandResult **rs = tally_arena_alloc(arena, (n + 1) * sizeof(*rs));
	if (rs == NULL)
		return TALLY_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		rs[i] = tally_arena_alloc(arena, sizeof(**rs));
		if (rs[i] == NULL)
			return TALLY_ENOMEM;
		tally__v1__command_result__init(rs[i]);
	}
	*out = rs;
	return 0;
}

static int apply_commands(struct apply *a, const Tally__V1__Batch *b,
			  Tally__V1__CommandResult **rs)
{
	int rc = holds_sweep(a);
	if (b->n_commands > TALLY_BATCH_COMMANDS_MAX) {
		/* Only a broken leader proposes this; every replica refuses it alike. */
		for (size_t i = 0; rc == 0 && i < b->n_commands; i++)
			rc = reject(a, rs[i], TALLY__V1__RESULT_CODE__INVALID_ARGUMENT,
				    "batch: more than %d commands", TALLY_BATCH_COMMANDS_MAX);
		return rc;
	}
	for (size_t i = 0; rc == 0 && i < b->n_commands; i++) {
		tally_arena_reset(a->tmp);
		rc = apply_command(a, b->commands[i], rs[i]);
	}
	return rc;
}

/* One batch of a group, inside the group's transaction: what a transaction of its own
 * would do but the commit. Everything a batch keeps for itself (its raft index and
 * time, the brands it read, its system-account movements, its hold sweep) starts and
 * ends with it, so that a batch writes the same records whether or not it shares a
 * transaction. */
static int apply_in_group(struct apply *a, const Tally__V1__Batch *batch,
			  Tally__V1__CommandResult **results)
{
	assert(a->txn != NULL && a->n_sys == 0);
	assert(batch->raft_index > a->m.applied_index);
	a->raft_index = batch->raft_index;
	a->raft_term = batch->raft_term;
	a->now_ms = batch->time_ms > a->m.time_ms ? batch->time_ms : a->m.time_ms;
	if (a->now_ms < 0)
		a->now_ms = 0;
	a->today = day_of(a->now_ms);
	a->n_brands = 0;
	int rc = apply_commands(a, batch, results);
	a->m.applied_index = batch->raft_index;
	a->m.applied_term = batch->raft_term;
	a->m.time_ms = a->now_ms;
	if (rc == 0)
		rc = sys_flush(a);
	assert(rc != 0 || a->n_sys == 0);
	return rc;
}

/* One attempt at a group of batches in one write transaction: committed whole, or
 * aborted whole (l->meta changes only on commit). A batch at or below the applied
 * index is skipped. */
static int apply_once(struct tally_ledger *l, const struct tally_ledger_group *g,
		      struct tally_arena *arena)
{
	assert(l != NULL && g != NULL && arena != NULL);
	assert(g->n > 0 && g->n <= TALLY_LEDGER_GROUP_BATCHES_MAX);
	struct apply a = {.l = l, .m = l->meta, .out = arena, .tmp = &l->scratch};
	int rc = lmdb_error(mdb_txn_begin(l->env, NULL, 0, &a.txn));
	if (rc != 0)
		return rc;
	known_reset(l);
	tally_arena_reset(&l->batch);
	journal_begin(&l->journal);
	for (size_t i = 0; rc == 0 && i < g->n; i++)
		if (!g->skipped[i])
			rc = apply_in_group(&a, g->batches[i], g->results[i]);
	st_cursors_close(&a);
	if (rc == 0)
		rc = meta_save(&a);
	if (rc == 0) /* the journal's records first: LMDB's rows then name written bytes */
		rc = journal_flush(&l->journal);
	if (rc == 0)
		rc = lmdb_error(mdb_txn_commit(a.txn));
	else
		mdb_txn_abort(a.txn);
	/* After an abort the group's records are cut off the segments again; should that
	 * fail, they lie past every row LMDB holds, and the next open cuts them. */
	(void)journal_settle(&l->journal, rc == 0);
	tally_arena_reset(&l->scratch);
	if (rc == 0)
		l->meta = a.m;
	return rc;
}

static int group_results(struct tally_arena *arena, const struct tally_ledger_group *g)
{
	int rc = 0;
	for (size_t i = 0; rc == 0 && i < g->n; i++)
		rc = results_new(arena, g->batches[i]->n_commands, &g->results[i]);
	return rc;
}

int tally_ledger_apply_group(struct tally_ledger *l, const struct tally_ledger_group *g,
			     struct tally_arena *arena)
{
	assert(l != NULL && g != NULL && arena != NULL);
	assert(g->n > 0 && g->n <= TALLY_LEDGER_GROUP_BATCHES_MAX);
	size_t skipped = 0;
	for (size_t i = 0; i < g->n; i++) {
		assert(g->batches[i] != NULL);
		assert(i == 0 || g->batches[i]->raft_index > g->batches[i - 1]->raft_index);
		g->skipped[i] = g->batches[i]->raft_index <= l->meta.applied_index;
		skipped += g->skipped[i];
	}
	if (skipped == g->n) /* a replay after a restart: results untouched, nothing written */
		return group_results(arena, g);
	/* A group that does not fit in the map (MDB_MAP_FULL, TALLY_EFULL) is applied again
	 * once the map grew (map.c); fresh results each time. */
	for (unsigned attempt = 0;; attempt++) {
		int rc = group_results(arena, g);
		if (rc == 0)
			rc = map_room(l, attempt);
		if (rc != 0)
			return rc;
		rc = apply_once(l, g, arena);
		if (rc != TALLY_EFULL || attempt == LEDGER_APPLY_GROWS_MAX)
			return rc;
	}
}

int tally_ledger_apply_batch(struct tally_ledger *l, const Tally__V1__Batch *batch,
			     struct tally_arena *arena,
			     Tally__V1__CommandResult ***results, bool *skipped)
{
	assert(l != NULL && batch != NULL);
	assert(arena != NULL && results != NULL && skipped != NULL);
	const Tally__V1__Batch *one[1] = {batch};
	struct tally_ledger_group g = {.batches = one, .n = 1, .results = results, .skipped = skipped};
	return tally_ledger_apply_group(l, &g, arena);
}

int tally_ledger_apply_bytes(struct tally_ledger *l, const void *buf, size_t len,
			     struct tally_arena *arena,
			     Tally__V1__CommandResult ***results, size_t *n_results,
			     bool *skipped)
{
	assert(l != NULL && (buf != NULL || len == 0));
	assert(n_results != NULL);
	tally_arena_reset(&l->decode);
	Tally__V1__Batch *b = tally_ledger_batch_decode(&l->decode, buf, len);
	if (b == NULL)
		return TALLY_ECORRUPT;
	*n_results = b->n_commands;
	return tally_ledger_apply_batch(l, b, arena, results, skipped);
}
