/*
 * tally-audit's books: every account and every brand's totals rebuilt from the
 * journal's postings alone, entry by entry.
 *
 * Per account (brand, member): available and held (the sums of its postings per
 * bucket); earned, redeemed and expired (what the brand's ISSUANCE, REDEEMED and
 * EXPIRED accounts took or gave in the entries that moved this member's points in
 * that brand, when the entry moved exactly one member's points there).
 * Per brand: issued (−ISSUANCE), redeemed, expired, exchanged (CLEARING: points that
 * left for partner brands, net), adjusted (−ADJUSTMENT), and outstanding = the sum of
 * its members' available and held, which must equal issued − redeemed − expired −
 * exchanged + adjusted; liability = outstanding × the brand's point value.
 */
#ifndef TALLY_AUDIT_BOOKS_H
#define TALLY_AUDIT_BOOKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ledger/arena.h"
#include "rpc/checkpoint.h"

#define AUDIT_BRANDS_MAX 1024         /* brands one journal may register */
#define AUDIT_ENTRY_BRANDS_MAX 16     /* brands one entry may post to */

struct audit_account {
	const char *brand, *member;       /* in the books' string arena */
	uint32_t brand_index;             /* in audit_books.brands */
	uint64_t hash;                    /* of (brand, member), for the table */
	int64_t available, held;
	int64_t earned, redeemed, expired;
	uint64_t first_seq, last_seq;     /* the entries that first and last moved it */
	int64_t first_ms, last_earned_ms; /* ledger time of its first posting, last earning */
	uint64_t earn_events;
};

struct audit_brand {
	char id[40];
	char currency[8];
	int64_t point_value_micros;
	int64_t issued, redeemed, expired, exchanged, adjusted;
	int64_t outstanding;              /* audit_books_totals: its members' available + held */
};

/* A slot of the account table: the account's index + 1 (0: free) and the high half
 * of its hash, so that a probe rarely touches an account that is not the one. */
struct audit_slot {
	uint32_t index, tag;
};

struct audit_books {
	struct audit_account *accounts;
	size_t n_accounts, cap_accounts;
	struct audit_slot *slots;         /* open addressing, linear probing */
	const struct audit_account *last; /* the account the last member posting moved */
	size_t n_slots;
	struct audit_brand brands[AUDIT_BRANDS_MAX];
	size_t n_brands;
	uint64_t entries, postings;
	int64_t last_ms;
	struct tally_arena strings;       /* brand and member ids */
	struct tally_arena scratch;       /* one entry's decoding */
};

int audit_books_init(struct audit_books *b, char *err, size_t errcap);
void audit_books_free(struct audit_books *b);

/* Decodes one entry (its stored bytes, expected at seq): the entry (valid until the
 * next decode), or NULL with err naming it (bytes that do not decode, another seq, a
 * time that goes back). */
const Tally__V1__Entry *audit_books_decode(struct audit_books *b, uint64_t seq,
					   const uint8_t *bytes, size_t len, char *err,
					   size_t errcap);
/* Books a decoded entry: 0, or -1 with err naming the entry and the rule it breaks. */
int audit_books_apply(struct audit_books *b, const Tally__V1__Entry *e, char *err, size_t errcap);
/* Decodes and books one entry. */
int audit_books_entry(struct audit_books *b, uint64_t seq, const uint8_t *bytes, size_t len,
		      char *err, size_t errcap);

/* The account of (brand, member), or NULL. */
const struct audit_account *audit_books_account(const struct audit_books *b, const char *brand,
						const char *member);

/* Each brand's outstanding points from its accounts, checked against its totals:
 * 0, or -1 with err naming the brand. */
int audit_books_totals(struct audit_books *b, char *err, size_t errcap);

/* The verified summary (after audit_books_totals): entries, the last checkpoint, each brand's totals. */
void audit_books_report(const struct audit_books *b, const struct tally_checkpoint *last,
			size_t n_checkpoints, double secs, bool json, FILE *out);

/* Reads dir's journal in order, decoding each entry and booking it into b: before
 * booking, stop(ctx, e) may end the walk there (NULL: never); after, each(ctx, e)
 * (NULL: nothing) may fail it (non-zero). 0, or -1 with err naming the problem. */
int audit_walk(const char *dir, struct audit_books *b,
	       bool (*stop)(void *ctx, const Tally__V1__Entry *e),
	       int (*each)(void *ctx, const Tally__V1__Entry *e), void *ctx, char *err,
	       size_t errcap);

/* Room for one more of an array *p of *cap elements of `size` bytes holding n: 0, or
 * -1 when out of memory (the array is kept). */
int audit_grow(void **p, size_t *cap, size_t n, size_t size);

#endif
