/*
 * Tests of raft's snapshot files as a node stores and loads them: raft 0.15's own
 * raft_uv, with the settings a node gives it (node_snapshot_io_init), the read() of
 * consensus/snapshot.c and the fsync() of consensus/flush.c in front of libc's.
 *
 * Two tests store a snapshot as a follower does with an InstallSnapshot, then load it
 * back the two ways raft does: at start (load) and to send it to a follower
 * (snapshot_get). One is just over 2 GiB, through raft's own heap: before snapshot.c's
 * read(), both loads failed with "short read" and a node whose latest snapshot was that
 * large could not start again. The other is just over 4 GiB, through tallyd's heap
 * (the file mapped), past what raft's int count of read()'s answer holds. Each is a
 * mapping of a sparse file with marks around those limits; they need GiBs of disk
 * (and the first of memory) and are skipped, saying why, where there is less or under
 * valgrind (TALLY_TEST_QUICK).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <raft.h>
#include <raft/uv.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <uv.h>

#include "consensus/flush.h"
#include "consensus/internal.h"
#include "consensus/snapshot.h"
#include "consensus/snapstore.h"
#include "tests/raftio.h"
#include "tests/util.h"

/* Just past what one read() returns, and past INT_MAX: raft's int count wraps. */
#define BIG_SNAPSHOT_BYTES (NODE_READ_ONCE_MAX + (16u << 20))
#define BIG_SNAPSHOT_SPARE_BYTES (3ULL << 30) /* disk and memory it needs beyond its size */
/* Past what raft 0.15's int count holds (4 GiB - 2), loaded as tallyd loads it. */
#define HUGE_SNAPSHOT_BYTES (((size_t)1 << 32) + (16u << 20))


static unsigned long long mem_available(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	unsigned long long kb = 0;
	char line[128];
	while (f != NULL && fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			break;
	if (f != NULL)
		fclose(f);
	return kb << 10;
}

/* raft_uv on dir with tallyd's heap (snapshots it loads are mappings), started. */
static void big_io_open(struct raftio *b, const char *dir)
{
	raftio_init(b, dir);
	node_snapshot_io_init(&b->io);
	raftio_start(b);
}

/* raft's load, as at start: the snapshot it returns (the caller frees it). */
static struct raft_snapshot *big_io_load(struct raftio *b)
{
	size_t n_entries;
	struct raft_snapshot *snapshot = raftio_load(b, &n_entries);
	assert_int_equal(n_entries, 0);
	return snapshot;
}

static void big_snapshot_free(struct raft_snapshot *s)
{
	raft_configuration_close(&s->configuration);
	for (unsigned i = 0; i < s->n_bufs; i++)
		raft_free(s->bufs[i].base);
	raft_free(s->bufs);
	raft_free(s);
}

static void on_put(struct raft_io_snapshot_put *req, int status)
{
	struct raftio *b = req->data;
	b->status = status;
	b->done++;
}

static void on_get(struct raft_io_snapshot_get *req, struct raft_snapshot *s, int status)
{
	struct raftio *b = req->data;
	b->status = status;
	b->got = s;
	b->done++;
}

/* Stores len bytes at want as raft's snapshot (index 10, term 2) in a fresh raft_uv
 * on dir (big_put: on an open one, at `index`), as a follower stores an
 * InstallSnapshot (trailing 0). */
static void big_put(struct raftio *b, const uint8_t *want, size_t len, raft_index index)
{
	struct raft_buffer buf = {.base = (void *)want, .len = len};
	struct raft_snapshot s = {.index = index, .term = 2, .configuration_index = 1,
				  .bufs = &buf, .n_bufs = 1};
	raft_configuration_init(&s.configuration);
	assert_int_equal(raft_configuration_add(&s.configuration, 1, "127.0.0.1:9001", RAFT_VOTER), 0);
	struct raft_io_snapshot_put put = {.data = b};
	b->done = 0;
	assert_int_equal(b->io.snapshot_put(&b->io, 0, &put, &s, on_put), 0);
	raftio_wait(b);
	assert_int_equal(b->status, 0);
	raft_configuration_close(&s.configuration);
}

static void big_store(const char *dir, const uint8_t *want, size_t len)
{
	struct raftio b;
	big_io_open(&b, dir);
	assert_null(big_io_load(&b));
	big_put(&b, want, len, 10);
	raftio_close(&b);
}

/* The loaded snapshot is the stored one (len bytes), byte for byte. */
static void assert_same_snapshot(const struct raft_snapshot *s, const uint8_t *want, size_t len)
{
	assert_non_null(s);
	assert_int_equal(s->index, 10);
	assert_int_equal(s->term, 2);
	assert_int_equal(s->n_bufs, 1);
	assert_int_equal(s->bufs[0].len, len);
	const uint8_t *got = s->bufs[0].base;
	assert_memory_equal(got + NODE_READ_ONCE_MAX - 64, want + NODE_READ_ONCE_MAX - 64, 128);
	assert_memory_equal(got + len - 64, want + len - 64, 64);
	assert_int_equal(memcmp(got, want, len), 0);
}

/* A sparse file of len bytes, marked at its ends, around the read limit and around
 * what raft's int count holds (where the file reaches them). */
static uint8_t *big_source(const char *dir, size_t len)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/source", dir);
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)len), 0);
	const off_t marks[] = {0, NODE_READ_ONCE_MAX - 8, NODE_READ_ONCE_MAX + 4000,
			       (off_t)(1ULL << 31), (off_t)NODE_SNAPSHOT_INT_COUNT_MAX - 8,
			       (off_t)(1ULL << 32) + 100, (off_t)len - 64};
	for (size_t i = 0; i < sizeof(marks) / sizeof(marks[0]); i++) {
		char mark[64];
		int n = snprintf(mark, sizeof(mark), "mark %zu at %lld", i, (long long)marks[i]);
		if ((uint64_t)marks[i] + (uint64_t)n <= len)
			assert_int_equal(pwrite(fd, mark, (size_t)n, marks[i]), n);
	}
	void *base = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(base != MAP_FAILED);
	close(fd);
	unlink(path);
	return base;
}

/* A directory with room for a snapshot of len bytes (and its spare), or NULL when the
 * machine has not (the test skips, saying why). */
static char *big_dir(size_t len, bool memory_too)
{
	if (getenv("TALLY_TEST_QUICK") != NULL) {
		print_message("skipped: TALLY_TEST_QUICK (GiBs through raft under valgrind)\n");
		return NULL;
	}
	char *dir = fx_tmpdir();
	struct statvfs fs;
	assert_int_equal(statvfs(dir, &fs), 0);
	unsigned long long disk = (unsigned long long)fs.f_bavail * fs.f_frsize;
	unsigned long long mem = memory_too ? mem_available() : ULLONG_MAX;
	unsigned long long need = len + BIG_SNAPSHOT_SPARE_BYTES;
	if (disk < need || mem < need) {
		print_message("skipped: needs %llu MiB of disk%s; %s has %llu MiB, MemAvailable "
			      "%llu MiB\n", need >> 20, memory_too ? " and of memory" : "", dir,
			      disk >> 20, mem_available() >> 20);
		fx_remove_dir(dir);
		free(dir);
		return NULL;
	}
	return dir;
}

/* Stores a sparse snapshot of len bytes, then loads it at start and to send it to a
 * follower, each byte for byte. */
static void big_round_trip(const char *dir, size_t len)
{
	uint8_t *want = big_source(dir, len);
	big_store(dir, want, len);
	struct raftio b;
	big_io_open(&b, dir);
	struct raft_snapshot *loaded = big_io_load(&b);
	assert_same_snapshot(loaded, want, len);
	big_snapshot_free(loaded);
	struct raft_io_snapshot_get get = {.data = &b};
	b.done = 0;
	assert_int_equal(b.io.snapshot_get(&b.io, &get, on_get), 0);
	raftio_wait(&b);
	if (b.status != 0)
		fail_msg("raft snapshot_get: status %d", b.status);
	assert_same_snapshot(b.got, want, len);
	big_snapshot_free(b.got);
	raftio_close(&b);
	munmap(want, len);
}

/* raft's own heap (the snapshot read into memory): the read() that goes on past the
 * kernel's 2 GiB limit on one call. */
static void test_a_snapshot_over_2_gib_is_stored_and_loaded_whole(void **state)
{
	(void)state;
	char *dir = big_dir(BIG_SNAPSHOT_BYTES, true);
	if (dir == NULL)
		skip();
	big_round_trip(dir, BIG_SNAPSHOT_BYTES);
	fx_remove_dir(dir);
	free(dir);
}

/* tallyd's heap (the snapshot file mapped): past 4 GiB, where raft 0.15's int count of
 * what read() answered wraps (snapshot.c answers it what it takes for whole). Before,
 * a node whose snapshot was that large could neither start again nor send it. */
static void test_a_snapshot_over_4_gib_is_stored_and_loaded_whole(void **state)
{
	(void)state;
	char *dir = big_dir(HUGE_SNAPSHOT_BYTES, false); /* page cache only */
	if (dir == NULL)
		skip();
	tally_node_snapshot_mappings();
	big_round_trip(dir, HUGE_SNAPSHOT_BYTES);
	raft_heap_set_default();
	fx_remove_dir(dir);
	free(dir);
}

/* The /proc/self/maps line of the mapping that holds addr ("" when none). */
static void mapping_of(const void *addr, char *line, size_t cap)
{
	FILE *f = fopen("/proc/self/maps", "r");
	assert_non_null(f);
	line[0] = '\0';
	char buf[1024];
	while (fgets(buf, sizeof(buf), f) != NULL) {
		unsigned long lo, hi;
		if (sscanf(buf, "%lx-%lx", &lo, &hi) == 2 && (uintptr_t)addr >= lo && (uintptr_t)addr < hi) {
			snprintf(line, cap, "%s", buf);
			break;
		}
	}
	fclose(f);
}

static long rss_anon_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	assert_non_null(f);
	char buf[256];
	long kb = -1;
	while (fgets(buf, sizeof(buf), f) != NULL)
		if (sscanf(buf, "RssAnon: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

#define MAPPED_SNAPSHOT_BYTES ((size_t)96 << 20)

/* A loaded snapshot is raft's file mapped, not heap: its buffer lies in a mapping of
 * raft's snapshot file, the heap does not grow by its size, the bytes are the stored
 * ones, and raft_free unmaps it. */
static void assert_mapped_snapshot(const struct raft_snapshot *s, const uint8_t *want, long anon_before_kb)
{
	assert_non_null(s);
	assert_int_equal(s->n_bufs, 1);
	assert_int_equal(s->bufs[0].len, MAPPED_SNAPSHOT_BYTES);
	char line[1024];
	mapping_of(s->bufs[0].base, line, sizeof(line));
	if (strstr(line, "/snapshot-") == NULL)
		fail_msg("the snapshot's buffer is not a mapping of raft's file: %s", line);
	assert_int_equal(memcmp(s->bufs[0].base, want, MAPPED_SNAPSHOT_BYTES), 0);
	long grew_kb = rss_anon_kb() - anon_before_kb;
	if (grew_kb > (long)(MAPPED_SNAPSHOT_BYTES >> 10) / 4)
		fail_msg("the heap grew by %ld KiB for a %zu KiB snapshot", grew_kb, MAPPED_SNAPSHOT_BYTES >> 10);
}

static void test_a_loaded_snapshot_is_its_file_mapped_not_heap(void **state)
{
	(void)state;
	char *dir = fx_tmpdir();
	uint8_t *want = mmap(NULL, MAPPED_SNAPSHOT_BYTES, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(want != MAP_FAILED);
	for (size_t i = 0; i < MAPPED_SNAPSHOT_BYTES; i += 4096)
		snprintf((char *)want + i, 64, "page %zu of the snapshot", i / 4096);
	tally_node_snapshot_mappings();

	big_store(dir, want, MAPPED_SNAPSHOT_BYTES);
	struct raftio b;

	big_io_open(&b, dir);
	long anon = rss_anon_kb();
	struct raft_snapshot *loaded = big_io_load(&b);
	assert_mapped_snapshot(loaded, want, anon);
	void *at = loaded->bufs[0].base;
	big_snapshot_free(loaded);
	char line[1024];
	mapping_of(at, line, sizeof(line));
	assert_null(strstr(line, "/snapshot-")); /* raft_free unmapped it */

	struct raft_io_snapshot_get get = {.data = &b};
	b.done = 0;
	anon = rss_anon_kb();
	assert_int_equal(b.io.snapshot_get(&b.io, &get, on_get), 0);
	raftio_wait(&b);
	assert_int_equal(b.status, 0);
	assert_mapped_snapshot(b.got, want, anon);
	big_snapshot_free(b.got);
	raftio_close(&b);

	raft_heap_set_default();
	munmap(want, MAPPED_SNAPSHOT_BYTES);
	fx_remove_dir(dir);
	free(dir);
}

/* ---- pwrite64(): raft stores a snapshot this node took as the copy itself ------------- */

/* A ledger with a brand and `members` members (fx_open), and a copy of it taken into
 * dir as snapshot_async takes one, with raft's heap as tallyd sets it (the test ends
 * with raft_heap_set_default); *ino is the inode of the file the copy maps, *reused
 * (may be NULL) whether that file was a snapshot raft removed. */
static void copy_take_of(struct fx *f, int members, const char *dir, struct raft_buffer *buf,
			 unsigned long *ino, bool *reused)
{
	tally_node_snapshot_mappings();
	fx_open(f);
	assert_int_equal(apply1(f, c_brand(f, admin(f), "acme", 12))->code, TALLY__V1__RESULT_CODE__OK);
	for (int i = 0; i < members; i++) {
		char id[32];
		snprintf(id, sizeof(id), "m%d", i + 1);
		assert_int_equal(apply1(f, c_member(f, admin(f), id))->code, TALLY__V1__RESULT_CODE__OK);
	}
	assert_int_equal(node_snapshot_take(f->l, dir, buf, reused), 0);
	char line[1024];
	mapping_of(buf->base, line, sizeof(line));
	assert_int_equal(sscanf(line, "%*s %*s %*s %*s %lu", ino), 1);
	assert_true(*ino != 0);
}

static void copy_take(struct fx *f, const char *dir, struct raft_buffer *buf, unsigned long *ino)
{
	copy_take_of(f, 1, dir, buf, ino, NULL);
}

/* The end of a test that took copies: its ledger closed, raft's heap the default
 * again, its directory gone. */
static void copy_test_end(struct fx *f, char *dir)
{
	fx_close(f);
	raft_heap_set_default();
	fx_remove_dir(dir);
	free(dir);
}

/* The sealed snapshot in `file` opens as a ledger and passes the full check. */
static void assert_ledger_file_checks(const char *file)
{
	struct tally_ledger *copy = NULL;
	assert_int_equal(tally_ledger_open_snapshot(file, NULL, &copy), 0);
	char msg[256];
	assert_int_equal(tally_ledger_check_invariants(copy, msg, sizeof(msg)), 0);
	tally_ledger_close(copy);
}

/* Names in dir that start with prefix or end with suffix. */
static int names_like(const char *dir, const char *prefix, const char *suffix)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	int n = 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		size_t len = strlen(e->d_name), sl = strlen(suffix);
		n += strncmp(e->d_name, prefix, strlen(prefix)) == 0 ||
		     (len >= sl && strcmp(e->d_name + len - sl, suffix) == 0);
	}
	closedir(d);
	return n;
}

/* raft_uv's store of a copy this node took makes the copy itself raft's snapshot file:
 * the same inode, no temporary name left behind, the copy's bytes; the file outlives
 * the copy's release, loads back byte for byte and opens as a ledger. */
static void test_a_taken_snapshot_is_stored_as_the_copy_itself(void **state)
{
	(void)state;
	char *dir = fx_tmpdir();
	struct fx f;
	struct raft_buffer buf;
	unsigned long ino;
	copy_take(&f, dir, &buf, &ino);
	uint8_t *want = malloc(buf.len);
	assert_non_null(want);
	memcpy(want, buf.base, buf.len);
	size_t len = buf.len;

	big_store(dir, buf.base, buf.len);
	char file[PATH_MAX];
	node_snapshot_find(dir, buf.base, buf.len, file, sizeof(file));
	assert_true(file[0] != '\0');
	struct stat st;
	assert_int_equal(stat(file, &st), 0);
	assert_int_equal(st.st_ino, ino);
	assert_int_equal(st.st_nlink, 1);
	assert_int_equal(names_like(dir, "tmp-", ".adopt"), 0);
	assert_true(node_snapshot_free(&buf));

	struct raftio b;
	big_io_open(&b, dir);
	struct raft_snapshot *loaded = big_io_load(&b);
	assert_non_null(loaded);
	assert_int_equal(loaded->n_bufs, 1);
	assert_int_equal(loaded->bufs[0].len, len);
	assert_memory_equal(loaded->bufs[0].base, want, len);
	big_snapshot_free(loaded);
	raftio_close(&b);
	assert_ledger_file_checks(file);
	free(want);
	copy_test_end(&f, dir);
}

/* The bytes of fd's file, which must be len long and equal want. */
static void assert_file_holds(int fd, const uint8_t *want, size_t len)
{
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, (off_t)len);
	uint8_t *got = malloc(len);
	assert_non_null(got);
	assert_int_equal(pread(fd, got, len, 0), (ssize_t)len);
	assert_memory_equal(got, want, len);
	free(got);
}

/* Only a whole copy, from its mapping at offset 0, into raft's temporary file of a
 * snapshot's data, is adopted; every other pwrite64, of the copy's bytes too, writes
 * them as the system call does, and the copy is then not raft's. */
static void test_only_a_whole_copy_into_rafts_file_is_adopted(void **state)
{
	(void)state;
	char *dir = fx_tmpdir();
	struct fx f;
	struct raft_buffer buf;
	unsigned long ino;
	copy_take(&f, dir, &buf, &ino);
	const uint8_t *base = buf.base;
	struct {
		const char *name;
		size_t offset, len;
	} cases[] = {
		{"some-file", 0, buf.len},                       /* not raft's name */
		{"tmp-snapshot-2-10-1234.meta", 0, buf.len},      /* raft's metadata file */
		{"tmp-snapshot-2-10-1234", 0, buf.len - 1},       /* not the whole copy */
		{"tmp-snapshot-2-10-1235", 4096, buf.len - 4096}, /* not from its start */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/%s", dir, cases[i].name);
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		assert_true(fd >= 0);
		ssize_t put = pwrite64(fd, base + cases[i].offset, cases[i].len, (off_t)cases[i].offset);
		assert_int_equal(put, (ssize_t)cases[i].len);
		struct stat st;
		assert_int_equal(fstat(fd, &st), 0);
		assert_true(st.st_ino != ino);
		close(fd);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		assert_true(fd >= 0);
		uint8_t *want = calloc(1, cases[i].offset + cases[i].len);
		assert_non_null(want);
		memcpy(want + cases[i].offset, base + cases[i].offset, cases[i].len);
		assert_file_holds(fd, want, cases[i].offset + cases[i].len);
		free(want);
		close(fd);
	}
	errno = 0;
	assert_int_equal(pwrite64(-1, base, buf.len, 0), -1);
	assert_int_equal(errno, EBADF);
	assert_int_equal(names_like(dir, "tmp-", ".adopt"), 3); /* the cases' own files */
	assert_false(node_snapshot_free(&buf));
	copy_test_end(&f, dir);
}

/* ---- unlink(): a snapshot raft removes becomes the next copy's file ----------------- */

/* raft's removal of a snapshot file that nothing else holds keeps it as the spare of
 * its directory; the next copy is written over it (the same inode), cut to its own
 * length when shorter, sealed, adopted as raft's next snapshot file, and opens and
 * checks as a ledger. */
static void test_a_snapshot_raft_removes_is_written_over_by_the_next_copy(void **state)
{
	(void)state;
	char *dir = fx_tmpdir();
	struct raftio b;
	big_io_open(&b, dir); /* raft's start removes tmp- files: before any copy */
	assert_null(big_io_load(&b));
	struct fx f1, f2;
	struct raft_buffer buf;
	unsigned long ino1, ino2;
	bool reused = true;
	copy_take_of(&f1, 300, dir, &buf, &ino1, &reused);
	assert_false(reused);
	size_t len1 = buf.len;
	big_put(&b, buf.base, buf.len, 10);
	char first[PATH_MAX], second[PATH_MAX], spare[PATH_MAX];
	node_snapshot_find(dir, buf.base, buf.len, first, sizeof(first));
	assert_true(first[0] != '\0');
	assert_true(node_snapshot_free(&buf));
	fx_close(&f1);

	assert_int_equal(unlink(first), 0); /* as raft removes all but its last two */
	struct stat st;
	assert_int_equal(stat(first, &st), -1);
	snprintf(spare, sizeof(spare), "%s/" SNAPSTORE_SPARE, dir);
	assert_int_equal(stat(spare, &st), 0);
	assert_int_equal(st.st_ino, ino1);

	copy_take_of(&f2, 1, dir, &buf, &ino2, &reused);
	assert_true(reused);
	assert_int_equal(ino2, ino1);
	assert_true(buf.len < len1);
	assert_int_equal(stat(spare, &st), -1); /* taken */
	big_put(&b, buf.base, buf.len, 11);
	node_snapshot_find(dir, buf.base, buf.len, second, sizeof(second));
	assert_true(second[0] != '\0' && strcmp(second, first) != 0);
	assert_int_equal(stat(second, &st), 0);
	assert_int_equal(st.st_ino, ino1);
	assert_int_equal(st.st_size, (off_t)buf.len);
	assert_true(node_snapshot_free(&buf));
	raftio_close(&b);
	assert_int_equal(names_like(dir, "tmp-", ".adopt"), 0);
	assert_ledger_file_checks(second);
	copy_test_end(&f2, dir);
}

/* A snapshot file something still holds open (a snapshot being sent to a follower, or
 * checked) is removed as asked, not kept: the next copy is a new file, and the holder
 * reads the bytes it had. */
static void test_a_snapshot_file_held_open_is_removed_not_written_over(void **state)
{
	(void)state;
	char *dir = fx_tmpdir();
	struct raftio b;
	big_io_open(&b, dir);
	assert_null(big_io_load(&b));
	struct fx f;
	struct raft_buffer buf;
	unsigned long ino;
	copy_take(&f, dir, &buf, &ino);
	big_put(&b, buf.base, buf.len, 10);
	char first[PATH_MAX], spare[PATH_MAX];
	node_snapshot_find(dir, buf.base, buf.len, first, sizeof(first));
	assert_true(first[0] != '\0');
	size_t len = buf.len;
	uint8_t *was = malloc(len);
	assert_non_null(was);
	memcpy(was, buf.base, len);
	assert_true(node_snapshot_free(&buf));

	int held = open(first, O_RDONLY | O_CLOEXEC);
	assert_true(held >= 0);
	assert_int_equal(unlink(first), 0);
	struct stat st;
	assert_int_equal(stat(first, &st), -1);
	snprintf(spare, sizeof(spare), "%s/" SNAPSTORE_SPARE, dir);
	assert_int_equal(stat(spare, &st), -1);
	bool reused = true;
	assert_int_equal(node_snapshot_take(f.l, dir, &buf, &reused), 0);
	assert_false(reused);
	assert_file_holds(held, was, len);
	close(held);
	node_snapshot_free(&buf);
	raftio_close(&b);
	free(was);
	copy_test_end(&f, dir);
}

/* ---- fsync(): a large file written back a step at a time ---------------------------- */

#define STEPS_MAX 16

struct step_log {
	int n;
	off_t offset[STEPS_MAX], len[STEPS_MAX];
	unsigned flags[STEPS_MAX];
	int fail_at;  /* the step that fails (-1: none) */
	int fail_errno;
};

static struct step_log steps;

static int step_record(int fd, off_t offset, off_t len, unsigned flags)
{
	(void)fd;
	assert_true(steps.n < STEPS_MAX);
	steps.offset[steps.n] = offset;
	steps.len[steps.n] = len;
	steps.flags[steps.n] = flags;
	if (steps.n++ == steps.fail_at) {
		errno = steps.fail_errno;
		return -1;
	}
	return 0;
}

static void steps_reset(int fail_at, int fail_errno)
{
	memset(&steps, 0, sizeof(steps));
	steps.fail_at = fail_at;
	steps.fail_errno = fail_errno;
}

/* The steps cover the file once, in order, each at most a step long and each waited
 * for before the next. */
static void test_a_large_file_is_written_back_step_by_step(void **state)
{
	(void)state;
	const uint64_t size = 5 * (uint64_t)NODE_FLUSH_STEP_BYTES + 12345;
	steps_reset(-1, 0);
	assert_int_equal(node_flush_stepwise(7, size, step_record), 0);
	assert_int_equal(steps.n, 6);
	uint64_t covered = 0;
	for (int i = 0; i < steps.n; i++) {
		assert_int_equal(steps.offset[i], covered);
		assert_true(steps.len[i] > 0 && (uint64_t)steps.len[i] <= NODE_FLUSH_STEP_BYTES);
		assert_int_equal(steps.flags[i], SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
						      SYNC_FILE_RANGE_WAIT_AFTER);
		covered += (uint64_t)steps.len[i];
	}
	assert_int_equal(covered, size);
}

/* Linux reports a write-back error once per open file, to whichever call waits first:
 * a step's error is the flush's answer, and nothing is stepped after it. A file that
 * cannot be stepped stops the steps without an error of its own (the fsync decides). */
static void test_a_steps_write_back_error_is_reported_not_lost(void **state)
{
	(void)state;
	const uint64_t size = 4 * (uint64_t)NODE_FLUSH_STEP_BYTES;
	steps_reset(2, EIO);
	assert_int_equal(node_flush_stepwise(7, size, step_record), EIO);
	assert_int_equal(steps.n, 3);
	steps_reset(0, ENOSPC);
	assert_int_equal(node_flush_stepwise(7, size, step_record), ENOSPC);
	assert_int_equal(steps.n, 1);
	steps_reset(0, EINVAL);
	assert_int_equal(node_flush_stepwise(7, size, step_record), 0);
	assert_int_equal(steps.n, 1);
	steps_reset(1, ESPIPE);
	assert_int_equal(node_flush_stepwise(7, size, step_record), 0);
	assert_int_equal(steps.n, 2);
}

/* The process's fsync() (flush.c) answers as the system call does: a large file
 * synced with its bytes intact, a small one, a pipe (EINVAL), a closed descriptor
 * (EBADF). */
static void test_fsync_answers_as_the_system_call(void **state)
{
	(void)state;
	char *dir = fx_tmpdir();
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/large", dir);
	const size_t len = 3 * NODE_FLUSH_STEP_BYTES + 4097;
	uint8_t *bytes = malloc(len);
	assert_non_null(bytes);
	for (size_t i = 0; i < len; i++)
		bytes[i] = (uint8_t)(i * 131 + i / 4096);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, bytes, len), (ssize_t)len);
	assert_int_equal(fsync(fd), 0);
	uint8_t *back = malloc(len);
	assert_non_null(back);
	assert_int_equal(pread(fd, back, len, 0), (ssize_t)len);
	assert_memory_equal(back, bytes, len);
	assert_int_equal(ftruncate(fd, 100), 0);
	assert_int_equal(fsync(fd), 0); /* under a step: the system call alone */
	close(fd);

	int pipe_fds[2];
	assert_int_equal(pipe(pipe_fds), 0);
	errno = 0;
	assert_int_equal(fsync(pipe_fds[0]), -1);
	assert_int_equal(errno, EINVAL);
	close(pipe_fds[0]);
	close(pipe_fds[1]);
	errno = 0;
	assert_int_equal(fsync(fd), -1);
	assert_int_equal(errno, EBADF);
	free(back);
	free(bytes);
	fx_remove_dir(dir);
	free(dir);
}

/* The ledger's own file, synced step by step (a restored ledger's sync): the
 * descriptor tally_ledger_file_dup gives is data.mdb's, outlives the ledger's close,
 * and the ledger goes on applying after the flush. */
static void test_the_ledger_is_flushed_through_its_own_file(void **state)
{
	(void)state;
	struct fx f;
	fx_open(&f);
	assert_int_equal(apply1(&f, c_brand(&f, admin(&f), "acme", 12))->code,
			 TALLY__V1__RESULT_CODE__OK);
	assert_int_equal(node_flush_ledger(f.l), 0);
	assert_int_equal(apply1(&f, c_member(&f, admin(&f), "m1"))->code,
			 TALLY__V1__RESULT_CODE__OK);
	int fd = tally_ledger_file_dup(f.l);
	assert_true(fd >= 0);
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/data.mdb", f.dir);
	struct stat by_fd, by_path;
	assert_int_equal(fstat(fd, &by_fd), 0);
	assert_int_equal(stat(path, &by_path), 0);
	assert_int_equal(by_fd.st_ino, by_path.st_ino);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	fx_close(&f);
	assert_int_equal(fstat(fd, &by_fd), 0); /* still open after the ledger closed */
	close(fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_taken_snapshot_is_stored_as_the_copy_itself),
		cmocka_unit_test(test_only_a_whole_copy_into_rafts_file_is_adopted),
		cmocka_unit_test(test_a_snapshot_raft_removes_is_written_over_by_the_next_copy),
		cmocka_unit_test(test_a_snapshot_file_held_open_is_removed_not_written_over),
		cmocka_unit_test(test_a_large_file_is_written_back_step_by_step),
		cmocka_unit_test(test_a_steps_write_back_error_is_reported_not_lost),
		cmocka_unit_test(test_fsync_answers_as_the_system_call),
		cmocka_unit_test(test_the_ledger_is_flushed_through_its_own_file),
		cmocka_unit_test(test_a_loaded_snapshot_is_its_file_mapped_not_heap),
		cmocka_unit_test(test_a_snapshot_over_2_gib_is_stored_and_loaded_whole),
		cmocka_unit_test(test_a_snapshot_over_4_gib_is_stored_and_loaded_whole),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
