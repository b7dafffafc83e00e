/*
 * Tests of consensus/logfill: the segments raft_uv makes in a node's raft directory
 * are written with zeros, so that the log's writes (O_DIRECT | O_DSYNC, submitted with
 * RWF_NOWAIT) are never refused for a block the file system has yet to mark written;
 * every other posix_fallocate() is the plain call.
 *
 * The property is checked as raft_uv meets it: O_DIRECT | O_DSYNC writes with RWF_NOWAIT,
 * the last block written again with the next one. Allocated and never written, a block
 * is an unwritten extent on ext4, and a write over a written block and an unwritten one
 * is refused (EAGAIN: it would change the extents); the tests that expect that (the
 * control, showing the check can fail) run only on ext4 and say so when skipped.
 * A file system without O_DIRECT (tmpfs) skips them all, saying why.
 */
#include <errno.h>
#include <fcntl.h>
#include <raft.h>
#include <raft/uv.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <uv.h>

#include "consensus/logfill.h"
#include "tests/raftio.h"
#include "tests/util.h"

#define SEGMENT_BYTES ((3u << 20) + (64u << 10)) /* steps of logfill's and a part of one */
#define PROBE_AT (2u << 20)       /* where the NOWAIT write goes: past the first step */
#define EXT4_MAGIC 0xEF53

/* Whether the file system under dir takes O_DIRECT (tmpfs does not). */
static bool direct_io(const char *dir)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/.direct", dir);
	int fd = open(path, O_CREAT | O_WRONLY | O_DIRECT, 0600);
	if (fd >= 0)
		close(fd);
	unlink(path);
	return fd >= 0;
}

static bool ext4(const char *dir)
{
	struct statfs fs;
	return statfs(dir, &fs) == 0 && fs.f_type == EXT4_MAGIC;
}

/* A new file in dir, allocated with posix_fallocate as raft_uv makes a segment. */
static int make_allocated(const char *dir, const char *name, off_t len)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_DSYNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(posix_fallocate(fd, 0, len), 0);
	return fd;
}

/* raft_uv's writes into the file: O_DIRECT | O_DSYNC, submitted with RWF_NOWAIT. Its
 * last block is written again with the next one (here: a block written, then it and the
 * next at once). A range over a written and an unwritten extent is refused (EAGAIN) on
 * ext4: the write would change the extents. 0, or the NOWAIT write's errno. */
static int nowait_write(const char *dir, const char *name)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_DIRECT | O_DSYNC);
	assert_true(fd >= 0);
	void *buf;
	assert_int_equal(posix_memalign(&buf, 4096, 2 * 4096), 0);
	memset(buf, 0x5a, 2 * 4096);
	struct iovec iov = {.iov_base = buf, .iov_len = 4096};
	assert_int_equal(pwritev2(fd, &iov, 1, PROBE_AT, 0), 4096);
	iov.iov_len = 2 * 4096;
	ssize_t w = pwritev2(fd, &iov, 1, PROBE_AT, RWF_NOWAIT);
	int err = w < 0 ? errno : 0;
	if (w >= 0)
		assert_int_equal(w, 2 * 4096);
	free(buf);
	close(fd);
	return err;
}

static off_t file_size(const char *dir, const char *name)
{
	char path[512];
	struct stat st;
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	assert_int_equal(stat(path, &st), 0);
	return st.st_size;
}

/* Every byte of [0, len) of the file is zero. The pages read are dropped after: a
 * page cached in its range makes a RWF_NOWAIT direct write refuse. */
static void assert_zeros(const char *dir, const char *name, off_t len)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	uint8_t buf[65536];
	off_t seen = 0;
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		for (ssize_t i = 0; i < n; i++)
			if (buf[i] != 0)
				fail_msg("%s: byte %lld is %u", name, (long long)(seen + i), buf[i]);
		seen += n;
	}
	assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	close(fd);
	assert_int_equal(seen, len);
}

/* A scratch directory, or NULL (skipped, saying why) where the tests cannot run. */
static char *scratch(bool need_ext4)
{
	char *dir = fx_tmpdir();
	const char *why = !direct_io(dir) ? "no O_DIRECT on the test directory's file system"
			  : need_ext4 && !ext4(dir) ? "not ext4: unwritten extents may not refuse RWF_NOWAIT"
						    : NULL;
	if (why == NULL)
		return dir;
	print_message("skipped: %s (%s)\n", why, dir);
	fx_remove_dir(dir);
	free(dir);
	return NULL;
}

static void test_a_segment_of_a_registered_directory_is_written_with_zeros(void **state)
{
	(void)state;
	char *dir = scratch(false);
	if (dir == NULL)
		skip();
	node_logfill_dir(dir);
	assert_int_equal(node_logfill_count(dir), 0);
	int fd = make_allocated(dir, "open-1", SEGMENT_BYTES);
	assert_int_equal(node_logfill_count(dir), 1);
	assert_int_equal(file_size(dir, "open-1"), SEGMENT_BYTES);
	assert_zeros(dir, "open-1", SEGMENT_BYTES);
	assert_int_equal(nowait_write(dir, "open-1"), 0);
	close(fd);
	fx_remove_dir(dir);
	free(dir);
}

/* The control: the same file, allocated by the plain call, is refused (ext4). */
static void test_elsewhere_a_segment_is_allocated_and_nowait_refused(void **state)
{
	(void)state;
	char *dir = scratch(true);
	if (dir == NULL)
		skip();
	int fd = make_allocated(dir, "open-1", SEGMENT_BYTES);
	assert_int_equal(node_logfill_count(dir), 0);
	assert_int_equal(file_size(dir, "open-1"), SEGMENT_BYTES);
	assert_int_equal(nowait_write(dir, "open-1"), EAGAIN);
	close(fd);
	fx_remove_dir(dir);
	free(dir);
}

/* In a registered directory, only a new, empty open-N is written: another name, or a
 * file with data, is allocated as asked and its bytes are kept. */
static void test_only_a_new_segment_is_written(void **state)
{
	(void)state;
	char *dir = scratch(true);
	if (dir == NULL)
		skip();
	node_logfill_dir(dir);
	const char *names[] = {"data.mdb", "open-", "open-1.meta", "open-x1", "metadata1"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		int fd = make_allocated(dir, names[i], SEGMENT_BYTES);
		assert_int_equal(nowait_write(dir, names[i]), EAGAIN);
		close(fd);
	}
	char path[512];
	snprintf(path, sizeof(path), "%s/open-2", dir);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_DSYNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, "kept", 4, 0), 4);
	assert_int_equal(posix_fallocate(fd, 0, SEGMENT_BYTES), 0);
	close(fd);
	char got[4];
	fd = open(path, O_RDONLY);
	assert_int_equal(pread(fd, got, 4, 0), 4);
	close(fd);
	assert_memory_equal(got, "kept", 4);
	assert_int_equal(nowait_write(dir, "open-2"), EAGAIN);
	assert_int_equal(node_logfill_count(dir), 0);
	fx_remove_dir(dir);
	free(dir);
}

/* One more directory than there are slots takes the place of the first registered. */
static void test_the_oldest_directory_gives_way(void **state)
{
	(void)state;
	char *dirs[NODE_LOGFILL_DIRS + 1];
	for (size_t i = 0; i <= NODE_LOGFILL_DIRS; i++) {
		dirs[i] = scratch(false);
		if (dirs[i] == NULL) {
			for (size_t j = 0; j < i; j++) {
				fx_remove_dir(dirs[j]);
				free(dirs[j]);
			}
			skip();
		}
		node_logfill_dir(dirs[i]);
	}
	for (size_t i = 0; i <= NODE_LOGFILL_DIRS; i++) {
		close(make_allocated(dirs[i], "open-7", 1u << 20));
		assert_int_equal(node_logfill_count(dirs[i]), i == 0 ? 0 : 1);
	}
	for (size_t i = 0; i <= NODE_LOGFILL_DIRS; i++) {
		fx_remove_dir(dirs[i]);
		free(dirs[i]);
	}
}

static void test_raft_uv_makes_its_segments_written(void **state)
{
	(void)state;
	char *dir = scratch(false);
	if (dir == NULL)
		skip();
	node_logfill_dir(dir);
	static struct raftio b; /* static: see raftio.h */
	raftio_init(&b, dir);
	raft_uv_set_segment_size(&b.io, SEGMENT_BYTES);
	raftio_start(&b);
	assert_null(raftio_load(&b, NULL));
	raftio_append_one(&b);
	assert_true(node_logfill_count(dir) >= 1);
	assert_int_equal(file_size(dir, "open-1"), SEGMENT_BYTES);
	raftio_close(&b);
	fx_remove_dir(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_segment_of_a_registered_directory_is_written_with_zeros),
		cmocka_unit_test(test_elsewhere_a_segment_is_allocated_and_nowait_refused),
		cmocka_unit_test(test_only_a_new_segment_is_written),
		cmocka_unit_test(test_the_oldest_directory_gives_way),
		cmocka_unit_test(test_raft_uv_makes_its_segments_written),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
