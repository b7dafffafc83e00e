/*
 * Internal interfaces of the ledger: the LMDB tables, key encoding, the state
 * record helpers that keep the state digest, and the apply context shared by the
 * command handlers. Nothing here is part of the public API.
 */
#ifndef TALLY_LEDGER_INTERNAL_H
#define TALLY_LEDGER_INTERNAL_H

#include <endian.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>

#include "ledger/ledger.h"
#include "ledger/merkle.h"

/* ---- tables ----------------------------------------------------------------------
 * Digested tables hold the state; their records feed the state digest. Index tables
 * are derived from state and excluded. Entries and tree are covered by the root. */
enum table {
	T_META,        /* fixed names → meta values */
	T_ENTRIES,     /* seq(8) → where its record is (journal.c): segment(8) offset(8);
	                  the record, or a row of format ≤ 6: raft_index(8) raft_term(8)
	                  time_ms(8) n(1) n chain links(24) entry bytes (chain.c) */
	T_TREE,        /* level(1) index(8) → node hash(32) */
	T_IDEM,        /* key_name \0 request_id → content hash(32) seq(8)       [digest] */
	T_BRANDS,      /* id → Brand                                              [digest] */
	T_MEMBERS,     /* id → chain head(32) Member                              [digest] */
	T_ACCOUNTS,    /* brand \0 member → chain head(32) Account                [digest] */
	T_SYSACCT,     /* brand \0 kind(1) partner → int64                        [digest] */
	T_LOT_EXP,     /* expiry(8) brand \0 member → "" (at or before its first lot)  index */
	T_HOLDS,       /* id(8) → HoldRecord                                      [digest] */
	T_HOLD_EXP,    /* expires(8) id(8) → ""  (open holds)                      index */
	T_HOLD_ACCT,   /* brand \0 member \0 id(8) → "" (open holds)               index */
	T_QUAL,        /* brand \0 member \0 day(4) → int64 qualifying points     [digest] */
	T_QUAL_DAY,    /* brand \0 day(4) member → ""                              index */
	T_DAILY,       /* day(4) kind(1) brand \0 member \0 partner → int64 used  [digest] */
	T_AGREEMENTS,  /* from \0 to → Agreement                                  [digest] */
	T_OBLIGATIONS, /* a \0 b \0 seq(8) → Obligation (open ones, a < b)        [digest] */
	T_SETTLEMENTS, /* id(8) → Settlement                                      [digest] */
	T_SETTLE_PAIR, /* a \0 b \0 id(8) → ""                                     index */
	T_REVERSED,    /* seq(8) → int64 points reversed so far                   [digest] */
	T_COUNT
};

extern const char *const table_names[T_COUNT];
extern const bool table_digested[T_COUNT];

enum daily_kind { DAILY_COMMUNITY = 1, DAILY_TRANSFER = 2, DAILY_EXCHANGE = 3 };

#define KEY_BYTES_MAX 400   /* below LMDB's 511-byte key limit */
/* 2: every command that changed state has an entry; 3: a member's entries are chained
 * through its records and the entries (chain.c) instead of an index row per entry;
 * 4: an account's expiry row may lie before its first lot (account.c). A format-3
 * ledger is a format-4 one whose rows are all exact: it is read as it is.
 * 5: an account past TALLY_ACCOUNT_LOTS_EXACT_MAX lots gets no new lot at an exact
 * expiry (lot_give). The layout is format 4's, read as it is; the number keeps a
 * binary that would apply the old rule away from a ledger under the new one.
 * 6: the rules the ledger applies are recorded (meta "rules", SetRules); a format-5
 * ledger is read as one at TALLY_RULES_BOUNDED_LOTS, an older one at the first rules.
 * 7: new entries are stored in the journal's segment files, T_ENTRIES holding where
 * (journal.c); rows an older format stored whole are read as they are.
 * 8: T_ENTRIES holds a row for every JOURNAL_INDEX_STRIDE-th entry and each segment's
 * first only; format 7's row per entry is read the same way.
 * 9: a chain head in front of an account or member record may carry its path (chain.c:
 * CHAIN_HEAD_PATH_FLAG), which the digest leaves out; a head without one is read as
 * it is and gets its path the first time an entry joins its chain.
 * 10: an account record may be hashed into the digest in parts (CHAIN_HEAD_LOTS_FLAG,
 * rules 4: TALLY_RULES_LOTS_APART); a format-9 ledger has none and is read as it is. */
#define LEDGER_FORMAT_VERSION 10
#define LEDGER_FORMAT_READABLE_MIN 3
#define MS_PER_DAY 86400000LL
#define ENTRY_HEADER_BYTES 24 /* the fixed part: raft index, term, time */
#define POSTINGS_MAX 8

struct key {
	size_t n;
	uint8_t b[KEY_BYTES_MAX];
};

void key_reset(struct key *k);
void key_str(struct key *k, const char *s);       /* bytes and a NUL separator */
void key_raw(struct key *k, const char *s);       /* bytes, no separator (last field) */
void key_u8(struct key *k, uint8_t v);
void key_u32(struct key *k, uint32_t v);           /* big-endian: sorts numerically */
void key_u64(struct key *k, uint64_t v);

/* Integers in stored bytes, the same on every host: big-endian where keys must sort
 * numerically, little-endian in the state digest's limbs. Inline, since every command
 * reads and writes a few dozen of them. */
static inline uint64_t be64_get(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, sizeof(v));
	return be64toh(v);
}

static inline uint32_t be32_get(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, sizeof(v));
	return be32toh(v);
}

static inline void be64_put(uint8_t *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, sizeof(v));
}

static inline void be32_put(uint8_t *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, sizeof(v));
}

static inline uint64_t le64_get(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, sizeof(v));
	return le64toh(v);
}

static inline void le64_put(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, sizeof(v));
}

/* ---- the journal's bytes (journal.c) ----------------------------------------------
 * Entries live in append-only segment files, journal/<first seq>.seg beside LMDB;
 * T_ENTRIES says where the record of every JOURNAL_INDEX_STRIDE-th seq and of each
 * segment's first is (format 8; format 7 has a row for every seq). Limits: */
#define JOURNAL_SEGMENT_BYTES (64ULL << 20) /* a segment closes before passing this */
#define JOURNAL_RECORD_MAX (256u << 20)     /* one entry's stored bytes */
#define JOURNAL_RECORD_HEAD 4               /* a record's length, big-endian */
#define JOURNAL_INDEX_BYTES 16              /* T_ENTRIES value: segment's first seq, offset */
#define JOURNAL_INDEX_STRIDE 32             /* a row per this many seqs: at most 31 records
                                             * are stepped over to reach one */
#define JOURNAL_CHUNK_BYTES (1u << 20)      /* a batch's records are kept in chunks of this */
#define JOURNAL_IOV_MAX 512                 /* chunks written by one pwritev */

struct journal_seg {
	uint64_t first;      /* seq of its first record */
	uint8_t *base;       /* its mapping (read-only), cap bytes */
	size_t cap;
	uint64_t len;        /* bytes written */
	int fd;              /* open only while it may be written: the last segment */
	bool own_map;        /* base is its own mapping (not into a snapshot's) */
	bool linked;         /* its file has another name, a link snapshots name (jsnap.c):
	                      * never cut or written in place */
	bool hashed;         /* linked by this process, synced, and sha is its SHA-256 */
	uint8_t sha[32];
};

struct journal_chunk {
	struct journal_chunk *next;
	size_t used, cap;
	uint8_t data[];
};

struct journal_pending {     /* a record of the batch being applied */
	uint64_t first, off; /* where it goes */
	uint8_t *bytes;      /* framed, in a chunk */
	uint64_t n;          /* framed length */
};

struct journal {
	char dir[4096];
	bool writable;
	uint64_t segment_bytes;
	pthread_mutex_t lock;        /* guards the segment table */
	struct journal_seg *segs;    /* ascending by first */
	size_t n_segs, cap_segs;
	/* The writer's: the last committed record's segment and end (changed under lock:
	 * a snapshot's journal_section_write reads them), and the batch's tail. */
	uint64_t commit_seq, commit_first, commit_end;
	uint64_t tail_first, tail_end;
	struct journal_pending *pending;
	size_t n_pending, cap_pending;
	struct journal_chunk *chunks, *chunk_at;
};

/* Opens the segments in ledger_dir/journal (made when writable and missing);
 * segment_bytes 0: JOURNAL_SEGMENT_BYTES. A writable journal then needs
 * journal_settle_open before its first batch. */
int journal_open(struct journal *j, const char *ledger_dir, bool writable,
		 uint64_t segment_bytes);
/* Cuts the segments back to LMDB's last committed record: entry last_seq (the journal's
 * size), found from T_ENTRIES' last row, key last_key and value last_index (NULL: no
 * entry in the segments). */
int journal_settle_open(struct journal *j, uint64_t last_seq, uint64_t last_key,
			const uint8_t *last_index);
void journal_close(struct journal *j);
/* A batch: journal_begin, journal_reserve per entry (n bytes to fill at *out; index is
 * where it goes: its T_ENTRIES value when journal_index_row says it has a row),
 * journal_flush before LMDB commits, journal_settle after. */
void journal_begin(struct journal *j);
int journal_reserve(struct journal *j, uint64_t seq, size_t n, uint8_t **out,
		    uint8_t index[JOURNAL_INDEX_BYTES]);
int journal_flush(struct journal *j);
int journal_settle(struct journal *j, bool committed);
static inline bool journal_index_row(uint64_t seq, const uint8_t index[JOURNAL_INDEX_BYTES])
{
	return seq % JOURNAL_INDEX_STRIDE == 0 || be64_get(index + 8) == 0;
}
/* Entry seq when it is a record of the batch this thread applies (not yet written). */
int journal_pending_read(const struct journal *j, uint64_t seq, MDB_val *raw);
/* The T_ENTRIES key that leads to entry seq: the last row at or before it, in its
 * segment; TALLY_ENOTFOUND when seq precedes every segment (an older format's row). */
int journal_row_key(struct journal *j, uint64_t seq, uint64_t *key);
/* The stored entry seq when it follows prev, the stored entry seq - 1, in the same
 * segment; TALLY_ENOTFOUND when it does not (a new segment, an older format's row). */
int journal_read_after(struct journal *j, uint64_t seq, const MDB_val *prev, MDB_val *raw);
/* The stored entry seq, reached from row `key` (value index) of its segment. */
int journal_read(struct journal *j, uint64_t seq, uint64_t key,
		 const uint8_t index[JOURNAL_INDEX_BYTES], MDB_val *raw);
/* The last committed record's segment and end (tally_ledger_journal_tail); a new
 * read-only descriptor of segment first, or -1 with errno set. */
void journal_tail(struct journal *j, uint64_t *first, uint64_t *end);
int journal_seg_open_read(const struct journal *j, uint64_t first);
/* For jsnap.c: an error of the last system call as a code; the path of segment first;
 * the segment whose first record is first (lock held); one more segment at the end. */
int journal_io_error(void);
int journal_write_at(int fd, const void *p, size_t n, uint64_t off); /* all of it */
int journal_file_write(const char *path, const void *p, size_t n);   /* a new file, no sync */
/* dir/<first, 20 digits>.seg<suffix>: a segment's name, in the journal or the links. */
int journal_seg_name(const char *dir, uint64_t first, const char *suffix, char *buf, size_t cap);
int journal_seg_path(const struct journal *j, uint64_t first, char *buf, size_t cap);
/* The first seqs of the `<first seq>.seg` files in dir (none when it does not exist),
 * ascending, in a new array. */
int journal_seg_list(const char *dir, uint64_t **out, size_t *n);
struct journal_seg *journal_seg_find(const struct journal *j, uint64_t first);
int journal_seg_add(struct journal *j, uint64_t first, int fd, uint8_t *base, size_t cap,
		    uint64_t len, bool own_map);

/* ---- the journal in a snapshot (jsnap.c) -----------------------------------------
 * After LMDB's copy, a section naming every segment: its bytes, or a reference (its
 * hash) to a link in the node's links directory or to an appendix after the seal. */
struct jsnap_source {
	const uint8_t *appendix; /* a sender's, after the seal; NULL: none */
	size_t appendix_len;
	const char *links_dir;   /* the node's links; NULL: none */
};
/* Writes the section at offset at of fd (*written bytes): the closed segments as
 * references to links made in links_dir (NULL: every segment's bytes). */
int jsnap_write(struct journal *j, int fd, uint64_t at, const char *links_dir,
		uint64_t *written);
/* Links the closed committed segments not linked yet into links_dir, as jsnap_write
 * does before it names them (tally_ledger_link_segments). */
int jsnap_link_closed(struct journal *j, const char *links_dir);
/* The section's offset at the end of sealed[0..len) (len when there is none). */
size_t jsnap_find(const uint8_t *sealed, size_t len);
/* snap's length without an appendix at its end (*appendix: the appendix or NULL). */
size_t jsnap_appendix_split(const uint8_t *snap, size_t len, const uint8_t **appendix,
			    size_t *appendix_len);
/* A read-only journal over a section, references resolved from src. */
int jsnap_open(struct journal *j, const uint8_t *section, size_t len,
	       const struct jsnap_source *src);
/* The section's segments written to (or linked into) ledger_dir's journal. */
int jsnap_unpack(const uint8_t *section, size_t len, const struct jsnap_source *src,
		 const char *ledger_dir);
/* 1 with the link's path in name when a reference of the section does not resolve
 * from src (no link, or one of another length), 2 when one the appendix leaves out as
 * held has no link whose sidecar names its hash; 0 otherwise (no bytes hashed). */
int jsnap_unresolved(const uint8_t *section, size_t len, const struct jsnap_source *src,
		     char *name, size_t cap);
/* The bytes of the appendix that would carry the section's referenced segments. */
uint64_t jsnap_referenced_bytes(const uint8_t *section, size_t len);
/* The appendix that carries the section's referenced segments but those held names,
 * each from src's appendix or else src's links (tally_ledger_snapshot_appendix). */
int jsnap_appendix(const uint8_t *section, size_t len, const struct jsnap_source *src,
		   const struct tally_segment_held *held, size_t n_held,
		   struct tally_snapshot_appendix *a);
/* Every segment's bytes and the directory's names on disk. */
int journal_sync(struct journal *j);
/* Removes ledger_dir/journal and its segments. */
int journal_remove(const char *ledger_dir);

/* ---- the ledger handle ---------------------------------------------------------- */

struct meta {
	uint64_t applied_index;
	uint64_t applied_term;
	int64_t time_ms;
	struct tally_merkle_frontier tree;   /* tree.size = last seq */
	uint8_t digest[32];
	uint32_t rules;                      /* TALLY_RULES_*: set_rules moves it on */
};

/* What the current batch knows of a digested record: the hash of its current value
 * (or that it is absent), so that replacing it needs no second read to take the old
 * hash out of the digest. A cache only: it never changes what is computed. */
struct known {
	uint64_t tag;          /* key hash; valid only when gen matches */
	uint32_t gen;
	uint16_t key_bytes;
	uint8_t table;
	bool present;
	const uint8_t *key;    /* copy in the batch arena */
	uint8_t hash[32];
};

#define BRAND_CACHE_MAX 16
#define SYS_DELTAS_MAX 32

/* Address space held for a writemap ledger's map to grow into (remap.c). */
struct remap_region {
	uint8_t *base;   /* the map's address (NULL: none held) */
	size_t mapped;   /* bytes of the file mapped from base */
	size_t reserved; /* bytes from base held: the map, then PROT_NONE */
};

struct tally_ledger {
	MDB_env *env;
	MDB_dbi dbi[T_COUNT];
	struct meta meta;           /* as of the last committed batch */
	struct tally_arena scratch; /* per command; reset before each */
	struct tally_arena batch;   /* per batch: known keys, cached brands */
	struct tally_arena decode;  /* apply_bytes: the decoded batch */
	struct known *known;        /* open addressing, known_cap slots */
	size_t known_cap;
	size_t known_used;
	uint32_t known_gen;
	char dir[4096];
	/* The map (map.c): with writemap it covers only blocks allocated on disk. */
	bool map_managed;           /* writemap: the map grows with the data */
	size_t map_page_bytes;
	uint64_t map_bytes;         /* the map's size now */
	uint64_t map_max_bytes;     /* its cap: map_size_bytes */
	uint64_t map_room_bytes;    /* free map kept ahead of the data, at least */
	uint64_t map_warm_bytes;    /* the file's pages below this are in the page cache */
	_Atomic uint64_t map_data_bytes; /* as of the last batch begun: tally_ledger_data_bytes */
	pthread_mutex_t map_lock;   /* held by a reader on another thread, and by a move */
	struct remap_region map_region; /* where the map is and may grow (remap.c) */
	struct journal journal;     /* the entries' bytes (journal.c) */
	char links_dir[4096];       /* where snapshots link closed segments ("": inline them) */
	void *copy_map;             /* a snapshot opened read-only: its mapping */
	size_t copy_map_len;
};

/* ---- member chains (chain.c) -----------------------------------------------------
 * Every entry that names a member (as its member or in a posting) is linked into one
 * chain per (brand, member) account it touches; entries of the member record itself
 * (open, update) into the chain ("", member). A chain's head (its last entry) is kept
 * in front of the account or member record, which the entry's command writes anyway;
 * each entry keeps, per chain, its predecessor, a skip link and its ordinal, so that
 * the member-history query finds any seq in O(log^2 n) reads without an index row. */
#define CHAIN_REST_MAX 62 /* set bits of a 64-bit ordinal past the head's seq and skip */
/* Stored: seq(8) ord(8) prev(8) skip(8), with CHAIN_HEAD_PATH_FLAG set in ord when
 * rest follows, chain_rest_count(ord) seqs of 8 bytes. The digest hashes the record
 * as format 8 stored it, the flag clear and rest left out (record_hash): the path
 * is derived from the entries, like an index, and ledger_check verifies it. */
#define CHAIN_HEAD_BYTES 32
#define CHAIN_HEAD_PATH_FLAG (1ull << 63)
/* Set in ord in front of an account record hashed in parts (record_hash): written under
 * TALLY_RULES_LOTS_APART with more than TALLY_ACCOUNT_LOTS_APART_MIN lots. */
#define CHAIN_HEAD_LOTS_FLAG (1ull << 62)
#define CHAIN_HEAD_FLAGS (CHAIN_HEAD_PATH_FLAG | CHAIN_HEAD_LOTS_FLAG)
#define CHAIN_HEAD_BYTES_MAX (CHAIN_HEAD_BYTES + 8 * CHAIN_REST_MAX)

/* The set bits of an ordinal: the length of its skip path (a loop, not the builtin,
 * which is a library call on a generic x86-64 build; ordinals have few bits). */
static inline unsigned chain_path_length(uint64_t ord)
{
	unsigned bits = 0;
	for (; ord != 0; ord &= ord - 1)
		bits++;
	return bits;
}

/* Seqs of a head's path past seq and skip: one per set bit of ord past the first two. */
static inline unsigned chain_rest_count(uint64_t ord)
{
	unsigned bits = chain_path_length(ord);
	return bits > 2 ? bits - 2 : 0;
}

/* The bytes of the chain head in front of a record v (its path included), or 0 when v
 * is too short to hold it. */
static inline size_t chain_head_size(const MDB_val *v)
{
	if (v->mv_size < CHAIN_HEAD_BYTES)
		return 0;
	uint64_t ord = be64_get((const uint8_t *)v->mv_data + 8);
	size_t n = CHAIN_HEAD_BYTES;
	if (ord & CHAIN_HEAD_PATH_FLAG)
		n += 8 * (size_t)chain_rest_count(ord & ~CHAIN_HEAD_FLAGS);
	return n <= v->mv_size ? n : 0;
}

struct chain_head {
	uint64_t seq;   /* last entry of the chain; 0: empty chain */
	uint64_t ord;   /* its ordinal in the chain, 1-based */
	uint64_t prev;  /* the entry before it (0: none) */
	uint64_t skip;  /* the entry of ordinal ord & (ord - 1) (0: none) */
	/* The rest of the path from the head by skips: rest[i] is the entry of ordinal
	 * o(i + 2), where o(0) = ord and o(k + 1) = o(k) & (o(k) - 1), one per set bit of
	 * ord past the first two (chain_rest_count). The ordinal a new entry skips to is
	 * always on this path, so appending reads nothing. A head read from a record
	 * without its path (format 8 or older) has path_unknown; chain_append reads the
	 * path from the journal once and the record is written with it. */
	bool path_unknown;
	bool lots_apart; /* the record after it is hashed in parts (CHAIN_HEAD_LOTS_FLAG) */
	uint64_t rest[CHAIN_REST_MAX];
};
/* What an account's record added to the state digest when the command read it, for
 * account_write to take out: the record's hash, or, hashed apart, the hash of its part
 * without lots and the lots themselves (their hashes are taken out only where the
 * record written differs). */
struct lot_pair {
	int64_t expiry_ms, points;
};
struct account_was {
	bool found;              /* false: a fresh account, nothing to take out */
	bool apart;              /* hashed in parts (CHAIN_HEAD_LOTS_FLAG) */
	uint8_t hash[32];        /* whole: its record_hash; apart: account_part_hash */
	struct lot_pair *lots;   /* apart: its lots as read, in order; else none */
	size_t n_lots;
};
#define CHAIN_LINK_BYTES 24     /* prev(8) skip(8) ord(8), per chain of an entry */
#define ENTRY_CHAINS_MAX (POSTINGS_MAX + 1)
#define OPEN_ACCOUNTS_MAX 4     /* accounts one command opens (transfer, exchange: 2) */

/* The head's stored bytes (chain_head_size of the record it begins). */
size_t chain_head_bytes(const struct chain_head *h);
/* Writes the head into p (room for chain_head_bytes(h), at most CHAIN_HEAD_BYTES_MAX)
 * and returns how many bytes it wrote. */
size_t chain_head_encode(uint8_t *p, const struct chain_head *h);
/* The head in front of record v, and the record's body after it. */
int chain_head_decode(const MDB_val *v, struct chain_head *h, MDB_val *body);
/* The record v (a member's or an account's) decoded as message d into arena, and its
 * head into h; NULL when either does not decode. */
void *chain_record_unpack(const MDB_val *v, const ProtobufCMessageDescriptor *d,
			  struct tally_arena *arena, struct chain_head *h);
/* The entry bytes inside a stored T_ENTRIES value, after the header and links. */
int entry_payload(const MDB_val *raw, const uint8_t **bytes, size_t *n);
/* The chains an entry belongs to, in link order: (brand, member) pairs, each once. */
size_t entry_chains(const Tally__V1__Entry *e, const char *brands[ENTRY_CHAINS_MAX],
		    const char *members[ENTRY_CHAINS_MAX]);
/* The node of chain (brand, member) at entry seq, read from the journal; arena holds
 * the decoded entry. */
int chain_node_at(MDB_txn *txn, MDB_dbi entries, struct tally_arena *arena, uint64_t seq,
		  const char *brand, const char *member, struct chain_head *out);
/* Whether the path head h carries is the one its chain's skip links give in the
 * journal (chain_rest_count(ord) reads); TALLY_ECORRUPT when not. The head's own
 * fields are in the state digest; its path is not, so this is what vouches for it. */
int chain_path_verify(MDB_txn *txn, MDB_dbi entries, struct tally_arena *arena,
		      const struct chain_head *h, const char *brand, const char *member);
/* Appends entry seq to the chain whose head is *h: writes its link and moves *h. */
int chain_append(MDB_txn *txn, MDB_dbi entries, struct tally_arena *arena,
		 struct chain_head *h, const char *brand, const char *member, uint64_t seq,
		 uint8_t link[CHAIN_LINK_BYTES]);
/* Up to max seqs of the chain at or after from, ascending, into out; *n how many. */
int chain_collect(MDB_txn *txn, MDB_dbi entries, struct tally_arena *arena,
		  const struct chain_head *head, const char *brand, const char *member,
		  uint64_t from, size_t max, uint64_t *out, size_t *n);

/* ---- apply context ---------------------------------------------------------------- */

struct apply {
	struct tally_ledger *l;
	MDB_txn *txn;
	MDB_cursor *cur[T_COUNT];         /* one per table, opened on first use (st_cursor) */
	struct meta m;                    /* working copy, saved on commit */
	int64_t now_ms;
	int64_t today;                    /* UTC day index of now_ms */
	uint64_t raft_index;
	uint64_t raft_term;
	struct tally_arena *out;          /* results, until the caller resets it */
	struct tally_arena *tmp;          /* scratch, reset before each command */
	const Tally__V1__Command *cmd;    /* command being applied, NULL for system work */
	Tally__V1__Posting postings[POSTINGS_MAX];
	size_t n_postings;
	Tally__V1__LotMove **lots;        /* lot moves of the entry being built */
	size_t n_lots;
	size_t cap_lots;
	Tally__V1__Brand *brands[BRAND_CACHE_MAX]; /* brands read in this batch */
	size_t n_brands;
	struct sys_delta {                /* system account movements not yet written */
		struct key k;
		int64_t delta;
	} sys[SYS_DELTAS_MAX];
	size_t n_sys;
	struct open_account {             /* accounts the command opened (account_load) */
		Tally__V1__Account *acct;
		struct chain_head head;
		bool save;                /* written by accounts_flush */
		struct account_was was;   /* what its record added to the digest when read */
	} open[OPEN_ACCOUNTS_MAX];
	size_t n_open;
	struct {                          /* the member record being written (member_store) */
		const char *id;
		struct chain_head head;
	} member_chain;
	bool holds_more;                  /* the hold sweep left timed-out holds open */
	bool cmd_entry;                   /* the command being applied has its COMMAND entry */
};

/* hashing (hash.c) */
void sha256_parts(const void *const parts[], const size_t lens[], size_t n, uint8_t out[32]);
void digest_add(uint8_t acc[32], const uint8_t h[32]);
void digest_sub(uint8_t acc[32], const uint8_t h[32]);
void record_hash(enum table t, const MDB_val *k, const MDB_val *v, uint8_t out[32]);
/* An account record hashed apart (CHAIN_HEAD_LOTS_FLAG; record_hash says how): the hash
 * of its head (its first CHAIN_HEAD_BYTES as stored, the path flag cleared here) and
 * its body without lots, and the hash of one of its lots. Their sum is record_hash's. */
void account_part_hash(const MDB_val *k, const uint8_t head[CHAIN_HEAD_BYTES],
		       const uint8_t *body, size_t n, uint8_t out[32]);
void account_lot_hash(const MDB_val *k, int64_t expiry_ms, int64_t points, uint8_t out[32]);

/* The snapshot seal's checksum (hash.c): CRC32C in SEAL_LANES interleaved lanes of
 * SEAL_BLOCK_BYTES blocks. crc32c_lanes uses the processor's CRC32 instruction where
 * there is one; crc32c_lanes_soft is the same function by table, for the test. */
#define SEAL_LANES 8
#define SEAL_BLOCK_BYTES 4096
void crc32c_lanes(const void *data, size_t len, uint32_t lanes[SEAL_LANES]);
void crc32c_lanes_soft(const void *data, size_t len, uint32_t lanes[SEAL_LANES]);

/* store (store.c): every write to a digested table goes through st_put / st_del */
int st_cursor(struct apply *a, enum table t, MDB_cursor **out);
void st_cursors_close(struct apply *a);
int st_get(struct apply *a, enum table t, const struct key *k, MDB_val *v);
int st_put(struct apply *a, enum table t, const struct key *k, const void *v, size_t n);
/* st_get and st_put for a record whose part of the digest the caller keeps (an account,
 * which account.c hashes in parts): no hash and nothing the batch knows of it. */
int st_get_own(struct apply *a, enum table t, const struct key *k, MDB_val *v);
int st_put_own(struct apply *a, enum table t, const struct key *k, const void *v, size_t n);
int st_del(struct apply *a, enum table t, const struct key *k);
int st_get_i64(struct apply *a, enum table t, const struct key *k, int64_t *v);
int st_put_i64(struct apply *a, enum table t, const struct key *k, int64_t v);
int rec_get(struct apply *a, enum table t, const struct key *k,
	    const ProtobufCMessageDescriptor *d, void **msg);
int rec_put(struct apply *a, enum table t, const struct key *k, const void *msg);
int lmdb_error(int rc);
void known_reset(struct tally_ledger *l);
void known_free(struct tally_ledger *l);
int meta_load(MDB_txn *txn, struct tally_ledger *l, struct meta *m);
/* Opens the LMDB copy at the start of the file `path` read-only, without a lock file
 * (nothing else may write it): tally_ledger_open_snapshot, once the seal matched. The
 * file is mapped at map (map_len bytes, unmapped when the ledger closes); its journal
 * section is journal_len bytes at offset section. */
int ledger_open_copy(const char *path, const uint8_t *map, size_t map_len, size_t section,
		     size_t journal_len, const struct jsnap_source *src, struct tally_ledger **out);
int meta_save(struct apply *a);
struct tally_merkle_store tree_store(MDB_txn *txn, const MDB_dbi *dbi);
/* The stored entry seq (header, links, Entry bytes), wherever it is: in the batch this
 * thread applies, a segment, or (formats 6 and older) T_ENTRIES itself. */
int txn_entry_get(MDB_txn *txn, MDB_dbi dbi, uint64_t seq, MDB_val *raw);
/* The same for a walk in order: prev is the stored entry seq - 1 (NULL: none), whose
 * record the entry follows unless a segment begins with it. */
int txn_entry_next(MDB_txn *txn, MDB_dbi dbi, uint64_t seq, const MDB_val *prev, MDB_val *raw);
/* raw, the T_ENTRIES row of key seq, made the stored entry it names. */
int entry_resolve(MDB_txn *txn, uint64_t seq, MDB_val *raw);
/* Calls fn for each record whose key starts with prefix (n bytes; 0 = all), in key
 * order, at most limit; a non-zero return from fn stops the scan and is returned. */
int txn_scan(MDB_txn *txn, MDB_dbi dbi, const void *prefix, size_t n, size_t limit,
	     int (*fn)(void *arg, const MDB_val *k, const MDB_val *v), void *arg);
/* As txn_scan, starting at key `start` (which sorts at or after prefix). */
int txn_scan_from(MDB_txn *txn, MDB_dbi dbi, const void *prefix, size_t n, const void *start,
		  size_t start_n, size_t limit,
		  int (*fn)(void *arg, const MDB_val *k, const MDB_val *v), void *arg);

/* the map and room on disk (map.c) */
/* Times one batch is applied again after MDB_MAP_FULL, the map grown each time (the
 * free part doubled): the map's cap, map_size_bytes, ends the growth long before. */
#define LEDGER_APPLY_GROWS_MAX 40
/* Pages warmed ahead of the data (map.c's header says why): how far, and how much one batch
 * warms at most beyond what the data grew by since the batch before (the first batches
 * after an open, and those after a growth of the map that gave way to a snapshot,
 * catch up in such steps: ~2.5 ms a MiB on the applying thread, under the memory
 * pressure of snapshots, on this project's VM). 32 MiB is ~65,000 commands of growth
 * here, and more than a batch adds even while a snapshot's reader keeps LMDB from
 * reusing pages (8 MiB in one batch was seen). */
#define LEDGER_WARM_AHEAD_BYTES (32ULL << 20)
#define LEDGER_WARM_STEP_BYTES (2ULL << 20)
uint64_t map_open_bytes(const struct tally_ledger_options *o); /* the map size to open with */
/* Around mdb_env_set_mapsize of a map of len bytes of fd, on this thread: LMDB's
 * remap becomes a growth where the map is, within its region, or a move (remap.c).
 * `lock` is map_lock when the caller does not hold it, which it may omit only when
 * remap_fits says the growth stays where the map is; remap_release after
 * mdb_env_close. */
bool remap_fits(const struct remap_region *r, size_t len);
void remap_expect(struct remap_region *r, size_t len, int fd, pthread_mutex_t *lock);
void remap_done(void);
void remap_release(struct remap_region *r);
/* Tests only: the least space a moved map is given (0: LEDGER_RESERVE_MIN_BYTES), so
 * that a test reaches a move without a gigabyte of data. */
void remap_set_reserve_min(size_t bytes);
int map_before_open(const char *dir, const struct tally_ledger_options *o);
int map_after_open(struct tally_ledger *l, const char *dir, const struct tally_ledger_options *o);
/* Before attempt 0 of a batch: room ahead of need; before attempt k > 0 (the previous
 * one ended with MDB_MAP_FULL): a bigger map, or TALLY_EFULL / TALLY_ENOSPC / ... */
int map_room(struct tally_ledger *l, unsigned attempt);
/* Around a read of the ledger on a thread other than the one that applies batches:
 * the map stays where it is (no remap) until map_unpin. */
void map_pin(struct tally_ledger *l);
void map_unpin(struct tally_ledger *l);

/* civil time (civil.c) */
int64_t day_of(int64_t time_ms);
int64_t add_months(int64_t time_ms, uint32_t months);
int64_t month_ceil(int64_t time_ms);

/* validation and authorization (auth.c) */
bool valid_brand_id(const char *s);
bool valid_member_id(const char *s);
bool valid_text(const char *s, size_t min, size_t max);
bool valid_points(int64_t p);
bool in_scope(const Tally__V1__Principal *p, const char *brand);
bool is_all_scope(const Tally__V1__Principal *p);
void command_pair(const Tally__V1__Command *c, const char *pair[2]);
#define ENTRY_BRANDS_MAX (POSTINGS_MAX + 3)
/* The distinct brands an entry touches (its own, a command's pair, its postings). */
size_t entry_brands(const Tally__V1__Entry *e, const char *out[ENTRY_BRANDS_MAX]);

/* results */
int reject(struct apply *a, Tally__V1__CommandResult *r, Tally__V1__ResultCode code,
	   const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void result_ok(Tally__V1__CommandResult *r, const Tally__V1__Account *acct);

/* entries (apply.c) */
uint64_t next_seq(const struct apply *a);
int post_member(struct apply *a, const char *brand, const char *member,
		Tally__V1__Bucket bucket, int64_t points);
int post_system(struct apply *a, const char *brand, Tally__V1__SystemAccount acct,
		const char *partner, int64_t points);
int sys_flush(struct apply *a);
int lot_move(struct apply *a, int64_t expiry_ms, int64_t points);
int emit_entry(struct apply *a, Tally__V1__EntryKind kind, Tally__V1__CommandResult *r,
	       const char *brand, const char *member, uint64_t cause_seq);

/* the codec of the apply path (codec.c): protobuf-c's bytes, written and read faster.
 * Any protobuf-c message may be given; accounts, and entries and commands of accruals
 * and redemptions, are written by the codec, the rest by protobuf-c; accounts and
 * batches of accruals and redemptions are read by it.
 *
 * codec_pack: msg's size in bytes; its bytes are in out[0, size) when size <= cap (out
 * may be NULL with cap 0, for the size alone). */
size_t codec_pack(const void *msg, uint8_t *out, size_t cap);
/* msg's bytes in the arena, after `head` bytes left for the caller; *n: their count.
 * NULL when the arena is out of memory. One pass when they fit in CODEC_GUESS_BYTES
 * (an account: that and room for each of its lots at their longest). */
#define CODEC_GUESS_BYTES 1024
uint8_t *codec_pack_arena(struct tally_arena *arena, const void *msg, size_t head, size_t *n);
/* NULL when the bytes are not an Account or the arena is out of memory. */
Tally__V1__Account *account_unpack(struct tally_arena *arena, const uint8_t *data, size_t n);
/* Whether codec_pack writes the account itself (no unknown fields, no holds): its
 * bytes are then canonical, a lot's the same as codec_lot_field's. */
bool codec_account_plain(const Tally__V1__Account *acct);
/* An account's lot field as the codec writes it: tag, length and the Lot's bytes. */
#define CODEC_LOT_FIELD_BYTES_MAX (2 + 2 * (1 + 10))
size_t codec_lot_field(uint8_t out[CODEC_LOT_FIELD_BYTES_MAX], int64_t expiry_ms, int64_t points);
/* Calls each for the message's top-level fields in order, each with its tag and value
 * bytes; lot: an Account's lot field. false when the bytes are not well-formed fields. */
typedef void (*codec_field_fn)(void *ctx, bool lot, const uint8_t *at, size_t n);
bool codec_fields(const uint8_t *p, size_t n, codec_field_fn each, void *ctx);
/* A Batch of accruals and redemptions; NULL for any other bytes (then protobuf-c's
 * decoder judges them: tally_ledger_batch_decode) or when the arena is out of memory. */
Tally__V1__Batch *batch_unpack(struct tally_arena *arena, const uint8_t *data, size_t n);

/* accounts, lots, holds, tiers (account.c) */
int brand_get(struct apply *a, const char *id, Tally__V1__Brand **out);
int member_exists(struct apply *a, const char *id, bool *exists);
int account_open(struct apply *a, const Tally__V1__Brand *b, const char *member,
		 Tally__V1__Account **out, bool *fresh);
int account_save(struct apply *a, Tally__V1__Account *acct);
/* Writes the accounts the command saved or chained, and forgets the opened ones. */
int accounts_flush(struct apply *a);
struct open_account *account_opened(struct apply *a, const char *brand, const char *member);
int lots_take(struct apply *a, Tally__V1__Account *acct, int64_t points,
	      int64_t first_expiry_ms, bool record);
int lot_give(struct apply *a, Tally__V1__Account *acct, int64_t *expiry_ms, int64_t points);
bool lots_room(const struct apply *a, const Tally__V1__Account *acct, size_t more);
bool lot_room(const struct apply *a, const Tally__V1__Account *acct, int64_t expiry_ms);
int qualify(struct apply *a, const Tally__V1__Brand *b, Tally__V1__Account *acct,
	    int64_t day, int64_t points);
void tier_update(const Tally__V1__Brand *b, Tally__V1__Account *acct);
int daily_use(struct apply *a, enum daily_kind kind, const char *brand, const char *member,
	      const char *partner, int64_t points, int64_t cap, bool *over);
bool lot_valid(const struct apply *a, int64_t expiry_ms);
int64_t lot_expiry(const struct apply *a, const Tally__V1__Brand *b);
int hold_get(struct apply *a, uint64_t id, Tally__V1__HoldRecord **out);
int hold_store(struct apply *a, const Tally__V1__HoldRecord *h, bool open);
int hold_resolve(struct apply *a, Tally__V1__HoldRecord *h, int64_t capture_points,
		 Tally__V1__HoldStatus status, Tally__V1__CommandResult *r);
int hold_release(struct apply *a, Tally__V1__HoldRecord *h);
int holds_sweep(struct apply *a);
int expire_sweep(struct apply *a, uint32_t max_items, Tally__V1__CommandResult *r);

/* command handlers (commands.c, exchange.c) */
typedef int (*handler_fn)(struct apply *a, const Tally__V1__Command *c,
			  Tally__V1__CommandResult *r);
int do_register_brand(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_update_brand(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_open_member(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_update_member(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_accrue(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_import_points(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_set_rules(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_redeem(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_hold(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_capture(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_void(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_reverse(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_transfer(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_adjust(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_expire(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_set_agreement(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_exchange(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_settle(struct apply *, const Tally__V1__Command *, Tally__V1__CommandResult *);
int do_confirm_settlement(struct apply *, const Tally__V1__Command *,
			  Tally__V1__CommandResult *);

#endif /* TALLY_LEDGER_INTERNAL_H */
