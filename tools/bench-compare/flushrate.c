/*
 * flushrate: how many durable small writes the disk under DIR takes per second when
 * three writers (three replicas on one machine) flush at the same time.
 *
 *   flushrate DIR [SECS] [LOOPS] [MODE]     (defaults: 5 s, 3 loops, fdatasync)
 *
 * Each loop is a thread with its own preallocated 4 MiB file in DIR, like a database's
 * or raft's write-ahead log segment: it writes the next 4 KiB block (wrapping around)
 * and calls fdatasync, again and again, for SECS seconds. One write + fdatasync is a
 * "round". A replicated system that needs a fresh flush on each replica for every
 * request it acknowledges, and puts one request into each flush, can do about
 * rounds/s requests per second; with N requests in flight and perfect group commit
 * (all N ride in each flush) about rounds/s x N.
 *
 * MODE direct-dsync writes the blocks through O_DIRECT | O_DSYNC instead (each pwrite
 * returns once the block is on stable storage, with no page cache and no separate
 * fdatasync call), the way raft's libuv backend writes its log when the file system
 * allows it; on some disks that round is cheaper.
 *
 * Prints one JSON object: the mode, the mean rounds/s of one loop, each loop's rate, all
 * loops' rounds/s together and the median and p99 of one round in ms. Refuses tmpfs and
 * ramfs, where a flush is free and the number would mean nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include "tools/bench.h"

#define BLOCK 4096
#define FILE_BYTES (4u << 20)
#define LOOPS_MAX 16
#define SAMPLES_MAX (1u << 20)

struct loop {
	const char *dir;
	bool direct;         /* O_DIRECT | O_DSYNC writes instead of write + fdatasync */
	unsigned index;
	double secs;
	pthread_t thread;
	uint64_t rounds;
	uint32_t *round_us;  /* one sample per round */
	size_t n_samples;
	int err;             /* errno of a failure, 0 if none */
};

static atomic_int started;
static atomic_bool go;

/* A file of FILE_BYTES zeros, flushed, so that the timed writes overwrite allocated
 * blocks (as a WAL segment is written) and fdatasync has no size change to record. */
static int prepare(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	static const char zeros[BLOCK];
	for (unsigned off = 0; off < FILE_BYTES; off += BLOCK) {
		if (pwrite(fd, zeros, BLOCK, off) != BLOCK) {
			close(fd);
			return -1;
		}
	}
	if (fsync(fd) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void *run_loop(void *arg)
{
	struct loop *l = arg;
	char path[4096], block[BLOCK];
	snprintf(path, sizeof(path), "%s/flushrate.%u", l->dir, l->index);
	int fd = prepare(path);
	if (fd < 0) {
		l->err = errno;
		atomic_fetch_add(&started, 1);
		return NULL;
	}
	char *buf = block;
	if (l->direct) {
		/* O_DIRECT wants the buffer aligned as the device's blocks (4 KiB suffices). */
		close(fd);
		fd = open(path, O_WRONLY | O_DIRECT | O_DSYNC | O_CLOEXEC);
		if (fd < 0 || posix_memalign((void **)&buf, BLOCK, BLOCK) != 0) {
			l->err = fd < 0 ? errno : ENOMEM;
			atomic_fetch_add(&started, 1);
			return NULL;
		}
	}
	memset(buf, 'a' + (int)l->index, BLOCK);
	/* Start together: the point is three writers contending for one disk. */
	atomic_fetch_add(&started, 1);
	while (!atomic_load(&go))
		sched_yield();
	double t0 = bench_now_s(), end = t0 + l->secs, t = t0;
	unsigned off = 0;
	while (t < end) {
		if (pwrite(fd, buf, BLOCK, off) != BLOCK || (!l->direct && fdatasync(fd) != 0)) {
			l->err = errno ? errno : EIO;
			break;
		}
		double t1 = bench_now_s();
		if (l->n_samples < SAMPLES_MAX)
			l->round_us[l->n_samples++] = (uint32_t)((t1 - t) * 1e6);
		t = t1;
		l->rounds++;
		off = (off + BLOCK) % FILE_BYTES;
	}
	close(fd);
	unlink(path);
	if (buf != block)
		free(buf);
	return NULL;
}

/* 0 when dir is on a disk; tmpfs and ramfs are refused. */
static int check_dir(const char *dir)
{
	struct statfs fs;
	if (statfs(dir, &fs) != 0) {
		fprintf(stderr, "flushrate: %s: %s\n", dir, strerror(errno));
		return 1;
	}
	if (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC) {
		fprintf(stderr, "flushrate: %s is in RAM (tmpfs/ramfs): fdatasync costs nothing there\n", dir);
		return 1;
	}
	return 0;
}

/* Starts the loops together and waits for them all; 0 when every one ran. */
static int run_loops(struct loop *l, int loops, const char *dir, double secs, bool direct)
{
	for (int i = 0; i < loops; i++) {
		l[i] = (struct loop){.dir = dir, .index = (unsigned)i, .secs = secs, .direct = direct};
		l[i].round_us = malloc(SAMPLES_MAX * sizeof(uint32_t));
		if (l[i].round_us == NULL || pthread_create(&l[i].thread, NULL, run_loop, &l[i]) != 0) {
			fprintf(stderr, "flushrate: cannot start loop %d\n", i);
			exit(1); /* the loops started wait for go: the exit ends them */
		}
	}
	while (atomic_load(&started) < loops)
		sched_yield();
	atomic_store(&go, true);
	int rc = 0;
	for (int i = 0; i < loops; i++) {
		pthread_join(l[i].thread, NULL);
		if (l[i].err != 0) {
			fprintf(stderr, "flushrate: loop %d in %s: %s\n", i, dir, strerror(l[i].err));
			rc = 1;
		}
	}
	return rc;
}

/* The JSON line: the rates, and the median and tail of one round over all loops. */
static int report(const struct loop *l, int loops, const char *mode, double secs)
{
	uint64_t total = 0;
	size_t n = 0;
	for (int i = 0; i < loops; i++) {
		total += l[i].rounds;
		n += l[i].n_samples;
	}
	uint32_t *all = malloc((n + 1) * sizeof(*all));
	if (all == NULL) {
		fprintf(stderr, "flushrate: out of memory\n");
		return 1;
	}
	size_t k = 0;
	for (int i = 0; i < loops; i++) {
		memcpy(all + k, l[i].round_us, l[i].n_samples * sizeof(*all));
		k += l[i].n_samples;
	}
	qsort(all, n, sizeof(*all), bench_cmp_u32);
	printf("{\"mode\":\"%s\",\"loops\":%d,\"secs\":%.1f,\"rounds_per_s\":%.1f,\"per_loop\":[",
	       mode, loops, secs, (double)total / loops / secs);
	for (int i = 0; i < loops; i++)
		printf("%s%.1f", i ? "," : "", (double)l[i].rounds / secs);
	printf("],\"all_loops_per_s\":%.1f,\"round_ms\":{\"p50\":%.3f,\"p99\":%.3f}}\n",
	       (double)total / secs, n ? all[n / 2] / 1e3 : 0.0, n ? all[n * 99 / 100] / 1e3 : 0.0);
	free(all);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 5) {
		fprintf(stderr, "usage: flushrate DIR [SECS] [LOOPS] [fdatasync|direct-dsync]\n");
		return 2;
	}
	const char *mode = argc > 4 ? argv[4] : "fdatasync";
	if (strcmp(mode, "fdatasync") != 0 && strcmp(mode, "direct-dsync") != 0) {
		fprintf(stderr, "flushrate: MODE is fdatasync or direct-dsync\n");
		return 2;
	}
	const char *dir = argv[1];
	double secs = argc > 2 ? atof(argv[2]) : 5;
	int loops = argc > 3 ? atoi(argv[3]) : 3;
	if (secs <= 0 || loops < 1 || loops > LOOPS_MAX) {
		fprintf(stderr, "flushrate: SECS must be > 0 and LOOPS 1..%d\n", LOOPS_MAX);
		return 2;
	}
	if (check_dir(dir) != 0)
		return 1;
	static struct loop l[LOOPS_MAX];
	int rc = run_loops(l, loops, dir, secs, strcmp(mode, "direct-dsync") == 0);
	if (rc == 0)
		rc = report(l, loops, mode, secs);
	for (int i = 0; i < loops; i++)
		free(l[i].round_us);
	return rc;
}
