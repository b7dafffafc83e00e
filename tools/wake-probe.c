/*
 * wake-probe — how long a durable 4 KiB write waits when the CPU that issued it sleeps.
 *
 *   wake-probe [--dir D] [--seconds S]
 *
 * raft's log is written with small O_DIRECT | O_DSYNC writes, and every commit waits for
 * one. This writes 4 KiB blocks that way, one after another, to a file on the disk under
 * D (default /var/tmp) for S seconds (default 3) from a thread pinned to each CPU in
 * turn, twice per CPU: once alone, so that the CPU may halt while the write is on the
 * disk, and once with a SCHED_IDLE thread spinning on the same CPU, which keeps it from
 * halting and gives way to the probe at once. Per run it prints the writes per second,
 * p50/p99/p99.9/max of a write and how many took over PROBE_SLOW_MS, with the median
 * time between two of those. A disk that is slow for everyone shows on every CPU; a
 * completion slow to reach one CPU shows on that one only. On the project's 2-vCPU AMD
 * VM (2026-12-05) a write issued from CPU 0 waited 8-14 ms once every 100 ms, spinning
 * or not, and one from CPU 1, the CPU the disk interrupts, never
 * (docs/performance.md, "A durable write from the CPU the disk does not interrupt").
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/bench.h"

#define PROBE_BLOCK_BYTES 4096
#define PROBE_BLOCKS 256     /* the probe rewrites a 1 MiB file, block by block */
#define PROBE_SLOW_MS 4.0    /* a write this long is counted as slow */
#define PROBE_SECONDS_MAX 60 /* the longest run --seconds allows */

struct spinner {
	int cpu;
	atomic_bool stop;
	int err; /* why it could not spin as asked, or 0 */
};

/* Pins the calling thread to `cpu`: 0 or an errno. */
static int pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : errno;
}

/* Runs on `cpu` at SCHED_IDLE until told to stop: the CPU never halts, and any other
 * thread that wants it preempts this one. */
static void *spin_run(void *arg)
{
	struct spinner *s = arg;
	struct sched_param none = {0};
	s->err = pin(s->cpu);
	if (s->err == 0)
		s->err = pthread_setschedparam(pthread_self(), SCHED_IDLE, &none);
	if (s->err != 0)
		return NULL;
	while (!atomic_load_explicit(&s->stop, memory_order_relaxed))
		;
	return NULL;
}

/* The file, written once whole so that no write of the probe allocates blocks. */
static int probe_open(const char *path, void *block)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_DIRECT | O_DSYNC | O_CLOEXEC, 0600);
	if (fd < 0 && errno == EINVAL) /* no O_DIRECT here (tmpfs) */
		fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_DSYNC | O_CLOEXEC, 0600);
	for (int i = 0; fd >= 0 && i < PROBE_BLOCKS; i++)
		if (pwrite(fd, block, PROBE_BLOCK_BYTES, (off_t)i * PROBE_BLOCK_BYTES) !=
		    PROBE_BLOCK_BYTES) {
			int err = errno ? errno : EIO;
			close(fd);
			errno = err;
			fd = -1;
		}
	return fd;
}

struct run {
	double *ms; /* each write's time */
	double *slow_at_s; /* when each slow write started */
	size_t n, n_slow, cap;
};

static int run_write(struct run *r, int fd, const void *block, double t0)
{
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 16384;
		double *ms = realloc(r->ms, cap * sizeof(*ms));
		double *at = ms ? realloc(r->slow_at_s, cap * sizeof(*at)) : NULL;
		if (ms != NULL)
			r->ms = ms;
		if (at == NULL)
			return ENOMEM;
		r->slow_at_s = at;
		r->cap = cap;
	}
	double t = bench_now_s();
	off_t off = (off_t)(r->n % PROBE_BLOCKS) * PROBE_BLOCK_BYTES;
	if (pwrite(fd, block, PROBE_BLOCK_BYTES, off) != PROBE_BLOCK_BYTES)
		return errno ? errno : EIO;
	double ms = (bench_now_s() - t) * 1e3;
	r->ms[r->n++] = ms;
	if (ms > PROBE_SLOW_MS)
		r->slow_at_s[r->n_slow++] = t - t0;
	return 0;
}

static void run_print(struct run *r, int cpu, bool awake, double secs)
{
	double gap = 0;
	if (r->n_slow >= 2) { /* the median spacing of the slow writes */
		for (size_t i = 0; i + 1 < r->n_slow; i++)
			r->slow_at_s[i] = r->slow_at_s[i + 1] - r->slow_at_s[i];
		qsort(r->slow_at_s, r->n_slow - 1, sizeof(double), bench_cmp_double);
		gap = r->slow_at_s[(r->n_slow - 1) / 2] * 1e3;
	}
	qsort(r->ms, r->n, sizeof(double), bench_cmp_double);
	printf("| %d | %s | %.0f | %.3f | %.3f | %.3f | %.3f | %zu |", cpu,
	       awake ? "kept awake" : "alone", (double)r->n / secs, r->ms[r->n / 2],
	       r->ms[r->n * 99 / 100], r->ms[r->n * 999 / 1000], r->ms[r->n - 1], r->n_slow);
	if (r->n_slow >= 2)
		printf(" %.0f |\n", gap);
	else
		printf(" — |\n");
}

/* One run on `cpu`, with a spinner beside it when `awake`. */
static int run_one(const char *path, int cpu, bool awake, double secs, void *block)
{
	struct spinner s = {.cpu = cpu};
	pthread_t th;
	bool spinning = false;
	int err = pin(cpu);
	if (err == 0 && awake) {
		err = pthread_create(&th, NULL, spin_run, &s);
		spinning = err == 0;
	}
	int fd = err == 0 ? probe_open(path, block) : -1;
	if (err == 0 && fd < 0)
		err = errno;
	struct run r = {0};
	double t0 = bench_now_s();
	while (err == 0 && bench_now_s() - t0 < secs)
		err = run_write(&r, fd, block, t0);
	if (spinning) {
		atomic_store(&s.stop, true);
		pthread_join(th, NULL);
		if (err == 0)
			err = s.err; /* not kept awake after all: no figure */
	}
	if (fd >= 0) {
		close(fd);
		unlink(path);
	}
	if (err == 0 && r.n > 0)
		run_print(&r, cpu, awake, secs);
	free(r.ms);
	free(r.slow_at_s);
	return err;
}

int main(int argc, char **argv)
{
	const char *dir = "/var/tmp";
	int secs = 3;
	static const struct option opts[] = {
		{"dir", required_argument, NULL, 'd'},
		{"seconds", required_argument, NULL, 's'},
		{NULL, 0, NULL, 0},
	};
	for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
		if (c == 'd')
			dir = optarg;
		else if (c == 's' && atoi(optarg) > 0 && atoi(optarg) <= PROBE_SECONDS_MAX)
			secs = atoi(optarg);
		else {
			fprintf(stderr, "usage: wake-probe [--dir D] [--seconds S (1..%d)]\n",
				PROBE_SECONDS_MAX);
			return 2;
		}
	}
	char path[4096];
	if (snprintf(path, sizeof(path), "%s/wake-probe.%ld", dir, (long)getpid()) >=
	    (int)sizeof(path)) {
		fprintf(stderr, "wake-probe: --dir is too long\n");
		return 2;
	}
	void *block;
	if (posix_memalign(&block, PROBE_BLOCK_BYTES, PROBE_BLOCK_BYTES) != 0)
		return 1;
	memset(block, 0x5a, PROBE_BLOCK_BYTES);
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	printf("4 KiB O_DSYNC writes (O_DIRECT where allowed) under %s, %d s a run, "
	       "slow: over %.0f ms\n\n",
	       dir, secs, PROBE_SLOW_MS);
	printf("| CPU | the CPU | writes/s | p50 ms | p99 ms | p99.9 ms | max ms | slow | median ms "
	       "between slow |\n");
	printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
	int err = 0;
	for (int cpu = 0; err == 0 && cpu < cpus; cpu++) {
		err = run_one(path, cpu, false, secs, block);
		if (err == 0)
			err = run_one(path, cpu, true, secs, block);
	}
	free(block);
	if (err != 0)
		fprintf(stderr, "wake-probe: %s\n", strerror(err));
	return err == 0 ? 0 : 1;
}
