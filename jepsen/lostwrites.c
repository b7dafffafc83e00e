/*
 * lostwrites.c — LD_PRELOAD library behind the "lost-writes" nemesis.
 *
 * WHAT IT MODELS
 *   An OS crash / power loss loses every write that was never made durable. Here a
 *   node is only SIGKILLed (the page cache survives), so this library records, for
 *   every regular file under $LOSTWRITES_ROOT, the file size at its last successful
 *   sync; after the kill the harness (jepsen/lostwrites.py, cut()) truncates each file
 *   back towards that size, keeping a short random "torn" tail with a garbled sector.
 *
 * ENVIRONMENT
 *   LOSTWRITES_ROOT  absolute directory; only files whose canonical absolute path is
 *                    the root or below it are tracked. Unset or empty: the library
 *                    only forwards calls and writes nothing.
 *   LOSTWRITES_LOG   the record file, opened once O_WRONLY|O_CREAT|O_APPEND|O_CLOEXEC;
 *                    each record is one write() so lines from threads (and from
 *                    processes sharing the file) never interleave.
 *
 * RECORDS (text, one per line, <path> is canonical and absolute, never has a newline)
 *   size <bytes> <path>   the durable size of <path> is now <bytes>
 *   sync <path>           <path> was opened with O_SYNC or O_DSYNC (alone or with
 *                         O_DIRECT): every completed write to it is durable, never cut
 *   The last "size" record of a path is its durable size. The first time a process
 *   sees a path it logs the size right after open as a baseline (a file that existed
 *   when the process started is taken as durable, a new one as 0 bytes); reopening a
 *   path the process has already seen does not reset it. fsync/fdatasync log the size
 *   the file had when the sync started (that much is surely durable when it returns;
 *   of concurrent syncs on one file the one started last wins); sync()/syncfs() do the
 *   same for every path seen (on that file system). rename carries the recorded
 *   durable size (and "sync") to the new name; unlink forgets the path.
 *
 * WHAT IT DOES NOT MODEL
 *   - Directory entries are never lost: creates, renames and unlinks are durable at
 *     once, whether or not the directory was fsynced.
 *   - Only the file SIZE is tracked: in-place overwrites below the synced size (raft
 *     metadata files, LMDB pages) are not rolled back, a shrink (ftruncate) that was
 *     never synced is not undone, and a file is never cut below its durable size.
 *   - Writes by io_submit (raft's segment writer) bypass libc; those files are opened
 *     with O_DSYNC, so they are logged as "sync" and never cut.
 *   - mmap writes made durable by msync (LMDB with MDB_WRITEMAP) are not seen; a file
 *     that is only grown by ftruncate and written through a mapping keeps its
 *     first-seen size as its durable size.
 *   - Not intercepted: fopen/freopen and other libc-internal opens, opens/closes made
 *     with syscall() (libuv closes with syscall(SYS_close); stale fd entries are
 *     detected by device/inode at the next sync), close_range, link/linkat (a new
 *     hard link is first seen when opened), O_TMPFILE files, fds >= 65536, and
 *     renames of directories exchanged with RENAME_EXCHANGE.
 *   - Every process that preloads the library and opens a file logs a baseline for
 *     it: preload it only into the process whose writes should be lost. The root
 *     should exist when the process starts (it is canonicalised with realpath then).
 *   - The wrappers take a mutex and may malloc, so they are not async-signal-safe; a
 *     signal handler that interrupts the library itself is passed straight through.
 */

#undef _FORTIFY_SOURCE /* the fortified inline open() would clash with ours */

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef O_TMPFILE
#define O_TMPFILE 0
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

/* The fortified entry points (bits/fcntl2.h declares them only with _FORTIFY_SOURCE). */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

#define MAX_FD 65536
#define NBUCKETS 4096
#define LOG_FD_MIN 900 /* the record file's fd is moved up here, out of the program's way */

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*open2_fn)(const char *, int);
typedef int (*openat2_fn)(int, const char *, int);
typedef int (*creat_fn)(const char *, mode_t);
typedef int (*fd_fn)(int);
typedef int (*dup2_fn)(int, int);
typedef int (*dup3_fn)(int, int, int);
typedef int (*fcntl_fn)(int, int, ...);
typedef void (*sync_fn)(void);
typedef int (*rename_fn)(const char *, const char *);
typedef int (*renameat_fn)(int, const char *, int, const char *);
typedef int (*renameat2_fn)(int, const char *, int, const char *, unsigned int);
typedef int (*path_fn)(const char *);
typedef int (*unlinkat_fn)(int, const char *, int);

static struct {
	open_fn open, open64;
	openat_fn openat, openat64;
	open2_fn open_2, open64_2;
	openat2_fn openat_2, openat64_2;
	creat_fn creat, creat64;
	fd_fn close, dup, fsync, fdatasync, syncfs;
	dup2_fn dup2;
	dup3_fn dup3;
	fcntl_fn fcntl, fcntl64;
	sync_fn sync;
	rename_fn rename;
	renameat_fn renameat;
	renameat2_fn renameat2;
	path_fn unlink, remove;
	unlinkat_fn unlinkat;
} real;

/* A path this process has seen. Referenced by the hash table (while it names a file
 * under the root), by fd entries and by syncs in flight. */
struct pent {
	struct pent *next;   /* hash chain */
	struct pent *tmp;    /* scratch list for directory renames */
	char *path;
	size_t len;
	unsigned hash;
	long long durable;   /* last logged size */
	uint64_t issued;     /* sync tickets handed out */
	uint64_t logged;     /* ticket of the last logged sync */
	int refs;
	bool hashed;
	bool sync;
};

struct fent {
	struct pent *p;
	dev_t dev;
	ino_t ino;
};

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static bool active;            /* written once inside init_once */
static pid_t owner_pid;        /* this process; differs in a vfork child */
static char root[PATH_MAX];
static size_t root_len;
static char log_path[PATH_MAX];
static int log_fd = -1;        /* under mu */
static dev_t log_dev;
static ino_t log_ino;
static struct pent *buckets[NBUCKETS];
static struct fent *fds[MAX_FD];

/* ---- setup --------------------------------------------------------------------- */

#define RESOLVE(field, name) real.field = (__typeof__(real.field))dlsym(RTLD_NEXT, name)

static void warn(const char *msg)
{
	ssize_t w = write(2, msg, strlen(msg));
	(void)w;
}

static void atfork_prepare(void)
{
	pthread_mutex_lock(&mu);
}

static void atfork_parent(void)
{
	pthread_mutex_unlock(&mu);
}

static void atfork_child(void)
{
	owner_pid = (pid_t)syscall(SYS_getpid);
	pthread_mutex_unlock(&mu);
}

/* Opens log_path for appending at a high descriptor number (out of the way of the
 * program's own dup2 targets) and makes it the record file; false if it cannot. */
static bool log_open(void)
{
	int fd = real.open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0)
		return false;
	if (fd < LOG_FD_MIN) {
		int hi = real.fcntl(fd, F_DUPFD_CLOEXEC, LOG_FD_MIN);
		if (hi >= 0) {
			real.close(fd);
			fd = hi;
		}
	}
	struct stat st;
	if (fstat(fd, &st) != 0) {
		real.close(fd);
		return false;
	}
	log_fd = fd;
	log_dev = st.st_dev;
	log_ino = st.st_ino;
	return true;
}

static void init_once(void)
{
	int saved = errno;
	RESOLVE(open, "open");
	RESOLVE(open64, "open64");
	RESOLVE(openat, "openat");
	RESOLVE(openat64, "openat64");
	RESOLVE(open_2, "__open_2");
	RESOLVE(open64_2, "__open64_2");
	RESOLVE(openat_2, "__openat_2");
	RESOLVE(openat64_2, "__openat64_2");
	RESOLVE(creat, "creat");
	RESOLVE(creat64, "creat64");
	RESOLVE(close, "close");
	RESOLVE(dup, "dup");
	RESOLVE(dup2, "dup2");
	RESOLVE(dup3, "dup3");
	RESOLVE(fcntl, "fcntl");
	RESOLVE(fcntl64, "fcntl64");
	RESOLVE(fsync, "fsync");
	RESOLVE(fdatasync, "fdatasync");
	RESOLVE(syncfs, "syncfs");
	RESOLVE(sync, "sync");
	RESOLVE(rename, "rename");
	RESOLVE(renameat, "renameat");
	RESOLVE(renameat2, "renameat2");
	RESOLVE(unlink, "unlink");
	RESOLVE(remove, "remove");
	RESOLVE(unlinkat, "unlinkat");
	owner_pid = (pid_t)syscall(SYS_getpid);

	const char *r = getenv("LOSTWRITES_ROOT");
	const char *l = getenv("LOSTWRITES_LOG");
	if (r == NULL || r[0] == '\0')
		goto out;
	if (r[0] != '/' || l == NULL || l[0] == '\0' || real.open == NULL || real.fcntl == NULL ||
	    real.close == NULL) {
		warn("lostwrites: LOSTWRITES_ROOT must be absolute and LOSTWRITES_LOG set; "
		     "not recording\n");
		goto out;
	}
	if (realpath(r, root) == NULL) {
		if (strlen(r) >= sizeof(root))
			goto out;
		strcpy(root, r);
	}
	root_len = strlen(root);
	while (root_len > 1 && root[root_len - 1] == '/')
		root[--root_len] = '\0';
	if (l[0] == '/') {
		if (strlen(l) >= sizeof(log_path))
			goto out;
		strcpy(log_path, l);
	} else {
		char cwd[PATH_MAX];
		if (getcwd(cwd, sizeof(cwd)) == NULL ||
		    (size_t)snprintf(log_path, sizeof(log_path), "%s/%s", cwd, l) >= sizeof(log_path))
			goto out;
	}
	if (!log_open()) {
		warn("lostwrites: cannot open LOSTWRITES_LOG; not recording\n");
		goto out;
	}
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
	active = true;
out:
	errno = saved;
}

static void ensure_init(void)
{
	pthread_once(&once, init_once);
}

__attribute__((constructor)) static void lostwrites_ctor(void)
{
	ensure_init();
}

/* Set while this thread holds mu: a signal handler that interrupts us and calls close()
 * or open() is passed straight through instead of deadlocking on mu. */
static _Thread_local int in_lib __attribute__((tls_model("initial-exec")));

static void lock(void)
{
	in_lib++;
	pthread_mutex_lock(&mu);
}

static void unlock(void)
{
	pthread_mutex_unlock(&mu);
	in_lib--;
}

/* In a vfork child memory is shared with the parent: leave the parent's tables alone. */
static bool tracking(void)
{
	return active && in_lib == 0 && (pid_t)syscall(SYS_getpid) == owner_pid;
}

/* ---- the record file (mu held) ------------------------------------------------- */

static void log_reopen(void)
{
	/* The old number is no longer ours (or no longer open): do not close it. */
	(void)log_open();
}

static void emit(const char *line, size_t len)
{
	struct stat st;
	if (log_fd < 0 || fstat(log_fd, &st) != 0 || st.st_dev != log_dev || st.st_ino != log_ino)
		log_reopen();
	if (log_fd < 0)
		return;
	ssize_t w = write(log_fd, line, len);
	(void)w;
}

static void log_size(const char *path, long long size)
{
	char line[PATH_MAX + 48];
	int n = snprintf(line, sizeof(line), "size %lld %s\n", size, path);
	if (n > 0 && (size_t)n < sizeof(line))
		emit(line, (size_t)n);
}

static void log_sync(const char *path)
{
	char line[PATH_MAX + 16];
	int n = snprintf(line, sizeof(line), "sync %s\n", path);
	if (n > 0 && (size_t)n < sizeof(line))
		emit(line, (size_t)n);
}

/* ---- the path table (mu held) -------------------------------------------------- */

static unsigned hash_path(const char *s)
{
	unsigned h = 2166136261u;
	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

static struct pent *lookup(const char *path)
{
	unsigned h = hash_path(path);
	for (struct pent *e = buckets[h % NBUCKETS]; e != NULL; e = e->next)
		if (e->hash == h && strcmp(e->path, path) == 0)
			return e;
	return NULL;
}

static void hash_in(struct pent *e)
{
	e->hash = hash_path(e->path);
	e->next = buckets[e->hash % NBUCKETS];
	buckets[e->hash % NBUCKETS] = e;
	e->hashed = true;
	e->refs++;
}

static void unref(struct pent *e)
{
	if (--e->refs == 0) {
		free(e->path);
		free(e);
	}
}

/* Takes e out of the table; the table's reference is handed to the caller. */
static void hash_out(struct pent *e)
{
	struct pent **pp = &buckets[e->hash % NBUCKETS];
	while (*pp != NULL && *pp != e)
		pp = &(*pp)->next;
	if (*pp == e)
		*pp = e->next;
	e->next = NULL;
	e->hashed = false;
}

static void forget(struct pent *e)
{
	hash_out(e);
	unref(e);
}

static bool set_key(struct pent *e, const char *path)
{
	size_t n = strlen(path);
	char *s = malloc(n + 1);
	if (s == NULL)
		return false;
	memcpy(s, path, n + 1);
	free(e->path);
	e->path = s;
	e->len = n;
	return true;
}

static struct pent *insert(const char *path, long long size)
{
	struct pent *e = calloc(1, sizeof(*e));
	if (e == NULL)
		return NULL;
	if (!set_key(e, path)) {
		free(e);
		return NULL;
	}
	e->durable = size;
	hash_in(e);
	log_size(e->path, size);
	return e;
}

/* ---- the fd table (mu held) ---------------------------------------------------- */

static void fd_drop(int fd)
{
	if (fd < 0 || fd >= MAX_FD || fds[fd] == NULL)
		return;
	unref(fds[fd]->p);
	free(fds[fd]);
	fds[fd] = NULL;
}

static void fd_put(int fd, struct pent *p, dev_t dev, ino_t ino)
{
	fd_drop(fd);
	if (fd < 0 || fd >= MAX_FD)
		return;
	struct fent *f = malloc(sizeof(*f));
	if (f == NULL)
		return;
	f->p = p;
	f->dev = dev;
	f->ino = ino;
	p->refs++;
	fds[fd] = f;
}

static void fd_copy(int from, int to)
{
	if (from == to)
		return;
	if (from >= 0 && from < MAX_FD && fds[from] != NULL)
		fd_put(to, fds[from]->p, fds[from]->dev, fds[from]->ino);
	else
		fd_drop(to);
}

/* ---- paths --------------------------------------------------------------------- */

static bool under_root(const char *path)
{
	if (path[0] != '/' || strchr(path, '\n') != NULL)
		return false;
	if (root_len == 1)
		return true;
	return strncmp(path, root, root_len) == 0 &&
	       (path[root_len] == '\0' || path[root_len] == '/');
}

static bool fd_link(int fd, char *out, size_t cap)
{
	char proc[40];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(proc, out, cap - 1);
	if (n <= 0 || (size_t)n >= cap - 1)
		return false;
	out[n] = '\0';
	return out[0] == '/';
}

/* Canonical absolute path of the name `path` relative to dirfd: the parent directory
 * resolved (symlinks included), the last component kept as it is. */
static bool resolve_at(int dirfd, const char *path, char *out, size_t cap)
{
	char buf[PATH_MAX];
	char dir[PATH_MAX];
	if (path == NULL || path[0] == '\0')
		return false;
	size_t n = strlen(path);
	if (n >= sizeof(buf))
		return false;
	memcpy(buf, path, n + 1);
	while (n > 1 && buf[n - 1] == '/')
		buf[--n] = '\0';
	char *slash = strrchr(buf, '/');
	const char *base;
	const char *dpart;
	if (slash == NULL) {
		base = buf;
		dpart = ".";
	} else if (slash == buf) {
		base = buf + 1;
		dpart = "/";
	} else {
		*slash = '\0';
		base = slash + 1;
		dpart = buf;
	}
	if (base[0] == '\0' || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
		return false;
	if (dpart[0] != '/' && dirfd != AT_FDCWD) {
		char d[PATH_MAX];
		if (!fd_link(dirfd, d, sizeof(d)))
			return false;
		if ((size_t)snprintf(dir, sizeof(dir), "%s/%s", d, dpart) >= sizeof(dir))
			return false;
		dpart = dir;
	}
	char real_dir[PATH_MAX];
	if (realpath(dpart, real_dir) == NULL)
		return false;
	int w = strcmp(real_dir, "/") == 0 ? snprintf(out, cap, "/%s", base)
					   : snprintf(out, cap, "%s/%s", real_dir, base);
	return w > 0 && (size_t)w < cap;
}

/* ---- open ---------------------------------------------------------------------- */

static bool wants_mode(int flags)
{
	return (flags & O_CREAT) != 0 || (O_TMPFILE != 0 && (flags & O_TMPFILE) == O_TMPFILE);
}

static void after_open(int fd, int dirfd, const char *path, int flags)
{
	if (fd < 0 || !tracking())
		return;
	struct stat st;
	char abs[PATH_MAX];
	bool track = false;
	if (fd < MAX_FD && !(O_TMPFILE != 0 && (flags & O_TMPFILE) == O_TMPFILE) &&
	    fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink > 0 &&
	    (fd_link(fd, abs, sizeof(abs)) || resolve_at(dirfd, path, abs, sizeof(abs))))
		track = under_root(abs);
	lock();
	fd_drop(fd); /* whatever the number meant before, it is this file now */
	if (track) {
		struct pent *e = lookup(abs);
		if (e == NULL)
			e = insert(abs, (long long)st.st_size);
		if (e != NULL) {
			if ((flags & (O_SYNC | O_DSYNC)) != 0 && !e->sync) {
				e->sync = true;
				log_sync(e->path);
			}
			fd_put(fd, e, st.st_dev, st.st_ino);
		}
	}
	unlock();
}

static int finish_open(int fd, int dirfd, const char *path, int flags)
{
	int err = errno;
	after_open(fd, dirfd, path, flags);
	errno = err;
	return fd;
}

#define MODE_ARG(flags, mode)                                                          \
	do {                                                                           \
		if (wants_mode(flags)) {                                               \
			va_list ap;                                                    \
			va_start(ap, flags);                                           \
			mode = (mode_t)va_arg(ap, unsigned int);                       \
			va_end(ap);                                                    \
		}                                                                      \
	} while (0)

#define NO_REAL(fn)                                                                    \
	do {                                                                           \
		if ((fn) == NULL) {                                                    \
			errno = ENOSYS;                                                \
			return -1;                                                     \
		}                                                                      \
	} while (0)

int open(const char *path, int flags, ...)
{
	mode_t mode = 0;
	MODE_ARG(flags, mode);
	ensure_init();
	NO_REAL(real.open);
	return finish_open(real.open(path, flags, mode), AT_FDCWD, path, flags);
}

int open64(const char *path, int flags, ...)
{
	mode_t mode = 0;
	MODE_ARG(flags, mode);
	ensure_init();
	NO_REAL(real.open64);
	return finish_open(real.open64(path, flags, mode), AT_FDCWD, path, flags);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;
	MODE_ARG(flags, mode);
	ensure_init();
	NO_REAL(real.openat);
	return finish_open(real.openat(dirfd, path, flags, mode), dirfd, path, flags);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;
	MODE_ARG(flags, mode);
	ensure_init();
	NO_REAL(real.openat64);
	return finish_open(real.openat64(dirfd, path, flags, mode), dirfd, path, flags);
}

int __open_2(const char *path, int flags)
{
	ensure_init();
	NO_REAL(real.open_2);
	return finish_open(real.open_2(path, flags), AT_FDCWD, path, flags);
}

int __open64_2(const char *path, int flags)
{
	ensure_init();
	NO_REAL(real.open64_2);
	return finish_open(real.open64_2(path, flags), AT_FDCWD, path, flags);
}

int __openat_2(int dirfd, const char *path, int flags)
{
	ensure_init();
	NO_REAL(real.openat_2);
	return finish_open(real.openat_2(dirfd, path, flags), dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
	ensure_init();
	NO_REAL(real.openat64_2);
	return finish_open(real.openat64_2(dirfd, path, flags), dirfd, path, flags);
}

int creat(const char *path, mode_t mode)
{
	ensure_init();
	NO_REAL(real.creat);
	return finish_open(real.creat(path, mode), AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC);
}

int creat64(const char *path, mode_t mode)
{
	ensure_init();
	NO_REAL(real.creat64);
	return finish_open(real.creat64(path, mode), AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC);
}

/* ---- close / dup --------------------------------------------------------------- */

int close(int fd)
{
	ensure_init();
	NO_REAL(real.close);
	if (tracking() && fd >= 0) {
		int saved = errno;
		lock();
		if (fd == log_fd) {
			/* The record file is ours: pretend it was closed. */
			unlock();
			errno = saved;
			return 0;
		}
		fd_drop(fd); /* before the real close: the number cannot be reused yet */
		unlock();
		errno = saved;
	}
	return real.close(fd);
}

/* newfd is about to be replaced; move the record file out of the way first. */
static void spare_log_fd(int newfd)
{
	if (newfd >= 0 && newfd == log_fd) {
		int fd = real.fcntl(log_fd, F_DUPFD_CLOEXEC, LOG_FD_MIN);
		if (fd >= 0)
			log_fd = fd;
	}
}

static int finish_dup(int rc, int oldfd)
{
	int err = errno;
	if (rc >= 0) {
		lock();
		fd_copy(oldfd, rc);
		unlock();
	}
	errno = err;
	return rc;
}

int dup(int oldfd)
{
	ensure_init();
	NO_REAL(real.dup);
	if (!tracking())
		return real.dup(oldfd);
	return finish_dup(real.dup(oldfd), oldfd);
}

int dup2(int oldfd, int newfd)
{
	ensure_init();
	NO_REAL(real.dup2);
	if (!tracking() || oldfd == newfd)
		return real.dup2(oldfd, newfd);
	int saved = errno;
	lock();
	spare_log_fd(newfd);
	unlock();
	errno = saved;
	return finish_dup(real.dup2(oldfd, newfd), oldfd);
}

int dup3(int oldfd, int newfd, int flags)
{
	ensure_init();
	NO_REAL(real.dup3);
	if (!tracking() || oldfd == newfd)
		return real.dup3(oldfd, newfd, flags);
	int saved = errno;
	lock();
	spare_log_fd(newfd);
	unlock();
	errno = saved;
	return finish_dup(real.dup3(oldfd, newfd, flags), oldfd);
}

/* fcntl's third argument has the type the command says: none, int or a pointer. */
static int arg_kind(int cmd)
{
	switch (cmd) {
	case F_GETFD:
	case F_GETFL:
	case F_GETOWN:
#ifdef F_GETSIG
	case F_GETSIG:
#endif
#ifdef F_GETLEASE
	case F_GETLEASE:
#endif
#ifdef F_GETPIPE_SZ
	case F_GETPIPE_SZ:
#endif
#ifdef F_GET_SEALS
	case F_GET_SEALS:
#endif
		return 0;
	case F_DUPFD:
	case F_DUPFD_CLOEXEC:
	case F_SETFD:
	case F_SETFL:
	case F_SETOWN:
#ifdef F_SETSIG
	case F_SETSIG:
#endif
#ifdef F_SETLEASE
	case F_SETLEASE:
#endif
#ifdef F_NOTIFY
	case F_NOTIFY:
#endif
#ifdef F_SETPIPE_SZ
	case F_SETPIPE_SZ:
#endif
#ifdef F_ADD_SEALS
	case F_ADD_SEALS:
#endif
		return 1;
	default:
		return 2;
	}
}

static int do_fcntl(fcntl_fn fn, int fd, int cmd, int kind, int iarg, void *parg)
{
	NO_REAL(fn);
	int rc = kind == 0 ? fn(fd, cmd) : kind == 1 ? fn(fd, cmd, iarg) : fn(fd, cmd, parg);
	if ((cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && tracking())
		return finish_dup(rc, fd);
	return rc;
}

#define FCNTL_BODY(fn)                                                                 \
	int kind = arg_kind(cmd), iarg = 0;                                            \
	void *parg = NULL;                                                             \
	if (kind != 0) {                                                               \
		va_list ap;                                                            \
		va_start(ap, cmd);                                                     \
		if (kind == 1)                                                         \
			iarg = va_arg(ap, int);                                        \
		else                                                                   \
			parg = va_arg(ap, void *);                                     \
		va_end(ap);                                                            \
	}                                                                              \
	ensure_init();                                                                 \
	return do_fcntl(fn, fd, cmd, kind, iarg, parg)

int fcntl(int fd, int cmd, ...)
{
	FCNTL_BODY(real.fcntl);
}

int fcntl64(int fd, int cmd, ...)
{
	FCNTL_BODY(real.fcntl64);
}

/* ---- syncs --------------------------------------------------------------------- */

static int do_fsync(fd_fn fn, int fd)
{
	ensure_init();
	NO_REAL(fn);
	if (!tracking() || fd < 0 || fd >= MAX_FD)
		return fn(fd);
	int saved = errno;
	struct pent *e = NULL;
	long long snap = 0;
	uint64_t ticket = 0;
	lock();
	struct fent *f = fds[fd];
	if (f != NULL && f->p->hashed) {
		struct stat st;
		if (fstat(fd, &st) == 0 && st.st_dev == f->dev && st.st_ino == f->ino) {
			/* Everything written before this sync started is durable when it
			 * returns: that is the size to log, not the size afterwards. */
			e = f->p;
			e->refs++;
			snap = (long long)st.st_size;
			ticket = ++e->issued;
		} else {
			fd_drop(fd); /* closed behind our back and reused */
		}
	}
	unlock();
	errno = saved;
	int rc = fn(fd);
	int err = errno;
	if (e != NULL) {
		lock();
		if (rc == 0 && e->hashed && ticket > e->logged) {
			e->logged = ticket;
			e->durable = snap;
			log_size(e->path, snap);
		}
		unref(e);
		unlock();
	}
	errno = err;
	return rc;
}

int fsync(int fd)
{
	return do_fsync(real.fsync, fd);
}

int fdatasync(int fd)
{
	return do_fsync(real.fdatasync, fd);
}

struct snap {
	struct pent *e;
	long long size;
	uint64_t ticket;
};

/* Snapshots the size of every path seen (on device dev, if only_dev). */
static struct snap *snap_all(bool only_dev, dev_t dev, size_t *count)
{
	size_t n = 0, i = 0;
	*count = 0;
	lock();
	for (size_t b = 0; b < NBUCKETS; b++)
		for (struct pent *e = buckets[b]; e != NULL; e = e->next)
			n++;
	struct snap *s = n != 0 ? malloc(n * sizeof(*s)) : NULL;
	if (s != NULL) {
		for (size_t b = 0; b < NBUCKETS; b++) {
			for (struct pent *e = buckets[b]; e != NULL; e = e->next) {
				struct stat st;
				if (stat(e->path, &st) != 0 || !S_ISREG(st.st_mode) ||
				    (only_dev && st.st_dev != dev))
					continue;
				e->refs++;
				s[i].e = e;
				s[i].size = (long long)st.st_size;
				s[i].ticket = ++e->issued;
				i++;
			}
		}
	}
	unlock();
	*count = i;
	return s;
}

static void snap_log(struct snap *s, size_t count, bool ok)
{
	lock();
	for (size_t i = 0; i < count; i++) {
		struct pent *e = s[i].e;
		if (ok && e->hashed && s[i].ticket > e->logged) {
			e->logged = s[i].ticket;
			e->durable = s[i].size;
			log_size(e->path, s[i].size);
		}
		unref(e);
	}
	unlock();
	free(s);
}

void sync(void)
{
	ensure_init();
	if (real.sync == NULL)
		return;
	if (!tracking()) {
		real.sync();
		return;
	}
	int saved = errno;
	size_t n;
	struct snap *s = snap_all(false, 0, &n);
	errno = saved;
	real.sync();
	snap_log(s, n, true);
	errno = saved;
}

int syncfs(int fd)
{
	ensure_init();
	NO_REAL(real.syncfs);
	if (!tracking())
		return real.syncfs(fd);
	int saved = errno;
	struct stat st;
	size_t n = 0;
	struct snap *s = NULL;
	if (fstat(fd, &st) == 0)
		s = snap_all(true, st.st_dev, &n);
	errno = saved;
	int rc = real.syncfs(fd);
	int err = errno;
	snap_log(s, n, rc == 0);
	errno = err;
	return rc;
}

/* ---- rename / unlink (mu held) ------------------------------------------------- */

/* e (out of the table, its table reference held by the caller, or NULL) now has the
 * name dest. */
static void move_to(struct pent *e, const char *dest)
{
	if (e == NULL) {
		/* A file this process never opened: durable as it is, like at open. */
		struct stat st;
		if (under_root(dest) && lookup(dest) == NULL && lstat(dest, &st) == 0 &&
		    S_ISREG(st.st_mode))
			insert(dest, (long long)st.st_size);
		return;
	}
	if (!under_root(dest) || !set_key(e, dest)) {
		unref(e);
		return;
	}
	hash_in(e);
	/* Data synced under the old name stays synced under the new one. */
	log_size(e->path, e->durable);
	if (e->sync)
		log_sync(e->path);
	unref(e); /* hash_in took the table's own reference */
}

static struct pent *take(const char *path)
{
	struct pent *e = lookup(path);
	if (e != NULL)
		hash_out(e);
	return e;
}

/* A directory was renamed: every path seen below it moves with it. */
static void move_prefix(const char *from, const char *to)
{
	size_t fl = strlen(from);
	struct pent *list = NULL;
	for (size_t b = 0; b < NBUCKETS; b++) {
		for (struct pent *e = buckets[b]; e != NULL; e = e->next) {
			if (strncmp(e->path, to, strlen(to)) == 0 && e->path[strlen(to)] == '/') {
				e->tmp = list; /* stale: the target was an empty directory */
				list = e;
			} else if (strncmp(e->path, from, fl) == 0 && e->path[fl] == '/') {
				e->tmp = list;
				list = e;
			}
		}
	}
	while (list != NULL) {
		struct pent *e = list;
		list = e->tmp;
		hash_out(e);
		char dest[PATH_MAX];
		if (strncmp(e->path, from, fl) == 0 && e->path[fl] == '/' &&
		    (size_t)snprintf(dest, sizeof(dest), "%s%s", to, e->path + fl) < sizeof(dest))
			move_to(e, dest);
		else
			unref(e);
	}
}

static void after_rename(const char *from, const char *to, unsigned int flags)
{
	struct stat st;
	if (strcmp(from, to) == 0)
		return;
	if (flags & RENAME_EXCHANGE) {
		struct pent *a = take(from), *b = take(to);
		move_to(a, to);
		move_to(b, from);
		return;
	}
	struct pent *victim = lookup(to);
	if (victim != NULL)
		forget(victim);
	move_to(take(from), to);
	if (lstat(to, &st) == 0 && S_ISDIR(st.st_mode))
		move_prefix(from, to);
}

static int do_rename(int ofd, const char *oldp, int nfd, const char *newp, unsigned int flags,
		     int kind)
{
	ensure_init();
	char from[PATH_MAX], to[PATH_MAX];
	bool ok = false;
	int saved = errno;
	if (tracking())
		ok = resolve_at(ofd, oldp, from, sizeof(from)) &&
		     resolve_at(nfd, newp, to, sizeof(to));
	errno = saved;
	int rc;
	if (kind == 0) {
		NO_REAL(real.rename);
		rc = real.rename(oldp, newp);
	} else if (kind == 1) {
		NO_REAL(real.renameat);
		rc = real.renameat(ofd, oldp, nfd, newp);
	} else {
		NO_REAL(real.renameat2);
		rc = real.renameat2(ofd, oldp, nfd, newp, flags);
	}
	int err = errno;
	if (rc == 0 && ok) {
		lock();
		after_rename(from, to, flags);
		unlock();
	}
	errno = err;
	return rc;
}

int rename(const char *oldp, const char *newp)
{
	return do_rename(AT_FDCWD, oldp, AT_FDCWD, newp, 0, 0);
}

int renameat(int ofd, const char *oldp, int nfd, const char *newp)
{
	return do_rename(ofd, oldp, nfd, newp, 0, 1);
}

int renameat2(int ofd, const char *oldp, int nfd, const char *newp, unsigned int flags)
{
	return do_rename(ofd, oldp, nfd, newp, flags, 2);
}

static int do_unlink(int dirfd, const char *path, int flags, int kind)
{
	ensure_init();
	char abs[PATH_MAX];
	bool ok = false;
	int saved = errno;
	if (tracking() && !(flags & AT_REMOVEDIR))
		ok = resolve_at(dirfd, path, abs, sizeof(abs));
	errno = saved;
	int rc;
	if (kind == 0) {
		NO_REAL(real.unlink);
		rc = real.unlink(path);
	} else if (kind == 1) {
		NO_REAL(real.remove);
		rc = real.remove(path);
	} else {
		NO_REAL(real.unlinkat);
		rc = real.unlinkat(dirfd, path, flags);
	}
	int err = errno;
	if (rc == 0 && ok) {
		lock();
		struct pent *e = lookup(abs);
		if (e != NULL)
			forget(e); /* open fds keep it, but it has no name: never logged */
		unlock();
	}
	errno = err;
	return rc;
}

int unlink(const char *path)
{
	return do_unlink(AT_FDCWD, path, 0, 0);
}

int remove(const char *path)
{
	return do_unlink(AT_FDCWD, path, 0, 1);
}

int unlinkat(int dirfd, const char *path, int flags)
{
	return do_unlink(dirfd, path, flags, 2);
}
