/*
 * consensus/bootmark — whether the ledger on disk was written only in this boot.
 *
 * The ledger runs without syncs (MDB_NOSYNC): raft's log and raft's own copy of its
 * latest snapshot are the durable record, and raft restores that snapshot at every
 * start, replacing the ledger (the whole file written again, then checked in full).
 * That is what an OS crash needs: the ledger's last writes may not have reached the
 * disk, in any order. A process that ended (a kill, a crash, a stop) loses nothing of
 * what it wrote, though: its writes are in the page cache, and LMDB's meta page, the
 * last write of a commit, names a whole transaction. So a ledger that was written only
 * in this boot is as sound as the process left it, and a node restarted in the same
 * boot keeps it over raft's snapshot when it already holds everything the snapshot
 * does (fsm.c).
 *
 * The mark is a file beside the ledger (NODE_BOOTMARK_FILE) holding the boot id the
 * kernel gives each boot (NODE_BOOT_ID_PATH) and the identity of the ledger's file
 * (device and inode: a file put in its place is not the one marked). It is written
 * once the ledger is known sound in this boot (after a start that restored nothing,
 * or a restored ledger's full check), and removed before a restore replaces the ledger, so that a process that
 * ends between the two leaves no mark and the next start restores and checks again.
 * It is never synced: after an OS crash the boot id differs from whatever the file
 * holds, or the file is gone.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "consensus/internal.h"

#define NODE_BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"
#define NODE_BOOTMARK_FILE "ledger.boot"
#define NODE_BOOT_ID_BYTES 64   /* a UUID: 36 characters */
#define NODE_BOOTMARK_BYTES 128 /* the boot id, a device and an inode */

/* The first line of `path` into buf, or "" when it cannot be read. */
static void first_line(const char *path, char *buf, size_t cap)
{
	assert(cap > 1);
	buf[0] = '\0';
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return;
	if (fgets(buf, (int)cap, f) == NULL)
		buf[0] = '\0';
	fclose(f);
	buf[strcspn(buf, "\n")] = '\0';
}

static int mark_path(const struct tally_node *n, char *path, size_t cap)
{
	int w = snprintf(path, cap, "%s/%s", n->dir, NODE_BOOTMARK_FILE);
	return w > 0 && (size_t)w < cap ? 0 : -1;
}

/* The mark the open ledger has in this boot: "BOOT-ID DEV:INODE", or "" when either
 * part is not known. */
static void mark_now(const struct tally_node *n, char *out, size_t cap)
{
	char boot[NODE_BOOT_ID_BYTES];
	first_line(NODE_BOOT_ID_PATH, boot, sizeof(boot));
	out[0] = '\0';
	int fd = n->ledger != NULL ? tally_ledger_file_dup(n->ledger) : -1;
	struct stat st;
	if (fd >= 0 && fstat(fd, &st) == 0 && boot[0] != '\0')
		snprintf(out, cap, "%s %llu:%llu", boot, (unsigned long long)st.st_dev,
			 (unsigned long long)st.st_ino);
	if (fd >= 0)
		close(fd);
}

bool node_bootmark_same(const struct tally_node *n)
{
	assert(n != NULL);
	char path[NODE_PATH_BYTES_MAX + 16], now[NODE_BOOTMARK_BYTES], mark[NODE_BOOTMARK_BYTES];
	if (mark_path(n, path, sizeof(path)) != 0)
		return false;
	mark_now(n, now, sizeof(now));
	first_line(path, mark, sizeof(mark));
	return now[0] != '\0' && strcmp(now, mark) == 0;
}

void node_bootmark_write(struct tally_node *n)
{
	assert(n != NULL);
	char path[NODE_PATH_BYTES_MAX + 16], tmp[NODE_PATH_BYTES_MAX + 24], now[NODE_BOOTMARK_BYTES];
	mark_now(n, now, sizeof(now));
	if (now[0] == '\0' || mark_path(n, path, sizeof(path)) != 0)
		return; /* no boot id or no ledger file: no mark, and every start restores */
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	bool ok = f != NULL && fprintf(f, "%s\n", now) > 0;
	if (f != NULL && fclose(f) != 0)
		ok = false;
	if (!ok || rename(tmp, path) != 0) {
		node_log(n, "cannot write %s (%s): the next start restores raft's snapshot", path,
			 strerror(errno));
		unlink(tmp);
	}
}

void node_bootmark_started(struct tally_node *n)
{
	assert(n != NULL && n->started);
	if (!n->check_busy) /* else once the restored ledger passed its check (fsm.c) */
		node_bootmark_write(n);
}

int node_bootmark_clear(const struct tally_node *n)
{
	assert(n != NULL);
	char path[NODE_PATH_BYTES_MAX + 16];
	if (mark_path(n, path, sizeof(path)) != 0)
		return 0; /* never written */
	return unlink(path) == 0 || errno == ENOENT ? 0 : errno;
}
