/*
 * ledger/remap — a writemap ledger's map grows where it is.
 *
 * LMDB 0.9 grows its map (mdb_env_set_mapsize) by unmapping the whole map and mapping
 * the file again at the new size. That costs twice:
 *  - the munmap tears down the page tables of every page the process has mapped,
 *    which after a snapshot (it reads the whole ledger through the map) is all of
 *    them: 22–25 ms for a 300–500 MB ledger on this project's VM, on the thread that
 *    applies batches (a leader's event loop), and every page touched afterwards
 *    faults in again;
 *  - the new map may be elsewhere, so no other thread may read through the old one
 *    meanwhile: a growth had to wait for a snapshot's copy (map_lock, map.c), and a
 *    batch that could not go on without one held the loop 130–330 ms.
 *
 * So the map lives at the start of address space reserved for it (struct
 * remap_region: PROT_NONE, no memory behind it), and a growth within the
 * reservation maps the file's new part over the reservation, right after the map
 * (MAP_FIXED): the map does not move, its pages stay mapped, and a reader on another
 * thread is not disturbed. A growth past the reservation moves the map, with mremap,
 * into a new reservation twice its size (at least LEDGER_RESERVE_MIN_BYTES); map_grow
 * holds map_lock for that one, as for any move. A ledger's map is moved into its
 * first reservation when it is opened (map_after_open).
 *
 * LMDB does not say where its map is. So map_grow says a map of len bytes of the file
 * fd is about to grow, on this thread (remap_expect), and this file's munmap() and
 * mmap(), which stand in front of libc's for the whole process, turn the pair LMDB
 * then makes into the growth above. mdb_env_set_mapsize's first call is the munmap of
 * its map, of that length: it is held back. Its mmap, of the same file from offset 0,
 * shared, not fixed, at least as long, becomes the growth of the held map. The result
 * is the mapping LMDB asked for: the same file, offsets and protection (LMDB maps a
 * writemap ledger read-write every time). Any other call, on any thread, is libc's.
 * When the growth fails the map is moved as before (mremap, then unmapped and mapped
 * afresh), after taking map_lock where map_grow did not. remap_done, after
 * mdb_env_set_mapsize, unmaps a map still held (LMDB failed before its mmap) and
 * disarms; remap_release, after mdb_env_close, gives back the reservation past the
 * map. It is plumbing, not state: the ledger's bytes do not depend on it.
 *
 * What a reader on another thread still sees of a growth: mdb_env_set_mapsize stores
 * the map's address (the same one) and its new size in LMDB's environment. A
 * snapshot's compacting copy reads that size once, for the meta pages it writes, and
 * either value serves: a ledger opened from the copy maps the size it asks for (at
 * least what the data uses), whatever the meta page says (map_open_bytes).
 */
#include <assert.h>
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/mman.h>

#include "ledger/interpose.h"
#include "ledger/internal.h"

/* The least address space a map is given to grow into, when it moves. 1 GiB of
 * PROT_NONE costs no memory; it is small enough for valgrind's address space. */
#define LEDGER_RESERVE_MIN_BYTES (1ULL << 30)

typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);
typedef int (*munmap_fn)(void *, size_t);

static _Thread_local struct {
	struct remap_region *region;
	pthread_mutex_t *lock; /* map_lock, when map_grow does not hold it (NULL: it does) */
	void *addr;
	size_t len;
	int fd;
	bool armed;  /* map_grow is in mdb_env_set_mapsize for this map */
	bool held;   /* its munmap came and was held back */
	bool locked; /* this file took `lock`: held until remap_done, when LMDB has its map */
} pending;
static _Atomic uint64_t in_place; /* growths without unmapping, in this process */
static _Atomic size_t reserve_min = LEDGER_RESERVE_MIN_BYTES; /* remap_set_reserve_min */

void remap_set_reserve_min(size_t bytes)
{
	atomic_store_explicit(&reserve_min, bytes > 0 ? bytes : LEDGER_RESERVE_MIN_BYTES,
			      memory_order_relaxed);
}

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

bool remap_fits(const struct remap_region *r, size_t len)
{
	assert(r != NULL);
	return r->base != NULL && len <= r->reserved;
}

void remap_expect(struct remap_region *r, size_t len, int fd, pthread_mutex_t *lock)
{
	assert(r != NULL && len > 0 && fd >= 0 && !pending.armed);
	assert(lock == NULL || r->base != NULL); /* the first move holds the lock */
	pending.region = r;
	pending.lock = lock;
	pending.addr = NULL;
	pending.len = len;
	pending.fd = fd;
	pending.armed = true;
	pending.held = pending.locked = false;
}

/* Takes map_lock unless map_grow holds it: the map is about to move or go. */
static void pending_lock(void)
{
	if (pending.lock != NULL && !pending.locked) {
		pthread_mutex_lock(pending.lock);
		pending.locked = true;
	}
}

/* The reservation past the map given back: nothing is left to grow into. */
static void region_forget(struct remap_region *r)
{
	if (r->base != NULL && r->reserved > r->mapped)
		next_munmap(r->base + r->mapped, r->reserved - r->mapped);
	r->base = NULL;
	r->reserved = r->mapped = 0;
}

void remap_done(void)
{
	assert(pending.armed);
	if (pending.held) { /* LMDB failed between its munmap and its mmap */
		pending_lock(); /* a reader may still be on it */
		next_munmap(pending.addr, pending.len);
		if (pending.region->base == pending.addr) {
			pending.region->mapped = pending.len;
			region_forget(pending.region);
		}
	}
	if (pending.locked)
		pthread_mutex_unlock(pending.lock);
	pending.armed = pending.held = pending.locked = false;
}

void remap_release(struct remap_region *r)
{
	assert(r != NULL);
	region_forget(r); /* after mdb_env_close: LMDB unmapped the map itself */
}

uint64_t tally_ledger_remaps_in_place(void)
{
	return atomic_load_explicit(&in_place, memory_order_relaxed);
}

/* The file's part past the map mapped over the reservation, right after it. */
static void *grow_here(struct remap_region *r, size_t len, int prot, int fd)
{
	uint8_t *tail = r->base + r->mapped;
	void *p = next_mmap(tail, len - r->mapped, prot, MAP_SHARED | MAP_FIXED, fd, (off_t)r->mapped);
	if (p == MAP_FAILED) {
		/* MAP_FIXED may have unmapped part of the range: none of it is trusted. */
		region_forget(r);
		return MAP_FAILED;
	}
	assert(p == tail);
	r->mapped = len;
	return r->base;
}

/* The map of old_len bytes at old moved, grown to len, into a new reservation (or,
 * when none can be had, wherever mremap puts it). */
static void *grow_moved(struct remap_region *r, void *old, size_t old_len, size_t len)
{
	size_t least = atomic_load_explicit(&reserve_min, memory_order_relaxed);
	size_t want = len > least / 2 ? 2 * len : least;
	void *area = next_mmap(NULL, want, PROT_NONE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	void *p = MAP_FAILED;
	if (area != MAP_FAILED) {
		p = mremap(old, old_len, len, MREMAP_MAYMOVE | MREMAP_FIXED, area);
		if (p == MAP_FAILED)
			next_munmap(area, want);
	}
	if (p == MAP_FAILED)
		p = mremap(old, old_len, len, MREMAP_MAYMOVE);
	if (p == MAP_FAILED)
		return MAP_FAILED;
	/* The old held space past the map, unless its bookkeeping lost track of the map
	 * (then only forgotten: what lies past r->mapped may be the map itself). */
	if (r->base != old || r->mapped == old_len)
		region_forget(r);
	r->base = p;
	r->mapped = len;
	r->reserved = p == area ? want : len;
	return p;
}

/* The held map grown to len: where it is when it fits, else moved (the lock held). */
static void *grow(size_t len, int prot, int fd)
{
	struct remap_region *r = pending.region;
	if (r->base == pending.addr && r->mapped == pending.len && len <= r->reserved) {
		void *p = grow_here(r, len, prot, fd);
		if (p != MAP_FAILED)
			return p;
	}
	pending_lock();
	void *p = grow_moved(r, pending.addr, pending.len, len);
	if (p == MAP_FAILED) /* as LMDB does it: unmapped, then mapped afresh */
		next_munmap(pending.addr, pending.len);
	return p;
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
		void *p = grow(len, prot, fd);
		if (p != MAP_FAILED) {
			atomic_fetch_add_explicit(&in_place, 1, memory_order_relaxed);
			return p;
		}
		/* unmapped (grow): LMDB's own mmap */
	}
	return next_mmap(addr, len, prot, flags, fd, off);
}
