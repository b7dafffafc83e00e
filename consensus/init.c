/*
 * consensus/init — creating and starting a node: configuration defaults, the data
 * directory (DIR/raft for raft_uv, DIR/ledger for LMDB), raft_uv with the TCP_NODELAY
 * transport, raft settings, bootstrap.
 *
 * raft 0.15 specifics handled here (docs/design.md, "canonical raft 0.15"):
 * raft_uv_init leaves io.version = 1, which makes raft_init reject an fsm with
 * snapshot_async, so io.version is set to 2 after it; raft_init's reason is in
 * raft_errmsg(), not raft_strerror().
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "consensus/internal.h"
#include "consensus/logfill.h"
#include "consensus/snapshot.h"

/* The election timeout unless configured. A leader's loop is held while it applies an
 * entry; with 1M members under sustained load that took up to 0.3-0.7 s
 * (tools/bench-memory, docs/performance.md "Memory"), and at 400 ms two of three runs
 * had an election and failed requests; at 1000 ms none. A lost leader is replaced 1-2 s
 * later. */
#define NODE_ELECTION_MS_DEFAULT 1000

#define ERR(buf, cap, ...) ((buf) != NULL && (cap) > 0 ? (void)snprintf((buf), (cap), __VA_ARGS__) : (void)0)

static int raft_to_tally(int rv)
{
	switch (rv) {
	case 0: return 0;
	case RAFT_NOMEM: return TALLY_ENOMEM;
	case RAFT_BADID:
	case RAFT_DUPLICATEID:
	case RAFT_DUPLICATEADDRESS:
	case RAFT_BADROLE:
	case RAFT_NAMETOOLONG:
	case RAFT_INVALID: return TALLY_EINVAL;
	case RAFT_CORRUPT:
	case RAFT_MALFORMED: return TALLY_ECORRUPT;
	default: return TALLY_EIO;
	}
}

/* Copies cfg with defaults applied; validates what cannot be defaulted. */
static int config_fill(struct tally_node *n, const struct tally_node_config *cfg, char *errmsg,
		       size_t errcap)
{
	assert(n != NULL && cfg != NULL);
	char raft_part[TALLY_ADDRESS_BYTES_MAX + 1];
	if (cfg->id == 0 || cfg->address == NULL || cfg->dir == NULL) {
		ERR(errmsg, errcap, "node: id (>= 1), address and dir are required");
		return TALLY_EINVAL;
	}
	if (tally_address_raft(cfg->address, raft_part, sizeof(raft_part)) != 0 ||
	    raft_part[0] == '\0' || strchr(raft_part, ':') == NULL) {
		ERR(errmsg, errcap, "node: address must be \"HOST:PORT|HOST:PORT\" (at most %d bytes)",
		    TALLY_ADDRESS_BYTES_MAX);
		return TALLY_EINVAL;
	}
	int a = snprintf(n->address, sizeof(n->address), "%s", cfg->address);
	int d = snprintf(n->dir, sizeof(n->dir), "%s", cfg->dir);
	int r = snprintf(n->raft_dir, sizeof(n->raft_dir), "%s/raft", cfg->dir);
	int l = snprintf(n->ledger_dir, sizeof(n->ledger_dir), "%s/ledger", cfg->dir);
	int k = snprintf(n->links_dir, sizeof(n->links_dir), "%s/snapshot-segments", cfg->dir);
	if (a < 0 || (size_t)a >= sizeof(n->address)) {
		ERR(errmsg, errcap, "node: address longer than %d bytes", TALLY_ADDRESS_BYTES_MAX);
		return TALLY_EINVAL;
	}
	if (d < 0 || r < 0 || l < 0 || k < 0 || (size_t)d >= sizeof(n->dir) ||
	    (size_t)r >= sizeof(n->raft_dir) || (size_t)l >= sizeof(n->ledger_dir) ||
	    (size_t)k >= sizeof(n->links_dir)) {
		ERR(errmsg, errcap, "node: dir path too long");
		return TALLY_EINVAL;
	}
	struct tally_node_config *c = &n->cfg;
	*c = *cfg;
	c->address = n->address;
	c->dir = n->dir;
	c->bootstrap = NULL;
	c->election_timeout_ms = c->election_timeout_ms ? c->election_timeout_ms : NODE_ELECTION_MS_DEFAULT;
	c->heartbeat_ms = c->heartbeat_ms ? c->heartbeat_ms : 50;
	c->snapshot_threshold = c->snapshot_threshold ? c->snapshot_threshold : 20000;
	c->snapshot_trailing = c->snapshot_trailing ? c->snapshot_trailing : 4096;
	c->snapshot_log_bytes = c->snapshot_log_bytes ? c->snapshot_log_bytes : (64u << 20);
	c->install_snapshot_timeout_ms = c->install_snapshot_timeout_ms ? c->install_snapshot_timeout_ms
								: 30000;
	c->expire_interval_ms = c->expire_interval_ms ? c->expire_interval_ms : 1000;
	c->batch_commands_max = c->batch_commands_max ? c->batch_commands_max : 8192;
	c->batch_bytes_max = c->batch_bytes_max ? c->batch_bytes_max : (1u << 20);
	c->inflight_max = c->inflight_max ? c->inflight_max : 64;
	if (c->writeback_age_ms == 0)
		c->writeback_age_ms = NODE_WRITEBACK_AGE_MS;
	if (c->notice_entry_bytes_min == 0)
		c->notice_entry_bytes_min = NODE_NOTICE_ENTRY_BYTES_MIN;
	if (c->batch_commands_max > TALLY_BATCH_COMMANDS_MAX)
		c->batch_commands_max = TALLY_BATCH_COMMANDS_MAX;
	if (c->batch_bytes_max > NODE_BATCH_BYTES_MAX)
		c->batch_bytes_max = NODE_BATCH_BYTES_MAX;
	if (c->inflight_max > NODE_INFLIGHT_MAX)
		c->inflight_max = NODE_INFLIGHT_MAX;
	if (c->segment_bytes % 4096 != 0 || (c->segment_bytes != 0 && c->segment_bytes < 8 * 4096)) {
		ERR(errmsg, errcap, "node: segment_bytes must be a multiple of 4096, at least 32768");
		return TALLY_EINVAL;
	}
	if (c->heartbeat_ms >= c->election_timeout_ms) {
		ERR(errmsg, errcap, "node: heartbeat_ms must be below election_timeout_ms");
		return TALLY_EINVAL;
	}
	return 0;
}

static int dir_make(const char *path, char *errmsg, size_t errcap)
{
	assert(path != NULL);
	if (mkdir(path, 0755) == 0 || errno == EEXIST)
		return 0;
	ERR(errmsg, errcap, "node: mkdir %s: %s", path, strerror(errno));
	return TALLY_EIO;
}

static void node_transport_log(void *data, const char *line)
{
	node_log(data, "%s", line);
}

/* raft_io->send over TLS: straight into the peer's TLS session (consensus/tlsnet.c). */
static int node_send_tls(struct raft_io *io, struct raft_io_send *req, const struct raft_message *m,
			 raft_io_send_cb cb)
{
	struct tally_node *n = node_of_io(io);
	return tally_tlsnet_send(&n->transport, req, m, cb);
}

/* raft_uv + wrapped transport + raft_init and settings. Nothing to undo on failure
 * but memory: raft_init's last step (io init) leaves no libuv handle when it fails. */
static int node_raft_init(struct tally_node *n, char *errmsg, size_t errcap)
{
	assert(n != NULL && !n->raft_inited);
	n->raft = &n->raft_store;
	n->io = &n->io_store;
	int rv = tally_transport_init(&n->transport, n->loop, n->cfg.tls);
	if (rv != 0) {
		ERR(errmsg, errcap, "raft transport: %s", raft_strerror(rv));
		return raft_to_tally(rv);
	}
	n->transport.log = node_transport_log;
	n->transport.log_data = n;
	n->transport.spool_dir = n->ledger_dir; /* a received snapshot, beside the ledger */
	n->transport.links_dir = n->cfg.tls != NULL ? n->links_dir : NULL;
	n->transport.declined = node_snapshot_declined;
	n->transport.declined_data = n;
	node_logfill_dir(n->raft_dir); /* segments written when made (consensus/logfill.h) */
	rv = raft_uv_init(n->io, n->loop, n->raft_dir, &n->transport.outer);
	if (rv != 0) {
		ERR(errmsg, errcap, "raft io: %s", n->io->errmsg);
		tally_transport_free(&n->transport);
		return raft_to_tally(rv);
	}
	n->io->version = 2; /* raft_uv implements async_work; 0.15 forgets to say so */
	if (n->cfg.segment_bytes != 0)
		raft_uv_set_segment_size(n->io, n->cfg.segment_bytes);
	node_snapshot_io_init(n->io);
	node_ioguard_install(n);
	node_health_install(n);
	if (n->cfg.tls != NULL)
		n->io->send = node_send_tls;
	rv = raft_init(n->raft, n->io, &n->fsm, n->cfg.id, n->address);
	if (rv != 0) {
		ERR(errmsg, errcap, "raft: %s", raft_errmsg(n->raft));
		raft_uv_close(n->io);
		tally_transport_free(&n->transport);
		return raft_to_tally(rv);
	}
	node_raft_settings(n);
	return 0;
}

void node_raft_settings(struct tally_node *n)
{
	assert(n != NULL && n->raft != NULL);
	n->raft->data = n;
	n->raft_inited = true;
	raft_set_election_timeout(n->raft, n->cfg.election_timeout_ms);
	raft_set_heartbeat_timeout(n->raft, n->cfg.heartbeat_ms);
	raft_set_snapshot_trailing(n->raft, n->cfg.snapshot_trailing);
	node_snapshot_sized(n, 0);
	node_snapshot_stagger(n);
	raft_set_pre_vote(n->raft, true);
}

#define LEDGER_CHECK_ENTRIES_MAX 2000000 /* full check at start below this journal size */

/* Opens the ledger, and throws it away when it does not verify: LMDB runs with
 * MDB_NOSYNC (the raft log is the durable record), so after an OS crash it may be
 * behind or damaged. Raft restores its latest snapshot on start and replays the log
 * after it, which rebuilds an empty ledger exactly. A full disk or a lack of memory
 * says nothing about the ledger: the start fails and the ledger stays. A ledger
 * written only in this boot (n->boot_same) is as sound as the last process left it:
 * opened, not scanned. */
static int ledger_open_checked(struct tally_node *n, char *errmsg, size_t errcap)
{
	int rc = tally_ledger_open(n->ledger_dir, &n->ledger_opts, &n->ledger);
	char why[256] = "";
	struct tally_digest d;
	if (rc == TALLY_ENOSPC || rc == TALLY_ENOMEM) {
		ERR(errmsg, errcap, "ledger %s: %s", n->ledger_dir, tally_strerror(rc));
		return rc;
	}
	n->boot_same = rc == 0 && node_bootmark_same(n);
	if (rc != 0)
		snprintf(why, sizeof(why), "open: %s", tally_strerror(rc));
	else if (tally_ledger_digest(n->ledger, &d) != 0)
		snprintf(why, sizeof(why), "meta does not read");
	else if (n->boot_same)
		return 0;
	else if (d.tree_size <= LEDGER_CHECK_ENTRIES_MAX &&
		 tally_ledger_check_invariants(n->ledger, why, sizeof(why)) == 0)
		return 0;
	else if (d.tree_size > LEDGER_CHECK_ENTRIES_MAX)
		return 0; /* too large to scan at every start: meta reads, trust it */
	node_log(n, "ledger %s failed its start check (%s); rebuilding it from the raft "
		 "snapshot and log", n->ledger_dir, why);
	tally_ledger_close(n->ledger);
	n->ledger = NULL;
	n->boot_same = false;
	rc = tally_ledger_remove(n->ledger_dir);
	if (rc == 0)
		rc = tally_ledger_open(n->ledger_dir, &n->ledger_opts, &n->ledger);
	if (rc != 0)
		ERR(errmsg, errcap, "ledger %s: %s", n->ledger_dir, tally_strerror(rc));
	return rc;
}

void node_free_parts(struct tally_node *n)
{
	assert(n != NULL);
	node_applier_end(n);
	tally_ledger_close(n->ledger);
	n->ledger = NULL;
	tally_arena_free(&n->apply_arena);
	tally_arena_free(&n->applier_arena);
	tally_arena_free(&n->query_arena);
	free(n->bootstrap);
	pthread_mutex_destroy(&n->check_lock);
	pthread_cond_destroy(&n->check_cond);
	free(n);
}

int node_create(struct tally_node **out, uv_loop_t *loop, const struct tally_node_config *cfg,
		char *errmsg, size_t errcap)
{
	assert(out != NULL && cfg != NULL);
	*out = NULL;
	struct tally_node *n = calloc(1, sizeof(*n));
	if (n == NULL) {
		ERR(errmsg, errcap, "node: out of memory");
		return TALLY_ENOMEM;
	}
	n->loop = loop;
	n->phase = NODE_OPEN;
	n->writeback.fd = -1;
	pthread_mutex_init(&n->check_lock, NULL);
	pthread_cond_init(&n->check_cond, NULL);
	tally_arena_init(&n->apply_arena, NODE_ARENA_CHUNK_BYTES, 0);
	tally_arena_init(&n->applier_arena, NODE_ARENA_CHUNK_BYTES, 0);
	tally_arena_init(&n->query_arena, NODE_ARENA_CHUNK_BYTES, 0);
	int rc = config_fill(n, cfg, errmsg, errcap);
	if (rc == 0 && cfg->bootstrap != NULL && (n->bootstrap = strdup(cfg->bootstrap)) == NULL)
		rc = TALLY_ENOMEM;
	if (rc == 0)
		rc = dir_make(n->dir, errmsg, errcap);
	if (rc == 0)
		rc = dir_make(n->raft_dir, errmsg, errcap);
	if (rc == 0)
		rc = dir_make(n->ledger_dir, errmsg, errcap);
	/* Over TLS the node's transport carries the closed segments a snapshot names, so
	 * its snapshots link them instead of copying them (ledger.h); without, they carry
	 * every segment, and a restore still finds the links of earlier ones. */
	if (rc == 0)
		rc = dir_make(n->links_dir, errmsg, errcap);
	n->ledger_opts = (struct tally_ledger_options){
		.map_size_bytes = cfg->map_size_bytes, .map_room_bytes = cfg->map_room_bytes,
		.nosync = true, .writemap = !cfg->ledger_pwrite,
		.journal_segment_bytes = cfg->journal_segment_bytes,
		.snapshot_links_dir = n->links_dir, .snapshot_segments_inline = cfg->tls == NULL};
	if (rc == 0)
		rc = ledger_open_checked(n, errmsg, errcap);
	tally_clock_init(&n->clock);
	node_fsm_init(n);
	if (rc == 0)
		node_time_observe(n);
	if (rc != 0) {
		node_free_parts(n);
		return rc;
	}
	*out = n;
	return 0;
}

int tally_node_init(struct tally_node **out, uv_loop_t *loop,
		    const struct tally_node_config *cfg, char *errmsg, size_t errcap)
{
	assert(out != NULL && loop != NULL && cfg != NULL);
	struct tally_node *n;
	int rc = node_create(&n, loop, cfg, errmsg, errcap);
	if (rc != 0)
		return rc;
	rc = node_raft_init(n, errmsg, errcap);
	if (rc != 0) {
		node_free_parts(n);
		return rc;
	}
	if (node_handles_init(n) != 0)
		abort(); /* uv_timer_init and uv_idle_init do not fail */
	*out = n;
	return 0;
}

/* Parses "1=ADDR,2=ADDR,..." into conf (voters); this node must be listed with its
 * own address. */
static int bootstrap_parse(struct tally_node *n, struct raft_configuration *conf,
			   char *errmsg, size_t errcap)
{
	assert(n != NULL && n->bootstrap != NULL && conf != NULL);
	char *copy = strdup(n->bootstrap), *save = NULL;
	if (copy == NULL)
		return TALLY_ENOMEM;
	int rc = 0;
	bool self = false;
	for (char *item = strtok_r(copy, ",", &save); item != NULL && rc == 0;
	     item = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(item, '='), *end = NULL;
		unsigned long long id = eq != NULL ? strtoull(item, &end, 10) : 0;
		if (eq == NULL || end != eq || id == 0 || eq[1] == '\0' ||
		    conf->n >= NODE_BOOTSTRAP_SERVERS_MAX) {
			ERR(errmsg, errcap, "bootstrap: \"%s\" is not ID=ADDRESS", item);
			rc = TALLY_EINVAL;
		} else if (raft_configuration_add(conf, id, eq + 1, RAFT_VOTER) != 0) {
			ERR(errmsg, errcap, "bootstrap: duplicate id or address in \"%s\"", item);
			rc = TALLY_EINVAL;
		} else if (id == n->cfg.id) {
			self = strcmp(eq + 1, n->address) == 0;
			if (!self) {
				ERR(errmsg, errcap, "bootstrap: node %llu is %s, but this node is %s",
				    id, eq + 1, n->address);
				rc = TALLY_EINVAL;
			}
		}
	}
	free(copy);
	if (rc == 0 && !self) {
		ERR(errmsg, errcap, "bootstrap: this node (%llu) is not listed",
		    (unsigned long long)n->cfg.id);
		rc = TALLY_EINVAL;
	}
	return rc;
}

int tally_node_start(struct tally_node *n, char *errmsg, size_t errcap)
{
	assert(n != NULL && n->raft_inited);
	assert(!n->started && n->phase == NODE_OPEN);
	if (n->bootstrap != NULL) {
		struct raft_configuration conf;
		raft_configuration_init(&conf);
		int rc = bootstrap_parse(n, &conf, errmsg, errcap);
		int rv = rc == 0 ? raft_bootstrap(n->raft, &conf) : 0;
		raft_configuration_close(&conf);
		if (rc != 0)
			return rc;
		if (rv != 0 && rv != RAFT_CANTBOOTSTRAP) { /* CANTBOOTSTRAP: state exists */
			ERR(errmsg, errcap, "raft bootstrap: %s", raft_errmsg(n->raft));
			return raft_to_tally(rv);
		}
	}
	int rv = raft_start(n->raft);
	if (rv != 0) {
		/* raft 0.15 fills raft_errmsg only when loading the log fails; a transport
		 * that cannot listen leaves its reason in the transport's errmsg. */
		const char *why = raft_errmsg(n->raft);
		if (why == NULL || why[0] == '\0')
			why = n->transport.outer.errmsg;
		if (why[0] == '\0')
			why = raft_strerror(rv);
		ERR(errmsg, errcap, "raft start (node %llu, %s): %s",
		    (unsigned long long)n->cfg.id, n->address, why);
		return raft_to_tally(rv);
	}
	n->started = true;
	node_bootmark_started(n);
	node_applier_begin(n);
	node_tick_start(n);
	return 0;
}
