/*
 * Fuzz target: decoding what a client may send (a tally.v1.Request), packing it again
 * as the server does with what it keeps, and the early role check every command
 * meets before it reaches the ledger (never a crash, whatever the body). (protobuf-c
 * keeps unknown fields, even one numbered 0, so a round trip need not keep the size.)
 */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "ledger/ledger.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Tally__V1__Request *req = tally__v1__request__unpack(NULL, size, data);
	if (req == NULL)
		return 0;
	size_t n = tally__v1__request__get_packed_size(req);
	uint8_t *buf = malloc(n + 1);
	assert(buf != NULL);
	assert(tally__v1__request__pack(req, buf) == n);
	Tally__V1__Request *again = tally__v1__request__unpack(NULL, n, buf);
	if (req->body_case == TALLY__V1__REQUEST__BODY_COMMAND && req->command != NULL)
		for (int role = 0; role <= 9; role++)
			(void)tally_ledger_role_allows((Tally__V1__Role)role, req->command->body_case);
	if (again != NULL)
		tally__v1__request__free_unpacked(again, NULL);
	tally__v1__request__free_unpacked(req, NULL);
	free(buf);
	return 0;
}
