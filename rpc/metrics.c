/*
 * rpc/metrics — a node's /metrics page (see metrics.h).
 */
#include "rpc/metrics.h"

#include <assert.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ledger/arena.h"
#include "ledger/error.h"
#include "ledger/ledger.h"

/* The page being written: buf[0, at) is whole lines; once a line does not fit, the
 * page ends before it. */
struct page {
	char *buf;
	size_t cap;
	size_t at;
	bool full;
};

static void line(struct page *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void line(struct page *p, const char *fmt, ...)
{
	assert(p->cap > 0 && p->at < p->cap);
	if (p->full)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(p->buf + p->at, p->cap - p->at, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= p->cap - p->at) {
		p->full = true;
		p->buf[p->at] = '\0';
		return;
	}
	p->at += (size_t)n;
}

/* A family's HELP and TYPE lines. */
static void family(struct page *p, const char *name, const char *type, const char *help)
{
	line(p, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A family with one sample and no labels. */
struct scalar {
	const char *name;
	const char *type; /* "counter" or "gauge" */
	const char *help;
	double value;
};

#define METRICS_EXACT_MAX 9e15 /* doubles hold every integer up to 2^53 */

/* A sample's value: integers in full (counters), others to 9 significant digits. */
static void sample(struct page *p, const char *name, double v)
{
	bool integral = v >= -METRICS_EXACT_MAX && v <= METRICS_EXACT_MAX && v == (double)(int64_t)v;
	if (integral)
		line(p, "%s %lld\n", name, (long long)v);
	else
		line(p, "%s %.9g\n", name, v);
}

static void scalars(struct page *p, const struct scalar *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		family(p, m[i].name, m[i].type, m[i].help);
		sample(p, m[i].name, m[i].value);
	}
}

/* A histogram of tally_node_stats: counts per bucket, bounds scaled by `unit` (1e-6
 * for µs counted, seconds shown), and the sum of the values in the same unit. */
static void histogram(struct page *p, const char *name, const char *help,
		      const uint64_t bounds[TALLY_NODE_HIST_BOUNDS],
		      const uint64_t counts[TALLY_NODE_HIST_BOUNDS + 1], double unit, uint64_t sum)
{
	family(p, name, "histogram", help);
	uint64_t cum = 0;
	for (int i = 0; i < TALLY_NODE_HIST_BOUNDS; i++) {
		cum += counts[i];
		line(p, "%s_bucket{le=\"%g\"} %llu\n", name, (double)bounds[i] * unit,
		     (unsigned long long)cum);
	}
	cum += counts[TALLY_NODE_HIST_BOUNDS];
	line(p, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
	char sum_name[96];
	snprintf(sum_name, sizeof(sum_name), "%s_sum", name);
	sample(p, sum_name, (double)sum * unit);
	line(p, "%s_count %llu\n", name, (unsigned long long)cum);
}

/* Raft and the ledger as this node applies them. */
/* The node's counters and gauges that are a uint64_t of tally_node_stats as they are. */
struct node_stat {
	const char *name;
	const char *type; /* "counter" or "gauge" */
	const char *help;
	size_t at;        /* offsetof in struct tally_node_stats */
};

/* Where field f is in tally_node_stats; it does not compile unless f is a uint64_t. */
#define NODE_STAT(f)                                                                     \
	(offsetof(struct tally_node_stats, f) +                                          \
	 0 * sizeof(char[_Generic(((struct tally_node_stats *)0)->f, uint64_t: 1, default: -1)]))

static const struct node_stat node_stats[] = {
	{"tally_raft_commits_total", "counter", "Raft entries this node applied.",
	 NODE_STAT(commits)},
	{"tally_raft_messages_refused_total", "counter",
	 "Raft messages from peers refused because they contradict a committed entry.",
	 NODE_STAT(raft_messages_refused)},
	{"tally_commands_total", "counter", "Commands this node applied.",
	 NODE_STAT(commands)},
	{"tally_snapshots_total", "counter", "Snapshots this node began.",
	 NODE_STAT(snapshots)},
	{"tally_snapshots_adopted_total", "counter",
	 "Snapshots raft stored as this node's copy itself, without writing them again.",
	 NODE_STAT(snapshots_adopted)},
	{"tally_snapshots_reused_total", "counter",
	 "Snapshots copied over the file of one raft had removed (its pages already in "
	 "memory) rather than into a new file.",
	 NODE_STAT(snapshots_reused)},
	{"tally_log_segments_filled_total", "counter",
	 "Raft log segments written with zeros when made, so that the log's writes never "
	 "wait for the file system to mark blocks written.",
	 NODE_STAT(log_segments_filled)},
	{"tally_aio_contexts_reaped_total", "counter",
	 "raft's kernel AIO contexts (one per closed log segment) destroyed on a thread "
	 "of their own, not on the loop, where each took an RCU grace period.",
	 NODE_STAT(aio_contexts_reaped)},
	{"tally_journal_writeback_bytes_total", "counter",
	 "Bytes of the journal's segment files the node wrote back as they grew, so "
	 "that the kernel's periodic write-back does not find them all dirty at once.",
	 NODE_STAT(journal_writeback_bytes)},
	{"tally_ledger_writeback_bytes_total", "counter",
	 "Bytes of the ledger's file the node wrote back behind the data's growth, so "
	 "that the kernel's periodic write-back does not find them all dirty at once.",
	 NODE_STAT(ledger_writeback_bytes)},
	{"tally_commit_notices_total", "counter",
	 "Commit indexes the leader sent a follower before applying them itself, so "
	 "that the follower's apply runs beside the leader's.",
	 NODE_STAT(commit_notices)},
	{"tally_entries_applied_off_loop_total", "counter",
	 "Entries this node applied as a follower on a thread of their own, while its loop "
	 "went on storing and acknowledging the next ones.",
	 NODE_STAT(applied_off_loop)},
	{"tally_apply_groups_total", "counter",
	 "Transactions in which this node applied, on its loop, the entries raft applied "
	 "in one pass.",
	 NODE_STAT(apply_groups)},
	{"tally_apply_group_entries_total", "counter",
	 "Entries applied in those transactions: divided by tally_apply_groups_total, the "
	 "mean entries a transaction.",
	 NODE_STAT(apply_group_entries)},
	{"tally_snapshots_installed_total", "counter",
	 "Leader's snapshots this node installed in place of its log.",
	 NODE_STAT(snapshots_installed)},
	{"tally_snapshot_trailing_entries", "gauge",
	 "Raft log entries this node kept behind its latest snapshot: the default "
	 "(--snapshot-trailing, fewer if large), or as leader, up to 65536, enough for "
	 "a follower that fell behind to catch up from the log.",
	 NODE_STAT(snapshot_trailing)},
	{"tally_snapshots_kept_log_total", "counter",
	 "As leader: snapshots behind which this node kept more raft log than "
	 "--snapshot-trailing, so that a follower that fell behind catches up from "
	 "the log instead of by InstallSnapshot.",
	 NODE_STAT(snapshots_kept_log)},
	{"tally_install_snapshots_received_total", "counter",
	 "InstallSnapshot messages this node received: copies of a leader's snapshot.",
	 NODE_STAT(install_snapshots_received)},
	{"tally_install_snapshot_bytes_mapped_total", "counter",
	 "Bytes of InstallSnapshot messages received into a mapping of an unlinked file "
	 "beside the ledger rather than into the heap.",
	 NODE_STAT(install_snapshot_bytes_mapped)},
	{"tally_snapshot_appendix_bytes_total", "counter",
	 "As leader: bytes of closed journal segments sent after InstallSnapshot "
	 "messages, for the segments the snapshot names and the follower may lack.",
	 NODE_STAT(snapshot_appendix_bytes)},
	{"tally_snapshot_segments_held_total", "counter",
	 "As leader: closed journal segments left out of InstallSnapshot messages "
	 "because the follower said it holds them.",
	 NODE_STAT(snapshot_segments_held)},
	{"tally_snapshot_segment_bytes_held_total", "counter",
	 "As leader: bytes of the closed journal segments left out of InstallSnapshot "
	 "messages because the follower holds them.",
	 NODE_STAT(snapshot_segment_bytes_held)},
	{"tally_raft_send_turns_yielded_total", "counter",
	 "Times sending raft messages to one node stopped for a loop turn, having "
	 "encrypted its share of the turn (256 KiB), so that a large message does not "
	 "hold the node's loop.",
	 NODE_STAT(send_turns_yielded)},
	{"tally_raft_resends_skipped_total", "counter",
	 "As leader: AppendEntries of 1 MiB or more that raft sent a follower again, "
	 "whole, before the follower answered the first (a catch-up), not sent.",
	 NODE_STAT(resends_skipped)},
	{"tally_raft_resend_bytes_skipped_total", "counter",
	 "As leader: the entries' bytes of the AppendEntries counted by "
	 "tally_raft_resends_skipped_total.",
	 NODE_STAT(resend_bytes_skipped)},
	{"tally_raft_connect_failures_total", "counter",
	 "Attempts to connect to another node's raft address that failed (refused, "
	 "unreachable, or no TLS handshake within 5 s); each drops all but the 3 "
	 "newest messages queued for that node and is tried again 1 s later (0 "
	 "without TLS).",
	 NODE_STAT(raft_connect_failures)},
	{"tally_raft_bytes_sent_total", "counter",
	 "Bytes of raft's messages this node sent other nodes over TLS, before "
	 "encryption (with the transport's own preambles and segment lists; 0 without "
	 "TLS).",
	 NODE_STAT(raft_bytes_sent)},
	{"tally_raft_appends_superseded_total", "counter",
	 "As leader: AppendEntries queued for a follower and dropped before any of it "
	 "was sent, because a later one queued for it carries the same entries and "
	 "more (copies of a catch-up queued while the follower was unreachable).",
	 NODE_STAT(appends_superseded)},
	{"tally_raft_append_bytes_superseded_total", "counter",
	 "As leader: the entries' bytes of the AppendEntries counted by "
	 "tally_raft_appends_superseded_total.",
	 NODE_STAT(append_bytes_superseded)},
	{"tally_snapshots_declined_total", "counter",
	 "InstallSnapshot messages this node declined: they left out a segment it had "
	 "said it holds and no longer did; the leader then sends it again.",
	 NODE_STAT(snapshots_declined)},
	{"tally_install_declines_resent_total", "counter",
	 "As leader: InstallSnapshot messages a follower declined, sent again at once.",
	 NODE_STAT(install_declines_resent)},
	{"tally_install_waits_ended_total", "counter",
	 "As leader: snapshots a follower installed whose answer raft 0.15 would have "
	 "ignored (the follower had lost its data), ended without waiting for the timeout.",
	 NODE_STAT(install_waits_ended)},
};

static void render_node_stats(struct page *p, const struct tally_node_stats *ns)
{
	for (size_t i = 0; i < sizeof(node_stats) / sizeof(node_stats[0]); i++) {
		uint64_t v;
		memcpy(&v, (const char *)ns + node_stats[i].at, sizeof(v));
		family(p, node_stats[i].name, node_stats[i].type, node_stats[i].help);
		sample(p, node_stats[i].name, (double)v);
	}
}

static void render_node(struct page *p, struct tally_node *n)
{
	const struct tally_node_stats *ns = tally_node_stats(n);
	struct tally_digest dg;
	tally_ledger_digest(tally_node_ledger(n), &dg);
	struct tally_arena a;
	tally_arena_init(&a, 4096, 0);
	Tally__V1__Status st = TALLY__V1__STATUS__INIT;
	tally_node_status(n, &a, &st);
	uint64_t linked_bytes, linked = tally_ledger_segments_linked(&linked_bytes);
	const struct scalar m[] = {
		{"tally_ledger_remaps_in_place_total", "counter",
		 "Growths of the ledger's map that kept its pages mapped (where the map is, or "
		 "moved with mremap) rather than unmapping and mapping the file again; for the "
		 "whole process.",
		 (double)tally_ledger_remaps_in_place()},
		{"tally_ledger_map_waits_total", "counter",
		 "Growths of the ledger's map that waited for a snapshot's reader to let the map "
		 "move (only a growth past the address space held for it moves it); for the "
		 "whole process.",
		 (double)tally_ledger_map_waits()},
		{"tally_ledger_kept_at_start", "gauge",
		 "1 when this node kept its ledger at start instead of restoring raft's latest "
		 "snapshot over it: the ledger already held all of it and was written only in "
		 "this boot.",
		 (double)ns->ledger_kept_at_start},
		{"tally_journal_segments_linked_total", "counter",
		 "Closed journal segments synced, hashed and hard-linked for snapshots to name "
		 "(each once); for the whole process.",
		 (double)linked},
		{"tally_journal_segment_bytes_linked_total", "counter",
		 "Bytes of the journal segments linked for snapshots to name; for the whole "
		 "process.",
		 (double)linked_bytes},
		{"tally_install_snapshot_timeout_seconds", "gauge",
		 "As leader: how long this node waits for a follower to install its latest "
		 "snapshot before sending it again.",
		 (double)ns->install_snapshot_timeout_ms / 1000.0},
		{"tally_loop_stall_max_seconds", "gauge",
		 "The longest the event loop was kept from its heartbeat timer since start.",
		 (double)ns->loop_stall_max_us / 1e6},
		{"tally_raft_leader", "gauge", "1 when this node is the raft leader, else 0.",
		 tally_node_is_leader(n) ? 1 : 0},
		{"tally_raft_term", "gauge", "This node's raft term.", (double)st.term},
		{"tally_applied_index", "gauge", "The raft index of the last entry applied.",
		 (double)dg.applied_index},
		{"tally_journal_entries", "gauge", "Entries in the ledger's journal.",
		 (double)dg.tree_size},
		{"tally_ledger_rules", "gauge",
		 "The rules the ledger applies (TALLY_RULES_*), moved on by a set_rules entry.",
		 (double)st.rules},
		{"tally_rules_max", "gauge",
		 "The newest rules this node's binary has: every node needs a version before an "
		 "operator switches the ledger to it.",
		 (double)st.rules_max},
	};
	render_node_stats(p, ns);
	scalars(p, m, sizeof(m) / sizeof(m[0]));
	family(p, "tally_raft_state", "gauge", "This node's raft state: 1 for the one it is in.");
	line(p, "tally_raft_state{state=\"%s\"} 1\n", st.state != NULL ? st.state : "unknown");
	histogram(p, "tally_batch_commands", "Commands per applied raft entry.",
		  tally_node_batch_bounds, ns->batch_size_hist, 1, ns->commands);
	histogram(p, "tally_apply_seconds", "Time to apply one raft entry to the ledger.",
		  tally_node_apply_us_bounds, ns->apply_us_hist, 1e-6, ns->apply_us_sum);
	histogram(p, "tally_commit_seconds",
		  "Leader: time from proposing a raft entry to its results.",
		  tally_node_commit_us_bounds, ns->commit_us_hist, 1e-6, ns->commit_us_sum);
	tally_arena_free(&a);
}

/* Ledger time and the clocks (consensus/clock.h). */
static void render_clock(struct page *p, struct tally_node *n)
{
	struct tally_node_clock c;
	tally_node_clock_status(n, &c);
	const struct scalar m[] = {
		{"tally_clock_synchronized", "gauge",
		 "1 when a majority of the voters' wall clocks agree, else 0.", c.synchronized},
		{"tally_clock_agreeing_voters", "gauge", "Voters whose wall clocks agree.",
		 c.agreeing},
		{"tally_clock_offset_seconds", "gauge",
		 "This node's wall clock minus the cluster's time (0 when not synchronized).",
		 (double)c.offset_ms / 1000.0},
		{"tally_ledger_time_seconds", "gauge",
		 "Ledger time of the last applied batch, seconds since the Unix epoch.",
		 (double)c.ledger_time_ms / 1000.0},
		{"tally_clock_samples_total", "counter", "Peers' wall clock samples received.",
		 (double)c.samples},
		{"tally_clock_samples_dropped_total", "counter",
		 "Peers' wall clock samples dropped because their round trip was too slow.",
		 (double)c.samples_dropped},
		{"tally_clock_catchups_total", "counter",
		 "Batches whose ledger time the cluster's clocks pulled forward by more than 1 s.",
		 (double)c.catchups},
	};
	scalars(p, m, sizeof(m) / sizeof(m[0]));
}

/* The client port (rpc/server.h). */
static void render_server(struct page *p, const struct tally_server *s)
{
	const struct tally_server_stats *ss = tally_server_stats(s);
	const struct scalar m[] = {
		{"tally_connections", "gauge", "Client connections open.",
		 (double)ss->connections_open},
		{"tally_connections_accepted_total", "counter", "Client connections accepted.",
		 (double)ss->connections_total},
		{"tally_connections_refused_total", "counter",
		 "Client connections closed at once: over the cap, in all or per address.",
		 (double)ss->connections_refused},
		{"tally_auth_failures_total", "counter", "Client handshakes whose key proof failed.",
		 (double)ss->auth_failures},
		{"tally_tls_failures_total", "counter", "Client TLS handshakes or records that failed.",
		 (double)ss->tls_failures},
		{"tally_sessions_revoked_total", "counter",
		 "Client sessions ended by a keys reload (their key removed or changed).",
		 (double)ss->sessions_revoked},
		{"tally_connection_reads_paused_total", "counter",
		 "Times a connection was not read because its requests in the node reached the cap.",
		 (double)ss->reads_paused},
		{"tally_bad_frames_total", "counter",
		 "Client frames refused: oversized, undecodable or out of protocol.",
		 (double)ss->bad_frames},
		{"tally_requests_total", "counter", "Client requests received.",
		 (double)ss->requests},
	};
	scalars(p, m, sizeof(m) / sizeof(m[0]));
	family(p, "tally_results_total", "counter", "Command results answered, by result code.");
	for (int code = 1; code < 32; code++)
		if (ss->results[code] != 0)
			line(p, "tally_results_total{code=\"%s\"} %llu\n",
			     tally_result_name((Tally__V1__ResultCode)code),
			     (unsigned long long)ss->results[code]);
	histogram(p, "tally_request_seconds",
		  "Command and batch requests: time from their submission to the node to their answer.",
		  tally_node_commit_us_bounds, ss->request_us_hist, 1e-6, ss->request_us_sum);
}

size_t tally_metrics_render(struct tally_node *n, const struct tally_server *s, char *buf,
			    size_t cap)
{
	assert(n != NULL && s != NULL && buf != NULL);
	if (cap == 0)
		return 0;
	struct page p = {.buf = buf, .cap = cap, .at = 0, .full = false};
	buf[0] = '\0';
	render_node(&p, n);
	render_clock(&p, n);
	render_server(&p, s);
	return p.at;
}
