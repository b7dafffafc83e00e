/*
 * Command handlers for brands, members and the points of one brand.
 *
 * Every handler reads top to bottom in the same shape: validate the fields, check
 * the brand scope, look everything up and decide — all before the first write — then
 * apply the effects, post them, and emit the entry. A rejection returns with the
 * result set and nothing written (time passing for a touched account, see
 * account_open, is not part of the command and stays).
 */
#include <assert.h>
#include <string.h>

#include "ledger/internal.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name
#define REJECTED(r) ((r)->code != CODE(RESULT_CODE_UNSPECIFIED))

/* ---- shared checks ---------------------------------------------------------------- */

static int check_brand_member(struct apply *a, Tally__V1__CommandResult *r,
			      const char *brand, const char *member)
{
	if (!valid_brand_id(brand))
		return reject(a, r, CODE(INVALID_ARGUMENT), "brand: must match [a-z0-9_-]{1,32}");
	if (!valid_member_id(member))
		return reject(a, r, CODE(INVALID_ARGUMENT),
			      "member: must be 1..%d printable bytes", TALLY_MEMBER_ID_BYTES_MAX);
	return 0;
}

static int check_points(struct apply *a, Tally__V1__CommandResult *r, int64_t points)
{
	if (!valid_points(points))
		return reject(a, r, CODE(INVALID_ARGUMENT), "points: must be 1..%lld",
			      (long long)TALLY_POINTS_MAX);
	return 0;
}

static int check_text(struct apply *a, Tally__V1__CommandResult *r, const char *field,
		      const char *s, size_t min)
{
	if (!valid_text(s, min, TALLY_TEXT_BYTES_MAX))
		return reject(a, r, CODE(INVALID_ARGUMENT), "%s: must be %zu..%d printable bytes",
			      field, min, TALLY_TEXT_BYTES_MAX);
	return 0;
}

/* The optional free text of accruals and redemptions. */
static int check_notes(struct apply *a, Tally__V1__CommandResult *r, const char *reason,
		       const char *reference)
{
	int rc = check_text(a, r, "reason", reason, 0);
	if (rc == 0 && !REJECTED(r))
		rc = check_text(a, r, "reference", reference, 0);
	return rc;
}

static int check_scope(struct apply *a, Tally__V1__CommandResult *r, const char *brand)
{
	if (!in_scope(a->cmd->principal, brand))
		return reject(a, r, CODE(PERMISSION_DENIED), "key %s is not scoped to brand %s",
			      a->cmd->principal->key_name, brand);
	return 0;
}

/* Looks up the brand and the member and opens the member's account in it. */
static int open_account(struct apply *a, Tally__V1__CommandResult *r, const char *brand,
			const char *member, Tally__V1__Brand **b, Tally__V1__Account **acct)
{
	bool exists = true, fresh;
	int rc = brand_get(a, brand, b);
	if (rc == TALLY_ENOTFOUND)
		return reject(a, r, CODE(UNKNOWN_BRAND), "brand: %s is not registered", brand);
	if (rc == 0)
		rc = account_open(a, *b, member, acct, &fresh);
	/* Accounts are made only for open members and members are never closed: only a
	 * fresh account needs the member looked up. */
	if (rc == 0 && fresh)
		rc = member_exists(a, member, &exists);
	if (rc != 0)
		return rc;
	if (!exists)
		return reject(a, r, CODE(UNKNOWN_MEMBER), "member: %s is not open", member);
	return 0;
}

/* The usual prelude of a command on one member account of one brand. */
static int prelude(struct apply *a, Tally__V1__CommandResult *r, const char *brand,
		   const char *member, int64_t points, Tally__V1__Brand **b,
		   Tally__V1__Account **acct)
{
	int rc = check_brand_member(a, r, brand, member);
	if (rc == 0 && !REJECTED(r))
		rc = check_points(a, r, points);
	if (rc == 0 && !REJECTED(r))
		rc = check_scope(a, r, brand);
	if (rc == 0 && !REJECTED(r))
		rc = open_account(a, r, brand, member, b, acct);
	return rc;
}

static int insufficient(struct apply *a, Tally__V1__CommandResult *r,
			const Tally__V1__Account *acct, int64_t points)
{
	return reject(a, r, CODE(INSUFFICIENT_POINTS), "available %lld < %lld points",
		      (long long)acct->available, (long long)points);
}

/* Finishes a command on one account: save, result, entry. */
static int finish(struct apply *a, Tally__V1__CommandResult *r, Tally__V1__Account *acct,
		  int64_t points, uint64_t cause_seq)
{
	acct->updated_ms = a->now_ms;
	int rc = account_save(a, acct);
	result_ok(r, acct);
	r->points = points;
	if (rc == 0)
		rc = emit_entry(a, TALLY__V1__ENTRY_KIND__COMMAND, r, acct->brand, acct->member,
				cause_seq);
	return rc;
}

/* How many of the account's lots spending `points` first-expiring first would touch. */
static size_t lots_spanned(const Tally__V1__Account *acct, int64_t points)
{
	size_t n = 0;
	for (int64_t left = points; left > 0 && n < acct->n_lots; n++)
		left -= acct->lots[n]->points;
	return n;
}

/* The refusal of the first rules for an account without room for another lot. */
static int lots_full(struct apply *a, Tally__V1__CommandResult *r, const char *member)
{
	assert(a->m.rules < TALLY_RULES_BOUNDED_LOTS);
	return reject(a, r, CODE(LIMIT_EXCEEDED),
		      "points: the account of %s holds %d lots; redeem or let some expire first",
		      member, TALLY_ACCOUNT_LOTS_RULES_1_MAX);
}

/* Whether the account can take `points` more as a lot expiring at `expiry`: under the
 * balance limit, and a lot to put them in (lot_room: always, under the bounded lots). */
static int credit_room(struct apply *a, Tally__V1__CommandResult *r,
		       const Tally__V1__Account *acct, int64_t points, int64_t expiry)
{
	assert(points > 0);
	if (acct->available > TALLY_BALANCE_MAX - points)
		return reject(a, r, CODE(LIMIT_EXCEEDED), "points: balance would pass %lld",
			      (long long)TALLY_BALANCE_MAX);
	if (!lot_room(a, acct, expiry))
		return lots_full(a, r, acct->member);
	return 0;
}

/* Gives fresh points as a lot expiring at `expiry` (0: never), from system account
 * `from`. */
static int credit_lot(struct apply *a, Tally__V1__Account *acct, int64_t expiry, int64_t points,
		      Tally__V1__SystemAccount from)
{
	assert(points > 0 && expiry >= 0);
	assert(acct->available <= TALLY_BALANCE_MAX - points);
	int rc = lot_give(a, acct, &expiry, points);
	if (rc == 0)
		rc = lot_move(a, expiry, points);
	acct->available += points;
	acct->earned += points;
	if (rc == 0)
		rc = post_member(a, acct->brand, acct->member, TALLY__V1__BUCKET__AVAILABLE, points);
	if (rc == 0)
		rc = post_system(a, acct->brand, from, NULL, -points);
	return rc;
}

/* Spends points FEFO (redemption, negative adjustment) into system account `to`. */
static int debit(struct apply *a, Tally__V1__Account *acct, int64_t points,
		 Tally__V1__SystemAccount to)
{
	int rc = lots_take(a, acct, points, -1, true);
	acct->available -= points;
	if (rc == 0)
		rc = post_member(a, acct->brand, acct->member, TALLY__V1__BUCKET__AVAILABLE, -points);
	if (rc == 0)
		rc = post_system(a, acct->brand, to, NULL, points);
	return rc;
}

/* ---- brands ------------------------------------------------------------------------ */

static bool valid_currency(const char *s)
{
	for (int i = 0; i < 3; i++)
		if (s[i] < 'A' || s[i] > 'Z')
			return false;
	return s[3] == '\0';
}

static bool valid_limit(int64_t v)
{
	return v >= 0 && v <= TALLY_POINTS_MAX;
}

static int check_tiers(struct apply *a, Tally__V1__CommandResult *r, const Tally__V1__Brand *b)
{
	if (b->n_tiers > TALLY_TIERS_MAX)
		return reject(a, r, CODE(INVALID_ARGUMENT), "tiers: at most %d", TALLY_TIERS_MAX);
	for (size_t i = 0; i < b->n_tiers; i++) {
		const Tally__V1__Tier *t = b->tiers[i];
		if (!valid_text(t->name, 1, 32))
			return reject(a, r, CODE(INVALID_ARGUMENT), "tiers[%zu].name: must be 1..32 printable bytes", i);
		if (t->min_points < 0 || t->min_points > TALLY_BALANCE_MAX ||
		    (i > 0 && t->min_points <= b->tiers[i - 1]->min_points))
			return reject(a, r, CODE(INVALID_ARGUMENT), "tiers[%zu].min_points: must be >= 0 and strictly increasing", i);
	}
	if (b->n_tiers > 0 && b->tier_window_days == 0)
		return reject(a, r, CODE(INVALID_ARGUMENT), "tier_window_days: required with tiers");
	return 0;
}

static int check_brand(struct apply *a, Tally__V1__CommandResult *r, const Tally__V1__Brand *b)
{
	const char *bad = NULL;
	if (!valid_brand_id(b->id))
		bad = "id: must match [a-z0-9_-]{1,32}";
	else if (!valid_text(b->name, 1, TALLY_TEXT_BYTES_MAX))
		bad = "name: must be 1..128 printable bytes";
	else if (b->point_value_micros < 0 || b->point_value_micros > TALLY_POINTS_MAX)
		bad = "point_value_micros: must be 0..10^12";
	else if (!valid_currency(b->currency))
		bad = "currency: must be an ISO 4217 code (three capitals)";
	else if (b->expiry_months > TALLY_EXPIRY_MONTHS_MAX)
		bad = "expiry_months: must be 0..1200";
	else if (b->tier_window_days > TALLY_TIER_WINDOW_DAYS_MAX)
		bad = "tier_window_days: must be 0..3650";
	else if (!valid_limit(b->transfer_max_points))
		bad = "transfer_max_points: must be 0..10^12";
	else if (!valid_limit(b->transfer_daily_cap_points))
		bad = "transfer_daily_cap_points: must be 0..10^12";
	else if (!valid_limit(b->community_daily_cap_points))
		bad = "community_daily_cap_points: must be 0..10^12";
	if (bad != NULL)
		return reject(a, r, CODE(INVALID_ARGUMENT), "%s", bad);
	return check_tiers(a, r, b);
}

static int brand_store(struct apply *a, Tally__V1__CommandResult *r, const Tally__V1__Brand *b)
{
	struct key k;
	key_reset(&k);
	key_raw(&k, b->id);
	int rc = rec_put(a, T_BRANDS, &k, b);
	a->n_brands = 0; /* the batch's cached copies are stale now */
	result_ok(r, NULL);
	if (rc == 0)
		rc = emit_entry(a, TALLY__V1__ENTRY_KIND__COMMAND, r, b->id, NULL, 0);
	return rc;
}

int do_register_brand(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__RegisterBrand *m = c->register_brand;
	Tally__V1__Brand b = TALLY__V1__BRAND__INIT, *old;
	b.id = m->id;
	b.name = m->name;
	b.point_value_micros = m->point_value_micros;
	b.currency = m->currency;
	b.expiry_months = m->expiry_months;
	b.n_tiers = m->n_tiers;
	b.tiers = m->tiers;
	b.tier_window_days = m->tier_window_days;
	b.transfer_max_points = m->transfer_max_points;
	b.transfer_daily_cap_points = m->transfer_daily_cap_points;
	b.community_daily_cap_points = m->community_daily_cap_points;
	b.created_ms = a->now_ms;
	b.created_seq = next_seq(a);
	int rc = check_brand(a, r, &b);
	if (rc == 0 && !REJECTED(r))
		rc = check_scope(a, r, b.id);
	if (rc != 0 || REJECTED(r))
		return rc;
	rc = brand_get(a, b.id, &old);
	if (rc == 0)
		return reject(a, r, CODE(ALREADY_EXISTS), "brand: %s is already registered", b.id);
	if (rc != TALLY_ENOTFOUND)
		return rc;
	return brand_store(a, r, &b);
}

int do_update_brand(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__UpdateBrand *m = c->update_brand;
	Tally__V1__Brand *cached, copy, *b = &copy;
	if (!valid_brand_id(m->id))
		return reject(a, r, CODE(INVALID_ARGUMENT), "id: must match [a-z0-9_-]{1,32}");
	int rc = check_scope(a, r, m->id);
	if (rc != 0 || REJECTED(r))
		return rc;
	rc = brand_get(a, m->id, &cached);
	if (rc == TALLY_ENOTFOUND)
		return reject(a, r, CODE(UNKNOWN_BRAND), "id: brand %s is not registered", m->id);
	if (rc != 0)
		return rc;
	copy = *cached; /* the cached brand is shared: change a copy */
	if (m->name != NULL)
		b->name = m->name->value;
	if (m->point_value_micros != NULL)
		b->point_value_micros = m->point_value_micros->value;
	if (m->currency != NULL)
		b->currency = m->currency->value;
	if (m->expiry_months != NULL)
		b->expiry_months = m->expiry_months->value;
	if (m->replace_tiers) {
		b->n_tiers = m->n_tiers;
		b->tiers = m->tiers;
	}
	if (m->tier_window_days != NULL)
		b->tier_window_days = m->tier_window_days->value;
	if (m->transfer_max_points != NULL)
		b->transfer_max_points = m->transfer_max_points->value;
	if (m->transfer_daily_cap_points != NULL)
		b->transfer_daily_cap_points = m->transfer_daily_cap_points->value;
	if (m->community_daily_cap_points != NULL)
		b->community_daily_cap_points = m->community_daily_cap_points->value;
	rc = check_brand(a, r, b);
	if (rc != 0 || REJECTED(r))
		return rc;
	return brand_store(a, r, b);
}

/* ---- members ----------------------------------------------------------------------- */

/* Writes the member record after its entry, which moves the head of the member's own
 * chain (head: the chain so far, zero for a new member). */
static int member_store(struct apply *a, Tally__V1__CommandResult *r, const char *id,
			Tally__V1__Segment segment, int64_t joined_ms, const struct chain_head *head)
{
	Tally__V1__Member m = TALLY__V1__MEMBER__INIT;
	m.id = (char *)id;
	m.segment = segment;
	m.joined_ms = joined_ms;
	a->member_chain.id = id;
	a->member_chain.head = *head;
	result_ok(r, NULL);
	int rc = emit_entry(a, TALLY__V1__ENTRY_KIND__COMMAND, r, NULL, id, 0);
	a->member_chain.id = NULL;
	if (rc != 0)
		return rc;
	size_t n = tally__v1__member__get_packed_size(&m);
	size_t at = chain_head_bytes(&a->member_chain.head);
	uint8_t *buf = tally_arena_alloc(a->tmp, at + n);
	if (buf == NULL)
		return TALLY_ENOMEM;
	chain_head_encode(buf, &a->member_chain.head);
	tally__v1__member__pack(&m, buf + at);
	struct key k;
	key_reset(&k);
	key_raw(&k, id);
	return st_put(a, T_MEMBERS, &k, buf, at + n);
}

static int check_member(struct apply *a, Tally__V1__CommandResult *r, const char *id,
			Tally__V1__Segment segment)
{
	if (!valid_member_id(id))
		return reject(a, r, CODE(INVALID_ARGUMENT), "id: must be 1..%d printable bytes",
			      TALLY_MEMBER_ID_BYTES_MAX);
	if (segment < TALLY__V1__SEGMENT__OWNER_PASSENGER ||
	    segment > TALLY__V1__SEGMENT__CHANNEL_PARTNER)
		return reject(a, r, CODE(INVALID_ARGUMENT), "segment: unknown segment %d", (int)segment);
	return 0;
}

int do_open_member(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__OpenMember *m = c->open_member;
	bool exists;
	int rc = check_member(a, r, m->id, m->segment);
	if (rc == 0 && !REJECTED(r))
		rc = member_exists(a, m->id, &exists);
	if (rc != 0 || REJECTED(r))
		return rc;
	if (exists)
		return reject(a, r, CODE(ALREADY_EXISTS), "id: member %s is already open", m->id);
	static const struct chain_head none;
	return member_store(a, r, m->id, m->segment, a->now_ms, &none);
}

int do_update_member(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__UpdateMember *m = c->update_member;
	/* A member is one person across brands: what every brand sees of them changes only
	 * by a key of every brand, never by one brand's key. */
	if (!is_all_scope(c->principal))
		return reject(a, r, CODE(PERMISSION_DENIED),
			      "update_member: a member is shared by every brand; only a key of scope * "
			      "may change it");
	int rc = check_member(a, r, m->id, m->segment);
	if (rc != 0 || REJECTED(r))
		return rc;
	struct key k;
	struct chain_head head;
	MDB_val v;
	key_reset(&k);
	key_raw(&k, m->id);
	rc = st_get(a, T_MEMBERS, &k, &v);
	if (rc == TALLY_ENOTFOUND)
		return reject(a, r, CODE(UNKNOWN_MEMBER), "id: member %s is not open", m->id);
	if (rc != 0)
		return rc;
	Tally__V1__Member *old = chain_record_unpack(&v, &tally__v1__member__descriptor, a->tmp,
						     &head);
	if (old == NULL)
		return TALLY_ECORRUPT;
	return member_store(a, r, m->id, m->segment, old->joined_ms, &head);
}

/* ---- points ----------------------------------------------------------------------- */

int do_accrue(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__Accrue *m = c->accrue;
	Tally__V1__Brand *b;
	Tally__V1__Account *acct;
	int rc = check_notes(a, r, m->reason, m->reference);
	if (rc == 0 && !REJECTED(r))
		rc = prelude(a, r, m->brand, m->member, m->points, &b, &acct);
	if (rc != 0 || REJECTED(r))
		return rc;
	int64_t expiry = lot_expiry(a, b);
	rc = credit_room(a, r, acct, m->points, expiry);
	if (rc != 0 || REJECTED(r))
		return rc;
	if (c->principal->role == TALLY__V1__ROLE__COMMUNITY) {
		bool over;
		rc = daily_use(a, DAILY_COMMUNITY, b->id, m->member, NULL, m->points,
			       b->community_daily_cap_points, &over);
		if (rc != 0)
			return rc;
		if (over)
			return reject(a, r, CODE(LIMIT_EXCEEDED),
				      "points: community daily cap of %lld reached",
				      (long long)b->community_daily_cap_points);
	}
	rc = credit_lot(a, acct, expiry, m->points, TALLY__V1__SYSTEM_ACCOUNT__ISSUANCE);
	if (rc == 0)
		rc = qualify(a, b, acct, a->today, m->points);
	return rc != 0 ? rc : finish(a, r, acct, m->points, 0);
}

/* The expiry an imported lot may keep: never (0), or after the batch, before the year
 * 10000 and, under the bounded lots, at most TALLY_EXPIRY_MONTHS_MAX months after the
 * batch, the horizon of every lot (which bounds an account's lots:
 * TALLY_ACCOUNT_LOTS_EXACT_MAX). A balance that expired at its source is not brought
 * over. */
static int check_import_expiry(struct apply *a, Tally__V1__CommandResult *r, int64_t expires_ms)
{
	if (expires_ms < 0 || expires_ms > TALLY_IMPORT_EXPIRY_MAX_MS)
		return reject(a, r, CODE(INVALID_ARGUMENT),
			      "expires_ms: must be 0 (never) or a time up to %lld",
			      (long long)TALLY_IMPORT_EXPIRY_MAX_MS);
	if (expires_ms != 0 && expires_ms <= a->now_ms)
		return reject(a, r, CODE(INVALID_ARGUMENT),
			      "expires_ms: %lld is not after the batch time %lld (the points have "
			      "expired already)", (long long)expires_ms, (long long)a->now_ms);
	int64_t horizon = add_months(a->now_ms, TALLY_EXPIRY_MONTHS_MAX);
	if (a->m.rules >= TALLY_RULES_BOUNDED_LOTS && expires_ms > horizon)
		return reject(a, r, CODE(INVALID_ARGUMENT),
			      "expires_ms: %lld is more than %d months after the batch time (at "
			      "most %lld)", (long long)expires_ms, TALLY_EXPIRY_MONTHS_MAX,
			      (long long)horizon);
	return 0;
}

int do_import_points(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__ImportPoints *m = c->import_points;
	Tally__V1__Brand *b;
	Tally__V1__Account *acct;
	assert(m != NULL && c->principal->role == TALLY__V1__ROLE__ADMIN);
	int rc = check_text(a, r, "reference", m->reference, 0);
	if (rc == 0 && !REJECTED(r))
		rc = check_import_expiry(a, r, m->expires_ms);
	if (rc == 0 && !REJECTED(r))
		rc = prelude(a, r, m->brand, m->member, m->points, &b, &acct);
	if (rc != 0 || REJECTED(r))
		return rc;
	rc = credit_room(a, r, acct, m->points, m->expires_ms);
	if (rc != 0 || REJECTED(r))
		return rc;
	rc = credit_lot(a, acct, m->expires_ms, m->points, TALLY__V1__SYSTEM_ACCOUNT__ISSUANCE);
	return rc != 0 ? rc : finish(a, r, acct, m->points, 0);
}

int do_redeem(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__Redeem *m = c->redeem;
	Tally__V1__Brand *b;
	Tally__V1__Account *acct;
	int rc = check_notes(a, r, m->reason, m->reference);
	if (rc == 0 && !REJECTED(r))
		rc = prelude(a, r, m->brand, m->member, m->points, &b, &acct);
	if (rc != 0 || REJECTED(r))
		return rc;
	if (acct->available < m->points)
		return insufficient(a, r, acct, m->points);
	rc = debit(a, acct, m->points, TALLY__V1__SYSTEM_ACCOUNT__REDEEMED);
	acct->redeemed += m->points;
	return rc != 0 ? rc : finish(a, r, acct, m->points, 0);
}

int do_adjust(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__Adjust *m = c->adjust;
	Tally__V1__Brand *b;
	Tally__V1__Account *acct;
	int64_t points = m->points < 0 ? -m->points : m->points;
	if (m->points == INT64_MIN)
		points = 0;
	int rc = check_text(a, r, "reason", m->reason, 1);
	if (rc == 0 && !REJECTED(r))
		rc = prelude(a, r, m->brand, m->member, points, &b, &acct);
	if (rc != 0 || REJECTED(r))
		return rc;
	if (m->points > 0) {
		int64_t expiry = lot_expiry(a, b);
		rc = credit_room(a, r, acct, points, expiry);
		if (rc != 0 || REJECTED(r))
			return rc;
		rc = credit_lot(a, acct, expiry, points, TALLY__V1__SYSTEM_ACCOUNT__ADJUSTMENT);
	} else {
		if (acct->available < points)
			return insufficient(a, r, acct, points);
		rc = debit(a, acct, points, TALLY__V1__SYSTEM_ACCOUNT__ADJUSTMENT);
	}
	return rc != 0 ? rc : finish(a, r, acct, m->points, 0);
}

int do_transfer(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__Transfer *m = c->transfer;
	Tally__V1__Brand *b;
	Tally__V1__Account *from, *to;
	int rc = check_text(a, r, "reason", m->reason, 0);
	if (rc == 0 && !REJECTED(r) && !valid_member_id(m->to_member))
		rc = reject(a, r, CODE(INVALID_ARGUMENT), "to_member: must be 1..%d printable bytes",
			    TALLY_MEMBER_ID_BYTES_MAX);
	if (rc == 0 && !REJECTED(r) && strcmp(m->from_member, m->to_member) == 0)
		rc = reject(a, r, CODE(INVALID_ARGUMENT), "to_member: must differ from from_member");
	if (rc == 0 && !REJECTED(r))
		rc = prelude(a, r, m->brand, m->from_member, m->points, &b, &from);
	if (rc == 0 && !REJECTED(r))
		rc = open_account(a, r, m->brand, m->to_member, &b, &to);
	if (rc != 0 || REJECTED(r))
		return rc;
	if (b->transfer_max_points > 0 && m->points > b->transfer_max_points)
		return reject(a, r, CODE(LIMIT_EXCEEDED), "points: at most %lld per transfer",
			      (long long)b->transfer_max_points);
	if (from->available < m->points)
		return insufficient(a, r, from, m->points);
	if (to->available > TALLY_BALANCE_MAX - m->points)
		return reject(a, r, CODE(LIMIT_EXCEEDED), "points: receiving balance would pass %lld",
			      (long long)TALLY_BALANCE_MAX);
	if (!lots_room(a, to, lots_spanned(from, m->points)))
		return lots_full(a, r, m->to_member);
	bool over;
	rc = daily_use(a, DAILY_TRANSFER, b->id, m->from_member, NULL, m->points,
		       b->transfer_daily_cap_points, &over);
	if (rc != 0)
		return rc;
	if (over)
		return reject(a, r, CODE(LIMIT_EXCEEDED), "points: daily transfer cap of %lld reached",
			      (long long)b->transfer_daily_cap_points);
	/* The receiver's lots keep the sender's expiries: a gift does not renew points. */
	rc = lots_take(a, from, m->points, -1, true);
	for (size_t i = 0; rc == 0 && i < a->n_lots; i++) {
		int64_t expiry = a->lots[i]->expiry_ms;
		rc = lot_give(a, to, &expiry, a->lots[i]->points);
	}
	from->available -= m->points;
	to->available += m->points;
	/* Account.earned counts transfer-in, as it counts exchange-in (tally.proto). */
	to->earned += m->points;
	to->updated_ms = a->now_ms;
	if (rc == 0)
		rc = post_member(a, b->id, m->from_member, TALLY__V1__BUCKET__AVAILABLE, -m->points);
	if (rc == 0)
		rc = post_member(a, b->id, m->to_member, TALLY__V1__BUCKET__AVAILABLE, m->points);
	if (rc == 0)
		rc = account_save(a, to);
	return rc != 0 ? rc : finish(a, r, from, m->points, 0);
}

/* ---- holds ------------------------------------------------------------------------- */

int do_hold(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__Hold *m = c->hold;
	Tally__V1__Brand *b;
	Tally__V1__Account *acct;
	int rc = check_text(a, r, "reference", m->reference, 0);
	if (rc == 0 && !REJECTED(r) && m->timeout_s > TALLY_HOLD_TIMEOUT_S_MAX)
		rc = reject(a, r, CODE(INVALID_ARGUMENT), "timeout_s: must be 0..%d",
			    TALLY_HOLD_TIMEOUT_S_MAX);
	if (rc == 0 && !REJECTED(r))
		rc = prelude(a, r, m->brand, m->member, m->points, &b, &acct);
	if (rc != 0 || REJECTED(r))
		return rc;
	if (acct->available < m->points)
		return insufficient(a, r, acct, m->points);
	uint32_t timeout_s = m->timeout_s != 0 ? m->timeout_s : TALLY_HOLD_TIMEOUT_S_DEFAULT;
	rc = lots_take(a, acct, m->points, -1, true);
	Tally__V1__HoldRecord h = TALLY__V1__HOLD_RECORD__INIT;
	h.id = next_seq(a);
	h.brand = acct->brand;
	h.member = acct->member;
	h.points = m->points;
	h.created_ms = a->now_ms;
	h.expires_ms = a->now_ms + (int64_t)timeout_s * 1000;
	h.lots = a->lots;
	h.n_lots = a->n_lots;
	h.key_name = c->principal->key_name;
	acct->available -= m->points;
	acct->held += m->points;
	if (rc == 0)
		rc = hold_store(a, &h, true);
	if (rc == 0)
		rc = post_member(a, b->id, m->member, TALLY__V1__BUCKET__AVAILABLE, -m->points);
	if (rc == 0)
		rc = post_member(a, b->id, m->member, TALLY__V1__BUCKET__HELD, m->points);
	r->hold_id = h.id;
	return rc != 0 ? rc : finish(a, r, acct, m->points, 0);
}

/* Finds an open hold in the caller's scope; rejects otherwise. */
static int open_hold(struct apply *a, Tally__V1__CommandResult *r, uint64_t id,
		     Tally__V1__HoldRecord **h)
{
	int rc = hold_get(a, id, h);
	if (rc == TALLY_ENOTFOUND)
		return reject(a, r, CODE(HOLD_NOT_FOUND), "hold_id: no hold %llu", (unsigned long long)id);
	if (rc == 0)
		rc = check_scope(a, r, (*h)->brand);
	if (rc != 0 || REJECTED(r))
		return rc;
	switch ((*h)->status) {
	case TALLY__V1__HOLD_STATUS__OPEN:
		if ((*h)->expires_ms > a->now_ms)
			return 0;
		/* Timed out but beyond this batch's sweep budget: released now, as the
		 * sweep would have, and refused like any released hold. */
		rc = hold_release(a, *h);
		if (rc != 0)
			return rc;
		return reject(a, r, CODE(HOLD_EXPIRED), "hold_id: hold %llu timed out",
			      (unsigned long long)id);
	case TALLY__V1__HOLD_STATUS__RELEASED:
		return reject(a, r, CODE(HOLD_EXPIRED), "hold_id: hold %llu timed out",
			      (unsigned long long)id);
	default:
		return reject(a, r, CODE(HOLD_RESOLVED), "hold_id: hold %llu is already %s",
			      (unsigned long long)id,
			      (*h)->status == TALLY__V1__HOLD_STATUS__CAPTURED ? "captured" : "voided");
	}
}

int do_capture(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__Capture *m = c->capture;
	Tally__V1__HoldRecord *h;
	if (m->points < 0 || m->points > TALLY_POINTS_MAX)
		return reject(a, r, CODE(INVALID_ARGUMENT), "points: must be 0 (all) or 1..%lld",
			      (long long)TALLY_POINTS_MAX);
	int rc = open_hold(a, r, m->hold_id, &h);
	if (rc != 0 || REJECTED(r))
		return rc;
	if (m->points > h->points)
		return reject(a, r, CODE(LIMIT_EXCEEDED), "points: %lld exceeds the %lld held",
			      (long long)m->points, (long long)h->points);
	int64_t points = m->points != 0 ? m->points : h->points;
	return hold_resolve(a, h, points, TALLY__V1__HOLD_STATUS__CAPTURED, r);
}

int do_void(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	Tally__V1__HoldRecord *h;
	int rc = open_hold(a, r, c->void_->hold_id, &h);
	if (rc != 0 || REJECTED(r))
		return rc;
	return hold_resolve(a, h, 0, TALLY__V1__HOLD_STATUS__VOIDED, r);
}

/* ---- reversals --------------------------------------------------------------------- */

/* Returns the last `points` not yet refunded of a redemption's lots, newest lot first:
 * still-valid lots get their points back, lots that ran out post them as expired. */
static int refund(struct apply *a, const Tally__V1__Entry *e, Tally__V1__Account *acct,
		  int64_t done, int64_t points)
{
	int64_t skip = done, left = points, valid = 0, expired = 0;
	int rc = 0;
	for (size_t i = e->n_lots; rc == 0 && left > 0 && i-- > 0;) {
		const Tally__V1__LotMove *p = e->lots[i];
		if (skip >= p->points) {
			skip -= p->points;
			continue;
		}
		int64_t part = p->points - skip < left ? p->points - skip : left;
		skip = 0;
		left -= part;
		int64_t expiry = p->expiry_ms;
		if (lot_valid(a, expiry)) {
			rc = lot_give(a, acct, &expiry, part);
			if (rc == 0)
				rc = lot_move(a, expiry, part);
			valid += part;
		} else {
			expired += part;
		}
	}
	if (rc == 0 && left != 0)
		return TALLY_ECORRUPT;
	acct->available += valid;
	acct->expired += expired;
	acct->redeemed -= points;
	if (rc == 0)
		rc = post_system(a, acct->brand, TALLY__V1__SYSTEM_ACCOUNT__REDEEMED, NULL, -points);
	if (rc == 0)
		rc = post_member(a, acct->brand, acct->member, TALLY__V1__BUCKET__AVAILABLE, valid);
	if (rc == 0)
		rc = post_system(a, acct->brand, TALLY__V1__SYSTEM_ACCOUNT__EXPIRED, NULL, expired);
	return rc;
}

/* The expiry of the lot an accrual created. */
static int64_t accrual_lot(const Tally__V1__Entry *e)
{
	return e->n_lots > 0 ? e->lots[0]->expiry_ms : 0;
}

/* Takes back an accrual. While its lot lives, the points come from the member: that
 * lot first, then first-expiring first. Once the lot ran out, its points were spent or
 * expired already, so they come out of the member's expired points instead: a member
 * never loses the same points twice. */
static int clawback(struct apply *a, const Tally__V1__Brand *b, const Tally__V1__Entry *e,
		    Tally__V1__Account *acct, int64_t points)
{
	bool gone = !lot_valid(a, accrual_lot(e));
	int rc = gone ? 0 : lots_take(a, acct, points, accrual_lot(e), true);
	acct->earned -= points;
	if (gone)
		acct->expired -= points;
	else
		acct->available -= points;
	if (rc == 0)
		rc = qualify(a, b, acct, day_of(e->time_ms), -points);
	if (rc == 0 && gone)
		rc = post_system(a, acct->brand, TALLY__V1__SYSTEM_ACCOUNT__EXPIRED, NULL, -points);
	if (rc == 0 && !gone)
		rc = post_member(a, acct->brand, acct->member, TALLY__V1__BUCKET__AVAILABLE, -points);
	if (rc == 0)
		rc = post_system(a, acct->brand, TALLY__V1__SYSTEM_ACCOUNT__ISSUANCE, NULL, points);
	return rc;
}

/* Loads a journal entry inside the apply transaction. */
static int entry_load(struct apply *a, uint64_t seq, Tally__V1__Entry **out)
{
	MDB_val raw;
	const uint8_t *bytes;
	size_t n;
	int rc = txn_entry_get(a->txn, a->l->dbi[T_ENTRIES], seq, &raw);
	if (rc == 0)
		rc = entry_payload(&raw, &bytes, &n);
	if (rc != 0)
		return rc;
	*out = tally__v1__entry__unpack(tally_arena_protobuf(a->tmp), n, bytes);
	return *out == NULL ? TALLY_ECORRUPT : 0;
}

/* What entry e is, for reversal: the amount it moved, or 0 when not reversible. */
static int64_t reversible_points(const Tally__V1__Entry *e, bool *accrual)
{
	*accrual = false;
	if (e->kind != TALLY__V1__ENTRY_KIND__COMMAND || e->command == NULL || e->result == NULL ||
	    e->result->code != CODE(OK)) /* a rejected command's entry moved no points */
		return 0;
	switch (e->command->body_case) {
	case TALLY__V1__COMMAND__BODY_ACCRUE:
		*accrual = true;
		return e->command->accrue->points;
	case TALLY__V1__COMMAND__BODY_REDEEM:
		return e->command->redeem->points;
	case TALLY__V1__COMMAND__BODY_CAPTURE:
		return e->result->points;
	default:
		return 0;
	}
}

int do_reverse(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__Reverse *m = c->reverse;
	Tally__V1__Entry *e;
	bool accrual;
	int rc = check_text(a, r, "reason", m->reason, 0);
	if (rc == 0 && !REJECTED(r) && (m->points < 0 || m->points > TALLY_POINTS_MAX))
		rc = reject(a, r, CODE(INVALID_ARGUMENT), "points: must be 0 (all) or 1..%lld",
			    (long long)TALLY_POINTS_MAX);
	if (rc != 0 || REJECTED(r))
		return rc;
	if (m->entry_seq == 0 || m->entry_seq > a->m.tree.size)
		return reject(a, r, CODE(NOT_FOUND), "entry_seq: no entry %llu",
			      (unsigned long long)m->entry_seq);
	rc = entry_load(a, m->entry_seq, &e);
	if (rc != 0)
		return rc == TALLY_ENOTFOUND ? TALLY_ECORRUPT : rc;
	int64_t original = reversible_points(e, &accrual);
	if (original == 0)
		return reject(a, r, CODE(INVALID_ARGUMENT),
			      "entry_seq: entry %llu is not an accrual, redemption or capture",
			      (unsigned long long)m->entry_seq);
	Tally__V1__Command__BodyCase as = accrual ? TALLY__V1__COMMAND__BODY_ACCRUE
						  : TALLY__V1__COMMAND__BODY_REDEEM;
	if (!tally_ledger_role_allows(c->principal->role, as))
		return reject(a, r, CODE(PERMISSION_DENIED), "role may not reverse %s",
			      accrual ? "an accrual" : "a redemption");
	rc = check_scope(a, r, e->brand);
	if (rc != 0 || REJECTED(r))
		return rc;
	struct key k;
	int64_t done;
	key_reset(&k);
	key_u64(&k, m->entry_seq);
	rc = st_get_i64(a, T_REVERSED, &k, &done);
	if (rc != 0)
		return rc;
	int64_t remaining = original - done;
	int64_t points = m->points != 0 ? m->points : remaining;
	if (remaining == 0 || points > remaining)
		return reject(a, r, CODE(ALREADY_REVERSED),
			      "entry_seq: %lld of %lld points of entry %llu remain to reverse",
			      (long long)remaining, (long long)original,
			      (unsigned long long)m->entry_seq);
	Tally__V1__Brand *b;
	Tally__V1__Account *acct;
	rc = open_account(a, r, e->brand, e->member, &b, &acct);
	if (rc != 0 || REJECTED(r))
		return rc;
	if (accrual && lot_valid(a, accrual_lot(e)) && acct->available < points)
		return insufficient(a, r, acct, points);
	if (accrual && !lot_valid(a, accrual_lot(e)) && acct->expired < points)
		return reject(a, r, CODE(INSUFFICIENT_POINTS),
			      "the accrual's lot ran out and only %lld expired points remain",
			      (long long)acct->expired);
	rc = accrual ? clawback(a, b, e, acct, points) : refund(a, e, acct, done, points);
	if (rc == 0)
		rc = st_put_i64(a, T_REVERSED, &k, done + points);
	return rc != 0 ? rc : finish(a, r, acct, points, m->entry_seq);
}

int do_expire(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	return expire_sweep(a, c->expire->max_items, r);
}

/* Switches the ledger to the rules of m->version from the next command on (ledger.h,
 * "Rules"). Its entry is the journal's record of the switch, which a replay meets at
 * the same place. A version this binary does not have stops the replica
 * (TALLY_EVERSION, nothing of the batch written): applying other rules than the other
 * replicas would split them. */
int do_set_rules(struct apply *a, const Tally__V1__Command *c, Tally__V1__CommandResult *r)
{
	const Tally__V1__SetRules *m = c->set_rules;
	assert(m != NULL && c->principal->role == TALLY__V1__ROLE__SYSTEM);
	assert(a->m.rules >= TALLY_RULES_FIRST && a->m.rules <= TALLY_RULES_CURRENT);
	if (m->version == 0)
		return reject(a, r, CODE(INVALID_ARGUMENT), "version: must be %d or more",
			      TALLY_RULES_FIRST);
	if (m->version <= a->m.rules)
		return reject(a, r, CODE(ALREADY_EXISTS), "version: the ledger applies rules %u",
			      (unsigned)a->m.rules);
	if (m->version > TALLY_RULES_CURRENT)
		return TALLY_EVERSION;
	a->m.rules = m->version;
	return emit_entry(a, TALLY__V1__ENTRY_KIND__COMMAND, r, NULL, NULL, 0);
}
