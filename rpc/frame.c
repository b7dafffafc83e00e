/*
 * rpc/frame — reassembly of length-prefixed frames from a byte stream.
 *
 * The reader keeps one buffer: buf[0, start) holds frames already handed out (dropped
 * lazily by the next feed, so the body returned by next() stays put until then),
 * buf[start, len) the bytes not yet consumed. The announced length is checked as soon
 * as the header is complete, so a peer cannot make the reader buffer a body larger
 * than max_bytes.
 */
#include "rpc/frame.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "ledger/error.h"

#define FRAME_BUF_BYTES_MIN 4096

void tally_frame_reader_init(struct tally_frame_reader *r, size_t max_bytes)
{
	assert(r != NULL);
	assert(max_bytes > 0 && max_bytes <= UINT32_MAX);
	memset(r, 0, sizeof(*r));
	r->max_bytes = max_bytes;
}

void tally_frame_reader_free(struct tally_frame_reader *r)
{
	assert(r != NULL);
	free(r->buf);
	r->buf = NULL;
	r->len = r->cap = r->start = 0;
}

void tally_frame_reader_reset(struct tally_frame_reader *r)
{
	assert(r != NULL);
	assert(r->start <= r->len && r->len <= r->cap);
	r->len = r->start = 0;
}

/* Makes room for `n` more bytes after dropping what next() handed out. */
static int frameReserve(struct tally_frame_reader *r, size_t n)
{
	assert(r->start <= r->len && r->len <= r->cap);
	if (r->start > 0) {
		memmove(r->buf, r->buf + r->start, r->len - r->start);
		r->len -= r->start;
		r->start = 0;
	}
	if (n > SIZE_MAX / 2 - r->len)
		return TALLY_ENOMEM;
	return tally_buf_reserve(&r->buf, &r->cap, r->len + n, FRAME_BUF_BYTES_MIN);
}

int tally_buf_reserve(uint8_t **buf, size_t *cap, size_t need, size_t min_cap)
{
	assert(buf != NULL && cap != NULL && min_cap > 0);
	if (need <= *cap)
		return 0;
	size_t grown = *cap < min_cap ? min_cap : *cap;
	while (grown < need)
		grown *= 2;
	uint8_t *p = realloc(*buf, grown);
	if (p == NULL)
		return TALLY_ENOMEM;
	*buf = p;
	*cap = grown;
	return 0;
}

int tally_frame_reader_feed(struct tally_frame_reader *r, const void *data, size_t n)
{
	assert(r != NULL);
	assert(data != NULL || n == 0);
	assert(r->max_bytes > 0);
	if (n == 0)
		return 0;
	int rc = frameReserve(r, n);
	if (rc != 0)
		return rc;
	memcpy(r->buf + r->len, data, n);
	r->len += n;
	assert(r->len <= r->cap);
	return 0;
}

/* The body length the frame at r->start announces; the caller checked the header is in. */
static uint32_t frameAnnounced(const struct tally_frame_reader *r)
{
	const uint8_t *h = r->buf + r->start;
	return (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | (uint32_t)h[3];
}

bool tally_frame_reader_ready(const struct tally_frame_reader *r)
{
	assert(r != NULL);
	assert(r->start <= r->len);
	size_t held = r->len - r->start;
	if (held < TALLY_FRAME_HEADER_BYTES)
		return false;
	uint32_t announced = frameAnnounced(r);
	return announced > r->max_bytes || held - TALLY_FRAME_HEADER_BYTES >= announced;
}

int tally_frame_reader_next(struct tally_frame_reader *r, const uint8_t **body, size_t *len)
{
	assert(r != NULL);
	assert(body != NULL && len != NULL);
	assert(r->start <= r->len);
	size_t held = r->len - r->start;
	if (held < TALLY_FRAME_HEADER_BYTES)
		return 0;
	uint32_t announced = frameAnnounced(r);
	if (announced > r->max_bytes)
		return -TALLY_ERANGE; /* sticky: start does not move */
	if (held - TALLY_FRAME_HEADER_BYTES < announced)
		return 0;
	*body = r->buf + r->start + TALLY_FRAME_HEADER_BYTES;
	*len = announced;
	r->start += TALLY_FRAME_HEADER_BYTES + announced;
	assert(r->start <= r->len);
	return 1;
}

void tally_frame_header(uint8_t out[TALLY_FRAME_HEADER_BYTES], uint32_t len)
{
	assert(out != NULL);
	out[0] = (uint8_t)(len >> 24);
	out[1] = (uint8_t)(len >> 16);
	out[2] = (uint8_t)(len >> 8);
	out[3] = (uint8_t)len;
}
