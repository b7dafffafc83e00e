/*
 * tally-bench: load on a running cluster through libtally.
 *
 *   tally-bench [--cluster A,B,C] [--key-dir D [--key admin] | --key-file F] [--ca FILE | --insecure]
 *               [--connections C] [--pipeline P] [--batch B] [--members M] [--duration-s S]
 *               [--commands N] [--rate R] [--preload POINTS] [--no-setup] [--json]
 *               [--latency-csv FILE]
 *
 * The key and --ca as tallyctl's ($TALLY_KEY_DIR, $TALLY_KEY_FILE, $TALLY_CA: TLS); --insecure (or TALLY_INSECURE=1) for a
 * plaintext cluster.
 * C connections keep P requests in flight each; each request carries one command, or
 * B commands with --batch. Each connection has a thread of its own, or with
 * --threads T the connections are dealt out among T threads, each driving its share
 * from one loop (as pgbench -j drives its clients), which costs less CPU per request.
 * The mix is the peers' points-op mix: 70 % accruals and 30 % redemptions of 1..1000
 * points over M members (a redemption beyond the balance is refused,
 * INSUFFICIENT_POINTS, and counted as rejected); --preload
 * gives every member POINTS points once at setup (the peers' members start with
 * 10,000, so that redemptions mostly succeed); --no-setup skips the setup (an earlier
 * run made brand and members), so that nothing but the load runs. Without --rate, a
 * request goes whenever one of the P slots is free (a closed loop: as fast as the
 * cluster answers). --rate R offers R commands per second on a fixed schedule (an
 * open loop): requests go when due, whatever the answers, as long as a slot is free,
 * and a request's latency counts from when it was due, so that time spent waiting
 * for a slot (the cluster falling behind) is counted, not hidden. The run lasts
 * --duration-s seconds (10 by default), or until --commands N commands are sent and
 * answered. A progress line per second goes to stderr (with that second's longest
 * request); the end prints throughput and latency percentiles of requests (p50, p99,
 * p99.9, max), as text or one JSON object;
 * --latency-csv writes the whole distribution of request latency (percentile,latency_ms:
 * every percent, then 99.5, 99.9, 99.99 and the maximum) for plots drawn from data.
 */
#include <assert.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rpc/connect.h"
#include "rpc/keys.h"
#include "rpc/tally.h"
#include "tools/bench.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name
#define INFLIGHT_MAX 1024
#define SAMPLES_MAX (4u << 20)
#define SETUP_BATCH 1000 /* setup commands per request */
#define CLIENT_TIMEOUT_MS 10000
/* The longest wait for answers with no request due: past it, recv on one connection
 * waits out its own timeout, so that a silent node ends as a TIMEOUT. */
#define WAIT_US_MAX ((int64_t)CLIENT_TIMEOUT_MS * 1000)

struct opts {
	struct tally_connect conn;   /* cluster, key, CA (rpc/connect.h) */
	unsigned connections;
	unsigned threads;            /* --threads: connections are shared among them (0: one each) */
	unsigned pipeline;
	unsigned batch;
	unsigned members;
	unsigned duration_s;
	uint64_t commands;           /* --commands: stop once this many are sent (0: none) */
	unsigned rate;
	unsigned preload;            /* points each member gets once at setup (the peers: 10,000) */
	bool json;
	bool no_setup;               /* --no-setup: brand and members exist (an earlier run's) */
	const char *latency_csv;     /* --latency-csv FILE: the whole distribution */
	int pid;                     /* this run's, in its request ids (read once: a system call) */
	enum bench_ids ids;          /* --request-ids; the counter: bench-PID-WORKER-N */
};

/* One connection and the requests it has in flight. */
struct worker {
	const struct opts *o;
	unsigned index;
	uint64_t rng;
	uint32_t *lat_us;            /* one sample per request */
	size_t n_lat;
	uint64_t sent_at_ns[INFLIGHT_MAX];
	uint64_t call_of[INFLIGHT_MAX];
	struct tally_client *c;
	struct tally_arena arena;
	uint64_t n;                  /* commands made: their request ids */
	uint64_t next_ns;            /* when the next request is due (--rate) */
	uint64_t interval_ns;        /* between this connection's requests (--rate), or 0 */
	unsigned inflight;
	bool draining;               /* taking what is due, then connecting again */
	bool finished;
	char redirect[256];
};

/* A thread and the connections it drives. */
struct thread {
	pthread_t id;
	struct worker *ws;
	unsigned n;
};

static atomic_uint_fast64_t done_commands, rejected_commands, errors;
static atomic_bool stop;
static atomic_uint_fast32_t second_max_us; /* the longest request answered this second */
static atomic_uint_fast64_t sent_commands;

/* Whether another request may go: false (and everyone stops) once --commands are sent. */
static bool may_send(const struct opts *o)
{
	if (o->commands == 0)
		return !atomic_load(&stop);
	if (atomic_fetch_add(&sent_commands, o->batch) + o->batch > o->commands) {
		atomic_store(&stop, true);
		return false;
	}
	return !atomic_load(&stop);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void usage(void)
{
	fprintf(stderr, "usage: tally-bench [--cluster A,B] [--key-dir D [--key NAME] | --key-file F]\n"
			"                   [--ca FILE | --insecure]\n"
			"                   [--connections C] [--threads T] [--pipeline P] [--batch B]\n"
			"                   [--members M]\n"
			"                   [--duration-s S] [--commands N] [--rate R] [--preload POINTS]\n"
			"                   [--no-setup] [--json]\n"
			"                   [--latency-csv FILE] [--request-ids counter|random|time]\n");
	exit(2);
}

static void parse(int argc, char **argv, struct opts *o)
{
	*o = (struct opts){.connections = 4, .pipeline = 16, .batch = 1, .members = 100000};
	tally_connect_from_env(&o->conn);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		int took = tally_connect_flag(&o->conn, argc, argv, i);
		if (took > 0) {
			i += took - 1;
			continue;
		}
		if (strcmp(a, "--json") == 0 || strcmp(a, "--no-setup") == 0) {
			*(a[2] == 'j' ? &o->json : &o->no_setup) = true;
			continue;
		}
		if (took < 0 || i + 1 >= argc)
			usage();
		const char *v = argv[++i];
		unsigned long n = strtoul(v, NULL, 10);
		if (strcmp(a, "--connections") == 0) o->connections = (unsigned)n;
		else if (strcmp(a, "--threads") == 0) o->threads = (unsigned)n;
		else if (strcmp(a, "--pipeline") == 0) o->pipeline = (unsigned)n;
		else if (strcmp(a, "--batch") == 0) o->batch = (unsigned)n;
		else if (strcmp(a, "--members") == 0) o->members = (unsigned)n;
		else if (strcmp(a, "--duration-s") == 0) o->duration_s = (unsigned)n;
		else if (strcmp(a, "--commands") == 0) o->commands = n;
		else if (strcmp(a, "--rate") == 0) o->rate = (unsigned)n;
		else if (strcmp(a, "--preload") == 0) o->preload = (unsigned)n;
		else if (strcmp(a, "--latency-csv") == 0) o->latency_csv = v;
		else if (strcmp(a, "--request-ids") == 0 && bench_ids_parse(v) >= 0)
			o->ids = (enum bench_ids)bench_ids_parse(v);
		else usage();
	}
	if (o->duration_s == 0)
		o->duration_s = o->commands > 0 ? UINT_MAX : 10; /* --commands alone: until sent */
	if (o->threads == 0 || o->threads > o->connections)
		o->threads = o->connections;
	if (o->connections == 0 || o->connections > TALLY_CLIENT_WAIT_ANY_MAX || o->pipeline == 0 ||
	    o->pipeline > INFLIGHT_MAX || o->batch == 0 || o->batch > TALLY_BATCH_COMMANDS_MAX ||
	    o->members == 0)
		usage();
}

/* The distribution of the sorted samples (µs) as CSV: percentile,latency_ms. */
static int write_latency_csv(const char *path, const uint32_t *sorted, size_t n)
{
	static const double tail[] = {99.5, 99.9, 99.99, 100};
	FILE *f = fopen(path, "w");
	if (f == NULL)
		return -1;
	fprintf(f, "percentile,latency_ms\n");
	for (int i = 0; i < 100 + (int)(sizeof(tail) / sizeof(tail[0])); i++) {
		double pct = i < 100 ? i : tail[i - 100];
		size_t at = n == 0 ? 0 : (size_t)(pct / 100.0 * (double)(n - 1) + 0.5);
		fprintf(f, "%g,%.3f\n", pct, n == 0 ? 0.0 : sorted[at] / 1e3);
	}
	return fclose(f) == 0 ? 0 : -1;
}

static struct tally_client *open_client(const struct opts *o)
{
	struct tally_client_options co = {.timeout_ms = CLIENT_TIMEOUT_MS};
	struct tally_client *c = NULL;
	char err[512];
	Tally__V1__ResultCode rc = tally_connect_open(&o->conn, "tally-bench", "admin", co, &c, err,
						      sizeof(err));
	if (rc != CODE(OK)) {
		fprintf(stderr, "tally-bench: %s\n", err);
		exit(rc == CODE(INVALID_ARGUMENT) ? 2 : 3);
	}
	return c;
}

/* The command's request id (--request-ids). */
static void request_id(char *id, size_t cap, uint64_t *rng, const struct opts *o,
		       unsigned worker, uint64_t n)
{
	if (o->ids == BENCH_IDS_COUNTER) {
		snprintf(id, cap, "bench-%d-%u-%" PRIu64, o->pid, worker, n);
		return;
	}
	assert(cap >= 33);
	uint64_t ms = 0;
	if (o->ids == BENCH_IDS_TIME) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	}
	uint64_t hi = rnd(rng);
	bench_id_format(id, o->ids, hi, rnd(rng), ms);
}

/* Fills one command of the mix. */
static void op(struct tally_arena *a, uint64_t *rng, const struct opts *o, unsigned worker,
	       uint64_t n, Tally__V1__Command *c)
{
	char id[48], member[24];
	unsigned members = o->members;
	request_id(id, sizeof(id), rng, o, worker, n);
	snprintf(member, sizeof(member), "m%07u", (unsigned)(rnd(rng) % members));
	tally__v1__command__init(c);
	c->request_id = tally_arena_strdup(a, id);
	int64_t points = 1 + (int64_t)(rnd(rng) % 1000);
	if (rnd(rng) % 10 < 7) {
		Tally__V1__Accrue *m = tally_arena_alloc(a, sizeof(*m));
		tally__v1__accrue__init(m);
		m->brand = (char *)"bench";
		m->member = tally_arena_strdup(a, member);
		m->points = points;
		c->body_case = TALLY__V1__COMMAND__BODY_ACCRUE;
		c->accrue = m;
	} else {
		Tally__V1__Redeem *m = tally_arena_alloc(a, sizeof(*m));
		tally__v1__redeem__init(m);
		m->brand = (char *)"bench";
		m->member = tally_arena_strdup(a, member);
		m->points = points;
		c->body_case = TALLY__V1__COMMAND__BODY_REDEEM;
		c->redeem = m;
	}
}

/* Sends one request (one command or a batch) into a free slot; remembers when it was
 * due (its latency counts from then). False when it could not be sent. */
static bool send_one(struct worker *w, unsigned slot, uint64_t due_ns)
{
	struct tally_arena *a = &w->arena;
	Tally__V1__Request req = TALLY__V1__REQUEST__INIT;
	Tally__V1__CommandList list = TALLY__V1__COMMAND_LIST__INIT;
	Tally__V1__Command *cmds = tally_arena_alloc(a, w->o->batch * sizeof(*cmds));
	Tally__V1__Command **ptrs = tally_arena_alloc(a, w->o->batch * sizeof(*ptrs));
	for (unsigned i = 0; i < w->o->batch; i++) {
		op(a, &w->rng, w->o, w->index, w->n++, &cmds[i]);
		ptrs[i] = &cmds[i];
	}
	if (w->o->batch == 1) {
		req.body_case = TALLY__V1__REQUEST__BODY_COMMAND;
		req.command = ptrs[0];
	} else {
		list.commands = ptrs;
		list.n_commands = w->o->batch;
		req.body_case = TALLY__V1__REQUEST__BODY_BATCH;
		req.batch = &list;
	}
	Tally__V1__ResultCode rc = tally_client_send(w->c, &req);
	tally_arena_reset(a);
	if (rc != CODE(OK)) {
		atomic_fetch_add(&errors, 1);
		fprintf(stderr, "tally-bench: send: %s: %s\n", tally_result_name(rc),
			tally_client_error(w->c));
		return false;
	}
	assert(slot < w->o->pipeline && req.call_id != 0);
	w->sent_at_ns[slot] = due_ns;
	w->call_of[slot] = req.call_id;
	return true;
}

static void account(const Tally__V1__Response *res, unsigned batch)
{
	if (res->code != CODE(OK)) {
		if (atomic_fetch_add(&errors, 1) < 5)
			fprintf(stderr, "tally-bench: answer %s: %s\n", tally_result_name(res->code),
				res->message);
		return;
	}
	uint64_t ok = 0, rejected = 0;
	if (res->body_case == TALLY__V1__RESPONSE__BODY_RESULT) {
		*(res->result->code == CODE(OK) ? &ok : &rejected) += 1;
	} else if (res->body_case == TALLY__V1__RESPONSE__BODY_BATCH) {
		for (size_t i = 0; i < res->batch->n_results; i++)
			*(res->batch->results[i]->code == CODE(OK) ? &ok : &rejected) += 1;
	}
	(void)batch;
	atomic_fetch_add(&done_commands, ok + rejected);
	atomic_fetch_add(&rejected_commands, rejected);
}

/* Points the client at the leader before the pipeline starts (a follower would answer
 * every pipelined request NOT_LEADER). */
static void find_leader(struct tally_client *c, struct tally_arena *a)
{
	Tally__V1__Admin ad = TALLY__V1__ADMIN__INIT;
	ad.op = TALLY__V1__ADMIN__OP__STATUS;
	Tally__V1__Response *res;
	if (tally_client_admin(c, &ad, a, &res) == CODE(OK) && res->status != NULL &&
	    res->status->leader != NULL && res->status->leader->client_address != NULL &&
	    res->status->leader->client_address[0] != '\0' &&
	    strcmp(res->status->leader->client_address, tally_client_address(c)) != 0)
		tally_client_follow(c, res->status->leader->client_address);
	tally_arena_reset(a);
}

/* A slot with no request in it (call id 0), or o->pipeline when all are taken. */
static unsigned free_slot(const struct worker *w)
{
	unsigned s = 0;
	while (s < w->o->pipeline && w->call_of[s] != 0)
		s++;
	return s;
}

/* Waits, without an answer due, until the next send is due. */
static void sleep_until(uint64_t due_ns)
{
	uint64_t t = now_ns();
	if (due_ns <= t)
		return;
	struct timespec d = {(time_t)((due_ns - t) / 1000000000u), (long)((due_ns - t) % 1000000000u)};
	nanosleep(&d, NULL); /* pacing the offered load, not waiting on state */
}

/* Takes one answer: its latency from when its request was due, its results. Returns
 * false when the connection must be drained and opened again (lost, NOT_LEADER). */
static bool take_answer(struct worker *w)
{
	Tally__V1__Response *res;
	Tally__V1__ResultCode rc = tally_client_recv(w->c, &w->arena, &res);
	if (rc != CODE(OK)) {
		atomic_fetch_add(&errors, 1);
		return false; /* which request it was is not known: slots are freed at reconnect */
	}
	unsigned slot = 0;
	while (slot < w->o->pipeline && w->call_of[slot] != res->call_id)
		slot++;
	if (slot < w->o->pipeline) {
		uint64_t lat = (now_ns() - w->sent_at_ns[slot]) / 1000;
		uint32_t us = (uint32_t)(lat > UINT32_MAX ? UINT32_MAX : lat);
		if (w->n_lat < SAMPLES_MAX)
			w->lat_us[w->n_lat++] = us;
		uint_fast32_t seen = atomic_load(&second_max_us);
		while (us > seen && !atomic_compare_exchange_weak(&second_max_us, &seen, us))
			;
		w->call_of[slot] = 0;
	}
	account(res, w->o->batch);
	bool moved = res->code == CODE(NOT_LEADER);
	if (moved)
		snprintf(w->redirect, sizeof(w->redirect), "%s", res->leader_address);
	tally_arena_reset(&w->arena);
	return !moved;
}

/* A connection keeps up to `pipeline` requests in flight until stopped. Without --rate
 * a request goes as soon as a slot is free (a closed loop). With --rate the load is
 * offered on a schedule, whatever the answers (an open loop): a request is due every
 * connections/rate seconds, answers are taken while waiting for the next, and a
 * request's latency counts from when it was due, so that a request held back by a
 * full pipeline counts the wait. A NOT_LEADER answer or a lost connection drains what
 * is still due, then the connection is made again (to the leader named, or the same
 * node). */
static void conn_start(struct worker *w)
{
	const struct opts *o = w->o;
	w->c = open_client(o);
	tally_arena_init(&w->arena, 1 << 20, 0);
	w->interval_ns = o->rate ? 1000000000ull * o->batch * o->connections / o->rate : 0;
	w->next_ns = now_ns();
	find_leader(w->c, &w->arena);
}

static void conn_end(struct worker *w)
{
	tally_arena_free(&w->arena);
	tally_client_close(w->c);
}

/* Whether the connection may send now, were its next request due. */
static bool conn_room(const struct worker *w)
{
	return !w->draining && w->inflight < w->o->pipeline && !atomic_load(&stop);
}

/* Does what the connection can do without waiting: ends it, connects it again, or
 * sends a request that is due. Returns false when it must wait (for an answer, or
 * until its next request is due). */
static bool conn_act(struct worker *w)
{
	if (w->finished)
		return false;
	if (atomic_load(&stop) && w->inflight == 0) {
		w->finished = true;
		return false;
	}
	if (w->draining && w->inflight == 0) {
		tally_client_follow(w->c, w->redirect[0] ? w->redirect : tally_client_address(w->c));
		memset(w->call_of, 0, sizeof(w->call_of));
		w->draining = false;
		w->redirect[0] = '\0';
		return true;
	}
	uint64_t t = now_ns();
	if (!conn_room(w) || (w->interval_ns != 0 && t < w->next_ns))
		return false;
	if (!may_send(w->o))
		return true; /* stopped: what is in flight is still taken */
	bool sent = send_one(w, free_slot(w), w->interval_ns ? w->next_ns : t);
	w->next_ns += w->interval_ns;
	if (sent)
		w->inflight++;
	else if (w->inflight == 0)
		w->finished = true; /* not even an idle connection takes a request */
	else
		w->draining = true;
	return true;
}

/* Takes the connection's next answer (which has arrived, or recv waits for it). */
static void conn_take(struct worker *w)
{
	assert(w->inflight > 0);
	w->inflight--;
	if (!take_answer(w))
		w->draining = true;
}

/* Until the thread's connections are all finished: lets each do what it can (send
 * what is due), then waits for answers among them, or until a request is due, and
 * takes every answer that came. */
static void *run_thread(void *arg)
{
	struct thread *th = arg;
	struct tally_client *waiting[TALLY_CLIENT_WAIT_ANY_MAX];
	struct worker *of[TALLY_CLIENT_WAIT_ANY_MAX];
	bool ready[TALLY_CLIENT_WAIT_ANY_MAX];
	for (unsigned i = 0; i < th->n; i++)
		conn_start(&th->ws[i]);
	for (;;) {
		unsigned live = 0;
		size_t k = 0;
		uint64_t due = UINT64_MAX;
		for (unsigned i = 0; i < th->n; i++) {
			struct worker *w = &th->ws[i];
			while (conn_act(w))
				;
			live += !w->finished;
			if (w->inflight > 0) {
				waiting[k] = w->c;
				of[k++] = w;
			}
			if (!w->finished && conn_room(w) && w->interval_ns != 0 && w->next_ns < due)
				due = w->next_ns;
		}
		if (live == 0)
			break;
		uint64_t t = now_ns();
		if (k == 0) { /* a live connection with nothing in flight waits for --rate */
			assert(due != UINT64_MAX);
			sleep_until(due);
			continue;
		}
		int64_t timeout_us = due == UINT64_MAX ? WAIT_US_MAX
				   : due <= t ? 0 : (int64_t)(due - t) / 1000;
		if (tally_client_wait_any(waiting, k, timeout_us, ready) == 0) {
			if (due == UINT64_MAX)
				conn_take(of[0]); /* a silent node: recv ends it with TIMEOUT */
			continue;
		}
		for (size_t j = 0; j < k; j++)
			if (ready[j])
				conn_take(of[j]);
	}
	for (unsigned i = 0; i < th->n; i++)
		conn_end(&th->ws[i]);
	return NULL;
}

/* Member i's setup command: opened, or (preload) given o->preload points once. */
static void setup_command(const struct opts *o, struct tally_arena *a, unsigned i, bool preload,
			  Tally__V1__Command *c)
{
	char id[24], rid[40];
	snprintf(id, sizeof(id), "m%07u", i);
	tally__v1__command__init(c);
	if (preload) {
		Tally__V1__Accrue *m = tally_arena_alloc(a, sizeof(*m));
		tally__v1__accrue__init(m);
		m->brand = (char *)"bench";
		m->member = tally_arena_strdup(a, id);
		m->points = o->preload;
		snprintf(rid, sizeof(rid), "preload-%s-%u", id, o->preload);
		c->request_id = tally_arena_strdup(a, rid); /* once per member, whatever the runs */
		c->body_case = TALLY__V1__COMMAND__BODY_ACCRUE;
		c->accrue = m;
		return;
	}
	Tally__V1__OpenMember *m = tally_arena_alloc(a, sizeof(*m));
	tally__v1__open_member__init(m);
	m->id = tally_arena_strdup(a, id);
	m->segment = TALLY__V1__SEGMENT__OWNER_PASSENGER;
	c->request_id = tally_arena_strdup(a, id);
	c->body_case = TALLY__V1__COMMAND__BODY_OPEN_MEMBER;
	c->open_member = m;
}

/* Every member's setup command, SETUP_BATCH per request. */
static void setup_members(const struct opts *o, struct tally_client *c, bool preload)
{
	for (unsigned from = 0; from < o->members; from += SETUP_BATCH) {
		struct tally_arena a;
		tally_arena_init(&a, 1 << 20, 0);
		Tally__V1__Command *cmds = tally_arena_alloc(&a, SETUP_BATCH * sizeof(*cmds));
		Tally__V1__Command *ptrs[SETUP_BATCH];
		unsigned k = o->members - from < SETUP_BATCH ? o->members - from : SETUP_BATCH;
		for (unsigned i = 0; i < k; i++) {
			setup_command(o, &a, from + i, preload, &cmds[i]);
			ptrs[i] = &cmds[i];
		}
		Tally__V1__BatchResult *br;
		if (tally_client_batch(c, ptrs, k, &a, &br) != CODE(OK)) {
			fprintf(stderr, "tally-bench: setup failed: %s\n", tally_client_error(c));
			exit(3);
		}
		for (size_t i = 0; i < br->n_results; i++)
			if (br->results[i]->code != CODE(OK) && br->results[i]->code != CODE(ALREADY_EXISTS)) {
				fprintf(stderr, "tally-bench: setup of m%07u: %s\n", from + (unsigned)i,
					tally_result_name(br->results[i]->code));
				exit(3);
			}
		tally_arena_free(&a);
	}
}

/* Brand "bench" and its members (with --preload, their points), in batches through
 * one connection. Request ids make a second run's setup a replay. */
static void setup(const struct opts *o)
{
	struct tally_client *c = open_client(o);
	struct tally_arena a;
	tally_arena_init(&a, 4096, 0);
	Tally__V1__Command cmd = TALLY__V1__COMMAND__INIT;
	Tally__V1__RegisterBrand b = TALLY__V1__REGISTER_BRAND__INIT;
	b.id = (char *)"bench";
	b.name = (char *)"bench";
	b.currency = (char *)"EUR";
	Tally__V1__CommandResult *r;
	cmd.request_id = (char *)"bench-brand";
	cmd.body_case = TALLY__V1__COMMAND__BODY_REGISTER_BRAND;
	cmd.register_brand = &b;
	tally_client_command(c, &cmd, &a, &r);
	tally_arena_free(&a);
	setup_members(o, c, false);
	if (o->preload > 0)
		setup_members(o, c, true);
	tally_client_close(c);
}

/* Once a second until the run ends: the commands of that second, on stderr. */
static void report_seconds(const struct opts *o)
{
	uint64_t last = 0;
	for (unsigned s = 1; s <= o->duration_s && !atomic_load(&stop); s++) {
		for (int tick = 0; tick < 20 && !atomic_load(&stop); tick++) {
			struct timespec step = {0, 50000000}; /* a --commands run ends within 50 ms */
			nanosleep(&step, NULL);
		}
		uint64_t d = atomic_load(&done_commands);
		fprintf(stderr, "  %3us  %8" PRIu64 " commands/s  (%" PRIu64 " total, %" PRIu64
			" errors; longest request %.1f ms)\n", s, d - last, d, (uint64_t)atomic_load(&errors),
			(double)atomic_exchange(&second_max_us, 0) / 1e3);
		last = d;
	}
}

/* Every connection's request latencies in one sorted array (*total of them); each
 * connection's own is freed. */
static uint32_t *latencies_merged(struct worker *ws, unsigned n, size_t *total)
{
	*total = 0;
	for (unsigned i = 0; i < n; i++)
		*total += ws[i].n_lat;
	uint32_t *all = malloc((*total + 1) * sizeof(*all));
	size_t k = 0;
	for (unsigned i = 0; i < n; i++) {
		if (all != NULL)
			memcpy(all + k, ws[i].lat_us, ws[i].n_lat * sizeof(*all));
		k += ws[i].n_lat;
		free(ws[i].lat_us);
	}
	if (all != NULL)
		qsort(all, *total, sizeof(*all), bench_cmp_u32);
	return all;
}

static void report(const struct opts *o, double secs, const uint32_t *all, size_t total)
{
	double p50 = total ? all[total / 2] / 1e3 : 0, p99 = total ? all[total * 99 / 100] / 1e3 : 0;
	double p999 = total ? all[total * 999 / 1000] / 1e3 : 0, max = total ? all[total - 1] / 1e3 : 0;
	uint64_t cmds = atomic_load(&done_commands);
	if (o->json)
		printf("{\"connections\":%u,\"pipeline\":%u,\"batch\":%u,\"seconds\":%.2f,\"commands\":%" PRIu64
		       ",\"commands_per_s\":%.0f,\"rejected\":%" PRIu64 ",\"errors\":%" PRIu64
		       ",\"lat_ms\":{\"p50\":%.2f,\"p99\":%.2f,\"p999\":%.2f,\"max\":%.2f}}\n",
		       o->connections, o->pipeline, o->batch, secs, cmds, (double)cmds / secs,
		       (uint64_t)atomic_load(&rejected_commands), (uint64_t)atomic_load(&errors),
		       p50, p99, p999, max);
	else
		printf("%" PRIu64 " commands in %.2f s: %.0f commands/s (%" PRIu64 " rejected, %" PRIu64
		       " errors); request latency p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms\n",
		       cmds, secs, (double)cmds / secs, (uint64_t)atomic_load(&rejected_commands),
		       (uint64_t)atomic_load(&errors), p50, p99, p999, max);
}

int main(int argc, char **argv)
{
	struct opts o;
	parse(argc, argv, &o);
	o.pid = (int)getpid();
	if (!o.no_setup) {
		fprintf(stderr, "tally-bench: setting up brand and %u members\n", o.members);
		setup(&o);
	}
	struct worker *ws = calloc(o.connections, sizeof(*ws));
	struct thread *ths = calloc(o.threads, sizeof(*ths));
	for (unsigned i = 0; i < o.connections; i++) {
		ws[i].o = &o;
		ws[i].index = i;
		ws[i].rng = 0x9e3779b97f4a7c15ull * (i + 1);
		ws[i].lat_us = malloc(SAMPLES_MAX * sizeof(uint32_t));
	}
	for (unsigned t = 0, from = 0; t < o.threads; t++) { /* connections dealt out evenly */
		unsigned n = o.connections / o.threads + (t < o.connections % o.threads);
		ths[t] = (struct thread){.ws = ws + from, .n = n};
		from += n;
		pthread_create(&ths[t].id, NULL, run_thread, &ths[t]);
	}
	uint64_t start = now_ns();
	report_seconds(&o);
	atomic_store(&stop, true);
	for (unsigned t = 0; t < o.threads; t++)
		pthread_join(ths[t].id, NULL);
	double secs = (double)(now_ns() - start) / 1e9;
	size_t total;
	uint32_t *all = latencies_merged(ws, o.connections, &total);
	if (all == NULL) {
		fprintf(stderr, "tally-bench: out of memory\n");
		return 1;
	}
	report(&o, secs, all, total);
	int rc = 0;
	if (o.latency_csv != NULL && write_latency_csv(o.latency_csv, all, total) != 0) {
		fprintf(stderr, "tally-bench: %s: cannot write\n", o.latency_csv);
		rc = 1;
	}
	free(all);
	free(ths);
	free(ws);
	return rc;
}
