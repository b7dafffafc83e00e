#include "tests/util.h"

#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <unistd.h>

#include <raft.h>

uint8_t *fx_snapshot(struct fx *f, size_t *len)
{
	char *dir = fx_tmpdir();
	char path[512];
	snprintf(path, sizeof(path), "%s/snap", dir);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(tally_ledger_snapshot(f->l, fd, NULL), 0);
	off_t end = lseek(fd, 0, SEEK_END);
	uint8_t *p = malloc((size_t)end);
	assert_non_null(p);
	assert_int_equal(pread(fd, p, (size_t)end, 0), end);
	close(fd);
	fx_remove_dir(dir);
	free(dir);
	*len = (size_t)end;
	return p;
}

char *fx_tmpdir(void)
{
	const char *base = getenv("TMPDIR");
	char tmpl[256];
	snprintf(tmpl, sizeof(tmpl), "%s/tally-test-XXXXXX", base != NULL ? base : "/tmp");
	char *d = mkdtemp(tmpl);
	assert_non_null(d);
	return strdup(d);
}

int fx_ledger_open(struct fx *f)
{
	assert_null(f->l);
	/* 1 GiB of map: enough for every test, and valgrind can map it. Journal segments
	 * of 64 KiB, so that every test's journal spans several. */
	struct tally_ledger_options o = {.map_size_bytes = 1ULL << 30, .nosync = true,
					 .journal_segment_bytes = FX_JOURNAL_SEGMENT_BYTES};
	return tally_ledger_open(f->dir, &o, &f->l);
}

void fx_ledger_close(struct fx *f)
{
	tally_ledger_close(f->l);
	f->l = NULL;
}

void fx_open_in(struct fx *f, const char *dir)
{
	memset(f, 0, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "%s", dir);
	tally_arena_init(&f->build, 64 << 10, 0);
	tally_arena_init(&f->results, 64 << 10, 0);
	assert_int_equal(fx_ledger_open(f), 0);
	f->index = tally_ledger_applied_index(f->l);
	f->now_ms = T0_MS;
}

void fx_open(struct fx *f)
{
	char *d = fx_tmpdir();
	fx_open_in(f, d);
	free(d);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path);
}

void fx_remove_dir(const char *dir)
{
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void fx_close(struct fx *f)
{
	tally_ledger_close(f->l);
	f->l = NULL;
	tally_arena_free(&f->build);
	tally_arena_free(&f->results);
	fx_remove_dir(f->dir);
}

char *sdup(struct fx *f, const char *s)
{
	char *p = tally_arena_strdup(&f->build, s);
	assert_non_null(p);
	return p;
}

void *zalloc(struct fx *f, size_t n)
{
	void *p = tally_arena_zalloc(&f->build, n);
	assert_non_null(p);
	return p;
}

Tally__V1__Principal *who(struct fx *f, Tally__V1__Role role, const char *key, const char *brands)
{
	Tally__V1__Principal *p = zalloc(f, sizeof(*p));
	tally__v1__principal__init(p);
	p->key_name = sdup(f, key);
	p->role = role;
	p->brands = zalloc(f, 8 * sizeof(char *));
	char *copy = sdup(f, brands), *save = NULL;
	for (char *t = strtok_r(copy, ",", &save); t != NULL && p->n_brands < 8;
	     t = strtok_r(NULL, ",", &save))
		p->brands[p->n_brands++] = t;
	return p;
}

Tally__V1__Principal *admin(struct fx *f)
{
	return who(f, TALLY__V1__ROLE__ADMIN, "admin", "*");
}

Tally__V1__Command *cmd_new(struct fx *f, const Tally__V1__Principal *p, const char *req)
{
	Tally__V1__Command *c = zalloc(f, sizeof(*c));
	tally__v1__command__init(c);
	char buf[32];
	if (req == NULL) {
		snprintf(buf, sizeof(buf), "r-%u", ++f->req);
		req = buf;
	}
	c->request_id = sdup(f, req);
	c->principal = (Tally__V1__Principal *)p;
	return c;
}

#define BODY(f, c, field, type, init, CASE)                                 \
	type *m = zalloc(f, sizeof(*m));                                    \
	init(m);                                                            \
	c->body_case = TALLY__V1__COMMAND__BODY_##CASE;                     \
	c->field = m

Tally__V1__Command *c_brand(struct fx *f, const Tally__V1__Principal *p, const char *id,
			    uint32_t expiry_months)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, register_brand, Tally__V1__RegisterBrand, tally__v1__register_brand__init,
	     REGISTER_BRAND);
	m->id = sdup(f, id);
	m->name = sdup(f, id);
	m->currency = sdup(f, "EUR");
	m->point_value_micros = 10000;
	m->expiry_months = expiry_months;
	return c;
}

Tally__V1__Command *c_brand_expiry(struct fx *f, const char *id, uint32_t months)
{
	Tally__V1__Command *c = cmd_new(f, admin(f), NULL);
	BODY(f, c, update_brand, Tally__V1__UpdateBrand, tally__v1__update_brand__init,
	     UPDATE_BRAND);
	m->id = sdup(f, id);
	Tally__V1__Uint32Value *v = zalloc(f, sizeof(*v));
	tally__v1__uint32_value__init(v);
	v->value = months;
	m->expiry_months = v;
	return c;
}

Tally__V1__Command *c_member(struct fx *f, const Tally__V1__Principal *p, const char *id)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, open_member, Tally__V1__OpenMember, tally__v1__open_member__init, OPEN_MEMBER);
	m->id = sdup(f, id);
	m->segment = TALLY__V1__SEGMENT__OWNER_PASSENGER;
	return c;
}

Tally__V1__Command *c_accrue(struct fx *f, const Tally__V1__Principal *p, const char *brand,
			     const char *member, int64_t points)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, accrue, Tally__V1__Accrue, tally__v1__accrue__init, ACCRUE);
	m->brand = sdup(f, brand);
	m->member = sdup(f, member);
	m->points = points;
	m->reason = sdup(f, "purchase");
	return c;
}

Tally__V1__Command *c_redeem(struct fx *f, const Tally__V1__Principal *p, const char *brand,
			     const char *member, int64_t points)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, redeem, Tally__V1__Redeem, tally__v1__redeem__init, REDEEM);
	m->brand = sdup(f, brand);
	m->member = sdup(f, member);
	m->points = points;
	return c;
}

Tally__V1__Command *c_hold(struct fx *f, const Tally__V1__Principal *p, const char *brand,
			   const char *member, int64_t points, uint32_t timeout_s)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, hold, Tally__V1__Hold, tally__v1__hold__init, HOLD);
	m->brand = sdup(f, brand);
	m->member = sdup(f, member);
	m->points = points;
	m->timeout_s = timeout_s;
	return c;
}

Tally__V1__Command *c_capture(struct fx *f, const Tally__V1__Principal *p, uint64_t hold,
			      int64_t points)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, capture, Tally__V1__Capture, tally__v1__capture__init, CAPTURE);
	m->hold_id = hold;
	m->points = points;
	return c;
}

Tally__V1__Command *c_void(struct fx *f, const Tally__V1__Principal *p, uint64_t hold)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, void_, Tally__V1__Void, tally__v1__void__init, VOID);
	m->hold_id = hold;
	return c;
}

Tally__V1__Command *c_reverse(struct fx *f, const Tally__V1__Principal *p, uint64_t seq,
			      int64_t points)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, reverse, Tally__V1__Reverse, tally__v1__reverse__init, REVERSE);
	m->entry_seq = seq;
	m->points = points;
	return c;
}

Tally__V1__Command *c_transfer(struct fx *f, const Tally__V1__Principal *p, const char *brand,
			       const char *from, const char *to, int64_t points)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, transfer, Tally__V1__Transfer, tally__v1__transfer__init, TRANSFER);
	m->brand = sdup(f, brand);
	m->from_member = sdup(f, from);
	m->to_member = sdup(f, to);
	m->points = points;
	return c;
}

Tally__V1__Command *c_agreement(struct fx *f, const Tally__V1__Principal *p, const char *from,
				const char *to, int64_t num, int64_t den)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, set_agreement, Tally__V1__SetAgreement, tally__v1__set_agreement__init,
	     SET_AGREEMENT);
	m->from_brand = sdup(f, from);
	m->to_brand = sdup(f, to);
	m->rate_num = num;
	m->rate_den = den;
	m->price_micros = 5000;
	m->active = true;
	return c;
}

Tally__V1__Command *c_exchange(struct fx *f, const Tally__V1__Principal *p, const char *from,
			       const char *to, const char *member, int64_t points)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, exchange, Tally__V1__Exchange, tally__v1__exchange__init, EXCHANGE);
	m->from_brand = sdup(f, from);
	m->to_brand = sdup(f, to);
	m->member = sdup(f, member);
	m->points = points;
	return c;
}

Tally__V1__Command *c_settle(struct fx *f, const Tally__V1__Principal *p, const char *a,
			     const char *b, int64_t until_ms)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, settle, Tally__V1__Settle, tally__v1__settle__init, SETTLE);
	m->brand_a = sdup(f, a);
	m->brand_b = sdup(f, b);
	m->until_ms = until_ms;
	return c;
}

Tally__V1__Command *c_confirm(struct fx *f, const Tally__V1__Principal *p, uint64_t id)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, confirm_settlement, Tally__V1__ConfirmSettlement,
	     tally__v1__confirm_settlement__init, CONFIRM_SETTLEMENT);
	m->settlement_id = id;
	return c;
}

Tally__V1__Command *c_adjust(struct fx *f, const Tally__V1__Principal *p, const char *brand,
			     const char *member, int64_t points, const char *reason)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, adjust, Tally__V1__Adjust, tally__v1__adjust__init, ADJUST);
	m->brand = sdup(f, brand);
	m->member = sdup(f, member);
	m->points = points;
	m->reason = sdup(f, reason);
	return c;
}

Tally__V1__Command *c_import(struct fx *f, const Tally__V1__Principal *p, const char *brand,
			     const char *member, int64_t points, int64_t expires_ms)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, import_points, Tally__V1__ImportPoints, tally__v1__import_points__init,
	     IMPORT_POINTS);
	m->brand = sdup(f, brand);
	m->member = sdup(f, member);
	m->points = points;
	m->expires_ms = expires_ms;
	m->reference = sdup(f, "legacy-crm");
	return c;
}

Tally__V1__Command *c_expire(struct fx *f, const Tally__V1__Principal *p)
{
	Tally__V1__Command *c = cmd_new(f, p, NULL);
	BODY(f, c, expire, Tally__V1__Expire, tally__v1__expire__init, EXPIRE);
	return c;
}

Tally__V1__Command *c_set_rules(struct fx *f, uint32_t version)
{
	Tally__V1__Command *c = cmd_new(f, who(f, TALLY__V1__ROLE__SYSTEM, "tally-system", "*"), NULL);
	BODY(f, c, set_rules, Tally__V1__SetRules, tally__v1__set_rules__init, SET_RULES);
	m->version = version;
	return c;
}

Tally__V1__CommandResult **apply_n(struct fx *f, Tally__V1__Command **cmds, size_t n)
{
	Tally__V1__Batch b = TALLY__V1__BATCH__INIT;
	b.raft_index = ++f->index;
	b.raft_term = 1;
	b.time_ms = f->now_ms;
	b.commands = cmds;
	b.n_commands = n;
	Tally__V1__CommandResult **rs;
	bool skipped;
	tally_arena_reset(&f->results);
	assert_int_equal(tally_ledger_apply_batch(f->l, &b, &f->results, &rs, &skipped), 0);
	assert_false(skipped);
	return rs;
}

Tally__V1__CommandResult *apply1(struct fx *f, Tally__V1__Command *c)
{
	return apply_n(f, &c, 1)[0];
}

Tally__V1__CommandResult *expect(struct fx *f, Tally__V1__Command *c, Tally__V1__ResultCode code)
{
	Tally__V1__CommandResult *r = apply1(f, c);
	if (r->code != code)
		fail_msg("expected %s, got %s: %s", tally_result_name(code),
			 tally_result_name(r->code), r->message);
	return r;
}

void setup_brand(struct fx *f, const char *id, uint32_t expiry_months)
{
	ok(f, c_brand(f, admin(f), id, expiry_months));
}

void setup_members(struct fx *f, const char *const *ids, size_t n)
{
	for (size_t i = 0; i < n; i++)
		ok(f, c_member(f, admin(f), ids[i]));
}

Tally__V1__Account *account(struct fx *f, const char *brand, const char *member)
{
	Tally__V1__Account *a = NULL;
	int rc = tally_ledger_account(f->l, brand, member, true, &f->build, &a);
	assert_true(rc == 0 || rc == TALLY_ENOTFOUND);
	return a;
}

int64_t available(struct fx *f, const char *brand, const char *member)
{
	return account(f, brand, member)->available;
}

void assert_invariants(struct fx *f)
{
	char msg[256];
	int rc = tally_ledger_check_invariants(f->l, msg, sizeof(msg));
	if (rc != 0)
		fail_msg("invariants: %s", msg);
}

Tally__V1__StoredEntry *stored_entry_at(struct tally_ledger *l, const Tally__V1__Principal *who,
					struct tally_arena *arena, uint64_t seq)
{
	Tally__V1__Query q = TALLY__V1__QUERY__INIT;
	Tally__V1__GetEntry g = TALLY__V1__GET_ENTRY__INIT;
	g.seq = seq;
	q.q_case = TALLY__V1__QUERY__Q_ENTRY;
	q.entry = &g;
	Tally__V1__QueryResult *res;
	if (tally_ledger_query(l, &q, who, arena, &res) != 0 ||
	    res->code != TALLY__V1__RESULT_CODE__OK)
		return NULL;
	return res->entry;
}

Tally__V1__Entry *entry_at(struct fx *f, uint64_t seq)
{
	Tally__V1__StoredEntry *se = stored_entry_at(f->l, admin(f), &f->build, seq);
	assert_non_null(se);
	Tally__V1__Entry *e = tally__v1__entry__unpack(tally_arena_protobuf(&f->build),
						       se->entry.len, se->entry.data);
	assert_non_null(e);
	return e;
}

bool quick_mode(void)
{
	const char *q = getenv("TALLY_TEST_QUICK");
	return q != NULL && q[0] == '1';
}

struct snap snap_take(struct fx *f)
{
	struct tally_digest d;
	assert_int_equal(tally_ledger_digest(f->l, &d), 0);
	struct snap s;
	memcpy(s.state, d.state_digest, 32);
	memcpy(s.root, d.root, 32);
	s.size = d.tree_size;
	return s;
}

bool snap_equal(const struct snap *a, const struct snap *b)
{
	return a->size == b->size && memcmp(a->state, b->state, 32) == 0 &&
	       memcmp(a->root, b->root, 32) == 0;
}

void assert_snap_equal(const struct snap *a, const struct snap *b)
{
	assert_int_equal(a->size, b->size);
	assert_memory_equal(a->state, b->state, 32);
	assert_memory_equal(a->root, b->root, 32);
}

Tally__V1__QueryResult *query(struct fx *f, Tally__V1__Query *q, const Tally__V1__Principal *p)
{
	Tally__V1__QueryResult *res = NULL;
	assert_int_equal(tally_ledger_query(f->l, q, p, &f->build, &res), 0);
	assert_non_null(res);
	return res;
}

/* libraft 0.15 sends and writes bytes it never initialised (the 8-byte payload of a
 * barrier entry, padding in encoded messages and the bootstrap segment). They are never
 * interpreted, but memcheck reports every one. The tests give raft a zero-filling heap
 * so that `make valgrind` reports only real errors; tallyd keeps raft's default heap. */
static void *heap_malloc(void *data, size_t size)
{
	(void)data;
	return calloc(1, size > 0 ? size : 1);
}

static void heap_free(void *data, void *ptr)
{
	(void)data;
	free(ptr);
}

static void *heap_calloc(void *data, size_t nmemb, size_t size)
{
	(void)data;
	return calloc(nmemb, size);
}

static void *heap_realloc(void *data, void *ptr, size_t size)
{
	(void)data;
	return realloc(ptr, size);
}

static void *heap_aligned_alloc(void *data, size_t alignment, size_t size)
{
	(void)data;
	size_t rounded = (size + alignment - 1) / alignment * alignment;
	void *p = aligned_alloc(alignment, rounded);
	if (p != NULL)
		memset(p, 0, rounded);
	return p;
}

static void heap_aligned_free(void *data, size_t alignment, void *ptr)
{
	(void)data, (void)alignment;
	free(ptr);
}

static struct raft_heap zero_heap = {
	.malloc = heap_malloc, .free = heap_free, .calloc = heap_calloc,
	.realloc = heap_realloc, .aligned_alloc = heap_aligned_alloc,
	.aligned_free = heap_aligned_free,
};

void fx_raft_heap_zeroed(bool zeroed)
{
	if (zeroed)
		raft_heap_set(&zero_heap);
	else
		raft_heap_set_default();
}

/* Writes meta record `name` of the closed ledger in dir (NULL value: deletes it). */
void meta_poke(const char *dir, const char *name, const void *value, size_t n)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 64), 0);
	assert_int_equal(mdb_env_set_mapsize(env, 1ULL << 30), 0);
	assert_int_equal(mdb_env_open(env, dir, 0, 0644), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
	MDB_val k = {strlen(name), (void *)name}, v = {n, (void *)value};
	assert_int_equal(value != NULL ? mdb_put(txn, dbi, &k, &v, 0) : mdb_del(txn, dbi, &k, NULL), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}
