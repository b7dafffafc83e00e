#include "ledger/error.h"
#include "ledger/ledger.h"

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

/* Here, not with the ledger's code, so that libtally (which has this file and not
 * the ledger) has it too: its client and tools name result codes. */
const char *tally_result_name(Tally__V1__ResultCode code)
{
	const ProtobufCEnumValue *v =
		protobuf_c_enum_descriptor_get_value(&tally__v1__result_code__descriptor, code);
	return v != NULL ? v->name : "UNKNOWN";
}
