/*
 * tally-audit's journal files: DIR/journal/<first seq>.journal, records of
 * `uint32 big-endian length ‖ entry bytes`, AUDIT_FILE_ENTRIES per file (audit.h).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tools/audit/audit.h"

static void file_path(const char *dir, uint64_t first, char *out, size_t cap)
{
	snprintf(out, cap, "%s/%016" PRIu64 ".journal", dir, first);
}

static uint64_t file_first_of(uint64_t seq)
{
	return (seq - 1) / AUDIT_FILE_ENTRIES * AUDIT_FILE_ENTRIES + 1;
}

/* The first seq of the last journal file in dir (0: none); -1 on a name that is not
 * one of ours at a file boundary. */
static int last_file(const char *dir, uint64_t *out, char *err, size_t errcap)
{
	*out = 0;
	DIR *d = opendir(dir);
	if (d == NULL) {
		snprintf(err, errcap, "%s: %s", dir, strerror(errno));
		return -1;
	}
	int rc = 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		unsigned long long first;
		char tail[16];
		if (e->d_name[0] == '.' || sscanf(e->d_name, "%16llu.%15s", &first, tail) != 2 ||
		    strcmp(tail, "journal") != 0)
			continue;
		if (first == 0 || file_first_of(first) != first) {
			snprintf(err, errcap, "%s/%s: not at a file boundary (%u entries per file)",
				 dir, e->d_name, AUDIT_FILE_ENTRIES);
			rc = -1;
			break;
		}
		if (first > *out)
			*out = first;
	}
	closedir(d);
	return rc;
}

/* ---- writing ------------------------------------------------------------------------- */

/* Counts the whole records of an open file; cuts a torn last one off. */
static int count_records(FILE *f, const char *path, uint64_t *n, char *err, size_t errcap)
{
	*n = 0;
	long good = 0;
	uint8_t h[4];
	for (;;) {
		if (fseek(f, good, SEEK_SET) != 0)
			break;
		if (fread(h, 1, 4, f) != 4)
			break;
		uint32_t len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
		if (len == 0 || len > AUDIT_ENTRY_BYTES_MAX || fseek(f, (long)len, SEEK_CUR) != 0)
			break;
		long end = ftell(f);
		struct stat st;
		if (fstat(fileno(f), &st) != 0 || end > st.st_size)
			break;
		good = end;
		++*n;
	}
	if (ftruncate(fileno(f), good) != 0 || fseek(f, good, SEEK_SET) != 0) {
		snprintf(err, errcap, "%s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

int audit_writer_open(const char *dir, struct audit_writer *w, char *err, size_t errcap)
{
	memset(w, 0, sizeof(*w));
	snprintf(w->dir, sizeof(w->dir), "%s/journal", dir);
	if ((mkdir(dir, 0755) != 0 && errno != EEXIST) || (mkdir(w->dir, 0755) != 0 && errno != EEXIST)) {
		snprintf(err, errcap, "%s: %s", w->dir, strerror(errno));
		return -1;
	}
	uint64_t first;
	if (last_file(w->dir, &first, err, errcap) != 0)
		return -1;
	w->next_seq = 1;
	if (first == 0)
		return 0;
	char path[AUDIT_PATH_BYTES + 32];
	file_path(w->dir, first, path, sizeof(path));
	w->f = fopen(path, "r+");
	uint64_t n = 0;
	if (w->f == NULL || count_records(w->f, path, &n, err, errcap) != 0) {
		if (w->f == NULL)
			snprintf(err, errcap, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (n > AUDIT_FILE_ENTRIES) {
		snprintf(err, errcap, "%s: %" PRIu64 " records, more than a file holds", path, n);
		return -1;
	}
	w->next_seq = first + n;
	return 0;
}

static int writer_close_file(struct audit_writer *w, char *err, size_t errcap)
{
	if (w->f == NULL)
		return 0;
	int rc = fflush(w->f) == 0 && fsync(fileno(w->f)) == 0 ? 0 : -1;
	if (rc != 0)
		snprintf(err, errcap, "%s: %s", w->dir, strerror(errno));
	fclose(w->f);
	w->f = NULL;
	return rc;
}

int audit_writer_append(struct audit_writer *w, const void *bytes, size_t len, char *err,
			size_t errcap)
{
	if (len == 0 || len > AUDIT_ENTRY_BYTES_MAX) {
		snprintf(err, errcap, "entry %" PRIu64 ": %zu bytes", w->next_seq, len);
		return -1;
	}
	if (w->f == NULL || file_first_of(w->next_seq) == w->next_seq) {
		if (writer_close_file(w, err, errcap) != 0)
			return -1;
		char path[AUDIT_PATH_BYTES + 32];
		file_path(w->dir, file_first_of(w->next_seq), path, sizeof(path));
		w->f = fopen(path, "a");
		if (w->f == NULL) {
			snprintf(err, errcap, "%s: %s", path, strerror(errno));
			return -1;
		}
	}
	uint8_t h[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len};
	if (fwrite(h, 1, 4, w->f) != 4 || fwrite(bytes, 1, len, w->f) != len) {
		snprintf(err, errcap, "%s: %s", w->dir, strerror(errno));
		return -1;
	}
	w->next_seq++;
	return 0;
}

int audit_writer_close(struct audit_writer *w, char *err, size_t errcap)
{
	return writer_close_file(w, err, errcap);
}

/* ---- reading ------------------------------------------------------------------------- */

static void reader_unmap(struct audit_reader *r)
{
	if (r->map != NULL)
		munmap(r->map, r->map_len);
	r->map = NULL;
	r->map_len = r->at = 0;
}

/* Maps the file that starts at r->next_seq. */
static int reader_map(struct audit_reader *r, char *err, size_t errcap)
{
	reader_unmap(r);
	char path[AUDIT_PATH_BYTES + 32];
	file_path(r->dir, r->next_seq, path, sizeof(path));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0) {
		snprintf(err, errcap, "%s: %s (entries %" PRIu64 "..%" PRIu64 " missing)", path,
			 strerror(errno), r->next_seq, r->next_seq + AUDIT_FILE_ENTRIES - 1);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	r->file_first = r->next_seq;
	r->map_len = (size_t)st.st_size;
	if (r->map_len > 0) {
		void *m = mmap(NULL, r->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
		if (m == MAP_FAILED) {
			snprintf(err, errcap, "%s: %s", path, strerror(errno));
			r->map_len = 0;
			close(fd);
			return -1;
		}
		r->map = m;
		madvise(r->map, r->map_len, MADV_SEQUENTIAL);
	}
	close(fd);
	return 0;
}

int audit_reader_open(const char *dir, struct audit_reader *r, char *err, size_t errcap)
{
	memset(r, 0, sizeof(*r));
	snprintf(r->dir, sizeof(r->dir), "%s/journal", dir);
	r->next_seq = 1;
	return last_file(r->dir, &r->last_first, err, errcap);
}

/* The current file is read to its end: the next one, 0 after the last, or -1 when
 * a file before the last is short (entries missing). */
static int reader_advance(struct audit_reader *r, char *err, size_t errcap)
{
	if (r->file_first != 0) {
		uint64_t held = r->next_seq - r->file_first;
		if (r->file_first == r->last_first)
			return 0;
		if (held < AUDIT_FILE_ENTRIES) {
			snprintf(err, errcap, "journal file %016" PRIu64 ".journal holds %" PRIu64
				 " entries and is not the last: entries %" PRIu64 "..%" PRIu64
				 " are missing", r->file_first, held, r->next_seq,
				 r->file_first + AUDIT_FILE_ENTRIES - 1);
			return -1;
		}
	} else if (r->last_first == 0) {
		return 0; /* no journal files at all */
	}
	return reader_map(r, err, errcap) == 0 ? 1 : -1;
}

int audit_reader_next(struct audit_reader *r, uint64_t *seq, const uint8_t **bytes,
		      size_t *len, char *err, size_t errcap)
{
	while (r->at == r->map_len) {
		int rc = reader_advance(r, err, errcap);
		if (rc <= 0)
			return rc;
	}
	const uint8_t *p = r->map + r->at;
	size_t left = r->map_len - r->at;
	uint32_t n = left >= 4 ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3] : 0;
	if (left < 4 || n == 0 || n > AUDIT_ENTRY_BYTES_MAX || n > left - 4 ||
	    r->next_seq - r->file_first >= AUDIT_FILE_ENTRIES) {
		snprintf(err, errcap, "journal file %016" PRIu64 ".journal, offset %zu (entry %" PRIu64
			 "): a torn or malformed record", r->file_first, r->at, r->next_seq);
		return -1;
	}
	*seq = r->next_seq++;
	*bytes = p + 4;
	*len = n;
	r->at += 4 + (size_t)n;
	return 1;
}

void audit_reader_close(struct audit_reader *r)
{
	reader_unmap(r);
}
