/*
 * Member accounts and what hangs off them: lots (spent first-expiring-first), holds,
 * qualifying points and tiers, daily counters, and the sweeps that let time pass.
 *
 * Time passes for an account whenever a command touches it (account_open): lots that
 * ran out are posted as LOT_EXPIRED entries and qualifying points older than the
 * brand's window drop out, before the command itself looks at the balance. Holds are
 * released at the start of the first batch whose time passes their timeout, and the
 * expire command sweeps accounts nobody touched.
 */
#include <assert.h>
#include <string.h>

#include "ledger/internal.h"

/* ---- lookups ---------------------------------------------------------------------- */

/* Brands are read by almost every command and written rarely: the batch keeps the
 * ones it read (brand writes empty the cache). Callers must not modify them. */
int brand_get(struct apply *a, const char *id, Tally__V1__Brand **out)
{
	assert(id != NULL && out != NULL);
	*out = NULL;
	if (id[0] == '\0' || strlen(id) > TALLY_BRAND_ID_BYTES_MAX)
		return TALLY_ENOTFOUND;
	for (size_t i = 0; i < a->n_brands; i++) {
		if (strcmp(a->brands[i]->id, id) == 0) {
			*out = a->brands[i];
			return 0;
		}
	}
	struct key k;
	MDB_val v;
	key_reset(&k);
	key_raw(&k, id);
	int rc = st_get(a, T_BRANDS, &k, &v);
	if (rc != 0)
		return rc;
	*out = tally__v1__brand__unpack(tally_arena_protobuf(&a->l->batch), v.mv_size, v.mv_data);
	if (*out == NULL)
		return TALLY_ECORRUPT;
	if (a->n_brands < BRAND_CACHE_MAX)
		a->brands[a->n_brands++] = *out;
	return 0;
}

int member_exists(struct apply *a, const char *id, bool *exists)
{
	assert(id != NULL && exists != NULL);
	struct key k;
	MDB_val v;
	*exists = false;
	if (id[0] == '\0' || strlen(id) > TALLY_MEMBER_ID_BYTES_MAX)
		return 0;
	key_reset(&k);
	key_raw(&k, id);
	int rc = st_get(a, T_MEMBERS, &k, &v);
	*exists = rc == 0;
	return rc == TALLY_ENOTFOUND ? 0 : rc;
}

/* The first record at or after `from` whose key starts with `prefix` (n_prefix
 * bytes), copied into the scratch arena so that writes may follow. */
static int seek_prefix(struct apply *a, enum table t, const struct key *from, size_t n_prefix,
		       MDB_val *k, MDB_val *v, bool *found)
{
	assert(n_prefix <= from->n);
	MDB_cursor *cur;
	*found = false;
	int rc = mdb_cursor_open(a->txn, a->l->dbi[t], &cur);
	if (rc != 0)
		return lmdb_error(rc);
	MDB_val key = {from->n, (void *)from->b}, val;
	rc = mdb_cursor_get(cur, &key, &val, from->n > 0 ? MDB_SET_RANGE : MDB_FIRST);
	mdb_cursor_close(cur);
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc != 0)
		return lmdb_error(rc);
	if (key.mv_size < n_prefix || memcmp(key.mv_data, from->b, n_prefix) != 0)
		return 0;
	k->mv_size = key.mv_size;
	v->mv_size = val.mv_size;
	k->mv_data = tally_arena_alloc(a->tmp, key.mv_size + val.mv_size + 1);
	if (k->mv_data == NULL)
		return TALLY_ENOMEM;
	memcpy(k->mv_data, key.mv_data, key.mv_size);
	v->mv_data = (uint8_t *)k->mv_data + key.mv_size;
	memcpy(v->mv_data, val.mv_data, val.mv_size);
	*found = true;
	return 0;
}

static void account_key(struct key *k, const char *brand, const char *member)
{
	key_reset(k);
	key_str(k, brand);
	key_raw(k, member);
}

static void lot_prefix(struct key *k, const char *brand, const char *member)
{
	key_reset(k);
	key_str(k, brand);
	key_str(k, member);
}

bool lot_valid(const struct apply *a, int64_t expiry_ms)
{
	return expiry_ms == 0 || expiry_ms > a->now_ms;
}

/* The expiry of points the brand gives now: its policy's months on, or never (0). */
int64_t lot_expiry(const struct apply *a, const Tally__V1__Brand *b)
{
	return b->expiry_months == 0 ? 0 : add_months(a->now_ms, b->expiry_months);
}

/* ---- lots ------------------------------------------------------------------------- *
 * An account keeps its lots in its own record, first-expiring first and the lots that
 * never expire (expiry 0) last, so spending and expiring read the front of one array
 * and touch no other record. The expiry index holds one row per account: the expiry
 * of its first lot (account_save keeps it in step). */

/* Sort key of a lot: never-expiring lots go last. */
static uint64_t lot_order(int64_t expiry_ms)
{
	return expiry_ms == 0 ? UINT64_MAX : (uint64_t)expiry_ms;
}

/* Where a lot with this expiry is or would go: the first lot that does not sort
 * before it (the array is strictly ordered, check.c). */
static size_t lot_find(const Tally__V1__Account *acct, int64_t expiry_ms)
{
	size_t lo = 0, hi = acct->n_lots;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (lot_order(acct->lots[mid]->expiry_ms) < lot_order(expiry_ms))
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static bool lot_is_at(const Tally__V1__Account *acct, size_t i, int64_t expiry_ms)
{
	return i < acct->n_lots && acct->lots[i]->expiry_ms == expiry_ms;
}

/* Whether the account may start `more` lots: always under the bounded lots (lot_give
 * finds a lot for any points); under the first rules while it stays within
 * TALLY_ACCOUNT_LOTS_RULES_1_MAX. */
bool lots_room(const struct apply *a, const Tally__V1__Account *acct, size_t more)
{
	return a->m.rules >= TALLY_RULES_BOUNDED_LOTS ||
	       acct->n_lots + more <= TALLY_ACCOUNT_LOTS_RULES_1_MAX;
}

/* Whether points with this expiry find a lot: one more lot needs room (lots_room), the
 * lot that already has the expiry takes them whatever the count. */
bool lot_room(const struct apply *a, const Tally__V1__Account *acct, int64_t expiry_ms)
{
	return lots_room(a, acct, 1) || lot_is_at(acct, lot_find(acct, expiry_ms), expiry_ms);
}

/* Points to the account's lot array with room for one more, copied into the scratch
 * arena (the array decoded from LMDB has no spare slot). */
static int lots_grow(struct apply *a, Tally__V1__Account *acct)
{
	Tally__V1__Lot **lots = tally_arena_alloc(a->tmp, (acct->n_lots + 1) * sizeof(*lots));
	if (lots == NULL)
		return TALLY_ENOMEM;
	if (acct->n_lots > 0)
		memcpy(lots, acct->lots, acct->n_lots * sizeof(*lots));
	acct->lots = lots;
	return 0;
}

/* Adds points to the lot with expiry *expiry_ms, creating it in order if needed. Under
 * the bounded lots (TALLY_RULES_BOUNDED_LOTS), an account that holds
 * TALLY_ACCOUNT_LOTS_EXACT_MAX lots already gets no new lot at an exact expiry: the
 * points go to the lot at the end of that month (month_ceil), which *expiry_ms then
 * says, so the entry records where they went. (Under the first rules the commands
 * that add points ask lot_room first.) */
int lot_give(struct apply *a, Tally__V1__Account *acct, int64_t *expiry_ms, int64_t points)
{
	assert(points > 0);
	assert(lot_valid(a, *expiry_ms));
	size_t i = lot_find(acct, *expiry_ms);
	if (!lot_is_at(acct, i, *expiry_ms) && *expiry_ms != 0 &&
	    a->m.rules >= TALLY_RULES_BOUNDED_LOTS &&
	    acct->n_lots >= TALLY_ACCOUNT_LOTS_EXACT_MAX) {
		*expiry_ms = month_ceil(*expiry_ms);
		i = lot_find(acct, *expiry_ms);
	}
	assert(lot_valid(a, *expiry_ms));
	if (lot_is_at(acct, i, *expiry_ms)) {
		acct->lots[i]->points += points;
		return 0;
	}
	Tally__V1__Lot *lot = tally_arena_alloc(a->tmp, sizeof(*lot));
	if (lot == NULL || lots_grow(a, acct) != 0)
		return TALLY_ENOMEM;
	tally__v1__lot__init(lot);
	lot->expiry_ms = *expiry_ms;
	lot->points = points;
	memmove(acct->lots + i + 1, acct->lots + i, (acct->n_lots - i) * sizeof(*acct->lots));
	acct->lots[i] = lot;
	acct->n_lots++;
	uint64_t order = lot_order(*expiry_ms);
	assert(i == 0 || lot_order(acct->lots[i - 1]->expiry_ms) < order);
	assert(i + 1 == acct->n_lots || order < lot_order(acct->lots[i + 1]->expiry_ms));
	return 0;
}

static void lot_remove(Tally__V1__Account *acct, size_t i)
{
	assert(i < acct->n_lots);
	memmove(acct->lots + i, acct->lots + i + 1, (acct->n_lots - i - 1) * sizeof(*acct->lots));
	acct->n_lots--;
}

/* Takes up to `want` points from lot i (removing it when empty); *took says how many. */
static int lot_take_at(struct apply *a, Tally__V1__Account *acct, size_t i, int64_t want,
		       bool record, int64_t *took)
{
	Tally__V1__Lot *lot = acct->lots[i];
	assert(lot->points > 0 && want > 0);
	*took = lot->points < want ? lot->points : want;
	int rc = record ? lot_move(a, lot->expiry_ms, *took) : 0;
	lot->points -= *took;
	if (lot->points == 0)
		lot_remove(acct, i);
	return rc;
}

/* Spends `points` from the account's lots, first-expiring first (after the lot with
 * expiry first_expiry_ms when that is >= 0 and still held). The caller has checked
 * available >= points; available == Σ lots makes running out a corruption. */
int lots_take(struct apply *a, Tally__V1__Account *acct, int64_t points,
	      int64_t first_expiry_ms, bool record)
{
	assert(points > 0 && acct->available >= points);
	int64_t left = points, took;
	int rc = 0;
	for (size_t i = 0; first_expiry_ms >= 0 && i < acct->n_lots; i++) {
		if (acct->lots[i]->expiry_ms == first_expiry_ms) {
			rc = lot_take_at(a, acct, i, left, record, &took);
			left -= took;
			break;
		}
	}
	while (rc == 0 && left > 0) {
		if (acct->n_lots == 0)
			return TALLY_ECORRUPT;
		rc = lot_take_at(a, acct, 0, left, record, &took);
		left -= took;
	}
	return rc;
}

/* ---- tiers and qualifying points ---------------------------------------------------- */

void tier_update(const Tally__V1__Brand *b, Tally__V1__Account *acct)
{
	assert(b != NULL && acct != NULL);
	acct->tier = (char *)"";
	for (size_t i = 0; i < b->n_tiers; i++)
		if (acct->qualifying >= b->tiers[i]->min_points)
			acct->tier = b->tiers[i]->name;
}

static void qual_key(struct key *k, const char *brand, const char *member, int64_t day)
{
	lot_prefix(k, brand, member);
	key_u32(k, (uint32_t)day);
}

static int qual_index(struct apply *a, const char *brand, const char *member, int64_t day,
		      bool present)
{
	struct key k;
	key_reset(&k);
	key_str(&k, brand);
	key_u32(&k, (uint32_t)day);
	key_raw(&k, member);
	return present ? st_put(a, T_QUAL_DAY, &k, "", 0) : st_del(a, T_QUAL_DAY, &k);
}

/* Re-reads the oldest bucket so qualifying_day stays exact after a deletion. */
static int qual_oldest(struct apply *a, Tally__V1__Account *acct)
{
	struct key prefix;
	MDB_val k, v;
	bool found;
	lot_prefix(&prefix, acct->brand, acct->member);
	int rc = seek_prefix(a, T_QUAL, &prefix, prefix.n, &k, &v, &found);
	if (rc == 0)
		acct->qualifying_day = found ? be32_get((uint8_t *)k.mv_data + prefix.n) : 0;
	return rc;
}

/* Adds `points` (negative: removes up to what the bucket holds) to the qualifying
 * bucket of `day`. Buckets exist only for brands with a tier window. */
int qualify(struct apply *a, const Tally__V1__Brand *b, Tally__V1__Account *acct,
	    int64_t day, int64_t points)
{
	assert(day >= 0 && points != 0);
	if (b->tier_window_days == 0 || day <= a->today - (int64_t)b->tier_window_days)
		return 0;
	struct key k;
	qual_key(&k, acct->brand, acct->member, day);
	int64_t v;
	int rc = st_get_i64(a, T_QUAL, &k, &v);
	if (rc != 0)
		return rc;
	int64_t nv = v + points < 0 ? 0 : v + points;
	if (nv == v)
		return 0;
	rc = st_put_i64(a, T_QUAL, &k, nv);
	if (rc == 0 && (v == 0) != (nv == 0))
		rc = qual_index(a, acct->brand, acct->member, day, nv > 0);
	acct->qualifying += nv - v;
	if (rc == 0)
		rc = qual_oldest(a, acct);
	tier_update(b, acct);
	return rc;
}

/* Drops buckets that left the window [today - window + 1, today]. */
static int qual_prune(struct apply *a, const Tally__V1__Brand *b, Tally__V1__Account *acct,
		      bool *changed)
{
	int64_t cutoff = a->today - (int64_t)b->tier_window_days; /* buckets <= cutoff go */
	int rc = 0;
	while (rc == 0 && acct->qualifying > 0 && acct->qualifying_day <= cutoff) {
		struct key k;
		int64_t day = acct->qualifying_day, v;
		qual_key(&k, acct->brand, acct->member, day);
		rc = st_get_i64(a, T_QUAL, &k, &v);
		if (rc == 0 && v == 0)
			return TALLY_ECORRUPT;
		if (rc == 0)
			rc = st_del(a, T_QUAL, &k);
		if (rc == 0)
			rc = qual_index(a, acct->brand, acct->member, day, false);
		acct->qualifying -= v;
		if (rc == 0)
			rc = qual_oldest(a, acct);
		*changed = true;
	}
	return rc;
}

/* ---- accounts --------------------------------------------------------------------- */

/* ---- the expiry index ---------------------------------------------------------------
 * One row per account whose lots expire, (lot_index_ms, brand, member), kept in the
 * account as lot_index_ms, at or before the expiry of the account's first lot: a lot
 * that expires sooner than the row moves the row at once, but a first lot that goes
 * (spent, expired) leaves the row where it is, so a redemption writes no index row.
 * The expire sweep, reaching a row left behind its account's first lot, moves it to the
 * account's first lot, or removes it (touch_account). */

static int64_t lots_first_expiry(const Tally__V1__Account *acct)
{
	return acct->n_lots > 0 ? acct->lots[0]->expiry_ms : 0; /* never-expiring lots last */
}

/* Moves the account's row to expiry `to` (0: no row). */
static int lot_index_move(struct apply *a, Tally__V1__Account *acct, int64_t to)
{
	if (to == acct->lot_index_ms)
		return 0;
	struct key k;
	int rc = 0;
	if (acct->lot_index_ms != 0) {
		key_reset(&k);
		key_u64(&k, (uint64_t)acct->lot_index_ms);
		key_str(&k, acct->brand);
		key_raw(&k, acct->member);
		rc = st_del(a, T_LOT_EXP, &k);
	}
	if (rc == 0 && to != 0) {
		key_reset(&k);
		key_u64(&k, (uint64_t)to);
		key_str(&k, acct->brand);
		key_raw(&k, acct->member);
		rc = st_put(a, T_LOT_EXP, &k, "", 0);
	}
	acct->lot_index_ms = to;
	return rc;
}

/* Keeps the row at or before the first lot's expiry, moving it only when it must. */
static int lot_index_update(struct apply *a, Tally__V1__Account *acct)
{
	int64_t first = lots_first_expiry(acct);
	bool before_first = acct->lot_index_ms != 0 && (first == 0 || acct->lot_index_ms <= first);
	return before_first ? 0 : lot_index_move(a, acct, first);
}

struct open_account *account_opened(struct apply *a, const char *brand, const char *member)
{
	for (size_t i = 0; i < a->n_open; i++) {
		const Tally__V1__Account *x = a->open[i].acct;
		if (strcmp(x->brand, brand) == 0 && strcmp(x->member, member) == 0)
			return &a->open[i];
	}
	return NULL;
}

/* Keeps the account as it is now: its expiry index row at once (the expire sweep
 * seeks it), its record when the command ends (accounts_flush), after the entries
 * that move its chain head. */
int account_save(struct apply *a, Tally__V1__Account *acct)
{
	assert(acct->available >= 0 && acct->held >= 0);
	assert(acct->n_holds == 0);
	struct open_account *o = account_opened(a, acct->brand, acct->member);
	assert(o != NULL && o->acct == acct);
	o->save = true;
	return lot_index_update(a, acct);
}

/* ---- an account's part of the state digest ------------------------------------------
 * account.c keeps it itself (st_get_own, st_put_own): a record hashed apart (rules 4,
 * record_hash) has its lots hashed one by one, and a command takes out and puts in
 * only the lots it changed, where a whole record's hash covers all of them. */

/* The hash of the account's part without lots, head the record's stored head. */
static int account_part(struct apply *a, const MDB_val *key, const uint8_t *head,
			const Tally__V1__Account *acct, uint8_t out[32])
{
	Tally__V1__Account bare = *acct;
	bare.n_lots = 0;
	bare.lots = NULL;
	size_t n;
	const uint8_t *body = codec_pack_arena(a->tmp, &bare, 0, &n);
	if (body == NULL)
		return TALLY_ENOMEM;
	account_part_hash(key, head, body, n, out);
	return 0;
}

/* What the record v just read adds to the digest (struct account_was). */
static int account_was_take(struct apply *a, const MDB_val *key, const MDB_val *v,
			    const struct chain_head *head, const Tally__V1__Account *acct,
			    struct account_was *was)
{
	*was = (struct account_was){.found = true, .apart = head->lots_apart};
	if (!was->apart) {
		record_hash(T_ACCOUNTS, key, v, was->hash);
		return 0;
	}
	/* Only account_write sets the flag, and only on these. */
	if (acct->n_lots <= TALLY_ACCOUNT_LOTS_APART_MIN || !codec_account_plain(acct))
		return TALLY_ECORRUPT;
	was->lots = tally_arena_alloc(a->tmp, acct->n_lots * sizeof(*was->lots));
	if (was->lots == NULL)
		return TALLY_ENOMEM;
	for (size_t i = 0; i < acct->n_lots; i++)
		was->lots[i] = (struct lot_pair){acct->lots[i]->expiry_ms, acct->lots[i]->points};
	was->n_lots = acct->n_lots;
	return account_part(a, key, v->mv_data, acct, was->hash);
}

/* Takes the lots that were and are not out of the digest and puts those that are and
 * were not in: a merge of the two lists, both in lot order. */
static void lots_digest(uint8_t digest[32], const MDB_val *key, const struct lot_pair *was,
			size_t n_was, Tally__V1__Lot *const *now, size_t n_now)
{
	uint8_t h[32];
	size_t i = 0, j = 0;
	while (i < n_was || j < n_now) {
		uint64_t before = i < n_was ? lot_order(was[i].expiry_ms) : 0;
		uint64_t after = j < n_now ? lot_order(now[j]->expiry_ms) : 0;
		bool same = i < n_was && j < n_now && before == after;
		if (same && was[i].points == now[j]->points) {
			i++, j++;
			continue;
		}
		if (i < n_was && (j == n_now || before <= after)) {
			account_lot_hash(key, was[i].expiry_ms, was[i].points, h);
			digest_sub(digest, h);
			i++;
		}
		if (j < n_now && (i == n_was || same || after < before)) {
			account_lot_hash(key, now[j]->expiry_ms, now[j]->points, h);
			digest_add(digest, h);
			j++;
		}
	}
}

/* The digest without what the record added when read, and with what v adds. */
static int account_digest(struct apply *a, const struct open_account *o, const MDB_val *key,
			  const MDB_val *v)
{
	const struct account_was *was = &o->was;
	assert(was->apart || was->n_lots == 0);
	if (was->found)
		digest_sub(a->m.digest, was->hash);
	uint8_t h[32];
	if (o->head.lots_apart) {
		int rc = account_part(a, key, v->mv_data, o->acct, h);
		if (rc != 0)
			return rc;
		lots_digest(a->m.digest, key, was->lots, was->n_lots, o->acct->lots, o->acct->n_lots);
	} else {
		record_hash(T_ACCOUNTS, key, v, h);
		lots_digest(a->m.digest, key, was->lots, was->n_lots, NULL, 0);
	}
	digest_add(a->m.digest, h);
	return 0;
}

/* Under TALLY_RULES_LOTS_APART, a record with more than TALLY_ACCOUNT_LOTS_APART_MIN lots
 * is hashed in parts; one the codec does not write itself (unknown fields) never is. */
static bool account_apart(const struct apply *a, const Tally__V1__Account *acct)
{
	return a->m.rules >= TALLY_RULES_LOTS_APART &&
	       acct->n_lots > TALLY_ACCOUNT_LOTS_APART_MIN && codec_account_plain(acct);
}

static int account_write(struct apply *a, struct open_account *o)
{
	struct key k;
	account_key(&k, o->acct->brand, o->acct->member);
	o->head.lots_apart = account_apart(a, o->acct);
	size_t n;
	size_t head = chain_head_bytes(&o->head);
	uint8_t *buf = codec_pack_arena(a->tmp, o->acct, head, &n);
	if (buf == NULL)
		return TALLY_ENOMEM;
	chain_head_encode(buf, &o->head);
	MDB_val key = {k.n, k.b}, v = {head + n, buf};
	int rc = account_digest(a, o, &key, &v);
	return rc != 0 ? rc : st_put_own(a, T_ACCOUNTS, &k, buf, head + n);
}

int accounts_flush(struct apply *a)
{
	int rc = 0;
	for (size_t i = 0; rc == 0 && i < a->n_open; i++)
		if (a->open[i].save)
			rc = account_write(a, &a->open[i]);
	a->n_open = 0;
	return rc;
}

/* Posts the lots of the account that ran out by now, first-expiring first and at
 * most lots_max of them, each as a LOT_EXPIRED entry. */
static int lots_expire(struct apply *a, Tally__V1__Account *acct, uint64_t lots_max,
		       bool *changed)
{
	for (uint64_t n = 0; n < lots_max && acct->n_lots > 0; n++) {
		const Tally__V1__Lot *lot = acct->lots[0];
		int64_t expiry = lot->expiry_ms, points = lot->points;
		if (lot_valid(a, expiry))
			return 0;
		if (points <= 0 || points > acct->available)
			return TALLY_ECORRUPT;
		lot_remove(acct, 0);
		acct->available -= points;
		acct->expired += points;
		int rc = post_member(a, acct->brand, acct->member, TALLY__V1__BUCKET__AVAILABLE, -points);
		if (rc == 0)
			rc = post_system(a, acct->brand, TALLY__V1__SYSTEM_ACCOUNT__EXPIRED, NULL, points);
		if (rc == 0)
			rc = lot_move(a, expiry, points);
		Tally__V1__CommandResult r = TALLY__V1__COMMAND_RESULT__INIT;
		result_ok(&r, acct);
		r.points = points;
		if (rc == 0)
			rc = emit_entry(a, TALLY__V1__ENTRY_KIND__LOT_EXPIRED, &r, acct->brand,
					acct->member, 0);
		if (rc != 0)
			return rc;
		*changed = true;
	}
	return 0;
}

/* Lets time pass for the account: expiries (at most lots_max), window and tier.
 * Saves it if anything changed, so a command rejected afterwards leaves the account
 * consistent. Lots left expired stay counted in available and in the expiry index. */
static int account_refresh(struct apply *a, const Tally__V1__Brand *b, Tally__V1__Account *acct,
			   uint64_t lots_max)
{
	assert(a->n_postings == 0);
	assert(lots_max > 0);
	bool changed = false;
	const char *tier = acct->tier;
	int rc = lots_expire(a, acct, lots_max, &changed);
	if (rc == 0 && b->tier_window_days > 0)
		rc = qual_prune(a, b, acct, &changed);
	tier_update(b, acct);
	if (strcmp(tier, acct->tier) != 0)
		changed = true;
	if (rc == 0 && changed) {
		acct->updated_ms = a->now_ms;
		rc = account_save(a, acct);
	}
	return rc;
}

/* Reads the account's record into o, or makes a fresh one (*fresh). */
static int account_read(struct apply *a, const Tally__V1__Brand *b, const char *member,
			struct open_account *o, bool *fresh)
{
	struct key k;
	MDB_val v;
	account_key(&k, b->id, member);
	memset(&o->head, 0, sizeof(o->head));
	o->was = (struct account_was){.found = false};
	int rc = st_get_own(a, T_ACCOUNTS, &k, &v);
	*fresh = rc == TALLY_ENOTFOUND;
	if (rc == 0) {
		MDB_val body, key = {k.n, k.b};
		rc = chain_head_decode(&v, &o->head, &body);
		o->acct = rc != 0 ? NULL : account_unpack(a->tmp, body.mv_data, body.mv_size);
		if (rc != 0 || o->acct == NULL)
			return TALLY_ECORRUPT;
		return account_was_take(a, &key, &v, &o->head, o->acct, &o->was);
	}
	if (rc != TALLY_ENOTFOUND)
		return rc;
	Tally__V1__Account *acct = tally_arena_alloc(a->tmp, sizeof(*acct));
	if (acct == NULL)
		return TALLY_ENOMEM;
	tally__v1__account__init(acct);
	acct->brand = tally_arena_strdup(a->tmp, b->id);
	acct->member = tally_arena_strdup(a->tmp, member);
	if (acct->brand == NULL || acct->member == NULL)
		return TALLY_ENOMEM;
	o->acct = acct;
	return 0;
}

/* account_open, expiring at most lots_max lots (the expire sweep keeps to its budget).
 * An account is read once per command: opened again, it is the same one. */
static int account_load(struct apply *a, const Tally__V1__Brand *b, const char *member,
			Tally__V1__Account **out, bool *fresh, uint64_t lots_max)
{
	assert(b != NULL && member != NULL && out != NULL);
	struct open_account *o = account_opened(a, b->id, member);
	bool is_fresh = false;
	if (fresh != NULL)
		*fresh = false;
	if (o != NULL) {
		*out = o->acct;
		return 0;
	}
	if (a->n_open == OPEN_ACCOUNTS_MAX)
		return TALLY_ECORRUPT; /* no command opens more: a bug, refused alike everywhere */
	o = &a->open[a->n_open];
	int rc = account_read(a, b, member, o, &is_fresh);
	if (rc != 0)
		return rc;
	o->save = false;
	a->n_open++;
	*out = o->acct;
	if (fresh != NULL)
		*fresh = is_fresh;
	return is_fresh ? 0 : account_refresh(a, b, *out, lots_max);
}

/* A command sees the account with every lot that ran out expired: no limit. */
int account_open(struct apply *a, const Tally__V1__Brand *b, const char *member,
		 Tally__V1__Account **out, bool *fresh)
{
	return account_load(a, b, member, out, fresh, UINT64_MAX);
}

/* ---- daily counters --------------------------------------------------------------- */

int daily_use(struct apply *a, enum daily_kind kind, const char *brand, const char *member,
	      const char *partner, int64_t points, int64_t cap, bool *over)
{
	assert(points > 0 && over != NULL);
	*over = false;
	if (cap <= 0)
		return 0; /* no cap: nothing to count */
	struct key k;
	key_reset(&k);
	key_u32(&k, (uint32_t)a->today);
	key_u8(&k, (uint8_t)kind);
	key_str(&k, brand);
	key_str(&k, member);
	key_raw(&k, partner != NULL ? partner : "");
	int64_t used;
	int rc = st_get_i64(a, T_DAILY, &k, &used);
	if (rc != 0)
		return rc;
	if (points > cap - used) {
		*over = true;
		return 0;
	}
	return st_put_i64(a, T_DAILY, &k, used + points);
}

/* ---- holds ------------------------------------------------------------------------ */

static int hold_index(struct apply *a, const Tally__V1__HoldRecord *h, bool present)
{
	struct key k1, k2;
	key_reset(&k1);
	key_u64(&k1, (uint64_t)h->expires_ms);
	key_u64(&k1, h->id);
	lot_prefix(&k2, h->brand, h->member);
	key_u64(&k2, h->id);
	int rc = present ? st_put(a, T_HOLD_EXP, &k1, "", 0) : st_del(a, T_HOLD_EXP, &k1);
	if (rc == 0)
		rc = present ? st_put(a, T_HOLD_ACCT, &k2, "", 0) : st_del(a, T_HOLD_ACCT, &k2);
	return rc;
}

int hold_store(struct apply *a, const Tally__V1__HoldRecord *h, bool open)
{
	struct key k;
	key_reset(&k);
	key_u64(&k, h->id);
	int rc = rec_put(a, T_HOLDS, &k, h);
	if (rc == 0)
		rc = hold_index(a, h, open);
	return rc;
}

/* Returns a hold's pieces beyond the first `capture_points` to their lots (or to
 * EXPIRED when a lot ran out meanwhile). Captured pieces are recorded as the entry's
 * lot moves (a refund of the capture returns them); for a void or release the
 * returned pieces are. */
static int hold_pieces(struct apply *a, const Tally__V1__HoldRecord *h, Tally__V1__Account *acct,
		       int64_t capture_points, int64_t *valid, int64_t *expired)
{
	int64_t capture_left = capture_points;
	int rc = 0;
	*valid = *expired = 0;
	for (size_t i = 0; rc == 0 && i < h->n_lots; i++) {
		const Tally__V1__LotMove *p = h->lots[i];
		int64_t c = p->points < capture_left ? p->points : capture_left;
		int64_t rest = p->points - c;
		capture_left -= c;
		if (c > 0)
			rc = lot_move(a, p->expiry_ms, c);
		if (rc != 0 || rest == 0)
			continue;
		int64_t expiry = p->expiry_ms;
		if (lot_valid(a, expiry)) {
			rc = lot_give(a, acct, &expiry, rest);
			*valid += rest;
		} else {
			*expired += rest;
		}
		if (rc == 0 && capture_points == 0)
			rc = lot_move(a, expiry, rest);
	}
	if (rc == 0 && (capture_left != 0 || *valid + *expired + capture_points != h->points))
		return TALLY_ECORRUPT;
	return rc;
}

int hold_resolve(struct apply *a, Tally__V1__HoldRecord *h, int64_t capture_points,
		 Tally__V1__HoldStatus status, Tally__V1__CommandResult *r)
{
	assert(h->status == TALLY__V1__HOLD_STATUS__OPEN);
	assert(capture_points >= 0 && capture_points <= h->points);
	Tally__V1__Brand *b;
	Tally__V1__Account *acct;
	int rc = brand_get(a, h->brand, &b);
	if (rc == 0)
		rc = account_open(a, b, h->member, &acct, NULL);
	if (rc != 0)
		return rc == TALLY_ENOTFOUND ? TALLY_ECORRUPT : rc;
	if (acct->held < h->points)
		return TALLY_ECORRUPT;
	int64_t valid, expired;
	rc = hold_pieces(a, h, acct, capture_points, &valid, &expired);
	acct->held -= h->points;
	acct->available += valid;
	acct->expired += expired;
	acct->redeemed += capture_points;
	acct->updated_ms = a->now_ms;
	const char *br = h->brand, *m = h->member;
	if (rc == 0)
		rc = post_member(a, br, m, TALLY__V1__BUCKET__HELD, -h->points);
	if (rc == 0)
		rc = post_system(a, br, TALLY__V1__SYSTEM_ACCOUNT__REDEEMED, NULL, capture_points);
	if (rc == 0)
		rc = post_member(a, br, m, TALLY__V1__BUCKET__AVAILABLE, valid);
	if (rc == 0)
		rc = post_system(a, br, TALLY__V1__SYSTEM_ACCOUNT__EXPIRED, NULL, expired);
	if (rc == 0)
		rc = account_save(a, acct);
	h->status = status;
	h->captured_points = capture_points;
	h->resolved_ms = a->now_ms;
	if (rc == 0)
		rc = hold_store(a, h, false);
	result_ok(r, acct);
	r->hold_id = h->id;
	r->points = status == TALLY__V1__HOLD_STATUS__CAPTURED ? capture_points : h->points;
	Tally__V1__EntryKind kind = status == TALLY__V1__HOLD_STATUS__RELEASED
		? TALLY__V1__ENTRY_KIND__HOLD_RELEASED : TALLY__V1__ENTRY_KIND__COMMAND;
	if (rc == 0)
		rc = emit_entry(a, kind, r, br, m, h->id);
	return rc;
}

int hold_get(struct apply *a, uint64_t id, Tally__V1__HoldRecord **out)
{
	struct key k;
	key_reset(&k);
	key_u64(&k, id);
	return rec_get(a, T_HOLDS, &k, &tally__v1__hold_record__descriptor, (void **)out);
}

/* Releases an open hold whose timeout has passed: its pieces go back to their lots
 * (or to EXPIRED) and a HOLD_RELEASED entry records it. */
int hold_release(struct apply *a, Tally__V1__HoldRecord *h)
{
	assert(h != NULL && h->status == TALLY__V1__HOLD_STATUS__OPEN);
	assert(h->expires_ms <= a->now_ms);
	Tally__V1__CommandResult r = TALLY__V1__COMMAND_RESULT__INIT;
	return hold_resolve(a, h, 0, TALLY__V1__HOLD_STATUS__RELEASED, &r);
}

/* Releases the open holds whose timeout is at or before now, oldest timeout first and
 * at most TALLY_HOLD_RELEASES_PER_BATCH_MAX of them, so one batch's work stays
 * bounded however many holds ran out together (a leader back after an outage, a
 * flash sale's holds). a->holds_more tells whether any was left for later batches;
 * capture and void release such a hold themselves (open_hold), so it is refused
 * with HOLD_EXPIRED exactly as if the sweep had reached it. */
int holds_sweep(struct apply *a)
{
	struct key from;
	key_reset(&from);
	a->holds_more = false;
	for (uint64_t done = 0;; done++) {
		tally_arena_reset(a->tmp);
		MDB_val k, v;
		bool found;
		int rc = seek_prefix(a, T_HOLD_EXP, &from, 0, &k, &v, &found);
		if (rc != 0 || !found)
			return rc;
		if (k.mv_size != 16)
			return TALLY_ECORRUPT;
		if ((int64_t)be64_get(k.mv_data) > a->now_ms)
			return 0;
		if (done >= TALLY_HOLD_RELEASES_PER_BATCH_MAX) {
			a->holds_more = true;
			return 0;
		}
		Tally__V1__HoldRecord *h;
		rc = hold_get(a, be64_get((uint8_t *)k.mv_data + 8), &h);
		if (rc != 0)
			return rc == TALLY_ENOTFOUND ? TALLY_ECORRUPT : rc;
		if (h->status != TALLY__V1__HOLD_STATUS__OPEN || h->expires_ms > a->now_ms)
			return TALLY_ECORRUPT; /* the index named a hold that is not due */
		a->cmd = NULL;
		rc = hold_release(a, h);
		if (rc == 0)
			rc = accounts_flush(a);
		if (rc != 0)
			return rc;
	}
}

/* ---- expire ----------------------------------------------------------------------- */

/* The sweeps' touch of the account named by the tail of an index key (brand \0
 * member): its lots that ran out expire (at most lots_max), then its expiry row
 * moves to its first lot, where lot_index_update may have left it behind; *moved
 * (when not NULL) tells whether the row moved. */
static int touch_account(struct apply *a, const char *brand, const char *member,
			 uint64_t lots_max, bool *moved)
{
	Tally__V1__Brand *b;
	Tally__V1__Account *acct;
	int rc = brand_get(a, brand, &b);
	if (rc == 0)
		rc = account_load(a, b, member, &acct, NULL, lots_max);
	bool move = rc == 0 && acct->lot_index_ms != lots_first_expiry(acct);
	if (moved != NULL)
		*moved = move;
	if (move) {
		rc = lot_index_move(a, acct, lots_first_expiry(acct));
		if (rc == 0)
			rc = account_save(a, acct);
	}
	if (rc == 0)
		rc = accounts_flush(a); /* one sweep touches many accounts */
	return rc == TALLY_ENOTFOUND ? TALLY_ECORRUPT : rc;
}

/* Each stage of the sweep handles items while the budget lasts and sets *more only
 * when it finds one left over, so count <= budget and more is exact. */
static int expire_lots(struct apply *a, uint64_t budget, uint64_t *done, bool *more)
{
	struct key from;
	uint64_t moved_rows = 0;
	key_reset(&from);
	for (;;) {
		MDB_val k, v;
		bool found;
		int rc = seek_prefix(a, T_LOT_EXP, &from, 0, &k, &v, &found);
		if (rc != 0 || !found)
			return rc;
		if (k.mv_size < 8 + 2 || (int64_t)be64_get(k.mv_data) > a->now_ms)
			return 0;
		if (*done + moved_rows >= budget) {
			*more = true;
			return 0;
		}
		const char *brand = (const char *)k.mv_data + 8;
		size_t bl = strnlen(brand, k.mv_size - 8);
		if (8 + bl + 1 >= k.mv_size)
			return TALLY_ECORRUPT;
		char *member = tally_arena_strndup(a->tmp, brand + bl + 1, k.mv_size - 8 - bl - 1);
		uint64_t before = a->m.tree.size;
		bool moved;
		rc = member == NULL ? TALLY_ENOMEM
				    : touch_account(a, brand, member, budget - *done - moved_rows, &moved);
		if (rc != 0)
			return rc;
		if (a->m.tree.size == before && !moved)
			return TALLY_ECORRUPT; /* the row named a lot that did not expire */
		*done += a->m.tree.size - before;
		moved_rows += a->m.tree.size == before; /* a row left behind: budget, no count */
		assert(*done + moved_rows <= budget);
	}
}

/* Accounts whose oldest qualifying bucket left the window of their brand. */
static int expire_windows(struct apply *a, uint64_t budget, uint64_t *done, bool *more)
{
	struct key from;
	key_reset(&from);
	for (;;) {
		MDB_val k, v;
		bool found;
		int rc = seek_prefix(a, T_BRANDS, &from, 0, &k, &v, &found);
		if (rc != 0 || !found)
			return rc;
		char *id = tally_arena_strndup(a->tmp, k.mv_data, k.mv_size);
		Tally__V1__Brand *b;
		rc = id == NULL ? TALLY_ENOMEM : brand_get(a, id, &b);
		if (rc != 0)
			return rc;
		key_reset(&from);
		key_str(&from, id); /* the next brand sorts after "id\0" */
		if (b->tier_window_days == 0)
			continue;
		struct key prefix;
		key_reset(&prefix);
		key_str(&prefix, id);
		for (;;) {
			rc = seek_prefix(a, T_QUAL_DAY, &prefix, prefix.n, &k, &v, &found);
			if (rc != 0 || !found)
				break;
			int64_t day = be32_get((uint8_t *)k.mv_data + prefix.n);
			if (day > a->today - (int64_t)b->tier_window_days)
				break;
			if (*done >= budget) {
				*more = true;
				return 0;
			}
			char *member = tally_arena_strndup(a->tmp, (char *)k.mv_data + prefix.n + 4,
							   k.mv_size - prefix.n - 4);
			/* Lots ran first and left none expired: this touch expires nothing. */
			rc = member == NULL ? TALLY_ENOMEM /* a row left behind may move: no count */
					    : touch_account(a, id, member, budget - *done, NULL);
			if (rc != 0)
				return rc;
			(*done)++;
		}
		if (rc != 0)
			return rc;
	}
}

/* Daily counters of past days are no longer read: drop them. */
static int expire_counters(struct apply *a, uint64_t budget, uint64_t *done, bool *more)
{
	struct key from;
	key_reset(&from);
	for (;;) {
		MDB_val k, v;
		bool found;
		int rc = seek_prefix(a, T_DAILY, &from, 0, &k, &v, &found);
		if (rc != 0 || !found)
			return rc;
		if (k.mv_size < 4 || (int64_t)be32_get(k.mv_data) >= a->today)
			return 0;
		if (*done >= budget) {
			*more = true;
			return 0;
		}
		struct key del;
		key_reset(&del);
		memcpy(del.b, k.mv_data, k.mv_size);
		del.n = k.mv_size;
		rc = st_del(a, T_DAILY, &del);
		if (rc != 0)
			return rc;
		(*done)++;
	}
}

int expire_sweep(struct apply *a, uint32_t max_items, Tally__V1__CommandResult *r)
{
	uint64_t budget = max_items != 0 ? max_items : TALLY_EXPIRE_ITEMS_DEFAULT;
	uint64_t done = 0;
	bool more = false;
	int rc = expire_lots(a, budget, &done, &more);
	if (rc == 0 && !more)
		rc = expire_windows(a, budget, &done, &more);
	if (rc == 0 && !more)
		rc = expire_counters(a, budget, &done, &more);
	r->code = TALLY__V1__RESULT_CODE__OK;
	r->count = (int64_t)done;
	r->more = more || a->holds_more; /* this batch's hold sweep stopped at its budget */
	return rc;
}
