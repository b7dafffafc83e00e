/*
 * rpc/files — replacing a small file so that a crash leaves either the old contents
 * or the new, never a mix, and the new contents survive once the call returns.
 *
 * For the state tools keep to resume (tallyctl import's FILE.import, tally-cdc's
 * cursor, tally-audit's checkpoints) and a node's checkpoint key: the data goes to a
 * new PATH.tmp (permissions `mode` less the umask; a leftover one is removed first),
 * which is synced and renamed over PATH; then the directory is synced, so the rename
 * itself is durable.
 */
#ifndef TALLY_RPC_FILES_H
#define TALLY_RPC_FILES_H

#include <stddef.h>
#include <sys/types.h>

/* Returns 0, or -1 with why in err (PATH.tmp is removed; PATH is as it was). */
int tally_file_replace(const char *path, const void *data, size_t len, mode_t mode,
		       char *err, size_t errcap);

#endif
