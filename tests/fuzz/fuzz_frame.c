/*
 * Fuzz target: frame reassembly (rpc/frame.c). The input is a byte stream cut into
 * feeds at points the input chooses; every frame taken out must be whole and within
 * the limit, and a refused length must stay refused.
 */
#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rpc/frame.h"

#define FUZZ_FRAME_MAX 1024 /* small, so that limits are met often */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tally_frame_reader r;
	tally_frame_reader_init(&r, FUZZ_FRAME_MAX);
	size_t at = 0, frames_bytes = 0;
	bool refused = false;
	while (at < size && !refused) {
		size_t chunk = 1 + data[at] % 64; /* the first byte of a feed sets its length */
		at++;
		if (chunk > size - at)
			chunk = size - at;
		if (tally_frame_reader_feed(&r, data + at, chunk) != 0)
			break;
		at += chunk;
		for (;;) {
			const uint8_t *body;
			size_t len;
			int rc = tally_frame_reader_next(&r, &body, &len);
			if (rc == 0)
				break;
			if (rc < 0) {
				refused = true;
				assert(tally_frame_reader_next(&r, &body, &len) < 0); /* stays refused */
				break;
			}
			assert(len <= FUZZ_FRAME_MAX);
			assert(len == 0 || body != NULL);
			frames_bytes += TALLY_FRAME_HEADER_BYTES + len;
		}
	}
	assert(frames_bytes <= size);
	tally_frame_reader_free(&r);
	return 0;
}
