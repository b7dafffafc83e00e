/*
 * Fuzz target: a settlement statement as a payee checks it (tools/audit/checkstatement.c,
 * tally-audit check-statement): the file comes from the payer, so any text must be
 * refused with a reason or pass, never crash. The checkpoint is the one the seed
 * statement (tests/fuzz/corpus/statement) was proved against, so mutations of the
 * seed reach the recomputation of lines and totals, not only the parsing.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/checkpoint.h"
#include "tools/audit/statement.h"

#define SEED_TREE_SIZE 16
#define SEED_ROOT "313ebafcda4fba056fba6bf2708740b8dd77cc522a6cf68626adc77a473ce9c5"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct tally_checkpoint c;
	if (c.tree_size == 0) {
		c.tree_size = SEED_TREE_SIZE;
		int rc = tally_hex_decode(SEED_ROOT, strlen(SEED_ROOT), c.root, TALLY_HASH_BYTES);
		assert(rc == 0);
		(void)rc;
	}
	char *text = malloc(size + 1);
	assert(text != NULL);
	memcpy(text, data, size);
	text[size] = '\0';
	struct audit_statement summary;
	char err[1024];
	if (audit_statement_verify(text, &c, &summary, err, sizeof(err)) == 0)
		assert(summary.lines == NULL && strlen(summary.payer) < sizeof(summary.payer));
	else
		assert(err[0] != '\0'); /* a refusal always says why */
	free(text);
	return 0;
}
