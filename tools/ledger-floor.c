/*
 * ledger-floor: the least work any ledger built on LMDB must do per command of
 * ledger-bench's workload, without the ledger.
 *
 * It drives LMDB directly with the store operations one successful accrual or
 * redemption cannot do without, on tables laid out and sized as the ledger's, with
 * the same random member picks and request ids as ledger-bench and the same batches
 * (one write transaction each, MDB_NOSYNC | MDB_WRITEMAP):
 *
 *   - the idempotency claim: one insert of (key name, request id) → the entry's seq
 *     (8 bytes, the record under rules 3; 40 before, with the content's hash);
 *   - the account: found by its key and replaced by a record of the same size; on
 *     the account's first touch the member is looked up and the account inserted;
 *   - the journal entry: appended (as many bytes as the ledger's entries average),
 *     its leaf hash taken and appended to the Merkle tree with the ledger's node
 *     store (levels 4 and up kept, the ledger/store.c rule);
 *   - the state digest: one SHA-256 per record written (idempotency, account);
 *   - per batch: the meta record and the commit.
 *
 * What it leaves out is everything the ledger adds on top: decoding the batch,
 * validation, protobuf records, the second write of the idempotency record, the hash
 * of the replaced record, chain links, results. So `make bench-ledger` runs both,
 * one after the other: the ratio is the ledger's overhead over the floor, and the
 * floor's rate is a ceiling for any ledger on this store and machine. The last line
 * is "floor: N commands/s".
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1 /* the low-level SHA-256 calls, as ledger/hash.c */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <lmdb.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ledger/merkle.h"
#include "tools/bench.h"

#define ACCOUNT_BYTES 97   /* mean account record, chain head included (mdb_dump) */
#define MEMBER_BYTES 51    /* mean member record */
#define ENTRY_BYTES 185    /* mean stored entry: header, links and entry bytes */
#define ENTRY_HEAD_BYTES 24
#define IDEM_BYTES 8       /* the entry's seq (rules 3) */
#define TREE_LEVEL_STORED 4
#define MAP_SLACK_BYTES (256ULL << 20)
#define MAP_BYTES_PER_COMMAND 1024ULL
#define MAP_BYTES_PER_MEMBER 512ULL

enum { DB_IDEM, DB_MEMBERS, DB_ACCOUNTS, DB_ENTRIES, DB_TREE, DB_META, DB_N };
static const char *const db_names[DB_N] = {"idem", "members", "accounts", "entries", "tree",
					   "meta"};

struct floor {
	MDB_env *env;
	MDB_dbi dbi[DB_N];
	MDB_txn *txn;
	MDB_cursor *cur[DB_N];
	struct tally_merkle_frontier tree;
	uint8_t digest[32];
	uint64_t seq;
	long first_touches;
};

static uint64_t rng_state = BENCH_SEED;

static uint64_t rnd(void)
{
	return bench_rnd(&rng_state);
}

static double cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void check(int rc, const char *what)
{
	if (rc != 0) {
		fprintf(stderr, "ledger-floor: %s: %s\n", what, mdb_strerror(rc));
		exit(1);
	}
}

/* The record hash of the digest: SHA-256 over (table, key length, key, value). */
static void digest_record(struct floor *f, int db, const MDB_val *k, const void *v, size_t n)
{
	uint8_t head[3] = {(uint8_t)db, 0, (uint8_t)k->mv_size}, h[32];
	SHA256_CTX c;
	SHA256_Init(&c);
	SHA256_Update(&c, head, sizeof(head));
	SHA256_Update(&c, k->mv_data, k->mv_size);
	SHA256_Update(&c, v, n);
	SHA256_Final(h, &c);
	for (int i = 0; i < 32; i++)
		f->digest[i] ^= h[i]; /* the shape of the work; the ledger adds mod 2^256 */
}

/* Writes v in decimal after prefix into out (NUL-terminated); returns the length. */
static size_t id_fmt(char *out, const char *prefix, size_t n_prefix, long v)
{
	char digits[24];
	size_t d = 0;
	do
		digits[d++] = (char)('0' + v % 10);
	while ((v /= 10) > 0);
	memcpy(out, prefix, n_prefix);
	for (size_t i = 0; i < d; i++)
		out[n_prefix + i] = digits[d - 1 - i];
	out[n_prefix + d] = '\0';
	return n_prefix + d;
}

static int tree_put(void *ctx, unsigned level, uint64_t index, const uint8_t hash[32])
{
	struct floor *f = ctx;
	if (level < TREE_LEVEL_STORED)
		return 0;
	uint8_t kb[9];
	kb[0] = (uint8_t)level;
	for (int i = 0; i < 8; i++)
		kb[1 + i] = (uint8_t)(index >> (56 - 8 * i));
	MDB_val k = {sizeof(kb), kb}, v = {32, (void *)hash};
	return mdb_put(f->txn, f->dbi[DB_TREE], &k, &v, 0);
}

static int tree_get(void *ctx, unsigned level, uint64_t index, uint8_t out[32])
{
	(void)ctx, (void)level, (void)index, (void)out;
	return -1; /* appending never reads */
}

static void begin(struct floor *f)
{
	check(mdb_txn_begin(f->env, NULL, 0, &f->txn), "begin");
	for (int d = 0; d < DB_N; d++)
		check(mdb_cursor_open(f->txn, f->dbi[d], &f->cur[d]), "cursor");
}

static void commit(struct floor *f)
{
	uint8_t meta[8 + 32];
	for (int i = 0; i < 8; i++)
		meta[i] = (uint8_t)(f->seq >> (56 - 8 * i));
	memcpy(meta + 8, f->digest, 32);
	MDB_val k = {4, (void *)"meta"}, v = {sizeof(meta), meta};
	check(mdb_put(f->txn, f->dbi[DB_META], &k, &v, 0), "meta");
	for (int d = 0; d < DB_N; d++)
		mdb_cursor_close(f->cur[d]);
	check(mdb_txn_commit(f->txn), "commit");
}

static void entry_append(struct floor *f)
{
	uint8_t kb[8];
	f->seq++;
	for (int i = 0; i < 8; i++)
		kb[i] = (uint8_t)(f->seq >> (56 - 8 * i));
	MDB_val k = {8, kb}, v = {ENTRY_BYTES, NULL};
	check(mdb_put(f->txn, f->dbi[DB_ENTRIES], &k, &v, MDB_APPEND | MDB_RESERVE), "entry");
	uint8_t *p = v.mv_data;
	memset(p, (int)(f->seq & 0xff), ENTRY_BYTES); /* stands for the encoding */
	memcpy(p, kb, 8);
	uint8_t leaf[32];
	tally_merkle_leaf_hash(p + ENTRY_HEAD_BYTES, ENTRY_BYTES - ENTRY_HEAD_BYTES, leaf);
	struct tally_merkle_store s = {f, tree_get, tree_put};
	check(tally_merkle_append(&f->tree, &s, leaf), "tree");
}

static void account_touch(struct floor *f, const char *member, size_t n_member)
{
	char kb[64];
	memcpy(kb, "aurora", 7); /* with its NUL separator */
	memcpy(kb + 7, member, n_member);
	MDB_val k = {7 + n_member, kb}, v;
	uint8_t rec[ACCOUNT_BYTES];
	int rc = mdb_cursor_get(f->cur[DB_ACCOUNTS], &k, &v, MDB_SET_KEY);
	if (rc == MDB_NOTFOUND) {
		MDB_val mk = {n_member, (void *)member}, mv;
		check(mdb_cursor_get(f->cur[DB_MEMBERS], &mk, &mv, MDB_SET_KEY), "member");
		memset(rec, 0, sizeof(rec));
		f->first_touches++;
	} else {
		check(rc, "account");
		memcpy(rec, v.mv_data, sizeof(rec));
	}
	rec[ACCOUNT_BYTES - 1]++; /* the balance moves */
	k.mv_size = 7 + n_member;
	k.mv_data = kb;
	MDB_val nv = {sizeof(rec), rec};
	check(mdb_cursor_put(f->cur[DB_ACCOUNTS], &k, &nv, rc == 0 ? MDB_CURRENT : 0), "put");
	digest_record(f, DB_ACCOUNTS, &k, rec, sizeof(rec));
}

/* One command of ledger-bench's mix: the same draws in the same order (member,
 * points, kind), the same request id. */
static void command(struct floor *f, long i, long members)
{
	char member[32], kb[64];
	size_t n_member = id_fmt(member, "m", 1, (long)(rnd() % (uint64_t)members));
	if (n_member < 8) { /* m%07ld */
		memmove(member + 1 + (8 - n_member), member + 1, n_member);
		memset(member + 1, '0', 8 - n_member);
		n_member = 8;
	}
	(void)rnd(); /* the points */
	bool dealer = rnd() % 10 < 7;
	size_t n = dealer ? id_fmt(kb, "dealer\0op-", 10, i) : id_fmt(kb, "mall\0op-", 8, i);
	MDB_val k = {n, kb};
	uint8_t idem[IDEM_BYTES] = {0};
	MDB_val v = {sizeof(idem), idem};
	check(mdb_cursor_put(f->cur[DB_IDEM], &k, &v, MDB_NOOVERWRITE), "idem");
	digest_record(f, DB_IDEM, &k, idem, sizeof(idem));
	account_touch(f, member, n_member);
	entry_append(f);
}

static void open_env(struct floor *f, const char *dir, long commands, long members)
{
	size_t map = MAP_SLACK_BYTES + (size_t)commands * MAP_BYTES_PER_COMMAND +
		     (size_t)members * MAP_BYTES_PER_MEMBER;
	check(mdb_env_create(&f->env), "env");
	check(mdb_env_set_maxdbs(f->env, DB_N), "maxdbs");
	check(mdb_env_set_mapsize(f->env, map), "mapsize");
	check(mdb_env_open(f->env, dir, MDB_NOSYNC | MDB_WRITEMAP | MDB_NOTLS, 0600), "open");
	char path[4200];
	snprintf(path, sizeof(path), "%s/data.mdb", dir);
	int fd = open(path, O_RDWR); /* blocks allocated under the whole map, as the ledger's */
	if (fd < 0 || posix_fallocate(fd, 0, (off_t)map) != 0) {
		fprintf(stderr, "ledger-floor: %s: cannot allocate %zu bytes\n", path, map);
		exit(1);
	}
	close(fd);
	MDB_txn *txn;
	check(mdb_txn_begin(f->env, NULL, 0, &txn), "begin");
	for (int d = 0; d < DB_N; d++)
		check(mdb_dbi_open(txn, db_names[d], MDB_CREATE, &f->dbi[d]), db_names[d]);
	check(mdb_txn_commit(txn), "commit");
	tally_merkle_frontier_init(&f->tree);
}

static void setup_members(struct floor *f, long members)
{
	for (long i = 0; i < members; i += 1000) {
		begin(f);
		for (long j = i; j < members && j < i + 1000; j++) {
			char id[32];
			uint8_t rec[MEMBER_BYTES] = {0};
			snprintf(id, sizeof(id), "m%07ld", j);
			MDB_val k = {strlen(id), id}, v = {sizeof(rec), rec};
			check(mdb_cursor_put(f->cur[DB_MEMBERS], &k, &v, 0), "member");
			digest_record(f, DB_MEMBERS, &k, rec, sizeof(rec));
			entry_append(f);
		}
		commit(f);
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: ledger-floor [--commands N] [--members M] [--batch B] [--dir D]\n"
			"  the same workload and defaults as ledger-bench --writemap\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option longs[] = {
		{"commands", required_argument, NULL, 'n'}, {"members", required_argument, NULL, 'm'},
		{"batch", required_argument, NULL, 'b'},    {"dir", required_argument, NULL, 'd'},
		{NULL, 0, NULL, 0}};
	long commands = 1000000, members = 100000, batch = 1000;
	const char *dir = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
		switch (c) {
		case 'n': commands = atol(optarg); break;
		case 'm': members = atol(optarg); break;
		case 'b': batch = atol(optarg); break;
		case 'd': dir = optarg; break;
		default: usage();
		}
	}
	if (commands <= 0 || members <= 0 || batch <= 0)
		usage();
	char tmpl[] = "/tmp/tally-floor-XXXXXX";
	const char *d = dir != NULL ? dir : mkdtemp(tmpl);
	if (d == NULL) {
		perror("mkdtemp");
		return 1;
	}
	struct floor f = {0};
	open_env(&f, d, commands, members);
	setup_members(&f, members);
	double start = bench_now_s(), cpu0 = cpu_s();
	for (long i = 0; i < commands; i += batch) {
		begin(&f);
		for (long j = i; j < commands && j < i + batch; j++)
			command(&f, j, members);
		commit(&f);
	}
	double secs = bench_now_s() - start, cpu = cpu_s() - cpu0;
	printf("floor: %ld commands (%ld first touches of an account) in %.3f s, %.3f s CPU, "
	       "%.2f us CPU per command\n", commands, f.first_touches, secs, cpu,
	       cpu * 1e6 / (double)commands);
	printf("floor: %.0f commands/s\n", (double)commands / secs);
	mdb_env_close(f.env);
	if (dir == NULL) {
		char p[4200];
		snprintf(p, sizeof(p), "%s/data.mdb", d);
		unlink(p);
		snprintf(p, sizeof(p), "%s/lock.mdb", d);
		unlink(p);
		rmdir(d);
	}
	return 0;
}
