/*
 * Tally's system error codes: one closed set for every module.
 *
 * Functions return 0 on success or one of these codes. They describe failures of
 * the machinery (memory, storage, corrupt data, misuse of an API). Business outcomes
 * of commands (INSUFFICIENT_POINTS, PERMISSION_DENIED, ...) are NOT errors: they are
 * result codes carried in tally.v1.ResultCode and never reported through this enum.
 */
#ifndef TALLY_ERROR_H
#define TALLY_ERROR_H

enum tally_error {
	TALLY_OK = 0,
	TALLY_ENOMEM,     /* an allocation failed */
	TALLY_EIO,        /* a read, write or fsync of a file failed */
	TALLY_ESTORE,     /* LMDB returned an unexpected error */
	TALLY_ECORRUPT,   /* stored or received bytes do not decode or do not verify */
	TALLY_EINVAL,     /* an argument violates the function's contract */
	TALLY_ENOTFOUND,  /* the requested record does not exist */
	TALLY_ERANGE,     /* an index, size or count is outside the valid range */
	TALLY_EFULL,      /* a fixed-size buffer or the LMDB map is full */
	TALLY_EVERSION,   /* data written by an incompatible format version */
	TALLY_ESTATE,     /* the object is in a state that does not allow the call */
	TALLY_ENOSPC,     /* the file system is full (ENOSPC) */
	TALLY_ERROR_COUNT /* number of codes; not an error */
};

/* A static, human-readable message for `code`; never NULL, also for unknown codes. */
const char *tally_strerror(int code);

#endif /* TALLY_ERROR_H */
