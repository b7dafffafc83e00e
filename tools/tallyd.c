/*
 * tallyd — one node of a Tally cluster.
 *
 *   tallyd --id 1 --dir /var/lib/tally/n1 --raft 127.0.0.1:7001 --client 127.0.0.1:8001 \
 *          --http 127.0.0.1:9001 --keys keys.conf --certs /etc/tally/certs \
 *          --bootstrap "1=127.0.0.1:7001|127.0.0.1:8001,2=...,3=..."
 *
 * --certs DIR holds ca.pem (the cluster's CA), node-ID.pem and node-ID.key (this
 * node's certificate, CN tally-node-ID, and key), as tools/tally-certs makes them: the
 * raft port then speaks TLS 1.3 and accepts only peers with a certificate of that CA
 * naming the id they claim (consensus/tlsnet.c). --insecure instead runs the raft port
 * in plaintext, trusting anyone who reaches it; one of the two is required.
 * Flags may also come from a config file (--config F: one `name = value` per line,
 * the flag names without dashes). --join starts a node with no bootstrap: it waits
 * to be added by `tallyctl cluster add`. SIGTERM or SIGINT shut down gracefully
 * (queued requests answered UNAVAILABLE, leadership handed over, raft closed);
 * SIGHUP reloads the keys file.
 *
 * Exit statuses (sysexits(3); consensus/node.h says more):
 *    0  stopped by SIGTERM or SIGINT
 *    1  could not start (bad flags, keys, data directory, ports, raft state)
 *    2  usage error
 *   65  data does not verify (a committed entry or a snapshot that is corrupt): wipe
 *       the data directory and restart; the node rejoins by snapshot
 *   70  any other failure to apply or restore a committed entry: a bug, report it
 *   71  out of memory while writing raft's log or applying
 *   74  storage: a raft log, snapshot, term or vote write failed, or the ledger's disk
 *       is full or failing; free space or fix the disk, then restart
 * A node ends itself with 65, 70, 71 or 74 (fail-stop) before anything it could not
 * write or apply is answered, so that a healthy node takes over; restarted, it
 * catches up from the others.
 *
 * /health answers 200 "ok" when the node serves: started, not shutting down, a leader
 * known, not catching up (not installing a snapshot, its applied index at most
 * TALLY_NODE_READY_LAG_ENTRIES behind the commit index it knows), on a follower a
 * message from the leader within the election timeout, on a leader its term's first
 * barrier done; otherwise 503 with why ("no leader", "no word from the leader for
 * 812 ms", "catching up: applied 120 of 4000", "shutting down"). The second line of
 * the body is "leader=ADDR applied=N commit=M".
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "consensus/node.h"
#include "rpc/http.h"
#include "rpc/json.h"
#include "rpc/keys.h"
#include "rpc/metrics.h"
#include "rpc/peerclock.h"
#include "rpc/server.h"
#include "rpc/tls.h"
#include "rpc/units.h"

enum { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

struct opts {
	unsigned long id;
	char dir[1024];
	char raft[256];
	char client[256];
	char http[256];
	char keys[1024];
	char bootstrap[4096];
	bool join;
	int log_level;
	unsigned election_ms;
	unsigned heartbeat_ms;
	unsigned snapshot_threshold;
	unsigned snapshot_trailing;
	unsigned snapshot_log_mb;
	unsigned install_snapshot_ms;
	unsigned expire_ms;
	unsigned segment_kb;
	unsigned inflight_max;
	char certs[1024];   /* tally-certs directory: ca.pem, node-ID.pem, node-ID.key */
	bool insecure;      /* plaintext raft port (no certificates) */
	bool ledger_pwrite; /* LMDB writes with pwrite, not through its map */
	unsigned journal_segment_kb; /* 0: the ledger's 64 MiB */
	bool apply_on_loop; /* a follower applies on its loop, not the applier's thread */
	bool log_json;      /* --log-format json: one JSON object per log line */
};

struct daemon {
	struct opts o;
	uv_loop_t loop;
	struct tally_node *node;
	struct tally_server *server;
	struct tally_http *http;
	struct tally_peerclock *peerclock;
	struct tally_tls_ctx *tls;  /* the raft port's TLS; NULL with --insecure */
	EVP_PKEY *checkpoint_key;   /* signs checkpoints (rpc/checkpoint.h): DIR/checkpoint.key */
	uv_signal_t sig_term, sig_int, sig_hup;
	unsigned closing;           /* parts still closing */
	bool stopping;
};

static int log_level = LOG_INFO;
static bool log_json;           /* --log-format json */
static unsigned long log_node;  /* this node's id, in every JSON line */

#define LOG_LINE_BYTES_MAX 4096 /* a longer message is cut */

/* One log line to stderr: text ("2026-11-30T12:00:00.123Z tallyd info: msg") or, with
 * --log-format json, {"time","level","node","component","msg"}. */
static void log_emit(int level, const char *component, const char *msg)
{
	static const char *const names[] = {"error", "warn", "info", "debug"};
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	char when[TALLY_TIME_BYTES];
	tally_time_format((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, when);
	if (!log_json) {
		fprintf(stderr, "%s %s %s: %s\n", when, component, names[level], msg);
		return;
	}
	fprintf(stderr, "{\"time\":\"%s\",\"level\":\"%s\",\"node\":%lu,\"component\":\"%s\","
		"\"msg\":", when, names[level], log_node, component);
	tally_json_write_str(stderr, msg);
	fputs("}\n", stderr);
}

static void logf_(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void logf_(int level, const char *fmt, ...)
{
	if (level > log_level)
		return;
	char msg[LOG_LINE_BYTES_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_emit(level, "tallyd", msg);
}

/* The node's own lines (consensus/, raft's transport) with --log-format json; in text
 * they go to stderr as the node writes them ("tally node 1: ..."). A fail-stop line
 * is an error. */
static void log_node_line(void *data, const char *line)
{
	(void)data;
	log_emit(strncmp(line, "FATAL", 5) == 0 ? LOG_ERROR : LOG_INFO, "node", line);
}

/* ---- options ------------------------------------------------------------------------ */

#define USAGE \
	"usage: tallyd --id N --dir DIR --raft HOST:PORT --client HOST:PORT --keys FILE\n" \
	"              (--certs DIR | --insecure)\n" \
	"              [--http HOST:PORT] [--bootstrap ID=RAFT|CLIENT,...] [--join]\n" \
	"              [--config FILE] [--log-level error|warn|info|debug] [--log-format text|json]\n" \
	"              [--election-ms N] [--heartbeat-ms N] [--snapshot-threshold N]\n" \
	"              [--snapshot-trailing N] [--snapshot-log-mb N] [--install-snapshot-ms N]\n" \
	"              [--expire-ms N] [--segment-kb N] [--journal-segment-kb N]\n" \
	"              [--inflight-max N] [--ledger-pwrite]\n" \
	"              [--apply-on-loop]\n"

static void usage(void)
{
	fprintf(stderr, USAGE "tallyd --help says what each does.\n");
	exit(2);
}

/* --help: every flag, the config file, signals and exit statuses (stdout, exit 0). */
static void help(void)
{
	printf(USAGE "\n"
	       "One node of a Tally cluster: a replica of the points ledger, kept by raft.\n\n"
	       "Identity and storage\n"
	       "  --id N                this node's id (1 and up), named in its certificate\n"
	       "  --dir DIR             data directory: raft/ (log, snapshots), ledger/ (LMDB, and\n"
	       "                        journal/: the journal's segment files), snapshot-segments/\n"
	       "                        (with TLS: links to the closed segments snapshots name),\n"
	       "                        checkpoint.key (signs checkpoints; made at first start)\n"
	       "  --keys FILE           clients' keys, one `NAME ROLE BRANDS SECRET` per line\n"
	       "                        (mode 0600); reloaded on SIGHUP\n"
	       "Network\n"
	       "  --raft HOST:PORT      the raft port, for the other nodes\n"
	       "  --client HOST:PORT    the client port (libtally, tallyctl)\n"
	       "  --http HOST:PORT      plaintext /metrics and /health; keep it private\n"
	       "  --certs DIR           TLS 1.3 on both ports: DIR/ca.pem, node-ID.pem, node-ID.key\n"
	       "                        (tally-certs makes them)\n"
	       "  --insecure            plaintext instead: anyone who reaches the raft port is a peer\n"
	       "Membership\n"
	       "  --bootstrap LIST      the first configuration, ID=RAFT|CLIENT,... (the same on\n"
	       "                        every first node); ignored once the node has raft state\n"
	       "  --join                start without a configuration and wait to be added\n"
	       "                        (tallyctl cluster add)\n"
	       "Logging\n"
	       "  --log-level LEVEL     error, warn, info (default) or debug\n"
	       "  --log-format FORMAT   text (default) or json: one object per line with time\n"
	       "                        (RFC 3339), level, node, component (tallyd, node) and msg\n"
	       "Tuning (defaults in brackets)\n"
	       "  --election-ms N       raft election timeout [1000]\n"
	       "  --heartbeat-ms N      raft heartbeat, below the election timeout [50]\n"
	       "  --snapshot-threshold N  snapshot every N raft entries [20000]\n"
	       "  --snapshot-trailing N   entries kept after a snapshot [4096]; a leader keeps up\n"
	       "                        to 65536 for a follower that fell behind (half the log\n"
	       "                        budget at most)\n"
	       "  --snapshot-log-mb N   also snapshot every N MiB of raft log, 1..4096 [64]\n"
	       "  --install-snapshot-ms N  leader: wait N ms, plus 1 s per 16 MiB of its latest\n"
	       "                        snapshot, for a follower to install it before sending it\n"
	       "                        again [30000]\n"
	       "  --expire-ms N         how often the leader submits expiry sweeps [1000]\n"
	       "  --segment-kb N        raft log segment size, a multiple of 4, at least 32 [8192]\n"
	       "  --journal-segment-kb N  where the journal's segment files close, 16..65536\n"
	       "                        [65536]; the same on every node (tests make it small)\n"
	       "  --inflight-max N      raft entries proposed and not yet applied [64]\n"
	       "  --ledger-pwrite       LMDB writes the ledger's pages with pwrite instead of\n"
	       "                        through a writable map: ~20 %% slower while the pages it\n"
	       "                        changes fit the kernel's dirty limits, far less written\n"
	       "                        back once a large ledger outgrows them\n"
	       "                        (docs/performance.md, Memory)\n"
	       "  --apply-on-loop       a follower applies committed entries on its event loop,\n"
	       "                        as the leader does, instead of on a thread of its own,\n"
	       "                        which lets it store and acknowledge the next entries\n"
	       "                        meanwhile (docs/performance.md, The apply holds the\n"
	       "                        loop)\n"
	       "Config file\n"
	       "  --config FILE         flags from FILE, one `name = value` per line (the flag's name\n"
	       "                        without dashes; `join = true`, `insecure = true`); # starts\n"
	       "                        a comment. Read where it stands among the flags: later ones win.\n"
	       "Signals\n"
	       "  SIGTERM, SIGINT       shut down: queued requests answered UNAVAILABLE,\n"
	       "                        leadership handed over, raft closed; exit 0\n"
	       "  SIGHUP                reload --keys; sessions of removed or changed keys end\n"
	       "Exit statuses\n"
	       "  0 stopped by a signal; 1 could not start; 2 usage error;\n"
	       "  65 data does not verify (wipe the data directory; the node rejoins by snapshot);\n"
	       "  70 an entry or snapshot that cannot be applied (a bug: report it);\n"
	       "  71 out of memory; 74 storage failed or full (fix it, then restart).\n"
	       "  The node ends itself with 65, 70, 71 or 74 before answering anything it could\n"
	       "  not write or apply, so that a healthy node takes over.\n");
	exit(0);
}

static bool copy_opt(char *dst, size_t cap, const char *v)
{
	if (strlen(v) >= cap)
		return false;
	strcpy(dst, v);
	return true;
}

/* Applies one option by name; false when the name or value is bad. */
static bool set_opt(struct opts *o, const char *name, const char *v)
{
	if (strcmp(name, "id") == 0)
		return (o->id = strtoul(v, NULL, 10)) > 0;
	if (strcmp(name, "dir") == 0)
		return copy_opt(o->dir, sizeof(o->dir), v);
	if (strcmp(name, "raft") == 0)
		return copy_opt(o->raft, sizeof(o->raft), v);
	if (strcmp(name, "client") == 0)
		return copy_opt(o->client, sizeof(o->client), v);
	if (strcmp(name, "http") == 0)
		return copy_opt(o->http, sizeof(o->http), v);
	if (strcmp(name, "keys") == 0)
		return copy_opt(o->keys, sizeof(o->keys), v);
	if (strcmp(name, "bootstrap") == 0)
		return copy_opt(o->bootstrap, sizeof(o->bootstrap), v);
	if (strcmp(name, "join") == 0)
		return (o->join = strcmp(v, "false") != 0), true;
	if (strcmp(name, "certs") == 0)
		return copy_opt(o->certs, sizeof(o->certs), v);
	if (strcmp(name, "insecure") == 0)
		return (o->insecure = strcmp(v, "false") != 0), true;
	if (strcmp(name, "ledger-pwrite") == 0)
		return (o->ledger_pwrite = strcmp(v, "false") != 0), true;
	if (strcmp(name, "apply-on-loop") == 0)
		return (o->apply_on_loop = strcmp(v, "false") != 0), true;
	if (strcmp(name, "election-ms") == 0)
		return (o->election_ms = (unsigned)strtoul(v, NULL, 10)) > 0;
	if (strcmp(name, "heartbeat-ms") == 0)
		return (o->heartbeat_ms = (unsigned)strtoul(v, NULL, 10)) > 0;
	if (strcmp(name, "snapshot-threshold") == 0)
		return (o->snapshot_threshold = (unsigned)strtoul(v, NULL, 10)) > 0;
	if (strcmp(name, "snapshot-trailing") == 0)
		return (o->snapshot_trailing = (unsigned)strtoul(v, NULL, 10)) > 0;
	if (strcmp(name, "snapshot-log-mb") == 0)
		return (o->snapshot_log_mb = (unsigned)strtoul(v, NULL, 10)) > 0 && o->snapshot_log_mb <= 4096;
	if (strcmp(name, "install-snapshot-ms") == 0)
		return (o->install_snapshot_ms = (unsigned)strtoul(v, NULL, 10)) > 0;
	if (strcmp(name, "expire-ms") == 0)
		return (o->expire_ms = (unsigned)strtoul(v, NULL, 10)) > 0;
	if (strcmp(name, "inflight-max") == 0)
		return (o->inflight_max = (unsigned)strtoul(v, NULL, 10)) > 0;
	if (strcmp(name, "journal-segment-kb") == 0)
		return (o->journal_segment_kb = (unsigned)strtoul(v, NULL, 10)) >= 16 &&
		       o->journal_segment_kb <= 65536;
	if (strcmp(name, "segment-kb") == 0)
		return (o->segment_kb = (unsigned)strtoul(v, NULL, 10)) >= 32 && o->segment_kb % 4 == 0;
	if (strcmp(name, "log-format") == 0) {
		o->log_json = strcmp(v, "json") == 0;
		return o->log_json || strcmp(v, "text") == 0;
	}
	if (strcmp(name, "log-level") == 0) {
		static const char *const levels[] = {"error", "warn", "info", "debug"};
		for (int i = 0; i < 4; i++)
			if (strcmp(v, levels[i]) == 0)
				return (o->log_level = i), true;
		return false;
	}
	return false;
}

static void load_config(struct opts *o, const char *path)
{
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		logf_(LOG_ERROR, "config %s: %s", path, strerror(errno));
		exit(2);
	}
	char line[4096];
	for (unsigned n = 1; fgets(line, sizeof(line), f) != NULL; n++) {
		char name[64], value[4000];
		char *hash = strchr(line, '#');
		if (hash != NULL)
			*hash = '\0';
		if (sscanf(line, " %63[a-z-] = %3999s", name, value) != 2) {
			if (strspn(line, " \t\r\n") == strlen(line))
				continue;
			logf_(LOG_ERROR, "%s:%u: expected `name = value`", path, n);
			exit(2);
		}
		if (!set_opt(o, name, value)) {
			logf_(LOG_ERROR, "%s:%u: bad option %s", path, n, name);
			exit(2);
		}
	}
	fclose(f);
}

static void parse(int argc, char **argv, struct opts *o)
{
	static const struct option longs[] = {
		{"id", required_argument, NULL, 0},           {"dir", required_argument, NULL, 0},
		{"raft", required_argument, NULL, 0},         {"client", required_argument, NULL, 0},
		{"http", required_argument, NULL, 0},         {"keys", required_argument, NULL, 0},
		{"bootstrap", required_argument, NULL, 0},    {"join", no_argument, NULL, 0},
		{"config", required_argument, NULL, 0},       {"log-level", required_argument, NULL, 0},
		{"election-ms", required_argument, NULL, 0},  {"heartbeat-ms", required_argument, NULL, 0},
		{"snapshot-threshold", required_argument, NULL, 0},
		{"snapshot-trailing", required_argument, NULL, 0},
		{"snapshot-log-mb", required_argument, NULL, 0},
		{"install-snapshot-ms", required_argument, NULL, 0},
		{"expire-ms", required_argument, NULL, 0},    {"segment-kb", required_argument, NULL, 0},
		{"journal-segment-kb", required_argument, NULL, 0},
		{"inflight-max", required_argument, NULL, 0}, {"ledger-pwrite", no_argument, NULL, 0},
		{"apply-on-loop", no_argument, NULL, 0},
		{"certs", required_argument, NULL, 0},        {"insecure", no_argument, NULL, 0},
		{"log-format", required_argument, NULL, 0},   {"help", no_argument, NULL, 0},
		{NULL, 0, NULL, 0}};
	memset(o, 0, sizeof(*o));
	o->log_level = LOG_INFO;
	int idx, c;
	while ((c = getopt_long(argc, argv, "", longs, &idx)) != -1) {
		if (c != 0)
			usage();
		const char *name = longs[idx].name;
		if (strcmp(name, "help") == 0)
			help();
		if (strcmp(name, "config") == 0)
			load_config(o, optarg);
		else if (!set_opt(o, name, optarg != NULL ? optarg : "true"))
			usage();
	}
	if (optind != argc || o->id == 0 || !o->dir[0] || !o->raft[0] || !o->client[0] ||
	    !o->keys[0] || (o->join && o->bootstrap[0]))
		usage();
	if (!o->certs[0] == !o->insecure) {
		logf_(LOG_ERROR, "give --certs DIR (TLS, the default) or --insecure (plaintext), not %s",
		      o->insecure ? "both" : "neither");
		usage();
	}
}

/* The raft port's TLS from the tally-certs directory, or a loud warning without. */
static int tls_load(struct daemon *d)
{
	if (d->o.insecure) {
		logf_(LOG_WARN, "INSECURE: --insecure: the raft port %s speaks plaintext and trusts "
				"anyone who reaches it to be a node; use --certs on any network but a "
				"test machine's loopback", d->o.raft);
		return 0;
	}
	char ca[1100], cert[1100], key[1100], err[512];
	snprintf(ca, sizeof(ca), "%s/ca.pem", d->o.certs);
	snprintf(cert, sizeof(cert), "%s/node-%lu.pem", d->o.certs, d->o.id);
	snprintf(key, sizeof(key), "%s/node-%lu.key", d->o.certs, d->o.id);
	if (tally_tls_ctx_node(&d->tls, ca, cert, key, d->o.id, err, sizeof(err)) != 0) {
		logf_(LOG_ERROR, "TLS: %s", err);
		return -1;
	}
	return 0;
}

/* ---- /metrics (rpc/metrics.c) and /health ------------------------------------------ */

/* /health: 200 when the node serves, 503 with the reason otherwise (header comment). */
static size_t render_health(struct daemon *d, char *buf, size_t cap, int *status)
{
	struct tally_node_health h;
	tally_node_health(d->node, &h);
	if (d->stopping) { /* the node's own close starts once the connections are closed */
		h.ready = false;
		snprintf(h.why, sizeof(h.why), "shutting down");
	}
	*status = h.ready ? 200 : 503;
	int n = snprintf(buf, cap, "%s\nleader=%s applied=%llu commit=%llu\n", h.why,
			 tally_node_leader_client(d->node), (unsigned long long)h.applied_index,
			 (unsigned long long)h.commit_index);
	return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

static size_t render(void *data, const char *path, char *buf, size_t cap, int *status,
		     const char **type)
{
	struct daemon *d = data;
	*type = "text/plain; version=0.0.4";
	if (strcmp(path, "/metrics") == 0) {
		*status = 200;
		return tally_metrics_render(d->node, d->server, buf, cap);
	}
	if (strcmp(path, "/health") == 0)
		return render_health(d, buf, cap, status);
	*status = 404;
	return (size_t)snprintf(buf, cap, "not found\n");
}

/* ---- lifecycle ---------------------------------------------------------------------- */

static void on_part_closed(void *data)
{
	struct daemon *d = data;
	if (--d->closing == 0) {
		uv_close((uv_handle_t *)&d->sig_term, NULL);
		uv_close((uv_handle_t *)&d->sig_int, NULL);
		uv_close((uv_handle_t *)&d->sig_hup, NULL);
	}
}

static void on_server_closed(void *data)
{
	struct daemon *d = data;
	tally_node_close(d->node, on_part_closed, d);
}

static void shutdown_daemon(struct daemon *d)
{
	if (d->stopping)
		return;
	d->stopping = true;
	logf_(LOG_INFO, "shutting down");
	d->closing = 1 + (d->http != NULL) + (d->peerclock != NULL);
	if (d->http != NULL)
		tally_http_close(d->http, on_part_closed, d);
	if (d->peerclock != NULL)
		tally_peerclock_close(d->peerclock, on_part_closed, d);
	/* Connections first (no new requests), then the node answers what is queued. */
	tally_server_close(d->server, on_server_closed, d);
}

static void on_signal(uv_signal_t *s, int signum)
{
	struct daemon *d = s->data;
	if (signum != SIGHUP) {
		shutdown_daemon(d);
		return;
	}
	struct tally_keys *keys = calloc(1, sizeof(*keys));
	char err[256];
	if (keys == NULL || tally_keys_load(d->o.keys, keys, err, sizeof(err)) != 0) {
		logf_(LOG_ERROR, "SIGHUP: keys not reloaded: %s", keys ? err : "out of memory");
		free(keys);
		return;
	}
	tally_server_set_keys(d->server, keys);
	logf_(LOG_INFO, "SIGHUP: reloaded %zu keys from %s", keys->n, d->o.keys);
}

static int start(struct daemon *d)
{
	char err[512], address[600];
	snprintf(address, sizeof(address), "%s|%s", d->o.raft, d->o.client);
	struct tally_node_config nc = {
		.id = d->o.id, .address = address, .dir = d->o.dir,
		.bootstrap = d->o.bootstrap[0] ? d->o.bootstrap : NULL,
		.election_timeout_ms = d->o.election_ms, .heartbeat_ms = d->o.heartbeat_ms,
		.snapshot_threshold = d->o.snapshot_threshold,
		.snapshot_trailing = d->o.snapshot_trailing, .expire_interval_ms = d->o.expire_ms,
		.snapshot_log_bytes = (size_t)d->o.snapshot_log_mb << 20,
		.install_snapshot_timeout_ms = d->o.install_snapshot_ms,
		.segment_bytes = (size_t)d->o.segment_kb * 1024, .tls = d->tls,
		.inflight_max = d->o.inflight_max, .ledger_pwrite = d->o.ledger_pwrite,
		.journal_segment_bytes = (uint64_t)d->o.journal_segment_kb << 10,
		.apply_on_loop = d->o.apply_on_loop,
		.log_line = d->o.log_json ? log_node_line : NULL,
	};
	struct tally_keys *keys = calloc(1, sizeof(*keys));
	if (keys == NULL || tally_keys_load(d->o.keys, keys, err, sizeof(err)) != 0) {
		logf_(LOG_ERROR, "keys: %s", keys ? err : "out of memory");
		free(keys);
		return 1;
	}
	if (tally_node_init(&d->node, &d->loop, &nc, err, sizeof(err)) != 0 ||
	    tally_node_start(d->node, err, sizeof(err)) != 0) {
		logf_(LOG_ERROR, "node: %s", err);
		return 1;
	}
	if (tally_checkpoint_key_load(d->o.dir, d->o.id, true, &d->checkpoint_key, err,
				      sizeof(err)) != 0) {
		logf_(LOG_ERROR, "%s", err);
		return 1;
	}
	struct tally_server_config sc = {.listen_address = d->o.client, .tls = d->tls,
					 .checkpoint_key = d->checkpoint_key};
	if (tally_server_init(&d->server, &d->loop, d->node, keys, &sc, err, sizeof(err)) != 0) {
		logf_(LOG_ERROR, "%s", err);
		return 1;
	}
	if (tally_peerclock_init(&d->peerclock, &d->loop, d->node, d->tls) != 0) {
		logf_(LOG_ERROR, "peer clocks: out of memory");
		return 1;
	}
	if (d->o.http[0] &&
	    tally_http_init(&d->http, &d->loop, d->o.http, render, d, err, sizeof(err)) != 0) {
		logf_(LOG_ERROR, "%s", err);
		return 1;
	}
	logf_(LOG_INFO, "node %lu: raft %s, clients %s%s%s, data %s", d->o.id, d->o.raft,
	      d->o.client, d->o.http[0] ? ", http " : "", d->o.http, d->o.dir);
	return 0;
}

int main(int argc, char **argv)
{
	static struct daemon d;
	parse(argc, argv, &d.o);
	log_level = d.o.log_level;
	log_json = d.o.log_json;
	log_node = d.o.id;
	signal(SIGPIPE, SIG_IGN); /* a peer dying must not kill the survivors */
	tally_node_snapshot_mappings(); /* raft's snapshots: mappings of its files, not heap */
	uv_loop_init(&d.loop);
	uv_signal_t *sigs[3] = {&d.sig_term, &d.sig_int, &d.sig_hup};
	int nums[3] = {SIGTERM, SIGINT, SIGHUP};
	for (int i = 0; i < 3; i++) {
		uv_signal_init(&d.loop, sigs[i]);
		sigs[i]->data = &d;
		uv_signal_start(sigs[i], on_signal, nums[i]);
	}
	if (tls_load(&d) != 0 || start(&d) != 0)
		return 1;
	uv_run(&d.loop, UV_RUN_DEFAULT);
	tally_server_free(d.server);
	tally_http_free(d.http);
	tally_peerclock_free(d.peerclock);
	tally_node_free(d.node);
	tally_tls_ctx_free(d.tls);
	EVP_PKEY_free(d.checkpoint_key);
	uv_loop_close(&d.loop);
	logf_(LOG_INFO, "stopped");
	return 0;
}
