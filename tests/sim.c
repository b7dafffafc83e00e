/*
 * tests/sim — a deterministic simulator of a Tally cluster, after TigerBeetle's VOPR.
 *
 *   build/rel/tests/sim [--seeds N] [--seed S] [--nodes 3|5] [--verbose]
 *   make sim SEEDS=N
 *
 * Each seed runs N replicas of the real node (consensus/: group commit, reads, ledger
 * time, the state machine, the I/O guard, fail-stop; ledger/ on LMDB) over canonical
 * raft's raft_fixture: in-memory raft I/O and one simulated clock, so one thread runs
 * the whole cluster and everything that happens follows from the seed. During the
 * chaos phase a client submits accruals and redemptions (and retries what was not
 * definitely answered, with the same request id) while faults come and go: partitions,
 * message loss, crashes and restarts (the ledger sometimes lost with the process, as
 * after an OS crash that LMDB's unsynced pages did not survive), raft disk faults (the
 * I/O guard's fail-stop, restarted), and wrong wall clocks on a minority of nodes.
 * Then everything heals and the cluster must converge, and:
 *
 *   - every replica holds the same bytes (content hash) and passes its invariants;
 *   - every command acknowledged OK is in the journal exactly once, every command
 *     definitely refused is not, and every balance is what the acknowledged commands
 *     make it;
 *   - no ledger time ever ran more than CLOCK_ERROR_MAX_MS ahead of simulated time;
 *   - raft_fixture's own checks hold (one leader per term, the leader's log only
 *     appended to).
 *
 * A failing seed prints what failed and the command that runs it again; the run is
 * exact: same seed, same events, same bytes. What is not modelled: a crash loses no
 * raft write already issued (the fixture completes it); disk faults are failed calls,
 * not torn or lost writes (the jepsen lost-writes nemesis covers those on real disks).
 */
#include <assert.h>
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <raft.h>
#include <raft/fixture.h>

#include "consensus/clock.h"
#include "consensus/sim.h"
#include "tests/util.h"

#define SIM_NODES_MAX 5
#define SIM_MEMBERS 4
#define SIM_COMMANDS_MAX 400          /* client commands per seed */
#define SIM_EPOCH_MS 1796000000000LL  /* real time at simulated time 0 */
#define SIM_CHAOS_MS 10000            /* simulated time with faults */
#define SIM_CONVERGE_MS 120000        /* simulated time allowed to converge after healing */
#define SIM_QUIESCE_MS 2000           /* a crashed server's I/O settles before its restart */
#define SIM_SAMPLE_MS 500             /* peers' clocks sampled, as rpc/peerclock.c does */
#define SIM_HEARTBEAT_MS 50
#define SIM_ELECTION_MS 300
#define SIM_FAULT_GAP_MS 1500         /* mean time between fault events */
#define SIM_CLIENT_GAP_MS 15          /* mean time between client actions */
#define SIM_RETRY_MS 200              /* a command not definitely answered is tried again */

struct sim;

enum cmd_state { CMD_NEW, CMD_IN_FLIGHT, CMD_RETRY, CMD_OK, CMD_REJECTED };

struct sim_cmd {
	char request_id[32];
	int member;
	int64_t points;               /* > 0 accrue, < 0 redeem */
	enum cmd_state state;
	bool maybe;                   /* an attempt's outcome was unknown */
	int64_t retry_at_ms;
	unsigned attempts;
	unsigned node;                /* the node the last attempt went to (1-based) */
	int64_t ok_at_ms;             /* when OK came, and the entry it named */
	uint64_t ok_seq;
	struct sim *s;
};

/* A raft write on its way to the disk: an append (n entries from index) or a
 * truncation (n == 0), done in the order raft asked for them. */
struct disk_op {
	uint64_t index;
	unsigned n;
	struct raft_entry *entries;   /* own copies (one buffer each) */
};

#define DISK_OPS_MAX 1024            /* raft writes in flight on one server */

/* A server's raft log as it is on "disk" (see "the fixture's disk"). */
struct sim_disk {
	struct raft_io fixture;       /* the fixture's own methods */
	bool loaded;                  /* the first load adopted the bootstrap entry */
	uint64_t first;               /* raft index of entries[0] */
	struct raft_entry *entries;   /* durable entries, own copies */
	size_t n, cap;
	uint64_t next;                /* where raft's next append lands */
	struct disk_op ops[DISK_OPS_MAX]; /* submitted, not yet durable, oldest first */
	unsigned ops_head, ops_n;
	int fail_in;                  /* > 0: that many writes from now, one fails (EIO) */
	bool *dead;                   /* the node on it has failed or crashed: no more writes */
};

struct sim_node {
	struct sim *s;
	unsigned i;                   /* fixture index; raft id i + 1 */
	struct sim_disk disk;
	bool disk_dead;               /* the process on the disk died (fail-stop or crash) */
	struct tally_node *n;         /* current incarnation (a dead one until restarted) */
	bool up;                      /* running: alive in the fixture, not crashed */
	int64_t crashed_at_ms, restart_at_ms;
	int64_t next_tick_ms;
	int64_t wall_offset_ms;       /* this node's wall clock error */
	bool wipe_ledger;             /* lose the ledger with the next crash */
	unsigned incarnation;
	char dir[300];
};

/* What one seed did (the same twice for one seed: --twice compares them). */
struct sim_stats {
	unsigned faults, crashes, restarts, disk_faults, fail_stops, wipes;
	unsigned ok, rejected, maybe;
};

struct sim {
	uint64_t seed, rng;
	bool verbose;
	unsigned n_nodes;
	struct raft_fixture f;
	struct sim_node node[SIM_NODES_MAX];
	bool cut[SIM_NODES_MAX][SIM_NODES_MAX];   /* messages from i to j are dropped */
	struct fx fx;                             /* command builders */
	Tally__V1__Principal *admin, *dealer, *mall;
	struct sim_cmd cmds[SIM_COMMANDS_MAX];
	size_t n_cmds;
	int64_t next_fault_ms, next_client_ms, next_sample_ms;
	unsigned snapshot_threshold;              /* drawn per seed: 64 to 512 entries */
	char base[256];
	char failure[512];
	struct sim_stats stats;
};

/* ---- randomness and failures ---------------------------------------------------------- */

static uint64_t rng_next(struct sim *s)
{
	uint64_t x = s->rng; /* xorshift64* */
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	s->rng = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static int64_t rng_range(struct sim *s, int64_t lo, int64_t hi)
{
	return lo + (int64_t)(rng_next(s) % (uint64_t)(hi - lo + 1));
}

static bool rng_chance(struct sim *s, unsigned percent)
{
	return rng_next(s) % 100 < percent;
}

static int64_t now_ms(const struct sim *s)
{
	return (int64_t)s->f.time;
}

static void sim_fail(struct sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sim_fail(struct sim *s, const char *fmt, ...)
{
	if (s->failure[0] != '\0')
		return; /* the first failure is the one to report */
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->failure, sizeof(s->failure), fmt, ap);
	va_end(ap);
}

static void say(const struct sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(const struct sim *s, const char *fmt, ...)
{
	if (!s->verbose)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "sim %8lld ms: ", (long long)now_ms(s));
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* ---- clocks ---------------------------------------------------------------------------- */

static int64_t node_mono_ms(void *data)
{
	const struct sim_node *sn = data;
	return now_ms(sn->s) + (int64_t)sn->i * 1000000; /* each its own origin */
}

static int64_t node_wall_ms(void *data)
{
	const struct sim_node *sn = data;
	return SIM_EPOCH_MS + now_ms(sn->s) + sn->wall_offset_ms;
}

static void node_fail_stop_hook(void *data, int status, const char *what)
{
	struct sim_node *sn = data;
	sn->disk_dead = true; /* the process ends here: nothing more reaches its disk */
	sn->s->stats.fail_stops++;
	say(sn->s, "node %u fail-stop %d: %s", sn->i + 1, status, what);
}

/* A node's log line: shown with --verbose, in the simulation's timeline. */
static void node_log_line(void *data, const char *line)
{
	const struct sim_node *sn = data;
	say(sn->s, "node %u: %s", sn->i + 1, line);
}

/* Every node that runs gets a sample of every other it can hear from and reach. */
static void clocks_sample(struct sim *s)
{
	for (unsigned i = 0; i < s->n_nodes; i++) {
		for (unsigned j = 0; j < s->n_nodes; j++) {
			struct sim_node *a = &s->node[i], *b = &s->node[j];
			if (i == j || !a->up || !b->up || s->cut[i][j] || s->cut[j][i])
				continue;
			int64_t sent = node_mono_ms(a);
			tally_node_clock_sample(a->n, j + 1, node_wall_ms(b), sent - 30, sent);
		}
	}
}

/* ---- the fixture's disk ------------------------------------------------------------------
 *
 * raft_fixture's in-memory I/O was written for servers that never restart, and its
 * log storage cannot be loaded back: it keeps the entries in an array it assumes
 * starts at raft index 1 (false once a follower installed a snapshot), load labels
 * them as if the first followed the latest snapshot, and a truncation takes effect at
 * once while appends submitted before it are still on their way, so they land after
 * it. raft 0.15 relies on raft_uv doing its writes in order. So the simulator keeps
 * each server's durable log itself, below the node's own I/O guard: appends become
 * durable when the fixture completes them, a truncation waits for the appends before
 * it, an installed snapshot empties the log, and load returns the entries after the
 * latest snapshot (the fixture keeps term, vote and snapshots right). The fixture
 * still times every write and fails nothing of its own.
 *
 * The disk is also where faults are: a write that fails (the node's I/O guard ends
 * it), and nothing written by a node after its process died (a write it issued
 * before still completes: a crash loses no write already on its way to the disk). */

static struct sim *the_sim; /* one simulation at a time: the wrappers find it here */

static struct sim_disk *disk_of(struct raft_io *io)
{
	struct sim *s = the_sim;
	for (unsigned i = 0; i < s->n_nodes; i++)
		if (&s->f.servers[i].io == io)
			return &s->node[i].disk;
	abort(); /* not a server of this simulation */
}

static void entry_free(struct raft_entry *e)
{
	raft_free(e->buf.base);
	e->buf.base = NULL;
}

static bool entry_copy(const struct raft_entry *src, struct raft_entry *dst)
{
	*dst = *src;
	dst->batch = NULL;
	dst->buf.base = raft_malloc(src->buf.len > 0 ? src->buf.len : 1);
	if (dst->buf.base == NULL)
		return false;
	memcpy(dst->buf.base, src->buf.base, src->buf.len);
	return true;
}

/* Drops the durable entries from index on. */
static void log_cut(struct sim_disk *d, uint64_t index)
{
	while (d->n > 0 && d->first + d->n - 1 >= index)
		entry_free(&d->entries[--d->n]);
	if (d->n == 0)
		d->first = index;
}

/* An append made durable: entries from op->index, replacing what was there. */
static void log_put(struct sim_disk *d, struct disk_op *op)
{
	log_cut(d, op->index);
	if (d->n > 0 && d->first + d->n != op->index) {
		sim_fail(the_sim, "disk: an append at %llu after a log that ends at %llu",
			 (unsigned long long)op->index, (unsigned long long)(d->first + d->n - 1));
		return;
	}
	if (d->n == 0)
		d->first = op->index;
	if (d->n + op->n > d->cap) {
		size_t cap = 2 * (d->n + op->n);
		struct raft_entry *e = realloc(d->entries, cap * sizeof(*e));
		if (e == NULL)
			abort();
		d->entries = e;
		d->cap = cap;
	}
	memcpy(d->entries + d->n, op->entries, op->n * sizeof(*op->entries));
	d->n += op->n;
	free(op->entries);
	op->entries = NULL;
}

/* Applies the queued truncations now at the head (their appends are durable). */
static void ops_settle(struct sim_disk *d)
{
	while (d->ops_n > 0 && d->ops[d->ops_head].n == 0) {
		log_cut(d, d->ops[d->ops_head].index);
		d->ops_head = (d->ops_head + 1) % DISK_OPS_MAX;
		d->ops_n--;
	}
}

static struct disk_op *ops_push(struct sim_disk *d)
{
	if (d->ops_n == DISK_OPS_MAX)
		abort(); /* raft 0.15 never has this many writes in flight here */
	struct disk_op *op = &d->ops[(d->ops_head + d->ops_n++) % DISK_OPS_MAX];
	memset(op, 0, sizeof(*op));
	return op;
}

/* Whether the next write fails (the fault planted by fault_inject). */
static bool disk_fault(struct sim_disk *d)
{
	return d->fail_in > 0 && --d->fail_in == 0;
}

struct disk_append_req {
	struct raft_io_append req;    /* the fixture's */
	struct raft_io_append *outer;
	raft_io_append_cb cb;
	struct sim_disk *d;
};

static void disk_append_cb(struct raft_io_append *req, int status)
{
	struct disk_append_req *a = req->data;
	struct sim_disk *d = a->d;
	struct raft_io_append *outer = a->outer;
	raft_io_append_cb cb = a->cb;
	free(a);
	assert(status == 0 && d->ops_n > 0 && d->ops[d->ops_head].n > 0);
	log_put(d, &d->ops[d->ops_head]);
	d->ops_head = (d->ops_head + 1) % DISK_OPS_MAX;
	d->ops_n--;
	ops_settle(d);
	cb(outer, status);
}

static int disk_append(struct raft_io *io, struct raft_io_append *req,
		       const struct raft_entry entries[], unsigned n, raft_io_append_cb cb)
{
	struct sim_disk *d = disk_of(io);
	if (disk_fault(d))
		return RAFT_IOERR;
	struct disk_append_req *a = malloc(sizeof(*a));
	struct raft_entry *copies = calloc(n, sizeof(*copies));
	if (a == NULL || copies == NULL)
		abort();
	for (unsigned k = 0; k < n; k++)
		if (!entry_copy(&entries[k], &copies[k]))
			abort();
	struct disk_op *op = ops_push(d);
	*op = (struct disk_op){.index = d->next, .n = n, .entries = copies};
	d->next += n;
	*a = (struct disk_append_req){.outer = req, .cb = cb, .d = d};
	a->req.data = a;
	int rv = d->fixture.append(io, &a->req, entries, n, disk_append_cb);
	assert(rv == 0); /* the fixture fails nothing of its own here */
	return rv;
}

static int disk_truncate(struct raft_io *io, raft_index index)
{
	struct sim_disk *d = disk_of(io);
	if (index == 1) { /* the fixture emptying the log for an installed snapshot */
		log_cut(d, d->first);
		d->first = d->next;
		return 0;
	}
	if (*d->dead)
		return 0; /* the process is gone: this truncation never happens */
	if (disk_fault(d))
		return RAFT_IOERR;
	d->next = index;
	struct disk_op *op = ops_push(d);
	op->index = index;
	ops_settle(d); /* at once when no append is on its way */
	return 0;
}

static int disk_set_term(struct raft_io *io, raft_term term)
{
	struct sim_disk *d = disk_of(io);
	return disk_fault(d) ? RAFT_IOERR : d->fixture.set_term(io, term);
}

static int disk_set_vote(struct raft_io *io, raft_id id)
{
	struct sim_disk *d = disk_of(io);
	return disk_fault(d) ? RAFT_IOERR : d->fixture.set_vote(io, id);
}

static int disk_snapshot_put(struct raft_io *io, unsigned trailing,
			     struct raft_io_snapshot_put *req, const struct raft_snapshot *snapshot,
			     raft_io_snapshot_put_cb cb)
{
	struct sim_disk *d = disk_of(io);
	if (trailing == 0) /* an installed snapshot: raft's log starts again after it */
		d->next = snapshot->index + 1;
	return d->fixture.snapshot_put(io, trailing, req, snapshot, cb);
}

/* term, vote and snapshot from the fixture; the entries after the snapshot from the
 * simulator's log (the first load, right after bootstrap, adopts the fixture's). */
static int disk_load(struct raft_io *io, raft_term *term, raft_id *voted_for,
		     struct raft_snapshot **snapshot, raft_index *start_index,
		     struct raft_entry **entries, size_t *n_entries)
{
	struct sim_disk *d = disk_of(io);
	int rv = d->fixture.load(io, term, voted_for, snapshot, start_index, entries, n_entries);
	if (rv != 0)
		return rv;
	if (!d->loaded) {
		d->loaded = true;
		for (size_t k = 0; k < *n_entries; k++) {
			struct disk_op op = {.index = *start_index + k, .n = 1,
					     .entries = calloc(1, sizeof(struct raft_entry))};
			if (op.entries == NULL || !entry_copy(&(*entries)[k], op.entries))
				abort();
			log_put(d, &op);
		}
		d->next = *start_index + *n_entries;
		return 0;
	}
	if (*n_entries > 0) { /* entryBatchCopy: one batch for all of them */
		raft_free((*entries)[0].batch);
		raft_free(*entries);
	}
	uint64_t from = *snapshot != NULL ? (*snapshot)->index + 1 : 1;
	if (d->n > 0 && d->first > from) {
		sim_fail(the_sim, "disk: entries from %llu, after a snapshot at %llu",
			 (unsigned long long)d->first, (unsigned long long)from - 1);
		return RAFT_CORRUPT;
	}
	size_t skip = d->n > 0 && from > d->first ? from - d->first : 0;
	size_t n = d->n > skip ? d->n - skip : 0;
	*start_index = from;
	*n_entries = n;
	*entries = NULL;
	if (n > 0) {
		*entries = raft_malloc(n * sizeof(**entries));
		if (*entries == NULL)
			abort();
		for (size_t k = 0; k < n; k++) {
			if (!entry_copy(&d->entries[skip + k], &(*entries)[k]))
				abort();
			(*entries)[k].batch = (*entries)[k].buf.base; /* raft frees by batch */
		}
	}
	d->next = from + n;
	say(the_sim, "disk load: snapshot %llu, entries %llu..%llu (held from %llu, %zu), term %llu",
	    *snapshot != NULL ? (unsigned long long)(*snapshot)->index : 0ULL,
	    (unsigned long long)from, (unsigned long long)(from + n - 1),
	    (unsigned long long)d->first, d->n, (unsigned long long)*term);
	if (d->ops_n != 0)
		sim_fail(the_sim, "disk: a restart while %u writes are on their way", d->ops_n);
	return 0;
}

static void disk_free(struct sim_disk *d)
{
	for (size_t k = 0; k < d->n; k++)
		entry_free(&d->entries[k]);
	free(d->entries);
	for (unsigned k = 0; k < d->ops_n; k++)
		free(d->ops[(d->ops_head + k) % DISK_OPS_MAX].entries);
	memset(d, 0, sizeof(*d));
}
/* Puts the wrappers on server i's I/O (once, before anything wraps it further). */
static void disk_wrap(struct sim *s, unsigned i)
{
	struct raft_io *io = &s->f.servers[i].io;
	struct sim_disk *d = &s->node[i].disk;
	d->fixture = *io;
	d->first = 1;
	d->dead = &s->node[i].disk_dead;
	io->load = disk_load;
	io->append = disk_append;
	io->truncate = disk_truncate;
	io->set_term = disk_set_term;
	io->set_vote = disk_set_vote;
	io->snapshot_put = disk_snapshot_put;
}


static void node_config(struct sim_node *sn, struct tally_node_config *cfg, const char *address)
{
	*cfg = (struct tally_node_config){
		.id = sn->i + 1, .address = address, .dir = sn->dir,
		.election_timeout_ms = SIM_ELECTION_MS, .heartbeat_ms = SIM_HEARTBEAT_MS,
		.snapshot_threshold = sn->s->snapshot_threshold,
		.snapshot_trailing = sn->s->snapshot_threshold / 4, .expire_interval_ms = 1000,
		.map_size_bytes = 64ULL << 20, .map_room_bytes = 1ULL << 20,
		.notice_entry_bytes_min = 1, /* a commit notice before every apply */
		.mono_ms = node_mono_ms, .wall_ms = node_wall_ms, .hook_data = sn,
		.fail_stop = node_fail_stop_hook, .log_line = node_log_line};
}

/* A new incarnation of node sn (the address is only checked: the fixture's raft
 * knows the server by its id). */
static int node_open(struct sim_node *sn)
{
	char address[32];
	snprintf(address, sizeof(address), "sim:%u|sim:%u", sn->i + 1, sn->i + 1);
	struct tally_node_config cfg;
	node_config(sn, &cfg, address);
	char err[256];
	int rc = node_sim_open(&sn->n, &cfg, err, sizeof(err));
	if (rc != 0)
		sim_fail(sn->s, "node %u: open: %s", sn->i + 1, err);
	return rc;
}

/* Applies the cuts that involve node i again (revive reconnects everything). */
static void cuts_apply(struct sim *s, unsigned i)
{
	for (unsigned j = 0; j < s->n_nodes; j++) {
		if (s->cut[i][j])
			raft_fixture_saturate(&s->f, i, j);
		if (s->cut[j][i])
			raft_fixture_saturate(&s->f, j, i);
	}
}

/* The process dies: nothing of it runs any more (its raft is frozen in the fixture
 * until the restart closes it). */
static void node_crash(struct sim *s, unsigned i, const char *why)
{
	struct sim_node *sn = &s->node[i];
	if (!sn->up)
		return;
	sn->up = false;
	sn->crashed_at_ms = now_ms(s);
	sn->restart_at_ms = now_ms(s) + rng_range(s, SIM_QUIESCE_MS, 4 * SIM_QUIESCE_MS);
	sn->wipe_ledger = rng_chance(s, 25);
	node_sim_crash(sn->n);
	sn->disk_dead = true;
	raft_fixture_kill(&s->f, i);
	s->stats.crashes++;
	say(s, "node %u crashes (%s)%s", i + 1, why, sn->wipe_ledger ? ", ledger lost" : "");
}

static void ledger_wipe(struct sim_node *sn)
{
	char path[340];
	snprintf(path, sizeof(path), "%s/ledger", sn->dir);
	tally_ledger_remove(path);
	sn->s->stats.wipes++;
}

/* A new incarnation over the server's raft I/O, whose log and snapshot survived. */
static void node_restart(struct sim *s, unsigned i)
{
	struct sim_node *sn = &s->node[i];
	struct raft_fixture_server *srv = &s->f.servers[i];
	raft_close(&srv->raft, NULL); /* answers what the dead incarnation still tracked */
	node_sim_detach(sn->n);
	node_sim_free(sn->n);
	sn->n = NULL;
	if (sn->wipe_ledger)
		ledger_wipe(sn);
	sn->disk_dead = false;
	if (node_open(sn) != 0)
		return;
	srv->io.version = 2; /* fsm v3 (async snapshots) needs it */
	int rv = raft_init(&srv->raft, &srv->io, node_sim_fsm(sn->n), srv->id, srv->address);
	if (rv != 0) {
		sim_fail(s, "node %u: raft_init: %s", i + 1, raft_strerror(rv));
		return;
	}
	node_sim_attach(sn->n, &srv->raft, &srv->io);
	raft_fixture_set_randomized_election_timeout(&s->f, i,
		(unsigned)rng_range(s, SIM_ELECTION_MS, 2 * SIM_ELECTION_MS));
	rv = raft_start(&srv->raft);
	sn->incarnation++;
	s->stats.restarts++;
	if (rv != 0 || node_sim_dead(sn->n)) {
		/* a disk fault at load or start, or a snapshot that does not restore */
		sn->up = true;
		node_crash(s, i, rv != 0 ? raft_strerror(rv) : "fail-stop at start");
		return;
	}
	node_sim_started(sn->n);
	sn->up = true;
	sn->next_tick_ms = now_ms(s) + SIM_HEARTBEAT_MS;
	raft_fixture_revive(&s->f, i);
	cuts_apply(s, i);
	say(s, "node %u restarts (incarnation %u)", i + 1, sn->incarnation);
}

static int cluster_start(struct sim *s)
{
	memset(&s->f, 0, sizeof(s->f)); /* raft_fixture_initialize does not zero it */
	raft_fixture_initialize(&s->f);
	for (unsigned i = 0; i < s->n_nodes; i++) {
		struct sim_node *sn = &s->node[i];
		*sn = (struct sim_node){.s = s, .i = i, .up = true};
		snprintf(sn->dir, sizeof(sn->dir), "%s/n%u", s->base, i + 1);
		if (node_open(sn) != 0)
			return -1;
		s->f.servers[i].io.version = 2; /* before raft_init, which grow calls */
		if (raft_fixture_grow(&s->f, node_sim_fsm(sn->n)) != 0) {
			sim_fail(s, "raft_fixture_grow failed");
			return -1;
		}
		disk_wrap(s, i);
		node_sim_attach(sn->n, &s->f.servers[i].raft, &s->f.servers[i].io);
		raft_fixture_set_randomized_election_timeout(&s->f, i,
			(unsigned)rng_range(s, SIM_ELECTION_MS, 2 * SIM_ELECTION_MS));
	}
	struct raft_configuration conf;
	if (raft_fixture_configuration(&s->f, s->n_nodes, &conf) != 0 ||
	    raft_fixture_bootstrap(&s->f, &conf) != 0 || raft_fixture_start(&s->f) != 0) {
		sim_fail(s, "bootstrap or start failed");
		return -1;
	}
	raft_configuration_close(&conf);
	for (unsigned i = 0; i < s->n_nodes; i++)
		node_sim_started(s->node[i].n);
	return 0;
}

/* The fixture gives each raft the same "random" election timeout every time; real
 * raft draws one per election. Drawing them again now and then keeps two nodes from
 * splitting their votes for ever. */
static void elections_shuffle(struct sim *s)
{
	for (unsigned i = 0; i < s->n_nodes; i++)
		raft_fixture_set_randomized_election_timeout(&s->f, i,
			(unsigned)rng_range(s, SIM_ELECTION_MS, 2 * SIM_ELECTION_MS));
}

/* ---- the client ----------------------------------------------------------------------- */

static const char *const member_ids[SIM_MEMBERS] = {"m0", "m1", "m2", "m3"};

/* The command of c, with its own request id every attempt. */
static Tally__V1__Command *cmd_build(struct sim *s, const struct sim_cmd *c)
{
	Tally__V1__Command *m;
	if (c->member < 0) /* setup: the brand (-1) and the members (-2 - k) */
		m = c->member == -1 ? c_brand(&s->fx, s->admin, "b", 24)
				    : c_member(&s->fx, s->admin, member_ids[-2 - c->member]);
	else if (c->points > 0)
		m = c_accrue(&s->fx, s->dealer, "b", member_ids[c->member], c->points);
	else
		m = c_redeem(&s->fx, s->mall, "b", member_ids[c->member], -c->points);
	m->request_id = sdup(&s->fx, c->request_id);
	return m;
}

static void cmd_result(void *data, const Tally__V1__CommandResult *r)
{
	struct sim_cmd *c = data;
	struct sim *s = c->s;
	if (c->state != CMD_IN_FLIGHT) {
		sim_fail(s, "%s answered twice", c->request_id);
		return;
	}
	switch (r->code) {
	case TALLY__V1__RESULT_CODE__OK:
		c->state = CMD_OK;
		c->ok_at_ms = now_ms(s);
		c->ok_seq = r->entry_seq;
		say(s, "%s ok from node %u: entry %llu%s (raft index %llu)", c->request_id, c->node,
		    (unsigned long long)r->entry_seq, r->replay ? " (replay)" : "",
		    (unsigned long long)raft_last_applied(&s->f.servers[c->node - 1].raft) + 1);
		break;
	case TALLY__V1__RESULT_CODE__TIMEOUT: /* unknown: asked again with the same id */
		c->maybe = true;
		/* fall through */
	case TALLY__V1__RESULT_CODE__NOT_LEADER:
	case TALLY__V1__RESULT_CODE__UNAVAILABLE:
		c->state = CMD_RETRY;
		c->retry_at_ms = now_ms(s) + SIM_RETRY_MS;
		break;
	case TALLY__V1__RESULT_CODE__INSUFFICIENT_POINTS:
		if (c->points < 0) {
			c->state = CMD_REJECTED;
			break;
		}
		/* fall through */
	default:
		sim_fail(s, "%s: unexpected %s: %s", c->request_id, tally_result_name(r->code),
			 r->message);
		c->state = CMD_REJECTED;
	}
}

/* The node a client would end up at: the leader, or any running node. */
static struct sim_node *client_target(struct sim *s)
{
	for (unsigned i = 0; i < s->n_nodes; i++)
		if (s->node[i].up && tally_node_is_leader(s->node[i].n))
			return &s->node[i];
	unsigned start = (unsigned)rng_range(s, 0, s->n_nodes - 1);
	for (unsigned k = 0; k < s->n_nodes; k++) {
		struct sim_node *sn = &s->node[(start + k) % s->n_nodes];
		if (sn->up)
			return sn;
	}
	return NULL;
}

static void cmd_submit(struct sim *s, struct sim_cmd *c)
{
	struct sim_node *sn = client_target(s);
	if (sn == NULL) {
		c->state = CMD_RETRY;
		c->retry_at_ms = now_ms(s) + SIM_RETRY_MS;
		return;
	}
	c->state = CMD_IN_FLIGHT;
	c->attempts++;
	c->node = sn->i + 1;
	tally_node_submit(sn->n, cmd_build(s, c), cmd_result, c); /* deep-copied */
	tally_arena_reset(&s->fx.build);
	s->admin = admin(&s->fx); /* principals live in the arena too */
	s->dealer = who(&s->fx, TALLY__V1__ROLE__DEALER, "dealer", "*");
	s->mall = who(&s->fx, TALLY__V1__ROLE__MALL, "mall", "*");
}

static struct sim_cmd *cmd_add(struct sim *s, int member, int64_t points)
{
	if (s->n_cmds == SIM_COMMANDS_MAX)
		return NULL;
	struct sim_cmd *c = &s->cmds[s->n_cmds];
	*c = (struct sim_cmd){.member = member, .points = points, .s = s};
	snprintf(c->request_id, sizeof(c->request_id), "c%zu", s->n_cmds);
	s->n_cmds++;
	return c;
}

/* One client action: a command due for another try, or (while new ones may come) a
 * new accrual (70 %) or redemption. */
static void client_act(struct sim *s, bool new_ones)
{
	for (size_t k = 0; k < s->n_cmds; k++) {
		struct sim_cmd *c = &s->cmds[k];
		if (c->state == CMD_RETRY && c->retry_at_ms <= now_ms(s)) {
			cmd_submit(s, c);
			return;
		}
	}
	if (!new_ones)
		return;
	int member = (int)rng_range(s, 0, SIM_MEMBERS - 1);
	int64_t points = rng_chance(s, 70) ? rng_range(s, 1, 100) : -rng_range(s, 1, 50);
	struct sim_cmd *c = cmd_add(s, member, points);
	if (c != NULL)
		cmd_submit(s, c);
}

static bool commands_settled(const struct sim *s)
{
	for (size_t k = 0; k < s->n_cmds; k++)
		if (s->cmds[k].state != CMD_OK && s->cmds[k].state != CMD_REJECTED)
			return false;
	return true;
}

/* ---- faults ----------------------------------------------------------------------------- */

/* The fixture's kill saturates a dead server's links too (raft_fixture_kill): those
 * stay as they are until it is revived, which clears them. */
static void cuts_clear(struct sim *s)
{
	for (unsigned i = 0; i < s->n_nodes; i++)
		for (unsigned j = 0; j < s->n_nodes; j++)
			if (s->cut[i][j]) {
				s->cut[i][j] = false;
				if (s->node[i].up && s->node[j].up)
					raft_fixture_desaturate(&s->f, i, j);
			}
}

static void cut(struct sim *s, unsigned i, unsigned j)
{
	if (i == j || s->cut[i][j])
		return;
	s->cut[i][j] = true;
	raft_fixture_saturate(&s->f, i, j);
}

/* A random group (a minority, or any split) cut off from the rest, both ways. */
static void fault_partition(struct sim *s)
{
	uint32_t side = (uint32_t)rng_range(s, 1, (1 << s->n_nodes) - 2);
	cuts_clear(s);
	for (unsigned i = 0; i < s->n_nodes; i++)
		for (unsigned j = 0; j < s->n_nodes; j++)
			if (((side >> i) & 1) != ((side >> j) & 1))
				cut(s, i, j);
	say(s, "partition %#x | rest", side);
}

/* A minority of wall clocks stepped (up to an hour either way), or all put right. */
static void fault_clock(struct sim *s)
{
	if (rng_chance(s, 30)) {
		for (unsigned i = 0; i < s->n_nodes; i++)
			s->node[i].wall_offset_ms = 0;
		say(s, "clocks right");
		return;
	}
	unsigned k = (unsigned)rng_range(s, 1, (s->n_nodes - 1) / 2);
	for (unsigned i = 0; i < s->n_nodes; i++)
		s->node[i].wall_offset_ms = 0;
	for (unsigned m = 0; m < k; m++) {
		unsigned i = (unsigned)rng_range(s, 0, s->n_nodes - 1);
		s->node[i].wall_offset_ms = rng_range(s, -3600000, 3600000);
		say(s, "clock of node %u off by %lld ms", i + 1, (long long)s->node[i].wall_offset_ms);
	}
}

static void fault_inject(struct sim *s)
{
	s->stats.faults++;
	unsigned i = (unsigned)rng_range(s, 0, s->n_nodes - 1);
	switch (rng_range(s, 0, 6)) {
	case 0:
		fault_partition(s);
		break;
	case 1:
		cuts_clear(s);
		say(s, "network healed");
		break;
	case 2: { /* loss: one direction of one link drops everything for a while */
		unsigned j = (unsigned)rng_range(s, 0, s->n_nodes - 1);
		cut(s, i, j);
		say(s, "messages from node %u to node %u dropped", i + 1, j + 1);
		break;
	}
	case 3:
	case 4:
		node_crash(s, i, "killed");
		break;
	case 5:
		if (s->node[i].up) {
			/* One of the next raft writes fails: the I/O guard ends the node. */
			s->node[i].disk.fail_in = (int)rng_range(s, 1, 20);
			s->stats.disk_faults++;
			say(s, "node %u: a raft write will fail", i + 1);
		}
		break;
	default:
		fault_clock(s);
	}
}

/* ---- the simulation loop ----------------------------------------------------------------- */

/* What libuv would do for each running node after an event: service turns while one
 * is due, ticks on time; then crash what failed. */
static void nodes_drive(struct sim *s)
{
	for (unsigned i = 0; i < s->n_nodes; i++) {
		struct sim_node *sn = &s->node[i];
		for (unsigned turns = 0; sn->up && node_sim_kicked(sn->n); turns++) {
			if (turns > 1000) {
				sim_fail(s, "node %u: service turns do not settle", i + 1);
				return;
			}
			node_sim_service(sn->n);
		}
		while (sn->up && sn->next_tick_ms <= now_ms(s)) {
			sn->next_tick_ms += SIM_HEARTBEAT_MS;
			node_sim_tick(sn->n);
		}
		if (sn->up && node_sim_dead(sn->n))
			node_crash(s, i, "fail-stop");
	}
}

/* Ledger time may never run ahead of (simulated) real time beyond the bound. */
static void time_check(struct sim *s)
{
	int64_t real = SIM_EPOCH_MS + now_ms(s);
	for (unsigned i = 0; i < s->n_nodes; i++) {
		struct sim_node *sn = &s->node[i];
		if (!sn->up)
			continue;
		int64_t t = tally_ledger_time_ms(tally_node_ledger(sn->n));
		if (t > real + CLOCK_ERROR_MAX_MS)
			sim_fail(s, "node %u: ledger time %lld ms ahead of real time", i + 1,
				 (long long)(t - real));
	}
}

static void sim_step(struct sim *s, bool chaos)
{
	raft_fixture_step(&s->f);
	nodes_drive(s);
	time_check(s);
	int64_t now = now_ms(s);
	if (now >= s->next_sample_ms) {
		clocks_sample(s);
		elections_shuffle(s);
		s->next_sample_ms = now + SIM_SAMPLE_MS;
	}
	if (now >= s->next_client_ms) {
		client_act(s, chaos);
		s->next_client_ms = now + rng_range(s, 1, 2 * SIM_CLIENT_GAP_MS);
	}
	if (chaos && now >= s->next_fault_ms) {
		fault_inject(s);
		s->next_fault_ms = now + rng_range(s, SIM_FAULT_GAP_MS / 2, 2 * SIM_FAULT_GAP_MS);
	}
	for (unsigned i = 0; i < s->n_nodes && s->failure[0] == '\0'; i++)
		if (!s->node[i].up && now >= s->node[i].restart_at_ms &&
		    now - s->node[i].crashed_at_ms >= SIM_QUIESCE_MS)
			node_restart(s, i);
	nodes_drive(s);
}

/* All running, commands settled, a leader that has committed everything it holds
 * (an entry of its own term among it), and every replica applied exactly that. */
static bool converged(const struct sim *s)
{
	if (!commands_settled(s))
		return false;
	const struct raft *leader = NULL;
	for (unsigned i = 0; i < s->n_nodes; i++) {
		if (!s->node[i].up)
			return false;
		if (tally_node_is_leader(s->node[i].n))
			leader = &s->f.servers[i].raft;
	}
	if (leader == NULL || leader->commit_index != leader->last_stored)
		return false;
	for (unsigned i = 0; i < s->n_nodes; i++)
		if (tally_ledger_applied_index(tally_node_ledger(s->node[i].n)) != leader->commit_index)
			return false;
	return true;
}

/* Where each node is, for a report of what did not converge. */
static void sim_state(const struct sim *s, char *buf, size_t cap)
{
	size_t at = 0;
	unsigned open = 0;
	for (size_t k = 0; k < s->n_cmds; k++)
		open += s->cmds[k].state != CMD_OK && s->cmds[k].state != CMD_REJECTED;
	at += (size_t)snprintf(buf + at, cap - at, "%u commands unsettled;", open);
	for (unsigned i = 0; i < s->n_nodes && at < cap; i++) {
		const struct sim_node *sn = &s->node[i];
		struct raft *r = (struct raft *)&s->f.servers[i].raft;
		at += (size_t)snprintf(buf + at, cap - at, " node %u %s state %d term %llu applied "
				       "%llu/%llu commit %llu stored %llu;", i + 1, sn->up ? "up" : "down",
				       raft_state(r), (unsigned long long)r->current_term,
				       (unsigned long long)tally_ledger_applied_index(tally_node_ledger(sn->n)),
				       (unsigned long long)raft_last_applied(r),
				       (unsigned long long)r->commit_index,
				       (unsigned long long)r->last_stored);
	}
}

/* Heals everything, then steps until the cluster converges (bounded). */
static void sim_heal(struct sim *s)
{
	cuts_clear(s);
	for (unsigned i = 0; i < s->n_nodes; i++)
		s->node[i].wall_offset_ms = 0;
	say(s, "healed: network, clocks; crashed nodes restart");
	int64_t deadline = now_ms(s) + SIM_CONVERGE_MS;
	while (s->failure[0] == '\0' && !converged(s)) {
		if (now_ms(s) > deadline) {
			char state[600];
			sim_state(s, state, sizeof(state));
			sim_fail(s, "no convergence %d s after healing: %s", SIM_CONVERGE_MS / 1000,
				 state);
			return;
		}
		sim_step(s, false);
	}
}

/* ---- the checks ------------------------------------------------------------------------- */

/* SIM_DEBUG: the journal entries of l around seq, for a command found the wrong number
 * of times. */
static void entries_print(struct sim *s, struct tally_ledger *l, uint64_t seq)
{
	struct tally_arena a;
	tally_arena_init(&a, 64 << 10, 0);
	for (uint64_t q = seq > 3 ? seq - 3 : 1; q <= seq + 3; q++) {
		Tally__V1__StoredEntry *se = stored_entry_at(l, s->admin, &a, q);
		if (se == NULL)
			continue;
		Tally__V1__Entry *e = tally__v1__entry__unpack(tally_arena_protobuf(&a), se->entry.len,
							       se->entry.data);
		printf("  seq %llu raft %llu kind %d req %s\n", (unsigned long long)q,
		       (unsigned long long)se->raft_index, e ? (int)e->kind : -1,
		       e && e->command ? e->command->request_id : "-");
	}
	tally_arena_free(&a);
}

/* How often each client command is in the journal of ledger l. */
static void journal_count(struct sim *s, struct tally_ledger *l, unsigned *count)
{
	struct tally_arena a;
	tally_arena_init(&a, 64 << 10, 0);
	Tally__V1__Principal *auditor = who(&s->fx, TALLY__V1__ROLE__AUDITOR, "auditor", "*");
	uint64_t from = 1;
	for (unsigned pages = 0; from != 0 && s->failure[0] == '\0'; pages++) {
		Tally__V1__Query q = TALLY__V1__QUERY__INIT;
		Tally__V1__ListEntries le = TALLY__V1__LIST_ENTRIES__INIT;
		le.from_seq = from;
		le.limit = 10000;
		q.q_case = TALLY__V1__QUERY__Q_ENTRIES;
		q.entries = &le;
		Tally__V1__QueryResult *res;
		if (pages > 1000 || tally_ledger_query(l, &q, auditor, &a, &res) != 0 ||
		    res->code != TALLY__V1__RESULT_CODE__OK) {
			sim_fail(s, "the journal cannot be read");
			break;
		}
		for (size_t k = 0; k < res->n_entries; k++) {
			const ProtobufCBinaryData *b = &res->entries[k]->entry;
			Tally__V1__Entry *e = tally__v1__entry__unpack(tally_arena_protobuf(&a), b->len, b->data);
			unsigned id;
			if (e != NULL && e->command != NULL && e->result != NULL &&
			    e->result->code == TALLY__V1__RESULT_CODE__OK && /* not a refusal's */
			    sscanf(e->command->request_id, "c%u", &id) == 1 && id < s->n_cmds)
				count[id]++;
		}
		from = res->next_seq;
		tally_arena_reset(&a);
	}
	tally_arena_free(&a);
}

/* Every acknowledged command exactly once, every refused one never, and balances that
 * follow from them. */
static void check_commands(struct sim *s, struct tally_ledger *l)
{
	static unsigned count[SIM_COMMANDS_MAX];
	memset(count, 0, sizeof(count));
	journal_count(s, l, count);
	int64_t expect[SIM_MEMBERS] = {0};
	for (size_t k = 0; k < s->n_cmds && s->failure[0] == '\0'; k++) {
		const struct sim_cmd *c = &s->cmds[k];
		unsigned want = c->state == CMD_OK ? 1 : 0;
		if (count[k] != want && getenv("SIM_DEBUG") != NULL)
			entries_print(s, l, c->ok_seq);
		if (count[k] != want)
			sim_fail(s, "%s (%s, %s) is %u times in the journal (acknowledged at %lld ms "
				 "by node %u as entry %llu)", c->request_id,
				 c->state == CMD_OK ? "acknowledged" : "refused",
				 c->maybe ? "once unknown" : "never unknown", count[k],
				 (long long)c->ok_at_ms, c->node, (unsigned long long)c->ok_seq);
		if (c->state == CMD_OK && c->member >= 0)
			expect[c->member] += c->points;
		s->stats.ok += c->state == CMD_OK;
		s->stats.rejected += c->state == CMD_REJECTED;
		s->stats.maybe += c->maybe;
	}
	for (int m = 0; m < SIM_MEMBERS && s->failure[0] == '\0'; m++) {
		Tally__V1__Account *acct = NULL;
		int rc = tally_ledger_account(l, "b", member_ids[m], false, &s->fx.build, &acct);
		int64_t have = rc == 0 ? acct->available : rc == TALLY_ENOTFOUND ? 0 : -1;
		if (have != expect[m])
			sim_fail(s, "member %s has %lld points; the acknowledged commands make %lld",
				 member_ids[m], (long long)have, (long long)expect[m]);
	}
}


/* "raft index 7/9, kind 2/2, ...": stored entries x (node i's) and y (node 1's) side by
 * side, for the report. */
static void entries_describe(const Tally__V1__StoredEntry *x, const Tally__V1__StoredEntry *y,
			     struct tally_arena *a, char *buf, size_t cap)
{
	ProtobufCAllocator *pa = tally_arena_protobuf(a);
	Tally__V1__Entry *ex = tally__v1__entry__unpack(pa, x->entry.len, x->entry.data);
	Tally__V1__Entry *ey = tally__v1__entry__unpack(pa, y->entry.len, y->entry.data);
	snprintf(buf, cap, "raft index %llu/%llu, kind %d/%d, request %s/%s, time %lld/%lld",
		 (unsigned long long)x->raft_index, (unsigned long long)y->raft_index,
		 ex ? (int)ex->kind : -1, ey ? (int)ey->kind : -1,
		 ex && ex->command ? ex->command->request_id : "-",
		 ey && ey->command ? ey->command->request_id : "-",
		 ex ? (long long)ex->time_ms : 0, ey ? (long long)ey->time_ms : 0);
}

/* The first journal entry where node i's ledger and node 1's differ, for the report. */
static void first_difference(struct sim *s, unsigned i, uint64_t size, char *buf, size_t cap)
{
	struct tally_arena a;
	tally_arena_init(&a, 64 << 10, 0);
	snprintf(buf, cap, "no entry differs");
	for (uint64_t seq = 1; seq <= size; seq++) {
		Tally__V1__StoredEntry *x = stored_entry_at(tally_node_ledger(s->node[i].n), s->admin, &a, seq);
		Tally__V1__StoredEntry *y = stored_entry_at(tally_node_ledger(s->node[0].n), s->admin, &a, seq);
		if (x == NULL || y == NULL) {
			snprintf(buf, cap, "entry %llu does not read", (unsigned long long)seq);
			break;
		}
		if (x->entry.len != y->entry.len ||
		    memcmp(x->entry.data, y->entry.data, x->entry.len) != 0) {
			char both[240];
			entries_describe(x, y, &a, both, sizeof(both));
			snprintf(buf, cap, "entry %llu first (%s)", (unsigned long long)seq, both);
			break;
		}
		tally_arena_reset(&a);
	}
	tally_arena_free(&a);
}

/* Says how node i's ledger differs from node 1's. */
static void replicas_differ(struct sim *s, unsigned i)
{
	struct tally_digest a, b;
	tally_ledger_digest(tally_node_ledger(s->node[0].n), &a);
	tally_ledger_digest(tally_node_ledger(s->node[i].n), &b);
	char where[300];
	first_difference(s, i, a.tree_size < b.tree_size ? a.tree_size : b.tree_size, where,
			 sizeof(where));
	sim_fail(s, "node %u's ledger differs from node 1's: applied %llu/%llu, term %llu/%llu, "
		 "entries %llu/%llu, root %s, state digest %s, time %lld/%lld; %s", i + 1,
		 (unsigned long long)b.applied_index, (unsigned long long)a.applied_index,
		 (unsigned long long)b.applied_term, (unsigned long long)a.applied_term,
		 (unsigned long long)b.tree_size, (unsigned long long)a.tree_size,
		 memcmp(a.root, b.root, 32) == 0 ? "equal" : "differs",
		 memcmp(a.state_digest, b.state_digest, 32) == 0 ? "equal" : "differs",
		 (long long)b.time_ms, (long long)a.time_ms, where);
}

/* Byte-equal replicas that each pass the full invariant check, none of which took a
 * correct peer for a faulty one (consensus/recvguard.c). */
static void check_replicas(struct sim *s, uint8_t fingerprint[32])
{
	uint8_t first[32];
	for (unsigned i = 0; i < s->n_nodes && s->failure[0] == '\0'; i++) {
		struct tally_ledger *l = tally_node_ledger(s->node[i].n);
		uint8_t h[32];
		char msg[256];
		if (tally_ledger_check_invariants(l, msg, sizeof(msg)) != 0)
			sim_fail(s, "node %u: invariants: %s", i + 1, msg);
		else if (tally_ledger_content_hash(l, h) != 0)
			sim_fail(s, "node %u: no content hash", i + 1);
		else if (tally_node_stats(s->node[i].n)->raft_messages_refused != 0)
			sim_fail(s, "node %u refused a correct peer's message as contradicting "
				    "a committed entry", i + 1);
		else if (i > 0 && memcmp(h, first, 32) != 0)
			replicas_differ(s, i);
		memcpy(i == 0 ? first : h, h, 32);
	}
	memcpy(fingerprint, first, 32);
}

/* ---- one seed ----------------------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path);
}

static void sim_setup(struct sim *s)
{
	struct sim_cmd *c = cmd_add(s, -1, 0);
	cmd_submit(s, c);
	for (int m = 0; m < SIM_MEMBERS; m++)
		cmd_submit(s, cmd_add(s, -2 - m, 0));
	int64_t deadline = now_ms(s) + SIM_CONVERGE_MS;
	while (s->failure[0] == '\0' && !commands_settled(s)) {
		if (now_ms(s) > deadline) {
			char state[600];
			sim_state(s, state, sizeof(state));
			sim_fail(s, "setup did not finish: %s", state);
			return;
		}
		sim_step(s, false);
	}
}

static void sim_teardown(struct sim *s)
{
	raft_fixture_close(&s->f); /* flushes its requests into the nodes, closes each raft */
	for (unsigned i = 0; i < s->n_nodes; i++) {
		disk_free(&s->node[i].disk);
		if (s->node[i].n == NULL)
			continue;
		node_sim_detach(s->node[i].n);
		node_sim_free(s->node[i].n);
		s->node[i].n = NULL;
	}
	tally_arena_free(&s->fx.build);
	nftw(s->base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Runs one seed; 0 when every check held. fingerprint: node 1's content hash. */
static int sim_run(uint64_t seed, unsigned n_nodes, bool verbose, const char *root,
		   uint8_t fingerprint[32], struct sim *s)
{
	memset(s, 0, sizeof(*s));
	the_sim = s;
	s->seed = seed;
	s->rng = seed * 0x9E3779B97F4A7C15ULL + 1;
	s->verbose = verbose;
	s->n_nodes = n_nodes;
	s->snapshot_threshold = (unsigned)rng_range(s, 64, 512);
	snprintf(s->base, sizeof(s->base), "%s/seed-%llu", root, (unsigned long long)seed);
	nftw(s->base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	if (mkdir(s->base, 0700) != 0) {
		sim_fail(s, "mkdir %s: %s", s->base, strerror(errno));
		return 1;
	}
	tally_arena_init(&s->fx.build, 64 << 10, 0);
	s->admin = admin(&s->fx);
	s->dealer = who(&s->fx, TALLY__V1__ROLE__DEALER, "dealer", "*");
	s->mall = who(&s->fx, TALLY__V1__ROLE__MALL, "mall", "*");
	if (cluster_start(s) == 0) {
		sim_setup(s);
		s->next_fault_ms = now_ms(s) + SIM_FAULT_GAP_MS;
		int64_t chaos_end = now_ms(s) + SIM_CHAOS_MS;
		while (s->failure[0] == '\0' && now_ms(s) < chaos_end)
			sim_step(s, true);
		if (s->failure[0] == '\0')
			sim_heal(s);
		if (s->failure[0] == '\0')
			check_replicas(s, fingerprint);
		if (s->failure[0] == '\0')
			check_commands(s, tally_node_ledger(s->node[0].n));
	}
	sim_teardown(s);
	return s->failure[0] == '\0' ? 0 : 1;
}

/* ---- main ---------------------------------------------------------------------------------- */

/* Runs seed again: the same faults, commands and bytes (fingerprint and counters). */
static bool same_again(unsigned long long seed, unsigned nodes, const char *root,
		       const uint8_t fp[32], struct sim *s)
{
	struct sim_stats first = s->stats;
	uint8_t again[32] = {0};
	static struct sim s2;
	if (sim_run(seed, nodes, false, root, again, &s2) != 0)
		return false;
	the_sim = s;
	return memcmp(fp, again, 32) == 0 && memcmp(&first, &s2.stats, sizeof(first)) == 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: sim [--seeds N] [--first S] [--seed S] [--nodes 3|5] [--twice] "
			"[--verbose]\n");
	exit(2);
}

struct sim_opts {
	unsigned long long seeds, first;
	unsigned nodes;
	bool verbose, twice;
};

static void opts_parse(int argc, char **argv, struct sim_opts *o)
{
	static const struct option longs[] = {
		{"seeds", required_argument, NULL, 'n'}, {"first", required_argument, NULL, 'f'},
		{"seed", required_argument, NULL, 's'},  {"nodes", required_argument, NULL, 'N'},
		{"verbose", no_argument, NULL, 'v'},     {"twice", no_argument, NULL, 't'},
		{NULL, 0, NULL, 0}};
	*o = (struct sim_opts){.seeds = 100, .first = 1, .nodes = 3};
	int c;
	while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
		if (c == 'n')
			o->seeds = strtoull(optarg, NULL, 10);
		else if (c == 'f')
			o->first = strtoull(optarg, NULL, 10);
		else if (c == 's')
			o->first = strtoull(optarg, NULL, 10), o->seeds = 1;
		else if (c == 'N')
			o->nodes = (unsigned)strtoul(optarg, NULL, 10);
		else if (c == 'v')
			o->verbose = true;
		else if (c == 't')
			o->twice = true;
		else
			usage();
	}
	if (optind != argc || o->seeds == 0 || (o->nodes != 3 && o->nodes != 5))
		usage();
}

/* Runs one seed (twice with --twice) and says what failed; true when nothing did. */
static bool seed_check(const struct sim_opts *o, unsigned long long seed, const char *root,
		       struct sim *s)
{
	uint8_t fp[32] = {0};
	if (sim_run(seed, o->nodes, o->verbose, root, fp, s) != 0) {
		printf("sim: seed %llu FAILED: %s\n   rerun: build/rel/tests/sim --seed %llu "
		       "--nodes %u --verbose\n", seed, s->failure, seed, o->nodes);
		return false;
	}
	if (o->twice && !same_again(seed, o->nodes, root, fp, s)) {
		printf("sim: seed %llu FAILED: a second run did not end the same: the run is not "
		       "deterministic\n   rerun: build/rel/tests/sim --seed %llu --nodes %u --twice\n",
		       seed, seed, o->nodes);
		return false;
	}
	if (o->seeds == 1 || o->verbose)
		printf("sim: seed %llu ok: %u commands ok, %u refused, %u once unknown; %u faults, "
		       "%u crashes, %u restarts, %u disk faults, %u fail-stops, %u ledgers lost; "
		       "fingerprint %02x%02x%02x%02x%02x%02x%02x%02x\n", seed, s->stats.ok,
		       s->stats.rejected, s->stats.maybe, s->stats.faults, s->stats.crashes,
		       s->stats.restarts, s->stats.disk_faults, s->stats.fail_stops, s->stats.wipes,
		       fp[0], fp[1], fp[2], fp[3], fp[4], fp[5], fp[6], fp[7]);
	return true;
}

int main(int argc, char **argv)
{
	struct sim_opts o;
	opts_parse(argc, argv, &o);
	char root[200];
	const char *shm = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
	snprintf(root, sizeof(root), "%s/tally-sim-%d", shm != NULL ? shm : "/tmp", (int)getpid());
	if (mkdir(root, 0700) != 0 && errno != EEXIST) {
		fprintf(stderr, "sim: mkdir %s: %s\n", root, strerror(errno));
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	/* Keep freed memory for the next seed: LMDB's snapshot copy takes a fresh 2 MiB
	 * buffer and clears it each time, and as a fresh mmap every page of it faulted in
	 * again (half the run time; twice the seeds a minute without). */
	mallopt(M_MMAP_THRESHOLD, 256 << 20);
	mallopt(M_TRIM_THRESHOLD, 1 << 30);
	mallopt(M_TOP_PAD, 64 << 20);
	static struct sim s;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	unsigned long long failed = 0, ops = 0, faults = 0;
	for (unsigned long long seed = o.first; seed < o.first + o.seeds; seed++) {
		if (!seed_check(&o, seed, root, &s)) {
			failed++;
			continue;
		}
		ops += s.stats.ok + s.stats.rejected;
		faults += s.stats.faults;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("sim: %llu seeds (%llu..%llu), %u nodes: %llu failed; %llu commands, %llu faults; "
	       "%.1f s, %.0f seeds/minute\n", o.seeds, o.first, o.first + o.seeds - 1, o.nodes,
	       failed, ops, faults, secs, secs > 0 ? (double)o.seeds * 60.0 / secs : 0.0);
	rmdir(root);
	return failed == 0 ? 0 : 1;
}
