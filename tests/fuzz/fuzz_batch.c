/*
 * Fuzz target: the codec's batch decoder (ledger/codec.c, batch_unpack) against
 * protobuf-c's. Whatever the codec reads, protobuf-c must read too and to the same
 * message (compared as protobuf-c writes the two); what the codec leaves is
 * protobuf-c's to judge, as tally_ledger_batch_decode does. abort() on a difference.
 */
#include <stdlib.h>
#include <string.h>

#include "ledger/arena.h"
#include "ledger/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tally_arena ours_arena, theirs_arena;

/* Both written by protobuf-c: equal bytes, or abort. */
static void same_or_abort(const Tally__V1__Batch *x, const Tally__V1__Batch *y)
{
	size_t n = tally__v1__batch__get_packed_size(x);
	if (n != tally__v1__batch__get_packed_size(y))
		abort();
	uint8_t *bx = malloc(n + 1), *by = malloc(n + 1);
	if (bx == NULL || by == NULL)
		abort();
	if (tally__v1__batch__pack(x, bx) != n || tally__v1__batch__pack(y, by) != n ||
	    memcmp(bx, by, n) != 0)
		abort();
	free(bx);
	free(by);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	if (!ready) {
		tally_arena_init(&ours_arena, 64 << 10, 0);
		tally_arena_init(&theirs_arena, 64 << 10, 0);
		ready = 1;
	}
	tally_arena_reset(&ours_arena);
	tally_arena_reset(&theirs_arena);
	Tally__V1__Batch *ours = batch_unpack(&ours_arena, data, size);
	Tally__V1__Batch *theirs =
		tally__v1__batch__unpack(tally_arena_protobuf(&theirs_arena), size, data);
	if (ours != NULL && theirs == NULL)
		abort(); /* the codec took what protobuf-c refuses */
	if (ours != NULL)
		same_or_abort(ours, theirs);
	return 0;
}
