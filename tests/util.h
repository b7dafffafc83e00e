/*
 * Test helpers: a ledger in a fresh temporary directory, principals, command
 * builders and one-call apply. Everything built lives in the fixture's arena.
 */
#ifndef TALLY_TESTS_UTIL_H
#define TALLY_TESTS_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "ledger/ledger.h"

#define DAY_MS 86400000LL
#define T0_MS 1767225600000LL /* 2026-01-01T00:00:00Z */

struct fx {
	struct tally_ledger *l;
	char dir[256];
	struct tally_arena build;   /* commands, principals */
	struct tally_arena results; /* results of the last apply */
	uint64_t index;             /* raft index of the last batch */
	int64_t now_ms;             /* time of the next batch */
	unsigned req;               /* request id counter */
};

/* Gives raft a heap that zero-fills what it allocates (true), or its own (false): raft
 * 0.15 writes bytes it never initialised, which valgrind would report (util.c). */
void fx_raft_heap_zeroed(bool zeroed);

/* The fixture's journal segments close at this size (the ledger's default is 64 MiB). */
#define FX_JOURNAL_SEGMENT_BYTES (64u << 10)

void fx_open(struct fx *f);
void fx_open_in(struct fx *f, const char *dir);
void fx_close(struct fx *f);
/* Opens the fixture's ledger (f->l NULL before) with the fixture's options; returns
 * tally_ledger_open's result. */
int fx_ledger_open(struct fx *f);
/* Closes the fixture's ledger only (its directory stays). */
void fx_ledger_close(struct fx *f);
void fx_remove_dir(const char *dir);
char *fx_tmpdir(void);
/* A snapshot of the fixture's ledger (tally_ledger_snapshot into a file of a fresh
 * directory, read back), in a new buffer of *len bytes. */
uint8_t *fx_snapshot(struct fx *f, size_t *len);

Tally__V1__Principal *who(struct fx *f, Tally__V1__Role role, const char *key, const char *brands);
Tally__V1__Principal *admin(struct fx *f);

/* A command with a fresh request id (or `req` when not NULL). */
Tally__V1__Command *cmd_new(struct fx *f, const Tally__V1__Principal *p, const char *req);

Tally__V1__Command *c_brand(struct fx *f, const Tally__V1__Principal *p, const char *id,
			    uint32_t expiry_months);
/* UpdateBrand changing only expiry_months (applies to lots created from now on). */
Tally__V1__Command *c_brand_expiry(struct fx *f, const char *id, uint32_t months);
Tally__V1__Command *c_member(struct fx *f, const Tally__V1__Principal *p, const char *id);
Tally__V1__Command *c_accrue(struct fx *f, const Tally__V1__Principal *p, const char *brand,
			     const char *member, int64_t points);
Tally__V1__Command *c_redeem(struct fx *f, const Tally__V1__Principal *p, const char *brand,
			     const char *member, int64_t points);
Tally__V1__Command *c_hold(struct fx *f, const Tally__V1__Principal *p, const char *brand,
			   const char *member, int64_t points, uint32_t timeout_s);
Tally__V1__Command *c_capture(struct fx *f, const Tally__V1__Principal *p, uint64_t hold,
			      int64_t points);
Tally__V1__Command *c_void(struct fx *f, const Tally__V1__Principal *p, uint64_t hold);
Tally__V1__Command *c_reverse(struct fx *f, const Tally__V1__Principal *p, uint64_t seq,
			      int64_t points);
Tally__V1__Command *c_transfer(struct fx *f, const Tally__V1__Principal *p, const char *brand,
			       const char *from, const char *to, int64_t points);
Tally__V1__Command *c_agreement(struct fx *f, const Tally__V1__Principal *p, const char *from,
				const char *to, int64_t num, int64_t den);
Tally__V1__Command *c_exchange(struct fx *f, const Tally__V1__Principal *p, const char *from,
			       const char *to, const char *member, int64_t points);
Tally__V1__Command *c_settle(struct fx *f, const Tally__V1__Principal *p, const char *a,
			     const char *b, int64_t until_ms);
Tally__V1__Command *c_confirm(struct fx *f, const Tally__V1__Principal *p, uint64_t id);
Tally__V1__Command *c_adjust(struct fx *f, const Tally__V1__Principal *p, const char *brand,
			     const char *member, int64_t points, const char *reason);
Tally__V1__Command *c_expire(struct fx *f, const Tally__V1__Principal *p);
/* Writes meta record `name` (e.g. "version", "rules") of the closed ledger in dir; a
 * NULL value deletes it. For tests of ledgers that older formats wrote. */
void meta_poke(const char *dir, const char *name, const void *value, size_t n);

/* The cluster's own set_rules (role SYSTEM). */
Tally__V1__Command *c_set_rules(struct fx *f, uint32_t version);
Tally__V1__Command *c_import(struct fx *f, const Tally__V1__Principal *p, const char *brand,
			     const char *member, int64_t points, int64_t expires_ms);

/* Applies the commands as one batch at f->now_ms; results valid until the next apply. */
Tally__V1__CommandResult **apply_n(struct fx *f, Tally__V1__Command **cmds, size_t n);
Tally__V1__CommandResult *apply1(struct fx *f, Tally__V1__Command *c);
/* apply1 and assert the code. */
Tally__V1__CommandResult *expect(struct fx *f, Tally__V1__Command *c, Tally__V1__ResultCode code);
#define ok(f, c) expect((f), (c), TALLY__V1__RESULT_CODE__OK)

/* A brand "b" (or id) with `expiry_months`, and open members. */
void setup_brand(struct fx *f, const char *id, uint32_t expiry_months);
void setup_members(struct fx *f, const char *const *ids, size_t n);

Tally__V1__Account *account(struct fx *f, const char *brand, const char *member);
int64_t available(struct fx *f, const char *brand, const char *member);
void assert_invariants(struct fx *f);
/* Journal entry seq of l as stored (its bytes and raft index) read by `who`; NULL if
 * the query fails or is refused. */
Tally__V1__StoredEntry *stored_entry_at(struct tally_ledger *l, const Tally__V1__Principal *who,
					struct tally_arena *arena, uint64_t seq);
Tally__V1__Entry *entry_at(struct fx *f, uint64_t seq);
bool quick_mode(void);

/* Allocations in the fixture's build arena (never NULL). */
void *zalloc(struct fx *f, size_t n);
char *sdup(struct fx *f, const char *s);

/* What a command may change, to prove that a rejection changed nothing. */
struct snap {
	uint8_t state[32];
	uint8_t root[32];
	uint64_t size;
};
struct snap snap_take(struct fx *f);

/* Answers q for p from the fixture's ledger (the result lives in the build arena). */
Tally__V1__QueryResult *query(struct fx *f, Tally__V1__Query *q, const Tally__V1__Principal *p);
bool snap_equal(const struct snap *a, const struct snap *b);
void assert_snap_equal(const struct snap *a, const struct snap *b);

#endif
