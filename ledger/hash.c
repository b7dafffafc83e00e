/* SHA-256 helpers and the order-independent state digest arithmetic. */
#define OPENSSL_SUPPRESS_DEPRECATED 1 /* the low-level SHA256_* calls are the fastest for short inputs */
#include <assert.h>
#include <openssl/sha.h>
#include <string.h>

#include "ledger/internal.h"

void sha256_parts(const void *const parts[], const size_t lens[], size_t n, uint8_t out[32])
{
	assert(parts != NULL || n == 0);
	assert(out != NULL);
	SHA256_CTX c;
	SHA256_Init(&c);
	for (size_t i = 0; i < n; i++)
		SHA256_Update(&c, parts[i], lens[i]);
	SHA256_Final(out, &c);
}

/* The digest is a 256-bit integer, little-endian bytes, summed modulo 2^256: the sum
 * of record hashes does not depend on the order records were written or scanned. */
void digest_add(uint8_t acc[32], const uint8_t h[32])
{
	assert(acc != NULL && h != NULL);
	unsigned carry = 0;
	for (int i = 0; i < 32; i++) {
		unsigned s = (unsigned)acc[i] + h[i] + carry;
		acc[i] = (uint8_t)s;
		carry = s >> 8;
	}
}

void digest_sub(uint8_t acc[32], const uint8_t h[32])
{
	assert(acc != NULL && h != NULL);
	int borrow = 0;
	for (int i = 0; i < 32; i++) {
		int d = (int)acc[i] - h[i] - borrow;
		borrow = d < 0;
		acc[i] = (uint8_t)(d + (borrow ? 256 : 0));
	}
}

/* H(table ‖ key length ‖ key ‖ value): the table and the length make the encoding
 * unambiguous, so no two different records share a preimage. */
void record_hash(enum table t, const MDB_val *k, const MDB_val *v, uint8_t out[32])
{
	assert(t < T_COUNT && table_digested[t]);
	assert(k->mv_size <= KEY_BYTES_MAX);
	uint8_t head[3] = {(uint8_t)t, (uint8_t)(k->mv_size >> 8), (uint8_t)k->mv_size};
	const void *parts[3] = {head, k->mv_data, v->mv_data};
	size_t lens[3] = {sizeof(head), k->mv_size, v->mv_size};
	sha256_parts(parts, lens, 3, out);
}
