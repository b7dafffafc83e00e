/*
 * Tests of ledger/merkle.c against RFC 9162 §2.1.
 *
 * Every root and leaf hash the module produces is checked against a naive
 * recursive Merkle Tree Hash written here straight from the RFC definition,
 * hashing with OpenSSL's EVP interface (the module uses another one).
 *
 * Set TALLY_TEST_QUICK=1 to shrink the exhaustive tests from 2000 to 200
 * leaves (for valgrind).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "ledger/error.h"
#include "ledger/merkle.h"

#define HASH_BYTES TALLY_HASH_BYTES
#define LEAVES_MAX 2000u
#define LEAVES_QUICK 200u
#define MEM_LEVELS 12u    /* 2^11 > LEAVES_MAX */
#define MEM_WIDTH 2048u   /* > LEAVES_MAX */
#define LEAF_DATA_BYTES_MAX 41u

/* The verifiers take `const uint8_t (*)[32]`; ISO C before C23 wants the
 * conversion from the non-const arrays spelled out. */
#define CPROOF(p) ((const uint8_t(*)[HASH_BYTES])(p))

/* In-memory node store: node (level, index) at hash[level][index]. */
struct mem_store {
	uint8_t hash[MEM_LEVELS][MEM_WIDTH][HASH_BYTES];
	bool present[MEM_LEVELS][MEM_WIDTH];
	unsigned long n_puts;
	unsigned long fail_put_number; /* 1-based put() that fails; 0: none */
	int get_error;                 /* returned by every get() if non-zero */
	bool rewrote_differently;      /* a put() changed an existing node */
	bool overflowed;               /* a put() fell outside the arrays */
};

static unsigned g_leaves;      /* leaves in the exhaustive tests */
static EVP_MD *g_sha256;
static uint8_t g_naive_root[LEAVES_MAX + 2][HASH_BYTES];
static uint8_t g_naive_leaf[LEAVES_MAX + 1][HASH_BYTES];
static struct mem_store g_store; /* holds all g_leaves leaves */
static struct tally_merkle_store g_iface;

static uint64_t g_rng = 0x9e3779b97f4a7c15u;

static uint64_t rng_next(void)
{
	g_rng ^= g_rng << 13;
	g_rng ^= g_rng >> 7;
	g_rng ^= g_rng << 17;
	return g_rng;
}

static int mem_get(void *ctx, unsigned level, uint64_t index,
		   uint8_t out[HASH_BYTES])
{
	struct mem_store *m = ctx;
	if (m->get_error != 0) {
		return m->get_error;
	}
	if (level >= MEM_LEVELS || index >= MEM_WIDTH ||
	    !m->present[level][index]) {
		return TALLY_ENOTFOUND;
	}
	memcpy(out, m->hash[level][index], HASH_BYTES);
	return 0;
}

static int mem_put(void *ctx, unsigned level, uint64_t index,
		   const uint8_t hash[HASH_BYTES])
{
	struct mem_store *m = ctx;
	m->n_puts++;
	if (m->fail_put_number != 0 && m->n_puts == m->fail_put_number) {
		return TALLY_ESTORE;
	}
	if (level >= MEM_LEVELS || index >= MEM_WIDTH) {
		m->overflowed = true;
		return TALLY_EFULL;
	}
	if (m->present[level][index] &&
	    memcmp(m->hash[level][index], hash, HASH_BYTES) != 0) {
		m->rewrote_differently = true;
	}
	memcpy(m->hash[level][index], hash, HASH_BYTES);
	m->present[level][index] = true;
	return 0;
}

static struct tally_merkle_store mem_iface(struct mem_store *m)
{
	struct tally_merkle_store s = { .ctx = m, .get = mem_get, .put = mem_put };
	return s;
}

/* Deterministic data of leaf i: (i % 41) bytes, so leaf 0 is empty. */
static size_t leaf_data(unsigned i, uint8_t buf[LEAF_DATA_BYTES_MAX])
{
	size_t len = i % LEAF_DATA_BYTES_MAX;
	for (size_t j = 0; j < len; j++) {
		buf[j] = (uint8_t)(i * 131u + j * 7u + 1u);
	}
	return len;
}

static void naive_digest(const uint8_t *buf, size_t len, uint8_t out[HASH_BYTES])
{
	unsigned out_len = 0;
	if (EVP_Digest(buf, len, out, &out_len, g_sha256, NULL) != 1 ||
	    out_len != HASH_BYTES) {
		fail_msg("EVP_Digest failed");
	}
}

/* MTH(D[begin:end]) exactly as RFC 9162 §2.1.1 defines it. */
static void naive_mth(unsigned begin, unsigned end, uint8_t out[HASH_BYTES])
{
	uint8_t buf[1 + 2 * HASH_BYTES] = { 0 };
	unsigned n = end - begin;
	if (n == 0) {
		naive_digest(buf, 0, out);
		return;
	}
	if (n == 1) {
		buf[0] = 0x00;
		size_t len = leaf_data(begin, buf + 1);
		naive_digest(buf, 1 + len, out);
		return;
	}
	unsigned k = 1;
	while (2 * k < n) {
		k *= 2;
	}
	buf[0] = 0x01;
	naive_mth(begin, begin + k, buf + 1);
	naive_mth(begin + k, end, buf + 1 + HASH_BYTES);
	naive_digest(buf, sizeof(buf), out);
}

static unsigned ceil_log2(uint64_t n)
{
	unsigned log = 0;
	while (log < 64 && (UINT64_C(1) << log) < n) {
		log++;
	}
	return log;
}

static void append_all(struct mem_store *m, struct tally_merkle_frontier *f,
		       unsigned n_leaves)
{
	struct tally_merkle_store s = mem_iface(m);
	tally_merkle_frontier_init(f);
	for (unsigned i = 0; i < n_leaves; i++) {
		uint8_t data[LEAF_DATA_BYTES_MAX];
		uint8_t leaf[HASH_BYTES];
		tally_merkle_leaf_hash(data, leaf_data(i, data), leaf);
		int rc = tally_merkle_append(f, &s, leaf);
		if (rc != 0) {
			fail_msg("append %u: %s", i, tally_strerror(rc));
		}
	}
}

static int group_setup(void **state)
{
	(void)state;
	const char *quick = getenv("TALLY_TEST_QUICK");
	g_leaves = quick != NULL && strcmp(quick, "1") == 0 ? LEAVES_QUICK
							     : LEAVES_MAX;
	g_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (g_sha256 == NULL) {
		return -1;
	}
	for (unsigned n = 0; n <= g_leaves + 1; n++) {
		naive_mth(0, n, g_naive_root[n]);
	}
	for (unsigned i = 0; i <= g_leaves; i++) {
		naive_mth(i, i + 1, g_naive_leaf[i]);
	}
	struct tally_merkle_frontier f;
	append_all(&g_store, &f, g_leaves);
	g_iface = mem_iface(&g_store);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	EVP_MD_free(g_sha256);
	return 0;
}

static void test_empty_root_is_sha256_of_empty_string(void **state)
{
	(void)state;
	static const uint8_t expected[HASH_BYTES] = {
		0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14,
		0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
		0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c,
		0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
	};
	uint8_t out[HASH_BYTES];
	tally_merkle_empty_root(out);
	assert_memory_equal(out, expected, HASH_BYTES);

	struct tally_merkle_frontier f;
	tally_merkle_frontier_init(&f);
	tally_merkle_frontier_root(&f, out);
	assert_memory_equal(out, expected, HASH_BYTES);
	assert_int_equal(tally_merkle_root_at(&g_iface, 0, out), 0);
	assert_memory_equal(out, expected, HASH_BYTES);
}

static void test_one_leaf_tree_of_empty_data_has_root_sha256_of_zero_byte(void **state)
{
	(void)state;
	static const uint8_t expected[HASH_BYTES] = {
		0x6e, 0x34, 0x0b, 0x9c, 0xff, 0xb3, 0x7a, 0x98,
		0x9c, 0xa5, 0x44, 0xe6, 0xbb, 0x78, 0x0a, 0x2c,
		0x78, 0x90, 0x1d, 0x3f, 0xb3, 0x37, 0x38, 0x76,
		0x85, 0x11, 0xa3, 0x06, 0x17, 0xaf, 0xa0, 0x1d,
	};
	uint8_t leaf[HASH_BYTES];
	uint8_t root[HASH_BYTES];
	tally_merkle_leaf_hash(NULL, 0, leaf);
	assert_memory_equal(leaf, expected, HASH_BYTES);

	struct mem_store *m = calloc(1, sizeof(*m));
	assert_non_null(m);
	struct tally_merkle_store s = mem_iface(m);
	struct tally_merkle_frontier f;
	tally_merkle_frontier_init(&f);
	assert_int_equal(tally_merkle_append(&f, &s, leaf), 0);
	tally_merkle_frontier_root(&f, root);
	assert_memory_equal(root, expected, HASH_BYTES);
	assert_int_equal(tally_merkle_root_at(&s, 1, root), 0);
	assert_memory_equal(root, expected, HASH_BYTES);
	/* Leaf 0 of the test data is empty too. */
	assert_memory_equal(g_naive_root[1], expected, HASH_BYTES);
	free(m);
}

static void test_node_hash_is_sha256_of_0x01_left_right_even_when_aliased(void **state)
{
	(void)state;
	uint8_t buf[1 + 2 * HASH_BYTES];
	uint8_t expected[HASH_BYTES];
	uint8_t out[HASH_BYTES];
	buf[0] = 0x01;
	memcpy(buf + 1, g_naive_leaf[0], HASH_BYTES);
	memcpy(buf + 1 + HASH_BYTES, g_naive_leaf[1], HASH_BYTES);
	naive_digest(buf, sizeof(buf), expected);

	tally_merkle_node_hash(g_naive_leaf[0], g_naive_leaf[1], out);
	assert_memory_equal(out, expected, HASH_BYTES);
	memcpy(out, g_naive_leaf[0], HASH_BYTES);
	tally_merkle_node_hash(out, g_naive_leaf[1], out);
	assert_memory_equal(out, expected, HASH_BYTES);
	memcpy(out, g_naive_leaf[1], HASH_BYTES);
	tally_merkle_node_hash(g_naive_leaf[0], out, out);
	assert_memory_equal(out, expected, HASH_BYTES);
}

static void test_root_matches_naive_recursion_for_sizes_1_to_2000(void **state)
{
	(void)state;
	struct mem_store *m = calloc(1, sizeof(*m));
	assert_non_null(m);
	struct tally_merkle_store s = mem_iface(m);
	struct tally_merkle_frontier f;
	tally_merkle_frontier_init(&f);
	uint8_t root[HASH_BYTES];
	for (unsigned i = 0; i < g_leaves; i++) {
		uint8_t data[LEAF_DATA_BYTES_MAX];
		uint8_t leaf[HASH_BYTES];
		tally_merkle_leaf_hash(data, leaf_data(i, data), leaf);
		assert_memory_equal(leaf, g_naive_leaf[i], HASH_BYTES);
		assert_int_equal(tally_merkle_append(&f, &s, leaf), 0);
		assert_true(f.size == i + 1);
		tally_merkle_frontier_root(&f, root);
		if (memcmp(root, g_naive_root[i + 1], HASH_BYTES) != 0) {
			fail_msg("frontier root of size %u differs", i + 1);
		}
	}
	/* Every historical size, from the store alone. */
	for (unsigned n = 0; n <= g_leaves; n++) {
		assert_int_equal(tally_merkle_root_at(&s, n, root), 0);
		if (memcmp(root, g_naive_root[n], HASH_BYTES) != 0) {
			fail_msg("root_at(%u) differs", n);
		}
	}
	assert_int_equal(tally_merkle_root_at(&s, g_leaves + 1, root),
			 TALLY_ENOTFOUND);
	assert_false(m->rewrote_differently);
	assert_false(m->overflowed);
	free(m);
}

static void test_append_stores_exactly_the_completed_perfect_nodes(void **state)
{
	(void)state;
	uint8_t expected[HASH_BYTES];
	unsigned long n_nodes = 0;
	for (unsigned level = 0; level < MEM_LEVELS; level++) {
		for (unsigned index = 0; index < MEM_WIDTH; index++) {
			bool complete = ((index + 1u) << level) <= g_leaves;
			assert_int_equal(g_store.present[level][index], complete);
			if (!complete) {
				continue;
			}
			naive_mth(index << level, (index + 1u) << level, expected);
			assert_memory_equal(g_store.hash[level][index], expected,
					    HASH_BYTES);
			n_nodes++;
		}
	}
	/* Each node is put once: sum over levels of floor(n / 2^level). */
	assert_int_equal(g_store.n_puts, n_nodes);
	assert_int_equal(n_nodes, 2ul * g_leaves - (unsigned long)
			 __builtin_popcount(g_leaves));
}

static void test_inclusion_proofs_verify_for_every_leaf_of_sizes_1_to_2000(void **state)
{
	(void)state;
	uint8_t proof[TALLY_MERKLE_PROOF_MAX][HASH_BYTES];
	unsigned long n_proofs = 0;
	for (unsigned size = 1; size <= g_leaves; size++) {
		for (unsigned index = 0; index < size; index++) {
			size_t n = 0;
			int rc = tally_merkle_inclusion_proof(
				&g_iface, index, size, proof,
				TALLY_MERKLE_PROOF_MAX, &n);
			if (rc != 0 || n > ceil_log2(size)) {
				fail_msg("proof(%u, %u): %s, %zu hashes", index,
					 size, tally_strerror(rc), n);
			}
			rc = tally_merkle_verify_inclusion(
				g_naive_leaf[index], index, size, CPROOF(proof),
				n, g_naive_root[size]);
			if (rc != 0) {
				fail_msg("verify(%u, %u): %s", index, size,
					 tally_strerror(rc));
			}
			n_proofs++;
		}
	}
	assert_int_equal(n_proofs, (unsigned long)g_leaves * (g_leaves + 1) / 2);
}

/* Generate PROOF(m, D[n]) and check it verifies against the naive roots. */
static void check_consistency(unsigned m, unsigned n)
{
	uint8_t proof[TALLY_MERKLE_PROOF_MAX][HASH_BYTES];
	size_t n_hashes = 0;
	int rc = tally_merkle_consistency_proof(&g_iface, m, n, proof,
						TALLY_MERKLE_PROOF_MAX, &n_hashes);
	if (rc != 0 || n_hashes > ceil_log2(n) + 1 ||
	    (m == n && n_hashes != 0)) {
		fail_msg("proof(%u, %u): %s, %zu hashes", m, n,
			 tally_strerror(rc), n_hashes);
	}
	rc = tally_merkle_verify_consistency(m, n, g_naive_root[m],
					     g_naive_root[n], CPROOF(proof),
					     n_hashes);
	if (rc != 0) {
		fail_msg("verify(%u, %u): %s", m, n, tally_strerror(rc));
	}
}

static void test_consistency_proofs_verify_for_spread_of_sizes(void **state)
{
	(void)state;
	for (unsigned n = 1; n <= g_leaves; n++) {
		if (n <= 256) { /* every pair of small sizes */
			for (unsigned m = 1; m <= n; m++) {
				check_consistency(m, n);
			}
			continue;
		}
		const unsigned fixed[] = { 1, 2, 3, n / 2, n - 2, n - 1, n };
		for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
			check_consistency(fixed[i], n);
		}
		for (unsigned p = 2; p < n; p *= 2) {
			check_consistency(p - 1, n);
			check_consistency(p, n);
			check_consistency(p + 1, n);
		}
		for (unsigned r = 0; r < 4; r++) {
			check_consistency(1 + (unsigned)(rng_next() % n), n);
		}
	}
}

static const unsigned tamper_sizes[] = {
	1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100,
	127, 128, 129, 255, 256, 257, 1000, 1023, 1024, 1025, 1999, 2000,
};
#define N_TAMPER_SIZES (sizeof(tamper_sizes) / sizeof(tamper_sizes[0]))

static void expect_inclusion_rejected(const uint8_t leaf[HASH_BYTES],
				      uint64_t index, uint64_t size,
				      const uint8_t proof[][HASH_BYTES], size_t n,
				      const uint8_t root[HASH_BYTES],
				      const char *what)
{
	int rc = tally_merkle_verify_inclusion(leaf, index, size, proof, n, root);
	if (rc != TALLY_ECORRUPT) {
		fail_msg("%s: index %llu size %llu accepted (%d)", what,
			 (unsigned long long)index, (unsigned long long)size, rc);
	}
}

/* All the ways to damage the valid proof of leaf `index` in `size`. */
static void tamper_inclusion(unsigned index, unsigned size)
{
	uint8_t proof[TALLY_MERKLE_PROOF_MAX + 1][HASH_BYTES];
	uint8_t bad[HASH_BYTES];
	size_t n = 0;
	assert_int_equal(tally_merkle_inclusion_proof(&g_iface, index, size, proof,
						      TALLY_MERKLE_PROOF_MAX, &n), 0);
	const uint8_t *leaf = g_naive_leaf[index];
	const uint8_t *root = g_naive_root[size];
	for (size_t e = 0; e < n; e++) {
		static const unsigned bits[] = { 0, 7, 131, 255 };
		for (size_t b = 0; b < 4; b++) {
			proof[e][bits[b] / 8] ^= (uint8_t)(1u << (bits[b] % 8));
			expect_inclusion_rejected(leaf, index, size, CPROOF(proof),
						  n, root, "flipped element");
			proof[e][bits[b] / 8] ^= (uint8_t)(1u << (bits[b] % 8));
		}
	}
	if (index + 1 < size) {
		expect_inclusion_rejected(leaf, index + 1, size, CPROOF(proof),
					  n, root, "index + 1");
		expect_inclusion_rejected(g_naive_leaf[index + 1], index, size,
					  CPROOF(proof), n, root, "other leaf");
	}
	if (index > 0) {
		expect_inclusion_rejected(leaf, index - 1, size, CPROOF(proof),
					  n, root, "index - 1");
	}
	/* A different size is checked against that size's true root: the
	 * verifier binds the size only through the root (see below). */
	if (size + 1 <= g_leaves + 1) {
		expect_inclusion_rejected(leaf, index, size + 1, CPROOF(proof),
					  n, g_naive_root[size + 1], "size + 1");
	}
	if (size - 1 > index) {
		expect_inclusion_rejected(leaf, index, size - 1, CPROOF(proof),
					  n, g_naive_root[size - 1], "size - 1");
	}
	memcpy(bad, leaf, HASH_BYTES);
	bad[HASH_BYTES - 1] ^= 0x80;
	expect_inclusion_rejected(bad, index, size, CPROOF(proof), n, root,
				  "flipped leaf");
	memcpy(bad, root, HASH_BYTES);
	bad[0] ^= 0x01;
	expect_inclusion_rejected(leaf, index, size, CPROOF(proof), n, bad,
				  "flipped root");
	expect_inclusion_rejected(leaf, index, size, CPROOF(proof), n,
				  g_naive_root[size - 1], "older root");
	if (n > 0) {
		expect_inclusion_rejected(leaf, index, size, CPROOF(proof),
					  n - 1, root, "truncated");
		expect_inclusion_rejected(leaf, index, size, CPROOF(proof + 1),
					  n - 1, root, "first element dropped");
	}
	memcpy(proof[n], n > 0 ? proof[n - 1] : leaf, HASH_BYTES);
	expect_inclusion_rejected(leaf, index, size, CPROOF(proof), n + 1, root,
				  "extended");
	/* An extra element X would lift the root to H(X, root): the proof is
	 * then too long for the size, which the length checks must catch. */
	tally_merkle_node_hash(proof[n], root, bad);
	expect_inclusion_rejected(leaf, index, size, CPROOF(proof), n + 1, bad,
				  "extended, root lifted to match");
	/* Same root, twice the size: the proof ends before reaching the top. */
	expect_inclusion_rejected(leaf, index, 2 * (uint64_t)size, CPROOF(proof),
				  n, root, "size doubled");
}

static void test_tampered_inclusion_proofs_fail(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_TAMPER_SIZES; i++) {
		unsigned size = tamper_sizes[i];
		if (size > g_leaves) {
			continue;
		}
		const unsigned indexes[] = { 0, 1, size / 3, size / 2,
					     size - 2, size - 1 };
		for (size_t j = 0; j < sizeof(indexes) / sizeof(indexes[0]); j++) {
			if (indexes[j] < size) {
				tamper_inclusion(indexes[j], size);
			}
		}
	}
}

static void test_inclusion_verifier_binds_size_only_through_root(void **state)
{
	(void)state;
	/* RFC 9162 §2.1.3.2 checks the proof's shape, not the size itself:
	 * PATH(0, D[3]) = {leaf 1, leaf 2} also has the shape of
	 * PATH(0, D[4]), so it verifies as size 4 against the size-3 root.
	 * Callers must trust (size, root) as a pair, e.g. a signed head. */
	uint8_t proof[TALLY_MERKLE_PROOF_MAX][HASH_BYTES];
	size_t n = 0;
	assert_int_equal(tally_merkle_inclusion_proof(&g_iface, 0, 3, proof,
						      TALLY_MERKLE_PROOF_MAX, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(tally_merkle_verify_inclusion(g_naive_leaf[0], 0, 3,
			 CPROOF(proof), n, g_naive_root[3]), 0);
	assert_int_equal(tally_merkle_verify_inclusion(g_naive_leaf[0], 0, 4,
			 CPROOF(proof), n, g_naive_root[3]), 0);
	assert_int_equal(tally_merkle_verify_inclusion(g_naive_leaf[0], 0, 4,
			 CPROOF(proof), n, g_naive_root[4]), TALLY_ECORRUPT);
}

static void expect_consistency_rejected(uint64_t old_size, uint64_t new_size,
					const uint8_t old_root[HASH_BYTES],
					const uint8_t new_root[HASH_BYTES],
					const uint8_t proof[][HASH_BYTES],
					size_t n, const char *what)
{
	int rc = tally_merkle_verify_consistency(old_size, new_size, old_root,
						 new_root, proof, n);
	if (rc != TALLY_ECORRUPT) {
		fail_msg("%s: %llu -> %llu accepted (%d)", what,
			 (unsigned long long)old_size,
			 (unsigned long long)new_size, rc);
	}
}

/* Size changes of a consistency proof, checked against the true roots. */
static void tamper_consistency_sizes(unsigned m, unsigned n,
				     const uint8_t proof[][HASH_BYTES],
				     size_t n_hashes)
{
	const uint8_t *old_root = g_naive_root[m];
	const uint8_t *new_root = g_naive_root[n];
	expect_consistency_rejected(m + 1, n, g_naive_root[m + 1], new_root,
				    proof, n_hashes, "old size + 1");
	expect_consistency_rejected(m - 1, n, g_naive_root[m - 1], new_root,
				    proof, n_hashes, "old size - 1");
	if (n + 1 <= g_leaves + 1) {
		expect_consistency_rejected(m, n + 1, old_root,
					    g_naive_root[n + 1], proof, n_hashes,
					    "new size + 1");
	}
	expect_consistency_rejected(m, n - 1, old_root, g_naive_root[n - 1],
				    proof, n_hashes, "new size - 1");
}

/* All the ways to damage the valid proof between sizes m < n. */
static void tamper_consistency(unsigned m, unsigned n)
{
	uint8_t proof[TALLY_MERKLE_PROOF_MAX + 1][HASH_BYTES];
	uint8_t bad[HASH_BYTES];
	size_t k = 0;
	assert_int_equal(tally_merkle_consistency_proof(&g_iface, m, n, proof,
							TALLY_MERKLE_PROOF_MAX, &k), 0);
	const uint8_t *old_root = g_naive_root[m];
	const uint8_t *new_root = g_naive_root[n];
	assert_int_equal(tally_merkle_verify_consistency(m, n, old_root, new_root,
							 CPROOF(proof), k), 0);
	for (size_t e = 0; e < k; e++) {
		static const unsigned bits[] = { 0, 7, 131, 255 };
		for (size_t b = 0; b < 4; b++) {
			proof[e][bits[b] / 8] ^= (uint8_t)(1u << (bits[b] % 8));
			expect_consistency_rejected(m, n, old_root, new_root,
						    CPROOF(proof), k,
						    "flipped element");
			proof[e][bits[b] / 8] ^= (uint8_t)(1u << (bits[b] % 8));
		}
	}
	tamper_consistency_sizes(m, n, CPROOF(proof), k);
	expect_consistency_rejected(m, n, new_root, old_root, CPROOF(proof), k,
				    "swapped roots");
	memcpy(bad, old_root, HASH_BYTES);
	bad[5] ^= 0x10;
	expect_consistency_rejected(m, n, bad, new_root, CPROOF(proof), k,
				    "flipped old root");
	memcpy(bad, new_root, HASH_BYTES);
	bad[31] ^= 0x01;
	expect_consistency_rejected(m, n, old_root, bad, CPROOF(proof), k,
				    "flipped new root");
	expect_consistency_rejected(m, n, old_root, new_root, CPROOF(proof),
				    k - 1, "truncated");
	expect_consistency_rejected(m, n, old_root, new_root, CPROOF(proof + 1),
				    k - 1, "first element dropped");
	memcpy(proof[k], proof[k - 1], HASH_BYTES);
	expect_consistency_rejected(m, n, old_root, new_root, CPROOF(proof),
				    k + 1, "extended");
	memcpy(proof[k], new_root, HASH_BYTES);
	expect_consistency_rejected(m, n, old_root, new_root, CPROOF(proof),
				    k + 1, "extended by root");
	/* An extra element X would lift both roots to H(X, root). */
	uint8_t lifted_old[HASH_BYTES];
	tally_merkle_node_hash(proof[k], old_root, lifted_old);
	tally_merkle_node_hash(proof[k], new_root, bad);
	expect_consistency_rejected(m, n, lifted_old, bad, CPROOF(proof), k + 1,
				    "extended, roots lifted to match");
	/* Same roots, twice the new size: the proof ends too low. */
	expect_consistency_rejected(m, 2 * (uint64_t)n, old_root, new_root,
				    CPROOF(proof), k, "new size doubled");
}

static void test_tampered_consistency_proofs_fail(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_TAMPER_SIZES; i++) {
		for (size_t j = i + 1; j < N_TAMPER_SIZES; j++) {
			if (tamper_sizes[j] <= g_leaves) {
				tamper_consistency(tamper_sizes[i],
						   tamper_sizes[j]);
			}
		}
	}
	/* Equal sizes: only the empty proof and equal roots pass. */
	uint8_t extra[1][HASH_BYTES];
	memcpy(extra[0], g_naive_root[5], HASH_BYTES);
	assert_int_equal(tally_merkle_verify_consistency(5, 5, g_naive_root[5],
			 g_naive_root[5], NULL, 0), 0);
	expect_consistency_rejected(5, 5, g_naive_root[5], g_naive_root[5],
				    CPROOF(extra), 1, "equal sizes, extended");
	expect_consistency_rejected(5, 5, g_naive_root[4], g_naive_root[5],
				    NULL, 0, "equal sizes, different roots");
}

static void test_malformed_inclusion_inputs_are_rejected(void **state)
{
	(void)state;
	uint8_t proof[TALLY_MERKLE_PROOF_MAX + 1][HASH_BYTES];
	size_t n = 99;
	const struct tally_merkle_store *s = &g_iface;
	assert_int_equal(tally_merkle_inclusion_proof(s, 0, 0, proof, 64, &n),
			 TALLY_ERANGE);
	assert_int_equal(n, 0);
	assert_int_equal(tally_merkle_inclusion_proof(s, 5, 5, proof, 64, &n),
			 TALLY_ERANGE);
	assert_int_equal(tally_merkle_inclusion_proof(s, 6, 5, proof, 64, &n),
			 TALLY_ERANGE);
	assert_int_equal(tally_merkle_inclusion_proof(s, 0,
			 TALLY_MERKLE_SIZE_MAX + 1, proof, 64, &n), TALLY_ERANGE);
	/* Beyond what was appended: the store's answer comes through. */
	assert_int_equal(tally_merkle_inclusion_proof(s, 0, g_leaves + 1, proof,
			 64, &n), TALLY_ENOTFOUND);
	assert_int_equal(n, 0);

	/* Leaf 5 of 8 needs 3 hashes: cap 2 is too small and tells so. */
	assert_int_equal(tally_merkle_inclusion_proof(s, 5, 8, proof, 2, &n),
			 TALLY_EFULL);
	assert_int_equal(n, 3);
	assert_int_equal(tally_merkle_inclusion_proof(s, 5, 8, NULL, 0, &n),
			 TALLY_EFULL);
	assert_int_equal(n, 3);
	assert_int_equal(tally_merkle_inclusion_proof(s, 5, 8, proof, 3, &n), 0);
	assert_int_equal(n, 3);
	assert_int_equal(tally_merkle_inclusion_proof(s, 0, 1, NULL, 0, &n), 0);
	assert_int_equal(n, 0);

	const uint8_t *leaf = g_naive_leaf[0];
	expect_inclusion_rejected(leaf, 0, 0, NULL, 0, g_naive_root[0], "size 0");
	expect_inclusion_rejected(leaf, 1, 1, NULL, 0, g_naive_root[1],
				  "index == size");
	expect_inclusion_rejected(leaf, 9, 8, CPROOF(proof), 3, g_naive_root[8],
				  "index > size");
	expect_inclusion_rejected(leaf, UINT64_MAX, UINT64_MAX, CPROOF(proof), 3,
				  g_naive_root[8], "index == size == max");
	expect_inclusion_rejected(leaf, 0, 1, CPROOF(proof),
				  TALLY_MERKLE_PROOF_MAX + 1, g_naive_root[1],
				  "over-long proof");
	expect_inclusion_rejected(leaf, 0, 2, NULL, 0, g_naive_root[2],
				  "empty proof for size 2");
}

static void test_malformed_consistency_inputs_are_rejected(void **state)
{
	(void)state;
	uint8_t proof[TALLY_MERKLE_PROOF_MAX + 1][HASH_BYTES];
	size_t n = 99;
	const struct tally_merkle_store *s = &g_iface;
	assert_int_equal(tally_merkle_consistency_proof(s, 0, 5, proof, 64, &n),
			 TALLY_ERANGE);
	assert_int_equal(n, 0);
	assert_int_equal(tally_merkle_consistency_proof(s, 0, 0, proof, 64, &n),
			 TALLY_ERANGE);
	assert_int_equal(tally_merkle_consistency_proof(s, 6, 5, proof, 64, &n),
			 TALLY_ERANGE);
	assert_int_equal(tally_merkle_consistency_proof(s, 1,
			 TALLY_MERKLE_SIZE_MAX + 1, proof, 64, &n), TALLY_ERANGE);
	assert_int_equal(tally_merkle_consistency_proof(s, 1, g_leaves + 1,
			 proof, 64, &n), TALLY_ENOTFOUND);

	/* PROOF(3, D[7]) has 4 hashes. */
	assert_int_equal(tally_merkle_consistency_proof(s, 3, 7, proof, 3, &n),
			 TALLY_EFULL);
	assert_int_equal(n, 4);
	assert_int_equal(tally_merkle_consistency_proof(s, 3, 7, proof, 4, &n), 0);
	assert_int_equal(n, 4);
	assert_int_equal(tally_merkle_consistency_proof(s, 7, 7, NULL, 0, &n), 0);
	assert_int_equal(n, 0);

	const uint8_t *r3 = g_naive_root[3];
	const uint8_t *r7 = g_naive_root[7];
	expect_consistency_rejected(0, 7, g_naive_root[0], r7, CPROOF(proof), 4,
				    "old size 0");
	expect_consistency_rejected(0, 0, g_naive_root[0], g_naive_root[0],
				    NULL, 0, "both sizes 0");
	expect_consistency_rejected(7, 3, r7, r3, CPROOF(proof), 4,
				    "old size > new size");
	expect_consistency_rejected(3, 7, r3, r7, NULL, 0, "empty proof");
	expect_consistency_rejected(3, 7, r3, r7, CPROOF(proof),
				    TALLY_MERKLE_PROOF_MAX + 1, "over-long proof");
	/* Without the size check, {R3, X} would "prove" 3 -> 2 with the new
	 * root H(R3, X). */
	uint8_t lifted[HASH_BYTES];
	memcpy(proof[0], r3, HASH_BYTES);
	memcpy(proof[1], g_naive_leaf[9], HASH_BYTES);
	tally_merkle_node_hash(proof[0], proof[1], lifted);
	expect_consistency_rejected(3, 2, r3, lifted, CPROOF(proof), 2,
				    "old size > new size, crafted");
	expect_consistency_rejected(UINT64_MAX, UINT64_MAX - 1, r3, r7,
				    CPROOF(proof), 4, "huge sizes reversed");
}

static void test_frontier_encode_decode_round_trips(void **state)
{
	(void)state;
	struct mem_store *m = calloc(1, sizeof(*m));
	assert_non_null(m);
	struct tally_merkle_store s = mem_iface(m);
	struct tally_merkle_frontier f;
	struct tally_merkle_frontier g;
	uint8_t buf[TALLY_MERKLE_FRONTIER_BYTES_MAX];
	uint8_t root[HASH_BYTES];
	tally_merkle_frontier_init(&f);
	for (unsigned i = 0; i < g_leaves && i <= 300; i++) {
		size_t len = tally_merkle_frontier_encode(&f, buf, sizeof(buf));
		assert_int_equal(len, 8 + 32 * (size_t)__builtin_popcount(i));
		assert_int_equal(tally_merkle_frontier_encode(&f, buf, len - 1), 0);
		memset(&g, 0xa5, sizeof(g));
		assert_int_equal(tally_merkle_frontier_decode(&g, buf, len), 0);
		assert_memory_equal(&f, &g, sizeof(f));
		tally_merkle_frontier_root(&g, root);
		assert_memory_equal(root, g_naive_root[i], HASH_BYTES);
		/* The decoded frontier keeps appending correctly. */
		assert_int_equal(tally_merkle_append(&g, &s, g_naive_leaf[i]), 0);
		tally_merkle_frontier_root(&g, root);
		assert_memory_equal(root, g_naive_root[i + 1], HASH_BYTES);
		f = g;
	}
	/* Size 13 = 0b1101: big-endian size, then peaks of levels 0, 2, 3. */
	append_all(m, &f, 13);
	assert_int_equal(tally_merkle_frontier_encode(&f, buf, sizeof(buf)),
			 8 + 3 * 32);
	static const uint8_t size13[8] = { 0, 0, 0, 0, 0, 0, 0, 13 };
	assert_memory_equal(buf, size13, 8);
	assert_memory_equal(buf + 8, g_store.hash[0][12], 32);
	assert_memory_equal(buf + 40, g_store.hash[2][2], 32);
	assert_memory_equal(buf + 72, g_store.hash[3][0], 32);
	free(m);
}

static void test_frontier_decode_rejects_truncated_and_garbage(void **state)
{
	(void)state;
	struct mem_store *m = calloc(1, sizeof(*m));
	assert_non_null(m);
	struct tally_merkle_frontier f;
	struct tally_merkle_frontier g;
	struct tally_merkle_frontier before;
	uint8_t buf[TALLY_MERKLE_FRONTIER_BYTES_MAX + 1];
	append_all(m, &f, 1023); /* ten peaks */
	size_t len = tally_merkle_frontier_encode(&f, buf, sizeof(buf));
	assert_int_equal(len, 8 + 10 * 32);
	memset(&g, 0x3c, sizeof(g));
	before = g;
	for (size_t cut = 0; cut < len; cut++) {
		assert_int_equal(tally_merkle_frontier_decode(&g, buf, cut),
				 TALLY_ECORRUPT);
	}
	assert_int_equal(tally_merkle_frontier_decode(&g, NULL, 0),
			 TALLY_ECORRUPT);
	buf[len] = 0;
	assert_int_equal(tally_merkle_frontier_decode(&g, buf, len + 1),
			 TALLY_ECORRUPT);
	buf[7] ^= 0x01; /* size 1022: nine peaks, buffer too long */
	assert_int_equal(tally_merkle_frontier_decode(&g, buf, len),
			 TALLY_ECORRUPT);
	buf[7] ^= 0x01;
	/* Sizes of 2^63 and above are out of range, whatever the length. */
	memset(buf, 0xff, sizeof(buf));
	assert_int_equal(tally_merkle_frontier_decode(&g, buf, 8 + 64 * 32),
			 TALLY_ECORRUPT);
	buf[0] = 0x80;
	memset(buf + 1, 0, 7);
	assert_int_equal(tally_merkle_frontier_decode(&g, buf, 8 + 32),
			 TALLY_ECORRUPT);
	/* Random garbage is accepted only if its length matches its size. */
	for (unsigned trial = 0; trial < 10000; trial++) {
		size_t glen = (size_t)(rng_next() % 80);
		for (size_t i = 0; i < glen; i++) {
			buf[i] = (uint8_t)rng_next();
		}
		assert_int_equal(tally_merkle_frontier_decode(&g, buf, glen),
				 TALLY_ECORRUPT);
	}
	assert_memory_equal(&g, &before, sizeof(g));
	free(m);
}

static void test_full_size_frontier_decodes_and_refuses_append(void **state)
{
	(void)state;
	struct mem_store *m = calloc(1, sizeof(*m));
	assert_non_null(m);
	struct tally_merkle_store s = mem_iface(m);
	struct tally_merkle_frontier f;
	uint8_t buf[TALLY_MERKLE_FRONTIER_BYTES_MAX];
	uint8_t root[HASH_BYTES];
	buf[0] = 0x7f;
	memset(buf + 1, 0xff, 7);
	memset(buf + 8, 0x11, 63 * 32);
	assert_int_equal(tally_merkle_frontier_decode(&f, buf, 8 + 63 * 32), 0);
	assert_true(f.size == TALLY_MERKLE_SIZE_MAX);
	tally_merkle_frontier_root(&f, root);
	assert_int_equal(tally_merkle_append(&f, &s, g_naive_leaf[0]),
			 TALLY_EFULL);
	assert_int_equal(m->n_puts, 0);
	assert_true(f.size == TALLY_MERKLE_SIZE_MAX);
	free(m);
}

static void test_failed_append_leaves_frontier_unchanged_and_retry_succeeds(void **state)
{
	(void)state;
	struct mem_store *m = calloc(1, sizeof(*m));
	assert_non_null(m);
	struct tally_merkle_store s = mem_iface(m);
	struct tally_merkle_frontier f;
	struct tally_merkle_frontier before;
	uint8_t root[HASH_BYTES];
	append_all(m, &f, 15); /* leaf 15 completes nodes at levels 0..4 */
	for (unsigned failing = 1; failing <= 5; failing++) {
		before = f;
		m->fail_put_number = m->n_puts + failing;
		assert_int_equal(tally_merkle_append(&f, &s, g_naive_leaf[15]),
				 TALLY_ESTORE);
		assert_memory_equal(&f, &before, sizeof(f));
	}
	m->fail_put_number = 0;
	unsigned long puts_before = m->n_puts;
	assert_int_equal(tally_merkle_append(&f, &s, g_naive_leaf[15]), 0);
	assert_int_equal(m->n_puts - puts_before, 5);
	tally_merkle_frontier_root(&f, root);
	assert_memory_equal(root, g_naive_root[16], HASH_BYTES);
	assert_false(m->rewrote_differently);
	free(m);
}

static void test_store_get_errors_pass_through(void **state)
{
	(void)state;
	uint8_t proof[TALLY_MERKLE_PROOF_MAX][HASH_BYTES];
	uint8_t root[HASH_BYTES];
	size_t n = 99;
	g_store.get_error = TALLY_EIO;
	assert_int_equal(tally_merkle_root_at(&g_iface, 7, root), TALLY_EIO);
	assert_int_equal(tally_merkle_inclusion_proof(&g_iface, 2, 7, proof,
			 TALLY_MERKLE_PROOF_MAX, &n), TALLY_EIO);
	assert_int_equal(n, 0);
	n = 99;
	assert_int_equal(tally_merkle_consistency_proof(&g_iface, 3, 7, proof,
			 TALLY_MERKLE_PROOF_MAX, &n), TALLY_EIO);
	assert_int_equal(n, 0);
	/* Calls that need no node do not touch the store. */
	assert_int_equal(tally_merkle_root_at(&g_iface, 0, root), 0);
	assert_int_equal(tally_merkle_inclusion_proof(&g_iface, 0, 1, proof,
			 TALLY_MERKLE_PROOF_MAX, &n), 0);
	assert_int_equal(tally_merkle_consistency_proof(&g_iface, 4, 4, proof,
			 TALLY_MERKLE_PROOF_MAX, &n), 0);
	g_store.get_error = 0;
}

/* Store of a tree whose leaves are all equal: node (level, i) = z[level]. */
static int uniform_get(void *ctx, unsigned level, uint64_t index,
		       uint8_t out[HASH_BYTES])
{
	const uint8_t(*z)[HASH_BYTES] = ctx;
	(void)index;
	if (level >= TALLY_MERKLE_LEVELS_MAX) {
		return TALLY_ENOTFOUND;
	}
	memcpy(out, z[level], HASH_BYTES);
	return 0;
}

static void test_proofs_for_sizes_near_2_to_63_verify(void **state)
{
	(void)state;
	static uint8_t z[TALLY_MERKLE_LEVELS_MAX][HASH_BYTES];
	naive_mth(0, 1, z[0]);
	for (unsigned level = 1; level < TALLY_MERKLE_LEVELS_MAX; level++) {
		tally_merkle_node_hash(z[level - 1], z[level - 1], z[level]);
	}
	struct tally_merkle_store s = { .ctx = z, .get = uniform_get, .put = NULL };
	const uint64_t top = TALLY_MERKLE_SIZE_MAX;
	const uint64_t sizes[] = { top, top - 1, UINT64_C(1) << 62,
				   (UINT64_C(1) << 62) + 1, UINT64_C(3) << 61,
				   (UINT64_C(1) << 40) + 12345, 2 };
	uint8_t proof[TALLY_MERKLE_PROOF_MAX][HASH_BYTES];
	uint8_t root[HASH_BYTES];
	uint8_t old_root[HASH_BYTES];
	struct tally_merkle_frontier f;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		const uint64_t size = sizes[i];
		assert_int_equal(tally_merkle_root_at(&s, size, root), 0);
		/* The frontier of that size has peak z[k] for every set bit. */
		memset(&f, 0, sizeof(f));
		f.size = size;
		for (unsigned k = 0; k < TALLY_MERKLE_LEVELS_MAX; k++) {
			if ((size >> k) & 1) {
				memcpy(f.peak[k], z[k], HASH_BYTES);
			}
		}
		uint8_t frontier_root[HASH_BYTES];
		tally_merkle_frontier_root(&f, frontier_root);
		assert_memory_equal(root, frontier_root, HASH_BYTES);
		const uint64_t indexes[] = { 0, size - 1, size / 2, rng_next() % size };
		for (size_t j = 0; j < 4; j++) {
			size_t n = 0;
			assert_int_equal(tally_merkle_inclusion_proof(&s, indexes[j],
					 size, proof, TALLY_MERKLE_PROOF_MAX, &n), 0);
			assert_true(n <= 63);
			assert_int_equal(tally_merkle_verify_inclusion(z[0],
					 indexes[j], size, CPROOF(proof), n, root), 0);
		}
		const uint64_t olds[] = { 1, size - 1, size / 2 + 1, size,
					  1 + rng_next() % size };
		for (size_t j = 0; j < 5; j++) {
			size_t n = 0;
			assert_int_equal(tally_merkle_consistency_proof(&s, olds[j],
					 size, proof, TALLY_MERKLE_PROOF_MAX, &n), 0);
			assert_true(n <= 64);
			assert_int_equal(tally_merkle_root_at(&s, olds[j], old_root), 0);
			assert_int_equal(tally_merkle_verify_consistency(olds[j],
					 size, old_root, root, CPROOF(proof), n), 0);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_empty_root_is_sha256_of_empty_string),
		cmocka_unit_test(test_one_leaf_tree_of_empty_data_has_root_sha256_of_zero_byte),
		cmocka_unit_test(test_node_hash_is_sha256_of_0x01_left_right_even_when_aliased),
		cmocka_unit_test(test_root_matches_naive_recursion_for_sizes_1_to_2000),
		cmocka_unit_test(test_append_stores_exactly_the_completed_perfect_nodes),
		cmocka_unit_test(test_inclusion_proofs_verify_for_every_leaf_of_sizes_1_to_2000),
		cmocka_unit_test(test_consistency_proofs_verify_for_spread_of_sizes),
		cmocka_unit_test(test_tampered_inclusion_proofs_fail),
		cmocka_unit_test(test_inclusion_verifier_binds_size_only_through_root),
		cmocka_unit_test(test_tampered_consistency_proofs_fail),
		cmocka_unit_test(test_malformed_inclusion_inputs_are_rejected),
		cmocka_unit_test(test_malformed_consistency_inputs_are_rejected),
		cmocka_unit_test(test_frontier_encode_decode_round_trips),
		cmocka_unit_test(test_frontier_decode_rejects_truncated_and_garbage),
		cmocka_unit_test(test_full_size_frontier_decodes_and_refuses_append),
		cmocka_unit_test(test_failed_append_leaves_frontier_unchanged_and_retry_succeeds),
		cmocka_unit_test(test_store_get_errors_pass_through),
		cmocka_unit_test(test_proofs_for_sizes_near_2_to_63_verify),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
