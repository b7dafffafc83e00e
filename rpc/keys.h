/*
 * rpc/keys — who may connect: the keys file and the HMAC challenge.
 *
 * Keys file: one key per line, `NAME ROLE BRANDS SECRET`; '#' starts a comment;
 * blank lines are ignored. NAME 1..64 printable bytes without spaces; ROLE one of
 * admin, mall, community, dealer, partner, auditor, operator (never "system"); BRANDS a comma
 * list of brand ids or "*"; SECRET at least 16 printable bytes.
 *
 * Handshake: client → Hello{key_name}; server → Challenge{nonce (32 random bytes)};
 * client → Proof{hmac = HMAC-SHA256(secret, nonce ‖ tls-exporter ‖ key_name)}; server checks it in
 * constant time and answers Welcome{role, brands}. The secret never crosses the wire.
 */
#ifndef TALLY_RPC_KEYS_H
#define TALLY_RPC_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ledger/ledger.h"

#define TALLY_KEYS_MAX 4096
#define TALLY_SECRET_BYTES_MAX 256
#define TALLY_NONCE_BYTES 32
#define TALLY_HMAC_BYTES 32
#define TALLY_KEYS_BINDING_BYTES 32

struct tally_key {
	char name[TALLY_KEY_NAME_BYTES_MAX + 1];
	Tally__V1__Role role;
	size_t n_brands;                       /* 0 with all_brands */
	bool all_brands;
	char brands[TALLY_SCOPE_BRANDS_MAX][TALLY_BRAND_ID_BYTES_MAX + 1];
	char secret[TALLY_SECRET_BYTES_MAX + 1];
};

struct tally_keys {
	struct tally_key *keys;
	size_t n;
};

/* Whether two keys are the same key: name, role, scope and secret (the secret
 * compared in constant time). */
bool tally_keys_equal(const struct tally_key *a, const struct tally_key *b);

/* Parses a keys file. On error returns TALLY_EINVAL (or TALLY_EIO) and describes the
 * first bad line ("keys.conf:3: unknown role 'boss'") in err. *out is untouched then. */
int tally_keys_load(const char *path, struct tally_keys *out, char *err, size_t errcap);
void tally_keys_free(struct tally_keys *k);

/* A client's one key. A client key file holds exactly one key line (0600, as the
 * server's): `file` when given, else `dir`/NAME.key (tally-cluster writes one per key).
 * name NULL takes the file's key whatever its name; otherwise the names must match.
 * The server's keys file (several keys) is refused: a client that needs one secret
 * does not load them all. Returns 0, or TALLY_EINVAL / TALLY_EIO with err set. */
int tally_keys_load_client(const char *file, const char *dir, const char *name,
			   struct tally_key *out, char *err, size_t errcap);

/* The key named `name`, or NULL. */
const struct tally_key *tally_keys_find(const struct tally_keys *k, const char *name);

/* HMAC-SHA256(secret, nonce ‖ binding ‖ key_name). binding is the TLS session's
 * exporter value (rpc/tls.h, TALLY_KEYS_BINDING_BYTES), which each end computes from
 * its own session: a proof relayed into another TLS session does not verify. NULL on
 * a plaintext connection (tallyd --insecure). */
void tally_keys_proof(const char *secret, const uint8_t nonce[TALLY_NONCE_BYTES],
		      const uint8_t *binding, const char *key_name, uint8_t out[TALLY_HMAC_BYTES]);

/* Whether proof matches the key for this nonce and binding (constant-time). */
bool tally_keys_verify(const struct tally_key *key, const uint8_t nonce[TALLY_NONCE_BYTES],
		       const uint8_t *binding, const uint8_t *proof, size_t proof_len);

/* Fills a Principal for commands from this key; strings point into key (and brands
 * into `slots`, an array of TALLY_SCOPE_BRANDS_MAX pointers the caller provides). */
void tally_keys_principal(const struct tally_key *key, char **slots, Tally__V1__Principal *out);

/* Role names as in the keys file ("mall"); NULL for an unknown role. */
const char *tally_role_name(Tally__V1__Role role);
int tally_role_parse(const char *name, Tally__V1__Role *out);

#endif
