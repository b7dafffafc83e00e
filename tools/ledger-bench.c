/*
 * ledger-bench: how fast the state machine applies batches, alone on one core.
 *
 * The workload is the points-op mix the peer benchmarks use: 70 % accruals and 30 %
 * redemptions of 1..1000 points over M members picked uniformly at random. Batches
 * are serialized up front exactly as raft would carry them, then applied with
 * tally_ledger_apply_bytes (decode included) into an LMDB opened with MDB_NOSYNC, as
 * a cluster node runs it, under the rules a new cluster's ledger runs (--rules N: the
 * version set_rules switches it to first; TALLY_RULES_CURRENT unless told, 1 leaves
 * it at the first). The line before last gives the rate over each quarter of the
 * commands, as the ledger grows; the last is "apply: N commands/s".
 *
 * A command's request id (--request-ids) is "op-N", N its number (counter, the
 * default): each idempotency claim lands next to the one before; or 32 hex digits of a
 * mix of N (random), as a client's random ids (UUIDv4) would be, each claim landing
 * anywhere in the table; or the batch's time in milliseconds (12 hex digits) and 20 of
 * the mix (time), UUIDv7's layout, which Tally's own clients send: claims land at the
 * table's end, among those of the same millisecond.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ledger/ledger.h"
#include "tools/bench.h"

#define T0_MS 1767225600000LL /* the first batch's time: 2026-01-01T00:00:00Z */
#define BATCH_STEP_MS 10      /* each batch of the workload 10 ms after the one before */

struct opts {
	long commands;
	long members;
	long batch;
	const char *dir;
	bool writemap;
	bool keep;
	long map_mb;
	long rules;
	long group;
	enum bench_ids ids;
};

struct blob {
	uint8_t *data;
	size_t len;
};

static uint64_t rng_state = BENCH_SEED;

static uint64_t rnd(void)
{
	return bench_rnd(&rng_state);
}

static void usage(void)
{
	fprintf(stderr, "usage: ledger-bench [--commands N] [--members M] [--batch B] "
			"[--dir D] [--writemap] [--keep] [--map-mb N] [--rules N] [--group G] "
			"[--request-ids counter|random|time]\n");
	exit(2);
}

static void parse(int argc, char **argv, struct opts *o)
{
	static const struct option longs[] = {
		{"commands", required_argument, NULL, 'n'}, {"members", required_argument, NULL, 'm'},
		{"batch", required_argument, NULL, 'b'},    {"dir", required_argument, NULL, 'd'},
		{"writemap", no_argument, NULL, 'w'},        {"keep", no_argument, NULL, 'k'},
		{"map-mb", required_argument, NULL, 'M'},    {"rules", required_argument, NULL, 'r'},
		{"group", required_argument, NULL, 'g'},    {"request-ids", required_argument, NULL, 'i'},
		{NULL, 0, NULL, 0}};
	*o = (struct opts){1000000, 100000, 1000, NULL, false, false, 0, TALLY_RULES_CURRENT, 1,
			   BENCH_IDS_COUNTER};
	int c;
	while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
		switch (c) {
		case 'n': o->commands = atol(optarg); break;
		case 'm': o->members = atol(optarg); break;
		case 'b': o->batch = atol(optarg); break;
		case 'd': o->dir = optarg; break;
		case 'w': o->writemap = true; break;
		case 'k': o->keep = true; break;
		case 'M': o->map_mb = atol(optarg); break;
		case 'r': o->rules = atol(optarg); break;
		case 'g': o->group = atol(optarg); break;
		case 'i': {
			int ids = bench_ids_parse(optarg);
			if (ids < 0)
				usage();
			o->ids = (enum bench_ids)ids;
			break;
		}
		default: usage();
		}
	}
	if (o->commands <= 0 || o->members <= 0 || o->batch <= 0 || o->batch > TALLY_BATCH_COMMANDS_MAX ||
	    o->rules < TALLY_RULES_FIRST || o->rules > TALLY_RULES_CURRENT || o->group <= 0 ||
	    o->group > (long)TALLY_LEDGER_GROUP_BATCHES_MAX)
		usage();
}

static Tally__V1__Principal admin_p = TALLY__V1__PRINCIPAL__INIT;
static Tally__V1__Principal dealer_p = TALLY__V1__PRINCIPAL__INIT;
static Tally__V1__Principal mall_p = TALLY__V1__PRINCIPAL__INIT;
static Tally__V1__Principal system_p = TALLY__V1__PRINCIPAL__INIT;
static char *all_brands[1] = {(char *)"*"};

static void principals(void)
{
	admin_p.key_name = (char *)"admin";
	admin_p.role = TALLY__V1__ROLE__ADMIN;
	dealer_p.key_name = (char *)"dealer";
	dealer_p.role = TALLY__V1__ROLE__DEALER;
	mall_p.key_name = (char *)"mall";
	mall_p.role = TALLY__V1__ROLE__MALL;
	system_p.key_name = (char *)"tally-system";
	system_p.role = TALLY__V1__ROLE__SYSTEM;
	Tally__V1__Principal *ps[4] = {&admin_p, &dealer_p, &mall_p, &system_p};
	for (int i = 0; i < 4; i++) {
		ps[i]->brands = all_brands;
		ps[i]->n_brands = 1;
	}
}

/* Serializes one batch of commands built by `fill` for indexes [first, first + n). */
static struct blob encode_batch(struct tally_arena *a, uint64_t raft_index, int64_t time_ms,
				long first, long n,
				void (*fill)(struct tally_arena *, Tally__V1__Command *, long, void *),
				void *ctx)
{
	Tally__V1__Batch b = TALLY__V1__BATCH__INIT;
	b.raft_index = raft_index;
	b.raft_term = 1;
	b.time_ms = time_ms;
	b.n_commands = (size_t)n;
	b.commands = tally_arena_alloc(a, (size_t)n * sizeof(*b.commands));
	for (long i = 0; i < n; i++) {
		Tally__V1__Command *c = tally_arena_alloc(a, sizeof(*c));
		tally__v1__command__init(c);
		fill(a, c, first + i, ctx);
		b.commands[i] = c;
	}
	struct blob out;
	out.len = tally__v1__batch__get_packed_size(&b);
	out.data = malloc(out.len);
	if (out.data == NULL) {
		perror("malloc");
		exit(1);
	}
	tally__v1__batch__pack(&b, out.data);
	tally_arena_reset(a);
	return out;
}

static char *fmt(struct tally_arena *a, const char *f, long v)
{
	char buf[64];
	snprintf(buf, sizeof(buf), f, v);
	return tally_arena_strdup(a, buf);
}

static void fill_setup(struct tally_arena *a, Tally__V1__Command *c, long i, void *ctx)
{
	(void)ctx;
	c->principal = &admin_p;
	c->request_id = fmt(a, "setup-%ld", i);
	if (i == 0) {
		Tally__V1__RegisterBrand *b = tally_arena_alloc(a, sizeof(*b));
		tally__v1__register_brand__init(b);
		b->id = (char *)"aurora";
		b->name = (char *)"Aurora Motors";
		b->currency = (char *)"EUR";
		b->point_value_micros = 10000;
		b->expiry_months = 24;
		c->body_case = TALLY__V1__COMMAND__BODY_REGISTER_BRAND;
		c->register_brand = b;
		return;
	}
	Tally__V1__OpenMember *m = tally_arena_alloc(a, sizeof(*m));
	tally__v1__open_member__init(m);
	m->id = fmt(a, "m%07ld", i - 1);
	m->segment = TALLY__V1__SEGMENT__OWNER_PASSENGER;
	c->body_case = TALLY__V1__COMMAND__BODY_OPEN_MEMBER;
	c->open_member = m;
}

/* The set_rules a new cluster's first leader proposes (consensus/rules.c). */
static void fill_rules(struct tally_arena *a, Tally__V1__Command *c, long i, void *ctx)
{
	(void)i;
	c->principal = &system_p;
	c->request_id = (char *)"set-rules";
	Tally__V1__SetRules *m = tally_arena_alloc(a, sizeof(*m));
	tally__v1__set_rules__init(m);
	m->version = (uint32_t)*(long *)ctx;
	c->body_case = TALLY__V1__COMMAND__BODY_SET_RULES;
	c->set_rules = m;
}

/* splitmix64's finalizer: a number's bits spread over all 64. */
static uint64_t mix(uint64_t x)
{
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* The id of command i, its batch at t_ms; the random bits a mix of i, the same every run. */
static char *request_id(struct tally_arena *a, long i, enum bench_ids ids, int64_t t_ms)
{
	if (ids == BENCH_IDS_COUNTER)
		return fmt(a, "op-%ld", i);
	char buf[33];
	uint64_t hi = mix((uint64_t)i);
	bench_id_format(buf, ids, hi, mix(hi ^ (uint64_t)i), (uint64_t)t_ms);
	return tally_arena_strdup(a, buf);
}

static void fill_op(struct tally_arena *a, Tally__V1__Command *c, long i, void *ctx)
{
	const struct opts *o = ctx;
	char *member = fmt(a, "m%07ld", (long)(rnd() % (uint64_t)o->members));
	int64_t points = 1 + (int64_t)(rnd() % 1000);
	c->request_id = request_id(a, i, o->ids, T0_MS + i / o->batch * BATCH_STEP_MS);
	if (rnd() % 10 < 7) {
		Tally__V1__Accrue *m = tally_arena_alloc(a, sizeof(*m));
		tally__v1__accrue__init(m);
		m->brand = (char *)"aurora";
		m->member = member;
		m->points = points;
		m->reason = (char *)"purchase";
		c->principal = &dealer_p;
		c->body_case = TALLY__V1__COMMAND__BODY_ACCRUE;
		c->accrue = m;
	} else {
		Tally__V1__Redeem *m = tally_arena_alloc(a, sizeof(*m));
		tally__v1__redeem__init(m);
		m->brand = (char *)"aurora";
		m->member = member;
		m->points = points;
		c->principal = &mall_p;
		c->body_case = TALLY__V1__COMMAND__BODY_REDEEM;
		c->redeem = m;
	}
}

/* Applies n serialized batches, decode included: one at a time as raft's entries
 * (tally_ledger_apply_bytes) when n is 1, else as one group in one transaction. */
static int apply_timed(struct tally_ledger *l, const struct blob *batches, long n,
		       struct tally_arena *dec, struct tally_arena *out, long *ok, long *rejected)
{
	const Tally__V1__Batch *bs[TALLY_LEDGER_GROUP_BATCHES_MAX];
	Tally__V1__CommandResult **rs[TALLY_LEDGER_GROUP_BATCHES_MAX];
	bool skipped[TALLY_LEDGER_GROUP_BATCHES_MAX];
	size_t counts[TALLY_LEDGER_GROUP_BATCHES_MAX];
	int rc;
	if (n == 1) {
		rc = tally_ledger_apply_bytes(l, batches[0].data, batches[0].len, out, &rs[0], &counts[0],
					      &skipped[0]);
	} else {
		tally_arena_reset(dec);
		for (long i = 0; i < n; i++) {
			bs[i] = tally_ledger_batch_decode(dec, batches[i].data, batches[i].len);
			if (bs[i] == NULL)
				return TALLY_ECORRUPT;
			counts[i] = bs[i]->n_commands;
		}
		struct tally_ledger_group g = {bs, (size_t)n, rs, skipped};
		rc = tally_ledger_apply_group(l, &g, out);
	}
	for (long i = 0; rc == 0 && i < n; i++)
		for (size_t c = 0; c < counts[i]; c++)
			rs[i][c]->code == TALLY__V1__RESULT_CODE__OK ? (*ok)++ : (*rejected)++;
	return rc;
}

/* When each quarter of the commands was applied: the apply's rate as the ledger grows
 * (reading an account, its path and its lots costs more the more it holds). */
#define QUARTERS 4
struct quarters {
	double start, at[QUARTERS];
	long total, passed;
};

static void quarters_note(struct quarters *q, long done, double now)
{
	while (q->passed < QUARTERS && done >= q->total * (q->passed + 1) / QUARTERS)
		q->at[q->passed++] = now;
}

static void quarters_print(const struct quarters *q)
{
	printf("apply by quarter of the commands:");
	for (long i = 0; i < q->passed; i++) {
		double from = i == 0 ? q->start : q->at[i - 1];
		long n = q->total * (i + 1) / QUARTERS - q->total * i / QUARTERS;
		printf(" %.0f", (double)n / (q->at[i] - from));
	}
	printf(" commands/s\n");
}

/* Applies one setup batch, outside the timed part. A refused command is left as it is
 * (a ledger kept from an earlier run has its brand and members, and may have newer
 * rules); refused_what, when given, says so for the first command. */
static int setup_apply(struct tally_ledger *l, struct tally_arena *out, struct blob bl,
		       const char *what, const char *refused_what)
{
	Tally__V1__CommandResult **rs;
	size_t n;
	bool skipped;
	int rc = tally_ledger_apply_bytes(l, bl.data, bl.len, out, &rs, &n, &skipped);
	free(bl.data);
	if (rc != 0)
		fprintf(stderr, "%s: %s\n", what, tally_strerror(rc));
	else if (refused_what != NULL && n > 0 && rs[0]->code != TALLY__V1__RESULT_CODE__OK)
		fprintf(stderr, "ledger-bench: %s: %s (the ledger keeps its own)\n", refused_what,
			rs[0]->message);
	tally_arena_reset(out);
	return rc;
}

/* The rules asked for, then the brand and every member; *index: the last raft index. */
static int setup(struct tally_ledger *l, struct tally_arena *a, struct tally_arena *out,
		 const struct opts *o, uint64_t *index)
{
	*index = tally_ledger_applied_index(l);
	int rc = 0;
	if (o->rules > TALLY_RULES_FIRST) {
		char what[32];
		snprintf(what, sizeof(what), "rules %ld", o->rules);
		rc = setup_apply(l, out, encode_batch(a, ++*index, T0_MS, 0, 1, fill_rules,
						      (void *)&o->rules), "rules", what);
	}
	for (long i = 0; rc == 0 && i < o->members + 1; i += 1000) {
		long k = o->members + 1 - i < 1000 ? o->members + 1 - i : 1000;
		rc = setup_apply(l, out, encode_batch(a, ++*index, T0_MS, i, k, fill_setup, NULL),
				 "setup", NULL);
	}
	return rc;
}

/* The timed commands, serialized up front as raft carries them, after raft index. */
static struct blob *workload(struct tally_arena *a, const struct opts *o, uint64_t index,
			     long *n_batches)
{
	*n_batches = (o->commands + o->batch - 1) / o->batch;
	struct blob *batches = calloc((size_t)*n_batches, sizeof(*batches));
	if (batches == NULL)
		return NULL;
	for (long b = 0; b < *n_batches; b++) {
		long k = o->commands - b * o->batch < o->batch ? o->commands - b * o->batch : o->batch;
		batches[b] = encode_batch(a, index + 1 + (uint64_t)b, T0_MS + b * BATCH_STEP_MS,
					  b * o->batch, k, fill_op, (void *)o);
	}
	return batches;
}

struct run {
	long ok, rejected;
	double secs;
	double *lat; /* each transaction's apply, sorted */
	long n_lat;
	struct quarters q;
};

/* Applies the batches, o->group a transaction, each freed once applied. */
static int run_timed(struct tally_ledger *l, struct blob *batches, long n_batches,
		     const struct opts *o, struct tally_arena *out, struct run *r)
{
	r->n_lat = (n_batches + o->group - 1) / o->group;
	r->lat = calloc((size_t)r->n_lat, sizeof(*r->lat));
	if (r->lat == NULL)
		return TALLY_ENOMEM;
	struct tally_arena dec;
	tally_arena_init(&dec, 1 << 20, 0);
	double start = bench_now_s(), last = start;
	r->q = (struct quarters){.start = start, .total = o->commands};
	int rc = 0;
	for (long b = 0; rc == 0 && b < n_batches; b += o->group) {
		long k = n_batches - b < o->group ? n_batches - b : o->group;
		double t0 = bench_now_s();
		rc = apply_timed(l, batches + b, k, &dec, out, &r->ok, &r->rejected);
		r->lat[b / o->group] = bench_now_s() - t0;
		tally_arena_reset(out);
		for (long i = b; i < b + k; i++)
			free(batches[i].data);
		long done = (b + k) * o->batch < o->commands ? (b + k) * o->batch : o->commands;
		quarters_note(&r->q, done, bench_now_s());
		if (bench_now_s() - last >= 1.0) {
			last = bench_now_s();
			fprintf(stderr, "  %ld commands, %.0f commands/s so far\n", done,
				(double)done / (last - start));
		}
	}
	r->secs = bench_now_s() - start;
	tally_arena_free(&dec);
	qsort(r->lat, (size_t)r->n_lat, sizeof(*r->lat), bench_cmp_double);
	return rc;
}

static void hex_print(const uint8_t h[32])
{
	for (int i = 0; i < 32; i++)
		printf("%02x", h[i]);
}

static void report(struct tally_ledger *l, const struct opts *o, const struct run *r)
{
	struct tally_digest d;
	tally_ledger_digest(l, &d);
	printf("applied %ld commands (%ld ok, %ld rejected) in %.3f s; journal %llu entries\n",
	       o->commands, r->ok, r->rejected, r->secs, (unsigned long long)d.tree_size);
	printf("%s apply latency: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
	       o->group > 1 ? "group" : "batch", r->lat[r->n_lat / 2] * 1e3,
	       r->lat[r->n_lat * 99 / 100] * 1e3, r->lat[r->n_lat - 1] * 1e3);
	printf("root ");
	hex_print(d.root);
	printf(", state digest ");
	hex_print(d.state_digest);
	printf(", applied index %llu\n", (unsigned long long)d.applied_index);
	if (o->writemap)
		printf("map grown in place (mremap) %llu times\n",
		       (unsigned long long)tally_ledger_remaps_in_place());
	quarters_print(&r->q);
	printf("apply: %.0f commands/s\n", (double)o->commands / r->secs);
}

static void remove_dir(const char *dir)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
}

int main(int argc, char **argv)
{
	struct opts o;
	parse(argc, argv, &o);
	principals();
	char tmpl[] = "/tmp/tally-bench-XXXXXX";
	const char *dir = o.dir != NULL ? o.dir : mkdtemp(tmpl);
	if (dir == NULL) {
		perror("mkdtemp");
		return 1;
	}
	struct tally_ledger_options lo = {.map_size_bytes = (uint64_t)o.map_mb << 20,
					  .nosync = true, .writemap = o.writemap};
	struct tally_ledger *l;
	int rc = tally_ledger_open(dir, &lo, &l);
	if (rc != 0) {
		fprintf(stderr, "open %s: %s\n", dir, tally_strerror(rc));
		return 1;
	}
	struct tally_arena a, out;
	tally_arena_init(&a, 1 << 20, 0);
	tally_arena_init(&out, 1 << 20, 0);
	uint64_t index;
	long n_batches = 0;
	struct blob *batches = NULL;
	struct run r = {0};
	rc = setup(l, &a, &out, &o, &index);
	if (rc == 0) {
		batches = workload(&a, &o, index, &n_batches);
		rc = batches == NULL ? TALLY_ENOMEM : 0;
	}
	if (rc == 0) {
		fprintf(stderr, "ledger-bench: %ld commands in %ld batches of %ld, %ld members, rules %ld, dir %s%s",
			o.commands, n_batches, o.batch, o.members, o.rules, dir, o.writemap ? ", writemap" : "");
		fprintf(stderr, o.group > 1 ? ", %ld batches a transaction\n" : "\n", o.group);
		rc = run_timed(l, batches, n_batches, &o, &out, &r);
		if (rc != 0)
			fprintf(stderr, "apply: %s\n", tally_strerror(rc));
	}
	if (rc == 0)
		report(l, &o, &r);
	free(batches);
	free(r.lat);
	tally_arena_free(&a);
	tally_arena_free(&out);
	tally_ledger_close(l);
	if (o.dir == NULL && !o.keep)
		remove_dir(dir);
	return rc == 0 ? 0 : 1;
}
