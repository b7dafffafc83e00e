/*
 * Fuzz target: checkpoint files (rpc/checkpoint.c, rpc/json.c), which an auditor reads
 * from wherever they came. Any text is parsed without a crash; a text that parses is
 * written back (tally_checkpoint_write_json) and must parse to the same checkpoint and
 * proof; a parsed checkpoint's signature check must not crash either.
 */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/checkpoint.h"
#include "rpc/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tally_checkpoint_proof proof, again_proof;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > TALLY_CHECKPOINT_JSON_BYTES_MAX)
		return 0;
	char *text = malloc(size + 1);
	assert(text != NULL);
	memcpy(text, data, size);
	text[size] = '\0';
	struct tally_checkpoint c, again;
	char err[128];
	char name[64];
	(void)tally_json_str(text, "member", name, sizeof(name)); /* any text: no crash */
	if (tally_checkpoint_parse_json(text, &c, &proof, err, sizeof(err)) == 0) {
		(void)tally_checkpoint_verify(&c);
		char *out = NULL;
		size_t len = 0;
		FILE *f = open_memstream(&out, &len);
		assert(f != NULL);
		tally_checkpoint_write_json(&c, &proof, f);
		fclose(f);
		int rc = tally_checkpoint_parse_json(out, &again, &again_proof, err, sizeof(err));
		assert(rc == 0);
		assert(memcmp(&c, &again, sizeof(c)) == 0);
		assert(proof.from == again_proof.from && proof.n == again_proof.n);
		assert(memcmp(proof.path, again_proof.path, proof.n * TALLY_HASH_BYTES) == 0);
		free(out);
	}
	free(text);
	return 0;
}
