/*
 * consensus/raftwire — raft's messages as Tally's TLS transport carries them.
 *
 * Over TLS the node hands raft's messages to the TLS session itself (tlsnet.c)
 * instead of letting raft_uv write them to a stream, so they are encoded here, in a
 * format of this project (both ends run this code). All integers are little endian.
 *
 *   prefix   16 bytes: type (u32, RAFT_IO_*), header bytes (u32), payload bytes (u64)
 *   header   u64 fields, by type:
 *     AppendEntries         term, prev_log_index, prev_log_term, leader_commit,
 *                           n_entries, then per entry: term, type, data bytes
 *     AppendEntriesResult   term, rejected, last_log_index
 *     RequestVote           term, candidate_id, last_log_index, last_log_term,
 *                           flags (1 disrupt_leader, 2 pre_vote)
 *     RequestVoteResult     term, vote_granted, pre_vote (raft_tribool)
 *     InstallSnapshot       term, last_index, last_term, conf_index, data bytes,
 *                           then the configuration: n, and per server id, role,
 *                           address bytes, the address padded with zeros to 8
 *     TimeoutNow            term, last_log_index, last_log_term
 *   payload  AppendEntries: each entry's data padded with zeros to 8 bytes (so the
 *            entries raft gets are 8-aligned); InstallSnapshot: the snapshot's data;
 *            nothing for the others.
 *
 * One message of this transport's own shares the format, on connections whose TLS
 * handshake agreed on it (rpc/tls.h, TALLY_TLS_ALPN_RAFT), sent only by the side that
 * connected (the follower, to the node it answers):
 *
 *     Have (TALLY_RAFTWIRE_HAVE)   header: flags (TALLY_RAFTWIRE_HAVE_DECLINED),
 *                                  count; payload: per segment its first seq, length
 *                                  and SHA-256 (48 bytes), first seqs increasing
 *
 * the closed journal segments the sender holds as links (ledger.h,
 * tally_segment_held), so that an InstallSnapshot to it need not carry them.
 *
 * Padding must be zeros, so a message decodes only from the bytes its encoding writes.
 *
 * A decoded message is owned as raft_uv would hand it over: an AppendEntries' entries
 * array is raft_malloc'd and every entry's batch is the payload buffer; an
 * InstallSnapshot's data is the payload buffer and its configuration is raft's.
 *
 * Limits (a peer past them is refused, see tlsnet.c):
 *   TALLY_RAFTWIRE_ENTRIES_MAX    entries in one AppendEntries
 *   TALLY_RAFTWIRE_SERVERS_MAX    servers in a snapshot's configuration
 *   TALLY_RAFTWIRE_PAYLOAD_MAX    payload bytes of one message other than a snapshot
 *   TALLY_RAFTWIRE_SNAPSHOT_MAX   payload bytes of an InstallSnapshot: as large as a
 *                                 node takes one (NODE_SNAPSHOT_BYTES_MAX); it goes
 *                                 to a file as it arrives, not to memory
 *   TALLY_LEDGER_HELD_MAX         segments in one Have (3 MiB)
 */
#ifndef TALLY_CONSENSUS_RAFTWIRE_H
#define TALLY_CONSENSUS_RAFTWIRE_H

#include <stddef.h>
#include <stdint.h>
#include <raft.h>

#include "ledger/ledger.h"

#define TALLY_RAFTWIRE_PREFIX_BYTES 16
#define TALLY_RAFTWIRE_ENTRIES_MAX (1u << 20)
#define TALLY_RAFTWIRE_SERVERS_MAX 64u
#define TALLY_RAFTWIRE_ADDRESS_MAX 255u
#define TALLY_RAFTWIRE_PAYLOAD_MAX ((uint64_t)1 << 33)
#define TALLY_RAFTWIRE_SNAPSHOT_MAX ((uint64_t)1 << 36)
#define TALLY_RAFTWIRE_HEADER_MAX                                                                 \
	(40u + 24u * TALLY_RAFTWIRE_ENTRIES_MAX) /* the largest: an AppendEntries' */

#define TALLY_RAFTWIRE_HAVE 100u         /* the type of a Have: no RAFT_IO_* */
#define TALLY_RAFTWIRE_HAVE_DECLINED 1u  /* the sender declined an InstallSnapshot that
					  * left out a segment it no longer holds */
#define TALLY_RAFTWIRE_HAVE_SEGMENT 48u  /* payload bytes per segment */

/* What a prefix announces. */
struct tally_raftwire_sizes {
	unsigned type;
	uint32_t header_bytes;
	uint64_t payload_bytes;
};

/* Bytes of m's prefix and header. */
size_t tally_raftwire_head_bytes(const struct raft_message *m);

/* Writes m's prefix and header: tally_raftwire_head_bytes(m) bytes. */
void tally_raftwire_head_write(const struct raft_message *m, uint8_t *out);

/* Bytes of m's payload. */
uint64_t tally_raftwire_payload_bytes(const struct raft_message *m);

/* One piece of a payload: an entry's data, its padding, or the snapshot. */
struct tally_raftwire_piece {
	const uint8_t *base;
	size_t len;
};

/* How many pieces m's payload is: two per AppendEntries entry (its data, then its
 * padding), one for an InstallSnapshot, none for the others. */
unsigned tally_raftwire_piece_count(const struct raft_message *m);

/* m's payload pieces in order, tally_raftwire_piece_count(m) of them, pointing into m
 * (padding points at zeros). */
void tally_raftwire_pieces(const struct raft_message *m, struct tally_raftwire_piece *out);

/* Zero bytes after an entry of len bytes in the payload (0..7). */
static inline size_t tally_raftwire_pad(size_t len)
{
	return (8 - (len & 7)) & 7;
}

/* Reads a prefix. Returns NULL, or why it is refused (unknown type, a header of the
 * wrong size for its type, a payload where the type has none, a limit passed). */
const char *tally_raftwire_prefix(const uint8_t prefix[TALLY_RAFTWIRE_PREFIX_BYTES],
				  struct tally_raftwire_sizes *out);

/* Decodes a message whose prefix gave `s`: its header and its payload, a buffer of
 * s->payload_bytes (at least 8) bytes from raft_malloc that the message takes when this
 * succeeds. Fills *m except server_id and server_address. Returns NULL, or why it is
 * refused; then nothing is allocated and the payload is still the caller's. */
const char *tally_raftwire_decode(const struct tally_raftwire_sizes *s, const uint8_t *header,
				  void *payload, struct raft_message *m);

/* Bytes of a whole Have naming n segments. */
size_t tally_raftwire_have_bytes(size_t n);

/* Writes a whole Have: tally_raftwire_have_bytes(n) bytes. */
void tally_raftwire_have_write(uint64_t flags, const struct tally_segment_held *held, size_t n,
			       uint8_t *out);

/* Decodes a Have whose prefix gave `s` into *flags and a new array *held of *n segments
 * (free it; NULL when n is 0). Returns NULL, or why it is refused (a count that does
 * not match the payload, first seqs not increasing, unknown flags). */
const char *tally_raftwire_have_decode(const struct tally_raftwire_sizes *s, const uint8_t *header,
				       const uint8_t *payload, uint64_t *flags,
				       struct tally_segment_held **held, size_t *n);

/* Frees what a decoded message owns (for a message raft never got). */
void tally_raftwire_release(struct raft_message *m);

#endif /* TALLY_CONSENSUS_RAFTWIRE_H */
