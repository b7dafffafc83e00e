/*
 * Partner brands: exchange agreements, exchanges of a member's points across brands,
 * and the settlement of what the brands owe each other.
 *
 * An exchange of P points of brand A into brand B for member M, under the agreement
 * A → B (rate num/den, floor), posts in A: M −P, clearing[B] +P, and in B:
 * clearing[A] −Q, M +Q with Q = floor(P × num / den). Each brand's postings sum to
 * zero on their own. A then owes B Q × price_micros: an open obligation until a
 * settlement of the pair nets it.
 */
#include <assert.h>
#include <string.h>

#include "ledger/internal.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name
#define REJECTED(r) ((r)->code != CODE(RESULT_CODE_UNSPECIFIED))

static void pair_key(struct key *k, const char *a, const char *b)
{
	key_reset(k);
	key_str(k, a);
	key_str(k, b);
}

static int agreement_get(struct apply *a, const char *from, const char *to,
			 Tally__V1__Agreement **out)
{
	struct key k;
	pair_key(&k, from, to);
	return rec_get(a, T_AGREEMENTS, &k, &tally__v1__agreement__descriptor, (void **)out);
}

static int check_pair(struct apply *a, Tally__V1__CommandResult *r, const char *x,
		      const char *y, const char *fx, const char *fy)
{
	Tally__V1__Brand *b;
	if (!valid_brand_id(x))
		return reject(a, r, CODE(INVALID_ARGUMENT), "%s: must match [a-z0-9_-]{1,32}", fx);
	if (!valid_brand_id(y))
		return reject(a, r, CODE(INVALID_ARGUMENT), "%s: must match [a-z0-9_-]{1,32}", fy);
	if (strcmp(x, y) == 0)
		return reject(a, r, CODE(INVALID_ARGUMENT), "%s: must differ from %s", fy, fx);
	const char *ids[2] = {x, y};
	for (int i = 0; i < 2; i++) {
		int rc = brand_get(a, ids[i], &b);
		if (rc == TALLY_ENOTFOUND)
			return reject(a, r, CODE(UNKNOWN_BRAND), "%s: brand %s is not registered",
				      i == 0 ? fx : fy, ids[i]);
		if (rc != 0)
			return rc;
	}
	return 0;
}

/* Admins act for both brands; a partner needs one of them in scope. */
static int check_pair_scope(struct apply *a, Tally__V1__CommandResult *r, const char *x,
			    const char *y)
{
	const Tally__V1__Principal *p = a->cmd->principal;
	bool ok = p->role == TALLY__V1__ROLE__ADMIN ? in_scope(p, x) && in_scope(p, y)
						    : in_scope(p, x) || in_scope(p, y);
	if (!ok)
		return reject(a, r, CODE(PERMISSION_DENIED), "key %s is not scoped to %s and %s",
			      p->key_name, x, y);
	return 0;
}

static const char *check_agreement_fields(const Tally__V1__SetAgreement *m)
{
	if (m->rate_num < 1 || m->rate_num > TALLY_RATE_MAX)
		return "rate_num: must be 1..10^9";
	if (m->rate_den < 1 || m->rate_den > TALLY_RATE_MAX)
		return "rate_den: must be 1..10^9";
	if (m->min_points < 0 || m->min_points > TALLY_POINTS_MAX)
		return "min_points: must be 0..10^12";
	if (m->max_points < 0 || m->max_points > TALLY_POINTS_MAX)
		return "max_points: must be 0..10^12";
	if (m->max_points != 0 && m->max_points < m->min_points)
		return "max_points: must not be below min_points";
	if (m->daily_cap_points < 0 || m->daily_cap_points > TALLY_POINTS_MAX)
		return "daily_cap_points: must be 0..10^12";
	if (m->price_micros < 0 || m->price_micros > TALLY_POINTS_MAX)
		return "price_micros: must be 0..10^12";
	if (m->valid_from_ms < 0 || m->valid_until_ms < 0)
		return "valid_from_ms: must not be negative";
	if (m->valid_until_ms != 0 && m->valid_until_ms <= m->valid_from_ms)
		return "valid_until_ms: must be after valid_from_ms";
	return NULL;
}

int do_set_agreement(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__SetAgreement *m = c->set_agreement;
	const char *bad = check_agreement_fields(m);
	if (bad != NULL)
		return reject(a, r, CODE(INVALID_ARGUMENT), "%s", bad);
	int rc = check_pair(a, r, m->from_brand, m->to_brand, "from_brand", "to_brand");
	if (rc == 0 && !REJECTED(r))
		rc = check_pair_scope(a, r, m->from_brand, m->to_brand);
	if (rc != 0 || REJECTED(r))
		return rc;
	Tally__V1__Agreement ag = TALLY__V1__AGREEMENT__INIT;
	ag.from_brand = m->from_brand;
	ag.to_brand = m->to_brand;
	ag.rate_num = m->rate_num;
	ag.rate_den = m->rate_den;
	ag.min_points = m->min_points;
	ag.max_points = m->max_points;
	ag.daily_cap_points = m->daily_cap_points;
	ag.price_micros = m->price_micros;
	ag.valid_from_ms = m->valid_from_ms;
	ag.valid_until_ms = m->valid_until_ms;
	ag.active = m->active;
	ag.updated_seq = next_seq(a);
	struct key k;
	pair_key(&k, m->from_brand, m->to_brand);
	rc = rec_put(a, T_AGREEMENTS, &k, &ag);
	result_ok(r, NULL);
	if (rc == 0)
		rc = emit_entry(a, TALLY__V1__ENTRY_KIND__COMMAND, r, m->from_brand, NULL, 0);
	return rc;
}

/* floor(points × num / den) and its price, or a rejection when out of bounds. */
static int convert(struct apply *a, Tally__V1__CommandResult *r, const Tally__V1__Agreement *ag,
		   int64_t points, int64_t *to_points, int64_t *amount_micros)
{
	__int128 q = (__int128)points * ag->rate_num / ag->rate_den;
	if (q < 1)
		return reject(a, r, CODE(LIMIT_EXCEEDED), "points: %lld converts to no points",
			      (long long)points);
	if (q > TALLY_POINTS_MAX)
		return reject(a, r, CODE(LIMIT_EXCEEDED), "points: converts to more than %lld",
			      (long long)TALLY_POINTS_MAX);
	__int128 amount = q * ag->price_micros;
	if (amount > TALLY_BALANCE_MAX)
		return reject(a, r, CODE(LIMIT_EXCEEDED), "points: settlement amount overflows");
	*to_points = (int64_t)q;
	*amount_micros = (int64_t)amount;
	return 0;
}

static int check_agreement(struct apply *a, Tally__V1__CommandResult *r,
			   const Tally__V1__Exchange *m, Tally__V1__Agreement **ag)
{
	int rc = agreement_get(a, m->from_brand, m->to_brand, ag);
	if (rc == TALLY_ENOTFOUND)
		return reject(a, r, CODE(NO_AGREEMENT), "no agreement %s -> %s", m->from_brand,
			      m->to_brand);
	if (rc != 0)
		return rc;
	const Tally__V1__Agreement *g = *ag;
	if (!g->active || a->now_ms < g->valid_from_ms ||
	    (g->valid_until_ms != 0 && a->now_ms >= g->valid_until_ms))
		return reject(a, r, CODE(NO_AGREEMENT), "agreement %s -> %s is not active now",
			      m->from_brand, m->to_brand);
	if (m->points < g->min_points)
		return reject(a, r, CODE(LIMIT_EXCEEDED), "points: below the minimum of %lld",
			      (long long)g->min_points);
	if (g->max_points != 0 && m->points > g->max_points)
		return reject(a, r, CODE(LIMIT_EXCEEDED), "points: above the maximum of %lld",
			      (long long)g->max_points);
	return 0;
}

static int obligation_add(struct apply *a, const Tally__V1__Exchange *m, int64_t to_points,
			  int64_t amount_micros)
{
	Tally__V1__Obligation o = TALLY__V1__OBLIGATION__INIT;
	o.seq = next_seq(a);
	o.payer = m->from_brand;
	o.payee = m->to_brand;
	o.amount_micros = amount_micros;
	o.points = to_points;
	o.time_ms = a->now_ms;
	bool ordered = strcmp(m->from_brand, m->to_brand) < 0;
	struct key k;
	pair_key(&k, ordered ? m->from_brand : m->to_brand, ordered ? m->to_brand : m->from_brand);
	key_u64(&k, o.seq);
	return rec_put(a, T_OBLIGATIONS, &k, &o);
}

static int exchange_post(struct apply *a, const Tally__V1__Exchange *m,
			 const Tally__V1__Brand *to, Tally__V1__Account *src,
			 Tally__V1__Account *dst, int64_t to_points)
{
	int64_t expiry = lot_expiry(a, to);
	int rc = lots_take(a, src, m->points, -1, false);
	if (rc == 0)
		rc = lot_give(a, dst, &expiry, to_points);
	if (rc == 0)
		rc = lot_move(a, expiry, to_points);
	src->available -= m->points;
	dst->available += to_points;
	dst->earned += to_points;
	dst->updated_ms = a->now_ms;
	if (rc == 0)
		rc = post_member(a, m->from_brand, m->member, TALLY__V1__BUCKET__AVAILABLE, -m->points);
	if (rc == 0)
		rc = post_system(a, m->from_brand, TALLY__V1__SYSTEM_ACCOUNT__CLEARING, m->to_brand, m->points);
	if (rc == 0)
		rc = post_system(a, m->to_brand, TALLY__V1__SYSTEM_ACCOUNT__CLEARING, m->from_brand, -to_points);
	if (rc == 0)
		rc = post_member(a, m->to_brand, m->member, TALLY__V1__BUCKET__AVAILABLE, to_points);
	if (rc == 0)
		rc = account_save(a, dst);
	return rc;
}

int do_exchange(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__Exchange *m = c->exchange;
	Tally__V1__Agreement *ag;
	Tally__V1__Brand *from, *to;
	Tally__V1__Account *src, *dst;
	bool exists, over;
	int64_t to_points = 0, amount = 0;
	if (!valid_member_id(m->member))
		return reject(a, r, CODE(INVALID_ARGUMENT), "member: must be 1..%d printable bytes",
			      TALLY_MEMBER_ID_BYTES_MAX);
	if (!valid_points(m->points))
		return reject(a, r, CODE(INVALID_ARGUMENT), "points: must be 1..%lld",
			      (long long)TALLY_POINTS_MAX);
	int rc = check_pair(a, r, m->from_brand, m->to_brand, "from_brand", "to_brand");
	if (rc == 0 && !REJECTED(r))
		rc = check_pair_scope(a, r, m->from_brand, m->to_brand);
	if (rc == 0 && !REJECTED(r))
		rc = member_exists(a, m->member, &exists);
	if (rc == 0 && !REJECTED(r) && !exists)
		rc = reject(a, r, CODE(UNKNOWN_MEMBER), "member: %s is not open", m->member);
	if (rc == 0 && !REJECTED(r))
		rc = check_agreement(a, r, m, &ag);
	if (rc == 0 && !REJECTED(r))
		rc = convert(a, r, ag, m->points, &to_points, &amount);
	if (rc != 0 || REJECTED(r))
		return rc;
	rc = brand_get(a, m->from_brand, &from);
	if (rc == 0)
		rc = brand_get(a, m->to_brand, &to);
	if (rc == 0)
		rc = account_open(a, from, m->member, &src, NULL);
	if (rc == 0)
		rc = account_open(a, to, m->member, &dst, NULL);
	if (rc != 0)
		return rc;
	if (src->available < m->points)
		return reject(a, r, CODE(INSUFFICIENT_POINTS), "available %lld < %lld points",
			      (long long)src->available, (long long)m->points);
	if (dst->available > TALLY_BALANCE_MAX - to_points)
		return reject(a, r, CODE(LIMIT_EXCEEDED), "points: balance in %s would pass %lld",
			      m->to_brand, (long long)TALLY_BALANCE_MAX);
	if (!lots_room(a, dst, 1)) /* the first rules only (lots_room) */
		return reject(a, r, CODE(LIMIT_EXCEEDED), "member: the account in %s holds %d lots",
			      m->to_brand, TALLY_ACCOUNT_LOTS_RULES_1_MAX);
	rc = daily_use(a, DAILY_EXCHANGE, m->from_brand, m->member, m->to_brand, m->points,
		       ag->daily_cap_points, &over);
	if (rc != 0)
		return rc;
	if (over)
		return reject(a, r, CODE(LIMIT_EXCEEDED), "points: daily exchange cap of %lld reached",
			      (long long)ag->daily_cap_points);
	rc = exchange_post(a, m, to, src, dst, to_points);
	if (rc == 0)
		rc = obligation_add(a, m, to_points, amount);
	src->updated_ms = a->now_ms;
	if (rc == 0)
		rc = account_save(a, src);
	result_ok(r, src);
	r->points = to_points;
	if (rc == 0)
		rc = emit_entry(a, TALLY__V1__ENTRY_KIND__COMMAND, r, m->from_brand, m->member, 0);
	return rc;
}

/* ---- settlement ------------------------------------------------------------------- */

/* Entry times never decrease with seq, so the journal as of a cut-off is a prefix:
 * binary search for the number of entries with time <= until_ms. */
static int size_at(struct apply *a, int64_t until_ms, uint64_t *size)
{
	uint64_t lo = 0, hi = a->m.tree.size; /* answer in [lo, hi] */
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo + 1) / 2;
		MDB_val raw;
		int rc = txn_entry_get(a->txn, a->l->dbi[T_ENTRIES], mid, &raw);
		if (rc != 0)
			return rc == TALLY_ENOTFOUND ? TALLY_ECORRUPT : rc;
		if ((int64_t)be64_get((uint8_t *)raw.mv_data + 16) <= until_ms)
			lo = mid;
		else
			hi = mid - 1;
	}
	*size = lo;
	return 0;
}

/* Nets and removes the pair's open obligations up to until_ms into s. Sets *over and
 * removes nothing when a gross amount would pass TALLY_BALANCE_MAX. */
static int settle_net(struct apply *a, Tally__V1__Settlement *s, bool *over)
{
	struct key prefix;
	pair_key(&prefix, s->brand_a, s->brand_b);
	MDB_cursor *cur;
	int rc = lmdb_error(mdb_cursor_open(a->txn, a->l->dbi[T_OBLIGATIONS], &cur));
	if (rc != 0)
		return rc;
	/* Collect first (reading), then delete: no writes while the cursor walks. */
	MDB_val k = {prefix.n, prefix.b}, v;
	int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	struct key *dead = NULL;
	size_t n_dead = 0, cap = 0;
	for (; mrc == 0 && rc == 0; mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (k.mv_size != prefix.n + 8 || memcmp(k.mv_data, prefix.b, prefix.n) != 0)
			break;
		Tally__V1__Obligation *o = tally__v1__obligation__unpack(
			tally_arena_protobuf(a->tmp), v.mv_size, v.mv_data);
		if (o == NULL) {
			rc = TALLY_ECORRUPT;
			break;
		}
		if (o->time_ms > s->until_ms)
			break;
		bool a_pays = strcmp(o->payer, s->brand_a) == 0;
		int64_t *gross = a_pays ? &s->gross_a_to_b_micros : &s->gross_b_to_a_micros;
		if (*gross > TALLY_BALANCE_MAX - o->amount_micros) {
			*over = true; /* a business limit, not a failure of the batch */
			break;
		}
		*gross += o->amount_micros;
		if (s->count == 0)
			s->first_seq = o->seq;
		s->last_seq = o->seq;
		s->count++;
		if (n_dead == cap) {
			cap = cap == 0 ? 64 : cap * 2;
			struct key *nd = tally_arena_alloc(a->tmp, cap * sizeof(*nd));
			if (nd == NULL) {
				rc = TALLY_ENOMEM;
				break;
			}
			if (n_dead > 0)
				memcpy(nd, dead, n_dead * sizeof(*nd));
			dead = nd;
		}
		dead[n_dead].n = k.mv_size;
		memcpy(dead[n_dead].b, k.mv_data, k.mv_size);
		n_dead++;
	}
	mdb_cursor_close(cur);
	if (rc == 0 && mrc != 0 && mrc != MDB_NOTFOUND)
		rc = lmdb_error(mrc);
	for (size_t i = 0; rc == 0 && !*over && i < n_dead; i++)
		rc = st_del(a, T_OBLIGATIONS, &dead[i]);
	return rc;
}

int do_settle(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__Settle *m = c->settle;
	int rc = check_pair(a, r, m->brand_a, m->brand_b, "brand_a", "brand_b");
	if (rc == 0 && !REJECTED(r))
		rc = check_pair_scope(a, r, m->brand_a, m->brand_b);
	if (rc != 0 || REJECTED(r))
		return rc;
	if (m->until_ms < 0 || m->until_ms >= a->now_ms)
		return reject(a, r, CODE(INVALID_ARGUMENT),
			      "until_ms: the cut-off must be in the past (before %lld)",
			      (long long)a->now_ms);
	bool ordered = strcmp(m->brand_a, m->brand_b) < 0;
	Tally__V1__Settlement s = TALLY__V1__SETTLEMENT__INIT;
	s.id = next_seq(a);
	s.brand_a = ordered ? m->brand_a : m->brand_b;
	s.brand_b = ordered ? m->brand_b : m->brand_a;
	s.until_ms = m->until_ms;
	s.created_ms = a->now_ms;
	uint8_t root[32];
	bool over = false;
	rc = settle_net(a, &s, &over);
	if (rc == 0 && over)
		return reject(a, r, CODE(LIMIT_EXCEEDED),
			      "until_ms: obligations up to the cut-off exceed %lld micros one way; "
			      "settle an earlier cut-off first", (long long)TALLY_BALANCE_MAX);
	if (rc == 0)
		rc = size_at(a, m->until_ms, &s.tree_size);
	struct tally_merkle_store st = tree_store(a->txn, a->l->dbi);
	if (rc == 0 && s.tree_size > 0)
		rc = tally_merkle_root_at(&st, s.tree_size, root);
	if (s.tree_size == 0)
		tally_merkle_empty_root(root);
	s.merkle_root.data = root;
	s.merkle_root.len = 32;
	int64_t net = s.gross_a_to_b_micros - s.gross_b_to_a_micros;
	s.net_micros = net < 0 ? -net : net;
	s.payer = (char *)(net > 0 ? s.brand_a : net < 0 ? s.brand_b : "");
	s.payee = (char *)(net > 0 ? s.brand_b : net < 0 ? s.brand_a : "");
	struct key k, pk;
	key_reset(&k);
	key_u64(&k, s.id);
	pair_key(&pk, s.brand_a, s.brand_b);
	key_u64(&pk, s.id);
	if (rc == 0)
		rc = rec_put(a, T_SETTLEMENTS, &k, &s);
	if (rc == 0)
		rc = st_put(a, T_SETTLE_PAIR, &pk, "", 0);
	result_ok(r, NULL);
	r->settlement_id = s.id;
	r->count = s.count;
	if (rc == 0)
		rc = emit_entry(a, TALLY__V1__ENTRY_KIND__COMMAND, r, s.brand_a, NULL, 0);
	return rc;
}

int do_confirm_settlement(struct apply *a, const Tally__V1__Command *c,
			  Tally__V1__CommandResult *r)
{
	const Tally__V1__ConfirmSettlement *m = c->confirm_settlement;
	Tally__V1__Settlement *s;
	struct key k;
	key_reset(&k);
	key_u64(&k, m->settlement_id);
	int rc = rec_get(a, T_SETTLEMENTS, &k, &tally__v1__settlement__descriptor, (void **)&s);
	if (rc == TALLY_ENOTFOUND)
		return reject(a, r, CODE(NOT_FOUND), "settlement_id: no settlement %llu",
			      (unsigned long long)m->settlement_id);
	if (rc != 0)
		return rc;
	/* The payee confirms it received the net; with nothing owed either brand may. */
	const Tally__V1__Principal *p = c->principal;
	bool ok = s->payee[0] != '\0' ? in_scope(p, s->payee)
				      : in_scope(p, s->brand_a) || in_scope(p, s->brand_b);
	if (!ok)
		return reject(a, r, CODE(PERMISSION_DENIED),
			      "settlement_id: only the payee brand %s confirms", s->payee);
	if (s->confirmed)
		return reject(a, r, CODE(ALREADY_EXISTS), "settlement_id: %llu is already confirmed",
			      (unsigned long long)m->settlement_id);
	s->confirmed = true;
	s->confirmed_ms = a->now_ms;
	s->confirmed_by = p->key_name;
	rc = rec_put(a, T_SETTLEMENTS, &k, s);
	result_ok(r, NULL);
	r->settlement_id = s->id;
	if (rc == 0)
		rc = emit_entry(a, TALLY__V1__ENTRY_KIND__COMMAND, r, s->payee[0] ? s->payee : s->brand_a,
				NULL, 0);
	return rc;
}
