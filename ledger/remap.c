/*
 * ledger/remap — a writemap ledger's map grows in place, with mremap.
 *
 * LMDB 0.9 grows its map (mdb_env_set_mapsize) by unmapping the whole map and mapping
 * the file again at the new size. The munmap tears down the page tables of every page
 * the process has mapped, which after a snapshot (it reads the whole ledger through
 * the map) is all of them: 22–25 ms for a 300–500 MB ledger on this project's VM, on
 * the thread that applies batches (a leader's event loop). And every page touched
 * afterwards faults in again, through the file system's page_mkwrite.
 *
 * mremap(MREMAP_MAYMOVE) grows a mapping and keeps its page tables. So map_grow
 * (map.c) says it is about to grow a map of len bytes of the file fd (remap_expect;
 * LMDB 0.9 does not tell where its map is), and this file's munmap() and mmap(), which
 * stand in front of libc's for the whole process, turn the pair LMDB then makes, on
 * that thread, into one mremap. mdb_env_set_mapsize's first call is the munmap of its
 * map, of that length: it is held back. Its mmap, of the same file from offset 0,
 * shared, not fixed, at least as long, becomes the mremap of the held map. The result is the mapping LMDB asked
 * for: the same file, offsets and protection (LMDB maps a writemap ledger read-write
 * every time). Any other call, on any thread, is libc's; so is the pair when mremap
 * fails: the held map is unmapped and the file mapped afresh, as before.
 * remap_done, after mdb_env_set_mapsize, unmaps a map still held (LMDB failed before
 * its mmap) and disarms. It is plumbing, not state: the ledger's bytes do not depend
 * on it.
 */
#include <assert.h>
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/mman.h>

#include "ledger/interpose.h"
#include "ledger/internal.h"

typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);
typedef int (*munmap_fn)(void *, size_t);

static _Thread_local struct {
	void *addr;
	size_t len;
	int fd;
	bool armed; /* map_grow is in mdb_env_set_mapsize for this map */
	bool held;  /* its munmap came and was held back */
} pending;
static _Atomic uint64_t in_place; /* remaps done with mremap, in this process */

void *ledger_next_symbol(void *_Atomic *slot, const char *name)
{
	assert(slot != NULL && name != NULL);
	void *f = atomic_load_explicit(slot, memory_order_relaxed);
	if (f == NULL) {
		f = dlsym(RTLD_NEXT, name);
		atomic_store_explicit(slot, f, memory_order_relaxed);
	}
	return f;
}

static int next_munmap(void *addr, size_t len)
{
	static void *_Atomic next;
	munmap_fn f = (munmap_fn)ledger_next_symbol(&next, "munmap");
	assert(f != NULL); /* libc's, in any dynamically linked process */
	return f(addr, len);
}

static void *next_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	static void *_Atomic next;
	mmap_fn f = (mmap_fn)ledger_next_symbol(&next, "mmap");
	assert(f != NULL);
	return f(addr, len, prot, flags, fd, off);
}

void remap_expect(size_t len, int fd)
{
	assert(len > 0 && fd >= 0 && !pending.armed);
	pending.addr = NULL;
	pending.len = len;
	pending.fd = fd;
	pending.armed = true;
	pending.held = false;
}

void remap_done(void)
{
	assert(pending.armed);
	if (pending.held)
		next_munmap(pending.addr, pending.len);
	pending.armed = pending.held = false;
}

uint64_t tally_ledger_remaps_in_place(void)
{
	return atomic_load_explicit(&in_place, memory_order_relaxed);
}

/* munmap() for the whole process: libc's, but for the map being grown (above). */
__attribute__((visibility("default"))) int munmap(void *addr, size_t len)
{
	if (pending.armed && !pending.held && len == pending.len) {
		pending.addr = addr;
		pending.held = true;
		return 0;
	}
	return next_munmap(addr, len);
}

/* mmap() for the whole process: libc's, but for the map being grown (above). */
__attribute__((visibility("default"))) void *mmap(void *addr, size_t len, int prot, int flags,
						  int fd, off_t off)
{
	if (pending.held && fd == pending.fd && off == 0 && len >= pending.len &&
	    (flags & (MAP_SHARED | MAP_FIXED)) == MAP_SHARED &&
	    (addr == NULL || addr == pending.addr)) {
		pending.held = false;
		void *p = mremap(pending.addr, pending.len, len, MREMAP_MAYMOVE);
		if (p != MAP_FAILED) {
			atomic_fetch_add_explicit(&in_place, 1, memory_order_relaxed);
			return p;
		}
		next_munmap(pending.addr, pending.len);
	}
	return next_mmap(addr, len, prot, flags, fd, off);
}
