/* SHA-256 helpers, the order-independent state digest arithmetic, and the snapshot
 * seal's checksum. */
#define OPENSSL_SUPPRESS_DEPRECATED 1 /* the low-level SHA256_* calls are the fastest for short inputs */
#include <assert.h>
#include <openssl/sha.h>
#include <pthread.h>
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
 * of record hashes does not depend on the order records were written or scanned.
 * Worked in four 64-bit limbs, least significant first, whatever the host's order. */
void digest_add(uint8_t acc[32], const uint8_t h[32])
{
	assert(acc != NULL && h != NULL);
	uint64_t carry = 0;
	for (int i = 0; i < 32; i += 8) {
		uint64_t a = le64_get(acc + i), b = le64_get(h + i);
		uint64_t s = a + b;
		uint64_t c = s < a;
		s += carry;
		c |= s < carry;
		le64_put(acc + i, s);
		carry = c;
	}
}

void digest_sub(uint8_t acc[32], const uint8_t h[32])
{
	assert(acc != NULL && h != NULL);
	uint64_t borrow = 0;
	for (int i = 0; i < 32; i += 8) {
		uint64_t a = le64_get(acc + i), b = le64_get(h + i);
		uint64_t d = a - b;
		uint64_t o = a < b;
		o |= d < borrow;
		d -= borrow;
		le64_put(acc + i, d);
		borrow = o;
	}
}

/* ---- record hashes --------------------------------------------------------------
 * H(table ‖ key length ‖ key ‖ value): the table and the length make the encoding
 * unambiguous, so no two different records share a preimage. The value of a record
 * with a chain head in front (accounts, members) is hashed as format 8 stored it:
 * the head's path flag clear and its path left out, so that the digest is the same
 * with or without the path (internal.h, struct chain_head).
 *
 * An account record whose head has CHAIN_HEAD_LOTS_FLAG (rules 4, a record with more
 * than TALLY_ACCOUNT_LOTS_APART_MIN lots) adds to the digest in parts: the hash above
 * of the record without its lot fields (the flag, set in the head, keeps it apart from
 * any whole record's), plus for each lot field H(LOT_PART ‖ key length ‖ key ‖ the
 * field's bytes: tag, length, Lot). A command then hashes the lots it changed, and
 * the record's other fields, instead of every lot the account holds. */
#define LOT_PART 0x80 /* above every table's number: no record's preimage starts so */
_Static_assert(T_COUNT < LOT_PART, "a lot's hash must not share a table's first byte");

static void head_view(const uint8_t *head, uint8_t view[CHAIN_HEAD_BYTES])
{
	memcpy(view, head, CHAIN_HEAD_BYTES);
	be64_put(view + 8, be64_get(view + 8) & ~CHAIN_HEAD_PATH_FLAG);
}

static void key_prefix(uint8_t tag, const MDB_val *k, uint8_t prefix[3])
{
	assert(k->mv_size <= KEY_BYTES_MAX);
	prefix[0] = tag;
	prefix[1] = (uint8_t)(k->mv_size >> 8);
	prefix[2] = (uint8_t)k->mv_size;
}

/* The hash of an account's part without lots, begun: the table, key and head view that
 * record_hash puts in front of a record's body. */
static void part_begin(SHA256_CTX *c, const MDB_val *k, const uint8_t *head)
{
	uint8_t prefix[3], view[CHAIN_HEAD_BYTES];
	key_prefix(T_ACCOUNTS, k, prefix);
	head_view(head, view);
	SHA256_Init(c);
	SHA256_Update(c, prefix, sizeof(prefix));
	SHA256_Update(c, k->mv_data, k->mv_size);
	SHA256_Update(c, view, sizeof(view));
}

void account_part_hash(const MDB_val *k, const uint8_t head[CHAIN_HEAD_BYTES],
		       const uint8_t *body, size_t n, uint8_t out[32])
{
	SHA256_CTX c;
	part_begin(&c, k, head);
	SHA256_Update(&c, body, n);
	SHA256_Final(out, &c);
}

static void lot_field_hash(const MDB_val *k, const uint8_t *field, size_t n, uint8_t out[32])
{
	uint8_t prefix[3];
	key_prefix(LOT_PART, k, prefix);
	const void *parts[3] = {prefix, k->mv_data, field};
	size_t lens[3] = {sizeof(prefix), k->mv_size, n};
	sha256_parts(parts, lens, 3, out);
}

void account_lot_hash(const MDB_val *k, int64_t expiry_ms, int64_t points, uint8_t out[32])
{
	uint8_t field[CODEC_LOT_FIELD_BYTES_MAX];
	lot_field_hash(k, field, codec_lot_field(field, expiry_ms, points), out);
}

struct apart {
	const MDB_val *k;
	SHA256_CTX rest; /* the record without its lots */
	uint8_t sum[32]; /* its lots' hashes */
};

static void apart_field(void *ctx, bool lot, const uint8_t *at, size_t n)
{
	struct apart *p = ctx;
	if (!lot) {
		SHA256_Update(&p->rest, at, n);
		return;
	}
	uint8_t h[32];
	lot_field_hash(p->k, at, n, h);
	digest_add(p->sum, h);
}

/* The parts' sum for an account record hashed apart; false when its body is not
 * well-formed fields (it is then hashed whole, and the check finds the digest wrong). */
static bool account_apart_hash(const MDB_val *k, const MDB_val *v, size_t chained,
			       uint8_t out[32])
{
	struct apart p = {.k = k};
	part_begin(&p.rest, k, v->mv_data);
	if (!codec_fields((const uint8_t *)v->mv_data + chained, v->mv_size - chained, apart_field,
			  &p))
		return false;
	uint8_t h[32];
	SHA256_Final(h, &p.rest);
	digest_add(p.sum, h);
	memcpy(out, p.sum, 32);
	return true;
}

void record_hash(enum table t, const MDB_val *k, const MDB_val *v, uint8_t out[32])
{
	assert(t < T_COUNT && table_digested[t]);
	uint8_t prefix[3];
	key_prefix((uint8_t)t, k, prefix);
	uint8_t view[CHAIN_HEAD_BYTES];
	size_t chained = t == T_ACCOUNTS || t == T_MEMBERS ? chain_head_size(v) : 0;
	const void *parts[4] = {prefix, k->mv_data, v->mv_data};
	size_t lens[4] = {sizeof(prefix), k->mv_size, v->mv_size};
	size_t n = 3;
	if (chained > 0) { /* a head without its path hashes the same either way */
		if (t == T_ACCOUNTS &&
		    (be64_get((const uint8_t *)v->mv_data + 8) & CHAIN_HEAD_LOTS_FLAG) &&
		    account_apart_hash(k, v, chained, out))
			return;
		head_view(v->mv_data, view);
		parts[2] = view;
		lens[2] = sizeof(view);
		parts[3] = (const uint8_t *)v->mv_data + chained;
		lens[3] = v->mv_size - chained;
		n = 4;
	}
	sha256_parts(parts, lens, n, out);
}

/* ---- the snapshot seal's checksum ---------------------------------------------------
 * CRC32C (Castagnoli: reflected polynomial 0x82F63B78, initial value and final xor
 * 0xFFFFFFFF) in SEAL_LANES lanes: lane i is the CRC32C of blocks i, i + SEAL_LANES,
 * i + 2 * SEAL_LANES, ... of SEAL_BLOCK_BYTES each (the data's last block may be
 * short). The lanes are independent, so the processor's CRC32 instruction (latency 3,
 * one per cycle) runs them side by side; the seal keeps all of them. */

static uint32_t crc32c_table[256];
static pthread_once_t crc32c_table_once = PTHREAD_ONCE_INIT;

static void crc32c_table_build(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		crc32c_table[i] = c;
	}
}

/* One lane's CRC32C register (before the final xor) carried over p[0..n). */
static uint32_t crc32c_soft(uint32_t crc, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		crc = crc32c_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
	return crc;
}

void crc32c_lanes_soft(const void *data, size_t len, uint32_t lanes[SEAL_LANES])
{
	assert(data != NULL || len == 0);
	pthread_once(&crc32c_table_once, crc32c_table_build);
	const uint8_t *p = data;
	for (int i = 0; i < SEAL_LANES; i++)
		lanes[i] = 0xFFFFFFFFu;
	for (size_t at = 0, block = 0; at < len; at += SEAL_BLOCK_BYTES, block++) {
		size_t n = len - at < SEAL_BLOCK_BYTES ? len - at : SEAL_BLOCK_BYTES;
		uint32_t *lane = &lanes[block % SEAL_LANES];
		*lane = crc32c_soft(*lane, p + at, n);
	}
	for (int i = 0; i < SEAL_LANES; i++)
		lanes[i] ^= 0xFFFFFFFFu;
}

#if defined(__x86_64__)
/* The same with SSE 4.2's CRC32 instruction: whole groups of SEAL_LANES full blocks
 * lane by lane in lockstep, 8 bytes at a time, and what is left as the table does it. */
__attribute__((target("sse4.2"))) static void crc32c_lanes_sse42(const void *data, size_t len,
								 uint32_t lanes[SEAL_LANES])
{
	const uint8_t *p = data;
	uint64_t c[SEAL_LANES];
	for (int i = 0; i < SEAL_LANES; i++)
		c[i] = 0xFFFFFFFFu;
	const size_t group = (size_t)SEAL_LANES * SEAL_BLOCK_BYTES;
	size_t at = 0;
	for (; len - at >= group; at += group)
		for (size_t w = 0; w < SEAL_BLOCK_BYTES; w += 8)
			for (int i = 0; i < SEAL_LANES; i++) {
				uint64_t v;
				memcpy(&v, p + at + (size_t)i * SEAL_BLOCK_BYTES + w, 8);
				c[i] = __builtin_ia32_crc32di(c[i], v);
			}
	for (size_t block = 0; at < len; at += SEAL_BLOCK_BYTES, block++) {
		size_t n = len - at < SEAL_BLOCK_BYTES ? len - at : SEAL_BLOCK_BYTES;
		uint32_t crc = (uint32_t)c[block % SEAL_LANES];
		size_t k = 0;
		for (; n - k >= 8; k += 8) {
			uint64_t v;
			memcpy(&v, p + at + k, 8);
			crc = (uint32_t)__builtin_ia32_crc32di(crc, v);
		}
		for (; k < n; k++)
			crc = __builtin_ia32_crc32qi(crc, p[at + k]);
		c[block % SEAL_LANES] = crc;
	}
	for (int i = 0; i < SEAL_LANES; i++)
		lanes[i] = (uint32_t)c[i] ^ 0xFFFFFFFFu;
}
#endif

void crc32c_lanes(const void *data, size_t len, uint32_t lanes[SEAL_LANES])
{
#if defined(__x86_64__)
	if (__builtin_cpu_supports("sse4.2")) {
		crc32c_lanes_sse42(data, len, lanes);
		return;
	}
#endif
	crc32c_lanes_soft(data, len, lanes);
}
