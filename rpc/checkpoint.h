/*
 * rpc/checkpoint — a node's signed statement of its applied state, and the files an
 * auditor keeps of it.
 *
 * Every node has an Ed25519 checkpoint key, made at its first start in its data
 * directory (checkpoint.key, 0600; checkpoint.pub holds "<node id> <public key hex>").
 * The cluster's keys file, which an auditor pins, is those lines of every node.
 *
 * A checkpoint is signed over its canonical text, one field per line, each line ending
 * in "\n", numbers in decimal, hashes in lowercase hex:
 *
 *   tally-checkpoint v1
 *   node <id>
 *   tree_size <n>
 *   root <64 hex>
 *   state_digest <64 hex>
 *   applied_index <n>
 *   time_ms <n>
 *
 * The file form (an auditor's DIR/checkpoints/<tree_size>.json) is a flat JSON object
 * with those fields (node_id for node) plus "time" (RFC 3339, for people: not signed),
 * "public_key" and "signature" (hex), and optionally "consistency_from" and
 * "consistency" (an RFC 9162 consistency proof from an earlier tree size: not signed,
 * since anyone can check it against the two signed roots).
 */
#ifndef TALLY_RPC_CHECKPOINT_H
#define TALLY_RPC_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <openssl/evp.h>

#include "ledger/merkle.h"
#include "proto/tally.pb-c.h"

#define TALLY_CHECKPOINT_KEY_FILE "checkpoint.key"
#define TALLY_CHECKPOINT_PUB_FILE "checkpoint.pub"
#define TALLY_CHECKPOINT_PUBLIC_BYTES 32
#define TALLY_CHECKPOINT_SIGNATURE_BYTES 64
/* The canonical text is at most this long (fixed labels, two hashes, four numbers). */
#define TALLY_CHECKPOINT_TEXT_BYTES_MAX 320
/* A checkpoint file is at most this long (the JSON of the fields and a proof). */
#define TALLY_CHECKPOINT_JSON_BYTES_MAX 16384
/* Nodes in a pinned keys file. */
#define TALLY_CHECKPOINT_KEYS_MAX 64

struct tally_checkpoint {
	uint64_t node_id;
	uint64_t tree_size;
	uint8_t root[TALLY_HASH_BYTES];
	uint8_t state_digest[TALLY_HASH_BYTES];
	uint64_t applied_index;
	int64_t time_ms;
	uint8_t public_key[TALLY_CHECKPOINT_PUBLIC_BYTES];
	uint8_t signature[TALLY_CHECKPOINT_SIGNATURE_BYTES];
};

/* A consistency proof kept with a checkpoint (from = 0: none). */
struct tally_checkpoint_proof {
	uint64_t from;
	size_t n;
	uint8_t path[TALLY_MERKLE_PROOF_MAX][TALLY_HASH_BYTES];
};

/* The pinned keys: which public key speaks for which node. */
struct tally_checkpoint_keys {
	size_t n;
	uint64_t node_id[TALLY_CHECKPOINT_KEYS_MAX];
	uint8_t key[TALLY_CHECKPOINT_KEYS_MAX][TALLY_CHECKPOINT_PUBLIC_BYTES];
};

/* Lowercase hex of n bytes into out (2n + 1 bytes, NUL-terminated). */
void tally_hex_encode(const uint8_t *b, size_t n, char *out);
/* Exactly 2n hex digits (either case) into n bytes: 0, or TALLY_EINVAL. */
int tally_hex_decode(const char *s, size_t len, uint8_t *out, size_t n);

/* The canonical text into buf (cap >= TALLY_CHECKPOINT_TEXT_BYTES_MAX); its length. */
size_t tally_checkpoint_text(const struct tally_checkpoint *c, char *buf, size_t cap);

/* Loads dir/checkpoint.key, or with create makes it (0600) and dir/checkpoint.pub
 * when there is none. Returns 0 with *out owned by the caller, or TALLY_EIO /
 * TALLY_EINVAL with err set. */
int tally_checkpoint_key_load(const char *dir, uint64_t node_id, bool create, EVP_PKEY **out,
			      char *err, size_t errcap);

/* Signs c (its public_key and signature are filled in). 0 or TALLY_EINVAL. */
int tally_checkpoint_sign(EVP_PKEY *key, struct tally_checkpoint *c);

/* Whether c's signature is valid for c's public key: 0, or TALLY_ECORRUPT. */
int tally_checkpoint_verify(const struct tally_checkpoint *c);

/* From a GetCheckpoint answer (QueryResult.checkpoint and .consistency). 0, or
 * TALLY_ECORRUPT for fields of the wrong size. */
int tally_checkpoint_from_proto(const Tally__V1__QueryResult *r, struct tally_checkpoint *c,
				struct tally_checkpoint_proof *p);

/* The file form (see above). p may be NULL. */
void tally_checkpoint_write_json(const struct tally_checkpoint *c,
				 const struct tally_checkpoint_proof *p, FILE *f);
/* Parses the file form; p may be NULL. 0, or TALLY_EINVAL with err naming the field. */
int tally_checkpoint_parse_json(const char *text, struct tally_checkpoint *c,
				struct tally_checkpoint_proof *p, char *err, size_t errcap);

/* Reads a pinned keys file: lines "<node id> <public key hex>", '#' comments. 0, or
 * TALLY_EIO / TALLY_EINVAL with err naming the line. */
int tally_checkpoint_keys_load(const char *path, struct tally_checkpoint_keys *out, char *err,
			       size_t errcap);

/* Whether `keys` pins c's public key for c's node. */
bool tally_checkpoint_pinned(const struct tally_checkpoint_keys *keys,
			     const struct tally_checkpoint *c);

#endif
