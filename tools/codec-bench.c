/*
 * codec-bench — what the apply path's two records cost to write, and the account to
 * read: an accrual's journal entry and an account with lots, each sized and written as
 * the ledger does for every command, by ledger/codec.c in one pass into a buffer
 * (codec_pack) and by protobuf-c's generic writer (its size, then its bytes), which must
 * give the same bytes; and the account read back by each (account_unpack, and
 * protobuf-c's unpack), as the ledger reads it for every command.
 *
 *   codec-bench [--rounds R] [--count N] [--lots L]
 *
 * Prints, per record and codec, the nanoseconds per size and write (or per read) of each
 * of R rounds (default 5) of N (default 2,000,000). The account has L lots (default 5,
 * about what make bench-ledger leaves; a busy member's account holds 256 and more). One
 * core, nothing else measured.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ledger/internal.h"
#include "tools/bench.h"

#define LOTS_DEFAULT 5          /* an account's lots: about what make bench-ledger leaves */
#define LOTS_MAX 1458           /* the most the bounded lots leave an account (README) */
#define RECORD_BYTES_MAX 65536  /* LOTS_MAX lots at their longest fit */

/* m's size, and its bytes in out when they fit in cap. */
typedef size_t (*pack_fn)(const void *m, uint8_t *out, size_t cap);

static size_t pc_pack(const void *m, uint8_t *out, size_t cap)
{
	size_t n = protobuf_c_message_get_packed_size(m);
	return n <= cap ? protobuf_c_message_pack(m, out) : n;
}

/* ns per size and write of m, for each round; the bytes are checked against protobuf-c's. */
static void run(const char *what, const void *m, pack_fn pack, int rounds, long count)
{
	static uint8_t got[RECORD_BYTES_MAX], want[RECORD_BYTES_MAX];
	size_t n = protobuf_c_message_pack(m, want);
	if (n > RECORD_BYTES_MAX || pack(m, got, RECORD_BYTES_MAX) != n || memcmp(got, want, n) != 0) {
		fprintf(stderr, "codec-bench: %s: not protobuf-c's bytes\n", what);
		exit(1);
	}
	printf("%-32s", what);
	size_t sink = 0;
	for (int r = 0; r < rounds; r++) {
		double t0 = bench_now_s();
		for (long i = 0; i < count; i++)
			sink += pack(m, got, RECORD_BYTES_MAX);
		printf(" %6.1f", (bench_now_s() - t0) / (double)count * 1e9);
	}
	printf(" ns (%zu bytes)%s\n", n, sink == 0 ? " " : "");
}

/* m's bytes; nonzero when they were read back. */
typedef size_t (*read_fn)(struct tally_arena *arena, const uint8_t *b, size_t n);

static size_t codec_read(struct tally_arena *arena, const uint8_t *b, size_t n)
{
	Tally__V1__Account *acct = account_unpack(arena, b, n);
	return acct != NULL ? acct->n_lots + 1 : 0;
}

static size_t pc_read(struct tally_arena *arena, const uint8_t *b, size_t n)
{
	Tally__V1__Account *acct = tally__v1__account__unpack(tally_arena_protobuf(arena), n, b);
	return acct != NULL ? acct->n_lots + 1 : 0;
}

/* ns per read of m's bytes, for each round; each read into an arena emptied first. */
static void run_read(const char *what, const void *m, read_fn read, int rounds, long count)
{
	static uint8_t b[RECORD_BYTES_MAX];
	size_t n = protobuf_c_message_pack(m, b);
	struct tally_arena arena;
	tally_arena_init(&arena, 1 << 16, 0);
	printf("%-32s", what);
	size_t sink = 0;
	for (int r = 0; r < rounds; r++) {
		double t0 = bench_now_s();
		for (long i = 0; i < count; i++) {
			tally_arena_reset(&arena);
			size_t got = read(&arena, b, n);
			if (got == 0) {
				fprintf(stderr, "codec-bench: %s: not read\n", what);
				exit(1);
			}
			sink += got;
		}
		printf(" %6.1f", (bench_now_s() - t0) / (double)count * 1e9);
	}
	printf(" ns (%zu bytes)%s\n", n, sink == 0 ? " " : "");
	tally_arena_free(&arena);
}

static void parse(int argc, char **argv, int *rounds, long *count, long *n_lots)
{
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
			*rounds = atoi(argv[++i]);
		else if (strcmp(argv[i], "--count") == 0 && i + 1 < argc)
			*count = atol(argv[++i]);
		else if (strcmp(argv[i], "--lots") == 0 && i + 1 < argc &&
			 (*n_lots = atol(argv[i + 1])) >= 0 && *n_lots <= LOTS_MAX)
			i++;
		else {
			fprintf(stderr, "usage: codec-bench [--rounds R] [--count N] [--lots 0..%d]\n",
				LOTS_MAX);
			exit(2);
		}
	}
}

/* An accrual's journal entry as the ledger writes it, and everything it points to. */
struct sample_entry {
	char *brands[1];
	Tally__V1__Principal p;
	Tally__V1__Accrue ac;
	Tally__V1__Command c;
	Tally__V1__CommandResult r;
	Tally__V1__Posting p1, p2, *postings[2];
	Tally__V1__LotMove lm, *moves[1];
	Tally__V1__Entry e;
};

static void sample_entry(struct sample_entry *s)
{
	s->brands[0] = (char *)"*";
	s->p = (Tally__V1__Principal)TALLY__V1__PRINCIPAL__INIT;
	s->p.key_name = (char *)"mall";
	s->p.role = TALLY__V1__ROLE__MALL;
	s->p.brands = s->brands;
	s->p.n_brands = 1;
	s->ac = (Tally__V1__Accrue)TALLY__V1__ACCRUE__INIT;
	s->ac.brand = (char *)"aurora";
	s->ac.member = (char *)"m0012345";
	s->ac.points = 517;
	s->ac.reason = (char *)"purchase";
	s->c = (Tally__V1__Command)TALLY__V1__COMMAND__INIT;
	s->c.request_id = (char *)"op-123456";
	s->c.principal = &s->p;
	s->c.body_case = TALLY__V1__COMMAND__BODY_ACCRUE;
	s->c.accrue = &s->ac;
	s->r = (Tally__V1__CommandResult)TALLY__V1__COMMAND_RESULT__INIT;
	s->r.entry_seq = 1234567;
	s->r.points = 517;
	s->r.available = 12345;
	s->p1 = (Tally__V1__Posting)TALLY__V1__POSTING__INIT;
	s->p2 = (Tally__V1__Posting)TALLY__V1__POSTING__INIT;
	s->p1.brand = s->p2.brand = (char *)"aurora";
	s->p1.member = (char *)"m0012345";
	s->p1.bucket = TALLY__V1__BUCKET__AVAILABLE;
	s->p1.points = 517;
	s->p2.account = TALLY__V1__SYSTEM_ACCOUNT__ISSUANCE;
	s->p2.points = -517;
	s->postings[0] = &s->p1;
	s->postings[1] = &s->p2;
	s->lm = (Tally__V1__LotMove)TALLY__V1__LOT_MOVE__INIT;
	s->lm.expiry_ms = 1790000000000;
	s->lm.points = 517;
	s->moves[0] = &s->lm;
	s->e = (Tally__V1__Entry)TALLY__V1__ENTRY__INIT;
	s->e.seq = 1234567;
	s->e.time_ms = 1764000000000;
	s->e.kind = TALLY__V1__ENTRY_KIND__COMMAND;
	s->e.command = &s->c;
	s->e.result = &s->r;
	s->e.postings = s->postings;
	s->e.n_postings = 2;
	s->e.lots = s->moves;
	s->e.n_lots = 1;
	s->e.brand = (char *)"aurora";
	s->e.member = (char *)"m0012345";
}

/* A member's account with n_lots lots, a day apart. */
static void sample_account(Tally__V1__Account *a, long n_lots)
{
	static Tally__V1__Lot lots[LOTS_MAX], *lot_ptrs[LOTS_MAX];
	for (int i = 0; i < n_lots; i++) {
		tally__v1__lot__init(&lots[i]);
		lots[i].expiry_ms = 1790000000000 + i * 86400000LL;
		lots[i].points = 100 + i;
		lot_ptrs[i] = &lots[i];
	}
	*a = (Tally__V1__Account)TALLY__V1__ACCOUNT__INIT;
	a->brand = (char *)"aurora";
	a->member = (char *)"m0012345";
	a->available = 12345;
	a->earned = 20000;
	a->redeemed = 7655;
	a->tier = (char *)"gold";
	a->updated_ms = 1764000000000;
	a->lots = lot_ptrs;
	a->n_lots = (size_t)n_lots;
	a->lot_index_ms = 1790000000000;
}

int main(int argc, char **argv)
{
	int rounds = 5;
	long count = 2000000;
	long n_lots = LOTS_DEFAULT;
	parse(argc, argv, &rounds, &count, &n_lots);
	static struct sample_entry e;
	sample_entry(&e);
	Tally__V1__Account a;
	sample_account(&a, n_lots);
	run("entry, ledger/codec.c", &e.e, codec_pack, rounds, count);
	run("entry, protobuf-c", &e.e, pc_pack, rounds, count);
	char what[4][64];
	snprintf(what[0], sizeof(what[0]), "account (%ld lots), ledger/codec.c", n_lots);
	snprintf(what[1], sizeof(what[1]), "account (%ld lots), protobuf-c", n_lots);
	snprintf(what[2], sizeof(what[2]), "account read, ledger/codec.c");
	snprintf(what[3], sizeof(what[3]), "account read, protobuf-c");
	run(what[0], &a, codec_pack, rounds, count);
	run(what[1], &a, pc_pack, rounds, count);
	run_read(what[2], &a, codec_read, rounds, count);
	run_read(what[3], &a, pc_read, rounds, count);
	return 0;
}
