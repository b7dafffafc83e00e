/*
 * ledger/map — room on disk for a ledger mapped with MDB_WRITEMAP.
 *
 * With MDB_WRITEMAP, LMDB 0.9 writes pages through a shared mapping of data.mdb and
 * makes the file as long as the map with ftruncate, so the file is sparse past the
 * data. When the file system is full, the first store to a page in a hole cannot get
 * a block and the kernel answers with SIGBUS: the process dies inside a write
 * transaction and nothing says why. lock.mdb is mapped the same way. So a writemap
 * ledger never lets LMDB map a byte that has no block on disk:
 *
 *  - lock.mdb is allocated (posix_fallocate) before LMDB maps it, and again after;
 *  - the map is exactly as long as the part of data.mdb allocated with
 *    posix_fallocate. LMDB refuses a page past the map itself (MDB_MAP_FULL, and the
 *    transaction is aborted whole), so no store can reach a hole;
 *  - before each batch the map grows, its blocks allocated first, when less than half
 *    of the room it should have ahead of the data is free (a quarter of the data, at
 *    least map_room_bytes, 64 MiB by default). A batch that needs more gets MDB_MAP_FULL and is
 *    applied again after the map grew (each retry doubles the free part), up to
 *    map_size_bytes (then TALLY_EFULL);
 *  - a disk that has less room than that gives what it has: the step is halved until
 *    it fits, down to LEDGER_GROW_STEP_MIN_BYTES. Once not even that fits,
 *    posix_fallocate fails with ENOSPC and the batch that needs the room fails with
 *    TALLY_ENOSPC, a clean error, with nothing of it applied.
 *
 * The disk therefore holds the whole map: at most the room (a quarter of the data, or
 * 64 MiB) more than LMDB uses. The room is generous because a remap costs more than
 * the remap: every page touched afterwards faults again through the file system's
 * page_mkwrite (with 1 MiB steps, ~40 remaps over a million commands made
 * `make bench-ledger` almost twice as slow). posix_fallocate reserves real blocks on
 * ext4, xfs and tmpfs; on a copy-on-write file system (btrfs, zfs) it does not, and
 * SIGBUS remains possible there.
 *
 * Growing the map remaps it (mdb_env_set_mapsize): LMDB unmaps the map and maps the
 * file again, and the new map may be elsewhere. remap.c turns that pair into a growth
 * where the map is, into address space held for it, which keeps the pages mapped and
 * the address the same; only a growth past the held space moves the map. Batches and
 * queries run on the caller's thread, one at a time; the readers on another thread
 * (raft's thread pool) are a snapshot (tally_ledger_snapshot) and the full check of a
 * restored ledger (tally_ledger_check_invariants), and each holds map_lock while it
 * reads (a write-back through the file, tally_ledger_file_dup, needs no map). A growth
 * that stays where the map is takes no lock: the readers are not disturbed. One that
 * moves the map takes it: ahead of a batch it gives way when a reader holds the lock
 * (the room left serves meanwhile), and one the batch cannot do without waits for the
 * reader to end (tally_ledger_map_waits counts those).
 *
 * Pages warmed ahead. The file past the data is allocated but never written, so the
 * file system reads it as zeros. The first store to such a page faults, and the
 * fault reads ahead around it: the kernel zeroes a whole readahead window of large
 * folios (read_ahead_kb, 8 MiB on this project's VM) on the faulting thread, ~40 ms
 * at once there, and the nodes of a cluster get there together since they apply the
 * same entries. So before each batch the applying thread asks for the pages just past
 * the data (POSIX_FADV_WILLNEED, up to LEDGER_WARM_AHEAD_BYTES ahead, the step since
 * the last batch): the kernel zeroes exactly that range, in small pages, and the
 * stores then find their pages in the cache. The zeroing costs the same CPU, in
 * slices the size of a batch's growth. It is advice: the ledger's contents do not
 * depend on it, and where it does nothing (tmpfs) the stores fault as before.
 *
 * Ledgers opened without writemap (tools, tests) keep a fixed map of map_size_bytes:
 * LMDB writes their pages with pwrite, which reports a full disk as an error.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ledger/internal.h"

#define LEDGER_MAP_DEFAULT_BYTES (64ULL << 30) /* map_size_bytes = 0 */
#define LEDGER_ROOM_MIN_BYTES (64ULL << 20)    /* map_room_bytes = 0 */
#define LEDGER_ROOM_SHARE 4                    /* ... or a quarter of what the data uses */
#define LEDGER_GROW_STEP_MIN_BYTES (1ULL << 20) /* map sizes are multiples; the least step */
/* lock.mdb before LMDB maps it: its header and the default 126 reader slots of 64
 * bytes need about 8 KiB. LMDB takes a longer lock file as it finds it (here: room
 * for 1022 readers, which costs nothing), and whatever size it ends with is
 * allocated again after the open. */
#define LEDGER_LOCK_FILE_BYTES (64u << 10)

/* Growths that had to wait for a reader on another thread (tally_ledger_map_waits). */
static _Atomic uint64_t map_waits;

static int errno_to_tally(int e)
{
	return e == ENOSPC ? TALLY_ENOSPC : e == ENOMEM ? TALLY_ENOMEM : TALLY_EIO;
}

/* Allocates disk blocks for the first size_bytes of fd. */
static int fd_allocate(int fd, uint64_t size_bytes)
{
	assert(fd >= 0);
	int e;
	do
		e = posix_fallocate(fd, 0, (off_t)size_bytes);
	while (e == EINTR);
	return e == 0 ? 0 : errno_to_tally(e);
}

/* Allocates dir/lock.mdb's blocks: at least min_bytes, and all of its current size. */
static int lock_file_allocate(const char *dir, uint64_t min_bytes)
{
	assert(dir != NULL);
	char path[4096];
	int n = snprintf(path, sizeof(path), "%s/lock.mdb", dir);
	if (n < 0 || (size_t)n >= sizeof(path))
		return TALLY_EINVAL;
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return errno_to_tally(errno);
	struct stat st;
	int rc = fstat(fd, &st) == 0 ? 0 : errno_to_tally(errno);
	if (rc == 0)
		rc = fd_allocate(fd, (uint64_t)st.st_size > min_bytes ? (uint64_t)st.st_size : min_bytes);
	close(fd);
	return rc;
}

uint64_t map_open_bytes(const struct tally_ledger_options *o)
{
	assert(o != NULL);
	if (o->writemap)
		return LEDGER_GROW_STEP_MIN_BYTES; /* LMDB raises it to what the data uses */
	return o->map_size_bytes != 0 ? o->map_size_bytes : LEDGER_MAP_DEFAULT_BYTES;
}

int map_before_open(const char *dir, const struct tally_ledger_options *o)
{
	assert(dir != NULL && o != NULL);
	return o->writemap ? lock_file_allocate(dir, LEDGER_LOCK_FILE_BYTES) : 0;
}

/* Bytes of the map that hold data (every page up to the last one in use). */
static uint64_t map_used_bytes(struct tally_ledger *l)
{
	assert(l != NULL && l->map_page_bytes > 0);
	MDB_envinfo info;
	mdb_env_info(l->env, &info);
	return ((uint64_t)info.me_last_pgno + 1) * l->map_page_bytes;
}

/* The free map to keep ahead of used_bytes of data. */
static uint64_t room_for(const struct tally_ledger *l, uint64_t used_bytes)
{
	uint64_t share = used_bytes / LEDGER_ROOM_SHARE;
	return share > l->map_room_bytes ? share : l->map_room_bytes;
}

static uint64_t step_round(uint64_t bytes)
{
	return (bytes + LEDGER_GROW_STEP_MIN_BYTES - 1) / LEDGER_GROW_STEP_MIN_BYTES *
	       LEDGER_GROW_STEP_MIN_BYTES;
}

/* Allocates the map's blocks up to *target_bytes, or, when the disk is short, up to
 * as much of it as fits: the step past the map is halved until it does (down to
 * LEDGER_GROW_STEP_MIN_BYTES); *target_bytes is what was allocated. */
static int map_allocate(struct tally_ledger *l, int fd, uint64_t *target_bytes)
{
	assert(l != NULL && fd >= 0 && *target_bytes > l->map_bytes);
	for (;;) {
		int rc = fd_allocate(fd, *target_bytes);
		uint64_t step = *target_bytes - l->map_bytes;
		if (rc != TALLY_ENOSPC || step <= LEDGER_GROW_STEP_MIN_BYTES)
			return rc;
		*target_bytes = l->map_bytes + step_round(step / 2); /* smaller: step > 1 MiB */
	}
}

/* LMDB's map of fd set to `bytes`, through remap.c (remap_expect says what `lock` is). */
static int map_resize(struct tally_ledger *l, int fd, uint64_t bytes, pthread_mutex_t *lock)
{
	MDB_envinfo info;
	mdb_env_info(l->env, &info);
	remap_expect(&l->map_region, info.me_mapsize, fd, lock);
	int rc = lmdb_error(mdb_env_set_mapsize(l->env, (size_t)bytes));
	remap_done();
	return rc;
}

/* Grows the map to want_bytes (rounded up to LEDGER_GROW_STEP_MIN_BYTES, at most
 * map_max_bytes, less when the disk is short), its blocks allocated first. When
 * `must` is false this is ahead of need: it gives way (returning 0) to a snapshot
 * holding the lock, to a full disk and to the cap. When true, the batch cannot go on
 * without it: it waits for the lock and returns TALLY_EFULL when the map is at its
 * cap, or the allocation's error. A failed remap leaves LMDB without a map: its error
 * is returned either way, and the ledger must then be closed. */
static int map_grow(struct tally_ledger *l, uint64_t want_bytes, bool must)
{
	assert(l != NULL && l->map_managed);
	uint64_t target = step_round(want_bytes);
	if (target > l->map_max_bytes)
		target = l->map_max_bytes;
	if (target <= l->map_bytes)
		return must ? TALLY_EFULL : 0;
	int fd = -1;
	int rc = lmdb_error(mdb_env_get_fd(l->env, &fd));
	if (rc == 0)
		rc = map_allocate(l, fd, &target);
	if (rc != 0)
		return must ? rc : 0;
	/* Within its region the map grows where it is, and a reader is not disturbed. */
	bool moves = !remap_fits(&l->map_region, (size_t)target);
	if (moves && pthread_mutex_trylock(&l->map_lock) != 0) {
		if (!must)
			return 0;
		atomic_fetch_add_explicit(&map_waits, 1, memory_order_relaxed);
		pthread_mutex_lock(&l->map_lock);
	}
	rc = map_resize(l, fd, target, moves ? NULL : &l->map_lock);
	if (rc == 0)
		l->map_bytes = target;
	if (moves)
		pthread_mutex_unlock(&l->map_lock);
	return rc;
}

/* The map moved into address space of its own to grow into (remap.c), at open: no
 * reader can be on it yet. Where that fails the map stays as LMDB made it, and its
 * first growth moves it. */
static int map_settle(struct tally_ledger *l, int fd)
{
	pthread_mutex_lock(&l->map_lock);
	int rc = map_resize(l, fd, l->map_bytes, NULL);
	pthread_mutex_unlock(&l->map_lock);
	return rc;
}

uint64_t tally_ledger_map_waits(void)
{
	return atomic_load_explicit(&map_waits, memory_order_relaxed);
}

int map_after_open(struct tally_ledger *l, const char *dir, const struct tally_ledger_options *o)
{
	assert(l != NULL && l->env != NULL && dir != NULL && o != NULL);
	if (!o->writemap)
		return 0;
	MDB_stat st;
	MDB_envinfo info;
	int fd = -1;
	int rc = lmdb_error(mdb_env_stat(l->env, &st));
	if (rc == 0)
		rc = lmdb_error(mdb_env_info(l->env, &info));
	if (rc == 0)
		rc = lmdb_error(mdb_env_get_fd(l->env, &fd));
	if (rc != 0)
		return rc;
	l->map_managed = true;
	l->map_page_bytes = st.ms_psize;
	l->map_bytes = info.me_mapsize;
	l->map_max_bytes = o->map_size_bytes != 0 ? o->map_size_bytes : LEDGER_MAP_DEFAULT_BYTES;
	l->map_room_bytes = o->map_room_bytes != 0 ? step_round(o->map_room_bytes)
						   : LEDGER_ROOM_MIN_BYTES;
	/* A file written before (by LMDB, a copy, an older Tally) may have holes. */
	rc = fd_allocate(fd, l->map_bytes);
	if (rc == 0)
		rc = lock_file_allocate(dir, 0);
	if (rc == 0)
		rc = map_settle(l, fd);
	if (rc != 0)
		return rc;
	uint64_t used = map_used_bytes(l);
	atomic_store_explicit(&l->map_data_bytes, used, memory_order_relaxed);
	if (l->map_bytes - used >= room_for(l, used) / 2)
		return 0;
	rc = map_grow(l, used + room_for(l, used), true);
	return rc == TALLY_EFULL ? 0 : rc; /* at its cap: still readable */
}

/* Brings the file's pages past the data into the page cache before the stores that
 * will first touch them: up to LEDGER_WARM_AHEAD_BYTES ahead of the data (within the
 * map), at most what the data grew by since the last warm and LEDGER_WARM_STEP_BYTES
 * more at a time. See "Pages warmed ahead" above. */
static void map_warm(struct tally_ledger *l, uint64_t used_bytes, uint64_t grown)
{
	assert(l != NULL && l->map_managed);
	if (l->map_warm_bytes < used_bytes)
		l->map_warm_bytes = used_bytes; /* behind the data (a reopen, a big batch) */
	uint64_t want = used_bytes + LEDGER_WARM_AHEAD_BYTES;
	if (want > l->map_bytes)
		want = l->map_bytes;
	if (want > l->map_warm_bytes + grown + LEDGER_WARM_STEP_BYTES)
		want = l->map_warm_bytes + grown + LEDGER_WARM_STEP_BYTES;
	int fd = -1;
	if (want <= l->map_warm_bytes || mdb_env_get_fd(l->env, &fd) != 0)
		return;
	/* Advice only: when it fails, the stores fault the pages in as they did before. */
	if (posix_fadvise(fd, (off_t)l->map_warm_bytes, (off_t)(want - l->map_warm_bytes),
			  POSIX_FADV_WILLNEED) == 0)
		l->map_warm_bytes = want;
}

int map_room(struct tally_ledger *l, unsigned attempt)
{
	assert(l != NULL && l->env != NULL);
	if (!l->map_managed)
		return attempt == 0 ? 0 : TALLY_EFULL;
	uint64_t used = map_used_bytes(l), room = room_for(l, used);
	uint64_t free_bytes = l->map_bytes > used ? l->map_bytes - used : 0;
	/* only this thread stores it: the data's end as of the batch before */
	uint64_t before = atomic_load_explicit(&l->map_data_bytes, memory_order_relaxed);
	atomic_store_explicit(&l->map_data_bytes, used, memory_order_relaxed);
	if (attempt == 0) {
		int rc = free_bytes >= room / 2 ? 0 : map_grow(l, used + room, false);
		if (rc == 0) /* after the growth: the warm stays within the map */
			map_warm(l, used, used > before ? used - before : 0);
		return rc;
	}
	/* The batch did not fit in what was free: twice as much, at least the room. */
	return map_grow(l, used + 2 * (free_bytes > room ? free_bytes : room), true);
}

uint64_t tally_ledger_data_bytes(struct tally_ledger *l)
{
	assert(l != NULL);
	return atomic_load_explicit(&l->map_data_bytes, memory_order_relaxed);
}

void map_pin(struct tally_ledger *l)
{
	assert(l != NULL);
	pthread_mutex_lock(&l->map_lock);
}

void map_unpin(struct tally_ledger *l)
{
	assert(l != NULL);
	pthread_mutex_unlock(&l->map_lock);
}
