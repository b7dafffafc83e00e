/*
 * rpc/keys — the keys file and the HMAC-SHA256 challenge proof (see keys.h).
 *
 * The parser reads one line at a time into a fixed buffer, splits it into at most
 * four fields and checks each; the first bad line aborts the load with a message
 * "PATH:LINE: what is wrong". A '#' at the start of a field starts a comment, so a
 * secret may contain '#' but not begin with it.
 *
 * This file is part of libtally (the client library): it uses nothing of the ledger
 * beyond its headers.
 */
#include "rpc/keys.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define KEYS_LINE_BYTES_MAX 4096
#define KEYS_FIELDS 4
#define KEYS_SECRET_BYTES_MIN 16
#define KEYS_LINES_MAX 1000000

static const char *const role_names[] = {
	[TALLY__V1__ROLE__ADMIN] = "admin",
	[TALLY__V1__ROLE__MALL] = "mall",
	[TALLY__V1__ROLE__COMMUNITY] = "community",
	[TALLY__V1__ROLE__DEALER] = "dealer",
	[TALLY__V1__ROLE__PARTNER] = "partner",
	[TALLY__V1__ROLE__AUDITOR] = "auditor",
	[TALLY__V1__ROLE__SYSTEM] = "system",
	[TALLY__V1__ROLE__OPERATOR] = "operator",
};
#define ROLE_NAMES_N (sizeof(role_names) / sizeof(role_names[0]))

const char *tally_role_name(Tally__V1__Role role)
{
	if ((unsigned)role >= ROLE_NAMES_N)
		return NULL;
	return role_names[role]; /* NULL for ROLE_UNSPECIFIED */
}

int tally_role_parse(const char *name, Tally__V1__Role *out)
{
	assert(name != NULL);
	assert(out != NULL);
	for (size_t i = 0; i < ROLE_NAMES_N; i++) {
		if (role_names[i] != NULL && strcmp(role_names[i], name) == 0) {
			*out = (Tally__V1__Role)i;
			return 0;
		}
	}
	return TALLY_EINVAL;
}

/* ---- parsing ------------------------------------------------------------------ */

/* What the loader carries from line to line. */
struct keys_parse {
	const char *path;
	unsigned line;
	char *err;
	size_t errcap;
};

/* Formats "PATH:LINE: message" into the caller's buffer and returns TALLY_EINVAL. */
static int keysFail(struct keys_parse *p, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int keysFail(struct keys_parse *p, const char *fmt, ...)
{
	assert(p != NULL && fmt != NULL);
	if (p->errcap == 0)
		return TALLY_EINVAL;
	int n = snprintf(p->err, p->errcap, "%s:%u: ", p->path, p->line);
	if (n >= 0 && (size_t)n < p->errcap) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(p->err + n, p->errcap - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return TALLY_EINVAL;
}

/* Printable ASCII without space: what names, brands and secrets are made of. */
static bool keysToken(const char *s)
{
	assert(s != NULL);
	for (; *s != '\0'; s++)
		if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
			return false;
	return true;
}

/* [a-z0-9_-]{1,32}, as the ledger's brand ids. */
static bool keysBrandId(const char *s, size_t len)
{
	assert(s != NULL);
	if (len == 0 || len > TALLY_BRAND_ID_BYTES_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* Reads one line (without its '\n' or "\r\n") into buf; *got is false at the end of
 * the file. Returns 0, TALLY_EIO for a read error, or TALLY_EINVAL (described) for a
 * line that is too long or holds a NUL byte. */
static int keysReadLine(FILE *f, struct keys_parse *p, char *buf, size_t cap, bool *got)
{
	assert(f != NULL && buf != NULL && got != NULL);
	assert(cap > 1);
	size_t n = 0;
	int ch = EOF;
	*got = false;
	while ((ch = getc(f)) != EOF && ch != '\n') {
		if (ch == '\0')
			return keysFail(p, "NUL byte in line");
		if (n + 1 >= cap)
			return keysFail(p, "line longer than %zu bytes", cap - 2);
		buf[n++] = (char)ch;
	}
	if (ferror(f))
		return TALLY_EIO;
	if (ch == EOF && n == 0)
		return 0;
	if (n > 0 && buf[n - 1] == '\r')
		n--;
	buf[n] = '\0';
	*got = true;
	return 0;
}

/* Splits a line in place into fields separated by blanks, stopping at a field that
 * starts with '#'. Returns the number of fields, at most `max` + 1 (one too many). */
static size_t keysSplit(char *line, char *fields[], size_t max)
{
	assert(line != NULL && fields != NULL);
	size_t n = 0;
	char *s = line;
	while (n <= max) {
		while (*s == ' ' || *s == '\t')
			s++;
		if (*s == '\0' || *s == '#')
			break;
		fields[n++] = s;
		while (*s != '\0' && *s != ' ' && *s != '\t')
			s++;
		if (*s != '\0')
			*s++ = '\0';
	}
	return n;
}

/* BRANDS: "*" or a comma list of brand ids without repeats. */
static int keysParseBrands(struct keys_parse *p, const char *field, struct tally_key *k)
{
	assert(p != NULL && field != NULL && k != NULL);
	k->n_brands = 0;
	k->all_brands = strcmp(field, "*") == 0;
	if (k->all_brands)
		return 0;
	const char *s = field;
	for (;;) {
		size_t len = strcspn(s, ",");
		if (!keysBrandId(s, len))
			return keysFail(p, "bad brand id '%.*s' (expected [a-z0-9_-]{1,32} or *)",
					(int)(len > 64 ? 64 : len), s);
		if (k->n_brands == TALLY_SCOPE_BRANDS_MAX)
			return keysFail(p, "more than %d brands", TALLY_SCOPE_BRANDS_MAX);
		char *dst = k->brands[k->n_brands];
		memcpy(dst, s, len);
		dst[len] = '\0';
		for (size_t i = 0; i < k->n_brands; i++)
			if (strcmp(k->brands[i], dst) == 0)
				return keysFail(p, "brand '%s' listed twice", dst);
		k->n_brands++;
		if (s[len] == '\0')
			return 0;
		s += len + 1;
	}
}

/* One key line already split into its four fields. */
static int keysParseKey(struct keys_parse *p, char *const f[KEYS_FIELDS], struct tally_key *k)
{
	assert(p != NULL && f != NULL && k != NULL);
	memset(k, 0, sizeof(*k));
	size_t name_len = strlen(f[0]);
	if (name_len > TALLY_KEY_NAME_BYTES_MAX)
		return keysFail(p, "key name longer than %d bytes", TALLY_KEY_NAME_BYTES_MAX);
	if (!keysToken(f[0]))
		return keysFail(p, "key name has a byte that is not printable ASCII");
	memcpy(k->name, f[0], name_len + 1);

	if (strcmp(f[1], "system") == 0)
		return keysFail(p, "role 'system' is reserved for the cluster itself");
	if (tally_role_parse(f[1], &k->role) != 0)
		return keysFail(p, "unknown role '%.32s' (expected admin, mall, community, "
				   "dealer, partner, auditor or operator)", f[1]);
	assert(k->role != TALLY__V1__ROLE__SYSTEM);

	int rc = keysParseBrands(p, f[2], k);
	if (rc != 0)
		return rc;

	size_t secret_len = strlen(f[3]);
	if (secret_len < KEYS_SECRET_BYTES_MIN)
		return keysFail(p, "secret shorter than %d bytes", KEYS_SECRET_BYTES_MIN);
	if (secret_len > TALLY_SECRET_BYTES_MAX)
		return keysFail(p, "secret longer than %d bytes", TALLY_SECRET_BYTES_MAX);
	if (!keysToken(f[3]))
		return keysFail(p, "secret has a byte that is not printable ASCII");
	memcpy(k->secret, f[3], secret_len + 1);
	return 0;
}

/* Appends a parsed key, growing the array (doubling, up to TALLY_KEYS_MAX) and
 * rejecting a name seen on an earlier line (lines[i] is where key i was). */
static int keysAdd(struct keys_parse *p, struct tally_keys *ks, unsigned **lines,
		   size_t *cap, const struct tally_key *k)
{
	assert(p != NULL && ks != NULL && lines != NULL && cap != NULL && k != NULL);
	assert(ks->n <= *cap);
	for (size_t i = 0; i < ks->n; i++)
		if (strcmp(ks->keys[i].name, k->name) == 0)
			return keysFail(p, "duplicate key name '%s' (first on line %u)", k->name,
					(*lines)[i]);
	if (ks->n == TALLY_KEYS_MAX)
		return keysFail(p, "more than %d keys", TALLY_KEYS_MAX);
	if (ks->n == *cap) {
		size_t ncap = *cap == 0 ? 16 : *cap * 2;
		if (ncap > TALLY_KEYS_MAX)
			ncap = TALLY_KEYS_MAX;
		struct tally_key *nk = realloc(ks->keys, ncap * sizeof(*nk));
		if (nk == NULL)
			return TALLY_ENOMEM;
		ks->keys = nk;
		unsigned *nl = realloc(*lines, ncap * sizeof(*nl));
		if (nl == NULL)
			return TALLY_ENOMEM;
		*lines = nl;
		*cap = ncap;
	}
	ks->keys[ks->n] = *k;
	(*lines)[ks->n] = p->line;
	ks->n++;
	return 0;
}

/* Reads every line of f into ks; stops at the first error. */
static int keysParseFile(FILE *f, struct keys_parse *p, struct tally_keys *ks)
{
	assert(f != NULL && p != NULL && ks != NULL);
	char line[KEYS_LINE_BYTES_MAX + 2];
	struct tally_key key;
	unsigned *lines = NULL;
	size_t cap = 0;
	int rc = 0;
	bool got = true;
	for (p->line = 1; got; p->line++) {
		rc = keysReadLine(f, p, line, sizeof(line), &got);
		if (rc != 0 || !got)
			break;
		if (p->line > KEYS_LINES_MAX) {
			rc = keysFail(p, "more than %d lines", KEYS_LINES_MAX);
			break;
		}
		char *fields[KEYS_FIELDS + 1];
		size_t n = keysSplit(line, fields, KEYS_FIELDS);
		if (n == 0)
			continue; /* blank or comment */
		if (n < KEYS_FIELDS) {
			rc = keysFail(p, "missing field: expected NAME ROLE BRANDS SECRET, got %zu "
					 "field%s", n, n == 1 ? "" : "s");
			break;
		}
		if (n > KEYS_FIELDS) {
			rc = keysFail(p, "unexpected fifth field (a comment starts with '#')");
			break;
		}
		rc = keysParseKey(p, fields, &key);
		if (rc == 0)
			rc = keysAdd(p, ks, &lines, &cap, &key);
		if (rc != 0)
			break;
	}
	OPENSSL_cleanse(line, sizeof(line));
	OPENSSL_cleanse(&key, sizeof(key));
	free(lines);
	return rc;
}

int tally_keys_load(const char *path, struct tally_keys *out, char *err, size_t errcap)
{
	assert(path != NULL && out != NULL);
	assert(err != NULL || errcap == 0);
	struct keys_parse p = {.path = path, .line = 0, .err = err, .errcap = errcap};
	struct tally_keys ks = {.keys = NULL, .n = 0};
	if (errcap > 0)
		err[0] = '\0';
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		if (errcap > 0)
			snprintf(err, errcap, "%s: %s", path, strerror(errno));
		return TALLY_EIO;
	}
	struct stat st;
	if (fstat(fileno(f), &st) != 0 || (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
		if (errcap > 0)
			snprintf(err, errcap, "%s: secrets readable by group or others (mode %04o): "
					      "chmod 600 it", path, (unsigned)(st.st_mode & 07777));
		fclose(f);
		return TALLY_EINVAL;
	}
	int rc = keysParseFile(f, &p, &ks);
	if (rc == TALLY_EIO && errcap > 0)
		snprintf(err, errcap, "%s:%u: read error: %s", path, p.line, strerror(errno));
	else if (rc == TALLY_ENOMEM && errcap > 0)
		snprintf(err, errcap, "%s:%u: out of memory", path, p.line);
	fclose(f);
	if (rc != 0) {
		tally_keys_free(&ks);
		return rc;
	}
	*out = ks;
	return 0;
}

int tally_keys_load_client(const char *file, const char *dir, const char *name,
			   struct tally_key *out, char *err, size_t errcap)
{
	assert(out != NULL && (file != NULL || (dir != NULL && name != NULL)));
	char path[4096];
	if (file == NULL) {
		if (strchr(name, '/') != NULL || strlen(dir) + strlen(name) + 6 >= sizeof(path)) {
			snprintf(err, errcap, "key name %.64s: not a file name", name);
			return TALLY_EINVAL;
		}
		snprintf(path, sizeof(path), "%s/%s.key", dir, name);
		file = path;
	}
	struct tally_keys ks;
	int rc = tally_keys_load(file, &ks, err, errcap);
	if (rc != 0)
		return rc;
	if (ks.n != 1 || (name != NULL && strcmp(ks.keys[0].name, name) != 0)) {
		if (ks.n != 1)
			snprintf(err, errcap, "%.200s holds %zu keys: a client key file holds one "
					      "(the server's keys file is not for clients)", file, ks.n);
		else
			snprintf(err, errcap, "%.200s holds key %s, not %.64s", file, ks.keys[0].name, name);
		tally_keys_free(&ks);
		return TALLY_EINVAL;
	}
	*out = ks.keys[0];
	tally_keys_free(&ks);
	return 0;
}

bool tally_keys_equal(const struct tally_key *a, const struct tally_key *b)
{
	assert(a != NULL && b != NULL);
	if (strcmp(a->name, b->name) != 0 || a->role != b->role ||
	    a->all_brands != b->all_brands || a->n_brands != b->n_brands)
		return false;
	for (size_t i = 0; i < a->n_brands; i++)
		if (strcmp(a->brands[i], b->brands[i]) != 0)
			return false;
	size_t la = strlen(a->secret), lb = strlen(b->secret);
	return la == lb && CRYPTO_memcmp(a->secret, b->secret, la) == 0;
}

void tally_keys_free(struct tally_keys *k)
{
	assert(k != NULL);
	if (k->keys != NULL)
		OPENSSL_cleanse(k->keys, k->n * sizeof(*k->keys));
	free(k->keys);
	k->keys = NULL;
	k->n = 0;
}

const struct tally_key *tally_keys_find(const struct tally_keys *k, const char *name)
{
	assert(k != NULL && name != NULL);
	assert(k->n <= TALLY_KEYS_MAX);
	for (size_t i = 0; i < k->n; i++)
		if (strcmp(k->keys[i].name, name) == 0)
			return &k->keys[i];
	return NULL;
}

/* ---- the challenge ------------------------------------------------------------- */

/* HMAC-SHA256(secret, nonce ‖ key_name); false when OpenSSL fails (out is zeroed). */
static bool keysHmac(const char *secret, const uint8_t nonce[TALLY_NONCE_BYTES],
		     const uint8_t *binding, const char *key_name, uint8_t out[TALLY_HMAC_BYTES])
{
	size_t secret_len = strlen(secret);
	size_t name_len = strlen(key_name);
	assert(secret_len <= TALLY_SECRET_BYTES_MAX);
	assert(name_len <= TALLY_KEY_NAME_BYTES_MAX);
	uint8_t msg[TALLY_NONCE_BYTES + TALLY_KEYS_BINDING_BYTES + TALLY_KEY_NAME_BYTES_MAX];
	size_t at = 0;
	memcpy(msg, nonce, TALLY_NONCE_BYTES);
	at += TALLY_NONCE_BYTES;
	if (binding != NULL) {
		memcpy(msg + at, binding, TALLY_KEYS_BINDING_BYTES);
		at += TALLY_KEYS_BINDING_BYTES;
	}
	memcpy(msg + at, key_name, name_len);
	at += name_len;
	unsigned int out_len = 0;
	unsigned char *r = HMAC(EVP_sha256(), secret, (int)secret_len, msg, at, out, &out_len);
	if (r == NULL || out_len != TALLY_HMAC_BYTES) {
		memset(out, 0, TALLY_HMAC_BYTES);
		return false;
	}
	return true;
}

void tally_keys_proof(const char *secret, const uint8_t nonce[TALLY_NONCE_BYTES],
		      const uint8_t *binding, const char *key_name, uint8_t out[TALLY_HMAC_BYTES])
{
	assert(secret != NULL && nonce != NULL);
	assert(key_name != NULL && out != NULL);
	(void)keysHmac(secret, nonce, binding, key_name, out);
}

bool tally_keys_verify(const struct tally_key *key, const uint8_t nonce[TALLY_NONCE_BYTES],
		       const uint8_t *binding, const uint8_t *proof, size_t proof_len)
{
	assert(key != NULL && nonce != NULL);
	assert(proof != NULL || proof_len == 0);
	if (proof_len != TALLY_HMAC_BYTES)
		return false; /* the length is public: no need to hide it */
	uint8_t expect[TALLY_HMAC_BYTES];
	bool ok = keysHmac(key->secret, nonce, binding, key->name, expect) &&
		  CRYPTO_memcmp(expect, proof, TALLY_HMAC_BYTES) == 0;
	OPENSSL_cleanse(expect, sizeof(expect));
	return ok;
}

void tally_keys_principal(const struct tally_key *key, char **slots, Tally__V1__Principal *out)
{
	static char all[] = "*";
	assert(key != NULL && slots != NULL && out != NULL);
	assert(key->n_brands <= TALLY_SCOPE_BRANDS_MAX);
	assert(!key->all_brands || key->n_brands == 0);
	tally__v1__principal__init(out);
	out->key_name = (char *)key->name;
	out->role = key->role;
	if (key->all_brands) {
		slots[0] = all;
		out->n_brands = 1;
	} else {
		for (size_t i = 0; i < key->n_brands; i++)
			slots[i] = (char *)key->brands[i];
		out->n_brands = key->n_brands;
	}
	out->brands = slots;
}
