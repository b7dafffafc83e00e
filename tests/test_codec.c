/* The codec of the apply path (ledger/codec.c) against protobuf-c: the same bytes for
 * every account, entry and command, the same account read back, protobuf-c's answer
 * for whatever else the bytes may hold, and a schema that has not outgrown the codec. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ledger/internal.h"

#define ROUNDS 20000
#define LOTS_MAX 40
#define BUSY_LOTS_MAX 400 /* a busy member's account: 256 exact lots and month ends */
#define CODEC_BYTES_MAX 4096
#define ACCOUNT_BYTES_MAX (BUSY_LOTS_MAX * 24 + 1024)

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Numbers as they come: often 0 (left out), small, large, negative, the extremes, and
 * of any bit length (varints of every length). */
static int64_t any_i64(void)
{
	switch (rnd() % 7) {
	case 6: return (int64_t)(rnd() >> (rnd() % 64));
	case 0: return 0;
	case 1: return (int64_t)(rnd() % 200);
	case 2: return (int64_t)(rnd() % 2000000000000000LL);
	case 3: return -(int64_t)(rnd() % 100000);
	case 4: return rnd() % 2 ? INT64_MAX : INT64_MIN;
	default: return (int64_t)rnd();
	}
}

static char *any_str(struct tally_arena *a, const char *prefix)
{
	char buf[200];
	size_t n = rnd() % 4 == 0 ? 0 : rnd() % 140;
	for (size_t i = 0; i < n; i++)
		buf[i] = prefix[i % strlen(prefix)];
	buf[n] = '\0';
	return n == 0 ? (char *)protobuf_c_empty_string : tally_arena_strdup(a, buf);
}

static Tally__V1__Account *any_account(struct tally_arena *a)
{
	Tally__V1__Account *acct = tally_arena_alloc(a, sizeof(*acct));
	tally__v1__account__init(acct);
	acct->brand = any_str(a, "aurora");
	acct->member = any_str(a, "m0012345");
	acct->tier = any_str(a, "gold");
	int64_t *nums[] = {&acct->available, &acct->held, &acct->earned, &acct->redeemed,
			   &acct->expired, &acct->qualifying, &acct->updated_ms,
			   &acct->qualifying_day, &acct->lot_index_ms};
	for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++)
		*nums[i] = any_i64();
	acct->n_lots = rnd() % 3 == 0 ? 0 : rnd() % (rnd() % 20 == 0 ? BUSY_LOTS_MAX : LOTS_MAX);
	acct->lots = tally_arena_alloc(a, (acct->n_lots + 1) * sizeof(*acct->lots));
	for (size_t i = 0; i < acct->n_lots; i++) {
		Tally__V1__Lot *lot = tally_arena_alloc(a, sizeof(*lot));
		tally__v1__lot__init(lot);
		lot->expiry_ms = any_i64();
		lot->points = any_i64();
		acct->lots[i] = lot;
	}
	return acct;
}

static Tally__V1__Principal *any_principal(struct tally_arena *a)
{
	if (rnd() % 5 == 0)
		return NULL;
	Tally__V1__Principal *p = tally_arena_alloc(a, sizeof(*p));
	tally__v1__principal__init(p);
	p->key_name = any_str(a, "dealer");
	p->role = (Tally__V1__Role)((int)(rnd() % 9) - 1); /* -1: ten bytes, as protobuf-c */
	p->n_brands = rnd() % 4;
	p->brands = tally_arena_alloc(a, (p->n_brands + 1) * sizeof(*p->brands));
	for (size_t i = 0; i < p->n_brands; i++)
		p->brands[i] = rnd() % 3 == 0 ? (char *)"*" : any_str(a, "brand");
	return p;
}

/* Accruals and redemptions (written by the codec), holds (left to protobuf-c). */
static Tally__V1__Command *any_command(struct tally_arena *a)
{
	Tally__V1__Command *c = tally_arena_alloc(a, sizeof(*c));
	tally__v1__command__init(c);
	c->request_id = any_str(a, "op-12345");
	c->principal = any_principal(a);
	switch (rnd() % 3) {
	case 0: {
		Tally__V1__Accrue *m = tally_arena_alloc(a, sizeof(*m));
		tally__v1__accrue__init(m);
		m->brand = any_str(a, "aurora");
		m->member = any_str(a, "m1");
		m->points = any_i64();
		m->reason = any_str(a, "purchase");
		m->reference = any_str(a, "VIN");
		c->body_case = TALLY__V1__COMMAND__BODY_ACCRUE;
		c->accrue = m;
		break;
	}
	case 1: {
		Tally__V1__Redeem *m = tally_arena_alloc(a, sizeof(*m));
		tally__v1__redeem__init(m);
		m->brand = any_str(a, "aurora");
		m->member = any_str(a, "m2");
		m->points = any_i64();
		m->reason = any_str(a, "mall");
		m->reference = any_str(a, "order");
		c->body_case = TALLY__V1__COMMAND__BODY_REDEEM;
		c->redeem = m;
		break;
	}
	default: {
		Tally__V1__Hold *m = tally_arena_alloc(a, sizeof(*m));
		tally__v1__hold__init(m);
		m->brand = any_str(a, "aurora");
		m->member = any_str(a, "m3");
		m->points = any_i64();
		m->timeout_s = (uint32_t)rnd();
		c->body_case = TALLY__V1__COMMAND__BODY_HOLD;
		c->hold = m;
	}
	}
	return c;
}

static Tally__V1__CommandResult *any_result(struct tally_arena *a)
{
	if (rnd() % 6 == 0)
		return NULL;
	Tally__V1__CommandResult *r = tally_arena_alloc(a, sizeof(*r));
	tally__v1__command_result__init(r);
	r->code = (Tally__V1__ResultCode)(rnd() % 12);
	r->message = any_str(a, "points: more than available");
	r->entry_seq = (uint64_t)any_i64();
	r->replay = rnd() % 2;
	r->hold_id = (uint64_t)any_i64();
	r->settlement_id = (uint64_t)any_i64();
	r->points = any_i64();
	r->available = any_i64();
	r->held = any_i64();
	r->count = any_i64();
	r->more = rnd() % 2;
	return r;
}

static Tally__V1__Entry *any_entry(struct tally_arena *a)
{
	Tally__V1__Entry *e = tally_arena_alloc(a, sizeof(*e));
	tally__v1__entry__init(e);
	e->seq = (uint64_t)any_i64();
	e->time_ms = any_i64();
	e->kind = (Tally__V1__EntryKind)(rnd() % 6);
	e->command = rnd() % 4 == 0 ? NULL : any_command(a);
	e->result = any_result(a);
	e->n_postings = rnd() % (POSTINGS_MAX + 1);
	e->postings = tally_arena_alloc(a, (e->n_postings + 1) * sizeof(*e->postings));
	for (size_t i = 0; i < e->n_postings; i++) {
		Tally__V1__Posting *p = tally_arena_alloc(a, sizeof(*p));
		tally__v1__posting__init(p);
		p->brand = any_str(a, "aurora");
		p->account = (Tally__V1__SystemAccount)((int)(rnd() % 8) - 1);
		p->member = any_str(a, "m4");
		p->partner = any_str(a, "zephyr");
		p->bucket = (Tally__V1__Bucket)(rnd() % 3);
		p->points = any_i64();
		e->postings[i] = p;
	}
	e->n_lots = rnd() % 2 ? 0 : rnd() % LOTS_MAX;
	e->lots = tally_arena_alloc(a, (e->n_lots + 1) * sizeof(*e->lots));
	for (size_t i = 0; i < e->n_lots; i++) {
		Tally__V1__LotMove *m = tally_arena_alloc(a, sizeof(*m));
		tally__v1__lot_move__init(m);
		m->expiry_ms = any_i64();
		m->points = any_i64();
		e->lots[i] = m;
	}
	e->cause_seq = (uint64_t)any_i64();
	e->brand = any_str(a, "aurora");
	e->member = any_str(a, "m5");
	return e;
}

static void assert_accounts_equal(const Tally__V1__Account *x, const Tally__V1__Account *y)
{
	assert_string_equal(x->brand, y->brand);
	assert_string_equal(x->member, y->member);
	assert_string_equal(x->tier, y->tier);
	assert_true(x->available == y->available && x->held == y->held);
	assert_true(x->earned == y->earned && x->redeemed == y->redeemed);
	assert_true(x->expired == y->expired && x->qualifying == y->qualifying);
	assert_true(x->updated_ms == y->updated_ms && x->qualifying_day == y->qualifying_day);
	assert_true(x->lot_index_ms == y->lot_index_ms);
	assert_int_equal(x->n_holds, 0);
	assert_int_equal(y->n_holds, 0);
	assert_int_equal(x->n_lots, y->n_lots);
	for (size_t i = 0; i < x->n_lots; i++) {
		assert_true(x->lots[i]->expiry_ms == y->lots[i]->expiry_ms);
		assert_true(x->lots[i]->points == y->lots[i]->points);
	}
}

static void test_random_accounts_encode_to_protobuf_c_bytes_and_back(void **state)
{
	(void)state;
	struct tally_arena a;
	tally_arena_init(&a, 1 << 16, 0);
	static uint8_t ours[ACCOUNT_BYTES_MAX], theirs[ACCOUNT_BYTES_MAX];
	for (int round = 0; round < ROUNDS; round++) {
		tally_arena_reset(&a);
		Tally__V1__Account *acct = any_account(&a);
		size_t n = codec_pack(acct, NULL, 0);
		assert_int_equal(n, tally__v1__account__get_packed_size(acct));
		assert_true(n <= ACCOUNT_BYTES_MAX);
		assert_int_equal(codec_pack(acct, ours, sizeof(ours)), n);
		assert_int_equal(tally__v1__account__pack(acct, theirs), n);
		assert_memory_equal(ours, theirs, n);
		Tally__V1__Account *back = account_unpack(&a, ours, n);
		assert_non_null(back);
		assert_accounts_equal(acct, back);
	}
	tally_arena_free(&a);
}

static void test_random_entries_and_commands_encode_to_protobuf_c_bytes(void **state)
{
	(void)state;
	struct tally_arena a;
	tally_arena_init(&a, 1 << 16, 0);
	static uint8_t ours[CODEC_BYTES_MAX * 2], theirs[CODEC_BYTES_MAX * 2];
	for (int round = 0; round < ROUNDS; round++) {
		tally_arena_reset(&a);
		Tally__V1__Entry *e = any_entry(&a);
		size_t n = codec_pack(e, NULL, 0);
		assert_int_equal(n, tally__v1__entry__get_packed_size(e));
		assert_true(n <= sizeof(ours));
		assert_int_equal(codec_pack(e, ours, sizeof(ours)), n);
		assert_int_equal(tally__v1__entry__pack(e, theirs), n);
		assert_memory_equal(ours, theirs, n);
		if (e->command == NULL)
			continue;
		/* A command as a leader queues it for raft (tally_ledger_command_pack). */
		n = tally_ledger_command_pack(e->command, NULL, 0);
		assert_int_equal(n, tally__v1__command__get_packed_size(e->command));
		assert_int_equal(tally_ledger_command_pack(e->command, ours, n), n);
		assert_int_equal(tally__v1__command__pack(e->command, theirs), n);
		assert_memory_equal(ours, theirs, n);
		/* The idempotency hash packs the command without request id and principal. */
		Tally__V1__Command body = *e->command;
		body.request_id = (char *)"";
		body.principal = NULL;
		n = codec_pack(&body, NULL, 0);
		assert_int_equal(n, tally__v1__command__get_packed_size(&body));
		assert_int_equal(codec_pack(&body, ours, sizeof(ours)), n);
		assert_int_equal(tally__v1__command__pack(&body, theirs), n);
		assert_memory_equal(ours, theirs, n);
	}
	tally_arena_free(&a);
}

/* A field added to one of these messages must be written by the codec too: this
 * fails until codec.c is taught it (and these counts moved with it). */
static void test_the_schema_has_the_fields_the_codec_writes(void **state)
{
	(void)state;
	static const struct {
		const ProtobufCMessageDescriptor *d;
		unsigned fields;
	} written[] = {
		{&tally__v1__account__descriptor, 14},   {&tally__v1__lot__descriptor, 2},
		{&tally__v1__entry__descriptor, 10},     {&tally__v1__command__descriptor, 21},
		{&tally__v1__principal__descriptor, 3},  {&tally__v1__accrue__descriptor, 5},
		{&tally__v1__redeem__descriptor, 5},     {&tally__v1__command_result__descriptor, 11},
		{&tally__v1__posting__descriptor, 6},    {&tally__v1__lot_move__descriptor, 2},
	};
	for (size_t i = 0; i < sizeof(written) / sizeof(written[0]); i++)
		if (written[i].d->n_fields != written[i].fields)
			fail_msg("%s has %u fields; ledger/codec.c writes %u", written[i].d->name,
				 written[i].d->n_fields, written[i].fields);
}

/* A message with unknown fields (kept by protobuf-c from what it decoded) is written
 * by protobuf-c, unknown fields included. */
static void test_unknown_fields_are_written_back_as_protobuf_c_does(void **state)
{
	(void)state;
	struct tally_arena a;
	tally_arena_init(&a, 1 << 16, 0);
	/* An accrual with field 9 (unknown) inside its body: 0x72 = field 14, bytes. */
	static const uint8_t cmd[] = {0x0a, 0x02, 'r', '1', 0x72, 0x05, 0x0a, 0x01, 'b', 0x48, 0x05};
	Tally__V1__Command *c = tally__v1__command__unpack(tally_arena_protobuf(&a), sizeof(cmd), cmd);
	assert_non_null(c);
	assert_int_equal(c->body_case, TALLY__V1__COMMAND__BODY_ACCRUE);
	assert_int_equal(c->accrue->base.n_unknown_fields, 1);
	Tally__V1__Entry e = TALLY__V1__ENTRY__INIT;
	e.seq = 7;
	e.kind = TALLY__V1__ENTRY_KIND__COMMAND;
	e.command = c;
	uint8_t ours[64], theirs[64];
	size_t n = codec_pack(&e, NULL, 0);
	assert_int_equal(n, tally__v1__entry__get_packed_size(&e));
	assert_int_equal(codec_pack(&e, ours, sizeof(ours)), n);
	assert_int_equal(tally__v1__entry__pack(&e, theirs), n);
	assert_memory_equal(ours, theirs, n);
	assert_int_equal(codec_pack(c, ours, sizeof(ours)), sizeof(cmd));
	assert_memory_equal(ours, cmd, sizeof(cmd));
	/* The same with the unknown field in the principal (field 2): 0x20 = field 4. */
	static const uint8_t cmd2[] = {0x0a, 0x01, 'r', 0x12, 0x05, 0x0a, 0x01, 'k', 0x20, 0x01,
				       0x72, 0x03, 0x0a, 0x01, 'b'};
	c = tally__v1__command__unpack(tally_arena_protobuf(&a), sizeof(cmd2), cmd2);
	assert_non_null(c);
	assert_int_equal(c->principal->base.n_unknown_fields, 1);
	assert_int_equal(codec_pack(c, NULL, 0), sizeof(cmd2));
	assert_int_equal(codec_pack(c, ours, sizeof(ours)), sizeof(cmd2));
	assert_memory_equal(ours, cmd2, sizeof(cmd2));
	tally_arena_free(&a);
}

/* Bytes our encoder never writes are still read as protobuf-c reads them: fields out
 * of order, an unknown field, a hold, a zero written out; broken bytes fail alike. */
static void test_other_encodings_are_read_as_protobuf_c_reads_them(void **state)
{
	(void)state;
	struct tally_arena a;
	tally_arena_init(&a, 1 << 16, 0);
	static const struct {
		const char *what;
		size_t n;
		uint8_t b[24];
	} cases[] = {
		{"fields out of order", 9, {0x18, 0x05, 0x0a, 0x01, 'b', 0x12, 0x02, 'm', '1'}},
		{"an unknown varint field", 5, {0x18, 0x05, 0xf8, 0x01, 0x07}},
		{"a hold", 6, {0x18, 0x05, 0x6a, 0x02, 0x08, 0x01}},
		{"a zero written out", 4, {0x18, 0x00, 0x20, 0x03}},
		{"a lot with an unknown field", 6, {0x62, 0x04, 0x08, 0x01, 0x18, 0x02}},
		{"lots split by another field", 10,
		 {0x62, 0x02, 0x08, 0x01, 0x18, 0x05, 0x62, 0x02, 0x08, 0x02}},
		{"a lot's fields in the other order", 6, {0x62, 0x04, 0x10, 0x07, 0x08, 0x01}},
		{"a nine-byte varint then eight more bytes", 18,
		 {0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x20, 0x01, 0x28,
		  0x02, 0x30, 0x03, 0x38, 0x04}},
		{"a varint cut short", 2, {0x18, 0x85}},
		{"a string past the end", 3, {0x0a, 0x05, 'b'}},
		{"a lot past the end", 3, {0x62, 0x09, 0x08}},
		{"a wrong wire type", 3, {0x19, 0x01, 0x02}},
		{"an eleven-byte varint", 12,
		 {0x18, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		tally_arena_reset(&a);
		Tally__V1__Account *ours = account_unpack(&a, cases[i].b, cases[i].n);
		Tally__V1__Account *theirs =
			tally__v1__account__unpack(tally_arena_protobuf(&a), cases[i].n, cases[i].b);
		if ((ours == NULL) != (theirs == NULL))
			fail_msg("%s: ours %s, protobuf-c %s", cases[i].what,
				 ours ? "read it" : "refused it", theirs ? "read it" : "refused it");
		if (ours != NULL && theirs->n_holds == 0)
			assert_accounts_equal(ours, theirs);
		if (ours != NULL && theirs->n_holds > 0)
			assert_int_equal(ours->n_holds, theirs->n_holds);
		if (ours == NULL || theirs->n_holds > 0)
			continue;
		/* Written back, it is protobuf-c's bytes again, unknown fields included. */
		uint8_t mine[64], pc[64];
		size_t n = codec_pack(ours, NULL, 0);
		assert_int_equal(n, tally__v1__account__get_packed_size(theirs));
		assert_int_equal(codec_pack(ours, mine, sizeof(mine)), n);
		assert_int_equal(tally__v1__account__pack(theirs, pc), n);
		assert_memory_equal(mine, pc, n);
	}
	tally_arena_free(&a);
}

static void test_the_empty_account_is_zero_bytes(void **state)
{
	(void)state;
	struct tally_arena a;
	tally_arena_init(&a, 1 << 12, 0);
	Tally__V1__Account acct = TALLY__V1__ACCOUNT__INIT;
	uint8_t b[1];
	assert_int_equal(codec_pack(&acct, NULL, 0), 0);
	assert_int_equal(codec_pack(&acct, b, sizeof(b)), 0);
	Tally__V1__Account *back = account_unpack(&a, b, 0);
	assert_non_null(back);
	assert_accounts_equal(&acct, back);
	tally_arena_free(&a);
}

/* Written into too little room, the codec writes nothing past it and still gives the
 * size; codec_pack_arena gives protobuf-c's bytes after the room asked for, whether or
 * not they fit in its first guess. */
static void test_bounded_writes_stay_in_bounds_and_give_the_size(void **state)
{
	(void)state;
	struct tally_arena a;
	tally_arena_init(&a, 1 << 16, 0);
	static uint8_t ours[CODEC_BYTES_MAX * 2 + 1], theirs[CODEC_BYTES_MAX * 2];
	unsigned guessed_short = 0;
	for (int round = 0; round < ROUNDS / 40; round++) {
		tally_arena_reset(&a);
		const void *m = round % 2 ? (const void *)any_entry(&a) : (const void *)any_account(&a);
		size_t n = protobuf_c_message_pack(m, theirs);
		for (size_t cap = 0; cap <= n; cap++) {
			memset(ours, 0xa5, cap + 1);
			assert_int_equal(codec_pack(m, ours, cap), n);
			assert_int_equal(ours[cap], 0xa5);
		}
		memset(ours, 0xa5, n + 1);
		assert_int_equal(codec_pack(m, ours, n), n);
		assert_memory_equal(ours, theirs, n);
		assert_int_equal(ours[n], 0xa5);
		size_t got;
		uint8_t *buf = codec_pack_arena(&a, m, 7, &got);
		assert_non_null(buf);
		assert_int_equal(got, n);
		assert_memory_equal(buf + 7, theirs, n);
		guessed_short += n > CODEC_GUESS_BYTES;
	}
	assert_true(guessed_short > 0); /* the second pass was taken */
	tally_arena_free(&a);
}

/* ---- batches ---------------------------------------------------------------------- */

#define BATCH_COMMANDS_MAX 12
#define BATCH_BYTES_MAX (BATCH_COMMANDS_MAX * 1024)
#define BATCH_MUTATIONS 8

static Tally__V1__Batch *any_batch(struct tally_arena *a, bool *ours)
{
	Tally__V1__Batch *b = tally_arena_alloc(a, sizeof(*b));
	tally__v1__batch__init(b);
	b->raft_index = (uint64_t)any_i64();
	b->raft_term = (uint64_t)any_i64();
	b->time_ms = any_i64();
	b->n_commands = rnd() % (BATCH_COMMANDS_MAX + 1);
	b->commands = tally_arena_alloc(a, (b->n_commands + 1) * sizeof(*b->commands));
	*ours = true;
	bool with_hold = rnd() % 4 == 0;
	for (size_t i = 0; i < b->n_commands; i++) {
		do
			b->commands[i] = any_command(a);
		while (!with_hold && b->commands[i]->body_case == TALLY__V1__COMMAND__BODY_HOLD);
		*ours &= b->commands[i]->body_case != TALLY__V1__COMMAND__BODY_HOLD;
	}
	return b;
}

/* Two decoded batches are the same when protobuf-c writes them to the same bytes. */
static void assert_batches_equal(const Tally__V1__Batch *x, const Tally__V1__Batch *y)
{
	static uint8_t bx[BATCH_BYTES_MAX * 2], by[BATCH_BYTES_MAX * 2];
	size_t n = tally__v1__batch__get_packed_size(x);
	assert_int_equal(n, tally__v1__batch__get_packed_size(y));
	assert_true(n <= sizeof(bx));
	assert_int_equal(tally__v1__batch__pack(x, bx), n);
	assert_int_equal(tally__v1__batch__pack(y, by), n);
	assert_memory_equal(bx, by, n);
}

/* One change to the bytes: a byte replaced, the end cut, or a byte put in. */
static size_t mutate(uint8_t *b, size_t n, size_t cap)
{
	size_t at = n > 0 ? rnd() % n : 0;
	switch (rnd() % 3) {
	case 0:
		if (n > 0)
			b[at] = (uint8_t)rnd();
		return n;
	case 1: return at;
	default:
		if (n == cap)
			return n;
		memmove(b + at + 1, b + at, n - at);
		b[at] = (uint8_t)rnd();
		return n + 1;
	}
}

/* Batches of accruals and redemptions are read by the codec, to what protobuf-c reads;
 * with a hold among them, protobuf-c reads them. Changed bytes are read by the codec
 * only as protobuf-c reads them, or left to it. */
static void test_random_batches_are_read_as_protobuf_c_reads_them(void **state)
{
	(void)state;
	struct tally_arena a, ours_a, theirs_a;
	tally_arena_init(&a, 1 << 16, 0);
	tally_arena_init(&ours_a, 1 << 16, 0);
	tally_arena_init(&theirs_a, 1 << 16, 0);
	static uint8_t bytes[BATCH_BYTES_MAX], changed[BATCH_BYTES_MAX];
	unsigned mutated_read = 0, mutated_left = 0;
	for (int round = 0; round < ROUNDS / 4; round++) {
		tally_arena_reset(&a);
		tally_arena_reset(&ours_a);
		bool expect_ours;
		Tally__V1__Batch *b = any_batch(&a, &expect_ours);
		size_t n = tally__v1__batch__get_packed_size(b);
		assert_true(n <= sizeof(bytes));
		assert_int_equal(tally__v1__batch__pack(b, bytes), n);
		Tally__V1__Batch *ours = batch_unpack(&ours_a, bytes, n);
		if ((ours != NULL) != expect_ours)
			fail_msg("round %d: the codec %s a batch it should %s", round,
				 ours ? "read" : "left", expect_ours ? "read" : "leave");
		Tally__V1__Batch *got = tally_ledger_batch_decode(&ours_a, bytes, n);
		assert_non_null(got);
		assert_batches_equal(got, b);
		if (ours != NULL)
			assert_batches_equal(ours, b);
		for (int m = 0; m < BATCH_MUTATIONS; m++) {
			tally_arena_reset(&ours_a);
			tally_arena_reset(&theirs_a);
			memcpy(changed, bytes, n);
			size_t k = mutate(changed, n, sizeof(changed));
			ours = batch_unpack(&ours_a, changed, k);
			Tally__V1__Batch *theirs =
				tally__v1__batch__unpack(tally_arena_protobuf(&theirs_a), k, changed);
			if (ours == NULL) {
				mutated_left++;
				continue;
			}
			if (theirs == NULL)
				fail_msg("round %d: the codec read bytes protobuf-c refuses", round);
			assert_batches_equal(ours, theirs);
			mutated_read++;
		}
	}
	/* Both ways were taken, many times. */
	assert_true(mutated_read > ROUNDS / 4 && mutated_left > ROUNDS / 4);
	tally_arena_free(&a);
	tally_arena_free(&ours_a);
	tally_arena_free(&theirs_a);
}

/* Bytes protobuf-c reads its own way go to it: a field twice (the last one wins, or a
 * message merged), an unknown field, another body, a tag of two bytes, a role past
 * int32; broken bytes fail alike. */
static void test_other_batch_encodings_are_left_to_protobuf_c(void **state)
{
	(void)state;
	struct tally_arena a;
	tally_arena_init(&a, 1 << 16, 0);
	/* One command: 0x22 = field 4; inside, 0x0a request id, 0x72 accrue (brand "b"). */
	static const struct {
		const char *what;
		bool read; /* by the codec */
		size_t n;
		uint8_t b[32];
	} cases[] = {
		{"an accrual", true, 12, {0x08, 0x07, 0x22, 0x08, 0x0a, 0x01, 'r', 0x72, 0x03, 0x0a, 0x01, 'b'}},
		{"padded as the node pads it (index 0, over-long)", true, 18,
		 {0x08, 0x80, 0x80, 0x00, 0x10, 0x03, 0x18, 0x05, 0x22, 0x08, 0x0a, 0x01, 'r', 0x72, 0x03,
		  0x0a, 0x01, 'b'}},
		{"the index twice", false, 14,
		 {0x08, 0x07, 0x08, 0x09, 0x22, 0x08, 0x0a, 0x01, 'r', 0x72, 0x03, 0x0a, 0x01, 'b'}},
		{"a request id twice", false, 13,
		 {0x22, 0x0b, 0x0a, 0x01, 'r', 0x0a, 0x01, 's', 0x72, 0x03, 0x0a, 0x01, 'b'}},
		{"an accrual twice", false, 13,
		 {0x22, 0x0b, 0x72, 0x03, 0x0a, 0x01, 'b', 0x72, 0x04, 0x12, 0x02, 'm', '1'}},
		{"an accrual and a redemption", false, 13,
		 {0x22, 0x0b, 0x72, 0x03, 0x0a, 0x01, 'b', 0x7a, 0x04, 0x12, 0x02, 'm', '1'}},
		{"an unknown batch field", false, 4, {0x08, 0x07, 0x28, 0x01}},
		{"an unknown accrual field", false, 8, {0x22, 0x06, 0x72, 0x04, 0x0a, 0x00, 0x30, 0x01}},
		{"a hold", false, 5, {0x22, 0x03, 0x82, 0x01, 0x00}},
		{"no body", false, 5, {0x22, 0x03, 0x0a, 0x01, 'r'}},
		{"a two-byte tag", false, 7, {0x22, 0x05, 0xf2, 0x00, 0x02, 0x18, 0x01}},
		{"a role past int32", false, 12,
		 {0x22, 0x0a, 0x12, 0x06, 0x10, 0x80, 0x80, 0x80, 0x80, 0x10, 0x72, 0x00}},
		{"a role of -1", true, 17,
		 {0x22, 0x0f, 0x12, 0x0b, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		  0xff, 0x01, 0x72, 0x00}},
		{"a brand past the end", false, 7, {0x22, 0x05, 0x72, 0x03, 0x0a, 0x09, 'b'}},
		{"a command past the end", false, 3, {0x22, 0x09, 0x0a}},
		{"a varint cut short", false, 2, {0x08, 0x85}},
		{"a points of the wrong type", false, 6, {0x22, 0x04, 0x72, 0x02, 0x19, 0x01}},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		tally_arena_reset(&a);
		Tally__V1__Batch *ours = batch_unpack(&a, cases[i].b, cases[i].n);
		Tally__V1__Batch *got = tally_ledger_batch_decode(&a, cases[i].b, cases[i].n);
		Tally__V1__Batch *theirs =
			tally__v1__batch__unpack(tally_arena_protobuf(&a), cases[i].n, cases[i].b);
		if ((ours != NULL) != cases[i].read)
			fail_msg("%s: the codec %s it", cases[i].what, ours ? "read" : "left");
		if ((got == NULL) != (theirs == NULL))
			fail_msg("%s: decoded %s, protobuf-c %s", cases[i].what,
				 got ? "read it" : "refused it", theirs ? "read it" : "refused it");
		if (got != NULL)
			assert_batches_equal(got, theirs);
		if (ours != NULL)
			assert_batches_equal(ours, theirs);
	}
	tally_arena_free(&a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_random_accounts_encode_to_protobuf_c_bytes_and_back),
		cmocka_unit_test(test_random_entries_and_commands_encode_to_protobuf_c_bytes),
		cmocka_unit_test(test_the_schema_has_the_fields_the_codec_writes),
		cmocka_unit_test(test_unknown_fields_are_written_back_as_protobuf_c_does),
		cmocka_unit_test(test_other_encodings_are_read_as_protobuf_c_reads_them),
		cmocka_unit_test(test_the_empty_account_is_zero_bytes),
		cmocka_unit_test(test_bounded_writes_stay_in_bounds_and_give_the_size),
		cmocka_unit_test(test_random_batches_are_read_as_protobuf_c_reads_them),
		cmocka_unit_test(test_other_batch_encodings_are_left_to_protobuf_c),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
