/*
 * codec-bench — what writing the apply path's two records costs: an accrual's journal
 * entry and an account with lots, each sized and written as the ledger does for every
 * command: by ledger/codec.c in one pass into a buffer (codec_pack), and by protobuf-c's
 * generic writer (its size, then its bytes), which must give the same bytes.
 *
 *   codec-bench [--rounds R] [--count N]
 *
 * Prints, per record and writer, the nanoseconds per size and write of each of R rounds
 * (default 5) of N writes (default 2,000,000). One core, nothing else measured.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ledger/internal.h"

#define LOTS 5               /* an account's lots: about what make bench-ledger leaves */
#define RECORD_BYTES_MAX 4096 /* both records are far below */

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

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
		double t0 = now_s();
		for (long i = 0; i < count; i++)
			sink += pack(m, got, RECORD_BYTES_MAX);
		printf(" %6.1f", (now_s() - t0) / (double)count * 1e9);
	}
	printf(" ns (%zu bytes)%s\n", n, sink == 0 ? " " : "");
}

int main(int argc, char **argv)
{
	int rounds = 5;
	long count = 2000000;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
			rounds = atoi(argv[++i]);
		else if (strcmp(argv[i], "--count") == 0 && i + 1 < argc)
			count = atol(argv[++i]);
		else {
			fprintf(stderr, "usage: codec-bench [--rounds R] [--count N]\n");
			return 2;
		}
	}
	char *brands[1] = {(char *)"*"};
	Tally__V1__Principal p = TALLY__V1__PRINCIPAL__INIT;
	p.key_name = (char *)"mall";
	p.role = TALLY__V1__ROLE__MALL;
	p.brands = brands;
	p.n_brands = 1;
	Tally__V1__Accrue ac = TALLY__V1__ACCRUE__INIT;
	ac.brand = (char *)"aurora";
	ac.member = (char *)"m0012345";
	ac.points = 517;
	ac.reason = (char *)"purchase";
	Tally__V1__Command c = TALLY__V1__COMMAND__INIT;
	c.request_id = (char *)"op-123456";
	c.principal = &p;
	c.body_case = TALLY__V1__COMMAND__BODY_ACCRUE;
	c.accrue = &ac;
	Tally__V1__CommandResult r = TALLY__V1__COMMAND_RESULT__INIT;
	r.entry_seq = 1234567;
	r.points = 517;
	r.available = 12345;
	Tally__V1__Posting p1 = TALLY__V1__POSTING__INIT, p2 = TALLY__V1__POSTING__INIT;
	p1.brand = p2.brand = (char *)"aurora";
	p1.member = (char *)"m0012345";
	p1.bucket = TALLY__V1__BUCKET__AVAILABLE;
	p1.points = 517;
	p2.account = TALLY__V1__SYSTEM_ACCOUNT__ISSUANCE;
	p2.points = -517;
	Tally__V1__Posting *postings[2] = {&p1, &p2};
	Tally__V1__LotMove lm = TALLY__V1__LOT_MOVE__INIT;
	lm.expiry_ms = 1790000000000;
	lm.points = 517;
	Tally__V1__LotMove *moves[1] = {&lm};
	Tally__V1__Entry e = TALLY__V1__ENTRY__INIT;
	e.seq = 1234567;
	e.time_ms = 1764000000000;
	e.kind = TALLY__V1__ENTRY_KIND__COMMAND;
	e.command = &c;
	e.result = &r;
	e.postings = postings;
	e.n_postings = 2;
	e.lots = moves;
	e.n_lots = 1;
	e.brand = (char *)"aurora";
	e.member = (char *)"m0012345";

	Tally__V1__Lot lots[LOTS], *lot_ptrs[LOTS];
	for (int i = 0; i < LOTS; i++) {
		tally__v1__lot__init(&lots[i]);
		lots[i].expiry_ms = 1790000000000 + i * 86400000LL;
		lots[i].points = 100 + i;
		lot_ptrs[i] = &lots[i];
	}
	Tally__V1__Account a = TALLY__V1__ACCOUNT__INIT;
	a.brand = (char *)"aurora";
	a.member = (char *)"m0012345";
	a.available = 12345;
	a.earned = 20000;
	a.redeemed = 7655;
	a.tier = (char *)"gold";
	a.updated_ms = 1764000000000;
	a.lots = lot_ptrs;
	a.n_lots = LOTS;
	a.lot_index_ms = 1790000000000;

	run("entry, ledger/codec.c", &e, codec_pack, rounds, count);
	run("entry, protobuf-c", &e, pc_pack, rounds, count);
	run("account (5 lots), ledger/codec.c", &a, codec_pack, rounds, count);
	run("account (5 lots), protobuf-c", &a, pc_pack, rounds, count);
	return 0;
}
