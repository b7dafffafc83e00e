/*
 * flush-probe — what a large file's flush does to a commit waiting beside it.
 *
 *   flush-probe [--dir D] [--mb N] [--rounds R]
 *
 * raft stores a snapshot by writing the whole file and syncing it, while the raft log
 * goes on committing with small O_DSYNC writes to the same disk. This measures that,
 * on the disk under D (default /var/tmp): each round writes an N MiB file (default
 * 100) into the page cache, then flushes it while a second thread keeps writing 4 KiB
 * O_DSYNC blocks to another file, and reports how long the flush took and the probe's
 * mean and worst write during it. Rounds alternate the two flushes a node could do:
 * one fsync (the system call alone), and the node's (consensus/flush.c): the file
 * written back NODE_FLUSH_STEP_BYTES at a time, each step waited for, then fsync.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "consensus/flush.h"
#include "tools/bench.h"

#define PROBE_BLOCK_BYTES 4096
#define PROBE_BLOCKS 256 /* the probe rewrites a 1 MiB file, block by block */
#define WRITE_CHUNK_BYTES (1u << 20)

struct probe {
	char path[4096];
	atomic_bool stop;
	long writes;
	double sum_s, worst_s;
	int err;
};

static void *probe_run(void *arg)
{
	struct probe *p = arg;
	int fd = open(p->path, O_RDWR | O_CREAT | O_TRUNC | O_DSYNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		p->err = errno;
		return NULL;
	}
	static const uint8_t block[PROBE_BLOCK_BYTES];
	while (!atomic_load(&p->stop)) {
		double t = bench_now_s();
		off_t at = (off_t)(p->writes % PROBE_BLOCKS) * PROBE_BLOCK_BYTES;
		if (pwrite(fd, block, sizeof(block), at) != (ssize_t)sizeof(block)) {
			p->err = errno;
			break;
		}
		double d = bench_now_s() - t;
		p->sum_s += d;
		p->worst_s = d > p->worst_s ? d : p->worst_s;
		p->writes++;
	}
	close(fd);
	unlink(p->path);
	return NULL;
}

/* The large file, written into the page cache (not synced). */
static int big_write(const char *path, size_t mb)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	static uint8_t chunk[WRITE_CHUNK_BYTES];
	memset(chunk, 0x5a, sizeof(chunk));
	for (size_t i = 0; i < mb; i++)
		if (write(fd, chunk, sizeof(chunk)) != (ssize_t)sizeof(chunk)) {
			close(fd);
			return -1;
		}
	return fd;
}

/* One round: the flush's seconds, the probe's figures beside it. */
static int round_run(const char *dir, size_t mb, bool stepped)
{
	char big[4096];
	snprintf(big, sizeof(big), "%s/flush-probe-big.%d", dir, (int)getpid());
	struct probe p = {.writes = 0};
	snprintf(p.path, sizeof(p.path), "%s/flush-probe-dsync.%d", dir, (int)getpid());
	int fd = big_write(big, mb);
	if (fd < 0) {
		fprintf(stderr, "flush-probe: %s: %s\n", big, strerror(errno));
		return -1;
	}
	pthread_t th;
	if (pthread_create(&th, NULL, probe_run, &p) != 0)
		return -1;
	double t = bench_now_s();
	int err = stepped ? node_flush_stepwise(fd, (uint64_t)mb << 20, sync_file_range) : 0;
	if (err == 0 && syscall(SYS_fsync, fd) != 0)
		err = errno;
	double flush_s = bench_now_s() - t;
	atomic_store(&p.stop, true);
	pthread_join(th, NULL);
	close(fd);
	unlink(big);
	if (err != 0 || p.err != 0 || p.writes == 0) {
		fprintf(stderr, "flush-probe: %s\n", strerror(err != 0 ? err : p.err != 0 ? p.err : EIO));
		return -1;
	}
	printf("| %s | %.0f | %ld | %.2f | %.1f |\n", stepped ? "stepped, then fsync" : "one fsync",
	       flush_s * 1e3, p.writes, p.sum_s / (double)p.writes * 1e3, p.worst_s * 1e3);
	return 0;
}

int main(int argc, char **argv)
{
	const char *dir = "/var/tmp";
	size_t mb = 100;
	int rounds = 3;
	static const struct option opts[] = {
		{"dir", required_argument, NULL, 'd'},
		{"mb", required_argument, NULL, 'm'},
		{"rounds", required_argument, NULL, 'r'},
		{NULL, 0, NULL, 0},
	};
	for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
		if (c == 'd')
			dir = optarg;
		else if (c == 'm' && atoi(optarg) > 0)
			mb = (size_t)atoi(optarg);
		else if (c == 'r' && atoi(optarg) > 0)
			rounds = atoi(optarg);
		else {
			fprintf(stderr, "usage: flush-probe [--dir D] [--mb N] [--rounds R]\n");
			return 2;
		}
	}
	printf("flush of %zu MiB under %s, steps of %u KiB; a 4 KiB O_DSYNC write beside it\n\n",
	       mb, dir, NODE_FLUSH_STEP_BYTES >> 10);
	printf("| flush | flush ms | probe writes | probe mean ms | probe worst ms |\n");
	printf("| --- | --- | --- | --- | --- |\n");
	for (int i = 0; i < rounds; i++)
		if (round_run(dir, mb, false) != 0 || round_run(dir, mb, true) != 0)
			return 1;
	return 0;
}
