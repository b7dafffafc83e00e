/*
 * The codec of the apply path: the account record, the journal entries and commands
 * of accruals and redemptions, and the raft batches that carry them.
 *
 * Every command reads one account record and writes it back, writes a journal entry
 * and hashes its command for idempotency; protobuf-c's generic codec (a walk over the
 * descriptor per field, an allocation per lot) was a large part of that. These
 * functions write exactly the bytes protobuf-c writes (proto3: fields in number order,
 * zero numbers and empty strings left out, int64 and enums as varints, sub-messages
 * length-delimited), so the stored format, the leaf hashes, the state digest and
 * every other reader (queries, the check, an auditor, an older binary) are unchanged;
 * test_codec compares the two byte for byte on random messages and checks that the
 * schema still has the fields written here. What is not written here goes to
 * protobuf-c: an entry or command with another body, and any message that carries
 * unknown fields (protobuf-c keeps them from what it decoded and writes them back).
 *
 * The account and batch decoders read what the encoders write; any other encoding (an
 * unknown field or wire type, a hold, another command, a malformed varint) goes to
 * protobuf-c's decoder, which accepts or refuses it as before.
 */
#include <assert.h>
#include <string.h>

#include "ledger/internal.h"

#define TAG(field, wire) ((unsigned)(field) << 3 | (wire))
#define VARINT 0 /* wire types */
#define LEN 2

/* Account's fields; the decoder matches them by tag. */
enum {
	TAG_BRAND = TAG(1, LEN),
	TAG_MEMBER = TAG(2, LEN),
	TAG_AVAILABLE = TAG(3, VARINT),
	TAG_HELD = TAG(4, VARINT),
	TAG_EARNED = TAG(5, VARINT),
	TAG_REDEEMED = TAG(6, VARINT),
	TAG_EXPIRED = TAG(7, VARINT),
	TAG_QUALIFYING = TAG(8, VARINT),
	TAG_TIER = TAG(9, LEN),
	TAG_UPDATED = TAG(10, VARINT),
	TAG_QUALIFYING_DAY = TAG(11, VARINT),
	TAG_LOT = TAG(12, LEN),
	TAG_LOT_INDEX = TAG(14, VARINT),
	TAG_LOT_EXPIRY = TAG(1, VARINT), /* inside a Lot */
	TAG_LOT_POINTS = TAG(2, VARINT),
};

#define VARINT_BYTES_MAX 10

static inline size_t varint_size(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static inline uint8_t *varint_put(uint8_t *p, uint64_t v)
{
	while (v >= 0x80) {
		*p++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*p++ = (uint8_t)v;
	return p;
}

/* ---- the writer -------------------------------------------------------------------
 * One pass measures and writes: every message has one function for its size and its
 * bytes. The bytes go where p points while they fit before end; once one would not, end
 * becomes 0 and p only counts on, so the pass ends with the exact size either way (p and
 * end 0 from the start: it only measures). p and end are integers, not pointers, so that
 * counting past the room is plain arithmetic, and struct out is two words, which a call
 * returns in registers (with a third it went through memory: the pass cost as much as
 * the measure it replaced). A field is written as protobuf-c does for proto3: numbers
 * and enums as varints (negative int64 and enums in ten bytes), zeros, false, empty
 * strings and absent messages left out, repeated strings each written, a message set
 * but empty written with length 0. The helpers are inline: as calls they cost about what
 * protobuf-c's walk costs (an accrual's entry, size and bytes, on this project's VM:
 * protobuf-c 590 ns, these as calls 540 ns, inline 200 ns). */

struct out {
	uintptr_t p;   /* where the next byte goes, or would go */
	uintptr_t end; /* the end of the room; 0: counting only */
};

/* o, or o counting only when `need` more bytes do not fit. */
static inline struct out o_room(struct out o, size_t need)
{
	if (o.end != 0 && need > o.end - o.p)
		o.end = 0;
	return o;
}

static inline struct out o_varint(struct out o, uint64_t v)
{
	if (o.end != 0 && o.end - o.p < VARINT_BYTES_MAX)
		o = o_room(o, varint_size(v));
	if (o.end != 0)
		o.p = (uintptr_t)varint_put((uint8_t *)o.p, v);
	else
		o.p += varint_size(v);
	return o;
}

static inline struct out o_int(struct out o, unsigned tag, int64_t v)
{
	return v == 0 ? o : o_varint(o_varint(o, tag), (uint64_t)v);
}

static inline struct out o_enum(struct out o, unsigned tag, int v)
{
	return o_int(o, tag, (int64_t)(int32_t)v);
}

static inline struct out o_bool(struct out o, unsigned tag, protobuf_c_boolean v)
{
	return o_int(o, tag, v ? 1 : 0);
}

static inline struct out o_bytes(struct out o, unsigned tag, const char *s, size_t n)
{
	o = o_room(o_varint(o_varint(o, tag), n), n);
	if (o.end != 0 && n > 0)
		memcpy((uint8_t *)o.p, s, n);
	o.p += n;
	return o;
}

static inline struct out o_str(struct out o, unsigned tag, const char *s)
{
	size_t n = s != NULL ? strlen(s) : 0;
	return n > 0 ? o_bytes(o, tag, s, n) : o;
}

typedef struct out (*enc_fn)(struct out o, const void *m);

/* A message field. Counting, the message is walked once. Writing, it is not measured
 * first (that walk would be repeated at every level above it): its bytes go one past
 * the tag, where a length under 128 fits, and move up in the rare case its length takes
 * more. */
static inline struct out o_msg(struct out o, unsigned tag, enc_fn enc, const void *m)
{
	if (m == NULL)
		return o;
	o = o_room(o_varint(o, tag), 1);
	uintptr_t at = o.p;
	if (o.end == 0) {
		size_t n = enc(o, m).p - at;
		o.p += varint_size(n) + n;
		return o;
	}
	o.p = at + 1;
	o = enc(o, m);
	size_t n = o.p - at - 1, len_bytes = varint_size(n);
	o = o_room(o, len_bytes - 1);
	if (o.end != 0 && len_bytes > 1)
		memmove((uint8_t *)at + len_bytes, (uint8_t *)at + 1, n);
	if (o.end != 0)
		varint_put((uint8_t *)at, n);
	o.p += len_bytes - 1;
	return o;
}

static bool plain(const void *m)
{
	return ((const ProtobufCMessage *)m)->n_unknown_fields == 0;
}

/* ---- accounts --------------------------------------------------------------------- */

static struct out enc_lot(struct out o, const void *m)
{
	const Tally__V1__Lot *lot = m;
	o = o_int(o, TAG_LOT_EXPIRY, lot->expiry_ms);
	o = o_int(o, TAG_LOT_POINTS, lot->points);
	return o;
}

/* A lot field (tag, length, Lot) written at p, which has CODEC_LOT_FIELD_BYTES_MAX
 * bytes of room: its length takes one byte, a Lot being under 128. Returns its end. */
static inline uint8_t *lot_field_put(uint8_t *p, int64_t expiry_ms, int64_t points)
{
	uint8_t *len = p + 1;
	p[0] = TAG_LOT;
	p += 2;
	if (expiry_ms != 0) {
		*p++ = TAG_LOT_EXPIRY;
		p = varint_put(p, (uint64_t)expiry_ms);
	}
	if (points != 0) {
		*p++ = TAG_LOT_POINTS;
		p = varint_put(p, (uint64_t)points);
	}
	*len = (uint8_t)(p - len - 1);
	return p;
}

size_t codec_lot_field(uint8_t out[CODEC_LOT_FIELD_BYTES_MAX], int64_t expiry_ms, int64_t points)
{
	return (size_t)(lot_field_put(out, expiry_ms, points) - out);
}

/* An account's lots. With room for every lot at its longest they go straight in
 * (lot_field_put); a busy member's account holds hundreds, written for every command
 * on it. */
static struct out enc_lots(struct out o, Tally__V1__Lot *const *lots, size_t n)
{
	if (o.end == 0 || (o.end - o.p) / CODEC_LOT_FIELD_BYTES_MAX < n) {
		for (size_t i = 0; i < n; i++)
			o = o_msg(o, TAG_LOT, enc_lot, lots[i]);
		return o;
	}
	uint8_t *p = (uint8_t *)o.p;
	for (size_t i = 0; i < n; i++)
		p = lot_field_put(p, lots[i]->expiry_ms, lots[i]->points);
	o.p = (uintptr_t)p;
	return o;
}

static struct out enc_account(struct out o, const void *m)
{
	const Tally__V1__Account *acct = m;
	o = o_str(o, TAG_BRAND, acct->brand);
	o = o_str(o, TAG_MEMBER, acct->member);
	o = o_int(o, TAG_AVAILABLE, acct->available);
	o = o_int(o, TAG_HELD, acct->held);
	o = o_int(o, TAG_EARNED, acct->earned);
	o = o_int(o, TAG_REDEEMED, acct->redeemed);
	o = o_int(o, TAG_EXPIRED, acct->expired);
	o = o_int(o, TAG_QUALIFYING, acct->qualifying);
	o = o_str(o, TAG_TIER, acct->tier);
	o = o_int(o, TAG_UPDATED, acct->updated_ms);
	o = o_int(o, TAG_QUALIFYING_DAY, acct->qualifying_day);
	o = enc_lots(o, acct->lots, acct->n_lots);
	o = o_int(o, TAG_LOT_INDEX, acct->lot_index_ms);
	return o;
}

/* Whether the account holds only what this codec writes: protobuf-c keeps the unknown
 * fields of what it decoded and writes them back, which is left to protobuf-c (and
 * holds, which are never stored, to it too). */
static bool account_plain(const void *m)
{
	const Tally__V1__Account *acct = m;
	if (!plain(acct) || acct->n_holds > 0)
		return false;
	for (size_t i = 0; i < acct->n_lots; i++)
		if (!plain(acct->lots[i]))
			return false;
	return true;
}

bool codec_account_plain(const Tally__V1__Account *acct)
{
	return account_plain(acct);
}

/* ---- journal entries ----------------------------------------------------------------
 * The entry of an accrual or a redemption is written here; an entry whose command has
 * another body, or any message with unknown fields, is written by protobuf-c. */

static struct out enc_principal(struct out o, const void *m)
{
	const Tally__V1__Principal *p = m;
	o = o_str(o, TAG(1, LEN), p->key_name);
	o = o_enum(o, TAG(2, VARINT), (int)p->role);
	for (size_t i = 0; i < p->n_brands; i++) {
		const char *b = p->brands[i] != NULL ? p->brands[i] : "";
		o = o_bytes(o, TAG(3, LEN), b, strlen(b));
	}
	return o;
}

/* Accrue and Redeem: brand 1, member 2, points 3, reason 4, reference 5. */
static struct out enc_move(struct out o, const char *brand, const char *member, int64_t points,
		     const char *reason, const char *reference)
{
	o = o_str(o, TAG(1, LEN), brand);
	o = o_str(o, TAG(2, LEN), member);
	o = o_int(o, TAG(3, VARINT), points);
	o = o_str(o, TAG(4, LEN), reason);
	o = o_str(o, TAG(5, LEN), reference);
	return o;
}

static struct out enc_accrue(struct out o, const void *m)
{
	const Tally__V1__Accrue *x = m;
	return enc_move(o, x->brand, x->member, x->points, x->reason, x->reference);
}

static struct out enc_redeem(struct out o, const void *m)
{
	const Tally__V1__Redeem *x = m;
	return enc_move(o, x->brand, x->member, x->points, x->reason, x->reference);
}

static struct out enc_command(struct out o, const void *m)
{
	const Tally__V1__Command *c = m;
	o = o_str(o, TAG(1, LEN), c->request_id);
	o = o_msg(o, TAG(2, LEN), enc_principal, c->principal);
	if (c->body_case == TALLY__V1__COMMAND__BODY_ACCRUE)
		o = o_msg(o, TAG(TALLY__V1__COMMAND__BODY_ACCRUE, LEN), enc_accrue, c->accrue);
	else
		o = o_msg(o, TAG(TALLY__V1__COMMAND__BODY_REDEEM, LEN), enc_redeem, c->redeem);
	return o;
}

static struct out enc_result(struct out o, const void *m)
{
	const Tally__V1__CommandResult *r = m;
	o = o_enum(o, TAG(1, VARINT), (int)r->code);
	o = o_str(o, TAG(2, LEN), r->message);
	o = o_int(o, TAG(3, VARINT), (int64_t)r->entry_seq);
	o = o_bool(o, TAG(4, VARINT), r->replay);
	o = o_int(o, TAG(5, VARINT), (int64_t)r->hold_id);
	o = o_int(o, TAG(6, VARINT), (int64_t)r->settlement_id);
	o = o_int(o, TAG(7, VARINT), r->points);
	o = o_int(o, TAG(8, VARINT), r->available);
	o = o_int(o, TAG(9, VARINT), r->held);
	o = o_int(o, TAG(10, VARINT), r->count);
	o = o_bool(o, TAG(11, VARINT), r->more);
	return o;
}

static struct out enc_posting(struct out o, const void *m)
{
	const Tally__V1__Posting *p = m;
	o = o_str(o, TAG(1, LEN), p->brand);
	o = o_enum(o, TAG(2, VARINT), (int)p->account);
	o = o_str(o, TAG(3, LEN), p->member);
	o = o_str(o, TAG(4, LEN), p->partner);
	o = o_enum(o, TAG(5, VARINT), (int)p->bucket);
	o = o_int(o, TAG(6, VARINT), p->points);
	return o;
}

static struct out enc_lot_move(struct out o, const void *m)
{
	const Tally__V1__LotMove *l = m;
	o = o_int(o, TAG(1, VARINT), l->expiry_ms);
	o = o_int(o, TAG(2, VARINT), l->points);
	return o;
}

static struct out enc_entry(struct out o, const void *m)
{
	const Tally__V1__Entry *e = m;
	o = o_int(o, TAG(1, VARINT), (int64_t)e->seq);
	o = o_int(o, TAG(2, VARINT), e->time_ms);
	o = o_enum(o, TAG(3, VARINT), (int)e->kind);
	o = o_msg(o, TAG(4, LEN), enc_command, e->command);
	o = o_msg(o, TAG(5, LEN), enc_result, e->result);
	for (size_t i = 0; i < e->n_postings; i++)
		o = o_msg(o, TAG(6, LEN), enc_posting, e->postings[i]);
	for (size_t i = 0; i < e->n_lots; i++)
		o = o_msg(o, TAG(7, LEN), enc_lot_move, e->lots[i]);
	o = o_int(o, TAG(8, VARINT), (int64_t)e->cause_seq);
	o = o_str(o, TAG(9, LEN), e->brand);
	o = o_str(o, TAG(10, LEN), e->member);
	return o;
}

static bool command_plain(const void *m)
{
	const Tally__V1__Command *c = m;
	if (!plain(c) || (c->principal != NULL && !plain(c->principal)))
		return false;
	if (c->body_case == TALLY__V1__COMMAND__BODY_ACCRUE)
		return c->accrue != NULL && plain(c->accrue);
	if (c->body_case == TALLY__V1__COMMAND__BODY_REDEEM)
		return c->redeem != NULL && plain(c->redeem);
	return false;
}

static bool entry_plain(const void *m)
{
	const Tally__V1__Entry *e = m;
	if (!plain(e) || (e->command != NULL && !command_plain(e->command)) ||
	    (e->result != NULL && !plain(e->result)))
		return false;
	for (size_t i = 0; i < e->n_postings; i++)
		if (!plain(e->postings[i]))
			return false;
	for (size_t i = 0; i < e->n_lots; i++)
		if (!plain(e->lots[i]))
			return false;
	return true;
}

/* ---- which messages are written here -------------------------------------------- */

static const struct {
	const ProtobufCMessageDescriptor *d;
	enc_fn enc;
	bool (*plain)(const void *m); /* whether this one holds only what enc writes */
} written[] = {
	{&tally__v1__account__descriptor, enc_account, account_plain},
	{&tally__v1__entry__descriptor, enc_entry, entry_plain},
	{&tally__v1__command__descriptor, enc_command, command_plain},
};

/* The encoder for m, or NULL when protobuf-c writes it. */
static enc_fn encoder(const ProtobufCMessage *m)
{
	for (size_t i = 0; i < sizeof(written) / sizeof(written[0]); i++)
		if (m->descriptor == written[i].d)
			return written[i].plain(m) ? written[i].enc : NULL;
	return NULL;
}

size_t codec_pack(const void *msg, uint8_t *out, size_t cap)
{
	assert(msg != NULL && (out != NULL || cap == 0));
	enc_fn enc = encoder(msg);
	if (enc != NULL) {
		uintptr_t at = (uintptr_t)out;
		return enc((struct out){at, out != NULL ? at + cap : 0}, msg).p - at;
	}
	size_t n = protobuf_c_message_get_packed_size(msg);
	if (n <= cap)
		protobuf_c_message_pack(msg, out);
	return n;
}

/* The room to write msg into at the first try: an account with many lots (a busy
 * member's, up to 1,458 under the bounded lots) would not fit CODEC_GUESS_BYTES, and a
 * second try writes it all again. */
static size_t pack_guess(const ProtobufCMessage *msg)
{
	if (msg->descriptor != &tally__v1__account__descriptor)
		return CODEC_GUESS_BYTES;
	return CODEC_GUESS_BYTES +
	       ((const Tally__V1__Account *)msg)->n_lots * CODEC_LOT_FIELD_BYTES_MAX;
}

uint8_t *codec_pack_arena(struct tally_arena *arena, const void *msg, size_t head, size_t *n)
{
	assert(arena != NULL && msg != NULL && n != NULL);
	size_t guess = pack_guess(msg);
	uint8_t *buf = tally_arena_alloc(arena, head + guess);
	if (buf == NULL)
		return NULL;
	*n = codec_pack(msg, buf + head, guess);
	if (*n <= guess)
		return buf;
	buf = tally_arena_alloc(arena, head + *n);
	if (buf == NULL)
		return NULL;
	size_t w = codec_pack(msg, buf + head, *n);
	assert(w == *n);
	return buf;
}

/* ---- decoding --------------------------------------------------------------------- */

struct reader {
	const uint8_t *p, *end;
};

/* A varint, byte by byte, each checked against the end. */
static bool varint_slow(struct reader *r, uint64_t *v)
{
	const uint8_t *p = r->p;
	uint64_t x = 0;
	for (unsigned shift = 0; shift < 7 * VARINT_BYTES_MAX && p < r->end; shift += 7) {
		uint8_t b = *p++;
		x |= (uint64_t)(b & 0x7f) << shift;
		if (b < 0x80) {
			r->p = p;
			*v = x;
			return shift < 63 || b <= 1; /* the tenth byte holds one bit */
		}
	}
	return false;
}

/* A varint. One byte (tags, lengths, small numbers) is taken at once. One of at most 8
 * bytes with 8 bytes left to read (a record's every varint but negative numbers and its
 * last few bytes) is taken from one 64-bit load: its length from the first byte without
 * the continuation bit, its seven-bit groups put together with shifts and masks, and no
 * branch per byte. The record's hot loop: an account of a busy member has hundreds of
 * lots, four varints each. */
static inline bool varint_get(struct reader *r, uint64_t *v)
{
	if (r->p < r->end && *r->p < 0x80) { /* a tag, a length, a small number */
		*v = *r->p++;
		return true;
	}
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	if (r->end - r->p >= 8) {
		uint64_t w;
		memcpy(&w, r->p, sizeof(w));
		uint64_t stop = ~w & UINT64_C(0x8080808080808080);
		if (stop != 0) {
			unsigned bits = (unsigned)__builtin_ctzll(stop) + 1; /* through the last byte */
			uint64_t x = bits == 64 ? w : w & ((UINT64_C(1) << bits) - 1);
			uint64_t g = UINT64_C(0x7f);
			*v = (x & g) | (x >> 1 & g << 7) | (x >> 2 & g << 14) | (x >> 3 & g << 21) |
			     (x >> 4 & g << 28) | (x >> 5 & g << 35) | (x >> 6 & g << 42) |
			     (x >> 7 & g << 49);
			r->p += bits / 8;
			return true;
		}
	}
#endif
	return varint_slow(r, v);
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

/* One field: its tag, then its value (a varint) or its bytes (length-delimited); the
 * fixed-width kinds are stepped over. false when it is cut short or a group. */
static inline bool field_get(struct reader *r, uint64_t *tag, uint64_t *v, struct reader *body)
{
	if (!varint_get(r, tag))
		return false;
	switch (*tag & 7) {
	case VARINT: return varint_get(r, v);
	case LEN: return bytes_get(r, body);
	case 1:
	case 5: {
		size_t n = (*tag & 7) == 1 ? 8 : 4;
		if ((size_t)(r->end - r->p) < n)
			return false;
		r->p += n;
		return true;
	}
	default: return false; /* groups: never in this schema */
	}
}

bool codec_fields(const uint8_t *p, size_t n, codec_field_fn each, void *ctx)
{
	assert(p != NULL || n == 0);
	struct reader r = {p, p + n};
	while (r.p < r.end) {
		const uint8_t *at = r.p;
		uint64_t tag, v;
		struct reader body;
		if (!field_get(&r, &tag, &v, &body))
			return false;
		each(ctx, tag == TAG_LOT, at, (size_t)(r.p - at));
	}
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

/* Reads the fields other than lots into acct, and finds the lots: *n_lots of them, in
 * the span *lots. Encoders write an account's lots as one run with no other field in
 * between; fields_get answers false for any other layout (and for a field it does not
 * write), which goes to protobuf-c's decoder. */
static bool fields_get(struct reader r, Tally__V1__Account *acct, size_t *n_lots,
		       struct reader *lots, struct tally_arena *arena)
{
	*n_lots = 0;
	lots->p = lots->end = r.p;
	while (r.p < r.end) {
		const uint8_t *at = r.p;
		uint64_t tag, v = 0;
		struct reader body = {NULL, NULL};
		if (!field_get(&r, &tag, &v, &body))
			return false;
		int64_t *num = int_field(acct, tag); /* the tags name the wire type too */
		char **str = str_field(acct, tag);
		if (num != NULL) {
			*num = (int64_t)v;
		} else if (str != NULL) {
			*str = tally_arena_strndup(arena, (const char *)body.p,
						   (size_t)(body.end - body.p));
			if (*str == NULL)
				return false;
		} else if (tag == TAG_LOT) {
			if (*n_lots == 0)
				lots->p = at;
			else if (lots->end != at)
				return false; /* lots split by another field */
			lots->end = r.p;
			++*n_lots;
		} else {
			return false; /* another field: protobuf-c's decoder judges it */
		}
	}
	return true;
}

/* The n lots of the run fields_get found, each a TAG_LOT and its body. */
static bool lots_get(struct reader run, Tally__V1__Lot *lots, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t tag;
		struct reader body;
		if (!varint_get(&run, &tag) || tag != TAG_LOT || !bytes_get(&run, &body) ||
		    !lot_get(&body, &lots[i]))
			return false;
	}
	assert(run.p == run.end); /* the run fields_get measured, lot by lot */
	return true;
}

Tally__V1__Account *account_unpack(struct tally_arena *arena, const uint8_t *data, size_t n)
{
	assert(arena != NULL && (data != NULL || n == 0));
	struct reader r = {data, data + n}, run;
	Tally__V1__Account first = TALLY__V1__ACCOUNT__INIT;
	size_t n_lots;
	if (!fields_get(r, &first, &n_lots, &run, arena))
		return tally__v1__account__unpack(tally_arena_protobuf(arena), n, data);
	Tally__V1__Account *acct = tally_arena_alloc(
		arena, sizeof(*acct) + n_lots * (sizeof(Tally__V1__Lot *) + sizeof(Tally__V1__Lot)));
	if (acct == NULL)
		return NULL;
	*acct = first;
	Tally__V1__Lot **ptrs = (Tally__V1__Lot **)(acct + 1);
	Tally__V1__Lot *lots = (Tally__V1__Lot *)(ptrs + n_lots);
	if (!lots_get(run, lots, n_lots))
		return tally__v1__account__unpack(tally_arena_protobuf(arena), n, data);
	for (size_t i = 0; i < n_lots; i++)
		ptrs[i] = &lots[i];
	acct->lots = n_lots > 0 ? ptrs : NULL;
	acct->n_lots = n_lots;
	return acct;
}

/* ---- batches ------------------------------------------------------------------------
 * A raft entry's Batch whose commands are all accruals and redemptions is read here,
 * every string and message into the arena as protobuf-c places them. Only what the
 * encoders above write is taken, each field at most once, in any order: a tag of one
 * byte, the wire type the schema gives, a role that is an int32. Anything else (another
 * body, an unknown or repeated field, a longer tag) gives the whole batch to
 * protobuf-c's decoder, which accepts or refuses it as before; so this decoder never
 * takes what protobuf-c would refuse, nor reads a value it would read otherwise. */

/* A field's tag, when it is one byte; a field seen before is refused through *seen. */
static bool tag_get(struct reader *r, unsigned *tag, uint32_t *seen)
{
	if (r->p == r->end || *r->p >= 0x80)
		return false;
	*tag = *r->p++;
	uint32_t bit = UINT32_C(1) << (*tag >> 3 & 31);
	if (*seen & bit)
		return false;
	*seen |= bit;
	return true;
}

static bool str_get(struct reader *r, struct tally_arena *arena, char **out)
{
	struct reader s;
	if (!bytes_get(r, &s))
		return false;
	*out = tally_arena_strndup(arena, (const char *)s.p, (size_t)(s.end - s.p));
	return *out != NULL;
}

/* The values of a message's repeated field `tag` (length-delimited), in order: the
 * second pass over the message, after the first read its other fields, checked every
 * tag and counted these (n of them). get reads the i-th into the message. */
typedef bool (*item_get_fn)(struct reader body, struct tally_arena *arena, void *msg, size_t i);

static bool repeated_get(struct reader r, unsigned tag, size_t n, item_get_fn get,
			 struct tally_arena *arena, void *msg)
{
	size_t i = 0;
	while (r.p < r.end) {
		unsigned t = *r.p++;
		uint64_t v;
		struct reader body;
		if ((t & 7) == VARINT ? !varint_get(&r, &v) : !bytes_get(&r, &body))
			return false;
		if (t == tag && (i == n || !get(body, arena, msg, i++)))
			return false;
	}
	return i == n;
}

static bool brand_at(struct reader body, struct tally_arena *arena, void *msg, size_t i)
{
	Tally__V1__Principal *p = msg;
	p->brands[i] = tally_arena_strndup(arena, (const char *)body.p, (size_t)(body.end - body.p));
	return p->brands[i] != NULL;
}

/* Principal: key_name 1, role 2, brands 3 (repeated). */
static Tally__V1__Principal *principal_get(struct reader r, struct tally_arena *arena)
{
	Tally__V1__Principal *p = tally_arena_alloc(arena, sizeof(*p));
	if (p == NULL)
		return NULL;
	tally__v1__principal__init(p);
	struct reader all = r;
	uint32_t seen = 0;
	size_t n_brands = 0;
	while (r.p < r.end) {
		unsigned tag;
		uint64_t v;
		struct reader s;
		if (*r.p == TAG(3, LEN)) { /* repeated, so not in seen */
			r.p++;
			if (!bytes_get(&r, &s))
				return NULL;
			n_brands++;
		} else if (!tag_get(&r, &tag, &seen)) {
			return NULL;
		} else if (tag == TAG(1, LEN)) {
			if (!str_get(&r, arena, &p->key_name))
				return NULL;
		} else if (tag == TAG(2, VARINT) && varint_get(&r, &v) &&
			   (int64_t)v >= INT32_MIN && (int64_t)v <= INT32_MAX) {
			p->role = (Tally__V1__Role)(int64_t)v; /* negative: ten bytes, as written */
		} else {
			return NULL;
		}
	}
	if (n_brands > 0) {
		p->brands = tally_arena_alloc(arena, n_brands * sizeof(*p->brands));
		if (p->brands == NULL ||
		    !repeated_get(all, TAG(3, LEN), n_brands, brand_at, arena, p))
			return NULL;
		p->n_brands = n_brands;
	}
	return p;
}

/* Accrue and Redeem: brand 1, member 2, points 3, reason 4, reference 5. */
static bool move_get(struct reader r, struct tally_arena *arena, char **brand, char **member,
		     int64_t *points, char **reason, char **reference)
{
	uint32_t seen = 0;
	while (r.p < r.end) {
		unsigned tag;
		uint64_t v;
		if (!tag_get(&r, &tag, &seen))
			return false;
		char **str = tag == TAG(1, LEN) ? brand
			     : tag == TAG(2, LEN) ? member
			     : tag == TAG(4, LEN) ? reason
			     : tag == TAG(5, LEN) ? reference
						  : NULL;
		if (str != NULL) {
			if (!str_get(&r, arena, str))
				return false;
		} else if (tag == TAG(3, VARINT) && varint_get(&r, &v)) {
			*points = (int64_t)v;
		} else {
			return false;
		}
	}
	return true;
}

static bool body_get(struct reader r, unsigned tag, struct tally_arena *arena,
		     Tally__V1__Command *c)
{
	if (tag == TAG(TALLY__V1__COMMAND__BODY_ACCRUE, LEN)) {
		Tally__V1__Accrue *x = tally_arena_alloc(arena, sizeof(*x));
		if (x == NULL)
			return false;
		tally__v1__accrue__init(x);
		c->body_case = TALLY__V1__COMMAND__BODY_ACCRUE;
		c->accrue = x;
		return move_get(r, arena, &x->brand, &x->member, &x->points, &x->reason,
				&x->reference);
	}
	Tally__V1__Redeem *x = tally_arena_alloc(arena, sizeof(*x));
	if (x == NULL)
		return false;
	tally__v1__redeem__init(x);
	c->body_case = TALLY__V1__COMMAND__BODY_REDEEM;
	c->redeem = x;
	return move_get(r, arena, &x->brand, &x->member, &x->points, &x->reason, &x->reference);
}

static Tally__V1__Command *command_get(struct reader r, struct tally_arena *arena)
{
	Tally__V1__Command *c = tally_arena_alloc(arena, sizeof(*c));
	if (c == NULL)
		return NULL;
	tally__v1__command__init(c);
	uint32_t seen = 0;
	while (r.p < r.end) {
		unsigned tag;
		struct reader body;
		if (!tag_get(&r, &tag, &seen) || (tag & 7) != LEN || !bytes_get(&r, &body))
			return NULL;
		if (tag == TAG(1, LEN)) {
			c->request_id = tally_arena_strndup(arena, (const char *)body.p,
							    (size_t)(body.end - body.p));
			if (c->request_id == NULL)
				return NULL;
		} else if (tag == TAG(2, LEN)) {
			if ((c->principal = principal_get(body, arena)) == NULL)
				return NULL;
		} else if (c->body_case != TALLY__V1__COMMAND__BODY__NOT_SET ||
			   (tag != TAG(TALLY__V1__COMMAND__BODY_ACCRUE, LEN) &&
			    tag != TAG(TALLY__V1__COMMAND__BODY_REDEEM, LEN)) ||
			   !body_get(body, tag, arena, c)) {
			return NULL;
		}
	}
	return c->body_case != TALLY__V1__COMMAND__BODY__NOT_SET ? c : NULL;
}

static bool command_at(struct reader body, struct tally_arena *arena, void *msg, size_t i)
{
	Tally__V1__Batch *b = msg;
	b->commands[i] = command_get(body, arena);
	return b->commands[i] != NULL;
}

/* Batch: raft_index 1, raft_term 2, time_ms 3 (varints), commands 4 (repeated). */
static Tally__V1__Batch *batch_get(struct reader r, struct tally_arena *arena)
{
	Tally__V1__Batch *b = tally_arena_alloc(arena, sizeof(*b));
	if (b == NULL)
		return NULL;
	tally__v1__batch__init(b);
	struct reader all = r;
	uint32_t seen = 0;
	size_t n = 0;
	while (r.p < r.end) { /* the numbers, and the commands counted */
		unsigned tag;
		uint64_t v;
		struct reader body;
		if (*r.p == TAG(4, LEN)) {
			r.p++;
			if (!bytes_get(&r, &body))
				return NULL;
			n++;
		} else if (!tag_get(&r, &tag, &seen) || !varint_get(&r, &v)) {
			return NULL;
		} else if (tag == TAG(1, VARINT)) {
			b->raft_index = v;
		} else if (tag == TAG(2, VARINT)) {
			b->raft_term = v;
		} else if (tag == TAG(3, VARINT)) {
			b->time_ms = (int64_t)v;
		} else {
			return NULL;
		}
	}
	if (n > 0) {
		b->commands = tally_arena_alloc(arena, n * sizeof(*b->commands));
		if (b->commands == NULL || !repeated_get(all, TAG(4, LEN), n, command_at, arena, b))
			return NULL;
		b->n_commands = n;
	}
	return b;
}

Tally__V1__Batch *batch_unpack(struct tally_arena *arena, const uint8_t *data, size_t n)
{
	assert(arena != NULL && (data != NULL || n == 0));
	return batch_get((struct reader){data, data + n}, arena);
}

size_t tally_ledger_command_pack(const Tally__V1__Command *cmd, uint8_t *out, size_t cap)
{
	assert(cmd != NULL && cmd->base.descriptor == &tally__v1__command__descriptor);
	return codec_pack(cmd, out, cap);
}

Tally__V1__Batch *tally_ledger_batch_decode(struct tally_arena *arena, const void *buf,
					    size_t len)
{
	Tally__V1__Batch *b = batch_unpack(arena, buf, len);
	return b != NULL ? b : tally__v1__batch__unpack(tally_arena_protobuf(arena), len, buf);
}
