/*
 * tests/raftio — a raft_uv on a loop of its own, for tests (see raftio.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "tests/raftio.h"

void raftio_init(struct raftio *b, const char *dir)
{
	memset(b, 0, sizeof(*b));
	assert_int_equal(uv_loop_init(&b->loop), 0);
	assert_int_equal(raft_uv_tcp_init(&b->transport, &b->loop), 0);
	assert_int_equal(raft_uv_init(&b->io, &b->loop, dir, &b->transport), 0);
}

void raftio_start(struct raftio *b)
{
	if (b->io.init(&b->io, 1, "127.0.0.1:9001") != 0)
		fail_msg("raft_uv init: %s", b->io.errmsg);
}

struct raft_snapshot *raftio_load(struct raftio *b, size_t *n_entries)
{
	raft_term term;
	raft_id voted_for;
	struct raft_snapshot *snapshot = NULL;
	raft_index start;
	struct raft_entry *entries = NULL;
	size_t n = 0;
	if (b->io.load(&b->io, &term, &voted_for, &snapshot, &start, &entries, &n) != 0)
		fail_msg("raft load: %s", b->io.errmsg);
	for (size_t i = 0; i < n; i++)
		if (entries[i].batch != NULL && (i == 0 || entries[i].batch != entries[i - 1].batch))
			raft_free(entries[i].batch);
	raft_free(entries);
	if (n_entries != NULL)
		*n_entries = n;
	return snapshot;
}

void raftio_wait(struct raftio *b)
{
	while (b->done == 0)
		uv_run(&b->loop, UV_RUN_ONCE);
}

static void on_append(struct raft_io_append *req, int status)
{
	struct raftio *b = req->data;
	b->status = status;
	b->done++;
}

void raftio_append_one(struct raftio *b)
{
	struct raft_entry e = {.term = 1, .type = RAFT_COMMAND,
			       .buf = {.base = raft_malloc(8), .len = 8}};
	assert_non_null(e.buf.base);
	memcpy(e.buf.base, "entry-1", 8);
	struct raft_io_append req = {.data = b};
	b->done = 0;
	assert_int_equal(b->io.append(&b->io, &req, &e, 1, on_append), 0);
	raftio_wait(b);
	assert_int_equal(b->status, 0);
	raft_free(e.buf.base);
}

static void on_closed(struct raft_io *io)
{
	struct raftio *b = io->data;
	raft_uv_close(&b->io);
	raft_uv_tcp_close(&b->transport);
	b->done++;
}

void raftio_close(struct raftio *b)
{
	b->done = 0;
	b->io.data = b;
	b->io.close(&b->io, on_closed);
	raftio_wait(b);
	uv_run(&b->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&b->loop), 0);
}
