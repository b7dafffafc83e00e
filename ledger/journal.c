/*
 * The journal's bytes, in append-only segment files beside LMDB.
 *
 * Every journal entry is one record, a 4-byte big-endian length and the entry as the
 * ledger stores it (chain.c: header, chain links, the Entry's bytes), appended to the
 * segment file `journal/<first seq>.seg` of the ledger's directory. A segment takes
 * records until the next would carry it past segment_bytes; it is never written
 * again after that, so a closed segment is the same bytes on every replica. LMDB's
 * T_ENTRIES keeps, in the same transaction as the state, where every
 * JOURNAL_INDEX_STRIDE-th entry and each segment's first entry is: the first seq of
 * its segment and its offset there (JOURNAL_INDEX_BYTES). Any other entry is reached
 * from the last row before it, stepping over at most STRIDE - 1 records by their
 * lengths; so the index is 1/32 of a row per entry, and a snapshot's copy of LMDB
 * barely grows with the history. (Format 7 wrote a row for every entry: those rows
 * are read the same way.)
 *
 * A batch's records are kept in memory while it applies (the writer reads them back
 * for member chains) and written to their segments just before LMDB commits; after a
 * failed commit or an abort the segments are cut back to the last committed record.
 * LMDB and the segments are written without syncs, as the ledger always was (the raft
 * log and raft's snapshots are the durable record): at open, a segment longer than
 * LMDB says is cut back to it, and one shorter means the ledger is damaged.
 *
 * Readers on other threads find records through their own LMDB read transaction,
 * whose rows name only records already written; the table of segments is guarded by
 * a mutex, and a segment's mapping stays where it is until the ledger closes.
 *
 * A read-only journal over a snapshot's journal section (jsnap_open, jsnap.c) has
 * the same table, its segments pointing into the snapshot's mapping.
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ledger/internal.h"

#define SEG_NAME_BYTES 32 /* "%020" PRIu64 ".seg" and its NUL */

int journal_io_error(void)
{
	return errno == ENOSPC ? TALLY_ENOSPC : errno == ENOMEM ? TALLY_ENOMEM : TALLY_EIO;
}

int journal_seg_name(const char *dir, uint64_t first, const char *suffix, char *buf, size_t cap)
{
	int n = snprintf(buf, cap, "%s/%020" PRIu64 ".seg%s", dir, first, suffix);
	return n < 0 || (size_t)n >= cap ? TALLY_EINVAL : 0;
}

int journal_seg_path(const struct journal *j, uint64_t first, char *buf, size_t cap)
{
	return journal_seg_name(j->dir, first, "", buf, cap);
}

/* items (*cap of them, n in use, size bytes each) with room for one more: the same
 * array, or a larger one (twice the elements, `first` at first), or NULL when there
 * is no memory (items is then as it was). */
static void *room_for_one(void *items, size_t *cap, size_t n, size_t size, size_t first)
{
	assert(n <= *cap);
	if (n < *cap)
		return items;
	size_t grown = *cap > 0 ? 2 * *cap : first;
	void *p = realloc(items, grown * size);
	if (p != NULL)
		*cap = grown;
	return p;
}

/* The index of the first segment whose first seq is `seq` or after (n_segs: none);
 * j->lock held. */
static size_t seg_lower_bound(const struct journal *j, uint64_t seq)
{
	size_t lo = 0, hi = j->n_segs;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (j->segs[mid].first < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* The segment whose first record is `first`, or NULL; j->lock held. */
struct journal_seg *journal_seg_find(const struct journal *j, uint64_t first)
{
	size_t i = seg_lower_bound(j, first);
	return i < j->n_segs && j->segs[i].first == first ? &j->segs[i] : NULL;
}

/* Adds segment `first` (after every other) with its file and mapping; j->lock held. */
int journal_seg_add(struct journal *j, uint64_t first, int fd, uint8_t *base, size_t cap,
		    uint64_t len, bool own_map)
{
	assert(j->n_segs == 0 || j->segs[j->n_segs - 1].first < first);
	struct journal_seg *s = room_for_one(j->segs, &j->cap_segs, j->n_segs, sizeof(*s), 16);
	if (s == NULL)
		return TALLY_ENOMEM;
	j->segs = s;
	j->segs[j->n_segs++] = (struct journal_seg){.first = first, .base = base, .cap = cap,
						    .len = len, .fd = fd, .own_map = own_map};
	return 0;
}

/* Closes the files of every segment but the last: they are written no more (their
 * mappings stay), so a long journal holds one descriptor; j->lock held. */
static void seg_files_close(struct journal *j)
{
	for (size_t i = j->n_segs; i-- > 1 && j->segs[i - 1].fd >= 0;) {
		close(j->segs[i - 1].fd);
		j->segs[i - 1].fd = -1;
	}
}

/* A mapping of cap bytes of fd, read-only (bytes past the file's end are never read:
 * every read is bounded by the segment's length). */
static int seg_map(int fd, size_t cap, uint8_t **base)
{
	void *p = mmap(NULL, cap, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return journal_io_error();
	*base = p;
	return 0;
}

static void seg_release(struct journal_seg *s)
{
	if (s->own_map)
		munmap(s->base, s->cap);
	if (s->fd >= 0)
		close(s->fd);
}

/* The mapping a segment needs: segment_bytes, or its one record when that is larger. */
static size_t seg_cap(const struct journal *j, uint64_t len)
{
	return len > j->segment_bytes ? (size_t)len : (size_t)j->segment_bytes;
}

static int name_first(const char *name, uint64_t *first)
{
	char tail[8];
	unsigned long long v;
	if (strlen(name) != 24 || sscanf(name, "%20llu%7s", &v, tail) != 2 ||
	    strcmp(tail, ".seg") != 0 || v == 0)
		return TALLY_ENOTFOUND;
	*first = v;
	return 0;
}

static int u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int journal_seg_list(const char *dir, uint64_t **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	DIR *d = opendir(dir);
	if (d == NULL)
		return errno == ENOENT ? 0 : TALLY_EIO;
	size_t cap = 0;
	int rc = 0;
	for (struct dirent *e; rc == 0 && (e = readdir(d)) != NULL;) {
		uint64_t first;
		if (name_first(e->d_name, &first) != 0)
			continue;
		uint64_t *v = room_for_one(*out, &cap, *n, sizeof(*v), 16);
		if (v == NULL)
			rc = TALLY_ENOMEM;
		else
			(*out = v)[(*n)++] = first;
	}
	closedir(d);
	if (rc == 0 && *n > 1)
		qsort(*out, *n, sizeof(**out), u64_cmp);
	return rc;
}

/* Segment `first` on fd, which it owns from here (closed on a failure): mapped for
 * len bytes written and `need` to come, and added after every other; j->lock held
 * where others may read the table. */
static int seg_attach(struct journal *j, uint64_t first, int fd, uint64_t len, uint64_t need)
{
	uint8_t *base = NULL;
	size_t cap = seg_cap(j, len > need ? len : need);
	int rc = seg_map(fd, cap, &base);
	if (rc == 0)
		rc = journal_seg_add(j, first, fd, base, cap, len, true);
	if (rc != 0) {
		if (base != NULL)
			munmap(base, cap);
		close(fd);
	}
	return rc;
}

static int seg_open(struct journal *j, uint64_t first)
{
	char path[sizeof(j->dir) + SEG_NAME_BYTES];
	int rc = journal_seg_path(j, first, path, sizeof(path));
	int fd = rc == 0 ? open(path, (j->writable ? O_RDWR : O_RDONLY) | O_CLOEXEC) : -1;
	if (fd < 0)
		return rc != 0 ? rc : TALLY_EIO;
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return TALLY_ECORRUPT;
	}
	rc = seg_attach(j, first, fd, (uint64_t)st.st_size, 0);
	if (rc == 0) /* a link a snapshot names: never cut or written in place */
		j->segs[j->n_segs - 1].linked = st.st_nlink > 1;
	return rc;
}

int journal_open(struct journal *j, const char *ledger_dir, bool writable,
		 uint64_t segment_bytes)
{
	assert(j != NULL && ledger_dir != NULL);
	memset(j, 0, sizeof(*j));
	pthread_mutex_init(&j->lock, NULL);
	j->writable = writable;
	j->segment_bytes = segment_bytes > 0 ? segment_bytes : JOURNAL_SEGMENT_BYTES;
	int n = snprintf(j->dir, sizeof(j->dir), "%s/journal", ledger_dir);
	if (n < 0 || (size_t)n + SEG_NAME_BYTES >= sizeof(j->dir))
		return TALLY_EINVAL;
	if (writable && mkdir(j->dir, 0755) != 0 && errno != EEXIST)
		return TALLY_EIO;
	uint64_t *firsts;
	size_t count;
	int rc = journal_seg_list(j->dir, &firsts, &count);
	for (size_t i = 0; rc == 0 && i < count; i++)
		rc = seg_open(j, firsts[i]);
	free(firsts);
	return rc;
}

int journal_sync(struct journal *j)
{
	assert(j != NULL);
	pthread_mutex_lock(&j->lock);
	size_t n = j->n_segs;
	uint64_t *firsts = n > 0 ? malloc(n * sizeof(*firsts)) : NULL;
	for (size_t i = 0; firsts != NULL && i < n; i++)
		firsts[i] = j->segs[i].first;
	pthread_mutex_unlock(&j->lock);
	if (n > 0 && firsts == NULL)
		return TALLY_ENOMEM;
	int rc = 0;
	for (size_t i = 0; rc == 0 && i <= n; i++) {
		char path[sizeof(j->dir) + SEG_NAME_BYTES];
		if (i < n)
			rc = journal_seg_path(j, firsts[i], path, sizeof(path));
		else
			snprintf(path, sizeof(path), "%s", j->dir); /* the names, last */
		int fd = rc == 0 ? open(path, O_RDONLY | O_CLOEXEC) : -1;
		/* fsync, not fdatasync: in tallyd, consensus/flush.c's fsync() writes a large
		 * file back a step at a time first, so that the raft log's commits on the
		 * same disk never wait behind a whole segment */
		if (rc == 0 && (fd < 0 || fsync(fd) != 0))
			rc = journal_io_error();
		if (fd >= 0)
			close(fd);
	}
	free(firsts);
	return rc;
}

int journal_remove(const char *ledger_dir)
{
	struct journal j;
	int rc = journal_open(&j, ledger_dir, false, 0);
	for (size_t i = 0; rc == 0 && i < j.n_segs; i++) {
		char path[sizeof(j.dir) + SEG_NAME_BYTES];
		rc = journal_seg_path(&j, j.segs[i].first, path, sizeof(path));
		if (rc == 0 && unlink(path) != 0 && errno != ENOENT)
			rc = TALLY_EIO;
	}
	if (rc == 0 && rmdir(j.dir) != 0 && errno != ENOENT)
		rc = TALLY_EIO;
	journal_close(&j);
	return rc;
}

int journal_write_at(int fd, const void *p, size_t n, uint64_t off)
{
	for (size_t done = 0; done < n;) {
		ssize_t m = pwrite(fd, (const uint8_t *)p + done, n - done, (off_t)(off + done));
		if (m < 0 && errno == EINTR)
			continue;
		if (m <= 0)
			return m < 0 ? journal_io_error() : TALLY_EIO;
		done += (size_t)m;
	}
	return 0;
}

int journal_file_write(const char *path, const void *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return journal_io_error();
	int rc = journal_write_at(fd, p, n, 0);
	if (close(fd) != 0 && rc == 0)
		rc = journal_io_error();
	return rc;
}

/* Segment s, whose file has another name (a link snapshots name: jsnap.c), made a file
 * of its own before it is cut or written: its first keep bytes copied to a new file
 * that takes its name, mapped where the old one was (readers see the same bytes
 * throughout), so that the link keeps the bytes a snapshot's hash names. j->lock
 * held. */
static int seg_unshare(struct journal *j, struct journal_seg *s, uint64_t keep)
{
	assert(s->own_map && keep <= s->len);
	char path[sizeof(j->dir) + SEG_NAME_BYTES], tmp[sizeof(path) + 4];
	int rc = journal_seg_path(j, s->first, path, sizeof(path));
	if (rc == 0 && snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		rc = TALLY_EINVAL;
	int fd = rc == 0 ? open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
	if (rc == 0 && fd < 0)
		rc = journal_io_error();
	if (rc == 0)
		rc = journal_write_at(fd, s->base, (size_t)keep, 0);
	if (rc == 0 && rename(tmp, path) != 0)
		rc = journal_io_error();
	if (rc == 0 && mmap(s->base, s->cap, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED)
		rc = journal_io_error();
	if (rc != 0) {
		if (fd >= 0) {
			close(fd);
			unlink(tmp);
		}
		return rc;
	}
	if (s->fd >= 0)
		close(s->fd);
	s->fd = fd;
	s->len = keep;
	s->linked = false;
	return 0;
}

/* Drops segments from index `from` on, files too; j->lock held. */
static int seg_drop_from(struct journal *j, size_t from)
{
	int rc = 0;
	while (j->n_segs > from) {
		struct journal_seg *s = &j->segs[j->n_segs - 1];
		char path[sizeof(j->dir) + SEG_NAME_BYTES];
		if (journal_seg_path(j, s->first, path, sizeof(path)) != 0 ||
		    (unlink(path) != 0 && errno != ENOENT))
			rc = TALLY_EIO;
		seg_release(s);
		j->n_segs--;
	}
	return rc;
}

/* Cuts the segments back to end bytes of segment `first` (0, 0: no record at all). */
static int cut_to(struct journal *j, uint64_t first, uint64_t end)
{
	pthread_mutex_lock(&j->lock);
	size_t keep = 0;
	while (keep < j->n_segs && j->segs[keep].first <= first && first > 0)
		keep++;
	int rc = seg_drop_from(j, keep);
	struct journal_seg *s = keep > 0 ? &j->segs[keep - 1] : NULL;
	if (rc == 0 && s != NULL && s->first != first)
		rc = TALLY_ECORRUPT; /* the segment LMDB names is missing */
	else if (rc == 0 && s != NULL && s->len < end)
		rc = TALLY_ECORRUPT; /* shorter than what LMDB committed */
	else if (rc == 0 && s != NULL && s->len > end && s->linked)
		rc = seg_unshare(j, s, end);
	else if (rc == 0 && s != NULL && s->len > end) {
		if (ftruncate(s->fd, (off_t)end) != 0)
			rc = journal_io_error(); /* the bytes past end are written over next */
		s->len = end;
	}
	pthread_mutex_unlock(&j->lock);
	return rc;
}

/* The framed length of the record at off of segment s, or 0 when it is not whole. */
static uint64_t record_end(const struct journal_seg *s, uint64_t off)
{
	if (off > s->len || s->len - off < JOURNAL_RECORD_HEAD)
		return 0;
	uint64_t n = be32_get(s->base + off);
	if (n <= ENTRY_HEADER_BYTES || n > s->len - off - JOURNAL_RECORD_HEAD)
		return 0;
	return off + JOURNAL_RECORD_HEAD + n;
}

/* The record `steps` records after the one at *off in s: its offset in *off, its end
 * returned; 0 when a record on the way is not whole. */
static uint64_t record_step(const struct journal_seg *s, uint64_t *off, uint64_t steps)
{
	uint64_t end = record_end(s, *off);
	for (; end != 0 && steps > 0; steps--) {
		*off = end;
		end = record_end(s, *off);
	}
	return end;
}

/* Where a record is: its segment's first seq and mapping (which stays put while the
 * table may grow), its offset and end. */
struct record_at {
	uint64_t first;
	const uint8_t *base;
	uint64_t off, end;
};

/* The record of entry seq, found from the row of key `key` (value index); j->lock
 * held. */
static int record_locate(const struct journal *j, uint64_t seq, uint64_t key,
			 const uint8_t index[JOURNAL_INDEX_BYTES], struct record_at *at)
{
	at->first = be64_get(index);
	at->off = be64_get(index + 8);
	const struct journal_seg *s = journal_seg_find(j, at->first);
	if (s == NULL || key < at->first || seq < key || seq - key >= JOURNAL_INDEX_STRIDE)
		return TALLY_ECORRUPT;
	at->base = s->base;
	at->end = record_step(s, &at->off, seq - key);
	return at->end != 0 ? 0 : TALLY_ECORRUPT;
}

/* record_locate under j->lock. */
static int record_find(struct journal *j, uint64_t seq, uint64_t key,
		       const uint8_t index[JOURNAL_INDEX_BYTES], struct record_at *at)
{
	pthread_mutex_lock(&j->lock);
	int rc = record_locate(j, seq, key, index, at);
	pthread_mutex_unlock(&j->lock);
	return rc;
}

int journal_settle_open(struct journal *j, uint64_t last_seq, uint64_t last_key,
			const uint8_t *last_index)
{
	assert(j != NULL && j->writable);
	uint64_t first = 0, end = 0;
	if (last_index != NULL) {
		struct record_at at;
		int rc = record_find(j, last_seq, last_key, last_index, &at);
		if (rc != 0)
			return rc;
		first = at.first;
		end = at.end;
	}
	int rc = cut_to(j, first, end);
	if (rc != 0)
		return rc;
	pthread_mutex_lock(&j->lock);
	seg_files_close(j);
	j->commit_first = j->tail_first = first;
	j->commit_end = j->tail_end = end;
	pthread_mutex_unlock(&j->lock);
	j->commit_seq = last_seq;
	return 0;
}

void journal_close(struct journal *j)
{
	if (j == NULL)
		return;
	for (size_t i = 0; i < j->n_segs; i++)
		seg_release(&j->segs[i]);
	free(j->segs);
	for (struct journal_chunk *c = j->chunks, *next; c != NULL; c = next) {
		next = c->next;
		free(c);
	}
	free(j->pending);
	pthread_mutex_destroy(&j->lock);
	memset(j, 0, sizeof(*j));
}

/* ---- a batch's records ----------------------------------------------------------- */

/* The journal whose batch this thread applies: only its writer reads pending records
 * (another thread's rows name only records already written). */
static _Thread_local const struct journal *journal_writing;

void journal_begin(struct journal *j)
{
	assert(j != NULL && j->writable && j->n_pending == 0);
	journal_writing = j;
}

/* Room for n framed bytes in the batch's chunks (which never move while it lasts). */
static uint8_t *chunk_room(struct journal *j, size_t n)
{
	struct journal_chunk *c = j->chunk_at;
	while (c != NULL && c->cap - c->used < n)
		c = c->next;
	if (c == NULL) {
		size_t cap = n > JOURNAL_CHUNK_BYTES ? n : JOURNAL_CHUNK_BYTES;
		c = malloc(sizeof(*c) + cap);
		if (c == NULL)
			return NULL;
		c->cap = cap;
		c->used = 0;
		c->next = NULL;
		struct journal_chunk **at = &j->chunks;
		while (*at != NULL)
			at = &(*at)->next;
		*at = c;
	}
	j->chunk_at = c;
	uint8_t *p = c->data + c->used;
	c->used += n;
	return p;
}

int journal_reserve(struct journal *j, uint64_t seq, size_t n, uint8_t **out,
		    uint8_t index[JOURNAL_INDEX_BYTES])
{
	assert(j != NULL && j->writable && out != NULL && index != NULL);
	assert(n > ENTRY_HEADER_BYTES);
	assert(seq == j->commit_seq + j->n_pending + 1);
	if (n > JOURNAL_RECORD_MAX)
		return TALLY_ERANGE;
	struct journal_pending *pending =
		room_for_one(j->pending, &j->cap_pending, j->n_pending, sizeof(*pending), 256);
	if (pending == NULL)
		return TALLY_ENOMEM;
	j->pending = pending;
	uint64_t framed = JOURNAL_RECORD_HEAD + (uint64_t)n;
	uint8_t *p = chunk_room(j, (size_t)framed);
	if (p == NULL)
		return TALLY_ENOMEM;
	/* A new segment for the first record, and for one that would carry the open
	 * segment past segment_bytes: the rule every replica applies alike. */
	if (j->tail_first == 0 || (j->tail_end > 0 && j->tail_end + framed > j->segment_bytes)) {
		j->tail_first = seq;
		j->tail_end = 0;
	}
	be32_put(p, (uint32_t)n);
	j->pending[j->n_pending++] = (struct journal_pending){j->tail_first, j->tail_end, p, framed};
	be64_put(index, j->tail_first);
	be64_put(index + 8, j->tail_end);
	j->tail_end += framed;
	*out = p + JOURNAL_RECORD_HEAD;
	return 0;
}

/* Segment `first`, made when the batch's first record in it is written; j->lock held. */
static int seg_for_write(struct journal *j, uint64_t first, uint64_t need,
			 struct journal_seg **out)
{
	struct journal_seg *s = journal_seg_find(j, first);
	if (s != NULL) {
		*out = s;
		return 0;
	}
	char path[sizeof(j->dir) + SEG_NAME_BYTES];
	int rc = journal_seg_path(j, first, path, sizeof(path));
	int fd = rc == 0 ? open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
	if (fd < 0)
		return rc != 0 ? rc : journal_io_error();
	rc = seg_attach(j, first, fd, 0, need);
	if (rc != 0)
		return rc;
	*out = &j->segs[j->n_segs - 1];
	return 0;
}

/* Writes pending records [from, to), all of one segment, with as few calls as the
 * chunks allow; j->lock held. */
static int write_run(struct journal *j, size_t from, size_t to)
{
	const struct journal_pending *p = &j->pending[from];
	uint64_t need = p[to - from - 1].off + p[to - from - 1].n;
	struct journal_seg *s;
	int rc = seg_for_write(j, p->first, need, &s);
	if (rc == 0 && s->linked)
		rc = seg_unshare(j, s, s->len);
	if (rc != 0)
		return rc;
	assert(s->len == p->off);
	struct iovec iov[JOURNAL_IOV_MAX];
	for (size_t i = from; i < to;) {
		size_t n_iov = 0;
		uint64_t off = j->pending[i].off, bytes = 0;
		for (; i < to && n_iov < JOURNAL_IOV_MAX; i++) {
			const struct journal_pending *r = &j->pending[i];
			if (n_iov > 0 && (uint8_t *)iov[n_iov - 1].iov_base + iov[n_iov - 1].iov_len == r->bytes)
				iov[n_iov - 1].iov_len += r->n;
			else
				iov[n_iov++] = (struct iovec){r->bytes, r->n};
			bytes += r->n;
		}
		ssize_t m = pwritev(s->fd, iov, (int)n_iov, (off_t)off);
		if (m != (ssize_t)bytes) /* a short write to a regular file: the disk is full */
			return m < 0 ? journal_io_error() : TALLY_ENOSPC;
		s->len = off + bytes;
	}
	return 0;
}

int journal_flush(struct journal *j)
{
	assert(j != NULL);
	pthread_mutex_lock(&j->lock);
	int rc = 0;
	for (size_t i = 0; rc == 0 && i < j->n_pending;) {
		size_t end = i + 1;
		while (end < j->n_pending && j->pending[end].first == j->pending[i].first)
			end++;
		rc = write_run(j, i, end);
		i = end;
	}
	pthread_mutex_unlock(&j->lock);
	return rc;
}

int journal_settle(struct journal *j, bool committed)
{
	assert(j != NULL);
	int rc = 0;
	if (committed) {
		j->commit_seq += j->n_pending;
		pthread_mutex_lock(&j->lock); /* jsnap_write reads where it is */
		j->commit_first = j->tail_first;
		j->commit_end = j->tail_end;
		seg_files_close(j);
		pthread_mutex_unlock(&j->lock);
	} else if (j->n_pending > 0) {
		/* What the batch wrote is past every row LMDB holds: cut it off, so that the
		 * next batch writes those records again from the same place. */
		rc = cut_to(j, j->commit_first, j->commit_end);
		j->tail_first = j->commit_first;
		j->tail_end = j->commit_end;
	}
	j->n_pending = 0;
	journal_writing = NULL;
	for (struct journal_chunk *c = j->chunks; c != NULL; c = c->next)
		c->used = 0;
	j->chunk_at = j->chunks;
	return rc;
}

void journal_tail(struct journal *j, uint64_t *first, uint64_t *end)
{
	assert(j != NULL && first != NULL && end != NULL);
	pthread_mutex_lock(&j->lock);
	*first = j->commit_first;
	*end = j->commit_end;
	pthread_mutex_unlock(&j->lock);
}

int journal_seg_open_read(const struct journal *j, uint64_t first)
{
	assert(j != NULL);
	char path[sizeof(j->dir) + SEG_NAME_BYTES];
	if (journal_seg_path(j, first, path, sizeof(path)) != 0) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return open(path, O_RDONLY | O_CLOEXEC);
}

int journal_pending_read(const struct journal *j, uint64_t seq, MDB_val *raw)
{
	assert(j != NULL && raw != NULL);
	if (journal_writing != j || seq <= j->commit_seq || seq - j->commit_seq > j->n_pending)
		return TALLY_ENOTFOUND;
	const struct journal_pending *p = &j->pending[seq - j->commit_seq - 1];
	raw->mv_data = p->bytes + JOURNAL_RECORD_HEAD;
	raw->mv_size = (size_t)(p->n - JOURNAL_RECORD_HEAD);
	return 0;
}

int journal_row_key(struct journal *j, uint64_t seq, uint64_t *key)
{
	assert(j != NULL && key != NULL);
	pthread_mutex_lock(&j->lock);
	size_t after = seg_lower_bound(j, seq + 1); /* the first segment starting after seq */
	uint64_t first = after > 0 ? j->segs[after - 1].first : 0;
	pthread_mutex_unlock(&j->lock);
	if (first == 0)
		return TALLY_ENOTFOUND;
	uint64_t stride = seq - seq % JOURNAL_INDEX_STRIDE;
	*key = stride > first ? stride : first;
	return 0;
}

int journal_read_after(struct journal *j, uint64_t seq, const MDB_val *prev, MDB_val *raw)
{
	assert(j != NULL && prev != NULL && raw != NULL);
	const uint8_t *p = (const uint8_t *)prev->mv_data + prev->mv_size;
	uintptr_t at = (uintptr_t)p; /* prev may lie in no segment: compared as addresses */
	pthread_mutex_lock(&j->lock);
	size_t lo = seg_lower_bound(j, seq); /* after the segment holding seq - 1's record */
	const struct journal_seg *s = lo > 0 ? &j->segs[lo - 1] : NULL;
	uintptr_t base = s != NULL ? (uintptr_t)s->base : 0;
	bool same = s != NULL && (lo == j->n_segs || j->segs[lo].first != seq) && at > base &&
		    at - base <= s->len;
	uint64_t off = same ? (uint64_t)(at - base) : 0;
	uint64_t end = same ? record_end(s, off) : 0;
	pthread_mutex_unlock(&j->lock);
	if (end == 0)
		return TALLY_ENOTFOUND;
	raw->mv_data = (void *)(p + JOURNAL_RECORD_HEAD);
	raw->mv_size = (size_t)(end - off - JOURNAL_RECORD_HEAD);
	return 0;
}

int journal_read(struct journal *j, uint64_t seq, uint64_t key,
		 const uint8_t index[JOURNAL_INDEX_BYTES], MDB_val *raw)
{
	assert(j != NULL && index != NULL && raw != NULL);
	struct record_at at;
	int rc = record_find(j, seq, key, index, &at);
	if (rc != 0)
		return rc;
	raw->mv_data = (void *)(at.base + at.off + JOURNAL_RECORD_HEAD);
	raw->mv_size = (size_t)(at.end - at.off - JOURNAL_RECORD_HEAD);
	return 0;
}
