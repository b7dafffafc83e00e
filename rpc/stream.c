/* rpc/stream — see stream.h. */
#include "rpc/stream.h"

#include <assert.h>

size_t tally_stream_write_now(uv_stream_t *s, const void *data, size_t len)
{
	assert(s != NULL && (data != NULL || len == 0));
	if (len == 0 || uv_stream_get_write_queue_size(s) != 0)
		return 0;
	uv_buf_t now = uv_buf_init((char *)data, (unsigned)len);
	int n = uv_try_write(s, &now, 1);
	assert(n <= 0 || (size_t)n <= len);
	return n > 0 ? (size_t)n : 0;
}
