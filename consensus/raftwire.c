/*
 * consensus/raftwire — raft's messages in Tally's TLS transport (raftwire.h).
 */
#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "consensus/raftwire.h"

#define AE_FIXED 5u  /* AppendEntries' u64 fields before its entries */
#define AE_ENTRY 3u  /* u64 fields per entry */
#define IS_FIXED 6u  /* InstallSnapshot's u64 fields before the servers (n included) */
#define SERVER_FIXED 3u

static void put64(uint8_t **p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		(*p)[i] = (uint8_t)(v >> (8 * i));
	*p += 8;
}

static uint64_t get64(const uint8_t **p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | (*p)[i];
	*p += 8;
	return v;
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Header bytes of a message of a fixed-size type; 0 for the others. */
static size_t fixed_header(unsigned type)
{
	switch (type) {
	case RAFT_IO_APPEND_ENTRIES_RESULT:
	case RAFT_IO_REQUEST_VOTE_RESULT:
	case RAFT_IO_TIMEOUT_NOW:
		return 3 * 8;
	case RAFT_IO_REQUEST_VOTE:
		return 5 * 8;
	case TALLY_RAFTWIRE_HAVE:
		return 2 * 8;
	default:
		return 0;
	}
}

static size_t conf_bytes(const struct raft_configuration *c)
{
	size_t n = 0;
	for (unsigned i = 0; i < c->n; i++) {
		size_t len = strlen(c->servers[i].address);
		n += SERVER_FIXED * 8 + len + tally_raftwire_pad(len);
	}
	return n;
}

static size_t header_bytes(const struct raft_message *m)
{
	switch (m->type) {
	case RAFT_IO_APPEND_ENTRIES:
		return (AE_FIXED + AE_ENTRY * (size_t)m->append_entries.n_entries) * 8;
	case RAFT_IO_INSTALL_SNAPSHOT:
		return IS_FIXED * 8 + conf_bytes(&m->install_snapshot.conf);
	default:
		return fixed_header(m->type);
	}
}

size_t tally_raftwire_head_bytes(const struct raft_message *m)
{
	assert(m != NULL && m->type >= RAFT_IO_APPEND_ENTRIES && m->type <= RAFT_IO_TIMEOUT_NOW);
	return TALLY_RAFTWIRE_PREFIX_BYTES + header_bytes(m);
}

uint64_t tally_raftwire_payload_bytes(const struct raft_message *m)
{
	uint64_t n = 0;
	if (m->type == RAFT_IO_INSTALL_SNAPSHOT)
		return m->install_snapshot.data.len;
	if (m->type == RAFT_IO_APPEND_ENTRIES)
		for (unsigned i = 0; i < m->append_entries.n_entries; i++) {
			size_t len = m->append_entries.entries[i].buf.len;
			n += len + tally_raftwire_pad(len);
		}
	return n;
}

static const uint8_t raftwire_zeros[8];

unsigned tally_raftwire_piece_count(const struct raft_message *m)
{
	if (m->type == RAFT_IO_APPEND_ENTRIES)
		return 2 * m->append_entries.n_entries;
	return m->type == RAFT_IO_INSTALL_SNAPSHOT ? 1 : 0;
}

void tally_raftwire_pieces(const struct raft_message *m, struct tally_raftwire_piece *out)
{
	assert(m != NULL && (out != NULL || tally_raftwire_piece_count(m) == 0));
	if (m->type == RAFT_IO_INSTALL_SNAPSHOT) {
		out[0] = (struct tally_raftwire_piece){m->install_snapshot.data.base, m->install_snapshot.data.len};
		return;
	}
	if (m->type != RAFT_IO_APPEND_ENTRIES)
		return;
	for (unsigned i = 0; i < m->append_entries.n_entries; i++) {
		const struct raft_buffer *b = &m->append_entries.entries[i].buf;
		out[2 * i] = (struct tally_raftwire_piece){b->base, b->len};
		out[2 * i + 1] = (struct tally_raftwire_piece){raftwire_zeros, tally_raftwire_pad(b->len)};
	}
}

static void write_conf(const struct raft_configuration *c, uint8_t **p)
{
	put64(p, c->n);
	for (unsigned i = 0; i < c->n; i++) {
		size_t len = strlen(c->servers[i].address);
		put64(p, c->servers[i].id);
		put64(p, (uint64_t)c->servers[i].role);
		put64(p, len);
		memcpy(*p, c->servers[i].address, len);
		memset(*p + len, 0, tally_raftwire_pad(len));
		*p += len + tally_raftwire_pad(len);
	}
}

static void write_fields(const struct raft_message *m, uint8_t **p)
{
	switch (m->type) {
	case RAFT_IO_APPEND_ENTRIES: {
		const struct raft_append_entries *a = &m->append_entries;
		put64(p, a->term), put64(p, a->prev_log_index), put64(p, a->prev_log_term);
		put64(p, a->leader_commit), put64(p, a->n_entries);
		for (unsigned i = 0; i < a->n_entries; i++) {
			put64(p, a->entries[i].term), put64(p, (uint64_t)a->entries[i].type);
			put64(p, a->entries[i].buf.len);
		}
		break;
	}
	case RAFT_IO_APPEND_ENTRIES_RESULT: {
		const struct raft_append_entries_result *r = &m->append_entries_result;
		put64(p, r->term), put64(p, r->rejected), put64(p, r->last_log_index);
		break;
	}
	case RAFT_IO_REQUEST_VOTE: {
		const struct raft_request_vote *v = &m->request_vote;
		put64(p, v->term), put64(p, v->candidate_id), put64(p, v->last_log_index);
		put64(p, v->last_log_term);
		put64(p, (v->disrupt_leader ? 1u : 0u) | (v->pre_vote ? 2u : 0u));
		break;
	}
	case RAFT_IO_REQUEST_VOTE_RESULT: {
		const struct raft_request_vote_result *r = &m->request_vote_result;
		put64(p, r->term), put64(p, r->vote_granted), put64(p, (uint64_t)r->pre_vote);
		break;
	}
	case RAFT_IO_INSTALL_SNAPSHOT: {
		const struct raft_install_snapshot *s = &m->install_snapshot;
		put64(p, s->term), put64(p, s->last_index), put64(p, s->last_term);
		put64(p, s->conf_index), put64(p, s->data.len);
		write_conf(&s->conf, p);
		break;
	}
	case RAFT_IO_TIMEOUT_NOW: {
		const struct raft_timeout_now *t = &m->timeout_now;
		put64(p, t->term), put64(p, t->last_log_index), put64(p, t->last_log_term);
		break;
	}
	default:
		assert(0 && "unknown raft message type");
	}
}

void tally_raftwire_head_write(const struct raft_message *m, uint8_t *out)
{
	size_t header = header_bytes(m);
	assert(header <= TALLY_RAFTWIRE_HEADER_MAX);
	put32(out, m->type);
	put32(out + 4, (uint32_t)header);
	uint8_t *p = out + 8;
	put64(&p, tally_raftwire_payload_bytes(m));
	write_fields(m, &p);
	assert((size_t)(p - out) == TALLY_RAFTWIRE_PREFIX_BYTES + header);
}

const char *tally_raftwire_prefix(const uint8_t prefix[TALLY_RAFTWIRE_PREFIX_BYTES],
				  struct tally_raftwire_sizes *out)
{
	assert(prefix != NULL && out != NULL);
	const uint8_t *p = prefix + 8;
	out->type = get32(prefix);
	out->header_bytes = get32(prefix + 4);
	out->payload_bytes = get64(&p);
	if (out->type == TALLY_RAFTWIRE_HAVE)
		return out->header_bytes != fixed_header(out->type) ||
				       out->payload_bytes % TALLY_RAFTWIRE_HAVE_SEGMENT != 0 ||
				       out->payload_bytes / TALLY_RAFTWIRE_HAVE_SEGMENT >
					       TALLY_LEDGER_HELD_MAX
			       ? "Have of the wrong size or too long"
			       : NULL;
	if (out->type < RAFT_IO_APPEND_ENTRIES || out->type > RAFT_IO_TIMEOUT_NOW)
		return "unknown raft message type";
	if (out->header_bytes > TALLY_RAFTWIRE_HEADER_MAX || out->header_bytes % 8 != 0)
		return "raft message header too large or misaligned";
	if (out->payload_bytes > (out->type == RAFT_IO_INSTALL_SNAPSHOT ? TALLY_RAFTWIRE_SNAPSHOT_MAX
									: TALLY_RAFTWIRE_PAYLOAD_MAX))
		return "raft message payload too large";
	size_t fixed = fixed_header(out->type);
	if (fixed != 0 && (out->header_bytes != fixed || out->payload_bytes != 0))
		return "raft message of the wrong size for its type";
	if (out->type == RAFT_IO_APPEND_ENTRIES &&
	    (out->header_bytes < AE_FIXED * 8 || (out->header_bytes - AE_FIXED * 8) % (AE_ENTRY * 8) != 0))
		return "AppendEntries header of the wrong size";
	if (out->type == RAFT_IO_INSTALL_SNAPSHOT && out->header_bytes < IS_FIXED * 8)
		return "InstallSnapshot header too short";
	return NULL;
}

static bool zeros(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != 0)
			return false;
	return true;
}

/* AppendEntries: entries point into the payload, which becomes their batch. */
static const char *decode_append(const struct tally_raftwire_sizes *s, const uint8_t *p,
				 void *payload, struct raft_append_entries *a)
{
	a->term = get64(&p), a->prev_log_index = get64(&p), a->prev_log_term = get64(&p);
	a->leader_commit = get64(&p);
	uint64_t n = get64(&p);
	if (n != (s->header_bytes - AE_FIXED * 8) / (AE_ENTRY * 8) || n > TALLY_RAFTWIRE_ENTRIES_MAX)
		return "AppendEntries: entry count does not match its header";
	const uint8_t *q = p;
	uint64_t total = 0;
	for (uint64_t i = 0; i < n; i++) {
		(void)get64(&q);
		uint64_t type = get64(&q), len = get64(&q);
		if (type != RAFT_COMMAND && type != RAFT_BARRIER && type != RAFT_CHANGE)
			return "AppendEntries: unknown entry type";
		if (len > s->payload_bytes)
			return "AppendEntries: entries do not match the payload";
		total += len + tally_raftwire_pad((size_t)len);
	}
	if (total != s->payload_bytes)
		return "AppendEntries: entries do not match the payload";
	a->n_entries = (unsigned)n;
	a->entries = NULL;
	if (n == 0) {
		raft_free(payload);
		return NULL;
	}
	a->entries = raft_malloc(n * sizeof(*a->entries));
	if (a->entries == NULL)
		return "out of memory";
	uint8_t *at = payload;
	for (unsigned i = 0; i < n; i++) {
		struct raft_entry *e = &a->entries[i];
		e->term = get64(&p);
		e->type = (unsigned short)get64(&p);
		e->buf.len = (size_t)get64(&p);
		e->buf.base = at;
		e->batch = payload;
		at += e->buf.len + tally_raftwire_pad(e->buf.len);
		if (!zeros(at - tally_raftwire_pad(e->buf.len), tally_raftwire_pad(e->buf.len))) {
			raft_free(a->entries);
			a->entries = NULL;
			return "AppendEntries: padding that is not zero";
		}
	}
	return NULL;
}

/* A snapshot's configuration, into raft's (which allocates it). */
static const char *decode_conf(const uint8_t *p, const uint8_t *end, struct raft_configuration *c)
{
	raft_configuration_init(c);
	if (end - p < 8)
		return "InstallSnapshot: configuration cut short";
	uint64_t n = get64(&p);
	if (n == 0 || n > TALLY_RAFTWIRE_SERVERS_MAX)
		return "InstallSnapshot: configuration without servers or with too many";
	for (uint64_t i = 0; i < n; i++) {
		if (end - p < (ptrdiff_t)(SERVER_FIXED * 8))
			return "InstallSnapshot: configuration cut short";
		uint64_t id = get64(&p), role = get64(&p), len = get64(&p);
		if (len == 0 || len > TALLY_RAFTWIRE_ADDRESS_MAX ||
		    (uint64_t)(end - p) < len + tally_raftwire_pad((size_t)len))
			return "InstallSnapshot: a server address is empty, too long or cut short";
		char address[TALLY_RAFTWIRE_ADDRESS_MAX + 1];
		memcpy(address, p, (size_t)len);
		address[len] = '\0';
		p += len + tally_raftwire_pad((size_t)len);
		if (strlen(address) != len || !zeros(p - tally_raftwire_pad((size_t)len), tally_raftwire_pad((size_t)len)) ||
		    id == 0 || role > RAFT_SPARE)
			return "InstallSnapshot: a server of the configuration is malformed";
		if (raft_configuration_add(c, id, address, (int)role) != 0)
			return "InstallSnapshot: a server of the configuration is repeated";
	}
	if (p != end)
		return "InstallSnapshot: bytes after the configuration";
	return NULL;
}

static const char *decode_snapshot(const struct tally_raftwire_sizes *s, const uint8_t *p,
				   void *payload, struct raft_install_snapshot *is)
{
	const uint8_t *end = p + s->header_bytes;
	is->term = get64(&p), is->last_index = get64(&p), is->last_term = get64(&p);
	is->conf_index = get64(&p);
	uint64_t data = get64(&p);
	if (data != s->payload_bytes)
		return "InstallSnapshot: data size does not match the payload";
	const char *why = decode_conf(p, end, &is->conf);
	if (why != NULL) {
		raft_configuration_close(&is->conf);
		return why;
	}
	is->data.base = payload;
	is->data.len = (size_t)data;
	return NULL;
}

const char *tally_raftwire_decode(const struct tally_raftwire_sizes *s, const uint8_t *header,
				  void *payload, struct raft_message *m)
{
	assert(s != NULL && m != NULL && (header != NULL || s->header_bytes == 0));
	const uint8_t *p = header;
	memset(m, 0, sizeof(*m));
	m->type = (unsigned short)s->type;
	switch (s->type) {
	case RAFT_IO_APPEND_ENTRIES:
		return decode_append(s, p, payload, &m->append_entries);
	case RAFT_IO_INSTALL_SNAPSHOT:
		return decode_snapshot(s, p, payload, &m->install_snapshot);
	case RAFT_IO_APPEND_ENTRIES_RESULT:
		m->append_entries_result.term = get64(&p);
		m->append_entries_result.rejected = get64(&p);
		m->append_entries_result.last_log_index = get64(&p);
		return NULL;
	case RAFT_IO_REQUEST_VOTE: {
		struct raft_request_vote *v = &m->request_vote;
		v->term = get64(&p), v->candidate_id = get64(&p), v->last_log_index = get64(&p);
		v->last_log_term = get64(&p);
		uint64_t flags = get64(&p);
		if (flags > 3)
			return "RequestVote: unknown flags";
		v->disrupt_leader = (flags & 1) != 0;
		v->pre_vote = (flags & 2) != 0;
		return NULL;
	}
	case RAFT_IO_REQUEST_VOTE_RESULT: {
		struct raft_request_vote_result *r = &m->request_vote_result;
		r->term = get64(&p);
		uint64_t granted = get64(&p), pre = get64(&p);
		if (granted > 1 || pre > raft_tribool_false)
			return "RequestVoteResult: a flag out of range";
		r->vote_granted = granted == 1;
		r->pre_vote = (raft_tribool)pre;
		return NULL;
	}
	case RAFT_IO_TIMEOUT_NOW:
		m->timeout_now.term = get64(&p);
		m->timeout_now.last_log_index = get64(&p);
		m->timeout_now.last_log_term = get64(&p);
		return NULL;
	default:
		return "unknown raft message type";
	}
}

size_t tally_raftwire_have_bytes(size_t n)
{
	return TALLY_RAFTWIRE_PREFIX_BYTES + fixed_header(TALLY_RAFTWIRE_HAVE) +
	       n * TALLY_RAFTWIRE_HAVE_SEGMENT;
}

void tally_raftwire_have_write(uint64_t flags, const struct tally_segment_held *held, size_t n,
			       uint8_t *out)
{
	assert((held != NULL || n == 0) && n <= TALLY_LEDGER_HELD_MAX && out != NULL);
	put32(out, TALLY_RAFTWIRE_HAVE);
	put32(out + 4, (uint32_t)fixed_header(TALLY_RAFTWIRE_HAVE));
	uint8_t *p = out + 8;
	put64(&p, n * TALLY_RAFTWIRE_HAVE_SEGMENT);
	put64(&p, flags), put64(&p, n);
	for (size_t i = 0; i < n; i++) {
		put64(&p, held[i].first), put64(&p, held[i].len);
		memcpy(p, held[i].sha, sizeof(held[i].sha));
		p += sizeof(held[i].sha);
	}
	assert((size_t)(p - out) == tally_raftwire_have_bytes(n));
}

const char *tally_raftwire_have_decode(const struct tally_raftwire_sizes *s, const uint8_t *header,
				       const uint8_t *payload, uint64_t *flags,
				       struct tally_segment_held **held, size_t *n)
{
	assert(s != NULL && s->type == TALLY_RAFTWIRE_HAVE && header != NULL);
	*held = NULL;
	*n = 0;
	*flags = get64(&header);
	uint64_t count = get64(&header);
	if (count != s->payload_bytes / TALLY_RAFTWIRE_HAVE_SEGMENT)
		return "Have: segment count does not match its payload";
	if ((*flags & ~(uint64_t)TALLY_RAFTWIRE_HAVE_DECLINED) != 0)
		return "Have: unknown flags";
	struct tally_segment_held *h = count > 0 ? malloc((size_t)count * sizeof(*h)) : NULL;
	if (count > 0 && h == NULL)
		return "Have: out of memory";
	const uint8_t *p = payload;
	for (uint64_t i = 0; i < count; i++) {
		h[i].first = get64(&p), h[i].len = get64(&p);
		memcpy(h[i].sha, p, sizeof(h[i].sha));
		p += sizeof(h[i].sha);
		if (h[i].first == 0 || (i > 0 && h[i].first <= h[i - 1].first)) {
			free(h);
			return "Have: first seqs not increasing";
		}
	}
	*held = h;
	*n = (size_t)count;
	return NULL;
}

void tally_raftwire_release(struct raft_message *m)
{
	assert(m != NULL);
	if (m->type == RAFT_IO_APPEND_ENTRIES && m->append_entries.n_entries > 0) {
		raft_free(m->append_entries.entries[0].batch);
		raft_free(m->append_entries.entries);
	} else if (m->type == RAFT_IO_INSTALL_SNAPSHOT) {
		raft_free(m->install_snapshot.data.base);
		raft_configuration_close(&m->install_snapshot.conf);
	}
	memset(m, 0, sizeof(*m));
}
