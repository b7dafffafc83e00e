#include "ledger/error.h"

static const char *const error_messages[TALLY_ERROR_COUNT] = {
	[TALLY_OK] = "success",
	[TALLY_ENOMEM] = "out of memory",
	[TALLY_EIO] = "input/output error",
	[TALLY_ESTORE] = "storage (LMDB) error",
	[TALLY_ECORRUPT] = "data is corrupt or does not verify",
	[TALLY_EINVAL] = "invalid argument",
	[TALLY_ENOTFOUND] = "not found",
	[TALLY_ERANGE] = "out of range",
	[TALLY_EFULL] = "buffer or database full",
	[TALLY_EVERSION] = "incompatible format version",
	[TALLY_ESTATE] = "operation not allowed in this state",
	[TALLY_ENOSPC] = "no space left on device",
};

const char *tally_strerror(int code)
{
	if (code < 0 || code >= TALLY_ERROR_COUNT)
		return "unknown error";
	return error_messages[code];
}
