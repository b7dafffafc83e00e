/*
 * Fuzz target: raft messages as a peer sends them over the TLS transport
 * (consensus/raftwire.c). The input is a run of messages, each a prefix, a header and
 * a payload as the prefix says (a message the input cannot hold ends the run). Every
 * message is refused or decodes; one that decodes encodes back to exactly its input
 * bytes, and frees as raft would free it. A Have (the transport's own) likewise.
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "consensus/raftwire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The message's encoding, compared with the bytes it was decoded from. */
static void check_round_trip(const struct raft_message *m, const uint8_t *in, size_t len)
{
	size_t head = tally_raftwire_head_bytes(m);
	uint64_t payload = tally_raftwire_payload_bytes(m);
	assert(head + payload == len);
	uint8_t *out = malloc(len);
	assert(out != NULL);
	tally_raftwire_head_write(m, out);
	uint8_t *p = out + head;
	unsigned n = tally_raftwire_piece_count(m);
	struct tally_raftwire_piece *pieces = malloc((n + 1) * sizeof(*pieces));
	assert(pieces != NULL);
	tally_raftwire_pieces(m, pieces);
	for (unsigned i = 0; i < n; i++) {
		memcpy(p, pieces[i].base, pieces[i].len);
		p += pieces[i].len;
	}
	free(pieces);
	assert(p == out + len);
	assert(memcmp(out, in, len) == 0);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t at = 0;
	while (size - at >= TALLY_RAFTWIRE_PREFIX_BYTES) {
		struct tally_raftwire_sizes s;
		if (tally_raftwire_prefix(data + at, &s) != NULL)
			break;
		size_t rest = size - at - TALLY_RAFTWIRE_PREFIX_BYTES;
		if (s.header_bytes > rest || s.payload_bytes > rest - s.header_bytes)
			break;
		const uint8_t *header = data + at + TALLY_RAFTWIRE_PREFIX_BYTES;
		size_t len = TALLY_RAFTWIRE_PREFIX_BYTES + s.header_bytes + (size_t)s.payload_bytes;
		if (s.type == TALLY_RAFTWIRE_HAVE) {
			uint64_t flags;
			struct tally_segment_held *held;
			size_t n;
			if (tally_raftwire_have_decode(&s, header, header + s.header_bytes, &flags, &held,
						       &n) != NULL)
				break;
			assert(tally_raftwire_have_bytes(n) == len);
			uint8_t *out = malloc(len);
			assert(out != NULL);
			tally_raftwire_have_write(flags, held, n, out);
			assert(memcmp(out, data + at, len) == 0);
			free(out);
			free(held);
			at += len;
			continue;
		}
		void *payload = NULL;
		if (s.type == RAFT_IO_APPEND_ENTRIES || s.type == RAFT_IO_INSTALL_SNAPSHOT) {
			payload = raft_malloc(s.payload_bytes > 8 ? (size_t)s.payload_bytes : 8);
			assert(payload != NULL);
			memcpy(payload, header + s.header_bytes, (size_t)s.payload_bytes);
		}
		struct raft_message m;
		if (tally_raftwire_decode(&s, header, payload, &m) != NULL) {
			raft_free(payload);
			break;
		}
		check_round_trip(&m, data + at, len);
		tally_raftwire_release(&m);
		at += len;
	}
	return 0;
}
