/*
 * The TLS transport's own message, the Have (consensus/tlsnet.c): two transports on one
 * loop, over TLS with certificates of a cluster CA, carrying real snapshots of a
 * ledger whose closed journal segments are linked. A node's Have goes first on its
 * connection; an InstallSnapshot to it leaves out the segments it holds; one that
 * leaves out a segment it no longer holds is declined before raft sees it, the sender
 * told, and the next one carries that segment. And a message of megabytes (a
 * follower's catch-up) goes out over several loop turns, the loop free for its other
 * work between them, and is not sent again until the receiver answered; and copies of
 * one queued while the connection is made go as one.
 */
#include "consensus/raftwire.h"
#include "consensus/transport.h"
#include "ledger/ledger.h"
#include "rpc/tls.h"
#include "tests/ports.h"
#include "tests/util.h"

#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MEMBERS 20
#define HANG_MS 60000 /* a guard against a hang, not a measure: a test that gets here fails */

static const char *const member_ids[MEMBERS] = {
	"m00", "m01", "m02", "m03", "m04", "m05", "m06", "m07", "m08", "m09",
	"m10", "m11", "m12", "m13", "m14", "m15", "m16", "m17", "m18", "m19"};

/* One node's transport, and what raft would have been handed. */
struct side {
	struct tally_transport t;
	struct tally_tls_ctx *tls;
	struct raft_io io; /* only recv's argument: io.data is the side */
	raft_id id;
	char address[64];
	char *links;
	unsigned results;            /* AppendEntriesResults received */
	unsigned appends;            /* AppendEntries received */
	uint64_t append_bytes, append_sum; /* the last one's entries: bytes, checksum */
	uint64_t append_prevs[8];    /* the first ones' previous entries, in order */
	unsigned append_counts[8];   /* and how many entries each carried */
	unsigned installs;           /* InstallSnapshots received */
	struct raft_buffer snapshot; /* the last one's data (raft's heap) */
	unsigned declined;           /* its declined callback */
	unsigned sends_done;
	bool closed;
};

static uv_loop_t loop;
static struct side sides[2];
static struct ports_block ports = {0, -1};

static void on_recv(struct raft_io *io, struct raft_message *m)
{
	struct side *s = io->data;
	if (m->type == RAFT_IO_APPEND_ENTRIES_RESULT)
		s->results++;
	if (m->type == RAFT_IO_APPEND_ENTRIES) {
		if (s->appends < sizeof(s->append_prevs) / sizeof(s->append_prevs[0])) {
			s->append_prevs[s->appends] = m->append_entries.prev_log_index;
			s->append_counts[s->appends] = m->append_entries.n_entries;
		}
		s->appends++;
		s->append_bytes = s->append_sum = 0;
		for (unsigned i = 0; i < m->append_entries.n_entries; i++) {
			const struct raft_buffer *b = &m->append_entries.entries[i].buf;
			s->append_bytes += b->len;
			for (size_t j = 0; j < b->len; j++)
				s->append_sum = s->append_sum * 31 + ((const uint8_t *)b->base)[j];
		}
		tally_raftwire_release(m);
		return;
	}
	if (m->type != RAFT_IO_INSTALL_SNAPSHOT)
		return;
	s->installs++;
	raft_free(s->snapshot.base);
	s->snapshot = m->install_snapshot.data; /* raft would take it */
	raft_configuration_close(&m->install_snapshot.conf);
}

static void on_declined(void *data, raft_id id)
{
	struct side *s = data;
	assert_int_equal(id, 2);
	s->declined++;
}

static void on_log(void *data, const char *line)
{
	print_message("node %llu: %s\n", (unsigned long long)((struct side *)data)->id, line);
}

static void on_sent(struct raft_io_send *req, int status)
{
	struct side *s = req->data;
	assert_int_equal(status, 0);
	s->sends_done++;
	free(req);
}

static void on_closed(struct raft_uv_transport *outer)
{
	((struct side *)((struct tally_transport *)outer->impl)->log_data)->closed = true;
}

static void on_wake(uv_timer_t *timer)
{
	(void)timer; /* only so that the loop comes back to check its condition */
}

/* Runs the loop until *count reaches want. */
static void run_until(const unsigned *count, unsigned want)
{
	uv_timer_t wake;
	uv_timer_init(&loop, &wake);
	uv_timer_start(&wake, on_wake, 20, 20);
	uint64_t deadline = uv_now(&loop) + HANG_MS;
	while (*count < want) {
		if (uv_now(&loop) > deadline)
			fail_msg("nothing after %d ms (%u of %u)", HANG_MS, *count, want);
		uv_run(&loop, UV_RUN_ONCE);
	}
	uv_close((uv_handle_t *)&wake, NULL);
	uv_run(&loop, UV_RUN_NOWAIT);
}

/* The certificates tools/tally-certs makes for nodes 1 and 2, in dir. */
static void certs_make(const char *dir)
{
	char self[1024], cmd[3000];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	assert_true(n > 0);
	self[n] = '\0';
	snprintf(cmd, sizeof(cmd), "%s/../tools/tally-certs init --dir %s/certs --nodes 2 > /dev/null",
		 dirname(self), dir);
	assert_int_equal(system(cmd), 0);
}

static void side_start(struct side *s, raft_id id, const char *certs, const char *links)
{
	char ca[600], cert[600], key[600], err[256];
	snprintf(ca, sizeof(ca), "%s/certs/ca.pem", certs);
	snprintf(cert, sizeof(cert), "%s/certs/node-%llu.pem", certs, (unsigned long long)id);
	snprintf(key, sizeof(key), "%s/certs/node-%llu.key", certs, (unsigned long long)id);
	if (tally_tls_ctx_node(&s->tls, ca, cert, key, id, err, sizeof(err)) != 0)
		fail_msg("%s", err);
	s->id = id;
	snprintf(s->address, sizeof(s->address), "127.0.0.1:%d|127.0.0.1:%d", ports.base + (int)id,
		 ports.base + 100 + (int)id);
	assert_int_equal(tally_transport_init(&s->t, &loop, s->tls), 0);
	s->t.log = on_log;
	s->t.log_data = s;
	s->t.links_dir = links;
	s->t.declined = on_declined;
	s->t.declined_data = s;
	s->io.data = s;
	tally_tlsnet_receive_to(&s->t, &s->io, on_recv);
	assert_int_equal(s->t.outer.init(&s->t.outer, id, s->address), 0);
	assert_int_equal(s->t.outer.listen(&s->t.outer, NULL), 0);
}

static void side_send(struct side *from, const struct side *to, struct raft_message *m)
{
	m->server_id = to->id;
	m->server_address = to->address;
	struct raft_io_send *req = calloc(1, sizeof(*req));
	assert_non_null(req);
	req->data = from;
	assert_int_equal(tally_tlsnet_send(&from->t, req, m, on_sent), 0);
}

static void send_snapshot(struct side *from, const struct side *to, const uint8_t *snap,
			  size_t len)
{
	struct raft_message m = {.type = RAFT_IO_INSTALL_SNAPSHOT};
	struct raft_install_snapshot *is = &m.install_snapshot;
	is->term = 2, is->last_index = 100, is->last_term = 2, is->conf_index = 1;
	raft_configuration_init(&is->conf);
	assert_int_equal(raft_configuration_add(&is->conf, 1, sides[0].address, RAFT_VOTER), 0);
	is->data = (struct raft_buffer){(void *)snap, len};
	unsigned done = from->sends_done;
	side_send(from, to, &m);
	run_until(&from->sends_done, done + 1);
	raft_configuration_close(&is->conf);
}

/* A ledger whose snapshots link its closed segments into links. */
static void ledger_filled(struct fx *f, const char *links)
{
	fx_open(f);
	fx_ledger_close(f);
	struct tally_ledger_options o = {.map_size_bytes = 1ULL << 30, .nosync = true,
					 .journal_segment_bytes = FX_JOURNAL_SEGMENT_BYTES,
					 .snapshot_links_dir = links};
	assert_int_equal(tally_ledger_open(f->dir, &o, &f->l), 0);
	setup_brand(f, "aurora", 0);
	setup_members(f, member_ids, MEMBERS);
	for (unsigned b = 0; b < 40; b++) {
		Tally__V1__Command *cmds[50];
		for (unsigned i = 0; i < 50; i++)
			cmds[i] = c_accrue(f, admin(f), "aurora", member_ids[(b * 50 + i) % MEMBERS],
					   10 + i);
		Tally__V1__CommandResult **rs = apply_n(f, cmds, 50);
		for (unsigned i = 0; i < 50; i++)
			assert_int_equal(rs[i]->code, TALLY__V1__RESULT_CODE__OK);
	}
}


/* The receiver's copy of the sender's links: hard links of every link and sidecar. */
static char *links_copy(const char *from)
{
	char *to = fx_tmpdir();
	char cmd[2048];
	snprintf(cmd, sizeof(cmd), "cp -l %s/* %s/", from, to);
	assert_int_equal(system(cmd), 0);
	return to;
}

/* What the receiver got restores where its links are, to the sender's content. */
static void assert_received_restores(const struct side *s, struct fx *like)
{
	char *dir = fx_tmpdir();
	struct tally_ledger_options o = {.map_size_bytes = 1ULL << 30, .nosync = true,
					 .journal_segment_bytes = FX_JOURNAL_SEGMENT_BYTES,
					 .snapshot_links_dir = s->links};
	struct tally_ledger *l = NULL;
	bool pending;
	assert_int_equal(tally_ledger_restore(dir, s->snapshot.base, s->snapshot.len, &o, &l,
					      &pending),
			 0);
	uint8_t a[32], b[32];
	assert_int_equal(tally_ledger_content_hash(l, a), 0);
	assert_int_equal(tally_ledger_content_hash(like->l, b), 0);
	assert_memory_equal(a, b, 32);
	tally_ledger_close(l);
	fx_remove_dir(dir);
	free(dir);
}

/* Certificates for nodes 1 and 2 in a new directory (returned) and their ports. */
static char *pair_prepare(void)
{
	char *dir = fx_tmpdir();
	certs_make(dir);
	int offsets[] = {1, 2};
	ports_acquire(&ports, offsets, 2);
	return dir;
}

/* pair_prepare, then both sides started on a new loop, without links. */
static char *pair_start(void)
{
	char *dir = pair_prepare();
	assert_int_equal(uv_loop_init(&loop), 0);
	side_start(&sides[0], 1, dir, NULL);
	side_start(&sides[1], 2, dir, NULL);
	return dir;
}

/* Closes both sides' transports and frees what pair_prepare and the sides hold. */
static void pair_finish(char *dir)
{
	for (int i = 0; i < 2; i++)
		sides[i].t.outer.close(&sides[i].t.outer, on_closed);
	while (!sides[0].closed || !sides[1].closed)
		uv_run(&loop, UV_RUN_ONCE);
	for (int i = 0; i < 2; i++) {
		tally_transport_free(&sides[i].t);
		tally_tls_ctx_free(sides[i].tls);
		raft_free(sides[i].snapshot.base);
		if (sides[i].links != NULL)
			fx_remove_dir(sides[i].links);
		free(sides[i].links);
	}
	assert_int_equal(uv_loop_close(&loop), 0);
	ports_release(&ports);
	fx_remove_dir(dir);
	free(dir);
	memset(sides, 0, sizeof(sides));
}

static void test_an_install_leaves_out_what_the_receiver_holds_or_is_declined(void **state)
{
	(void)state;
	char *dir = pair_prepare();
	struct side *a = &sides[0], *b = &sides[1];
	a->links = fx_tmpdir();
	struct fx f;
	ledger_filled(&f, a->links);
	size_t len;
	uint8_t *snap = fx_snapshot(&f, &len); /* links the closed segments */
	struct tally_segment_held *held;
	size_t n_held;
	assert_int_equal(tally_ledger_segments_held(a->links, &held, &n_held), 0);
	assert_true(n_held >= 3);
	b->links = links_copy(a->links); /* b has every closed segment */
	assert_int_equal(uv_loop_init(&loop), 0);
	side_start(a, 1, dir, a->links);
	side_start(b, 2, dir, b->links);

	/* b answers a: its connection opens with its Have, before the answer */
	struct raft_message r = {.type = RAFT_IO_APPEND_ENTRIES_RESULT};
	r.append_entries_result.term = 2;
	side_send(b, a, &r);
	run_until(&a->results, 1);
	send_snapshot(a, b, snap, len);
	run_until(&b->installs, 1);
	print_message("sent %llu bytes of segments; left out %llu segments (%llu bytes)\n",
		      (unsigned long long)a->t.snapshot_appendix_bytes,
		      (unsigned long long)a->t.snapshot_segments_held,
		      (unsigned long long)a->t.snapshot_segment_bytes_held);
	assert_int_equal(a->t.snapshot_segments_held, n_held);
	uint64_t bytes = 0;
	for (size_t i = 0; i < n_held; i++)
		bytes += held[i].len;
	assert_int_equal(a->t.snapshot_segment_bytes_held, bytes);
	assert_true(a->t.snapshot_appendix_bytes < 64 * n_held); /* the list and a footer */
	assert_received_restores(b, &f);

	/* b loses a segment it said it holds: the next install is declined, unseen by
	 * raft, and a is told; the one after carries that segment. */
	char gone[700];
	snprintf(gone, sizeof(gone), "%s/%020llu.seg", b->links, (unsigned long long)held[1].first);
	assert_int_equal(unlink(gone), 0);
	strcat(gone, ".sha256");
	assert_int_equal(unlink(gone), 0);
	send_snapshot(a, b, snap, len);
	run_until(&a->declined, 1);
	assert_int_equal(b->installs, 1);
	assert_int_equal(b->t.snapshots_declined, 1);
	uint64_t sent = a->t.snapshot_appendix_bytes;
	send_snapshot(a, b, snap, len);
	run_until(&b->installs, 2);
	/* left out: all of them twice (the second time declined), then all but the lost */
	assert_int_equal(a->t.snapshot_segments_held, 3 * n_held - 1);
	assert_true(a->t.snapshot_appendix_bytes - sent >= held[1].len);
	assert_int_equal(a->declined, 1);
	assert_received_restores(b, &f);

	pair_finish(dir);
	free(held);
	free(snap);
	fx_close(&f);
}

/* What the loop had done when a timer due at once, started right after a large send,
 * ran: the sender's yields so far and whether the receiver had the message. */
struct turn_probe {
	const struct side *from, *to;
	uint64_t yields;
	unsigned appends;
	bool ran;
};

static void on_turn_probe(uv_timer_t *timer)
{
	struct turn_probe *p = timer->data;
	p->yields = p->from->t.send_turns_yielded;
	p->appends = p->to->appends;
	p->ran = true;
	uv_close((uv_handle_t *)timer, NULL);
}

#define BIG_ENTRIES 64
#define BIG_ENTRY_BYTES (64u << 10) /* 4 MiB in all: sixteen turns' share */

/* Also: raft sending that message again, whole, before the receiver answered is not
 * sent twice. */
static void test_a_large_message_gives_the_loop_way_between_turns(void **state)
{
	(void)state;
	char *dir = pair_start();
	struct side *a = &sides[0], *b = &sides[1];
	/* a small message first, so that the connection is up when the large one goes */
	struct raft_message hello = {.type = RAFT_IO_APPEND_ENTRIES};
	hello.append_entries.term = 2;
	side_send(a, b, &hello);
	run_until(&b->appends, 1);

	struct raft_entry entries[BIG_ENTRIES];
	uint64_t sum = 0, seed = 1;
	for (unsigned i = 0; i < BIG_ENTRIES; i++) {
		uint8_t *d = raft_malloc(BIG_ENTRY_BYTES);
		assert_non_null(d);
		for (size_t j = 0; j < BIG_ENTRY_BYTES; j++) {
			seed = seed * 6364136223846793005ull + 1442695040888963407ull;
			d[j] = (uint8_t)(seed >> 56);
			sum = sum * 31 + d[j];
		}
		entries[i] = (struct raft_entry){.term = 2, .type = RAFT_COMMAND,
						 .buf = {d, BIG_ENTRY_BYTES}};
	}
	struct raft_message m = {.type = RAFT_IO_APPEND_ENTRIES};
	m.append_entries = (struct raft_append_entries){.term = 2, .prev_log_index = 1,
							.prev_log_term = 2, .entries = entries,
							.n_entries = BIG_ENTRIES};
	unsigned done = a->sends_done;
	side_send(a, b, &m);
	/* the send returned having encrypted one turn's share, not 4 MiB: a timer due
	 * now runs on the next turn, before the message is all out */
	struct turn_probe probe = {a, b, 0, 0, false};
	uv_timer_t now;
	uv_timer_init(&loop, &now);
	now.data = &probe;
	uv_timer_start(&now, on_turn_probe, 0, 0);
	run_until(&b->appends, 2);
	run_until(&a->sends_done, done + 1);
	assert_true(probe.ran);
	assert_int_equal(probe.appends, 1);
	assert_int_equal(probe.yields, 1); /* only the first turn's share had gone */
	print_message("4 MiB sent over %llu yields\n",
		      (unsigned long long)a->t.send_turns_yielded);
	assert_true(a->t.send_turns_yielded >= (uint64_t)BIG_ENTRIES * BIG_ENTRY_BYTES / (256u << 10) - 1);
	assert_int_equal(b->append_bytes, (uint64_t)BIG_ENTRIES * BIG_ENTRY_BYTES);
	assert_int_equal(b->append_sum, sum);

	/* raft sends it again before b answered (a heartbeat in probe state): not sent,
	 * though raft is told it was; once b answers, the next copy goes */
	a->t.resend_hold_ms = HANG_MS; /* not the hold's end: b's answer */
	side_send(a, b, &m);
	run_until(&a->sends_done, done + 2);
	assert_int_equal(a->t.resends_skipped, 1);
	assert_int_equal(a->t.resend_bytes_skipped, (uint64_t)BIG_ENTRIES * BIG_ENTRY_BYTES);
	struct raft_message small = m; /* the next entry after the large one's: it goes */
	small.append_entries.prev_log_index += BIG_ENTRIES;
	small.append_entries.n_entries = 1;
	side_send(a, b, &small);
	run_until(&b->appends, 3);
	assert_int_equal(b->append_bytes, BIG_ENTRY_BYTES);
	struct raft_message r = {.type = RAFT_IO_APPEND_ENTRIES_RESULT};
	r.append_entries_result.term = 2;
	side_send(b, a, &r);
	run_until(&a->results, 1);
	side_send(a, b, &m);
	run_until(&b->appends, 4);
	assert_int_equal(a->t.resends_skipped, 1);
	assert_int_equal(b->append_bytes, (uint64_t)BIG_ENTRIES * BIG_ENTRY_BYTES);
	assert_int_equal(b->append_sum, sum);
	run_until(&a->sends_done, done + 4);
	/* unanswered past the hold, the copy goes too */
	a->t.resend_hold_ms = 0;
	side_send(a, b, &m);
	run_until(&b->appends, 5);
	assert_int_equal(a->t.resends_skipped, 1);
	run_until(&a->sends_done, done + 5);
	for (unsigned i = 0; i < BIG_ENTRIES; i++)
		raft_free(entries[i].buf.base);

	pair_finish(dir);
}

/* AppendEntries queued for b, none of them begun (its connection is still being
 * made), each as raft 0.15 makes them: `prev` its previous entry (term 2), `n` of
 * `entries` after it. */
static void queue_append(struct side *a, const struct side *b, struct raft_entry *entries,
			 uint64_t prev, unsigned n)
{
	struct raft_message m = {.type = RAFT_IO_APPEND_ENTRIES};
	m.append_entries = (struct raft_append_entries){.term = 2, .prev_log_index = prev,
							.prev_log_term = 2, .entries = entries,
							.n_entries = n, .leader_commit = prev};
	side_send(a, b, &m);
}

/* While a follower cannot be reached, raft 0.15 queues the same catch-up at every
 * heartbeat, each copy a little longer: only the last goes. One with another previous
 * entry, or with fewer entries, is not dropped, and order is kept. */
static void test_copies_of_a_catch_up_queued_for_a_follower_go_once(void **state)
{
	(void)state;
	char *dir = pair_start();
	struct side *a = &sides[0], *b = &sides[1];
	uint8_t bytes[4][100];
	struct raft_entry entries[4];
	for (unsigned i = 0; i < 4; i++) {
		memset(bytes[i], 'a' + (int)i, sizeof(bytes[i]));
		entries[i] = (struct raft_entry){.term = 2, .type = RAFT_COMMAND,
						 .buf = {bytes[i], sizeof(bytes[i])}};
	}
	queue_append(a, b, entries, 10, 1);
	queue_append(a, b, entries, 10, 2);
	queue_append(a, b, entries, 10, 3);  /* carries the two before it */
	queue_append(a, b, entries, 13, 1);  /* the next one, as in raft's pipeline */
	queue_append(a, b, entries, 10, 2);  /* fewer than the one queued: not dropped */
	run_until(&a->sends_done, 5);
	run_until(&b->appends, 3);
	assert_int_equal(a->t.appends_superseded, 2);
	assert_int_equal(a->t.append_bytes_superseded, 3 * sizeof(bytes[0]));
	assert_int_equal(b->append_prevs[0], 10);
	assert_int_equal(b->append_counts[0], 3);
	assert_int_equal(b->append_prevs[1], 13);
	assert_int_equal(b->append_counts[1], 1);
	assert_int_equal(b->append_prevs[2], 10);
	assert_int_equal(b->append_counts[2], 2);
	pair_finish(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_an_install_leaves_out_what_the_receiver_holds_or_is_declined),
		cmocka_unit_test(test_a_large_message_gives_the_loop_way_between_turns),
		cmocka_unit_test(test_copies_of_a_catch_up_queued_for_a_follower_go_once),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
