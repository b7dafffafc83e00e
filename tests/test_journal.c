/*
 * The journal's segment files (ledger/journal.c): every replica writes the same bytes,
 * a journal longer than LMDB is cut back at open and a shorter one refused, a failed
 * batch leaves no record behind, a snapshot carries the segments, and a ledger whose
 * entries an older format stored inside LMDB is read as it is and goes on in segments.
 */
#include "ledger/internal.h"
#include "tests/util.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MEMBERS 20

static const char *const member_ids[MEMBERS] = {
	"m00", "m01", "m02", "m03", "m04", "m05", "m06", "m07", "m08", "m09",
	"m10", "m11", "m12", "m13", "m14", "m15", "m16", "m17", "m18", "m19"};

/* A brand, members, and `batches` batches of 50 accruals and redemptions. */
static void fill(struct fx *f, unsigned batches)
{
	for (unsigned b = 0; b < batches; b++) {
		Tally__V1__Command *cmds[50];
		for (unsigned i = 0; i < 50; i++) {
			const char *m = member_ids[(b * 50 + i) % MEMBERS];
			cmds[i] = i % 4 == 3 ? c_redeem(f, admin(f), "aurora", m, 1)
					     : c_accrue(f, admin(f), "aurora", m, 10 + i);
		}
		Tally__V1__CommandResult **rs = apply_n(f, cmds, 50);
		for (unsigned i = 0; i < 50; i++)
			assert_int_equal(rs[i]->code, TALLY__V1__RESULT_CODE__OK);
	}
}

static void open_filled(struct fx *f, unsigned batches)
{
	fx_open(f);
	setup_brand(f, "aurora", 0);
	setup_members(f, member_ids, MEMBERS);
	for (unsigned i = 0; i < MEMBERS; i++)
		ok(f, c_accrue(f, admin(f), "aurora", member_ids[i], 1000));
	fill(f, batches);
}

static void journal_path(const char *ledger_dir, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s/journal", ledger_dir);
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names of the files in dir, sorted (free each and the array). */
static char **segment_names_in(const char *path, size_t *n)
{
	DIR *d = opendir(path);
	assert_non_null(d);
	char **names = NULL;
	*n = 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		if (e->d_name[0] == '.')
			continue;
		names = realloc(names, (*n + 1) * sizeof(*names));
		assert_non_null(names);
		names[(*n)++] = strdup(e->d_name);
	}
	closedir(d);
	if (*n > 1)
		qsort(names, *n, sizeof(*names), name_cmp);
	return names;
}

/* The segment files' names in dir/journal, sorted. */
static char **segment_names(const char *dir, size_t *n)
{
	char path[512];
	journal_path(dir, path, sizeof(path));
	return segment_names_in(path, n);
}

static void free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

static uint8_t *file_bytes(const char *dir, const char *name, size_t *len)
{
	char path[600];
	snprintf(path, sizeof(path), "%s/journal/%s", dir, name);
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	uint8_t *p = malloc((size_t)st.st_size + 1);
	assert_non_null(p);
	assert_int_equal(pread(fd, p, (size_t)st.st_size, 0), st.st_size);
	close(fd);
	*len = (size_t)st.st_size;
	return p;
}

/* Both ledgers' journals hold the same files with the same bytes; returns how many. */
static size_t assert_same_segments(const char *a, const char *b)
{
	size_t na, nb;
	char **fa = segment_names(a, &na), **fb = segment_names(b, &nb);
	assert_int_equal(na, nb);
	for (size_t i = 0; i < na; i++) {
		assert_string_equal(fa[i], fb[i]);
		size_t la, lb;
		uint8_t *pa = file_bytes(a, fa[i], &la), *pb = file_bytes(b, fb[i], &lb);
		assert_int_equal(la, lb);
		assert_memory_equal(pa, pb, la);
		free(pa);
		free(pb);
	}
	free_names(fa, na);
	free_names(fb, nb);
	return na;
}

static void assert_same_content(struct fx *a, struct fx *b)
{
	uint8_t ha[32], hb[32];
	assert_int_equal(tally_ledger_content_hash(a->l, ha), 0);
	assert_int_equal(tally_ledger_content_hash(b->l, hb), 0);
	assert_memory_equal(ha, hb, 32);
}

static void test_replicas_write_the_same_segments_each_closed_at_its_size(void **state)
{
	(void)state;
	struct fx a, b;
	open_filled(&a, 40);
	open_filled(&b, 40);
	size_t n = assert_same_segments(a.dir, b.dir);
	assert_true(n >= 3);
	assert_same_content(&a, &b);
	/* Every segment but the last is closed: within its size, and the next one begins
	 * where its last entry ended. */
	char **names = segment_names(a.dir, &n);
	uint64_t expect_first = 1;
	for (size_t i = 0; i < n; i++) {
		size_t len;
		uint8_t *p = file_bytes(a.dir, names[i], &len);
		assert_true(len <= FX_JOURNAL_SEGMENT_BYTES);
		char want[32];
		snprintf(want, sizeof(want), "%020llu.seg", (unsigned long long)expect_first);
		assert_string_equal(names[i], want);
		for (size_t off = 0; off < len; expect_first++)
			off += JOURNAL_RECORD_HEAD + be32_get(p + off);
		free(p);
	}
	assert_int_equal(expect_first - 1, tally_ledger_journal_size(a.l));
	free_names(names, n);
	assert_invariants(&a);
	fx_close(&a);
	fx_close(&b);
}

/* fill's batches, `per` at a time in one transaction (tally_ledger_apply_group). */
static void fill_grouped(struct fx *f, unsigned batches, unsigned per)
{
	enum { PER_MAX = 16 };
	assert_true(per <= PER_MAX);
	Tally__V1__Command *cmds[PER_MAX][50];
	Tally__V1__Batch store[PER_MAX];
	const Tally__V1__Batch *bs[PER_MAX];
	Tally__V1__CommandResult **rs[PER_MAX];
	bool skipped[PER_MAX];
	for (unsigned b = 0; b < batches;) {
		unsigned n = batches - b < per ? batches - b : per;
		for (unsigned k = 0; k < n; k++, b++) {
			for (unsigned i = 0; i < 50; i++) {
				const char *m = member_ids[(b * 50 + i) % MEMBERS];
				cmds[k][i] = i % 4 == 3 ? c_redeem(f, admin(f), "aurora", m, 1)
						       : c_accrue(f, admin(f), "aurora", m, 10 + i);
			}
			store[k] = (Tally__V1__Batch)TALLY__V1__BATCH__INIT;
			store[k].raft_index = ++f->index;
			store[k].raft_term = 1;
			store[k].time_ms = f->now_ms;
			store[k].commands = cmds[k];
			store[k].n_commands = 50;
			bs[k] = &store[k];
		}
		struct tally_ledger_group g = {.batches = bs, .n = n, .results = rs, .skipped = skipped};
		tally_arena_reset(&f->results);
		assert_int_equal(tally_ledger_apply_group(f->l, &g, &f->results), 0);
		for (unsigned k = 0; k < n; k++)
			for (unsigned i = 0; i < 50; i++)
				assert_int_equal(rs[k][i]->code, TALLY__V1__RESULT_CODE__OK);
	}
}

/* A follower applies a raft pass's entries in one transaction: its segments are still
 * the leader's, byte for byte, and a group that fails leaves none of its records. */
static void test_batches_applied_in_groups_write_the_same_segments(void **state)
{
	(void)state;
	struct fx a, b;
	open_filled(&a, 40);
	open_filled(&b, 0);
	fill_grouped(&b, 40, 7);
	assert_true(assert_same_segments(a.dir, b.dir) >= 3);
	assert_same_content(&a, &b);
	/* A group whose last batch cannot fit in a map of 1 MiB: nothing of it stays. */
	fx_ledger_close(&b);
	struct tally_ledger_options o = {.map_size_bytes = 1u << 20, .nosync = true,
					 .journal_segment_bytes = FX_JOURNAL_SEGMENT_BYTES};
	assert_int_equal(tally_ledger_open(b.dir, &o, &b.l), 0);
	unsigned req = b.req;
	uint64_t index = b.index;
	Tally__V1__Command *small[50];
	for (unsigned i = 0; i < 50; i++)
		small[i] = c_accrue(&b, admin(&b), "aurora", member_ids[i % MEMBERS], 5);
	size_t big = 8000;
	Tally__V1__Command **many = malloc(big * sizeof(*many));
	assert_non_null(many);
	for (size_t i = 0; i < big; i++) {
		char id[32];
		snprintf(id, sizeof(id), "new-member-%06zu", i);
		many[i] = c_member(&b, admin(&b), sdup(&b, id));
	}
	Tally__V1__Batch one = TALLY__V1__BATCH__INIT, two = TALLY__V1__BATCH__INIT;
	one.raft_index = index + 1;
	two.raft_index = index + 2;
	one.raft_term = two.raft_term = 1;
	one.time_ms = two.time_ms = b.now_ms;
	one.commands = small;
	one.n_commands = 50;
	two.commands = many;
	two.n_commands = big;
	const Tally__V1__Batch *bs[2] = {&one, &two};
	Tally__V1__CommandResult **rs[2];
	bool skipped[2];
	struct tally_ledger_group g = {.batches = bs, .n = 2, .results = rs, .skipped = skipped};
	int rc = tally_ledger_apply_group(b.l, &g, &b.results);
	assert_true(rc == TALLY_EFULL || rc == TALLY_ENOSPC);
	free(many);
	assert_int_equal(tally_ledger_applied_index(b.l), index);
	assert_same_segments(a.dir, b.dir);
	assert_same_content(&a, &b);
	b.req = req;
	fx_ledger_close(&b);
	assert_int_equal(fx_ledger_open(&b), 0);
	fill(&a, 3);
	fill_grouped(&b, 3, 2);
	assert_same_segments(a.dir, b.dir);
	assert_same_content(&a, &b);
	fx_close(&a);
	fx_close(&b);
}

static void append_junk(const char *dir, const char *name)
{
	char path[600];
	snprintf(path, sizeof(path), "%s/journal/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	assert_true(fd >= 0);
	static const char junk[] = "\x00\x00\x01\x00 half of a record the crash cut";
	assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
	close(fd);
}

static void test_a_journal_longer_than_lmdb_is_cut_back_at_open(void **state)
{
	(void)state;
	struct fx a, b;
	open_filled(&a, 12);
	open_filled(&b, 12);
	fx_ledger_close(&a);
	size_t n;
	char **names = segment_names(a.dir, &n);
	append_junk(a.dir, names[n - 1]);
	append_junk(a.dir, "00000000000099999999.seg"); /* a segment LMDB never named */
	free_names(names, n);
	assert_int_equal(fx_ledger_open(&a), 0);
	assert_same_segments(a.dir, b.dir);
	assert_same_content(&a, &b);
	/* Both go on alike. */
	fill(&a, 6);
	fill(&b, 6);
	assert_same_segments(a.dir, b.dir);
	assert_same_content(&a, &b);
	assert_invariants(&a);
	fx_close(&a);
	fx_close(&b);
}

static void test_a_journal_shorter_than_lmdb_is_refused(void **state)
{
	(void)state;
	struct fx a;
	open_filled(&a, 12);
	fx_ledger_close(&a);
	size_t n;
	char **names = segment_names(a.dir, &n);
	char path[600];
	snprintf(path, sizeof(path), "%s/journal/%s", a.dir, names[n - 1]);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(truncate(path, st.st_size - 1), 0);
	assert_int_equal(fx_ledger_open(&a), TALLY_ECORRUPT);
	assert_null(a.l);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(fx_ledger_open(&a), TALLY_ECORRUPT);
	assert_null(a.l);

	free_names(names, n);

	/* A segment lost from the middle: the open does not read it, the check does. */
	struct fx b;
	open_filled(&b, 40);
	fx_ledger_close(&b);
	names = segment_names(b.dir, &n);
	assert_true(n >= 3);
	char lost[600];
	snprintf(lost, sizeof(lost), "%s/journal/%s", b.dir, names[1]);
	assert_int_equal(unlink(lost), 0);
	assert_int_equal(fx_ledger_open(&b), 0);
	char msg[256];
	assert_int_not_equal(tally_ledger_check_invariants(b.l, msg, sizeof(msg)), 0);
	print_message("check: %s\n", msg);
	free_names(names, n);
	fx_close(&a);
	fx_close(&b);
}

/* A batch too large for the map (1 MiB here) fails whole; its records are gone from
 * the segments. */
static void test_a_failed_batch_leaves_no_record_behind(void **state)
{
	(void)state;
	struct fx a, b;
	open_filled(&a, 2);
	open_filled(&b, 2);
	fx_ledger_close(&a);
	struct tally_ledger_options o = {.map_size_bytes = 1u << 20, .nosync = true,
					 .journal_segment_bytes = FX_JOURNAL_SEGMENT_BYTES};
	assert_int_equal(tally_ledger_open(a.dir, &o, &a.l), 0);
	size_t big = 8000;
	unsigned req = a.req; /* the request ids the failed batch used come again */
	Tally__V1__Command **cmds = malloc(big * sizeof(*cmds));
	assert_non_null(cmds);
	for (size_t i = 0; i < big; i++) {
		char id[32];
		snprintf(id, sizeof(id), "new-member-%06zu", i);
		cmds[i] = c_member(&a, admin(&a), sdup(&a, id));
	}
	Tally__V1__Batch batch = TALLY__V1__BATCH__INIT;
	batch.raft_index = a.index + 1;
	batch.raft_term = 1;
	batch.time_ms = a.now_ms;
	batch.commands = cmds;
	batch.n_commands = big;
	Tally__V1__CommandResult **rs;
	bool skipped;
	int rc = tally_ledger_apply_batch(a.l, &batch, &a.results, &rs, &skipped);
	print_message("a batch of %zu new members in a map of 1 MiB: %s\n", big, tally_strerror(rc));
	assert_true(rc == TALLY_EFULL || rc == TALLY_ENOSPC);
	free(cmds);
	a.req = req;
	assert_same_segments(a.dir, b.dir);
	fx_ledger_close(&a);
	assert_int_equal(fx_ledger_open(&a), 0);
	fill(&a, 3);
	fill(&b, 3);
	assert_same_segments(a.dir, b.dir);
	assert_same_content(&a, &b);
	fx_close(&a);
	fx_close(&b);
}

/* n records of 1000 bytes, record i filled with byte fill + i, as one batch. */
static void journal_batch(struct journal *j, uint64_t first_seq, unsigned n, uint8_t fill,
			  uint8_t index[][JOURNAL_INDEX_BYTES], bool commit)
{
	journal_begin(j);
	for (unsigned i = 0; i < n; i++) {
		uint8_t *p;
		assert_int_equal(journal_reserve(j, first_seq + i, 1000, &p, index[i]), 0);
		memset(p, fill + i, 1000);
		MDB_val raw; /* the writer reads the batch's records before they are written */
		assert_int_equal(journal_pending_read(j, first_seq + i, &raw), 0);
		assert_ptr_equal(raw.mv_data, p);
	}
	assert_int_equal(journal_flush(j), 0);
	assert_int_equal(journal_settle(j, commit), 0);
}

static off_t file_size(const char *dir, uint64_t first)
{
	char path[600];
	snprintf(path, sizeof(path), "%s/journal/%020llu.seg", dir, (unsigned long long)first);
	struct stat st;
	return stat(path, &st) == 0 ? st.st_size : -1;
}

/* Records written for a batch whose LMDB transaction then failed are cut off, in the
 * segment they began in and in the ones they opened. */
static void test_records_written_for_a_batch_that_did_not_commit_are_cut_off(void **state)
{
	(void)state;
	char *dir = fx_tmpdir();
	struct journal j;
	uint8_t index[16][JOURNAL_INDEX_BYTES];
	assert_int_equal(journal_open(&j, dir, true, 4096), 0);
	assert_int_equal(journal_settle_open(&j, 0, 0, NULL), 0);
	journal_batch(&j, 1, 6, 0x10, index, true); /* segments 1 (4 records) and 5 (2) */
	assert_int_equal(file_size(dir, 1), 4 * 1004);
	assert_int_equal(file_size(dir, 5), 2 * 1004);
	journal_batch(&j, 7, 5, 0x40, index, false); /* 7, 8 into segment 5; 9-11 into 9 */
	assert_int_equal(file_size(dir, 5), 2 * 1004);
	assert_int_equal(file_size(dir, 9), -1);
	journal_batch(&j, 7, 5, 0x60, index, true); /* the same places, other bytes */
	assert_int_equal(file_size(dir, 5), 4 * 1004);
	assert_int_equal(file_size(dir, 9), 3 * 1004);
	for (unsigned i = 0; i < 5; i++) {
		MDB_val raw;
		assert_int_equal(journal_read(&j, 7 + i, 7 + i, index[i], &raw), 0);
		assert_int_equal(raw.mv_size, 1000);
		assert_int_equal(((uint8_t *)raw.mv_data)[999], 0x60 + i);
		/* and reached from the segment's first record, stepping over the others */
		uint64_t key = 7 + i < 9 ? 7 : 9;
		MDB_val stepped;
		assert_int_equal(journal_read(&j, 7 + i, key, index[key - 7], &stepped), 0);
		assert_ptr_equal(stepped.mv_data, raw.mv_data);
	}
	MDB_val raw; /* a row of another segment, or one too far behind, reaches nothing */
	assert_int_equal(journal_read(&j, 9, 8, index[1], &raw), TALLY_ECORRUPT);
	assert_int_equal(journal_read(&j, 7 + JOURNAL_INDEX_STRIDE, 7, index[0], &raw),
			 TALLY_ECORRUPT);
	journal_close(&j);
	/* Open again: LMDB's last row is record 9's, the first of segment 9; the journal
	 * ends two records after it, at 3012. */
	assert_int_equal(journal_open(&j, dir, true, 4096), 0);
	assert_int_equal(journal_settle_open(&j, 11, 9, index[2]), 0);
	journal_batch(&j, 12, 1, 0x70, index, true);
	assert_int_equal(file_size(dir, 9), 4 * 1004);
	journal_close(&j);
	fx_remove_dir(dir);
	free(dir);
}

/* A segment whose file has another name (a snapshot's link) is copied, not cut or
 * written in place, when the journal goes back into it (LMDB behind after a crash). */
static void test_a_linked_segment_is_copied_before_it_is_cut_or_written(void **state)
{
	(void)state;
	char *dir = fx_tmpdir(), *links = fx_tmpdir();
	struct journal j;
	uint8_t index[16][JOURNAL_INDEX_BYTES];
	assert_int_equal(journal_open(&j, dir, true, 4096), 0);
	assert_int_equal(journal_settle_open(&j, 0, 0, NULL), 0);
	journal_batch(&j, 1, 6, 0x10, index, true); /* segments 1 (4 records) and 5 (2) */
	journal_close(&j);
	char seg[600], link5[600];
	snprintf(seg, sizeof(seg), "%s/journal/%020d.seg", dir, 5);
	snprintf(link5, sizeof(link5), "%s/%020d.seg", links, 5);
	assert_int_equal(link(seg, link5), 0);
	/* LMDB says the journal ends with record 5, the first of segment 5. */
	assert_int_equal(journal_open(&j, dir, true, 4096), 0);
	assert_int_equal(journal_settle_open(&j, 5, 5, index[4]), 0);
	assert_int_equal(file_size(dir, 5), 1004);
	journal_batch(&j, 6, 2, 0x50, index, true);
	assert_int_equal(file_size(dir, 5), 3 * 1004);
	journal_close(&j);
	struct stat st;
	assert_int_equal(stat(link5, &st), 0);
	assert_int_equal(st.st_size, 2 * 1004); /* the link's bytes as they were */
	uint8_t b[2 * 1004];
	int fd = open(link5, O_RDONLY);
	assert_int_equal(read(fd, b, sizeof(b)), (ssize_t)sizeof(b));
	close(fd);
	assert_int_equal(b[1004 + 4 + 999], 0x10 + 5);
	fx_remove_dir(dir);
	fx_remove_dir(links);
	free(dir);
	free(links);
}


static void test_a_snapshot_carries_the_segments_and_a_restore_writes_them_again(void **state)
{
	(void)state;
	struct fx a, c;
	open_filled(&a, 30);
	size_t len;
	uint8_t *snap = fx_snapshot(&a, &len);
	char *dir = fx_tmpdir();
	struct tally_ledger *l = NULL;
	struct tally_ledger_options o = {.map_size_bytes = 1ULL << 30, .nosync = true,
					 .journal_segment_bytes = FX_JOURNAL_SEGMENT_BYTES};
	bool pending;
	/* Restored over a ledger that already holds other segments. */
	open_filled(&c, 45);
	fx_ledger_close(&c);
	assert_int_equal(tally_ledger_restore(c.dir, snap, len, &o, &l, &pending), 0);
	c.l = l;
	c.index = tally_ledger_applied_index(l);
	c.req = a.req; /* the same commands from here on */
	c.now_ms = a.now_ms;
	assert_true(assert_same_segments(a.dir, c.dir) >= 3);
	assert_same_content(&a, &c);
	assert_invariants(&c);
	free(snap);
	fill(&a, 5);
	fill(&c, 5);
	assert_same_segments(a.dir, c.dir);
	assert_same_content(&a, &c);
	fx_remove_dir(dir);
	free(dir);
	fx_close(&a);
	fx_close(&c);
}

/* A ledger whose snapshots link closed segments into links (unless `inline`: then
 * they carry every segment, and only a restore reads the links). */
static void open_links(struct fx *f, const char *links, bool inline_segments, unsigned batches)
{
	fx_open(f);
	fx_ledger_close(f);
	struct tally_ledger_options o = {.map_size_bytes = 1ULL << 30, .nosync = true,
					 .journal_segment_bytes = FX_JOURNAL_SEGMENT_BYTES,
					 .snapshot_links_dir = links,
					 .snapshot_segments_inline = inline_segments};
	assert_int_equal(tally_ledger_open(f->dir, &o, &f->l), 0);
	setup_brand(f, "aurora", 0);
	setup_members(f, member_ids, MEMBERS);
	for (unsigned i = 0; i < MEMBERS; i++)
		ok(f, c_accrue(f, admin(f), "aurora", member_ids[i], 1000));
	fill(f, batches);
}

/* Restores snap into a new ledger directory (into *dir) with links as its links. */
static int restore_new(const uint8_t *snap, size_t len, const char *links, char **dir,
		       struct tally_ledger **l)
{
	*dir = fx_tmpdir();
	struct tally_ledger_options o = {.map_size_bytes = 1ULL << 30, .nosync = true,
					 .journal_segment_bytes = FX_JOURNAL_SEGMENT_BYTES,
					 .snapshot_links_dir = links};
	bool pending;
	*l = NULL;
	return tally_ledger_restore(*dir, snap, len, &o, l, &pending);
}

/* How many of the journal's segments in ledger dir are files of links_dir too. */
static size_t segments_shared(const char *dir, const char *links_dir)
{
	char jdir[600];
	snprintf(jdir, sizeof(jdir), "%s/journal", dir);
	size_t n, shared = 0;
	char **names = segment_names_in(jdir, &n);
	for (size_t i = 0; i < n; i++) {
		char a[900], b[900];
		struct stat sa, sb;
		snprintf(a, sizeof(a), "%s/%s", jdir, names[i]);
		snprintf(b, sizeof(b), "%s/%s", links_dir, names[i]);
		if (stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_ino == sb.st_ino)
			shared++;
	}
	free_names(names, n);
	return shared;
}

static void assert_content_of(struct tally_ledger *l, struct fx *f)
{
	uint8_t ha[32], hb[32];
	assert_int_equal(tally_ledger_content_hash(l, ha), 0);
	assert_int_equal(tally_ledger_content_hash(f->l, hb), 0);
	assert_memory_equal(ha, hb, 32);
	char msg[256];
	assert_int_equal(tally_ledger_check_invariants(l, msg, sizeof(msg)), 0);
}

/* Restores snap where links are into a new directory: the content of `like`, and
 * (unless NULL) the segment files of segments_of; the directory is removed after. */
static void assert_restores_as(const uint8_t *snap, size_t len, const char *links,
			       struct fx *like, const char *segments_of)
{
	char *dir;
	struct tally_ledger *l;
	assert_int_equal(restore_new(snap, len, links, &dir, &l), 0);
	assert_content_of(l, like);
	if (segments_of != NULL)
		assert_same_segments(segments_of, dir);
	tally_ledger_close(l);
	fx_remove_dir(dir);
	free(dir);
}

/* The snapshot with the appendix a sender's transport puts after it, for a receiver
 * that holds held[] (*left_out: how many segments it leaves out). */
static uint8_t *with_appendix_for(const uint8_t *snap, size_t len, const char *links,
				  const struct tally_segment_held *held, size_t n_held, size_t *out,
				  uint64_t *left_out)
{
	struct tally_snapshot_appendix a;
	assert_int_equal(tally_ledger_snapshot_appendix(snap, len, links, held, n_held, &a), 0);
	assert_true(a.bytes > 0 && a.snap_len <= len);
	uint8_t *p = malloc(a.snap_len + a.bytes);
	assert_non_null(p);
	memcpy(p, snap, a.snap_len);
	size_t at = a.snap_len;
	for (size_t i = 0; i < a.n_pieces; i++) {
		memcpy(p + at, a.pieces[i].base, a.pieces[i].len);
		at += a.pieces[i].len;
	}
	assert_int_equal(at, a.snap_len + a.bytes);
	if (left_out != NULL)
		*left_out = a.held;
	tally_ledger_snapshot_appendix_free(&a);
	*out = at;
	return p;
}

/* The snapshot with its appendix after it, as a sender's transport puts them. */
static uint8_t *with_appendix(const uint8_t *snap, size_t len, const char *links, size_t *out)
{
	return with_appendix_for(snap, len, links, NULL, 0, out, NULL);
}

static void test_a_snapshot_names_its_closed_segments_by_links_instead_of_copying_them(
	void **state)
{
	(void)state;
	char *links = fx_tmpdir();
	struct fx a, b;
	open_links(&a, links, false, 40);
	char *links_b = fx_tmpdir();
	open_links(&b, links_b, true, 40); /* the same ledger, snapshots inlining every segment */
	size_t len, inline_len;
	uint8_t *snap = fx_snapshot(&a, &len), *whole = fx_snapshot(&b, &inline_len);
	size_t n;
	char **names = segment_names(a.dir, &n);
	assert_true(n >= 3);
	uint64_t closed = 0;
	for (size_t i = 0; i + 1 < n; i++) { /* each closed segment: a second name for it */
		char seg[600], link[600];
		snprintf(seg, sizeof(seg), "%s/journal/%s", a.dir, names[i]);
		snprintf(link, sizeof(link), "%s/%s", links, names[i]);
		struct stat s1, s2;
		assert_int_equal(stat(seg, &s1), 0);
		assert_int_equal(stat(link, &s2), 0);
		assert_int_equal(s1.st_ino, s2.st_ino);
		closed += (uint64_t)s1.st_size;
	}
	char last[600];
	snprintf(last, sizeof(last), "%s/%s", links, names[n - 1]);
	assert_int_not_equal(access(last, F_OK), 0); /* the open one is inlined */
	print_message("snapshot %zu bytes naming %llu bytes of closed segments; inlined %zu\n",
		      len, (unsigned long long)closed, inline_len);
	assert_true(len + closed <= inline_len + 4096);
	size_t made;
	char **none = segment_names_in(links_b, &made);
	assert_int_equal(made, 0); /* no link where snapshots inline */
	free_names(none, made);

	/* Restored where the links are: the same ledger, the same segment files. */
	assert_restores_as(snap, len, links, &b, a.dir);
	char *dir;
	struct tally_ledger *l;
	char why[4200];
	assert_false(tally_ledger_snapshot_unresolved(snap, len, links, why, sizeof(why)));
	/* Where there are none: refused, and the segment is named. */
	assert_int_equal(restore_new(snap, len, NULL, &dir, &l), TALLY_ECORRUPT);
	assert_true(tally_ledger_snapshot_unresolved(snap, len, NULL, why, sizeof(why)));
	assert_non_null(strstr(why, "00000000000000000001.seg"));
	assert_null(l);
	fx_remove_dir(dir);
	free(dir);
	/* A link of the wrong length: refused. */
	char link0[600];
	snprintf(link0, sizeof(link0), "%s/%s", links, names[0]);
	struct stat st;
	assert_int_equal(stat(link0, &st), 0);
	assert_int_equal(truncate(link0, st.st_size - 1), 0);
	assert_int_equal(restore_new(snap, len, links, &dir, &l), TALLY_ECORRUPT);
	assert_true(tally_ledger_snapshot_unresolved(snap, len, links, why, sizeof(why)));
	print_message("unresolved: %s\n", why);
	fx_remove_dir(dir);
	free(dir);
	free_names(names, n);
	free(snap);
	free(whole);
	fx_close(&a);
	fx_close(&b);
	fx_remove_dir(links);
	free(links);
	fx_remove_dir(links_b);
	free(links_b);
}

/* A copy of links_dir's links and sidecars in a new directory, but the link of the
 * segment at first seq `drop` (0: none). */
static char *links_copy(const char *links_dir, uint64_t drop)
{
	char *to = fx_tmpdir();
	size_t n;
	char **names = segment_names_in(links_dir, &n);
	char dropped[64];
	snprintf(dropped, sizeof(dropped), "%020llu.seg", (unsigned long long)drop);
	for (size_t i = 0; i < n; i++) {
		if (drop != 0 && strcmp(names[i], dropped) == 0)
			continue;
		char a[900], b[900];
		snprintf(a, sizeof(a), "%s/%s", links_dir, names[i]);
		snprintf(b, sizeof(b), "%s/%s", to, names[i]);
		assert_int_equal(link(a, b), 0);
	}
	free_names(names, n);
	return to;
}

static void test_an_install_leaves_out_what_the_receiver_holds_and_no_more(void **state)
{
	(void)state;
	char *links = fx_tmpdir();
	struct fx a;
	open_links(&a, links, false, 40);
	size_t len;
	uint8_t *snap = fx_snapshot(&a, &len);
	/* What a node holds: every link with its sidecar, by first seq, as the sidecar and
	 * the file say; a link without its sidecar is not vouched for. */
	struct tally_segment_held *held;
	size_t n_held;
	assert_int_equal(tally_ledger_segments_held(links, &held, &n_held), 0);
	size_t n_names;
	char **names = segment_names_in(links, &n_names);
	assert_true(n_held >= 3 && 2 * n_held == n_names);
	free_names(names, n_names);
	assert_int_equal(held[0].first, 1);
	for (size_t i = 0; i < n_held; i++) {
		char link_path[600], sidecar[620];
		snprintf(link_path, sizeof(link_path), "%s/%020llu.seg", links,
			 (unsigned long long)held[i].first);
		snprintf(sidecar, sizeof(sidecar), "%s.sha256", link_path);
		struct stat st;
		assert_int_equal(stat(link_path, &st), 0);
		assert_int_equal(held[i].len, (uint64_t)st.st_size);
		uint8_t sha[32];
		int fd = open(sidecar, O_RDONLY);
		assert_int_equal(pread(fd, sha, 32, 0), 32);
		close(fd);
		assert_memory_equal(held[i].sha, sha, 32);
		assert_true(i == 0 || held[i].first > held[i - 1].first);
	}
	size_t whole_len;
	uint8_t *whole = with_appendix(snap, len, links, &whole_len);

	/* A receiver that holds all but the first: only the first is carried. */
	uint64_t left_out;
	size_t sent_len;
	uint8_t *sent = with_appendix_for(snap, len, links, held + 1, n_held - 1, &sent_len,
					  &left_out);
	assert_int_equal(left_out, n_held - 1);
	/* at most, sent on: all of them (what an install timeout is sized by) */
	assert_int_equal(tally_ledger_snapshot_sent_bytes(sent, sent_len), whole_len);
	uint64_t carried_len = held[0].len;
	for (size_t i = 1; i < n_held; i++)
		assert_true(sent_len + held[i].len <= whole_len);
	print_message("appendix for a receiver holding %zu of %zu segments: %zu bytes against "
		      "%zu\n", n_held - 1, n_held, sent_len - len, whole_len - len);
	assert_true(sent_len - len < carried_len + 8 * n_held + 64);
	char *mine = links_copy(links, 0); /* the receiver's own links */
	char why[4200];
	assert_int_equal(tally_ledger_snapshot_unresolved(sent, sent_len, mine, why, sizeof(why)),
			 TALLY_SNAPSHOT_RESOLVES);
	assert_restores_as(sent, sent_len, mine, &a, a.dir);

	/* Sent on by that receiver (the snapshot it stored): what its appendix carried
	 * and what its links hold, to a node with nothing. */
	size_t on_len;
	uint8_t *on = with_appendix_for(sent, sent_len, mine, NULL, 0, &on_len, &left_out);
	assert_int_equal(left_out, 0);
	assert_int_equal(on_len, whole_len);
	assert_memory_equal(on, whole, whole_len); /* the same bytes as the first sender's */
	assert_restores_as(on, on_len, NULL, &a, NULL);
	free(on);

	/* The receiver lost a segment it said it held: it can tell before restoring, and a
	 * restore refuses (the transport declines such a snapshot instead). */
	char *lost = links_copy(links, held[2].first);
	assert_int_equal(tally_ledger_snapshot_unresolved(sent, sent_len, lost, why, sizeof(why)),
			 TALLY_SNAPSHOT_HELD_MISSING);
	print_message("declined: %s\n", why);
	char want[64];
	snprintf(want, sizeof(want), "%020llu.seg", (unsigned long long)held[2].first);
	assert_non_null(strstr(why, want));
	char *dir;
	struct tally_ledger *l;
	assert_int_equal(restore_new(sent, sent_len, lost, &dir, &l), TALLY_ECORRUPT);
	fx_remove_dir(dir);
	free(dir);
	assert_int_equal(tally_ledger_snapshot_unresolved(sent, sent_len, NULL, why, sizeof(why)),
			 TALLY_SNAPSHOT_HELD_MISSING);
	/* A link whose sidecar names another hash is not the segment left out. */
	char sidecar[600];
	snprintf(sidecar, sizeof(sidecar), "%s/%020llu.seg.sha256", mine,
		 (unsigned long long)held[1].first);
	assert_int_equal(unlink(sidecar), 0);
	int fd = open(sidecar, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	uint8_t other[32];
	memset(other, 0x5a, sizeof(other));
	assert_int_equal(write(fd, other, 32), 32);
	close(fd);
	assert_int_equal(tally_ledger_snapshot_unresolved(sent, sent_len, mine, why, sizeof(why)),
			 TALLY_SNAPSHOT_HELD_MISSING);
	assert_int_equal(restore_new(sent, sent_len, mine, &dir, &l), TALLY_ECORRUPT);
	fx_remove_dir(dir);
	free(dir);

	/* A link whose sidecar is gone is not said to be held. */
	snprintf(sidecar, sizeof(sidecar), "%s/%020llu.seg.sha256", lost,
		 (unsigned long long)held[0].first);
	assert_int_equal(unlink(sidecar), 0);
	struct tally_segment_held *now;
	size_t n_now;
	assert_int_equal(tally_ledger_segments_held(lost, &now, &n_now), 0);
	assert_int_equal(n_now, n_held - 2); /* neither the lost one nor this */
	assert_true(now[0].first > held[0].first);
	free(now);

	/* A sender leaves out only what the list names by first seq, length and hash. */
	held[1].sha[0] ^= 1;
	held[2].len--;
	free(sent);
	sent = with_appendix_for(snap, len, links, held, n_held, &sent_len, &left_out);
	assert_int_equal(left_out, n_held - 2);
	/* And a changed list of carried segments is refused. */
	uint8_t *footer = sent + sent_len - 24;
	assert_memory_equal(footer, "TJAPPND2", 8);
	uint8_t *last = footer - 8; /* the last carried first seq */
	last[7] ^= 1;
	assert_int_not_equal(restore_new(sent, sent_len, links, &dir, &l), 0);
	fx_remove_dir(dir);
	free(dir);

	fx_remove_dir(lost);
	free(lost);
	fx_remove_dir(mine);
	free(mine);
	free(sent);
	free(whole);
	free(held);
	free(snap);
	fx_close(&a);
	fx_remove_dir(links);
	free(links);
}

static void test_a_snapshot_sent_with_its_appendix_restores_where_no_link_is(void **state)
{
	(void)state;
	char *links = fx_tmpdir();
	struct fx a;
	open_links(&a, links, false, 40);
	size_t len, sent_len;
	uint8_t *snap = fx_snapshot(&a, &len);
	uint8_t *sent = with_appendix(snap, len, links, &sent_len);
	assert_int_equal(tally_ledger_snapshot_sent_bytes(snap, len), sent_len);
	assert_int_equal(tally_ledger_snapshot_sent_bytes(sent, sent_len), sent_len);
	/* Sent on again (a node sending the snapshot it received): its segments come from
	 * its own appendix, which is not sent twice. */
	struct tally_snapshot_appendix again;
	assert_int_equal(tally_ledger_snapshot_appendix(sent, sent_len, NULL, NULL, 0, &again), 0);
	assert_int_equal(again.snap_len, len);
	assert_int_equal(again.snap_len + again.bytes, sent_len);
	assert_int_equal(again.n_maps, 0);
	tally_ledger_snapshot_appendix_free(&again);

	char *dir;
	struct tally_ledger *l;
	assert_int_equal(restore_new(sent, sent_len, NULL, &dir, &l), 0);
	assert_content_of(l, &a);
	assert_same_segments(a.dir, dir);
	tally_ledger_close(l);
	fx_remove_dir(dir);
	free(dir);

	/* raft's file of it opens read-only and checks, with no link either. */
	char *fdir = fx_tmpdir();
	char path[600];
	snprintf(path, sizeof(path), "%s/snapshot", fdir);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, sent, sent_len), (ssize_t)sent_len);
	close(fd);
	struct tally_ledger *c;
	assert_int_equal(tally_ledger_open_snapshot(path, NULL, &c), 0);
	char msg[256];
	assert_int_equal(tally_ledger_check_invariants(c, msg, sizeof(msg)), 0);
	tally_ledger_close(c);
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, snap, len), (ssize_t)len);
	close(fd);
	assert_int_equal(tally_ledger_open_snapshot(path, NULL, &c), TALLY_ECORRUPT);
	assert_int_equal(tally_ledger_open_snapshot(path, links, &c), 0);
	assert_int_equal(tally_ledger_check_invariants(c, msg, sizeof(msg)), 0);
	tally_ledger_close(c);
	fx_remove_dir(fdir);
	free(fdir);

	/* A byte of a carried segment changed on the way: its hash refuses it. */
	sent[len + 100] ^= 0x01;
	assert_int_equal(restore_new(sent, sent_len, NULL, &dir, &l), TALLY_ECORRUPT);
	fx_remove_dir(dir);
	free(dir);

	/* Where the receiver's own links hold the segments (their sidecars name the hashes
	 * the snapshot names: a follower that fell behind), the appendix's copies are
	 * passed over unread and the links used: the changed byte goes unread, and the
	 * journal's segments are the links' files, not new ones. */
	assert_int_equal(restore_new(sent, sent_len, links, &dir, &l), 0);
	assert_content_of(l, &a);
	size_t shared = segments_shared(dir, links);
	print_message("%zu segments restored as links of the receiver's own\n", shared);
	assert_true(shared >= 2);
	tally_ledger_close(l);
	fx_remove_dir(dir);
	free(dir);
	/* A sidecar naming another hash vouches for nothing: the appendix is read. */
	char sidecar[600];
	uint8_t kept[32], other[32];
	snprintf(sidecar, sizeof(sidecar), "%s/%020d.seg.sha256", links, 1);
	fd = open(sidecar, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, kept, 32, 0), 32);
	memset(other, 0x5a, sizeof(other));
	assert_int_equal(pwrite(fd, other, 32, 0), 32);
	assert_int_equal(restore_new(sent, sent_len, links, &dir, &l), TALLY_ECORRUPT);
	fx_remove_dir(dir);
	free(dir);
	assert_int_equal(pwrite(fd, kept, 32, 0), 32);
	close(fd);

	/* Opened again (a restart), the ledger's next snapshot names the same segments by
	 * the hashes kept beside the links, and a receiver checks them as before. */
	size_t n_links;
	char **names = segment_names_in(links, &n_links);
	size_t sidecars = 0;
	for (size_t i = 0; i < n_links; i++)
		sidecars += strstr(names[i], ".sha256") != NULL;
	assert_true(sidecars >= 2 && 2 * sidecars == n_links);
	free_names(names, n_links);
	fx_ledger_close(&a);
	struct tally_ledger_options o = {.map_size_bytes = 1ULL << 30, .nosync = true,
					 .journal_segment_bytes = FX_JOURNAL_SEGMENT_BYTES,
					 .snapshot_links_dir = links};
	assert_int_equal(tally_ledger_open(a.dir, &o, &a.l), 0);
	size_t len2, sent2_len;
	uint8_t *snap2 = fx_snapshot(&a, &len2);
	uint8_t *sent2 = with_appendix(snap2, len2, links, &sent2_len);
	assert_int_equal(restore_new(sent2, sent2_len, NULL, &dir, &l), 0);
	assert_content_of(l, &a);
	tally_ledger_close(l);
	fx_remove_dir(dir);
	free(dir);
	free(snap2);
	free(sent2);
	free(sent);
	free(snap);
	fx_close(&a);
	fx_remove_dir(links);
	free(links);
}

/* The T_ENTRIES value format 7 wrote for the stored entry at raw: its segment's first
 * seq and its record's offset there. */
static void index_of(const struct journal *j, const MDB_val *raw, uint8_t index[JOURNAL_INDEX_BYTES])
{
	const uint8_t *p = (const uint8_t *)raw->mv_data - JOURNAL_RECORD_HEAD;
	for (size_t i = 0; i < j->n_segs; i++) {
		const struct journal_seg *s = &j->segs[i];
		if (p >= s->base && p < s->base + s->len) {
			be64_put(index, s->first);
			be64_put(index + 8, (uint64_t)(p - s->base));
			return;
		}
	}
	fail_msg("entry at %p is in no segment", raw->mv_data);
}

/* Rewrites the journal's rows of the closed ledger in f->dir as an older format did:
 * format 6 the entry itself in a row per seq (the segments removed), format 7 a row
 * per seq naming its record. */
static void rows_as_format(struct fx *f, unsigned format)
{
	assert_true(format == 6 || format == 7);
	assert_int_equal(fx_ledger_open(f), 0);
	struct tally_ledger *l = f->l;
	MDB_txn *txn;
	assert_int_equal(mdb_txn_begin(l->env, NULL, 0, &txn), 0);
	uint64_t n = tally_ledger_journal_size(l);
	MDB_val *rows = calloc(n + 1, sizeof(*rows));
	assert_non_null(rows);
	for (uint64_t seq = 1; seq <= n; seq++) { /* all read before any is rewritten */
		MDB_val raw;
		assert_int_equal(txn_entry_get(txn, l->dbi[T_ENTRIES], seq, &raw), 0);
		rows[seq].mv_size = format == 6 ? raw.mv_size : JOURNAL_INDEX_BYTES;
		rows[seq].mv_data = malloc(rows[seq].mv_size);
		assert_non_null(rows[seq].mv_data);
		if (format == 6)
			memcpy(rows[seq].mv_data, raw.mv_data, raw.mv_size);
		else
			index_of(&l->journal, &raw, rows[seq].mv_data);
	}
	for (uint64_t seq = 1; seq <= n; seq++) {
		uint8_t kb[8];
		be64_put(kb, seq);
		MDB_val k = {8, kb};
		assert_int_equal(mdb_put(txn, l->dbi[T_ENTRIES], &k, &rows[seq], 0), 0);
		free(rows[seq].mv_data);
	}
	free(rows);
	assert_int_equal(mdb_txn_commit(txn), 0);
	fx_ledger_close(f);
	if (format == 6)
		assert_int_equal(journal_remove(f->dir), 0);
	uint8_t version[8];
	be64_put(version, format);
	meta_poke(f->dir, "version", version, sizeof(version));
}

static uint64_t index_rows(struct tally_ledger *l)
{
	MDB_txn *txn;
	MDB_stat st;
	assert_int_equal(mdb_txn_begin(l->env, NULL, MDB_RDONLY, &txn), 0);
	assert_int_equal(mdb_stat(txn, l->dbi[T_ENTRIES], &st), 0);
	mdb_txn_abort(txn);
	return st.ms_entries;
}

/* Sets the T_ENTRIES row of seq to the row of seq `from` (0: deletes it). */
static void row_poke(struct tally_ledger *l, uint64_t seq, uint64_t from)
{
	MDB_txn *txn;
	assert_int_equal(mdb_txn_begin(l->env, NULL, 0, &txn), 0);
	uint8_t kb[8], copy[JOURNAL_INDEX_BYTES];
	be64_put(kb, from);
	MDB_val k = {8, kb}, v;
	if (from != 0) {
		assert_int_equal(mdb_get(txn, l->dbi[T_ENTRIES], &k, &v), 0);
		assert_int_equal(v.mv_size, sizeof(copy));
		memcpy(copy, v.mv_data, sizeof(copy));
		v = (MDB_val){sizeof(copy), copy};
	}
	be64_put(kb, seq);
	assert_int_equal(from != 0 ? mdb_put(txn, l->dbi[T_ENTRIES], &k, &v, 0)
				   : mdb_del(txn, l->dbi[T_ENTRIES], &k, NULL), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
}

static void assert_invariants_fail(struct fx *f, const char *want)
{
	char msg[256];
	assert_int_not_equal(tally_ledger_check_invariants(f->l, msg, sizeof(msg)), 0);
	print_message("%s\n", msg);
	assert_non_null(strstr(msg, want));
}

/* Format 8 keeps a row for every 32nd entry and each segment's first; a format-7
 * ledger's row per entry reads the same, and its new entries get format 8's rows. */
static void test_the_index_holds_a_row_per_stride_and_format_7_rows_still_read(void **state)
{
	(void)state;
	struct fx a, b;
	open_filled(&a, 10);
	open_filled(&b, 10);
	uint64_t n = tally_ledger_journal_size(a.l);
	size_t segs;
	char **names = segment_names(a.dir, &segs);
	uint64_t rows = index_rows(a.l);
	print_message("%llu entries in %zu segments: %llu index rows\n", (unsigned long long)n,
		      segs, (unsigned long long)rows);
	assert_true(segs > 1 && rows >= n / JOURNAL_INDEX_STRIDE && rows <= n / JOURNAL_INDEX_STRIDE + segs);
	/* Where the committed records end, as a node's write-back asks: the last segment,
	 * as long as its file. */
	uint64_t tail_first, tail_len;
	tally_ledger_journal_tail(a.l, &tail_first, &tail_len);
	char last[32];
	snprintf(last, sizeof(last), "%020llu.seg", (unsigned long long)tail_first);
	assert_string_equal(names[segs - 1], last);
	int fd = tally_ledger_journal_segment_open(a.l, tail_first);
	struct stat st;
	assert_true(fd >= 0 && fstat(fd, &st) == 0);
	assert_int_equal((uint64_t)st.st_size, tail_len);
	close(fd);
	assert_int_equal(tally_ledger_journal_segment_open(a.l, tail_first + 1), -1);
	free_names(names, segs);
	for (uint64_t seq = 1; seq <= n; seq++) {
		Tally__V1__Entry *e = entry_at(&a, seq);
		assert_non_null(e);
		assert_int_equal(e->seq, seq);
	}
	fx_ledger_close(&a);
	rows_as_format(&a, 7);
	assert_int_equal(fx_ledger_open(&a), 0);
	assert_int_equal(index_rows(a.l), n);
	assert_invariants(&a);
	fill(&a, 4);
	fill(&b, 4);
	uint64_t grown = tally_ledger_journal_size(a.l);
	assert_true(index_rows(a.l) < n + (grown - n) / 2);
	assert_same_content(&a, &b); /* the content hash reads entries, not rows */
	assert_invariants(&a);
	fx_ledger_close(&a); /* and it opens again, its end found from the last row */
	assert_int_equal(fx_ledger_open(&a), 0);
	assert_same_content(&a, &b);

	/* The invariant check reads every row and every entry through the rows. */
	uint64_t stride = JOURNAL_INDEX_STRIDE;
	row_poke(b.l, stride, 2 * stride);
	assert_invariants_fail(&b, "the row of entry 32 names another record");
	row_poke(b.l, stride, 0);
	assert_invariants_fail(&b, "journal: entry 32:");
	fx_close(&a);
	fx_close(&b);
}

static void test_entries_an_older_format_stored_inside_lmdb_are_read_and_new_ones_go_to_segments(
	void **state)
{
	(void)state;
	struct fx a, b;
	open_filled(&a, 10);
	open_filled(&b, 10);
	uint64_t n = tally_ledger_journal_size(a.l);
	fx_ledger_close(&a);
	rows_as_format(&a, 6);
	assert_int_equal(fx_ledger_open(&a), 0);
	size_t segs;
	char **none = segment_names(a.dir, &segs);
	assert_int_equal(segs, 0);
	free_names(none, segs);
	assert_invariants(&a);
	Tally__V1__Entry *e = entry_at(&a, n / 2);
	assert_non_null(e);
	assert_int_equal(e->seq, n / 2);

	/* New entries go to segments, the first named by the first new entry. */
	fill(&a, 4);
	fill(&b, 4);
	char **names = segment_names(a.dir, &segs);
	assert_true(segs >= 1);
	char want[32];
	snprintf(want, sizeof(want), "%020llu.seg", (unsigned long long)n + 1);
	assert_string_equal(names[0], want);
	free_names(names, segs);
	assert_same_content(&a, &b);
	assert_invariants(&a);

	/* A snapshot of the mixed ledger restores to the same content. */
	size_t len;
	uint8_t *snap = fx_snapshot(&a, &len);
	struct fx c;
	fx_open(&c);
	fx_ledger_close(&c);
	struct tally_ledger_options o = {.map_size_bytes = 1ULL << 30, .nosync = true,
					 .journal_segment_bytes = FX_JOURNAL_SEGMENT_BYTES};
	bool pending;
	assert_int_equal(tally_ledger_restore(c.dir, snap, len, &o, &c.l, &pending), 0);
	free(snap);
	assert_same_content(&a, &c);
	assert_invariants(&c);
	fx_close(&a);
	fx_close(&b);
	fx_close(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_replicas_write_the_same_segments_each_closed_at_its_size),
		cmocka_unit_test(test_batches_applied_in_groups_write_the_same_segments),
		cmocka_unit_test(test_a_journal_longer_than_lmdb_is_cut_back_at_open),
		cmocka_unit_test(test_a_journal_shorter_than_lmdb_is_refused),
		cmocka_unit_test(test_a_failed_batch_leaves_no_record_behind),
		cmocka_unit_test(test_records_written_for_a_batch_that_did_not_commit_are_cut_off),
		cmocka_unit_test(test_a_linked_segment_is_copied_before_it_is_cut_or_written),
		cmocka_unit_test(test_a_snapshot_carries_the_segments_and_a_restore_writes_them_again),
		cmocka_unit_test(test_a_snapshot_names_its_closed_segments_by_links_instead_of_copying_them),
		cmocka_unit_test(test_a_snapshot_sent_with_its_appendix_restores_where_no_link_is),
		cmocka_unit_test(test_an_install_leaves_out_what_the_receiver_holds_and_no_more),
		cmocka_unit_test(
			test_entries_an_older_format_stored_inside_lmdb_are_read_and_new_ones_go_to_segments),
		cmocka_unit_test(test_the_index_holds_a_row_per_stride_and_format_7_rows_still_read),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
