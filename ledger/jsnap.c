/*
 * The journal in a snapshot: the section after LMDB's copy that says where every
 * segment's bytes are, and the appendix that carries referenced segments to a node
 * that has none of them.
 *
 * The section is, per segment in order, a header of 24 bytes (magic, first seq,
 * length) followed by either the segment's bytes padded to 8 (SECTION_INLINE) or its
 * SHA-256 (SECTION_REF: the bytes are elsewhere), then a footer (magic, count, the
 * section's length with the footer). The seal after it (check.c) covers the copy and
 * the section, so a reference's hash is as sound as an inlined segment's bytes.
 *
 * A reference is resolved from the appendix of the same buffer, when a sender put one
 * after the seal, and otherwise from the node's links directory: `<first seq>.seg`,
 * hard links to closed segments that jsnap_write made (the same bytes on every
 * replica). An appendix is the carried segments' bytes, each padded to 8, in the
 * section's order, then
 *   - APPENDIX_MAGIC: a footer (magic, count, the appendix's length with the footer):
 *     it carries every reference;
 *   - APPENDIX_SOME_MAGIC: the first seq (be64) of each carried reference, then the
 *     same footer: the others are segments the receiver said it holds (its have-list,
 *     tally_ledger_segments_held), and resolve only from a link whose sidecar names
 *     the reference's hash.
 * Bytes from an appendix are checked against their hash; a link is this node's own
 * synced file, checked for its length, and every entry in it is checked again by the
 * full check after a restore.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ledger/internal.h"

#define SECTION_INLINE "TJSEG1\0\0"
#define SECTION_REF "TJREF1\0\0"
#define SECTION_MAGIC "TJOURNL1"
#define APPENDIX_MAGIC "TJAPPND1"      /* carries every reference */
#define APPENDIX_SOME_MAGIC "TJAPPND2" /* carries the references it lists */
#define SECTION_HEAD_BYTES 24
#define SECTION_FOOTER_BYTES 24
#define APPENDIX_FOOTER_BYTES 24
#define SHA_BYTES 32

static uint64_t pad8(uint64_t n)
{
	return (n + 7) & ~(uint64_t)7;
}

static const uint8_t zeros[8];

/* ---- writing ---------------------------------------------------------------------- */

/* Copies segment s's first len bytes to offset off of fd: by copy_file_range, in the
 * kernel from page cache to page cache, or where the file systems do not allow it
 * from the segment's mapping. */
static int seg_copy(const struct journal *j, const struct journal_seg *s, uint64_t len, int fd,
		    uint64_t off)
{
	char path[sizeof(j->dir) + 32];
	int in = journal_seg_path(j, s->first, path, sizeof(path)) == 0
			 ? open(path, O_RDONLY | O_CLOEXEC)
			 : -1;
	loff_t from = 0, to = (loff_t)off;
	while (in >= 0 && (uint64_t)from < len) {
		ssize_t m = copy_file_range(in, &from, fd, &to, (size_t)(len - (uint64_t)from), 0);
		if (m < 0 && errno == EINTR)
			continue;
		if (m == 0) { /* shorter than its committed records: never read past its end */
			close(in);
			return TALLY_ECORRUPT;
		}
		if (m < 0)
			break; /* EXDEV, ENOSYS, EINVAL ...: the rest from the mapping */
	}
	if (in >= 0)
		close(in);
	return journal_write_at(fd, s->base + from, (size_t)(len - (uint64_t)from), (uint64_t)to);
}

/* The hash in a link's sidecar, when it holds one whole. */
static bool sidecar_read(const char *sidecar, uint8_t sha[SHA_BYTES])
{
	int fd = open(sidecar, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	uint8_t buf[SHA_BYTES + 1];
	ssize_t got = pread(fd, buf, sizeof(buf), 0);
	close(fd);
	if (got != SHA_BYTES)
		return false;
	memcpy(sha, buf, SHA_BYTES);
	return true;
}

/* What the node's link of segment `first` holds by its sidecar's word: the hash the
 * sidecar names and the link's length; false where there is no link or no whole
 * sidecar. */
static bool link_read(const char *links_dir, uint64_t first, uint8_t sha[SHA_BYTES],
		      uint64_t *len)
{
	char name[4096], sidecar[4096];
	struct stat st;
	if (links_dir == NULL || journal_seg_name(links_dir, first, "", name, sizeof(name)) != 0 ||
	    journal_seg_name(links_dir, first, ".sha256", sidecar, sizeof(sidecar)) != 0 ||
	    !sidecar_read(sidecar, sha) || stat(name, &st) != 0)
		return false;
	*len = (uint64_t)st.st_size;
	return true;
}

/* The hash a link's sidecar (`<name>.sha256`, written once the link was made and
 * synced) keeps for it, when the link is still a name of the journal's own file at
 * path: then the segment is durable and linked already, and its hash need not be
 * computed again after a restart. */
static bool link_known(const char *path, const char *name, const char *sidecar,
		       uint8_t sha[SHA_BYTES])
{
	struct stat a, b;
	if (stat(path, &a) != 0 || stat(name, &b) != 0 || a.st_ino != b.st_ino ||
	    a.st_dev != b.st_dev)
		return false;
	return sidecar_read(sidecar, sha);
}

/* Links `path` as `name` (through a temporary name, replacing a link of another
 * file that an earlier history left), after syncing it. */
static int link_make(const char *path, const char *tmp, const char *name)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int rc = fd >= 0 && fsync(fd) == 0 ? 0 : journal_io_error(); /* stepped: journal_sync */
	if (fd >= 0)
		close(fd);
	if (rc != 0)
		return rc;
	unlink(tmp); /* what an earlier attempt left */
	if (link(path, tmp) != 0 || rename(tmp, name) != 0)
		return errno == EXDEV ? TALLY_ESTATE : journal_io_error();
	return 0;
}

static _Atomic uint64_t linked_count, linked_bytes; /* by this process */

uint64_t tally_ledger_segments_linked(uint64_t *bytes)
{
	if (bytes != NULL)
		*bytes = atomic_load_explicit(&linked_bytes, memory_order_relaxed);
	return atomic_load_explicit(&linked_count, memory_order_relaxed);
}

/* A closed segment made durable and named in links_dir once: synced, hashed, and
 * hard-linked, its hash kept beside the link (a later process reads it instead of
 * hashing the segment again). *s is the caller's copy; the table learns it too. */
static int seg_link(struct journal *j, struct journal_seg *s, const char *links_dir)
{
	char path[sizeof(j->dir) + 32], tmp[4096], name[4096], sidecar[4096];
	int rc = journal_seg_path(j, s->first, path, sizeof(path));
	if (rc == 0)
		rc = journal_seg_name(links_dir, s->first, ".tmp", tmp, sizeof(tmp));
	if (rc == 0)
		rc = journal_seg_name(links_dir, s->first, "", name, sizeof(name));
	if (rc == 0)
		rc = journal_seg_name(links_dir, s->first, ".sha256", sidecar, sizeof(sidecar));
	if (rc != 0)
		return rc;
	if (!link_known(path, name, sidecar, s->sha)) {
		unlink(sidecar); /* of an earlier file by that name, if any */
		rc = link_make(path, tmp, name);
		if (rc != 0)
			return rc;
		const void *parts[1] = {s->base};
		size_t lens[1] = {(size_t)s->len};
		sha256_parts(parts, lens, 1, s->sha);
		int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		rc = fd >= 0 ? journal_write_at(fd, s->sha, SHA_BYTES, 0) : journal_io_error();
		if (rc == 0 && fdatasync(fd) != 0) /* a sidecar is read only whole and synced */
			rc = journal_io_error();
		if (fd >= 0 && close(fd) != 0 && rc == 0)
			rc = journal_io_error();
		if (rc == 0 && rename(tmp, sidecar) != 0)
			rc = journal_io_error();
		if (rc != 0)
			return rc;
		atomic_fetch_add_explicit(&linked_count, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&linked_bytes, s->len, memory_order_relaxed);
	}
	s->linked = s->hashed = true;
	pthread_mutex_lock(&j->lock);
	struct journal_seg *t = journal_seg_find(j, s->first);
	if (t != NULL) {
		memcpy(t->sha, s->sha, SHA_BYTES);
		t->linked = t->hashed = true;
	}
	pthread_mutex_unlock(&j->lock);
	return 0;
}

/* ---- what a node holds: its have-list ------------------------------------------ */

int tally_ledger_segments_held(const char *links_dir, struct tally_segment_held **out,
			       size_t *n)
{
	assert(links_dir != NULL && out != NULL && n != NULL);
	*out = NULL;
	*n = 0;
	uint64_t *firsts;
	size_t count;
	int rc = journal_seg_list(links_dir, &firsts, &count);
	struct tally_segment_held *h = rc == 0 && count > 0 ? malloc(count * sizeof(*h)) : NULL;
	if (rc == 0 && count > 0 && h == NULL)
		rc = TALLY_ENOMEM;
	size_t held = 0;
	for (size_t i = 0; rc == 0 && i < count; i++) /* a link its sidecar vouches for */
		if (link_read(links_dir, firsts[i], h[held].sha, &h[held].len))
			h[held++].first = firsts[i];
	free(firsts);
	if (rc != 0)
		return rc;
	*out = h;
	/* at most the oldest: a follower that fell behind holds those */
	*n = held < TALLY_LEDGER_HELD_MAX ? held : TALLY_LEDGER_HELD_MAX;
	return 0;
}

static int dir_sync(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc = fd >= 0 && fsync(fd) == 0 ? 0 : journal_io_error();
	if (fd >= 0)
		close(fd);
	return rc;
}

/* The segments up to the last committed record, in a new array: bytes no batch writes
 * again and no failed one cuts (past them, a failed batch's records may be cut, or a
 * segment it opened unmapped, while a snapshot is written). */
static int committed_segments(struct journal *j, struct journal_seg **out, size_t *count)
{
	pthread_mutex_lock(&j->lock);
	size_t n = 0;
	while (n < j->n_segs && j->segs[n].first <= j->commit_first)
		n++;
	struct journal_seg *segs = n > 0 ? malloc(n * sizeof(*segs)) : NULL;
	if (segs != NULL) {
		memcpy(segs, j->segs, n * sizeof(*segs));
		segs[n - 1].len = j->commit_end;
	}
	pthread_mutex_unlock(&j->lock);
	*out = segs;
	*count = segs != NULL ? n : 0;
	return n > 0 && segs == NULL ? TALLY_ENOMEM : 0;
}

/* One segment's entry of the section at off; *bytes: how many it took. */
static int section_entry_write(struct journal *j, const struct journal_seg *s, bool ref, int fd,
			       uint64_t off, uint64_t *bytes)
{
	uint8_t h[SECTION_HEAD_BYTES + SHA_BYTES];
	memcpy(h, ref ? SECTION_REF : SECTION_INLINE, 8);
	be64_put(h + 8, s->first);
	be64_put(h + 16, s->len);
	if (ref) {
		memcpy(h + SECTION_HEAD_BYTES, s->sha, SHA_BYTES);
		*bytes = sizeof(h);
		return journal_write_at(fd, h, sizeof(h), off);
	}
	*bytes = SECTION_HEAD_BYTES + pad8(s->len);
	int rc = journal_write_at(fd, h, SECTION_HEAD_BYTES, off);
	if (rc == 0)
		rc = seg_copy(j, s, s->len, fd, off + SECTION_HEAD_BYTES);
	if (rc == 0)
		rc = journal_write_at(fd, zeros, pad8(s->len) - s->len, off + SECTION_HEAD_BYTES + s->len);
	return rc;
}

/* Closed segment s linked unless it is already (seg_link); *ref false where links
 * cannot be made (another file system: the segment is then inlined), *linked_now set
 * when a link was made. */
static int seg_link_once(struct journal *j, struct journal_seg *s, const char *links_dir,
			 bool *ref, bool *linked_now)
{
	/* A snapshot's thread and a restore's check may link at once, and a link is made
	 * through temporary names: one at a time (the second finds it made). */
	static pthread_mutex_t one_at_a_time = PTHREAD_MUTEX_INITIALIZER;
	if (s->hashed)
		return 0;
	pthread_mutex_lock(&one_at_a_time);
	int rc = seg_link(j, s, links_dir);
	pthread_mutex_unlock(&one_at_a_time);
	if (rc == 0)
		*linked_now = true;
	if (rc == TALLY_ESTATE) { /* no link across file systems */
		*ref = false;
		rc = 0;
	}
	return rc;
}

int jsnap_link_closed(struct journal *j, const char *links_dir)
{
	assert(j != NULL && links_dir != NULL);
	size_t count;
	struct journal_seg *segs;
	int rc = committed_segments(j, &segs, &count);
	bool linked_now = false, ref = true;
	for (size_t i = 0; rc == 0 && i + 1 < count; i++) /* not the last: it may grow */
		rc = seg_link_once(j, &segs[i], links_dir, &ref, &linked_now);
	free(segs);
	if (rc == 0 && linked_now)
		rc = dir_sync(links_dir);
	return rc;
}

int jsnap_write(struct journal *j, int fd, uint64_t at, const char *links_dir,
		uint64_t *written)
{
	assert(j != NULL && fd >= 0 && written != NULL);
	size_t count;
	struct journal_seg *segs;
	int rc = committed_segments(j, &segs, &count);
	if (rc != 0)
		return rc;
	bool linked_now = false;
	uint64_t off = at;
	for (size_t i = 0; rc == 0 && i < count; i++) {
		/* The last committed segment may still grow: always its bytes. */
		bool ref = links_dir != NULL && i + 1 < count;
		if (ref)
			rc = seg_link_once(j, &segs[i], links_dir, &ref, &linked_now);
		uint64_t n = 0;
		if (rc == 0)
			rc = section_entry_write(j, &segs[i], ref, fd, off, &n);
		off += n;
	}
	free(segs);
	if (rc == 0 && linked_now)
		rc = dir_sync(links_dir); /* the links' names before a snapshot names them */
	uint8_t f[SECTION_FOOTER_BYTES];
	memcpy(f, SECTION_MAGIC, 8);
	be64_put(f + 8, count);
	be64_put(f + 16, off + sizeof(f) - at);
	if (rc == 0)
		rc = journal_write_at(fd, f, sizeof(f), off);
	*written = off + sizeof(f) - at;
	return rc;
}

/* ---- reading ---------------------------------------------------------------------- */

/* The length of the part of buf[0..len) that ends with a 24-byte footer of `magic`
 * (magic, count, the part's length with the footer), or 0 when it does not end so. */
static size_t footed_part(const uint8_t *buf, size_t len, const char *magic)
{
	if (len < SECTION_FOOTER_BYTES)
		return 0;
	const uint8_t *f = buf + len - SECTION_FOOTER_BYTES;
	uint64_t bytes = be64_get(f + 16);
	if (memcmp(f, magic, 8) != 0 || bytes < SECTION_FOOTER_BYTES || bytes > len)
		return 0;
	return (size_t)bytes;
}

size_t jsnap_find(const uint8_t *sealed, size_t len)
{
	return len - footed_part(sealed, len, SECTION_MAGIC);
}

size_t jsnap_appendix_split(const uint8_t *snap, size_t len, const uint8_t **appendix,
			    size_t *appendix_len)
{
	_Static_assert(APPENDIX_FOOTER_BYTES == SECTION_FOOTER_BYTES, "one footer layout");
	*appendix_len = footed_part(snap, len, APPENDIX_MAGIC);
	if (*appendix_len == 0)
		*appendix_len = footed_part(snap, len, APPENDIX_SOME_MAGIC);
	*appendix = *appendix_len > 0 ? snap + len - *appendix_len : NULL;
	return len - *appendix_len;
}

/* One entry of a section: a segment and where its bytes are. */
struct section_entry {
	uint64_t first, len;
	const uint8_t *bytes; /* inline, or resolved from the appendix; NULL: a link */
	const uint8_t *sha;   /* a reference's */
	bool unvouched;       /* WALK_CHECK: not carried, and no link of this node vouches */
};

/* What a walk is for. */
enum walk_mode {
	WALK_RESTORE, /* carried bytes checked against their hashes (or the node's own link
		       * taken); a reference not carried must resolve from a vouching link */
	WALK_CHECK,   /* whether the references resolve: nothing hashed */
	WALK_SEND     /* a sender's: carried bytes taken as they are, the rest its links */
};

struct section_walk {
	enum walk_mode mode;
	const uint8_t *section;
	size_t at, body;
	uint64_t count, done, last_first;
	const uint8_t *appendix; /* the next referenced segment's bytes in it */
	size_t appendix_left;
	const uint8_t *carried;  /* APPENDIX_SOME_MAGIC: the next carried first seq; NULL:
				  * the appendix carries every reference */
	uint64_t carried_left;
	const char *links_dir;   /* the node's links, or NULL */
};

/* The appendix's parts: bytes, then (APPENDIX_SOME_MAGIC) the carried first seqs. */
static int walk_appendix_start(struct section_walk *w, const struct jsnap_source *src)
{
	size_t body = src->appendix_len - APPENDIX_FOOTER_BYTES;
	const uint8_t *f = src->appendix + body;
	if (memcmp(f, APPENDIX_SOME_MAGIC, 8) == 0) {
		uint64_t carried = be64_get(f + 8);
		if (carried > body / 8)
			return TALLY_ECORRUPT;
		body -= (size_t)carried * 8;
		w->carried = src->appendix + body;
		w->carried_left = carried;
	}
	w->appendix = src->appendix;
	w->appendix_left = body;
	return 0;
}

static int walk_start(struct section_walk *w, const uint8_t *section, size_t len,
		      const struct jsnap_source *src, enum walk_mode mode)
{
	memset(w, 0, sizeof(*w));
	w->mode = mode;
	if (len == 0)
		return 0; /* a snapshot with every entry inside LMDB */
	if (len < SECTION_FOOTER_BYTES)
		return TALLY_ECORRUPT;
	w->section = section;
	w->body = len - SECTION_FOOTER_BYTES;
	w->count = be64_get(section + w->body + 8);
	w->links_dir = src != NULL ? src->links_dir : NULL;
	return src != NULL && src->appendix != NULL ? walk_appendix_start(w, src) : 0;
}

/* Whether the node's own link of segment e holds the bytes e's hash names: its
 * sidecar, written once the link was made, synced and hashed (seg_link; a link is
 * never written again), says that hash, and its length is e's. */
static bool link_vouches(const char *links_dir, const struct section_entry *e)
{
	uint8_t sha[SHA_BYTES];
	uint64_t len;
	return link_read(links_dir, e->first, sha, &len) && memcmp(sha, e->sha, SHA_BYTES) == 0 &&
	       len == e->len;
}

/* Whether the appendix carries reference e (then its next bytes are e's). */
static bool walk_carries(struct section_walk *w, const struct section_entry *e)
{
	if (w->carried == NULL)
		return true;
	if (w->carried_left == 0 || be64_get(w->carried) != e->first)
		return false;
	w->carried += 8;
	w->carried_left--;
	return true;
}

/* A reference's bytes from the appendix, checked against its hash when restoring; or,
 * where the node's own link holds those bytes already (a follower that fell behind
 * has every segment it had), the link, the appendix's copy passed over unread. */
static int walk_appendix(struct section_walk *w, struct section_entry *e)
{
	if (pad8(e->len) > w->appendix_left)
		return TALLY_ECORRUPT;
	const uint8_t *bytes = w->appendix;
	w->appendix += pad8(e->len);
	w->appendix_left -= (size_t)pad8(e->len);
	if (w->mode != WALK_RESTORE) {
		e->bytes = bytes;
		return 0;
	}
	if (link_vouches(w->links_dir, e))
		return 0;
	uint8_t sha[SHA_BYTES];
	const void *parts[1] = {bytes};
	size_t lens[1] = {(size_t)e->len};
	sha256_parts(parts, lens, 1, sha);
	if (memcmp(sha, e->sha, SHA_BYTES) != 0)
		return TALLY_ECORRUPT;
	e->bytes = bytes;
	return 0;
}

/* A reference the appendix leaves out: one the receiver said it holds, so only its
 * own link whose sidecar names the reference's hash resolves it (a sender's walk
 * leaves it to the sender's links). */
static int walk_held(struct section_walk *w, struct section_entry *e)
{
	if (w->mode == WALK_SEND || link_vouches(w->links_dir, e))
		return 0;
	e->unvouched = true;
	return w->mode == WALK_CHECK ? 0 : TALLY_ECORRUPT;
}

/* The next entry (1), or the end (0) once the section and appendix were all used. */
static int walk_next(struct section_walk *w, struct section_entry *e)
{
	if (w->done == w->count)
		return w->at == w->body && (w->appendix == NULL || w->appendix_left == 0) &&
			       w->carried_left == 0
			       ? 0
			       : -TALLY_ECORRUPT;
	const uint8_t *h = w->section + w->at;
	if (w->body - w->at < SECTION_HEAD_BYTES)
		return -TALLY_ECORRUPT;
	bool ref = memcmp(h, SECTION_REF, 8) == 0;
	if (!ref && memcmp(h, SECTION_INLINE, 8) != 0)
		return -TALLY_ECORRUPT;
	memset(e, 0, sizeof(*e));
	e->first = be64_get(h + 8);
	e->len = be64_get(h + 16);
	if (e->first <= w->last_first)
		return -TALLY_ECORRUPT;
	w->at += SECTION_HEAD_BYTES;
	uint64_t take = ref ? SHA_BYTES : pad8(e->len);
	if (e->len > JOURNAL_RECORD_MAX + JOURNAL_SEGMENT_BYTES || take > w->body - w->at)
		return -TALLY_ECORRUPT; /* (pad8 of a length near 2^64 would wrap) */
	if (ref)
		e->sha = w->section + w->at;
	else
		e->bytes = w->section + w->at;
	w->at += (size_t)take;
	w->last_first = e->first;
	w->done++;
	int rc = !ref || w->appendix == NULL ? 0
		 : walk_carries(w, e)	     ? walk_appendix(w, e)
					     : walk_held(w, e);
	return rc != 0 ? -rc : 1;
}

/* The link of a referenced segment, opened and checked for its length. */
static int link_open(const char *links_dir, const struct section_entry *e, int *fd)
{
	char path[4096];
	*fd = -1;
	if (links_dir == NULL || journal_seg_name(links_dir, e->first, "", path, sizeof(path)) != 0)
		return TALLY_ECORRUPT; /* a reference with nowhere to resolve it */
	*fd = open(path, O_RDONLY | O_CLOEXEC);
	if (*fd < 0)
		return errno == ENOENT ? TALLY_ECORRUPT : journal_io_error();
	struct stat st;
	if (fstat(*fd, &st) != 0 || (uint64_t)st.st_size != e->len) {
		close(*fd);
		*fd = -1;
		return TALLY_ECORRUPT;
	}
	return 0;
}

/* The link of a referenced segment, checked for its length and mapped read-only. */
static int link_map(const char *links_dir, const struct section_entry *e, void **base)
{
	int fd;
	*base = NULL;
	int rc = link_open(links_dir, e, &fd);
	if (rc != 0)
		return rc;
	void *p = mmap(NULL, (size_t)e->len, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return TALLY_EIO; /* (as for a segment of no bytes) */
	*base = p;
	return 0;
}

int jsnap_open(struct journal *j, const uint8_t *section, size_t len,
	       const struct jsnap_source *src)
{
	assert(j != NULL && (section != NULL || len == 0));
	memset(j, 0, sizeof(*j));
	pthread_mutex_init(&j->lock, NULL);
	j->segment_bytes = JOURNAL_SEGMENT_BYTES;
	struct section_walk w;
	int rc = walk_start(&w, section, len, src, WALK_RESTORE);
	struct section_entry e;
	int more;
	while (rc == 0 && (more = walk_next(&w, &e)) != 0) {
		if (more < 0)
			return -more;
		if (e.bytes != NULL) {
			rc = journal_seg_add(j, e.first, -1, (uint8_t *)e.bytes, (size_t)e.len, e.len,
					     false);
			continue;
		}
		void *base;
		rc = link_map(src != NULL ? src->links_dir : NULL, &e, &base);
		if (rc == 0)
			rc = journal_seg_add(j, e.first, -1, base, (size_t)e.len, e.len, true);
	}
	return rc;
}

/* A referenced segment into the staged journal: a second link to the node's own. */
static int unpack_link(const char *links_dir, const struct section_entry *e, const char *path)
{
	int fd;
	int rc = link_open(links_dir, e, &fd);
	if (fd >= 0)
		close(fd);
	char from[4096];
	if (rc == 0)
		rc = journal_seg_name(links_dir, e->first, "", from, sizeof(from));
	if (rc == 0 && link(from, path) != 0)
		rc = journal_io_error();
	return rc;
}

int jsnap_unpack(const uint8_t *section, size_t len, const struct jsnap_source *src,
		 const char *ledger_dir)
{
	struct journal w;
	struct section_walk walk;
	int rc = walk_start(&walk, section, len, src, WALK_RESTORE);
	if (rc == 0)
		rc = journal_open(&w, ledger_dir, true, 0);
	struct section_entry e;
	int more;
	while (rc == 0 && (more = walk_next(&walk, &e)) != 0) {
		if (more < 0) {
			rc = -more;
			break;
		}
		char path[sizeof(w.dir) + 32];
		rc = journal_seg_path(&w, e.first, path, sizeof(path));
		if (rc == 0)
			rc = e.bytes != NULL ? journal_file_write(path, e.bytes, (size_t)e.len)
					     : unpack_link(src != NULL ? src->links_dir : NULL, &e, path);
	}
	journal_close(&w);
	return rc;
}

int jsnap_unresolved(const uint8_t *section, size_t len, const struct jsnap_source *src,
		     char *name, size_t cap)
{
	assert(name != NULL && cap > 0);
	name[0] = '\0';
	struct section_walk w;
	struct section_entry e;
	int more = walk_start(&w, section, len, src, WALK_CHECK) == 0 ? 1 : -1;
	while (more > 0 && (more = walk_next(&w, &e)) > 0) {
		int fd = -1;
		if (e.bytes == NULL && (e.unvouched || link_open(src->links_dir, &e, &fd) != 0)) {
			snprintf(name, cap, "%s/%020" PRIu64 ".seg (%" PRIu64 " bytes%s)",
				 src->links_dir != NULL ? src->links_dir : "(no links)", e.first, e.len,
				 e.unvouched ? ", said to be held" : "");
			return e.unvouched ? 2 : 1;
		}
		if (fd >= 0)
			close(fd);
	}
	return 0;
}

/* ---- the appendix a sender puts after a snapshot ---------------------------------- */

uint64_t jsnap_referenced_bytes(const uint8_t *section, size_t len)
{
	struct section_walk w;
	struct section_entry e;
	uint64_t bytes = 0;
	int more = walk_start(&w, section, len, NULL, WALK_SEND) == 0 ? 1 : 0;
	while (more > 0 && (more = walk_next(&w, &e)) > 0)
		if (e.bytes == NULL)
			bytes += pad8(e.len);
	return bytes > 0 ? bytes + APPENDIX_FOOTER_BYTES : 0;
}

void tally_ledger_snapshot_appendix_free(struct tally_snapshot_appendix *a)
{
	if (a == NULL)
		return;
	for (size_t i = 0; i < a->n_maps; i++)
		munmap((void *)a->maps[i].base, a->maps[i].len);
	free(a->maps);
	free(a->pieces);
	free(a->carried);
	memset(a, 0, sizeof(*a));
}

/* Adds a piece (and, for a mapping, the mapping to undo). */
static int appendix_add(struct tally_snapshot_appendix *a, const void *base, size_t len,
			bool mapped)
{
	size_t cap = a->n_pieces + 1;
	struct tally_snapshot_piece *p = realloc(a->pieces, cap * sizeof(*p));
	if (p == NULL)
		return TALLY_ENOMEM;
	a->pieces = p;
	a->pieces[a->n_pieces++] = (struct tally_snapshot_piece){base, len};
	a->bytes += len;
	if (!mapped)
		return 0;
	struct tally_snapshot_piece *m = realloc(a->maps, (a->n_maps + 1) * sizeof(*m));
	if (m == NULL)
		return TALLY_ENOMEM;
	a->maps = m;
	a->maps[a->n_maps++] = (struct tally_snapshot_piece){base, len};
	return 0;
}

/* Whether held (sorted by first seq) names segment e: its first seq, length and hash. */
static bool held_names(const struct tally_segment_held *held, size_t n,
		       const struct section_entry *e)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (held[mid].first < e->first)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && held[lo].first == e->first && held[lo].len == e->len &&
	       memcmp(held[lo].sha, e->sha, SHA_BYTES) == 0;
}

/* Reference e's bytes as pieces: from the snapshot's own appendix, or mapped from the
 * sender's link; then its padding. */
static int appendix_carry(struct tally_snapshot_appendix *a, const struct section_entry *e,
			  const char *links_dir)
{
	int rc = 0;
	if (e->bytes != NULL) {
		rc = appendix_add(a, e->bytes, (size_t)e->len, false);
	} else if (e->len > 0) {
		void *base;
		rc = link_map(links_dir, e, &base);
		if (rc == 0)
			rc = appendix_add(a, base, (size_t)e->len, true);
	}
	if (rc == 0)
		rc = appendix_add(a, zeros, (size_t)(pad8(e->len) - e->len), false);
	return rc;
}

/* Notes a carried reference's first seq for the list an APPENDIX_SOME_MAGIC appendix
 * ends with. */
static int appendix_list(struct tally_snapshot_appendix *a, uint64_t carried, uint64_t first)
{
	if ((carried & (carried - 1)) == 0) { /* 0, 1, 2, 4, ...: room for twice as many */
		uint8_t *l = realloc(a->carried, (size_t)(carried > 0 ? 2 * carried : 1) * 8);
		if (l == NULL)
			return TALLY_ENOMEM;
		a->carried = l;
	}
	be64_put(a->carried + carried * 8, first);
	return 0;
}

int jsnap_appendix(const uint8_t *section, size_t len, const struct jsnap_source *src,
		   const struct tally_segment_held *held, size_t n_held,
		   struct tally_snapshot_appendix *a)
{
	assert(src != NULL && a != NULL && (held != NULL || n_held == 0));
	struct section_walk w;
	int rc = walk_start(&w, section, len, src, WALK_SEND);
	struct section_entry e;
	int more;
	uint64_t refs = 0, carried = 0;
	while (rc == 0 && (more = walk_next(&w, &e)) != 0) {
		if (more < 0)
			return -more;
		if (e.sha == NULL)
			continue; /* inline */
		refs++;
		if (held_names(held, n_held, &e)) { /* the receiver has it: not sent */
			a->held++;
			a->held_bytes += e.len;
			continue;
		}
		rc = appendix_carry(a, &e, src->links_dir);
		if (rc == 0)
			rc = appendix_list(a, carried, e.first);
		carried++;
	}
	if (rc != 0 || refs == 0)
		return rc; /* nothing referenced: no appendix */
	if (a->held > 0 && carried > 0)
		rc = appendix_add(a, a->carried, (size_t)carried * 8, false);
	memcpy(a->footer, a->held > 0 ? APPENDIX_SOME_MAGIC : APPENDIX_MAGIC, 8);
	be64_put(a->footer + 8, carried);
	be64_put(a->footer + 16, a->bytes + APPENDIX_FOOTER_BYTES);
	if (rc == 0)
		rc = appendix_add(a, a->footer, APPENDIX_FOOTER_BYTES, false);
	return rc;
}
