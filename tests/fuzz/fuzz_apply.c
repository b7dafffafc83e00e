/*
 * Fuzz target: the state machine (tally_ledger_apply_bytes). One ledger lives for the
 * whole run, in a fresh directory. An input is either raw bytes handed to
 * apply_bytes as a raft entry (first byte even), or a recipe (first byte odd): each
 * following 8 bytes become one command — its kind, brand, member, points, a hold or
 * entry to act on — over a small world of 3 brands and 4 members, so that deep paths
 * (captures of real holds, reversals of real entries, transfers, expiry) are reached.
 * Every 256 inputs the invariants are checked in full (abort on a violation).
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ledger/arena.h"
#include "ledger/ledger.h"

#define FUZZ_CMDS_MAX 64
#define FUZZ_CHECK_EVERY 256

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tally_ledger *ledger;
static struct tally_arena arena;
static uint64_t raft_index;
static int64_t now_ms = 1767225600000; /* 2026-01-01 */
static unsigned inputs;

static const char *const brands[] = {"b0", "b1", "b2"};
static const char *const members[] = {"m0", "m1", "m2", "m3"};

static char dir[] = "/tmp/tally-fuzz-apply-XXXXXX";

static void fuzz_cleanup(void)
{
	tally_ledger_remove(dir);
	rmdir(dir);
}

static void fuzz_open(void)
{
	if (mkdtemp(dir) == NULL)
		abort();
	atexit(fuzz_cleanup);
	struct tally_ledger_options o = {.map_size_bytes = 1u << 30, .nosync = true, .writemap = true};
	if (tally_ledger_open(dir, &o, &ledger) != 0)
		abort();
	tally_arena_init(&arena, 64 << 10, 0);
}

/* One command from 8 recipe bytes; what is not a known kind is an Expire. */
static void fuzz_command(Tally__V1__Command *c, const uint8_t b[8], unsigned n,
			 Tally__V1__Principal *who)
{
	static char ids[FUZZ_CMDS_MAX][24];
	snprintf(ids[n], sizeof(ids[n]), "r%u-%02x%02x%02x", inputs, b[1], b[2], b[7]);
	tally__v1__command__init(c);
	c->request_id = ids[n];
	c->principal = who;
	const char *brand = brands[b[1] % 3], *member = members[b[2] % 4];
	int64_t points = 1 + (int64_t)(b[3] | b[4] << 8) % 5000;
	uint64_t ref = 1 + (uint64_t)(b[5] % 64);
	switch (b[0] % 10) {
	case 0: {
		Tally__V1__RegisterBrand *m = tally_arena_alloc(&arena, sizeof(*m));
		tally__v1__register_brand__init(m);
		m->id = (char *)brand, m->name = (char *)"Brand", m->currency = (char *)"EUR";
		m->point_value_micros = 1000, m->expiry_months = b[6] % 3;
		c->body_case = TALLY__V1__COMMAND__BODY_REGISTER_BRAND, c->register_brand = m;
		break;
	}
	case 1: {
		Tally__V1__OpenMember *m = tally_arena_alloc(&arena, sizeof(*m));
		tally__v1__open_member__init(m);
		m->id = (char *)member, m->segment = 1 + b[6] % 5;
		c->body_case = TALLY__V1__COMMAND__BODY_OPEN_MEMBER, c->open_member = m;
		break;
	}
	case 2:
	case 3: {
		Tally__V1__Accrue *m = tally_arena_alloc(&arena, sizeof(*m));
		tally__v1__accrue__init(m);
		m->brand = (char *)brand, m->member = (char *)member, m->points = points;
		c->body_case = TALLY__V1__COMMAND__BODY_ACCRUE, c->accrue = m;
		break;
	}
	case 4: {
		Tally__V1__Redeem *m = tally_arena_alloc(&arena, sizeof(*m));
		tally__v1__redeem__init(m);
		m->brand = (char *)brand, m->member = (char *)member, m->points = points;
		c->body_case = TALLY__V1__COMMAND__BODY_REDEEM, c->redeem = m;
		break;
	}
	case 5: {
		Tally__V1__Hold *m = tally_arena_alloc(&arena, sizeof(*m));
		tally__v1__hold__init(m);
		m->brand = (char *)brand, m->member = (char *)member, m->points = points;
		m->timeout_s = 1 + b[6] % 120;
		c->body_case = TALLY__V1__COMMAND__BODY_HOLD, c->hold = m;
		break;
	}
	case 6: {
		Tally__V1__Capture *m = tally_arena_alloc(&arena, sizeof(*m));
		tally__v1__capture__init(m);
		m->hold_id = ref, m->points = b[6] % 2 ? 0 : points;
		c->body_case = TALLY__V1__COMMAND__BODY_CAPTURE, c->capture = m;
		break;
	}
	case 7: {
		Tally__V1__Void *m = tally_arena_alloc(&arena, sizeof(*m));
		tally__v1__void__init(m);
		m->hold_id = ref;
		c->body_case = TALLY__V1__COMMAND__BODY_VOID, c->void_ = m;
		break;
	}
	case 8: {
		Tally__V1__Reverse *m = tally_arena_alloc(&arena, sizeof(*m));
		tally__v1__reverse__init(m);
		m->entry_seq = ref, m->points = b[6] % 2 ? 0 : points;
		c->body_case = TALLY__V1__COMMAND__BODY_REVERSE, c->reverse = m;
		break;
	}
	default:
		if ((b[7] & 7) == 2) { /* an eighth of it: the cluster's set_rules, 0..current */
			static char *all[] = {(char *)"*"};
			static Tally__V1__Principal sys = TALLY__V1__PRINCIPAL__INIT;
			sys.key_name = (char *)"tally-system", sys.role = TALLY__V1__ROLE__SYSTEM;
			sys.brands = all, sys.n_brands = 1;
			Tally__V1__SetRules *m = tally_arena_alloc(&arena, sizeof(*m));
			tally__v1__set_rules__init(m);
			m->version = b[6] % (TALLY_RULES_CURRENT + 1);
			c->principal = &sys;
			c->body_case = TALLY__V1__COMMAND__BODY_SET_RULES, c->set_rules = m;
			break;
		}
		if (b[7] & 1) { /* half of the 10th kind: an import, its expiry past or to come */
			Tally__V1__ImportPoints *m = tally_arena_alloc(&arena, sizeof(*m));
			tally__v1__import_points__init(m);
			m->brand = (char *)brand, m->member = (char *)member, m->points = points;
			m->expires_ms = b[6] % 4 == 0 ? 0 : now_ms + ((int64_t)b[6] - 64) * 60000;
			c->body_case = TALLY__V1__COMMAND__BODY_IMPORT_POINTS, c->import_points = m;
			break;
		}
		Tally__V1__Transfer *m = tally_arena_alloc(&arena, sizeof(*m));
		tally__v1__transfer__init(m);
		m->brand = (char *)brand, m->from_member = (char *)member;
		m->to_member = (char *)members[b[6] % 4], m->points = points;
		c->body_case = TALLY__V1__COMMAND__BODY_TRANSFER, c->transfer = m;
		break;
	}
}

/* A batch from a recipe, packed as raft would carry it. */
static uint8_t *fuzz_recipe(const uint8_t *data, size_t size, size_t *len)
{
	static Tally__V1__Command cmds[FUZZ_CMDS_MAX];
	static Tally__V1__Command *ptrs[FUZZ_CMDS_MAX];
	static char *scope[] = {(char *)"*"};
	static Tally__V1__Principal who = TALLY__V1__PRINCIPAL__INIT;
	who.key_name = (char *)"fuzz", who.role = TALLY__V1__ROLE__ADMIN;
	who.brands = scope, who.n_brands = 1;
	size_t n = 0;
	for (size_t at = 1; at + 8 <= size && n < FUZZ_CMDS_MAX; at += 8, n++) {
		fuzz_command(&cmds[n], data + at, (unsigned)n, &who);
		ptrs[n] = &cmds[n];
	}
	Tally__V1__Batch batch = TALLY__V1__BATCH__INIT;
	now_ms += (data[0] >> 1) * 1000; /* up to two minutes a batch: holds run out */
	batch.raft_index = raft_index;
	batch.raft_term = 1;
	batch.time_ms = now_ms;
	batch.commands = ptrs;
	batch.n_commands = n;
	*len = tally__v1__batch__get_packed_size(&batch);
	uint8_t *buf = tally_arena_alloc(&arena, *len + 1);
	tally__v1__batch__pack(&batch, buf);
	return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (ledger == NULL)
		fuzz_open();
	if (size == 0)
		return 0;
	tally_arena_reset(&arena);
	raft_index++;
	inputs++;
	const uint8_t *bytes = data + 1;
	size_t len = size - 1;
	if (data[0] & 1)
		bytes = fuzz_recipe(data, size, &len);
	Tally__V1__CommandResult **results = NULL;
	size_t n = 0;
	bool skipped = false;
	int rc = tally_ledger_apply_bytes(ledger, bytes, len, &arena, &results, &n, &skipped);
	if (rc != 0 && rc != TALLY_ECORRUPT)
		abort(); /* the ledger itself failed: not an input the fuzzer may cause */
	if (inputs % FUZZ_CHECK_EVERY == 0) {
		char msg[256];
		if (tally_ledger_check_invariants(ledger, msg, sizeof(msg)) != 0) {
			fprintf(stderr, "invariants: %s\n", msg);
			abort();
		}
	}
	return 0;
}
