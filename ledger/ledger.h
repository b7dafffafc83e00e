/*
 * ledger — Tally's deterministic points state machine on LMDB.
 *
 * The ledger is a pure function of (state, batch): it never reads a clock, draws a
 * random number, uses floating point or iterates an unordered container. Every
 * replica and every auditor that applies the same batches reaches the same records,
 * the same journal, the same Merkle root and the same state digest.
 *
 * Lifecycle: tally_ledger_open → tally_ledger_apply_batch / queries (any number)
 * → tally_ledger_close. A ledger handle is used by one writer thread; queries may run
 * on other threads (each opens its own LMDB read transaction).
 *
 * ---------------------------------------------------------------------------------
 * Authorization matrix (enforced inside apply, so every replica agrees)
 * ---------------------------------------------------------------------------------
 * A principal has a role and a brand scope ("*" = every brand). A command is allowed
 * when the role has a mark in its row AND every brand the command touches is in scope
 * (the column "scope" says which brands those are).
 *
 *   command              admin mall comm dealer partner auditor system  scope
 *   register_brand         x                                              the new brand
 *   update_brand           x                                              the brand
 *   open_member            x     x    x    x      x                       (members are global)
 *   update_member          x     x    x    x      x                       * only (members are shared)
 *   accrue                 x          x    x      x                       the brand
 *   redeem                 x     x                                        the brand
 *   hold                   x     x                                        the brand
 *   capture                x     x                                        the hold's brand
 *   void                   x     x                                        the hold's brand
 *   reverse (redemption)   x     x                                        the entry's brand
 *   reverse (accrual)      x          x    x      x                       the entry's brand
 *   transfer               x     x    x                                   the brand
 *   set_agreement          x                                              both brands
 *   exchange               x                      x                       either brand (admin: both)
 *   settle                 x                      x                       either brand (admin: both)
 *   confirm_settlement     x                      x                       the payee brand
 *   adjust                 x                                              the brand
 *   import_points          x                                              the brand
 *   expire                 x                           x                  (none)
 *   set_rules                                             x                  (none)
 *   queries                x     x    x    x      x       x       x       the brand asked about (1)
 *
 * (1) GetDigest and GetConsistency are about the whole journal, every brand's: scope *
 * only. GetMember answers a brand-scoped key only for a member with an account in one
 * of its brands (UNKNOWN_MEMBER otherwise, as if there were none).
 *
 * Members: a member is one person across brands; the record (id, segment, joined) is
 * shared. Any writer may open a member; changing one (update_member) needs a key of
 * scope *, so that no brand's key changes what another brand sees.
 *
 * "comm" is the community role; its accruals count against the brand's
 * community_daily_cap_points. A reverse is allowed to the roles that may perform the
 * original command (redemption = redeem or capture; accrual = accrue). Exchange and
 * settle by a partner need one of the two brands in scope, because the agreement
 * written by an admin of the source brand is that brand's consent.
 *
 * The operator role (cluster operators) may run no command and no query: it runs
 * the cluster (rpc/server.c: membership add/assign/remove, leadership transfer, node
 * addresses in STATUS), as may an admin of scope "*"; a brand-scoped admin may not.
 * STATUS without those addresses is open to every role.
 *
 * ---------------------------------------------------------------------------------
 * Limits
 * ---------------------------------------------------------------------------------
 */
#ifndef TALLY_LEDGER_H
#define TALLY_LEDGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ledger/arena.h"
#include "ledger/error.h"
#include "proto/tally.pb-c.h"

#define TALLY_POINTS_MAX 1000000000000LL      /* per command */
#define TALLY_BALANCE_MAX 4000000000000000000LL /* any account, any counter */
#define TALLY_IMPORT_EXPIRY_MAX_MS 253402300799999LL /* 9999-12-31T23:59:59.999Z */
#define TALLY_REQUEST_ID_BYTES_MAX 64
#define TALLY_KEY_NAME_BYTES_MAX 64
#define TALLY_BRAND_ID_BYTES_MAX 32
#define TALLY_MEMBER_ID_BYTES_MAX 64
#define TALLY_TEXT_BYTES_MAX 128              /* names, reasons, references */
#define TALLY_TIERS_MAX 16
#define TALLY_SCOPE_BRANDS_MAX 64
#define TALLY_BATCH_COMMANDS_MAX 8192
#define TALLY_ENTRIES_PAGE_MAX 10000
#define TALLY_ENTRIES_SCAN_MAX 100000         /* entries one brand-filtered page examines */
#define TALLY_ACCOUNTS_QUERY_MAX 8192
#define TALLY_EXPIRY_MONTHS_MAX 1200
#define TALLY_TIER_WINDOW_DAYS_MAX 3650
#define TALLY_HOLD_TIMEOUT_S_DEFAULT 900
#define TALLY_HOLD_TIMEOUT_S_MAX 31536000
#define TALLY_EXPIRE_ITEMS_DEFAULT 10000
/* Holds past their timeout that one batch releases (oldest timeout first) before its
 * commands run; the rest wait for later batches, and the expire command reports
 * `more` while any is left so the leader's timer drains a backlog at once. */
#define TALLY_HOLD_RELEASES_PER_BATCH_MAX 1000
/* Lots an account keeps at their exact expiry. Points that would start one more lot
 * go to a lot expiring at the end of their expiry's month (UTC) instead: never sooner
 * than their own expiry, at most a month later. An account's lots are thereby at most
 * this many plus one per month-end a lot may expire at (TALLY_EXPIRY_MONTHS_MAX + 1
 * ahead of the batch, as imports are held to the same horizon) plus the lot that never
 * expires, so a busy member is never refused for the count of its lots. */
#define TALLY_ACCOUNT_LOTS_EXACT_MAX 256
/* Rules: what a command does where versions of Tally differ. A ledger follows rules 1
 * until its journal's first set_rules entry (SetRules), and every replica, and every
 * replay of the journal, switches at that entry; the rules are the ledger's, not the
 * binary's. A binary applies the versions up to TALLY_RULES_CURRENT and stops at a
 * set_rules entry naming a later one (TALLY_EVERSION).
 *   1  a lot per exact expiry: an account holding TALLY_ACCOUNT_LOTS_RULES_1_MAX lots
 *      is refused points that would start another (LIMIT_EXCEEDED), and an import may
 *      keep any expiry up to TALLY_IMPORT_EXPIRY_MAX_MS (Tally before 2026-12-01);
 *   2  lots bounded by design (TALLY_ACCOUNT_LOTS_EXACT_MAX), and imports held to
 *      TALLY_EXPIRY_MONTHS_MAX months ahead;
 *   3  an idempotency record holds the seq of the command's entry alone, not the
 *      SHA-256 of the command's content too: a retry's content is compared with the
 *      original's as its journal entry holds it (2026-12-02);
 *   4  an account record holding more than TALLY_ACCOUNT_LOTS_APART_MIN lots is hashed
 *      into the state digest in parts, the record without its lots and each lot
 *      apart, so that a command hashes the lots it changed and not all of them
 *      (2026-12-05). */
#define TALLY_RULES_FIRST 1
#define TALLY_RULES_BOUNDED_LOTS 2
#define TALLY_RULES_IDEM_SEQ 3
#define TALLY_RULES_LOTS_APART 4
#define TALLY_RULES_CURRENT 4
/* Lots past which an account written under TALLY_RULES_LOTS_APART is hashed in parts:
 * below, one hash of the whole record costs less than the parts' several. */
#define TALLY_ACCOUNT_LOTS_APART_MIN 32
#define TALLY_ACCOUNT_LOTS_RULES_1_MAX 10000
#define TALLY_RATE_MAX 1000000000LL
/* A snapshot's trailer, after the copy: magic (16 bytes, zero-padded), the copy's
 * length (8), its check (32). TALLYSNAP2, written since 2026-12-02: the check is
 * CRC32C in 8 interleaved lanes of 4 KiB blocks, 5x faster than SHA-256 here (the seal
 * is against a copy cut short or damaged, not against an adversary: the copy comes from
 * the node itself or from a certified peer over TLS, and is checked in full after).
 * TALLYSNAP1, read still: the check is the copy's SHA-256. */
#define TALLY_SNAPSHOT_MAGIC "TALLYSNAP2"
#define TALLY_SNAPSHOT_MAGIC_SHA256 "TALLYSNAP1"
#define TALLY_SNAPSHOT_TRAILER_BYTES 56

struct tally_ledger;

/* Options for tally_ledger_open. Zero-initialised options are valid defaults. */
struct tally_ledger_options {
	/* The LMDB map's size; 0 = 64 GiB. With writemap it is a cap: the map starts at
	 * what the data needs and grows over blocks allocated on disk first (map.c). */
	uint64_t map_size_bytes;
	/* With writemap: the free map kept ahead of the data, at least (a quarter of the
	 * data when that is more); 0 = 64 MiB. Smaller costs remaps (map.c). */
	uint64_t map_room_bytes;
	bool nosync;             /* MDB_NOSYNC: the raft log carries durability */
	bool writemap;           /* MDB_WRITEMAP: faster, same on-disk format */
	/* Where a journal segment file closes; 0 = 64 MiB, the most. Every replica of a
	 * cluster must use the same (their segments are then the same bytes); tests make
	 * it small. */
	uint64_t journal_segment_bytes;
	/* A directory on the ledger's file system where snapshots hard-link the closed
	 * segments they reference instead of copying them, and where a restore finds them
	 * (NULL: snapshots carry every segment's bytes, and restore only such ones). */
	const char *snapshot_links_dir;
	/* Snapshots carry every segment's bytes even with snapshot_links_dir (which a
	 * restore still reads): for a node whose transport does not add the appendix. */
	bool snapshot_segments_inline;
};

/* The state a replica proves it holds. */
struct tally_digest {
	uint64_t applied_index;
	uint64_t applied_term;
	uint64_t tree_size;            /* journal entries = last seq */
	uint8_t root[32];              /* RFC 9162 Merkle root of the journal */
	uint8_t state_digest[32];      /* sum mod 2^256 of the hashes of all state records */
	int64_t time_ms;               /* time of the last applied batch */
};

/* Opens (creating if needed) the ledger in directory `dir`, which must exist.
 * Checks the format version. On success *out owns an LMDB environment. */
int tally_ledger_open(const char *dir, const struct tally_ledger_options *opts,
		      struct tally_ledger **out);

/* Writes the journal's segment files to disk (fdatasync each, then the directory): 0,
 * TALLY_EIO or TALLY_ENOSPC. Any thread. LMDB's file is synced apart (its descriptor:
 * tally_ledger_file_dup). */
int tally_ledger_journal_sync(struct tally_ledger *l);

/* Removes the ledger in `dir` (closed): LMDB's files and the journal's segments. */
int tally_ledger_remove(const char *dir);

/* Closes the environment (after an mdb_env_sync) and frees the handle. NULL is fine. */
void tally_ledger_close(struct tally_ledger *l);

/* Applies one batch in ONE LMDB write transaction that also records batch->raft_index
 * and raft_term as applied. A batch whose raft_index is not above the stored applied
 * index is skipped: *skipped is set and every result is left untouched, so a replay
 * after a restart is harmless. Otherwise results[i] (an array of n_commands pointers
 * allocated in `arena`, valid until its next reset) holds each command's outcome:
 * business rejections are results, not errors. Returns 0, or an error when the
 * transaction could not be committed, in which case nothing of the batch is applied:
 * TALLY_ENOSPC when the disk has no room for it, TALLY_EFULL when the map is at
 * map_size_bytes, TALLY_EIO, TALLY_ENOMEM, ... A failed growth of the map (an error
 * other than those two from map.c) leaves LMDB without its map: close the ledger.
 * The time of the batch is max(batch->time_ms, time of the previous batch). */
int tally_ledger_apply_batch(struct tally_ledger *l, const Tally__V1__Batch *batch,
			     struct tally_arena *arena,
			     Tally__V1__CommandResult ***results, bool *skipped);

/* Batches applied in one write transaction (tally_ledger_apply_group). */
#define TALLY_LEDGER_GROUP_BATCHES_MAX 1024u
struct tally_ledger_group {
	const Tally__V1__Batch *const *batches; /* n, in raft order (raft_index ascending) */
	size_t n;                                /* 1..TALLY_LEDGER_GROUP_BATCHES_MAX */
	Tally__V1__CommandResult ***results;     /* out: n result arrays, as apply_batch's */
	bool *skipped;                           /* out: n flags, as apply_batch's */
};

/* Applies n batches, in order, in ONE write transaction: each batch writes exactly the
 * records tally_ledger_apply_batch would (its own time, hold sweep and system-account
 * writes), and the transaction records the last one's raft index and term as applied.
 * What a commit costs (copied B-tree branches, the meta record, the journal's write,
 * LMDB's free list) is paid once for the group. Results and skips as for
 * tally_ledger_apply_batch, per batch; on an error nothing of the group is applied.
 * The ledger reached is the same, record for record and byte for byte in its journal,
 * as with one transaction per batch. */
int tally_ledger_apply_group(struct tally_ledger *l, const struct tally_ledger_group *g,
			     struct tally_arena *arena);

/* A serialized Batch (what raft carries), decoded into the arena; NULL when the bytes
 * are not a Batch or the arena is out of memory. It reads what protobuf-c's decoder
 * reads, faster for batches of accruals and redemptions (ledger/codec.c). */
Tally__V1__Batch *tally_ledger_batch_decode(struct tally_arena *arena, const void *buf,
					    size_t len);

/* A command's encoding, the bytes protobuf-c writes, by the apply path's own writer
 * for accruals and redemptions (ledger/codec.c; protobuf-c's for any other): its size
 * in bytes, written into out when it is at most cap (out NULL and cap 0 only measure). */
size_t tally_ledger_command_pack(const Tally__V1__Command *cmd, uint8_t *out, size_t cap);

/* As tally_ledger_apply_batch, for a serialized Batch (what raft carries). Returns
 * TALLY_ECORRUPT when the bytes do not decode; *n_results receives n_commands. */
int tally_ledger_apply_bytes(struct tally_ledger *l, const void *buf, size_t len,
			     struct tally_arena *arena,
			     Tally__V1__CommandResult ***results, size_t *n_results,
			     bool *skipped);

/* Answers one query for principal `who` (authorized by the matrix above) from a
 * consistent read of the current state. *out and everything it points to live in
 * `arena`. Business outcomes (NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT) are in
 * (*out)->code; the return value is 0 or a system error. */
int tally_ledger_query(struct tally_ledger *l, const Tally__V1__Query *q,
		       const Tally__V1__Principal *who, struct tally_arena *arena,
		       Tally__V1__QueryResult **out);

/* The current digest (one read transaction). */
int tally_ledger_digest(struct tally_ledger *l, struct tally_digest *out);

/* The applied raft index (0 for a new ledger). */
uint64_t tally_ledger_applied_index(struct tally_ledger *l);

/* The time of the last applied batch (0 for a ledger that has applied none). */
int64_t tally_ledger_time_ms(struct tally_ledger *l);

/* The journal's entries (its last seq; 0 for a new ledger). */
uint64_t tally_ledger_journal_size(const struct tally_ledger *l);

/* The rules the ledger applies now (TALLY_RULES_FIRST for a new ledger). */
uint32_t tally_ledger_rules(const struct tally_ledger *l);

/* One account as stored (lots and holds included when with_lots). Returns
 * TALLY_ENOTFOUND when the member never held points in the brand. */
int tally_ledger_account(struct tally_ledger *l, const char *brand, const char *member,
			 bool with_lots, struct tally_arena *arena,
			 Tally__V1__Account **out);

/* SHA-256 over every key and value of every table in key order, a journal row as the
 * entry it names: equal for two ledgers exactly when their logical contents are
 * byte-identical. */
int tally_ledger_content_hash(struct tally_ledger *l, uint8_t out[32]);

/* Full scan proving the books balance. Checks, per brand: the postings of every entry
 * sum to zero; Σ member available + held = −(issuance + redeemed + expired + clearing +
 * adjustment) (i.e. issued − redeemed − expired ± exchanged ± adjustments); every
 * account's available equals the sum of its lots and its held the sum of its open
 * holds; no balance is negative; the Merkle root recomputed from the stored entry
 * bytes equals the stored root; the state digest recomputed from all records equals
 * the incremental one. Returns 0 or TALLY_ECORRUPT with the first violation described
 * in msg (NUL-terminated, truncated to cap). */
int tally_ledger_check_invariants(struct tally_ledger *l, char *msg, size_t cap);

/* A new descriptor (close-on-exec) of the ledger's data file, or -1 with errno set:
 * what sync_file_range and fdatasync through it write back includes the pages the map
 * dirtied. It stays valid after the ledger is closed or replaced (the caller closes
 * it), so it may be used on another thread than the one applying batches. */
int tally_ledger_file_dup(struct tally_ledger *l);

/* Where the journal's committed records end: the first seq of the last segment that
 * holds one and the bytes committed to it (0 and 0: none). Any thread. With
 * tally_ledger_journal_segment_open, what a node writes back behind the journal's
 * growth (closed segments are never written again). */
void tally_ledger_journal_tail(struct tally_ledger *l, uint64_t *first, uint64_t *len);
/* A new read-only descriptor (close-on-exec) of journal segment `first`, or -1 with
 * errno set. */
int tally_ledger_journal_segment_open(struct tally_ledger *l, uint64_t first);

/* Bytes of the data file that hold data (up to the last page in use), as of the last
 * batch begun or the open; 0 for a ledger not opened with writemap. Any thread: what
 * lies this far into the file, less what the next batches rewrite, is cold. */
uint64_t tally_ledger_data_bytes(struct tally_ledger *l);

/* Growths of a writemap ledger's map that kept its pages mapped (where the map is, or
 * moved with mremap) rather than unmapping and mapping it again, by this process:
 * ledger/remap.c. */
uint64_t tally_ledger_remaps_in_place(void);

/* Closed journal segments this process linked for snapshots to name (synced, hashed,
 * hard-linked: ledger/jsnap.c), and their bytes in *bytes (may be NULL). */
uint64_t tally_ledger_segments_linked(uint64_t *bytes);

/* Growths of a writemap ledger's map, by this process, that waited for a reader on
 * another thread (a snapshot's copy) to let the map move: only a growth past the
 * address space held for the map moves it (ledger/remap.c). */
uint64_t tally_ledger_map_waits(void);

/* Writes a compacted, consistent copy of the ledger to `fd` (a regular file at offset
 * 0, read back to seal it), as of one read transaction, then the journal's section
 * (every segment's bytes, or with options.snapshot_links_dir a reference to each
 * closed segment, linked there), followed by a trailer with their length and check
 * (TALLY_SNAPSHOT_MAGIC); a longer file (one written over to reuse its page cache) is
 * cut to that. *applied_index receives the raft index it reflects. May
 * run on another thread than the one applying batches: it holds the map in place while
 * it copies (the map grows meanwhile only where it is; tally_ledger_map_waits). */
int tally_ledger_snapshot(struct tally_ledger *l, int fd, uint64_t *applied_index);

/* Replaces the ledger in `dir` with the snapshot in snap[0..len) and opens it. Before
 * it replaces anything it checks the trailer (the copy's length and check, of either
 * kind: one pass over the bytes), that LMDB opens the copy, its format version and its meta. The
 * full invariant check (tally_ledger_check_invariants, a scan of every record) is
 * then the caller's: *check_pending is true, and until it passes the ledger is not
 * known to be sound. A snapshot without a trailer (an older node's) is checked in
 * full before it replaces anything (*check_pending false). The new ledger is not
 * synced (tally_ledger_file_dup gives the file to sync). */
int tally_ledger_restore(const char *dir, const void *snap, size_t len,
			 const struct tally_ledger_options *opts, struct tally_ledger **out,
			 bool *check_pending);

/* Opens the sealed snapshot in the file `path` (a copy and its trailer, as
 * tally_ledger_snapshot writes it) read-only, once its trailer matches the copy (one
 * pass over the file) and LMDB opens it: for tally_ledger_check_invariants and
 * queries; a batch applied to it fails. It takes no lock and holds no reader of any
 * other ledger, so a live ledger restored from the same bytes goes on reusing the
 * pages it frees while this one is checked. TALLY_ENOTFOUND: no such file;
 * TALLY_ECORRUPT: no trailer, or one that does not match. */
int tally_ledger_open_snapshot(const char *path, const char *links_dir,
			       struct tally_ledger **out);

/* Links the ledger's closed journal segments that are not linked yet into its
 * options.snapshot_links_dir (each synced and hashed, its hash in a sidecar), as its
 * next snapshot would: after a restore, so that the node holds at once, and can say
 * so, the segments it received. May run beside batches on another thread, as
 * tally_ledger_snapshot does. 0 when the ledger has no links directory. */
int tally_ledger_link_segments(struct tally_ledger *l);

/* A closed journal segment a node holds as a link of its links directory, its hash in
 * the link's sidecar: what its have-list tells a leader, so that an InstallSnapshot
 * need not carry it. */
struct tally_segment_held {
	uint64_t first, len;
	uint8_t sha[32];
};
/* Links a have-list names at most (the oldest first): 48 bytes each on the wire. */
#define TALLY_LEDGER_HELD_MAX 65536u
/* The links in links_dir that their sidecars vouch for, sorted by first seq (none when
 * the directory does not exist). Free *out. */
int tally_ledger_segments_held(const char *links_dir, struct tally_segment_held **out,
			       size_t *n);

/* What a node sends after a snapshot whose journal section references segments: each
 * one's bytes (mapped from links_dir, or taken from the appendix the snapshot came
 * with, which is not sent again) and a footer, as pieces to send in order after the
 * first snap_len bytes of the snapshot; bytes is their total (0: nothing referenced,
 * send the snapshot as it is). A segment held[] names (first seq, length and hash;
 * sorted by first seq) is left out, and the appendix then lists the ones it carries;
 * only a receiver that sent held[] reads such an appendix. A restore checks every
 * segment against the hash the snapshot's seal covers. Free with
 * tally_ledger_snapshot_appendix_free once sent. */
struct tally_snapshot_piece {
	const void *base;
	size_t len;
};
struct tally_snapshot_appendix {
	size_t snap_len; /* of the snapshot, sent before the pieces */
	struct tally_snapshot_piece *pieces;
	size_t n_pieces;
	uint64_t bytes;
	uint64_t held, held_bytes; /* segments left out: the receiver holds them */
	struct tally_snapshot_piece *maps; /* the mappings to undo */
	size_t n_maps;
	uint8_t *carried; /* the carried segments' first seqs, when some are left out */
	uint8_t footer[24];
};
int tally_ledger_snapshot_appendix(const void *snap, size_t len, const char *links_dir,
				   const struct tally_segment_held *held, size_t n_held,
				   struct tally_snapshot_appendix *out);
void tally_ledger_snapshot_appendix_free(struct tally_snapshot_appendix *a);
/* Whether a closed segment snap[0..len) names is neither after it nor linked in
 * links_dir with its length, or, where its appendix leaves it out as one the node said
 * it holds, not linked with its sidecar naming its hash (what makes a restore of it
 * fail): then name holds the link's path, for the log. Reads no segment's bytes. */
enum tally_snapshot_resolved {
	TALLY_SNAPSHOT_RESOLVES = 0,
	TALLY_SNAPSHOT_LINK_MISSING = 1, /* no link, or one of another length */
	TALLY_SNAPSHOT_HELD_MISSING = 2  /* left out as held, and not held */
};
enum tally_snapshot_resolved tally_ledger_snapshot_unresolved(const void *snap, size_t len,
							      const char *links_dir, char *name,
							      size_t cap);
/* What an InstallSnapshot of snap[0..len) carries at most: the snapshot (without an
 * appendix it came with) and an appendix carrying every segment it references. */
uint64_t tally_ledger_snapshot_sent_bytes(const void *snap, size_t len);

/* Whether `who` may run command `c` in principle (role only; brand scope is checked
 * in apply where the touched brands are known). Exposed for the RPC layer to reject
 * early; the state machine checks again. */
bool tally_ledger_role_allows(Tally__V1__Role role, Tally__V1__Command__BodyCase body);

/* The enum name of a result code ("INSUFFICIENT_POINTS"), never NULL. */
const char *tally_result_name(Tally__V1__ResultCode code);

#endif /* TALLY_LEDGER_H */
