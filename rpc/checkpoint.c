/*
 * rpc/checkpoint — signed checkpoints: canonical text, keys, JSON files (checkpoint.h).
 */
#include "rpc/checkpoint.h"
#include "rpc/units.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/pem.h>

#include "ledger/error.h"
#include "rpc/files.h"
#include "rpc/json.h"

#define CHECKPOINT_FORMAT "tally-checkpoint v1"

void tally_hex_encode(const uint8_t *b, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	assert(b != NULL || n == 0);
	assert(out != NULL);
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[b[i] >> 4];
		out[2 * i + 1] = digits[b[i] & 15];
	}
	out[2 * n] = '\0';
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int tally_hex_decode(const char *s, size_t len, uint8_t *out, size_t n)
{
	assert(s != NULL && out != NULL);
	if (len != 2 * n)
		return TALLY_EINVAL;
	for (size_t i = 0; i < n; i++) {
		int hi = hex_digit(s[2 * i]), lo = hex_digit(s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return TALLY_EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

size_t tally_checkpoint_text(const struct tally_checkpoint *c, char *buf, size_t cap)
{
	assert(c != NULL && buf != NULL && cap >= TALLY_CHECKPOINT_TEXT_BYTES_MAX);
	char root[2 * TALLY_HASH_BYTES + 1], digest[2 * TALLY_HASH_BYTES + 1];
	tally_hex_encode(c->root, TALLY_HASH_BYTES, root);
	tally_hex_encode(c->state_digest, TALLY_HASH_BYTES, digest);
	int n = snprintf(buf, cap,
			 CHECKPOINT_FORMAT "\nnode %" PRIu64 "\ntree_size %" PRIu64 "\nroot %s\n"
			 "state_digest %s\napplied_index %" PRIu64 "\ntime_ms %" PRId64 "\n",
			 c->node_id, c->tree_size, root, digest, c->applied_index, c->time_ms);
	assert(n > 0 && (size_t)n < cap);
	return (size_t)n;
}

/* ---- keys ------------------------------------------------------------------------- */

static int key_public(EVP_PKEY *key, uint8_t out[TALLY_CHECKPOINT_PUBLIC_BYTES])
{
	size_t len = TALLY_CHECKPOINT_PUBLIC_BYTES;
	if (EVP_PKEY_get_raw_public_key(key, out, &len) != 1 || len != TALLY_CHECKPOINT_PUBLIC_BYTES)
		return TALLY_EINVAL;
	return 0;
}

/*
 * A new key in dir: checkpoint.pub ("<node id> <public key hex>"), then checkpoint.key
 * (0600), each replaced durably (rpc/files.h). A crash leaves either no key, and the
 * next start makes one (and a new checkpoint.pub), or the whole key: never a torn
 * one, which the node could not start with (jepsen's lost-writes nemesis found that
 * the key was written unsynced).
 */
static int key_create(const char *path, const char *pub_path, uint64_t node_id, EVP_PKEY **out,
		      char *err, size_t errcap)
{
	EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	uint8_t pub[TALLY_CHECKPOINT_PUBLIC_BYTES];
	char hex[2 * TALLY_CHECKPOINT_PUBLIC_BYTES + 1], line[32 + sizeof(hex)];
	if (key == NULL || key_public(key, pub) != 0) {
		snprintf(err, errcap, "%s: cannot create the checkpoint key: no Ed25519 key "
			 "generated", path);
		EVP_PKEY_free(key);
		return TALLY_EIO;
	}
	tally_hex_encode(pub, sizeof(pub), hex);
	int n = snprintf(line, sizeof(line), "%" PRIu64 " %s\n", node_id, hex);
	BIO *pem = BIO_new(BIO_s_mem());
	char *bytes = NULL;
	long len = 0;
	bool ok = pem != NULL && PEM_write_bio_PrivateKey(pem, key, NULL, NULL, 0, NULL, NULL) == 1 &&
		  (len = BIO_get_mem_data(pem, &bytes)) > 0;
	if (!ok)
		snprintf(err, errcap, "%s: cannot create the checkpoint key: PEM encoding failed",
			 path);
	ok = ok && tally_file_replace(pub_path, line, (size_t)n, 0644, err, errcap) == 0 &&
	     tally_file_replace(path, bytes, (size_t)len, 0600, err, errcap) == 0;
	if (bytes != NULL)
		OPENSSL_cleanse(bytes, (size_t)len);
	BIO_free(pem);
	if (!ok) {
		EVP_PKEY_free(key);
		return TALLY_EIO;
	}
	*out = key;
	return 0;
}

int tally_checkpoint_key_load(const char *dir, uint64_t node_id, bool create, EVP_PKEY **out,
			      char *err, size_t errcap)
{
	assert(dir != NULL && out != NULL && err != NULL);
	char path[4096], pub_path[4096];
	snprintf(path, sizeof(path), "%s/" TALLY_CHECKPOINT_KEY_FILE, dir);
	snprintf(pub_path, sizeof(pub_path), "%s/" TALLY_CHECKPOINT_PUB_FILE, dir);
	FILE *f = fopen(path, "r");
	if (f == NULL && errno == ENOENT && create)
		return key_create(path, pub_path, node_id, out, err, errcap);
	if (f == NULL) {
		snprintf(err, errcap, "%s: %s", path, strerror(errno));
		return TALLY_EIO;
	}
	EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (key == NULL || EVP_PKEY_get_base_id(key) != EVP_PKEY_ED25519) {
		snprintf(err, errcap, "%s: not an Ed25519 private key", path);
		EVP_PKEY_free(key);
		return TALLY_EINVAL;
	}
	*out = key;
	return 0;
}

int tally_checkpoint_sign(EVP_PKEY *key, struct tally_checkpoint *c)
{
	assert(key != NULL && c != NULL);
	char text[TALLY_CHECKPOINT_TEXT_BYTES_MAX];
	if (key_public(key, c->public_key) != 0)
		return TALLY_EINVAL;
	size_t n = tally_checkpoint_text(c, text, sizeof(text));
	size_t siglen = TALLY_CHECKPOINT_SIGNATURE_BYTES;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	bool ok = md != NULL && EVP_DigestSignInit(md, NULL, NULL, NULL, key) == 1 &&
		  EVP_DigestSign(md, c->signature, &siglen, (const uint8_t *)text, n) == 1 &&
		  siglen == TALLY_CHECKPOINT_SIGNATURE_BYTES;
	EVP_MD_CTX_free(md);
	return ok ? 0 : TALLY_EINVAL;
}

int tally_checkpoint_verify(const struct tally_checkpoint *c)
{
	assert(c != NULL);
	char text[TALLY_CHECKPOINT_TEXT_BYTES_MAX];
	size_t n = tally_checkpoint_text(c, text, sizeof(text));
	EVP_PKEY *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, c->public_key,
						    TALLY_CHECKPOINT_PUBLIC_BYTES);
	EVP_MD_CTX *md = key != NULL ? EVP_MD_CTX_new() : NULL;
	bool ok = md != NULL && EVP_DigestVerifyInit(md, NULL, NULL, NULL, key) == 1 &&
		  EVP_DigestVerify(md, c->signature, TALLY_CHECKPOINT_SIGNATURE_BYTES,
				   (const uint8_t *)text, n) == 1;
	EVP_MD_CTX_free(md);
	EVP_PKEY_free(key);
	return ok ? 0 : TALLY_ECORRUPT;
}

/* ---- from a query answer ------------------------------------------------------------ */

static int copy_bytes(const ProtobufCBinaryData *b, uint8_t *out, size_t n)
{
	if (b->len != n)
		return TALLY_ECORRUPT;
	memcpy(out, b->data, n);
	return 0;
}

int tally_checkpoint_from_proto(const Tally__V1__QueryResult *r, struct tally_checkpoint *c,
				struct tally_checkpoint_proof *p)
{
	assert(r != NULL && c != NULL);
	const Tally__V1__Checkpoint *k = r->checkpoint;
	if (k == NULL)
		return TALLY_ECORRUPT;
	memset(c, 0, sizeof(*c));
	c->node_id = k->node_id;
	c->tree_size = k->tree_size;
	c->applied_index = k->applied_index;
	c->time_ms = k->time_ms;
	int rc = copy_bytes(&k->root, c->root, TALLY_HASH_BYTES);
	if (rc == 0)
		rc = copy_bytes(&k->state_digest, c->state_digest, TALLY_HASH_BYTES);
	if (rc == 0)
		rc = copy_bytes(&k->public_key, c->public_key, TALLY_CHECKPOINT_PUBLIC_BYTES);
	if (rc == 0)
		rc = copy_bytes(&k->signature, c->signature, TALLY_CHECKPOINT_SIGNATURE_BYTES);
	if (rc != 0 || p == NULL)
		return rc;
	p->from = 0;
	p->n = 0;
	const Tally__V1__ConsistencyProof *cp = r->consistency;
	if (cp == NULL)
		return 0;
	if (cp->new_size != k->tree_size || cp->n_path > TALLY_MERKLE_PROOF_MAX)
		return TALLY_ECORRUPT;
	p->from = cp->old_size;
	p->n = cp->n_path;
	for (size_t i = 0; i < cp->n_path && rc == 0; i++)
		rc = copy_bytes(&cp->path[i], p->path[i], TALLY_HASH_BYTES);
	return rc;
}

/* ---- the file form ------------------------------------------------------------------ */

static void json_hex(FILE *f, const char *name, const uint8_t *b, size_t n, bool last)
{
	char hex[2 * TALLY_CHECKPOINT_SIGNATURE_BYTES + 1];
	assert(n <= TALLY_CHECKPOINT_SIGNATURE_BYTES);
	tally_hex_encode(b, n, hex);
	fprintf(f, "  \"%s\": \"%s\"%s\n", name, hex, last ? "" : ",");
}

void tally_checkpoint_write_json(const struct tally_checkpoint *c,
				 const struct tally_checkpoint_proof *p, FILE *f)
{
	assert(c != NULL && f != NULL);
	char when[40];
	tally_time_format(c->time_ms, when);
	fprintf(f, "{\n  \"format\": \"" CHECKPOINT_FORMAT "\",\n");
	fprintf(f, "  \"node_id\": %" PRIu64 ",\n  \"tree_size\": %" PRIu64 ",\n", c->node_id,
		c->tree_size);
	json_hex(f, "root", c->root, TALLY_HASH_BYTES, false);
	json_hex(f, "state_digest", c->state_digest, TALLY_HASH_BYTES, false);
	fprintf(f, "  \"applied_index\": %" PRIu64 ",\n  \"time_ms\": %" PRId64 ",\n",
		c->applied_index, c->time_ms);
	fprintf(f, "  \"time\": \"%s\",\n", when);
	json_hex(f, "public_key", c->public_key, TALLY_CHECKPOINT_PUBLIC_BYTES, false);
	bool proof = p != NULL && p->from != 0;
	json_hex(f, "signature", c->signature, TALLY_CHECKPOINT_SIGNATURE_BYTES, !proof);
	if (!proof) {
		fprintf(f, "}\n");
		return;
	}
	fprintf(f, "  \"consistency_from\": %" PRIu64 ",\n  \"consistency\": [", p->from);
	for (size_t i = 0; i < p->n; i++) {
		char hex[2 * TALLY_HASH_BYTES + 1];
		tally_hex_encode(p->path[i], TALLY_HASH_BYTES, hex);
		fprintf(f, "%s\n    \"%s\"", i == 0 ? "" : ",", hex);
	}
	fprintf(f, "%s]\n}\n", p->n > 0 ? "\n  " : "");
}

static int json_proof(const char *text, struct tally_checkpoint_proof *p)
{
	p->from = 0;
	p->n = 0;
	const char *v = tally_json_value(text, "consistency");
	if (tally_json_value(text, "consistency_from") == NULL && v == NULL)
		return 0;
	if (!tally_json_u64(text, "consistency_from", &p->from) || p->from == 0 ||
	    !tally_json_hashes(v, p->path, TALLY_MERKLE_PROOF_MAX, &p->n))
		return TALLY_EINVAL;
	return 0;
}

int tally_checkpoint_parse_json(const char *text, struct tally_checkpoint *c,
				struct tally_checkpoint_proof *p, char *err, size_t errcap)
{
	assert(text != NULL && c != NULL && err != NULL);
	memset(c, 0, sizeof(*c));
	const char *bad = NULL;
	uint64_t time_ms = 0;
	const char *format = tally_json_value(text, "format");
	if (format == NULL || strncmp(format, "\"" CHECKPOINT_FORMAT "\"", strlen(CHECKPOINT_FORMAT) + 2))
		bad = "format";
	else if (!tally_json_u64(text, "node_id", &c->node_id))
		bad = "node_id";
	else if (!tally_json_u64(text, "tree_size", &c->tree_size))
		bad = "tree_size";
	else if (!tally_json_hex_at(tally_json_value(text, "root"), c->root, TALLY_HASH_BYTES))
		bad = "root";
	else if (!tally_json_hex_at(tally_json_value(text, "state_digest"), c->state_digest, TALLY_HASH_BYTES))
		bad = "state_digest";
	else if (!tally_json_u64(text, "applied_index", &c->applied_index))
		bad = "applied_index";
	else if (!tally_json_u64(text, "time_ms", &time_ms) || time_ms > INT64_MAX)
		bad = "time_ms";
	else if (!tally_json_hex_at(tally_json_value(text, "public_key"), c->public_key, TALLY_CHECKPOINT_PUBLIC_BYTES))
		bad = "public_key";
	else if (!tally_json_hex_at(tally_json_value(text, "signature"), c->signature,
			 TALLY_CHECKPOINT_SIGNATURE_BYTES))
		bad = "signature";
	else if (p != NULL && json_proof(text, p) != 0)
		bad = "consistency";
	c->time_ms = (int64_t)time_ms;
	if (bad == NULL)
		return 0;
	snprintf(err, errcap, "%s: missing or malformed", bad);
	return TALLY_EINVAL;
}

/* ---- pinned keys -------------------------------------------------------------------- */

int tally_checkpoint_keys_load(const char *path, struct tally_checkpoint_keys *out, char *err,
			       size_t errcap)
{
	assert(path != NULL && out != NULL && err != NULL);
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		snprintf(err, errcap, "%s: %s", path, strerror(errno));
		return TALLY_EIO;
	}
	memset(out, 0, sizeof(*out));
	char line[512];
	int rc = 0;
	for (unsigned no = 1; rc == 0 && fgets(line, sizeof(line), f) != NULL; no++) {
		char *hash = strchr(line, '#');
		if (hash != NULL)
			*hash = '\0';
		unsigned long long id;
		char hex[2 * TALLY_CHECKPOINT_PUBLIC_BYTES + 2];
		char extra[2];
		int got = sscanf(line, "%llu %65s %1s", &id, hex, extra);
		if (got <= 0)
			continue; /* blank */
		if (got != 2 || id == 0 || out->n == TALLY_CHECKPOINT_KEYS_MAX ||
		    tally_hex_decode(hex, strlen(hex), out->key[out->n], TALLY_CHECKPOINT_PUBLIC_BYTES)) {
			snprintf(err, errcap, "%s:%u: expected \"<node id> <64 hex digits>\"", path, no);
			rc = TALLY_EINVAL;
			break;
		}
		out->node_id[out->n++] = id;
	}
	fclose(f);
	return rc;
}

bool tally_checkpoint_pinned(const struct tally_checkpoint_keys *keys,
			     const struct tally_checkpoint *c)
{
	assert(keys != NULL && c != NULL);
	for (size_t i = 0; i < keys->n; i++)
		if (keys->node_id[i] == c->node_id &&
		    memcmp(keys->key[i], c->public_key, TALLY_CHECKPOINT_PUBLIC_BYTES) == 0)
			return true;
	return false;
}
