/*
 * tally-audit — an auditor's copy of the journal, and what can be proved from it.
 *
 * The directory (README "Auditing" is the contract, readable without Tally's code):
 *
 *   DIR/journal/<first seq, 16 digits>.journal
 *       records `uint32 big-endian length ‖ entry bytes`, in sequence order; file k
 *       holds seqs k·AUDIT_FILE_ENTRIES + 1 .. (k+1)·AUDIT_FILE_ENTRIES; the bytes are
 *       exactly the ledger's (Merkle leaf = SHA-256(0x00 ‖ bytes))
 *   DIR/checkpoints/<tree_size>.json
 *       signed checkpoints (rpc/checkpoint.h)
 */
#ifndef TALLY_AUDIT_H
#define TALLY_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "rpc/checkpoint.h"
#include "rpc/connect.h"
#include "rpc/units.h"

#define AUDIT_FILE_ENTRIES 65536u        /* entries per journal file */
#define AUDIT_ENTRY_BYTES_MAX (4u << 20) /* a record longer than this is corrupt */
#define AUDIT_PATH_BYTES 4096
#define AUDIT_PAGE_ENTRIES 1000u         /* entries per ListEntries request */
#define AUDIT_CHECKPOINTS_MAX 4096       /* checkpoint files verify reads */

/* Exit statuses. */
#define AUDIT_EXIT_OK 0
#define AUDIT_EXIT_FAILED 1      /* verification found a problem (named on stderr) */
#define AUDIT_EXIT_USAGE 2
#define AUDIT_EXIT_UNAVAILABLE 3 /* the cluster did not answer (pull) */

/* main.c: a progress bar on stderr when it is a terminal (at most 10 updates/s);
 * total 0 = unknown. audit_progress_done ends the line. */
void audit_progress(const char *what, uint64_t done, uint64_t total);
void audit_progress_done(void);
/* progress.c: the monotonic clock in seconds, for the rates the commands report. */
double audit_now_s(void);

/* ---- journal.c: the journal files -------------------------------------------------- */

struct audit_writer {
	char dir[AUDIT_PATH_BYTES];   /* DIR/journal */
	FILE *f;                      /* the file being appended to */
	uint64_t next_seq;            /* the seq the next record gets */
};

/* Opens DIR/journal for appending (created if needed): the last file's records are
 * counted, a torn last record is cut off, next_seq set after the last whole one. */
int audit_writer_open(const char *dir, struct audit_writer *w, char *err, size_t errcap);
int audit_writer_append(struct audit_writer *w, const void *bytes, size_t len, char *err,
			size_t errcap);
/* Flushes and fsyncs, then closes. */
int audit_writer_close(struct audit_writer *w, char *err, size_t errcap);

struct audit_reader {
	char dir[AUDIT_PATH_BYTES];
	uint8_t *map;                 /* the current file, mapped */
	size_t map_len, at;
	uint64_t file_first;          /* the first seq of the current file (0: none yet) */
	uint64_t next_seq;            /* the seq of the next record */
	uint64_t last_first;          /* the first seq of the last file (0: no files) */
};

/* Opens DIR/journal for reading. */
int audit_reader_open(const char *dir, struct audit_reader *r, char *err, size_t errcap);
/* The next record: 1 with its seq and bytes (valid until the next call), 0 at the
 * end, -1 with err naming the file and offset (a missing file, a torn record). */
int audit_reader_next(struct audit_reader *r, uint64_t *seq, const uint8_t **bytes,
		      size_t *len, char *err, size_t errcap);
void audit_reader_close(struct audit_reader *r);

/* ---- checkpoints.c ------------------------------------------------------------------- */

struct audit_checkpoint {
	struct tally_checkpoint c;
	struct tally_checkpoint_proof p;
	char file[64];                /* "checkpoints/<n>.json" */
};

/* Every checkpoint file in DIR, in order of tree size (*out malloc'd). */
int audit_checkpoints_load(const char *dir, struct audit_checkpoint **out, size_t *n,
			   char *err, size_t errcap);
/* The tree size of the largest checkpoint in DIR (0: none). */
uint64_t audit_checkpoint_last(const char *dir);
/* Writes DIR/checkpoints/<tree_size>.json (through a temporary file and a rename),
 * unless DIR has one of that size: that one is kept, its proof links it to the one
 * before. */
int audit_checkpoint_save(const char *dir, const struct tally_checkpoint *c,
			  const struct tally_checkpoint_proof *p, char *err, size_t errcap);

/* ---- tree.c: the journal's whole Merkle tree in memory (proofs from DIR alone) ----- */

struct audit_tree {
	uint8_t (*level[TALLY_MERKLE_LEVELS_MAX])[TALLY_HASH_BYTES];
	size_t cap[TALLY_MERKLE_LEVELS_MAX], n[TALLY_MERKLE_LEVELS_MAX];
	struct tally_merkle_frontier frontier;
};

void audit_tree_init(struct audit_tree *t);
void audit_tree_free(struct audit_tree *t);
int audit_tree_append(struct audit_tree *t, const void *bytes, size_t len);
/* The inclusion proof of entry seq in the tree of the first `size` entries. */
int audit_tree_proof(struct audit_tree *t, uint64_t seq, uint64_t size,
		     uint8_t path[][TALLY_HASH_BYTES], size_t *n);
int audit_tree_root(struct audit_tree *t, uint64_t size, uint8_t root[TALLY_HASH_BYTES]);

/* ---- the commands -------------------------------------------------------------------- */

struct audit_opts {
	const char *dir;
	const char *out;              /* pull: the directory; replay: the new ledger */
	const char *keys;             /* verify: the pinned checkpoint keys */
	bool json;
	bool stale;                   /* pull: from the node connected to, without a barrier */
	const char *brand, *member;   /* balance */
	const char *at;               /* balance: SEQ or an RFC 3339 time */
	uint64_t settlement;          /* statement */
	bool csv;                     /* statement */
	const char *checkpoint;       /* check-statement: the checkpoint file to check against */
	const char *png;              /* layering: the heat map */
	int64_t new_days, mature_days, lapse_days;      /* layering: maturity thresholds */
	int64_t active_days, occasional_days;           /* layering: activity windows */
	struct tally_connect conn;    /* pull */
};

int audit_pull(const struct audit_opts *o);
int audit_verify(const struct audit_opts *o);
int audit_balance(const struct audit_opts *o);
int audit_statement(const struct audit_opts *o);
int audit_check_statement(const struct audit_opts *o);
int audit_layering(const struct audit_opts *o);
int audit_replay(const struct audit_opts *o);

/* main.c: --at as a sequence number (digits only) into *seq, or an RFC 3339 time into
 * *time_ms; the other is left 0. 0, or -1 when it is neither. */
int audit_parse_at(const char *s, uint64_t *seq, int64_t *time_ms);

#endif
