/*
 * tally-audit's settlement statements: what statement writes and check-statement
 * reads back (README "Auditing" describes the file).
 */
#ifndef TALLY_AUDIT_STATEMENT_H
#define TALLY_AUDIT_STATEMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STATEMENT_FORMAT "tally-statement v1"

/* One obligation the settlement settled: an exchange entry. */
struct audit_statement_line {
	uint64_t seq;                 /* the exchange entry */
	int64_t time_ms;
	char member[72];
	char payer[40], payee[40];    /* from_brand pays to_brand */
	int64_t points;               /* source points the member gave */
	int64_t converted_points;     /* destination points the member got */
	int64_t price_micros;         /* per destination point, the agreement's */
	int64_t amount_micros;        /* converted_points × price_micros */
	uint64_t agreement_seq;       /* the agreement entry in force */
};

struct audit_statement {
	uint64_t settlement;          /* the settle entry */
	int64_t time_ms;
	char brand_a[40], brand_b[40];
	int64_t until_ms;
	uint64_t confirmed_seq;       /* the payee's confirmation entry, 0 if none */
	char currency[8];             /* the payee brand's */
	struct audit_statement_line *lines;
	size_t n, cap;
	int64_t gross_a_to_b, gross_b_to_a, net; /* micros */
	char payer[40], payee[40];    /* "" when net is 0 */
};

int audit_statement_add(struct audit_statement *st, const struct audit_statement_line *l);
void audit_statement_totals(struct audit_statement *st);
void audit_statement_free(struct audit_statement *st);
/* A table for people, or CSV (one row per line, then the totals). */
int audit_statement_write_table(const struct audit_statement *st, bool csv);
/* JSON with the evidence and its proofs in the tree of dir's last checkpoint. */
int audit_statement_write_json(const struct audit_statement *st, const char *dir, char *err, size_t errcap);

struct tally_checkpoint;
/* checkstatement.c: a statement's text (cut up in place) checked against checkpoint c
 * (whose signature and key the caller checked): every cited entry in its tree, every
 * line and total recomputed. 0 with *summary (no lines), or -1 with err naming the
 * first difference. check-statement and its fuzz target. */
int audit_statement_verify(char *text, const struct tally_checkpoint *c,
			   struct audit_statement *summary, char *err, size_t errcap);

#endif
