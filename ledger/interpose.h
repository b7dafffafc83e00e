/*
 * ledger/interpose — the next definition of a libc function the process defines again.
 *
 * The ledger (remap.c: mmap, munmap) and the node (consensus/: fsync, read, pwrite64,
 * unlink, posix_fallocate, syscall) define some libc functions for the whole process
 * and pass what is not theirs on to the next definition: libc's, or a fault injector's
 * preloaded in front of libc (libfiu, in the tests).
 *
 * ledger_next_symbol: that definition of name (dlsym RTLD_NEXT), kept in *slot after
 *                     the first call; NULL if the process has none.
 */
#ifndef TALLY_LEDGER_INTERPOSE_H
#define TALLY_LEDGER_INTERPOSE_H

void *ledger_next_symbol(void *_Atomic *slot, const char *name);

#endif
