/*
 * RFC 9162 §2.1 Merkle tree: hashing, append frontier, roots and proofs.
 *
 * Terminology: a range [begin, end) is a run of consecutive leaves; MTH of a
 * range is its Merkle Tree Hash (§2.1.1). A node (level, index) is the MTH of
 * the perfect aligned range [index << level, (index + 1) << level); only such
 * nodes live in the store.
 */

/* The low-level SHA-256 calls are deprecated in OpenSSL 3 but remain the
 * fastest interface and the only one that neither allocates nor fails. They
 * must be un-deprecated before any OpenSSL header is included. */
#ifndef OPENSSL_SUPPRESS_DEPRECATED
#define OPENSSL_SUPPRESS_DEPRECATED
#endif

#include "ledger/merkle.h"

#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "ledger/error.h"

/* A run of leaves [begin, end), begin < end. */
struct merkle_range {
	uint64_t begin;
	uint64_t end;
};

/* Prefix bytes of §2.1.1 domain separation. */
static const uint8_t merkle_leaf_prefix = 0x00;
static const uint8_t merkle_node_prefix = 0x01;

/*
 * SHA-256 of the concatenation of `n_parts` byte strings into `out`.
 *
 * Built against an OpenSSL without the deprecated API, this falls back to the
 * EVP interface, which allocates a context per call and aborts the process if
 * OpenSSL cannot hash (out of memory), as the callers' contract has no error
 * path.
 */
static void merkle_sha256(const void *const parts[], const size_t lens_bytes[],
			  unsigned n_parts, uint8_t out[TALLY_HASH_BYTES])
{
	assert(parts != NULL || n_parts == 0);
	assert(lens_bytes != NULL || n_parts == 0);
	assert(out != NULL);
#ifndef OPENSSL_NO_DEPRECATED_3_0
	SHA256_CTX ctx;
	SHA256_Init(&ctx);
	for (unsigned i = 0; i < n_parts; i++) {
		SHA256_Update(&ctx, parts[i], lens_bytes[i]);
	}
	SHA256_Final(out, &ctx);
#else
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	for (unsigned i = 0; ok && i < n_parts; i++) {
		ok = EVP_DigestUpdate(ctx, parts[i], lens_bytes[i]);
	}
	ok = ok && EVP_DigestFinal_ex(ctx, out, NULL);
	EVP_MD_CTX_free(ctx);
	if (!ok) {
		abort();
	}
#endif
}

void tally_merkle_leaf_hash(const void *data, size_t size_bytes,
			    uint8_t out[TALLY_HASH_BYTES])
{
	assert(data != NULL || size_bytes == 0);
	assert(out != NULL);
	/* §2.1.1: MTH({d(0)}) = HASH(0x00 || d(0)). */
	const void *parts[2] = { &merkle_leaf_prefix, data };
	size_t lens_bytes[2] = { 1, size_bytes };
	merkle_sha256(parts, lens_bytes, size_bytes > 0 ? 2 : 1, out);
}

void tally_merkle_node_hash(const uint8_t left[TALLY_HASH_BYTES],
			    const uint8_t right[TALLY_HASH_BYTES],
			    uint8_t out[TALLY_HASH_BYTES])
{
	assert(left != NULL);
	assert(right != NULL);
	assert(out != NULL);
	/* §2.1.1: MTH(D[n]) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n])).
	 * SHA256_Update consumes its input before Final writes `out`, so
	 * `out` may alias either input. */
	const void *parts[3] = { &merkle_node_prefix, left, right };
	size_t lens_bytes[3] = { 1, TALLY_HASH_BYTES, TALLY_HASH_BYTES };
	merkle_sha256(parts, lens_bytes, 3, out);
}

void tally_merkle_empty_root(uint8_t out[TALLY_HASH_BYTES])
{
	assert(out != NULL);
	/* §2.1.1: MTH({}) = HASH(), the hash of an empty string. */
	merkle_sha256(NULL, NULL, 0, out);
	assert(out[0] == 0xe3 && out[TALLY_HASH_BYTES - 1] == 0x55);
}

/* floor(log2(x)) for x > 0. */
static unsigned merkle_log2_floor(uint64_t x)
{
	assert(x > 0);
#if defined(__GNUC__)
	return 63u - (unsigned)__builtin_clzll(x);
#else
	unsigned log = 0;
	while (x >>= 1) {
		log++;
	}
	return log;
#endif
}

/* §2.1.1 split point: the largest power of two strictly less than n, n > 1. */
static uint64_t merkle_split(uint64_t n_leaves)
{
	assert(n_leaves > 1);
	uint64_t k = UINT64_C(1) << merkle_log2_floor(n_leaves - 1);
	assert(k < n_leaves && 2 * k >= n_leaves);
	return k;
}

/* Number of set bits of x. */
static unsigned merkle_popcount(uint64_t x)
{
	unsigned count = 0;
	for (; x != 0; x &= x - 1) {
		count++;
	}
	assert(count <= TALLY_MERKLE_LEVELS_MAX);
	return count;
}

static bool merkle_hash_equal(const uint8_t a[TALLY_HASH_BYTES],
			      const uint8_t b[TALLY_HASH_BYTES])
{
	assert(a != NULL);
	assert(b != NULL);
	return memcmp(a, b, TALLY_HASH_BYTES) == 0;
}

/*
 * MTH(D[begin:end]) (§2.1.1) from the store.
 *
 * Every range the §2.1 recursions visit starts at a multiple of the largest
 * power of two not above its length, so it splits into the perfect aligned
 * nodes named by the set bits of its length, largest (left-most) first. MTH
 * folds them from the right: MTH = HASH(0x01 || left-most || MTH(rest)).
 */
static int merkle_range_hash(const struct tally_merkle_store *s,
			     struct merkle_range r,
			     uint8_t out[TALLY_HASH_BYTES])
{
	assert(s != NULL && s->get != NULL);
	assert(r.begin < r.end && r.end - 1 <= TALLY_MERKLE_SIZE_MAX);
	const uint64_t n_leaves = r.end - r.begin;
	assert(r.begin % (UINT64_C(1) << merkle_log2_floor(n_leaves)) == 0);
	uint8_t node[TALLY_HASH_BYTES];
	bool have_right = false;
	for (unsigned level = 0; level < TALLY_MERKLE_LEVELS_MAX; level++) {
		if (((n_leaves >> level) & 1) == 0) {
			if ((n_leaves >> level) == 0) {
				break;
			}
			continue;
		}
		/* The node of this bit sits after the nodes of all higher bits. */
		uint64_t higher_leaves = (n_leaves >> level >> 1) << level << 1;
		uint64_t index = (r.begin + higher_leaves) >> level;
		int rc = s->get(s->ctx, level, index, have_right ? node : out);
		if (rc != 0) {
			return rc;
		}
		if (have_right) {
			tally_merkle_node_hash(node, out, out);
		}
		have_right = true;
	}
	assert(have_right);
	return 0;
}

void tally_merkle_frontier_init(struct tally_merkle_frontier *f)
{
	assert(f != NULL);
	memset(f, 0, sizeof(*f));
	assert(f->size == 0);
}

int tally_merkle_append(struct tally_merkle_frontier *f,
			const struct tally_merkle_store *s,
			const uint8_t leaf[TALLY_HASH_BYTES])
{
	assert(f != NULL && f->size <= TALLY_MERKLE_SIZE_MAX);
	assert(s != NULL && s->put != NULL);
	assert(leaf != NULL);
	if (f->size == TALLY_MERKLE_SIZE_MAX) {
		return TALLY_EFULL;
	}
	uint8_t hash[TALLY_HASH_BYTES];
	memcpy(hash, leaf, TALLY_HASH_BYTES);
	uint64_t index = f->size;
	unsigned level = 0;
	int rc = s->put(s->ctx, level, index, hash);
	/* Each set low bit of the old size is a peak the new leaf's subtree
	 * completes: merge it as the left child (§2.1.1) and go up a level.
	 * `f` is only read here, so a failed put() leaves it unchanged. */
	while (rc == 0 && ((f->size >> level) & 1) != 0) {
		assert(level + 1 < TALLY_MERKLE_LEVELS_MAX);
		tally_merkle_node_hash(f->peak[level], hash, hash);
		level++;
		index >>= 1;
		rc = s->put(s->ctx, level, index, hash);
	}
	if (rc != 0) {
		return rc;
	}
	memset(f->peak, 0, (size_t)level * TALLY_HASH_BYTES);
	memcpy(f->peak[level], hash, TALLY_HASH_BYTES);
	f->size++;
	return 0;
}

void tally_merkle_frontier_root(const struct tally_merkle_frontier *f,
				uint8_t out[TALLY_HASH_BYTES])
{
	assert(f != NULL && f->size <= TALLY_MERKLE_SIZE_MAX);
	assert(out != NULL);
	if (f->size == 0) {
		tally_merkle_empty_root(out);
		return;
	}
	/* The peaks are the perfect nodes of the range [0, size), right-most
	 * at the lowest level; fold them from the right as in §2.1.1. */
	bool have_right = false;
	for (unsigned level = 0; level < TALLY_MERKLE_LEVELS_MAX; level++) {
		if (((f->size >> level) & 1) == 0) {
			continue;
		}
		if (have_right) {
			tally_merkle_node_hash(f->peak[level], out, out);
		} else {
			memcpy(out, f->peak[level], TALLY_HASH_BYTES);
		}
		have_right = true;
	}
}

size_t tally_merkle_frontier_encode(const struct tally_merkle_frontier *f,
				    uint8_t *buf, size_t cap)
{
	assert(f != NULL && f->size <= TALLY_MERKLE_SIZE_MAX);
	assert(buf != NULL || cap == 0);
	const size_t len_bytes = 8 + (size_t)merkle_popcount(f->size) *
					     TALLY_HASH_BYTES;
	assert(len_bytes <= TALLY_MERKLE_FRONTIER_BYTES_MAX);
	if (cap < len_bytes) {
		return 0;
	}
	for (unsigned i = 0; i < 8; i++) {
		buf[i] = (uint8_t)(f->size >> (56 - 8 * i));
	}
	size_t pos_bytes = 8;
	for (unsigned level = 0; level < TALLY_MERKLE_LEVELS_MAX; level++) {
		if (((f->size >> level) & 1) != 0) {
			memcpy(buf + pos_bytes, f->peak[level], TALLY_HASH_BYTES);
			pos_bytes += TALLY_HASH_BYTES;
		}
	}
	assert(pos_bytes == len_bytes);
	return len_bytes;
}

int tally_merkle_frontier_decode(struct tally_merkle_frontier *f,
				 const uint8_t *buf, size_t len)
{
	assert(f != NULL);
	assert(buf != NULL || len == 0);
	if (len < 8) {
		return TALLY_ECORRUPT;
	}
	uint64_t size = 0;
	for (unsigned i = 0; i < 8; i++) {
		size = (size << 8) | buf[i];
	}
	if (size > TALLY_MERKLE_SIZE_MAX ||
	    len != 8 + (size_t)merkle_popcount(size) * TALLY_HASH_BYTES) {
		return TALLY_ECORRUPT;
	}
	memset(f, 0, sizeof(*f));
	f->size = size;
	size_t pos_bytes = 8;
	for (unsigned level = 0; level < TALLY_MERKLE_LEVELS_MAX; level++) {
		if (((size >> level) & 1) != 0) {
			memcpy(f->peak[level], buf + pos_bytes, TALLY_HASH_BYTES);
			pos_bytes += TALLY_HASH_BYTES;
		}
	}
	assert(pos_bytes == len);
	return 0;
}

int tally_merkle_root_at(const struct tally_merkle_store *s, uint64_t size,
			 uint8_t out[TALLY_HASH_BYTES])
{
	assert(s != NULL && s->get != NULL);
	assert(out != NULL);
	if (size > TALLY_MERKLE_SIZE_MAX) {
		return TALLY_ERANGE;
	}
	if (size == 0) {
		tally_merkle_empty_root(out);
		return 0;
	}
	struct merkle_range all = { .begin = 0, .end = size };
	return merkle_range_hash(s, all, out);
}

/*
 * The ranges whose MTHs form PATH(index, D[size]) (§2.1.3.1), in proof
 * order (deepest first). Returns their number, at most 63.
 *
 * PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])   for m < k
 *               = PATH(m - k, D[k:n]) : MTH(D[0:k]) for m >= k
 * Descending from the root yields the siblings shallowest first, so they are
 * stored from the back once their number is known.
 */
static size_t merkle_path_ranges(uint64_t index, uint64_t size,
				 struct merkle_range out[TALLY_MERKLE_LEVELS_MAX])
{
	assert(index < size && size <= TALLY_MERKLE_SIZE_MAX);
	assert(out != NULL);
	struct merkle_range sibling[TALLY_MERKLE_LEVELS_MAX];
	struct merkle_range sub = { .begin = 0, .end = size };
	size_t n_siblings = 0;
	while (sub.end - sub.begin > 1) {
		assert(n_siblings < TALLY_MERKLE_LEVELS_MAX);
		uint64_t mid = sub.begin + merkle_split(sub.end - sub.begin);
		if (index < mid) {
			sibling[n_siblings++] = (struct merkle_range){ mid, sub.end };
			sub.end = mid;
		} else {
			sibling[n_siblings++] = (struct merkle_range){ sub.begin, mid };
			sub.begin = mid;
		}
	}
	for (size_t i = 0; i < n_siblings; i++) {
		out[i] = sibling[n_siblings - 1 - i];
	}
	return n_siblings;
}

/*
 * The ranges whose MTHs form PROOF(old_size, D[new_size]) (§2.1.4.1), in
 * proof order. Returns their number, at most 64.
 *
 * SUBPROOF(m, D[n], b) = {} if m == n and b; {MTH(D[n])} if m == n and !b;
 *   SUBPROOF(m, D[0:k], b) : MTH(D[k:n])          for m <= k
 *   SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])  for m > k
 * The descent collects the appended siblings shallowest first; the proof is
 * the final subtree (when b turned false) followed by them deepest first.
 */
static size_t merkle_consistency_ranges(uint64_t old_size, uint64_t new_size,
					struct merkle_range out[TALLY_MERKLE_PROOF_MAX])
{
	assert(old_size > 0 && old_size <= new_size);
	assert(new_size <= TALLY_MERKLE_SIZE_MAX && out != NULL);
	struct merkle_range sibling[TALLY_MERKLE_LEVELS_MAX];
	struct merkle_range sub = { .begin = 0, .end = new_size };
	uint64_t m = old_size; /* old tree covers [sub.begin, sub.begin + m) */
	bool whole = true;     /* b: old tree is a whole node of the new one */
	size_t n_siblings = 0;
	while (m != sub.end - sub.begin) {
		assert(n_siblings < TALLY_MERKLE_LEVELS_MAX);
		uint64_t k = merkle_split(sub.end - sub.begin);
		uint64_t mid = sub.begin + k;
		if (m <= k) {
			sibling[n_siblings++] = (struct merkle_range){ mid, sub.end };
			sub.end = mid;
		} else {
			sibling[n_siblings++] = (struct merkle_range){ sub.begin, mid };
			sub.begin = mid;
			m -= k;
			whole = false;
		}
	}
	size_t n = 0;
	if (!whole) {
		out[n++] = sub;
	}
	while (n_siblings > 0) {
		out[n++] = sibling[--n_siblings];
	}
	assert(n <= TALLY_MERKLE_LEVELS_MAX);
	return n;
}

/* Fill proof[0 .. n - 1] with the MTHs of `ranges` from the store. */
static int merkle_fill_proof(const struct tally_merkle_store *s,
			     const struct merkle_range *ranges, size_t n,
			     uint8_t proof[][TALLY_HASH_BYTES])
{
	assert(s != NULL);
	assert(ranges != NULL && (proof != NULL || n == 0));
	for (size_t i = 0; i < n; i++) {
		int rc = merkle_range_hash(s, ranges[i], proof[i]);
		if (rc != 0) {
			return rc;
		}
	}
	return 0;
}

int tally_merkle_inclusion_proof(const struct tally_merkle_store *s,
				 uint64_t index, uint64_t size,
				 uint8_t proof[][TALLY_HASH_BYTES], size_t cap,
				 size_t *n_out)
{
	assert(s != NULL && s->get != NULL);
	assert(proof != NULL || cap == 0);
	assert(n_out != NULL);
	*n_out = 0;
	if (size == 0 || index >= size || size > TALLY_MERKLE_SIZE_MAX) {
		return TALLY_ERANGE;
	}
	struct merkle_range ranges[TALLY_MERKLE_LEVELS_MAX];
	size_t n = merkle_path_ranges(index, size, ranges);
	if (n > cap) {
		*n_out = n;
		return TALLY_EFULL;
	}
	int rc = merkle_fill_proof(s, ranges, n, proof);
	if (rc == 0) {
		*n_out = n;
	}
	return rc;
}

int tally_merkle_consistency_proof(const struct tally_merkle_store *s,
				   uint64_t old_size, uint64_t new_size,
				   uint8_t proof[][TALLY_HASH_BYTES],
				   size_t cap, size_t *n_out)
{
	assert(s != NULL && s->get != NULL);
	assert(proof != NULL || cap == 0);
	assert(n_out != NULL);
	*n_out = 0;
	if (old_size == 0 || old_size > new_size ||
	    new_size > TALLY_MERKLE_SIZE_MAX) {
		return TALLY_ERANGE;
	}
	struct merkle_range ranges[TALLY_MERKLE_PROOF_MAX];
	size_t n = merkle_consistency_ranges(old_size, new_size, ranges);
	if (n > cap) {
		*n_out = n;
		return TALLY_EFULL;
	}
	int rc = merkle_fill_proof(s, ranges, n, proof);
	if (rc == 0) {
		*n_out = n;
	}
	return rc;
}

/* Right-shift fn and sn together until LSB(fn) is set or fn is 0. */
static void merkle_shift_to_set_bit(uint64_t *fn, uint64_t *sn)
{
	assert(fn != NULL);
	assert(sn != NULL);
	while (*fn != 0 && (*fn & 1) == 0) {
		*fn >>= 1;
		*sn >>= 1;
	}
}

int tally_merkle_verify_inclusion(const uint8_t leaf[TALLY_HASH_BYTES],
				  uint64_t index, uint64_t size,
				  const uint8_t proof[][TALLY_HASH_BYTES],
				  size_t n, const uint8_t root[TALLY_HASH_BYTES])
{
	assert(leaf != NULL && root != NULL);
	assert(proof != NULL || n == 0);
	/* §2.1.3.2 step 1 (also rejects size 0). */
	if (index >= size || n > TALLY_MERKLE_PROOF_MAX) {
		return TALLY_ECORRUPT;
	}
	uint64_t fn = index;    /* step 2 */
	uint64_t sn = size - 1;
	uint8_t r[TALLY_HASH_BYTES];
	memcpy(r, leaf, TALLY_HASH_BYTES); /* step 3 */
	for (size_t i = 0; i < n; i++) {   /* step 4 */
		if (sn == 0) {
			return TALLY_ECORRUPT;
		}
		if ((fn & 1) != 0 || fn == sn) {
			tally_merkle_node_hash(proof[i], r, r);
			merkle_shift_to_set_bit(&fn, &sn);
		} else {
			tally_merkle_node_hash(r, proof[i], r);
		}
		fn >>= 1;
		sn >>= 1;
	}
	/* step 5 */
	if (sn != 0 || !merkle_hash_equal(r, root)) {
		return TALLY_ECORRUPT;
	}
	return 0;
}

int tally_merkle_verify_consistency(uint64_t old_size, uint64_t new_size,
				    const uint8_t old_root[TALLY_HASH_BYTES],
				    const uint8_t new_root[TALLY_HASH_BYTES],
				    const uint8_t proof[][TALLY_HASH_BYTES],
				    size_t n)
{
	assert(old_root != NULL && new_root != NULL);
	assert(proof != NULL || n == 0);
	if (old_size == 0 || old_size > new_size ||
	    n > TALLY_MERKLE_PROOF_MAX) {
		return TALLY_ECORRUPT;
	}
	if (old_size == new_size) { /* PROOF(n, D[n]) is empty (§2.1.4.1) */
		bool ok = n == 0 && merkle_hash_equal(old_root, new_root);
		return ok ? 0 : TALLY_ECORRUPT;
	}
	if (n == 0) { /* §2.1.4.2 step 1 */
		return TALLY_ECORRUPT;
	}
	/* Step 2: for a power-of-two old_size, old_root is the implicit first
	 * element of the path. */
	bool prepend = (old_size & (old_size - 1)) == 0;
	size_t i = prepend ? 0 : 1;
	uint8_t fr[TALLY_HASH_BYTES];
	uint8_t sr[TALLY_HASH_BYTES];
	memcpy(fr, prepend ? old_root : proof[0], TALLY_HASH_BYTES); /* 5 */
	memcpy(sr, fr, TALLY_HASH_BYTES);
	uint64_t fn = old_size - 1; /* step 3 */
	uint64_t sn = new_size - 1;
	while ((fn & 1) != 0) {     /* step 4 */
		fn >>= 1;
		sn >>= 1;
	}
	for (; i < n; i++) {        /* step 6 */
		if (sn == 0) {
			return TALLY_ECORRUPT;
		}
		if ((fn & 1) != 0 || fn == sn) {
			tally_merkle_node_hash(proof[i], fr, fr);
			tally_merkle_node_hash(proof[i], sr, sr);
			merkle_shift_to_set_bit(&fn, &sn);
		} else {
			tally_merkle_node_hash(sr, proof[i], sr);
		}
		fn >>= 1;
		sn >>= 1;
	}
	/* Step 7 */
	if (sn != 0 || !merkle_hash_equal(fr, old_root) ||
	    !merkle_hash_equal(sr, new_root)) {
		return TALLY_ECORRUPT;
	}
	return 0;
}
