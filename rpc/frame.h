/*
 * rpc/frame — the wire format: a 4-byte big-endian length, then that many bytes of a
 * protobuf message (tally.v1.Request from clients, tally.v1.Response from servers).
 */
#ifndef TALLY_RPC_FRAME_H
#define TALLY_RPC_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TALLY_FRAME_HEADER_BYTES 4
#define TALLY_FRAME_BYTES_DEFAULT (4u << 20) /* 4 MiB, the default limit */

/* Reassembles frames from a byte stream. Feed it whatever arrived; take complete
 * frames out. Buffer memory is owned by the reader and grows up to the limit: a
 * caller that drains next() until it returns 0 after every feed holds at most one
 * partial frame (max_bytes + 4) plus the bytes of one feed, because next() refuses an
 * oversize announced length as soon as the 4 header bytes are in. */
struct tally_frame_reader {
	uint8_t *buf;
	size_t len;          /* bytes held: buf[start, len) is not yet handed out */
	size_t cap;
	size_t max_bytes;    /* largest frame body accepted */
	size_t start;        /* first byte after the frames handed out by next() */
};

/* An empty reader for frames of at most max_bytes (1..UINT32_MAX). No memory yet. */
void tally_frame_reader_init(struct tally_frame_reader *r, size_t max_bytes);
/* Returns the buffer; the reader may be initialised again. */
void tally_frame_reader_free(struct tally_frame_reader *r);
/* Forgets every buffered byte (a new connection); keeps the memory. */
void tally_frame_reader_reset(struct tally_frame_reader *r);

/* Appends n bytes. Returns 0, or TALLY_ENOMEM. Invalidates the last frame from next. */
int tally_frame_reader_feed(struct tally_frame_reader *r, const void *data, size_t n);

/* The next complete frame: returns 1 and sets *body and *len (valid until the next
 * feed, reset or free), 0 when more bytes are needed, or TALLY_ERANGE (negative:
 * -TALLY_ERANGE) when the announced length exceeds max_bytes — the stream cannot be
 * resynchronised and the connection should be closed after an error reply. */
int tally_frame_reader_next(struct tally_frame_reader *r, const uint8_t **body, size_t *len);

/* Whether next() would return without needing more bytes: a whole frame is held, or
 * the announced length is refused. */
bool tally_frame_reader_ready(const struct tally_frame_reader *r);

/* Grows *buf (realloc) to at least `need` bytes by doubling from max(*cap, min_cap).
 * Returns 0 (also when it is already large enough) or TALLY_ENOMEM, leaving *buf and
 * *cap unchanged. */
int tally_buf_reserve(uint8_t **buf, size_t *cap, size_t need, size_t min_cap);

/* Writes the 4-byte header for a body of `len` bytes. */
void tally_frame_header(uint8_t out[TALLY_FRAME_HEADER_BYTES], uint32_t len);

#endif
