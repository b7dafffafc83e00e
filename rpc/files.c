/*
 * rpc/files — replacing a small file durably (rpc/files.h).
 */
#include "rpc/files.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static bool write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, p, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		p += w;
		len -= (size_t)w;
	}
	return true;
}

/* Syncs the directory that holds path, so that a rename in it is on disk. */
static bool sync_parent(const char *path)
{
	char copy[PATH_MAX];
	if (snprintf(copy, sizeof(copy), "%s", path) >= (int)sizeof(copy))
		return false;
	int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return false;
	bool ok = fsync(fd) == 0;
	close(fd);
	return ok;
}

int tally_file_replace(const char *path, const void *data, size_t len, mode_t mode,
		       char *err, size_t errcap)
{
	char tmp[PATH_MAX];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
		snprintf(err, errcap, "%s: path too long", path);
		return -1;
	}
	unlink(tmp); /* a crash's leftover: made anew, so that it has `mode` (and umask) */
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0) {
		snprintf(err, errcap, "%s: %s", tmp, strerror(errno));
		return -1;
	}
	bool ok = write_all(fd, data, len) && fsync(fd) == 0;
	int saved = errno;
	ok = close(fd) == 0 && ok;
	if (ok && rename(tmp, path) == 0 && sync_parent(path))
		return 0;
	snprintf(err, errcap, "%s: %s", path, strerror(ok ? errno : saved));
	unlink(tmp);
	return -1;
}
