/*
 * snapshot-bench: what taking and restoring a raft snapshot of a large ledger costs a
 * node, in time and memory, through the node's own code (consensus/snapshot.c) and
 * raft_uv's own storage (snapshot_put, load), configured as tallyd configures them.
 *
 *   snapshot-bench --dir D [--runs N] [--links]
 *
 * --links: snapshots link the journal's closed segments into D/links and name them
 * (as a node whose raft transport is TLS does: ledger.h, snapshot_links_dir) instead
 * of copying them, and the restore finds them there.
 * D/ledger must hold a ledger (make bench-snapshot builds one of 1,000,000 members
 * with ledger-bench). Each run forks two fresh processes, so that each peak is its
 * own:
 *   take:    twice: node_snapshot_take into D/raft (what snapshot_async does),
 *            raft's snapshot_put of the buffer there (which adopts the copy as its
 *            file, or writes it again: the line says which), node_snapshot_free
 *            (snapshot_finalize); between the two, the first snapshot's file is
 *            removed as raft removes old ones, and the second copy is written over
 *            it (or into a new file: the line says which);
 *   restore: raft's load of D/raft (what raft does at start; an InstallSnapshot
 *            arrives as the same kind of buffer), node_snapshot_restore into
 *            D/restored and the free of raft's buffer (what fsm restore does on the
 *            loop), then the full check it leaves pending (what the node runs on
 *            the thread pool).
 * Memory: "VmHWM" is the kernel's peak resident set, file-backed pages included
 * (LMDB's map, a mapped snapshot: pages the kernel can drop); "anon+shmem" is the
 * peak, sampled every 2 ms, of the process's anonymous memory plus the machine's
 * shared memory above its level at the start (memfd pages count there and nowhere
 * else): memory that, without swap, stays until it is freed.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <raft/uv.h>
#include <uv.h>

#include "consensus/snapshot.h"
#include "ledger/ledger.h"
#include "tools/bench.h"

#define BENCH_SAMPLE_US 2000 /* memory sampling period */

static char links_dir[4096]; /* --links: D/links; "" without */

/* The ledger's options, as tallyd sets them (with --links, as over TLS). */
static struct tally_ledger_options bench_options(void)
{
	return (struct tally_ledger_options){.nosync = true, .writemap = true,
					     .snapshot_links_dir = links_dir[0] ? links_dir : NULL};
}
#define BENCH_RAFT_ID 1
#define BENCH_RAFT_ADDRESS "127.0.0.1:9" /* never listened on: only stored */

/* The value (kB) of `key` in a /proc file of "Key: value kB" lines; -1 if absent. */
static long proc_kb(const char *path, const char *key)
{
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return -1;
	char line[256];
	long v = -1;
	size_t kl = strlen(key);
	while (fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
			v = atol(line + kl + 1);
			break;
		}
	}
	fclose(f);
	return v;
}

static atomic_bool sampling;
static long shmem0_kb, peak_kb;

static void *sampler(void *arg)
{
	(void)arg;
	while (atomic_load(&sampling)) {
		long v = proc_kb("/proc/self/status", "RssAnon") +
			 proc_kb("/proc/meminfo", "Shmem") - shmem0_kb;
		if (v > peak_kb)
			peak_kb = v;
		usleep(BENCH_SAMPLE_US);
	}
	return NULL;
}

static pthread_t sampler_start(void)
{
	pthread_t t;
	shmem0_kb = proc_kb("/proc/meminfo", "Shmem");
	peak_kb = 0;
	atomic_store(&sampling, true);
	if (pthread_create(&t, NULL, sampler, NULL) != 0) {
		fprintf(stderr, "snapshot-bench: no sampler thread\n");
		exit(1);
	}
	return t;
}

static void sampler_stop(pthread_t t)
{
	atomic_store(&sampling, false);
	pthread_join(t, NULL);
}

static void report_memory(const char *what)
{
	printf("%s: peak VmHWM %.0f MiB, peak anon+shmem %.0f MiB\n", what,
	       (double)proc_kb("/proc/self/status", "VmHWM") / 1024.0, (double)peak_kb / 1024.0);
}

static void die(const char *what, const char *why)
{
	fprintf(stderr, "snapshot-bench: %s: %s\n", what, why);
	exit(1);
}

/* raft_uv on `dir`, loaded (as raft_start does); *snap is its latest snapshot. */
struct raft_store {
	uv_loop_t loop;
	struct raft_uv_transport transport;
	struct raft_io io;
	bool done;
	int status;
};

static void store_open(struct raft_store *s, const char *dir, struct raft_snapshot **snap)
{
	if (uv_loop_init(&s->loop) != 0 || raft_uv_tcp_init(&s->transport, &s->loop) != 0 ||
	    raft_uv_init(&s->io, &s->loop, dir, &s->transport) != 0)
		die(dir, "raft_uv does not start");
	node_snapshot_io_init(&s->io);
	if (s->io.init(&s->io, BENCH_RAFT_ID, BENCH_RAFT_ADDRESS) != 0)
		die(dir, s->io.errmsg);
	raft_term term;
	raft_id vote;
	raft_index start;
	struct raft_entry *entries;
	size_t n_entries;
	if (s->io.load(&s->io, &term, &vote, snap, &start, &entries, &n_entries) != 0)
		die(dir, s->io.errmsg);
	for (size_t i = 0; i < n_entries; i++)
		raft_free(entries[i].batch);
	raft_free(entries);
}

static void store_closed_cb(struct raft_io *io)
{
	struct raft_store *s = io->data;
	raft_uv_close(io);
	raft_uv_tcp_close(&s->transport);
}

static void store_close(struct raft_store *s)
{
	s->io.data = s;
	s->io.close(&s->io, store_closed_cb);
	uv_run(&s->loop, UV_RUN_DEFAULT);
	uv_loop_close(&s->loop);
}

static void put_cb(struct raft_io_snapshot_put *req, int status)
{
	struct raft_store *s = req->data;
	s->done = true;
	s->status = status;
}

/* One snapshot of l into the store s (raft directory `raft`), as a node takes and stores
 * it; prints what it cost. *file receives raft's file of it. */
static void take_once(struct tally_ledger *l, struct raft_store *s, const char *raft,
		      char *file, size_t cap)
{
	double t0 = bench_now_s();
	struct raft_buffer buf;
	bool reused = false;
	if (node_snapshot_take(l, raft, &buf, &reused) != 0)
		die(raft, "snapshot take failed");
	double t1 = bench_now_s();
	struct raft_snapshot snap = {.index = tally_ledger_applied_index(l), .term = 1,
				     .configuration_index = 1, .bufs = &buf, .n_bufs = 1};
	raft_configuration_init(&snap.configuration);
	if (raft_configuration_add(&snap.configuration, BENCH_RAFT_ID, BENCH_RAFT_ADDRESS,
				   RAFT_VOTER) != 0)
		die("configuration", "cannot add");
	struct raft_io_snapshot_put req = {.data = s};
	s->done = false;
	if (s->io.snapshot_put(&s->io, 1, &req, &snap, put_cb) != 0)
		die("snapshot_put", s->io.errmsg);
	while (!s->done)
		uv_run(&s->loop, UV_RUN_ONCE);
	if (s->status != 0)
		die("snapshot_put", raft_strerror(s->status));
	double t2 = bench_now_s();
	size_t len = buf.len;
	node_snapshot_find(raft, buf.base, buf.len, file, cap);
	bool adopted = node_snapshot_free(&buf);
	raft_configuration_close(&snap.configuration);
	printf("take: snapshot %.0f MiB; take %.2f s (thread pool, %s), raft store %.2f s (%s)\n",
	       (double)len / 1048576.0, t1 - t0, reused ? "over a removed snapshot" : "a new file",
	       t2 - t1, adopted ? "the copy adopted" : "written again");
}

/* Two snapshots, as a node takes them: the first into a new file; raft then removes it
 * (as it removes all but its last two), and the second is copied over it. */
static int take(const char *dir)
{
	char path[4096], file[4096];
	struct tally_ledger *l;
	struct tally_ledger_options lo = bench_options();
	snprintf(path, sizeof(path), "%s/ledger", dir);
	int rc = tally_ledger_open(path, &lo, &l);
	if (rc != 0)
		die(path, tally_strerror(rc));
	snprintf(path, sizeof(path), "%s/raft", dir);
	struct raft_store s;
	struct raft_snapshot *none = NULL;
	store_open(&s, path, &none); /* before the copies: raft's start removes tmp- files */
	pthread_t t = sampler_start();
	take_once(l, &s, path, file, sizeof(file));
	if (file[0] == '\0' || unlink(file) != 0)
		die(path, "the first snapshot's file is not there to remove");
	take_once(l, &s, path, file, sizeof(file));
	store_close(&s);
	sampler_stop(t);
	report_memory("take");
	tally_ledger_close(l);
	return 0;
}

static int restore(const char *dir)
{
	char path[4096], out_dir[4096];
	snprintf(path, sizeof(path), "%s/raft", dir);
	snprintf(out_dir, sizeof(out_dir), "%s/restored", dir);
	if (mkdir(out_dir, 0755) != 0 && errno != EEXIST)
		die(out_dir, strerror(errno));
	pthread_t t = sampler_start();
	double t0 = bench_now_s();
	struct raft_store s;
	struct raft_snapshot *snap = NULL;
	store_open(&s, path, &snap);
	if (snap == NULL || snap->n_bufs != 1)
		die(path, "no snapshot stored");
	double t1 = bench_now_s();
	struct tally_ledger *l = NULL;
	struct tally_ledger_options lo = bench_options();
	bool check_pending;
	int rc = tally_ledger_restore(out_dir, snap->bufs[0].base, snap->bufs[0].len, &lo, &l,
				      &check_pending);
	if (rc != 0)
		die("restore", tally_strerror(rc));
	char file[4096] = "";
	if (check_pending)
		node_snapshot_find(path, snap->bufs[0].base, snap->bufs[0].len, file, sizeof(file));
	raft_free(snap->bufs[0].base); /* the FSM owns it once restored */
	double t2 = bench_now_s();
	char msg[256] = "";
	if (check_pending && node_snapshot_verify(l, lo.snapshot_links_dir, file, msg, sizeof(msg)) != 0)
		die("full check", msg);
	double t3 = bench_now_s();
	raft_free(snap->bufs);
	raft_configuration_close(&snap->configuration);
	raft_free(snap);
	store_close(&s);
	sampler_stop(t);
	printf("restore: raft load %.2f s, on the loop %.2f s, full check off the loop %.2f s "
	       "(of %s), applied index %llu\n", t1 - t0, t2 - t1, t3 - t2,
	       file[0] != '\0' ? "raft's file" : "the live ledger",
	       (unsigned long long)tally_ledger_applied_index(l));
	report_memory("restore");
	tally_ledger_close(l);
	return 0;
}

static int run_child(int (*fn)(const char *), const char *dir)
{
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		die("fork", strerror(errno));
	if (pid == 0)
		exit(fn(dir));
	int status;
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return 1;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longs[] = {{"dir", required_argument, NULL, 'd'},
					      {"runs", required_argument, NULL, 'r'},
					      {"links", no_argument, NULL, 'l'},
					      {NULL, 0, NULL, 0}};
	bool links = false;
	const char *dir = NULL;
	long runs = 1;
	int c;
	while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
		if (c == 'd')
			dir = optarg;
		else if (c == 'l')
			links = true;
		else if (c == 'r')
			runs = atol(optarg);
		else
			dir = NULL, runs = 0;
	}
	if (dir == NULL || runs <= 0 || optind != argc) {
		fprintf(stderr, "usage: snapshot-bench --dir D [--runs N] [--links]  (D/ledger: "
				"the ledger)\n");
		return 2;
	}
	if (links) {
		snprintf(links_dir, sizeof(links_dir), "%s/links", dir);
		if (mkdir(links_dir, 0755) != 0 && errno != EEXIST)
			die(links_dir, strerror(errno));
	}
	for (long i = 0; i < runs; i++) {
		char cmd[4200];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s/raft' '%s/restored' && mkdir '%s/raft'", dir,
			 dir, dir);
		if (system(cmd) != 0)
			die(dir, "cannot prepare the raft directory");
		printf("run %ld\n", i + 1);
		if (run_child(take, dir) != 0 || run_child(restore, dir) != 0)
			return 1;
	}
	return 0;
}
