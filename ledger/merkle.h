/*
 * Merkle tree over Tally's append-only journal, as defined by RFC 9162 §2.1
 * (Certificate Transparency v2): Merkle Tree Hash, inclusion proofs and
 * consistency proofs, with SHA-256 as the hash function.
 *
 * The tree is never materialised in memory. Appends go through a compact
 * frontier (one hash per set bit of the tree size) and write every completed
 * perfect subtree to a node store supplied by the caller. Roots of any
 * historical size and proofs are then computed from the store alone, with a
 * number of store reads and hash computations logarithmic in the tree size.
 *
 * Nothing in this module allocates memory. All functions are reentrant: they
 * touch no global state, so different threads may use different frontiers and
 * stores concurrently. A frontier or store used by several threads must be
 * serialised by the caller.
 *
 * Functions that can fail return 0 or a code of enum tally_error. Violations of
 * a documented precondition on pointers are programming errors and trip an
 * assertion; bad sizes and indexes are reported through return codes.
 */
#ifndef TALLY_MERKLE_H
#define TALLY_MERKLE_H

#include <stddef.h>
#include <stdint.h>

/* Size in bytes of every hash in the tree (SHA-256). */
#define TALLY_HASH_BYTES 32

/* Number of peak slots in a frontier: one per bit of a 64-bit tree size. */
#define TALLY_MERKLE_LEVELS_MAX 64

/* Largest number of leaves a tree may hold: tree sizes are < 2^63. */
#define TALLY_MERKLE_SIZE_MAX ((UINT64_C(1) << 63) - 1)

/* Upper bound on the number of hashes in any proof this module produces or
 * accepts. Proofs for sizes < 2^63 hold at most 64 hashes. */
#define TALLY_MERKLE_PROOF_MAX 128

/* Largest encoding of a frontier: 8-byte size plus one hash per peak. */
#define TALLY_MERKLE_FRONTIER_BYTES_MAX \
	(8 + TALLY_MERKLE_LEVELS_MAX * TALLY_HASH_BYTES)

/*
 * Leaf hash of RFC 9162 §2.1.1: SHA-256(0x00 || data).
 *
 * `data` may be NULL only when `size_bytes` is 0. Writes 32 bytes to `out`.
 * Never fails.
 */
void tally_merkle_leaf_hash(const void *data, size_t size_bytes,
			    uint8_t out[TALLY_HASH_BYTES]);

/*
 * Interior node hash of RFC 9162 §2.1.1: SHA-256(0x01 || left || right).
 *
 * `out` may alias `left` or `right`. Never fails.
 */
void tally_merkle_node_hash(const uint8_t left[TALLY_HASH_BYTES],
			    const uint8_t right[TALLY_HASH_BYTES],
			    uint8_t out[TALLY_HASH_BYTES]);

/*
 * Root of the empty tree, RFC 9162 §2.1.1: MTH({}) = SHA-256() of no bytes,
 * e3b0c442...7852b855. Never fails.
 */
void tally_merkle_empty_root(uint8_t out[TALLY_HASH_BYTES]);

/*
 * Node store supplied by the caller (the ledger keeps it in LMDB, tests in
 * memory).
 *
 * Node (level, index) is the hash of the perfect, aligned subtree covering the
 * leaves [index << level, (index + 1) << level). Level 0 nodes are leaf
 * hashes. A node's value never changes once written, so put() of an existing
 * node always carries the same hash and may be treated as a no-op.
 *
 * get() fills `out` and returns 0, returns TALLY_ENOTFOUND if the node was
 * never put, or returns any other code on failure. put() returns 0 or a code.
 * Codes returned by the callbacks are passed through unchanged by this module.
 */
struct tally_merkle_store {
	void *ctx;
	int (*get)(void *ctx, unsigned level, uint64_t index,
		   uint8_t out[TALLY_HASH_BYTES]);
	int (*put)(void *ctx, unsigned level, uint64_t index,
		   const uint8_t hash[TALLY_HASH_BYTES]);
};

/*
 * Compact state needed to append to a tree.
 *
 * For every bit k set in `size`, peak[k] holds the hash of the perfect subtree
 * of 2^k leaves that the set bit stands for; these are the right-most perfect
 * subtrees of the tree, ordered from right (low k) to left (high k). The peaks
 * of clear bits are all zero bytes.
 */
struct tally_merkle_frontier {
	uint64_t size;
	uint8_t peak[TALLY_MERKLE_LEVELS_MAX][TALLY_HASH_BYTES];
};

/*
 * Make `f` the frontier of the empty tree (size 0, all peaks zero).
 */
void tally_merkle_frontier_init(struct tally_merkle_frontier *f);

/*
 * Append the leaf hash `leaf` as leaf number f->size.
 *
 * put()s node (0, f->size) and then every perfect node the new leaf
 * completes, lowest level first, and finally updates `f`.
 *
 * Returns 0 on success; TALLY_EFULL if the tree already holds
 * TALLY_MERKLE_SIZE_MAX leaves; or the first code returned by put(). On any
 * failure `f` is left unchanged; nodes put before the failure stay in the
 * store and are rewritten with identical values when the append is retried.
 */
int tally_merkle_append(struct tally_merkle_frontier *f,
			const struct tally_merkle_store *s,
			const uint8_t leaf[TALLY_HASH_BYTES]);

/*
 * Root of the tree described by `f` (RFC 9162 §2.1.1 MTH), computed from the
 * frontier alone, without store access: the peaks folded from right to left.
 * The empty root when f->size is 0. Never fails.
 */
void tally_merkle_frontier_root(const struct tally_merkle_frontier *f,
				uint8_t out[TALLY_HASH_BYTES]);

/*
 * Serialise `f` into `buf`: the size as 8 bytes big-endian, then the peaks of
 * the set bits of the size, ascending level. The encoding of a frontier of
 * size n takes 8 + 32 * popcount(n) bytes, at most
 * TALLY_MERKLE_FRONTIER_BYTES_MAX.
 *
 * Returns the number of bytes written, or 0 (writing nothing) if `cap` is too
 * small.
 */
size_t tally_merkle_frontier_encode(const struct tally_merkle_frontier *f,
				    uint8_t *buf, size_t cap);

/*
 * Parse a frontier written by tally_merkle_frontier_encode() into `f`.
 *
 * The whole buffer must be consumed: `len` must be exactly 8 + 32 * the
 * number of set bits of the decoded size, and the size must not exceed
 * TALLY_MERKLE_SIZE_MAX. The peak hashes themselves cannot be checked here.
 *
 * Returns 0, or TALLY_ECORRUPT leaving `f` unchanged.
 */
int tally_merkle_frontier_decode(struct tally_merkle_frontier *f,
				 const uint8_t *buf, size_t len);

/*
 * Root (RFC 9162 §2.1.1 MTH) of the tree made of the first `size` leaves,
 * read from the store. Works for every size up to the number of leaves
 * appended; size 0 gives the empty root without store access.
 *
 * Reads at most 63 nodes and computes at most 62 hashes.
 *
 * Returns 0; TALLY_ERANGE if size > TALLY_MERKLE_SIZE_MAX; or the code of a
 * failed get(), notably TALLY_ENOTFOUND if `size` exceeds what was appended.
 * `out` is unspecified on failure.
 */
int tally_merkle_root_at(const struct tally_merkle_store *s, uint64_t size,
			 uint8_t out[TALLY_HASH_BYTES]);

/*
 * Inclusion proof, RFC 9162 §2.1.3.1 PATH(index, D[size]), for the leaf
 * `index` in the tree of the first `size` leaves: the hashes needed to
 * recompute the root from the leaf hash, deepest (the leaf's sibling) first.
 *
 * Writes the proof to proof[0 .. *n_out - 1]. The proof holds at most
 * ceil(log2(size)) hashes.
 *
 * Returns 0; TALLY_ERANGE if size is 0, index >= size or
 * size > TALLY_MERKLE_SIZE_MAX; TALLY_EFULL if the proof needs more than
 * `cap` hashes (then *n_out is the number needed and `proof` is untouched);
 * or the code of a failed get(). On other failures *n_out is 0 and the
 * contents of `proof` are unspecified.
 */
int tally_merkle_inclusion_proof(const struct tally_merkle_store *s,
				 uint64_t index, uint64_t size,
				 uint8_t proof[][TALLY_HASH_BYTES], size_t cap,
				 size_t *n_out);

/*
 * Consistency proof, RFC 9162 §2.1.4.1 PROOF(old_size, D[new_size]),
 * showing that the tree of the first `old_size` leaves is a prefix of the
 * tree of the first `new_size` leaves. The proof between equal sizes is
 * empty.
 *
 * Writes the proof to proof[0 .. *n_out - 1]. The proof holds at most
 * ceil(log2(new_size)) + 1 hashes.
 *
 * Returns 0; TALLY_ERANGE if old_size is 0, old_size > new_size or
 * new_size > TALLY_MERKLE_SIZE_MAX; TALLY_EFULL if the proof needs more
 * than `cap` hashes (then *n_out is the number needed and `proof` is
 * untouched); or the code of a failed get(). On other failures *n_out is 0
 * and the contents of `proof` are unspecified.
 */
int tally_merkle_consistency_proof(const struct tally_merkle_store *s,
				   uint64_t old_size, uint64_t new_size,
				   uint8_t proof[][TALLY_HASH_BYTES],
				   size_t cap, size_t *n_out);

/*
 * Verify an inclusion proof, RFC 9162 §2.1.3.2: that `leaf` is the leaf hash
 * number `index` of the tree of `size` leaves whose root is `root`.
 *
 * Pure function of its arguments; `proof` may be NULL when n is 0.
 *
 * Returns 0 if the proof is valid, TALLY_ECORRUPT otherwise, including for
 * malformed input: index >= size, size 0, n > TALLY_MERKLE_PROOF_MAX, and a
 * proof of the wrong length for (index, size).
 */
int tally_merkle_verify_inclusion(const uint8_t leaf[TALLY_HASH_BYTES],
				  uint64_t index, uint64_t size,
				  const uint8_t proof[][TALLY_HASH_BYTES],
				  size_t n, const uint8_t root[TALLY_HASH_BYTES]);

/*
 * Verify a consistency proof, RFC 9162 §2.1.4.2: that the tree of `old_size`
 * leaves with root `old_root` is a prefix of the tree of `new_size` leaves
 * with root `new_root`. For old_size == new_size the proof must be empty and
 * the roots equal.
 *
 * Pure function of its arguments; `proof` may be NULL when n is 0.
 *
 * Returns 0 if the proof is valid, TALLY_ECORRUPT otherwise, including for
 * malformed input: old_size 0, old_size > new_size,
 * n > TALLY_MERKLE_PROOF_MAX, and a proof of the wrong length.
 */
int tally_merkle_verify_consistency(uint64_t old_size, uint64_t new_size,
				    const uint8_t old_root[TALLY_HASH_BYTES],
				    const uint8_t new_root[TALLY_HASH_BYTES],
				    const uint8_t proof[][TALLY_HASH_BYTES],
				    size_t n);

#endif /* TALLY_MERKLE_H */
