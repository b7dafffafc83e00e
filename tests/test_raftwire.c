/* raft's messages in Tally's TLS transport (consensus/raftwire.c): every type read back
 * as it was written, owned as raft expects, and every malformed prefix or header
 * refused with nothing allocated. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "consensus/raftwire.h"

/* A message's bytes as tlsnet.c sends them: its head, then its payload pieces. */
struct wire {
	uint8_t *bytes;
	size_t len;
};

static struct wire wire_of(const struct raft_message *m)
{
	size_t head = tally_raftwire_head_bytes(m);
	uint64_t payload = tally_raftwire_payload_bytes(m);
	struct wire w = {malloc(head + payload), head + payload};
	assert_non_null(w.bytes);
	tally_raftwire_head_write(m, w.bytes);
	uint8_t *p = w.bytes + head;
	struct tally_raftwire_piece pieces[64];
	assert_true(tally_raftwire_piece_count(m) <= 64);
	tally_raftwire_pieces(m, pieces);
	for (unsigned i = 0; i < tally_raftwire_piece_count(m); i++) {
		memcpy(p, pieces[i].base, pieces[i].len);
		p += pieces[i].len;
	}
	assert_true(p == w.bytes + w.len);
	return w;
}

/* Reads a wire back as tlsnet.c does: the prefix, the header, a payload buffer of at
 * least 8 bytes from raft_malloc for the types that have one. Returns decode's answer. */
static const char *read_back(const uint8_t *bytes, size_t len, struct raft_message *out)
{
	struct tally_raftwire_sizes s;
	assert_true(len >= TALLY_RAFTWIRE_PREFIX_BYTES);
	const char *why = tally_raftwire_prefix(bytes, &s);
	if (why != NULL)
		return why;
	assert_int_equal(len, TALLY_RAFTWIRE_PREFIX_BYTES + s.header_bytes + s.payload_bytes);
	void *payload = NULL;
	if (s.type == RAFT_IO_APPEND_ENTRIES || s.type == RAFT_IO_INSTALL_SNAPSHOT) {
		payload = raft_malloc(s.payload_bytes > 8 ? (size_t)s.payload_bytes : 8);
		assert_non_null(payload);
		memcpy(payload, bytes + TALLY_RAFTWIRE_PREFIX_BYTES + s.header_bytes, (size_t)s.payload_bytes);
	}
	why = tally_raftwire_decode(&s, bytes + TALLY_RAFTWIRE_PREFIX_BYTES, payload, out);
	if (why != NULL)
		raft_free(payload); /* refused: still the caller's */
	return why;
}

static void test_the_fixed_size_messages_read_back_as_written(void **state)
{
	(void)state;
	struct raft_message m[4];
	memset(m, 0, sizeof(m));
	m[0].type = RAFT_IO_REQUEST_VOTE;
	m[0].request_vote = (struct raft_request_vote){7, 3, 1000, 6, true, false};
	m[1].type = RAFT_IO_REQUEST_VOTE_RESULT;
	m[1].request_vote_result = (struct raft_request_vote_result){8, true, raft_tribool_false};
	m[2].type = RAFT_IO_APPEND_ENTRIES_RESULT;
	m[2].append_entries_result = (struct raft_append_entries_result){9, 41, UINT64_MAX};
	m[3].type = RAFT_IO_TIMEOUT_NOW;
	m[3].timeout_now = (struct raft_timeout_now){10, 99, 9};
	for (int i = 0; i < 4; i++) {
		struct wire w = wire_of(&m[i]);
		struct raft_message got;
		assert_null(read_back(w.bytes, w.len, &got));
		assert_int_equal(got.type, m[i].type);
		/* the union's bytes, past the type-specific fields' padding, are equal */
		switch (m[i].type) {
		case RAFT_IO_REQUEST_VOTE:
			assert_int_equal(got.request_vote.term, 7);
			assert_int_equal(got.request_vote.candidate_id, 3);
			assert_int_equal(got.request_vote.last_log_index, 1000);
			assert_int_equal(got.request_vote.last_log_term, 6);
			assert_true(got.request_vote.disrupt_leader);
			assert_false(got.request_vote.pre_vote);
			break;
		case RAFT_IO_REQUEST_VOTE_RESULT:
			assert_int_equal(got.request_vote_result.term, 8);
			assert_true(got.request_vote_result.vote_granted);
			assert_int_equal(got.request_vote_result.pre_vote, raft_tribool_false);
			break;
		case RAFT_IO_APPEND_ENTRIES_RESULT:
			assert_int_equal(got.append_entries_result.term, 9);
			assert_int_equal(got.append_entries_result.rejected, 41);
			assert_true(got.append_entries_result.last_log_index == UINT64_MAX);
			break;
		default:
			assert_int_equal(got.timeout_now.term, 10);
			assert_int_equal(got.timeout_now.last_log_index, 99);
			assert_int_equal(got.timeout_now.last_log_term, 9);
		}
		free(w.bytes);
	}
}

/* Entries of every length 0..19 (every padding), each read back 8-aligned inside one
 * batch that raft frees with the entries. */
static void test_append_entries_read_back_aligned_in_one_batch(void **state)
{
	(void)state;
	enum { N = 20 };
	struct raft_entry entries[N];
	uint8_t data[N][N];
	for (unsigned i = 0; i < N; i++) {
		for (unsigned j = 0; j < i; j++)
			data[i][j] = (uint8_t)(i * 31 + j);
		entries[i] = (struct raft_entry){.term = 100 + i,
						 .type = i % 3 == 0 ? RAFT_COMMAND : i % 3 == 1 ? RAFT_BARRIER : RAFT_CHANGE,
						 .buf = {data[i], i}};
	}
	struct raft_message m = {.type = RAFT_IO_APPEND_ENTRIES};
	m.append_entries = (struct raft_append_entries){5, 17, 4, 16, entries, N};
	struct wire w = wire_of(&m);
	struct raft_message got;
	assert_null(read_back(w.bytes, w.len, &got));
	const struct raft_append_entries *a = &got.append_entries;
	assert_int_equal(a->term, 5);
	assert_int_equal(a->prev_log_index, 17);
	assert_int_equal(a->prev_log_term, 4);
	assert_int_equal(a->leader_commit, 16);
	assert_int_equal(a->n_entries, N);
	for (unsigned i = 0; i < N; i++) {
		assert_int_equal(a->entries[i].term, 100 + i);
		assert_int_equal(a->entries[i].type, entries[i].type);
		assert_int_equal(a->entries[i].buf.len, i);
		assert_memory_equal(a->entries[i].buf.base, data[i], i);
		assert_int_equal((uintptr_t)a->entries[i].buf.base % 8, 0);
		assert_ptr_equal(a->entries[i].batch, a->entries[0].batch);
	}
	tally_raftwire_release(&got);
	free(w.bytes);

	/* a heartbeat: no entries, the payload buffer freed by decode itself */
	m.append_entries.n_entries = 0;
	w = wire_of(&m);
	assert_int_equal(w.len, TALLY_RAFTWIRE_PREFIX_BYTES + 40);
	assert_null(read_back(w.bytes, w.len, &got));
	assert_int_equal(got.append_entries.n_entries, 0);
	assert_null(got.append_entries.entries);
	free(w.bytes);
}

static void test_install_snapshot_reads_back_with_its_configuration(void **state)
{
	(void)state;
	struct raft_message m = {.type = RAFT_IO_INSTALL_SNAPSHOT};
	struct raft_install_snapshot *is = &m.install_snapshot;
	raft_configuration_init(&is->conf);
	assert_int_equal(raft_configuration_add(&is->conf, 1, "127.0.0.1:9001|127.0.0.1:9101", RAFT_VOTER), 0);
	assert_int_equal(raft_configuration_add(&is->conf, 2, "h:1", RAFT_STANDBY), 0);
	assert_int_equal(raft_configuration_add(&is->conf, 77, "12345678", RAFT_SPARE), 0);
	uint8_t data[1001];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 7);
	is->term = 6, is->last_index = 5000, is->last_term = 5, is->conf_index = 12;
	is->data = (struct raft_buffer){data, sizeof(data)};
	struct wire w = wire_of(&m);
	struct raft_message got;
	assert_null(read_back(w.bytes, w.len, &got));
	const struct raft_install_snapshot *g = &got.install_snapshot;
	assert_int_equal(g->term, 6);
	assert_int_equal(g->last_index, 5000);
	assert_int_equal(g->last_term, 5);
	assert_int_equal(g->conf_index, 12);
	assert_int_equal(g->data.len, sizeof(data));
	assert_memory_equal(g->data.base, data, sizeof(data));
	assert_int_equal(g->conf.n, 3);
	for (unsigned i = 0; i < 3; i++) {
		assert_int_equal(g->conf.servers[i].id, is->conf.servers[i].id);
		assert_int_equal(g->conf.servers[i].role, is->conf.servers[i].role);
		assert_string_equal(g->conf.servers[i].address, is->conf.servers[i].address);
	}
	tally_raftwire_release(&got);
	raft_configuration_close(&is->conf);
	free(w.bytes);
}

/* A message's bytes with one u64 field (counted from the header's start) replaced. */
static struct wire with_field(const struct raft_message *m, size_t field, uint64_t v)
{
	struct wire w = wire_of(m);
	uint8_t *p = w.bytes + TALLY_RAFTWIRE_PREFIX_BYTES + 8 * field;
	assert_true(p + 8 <= w.bytes + w.len);
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
	return w;
}

static void expect_refused(struct wire w, const char *needle)
{
	struct raft_message got;
	const char *why = read_back(w.bytes, w.len, &got);
	assert_non_null(why);
	if (strstr(why, needle) == NULL)
		fail_msg("refused for \"%s\", expected \"%s\"", why, needle);
	free(w.bytes);
}

static void test_malformed_headers_are_refused_with_nothing_allocated(void **state)
{
	(void)state;
	uint8_t d[16] = {1, 2, 3};
	struct raft_entry e = {.term = 3, .type = RAFT_COMMAND, .buf = {d, sizeof(d)}};
	struct raft_message ae = {.type = RAFT_IO_APPEND_ENTRIES};
	ae.append_entries = (struct raft_append_entries){3, 1, 1, 1, &e, 1};
	expect_refused(with_field(&ae, 4, 2), "entry count");      /* n_entries */
	expect_refused(with_field(&ae, 6, 9), "unknown entry type"); /* entry type */
	expect_refused(with_field(&ae, 7, 8), "entries do not match");
	expect_refused(with_field(&ae, 7, UINT64_MAX), "entries do not match");

	/* an entry of 3 bytes: its 5 bytes of padding must be zeros */
	e.buf.len = 3;
	struct wire w = wire_of(&ae);
	w.bytes[w.len - 1] = 1;
	expect_refused(w, "padding");

	struct raft_message rv = {.type = RAFT_IO_REQUEST_VOTE};
	expect_refused(with_field(&rv, 4, 4), "unknown flags");
	struct raft_message rvr = {.type = RAFT_IO_REQUEST_VOTE_RESULT};
	expect_refused(with_field(&rvr, 1, 2), "out of range");
	expect_refused(with_field(&rvr, 2, 3), "out of range");

	struct raft_message is = {.type = RAFT_IO_INSTALL_SNAPSHOT};
	raft_configuration_init(&is.install_snapshot.conf);
	assert_int_equal(raft_configuration_add(&is.install_snapshot.conf, 1, "a:1", RAFT_VOTER), 0);
	assert_int_equal(raft_configuration_add(&is.install_snapshot.conf, 2, "b:2", RAFT_VOTER), 0);
	is.install_snapshot.data = (struct raft_buffer){d, sizeof(d)};
	/* fields: 4 data bytes, 5 servers, then per server id, role, address length, and
	 * the address padded to 8 (here one field each: "a:1" at 9, "b:2" at 13) */
	expect_refused(with_field(&is, 4, 15), "data size");
	expect_refused(with_field(&is, 5, 0), "without servers");
	expect_refused(with_field(&is, 5, 65), "too many");
	expect_refused(with_field(&is, 5, 3), "cut short");
	expect_refused(with_field(&is, 5, 1), "bytes after the configuration");
	expect_refused(with_field(&is, 6, 0), "malformed");   /* id 0 */
	expect_refused(with_field(&is, 7, 4), "malformed");   /* no such role */
	expect_refused(with_field(&is, 8, 0), "empty");
	expect_refused(with_field(&is, 8, 256), "too long");
	expect_refused(with_field(&is, 8, 41), "cut short");
	expect_refused(with_field(&is, 9, 1), "malformed");   /* a NUL inside the address */
	expect_refused(with_field(&is, 10, 1), "repeated");   /* server 2 takes id 1 */
	expect_refused(with_field(&is, 9, 0x0100000000313a61ULL), "malformed"); /* "a:1", padding 1 */
	raft_configuration_close(&is.install_snapshot.conf);
}

static void put_prefix(uint8_t *p, uint32_t type, uint32_t header, uint64_t payload)
{
	for (int i = 0; i < 4; i++) {
		p[i] = (uint8_t)(type >> (8 * i));
		p[4 + i] = (uint8_t)(header >> (8 * i));
	}
	for (int i = 0; i < 8; i++)
		p[8 + i] = (uint8_t)(payload >> (8 * i));
}

static void test_malformed_prefixes_are_refused(void **state)
{
	(void)state;
	static const struct {
		uint32_t type, header;
		uint64_t payload;
		const char *why;
	} bad[] = {
		{0, 24, 0, "unknown"},
		{7, 24, 0, "unknown"},
		{UINT32_MAX, 24, 0, "unknown"},
		{RAFT_IO_TIMEOUT_NOW, 32, 0, "wrong size"},
		{RAFT_IO_TIMEOUT_NOW, 24, 8, "wrong size"},
		{RAFT_IO_REQUEST_VOTE, 24, 0, "wrong size"},
		{RAFT_IO_APPEND_ENTRIES, 32, 0, "wrong size"},
		{RAFT_IO_APPEND_ENTRIES, 48, 0, "wrong size"},
		{RAFT_IO_APPEND_ENTRIES, 41, 0, "misaligned"},
		{RAFT_IO_APPEND_ENTRIES, TALLY_RAFTWIRE_HEADER_MAX + 8, 0, "too large"},
		{RAFT_IO_APPEND_ENTRIES, 40, TALLY_RAFTWIRE_PAYLOAD_MAX + 1, "too large"},
		{RAFT_IO_INSTALL_SNAPSHOT, 48, TALLY_RAFTWIRE_SNAPSHOT_MAX + 1, "too large"},
		{RAFT_IO_INSTALL_SNAPSHOT, 40, 0, "too short"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint8_t p[TALLY_RAFTWIRE_PREFIX_BYTES];
		struct tally_raftwire_sizes s;
		put_prefix(p, bad[i].type, bad[i].header, bad[i].payload);
		const char *why = tally_raftwire_prefix(p, &s);
		if (why == NULL || strstr(why, bad[i].why) == NULL)
			fail_msg("prefix %zu: \"%s\", expected \"%s\"", i, why ? why : "(accepted)", bad[i].why);
	}
	uint8_t p[TALLY_RAFTWIRE_PREFIX_BYTES];
	struct tally_raftwire_sizes s;
	put_prefix(p, RAFT_IO_APPEND_ENTRIES, 40 + 24 * 3, 1234);
	assert_null(tally_raftwire_prefix(p, &s));
	assert_int_equal(s.type, RAFT_IO_APPEND_ENTRIES);
	assert_int_equal(s.header_bytes, 112);
	assert_int_equal(s.payload_bytes, 1234);
	/* A snapshot may be larger than any other message: it is spooled to a file. */
	put_prefix(p, RAFT_IO_INSTALL_SNAPSHOT, 48, TALLY_RAFTWIRE_SNAPSHOT_MAX);
	assert_null(tally_raftwire_prefix(p, &s));
	assert_true(s.payload_bytes > TALLY_RAFTWIRE_PAYLOAD_MAX);
}

/* A Have: the segments a node holds, read back as written; malformed ones refused. */
static void test_a_have_reads_back_and_a_malformed_one_is_refused(void **state)
{
	(void)state;
	struct tally_segment_held held[3];
	for (int i = 0; i < 3; i++) {
		held[i].first = 1 + 100 * (uint64_t)i;
		held[i].len = 65536 + (uint64_t)i;
		memset(held[i].sha, 0x11 * (i + 1), sizeof(held[i].sha));
	}
	size_t len = tally_raftwire_have_bytes(3);
	assert_int_equal(len, 16 + 16 + 3 * 48);
	uint8_t *msg = malloc(len);
	assert_non_null(msg);
	tally_raftwire_have_write(TALLY_RAFTWIRE_HAVE_DECLINED, held, 3, msg);
	struct tally_raftwire_sizes s;
	assert_null(tally_raftwire_prefix(msg, &s));
	assert_int_equal(s.type, TALLY_RAFTWIRE_HAVE);
	const uint8_t *header = msg + TALLY_RAFTWIRE_PREFIX_BYTES;
	uint64_t flags;
	struct tally_segment_held *got;
	size_t n;
	assert_null(tally_raftwire_have_decode(&s, header, header + s.header_bytes, &flags, &got, &n));
	assert_int_equal(flags, TALLY_RAFTWIRE_HAVE_DECLINED);
	assert_int_equal(n, 3);
	assert_memory_equal(got, held, sizeof(held));
	free(got);
	/* not a raft message: raft's decoder refuses it */
	struct raft_message m;
	assert_non_null(tally_raftwire_decode(&s, header, NULL, &m));
	/* first seqs that do not increase, unknown flags, a count not the payload's */
	uint8_t *entries = msg + TALLY_RAFTWIRE_PREFIX_BYTES + 16;
	memcpy(entries + 48, entries, 8); /* the second's first seq = the first's */
	assert_non_null(strstr(tally_raftwire_have_decode(&s, header, entries, &flags, &got, &n),
			       "increasing"));
	assert_null(got);
	tally_raftwire_have_write(4, held, 3, msg);
	assert_non_null(strstr(tally_raftwire_have_decode(&s, header, entries, &flags, &got, &n),
			       "flags"));
	tally_raftwire_have_write(0, held, 3, msg);
	msg[TALLY_RAFTWIRE_PREFIX_BYTES + 8] = 2; /* count 2, payload of 3 */
	assert_non_null(strstr(tally_raftwire_have_decode(&s, header, entries, &flags, &got, &n),
			       "count"));
	/* prefixes: a header not of two fields, a payload not whole segments, too many */
	uint8_t p[TALLY_RAFTWIRE_PREFIX_BYTES];
	put_prefix(p, TALLY_RAFTWIRE_HAVE, 24, 48);
	assert_non_null(tally_raftwire_prefix(p, &s));
	put_prefix(p, TALLY_RAFTWIRE_HAVE, 16, 47);
	assert_non_null(tally_raftwire_prefix(p, &s));
	put_prefix(p, TALLY_RAFTWIRE_HAVE, 16, 48ull * (TALLY_LEDGER_HELD_MAX + 1));
	assert_non_null(tally_raftwire_prefix(p, &s));
	put_prefix(p, TALLY_RAFTWIRE_HAVE, 16, 48ull * TALLY_LEDGER_HELD_MAX);
	assert_null(tally_raftwire_prefix(p, &s));
	put_prefix(p, TALLY_RAFTWIRE_HAVE, 16, 0); /* a node that holds none */
	assert_null(tally_raftwire_prefix(p, &s));
	free(msg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_the_fixed_size_messages_read_back_as_written),
		cmocka_unit_test(test_append_entries_read_back_aligned_in_one_batch),
		cmocka_unit_test(test_install_snapshot_reads_back_with_its_configuration),
		cmocka_unit_test(test_malformed_headers_are_refused_with_nothing_allocated),
		cmocka_unit_test(test_malformed_prefixes_are_refused),
		cmocka_unit_test(test_a_have_reads_back_and_a_malformed_one_is_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
