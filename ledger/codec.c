/*
 * The account record's codec on the apply path.
 *
 * Every command reads one account record and writes it back, and protobuf-c's
 * generic codec (a walk over the descriptor per field, an allocation per lot) was a
 * large part of that. These functions write exactly the bytes protobuf-c writes for
 * an Account (proto3: fields in number order, zero numbers and empty strings left
 * out, int64 as a 64-bit varint, lots as length-delimited Lot messages), so the
 * stored format, the state digest and every other reader (queries, the check, an
 * older binary) are unchanged; test_codec compares the two byte for byte on random
 * accounts. The decoder reads what the encoder writes, into one arena block; any
 * other encoding (an unknown field or wire type, a hold, a malformed varint) goes to
 * protobuf-c's decoder, which accepts or refuses it as before, and an account that
 * came back with unknown fields is written by protobuf-c too (it writes them back).
 */
#include <assert.h>
#include <string.h>

#include "ledger/internal.h"

/* Tags of Account's fields (field number << 3 | wire type). */
enum {
	TAG_BRAND = 1 << 3 | 2,
	TAG_MEMBER = 2 << 3 | 2,
	TAG_AVAILABLE = 3 << 3,
	TAG_HELD = 4 << 3,
	TAG_EARNED = 5 << 3,
	TAG_REDEEMED = 6 << 3,
	TAG_EXPIRED = 7 << 3,
	TAG_QUALIFYING = 8 << 3,
	TAG_TIER = 9 << 3 | 2,
	TAG_UPDATED = 10 << 3,
	TAG_QUALIFYING_DAY = 11 << 3,
	TAG_LOT = 12 << 3 | 2,
	TAG_LOT_INDEX = 14 << 3,
	TAG_LOT_EXPIRY = 1 << 3, /* inside a Lot */
	TAG_LOT_POINTS = 2 << 3,
};

#define VARINT_BYTES_MAX 10

static size_t varint_size(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static uint8_t *varint_put(uint8_t *p, uint64_t v)
{
	while (v >= 0x80) {
		*p++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*p++ = (uint8_t)v;
	return p;
}

/* ---- encoding --------------------------------------------------------------------- */

static size_t int_size(int64_t v)
{
	return v == 0 ? 0 : 1 + varint_size((uint64_t)v);
}

static size_t str_size(const char *s)
{
	size_t n = s != NULL ? strlen(s) : 0;
	return n == 0 ? 0 : 1 + varint_size(n) + n;
}

static size_t lot_body_size(const Tally__V1__Lot *lot)
{
	return int_size(lot->expiry_ms) + int_size(lot->points);
}

/* Whether the account holds only what this codec writes: protobuf-c keeps the unknown
 * fields of what it decoded and writes them back, which is left to protobuf-c. */
static bool account_plain(const Tally__V1__Account *acct)
{
	if (acct->base.n_unknown_fields > 0)
		return false;
	for (size_t i = 0; i < acct->n_lots; i++)
		if (acct->lots[i]->base.n_unknown_fields > 0)
			return false;
	return true;
}

size_t account_packed_size(const Tally__V1__Account *acct)
{
	assert(acct != NULL && acct->n_holds == 0);
	if (!account_plain(acct))
		return tally__v1__account__get_packed_size(acct);
	size_t n = str_size(acct->brand) + str_size(acct->member) + int_size(acct->available) +
		   int_size(acct->held) + int_size(acct->earned) + int_size(acct->redeemed) +
		   int_size(acct->expired) + int_size(acct->qualifying) + str_size(acct->tier) +
		   int_size(acct->updated_ms) + int_size(acct->qualifying_day) +
		   int_size(acct->lot_index_ms);
	for (size_t i = 0; i < acct->n_lots; i++) {
		size_t body = lot_body_size(acct->lots[i]);
		n += 1 + varint_size(body) + body;
	}
	return n;
}

static uint8_t *int_put(uint8_t *p, uint8_t tag, int64_t v)
{
	if (v == 0)
		return p;
	*p++ = tag;
	return varint_put(p, (uint64_t)v);
}

static uint8_t *str_put(uint8_t *p, uint8_t tag, const char *s)
{
	size_t n = s != NULL ? strlen(s) : 0;
	if (n == 0)
		return p;
	*p++ = tag;
	p = varint_put(p, n);
	memcpy(p, s, n);
	return p + n;
}

size_t account_pack(const Tally__V1__Account *acct, uint8_t *out)
{
	assert(acct != NULL && out != NULL && acct->n_holds == 0);
	if (!account_plain(acct))
		return tally__v1__account__pack(acct, out);
	uint8_t *p = out;
	p = str_put(p, TAG_BRAND, acct->brand);
	p = str_put(p, TAG_MEMBER, acct->member);
	p = int_put(p, TAG_AVAILABLE, acct->available);
	p = int_put(p, TAG_HELD, acct->held);
	p = int_put(p, TAG_EARNED, acct->earned);
	p = int_put(p, TAG_REDEEMED, acct->redeemed);
	p = int_put(p, TAG_EXPIRED, acct->expired);
	p = int_put(p, TAG_QUALIFYING, acct->qualifying);
	p = str_put(p, TAG_TIER, acct->tier);
	p = int_put(p, TAG_UPDATED, acct->updated_ms);
	p = int_put(p, TAG_QUALIFYING_DAY, acct->qualifying_day);
	for (size_t i = 0; i < acct->n_lots; i++) {
		const Tally__V1__Lot *lot = acct->lots[i];
		*p++ = TAG_LOT;
		p = varint_put(p, lot_body_size(lot));
		p = int_put(p, TAG_LOT_EXPIRY, lot->expiry_ms);
		p = int_put(p, TAG_LOT_POINTS, lot->points);
	}
	p = int_put(p, TAG_LOT_INDEX, acct->lot_index_ms);
	return (size_t)(p - out);
}

/* ---- decoding --------------------------------------------------------------------- */

struct reader {
	const uint8_t *p, *end;
};

static bool varint_get(struct reader *r, uint64_t *v)
{
	*v = 0;
	for (unsigned shift = 0; shift < 7 * VARINT_BYTES_MAX && r->p < r->end; shift += 7) {
		uint8_t b = *r->p++;
		*v |= (uint64_t)(b & 0x7f) << shift;
		if (b < 0x80)
			return shift < 63 || b <= 1; /* the tenth byte holds one bit */
	}
	return false;
}

/* A length-delimited field's bytes, after its tag. */
static bool bytes_get(struct reader *r, struct reader *out)
{
	uint64_t n;
	if (!varint_get(r, &n) || n > (uint64_t)(r->end - r->p))
		return false;
	out->p = r->p;
	out->end = r->p + n;
	r->p += n;
	return true;
}

static bool lot_get(struct reader *body, Tally__V1__Lot *lot)
{
	tally__v1__lot__init(lot);
	while (body->p < body->end) {
		uint64_t tag, v;
		if (!varint_get(body, &tag) || !varint_get(body, &v))
			return false;
		if (tag == TAG_LOT_EXPIRY)
			lot->expiry_ms = (int64_t)v;
		else if (tag == TAG_LOT_POINTS)
			lot->points = (int64_t)v;
		else
			return false;
	}
	return true;
}

static int64_t *int_field(Tally__V1__Account *acct, uint64_t tag)
{
	switch (tag) {
	case TAG_AVAILABLE: return &acct->available;
	case TAG_HELD: return &acct->held;
	case TAG_EARNED: return &acct->earned;
	case TAG_REDEEMED: return &acct->redeemed;
	case TAG_EXPIRED: return &acct->expired;
	case TAG_QUALIFYING: return &acct->qualifying;
	case TAG_UPDATED: return &acct->updated_ms;
	case TAG_QUALIFYING_DAY: return &acct->qualifying_day;
	case TAG_LOT_INDEX: return &acct->lot_index_ms;
	default: return NULL;
	}
}

static char **str_field(Tally__V1__Account *acct, uint64_t tag)
{
	switch (tag) {
	case TAG_BRAND: return &acct->brand;
	case TAG_MEMBER: return &acct->member;
	case TAG_TIER: return &acct->tier;
	default: return NULL;
	}
}

/* Reads the fields into acct, and the lots into lots[] (NULL: only counts them). */
static bool fields_get(struct reader r, Tally__V1__Account *acct, Tally__V1__Lot *lots,
		       size_t *n_lots, struct tally_arena *arena)
{
	*n_lots = 0;
	while (r.p < r.end) {
		uint64_t tag, v;
		struct reader body;
		if (!varint_get(&r, &tag))
			return false;
		int64_t *num = int_field(acct, tag);
		char **str = str_field(acct, tag);
		if (num != NULL) {
			if (!varint_get(&r, &v))
				return false;
			*num = (int64_t)v;
		} else if (str != NULL || tag == TAG_LOT) {
			if (!bytes_get(&r, &body))
				return false;
			if (str != NULL && lots != NULL) {
				*str = tally_arena_strndup(arena, (const char *)body.p,
							   (size_t)(body.end - body.p));
				if (*str == NULL)
					return false;
			}
			if (tag == TAG_LOT && lots != NULL && !lot_get(&body, &lots[*n_lots]))
				return false;
			*n_lots += tag == TAG_LOT;
		} else {
			return false; /* another field: protobuf-c's decoder judges it */
		}
	}
	return true;
}

Tally__V1__Account *account_unpack(struct tally_arena *arena, const uint8_t *data, size_t n)
{
	assert(arena != NULL && (data != NULL || n == 0));
	struct reader r = {data, data + n};
	Tally__V1__Account probe = TALLY__V1__ACCOUNT__INIT;
	size_t n_lots;
	if (fields_get(r, &probe, NULL, &n_lots, arena)) {
		Tally__V1__Account *acct = tally_arena_alloc(
			arena, sizeof(*acct) + n_lots * (sizeof(Tally__V1__Lot *) + sizeof(Tally__V1__Lot)));
		if (acct == NULL)
			return NULL;
		tally__v1__account__init(acct);
		Tally__V1__Lot **ptrs = (Tally__V1__Lot **)(acct + 1);
		Tally__V1__Lot *lots = (Tally__V1__Lot *)(ptrs + n_lots);
		size_t got;
		if (fields_get(r, acct, lots, &got, arena) && got == n_lots) {
			for (size_t i = 0; i < n_lots; i++)
				ptrs[i] = &lots[i];
			acct->lots = n_lots > 0 ? ptrs : NULL;
			acct->n_lots = n_lots;
			return acct;
		}
	}
	return tally__v1__account__unpack(tally_arena_protobuf(arena), n, data);
}
