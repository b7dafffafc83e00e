/*
 * rpc/bytes — libtally's calls on serialized messages, for bindings (see tally.h:
 * tally_client_call_bytes). The request is decoded and run through the same calls a
 * C program makes, so a binding gets the C client's TLS, handshake, redirects and
 * retries, and the same transport outcomes.
 */
#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/tally.h"

#define CODE(name) TALLY__V1__RESULT_CODE__##name
#define BYTES_ARENA_CHUNK (64u << 10)

/* msg serialized into a fresh malloc'd buffer: false when out of memory. */
static bool bytes_pack(const ProtobufCMessage *msg, void **out, size_t *len)
{
	size_t n = protobuf_c_message_get_packed_size(msg);
	uint8_t *buf = malloc(n > 0 ? n : 1);
	if (buf == NULL)
		return false;
	size_t packed = protobuf_c_message_pack(msg, buf);
	assert(packed == n);
	*out = buf;
	*len = packed;
	return true;
}

/* Runs the decoded request; on OK, *answer is the message to hand back. */
static Tally__V1__ResultCode bytes_run(struct tally_client *c, const Tally__V1__Request *req,
				       struct tally_arena *a, const ProtobufCMessage **answer)
{
	Tally__V1__ResultCode rc = CODE(INVALID_ARGUMENT);
	switch (req->body_case) {
	case TALLY__V1__REQUEST__BODY_COMMAND: {
		Tally__V1__CommandResult *r = NULL;
		rc = tally_client_command(c, req->command, a, &r);
		*answer = r != NULL ? &r->base : NULL;
		break;
	}
	case TALLY__V1__REQUEST__BODY_BATCH: {
		Tally__V1__BatchResult *r = NULL;
		rc = tally_client_batch(c, req->batch->commands, req->batch->n_commands, a, &r);
		*answer = r != NULL ? &r->base : NULL;
		break;
	}
	case TALLY__V1__REQUEST__BODY_QUERY: {
		Tally__V1__QueryResult *r = NULL;
		rc = tally_client_query(c, req->query, a, &r);
		*answer = r != NULL ? &r->base : NULL;
		break;
	}
	case TALLY__V1__REQUEST__BODY_ADMIN: {
		Tally__V1__Response *r = NULL;
		rc = tally_client_admin(c, req->admin, a, &r);
		*answer = r != NULL ? &r->base : NULL;
		break;
	}
	default:
		break;
	}
	return rc;
}

Tally__V1__ResultCode tally_client_call_bytes(struct tally_client *c, const void *request,
					      size_t len, void **answer, size_t *answer_len)
{
	assert(c != NULL && (request != NULL || len == 0));
	assert(answer != NULL && answer_len != NULL);
	*answer = NULL;
	*answer_len = 0;
	struct tally_arena a;
	tally_arena_init(&a, BYTES_ARENA_CHUNK, 0);
	Tally__V1__Request *req = tally__v1__request__unpack(tally_arena_protobuf(&a), len, request);
	const ProtobufCMessage *msg = NULL;
	Tally__V1__ResultCode rc = req != NULL ? bytes_run(c, req, &a, &msg) : CODE(INVALID_ARGUMENT);
	if (rc == CODE(OK) && (msg == NULL || !bytes_pack(msg, answer, answer_len)))
		rc = CODE(INTERNAL); /* out of memory: the outcome of a command is unknown then */
	tally_arena_free(&a);
	return rc;
}

void tally_client_free_bytes(void *answer)
{
	free(answer);
}
