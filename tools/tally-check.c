/*
 * tally-check: verify a ledger directory offline, as an auditor or a test harness does
 * after a run (the node must be stopped).
 *
 *   tally-check [--json] LEDGER_DIR      (a node's DATA_DIR/ledger)
 *
 * Runs the full invariant check (books balance per brand, postings sum to zero, lots
 * and holds match balances, Merkle root and state digest recomputed) and prints the
 * digest. Exit 0 when it holds, 1 when an invariant fails, 2 on a usage or open error.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ledger/ledger.h"

static void hex(const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf("%02x", b[i]);
}

int main(int argc, char **argv)
{
	bool json = argc == 3 && strcmp(argv[1], "--json") == 0;
	if (argc != 2 + json) {
		fprintf(stderr, "usage: tally-check [--json] LEDGER_DIR\n");
		return 2;
	}
	const char *dir = argv[argc - 1];
	struct tally_ledger_options o = {.map_size_bytes = 0};
	struct tally_ledger *l;
	int rc = tally_ledger_open(dir, &o, &l);
	if (rc != 0) {
		fprintf(stderr, "tally-check: %s: %s\n", dir, tally_strerror(rc));
		return 2;
	}
	char msg[512];
	int bad = tally_ledger_check_invariants(l, msg, sizeof(msg));
	struct tally_digest d;
	rc = tally_ledger_digest(l, &d);
	tally_ledger_close(l);
	if (rc != 0) {
		fprintf(stderr, "tally-check: %s: %s\n", dir, tally_strerror(rc));
		return 2;
	}
	printf(json ? "{\"valid\":%s,\"message\":\"%s\",\"applied_index\":%" PRIu64
		      ",\"tree_size\":%" PRIu64 ",\"root\":\""
		    : "%s%s\napplied_index %" PRIu64 " tree_size %" PRIu64 " root ",
	       json ? (bad ? "false" : "true") : (bad ? "INVALID: " : "valid"),
	       bad ? msg : "", d.applied_index, d.tree_size);
	hex(d.root, 32);
	printf(json ? "\",\"state_digest\":\"" : " state_digest ");
	hex(d.state_digest, 32);
	printf(json ? "\"}\n" : "\n");
	return bad ? 1 : 0;
}
