/*
 * Fuzz target: a snapshot's journal section and appendix as a peer's InstallSnapshot
 * brings them (ledger/jsnap.c), past the seal, which a peer with a certificate of the
 * cluster can make for any bytes. The input is split as a restore splits a snapshot:
 * an appendix off its end, then the section before it. Each is refused or opens; a
 * section that opens has segments in ascending order, each within the input or the
 * appendix, and unpacks into a fresh directory as the same segments, byte for byte.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ledger/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[] = "/tmp/tally-fuzz-jsnap-XXXXXX";

static void fuzz_cleanup(void)
{
	journal_remove(dir);
	rmdir(dir);
}

/* The unpacked journal holds exactly the opened segments. */
static void check_unpacked(const struct journal *opened)
{
	struct journal back;
	assert(journal_open(&back, dir, false, 0) == 0);
	assert(back.n_segs == opened->n_segs);
	for (size_t i = 0; i < back.n_segs; i++) {
		assert(back.segs[i].first == opened->segs[i].first);
		assert(back.segs[i].len == opened->segs[i].len);
		assert(memcmp(back.segs[i].base, opened->segs[i].base, back.segs[i].len) == 0);
	}
	journal_close(&back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool made; /* (not the name's last X: mkdtemp may put an X there) */
	if (!made) {
		if (mkdtemp(dir) == NULL)
			abort();
		made = true;
		atexit(fuzz_cleanup);
	}
	struct jsnap_source src = {NULL, 0, NULL};
	size_t body = jsnap_appendix_split(data, size, &src.appendix, &src.appendix_len);
	size_t at = jsnap_find(data, body);
	assert(at <= body && body <= size);
	(void)jsnap_referenced_bytes(data + at, body - at);
	struct journal j;
	int rc = jsnap_open(&j, data + at, body - at, &src);
	for (size_t i = 0; rc == 0 && i < j.n_segs; i++) {
		assert(i == 0 || j.segs[i - 1].first < j.segs[i].first);
		const uint8_t *b = j.segs[i].base;
		assert(j.segs[i].len == 0 || (b >= data && b + j.segs[i].len <= data + size));
	}
	int unpacked = rc == 0 ? jsnap_unpack(data + at, body - at, &src, dir) : -1;
	if (rc == 0) {
		assert(unpacked == 0);
		check_unpacked(&j);
	}
	journal_close(&j);
	journal_remove(dir);
	return 0;
}
