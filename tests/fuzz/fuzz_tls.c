/*
 * Fuzz target: the TLS engine's record handling (rpc/tls.c), as a node meets it: the
 * input is what a client (first byte even) or a raft peer (odd) sends, cut into
 * feeds; the engine must fail or wait, never crash, and never complete a handshake
 * nobody could (a peer handshake would need a certificate of the cluster's CA).
 * Certificates come from $TALLY_FUZZ_CERTS (tally-certs init --nodes 1; make fuzz
 * makes them).
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>

#include "rpc/tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tally_tls_ctx *ctx;

static void fuzz_ctx(void)
{
	const char *dir = getenv("TALLY_FUZZ_CERTS");
	char ca[512], cert[512], key[512], err[256];
	if (dir == NULL) {
		fprintf(stderr, "fuzz_tls: set TALLY_FUZZ_CERTS to a tally-certs directory\n");
		abort();
	}
	snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
	snprintf(cert, sizeof(cert), "%s/node-1.pem", dir);
	snprintf(key, sizeof(key), "%s/node-1.key", dir);
	if (tally_tls_ctx_node(&ctx, ca, cert, key, 1, err, sizeof(err)) != 0) {
		fprintf(stderr, "fuzz_tls: %s\n", err);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (ctx == NULL)
		fuzz_ctx();
	if (size == 0)
		return 0;
	bool peer = data[0] & 1;
	struct tally_tls *t = tally_tls_new(ctx, peer ? TALLY_TLS_PEER_ACCEPT : TALLY_TLS_CLIENT_ACCEPT);
	assert(t != NULL);
	uint8_t out[16384], plain[4096];
	for (size_t at = 1; at < size;) {
		size_t chunk = 1 + data[at] % 128;
		at++;
		if (chunk > size - at)
			chunk = size - at;
		tally_tls_feed(t, data + at, chunk);
		at += chunk;
		enum tally_tls_status st = tally_tls_handshake(t);
		while (tally_tls_take(t, out, sizeof(out)) > 0)
			;
		if (st == TALLY_TLS_FAILED)
			break;
		if (st == TALLY_TLS_DONE) {
			assert(!peer); /* no input can prove a node certificate */
			size_t got;
			while (tally_tls_read(t, plain, sizeof(plain), &got) == TALLY_TLS_DONE)
				;
		}
	}
	tally_tls_free(t);
	return 0;
}
